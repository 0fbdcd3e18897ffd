//! Randomness: one seed for the run, a separate stream per purpose, so adding draws in
//! one part (say users) does not shift another's (say churn).

use rand::SeedableRng;
use rand::rngs::StdRng;
use sha2::{Digest, Sha256};

/// The stream for `purpose` under the run's `seed`.
pub fn stream(seed: u64, purpose: &str) -> StdRng {
    StdRng::from_seed(bytes(seed, purpose, 0))
}

/// 32 bytes for (`seed`, `purpose`, `i`): a foca node's RNG seed, a node id.
pub fn bytes(seed: u64, purpose: &str, i: u64) -> [u8; 32] {
    Sha256::new().chain_update(seed.to_be_bytes()).chain_update(purpose).chain_update(i.to_be_bytes()).finalize().into()
}

/// A 64-bit hash of (`seed`, `purpose`, `a`, `b`): per-pair properties such as latency,
/// asked for every packet, so a few multiply-xorshift rounds (splitmix64) rather than
/// SHA-256.
pub fn hash2(seed: u64, purpose: &str, a: u64, b: u64) -> u64 {
    let p = purpose.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, c| (h ^ u64::from(c)).wrapping_mul(0x100_0000_01b3));
    mix(mix(mix(seed ^ p) ^ a) ^ b)
}

/// splitmix64's finaliser.
pub fn mix(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// A draw from the exponential distribution with this median (memoryless: the remaining
/// life of a node alive now has the same law as a new one's).
pub fn exp_median(rng: &mut StdRng, median: f64) -> f64 {
    use rand::RngExt;
    let u: f64 = rng.random_range(f64::MIN_POSITIVE..1.0);
    -u.ln() * median / std::f64::consts::LN_2
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::RngExt;

    #[test]
    fn streams_differ_by_purpose_and_repeat_by_seed() {
        let a: u64 = stream(7, "churn").random();
        assert_eq!(a, stream(7, "churn").random::<u64>());
        assert_ne!(a, stream(7, "users").random::<u64>());
        assert_ne!(a, stream(8, "churn").random::<u64>());
    }

    #[test]
    fn exponential_median() {
        let mut r = stream(1, "t");
        let mut v: Vec<f64> = (0..20_001).map(|_| exp_median(&mut r, 10.0)).collect();
        v.sort_by(f64::total_cmp);
        assert!((9.5..10.5).contains(&v[10_000]), "median {}", v[10_000]);
    }
}
