//! Files between users on loopback: a login server and super nodes, hosts as in-process
//! sessions. A file offered to an online user arrives whole over a "file" call; one
//! offered to an offline user waits as a stored offer, and the sender's next session
//! serves it when the recipient comes online and calls.

mod common;

use confab::host::Session;
use confab::host::buddies::Event;
use confab::host::core::files::FileState;
use sha2::Digest;
use std::path::{Path, PathBuf};
use std::time::Duration;

const PW: &str = "correct horse battery";

async fn host(t: &common::TestNet, user: &str, register: bool) -> (Session, confab::host::home::Home) {
    let s = t.settings();
    let home = t.home(user);
    if register {
        confab::host::register(&s, &home, user, PW).await.unwrap();
    }
    (confab::host::login(&s, &home, user, PW).await.unwrap(), home)
}

/// Makes `a` and `b` authorized buddies (a host takes files only from buddies).
async fn befriend(a: &mut Session, b: &mut Session, b_name: &str, a_name: &str) {
    a.add_buddy(b_name, "files").await.unwrap();
    b.refresh_buddies().await.unwrap();
    let r = b.answer_buddy(a_name, true).await.unwrap();
    assert_eq!(r, confab::buddy::Relation::Authorized);
    // The answer comes before the list that the files consult has it.
    let authorized = |s: &Session, who: &str| {
        s.buddies().iter().any(|x| x.user == who && x.relation == confab::buddy::Relation::Authorized)
    };
    // On both sides (a list learns of the answer by a notice or a refresh; under load the
    // notice can be late, so each side refreshes while it waits).
    for (s, who, what) in [(b, a_name, "the buddy list authorized"), (a, b_name, "the asker's list authorized")] {
        common::wait_for(what, Duration::from_secs(10), async || {
            if !authorized(s, who) {
                let _ = s.refresh_buddies().await;
            }
            authorized(s, who)
        })
        .await;
    }
}

/// A file of `len` bytes that differs everywhere, so a misplaced chunk shows.
fn file_of(dir: &Path, len: usize) -> PathBuf {
    let path = dir.join("payload.bin");
    let bytes: Vec<u8> = (0..len).map(|i| (i as u32).wrapping_mul(2_654_435_761).to_be_bytes()[1]).collect();
    std::fs::write(&path, bytes).unwrap();
    path
}

fn sha_hex(path: &Path) -> String {
    hex::encode(sha2::Sha256::digest(std::fs::read(path).unwrap()))
}

#[actix_rt::test]
async fn a_file_to_an_online_user_arrives_whole_over_a_file_call() {
    common::bounded(Duration::from_secs(120), online_file()).await;
}

async fn online_file() {
    let t = common::start(2, |c| c.supernode.probe_period_ms = 200).await;
    t.converge(2).await;
    let (mut alice, a_home) = host(&t, "alice", true).await;
    let (mut bob, b_home) = host(&t, "bob", true).await;
    befriend(&mut alice, &mut bob, "bob", "alice").await;
    let inbox = b_home.dir().join("inbox");
    std::fs::create_dir_all(&inbox).unwrap();
    alice.set_files(a_home.dir().join("transfers"), None);
    bob.set_files(b_home.dir().join("transfers"), Some(inbox.clone()));
    let src = file_of(a_home.dir(), 3 * 1024 * 1024 + 17);
    let reported = async || t.metric(&t.metrics().await, "confab_file_bytes_total", &[]);
    let before = reported().await;
    let f = alice.send_file("bob", &src).await.unwrap();
    eprintln!("online file: {f:?}");
    assert_eq!(f.status, "done");
    assert_eq!(f.sha256, sha_hex(&src));
    assert_eq!(f.bytes, 3 * 1024 * 1024 + 17);
    assert_eq!(f.chunks, 49, "every chunk sent once");
    assert!(["direct", "punched", "relay-udp", "relay-tcp"].contains(&f.path.as_str()), "{}", f.path);
    let placed = inbox.join("payload.bin");
    // Placed after its whole SHA-256 and an fsync, in an unoptimised build: slow under load.
    common::wait_for("the file placed at bob", Duration::from_secs(30), async || placed.exists()).await;
    assert_eq!(sha_hex(&placed), f.sha256);
    // Bob's super node heard from him how many file bytes came, and by which path.
    let path = f.path.replace("relay-", "relayed_");
    let by_path = async || t.metric(&t.metrics().await, "confab_file_bytes_total", &[&format!("path=\"{path}\"")]);
    common::wait_for("bob's report of the file's bytes", Duration::from_secs(10), async || {
        reported().await - before >= f.bytes as f64
    })
    .await;
    assert!(by_path().await >= f.bytes as f64, "counted under path {path}");
    // The transfer's folder goes once the file is placed.
    let left = std::fs::read_dir(b_home.dir().join("transfers")).unwrap().count();
    assert_eq!(left, 0, "bob's transfer folder is gone");
    // The sender's too, once the end is acknowledged: sending the file again is a new
    // transfer, not one bob finished and forgot.
    let a_transfers = a_home.dir().join("transfers");
    common::wait_for("alice's transfer folder gone", Duration::from_secs(5), async || {
        std::fs::read_dir(&a_transfers).unwrap().count() == 0
    })
    .await;
    alice.logout().await;
    bob.logout().await;
    t.net.stop().await;
}

#[actix_rt::test]
async fn a_file_to_an_offline_user_is_offered_and_delivered_by_the_senders_next_session() {
    common::bounded(Duration::from_secs(200), offline_file()).await;
}

async fn offline_file() {
    let t = common::start(2, |c| c.supernode.probe_period_ms = 200).await;
    t.converge(2).await;
    let (mut bob, b_home) = host(&t, "bob", true).await;
    let (mut alice, a_home) = host(&t, "alice", true).await;
    befriend(&mut alice, &mut bob, "bob", "alice").await;
    bob.logout().await;
    alice.set_files(a_home.dir().join("transfers"), None);
    let src = file_of(a_home.dir(), 700_000);
    let f = alice.send_file("bob", &src).await.unwrap();
    assert_eq!(f.status, "offered", "{f:?}");
    alice.logout().await;
    // The sender's next session serves the offer kept in its home.
    let (mut alice, _) = host(&t, "alice", false).await;
    alice.set_files(a_home.dir().join("transfers"), None);
    let inbox = b_home.dir().join("inbox");
    std::fs::create_dir_all(&inbox).unwrap();
    let (mut bob, _) = host(&t, "bob", false).await;
    bob.set_files(b_home.dir().join("transfers"), Some(inbox.clone()));
    // The offer comes with the stored messages fetched at login.
    let _ = bob.settle_chat(Duration::from_secs(5)).await;
    // Bob calls at once; if the index still shows alice's last session offline, again
    // after 6, 12, 24 s.
    let started = std::time::Instant::now();
    let mut seen = Vec::new();
    loop {
        let left = Duration::from_secs(100).checked_sub(started.elapsed());
        match bob.next_event_within(left.unwrap_or_default()).await {
            Some(Event::File { state: FileState::Done, .. }) => break,
            Some(Event::Presence { .. }) => {}
            Some(e) => seen.push(e),
            None => panic!("the file not done at bob within 100 s; bob saw {seen:?}"),
        }
    }
    let placed = inbox.join("payload.bin");
    assert_eq!(sha_hex(&placed), sha_hex(&src));
    alice.logout().await;
    bob.logout().await;
    t.net.stop().await;
}

#[actix_rt::test]
async fn a_sender_killed_half_way_resumes_without_sending_a_held_chunk_again() {
    common::bounded(Duration::from_secs(150), sender_killed()).await;
}

async fn sender_killed() {
    use confab::transfer::state::ReceiveState;
    let t = common::start(2, |c| c.supernode.probe_period_ms = 200).await;
    t.converge(2).await;
    let (mut alice, a_home) = host(&t, "alice", true).await;
    let (mut bob, b_home) = host(&t, "bob", true).await;
    befriend(&mut alice, &mut bob, "bob", "alice").await;
    // A dead sender is noticed sooner than a silent call partner would be.
    bob.set_call_timeouts(confab::call::signal::Timeouts { invite_ms: 4_000, silence_ms: 4_000, ..Default::default() });
    let inbox = b_home.dir().join("inbox");
    std::fs::create_dir_all(&inbox).unwrap();
    alice.set_files(a_home.dir().join("transfers"), None);
    bob.set_files(b_home.dir().join("transfers"), Some(inbox.clone()));
    const LEN: usize = 24 * 1024 * 1024;
    let src = file_of(a_home.dir(), LEN);
    let total = confab::transfer::manifest::chunk_count(LEN as u64);
    // Killed (the session dropped without a goodbye, its sockets gone) once bob holds 4 MB.
    let half_way = async {
        let mut seen = Vec::new();
        loop {
            match bob.next_event_within(Duration::from_secs(60)).await {
                Some(Event::File { state: FileState::Progress, bytes, .. }) if bytes >= 4 << 20 => return bytes,
                Some(Event::Presence { .. }) => {}
                Some(e) => seen.push(e),
                None => panic!("no progress at bob, who saw {seen:?}"),
            }
        }
    };
    tokio::select! {
        r = alice.send_file("bob", &src) => panic!("the send ended before the kill: {r:?}"),
        bytes = half_way => eprintln!("killing the sender with {bytes} bytes at bob"),
    }
    drop(alice);
    common::expect_event(&mut bob, Duration::from_secs(40), "bob's transfer stopped", |e| {
        matches!(e, Event::File { state: FileState::Stopped { .. }, .. })
    })
    .await;
    let folder = std::fs::read_dir(b_home.dir().join("transfers")).unwrap().next().unwrap().unwrap().path();
    let held = ReceiveState::open(&folder).unwrap().held().count();
    assert!(held > 0 && held < total, "bob holds {held} of {total} chunks");
    // Sent again by the restarted sender: the same transfer, only what bob lacks.
    let (mut alice, _) = host(&t, "alice", false).await;
    alice.set_files(a_home.dir().join("transfers"), None);
    let f = alice.send_file("bob", &src).await.unwrap();
    eprintln!("resumed: {f:?} after {held} chunks held");
    assert_eq!(f.status, "done", "{f:?}");
    assert_eq!(f.chunks, total - held, "only the chunks bob lacked were sent");
    assert_eq!(f.bytes, LEN as u64);
    assert_eq!(f.sha256, sha_hex(&src));
    let placed = inbox.join("payload.bin");
    // Placed after its whole SHA-256 and an fsync, in an unoptimised build: slow under load.
    common::wait_for("the file placed at bob", Duration::from_secs(30), async || placed.exists()).await;
    assert_eq!(sha_hex(&placed), f.sha256);
    alice.logout().await;
    bob.logout().await;
    t.net.stop().await;
}

#[actix_rt::test]
async fn files_go_through_a_relay_over_udp_and_tcp_within_its_file_cap() {
    common::bounded(Duration::from_secs(150), relayed_files()).await;
}

async fn relayed_files() {
    const CAP: u64 = 4 << 20;
    let t = common::start(2, |c| {
        c.supernode.probe_period_ms = 200;
        c.supernode.relay.file_bytes_per_second_max = CAP;
    })
    .await;
    t.converge(2).await;
    let (mut alice, a_home) = host(&t, "alice", true).await;
    let (mut bob, b_home) = host(&t, "bob", true).await;
    befriend(&mut alice, &mut bob, "bob", "alice").await;
    let inbox = b_home.dir().join("inbox");
    std::fs::create_dir_all(&inbox).unwrap();
    alice.set_files(a_home.dir().join("transfers"), None);
    bob.set_files(b_home.dir().join("transfers"), Some(inbox.clone()));
    // The receiver places the file call: its choice of path decides.
    bob.set_relay_only(true);
    for (tcp, want) in [(false, "relay-udp"), (true, "relay-tcp")] {
        bob.set_relay_tcp(tcp);
        let before = t.metric(&t.metrics().await, "confab_relay_file_bytes_total", &[]);
        let dir = a_home.dir().join(want);
        std::fs::create_dir_all(&dir).unwrap();
        let len = 2 * 1024 * 1024 + 5;
        let src = file_of(&dir, len);
        let f = alice.send_file("bob", &src).await.unwrap();
        eprintln!("{want}: {f:?}");
        assert_eq!(f.status, "done", "{f:?}");
        assert_eq!(f.path, want);
        assert_eq!(f.sha256, sha_hex(&src));
        let placed = inbox.join("payload.bin");
        // Placed after its whole SHA-256 and an fsync, in an unoptimised build: slow under load.
        common::wait_for("the file placed at bob", Duration::from_secs(30), async || placed.exists()).await;
        assert_eq!(sha_hex(&placed), f.sha256);
        std::fs::remove_file(&placed).unwrap();
        // Every byte of it crossed the relay, counted as file data, within the cap.
        // (A worker adds its counts once per batch: the last may come a moment later.)
        common::wait_for("the file's bytes counted at the relay", Duration::from_secs(5), async || {
            let after = t.metric(&t.metrics().await, "confab_relay_file_bytes_total", &[]);
            after - before >= len as f64
        })
        .await;
        // No loss on loopback but what sockets drop under load (1.1× alone, up to 1.3× beside
        // the other tests on two cores): a host's media gate that took relayed file data for
        // a media flood made this 1.9×.
        let ratio = f.wire_bytes as f64 / len as f64;
        assert!(ratio < 1.5, "{want}: the sender sent {ratio:.2}× the file");
        let rate = f.bytes as f64 / (f.ms as f64 / 1000.0);
        assert!(rate <= CAP as f64 * 1.5, "{want}: {rate:.0} B/s through a {CAP} B/s cap");
    }
    alice.logout().await;
    bob.logout().await;
    t.net.stop().await;
}

/// The closing note's measurement: `cargo test --test files measure -- --ignored --nocapture`.
/// A 10 MB file over a file call on loopback beside a plain TCP copy of the same bytes in
/// the same run; the file's time includes the offer and the call's setup.
#[actix_rt::test]
#[ignore = "a measurement, not a check"]
async fn measure_loopback_throughput_beside_tcp() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let t = common::start(2, |c| c.supernode.probe_period_ms = 200).await;
    t.converge(2).await;
    let (mut alice, a_home) = host(&t, "alice", true).await;
    let (mut bob, b_home) = host(&t, "bob", true).await;
    befriend(&mut alice, &mut bob, "bob", "alice").await;
    let inbox = b_home.dir().join("inbox");
    std::fs::create_dir_all(&inbox).unwrap();
    alice.set_files(a_home.dir().join("transfers"), None);
    bob.set_files(b_home.dir().join("transfers"), Some(inbox.clone()));
    const LEN: usize = 10_000_000;
    let src = file_of(a_home.dir(), LEN);
    let f = alice.send_file("bob", &src).await.unwrap();
    assert_eq!(f.status, "done");
    let quic_s = f.ms as f64 / 1000.0;
    // Plain TCP on the same machine, same bytes, written to a file as the transfer does.
    let bytes = std::fs::read(&src).unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let at = listener.local_addr().unwrap();
    let out = b_home.dir().join("tcp.bin");
    let started = std::time::Instant::now();
    let reader = tokio::spawn(async move {
        let (mut s, _) = listener.accept().await.unwrap();
        let mut got = Vec::with_capacity(LEN);
        s.read_to_end(&mut got).await.unwrap();
        std::fs::write(&out, &got).unwrap();
        got.len()
    });
    let mut c = tokio::net::TcpStream::connect(at).await.unwrap();
    c.write_all(&bytes).await.unwrap();
    c.shutdown().await.unwrap();
    assert_eq!(reader.await.unwrap(), LEN);
    let tcp_s = started.elapsed().as_secs_f64();
    let mbit = |s: f64| LEN as f64 * 8.0 / s / 1e6;
    eprintln!(
        "10 MB on loopback: file call {quic_s:.2} s ({:.0} Mbit/s, path {}), plain TCP {tcp_s:.3} s ({:.0} Mbit/s), \
         ratio {:.1}; sender's QUIC bytes on the wire {:.3}× the file",
        mbit(quic_s),
        f.path,
        mbit(tcp_s),
        quic_s / tcp_s,
        f.wire_bytes as f64 / LEN as f64
    );
    alice.logout().await;
    bob.logout().await;
    t.net.stop().await;
}
