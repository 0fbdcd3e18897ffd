//! Bad input on real sockets: every kind of broken frame is rejected and counted, and
//! the hosts already connected never notice.

mod common;

use confab::host;
use confab::wire::frame;
use confab::wire::message::{Hello, MessageKind};
use std::time::Duration;
use tokio::io::AsyncWriteExt;

const PW: &str = "correct horse battery";

/// A deterministic byte generator (xorshift), so a failure replays exactly.
struct Junk(u64);
impl Junk {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.next() as u8).collect()
    }
}

#[actix_rt::test]
async fn garbage_is_counted_and_connected_hosts_are_undisturbed() {
    let t = common::start(1, |_| {}).await;
    host::register(&t.settings(), &t.home("alice"), "alice", PW).await.unwrap();
    let mut alice = host::login(&t.settings(), &t.home("alice"), "alice", PW).await.unwrap();
    let sn = t.net.info.supernodes[0].udp;
    let before = t.metrics().await;

    let udp = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let mut junk = Junk(0x5eed);
    let hello = frame::encode_plain(
        sn,
        MessageKind::Hello,
        0,
        &Hello { client_version: "x".into(), host_nonce: [1; 16] }.encode(),
    );
    let keepalive_like = frame::encode_sealed(
        sn,
        MessageKind::Keepalive,
        0x1234_5678,
        1,
        &confab::crypto::aead::SessionSecret([9; 32]).derive("x"),
        frame::Direction::ToResponder,
        b"",
    );
    let mut sent = 0;
    for i in 0..2000usize {
        let pkt = match i % 8 {
            0 => {
                let n = (junk.next() % 1500) as usize;
                junk.bytes(n)
            }
            1 => hello[..(junk.next() as usize % hello.len())].to_vec(),
            2 => {
                let mut h = hello.clone();
                h[0] = 2 + (junk.next() % 200) as u8;
                h
            }
            3 => {
                let mut h = hello.clone();
                let bit = junk.next() as usize % (h.len() * 8);
                h[bit / 8] ^= 1 << (bit % 8);
                h
            }
            4 => keepalive_like.clone(),
            5 => vec![1u8; 4000],
            6 => {
                // An Auth whose cookie was never issued.
                let env = confab::wire::message::Envelope {
                    key_id: [0; 8],
                    cookie: [7; 32],
                    wrapped: vec![1; 256],
                    sealed: vec![2; 64],
                };
                frame::encode_plain(sn, MessageKind::Auth, 0, &env.encode())
            }
            _ => {
                let mut b = junk.bytes(40);
                b[0] = 1;
                b
            }
        };
        udp.send_to(&pkt, sn).await.unwrap();
        sent += 1;
        if i % 200 == 0 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
    // TCP: junk, a bad length prefix, a half frame then silence.
    let tcp_addr = t.net.info.supernodes[0].tcp[0];
    for bytes in [junk.bytes(300), vec![0xff, 0xff, 1, 2, 3], vec![0, 50, 1, 2]] {
        let mut s = tokio::net::TcpStream::connect(tcp_addr).await.unwrap();
        let _ = s.write_all(&bytes).await;
    }
    let mut s = tokio::net::TcpStream::connect(t.net.info.login_server).await.unwrap();
    s.write_all(&junk.bytes(500)).await.unwrap();
    drop(s);

    // Alice's session is untouched, and new work still gets done.
    let seen = alice.keepalive(Duration::from_secs(2)).await;
    assert_eq!(seen, Some(alice.report.public_addr), "keepalive after the flood");
    host::register(&t.settings(), &t.home("bob"), "bob", PW).await.unwrap();
    let bob = host::login(&t.settings(), &t.home("bob"), "bob", PW).await.unwrap();
    bob.logout().await;

    let rejected =
        |m: &str, reason: &str| t.metric(m, "confab_wire_frames_rejected_total", &[&format!("reason=\"{reason}\"")]);
    // The last junk may still be in the node's queue: wait until every reason has moved.
    let reasons = ["truncated", "unknown_version", "oversized", "unknown_session", "stale_cookie"];
    common::wait_for("every reason counted", Duration::from_secs(5), async || {
        let m = t.metrics().await;
        reasons.iter().all(|r| rejected(&m, r) > rejected(&before, r))
    })
    .await;
    let after = t.metrics().await;
    for reason in ["truncated", "unknown_version", "oversized", "unknown_session", "stale_cookie"] {
        assert!(rejected(&after, reason) > rejected(&before, reason), "no rejection counted for {reason}");
    }
    let total = t.metric(&after, "confab_wire_frames_rejected_total", &[])
        - t.metric(&before, "confab_wire_frames_rejected_total", &[]);
    assert!(total >= 0.8 * sent as f64, "{total} of {sent} junk datagrams counted as rejected");
    assert_eq!(t.metric(&after, "confab_supernode_hosts_connected", &[]), 1.0, "only alice is connected");
    alice.logout().await;
    t.net.stop().await;
}
