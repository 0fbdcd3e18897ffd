//! The link to one super node over an established session, as plain state: it seals
//! what goes out, opens what comes in, sends a keepalive every `keepalive_secs`, and
//! decides when the super node is gone. Inputs are frames and `now`; outputs are
//! [`Transmit`]s. Nothing here reads a clock or touches a socket.
//!
//! Its pace and silence limit are [`crate::host::liveness`]'s: the Welcome's period at
//! rest, a quicker one while a call is under way ([`SnLink::set_in_call`]), and a check
//! on demand when a call's media goes silent ([`SnLink::check`]).
//!
//! Every keepalive the link sends carries an id: its first sealed frame is one, so the
//! echo tells a revision-2 super node (which echoes the id) from a revision-1 one (which
//! echoes 0). The link's ids are `tag << 32 | n` with a non-zero random tag, so they
//! never meet the request table's keepalive ids, which fit in 32 bits.

use super::io::{Dest, Transmit};
use crate::host::handshake::ClientSession;
use crate::host::liveness::{Gone, Liveness, Verdict};
use crate::wire::MessageKind;
use crate::wire::frame::FrameError;
use crate::wire::message::Keepalive;
use std::collections::VecDeque;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

/// How long a suspect link has to answer its liveness keepalive.
pub const LIVENESS_ANSWER_MAX: Duration = Duration::from_secs(1);

/// Why a link ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Ended {
    /// Nothing authenticated arrived for `silence_max` (twice the keepalive, plus 5 s).
    #[error("the super node went silent")]
    Silent,
    /// A request timed out with nothing heard since it was sent, and the keepalive sent
    /// at once went unanswered too.
    #[error("the super node did not answer a liveness keepalive")]
    NoAnswer,
    /// The super node said Bye.
    #[error("the super node ended the session")]
    ByeFromSupernode,
    /// We said Bye.
    #[error("we ended the session")]
    ByeSent,
    /// The TCP connection carrying the link closed.
    #[error("the connection to the super node closed")]
    ConnectionClosed,
}

/// Where the link stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LinkState {
    /// Heard from recently enough.
    Up,
    /// A request went unanswered with nothing heard since: a keepalive went out at
    /// `probed`, and anything authenticated before `answer_by` clears the doubt.
    Suspect {
        /// When the liveness keepalive went out.
        probed: Instant,
        /// When the link is declared dead without an answer.
        answer_by: Instant,
    },
    /// Over; nothing more is sent or accepted.
    Ended(Ended),
}

/// What one arriving frame was.
#[derive(Debug, PartialEq, Eq)]
pub enum Arrival {
    /// An authenticated message for the core (anything but Bye).
    Message(MessageKind, Vec<u8>),
    /// The super node said Bye: the link is over.
    Ended(Ended),
    /// Not an authentic frame of this session, or the link is over: dropped.
    Rejected(FrameError),
}

/// The link to one super node.
#[derive(Debug)]
pub struct SnLink {
    session: ClientSession,
    dest: Dest,
    epoch: u32,
    /// The keepalive pace and the silence limit.
    liveness: Liveness,
    heard: Instant,
    state: LinkState,
    keepalive_tag: u32,
    keepalives_sent: u32,
}

impl SnLink {
    /// A link over `session`, established at `now` (the Welcome was just heard), sending
    /// to `dest`; `epoch` numbers the links of one core, so nothing from an older one is
    /// taken for this one's. `keepalive_tag` (random, non-zero) marks its keepalive ids.
    pub fn new(session: ClientSession, dest: Dest, epoch: u32, now: Instant, keepalive_tag: u32) -> Self {
        assert_ne!(keepalive_tag, 0, "a zero tag would give ids the request table uses");
        let keepalive = Duration::from_secs(u64::from(session.welcome.keepalive_secs.max(1)));
        Self {
            session,
            dest,
            epoch,
            liveness: Liveness::new(keepalive, now),
            heard: now,
            state: LinkState::Up,
            keepalive_tag,
            keepalives_sent: 0,
        }
    }

    /// The first sealed frame of the link: a keepalive whose echo tells the super
    /// node's revision.
    pub fn hello(&mut self, out: &mut VecDeque<Transmit>) {
        self.send_keepalive(out);
    }

    /// Whether `id` is one of this link's keepalive ids.
    pub fn is_own_keepalive(&self, id: u64) -> bool {
        id >> 32 == u64::from(self.keepalive_tag)
    }

    fn send_keepalive(&mut self, out: &mut VecDeque<Transmit>) {
        let id = u64::from(self.keepalive_tag) << 32 | u64::from(self.keepalives_sent);
        self.keepalives_sent = self.keepalives_sent.wrapping_add(1);
        out.extend(self.seal(MessageKind::Keepalive, &Keepalive { id }.encode()));
    }

    /// The super node's address (where its datagrams come from).
    pub fn supernode(&self) -> SocketAddr {
        self.session.addr
    }

    /// Where the link's frames go.
    pub fn dest(&self) -> Dest {
        self.dest
    }

    /// Which link of the core this is.
    pub fn epoch(&self) -> u32 {
        self.epoch
    }

    /// The session's established state (credential, Welcome).
    pub fn session(&self) -> &ClientSession {
        &self.session
    }

    /// Where the link stands.
    pub fn state(&self) -> LinkState {
        self.state
    }

    /// Whether frames still go out.
    pub fn is_open(&self) -> bool {
        !matches!(self.state, LinkState::Ended(_))
    }

    /// When an authenticated frame last arrived.
    pub fn heard(&self) -> Instant {
        self.heard
    }

    /// How long without anything authenticated before the link is dead (shorter while
    /// a call is under way).
    pub fn silence_max(&self) -> Duration {
        self.liveness.silence_max()
    }

    /// Whether a call is under way: keepalives every second then, and the super node
    /// gone after 3.5 s of silence, since the call's signals reach us only through it.
    pub fn set_in_call(&mut self, on: bool, now: Instant) {
        if self.is_open() {
            self.liveness.set_in_call(on, now);
        }
    }

    /// Whether the call pace is on.
    pub fn in_call(&self) -> bool {
        self.liveness.in_call()
    }

    /// A call's media went silent: asks the super node at once (a keepalive now and
    /// every 300 ms), and the link ends if nothing authenticated arrives within 1.5 s.
    /// True if a check started (false while one is already under way).
    pub fn check(&mut self, now: Instant, out: &mut VecDeque<Transmit>) -> bool {
        if !self.is_open() || !self.liveness.check(now) {
            return false;
        }
        self.send_keepalive(out);
        true
    }

    /// Seals one message; None once the link is over.
    pub fn seal(&mut self, kind: MessageKind, body: &[u8]) -> Option<Transmit> {
        self.is_open().then(|| Transmit { dest: self.dest, bytes: self.session.seal(kind, body) })
    }

    /// Opens one frame from the super node. Anything authenticated proves it alive.
    pub fn open(&mut self, bytes: &[u8], now: Instant) -> Arrival {
        if !self.is_open() {
            return Arrival::Rejected(FrameError::Unauthenticated);
        }
        let (kind, body) = match self.session.open(bytes) {
            Ok(m) => m,
            Err(e) => return Arrival::Rejected(e),
        };
        self.heard = self.heard.max(now);
        self.liveness.heard(now);
        self.state = LinkState::Up;
        if kind == MessageKind::Bye {
            self.state = LinkState::Ended(Ended::ByeFromSupernode);
            return Arrival::Ended(Ended::ByeFromSupernode);
        }
        Arrival::Message(kind, body)
    }

    /// A request sent at `sent_at` went unanswered. If nothing was heard since, the
    /// super node may be gone: a keepalive goes out at once, and the link has
    /// [`LIVENESS_ANSWER_MAX`] to answer. True if the link became suspect.
    pub fn suspect(&mut self, sent_at: Instant, now: Instant, out: &mut VecDeque<Transmit>) -> bool {
        if self.state != LinkState::Up || self.heard > sent_at {
            return false;
        }
        self.send_keepalive(out);
        self.state = LinkState::Suspect { probed: now, answer_by: now + LIVENESS_ANSWER_MAX };
        true
    }

    /// The link's timers at `now`: death by silence or by an unanswered liveness
    /// keepalive, else the periodic keepalive. Returns why the link ended, if it did.
    pub fn on_timeout(&mut self, now: Instant, out: &mut VecDeque<Transmit>) -> Option<Ended> {
        if matches!(self.state, LinkState::Ended(_)) {
            return None;
        }
        let ended = match self.liveness.on_wake(now) {
            Verdict::Gone(Gone::Silent) => Ended::Silent,
            Verdict::Gone(_) => Ended::NoAnswer,
            _ if matches!(self.state, LinkState::Suspect { answer_by, .. } if now >= answer_by) => Ended::NoAnswer,
            Verdict::Keepalive => {
                // A late step sends one keepalive, not one per missed period.
                self.send_keepalive(out);
                return None;
            }
            Verdict::Wait => return None,
        };
        self.state = LinkState::Ended(ended);
        Some(ended)
    }

    /// Says goodbye: the Bye frame goes out and the link is over.
    pub fn bye(&mut self, out: &mut VecDeque<Transmit>) {
        if let Some(t) = self.seal(MessageKind::Bye, &crate::wire::message::Bye { reason: 0 }.encode()) {
            out.push_back(t);
        }
        self.state = LinkState::Ended(Ended::ByeSent);
    }

    /// The connection under the link is gone (TCP closed): the link is over.
    pub fn close(&mut self, why: Ended) -> bool {
        let was_open = self.is_open();
        if was_open {
            self.state = LinkState::Ended(why);
        }
        was_open
    }

    /// The next instant `on_timeout` has work, if any.
    pub fn poll_timeout(&self) -> Option<Instant> {
        let answer_by = match self.state {
            LinkState::Ended(_) => return None,
            LinkState::Suspect { answer_by, .. } => Some(answer_by),
            LinkState::Up => None,
        };
        let t = self.liveness.next_wake();
        Some(answer_by.map_or(t, |a| a.min(t)))
    }
}
