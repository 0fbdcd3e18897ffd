//! Group chat end to end on loopback: a login server and three super nodes, a group of
//! twenty users spread over them. The group is split in two halves that are never online
//! together; each half writes while the other is away; once everyone is back, every
//! member's history holds the same texts in the same order. A member invited last gets
//! the whole history by the log's sync.

mod common;

use confab::chat::history::History;
use confab::chat::message::{Body, Conversation};
use confab::host::Session;
use std::time::Duration;

const PW: &str = "correct horse battery";
const MEMBERS: usize = 20;
const HALF: usize = MEMBERS / 2;

fn user(i: usize) -> String {
    format!("member{i:02}")
}

async fn host(t: &common::TestNet, i: usize, register: bool) -> Session {
    let mut s = t.settings();
    let len = s.ladder.bootstrap.len();
    // Spread over the three super nodes.
    s.ladder.bootstrap.rotate_left(i % len);
    let home = t.home(&user(i));
    if register {
        confab::host::register(&s, &home, &user(i), PW).await.unwrap();
    }
    confab::host::login(&s, &home, &user(i), PW).await.unwrap()
}

/// Member `i`'s history of the group named `name`: (author, text) in order, or None if
/// its device does not know the group yet.
fn texts(t: &common::TestNet, i: usize, name: &str) -> Option<Vec<(String, String)>> {
    let home = t.home(&user(i));
    let h = History::open(&home.chat_history_path(&user(i))).unwrap();
    let [g] = h.groups_named(name).unwrap()[..] else { return None };
    let rows = h.history(&Conversation::Group(g), 1000).unwrap();
    Some(
        rows.into_iter()
            .filter_map(|r| match r.body {
                Body::Text { text } => Some((r.from, text)),
                _ => None,
            })
            .collect(),
    )
}

/// Lets every session take in what the store holds for it, and finish what it sends.
async fn settle(sessions: &mut [(usize, Session)]) {
    for (_, s) in sessions.iter_mut() {
        s.settle_chat(Duration::from_secs(10)).await;
    }
}

/// Waits until members `who` all hold `want` (fetching now and then).
async fn wait_texts(
    t: &common::TestNet,
    sessions: &mut [(usize, Session)],
    name: &str,
    want: &[(String, String)],
    limit: Duration,
) {
    let what = format!("{} members hold {} texts", sessions.len(), want.len());
    common::wait_for(&what, limit, async || {
        settle(sessions).await;
        sessions.iter().all(|(i, _)| texts(t, *i, name).as_deref() == Some(want))
    })
    .await;
}

async fn logout(sessions: Vec<(usize, Session)>) {
    for (_, s) in sessions {
        s.logout().await;
    }
}

#[actix_rt::test]
async fn a_group_of_twenty_on_three_super_nodes_converges_after_its_halves_wrote_apart() {
    common::bounded(Duration::from_secs(600), group_of_twenty()).await;
}

async fn group_of_twenty() {
    let t = common::start(3, |c| {
        c.supernode.probe_period_ms = 200;
        c.supernode.index.anti_entropy_secs = 1;
    })
    .await;
    t.converge(3).await;
    // Everyone but the last registers; all are online at first.
    let mut all = Vec::new();
    for i in 0..MEMBERS - 1 {
        all.push((i, host(&t, i, true).await));
    }
    let supernodes: std::collections::BTreeSet<String> = all.iter().map(|(_, s)| s.report.supernode.clone()).collect();
    assert_eq!(supernodes.len(), 3, "the members are spread over the three super nodes");

    let others: Vec<String> = (1..MEMBERS - 1).map(user).collect();
    let made = all[0].1.group_create("crew", &others).await.unwrap();
    assert_eq!(made.to, "@crew");
    let sent = all[0].1.group_send("@crew", "welcome aboard").await.unwrap();
    assert_eq!(sent.to, "@crew");
    let mut want = vec![(user(0), "welcome aboard".to_string())];
    wait_texts(&t, &mut all, "crew", &want, Duration::from_secs(60)).await;

    // Split: the second half goes away; the first half writes.
    let second: Vec<_> = all.split_off(HALF);
    logout(second).await;
    let mut first = all;
    for (i, s) in first.iter_mut() {
        let text = format!("first half, {i}");
        s.group_send("@crew", &text).await.unwrap();
        want.push((user(*i), text));
    }
    settle(&mut first).await;
    logout(first).await;

    // The second half comes back while the first is away, and writes too.
    let mut second = Vec::new();
    for i in HALF..MEMBERS - 1 {
        second.push((i, host(&t, i, false).await));
    }
    for (i, s) in second.iter_mut() {
        let text = format!("second half, {i}");
        s.group_send("@crew", &text).await.unwrap();
        want.push((user(*i), text));
    }
    // The history is in the log's order (by the author's clock, ties by id): sort the
    // expectation the same way by reading it from one member once everyone agrees.
    settle(&mut second).await;

    // Healed: the first half is back. Everyone converges to one history.
    let mut everyone = second;
    for i in 0..HALF {
        everyone.push((i, host(&t, i, false).await));
    }
    let expected: std::collections::BTreeSet<_> = want.iter().cloned().collect();
    common::wait_for("every member holds every text", Duration::from_secs(120), async || {
        settle(&mut everyone).await;
        everyone.iter().all(|(i, _)| {
            texts(&t, *i, "crew").is_some_and(|h| {
                h.len() == want.len() && h.iter().cloned().collect::<std::collections::BTreeSet<_>>() == expected
            })
        })
    })
    .await;
    let reference = texts(&t, 0, "crew").unwrap();
    for (i, _) in &everyone {
        assert_eq!(texts(&t, *i, "crew").unwrap(), reference, "member {i}'s history is the same, in the same order");
    }

    // A member invited now was never told any of it: the log's sync brings it all.
    let last = MEMBERS - 1;
    let mut newcomer = host(&t, last, true).await;
    let creator = everyone.iter_mut().find(|(i, _)| *i == 0).map(|(_, s)| s).unwrap();
    creator
        .group_command(confab::host::core::chat::GroupCommand::Invite { group: "@crew".into(), member: user(last) })
        .await
        .unwrap();
    common::wait_for("the newcomer holds the whole history", Duration::from_secs(60), async || {
        newcomer.settle_chat(Duration::from_secs(5)).await;
        texts(&t, last, "crew").as_ref() == Some(&reference)
    })
    .await;
    newcomer.logout().await;
    logout(everyone).await;
    t.net.stop().await;
}
