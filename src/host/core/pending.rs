//! The requests the host has out at its super node, and the queue in front of them.
//!
//! Every request gets a wire id ([`ReqId`], one counter for all kinds, starting at a
//! random value and skipping 0) and the user's handle on it ([`OpId`]). Each kind has
//! its own deadline and resend policy; answers are matched by (kind, id), and one that
//! matches nothing is counted, never taken for another request's.
//!
//! Revision 1 of the message layer gives Publish, its PublishAck, the keepalive and a
//! sealed Error answering a request no id. While the super node's revision is 1 or
//! unknown, the **legacy lane** lets at most one of {Publish, Find, Search,
//! RelayAllocate} be out at a time, so an id-less answer belongs to the lane's request;
//! Forward never waits for the lane. Revision 2 gives every answer an id: Publish goes
//! as a PublishReq answered by a PublishReply, a failure comes as a RequestError naming
//! its request, a keepalive's id is echoed, and nothing waits for the lane.
//!
//! The super node accepts 50 index requests a second from a host (Find, Search,
//! Publish, Forward and RelayAllocate together, per wall-clock second). One token bucket
//! paces them all, with classes drained in order: call signals and relay allocations
//! first, user requests next, presence fan-out last.

use crate::wire::mail::{
    DeviceBytes, MailAck, MailAckReply, MailBatch, MailFetch, MailId, MailSubmit, MailSubmitReply,
};
use crate::wire::message::{
    ErrorMsg, Find, FindReply, Forward, ForwardAck, Keepalive, Observed, PublishAck, PublishReply, PublishReq,
    RelayAllocate, RelayGrant, RelayRelease, RequestError as RequestErrorMsg, Search, SearchReply,
};
use crate::wire::{ErrorCode, MessageKind};
use std::collections::{BTreeMap, VecDeque};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

/// A request's id on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ReqId(pub u32);

/// The user's handle on one request; its result comes back under it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct OpId(pub u64);

/// Paced sends a second, kept under the super node's 50 so resends and clock skew fit.
pub const SEND_RATE_PER_SEC: u32 = 45;
/// Paced sends that may go at once after a quiet spell. The super node counts per
/// wall-clock second, and a bucket lets `burst + rate` through in any one second:
/// 5 + 45 stays within its 50.
pub const SEND_BURST: u32 = 5;
/// How long a "too many attempts" answer halves the rate.
pub const SLOW_DOWN: Duration = Duration::from_secs(1);
/// How long a timed-out relay allocation's id is remembered, to release a late grant.
pub const TOMBSTONE_TTL: Duration = Duration::from_secs(30);
/// Most tombstones kept (the oldest go first).
pub const TOMBSTONES_MAX: usize = 64;
/// Most requests pending at once; beyond, a request fails at once.
pub const PENDING_MAX: usize = 1024;

/// What a request asks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ReqKind {
    /// A keepalive whose answer someone waits for.
    Keepalive,
    /// Our index entry.
    Publish,
    /// A lookup.
    Find,
    /// A profile search.
    Search,
    /// A notice for another host.
    Forward,
    /// A relay session for a call.
    RelayAllocate,
    /// A message for the store.
    MailSubmit,
    /// A page of stored messages.
    MailFetch,
    /// Stored messages this device holds.
    MailAck,
}

impl ReqKind {
    /// A short label for logs and errors.
    pub fn label(self) -> &'static str {
        match self {
            Self::Keepalive => "keepalive",
            Self::Publish => "publish",
            Self::Find => "find",
            Self::Search => "search",
            Self::Forward => "forward",
            Self::RelayAllocate => "relay_allocate",
            Self::MailSubmit => "mail_submit",
            Self::MailFetch => "mail_fetch",
            Self::MailAck => "mail_ack",
        }
    }

    /// The message kind it goes as; `legacy`: in revision 1's form.
    fn message(self, legacy: bool) -> MessageKind {
        match self {
            Self::Keepalive => MessageKind::Keepalive,
            Self::Publish if legacy => MessageKind::Publish,
            Self::Publish => MessageKind::PublishReq,
            Self::Find => MessageKind::Find,
            Self::Search => MessageKind::Search,
            Self::Forward => MessageKind::Forward,
            Self::RelayAllocate => MessageKind::RelayAllocate,
            Self::MailSubmit => MessageKind::MailSubmit,
            Self::MailFetch => MessageKind::MailFetch,
            Self::MailAck => MessageKind::MailAck,
        }
    }

    /// From the first send to giving up (a keepalive's is the caller's).
    fn deadline(self) -> Duration {
        Duration::from_secs(match self {
            Self::Keepalive | Self::Forward | Self::Publish => 5,
            Self::MailSubmit | Self::MailFetch | Self::MailAck => 8,
            Self::Find => 10,
            Self::Search => 15,
            Self::RelayAllocate => 3,
        })
    }

    /// When to send again, counted from the first send, over a link that can lose
    /// frames. Publish is idempotent (the newest timestamp wins) and Find and Search
    /// are reads; a relay allocation is not idempotent, a notice is a hint. The store's
    /// requests are idempotent (a message by its id, an acknowledgement by device and id).
    fn resends(self) -> &'static [Duration] {
        const PUBLISH: [Duration; 2] = [Duration::from_secs(1), Duration::from_secs(2)];
        const FIND: [Duration; 2] = [Duration::from_secs(1), Duration::from_secs(3)];
        const SEARCH: [Duration; 1] = [Duration::from_secs(2)];
        match self {
            Self::Publish => &PUBLISH,
            Self::Find => &FIND,
            Self::Search => &SEARCH,
            Self::MailSubmit | Self::MailFetch | Self::MailAck => &FIND,
            Self::Keepalive | Self::Forward | Self::RelayAllocate => &[],
        }
    }
}

/// Priority in the send queue, drained in this order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Class {
    /// Call signals and relay allocations: a call's setup never queues behind the rest.
    Call = 0,
    /// What a user asked for: Find, Search, Publish.
    User = 1,
    /// Presence fan-out to buddies.
    Presence = 2,
}

/// The super node's revision of the message layer, as far as the host knows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Revision {
    /// Not learned yet: treated as revision 1.
    Unknown,
    /// Keepalive echoes, Publish answers and request errors carry no id.
    Rev1,
    /// Every answer names its request: keepalive ids are echoed, Publish goes as
    /// PublishReq, failures come as RequestError.
    Rev2,
}

impl Revision {
    /// Whether `kind` must wait for the legacy lane: its answer may come without an id.
    fn in_lane(self, kind: ReqKind) -> bool {
        match self {
            Self::Unknown | Self::Rev1 => {
                matches!(kind, ReqKind::Publish | ReqKind::Find | ReqKind::Search | ReqKind::RelayAllocate)
            }
            Self::Rev2 => false,
        }
    }
}

/// A request to make.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Request {
    /// A keepalive answered within `timeout` (sent at once, not paced).
    Keepalive {
        /// How long to wait for the answer.
        timeout: Duration,
    },
    /// Our signed index entry.
    Publish {
        /// The encoded entry.
        entry: Vec<u8>,
    },
    /// Look a user up.
    Find {
        /// Whom.
        user: String,
    },
    /// Search profiles.
    Search {
        /// The words.
        words: String,
        /// At most this many results.
        limit: u8,
    },
    /// Carry a notice to another user's host.
    Forward {
        /// The receiving user.
        to: String,
        /// Their super node, if known.
        via: String,
        /// The notice.
        body: Vec<u8>,
        /// How urgent.
        class: Class,
    },
    /// A relay session for a call with the holder of `callee` (an encoded credential).
    RelayAllocate {
        /// The callee's credential.
        callee: Vec<u8>,
    },
    /// Store a sealed message for `to`, pushed at once to its online sessions.
    MailSubmit {
        /// The message's id.
        id: MailId,
        /// The recipient.
        to: String,
        /// The sealed message.
        sealed: Vec<u8>,
    },
    /// A page of the messages stored for `device`.
    MailFetch {
        /// This device.
        device: DeviceBytes,
        /// The last id of the previous page.
        after: Option<MailId>,
    },
    /// `device` holds these stored messages.
    MailAck {
        /// This device.
        device: DeviceBytes,
        /// The messages (at most `wire::mail::ACK_IDS_MAX`).
        ids: Vec<MailId>,
    },
}

/// What a request got back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Answer {
    /// A keepalive's answer: the address the super node sees.
    Observed(SocketAddr),
    /// Publish's answer (its code says whether it was stored).
    Published(PublishAck),
    /// A lookup's answer.
    Found(FindReply),
    /// A search's results, in the super node's order (signed entries, unverified).
    Searched(Vec<Vec<u8>>),
    /// Where a notice went (its code says whether it was delivered).
    Forwarded(ForwardAck),
    /// A relay session, or why not (its code).
    Granted(RelayGrant),
    /// What became of a message for the store (its code says whether it was stored).
    Mailed(MailSubmitReply),
    /// A page of stored messages (its code says whether the store answered).
    Mail(MailBatch),
    /// An acknowledgement reached the store (or why not: its code).
    MailAcked(MailAckReply),
}

/// Why a request got no answer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum RequestError {
    /// No answer before the deadline.
    #[error("the super node did not answer the {0} in time")]
    TimedOut(&'static str),
    /// The super node answered with an error.
    #[error("refused: {}: {}", .0.code.label(), .0.detail)]
    Refused(ErrorMsg),
    /// The link to the super node ended before the answer.
    #[error("no link to a super node")]
    LinkDown,
    /// Too many requests pending already.
    #[error("too many requests pending")]
    Overloaded,
}

/// A request's outcome.
pub type OpResult = Result<Answer, RequestError>;

/// What became of one arriving message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Matched {
    /// It answered a pending request (or part of one).
    Request,
    /// A late relay grant for a request given up on: it is released.
    Released,
    /// It answers nothing pending: counted.
    Unmatched,
    /// Not an answer kind at all.
    NotAnAnswer,
}

/// A request that timed out, for the link's liveness check.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TimedOut {
    /// What it was.
    pub kind: ReqKind,
    /// When it last went out.
    pub last_sent: Instant,
}

/// One message to seal and send now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outgoing {
    /// The message kind.
    pub kind: MessageKind,
    /// The body (with the request's id in it where the kind has one).
    pub body: Vec<u8>,
}

/// Counters of what the table saw.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PendingStats {
    /// Answers matching no pending request.
    pub unmatched: u64,
    /// Answers to a pending request that did not decode.
    pub malformed: u64,
    /// Requests given up on at their deadline.
    pub timed_out: u64,
    /// Sends after the first.
    pub resent: u64,
    /// Late relay grants released.
    pub late_grants_released: u64,
    /// "Too many attempts" answers (each halves the rate for a second).
    pub slowed_down: u64,
    /// RequestErrors with request id 0: the super node could not read the request's
    /// id, so they complete nothing (the request runs to its deadline).
    pub errors_without_id: u64,
}

#[derive(Debug)]
struct Sent {
    first: Instant,
    last: Instant,
    deadline: Instant,
    epoch: u32,
    resends_done: usize,
    queued_again: bool,
    /// Sent in revision 1's form (and held in the lane): resends keep the form, so an
    /// id-less answer to any of its copies still finds it.
    legacy: bool,
}

#[derive(Debug)]
struct Entry {
    op: OpId,
    kind: ReqKind,
    class: Class,
    body: Vec<u8>,
    timeout: Duration,
    sent: Option<Sent>,
    parts: Vec<Option<Vec<u8>>>,
}

/// The token bucket, on monotonic time with whole nanoseconds (no float drift).
#[derive(Debug)]
struct Bucket {
    credit: Duration,
    at: Instant,
    slow_until: Instant,
}

impl Bucket {
    const COST: Duration = Duration::from_nanos(1_000_000_000 / SEND_RATE_PER_SEC as u64);

    fn new(now: Instant) -> Self {
        Self { credit: Self::COST * SEND_BURST, at: now, slow_until: now }
    }

    fn refill(&mut self, now: Instant) {
        if now <= self.at {
            return;
        }
        let slow = self.slow_until.saturating_duration_since(self.at).min(now - self.at);
        let earned = slow / 2 + (now - self.at - slow);
        self.credit = (self.credit + earned).min(Self::COST * SEND_BURST);
        self.at = now;
    }

    fn take(&mut self, now: Instant) -> bool {
        self.refill(now);
        let ok = self.credit >= Self::COST;
        if ok {
            self.credit -= Self::COST;
        }
        ok
    }

    /// When the next token is there (in the past or now if it is).
    fn ready_at(&self) -> Instant {
        let need = Self::COST.saturating_sub(self.credit);
        let slow = self.slow_until.saturating_duration_since(self.at);
        if need * 2 <= slow { self.at + need * 2 } else { self.at + slow + (need - slow / 2) }
    }

    fn slow_down(&mut self, now: Instant) {
        self.refill(now);
        self.slow_until = now + SLOW_DOWN;
    }
}

/// The pending-request table and its send queue.
#[derive(Debug)]
pub struct Pending {
    next_req: u32,
    next_op: u64,
    revision: Revision,
    reliable: bool,
    entries: BTreeMap<u32, Entry>,
    immediate: VecDeque<u32>,
    queue: [VecDeque<u32>; 3],
    bucket: Bucket,
    lane: Option<u32>,
    tombstones: VecDeque<(u32, Instant)>,
    completions: VecDeque<(OpId, OpResult)>,
    fire: VecDeque<Outgoing>,
    stats: PendingStats,
}

impl Pending {
    /// An empty table at `now`; the first request id comes from `rng`.
    pub fn new(rng: &mut impl rand::Rng, now: Instant) -> Self {
        Self {
            next_req: rng.next_u32(),
            next_op: 1,
            revision: Revision::Unknown,
            reliable: false,
            entries: BTreeMap::new(),
            immediate: VecDeque::new(),
            queue: Default::default(),
            bucket: Bucket::new(now),
            lane: None,
            tombstones: VecDeque::new(),
            completions: VecDeque::new(),
            fire: VecDeque::new(),
            stats: PendingStats::default(),
        }
    }

    /// What the super node's revision is now known to be.
    pub fn set_revision(&mut self, revision: Revision) {
        self.revision = revision;
    }

    /// The revision the table matches answers by.
    pub fn revision(&self) -> Revision {
        self.revision
    }

    /// Whether the link loses nothing (TCP): then nothing is sent twice.
    pub fn set_reliable(&mut self, reliable: bool) {
        self.reliable = reliable;
    }

    /// Counters.
    pub fn stats(&self) -> PendingStats {
        self.stats
    }

    /// Requests pending (queued or out).
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether nothing is pending.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    fn take_req(&mut self) -> u32 {
        loop {
            let r = self.next_req;
            self.next_req = self.next_req.wrapping_add(1);
            if r != 0 && !self.entries.contains_key(&r) && !self.tombstones.iter().any(|(t, _)| *t == r) {
                return r;
            }
        }
    }

    /// Queues a request; its result comes back from [`Pending::poll_completion`].
    pub fn submit(&mut self, request: Request) -> OpId {
        let op = OpId(self.next_op);
        self.next_op += 1;
        if self.entries.len() >= PENDING_MAX {
            self.completions.push_back((op, Err(RequestError::Overloaded)));
            return op;
        }
        let req = self.take_req();
        let (kind, class, body, timeout) = match request {
            // The request id is the keepalive's: a revision-1 super node ignores it, a
            // revision-2 one echoes it. Link keepalives use ids above u32::MAX.
            Request::Keepalive { timeout } => {
                (ReqKind::Keepalive, Class::Call, Keepalive { id: u64::from(req) }.encode(), timeout)
            }
            Request::Publish { entry } => (ReqKind::Publish, Class::User, entry, ReqKind::Publish.deadline()),
            Request::Find { user } => {
                (ReqKind::Find, Class::User, Find { req, user }.encode(), ReqKind::Find.deadline())
            }
            Request::Search { words, limit } => {
                (ReqKind::Search, Class::User, Search { req, words, limit }.encode(), ReqKind::Search.deadline())
            }
            Request::Forward { to, via, body, class } => {
                (ReqKind::Forward, class, Forward { req, to, via, body }.encode(), ReqKind::Forward.deadline())
            }
            Request::RelayAllocate { callee } => (
                ReqKind::RelayAllocate,
                Class::Call,
                RelayAllocate { req, callee }.encode(),
                ReqKind::RelayAllocate.deadline(),
            ),
            Request::MailSubmit { id, to, sealed } => (
                ReqKind::MailSubmit,
                Class::User,
                MailSubmit { req, id, to, sealed }.encode(),
                ReqKind::MailSubmit.deadline(),
            ),
            Request::MailFetch { device, after } => (
                ReqKind::MailFetch,
                Class::User,
                MailFetch { req, device, after }.encode(),
                ReqKind::MailFetch.deadline(),
            ),
            Request::MailAck { device, ids } => {
                (ReqKind::MailAck, Class::User, MailAck { req, device, ids }.encode(), ReqKind::MailAck.deadline())
            }
        };
        if kind == ReqKind::Keepalive {
            // The super node does not count keepalives, and a liveness answer must not
            // wait behind a fan-out.
            self.immediate.push_back(req);
        } else {
            self.queue[class as usize].push_back(req);
        }
        self.entries.insert(req, Entry { op, kind, class, body, timeout, sent: None, parts: Vec::new() });
        op
    }

    /// Whether the lane holds `req` back.
    fn lane_blocks(&self, req: u32, kind: ReqKind) -> bool {
        self.revision.in_lane(kind) && self.lane.is_some_and(|l| l != req)
    }

    /// The queued request to send next, by class, skipping what the lane holds back and
    /// what has completed meanwhile.
    fn next_sendable(&mut self) -> Option<(usize, usize)> {
        for c in 0..self.queue.len() {
            self.queue[c].retain(|r| self.entries.contains_key(r));
            let found = self.queue[c].iter().position(|r| !self.lane_blocks(*r, self.entries[r].kind));
            if let Some(i) = found {
                return Some((c, i));
            }
        }
        None
    }

    /// The next message to send now, if any: keepalives at once, the rest as the bucket
    /// and the lane allow. Call until None after every input.
    pub fn poll_send(&mut self, now: Instant, epoch: u32) -> Option<Outgoing> {
        if let Some(f) = self.fire.pop_front() {
            return Some(f);
        }
        let req = match self.immediate.pop_front() {
            Some(r) => r,
            None => {
                let (c, i) = self.next_sendable()?;
                if !self.bucket.take(now) {
                    return None;
                }
                self.queue[c].remove(i).expect("the position just found")
            }
        };
        let Some(e) = self.entries.get_mut(&req) else { return self.poll_send(now, epoch) };
        let legacy = match &mut e.sent {
            Some(s) => {
                s.last = now;
                s.queued_again = false;
                self.stats.resent += 1;
                s.legacy
            }
            None => {
                let deadline = now + e.timeout;
                let legacy = self.revision.in_lane(e.kind);
                e.sent =
                    Some(Sent { first: now, last: now, deadline, epoch, resends_done: 0, queued_again: false, legacy });
                legacy
            }
        };
        if legacy {
            self.lane = Some(req);
        }
        let body = match e.kind {
            ReqKind::Publish if !legacy => PublishReq { req, entry: e.body.clone() }.encode(),
            _ => e.body.clone(),
        };
        Some(Outgoing { kind: e.kind.message(legacy), body })
    }

    fn complete(&mut self, req: u32, result: OpResult) {
        if let Some(e) = self.entries.remove(&req) {
            self.completions.push_back((e.op, result));
        }
        if self.lane == Some(req) {
            self.lane = None;
        }
    }

    /// The request out under `req` if it is of `kind`.
    fn out(&self, req: u32, kind: ReqKind) -> bool {
        self.entries.get(&req).is_some_and(|e| e.kind == kind && e.sent.is_some())
    }

    /// An answer naming request `req`: it completes the request if one of kind `want` is out.
    fn answered(&mut self, kind: MessageKind, req: u32, want: ReqKind, answer: Answer) -> Matched {
        if !self.out(req, want) {
            return self.unmatched(kind, Some(req));
        }
        self.complete(req, Ok(answer));
        Matched::Request
    }

    fn unmatched(&mut self, kind: MessageKind, req: Option<u32>) -> Matched {
        self.stats.unmatched += 1;
        tracing::debug!(kind = kind.label(), ?req, "an answer to no pending request");
        Matched::Unmatched
    }

    fn malformed(&mut self, kind: MessageKind) -> Matched {
        self.stats.malformed += 1;
        tracing::debug!(kind = kind.label(), "a malformed answer");
        Matched::Unmatched
    }

    fn slow_down(&mut self, code: u16, now: Instant) {
        if code == ErrorCode::TooManyAttempts.code() {
            self.stats.slowed_down += 1;
            self.bucket.slow_down(now);
        }
    }

    /// The lane's request, when an id-less answer can be its. A request that went out
    /// before the revision was known keeps its place after: its answer may still come
    /// without an id.
    fn lane_holder(&self) -> Option<u32> {
        self.lane.filter(|r| self.entries.get(r).is_some_and(|e| e.sent.is_some()))
    }

    /// Whether `id` is a keepalive of this table's that is out.
    pub fn is_keepalive(&self, id: u64) -> bool {
        u32::try_from(id).is_ok_and(|r| self.out(r, ReqKind::Keepalive))
    }

    /// Matches one opened message from the super node to what waits for it.
    pub fn on_answer(&mut self, kind: MessageKind, body: &[u8], now: Instant) -> Matched {
        match kind {
            MessageKind::KeepaliveAck => {
                let Ok(o) = Observed::decode(body) else { return self.malformed(kind) };
                if o.id != 0 {
                    let Some(r) = u32::try_from(o.id).ok().filter(|r| self.out(*r, ReqKind::Keepalive)) else {
                        return self.unmatched(kind, None);
                    };
                    self.complete(r, Ok(Answer::Observed(o.addr)));
                    return Matched::Request;
                }
                if self.revision == Revision::Rev2 {
                    // We send no empty keepalive, so a revision-2 echo of 0 answers nothing.
                    return self.unmatched(kind, None);
                }
                // Revision 1 echoes no id: the answer serves every keepalive waiting now
                // (a periodic one's answer included).
                let waiting: Vec<u32> = self
                    .entries
                    .iter()
                    .filter(|(_, e)| e.kind == ReqKind::Keepalive && e.sent.is_some())
                    .map(|(r, _)| *r)
                    .collect();
                for r in waiting {
                    self.complete(r, Ok(Answer::Observed(o.addr)));
                }
                Matched::Request
            }
            MessageKind::PublishReply => {
                let Ok(p) = PublishReply::decode(body) else { return self.malformed(kind) };
                self.slow_down(p.ack.code, now);
                if !self.out(p.req, ReqKind::Publish) {
                    return self.unmatched(kind, Some(p.req));
                }
                self.complete(p.req, Ok(Answer::Published(p.ack)));
                Matched::Request
            }
            MessageKind::RequestError => {
                let Ok(e) = RequestErrorMsg::decode(body) else { return self.malformed(kind) };
                self.slow_down(e.error.code.code(), now);
                if e.req == 0 {
                    self.stats.errors_without_id += 1;
                    tracing::debug!(code = e.error.code.label(), detail = %e.error.detail, "a request error without an id");
                    return Matched::Unmatched;
                }
                let out = self.entries.get(&e.req).is_some_and(|x| x.sent.is_some());
                if !out {
                    return self.unmatched(kind, Some(e.req));
                }
                self.complete(e.req, Err(RequestError::Refused(e.error)));
                Matched::Request
            }
            MessageKind::PublishAck => {
                let Ok(ack) = PublishAck::decode(body) else { return self.malformed(kind) };
                self.slow_down(ack.code, now);
                match self.lane_holder() {
                    Some(r) if self.entries[&r].kind == ReqKind::Publish => {
                        self.complete(r, Ok(Answer::Published(ack)));
                        Matched::Request
                    }
                    _ => self.unmatched(kind, None),
                }
            }
            MessageKind::Error => {
                let Ok(e) = ErrorMsg::decode(body) else { return self.malformed(kind) };
                self.slow_down(e.code.code(), now);
                match self.lane_holder() {
                    Some(r) => {
                        self.complete(r, Err(RequestError::Refused(e)));
                        Matched::Request
                    }
                    None => self.unmatched(kind, None),
                }
            }
            MessageKind::FindReply => {
                let Ok(r) = FindReply::decode(body) else { return self.malformed(kind) };
                self.answered(kind, r.req, ReqKind::Find, Answer::Found(r))
            }
            MessageKind::SearchReply => {
                let Ok(r) = SearchReply::decode(body) else { return self.malformed(kind) };
                if !self.out(r.req, ReqKind::Search) {
                    return self.unmatched(kind, Some(r.req));
                }
                let e = self.entries.get_mut(&r.req).expect("checked just above");
                let total = usize::from(r.total);
                if e.parts.len() != total {
                    e.parts = vec![None; total];
                }
                if let Some(slot) = e.parts.get_mut(usize::from(r.index)) {
                    *slot = Some(r.entry);
                }
                if e.parts.iter().all(Option::is_some) {
                    let parts = std::mem::take(&mut e.parts).into_iter().flatten().collect();
                    self.complete(r.req, Ok(Answer::Searched(parts)));
                }
                Matched::Request
            }
            MessageKind::ForwardAck => {
                let Ok(a) = ForwardAck::decode(body) else { return self.malformed(kind) };
                self.slow_down(a.code, now);
                self.answered(kind, a.req, ReqKind::Forward, Answer::Forwarded(a))
            }
            MessageKind::RelayGrant => {
                let Ok(g) = RelayGrant::decode(body) else { return self.malformed(kind) };
                if self.out(g.req, ReqKind::RelayAllocate) {
                    self.complete(g.req, Ok(Answer::Granted(g)));
                    return Matched::Request;
                }
                let live = self.tombstones.iter().position(|(r, until)| *r == g.req && now < *until);
                let Some(i) = live else { return self.unmatched(kind, Some(g.req)) };
                self.tombstones.remove(i);
                if g.code == 0 {
                    // Nobody will use it; the relay should not keep it until it idles out.
                    let body = RelayRelease { session: g.session }.encode();
                    self.fire.push_back(Outgoing { kind: MessageKind::RelayRelease, body });
                    self.stats.late_grants_released += 1;
                }
                Matched::Released
            }
            MessageKind::MailSubmitReply => {
                let Ok(a) = MailSubmitReply::decode(body) else { return self.malformed(kind) };
                self.slow_down(a.code, now);
                self.answered(kind, a.req, ReqKind::MailSubmit, Answer::Mailed(a))
            }
            MessageKind::MailBatch => {
                let Ok(b) = MailBatch::decode(body) else { return self.malformed(kind) };
                self.slow_down(b.code, now);
                self.answered(kind, b.req, ReqKind::MailFetch, Answer::Mail(b))
            }
            MessageKind::MailAckReply => {
                let Ok(a) = MailAckReply::decode(body) else { return self.malformed(kind) };
                self.slow_down(a.code, now);
                self.answered(kind, a.req, ReqKind::MailAck, Answer::MailAcked(a))
            }
            _ => Matched::NotAnAnswer,
        }
    }

    /// Deadlines and resends at `now`. Returns what timed out, for the liveness check.
    pub fn on_timeout(&mut self, now: Instant) -> Vec<TimedOut> {
        self.tombstones.retain(|(_, until)| now < *until);
        let mut timed_out = Vec::new();
        let expired: Vec<u32> = self
            .entries
            .iter()
            .filter(|(_, e)| e.sent.as_ref().is_some_and(|s| now >= s.deadline))
            .map(|(r, _)| *r)
            .collect();
        for r in expired {
            let e = &self.entries[&r];
            let (kind, last_sent) = (e.kind, e.sent.as_ref().map_or(now, |s| s.last));
            timed_out.push(TimedOut { kind, last_sent });
            self.stats.timed_out += 1;
            if kind == ReqKind::RelayAllocate {
                if self.tombstones.len() >= TOMBSTONES_MAX {
                    self.tombstones.pop_front();
                }
                self.tombstones.push_back((r, now + TOMBSTONE_TTL));
            }
            self.complete(r, Err(RequestError::TimedOut(kind.label())));
        }
        if !self.reliable {
            for (r, e) in self.entries.iter_mut() {
                let Some(s) = e.sent.as_mut() else { continue };
                let Some(at) = e.kind.resends().get(s.resends_done).map(|d| s.first + *d) else { continue };
                if now >= at && !s.queued_again {
                    s.resends_done += 1;
                    s.queued_again = true;
                    // Ahead of its class: it has waited longest.
                    self.queue[e.class as usize].push_front(*r);
                }
            }
        }
        timed_out
    }

    /// The link ended: every request fails (a later step parks some for the next link).
    pub fn link_down(&mut self) {
        let all: Vec<u32> = self.entries.keys().copied().collect();
        for r in all {
            self.complete(r, Err(RequestError::LinkDown));
        }
        self.immediate.clear();
        self.queue.iter_mut().for_each(VecDeque::clear);
        self.fire.clear();
        self.lane = None;
    }

    /// The next finished request.
    pub fn poll_completion(&mut self) -> Option<(OpId, OpResult)> {
        self.completions.pop_front()
    }

    /// The link epoch a pending request went out on, if it went out.
    pub fn epoch_of(&self, op: OpId) -> Option<u32> {
        self.entries.values().find(|e| e.op == op).and_then(|e| e.sent.as_ref().map(|s| s.epoch))
    }

    /// The next instant something is due: a deadline, a resend, or the token the queue
    /// waits for.
    pub fn poll_timeout(&self) -> Option<Instant> {
        let timers = self.entries.values().filter_map(|e| e.sent.as_ref().map(|s| (e.kind, s))).flat_map(|(k, s)| {
            let resend = (!self.reliable && !s.queued_again).then(|| k.resends().get(s.resends_done)).flatten();
            std::iter::once(s.deadline).chain(resend.map(|d| s.first + *d))
        });
        let sendable =
            self.queue.iter().flatten().any(|r| self.entries.get(r).is_some_and(|e| !self.lane_blocks(*r, e.kind)));
        let token = if !self.immediate.is_empty() || !self.fire.is_empty() {
            Some(self.bucket.at)
        } else {
            sendable.then(|| self.bucket.ready_at())
        };
        timers.chain(token).min()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A generator that starts the id counter where a test wants it.
    struct Start(u32);

    impl rand::TryRng for Start {
        type Error = std::convert::Infallible;
        fn try_next_u32(&mut self) -> Result<u32, Self::Error> {
            Ok(self.0)
        }
        fn try_next_u64(&mut self) -> Result<u64, Self::Error> {
            Ok(u64::from(self.0))
        }
        fn try_fill_bytes(&mut self, dst: &mut [u8]) -> Result<(), Self::Error> {
            dst.fill(0);
            Ok(())
        }
    }

    fn find_req(out: &Outgoing) -> u32 {
        Find::decode(&out.body).unwrap().req
    }

    #[test]
    fn ids_start_where_the_generator_says_and_skip_zero() {
        let now = Instant::now();
        let mut p = Pending::new(&mut Start(u32::MAX), now);
        p.set_revision(Revision::Rev2);
        for user in ["a", "b", "c"] {
            p.submit(Request::Find { user: user.into() });
        }
        let reqs: Vec<u32> = std::iter::from_fn(|| p.poll_send(now, 1)).map(|o| find_req(&o)).collect();
        assert_eq!(reqs, vec![u32::MAX, 1, 2]);
    }

    #[test]
    fn the_bucket_gives_a_burst_then_one_token_per_rate_interval() {
        let t0 = Instant::now();
        let mut b = Bucket::new(t0);
        let burst = (0..100).take_while(|_| b.take(t0)).count();
        assert_eq!(burst, SEND_BURST as usize);
        let next = b.ready_at();
        assert_eq!(next - t0, Bucket::COST);
        assert!(!b.take(next - Duration::from_nanos(1)));
        assert!(b.take(next));
        // Slowed, a token takes twice as long; the slow spell ends after a second.
        b.slow_down(next);
        assert_eq!(b.ready_at() - next, Bucket::COST * 2);
        let late = next + SLOW_DOWN;
        b.refill(late);
        let after = b.ready_at();
        assert!(after <= late, "a second slowed earns {SEND_RATE_PER_SEC}/2 tokens: {:?}", after - late);
    }

    #[test]
    fn beyond_the_bound_a_request_fails_at_once() {
        let now = Instant::now();
        let mut p = Pending::new(&mut Start(1), now);
        let ops: Vec<OpId> = (0..=PENDING_MAX).map(|i| p.submit(Request::Find { user: format!("u{i}") })).collect();
        assert_eq!(p.len(), PENDING_MAX);
        assert_eq!(p.poll_completion(), Some((ops[PENDING_MAX], Err(RequestError::Overloaded))));
        assert_eq!(p.poll_completion(), None);
        // The lane lets one Find out; the rest wait, and none is lost.
        assert!(p.poll_send(now, 1).is_some());
        assert_eq!(p.poll_send(now, 1), None);
        p.link_down();
        assert_eq!(std::iter::from_fn(|| p.poll_completion()).count(), PENDING_MAX);
        assert!(p.is_empty());
        assert_eq!(p.poll_timeout(), None);
    }

    #[test]
    fn the_store_requests_are_answered_by_id_and_sent_again_on_a_lossy_link() {
        let t0 = Instant::now();
        let mut p = Pending::new(&mut Start(40), t0);
        p.set_revision(Revision::Rev2);
        let submit = p.submit(Request::MailSubmit { id: [1; 16], to: "bob".into(), sealed: vec![7; 100] });
        let fetch = p.submit(Request::MailFetch { device: [2; 8], after: None });
        let ack = p.submit(Request::MailAck { device: [2; 8], ids: vec![[1; 16]] });
        let sent: Vec<Outgoing> = std::iter::from_fn(|| p.poll_send(t0, 1)).collect();
        let kinds: Vec<MessageKind> = sent.iter().map(|o| o.kind).collect();
        assert_eq!(kinds, [MessageKind::MailSubmit, MessageKind::MailFetch, MessageKind::MailAck]);
        let s = MailSubmit::decode(&sent[0].body).unwrap();
        assert_eq!((s.req, s.id, s.to.as_str()), (40, [1; 16], "bob"));
        // Not answered within a second: sent again, same id (the store keeps one copy).
        let later = t0 + Duration::from_secs(1);
        p.on_timeout(later);
        let again: Vec<MessageKind> = std::iter::from_fn(|| p.poll_send(later, 1)).map(|o| o.kind).collect();
        assert_eq!(again.len(), 3, "{again:?}");
        // Answers by id, in any order; a reply of the wrong kind for an id matches nothing.
        let wrong = MailAckReply { req: 40, code: 0 }.encode();
        assert_eq!(p.on_answer(MessageKind::MailAckReply, &wrong, later), Matched::Unmatched);
        let batch = MailBatch { req: 41, code: 0, messages: vec![([3; 16], vec![9; 10])], more: false };
        assert_eq!(p.on_answer(MessageKind::MailBatch, &batch.encode(), later), Matched::Request);
        let reply = MailSubmitReply { req: 40, code: 0, replicas: 2, pushed: 1 };
        assert_eq!(p.on_answer(MessageKind::MailSubmitReply, &reply.encode(), later), Matched::Request);
        let acked = MailAckReply { req: 42, code: 0 };
        assert_eq!(p.on_answer(MessageKind::MailAckReply, &acked.encode(), later), Matched::Request);
        let done: Vec<(OpId, OpResult)> = std::iter::from_fn(|| p.poll_completion()).collect();
        assert_eq!(
            done,
            [
                (fetch, Ok(Answer::Mail(batch))),
                (submit, Ok(Answer::Mailed(reply))),
                (ack, Ok(Answer::MailAcked(acked)))
            ]
        );
        assert!(p.is_empty());
    }
}
