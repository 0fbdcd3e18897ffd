//! Buddy lists end to end on loopback: a login server and three gossiping super nodes,
//! hosts spread over them. Authorization, presence pushed within a second (invisible
//! included, for buddies only), decline, block, and the list coming back on a second
//! device.

mod common;

use confab::buddy::Relation;
use confab::host::Session;
use confab::host::buddies::Event;
use confab::index::{Profile, Status};
use std::time::{Duration, Instant};

const PW: &str = "correct horse battery";

async fn host(t: &common::TestNet, user: &str, n: usize, register: bool) -> Session {
    let mut s = t.settings();
    let len = s.ladder.bootstrap.len();
    s.ladder.bootstrap.rotate_left(n % len);
    let home = t.home(&format!("{user}-{n}"));
    if register {
        confab::host::register(&s, &home, user, PW).await.unwrap();
    }
    confab::host::login(&s, &home, user, PW).await.unwrap()
}

use common::expect_event as expect;

fn presence(user: &'static str, status: Status) -> impl Fn(&Event) -> bool {
    move |e| matches!(e, Event::Presence { user: u, status: s, .. } if u == user && *s == status)
}

#[actix_rt::test]
async fn buddies_authorize_see_each_others_status_and_get_the_list_back_on_a_second_device() {
    let t = common::start(3, |c| {
        c.supernode.probe_period_ms = 200;
        c.supernode.index.anti_entropy_secs = 1;
    })
    .await;
    let started = Instant::now();
    while t.net.nodes().iter().any(|n| n.members().len() < 3) {
        assert!(started.elapsed() < Duration::from_secs(20), "cluster did not converge");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let second = Duration::from_secs(1);
    let mut alice = host(&t, "alice", 0, true).await;
    let mut bob = host(&t, "bob", 1, true).await;
    let mut carol = host(&t, "carol", 2, true).await;
    let mut dave = host(&t, "dave", 0, true).await;
    assert_ne!(alice.report.supernode, bob.report.supernode, "the test wants notices to cross super nodes");

    // A request reaches bob within a second; his answer reaches alice.
    assert_eq!(alice.add_buddy("bob", "hi, it's alice").await.unwrap(), Relation::Requested);
    expect(
        &mut bob,
        second,
        "request",
        |e| matches!(e, Event::Request { from, message } if from == "alice" && message == "hi, it's alice"),
    )
    .await;
    assert_eq!(bob.answer_buddy("alice", true).await.unwrap(), Relation::Authorized);
    expect(
        &mut alice,
        2 * second,
        "answer",
        |e| matches!(e, Event::Answered { user, relation: Relation::Authorized } if user == "bob"),
    )
    .await;
    expect(&mut bob, 2 * second, "alice's presence", presence("alice", Status::Online)).await;

    // Status changes are pushed within a second, invisible included; others see offline.
    let profile = Profile::default();
    alice.publish(Status::Away, &profile).await.unwrap();
    let took = expect(&mut bob, second, "away", presence("alice", Status::Away)).await;
    eprintln!("status change reached the buddy in {took:?}");
    // Where to reach alice: her buddy knows, a stranger's lookup shows no address.
    let seen_by_bob = bob.find("alice").await.unwrap().expect("alice is in the index");
    assert_eq!(seen_by_bob.public_addr, Some(alice.report.public_addr), "a buddy sees the address");
    let seen_by_carol = carol.find("alice").await.unwrap().expect("alice is in the index");
    assert_ne!(seen_by_carol.status, Status::Offline, "a stranger sees her status");
    assert_eq!(seen_by_carol.public_addr, None, "but not her address");
    alice.publish(Status::Invisible, &profile).await.unwrap();
    expect(&mut bob, second, "invisible", presence("alice", Status::Invisible)).await;
    // The index copy follows the notice by a replication round.
    common::wait_for("alice's invisible entry in the index", second, async || {
        carol.find("alice").await.unwrap().is_some_and(|f| f.status == Status::Offline)
    })
    .await;
    let seen_by_carol = carol.find("alice").await.unwrap().expect("alice is in the index");
    assert_eq!(seen_by_carol.status, Status::Offline, "invisible looks offline to non-buddies");
    assert_eq!(seen_by_carol.public_addr, None, "and hides the address");
    // Bob's presence still reaches invisible alice (routing follows her super node).
    bob.publish(Status::Busy, &profile).await.unwrap();
    expect(&mut alice, second, "bob busy", presence("bob", Status::Busy)).await;

    // Decline: the requester learns it.
    assert_eq!(carol.add_buddy("alice", "").await.unwrap(), Relation::Requested);
    expect(&mut alice, second, "carol's request", |e| matches!(e, Event::Request { from, .. } if from == "carol"))
        .await;
    assert_eq!(alice.answer_buddy("carol", false).await.unwrap(), Relation::Declined);
    expect(
        &mut carol,
        2 * second,
        "decline",
        |e| matches!(e, Event::Answered { user, relation: Relation::Declined } if user == "alice"),
    )
    .await;
    match alice.answer_buddy("carol", true).await {
        Err(confab::host::HostError::Account(e)) => assert_eq!(e.code(), Some(confab::wire::ErrorCode::NotPending)),
        other => panic!("answering twice: {other:?}"),
    }

    // Block: dave's request never arrives, and he cannot tell.
    alice.block_buddy("dave").await.unwrap();
    assert_eq!(dave.add_buddy("alice", "let me in").await.unwrap(), Relation::Requested);
    alice.refresh_buddies().await.unwrap();
    assert!(alice.buddy_requests().is_empty(), "a blocked user's request is dropped");

    // Logging out shows offline to buddies within a second.
    alice.logout().await;
    expect(&mut bob, second, "offline", presence("alice", Status::Offline)).await;

    // A second device (a fresh home folder) gets the list back from the login server.
    let alice2 = host(&t, "alice", 7, false).await;
    let mut list: Vec<(String, Relation)> = alice2.buddies().into_iter().map(|b| (b.user, b.relation)).collect();
    list.sort_by(|a, b| a.0.cmp(&b.0));
    assert_eq!(list, [("bob".to_string(), Relation::Authorized), ("dave".to_string(), Relation::Blocked)]);
    // And bob sees her come back.
    expect(&mut bob, 2 * second, "back online", presence("alice", Status::Online)).await;

    // A third device beside the second: both online at once (neither displaces the other),
    // bob's presence reaches both, and one logging out leaves alice online for bob and in
    // the index.
    let mut alice2 = alice2;
    let mut alice3 = host(&t, "alice", 8, false).await;
    let third = alice3.credential().serial;
    common::wait_for("the third device's presence at bob", 2 * second, async || {
        bob.buddies().iter().any(|b| {
            b.user == "alice" && b.sessions.entries().iter().any(|e| e.origin == third && e.status == Status::Online)
        })
    })
    .await;
    bob.publish(Status::Away, &profile).await.unwrap();
    expect(&mut alice2, second, "bob away, on alice's second device", presence("bob", Status::Away)).await;
    expect(&mut alice3, second, "bob away, on alice's third device", presence("bob", Status::Away)).await;
    alice3.logout().await;
    common::wait_for("the third device's logout at bob", 2 * second, async || {
        bob.buddies().iter().any(|b| {
            b.user == "alice" && b.sessions.entries().iter().any(|e| e.origin == third && e.status == Status::Offline)
        })
    })
    .await;
    let alice_at_bob = bob.buddies().into_iter().find(|b| b.user == "alice").unwrap();
    assert_eq!(alice_at_bob.presence.map(|p| p.status), Some(Status::Online), "the second device still speaks");
    common::wait_for("the third device's logout in the index", 2 * second, async || {
        carol.find("alice").await.unwrap().is_some_and(|f| f.status == Status::Online)
    })
    .await;

    // The login server keeps no contact's name: 4-byte ids and records sealed under the
    // owner's password. Alice's list holds bob and dave; neither name is readable.
    let db = rusqlite::Connection::open(t.net.info.data.join("accounts.sqlite")).unwrap();
    let rows: Vec<(i64, Vec<u8>)> = db
        .prepare("SELECT tag, sealed FROM buddies WHERE owner = 'alice'")
        .unwrap()
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
        .unwrap()
        .map(Result::unwrap)
        .collect();
    assert_eq!(rows.len(), 2);
    for (tag, sealed) in rows {
        assert!(u32::try_from(tag).is_ok(), "a contact id is 4 bytes");
        assert!(!sealed.windows(3).any(|w| w == b"bob") && !sealed.windows(4).any(|w| w == b"dave"));
    }

    // Operators see it all on /metrics.
    let m = t.metrics().await;
    assert!(t.metric(&m, "confab_login_buddy_ops_total", &["op=\"add\"", "outcome=\"buddy_ok\""]) >= 2.0);
    assert!(t.metric(&m, "confab_login_buddy_ops_total", &["outcome=\"blocked_silently\""]) >= 1.0);
    assert!(t.metric(&m, "confab_supernode_notices_total", &["outcome=\"delivered\""]) >= 5.0);
    assert!(t.metric(&m, "confab_supernode_notices_total", &["outcome=\"forwarded\""]) >= 1.0);
    assert!(t.metric(&m, "confab_index_replication_lag_seconds_count", &[]) >= 4.0);
    assert!(t.metric(&m, "confab_index_entries", &[]) >= 4.0, "{m}");
    assert!(m.contains("# HELP confab_index_slot_entries_max"));

    for s in [alice2, bob, carol, dave] {
        s.logout().await;
    }
    t.net.stop().await;
}
