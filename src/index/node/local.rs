//! A node's slot stores in memory, driven in the caller's thread: what the simulator and
//! tests run in place of the slot actors. Store reads and writes are answered at once;
//! sends, timers and lookup results go back to the caller.

use super::{Checked, Node, Output, PutResult, Verify};
use crate::index::former::Former;
use crate::index::store::{Merge, SlotStore, past_keep};
use crate::index::{Entry, Slot};
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

/// How often stores drop expired entries (as a slot actor does).
const EXPIRE_EVERY_MS: u64 = 60_000;

/// One node's slot stores.
#[derive(Debug)]
pub struct LocalStores {
    stores: BTreeMap<Slot, SlotStore>,
    /// The slots the node replicates: each gets a store at its first write. A node that
    /// has not heard of the others yet replicates every slot, and a simulation of
    /// thousands of nodes would otherwise open every slot on every node at its start.
    held: BTreeSet<Slot>,
    entries_max: usize,
    retention_secs: u64,
    former: Former,
    expired_at: u64,
}

impl LocalStores {
    /// No stores yet; each will hold `entries_max` keys for `retention_secs`.
    pub fn new(entries_max: usize, retention_secs: u64) -> Self {
        Self {
            stores: BTreeMap::new(),
            held: BTreeSet::new(),
            entries_max,
            retention_secs,
            former: Former::default(),
            expired_at: 0,
        }
    }

    /// The store of a slot, if there is one here.
    pub fn store(&self, slot: Slot) -> Option<&SlotStore> {
        self.stores.get(&slot)
    }

    /// Stores open (slots replicated that had a write, and former ones not yet retired).
    pub fn len(&self) -> usize {
        self.stores.len()
    }

    /// No store at all.
    pub fn is_empty(&self) -> bool {
        self.stores.is_empty()
    }

    /// Keys in the fullest store.
    pub fn largest(&self) -> usize {
        self.stores.values().map(SlotStore::len).max().unwrap_or(0)
    }

    /// Keys held over every store.
    pub fn keys(&self) -> usize {
        self.stores.values().map(SlotStore::len).sum()
    }

    /// Sessions (entries) held over every store: more than the keys where users have
    /// several devices.
    pub fn sessions(&self) -> usize {
        self.stores.values().map(|st| st.iter().count()).sum()
    }

    /// Carries out `node`'s store operations until it has only other things to ask:
    /// those are returned, in order. `check` stands for the signature checks, `share`
    /// turns an entry to store into a shared one (a simulator keeps one copy per entry).
    pub fn drive(
        &mut self,
        now_ms: u64,
        node: &mut Node,
        mut check: impl FnMut(&Verify) -> Checked,
        mut share: impl FnMut(Entry) -> Arc<Entry>,
    ) -> Vec<Output> {
        if now_ms.saturating_sub(self.expired_at) >= EXPIRE_EVERY_MS {
            self.expired_at = now_ms;
            self.expire(now_ms, node);
        }
        let mut rest = Vec::new();
        while let Some(out) = node.poll() {
            match out {
                Output::Rebuilt { held, .. } => {
                    self.held = held.into_iter().collect();
                    let held = &self.held;
                    self.former.update(now_ms, self.stores.keys().map(|s| s.0), |s| held.contains(&Slot(s)));
                }
                Output::Put { slot, key, entry, done } => {
                    // As a slot actor: an entry already past its keep is not held (checked
                    // first, so it opens no store).
                    let stale = past_keep(&key, entry.last_seen, now_ms / 1000, self.retention_secs);
                    let result = if stale && self.writable(slot) {
                        PutResult::Merged(Merge::Stale)
                    } else {
                        match self.store_for_write(slot) {
                            Some(st) => {
                                let m = st.merge(&key, share(entry));
                                node.slot_changed(slot, st.reported());
                                PutResult::Merged(m)
                            }
                            None => PutResult::NoStore,
                        }
                    };
                    node.put_done(now_ms, done, result);
                }
                Output::Get { slot, key, purpose } => {
                    let e = self.stores.get(&slot).and_then(|st| st.get(&key).cloned());
                    node.got(now_ms, purpose, e);
                }
                Output::Dump { slots, to } => {
                    let now = now_ms / 1000;
                    let entries = slots
                        .iter()
                        .filter_map(|s| self.stores.get(s))
                        .flat_map(|st| st.live(now, self.retention_secs))
                        .map(|(k, e)| (k, e.encode()))
                        .collect();
                    node.dumped(now_ms, to, entries);
                }
                Output::Summarize { slot, buckets, to, then } => {
                    let ours = match self.stores.get_mut(&slot) {
                        Some(st) => {
                            if st.expire(now_ms / 1000, self.retention_secs) > 0 {
                                node.slot_changed(slot, st.reported());
                            }
                            st.summary_for(buckets, then.only().as_deref())
                        }
                        None => Vec::new(),
                    };
                    node.summarized(now_ms, slot, buckets, to, then, ours);
                }
                Output::Pick { slot, keys, to } => {
                    let entries = self.stores.get(&slot).map_or_else(Vec::new, |st| {
                        st.pick(&keys, now_ms / 1000, self.retention_secs)
                            .into_iter()
                            .map(|(k, e)| (k, e.encode()))
                            .collect()
                    });
                    node.dumped(now_ms, to, entries);
                }
                Output::Posted { slot, prefix, limit, purpose } => {
                    let users = self
                        .stores
                        .get(&slot)
                        .map_or_else(Vec::new, |st| st.posted(&prefix, now_ms / 1000, self.retention_secs, limit));
                    node.posted(now_ms, purpose, users);
                }
                Output::Verify(job) => {
                    let checked = check(&job);
                    node.verified(now_ms, *job, checked);
                }
                other => rest.push(other),
            }
        }
        rest
    }

    /// Puts an entry straight into the store of a slot held here (a simulation's warm
    /// start: the state a converged cluster would be in).
    pub fn seed(&mut self, node: &mut Node, slot: Slot, key: &str, entry: Arc<Entry>) {
        if let Some(st) = self.store_for_write(slot) {
            st.merge(key, entry);
            node.slot_changed(slot, st.reported());
        }
    }

    /// Whether a write to `slot` has a store to go to: one here, or the node replicates it.
    fn writable(&self, slot: Slot) -> bool {
        self.stores.contains_key(&slot) || self.held.contains(&slot)
    }

    /// The store a write to `slot` goes to: the one here, or a new one if the node
    /// replicates the slot.
    fn store_for_write(&mut self, slot: Slot) -> Option<&mut SlotStore> {
        if !self.stores.contains_key(&slot) && self.held.contains(&slot) {
            self.stores.insert(slot, SlotStore::new(self.entries_max));
        }
        self.stores.get_mut(&slot)
    }

    /// Drops expired entries, and the stores of slots left long enough ago.
    fn expire(&mut self, now_ms: u64, node: &mut Node) {
        for (slot, st) in self.stores.iter_mut() {
            if st.expire(now_ms / 1000, self.retention_secs) > 0 {
                node.slot_changed(*slot, st.reported());
            }
        }
        for s in self.former.due(now_ms, |_| true) {
            self.stores.remove(&Slot(s));
            node.slot_changed(Slot(s), None);
        }
    }
}
