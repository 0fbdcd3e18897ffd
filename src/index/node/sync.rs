//! Replicas keeping each other whole: digests every round, pulls by new replicas, and
//! where two replicas' digests of a slot differ, the buckets that differ, then the keys
//! in them that differ, then only those keys' entries, within per-answer and per-peer
//! byte caps.
//!
//! A slot at a million users holds thousands of keys, and a write in flight during a
//! round is enough to make two replicas' digests differ: pushing whole slots on every
//! difference was nearly all of the index's traffic (docs/scale.md). Now a difference of
//! one key costs a bucket list (64 × 8 bytes), two summaries of one bucket, and the key.

use super::{Node, Output, PULL_FROM, Reconcile};

/// How long a key asked of one replica is not asked of another offering the same version
/// (both holders answer a pull; both sides of a pair may compare in one round).
pub const WANT_AGAIN_MS: u64 = 2_000;
/// Most (key, version)s remembered as asked: past it the stale ones go, and if all are
/// fresh, all (a key may then be asked twice).
const WANTS_REMEMBERED_MAX: usize = 65_536;
/// What a member's request that makes this node read a store (Buckets, a Summary page,
/// Want, Differ) costs from the member's repair budget, beside any bytes sent: a member
/// cannot make a node scan its slots faster than the budget allows, whatever it sends.
pub const READ_COST: u64 = 4096;
use crate::index::repair::{self, RepairBudget};
use crate::index::rpc::{DIGESTS_PER_PACKET, IndexRpc, SUMMARY_ITEMS_PER_PACKET};
use crate::index::store::BUCKETS;
use crate::index::{NodeId, Slot};
use metrics::counter;
use rand::RngExt;
use rand::seq::SliceRandom;
use std::collections::{BTreeMap, BTreeSet};

impl Node {
    /// One anti-entropy round: every non-empty slot we hold is compared with one other
    /// replica, picked at random. The members we share slots with are taken in a random
    /// order, each sent the digests of the slots no earlier one was, so a round costs
    /// about as many packets as it takes members to cover our slots, not one per
    /// co-replica: at 200 members a node holds ~100 slots shared with every other, and a
    /// packet to each was most of a node's traffic. Comparing is both ways (a differing
    /// digest starts an exchange that repairs either side), and every replica picks its
    /// own, so a write one replica missed reaches it within a round or two, as before.
    /// Empty slots need no word: whoever holds data sends its digest, and an empty side
    /// answers that it differs.
    pub(super) fn anti_entropy(&mut self, now_ms: u64) {
        self.forget_wants(now_ms);
        let mut shared: BTreeMap<NodeId, Vec<Slot>> = BTreeMap::new();
        for s in self.digests.keys().filter(|s| self.held.contains(s)) {
            for r in self.map.replicas(*s).iter().filter(|r| **r != self.me) {
                shared.entry(*r).or_default().push(*s);
            }
        }
        let mut order: Vec<NodeId> = shared.keys().copied().collect();
        order.shuffle(&mut self.rng);
        let mut covered = BTreeSet::new();
        let mut per_peer: BTreeMap<NodeId, Vec<(u32, [u8; 32])>> = BTreeMap::new();
        self.former_digests(&mut per_peer);
        for peer in order {
            for s in &shared[&peer] {
                if covered.insert(*s) {
                    per_peer.entry(peer).or_default().push((s.0, self.digests[s].whole));
                }
            }
        }
        self.send_chunks(per_peer, |slots| IndexRpc::Digests { slots });
    }

    /// The digest of each slot this node stopped replicating in the last
    /// `FORMER_ROUNDS` rounds and still holds entries of, to one of its replicas.
    fn former_digests(&mut self, per_peer: &mut BTreeMap<NodeId, Vec<(u32, [u8; 32])>>) {
        for (s, rounds) in std::mem::take(&mut self.former_rounds) {
            if let Some(d) = self.digests.get(&s) {
                let replicas: Vec<NodeId> = self.map.replicas(s).iter().filter(|r| **r != self.me).copied().collect();
                if !replicas.is_empty() {
                    let to = replicas[self.rng.random_range(0..replicas.len())];
                    per_peer.entry(to).or_default().push((s.0, d.whole));
                }
            }
            if rounds > 1 {
                self.former_rounds.insert(s, rounds - 1);
            }
        }
    }

    /// After a view change: tell the replicas our held slots gained of their digests (an
    /// anti-entropy round limited to them), so a new replica need not wait a whole period
    /// for what it lacks, and a change that moved none of our slots costs nothing.
    pub(super) fn hand_off(&mut self, now_ms: u64) {
        self.forget_wants(now_ms);
        let newcomers = std::mem::take(&mut self.newcomers);
        let mut per_peer: BTreeMap<NodeId, Vec<(u32, [u8; 32])>> = BTreeMap::new();
        for (s, peers) in newcomers {
            let Some(d) = self.digests.get(&s) else { continue };
            let replicas = self.map.replicas(s);
            for p in peers.into_iter().filter(|p| replicas.contains(p)) {
                per_peer.entry(p).or_default().push((s.0, d.whole));
            }
        }
        self.send_chunks(per_peer, |slots| IndexRpc::Digests { slots });
    }

    /// Asks the other replicas of every slot this node just became a replica of for what
    /// they hold that it does not. Anti-entropy alone would wait for a holder's next
    /// round, and a holder whose view changed after its hand-off round sends nothing until
    /// then. Two holders are enough to be sure of one answer. The question is a digest of
    /// 0 for each slot we hold nothing of, `DIGESTS_PER_PACKET` slots a packet: a
    /// view change gains hundreds of slots at once, and a packet per slot was a burst
    /// that overflowed the peers' receive buffers and lost their membership probes. A
    /// holder whose digest differs answers with its bucket digests, and the bucket,
    /// summary, want exchange brings what differs, so a node coming back after a pause,
    /// or a view that flapped, costs what differs rather than the whole slot twice; the
    /// keys both holders offer are asked of the first only ([`WANT_AGAIN_MS`]).
    pub(super) fn pull(&mut self) {
        // A gained slot we hold entries of (a node back from a pause) had its digest sent
        // to every other replica by the hand-off round just before: only the empty
        // ones are asked for here, with the digest 0.
        let gained: Vec<(Slot, (u32, [u8; 32]))> = std::mem::take(&mut self.gained)
            .into_iter()
            .filter(|s| !self.digests.contains_key(s))
            .map(|s| (s, (s.0, [0; 32])))
            .collect();
        self.send_per_replica(gained, PULL_FROM, |slots| IndexRpc::Digests { slots });
    }

    /// Groups `items` by the other replicas of their slots (the first `per_slot` of them),
    /// and sends each replica its share, `DIGESTS_PER_PACKET` items a packet.
    fn send_per_replica<T: Clone>(&mut self, items: Vec<(Slot, T)>, per_slot: usize, rpc: impl Fn(Vec<T>) -> IndexRpc) {
        let mut per_peer: BTreeMap<NodeId, Vec<T>> = BTreeMap::new();
        for (s, item) in items {
            for r in self.map.replicas(s).iter().filter(|r| **r != self.me).take(per_slot) {
                per_peer.entry(*r).or_default().push(item.clone());
            }
        }
        self.send_chunks(per_peer, rpc);
    }

    /// Sends each peer its list, `DIGESTS_PER_PACKET` items a packet.
    fn send_chunks<T: Clone>(&mut self, per_peer: BTreeMap<NodeId, Vec<T>>, rpc: impl Fn(Vec<T>) -> IndexRpc) {
        for (peer, list) in per_peer {
            for chunk in list.chunks(DIGESTS_PER_PACKET) {
                self.send(peer, rpc(chunk.to_vec()));
            }
        }
    }

    /// A co-replica's digests: for each slot whose digest differs from ours, send our
    /// bucket digests.
    pub(super) fn compare_digests(&mut self, now_ms: u64, from: NodeId, slots: Vec<(u32, [u8; 32])>) {
        let differ: Vec<Slot> = slots
            .into_iter()
            // No store is the empty slot's digest, 0: a pull of a slot neither side holds
            // anything of is answered by nothing.
            .filter(|(s, d)| {
                self.answers_for(Slot(*s)) && self.digests.get(&Slot(*s)).map_or([0; 32], |o| o.whole) != *d
            })
            .map(|(s, _)| Slot(s))
            .collect();
        counter!("confab_index_antientropy_differing_slots_total", "node" => self.name.clone())
            .increment(differ.len() as u64);
        for slot in differ {
            // A Buckets is 64 digests: an answer larger than the question, so it is paid for.
            if !self.charge(from, (BUCKETS * 8 + 16) as u64, now_ms) {
                break;
            }
            let digests = self.bucket_list(slot);
            self.send(from, IndexRpc::Buckets { slot: slot.0, digests });
        }
    }

    /// What a store read costs: [`READ_COST`], or a sixteenth of the budget when that is
    /// smaller (a budget of a few KiB a second must still leave room for entries).
    fn read_cost(&self) -> u64 {
        READ_COST.min(self.cfg.repair_bytes_per_peer_per_sec / 16)
    }

    /// `to`'s repair budget (a full one for a member not sent anything yet).
    fn budget(&mut self, to: NodeId, now_ms: u64) -> &mut RepairBudget {
        let per_sec = self.cfg.repair_bytes_per_peer_per_sec;
        self.repair.entry(to).or_insert_with(|| RepairBudget::new(per_sec, now_ms))
    }

    /// Takes `bytes` from `to`'s repair budget if it holds them.
    fn charge(&mut self, to: NodeId, bytes: u64, now_ms: u64) -> bool {
        let ok = self.budget(to, now_ms).take(bytes, now_ms);
        if !ok {
            counter!("confab_index_repair_refused_requests_total", "node" => self.name.clone()).increment(1);
        }
        ok
    }

    /// Our bucket digests of a slot (all 0 without a store).
    fn buckets_of(&self, slot: Slot) -> [u64; BUCKETS] {
        self.digests.get(&slot).map_or([0; BUCKETS], |d| d.buckets)
    }

    /// The same, as a Buckets request carries them.
    fn bucket_list(&self, slot: Slot) -> Vec<[u8; 8]> {
        self.buckets_of(slot).iter().map(|b| b.to_le_bytes()).collect()
    }

    /// Forgets the keys asked more than [`WANT_AGAIN_MS`] ago.
    fn forget_wants(&mut self, now_ms: u64) {
        self.wants.retain(|_, at| now_ms.saturating_sub(*at) < WANT_AGAIN_MS);
    }

    /// Whether `to` may still be sent repair (a summary, entries): less than the smallest
    /// entry (a credential and a signature) left sends nothing, so requests that repeat
    /// cannot make this node read its stores for nothing.
    fn repair_room(&mut self, to: NodeId, now_ms: u64) -> bool {
        self.budget(to, now_ms).available(now_ms) >= 256
    }

    /// Whether this node takes part in repairing `slot`: it replicates it, or no longer
    /// does but still has its store (kept for a while, `index::former`), which answers
    /// while the new replicas fill (their pulls, the Digests of members whose view still
    /// counts this node a replica) though it asks for nothing itself.
    fn answers_for(&self, slot: Slot) -> bool {
        self.held.contains(&slot) || self.digests.contains_key(&slot)
    }

    /// A co-replica's bucket digests of a slot whose digests differ: summarise ours of the
    /// buckets that differ.
    pub(super) fn compare_buckets(&mut self, now_ms: u64, from: NodeId, slot: Slot, theirs: &[[u8; 8]]) {
        if !self.answers_for(slot) {
            return;
        }
        let ours = self.buckets_of(slot);
        let buckets = theirs
            .iter()
            .zip(ours)
            .enumerate()
            .filter(|(_, (t, o))| u64::from_le_bytes(**t) != *o)
            .fold(0u64, |mask, (i, _)| mask | 1 << i);
        counter!("confab_index_antientropy_differing_buckets_total", "node" => self.name.clone())
            .increment(u64::from(buckets.count_ones()));
        if buckets == 0 || !self.charge(from, self.read_cost(), now_ms) {
            return;
        }
        self.out.push_back(Output::Summarize { slot, buckets, to: from, then: Reconcile::Offer });
    }

    /// A page of a co-replica's summary: compare it with ours.
    pub(super) fn on_summary(
        &mut self,
        now_ms: u64,
        from: NodeId,
        slot: Slot,
        buckets: u64,
        answer: bool,
        items: Vec<([u8; 8], [u8; 8])>,
    ) {
        if !self.answers_for(slot) || !self.charge(from, self.read_cost(), now_ms) {
            return;
        }
        let theirs = items.into_iter().map(|(h, l)| (u64::from_le_bytes(h), u64::from_le_bytes(l))).collect();
        self.out.push_back(Output::Summarize { slot, buckets, to: from, then: Reconcile::Compare { theirs, answer } });
    }

    /// The summary an [`Output::Summarize`] read: offered, or compared with a member's.
    pub fn summarized(
        &mut self,
        now_ms: u64,
        slot: Slot,
        buckets: u64,
        to: NodeId,
        then: Reconcile,
        ours: Vec<(u64, u64)>,
    ) {
        match then {
            Reconcile::Offer => self.send_summary(now_ms, slot, buckets, to, true, &ours),
            Reconcile::Compare { theirs, answer } => {
                // Theirs is a page (at most 200 items), ours every key of the buckets:
                // look ours up in theirs rather than sort ours for every page.
                let mut theirs = theirs;
                theirs.sort_unstable();
                theirs.dedup();
                let mut present = vec![false; theirs.len()];
                for o in &ours {
                    if let Ok(i) = theirs.binary_search(o) {
                        present[i] = true;
                    }
                }
                if self.wants.len() > WANTS_REMEMBERED_MAX {
                    self.forget_wants(now_ms);
                    if self.wants.len() > WANTS_REMEMBERED_MAX {
                        self.wants.clear();
                    }
                }
                // A slot no longer replicated here answers but asks for nothing.
                let replica = self.held.contains(&slot);
                let wants = &mut self.wants;
                let wanted: Vec<[u8; 8]> = theirs
                    .iter()
                    .zip(&present)
                    .filter(|(_, held)| replica && !**held)
                    .map(|(i, _)| i)
                    .filter(|(h, l)| {
                        // Asked of a replica a moment ago: its answer is on the way.
                        let asked =
                            wants.get(&(slot, *h, *l)).is_some_and(|at| now_ms.saturating_sub(*at) < WANT_AGAIN_MS);
                        if !asked {
                            wants.insert((slot, *h, *l), now_ms);
                        }
                        !asked
                    })
                    .map(|(h, _)| h.to_le_bytes())
                    .collect();
                counter!("confab_index_antientropy_wanted_keys_total", "node" => self.name.clone())
                    .increment(wanted.len() as u64);
                for keys in wanted.chunks(SUMMARY_ITEMS_PER_PACKET) {
                    self.send(to, IndexRpc::Want { slot: slot.0, keys: keys.to_vec() });
                }
                if answer {
                    self.send_summary(now_ms, slot, buckets, to, false, &ours);
                }
            }
        }
    }

    /// Sends our summary of a slot's buckets in pages (one, empty, when we hold nothing
    /// there: that too is an answer), each within the member's repair budget: the pages
    /// the budget does not cover wait for a later round (a summary of 100,000 keys is
    /// more than a second's budget, and must still go out in part).
    fn send_summary(&mut self, now_ms: u64, slot: Slot, buckets: u64, to: NodeId, answer: bool, ours: &[(u64, u64)]) {
        let items: Vec<([u8; 8], [u8; 8])> = ours.iter().map(|(h, l)| (h.to_le_bytes(), l.to_le_bytes())).collect();
        let mut pages: Vec<&[([u8; 8], [u8; 8])]> = items.chunks(SUMMARY_ITEMS_PER_PACKET).collect();
        if pages.is_empty() {
            pages.push(&[]);
        }
        // Start each summary elsewhere, so capped rounds together cover a large one; and
        // spend at most half of what the budget holds on it, or the entries it leads to
        // would find none left, round after round.
        let start = self.rng.random_range(0..pages.len());
        pages.rotate_left(start);
        let room = self.budget(to, now_ms).available(now_ms);
        let mut spent = 0u64;
        for (i, page) in pages.into_iter().enumerate() {
            let bytes = 16 * page.len() as u64 + 16;
            spent += bytes;
            if (i > 0 && spent > room / 2) || !self.charge(to, bytes, now_ms) {
                counter!("confab_index_repair_skipped_summaries_total", "node" => self.name.clone()).increment(1);
                return;
            }
            let answer = answer && i == 0;
            self.send(to, IndexRpc::Summary { slot: slot.0, buckets, answer, items: page.to_vec() });
        }
    }

    /// A co-replica wants the entries of these keys of a slot we hold.
    pub(super) fn on_want(&mut self, now_ms: u64, from: NodeId, slot: Slot, keys: Vec<[u8; 8]>) {
        if !self.answers_for(slot)
            || keys.is_empty()
            || !self.repair_room(from, now_ms)
            || !self.charge(from, self.read_cost(), now_ms)
        {
            return;
        }
        let mut keys: Vec<u64> = keys.into_iter().map(u64::from_le_bytes).collect();
        keys.sort_unstable();
        keys.dedup();
        self.out.push_back(Output::Pick { slot, keys, to: from });
    }

    /// Asks the driver for the live entries of `slots` (those with a store here, each once),
    /// for `to`, unless `to` has no repair budget left: a Differ of a thousand slot ids in
    /// one packet must not make this node read and encode every store it has for nothing.
    pub(super) fn push_slots(&mut self, slots: Vec<Slot>, to: NodeId, now_ms: u64) {
        let slots: Vec<Slot> = slots.into_iter().collect::<std::collections::BTreeSet<_>>().into_iter().collect();
        if slots.is_empty() || !self.repair_room(to, now_ms) || !self.charge(to, self.read_cost(), now_ms) {
            return;
        }
        self.out.push_back(Output::Dump { slots, to });
    }

    /// The entries of a [`Output::Dump`] (key, encoded entry): sent to `to` within one
    /// answer's byte cap and the member's repair rate (merging is idempotent, so whatever
    /// it already holds costs only the bytes). Each answer starts at a random place in the
    /// dump, so capped rounds together still cover a large slot.
    pub fn dumped(&mut self, now_ms: u64, to: NodeId, mut entries: Vec<(String, Vec<u8>)>) {
        if entries.is_empty() {
            return;
        }
        let start = self.rng.random_range(0..entries.len());
        entries.rotate_left(start);
        let sizes: Vec<usize> = entries.iter().map(|(k, e)| k.len() + e.len()).collect();
        let cap = self.cfg.repair_bytes_per_answer_max;
        let n = repair::fit(&sizes, cap, self.budget(to, now_ms), now_ms);
        counter!("confab_index_repair_entries_total", "node" => self.name.clone()).increment(n as u64);
        if n < entries.len() {
            counter!("confab_index_repair_skipped_entries_total", "node" => self.name.clone())
                .increment((entries.len() - n) as u64);
            tracing::debug!(node = %self.name, to = %to, sent = n, skipped = entries.len() - n, "repair capped");
        }
        for (key, entry) in entries.into_iter().take(n) {
            let req = self.req();
            self.send(to, IndexRpc::Store { req, key, entry });
        }
    }
}
