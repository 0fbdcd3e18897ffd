//! A slot's mail leaving a node that no longer replicates the slot. The node keeps its
//! copy and goes on offering it to the slot's replicas in every anti-entropy round until
//! one of them answers that it holds exactly the same mail (`Matches`, by digest), or
//! until [`HANDOVER_KEEP_MS`] have passed; only then does the copy go. A node that
//! becomes a replica of the slot again simply keeps it.

use super::store::MailStore;
use std::collections::BTreeMap;

/// How long a former replica keeps a slot's mail when no replica confirms it holds the
/// same (its quotas filled in another order, say): long enough for any repair to finish,
/// short enough that a node does not carry slots it left for the whole retention.
pub const HANDOVER_KEEP_MS: u64 = 6 * 3600 * 1000;

/// The slots a node is handing over, since when.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HandOvers {
    keep_ms: u64,
    since: BTreeMap<u32, u64>,
}

/// What one round decides for the slots a node no longer replicates.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Round {
    /// Slots whose mail to offer to their replicas (digests) this round.
    pub offer: Vec<u32>,
    /// Slots whose mail goes now, unconfirmed: kept as long as allowed.
    pub expired: Vec<u32>,
}

impl Default for HandOvers {
    fn default() -> Self {
        Self::new(HANDOVER_KEEP_MS)
    }
}

impl HandOvers {
    /// No slot being handed over; an unconfirmed copy is kept `keep_ms`.
    pub fn new(keep_ms: u64) -> Self {
        Self { keep_ms, since: BTreeMap::new() }
    }

    /// One round at `now`: `with_mail` are the slots whose store holds anything, `held`
    /// tells whether this node replicates a slot. A slot held again, or left empty, is
    /// forgotten; one newly left starts its time.
    pub fn round(&mut self, now: u64, with_mail: &[u32], held: impl Fn(u32) -> bool) -> Round {
        let left: BTreeMap<u32, ()> = with_mail.iter().filter(|s| !held(**s)).map(|s| (*s, ())).collect();
        self.since.retain(|s, _| left.contains_key(s));
        let mut out = Round::default();
        for s in left.keys() {
            let since = *self.since.entry(*s).or_insert(now);
            if now.saturating_sub(since) >= self.keep_ms {
                self.since.remove(s);
                out.expired.push(*s);
            } else {
                out.offer.push(*s);
            }
        }
        out
    }

    /// A peer answered that it holds exactly our mail of `slot`: whether our copy may go
    /// (if it is still what we offered). Only a replica's word counts, and only for a
    /// slot this node is handing over and does not replicate (again).
    pub fn matched(&self, slot: u32, me_replica: bool, peer_replica: bool) -> bool {
        !me_replica && peer_replica && self.since.contains_key(&slot)
    }

    /// The slot's copy went.
    pub fn released(&mut self, slot: u32) {
        self.since.remove(&slot);
    }

    /// Slots being handed over.
    pub fn len(&self) -> usize {
        self.since.len()
    }

    /// Whether no slot is being handed over.
    pub fn is_empty(&self) -> bool {
        self.since.is_empty()
    }
}

impl MailStore {
    /// Lets this store's mail go once it has been handed over: always when `matching`
    /// is None (the time ran out), else only if our digest is still `matching` (what a
    /// replica said it holds; anything that came in since would otherwise be lost).
    /// Returns whether it went.
    pub fn release(&mut self, matching: Option<[u8; 16]>) -> bool {
        if matching.is_some_and(|d| d != self.digest()) {
            return false;
        }
        self.clear();
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crypto::keys::KeyId;
    use crate::index::mail::message::tests::mail;
    use crate::index::mail::sync::{Answer, Standing};
    use crate::index::mail::{Budget, MailLimits};
    use crate::index::rpc::{MAIL_RPC_LEN_MAX, MailRpc};

    const T0: u64 = 1_800_000_000_000;
    const SLOT: u32 = 7;

    fn store(budget: &Budget) -> MailStore {
        MailStore::new(MailLimits::default(), budget.clone())
    }

    #[test]
    fn a_left_slot_is_offered_until_released_and_forgotten_when_held_again() {
        let mut h = HandOvers::new(1000);
        let r = h.round(T0, &[1, 2, 3], |s| s == 2);
        assert_eq!(r, Round { offer: vec![1, 3], expired: vec![] }, "slot 2 is still ours to replicate");
        assert!(h.matched(1, false, true));
        assert!(!h.matched(1, false, false), "only a replica's word counts");
        assert!(!h.matched(1, true, true), "a slot held again is not let go");
        assert!(!h.matched(2, false, true), "a slot never left is not let go");
        // Slot 3 is held again, slot 1 emptied (expired messages): both forgotten.
        let r = h.round(T0 + 10, &[3], |s| s == 3);
        assert_eq!(r, Round::default());
        assert!(h.is_empty());
        assert!(!h.matched(1, false, true) && !h.matched(3, false, true));
    }

    #[test]
    fn an_unconfirmed_copy_goes_after_the_bound_counted_from_leaving() {
        let mut h = HandOvers::new(1000);
        assert_eq!(h.round(T0, &[1], |_| false).offer, [1]);
        assert_eq!(h.round(T0 + 999, &[1, 2], |_| false).offer, [1, 2], "slot 2 starts its own time");
        assert_eq!(h.round(T0 + 1000, &[1, 2], |_| false), Round { offer: vec![2], expired: vec![1] });
        assert_eq!(h.len(), 1);
        // Left again later: a new time.
        assert_eq!(h.round(T0 + 1500, &[1, 2], |_| false).offer, [1, 2]);
    }

    #[test]
    fn a_copy_goes_only_if_it_is_still_what_the_replica_matched() {
        let budget = Budget::new(1 << 20);
        let mut s = store(&budget);
        s.store(T0, mail(1, "bob", "alice", T0, 100));
        let offered = s.digest();
        s.store(T0, mail(2, "bob", "alice", T0, 100));
        assert!(!s.release(Some(offered)), "a message came in after the offer");
        assert_eq!(s.stats().messages, 2);
        assert!(s.release(Some(s.digest())));
        assert!(s.is_empty());
        assert_eq!(budget.used(), 0, "its bytes are back in the node's budget");
        s.store(T0, mail(3, "bob", "alice", T0, 100));
        assert!(s.release(None), "out of time: it goes whatever it holds");
        assert_eq!(budget.used(), 0);
    }

    /// Carries requests between two stores through their encoding until none is left;
    /// returns the `Matches` the former replica heard.
    fn exchange(now: u64, former: &mut MailStore, replica: &mut MailStore, first: MailRpc) -> Vec<(u32, [u8; 16])> {
        // (to the replica?, request)
        let mut queue = std::collections::VecDeque::from([(true, first)]);
        let mut matches = Vec::new();
        for _ in 0..10_000 {
            let Some((to_replica, rpc)) = queue.pop_front() else { return matches };
            let b = rpc.encode();
            assert!(b.len() <= MAIL_RPC_LEN_MAX, "{} bytes", b.len());
            let rpc = MailRpc::decode(&b).unwrap();
            if let MailRpc::Matches { slots } = rpc {
                assert!(!to_replica);
                matches.extend(slots);
                continue;
            }
            let Answer { replies, .. } = if to_replica {
                replica.respond(now, SLOT, Standing { me_replica: true, peer_replica: false }, rpc)
            } else {
                former.respond(now, SLOT, Standing { me_replica: false, peer_replica: true }, rpc)
            };
            queue.extend(replies.into_iter().map(|r| (!to_replica, r)));
        }
        panic!("the exchange did not end");
    }

    #[test]
    fn a_former_replica_hands_its_slot_over_and_lets_go_once_matched() {
        let budget = Budget::new(64 << 20);
        let (mut former, mut replica) = (store(&budget), store(&budget));
        let d = KeyId([1; 8]);
        former.note_device("bob", d, T0);
        for i in 0..120u8 {
            // Spread over every bucket, with a few in one, so summaries page.
            let mut m = mail(i, "bob", if i % 2 == 0 { "alice" } else { "carol" }, T0, 60);
            m.id[0] = if i < 100 { 3 } else { i };
            m.id[1] = i;
            former.store(T0, m);
        }
        // The new replica already took one message directly, which the former lacks.
        let direct = mail(200, "bob", "dave", T0 + 5, 60);
        replica.store(T0 + 5, direct.clone());
        let digests = |s: &MailStore| MailRpc::Digests { slots: vec![(SLOT, s.digest())] };
        // A former replica's own round: offered, the copies converge, no word yet.
        let first = digests(&former);
        assert!(exchange(T0 + 10, &mut former, &mut replica, first).is_empty());
        assert_eq!(replica.stats().messages, 121);
        assert_eq!(replica.devices_digest(), former.devices_digest(), "the devices came along");
        assert!(former.holds(&direct.id), "a former replica takes in what it lacked, so the copies can be equal");
        // The next round: equal, and the replica says so.
        let first = digests(&former);
        let matched = exchange(T0 + 20, &mut former, &mut replica, first);
        assert_eq!(matched, [(SLOT, replica.digest())]);
        let mut h = HandOvers::new(HANDOVER_KEEP_MS);
        assert_eq!(h.round(T0 + 20, &[SLOT], |_| false).offer, [SLOT]);
        assert!(h.matched(SLOT, false, true));
        assert!(former.release(Some(matched[0].1)));
        h.released(SLOT);
        assert!(former.is_empty() && h.is_empty());
        assert_eq!(replica.fetch(T0 + 30, "bob", d, None, usize::MAX).messages.len(), 121);
    }

    #[test]
    fn a_replica_answers_a_fellow_replica_only_where_they_differ() {
        let budget = Budget::new(1 << 20);
        let (mut a, mut b) = (store(&budget), store(&budget));
        a.store(T0, mail(1, "bob", "alice", T0, 60));
        b.store(T0, mail(1, "bob", "alice", T0, 60));
        let both = Standing { me_replica: true, peer_replica: true };
        let digests = MailRpc::Digests { slots: vec![(SLOT, a.digest())] };
        assert_eq!(b.respond(T0, SLOT, both, digests.clone()), Answer::default(), "equal: nothing to say");
        // A node that is not a replica takes no part in another's round.
        let not = Standing { me_replica: false, peer_replica: true };
        b.store(T0, mail(2, "bob", "alice", T0, 60));
        assert_eq!(b.respond(T0, SLOT, not, digests.clone()), Answer::default());
        let r = b.respond(T0, SLOT, both, digests);
        assert!(matches!(r.replies[..], [MailRpc::Buckets { slot: SLOT, .. }]), "{r:?}");
        // A former replica does not reconcile summaries sent to it, and nobody answers
        // buckets or wants from a node that is not a replica.
        let s = MailRpc::Summary { slot: SLOT, summary: a.summary(0, None, 80) };
        assert_eq!(a.respond(T0, SLOT, not, s), Answer::default());
        let stranger = Standing { me_replica: true, peer_replica: false };
        let buckets = MailRpc::Buckets { slot: SLOT, digests: vec![[0; 8]; 32], devices: [0; 8] };
        assert_eq!(b.respond(T0, SLOT, stranger, buckets.clone()), Answer::default());
        assert!(!b.respond(T0, SLOT, both, buckets).replies.is_empty());
        let want = MailRpc::Want {
            slot: SLOT,
            wants: vec![crate::index::mail::Want { id: mail(2, "bob", "alice", T0, 60).id, acks_only: false }],
        };
        assert_eq!(b.respond(T0, SLOT, stranger, want.clone()).items(), 0);
        assert_eq!(b.respond(T0, SLOT, both, want).items(), 1);
    }
}
