//! `IndexRouter`: a super node's part of the Global Index. It keeps the slot map of the
//! current cluster view, runs one [`IndexSlot`] actor per slot held, sends writes to a
//! key's replicas, answers other replicas, and drives lookups by limited multicast.

mod mail;
mod push;

pub use mail::{AckMail, FetchMail, HoldsMail, SubmitMail};

use super::index_slot::{Dump, Get, IndexSlot, Posted, Put, SlotChanged, StopSlot};
use super::mailbox::{self, Mailboxes};
use crate::cluster::View;
use crate::cluster::agent::{ClusterSender, IndexPacket};
use crate::cluster::reject::{self, LogOnce, Reject};
use crate::crypto::credential::TrustedKeys;
use crate::index::lookup::{Action, Lookup, LookupConfig, Outcome};
use crate::index::repair::{self, RepairBudget};
use crate::index::rpc::{DIGESTS_PER_PACKET, IndexRpc};
use crate::index::store::Merge;
use crate::index::verified::VerifiedCache;
use crate::index::{Entry, NodeId, Slot, SlotMap, SlotSpace, fold, slot};
use crate::net::source::Holds as Held;
use crate::wire::ErrorCode;
use actix::prelude::*;
use metrics::{counter, gauge, histogram};
use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;
use tokio::sync::{oneshot, watch};

/// Global Index settings.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct IndexConfig {
    /// Slots (a multiple of 8).
    pub slots: u32,
    /// Replicas per slot.
    pub replicas: usize,
    /// How long an entry is findable after its host was last seen.
    pub retention_secs: u64,
    /// Most keys per slot on one replica.
    pub entries_per_slot_max: usize,
    /// Lookup widening.
    pub lookup: LookupConfig,
    /// How often replicas compare slot digests and repair differences.
    pub anti_entropy_secs: u64,
    /// Login servers whose recently-seen directory is the lookup's last stage.
    pub directory: Vec<SocketAddr>,
    /// Entry bytes pushed in answer to one Digests or Differ, at most.
    pub repair_bytes_per_answer_max: usize,
    /// Entry bytes of repair pushed to one replica per second, at most.
    pub repair_bytes_per_peer_per_sec: u64,
    /// How long a stored message waits for its recipient's devices.
    pub mail_retention_secs: u64,
    /// Bytes of stored messages this node holds at most, over all its slots.
    pub mail_bytes_max: u64,
}

impl Default for IndexConfig {
    fn default() -> Self {
        Self {
            slots: slot::SLOTS_DEFAULT,
            replicas: slot::REPLICAS_DEFAULT,
            retention_secs: crate::index::store::RETENTION_SECS_DEFAULT,
            entries_per_slot_max: 100_000,
            lookup: LookupConfig::default(),
            anti_entropy_secs: 10,
            directory: Vec::new(),
            repair_bytes_per_answer_max: 256 << 10,
            repair_bytes_per_peer_per_sec: 1 << 20,
            mail_retention_secs: crate::index::mail::MailLimits::default().retention_ms / 1000,
            mail_bytes_max: crate::index::mail::budget::NODE_BYTES_MAX_DEFAULT,
        }
    }
}

/// What a lookup found.
#[derive(Debug, Clone)]
pub struct FindResult {
    /// The newest verified entry, if any super node held one.
    pub entry: Option<Entry>,
    /// Super nodes asked.
    pub asked: usize,
    /// The stage that ended the lookup (a label).
    pub stage: &'static str,
    /// When the index had nothing: the login server's signed directory record.
    pub directory: Option<Vec<u8>>,
}

struct Running {
    lookup: Lookup,
    reply: Option<oneshot::Sender<FindResult>>,
    started: Instant,
}

/// The actor.
pub struct IndexRouter {
    node: String,
    me: NodeId,
    cfg: IndexConfig,
    space: SlotSpace,
    trusted: Arc<TrustedKeys>,
    view: watch::Receiver<Arc<View>>,
    map: SlotMap,
    gossip_of: HashMap<NodeId, SocketAddr>,
    slots: HashMap<Slot, Addr<IndexSlot>>,
    held: HashSet<Slot>,
    sender: ClusterSender,
    next_req: u64,
    lookups: HashMap<u64, Running>,
    reqs: HashMap<u64, (u64, NodeId)>,
    handoff_pending: bool,
    refresh_pending: bool,
    refreshed_at: Option<Instant>,
    /// Digests of the non-empty slots this node holds, kept current by the slot actors.
    digests: HashMap<Slot, [u8; 32]>,
    /// Keys per non-empty slot, for the entries-per-slot gauges.
    counts: HashMap<Slot, usize>,
    prefix_reqs: HashMap<u64, oneshot::Sender<Vec<String>>>,
    mailboxes: Mailboxes,
    gossip_by_name: HashMap<String, Peer>,
    /// Repair bytes each replica may still be sent.
    repair: HashMap<NodeId, RepairBudget>,
    log: LogOnce,
    directory: Option<super::directory::DirectoryClient>,
    /// Entries verified lately, by digest: repair and republished entries skip the RSA.
    verified: VerifiedCache,
    /// The revocation list version `verified` was filled under.
    verified_revocations: u64,
    /// Store verifications running on the blocking pool, per sender and in all.
    verifying: Arc<Held<NodeId>>,
    verify_pool: Arc<tokio::sync::Semaphore>,
    /// Slots this node became a replica of since its last pull.
    gained: HashSet<Slot>,
    /// The node's budget for stored messages, shared by its slots.
    mail_budget: crate::index::mail::Budget,
    /// Messages waiting for their replicas' answers.
    mail_submits: HashMap<u64, mail::Submitting>,
    /// Fetches waiting for a replica.
    mail_fetches: HashMap<u64, mail::Fetching>,
    /// Pushes waiting for a replica to say where the recipient's sessions are.
    pushes: HashMap<u64, push::Pushing>,
    /// Slots this node became a replica of since its last mail round (their mail is pulled).
    mail_gained: HashSet<Slot>,
    /// Slots this node left whose mail it keeps until a replica holds the same.
    handovers: crate::index::mail::HandOvers,
    /// Slots with a store here that this node no longer replicates.
    former: crate::index::former::Former,
    /// Mail anti-entropy bytes each member may still be sent.
    mail_repair: HashMap<NodeId, RepairBudget>,
}

/// A member: its id and gossip address (where answers to it go).
type Peer = (NodeId, SocketAddr);

/// How long view changes are gathered before the slot map is rebuilt.
const VIEW_SETTLE: std::time::Duration = std::time::Duration::from_millis(250);
/// Most postings read per token in one search.
const SEARCH_POSTINGS_MAX: usize = 200;
/// Replicas of a token's slot asked for its postings.
const SEARCH_FANOUT: usize = 3;
/// Most search tokens used.
const SEARCH_TOKENS_MAX: usize = 4;
/// Store verifications in flight from one sender, and in all: past these a Store is
/// refused as `busy` (its sender's next anti-entropy round brings it again), so one
/// member's repair burst cannot queue unbounded RSA work or starve the others.
const VERIFY_PER_SENDER_MAX: usize = 256;
const VERIFY_IN_FLIGHT_MAX: usize = 1024;
/// Replicas a new replica asks for a slot's contents.
const PULL_FROM: usize = 2;

impl IndexRouter {
    /// Lets lookups fall back to the login servers' directory (in `cfg.directory`), asking
    /// as `identity`.
    pub fn with_directory(mut self, identity: super::handshake::Identity) -> Self {
        if !self.cfg.directory.is_empty() {
            self.directory = Some(super::directory::DirectoryClient::new(identity, self.cfg.directory.clone()));
        }
        self
    }

    /// A router for node `me`, following `view`.
    pub fn new(
        node: String,
        me: NodeId,
        cfg: IndexConfig,
        trusted: TrustedKeys,
        view: watch::Receiver<Arc<View>>,
        sender: ClusterSender,
        mailboxes: Mailboxes,
    ) -> Self {
        let space = SlotSpace::new(cfg.slots).unwrap_or_default();
        let map = SlotMap::new(space, cfg.replicas, &[me]);
        let cfg_mail_bytes = cfg.mail_bytes_max;
        Self {
            node,
            me,
            cfg,
            space,
            trusted: Arc::new(trusted),
            view,
            map,
            gossip_of: HashMap::new(),
            slots: HashMap::new(),
            held: HashSet::new(),
            sender,
            next_req: 1,
            lookups: HashMap::new(),
            reqs: HashMap::new(),
            handoff_pending: false,
            refresh_pending: false,
            refreshed_at: None,
            digests: HashMap::new(),
            counts: HashMap::new(),
            prefix_reqs: HashMap::new(),
            mailboxes,
            gossip_by_name: HashMap::new(),
            repair: HashMap::new(),
            log: LogOnce::default(),
            directory: None,
            verified: VerifiedCache::default(),
            verified_revocations: 0,
            verifying: Held::new(VERIFY_PER_SENDER_MAX),
            verify_pool: Arc::new(tokio::sync::Semaphore::new(VERIFY_IN_FLIGHT_MAX)),
            gained: HashSet::new(),
            mail_budget: crate::index::mail::Budget::new(cfg_mail_bytes),
            mail_submits: HashMap::new(),
            mail_fetches: HashMap::new(),
            pushes: HashMap::new(),
            mail_gained: HashSet::new(),
            handovers: crate::index::mail::HandOvers::default(),
            former: crate::index::former::Former::default(),
            mail_repair: HashMap::new(),
        }
    }

    fn req(&mut self) -> u64 {
        self.next_req += 1;
        self.next_req
    }

    /// Rebuilds the slot map from the view and starts actors for newly held slots.
    fn refresh(&mut self, ctx: &mut Context<Self>) {
        let members = self.view.borrow().members.clone();
        self.gossip_of = members.iter().filter_map(|m| Some((m.node_id()?, m.gossip))).collect();
        self.gossip_by_name = members.iter().filter_map(|m| Some((m.name.clone(), (m.node_id()?, m.gossip)))).collect();
        let ids: HashSet<NodeId> = self.gossip_of.keys().copied().collect();
        self.repair.retain(|id, _| ids.contains(id));
        self.mail_repair.retain(|id, _| ids.contains(id));
        let mut ids: Vec<NodeId> = self.gossip_of.keys().copied().collect();
        if !ids.contains(&self.me) {
            ids.push(self.me);
        }
        self.map = self.map.update(&ids);
        let before = std::mem::replace(&mut self.held, self.map.held_by(self.me).into_iter().collect());
        self.gained.extend(self.held.difference(&before).copied());
        self.gained.retain(|s| self.held.contains(s));
        self.mail_gained.extend(self.held.difference(&before).copied());
        self.mail_gained.retain(|s| self.held.contains(s));
        let changes = ctx.address().recipient();
        for s in &self.held {
            // A slot no longer held keeps its actor for a while (`index::former`): it still
            // answers lookups that widen to former replicas while the new ones fill up.
            let limits = crate::index::mail::MailLimits {
                retention_ms: self.cfg.mail_retention_secs.saturating_mul(1000),
                ..Default::default()
            };
            self.slots.entry(*s).or_insert_with(|| {
                IndexSlot::with_mail(
                    *s,
                    self.cfg.entries_per_slot_max,
                    self.cfg.retention_secs,
                    self.node.clone(),
                    changes.clone(),
                    limits,
                    self.mail_budget.clone(),
                )
                .start()
            });
        }
        let held = &self.held;
        self.former.update(now_ms(), self.slots.keys().map(|s| s.0), |s| held.contains(&Slot(s)));
        gauge!("confab_index_slots_held", "node" => self.node.clone()).set(self.held.len() as f64);
        gauge!("confab_index_slot_stores", "node" => self.node.clone()).set(self.slots.len() as f64);
        // Rebuilt a moment after the membership changes: until this equals the cluster's
        // view, lookups and notices may go to the wrong replicas.
        gauge!("confab_index_view_members", "node" => self.node.clone()).set(ids.len() as f64);
        tracing::debug!(node = %self.node, members = ids.len(), held = self.held.len(), "slot map rebuilt");
    }

    fn slot_of(&self, key: &str) -> Slot {
        self.space.slot_of(fold::slot_key(key))
    }

    /// Checks that `entry` may live under `key`: its own username, or a posting for one
    /// of its profile's tokens.
    fn key_fits(key: &str, entry: &Entry) -> bool {
        key == entry.key()
            || fold::profile_tokens(&entry.user, &entry.profile)
                .iter()
                .any(|t| fold::posting_key(t, &entry.user) == key)
    }

    /// Decodes an entry and looks it up among those verified lately: `Ok(Ok(entry))` when
    /// it was, `Ok(Err((entry, digest)))` when it still needs its RSA checks.
    fn decode_cached(&mut self, bytes: &[u8]) -> Result<Result<Entry, (Entry, [u8; 32])>, String> {
        let e = Entry::decode(bytes).map_err(|e| e.to_string())?;
        // A newer revocation list may refuse what verified before: start over.
        let revocations = self.trusted.revoked().version();
        if revocations != self.verified_revocations {
            self.verified.clear();
            self.verified_revocations = revocations;
        }
        let digest = VerifiedCache::digest(bytes);
        if self.verified.contains(&digest) {
            self.checked("cached");
            return Ok(Ok(e));
        }
        Ok(Err((e, digest)))
    }

    /// Counts a finished check and remembers an entry that passed.
    fn record_check(&mut self, digest: [u8; 32], passed: bool) {
        if passed {
            self.verified.insert(digest);
        }
        self.checked(if passed { "verified" } else { "refused" });
    }

    fn checked(&self, outcome: &'static str) {
        counter!("confab_index_entry_checks_total", "node" => self.node.clone(), "outcome" => outcome).increment(1);
    }

    /// Verifies an entry here, on the event loop (publishes and lookup answers: one at a
    /// time, asked for by a host).
    fn verify(&mut self, bytes: &[u8]) -> Result<Entry, String> {
        let (e, digest) = match self.decode_cached(bytes)? {
            Ok(e) => return Ok(e),
            Err(miss) => miss,
        };
        let checked = e.verify(&self.trusted, now_ms());
        self.record_check(digest, checked.is_ok());
        checked.map(|_| e).map_err(|why| why.to_string())
    }

    /// A replicated entry from another member. One it has verified before is stored at
    /// once; a new one is verified on the blocking pool (two RSA checks), so a burst of
    /// Stores never holds up the event loop, within per-sender and total bounds.
    fn on_store(&mut self, from: Peer, req: u64, key: String, bytes: Vec<u8>, ctx: &mut Context<Self>) {
        let (e, digest) = match self.decode_cached(&bytes) {
            Ok(Ok(e)) => return self.store_verified(from, req, key, e, ctx),
            Ok(Err(miss)) => miss,
            Err(why) => {
                tracing::debug!(node = %self.node, from = %from.1, %why, "refused a replicated entry");
                return self.refuse("bad_entry", from, req);
            }
        };
        // The claims are held until the check ends, wherever the job is dropped.
        let (Some(sender_claim), Ok(pool_permit)) =
            (self.verifying.claim(from.0), self.verify_pool.clone().try_acquire_owned())
        else {
            return self.refuse("busy", from, req);
        };
        let trusted = self.trusted.clone();
        let job = tokio::task::spawn_blocking(move || {
            let checked = e.verify(&trusted, now_ms()).map(|_| ());
            drop((sender_claim, pool_permit));
            (e, checked)
        });
        ctx.spawn(job.into_actor(self).map(move |res, act, ctx| match res {
            Ok((e, Ok(()))) => {
                act.record_check(digest, true);
                act.store_verified(from, req, key, e, ctx);
            }
            Ok((_, Err(why))) => {
                act.record_check(digest, false);
                tracing::debug!(node = %act.node, from = %from.1, %why, "refused a replicated entry");
                act.refuse("bad_entry", from, req);
            }
            Err(_) => act.refuse("bad_entry", from, req),
        }));
    }

    fn store_verified(&mut self, from: Peer, req: u64, key: String, e: Entry, ctx: &mut Context<Self>) {
        if !Self::key_fits(&key, &e) {
            return self.refuse("wrong_key", from, req);
        }
        let slot = self.slot_of(&key);
        self.put_local(slot, key, e, ctx, Some((from, req)));
    }

    /// Sends `entry` under `key` to every replica of its slot; returns how many.
    fn replicate(&mut self, key: String, entry: &Entry, ctx: &mut Context<Self>) -> usize {
        let slot = self.slot_of(&key);
        let replicas = self.map.replicas(slot).to_vec();
        let bytes = entry.encode();
        for r in &replicas {
            if *r == self.me {
                self.put_local(slot, key.clone(), entry.clone(), ctx, None);
            } else if let Some(addr) = self.gossip_of.get(r).copied() {
                let req = self.req();
                let ok = self.sender.send(
                    *r,
                    addr,
                    &IndexRpc::Store { req, key: key.clone(), entry: bytes.clone() }.encode(),
                );
                counter!("confab_index_writes_total", "node" => self.node.clone(), "outcome" => if ok { "sent" } else { "send_failed" }).increment(1);
            }
        }
        replicas.len()
    }

    fn put_local(&mut self, slot: Slot, key: String, entry: Entry, ctx: &mut Context<Self>, ack: Option<(Peer, u64)>) {
        let Some(actor) = self.slots.get(&slot).cloned() else {
            if let Some((to, req)) = ack {
                self.send_to(to, &IndexRpc::StoreAck { req, held: false });
            }
            return;
        };
        let made_ms = entry.timestamp_ms;
        ctx.spawn(actor.send(Put { key, entry }).into_actor(self).map(move |res, act, _| {
            if matches!(res, Ok(Merge::Stored | Merge::Replaced)) {
                // From the host signing the entry to this replica holding it: direct
                // writes take milliseconds; a repair by anti-entropy shows its delay here.
                let lag = now_ms().saturating_sub(made_ms) as f64 / 1000.0;
                histogram!("confab_index_replication_lag_seconds", "node" => act.node.clone()).record(lag);
            }
            let outcome = match res {
                Ok(Merge::Stored) => "stored",
                Ok(Merge::Replaced) => "replaced",
                Ok(Merge::Duplicate) => "duplicate",
                Ok(Merge::Stale) => "stale",
                Ok(Merge::Full) => "slot_full",
                Err(_) => "mailbox",
            };
            counter!("confab_index_writes_total", "node" => act.node.clone(), "outcome" => outcome).increment(1);
            if let Some((to, req)) = ack {
                let held = matches!(res, Ok(Merge::Stored | Merge::Replaced | Merge::Duplicate));
                act.send_to(to, &IndexRpc::StoreAck { req, held });
            }
        }));
    }

    fn send_to(&self, to: Peer, rpc: &IndexRpc) -> bool {
        self.sender.send(to.0, to.1, &rpc.encode())
    }

    fn on_rpc(&mut self, from: Peer, rpc: IndexRpc, ctx: &mut Context<Self>) {
        match rpc {
            IndexRpc::Store { req, key, entry } => self.on_store(from, req, key, entry, ctx),
            IndexRpc::Fetch { req, key } => {
                let slot = self.slot_of(&key);
                match self.slots.get(&slot).cloned() {
                    Some(actor) => {
                        ctx.spawn(actor.send(Get(key)).into_actor(self).map(move |res, act, _| {
                            let entry = res.ok().flatten().map(|e| e.encode());
                            act.send_to(from, &IndexRpc::FetchReply { req, entry });
                        }));
                    }
                    None => {
                        self.send_to(from, &IndexRpc::FetchReply { req, entry: None });
                    }
                }
            }
            IndexRpc::FetchReply { req, entry } => {
                let Some((id, node)) = self.reqs.remove(&req) else { return };
                let entry = entry.and_then(|b| match self.verify(&b) {
                    Ok(e) => Some(e),
                    Err(why) => {
                        // A replica that answers with something that does not verify is
                        // lying or broken: its answer counts as none.
                        counter!("confab_index_bad_answers_total", "node" => self.node.clone()).increment(1);
                        tracing::warn!(node = %self.node, from = %from.1, %why, "a super node answered a lookup with an entry that does not verify");
                        None
                    }
                });
                if let Some(r) = self.lookups.get_mut(&id) {
                    r.lookup.on_answer(node, entry);
                }
                self.drive(id, ctx);
            }
            IndexRpc::StoreAck { .. } => {}
            IndexRpc::PrefixQuery { req, prefix, limit } => {
                let slot = self.slot_of(&prefix);
                let limit = usize::from(limit).min(SEARCH_POSTINGS_MAX);
                match self.slots.get(&slot).cloned() {
                    Some(actor) => {
                        ctx.spawn(actor.send(Posted { prefix, limit }).into_actor(self).map(move |res, act, _| {
                            let users = res.unwrap_or_default();
                            act.send_to(from, &IndexRpc::PrefixReply { req, users });
                        }));
                    }
                    None => {
                        self.send_to(from, &IndexRpc::PrefixReply { req, users: Vec::new() });
                    }
                }
            }
            IndexRpc::PrefixReply { req, users } => {
                if let Some(tx) = self.prefix_reqs.remove(&req) {
                    let _ = tx.send(users);
                }
            }
            IndexRpc::Digests { slots } => self.compare_digests(from, slots, ctx),
            IndexRpc::Differ { slots } => self.push_slots(slots, from, ctx),
            IndexRpc::Deliver { to, body } => {
                // The cluster channel allows larger packets than a host's frame does.
                if body.len() > crate::buddy::notice::NOTICE_LEN_MAX {
                    counter!("confab_index_rpc_rejected_total", "node" => self.node.clone(), "reason" => "oversized_notice")
                        .increment(1);
                    tracing::debug!(node = %self.node, from = %from.1, len = body.len(), "dropped an oversized notice");
                    return;
                }
                self.mailboxes.deliver(&to, body);
            }
            IndexRpc::Mail(m) => self.on_mail_rpc(from, m, ctx),
        }
    }

    /// Entries held, and the fullest slot, as gauges (per node: no per-slot labels).
    fn export_counts(&self) {
        let total: usize = self.counts.values().sum();
        let max = self.counts.values().copied().max().unwrap_or(0);
        gauge!("confab_index_entries", "node" => self.node.clone()).set(total as f64);
        gauge!("confab_index_slot_entries_max", "node" => self.node.clone()).set(max as f64);
    }

    /// One anti-entropy round: send every co-replica the digests of the non-empty slots
    /// we share. Empty slots need no word: whoever holds data sends its digest, and an
    /// empty side answers that it differs.
    fn anti_entropy(&mut self) {
        let shared: Vec<(Slot, (u32, [u8; 32]))> =
            self.digests.iter().filter(|(s, _)| self.held.contains(s)).map(|(s, d)| (*s, (s.0, *d))).collect();
        self.send_per_replica(shared, usize::MAX, |slots| IndexRpc::Digests { slots });
    }

    /// Asks the other replicas of every slot this node just became a replica of for what
    /// they hold. Anti-entropy alone would wait for a holder's next round, and a holder
    /// whose view changed after its hand-off round sends nothing until then. Two holders
    /// are enough to be sure of one answer; each pushes the whole slot, and anti-entropy
    /// brings whatever one of the others held alone.
    fn pull(&mut self) {
        let gained: Vec<(Slot, u32)> = self.gained.drain().map(|s| (s, s.0)).collect();
        self.send_per_replica(gained, PULL_FROM, |slots| IndexRpc::Differ { slots });
    }

    /// Groups `items` by the other replicas of their slots (the first `per_slot` of them),
    /// and sends each replica its share, `DIGESTS_PER_PACKET` items a packet.
    fn send_per_replica<T: Clone>(&self, items: Vec<(Slot, T)>, per_slot: usize, rpc: impl Fn(Vec<T>) -> IndexRpc) {
        let mut per_peer: HashMap<NodeId, Vec<T>> = HashMap::new();
        for (s, item) in items {
            for r in self.map.replicas(s).iter().filter(|r| **r != self.me).take(per_slot) {
                per_peer.entry(*r).or_default().push(item.clone());
            }
        }
        for (peer, list) in per_peer {
            let Some(addr) = self.gossip_of.get(&peer).copied() else { continue };
            for chunk in list.chunks(DIGESTS_PER_PACKET) {
                self.send_to((peer, addr), &rpc(chunk.to_vec()));
            }
        }
    }

    /// A co-replica's digests: where ours differ, send ours and ask for theirs.
    fn compare_digests(&mut self, from: Peer, slots: Vec<(u32, [u8; 32])>, ctx: &mut Context<Self>) {
        let differ: Vec<u32> = slots
            .into_iter()
            .filter(|(s, d)| self.held.contains(&Slot(*s)) && self.digests.get(&Slot(*s)) != Some(d))
            .map(|(s, _)| s)
            .collect();
        counter!("confab_index_antientropy_differing_slots_total", "node" => self.node.clone())
            .increment(differ.len() as u64);
        self.push_slots(differ.clone(), from, ctx);
        if !differ.is_empty() {
            self.send_to(from, &IndexRpc::Differ { slots: differ });
        }
    }

    /// Sends the live entries of `slots` (those this node has a store for) to another replica
    /// (merging is idempotent, so whatever it already holds costs only the bytes), within
    /// one answer's byte cap and the replica's repair rate. Each answer starts at a random
    /// place in the dump, so capped rounds together still cover a large slot.
    fn push_slots(&mut self, slots: Vec<u32>, to: Peer, ctx: &mut Context<Self>) {
        // A slot no longer held keeps its store, and still answers while new replicas fill.
        let actors: Vec<_> = slots.into_iter().filter_map(|s| self.slots.get(&Slot(s)).cloned()).collect();
        if actors.is_empty() {
            return;
        }
        let dumps = futures_util::future::join_all(actors.into_iter().map(|a| a.send(Dump)));
        ctx.spawn(dumps.into_actor(self).map(move |res, act, _| {
            let mut entries: Vec<(String, Vec<u8>)> =
                res.into_iter().flat_map(|r| r.unwrap_or_default()).map(|(k, e)| (k, e.encode())).collect();
            if entries.is_empty() {
                return;
            }
            let start = usize::from(u16::from_le_bytes(crate::crypto::random::bytes())) % entries.len();
            entries.rotate_left(start);
            let sizes: Vec<usize> = entries.iter().map(|(k, e)| k.len() + e.len()).collect();
            let (per_sec, cap) = (act.cfg.repair_bytes_per_peer_per_sec, act.cfg.repair_bytes_per_answer_max);
            let budget = act.repair.entry(to.0).or_insert_with(|| RepairBudget::new(per_sec, now_ms()));
            let n = repair::fit(&sizes, cap, budget, now_ms());
            counter!("confab_index_repair_entries_total", "node" => act.node.clone()).increment(n as u64);
            if n < entries.len() {
                counter!("confab_index_repair_skipped_entries_total", "node" => act.node.clone())
                    .increment((entries.len() - n) as u64);
                tracing::debug!(node = %act.node, to = %to.1, sent = n, skipped = entries.len() - n, "repair capped");
            }
            for (key, entry) in entries.into_iter().take(n) {
                let req = act.req();
                act.send_to(to, &IndexRpc::Store { req, key, entry });
            }
        }));
    }

    fn refuse(&self, reason: &'static str, to: Peer, req: u64) {
        counter!("confab_index_writes_total", "node" => self.node.clone(), "outcome" => reason).increment(1);
        self.send_to(to, &IndexRpc::StoreAck { req, held: false });
    }

    fn drive(&mut self, id: u64, ctx: &mut Context<Self>) {
        loop {
            let Some(r) = self.lookups.get_mut(&id) else { return };
            match r.lookup.poll(now_ms()) {
                Action::Ask(nodes) => {
                    let key = r.lookup.key().to_owned();
                    for n in nodes {
                        self.ask(id, n, key.clone(), ctx);
                    }
                }
                Action::Wait => {
                    let wait = r.lookup.deadline().saturating_sub(now_ms());
                    ctx.run_later(std::time::Duration::from_millis(wait.max(1)), move |act, ctx| act.drive(id, ctx));
                    return;
                }
                Action::AskDirectory => {
                    let outcome = r.lookup.not_in_index();
                    let user = r.lookup.key().to_owned();
                    let Some(directory) = self.directory.clone() else {
                        self.finish_with_directory(id, outcome, None);
                        return;
                    };
                    let trusted = TrustedKeys::clone(&self.trusted);
                    ctx.spawn(async move { directory.ask(user, trusted).await }.into_actor(self).map(
                        move |record, act, _| {
                            act.finish_with_directory(id, outcome, record);
                        },
                    ));
                    return;
                }
                Action::Done(outcome) => {
                    self.finish(id, outcome);
                    return;
                }
            }
        }
    }

    fn ask(&mut self, id: u64, node: NodeId, key: String, ctx: &mut Context<Self>) {
        if node == self.me {
            let slot = self.slot_of(&key);
            match self.slots.get(&slot).cloned() {
                Some(actor) => {
                    ctx.spawn(actor.send(Get(key)).into_actor(self).map(move |res, act, ctx| {
                        if let Some(r) = act.lookups.get_mut(&id) {
                            r.lookup.on_answer(node, res.ok().flatten());
                        }
                        act.drive(id, ctx);
                    }));
                }
                None => {
                    if let Some(r) = self.lookups.get_mut(&id) {
                        r.lookup.on_answer(node, None);
                    }
                }
            }
            return;
        }
        match self.gossip_of.get(&node).copied() {
            Some(addr) => {
                let req = self.req();
                self.reqs.insert(req, (id, node));
                self.send_to((node, addr), &IndexRpc::Fetch { req, key });
            }
            None => {
                if let Some(r) = self.lookups.get_mut(&id) {
                    r.lookup.on_answer(node, None);
                }
            }
        }
    }

    fn finish(&mut self, id: u64, outcome: Outcome) {
        self.finish_with_directory(id, outcome, None);
    }

    fn finish_with_directory(&mut self, id: u64, outcome: Outcome, directory: Option<Vec<u8>>) {
        let Some(mut r) = self.lookups.remove(&id) else { return };
        self.reqs.retain(|_, (l, _)| *l != id);
        let result = match outcome {
            Outcome::Found { entry, stage, asked } => {
                FindResult { entry: Some(*entry), asked, stage: stage.label(), directory: None }
            }
            Outcome::NotInIndex { asked } if directory.is_some() => {
                FindResult { entry: None, asked, stage: "directory", directory }
            }
            Outcome::NotInIndex { asked } => FindResult { entry: None, asked, stage: "not_found", directory: None },
        };
        let outcome = if result.entry.is_some() { "found" } else { "not_found" };
        counter!("confab_index_lookups_total", "node" => self.node.clone(), "outcome" => outcome, "stage" => result.stage).increment(1);
        histogram!("confab_index_lookup_asked", "node" => self.node.clone()).record(result.asked as f64);
        histogram!("confab_index_lookup_duration_seconds", "node" => self.node.clone())
            .record(r.started.elapsed().as_secs_f64());
        if let Some(tx) = r.reply.take() {
            let _ = tx.send(result);
        }
    }
}

fn now_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

#[derive(Message)]
#[rtype(result = "()")]
struct ViewChanged;

impl Actor for IndexRouter {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        ctx.set_mailbox_capacity(4096);
        mail::zero_series(&self.node);
        counter!("confab_index_slots_retired_total", "node" => self.node.clone()).increment(0);
        self.refresh(ctx);
        let every = std::time::Duration::from_secs(self.cfg.anti_entropy_secs.max(1));
        ctx.run_interval(every, |act, ctx| {
            act.anti_entropy();
            act.mail_round(ctx);
            act.export_counts();
        });
        let mut view = self.view.clone();
        let addr = ctx.address();
        actix_rt::spawn(async move {
            // One message per change of the view (watch coalesces bursts); never dropped,
            // or the slot map would silently fall behind the membership.
            while view.changed().await.is_ok() && addr.connected() {
                addr.do_send(ViewChanged);
            }
        });
    }
}

impl Handler<ViewChanged> for IndexRouter {
    type Result = ();

    fn handle(&mut self, _: ViewChanged, ctx: &mut Context<Self>) {
        // Deaths and joins arrive one by one over a few seconds; rebuilding the slot map
        // (rendezvous hashing over every member) at each would cost a large cluster more
        // than the changes themselves. The first change after a quiet spell rebuilds at
        // once (a lone join is served without delay); later ones within VIEW_SETTLE wait
        // and make one rebuild together.
        if self.refresh_pending {
            return;
        }
        let since = self.refreshed_at.map(|t| t.elapsed()).unwrap_or(VIEW_SETTLE);
        if since >= VIEW_SETTLE {
            self.rebuild(ctx);
            return;
        }
        self.refresh_pending = true;
        ctx.run_later(VIEW_SETTLE - since, |act, ctx| {
            act.refresh_pending = false;
            act.rebuild(ctx);
        });
    }
}

impl IndexRouter {
    /// Rebuilds the slot map, then hands slots off to new replicas soon after (not at the
    /// next periodic round; one pending round at a time).
    fn rebuild(&mut self, ctx: &mut Context<Self>) {
        self.refreshed_at = Some(Instant::now());
        self.refresh(ctx);
        if !self.handoff_pending {
            self.handoff_pending = true;
            ctx.run_later(std::time::Duration::from_millis(500), |act, ctx| {
                act.handoff_pending = false;
                act.anti_entropy();
                act.pull();
                act.mail_round(ctx);
            });
        }
    }
}

impl StreamHandler<IndexPacket> for IndexRouter {
    fn handle(&mut self, p: IndexPacket, ctx: &mut Context<Self>) {
        // Answers go only to members of the current view, at the address the sender
        // authenticated from (the agent checked it against the sender's certificate).
        let member = self.view.borrow().members.iter().any(|m| m.node == Some(p.sender.0) && m.gossip == p.from);
        if !member {
            reject::count(&self.node, &mut self.log, p.from, Reject::NotMember);
            return;
        }
        match IndexRpc::decode(&p.payload) {
            Ok(rpc) => self.on_rpc((p.sender, p.from), rpc, ctx),
            Err(e) => {
                counter!("confab_index_rpc_rejected_total", "node" => self.node.clone(), "reason" => "malformed")
                    .increment(1);
                tracing::debug!(node = %self.node, from = %p.from, error = %e, "malformed index request");
            }
        }
    }

    fn finished(&mut self, _: &mut Context<Self>) {}
}

impl Handler<SlotChanged> for IndexRouter {
    type Result = ();

    fn handle(&mut self, msg: SlotChanged, _: &mut Context<Self>) {
        match msg.digest {
            Some(d) => self.digests.insert(msg.slot, d),
            None => self.digests.remove(&msg.slot),
        };
        match msg.entries {
            0 => self.counts.remove(&msg.slot),
            n => self.counts.insert(msg.slot, n),
        };
    }
}

/// A host publishes its entry; `user` is the session's authenticated username.
#[derive(Message)]
#[rtype(result = "Result<usize, (ErrorCode, String)>")]
pub struct Publish {
    /// The session's user.
    pub user: String,
    /// The signed entry.
    pub entry: Vec<u8>,
}

impl Handler<Publish> for IndexRouter {
    type Result = Result<usize, (ErrorCode, String)>;

    fn handle(&mut self, msg: Publish, ctx: &mut Context<Self>) -> Self::Result {
        let e = self.verify(&msg.entry).map_err(|why| {
            counter!("confab_index_publishes_total", "node" => self.node.clone(), "outcome" => "bad_entry")
                .increment(1);
            (ErrorCode::BadSignature, why)
        })?;
        if !e.user.eq_ignore_ascii_case(&msg.user) {
            counter!("confab_index_publishes_total", "node" => self.node.clone(), "outcome" => "wrong_user")
                .increment(1);
            return Err((ErrorCode::BadSignature, "an entry may only be published by its own user".into()));
        }
        let replicas = self.replicate(e.key(), &e, ctx);
        for token in fold::profile_tokens(&e.user, &e.profile) {
            self.replicate(fold::posting_key(&token, &e.user), &e, ctx);
        }
        counter!("confab_index_publishes_total", "node" => self.node.clone(), "outcome" => "accepted").increment(1);
        Ok(replicas)
    }
}

/// Stops the router and its slots (the node is going away).
#[derive(Message)]
#[rtype(result = "()")]
pub struct Shutdown;

impl Handler<Shutdown> for IndexRouter {
    type Result = ();

    fn handle(&mut self, _: Shutdown, ctx: &mut Context<Self>) {
        for a in self.slots.values() {
            a.do_send(StopSlot);
        }
        ctx.stop();
    }
}

/// Does this node hold an entry under `key` (tests and diagnostics)?
#[derive(Message)]
#[rtype(result = "bool")]
pub struct Holds(pub String);

impl Handler<Holds> for IndexRouter {
    type Result = ResponseFuture<bool>;

    fn handle(&mut self, msg: Holds, _: &mut Context<Self>) -> Self::Result {
        let actor = self.slots.get(&self.slot_of(&msg.0)).cloned();
        Box::pin(async move {
            match actor {
                Some(a) => a.send(Get(msg.0)).await.ok().flatten().is_some(),
                None => false,
            }
        })
    }
}

/// The router's cluster sender (tests: sealing a packet as this node would). Held by
/// the router alone, so a crashed node's gossip socket closes with it.
#[derive(Message)]
#[rtype(result = "ClusterSender")]
pub struct SenderOf;

impl Handler<SenderOf> for IndexRouter {
    type Result = MessageResult<SenderOf>;

    fn handle(&mut self, _: SenderOf, _: &mut Context<Self>) -> Self::Result {
        MessageResult(self.sender.clone())
    }
}

/// The replicas of `key`'s slot in this node's current view.
#[derive(Message)]
#[rtype(result = "Vec<NodeId>")]
pub struct ReplicasOf(pub String);

impl Handler<ReplicasOf> for IndexRouter {
    type Result = Vec<NodeId>;

    fn handle(&mut self, msg: ReplicasOf, _: &mut Context<Self>) -> Vec<NodeId> {
        self.map.replicas(self.slot_of(&msg.0)).to_vec()
    }
}

/// Find the entry of a user.
#[derive(Message)]
#[rtype(result = "()")]
pub struct FindUser {
    /// The username.
    pub user: String,
    /// Where the result goes.
    pub reply: oneshot::Sender<FindResult>,
}

impl Handler<FindUser> for IndexRouter {
    type Result = ();

    fn handle(&mut self, msg: FindUser, ctx: &mut Context<Self>) {
        self.start_find(&msg.user, msg.reply, ctx);
    }
}

impl IndexRouter {
    fn start_find(&mut self, user: &str, reply: oneshot::Sender<FindResult>, ctx: &mut Context<Self>) {
        let key = user.to_ascii_lowercase();
        let slot = self.slot_of(&key);
        let ids = self.map.members().to_vec();
        let id = self.req();
        let lookup = Lookup::new(key, slot, &ids, self.cfg.lookup.clone());
        self.lookups.insert(id, Running { lookup, reply: Some(reply), started: Instant::now() });
        self.drive(id, ctx);
    }

    /// Asks the first replicas of a token's slot for its postings.
    fn postings(&mut self, token: &str, ctx: &mut Context<Self>) -> Vec<oneshot::Receiver<Vec<String>>> {
        let prefix = fold::token_slot_key(token);
        let slot = self.slot_of(&prefix);
        let replicas: Vec<NodeId> = self.map.replicas(slot).iter().take(SEARCH_FANOUT).copied().collect();
        let mut rxs = Vec::new();
        for r in replicas {
            let (tx, rx) = oneshot::channel();
            if r == self.me {
                if let Some(actor) = self.slots.get(&slot).cloned() {
                    let p = prefix.clone();
                    ctx.spawn(actor.send(Posted { prefix: p, limit: SEARCH_POSTINGS_MAX }).into_actor(self).map(
                        move |res, _, _| {
                            let _ = tx.send(res.unwrap_or_default());
                        },
                    ));
                    rxs.push(rx);
                }
            } else if let Some(addr) = self.gossip_of.get(&r).copied() {
                let req = self.req();
                self.prefix_reqs.insert(req, tx);
                // A lost packet or a dead replica must not leave the waiter behind.
                ctx.run_later(std::time::Duration::from_millis(self.cfg.lookup.step_timeout_ms * 4), move |act, _| {
                    act.prefix_reqs.remove(&req);
                });
                self.sender.send(
                    r,
                    addr,
                    &IndexRpc::PrefixQuery { req, prefix: prefix.clone(), limit: SEARCH_POSTINGS_MAX as u16 }.encode(),
                );
                rxs.push(rx);
            }
        }
        rxs
    }
}

/// Search users whose profile has every word: postings give candidates, a lookup of each
/// candidate gives its current, verified entry, and only entries that still match count.
#[derive(Message)]
#[rtype(result = "()")]
pub struct SearchUsers {
    /// The words.
    pub words: String,
    /// Most results.
    pub limit: usize,
    /// Where the verified, matching entries go.
    pub reply: oneshot::Sender<Vec<Entry>>,
}

impl Handler<SearchUsers> for IndexRouter {
    type Result = ();

    fn handle(&mut self, msg: SearchUsers, ctx: &mut Context<Self>) {
        let mut tokens = fold::tokens(&msg.words);
        tokens.truncate(SEARCH_TOKENS_MAX);
        counter!("confab_index_searches_total", "node" => self.node.clone()).increment(1);
        if tokens.is_empty() {
            let _ = msg.reply.send(Vec::new());
            return;
        }
        let per_token: Vec<Vec<oneshot::Receiver<Vec<String>>>> =
            tokens.iter().map(|t| self.postings(t, ctx)).collect();
        let wait = std::time::Duration::from_millis(self.cfg.lookup.step_timeout_ms.max(100) * 2);
        let gather = async move {
            let mut sets: Vec<HashSet<String>> = Vec::new();
            for rxs in per_token {
                let answers =
                    futures_util::future::join_all(rxs.into_iter().map(|rx| tokio::time::timeout(wait, rx))).await;
                sets.push(answers.into_iter().filter_map(|a| a.ok()?.ok()).flatten().collect());
            }
            let mut candidates: Vec<String> = sets.first().cloned().unwrap_or_default().into_iter().collect();
            candidates.retain(|u| sets.iter().all(|s| s.contains(u)));
            candidates.sort();
            candidates
        };
        let limit = msg.limit;
        let reply = msg.reply;
        ctx.spawn(gather.into_actor(self).then(move |mut candidates, act, ctx| {
            // Candidates beyond twice the limit are not worth a lookup each.
            candidates.truncate(limit.saturating_mul(2));
            let finds: Vec<oneshot::Receiver<FindResult>> = candidates
                .iter()
                .map(|u| {
                    let (tx, rx) = oneshot::channel();
                    act.start_find(u, tx, ctx);
                    rx
                })
                .collect();
            futures_util::future::join_all(finds).into_actor(act).map(move |results, _, _| {
                let mut out: Vec<Entry> = results
                    .into_iter()
                    .filter_map(|r| r.ok()?.entry)
                    .filter(|e| {
                        let have = fold::profile_tokens(&e.user, &e.profile);
                        tokens.iter().all(|t| have.contains(t))
                    })
                    .collect();
                out.truncate(limit);
                let _ = reply.send(out);
            })
        }));
    }
}

/// Starts a router whose index packets arrive on `packets`.
pub fn start(router: IndexRouter, packets: tokio::sync::mpsc::Receiver<IndexPacket>) -> Addr<IndexRouter> {
    IndexRouter::create(move |ctx| {
        ctx.add_stream(tokio_stream_from(packets));
        router
    })
}

/// A `Stream` over an mpsc receiver (what tokio-stream's ReceiverStream does).
fn tokio_stream_from<T: 'static>(mut rx: tokio::sync::mpsc::Receiver<T>) -> impl futures_core::Stream<Item = T> {
    futures_util::stream::poll_fn(move |cx| rx.poll_recv(cx))
}

/// Carry a notice from a local host to `to`'s host, wherever it is connected.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Route {
    /// The receiving user.
    pub to: String,
    /// The receiver's super node, if the sender knows it (empty: look it up).
    pub via: String,
    /// The notice.
    pub body: Vec<u8>,
    /// The super node it went to, or why it went nowhere.
    pub reply: oneshot::Sender<Result<String, ErrorCode>>,
}

impl Handler<Route> for IndexRouter {
    type Result = ();

    fn handle(&mut self, msg: Route, ctx: &mut Context<Self>) {
        let Route { to, via, body, reply } = msg;
        let to = to.to_ascii_lowercase();
        // A hint naming another super node wins over a session held here: a user logged
        // in on several devices has sessions at several super nodes, and the sender names
        // each of them in turn.
        let elsewhere = !via.is_empty() && via != self.node && self.gossip_by_name.contains_key(&via);
        if !elsewhere && self.mailboxes.holds(&to) {
            let r = if self.mailboxes.deliver(&to, body) { Ok(self.node.clone()) } else { Err(ErrorCode::NotOnline) };
            let _ = reply.send(r);
            return;
        }
        // The sender's hint saves a lookup. A stale hint (the user moved) loses this
        // notice at the old super node; the sender's next refresh finds the new one.
        if via != self.node
            && let Some(&peer) = self.gossip_by_name.get(&via)
        {
            self.send_to(peer, &IndexRpc::Deliver { to, body });
            mailbox::count(&self.node, "forwarded");
            let _ = reply.send(Ok(via));
            return;
        }
        let (tx, rx) = oneshot::channel();
        self.start_find(&to, tx, ctx);
        ctx.spawn(rx.into_actor(self).map(move |found, act, _| {
            // Routing follows the entry's super node whatever its status: an invisible
            // host publishes itself as offline but stays reachable for its buddies.
            let sn = found.ok().and_then(|f| f.entry).map(|e| e.supernode.clone()).unwrap_or_default();
            let r = if sn == act.node {
                if act.mailboxes.deliver(&to, body) { Ok(sn) } else { Err(ErrorCode::NotOnline) }
            } else if let Some(&peer) = act.gossip_by_name.get(&sn) {
                act.send_to(peer, &IndexRpc::Deliver { to, body });
                mailbox::count(&act.node, "forwarded");
                Ok(sn)
            } else {
                mailbox::count(&act.node, "not_online");
                Err(ErrorCode::NotOnline)
            };
            let _ = reply.send(r);
        }));
    }
}

impl Handler<SubmitMail> for IndexRouter {
    type Result = ();

    fn handle(&mut self, m: SubmitMail, ctx: &mut Context<Self>) {
        self.submit_mail(m, ctx);
    }
}

impl Handler<FetchMail> for IndexRouter {
    type Result = ();

    fn handle(&mut self, m: FetchMail, ctx: &mut Context<Self>) {
        self.fetch_mail(m, ctx);
    }
}

impl Handler<HoldsMail> for IndexRouter {
    type Result = ResponseFuture<bool>;

    fn handle(&mut self, m: HoldsMail, _: &mut Context<Self>) -> Self::Result {
        self.holds_mail(m)
    }
}

impl Handler<AckMail> for IndexRouter {
    type Result = ();

    fn handle(&mut self, m: AckMail, ctx: &mut Context<Self>) {
        self.ack_mail(m, ctx);
    }
}
