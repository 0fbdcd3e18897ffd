//! Slot maps shared between the nodes of one process that see the same membership.
//!
//! A map at 20,000 members holds half a megabyte and costs about a millisecond to update;
//! a simulation of 20,000 nodes whose views mostly agree must not hold 20,000 copies or
//! build each 20,000 times. A production node has a cache of its own: its last map.

use crate::index::{NodeId, SlotMap, SlotSpace};
use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

/// Recently built slot maps, the newest first, looked up by member set.
#[derive(Debug, Clone)]
pub struct Maps {
    inner: Arc<Mutex<Inner>>,
}

#[derive(Debug)]
struct Inner {
    keep: usize,
    maps: VecDeque<(u64, Arc<SlotMap>)>,
    built: u64,
    build_nanos: Vec<u64>,
}

impl Maps {
    /// A cache keeping the `keep` latest maps.
    pub fn new(keep: usize) -> Self {
        let inner = Inner { keep: keep.max(1), maps: VecDeque::new(), built: 0, build_nanos: Vec::new() };
        Self { inner: Arc::new(Mutex::new(inner)) }
    }

    /// The map for `members` (sorted, deduplicated), from the cache or built from `prev`.
    pub fn get(&self, prev: &SlotMap, members: &[NodeId]) -> Arc<SlotMap> {
        let h = fingerprint(prev.space(), prev.replication(), members);
        let mut inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(at) = inner.maps.iter().position(|(k, m)| *k == h && m.members() == members) {
            let hit = inner.maps.remove(at).expect("found");
            inner.maps.push_front(hit.clone());
            return hit.1;
        }
        // Built outside the lock would let two nodes build the same map; inside, the second
        // finds it. A production node is alone with its cache.
        let started = std::time::Instant::now();
        let map = Arc::new(prev.update(members));
        let took = started.elapsed().as_nanos() as u64;
        inner.built += 1;
        inner.build_nanos.push(took);
        inner.maps.push_front((h, map.clone()));
        let keep = inner.keep;
        inner.maps.truncate(keep);
        metrics::histogram!("confab_index_slot_map_build_seconds").record(took as f64 / 1e9);
        map
    }

    /// Maps built so far, and how long each took (real time, nanoseconds); the list is
    /// emptied.
    pub fn take_builds(&self) -> (u64, Vec<u64>) {
        let mut inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        (inner.built, std::mem::take(&mut inner.build_nanos))
    }
}

/// The members in the form every map's list has: sorted, once each.
pub fn normalized(members: &[NodeId]) -> Vec<NodeId> {
    let mut v = members.to_vec();
    v.sort_unstable();
    v.dedup();
    v
}

fn fingerprint(space: SlotSpace, r: usize, members: &[NodeId]) -> u64 {
    use std::hash::{Hash, Hasher};
    // A fixed-key hasher: the same members give the same key in every run.
    let mut h = std::hash::DefaultHasher::new();
    (space.len(), r, members).hash(&mut h);
    h.finish()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crypto::KeyId;

    fn ids(n: u8) -> Vec<NodeId> {
        (0..n).map(|i| KeyId([i; 8])).collect()
    }

    #[test]
    fn equal_views_share_one_map_and_the_result_equals_a_fresh_build() {
        let maps = Maps::new(4);
        let empty = SlotMap::new(SlotSpace::default(), 3, &[]);
        let a = maps.get(&empty, &ids(20));
        let b = maps.get(&empty, &ids(20));
        assert!(Arc::ptr_eq(&a, &b), "the second node finds the first's map");
        let c = maps.get(&a, &ids(19));
        let fresh = SlotMap::new(SlotSpace::default(), 3, &ids(19));
        for s in SlotSpace::default().all() {
            assert_eq!(c.replicas(s), fresh.replicas(s));
        }
        assert_eq!(maps.take_builds().0, 2);
    }
}
