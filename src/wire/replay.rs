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
    pub fn check(&self, seq: u64) -> bool {
        // The last number is never accepted: `next` would wrap to 0 and the window would
        // take every old number again. A sender that gets there must rekey.
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

    #[test]
    fn the_top_of_the_sequence_space_does_not_wrap() {
        let mut w = ReplayWindow::new();
        assert!(w.accept(u64::MAX - 1));
        assert!(!w.accept(u64::MAX), "the last number would wrap the window");
        assert!(!w.accept(u64::MAX - 1));
        assert!(!w.accept(0), "far behind the window");
        assert!(!w.check(u64::MAX - 200));
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
