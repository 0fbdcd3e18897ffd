//! Whole host cores in the world: log in through the ladder, publish, look each other
//! up, call and hear each other; and the media clock under a signalling storm and a
//! failover, step by step.

use super::nat::{Cone, NatFn};
use super::supernode::SnMode;
use super::whole::{CoreNode, FakeLogin, Seat};
use super::{NodeId, What, World};
use crate::buddy::op::Relation;
use crate::call::audio::{tone, tone_strength};
use crate::call::media::call_tag;
use crate::crypto::keys::PrivateKey;
use crate::crypto::keys::tests::{fixture_key, test_key};
use crate::crypto::password::ListKey;
use crate::host::buddies::Event;
use crate::host::cache::{CacheEntry, NodeKind};
use crate::host::calls::CallState;
use crate::host::connect::Timeouts;
use crate::host::core::calls::CallsConfig;
use crate::host::core::host::{CallAudio, Command, Done, Fault, HostConfig, HostError, Phase};
use crate::host::core::ladder::LadderSettings;
use crate::host::core::pending::{Answer, OpId};
use crate::host::ladder::LadderConfig;
use crate::index::{Profile, Status};
use crate::wire::MessageKind;
use crate::wire::message::SupernodeInfo;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

const MAPPING_TTL: Duration = Duration::from_secs(30);
/// Each host's tone: alice, bob, carol.
const TONES: [f32; 3] = [440.0, 880.0, 660.0];

fn secs(s: f64) -> Duration {
    Duration::from_secs_f64(s)
}

fn sn(n: u8) -> SocketAddr {
    SocketAddr::new(IpAddr::from([198, 18, 0, n]), 33033)
}

fn entry(name: &str, addr: SocketAddr) -> CacheEntry {
    CacheEntry {
        kind: NodeKind::Supernode,
        name: name.into(),
        udp: Some(addr),
        tcp: Some(addr),
        last_success: None,
        rtt_ms: None,
        failures: 0,
    }
}

fn key(i: usize) -> PrivateKey {
    match i {
        0 => test_key(2),
        1 => fixture_key("host-1"),
        _ => fixture_key("host-2"),
    }
}

fn config() -> HostConfig {
    HostConfig {
        ladder: LadderSettings {
            ladder: LadderConfig::default(),
            timeouts: Timeouts { step: Duration::from_secs(1), budget: Duration::from_secs(60) },
            local_port: 40_000,
        },
        calls: CallsConfig::default(),
        status: Status::Online,
        profile: Profile::default(),
        interfaces: Vec::new(),
        v6: false,
        list_key: ListKey([7; 32]),
        login_timeout: Duration::from_secs(10),
        login_servers: 1,
        presence_refresh: PRESENCE_REFRESH,
        history_epoch: 0,
    }
}

/// How often presence is refreshed (the storm's falls in it).
const PRESENCE_REFRESH: Duration = Duration::from_secs(4);
/// How long the login server takes to answer.
const LOGIN_DELAY: Duration = Duration::from_millis(300);

/// Host `i`'s login server: `buddies` authorized buddies, and `also` among them.
fn login(i: usize, buddies: usize, also: &[&str]) -> FakeLogin {
    let mut l = FakeLogin::new(["alice", "bob", "carol"][i], ListKey([7; 32]), buddies, LOGIN_DELAY);
    for (n, u) in also.iter().enumerate() {
        l.contacts.insert(0, (n as u32 + 1, (*u).into(), Relation::Authorized));
    }
    l
}

/// Host `i` (alice, bob, carol) behind a cone router of its own, with `cache` and the
/// buddy list `login` serves.
fn host(w: &mut World, i: usize, cache: Vec<CacheEntry>, login: FakeLogin) -> NodeId {
    let public = IpAddr::from([198, 18, 10 + i as u8, 1]);
    host_behind(w, i, Box::new(Cone::new(public, MAPPING_TTL)), cache, login)
}

/// Host `i` behind `nat` (its public address `198.18.(10+i).1`).
fn host_behind(w: &mut World, i: usize, nat: Box<dyn NatFn>, cache: Vec<CacheEntry>, login: FakeLogin) -> NodeId {
    let user = ["alice", "bob", "carol"][i];
    let private = SocketAddr::new(IpAddr::from([10, 0, i as u8, 2]), 40_000);
    w.add_core_host(Seat { user: user.into(), private, nat, key: key(i), login }, config(), cache)
}

/// Super nodes named `names` on `sn(1)`, `sn(2)`…, each listing the others.
fn supernodes(w: &mut World, names: &[&str]) -> Vec<NodeId> {
    let ids: Vec<NodeId> = names.iter().enumerate().map(|(i, n)| w.add_supernode(n, sn(i as u8 + 1), 15, 60)).collect();
    let peers: Vec<SupernodeInfo> = names
        .iter()
        .enumerate()
        .map(|(i, n)| SupernodeInfo { name: (*n).into(), udp: Some(sn(i as u8 + 1)), tcp: Some(sn(i as u8 + 1)) })
        .collect();
    for id in &ids {
        w.supernode_mut(*id).set_peers(peers.clone());
    }
    ids
}

/// Runs until `f` holds or `within` passes; true if it held.
fn run_until_true(w: &mut World, within: Duration, f: impl Fn(&World) -> bool) -> bool {
    let end = w.now + within;
    while !f(w) {
        if !w.step(end) {
            return f(w);
        }
    }
    true
}

fn done(w: &World, h: NodeId, op: OpId) -> bool {
    w.core_host(h).result(op).is_some()
}

fn call_event(h: &CoreNode, id: &[u8; 16], pred: impl Fn(&CallState) -> bool) -> bool {
    let hex = crate::host::calls::call_id_hex(id);
    h.saw(|e| matches!(e, Event::Call { call_id, state, .. } if *call_id == hex && pred(state)))
}

fn ringing(h: &CoreNode, id: &[u8; 16]) -> bool {
    call_event(h, id, |s| matches!(s, CallState::Ringing))
}

fn connected(h: &CoreNode, id: &[u8; 16]) -> bool {
    call_event(h, id, |s| matches!(s, CallState::Connected { .. }))
}

/// `a` calls `b` by name, its tone and recording given with the call; `b` answers once it
/// rings. Both play their tone and record.
fn place(w: &mut World, a: (NodeId, usize), b: (NodeId, usize)) -> [u8; 16] {
    let user = w.core_host(b.0).user().to_owned();
    let audio = CallAudio { source: tone(&[TONES[a.1]], 60.0, 0.5), record: true };
    let op = w.core_command(a.0, Command::Call { user, even_if_offline: false, audio });
    assert!(run_until_true(w, secs(2.0), |w| done(w, a.0, op)));
    let Some(Ok(Done::Called(id))) = w.core_host(a.0).result(op) else { panic!("{:?}", w.core_host(a.0).result(op)) };
    let id = *id;
    assert!(run_until_true(w, secs(2.0), |w| ringing(w.core_host(b.0), &id)));
    let calls = &mut w.core_host_mut(b.0).core;
    calls.set_call_audio(id, tone(&[TONES[b.1]], 60.0, 0.5));
    calls.set_call_recording(id, true);
    w.core_command(b.0, Command::AnswerCall { id, accept: true });
    assert!(run_until_true(w, secs(3.0), |w| connected(w.core_host(a.0), &id) && connected(w.core_host(b.0), &id)));
    id
}

/// Two hosts on two super nodes, from login to hang-up; returns the world.
fn two_hosts_call(seed: u64) -> World {
    let mut w = World::new(seed);
    supernodes(&mut w, &["sn-a", "sn-b"]);
    let alice = host(&mut w, 0, vec![entry("sn-a", sn(1))], login(0, 0, &["bob"]));
    let bob = host(&mut w, 1, vec![entry("sn-b", sn(2))], login(1, 0, &["alice"]));
    // Both log in through the ladder (NAT discovery included), publish, read their
    // lists from the login server, and tell each other they are online.
    assert!(run_until_true(&mut w, secs(5.0), |w| {
        [(alice, "bob"), (bob, "alice")].iter().all(|(h, other)| {
            w.core_host(*h).saw(|e| matches!(e, Event::Presence { user, status: Status::Online, .. } if user == other))
        })
    }));
    for (h, name) in [(alice, "sn-a"), (bob, "sn-b")] {
        let c = &w.core_host(h).core;
        assert_eq!(*c.phase(), Phase::Online);
        assert_eq!(c.report().supernode, name);
        assert_eq!(c.report().nat, crate::nat::NatKind::Cone, "NAT discovery ran at login");
        let e = indexed(&w, c.credential().subject.as_str());
        assert_eq!((e.supernode.as_str(), e.nat), (name, crate::nat::NatKind::Cone), "the entry says where and how");
    }

    // They find each other.
    let op = w.core_command(alice, Command::Find { user: "bob".into() });
    assert!(run_until_true(&mut w, secs(2.0), |w| done(w, alice, op)));
    let Some(Ok(Done::Answer(Answer::Found(f)))) = w.core_host(alice).result(op) else { panic!() };
    assert!(!f.entry.is_empty(), "bob's entry is in the index");
    // This world's super nodes have no relay plane: a relay is refused, and said so.
    let peer = w.core_host(bob).core.credential().encode();
    let op = w.core_command(alice, Command::AllocateRelay { peer });
    assert!(run_until_true(&mut w, secs(2.0), |w| done(w, alice, op)));
    let r = w.core_host(alice).result(op);
    assert!(matches!(r, Some(Err(HostError::Refused(why))) if why.contains("unsupported")), "{r:?}");

    // Alice calls Bob by name, they talk, Alice hangs up.
    let id = place(&mut w, (alice, 0), (bob, 1));
    let talking = w.now;
    w.run_until(w.now + secs(5.0));
    w.core_command(alice, Command::EndCall { id });
    assert!(run_until_true(&mut w, secs(2.0), |w| call_event(w.core_host(bob), &id, |s| matches!(
        s,
        CallState::Ended { .. }
    ))));
    for (me, i) in [(alice, 0), (bob, 1)] {
        let report = w.core_host_mut(me).core.take_call_report(id).expect("a report");
        assert!(report.media.received > 100, "{} frames", report.media.received);
        let heard = &report.heard[report.heard.len() / 2..];
        let theirs = TONES[1 - i];
        assert!(tone_strength(heard, theirs) > 0.3, "{:?} does not hear {theirs} Hz", w.core_host(me));
        assert!(tone_strength(heard, TONES[i]) < 0.05, "{:?} hears itself", w.core_host(me));
    }
    for h in [alice, bob] {
        let node = w.core_host(h);
        assert_eq!(node.voice_outside_ticks, 0, "voice goes out only in the media clock's steps");
        let (due, on_time, most) = media_steps(&w, h, id, talking);
        assert!(due > 200 && on_time == due, "{due} steps with a tick due, {on_time} on time and first");
        assert!(most <= 64, "a step put out {most}");
    }
    w
}

#[test]
fn two_host_cores_log_in_find_each_other_call_and_hear_each_other() {
    two_hosts_call(11);
}

/// What the trace says, without what the OS's randomness decides (RSA padding, session
/// keys and nonces change bytes, never times, kinds or lengths).
fn shape(w: &World) -> Vec<String> {
    w.trace
        .iter()
        .map(|r| match &r.what {
            What::Sent { from, to, kind, len } => format!("{:?} {:?} sent {from}>{to} {kind:?} {len}", r.at, r.node),
            other => format!("{:?} {:?} {other:?}", r.at, r.node),
        })
        .collect()
}

#[test]
fn the_same_seed_gives_the_same_trace() {
    let (a, b, c) = (two_hosts_call(21), two_hosts_call(21), two_hosts_call(22));
    assert_eq!(shape(&a), shape(&b));
    assert_ne!(shape(&a), shape(&c), "another seed, other ports and delays");
    let (a, b) = (storm(31, Fault::None), storm(31, Fault::None));
    assert_eq!(shape(&a.world), shape(&b.world));
}

/// How many pending lookups the storm queues at once.
const LOOKUPS: usize = 200;
/// Alice's buddies.
const BUDDIES: usize = 200;

struct Storm {
    world: World,
    alice: NodeId,
    bob: NodeId,
    ab: [u8; 16],
    /// When the storm began.
    t: Duration,
    lookups: Vec<OpId>,
    refresh: OpId,
}

/// Alice (sn-a, 200 buddies) talks with Bob (sn-b). At `t`: Alice reads her buddy list
/// again (13 pages, the login server taking 300 ms for each), has 200 lookups queued
/// behind the super node's rate, her presence refresh (200 notices at 40 a second)
/// falls due, she calls Carol relayed only while sn-a drops relay requests (so the
/// allocation stays pending and times out), and at `t + 3.5 s` sn-a dies without a word;
/// Alice fails over past sn-x (dead) to sn-b. Runs to `t + 15 s`.
fn storm(seed: u64, fault: Fault) -> Storm {
    let mut w = World::new(seed);
    let ids = supernodes(&mut w, &["sn-a", "sn-b", "sn-x"]);
    let (sn_a, sn_x) = (ids[0], ids[2]);
    w.supernode_mut(sn_x).set_mode(SnMode::BlackHole);
    let cache = vec![entry("sn-a", sn(1)), entry("sn-x", sn(3)), entry("sn-b", sn(2))];
    let alice = host(&mut w, 0, cache, login(0, BUDDIES, &[]));
    let bob = host(&mut w, 1, vec![entry("sn-b", sn(2))], login(1, 0, &[]));
    let carol = host(&mut w, 2, vec![entry("sn-b", sn(2))], login(2, 0, &[]));
    w.core_host_mut(alice).core.set_fault(fault);
    let up = run_until_true(&mut w, secs(8.0), |w| {
        ["alice", "bob", "carol"].iter().all(|u| w.index.entries.contains_key(*u))
            && w.core_host(alice).core.buddies().len() == BUDDIES
    });
    let a = w.core_host(alice);
    assert!(
        up,
        "{} buddies, {:?}, {:?} {:?}",
        a.core.buddies().len(),
        a.login.answered,
        a.core.buddies_core().stats(),
        a.done
    );
    let ab = place(&mut w, (alice, 0), (bob, 1));
    w.run_until(w.now + secs(2.0));

    let t = w.now;
    w.supernode_mut(sn_a).set_mode(SnMode::Drop(vec![MessageKind::RelayAllocate]));
    let refresh = w.core_command(alice, Command::RefreshBuddies);
    w.core_host_mut(alice).core.set_relay_only(true);
    let op = w
        .core_command(alice, Command::Call { user: "carol".into(), even_if_offline: false, audio: Default::default() });
    let lookups: Vec<OpId> =
        (0..LOOKUPS).map(|i| w.core_command(alice, Command::Find { user: format!("nobody-{i}") })).collect();
    assert!(run_until_true(&mut w, secs(1.0), |w| done(w, alice, op)));
    let Some(Ok(Done::Called(ac))) = w.core_host(alice).result(op) else { panic!() };
    let ac = *ac;
    assert!(run_until_true(&mut w, secs(1.0), |w| ringing(w.core_host(carol), &ac)));
    w.core_command(carol, Command::AnswerCall { id: ac, accept: true });
    w.run_until(t + secs(3.5));
    w.supernode_mut(sn_a).set_mode(SnMode::BlackHole);
    w.run_until(t + secs(15.0));
    Storm { world: w, alice, bob, ab, t, lookups, refresh }
}

/// Steps of `h` with a tick of call `id` due after `from`: (steps, steps whose frames
/// matched the ticks due and came before any signalling, the most outputs of a step).
fn media_steps(w: &World, h: NodeId, id: [u8; 16], from: Duration) -> (usize, usize, usize) {
    let tag = call_tag(&id);
    let mut n = 0;
    let mut ok = 0;
    let mut most = 0;
    for s in w.core_host(h).steps.iter().filter(|s| s.at >= from) {
        let Some((_, due)) = s.due.iter().find(|(c, _)| *c == id) else { continue };
        n += 1;
        most = most.max(s.outputs);
        if s.voice.get(&tag).copied() == Some(*due) && s.before_voice == 0 {
            ok += 1;
        }
    }
    (n, ok, most)
}

#[test]
fn no_media_tick_waits_for_signalling() {
    let s = storm(41, Fault::None);
    let w = &s.world;
    let alice = w.core_host(s.alice);

    // Everything that was to be pending was: the lookups went out paced and finished,
    // the relay request at sn-a was never answered, sn-a died and Alice moved to sn-b.
    let relay_to = |addr| {
        w.trace
            .iter()
            .filter(|r| r.node == s.alice && r.at >= s.t)
            .any(|r| matches!(&r.what, What::Sent { to, kind: Some(MessageKind::RelayAllocate), .. } if *to == addr))
    };
    assert!(relay_to(sn(1)), "a relay was asked of sn-a");
    assert!(relay_to(sn(2)), "and asked again of sn-b after the failover");
    assert!(alice.saw(|e| matches!(e, Event::Reconnected { supernode } if supernode == "sn-b")));
    assert_eq!(alice.core.report().supernode, "sn-b");
    assert!(s.lookups.iter().all(|op| alice.result(*op).is_some()), "every lookup finished, one way or another");
    let found = s.lookups.iter().filter(|op| matches!(alice.result(**op), Some(Ok(_)))).count();
    assert!(found > 0 && found < LOOKUPS, "some answered before sn-a died, the rest failed: {found}");

    let forwards: Vec<(Duration, SocketAddr)> = w
        .trace
        .iter()
        .filter(|r| r.node == s.alice && r.at >= s.t)
        .filter_map(|r| match &r.what {
            What::Sent { to, kind: Some(MessageKind::Forward), .. } => Some((r.at, *to)),
            _ => None,
        })
        .collect();
    // The list was read again through it all (13 pages, 300 ms each), and the presence
    // refresh told the buddies at the super node's pace.
    assert!(matches!(alice.result(s.refresh), Some(Ok(_))), "{:?}", alice.result(s.refresh));
    assert_eq!(alice.login.answered.get("list"), Some(&26), "{:?}", alice.login.answered);
    assert!(forwards.len() >= 100, "{} presence notices during the storm", forwards.len());
    for (i, (at, to)) in forwards.iter().enumerate() {
        let in_a_second = forwards[i..].iter().take_while(|(t, _)| *t < *at + secs(1.0)).filter(|(_, d)| d == to);
        assert!(in_a_second.count() <= 45, "more than 45 requests a second to {to} from {at:?}");
    }

    // Every step with a tick of the Alice–Bob call due sent exactly the frames due, ahead
    // of any signalling, on both sides, over the whole storm; no step did unbounded work.
    for (h, who) in [(s.alice, "alice"), (s.bob, "bob")] {
        let (n, ok, most) = media_steps(w, h, s.ab, s.t);
        assert!(n >= 700, "{who}: {n} steps with a tick due in 15 s");
        assert_eq!(ok, n, "{who}: {} of {n} steps late or out of order", n - ok);
        assert!(most <= 64, "{who}: a step put out {most}");
        assert_eq!(w.core_host(h).voice_outside_ticks, 0, "{who}");
    }
    // And Bob heard it all: the failover did not touch the media path.
    let bob = w.core_host(s.bob);
    let report = bob.core.calls().call_media(s.ab).expect("the call lasts");
    assert_eq!((report.lost, report.path_restarts), (0, 0), "{report:?}");
    assert_eq!(report.tick_late_ms_max, 0);
}

#[test]
fn the_media_clock_check_catches_a_core_that_serves_signalling_first() {
    // The same storm, with Alice's core running the calls' timers after the ladder's and
    // the link's: a step where a keepalive or a paced request is due puts it out ahead
    // of the frame, and the check above sees it.
    let s = storm(41, Fault::MediaLast);
    let (n, ok, _) = media_steps(&s.world, s.alice, s.ab, s.t);
    assert!(ok < n, "the broken order went unnoticed over {n} steps");
    let (n, ok, _) = media_steps(&s.world, s.bob, s.ab, s.t);
    assert_eq!(ok, n, "Bob's core is not broken");
}

/// The entry the index holds for `user`.
fn indexed(w: &World, user: &str) -> crate::index::Entry {
    crate::index::Entry::decode(&w.index.entries[user]).expect("an entry")
}

#[test]
fn a_reconnect_moves_the_host_and_its_call_and_a_logout_says_goodbye() {
    let mut w = World::new(51);
    supernodes(&mut w, &["sn-a", "sn-b"]);
    let alice = host(&mut w, 0, vec![entry("sn-a", sn(1)), entry("sn-b", sn(2))], login(0, 0, &["bob"]));
    let bob = host(&mut w, 1, vec![entry("sn-b", sn(2))], login(1, 0, &["alice"]));
    assert!(run_until_true(&mut w, secs(5.0), |w| w.index.entries.len() == 2));
    assert_eq!(indexed(&w, "alice").supernode, "sn-a");
    let id = place(&mut w, (alice, 0), (bob, 1));
    assert_eq!(w.core_host(bob).core.calls().call_peer_supernode(id).as_deref(), Some("sn-a"));

    let from = w.trace.len();
    let op = w.core_command(alice, Command::Reconnect);
    assert!(run_until_true(&mut w, secs(3.0), |w| done(w, alice, op)));
    assert!(matches!(w.core_host(alice).result(op), Some(Ok(Done::Ok))));
    w.run_until(w.now + secs(1.0));
    // The Moved signal goes after our entry is published at sn-b: no call notice
    // before the publish's answer (Bob is not known online, so no presence either).
    let sn_b = w.core_host(alice).core.report().supernode_addr;
    let rows = &w.trace[from..];
    let published = rows
        .iter()
        .position(|r| {
            matches!(r.what, What::Sent { from, kind: Some(MessageKind::PublishReply | MessageKind::PublishAck), .. }
                if from == sn_b)
        })
        .expect("sn-b answered the publish");
    let forwards_before = rows[..published]
        .iter()
        .filter(|r| r.node == alice && matches!(r.what, What::Sent { kind: Some(MessageKind::Forward), .. }))
        .count();
    assert_eq!(forwards_before, 0, "notices before the publish was answered");
    let a = w.core_host(alice);
    assert_eq!(a.core.report().supernode, "sn-b");
    assert_eq!(a.core.link().map(|l| l.link().epoch()), Some(2));
    assert!(a.saw(|e| matches!(e, Event::Reconnected { supernode } if supernode == "sn-b")));
    w.run_until(w.now + secs(1.0));
    // Our entry names the new super node, and Bob's call was told where we went.
    assert_eq!(indexed(&w, "alice").supernode, "sn-b");
    assert_eq!(w.core_host(bob).core.calls().call_peer_supernode(id).as_deref(), Some("sn-b"));
    assert!(connected(w.core_host(bob), &id));

    w.core_command(alice, Command::EndCall { id });
    w.run_until(w.now + secs(1.0));
    let op = w.core_command(alice, Command::Logout);
    assert!(run_until_true(&mut w, secs(6.0), |w| done(w, alice, op)));
    assert!(matches!(w.core_host(alice).result(op), Some(Ok(Done::Ok))));
    assert_eq!(*w.core_host(alice).core.phase(), Phase::LoggedOut);
    assert_eq!(indexed(&w, "alice").status, Status::Offline);
    let byes =
        w.trace.iter().filter(|r| r.node == alice && matches!(r.what, What::Sent { kind: Some(MessageKind::Bye), .. }));
    assert_eq!(byes.count(), 2, "one to leave sn-a, one at logout");
    // Nothing more from Alice: no keepalives, no rejoin.
    let sent = w.trace.iter().filter(|r| r.node == alice && matches!(r.what, What::Sent { .. })).count();
    w.run_until(w.now + secs(60.0));
    assert_eq!(w.trace.iter().filter(|r| r.node == alice && matches!(r.what, What::Sent { .. })).count(), sent);
    assert!(!w.core_host(alice).core.ladder().is_busy());
}

#[test]
fn effects_that_answer_nothing_leave_nothing_behind() {
    let w = two_hosts_call(61);
    for h in [NodeId(2), NodeId(3)] {
        let c = &w.core_host(h).core;
        assert_eq!(c.effects_waiting(), 0, "every effect with a result got it; the rest were never kept");
        assert_eq!(c.stats().stray_effects, 0);
    }
}

#[test]
fn a_cone_calls_a_symmetric_nat_through_the_extra_sockets() {
    let mut w = World::new(71);
    supernodes(&mut w, &["sn-a", "sn-b"]);
    let alice = host(&mut w, 0, vec![entry("sn-a", sn(1))], login(0, 0, &[]));
    let symmetric = Box::new(super::nat::Symmetric::new(IpAddr::from([198, 18, 12, 1]), MAPPING_TTL));
    let carol = host_behind(&mut w, 2, symmetric, vec![entry("sn-b", sn(2))], login(2, 0, &[]));
    assert!(run_until_true(&mut w, secs(6.0), |w| w.index.entries.len() == 2));
    assert_eq!(w.core_host(carol).core.report().nat, crate::nat::NatKind::Symmetric);
    let id = place(&mut w, (alice, 0), (carol, 2));
    let settle = secs((crate::call::birthday::HARD_FOR_MS + 1_000) as f64 / 1000.0);
    w.run_until(w.now + settle);
    let path = |h| w.core_host(h).core.calls().call_media(id).and_then(|m| m.path);
    assert_eq!((path(alice), path(carol)), (Some("punched"), Some("punched")));
    // The symmetric side opened extra sockets (a new mapping each), and the cone side's
    // answers came in through them: the core routed both ways.
    let (opened, took_in) = w.core_host(carol).probe_sockets;
    assert!(opened > 0 && took_in > 0, "carol opened {opened} extra sockets, which took in {took_in}");
}

/// Two hosts online on two super nodes, buddies of each other.
fn two_online(seed: u64) -> (World, NodeId, NodeId) {
    let mut w = World::new(seed);
    supernodes(&mut w, &["sn-a", "sn-b"]);
    let alice = host(&mut w, 0, vec![entry("sn-a", sn(1))], login(0, 0, &["bob"]));
    let bob = host(&mut w, 1, vec![entry("sn-b", sn(2))], login(1, 0, &["alice"]));
    assert!(run_until_true(&mut w, secs(5.0), |w| {
        [(alice, "bob"), (bob, "alice")].iter().all(|(h, other)| {
            w.core_host(*h).saw(|e| matches!(e, Event::Presence { user, status: Status::Online, .. } if user == other))
        })
    }));
    (w, alice, bob)
}

#[test]
fn a_chat_message_reaches_an_online_buddy_within_a_second_and_its_receipt_comes_back() {
    let (mut w, alice, bob) = two_online(5);
    let sent_at = w.now;
    let op = w.core_command(alice, Command::SendChat { to: "bob".into(), text: "hello bob".into() });
    assert!(run_until_true(&mut w, secs(3.0), |w| done(w, alice, op)), "the send completes");
    let Some(Ok(Done::Chat(sent))) = w.core_host(alice).result(op) else {
        panic!("{:?}", w.core_host(alice).result(op))
    };
    let sent = sent.clone();
    assert_eq!(sent.to, "bob");
    let arrived = |w: &World| {
        w.core_host(bob).saw(|e| matches!(e, Event::Chat { from, text, .. } if from == "alice" && text == "hello bob"))
    };
    assert!(run_until_true(&mut w, secs(1.0), arrived), "pushed to bob within a second");
    assert!(w.now - sent_at < secs(1.0), "{:?}", w.now - sent_at);
    // Bob's device wrote it before telling anyone; its receipt moves alice's copy on.
    let delivered = |w: &mut World| {
        w.core_host_mut(alice).history().status(sent.id).unwrap() == Some(crate::chat::history::Status::Delivered)
    };
    let end = w.now + secs(2.0);
    while !delivered(&mut w) && w.step(end) {}
    assert!(
        delivered(&mut w),
        "the delivery receipt reached alice: {:?} {:?} {:?}",
        w.core_host(alice).core.chat_stats(),
        w.core_host(bob).core.chat_stats(),
        w.core_host_mut(alice).history().status(sent.id)
    );
    // Once in bob's history, however many fetches follow (the store kept it until acked).
    w.core_command(bob, Command::FetchChat);
    w.run_until(w.now + secs(2.0));
    let texts: Vec<_> = w
        .core_host_mut(bob)
        .history()
        .history(&crate::chat::message::Conversation::User("alice".into()), 10)
        .unwrap()
        .into_iter()
        .map(|r| r.body)
        .collect();
    assert_eq!(texts, vec![crate::chat::message::Body::Text { text: "hello bob".into() }]);
    assert_eq!(w.core_host(bob).core.chat_stats().received, 1, "{:?}", w.core_host(bob).core.chat_stats());
}

/// Alice, bob and carol online on two super nodes; carol is on nobody's list, and bob's
/// list says `carol_on_bobs_list` about her when given.
fn three_online(seed: u64, carol_on_bobs_list: Option<Relation>) -> (World, NodeId, NodeId, NodeId) {
    let mut w = World::new(seed);
    supernodes(&mut w, &["sn-a", "sn-b"]);
    let alice = host(&mut w, 0, vec![entry("sn-a", sn(1))], login(0, 0, &["bob"]));
    let mut bobs = login(1, 0, &["alice"]);
    if let Some(r) = carol_on_bobs_list {
        bobs.contacts.push((9, "carol".into(), r));
    }
    let bob = host(&mut w, 1, vec![entry("sn-b", sn(2))], bobs);
    let carol = host(&mut w, 2, vec![entry("sn-a", sn(1))], login(2, 0, &[]));
    assert!(run_until_true(&mut w, secs(5.0), |w| {
        w.core_host(bob).saw(|e| matches!(e, Event::Presence { user, status: Status::Online, .. } if user == "alice"))
            && *w.core_host(carol).core.phase() == Phase::Online
    }));
    (w, alice, bob, carol)
}

fn send_chat(w: &mut World, from: NodeId, to: &str, text: &str) -> crate::host::core::chat::Sent {
    let op = w.core_command(from, Command::SendChat { to: to.into(), text: text.into() });
    assert!(run_until_true(w, secs(3.0), |w| done(w, from, op)), "the send completes");
    match w.core_host(from).result(op) {
        Some(Ok(Done::Chat(s))) => s.clone(),
        other => panic!("{other:?}"),
    }
}

fn chat_from(h: &CoreNode, who: &str) -> Vec<(String, bool)> {
    h.events()
        .filter_map(|e| match e {
            Event::Chat { from, text, request, .. } if from == who => Some((text.clone(), *request)),
            _ => None,
        })
        .collect()
}

#[test]
fn a_stranger_s_message_is_a_request_without_receipts_and_a_blocked_user_s_is_dropped() {
    let (mut w, alice, bob, carol) = three_online(21, None);
    let from_carol = send_chat(&mut w, carol, "bob", "hi, we met at the conference");
    let from_alice = send_chat(&mut w, alice, "bob", "lunch?");
    assert!(run_until_true(&mut w, secs(2.0), |w| chat_from(w.core_host(bob), "alice").len() == 1
        && chat_from(w.core_host(bob), "carol").len() == 1));
    assert_eq!(chat_from(w.core_host(bob), "carol"), vec![("hi, we met at the conference".into(), true)]);
    assert_eq!(chat_from(w.core_host(bob), "alice"), vec![("lunch?".into(), false)]);
    // Bob reads both: alice hears it, carol learns nothing.
    w.core_command(bob, Command::ReadChat { from: "carol".into(), ids: vec![from_carol.id] });
    w.core_command(bob, Command::ReadChat { from: "alice".into(), ids: vec![from_alice.id] });
    w.run_until(w.now + secs(3.0));
    use crate::chat::history::Status as S;
    assert_eq!(w.core_host_mut(alice).history().status(from_alice.id).unwrap(), Some(S::Read));
    assert_eq!(w.core_host_mut(carol).history().status(from_carol.id).unwrap(), Some(S::Stored), "no receipt");
    assert_eq!(w.core_host(bob).core.chat_stats().requests, 1);

    // Bob has blocked carol: her message is dropped, and she is told nothing.
    let (mut w, _alice, bob, carol) = three_online(22, Some(Relation::Blocked));
    let sent = send_chat(&mut w, carol, "bob", "why did you block me");
    w.run_until(w.now + secs(3.0));
    assert!(chat_from(w.core_host(bob), "carol").is_empty());
    let stats = w.core_host(bob).core.chat_stats();
    assert_eq!((stats.blocked, stats.received), (1, 0), "{stats:?}");
    assert_eq!(w.core_host_mut(carol).history().status(sent.id).unwrap(), Some(S::Stored));
    // Acknowledged: a later fetch brings nothing again.
    w.core_command(bob, Command::FetchChat);
    w.run_until(w.now + secs(2.0));
    assert_eq!(w.core_host(bob).core.chat_stats().blocked, 1);
}

/// Host `i` with user keys of its own (the other worlds share one list key).
fn host_with_keys(w: &mut World, i: usize, cache: Vec<CacheEntry>) -> NodeId {
    let user = ["alice", "bob", "carol"][i];
    let list_key = ListKey([30 + i as u8; 32]);
    let login = FakeLogin::new(user, list_key.clone(), 0, LOGIN_DELAY);
    let nat = Box::new(Cone::new(IpAddr::from([198, 18, 10 + i as u8, 1]), MAPPING_TTL));
    let private = SocketAddr::new(IpAddr::from([10, 0, i as u8, 2]), 40_000);
    let mut cfg = config();
    cfg.list_key = list_key;
    w.add_core_host(Seat { user: user.into(), private, nat, key: key(i), login }, cfg, cache)
}

/// `h`'s history of group `g`: (author, text) in order.
fn group_texts(w: &mut World, h: NodeId, g: [u8; 16]) -> Vec<(String, String)> {
    w.core_host_mut(h)
        .history()
        .history(&crate::chat::message::Conversation::Group(g), 1000)
        .unwrap()
        .into_iter()
        .filter_map(|r| match r.body {
            crate::chat::message::Body::Text { text } => Some((r.from, text)),
            _ => None,
        })
        .collect()
}

fn group_send(w: &mut World, h: NodeId, text: &str) -> OpId {
    w.core_command(h, Command::GroupSend { group: "@team".into(), text: text.into() })
}

#[test]
fn a_group_on_two_super_nodes_converges_after_a_member_was_cut_off_while_everyone_wrote() {
    let mut w = World::new(81);
    let sns = supernodes(&mut w, &["sn-a", "sn-b"]);
    let alice = host_with_keys(&mut w, 0, vec![entry("sn-a", sn(1))]);
    let bob = host_with_keys(&mut w, 1, vec![entry("sn-b", sn(2))]);
    let carol = host_with_keys(&mut w, 2, vec![entry("sn-b", sn(2))]);
    let hosts = [alice, bob, carol];
    assert!(run_until_true(&mut w, secs(6.0), |w| w.index.entries.len() == 3), "all three are indexed");

    let op = w
        .core_command(alice, Command::GroupCreate { name: "team".into(), members: vec!["bob".into(), "Carol".into()] });
    assert!(run_until_true(&mut w, secs(5.0), |w| done(w, alice, op)), "the invites are written");
    let Some(Ok(Done::Chat(made))) = w.core_host(alice).result(op) else {
        panic!("{:?}", w.core_host(alice).result(op))
    };
    assert_eq!(made.to, "@team");
    let g = made.id;
    // Every member learns the group by its name, and reads what is sent to it.
    let op = group_send(&mut w, alice, "welcome");
    assert!(run_until_true(&mut w, secs(5.0), |w| done(w, alice, op)));
    assert!(matches!(w.core_host(alice).result(op), Some(Ok(Done::Chat(_)))), "{:?}", w.core_host(alice).result(op));
    let heard = |w: &World, h: NodeId, text: &str| {
        w.core_host(h).saw(|e| matches!(e, Event::Chat { group: Some(n), text: t, from, .. } if n == "team" && t == text && from == "alice"))
    };
    assert!(run_until_true(&mut w, secs(3.0), |w| heard(w, bob, "welcome") && heard(w, carol, "welcome")));
    let op = group_send(&mut w, carol, "hi from carol");
    assert!(run_until_true(&mut w, secs(5.0), |w| done(w, carol, op)));

    // Carol is cut off from both super nodes; everyone writes meanwhile, carol too.
    let cut = crate::host::core::sim::LinkSpec { loss_ppm: 1_000_000, ..Default::default() };
    for sn in &sns {
        w.set_link(carol, *sn, cut);
    }
    w.run_until(w.now + secs(1.0));
    for (h, text) in [(alice, "while carol was away 1"), (bob, "while carol was away 2"), (carol, "carol, alone")] {
        group_send(&mut w, h, text);
        w.run_until(w.now + secs(2.0));
    }
    w.run_until(w.now + secs(30.0));
    let before = group_texts(&mut w, bob, g);
    assert!(!before.iter().any(|(_, t)| t == "carol, alone"), "carol's text did not get out: {before:?}");
    assert!(!group_texts(&mut w, carol, g).iter().any(|(_, t)| t == "while carol was away 1"));

    // Healed: carol rejoins, fetches what was stored for her, and her text reaches the
    // others by sync.
    for sn in &sns {
        w.set_link(carol, *sn, Default::default());
    }
    let want = 5;
    let converged = |w: &mut World| {
        let all: Vec<_> = hosts.iter().map(|h| group_texts(w, *h, g)).collect();
        all[0].len() == want && all.iter().all(|t| *t == all[0])
    };
    let end = w.now + secs(120.0);
    while !converged(&mut w) && w.step(end) {}
    let all: Vec<_> = hosts.iter().map(|h| group_texts(&mut w, *h, g)).collect();
    assert!(
        converged(&mut w),
        "identical histories: {all:#?}\n{:?}",
        hosts.map(|h| w.core_host(h).core.chat_group_stats())
    );
}

#[test]
fn a_send_that_cannot_be_sealed_uses_no_number_so_the_recipient_sees_no_gap() {
    let mut w = World::new(9);
    supernodes(&mut w, &["sn-a", "sn-b"]);
    let alice = host(&mut w, 0, vec![entry("sn-a", sn(1))], login(0, 0, &["bob"]));
    assert!(run_until_true(&mut w, secs(5.0), |w| *w.core_host(alice).core.phase() == Phase::Online));
    // Bob has never logged in: no keys to seal to, the send fails.
    let op = w.core_command(alice, Command::SendChat { to: "bob".into(), text: "anyone?".into() });
    assert!(run_until_true(&mut w, secs(5.0), |w| done(w, alice, op)));
    assert!(matches!(w.core_host(alice).result(op), Some(Err(_))), "{:?}", w.core_host(alice).result(op));
    // Once he has, the conversation's first message is number 1: no gap at bob.
    let bob = host(&mut w, 1, vec![entry("sn-b", sn(2))], login(1, 0, &["alice"]));
    assert!(run_until_true(&mut w, secs(5.0), |w| w
        .core_host(alice)
        .saw(|e| matches!(e, Event::Presence { user, status: Status::Online, .. } if user == "bob"))));
    let sent = send_chat(&mut w, alice, "bob", "hello");
    assert!(run_until_true(&mut w, secs(2.0), |w| !chat_from(w.core_host(bob), "alice").is_empty()));
    let h = w.core_host_mut(bob).history();
    let rows = h.history(&crate::chat::message::Conversation::User("alice".into()), 10).unwrap();
    assert_eq!(rows.iter().map(|r| (r.id, r.seq)).collect::<Vec<_>>(), vec![(sent.id, 1)]);
    assert!(h.missing("bob", |_| true).unwrap().is_empty());
}

#[test]
fn a_buddy_s_presence_brings_their_keys_so_writing_to_them_needs_no_lookup() {
    let (mut w, alice, bob) = two_online(13);
    let from = w.trace.len();
    send_chat(&mut w, alice, "bob", "no lookup needed");
    assert!(run_until_true(&mut w, secs(2.0), |w| !chat_from(w.core_host(bob), "alice").is_empty()));
    let finds =
        w.trace[from..].iter().filter(|r| matches!(r.what, What::Sent { kind: Some(MessageKind::Find), .. })).count();
    assert_eq!(finds, 0, "neither side looked the other up for keys");
}

/// A file of `len` bytes that differs everywhere (so a misplaced chunk shows).
fn file_of(dir: &std::path::Path, len: usize) -> std::path::PathBuf {
    let path = dir.join("data.bin");
    let bytes: Vec<u8> = (0..len).map(|i| (i as u32).wrapping_mul(2_654_435_761).to_be_bytes()[0]).collect();
    std::fs::write(&path, bytes).unwrap();
    path
}

fn sha_hex(path: &std::path::Path) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(std::fs::read(path).unwrap()))
}

#[test]
fn a_file_offered_to_an_online_buddy_arrives_whole_over_a_file_call() {
    use crate::host::core::files::FilesConfig;
    let (mut w, alice, bob) = two_online(17);
    let a_home = tempfile::tempdir().unwrap();
    let b_home = tempfile::tempdir().unwrap();
    let inbox = tempfile::tempdir().unwrap();
    w.core_set_files(alice, FilesConfig { transfers: Some(a_home.path().join("transfers")), accept_into: None });
    w.core_set_files(
        bob,
        FilesConfig { transfers: Some(b_home.path().join("transfers")), accept_into: Some(inbox.path().to_path_buf()) },
    );
    let src = file_of(a_home.path(), 300_000);
    let op = w.core_command(alice, Command::SendFile { to: "bob".into(), path: src.clone() });
    let completed = run_until_true(&mut w, secs(30.0), |w| done(w, alice, op));
    assert!(
        completed,
        "the send completes: alice {:?} {:?} bob {:?} {:?}",
        w.core_host(alice).core.files_stats(),
        w.core_host(alice)
            .events
            .iter()
            .map(|(_, e)| e)
            .filter(|e| !matches!(e, Event::Presence { .. }))
            .collect::<Vec<_>>(),
        w.core_host(bob).core.files_stats(),
        w.core_host(bob)
            .events
            .iter()
            .map(|(_, e)| e)
            .filter(|e| !matches!(e, Event::Presence { .. }))
            .collect::<Vec<_>>(),
    );
    let f = match w.core_host(alice).result(op) {
        Some(Ok(Done::File(f))) => f.clone(),
        other => panic!("{other:?}"),
    };
    assert_eq!(
        f.status,
        "done",
        "{f:?} bob: {:?} {:?}",
        w.core_host(bob).core.files_stats(),
        w.core_host(bob).core.chat_stats()
    );
    assert_eq!(f.sha256, sha_hex(&src));
    assert_eq!(f.bytes, 300_000);
    assert_eq!(f.chunks, 5, "every chunk once");
    assert!(["direct", "punched"].contains(&f.path.as_str()), "{}", f.path);
    let placed = inbox.path().join("data.bin");
    assert!(run_until_true(&mut w, secs(2.0), |_| placed.exists()), "bob placed the file");
    assert_eq!(sha_hex(&placed), f.sha256);
    assert!(
        w.core_host(bob).saw(|e| matches!(e, Event::File { state: crate::host::core::files::FileState::Done, .. }))
    );
    let folders = |d: &std::path::Path| std::fs::read_dir(d.join("transfers")).map_or(0, |r| r.count());
    assert_eq!((folders(a_home.path()), folders(b_home.path())), (0, 0), "both folders go once the file is whole");
}
