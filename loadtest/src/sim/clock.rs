//! Virtual time: a queue of events ordered by due time, ties broken by insertion order,
//! so a run depends on nothing but its inputs.

use std::cmp::Ordering;
use std::collections::BinaryHeap;

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

/// The discrete-event queue and the current virtual time.
pub struct Queue<E> {
    heap: BinaryHeap<Due<E>>,
    seq: u64,
    now: Ms,
}

impl<E> Default for Queue<E> {
    fn default() -> Self {
        Self { heap: BinaryHeap::new(), seq: 0, now: 0 }
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
        self.heap.push(Due { at: at.max(self.now), seq: self.seq, ev });
    }

    /// Schedules `ev` `after` ms from now.
    pub fn after(&mut self, after: Ms, ev: E) {
        self.at(self.now.saturating_add(after), ev);
    }

    /// The next event due no later than `until`, advancing the clock to it.
    pub fn pop_until(&mut self, until: Ms) -> Option<E> {
        if self.heap.peek().is_none_or(|d| d.at > until) {
            return None;
        }
        let d = self.heap.pop()?;
        self.now = d.at;
        Some(d.ev)
    }

    /// Moves the clock forward to `t` (when no event is left before it).
    pub fn advance(&mut self, t: Ms) {
        self.now = self.now.max(t);
    }

    /// Events waiting.
    pub fn len(&self) -> usize {
        self.heap.len()
    }

    /// Whether no event waits.
    pub fn is_empty(&self) -> bool {
        self.heap.is_empty()
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
}
