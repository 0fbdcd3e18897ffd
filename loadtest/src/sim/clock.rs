//! Virtual time: a queue of events ordered by due time, ties broken by insertion order,
//! so a run depends on nothing but its inputs.

use std::cmp::Ordering;
use std::collections::{BTreeMap, BinaryHeap};

/// Milliseconds of virtual time since the start of the run.
pub type Ms = u64;

struct Due<E> {
    at: Ms,
    seq: u64,
    ev: E,
}

impl<E> PartialEq for Due<E> {
    fn eq(&self, o: &Self) -> bool {
        (self.at, self.seq) == (o.at, o.seq)
    }
}
impl<E> Eq for Due<E> {}
impl<E> PartialOrd for Due<E> {
    fn partial_cmp(&self, o: &Self) -> Option<Ordering> {
        Some(self.cmp(o))
    }
}
impl<E> Ord for Due<E> {
    // BinaryHeap is a max-heap: the earliest (then first inserted) must compare greatest.
    fn cmp(&self, o: &Self) -> Ordering {
        (o.at, o.seq).cmp(&(self.at, self.seq))
    }
}

/// Width of a bucket of later events (ms).
const BUCKET_MS: Ms = 1000;

/// The discrete-event queue and the current virtual time. Events due before `horizon`
/// are in a heap; later ones wait unsorted in per-second buckets until the heap runs
/// dry. A million users each keep an event an hour or more ahead: in one heap, every pop
/// walked twenty levels of a 100 MB array, a tenth of a run's time.
pub struct Queue<E> {
    heap: BinaryHeap<Due<E>>,
    /// Events due at or after `horizon`, by the start of their bucket.
    later: BTreeMap<Ms, Vec<Due<E>>>,
    horizon: Ms,
    len: usize,
    seq: u64,
    now: Ms,
}

impl<E> Default for Queue<E> {
    fn default() -> Self {
        Self { heap: BinaryHeap::new(), later: BTreeMap::new(), horizon: 0, len: 0, seq: 0, now: 0 }
    }
}

impl<E> Queue<E> {
    /// The current virtual time: the due time of the last event popped.
    pub fn now(&self) -> Ms {
        self.now
    }

    /// Schedules `ev` at `at` (never before now: a late event runs now).
    pub fn at(&mut self, at: Ms, ev: E) {
        self.seq += 1;
        self.len += 1;
        let due = Due { at: at.max(self.now), seq: self.seq, ev };
        if due.at < self.horizon {
            self.heap.push(due);
        } else {
            self.later.entry(due.at - due.at % BUCKET_MS).or_default().push(due);
        }
    }

    /// Schedules `ev` `after` ms from now.
    pub fn after(&mut self, after: Ms, ev: E) {
        self.at(self.now.saturating_add(after), ev);
    }

    /// The next event due no later than `until`, advancing the clock to it.
    pub fn pop_until(&mut self, until: Ms) -> Option<E> {
        loop {
            if let Some(d) = self.heap.peek() {
                if d.at > until {
                    return None;
                }
                let d = self.heap.pop()?;
                self.now = d.at;
                self.len -= 1;
                return Some(d.ev);
            }
            // The heap is dry: every event left is in a bucket, the first the earliest.
            let first = *self.later.first_key_value()?.0;
            if first > until {
                return None;
            }
            let (_, bucket) = self.later.pop_first()?;
            self.horizon = first.saturating_add(BUCKET_MS);
            self.heap.extend(bucket);
        }
    }

    /// Moves the clock forward to `t` (when no event is left before it).
    pub fn advance(&mut self, t: Ms) {
        self.now = self.now.max(t);
    }

    /// Events waiting.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether no event waits.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn earliest_first_then_insertion_order() {
        let mut q = Queue::default();
        q.at(20, "c");
        q.at(10, "a");
        q.at(10, "b");
        q.at(30, "d");
        let mut got = Vec::new();
        while let Some(e) = q.pop_until(25) {
            got.push((q.now(), e));
        }
        assert_eq!(got, vec![(10, "a"), (10, "b"), (20, "c")]);
        assert_eq!(q.len(), 1);
        q.after(0, "late");
        assert_eq!(q.pop_until(100), Some("late"), "scheduled at now (20), before d (30)");
    }

    #[test]
    fn the_same_order_as_one_heap_across_buckets() {
        // Events far ahead wait in buckets: the order must be what a single heap gives,
        // whatever is scheduled while earlier ones run.
        let mut q = Queue::default();
        let mut want = BinaryHeap::new();
        let mut x = 7u64;
        let mut rand = move |n: u64| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x % n
        };
        let mut got = Vec::new();
        let mut expect = Vec::new();
        for i in 0..20_000u64 {
            // On a coarse grid: ties, and events right at a bucket's edge, are common.
            let at = (q.now() + [0, 5, 999, 1000, 1001, 30_000, 3_600_000][rand(7) as usize] + rand(50)) / 250 * 250;
            let at = at.max(q.now());
            q.at(at, i);
            // The queue numbers events from 1 in the order scheduled.
            want.push(Due { at, seq: i + 1, ev: i });
            if rand(3) == 0 {
                let until = q.now() + rand(2000);
                while let Some(e) = q.pop_until(until) {
                    got.push((q.now(), e));
                }
                while want.peek().is_some_and(|d: &Due<u64>| d.at <= until) {
                    let d = want.pop().unwrap();
                    expect.push((d.at, d.ev));
                }
                q.advance(until);
            }
            assert_eq!(q.len(), want.len());
        }
        while let Some(e) = q.pop_until(u64::MAX) {
            got.push((q.now(), e));
        }
        while let Some(d) = want.pop() {
            expect.push((d.at, d.ev));
        }
        let first = got.iter().zip(&expect).position(|(g, e)| g != e);
        assert_eq!(first, None, "first out of order: {:?}", first.map(|i| (got[i], expect[i])));
        assert_eq!(got.len(), expect.len());
        assert!(q.is_empty());
    }
}
