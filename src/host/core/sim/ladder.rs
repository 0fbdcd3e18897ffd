//! The core's ladder in the world: hosts that log in through `core::ladder` over their
//! cache, behind every kind of NAT, to super nodes that are up, dead or unreachable
//! over UDP; NAT discovery; and the failover to another super node when a link dies,
//! while the host keeps handling everything else.

use super::host::Run;
use super::nat::{Cone, NatFn, NoNat, Symmetric, UdpBlocked};
use super::supernode::SnMode;
use super::{LinkSpec, NodeId, TraceRow, What, World};
use crate::host::buddies::Event;
use crate::host::cache::{CacheEntry, NodeKind};
use crate::host::connect::Timeouts;
use crate::host::core::CoreEvent;
use crate::host::core::io::Dest;
use crate::host::core::ladder::{Lost, Purpose, REJOIN_PAUSE};
use crate::host::core::link::LinkState;
use crate::host::core::pending::Answer;
use crate::host::ladder::{LadderConfig, Stage};
use crate::nat::NatKind;
use crate::wire::MessageKind;
use crate::wire::message::SupernodeInfo;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

const MAPPING_TTL: Duration = Duration::from_secs(30);
const STEP: Duration = Duration::from_secs(1);

fn a(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

fn secs(s: f64) -> Duration {
    Duration::from_secs_f64(s)
}

fn timeouts() -> Timeouts {
    Timeouts { step: STEP, budget: Duration::from_secs(60) }
}

fn sn(n: u8) -> SocketAddr {
    SocketAddr::new(IpAddr::from([198, 18, 0, n]), 33033)
}

/// A cached super node reachable on `addr` over UDP and TCP.
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

fn nat(kind: &str) -> Box<dyn NatFn> {
    let ip = IpAddr::from([198, 18, 10, 1]);
    match kind {
        "public" => Box::new(NoNat::new(ip)),
        "cone" => Box::new(Cone::new(ip, MAPPING_TTL)),
        "symmetric" => Box::new(Symmetric::new(ip, MAPPING_TTL)),
        "sequential" => Box::new(Symmetric::sequential(ip, MAPPING_TTL)),
        "udp_blocked" => Box::new(UdpBlocked::new(ip)),
        other => panic!("{other}"),
    }
}

fn private(kind: &str) -> SocketAddr {
    if kind == "public" { a("198.18.10.1:40000") } else { a("10.0.0.2:40000") }
}

fn host(w: &mut World, kind: &str, cache: &[SocketAddr], bootstrap: &[SocketAddr]) -> NodeId {
    let cfg = LadderConfig { bootstrap: bootstrap.to_vec(), ..LadderConfig::default() };
    let cache = cache.iter().copied().map(entry).collect();
    w.add_ladder_host("alice", private(kind), nat(kind), cache, cfg, timeouts())
}

/// Each attempt as (stage, transport, address, outcome).
fn log(r: &Run) -> Vec<(Stage, &'static str, SocketAddr, String)> {
    r.attempts.iter().map(|a| (a.stage, a.transport, a.addr, a.outcome.clone())).collect()
}

fn linked_state(w: &World, h: NodeId) -> Option<LinkState> {
    w.host(h).core().map(|c| c.link().state())
}

/// Looks `user` up through the host's link and runs until the answer; true if found.
fn find_works(w: &mut World, h: NodeId, user: &str) -> bool {
    let op = w.command(h, |c, now| c.find(now, user)).expect("a link");
    let end = w.now + secs(5.0);
    w.run_until(end);
    w.host(h).done.iter().any(|(_, o, r)| *o == op && matches!(r, Ok(Answer::Found(_))))
}

#[test]
fn the_ladder_reaches_a_super_node_over_udp_and_the_link_it_makes_works() {
    let mut w = World::new(1);
    let sn_a = w.add_supernode("sn-a", sn(1), 15, 60);
    let h = host(&mut w, "cone", &[sn(1)], &[]);
    w.run_until(secs(2.0));
    let host = w.host(h);
    let [run] = host.runs.as_slice() else { panic!("{:?}", host.runs) };
    assert_eq!(run.purpose, Purpose::Login);
    assert_eq!(run.supernode.as_deref(), Some("sn-a"));
    assert_eq!(run.dest, Some(Dest::Udp(sn(1))));
    assert_eq!(log(run), vec![(Stage::CachedUdp, "udp", sn(1), "ok".to_owned())]);
    // The super node lists no others: nothing to probe, translation seen, kind unknown.
    assert_eq!(run.nat, Some(NatKind::Unknown));
    let observed = w.supernode(sn_a).peers();
    assert_eq!(run.public_addr.map(|p| vec![p]), Some(observed));
    assert!(run.at < secs(0.2), "two round trips of 20-25 ms: {:?}", run.at);
    assert_eq!(linked_state(&w, h), Some(LinkState::Up));
    // The cache was written once, with the node that took us as a success.
    let [(_, saved)] = w.host(h).saved.as_slice() else { panic!("{:?}", w.host(h).saved) };
    let e = saved.iter().find(|e| e.udp == Some(sn(1))).expect("sn-a cached");
    assert_eq!((e.name.as_str(), e.failures), ("sn-a", 0));
    assert!(e.last_success.is_some() && e.rtt_ms.is_some(), "{e:?}");
    assert_eq!(w.host(h).ladder().unwrap().cache().entries(), saved.as_slice());

    w.index.entries.insert("bob".into(), vec![1, 2, 3]);
    assert!(find_works(&mut w, h, "bob"), "the link the ladder made carries requests");
    w.run_until(secs(120.0));
    assert_eq!(linked_state(&w, h), Some(LinkState::Up), "kept by its keepalives");
    assert!(w.host(h).ladder().is_some_and(|l| !l.is_busy()));
    assert_eq!(w.host(h).runs.len(), 1);
}

#[test]
fn with_udp_blocked_the_ladder_goes_to_tcp_and_the_link_runs_over_it() {
    let mut w = World::new(2);
    w.add_supernode("sn-a", sn(1), 15, 60);
    let h = host(&mut w, "udp_blocked", &[sn(1)], &[]);
    w.run_until(secs(3.0));
    let host = w.host(h);
    let [run] = host.runs.as_slice() else { panic!("{:?}", host.runs) };
    assert_eq!(
        log(run),
        vec![(Stage::CachedUdp, "udp", sn(1), "timeout".to_owned()), (Stage::CachedTcp, "tcp", sn(1), "ok".to_owned()),]
    );
    let Some(Dest::Tcp(conn)) = run.dest else { panic!("{:?}", run.dest) };
    assert_eq!(run.nat, Some(NatKind::UdpBlocked), "no UDP attempt got any answer");
    assert!(run.at >= STEP && run.at < STEP + secs(0.2), "one step, then TCP: {:?}", run.at);
    // The UDP Hello went out twice in its step (the NAT dropped both); the TCP handshake
    // ran on the connection the ladder asked for.
    let hellos = w.trace.iter().filter(|r| r.node == h && matches!(r.what, What::NatDropped { .. })).count();
    assert_eq!(hellos, 2);
    assert!(w.host(h).effects.iter().any(|(_, e)| matches!(e,
        crate::host::core::io::Effect::TcpConnect { conn: c, addr, .. } if *c == conn && *addr == sn(1))));

    w.index.entries.insert("bob".into(), vec![1]);
    assert!(find_works(&mut w, h, "bob"), "requests go over the TCP link");
    w.run_until(secs(120.0));
    assert_eq!(linked_state(&w, h), Some(LinkState::Up));
}

#[test]
fn a_dead_first_super_node_gives_way_to_the_next_with_the_attempts_logged_as_today() {
    // One dead cached node, then a live one.
    let mut w = World::new(3);
    let x = w.add_supernode("sn-x", sn(9), 15, 60);
    w.supernode_mut(x).set_mode(SnMode::BlackHole);
    w.add_supernode("sn-a", sn(1), 15, 60);
    let h = host(&mut w, "cone", &[sn(9), sn(1)], &[]);
    w.run_until(secs(3.0));
    let run = &w.host(h).runs[0];
    assert_eq!(
        log(run),
        vec![(Stage::CachedUdp, "udp", sn(9), "timeout".to_owned()), (Stage::CachedUdp, "udp", sn(1), "ok".to_owned()),]
    );
    assert_eq!(run.supernode.as_deref(), Some("sn-a"));
    let saved = &w.host(h).saved.last().unwrap().1;
    let dead = saved.iter().find(|e| e.udp == Some(sn(9))).unwrap();
    assert_eq!(dead.failures, 1);

    // Every cached node dead: UDP to each, TCP to each (connects that hang), then the
    // bootstrap node, as `tests/network.rs` sees it over real sockets.
    let mut w = World::new(4);
    for (name, n) in [("gone-1", 8), ("gone-2", 9)] {
        let x = w.add_supernode(name, sn(n), 15, 60);
        w.supernode_mut(x).set_mode(SnMode::BlackHole);
    }
    w.add_supernode("sn-a", sn(1), 15, 60);
    let h = host(&mut w, "cone", &[sn(8), sn(9)], &[sn(1)]);
    w.run_until(secs(6.0));
    let run = &w.host(h).runs[0];
    let stages: Vec<(Stage, String)> = run.attempts.iter().map(|a| (a.stage, a.outcome.clone())).collect();
    let t = "timeout".to_owned();
    assert_eq!(
        stages,
        vec![
            (Stage::CachedUdp, t.clone()),
            (Stage::CachedUdp, t.clone()),
            (Stage::CachedTcp, t.clone()),
            (Stage::CachedTcp, t),
            (Stage::BootstrapUdp, "ok".to_owned())
        ]
    );
    assert!(run.at >= STEP * 4, "four steps spent: {:?}", run.at);
    let saved = &w.host(h).saved.last().unwrap().1;
    assert!(saved.iter().filter(|e| e.udp != Some(sn(1))).all(|e| e.failures == 2), "{saved:?}");
    // The connects that hung were closed when their step ended.
    let closes = w.host(h).effects.iter().filter(|(_, e)| matches!(e, crate::host::core::io::Effect::TcpClose { .. }));
    assert_eq!(closes.count(), 2);

    // Nothing up at all: the login fails after every attempt (UDP and TCP to the cached
    // node, UDP and TCP to the bootstrap node, then its ports 443 and 80), and the ladder
    // rests.
    let mut w = World::new(5);
    let h = host(&mut w, "cone", &[sn(8)], &[sn(7)]);
    w.run_until(secs(30.0));
    let host = w.host(h);
    let [run] = host.runs.as_slice() else { panic!("{:?}", host.runs) };
    assert!(run.error.as_deref().is_some_and(|e| e.contains("after 6 attempts")), "{:?}", run.error);
    assert_eq!(host.gave_up(), Some("no super node took us"));
    assert!(host.ladder().is_some_and(|l| !l.is_busy()));
    assert!(host.app_events.is_empty(), "a failed login is no disconnection");
}

/// Three super nodes on three addresses, each listing the others in its Welcome.
fn three_supernodes(w: &mut World) -> [NodeId; 3] {
    let ids = [w.add_supernode("sn-a", sn(1), 15, 60), w.add_supernode("sn-b", sn(2), 15, 60), {
        w.add_supernode("sn-c", sn(3), 15, 60)
    }];
    let peers: Vec<SupernodeInfo> = [("sn-a", 1), ("sn-b", 2), ("sn-c", 3)]
        .into_iter()
        .map(|(name, n)| SupernodeInfo { name: name.into(), udp: Some(sn(n)), tcp: Some(sn(n)) })
        .collect();
    for id in ids {
        w.supernode_mut(id).set_peers(peers.clone());
    }
    ids
}

#[test]
fn nat_discovery_tells_no_nat_cone_and_symmetric_apart() {
    for (kind, want, answers) in [
        ("public", NatKind::None, 2),
        ("cone", NatKind::Cone, 2),
        ("symmetric", NatKind::Symmetric, 1),
        ("sequential", NatKind::Symmetric, 1),
    ] {
        let mut w = World::new(6);
        three_supernodes(&mut w);
        let h = host(&mut w, kind, &[sn(1)], &[]);
        w.run_until(secs(3.0));
        let run = &w.host(h).runs[0];
        assert_eq!(run.nat, Some(want), "{kind}: {:?}", run.observations);
        let obs = run.observations.as_ref().unwrap();
        assert_eq!(obs.local, private(kind), "{kind}: the local address came from the effect");
        assert_eq!(obs.others.len(), answers, "{kind}: two agreeing answers, or stop at the first difference");
        // The probes went to the super nodes the Welcome listed, other than ours.
        let probed: Vec<SocketAddr> = w
            .trace
            .iter()
            .filter(|r| r.node == h)
            .filter_map(|r| match &r.what {
                What::Sent { to, kind: Some(MessageKind::NatProbe), .. } => Some(*to),
                _ => None,
            })
            .collect();
        assert_eq!(probed, [sn(2), sn(3)][..answers], "{kind}");
        // The cache learnt the others from the Welcome.
        let saved = &w.host(h).saved.last().unwrap().1;
        assert_eq!(saved.len(), 3, "{kind}");
        assert_eq!(linked_state(&w, h), Some(LinkState::Up), "{kind}");
    }

    // A probe target that never answers is asked three times, 400 ms apart, and the next
    // one after it; the answers of the next still tell a cone.
    let mut w = World::new(7);
    let [_, b, _] = three_supernodes(&mut w);
    w.supernode_mut(b).set_mode(SnMode::BlackHole);
    let h = host(&mut w, "cone", &[sn(1)], &[]);
    w.run_until(secs(5.0));
    let run = &w.host(h).runs[0];
    assert_eq!(run.nat, Some(NatKind::Cone), "{:?}", run.observations);
    let to_b: Vec<Duration> = w
        .trace
        .iter()
        .filter(|r| r.node == h)
        .filter_map(|r| match &r.what {
            What::Sent { to, kind: Some(MessageKind::NatProbe), .. } if *to == sn(2) => Some(r.at),
            _ => None,
        })
        .collect();
    assert_eq!(to_b.len(), 3);
    assert!(to_b.windows(2).all(|p| p[1] - p[0] == secs(0.4)), "{to_b:?}");
    assert!(run.at >= to_b[0] + secs(1.2), "the outcome waited for the probes: {:?}", run.at);
}

/// What one failover run shows.
struct Failover {
    trace: Vec<TraceRow>,
    ended_at: Duration,
    joined_at: Duration,
}

/// Alice (public) is on sn-a with a 20 ms timer and a peer's datagram every 20 ms; at
/// 5 s sn-a dies. The rejoin skips sn-a, finds sn-x dead and reaches sn-b.
fn failover(seed: u64) -> Failover {
    let mut w = World::new(seed);
    w.set_default_link(LinkSpec { delay: Duration::from_millis(20), jitter: Duration::ZERO, loss_ppm: 0 });
    let sn_a = w.add_supernode("sn-a", sn(1), 1, 60);
    let x = w.add_supernode("sn-x", sn(9), 15, 60);
    let sn_b = w.add_supernode("sn-b", sn(2), 15, 60);
    let h = host(&mut w, "public", &[sn(1), sn(9), sn(2)], &[]);
    // The super nodes are a little further, with jitter the seed decides; the peer's
    // datagrams come on a fixed delay.
    let far = LinkSpec { delay: Duration::from_millis(20), jitter: Duration::from_millis(5), loss_ppm: 0 };
    for s in [sn_a, x, sn_b] {
        w.set_link(h, s, far);
    }
    w.run_until(secs(1.0));
    assert_eq!(w.host(h).runs[0].supernode.as_deref(), Some("sn-a"));
    w.supernode_mut(x).set_mode(SnMode::BlackHole);
    w.host_mut(h).set_ticker(secs(1.0), Duration::from_millis(20));
    let peer = a("198.18.20.1:5000");
    let me = private("public");
    let mut injected = Vec::new();
    let end = secs(20.0);
    while w.now < end {
        if w.now == secs(5.0) {
            w.supernode_mut(sn_a).set_mode(SnMode::BlackHole);
        }
        w.inject(h, peer, me, vec![0x4d, 0, 0, 0]);
        injected.push(w.now);
        let next = w.now + Duration::from_millis(20);
        w.run_until(next);
    }

    let host = w.host(h);
    let ended_at = host
        .events
        .iter()
        .find_map(|(t, e)| matches!(e, CoreEvent::LinkEnded { .. }).then_some(*t))
        .expect("the link to sn-a ended");
    // Silent for 2·1 + 5 s after the last thing heard, the keepalive answer before 5 s.
    assert!(ended_at > secs(11.0) && ended_at < secs(12.1), "{ended_at:?}");
    let [_, run] = host.runs.as_slice() else { panic!("{:?}", host.runs) };
    assert_eq!(run.purpose, Purpose::Rejoin(Lost { name: "sn-a".into(), addr: sn(1) }));
    assert_eq!(
        log(run),
        vec![(Stage::CachedUdp, "udp", sn(9), "timeout".to_owned()), (Stage::CachedUdp, "udp", sn(2), "ok".to_owned()),],
        "sn-a is left out, sn-x is tried and found dead, sn-b takes us"
    );
    assert_eq!(run.nat, None, "a rejoin keeps the NAT found at login");
    let joined_at = run.at;
    assert!(joined_at - ended_at <= STEP + secs(0.1), "within a step and a handshake: {:?}", joined_at - ended_at);
    assert!(joined_at - ended_at <= timeouts().budget);
    assert!(
        host.app_events.iter().any(|(t, e)| *t == joined_at && *e == Event::Reconnected { supernode: "sn-b".into() }),
        "{:?}",
        host.app_events
    );
    assert_eq!(linked_state(&w, h), Some(LinkState::Up));
    // The report follows the rejoin as `reconnect` updated it: the NAT found at login stays.
    let r = &host.report;
    assert_eq!((r.supernode.as_str(), r.supernode_addr, r.transport), ("sn-b", sn(2), "udp"));
    assert_eq!(r.nat, NatKind::None);
    assert_eq!(r.attempts.len(), 2);
    assert!(r.rtt_ms >= 40.0 && r.rtt_ms <= 50.0, "{}", r.rtt_ms);

    // Meanwhile everything else went on: the timer fired every 20 ms, on time, and every
    // datagram of the peer was passed on in the step that delivered it.
    let host = w.host(h);
    assert_eq!(host.ticks.first(), Some(&secs(1.0)));
    assert!(host.ticks.windows(2).all(|t| t[1] - t[0] == Duration::from_millis(20)), "a tick came late");
    assert_eq!(host.ticks.len(), 951, "1 s to 20 s (both included), every 20 ms");
    let passed: Vec<Duration> = host.passed_on.iter().filter(|(_, f)| *f == peer).map(|(t, _)| *t).collect();
    let due: Vec<Duration> = injected.iter().map(|t| *t + Duration::from_millis(20)).filter(|t| *t <= end).collect();
    assert_eq!(passed, due, "none waited for the ladder");
    // Each input did bounded work: a Hello or two, an effect or two.
    assert!(host.max_outputs <= 4, "{}", host.max_outputs);

    // sn-b carries requests.
    w.index.entries.insert("bob".into(), vec![1]);
    assert!(find_works(&mut w, h, "bob"));
    Failover { trace: w.trace, ended_at, joined_at }
}

#[test]
fn a_failover_reaches_another_super_node_while_everything_else_goes_on() {
    let f = failover(11);
    let again = failover(11);
    assert!(f.trace == again.trace, "one seed, one trace");
    assert_eq!((f.ended_at, f.joined_at), (again.ended_at, again.joined_at));
    // Another seed: other delays, the same story (its asserts hold).
    let other = failover(12);
    assert!(other.trace != f.trace, "the seed decides the delays");
    assert!(other.joined_at - other.ended_at <= STEP + secs(0.1));
}

#[test]
fn a_failed_rejoin_says_disconnected_and_tries_again_after_the_pause() {
    let mut w = World::new(13);
    w.set_default_link(LinkSpec { delay: Duration::from_millis(20), jitter: Duration::ZERO, loss_ppm: 0 });
    let sn_a = w.add_supernode("sn-a", sn(1), 1, 60);
    let x = w.add_supernode("sn-x", sn(9), 15, 60);
    let h = host(&mut w, "cone", &[sn(1), sn(9)], &[]);
    w.run_until(secs(1.0));
    w.supernode_mut(x).set_mode(SnMode::BlackHole);
    w.supernode_mut(sn_a).set_mode(SnMode::BlackHole);
    w.run_until(secs(12.0));
    let host = w.host(h);
    let (failed_at, e) = host.app_events.first().cloned().expect("an event");
    assert_eq!(e, Event::Disconnected);
    assert_eq!(host.runs.len(), 2);
    assert!(host.runs[1].error.is_some());
    assert_eq!(
        log(&host.runs[1]),
        vec![
            (Stage::CachedUdp, "udp", sn(9), "timeout".to_owned()),
            (Stage::CachedTcp, "tcp", sn(9), "timeout".to_owned()),
        ]
    );
    // The pause is a timer: nothing is tried before it ends.
    w.supernode_mut(x).set_mode(SnMode::Up);
    w.run_until(failed_at + REJOIN_PAUSE - secs(0.01));
    assert_eq!(w.host(h).runs.len(), 2, "nothing before the pause ends");
    w.run_until(failed_at + REJOIN_PAUSE + secs(1.0));
    let host = w.host(h);
    let [.., last] = host.runs.as_slice() else { unreachable!() };
    assert_eq!(last.supernode.as_deref(), Some("sn-x"), "{:?}", host.runs);
    assert!(last.at - failed_at >= REJOIN_PAUSE && last.at - failed_at < REJOIN_PAUSE + secs(0.1));
    assert_eq!(host.app_events.last().unwrap().1, Event::Reconnected { supernode: "sn-x".into() });
    assert_eq!(linked_state(&w, h), Some(LinkState::Up));
}

#[test]
fn behind_a_udp_firewall_the_failover_goes_over_tcp_too() {
    let mut w = World::new(14);
    let sn_a = w.add_supernode("sn-a", sn(1), 1, 60);
    w.add_supernode("sn-b", sn(2), 15, 60);
    let h = host(&mut w, "udp_blocked", &[sn(1), sn(2)], &[]);
    w.run_until(secs(5.0));
    let Some(Dest::Tcp(first)) = w.host(h).runs[0].dest else { panic!("{:?}", w.host(h).runs) };
    assert_eq!(w.host(h).runs[0].supernode.as_deref(), Some("sn-a"));
    w.supernode_mut(sn_a).set_mode(SnMode::BlackHole);
    w.run_until(secs(20.0));
    let host = w.host(h);
    let [_, run] = host.runs.as_slice() else { panic!("{:?}", host.runs) };
    assert_eq!(
        log(run),
        vec![(Stage::CachedUdp, "udp", sn(2), "timeout".to_owned()), (Stage::CachedTcp, "tcp", sn(2), "ok".to_owned()),],
        "sn-a left out on both transports"
    );
    let Some(Dest::Tcp(second)) = run.dest else { panic!("{:?}", run.dest) };
    assert_ne!(first, second, "a new connection");
    // The dead link's connection was closed.
    let closed = host.effects.iter().any(|(_, e)| *e == crate::host::core::io::Effect::TcpClose { conn: first });
    assert!(closed, "{:?}", host.effects);
    assert_eq!(host.report.supernode, "sn-b");
    assert_eq!(host.report.nat, NatKind::UdpBlocked, "found at login, kept");
    w.index.entries.insert("bob".into(), vec![1]);
    assert!(find_works(&mut w, h, "bob"));
}
