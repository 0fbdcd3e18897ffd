//! A few nodes on a virtual clock with real slot stores and real signed entries: the
//! node's decisions, with nothing but a queue between them.

use super::*;
use crate::crypto::KeyId;
use crate::index::entry::tests::{entry, trusted};
use crate::index::rpc::DIGESTS_PER_PACKET;
use crate::index::{EntryBody, Status, lookup::LookupConfig};
use std::collections::BTreeMap;

const T0: u64 = 1_700_000_000_000;

#[derive(Debug)]
enum Ev {
    Deliver { to: NodeId, from: NodeId, rpc: IndexRpc },
    Timer { at: NodeId, timer: Timer },
}

struct Harness {
    now: u64,
    seq: u64,
    queue: BTreeMap<(u64, u64), Ev>,
    nodes: BTreeMap<NodeId, (Node, LocalStores)>,
    found: BTreeMap<(NodeId, u64), FindResult>,
    searched: BTreeMap<(NodeId, u64), Vec<Entry>>,
    asked_directory: Vec<(NodeId, u64, String)>,
    /// Stores dropped on the way to these members (a lost packet, a crashed write).
    drop_stores_to: Vec<NodeId>,
    busy: bool,
    /// Every entry passes its check (for stand-in entries made in bulk without signing).
    trust_all: bool,
    sent: u64,
    /// Requests sent, by sender.
    sent_by: BTreeMap<NodeId, u64>,
    /// Store requests sent (written, replicated or repaired), and those dropped.
    stores_sent: u64,
    stores_dropped: u64,
    /// Digests packets sent: (from, to, slots).
    digests_sent: Vec<(NodeId, NodeId, Vec<u32>)>,
}

fn id(i: u8) -> NodeId {
    KeyId([i; 8])
}

fn config() -> IndexConfig {
    IndexConfig { slots: 64, replicas: 3, lookup: LookupConfig::default(), ..IndexConfig::default() }
}

impl Harness {
    fn new(n: u8, cfg: IndexConfig) -> Self {
        let ids: Vec<NodeId> = (0..n).map(id).collect();
        let mut h = Harness {
            now: T0,
            seq: 0,
            queue: BTreeMap::new(),
            nodes: BTreeMap::new(),
            found: BTreeMap::new(),
            searched: BTreeMap::new(),
            asked_directory: Vec::new(),
            drop_stores_to: Vec::new(),
            busy: false,
            trust_all: false,
            sent: 0,
            sent_by: BTreeMap::new(),
            stores_sent: 0,
            stores_dropped: 0,
            digests_sent: Vec::new(),
        };
        for i in &ids {
            let mut node = Node::new(format!("sn{}", i.0[0]), *i, cfg.clone(), u64::from(i.0[0]));
            node.start(T0);
            h.nodes.insert(*i, (node, LocalStores::new(10_000, 72 * 3600)));
        }
        let view = SharedView::new(&ids);
        for i in &ids {
            h.with(*i, |n| n.view(T0, view.clone()));
        }
        h
    }

    fn push(&mut self, at: u64, ev: Ev) {
        self.seq += 1;
        self.queue.insert((at, self.seq), ev);
    }

    /// Runs `f` on node `at`, then carries out what it asked for.
    fn with<R>(&mut self, at: NodeId, f: impl FnOnce(&mut Node) -> R) -> R {
        let r = f(&mut self.nodes.get_mut(&at).expect("a node").0);
        self.pump(at);
        r
    }

    fn pump(&mut self, at: NodeId) {
        let now = self.now;
        let (busy, trust_all) = (self.busy, self.trust_all);
        let (node, stores) = self.nodes.get_mut(&at).expect("a node");
        let check = |job: &Verify| {
            if busy && matches!(job.purpose, VerifyFor::Store { .. }) {
                return Checked::Busy;
            }
            if trust_all {
                return Checked::Valid;
            }
            match job.entry.verify(&trusted(), now) {
                Ok(_) => Checked::Valid,
                Err(e) => Checked::Invalid(e.to_string()),
            }
        };
        for out in stores.drive(now, node, check, Arc::new) {
            match out {
                Output::Send { to, rpc } => {
                    self.sent += 1;
                    *self.sent_by.entry(at).or_default() += 1;
                    self.stores_sent += u64::from(matches!(rpc, IndexRpc::Store { .. }));
                    if let IndexRpc::Digests { slots } = &rpc {
                        self.digests_sent.push((at, to, slots.iter().map(|(s, _)| *s).collect()));
                    }
                    if matches!(rpc, IndexRpc::Store { .. }) && self.drop_stores_to.contains(&to) {
                        self.stores_dropped += 1;
                        continue;
                    }
                    self.push(now + 20, Ev::Deliver { to, from: at, rpc });
                }
                Output::Schedule { at_ms, timer } => self.push(at_ms.max(now), Ev::Timer { at, timer }),
                Output::AskDirectory { id, user } => self.asked_directory.push((at, id, user)),
                Output::Found { id, result } => {
                    self.found.insert((at, id), result);
                }
                Output::Searched { id, entries } => {
                    self.searched.insert((at, id), entries);
                }
                other => panic!("the local stores carry out {other:?}"),
            }
        }
    }

    /// Puts `n` keys of `slot` straight into the stores of `at`, the same stand-in entry
    /// (unsigned, a real entry's size) for each key at every one; returns the keys.
    fn seed_slot(&mut self, slot: Slot, n: usize, at: &[NodeId]) -> Vec<String> {
        let template = entry("bob", 1, T0 - 60_000, Status::Online);
        let first = at[0];
        let keys: Vec<String> =
            (0..).map(|i| format!("user{i}")).filter(|k| self.nodes[&first].0.slot_of(k) == slot).take(n).collect();
        for k in &keys {
            let body = EntryBody { user: k.clone(), ..(*template).clone() };
            let e = Arc::new(Entry::unsigned(body, 1, vec![7; 256]));
            for i in at {
                let (node, st) = self.nodes.get_mut(i).expect("a node");
                st.seed(node, slot, k, e.clone());
            }
        }
        keys
    }

    fn run_for(&mut self, ms: u64) {
        let until = self.now + ms;
        while let Some((&(t, seq), _)) = self.queue.iter().next() {
            if t > until {
                break;
            }
            let ev = self.queue.remove(&(t, seq)).expect("present");
            self.now = t;
            match ev {
                Ev::Deliver { to, from, rpc } => {
                    if self.nodes.contains_key(&to) {
                        self.with(to, |n| n.receive(t, from, rpc));
                    }
                }
                Ev::Timer { at, timer } => {
                    if self.nodes.contains_key(&at) {
                        self.with(at, |n| n.timer(t, timer));
                    }
                }
            }
        }
        self.now = until;
    }

    fn holders(&self, key: &str) -> Vec<NodeId> {
        self.nodes
            .iter()
            .filter(|(_, (n, st))| st.store(n.slot_of(key)).and_then(|s| s.get(key)).is_some())
            .map(|(i, _)| *i)
            .collect()
    }

    fn find(&mut self, at: NodeId, user: &str) -> FindResult {
        let now = self.now;
        let lookup = self.with(at, |n| n.find(now, user));
        for _ in 0..100 {
            if let Some(r) = self.found.remove(&(at, lookup)) {
                return r;
            }
            self.run_for(100);
        }
        panic!("lookup {lookup} of {user} at {at} never ended");
    }
}

#[test]
fn a_published_entry_reaches_its_replicas_and_is_found_from_anywhere_in_the_first_step() {
    let mut h = Harness::new(12, config());
    h.run_for(1000);
    let e = entry("alice", 1, T0, Status::Online);
    let replicas = h.with(id(0), |n| n.publish(T0, e.clone()));
    assert_eq!(replicas, 3);
    h.run_for(1000);
    let expected: Vec<NodeId> = {
        let n = &h.nodes[&id(0)].0;
        let mut r = n.map().replicas(n.slot_of("alice")).to_vec();
        r.sort();
        r
    };
    assert_eq!(h.holders("alice"), expected, "exactly the key's replicas hold it");
    for at in [1, 5, 11] {
        let r = h.find(id(at), "Alice");
        assert_eq!(r.entry.as_ref().map(|e| e.user.as_str()), Some("alice"));
        assert_eq!(r.stage, "step1");
        assert!(r.asked <= 4, "asked {}", r.asked);
    }
}

#[test]
fn a_miss_asks_at_most_the_widest_stage_then_the_directory() {
    let mut cfg = config();
    cfg.directory = vec!["198.18.0.9:443".parse().unwrap()];
    let mut h = Harness::new(40, cfg);
    h.run_for(1000);
    let sent = h.sent;
    let now = h.now;
    let lookup = h.with(id(3), |n| n.find(now, "nobody"));
    h.run_for(5000);
    assert!(h.found.is_empty(), "waits for the directory");
    assert_eq!(h.asked_directory, vec![(id(3), lookup, "nobody".to_owned())]);
    let fetches = h.sent - sent;
    assert!(fetches <= 2 * 32, "{fetches} messages for one miss");
    let record = b"a signed record".to_vec();
    let now = h.now;
    h.with(id(3), |n| n.directory_answer(now, lookup, Some(record.clone())));
    let r = h.found.remove(&(id(3), lookup)).expect("ended");
    assert_eq!((r.stage, r.asked, r.directory), ("directory", 32, Some(record)));
}

#[test]
fn a_replica_that_missed_a_write_gets_it_by_anti_entropy() {
    let mut h = Harness::new(8, config());
    h.run_for(1000);
    let n0 = &h.nodes[&id(0)].0;
    let slot = n0.slot_of("bob");
    let victim = *n0.map().replicas(slot).iter().find(|r| **r != id(0)).expect("another replica");
    h.drop_stores_to.push(victim);
    h.with(id(0), |n| n.publish(T0, entry("bob", 1, T0, Status::Online)));
    h.run_for(500);
    assert!(!h.holders("bob").contains(&victim), "the write was lost");
    h.drop_stores_to.clear();
    h.run_for(12_000);
    assert!(h.holders("bob").contains(&victim), "one anti-entropy round repaired it");
}

#[test]
fn an_anti_entropy_round_compares_each_slot_with_one_other_replica() {
    // A digest to every co-replica was, at 200 members, a packet to every other member
    // every round.
    let mut h = Harness::new(12, config());
    h.trust_all = true;
    h.run_for(1000);
    let nodes: Vec<NodeId> = (0..12).map(id).collect();
    let map = SlotMap::new(SlotSpace::new(64).unwrap(), 3, &nodes);
    for s in SlotSpace::new(64).unwrap().all() {
        h.seed_slot(s, 1, map.replicas(s));
    }
    let mut peers_seen: BTreeMap<(NodeId, u32), BTreeSet<NodeId>> = BTreeMap::new();
    for round in 0..6 {
        h.digests_sent.clear();
        // Each node's rounds are a period apart: a period's window holds one of each.
        h.run_for(10_000);
        for n in &nodes {
            let mut sent: Vec<u32> =
                h.digests_sent.iter().filter(|(f, ..)| f == n).flat_map(|(.., s)| s.clone()).collect();
            sent.sort();
            let held: Vec<u32> = map.held_by(*n).iter().map(|s| s.0).collect();
            assert_eq!(sent, held, "round {round}: {n}'s held slots, each once");
            for (_, to, slots) in h.digests_sent.iter().filter(|(f, ..)| f == n) {
                for s in slots {
                    assert!(map.replicas(Slot(*s)).contains(to), "{s} sent to a replica of it");
                    peers_seen.entry((*n, *s)).or_default().insert(*to);
                }
            }
        }
    }
    // Random picks: over six rounds most slots met both their other replicas.
    let both = peers_seen.values().filter(|p| p.len() == 2).count();
    assert!(both * 4 > peers_seen.len() * 3, "{both} of {} met both", peers_seen.len());
}

#[test]
fn anti_entropy_in_a_full_slot_sends_only_the_key_that_differs() {
    let mut h = Harness::new(3, config());
    h.run_for(1000);
    let slot = h.nodes[&id(0)].0.slot_of("bob");
    // 200 more keys in bob's slot, the same entries at every replica (stand-in signatures:
    // pushed anywhere, they would be sent, then refused).
    let keys = h.seed_slot(slot, 200, &[id(0), id(1), id(2)]);
    h.drop_stores_to.push(id(1));
    h.with(id(0), |n| n.publish(T0, entry("bob", 1, T0, Status::Online)));
    h.run_for(500);
    assert!(!h.holders("bob").contains(&id(1)), "the write was lost");
    h.drop_stores_to.clear();
    let before = h.stores_sent;
    h.run_for(12_000);
    assert!(h.holders("bob").contains(&id(1)), "one anti-entropy round repaired it");
    // Bob's entry and his search postings were lost; both other replicas offer them, the
    // victim asks one, and nothing else is sent.
    let (sent, lost) = (h.stores_sent - before, h.stores_dropped);
    assert!(lost >= 1 && sent <= lost, "{sent} entries sent to repair {lost}, one in a slot of {}", keys.len() + 1);
}

#[test]
fn a_replica_that_lost_a_slot_larger_than_a_seconds_repair_budget_gets_it_back() {
    // 5,000 keys: an 80 KB summary and 6.5 MB of entries, against 64 KiB a second per peer
    // (the budget holds one second's worth: a round gets about that much).
    let cfg = IndexConfig { repair_bytes_per_peer_per_sec: 64 * 1024, ..config() };
    let mut h = Harness::new(3, cfg);
    h.trust_all = true;
    h.run_for(1000);
    let slot = h.nodes[&id(0)].0.slot_of("bob");
    let keys = h.seed_slot(slot, 5000, &[id(0), id(1)]);
    let held = |h: &Harness| h.nodes[&id(2)].1.store(slot).map_or(0, |s| s.len());
    assert_eq!(held(&h), 0);
    let mut waited_s = 0;
    while held(&h) < keys.len() && waited_s < 1800 {
        h.run_for(60_000);
        waited_s += 60;
    }
    assert_eq!(held(&h), keys.len(), "the budget spread the repair over rounds ({waited_s} s); it did not stop it");
}

#[test]
fn view_changes_close_together_make_one_rebuild() {
    let mut h = Harness::new(6, config());
    h.run_for(1000);
    let all: Vec<NodeId> = (0..6).map(id).chain([id(9)]).collect();
    let now = h.now;
    h.with(id(0), |n| n.view(now, SharedView::new(&all[..5])));
    assert_eq!(h.nodes[&id(0)].0.map().members().len(), 5, "the first change after a quiet spell: at once");
    h.with(id(0), |n| n.view(now + 50, SharedView::new(&all[..6])));
    h.with(id(0), |n| n.view(now + 100, SharedView::new(&all)));
    assert_eq!(h.nodes[&id(0)].0.map().members().len(), 5, "later ones wait to settle");
    h.run_for(400);
    assert_eq!(h.nodes[&id(0)].0.map().members().len(), 7, "applied together, the latest view");
}

#[test]
fn a_new_replica_pulls_its_slots_before_any_anti_entropy_round() {
    let mut h = Harness::new(6, config());
    h.run_for(1000);
    let all: Vec<NodeId> = (0..6).map(id).chain([id(9)]).collect();
    // A user whose slot the joiner will replicate.
    let after = SlotMap::new(SlotSpace::new(64).unwrap(), 3, &all);
    let user = (0..)
        .map(|i| format!("user{i}"))
        .find(|u| after.replicas(h.nodes[&id(0)].0.slot_of(u)).contains(&id(9)))
        .expect("some slot");
    h.with(id(0), |n| n.publish(T0, entry(&user, 1, T0, Status::Online)));
    h.run_for(1000);
    let mut joiner = Node::new("sn9".into(), id(9), config(), 9);
    joiner.start(h.now);
    h.nodes.insert(id(9), (joiner, LocalStores::new(10_000, 72 * 3600)));
    // The joiner alone sees the new view (the others have not heard of it yet, so they
    // hand nothing off to it): only its own pull brings the slot before anti-entropy.
    let now = h.now;
    h.with(id(9), |n| n.view(now, SharedView::new(&all)));
    h.run_for(1000);
    assert!(h.holders(&user).contains(&id(9)), "the new replica pulled the slot");
    // Alone at its start it replicated every slot; stores open at a slot's first write,
    // so none was opened for the slots it held only then.
    let (held, stores) = (h.nodes[&id(9)].0.held().len(), h.nodes[&id(9)].1.len());
    assert!(stores <= held && held < 64, "{stores} stores for {held} slots held");
}

#[test]
fn a_view_change_hands_off_only_to_the_replicas_it_added() {
    // Every membership change reaches every node: a hand-off round to all co-replicas was,
    // at 20,000 members, most of the index's messages.
    let mut h = Harness::new(12, IndexConfig { anti_entropy_secs: 3600, ..config() });
    h.trust_all = true;
    h.run_for(1000);
    let nodes: Vec<NodeId> = (0..12).map(id).collect();
    let before = SlotMap::new(SlotSpace::new(64).unwrap(), 3, &nodes);
    let mut keys = Vec::new();
    for s in SlotSpace::new(64).unwrap().all() {
        keys.extend(h.seed_slot(s, 1, before.replicas(s)));
    }
    let mut joiner = Node::new("sn20".into(), id(20), h.nodes[&id(0)].0.config().clone(), 20);
    joiner.start(h.now);
    h.nodes.insert(id(20), (joiner, LocalStores::new(10_000, 72 * 3600)));
    let all: Vec<NodeId> = nodes.iter().copied().chain([id(20)]).collect();
    let view = SharedView::new(&all);
    h.digests_sent.clear();
    let now = h.now;
    for i in &all {
        h.with(*i, |n| n.view(now, view.clone()));
    }
    h.run_for(VIEW_SETTLE_MS + HANDOFF_AFTER_MS + 1000);
    let to_others: Vec<_> = h.digests_sent.iter().filter(|(from, to, _)| *from != id(20) && *to != id(20)).collect();
    assert!(to_others.is_empty(), "hand-off digests between replicas that did not change: {to_others:?}");
    let senders: BTreeSet<NodeId> = h.digests_sent.iter().filter(|(f, ..)| *f != id(20)).map(|(f, ..)| *f).collect();
    assert!(!senders.is_empty(), "the joiner's co-replicas told it of their digests");
    let after = SlotMap::new(SlotSpace::new(64).unwrap(), 3, &all);
    for k in &keys {
        let mut want = after.replicas(h.nodes[&id(0)].0.slot_of(k)).to_vec();
        want.sort();
        let held: Vec<NodeId> = h.holders(k).into_iter().filter(|n| want.contains(n)).collect();
        assert_eq!(held, want, "{k} at every replica of the new map");
    }
}

#[test]
fn a_view_change_that_gains_hundreds_of_slots_pulls_them_in_a_few_packets() {
    // A packet per gained slot was a burst of hundreds per node at every view change,
    // enough to overflow peers' receive buffers and lose their membership probes.
    let cfg = IndexConfig { slots: 1024, ..config() };
    let mut h = Harness::new(6, cfg.clone());
    h.run_for(1000);
    let mut joiner = Node::new("sn9".into(), id(9), cfg, 9);
    joiner.start(h.now);
    h.nodes.insert(id(9), (joiner, LocalStores::new(10_000, 72 * 3600)));
    let all: Vec<NodeId> = (0..6).map(id).chain([id(9)]).collect();
    let now = h.now;
    h.with(id(9), |n| n.view(now, SharedView::new(&all)));
    // Until its hand-off round, before any anti-entropy round of its own.
    h.run_for(VIEW_SETTLE_MS + HANDOFF_AFTER_MS + 100);
    let gained = h.nodes[&id(9)].0.held().len() as u64;
    let sent = h.sent_by.get(&id(9)).copied().unwrap_or(0);
    assert!(gained > 300, "{gained} slots gained");
    // Two holders a slot, spread over six members: at most a partly filled packet per
    // member beside the full ones.
    let most = 2 * gained / DIGESTS_PER_PACKET as u64 + 6;
    assert!(sent <= most, "{sent} packets to pull {gained} slots (at most {most})");
    assert!(sent > 0, "the joiner pulled");
}

#[test]
fn a_member_that_no_longer_replicates_a_slot_still_answers_a_new_replicas_pull() {
    // F holds slot S's entries; in F's view a member X outranks it for S, so F keeps the
    // store but no longer replicates S. A joiner J whose view lacks X pulls S from F.
    let mut h = Harness::new(6, config());
    h.trust_all = true;
    h.run_for(1000);
    let space = SlotSpace::new(64).unwrap();
    let all: Vec<NodeId> = (0..6).map(id).collect();
    let (j, with_j) = (id(9), [all.clone(), vec![id(9)]].concat());
    let (slot, f, x) = (0..64)
        .map(Slot)
        .flat_map(|s| (0..6u8).map(move |f| (s, id(f))))
        .flat_map(|(s, f)| (10..250u8).map(move |x| (s, f, id(x))))
        .find(|(s, f, x)| {
            let before = SlotMap::new(space, 3, &all);
            let seen_by_j = SlotMap::new(space, 3, &with_j);
            let seen_by_f = SlotMap::new(space, 3, &[with_j.clone(), vec![*x]].concat());
            before.replicas(*s).contains(f)
                && seen_by_j.replicas(*s).contains(&j)
                && seen_by_j.replicas(*s).iter().filter(|r| **r != j).take(PULL_FROM).any(|r| r == f)
                && !seen_by_f.replicas(*s).contains(f)
        })
        .expect("such a slot, holder and member");
    let keys = h.seed_slot(slot, 20, &[f]);
    let now = h.now;
    h.with(f, |n| n.view(now, SharedView::new(&[with_j.clone(), vec![x]].concat())));
    let mut joiner = Node::new("sn9".into(), j, config(), 9);
    joiner.start(now);
    h.nodes.insert(j, (joiner, LocalStores::new(10_000, 72 * 3600)));
    h.with(j, |n| n.view(now, SharedView::new(&with_j)));
    // The hand-off round and its exchange, before any anti-entropy round.
    h.run_for(VIEW_SETTLE_MS + HANDOFF_AFTER_MS + 1000);
    assert!(!h.nodes[&f].0.held().contains(&slot), "F no longer replicates the slot");
    let got = h.nodes[&j].1.store(slot).map_or(0, |st| st.len());
    assert_eq!(got, keys.len(), "the joiner pulled the slot from its former replica");
}

#[test]
fn a_busy_driver_refuses_a_store_and_an_answer_from_a_member_not_asked_is_ignored() {
    let mut h = Harness::new(5, config());
    h.run_for(1000);
    h.busy = true;
    h.with(id(0), |n| n.publish(T0, entry("dave", 1, T0, Status::Online)));
    h.run_for(500);
    assert!(h.holders("dave").iter().all(|i| *i == id(0)), "only the publisher's own store took it");
    // An answer from a member other than the one asked is not taken; the asked one's is.
    let ids: Vec<NodeId> = (0..12).map(id).collect();
    let mut n = Node::new("sn0".into(), id(0), config(), 0);
    n.view(T0, SharedView::new(&ids));
    drain(&mut n, T0);
    n.find(T0, "dave");
    let (asked, req) = drain(&mut n, T0)
        .into_iter()
        .find_map(|o| match o {
            Output::Send { to, rpc: IndexRpc::Fetch { req, .. } } => Some((to, req)),
            _ => None,
        })
        .expect("a fetch");
    let other = *ids.iter().find(|i| **i != asked && **i != id(0)).expect("another member");
    let e = entry("dave", 2, T0 + 5, Status::Online);
    n.receive(T0, other, IndexRpc::FetchReply { req, entry: Some(e.encode()) });
    assert!(!drain(&mut n, T0).iter().any(|o| matches!(o, Output::Verify(_))), "a stranger's answer is dropped");
    n.receive(T0, asked, IndexRpc::FetchReply { req, entry: Some(e.encode()) });
    assert!(drain(&mut n, T0).iter().any(|o| matches!(o, Output::Verify(_))), "the asked member's is checked");
    assert!(h.found.is_empty());
}

#[test]
fn a_presence_refresh_writes_the_users_key_and_postings_only_when_their_tokens_change() {
    let mut h = Harness::new(12, IndexConfig { postings_refresh_secs: 600, anti_entropy_secs: 60, ..config() });
    h.run_for(1000);
    let stores = |h: &mut Harness, e: Entry| {
        let before = h.sent;
        let now = h.now;
        h.with(id(0), |n| n.publish(now, e));
        h.sent - before
    };
    let first = entry("erin", 1, T0 + 1000, Status::Online);
    let tokens = fold::name_tokens(&first.user, &first.profile).len() as u64;
    assert!(tokens >= 2);
    let all = stores(&mut h, first);
    assert!(all >= 2 * (1 + tokens), "the key and every posting: {all}");
    h.run_for(300_000);
    let e = entry("erin", 1, h.now, Status::Online);
    let refresh = stores(&mut h, e);
    assert!(refresh <= 3, "a refresh five minutes later: the key's replicas only, {refresh}");
    // A member joins and becomes a replica of one of the tokens' slots: the postings move
    // with the slot, and the next refresh does not write them again (at 20,000 super
    // nodes some replica of a token's slot changes every few minutes).
    let ids: Vec<NodeId> = (0..12).map(id).collect();
    let token_slots: Vec<Slot> = fold::name_tokens("erin", &entry("erin", 1, T0, Status::Online).profile)
        .iter()
        .map(|t| h.nodes[&id(0)].0.slot_of(&fold::token_slot_key(t)))
        .collect();
    let joiner = (20..=255u8)
        .map(id)
        .find(|j| {
            let all: Vec<NodeId> = ids.iter().copied().chain([*j]).collect();
            let map = SlotMap::new(SlotSpace::new(64).unwrap(), 3, &all);
            token_slots.iter().any(|s| map.replicas(*s).contains(j))
        })
        .expect("a joiner replicating a token's slot");
    let all: Vec<NodeId> = ids.iter().copied().chain([joiner]).collect();
    let view = SharedView::new(&all);
    let now = h.now;
    for i in &ids {
        h.with(*i, |n| n.view(now, view.clone()));
    }
    h.run_for(2000);
    let e = entry("erin", 1, h.now, Status::Online);
    let after_join = stores(&mut h, e);
    assert!(after_join <= 3, "a refresh after a token slot's replicas changed: the key only, {after_join}");
    // A logout within the period: its postings written at the login outlast the entry.
    let gone = entry("erin", 1, h.now + 1, Status::Offline);
    assert!(stores(&mut h, gone) <= 3, "a logout: the key's replicas only");
    let mut moved = entry("erin", 1, h.now + 1, Status::Online);
    let mut body = EntryBody::clone(&moved);
    body.profile.display_name = "Erin Tamm".into();
    moved = Entry::unsigned(body, moved.origin, moved.order().2.to_vec());
    assert!(stores(&mut h, moved) > refresh, "a new name: its postings are written");
    h.run_for(600_000);
    let e = entry("erin", 1, h.now, Status::Online);
    assert!(stores(&mut h, e) > refresh, "a refresh period on: written again");
}

#[test]
fn search_finds_users_by_every_word_of_their_current_profile() {
    let mut h = Harness::new(12, config());
    h.run_for(1000);
    for (i, user) in ["ann", "ben", "cat"].iter().enumerate() {
        let e = entry(user, 1, T0 + i as u64, Status::Online);
        h.with(id(i as u8), |n| n.publish(T0, e));
    }
    // Ben moves: his postings for the old city stay, his entry no longer has it.
    let old = entry("ben", 1, T0 + 10, Status::Online);
    let mut body = EntryBody::clone(&old);
    body.profile.city = "Tartu".into();
    body.profile.display_name = "Jaan Tamm".into();
    let c = crate::index::entry::tests::credential("ben", 1, T0 / 1000 - 10);
    let moved = Entry::sign(body, &c, &crate::crypto::keys::tests::test_key(2)).unwrap();
    h.run_for(1000);
    h.with(id(1), |n| n.publish(T0 + 10, moved));
    h.run_for(1000);
    let search = |h: &mut Harness, at: u8, words: &str| {
        let now = h.now;
        let s = h.with(id(at), |n| n.search(now, words, 10));
        for _ in 0..50 {
            if let Some(r) = h.searched.remove(&(id(at), s)) {
                return r.into_iter().map(|e| e.user.clone()).collect::<Vec<_>>();
            }
            h.run_for(100);
        }
        panic!("search {words:?} never ended");
    };
    assert_eq!(search(&mut h, 7, "Tallinn"), ["ann", "cat"], "ben's posting is there, his entry moved");
    assert_eq!(search(&mut h, 2, "jaan tartu"), ["ben"], "a city narrows a search by name");
    assert!(search(&mut h, 2, "tartu").is_empty(), "a city alone finds nobody: it is not posted");
    assert!(search(&mut h, 0, "tallinn nowhere").is_empty());
    assert!(search(&mut h, 0, "  ").is_empty());
}

#[test]
fn a_search_with_a_common_word_finds_the_users_its_rare_word_names() {
    // 250 users share "tallinn", more than one postings read returns; the one "smith" is
    // past the first 200 in key order. Intersecting the truncated "tallinn" read with
    // "smith" found nobody.
    let mut h = Harness::new(12, config());
    h.trust_all = true;
    h.run_for(1000);
    for i in 0..250u64 {
        let user = format!("u{i:03}");
        let e = entry(&user, 1, T0 + i, Status::Online);
        h.with(id((i % 12) as u8), |n| n.publish(T0, e));
    }
    let zed = entry("zed", 1, T0, Status::Online);
    let mut body = EntryBody::clone(&zed);
    body.profile.display_name = "Zed Smith".into();
    let c = crate::index::entry::tests::credential("zed", 1, T0 / 1000 - 10);
    let zed = Entry::sign(body, &c, &crate::crypto::keys::tests::test_key(2)).unwrap();
    h.with(id(3), |n| n.publish(T0, zed));
    h.run_for(2000);
    assert_eq!(search_users(&mut h, 5, "smith tallinn"), ["zed"]);
    assert_eq!(search_users(&mut h, 5, "tallinn smith"), ["zed"]);
    // A common word alone gives at most the limit, every one of them a match.
    let many = search_users(&mut h, 7, "tallinn");
    assert_eq!(many.len(), 10, "{many:?}");
}

/// Carries out a lone node's store reads (nothing held) and collects what else it asks.
fn drain(n: &mut Node, now: u64) -> Vec<Output> {
    let mut out = Vec::new();
    while let Some(o) = n.poll() {
        match o {
            Output::Get { purpose, .. } => n.got(now, purpose, None),
            other => out.push(other),
        }
    }
    out
}

#[test]
fn a_lookup_timer_that_fires_a_millisecond_early_is_not_lost() {
    // The router turns `Schedule { at_ms }` into `run_later(at_ms - SystemTime::now())`
    // and calls `timer(SystemTime::now())` when it fires: a wall clock slewed or stepped
    // back by NTP hands the node a `now` just short of `at_ms`.
    let ids: Vec<NodeId> = (0..12).map(id).collect();
    let mut n = Node::new("sn0".into(), id(0), config(), 0);
    n.start(T0);
    n.view(T0, SharedView::new(&ids));
    drain(&mut n, T0);
    let l = n.find(T0, "nobody");
    let at = drain(&mut n, T0)
        .into_iter()
        .find_map(|o| match o {
            Output::Schedule { at_ms, timer: Timer::Lookup(x) } if x == l => Some(at_ms),
            _ => None,
        })
        .expect("a stage deadline");
    // Nobody answers. The timer fires 1 ms early by the wall clock.
    n.timer(at - 1, Timer::Lookup(l));
    let after = drain(&mut n, at - 1);
    assert_eq!(n.lookups_running(), 1);
    assert!(
        after.iter().any(|o| matches!(o, Output::Schedule { timer: Timer::Lookup(x), .. } if *x == l)
            || matches!(o, Output::Send { .. })),
        "the lookup has no timer left and nothing in flight: it never ends ({after:?})"
    );
}

#[test]
fn search_finds_a_user_seen_within_the_retention_who_stayed_online_past_a_refresh() {
    let mut h = Harness::new(12, IndexConfig { anti_entropy_secs: 3600, ..config() });
    h.run_for(1000);
    let now = h.now;
    h.with(id(0), |n| n.publish(now, entry("erin", 1, now, Status::Online)));
    h.run_for(23 * 3600 * 1000);
    // Erin stays online, refreshing her presence (same profile), then goes away.
    let now = h.now;
    h.with(id(0), |n| n.publish(now, entry("erin", 1, now, Status::Online)));
    h.run_for(50 * 3600 * 1000);
    // Last seen 50 hours ago: inside the 72-hour promise.
    let r = h.find(id(5), "erin");
    assert!(r.entry.is_some(), "find still finds her");
    let now = h.now;
    let s = h.with(id(7), |n| n.search(now, "Tallinn", 10));
    let mut got = None;
    for _ in 0..50 {
        if let Some(r) = h.searched.remove(&(id(7), s)) {
            got = Some(r.into_iter().map(|e| e.user.clone()).collect::<Vec<_>>());
            break;
        }
        h.run_for(100);
    }
    assert_eq!(got.expect("search ended"), ["erin"], "search lost a user last seen 50 h ago");
}

fn search_users(h: &mut Harness, at: u8, words: &str) -> Vec<String> {
    let now = h.now;
    let s = h.with(id(at), |n| n.search(now, words, 10));
    for _ in 0..50 {
        if let Some(r) = h.searched.remove(&(id(at), s)) {
            return r.into_iter().map(|e| e.user.clone()).collect();
        }
        h.run_for(100);
    }
    panic!("search never ended");
}

#[test]
fn postings_written_while_the_view_was_small_reach_their_replicas_once_it_grows() {
    let ids: Vec<NodeId> = (0..12).map(id).collect();
    for refresh in [0u64, 24 * 3600] {
        let mut h = Harness::new(12, IndexConfig { postings_refresh_secs: refresh, ..config() });
        h.run_for(1000);
        let tslot = h.nodes[&id(0)].0.slot_of(&fold::token_slot_key("tallinn"));
        let p = (0..12u8).find(|i| !h.nodes[&id(0)].0.map().replicas(tslot).contains(&id(*i))).unwrap();
        // Node p sees only itself for a moment (a partition, or before it heard the others).
        let now = h.now;
        h.with(id(p), |n| n.view(now, SharedView::new(&[id(p)])));
        let now = h.now;
        h.with(id(p), |n| n.publish(now, entry("erin", 1, now, Status::Online)));
        h.run_for(1000);
        // Then it sees three members the others do not know (gone before they heard of
        // them), which take the token's slot from it: its hand-off to them is lost, and
        // the slot moves again when it sees the whole cluster.
        let outranks = |c: NodeId| SlotMap::new(SlotSpace::new(64).unwrap(), 1, &[id(p), c]).replicas(tslot) == [c];
        let mut step: Vec<NodeId> = (100..=255).map(id).filter(|c| outranks(*c)).take(3).collect();
        assert_eq!(step.len(), 3, "three members that take the slot from p");
        step.push(id(p));
        let now = h.now;
        h.with(id(p), |n| n.view(now, SharedView::new(&step)));
        h.run_for(2000);
        let now = h.now;
        h.with(id(p), |n| n.view(now, SharedView::new(&ids)));
        h.run_for(60_000);
        // Five minutes on, Erin's host refreshes its presence as usual.
        h.run_for(240_000);
        let now = h.now;
        h.with(id(p), |n| n.publish(now, entry("erin", 1, now, Status::Online)));
        h.run_for(60_000);
        assert!(h.find(id(5), "erin").entry.is_some());
        let got: Vec<String> =
            (0..12u8).filter(|i| *i != p).map(|i| search_users(&mut h, i, "Tallinn").len().to_string()).collect();
        assert!(got.iter().all(|g| g == "1"), "refresh={refresh}: search misses erin: {got:?}");
    }
}

#[test]
fn a_differ_of_repeated_slots_reads_each_once_and_none_once_the_members_repair_budget_is_spent() {
    let ids: Vec<NodeId> = (0..4).map(id).collect();
    let cfg = IndexConfig { repair_bytes_per_peer_per_sec: 10_000, ..config() };
    let mut n = Node::new("sn0".into(), id(0), cfg, 0);
    n.view(T0, SharedView::new(&ids));
    while n.poll().is_some() {}
    n.receive(T0, id(1), IndexRpc::Differ { slots: vec![5; 1000] });
    let dumps: Vec<Vec<Slot>> = std::iter::from_fn(|| n.poll())
        .filter_map(|o| match o {
            Output::Dump { slots, .. } => Some(slots),
            _ => None,
        })
        .collect();
    assert_eq!(dumps, [vec![Slot(5)]]);
    // The answer spends the member's second of budget.
    n.dumped(T0, id(1), (0..10).map(|i| (format!("k{i}"), vec![0; 998])).collect());
    while n.poll().is_some() {}
    n.receive(T0 + 10, id(1), IndexRpc::Differ { slots: vec![5, 6] });
    assert!(std::iter::from_fn(|| n.poll()).all(|o| !matches!(o, Output::Dump { .. })), "no read for nothing");
    n.receive(T0 + 10, id(2), IndexRpc::Differ { slots: vec![6] });
    assert!(
        std::iter::from_fn(|| n.poll()).any(|o| matches!(o, Output::Dump { .. })),
        "another member's budget is its own"
    );
}
