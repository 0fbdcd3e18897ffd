//! Replicas keeping each other whole: digests every round, pulls by new replicas, and
//! slot contents pushed where digests differ, within per-answer and per-peer byte caps.

use super::{Node, Output, PULL_FROM};
use crate::index::repair::{self, RepairBudget};
use crate::index::rpc::{DIGESTS_PER_PACKET, IndexRpc};
use crate::index::{NodeId, Slot};
use metrics::counter;
use rand::RngExt;
use std::collections::BTreeMap;

impl Node {
    /// One anti-entropy round: send every co-replica the digests of the non-empty slots
    /// we share. Empty slots need no word: whoever holds data sends its digest, and an
    /// empty side answers that it differs.
    pub(super) fn anti_entropy(&mut self) {
        let shared: Vec<(Slot, (u32, [u8; 32]))> =
            self.digests.iter().filter(|(s, _)| self.held.contains(s)).map(|(s, d)| (*s, (s.0, *d))).collect();
        self.send_per_replica(shared, usize::MAX, |slots| IndexRpc::Digests { slots });
    }

    /// Asks the other replicas of every slot this node just became a replica of for what
    /// they hold. Anti-entropy alone would wait for a holder's next round, and a holder
    /// whose view changed after its hand-off round sends nothing until then. Two holders
    /// are enough to be sure of one answer; each pushes the whole slot, and anti-entropy
    /// brings whatever one of the others held alone.
    pub(super) fn pull(&mut self) {
        let gained: Vec<(Slot, u32)> = std::mem::take(&mut self.gained).into_iter().map(|s| (s, s.0)).collect();
        self.send_per_replica(gained, PULL_FROM, |slots| IndexRpc::Differ { slots });
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
        for (peer, list) in per_peer {
            for chunk in list.chunks(DIGESTS_PER_PACKET) {
                self.send(peer, rpc(chunk.to_vec()));
            }
        }
    }

    /// A co-replica's digests: where ours differ, send ours and ask for theirs.
    pub(super) fn compare_digests(&mut self, now_ms: u64, from: NodeId, slots: Vec<(u32, [u8; 32])>) {
        let differ: Vec<u32> = slots
            .into_iter()
            .filter(|(s, d)| self.held.contains(&Slot(*s)) && self.digests.get(&Slot(*s)) != Some(d))
            .map(|(s, _)| s)
            .collect();
        counter!("confab_index_antientropy_differing_slots_total", "node" => self.name.clone())
            .increment(differ.len() as u64);
        if differ.is_empty() {
            return;
        }
        self.push_slots(differ.iter().map(|s| Slot(*s)).collect(), from, now_ms);
        self.send(from, IndexRpc::Differ { slots: differ });
    }

    /// Asks the driver for the live entries of `slots` (those with a store here, each once),
    /// for `to`, unless `to` has no repair budget left: a Differ of a thousand slot ids in
    /// one packet must not make this node read and encode every store it has for nothing.
    pub(super) fn push_slots(&mut self, slots: Vec<Slot>, to: NodeId, now_ms: u64) {
        let slots: Vec<Slot> = slots.into_iter().collect::<std::collections::BTreeSet<_>>().into_iter().collect();
        let per_sec = self.cfg.repair_bytes_per_peer_per_sec;
        let room = self.repair.entry(to).or_insert_with(|| RepairBudget::new(per_sec, now_ms)).available(now_ms);
        // Less than the smallest entry (a credential and a signature) sends nothing.
        if slots.is_empty() || room < 256 {
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
        let (per_sec, cap) = (self.cfg.repair_bytes_per_peer_per_sec, self.cfg.repair_bytes_per_answer_max);
        let budget = self.repair.entry(to).or_insert_with(|| RepairBudget::new(per_sec, now_ms));
        let n = repair::fit(&sizes, cap, budget, now_ms);
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
