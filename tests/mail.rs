//! Offline messages over real sockets: a message stored at a slot's replicas moves with
//! the slot when the super nodes holding it are replaced, and reaches its recipient
//! exactly once; a replica that was down while a message was stored, or that a store
//! never reached, has it after one anti-entropy round. The super nodes are driven by the
//! messages a host session hands their index router (`SubmitMail`, `FetchMail`,
//! `AckMail`, carrying the wire `MailSubmit`, `MailFetch` and `MailAck`), and by an
//! index request sealed as a member would send it.

mod common;

use confab::index::NodeId;
use confab::index::mail::{Mail, MailId};
use confab::index::rpc::{IndexRpc, MailRpc};
use confab::supernode::index_router::{AckMail, FetchMail, HoldsMail, IndexRouter, ReplicasOf, SenderOf, SubmitMail};
use confab::wire::mail::{MailAck, MailBatch, MailFetch, MailSubmit, MailSubmitReply};
use std::collections::BTreeSet;
use std::time::{Duration, Instant};
use tokio::sync::oneshot;

const NODES: usize = 6;
const ANTI_ENTROPY_SECS: u64 = 1;

fn router(t: &common::TestNet, i: usize) -> actix::Addr<IndexRouter> {
    t.net.nodes()[i].index.clone().expect("a super node of the cluster has an index")
}

fn id_of(t: &common::TestNet, i: usize) -> NodeId {
    t.net.nodes()[i].identity.key.public().id()
}

fn ids(t: &common::TestNet, nodes: &[usize]) -> BTreeSet<NodeId> {
    nodes.iter().map(|i| id_of(t, *i)).collect()
}

async fn replicas(t: &common::TestNet, i: usize, user: &str) -> BTreeSet<NodeId> {
    router(t, i).send(ReplicasOf(user.into())).await.unwrap().into_iter().collect()
}

async fn holds(t: &common::TestNet, i: usize, user: &str, id: MailId) -> bool {
    router(t, i).send(HoldsMail { user: user.into(), id }).await.unwrap()
}

async fn submit(t: &common::TestNet, i: usize, to: &str, id: MailId, sealed: &[u8]) -> MailSubmitReply {
    let (tx, rx) = oneshot::channel();
    let submit = MailSubmit { req: 1, id, to: to.into(), sealed: sealed.to_vec() };
    router(t, i).send(SubmitMail { from: "alice".into(), submit, reply: tx }).await.unwrap();
    rx.await.unwrap()
}

async fn fetch(t: &common::TestNet, i: usize, user: &str, device: [u8; 8]) -> MailBatch {
    let (tx, rx) = oneshot::channel();
    let fetch = MailFetch { req: 2, device, after: None };
    router(t, i).send(FetchMail { user: user.into(), fetch, reply: tx }).await.unwrap();
    rx.await.unwrap()
}

/// Waits until the live nodes `alive` each see exactly them as members, and each maps
/// `user`'s slot to `want`.
async fn settle(t: &common::TestNet, alive: &[usize], user: &str, want: &BTreeSet<NodeId>) {
    common::wait_for("views and slot maps follow the membership", Duration::from_secs(30), async || {
        for i in alive {
            if t.net.nodes()[*i].members().len() != alive.len() || replicas(t, *i, user).await != *want {
                return false;
            }
        }
        true
    })
    .await;
}

/// Sum of a counter over this network's nodes.
async fn total(t: &common::TestNet, name: &str, labels: &[&str]) -> f64 {
    t.metric(&t.metrics().await, name, labels)
}

#[actix_rt::test]
async fn stored_mail_moves_with_its_slot_and_arrives_once() {
    let mut t = common::start(NODES, |c| {
        c.supernode.probe_period_ms = 500;
        c.supernode.index.replicas = 3;
        c.supernode.index.slots = 8;
        c.supernode.index.anti_entropy_secs = ANTI_ENTROPY_SECS;
    })
    .await;
    let all: Vec<usize> = (0..NODES).collect();
    common::wait_for("the cluster converges", Duration::from_secs(30), async || {
        all.iter().all(|i| t.net.nodes()[*i].members().len() == NODES)
    })
    .await;
    let everyone = replicas(&t, 0, "bob").await;
    settle(&t, &all, "bob", &everyone).await;
    // bob's replicas with every node up, R6; the holders at submit time, S, share one of
    // them; the nodes down at submit time, K, are the other two and one more.
    let r6: Vec<usize> = all.iter().copied().filter(|i| everyone.contains(&id_of(&t, *i))).collect();
    let rest: Vec<usize> = all.iter().copied().filter(|i| !r6.contains(i)).collect();
    assert_eq!((r6.len(), rest.len()), (3, 3));
    let k = [r6[0], r6[1], rest[0]];
    let s = [r6[2], rest[1], rest[2]];
    let sent_before = total(&t, "confab_mail_sync_items_total", &["direction=\"sent\""]).await;

    for i in k {
        t.net.kill_node(i);
    }
    settle(&t, &s, "bob", &ids(&t, &s)).await;
    let id: MailId = *b"offline-message1";
    let sealed = vec![0x5a; 700];
    let reply = submit(&t, s[0], "bob", id, &sealed).await;
    assert_eq!(reply.code, 0, "{reply:?}");
    assert!(reply.replicas >= 2, "{reply:?}");
    common::wait_for("every holder has the message", Duration::from_secs(5), async || {
        for i in s {
            if !holds(&t, i, "bob", id).await {
                return false;
            }
        }
        true
    })
    .await;

    // The nodes that were down come back: bob's slot moves to R6, two of whose replicas
    // never saw the message.
    let clock = Instant::now();
    for i in k {
        t.net.restart_node(i).await.unwrap();
    }
    settle(&t, &all, "bob", &everyone).await;
    let former: Vec<usize> = s.iter().copied().filter(|i| !r6.contains(i)).collect();
    common::wait_for("the new replicas have it and the former ones let it go", Duration::from_secs(20), async || {
        for i in &r6 {
            if !holds(&t, *i, "bob", id).await {
                return false;
            }
        }
        for i in &former {
            if holds(&t, *i, "bob", id).await {
                return false;
            }
        }
        true
    })
    .await;
    eprintln!("the slot's mail moved to its new replicas in {:?} after the restarts", clock.elapsed());
    assert!(total(&t, "confab_mail_sync_items_total", &["direction=\"sent\""]).await > sent_before);
    assert!(total(&t, "confab_mail_handovers_total", &["outcome=\"confirmed\""]).await >= former.len() as f64);

    // Every node that held the message at submit time goes: only K is left, and the one
    // of K outside R6 becomes a replica of bob's slot in turn.
    for i in s {
        t.net.kill_node(i);
    }
    settle(&t, &k, "bob", &ids(&t, &k)).await;
    common::wait_for("the last new replica has it", Duration::from_secs(10), async || holds(&t, k[2], "bob", id).await)
        .await;

    // bob logs in on a device and fetches: the message, once, at every replica.
    let device = [9; 8];
    let batch = fetch(&t, k[0], "bob", device).await;
    assert_eq!(batch.code, 0);
    assert_eq!(batch.messages, [(id, sealed.clone())], "exactly the message, once");
    assert!(!batch.more);
    router(&t, k[2])
        .send(AckMail { user: "bob".into(), ack: MailAck { req: 3, device, ids: vec![id] } })
        .await
        .unwrap();
    common::wait_for("acknowledged at every replica", Duration::from_secs(5), async || {
        for i in k {
            if !fetch(&t, i, "bob", device).await.messages.is_empty() {
                return false;
            }
        }
        true
    })
    .await;
    for i in k {
        assert!(!holds(&t, i, "bob", id).await, "deleted once its only device acknowledged it");
    }

    // A replica down while a message is stored has it one anti-entropy round after it is
    // back.
    let (up, down) = ([k[0], k[1]], k[2]);
    t.net.kill_node(down);
    settle(&t, &up, "carol", &ids(&t, &up)).await;
    let id2: MailId = *b"offline-message2";
    let reply = submit(&t, up[0], "carol", id2, b"sealed for carol").await;
    assert_eq!((reply.code, reply.replicas), (0, 2), "{reply:?}");
    t.net.restart_node(down).await.unwrap();
    settle(&t, &k, "carol", &ids(&t, &k)).await;
    let clock = Instant::now();
    let round = Duration::from_secs(ANTI_ENTROPY_SECS * 2 + 1);
    common::wait_for("the replica that was down has it", round, async || holds(&t, down, "carol", id2).await).await;
    eprintln!("the restarted replica had the message {:?} after its slot map was back", clock.elapsed());

    // A store that reached one replica only (the sender's packets to the others lost):
    // the others have it one round later, with no change of the view.
    let id3: MailId = *b"offline-message3";
    let now_ms = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as u64;
    let mail = Mail {
        id: id3,
        to: "dave".into(),
        from: "alice".into(),
        stored_at_ms: now_ms,
        expires_at_ms: now_ms + 3_600_000,
        sealed: b"sealed for dave".to_vec(),
    };
    let store = IndexRpc::Mail(MailRpc::Store { req: 99, mail }).encode();
    let received_before = total(&t, "confab_mail_sync_items_total", &["direction=\"received\""]).await;
    let gossip = t.net.info.supernodes[k[1]].gossip.unwrap();
    assert!(router(&t, k[0]).send(SenderOf).await.unwrap().send(id_of(&t, k[1]), gossip, &store));
    common::wait_for("the one replica has it", Duration::from_secs(2), async || holds(&t, k[1], "dave", id3).await)
        .await;
    let clock = Instant::now();
    common::wait_for("the others have it one round later", round, async || {
        holds(&t, k[0], "dave", id3).await && holds(&t, k[2], "dave", id3).await
    })
    .await;
    eprintln!("the replicas a store missed had it {:?} later", clock.elapsed());
    assert!(total(&t, "confab_mail_sync_items_total", &["direction=\"received\""]).await >= received_before + 2.0);
    t.net.stop().await;
}
