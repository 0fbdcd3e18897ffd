//! Slots and replicas: which super nodes hold which keys.
//!
//! A key maps to one of S slots by hash; each slot's R replicas are the live members
//! with the highest rendezvous score for it (highest random weight), so every super node
//! computes the same sets from the same view, and a membership change moves only the
//! assignments of the member that came or went. See `docs/index.md`.

use crate::crypto::KeyId;
use sha2::{Digest, Sha256};

/// A super node in the index: its credential's key id.
pub type NodeId = KeyId;

/// Slots by default.
pub const SLOTS_DEFAULT: u32 = 2048;
/// Slots per block (the unit of anti-entropy digests and status displays).
pub const SLOTS_PER_BLOCK: u32 = 8;
/// Replicas per slot by default.
pub const REPLICAS_DEFAULT: usize = 10;

/// A slot number.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Slot(pub u32);

impl Slot {
    /// The block this slot belongs to.
    pub fn block(self) -> u32 {
        self.0 / SLOTS_PER_BLOCK
    }
}

/// Why a slot space is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("the number of slots must be a positive multiple of {SLOTS_PER_BLOCK} up to 65536, not {0}")]
pub struct SlotCountError(pub u32);

/// The slot space: how many slots there are.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SlotSpace {
    slots: u32,
}

impl SlotSpace {
    /// A space of `slots` slots (a positive multiple of 8).
    pub fn new(slots: u32) -> Result<Self, SlotCountError> {
        if slots == 0 || !slots.is_multiple_of(SLOTS_PER_BLOCK) || slots > 65_536 {
            return Err(SlotCountError(slots));
        }
        Ok(Self { slots })
    }

    /// How many slots.
    pub fn len(&self) -> u32 {
        self.slots
    }

    /// Never true: a space has at least one block.
    pub fn is_empty(&self) -> bool {
        false
    }

    /// The slot of a key (a canonical username, or a search token key).
    pub fn slot_of(&self, key: &str) -> Slot {
        let d = Sha256::new().chain_update(b"confab/v1/slot\0").chain_update(key.as_bytes()).finalize();
        let h = u64::from_be_bytes(d[..8].try_into().expect("8 bytes"));
        Slot((h % u64::from(self.slots)) as u32)
    }

    /// Every slot.
    pub fn all(&self) -> impl Iterator<Item = Slot> {
        (0..self.slots).map(Slot)
    }
}

impl Default for SlotSpace {
    fn default() -> Self {
        Self { slots: SLOTS_DEFAULT }
    }
}

/// The rendezvous score of `node` for `slot`: higher is closer.
pub fn score(slot: Slot, node: NodeId) -> u64 {
    let d = Sha256::new()
        .chain_update(b"confab/v1/hrw\0")
        .chain_update(slot.0.to_be_bytes())
        .chain_update(node.0)
        .finalize();
    u64::from_be_bytes(d[..8].try_into().expect("8 bytes"))
}

/// Every member, closest to `slot` first (ties, which need a hash collision, by id).
pub fn ranked(slot: Slot, members: &[NodeId]) -> Vec<NodeId> {
    let mut v: Vec<(u64, NodeId)> = members.iter().map(|m| (score(slot, *m), *m)).collect();
    v.sort_unstable_by(|a, b| b.cmp(a));
    v.dedup_by_key(|(_, m)| *m);
    v.into_iter().map(|(_, m)| m).collect()
}

/// The replicas of `slot`: the `r` closest members (all of them when fewer are alive).
pub fn replicas(slot: Slot, members: &[NodeId], r: usize) -> Vec<NodeId> {
    let mut v = ranked(slot, members);
    v.truncate(r);
    v
}

/// Every slot's replica set for one membership view, computed once per view change.
#[derive(Debug, Clone)]
pub struct SlotMap {
    space: SlotSpace,
    r: usize,
    members: Vec<NodeId>,
    replicas: Vec<Vec<NodeId>>,
}

impl SlotMap {
    /// The map for `members` (order does not matter).
    pub fn new(space: SlotSpace, r: usize, members: &[NodeId]) -> Self {
        let mut members = members.to_vec();
        members.sort_unstable();
        members.dedup();
        let replicas = space.all().map(|s| replicas(s, &members, r)).collect();
        Self { space, r, members, replicas }
    }

    /// The slot space.
    pub fn space(&self) -> SlotSpace {
        self.space
    }

    /// Replicas per slot asked for (fewer when there are fewer members).
    pub fn replication(&self) -> usize {
        self.r
    }

    /// The members this map was built from, sorted.
    pub fn members(&self) -> &[NodeId] {
        &self.members
    }

    /// The replicas of a slot, closest first.
    pub fn replicas(&self, slot: Slot) -> &[NodeId] {
        &self.replicas[slot.0 as usize]
    }

    /// The slots `node` replicates.
    pub fn held_by(&self, node: NodeId) -> Vec<Slot> {
        self.space.all().filter(|s| self.replicas(*s).contains(&node)).collect()
    }

    /// How many (slot, replica) assignments differ between two maps of the same space.
    pub fn moved_from(&self, before: &SlotMap) -> usize {
        self.space.all().map(|s| self.replicas(s).iter().filter(|n| !before.replicas(s).contains(n)).count()).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn nodes(seed: u64, n: usize) -> Vec<NodeId> {
        (0..n as u64)
            .map(|i| {
                let d = Sha256::digest([seed.to_be_bytes(), i.to_be_bytes()].concat());
                KeyId(d[..8].try_into().unwrap())
            })
            .collect()
    }

    #[test]
    fn slots_and_blocks() {
        let s = SlotSpace::default();
        assert_eq!(s.len(), 2048);
        assert!(s.slot_of("alice").0 < 2048);
        assert_eq!(s.slot_of("alice"), s.slot_of("alice"));
        assert_eq!(Slot(17).block(), 2);
        assert!(SlotSpace::new(100).is_err());
        assert!(SlotSpace::new(0).is_err());
        assert!(SlotSpace::new(64).is_ok());
    }

    #[test]
    fn fewer_members_than_replicas() {
        let m = nodes(1, 3);
        let map = SlotMap::new(SlotSpace::default(), 10, &m);
        assert!(map.space().all().all(|s| map.replicas(s).len() == 3));
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(12))]

        /// Every member holds within ±20% of the mean number of slots.
        #[test]
        fn balanced(seed in any::<u64>(), n in 11usize..=40) {
            let m = nodes(seed, n);
            let map = SlotMap::new(SlotSpace::default(), REPLICAS_DEFAULT, &m);
            let mean = 2048.0 * REPLICAS_DEFAULT as f64 / n as f64;
            for node in &m {
                let held = map.held_by(*node).len() as f64;
                prop_assert!((held - mean).abs() <= 0.2 * mean, "{} holds {} slots, mean {}", node, held, mean);
            }
        }

        /// A join moves about 1/N of the assignments, all to the new member; a leave moves
        /// only the leaver's.
        #[test]
        fn a_join_moves_few(seed in any::<u64>(), n in 10usize..=60) {
            let m = nodes(seed, n + 1);
            let before = SlotMap::new(SlotSpace::default(), REPLICAS_DEFAULT, &m[..n]);
            let after = SlotMap::new(SlotSpace::default(), REPLICAS_DEFAULT, &m);
            let moved = after.moved_from(&before);
            let total = 2048 * REPLICAS_DEFAULT;
            prop_assert!(moved as f64 <= 1.25 * total as f64 / n as f64, "{} of {} moved", moved, total);
            for s in after.space().all() {
                for r in after.replicas(s) {
                    prop_assert!(before.replicas(s).contains(r) || *r == m[n]);
                }
            }
            // Leaving again restores the old map exactly.
            prop_assert_eq!(before.moved_from(&after), moved);
        }
    }
}
