//! A lookup by limited multicast, as a plain state machine: ask 4 replicas, then 8,
//! then 16 members, then the closest members up to 32 in all (every live member in a
//! cluster that small), then the login server's recently-seen directory. The driver sends what [`Lookup::poll`] asks for and feeds back verified
//! answers; every lookup knows how many super nodes it asked.

use super::entry::Entry;
use super::slot::{NodeId, Slot, SlotMap, closest};
use std::collections::HashSet;
use std::sync::Arc;

/// Widening settings.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LookupConfig {
    /// Cumulative fan-out of the stages before "everyone" (4, 8, 16).
    pub steps: Vec<usize>,
    /// How long each stage waits for answers, in milliseconds.
    pub step_timeout_ms: u64,
    /// Whether the last network stage runs (the closest members up to `widest`).
    pub ask_everyone: bool,
    /// The most members a lookup asks in all. The last network stage asks the closest up
    /// to this many, not every live member: at 20,000 super nodes that would be a storm
    /// for every typo, and the directory is the fallback (as in Skype).
    pub widest: usize,
    /// Whether a lookup that found nothing asks the login server's directory.
    pub ask_directory: bool,
}

impl Default for LookupConfig {
    fn default() -> Self {
        Self { steps: vec![4, 8, 16], step_timeout_ms: 300, ask_everyone: true, widest: 32, ask_directory: true }
    }
}

/// Which stage a lookup reached; a metric label.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Stage {
    /// The i-th configured fan-out step (0-based).
    Step(u8),
    /// The last, widest stage: the closest members up to [`LookupConfig::widest`] (every
    /// live member in a small cluster).
    Everyone,
    /// The login server's recently-seen directory.
    Directory,
}

impl Stage {
    /// A short label for metrics.
    pub fn label(self) -> &'static str {
        match self {
            Self::Step(0) => "step1",
            Self::Step(1) => "step2",
            Self::Step(2) => "step3",
            Self::Step(_) => "step_more",
            Self::Everyone => "everyone",
            Self::Directory => "directory",
        }
    }
}

/// What the driver should do next.
#[derive(Debug, PartialEq, Eq)]
pub enum Action {
    /// Send the lookup to these members (none of them asked before).
    Ask(Vec<NodeId>),
    /// Ask the login server's recently-seen directory.
    AskDirectory,
    /// Wait for answers until [`Lookup::deadline`].
    Wait,
    /// Finished.
    Done(Outcome),
}

/// How a lookup ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// A verified entry (the newest among the answers).
    Found {
        /// The entry.
        entry: Box<Entry>,
        /// The stage that found it.
        stage: Stage,
        /// Super nodes asked in all.
        asked: usize,
    },
    /// No super node had it; the directory's answer is the driver's to report.
    NotInIndex {
        /// Super nodes asked in all.
        asked: usize,
    },
}

/// One lookup.
#[derive(Debug)]
pub struct Lookup {
    key: String,
    slot: Slot,
    /// Whom to ask, closest first: the slot's replicas at first, ranked further only if
    /// the lookup widens past them (most end at the first step).
    order: Vec<NodeId>,
    /// The view to rank further from, until `order` holds all the lookup may ask.
    more: Option<Arc<SlotMap>>,
    cfg: LookupConfig,
    asked: usize,
    stage: Option<Stage>,
    pending: HashSet<NodeId>,
    best: Option<Entry>,
    deadline_ms: u64,
    finished: bool,
}

impl Lookup {
    /// A lookup of `key` (in `slot`) over the live `members`: only the closest it may
    /// ask are ranked.
    pub fn new(key: String, slot: Slot, members: &[NodeId], cfg: LookupConfig) -> Self {
        let order = closest(slot, members, Self::most(&cfg));
        Self::with_order(key, slot, order, None, cfg)
    }

    /// A lookup of `key` (in `slot`) over the members of `map`: it starts with the slot's
    /// replicas, which the map already ranked, and ranks the view only if it widens past
    /// them (at 20,000 members, 20,000 hashes).
    pub fn with_map(key: String, slot: Slot, map: Arc<SlotMap>, cfg: LookupConfig) -> Self {
        let order = map.replicas(slot).to_vec();
        let more = (map.members().len() > order.len()).then_some(map);
        Self::with_order(key, slot, order, more, cfg)
    }

    fn most(cfg: &LookupConfig) -> usize {
        let steps = cfg.steps.iter().copied().max().unwrap_or(0);
        if cfg.ask_everyone { steps.max(cfg.widest) } else { steps }
    }

    fn with_order(key: String, slot: Slot, order: Vec<NodeId>, more: Option<Arc<SlotMap>>, cfg: LookupConfig) -> Self {
        Self {
            key,
            slot,
            order,
            more,
            cfg,
            asked: 0,
            stage: None,
            pending: HashSet::new(),
            best: None,
            deadline_ms: 0,
            finished: false,
        }
    }

    /// The key looked up.
    pub fn key(&self) -> &str {
        &self.key
    }

    /// Super nodes asked so far.
    pub fn asked(&self) -> usize {
        self.asked
    }

    /// When the current stage gives up waiting.
    pub fn deadline(&self) -> u64 {
        self.deadline_ms
    }

    /// An answer from `from`: `Some` only for an entry the driver has verified.
    pub fn on_answer(&mut self, from: NodeId, entry: Option<Entry>) {
        if !self.pending.remove(&from) {
            return; // not asked, or answered already: ignore
        }
        if let Some(e) = entry
            && e.key() == self.key
            && self.best.as_ref().is_none_or(|b| e.supersedes(b))
        {
            self.best = Some(e);
        }
    }

    /// Ranks the view as far as the lookup may ask, if a stage needs more than `order`.
    fn rank_to(&mut self, upto: usize) {
        if upto > self.order.len()
            && let Some(map) = self.more.take()
        {
            let ranked = closest(self.slot, map.members(), Self::most(&self.cfg));
            debug_assert!(ranked.starts_with(&self.order[..self.order.len().min(ranked.len())]));
            self.order = ranked;
        }
    }

    fn next_stage(&mut self) -> Option<(Stage, usize)> {
        let from = match self.stage {
            None => 0,
            Some(Stage::Step(i)) => i as usize + 1,
            Some(Stage::Everyone) | Some(Stage::Directory) => return None,
        };
        let steps = self.cfg.steps.clone();
        for (i, &upto) in steps.iter().enumerate().skip(from) {
            self.rank_to(upto);
            if upto.min(self.order.len()) > self.asked {
                return Some((Stage::Step(i as u8), upto.min(self.order.len())));
            }
        }
        if !self.cfg.ask_everyone {
            return None;
        }
        self.rank_to(usize::MAX);
        // `order` holds no more than the widest stage may ask.
        (self.order.len() > self.asked).then_some((Stage::Everyone, self.order.len()))
    }

    /// What to do at `now_ms`.
    pub fn poll(&mut self, now_ms: u64) -> Action {
        if self.finished {
            return Action::Wait;
        }
        let stage_over = self.stage.is_some() && (self.pending.is_empty() || now_ms >= self.deadline_ms);
        if let Some(best) = &self.best {
            if stage_over {
                self.finished = true;
                let stage = self.stage.expect("an answer means a stage ran");
                return Action::Done(Outcome::Found { entry: Box::new(best.clone()), stage, asked: self.asked });
            }
            return Action::Wait;
        }
        if self.stage.is_some() && !stage_over {
            return Action::Wait;
        }
        match self.next_stage() {
            Some((stage, upto)) => {
                let ask: Vec<NodeId> = self.order[self.asked..upto].to_vec();
                self.asked = upto;
                self.stage = Some(stage);
                self.pending = ask.iter().copied().collect();
                self.deadline_ms = now_ms + self.cfg.step_timeout_ms;
                Action::Ask(ask)
            }
            None => {
                self.finished = true;
                if self.cfg.ask_directory && self.stage != Some(Stage::Directory) {
                    self.stage = Some(Stage::Directory);
                    return Action::AskDirectory;
                }
                Action::Done(Outcome::NotInIndex { asked: self.asked })
            }
        }
    }

    /// After [`Action::AskDirectory`], the lookup is over: the index had nothing.
    pub fn not_in_index(&self) -> Outcome {
        Outcome::NotInIndex { asked: self.asked }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crypto::KeyId;
    use crate::index::entry::Status;
    use crate::index::entry::tests::entry;
    use crate::index::slot::SlotSpace;

    fn members(n: u8) -> Vec<NodeId> {
        (0..n).map(|i| KeyId([i; 8])).collect()
    }

    fn lookup(n: u8) -> Lookup {
        let slot = SlotSpace::default().slot_of("alice");
        Lookup::new("alice".into(), slot, &members(n), LookupConfig::default())
    }

    #[test]
    fn found_at_the_first_stage() {
        let mut l = lookup(20);
        let Action::Ask(first) = l.poll(0) else { panic!() };
        assert_eq!(first.len(), 4);
        assert_eq!(l.poll(10), Action::Wait);
        let e = entry("alice", 1, 1_700_000_000_000, Status::Online);
        let newer = entry("alice", 1, 1_700_000_001_000, Status::Away);
        l.on_answer(first[0], Some(e));
        l.on_answer(first[1], Some(newer.clone()));
        l.on_answer(first[2], None);
        assert_eq!(l.poll(20), Action::Wait, "one replica still to answer");
        l.on_answer(first[3], None);
        match l.poll(30) {
            Action::Done(Outcome::Found { entry, stage, asked }) => {
                assert_eq!(*entry, newer, "the newest answer wins");
                assert_eq!(stage, Stage::Step(0));
                assert_eq!(asked, 4);
            }
            a => panic!("{a:?}"),
        }
    }

    #[test]
    fn widens_4_8_16_everyone_then_directory() {
        let mut l = lookup(30);
        let mut asked = Vec::new();
        let mut now = 0;
        loop {
            match l.poll(now) {
                Action::Ask(v) => {
                    asked.push(v.len());
                    now = l.deadline(); // nobody answers
                }
                Action::Wait => now = l.deadline(),
                Action::AskDirectory => break,
                Action::Done(o) => panic!("{o:?}"),
            }
        }
        assert_eq!(asked, [4, 4, 8, 14]);
        assert_eq!(l.not_in_index(), Outcome::NotInIndex { asked: 30 });
    }

    #[test]
    fn the_widest_stage_asks_the_closest_32_of_twenty_thousand_not_everyone() {
        let many: Vec<NodeId> = (0..20_000u64).map(|i| KeyId(i.to_be_bytes())).collect();
        let slot = SlotSpace::default().slot_of("nobody");
        let mut l = Lookup::new("nobody".into(), slot, &many, LookupConfig::default());
        let (mut asked, mut sizes, mut now) = (Vec::new(), Vec::new(), 0);
        loop {
            match l.poll(now) {
                Action::Ask(v) => {
                    sizes.push(v.len());
                    asked.extend(v);
                    now = l.deadline(); // nobody answers
                }
                Action::Wait => now = l.deadline(),
                Action::AskDirectory => break,
                Action::Done(o) => panic!("{o:?}"),
            }
        }
        assert_eq!(sizes, [4, 4, 8, 16], "then the directory");
        assert_eq!(asked, crate::index::slot::ranked(slot, &many)[..32], "the closest, closest first");
        assert_eq!(l.not_in_index(), Outcome::NotInIndex { asked: 32 });
    }

    /// Every stage's asks, in order, when nobody answers.
    fn stages(mut l: Lookup) -> Vec<Vec<NodeId>> {
        let mut asked = Vec::new();
        let mut now = 0;
        loop {
            match l.poll(now) {
                Action::Ask(v) => {
                    asked.push(v);
                    now = l.deadline();
                }
                Action::Wait => now = l.deadline(),
                Action::AskDirectory | Action::Done(_) => return asked,
            }
        }
    }

    #[test]
    fn a_lookup_from_the_slot_map_asks_exactly_what_a_full_ranking_would() {
        use crate::index::slot::SlotMap;
        for n in [3u8, 10, 12, 40, 200] {
            let m = members(n);
            let space = SlotSpace::default();
            let map = Arc::new(SlotMap::new(space, 10, &m));
            for user in ["alice", "bob", "zed"] {
                let slot = space.slot_of(user);
                let full = Lookup::new(user.into(), slot, &m, LookupConfig::default());
                let lazy = Lookup::with_map(user.into(), slot, map.clone(), LookupConfig::default());
                assert_eq!(stages(full), stages(lazy), "{n} members, {user}");
            }
        }
    }

    #[test]
    fn silent_answers_widen_without_waiting() {
        let mut l = lookup(6);
        let Action::Ask(first) = l.poll(0) else { panic!() };
        for m in &first {
            l.on_answer(*m, None);
        }
        // Everyone answered "no": the next stage starts at once, not at the deadline.
        let Action::Ask(second) = l.poll(1) else { panic!() };
        assert_eq!(second.len(), 2, "only 6 members exist");
        // Answers from members never asked, or twice, are ignored.
        l.on_answer(KeyId([99; 8]), Some(entry("alice", 1, 1_700_000_000_000, Status::Online)));
        assert!(matches!(l.poll(2), Action::Wait));
    }

    #[test]
    fn entries_for_another_key_do_not_count() {
        let mut l = lookup(4);
        let Action::Ask(first) = l.poll(0) else { panic!() };
        l.on_answer(first[0], Some(entry("mallory", 1, 1_700_000_000_000, Status::Online)));
        for m in &first[1..] {
            l.on_answer(*m, None);
        }
        assert_eq!(l.poll(1), Action::AskDirectory);
    }
}
