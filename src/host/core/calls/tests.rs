//! Whole calls between [`CallsCore`]s on virtual time (`sim::calls`): real invites,
//! replies and sealed signals through a fake of the super nodes' forwarding, NATs as
//! functions, a real relay session table, media over an in-memory wire.

use crate::call::audio::{tone, tone_strength};
use crate::crypto::keys::PrivateKey;
use crate::crypto::keys::tests::{fixture_key, test_key};
use crate::host::core::calls::CallsConfig;
use crate::host::core::sim::calls::{CallsWorld, RelayMode, Seat, Signalling};
use crate::host::core::sim::nat::{Cone, NatFn, NoNat, Symmetric, UdpBlocked};
use crate::nat::NatKind;
use std::net::IpAddr;
use std::time::Duration;

/// Router mappings live this long without traffic out.
const MAPPING_TTL: Duration = Duration::from_secs(30);
/// Each side's tone.
const TONES: [f32; 3] = [440.0, 880.0, 660.0];

pub(super) fn key(n: usize) -> PrivateKey {
    match n {
        0 => test_key(2),
        1 => fixture_key("host-1"),
        _ => fixture_key("host-2"),
    }
}

/// A router of `kind` on the `n`th public address, its kind as login classifies it, and
/// the address of the host behind it.
pub(super) fn router(kind: &str, n: u8) -> (Box<dyn NatFn>, NatKind, IpAddr) {
    let ip = IpAddr::from([198, 18, n, 2]);
    let lan = IpAddr::from([10, n, 1, 2]);
    match kind {
        "public" => (Box::new(NoNat::new(ip)), NatKind::None, ip),
        "cone" => (Box::new(Cone::new(ip, MAPPING_TTL)), NatKind::Cone, lan),
        "symmetric" => (Box::new(Symmetric::new(ip, MAPPING_TTL)), NatKind::Symmetric, lan),
        "sequential" => (Box::new(Symmetric::sequential(ip, MAPPING_TTL)), NatKind::Symmetric, lan),
        "udp-blocked" => (Box::new(UdpBlocked::new(ip)), NatKind::UdpBlocked, lan),
        other => panic!("no router kind {other}"),
    }
}

/// Hosts alice, bob, carol… each behind its own router of the kind given, all on super
/// node `sn-a`.
fn world(seed: u64, kinds: &[&str], signalling: Signalling) -> CallsWorld {
    let mut routers = Vec::new();
    let mut hosts = Vec::new();
    for (i, kind) in kinds.iter().enumerate() {
        let (r, nat, ip) = router(kind, i as u8 + 1);
        routers.push(r);
        hosts.push((nat, ip));
    }
    let mut w = CallsWorld::new(seed, routers, signalling);
    for (i, (nat, ip)) in hosts.into_iter().enumerate() {
        let user = ["alice", "bob", "carol"][i];
        w.add_host(user, key(i), Seat { router: i, ip, nat }, "sn-a", CallsConfig::default());
    }
    w
}

/// `a` calls `b` playing its tone, `b` answers (with its tone) once it rings: the call
/// id, once both sides ring and `b` answered.
pub(super) fn place(w: &mut CallsWorld, a: usize, b: usize, accept: bool) -> [u8; 16] {
    let id = w.call(a, b);
    w.hosts[a].core.set_call_audio(id, tone(&[TONES[a]], 30.0, 0.5));
    w.hosts[a].core.set_call_recording(id, true);
    let deadline = w.now_ms + 2_000;
    assert!(w.run_while_not(deadline, |w| w.hosts[b].saw(&id, "ringing") && w.hosts[a].saw(&id, "ringing")));
    w.hosts[b].core.set_call_audio(id, tone(&[TONES[b]], 30.0, 0.5));
    w.hosts[b].core.set_call_recording(id, true);
    w.answer(b, id, accept);
    id
}

pub(super) fn connected_path(w: &CallsWorld, h: usize, id: [u8; 16]) -> Option<&'static str> {
    use crate::call::signal::State;
    match w.hosts[h].core.call_state(id)? {
        State::Connected(p) => Some(p.label()),
        _ => None,
    }
}

/// The paths a side reported, in order.
pub(super) fn paths(w: &CallsWorld, h: usize, id: &[u8; 16]) -> Vec<String> {
    let hex = crate::host::calls::call_id_hex(id);
    w.hosts[h]
        .events
        .iter()
        .filter_map(|(_, e)| match e {
            crate::host::buddies::Event::Call { call_id, state, .. } if *call_id == hex => {
                let s = crate::host::core::sim::calls::call_state_label(state);
                s.strip_prefix("connected:").map(str::to_owned)
            }
            _ => None,
        })
        .collect()
}

/// Hangs up from `a` and checks that each side heard the other's tone, and nothing is
/// left behind.
pub(super) fn hang_up_and_check_tones(w: &mut CallsWorld, a: usize, b: usize, id: [u8; 16]) {
    w.end(a, id);
    let deadline = w.now_ms + 1_000;
    assert!(w.run_while_not(deadline, |w| w.hosts[b].saw(&id, "ended:hung_up")));
    for (me, other) in [(a, b), (b, a)] {
        let report = w.hosts[me].core.take_call_report(id).expect("a report");
        assert!(report.media.received > 40, "{} received {} frames", w.hosts[me].user, report.media.received);
        let heard = &report.heard[report.heard.len() / 2..];
        assert!(tone_strength(heard, TONES[other]) > 0.3, "{} does not hear {} Hz", w.hosts[me].user, TONES[other]);
        assert!(tone_strength(heard, TONES[me]) < 0.05, "{} hears itself", w.hosts[me].user);
        assert_eq!(report.media.tick_late_ms_max, 0, "the media clock never ticked late");
        assert!(w.hosts[me].core.call_state(id).is_none(), "the call leaves nothing behind");
    }
    assert_eq!(w.voice_outside_ticks, 0, "voice goes out only in the media clock's steps");
}

#[test]
fn a_direct_call_connects_and_each_side_hears_the_other() {
    let mut w = world(1, &["public", "cone"], Signalling::default());
    let id = place(&mut w, 0, 1, true);
    let deadline = w.now_ms + 3_000;
    assert!(w.run_while_not(deadline, |w| connected_path(w, 0, id).is_some() && connected_path(w, 1, id).is_some()));
    assert_eq!((connected_path(&w, 0, id), connected_path(&w, 1, id)), (Some("direct"), Some("direct")));
    // A stranger's reply told the caller nothing of where the callee is; its Accept did.
    assert!(!w.hosts[0].core.call_peer_candidates(id).unwrap().is_empty());
    w.run_until(w.now_ms + 2_000);
    hang_up_and_check_tones(&mut w, 0, 1, id);
    assert_eq!(w.relay_requests, 0, "no relay for a direct call");
    let stats: Vec<_> = w.call_stats.iter().map(|(h, s)| (*h, s.path.as_str(), s.outcome.as_str())).collect();
    assert_eq!(stats, [(0, "direct", "hung_up")], "the caller reports the call, once");
}

/// The caller's application gives a call its audio once it has the call's id; the other
/// side may answer, and media start, before that. The audio plays from then on.
#[test]
fn audio_given_after_media_started_is_heard() {
    let mut w = world(1, &["public", "cone"], Signalling::default());
    let id = w.call(0, 1);
    w.hosts[0].core.set_call_recording(id, true);
    let deadline = w.now_ms + 2_000;
    assert!(w.run_while_not(deadline, |w| w.hosts[1].saw(&id, "ringing")));
    w.hosts[1].core.set_call_audio(id, tone(&[TONES[1]], 30.0, 0.5));
    w.hosts[1].core.set_call_recording(id, true);
    w.answer(1, id, true);
    let deadline = w.now_ms + 3_000;
    assert!(w.run_while_not(deadline, |w| connected_path(w, 0, id).is_some() && connected_path(w, 1, id).is_some()));
    w.run_until(w.now_ms + 500);
    w.hosts[0].core.set_call_audio(id, tone(&[TONES[0]], 30.0, 0.5));
    w.run_until(w.now_ms + 2_000);
    hang_up_and_check_tones(&mut w, 0, 1, id);
}

/// A call from behind a symmetric NAT to one behind a cone, from `seed`: the caller asks
/// for the relay at once, and the birthday technique punches a path, which wins. Which of
/// the two carries media first is a race decided by the link delays the seed draws.
/// Returns the paths each side reported, in order.
fn symmetric_to_cone(seed: u64) -> [Vec<String>; 2] {
    let mut w = world(seed, &["symmetric", "cone"], Signalling { notice_ms: 30, relay: RelayMode::Grant(1) });
    let id = place(&mut w, 0, 1, true);
    let deadline = w.now_ms + 10_000;
    assert!(w.run_while_not(deadline, |w| {
        connected_path(w, 0, id) == Some("punched") && connected_path(w, 1, id) == Some("punched")
    }));
    assert_eq!(w.relay_requests, 1, "the relay asked for once");
    assert_eq!(w.granted.len(), 1);
    assert!(w.relayed() > 0, "probes went through the relay");
    let sockets = w.trace.iter().any(|r| r.contains("h0 effect open_sockets"));
    assert!(sockets, "the symmetric side opened extra sockets for the birthday technique");
    w.run_until(w.now_ms + 2_000);
    let paths = [paths(&w, 0, &id), paths(&w, 1, &id)];
    hang_up_and_check_tones(&mut w, 0, 1, id);
    assert_eq!(w.released, w.granted, "the relay session is released at the end");
    paths
}

#[test]
fn symmetric_and_cone_go_through_the_relay_then_punch() {
    assert_eq!(symmetric_to_cone(0), [["relayed_udp", "punched"], ["relayed_udp", "punched"]], "upgraded mid-call");
}

#[test]
fn symmetric_and_cone_punch_before_the_relay_carries_media() {
    assert_eq!(symmetric_to_cone(2), [["punched"], ["punched"]]);
}

#[test]
fn extra_sockets_of_a_call_that_ends_before_they_are_reported_open_are_closed() {
    let mut w = world(0, &["symmetric", "cone"], Signalling { notice_ms: 30, relay: RelayMode::Grant(1) });
    // The shell answers late: the call ends between the open and its answer.
    w.probe_open_ms = 3_000;
    let id = place(&mut w, 0, 1, true);
    let deadline = w.now_ms + 5_000;
    assert!(w.run_while_not(deadline, |w| w.probe_sockets_open(0) > 0), "the birthday technique opened sockets");
    w.end(0, id);
    w.run_until(w.now_ms + 4_000);
    assert_eq!(w.probe_sockets_open(0), 0, "no socket outlives its call");
}

#[test]
fn a_full_event_queue_gives_up_anything_before_a_call_s_end() {
    let mut w = world(0, &["public", "cone"], Signalling::default());
    let core = &mut w.hosts[0].core;
    let event =
        |state| crate::host::buddies::Event::Call { call_id: "00".into(), peer: "bob".into(), state, codec: None };
    let ended = || event(crate::host::calls::CallState::Ended { reason: "hung_up" });
    core.push_event(ended());
    for _ in 0..super::QUEUED_MAX + 10 {
        core.push_event(event(crate::host::calls::CallState::Ringing));
    }
    core.push_event(ended());
    let mut ends = 0;
    let mut all = 0;
    while let Some(e) = core.poll_event() {
        all += 1;
        ends += usize::from(e == ended());
    }
    assert_eq!((all, ends), (super::QUEUED_MAX, 2), "the queue stays bounded and keeps both ends");
}

#[test]
fn the_callee_declines() {
    let mut w = world(3, &["cone", "cone"], Signalling::default());
    let id = place(&mut w, 0, 1, false);
    let deadline = w.now_ms + 1_000;
    assert!(w.run_while_not(deadline, |w| w.hosts[0].saw(&id, "ended:declined")));
    assert!(w.hosts[1].saw(&id, "ended:declined"));
    assert!(!w.hosts[0].saw(&id, "connecting") && !w.hosts[1].saw(&id, "connecting"));
    assert_eq!((w.hosts[0].core.calls_in_progress(), w.hosts[1].core.calls_in_progress()), (0, 0));
    assert!(w.hosts[0].core.take_call_report(id).is_none(), "no media, no report");
    let stats: Vec<_> = w.call_stats.iter().map(|(h, s)| (*h, s.path.as_str(), s.outcome.as_str())).collect();
    assert_eq!(stats, [(0, "none", "declined")]);
}

#[test]
fn the_caller_cancels_while_it_rings() {
    let mut w = world(4, &["public", "cone"], Signalling::default());
    let id = w.call(0, 1);
    let deadline = w.now_ms + 2_000;
    assert!(w.run_while_not(deadline, |w| w.hosts[0].saw(&id, "ringing")));
    w.end(0, id);
    let deadline = w.now_ms + 1_000;
    assert!(w.run_while_not(deadline, |w| w.hosts[1].saw(&id, "ended:cancelled")));
    assert!(w.hosts[0].saw(&id, "ended:cancelled"));
    assert_eq!((w.hosts[0].core.calls_in_progress(), w.hosts[1].core.calls_in_progress()), (0, 0));
    // A late accept on the callee's side changes nothing.
    w.answer(1, id, true);
    assert_eq!(w.hosts[1].core.calls_in_progress(), 0);
}

#[test]
fn the_invite_timeout_ends_a_call_nobody_answers() {
    let mut w = world(5, &["public", "cone"], Signalling::default());
    // The callee is not in the world's directory under that name: nothing reaches it.
    w.hosts[1].user = "nobody".into();
    let id = w.call(0, 1);
    let invite_ms = crate::call::signal::Timeouts::default().invite_ms;
    let deadline = w.now_ms + invite_ms + 100;
    assert!(w.run_while_not(deadline, |w| w.hosts[0].saw(&id, "ended:unreachable")));
    assert!(w.now_ms >= invite_ms, "not before its timeout");
    assert_eq!(w.hosts[0].core.calls_in_progress(), 0);
}

#[test]
fn an_invite_no_link_carries_ends_the_call_at_once_and_no_call_is_placed_while_the_link_is_down() {
    let mut w = world(5, &["public", "cone"], Signalling::default());
    // The link ends under the invite (the super node was already dead).
    w.fail_forwards_link_down = true;
    let id = w.call(0, 1);
    assert!(w.run_while_not(w.now_ms + 100, |w| w.hosts[0].saw(&id, "ended:unreachable")));
    assert!(w.now_ms < 100, "at once, not at the invite's timeout: {} ms", w.now_ms);
    assert_eq!(w.hosts[0].core.calls_in_progress(), 0);
    assert!(!w.hosts[1].saw(&id, "ringing"));
    // Once the host knows its link is down, it places no call (the invite would name
    // the super node it lost) until the next link is up.
    w.fail_forwards_link_down = false;
    w.hosts[0].core.on_link_down();
    let (callee, sn) = (w.hosts[1].credential.clone(), w.hosts[1].supernode.clone());
    let now = w.now();
    let h = &mut w.hosts[0];
    assert_eq!(h.core.call(now, &callee, sn, &h.env), Err(crate::host::core::calls::CallsError::NoLink));
    w.move_to(0, "sn-b");
    let id = place(&mut w, 0, 1, true);
    let deadline = w.now_ms + 3_000;
    assert!(w.run_while_not(deadline, |w| connected_path(w, 0, id).is_some()));
    w.run_until(w.now_ms + 1_000);
    hang_up_and_check_tones(&mut w, 0, 1, id);
}

#[test]
fn a_replayed_invite_rings_once() {
    let mut w = world(6, &["public", "cone"], Signalling::default());
    let id = w.call(0, 1);
    let deadline = w.now_ms + 1_000;
    assert!(w.run_while_not(deadline, |w| w.hosts[1].saw(&id, "ringing")));
    let invite = w.notices_to(1).first().cloned().expect("the invite");
    w.answer(1, id, false);
    w.run_until(w.now_ms + 200);
    let before = w.hosts[1].events.len();
    w.deliver_notice(1, invite);
    w.run_until(w.now_ms + 200);
    assert_eq!(w.hosts[1].events.len(), before, "the replay is refused");
    assert_eq!(w.hosts[1].core.calls_in_progress(), 0);
}

#[test]
fn a_stranger_learns_no_address_before_the_accept_and_a_buddy_does() {
    for buddies in [false, true] {
        let mut w = world(7, &["public", "cone"], Signalling::default());
        w.hosts[1].env.interfaces = vec![IpAddr::from([10, 2, 1, 2])];
        if buddies {
            w.befriend(0, 1);
        }
        let id = w.call(0, 1);
        let deadline = w.now_ms + 1_000;
        assert!(w.run_while_not(deadline, |w| w.hosts[0].saw(&id, "ringing")));
        let ringing = w.hosts[0].core.call_peer_candidates(id).unwrap();
        assert_eq!(!ringing.is_empty(), buddies, "candidates while ringing (buddies: {buddies})");
        if buddies {
            assert!(ringing.iter().any(|c| c.addr.ip() == IpAddr::from([10, 2, 1, 2])), "the LAN address, to a buddy");
        }
        w.answer(1, id, true);
        let deadline = w.now_ms + 1_000;
        assert!(w.run_while_not(deadline, |w| !w.hosts[0].core.call_peer_candidates(id).unwrap().is_empty()));
        let accepted = w.hosts[0].core.call_peer_candidates(id).unwrap();
        let lan = accepted.iter().any(|c| c.addr.ip() == IpAddr::from([10, 2, 1, 2]));
        assert_eq!(lan, buddies, "the LAN address only to a buddy (the default privacy rule)");
    }
}

#[test]
fn an_unanswered_relay_request_delays_no_media_frame() {
    let signalling = Signalling { relay: RelayMode::Never, ..Signalling::default() };
    let mut w = world(8, &["symmetric", "public", "symmetric"], signalling);
    let ab = place(&mut w, 0, 1, true);
    let deadline = w.now_ms + 3_000;
    assert!(w.run_while_not(deadline, |w| connected_path(w, 0, ab).is_some() && connected_path(w, 1, ab).is_some()));
    let connected_ms = w.now_ms;
    // Alice calls Carol; both behind symmetric NATs, so Alice asks for a relay at once,
    // and the super node never answers.
    let ac = place(&mut w, 0, 2, true);
    w.run_until(w.now_ms + 3_000);
    assert!(w.relay_requests >= 1 && w.granted.is_empty(), "a relay request is pending, unanswered");
    assert_eq!(connected_path(&w, 0, ac), None, "the second call has no path");
    let steps: Vec<_> = w.tick_steps.iter().filter(|s| s.call == ab && s.at_ms > connected_ms).collect();
    assert!(steps.len() > 2 * 150, "both sides ticked the first call all along ({})", steps.len());
    for s in &steps {
        assert_eq!((s.due, s.voice), (1, 1), "one frame in the very step its tick was due: {s:?}");
    }
    for h in [0, 1] {
        let m = w.hosts[h].core.call_media(ab).unwrap();
        assert_eq!(m.tick_late_ms_max, 0, "{}'s media clock never ticked late", w.hosts[h].user);
    }
    assert_eq!(w.voice_outside_ticks, 0);
    hang_up_and_check_tones(&mut w, 0, 1, ab);
}

#[test]
fn a_relay_request_that_fails_for_want_of_a_link_is_made_again_when_the_link_is_back() {
    let mut w = world(9, &["symmetric", "symmetric"], Signalling::default());
    w.fail_relay_requests_link_down = true;
    let id = place(&mut w, 0, 1, true);
    w.run_until(w.now_ms + 1_000);
    assert_eq!(w.relay_requests, 1);
    assert!(w.granted.is_empty() && connected_path(&w, 0, id).is_none());
    w.fail_relay_requests_link_down = false;
    // The caller's link is back, at another super node: the callee hears where it went,
    // and the relay is asked for again.
    w.move_to(0, "sn-b");
    let deadline = w.now_ms + 3_000;
    assert!(w.run_while_not(deadline, |w| connected_path(w, 0, id) == Some("relayed_udp")));
    assert_eq!(w.relay_requests, 2);
    assert_eq!(w.hosts[1].core.call_peer_supernode(id).as_deref(), Some("sn-b"), "the callee follows the Moved signal");
    w.run_until(w.now_ms + 1_000);
    hang_up_and_check_tones(&mut w, 0, 1, id);
}

#[test]
fn a_lost_relay_offer_is_made_again_while_media_has_no_path() {
    let mut w = world(12, &["symmetric", "symmetric"], Signalling::default());
    let id = place(&mut w, 0, 1, true);
    // Everything for the callee is lost from its accept on: the relay offer among it.
    w.lose_notices_to = Some(1);
    let deadline = w.now_ms + 1_000;
    assert!(w.run_while_not(deadline, |w| w.granted.len() == 1));
    let granted_ms = w.now_ms;
    w.run_until(w.now_ms + 500);
    w.lose_notices_to = None;
    let deadline = w.now_ms + 3_000;
    assert!(w.run_while_not(deadline, |w| connected_path(w, 1, id) == Some("relayed_udp")));
    assert!(
        w.now_ms >= granted_ms + 2_000,
        "connected by the repeated offer, {} ms after the grant",
        w.now_ms - granted_ms
    );
    assert_eq!(w.relay_requests, 1, "the same session, offered again");
    w.run_until(w.now_ms + 1_000);
    hang_up_and_check_tones(&mut w, 0, 1, id);
}

#[test]
fn a_host_whose_udp_is_blocked_calls_over_a_relay_leg_on_tcp() {
    let mut w = world(10, &["udp-blocked", "cone"], Signalling::default());
    let id = place(&mut w, 0, 1, true);
    let deadline = w.now_ms + 5_000;
    assert!(w.run_while_not(deadline, |w| connected_path(w, 0, id).is_some() && connected_path(w, 1, id).is_some()));
    assert_eq!(connected_path(&w, 0, id), Some("relayed_tcp"));
    assert!(w.trace.iter().any(|r| r.contains("h0 effect tcp_connect")));
    w.run_until(w.now_ms + 1_000);
    hang_up_and_check_tones(&mut w, 0, 1, id);
    assert!(w.trace.iter().any(|r| r.contains("h0 effect tcp_close")), "the relay leg is closed at the end");
}

#[test]
fn a_callee_in_a_call_answers_busy() {
    let mut w = world(13, &["public", "cone", "cone"], Signalling::default());
    let ab = place(&mut w, 0, 1, true);
    let deadline = w.now_ms + 3_000;
    assert!(w.run_while_not(deadline, |w| connected_path(w, 1, ab).is_some()));
    let cb = w.call(2, 1);
    let deadline = w.now_ms + 1_000;
    assert!(w.run_while_not(deadline, |w| w.hosts[2].saw(&cb, "ended:busy")));
    assert!(!w.hosts[1].saw(&cb, "ringing"), "the busy callee's host does not ring");
    assert_eq!(connected_path(&w, 1, ab), Some("direct"), "the call under way goes on");
    let stats: Vec<_> = w.call_stats.iter().map(|(h, s)| (*h, s.outcome.as_str())).collect();
    assert_eq!(stats, [(2, "busy")]);
}

#[test]
fn an_invisible_callee_rings_for_a_buddy_only_and_a_blocked_caller_never() {
    let mut w = world(14, &["public", "cone", "cone"], Signalling::default());
    w.hosts[1].env.status = Some(crate::index::Status::Invisible);
    w.befriend(0, 1);
    let stranger = w.call(2, 1);
    let buddy = w.call(0, 1);
    w.run_until(w.now_ms + 500);
    assert!(w.hosts[1].saw(&buddy, "ringing"), "a buddy's call rings");
    assert!(!w.hosts[1].saw(&stranger, "ringing") && !w.hosts[2].saw(&stranger, "ringing"), "no answer at all");
    assert_eq!(w.hosts[1].core.calls_in_progress(), 1);
    w.end(0, buddy);
    w.hosts[1].env.status = None;
    w.hosts[1].env.relations.insert("alice".into(), crate::buddy::Relation::Blocked);
    let blocked = w.call(0, 1);
    w.run_until(w.now_ms + 500);
    assert!(!w.hosts[1].saw(&blocked, "ringing") && !w.hosts[0].saw(&blocked, "ringing"));
    assert_eq!(w.hosts[1].core.calls_in_progress(), 0);
}

#[test]
fn a_relay_that_forgets_the_call_is_replaced_by_a_new_one() {
    let mut w = world(15, &["symmetric", "symmetric"], Signalling::default());
    let id = place(&mut w, 0, 1, true);
    let deadline = w.now_ms + 3_000;
    assert!(w.run_while_not(deadline, |w| connected_path(w, 0, id) == Some("relayed_udp")));
    w.run_until(w.now_ms + 500);
    let keepalives = |w: &CallsWorld| w.trace.iter().filter(|r| r.contains("h0 keepalive")).count();
    assert_eq!(keepalives(&w), 0);
    w.kill_relay_sessions();
    // Media goes silent; the path search starts again, asks for a new relay, and the
    // super node is asked whether it lives.
    let deadline = w.now_ms + 5_000;
    assert!(w.run_while_not(deadline, |w| w.granted.len() == 2 && w.relayed() > 0));
    assert!(keepalives(&w) >= 1, "the silence made the caller check its super node");
    w.run_until(w.now_ms + 2_000);
    assert_eq!(connected_path(&w, 0, id), Some("relayed_udp"));
    for h in [0, 1] {
        let m = w.hosts[h].core.call_media(id).unwrap();
        assert!(m.path_restarts >= 1, "{}: {m:?}", w.hosts[h].user);
    }
    assert_eq!(w.released, [w.granted[0]], "the dead session is released when the new one comes");
    hang_up_and_check_tones(&mut w, 0, 1, id);
}

/// One call through the relay and the birthday technique, from `seed`: its trace.
fn traced(seed: u64) -> Vec<String> {
    let mut w = world(seed, &["symmetric", "cone"], Signalling::default());
    let id = place(&mut w, 0, 1, true);
    w.run_until(w.now_ms + 6_000);
    w.end(0, id);
    w.run_until(w.now_ms + 500);
    w.trace
}

#[test]
fn the_same_seed_gives_the_same_trace() {
    let (a, b, c) = (traced(11), traced(11), traced(12));
    assert!(a.len() > 1000);
    assert_eq!(a, b);
    assert_ne!(a, c, "another seed draws other ports and delays");
}

#[test]
fn the_calls_core_can_move_between_threads() {
    // The shell keeps the core behind a mutex shared with its driver task.
    fn send<T: Send>() {}
    send::<super::CallsCore>();
}
