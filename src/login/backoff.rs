//! Back-off after failed logins, per username and per source address.
//!
//! A few failures are free (typos happen); after that each failure doubles the wait,
//! up to a cap. While a key is waiting, requests are refused before the password is
//! even looked at, so a guesser learns nothing and costs us little.

use std::collections::HashMap;
use std::hash::Hash;

/// Back-off policy.
#[derive(Debug, Clone, Copy)]
pub struct Policy {
    /// Failures allowed before any wait.
    pub free_failures: u32,
    /// First wait, in seconds.
    pub base_secs: u64,
    /// Longest wait, in seconds.
    pub max_secs: u64,
    /// Most keys remembered; beyond it the oldest are forgotten.
    pub entries_max: usize,
}

impl Default for Policy {
    fn default() -> Self {
        Self { free_failures: 5, base_secs: 1, max_secs: 300, entries_max: 100_000 }
    }
}

#[derive(Debug, Clone, Copy)]
struct Entry {
    failures: u32,
    blocked_until: u64,
    last_failure: u64,
}

/// Failure counts for one kind of key (usernames, or addresses).
#[derive(Debug)]
pub struct Backoff<K> {
    policy: Policy,
    entries: HashMap<K, Entry>,
}

impl<K: Eq + Hash + Clone> Backoff<K> {
    /// An empty tracker.
    pub fn new(policy: Policy) -> Self {
        Self { policy, entries: HashMap::new() }
    }

    /// Seconds `key` must still wait at `now` (0: may try).
    pub fn wait_secs(&self, key: &K, now: u64) -> u64 {
        self.entries.get(key).map(|e| e.blocked_until.saturating_sub(now)).unwrap_or(0)
    }

    /// Records a failure; returns the wait it imposes from `now`.
    pub fn fail(&mut self, key: K, now: u64) -> u64 {
        if self.entries.len() >= self.policy.entries_max && !self.entries.contains_key(&key) {
            self.evict(now);
        }
        let p = self.policy;
        let e = self.entries.entry(key).or_insert(Entry { failures: 0, blocked_until: 0, last_failure: now });
        // A key that has been quiet for the longest wait starts over.
        if now.saturating_sub(e.last_failure) > p.max_secs * 2 {
            e.failures = 0;
        }
        e.failures += 1;
        e.last_failure = now;
        let wait = if e.failures <= p.free_failures {
            0
        } else {
            let exp = (e.failures - p.free_failures - 1).min(30);
            (p.base_secs << exp).min(p.max_secs)
        };
        e.blocked_until = now + wait;
        wait
    }

    /// Forgets `key`'s failures (after a success).
    pub fn succeed(&mut self, key: &K) {
        self.entries.remove(key);
    }

    /// Keys currently tracked.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// No key tracked.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    fn evict(&mut self, now: u64) {
        let stale = self.policy.max_secs * 2;
        self.entries.retain(|_, e| now.saturating_sub(e.last_failure) <= stale);
        if self.entries.len() >= self.policy.entries_max {
            // Still full of recent failures: drop the oldest half rather than grow.
            let mut ages: Vec<u64> = self.entries.values().map(|e| e.last_failure).collect();
            ages.sort_unstable();
            let cutoff = ages[ages.len() / 2];
            self.entries.retain(|_, e| e.last_failure > cutoff);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn free_failures_then_doubling_then_cap() {
        let mut b = Backoff::new(Policy { free_failures: 2, base_secs: 1, max_secs: 8, entries_max: 10 });
        assert_eq!(b.fail("a", 100), 0);
        assert_eq!(b.fail("a", 100), 0);
        assert_eq!(b.fail("a", 100), 1);
        assert_eq!(b.wait_secs(&"a", 100), 1);
        assert_eq!(b.wait_secs(&"a", 101), 0);
        assert_eq!(b.fail("a", 101), 2);
        assert_eq!(b.fail("a", 103), 4);
        assert_eq!(b.fail("a", 107), 8);
        assert_eq!(b.fail("a", 115), 8);
        assert_eq!(b.wait_secs(&"b", 115), 0);
        b.succeed(&"a");
        assert_eq!(b.wait_secs(&"a", 115), 0);
    }

    #[test]
    fn bounded() {
        let mut b = Backoff::new(Policy { free_failures: 0, base_secs: 1, max_secs: 8, entries_max: 100 });
        for i in 0..10_000u32 {
            b.fail(i, 1000 + u64::from(i));
            assert!(b.len() <= 100);
        }
    }
}
