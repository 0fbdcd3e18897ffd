//! One established host session, as a plain state machine.
//!
//! The `HostSession` actor feeds it frames and clock ticks and sends what it returns.
//! Everything is decided here: which frames are acceptable, replay, keepalive answers,
//! idle expiry.

use crate::crypto::aead::{SealKey, SessionSecret, label};
use crate::wire::DecodeError;
use crate::wire::frame::{self, Direction, FrameError, RawFrame};
use crate::wire::message::{
    Bye, CallStats, ErrorCode, ErrorMsg, Find, Forward, MessageKind, Observed, RelayAllocate, RelayRelease, Search,
    Welcome,
};
use crate::wire::replay::ReplayWindow;
use std::net::SocketAddr;

/// How a host reaches this super node.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Transport {
    /// Datagrams.
    Udp,
    /// A TCP connection (the fallback when UDP is blocked).
    Tcp,
}

impl Transport {
    /// A short label for metrics and output.
    pub fn label(self) -> &'static str {
        match self {
            Self::Udp => "udp",
            Self::Tcp => "tcp",
        }
    }
}

/// What the session asks its driver to do.
#[derive(Debug, PartialEq, Eq)]
pub enum Action {
    /// Send this frame to the host.
    Send(MessageKind, Vec<u8>),
    /// End the session (after sending anything queued before it).
    Close(&'static str),
    /// Store this signed entry in the Global Index, then answer with PublishAck.
    Publish(Vec<u8>),
    /// Look this user up, then answer with FindReply.
    Find(Find),
    /// Search users, then answer with SearchReply frames.
    Search(Search),
    /// Carry a notice to another user's host, then answer with ForwardAck.
    Forward(Forward),
    /// Open a relay session, then answer with RelayGrant.
    RelayAllocate(RelayAllocate),
    /// Free a relay session this host opened.
    RelayRelease(RelayRelease),
    /// Count a call the host placed.
    CallStats(CallStats),
}

/// Who is on the other end of a session, and how they are reached.
#[derive(Debug, Clone)]
pub struct SessionPeer {
    /// The session id the super node assigned.
    pub id: u32,
    /// The authenticated username.
    pub user: String,
    /// The host's address as seen by the super node.
    pub peer: SocketAddr,
    /// The super node's address the host dialed (keys the header obfuscation).
    pub listener: SocketAddr,
    /// UDP or TCP.
    pub transport: Transport,
}

/// An established session.
#[derive(Debug)]
pub struct Session {
    id: u32,
    user: String,
    peer: SocketAddr,
    listener: SocketAddr,
    transport: Transport,
    rx: SealKey,
    tx: SealKey,
    tx_seq: u64,
    replay: ReplayWindow,
    last_heard: u64,
    idle_timeout_secs: u64,
}

impl Session {
    /// A session with `who`, keyed from the handshake's secret.
    pub fn new(who: SessionPeer, secret: &SessionSecret, now: u64, idle_timeout_secs: u64) -> Self {
        let SessionPeer { id, user, peer, listener, transport } = who;
        Self {
            id,
            user,
            peer,
            listener,
            transport,
            rx: secret.derive(label::INITIATOR_TO_RESPONDER),
            tx: secret.derive(label::RESPONDER_TO_INITIATOR),
            tx_seq: 0,
            replay: ReplayWindow::new(),
            last_heard: now,
            idle_timeout_secs,
        }
    }

    /// The session id.
    pub fn id(&self) -> u32 {
        self.id
    }

    /// The user.
    pub fn user(&self) -> &str {
        &self.user
    }

    /// The host's address.
    pub fn peer(&self) -> SocketAddr {
        self.peer
    }

    /// The transport.
    pub fn transport(&self) -> Transport {
        self.transport
    }

    /// Seals one frame to the host.
    pub fn seal(&mut self, kind: MessageKind, body: &[u8]) -> Vec<u8> {
        let seq = self.tx_seq;
        self.tx_seq += 1;
        frame::encode_sealed(self.listener, kind, self.id, seq, &self.tx, Direction::ToInitiator, body)
    }

    /// The first frame: Welcome.
    pub fn welcome(&mut self, w: &Welcome) -> Vec<u8> {
        self.seal(MessageKind::Welcome, &w.encode())
    }

    /// Handles one frame from the host. A rejected frame changes nothing.
    pub fn on_frame(&mut self, raw: &RawFrame<'_>, now: u64) -> Result<Vec<Action>, FrameError> {
        if raw.header.session != self.id {
            return Err(FrameError::Unauthenticated);
        }
        if !raw.header.sealed {
            return Err(FrameError::WrongSealing(raw.header.kind));
        }
        let seq = raw.seq();
        if !self.replay.check(seq) {
            return Err(FrameError::Replayed);
        }
        let body = raw.open(&self.rx, Direction::ToResponder)?;
        self.replay.accept(seq);
        self.last_heard = now;
        let mut out = Vec::new();
        match raw.header.kind {
            MessageKind::Keepalive => {
                let ack = Observed { id: 0, addr: self.peer }.encode();
                out.push(Action::Send(MessageKind::KeepaliveAck, self.seal(MessageKind::KeepaliveAck, &ack)));
            }
            MessageKind::Bye => {
                let reason = Bye::decode(&body).map(|b| b.reason).unwrap_or(0);
                tracing::debug!(user = %self.user, reason, "host said bye");
                out.push(Action::Close("bye"));
            }
            MessageKind::Publish => out.push(Action::Publish(body)),
            MessageKind::Search => out.push(self.decoded(Search::decode(&body), "search", Action::Search)),
            MessageKind::Find => out.push(self.decoded(Find::decode(&body), "find", Action::Find)),
            MessageKind::Forward => out.push(self.decoded(Forward::decode(&body), "forward", Action::Forward)),
            MessageKind::RelayAllocate => {
                out.push(self.decoded(RelayAllocate::decode(&body), "relay_allocate", Action::RelayAllocate))
            }
            MessageKind::CallStats => out.push(self.decoded(CallStats::decode(&body), "call_stats", Action::CallStats)),
            MessageKind::RelayRelease => {
                out.push(self.decoded(RelayRelease::decode(&body), "relay_release", Action::RelayRelease))
            }
            MessageKind::Error => {
                if let Ok(e) = ErrorMsg::decode(&body) {
                    tracing::debug!(user = %self.user, code = e.code.label(), detail = %e.detail, "host reported an error");
                }
            }
            other => {
                let e =
                    ErrorMsg::new(ErrorCode::Unsupported, format!("{} is not handled by a super node", other.label()));
                out.push(Action::Send(MessageKind::Error, self.seal(MessageKind::Error, &e.encode())));
            }
        }
        Ok(out)
    }

    /// The action for a decoded request, or a Malformed error back to the host.
    fn decoded<T>(&mut self, r: Result<T, DecodeError>, what: &str, action: impl FnOnce(T) -> Action) -> Action {
        match r {
            Ok(v) => action(v),
            Err(e) => {
                let e = ErrorMsg::new(ErrorCode::Malformed, format!("{what}: {e}"));
                Action::Send(MessageKind::Error, self.seal(MessageKind::Error, &e.encode()))
            }
        }
    }

    /// When the session expires unless the host is heard from.
    pub fn deadline(&self) -> u64 {
        self.last_heard + self.idle_timeout_secs
    }

    /// Checks the idle timer at `now`.
    pub fn on_tick(&mut self, now: u64) -> Vec<Action> {
        if now >= self.deadline() {
            let bye = Bye { reason: 0 }.encode();
            vec![Action::Send(MessageKind::Bye, self.seal(MessageKind::Bye, &bye)), Action::Close("idle")]
        } else {
            Vec::new()
        }
    }

    /// The farewell when the super node shuts down.
    pub fn goodbye(&mut self) -> Vec<u8> {
        self.seal(MessageKind::Bye, &Bye { reason: 0 }.encode())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::frame::decode;

    fn pair() -> (Session, SealKey, SealKey, SocketAddr) {
        let secret = SessionSecret([8; 32]);
        let listener: SocketAddr = "198.18.0.1:33033".parse().unwrap();
        let who = SessionPeer {
            id: 7,
            user: "alice".into(),
            peer: "198.18.1.2:4000".parse().unwrap(),
            listener,
            transport: Transport::Udp,
        };
        let s = Session::new(who, &secret, 100, 60);
        (s, secret.derive(label::INITIATOR_TO_RESPONDER), secret.derive(label::RESPONDER_TO_INITIATOR), listener)
    }

    #[test]
    fn keepalive_is_answered_and_replay_refused() {
        let (mut s, to_sn, from_sn, l) = pair();
        let f = frame::encode_sealed(l, MessageKind::Keepalive, 7, 0, &to_sn, Direction::ToResponder, b"");
        let out = s.on_frame(&decode(l, &f).unwrap(), 110).unwrap();
        let Action::Send(MessageKind::KeepaliveAck, ack) = &out[0] else { panic!("{out:?}") };
        let raw = decode(l, ack).unwrap();
        let body = raw.open(&from_sn, Direction::ToInitiator).unwrap();
        assert_eq!(Observed::decode(&body).unwrap().addr, s.peer());
        assert_eq!(s.deadline(), 170);
        assert_eq!(s.on_frame(&decode(l, &f).unwrap(), 111), Err(FrameError::Replayed));
    }

    #[test]
    fn forged_or_misaddressed_frames_change_nothing() {
        let (mut s, _, from_sn, l) = pair();
        // Sealed with the wrong direction's key: what an attacker echoing our frames gets.
        let f = frame::encode_sealed(l, MessageKind::Keepalive, 7, 0, &from_sn, Direction::ToResponder, b"");
        assert_eq!(s.on_frame(&decode(l, &f).unwrap(), 150), Err(FrameError::Unauthenticated));
        let other = frame::encode_sealed(l, MessageKind::Keepalive, 8, 0, &from_sn, Direction::ToResponder, b"");
        assert_eq!(s.on_frame(&decode(l, &other).unwrap(), 150), Err(FrameError::Unauthenticated));
        assert_eq!(s.deadline(), 160, "a rejected frame does not keep the session alive");
    }

    #[test]
    fn idle_expiry_and_bye() {
        let (mut s, to_sn, _, l) = pair();
        assert!(s.on_tick(159).is_empty());
        let out = s.on_tick(160);
        assert_eq!(out.last(), Some(&Action::Close("idle")));
        let (mut s, to_sn2, _, _) = pair();
        let _ = to_sn;
        let f = frame::encode_sealed(
            l,
            MessageKind::Bye,
            7,
            0,
            &to_sn2,
            Direction::ToResponder,
            &Bye { reason: 0 }.encode(),
        );
        assert_eq!(s.on_frame(&decode(l, &f).unwrap(), 120).unwrap(), vec![Action::Close("bye")]);
    }
}
