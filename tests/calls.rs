//! Call signalling end to end through super nodes on loopback: invite, ringing, accept,
//! decline, busy, cancel, no answer, calls to offline and unknown users, and nothing
//! left behind afterwards.

mod common;

use confab::call::signal::Timeouts;
use confab::host::Session;
use confab::host::buddies::Event;
use confab::host::calls::CallState;
use std::time::{Duration, Instant};

const PW: &str = "correct horse battery";

async fn host(t: &common::TestNet, user: &str, n: usize) -> Session {
    let mut s = t.settings();
    let len = s.ladder.bootstrap.len();
    s.ladder.bootstrap.rotate_left(n % len);
    let home = t.home(user);
    confab::host::register(&s, &home, user, PW).await.unwrap();
    let mut session = confab::host::login(&s, &home, user, PW).await.unwrap();
    session.set_call_timeouts(Timeouts { invite_ms: 3000, ring_ms: 1500, connect_ms: 1000, silence_ms: 5000 });
    session
}

/// The next call event on `s` in state `want` (skipping others), within 3 s.
async fn call_event(s: &mut Session, want: CallState) -> (String, String) {
    let what = format!("{want:?}");
    let got = std::cell::RefCell::new(None);
    common::expect_event(s, Duration::from_secs(3), &what, |e| match e {
        Event::Call { call_id, peer, state, .. } if *state == want => {
            *got.borrow_mut() = Some((call_id.clone(), peer.clone()));
            true
        }
        _ => false,
    })
    .await;
    got.into_inner().unwrap()
}

#[actix_rt::test]
async fn call_signalling_through_super_nodes() {
    let t = common::start(3, |c| c.supernode.probe_period_ms = 200).await;
    t.converge(3).await;
    let mut alice = host(&t, "alice", 0).await;
    let mut bob = host(&t, "bob", 1).await;
    let mut dave = host(&t, "dave", 2).await;
    assert_ne!(alice.report.supernode, bob.report.supernode, "signals should cross super nodes");

    // Decline: both sides end, with the reason.
    let a_id = alice.call("bob").await.unwrap();
    let (b_id, peer) = call_event(&mut bob, CallState::Ringing).await;
    assert_eq!((confab::host::calls::call_id_from_hex(&b_id).unwrap(), peer.as_str()), (a_id, "alice"));
    call_event(&mut alice, CallState::Ringing).await;
    bob.answer_call(a_id, false).await;
    call_event(&mut alice, CallState::Ended { reason: "declined" }).await;

    // Cancel before an answer.
    let a_id = alice.call("bob").await.unwrap();
    call_event(&mut bob, CallState::Ringing).await;
    call_event(&mut alice, CallState::Ringing).await;
    alice.end_call(a_id).await;
    call_event(&mut bob, CallState::Ended { reason: "cancelled" }).await;

    // Accept; a third caller finds bob busy; then hang up.
    let a_id = alice.call("bob").await.unwrap();
    call_event(&mut bob, CallState::Ringing).await;
    bob.answer_call(a_id, true).await;
    call_event(&mut alice, CallState::Connecting).await;
    // Both sides' loops run until media flows (each host runs its own event loop; here
    // the test drives two at once): a call left Connecting past its connect timeout
    // would end, and bob would not be busy.
    let connected = |e: &Event| matches!(e, Event::Call { state: CallState::Connected { .. }, .. });
    let within = Duration::from_secs(3);
    tokio::join!(
        common::expect_event(&mut alice, within, "alice connected", connected),
        common::expect_event(&mut bob, within, "bob connected", connected)
    );
    dave.call("bob").await.unwrap();
    let busy = CallState::Ended { reason: "busy" };
    let (_, (_, peer)) = tokio::join!(call_event(&mut dave, busy.clone()), call_event(&mut bob, busy.clone()));
    assert_eq!(peer, "dave");
    alice.end_call(a_id).await;
    call_event(&mut bob, CallState::Ended { reason: "hung_up" }).await;

    // Nobody answers: both sides give up when the ringing times out.
    alice.call("bob").await.unwrap();
    call_event(&mut bob, CallState::Ringing).await;
    let no_answer = CallState::Ended { reason: "no_answer" };
    tokio::join!(call_event(&mut alice, no_answer.clone()), call_event(&mut bob, no_answer.clone()));

    // Unknown and offline users are clear errors, before any invite.
    let e = alice.call("nobody-here").await.unwrap_err().to_string();
    assert!(e.contains("no user"), "{e}");
    dave.logout().await;
    let e = alice.call("dave").await.unwrap_err().to_string();
    assert!(e.contains("offline"), "{e}");

    // Nothing left behind.
    common::wait_for("no call left on either host", Duration::from_secs(3), async || {
        while alice.next_event_within(Duration::from_millis(10)).await.is_some() {}
        while bob.next_event_within(Duration::from_millis(10)).await.is_some() {}
        (alice.calls_in_progress(), bob.calls_in_progress()) == (0, 0)
    })
    .await;
    // Operators see the calls their hosts placed, by outcome (labels only); a host reports
    // its call after it ended, so poll.
    for outcome in ["declined", "cancelled", "no_answer", "hung_up"] {
        let label = format!("outcome=\"{outcome}\"");
        common::wait_for(&format!("a {outcome} call counted"), Duration::from_secs(3), async || {
            t.metric(&t.metrics().await, "confab_calls_total", &[&label]) >= 1.0
        })
        .await;
    }
    alice.logout().await;
    bob.logout().await;
    t.net.stop().await;
}

/// The path a call connected by, from a host's events.
fn connected_path(events: &[Event]) -> Option<&'static str> {
    events.iter().find_map(|e| match e {
        Event::Call { state: CallState::Connected { path }, .. } => Some(*path),
        _ => None,
    })
}

/// Runs a host's event loop for `d`, collecting what happened.
async fn run_for(s: &mut Session, d: Duration) -> Vec<Event> {
    let until = Instant::now() + d;
    let mut events = Vec::new();
    while let Some(left) = until.checked_duration_since(Instant::now()) {
        if let Some(e) = s.next_event_within(left).await {
            events.push(e);
        }
    }
    events
}

#[actix_rt::test]
async fn a_call_carries_voice_both_ways() {
    use confab::call::audio;
    let t = common::start(2, |c| c.supernode.probe_period_ms = 200).await;
    t.converge(2).await;
    let mut alice = host(&t, "alice", 0).await;
    let mut bob = host(&t, "bob", 1).await;
    let (to_bob, to_alice) = (audio::tone(&[440.0, 1000.0], 3.0, 12_000.0), audio::tone(&[600.0], 3.0, 12_000.0));

    let id = alice.call("bob").await.unwrap();
    alice.set_call_audio(id, to_bob.clone());
    alice.set_call_recording(id, true);
    call_event(&mut bob, CallState::Ringing).await;
    // Alice is not bob's buddy: while it rings she learns nothing of where he is.
    call_event(&mut alice, CallState::Ringing).await;
    assert_eq!(alice.call_peer_candidates(id), Some(Vec::new()));
    bob.set_call_audio(id, to_alice.clone());
    bob.set_call_recording(id, true);
    bob.answer_call(id, true).await;
    // Meanwhile a stranger who knows the call's tag sends Bob forged and replayed-looking
    // media: every packet must be dropped, and the call must not notice.
    let bob_addr = bob.report.public_addr;
    let stranger = std::thread::spawn(move || {
        let s = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        for i in 0..50u32 {
            let mut p = vec![0x4d];
            p.extend_from_slice(&id[..8]);
            p.extend_from_slice(&i.to_be_bytes());
            p.extend_from_slice(&(i * 960).to_be_bytes());
            p.extend_from_slice(&[0xab; 40]);
            s.send_to(&p, bob_addr).unwrap();
            std::thread::sleep(Duration::from_millis(20));
        }
    });
    let (ea, eb) = tokio::join!(run_for(&mut alice, Duration::from_secs(4)), run_for(&mut bob, Duration::from_secs(4)));
    stranger.join().unwrap();
    assert_eq!(connected_path(&ea), Some("direct"), "{ea:?}");
    assert_eq!(connected_path(&eb), Some("direct"), "{eb:?}");
    let told = alice.call_peer_candidates(id).unwrap();
    assert!(told.iter().any(|c| c.addr == bob_addr), "bob's Accept told alice where he is: {told:?}");
    alice.end_call(id).await;
    call_event(&mut bob, CallState::Ended { reason: "hung_up" }).await;

    let (ra, rb) = (alice.take_call_report(id).unwrap(), bob.take_call_report(id).unwrap());
    eprintln!("alice: {:?}\nbob: {:?}", ra.media, rb.media);
    assert!(rb.media.rejected >= 45, "the stranger's packets were not all refused: {:?}", rb.media);
    assert_eq!(ra.media.rejected, 0);
    for (who, r, sent, other) in [("bob", &rb, &to_bob, 600.0), ("alice", &ra, &to_alice, 1000.0)] {
        let m = &r.media;
        assert!(m.received >= 140, "{who} heard {} frames of 150", m.received);
        assert!((m.lost as f64) < 0.01 * m.received as f64, "{who} lost {} of {}", m.lost, m.received);
        let heard = &r.heard[r.heard.len().min(4800)..];
        let (lag, corr) = audio::best_correlation(&sent[..48_000], heard, 24_000);
        eprintln!("{who} heard the tone with correlation {corr:.3} at lag {lag}");
        assert!(corr > 0.8, "{who}: correlation {corr}");
        let mine = if who == "bob" { 440.0 } else { 600.0 };
        assert!(audio::tone_strength(heard, mine) > 0.3, "{who} does not hear {mine} Hz");
        assert!(audio::tone_strength(heard, if who == "bob" { other } else { 440.0 }) < 0.05);
    }
    assert_eq!((alice.calls_in_progress(), bob.calls_in_progress()), (0, 0));
    common::wait_for("the direct call counted", Duration::from_secs(3), async || {
        let m = t.metrics().await;
        t.metric(&m, "confab_calls_total", &["path=\"direct\"", "outcome=\"hung_up\""]) >= 1.0
            && t.metric(&m, "confab_call_setup_duration_seconds_count", &["path=\"direct\""]) >= 1.0
    })
    .await;
    alice.logout().await;
    bob.logout().await;
    t.net.stop().await;
}

#[actix_rt::test]
async fn relay_only_calls_go_through_a_super_node_relay() {
    use confab::call::audio;
    let t = common::start(2, |c| c.supernode.probe_period_ms = 200).await;
    t.converge(2).await;
    let mut carol = host(&t, "carol", 0).await;
    let mut dave = host(&t, "dave", 1).await;
    // Carol keeps her address to herself: media goes through her super node's relay.
    carol.set_relay_only(true);
    let sent = audio::tone(&[700.0], 3.0, 12_000.0);
    let id = carol.call("dave").await.unwrap();
    carol.set_call_audio(id, sent.clone());
    call_event(&mut dave, CallState::Ringing).await;
    dave.set_call_recording(id, true);
    dave.answer_call(id, true).await;
    let (ec, ed) =
        tokio::join!(run_for(&mut carol, Duration::from_secs(4)), run_for(&mut dave, Duration::from_secs(4)));
    assert_eq!(connected_path(&ec), Some("relayed_udp"), "{ec:?}");
    assert_eq!(connected_path(&ed), Some("relayed_udp"), "{ed:?}");
    let relay =
        t.net.nodes()[0].relay.as_ref().unwrap().table.len() + t.net.nodes()[1].relay.as_ref().unwrap().table.len();
    assert_eq!(relay, 1, "one relay session for the call");
    carol.end_call(id).await;
    call_event(&mut dave, CallState::Ended { reason: "hung_up" }).await;
    let rd = dave.take_call_report(id).unwrap();
    eprintln!("dave: {:?}", rd.media);
    assert!(rd.media.received >= 120, "{:?}", rd.media);
    let heard = &rd.heard[rd.heard.len().min(4800)..];
    assert!(audio::tone_strength(heard, 700.0) > 0.5, "dave does not hear carol's tone");
    // The relay session goes with the call.
    let t0 = Instant::now();
    while t.net.nodes().iter().map(|n| n.relay.as_ref().unwrap().table.len()).sum::<usize>() > 0 {
        assert!(t0.elapsed() < Duration::from_secs(3), "the relay session outlived the call");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    carol.logout().await;
    dave.logout().await;
    t.net.stop().await;
}

#[actix_rt::test]
async fn a_host_without_udp_reaches_the_relay_over_tcp() {
    use confab::call::audio;
    let t = common::start(2, |c| c.supernode.probe_period_ms = 200).await;
    t.converge(2).await;
    let mut erin = host(&t, "erin", 0).await;
    let mut frank = host(&t, "frank", 1).await;
    // Frank's relay leg goes over TCP, as it would if his UDP were blocked (the
    // namespace testbed blocks it for real); Erin's stays on UDP.
    frank.set_relay_tcp(true);
    let (to_frank, to_erin) = (audio::tone(&[500.0], 3.0, 12_000.0), audio::tone(&[900.0], 3.0, 12_000.0));
    let id = erin.call("frank").await.unwrap();
    erin.set_call_audio(id, to_frank);
    erin.set_call_recording(id, true);
    call_event(&mut frank, CallState::Ringing).await;
    frank.set_call_audio(id, to_erin);
    frank.set_call_recording(id, true);
    frank.answer_call(id, true).await;
    let (ee, ef) =
        tokio::join!(run_for(&mut erin, Duration::from_secs(4)), run_for(&mut frank, Duration::from_secs(4)));
    assert_eq!(connected_path(&ee), Some("relayed_tcp"), "{ee:?}");
    assert_eq!(connected_path(&ef), Some("relayed_tcp"), "{ef:?}");
    let m = t.metrics().await;
    assert_eq!(t.metric(&m, "confab_relay_tcp_connections", &[]), 1.0, "frank's leg");
    erin.end_call(id).await;
    call_event(&mut frank, CallState::Ended { reason: "hung_up" }).await;
    for (who, r, tone) in
        [("frank", frank.take_call_report(id).unwrap(), 500.0), ("erin", erin.take_call_report(id).unwrap(), 900.0)]
    {
        eprintln!("{who}: {:?}", r.media);
        assert!(r.media.received >= 120, "{who}: {:?}", r.media);
        assert!((r.media.lost as f64) < 0.01 * r.media.received as f64, "{who}: {:?}", r.media);
        let heard = &r.heard[r.heard.len().min(4800)..];
        assert!(audio::tone_strength(heard, tone) > 0.5, "{who} does not hear {tone} Hz");
    }
    // The relay session and the TCP connection go with the call.
    let t0 = Instant::now();
    loop {
        let sessions: usize = t.net.nodes().iter().map(|n| n.relay.as_ref().unwrap().table.len()).sum();
        let conns = t.metric(&t.metrics().await, "confab_relay_tcp_connections", &[]);
        if sessions == 0 && conns == 0.0 {
            break;
        }
        assert!(t0.elapsed() < Duration::from_secs(3), "{sessions} relay sessions, {conns} TCP legs outlived the call");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    common::wait_for("the relayed_tcp call counted", Duration::from_secs(3), async || {
        t.metric(&t.metrics().await, "confab_calls_total", &["path=\"relayed_tcp\""]) >= 1.0
    })
    .await;
    erin.logout().await;
    frank.logout().await;
    t.net.stop().await;
}

#[actix_rt::test]
async fn a_call_survives_the_death_of_its_relaying_super_node() {
    use confab::call::audio;
    let t = common::start(3, |c| c.supernode.probe_period_ms = 200).await;
    t.converge(3).await;
    // Gina's super node (0) relays the call; Hank is on another.
    let mut gina = host(&t, "gina", 0).await;
    let mut hank = host(&t, "hank", 1).await;
    gina.set_relay_only(true);
    let id = gina.call("hank").await.unwrap();
    gina.set_call_audio(id, audio::tone(&[700.0], 12.0, 12_000.0));
    call_event(&mut hank, CallState::Ringing).await;
    hank.set_call_audio(id, audio::tone(&[400.0], 12.0, 12_000.0));
    hank.answer_call(id, true).await;
    let (eg, eh) = tokio::join!(run_for(&mut gina, Duration::from_secs(2)), run_for(&mut hank, Duration::from_secs(2)));
    assert_eq!(connected_path(&eg), Some("relayed_udp"), "{eg:?}");
    assert_eq!(connected_path(&eh), Some("relayed_udp"), "{eh:?}");
    assert_eq!(t.net.nodes()[0].relay.as_ref().unwrap().table.len(), 1, "the relay is gina's super node");

    let first = gina.report.supernode.clone();
    t.net.kill_node(0);
    let killed = Instant::now();
    let heard = |s: &Session| s.call_media(id).map_or(0, |m| m.received);
    let (g0, h0) = (heard(&gina), heard(&hank));
    // Both sides hear each other again, through a relay on a live super node.
    let mut events = Vec::new();
    let recovered = loop {
        let (mut eg, eh) = tokio::join!(
            run_for(&mut gina, Duration::from_millis(100)),
            run_for(&mut hank, Duration::from_millis(100))
        );
        events.append(&mut eg);
        assert!(eh.iter().all(|e| !matches!(e, Event::Call { state: CallState::Ended { .. }, .. })), "{eh:?}");
        // Fresh frames each way since the relay died (beyond the few it had in flight).
        if heard(&gina) > g0 + 10 && heard(&hank) > h0 + 10 {
            break killed.elapsed();
        }
        assert!(
            killed.elapsed() < Duration::from_secs(10),
            "media never came back: {events:?}\ngina {:?}\nhank {:?}",
            gina.call_media(id),
            hank.call_media(id)
        );
    };
    eprintln!("media back {recovered:?} after the relaying super node died");
    assert!(recovered < Duration::from_secs(5), "{recovered:?}");
    // And it keeps flowing: a second more of it.
    let (g1, h1) = (heard(&gina), heard(&hank));
    tokio::join!(run_for(&mut gina, Duration::from_secs(1)), run_for(&mut hank, Duration::from_secs(1)));
    assert!(heard(&gina) >= g1 + 45 && heard(&hank) >= h1 + 45, "{:?} {:?}", gina.call_media(id), hank.call_media(id));
    assert!(events.iter().any(|e| matches!(e, Event::Reconnected { supernode } if *supernode != first)), "{events:?}");
    let live: usize = t.net.nodes()[1..].iter().map(|n| n.relay.as_ref().unwrap().table.len()).sum();
    assert_eq!(live, 1, "one relay session on a live super node");
    let (mg, mh) = (gina.call_media(id).unwrap(), hank.call_media(id).unwrap());
    assert_eq!((mg.path_restarts, mh.path_restarts), (1, 1), "{mg:?} {mh:?}");
    // Gina told Hank where she went: his hang-up reaches her on her new super node.
    hank.end_call(id).await;
    call_event(&mut gina, CallState::Ended { reason: "hung_up" }).await;
    gina.logout().await;
    hank.logout().await;
    t.net.stop().await;
}

/// Runs both hosts' event loops in 100 ms slices until `done` holds, for at most
/// `limit`; fails if the call ends on either side meanwhile. Returns the events of each.
async fn run_both_until(
    a: &mut Session,
    b: &mut Session,
    limit: Duration,
    what: &str,
    mut done: impl FnMut(&Session, &Session, &[Event], &[Event]) -> bool,
) -> (Vec<Event>, Vec<Event>) {
    let start = Instant::now();
    let (mut ea, mut eb) = (Vec::new(), Vec::new());
    loop {
        let (mut na, mut nb) =
            tokio::join!(run_for(a, Duration::from_millis(100)), run_for(b, Duration::from_millis(100)));
        ea.append(&mut na);
        eb.append(&mut nb);
        let ended = |e: &Event| matches!(e, Event::Call { state: CallState::Ended { .. }, .. });
        assert!(!ea.iter().chain(&eb).any(ended), "the call ended: {ea:?} {eb:?}");
        if done(a, b, &ea, &eb) {
            return (ea, eb);
        }
        assert!(start.elapsed() < limit, "{what}: not within {limit:?}\n{ea:?}\n{eb:?}");
    }
}

/// Whether `events` hold a reconnection to a super node other than `lost`.
fn reconnected(events: &[Event], lost: &str) -> bool {
    events.iter().any(|e| matches!(e, Event::Reconnected { supernode } if supernode != lost))
}

#[actix_rt::test]
async fn a_call_survives_the_death_of_the_callee_super_node() {
    use confab::call::audio;
    let t = common::start(3, |c| c.supernode.probe_period_ms = 200).await;
    t.converge(3).await;
    // Ivy calls from super node 0, which relays the call; Jack is on super node 1 and
    // reaches the relay over TCP, a leg that does not pass through his super node.
    let mut ivy = host(&t, "ivy", 0).await;
    let mut jack = host(&t, "jack", 1).await;
    assert_eq!((ivy.report.supernode.as_str(), jack.report.supernode.as_str()), (&*t.node(0), &*t.node(1)));
    ivy.set_relay_only(true);
    jack.set_relay_tcp(true);
    let id = ivy.call("jack").await.unwrap();
    ivy.set_call_audio(id, audio::tone(&[700.0], 12.0, 12_000.0));
    call_event(&mut jack, CallState::Ringing).await;
    jack.set_call_audio(id, audio::tone(&[400.0], 12.0, 12_000.0));
    jack.answer_call(id, true).await;
    let (ei, ej) = tokio::join!(run_for(&mut ivy, Duration::from_secs(2)), run_for(&mut jack, Duration::from_secs(2)));
    assert_eq!(connected_path(&ei), Some("relayed_tcp"), "{ei:?}");
    assert_eq!(connected_path(&ej), Some("relayed_tcp"), "{ej:?}");

    let lost = jack.report.supernode.clone();
    t.net.kill_node(1);
    let killed = Instant::now();
    let heard = |s: &Session| s.call_media(id).map_or(0, |m| m.received);
    let (i0, j0) = (heard(&ivy), heard(&jack));
    // Media does not show the loss (the relay lives); the link's call pace does.
    let (_, ej) = run_both_until(&mut ivy, &mut jack, Duration::from_secs(15), "jack reconnected", |_, _, _, ej| {
        reconnected(ej, &lost)
    })
    .await;
    let took = killed.elapsed();
    eprintln!("the callee reconnected {took:?} after its super node died");
    assert!(took < Duration::from_secs(6), "{took:?}: {ej:?}");
    assert_ne!(jack.report.supernode, lost);
    // Media went on through the caller's relay, and goes on: fresh frames both ways.
    let (i1, j1) = (heard(&ivy), heard(&jack));
    assert!(i1 > i0 && j1 > j0, "{:?} {:?}", ivy.call_media(id), jack.call_media(id));
    run_both_until(&mut ivy, &mut jack, Duration::from_secs(5), "a second of media both ways", |i, j, _, _| {
        heard(i) >= i1 + 45 && heard(j) >= j1 + 45
    })
    .await;
    let (mi, mj) = (ivy.call_media(id).unwrap(), jack.call_media(id).unwrap());
    assert_eq!((mi.path_restarts, mj.path_restarts), (0, 0), "the relay leg outlived the failover: {mi:?} {mj:?}");
    // Jack told Ivy where he went (not a lookup after the dead node left the view)…
    assert_eq!(ivy.call_peer_supernode(id).as_deref(), Some(jack.report.supernode.as_str()));
    // …and her hang-up reaches him on his new super node.
    ivy.end_call(id).await;
    call_event(&mut jack, CallState::Ended { reason: "hung_up" }).await;
    ivy.logout().await;
    jack.logout().await;
    t.net.stop().await;
}

#[actix_rt::test]
async fn a_call_survives_the_death_of_the_super_node_both_sides_use() {
    use confab::call::audio;
    let t = common::start(3, |c| c.supernode.probe_period_ms = 200).await;
    t.converge(3).await;
    // Kim and Lee share super node 0, which relays their call.
    let mut kim = host(&t, "kim", 0).await;
    let mut lee = host(&t, "lee", 0).await;
    assert_eq!((kim.report.supernode.as_str(), lee.report.supernode.as_str()), (&*t.node(0), &*t.node(0)));
    // The default silence limit of a call (20 s), not the tests' 5 s: when both move at
    // once, the callee may get the new leg only with the caller's next offer, 2 s later.
    for s in [&mut kim, &mut lee] {
        s.set_call_timeouts(Timeouts { invite_ms: 3000, ring_ms: 1500, connect_ms: 1000, silence_ms: 20_000 });
    }
    kim.set_relay_only(true);
    let id = kim.call("lee").await.unwrap();
    kim.set_call_audio(id, audio::tone(&[700.0], 12.0, 12_000.0));
    call_event(&mut lee, CallState::Ringing).await;
    lee.set_call_audio(id, audio::tone(&[400.0], 12.0, 12_000.0));
    lee.answer_call(id, true).await;
    let (ek, el) = tokio::join!(run_for(&mut kim, Duration::from_secs(2)), run_for(&mut lee, Duration::from_secs(2)));
    assert_eq!(connected_path(&ek), Some("relayed_udp"), "{ek:?}");
    assert_eq!(connected_path(&el), Some("relayed_udp"), "{el:?}");

    let lost = lee.report.supernode.clone();
    t.net.kill_node(0);
    let killed = Instant::now();
    let heard = |s: &Session| s.call_media(id).map_or(0, |m| m.received);
    let (k0, l0) = (heard(&kim), heard(&lee));
    // Both hear silence; each asks its super node, finds it gone and moves. The callee's
    // new leg, and its new super node, reach it through the super nodes that live.
    let (ek, el) = run_both_until(&mut kim, &mut lee, Duration::from_secs(15), "both reconnected", |_, _, ek, el| {
        reconnected(ek, &lost) && reconnected(el, &lost)
    })
    .await;
    eprintln!("both reconnected {:?} after their super node died", killed.elapsed());
    assert!(killed.elapsed() < Duration::from_secs(6), "{ek:?}\n{el:?}");
    run_both_until(&mut kim, &mut lee, Duration::from_secs(8), "media back both ways", |k, l, _, _| {
        heard(k) > k0 + 10 && heard(l) > l0 + 10
    })
    .await;
    eprintln!("media back {:?} after the super node died", killed.elapsed());
    let (k1, l1) = (heard(&kim), heard(&lee));
    run_both_until(&mut kim, &mut lee, Duration::from_secs(5), "a second of media both ways", |k, l, _, _| {
        heard(k) >= k1 + 45 && heard(l) >= l1 + 45
    })
    .await;
    let (mk, ml) = (kim.call_media(id).unwrap(), lee.call_media(id).unwrap());
    assert_eq!((mk.path_restarts, ml.path_restarts), (1, 1), "{mk:?} {ml:?}");
    kim.end_call(id).await;
    call_event(&mut lee, CallState::Ended { reason: "hung_up" }).await;
    kim.logout().await;
    lee.logout().await;
    t.net.stop().await;
}

#[actix_rt::test]
async fn an_invisible_user_cannot_be_called_by_a_stranger() {
    let t = common::start(2, |c| c.supernode.probe_period_ms = 200).await;
    t.converge(2).await;
    let mut bob = host(&t, "bob", 0).await;
    let mut dave = host(&t, "dave", 1).await;
    let profile = confab::index::Profile::default();
    bob.publish(confab::index::Status::Invisible, &profile).await.unwrap();
    // The index shows a stranger an offline user with no address: no invite is sent.
    let e = dave.call("bob").await.unwrap_err().to_string();
    assert!(e.contains("offline"), "{e}");
    // A modified client sends the invite anyway: it reaches bob (his super node delivers
    // it), and bob neither rings nor answers (not even busy), so dave's call ends as if
    // nobody were there.
    let bob_node = format!("node=\"{}\"", bob.report.supernode);
    let delivered =
        async || t.metric(&t.metrics().await, "confab_supernode_notices_total", &[&bob_node, "outcome=\"delivered\""]);
    let before = delivered().await;
    let id = dave.call_even_if_offline("bob").await.unwrap();
    common::wait_for("the invite delivered to bob", Duration::from_secs(3), async || delivered().await > before).await;
    let ended = |e: &Event| matches!(e, Event::Call { state: CallState::Ended { reason: "unreachable" }, .. });
    let (events, _) = tokio::join!(
        run_for(&mut bob, Duration::from_millis(3500)),
        // The invite times out after 3 s (Timeouts::invite_ms above), checked every tick.
        common::expect_event(&mut dave, Duration::from_secs(6), "unanswered", ended)
    );
    assert!(!events.iter().any(|e| matches!(e, Event::Call { .. })), "{events:?}");
    assert_eq!(dave.calls_in_progress(), 0, "call {id:?} left behind");
    // A buddy's invite does ring.
    bob.add_buddy("dave", "hi").await.unwrap();
    common::expect_event(
        &mut dave,
        Duration::from_secs(3),
        "bob's request",
        |e| matches!(e, Event::Request { from, .. } if from == "bob"),
    )
    .await;
    dave.answer_buddy("bob", true).await.unwrap();
    common::expect_event(
        &mut bob,
        Duration::from_secs(3),
        "dave's answer",
        |e| matches!(e, Event::Answered { user, .. } if user == "dave"),
    )
    .await;
    let id = dave.call_even_if_offline("bob").await.unwrap();
    call_event(&mut bob, CallState::Ringing).await;
    dave.end_call(id).await;
    call_event(&mut bob, CallState::Ended { reason: "cancelled" }).await;
    bob.logout().await;
    dave.logout().await;
    t.net.stop().await;
}
