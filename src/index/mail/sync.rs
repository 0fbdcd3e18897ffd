//! Replication of a slot's mail between its replicas, as anti-entropy: a digest of the
//! whole slot, then one per bucket of ids, then a summary of a differing bucket's ids
//! (paged), then the items one side lacks. Four exchanges find any difference, and the
//! items travel only where they differ. [`MailStore::merge`] is a join: messages and
//! acknowledgements unite, a tombstone beats the message it stands for.
//!
//! Devices are compared too, by one digest of the (recipient, device) pairs (not their
//! last-seen times, which change at every fetch), exchanged before any message: a replica
//! filled by anti-entropy knows every device its peers know before it can delete a
//! message that some device has not read.
//!
//! [`MailStore::respond`] is what a replica answers to each request of the exchange
//! (`MailRpc`), so the super node's actors only carry requests and replies.

use super::message::{Mail, MailId};
use super::store::{MailStore, Refusal, Stored};
use crate::crypto::keys::KeyId;
use crate::index::rpc::{MAIL_ITEMS_BYTES_MAX, MailRpc};
use crate::login::username;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::collections::{BTreeMap, BTreeSet};

/// Buckets of ids per slot (by the id's first byte): a differing slot is narrowed to
/// 1/32 of its messages in one exchange.
pub const MAIL_BUCKETS: usize = 32;
/// Ids in one summary page (each at most 34 bytes encoded: one frame).
pub const SUMMARY_ITEMS_MAX: usize = 80;
/// Ids in one want (each 17 bytes encoded: one frame).
pub const WANTS_MAX: usize = 160;

/// The bucket of an id.
pub fn bucket_of(id: &MailId) -> u8 {
    (id[0] as usize % MAIL_BUCKETS) as u8
}

/// One unit of replicated mail state.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum MailItem {
    /// A held message and the devices that acknowledged it.
    Message {
        /// The message.
        mail: Mail,
        /// Device ids.
        acks: Vec<[u8; 8]>,
    },
    /// Acknowledgements of a message the receiver holds already.
    Acks {
        /// The message.
        id: MailId,
        /// Device ids.
        devices: Vec<[u8; 8]>,
    },
    /// A deleted message: never to be held again before `until_ms`.
    Tombstone {
        /// The message.
        id: MailId,
        /// Its expiry.
        until_ms: u64,
    },
    /// A recipient's device and when it was last seen (for a slot that moves).
    Device {
        /// The recipient.
        user: String,
        /// The device id.
        device: [u8; 8],
        /// Unix ms.
        last_seen_ms: u64,
    },
}

impl MailItem {
    /// Its postcard encoding's length.
    pub fn wire_len(&self) -> usize {
        postcard::to_allocvec(self).map_or(usize::MAX, |v| v.len())
    }
}

/// What a replica holds under an id, in brief.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ItemState {
    /// A message, by 8 bytes of its content digest and of its acknowledgements' digest.
    Live {
        /// Content digest (first 8 bytes).
        content: [u8; 8],
        /// Acknowledgements digest (first 8 bytes).
        acks: [u8; 8],
    },
    /// A tombstone.
    Deleted,
}

/// The ids of one bucket in one id range, with their states: the third exchange.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Summary {
    /// The bucket.
    pub bucket: u8,
    /// The range starts after this id (from the bucket's start if none).
    pub after: Option<MailId>,
    /// The range ends at this id, inclusive (at the bucket's end if none): more pages follow.
    pub end: Option<MailId>,
    /// What the sender holds in the range, in id order.
    pub items: Vec<(MailId, ItemState)>,
}

/// A request for one item.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Want {
    /// The id.
    pub id: MailId,
    /// Only its acknowledgements (the asker holds the message).
    pub acks_only: bool,
}

/// What comparing a peer's summary with ours gives: items to send it, items to ask for.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Reconcile {
    /// Ask the peer for these.
    pub want: Vec<Want>,
    /// Send the peer these.
    pub push: Vec<MailItem>,
}

/// What a merge did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Merged {
    /// Messages newly held.
    pub messages: usize,
    /// Acknowledgements newly recorded.
    pub acks: usize,
    /// Tombstones newly held (a held message among them is deleted).
    pub tombstones: usize,
    /// Devices newly learned or seen later.
    pub devices: usize,
    /// Items refused (malformed, expired, over quota or budget).
    pub refused: usize,
}

fn acks_digest(acks: &BTreeSet<KeyId>) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(b"confab/v1/mail-acks\0");
    for d in acks {
        h.update(d.0);
    }
    h.finalize().into()
}

fn first8(d: [u8; 32]) -> [u8; 8] {
    let mut out = [0; 8];
    out.copy_from_slice(&d[..8]);
    out
}

fn in_range(id: &MailId, after: Option<MailId>, end: Option<MailId>) -> bool {
    after.is_none_or(|a| *id > a) && end.is_none_or(|e| *id <= e)
}

impl MailStore {
    /// The states of everything held in `bucket`, in id order.
    fn states(&self, bucket: u8) -> BTreeMap<MailId, ItemState> {
        let mut out = BTreeMap::new();
        for (id, h) in self.messages.iter().filter(|(id, _)| bucket_of(id) == bucket) {
            let state =
                ItemState::Live { content: first8(h.mail.content_digest()), acks: first8(acks_digest(&h.acks)) };
            out.insert(*id, state);
        }
        for id in self.tombstones.keys().filter(|id| bucket_of(id) == bucket) {
            out.insert(*id, ItemState::Deleted);
        }
        out
    }

    /// One digest per bucket: the second exchange. One pass over the slot, each
    /// bucket's ids in order.
    pub fn bucket_digests(&self) -> Vec<[u8; 8]> {
        let mut all: BTreeMap<MailId, ItemState> = self
            .messages
            .iter()
            .map(|(id, h)| {
                (*id, ItemState::Live { content: first8(h.mail.content_digest()), acks: first8(acks_digest(&h.acks)) })
            })
            .collect();
        all.extend(self.tombstones.keys().map(|id| (*id, ItemState::Deleted)));
        let mut hashers: Vec<Sha256> = (0..MAIL_BUCKETS).map(|_| Sha256::new()).collect();
        for (id, s) in all {
            let h = &mut hashers[usize::from(bucket_of(&id))];
            h.update(id);
            match s {
                ItemState::Live { content, acks } => {
                    h.update([1]);
                    h.update(content);
                    h.update(acks);
                }
                ItemState::Deleted => h.update([2]),
            }
        }
        hashers.into_iter().map(|h| first8(h.finalize().into())).collect()
    }

    /// The digest of the recipients' known devices (not of their last-seen times).
    pub fn devices_digest(&self) -> [u8; 8] {
        let mut h = Sha256::new();
        h.update(b"confab/v1/mail-devices\0");
        for (user, known) in &self.devices {
            h.update((user.len() as u32).to_be_bytes());
            h.update(user.as_bytes());
            h.update((known.len() as u32).to_be_bytes());
            for d in known.keys() {
                h.update(d.0);
            }
        }
        first8(h.finalize().into())
    }

    /// The known devices with their last-seen times, as items.
    pub fn device_items(&self) -> Vec<MailItem> {
        self.devices
            .iter()
            .flat_map(|(user, known)| {
                known.iter().map(|(d, t)| MailItem::Device { user: user.clone(), device: d.0, last_seen_ms: *t })
            })
            .collect()
    }

    /// The digest of the slot's messages, acknowledgements, tombstones and devices: the
    /// first exchange. Equal digests, equal mail.
    pub fn digest(&self) -> [u8; 16] {
        let mut h = Sha256::new();
        h.update(b"confab/v1/mail-slot\0");
        for d in self.bucket_digests() {
            h.update(d);
        }
        h.update(self.devices_digest());
        let d: [u8; 32] = h.finalize().into();
        let mut out = [0; 16];
        out.copy_from_slice(&d[..16]);
        out
    }

    /// The buckets whose digests differ from `theirs` (all of them if the list is malformed).
    pub fn differing_buckets(&self, theirs: &[[u8; 8]]) -> Vec<u8> {
        let ours = self.bucket_digests();
        (0..MAIL_BUCKETS as u8).filter(|b| theirs.get(*b as usize) != Some(&ours[*b as usize])).collect()
    }

    /// A page of what this replica holds in `bucket` after `after`, at most `items_max` ids.
    pub fn summary(&self, bucket: u8, after: Option<MailId>, items_max: usize) -> Summary {
        let mut items: Vec<(MailId, ItemState)> =
            self.states(bucket).into_iter().filter(|(id, _)| in_range(id, after, None)).collect();
        let end = if items.len() > items_max.max(1) {
            items.truncate(items_max.max(1));
            items.last().map(|(id, _)| *id)
        } else {
            None
        };
        Summary { bucket, after, end, items }
    }

    /// Compares a peer's summary with what this replica holds in the same range.
    pub fn reconcile(&self, theirs: &Summary) -> Reconcile {
        let mut out = Reconcile::default();
        let ours: BTreeMap<MailId, ItemState> =
            self.states(theirs.bucket).into_iter().filter(|(id, _)| in_range(id, theirs.after, theirs.end)).collect();
        let theirs_map: BTreeMap<MailId, ItemState> =
            theirs.items.iter().filter(|(id, _)| bucket_of(id) == theirs.bucket).copied().collect();
        for (id, t) in &theirs_map {
            match (ours.get(id), t) {
                (None, _) => out.want.push(Want { id: *id, acks_only: false }),
                (Some(ItemState::Deleted), ItemState::Deleted) => {}
                (Some(ItemState::Deleted), ItemState::Live { .. }) => out.push.extend(self.item(id, false)),
                (Some(ItemState::Live { .. }), ItemState::Deleted) => out.want.push(Want { id: *id, acks_only: true }),
                (Some(ItemState::Live { content: c, acks: a }), ItemState::Live { content, acks }) => {
                    if c != content {
                        out.push.extend(self.item(id, false));
                        out.want.push(Want { id: *id, acks_only: false });
                    } else if a != acks {
                        out.push.extend(self.item(id, true));
                        out.want.push(Want { id: *id, acks_only: true });
                    }
                }
            }
        }
        for id in ours.keys().filter(|id| !theirs_map.contains_key(*id)) {
            out.push.extend(self.item(id, false));
        }
        out
    }

    /// What this replica holds under `id`, as an item: the tombstone, or the message (or
    /// only its acknowledgements).
    fn item(&self, id: &MailId, acks_only: bool) -> Option<MailItem> {
        if let Some(until) = self.tombstones.get(id) {
            return Some(MailItem::Tombstone { id: *id, until_ms: *until });
        }
        let h = self.messages.get(id)?;
        let acks = h.acks.iter().map(|d| d.0).collect();
        Some(if acks_only {
            MailItem::Acks { id: *id, devices: acks }
        } else {
            MailItem::Message { mail: h.mail.clone(), acks }
        })
    }

    /// The items a peer asked for (those still held).
    pub fn answer(&self, wants: &[Want]) -> Vec<MailItem> {
        wants.iter().filter_map(|w| self.item(&w.id, w.acks_only)).collect()
    }

    /// Everything this replica holds of the slot, for a replica that takes it over:
    /// devices first, so the importer counts them before any message could be deleted.
    pub fn export(&self) -> Vec<MailItem> {
        let mut out = self.device_items();
        out.extend(self.tombstones.iter().map(|(id, until)| MailItem::Tombstone { id: *id, until_ms: *until }));
        out.extend(self.messages.keys().filter_map(|id| self.item(id, false)));
        out
    }

    /// Takes in a slot exported by another replica.
    pub fn import(&mut self, now: u64, items: impl IntoIterator<Item = MailItem>) -> Merged {
        self.merge(now, items)
    }

    /// Joins a peer's items into this store at `now`. Without refusals (budget, quotas,
    /// expiry) the result is the same whatever the order and however often items come.
    /// Deleting what became fully acknowledged is left to [`MailStore::expire`], which
    /// depends on this replica's devices, so that merging stays a join.
    pub fn merge(&mut self, now: u64, items: impl IntoIterator<Item = MailItem>) -> Merged {
        let mut out = Merged::default();
        let horizon = self.horizon(now);
        for item in items {
            match item {
                MailItem::Message { mail, acks } => {
                    if let Some(until) = self.tombstones.get_mut(&mail.id) {
                        // The tombstone lasts as long as any copy could: merging stays a
                        // join whichever came first.
                        if mail.check(now).is_ok() {
                            *until = (*until).max(mail.expiry_ms(self.limits.retention_ms).min(horizon));
                        }
                        continue;
                    }
                    let acks: BTreeSet<KeyId> = acks.into_iter().map(KeyId).collect();
                    if let Some(h) = self.messages.get(&mail.id) {
                        // Two contents under one id: every replica keeps the lesser digest.
                        if h.mail != mail && mail.check(now).is_ok() && mail.content_digest() < h.mail.content_digest()
                        {
                            self.replace(mail.clone());
                        }
                        out.acks += self.unite_acks(&mail.id, acks);
                        continue;
                    }
                    if acks.len() > super::store::ACKS_PER_MESSAGE_MAX {
                        self.count_refusal(Refusal::Malformed);
                        out.refused += 1;
                        continue;
                    }
                    match self.admit(now, mail, acks) {
                        Stored::New => out.messages += 1,
                        Stored::Duplicate => {}
                        Stored::Refused(_) => out.refused += 1,
                    }
                }
                MailItem::Acks { id, devices } => {
                    out.acks += self.unite_acks(&id, devices.into_iter().map(KeyId).collect());
                }
                MailItem::Tombstone { id, until_ms } => {
                    if until_ms <= now {
                        continue;
                    }
                    let until = until_ms.min(horizon);
                    let new = !self.tombstones.contains_key(&id);
                    if self.messages.contains_key(&id) {
                        self.bury(&id, until);
                    } else if !self.bury_unknown(&id, until) {
                        self.count_refusal(Refusal::NodeFull);
                        out.refused += 1;
                        continue;
                    }
                    out.tombstones += usize::from(new);
                }
                MailItem::Device { user, device, last_seen_ms } => {
                    let fresh = last_seen_ms.saturating_add(self.limits().retention_ms) > now;
                    if !fresh || username::canonical(&user).as_ref() != Ok(&user) {
                        continue;
                    }
                    let at = last_seen_ms.min(now);
                    let known = self.devices.get(&user).and_then(|m| m.get(&KeyId(device))).copied();
                    if known.is_none_or(|t| t < at) {
                        self.see_device(&user, KeyId(device), at);
                        out.devices += 1;
                    }
                }
            }
        }
        out
    }

    /// Adds acknowledgements to a held message, up to the bound; returns how many.
    fn unite_acks(&mut self, id: &MailId, acks: BTreeSet<KeyId>) -> usize {
        let Some(h) = self.messages.get_mut(id) else { return 0 };
        let mut added = 0;
        for d in acks {
            if h.acks.len() >= super::store::ACKS_PER_MESSAGE_MAX {
                break;
            }
            added += usize::from(h.acks.insert(d));
        }
        added
    }
}

/// Where this node and a peer stand towards one slot, as this node's slot map says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Standing {
    /// This node replicates the slot.
    pub me_replica: bool,
    /// The peer replicates the slot.
    pub peer_replica: bool,
}

/// What a replica answers to one request of a peer about one slot's mail.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Answer {
    /// Requests and replies for the peer, in the order they are to go (devices first).
    pub replies: Vec<MailRpc>,
    /// What merging the peer's items did.
    pub merged: Merged,
}

impl Answer {
    /// Items in the replies.
    pub fn items(&self) -> usize {
        self.replies.iter().map(|r| if let MailRpc::Items { items, .. } = r { items.len() } else { 0 }).sum()
    }
}

/// Items as `Items` requests of one frame each.
fn framed(slot: u32, items: Vec<MailItem>) -> impl Iterator<Item = MailRpc> {
    pack(items, MAIL_ITEMS_BYTES_MAX).into_iter().map(move |items| MailRpc::Items { slot, items })
}

impl MailStore {
    /// Whether nothing is held: no message, tombstone or device (a slot with nothing to
    /// hand over, and nothing to compare).
    pub fn is_empty(&self) -> bool {
        self.messages.is_empty() && self.tombstones.is_empty() && self.devices.is_empty()
    }

    /// Answers a peer's request about this slot (`slot`) at `now`.
    ///
    /// The exchange: a node sends its `Digests`; a replica whose digest differs answers
    /// `Buckets`, and one whose digest is equal answers `Matches` when the sender is no
    /// longer a replica (it is handing the slot over and may then let its copy go). On
    /// `Buckets` the first node sends its devices (and asks for the peer's) before any
    /// message, then a `Summary` of every differing bucket; the replica reconciles,
    /// asking with `Want` and pushing `Items`; `Want` is answered with `Items`. Only a
    /// replica answers `Digests` and `Summary`, and only a replica's `Buckets` and `Want`
    /// are answered: a former replica hands over by its own round, and takes in what
    /// comes back (the replica's devices too) so the two copies end up equal.
    pub fn respond(&mut self, now: u64, slot: u32, at: Standing, rpc: MailRpc) -> Answer {
        let mut out = Answer::default();
        match rpc {
            MailRpc::Digests { slots } => {
                if !at.me_replica {
                    return out;
                }
                let ours = self.digest();
                for (_, theirs) in slots.into_iter().filter(|(s, _)| *s == slot) {
                    if theirs != ours {
                        let (digests, devices) = (self.bucket_digests(), self.devices_digest());
                        out.replies.push(MailRpc::Buckets { slot, digests, devices });
                    } else if !at.peer_replica {
                        out.replies.push(MailRpc::Matches { slots: vec![(slot, ours)] });
                    }
                }
            }
            // Only a replica answers a node's digests with buckets, and asks for items.
            MailRpc::Buckets { .. } | MailRpc::Want { .. } if !at.peer_replica => {}
            MailRpc::Buckets { digests, devices, .. } => {
                if devices != self.devices_digest() {
                    out.replies.extend(framed(slot, self.device_items()));
                    out.replies.push(MailRpc::Devices { slot });
                }
                for bucket in self.differing_buckets(&digests) {
                    let mut after = None;
                    loop {
                        let page = self.summary(bucket, after, SUMMARY_ITEMS_MAX);
                        let end = page.end;
                        out.replies.push(MailRpc::Summary { slot, summary: page });
                        match end {
                            Some(e) => after = Some(e),
                            None => break,
                        }
                    }
                }
            }
            MailRpc::Summary { summary, .. } => {
                if !at.me_replica {
                    return out;
                }
                let r = self.reconcile(&summary);
                out.replies.extend(r.want.chunks(WANTS_MAX).map(|w| MailRpc::Want { slot, wants: w.to_vec() }));
                out.replies.extend(framed(slot, r.push));
            }
            MailRpc::Want { wants, .. } => out.replies.extend(framed(slot, self.answer(&wants))),
            MailRpc::Devices { .. } => out.replies.extend(framed(slot, self.device_items())),
            MailRpc::Items { items, .. } => out.merged = self.merge(now, items),
            // Delivery requests and hand-over confirmations are not a store's to answer.
            MailRpc::Store { .. }
            | MailRpc::Stored { .. }
            | MailRpc::Fetch { .. }
            | MailRpc::Page { .. }
            | MailRpc::Ack { .. }
            | MailRpc::Matches { .. }
            | MailRpc::Sessions { .. }
            | MailRpc::At { .. } => {}
        }
        out
    }
}

/// Splits items into groups of at most `bytes_max` encoded bytes each (an item larger
/// than that travels alone).
pub fn pack(items: Vec<MailItem>, bytes_max: usize) -> Vec<Vec<MailItem>> {
    let mut out: Vec<Vec<MailItem>> = Vec::new();
    let mut used = 0;
    for item in items {
        let len = item.wire_len();
        match out.last_mut() {
            Some(group) if used + len <= bytes_max => group.push(item),
            _ => {
                out.push(vec![item]);
                used = 0;
            }
        }
        used += len;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::index::mail::message::tests::mail;
    use crate::index::mail::tests::sync;
    use crate::index::mail::{Budget, MailLimits};
    use proptest::prelude::*;

    const T0: u64 = 1_800_000_000_000;

    fn store() -> MailStore {
        MailStore::new(MailLimits::default(), Budget::new(1 << 30))
    }

    fn contents(s: &MailStore) -> Vec<MailItem> {
        let mut v: Vec<MailItem> = s.export().into_iter().filter(|i| !matches!(i, MailItem::Device { .. })).collect();
        v.sort_by_key(|i| i.wire_len());
        v.sort_by(|a, b| format!("{a:?}").cmp(&format!("{b:?}")));
        v
    }

    #[test]
    fn tombstones_stop_resurrection() {
        let (mut a, mut b, mut c) = (store(), store(), store());
        let d = KeyId([1; 8]);
        let m = mail(1, "bob", "alice", T0, 100);
        for s in [&mut a, &mut b, &mut c] {
            s.note_device("bob", d, T0);
            s.store(T0, m.clone());
        }
        assert_eq!(a.ack(T0 + 1, "bob", d, &[m.id]).deleted, 1);
        sync(T0 + 2, &mut b, &mut a);
        assert!(b.is_deleted(&m.id) && !b.holds(&m.id), "the live copy loses to the tombstone");
        // An old copy (c never heard) merged in any direction does not bring it back.
        b.merge(T0 + 3, c.export());
        assert!(b.is_deleted(&m.id) && !b.holds(&m.id));
        sync(T0 + 4, &mut c, &mut b);
        assert!(c.is_deleted(&m.id));
        assert_eq!(a.digest(), c.digest());
    }

    #[test]
    fn acknowledgements_replicate_and_complete_a_deletion() {
        let (mut a, mut b) = (store(), store());
        let (d1, d2) = (KeyId([1; 8]), KeyId([2; 8]));
        let m = mail(1, "bob", "alice", T0, 100);
        for s in [&mut a, &mut b] {
            s.note_device("bob", d1, T0);
            s.note_device("bob", d2, T0);
            s.store(T0, m.clone());
        }
        a.ack(T0, "bob", d1, &[m.id]);
        b.ack(T0, "bob", d2, &[m.id]);
        sync(T0, &mut a, &mut b);
        assert_eq!(a.digest(), b.digest());
        assert!(a.fetch(T0, "bob", d2, None, usize::MAX).messages.is_empty(), "d2's ack reached a");
        assert_eq!(a.expire(T0).deleted, 1, "every device acknowledged, at different replicas");
    }

    #[test]
    fn a_new_replica_learns_the_devices_before_the_messages() {
        let (mut a, mut fresh) = (store(), store());
        let (d1, d2) = (KeyId([1; 8]), KeyId([2; 8]));
        a.note_device("bob", d1, T0);
        a.note_device("bob", d2, T0);
        let m = mail(1, "bob", "alice", T0, 100);
        a.store(T0, m.clone());
        sync(T0 + 1, &mut a, &mut fresh);
        assert_eq!(fresh.devices_digest(), a.devices_digest());
        assert_eq!(fresh.ack(T0 + 2, "bob", d1, &[m.id]).deleted, 0, "d2 is known, and has not read it");
        assert_eq!(fresh.fetch(T0 + 3, "bob", d2, None, usize::MAX).messages, [m]);
        // Last-seen times are not compared, and merge to the latest.
        a.note_device("bob", d2, T0 + 10);
        assert_eq!(a.devices_digest(), fresh.devices_digest());
        fresh.merge(T0 + 11, a.device_items());
        assert_eq!(fresh.devices["bob"][&d2], T0 + 10);
    }

    #[test]
    fn summaries_page_through_a_large_bucket() {
        let (mut a, mut b) = (store(), store());
        for i in 0..300u16 {
            let mut m = mail(0, "bob", "alice", T0, 10);
            m.id[..2].copy_from_slice(&(i * 32).to_be_bytes());
            m.id[0] = 0; // every message in bucket 0
            m.id[2] = (i >> 8) as u8;
            m.id[3] = i as u8;
            assert_eq!(a.store(T0, m), Stored::New);
        }
        assert_eq!(a.differing_buckets(&b.bucket_digests()), [0]);
        let s = a.summary(0, None, SUMMARY_ITEMS_MAX);
        assert_eq!(s.items.len(), SUMMARY_ITEMS_MAX);
        assert!(s.end.is_some());
        sync(T0, &mut a, &mut b);
        assert_eq!(b.stats().messages, 300);
        assert_eq!(a.digest(), b.digest());
    }

    #[test]
    fn export_and_import_move_a_slot() {
        let mut a = store();
        let d = KeyId([1; 8]);
        a.note_device("bob", d, T0);
        a.note_device("carol", KeyId([2; 8]), T0);
        a.store(T0, mail(1, "bob", "alice", T0, 100));
        a.store(T0, mail(2, "bob", "alice", T0, 100));
        a.store(T0, mail(3, "carol", "alice", T0, 100));
        a.ack(T0, "bob", d, &[mail(1, "bob", "alice", T0, 100).id]);
        let mut b = store();
        let items = a.export();
        assert_eq!(b.import(T0 + 5, items.clone()).devices, 2);
        assert_eq!(b.digest(), a.digest());
        assert_eq!(b.devices, a.devices, "the devices come along, so nothing is deleted too early");
        assert_eq!(b.import(T0 + 5, items), Merged::default(), "importing twice changes nothing");
    }

    #[test]
    fn merge_refuses_what_it_must() {
        let mut a = MailStore::new(MailLimits::default(), Budget::new(1000));
        let big = mail(1, "bob", "alice", T0, 900);
        let bad = Mail { to: "B".into(), ..mail(2, "bob", "alice", T0, 10) };
        let old = mail(3, "bob", "alice", T0 - 31 * 24 * 3600 * 1000, 10);
        let m = a.merge(T0, [big, bad, old].map(|mail| MailItem::Message { mail, acks: vec![] }));
        assert_eq!(m.refused, 3);
        let st = a.stats();
        assert_eq!([Refusal::NodeFull, Refusal::Malformed, Refusal::Expired].map(|r| st.refused_for(r)), [1, 1, 1]);
        let gone = MailItem::Tombstone { id: [5; 16], until_ms: T0 - 1 };
        assert_eq!(a.merge(T0, [gone]), Merged::default(), "an expired tombstone is not kept");
    }

    fn pool() -> Vec<MailItem> {
        let mut v = Vec::new();
        for i in 0..6u8 {
            let m = mail(i * 40, "bob", ["alice", "carol"][usize::from(i % 2)], T0 + u64::from(i), 50);
            v.push(MailItem::Message { mail: m.clone(), acks: vec![] });
            v.push(MailItem::Message { mail: m.clone(), acks: vec![[1; 8]] });
            v.push(MailItem::Acks { id: m.id, devices: vec![[2; 8], [3; 8]] });
            v.push(MailItem::Tombstone { id: m.id, until_ms: T0 + 1000 });
            // Another content under the same id (a forgery or a collision).
            v.push(MailItem::Message { mail: Mail { sealed: vec![9; 50], ..m }, acks: vec![[4; 8]] });
        }
        v
    }

    fn built(picks: &[usize]) -> MailStore {
        let pool = pool();
        let mut s = store();
        s.merge(T0, picks.iter().map(|i| pool[i % pool.len()].clone()));
        s
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]

        /// Merge is commutative, associative and idempotent.
        #[test]
        fn merge_is_a_join(a in proptest::collection::vec(0usize..30, 0..12),
                           b in proptest::collection::vec(0usize..30, 0..12),
                           c in proptest::collection::vec(0usize..30, 0..12)) {
            let (sa, sb, sc) = (built(&a), built(&b), built(&c));
            let mut ab = built(&a);
            ab.merge(T0, sb.export());
            let mut ba = built(&b);
            ba.merge(T0, sa.export());
            prop_assert_eq!(ab.digest(), ba.digest());
            prop_assert_eq!(contents(&ab), contents(&ba));
            let mut ab_c = built(&a);
            ab_c.merge(T0, sb.export());
            ab_c.merge(T0, sc.export());
            let mut bc = built(&b);
            bc.merge(T0, sc.export());
            let mut a_bc = built(&a);
            a_bc.merge(T0, bc.export());
            prop_assert_eq!(ab_c.digest(), a_bc.digest());
            let before = ab.digest();
            let again = ab.export();
            ab.merge(T0, again);
            prop_assert_eq!(ab.digest(), before);
            prop_assert_eq!(ab.stats().charged, ab.recount());
        }
    }
}
