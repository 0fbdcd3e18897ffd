use super::*;
use crate::chat::message::{Inner, own_copy_id};

const ALICE_1: DeviceId = KeyId([1; 8]);
const ALICE_2: DeviceId = KeyId([2; 8]);
const BOB_1: DeviceId = KeyId([3; 8]);

fn user(u: &str) -> Conversation {
    Conversation::User(u.into())
}

fn inner(from: &str, device: DeviceId, conversation: &str, seq: u64, body: Body) -> Inner {
    Inner {
        from: from.into(),
        from_device: device,
        conversation: user(conversation),
        seq,
        sent_at_ms: 1_700_000_000_000 + seq,
        body,
    }
}

fn text(t: &str) -> Body {
    Body::Text { text: t.into() }
}

/// A message bob received from alice's first device.
fn from_alice(id: u8, seq: u64, t: &str) -> Message {
    Message { id: [id; 16], to: "bob".into(), inner: inner("alice", ALICE_1, "alice", seq, text(t)) }
}

fn open_tmp() -> (tempfile::TempDir, History) {
    let dir = tempfile::tempdir().unwrap();
    let h = History::open_in(dir.path()).unwrap();
    (dir, h)
}

#[test]
fn sequence_numbers_start_at_one_per_conversation_and_survive_reopening() {
    let (dir, mut h) = open_tmp();
    assert_eq!(h.next_seq(&user("bob")).unwrap(), 1);
    assert_eq!(h.next_seq(&user("bob")).unwrap(), 2);
    assert_eq!(h.next_seq(&user("carol")).unwrap(), 1);
    assert_eq!(h.next_seq(&Conversation::Group([5; 16])).unwrap(), 1);
    drop(h);
    let mut h = History::open_in(dir.path()).unwrap();
    assert_eq!(h.next_seq(&user("bob")).unwrap(), 3);
    assert_eq!(h.next_seq(&Conversation::Group([5; 16])).unwrap(), 2);
}

#[test]
fn two_handles_on_one_file_never_hand_out_the_same_number() {
    const EACH: usize = 60;
    let dir = tempfile::tempdir().unwrap();
    let handles: Vec<History> = (0..2).map(|_| History::open_in(dir.path()).unwrap()).collect();
    let threads: Vec<_> = handles
        .into_iter()
        .map(|mut h| {
            std::thread::spawn(move || (0..EACH).map(|_| h.next_seq(&user("bob")).unwrap()).collect::<Vec<_>>())
        })
        .collect();
    let mut all: Vec<u64> = threads.into_iter().flat_map(|t| t.join().unwrap()).collect();
    all.sort_unstable();
    assert_eq!(all, (1..=2 * EACH as u64).collect::<Vec<_>>());
}

#[test]
fn a_repeat_is_dropped_by_sender_sequence_or_id() {
    let (_dir, mut h) = open_tmp();
    let m = from_alice(1, 1, "hi");
    assert_eq!(h.record_received(&m).unwrap(), Recorded::New);
    assert_eq!(h.record_received(&m).unwrap(), Recorded::Repeat);
    // Replayed under a new id: same sender, device, conversation and sequence number.
    let replay = Message { id: [9; 16], ..m.clone() };
    assert_eq!(h.record_received(&replay).unwrap(), Recorded::Repeat);
    // The same id with another sequence number.
    assert_eq!(h.record_received(&from_alice(1, 2, "other")).unwrap(), Recorded::Repeat);
    // The control: the same sequence number from alice's other device is another message.
    let other_device = Message { id: [2; 16], to: "bob".into(), inner: inner("alice", ALICE_2, "alice", 1, text("x")) };
    assert_eq!(h.record_received(&other_device).unwrap(), Recorded::New);
    let shown: Vec<_> = h.unread().unwrap().into_iter().map(|r| r.body).collect();
    assert_eq!(shown, vec![text("hi"), text("x")]);
}

#[test]
fn unread_messages_are_listed_once_marked_read() {
    let (_dir, mut h) = open_tmp();
    for (id, seq) in [(1, 1), (2, 2), (3, 3)] {
        h.record_received(&from_alice(id, seq, &format!("m{seq}"))).unwrap();
    }
    let unread = h.unread().unwrap();
    assert_eq!(unread.iter().map(|r| r.id[0]).collect::<Vec<_>>(), vec![1, 2, 3]);
    assert!(unread.iter().all(|r| r.side == Side::Received { read: false } && r.from == "alice"));
    assert_eq!(h.mark_read(&[[1; 16], [2; 16], [7; 16]]).unwrap(), 2);
    assert_eq!(h.mark_read(&[[1; 16]]).unwrap(), 0, "already read");
    assert_eq!(h.unread().unwrap().iter().map(|r| r.id[0]).collect::<Vec<_>>(), vec![3]);
    let all = h.history(&user("alice"), 10).unwrap();
    assert_eq!(
        all.iter().map(|r| r.side).collect::<Vec<_>>(),
        vec![Side::Received { read: true }, Side::Received { read: true }, Side::Received { read: false },]
    );
}

#[test]
fn history_mixes_sent_and_received_and_my_other_devices_copies() {
    let (_dir, mut h) = open_tmp();
    // On bob's device: alice wrote, bob answered from this device, then from another.
    h.record_received(&from_alice(1, 1, "hi bob")).unwrap();
    let mine = inner("bob", BOB_1, "alice", 1, text("hi alice"));
    assert_eq!(h.record_sent(&mine, [2; 16]).unwrap(), Recorded::New);
    let copy = Message {
        id: [3; 16],
        to: "bob".into(),
        inner: inner("bob", KeyId([4; 8]), "alice", 1, text("from my phone")),
    };
    assert_eq!(h.record_received(&copy).unwrap(), Recorded::New);
    // This device's own copy coming back through the store: a repeat of what it sent.
    let back = Message { id: [5; 16], to: "bob".into(), inner: mine.clone() };
    assert_eq!(h.record_received(&back).unwrap(), Recorded::Repeat);
    let rows = h.history(&user("alice"), 10).unwrap();
    let seen: Vec<_> = rows.iter().map(|r| (r.from.as_str(), r.body.clone(), r.side)).collect();
    assert_eq!(
        seen,
        vec![
            ("alice", text("hi bob"), Side::Received { read: false }),
            ("bob", text("hi alice"), Side::Sent { status: Status::Sent }),
            ("bob", text("from my phone"), Side::Sent { status: Status::Sent }),
        ]
    );
    assert_eq!(h.unread().unwrap().len(), 1, "my own messages are never unread");
    assert_eq!(h.history(&user("alice"), 2).unwrap(), rows[1..].to_vec(), "the newest, oldest first");
    assert!(h.history(&user("carol"), 10).unwrap().is_empty());
}

#[test]
fn receipts_move_status_forward_only_and_only_from_the_peer() {
    let (_dir, mut h) = open_tmp();
    // alice's device: a message to bob.
    let sent = inner("alice", ALICE_1, "bob", 1, text("hi"));
    h.record_sent(&sent, [1; 16]).unwrap();
    assert_eq!(h.status([1; 16]).unwrap(), Some(Status::Sent));
    assert!(h.mark_stored([1; 16]).unwrap());
    assert_eq!(h.status([1; 16]).unwrap(), Some(Status::Stored));
    let receipt = |id: u8, from: &str, seq: u64, kind| Message {
        id: [id; 16],
        to: "alice".into(),
        inner: inner(from, BOB_1, from, seq, Body::Receipt { kind, ids: vec![[1; 16]] }),
    };
    // carol cannot move alice's message to bob.
    h.record_received(&receipt(10, "carol", 1, ReceiptKind::Read)).unwrap();
    assert_eq!(h.status([1; 16]).unwrap(), Some(Status::Stored));
    h.record_received(&receipt(11, "bob", 1, ReceiptKind::Delivered)).unwrap();
    assert_eq!(h.status([1; 16]).unwrap(), Some(Status::Delivered));
    h.record_received(&receipt(12, "bob", 2, ReceiptKind::Read)).unwrap();
    assert_eq!(h.status([1; 16]).unwrap(), Some(Status::Read));
    // Late ones never move it back.
    h.record_received(&receipt(13, "bob", 3, ReceiptKind::Delivered)).unwrap();
    assert!(!h.mark_stored([1; 16]).unwrap());
    assert_eq!(h.status([1; 16]).unwrap(), Some(Status::Read));
    // Receipts are bookkeeping: neither unread nor in the history.
    assert!(h.unread().unwrap().is_empty());
    assert_eq!(h.history(&user("bob"), 10).unwrap().len(), 1);
    assert_eq!(h.status([11; 16]).unwrap(), None, "a received message has no send status");
}

#[test]
fn my_other_devices_see_the_receipts_of_what_i_sent() {
    let (_dir, mut h) = open_tmp();
    // alice's second device: her own copy of a message her first device sent bob as [1; 16].
    let copy = Message {
        id: own_copy_id(&[1; 16]),
        to: "alice".into(),
        inner: inner("alice", ALICE_1, "bob", 1, text("hi bob")),
    };
    h.record_received(&copy).unwrap();
    assert_eq!(h.status(copy.id).unwrap(), Some(Status::Sent));
    let read = Message {
        id: [2; 16],
        to: "alice".into(),
        inner: inner("bob", BOB_1, "bob", 1, Body::Receipt { kind: ReceiptKind::Read, ids: vec![[1; 16]] }),
    };
    h.record_received(&read).unwrap();
    assert_eq!(h.status(copy.id).unwrap(), Some(Status::Read));
    assert_ne!(copy.id, [1; 16]);
}

#[test]
fn reading_on_another_device_marks_read_here() {
    let (_dir, mut h) = open_tmp();
    h.record_received(&from_alice(1, 1, "hi")).unwrap();
    h.record_received(&from_alice(2, 2, "again")).unwrap();
    let read_elsewhere = Message {
        id: [20; 16],
        to: "bob".into(),
        inner: inner("bob", KeyId([4; 8]), "alice", 1, Body::Receipt { kind: ReceiptKind::Read, ids: vec![[1; 16]] }),
    };
    h.record_received(&read_elsewhere).unwrap();
    assert_eq!(h.unread().unwrap().iter().map(|r| r.id[0]).collect::<Vec<_>>(), vec![2]);
}

#[test]
fn gaps_appear_below_the_highest_seen_and_close_when_filled() {
    let (_dir, mut h) = open_tmp();
    let gaps = |h: &History| h.gaps("alice", ALICE_1, &user("alice")).unwrap();
    assert!(gaps(&h).is_empty());
    for seq in [1, 2, 5, 7] {
        h.record_received(&from_alice(seq as u8, seq, "x")).unwrap();
    }
    assert_eq!(gaps(&h), vec![3..=4, 6..=6]);
    h.record_received(&from_alice(3, 3, "late")).unwrap();
    assert_eq!(gaps(&h), vec![4..=4, 6..=6]);
    // Another device's or conversation's numbers are their own.
    assert!(h.gaps("alice", ALICE_2, &user("alice")).unwrap().is_empty());
    for seq in [4, 6] {
        h.record_received(&from_alice(seq as u8, seq, "late")).unwrap();
    }
    assert!(gaps(&h).is_empty());
    // A first message after a gap from the start.
    let m = Message { id: [30; 16], to: "bob".into(), inner: inner("alice", ALICE_2, "alice", 3, text("x")) };
    h.record_received(&m).unwrap();
    assert_eq!(h.gaps("alice", ALICE_2, &user("alice")).unwrap(), vec![1..=2]);
}

#[test]
fn missing_lists_the_gaps_of_every_other_sender_not_our_own_devices() {
    let (_dir, mut h) = open_tmp();
    for seq in [1, 3] {
        h.record_received(&from_alice(seq as u8, seq, "x")).unwrap();
    }
    // Our own device's copies skip numbers (receipts are not copied): no alarm for them.
    let mine = Message { id: [40; 16], to: "bob".into(), inner: inner("bob", BOB_1, "alice", 4, text("mine")) };
    h.record_received(&mine).unwrap();
    let missing = h.missing("bob", |_| true).unwrap();
    assert_eq!(missing, vec![("alice".to_string(), ALICE_1, user("alice"), 2..=2)]);
    h.record_received(&from_alice(2, 2, "late")).unwrap();
    assert!(h.missing("bob", |_| true).unwrap().is_empty());
    // A device that came late: its first number from a sender is 5; what came before
    // was handed to the others and deleted, not lost.
    let late = Message { id: [50; 16], to: "bob".into(), inner: inner("alice", ALICE_2, "alice", 5, text("x")) };
    h.record_received(&late).unwrap();
    assert!(h.missing("bob", |_| true).unwrap().is_empty());
    let after = Message { id: [51; 16], to: "bob".into(), inner: inner("alice", ALICE_2, "alice", 8, text("x")) };
    h.record_received(&after).unwrap();
    assert_eq!(h.missing("bob", |_| true).unwrap(), vec![("alice".to_string(), ALICE_2, user("alice"), 6..=7)]);
    assert!(h.missing("bob", |from| from != "alice").unwrap().is_empty(), "a sender left out is not watched");
}

#[test]
fn gaps_are_bounded() {
    let (_dir, mut h) = open_tmp();
    for i in 1..=(GAPS_MAX as u64 + 5) {
        let mut m = from_alice(0, 2 * i, "x");
        m.id = [0; 16];
        m.id[..8].copy_from_slice(&i.to_be_bytes());
        h.record_received(&m).unwrap();
    }
    let gaps = h.gaps("alice", ALICE_1, &user("alice")).unwrap();
    assert_eq!(gaps.len(), GAPS_MAX);
    assert_eq!(gaps[0], 1..=1);
    assert_eq!(gaps[GAPS_MAX - 1], 127..=127);
}

/// The database files as they are on disk at this moment, as a crash would leave them
/// (no checkpoint, no close), copied into a fresh folder.
fn crash_copy(home: &Path) -> tempfile::TempDir {
    let copy = tempfile::tempdir().unwrap();
    for suffix in ["", "-wal"] {
        let from = home.join(format!("{HISTORY_FILE}{suffix}"));
        if from.exists() {
            std::fs::copy(&from, copy.path().join(format!("{HISTORY_FILE}{suffix}"))).unwrap();
        }
    }
    copy
}

#[test]
fn an_acknowledged_message_survives_a_crash() {
    let (dir, mut h) = open_tmp();
    let m = from_alice(1, 1, "keep me");
    let before = crash_copy(dir.path());
    assert_eq!(h.record_received(&m).unwrap(), Recorded::New);
    let seq = h.next_seq(&user("alice")).unwrap();
    let after = crash_copy(dir.path());
    // The handle is never closed: nothing may depend on a clean shutdown.
    std::mem::forget(h);
    let unread = |home: &Path| History::open_in(home).unwrap().unread().unwrap();
    assert!(unread(before.path()).is_empty(), "the control: the copy before has nothing");
    let rows = unread(after.path());
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0].body, text("keep me"));
    assert_eq!(History::open_in(after.path()).unwrap().next_seq(&user("alice")).unwrap(), seq + 1);
    // And the leaked handle's own file reopens with the row too.
    assert_eq!(unread(dir.path()).len(), 1);
}

#[test]
fn a_newer_schema_is_refused_and_the_file_is_private() {
    use std::os::unix::fs::PermissionsExt;
    let (dir, h) = open_tmp();
    let path = dir.path().join(HISTORY_FILE);
    assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
    h.conn.pragma_update(None, "user_version", SCHEMA_VERSION + 1).unwrap();
    drop(h);
    assert!(matches!(History::open(&path), Err(HistoryError::NewerSchema(v)) if v == SCHEMA_VERSION + 1));
}

#[test]
fn a_message_breaking_the_rules_is_not_recorded() {
    let (_dir, mut h) = open_tmp();
    let bad = inner("alice", ALICE_1, "bob", 0, text("x"));
    assert!(matches!(h.record_sent(&bad, [1; 16]), Err(HistoryError::Invalid(_))));
    assert_eq!(h.status([1; 16]).unwrap(), None);
}

#[test]
fn every_body_kind_is_stored_and_read_back() {
    let (_dir, mut h) = open_tmp();
    let bodies = [
        text("t"),
        Body::FileOffer {
            transfer: [1; 16],
            name: "a.txt".into(),
            bytes: 3,
            sha256: [2; 32],
            manifest: [3; 32],
            cert_fingerprint: [4; 32],
        },
        Body::FileAnswer { transfer: [1; 16], accept: true },
    ];
    for (i, b) in bodies.iter().enumerate() {
        let m = Message {
            id: [i as u8; 16],
            to: "bob".into(),
            inner: inner("alice", ALICE_1, "alice", i as u64 + 1, b.clone()),
        };
        h.record_received(&m).unwrap();
    }
    let g = Message {
        id: [50; 16],
        to: "bob".into(),
        inner: Inner {
            conversation: Conversation::Group([8; 16]),
            ..inner("alice", ALICE_1, "x", 1, Body::Group(vec![1]))
        },
    };
    assert_eq!(h.record_received(&g).unwrap(), Recorded::New);
    let got: Vec<_> = h.history(&user("alice"), 10).unwrap().into_iter().map(|r| r.body).collect();
    assert_eq!(got, bodies.to_vec());
    assert!(h.history(&Conversation::Group([8; 16]), 10).unwrap().is_empty(), "group-log entries are the log's");
    assert!(h.gaps("alice", ALICE_1, &Conversation::Group([8; 16])).unwrap().is_empty());
}

#[test]
fn a_version_1_file_gains_the_group_tables_and_keeps_its_messages() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join(HISTORY_FILE);
    {
        let c = rusqlite::Connection::open(&path).unwrap();
        c.execute_batch(SCHEMA).unwrap();
        c.pragma_update(None, "user_version", 1).unwrap();
    }
    {
        let mut h = History::open(&path).unwrap();
        assert_eq!(h.record_received(&from_alice(1, 1, "before groups")).unwrap(), Recorded::New);
    }
    // Written by a build without groups: the group tables come at the next opening.
    let c = rusqlite::Connection::open(&path).unwrap();
    c.execute_batch("DROP TABLE group_entry; DROP TABLE group_log; DROP TABLE peer_keys; DROP TABLE meta;").unwrap();
    c.pragma_update(None, "user_version", 1).unwrap();
    drop(c);
    let mut h = History::open(&path).unwrap();
    let v: i64 = h.conn.query_row("PRAGMA user_version", [], |r| r.get(0)).unwrap();
    assert_eq!(v, SCHEMA_VERSION);
    assert_eq!(h.unread().unwrap().len(), 1);
    assert_eq!(h.add_group_entries(&[9; 16], &[vec![1, 2, 3]]).unwrap(), 1);
    assert_eq!(h.group_logs().unwrap(), vec![([9; 16], None, vec![vec![1, 2, 3]])]);
}

#[test]
fn the_epoch_survives_reopening_and_a_file_made_again_or_a_version_3_file_gets_a_new_one() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join(HISTORY_FILE);
    let first = History::open(&path).unwrap().epoch();
    assert_eq!(History::open(&path).unwrap().epoch(), first, "the same file, the same stream");
    {
        let mut h = History::open(&path).unwrap();
        assert_eq!(h.next_seq(&user("bob")).unwrap(), 1);
        assert_eq!(h.next_seq(&user("bob")).unwrap(), 2);
    }
    // A file written by a build without epochs gains one and keeps its numbers.
    let c = rusqlite::Connection::open(&path).unwrap();
    c.execute_batch("DROP TABLE meta;").unwrap();
    c.pragma_update(None, "user_version", 3).unwrap();
    drop(c);
    let mut h = History::open(&path).unwrap();
    assert_ne!(h.epoch(), first);
    assert_eq!(h.next_seq(&user("bob")).unwrap(), 3);
    drop(h);
    // Deleted and made again: numbers start at 1 again, in a stream of another name.
    for suffix in ["", "-wal", "-shm"] {
        let _ = std::fs::remove_file(format!("{}{suffix}", path.display()));
    }
    let mut h = History::open(&path).unwrap();
    assert_eq!(h.next_seq(&user("bob")).unwrap(), 1);
    let device = crate::crypto::keys::KeyId([1; 8]);
    use crate::chat::message::stream_id;
    assert_ne!(stream_id(&device, h.epoch()), stream_id(&device, first));
    assert_eq!(stream_id(&device, first), stream_id(&device, first));
    assert_ne!(stream_id(&crate::crypto::keys::KeyId([2; 8]), first), stream_id(&device, first));
}

#[test]
fn peers_keys_are_kept_replaced_and_survive_reopening_and_a_version_2_file_gains_them() {
    use crate::crypto::password::ListKey;
    use crate::crypto::user::UserKeys;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join(HISTORY_FILE);
    let (bob, bob_new) = (UserKeys::derive(&ListKey([2; 32])).public(), UserKeys::derive(&ListKey([3; 32])).public());
    let carol = UserKeys::derive(&ListKey([4; 32])).public();
    {
        let mut h = History::open(&path).unwrap();
        assert!(h.peer_keys().unwrap().is_empty());
        h.remember_keys("bob", &bob, 10).unwrap();
        h.remember_keys("carol", &carol, 20).unwrap();
        h.remember_keys("bob", &bob_new, 30).unwrap();
    }
    let h = History::open(&path).unwrap();
    assert_eq!(h.peer_keys().unwrap(), vec![("bob".to_string(), bob_new), ("carol".to_string(), carol)]);
    drop(h);
    // A file written by a build without the table gains it, empty, and keeps the rest.
    let c = rusqlite::Connection::open(&path).unwrap();
    c.execute_batch("DROP TABLE peer_keys; DROP TABLE meta;").unwrap();
    c.pragma_update(None, "user_version", 2).unwrap();
    drop(c);
    let mut h = History::open(&path).unwrap();
    assert!(h.peer_keys().unwrap().is_empty());
    h.remember_keys("bob", &bob, 40).unwrap();
    assert_eq!(h.peer_keys().unwrap().len(), 1);
}

#[test]
fn group_entries_and_texts_are_kept_once_and_the_group_is_named_by_its_create() {
    use crate::chat::group::Group;
    use crate::crypto::password::ListKey;
    use crate::crypto::user::UserKeys;
    use rand::SeedableRng;
    let (_dir, mut h) = open_tmp();
    let mut rng = rand::rngs::StdRng::seed_from_u64(1);
    let (g, entries) = Group::create("alice", UserKeys::derive(&ListKey([1; 32])), "crew", 5, &mut rng).unwrap();
    let id = g.id();
    assert_eq!(h.group_name(&id).unwrap(), None);
    // The Create comes second: the name is taken from it whatever the order.
    let (create, rest) = entries.split_first().unwrap();
    assert_eq!(h.add_group_entries(&id, rest).unwrap(), rest.len());
    assert_eq!(h.add_group_entries(&id, &entries).unwrap(), 1, "only the Create is new");
    assert_eq!(h.group_name(&id).unwrap().as_deref(), Some("crew"));
    assert_eq!(h.groups_named("crew").unwrap(), vec![id]);
    let logs = h.group_logs().unwrap();
    assert_eq!(logs.len(), 1);
    assert_eq!(logs[0].2.len(), entries.len());
    assert!(logs[0].2.contains(create));

    // Texts: once each, listed by time then id (the same on every member).
    let t = |e: u8, author: &str, at_ms: u64, mine: bool| GroupText {
        entry: [e; 32],
        author: author.into(),
        at_ms,
        text: format!("{author} {e}"),
        mine,
    };
    let texts = [t(7, "bob", 20, false), t(3, "alice", 20, true), t(5, "bob", 10, false)];
    assert_eq!(h.record_group_texts(&id, &texts).unwrap(), vec![true, true, true]);
    assert_eq!(h.record_group_texts(&id, &texts[..1]).unwrap(), vec![false]);
    let order: Vec<_> = h.history(&Conversation::Group(id), 10).unwrap().into_iter().map(|r| r.id[0]).collect();
    assert_eq!(order, vec![5, 3, 7]);
    // Bob's texts are unread here; my own are not.
    let unread: Vec<_> = h.unread().unwrap().into_iter().map(|r| r.id[0]).collect();
    assert_eq!(unread, vec![7, 5]);
}
