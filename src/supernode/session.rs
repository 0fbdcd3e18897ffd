//! One established host session, as a plain state machine.
//!
//! The `HostSession` actor feeds it frames and clock ticks and sends what it returns.
//! Everything is decided here: which frames are acceptable, replay, keepalive answers,
//! idle expiry, and which revision of the message layer the host speaks (a Keepalive
//! with an id makes it revision 2: failures then carry the request's id).

use crate::crypto::aead::{SealKey, SessionSecret, label};
use crate::wire::DecodeError;
use crate::wire::frame::{self, Direction, FrameError, RawFrame};
use crate::wire::mail::{MailAck, MailFetch, MailSubmit};
use crate::wire::message::{
    Bye, CallStats, ErrorCode, ErrorMsg, Find, Forward, Keepalive, MessageKind, Observed, PublishAck, PublishReply,
    PublishReq, RelayAllocate, RelayRelease, RequestError, Revision, Search, Welcome,
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
    /// Store this signed entry in the Global Index, then answer with
    /// [`Session::publish_answer`]: a PublishAck to a Publish (`req` None), a PublishReply
    /// to a PublishReq.
    Publish {
        /// The PublishReq's id; None for a Publish.
        req: Option<u32>,
        /// The signed entry, not yet checked.
        entry: Vec<u8>,
    },
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
    /// Store a message for its recipient, then answer with MailSubmitReply.
    MailSubmit(MailSubmit),
    /// Read a page of this user's stored messages, then answer with MailBatch.
    MailFetch(MailFetch),
    /// Acknowledge stored messages for this user's device, then answer with MailAckReply.
    MailAck(MailAck),
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
    revision: Revision,
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
            revision: Revision::One,
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

    /// The message-layer revision the host has shown it speaks: Two from its first
    /// Keepalive with an id on, for the rest of the session.
    pub fn revision(&self) -> Revision {
        self.revision
    }

    /// The sealed answer to a failed request: a RequestError carrying `req` to a
    /// revision-2 host, the id-less Error that revision 1 expects otherwise.
    pub fn request_error(&mut self, req: u32, error: ErrorMsg) -> (MessageKind, Vec<u8>) {
        match self.revision {
            Revision::Two => {
                let body = RequestError { req, error }.encode();
                (MessageKind::RequestError, self.seal(MessageKind::RequestError, &body))
            }
            Revision::One => (MessageKind::Error, self.seal(MessageKind::Error, &error.encode())),
        }
    }

    /// The sealed answer to a publish: a PublishReply to a PublishReq (`req` given), a
    /// PublishAck to a Publish. Only a host that sent a PublishReq gets a PublishReply.
    pub fn publish_answer(&mut self, req: Option<u32>, ack: PublishAck) -> (MessageKind, Vec<u8>) {
        match req {
            Some(req) => {
                let body = PublishReply { req, ack }.encode();
                (MessageKind::PublishReply, self.seal(MessageKind::PublishReply, &body))
            }
            None => (MessageKind::PublishAck, self.seal(MessageKind::PublishAck, &ack.encode())),
        }
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
            MessageKind::Keepalive => match Keepalive::decode(&body) {
                Ok(k) => {
                    // Revision 2 is for the rest of the session: a later empty keepalive
                    // is a liveness check, not a downgrade.
                    self.revision = self.revision.max(k.revision());
                    let ack = Observed { id: k.id, addr: self.peer }.encode();
                    out.push(Action::Send(MessageKind::KeepaliveAck, self.seal(MessageKind::KeepaliveAck, &ack)));
                }
                Err(e) => out.push(self.failed(0, ErrorMsg::new(ErrorCode::Malformed, format!("keepalive: {e}")))),
            },
            MessageKind::Bye => {
                let reason = Bye::decode(&body).map(|b| b.reason).unwrap_or(0);
                tracing::debug!(user = %self.user, reason, "host said bye");
                out.push(Action::Close("bye"));
            }
            MessageKind::Publish => out.push(Action::Publish { req: None, entry: body }),
            MessageKind::PublishReq => {
                let req = leading_req(&body);
                out.push(self.decoded(PublishReq::decode(&body), req, "publish_req", |p| Action::Publish {
                    req: Some(p.req),
                    entry: p.entry,
                }))
            }
            MessageKind::Search => {
                out.push(self.decoded(Search::decode(&body), leading_req(&body), "search", Action::Search))
            }
            MessageKind::Find => out.push(self.decoded(Find::decode(&body), leading_req(&body), "find", Action::Find)),
            MessageKind::Forward => {
                out.push(self.decoded(Forward::decode(&body), leading_req(&body), "forward", Action::Forward))
            }
            MessageKind::RelayAllocate => {
                let req = leading_req(&body);
                out.push(self.decoded(RelayAllocate::decode(&body), req, "relay_allocate", Action::RelayAllocate))
            }
            MessageKind::CallStats => {
                out.push(self.decoded(CallStats::decode(&body), 0, "call_stats", Action::CallStats))
            }
            MessageKind::RelayRelease => {
                out.push(self.decoded(RelayRelease::decode(&body), 0, "relay_release", Action::RelayRelease))
            }
            MessageKind::MailSubmit => {
                out.push(self.decoded(MailSubmit::decode(&body), leading_req(&body), "mail_submit", Action::MailSubmit))
            }
            MessageKind::MailFetch => {
                out.push(self.decoded(MailFetch::decode(&body), leading_req(&body), "mail_fetch", Action::MailFetch))
            }
            MessageKind::MailAck => {
                out.push(self.decoded(MailAck::decode(&body), leading_req(&body), "mail_ack", Action::MailAck))
            }
            MessageKind::Error => {
                if let Ok(e) = ErrorMsg::decode(&body) {
                    tracing::debug!(user = %self.user, code = e.code.label(), detail = %e.detail, "host reported an error");
                }
            }
            MessageKind::RequestError => {
                if let Ok(e) = RequestError::decode(&body) {
                    tracing::debug!(user = %self.user, req = e.req, code = e.error.code.label(), detail = %e.error.detail,
                        "host reported an error");
                }
            }
            other => {
                let e =
                    ErrorMsg::new(ErrorCode::Unsupported, format!("{} is not handled by a super node", other.label()));
                out.push(self.failed(0, e));
            }
        }
        Ok(out)
    }

    /// The action for a decoded request, or a Malformed error back to the host with
    /// request id `req` (what the body's first four bytes say, where they are there: the
    /// frame is authenticated, so the host's pending request can fail at once rather than
    /// wait out its deadline).
    fn decoded<T>(
        &mut self,
        r: Result<T, DecodeError>,
        req: u32,
        what: &str,
        action: impl FnOnce(T) -> Action,
    ) -> Action {
        match r {
            Ok(v) => action(v),
            Err(e) => self.failed(req, ErrorMsg::new(ErrorCode::Malformed, format!("{what}: {e}"))),
        }
    }

    /// [`Session::request_error`] as an action.
    fn failed(&mut self, req: u32, error: ErrorMsg) -> Action {
        let (kind, frame) = self.request_error(req, error);
        Action::Send(kind, frame)
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

/// The request id a request body starts with (every request with an id puts it first), or
/// 0 for a body too short to hold one.
fn leading_req(body: &[u8]) -> u32 {
    body.get(..4).and_then(|b| b.try_into().ok()).map_or(0, u32::from_be_bytes)
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

    /// A host's side of [`pair`]: seals frames in sequence and opens the answers.
    struct Host {
        to_sn: SealKey,
        from_sn: SealKey,
        l: SocketAddr,
        seq: u64,
    }

    impl Host {
        fn new(to_sn: SealKey, from_sn: SealKey, l: SocketAddr) -> Self {
            Self { to_sn, from_sn, l, seq: 0 }
        }

        /// Sends one frame; returns the actions and the opened answers, in order.
        fn send(
            &mut self,
            s: &mut Session,
            kind: MessageKind,
            body: &[u8],
        ) -> (Vec<Action>, Vec<(MessageKind, Vec<u8>)>) {
            let f = frame::encode_sealed(self.l, kind, 7, self.seq, &self.to_sn, Direction::ToResponder, body);
            self.seq += 1;
            let actions = s.on_frame(&decode(self.l, &f).unwrap(), 110).unwrap();
            let answers = actions
                .iter()
                .filter_map(|a| match a {
                    Action::Send(k, f) => Some(self.open(*k, f)),
                    _ => None,
                })
                .collect();
            (actions, answers)
        }

        fn open(&self, kind: MessageKind, f: &[u8]) -> (MessageKind, Vec<u8>) {
            let raw = decode(self.l, f).unwrap();
            assert_eq!(raw.header.kind, kind, "the action names the kind it carries");
            (kind, raw.open(&self.from_sn, Direction::ToInitiator).unwrap())
        }

        /// The one answer to a frame.
        fn ask(&mut self, s: &mut Session, kind: MessageKind, body: &[u8]) -> (MessageKind, Vec<u8>) {
            let (_, mut answers) = self.send(s, kind, body);
            assert_eq!(answers.len(), 1, "{answers:?}");
            answers.remove(0)
        }
    }

    fn observed_id(answer: (MessageKind, Vec<u8>)) -> u64 {
        assert_eq!(answer.0, MessageKind::KeepaliveAck);
        Observed::decode(&answer.1).unwrap().id
    }

    #[test]
    fn a_keepalive_id_is_echoed_and_makes_the_session_revision_two() {
        let (mut s, to_sn, from_sn, l) = pair();
        let mut h = Host::new(to_sn, from_sn, l);
        assert_eq!(observed_id(h.ask(&mut s, MessageKind::Keepalive, b"")), 0);
        assert_eq!(s.revision(), Revision::One, "an empty keepalive is revision 1's");
        assert_eq!(observed_id(h.ask(&mut s, MessageKind::Keepalive, &Keepalive { id: 42 }.encode())), 42);
        assert_eq!(s.revision(), Revision::Two);
        // An empty keepalive later is a liveness check: it echoes 0 and keeps revision 2.
        assert_eq!(observed_id(h.ask(&mut s, MessageKind::Keepalive, b"")), 0);
        assert_eq!(s.revision(), Revision::Two);
        assert_eq!(observed_id(h.ask(&mut s, MessageKind::Keepalive, &u64::MAX.to_be_bytes())), u64::MAX);
    }

    #[test]
    fn a_malformed_keepalive_body_is_refused_in_the_sessions_revision() {
        let (mut s, to_sn, from_sn, l) = pair();
        let mut h = Host::new(to_sn, from_sn, l);
        for bad in [&[1u8, 2, 3][..], &[0; 8], &[9; 9]] {
            let (kind, body) = h.ask(&mut s, MessageKind::Keepalive, bad);
            assert_eq!(kind, MessageKind::Error, "{bad:?}");
            assert_eq!(ErrorMsg::decode(&body).unwrap().code, ErrorCode::Malformed);
            assert_eq!(s.revision(), Revision::One, "a refused keepalive announces nothing");
        }
        h.ask(&mut s, MessageKind::Keepalive, &Keepalive { id: 5 }.encode());
        let (kind, body) = h.ask(&mut s, MessageKind::Keepalive, &[1, 2, 3]);
        assert_eq!(kind, MessageKind::RequestError);
        let e = RequestError::decode(&body).unwrap();
        assert_eq!((e.req, e.error.code), (0, ErrorCode::Malformed));
        assert!(e.error.detail.starts_with("keepalive: "), "{}", e.error.detail);
    }

    #[test]
    fn revision_one_failures_are_answered_as_before() {
        let (mut s, to_sn, from_sn, l) = pair();
        let mut h = Host::new(to_sn, from_sn, l);
        let (kind, body) = h.ask(&mut s, MessageKind::Find, b"\x00\x00");
        assert_eq!(kind, MessageKind::Error);
        let e = ErrorMsg::decode(&body).unwrap();
        assert_eq!(e.code, ErrorCode::Malformed);
        assert!(e.detail.starts_with("find: "), "{}", e.detail);
        let (kind, body) = h.ask(&mut s, MessageKind::Welcome, b"");
        assert_eq!(kind, MessageKind::Error);
        assert_eq!(ErrorMsg::decode(&body).unwrap().code, ErrorCode::Unsupported);
        // What the actor sends for a request that failed later, or for a publish.
        let (k, f) = s.request_error(77, ErrorMsg::new(ErrorCode::TooManyAttempts, "slow down"));
        let (kind, body) = h.open(k, &f);
        assert_eq!(kind, MessageKind::Error);
        assert_eq!(ErrorMsg::decode(&body).unwrap().code, ErrorCode::TooManyAttempts);
        let ack = PublishAck { code: 0, replicas: 3, detail: String::new() };
        let (k, f) = s.publish_answer(None, ack.clone());
        assert_eq!(h.open(k, &f), (MessageKind::PublishAck, ack.encode()));
        let (actions, _) = h.send(&mut s, MessageKind::Publish, b"entry bytes");
        assert_eq!(actions, vec![Action::Publish { req: None, entry: b"entry bytes".to_vec() }]);
        // Whoever sends a PublishReq reads a PublishReply, keepalive id or not.
        let req = PublishReq { req: 4, entry: b"entry bytes".to_vec() };
        let (actions, _) = h.send(&mut s, MessageKind::PublishReq, &req.encode());
        assert_eq!(actions, vec![Action::Publish { req: Some(4), entry: req.entry }]);
        assert_eq!(s.revision(), Revision::One);
    }

    #[test]
    fn revision_two_failures_carry_the_request_id() {
        let (mut s, to_sn, from_sn, l) = pair();
        let mut h = Host::new(to_sn, from_sn, l);
        h.ask(&mut s, MessageKind::Keepalive, &Keepalive { id: 1 }.encode());
        let request_error = |(kind, body): (MessageKind, Vec<u8>)| {
            assert_eq!(kind, MessageKind::RequestError);
            RequestError::decode(&body).unwrap()
        };
        // A body that does not decode is answered with the id it starts with (the frame
        // is authenticated); one too short for an id, and kinds not handled, with 0.
        let e = request_error(h.ask(&mut s, MessageKind::Find, &[0, 0, 0, 9]));
        assert_eq!((e.req, e.error.code), (9, ErrorCode::Malformed));
        let e = request_error(h.ask(&mut s, MessageKind::Find, &[0, 9]));
        assert_eq!((e.req, e.error.code), (0, ErrorCode::Malformed));
        let e = request_error(h.ask(&mut s, MessageKind::PublishReq, &[0, 0, 0, 9, 0xff]));
        assert_eq!((e.req, e.error.code), (9, ErrorCode::Malformed));
        assert!(e.error.detail.starts_with("publish_req: "), "{}", e.error.detail);
        let e = request_error(h.ask(&mut s, MessageKind::PublishReply, b""));
        assert_eq!((e.req, e.error.code), (0, ErrorCode::Unsupported));
        // A failure found later carries the id the actor passes.
        let mut busy = ErrorMsg::new(ErrorCode::TooManyAttempts, "too many lookups; slow down");
        busy.retry_after_secs = 1;
        let (k, f) = s.request_error(0xabcd, busy.clone());
        assert_eq!(request_error(h.open(k, &f)), RequestError { req: 0xabcd, error: busy });
        // PublishReq is handed on with its id and answered with a PublishReply.
        let req = PublishReq { req: 9, entry: b"entry bytes".to_vec() };
        let (actions, answers) = h.send(&mut s, MessageKind::PublishReq, &req.encode());
        assert!(answers.is_empty());
        assert_eq!(actions, vec![Action::Publish { req: Some(9), entry: req.entry.clone() }]);
        let ack = PublishAck { code: ErrorCode::BadSignature.code(), replicas: 0, detail: "bad".into() };
        let (k, f) = s.publish_answer(Some(9), ack.clone());
        let (kind, body) = h.open(k, &f);
        assert_eq!(kind, MessageKind::PublishReply);
        assert_eq!(PublishReply::decode(&body).unwrap(), PublishReply { req: 9, ack: ack.clone() });
        // A Publish without an id still gets the PublishAck it expects.
        let (k, f) = s.publish_answer(None, ack.clone());
        assert_eq!(h.open(k, &f), (MessageKind::PublishAck, ack.encode()));
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
