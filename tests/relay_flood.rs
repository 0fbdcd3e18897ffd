//! A relay under a flood, alone in its test binary: the process's resident memory is the
//! network's and this test's only, so its bound can be tight.

mod common;

use common::relay::{drain, drain_quick, media, socket};
use confab::relay::packet::{self, SessionId, Token};
use std::net::{SocketAddr, UdpSocket};
use std::time::{Duration, Instant};

const PW: &str = "correct horse battery";

/// Resident memory of this process (the network runs in it), from /proc.
fn rss_bytes() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap_or_default();
    let pages: u64 = statm.split_whitespace().nth(1).and_then(|p| p.parse().ok()).unwrap_or(0);
    pages * 4096
}

#[actix_rt::test]
async fn under_a_flood_the_relay_drops_and_counts_memory_stays_flat_and_it_recovers() {
    let t = common::start(1, |c| c.supernode.relay.packets_per_second_max = 100).await;
    let s = t.settings();
    let home = t.home("sam");
    confab::host::register(&s, &home, "sam", PW).await.unwrap();
    let mut sam = confab::host::login(&s, &home, "sam", PW).await.unwrap();
    let sid_home = t.home("sid");
    confab::host::register(&s, &sid_home, "sid", PW).await.unwrap();
    let sid = confab::host::login(&s, &sid_home, "sid", PW).await.unwrap();
    let node = t.net.nodes()[0].clone();
    let table = node.relay.as_ref().unwrap().table.clone();
    // Sam opens the session for a call with Sid, who opens leg B.
    let g = sam.allocate_relay(sid.credential()).await.unwrap();
    let relay: SocketAddr = g.relay.unwrap();
    let token_b = sid.open_relay_leg(g.session, &g.leg_b).unwrap();
    let (session, ta, tb) = (SessionId(g.session), Token::from_bytes(g.token_a), Token::from_bytes(token_b));
    let (a, b) = (socket(), socket());
    a.connect(relay).unwrap();
    b.connect(relay).unwrap();
    b.send(&packet::build(session, tb, &media(0, b"b"))).unwrap();
    a.send(&packet::build(session, ta, &media(0, b"a"))).unwrap();
    assert_eq!(drain(&b).len(), 1, "latched");

    // Six seconds of everything at once, as fast as two threads can send: A over its
    // rate cap, replays, garbage, unknown sessions and stolen-looking tokens from
    // strangers (each stranger a fresh source address).
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let flooders: Vec<_> = (0..2)
        .map(|k| {
            let stop = stop.clone();
            let a = a.try_clone().unwrap();
            std::thread::spawn(move || {
                let mut seq = 1_000_000 * (k + 1);
                let mut sent = 0u64;
                let strangers: Vec<UdpSocket> = (0..16).map(|_| socket()).collect();
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    for (i, st) in strangers.iter().enumerate() {
                        seq += 1;
                        let _ = a.send(&packet::build(session, ta, &media(seq, b"over the cap")));
                        let _ = a.send(&packet::build(session, ta, &media(5, b"replayed")));
                        let _ = st.send_to(b"\x52garbage", relay);
                        let _ = st.send_to(&packet::build(SessionId(seq), ta, &media(seq, b"no such session")), relay);
                        let _ = st.send_to(
                            &packet::build(session, Token::from_bytes([i as u8; 16]), &media(seq, b"x")),
                            relay,
                        );
                        sent += 5;
                    }
                }
                sent
            })
        })
        .collect();
    let started = Instant::now();
    let mut samples = Vec::new();
    while started.elapsed() < Duration::from_secs(6) {
        tokio::time::sleep(Duration::from_millis(500)).await;
        // B's socket buffer holds what got through; keep it from filling.
        let _ = drain_quick(&b);
        samples.push(rss_bytes());
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let sent: u64 = flooders.into_iter().map(|f| f.join().unwrap()).sum();
    // Memory: after the first second, flat within 1 MiB (nothing per packet, no
    // state for what does not authenticate).
    let steady = &samples[2..];
    let (lo, hi) = (*steady.iter().min().unwrap(), *steady.iter().max().unwrap());
    eprintln!(
        "flood: {sent} datagrams sent in 6 s; RSS {:.1}..{:.1} MiB; table {} session(s)",
        lo as f64 / 1048576.0,
        hi as f64 / 1048576.0,
        table.len()
    );
    // Alone in its process, 5 runs stayed within 0.1 MiB over ~900,000 datagrams.
    assert!(hi - lo < 1 << 20, "RSS grew from {lo} to {hi} under the flood");
    assert_eq!(table.len(), 1, "strangers created no session");

    // It recovers: once the leg's rate bucket has refilled (a second), A's voice-rate
    // traffic goes through again, every datagram of a 20-datagram burst at 50 a second.
    let mut seq = 10_000_000u32;
    common::wait_for("voice-rate traffic through again after the flood", Duration::from_secs(5), async || {
        let _ = drain(&b);
        for _ in 0..20 {
            seq += 1;
            a.send(&packet::build(session, ta, &media(seq, b"voice"))).unwrap();
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        drain(&b).len() == 20
    })
    .await;
    let m = t.metrics().await;
    for reason in ["rate_cap", "replayed", "malformed", "unknown_session", "bad_token"] {
        let r = format!("reason=\"{reason}\"");
        assert!(t.metric(&m, "confab_relay_drops_total", &[&r]) > 100.0, "{reason}");
    }
    sam.logout().await;
    sid.logout().await;
    t.net.stop().await;
}
