//! The login server's defences against guessing and floods, behind one interface.
//!
//! - **Per source** (an IPv4 address or IPv6 /64): failures fill a leaky bucket. Past
//!   `source_puzzle_after` its requests need a puzzle; past `source_refuse_after` they are
//!   refused before any RSA work until the bucket drains. Only the misbehaving source
//!   waits.
//! - **Per user**: failures against one account fill its bucket; past `user_puzzle_after`
//!   every login to that account needs a puzzle, harder as the attack goes on. A user
//!   under attack is never refused: a guesser pays per guess, the real user solves one
//!   puzzle (well under a second) and logs in.
//! - **Registrations** are limited per source (a bucket refilled per hour).
//! - **A global surge** (more requests in one second than `surge_requests_per_sec`) makes
//!   every new request pay a puzzle rather than be refused.
//! - **Replays**: the timestamp window and nonce cache.
//!
//! Everything here is plain state over `now`; [`Guard`] is the seam where login servers
//! sharing a database will share this state too.

use super::puzzle::PuzzleKey;
use super::replay::{ReplayCache, ReplayVerdict};
use crate::net::source::SourceKey;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::hash::Hash;
use std::sync::Mutex;

/// The limits, each a config key under `[login_server.throttle]`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct ThrottlePolicy {
    /// Failures from one source (net of forgiveness) before its requests need a puzzle.
    pub source_puzzle_after: u32,
    /// Failures from one source before its requests are refused until it calms down.
    pub source_refuse_after: u32,
    /// Failures forgiven per minute, per source.
    pub source_forgive_per_min: u32,
    /// Failed logins to one user before every login to it needs a puzzle.
    pub user_puzzle_after: u32,
    /// Failures forgiven per minute, per user.
    pub user_forgive_per_min: u32,
    /// Difficulty of the first puzzle, in leading zero bits (2^bits hashes).
    pub puzzle_bits: u8,
    /// Hardest puzzle (difficulty grows by a bit each time an attack doubles).
    pub puzzle_bits_max: u8,
    /// How long a puzzle may be solved after it was issued.
    pub puzzle_lifetime_secs: u64,
    /// Registrations one source may make per hour, on average.
    pub registrations_per_source_per_hour: u32,
    /// Registrations one source may make at once.
    pub registrations_burst: u32,
    /// Requests per second (all sources) above which every request needs a puzzle.
    pub surge_requests_per_sec: u32,
    /// Most sources and users remembered; beyond it the calmest are forgotten.
    pub entries_max: usize,
}

impl Default for ThrottlePolicy {
    fn default() -> Self {
        Self {
            // Generous: a carrier-grade NAT puts thousands of users behind one address.
            source_puzzle_after: 20,
            source_refuse_after: 200,
            source_forgive_per_min: 20,
            user_puzzle_after: 5,
            user_forgive_per_min: 1,
            // 2^14 hashes on average (~15 ms on one core); at most 2^17 (~0.13 s), so even
            // a slow attempt (p99, 4.6 times the mean) stays well under a second.
            puzzle_bits: 14,
            puzzle_bits_max: 17,
            puzzle_lifetime_secs: 120,
            registrations_per_source_per_hour: 30,
            registrations_burst: 10,
            surge_requests_per_sec: 300,
            entries_max: 100_000,
        }
    }
}

impl ThrottlePolicy {
    /// Limits for a test or load run whose thousands of hosts all come from one address
    /// (loopback): registrations and surges are not limited; failures still are.
    pub fn one_source_load() -> Self {
        Self {
            registrations_per_source_per_hour: u32::MAX / 2,
            registrations_burst: u32::MAX / 2,
            surge_requests_per_sec: u32::MAX / 2,
            ..Self::default()
        }
    }

    /// Checks the values; the error names the offending key (under `login_server.throttle`).
    pub fn validate(&self) -> Result<(), (&'static str, String)> {
        let p = super::puzzle::BITS_MAX;
        if self.puzzle_bits == 0 || self.puzzle_bits > p {
            return Err(("puzzle_bits", format!("must be 1..={p}")));
        }
        if self.puzzle_bits_max < self.puzzle_bits || self.puzzle_bits_max > p {
            return Err(("puzzle_bits_max", format!("must be puzzle_bits..={p}")));
        }
        if self.source_refuse_after < self.source_puzzle_after {
            return Err(("source_refuse_after", "must be at least source_puzzle_after".into()));
        }
        // Without forgiveness a refused source, or a user whose logins need puzzles,
        // stays so until the process restarts, whatever the refusal announces.
        if self.source_forgive_per_min == 0 {
            return Err(("source_forgive_per_min", "must be at least 1".into()));
        }
        if self.user_forgive_per_min == 0 {
            return Err(("user_forgive_per_min", "must be at least 1".into()));
        }
        if self.puzzle_lifetime_secs < 10 {
            return Err(("puzzle_lifetime_secs", "must be at least 10".into()));
        }
        if self.entries_max < 100 {
            return Err(("entries_max", "must be at least 100".into()));
        }
        Ok(())
    }
}

/// What a request may do before its envelope is opened.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Gate {
    /// Go on.
    Admit,
    /// Only with a puzzle of at least this many bits.
    Puzzle(u8),
    /// Refused: retry after this many seconds.
    Refuse(u64),
}

/// The kind of request, as far as limits care.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RequestKind {
    /// Register an account.
    Register,
    /// Log in.
    Login,
    /// A buddy-list operation (carries a credential: already logged in).
    Buddy,
}

/// Throttling, puzzle and replay state: what every login server of one database must
/// agree on. [`MemoryGuard`] keeps it in this process.
pub trait Guard: Send + Sync + std::fmt::Debug {
    /// Before any RSA work: may a request of `kind` from `source` be opened at `now`?
    fn admit(&self, source: SourceKey, kind: RequestKind, now: u64) -> Gate;
    /// After the envelope opened: the puzzle a login to `user` needs, if it is under attack.
    fn user_puzzle(&self, user: &str, now: u64) -> Option<u8>;
    /// A failure from `source` (and against `user`, for a wrong password).
    fn failed(&self, source: SourceKey, user: Option<&str>, now: u64);
    /// A registration from `source`: Err(wait) if the source is over its limit.
    fn register(&self, source: SourceKey, now: u64) -> Result<(), u64>;
    /// Checks and records a request's nonce and timestamp.
    fn check_replay(&self, nonce: [u8; 32], timestamp: u64, now: u64) -> ReplayVerdict;
    /// The key puzzles are issued and checked with.
    fn puzzle_key(&self) -> &PuzzleKey;
    /// The limits in force.
    fn policy(&self) -> &ThrottlePolicy;
}

/// A leaky bucket: `level` drains at a fixed rate; each event adds one.
#[derive(Debug, Clone, Copy, Default)]
struct Bucket {
    level: f64,
    at: u64,
}

impl Bucket {
    fn level(&self, now: u64, drain_per_sec: f64) -> f64 {
        (self.level - now.saturating_sub(self.at) as f64 * drain_per_sec).max(0.0)
    }

    fn add(&mut self, now: u64, drain_per_sec: f64) -> f64 {
        self.level = self.level(now, drain_per_sec) + 1.0;
        self.at = self.at.max(now);
        self.level
    }
}

/// Buckets by key, bounded: when full, the emptiest are forgotten first.
#[derive(Debug)]
struct Buckets<K> {
    map: HashMap<K, Bucket>,
    drain_per_sec: f64,
    entries_max: usize,
}

impl<K: Eq + Hash + Clone> Buckets<K> {
    fn new(per_min: f64, entries_max: usize) -> Self {
        Self { map: HashMap::new(), drain_per_sec: per_min / 60.0, entries_max }
    }

    fn level(&self, key: &K, now: u64) -> f64 {
        self.map.get(key).map_or(0.0, |b| b.level(now, self.drain_per_sec))
    }

    fn add(&mut self, key: K, now: u64) -> f64 {
        if self.map.len() >= self.entries_max && !self.map.contains_key(&key) {
            let d = self.drain_per_sec;
            self.map.retain(|_, b| b.level(now, d) > 0.0);
            if self.map.len() >= self.entries_max {
                // Still full of live buckets: keep the fuller half (the attackers).
                let mut levels: Vec<f64> = self.map.values().map(|b| b.level(now, d)).collect();
                levels.sort_by(f64::total_cmp);
                let cutoff = levels[levels.len() / 2];
                self.map.retain(|_, b| b.level(now, d) > cutoff);
            }
        }
        let d = self.drain_per_sec;
        self.map.entry(key).or_default().add(now, d)
    }

    /// Seconds until `key`'s level drains down to `level`.
    fn secs_until(&self, key: &K, level: f64, now: u64) -> u64 {
        let over = self.level(key, now) - level;
        if over <= 0.0 || self.drain_per_sec <= 0.0 { 0 } else { (over / self.drain_per_sec).ceil() as u64 }
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.map.len()
    }
}

#[derive(Debug)]
struct State {
    sources: Buckets<SourceKey>,
    users: Buckets<String>,
    registrations: Buckets<SourceKey>,
    replay: ReplayCache,
    /// Requests seen in the current second (for surge detection).
    second: (u64, u32),
}

/// The guard state of one login server, in memory.
#[derive(Debug)]
pub struct MemoryGuard {
    policy: ThrottlePolicy,
    key: PuzzleKey,
    state: Mutex<State>,
}

impl MemoryGuard {
    /// A guard with `policy`, a replay window of `replay_window_secs`, and puzzle `key`.
    pub fn new(policy: ThrottlePolicy, replay_window_secs: u64, key: PuzzleKey) -> Self {
        let n = policy.entries_max;
        let state = State {
            sources: Buckets::new(f64::from(policy.source_forgive_per_min), n),
            users: Buckets::new(f64::from(policy.user_forgive_per_min), n),
            registrations: Buckets::new(f64::from(policy.registrations_per_source_per_hour) / 60.0, n),
            replay: ReplayCache::new(replay_window_secs, 1_000_000),
            second: (0, 0),
        };
        Self { policy, key, state: Mutex::new(state) }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // Plain counters that stay consistent between statements.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Bits for a bucket `level` over a threshold `after`: one more bit per doubling.
    fn bits(&self, level: f64, after: u32) -> u8 {
        let over = (level / f64::from(after.max(1))).max(1.0);
        let extra = over.log2().floor() as u32;
        let bits = u32::from(self.policy.puzzle_bits) + extra;
        bits.min(u32::from(self.policy.puzzle_bits_max)) as u8
    }
}

impl Guard for MemoryGuard {
    fn admit(&self, source: SourceKey, kind: RequestKind, now: u64) -> Gate {
        let p = &self.policy;
        let mut s = self.lock();
        if s.second.0 != now {
            s.second = (now, 0);
        }
        s.second.1 = s.second.1.saturating_add(1);
        let surge = s.second.1 > p.surge_requests_per_sec;
        let level = s.sources.level(&source, now);
        // Refused from the refuse_after-th failure until the level has drained to one
        // below it, as the wait we announce says: a level that merely dipped under the
        // threshold a second later must not buy a guesser another try at once.
        let refusing = level >= f64::from(p.source_refuse_after)
            || (p.source_refuse_after > 0 && level > f64::from(p.source_refuse_after) - 1.0);
        if refusing {
            let wait = s.sources.secs_until(&source, f64::from(p.source_refuse_after) - 1.0, now);
            return Gate::Refuse(wait.max(1));
        }
        if kind == RequestKind::Register {
            let burst = f64::from(p.registrations_burst.max(1));
            if s.registrations.level(&source, now) + 1.0 > burst {
                return Gate::Refuse(s.registrations.secs_until(&source, burst - 1.0, now).max(1));
            }
        }
        let source_bits = (level >= f64::from(p.source_puzzle_after)).then(|| self.bits(level, p.source_puzzle_after));
        match (source_bits, surge) {
            (Some(b), _) => Gate::Puzzle(b),
            (None, true) => Gate::Puzzle(p.puzzle_bits),
            (None, false) => Gate::Admit,
        }
    }

    fn user_puzzle(&self, user: &str, now: u64) -> Option<u8> {
        let level = self.lock().users.level(&user.to_owned(), now);
        let after = self.policy.user_puzzle_after;
        (level >= f64::from(after)).then(|| self.bits(level, after))
    }

    fn failed(&self, source: SourceKey, user: Option<&str>, now: u64) {
        let mut s = self.lock();
        s.sources.add(source, now);
        if let Some(u) = user {
            s.users.add(u.to_owned(), now);
        }
    }

    fn register(&self, source: SourceKey, now: u64) -> Result<(), u64> {
        let burst = f64::from(self.policy.registrations_burst.max(1));
        let mut s = self.lock();
        if s.registrations.level(&source, now) + 1.0 > burst {
            return Err(s.registrations.secs_until(&source, burst - 1.0, now).max(1));
        }
        s.registrations.add(source, now);
        Ok(())
    }

    fn check_replay(&self, nonce: [u8; 32], timestamp: u64, now: u64) -> ReplayVerdict {
        self.lock().replay.check(nonce, timestamp, now)
    }

    fn puzzle_key(&self) -> &PuzzleKey {
        &self.key
    }

    fn policy(&self) -> &ThrottlePolicy {
        &self.policy
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: SourceKey = SourceKey::V4([127, 0, 0, 2]);
    const B: SourceKey = SourceKey::V4([127, 0, 0, 1]);

    fn guard(p: ThrottlePolicy) -> MemoryGuard {
        MemoryGuard::new(p, 300, PuzzleKey::new([0; 32]))
    }

    #[test]
    fn failures_elsewhere_never_refuse_a_clean_source() {
        let g = guard(ThrottlePolicy::default());
        for i in 0..1000 {
            g.failed(A, Some("victim"), 1000 + i / 100);
        }
        // The attacker is refused; the victim's own source is admitted; a login to the
        // victim costs a puzzle (harder as the attack grew), never a refusal.
        assert!(matches!(g.admit(A, RequestKind::Login, 1010), Gate::Refuse(w) if w > 0));
        assert_eq!(g.admit(B, RequestKind::Login, 1010), Gate::Admit);
        assert_eq!(g.user_puzzle("victim", 1010), Some(17));
        assert_eq!(g.user_puzzle("someone_else", 1010), None);
    }

    #[test]
    fn source_goes_puzzle_then_refuse_then_recovers() {
        let p = ThrottlePolicy {
            source_puzzle_after: 3,
            source_refuse_after: 6,
            source_forgive_per_min: 60,
            ..Default::default()
        };
        let g = guard(p);
        for _ in 0..3 {
            g.failed(A, None, 100);
        }
        assert_eq!(g.admit(A, RequestKind::Login, 100), Gate::Puzzle(14));
        for _ in 0..3 {
            g.failed(A, None, 100);
        }
        assert_eq!(g.admit(A, RequestKind::Login, 100), Gate::Refuse(1));
        // One failure forgiven per second: back to puzzles, then to nothing.
        assert_eq!(g.admit(A, RequestKind::Login, 102), Gate::Puzzle(14));
        assert_eq!(g.admit(A, RequestKind::Login, 106), Gate::Admit);
    }

    #[test]
    fn forgiveness_is_never_zero() {
        let none = ThrottlePolicy { source_forgive_per_min: 0, ..Default::default() };
        assert_eq!(none.validate().map_err(|e| e.0), Err("source_forgive_per_min"));
        let none = ThrottlePolicy { user_forgive_per_min: 0, ..Default::default() };
        assert_eq!(none.validate().map_err(|e| e.0), Err("user_forgive_per_min"));
        assert_eq!(ThrottlePolicy::default().validate(), Ok(()));
    }

    #[test]
    fn a_refusal_lasts_as_long_as_it_says() {
        let p = ThrottlePolicy { source_refuse_after: 5, source_forgive_per_min: 1, ..Default::default() };
        let g = guard(p);
        for _ in 0..5 {
            g.failed(A, None, 100);
        }
        let Gate::Refuse(wait) = g.admit(A, RequestKind::Login, 100) else { panic!("not refused") };
        assert_eq!(wait, 60, "one failure forgiven a minute");
        // A second later the level is just under five: still refused, for about 59 s
        // more (the level drains in floating point: give the rounding a second).
        assert!(matches!(g.admit(A, RequestKind::Login, 101), Gate::Refuse(59 | 60)));
        assert!(matches!(g.admit(A, RequestKind::Login, 159), Gate::Refuse(1 | 2)));
        assert!(!matches!(g.admit(A, RequestKind::Login, 161), Gate::Refuse(_)), "drained under four: one more try");
    }

    #[test]
    fn user_puzzle_grows_per_doubling_and_forgives() {
        let g = guard(ThrottlePolicy { user_forgive_per_min: 60, ..Default::default() });
        for _ in 0..4 {
            g.failed(A, Some("v"), 10);
        }
        assert_eq!(g.user_puzzle("v", 10), None);
        g.failed(A, Some("v"), 10);
        assert_eq!(g.user_puzzle("v", 10), Some(14));
        for _ in 0..5 {
            g.failed(A, Some("v"), 10);
        }
        assert_eq!(g.user_puzzle("v", 10), Some(15));
        assert_eq!(g.user_puzzle("v", 20), None);
    }

    #[test]
    fn registrations_limited_per_source_and_surges_cost_a_puzzle() {
        let p = ThrottlePolicy {
            registrations_burst: 2,
            registrations_per_source_per_hour: 3600,
            surge_requests_per_sec: 3,
            ..Default::default()
        };
        let g = guard(p);
        assert_eq!(g.register(A, 50), Ok(()));
        assert_eq!(g.register(A, 50), Ok(()));
        assert_eq!(g.register(A, 50), Err(1));
        assert_eq!(g.register(B, 50), Ok(()));
        assert!(matches!(g.admit(A, RequestKind::Register, 50), Gate::Refuse(_)));
        assert_eq!(g.register(A, 51), Ok(()));
        // Surge: the fourth request in one second pays; the next second starts over.
        for _ in 0..2 {
            assert_eq!(g.admit(B, RequestKind::Login, 60), Gate::Admit);
        }
        assert_eq!(g.admit(B, RequestKind::Login, 60), Gate::Admit);
        assert_eq!(g.admit(B, RequestKind::Login, 60), Gate::Puzzle(14));
        assert_eq!(g.admit(B, RequestKind::Login, 61), Gate::Admit);
    }

    #[test]
    fn bounded_memory() {
        let g = guard(ThrottlePolicy { entries_max: 100, ..Default::default() });
        for i in 0..10_000u32 {
            g.failed(SourceKey::V4(i.to_be_bytes()), Some(&i.to_string()), 100);
        }
        let s = g.lock();
        assert!(s.sources.len() <= 100 && s.users.len() <= 100);
    }

    #[test]
    fn policy_validation_names_keys() {
        assert!(ThrottlePolicy::default().validate().is_ok());
        let bad = ThrottlePolicy { puzzle_bits: 30, ..Default::default() };
        assert_eq!(bad.validate().unwrap_err().0, "puzzle_bits");
        let bad = ThrottlePolicy { source_refuse_after: 1, ..Default::default() };
        assert_eq!(bad.validate().unwrap_err().0, "source_refuse_after");
    }
}
