//! The membership a node follows, and its slot map, made once per view however many nodes
//! share it.
//!
//! A map at 20,000 members holds half a megabyte and costs about a millisecond to update;
//! a simulation of 20,000 nodes whose views mostly agree must not hold 20,000 copies or
//! build each 20,000 times, and a node must take a new view without copying 20,000 ids.

use crate::index::{NodeId, SlotMap};
use std::sync::{Arc, OnceLock};

/// A view a node follows: its members, and their slot map, made on first ask.
pub trait Members: Send + Sync {
    /// The members, sorted, once each.
    fn ids(&self) -> &[NodeId];
    /// The slot map of these members; `prev` (a map of the same space and replication)
    /// is where a first ask builds it from.
    fn slot_map(&self, prev: &SlotMap) -> Arc<SlotMap>;
}

/// A list of members with its slot map made on first ask.
#[derive(Debug)]
pub struct SharedView {
    ids: Vec<NodeId>,
    map: OnceLock<Arc<SlotMap>>,
}

impl SharedView {
    /// The view of `members` (any order, repeats allowed).
    pub fn new(members: &[NodeId]) -> Arc<Self> {
        let mut ids = members.to_vec();
        ids.sort_unstable();
        ids.dedup();
        Arc::new(Self { ids, map: OnceLock::new() })
    }
}

impl Members for SharedView {
    fn ids(&self) -> &[NodeId] {
        &self.ids
    }

    fn slot_map(&self, prev: &SlotMap) -> Arc<SlotMap> {
        self.map
            .get_or_init(|| {
                let started = std::time::Instant::now();
                let map = prev.update(&self.ids);
                metrics::histogram!("confab_index_slot_map_build_seconds").record(started.elapsed().as_secs_f64());
                Arc::new(map)
            })
            .clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crypto::KeyId;
    use crate::index::SlotSpace;

    fn ids(n: u8) -> Vec<NodeId> {
        (0..n).rev().map(|i| KeyId([i; 8])).collect()
    }

    #[test]
    fn one_map_per_view_equal_to_a_fresh_build() {
        let empty = SlotMap::new(SlotSpace::default(), 3, &[]);
        let v = SharedView::new(&ids(20));
        let a = v.slot_map(&empty);
        assert!(Arc::ptr_eq(&a, &v.slot_map(&empty)), "the second node gets the first's map");
        let w = SharedView::new(&ids(19));
        let b = w.slot_map(&a);
        let fresh = SlotMap::new(SlotSpace::default(), 3, &ids(19));
        assert_eq!(w.ids(), fresh.members());
        for s in SlotSpace::default().all() {
            assert_eq!(b.replicas(s), fresh.replicas(s));
        }
    }
}
