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

/// SHA-256's initial hash value (FIPS 180-4, 5.3.3).
const SHA256_IV: [u32; 8] =
    [0x6a09e667, 0xbb67ae85, 0x3c6ef372, 0xa54ff53a, 0x510e527f, 0x9b05688c, 0x1f83d9ab, 0x5be0cd19];
/// Domain tag of rendezvous scores.
const HRW_TAG: &[u8; 14] = b"confab/v1/hrw\0";

/// The rendezvous score of `node` for `slot`: higher is closer. It is the first 8 bytes
/// of SHA-256(tag ‖ slot ‖ node), computed as the one padded block it is, straight
/// through the compression function: this is the inner loop of every slot-map build
/// (S·N scores), and the generic hashing layer costs several times the compression.
pub fn score(slot: Slot, node: NodeId) -> u64 {
    const LEN: usize = 14 + 4 + 8;
    let mut block = [0u8; 64];
    block[..14].copy_from_slice(HRW_TAG);
    block[14..18].copy_from_slice(&slot.0.to_be_bytes());
    block[18..LEN].copy_from_slice(&node.0);
    block[LEN] = 0x80;
    block[56..].copy_from_slice(&((LEN as u64) * 8).to_be_bytes());
    let mut state = SHA256_IV;
    sha2::block_api::compress256(&mut state, &[block]);
    (u64::from(state[0]) << 32) | u64::from(state[1])
}

/// Every member, closest to `slot` first (ties, which need a hash collision, by id).
pub fn ranked(slot: Slot, members: &[NodeId]) -> Vec<NodeId> {
    let mut v: Vec<(u64, NodeId)> = members.iter().map(|m| (score(slot, *m), *m)).collect();
    v.sort_unstable_by(|a, b| b.cmp(a));
    v.dedup_by_key(|(_, m)| *m);
    v.into_iter().map(|(_, m)| m).collect()
}

/// The `k` members closest to `slot`, closest first (as the head of [`ranked`]), without
/// sorting the rest: a lookup asks a few dozen of a view that may hold 20,000.
pub fn closest(slot: Slot, members: &[NodeId], k: usize) -> Vec<NodeId> {
    let mut v: Vec<(u64, NodeId)> = members.iter().map(|m| (score(slot, *m), *m)).collect();
    if k < v.len() {
        v.select_nth_unstable_by(k, |a, b| b.cmp(a));
        v.truncate(k);
    }
    v.sort_unstable_by(|a, b| b.cmp(a));
    let before = v.len();
    v.dedup_by_key(|(_, m)| *m);
    if v.len() < before {
        // A member named twice took a place among the closest: rank them all.
        let mut all = ranked(slot, members);
        all.truncate(k);
        return all;
    }
    v.into_iter().map(|(_, m)| m).collect()
}

/// The replicas of `slot`: the `r` closest members (all of them when fewer are alive).
pub fn replicas(slot: Slot, members: &[NodeId], r: usize) -> Vec<NodeId> {
    let mut v = ranked(slot, members);
    v.truncate(r);
    v
}

fn sorted(members: &[NodeId]) -> Vec<NodeId> {
    let mut v = members.to_vec();
    v.sort_unstable();
    v.dedup();
    v
}

/// The `r` closest of `members` to `slot` with their scores, closest first (as [`ranked`]).
fn top(slot: Slot, members: &[NodeId], r: usize) -> (Vec<NodeId>, Vec<u64>) {
    let (mut ids, mut scores) = (Vec::with_capacity(r), Vec::with_capacity(r));
    for m in members {
        insert(&mut ids, &mut scores, (score(slot, *m), *m), r);
    }
    (ids, scores)
}

/// Puts `(score, node)` in its place in a best-first list of at most `r`.
fn insert(ids: &mut Vec<NodeId>, scores: &mut Vec<u64>, (sc, node): (u64, NodeId), r: usize) {
    let at = ids.iter().zip(scores.iter()).position(|(n, s)| (sc, node) > (*s, *n)).unwrap_or(ids.len());
    if at < r {
        ids.insert(at, node);
        scores.insert(at, sc);
        ids.truncate(r);
        scores.truncate(r);
    }
}

/// Every slot's replica set for one membership view, computed once per view change.
#[derive(Debug, Clone)]
pub struct SlotMap {
    space: SlotSpace,
    r: usize,
    members: Vec<NodeId>,
    replicas: Vec<Vec<NodeId>>,
    /// Each replica's score, beside it: what a joining member must beat.
    scores: Vec<Vec<u64>>,
    /// The slots each member replicates, made on first ask: every node of a process that
    /// shares this map asks once for itself.
    held: std::sync::OnceLock<std::collections::HashMap<NodeId, Vec<Slot>>>,
}

impl SlotMap {
    /// The map for `members` (order does not matter): S·N rendezvous hashes.
    pub fn new(space: SlotSpace, r: usize, members: &[NodeId]) -> Self {
        let members = sorted(members);
        let (replicas, scores) = space.all().map(|s| top(s, &members, r)).unzip();
        Self { space, r, members, replicas, scores, held: Default::default() }
    }

    /// The map for `members`, built from this one: when a few members came or went it
    /// costs about S·(R + joined) hashes instead of S·N, so a large cluster can follow
    /// every view change. The result is the same as [`SlotMap::new`]'s.
    pub fn update(&self, members: &[NodeId]) -> SlotMap {
        let members = sorted(members);
        let gone: Vec<NodeId> = self.members.iter().filter(|m| members.binary_search(m).is_err()).copied().collect();
        let joined: Vec<NodeId> = members.iter().filter(|m| self.members.binary_search(m).is_err()).copied().collect();
        if gone.is_empty() && joined.is_empty() {
            return self.clone();
        }
        // A slot that lost a replica is ranked again over every member (N hashes); about
        // S·R/N slots per departure, so past a few departures a fresh map costs the same.
        if gone.len().saturating_mul(self.r) >= members.len().max(1) || joined.len().saturating_mul(2) >= members.len()
        {
            return SlotMap::new(self.space, self.r, &members);
        }
        let mut next = SlotMap {
            members,
            replicas: self.replicas.clone(),
            scores: self.scores.clone(),
            held: Default::default(),
            ..*self
        };
        for s in self.space.all() {
            let i = s.0 as usize;
            if next.replicas[i].iter().any(|n| gone.contains(n)) {
                (next.replicas[i], next.scores[i]) = top(s, &next.members, self.r);
                continue;
            }
            // Nobody left this slot's replicas, so the new top R are among them and the
            // members that joined.
            for n in &joined {
                insert(&mut next.replicas[i], &mut next.scores[i], (score(s, *n), *n), self.r);
            }
        }
        next
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
        let held = self.held.get_or_init(|| {
            let mut by: std::collections::HashMap<NodeId, Vec<Slot>> = Default::default();
            for s in self.space.all() {
                for n in self.replicas(s) {
                    by.entry(*n).or_default().push(s);
                }
            }
            by
        });
        held.get(&node).cloned().unwrap_or_default()
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

    proptest! {
        #[test]
        fn closest_is_the_head_of_the_ranking(seed in any::<u64>(), n in 0usize..200, k in 0usize..40, twice in 0usize..3) {
            let mut m = nodes(seed, n);
            m.extend(m.clone().into_iter().take(twice));
            let slot = Slot((seed % 2048) as u32);
            let mut want = ranked(slot, &m);
            want.truncate(k);
            prop_assert_eq!(closest(slot, &m, k), want);
        }
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

    /// The score is SHA-256 over tag, slot and node, as docs/index.md defines it.
    #[test]
    fn score_is_sha256_of_the_tagged_pair() {
        for (slot, node) in [(0u32, [0u8; 8]), (2047, [0xff; 8]), (17, *b"sn-node1")] {
            let d = Sha256::new().chain_update(HRW_TAG).chain_update(slot.to_be_bytes()).chain_update(node).finalize();
            assert_eq!(score(Slot(slot), KeyId(node)), u64::from_be_bytes(d[..8].try_into().unwrap()));
        }
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

        /// Following a view step by step gives the map a fresh build gives, whatever
        /// joins and leaves (none, one, several, most at once) the steps hold.
        #[test]
        fn update_equals_a_fresh_map(seed in any::<u64>(), steps in proptest::collection::vec(proptest::collection::vec(0usize..40, 0..12), 1..8)) {
            let pool = nodes(seed, 40);
            let space = SlotSpace::new(256).unwrap();
            let mut alive = [false; 40];
            alive[..20].fill(true);
            let mut map = SlotMap::new(space, 4, &pool[..20]);
            for flips in steps {
                for f in flips {
                    alive[f] = !alive[f];
                }
                let members: Vec<NodeId> = pool.iter().zip(&alive).filter(|(_, a)| **a).map(|(n, _)| *n).collect();
                map = map.update(&members);
                let fresh = SlotMap::new(space, 4, &members);
                prop_assert_eq!(map.members(), fresh.members());
                for s in space.all() {
                    prop_assert_eq!(map.replicas(s), fresh.replicas(s));
                    prop_assert_eq!(map.replicas(s), &replicas(s, &members, 4)[..]);
                }
            }
        }
    }
}
