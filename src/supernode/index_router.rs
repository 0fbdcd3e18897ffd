//! `IndexRouter`: a super node's part of the Global Index, as an actor around
//! [`index::node::Node`](crate::index::node::Node), which makes every decision. The actor
//! carries its outputs: requests to other members over the cluster channel, reads and
//! writes to the one [`IndexSlot`] actor per slot held, signature checks on the blocking
//! pool, timers, and the login servers' directory. Notices and stored messages are
//! still driven here.

mod mail;
mod push;

pub use crate::index::node::FindResult;
pub use mail::{AckMail, FetchMail, HoldsMail, SubmitMail};

use super::index_slot::{Dump, Get, IndexSlot, Pick, Posted, Put, SlotChanged, StopSlot, Summarize};
use super::mailbox::{self, Mailboxes};
use crate::cluster::View;
use crate::cluster::agent::{ClusterSender, IndexPacket};
use crate::cluster::reject::{self, LogOnce, Reject};
use crate::crypto::credential::TrustedKeys;
use crate::index::node::{self, Checked, Output, PutResult, Timer, Verify, VerifyFor};
use crate::index::rpc::IndexRpc;
use crate::index::verified::VerifiedCache;
use crate::index::{Entry, IndexConfig, NodeId, Slot, SlotMap};
use crate::net::source::Holds as Held;
use crate::wire::ErrorCode;
use actix::prelude::*;
use metrics::{counter, gauge};
use std::collections::{BTreeSet, HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::Arc;
use tokio::sync::{oneshot, watch};

/// The actor.
pub struct IndexRouter {
    node: String,
    me: NodeId,
    cfg: IndexConfig,
    trusted: Arc<TrustedKeys>,
    view: watch::Receiver<Arc<View>>,
    /// The decisions.
    core: node::Node,
    /// The core's slot map and held slots, as of its last rebuild.
    map: Arc<SlotMap>,
    held: BTreeSet<Slot>,
    gossip_of: HashMap<NodeId, SocketAddr>,
    slots: HashMap<Slot, Addr<IndexSlot>>,
    sender: ClusterSender,
    /// Lookups started here, waiting for the core's answer.
    finds: HashMap<u64, oneshot::Sender<FindResult>>,
    /// Keys per non-empty slot, for the entries-per-slot gauges.
    counts: HashMap<Slot, usize>,
    /// Searches started here, waiting for the core's answer.
    searches: HashMap<u64, oneshot::Sender<Vec<Entry>>>,
    mailboxes: Mailboxes,
    gossip_by_name: HashMap<String, Peer>,
    log: LogOnce,
    directory: Option<super::directory::DirectoryClient>,
    /// Entries verified lately, by digest: repair and republished entries skip the RSA.
    verified: VerifiedCache,
    /// The revocation list version `verified` was filled under.
    verified_revocations: u64,
    /// Store verifications running on the blocking pool, per sender and in all.
    verifying: Arc<Held<NodeId>>,
    verify_pool: Arc<tokio::sync::Semaphore>,
    /// A mail round is due a moment after a rebuild.
    mail_handoff_pending: bool,
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
    mail_repair: HashMap<NodeId, crate::index::repair::RepairBudget>,
}

/// A member: its id and gossip address (where answers to it go).
type Peer = (NodeId, SocketAddr);

/// Store verifications in flight from one sender, and in all: past these a Store is
/// refused as `busy` (its sender's next anti-entropy round brings it again), so one
/// member's repair burst cannot queue unbounded RSA work or starve the others.
const VERIFY_PER_SENDER_MAX: usize = 256;
const VERIFY_IN_FLIGHT_MAX: usize = 1024;

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
        let seed = u64::from_le_bytes(crate::crypto::random::bytes());
        let mut core = node::Node::new(node.clone(), me, cfg.clone(), seed);
        let map = core.map().clone();
        let held = core.held().clone();
        // The core's first map (this node alone) needs no store: the first view follows.
        while core.poll().is_some() {}
        let cfg_mail_bytes = cfg.mail_bytes_max;
        Self {
            node,
            me,
            cfg,
            trusted: Arc::new(trusted),
            view,
            core,
            map,
            held,
            gossip_of: HashMap::new(),
            slots: HashMap::new(),
            sender,
            finds: HashMap::new(),
            counts: HashMap::new(),
            searches: HashMap::new(),
            mailboxes,
            gossip_by_name: HashMap::new(),
            log: LogOnce::default(),
            directory: None,
            verified: VerifiedCache::default(),
            verified_revocations: 0,
            verifying: Held::new(VERIFY_PER_SENDER_MAX),
            verify_pool: Arc::new(tokio::sync::Semaphore::new(VERIFY_IN_FLIGHT_MAX)),
            mail_handoff_pending: false,
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
        self.core.req()
    }

    /// Hands the view to the core (addresses stay here: the core knows members by id).
    fn view_changed(&mut self, ctx: &mut Context<Self>) {
        let view = self.view.borrow().clone();
        let members = &view.members;
        self.gossip_of = members.iter().filter_map(|m| Some((m.node_id()?, m.gossip))).collect();
        self.gossip_by_name = members.iter().filter_map(|m| Some((m.name.clone(), (m.node_id()?, m.gossip)))).collect();
        let ids: Vec<NodeId> = self.gossip_of.keys().copied().collect();
        self.mail_repair.retain(|id, _| self.gossip_of.contains_key(id));
        self.core.view(now_ms(), node::SharedView::new(&ids));
        self.pump(ctx);
    }

    /// Carries out everything the core asked for.
    fn pump(&mut self, ctx: &mut Context<Self>) {
        while let Some(out) = self.core.poll() {
            match out {
                Output::Send { to, rpc } => {
                    let sent = match self.gossip_of.get(&to).copied() {
                        Some(addr) => self.send_to((to, addr), &rpc),
                        None => false,
                    };
                    if let IndexRpc::Store { .. } = rpc {
                        let outcome = if sent { "sent" } else { "send_failed" };
                        counter!("confab_index_writes_total", "node" => self.node.clone(), "outcome" => outcome)
                            .increment(1);
                    }
                    if !self.gossip_of.contains_key(&to) {
                        // Left the view meanwhile (the core's map settles a moment later): no
                        // answer will come, so the core hears an empty one now.
                        match rpc {
                            IndexRpc::Fetch { req, .. } => {
                                self.core.receive(now_ms(), to, IndexRpc::FetchReply { req, entry: None })
                            }
                            IndexRpc::PrefixQuery { req, .. } => {
                                self.core.receive(now_ms(), to, IndexRpc::PrefixReply { req, users: Vec::new() })
                            }
                            _ => {}
                        }
                    }
                }
                Output::Schedule { at_ms, timer } => {
                    let wait = std::time::Duration::from_millis(at_ms.saturating_sub(now_ms()).max(1));
                    ctx.run_later(wait, move |act, ctx| {
                        act.core.timer(now_ms(), timer);
                        if timer == Timer::AntiEntropy {
                            act.mail_round(ctx);
                            act.export_counts();
                        }
                        act.pump(ctx);
                    });
                }
                Output::Rebuilt { held, gained } => self.rebuilt(held, gained, ctx),
                Output::Put { slot, key, entry, done } => {
                    let Some(actor) = self.slots.get(&slot).cloned() else {
                        self.core.put_done(now_ms(), done, PutResult::NoStore);
                        continue;
                    };
                    ctx.spawn(actor.send(Put { key, entry }).into_actor(self).map(move |res, act, ctx| {
                        let result = res.map(PutResult::Merged).unwrap_or(PutResult::Failed);
                        act.core.put_done(now_ms(), done, result);
                        act.pump(ctx);
                    }));
                }
                Output::Get { slot, key, purpose } => {
                    let Some(actor) = self.slots.get(&slot).cloned() else {
                        self.core.got(now_ms(), purpose, None);
                        continue;
                    };
                    ctx.spawn(actor.send(Get(key)).into_actor(self).map(move |res, act, ctx| {
                        act.core.got(now_ms(), purpose, res.ok().flatten());
                        act.pump(ctx);
                    }));
                }
                Output::Dump { slots, to } => {
                    // A slot no longer held keeps its store, and still answers while new
                    // replicas fill.
                    let actors: Vec<_> = slots.into_iter().filter_map(|s| self.slots.get(&s).cloned()).collect();
                    if actors.is_empty() {
                        continue;
                    }
                    let dumps = futures_util::future::join_all(actors.into_iter().map(|a| a.send(Dump)));
                    ctx.spawn(dumps.into_actor(self).map(move |res, act, ctx| {
                        let entries: Vec<(String, Vec<u8>)> =
                            res.into_iter().flat_map(|r| r.unwrap_or_default()).map(|(k, e)| (k, e.encode())).collect();
                        act.core.dumped(now_ms(), to, entries);
                        act.pump(ctx);
                    }));
                }
                Output::Summarize { slot, buckets, to, then } => {
                    let Some(actor) = self.slots.get(&slot).cloned() else {
                        self.core.summarized(now_ms(), slot, buckets, to, then, Vec::new());
                        continue;
                    };
                    ctx.spawn(actor.send(Summarize(buckets, then.only())).into_actor(self).map(
                        move |res, act, ctx| {
                            // A slot actor gone away answers nothing rather than "holds nothing".
                            if let Ok(ours) = res {
                                act.core.summarized(now_ms(), slot, buckets, to, then, ours);
                                act.pump(ctx);
                            }
                        },
                    ));
                }
                Output::Pick { slot, keys, to } => {
                    let Some(actor) = self.slots.get(&slot).cloned() else {
                        continue;
                    };
                    ctx.spawn(actor.send(Pick(keys)).into_actor(self).map(move |res, act, ctx| {
                        let entries = res.unwrap_or_default().into_iter().map(|(k, e)| (k, e.encode())).collect();
                        act.core.dumped(now_ms(), to, entries);
                        act.pump(ctx);
                    }));
                }
                Output::Verify(job) => self.check(*job, ctx),
                Output::AskDirectory { id, user } => {
                    let Some(directory) = self.directory.clone() else {
                        self.core.directory_answer(now_ms(), id, None);
                        continue;
                    };
                    let trusted = TrustedKeys::clone(&self.trusted);
                    ctx.spawn(async move { directory.ask(user, trusted).await }.into_actor(self).map(
                        move |record, act, ctx| {
                            act.core.directory_answer(now_ms(), id, record);
                            act.pump(ctx);
                        },
                    ));
                }
                Output::Found { id, result } => {
                    if let Some(tx) = self.finds.remove(&id) {
                        let _ = tx.send(result);
                    }
                }
                Output::Posted { slot, prefix, limit, purpose } => {
                    let Some(actor) = self.slots.get(&slot).cloned() else {
                        self.core.posted(now_ms(), purpose, Vec::new());
                        continue;
                    };
                    ctx.spawn(actor.send(Posted { prefix, limit }).into_actor(self).map(move |res, act, ctx| {
                        act.core.posted(now_ms(), purpose, res.unwrap_or_default());
                        act.pump(ctx);
                    }));
                }
                Output::Searched { id, entries } => {
                    if let Some(tx) = self.searches.remove(&id) {
                        let _ = tx.send(entries);
                    }
                }
            }
        }
    }

    /// The core's slot map changed: a store (an actor) for every slot held, and a hand-off
    /// of stored messages soon after.
    fn rebuilt(&mut self, held: Vec<Slot>, gained: Vec<Slot>, ctx: &mut Context<Self>) {
        self.map = self.core.map().clone();
        self.held = held.into_iter().collect();
        self.mail_gained.extend(gained);
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
        gauge!("confab_index_view_members", "node" => self.node.clone()).set(self.map.members().len() as f64);
        if !self.mail_handoff_pending {
            self.mail_handoff_pending = true;
            ctx.run_later(std::time::Duration::from_millis(node::HANDOFF_AFTER_MS), |act, ctx| {
                act.mail_handoff_pending = false;
                act.mail_round(ctx);
            });
        }
    }

    fn slot_of(&self, key: &str) -> Slot {
        self.core.slot_of(key)
    }

    /// Looks an entry's bytes up among those verified lately.
    fn cached(&mut self, bytes: &[u8]) -> ([u8; 32], bool) {
        // A newer revocation list may refuse what verified before: start over.
        let revocations = self.trusted.revoked().version();
        if revocations != self.verified_revocations {
            self.verified.clear();
            self.verified_revocations = revocations;
        }
        let digest = VerifiedCache::digest(bytes);
        let hit = self.verified.contains(&digest);
        if hit {
            self.checked("cached");
        }
        (digest, hit)
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
    fn verify_now(&mut self, bytes: &[u8], e: &Entry) -> Result<(), String> {
        let (digest, hit) = self.cached(bytes);
        if hit {
            return Ok(());
        }
        let checked = e.verify(&self.trusted, now_ms());
        self.record_check(digest, checked.is_ok());
        checked.map(|_| ()).map_err(|why| why.to_string())
    }

    /// A check the core asked for. A lookup's answer is checked at once; a replicated entry
    /// seen before is too, and a new one goes to the blocking pool (two RSA checks), so a
    /// burst of Stores never holds up the event loop, within per-sender and total bounds.
    fn check(&mut self, job: Verify, ctx: &mut Context<Self>) {
        let from = match &job.purpose {
            VerifyFor::Answer { .. } => {
                let checked = match self.verify_now(&job.bytes, &job.entry) {
                    Ok(()) => Checked::Valid,
                    Err(why) => Checked::Invalid(why),
                };
                return self.core.verified(now_ms(), job, checked);
            }
            VerifyFor::Store { from, .. } => *from,
        };
        let (digest, hit) = self.cached(&job.bytes);
        if hit {
            return self.core.verified(now_ms(), job, Checked::Valid);
        }
        // The claims are held until the check ends, wherever the job is dropped.
        let (Some(sender_claim), Ok(pool_permit)) =
            (self.verifying.claim(from), self.verify_pool.clone().try_acquire_owned())
        else {
            return self.core.verified(now_ms(), job, Checked::Busy);
        };
        let trusted = self.trusted.clone();
        let work = tokio::task::spawn_blocking(move || {
            let checked = job.entry.verify(&trusted, now_ms()).map(|_| ());
            drop((sender_claim, pool_permit));
            (job, checked)
        });
        ctx.spawn(work.into_actor(self).map(move |res, act, ctx| {
            if let Ok((job, checked)) = res {
                act.record_check(digest, checked.is_ok());
                let checked = match checked {
                    Ok(()) => Checked::Valid,
                    Err(why) => Checked::Invalid(why.to_string()),
                };
                act.core.verified(now_ms(), job, checked);
            }
            // A check that panicked drops its job: the sender's next round brings it again.
            act.pump(ctx);
        }));
    }

    fn send_to(&self, to: Peer, rpc: &IndexRpc) -> bool {
        self.sender.send(to.0, to.1, &rpc.encode())
    }

    fn on_rpc(&mut self, from: Peer, rpc: IndexRpc, ctx: &mut Context<Self>) {
        match rpc {
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
            entries => {
                self.core.receive(now_ms(), from.0, entries);
                self.pump(ctx);
            }
        }
    }

    /// Entries held, and the fullest slot, as gauges (per node: no per-slot labels).
    fn export_counts(&self) {
        let total: usize = self.counts.values().sum();
        let max = self.counts.values().copied().max().unwrap_or(0);
        gauge!("confab_index_entries", "node" => self.node.clone()).set(total as f64);
        gauge!("confab_index_slot_entries_max", "node" => self.node.clone()).set(max as f64);
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
        self.core.start(now_ms());
        self.view_changed(ctx);
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
        self.view_changed(ctx);
    }
}

impl StreamHandler<IndexPacket> for IndexRouter {
    fn handle(&mut self, p: IndexPacket, ctx: &mut Context<Self>) {
        // Answers go only to members of the current view, at the address the sender
        // authenticated from (the agent checked it against the sender's certificate).
        // The table of the view last applied first (at 20,000 members a scan of the view
        // for every packet costs); the view itself for a member that joined since.
        let member = self.gossip_of.get(&p.sender) == Some(&p.from)
            || self.view.borrow().members.iter().any(|m| m.node == Some(p.sender.0) && m.gossip == p.from);
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
        self.core.slot_changed(msg.slot, msg.digest);
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
        let name = self.node.clone();
        let bad = move |why: String| {
            counter!("confab_index_publishes_total", "node" => name.clone(), "outcome" => "bad_entry").increment(1);
            (ErrorCode::BadSignature, why)
        };
        let e = Entry::decode(&msg.entry).map_err(|e| bad(e.to_string()))?;
        self.verify_now(&msg.entry, &e).map_err(bad)?;
        if !e.user.eq_ignore_ascii_case(&msg.user) {
            counter!("confab_index_publishes_total", "node" => self.node.clone(), "outcome" => "wrong_user")
                .increment(1);
            return Err((ErrorCode::BadSignature, "an entry may only be published by its own user".into()));
        }
        let replicas = self.core.publish(now_ms(), e);
        self.pump(ctx);
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
        let id = self.core.find(now_ms(), user);
        self.finds.insert(id, reply);
        self.pump(ctx);
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
        let id = self.core.search(now_ms(), &msg.words, msg.limit);
        self.searches.insert(id, msg.reply);
        self.pump(ctx);
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
