//! Revoking a running super node's credential at the login server, and rotating the
//! login key, on real sockets in one process.

mod common;

use common::metric_sum;
use confab::crypto::CredentialKind;
use std::time::Duration;

const PW: &str = "correct horse battery";

/// sn3 is revoked at the login server while the cluster runs. Only sn1 asks the login
/// server (the others' next fetch is an hour away); the list reaches sn2 by gossip. Then
/// every other node drops sn3 from its view and refuses its packets, and a host that
/// tries sn3 first refuses it and logs in through another.
#[actix_rt::test]
async fn a_revoked_super_node_is_dropped_by_every_member_and_refused_by_hosts() {
    let t = common::start(3, |c| {
        c.supernode.probe_period_ms = 300;
        c.supernode.revocation.fetch_interval_secs = 3600;
        c.supernode.revocation.gossip_interval_ms = 200;
    })
    .await;
    t.converge(3).await;
    let nodes = t.net.nodes();
    let sn3 = nodes[2].identity.key.public().id();
    let node = |i: usize| format!("node=\"{}\"", nodes[i].identity.name);
    let lists = "confab_revocation_lists_total";
    let m = t.metrics().await;
    let revoked_before =
        [0, 1].map(|i| metric_sum(&m, "confab_cluster_packets_rejected_total", &[&node(i), "reason=\"revoked\""]));
    assert_eq!(metric_sum(&m, lists, &[&node(1)]), 0.0, "no list anywhere yet");

    // The operator's command, as `confab revoke sn3.cred` runs it on the login server.
    let mut cfg = confab::config::Config::default();
    cfg.login_server.database = t.net.info.data.join("accounts.sqlite").into();
    let cred_file = t.net.info.data.join("sn3.cred");
    let target =
        confab::login::revocations::resolve(cred_file.to_str().unwrap(), CredentialKind::SuperNode, "", &cfg).unwrap();
    let (entry, version) = confab::login::revocations::revoke(&cfg.login_server, &target, confab::unix_now()).unwrap();
    assert_eq!((entry.key, entry.kind, entry.subject.as_str()), (sn3, CredentialKind::SuperNode, "sn3"));

    let started = std::time::Instant::now();
    nodes[0].revocations.as_ref().expect("sn1 fetches revocations").fetch();
    common::wait_for("sn1 and sn2 drop sn3 from their views", Duration::from_secs(15), async || {
        nodes[..2].iter().all(|n| n.members().len() == 2 && n.members().iter().all(|m| m.node != Some(sn3.0)))
    })
    .await;
    let dropped_in = started.elapsed();
    assert!(nodes[..2].iter().all(|n| n.identity.trusted.revoked().version() == version));
    let m = t.metrics().await;
    assert_eq!(metric_sum(&m, lists, &[&node(0), "source=\"login_server\"", "outcome=\"adopted\""]), 1.0);
    assert_eq!(metric_sum(&m, lists, &[&node(1), "source=\"gossip\"", "outcome=\"adopted\""]), 1.0);
    assert_eq!(metric_sum(&m, lists, &[&node(1), "source=\"login_server\""]), 0.0, "sn2 never asked");
    assert!(metric_sum(&m, "confab_revocation_list_version", &[&node(1)]) == version as f64);

    // sn3 still gossips to them (nobody told it): its packets are refused as revoked.
    common::wait_for("sn3's packets are refused as revoked", Duration::from_secs(10), async || {
        let m = t.metrics().await;
        [0, 1].iter().all(|&i| {
            metric_sum(&m, "confab_cluster_packets_rejected_total", &[&node(i), "reason=\"revoked\""])
                > revoked_before[i]
        })
    })
    .await;

    // A host whose first bootstrap node is sn3 refuses it and logs in through another.
    let mut s = t.settings();
    s.ladder.bootstrap = t.net.info.supernodes.iter().rev().map(|n| n.udp).collect();
    let home = t.home("alice");
    confab::host::register(&s, &home, "alice", PW).await.unwrap();
    let alice = confab::host::login(&s, &home, "alice", PW).await.unwrap();
    assert_ne!(alice.report.supernode, "sn3");
    let sn3_udp = t.net.info.supernodes[2].udp;
    let tried = alice.report.attempts.iter().find(|a| a.addr == sn3_udp).expect("sn3 was tried first");
    assert!(tried.outcome.contains("revoked"), "{}", tried.outcome);
    assert_eq!(s.trusted.revoked().version(), version, "the host got the list at login");

    // sn3 restarted (a new static key, a new certificate) cannot rejoin: its hellos are
    // refused, and nobody lets it back into the view.
    let before = metric_sum(&t.metrics().await, "confab_cluster_packets_rejected_total", &["reason=\"revoked\""]);
    let mut net = t;
    net.net.kill_node(2);
    net.net.restart_node(2).await.unwrap();
    common::wait_for("the restarted sn3 is refused again", Duration::from_secs(10), async || {
        let m = net.metrics().await;
        metric_sum(&m, "confab_cluster_packets_rejected_total", &["reason=\"revoked\""]) > before + 2.0
    })
    .await;
    let nodes = net.net.nodes();
    assert!(nodes[..2].iter().all(|n| n.members().iter().all(|m| m.node != Some(sn3.0))), "sn3 came back");
    eprintln!("revocation: sn1 and sn2 dropped sn3 {dropped_in:?} after sn1 was asked to fetch");
    net.net.stop().await;
}
