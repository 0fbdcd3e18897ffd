//! A super node's call relay over real sockets: a host opens a relay session, two UDP
//! endpoints use it with their tokens, strangers and wrong tokens get nothing through,
//! quotas hold, and sessions end on release, on idle and when their owner leaves.

mod common;

use common::relay::{drain, media, socket};
use confab::relay::packet::{self, RELAY_HEADER_LEN, SessionId, Token};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

const PW: &str = "correct horse battery";

#[actix_rt::test]
async fn relay_sessions_forward_only_between_their_two_endpoints() {
    let t = common::start(1, |c| {
        c.supernode.relay.idle_timeout_secs = 2;
        c.supernode.relay.sessions_per_host_max = 3;
        c.supernode.relay.packets_per_second_max = 1000;
    })
    .await;
    let s = t.settings();
    let home = t.home("rita");
    confab::host::register(&s, &home, "rita", PW).await.unwrap();
    let mut rita = confab::host::login(&s, &home, "rita", PW).await.unwrap();
    let node = t.net.nodes()[0].clone();
    let table = &node.relay.as_ref().expect("confab up gives every super node a relay").table;

    let vic_home = t.home("vic");
    confab::host::register(&s, &vic_home, "vic", PW).await.unwrap();
    let vic = confab::host::login(&s, &vic_home, "vic", PW).await.unwrap();

    // Leg B's token comes sealed to the callee: rita, who asked, cannot use it.
    let g = rita.allocate_relay(vic.credential()).await.unwrap();
    let e = rita.open_relay_leg(g.session, &g.leg_b).unwrap_err().to_string();
    assert!(e.contains("does not open"), "{e}");
    let token_b = vic.open_relay_leg(g.session, &g.leg_b).unwrap();
    assert!(vic.open_relay_leg(g.session ^ 1, &g.leg_b).is_err(), "bound to its session");
    // And a super node seals it only to a verified host credential.
    let mut bytes = vic.credential().encode();
    *bytes.last_mut().unwrap() ^= 1;
    let forged = confab::crypto::Credential::decode(&bytes).unwrap();
    let e = rita.allocate_relay(&forged).await.unwrap_err().to_string();
    assert!(e.contains("untrusted"), "{e}");
    // Nor to the asker's own account, which would give it both legs.
    let own = rita.credential().clone();
    let e = rita.allocate_relay(&own).await.unwrap_err().to_string();
    assert!(e.contains("untrusted"), "{e}");
    let relay: SocketAddr = g.relay.unwrap();
    let (session, ta, tb) = (SessionId(g.session), Token::from_bytes(g.token_a), Token::from_bytes(token_b));
    let (a, b, stranger) = (socket(), socket(), socket());
    a.connect(relay).unwrap();
    b.connect(relay).unwrap();
    stranger.connect(relay).unwrap();

    // Each leg announces itself; once both have, packets flow both ways.
    b.send(&packet::build(session, tb, &media(0, b"hello from b"))).unwrap();
    a.send(&packet::build(session, ta, &media(0, b"hello from a"))).unwrap();
    let first = drain(&b);
    assert_eq!(first.len(), 1);
    assert_eq!(&first[0][RELAY_HEADER_LEN..], media(0, b"hello from a"));
    assert!(first[0][5..RELAY_HEADER_LEN].iter().all(|x| *x == 0), "tokens never reach the other side");
    let started = Instant::now();
    for i in 0..200u32 {
        a.send(&packet::build(session, ta, &media(i + 1, b"a"))).unwrap();
        b.send(&packet::build(session, tb, &media(i + 1, b"b"))).unwrap();
        if i % 50 == 49 {
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    let (at_b, at_a) = (drain(&b), drain(&a));
    eprintln!("400 relayed packets in {:?}", started.elapsed());
    assert_eq!((at_b.len(), at_a.len()), (200, 200), "no loss on loopback within the rate cap");

    // A stranger with A's token, a wrong token, an unknown session, a replay of A's
    // packet, oversized and malformed datagrams: nothing gets through.
    stranger.send(&packet::build(session, ta, &media(500, b"spoofed source"))).unwrap();
    a.send(&packet::build(session, Token::from_bytes([7; 16]), &media(501, b"bad token"))).unwrap();
    a.send(&packet::build(SessionId(g.session ^ 1), ta, &media(502, b"unknown session"))).unwrap();
    a.send(&packet::build(session, ta, &media(150, b"a"))).unwrap();
    a.send(&packet::build(session, ta, &media(503, &[0; 2100]))).unwrap();
    a.send(&packet::build(session, ta, b"too short for media")).unwrap();
    a.send(b"garbage").unwrap();
    assert!(drain(&b).is_empty());
    let acct = table.accounting(session).unwrap();
    assert_eq!((acct.packets_a_to_b, acct.packets_b_to_a), (201, 200));
    // …and the session carries on undisturbed.
    a.send(&packet::build(session, ta, &media(504, b"still here"))).unwrap();
    assert_eq!(drain(&b), vec![packet::build(session, Token::ZERO, &media(504, b"still here"))]);

    // A flood beyond the session's rate cap is cut, not forwarded.
    for i in 0..3000u32 {
        a.send(&packet::build(session, ta, &media(1000 + i, b"flood"))).unwrap();
    }
    // At most the one-second bucket (1000) and what refills while the flood lasts.
    let through = drain(&b).len();
    assert!(through <= 1200, "{through} of 3000 flooded packets went through");

    // Quotas: three sessions per host here.
    let g2 = rita.allocate_relay(vic.credential()).await.unwrap();
    let g3 = rita.allocate_relay(vic.credential()).await.unwrap();
    let e = rita.allocate_relay(vic.credential()).await.unwrap_err().to_string();
    assert!(e.contains("full"), "{e}");
    assert_eq!(table.len(), 3);

    // Release ends one at once; idle ends the unused ones; leaving ends the rest.
    rita.release_relay(g2.session).await;
    let wait = |n: usize, what: &'static str| async move {
        let t0 = Instant::now();
        while table.len() != n {
            assert!(t0.elapsed() < Duration::from_secs(6), "{what}: {} sessions left", table.len());
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    };
    wait(2, "release").await;
    wait(0, "idle timeout").await;
    assert!(table.accounting(SessionId(g3.session)).is_none());
    let g4 = rita.allocate_relay(vic.credential()).await.unwrap();
    assert_eq!(table.len(), 1);
    rita.logout().await;
    vic.logout().await;
    wait(0, "owner left").await;
    let _ = g4;

    let m = t.metrics().await;
    assert!(t.metric(&m, "confab_relay_packets_total", &["outcome=\"forwarded\""]) >= 401.0);
    assert!(t.metric(&m, "confab_relay_drops_total", &["reason=\"wrong_source\""]) >= 1.0);
    assert!(t.metric(&m, "confab_relay_drops_total", &["reason=\"bad_token\""]) >= 1.0);
    assert!(t.metric(&m, "confab_relay_drops_total", &["reason=\"unknown_session\""]) >= 1.0);
    assert!(t.metric(&m, "confab_relay_drops_total", &["reason=\"rate_cap\""]) >= 1.0);
    for reason in ["replayed", "oversized", "malformed"] {
        let r = format!("reason=\"{reason}\"");
        assert!(t.metric(&m, "confab_relay_drops_total", &[&r]) >= 1.0, "{reason}");
    }
    assert!(t.metric(&m, "confab_relay_allocations_total", &["outcome=\"host_quota\""]) >= 1.0);
    assert!(t.metric(&m, "confab_relay_sessions_total", &["event=\"expired\""]) >= 2.0);
    assert!(t.metric(&m, "confab_relay_sessions_total", &["event=\"released\""]) >= 1.0);
    assert!(t.metric(&m, "confab_relay_sessions_total", &["event=\"owner_left\""]) >= 1.0);
    t.net.stop().await;
}

#[actix_rt::test]
async fn relay_sessions_are_limited_per_source_across_hosts() {
    let t = common::start(1, |c| {
        c.supernode.relay.sessions_per_host_max = 2;
        c.supernode.relay.sessions_per_source_max = 3;
    })
    .await;
    let s = t.settings();
    let mut hosts = Vec::new();
    for name in ["sara", "sam"] {
        let home = t.home(name);
        confab::host::register(&s, &home, name, PW).await.unwrap();
        hosts.push(confab::host::login(&s, &home, name, PW).await.unwrap());
    }
    let node = t.net.nodes()[0].clone();
    let table = &node.relay.as_ref().unwrap().table;
    // Two hosts on one address: each within its own quota, together within the source's.
    let (sara, sam) = (hosts[0].credential().clone(), hosts[1].credential().clone());
    let g1 = hosts[0].allocate_relay(&sam).await.unwrap();
    hosts[0].allocate_relay(&sam).await.unwrap();
    hosts[1].allocate_relay(&sara).await.unwrap();
    let e = hosts[1].allocate_relay(&sara).await.unwrap_err().to_string();
    assert!(e.contains("full"), "{e}");
    assert_eq!(table.len(), 3);
    // A released session gives its place back to the source.
    hosts[0].release_relay(g1.session).await;
    common::wait_for("the released place to come back", Duration::from_secs(5), async || {
        hosts[1].allocate_relay(&sara).await.is_ok()
    })
    .await;
    for h in hosts {
        h.logout().await;
    }
    t.net.stop().await;
}
