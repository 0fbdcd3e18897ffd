//! The world at link level: hosts behind every kind of NAT keep their links, dead and
//! slow super nodes are told apart, and one seed replays one trace.

use super::nat::{Cone, NatFn, NoNat, Symmetric, UdpBlocked};
use super::supernode::SnMode;
use super::{LinkSpec, NodeId, What, World};
use crate::host::core::CoreEvent;
use crate::host::core::link::{Ended, LIVENESS_ANSWER_MAX, LinkState};
use crate::host::core::pending::{Answer, Class, OpId, Revision};
use crate::wire::MessageKind;
use std::collections::BTreeSet;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

const MAPPING_TTL: Duration = Duration::from_secs(30);

fn a(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

fn secs(s: f64) -> Duration {
    Duration::from_secs_f64(s)
}

fn sn_a() -> SocketAddr {
    a("198.18.0.1:33033")
}

/// The NAT kinds, each on its own public address.
fn nat(kind: &str, n: u8) -> Box<dyn NatFn> {
    let ip = IpAddr::from([198, 18, 10, n]);
    match kind {
        "public" => Box::new(NoNat::new(ip)),
        "cone" => Box::new(Cone::new(ip, MAPPING_TTL)),
        "symmetric" => Box::new(Symmetric::new(ip, MAPPING_TTL)),
        "sequential" => Box::new(Symmetric::sequential(ip, MAPPING_TTL)),
        "udp_blocked" => Box::new(UdpBlocked::new(ip)),
        other => panic!("{other}"),
    }
}

/// The host's private socket: its public one when it has no NAT.
fn private(kind: &str, n: u8) -> SocketAddr {
    if kind == "public" { SocketAddr::new(IpAddr::from([198, 18, 10, n]), 40000) } else { a("10.0.0.2:40000") }
}

fn add_host(w: &mut World, user: &str, kind: &str, n: u8, sn: SocketAddr) -> NodeId {
    w.add_host(user, private(kind, n), nat(kind, n), sn)
}

/// Rows of `node` for datagrams of `kind` it put on the wire.
fn sent(w: &World, node: NodeId, kind: MessageKind) -> Vec<(Duration, SocketAddr)> {
    w.trace
        .iter()
        .filter(|r| r.node == node)
        .filter_map(|r| match &r.what {
            What::Sent { from, kind: Some(k), .. } if *k == kind => Some((r.at, *from)),
            _ => None,
        })
        .collect()
}

fn link_ended(w: &World, h: NodeId) -> Option<(Duration, Ended)> {
    w.host(h).events.iter().find_map(|(t, e)| match e {
        CoreEvent::LinkEnded { why, .. } => Some((*t, *why)),
        _ => None,
    })
}

fn result(w: &World, h: NodeId, op: OpId) -> Option<(Duration, &crate::host::core::pending::OpResult)> {
    w.host(h).done.iter().find(|(_, o, _)| *o == op).map(|(t, _, r)| (*t, r))
}

#[test]
fn a_host_behind_each_nat_keeps_its_link_by_its_keepalives() {
    for (n, kind) in ["public", "cone", "symmetric", "sequential"].into_iter().enumerate() {
        let mut w = World::new(1);
        let sn = w.add_supernode("sn-a", sn_a(), 15, 60);
        let h = add_host(&mut w, "alice", kind, n as u8 + 1, sn_a());
        w.run_until(secs(300.0));
        let host = w.host(h);
        let core = host.core().unwrap_or_else(|| panic!("{kind}: no link: {:?}", host.gave_up()));
        assert_eq!(core.link().state(), LinkState::Up, "{kind}");
        assert!(host.events.is_empty(), "{kind}: {:?}", host.events);
        assert_eq!(core.revision(), Revision::Rev2, "{kind}");
        // The super node saw one address all along: the NAT's mapping, which the host
        // learnt from the Welcome.
        let observed = core.link().session().welcome.observed;
        assert_eq!(w.supernode(sn).peers(), vec![observed], "{kind}");
        assert_eq!(observed.ip(), host.nat().public_ip(), "{kind}");
        assert_eq!(observed == private(kind, n as u8 + 1), kind == "public", "{kind}: {observed}");
        let keepalives = sent(&w, h, MessageKind::Keepalive);
        assert_eq!(keepalives.len(), 300 / 15, "{kind}: the first once linked, then one every 15 s");
        assert!(keepalives.windows(2).all(|k| k[1].0 - k[0].0 == secs(15.0)), "{kind}: {keepalives:?}");
        assert!(keepalives.iter().all(|(_, from)| *from == observed), "{kind}: one mapping all along");
        let sn_stats = w.supernode(sn).stats();
        assert_eq!((sn_stats.handshakes, sn_stats.rejected), (1, 0), "{kind}");
    }

    // Behind a firewall that drops UDP, the handshake gets no answer.
    let mut w = World::new(1);
    let sn = w.add_supernode("sn-a", sn_a(), 15, 60);
    let h = add_host(&mut w, "alice", "udp_blocked", 9, sn_a());
    w.run_until(secs(10.0));
    assert_eq!(w.host(h).gave_up(), Some("no answer to the handshake"));
    assert!(w.supernode(sn).peers().is_empty());
    assert_eq!(w.wire_stats().delivered, 0);

    // Control: keepalives further apart than the mapping lives. The mapping expires, the
    // next keepalive leaves from a new port the super node does not know, and the link
    // dies of silence.
    let mut w = World::new(1);
    let sn = w.add_supernode("sn-a", sn_a(), 40, 120);
    let h = add_host(&mut w, "alice", "cone", 1, sn_a());
    w.run_until(secs(200.0));
    let keepalives = sent(&w, h, MessageKind::Keepalive);
    assert_ne!(keepalives[0].1, keepalives[1].1, "the keepalive at 40 s left from a new mapping");
    let (at, why) = link_ended(&w, h).expect("the link ends");
    assert_eq!(why, Ended::Silent);
    assert!(at > secs(80.0) && at < secs(90.0), "2·40 + 5 s after the Welcome: {at:?}");
    assert!(w.supernode(sn).stats().rejected >= 1);
}

#[test]
fn a_black_hole_super_node_is_found_dead_within_the_liveness_bound() {
    let keepalive = 15.0;
    let silence_max = secs(2.0 * keepalive + 5.0);
    let t = secs(20.0);
    for busy in [false, true] {
        let mut w = World::new(2);
        let sn = w.add_supernode("sn-a", sn_a(), keepalive as u16, 120);
        let h = add_host(&mut w, "alice", "cone", 1, sn_a());
        w.run_until(t);
        assert!(w.host(h).core().is_some());
        w.supernode_mut(sn).set_mode(SnMode::BlackHole);
        let op = busy.then(|| w.command(h, |c, now| c.forward(now, "bob", "", b"hi".to_vec(), Class::User)).unwrap());
        w.run_until(secs(120.0));
        let (at, why) = link_ended(&w, h).expect("the dead super node is noticed");
        assert!(at > t, "{at:?}");
        if busy {
            // A request that times out with nothing heard since probes at once: dead
            // one liveness answer later, long before the silence limit.
            let (done_at, r) = result(&w, h, op.unwrap()).unwrap();
            assert!(r.is_err(), "{r:?}");
            assert_eq!(why, Ended::NoAnswer);
            assert_eq!(at - done_at, LIVENESS_ANSWER_MAX);
            assert!(at <= t + secs(5.0) + LIVENESS_ANSWER_MAX, "{at:?}");
        } else {
            // Idle: the silence limit after the last thing heard (the keepalive at 15 s).
            assert_eq!(why, Ended::Silent);
            assert!(at <= t + silence_max, "{at:?}");
        }
        assert!(w.supernode(sn).stats().dropped > 0);
    }
}

#[test]
fn a_slow_find_does_not_delay_a_forward_or_a_publish_issued_after_it() {
    let mut w = World::new(3);
    let sn = w.add_supernode("sn-a", sn_a(), 15, 120);
    let alice = add_host(&mut w, "alice", "cone", 1, sn_a());
    let bob = add_host(&mut w, "bob", "symmetric", 2, sn_a());
    w.run_until(secs(2.0));
    w.supernode_mut(sn).set_mode(SnMode::Slow(secs(8.0)));
    let t = w.now;
    let find = w.command(alice, |c, now| c.find(now, "bob")).unwrap();
    w.run_until(t + secs(0.01));
    let fwd = w.command(alice, |c, now| c.forward(now, "bob", "", b"ring".to_vec(), Class::Call)).unwrap();
    let publish = w.command(alice, |c, now| c.publish(now, b"alice's entry".to_vec())).unwrap();
    w.run_until(t + secs(20.0));
    let (fwd_at, r) = result(&w, alice, fwd).unwrap();
    assert!(matches!(r, Ok(Answer::Forwarded(a)) if a.code == 0), "{r:?}");
    // One round trip of at most 2 × 25 ms, however slow the lookup.
    assert!(fwd_at - t <= secs(0.07), "the Forward took {:?}", fwd_at - t);
    let (pub_at, r) = result(&w, alice, publish).unwrap();
    assert!(matches!(r, Ok(Answer::Published(_))), "{r:?}");
    assert!(pub_at - t <= secs(0.07), "the Publish took {:?}", pub_at - t);
    let (notice_at, _) =
        w.host(bob).events.iter().find(|(_, e)| *e == CoreEvent::Notice(b"ring".to_vec())).expect("bob heard it");
    let (find_at, r) = result(&w, alice, find).unwrap();
    assert!(matches!(r, Ok(Answer::Found(_))), "{r:?}");
    assert!(find_at - t >= secs(8.0) && find_at - t < secs(8.1), "the Find took {:?}", find_at - t);
    assert!(*notice_at < t + secs(0.1));
    // Its resends at 1 s and 3 s were answered late too, after the first answer: strays.
    assert_eq!(sent(&w, alice, MessageKind::Find).len(), 3);
    assert_eq!(w.host(alice).core().unwrap().stats().pending.unmatched, 2);
}

/// Per user, what their requests and link came to, sorted.
type Outcomes = Vec<(String, Vec<String>)>;

/// Hosts behind every NAT on a lossy, jittery wire, asking things of each other; the
/// trace, and each host's outcomes without their times.
fn busy_world(seed: u64) -> (Vec<super::TraceRow>, Outcomes, BTreeSet<SocketAddr>) {
    let mut w = World::new(seed);
    w.set_default_link(LinkSpec {
        delay: Duration::from_millis(15),
        jitter: Duration::from_millis(10),
        loss_ppm: 20_000,
    });
    let sn_b = a("198.18.0.2:33033");
    w.add_supernode("sn-a", sn_a(), 5, 60);
    w.add_supernode("sn-b", sn_b, 5, 60);
    let users = [("alice", "cone"), ("bob", "symmetric"), ("carol", "sequential"), ("dave", "public")];
    let hosts: Vec<NodeId> = users
        .iter()
        .enumerate()
        .map(|(i, (u, k))| add_host(&mut w, u, k, i as u8 + 1, if i % 2 == 0 { sn_a() } else { sn_b }))
        .collect();
    w.run_until(secs(5.0));
    for (i, h) in hosts.iter().enumerate() {
        let (user, _) = users[i];
        let next = users[(i + 1) % users.len()].0;
        w.command(*h, |c, now| {
            c.publish(now, format!("{user}'s entry").into_bytes());
        })
        .unwrap_or_else(|| panic!("{user} has no link"));
        w.run_until(w.now + secs(0.5));
        w.command(*h, |c, now| c.find(now, next)).unwrap();
    }
    w.run_until(secs(60.0));
    let outcomes = hosts
        .iter()
        .map(|h| {
            let host = w.host(*h);
            let mut o: Vec<String> = w
                .trace
                .iter()
                .filter(|r| r.node == *h)
                .filter_map(|r| match &r.what {
                    What::Completed { outcome, .. } => Some(outcome.clone()),
                    What::Event(e) => Some(e.clone()),
                    What::Linked { supernode } => Some(format!("linked:{supernode}")),
                    _ => None,
                })
                .collect();
            o.sort();
            (host.user().to_owned(), o)
        })
        .collect();
    let sources = w
        .trace
        .iter()
        .filter(|r| hosts.contains(&r.node))
        .filter_map(|r| match &r.what {
            What::Sent { from, .. } => Some(*from),
            _ => None,
        })
        .collect();
    assert!(w.wire_stats().lost > 0, "the wire lost nothing: the test would not show loss is seeded");
    (w.trace, outcomes, sources)
}

#[test]
fn one_seed_one_trace_another_seed_other_ports_and_the_same_outcomes() {
    let (trace, outcomes, sources) = busy_world(7);
    for (user, o) in &outcomes {
        assert_eq!(o.iter().filter(|x| x.starts_with("linked:")).count(), 1, "{user}: {o:?}");
        assert!(o.contains(&"ok:published".to_owned()), "{user}: {o:?}");
        assert!(o.contains(&"ok:found".to_owned()), "{user}: {o:?}");
        assert!(!o.iter().any(|x| x.starts_with("link_ended")), "{user}: {o:?}");
    }
    let (again, again_outcomes, _) = busy_world(7);
    assert!(trace == again, "the same seed gave another trace");
    assert_eq!(outcomes, again_outcomes);
    let (other, other_outcomes, other_sources) = busy_world(8);
    assert_ne!(trace, other);
    assert_ne!(sources, other_sources, "the NATs' ports come from the seed");
    assert_eq!(outcomes, other_outcomes);
}

#[test]
fn a_dropped_request_times_out_but_the_answered_probe_keeps_the_link() {
    let mut w = World::new(4);
    let sn = w.add_supernode("sn-a", sn_a(), 15, 120);
    let alice = add_host(&mut w, "alice", "cone", 1, sn_a());
    w.run_until(secs(1.0));
    w.supernode_mut(sn).set_mode(SnMode::Drop(vec![MessageKind::Find]));
    let t = w.now;
    let find = w.command(alice, |c, now| c.find(now, "bob")).unwrap();
    w.run_until(t + secs(30.0));
    let (at, r) = result(&w, alice, find).unwrap();
    assert!(matches!(r, Err(crate::host::core::pending::RequestError::TimedOut("find"))), "{r:?}");
    assert_eq!(at - t, secs(10.0));
    // Sent thrice, all dropped; the liveness keepalive that followed was answered.
    assert_eq!(sent(&w, alice, MessageKind::Find).len(), 3);
    assert_eq!(w.supernode(sn).stats().dropped, 3);
    let probe = sent(&w, alice, MessageKind::Keepalive).into_iter().find(|(k, _)| *k == at);
    assert!(probe.is_some(), "a probe at the timeout");
    assert_eq!(link_ended(&w, alice), None);
    assert_eq!(w.host(alice).core().unwrap().link().state(), LinkState::Up);
    // Other kinds still pass.
    let fwd = w.command(alice, |c, now| c.forward(now, "alice", "", b"me".to_vec(), Class::User)).unwrap();
    w.run_until(w.now + secs(1.0));
    assert!(matches!(result(&w, alice, fwd), Some((_, Ok(Answer::Forwarded(_))))));
}
