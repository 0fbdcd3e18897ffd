//! One super node's part of the Global Index as a plain state machine, in the manner of
//! foca's runtime: views, host writes, member requests, store results, timers and `now`
//! go in; sends, store operations, timers and lookup results come out ([`Output`]). No
//! socket, no actor, no clock, no RNG of its own: the super node's `IndexRouter` actor is
//! a thin shell that carries outputs to sockets and slot actors, and the simulator
//! (`confab-loadtest simulate`) runs thousands of these on virtual time from a seed.
//!
//! - [`output`] — what the driver is asked to do, and the jobs that come back.
//! - [`view`] — the membership a node follows, with its slot map made once per view.
//! - [`local`] — slot stores in memory, driven in the caller's thread (simulator, tests).
//! - `find` — lookups by limited multicast, driven to an end.
//! - [`search`] — search by profile words: postings, then a lookup per candidate.
//! - `sync` — anti-entropy, pulls by new replicas, repair within budgets.

mod find;
pub mod local;
pub mod output;
pub mod search;
mod sync;
pub mod view;

pub use local::LocalStores;
pub use output::{Checked, FindResult, GetFor, Output, PutDone, PutResult, Reconcile, Timer, Verify, VerifyFor};
pub use search::PostedFor;
pub use view::{Members, SharedView};

use super::config::IndexConfig;
use super::lookup::Lookup;
use super::repair::RepairBudget;
use super::rpc::IndexRpc;
use super::store::{Merge, SlotDigest};
use super::{Entry, NodeId, Slot, SlotMap, SlotSpace, fold};
use metrics::{counter, histogram};
use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};
use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::sync::Arc;

/// How long view changes are gathered before the slot map is rebuilt.
pub const VIEW_SETTLE_MS: u64 = 250;
/// How long after a rebuild slots are handed off to their new replicas.
pub const HANDOFF_AFTER_MS: u64 = 500;
/// Users whose postings a node remembers writing, at most.
const POSTED_MAX: usize = 200_000;
/// Replicas a new replica asks for a slot's contents.
pub const PULL_FROM: usize = 2;
/// Periodic rounds after this node stopped replicating a slot it holds entries of in
/// which the slot is still compared with one of its replicas.
pub const FORMER_ROUNDS: u8 = 3;

struct Running {
    lookup: Lookup,
    started_ms: u64,
    /// The deadline a timer is set for (one timer per stage, not one per answer).
    timer_at: Option<u64>,
    /// Waiting for the directory.
    directory: bool,
    /// The search it serves, if any.
    search: Option<u64>,
    /// Its Fetches in flight (request ids), forgotten with it.
    reqs: Vec<u64>,
}

/// One super node's Global Index logic.
pub struct Node {
    name: String,
    me: NodeId,
    cfg: IndexConfig,
    space: SlotSpace,
    map: Arc<SlotMap>,
    /// The latest view, not yet in the map (while changes settle).
    next_view: Option<Arc<dyn Members>>,
    settle_pending: bool,
    rebuilt_at: Option<u64>,
    handoff_pending: bool,
    held: BTreeSet<Slot>,
    /// Slots this node became a replica of since its last pull.
    gained: BTreeSet<Slot>,
    /// The replicas each slot we hold entries of gained since the last hand-off round:
    /// the only ones that round tells of our digest (the others compare with us, or we
    /// with them, in the periodic rounds).
    newcomers: BTreeMap<Slot, BTreeSet<NodeId>>,
    /// Slots we no longer replicate but hold entries of, with the periodic rounds left
    /// that still send their digest to one of their replicas.
    former_rounds: BTreeMap<Slot, u8>,
    /// Digests of the non-empty slots with a store here, as the stores report them.
    digests: BTreeMap<Slot, SlotDigest>,
    next_req: u64,
    lookups: HashMap<u64, Running>,
    /// Our Fetches in flight: request id → (lookup, member asked).
    fetches: HashMap<u64, (u64, NodeId)>,
    /// Searches running.
    searches: HashMap<u64, search::Searching>,
    /// Our PrefixQueries in flight: request id → (search, word, member asked).
    prefix_reqs: HashMap<u64, (u64, usize, NodeId)>,
    /// Keys asked of a replica lately: (slot, key hash, digest lane) → when.
    wants: HashMap<(Slot, u64, u64), u64>,
    /// Repair bytes each replica may still be sent.
    repair: HashMap<NodeId, RepairBudget>,
    /// Users whose postings this node wrote lately: their profile's tokens, and when.
    posted: HashMap<String, (u64, u64)>,
    rng: StdRng,
    out: VecDeque<Output>,
}

impl Node {
    /// Node `me` (named `name` in metrics and logs) with `cfg`; `seed` drives its random
    /// choices (when its first anti-entropy round falls, where a capped repair starts).
    pub fn new(name: String, me: NodeId, cfg: IndexConfig, seed: u64) -> Self {
        let space = SlotSpace::new(cfg.slots).unwrap_or_default();
        let map = Arc::new(SlotMap::new(space, cfg.replicas, &[me]));
        let mut node = Self {
            name,
            me,
            cfg,
            space,
            map,
            next_view: None,
            settle_pending: false,
            rebuilt_at: None,
            handoff_pending: false,
            held: BTreeSet::new(),
            gained: BTreeSet::new(),
            newcomers: BTreeMap::new(),
            former_rounds: BTreeMap::new(),
            digests: BTreeMap::new(),
            next_req: 1,
            lookups: HashMap::new(),
            fetches: HashMap::new(),
            searches: HashMap::new(),
            prefix_reqs: HashMap::new(),
            wants: HashMap::new(),
            repair: HashMap::new(),
            posted: HashMap::new(),
            rng: StdRng::seed_from_u64(seed),
            out: VecDeque::new(),
        };
        node.apply_map(node.map.clone());
        node
    }

    /// Starts the periodic rounds; call once, at `now_ms`.
    pub fn start(&mut self, now_ms: u64) {
        // A first round somewhere in the second half of a period: nodes started together
        // (a cluster brought up at once, a simulation) would otherwise compare at the same
        // instants, and both sides of a pair repair the same difference.
        let period = self.anti_entropy_ms();
        let first = self.rng.random_range(period / 2..=period);
        self.schedule(now_ms + first, Timer::AntiEntropy);
    }

    /// The next thing to do, if any.
    pub fn poll(&mut self) -> Option<Output> {
        self.out.pop_front()
    }

    /// This node's id.
    pub fn me(&self) -> NodeId {
        self.me
    }

    /// The settings.
    pub fn config(&self) -> &IndexConfig {
        &self.cfg
    }

    /// The current slot map.
    pub fn map(&self) -> &Arc<SlotMap> {
        &self.map
    }

    /// The slots this node replicates.
    pub fn held(&self) -> &BTreeSet<Slot> {
        &self.held
    }

    /// The slot a key lives in.
    pub fn slot_of(&self, key: &str) -> Slot {
        self.space.slot_of(fold::slot_key(key))
    }

    /// Lookups running.
    pub fn lookups_running(&self) -> usize {
        self.lookups.len()
    }

    /// A fresh request id (the shell's own requests share the sequence).
    pub fn req(&mut self) -> u64 {
        self.next_req += 1;
        self.next_req
    }

    fn anti_entropy_ms(&self) -> u64 {
        self.cfg.anti_entropy_secs.max(1) * 1000
    }

    fn schedule(&mut self, at_ms: u64, timer: Timer) {
        self.out.push_back(Output::Schedule { at_ms, timer });
    }

    fn send(&mut self, to: NodeId, rpc: IndexRpc) {
        self.out.push_back(Output::Send { to, rpc });
    }

    /// The cluster's live members changed (this node included or not). Deaths and joins
    /// arrive one by one over a few seconds: the first change after a quiet spell is
    /// applied at once (a lone join is served without delay), later ones within
    /// [`VIEW_SETTLE_MS`] wait and are applied together.
    pub fn view(&mut self, now_ms: u64, members: Arc<dyn Members>) {
        self.next_view = Some(members);
        if self.settle_pending {
            return;
        }
        let since = self.rebuilt_at.map(|t| now_ms.saturating_sub(t)).unwrap_or(VIEW_SETTLE_MS);
        if since >= VIEW_SETTLE_MS {
            self.rebuild(now_ms);
        } else {
            self.settle_pending = true;
            self.schedule(now_ms + (VIEW_SETTLE_MS - since), Timer::Settle);
        }
    }

    fn rebuild(&mut self, now_ms: u64) {
        let Some(mut view) = self.next_view.take() else { return };
        self.rebuilt_at = Some(now_ms);
        if view.ids().binary_search(&self.me).is_err() {
            // A view without this node (it has not heard of itself yet): its own copy.
            let mut ids = view.ids().to_vec();
            ids.push(self.me);
            view = SharedView::new(&ids);
        }
        let map = view.slot_map(&self.map);
        self.apply_map(map);
        if !self.handoff_pending {
            self.handoff_pending = true;
            self.schedule(now_ms + HANDOFF_AFTER_MS, Timer::HandOff);
        }
    }

    fn apply_map(&mut self, map: Arc<SlotMap>) {
        self.repair.retain(|id, _| map.members().binary_search(id).is_ok());
        let held: BTreeSet<Slot> = map.held_by(self.me).into_iter().collect();
        let gained: Vec<Slot> = held.difference(&self.held).copied().collect();
        self.gained.extend(gained.iter().copied());
        self.gained.retain(|s| held.contains(s));
        // At 20,000 members every membership change reached every node, and a hand-off
        // round to all co-replicas was most of the index's messages (docs/scale.md): a
        // change concerns a node only where its slots' replica sets moved.
        // A slot this node stops replicating but holds entries of is handed to its new
        // replicas the same way: after a partition, or a view of itself alone, it may be
        // the only holder of what was written meanwhile. The next `FORMER_ROUNDS`
        // periodic rounds send it to one of its replicas too, against a lost packet, a
        // repair cut by a budget, or a view that moved the slot again within them. Doing
        // so at every later change of its replicas while the store lasts cost the
        // simulator's 200-node p99 a fifth more, for entries the pulls had brought.
        let lost: Vec<Slot> = self.held.difference(&held).filter(|s| self.digests.contains_key(s)).copied().collect();
        for s in held.iter().chain(&lost) {
            // A slot just gained: every other replica may lack what we hold of it.
            let before = if self.held.contains(s) { self.map.replicas(*s) } else { &[] };
            let fresh = map.replicas(*s).iter().filter(|r| **r != self.me && !before.contains(r));
            let mut fresh = fresh.peekable();
            if fresh.peek().is_some() {
                self.newcomers.entry(*s).or_default().extend(fresh);
            }
        }
        for s in lost {
            self.former_rounds.insert(s, FORMER_ROUNDS);
        }
        self.newcomers.retain(|s, _| held.contains(s) || self.digests.contains_key(s));
        self.former_rounds.retain(|s, _| !held.contains(s) && self.digests.contains_key(s));
        self.held = held;
        self.map = map;
        tracing::debug!(node = %self.name, members = self.map.members().len(), held = self.held.len(), "slot map rebuilt");
        self.out.push_back(Output::Rebuilt { held: self.held.iter().copied().collect(), gained });
    }

    /// A timer came due.
    pub fn timer(&mut self, now_ms: u64, t: Timer) {
        match t {
            Timer::Settle => {
                self.settle_pending = false;
                self.rebuild(now_ms);
            }
            Timer::HandOff => {
                self.handoff_pending = false;
                self.hand_off(now_ms);
                self.pull();
            }
            Timer::AntiEntropy => {
                self.anti_entropy(now_ms);
                self.schedule(now_ms + self.anti_entropy_ms(), Timer::AntiEntropy);
            }
            Timer::Search(id) => self.search_timer(now_ms, id),
            Timer::Lookup(id) => {
                if let Some(r) = self.lookups.get_mut(&id) {
                    r.timer_at = None;
                }
                self.drive(now_ms, id);
            }
        }
    }

    /// A slot's store changed: its digests (None: empty).
    pub fn slot_changed(&mut self, slot: Slot, digest: Option<SlotDigest>) {
        match digest {
            Some(d) => self.digests.insert(slot, d),
            None => self.digests.remove(&slot),
        };
    }

    /// A local host published `entry` (its signatures already checked): it goes to the
    /// replicas of its key, and to those of each of its profile's search tokens when the
    /// tokens changed or were last written here `postings_refresh_secs` ago. Returns how
    /// many replicas its own key has.
    ///
    /// A host republishes its presence every few minutes; writing up to 16 postings each
    /// time (ten replicas each) was most of the index's traffic, for postings that had not
    /// changed. Search checks every candidate by looking it up, so a posting is only a
    /// pointer to the user; postings are kept `POSTINGS_REFRESH_MAX_SECS` past the
    /// retention (`store`), so one written up to a refresh period before the user was last
    /// seen still lasts the retention. When the replicas of their slots change, the
    /// postings move with the slots (pulls, and the hand-off of a slot this node stops
    /// replicating), as every key does.
    pub fn publish(&mut self, now_ms: u64, entry: Entry) -> usize {
        let replicas = self.replicate(now_ms, entry.key(), &entry);
        let tokens = fold::name_tokens(&entry.user, &entry.profile);
        // What the postings were written for: the tokens. Their slots' replicas were part
        // of it, but at 20,000 super nodes some replica of a token's slot changes every
        // few minutes, so nearly every presence refresh wrote the postings again.
        let fingerprint = Self::postings_fingerprint(&tokens);
        let refresh_ms = self.cfg.postings_refresh_secs.saturating_mul(1000);
        let key = entry.key();
        // Not at a logout within the period either: a posting is kept a day past the
        // retention (`POSTINGS_REFRESH_MAX_SECS`, at least the period), so one written at
        // the login outlasts the entry the logout writes. Writing them at every logout
        // too was half of the postings' writes, every one of them to the hottest slots.
        let due =
            self.posted.get(&key).is_none_or(|(f, at)| *f != fingerprint || now_ms.saturating_sub(*at) >= refresh_ms);
        if due {
            for token in tokens {
                self.replicate(now_ms, fold::posting_key(&token, &entry.user), &entry);
            }
            self.remember_posted(now_ms, key, fingerprint, refresh_ms);
        }
        replicas
    }

    fn postings_fingerprint(tokens: &[String]) -> u64 {
        use std::hash::{Hash, Hasher};
        let mut h = std::hash::DefaultHasher::new();
        tokens.hash(&mut h);
        h.finish()
    }

    /// Records that `entry`'s postings were written at `now_ms`, as [`Node::publish`]
    /// does: for state that was there before this node's run (the simulator's warm start,
    /// where users online at the start logged in and posted before it).
    pub fn note_posted(&mut self, now_ms: u64, entry: &Entry) {
        let fingerprint = Self::postings_fingerprint(&fold::name_tokens(&entry.user, &entry.profile));
        let refresh_ms = self.cfg.postings_refresh_secs.saturating_mul(1000);
        self.remember_posted(now_ms, entry.key(), fingerprint, refresh_ms);
    }

    /// Remembers a user's postings, forgetting those due again anyway (the table holds
    /// about the users of this node's hosts over one refresh period).
    fn remember_posted(&mut self, now_ms: u64, key: String, fingerprint: u64, refresh_ms: u64) {
        if refresh_ms == 0 {
            return;
        }
        if self.posted.len() >= POSTED_MAX {
            self.posted.retain(|_, (_, at)| now_ms.saturating_sub(*at) < refresh_ms);
            if self.posted.len() >= POSTED_MAX {
                // Still full: forget all; the next publishes write their postings again.
                self.posted.clear();
            }
        }
        self.posted.insert(key, (fingerprint, now_ms));
    }

    fn replicate(&mut self, _now_ms: u64, key: String, entry: &Entry) -> usize {
        let slot = self.slot_of(&key);
        let map = self.map.clone();
        let replicas = map.replicas(slot);
        let bytes = entry.encode();
        for r in replicas {
            if *r == self.me {
                let done = PutDone { ack: None, made_ms: entry.timestamp_ms };
                self.out.push_back(Output::Put { slot, key: key.clone(), entry: entry.clone(), done });
            } else {
                let req = self.req();
                // Counted as sent (or not) by the driver, which knows.
                self.send(*r, IndexRpc::Store { req, key: key.clone(), entry: bytes.clone() });
            }
        }
        replicas.len()
    }

    fn count_write(&self, outcome: &'static str) {
        counter!("confab_index_writes_total", "node" => self.name.clone(), "outcome" => outcome).increment(1);
    }

    /// Checks that `entry` may live under `key`: its own username, or a posting for one
    /// of its profile's tokens (any of them: super nodes of the previous version posted
    /// the city, country and language too).
    fn key_fits(key: &str, entry: &Entry) -> bool {
        key == entry.key()
            || fold::profile_tokens(&entry.user, &entry.profile)
                .iter()
                .any(|t| fold::posting_key(t, &entry.user) == key)
    }

    /// A request or answer from member `from` (the driver checked it is one).
    pub fn receive(&mut self, now_ms: u64, from: NodeId, rpc: IndexRpc) {
        match rpc {
            IndexRpc::Store { req, key, entry } => match Entry::decode(&entry) {
                Ok(e) => {
                    let purpose = VerifyFor::Store { from, req, key };
                    self.out.push_back(Output::Verify(Box::new(Verify { entry: e, bytes: entry, purpose })));
                }
                Err(why) => {
                    tracing::debug!(node = %self.name, from = %from, %why, "refused a replicated entry");
                    self.refuse("bad_entry", from, req);
                }
            },
            IndexRpc::StoreAck { .. } => {}
            IndexRpc::Fetch { req, key } => {
                let slot = self.slot_of(&key);
                self.out.push_back(Output::Get { slot, key, purpose: GetFor::Fetch { to: from, req } });
            }
            IndexRpc::FetchReply { req, entry } => self.on_fetch_reply(now_ms, from, req, entry),
            IndexRpc::PrefixQuery { req, prefix, limit } => self.on_prefix_query(from, req, prefix, limit),
            IndexRpc::PrefixReply { req, users } => self.on_prefix_reply(now_ms, from, req, users),
            IndexRpc::Digests { slots } => self.compare_digests(now_ms, from, slots),
            IndexRpc::Differ { slots } => self.push_slots(slots.into_iter().map(Slot).collect(), from, now_ms),
            IndexRpc::Buckets { slot, digests } => self.compare_buckets(now_ms, from, Slot(slot), &digests),
            IndexRpc::Summary { slot, buckets, answer, items } => {
                self.on_summary(now_ms, from, Slot(slot), buckets, answer, items)
            }
            IndexRpc::Want { slot, keys } => self.on_want(now_ms, from, Slot(slot), keys),
            other => {
                // The driver handles the rest (search, notices, mail) itself.
                tracing::debug!(node = %self.name, from = %from, rpc = other.label(), "not an entry request");
            }
        }
    }

    /// A check the node asked for ended.
    pub fn verified(&mut self, now_ms: u64, job: Verify, checked: Checked) {
        match job.purpose {
            VerifyFor::Store { from, req, key } => match checked {
                Checked::Valid if Self::key_fits(&key, &job.entry) => {
                    let slot = self.slot_of(&key);
                    let done = PutDone { ack: Some((from, req)), made_ms: job.entry.timestamp_ms };
                    self.out.push_back(Output::Put { slot, key, entry: job.entry, done });
                }
                Checked::Valid => self.refuse("wrong_key", from, req),
                Checked::Invalid(why) => {
                    tracing::debug!(node = %self.name, from = %from, %why, "refused a replicated entry");
                    self.refuse("bad_entry", from, req);
                }
                Checked::Busy => self.refuse("busy", from, req),
            },
            VerifyFor::Answer { id, from } => {
                let entry = match checked {
                    Checked::Valid => Some(job.entry),
                    Checked::Invalid(why) => {
                        // A replica that answers with something that does not verify is
                        // lying or broken: its answer counts as none.
                        counter!("confab_index_bad_answers_total", "node" => self.name.clone()).increment(1);
                        tracing::warn!(node = %self.name, from = %from, %why, "a super node answered a lookup with an entry that does not verify");
                        None
                    }
                    Checked::Busy => None,
                };
                if let Some(r) = self.lookups.get_mut(&id) {
                    r.lookup.on_answer(from, entry);
                }
                self.drive(now_ms, id);
            }
        }
    }

    /// A write the node asked for ended.
    pub fn put_done(&mut self, now_ms: u64, done: PutDone, result: PutResult) {
        if matches!(result, PutResult::Merged(Merge::Stored | Merge::Replaced)) {
            // From the host signing the entry to this replica holding it: direct writes
            // take milliseconds; a repair by anti-entropy shows its delay here.
            let lag = now_ms.saturating_sub(done.made_ms) as f64 / 1000.0;
            histogram!("confab_index_replication_lag_seconds", "node" => self.name.clone()).record(lag);
        }
        let outcome = match result {
            PutResult::Merged(Merge::Stored) => "stored",
            PutResult::Merged(Merge::Replaced) => "replaced",
            PutResult::Merged(Merge::Duplicate) => "duplicate",
            PutResult::Merged(Merge::Stale) => "stale",
            PutResult::Merged(Merge::Full) => "slot_full",
            PutResult::NoStore => return self.ack_put(done, false),
            PutResult::Failed => "mailbox",
        };
        self.count_write(outcome);
        let held = matches!(result, PutResult::Merged(Merge::Stored | Merge::Replaced | Merge::Duplicate));
        self.ack_put(done, held);
    }

    fn ack_put(&mut self, done: PutDone, held: bool) {
        if let Some((to, req)) = done.ack {
            self.send(to, IndexRpc::StoreAck { req, held });
        }
    }

    /// A read the node asked for ended.
    pub fn got(&mut self, now_ms: u64, purpose: GetFor, entry: Option<Entry>) {
        match purpose {
            GetFor::Fetch { to, req } => {
                self.send(to, IndexRpc::FetchReply { req, entry: entry.map(|e| e.encode()) });
            }
            GetFor::Lookup { id } => {
                if let Some(r) = self.lookups.get_mut(&id) {
                    r.lookup.on_answer(self.me, entry);
                }
                self.drive(now_ms, id);
            }
        }
    }

    fn refuse(&mut self, reason: &'static str, to: NodeId, req: u64) {
        self.count_write(reason);
        self.send(to, IndexRpc::StoreAck { req, held: false });
    }
}

#[cfg(test)]
mod tests;
