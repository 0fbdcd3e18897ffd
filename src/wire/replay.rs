//! Sliding-window replay protection for sealed datagrams (in the manner of RFC 4303 §3.4.3).

/// How far behind the newest sequence number a datagram may arrive and still count.
pub const WINDOW: u64 = 128;

/// Remembers which sequence numbers in the last [`WINDOW`] have been accepted.
#[derive(Debug, Default, Clone)]
pub struct ReplayWindow {
    /// One past the highest accepted sequence number (0: none yet).
    next: u64,
    /// Bit i set: `next - 1 - i` was accepted.
    seen: u128,
}

impl ReplayWindow {
    /// A window that has accepted nothing.
    pub fn new() -> Self {
        Self::default()
    }

    /// Whether `seq` would be accepted, without recording it (check before authenticating).
    /// `u64::MAX` never is: no sender gets that far, and accepting it would wrap the
    /// window back to the start, where every number seen before passes again.
    pub fn check(&self, seq: u64) -> bool {
        if seq == u64::MAX {
            return false;
        }
        if seq >= self.next {
            return true;
        }
        let back = self.next - 1 - seq;
        back < WINDOW && self.seen & (1u128 << back) == 0
    }

    /// Records `seq` (call only after the frame authenticated); false if it is a replay.
    pub fn accept(&mut self, seq: u64) -> bool {
        if !self.check(seq) {
            return false;
        }
        if seq >= self.next {
            let shift = seq + 1 - self.next;
            self.seen = if shift >= WINDOW { 0 } else { self.seen << shift };
            self.seen |= 1;
            self.next = seq + 1;
        } else {
            self.seen |= 1u128 << (self.next - 1 - seq);
        }
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn in_order_reordered_and_replayed() {
        let mut w = ReplayWindow::new();
        assert!(w.accept(0));
        assert!(w.accept(2));
        assert!(w.accept(1));
        assert!(!w.accept(1));
        assert!(!w.accept(2));
        assert!(w.accept(500));
        assert!(!w.accept(300));
        assert!(w.accept(450));
    }

    /// Found by fuzzing (fuzz/regressions/replay-window-u64-max): a sealed frame numbered
    /// u64::MAX overflowed `seq + 1`, a panic with overflow checks and, without them, a
    /// window wrapped back to 0 that accepted every earlier number again.
    #[test]
    fn the_last_sequence_number_is_refused_and_the_window_never_wraps() {
        let mut w = ReplayWindow::new();
        assert!(w.accept(5));
        assert!(!w.check(u64::MAX));
        assert!(!w.accept(u64::MAX));
        assert!(!w.accept(5), "still a replay");
        assert!(w.accept(u64::MAX - 1));
        assert!(!w.accept(u64::MAX - 1));
        assert!(!w.accept(5));
    }

    proptest! {
        #[test]
        fn never_accepts_twice_even_near_the_top(base in prop_oneof![Just(0u64), Just(u64::MAX - 400)],
                                                 offsets in proptest::collection::vec(0u64..=400, 0..300)) {
            let mut w = ReplayWindow::new();
            let mut accepted = std::collections::HashSet::new();
            for o in offsets {
                let s = base.saturating_add(o);
                if w.accept(s) {
                    prop_assert!(accepted.insert(s), "{} accepted twice", s);
                }
            }
        }

        #[test]
        fn never_accepts_twice(seqs in proptest::collection::vec(0u64..400, 0..300)) {
            let mut w = ReplayWindow::new();
            let mut accepted = std::collections::HashSet::new();
            for s in seqs {
                if w.accept(s) {
                    prop_assert!(accepted.insert(s), "{} accepted twice", s);
                }
            }
        }
    }
}
