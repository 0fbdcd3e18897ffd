//! The ladder driven by hand: what it claims, how attempts end, its timers. Whole
//! handshakes through NATs are in `core::sim::ladder`.

use super::*;
use crate::crypto::credential::{Claims, CredentialKind};
use crate::crypto::keys::tests::test_key;
use crate::host::core::io::Framing;
use crate::host::ladder::Stage;
use crate::wire::frame;
use crate::wire::message::{ErrorCode, ErrorMsg, MessageKind};
use rand::SeedableRng;

fn a(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

fn entry(addr: SocketAddr) -> CacheEntry {
    CacheEntry {
        kind: NodeKind::Supernode,
        name: String::new(),
        udp: Some(addr),
        tcp: Some(addr),
        last_success: None,
        rtt_ms: None,
        failures: 0,
    }
}

fn ladder(cache: &[SocketAddr], udp_only: bool) -> Ladder {
    let key = test_key(2);
    let credential = Credential::issue(
        Claims {
            kind: CredentialKind::Host,
            subject: "alice".into(),
            public_key: key.public().clone(),
            issued_at: 1_700_000_000,
            expires_at: 1_700_086_400,
            serial: 1,
        },
        &test_key(0),
    );
    let me = Identity { trusted: TrustedKeys::new(vec![test_key(0).public().clone()]), credential, key };
    let mut entries: Vec<CacheEntry> = cache.iter().copied().map(entry).collect();
    if udp_only {
        entries.iter_mut().for_each(|e| e.tcp = None);
    }
    let settings = LadderSettings {
        ladder: LadderConfig { fallback_ports: Vec::new(), ..LadderConfig::default() },
        timeouts: Timeouts { step: Duration::from_secs(1), budget: Duration::from_secs(60) },
        local_port: 40000,
    };
    Ladder::new(me, settings, Cache::new(entries), 7..9, StdRng::seed_from_u64(1))
}

fn at(base: Instant, ms: u64) -> Now {
    Now { mono: base + Duration::from_millis(ms), unix_ms: 1_700_000_000_000 + ms }
}

fn transmits(l: &mut Ladder) -> Vec<Transmit> {
    std::iter::from_fn(|| l.poll_transmit()).collect()
}

fn effects(l: &mut Ladder) -> Vec<Effect> {
    std::iter::from_fn(|| l.poll_effect()).map(|(_, e)| e).collect()
}

#[test]
fn only_the_current_attempts_datagrams_are_claimed_and_a_refusal_moves_on() {
    let (sn_a, sn_b) = (a("198.18.0.1:33033"), a("198.18.0.2:33033"));
    let base = Instant::now();
    let mut l = ladder(&[sn_a, sn_b], true);
    assert!(!l.is_busy() && l.poll_timeout().is_none());
    l.login(at(base, 0));
    let hello = transmits(&mut l);
    assert_eq!(hello.iter().map(|t| t.dest).collect::<Vec<_>>(), vec![Dest::Udp(sn_a)]);
    assert_eq!(l.poll_timeout(), Some(base + Duration::from_millis(500)), "the half-step resend");

    // From anyone else: not the ladder's. From the attempt's node: the ladder's, even
    // when it is no answer (a stray frame is dropped and the attempt goes on).
    assert!(!l.handle_datagram(at(base, 10), sn_b, b"media"));
    assert!(l.handle_datagram(at(base, 10), sn_a, b"garbage"));
    assert_eq!(l.run().unwrap().log().len(), 0);

    // The same Hello again at half a step (its clear nonce aside), then the step ends.
    l.handle_timeout(at(base, 500));
    let again = transmits(&mut l);
    let payload = |t: &Transmit| frame::decode(sn_a, &t.bytes).unwrap().payload.to_vec();
    assert_eq!((again.len(), again[0].dest, payload(&again[0])), (1, hello[0].dest, payload(&hello[0])));
    assert_eq!(l.poll_timeout(), Some(base + Duration::from_millis(1000)));
    l.handle_timeout(at(base, 999));
    assert!(transmits(&mut l).is_empty(), "nothing before its time");

    // sn-a refuses (its credential revoked, say): logged with its words, and sn-b next.
    let refusal = ErrorMsg::new(ErrorCode::Revoked, "this super node is revoked").encode();
    let f = frame::encode_plain(sn_a, MessageKind::Error, 0, &refusal);
    assert!(l.handle_datagram(at(base, 999), sn_a, &f));
    let next = transmits(&mut l);
    assert_eq!(next.iter().map(|t| t.dest).collect::<Vec<_>>(), vec![Dest::Udp(sn_b)]);
    let log = l.run().unwrap().log().to_vec();
    assert_eq!(log.len(), 1);
    assert!(log[0].outcome.contains("revoked"), "{}", log[0].outcome);
    assert!(!l.handle_datagram(at(base, 999), sn_a, &f), "sn-a's attempt is over");

    // The system refuses a send to sn-b (a port unreachable came back): logged as today.
    assert!(!l.on_send_failed(at(base, 1000), sn_a, "refused"), "not the current attempt");
    assert!(l.on_send_failed(at(base, 1000), sn_b, "Connection refused (os error 111)"));
    let Some(Outcome::Failed { purpose, error, attempts }) = l.poll_outcome() else { panic!() };
    assert_eq!(purpose, Purpose::Login);
    assert_eq!(attempts[1].outcome, "Connection refused (os error 111)");
    assert_eq!(attempts.iter().map(|a| a.stage).collect::<Vec<_>>(), vec![Stage::CachedUdp; 2]);
    let msg = error.to_string();
    assert!(msg.contains("after 2 attempts") && msg.contains("revoked"), "the telling error kept: {msg}");
    // The cache counts both failures and is written; a failed login is no disconnection.
    let saved = effects(&mut l);
    let [Effect::SaveCache(entries)] = saved.as_slice() else { panic!("{saved:?}") };
    assert!(entries.iter().all(|e| e.failures == 1), "{entries:?}");
    assert!(l.poll_event().is_none());
    assert!(!l.is_busy() && l.poll_timeout().is_none());
}

#[test]
fn a_tcp_attempt_asks_for_a_connection_and_closes_it_when_its_step_ends() {
    let sn_a = a("198.18.0.1:33033");
    let base = Instant::now();
    let mut l = ladder(&[sn_a], false);
    l.login(at(base, 0));
    transmits(&mut l);
    l.handle_timeout(at(base, 500));
    l.handle_timeout(at(base, 1000));
    assert_eq!(transmits(&mut l).len(), 1, "the resend; then the UDP step ended");
    let asked = effects(&mut l);
    assert_eq!(asked, vec![Effect::TcpConnect { conn: ConnId(7), addr: sn_a, framing: Framing::Wire }]);
    assert_eq!(l.poll_timeout(), Some(base + Duration::from_millis(2000)), "one step for connect and handshake");

    // Another connection's events are not the ladder's; its own connect sends the Hello.
    assert!(!l.handle_tcp(at(base, 1010), ConnId(8), TcpEvent::Closed));
    let local = a("10.0.0.2:50000");
    assert!(l.handle_tcp(at(base, 1020), ConnId(7), TcpEvent::Connected { local }));
    let hello = transmits(&mut l);
    assert_eq!(hello.iter().map(|t| t.dest).collect::<Vec<_>>(), vec![Dest::Tcp(ConnId(7))]);
    l.handle_timeout(at(base, 1500));
    assert!(transmits(&mut l).is_empty(), "TCP is reliable: no resend");

    l.handle_timeout(at(base, 2000));
    let Some(Outcome::Failed { attempts, .. }) = l.poll_outcome() else { panic!() };
    let got: Vec<(&str, &str)> = attempts.iter().map(|a| (a.transport, a.outcome.as_str())).collect();
    assert_eq!(got, vec![("udp", "timeout"), ("tcp", "timeout")]);
    let after = effects(&mut l);
    assert_eq!(after[0], Effect::TcpClose { conn: ConnId(7) }, "{after:?}");

    // A refused connect needs no close, and the next connection gets the next id.
    let mut l = ladder(&[sn_a, a("198.18.0.2:33033")], false);
    l.login(at(base, 0));
    l.handle_timeout(at(base, 1000));
    l.handle_timeout(at(base, 2000));
    effects(&mut l);
    assert!(l.handle_tcp(at(base, 2001), ConnId(7), TcpEvent::ConnectFailed("connection refused".into())));
    let next = effects(&mut l);
    assert_eq!(next, vec![Effect::TcpConnect { conn: ConnId(8), addr: a("198.18.0.2:33033"), framing: Framing::Wire }]);
    assert_eq!(l.run().unwrap().log().last().unwrap().outcome, "connection refused");
    // stop() closes the connection under way, and the ladder rests.
    l.stop();
    assert_eq!(effects(&mut l), vec![Effect::TcpClose { conn: ConnId(8) }]);
    assert!(!l.is_busy() && l.poll_timeout().is_none());
}

#[test]
fn a_rejoin_leaves_the_lost_node_out_and_waits_out_its_pause_on_a_timer() {
    let (sn_a, sn_b) = (a("198.18.0.1:33033"), a("198.18.0.2:33033"));
    let base = Instant::now();
    let mut cache = vec![entry(sn_a), entry(sn_b)];
    cache[0].name = "sn-a".into();
    cache.iter_mut().for_each(|e| e.tcp = None);
    let mut l = ladder(&[], true);
    l.cache = Cache::new(cache);
    let lost = Lost { name: "sn-a".into(), addr: sn_a };
    l.rejoin(at(base, 0), lost.clone());
    let sent = transmits(&mut l);
    assert_eq!(sent.iter().map(|t| t.dest).collect::<Vec<_>>(), vec![Dest::Udp(sn_b)], "sn-a left out");
    // A second rejoin while one runs changes nothing.
    l.rejoin(at(base, 10), lost.clone());
    assert!(transmits(&mut l).is_empty());

    l.handle_timeout(at(base, 500));
    l.handle_timeout(at(base, 1000));
    let Some(Outcome::Failed { purpose, .. }) = l.poll_outcome() else { panic!() };
    assert_eq!(purpose, Purpose::Rejoin(lost.clone()));
    assert_eq!(l.poll_event(), Some(Event::Disconnected));
    assert!(l.is_busy(), "pausing");
    assert_eq!(l.poll_timeout(), Some(base + Duration::from_millis(1000) + REJOIN_PAUSE));
    transmits(&mut l);
    l.handle_timeout(at(base, 5999));
    assert!(transmits(&mut l).is_empty(), "nothing before the pause ends");
    l.handle_timeout(at(base, 6000));
    assert_eq!(transmits(&mut l).iter().map(|t| t.dest).collect::<Vec<_>>(), vec![Dest::Udp(sn_b)]);

    // A rejoin asked for during the pause starts at once.
    l.handle_timeout(at(base, 6500));
    l.handle_timeout(at(base, 7000));
    assert!(matches!(l.poll_outcome(), Some(Outcome::Failed { .. })));
    transmits(&mut l);
    l.rejoin(at(base, 7100), lost);
    assert_eq!(transmits(&mut l).len(), 1, "no waiting for the pause");
}

#[test]
fn the_budget_ends_a_run_before_its_plan_does() {
    let base = Instant::now();
    let cache: Vec<SocketAddr> = (1..=5).map(|i| a(&format!("198.18.0.{i}:33033"))).collect();
    let mut l = ladder(&cache, true);
    l.settings.timeouts.budget = Duration::from_millis(1500);
    l.login(at(base, 0));
    for ms in [500, 1000, 1500, 2000] {
        l.handle_timeout(at(base, ms));
    }
    let Some(Outcome::Failed { attempts, error, .. }) = l.poll_outcome() else { panic!() };
    assert_eq!(attempts.len(), 2, "the third would start past the budget");
    assert!(error.to_string().contains("after 2 attempts"), "{error}");
}
