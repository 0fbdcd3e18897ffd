//! The call state machine, as plain logic: events in (local intent, remote signals, the
//! media path coming up, the clock), actions out (what to send, what to start, what to
//! tell the user). It owns no socket and no timer; the driver calls [`Call::tick`].
//!
//! ```text
//! caller: Inviting ──ringing──▶ Ringing ──accept──▶ Connecting ──media up──▶ Connected
//! callee:            (invite) ▶ Ringing ──accept──▶ Connecting ──media up──▶ Connected
//! any state ──decline / busy / cancel / hang-up / timeout──▶ Ended(reason)
//! ```

use serde::{Deserialize, Serialize};

/// Which side of the call this is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Role {
    /// We called.
    Caller,
    /// We were called.
    Callee,
}

/// How media flows, as shown to the user and counted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Path {
    /// Straight between the hosts' addresses.
    Direct,
    /// Between the hosts' public addresses through NATs, after hole punching.
    Punched,
    /// Through a super-node relay over UDP.
    RelayedUdp,
    /// Through a super-node relay over TCP (UDP blocked).
    RelayedTcp,
}

impl Path {
    /// The metric label.
    pub fn label(self) -> &'static str {
        match self {
            Self::Direct => "direct",
            Self::Punched => "punched",
            Self::RelayedUdp => "relayed_udp",
            Self::RelayedTcp => "relayed_tcp",
        }
    }
}

/// Why a call ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EndReason {
    /// One side hung up after the call connected.
    HungUp,
    /// The callee declined.
    Declined,
    /// The callee is in another call.
    Busy,
    /// The caller gave up before an answer.
    Cancelled,
    /// The callee never answered (ringing timed out).
    NoAnswer,
    /// No sign of the callee at all (the invite timed out).
    Unreachable,
    /// Accepted, but no media path came up in time.
    MediaFailed,
    /// The other side went silent mid-call.
    Lost,
}

impl EndReason {
    /// The label for JSON and metrics.
    pub fn label(self) -> &'static str {
        match self {
            Self::HungUp => "hung_up",
            Self::Declined => "declined",
            Self::Busy => "busy",
            Self::Cancelled => "cancelled",
            Self::NoAnswer => "no_answer",
            Self::Unreachable => "unreachable",
            Self::MediaFailed => "media_failed",
            Self::Lost => "lost",
        }
    }
}

/// Where a call is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    /// Caller: the invite is out, no sign of the callee yet.
    Inviting,
    /// The callee's host is ringing.
    Ringing,
    /// Accepted; the media path is being found.
    Connecting,
    /// Media flows on this path.
    Connected(Path),
    /// Over.
    Ended(EndReason),
}

/// A signal between the two hosts (carried end-to-end sealed; see `call::invite`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Signal {
    /// Callee → caller: the invite arrived and checked out; the user is being asked.
    Ringing,
    /// Callee → caller: the user accepted.
    Accept,
    /// Callee → caller: the user declined.
    Decline,
    /// Callee → caller: in another call.
    Busy,
    /// Caller → callee: giving up before an answer.
    Cancel,
    /// Either way, connected: the call is over.
    HangUp,
    /// Caller → callee: media may go through this relay leg (the callee's token, sealed
    /// to it by the relay's super node; the caller keeps the other). Path business: the
    /// state machine ignores it.
    Relay {
        /// The relay's UDP address.
        relay: std::net::SocketAddr,
        /// The relay session.
        session: u32,
        /// The callee's leg token, sealed ([`crate::relay::handoff`]).
        leg: Vec<u8>,
    },
    /// Callee → caller: the user accepted, and here is where it receives media (its
    /// reply withheld that from a caller who is not an authorized buddy). The caller
    /// takes it as [`Signal::Accept`].
    AcceptAt {
        /// Where the callee receives media.
        candidates: Vec<crate::call::invite::Candidate>,
    },
    // New variants go last: a signal is encoded by its variant's index.
    /// Either way, once media starts: the sender's NAT kind, so that a cone and a
    /// symmetric NAT know to punch with the birthday technique (`call::birthday`).
    /// Path business: the state machine ignores it.
    Nat {
        /// The sender's NAT kind.
        kind: crate::nat::NatKind,
    },
    /// Either way: the sender's super node failed and it reached another; signals go
    /// there from now on (they travel through the receiver's super node, which the
    /// sender's index entry names only once it is republished). Path business: the
    /// state machine ignores it.
    Moved {
        /// The name of the sender's super node now (its credential's subject).
        supernode: String,
    },
}

/// What the user (or the application) wants.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Intent {
    /// Callee: take the call.
    Accept,
    /// Callee: refuse it.
    Decline,
    /// Either side: end it (cancel before an answer, hang up after).
    End,
}

/// What the driver must do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Send this signal to the other host.
    Send(Signal),
    /// Start finding a media path (candidates, hole punching, relay).
    StartMedia,
    /// Stop media and free the path (and any relay session).
    StopMedia,
    /// Tell the user: the state changed.
    Report(State),
}

/// Timeouts of each state, in milliseconds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Timeouts {
    /// Caller: from the invite to the first sign of the callee.
    pub invite_ms: u64,
    /// Either side: how long the callee's host rings.
    pub ring_ms: u64,
    /// From the answer to media flowing (hole punching, then a relay).
    pub connect_ms: u64,
    /// Connected: silence from the other side (no media, no signal) that ends the call.
    pub silence_ms: u64,
}

impl Default for Timeouts {
    fn default() -> Self {
        Self { invite_ms: 10_000, ring_ms: 60_000, connect_ms: 15_000, silence_ms: 20_000 }
    }
}

/// One call, on one side.
#[derive(Debug, Clone)]
pub struct Call {
    role: Role,
    state: State,
    since_ms: u64,
    heard_ms: u64,
    timeouts: Timeouts,
}

impl Call {
    /// Caller: we send the invite at `now_ms`.
    pub fn outgoing(now_ms: u64, timeouts: Timeouts) -> (Self, Vec<Action>) {
        let c = Self { role: Role::Caller, state: State::Inviting, since_ms: now_ms, heard_ms: now_ms, timeouts };
        (c, vec![Action::Report(State::Inviting)])
    }

    /// Callee: a verified invite arrived at `now_ms`; `busy` when we are in another call.
    pub fn incoming(now_ms: u64, timeouts: Timeouts, busy: bool) -> (Self, Vec<Action>) {
        let mut c = Self { role: Role::Callee, state: State::Ringing, since_ms: now_ms, heard_ms: now_ms, timeouts };
        if busy {
            c.state = State::Ended(EndReason::Busy);
            return (c, vec![Action::Send(Signal::Busy), Action::Report(State::Ended(EndReason::Busy))]);
        }
        (c, vec![Action::Send(Signal::Ringing), Action::Report(State::Ringing)])
    }

    /// Where the call is.
    pub fn state(&self) -> State {
        self.state
    }

    /// Our side.
    pub fn role(&self) -> Role {
        self.role
    }

    /// Whether the call is over.
    pub fn is_over(&self) -> bool {
        matches!(self.state, State::Ended(_))
    }

    fn go(&mut self, to: State, now_ms: u64, out: &mut Vec<Action>) {
        if self.state != to {
            self.state = to;
            self.since_ms = now_ms;
            out.push(Action::Report(to));
        }
    }

    fn end(&mut self, why: EndReason, now_ms: u64, out: &mut Vec<Action>) {
        if matches!(self.state, State::Connecting | State::Connected(_)) {
            out.push(Action::StopMedia);
        }
        self.go(State::Ended(why), now_ms, out);
    }

    /// The caller's invite could not be delivered (no super node to carry it): an
    /// inviting call ends as unreachable at once, rather than at its timeout. Nothing
    /// for a call in any other state.
    pub fn undelivered(&mut self, now_ms: u64) -> Vec<Action> {
        let mut out = Vec::new();
        if self.role == Role::Caller && self.state == State::Inviting {
            self.end(EndReason::Unreachable, now_ms, &mut out);
        }
        out
    }

    /// The user's wish.
    pub fn intent(&mut self, i: Intent, now_ms: u64) -> Vec<Action> {
        let mut out = Vec::new();
        match (self.role, self.state, i) {
            (Role::Callee, State::Ringing, Intent::Accept) => {
                out.push(Action::Send(Signal::Accept));
                out.push(Action::StartMedia);
                self.heard_ms = now_ms;
                self.go(State::Connecting, now_ms, &mut out);
            }
            (Role::Callee, State::Ringing, Intent::Decline) => {
                out.push(Action::Send(Signal::Decline));
                self.end(EndReason::Declined, now_ms, &mut out);
            }
            (Role::Caller, State::Inviting | State::Ringing, Intent::End) => {
                out.push(Action::Send(Signal::Cancel));
                self.end(EndReason::Cancelled, now_ms, &mut out);
            }
            (Role::Callee, State::Ringing, Intent::End) => {
                out.push(Action::Send(Signal::Decline));
                self.end(EndReason::Declined, now_ms, &mut out);
            }
            (_, State::Connecting | State::Connected(_), Intent::End) => {
                out.push(Action::Send(Signal::HangUp));
                self.end(EndReason::HungUp, now_ms, &mut out);
            }
            // Anything else (accepting twice, ending an ended call) changes nothing.
            _ => {}
        }
        out
    }

    /// A signal from the other host (already authenticated by the caller of this).
    pub fn on_signal(&mut self, s: Signal, now_ms: u64) -> Vec<Action> {
        let mut out = Vec::new();
        self.heard_ms = now_ms;
        match (self.role, self.state, s) {
            (Role::Caller, State::Inviting, Signal::Ringing) => self.go(State::Ringing, now_ms, &mut out),
            (Role::Caller, State::Inviting | State::Ringing, Signal::Accept) => {
                out.push(Action::StartMedia);
                self.go(State::Connecting, now_ms, &mut out);
            }
            (Role::Caller, State::Inviting | State::Ringing, Signal::Decline) => {
                self.end(EndReason::Declined, now_ms, &mut out)
            }
            (Role::Caller, State::Inviting | State::Ringing, Signal::Busy) => {
                self.end(EndReason::Busy, now_ms, &mut out)
            }
            (Role::Callee, State::Ringing, Signal::Cancel) => self.end(EndReason::Cancelled, now_ms, &mut out),
            (_, State::Connecting | State::Connected(_), Signal::HangUp) => {
                self.end(EndReason::HungUp, now_ms, &mut out)
            }
            // A late or repeated signal (a duplicate Ringing, a Cancel after Accept
            // crossed on the wire) changes nothing.
            _ => {}
        }
        out
    }

    /// The media path came up (or changed, after a relay failover).
    pub fn on_media_up(&mut self, path: Path, now_ms: u64) -> Vec<Action> {
        let mut out = Vec::new();
        if matches!(self.state, State::Connecting | State::Connected(_)) {
            self.heard_ms = now_ms;
            self.go(State::Connected(path), now_ms, &mut out);
        }
        out
    }

    /// Media or a keepalive arrived from the other side: it is still there.
    pub fn on_heard(&mut self, now_ms: u64) {
        self.heard_ms = self.heard_ms.max(now_ms);
    }

    /// The clock: ends the call when its state timed out.
    pub fn tick(&mut self, now_ms: u64) -> Vec<Action> {
        let mut out = Vec::new();
        let t = &self.timeouts;
        let waited = now_ms.saturating_sub(self.since_ms);
        match self.state {
            State::Inviting if waited >= t.invite_ms => {
                // The callee may be ringing with its reply lost: stop it.
                out.push(Action::Send(Signal::Cancel));
                self.end(EndReason::Unreachable, now_ms, &mut out);
            }
            State::Ringing if waited >= t.ring_ms => {
                // The caller stops the ringing; a callee's host stops ringing by itself
                // (the caller's Cancel may have been lost).
                if self.role == Role::Caller {
                    out.push(Action::Send(Signal::Cancel));
                }
                self.end(EndReason::NoAnswer, now_ms, &mut out);
            }
            State::Connecting if waited >= t.connect_ms => {
                out.push(Action::Send(Signal::HangUp));
                self.end(EndReason::MediaFailed, now_ms, &mut out);
            }
            State::Connected(_) if now_ms.saturating_sub(self.heard_ms) >= t.silence_ms => {
                out.push(Action::Send(Signal::HangUp));
                self.end(EndReason::Lost, now_ms, &mut out);
            }
            _ => {}
        }
        out
    }

    /// When [`Call::tick`] next has something to do (None when the call is over).
    pub fn deadline_ms(&self) -> Option<u64> {
        let t = &self.timeouts;
        match self.state {
            State::Inviting => Some(self.since_ms + t.invite_ms),
            State::Ringing => Some(self.since_ms + t.ring_ms),
            State::Connecting => Some(self.since_ms + t.connect_ms),
            State::Connected(_) => Some(self.heard_ms + t.silence_ms),
            State::Ended(_) => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn t() -> Timeouts {
        Timeouts { invite_ms: 100, ring_ms: 1000, connect_ms: 500, silence_ms: 300 }
    }

    /// Runs a caller and a callee against each other, delivering every signal at once.
    fn connect() -> (Call, Call) {
        let (mut a, _) = Call::outgoing(0, t());
        let (mut b, out) = Call::incoming(10, t(), false);
        assert_eq!(out, vec![Action::Send(Signal::Ringing), Action::Report(State::Ringing)]);
        assert_eq!(a.on_signal(Signal::Ringing, 20), vec![Action::Report(State::Ringing)]);
        let out = b.intent(Intent::Accept, 30);
        assert_eq!(out[0], Action::Send(Signal::Accept));
        assert!(out.contains(&Action::StartMedia));
        assert!(a.on_signal(Signal::Accept, 40).contains(&Action::StartMedia));
        assert_eq!(a.on_media_up(Path::Punched, 50), vec![Action::Report(State::Connected(Path::Punched))]);
        b.on_media_up(Path::Punched, 50);
        (a, b)
    }

    #[test]
    fn a_call_connects_and_either_side_hangs_up() {
        let (mut a, mut b) = connect();
        let out = b.intent(Intent::End, 100);
        assert_eq!(
            out,
            vec![Action::Send(Signal::HangUp), Action::StopMedia, Action::Report(State::Ended(EndReason::HungUp))]
        );
        let out = a.on_signal(Signal::HangUp, 110);
        assert_eq!(out, vec![Action::StopMedia, Action::Report(State::Ended(EndReason::HungUp))]);
        assert!(a.is_over() && b.is_over());
        assert_eq!(a.deadline_ms(), None);
    }

    #[test]
    fn decline_busy_and_cancel() {
        let (mut a, _) = Call::outgoing(0, t());
        let (mut b, _) = Call::incoming(5, t(), false);
        assert_eq!(b.intent(Intent::Decline, 10)[0], Action::Send(Signal::Decline));
        a.on_signal(Signal::Decline, 11);
        assert_eq!(a.state(), State::Ended(EndReason::Declined));

        let (mut a, _) = Call::outgoing(0, t());
        let (b, out) = Call::incoming(5, t(), true);
        assert_eq!(out[0], Action::Send(Signal::Busy));
        assert_eq!(b.state(), State::Ended(EndReason::Busy));
        a.on_signal(Signal::Busy, 6);
        assert_eq!(a.state(), State::Ended(EndReason::Busy));

        let (mut a, _) = Call::outgoing(0, t());
        let (mut b, _) = Call::incoming(5, t(), false);
        a.on_signal(Signal::Ringing, 6);
        assert_eq!(a.intent(Intent::End, 7)[0], Action::Send(Signal::Cancel));
        b.on_signal(Signal::Cancel, 8);
        assert_eq!((a.state(), b.state()), (State::Ended(EndReason::Cancelled), State::Ended(EndReason::Cancelled)));
    }

    #[test]
    fn every_state_times_out() {
        let (mut a, _) = Call::outgoing(0, t());
        assert!(a.tick(99).is_empty());
        a.tick(100);
        assert_eq!(a.state(), State::Ended(EndReason::Unreachable));

        let (mut a, _) = Call::outgoing(0, t());
        a.on_signal(Signal::Ringing, 50);
        assert_eq!(a.deadline_ms(), Some(1050));
        assert_eq!(a.tick(1050)[0], Action::Send(Signal::Cancel));
        assert_eq!(a.state(), State::Ended(EndReason::NoAnswer));
        let (mut b, _) = Call::incoming(0, t(), false);
        b.tick(1000);
        assert_eq!(b.state(), State::Ended(EndReason::NoAnswer));

        let (mut a, _) = Call::outgoing(0, t());
        a.on_signal(Signal::Accept, 10);
        let out = a.tick(510);
        assert!(out.contains(&Action::StopMedia) && out.contains(&Action::Send(Signal::HangUp)));
        assert_eq!(a.state(), State::Ended(EndReason::MediaFailed));

        let (mut a, _) = connect();
        a.on_heard(200);
        assert!(a.tick(499).is_empty());
        a.tick(500);
        assert_eq!(a.state(), State::Ended(EndReason::Lost));
    }

    #[test]
    fn late_and_repeated_signals_change_nothing() {
        let (mut a, mut b) = connect();
        assert!(a.on_signal(Signal::Ringing, 60).is_empty());
        assert!(a.on_signal(Signal::Accept, 61).is_empty());
        assert!(b.on_signal(Signal::Cancel, 62).is_empty(), "a Cancel that crossed the Accept");
        assert!(b.intent(Intent::Accept, 63).is_empty());
        assert_eq!(a.state(), State::Connected(Path::Punched));
        // A relay failover changes the path, nothing else.
        assert_eq!(a.on_media_up(Path::RelayedUdp, 70), vec![Action::Report(State::Connected(Path::RelayedUdp))]);
    }

    proptest! {
        /// Whatever arrives in whatever order, a call never leaves Ended, media is
        /// stopped exactly when it was started, and the deadline is always honoured.
        #[test]
        fn any_sequence_is_safe(role in any::<bool>(), steps in proptest::collection::vec((0u8..10, 0u64..400), 0..40)) {
            let (mut c, _) = if role { Call::outgoing(0, t()) } else { Call::incoming(0, t(), false) };
            let (mut now, mut media) = (0u64, false);
            for (what, dt) in steps {
                now += dt;
                let was_over = c.is_over();
                let out = match what {
                    0 => c.on_signal(Signal::Ringing, now),
                    1 => c.on_signal(Signal::Accept, now),
                    2 => c.on_signal(Signal::Decline, now),
                    3 => c.on_signal(Signal::Cancel, now),
                    4 => c.on_signal(Signal::HangUp, now),
                    5 => c.intent(Intent::Accept, now),
                    6 => c.intent(Intent::End, now),
                    7 => c.on_media_up(Path::Direct, now),
                    8 => { c.on_heard(now); Vec::new() }
                    _ => c.tick(now),
                };
                for a in &out {
                    match a {
                        Action::StartMedia => { prop_assert!(!media); media = true; }
                        Action::StopMedia => { prop_assert!(media); media = false; }
                        _ => {}
                    }
                }
                if was_over { prop_assert!(out.is_empty()); }
                if c.is_over() { prop_assert!(!media, "media left running after the call ended"); }
                if let Some(d) = c.deadline_ms() && now > d {
                    let out = c.tick(now);
                    if out.contains(&Action::StopMedia) { media = false; }
                    prop_assert!(c.deadline_ms().is_none_or(|d2| d2 > now));
                    prop_assert!(!(c.is_over() && media));
                }
            }
        }
    }
}
