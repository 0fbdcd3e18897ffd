//! Sampled membership, for clusters too large to run foca in every node (foca keeps
//! every member in every node: N² members).
//!
//! A calibration sample of K nodes runs foca in full, in the same virtual time and on
//! the same network. Every change of the real cluster (a super node up or down) is
//! mirrored in the sample at the same moment: a random sample node crashes, or a down
//! one starts. So the sample sees the real cluster's absolute rate of changes, which is
//! what loads foca's piggybacked updates.
//!
//! The N super nodes are split into K groups (node b in group b mod K); group g is
//! shadowed by sample node g (or, while it is down, the nearest up node below it). All
//! nodes of a group share one view. When the shadow notices a mirrored change after a lag
//! l, its groups take in the real change at l·s after it happened, with
//! s = ln N / ln K: SWIM spreads an update epidemically, in O(log N) protocol periods, so
//! a cluster N times larger takes log N / log K times as long. What the shadow notices
//! that is no mirrored change (the partition's sides declaring each other down, a false
//! suspicion, the heal) is mirrored onto the real nodes its counterpart group stands for.
//! A group whose shadow never notices a change (it just joined, or a missed update) takes
//! it in when the change expires (`done_after`); those are counted as fallbacks.
//! A super node's gossip bytes are its shadow slot's, measured.

use super::clock::Ms;
use super::membership::Cluster;
use super::view::View;
use confab::index::NodeId;
use rand::RngExt;
use rand::rngs::StdRng;
use std::collections::BTreeMap;
use std::sync::Arc;

/// A real membership change in flight.
struct Change {
    member: NodeId,
    up: bool,
    at: Ms,
    /// Per group: 0 waiting, 1 scheduled, 2 taken in.
    state: Vec<u8>,
}

/// What a calibration node's notice means for the groups.
pub enum Notice {
    /// It is mirrored change `change`: `groups` take it in at `apply_at`; `lag` is what
    /// the calibration node took.
    Change { change: u32, apply_at: Ms, groups: Vec<u32>, lag: Ms },
    /// No change of ours: `groups` follow it for the super nodes of group `slot`.
    Mirror { groups: Vec<u32>, slot: u32 },
    /// Nothing to do.
    Nothing,
}

/// The groups, their views and the changes in flight.
pub struct Sampled {
    k: u32,
    scale: f64,
    /// Each group's view.
    pub views: Vec<Arc<View>>,
    changes: BTreeMap<u32, Change>,
    next: u32,
    pending: BTreeMap<(NodeId, bool), u32>,
    slot_of: BTreeMap<NodeId, u32>,
    /// Down sample slots and since when, longest down first: a start takes one only
    /// once the sample has surely noticed its departure (a quick restart would reach the
    /// others as a bump of a member they still hold, not a join).
    down: std::collections::VecDeque<(u32, Ms)>,
    /// When each sample slot last started: a node still catching up on the members it
    /// never knew shadows no group.
    started: Vec<Ms>,
}

impl Sampled {
    /// K groups, all seeing `truth`; `scale` stretches the sample's lags; the sample's
    /// ids are those `cluster` gives its slots.
    pub fn new(k: u32, cluster: &Cluster, truth: Arc<View>, scale: f64, down: impl Fn(u32) -> bool) -> Self {
        let slot_of = cluster.slots.iter().enumerate().map(|(i, s)| (s.id, i as u32)).collect();
        let down = (0..k).filter(|i| down(*i)).map(|i| (i, 0)).collect();
        Self {
            k,
            scale,
            views: vec![truth; k as usize],
            changes: BTreeMap::new(),
            next: 0,
            pending: BTreeMap::new(),
            slot_of,
            down,
            started: vec![0; k as usize],
        }
    }

    /// How long a change waits for the shadows before every group takes it in.
    pub fn done_after(&self) -> Ms {
        (120_000.0 * self.scale) as Ms
    }

    /// Whether sample node `i` shadows groups: up, and up long enough to know the
    /// cluster (a new node learns the members it never knew slowly, by being contacted).
    fn established(&self, cluster: &Cluster, i: u32, now: Ms) -> bool {
        cluster.is_up(i) && self.started.get(i as usize).is_none_or(|s| *s == 0 || now >= s + self.done_after())
    }

    /// Sample node `i` started at `now`.
    pub fn started(&mut self, i: u32, now: Ms) {
        if let Some(s) = self.started.get_mut(i as usize) {
            *s = now;
        }
    }

    /// The groups sample node `observer` shadows: its own, and those below it whose
    /// node is down or new.
    fn groups_of(&self, cluster: &Cluster, observer: u32, now: Ms) -> Vec<u32> {
        // Slots past K (the sample grew) shadow no group.
        if observer >= self.k || !self.established(cluster, observer, now) {
            return Vec::new();
        }
        let mut gs = vec![observer];
        let mut g = observer;
        for _ in 1..self.k {
            g = (g + self.k - 1) % self.k;
            if self.established(cluster, g, now) {
                break;
            }
            gs.push(g);
        }
        gs
    }

    /// Up to three random up sample nodes other than `except`: seeds to join through.
    pub fn seeds(&self, cluster: &Cluster, rng: &mut StdRng, except: u32) -> Vec<u32> {
        let mut up: Vec<u32> = (0..cluster.slots.len() as u32).filter(|i| *i != except && cluster.is_up(*i)).collect();
        let n = up.len().min(3);
        for i in 0..n {
            let j = rng.random_range(i..up.len());
            up.swap(i, j);
        }
        up.truncate(n);
        up
    }

    /// Sample slot `slot`, new, mirrors change `change` (a join when no slot was down).
    pub fn adopt(&mut self, cluster: &Cluster, slot: u32, change: u32) {
        let id = cluster.slots[slot as usize].id;
        self.slot_of.insert(id, slot);
        self.pending.insert((id, true), change);
    }

    /// Real node `member` came up or went down at `now`: records the change and picks the
    /// sample node that mirrors it (to start if `up`, to crash if not), if any.
    pub fn change(
        &mut self,
        cluster: &Cluster,
        rng: &mut StdRng,
        member: NodeId,
        up: bool,
        now: Ms,
    ) -> (u32, Option<u32>) {
        let c = self.next;
        self.next += 1;
        self.changes.insert(c, Change { member, up, at: now, state: vec![0; self.k as usize] });
        let slot = if up {
            match self.down.front() {
                Some(&(slot, since)) if since == 0 || now >= since + self.done_after() => {
                    self.down.pop_front();
                    slot
                }
                _ => return (c, None),
            }
        } else {
            let candidates: Vec<u32> = (0..cluster.slots.len() as u32).filter(|i| cluster.is_up(*i)).collect();
            if candidates.len() < 2 {
                return (c, None);
            }
            let slot = candidates[rng.random_range(0..candidates.len())];
            self.down.push_back((slot, now));
            slot
        };
        self.pending.insert((cluster.slots[slot as usize].id, up), c);
        (c, Some(slot))
    }

    /// Sample node `observer` noticed `member` come up or go down.
    pub fn noticed(&mut self, cluster: &Cluster, observer: u32, member: NodeId, up: bool, now: Ms) -> Notice {
        let groups = self.groups_of(cluster, observer, now);
        if let Some(&c) = self.pending.get(&(member, up)) {
            let Some(ch) = self.changes.get_mut(&c) else { return Notice::Nothing };
            let groups: Vec<u32> = groups.into_iter().filter(|g| ch.state[*g as usize] == 0).collect();
            for g in &groups {
                ch.state[*g as usize] = 1;
            }
            let lag = now - ch.at;
            let apply_at = ch.at + (lag as f64 * self.scale) as Ms;
            return Notice::Change { change: c, apply_at, groups, lag };
        }
        match self.slot_of.get(&member) {
            Some(&slot) if slot < self.k => Notice::Mirror { groups, slot },
            _ => Notice::Nothing,
        }
    }

    /// Marks change `change` taken in by group `g`: what to take in, if it was not yet.
    pub fn take(&mut self, g: u32, change: u32) -> Option<(NodeId, bool, Ms)> {
        let ch = self.changes.get_mut(&change)?;
        if ch.state[g as usize] == 2 {
            return None;
        }
        ch.state[g as usize] = 2;
        Some((ch.member, ch.up, ch.at))
    }

    /// Groups that never heard of `change` (not even scheduled).
    pub fn unapplied(&self, change: u32) -> Vec<u32> {
        self.changes
            .get(&change)
            .map(|ch| (0..self.k).filter(|g| ch.state[*g as usize] == 0).collect())
            .unwrap_or_default()
    }

    /// Groups with `change` scheduled but not yet taken in.
    pub fn scheduled(&self, change: u32) -> Vec<u32> {
        self.changes
            .get(&change)
            .map(|ch| (0..self.k).filter(|g| ch.state[*g as usize] == 1).collect())
            .unwrap_or_default()
    }

    /// Drops a finished change.
    pub fn forget(&mut self, change: u32) {
        self.changes.remove(&change);
        self.pending.retain(|_, c| *c != change);
    }
}
