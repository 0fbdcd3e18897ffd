//! The store across replicas: three replicas of one slot, messages stored at two of
//! them, one replica lost and replaced, devices fetching and acknowledging through any
//! replica, anti-entropy in any order, every exchange through its encoded request.

use super::message::tests::mail;
use super::sync::{SUMMARY_ITEMS_MAX, WANTS_MAX, pack};
use super::*;
use crate::crypto::keys::KeyId;
use crate::index::rpc::{MAIL_ITEMS_BYTES_MAX, MAIL_PAGE_BYTES_MAX, MAIL_RPC_LEN_MAX, MailRpc};
use proptest::prelude::*;
use std::collections::{BTreeMap, BTreeSet};

const T0: u64 = 1_800_000_000_000;

/// Through the wire and back, within one frame.
fn rpc(m: MailRpc) -> MailRpc {
    let b = m.encode();
    assert!(b.len() <= MAIL_RPC_LEN_MAX, "{} bytes", b.len());
    MailRpc::decode(&b).expect("decodes")
}

/// One anti-entropy round from `a` to `b` (and back, for what `b` holds that `a` lacks).
pub(super) fn sync(now: u64, a: &mut MailStore, b: &mut MailStore) {
    let MailRpc::Digests { slots } = rpc(MailRpc::Digests { slots: vec![(7, a.digest())] }) else { unreachable!() };
    if slots[0].1 == b.digest() {
        return;
    }
    let MailRpc::Buckets { digests, devices, .. } =
        rpc(MailRpc::Buckets { slot: 7, digests: b.bucket_digests(), devices: b.devices_digest() })
    else {
        unreachable!()
    };
    if devices != a.devices_digest() {
        // Devices before any message, both ways: a pushes its own, asks b for b's.
        push(now, a.device_items(), b);
        let MailRpc::Devices { .. } = rpc(MailRpc::Devices { slot: 7 }) else { unreachable!() };
        push(now, b.device_items(), a);
    }
    for bucket in a.differing_buckets(&digests) {
        let mut after = None;
        loop {
            let s = a.summary(bucket, after, SUMMARY_ITEMS_MAX);
            let MailRpc::Summary { summary, .. } = rpc(MailRpc::Summary { slot: 7, summary: s }) else {
                unreachable!()
            };
            let r = b.reconcile(&summary);
            for wants in r.want.chunks(WANTS_MAX) {
                let MailRpc::Want { wants, .. } = rpc(MailRpc::Want { slot: 7, wants: wants.to_vec() }) else {
                    unreachable!()
                };
                push(now, a.answer(&wants), b);
            }
            push(now, r.push, a);
            match summary.end {
                Some(e) => after = Some(e),
                None => break,
            }
        }
    }
}

/// Items to a replica, in frames.
fn push(now: u64, items: Vec<MailItem>, to: &mut MailStore) {
    for items in pack(items, MAIL_ITEMS_BYTES_MAX) {
        let MailRpc::Items { items, .. } = rpc(MailRpc::Items { slot: 7, items }) else { unreachable!() };
        to.merge(now, items);
    }
}

/// Every page of what `device` has pending at `store`, through the wire.
fn fetch_all(now: u64, store: &mut MailStore, device: KeyId) -> Vec<Mail> {
    let mut out = Vec::new();
    let mut after = None;
    loop {
        let page = store.fetch(now, "bob", device, after, MAIL_PAGE_BYTES_MAX);
        let MailRpc::Page { messages, more, .. } =
            rpc(MailRpc::Page { req: 1, messages: page.messages, more: page.more })
        else {
            unreachable!()
        };
        let stamps: Vec<u64> = messages.iter().map(|m| m.stored_at_ms).collect();
        assert!(stamps.windows(2).all(|w| w[0] <= w[1]), "handed in the order stored: {stamps:?}");
        after = messages.last().map(|m| m.id).or(after);
        out.extend(messages);
        if !more {
            return out;
        }
    }
}

#[derive(Debug, Clone)]
enum Op {
    /// Store the next message at two replicas (the first and the one after it).
    Store(usize),
    /// A device fetches at one replica and acknowledges what it got at another.
    Read { device: usize, at: usize, ack_at: usize },
    /// Anti-entropy from one replica to another.
    Sync(usize, usize),
    /// An expiry pass at a replica (deletes what replication completed).
    Expire(usize),
    /// The replica is lost; a new one takes its place, filled by hand-over or by
    /// anti-entropy later.
    Replace { at: usize, import_from: Option<usize> },
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        3 => (0..3usize).prop_map(Op::Store),
        4 => (0..3usize, 0..3usize, 0..3usize).prop_map(|(device, at, ack_at)| Op::Read { device, at, ack_at }),
        3 => (0..3usize, 0..3usize).prop_map(|(a, b)| Op::Sync(a, b)),
        1 => (0..3usize).prop_map(Op::Expire),
        1 => (0..3usize, proptest::option::of(0..3usize)).prop_map(|(at, import_from)| Op::Replace { at, import_from }),
    ]
}

struct World {
    now: u64,
    budget: Budget,
    replicas: Vec<MailStore>,
    devices: Vec<KeyId>,
    /// Per replica: the (device, id) acknowledgements it has been told of, directly or
    /// by replication.
    knows: Vec<BTreeSet<(KeyId, MailId)>>,
    /// Per replica: the ids it has deleted.
    deleted: Vec<BTreeSet<MailId>>,
    /// Per device: its history (the recipient drops repeats) and how often each came.
    history: Vec<BTreeMap<MailId, usize>>,
    stored: Vec<MailId>,
}

impl World {
    fn new(devices: usize) -> Self {
        let budget = Budget::new(64 << 20);
        let devices: Vec<KeyId> = (0..devices as u8).map(|i| KeyId([i + 1; 8])).collect();
        let mut w = World {
            now: T0,
            budget: budget.clone(),
            replicas: Vec::new(),
            devices,
            knows: vec![BTreeSet::new(); 3],
            deleted: vec![BTreeSet::new(); 3],
            history: Vec::new(),
            stored: Vec::new(),
        };
        w.history = vec![BTreeMap::new(); w.devices.len()];
        w.replicas = (0..3).map(|_| w.fresh()).collect();
        w
    }

    /// A new replica, knowing the user's devices from the slot's live entries.
    fn fresh(&self) -> MailStore {
        let mut s = MailStore::new(MailLimits::default(), self.budget.clone());
        for d in &self.devices {
            s.note_device("bob", *d, self.now);
        }
        s
    }

    fn apply(&mut self, op: Op) {
        self.now += 1000;
        let now = self.now;
        match op {
            Op::Store(first) => {
                let i = self.stored.len();
                if i >= 12 {
                    return;
                }
                let from = if i.is_multiple_of(2) { "alice" } else { "carol" };
                let m = mail(i as u8 * 8 + 1, "bob", from, now, 200 + 150 * i);
                self.stored.push(m.id);
                for r in [first, (first + 1) % 3] {
                    assert_eq!(self.replicas[r].store(now, m.clone()), Stored::New);
                }
            }
            Op::Read { device, at, ack_at } => {
                let Some(d) = self.devices.get(device).copied() else { return };
                let got = fetch_all(now, &mut self.replicas[at], d);
                for m in &got {
                    assert!(!self.knows[at].contains(&(d, m.id)), "handed again after its acknowledgement arrived");
                    *self.history[device].entry(m.id).or_default() += 1;
                }
                let ids: Vec<MailId> = got.iter().map(|m| m.id).collect();
                for chunk in ids.chunks(crate::index::rpc::MAIL_ACK_IDS_MAX) {
                    let MailRpc::Ack { ids, .. } =
                        rpc(MailRpc::Ack { user: "bob".into(), device: d.0, ids: chunk.to_vec() })
                    else {
                        unreachable!()
                    };
                    let held: Vec<MailId> = ids.iter().copied().filter(|id| self.replicas[ack_at].holds(id)).collect();
                    self.replicas[ack_at].ack(now, "bob", d, &ids);
                    self.knows[ack_at].extend(held.into_iter().map(|id| (d, id)));
                }
            }
            Op::Sync(a, b) if a != b => {
                let (x, y) = two(&mut self.replicas, a, b);
                sync(now, x, y);
                assert_eq!(x.digest(), y.digest(), "one round makes two replicas equal");
                let union: BTreeSet<_> = self.knows[a].union(&self.knows[b]).copied().collect();
                self.knows[a] = union.clone();
                self.knows[b] = union;
            }
            Op::Sync(..) => {}
            Op::Expire(r) => {
                self.replicas[r].expire(now);
            }
            Op::Replace { at, import_from } => {
                // Fewer than R replicas fail between a write and its replication: a
                // replica holding the only copy of something is not lost.
                let known = |s: &MailStore, id: &MailId| s.holds(id) || s.is_deleted(id);
                let sole = self.stored.iter().any(|id| (0..3).all(|r| (r == at) == known(&self.replicas[r], id)));
                if sole {
                    return;
                }
                let mut s = self.fresh();
                self.knows[at].clear();
                self.deleted[at].clear();
                if let Some(src) = import_from.filter(|s| *s != at) {
                    s.import(now, self.replicas[src].export());
                    assert_eq!(s.digest(), self.replicas[src].digest(), "a hand-over copies the slot");
                    self.knows[at] = self.knows[src].clone();
                }
                self.replicas[at] = s;
            }
        }
        self.check();
    }

    /// What must hold after every step.
    fn check(&mut self) {
        for (r, s) in self.replicas.iter().enumerate() {
            for id in &self.deleted[r] {
                assert!(s.is_deleted(id) && !s.holds(id), "a deleted message came back");
            }
            for id in &self.stored {
                assert!(!(s.is_deleted(id) && s.holds(id)));
                if s.is_deleted(id) {
                    self.deleted[r].insert(*id);
                }
            }
            assert_eq!(s.stats().charged, s.recount(), "the budget is charged what is held");
        }
        let total: u64 = self.replicas.iter().map(|s| s.stats().charged).sum();
        assert_eq!(self.budget.used(), total);
    }

    /// Replication and reading until nothing is pending anywhere.
    fn settle(&mut self) {
        for _ in 0..4 {
            for (a, b) in [(0, 1), (1, 2), (2, 0), (0, 1)] {
                self.apply(Op::Sync(a, b));
            }
            for device in 0..self.devices.len() {
                for at in 0..3 {
                    self.apply(Op::Read { device, at, ack_at: at });
                }
            }
            for r in 0..3 {
                self.apply(Op::Expire(r));
            }
        }
    }
}

fn two<T>(v: &mut [T], a: usize, b: usize) -> (&mut T, &mut T) {
    assert_ne!(a, b);
    if a < b {
        let (l, r) = v.split_at_mut(b);
        (&mut l[a], &mut r[0])
    } else {
        let (l, r) = v.split_at_mut(a);
        (&mut r[0], &mut l[b])
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(96))]

    /// Every device of the recipient receives every message, never one whose
    /// acknowledgement the replica asked already holds; no message comes back once
    /// deleted; in the end every replica has deleted every message.
    #[test]
    fn every_device_gets_every_message_once(devices in 1usize..=3, ops in proptest::collection::vec(op(), 10..80)) {
        let mut w = World::new(devices);
        for op in ops {
            w.apply(op);
        }
        w.settle();
        for (d, h) in w.history.iter().enumerate() {
            let got: BTreeSet<MailId> = h.keys().copied().collect();
            let want: BTreeSet<MailId> = w.stored.iter().copied().collect();
            prop_assert_eq!(got, want, "device {} lost a message", d);
        }
        for s in &w.replicas {
            prop_assert_eq!(s.stats().messages, 0);
            for id in &w.stored {
                prop_assert!(s.is_deleted(id));
            }
        }
    }
}

#[test]
fn lost_replica_is_refilled_by_anti_entropy() {
    let mut w = World::new(2);
    for i in 0..5 {
        w.apply(Op::Store(i % 3));
    }
    w.apply(Op::Replace { at: 1, import_from: None });
    let before = w.replicas[1].stats().messages;
    w.apply(Op::Sync(0, 1));
    w.apply(Op::Sync(2, 1));
    assert_eq!(before, 0);
    assert_eq!(w.replicas[1].stats().messages, 5, "every message is back on the new replica");
    // Both devices read everything through the new replica alone.
    for device in 0..2 {
        w.apply(Op::Read { device, at: 1, ack_at: 1 });
    }
    assert_eq!(w.replicas[1].stats().deleted, 5);
    assert_eq!(w.replicas[0].stats().messages, 3, "the others still hold what they held");
    w.apply(Op::Sync(1, 0));
    w.apply(Op::Sync(1, 2));
    for r in 0..3 {
        assert_eq!(w.replicas[r].stats().messages, 0, "tombstones deleted it everywhere");
    }
}
