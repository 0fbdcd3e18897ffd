//! Revoking a running super node's credential at the login server, and rotating the
//! login key, on real sockets in one process.

mod common;

use confab::crypto::CredentialKind;
use std::time::Duration;

const PW: &str = "correct horse battery";

/// Each test here starts a whole network (and the machine has few cores): they run one at
/// a time, and compare metrics before with after.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

async fn one_at_a_time() -> tokio::sync::MutexGuard<'static, ()> {
    SERIAL.lock().await
}

/// sn3 is revoked at the login server while the cluster runs. Only sn1 asks the login
/// server (the others' next fetch is an hour away); the list reaches sn2 by gossip. Then
/// every other node drops sn3 from its view and refuses its packets, and a host that
/// tries sn3 first refuses it and logs in through another.
#[actix_rt::test]
async fn a_revoked_super_node_is_dropped_by_every_member_and_refused_by_hosts() {
    let _serial = one_at_a_time().await;
    let t = common::start(3, |c| {
        c.supernode.probe_period_ms = 300;
        c.supernode.revocation.fetch_interval_secs = 3600;
        c.supernode.revocation.gossip_interval_ms = 200;
    })
    .await;
    t.converge(3).await;
    let nodes = t.net.nodes();
    let sn3 = nodes[2].identity.key.public().id();
    let sn3_name = t.node(2);
    let node = |i: usize| format!("node=\"{}\"", nodes[i].identity.name);
    let lists = "confab_revocation_lists_total";
    let m = t.metrics().await;
    let revoked_before =
        [0, 1].map(|i| t.metric(&m, "confab_cluster_packets_rejected_total", &[&node(i), "reason=\"revoked\""]));
    let adopted = |m: &str, i: usize, source: &str| {
        t.metric(m, lists, &[&node(i), &format!("source=\"{source}\""), "outcome=\"adopted\""])
    };
    let adopted_before = [adopted(&m, 0, "login_server"), adopted(&m, 1, "gossip"), adopted(&m, 1, "login_server")];
    assert!(nodes.iter().all(|n| n.identity.trusted.revoked().version() == 0), "no list anywhere yet");

    // Bob is connected to sn3 before it is revoked; his host checks the list at each
    // presence refresh (every second here).
    let mut sb = t.settings();
    sb.ladder.bootstrap = t.net.info.supernodes.iter().rev().map(|n| n.udp).collect();
    sb.presence_refresh = Duration::from_secs(1);
    let bob_home = t.home("bob");
    confab::host::register(&sb, &bob_home, "bob", PW).await.unwrap();
    let mut bob = confab::host::login(&sb, &bob_home, "bob", PW).await.unwrap();
    assert_eq!(bob.report.supernode, sn3_name);

    // Every node has made its first fetch (nothing to revoke yet): from here on only sn1
    // is asked to fetch again.
    common::wait_for("every node's first fetch", Duration::from_secs(15), async || {
        let m = t.metrics().await;
        (0..3).all(|i| t.metric(&m, lists, &[&node(i), "source=\"login_server\"", "outcome=\"current\""]) >= 1.0)
    })
    .await;

    // The operator's command, as `confab revoke sn3.cred` runs it on the login server.
    let mut cfg = confab::config::Config::default();
    cfg.login_server.database = t.net.info.data.join("accounts.sqlite").into();
    let cred_file = t.net.info.data.join(format!("{sn3_name}.cred"));
    let target =
        confab::login::revocations::resolve(cred_file.to_str().unwrap(), CredentialKind::SuperNode, "", &cfg).unwrap();
    let (entry, version) = confab::login::revocations::revoke(&cfg.login_server, &target, confab::unix_now()).unwrap();
    assert_eq!((entry.key, entry.kind, entry.subject.as_str()), (sn3, CredentialKind::SuperNode, sn3_name.as_str()));

    let started = std::time::Instant::now();
    nodes[0].revocations.as_ref().expect("sn1 fetches revocations").fetch();
    common::wait_for("sn1 and sn2 drop sn3 from their views", Duration::from_secs(15), async || {
        nodes[..2].iter().all(|n| n.members().len() == 2 && n.members().iter().all(|m| m.node != Some(sn3.0)))
    })
    .await;
    let dropped_in = started.elapsed();
    assert!(nodes[..2].iter().all(|n| n.identity.trusted.revoked().version() == version));
    let m = t.metrics().await;
    assert_eq!(adopted(&m, 0, "login_server"), adopted_before[0] + 1.0, "sn1 fetched it");
    assert_eq!(adopted(&m, 1, "gossip"), adopted_before[1] + 1.0, "sn2 got it by gossip");
    assert_eq!(adopted(&m, 1, "login_server"), adopted_before[2], "sn2 never asked the login server");
    assert_eq!(t.metric(&m, "confab_revocation_list_version", &[&node(1)]), version as f64);

    // sn3 still gossips to them (nobody told it): its packets are refused as revoked.
    common::wait_for("sn3's packets are refused as revoked", Duration::from_secs(10), async || {
        let m = t.metrics().await;
        [0, 1].iter().all(|&i| {
            t.metric(&m, "confab_cluster_packets_rejected_total", &[&node(i), "reason=\"revoked\""]) > revoked_before[i]
        })
    })
    .await;

    // Bob's host learns it from the login server and leaves sn3 for another super node.
    let left = common::expect_event(
        &mut bob,
        Duration::from_secs(10),
        "bob leaves sn3",
        |e| matches!(e, confab::host::buddies::Event::Reconnected { supernode } if *supernode != sn3_name),
    )
    .await;
    assert_ne!(bob.report.supernode, sn3_name);
    assert_eq!(sb.trusted.revoked().version(), version);

    // A host whose first bootstrap node is sn3 refuses it and logs in through another.
    let mut s = t.settings();
    s.ladder.bootstrap = t.net.info.supernodes.iter().rev().map(|n| n.udp).collect();
    let home = t.home("alice");
    confab::host::register(&s, &home, "alice", PW).await.unwrap();
    let alice = confab::host::login(&s, &home, "alice", PW).await.unwrap();
    assert_ne!(alice.report.supernode, sn3_name);
    let sn3_udp = t.net.info.supernodes[2].udp;
    let tried = alice.report.attempts.iter().find(|a| a.addr == sn3_udp).expect("sn3 was tried first");
    assert!(tried.outcome.contains("revoked"), "{}", tried.outcome);
    assert_eq!(s.trusted.revoked().version(), version, "the host got the list at login");

    // sn3 restarted (a new static key, a new certificate) cannot rejoin: its hellos are
    // refused, and nobody lets it back into the view.
    let before = t.metric(&t.metrics().await, "confab_cluster_packets_rejected_total", &["reason=\"revoked\""]);
    let mut net = t;
    net.net.kill_node(2);
    net.net.restart_node(2).await.unwrap();
    common::wait_for("the restarted sn3 is refused again", Duration::from_secs(10), async || {
        let m = net.metrics().await;
        net.metric(&m, "confab_cluster_packets_rejected_total", &["reason=\"revoked\""]) > before + 2.0
    })
    .await;
    let nodes = net.net.nodes();
    assert!(nodes[..2].iter().all(|n| n.members().iter().all(|m| m.node != Some(sn3.0))), "sn3 came back");
    eprintln!(
        "revocation: sn1 and sn2 dropped sn3 {dropped_in:?} after sn1 was asked to fetch; bob left it {left:?} later"
    );
    drop(bob);
    net.net.stop().await;
}

/// A login-key rotation in progress: the super nodes hold credentials from K1
/// (login-0); the login server signs with K2 (login-1) and keeps K1 as a previous key;
/// hosts and super nodes trust both. Hosts that still wrap their envelope for K1 log in
/// (with K2 credentials) and call each other. Once K1 leaves a host's trust list, the
/// super nodes' K1 credentials are refused.
#[actix_rt::test]
async fn login_key_rotation_keeps_the_network_working_and_k1_is_refused_once_untrusted() {
    let _serial = one_at_a_time().await;
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    std::fs::create_dir_all(&data).unwrap();
    for stem in ["login-0", "login-1"] {
        for ext in ["key.pem", "pub.pem"] {
            std::fs::copy(common::fixtures().join(format!("{stem}.{ext}")), data.join(format!("{stem}.{ext}")))
                .unwrap();
        }
    }
    let (k1, k2) = (common::key("login-0"), common::key("login-1"));
    let shutdown = tokio_util::sync::CancellationToken::new();

    // The login server: K2 current, K1 previous, as its configuration says.
    let mut cfg = confab::config::Config::default();
    cfg.login_server.key = data.join("login-1.key.pem").into();
    cfg.login_server.previous_keys = vec![data.join("login-0.key.pem").into()];
    cfg.login_server.database = data.join("accounts.sqlite").into();
    cfg.login_server.throttle = confab::login::guard::ThrottlePolicy::one_source_load();
    let service = std::sync::Arc::new(confab::network::login_service(&cfg.login_server).unwrap());
    assert_eq!(service.public_key(), k2.public());
    let login = confab::login::LoginServer::bind(
        service,
        "127.0.0.1:0".parse().unwrap(),
        None,
        cfg.login_server.connection_limits(),
    )
    .await
    .unwrap();
    let login_addr = login.addr();
    let running_login = actix_rt::spawn(login.run(shutdown.clone()));

    // Two super nodes with K1 credentials, trusting both keys.
    let sn = &mut cfg.supernode;
    sn.trusted_login_keys = vec![data.join("login-0.pub.pem").into(), data.join("login-1.pub.pem").into()];
    sn.handshakes_per_source_max = 64;
    sn.probe_period_ms = 300;
    sn.index.directory = vec![login_addr];
    let secret = data.join("cluster.secret");
    confab::keygen::generate_cluster_secret(&secret).unwrap();
    sn.cluster_secret = Some(secret.into());
    for i in 0..2 {
        let name = format!("sn{}", i + 1);
        let key = common::key(&format!("supernode-{i}"));
        std::fs::copy(common::fixtures().join(format!("supernode-{i}.key.pem")), data.join(format!("{name}.key.pem")))
            .unwrap();
        let cred = confab::keygen::certify_supernode(&k1, &name, key.public(), 30, confab::unix_now());
        confab::keygen::write_credential(&data.join(format!("{name}.cred")), &cred).unwrap();
        sn.nodes.push(confab::config::NodeConfig {
            name: name.clone(),
            key: data.join(format!("{name}.key.pem")).into(),
            credential: data.join(format!("{name}.cred")).into(),
            udp: "127.0.0.1:0".parse().unwrap(),
            tcp: "127.0.0.1:0".parse().unwrap(),
            probe_udp: None,
            fallback_tcp: vec![],
            public_ip: None,
            gossip: Some("127.0.0.1:0".parse().unwrap()),
            relay: None,
        });
    }
    let nodes = confab::network::start_supernodes(&cfg.supernode, &shutdown).await.unwrap();
    common::wait_for("the two super nodes see each other", Duration::from_secs(20), async || {
        nodes.iter().all(|n| n.shared.members().len() == 2)
    })
    .await;

    // Hosts trusting K1 first: their envelopes are wrapped for K1, which the server still opens.
    let settings = |keys: Vec<confab::crypto::PublicKey>, first: usize| confab::host::HostSettings {
        login_servers: vec![login_addr],
        trusted: confab::crypto::TrustedKeys::new(keys),
        ladder: confab::host::ladder::LadderConfig {
            bootstrap: nodes.iter().cycle().skip(first).take(2).map(|n| n.addrs.udp).collect(),
            fallback_ports: vec![],
            ..Default::default()
        },
        timeouts: confab::host::connect::Timeouts { step: Duration::from_millis(500), budget: Duration::from_secs(20) },
        login_timeout: Duration::from_secs(10),
        presence_refresh: Duration::from_secs(300),
        local_candidates: confab::config::LocalCandidates::Never,
    };
    let both = vec![k1.public().clone(), k2.public().clone()];
    let home = |name: &str, k: &str| {
        let d = dir.path().join("homes").join(name);
        let h = confab::host::home::Home::open(&d).unwrap();
        std::fs::copy(common::fixtures().join(format!("{k}.key.pem")), d.join("host.key.pem")).unwrap();
        h
    };
    let (alice_home, bob_home) = (home("alice", "host-0"), home("bob", "host-1"));
    let (sa, sb) = (settings(both.clone(), 0), settings(both.clone(), 1));
    confab::host::register(&sa, &alice_home, "alice", PW).await.unwrap();
    confab::host::register(&sb, &bob_home, "bob", PW).await.unwrap();
    // The credential comes from K2, for an envelope wrapped for K1.
    let servers = confab::host::account::LoginServers {
        addrs: vec![login_addr],
        trusted: confab::crypto::TrustedKeys::new(both.clone()),
        timeout: Duration::from_secs(10),
    };
    let keys = confab::crypto::password::derive("alice", PW);
    let user_keys = confab::crypto::user::UserKeys::derive(&keys.list).public();
    let li = confab::host::account::login(&servers, "alice", &keys.shared, &common::key("host-0"), "", user_keys)
        .await
        .unwrap();
    assert_eq!(li.credential.issuer, k2.public().id());

    let mut alice = confab::host::login(&sa, &alice_home, "alice", PW).await.unwrap();
    let mut bob = confab::host::login(&sb, &bob_home, "bob", PW).await.unwrap();
    assert_ne!(alice.report.supernode, bob.report.supernode, "the call crosses super nodes");
    let call = alice.call("bob").await.unwrap();
    common::expect_event(&mut bob, Duration::from_secs(5), "bob's phone rings", |e| {
        matches!(e, confab::host::buddies::Event::Call { state: confab::host::calls::CallState::Ringing, .. })
    })
    .await;
    alice.end_call(call).await;

    // K1 leaves a host's trust list: the super nodes' K1 credentials are refused.
    let s2 = settings(vec![k2.public().clone()], 0);
    let carol_home = home("carol", "host-2");
    confab::host::register(&s2, &carol_home, "carol", PW).await.unwrap();
    let e = match confab::host::login(&s2, &carol_home, "carol", PW).await {
        Err(e) => e.to_string(),
        Ok(_) => panic!("a host that trusts only K2 logged in through a super node certified by K1"),
    };
    assert!(e.contains("untrusted"), "{e}");

    shutdown.cancel();
    for n in nodes {
        n.stopped().await;
    }
    let _ = running_login.await;
}

/// A host key revoked at the login server: the super node that holds its session lets it
/// go once the list arrives, and the login server certifies the key no more.
#[actix_rt::test]
async fn a_revoked_host_is_let_go_and_gets_no_new_credential() {
    let _serial = one_at_a_time().await;
    let t = common::start(1, |c| c.supernode.revocation.fetch_interval_secs = 3600).await;
    t.converge(1).await;
    let s = t.settings();
    let home = t.home("alice");
    confab::host::register(&s, &home, "alice", PW).await.unwrap();
    let alice = confab::host::login(&s, &home, "alice", PW).await.unwrap();
    let sn1 = &t.net.nodes()[0];
    assert_eq!(sn1.hosts_connected(), 1);
    let revoked = "confab_supernode_hosts_revoked_total";
    let before = t.metric(&t.metrics().await, revoked, &[]);

    let mut cfg = confab::config::Config::default();
    cfg.login_server.database = t.net.info.data.join("accounts.sqlite").into();
    // `t.home("alice")` holds the fixture key host-2.
    let key = common::key("host-2").public().id();
    let target = confab::login::revocations::resolve(&key.to_string(), CredentialKind::Host, "alice", &cfg).unwrap();
    confab::login::revocations::revoke(&cfg.login_server, &target, confab::unix_now()).unwrap();
    sn1.revocations.as_ref().unwrap().fetch();
    common::wait_for("sn1 lets alice's host go", Duration::from_secs(10), async || sn1.hosts_connected() == 0).await;
    assert_eq!(t.metric(&t.metrics().await, revoked, &[]), before + 1.0);
    drop(alice); // its port P, for the next login

    let e = match confab::host::login(&s, &home, "alice", PW).await {
        Err(e) => e,
        Ok(_) => panic!("a revoked host key logged in again"),
    };
    assert!(
        matches!(&e, confab::host::HostError::Account(a) if a.code() == Some(confab::wire::ErrorCode::Revoked)),
        "{e}"
    );
    t.net.stop().await;
}

/// A stranger (127.0.0.2) asking the login server for the revocation list: a query with
/// no credential, and one with a real super node's credential but signed with another
/// key, are both refused with a short error, never more bytes than were sent, and a
/// refusal counter counts them. The list itself goes only to its certified holders.
#[actix_rt::test]
async fn a_stranger_gets_no_revocation_list_and_no_more_bytes_than_it_sent() {
    use confab::wire::frame;
    use confab::wire::message::{MessageKind, RevocationQuery};
    let _serial = one_at_a_time().await;
    let t = common::start(1, |_| {}).await;
    let login = t.net.info.login_server;
    let mut cfg = confab::config::Config::default();
    cfg.login_server.database = t.net.info.data.join("accounts.sqlite").into();
    let target = confab::login::revocations::Target::Key {
        key: confab::crypto::KeyId([9; 8]),
        kind: CredentialKind::SuperNode,
        subject: "gone".into(),
    };
    confab::login::revocations::revoke(&cfg.login_server, &target, confab::unix_now()).unwrap();
    let sn1_cred = confab::keygen::read_credential(&t.net.info.data.join(format!("{}.cred", t.node(0)))).unwrap();
    let now = confab::unix_now();
    let mut stolen = RevocationQuery { have: 0, timestamp: now, credential: sn1_cred.encode(), signature: vec![] };
    stolen.signature = common::key("host-0").sign_pss(&stolen.signed_message(login));
    let empty = RevocationQuery { have: 0, timestamp: now, credential: vec![], signature: vec![0; 256] };
    let queries_metric = "confab_login_revocation_queries_total";
    let refused =
        |m: &str| ["malformed", "bad_signature"].map(|o| t.metric(m, queries_metric, &[&format!("outcome=\"{o}\"")]));
    let before = refused(&t.metrics().await);
    let (mut sent, mut got) = (0, 0);
    for q in [empty, stolen] {
        let f = frame::encode_plain(login, MessageKind::RevocationQuery, 0, &q.encode());
        let s = tokio::net::TcpSocket::new_v4().unwrap();
        s.bind("127.0.0.2:0".parse().unwrap()).unwrap();
        let mut stream = s.connect(login).await.unwrap();
        confab::net::tcp::write_frame(&mut stream, &f).await.unwrap();
        let answer = tokio::time::timeout(Duration::from_secs(5), confab::net::tcp::read_frame(&mut stream))
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        let raw = frame::decode(login, &answer).unwrap();
        assert_eq!(raw.header.kind, MessageKind::Error, "a stranger gets no list");
        assert!(answer.len() < f.len(), "{} bytes answered to {}", answer.len(), f.len());
        (sent, got) = (sent + f.len(), got + answer.len());
    }
    let after = refused(&t.metrics().await);
    assert_eq!(after, [before[0] + 1.0, before[1] + 1.0], "counted as malformed, then bad_signature");
    // A super node's own signed query does get the list, larger than its question.
    let id = &t.net.nodes()[0].identity;
    let f = confab::supernode::revocation::query(id, login, 0, confab::unix_now());
    let mut stream = tokio::net::TcpStream::connect(login).await.unwrap();
    confab::net::tcp::write_frame(&mut stream, &f).await.unwrap();
    let answer = confab::net::tcp::read_frame(&mut stream).await.unwrap().unwrap();
    let raw = frame::decode(login, &answer).unwrap();
    assert_eq!(raw.header.kind, MessageKind::RevocationReply);
    let list = confab::crypto::RevocationList::decode(raw.payload).unwrap();
    assert_eq!(list.entries.len(), 1);
    eprintln!(
        "revocation query from a stranger: {sent} bytes in, {got} out ({:.2}); a super node's: {} in, {} out",
        got as f64 / sent as f64,
        f.len(),
        answer.len()
    );
    t.net.stop().await;
}

/// A measurement, run by hand: how long a list fetched by one node of `N` takes to reach
/// every other member by gossip alone (`cargo test --test revocation spread_time --
/// --ignored --nocapture`).
#[actix_rt::test]
#[ignore = "a measurement: starts a larger cluster"]
async fn spread_time_across_a_larger_cluster() {
    const N: usize = 10;
    let _serial = one_at_a_time().await;
    let t = common::start(N, |c| {
        c.supernode.probe_period_ms = 500;
        c.supernode.revocation.fetch_interval_secs = 3600;
        c.supernode.revocation.gossip_interval_ms = 1000;
    })
    .await;
    t.converge(N).await;
    let mut cfg = confab::config::Config::default();
    cfg.login_server.database = t.net.info.data.join("accounts.sqlite").into();
    let target = confab::login::revocations::Target::Key {
        key: confab::crypto::KeyId([7; 8]),
        kind: CredentialKind::Host,
        subject: "nobody".into(),
    };
    let (_, version) = confab::login::revocations::revoke(&cfg.login_server, &target, confab::unix_now()).unwrap();
    let nodes = t.net.nodes();
    let started = std::time::Instant::now();
    nodes[0].revocations.as_ref().unwrap().fetch();
    let mut reached = vec![None; N];
    while reached.iter().any(Option::is_none) {
        assert!(started.elapsed() < Duration::from_secs(60), "the list did not reach every node");
        for (i, n) in nodes.iter().enumerate() {
            if reached[i].is_none() && n.identity.trusted.revoked().version() == version {
                reached[i] = Some(started.elapsed());
            }
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let mut times: Vec<Duration> = reached.into_iter().flatten().collect();
    times.sort();
    eprintln!(
        "revocation spread over {N} nodes, gossip every 1 s: first {:?}, median {:?}, last {:?}",
        times[0],
        times[N / 2],
        times[N - 1]
    );
    t.net.stop().await;
}
