//! Slots a node replicated and no longer does. Their stores stay for a while: lookups that
//! widen reach former replicas while the new ones pull the slot in, and stored mail is
//! handed over from them ([`super::mail::handover`]). Then they go, so a node that lives
//! through many view changes does not carry a store (and an actor) for every slot it ever
//! held.

use std::collections::BTreeMap;

/// How long a former slot's store stays after the node stopped replicating it: several
/// anti-entropy rounds (the new replicas pull within one or two).
pub const RETIRE_AFTER_MS: u64 = 15 * 60 * 1000;

/// The slots with a store here that this node no longer replicates, since when.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Former {
    after_ms: u64,
    since: BTreeMap<u32, u64>,
}

impl Default for Former {
    fn default() -> Self {
        Self::new(RETIRE_AFTER_MS)
    }
}

impl Former {
    /// None yet; a store goes `after_ms` after its slot was left.
    pub fn new(after_ms: u64) -> Self {
        Self { after_ms, since: BTreeMap::new() }
    }

    /// The view changed at `now`: `stores` are the slots with a store here, `held` says
    /// which this node replicates. A slot newly left starts its time; one held again, or
    /// without a store, is forgotten.
    pub fn update(&mut self, now: u64, stores: impl IntoIterator<Item = u32>, held: impl Fn(u32) -> bool) {
        let left: Vec<u32> = stores.into_iter().filter(|s| !held(*s)).collect();
        self.since.retain(|s, _| left.contains(s));
        for s in left {
            self.since.entry(s).or_insert(now);
        }
    }

    /// The former slots whose store may go at `now`: left long enough ago, and with no
    /// mail still to hand over (`no_mail`). They are forgotten here.
    pub fn due(&mut self, now: u64, no_mail: impl Fn(u32) -> bool) -> Vec<u32> {
        let due: Vec<u32> = self
            .since
            .iter()
            .filter(|(s, since)| now.saturating_sub(**since) >= self.after_ms && no_mail(**s))
            .map(|(s, _)| *s)
            .collect();
        for s in &due {
            self.since.remove(s);
        }
        due
    }

    /// A former slot's store could not go (mail came meanwhile): its time starts again.
    pub fn restart(&mut self, slot: u32, now: u64) {
        self.since.insert(slot, now);
    }

    /// Former slots whose store is still here.
    pub fn len(&self) -> usize {
        self.since.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.since.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_left_slot_goes_after_its_time_once_its_mail_is_handed_over() {
        let mut f = Former::new(1000);
        f.update(0, [1, 2, 3], |s| s == 2);
        assert_eq!(f.len(), 2, "slots 1 and 3 were left");
        assert_eq!(f.due(999, |_| true), Vec::<u32>::new(), "not yet");
        // Slot 3 still has mail to hand over: it stays.
        assert_eq!(f.due(1000, |s| s != 3), vec![1]);
        assert_eq!(f.len(), 1);
        assert_eq!(f.due(5000, |_| true), vec![3]);
        assert!(f.is_empty());
    }

    #[test]
    fn a_slot_held_again_is_forgotten_and_a_later_leaving_starts_a_new_time() {
        let mut f = Former::new(1000);
        f.update(0, [1], |_| false);
        f.update(500, [1], |_| true);
        assert!(f.is_empty(), "held again");
        f.update(900, [1], |_| false);
        // Another view change does not restart the time of a slot already left.
        f.update(1200, [1, 4], |_| false);
        assert_eq!(f.due(1899, |_| true), Vec::<u32>::new());
        assert_eq!(f.due(1900, |_| true), vec![1]);
        assert_eq!(f.due(2200, |_| true), vec![4]);
        // A store that could not go starts its time again.
        f.update(2500, [6], |_| false);
        assert_eq!(f.due(3500, |_| true), vec![6]);
        f.restart(6, 3500);
        assert_eq!(f.due(4499, |_| true), Vec::<u32>::new());
        assert_eq!(f.due(4500, |_| true), vec![6]);
        // A store that is gone is forgotten.
        f.update(3000, [5], |_| false);
        f.update(3100, [], |_| false);
        assert!(f.is_empty());
    }
}
