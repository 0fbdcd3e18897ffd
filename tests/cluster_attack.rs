//! Attacks on the cluster port from a second loopback address (127.0.0.2): captured index
//! packets replayed, a node's id claimed without its key, and a stranger's packets. Each
//! is refused and counted on the attacked node, nothing is answered to the attacker, and
//! the index keeps working.

mod common;

use confab::cluster::cert::{ClusterCert, StaticSecret};
use confab::cluster::gossip::{Channel, ClusterKey, Header, Hello, PairKey};
use confab::index::rpc::IndexRpc;
use confab::supernode::index_router::SenderOf;
use std::time::Duration;
use tokio::net::UdpSocket;

const PW: &str = "correct horse battery";
const REJECTED: &str = "confab_cluster_packets_rejected_total";

/// Polls the metrics until `name{labels}` has grown by at least `by` over `before`.
async fn grows(t: &common::TestNet, name: &str, labels: &[&str], before: f64, by: f64) -> f64 {
    let mut now = before;
    let what = format!("{name}{labels:?} to grow by {by} from {before}");
    common::wait_for(&what, Duration::from_secs(10), async || {
        now = t.metric(&t.metrics().await, name, labels);
        now >= before + by
    })
    .await;
    now
}

/// Bytes waiting on the attacker's socket (it never blocks).
fn pending_bytes(s: &UdpSocket) -> usize {
    let mut buf = vec![0u8; 65536];
    let mut total = 0;
    for _ in 0..10_000 {
        match s.try_recv_from(&mut buf) {
            Ok((n, _)) => total += n,
            Err(_) => break,
        }
    }
    total
}

#[actix_rt::test]
async fn replays_and_forged_senders_are_refused_counted_and_never_answered() {
    let t = common::start(3, |c| c.supernode.probe_period_ms = 500).await;
    t.converge(3).await;
    let nodes = t.net.nodes();
    let (a, b) = (nodes[0], nodes[1]);
    let b_name = b.identity.name.clone();
    let b_id = b.identity.key.public().id();
    let member = |id: confab::crypto::KeyId| a.members().into_iter().find(|m| m.node == Some(id.0)).unwrap();
    let b_gossip = member(b_id).gossip;
    let a_gossip = member(a.identity.key.public().id()).gossip;
    let node = format!("node=\"{b_name}\"");
    let reason = |r: &str| format!("reason=\"{r}\"");

    // Something in the index, so a Digests against b has something to answer with.
    let mut s = t.settings();
    let home = t.home("alice");
    confab::host::register(&s, &home, "alice", PW).await.unwrap();
    let _alice = confab::host::login(&s, &home, "alice", PW).await.unwrap();

    let attacker = UdpSocket::bind("127.0.0.2:0").await.unwrap();
    let (mut sent, mut answered) = (0usize, 0usize);
    let (mut replayed_in, mut forged_in) = (0usize, 0usize);

    // 1. Legitimate packets sealed by a for b: a Store (answered with a StoreAck) and a
    //    Digests against every slot (answered with the slot's entries), delivered once
    //    from a's socket, then replayed from 127.0.0.2 and again from a's own address.
    let sender = a.index.clone().unwrap().send(SenderOf).await.unwrap();
    let digests = IndexRpc::Digests { slots: (0..32).map(|s| (s, [0xab; 32])).collect() };
    let store = IndexRpc::Store { req: 7, key: "alice".into(), entry: vec![1, 2, 3] };
    let accepted = "confab_cluster_index_packets_total";
    for rpc in [store, digests] {
        let packet = sender.seal(b_id, b_gossip, &rpc.encode()).expect("a holds b's certificate");
        let before = t.metric(&t.metrics().await, accepted, &[&node, "outcome=\"accepted\""]);
        assert!(sender.send_raw(b_gossip, &packet));
        grows(&t, accepted, &[&node, "outcome=\"accepted\""], before, 1.0).await;

        let before = t.metric(&t.metrics().await, REJECTED, &[&node, &reason("replayed")]);
        attacker.send_to(&packet, b_gossip).await.unwrap();
        sent += packet.len();
        replayed_in += packet.len();
        assert!(sender.send_raw(b_gossip, &packet));
        grows(&t, REJECTED, &[&node, &reason("replayed")], before, 2.0).await;
        answered += pending_bytes(&attacker);
    }
    // A packet a sealed but never sent, sent first from 127.0.0.2: refused for its
    // address, and it does not use up the counter (a's own copy still arrives).
    let fresh = sender.seal(b_id, b_gossip, &IndexRpc::StoreAck { req: 1, held: true }.encode()).unwrap();
    let before = t.metric(&t.metrics().await, REJECTED, &[&node, &reason("wrong_address")]);
    attacker.send_to(&fresh, b_gossip).await.unwrap();
    sent += fresh.len();
    replayed_in += fresh.len();
    grows(&t, REJECTED, &[&node, &reason("wrong_address")], before, 1.0).await;
    let before = t.metric(&t.metrics().await, accepted, &[&node, "outcome=\"accepted\""]);
    assert!(sender.send_raw(b_gossip, &fresh));
    grows(&t, accepted, &[&node, "outcome=\"accepted\""], before, 1.0).await;

    // 2. The cluster secret without a's key: a certificate for a's credential signed by
    //    another key, from the attacker's address and from a's; a data packet naming a.
    let secret = confab::keygen::read_cluster_secret(&t.net.info.data.join("cluster.secret")).unwrap();
    let key = ClusterKey::from_secret(&secret);
    let forger = common::key("host-0");
    let mine = StaticSecret::generate();
    let now_ms = confab::cluster::now_ms();
    let here = attacker.local_addr().unwrap();
    for claimed in [here, a_gossip] {
        let cert =
            ClusterCert::issue(&forger, a.identity.credential.clone(), mine.public(), (claimed, None, None), now_ms);
        let hello = key.seal_hello(&Hello { want_reply: true, sent_ms: now_ms, cert: cert.encode() }).unwrap();
        let why = if claimed == here { "bad_certificate" } else { "wrong_address" };
        let before = t.metric(&t.metrics().await, REJECTED, &[&node, &reason(why)]);
        attacker.send_to(&hello, b_gossip).await.unwrap();
        sent += hello.len();
        forged_in += hello.len();
        grows(&t, REJECTED, &[&node, &reason(why)], before, 1.0).await;
    }
    let a_id = a.identity.key.public().id();
    let guess = PairKey::new(&[7; 32], a_id.0, b_id.0);
    let forged = guess.seal(
        Header { channel: Channel::Index, sender: a_id.0, counter: u64::MAX },
        &IndexRpc::Fetch { req: 1, key: "alice".into() }.encode(),
    );
    let before = t.metric(&t.metrics().await, REJECTED, &[&node, &reason("bad_mac")]);
    attacker.send_to(&forged, b_gossip).await.unwrap();
    sent += forged.len();
    forged_in += forged.len();
    grows(&t, REJECTED, &[&node, &reason("bad_mac")], before, 1.0).await;

    // 3. A stranger (no cluster secret): noise, a hello under another key, the old
    //    format. What it elicits, in bytes out per byte in, is the figure in
    //    docs/security.md.
    let stranger = ClusterKey::from_secret(&[0x5a; 32]);
    let cert = ClusterCert::issue(&forger, a.identity.credential.clone(), mine.public(), (here, None, None), now_ms);
    let strange: Vec<Vec<u8>> = vec![
        vec![0u8; 64],
        b"CFI1 an index packet in the old format, sealed under the shared key".to_vec(),
        b"CFG2 too short".to_vec(),
        stranger.seal_hello(&Hello { want_reply: true, sent_ms: now_ms, cert: cert.encode() }).unwrap(),
        forged.clone(),
    ];
    let before = t.metric(&t.metrics().await, REJECTED, &[&node]);
    let mut stranger_in = 0;
    for p in &strange {
        attacker.send_to(p, b_gossip).await.unwrap();
        stranger_in += p.len();
    }
    grows(&t, REJECTED, &[&node], before, strange.len() as f64).await;
    sent += stranger_in;

    // The index still works: bob finds alice through another node.
    s.ladder.bootstrap.rotate_left(2);
    let home = t.home("bob");
    confab::host::register(&s, &home, "bob", PW).await.unwrap();
    let mut bob = confab::host::login(&s, &home, "bob", PW).await.unwrap();
    let found = bob.find("alice").await.unwrap().expect("alice is still found");
    assert_eq!(found.user, "alice");

    answered += pending_bytes(&attacker);
    eprintln!(
        "bytes in to {b_name}'s gossip port from 127.0.0.2: replayed or misaddressed {replayed_in}, \
         forged identity {forged_in}, stranger {stranger_in}, all {sent}; bytes out: {answered}"
    );
    assert_eq!(answered, 0, "nothing is answered to 127.0.0.2");
}
