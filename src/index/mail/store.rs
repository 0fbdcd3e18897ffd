//! One slot's stored mail on one replica: messages by id with the devices that have
//! acknowledged them, the recipients' known devices, tombstones of deleted messages,
//! quotas and the node's memory budget. Time is an input (unix ms).

use super::budget::{Budget, DEVICE_BYTES, MESSAGE_OVERHEAD_BYTES, TOMBSTONE_BYTES};
use super::limits::{DEVICES_PER_USER_MAX, MailLimits};
use super::message::{CLOCK_SKEW_MS_MAX, Mail, MailId};
use crate::crypto::user::DeviceId;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};

/// Acknowledgements kept per message: its recipient's devices, including some that were
/// forgotten or replaced while it waited.
pub const ACKS_PER_MESSAGE_MAX: usize = 2 * DEVICES_PER_USER_MAX;

/// Why a message was not stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Refusal {
    /// It fails [`Mail::check`].
    Malformed,
    /// Past its expiry already.
    Expired,
    /// Another message is held under its id.
    IdInUse,
    /// The recipient holds as many messages as allowed.
    RecipientMessages,
    /// The recipient holds as many bytes as allowed.
    RecipientBytes,
    /// The sender has as many messages held as allowed.
    SenderMessages,
    /// The sender has as many bytes held as allowed.
    SenderBytes,
    /// The node's mail budget is spent.
    NodeFull,
}

impl Refusal {
    /// Every reason, in counter order.
    pub const ALL: [Refusal; 8] = [
        Refusal::Malformed,
        Refusal::Expired,
        Refusal::IdInUse,
        Refusal::RecipientMessages,
        Refusal::RecipientBytes,
        Refusal::SenderMessages,
        Refusal::SenderBytes,
        Refusal::NodeFull,
    ];

    /// The metric label.
    pub fn label(self) -> &'static str {
        match self {
            Refusal::Malformed => "malformed",
            Refusal::Expired => "expired",
            Refusal::IdInUse => "id_in_use",
            Refusal::RecipientMessages => "recipient_messages",
            Refusal::RecipientBytes => "recipient_bytes",
            Refusal::SenderMessages => "sender_messages",
            Refusal::SenderBytes => "sender_bytes",
            Refusal::NodeFull => "node_full",
        }
    }
}

/// What a store did with a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Stored {
    /// Held now.
    New,
    /// Held already, or deleted already (a retry): nothing changed.
    Duplicate,
    /// Not held.
    Refused(Refusal),
}

/// One page of a device's pending messages.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Page {
    /// In the order they were stored.
    pub messages: Vec<Mail>,
    /// More are pending after the last one.
    pub more: bool,
}

/// What an acknowledgement did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Acked {
    /// Messages that gained this device's acknowledgement.
    pub acked: usize,
    /// Messages deleted because every known device has now acknowledged them.
    pub deleted: usize,
}

/// What an expiry pass dropped.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Expired {
    /// Messages past retention, unread by some device.
    pub messages: usize,
    /// Tombstones past retention.
    pub tombstones: usize,
    /// Devices not seen within retention.
    pub devices: usize,
    /// Messages deleted because every remaining device had acknowledged them.
    pub deleted: usize,
}

/// Counters and gauges for metrics.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct MailStats {
    /// Messages held.
    pub messages: usize,
    /// Sealed bytes held.
    pub bytes: u64,
    /// Tombstones held.
    pub tombstones: usize,
    /// Bytes charged to the node's budget.
    pub charged: u64,
    /// Messages stored (by a sender's super node or by replication).
    pub stored: u64,
    /// Messages offered again (retries, replication of what is held).
    pub duplicate: u64,
    /// Messages refused, by reason in [`Refusal::ALL`] order.
    pub refused: [u64; Refusal::ALL.len()],
    /// Messages dropped at retention.
    pub expired: u64,
    /// Messages deleted here once every device had acknowledged them.
    pub deleted: u64,
}

impl MailStats {
    /// Refusals for one reason.
    pub fn refused_for(&self, r: Refusal) -> u64 {
        self.refused[Refusal::ALL.iter().position(|x| *x == r).unwrap_or(0)]
    }
}

/// A held message.
#[derive(Debug)]
pub(super) struct Held {
    pub(super) mail: Mail,
    pub(super) acks: BTreeSet<DeviceId>,
    arrival: u64,
}

#[derive(Debug, Default, Clone, Copy)]
struct Usage {
    messages: usize,
    bytes: u64,
}

/// One slot's mail on one replica.
#[derive(Debug)]
pub struct MailStore {
    pub(super) limits: MailLimits,
    budget: Budget,
    charged: u64,
    pub(super) messages: BTreeMap<MailId, Held>,
    /// Per recipient, in the order handed out: (stored at, arrival here, id).
    queues: BTreeMap<String, BTreeSet<(u64, u64, MailId)>>,
    by_recipient: BTreeMap<String, Usage>,
    by_sender: BTreeMap<String, Usage>,
    /// Deleted ids, until the message's own expiry.
    pub(super) tombstones: BTreeMap<MailId, u64>,
    /// Per recipient: device → last seen (unix ms).
    pub(super) devices: BTreeMap<String, BTreeMap<DeviceId, u64>>,
    arrivals: u64,
    stats: MailStats,
}

impl Drop for MailStore {
    fn drop(&mut self) {
        self.budget.give(self.charged);
    }
}

fn message_cost(m: &Mail) -> u64 {
    (m.sealed.len() + m.to.len() + m.from.len()) as u64 + MESSAGE_OVERHEAD_BYTES
}

fn device_cost(user: &str) -> u64 {
    DEVICE_BYTES + user.len() as u64
}

impl MailStore {
    /// An empty store charging what it holds to `budget`.
    pub fn new(limits: MailLimits, budget: Budget) -> Self {
        Self {
            limits,
            budget,
            charged: 0,
            messages: BTreeMap::new(),
            queues: BTreeMap::new(),
            by_recipient: BTreeMap::new(),
            by_sender: BTreeMap::new(),
            tombstones: BTreeMap::new(),
            devices: BTreeMap::new(),
            arrivals: 0,
            stats: MailStats::default(),
        }
    }

    /// Forgets everything held, giving its bytes back to the budget (the counters start
    /// over too).
    pub(super) fn clear(&mut self) {
        // The old store, dropped by the assignment, gives back what it was charged.
        *self = MailStore::new(self.limits, self.budget.clone());
    }

    /// The limits in force.
    pub fn limits(&self) -> &MailLimits {
        &self.limits
    }

    /// Keeps `mail` for its recipient at `now` (unix ms): idempotent by id.
    pub fn store(&mut self, now: u64, mail: Mail) -> Stored {
        self.admit(now, mail, BTreeSet::new())
    }

    /// Stores with quotas, counting the outcome; `acks` come with a replicated copy.
    pub(super) fn admit(&mut self, now: u64, mail: Mail, acks: BTreeSet<DeviceId>) -> Stored {
        let outcome = self.decide(now, &mail);
        match outcome {
            Stored::New => {
                self.insert(mail, acks);
                self.stats.stored += 1;
            }
            Stored::Duplicate => self.stats.duplicate += 1,
            Stored::Refused(r) => self.count_refusal(r),
        }
        outcome
    }

    pub(super) fn count_refusal(&mut self, r: Refusal) {
        if let Some(i) = Refusal::ALL.iter().position(|x| *x == r) {
            self.stats.refused[i] += 1;
        }
    }

    /// Whether `mail` may be held, taking its cost from the budget if so.
    fn decide(&mut self, now: u64, mail: &Mail) -> Stored {
        if mail.check(now).is_err() {
            return Stored::Refused(Refusal::Malformed);
        }
        if self.tombstones.contains_key(&mail.id) {
            return Stored::Duplicate;
        }
        if let Some(h) = self.messages.get(&mail.id) {
            return if h.mail == *mail { Stored::Duplicate } else { Stored::Refused(Refusal::IdInUse) };
        }
        if mail.expiry_ms(self.limits.retention_ms) <= now {
            return Stored::Refused(Refusal::Expired);
        }
        // The sender first: a flooder is refused as such even where its flood (or
        // others') has filled the recipient's box.
        let size = mail.sealed.len() as u64;
        let from = self.by_sender.get(&mail.from).copied().unwrap_or_default();
        if from.messages >= self.limits.sender_messages_max {
            return Stored::Refused(Refusal::SenderMessages);
        }
        if from.bytes + size > self.limits.sender_bytes_max {
            return Stored::Refused(Refusal::SenderBytes);
        }
        let to = self.by_recipient.get(&mail.to).copied().unwrap_or_default();
        if to.messages >= self.limits.recipient_messages_max {
            return Stored::Refused(Refusal::RecipientMessages);
        }
        if to.bytes + size > self.limits.recipient_bytes_max {
            return Stored::Refused(Refusal::RecipientBytes);
        }
        if !self.budget.try_take(message_cost(mail)) {
            return Stored::Refused(Refusal::NodeFull);
        }
        Stored::New
    }

    /// Inserts a message whose cost is already taken from the budget.
    fn insert(&mut self, mail: Mail, acks: BTreeSet<DeviceId>) {
        let size = mail.sealed.len() as u64;
        self.charged += message_cost(&mail);
        self.arrivals += 1;
        for (map, user) in [(&mut self.by_recipient, &mail.to), (&mut self.by_sender, &mail.from)] {
            let u = map.entry(user.clone()).or_default();
            u.messages += 1;
            u.bytes += size;
        }
        self.queues.entry(mail.to.clone()).or_default().insert((mail.stored_at_ms, self.arrivals, mail.id));
        self.messages.insert(mail.id, Held { mail, acks, arrival: self.arrivals });
    }

    /// Removes a held message, giving its cost back; the caller decides on a tombstone.
    pub(super) fn remove(&mut self, id: &MailId) -> Option<Held> {
        let h = self.messages.remove(id)?;
        let m = &h.mail;
        let cost = message_cost(m);
        self.charged -= cost;
        self.budget.give(cost);
        for (map, user) in [(&mut self.by_recipient, &m.to), (&mut self.by_sender, &m.from)] {
            if let Some(u) = map.get_mut(user) {
                u.messages -= 1;
                u.bytes -= m.sealed.len() as u64;
                if u.messages == 0 {
                    map.remove(user);
                }
            }
        }
        if let Some(q) = self.queues.get_mut(&m.to) {
            q.remove(&(m.stored_at_ms, h.arrival, m.id));
            if q.is_empty() {
                self.queues.remove(&m.to);
            }
        }
        Some(h)
    }

    /// Replaces a held message's content by another under the same id, keeping its
    /// acknowledgements (replicas settle a conflict the same way everywhere).
    pub(super) fn replace(&mut self, mail: Mail) {
        if let Some(old) = self.remove(&mail.id) {
            self.budget.force_take(message_cost(&mail));
            self.insert(mail, old.acks);
        }
    }

    /// Deletes a message and leaves a tombstone until its expiry, so replication does
    /// not bring it back.
    pub(super) fn bury(&mut self, id: &MailId, until_ms: u64) {
        let until = match self.remove(id) {
            Some(h) => until_ms.max(h.mail.expiry_ms(self.limits.retention_ms)),
            None => until_ms,
        };
        match self.tombstones.get_mut(id) {
            Some(t) => *t = (*t).max(until),
            None => {
                // Smaller than the message it replaces: taken whatever the cap.
                self.budget.force_take(TOMBSTONE_BYTES);
                self.charged += TOMBSTONE_BYTES;
                self.tombstones.insert(*id, until);
            }
        }
    }

    /// Records a tombstone for an id not held, if the budget allows.
    pub(super) fn bury_unknown(&mut self, id: &MailId, until_ms: u64) -> bool {
        if let Some(t) = self.tombstones.get_mut(id) {
            *t = (*t).max(until_ms);
            return true;
        }
        if !self.budget.try_take(TOMBSTONE_BYTES) {
            return false;
        }
        self.charged += TOMBSTONE_BYTES;
        self.tombstones.insert(*id, until_ms);
        true
    }

    /// Records that `device` of `user` was seen at `now` (from the slot's live index
    /// entries): it counts among the devices that must acknowledge each message.
    pub fn note_device(&mut self, user: &str, device: DeviceId, now: u64) {
        self.see_device(user, device, now);
    }

    pub(super) fn see_device(&mut self, user: &str, device: DeviceId, at: u64) {
        if crate::login::username::canonical(user).as_deref() != Ok(user) {
            return;
        }
        let cost = device_cost(user);
        let known = self.devices.entry(user.to_owned()).or_default();
        if let Some(t) = known.get_mut(&device) {
            *t = (*t).max(at);
            return;
        }
        if known.len() >= DEVICES_PER_USER_MAX {
            // Forget the least recently seen: a spare home folder, not the device in use.
            if let Some(old) = known.iter().min_by_key(|(d, t)| (**t, **d)).map(|(d, _)| *d) {
                known.remove(&old);
                self.charged -= cost;
                self.budget.give(cost);
            }
        }
        known.insert(device, at);
        // Bounded per user and needed for correct deletion: taken whatever the cap.
        self.budget.force_take(cost);
        self.charged += cost;
    }

    /// Devices of `user` seen within retention at `now`.
    fn live_devices(&self, user: &str, now: u64) -> impl Iterator<Item = &DeviceId> {
        let retention = self.limits.retention_ms;
        self.devices
            .get(user)
            .into_iter()
            .flat_map(move |m| m.iter().filter(move |(_, t)| t.saturating_add(retention) > now).map(|(d, _)| d))
    }

    /// Every known device of the recipient has acknowledged it.
    fn fully_acked(&self, h: &Held, now: u64) -> bool {
        let mut any = false;
        for d in self.live_devices(&h.mail.to, now) {
            if !h.acks.contains(d) {
                return false;
            }
            any = true;
        }
        any
    }

    /// What `device` of `user` has not acknowledged yet, in the order stored, from just
    /// after `after` (the last id of the previous page, if this replica knows it), at most
    /// `max_bytes` of encoded messages (one message always, so a page is never empty while
    /// any is pending). A cursor only pages: a fetch from the start returns everything
    /// still unacknowledged, so nothing is missed when replicas order differently.
    pub fn fetch(&mut self, now: u64, user: &str, device: DeviceId, after: Option<MailId>, max_bytes: usize) -> Page {
        self.see_device(user, device, now);
        let retention = self.limits.retention_ms;
        let Some(queue) = self.queues.get(user) else { return Page::default() };
        let ids: Vec<&MailId> = queue.iter().map(|(_, _, id)| id).collect();
        let start = after.and_then(|a| ids.iter().position(|id| **id == a)).map_or(0, |p| p + 1);
        let mut page = Page::default();
        let mut used = 0usize;
        for id in &ids[start..] {
            let Some(h) = self.messages.get(*id) else { continue };
            if h.acks.contains(&device) || h.mail.expiry_ms(retention) <= now {
                continue;
            }
            let len = h.mail.wire_len();
            if !page.messages.is_empty() && used + len > max_bytes {
                page.more = true;
                break;
            }
            used += len;
            page.messages.push(h.mail.clone());
        }
        page
    }

    /// Records that `device` of `user` has written `ids` to its history; a message every
    /// known device has acknowledged is deleted. Ids not held (or not `user`'s) are
    /// ignored: the device acknowledges a repeat again when it is handed one.
    pub fn ack(&mut self, now: u64, user: &str, device: DeviceId, ids: &[MailId]) -> Acked {
        self.see_device(user, device, now);
        let mut out = Acked::default();
        for id in ids {
            let Some(h) = self.messages.get_mut(id) else { continue };
            if h.mail.to != user || h.acks.contains(&device) || h.acks.len() >= ACKS_PER_MESSAGE_MAX {
                continue;
            }
            h.acks.insert(device);
            out.acked += 1;
            if self.fully_acked(&self.messages[id], now) {
                self.bury(id, 0);
                self.stats.deleted += 1;
                out.deleted += 1;
            }
        }
        out
    }

    /// Drops what is past retention at `now` (messages, tombstones, devices), then
    /// deletes the messages every remaining device has acknowledged (acknowledgements
    /// that arrived by replication, or a device forgotten).
    pub fn expire(&mut self, now: u64) -> Expired {
        let retention = self.limits.retention_ms;
        let mut out = Expired::default();
        let old: Vec<MailId> =
            self.messages.iter().filter(|(_, h)| h.mail.expiry_ms(retention) <= now).map(|(id, _)| *id).collect();
        for id in &old {
            self.remove(id);
        }
        out.messages = old.len();
        self.stats.expired += old.len() as u64;
        let before = self.tombstones.len();
        self.tombstones.retain(|_, until| *until > now);
        out.tombstones = before - self.tombstones.len();
        let freed = out.tombstones as u64 * TOMBSTONE_BYTES;
        self.charged -= freed;
        self.budget.give(freed);
        let mut freed = 0;
        self.devices.retain(|user, known| {
            let before = known.len();
            known.retain(|_, t| t.saturating_add(retention) > now);
            let gone = before - known.len();
            out.devices += gone;
            freed += gone as u64 * device_cost(user);
            !known.is_empty()
        });
        self.charged -= freed;
        self.budget.give(freed);
        out.deleted = self.settle(now);
        out
    }

    /// Deletes every message that all known devices have acknowledged; returns how many.
    pub(super) fn settle(&mut self, now: u64) -> usize {
        let done: Vec<MailId> =
            self.messages.iter().filter(|(_, h)| self.fully_acked(h, now)).map(|(id, _)| *id).collect();
        for id in &done {
            self.bury(id, 0);
        }
        self.stats.deleted += done.len() as u64;
        done.len()
    }

    /// Whether the message is deleted here (a tombstone is held).
    pub fn is_deleted(&self, id: &MailId) -> bool {
        self.tombstones.contains_key(id)
    }

    /// Whether the message is held (not deleted, not expired by a pass yet).
    pub fn holds(&self, id: &MailId) -> bool {
        self.messages.contains_key(id)
    }

    /// Counters and gauges.
    pub fn stats(&self) -> MailStats {
        MailStats {
            messages: self.messages.len(),
            bytes: self.by_recipient.values().map(|u| u.bytes).sum(),
            tombstones: self.tombstones.len(),
            charged: self.charged,
            ..self.stats
        }
    }

    /// The latest a peer's tombstone or device time may lie ahead of `now`.
    pub(super) fn horizon(&self, now: u64) -> u64 {
        now.saturating_add(self.limits.retention_ms).saturating_add(CLOCK_SKEW_MS_MAX)
    }

    /// Bytes this store should have charged, recomputed from what it holds.
    #[cfg(test)]
    pub(super) fn recount(&self) -> u64 {
        self.messages.values().map(|h| message_cost(&h.mail)).sum::<u64>()
            + self.tombstones.len() as u64 * TOMBSTONE_BYTES
            + self.devices.iter().map(|(u, m)| m.len() as u64 * device_cost(u)).sum::<u64>()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::index::mail::message::tests::mail;

    const T0: u64 = 1_800_000_000_000;
    const DAY: u64 = 24 * 3600 * 1000;
    const D1: DeviceId = crate::crypto::keys::KeyId([1; 8]);
    const D2: DeviceId = crate::crypto::keys::KeyId([2; 8]);

    fn store() -> MailStore {
        MailStore::new(MailLimits::default(), Budget::new(1 << 30))
    }

    fn ids(p: &Page) -> Vec<u8> {
        p.messages.iter().map(|m| m.id[0]).collect()
    }

    #[test]
    fn idempotent_by_id_and_handed_out_in_the_order_stored() {
        let mut s = store();
        assert_eq!(s.store(T0, mail(3, "bob", "alice", T0 + 20, 10)), Stored::New);
        assert_eq!(s.store(T0, mail(1, "bob", "alice", T0 + 10, 10)), Stored::New);
        assert_eq!(s.store(T0, mail(2, "bob", "carol", T0 + 10, 10)), Stored::New);
        assert_eq!(s.store(T0, mail(1, "bob", "alice", T0 + 10, 10)), Stored::Duplicate, "a retry");
        assert_eq!(s.store(T0, mail(1, "bob", "alice", T0 + 10, 11)), Stored::Refused(Refusal::IdInUse));
        assert_eq!(s.store(T0, mail(9, "Bob", "alice", T0, 10)), Stored::Refused(Refusal::Malformed));
        let p = s.fetch(T0, "bob", D1, None, usize::MAX);
        assert_eq!(ids(&p), [1, 2, 3], "by stored-at time, then arrival");
        assert!(!p.more);
        assert!(s.fetch(T0, "carol", D1, None, usize::MAX).messages.is_empty());
        let st = s.stats();
        assert_eq!((st.messages, st.bytes, st.stored, st.duplicate), (3, 30, 3, 1));
        assert_eq!((st.refused_for(Refusal::IdInUse), st.refused_for(Refusal::Malformed)), (1, 1));
    }

    #[test]
    fn pages_by_bytes_with_a_cursor() {
        let mut s = store();
        for i in 1..=5u8 {
            s.store(T0, mail(i, "bob", "alice", T0 + u64::from(i), 1000));
        }
        let one = mail(1, "bob", "alice", T0, 1000).wire_len();
        let p = s.fetch(T0, "bob", D1, None, 2 * one);
        assert_eq!((ids(&p), p.more), (vec![1, 2], true));
        let p = s.fetch(T0, "bob", D1, Some(p.messages[1].id), 2 * one);
        assert_eq!((ids(&p), p.more), (vec![3, 4], true));
        let p = s.fetch(T0, "bob", D1, Some(p.messages[1].id), 2 * one);
        assert_eq!((ids(&p), p.more), (vec![5], false));
        assert_eq!(ids(&s.fetch(T0, "bob", D1, None, 10)), [1], "never an empty page while any is pending");
        assert_eq!(ids(&s.fetch(T0, "bob", D1, Some([9; 16]), 10)), [1], "an unknown cursor starts over");
    }

    #[test]
    fn deleted_once_every_device_acknowledged() {
        let mut s = store();
        s.note_device("bob", D1, T0);
        s.note_device("bob", D2, T0);
        let m = mail(1, "bob", "alice", T0, 100);
        s.store(T0, m.clone());
        assert_eq!(s.ack(T0, "bob", D1, &[m.id]), Acked { acked: 1, deleted: 0 });
        assert_eq!(s.ack(T0, "bob", D1, &[m.id]), Acked::default(), "once per device");
        assert!(s.fetch(T0, "bob", D1, None, usize::MAX).messages.is_empty(), "D1 has it");
        assert_eq!(ids(&s.fetch(T0, "bob", D2, None, usize::MAX)), [1], "D2 has not");
        assert_eq!(s.ack(T0, "alice", D2, &[m.id]), Acked::default(), "not alice's to acknowledge");
        assert_eq!(s.ack(T0, "bob", D2, &[m.id]), Acked { acked: 1, deleted: 1 });
        assert!(s.is_deleted(&m.id) && !s.holds(&m.id));
        assert_eq!(s.store(T0 + 1, m.clone()), Stored::Duplicate, "a retry does not bring it back");
        assert!(s.fetch(T0, "bob", D2, None, usize::MAX).messages.is_empty());
        assert_eq!(s.stats().deleted, 1);
        assert_eq!(s.stats().charged, s.recount());
    }

    #[test]
    fn a_device_that_appears_later_counts_too() {
        let mut s = store();
        let m = mail(1, "bob", "alice", T0, 100);
        s.store(T0, m.clone());
        assert_eq!(ids(&s.fetch(T0 + 1, "bob", D1, None, usize::MAX)), [1]);
        s.note_device("bob", D2, T0 + 2);
        assert_eq!(s.ack(T0 + 3, "bob", D1, &[m.id]).deleted, 0, "D2 has not read it");
        assert_eq!(ids(&s.fetch(T0 + 4, "bob", D2, None, usize::MAX)), [1]);
        assert_eq!(s.ack(T0 + 5, "bob", D2, &[m.id]).deleted, 1);
    }

    #[test]
    fn a_device_not_seen_within_retention_is_forgotten() {
        let mut s = store();
        s.note_device("bob", D1, T0);
        s.note_device("bob", D2, T0);
        let m = mail(1, "bob", "alice", T0 + 20 * DAY, 100);
        s.store(T0 + 20 * DAY, m.clone());
        assert_eq!(s.ack(T0 + 25 * DAY, "bob", D1, &[m.id]).deleted, 0, "D2 was seen 25 days ago");
        assert_eq!(s.expire(T0 + 29 * DAY), Expired::default());
        let e = s.expire(T0 + 30 * DAY + 1);
        assert_eq!(e, Expired { messages: 0, tombstones: 0, devices: 1, deleted: 1 }, "D2 forgotten: D1 was the last");
        assert!(s.is_deleted(&m.id));
        assert_eq!(s.stats().charged, s.recount());
    }

    #[test]
    fn retention_drops_messages_then_tombstones() {
        let mut s = store();
        s.note_device("bob", D1, T0);
        let unread = mail(1, "bob", "alice", T0, 100);
        let read = mail(2, "bob", "alice", T0 + DAY, 100);
        let short = Mail { expires_at_ms: T0 + 3 * DAY, ..mail(3, "bob", "alice", T0, 100) };
        for m in [&unread, &read, &short] {
            assert_eq!(s.store(m.stored_at_ms, m.clone()), Stored::New);
        }
        s.ack(T0 + DAY, "bob", D1, &[read.id]);
        assert!(s.is_deleted(&read.id));
        assert_eq!(s.expire(T0 + 3 * DAY).messages, 1, "the sender's shorter expiry");
        assert_eq!(s.expire(T0 + 30 * DAY - 1), Expired::default());
        let e = s.expire(T0 + 30 * DAY);
        assert_eq!((e.messages, e.tombstones), (1, 0), "30 days after it was stored");
        assert_eq!(s.expire(T0 + 31 * DAY).tombstones, 1, "the tombstone lasts as long as the message would have");
        assert_eq!(s.stats().expired, 2);
        assert_eq!(s.store(T0 + 31 * DAY, unread), Stored::Refused(Refusal::Expired), "too late to store");
        assert_eq!(s.stats().charged, s.recount());
    }

    #[test]
    fn quotas_per_recipient_and_sender_free_up_when_read() {
        let limits = MailLimits {
            recipient_messages_max: 3,
            recipient_bytes_max: 250,
            sender_messages_max: 2,
            sender_bytes_max: 150,
            ..MailLimits::default()
        };
        let mut s = MailStore::new(limits, Budget::new(1 << 30));
        assert_eq!(s.store(T0, mail(1, "bob", "alice", T0, 100)), Stored::New);
        assert_eq!(s.store(T0, mail(2, "bob", "alice", T0, 51)), Stored::Refused(Refusal::SenderBytes));
        assert_eq!(s.store(T0, mail(3, "dave", "alice", T0, 50)), Stored::New);
        assert_eq!(s.store(T0, mail(4, "dave", "alice", T0, 1)), Stored::Refused(Refusal::SenderMessages));
        assert_eq!(s.store(T0, mail(5, "bob", "carol", T0, 100)), Stored::New);
        assert_eq!(s.store(T0, mail(6, "bob", "erin", T0, 51)), Stored::Refused(Refusal::RecipientBytes));
        assert_eq!(s.store(T0, mail(7, "bob", "erin", T0, 10)), Stored::New);
        assert_eq!(s.store(T0, mail(8, "bob", "frank", T0, 10)), Stored::Refused(Refusal::RecipientMessages));
        s.ack(T0, "bob", D1, &[mail(1, "bob", "alice", T0, 100).id]);
        assert_eq!(s.store(T0, mail(8, "bob", "frank", T0, 10)), Stored::New, "reading frees the quota");
        assert_eq!(s.store(T0, mail(9, "carol", "alice", T0, 100)), Stored::New);
        assert_eq!(
            s.store(T0, mail(10, "bob", "alice", T0, 1)),
            Stored::Refused(Refusal::SenderMessages),
            "bob's box is full too, but the sender is the one over its quota"
        );
        let st = s.stats();
        assert_eq!(st.refused.iter().sum::<u64>(), 5);
    }

    #[test]
    fn a_flood_stays_under_the_node_cap() {
        let cap = 8 << 20;
        let budget = Budget::new(cap);
        let mut stores: Vec<MailStore> =
            (0..4).map(|_| MailStore::new(MailLimits::default(), budget.clone())).collect();
        let mut id = 0u32;
        let mut next = |to: &str, from: &str, len: usize| {
            id += 1;
            let mut m = mail(0, to, from, T0, len);
            m.id[..4].copy_from_slice(&id.to_be_bytes());
            m
        };
        // One sender floods every slot: its quota stops it in each, others still get through.
        for s in stores.iter_mut() {
            let mut refused = 0;
            for i in 0..600 {
                if let Stored::Refused(r) = s.store(T0, next(&format!("user{}", i % 50), "mallory", 2000)) {
                    assert!(matches!(r, Refusal::SenderMessages | Refusal::SenderBytes), "{r:?}");
                    refused += 1;
                }
            }
            assert!(refused > 0);
            assert_eq!(s.store(T0, next("bob", "alice", 500)), Stored::New, "an honest sender is not refused");
        }
        assert!(budget.used() <= cap);
        // Many senders flood: the node's cap holds, whatever the quotas allow.
        let mut node_full = 0;
        for i in 0..4000 {
            let s = &mut stores[i % 4];
            match s.store(T0, next(&format!("user{}", i % 97), &format!("sybil{i}"), 2000)) {
                Stored::Refused(Refusal::NodeFull) => node_full += 1,
                Stored::New => {}
                other => panic!("{other:?}"),
            }
            assert!(budget.used() <= cap, "{} over {cap}", budget.used());
        }
        assert!(node_full > 2000, "{node_full}");
        assert!(budget.used() > cap - 3000, "filled to the cap: {}", budget.used());
        let used: u64 = stores.iter().map(|s| s.stats().charged).sum();
        assert_eq!(budget.used(), used);
        stores.truncate(1);
        assert_eq!(budget.used(), stores[0].stats().charged, "a dropped store gives its bytes back");
    }
}
