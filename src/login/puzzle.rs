//! Client puzzles: the cost a guesser pays instead of a refusal.
//!
//! When a user is under attack, or the login server is in a surge, it answers a request
//! with a [`PuzzleChallenge`] instead of checking it. The client finds a counter such that
//! `SHA-256(DOMAIN ‖ challenge ‖ SHA-256(binding) ‖ counter)` starts with `bits` zero bits
//! and sends the request again with the [`PuzzleSolution`]. `binding` is the request's
//! RSA-wrapped key, unique to each request, so one solution buys exactly one request:
//! a guesser pays 2^bits hashes per guess, a real user pays it once per login (14 to 17
//! bits by default: ~15 to ~130 ms on one core).
//!
//! Challenges are stateless: the salt is an HMAC of the issue time, the difficulty and
//! the source under the server's puzzle key, so the server keeps nothing per challenge
//! and login servers sharing the key accept each other's challenges.

use crate::net::source::SourceKey;
use crate::wire::message::{PuzzleChallenge, PuzzleSolution};
use hmac::{Hmac, KeyInit, Mac};
use sha2::{Digest, Sha256};

const DOMAIN_SALT: &[u8] = b"confab/v1/puzzle-salt\0";
const DOMAIN_WORK: &[u8] = b"confab/v1/puzzle-work\0";

/// Hardest puzzle a server may ask for: 2^24 hashes, a few seconds on a slow phone.
pub const BITS_MAX: u8 = 24;

/// Why a solution is not accepted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PuzzleError {
    /// The salt is not ours, or was issued to another source.
    #[error("the puzzle was not issued by this server to this address")]
    Forged,
    /// Issued too long ago (or in the future).
    #[error("the puzzle has expired")]
    Expired,
    /// Easier than the puzzle required now.
    #[error("the puzzle is easier than required")]
    TooEasy,
    /// The hash does not have enough leading zero bits.
    #[error("the puzzle is not solved")]
    Unsolved,
}

/// The server's secret for puzzle salts.
#[derive(Clone)]
pub struct PuzzleKey([u8; 32]);

impl std::fmt::Debug for PuzzleKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("PuzzleKey(..)")
    }
}

impl Drop for PuzzleKey {
    fn drop(&mut self) {
        zeroize::Zeroize::zeroize(&mut self.0);
    }
}

impl PuzzleKey {
    /// A key from 32 secret bytes (random per process, or shared by login servers).
    pub fn new(secret: [u8; 32]) -> Self {
        Self(secret)
    }

    /// A fresh random key.
    pub fn generate() -> Self {
        Self(crate::crypto::random::bytes())
    }

    fn salt(&self, issued_at: u64, bits: u8, source: SourceKey) -> [u8; 16] {
        let mut mac = <Hmac<Sha256> as KeyInit>::new_from_slice(&self.0).expect("HMAC takes any key length");
        mac.update(DOMAIN_SALT);
        mac.update(&issued_at.to_be_bytes());
        mac.update(&[bits]);
        mac.update(source.as_bytes());
        mac.finalize().into_bytes()[..16].try_into().expect("32-byte MAC")
    }

    /// A challenge of `bits` for `source` at `now`.
    pub fn issue(&self, now: u64, bits: u8, source: SourceKey) -> PuzzleChallenge {
        let bits = bits.min(BITS_MAX);
        PuzzleChallenge { issued_at: now, bits, salt: self.salt(now, bits, source) }
    }

    /// Checks a solution from `source` for the request `binding`, at `now`: issued by us
    /// to this source within `lifetime_secs`, at least `bits_min` hard, and solved.
    pub fn verify(
        &self,
        solution: &PuzzleSolution,
        binding: &[u8],
        source: SourceKey,
        now: u64,
        lifetime_secs: u64,
        bits_min: u8,
    ) -> Result<(), PuzzleError> {
        let c = &solution.challenge;
        let expected = self.salt(c.issued_at, c.bits, source);
        if !bool::from(subtle::ConstantTimeEq::ct_eq(&expected[..], &c.salt[..])) {
            return Err(PuzzleError::Forged);
        }
        // A little slack for a challenge issued "in the future" by a server whose clock
        // is a second ahead of another's that shares the key.
        if c.issued_at > now.saturating_add(5) || now.saturating_sub(c.issued_at) > lifetime_secs {
            return Err(PuzzleError::Expired);
        }
        if c.bits < bits_min.min(BITS_MAX) {
            return Err(PuzzleError::TooEasy);
        }
        if leading_zero_bits(&work(c, binding, solution.counter)) < u32::from(c.bits) {
            return Err(PuzzleError::Unsolved);
        }
        Ok(())
    }
}

fn prefix(c: &PuzzleChallenge, binding: &[u8]) -> Sha256 {
    let bound: [u8; 32] = Sha256::digest(binding).into();
    Sha256::new()
        .chain_update(DOMAIN_WORK)
        .chain_update(c.issued_at.to_be_bytes())
        .chain_update([c.bits])
        .chain_update(c.salt)
        .chain_update(bound)
}

fn work(c: &PuzzleChallenge, binding: &[u8], counter: u64) -> [u8; 32] {
    prefix(c, binding).chain_update(counter.to_be_bytes()).finalize().into()
}

/// Leading zero bits of a hash.
pub fn leading_zero_bits(h: &[u8; 32]) -> u32 {
    let mut n = 0;
    for b in h {
        if *b == 0 {
            n += 8;
        } else {
            return n + b.leading_zeros();
        }
    }
    n
}

/// Solves `challenge` for `binding`, trying at most `tries_max` counters (None if none
/// worked: the caller gives up rather than spin). Expected work: 2^bits hashes.
pub fn solve(challenge: &PuzzleChallenge, binding: &[u8], tries_max: u64) -> Option<PuzzleSolution> {
    let base = prefix(challenge, binding);
    let need = u32::from(challenge.bits.min(BITS_MAX));
    (0..tries_max).find_map(|counter| {
        let h: [u8; 32] = base.clone().chain_update(counter.to_be_bytes()).finalize().into();
        (leading_zero_bits(&h) >= need).then_some(PuzzleSolution { challenge: *challenge, counter })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const SRC: SourceKey = SourceKey::V4([127, 0, 0, 1]);

    #[test]
    fn solved_puzzle_verifies_once_per_binding() {
        let key = PuzzleKey::new([7; 32]);
        let c = key.issue(1000, 10, SRC);
        let s = solve(&c, b"request one", 1 << 20).expect("10 bits is quick");
        assert_eq!(key.verify(&s, b"request one", SRC, 1001, 60, 10), Ok(()));
        // The same work does not pay for another request (overwhelmingly likely to miss).
        let other = solve(&c, b"request two", 1 << 20).unwrap();
        assert_ne!(other.counter, s.counter, "distinct bindings need distinct work (seeded check)");
        assert_eq!(key.verify(&s, b"request two", SRC, 1001, 60, 10), Err(PuzzleError::Unsolved));
    }

    #[test]
    fn forged_expired_too_easy() {
        let key = PuzzleKey::new([7; 32]);
        let c = key.issue(1000, 8, SRC);
        let s = solve(&c, b"r", 1 << 20).unwrap();
        // Another source, another server key, or an edited difficulty.
        assert_eq!(key.verify(&s, b"r", SourceKey::V4([127, 0, 0, 2]), 1001, 60, 8), Err(PuzzleError::Forged));
        assert_eq!(PuzzleKey::new([8; 32]).verify(&s, b"r", SRC, 1001, 60, 8), Err(PuzzleError::Forged));
        let mut easier = s;
        easier.challenge.bits = 1;
        assert_eq!(key.verify(&easier, b"r", SRC, 1001, 60, 1), Err(PuzzleError::Forged));
        assert_eq!(key.verify(&s, b"r", SRC, 1061, 60, 8), Err(PuzzleError::Expired));
        assert_eq!(key.verify(&s, b"r", SRC, 990, 60, 8), Err(PuzzleError::Expired));
        assert_eq!(key.verify(&s, b"r", SRC, 1001, 60, 12), Err(PuzzleError::TooEasy));
    }

    #[test]
    fn difficulty_is_capped_and_leading_bits_counted() {
        let key = PuzzleKey::new([1; 32]);
        assert_eq!(key.issue(0, 200, SRC).bits, BITS_MAX);
        let mut h = [0u8; 32];
        h[2] = 0b0001_0000;
        assert_eq!(leading_zero_bits(&h), 19);
        assert_eq!(leading_zero_bits(&[0; 32]), 256);
    }
}
