//! A per-sender sliding replay window over 64-bit packet counters (RFC 6479's bitmap,
//! without wrap-around: a counter never wraps, a sender stops at `u64::MAX`).

/// How many counters behind the highest one seen are still told apart.
pub const WIDTH: u64 = 1024;
const WORDS: usize = (WIDTH / 64) as usize;

/// Why a counter was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Replay {
    /// Seen before.
    #[error("counter already seen")]
    Seen,
    /// Too far behind the highest counter seen to tell.
    #[error("counter too old for the replay window")]
    TooOld,
}

/// The counters seen from one sender: the highest, and a bitmap of the `WIDTH` up to it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ReplayWindow {
    highest: Option<u64>,
    bits: [u64; WORDS],
}

impl ReplayWindow {
    fn bit(c: u64) -> (usize, u64) {
        (((c / 64) % WORDS as u64) as usize, 1 << (c % 64))
    }

    /// Would `counter` be accepted? (Changes nothing: a packet is marked only once it
    /// passed every other check, so a forged or misaddressed copy cannot use it up.)
    pub fn check(&self, counter: u64) -> Result<(), Replay> {
        let Some(high) = self.highest else { return Ok(()) };
        if counter > high {
            return Ok(());
        }
        if high - counter >= WIDTH {
            return Err(Replay::TooOld);
        }
        let (w, m) = Self::bit(counter);
        if self.bits[w] & m != 0 { Err(Replay::Seen) } else { Ok(()) }
    }

    /// Marks `counter` seen; the same as [`Self::check`] for the outcome.
    pub fn accept(&mut self, counter: u64) -> Result<(), Replay> {
        self.check(counter)?;
        match self.highest {
            Some(high) if counter <= high => {}
            Some(high) if counter - high < WIDTH => {
                // Clear the slots the window slides past (whole words where it can).
                let mut c = high + 1;
                while c <= counter {
                    let (w, m) = Self::bit(c);
                    if c % 64 == 0 && counter - c >= 63 {
                        self.bits[w] = 0;
                        c = c.saturating_add(64);
                    } else {
                        self.bits[w] &= !m;
                        c = match c.checked_add(1) {
                            Some(n) => n,
                            None => break,
                        };
                    }
                }
                self.highest = Some(counter);
            }
            _ => {
                self.bits = [0; WORDS];
                self.highest = Some(counter);
            }
        }
        let (w, m) = Self::bit(counter);
        self.bits[w] |= m;
        Ok(())
    }

    /// The highest counter seen.
    pub fn highest(&self) -> Option<u64> {
        self.highest
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn in_order_reordered_replayed_and_old() {
        let mut w = ReplayWindow::default();
        for c in [10, 11, 13, 12] {
            assert_eq!(w.accept(c), Ok(()));
        }
        assert_eq!(w.accept(12), Err(Replay::Seen));
        assert_eq!(w.check(9), Ok(()), "never seen, inside the window");
        assert_eq!(w.accept(13 + WIDTH), Ok(()));
        assert_eq!(w.accept(13), Err(Replay::TooOld));
        assert_eq!(w.accept(14), Ok(()), "exactly WIDTH - 1 behind");
        assert_eq!(w.accept(14), Err(Replay::Seen));
        assert_eq!(w.accept(14 + WIDTH), Ok(()));
        assert_eq!(w.accept(14 + WIDTH), Err(Replay::Seen));
    }

    #[test]
    fn the_top_of_the_counter_space() {
        let mut w = ReplayWindow::default();
        assert_eq!(w.accept(u64::MAX - 3), Ok(()));
        assert_eq!(w.accept(u64::MAX), Ok(()));
        assert_eq!(w.accept(u64::MAX - 1), Ok(()));
        assert_eq!(w.accept(u64::MAX), Err(Replay::Seen));
        assert_eq!(w.accept(u64::MAX - 3), Err(Replay::Seen));
        assert_eq!(w.accept(0), Err(Replay::TooOld));
        let mut w = ReplayWindow::default();
        assert_eq!(w.accept(0), Ok(()));
        assert_eq!(w.accept(u64::MAX), Ok(()));
        assert_eq!(w.accept(0), Err(Replay::TooOld));
    }

    proptest! {
        /// Against a plain set of everything seen: the window accepts a counter exactly
        /// when it is new and not older than WIDTH behind the highest accepted so far.
        #[test]
        fn matches_a_model(start in any::<u64>(), steps in proptest::collection::vec(0u64..3000, 1..300)) {
            let mut w = ReplayWindow::default();
            let mut seen = std::collections::HashSet::new();
            let mut high: Option<u64> = None;
            for s in steps {
                let c = start.saturating_add(s);
                let fresh = !seen.contains(&c) && high.is_none_or(|h| c > h || h - c < WIDTH);
                prop_assert_eq!(w.accept(c).is_ok(), fresh, "counter {}", c);
                if fresh {
                    seen.insert(c);
                    high = Some(high.map_or(c, |h| h.max(c)));
                }
            }
        }
    }
}
