//! Views: the sorted list of members a node believes alive, shared between nodes that
//! agree (at 20,000 members one view is 160 kB), each with its slot map computed once.
//!
//! Views are interned by a fingerprint, the XOR of a 64-bit hash of each member: it
//! follows an insert or a remove in O(1), so finding the shared copy of a node's next
//! view costs nothing like comparing 20,000 ids. Two different views sharing one
//! fingerprint has odds of 2⁻⁶⁴ per pair; debug builds compare the contents anyway.

use confab::index::{NodeId, SlotMap, SlotSpace};
use std::collections::BTreeMap;
use std::sync::{Arc, OnceLock, Weak};

/// One believed membership, itself included, sorted.
#[derive(Debug)]
pub struct View {
    ids: Vec<NodeId>,
    fp: u64,
    map: OnceLock<Arc<SlotMap>>,
}

fn hash(id: &NodeId) -> u64 {
    // Ids are already hashes: this only spreads them.
    super::rng::mix(u64::from_be_bytes(id.0))
}

impl View {
    /// The members, sorted.
    pub fn ids(&self) -> &[NodeId] {
        &self.ids
    }

    /// How many members.
    pub fn len(&self) -> usize {
        self.ids.len()
    }

    /// Whether it is empty.
    pub fn is_empty(&self) -> bool {
        self.ids.is_empty()
    }

    /// Whether `id` is in it.
    pub fn contains(&self, id: &NodeId) -> bool {
        self.ids.binary_search(id).is_ok()
    }

    /// Its slot map, if computed.
    pub fn slot_map(&self) -> Option<&Arc<SlotMap>> {
        self.map.get()
    }

    /// Its slot map, made by `make` if not computed yet.
    pub fn slot_map_or(&self, make: impl FnOnce() -> SlotMap) -> Arc<SlotMap> {
        self.map.get_or_init(|| Arc::new(make())).clone()
    }
}

/// The shared views and the CPU their slot maps cost.
pub struct Views {
    table: BTreeMap<u64, Weak<View>>,
    inserts: u64,
    space: SlotSpace,
    replicas: usize,
    /// Whether to compute slot maps (off while the cluster forms).
    pub maps: bool,
    /// CPU microseconds of each slot-map computation, for the report.
    pub rebuild_us: hdrhistogram::Histogram<u64>,
    /// CPU microseconds of each full build (a node's first map).
    pub build_us: hdrhistogram::Histogram<u64>,
    /// Slot maps computed.
    pub rebuilds: u64,
    /// Distinct views alive at once, at most.
    pub peak_distinct: usize,
}

impl Views {
    /// An empty table; slot maps of `space` with `replicas` per slot.
    pub fn new(space: SlotSpace, replicas: usize) -> Self {
        Self {
            table: BTreeMap::new(),
            inserts: 0,
            space,
            replicas,
            maps: false,
            rebuild_us: hdrhistogram::Histogram::new(3).expect("valid"),
            build_us: hdrhistogram::Histogram::new(3).expect("valid"),
            rebuilds: 0,
            peak_distinct: 0,
        }
    }

    /// The shared view of exactly `ids` (any order, duplicates removed).
    pub fn of(&mut self, ids: &[NodeId]) -> Arc<View> {
        let mut ids = ids.to_vec();
        ids.sort_unstable();
        ids.dedup();
        let fp = ids.iter().fold(0, |a, i| a ^ hash(i));
        self.find_or(fp, || ids)
    }

    /// `v` with `id` added (`up`) or removed: the shared copy if one exists.
    pub fn with(&mut self, v: &Arc<View>, id: NodeId, up: bool) -> Arc<View> {
        if v.contains(&id) == up {
            return v.clone();
        }
        let fp = v.fp ^ hash(&id);
        self.find_or(fp, || {
            let mut ids = v.ids.clone();
            match ids.binary_search(&id) {
                Ok(i) if !up => {
                    ids.remove(i);
                }
                Err(i) if up => ids.insert(i, id),
                _ => {}
            }
            ids
        })
    }

    fn find_or(&mut self, fp: u64, make: impl FnOnce() -> Vec<NodeId>) -> Arc<View> {
        if let Some(v) = self.table.get(&fp).and_then(Weak::upgrade) {
            debug_assert_eq!(v.ids, make(), "fingerprint collision");
            return v;
        }
        let v = Arc::new(View { ids: make(), fp, map: OnceLock::new() });
        self.table.insert(fp, Arc::downgrade(&v));
        self.inserts += 1;
        if self.inserts.is_multiple_of(4096) {
            self.table.retain(|_, w| w.strong_count() > 0);
        }
        self.peak_distinct = self.peak_distinct.max(self.table.len());
        v
    }

    /// Makes sure `next` has a slot map, built from `prev`'s when it has one (the
    /// incremental update a super node runs on a view change), timing the real CPU.
    pub fn map_for(&mut self, next: &Arc<View>, prev: Option<&Arc<View>>) {
        if !self.maps || next.map.get().is_some() {
            return;
        }
        let t0 = thread_cpu_us();
        let (map, h) = match prev.and_then(|p| p.map.get()) {
            Some(m) => (m.update(&next.ids), &mut self.rebuild_us),
            None => (SlotMap::new(self.space, self.replicas, &next.ids), &mut self.build_us),
        };
        let took = thread_cpu_us().saturating_sub(t0);
        let _ = next.map.set(Arc::new(map));
        self.rebuilds += 1;
        let _ = h.record(took.max(1));
    }

    /// Distinct views alive now.
    pub fn distinct(&mut self) -> usize {
        self.table.retain(|_, w| w.strong_count() > 0);
        self.table.len()
    }
}

/// CPU time of the calling thread, in microseconds.
pub fn thread_cpu_us() -> u64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: clock_gettime writes one timespec we own.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    (ts.tv_sec as u64) * 1_000_000 + (ts.tv_nsec as u64) / 1_000
}

/// CPU time of the whole process, in microseconds.
pub fn process_cpu_us() -> u64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: clock_gettime writes one timespec we own.
    unsafe { libc::clock_gettime(libc::CLOCK_PROCESS_CPUTIME_ID, &mut ts) };
    (ts.tv_sec as u64) * 1_000_000 + (ts.tv_nsec as u64) / 1_000
}

#[cfg(test)]
mod tests {
    use super::*;
    use confab::crypto::KeyId;

    fn id(i: u8) -> NodeId {
        KeyId([i; 8])
    }

    #[test]
    fn equal_views_share_one_copy_and_one_map() {
        let mut vs = Views::new(SlotSpace::new(64).unwrap(), 3);
        vs.maps = true;
        let a = vs.of(&[id(3), id(1), id(2)]);
        let b = vs.of(&[id(1), id(2)]);
        let b3 = vs.with(&b, id(3), true);
        assert!(Arc::ptr_eq(&a, &b3), "the same members, one copy");
        assert_eq!(a.ids(), &[id(1), id(2), id(3)]);
        vs.map_for(&b, None);
        vs.map_for(&a, Some(&b));
        vs.map_for(&b3, Some(&b));
        assert_eq!(vs.rebuilds, 2, "b3 is a: its map was already there");
        assert_eq!(a.slot_map().unwrap().members(), a.ids());
        let back = vs.with(&a, id(3), false);
        assert!(Arc::ptr_eq(&back, &b));
        drop((a, b3));
        assert_eq!(vs.distinct(), 1, "b and back are one view, a is gone");
    }
}
