//! The contents of one slot on one replica: verified entries by key, merged by the
//! entry order, expired after the retention window.

use super::entry::{Entry, Status};
use super::fold;
use compact_str::CompactString;
use sha2::{Digest, Sha256};
use smallvec::SmallVec;
use std::collections::BTreeMap;
use std::sync::Arc;

/// How long an entry stays findable after its host was last seen, by default.
pub const RETENTION_SECS_DEFAULT: u64 = 72 * 3600;
/// The longest `index.postings_refresh_secs` allowed, and how much longer than the
/// retention a search posting is kept: a posting last written up to this long before its
/// user was last seen still lasts the retention.
pub const POSTINGS_REFRESH_MAX_SECS: u64 = 24 * 3600;

/// How long an entry under `key` is kept after it was last seen: search postings a
/// refresh period longer.
pub fn keep_secs(key: &str, retention_secs: u64) -> u64 {
    if fold::is_posting(key) { retention_secs.saturating_add(POSTINGS_REFRESH_MAX_SECS) } else { retention_secs }
}

/// Whether an entry under `key` last seen at `last_seen` is past its keep at `now` (Unix
/// seconds): the rule expiry, reads and merges share.
pub fn past_keep(key: &str, last_seen: u64, now: u64, retention_secs: u64) -> bool {
    last_seen.saturating_add(keep_secs(key, retention_secs)) <= now
}

/// Buckets a slot's keys fall in for anti-entropy (by [`key_hash`]): replicas whose slot
/// digests differ compare these, then only the keys of the buckets that differ.
pub const BUCKETS: usize = 64;

/// A key's hash for anti-entropy, the same on every replica.
pub fn key_hash(key: &str) -> u64 {
    let d = Sha256::digest(key.as_bytes());
    u64::from_le_bytes(d[..8].try_into().expect("8 bytes"))
}

/// The bucket of a key hash.
pub fn bucket_of(hash: u64) -> usize {
    (hash % BUCKETS as u64) as usize
}

/// What anti-entropy compares of a slot: a digest of the whole, and one of each bucket.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SlotDigest {
    /// Of every entry held.
    pub whole: [u8; 32],
    /// Of the entries of each bucket (a lane of theirs): 0 for an empty bucket.
    pub buckets: [u64; BUCKETS],
}

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

/// Most sessions held per key that are not offline (a user logged in on several devices,
/// or twice on one); the newest win.
pub const SESSIONS_MAX: usize = 8;
/// Most per-session high-water marks remembered per key (the origins of sessions already
/// replaced or dropped), so an old copy arriving late is refused instead of coming back.
const SEEN_MAX: usize = 32;

/// The sessions of one key: one entry per origin (credential serial), every session that
/// is not offline (at most [`SESSIONS_MAX`]) and the newest offline one, which carries the
/// user's last-seen time. A second login never displaces the first.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Sessions {
    /// Newest first (by [`Entry::order`]); shared, since every replica of a process (and
    /// every copy handed out) holds the same immutable entry. Inline while there is one:
    /// nearly every key has one session, and two small heap lists a key were a third of
    /// the memory of a slot store (docs/scale.md).
    entries: SmallVec<[Arc<Entry>; 1]>,
    /// (origin, the newest timestamp seen from it), including entries since dropped; by
    /// origin. A list, not a map: nearly every key has one origin, and a store holds
    /// millions of keys in the simulator.
    seen: SmallVec<[(u64, u64); 1]>,
    /// The key's [`key_hash`], once held in a store.
    hash: u64,
    /// The first lane of the sessions' digest part, kept by the store.
    lane: u64,
}

impl Sessions {
    /// Merges a verified entry of this key: into its session (by origin), or as a new one.
    pub fn merge(&mut self, e: impl Into<Arc<Entry>>) -> Merge {
        let e: Arc<Entry> = e.into();
        if let Some(held) = self.entries.iter_mut().find(|h| h.origin == e.origin) {
            return if e.supersedes(held) {
                *held = e;
                self.normalize();
                Merge::Replaced
            } else if Arc::ptr_eq(held, &e) || **held == *e {
                Merge::Duplicate
            } else {
                Merge::Stale
            };
        }
        // An origin seen before whose entry was dropped: only something newer is news.
        if self.seen_from(e.origin).is_some_and(|t| t >= e.timestamp_ms) {
            return Merge::Stale;
        }
        let origin = e.origin;
        self.entries.push(e);
        self.normalize();
        if self.entries.iter().any(|h| h.origin == origin) { Merge::Stored } else { Merge::Stale }
    }

    /// The sessions held, newest first.
    pub fn entries(&self) -> &[Arc<Entry>] {
        &self.entries
    }

    /// Sorts, drops offline entries but the newest and online ones beyond the cap, and
    /// remembers every origin's high-water mark.
    fn normalize(&mut self) {
        self.entries.sort_by(|a, b| b.order().cmp(&a.order()));
        for e in &self.entries {
            match self.seen.binary_search_by_key(&e.origin, |(o, _)| *o) {
                Ok(i) => self.seen[i].1 = self.seen[i].1.max(e.timestamp_ms),
                Err(i) => self.seen.insert(i, (e.origin, e.timestamp_ms)),
            }
        }
        let mut offline_kept = false;
        let mut online_kept = 0;
        self.entries.retain(|e| {
            if e.status == Status::Offline {
                !std::mem::replace(&mut offline_kept, true)
            } else {
                online_kept += 1;
                online_kept <= SESSIONS_MAX
            }
        });
        while self.seen.len() > SEEN_MAX {
            // Forget the oldest mark of an origin no longer held.
            let held: Vec<u64> = self.entries.iter().map(|e| e.origin).collect();
            let Some(i) =
                (0..self.seen.len()).filter(|i| !held.contains(&self.seen[*i].0)).min_by_key(|i| self.seen[*i].1)
            else {
                break;
            };
            self.seen.remove(i);
        }
    }

    /// The newest timestamp seen from `origin`.
    fn seen_from(&self, origin: u64) -> Option<u64> {
        self.seen.binary_search_by_key(&origin, |(o, _)| *o).ok().map(|i| self.seen[i].1)
    }

    /// The session that speaks for the user: one not offline, unless it was last seen more
    /// than the presence TTL before the newest entry (its host vanished); then the newest.
    pub fn best(&self) -> Option<&Entry> {
        let newest = self.entries.iter().map(|e| e.last_seen).max()?;
        self.entries
            .iter()
            .find(|e| e.status != Status::Offline && e.last_seen.saturating_add(PRESENCE_TTL_SECS_DEFAULT) >= newest)
            .or_else(|| self.entries.first())
            .map(|e| &**e)
    }

    /// The shared entry that speaks for the user (as [`Sessions::best`]).
    pub fn best_shared(&self) -> Option<&Arc<Entry>> {
        let best = self.best()?;
        self.entries.iter().find(|e| std::ptr::eq(&***e, best))
    }

    /// The sum of the digest parts of every session held.
    fn part(&self, key: &str) -> Sum {
        self.entries.iter().fold(Sum::default(), |acc, e| acc.add(Sum::of(key, e)))
    }
}

/// One slot's entries.
#[derive(Debug, Clone)]
pub struct SlotStore {
    /// Inline keys (up to 24 bytes, nearly all): a search through a slot's map compared
    /// keys on the heap, a cache miss each, and that was a tenth of the simulator's time.
    entries: BTreeMap<CompactString, Sessions>,
    entries_max: usize,
    /// The digest, kept as entries come and go: a change costs its own entries' hashes,
    /// not the whole slot's.
    sum: Sum,
    /// The first lane of each bucket's sum, kept the same way.
    buckets: Box<[u64; BUCKETS]>,
    /// Per bucket, key hash → (the first lane of its keys' entries, how many keys): what
    /// a summary lists, read a bucket or a hash at a time, not by a scan of the slot (a
    /// summary page of a hot slot's replica cost a scan of tens of thousands of keys).
    /// Keyed by hash, so two keys of one hash (a collision) are one item on every replica.
    lanes: Box<[BTreeMap<u64, (u64, u32)>; BUCKETS]>,
    /// At most the least `last_seen` (plus what a posting is kept longer) of any entry
    /// held: nothing expires while it is inside the retention, so an expiry before every
    /// anti-entropy summary costs nothing until something is due (a scan of a slot of
    /// thousands of keys each time was most of a large simulation's time).
    due_floor: u64,
}

/// An order-independent digest of a set of (key, entry) pairs: the lane-wise sum of each
/// pair's SHA-256. Anti-entropy only compares digests to decide what to send, so a
/// collision costs a missed repair round, not trust (every entry carries its signature).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct Sum([u64; 4]);

impl Sum {
    fn of(key: &str, e: &Entry) -> Self {
        let (t, o, sig) = e.order();
        let mut h = Sha256::new();
        h.update((key.len() as u32).to_be_bytes());
        h.update(key.as_bytes());
        h.update(t.to_be_bytes());
        h.update(o.to_be_bytes());
        h.update(Sha256::digest(sig));
        let d: [u8; 32] = h.finalize().into();
        Self(std::array::from_fn(|i| u64::from_le_bytes(d[i * 8..i * 8 + 8].try_into().expect("8 bytes"))))
    }

    fn add(self, o: Self) -> Self {
        Self(std::array::from_fn(|i| self.0[i].wrapping_add(o.0[i])))
    }

    fn sub(self, o: Self) -> Self {
        Self(std::array::from_fn(|i| self.0[i].wrapping_sub(o.0[i])))
    }

    fn bytes(self) -> [u8; 32] {
        let mut out = [0u8; 32];
        for (i, lane) in self.0.iter().enumerate() {
            out[i * 8..i * 8 + 8].copy_from_slice(&lane.to_le_bytes());
        }
        out
    }
}

impl SlotStore {
    /// An empty slot holding at most `entries_max` keys.
    pub fn new(entries_max: usize) -> Self {
        Self {
            entries: BTreeMap::new(),
            entries_max,
            sum: Sum::default(),
            buckets: Box::new([0; BUCKETS]),
            lanes: Box::new(std::array::from_fn(|_| BTreeMap::new())),
            due_floor: u64::MAX,
        }
    }

    /// What `due_floor` counts for an entry of `key` last seen at `last_seen`.
    fn due(key: &str, last_seen: u64) -> u64 {
        last_seen.saturating_add(keep_secs(key, 0))
    }

    /// Moves the digests from a key's old part to its new one; `keys` is +1 for a key
    /// new to the store.
    fn account(&mut self, hash: u64, before: Sum, after: Sum, keys: u32) {
        self.sum = self.sum.sub(before).add(after);
        let b = &mut self.buckets[bucket_of(hash)];
        *b = b.wrapping_sub(before.0[0]).wrapping_add(after.0[0]);
        let l = self.lanes[bucket_of(hash)].entry(hash).or_default();
        l.0 = l.0.wrapping_sub(before.0[0]).wrapping_add(after.0[0]);
        l.1 += keys;
    }

    /// Merges a verified entry under `key`: into its session (by origin), or as a new one.
    pub fn merge(&mut self, key: &str, e: impl Into<Arc<Entry>>) -> Merge {
        let e: Arc<Entry> = e.into();
        self.due_floor = self.due_floor.min(Self::due(key, e.last_seen));
        if let Some(held) = self.entries.get_mut(key) {
            let before = held.part(key);
            let m = held.merge(e);
            let (after, hash) = (held.part(key), held.hash);
            held.lane = after.0[0];
            self.account(hash, before, after, 0);
            return m;
        }
        if self.entries.len() >= self.entries_max {
            return Merge::Full;
        }
        let mut sessions = Sessions { hash: key_hash(key), ..Sessions::default() };
        let m = sessions.merge(e);
        let after = sessions.part(key);
        sessions.lane = after.0[0];
        self.account(sessions.hash, Sum::default(), after, 1);
        self.entries.insert(CompactString::from(key), sessions);
        m
    }

    /// The shared entry that speaks for `key`.
    pub fn get_shared(&self, key: &str) -> Option<&Arc<Entry>> {
        self.entries.get(key).and_then(Sessions::best_shared)
    }

    /// The entry that speaks for `key` (see the sessions' rule).
    pub fn get(&self, key: &str) -> Option<&Entry> {
        self.entries.get(key).and_then(Sessions::best)
    }

    /// Every session held under `key`, newest first.
    pub fn sessions(&self, key: &str) -> &[Arc<Entry>] {
        self.entries.get(key).map_or(&[], |s| &s.entries)
    }

    /// Keys starting with `prefix` (search postings), in key order, with the entry that
    /// speaks for each.
    pub fn with_prefix<'a>(&'a self, prefix: &'a str) -> impl Iterator<Item = (&'a str, &'a Entry)> + 'a {
        self.entries
            .range::<str, _>((std::ops::Bound::Included(prefix), std::ops::Bound::Unbounded))
            .take_while(move |(k, _)| k.starts_with(prefix))
            .filter_map(|(k, s)| Some((k.as_str(), s.best()?)))
    }

    /// The usernames posted under a token `prefix` whose entries are inside the retention
    /// window at `now` (Unix seconds), at most `limit`, in key order.
    pub fn posted(&self, prefix: &str, now: u64, retention_secs: u64, limit: usize) -> Vec<String> {
        let keep = keep_secs(prefix, retention_secs);
        self.with_prefix(prefix)
            .filter(|(_, e)| e.last_seen.saturating_add(keep) > now)
            .map(|(k, _)| k[prefix.len()..].to_owned())
            .take(limit)
            .collect()
    }

    /// Every entry (every session) still inside the retention window at `now`, with its key.
    pub fn live(&self, now: u64, retention_secs: u64) -> Vec<(String, Arc<Entry>)> {
        self.iter_shared()
            .filter(|(k, e)| !past_keep(k, e.last_seen, now, retention_secs))
            .map(|(k, e)| (k.to_string(), e.clone()))
            .collect()
    }

    /// For anti-entropy: (key hash, digest lane of its sessions) of every key in the
    /// buckets of `mask` (bit b: bucket b). Callers expire first, so that what one replica
    /// has already dropped does not count as a difference.
    pub fn summary(&self, mask: u64) -> Vec<(u64, u64)> {
        (0..BUCKETS)
            .filter(|b| mask & (1 << b) != 0)
            .flat_map(|b| self.lanes[b].iter().map(|(h, (lane, _))| (*h, *lane)))
            .collect()
    }

    /// The same for the given key hashes only (those held).
    pub fn summary_of(&self, hashes: &[u64]) -> Vec<(u64, u64)> {
        hashes.iter().filter_map(|h| self.lanes[bucket_of(*h)].get(h).map(|(lane, _)| (*h, *lane))).collect()
    }

    /// What an anti-entropy summary read returns: the buckets of `mask`, or only the key
    /// hashes `only` names (`node::Reconcile::only`).
    pub fn summary_for(&self, mask: u64, only: Option<&[u64]>) -> Vec<(u64, u64)> {
        match only {
            Some(hashes) => self.summary_of(hashes),
            None => self.summary(mask),
        }
    }

    /// Every live session of the keys whose hashes are in `hashes` (sorted), with its key.
    pub fn pick(&self, hashes: &[u64], now: u64, retention_secs: u64) -> Vec<(String, Arc<Entry>)> {
        self.entries
            .iter()
            .filter(|(_, s)| hashes.binary_search(&s.hash).is_ok())
            .flat_map(|(k, s)| s.entries.iter().map(move |e| (k, e)))
            .filter(|(k, e)| !past_keep(k, e.last_seen, now, retention_secs))
            .map(|(k, e)| (k.to_string(), e.clone()))
            .collect()
    }

    /// Every entry (every session), in key order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &Entry)> {
        self.iter_shared().map(|(k, e)| (k, &**e))
    }

    fn iter_shared(&self) -> impl Iterator<Item = (&str, &Arc<Entry>)> {
        self.entries.iter().flat_map(|(k, s)| s.entries.iter().map(move |e| (k.as_str(), e)))
    }

    /// Drops entries last seen more than `retention_secs` before `now`; returns how many.
    pub fn expire(&mut self, now: u64, retention_secs: u64) -> usize {
        if self.due_floor.saturating_add(retention_secs) > now {
            return 0;
        }
        let mut dropped = 0;
        let mut floor = u64::MAX;
        let (mut sum, buckets, lanes) = (self.sum, &mut self.buckets, &mut self.lanes);
        self.entries.retain(|k, s| {
            let before = s.entries.len();
            let keep_secs = keep_secs(k, retention_secs);
            let b = &mut buckets[bucket_of(s.hash)];
            let lane_before = s.lane;
            s.entries.retain(|e| {
                let keep = e.last_seen.saturating_add(keep_secs) > now;
                if !keep {
                    let part = Sum::of(k, e);
                    sum = sum.sub(part);
                    *b = b.wrapping_sub(part.0[0]);
                    s.lane = s.lane.wrapping_sub(part.0[0]);
                } else {
                    floor = floor.min(Self::due(k, e.last_seen));
                }
                keep
            });
            dropped += before - s.entries.len();
            if before != s.entries.len() {
                let by_hash = &mut lanes[bucket_of(s.hash)];
                if let Some(l) = by_hash.get_mut(&s.hash) {
                    l.0 = l.0.wrapping_sub(lane_before).wrapping_add(s.lane);
                    if s.entries.is_empty() {
                        l.1 -= 1;
                        if l.1 == 0 {
                            by_hash.remove(&s.hash);
                        }
                    }
                }
            }
            !s.entries.is_empty()
        });
        self.sum = sum;
        self.due_floor = floor;
        dropped
    }

    /// Keys held.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Nothing held.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The digests anti-entropy compares: the whole (equal digests, equal contents) and
    /// each bucket's.
    pub fn digests(&self) -> SlotDigest {
        SlotDigest { whole: self.sum.bytes(), buckets: *self.buckets }
    }

    /// What a store reports to its node after a change: its digests, or None when empty.
    pub fn reported(&self) -> Option<SlotDigest> {
        (!self.is_empty()).then(|| self.digests())
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
    fn a_second_session_does_not_displace_the_first() {
        let t = 1_700_000_000_000;
        let mut s = SlotStore::new(10);
        let phone = entry("alice", 7, t, Status::Online);
        assert_eq!(s.merge("alice", phone.clone()), Merge::Stored);
        // A one-shot command logs in and out on another session: alice stays online.
        assert_eq!(s.merge("alice", entry("alice", 8, t + 1000, Status::Busy)), Merge::Stored);
        assert_eq!(s.get("alice").unwrap().origin, 8, "the newest online session speaks");
        let gone = entry("alice", 8, t + 2000, Status::Offline);
        assert_eq!(s.merge("alice", gone.clone()), Merge::Replaced);
        assert_eq!(s.get("alice"), Some(&phone), "the remaining online session speaks");
        assert_eq!(s.sessions("alice"), [Arc::new(gone.clone()), Arc::new(phone.clone())]);
        // Only the newest offline session is kept, and a late copy of a dropped one stays out.
        let gone2 = entry("alice", 9, t + 3000, Status::Offline);
        assert_eq!(s.merge("alice", gone2.clone()), Merge::Stored);
        assert_eq!(s.sessions("alice"), [Arc::new(gone2.clone()), Arc::new(phone.clone())]);
        assert_eq!(s.merge("alice", gone), Merge::Stale);
        assert_eq!(s.merge("alice", entry("alice", 8, t + 1000, Status::Busy)), Merge::Stale);
        // A session that vanished without logging out long before the newest entry does not speak.
        let mut s = SlotStore::new(10);
        s.merge("bob", entry("bob", 1, t, Status::Online));
        let later = entry("bob", 2, t + (PRESENCE_TTL_SECS_DEFAULT + 1) * 1000, Status::Offline);
        s.merge("bob", later.clone());
        assert_eq!(s.get("bob"), Some(&later));
    }

    #[test]
    fn online_sessions_are_capped_newest_first() {
        let t = 1_700_000_000_000;
        let mut s = SlotStore::new(10);
        for i in 0..SESSIONS_MAX as u64 + 2 {
            s.merge("alice", entry("alice", 100 + i, t + i * 1000, Status::Online));
        }
        let held: Vec<u64> = s.sessions("alice").iter().map(|e| e.origin).collect();
        assert_eq!(held.len(), SESSIONS_MAX);
        assert_eq!(held[0], 100 + SESSIONS_MAX as u64 + 1);
        assert_eq!(s.merge("alice", entry("alice", 100, t, Status::Online)), Merge::Stale, "dropped stays dropped");
        assert_eq!(s.len(), 1, "one key whatever the sessions");
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
    fn summaries_and_picks_go_by_bucket_and_key_hash() {
        let t = 1_700_000_000_000;
        let (mut a, mut b) = (SlotStore::new(100), SlotStore::new(100));
        let users: Vec<String> = (0..40).map(|i| format!("user{i}")).collect();
        for u in &users {
            let e = entry(u, 1, t, Status::Online);
            a.merge(u, e.clone());
            b.merge(u, e);
        }
        b.merge("user7", entry("user7", 1, t + 1000, Status::Away));
        let (da, db) = (a.digests(), b.digests());
        let differ: Vec<usize> = (0..BUCKETS).filter(|i| da.buckets[*i] != db.buckets[*i]).collect();
        assert_eq!(differ, [bucket_of(key_hash("user7"))], "one write, one bucket");
        let mask = 1u64 << differ[0];
        let now = t / 1000;
        let (sa, sb) = (a.summary(mask), b.summary(mask));
        assert!(sa.iter().all(|(h, _)| bucket_of(*h) == differ[0]) && !sa.is_empty());
        let wanted: Vec<u64> = sb.iter().filter(|i| !sa.contains(i)).map(|(h, _)| *h).collect();
        assert_eq!(wanted, [key_hash("user7")], "only the key written differs");
        let picked = b.pick(&wanted, now, 3600);
        assert_eq!(picked.len(), 1);
        a.merge(&picked[0].0, picked[0].1.clone());
        assert_eq!(a.digests(), b.digests(), "the one entry repairs the slot");
        assert_eq!(a.expire(now + 7200, 3600), 40);
        assert!(a.summary(u64::MAX).is_empty());
        assert_eq!(a.digests().buckets, [0; BUCKETS], "expiry keeps the buckets");
    }

    #[test]
    fn prefix_scan() {
        let mut s = SlotStore::new(10);
        s.merge("token:jaan/alice", entry("alice", 1, 1_700_000_000_000, Status::Online));
        s.merge("token:jaan/bob", entry("bob", 1, 1_700_000_000_000, Status::Online));
        s.merge("token:jaana/eve", entry("eve", 1, 1_700_000_000_000, Status::Online));
        let hits: Vec<_> = s.with_prefix("token:jaan/").map(|(k, _)| k.to_owned()).collect();
        assert_eq!(hits, ["token:jaan/alice", "token:jaan/bob"]);
    }

    /// What the index by hash must hold: the keys' own lanes added up by hash, sorted.
    fn lanes_of_keys(s: &SlotStore) -> Vec<(u64, u64)> {
        let mut by_hash: BTreeMap<u64, u64> = BTreeMap::new();
        for sessions in s.entries.values() {
            let l = by_hash.entry(sessions.hash).or_default();
            *l = l.wrapping_add(sessions.lane);
        }
        by_hash.into_iter().collect()
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(32))]

        /// Expiry skipped while nothing is due drops exactly what a scan of every entry
        /// would, with writes (postings kept a day longer among them) between expiries.
        #[test]
        fn expiry_drops_what_is_due_and_only_that(steps in proptest::collection::vec((0u8..3, 0u64..40, 0u64..30), 1..40)) {
            let t0 = 1_700_000_000u64;
            let retention = 10;
            let extra = POSTINGS_REFRESH_MAX_SECS;
            let mut st = SlotStore::new(1000);
            let mut now = t0;
            for (i, (kind, seen, advance)) in steps.iter().enumerate() {
                match kind {
                    0 => {
                        let user = format!("u{}", i % 7);
                        st.merge(&user, entry(&user, 1, (now - seen) * 1000, Status::Online));
                    }
                    1 => {
                        let key = fold::posting_key("tallinn", &format!("u{}", i % 7));
                        st.merge(&key, entry(&format!("u{}", i % 7), 1, (now - seen) * 1000, Status::Online));
                    }
                    _ => {
                        // Past a posting's extra day now and then.
                        now += advance + if advance % 5 == 0 { extra } else { 0 };
                        let held = st.iter().count();
                        let due = st
                            .iter()
                            .filter(|(k, e)| e.last_seen.saturating_add(keep_secs(k, retention)) <= now)
                            .count();
                        prop_assert_eq!(st.expire(now, retention), due);
                        prop_assert_eq!(st.iter().count(), held - due);
                        let mut summary = st.summary(u64::MAX);
                        summary.sort_unstable();
                        prop_assert_eq!(summary, lanes_of_keys(&st));
                    }
                }
            }
        }

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
            prop_assert_eq!(a.digests(), b.digests());
            for (k, _) in a.iter() {
                prop_assert_eq!(a.sessions(k), b.sessions(k));
                prop_assert_eq!(a.get(k), b.get(k));
            }
            // The digest kept change by change equals one of a store that only ever held
            // what is left, before and after expiry.
            let rebuilt = |s: &SlotStore| {
                let mut fresh = SlotStore::new(100);
                for (k, e) in s.iter() {
                    fresh.merge(k, e.clone());
                }
                let mut summary = fresh.summary(u64::MAX);
                summary.sort_unstable();
                (fresh.digests(), summary)
            };
            let kept = |s: &SlotStore| {
                let mut summary = s.summary(u64::MAX);
                summary.sort_unstable();
                assert_eq!(summary, lanes_of_keys(s));
                let hashes: Vec<u64> = summary.iter().map(|(h, _)| *h).chain([1, 2, 3]).collect();
                assert_eq!(s.summary_of(&hashes), summary);
                (s.digests(), summary)
            };
            prop_assert_eq!(kept(&a), rebuilt(&a));
            let cut = 1_700_000_000 + 3;
            a.expire(cut + 10, 10);
            prop_assert_ne!(a.digests().whole, b.digests().whole, "expiry dropped some");
            prop_assert_eq!(kept(&a), rebuilt(&a));
            // The buckets' lanes add up to the whole's first lane.
            let d = a.digests();
            let lane = d.buckets.iter().fold(0u64, |acc, b| acc.wrapping_add(*b));
            prop_assert_eq!(&lane.to_le_bytes()[..], &d.whole[..8]);
        }
    }
}
