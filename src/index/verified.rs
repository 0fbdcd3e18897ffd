//! Entries already verified, remembered by digest: repair pushes whole slots and a
//! publish reaches every replica again after each status change, so most entries a
//! replica receives it has verified before. Two RSA checks per entry (credential and
//! signature) are skipped for those.
//!
//! An entry that verified once keeps verifying: its credential is judged at the entry's
//! own timestamp, and the only check against the clock ("not from the future") only gets
//! easier. Revoking a credential is the exception: the index router clears this cache
//! whenever its node adopts a newer revocation list.

use sha2::{Digest, Sha256};
use std::collections::HashSet;

/// Digests kept per generation by default.
pub const VERIFIED_PER_GENERATION: usize = 32_768;

/// A bounded set of verified entry digests in two generations: when the current one is
/// full it becomes the previous one and the oldest is forgotten, so a digest seen in
/// either of the last two generations counts (a cheap approximation of least recently used).
#[derive(Debug)]
pub struct VerifiedCache {
    current: HashSet<[u8; 32]>,
    previous: HashSet<[u8; 32]>,
    per_generation: usize,
}

impl Default for VerifiedCache {
    fn default() -> Self {
        Self::new(VERIFIED_PER_GENERATION)
    }
}

impl VerifiedCache {
    /// A cache of at most `2 × per_generation` digests.
    pub fn new(per_generation: usize) -> Self {
        Self { current: HashSet::new(), previous: HashSet::new(), per_generation: per_generation.max(1) }
    }

    /// The digest entries are remembered by.
    pub fn digest(bytes: &[u8]) -> [u8; 32] {
        Sha256::new().chain_update(b"confab/v1/verified\0").chain_update(bytes).finalize().into()
    }

    /// Was the entry with this digest verified lately? A hit moves it to the current generation.
    pub fn contains(&mut self, digest: &[u8; 32]) -> bool {
        if self.current.contains(digest) {
            return true;
        }
        if self.previous.remove(digest) {
            self.insert(*digest);
            return true;
        }
        false
    }

    /// Remembers a verified entry's digest.
    pub fn insert(&mut self, digest: [u8; 32]) {
        if self.current.len() >= self.per_generation {
            self.previous = std::mem::take(&mut self.current);
        }
        self.current.insert(digest);
    }

    /// Forgets everything (the trusted keys changed).
    pub fn clear(&mut self) {
        self.current.clear();
        self.previous.clear();
    }

    /// Digests held.
    pub fn len(&self) -> usize {
        self.current.len() + self.previous.len()
    }

    /// True when nothing is remembered.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bounded_and_recently_used_survive() {
        let mut c = VerifiedCache::new(2);
        let d = |i: u8| VerifiedCache::digest(&[i]);
        c.insert(d(1));
        c.insert(d(2));
        c.insert(d(3)); // 1 and 2 become the previous generation
        assert!(c.contains(&d(1)), "a hit in the previous generation moves it forward");
        c.insert(d(4)); // current {3, 1} is full: it becomes previous, 2 is forgotten
        assert!(!c.contains(&d(2)));
        assert!(c.contains(&d(1)) && c.contains(&d(3)) && c.contains(&d(4)));
        assert!(c.len() <= 4);
        assert_ne!(d(1), VerifiedCache::digest(&[1, 0]));
        c.clear();
        assert!(c.is_empty() && !c.contains(&d(4)));
    }
}
