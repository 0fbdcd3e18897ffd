//! Replay protection for login requests: a timestamp window plus the set of request
//! nonces seen inside it.

use std::collections::{HashMap, VecDeque};

/// Rejects requests whose timestamp is outside ±`window_secs` of now, and any nonce seen
/// before within that window. Memory is bounded by `entries_max`.
#[derive(Debug)]
pub struct ReplayCache {
    window_secs: u64,
    entries_max: usize,
    seen: HashMap<[u8; 32], u64>,
    order: VecDeque<([u8; 32], u64)>,
}

/// Why a request is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReplayVerdict {
    /// Fresh: accepted and remembered.
    Fresh,
    /// The nonce was used before.
    Replayed,
    /// The timestamp is outside the window.
    Skewed,
}

impl ReplayCache {
    /// An empty cache.
    pub fn new(window_secs: u64, entries_max: usize) -> Self {
        Self { window_secs, entries_max, seen: HashMap::new(), order: VecDeque::new() }
    }

    /// Checks and records one request.
    pub fn check(&mut self, nonce: [u8; 32], timestamp: u64, now: u64) -> ReplayVerdict {
        // Saturating: the timestamp comes from the network and may be anything.
        if timestamp.saturating_add(self.window_secs) < now || timestamp > now.saturating_add(self.window_secs) {
            return ReplayVerdict::Skewed;
        }
        // A nonce older than two windows can no longer pass the timestamp check.
        while let Some(&(n, t)) = self.order.front() {
            if t + 2 * self.window_secs < now || self.order.len() >= self.entries_max {
                self.order.pop_front();
                self.seen.remove(&n);
            } else {
                break;
            }
        }
        if self.seen.contains_key(&nonce) {
            return ReplayVerdict::Replayed;
        }
        self.seen.insert(nonce, now);
        self.order.push_back((nonce, now));
        ReplayVerdict::Fresh
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn window_and_replay() {
        let mut c = ReplayCache::new(300, 1000);
        assert_eq!(c.check([1; 32], 1000, 1000), ReplayVerdict::Fresh);
        assert_eq!(c.check([1; 32], 1000, 1001), ReplayVerdict::Replayed);
        assert_eq!(c.check([2; 32], 600, 1000), ReplayVerdict::Skewed);
        assert_eq!(c.check([2; 32], 1400, 1000), ReplayVerdict::Skewed);
        assert_eq!(c.check([2; 32], 1200, 1000), ReplayVerdict::Fresh);
        assert_eq!(c.check([3; 32], u64::MAX, 1000), ReplayVerdict::Skewed);
        assert_eq!(c.check([3; 32], 0, 1000), ReplayVerdict::Skewed);
    }

    #[test]
    fn bounded() {
        let mut c = ReplayCache::new(300, 50);
        for i in 0..1000u32 {
            let mut n = [0u8; 32];
            n[..4].copy_from_slice(&i.to_be_bytes());
            c.check(n, 10, 10);
            assert!(c.seen.len() <= 50);
        }
    }
}
