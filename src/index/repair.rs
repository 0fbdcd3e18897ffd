//! How many bytes of anti-entropy repair go to one replica: a cap per answer (one Want or
//! Differ) and a byte rate per peer, charged also for summaries, bucket lists and each
//! store read a member's request causes, so a replica, or a replayed or forged request,
//! cannot make a node stream or scan slots without bound.

/// A per-peer byte budget: a token bucket holding at most one second's worth.
#[derive(Debug, Clone, PartialEq)]
pub struct RepairBudget {
    per_sec: u64,
    tokens: u64,
    at_ms: u64,
}

impl RepairBudget {
    /// A full bucket of `per_sec` bytes at `now_ms`.
    pub fn new(per_sec: u64, now_ms: u64) -> Self {
        Self { per_sec, tokens: per_sec, at_ms: now_ms }
    }

    /// Bytes the bucket holds at `now_ms`.
    pub fn available(&mut self, now_ms: u64) -> u64 {
        self.take(0, now_ms);
        self.tokens
    }

    /// Takes `bytes` if the bucket holds them at `now_ms`.
    pub fn take(&mut self, bytes: u64, now_ms: u64) -> bool {
        let elapsed = now_ms.saturating_sub(self.at_ms);
        let refill = u64::try_from(u128::from(elapsed) * u128::from(self.per_sec) / 1000).unwrap_or(u64::MAX);
        self.tokens = self.tokens.saturating_add(refill).min(self.per_sec);
        self.at_ms = self.at_ms.max(now_ms);
        if bytes > self.tokens {
            return false;
        }
        self.tokens -= bytes;
        true
    }
}

/// Which of `sizes` (entry sizes, in the order they would go) fit in one answer of at
/// most `answer_max` bytes and in `budget`: the count sent; the rest is skipped (the next
/// round, starting elsewhere in the slot, carries on).
pub fn fit(sizes: &[usize], answer_max: usize, budget: &mut RepairBudget, now_ms: u64) -> usize {
    let mut used = 0usize;
    for (i, s) in sizes.iter().enumerate() {
        if used.saturating_add(*s) > answer_max || !budget.take(*s as u64, now_ms) {
            return i;
        }
        used += s;
    }
    sizes.len()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn capped_per_answer_and_limited_per_second() {
        let mut b = RepairBudget::new(10_000, 0);
        assert_eq!(fit(&[1000; 8], 3500, &mut b, 0), 3, "the answer cap");
        assert_eq!(fit(&[1000; 20], 100_000, &mut b, 0), 7, "the rest of the second's budget");
        assert_eq!(fit(&[1000; 20], 100_000, &mut b, 0), 0);
        assert_eq!(fit(&[1000; 20], 100_000, &mut b, 500), 5, "half a second refills half");
        assert_eq!(fit(&[1000; 20], 100_000, &mut b, 60_000), 10, "never more than one second's worth");
        assert!(!RepairBudget::new(10, 0).take(11, u64::MAX), "no overflow at the top of the clock");
    }
}
