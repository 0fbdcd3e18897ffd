//! The host as one sans-IO machine (see `docs/host-core.md`). This first part is the
//! link to a super node and the requests made over it; the ladder, buddies and calls
//! join it step by step.
//!
//! # The driving contract
//!
//! The core has no socket, no clock, no OS randomness and no `.await`. Time comes in as
//! [`Now`] with every input, randomness as a generator given at construction. Its
//! driver (the shell, or a test on virtual time) does exactly this:
//!
//! 1. Feed one input: [`CoreLink::handle_datagram`], [`CoreLink::handle_tcp`],
//!    [`CoreLink::handle_timeout`], or a command ([`CoreLink::find`] and the others,
//!    each returning the [`OpId`] its result will come back under).
//! 2. Drain every output until it yields `None`: [`CoreLink::poll_transmit`],
//!    [`CoreLink::poll_effect`], [`CoreLink::poll_event`], [`CoreLink::poll_completion`].
//! 3. Sleep until [`CoreLink::poll_timeout`] or the next input, whichever is first, and
//!    call `handle_timeout` when the former comes.
//!
//! Nothing waits in between: a request is an entry in a table, its answer an input.
//!
//! # Revisions
//!
//! The link's first sealed frame is a keepalive with an id. A super node that echoes the
//! id speaks revision 2 of the message layer, and every answer then names its request.
//! An echo of 0, or no echo within [`REVISION_WAIT`], means revision 1: requests whose
//! answers may come without an id go one at a time (the legacy lane, see [`pending`]).
//! An echo of one of our ids later still moves the link to revision 2; nothing moves
//! it back, since a revision-2 super node never echoes 0 to a keepalive with an id.

pub mod buddies;
pub mod calls;
pub mod chat;
pub mod files;
pub mod groups;
pub mod host;
pub mod io;
pub mod ladder;
pub mod link;
pub mod pending;

pub use self::host::{CallAudio, Command, Done, HostConfig, HostCore, HostError, HostResult};
use self::io::{ConnId, Dest, Effect, EffectId, TcpEvent, Transmit};
use self::link::{Arrival, Ended, SnLink};
use self::pending::{Class, OpId, OpResult, Pending, PendingStats, Request, Revision};
use crate::host::handshake::ClientSession;
use crate::wire::MessageKind;
use crate::wire::message::{CallStats, Observed, RelayRelease};
use std::collections::VecDeque;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

/// The time of one input: a monotonic instant for timers, and the wall clock (Unix
/// milliseconds) for what is signed or compared with other hosts. Both are given,
/// never read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Now {
    /// For deadlines and pacing.
    pub mono: Instant,
    /// For signatures and timestamps.
    pub unix_ms: u64,
}

/// Something the application hears about.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CoreEvent {
    /// A notice from another host, through the super node (the body, unopened).
    Notice(Vec<u8>),
    /// The link ended; every request on it failed with `LinkDown`.
    LinkEnded {
        /// Which link.
        epoch: u32,
        /// Why.
        why: Ended,
    },
}

/// Counters of what arrived and did not belong.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CoreStats {
    /// Datagrams or TCP events from someone other than the link's super node.
    pub foreign: u64,
    /// Frames from the super node that did not open (forged, replayed, malformed).
    pub rejected: u64,
    /// Notices dropped because nobody read the events.
    pub events_dropped: u64,
    /// The request table's counters.
    pub pending: PendingStats,
}

/// Most events kept unread; beyond, the newest notices are dropped (presence repeats).
pub const EVENTS_QUEUED_MAX: usize = 1024;

/// How long the first keepalive's echo is awaited before the super node is taken for
/// revision 1.
pub const REVISION_WAIT: Duration = Duration::from_secs(1);

/// The link and its requests, driven as described in the module's documentation.
#[derive(Debug)]
pub struct CoreLink {
    link: SnLink,
    pending: Pending,
    transmits: VecDeque<Transmit>,
    events: VecDeque<CoreEvent>,
    effects: VecDeque<(EffectId, Effect)>,
    next_effect: u64,
    stats: CoreStats,
    /// While the revision is unknown: when to settle for revision 1.
    revision_by: Instant,
}

impl CoreLink {
    /// The core over an established session at `now`, sending to `dest` (the super
    /// node's UDP address on port P, or the TCP connection the handshake ran on).
    /// Its first transmit is the keepalive that asks the super node's revision.
    pub fn new(session: ClientSession, dest: Dest, now: Now, rng: &mut impl rand::Rng) -> Self {
        Self::with_epoch(session, dest, 1, now, rng)
    }

    /// Like [`CoreLink::new`], for the `epoch`th link of a host (each new super node
    /// after a failover gets the next), so nothing of an older link is taken for this
    /// one's.
    pub fn with_epoch(session: ClientSession, dest: Dest, epoch: u32, now: Now, rng: &mut impl rand::Rng) -> Self {
        let mut pending = Pending::new(rng, now.mono);
        pending.set_reliable(matches!(dest, Dest::Tcp(_)));
        let tag = std::iter::repeat_with(|| rng.next_u32()).find(|t| *t != 0).expect("an endless generator");
        let mut core = Self {
            link: SnLink::new(session, dest, epoch, now.mono, tag),
            pending,
            transmits: VecDeque::new(),
            events: VecDeque::new(),
            effects: VecDeque::new(),
            next_effect: 1,
            stats: CoreStats::default(),
            revision_by: now.mono + REVISION_WAIT,
        };
        core.link.hello(&mut core.transmits);
        core
    }

    /// Moves the core onto a new session (a failover's, or a reconnect's) at `now`:
    /// the link is the next epoch's, and the request table (its id counter, its
    /// tombstones, its counters) carries over. Whatever was pending on the old link has
    /// already failed with `LinkDown` when it ended; if it had not ended, it is closed
    /// here first. The new link's first transmit asks its revision again.
    pub fn replace(&mut self, session: ClientSession, dest: Dest, now: Now, rng: &mut impl rand::Rng) {
        if self.link.close(Ended::ConnectionClosed) {
            self.link_ended(Ended::ConnectionClosed);
        }
        let tag = std::iter::repeat_with(|| rng.next_u32()).find(|t| *t != 0).expect("an endless generator");
        let in_call = self.link.in_call();
        self.link = SnLink::new(session, dest, self.link.epoch() + 1, now.mono, tag);
        self.link.set_in_call(in_call, now.mono);
        self.pending.set_revision(Revision::Unknown);
        self.pending.set_reliable(matches!(dest, Dest::Tcp(_)));
        self.revision_by = now.mono + REVISION_WAIT;
        self.link.hello(&mut self.transmits);
        self.pump(now);
    }

    /// Seals a message that has no answer (`RelayRelease`, `CallStats`) on the link as
    /// it is; dropped when the link is over, as such messages are on a dead link.
    pub fn send_sealed(&mut self, kind: MessageKind, body: &[u8]) {
        self.transmits.extend(self.link.seal(kind, body));
    }

    /// The link (its state, its super node, when it was last heard).
    pub fn link(&self) -> &SnLink {
        &self.link
    }

    /// Counters.
    pub fn stats(&self) -> CoreStats {
        CoreStats { pending: self.pending.stats(), ..self.stats }
    }

    /// What the super node's message-layer revision is now known to be.
    pub fn set_revision(&mut self, revision: Revision) {
        self.pending.set_revision(revision);
    }

    /// The super node's message-layer revision, as far as the core knows.
    pub fn revision(&self) -> Revision {
        self.pending.revision()
    }

    fn learn_revision(&mut self, revision: Revision) {
        let known = self.pending.revision();
        let moves = match revision {
            Revision::Rev2 => known != Revision::Rev2,
            Revision::Rev1 => known == Revision::Unknown,
            Revision::Unknown => false,
        };
        if moves {
            tracing::debug!(supernode = %self.link.supernode(), ?revision, "the super node's revision");
            self.pending.set_revision(revision);
        }
    }

    /// A datagram on port P.
    pub fn handle_datagram(&mut self, now: Now, from: SocketAddr, bytes: &[u8]) {
        if self.link.dest() != Dest::Udp(from) {
            self.stats.foreign += 1;
            return;
        }
        self.on_frame(now, bytes);
        self.pump(now);
    }

    /// Something happened on a TCP connection.
    pub fn handle_tcp(&mut self, now: Now, conn: ConnId, event: TcpEvent) {
        if self.link.dest() != Dest::Tcp(conn) {
            self.stats.foreign += 1;
            return;
        }
        match event {
            TcpEvent::Frame(bytes) => self.on_frame(now, &bytes),
            TcpEvent::Closed | TcpEvent::ConnectFailed(_) => {
                if self.link.close(Ended::ConnectionClosed) {
                    self.link_ended(Ended::ConnectionClosed);
                }
            }
            TcpEvent::Connected { .. } => {}
        }
        self.pump(now);
    }

    /// Timers: the link's keepalive and liveness, then request deadlines and resends,
    /// then the send queue.
    pub fn handle_timeout(&mut self, now: Now) {
        if self.pending.revision() == Revision::Unknown && now.mono >= self.revision_by {
            self.learn_revision(Revision::Rev1);
        }
        if let Some(why) = self.link.on_timeout(now.mono, &mut self.transmits) {
            self.link_ended(why);
        }
        for t in self.pending.on_timeout(now.mono) {
            if self.link.suspect(t.last_sent, now.mono, &mut self.transmits) {
                tracing::debug!(kind = t.kind.label(), "a request went unanswered: probing the super node");
            }
        }
        self.pump(now);
    }

    /// Makes any request; its result comes back under the returned id.
    pub fn request(&mut self, now: Now, request: Request) -> OpId {
        self.submit(now, request)
    }

    /// Whether a call is under way: the link keeps a quicker pace then (see
    /// [`SnLink::set_in_call`]).
    pub fn set_in_call(&mut self, now: Now, on: bool) {
        self.link.set_in_call(on, now.mono);
    }

    /// A call's media went silent: the super node is asked at once, and the link ends
    /// if it does not answer within 1.5 s (see [`SnLink::check`]).
    pub fn check(&mut self, now: Now) {
        if self.link.check(now.mono, &mut self.transmits) {
            tracing::debug!(supernode = %self.link.supernode(), "a call's media went silent: checking the super node");
        }
    }

    /// Tells the super node how a call went (no answer comes).
    pub fn call_stats(&mut self, stats: &CallStats) {
        self.transmits.extend(self.link.seal(MessageKind::CallStats, &stats.encode()));
    }

    /// A keepalive round trip; completes with the address the super node sees.
    pub fn keepalive(&mut self, now: Now, timeout: Duration) -> OpId {
        self.submit(now, Request::Keepalive { timeout })
    }

    /// Publishes our signed index entry (encoded).
    pub fn publish(&mut self, now: Now, entry: Vec<u8>) -> OpId {
        self.submit(now, Request::Publish { entry })
    }

    /// Looks a user up.
    pub fn find(&mut self, now: Now, user: &str) -> OpId {
        self.submit(now, Request::Find { user: user.to_owned() })
    }

    /// Searches profiles.
    pub fn search(&mut self, now: Now, words: &str, limit: u8) -> OpId {
        self.submit(now, Request::Search { words: words.to_owned(), limit })
    }

    /// Carries a notice to `to`'s host (`via`: their super node, if known).
    pub fn forward(&mut self, now: Now, to: &str, via: &str, body: Vec<u8>, class: Class) -> OpId {
        self.submit(now, Request::Forward { to: to.to_owned(), via: via.to_owned(), body, class })
    }

    /// Opens a relay session for a call with the holder of `callee` (an encoded credential).
    pub fn allocate_relay(&mut self, now: Now, callee: Vec<u8>) -> OpId {
        self.submit(now, Request::RelayAllocate { callee })
    }

    /// Frees a relay session (no answer comes).
    pub fn release_relay(&mut self, session: u32) {
        let body = RelayRelease { session }.encode();
        self.transmits.extend(self.link.seal(MessageKind::RelayRelease, &body));
    }

    /// Says goodbye: a Bye, then the link is over (its connection closed if TCP).
    pub fn bye(&mut self) {
        if self.link.is_open() {
            self.link.bye(&mut self.transmits);
            self.link_ended(Ended::ByeSent);
        }
    }

    /// Submits any request (the store's among them); its completion comes by id.
    pub fn submit(&mut self, now: Now, request: Request) -> OpId {
        let op = self.pending.submit(request);
        if !self.link.is_open() {
            self.pending.link_down();
        }
        self.pump(now);
        op
    }

    fn on_frame(&mut self, now: Now, bytes: &[u8]) {
        match self.link.open(bytes, now.mono) {
            Arrival::Message(MessageKind::Notice, body) => {
                if self.events.len() >= EVENTS_QUEUED_MAX {
                    self.stats.events_dropped += 1;
                } else {
                    self.events.push_back(CoreEvent::Notice(body));
                }
            }
            Arrival::Message(MessageKind::KeepaliveAck, body) => self.on_keepalive_ack(now, &body),
            Arrival::Message(kind, body) => {
                self.pending.on_answer(kind, &body, now.mono);
            }
            Arrival::Ended(why) => self.link_ended(why),
            Arrival::Rejected(e) => {
                self.stats.rejected += 1;
                tracing::debug!(reason = e.reason(), "a frame from the super node was rejected");
            }
        }
    }

    /// A keepalive's echo: the revision first, then whose keepalive it answers.
    fn on_keepalive_ack(&mut self, now: Now, body: &[u8]) {
        let Ok(o) = Observed::decode(body) else {
            // The table counts it as malformed.
            self.pending.on_answer(MessageKind::KeepaliveAck, body, now.mono);
            return;
        };
        let own = o.id != 0 && self.link.is_own_keepalive(o.id);
        match o.id {
            0 => self.learn_revision(Revision::Rev1),
            id if own || self.pending.is_keepalive(id) => self.learn_revision(Revision::Rev2),
            _ => {}
        }
        // The link's own keepalive needs nothing more: being heard is what it was for.
        if !own {
            self.pending.on_answer(MessageKind::KeepaliveAck, body, now.mono);
        }
    }

    fn link_ended(&mut self, why: Ended) {
        tracing::info!(supernode = %self.link.supernode(), %why, "the link to the super node ended");
        self.pending.link_down();
        // A link event is never dropped: it is one per link.
        self.events.push_back(CoreEvent::LinkEnded { epoch: self.link.epoch(), why });
        if let Dest::Tcp(conn) = self.link.dest()
            && why != Ended::ConnectionClosed
        {
            let id = EffectId(self.next_effect);
            self.next_effect += 1;
            self.effects.push_back((id, Effect::TcpClose { conn }));
        }
    }

    /// Moves whatever the table lets go now onto the wire.
    fn pump(&mut self, now: Now) {
        let epoch = self.link.epoch();
        while let Some(out) = self.pending.poll_send(now.mono, epoch) {
            self.transmits.extend(self.link.seal(out.kind, &out.body));
        }
    }

    /// The next datagram or frame to send.
    pub fn poll_transmit(&mut self) -> Option<Transmit> {
        self.transmits.pop_front()
    }

    /// The next effect for the shell.
    pub fn poll_effect(&mut self) -> Option<(EffectId, Effect)> {
        self.effects.pop_front()
    }

    /// The next event for the application.
    pub fn poll_event(&mut self) -> Option<CoreEvent> {
        self.events.pop_front()
    }

    /// The next finished request.
    pub fn poll_completion(&mut self) -> Option<(OpId, OpResult)> {
        self.pending.poll_completion()
    }

    /// When `handle_timeout` next has work; None when nothing is scheduled.
    pub fn poll_timeout(&self) -> Option<Instant> {
        let revision =
            (self.link.is_open() && self.pending.revision() == Revision::Unknown).then_some(self.revision_by);
        [self.link.poll_timeout(), self.pending.poll_timeout(), revision].into_iter().flatten().min()
    }
}

#[cfg(test)]
pub mod sim;
#[cfg(test)]
pub(crate) mod tests;
