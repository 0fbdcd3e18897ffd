//! `IndexSlot`: one actor per Global Index slot this super node replicates. It owns the
//! slot's [`SlotStore`] (entries reach it already verified) and the slot's stored
//! messages, a [`MailStore`].

use crate::crypto::keys::KeyId;
use crate::index::mail::{Answer, Budget, Mail, MailId, MailLimits, MailStats, MailStore, Page, Standing, Stored};
use crate::index::rpc::MailRpc;
use crate::index::store::{Merge, SlotDigest, SlotStore};
use crate::index::{Entry, Slot};
use actix::prelude::*;
use std::time::Duration;

/// How often a slot drops expired entries.
const EXPIRE_EVERY: Duration = Duration::from_secs(60);

/// The actor.
pub struct IndexSlot {
    slot: Slot,
    store: SlotStore,
    mail: MailStore,
    /// The mail's digest, until the mail changes (computed for each anti-entropy round).
    mail_digest: Option<[u8; 16]>,
    retention_secs: u64,
    node: String,
    changes: Recipient<SlotChanged>,
}

/// A slot's contents changed: its new digest (None: empty), for anti-entropy.
#[derive(Message)]
#[rtype(result = "()")]
pub struct SlotChanged {
    /// The slot.
    pub slot: Slot,
    /// The digests of its contents, or None when it is empty.
    pub digest: Option<SlotDigest>,
    /// Keys held.
    pub entries: usize,
}

impl IndexSlot {
    /// An empty slot; `changes` hears of every change of its contents.
    pub fn new(
        slot: Slot,
        entries_max: usize,
        retention_secs: u64,
        node: String,
        changes: Recipient<SlotChanged>,
    ) -> Self {
        Self::with_mail(slot, entries_max, retention_secs, node, changes, MailLimits::default(), Budget::new(0))
    }

    /// An empty slot whose stored messages follow `limits` and are charged to `budget`
    /// (the node's, shared by all its slots).
    pub fn with_mail(
        slot: Slot,
        entries_max: usize,
        retention_secs: u64,
        node: String,
        changes: Recipient<SlotChanged>,
        limits: MailLimits,
        budget: Budget,
    ) -> Self {
        let mail = MailStore::new(limits, budget);
        Self { slot, store: SlotStore::new(entries_max), mail, mail_digest: None, retention_secs, node, changes }
    }

    /// The mail store, to change: its digest is computed again when next asked.
    fn mail_mut(&mut self) -> &mut MailStore {
        self.mail_digest = None;
        &mut self.mail
    }

    /// The devices of the users whose entries this slot holds, so the mail store counts a
    /// device that has not fetched yet.
    fn note_devices(&mut self, now_ms: u64) {
        let devices: Vec<(String, KeyId)> = self
            .store
            .iter()
            .filter(|(k, _)| !k.starts_with("token:"))
            .filter_map(|(k, e)| Some((k.to_owned(), device_of(e)?)))
            .collect();
        for (user, d) in devices {
            self.mail_mut().note_device(&user, d, now_ms);
        }
    }

    fn changed(&self) {
        let digest = self.store.reported();
        self.changes.do_send(SlotChanged { slot: self.slot, digest, entries: self.store.len() });
    }

    /// Drops the entries past retention, and says so if any went.
    fn expire_entries(&mut self) {
        let n = self.store.expire(crate::unix_now(), self.retention_secs);
        if n > 0 {
            self.changed();
            tracing::debug!(node = %self.node, slot = self.slot.0, expired = n, "index entries expired");
            metrics::counter!("confab_index_entries_expired_total", "node" => self.node.clone()).increment(n as u64);
        }
    }
}

impl Actor for IndexSlot {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        ctx.run_interval(EXPIRE_EVERY, |act, _| {
            let now_ms = crate::unix_now() * 1000;
            act.note_devices(now_ms);
            let e = act.mail_mut().expire(now_ms);
            if e.messages > 0 {
                metrics::counter!("confab_mail_messages_total", "node" => act.node.clone(), "outcome" => "expired")
                    .increment(e.messages as u64);
            }
            act.expire_entries();
        });
    }
}

/// Merge a verified entry.
#[derive(Message)]
#[rtype(result = "Merge")]
pub struct Put {
    /// The key.
    pub key: String,
    /// The verified entry.
    pub entry: Entry,
}

impl Handler<Put> for IndexSlot {
    type Result = MessageResult<Put>;

    fn handle(&mut self, msg: Put, _: &mut Context<Self>) -> Self::Result {
        // An entry already past its keep is not worth holding (a posting is kept a day
        // longer: one written at a login must still repair onto a new replica while the
        // user's entry from the logout lasts).
        if crate::index::store::past_keep(&msg.key, msg.entry.last_seen, crate::unix_now(), self.retention_secs) {
            return MessageResult(Merge::Stale);
        }
        let device = (!msg.key.starts_with("token:")).then(|| device_of(&msg.entry)).flatten();
        let m = self.store.merge(&msg.key, msg.entry);
        if matches!(m, Merge::Stored | Merge::Replaced) {
            self.changed();
            // A device that logged in counts for the user's stored messages from now on,
            // even before it fetches: they wait for it too.
            if let Some(d) = device {
                self.mail_mut().note_device(&msg.key, d, crate::unix_now() * 1000);
            }
        }
        MessageResult(m)
    }
}

/// Read the entry under a key.
#[derive(Message)]
#[rtype(result = "Option<Entry>")]
pub struct Get(pub String);

impl Handler<Get> for IndexSlot {
    type Result = Option<Entry>;

    fn handle(&mut self, msg: Get, _: &mut Context<Self>) -> Option<Entry> {
        let e = self.store.get(&msg.0)?;
        (e.last_seen.saturating_add(self.retention_secs) > crate::unix_now()).then(|| e.clone())
    }
}

/// The super nodes where `key` has sessions within retention (each named once).
#[derive(Message)]
#[rtype(result = "Vec<String>")]
pub struct SessionsAt {
    /// The user.
    pub key: String,
}

impl Handler<SessionsAt> for IndexSlot {
    type Result = MessageResult<SessionsAt>;

    fn handle(&mut self, msg: SessionsAt, _: &mut Context<Self>) -> Self::Result {
        let now = crate::unix_now();
        let mut at: Vec<String> = self
            .store
            .sessions(&msg.key)
            .iter()
            .filter(|e| e.last_seen.saturating_add(self.retention_secs) > now && !e.supernode.is_empty())
            .map(|e| e.supernode.clone())
            .collect();
        at.sort();
        at.dedup();
        MessageResult(at)
    }
}

/// Every live entry of the slot, to repair another replica.
#[derive(Message)]
#[rtype(result = "Vec<(String, std::sync::Arc<Entry>)>")]
pub struct Dump;

impl Handler<Dump> for IndexSlot {
    type Result = MessageResult<Dump>;

    fn handle(&mut self, _: Dump, _: &mut Context<Self>) -> Self::Result {
        MessageResult(self.store.live(crate::unix_now(), self.retention_secs))
    }
}

/// For anti-entropy, after dropping what expired: (key hash, digest lane) of every key in
/// the buckets of the mask (bit b: bucket b), or of the given key hashes only.
#[derive(Message)]
#[rtype(result = "Vec<(u64, u64)>")]
pub struct Summarize(pub u64, pub Option<Vec<u64>>);

impl Handler<Summarize> for IndexSlot {
    type Result = Vec<(u64, u64)>;

    fn handle(&mut self, msg: Summarize, _: &mut Context<Self>) -> Vec<(u64, u64)> {
        self.expire_entries();
        self.store.summary_for(msg.0, msg.1.as_deref())
    }
}

/// The live entries of the keys whose hashes are given (sorted), with their keys.
#[derive(Message)]
#[rtype(result = "Vec<(String, std::sync::Arc<Entry>)>")]
pub struct Pick(pub Vec<u64>);

impl Handler<Pick> for IndexSlot {
    type Result = MessageResult<Pick>;

    fn handle(&mut self, msg: Pick, _: &mut Context<Self>) -> Self::Result {
        MessageResult(self.store.pick(&msg.0, crate::unix_now(), self.retention_secs))
    }
}

/// The usernames posted under a token prefix (search).
#[derive(Message)]
#[rtype(result = "Vec<String>")]
pub struct Posted {
    /// `token:<token>/`.
    pub prefix: String,
    /// Most names wanted.
    pub limit: usize,
}

impl Handler<Posted> for IndexSlot {
    type Result = Vec<String>;

    fn handle(&mut self, msg: Posted, _: &mut Context<Self>) -> Vec<String> {
        self.store.posted(&msg.prefix, crate::unix_now(), self.retention_secs, msg.limit)
    }
}

/// Stops the slot (its node is going away).
#[derive(Message)]
#[rtype(result = "()")]
pub struct StopSlot;

impl Handler<StopSlot> for IndexSlot {
    type Result = ();

    fn handle(&mut self, _: StopSlot, ctx: &mut Context<Self>) {
        ctx.stop();
    }
}

/// Stops a former slot if it holds no mail (its time as a former replica is up): true if
/// it stopped. Asked of the actor itself, after any store queued before it, so mail that
/// came since the router last looked keeps the slot (and is handed over).
#[derive(Message)]
#[rtype(result = "bool")]
pub struct Retire;

impl Handler<Retire> for IndexSlot {
    type Result = bool;

    fn handle(&mut self, _: Retire, ctx: &mut Context<Self>) -> bool {
        let empty = self.mail.is_empty();
        if empty {
            ctx.stop();
        }
        empty
    }
}

/// The device an entry's credential names (its key's id).
fn device_of(e: &Entry) -> Option<KeyId> {
    let c = crate::crypto::Credential::decode(&e.credential).ok()?;
    Some(c.public_key.id())
}

/// Keep a message for its recipient.
#[derive(Message)]
#[rtype(result = "Stored")]
pub struct MailPut(pub Mail);

impl Handler<MailPut> for IndexSlot {
    type Result = MessageResult<MailPut>;

    fn handle(&mut self, msg: MailPut, _: &mut Context<Self>) -> Self::Result {
        MessageResult(self.mail_mut().store(crate::unix_now() * 1000, msg.0))
    }
}

/// One page of what a device of a user has not acknowledged.
#[derive(Message)]
#[rtype(result = "Page")]
pub struct MailGet {
    /// The recipient.
    pub user: String,
    /// The device.
    pub device: [u8; 8],
    /// The last id of the previous page.
    pub after: Option<MailId>,
    /// Most encoded bytes.
    pub max_bytes: usize,
}

impl Handler<MailGet> for IndexSlot {
    type Result = MessageResult<MailGet>;

    fn handle(&mut self, m: MailGet, _: &mut Context<Self>) -> Self::Result {
        MessageResult(self.mail_mut().fetch(crate::unix_now() * 1000, &m.user, KeyId(m.device), m.after, m.max_bytes))
    }
}

/// A device of a user holds these messages.
#[derive(Message)]
#[rtype(result = "()")]
pub struct MailAcked {
    /// The recipient.
    pub user: String,
    /// The device.
    pub device: [u8; 8],
    /// The messages.
    pub ids: Vec<MailId>,
}

impl Handler<MailAcked> for IndexSlot {
    type Result = ();

    fn handle(&mut self, m: MailAcked, _: &mut Context<Self>) {
        let a = self.mail_mut().ack(crate::unix_now() * 1000, &m.user, KeyId(m.device), &m.ids);
        if a.deleted > 0 {
            metrics::counter!("confab_mail_messages_total", "node" => self.node.clone(), "outcome" => "delivered")
                .increment(a.deleted as u64);
        }
    }
}

/// The slot's mail counters.
#[derive(Message)]
#[rtype(result = "MailStats")]
pub struct MailStatsOf;

impl Handler<MailStatsOf> for IndexSlot {
    type Result = MessageResult<MailStatsOf>;

    fn handle(&mut self, _: MailStatsOf, _: &mut Context<Self>) -> Self::Result {
        MessageResult(self.mail.stats())
    }
}

/// What a slot's mail amounts to, for an anti-entropy round and the node's gauges.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MailState {
    /// The digest of the slot's mail.
    pub digest: [u8; 16],
    /// Nothing held (no message, tombstone or device).
    pub empty: bool,
    /// Messages held.
    pub messages: usize,
    /// Sealed bytes held.
    pub bytes: u64,
}

/// The slot's mail in brief.
#[derive(Message)]
#[rtype(result = "MailState")]
pub struct MailStateOf;

impl Handler<MailStateOf> for IndexSlot {
    type Result = MessageResult<MailStateOf>;

    fn handle(&mut self, _: MailStateOf, _: &mut Context<Self>) -> Self::Result {
        let digest = *self.mail_digest.get_or_insert_with(|| self.mail.digest());
        let stats = self.mail.stats();
        MessageResult(MailState { digest, empty: self.mail.is_empty(), messages: stats.messages, bytes: stats.bytes })
    }
}

/// A peer's mail anti-entropy request about this slot.
#[derive(Message)]
#[rtype(result = "Answer")]
pub struct MailSync {
    /// Where this node and the peer stand towards the slot.
    pub at: Standing,
    /// The request.
    pub rpc: MailRpc,
}

impl Handler<MailSync> for IndexSlot {
    type Result = MessageResult<MailSync>;

    fn handle(&mut self, m: MailSync, _: &mut Context<Self>) -> Self::Result {
        let now_ms = crate::unix_now() * 1000;
        let slot = self.slot.0;
        // Only items change the store; the digest stays cached for the rest.
        let store = if matches!(m.rpc, MailRpc::Items { .. }) { self.mail_mut() } else { &mut self.mail };
        MessageResult(store.respond(now_ms, slot, m.at, m.rpc))
    }
}

/// The slot has been handed over: let its mail go (only if its digest is still
/// `matching`, when given). Answers whether it went.
#[derive(Message)]
#[rtype(result = "bool")]
pub struct MailRelease {
    /// The digest a replica said it holds.
    pub matching: Option<[u8; 16]>,
}

impl Handler<MailRelease> for IndexSlot {
    type Result = bool;

    fn handle(&mut self, m: MailRelease, _: &mut Context<Self>) -> bool {
        let gone = self.mail.release(m.matching);
        if gone {
            self.mail_digest = None;
        }
        gone
    }
}

/// Whether the slot holds the message `id` (tests and diagnostics).
#[derive(Message)]
#[rtype(result = "bool")]
pub struct MailHolds(pub MailId);

impl Handler<MailHolds> for IndexSlot {
    type Result = bool;

    fn handle(&mut self, m: MailHolds, _: &mut Context<Self>) -> bool {
        self.mail.holds(&m.0)
    }
}
