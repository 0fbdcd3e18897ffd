//! The core on a hand-fed link: a real host session against a real super-node session,
//! no sockets, virtual time.

use super::io::{ConnId, Dest, Effect, TcpEvent};
use super::link::{Ended, LinkState};
use super::pending::{Answer, Class, OpId, OpResult, RequestError, Revision, SEND_BURST, SEND_RATE_PER_SEC};
use super::{CoreEvent, CoreLink, Now};
use crate::crypto::credential::{Claims, Credential, CredentialKind};
use crate::crypto::keys::tests::test_key;
use crate::host::handshake::{ClientSession, Dialing};
use crate::supernode::handshake::{accept, precheck};
use crate::supernode::session::{Action, Session, SessionPeer, Transport};
use crate::wire::message::{
    Bye, ErrorMsg, FindReply, ForwardAck, Hello, Observed, PublishAck, PublishReply, RelayGrant, RelayRelease,
    SearchReply, Welcome,
};
use crate::wire::{ErrorCode, MessageKind, frame};
use rand::SeedableRng;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

const T0: u64 = 1_700_000_000;
const STEPS_MAX: usize = 100_000;

fn sn_addr() -> SocketAddr {
    "198.18.0.1:33033".parse().unwrap()
}

fn host_addr() -> SocketAddr {
    "198.18.1.2:40000".parse().unwrap()
}

/// A host session and the super node's end of it, from a whole handshake.
fn establish(keepalive_secs: u16) -> (ClientSession, Session) {
    establish_at(sn_addr(), host_addr(), keepalive_secs)
}

/// Like [`establish`], between a super node at `sn_addr` and a host at `host_addr`.
pub(crate) fn establish_at(
    sn_addr: SocketAddr,
    host_addr: SocketAddr,
    keepalive_secs: u16,
) -> (ClientSession, Session) {
    let sn = crate::supernode::tests::identity();
    let cred = Credential::issue(
        Claims {
            kind: CredentialKind::Host,
            subject: "alice".into(),
            public_key: test_key(2).public().clone(),
            issued_at: T0,
            expires_at: T0 + 3600,
            serial: 9,
        },
        &test_key(0),
    );
    let d = Dialing::with_nonce(sn_addr, [1; 16]);
    let h = Hello::decode(frame::decode(sn_addr, &d.hello()).unwrap().payload).unwrap();
    let challenge = frame::encode_plain(sn_addr, MessageKind::Challenge, 0, &sn.challenge(&h, host_addr, T0).encode());
    let a = d.on_challenge(&challenge, &sn.trusted, &cred, &test_key(2), T0).unwrap().unwrap();
    let env = precheck(&sn, frame::decode(sn_addr, a.auth()).unwrap().payload, host_addr, T0).unwrap();
    let accepted = accept(&sn, &env, T0).unwrap();
    let who =
        SessionPeer { id: 5, user: "alice".into(), peer: host_addr, listener: sn_addr, transport: Transport::Udp };
    let mut s = Session::new(who, &accepted.secret, T0, 3600);
    let welcome = s.welcome(&Welcome {
        observed: host_addr,
        keepalive_secs,
        idle_timeout_secs: 3600,
        probe_addr: None,
        supernodes: Vec::new(),
    });
    (a.on_reply(&welcome).unwrap().unwrap(), s)
}

/// What reached the super node: when, which kind, and what it made of it.
type Trace = Vec<(Duration, MessageKind, String)>;
/// Finished requests, with when.
type Done = Vec<(Duration, OpId, OpResult)>;

/// What becomes of the super node's answers to keepalives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Echo {
    /// The session's own answer reaches the host (revision 2: the id echoed).
    Session,
    /// Answered as a revision-1 super node does: id 0, whatever the body.
    Rev1,
    /// Kept in `Bench::held` until the test hands them over.
    Hold,
    /// Lost.
    Lost,
}

/// The core, the super node's session, and a virtual clock.
struct Bench {
    core: CoreLink,
    sn: Session,
    base: Instant,
    t: Duration,
    echo: Echo,
    held: Vec<Vec<u8>>,
    /// Whether every Forward is acknowledged at once.
    ack_forwards: bool,
    trace: Trace,
    done: Done,
    events: Vec<(Duration, CoreEvent)>,
}

impl Bench {
    fn new(seed: u64, keepalive_secs: u16) -> Self {
        let (session, sn) = establish(keepalive_secs);
        let base = Instant::now();
        let now = Now { mono: base, unix_ms: T0 * 1000 };
        let core = CoreLink::new(session, Dest::Udp(sn_addr()), now, &mut rand::rngs::StdRng::seed_from_u64(seed));
        Self {
            core,
            sn,
            base,
            t: Duration::ZERO,
            echo: Echo::Session,
            held: Vec::new(),
            ack_forwards: false,
            trace: Vec::new(),
            done: Vec::new(),
            events: Vec::new(),
        }
    }

    /// A bench whose super node answers keepalives as revision 1 does; the first
    /// keepalive is answered, so the core knows.
    fn rev1(seed: u64, keepalive_secs: u16) -> Self {
        let mut b = Self::new(seed, keepalive_secs);
        b.echo = Echo::Rev1;
        b.drain();
        assert_eq!(b.core.revision(), Revision::Rev1);
        b
    }

    /// A bench that has heard the first keepalive's echo (revision 2).
    fn rev2(seed: u64, keepalive_secs: u16) -> Self {
        let mut b = Self::new(seed, keepalive_secs);
        b.drain();
        assert_eq!(b.core.revision(), Revision::Rev2);
        b
    }

    fn now(&self) -> Now {
        Now { mono: self.base + self.t, unix_ms: T0 * 1000 + self.t.as_millis() as u64 }
    }

    /// The super node answers: sealed, and handed to the core now.
    fn reply(&mut self, kind: MessageKind, body: &[u8]) {
        let f = self.sn.seal(kind, body);
        let now = self.now();
        self.core.handle_datagram(now, sn_addr(), &f);
    }

    /// Drains every output of the core. The super node takes the transmits and answers
    /// keepalives (and Forwards, if asked); what else it made of them is returned.
    fn drain(&mut self) -> Vec<Action> {
        let mut out = Vec::new();
        loop {
            let mut moved = false;
            while let Some(t) = self.core.poll_transmit() {
                moved = true;
                assert_eq!(t.dest, Dest::Udp(sn_addr()));
                let raw = frame::decode(sn_addr(), &t.bytes).unwrap();
                let kind = raw.header.kind;
                for a in self.sn.on_frame(&raw, T0 + self.t.as_secs()).unwrap() {
                    match a {
                        Action::Send(MessageKind::KeepaliveAck, ack) => {
                            self.trace.push((self.t, kind, "keepalive".into()));
                            match self.echo {
                                Echo::Session => {
                                    let now = self.now();
                                    self.core.handle_datagram(now, sn_addr(), &ack);
                                }
                                Echo::Rev1 => {
                                    let o = Observed { id: 0, addr: host_addr() };
                                    self.reply(MessageKind::KeepaliveAck, &o.encode());
                                }
                                Echo::Hold => self.held.push(ack),
                                Echo::Lost => {}
                            }
                        }
                        Action::Forward(f) if self.ack_forwards => {
                            self.trace.push((self.t, kind, format!("{f:?}")));
                            let ack = ForwardAck { req: f.req, code: 0, supernode: "sn-b".into() };
                            self.reply(MessageKind::ForwardAck, &ack.encode());
                        }
                        other => {
                            self.trace.push((self.t, kind, format!("{other:?}")));
                            out.push(other);
                        }
                    }
                }
            }
            while let Some((op, r)) = self.core.poll_completion() {
                moved = true;
                self.done.push((self.t, op, r));
            }
            while let Some(e) = self.core.poll_event() {
                moved = true;
                self.events.push((self.t, e));
            }
            if !moved {
                return out;
            }
        }
    }

    /// Steps virtual time through every deadline up to `end`, draining after each.
    fn run_until(&mut self, end: Duration) -> Vec<(Duration, Action)> {
        let mut actions: Vec<(Duration, Action)> = Vec::new();
        for _ in 0..STEPS_MAX {
            let t = self.t;
            actions.extend(self.drain().into_iter().map(|a| (t, a)));
            let next = self.core.poll_timeout().map(|i| i.duration_since(self.base));
            if let Some(n) = next {
                assert!(n >= self.t, "a timer left overdue: {n:?} < {:?}", self.t);
            }
            match next {
                Some(n) if n <= end => {
                    self.t = n;
                    let now = self.now();
                    self.core.handle_timeout(now);
                }
                _ => {
                    self.t = end;
                    return actions;
                }
            }
        }
        panic!("more than {STEPS_MAX} steps before {end:?}");
    }

    fn result(&self, op: OpId) -> Option<&OpResult> {
        self.done.iter().find(|(_, o, _)| *o == op).map(|(_, _, r)| r)
    }

    fn sent(&self, kind: MessageKind) -> usize {
        self.trace.iter().filter(|(_, k, _)| *k == kind).count()
    }
}

fn secs(s: f64) -> Duration {
    Duration::from_secs_f64(s)
}

fn found(req: u32, entry: &[u8]) -> Vec<u8> {
    FindReply { req, entry: entry.to_vec(), asked: 4, stage: "index".into(), directory: Vec::new() }.encode()
}

fn grant(req: u32, session: u32) -> Vec<u8> {
    RelayGrant {
        req,
        code: 0,
        relay: Some("198.18.0.9:33040".parse().unwrap()),
        session,
        token_a: [4; 16],
        leg_b: vec![5; 40],
        idle_timeout_secs: 30,
    }
    .encode()
}

#[test]
fn two_requests_in_flight_at_once_both_complete() {
    let mut b = Bench::new(1, 15);
    let find = b.core.find(b.now(), "bob");
    let fwd = b.core.forward(b.now(), "carol", "", b"hi".to_vec(), Class::User);
    let out = b.drain();
    let [Action::Find(f), Action::Forward(w)] = &out[..] else { panic!("both go out at once: {out:?}") };
    assert_eq!(f.user, "bob");
    assert_ne!(f.req, w.req, "one id counter for all kinds");
    assert_eq!((b.core.pending.epoch_of(find), b.core.pending.epoch_of(fwd)), (Some(1), Some(1)));
    assert!(b.done.is_empty());
    // Answered in the other order.
    b.reply(MessageKind::ForwardAck, &ForwardAck { req: w.req, code: 0, supernode: "sn-c".into() }.encode());
    b.reply(MessageKind::FindReply, &found(f.req, b"entry"));
    b.drain();
    let Some(Ok(Answer::Forwarded(a))) = b.result(fwd) else { panic!("{:?}", b.done) };
    assert_eq!(a.supernode, "sn-c");
    let Some(Ok(Answer::Found(r))) = b.result(find) else { panic!("{:?}", b.done) };
    assert_eq!((r.req, &r.entry[..]), (f.req, &b"entry"[..]));
    assert_eq!(b.core.stats().pending.unmatched, 0);
}

#[test]
fn a_stray_answer_is_counted_and_completes_nothing() {
    let mut b = Bench::rev1(2, 15);
    let find = b.core.find(b.now(), "bob");
    let out = b.drain();
    let [Action::Find(f)] = &out[..] else { panic!("{out:?}") };
    let before = b.core.stats().pending.unmatched;
    // A reply to another id, an ack to a Forward never sent, a grant nobody asked for,
    // and an id-less PublishAck while the lane holds a Find: none is the Find's answer.
    b.reply(MessageKind::FindReply, &found(f.req.wrapping_add(1), b"other"));
    b.reply(MessageKind::ForwardAck, &ForwardAck { req: f.req, code: 0, supernode: String::new() }.encode());
    b.reply(MessageKind::RelayGrant, &grant(f.req, 3));
    b.reply(MessageKind::PublishAck, &PublishAck { code: 0, replicas: 1, detail: String::new() }.encode());
    b.drain();
    assert_eq!(b.core.stats().pending.unmatched - before, 4);
    assert!(b.done.is_empty(), "{:?}", b.done);
    assert!(b.trace.iter().all(|(_, k, _)| *k != MessageKind::RelayRelease), "a stray grant is not ours to release");
    b.reply(MessageKind::FindReply, &found(f.req, b"mine"));
    b.drain();
    let Some(Ok(Answer::Found(r))) = b.result(find) else { panic!("{:?}", b.done) };
    assert_eq!(r.entry, b"mine");
    // Its answer again: the request is done, so this one is a stray too.
    b.reply(MessageKind::FindReply, &found(f.req, b"mine"));
    b.drain();
    assert_eq!(b.core.stats().pending.unmatched - before, 5);
    assert_eq!(b.done.len(), 1);
}

#[test]
fn an_id_less_error_answers_the_lane_request() {
    let mut b = Bench::rev1(3, 15);
    let fwd = b.core.forward(b.now(), "carol", "", b"hi".to_vec(), Class::Presence);
    let find = b.core.find(b.now(), "bob");
    b.drain();
    let e = ErrorMsg { code: ErrorCode::TooManyAttempts, retry_after_secs: 1, detail: "slow down".into() };
    b.reply(MessageKind::Error, &e.encode());
    b.drain();
    assert_eq!(b.result(find), Some(&Err(RequestError::Refused(e))));
    assert_eq!(b.result(fwd), None, "a Forward is never in the lane");
    assert_eq!(b.core.stats().pending.slowed_down, 1);
}

#[test]
fn a_late_grant_for_a_timed_out_allocation_is_released() {
    let mut b = Bench::rev2(4, 15);
    let op = b.core.allocate_relay(b.now(), vec![7; 300]);
    let out = b.drain();
    let [Action::RelayAllocate(r)] = &out[..] else { panic!("{out:?}") };
    let req = r.req;
    b.run_until(secs(3.5));
    assert_eq!(b.result(op), Some(&Err(RequestError::TimedOut("relay_allocate"))));
    // Nothing was heard since it went out: a keepalive probed the super node at once,
    // and its answer kept the link.
    let probes: Vec<_> = b.trace.iter().filter(|(t, k, _)| *k == MessageKind::Keepalive && !t.is_zero()).collect();
    assert_eq!(probes.len(), 1);
    assert_eq!(probes[0].0, secs(3.0));
    assert_eq!(b.core.link().state(), LinkState::Up);

    b.reply(MessageKind::RelayGrant, &grant(req, 77));
    let out = b.drain();
    assert_eq!(out, vec![Action::RelayRelease(RelayRelease { session: 77 })]);
    assert_eq!(b.core.stats().pending.late_grants_released, 1);
    assert_eq!(b.done.len(), 1, "the late grant completes nothing");
    // The tombstone is spent: the same grant again is a stray.
    let unmatched = b.core.stats().pending.unmatched;
    b.reply(MessageKind::RelayGrant, &grant(req, 77));
    assert!(b.drain().is_empty());
    assert_eq!(b.core.stats().pending.unmatched, unmatched + 1);
}

#[test]
fn the_legacy_lane_holds_a_second_publish_until_the_first_is_answered() {
    let mut b = Bench::rev1(5, 15);
    let first = b.core.publish(b.now(), b"entry-1".to_vec());
    let second = b.core.publish(b.now(), b"entry-2".to_vec());
    let fwd = b.core.forward(b.now(), "carol", "", b"hi".to_vec(), Class::Call);
    let out = b.drain();
    assert_eq!(out.len(), 2, "{out:?}");
    assert!(out.contains(&Action::Publish { req: None, entry: b"entry-1".to_vec() }));
    assert!(matches!(&out[..], [_, Action::Forward(_)] | [Action::Forward(_), _]), "the Forward passes the lane");
    // The first is resent at 1 s (same body); the second still waits.
    let out = b.run_until(secs(1.5));
    assert_eq!(
        out.iter().map(|(_, a)| a).collect::<Vec<_>>(),
        vec![&Action::Publish { req: None, entry: b"entry-1".to_vec() }]
    );
    assert_eq!(b.core.stats().pending.resent, 1);
    b.reply(MessageKind::PublishAck, &PublishAck { code: 0, replicas: 3, detail: String::new() }.encode());
    let out = b.drain();
    assert_eq!(out, vec![Action::Publish { req: None, entry: b"entry-2".to_vec() }]);
    let Some(Ok(Answer::Published(ack))) = b.result(first) else { panic!("{:?}", b.done) };
    assert_eq!(ack.replicas, 3);
    assert_eq!(b.result(second), None);
    b.reply(MessageKind::PublishAck, &PublishAck { code: 0, replicas: 2, detail: String::new() }.encode());
    b.drain();
    assert!(matches!(b.result(second), Some(Ok(Answer::Published(a))) if a.replicas == 2));
    assert_eq!(b.result(fwd), None);
}

#[test]
fn a_search_collects_its_parts_in_order() {
    let mut b = Bench::new(7, 15);
    let op = b.core.search(b.now(), "jazz", 10);
    let out = b.drain();
    let [Action::Search(s)] = &out[..] else { panic!("{out:?}") };
    for (index, entry) in [(1u8, b"second"), (0, b"first!")] {
        b.reply(MessageKind::SearchReply, &SearchReply { req: s.req, total: 2, index, entry: entry.to_vec() }.encode());
        b.drain();
    }
    assert_eq!(b.result(op), Some(&Ok(Answer::Searched(vec![b"first!".to_vec(), b"second".to_vec()]))));
}

#[test]
fn a_silent_super_node_is_dead_after_silence_max() {
    let mut b = Bench::new(8, 1);
    b.echo = Echo::Lost;
    b.run_until(secs(20.0));
    // Heard at 0 (the Welcome); silence_max = 2·1 + 5 s.
    assert_eq!(b.events, vec![(secs(7.0), CoreEvent::LinkEnded { epoch: 1, why: Ended::Silent })]);
    assert_eq!(b.sent(MessageKind::Keepalive), 7, "the first at once, then one a second until the end, none after");
    assert_eq!(b.core.poll_timeout(), None);

    // The same link answered stays up, one keepalive a second.
    let mut up = Bench::new(8, 1);
    up.run_until(secs(60.0));
    assert!(up.events.is_empty(), "{:?}", up.events);
    assert_eq!(up.sent(MessageKind::Keepalive), 61);
    assert_eq!(up.core.link().state(), LinkState::Up);
}

#[test]
fn an_unanswered_request_and_probe_end_the_link_long_before_the_silence_limit() {
    let mut b = Bench::new(9, 15);
    b.echo = Echo::Lost;
    let op = b.core.find(b.now(), "bob");
    b.run_until(secs(10.5));
    // Sent at 0, resent at 1 s and 3 s, given up at 10 s; nothing heard since: probed.
    let finds: Vec<_> = b.trace.iter().filter(|(_, k, _)| *k == MessageKind::Find).map(|(t, _, _)| *t).collect();
    assert_eq!(finds, vec![secs(0.0), secs(1.0), secs(3.0)]);
    assert_eq!(b.result(op), Some(&Err(RequestError::TimedOut("find"))));
    assert!(matches!(b.core.link().state(), LinkState::Suspect { .. }));
    assert!(b.events.is_empty());
    b.run_until(secs(40.0));
    assert_eq!(b.events, vec![(secs(11.0), CoreEvent::LinkEnded { epoch: 1, why: Ended::NoAnswer })]);
    // Dead means dead: a new request fails at once and nothing goes out.
    let sent = b.trace.len();
    let late = b.core.find(b.now(), "carol");
    b.drain();
    assert_eq!(b.result(late), Some(&Err(RequestError::LinkDown)));
    assert_eq!(b.trace.len(), sent);
}

#[test]
fn in_a_call_a_silent_super_node_is_gone_after_three_and_a_half_seconds() {
    // At rest (a 15 s period), silence would take 35 s; a call under way makes it 3.5 s,
    // counted from the switch, with a keepalive a second.
    let mut b = Bench::rev2(10, 15);
    b.run_until(secs(10.0));
    let before = b.sent(MessageKind::Keepalive);
    b.echo = Echo::Lost;
    b.core.set_in_call(b.now(), true);
    b.run_until(secs(20.0));
    assert_eq!(b.events, vec![(secs(13.5), CoreEvent::LinkEnded { epoch: 1, why: Ended::Silent })]);
    let pace: Vec<_> = b
        .trace
        .iter()
        .filter(|(t, k, _)| *k == MessageKind::Keepalive && *t >= secs(10.0))
        .map(|(t, _, _)| *t)
        .collect();
    assert_eq!(pace, vec![secs(10.0), secs(11.0), secs(12.0), secs(13.0)]);
    assert_eq!(b.sent(MessageKind::Keepalive) - before, 4);

    // Answered, the call pace keeps the link; back at rest, the period is 15 s again.
    let mut up = Bench::rev2(10, 15);
    up.core.set_in_call(up.now(), true);
    up.run_until(secs(10.0));
    assert!(up.events.is_empty(), "{:?}", up.events);
    assert_eq!(up.sent(MessageKind::Keepalive), 12, "the first, then one a second from the switch");
    up.core.set_in_call(up.now(), false);
    up.run_until(secs(40.0));
    assert_eq!(up.sent(MessageKind::Keepalive), 14, "{:?}", up.trace);
}

#[test]
fn a_check_on_media_silence_ends_a_mute_link_in_a_second_and_a_half() {
    let mut b = Bench::rev2(11, 15);
    b.run_until(secs(5.0));
    b.echo = Echo::Lost;
    let before = b.sent(MessageKind::Keepalive);
    b.core.check(b.now());
    b.core.check(b.now());
    b.run_until(secs(10.0));
    assert_eq!(b.events, vec![(secs(6.5), CoreEvent::LinkEnded { epoch: 1, why: Ended::NoAnswer })]);
    assert_eq!(b.sent(MessageKind::Keepalive) - before, 5, "one at once, then every 300 ms; one check at a time");

    // A live super node answers the first: nothing ends, and the pace is back to 15 s.
    let mut up = Bench::rev2(11, 15);
    up.run_until(secs(5.0));
    let before = up.sent(MessageKind::Keepalive);
    up.core.check(up.now());
    up.run_until(secs(14.0));
    assert!(up.events.is_empty(), "{:?}", up.events);
    assert_eq!(up.sent(MessageKind::Keepalive) - before, 1);
}

#[test]
fn the_send_queue_paces_presence_while_a_call_request_jumps_ahead() {
    let mut b = Bench::new(10, 15);
    b.ack_forwards = true;
    let fwds: Vec<OpId> = (0..200)
        .map(|i| b.core.forward(b.now(), &format!("buddy{i}"), "", b"presence".to_vec(), Class::Presence))
        .collect();
    b.run_until(secs(1.0));
    let relay = b.core.allocate_relay(b.now(), vec![7; 300]);
    let out = b.run_until(secs(10.0));
    let paced: Vec<(Duration, MessageKind)> = b
        .trace
        .iter()
        .filter(|(_, k, _)| matches!(k, MessageKind::Forward | MessageKind::RelayAllocate))
        .map(|(t, k, _)| (*t, *k))
        .collect();
    assert_eq!(paced.len(), 201);
    assert!(fwds.iter().all(|op| matches!(b.result(*op), Some(Ok(Answer::Forwarded(_))))));
    // The bucket: the k-th send no earlier than (k − burst) / rate.
    let rate = f64::from(SEND_RATE_PER_SEC);
    for (k, (t, _)) in paced.iter().enumerate() {
        let earliest = (k as f64 + 1.0 - f64::from(SEND_BURST)) / rate;
        assert!(t.as_secs_f64() >= earliest - 1e-6, "send {k} at {t:?}, before {earliest}");
    }
    // The super node's own rule: at most 50 in any one second.
    for (t, _) in &paced {
        let within = paced.iter().filter(|(u, _)| *u >= *t && *u < *t + secs(1.0)).count();
        assert!(within <= 50, "{within} sends in the second from {t:?}");
    }
    // The relay request went at the next token, ahead of the ~150 presence sends queued.
    let i = paced.iter().position(|(_, k)| *k == MessageKind::RelayAllocate).unwrap();
    assert!(paced[i].0 - secs(1.0) <= secs(1.0 / rate), "sent at {:?}", paced[i].0);
    assert!(paced.len() - i > 140, "only {} sends after it", paced.len() - i);
    assert!(out.iter().any(|(_, a)| matches!(a, Action::RelayAllocate(_))));
    assert_eq!(b.result(relay), Some(&Err(RequestError::TimedOut("relay_allocate"))), "nobody answered it");
    // 200 at 45 a second after a burst of 5: the last goes out at about 4.3 s.
    let last = paced.last().unwrap().0;
    assert!(last >= secs(195.0 / rate) && last < secs(196.0 / rate + 0.05), "{last:?}");
}

#[test]
fn too_many_attempts_halves_the_rate_for_a_second() {
    let mut b = Bench::new(11, 15);
    for i in 0..100 {
        b.core.forward(b.now(), &format!("buddy{i}"), "", b"presence".to_vec(), Class::Presence);
    }
    let out = b.drain();
    let Action::Forward(first) = &out[0] else { panic!() };
    b.reply(
        MessageKind::ForwardAck,
        &ForwardAck { req: first.req, code: ErrorCode::TooManyAttempts.code(), supernode: String::new() }.encode(),
    );
    b.run_until(secs(3.0));
    let times: Vec<Duration> =
        b.trace.iter().filter(|(_, k, _)| *k == MessageKind::Forward).map(|(t, _, _)| *t).collect();
    let in_window = |from: f64, to: f64| times.iter().filter(|t| **t >= secs(from) && **t < secs(to)).count();
    assert_eq!(in_window(0.0, 0.001), usize::try_from(SEND_BURST).unwrap());
    // Half of 45 a second while slowed, the full rate after.
    assert!((26..=28).contains(&in_window(0.0, 1.0)), "{}", in_window(0.0, 1.0));
    assert!((44..=46).contains(&in_window(1.0, 2.0)), "{}", in_window(1.0, 2.0));
    assert_eq!(b.core.stats().pending.slowed_down, 1);
}

/// A busy run, as a trace that names no key-dependent byte.
fn scenario(seed: u64) -> (Trace, Done) {
    let mut b = Bench::new(seed, 2);
    b.ack_forwards = true;
    for i in 0..30 {
        b.core.forward(b.now(), &format!("buddy{i}"), "", b"presence".to_vec(), Class::Presence);
    }
    b.core.find(b.now(), "bob");
    b.core.publish(b.now(), b"entry".to_vec());
    b.core.allocate_relay(b.now(), vec![7; 300]);
    let out = b.run_until(secs(0.5));
    let Some((_, Action::RelayAllocate(r))) = out.iter().find(|(_, a)| matches!(a, Action::RelayAllocate(_))) else {
        panic!("{out:?}")
    };
    b.reply(MessageKind::RelayGrant, &grant(r.req, 9));
    let out = b.run_until(secs(1.5));
    let Some((_, Action::Find(f))) = out.iter().find(|(_, a)| matches!(a, Action::Find(_))) else { panic!("{out:?}") };
    b.reply(MessageKind::FindReply, &found(f.req, b"bob's entry"));
    b.run_until(secs(30.0));
    (b.trace, b.done)
}

#[test]
fn the_same_seed_gives_the_same_outputs() {
    let (trace, done) = scenario(42);
    assert!(trace.len() > 40 && done.len() == 33, "{} {}", trace.len(), done.len());
    assert_eq!(scenario(42), (trace.clone(), done.clone()));
    // Another seed starts the ids elsewhere: the same shape, other bytes.
    let (other, other_done) = scenario(43);
    assert_ne!(other, trace);
    assert_eq!(other.len(), trace.len());
    assert_eq!(other_done.len(), done.len());
}

#[test]
fn notices_keepalives_and_strangers() {
    let mut b = Bench::new(12, 15);
    let op = b.core.keepalive(b.now(), secs(2.0));
    b.drain();
    assert_eq!(b.result(op), Some(&Ok(Answer::Observed(host_addr()))));
    b.reply(MessageKind::Notice, b"a notice");
    b.drain();
    assert_eq!(b.events, vec![(Duration::ZERO, CoreEvent::Notice(b"a notice".to_vec()))]);
    // The same frame again (a replay), and one from another address: dropped, counted.
    let f = b.sn.seal(MessageKind::Notice, b"again");
    b.core.handle_datagram(b.now(), "198.18.0.2:33033".parse().unwrap(), &f);
    b.core.handle_datagram(b.now(), sn_addr(), &f);
    b.core.handle_datagram(b.now(), sn_addr(), &f);
    b.drain();
    assert_eq!(b.events.len(), 2);
    assert_eq!((b.core.stats().foreign, b.core.stats().rejected), (1, 1));
    // The super node says Bye: the link ends, and what was pending fails.
    let find = b.core.find(b.now(), "bob");
    b.reply(MessageKind::Bye, &Bye { reason: 0 }.encode());
    b.drain();
    assert_eq!(b.result(find), Some(&Err(RequestError::LinkDown)));
    assert_eq!(b.events[2].1, CoreEvent::LinkEnded { epoch: 1, why: Ended::ByeFromSupernode });
    assert_eq!(b.core.poll_timeout(), None);
}

#[test]
fn over_tcp_nothing_is_resent_and_bye_closes_the_connection() {
    let (session, mut sn) = establish(15);
    let base = Instant::now();
    let now = |t: f64| Now { mono: base + secs(t), unix_ms: T0 * 1000 };
    let conn = ConnId(3);
    let mut core = CoreLink::new(session, Dest::Tcp(conn), now(0.0), &mut rand::rngs::StdRng::seed_from_u64(1));
    let find = core.find(now(0.0), "bob");
    // The first frame asks the revision; its answer is not handed over here.
    let hello = core.poll_transmit().unwrap();
    let answer = sn.on_frame(&frame::decode(sn_addr(), &hello.bytes).unwrap(), T0).unwrap();
    assert!(matches!(&answer[..], [Action::Send(MessageKind::KeepaliveAck, _)]), "{answer:?}");
    let t = core.poll_transmit().unwrap();
    assert_eq!(t.dest, Dest::Tcp(conn));
    let Action::Find(f) = sn.on_frame(&frame::decode(sn_addr(), &t.bytes).unwrap(), T0).unwrap().remove(0) else {
        panic!()
    };
    for at in [1.0, 3.0, 5.0] {
        core.handle_timeout(now(at));
        assert_eq!(core.poll_transmit(), None, "a TCP link loses nothing: no resend at {at} s");
    }
    // A datagram from the super node's address is not the TCP link's.
    let reply = sn.seal(MessageKind::FindReply, &found(f.req, b"e"));
    core.handle_datagram(now(5.0), sn_addr(), &reply);
    assert_eq!(core.poll_completion(), None);
    core.handle_tcp(now(5.0), ConnId(4), TcpEvent::Frame(reply.clone()));
    assert_eq!(core.poll_completion(), None);
    core.handle_tcp(now(5.0), conn, TcpEvent::Frame(reply));
    assert!(matches!(core.poll_completion(), Some((op, Ok(Answer::Found(_)))) if op == find));
    assert_eq!(core.stats().foreign, 2);

    core.bye();
    let t = core.poll_transmit().unwrap();
    let actions = sn.on_frame(&frame::decode(sn_addr(), &t.bytes).unwrap(), T0 + 5).unwrap();
    assert_eq!(actions, vec![Action::Close("bye")]);
    assert!(matches!(core.poll_effect(), Some((_, Effect::TcpClose { conn: c })) if c == conn));
    assert_eq!(core.poll_event(), Some(CoreEvent::LinkEnded { epoch: 1, why: Ended::ByeSent }));

    // A connection that drops ends the link without a close of our own.
    let (session, _sn) = establish(15);
    let mut core = CoreLink::new(session, Dest::Tcp(conn), now(0.0), &mut rand::rngs::StdRng::seed_from_u64(1));
    core.handle_tcp(now(1.0), conn, TcpEvent::Closed);
    assert_eq!(core.poll_event(), Some(CoreEvent::LinkEnded { epoch: 1, why: Ended::ConnectionClosed }));
    assert_eq!(core.poll_effect(), None);
}

fn published(replicas: u8) -> PublishAck {
    PublishAck { code: 0, replicas, detail: String::new() }
}

/// Hands a sealed frame of the super node's to the core.
fn deliver(b: &mut Bench, frame: &[u8]) {
    let now = b.now();
    b.core.handle_datagram(now, sn_addr(), frame);
}

#[test]
fn the_revision_is_learnt_from_the_first_keepalives_echo() {
    // A revision-2 super node echoes the id: the first frame was a keepalive with one.
    let mut b = Bench::new(20, 15);
    assert_eq!(b.core.revision(), Revision::Unknown);
    b.drain();
    assert_eq!(b.trace.first().map(|(t, k, _)| (*t, *k)), Some((Duration::ZERO, MessageKind::Keepalive)));
    assert_eq!(b.sn.revision(), crate::wire::message::Revision::Two, "the super node saw an id");
    assert_eq!(b.core.revision(), Revision::Rev2);
    assert_eq!(b.core.stats().pending.unmatched, 0, "the link's own echo is no stray");

    // An echo of 0 is a revision-1 super node's.
    let b = Bench::rev1(21, 15);
    assert_eq!(b.core.stats().pending.unmatched, 0);

    // No echo for a second: revision 1.
    let mut b = Bench::new(22, 15);
    b.echo = Echo::Hold;
    b.run_until(secs(0.999));
    assert_eq!(b.core.revision(), Revision::Unknown);
    b.run_until(secs(1.0));
    assert_eq!(b.core.revision(), Revision::Rev1);
    // The echo late still proves revision 2; later echoes of 0 do not undo it.
    let late = b.held.remove(0);
    deliver(&mut b, &late);
    assert_eq!(b.core.revision(), Revision::Rev2);
    b.reply(MessageKind::KeepaliveAck, &Observed { id: 0, addr: host_addr() }.encode());
    assert_eq!(b.core.revision(), Revision::Rev2);
    // An echo of an id nobody sent is a stray, and proves nothing.
    let mut b = Bench::new(23, 15);
    b.echo = Echo::Lost;
    b.reply(MessageKind::KeepaliveAck, &Observed { id: 5, addr: host_addr() }.encode());
    assert_eq!((b.core.revision(), b.core.stats().pending.unmatched), (Revision::Unknown, 1));
}

#[test]
fn under_revision_2_two_publishes_and_a_find_are_in_flight_at_once() {
    let mut b = Bench::rev2(24, 15);
    let p1 = b.core.publish(b.now(), b"entry-1".to_vec());
    let p2 = b.core.publish(b.now(), b"entry-2".to_vec());
    let find = b.core.find(b.now(), "bob");
    let out = b.drain();
    let [Action::Publish { req: Some(r1), entry: e1 }, Action::Publish { req: Some(r2), entry: e2 }, Action::Find(f)] =
        &out[..]
    else {
        panic!("all three go out at once, the publishes with ids: {out:?}")
    };
    assert_eq!((&e1[..], &e2[..]), (&b"entry-1"[..], &b"entry-2"[..]));
    assert_eq!(b.core.pending.stats().resent, 0);
    let (r1, r2, fr) = (*r1, *r2, f.req);
    assert!(r1 != r2 && r2 != fr && r1 != fr, "one id each");
    // Answered last first; each answer completes its own request.
    b.reply(MessageKind::FindReply, &found(fr, b"bob's"));
    b.drain();
    assert!(matches!(b.result(find), Some(Ok(Answer::Found(r))) if r.entry == b"bob's"));
    assert_eq!((b.result(p1), b.result(p2)), (None, None));
    let (kind, f2) = b.sn.publish_answer(Some(r2), published(2));
    assert_eq!(kind, MessageKind::PublishReply);
    deliver(&mut b, &f2);
    b.drain();
    assert_eq!(b.result(p2), Some(&Ok(Answer::Published(published(2)))));
    assert_eq!(b.result(p1), None);
    b.reply(MessageKind::PublishReply, &PublishReply { req: r1, ack: published(3) }.encode());
    b.drain();
    assert_eq!(b.result(p1), Some(&Ok(Answer::Published(published(3)))));
    // The same answer again, and a revision-1 PublishAck: nothing waits for either.
    b.reply(MessageKind::PublishReply, &PublishReply { req: r1, ack: published(3) }.encode());
    b.reply(MessageKind::PublishAck, &published(1).encode());
    b.drain();
    assert_eq!((b.done.len(), b.core.stats().pending.unmatched), (3, 2));
}

#[test]
fn a_request_error_completes_exactly_its_request() {
    let mut b = Bench::rev2(25, 15);
    let bob = b.core.find(b.now(), "bob");
    let carol = b.core.find(b.now(), "carol");
    let publish = b.core.publish(b.now(), b"entry".to_vec());
    let relay = b.core.allocate_relay(b.now(), vec![7; 300]);
    let out = b.drain();
    assert_eq!(out.len(), 4, "all out at once: {out:?}");
    let req_of = |user: &str| {
        out.iter()
            .find_map(|a| match a {
                Action::Find(f) if f.user == user => Some(f.req),
                _ => None,
            })
            .unwrap()
    };
    let e = ErrorMsg { code: ErrorCode::TooManyAttempts, retry_after_secs: 1, detail: "slow down".into() };
    let (kind, frame) = b.sn.request_error(req_of("carol"), e.clone());
    assert_eq!(kind, MessageKind::RequestError);
    deliver(&mut b, &frame);
    b.drain();
    assert_eq!(b.result(carol), Some(&Err(RequestError::Refused(e.clone()))));
    assert_eq!(b.done.len(), 1, "the others still wait: {:?}", b.done);
    assert_eq!(b.core.stats().pending.slowed_down, 1);
    // Id 0 (a request the super node could not read) completes nothing; nor does an id
    // nobody has out, nor a revision-1 Error.
    let (_, frame) = b.sn.request_error(0, ErrorMsg::new(ErrorCode::Malformed, "find: short"));
    deliver(&mut b, &frame);
    let (_, frame) = b.sn.request_error(req_of("carol"), e.clone());
    deliver(&mut b, &frame);
    b.reply(MessageKind::Error, &e.encode());
    b.drain();
    assert_eq!(b.done.len(), 1);
    let stats = b.core.stats().pending;
    assert_eq!((stats.errors_without_id, stats.unmatched), (1, 2));
    // The rest complete from their own answers.
    b.reply(MessageKind::FindReply, &found(req_of("bob"), b"bob's"));
    let Some(Action::RelayAllocate(r)) = out.iter().find(|a| matches!(a, Action::RelayAllocate(_))) else { panic!() };
    b.reply(MessageKind::RelayGrant, &grant(r.req, 8));
    let Some(Action::Publish { req: Some(p), .. }) = out.iter().find(|a| matches!(a, Action::Publish { .. })) else {
        panic!()
    };
    let (_, frame) = b.sn.request_error(*p, ErrorMsg::new(ErrorCode::Internal, "index busy"));
    deliver(&mut b, &frame);
    b.drain();
    assert!(matches!(b.result(bob), Some(Ok(Answer::Found(_)))));
    assert!(matches!(b.result(relay), Some(Ok(Answer::Granted(g))) if g.session == 8));
    assert!(matches!(b.result(publish), Some(Err(RequestError::Refused(m))) if m.code == ErrorCode::Internal));
}

#[test]
fn a_keepalive_answer_completes_only_the_keepalive_with_its_id() {
    let mut b = Bench::rev2(26, 15);
    b.echo = Echo::Hold;
    let k1 = b.core.keepalive(b.now(), secs(2.0));
    let k2 = b.core.keepalive(b.now(), secs(2.0));
    b.drain();
    assert_eq!(b.held.len(), 2);
    let second = b.held.pop().unwrap();
    deliver(&mut b, &second);
    b.drain();
    assert_eq!(b.result(k2), Some(&Ok(Answer::Observed(host_addr()))));
    assert_eq!(b.result(k1), None, "another keepalive's answer is not this one's");
    let first = b.held.pop().unwrap();
    deliver(&mut b, &first);
    b.drain();
    assert_eq!(b.result(k1), Some(&Ok(Answer::Observed(host_addr()))));
    assert_eq!(b.core.stats().pending.unmatched, 0);

    // Revision 1 echoes no id: its answer serves every keepalive waiting, as it always did.
    let mut b = Bench::rev1(27, 15);
    b.echo = Echo::Hold;
    let k1 = b.core.keepalive(b.now(), secs(2.0));
    let k2 = b.core.keepalive(b.now(), secs(2.0));
    b.drain();
    b.reply(MessageKind::KeepaliveAck, &Observed { id: 0, addr: host_addr() }.encode());
    b.drain();
    assert!(b.result(k1).is_some() && b.result(k2).is_some());
}

#[test]
fn a_revision_1_super_node_keeps_the_legacy_lane() {
    let mut b = Bench::rev1(28, 15);
    let publish = b.core.publish(b.now(), b"entry".to_vec());
    let find = b.core.find(b.now(), "bob");
    let fwd = b.core.forward(b.now(), "carol", "", b"hi".to_vec(), Class::User);
    let out = b.drain();
    assert!(matches!(&out[..], [Action::Publish { req: None, .. }, Action::Forward(_)]), "{out:?}");
    // An id-less Error is the lane's request's; then the Find may go.
    let e = ErrorMsg::new(ErrorCode::Internal, "index busy");
    b.reply(MessageKind::Error, &e.encode());
    let out = b.drain();
    assert_eq!(b.result(publish), Some(&Err(RequestError::Refused(e))));
    let [Action::Find(f)] = &out[..] else { panic!("{out:?}") };
    assert_eq!(b.result(find), None);
    assert_eq!(b.result(fwd), None);
    assert_eq!(f.user, "bob");
}

#[test]
fn a_request_sent_before_the_revision_was_known_keeps_its_lane_place() {
    let mut b = Bench::new(29, 15);
    b.echo = Echo::Hold;
    let bob = b.core.find(b.now(), "bob");
    let publish = b.core.publish(b.now(), b"entry".to_vec());
    let out = b.drain();
    assert!(matches!(&out[..], [Action::Find(_)]), "the lane holds the publish: {out:?}");
    let echo = b.held.remove(0);
    deliver(&mut b, &echo);
    let out = b.drain();
    assert_eq!(b.core.revision(), Revision::Rev2);
    assert!(matches!(&out[..], [Action::Publish { req: Some(_), .. }]), "now with an id: {out:?}");
    // An id-less Error still answers the Find sent in revision 1's manner, not the PublishReq.
    let e = ErrorMsg::new(ErrorCode::TooManyAttempts, "slow down");
    b.reply(MessageKind::Error, &e.encode());
    b.drain();
    assert_eq!(b.result(bob), Some(&Err(RequestError::Refused(e))));
    assert_eq!(b.result(publish), None);
}

#[test]
fn a_call_keeps_the_link_at_its_pace_and_notices_a_dead_super_node_in_seconds() {
    // Welcome's pace: a keepalive every 15 s, dead after 35 s of silence.
    let mut idle = Bench::new(21, 15);
    idle.echo = Echo::Lost;
    idle.run_until(secs(40.0));
    assert_eq!(idle.events, vec![(secs(35.0), CoreEvent::LinkEnded { epoch: 1, why: Ended::Silent })]);

    // While a call has media: one a second, dead after 3.5 s.
    let mut b = Bench::new(21, 15);
    b.echo = Echo::Lost;
    b.core.set_in_call(b.now(), true);
    b.run_until(secs(10.0));
    assert_eq!(b.events, vec![(secs(3.5), CoreEvent::LinkEnded { epoch: 1, why: Ended::Silent })]);
    assert_eq!(b.sent(MessageKind::Keepalive), 5, "the hello, one as the call starts, then at 1, 2 and 3 s");

    // The call over, the Welcome's pace is back.
    let mut after = Bench::new(21, 15);
    after.core.set_in_call(after.now(), true);
    after.run_until(secs(2.5));
    after.core.set_in_call(after.now(), false);
    after.echo = Echo::Lost;
    after.run_until(secs(60.0));
    let [(at, CoreEvent::LinkEnded { why: Ended::Silent, .. })] = after.events.as_slice() else {
        panic!("{:?}", after.events)
    };
    assert!(*at > secs(30.0), "{at:?}");
}

#[test]
fn a_replaced_link_is_the_next_epoch_over_the_same_request_table() {
    let mut b = Bench::rev2(22, 15);
    b.echo = Echo::Lost;
    let before = b.core.find(b.now(), "bob");
    let req_of = |actions: &[Action]| {
        actions.iter().find_map(|a| match a {
            Action::Find(f) => Some(f.req),
            _ => None,
        })
    };
    let first = req_of(&b.drain()).expect("the find went out");
    assert_eq!(b.core.link().epoch(), 1);

    // Another session (a failover's): the old link ends, its request fails, and the
    // table goes on numbering where it was.
    let (session, sn) = establish(15);
    b.sn = sn;
    b.echo = Echo::Session;
    let now = b.now();
    b.core.replace(session, Dest::Udp(sn_addr()), now, &mut rand::rngs::StdRng::seed_from_u64(23));
    assert_eq!(b.core.link().epoch(), 2);
    assert_eq!(b.core.revision(), Revision::Unknown, "the new super node's revision is asked again");
    b.drain();
    assert_eq!(b.core.revision(), Revision::Rev2);
    assert_eq!(b.result(before), Some(&Err(RequestError::LinkDown)));
    assert!(matches!(b.events.as_slice(), [(_, CoreEvent::LinkEnded { epoch: 1, why: Ended::ConnectionClosed })]));
    let after = b.core.find(b.now(), "bob");
    let second = req_of(&b.drain()).expect("the find went out on the new link");
    assert_eq!(second, first.wrapping_add(1), "one counter for both links");
    assert!(after > before, "operation ids go on too");
    b.reply(MessageKind::FindReply, &found(second, b"entry"));
    b.drain();
    assert!(matches!(b.result(after), Some(Ok(Answer::Found(_)))));
}
