//! Randomness from the operating system.

/// Fills `buf` with bytes from the operating system's CSPRNG.
///
/// The OS generator failing is not something a network daemon can recover from: it
/// would mean every key and nonce after it is predictable, so this aborts loudly.
pub fn fill(buf: &mut [u8]) {
    getrandom::fill(buf).expect("the operating system's random generator failed");
}

/// Returns `N` random bytes.
pub fn bytes<const N: usize>() -> [u8; N] {
    let mut b = [0u8; N];
    fill(&mut b);
    b
}

/// Returns a random `u64`.
pub fn u64() -> u64 {
    u64::from_be_bytes(bytes())
}
