//! Chat end to end on loopback: a login server and three super nodes, every one a replica
//! of every slot. Messages are stored at the recipient's slot and reach each of the
//! recipient's devices exactly once, online within a second, offline at the next login,
//! with a replica killed in between and the sender gone.

mod common;

use confab::chat::history::{History, Status as Delivery};
use confab::chat::message::{Body, Conversation};
use confab::host::Session;
use confab::host::buddies::Event;
use confab::host::core::chat::SendStatus;
use std::time::{Duration, Instant};

const PW: &str = "correct horse battery";

/// Device `n`'s home folder for `user`, with a key of its own (`host-<n>`: each device
/// of a user is a different device to the store).
fn home(t: &common::TestNet, user: &str, n: usize) -> confab::host::home::Home {
    let home = t.home(&format!("{user}-{n}"));
    let key = common::fixtures().join(format!("host-{}.key.pem", n % 3));
    std::fs::copy(key, home.dir().join("host.key.pem")).unwrap();
    home
}

async fn host(t: &common::TestNet, user: &str, n: usize, register: bool) -> Session {
    let mut s = t.settings();
    let len = s.ladder.bootstrap.len();
    s.ladder.bootstrap.rotate_left(n % len);
    let home = home(t, user, n);
    if register {
        confab::host::register(&s, &home, user, PW).await.unwrap();
    }
    confab::host::login(&s, &home, user, PW).await.unwrap()
}

/// The texts in `user`'s history on device `n`, with `peer`.
fn texts(t: &common::TestNet, user: &str, n: usize, peer: &str) -> Vec<(String, String)> {
    let home = home(t, user, n);
    let h = History::open(&home.chat_history_path(user)).unwrap();
    h.history(&Conversation::User(peer.into()), 100)
        .unwrap()
        .into_iter()
        .filter_map(|r| match r.body {
            Body::Text { text } => Some((r.from, text)),
            _ => None,
        })
        .collect()
}

/// `a` asks `b` to be buddies and `b` agrees (messages between strangers are requests,
/// and get no receipts).
async fn befriend(a: &mut Session, a_name: &str, b: &mut Session, b_name: &str) {
    a.add_buddy(b_name, "").await.unwrap();
    common::expect_event(
        b,
        Duration::from_secs(2),
        "the buddy request",
        |e| matches!(e, Event::Request { from, .. } if from == a_name),
    )
    .await;
    b.answer_buddy(a_name, true).await.unwrap();
}

#[actix_rt::test]
async fn offline_messages_reach_every_device_once_with_a_replica_killed_and_the_sender_gone() {
    common::bounded(Duration::from_secs(150), offline_messages()).await;
}

async fn offline_messages() {
    let t = common::start(3, |c| {
        c.supernode.probe_period_ms = 200;
        c.supernode.index.anti_entropy_secs = 1;
    })
    .await;
    t.converge(3).await;
    // Alice and bob are buddies. Bob has two devices; both have logged in once, so the
    // store waits for both.
    let mut bob1 = host(&t, "bob", 0, true).await;
    let mut alice = host(&t, "alice", 2, true).await;
    befriend(&mut alice, "alice", &mut bob1, "bob").await;
    bob1.logout().await;
    let bob2 = host(&t, "bob", 1, false).await;
    bob2.logout().await;

    // Alice writes while bob is away, then goes away herself.
    let before = t.metric(&t.metrics().await, "confab_mail_messages_total", &["outcome=\"stored\""]);
    let first = alice.send_chat("bob", "are you there?").await.unwrap();
    assert_eq!(first.status, SendStatus::Stored);
    let second = alice.send_chat("bob", "call me when you are back").await.unwrap();
    assert!(alice.wait_chat_idle(Duration::from_secs(10)).await, "alice's copies and lookups settle");
    alice.logout().await;
    let after = t.metric(&t.metrics().await, "confab_mail_messages_total", &["outcome=\"stored\""]);
    assert!(after - before >= 2.0, "two messages stored (and alice's own copies): {before} → {after}");

    // A replica dies between the send and the read; bob logs in elsewhere.
    t.net.kill_node(2);
    let mut bob1 = host(&t, "bob", 0, false).await;
    assert!(bob1.settle_chat(Duration::from_secs(15)).await, "bob's first device settles");
    let want = vec![
        ("alice".to_string(), "are you there?".to_string()),
        ("alice".to_string(), "call me when you are back".to_string()),
    ];
    assert_eq!(texts(&t, "bob", 0, "alice"), want, "in order, once each: {:?}", bob1.chat_stats());
    // Fetching again brings nothing new: acknowledged, or dropped as a repeat.
    assert!(bob1.settle_chat(Duration::from_secs(10)).await);
    assert_eq!(texts(&t, "bob", 0, "alice"), want);
    bob1.logout().await;

    // His second device gets the same history.
    let mut bob2 = host(&t, "bob", 1, false).await;
    assert!(bob2.settle_chat(Duration::from_secs(15)).await, "bob's second device settles");
    assert_eq!(texts(&t, "bob", 1, "alice"), want, "{:?}", bob2.chat_stats());
    bob2.logout().await;

    // Alice's device learns both were delivered (bob's receipts waited in the store).
    let mut alice = host(&t, "alice", 2, false).await;
    let home = home(&t, "alice", 2);
    let h = History::open(&home.chat_history_path("alice")).unwrap();
    common::wait_for("bob's delivery receipts at alice", Duration::from_secs(15), async || {
        alice.settle_chat(Duration::from_secs(5)).await;
        [first.id, second.id].iter().all(|id| h.status(*id).unwrap().is_some_and(|s| s >= Delivery::Delivered))
    })
    .await;
    alice.logout().await;
    t.net.stop().await;
}

#[actix_rt::test]
async fn online_messages_arrive_within_a_second_and_the_sender_learns_they_were_delivered() {
    common::bounded(Duration::from_secs(90), online_messages()).await;
}

async fn online_messages() {
    let t = common::start(3, |c| {
        c.supernode.probe_period_ms = 200;
        c.supernode.index.anti_entropy_secs = 1;
    })
    .await;
    t.converge(3).await;
    let mut alice = host(&t, "alice", 0, true).await;
    let mut bob = host(&t, "bob", 1, true).await;
    assert_ne!(alice.report.supernode, bob.report.supernode, "the test wants messages to cross super nodes");
    befriend(&mut alice, "alice", &mut bob, "bob").await;
    let mut took = Vec::new();
    for i in 0..5 {
        let text = format!("message {i}");
        let started = Instant::now();
        alice.send_chat("bob", &text).await.unwrap();
        common::expect_event(
            &mut bob,
            Duration::from_secs(1),
            "the message",
            |e| matches!(e, Event::Chat { from, text: got, .. } if from == "alice" && *got == text),
        )
        .await;
        took.push(started.elapsed());
    }
    took.sort();
    eprintln!("online delivery: median {:?}, worst {:?}", took[2], took[4]);
    let h = History::open(&home(&t, "alice", 0).chat_history_path("alice")).unwrap();
    let sent = h.history(&Conversation::User("bob".into()), 10).unwrap();
    assert_eq!(sent.len(), 5);
    common::wait_for("bob's receipts at alice", Duration::from_secs(5), async || {
        alice.settle_chat(Duration::from_secs(1)).await;
        sent.iter().all(|r| h.status(r.id).unwrap().is_some_and(|s| s >= Delivery::Delivered))
    })
    .await;
    alice.logout().await;
    bob.logout().await;
    t.net.stop().await;
}

#[actix_rt::test]
async fn a_message_reaches_every_online_device_of_the_recipient_at_once() {
    common::bounded(Duration::from_secs(90), every_device()).await;
}

async fn every_device() {
    let t = common::start(3, |c| {
        c.supernode.probe_period_ms = 200;
        c.supernode.index.anti_entropy_secs = 1;
    })
    .await;
    t.converge(3).await;
    let mut bob0 = host(&t, "bob", 0, true).await;
    let mut alice = host(&t, "alice", 2, true).await;
    befriend(&mut alice, "alice", &mut bob0, "bob").await;
    let mut bob1 = host(&t, "bob", 1, false).await;
    assert_ne!(bob0.report.supernode, bob1.report.supernode, "bob's devices are at two super nodes");
    // The second device has fetched what there was; now both wait for pushes.
    assert!(bob1.settle_chat(Duration::from_secs(10)).await);
    for i in 0..3 {
        let text = format!("to both of you {i}");
        alice.send_chat("bob", &text).await.unwrap();
        for bob in [&mut bob0, &mut bob1] {
            common::expect_event(
                bob,
                Duration::from_secs(1),
                "the pushed message",
                |e| matches!(e, Event::Chat { from, text: got, .. } if from == "alice" && *got == text),
            )
            .await;
        }
    }
    for s in [alice, bob0, bob1] {
        s.logout().await;
    }
    t.net.stop().await;
}

#[actix_rt::test]
async fn a_contact_can_still_write_once_the_recipient_has_left_the_index() {
    common::bounded(Duration::from_secs(120), after_the_index_forgot()).await;
}

async fn after_the_index_forgot() {
    // Entries are findable for 3 s here (72 h in production); stored mail keeps 30 days.
    let t = common::start(3, |c| {
        c.supernode.probe_period_ms = 200;
        c.supernode.index.anti_entropy_secs = 1;
        c.supernode.index.retention_secs = 3;
    })
    .await;
    t.converge(3).await;
    let mut bob = host(&t, "bob", 0, true).await;
    let mut alice = host(&t, "alice", 1, true).await;
    befriend(&mut alice, "alice", &mut bob, "bob").await;
    alice.send_chat("bob", "first").await.unwrap();
    bob.logout().await;
    alice.logout().await;

    // Bob's entries leave the index; the login server's directory still says when he was
    // last seen, and has the keys his logins gave it.
    let router = t.net.nodes()[2].index.clone().unwrap();
    common::wait_for("bob gone from the index", Duration::from_secs(20), async || {
        let (tx, rx) = tokio::sync::oneshot::channel();
        router.do_send(confab::supernode::index_router::FindUser { user: "bob".into(), reply: tx });
        rx.await.is_ok_and(|f| f.entry.is_none())
    })
    .await;
    // Carol never had bob's keys: they come from the directory's signed record.
    let mut carol = host(&t, "carol", 2, true).await;
    assert_eq!(carol.chat_stats().keys_from_directory, 0);
    let hello = carol.send_chat("bob", "hello?").await.unwrap();
    assert_eq!(hello.status, SendStatus::Stored);
    assert_eq!(carol.chat_stats().keys_from_directory, 1, "bob's keys came from the directory");
    assert!(carol.wait_chat_idle(Duration::from_secs(10)).await);
    // Alice kept them, from a session before.
    let mut alice = host(&t, "alice", 1, false).await;
    let sent = alice.send_chat("bob", "second").await.unwrap();
    assert_eq!(sent.status, SendStatus::Stored);
    assert!(alice.wait_chat_idle(Duration::from_secs(10)).await);
    alice.logout().await;
    carol.logout().await;

    let mut bob = host(&t, "bob", 0, false).await;
    assert!(bob.settle_chat(Duration::from_secs(15)).await);
    let got: Vec<String> = texts(&t, "bob", 0, "alice").into_iter().map(|(_, text)| text).collect();
    assert_eq!(got, vec!["first".to_string(), "second".to_string()]);
    assert_eq!(texts(&t, "bob", 0, "carol"), vec![("carol".to_string(), "hello?".to_string())]);
    bob.logout().await;
    t.net.stop().await;
}

#[actix_rt::test]
async fn a_user_who_registered_and_never_logged_in_can_be_written_to() {
    common::bounded(Duration::from_secs(120), never_logged_in()).await;
}

/// Carol registers and never logs in: she has no entry, and no device anywhere ever had
/// her keys but the login server, which got them at registration. Alice writes to her;
/// carol reads it at her first login.
async fn never_logged_in() {
    let t = common::start(3, |c| {
        c.supernode.probe_period_ms = 200;
        c.supernode.index.anti_entropy_secs = 1;
    })
    .await;
    t.converge(3).await;
    confab::host::register(&t.settings(), &home(&t, "carol", 2), "carol", PW).await.unwrap();
    let mut alice = host(&t, "alice", 0, true).await;
    assert!(alice.find("carol").await.unwrap().is_none(), "carol is in no index and was never seen");
    let history = History::open(&home(&t, "alice", 0).chat_history_path("alice")).unwrap();
    let kept = || history.peer_keys().unwrap().into_iter().find(|(u, _)| u == "carol").map(|(_, k)| k);
    assert_eq!(kept(), None, "alice has no keys for carol");
    assert_eq!(alice.chat_stats().keys_from_directory, 0);
    let stage = ["stage=\"directory\""];
    let directory_before = t.metric(&t.metrics().await, "confab_index_lookups_total", &stage);

    let sent = alice.send_chat("carol", "welcome aboard").await.unwrap();
    assert_eq!(sent.status, SendStatus::Stored);
    assert_eq!(alice.chat_stats().keys_from_directory, 1, "carol's keys came from the directory");
    let directory_after = t.metric(&t.metrics().await, "confab_index_lookups_total", &stage);
    assert!(
        directory_after > directory_before,
        "a lookup ended at the directory: {directory_before} → {directory_after}"
    );
    let carol_keys =
        confab::crypto::user::UserKeys::derive(&confab::crypto::password::derive("carol", PW).list).public();
    common::wait_for("alice keeps carol's keys", Duration::from_secs(5), async || kept() == Some(carol_keys)).await;
    assert!(alice.wait_chat_idle(Duration::from_secs(10)).await);
    alice.logout().await;

    let mut carol = host(&t, "carol", 2, false).await;
    assert!(carol.settle_chat(Duration::from_secs(15)).await, "{:?}", carol.chat_stats());
    assert_eq!(texts(&t, "carol", 2, "alice"), vec![("alice".to_string(), "welcome aboard".to_string())]);
    carol.logout().await;
    t.net.stop().await;
}
