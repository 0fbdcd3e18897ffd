//! The contents of one slot on one replica: verified entries by key, merged by the
//! entry order, expired after the retention window.

use super::entry::{Entry, Status};
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;

/// How long an entry stays findable after its host was last seen, by default.
pub const RETENTION_SECS_DEFAULT: u64 = 72 * 3600;
/// How long an online entry counts as online without a refresh, by default.
pub const PRESENCE_TTL_SECS_DEFAULT: u64 = 15 * 60;

/// What a merge did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Merge {
    /// A key not held before.
    Stored,
    /// A newer entry replaced the held one.
    Replaced,
    /// Older than the held entry: refused (invariant 5).
    Stale,
    /// The very entry held already.
    Duplicate,
    /// A new key, but the slot is full.
    Full,
}

/// One slot's entries.
#[derive(Debug, Clone)]
pub struct SlotStore {
    entries: BTreeMap<String, Entry>,
    entries_max: usize,
}

impl SlotStore {
    /// An empty slot holding at most `entries_max` keys.
    pub fn new(entries_max: usize) -> Self {
        Self { entries: BTreeMap::new(), entries_max }
    }

    /// Merges a verified entry under `key`.
    pub fn merge(&mut self, key: &str, e: Entry) -> Merge {
        let full = self.entries.len() >= self.entries_max;
        match self.entries.get_mut(key) {
            Some(held) if e.supersedes(held) => {
                *held = e;
                Merge::Replaced
            }
            Some(held) if *held == e => Merge::Duplicate,
            Some(_) => Merge::Stale,
            None if full => Merge::Full,
            None => {
                self.entries.insert(key.to_owned(), e);
                Merge::Stored
            }
        }
    }

    /// The entry under `key`.
    pub fn get(&self, key: &str) -> Option<&Entry> {
        self.entries.get(key)
    }

    /// Entries whose key starts with `prefix` (search postings), in key order.
    pub fn with_prefix<'a>(&'a self, prefix: &'a str) -> impl Iterator<Item = (&'a String, &'a Entry)> + 'a {
        self.entries.range(prefix.to_owned()..).take_while(move |(k, _)| k.starts_with(prefix))
    }

    /// Every entry still inside the retention window at `now`, with its key.
    pub fn live(&self, now: u64, retention_secs: u64) -> Vec<(String, Entry)> {
        self.entries
            .iter()
            .filter(|(_, e)| e.last_seen.saturating_add(retention_secs) > now)
            .map(|(k, e)| (k.clone(), e.clone()))
            .collect()
    }

    /// Every entry, in key order.
    pub fn iter(&self) -> impl Iterator<Item = (&String, &Entry)> {
        self.entries.iter()
    }

    /// Drops entries last seen more than `retention_secs` before `now`; returns how many.
    pub fn expire(&mut self, now: u64, retention_secs: u64) -> usize {
        let before = self.entries.len();
        self.entries.retain(|_, e| e.last_seen.saturating_add(retention_secs) > now);
        before - self.entries.len()
    }

    /// Keys held.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Nothing held.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// A digest of what the slot holds, for anti-entropy: equal digests, equal contents.
    pub fn digest(&self) -> [u8; 32] {
        let mut h = Sha256::new();
        for (k, e) in &self.entries {
            let (t, o, sig) = e.order();
            h.update((k.len() as u32).to_be_bytes());
            h.update(k.as_bytes());
            h.update(t.to_be_bytes());
            h.update(o.to_be_bytes());
            h.update(Sha256::digest(sig));
        }
        h.finalize().into()
    }
}

/// What others see of an entry at `now`: invisible shows as offline, and an online
/// entry not refreshed within `presence_ttl_secs` is offline too (its host vanished
/// without logging out).
pub fn shown_status(e: &Entry, now: u64, presence_ttl_secs: u64) -> Status {
    match e.status {
        Status::Invisible | Status::Offline => Status::Offline,
        _ if e.last_seen.saturating_add(presence_ttl_secs) < now => Status::Offline,
        s => s,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::index::entry::tests::entry;
    use proptest::prelude::*;

    #[test]
    fn merge_rules() {
        let mut s = SlotStore::new(2);
        let old = entry("alice", 7, 1_700_000_000_000, Status::Online);
        let new = entry("alice", 7, 1_700_000_060_000, Status::Away);
        assert_eq!(s.merge("alice", old.clone()), Merge::Stored);
        assert_eq!(s.merge("alice", old.clone()), Merge::Duplicate);
        assert_eq!(s.merge("alice", new.clone()), Merge::Replaced);
        assert_eq!(s.merge("alice", old), Merge::Stale);
        assert_eq!(s.get("alice"), Some(&new));
        assert_eq!(s.merge("bob", entry("bob", 1, 1_700_000_000_000, Status::Online)), Merge::Stored);
        assert_eq!(s.merge("carol", entry("carol", 1, 1_700_000_000_000, Status::Online)), Merge::Full);
    }

    #[test]
    fn expiry_and_shown_status() {
        let t0 = 1_700_000_000u64;
        let mut s = SlotStore::new(10);
        s.merge("alice", entry("alice", 7, t0 * 1000, Status::Offline));
        s.merge("bob", entry("bob", 7, (t0 + 7200) * 1000, Status::Invisible));
        assert_eq!(s.expire(t0 + 71 * 3600, RETENTION_SECS_DEFAULT), 0);
        assert_eq!(s.expire(t0 + 73 * 3600, RETENTION_SECS_DEFAULT), 1);
        assert!(s.get("alice").is_none() && s.get("bob").is_some());
        let bob = s.get("bob").unwrap();
        assert_eq!(shown_status(bob, t0 + 7200, 900), Status::Offline, "invisible looks offline");
        let online = entry("carol", 1, t0 * 1000, Status::Busy);
        assert_eq!(shown_status(&online, t0 + 60, 900), Status::Busy);
        assert_eq!(shown_status(&online, t0 + 901, 900), Status::Offline, "not refreshed: gone");
    }

    #[test]
    fn prefix_scan() {
        let mut s = SlotStore::new(10);
        s.merge("token:jaan/alice", entry("alice", 1, 1_700_000_000_000, Status::Online));
        s.merge("token:jaan/bob", entry("bob", 1, 1_700_000_000_000, Status::Online));
        s.merge("token:jaana/eve", entry("eve", 1, 1_700_000_000_000, Status::Online));
        let hits: Vec<_> = s.with_prefix("token:jaan/").map(|(k, _)| k.clone()).collect();
        assert_eq!(hits, ["token:jaan/alice", "token:jaan/bob"]);
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(32))]

        /// Replicas that receive the same writes in any order hold the same entries.
        #[test]
        fn replicas_converge(order_a in Just((0..12usize).collect::<Vec<_>>()).prop_shuffle(),
                             order_b in Just((0..12usize).collect::<Vec<_>>()).prop_shuffle(),
                             dup in 0usize..12) {
            let writes: Vec<(String, Entry)> = (0..12u64)
                .map(|i| {
                    let user = ["alice", "bob", "carol"][(i % 3) as usize];
                    // Some writes share a timestamp, so the origin decides.
                    let e = entry(user, 1 + i % 2, 1_700_000_000_000 + (i / 2) * 1000, Status::ALL[(i % 5) as usize]);
                    (user.to_owned(), e)
                })
                .collect();
            let mut a = SlotStore::new(100);
            let mut b = SlotStore::new(100);
            for i in &order_a {
                a.merge(&writes[*i].0, writes[*i].1.clone());
            }
            for i in &order_b {
                b.merge(&writes[*i].0, writes[*i].1.clone());
            }
            b.merge(&writes[dup].0, writes[dup].1.clone());
            prop_assert_eq!(a.digest(), b.digest());
            for (k, e) in a.iter() {
                prop_assert_eq!(Some(e), b.get(k));
            }
        }
    }
}
