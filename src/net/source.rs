//! Who traffic comes from, for limits, and refusals logged once per source and reason.
//!
//! A "source" is an IPv4 address or an IPv6 /64: one IPv6 subscriber usually holds a
//! whole /64, so per-address limits on IPv6 would be no limit at all.

use std::collections::{HashMap, HashSet};
use std::hash::Hash;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};

/// The unit every per-source limit counts in: an IPv4 address or an IPv6 /64 prefix.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum SourceKey {
    /// An IPv4 address (IPv4-mapped IPv6 addresses count as IPv4).
    V4([u8; 4]),
    /// The first 64 bits of an IPv6 address.
    V6([u8; 8]),
}

impl From<IpAddr> for SourceKey {
    fn from(ip: IpAddr) -> Self {
        match ip {
            IpAddr::V4(v4) => Self::V4(v4.octets()),
            IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
                Some(v4) => Self::V4(v4.octets()),
                None => Self::V6(v6.octets()[..8].try_into().expect("16 bytes")),
            },
        }
    }
}

impl std::fmt::Display for SourceKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::V4(o) => write!(f, "{}", std::net::Ipv4Addr::from(*o)),
            Self::V6(p) => {
                let mut full = [0u8; 16];
                full[..8].copy_from_slice(p);
                write!(f, "{}/64", std::net::Ipv6Addr::from(full))
            }
        }
    }
}

impl SourceKey {
    /// Bytes that identify the source, for MACs bound to it.
    pub fn as_bytes(&self) -> &[u8] {
        match self {
            Self::V4(o) => o,
            Self::V6(p) => p,
        }
    }
}

/// Counts what each key (a source, a user) holds at once — connections, RSA jobs, relay
/// sessions — against a cap.
#[derive(Debug)]
pub struct Holds<K: Eq + Hash> {
    max: usize,
    held: Mutex<HashMap<K, usize>>,
}

/// What each source holds at once.
pub type PerSource = Holds<SourceKey>;
/// One source's hold on one unit of a [`PerSource`].
pub type SourceClaim = Claim<SourceKey>;

/// One key's hold on one unit of a [`Holds`]; given back when dropped.
#[derive(Debug)]
pub struct Claim<K: Eq + Hash> {
    owner: Arc<Holds<K>>,
    key: Option<K>,
}

impl<K: Eq + Hash> Drop for Claim<K> {
    fn drop(&mut self) {
        let Some(key) = self.key.take() else { return };
        let mut m = self.owner.held.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(n) = m.get_mut(&key) {
            *n -= 1;
            if *n == 0 {
                m.remove(&key);
            }
        }
    }
}

impl<K: Eq + Hash + Clone> Holds<K> {
    /// At most `max` (at least 1) held per key at once.
    pub fn new(max: usize) -> Arc<Self> {
        Arc::new(Self { max: max.max(1), held: Mutex::new(HashMap::new()) })
    }

    /// Takes one unit for `key`; None if it holds its cap already.
    pub fn claim(self: &Arc<Self>, key: K) -> Option<Claim<K>> {
        let mut m = self.held.lock().unwrap_or_else(|p| p.into_inner());
        let n = m.entry(key.clone()).or_insert(0);
        if *n >= self.max {
            return None;
        }
        *n += 1;
        Some(Claim { owner: self.clone(), key: Some(key) })
    }

    #[cfg(test)]
    /// Units `key` holds now.
    pub fn held(&self, key: &K) -> usize {
        self.held.lock().unwrap_or_else(|p| p.into_inner()).get(key).copied().unwrap_or(0)
    }

    /// The cap.
    pub fn max(&self) -> usize {
        self.max
    }
}

/// A token bucket per source: at most `burst` at once, refilled at `per_sec`. For answers
/// a standard fixes larger than their questions (STUN), so a spoofed source cannot turn
/// a node into an amplifier. Bounded: when full, the fullest buckets (idle sources) go.
#[derive(Debug)]
pub struct SourceRate {
    per_sec: f64,
    burst: f64,
    entries_max: usize,
    buckets: HashMap<SourceKey, (f64, u64)>,
}

impl SourceRate {
    /// `per_sec` tokens a second, `burst` at most, for at most `entries_max` sources.
    pub fn new(per_sec: u32, burst: u32, entries_max: usize) -> Self {
        Self {
            per_sec: f64::from(per_sec),
            burst: f64::from(burst.max(1)),
            entries_max: entries_max.max(1),
            buckets: HashMap::new(),
        }
    }

    /// Takes a token for `source` at `now_ms`; false if it has none left.
    pub fn allow(&mut self, source: SourceKey, now_ms: u64) -> bool {
        let (rate, burst) = (self.per_sec / 1000.0, self.burst);
        let level = |(tokens, at): (f64, u64), now: u64| (tokens + now.saturating_sub(at) as f64 * rate).min(burst);
        if self.buckets.len() >= self.entries_max && !self.buckets.contains_key(&source) {
            // Full buckets belong to sources that have been quiet: they lose nothing.
            self.buckets.retain(|_, b| level(*b, now_ms) < burst);
            if self.buckets.len() >= self.entries_max {
                self.buckets.clear();
            }
        }
        let b = self.buckets.entry(source).or_insert((burst, now_ms));
        let tokens = level(*b, now_ms);
        if tokens < 1.0 {
            *b = (tokens, now_ms.max(b.1));
            return false;
        }
        *b = (tokens - 1.0, now_ms.max(b.1));
        true
    }
}

/// Remembers which (source, reason) pairs were logged, so an attack writes one log line
/// per source and reason and is otherwise only counted. Bounded: when full it starts over
/// (one more line per pair then, never unbounded memory).
#[derive(Debug)]
pub struct RefusalLog {
    seen: Mutex<HashSet<(SourceKey, &'static str)>>,
    entries_max: usize,
}

impl Default for RefusalLog {
    fn default() -> Self {
        Self::new(REFUSAL_LOG_ENTRIES_MAX)
    }
}

/// Default bound of a [`RefusalLog`].
pub const REFUSAL_LOG_ENTRIES_MAX: usize = 10_000;

impl RefusalLog {
    /// A log remembering at most `entries_max` pairs.
    pub fn new(entries_max: usize) -> Self {
        Self { seen: Mutex::new(HashSet::new()), entries_max: entries_max.max(1) }
    }

    /// True the first time `(source, reason)` is seen (log it then); false afterwards.
    pub fn first(&self, source: SourceKey, reason: &'static str) -> bool {
        let mut seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
        if seen.len() >= self.entries_max && !seen.contains(&(source, reason)) {
            seen.clear();
        }
        seen.insert((source, reason))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ipv6_counts_per_64_and_mapped_ipv4_as_ipv4() {
        let a: IpAddr = "2001:db8:1:2:aaaa::1".parse().unwrap();
        let b: IpAddr = "2001:db8:1:2:bbbb::9".parse().unwrap();
        let c: IpAddr = "2001:db8:1:3::1".parse().unwrap();
        assert_eq!(SourceKey::from(a), SourceKey::from(b));
        assert_ne!(SourceKey::from(a), SourceKey::from(c));
        let mapped: IpAddr = "::ffff:198.18.0.7".parse().unwrap();
        assert_eq!(SourceKey::from(mapped), SourceKey::from("198.18.0.7".parse::<IpAddr>().unwrap()));
        assert_eq!(SourceKey::from(a).to_string(), "2001:db8:1:2::/64");
    }

    #[test]
    fn per_source_claims_are_capped_and_given_back() {
        let p = PerSource::new(1);
        let a = SourceKey::V4([127, 0, 0, 2]);
        let held = p.claim(a).unwrap();
        assert!(p.claim(a).is_none());
        assert!(p.claim(SourceKey::V4([127, 0, 0, 1])).is_some());
        drop(held);
        assert_eq!(p.held(&a), 0);
        assert!(p.claim(a).is_some());
    }

    #[test]
    fn source_rate_is_a_token_bucket_per_source() {
        let mut r = SourceRate::new(10, 3, 100);
        let a = SourceKey::V4([127, 0, 0, 2]);
        assert!((0..3).all(|_| r.allow(a, 1000)));
        assert!(!r.allow(a, 1000));
        assert!(r.allow(SourceKey::V4([127, 0, 0, 1]), 1000), "another source has its own bucket");
        assert!(!r.allow(a, 1050), "half a token after 50 ms");
        assert!(r.allow(a, 1100));
        // Bounded: a spoofed flood from many sources keeps at most entries_max buckets.
        for i in 0..10_000u32 {
            r.allow(SourceKey::V4(i.to_be_bytes()), 2000);
        }
        assert!(r.buckets.len() <= 100);
    }

    #[test]
    fn refusals_logged_once_per_source_and_reason_and_bounded() {
        let log = RefusalLog::new(3);
        let s = |i: u8| SourceKey::V4([127, 0, 0, i]);
        assert!(log.first(s(1), "a"));
        assert!(!log.first(s(1), "a"));
        assert!(log.first(s(1), "b"));
        assert!(log.first(s(2), "a"));
        // Full: a new pair starts the set over rather than growing it.
        assert!(log.first(s(3), "a"));
        assert!(log.seen.lock().unwrap().len() <= 3);
    }
}
