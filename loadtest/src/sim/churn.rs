//! Super-node churn, from Skype's measurements (Guha, Daswani, Jain 2006): 40% of super
//! nodes had a single session, with a median remaining life of 1.75 days; the rest came
//! and went over a median life of 67 days. Lives and sessions are exponential: the law is
//! memoryless, so the remaining life of a node alive at the start has the measured median
//! too. Multi-session nodes alternate sessions and downtimes (medians are knobs: the paper
//! gives no figure for them). A node whose life ends is gone for good and a new one takes
//! its place, so the cluster stays about its size.

use super::rng::exp_median;
use rand::RngExt;
use rand::rngs::StdRng;
use serde::Serialize;

const DAY_MS: f64 = 86_400_000.0;
const HOUR_MS: f64 = 3_600_000.0;

/// The churn model's parameters.
#[derive(Debug, Clone, Serialize)]
pub struct Model {
    /// Share of super nodes with a single session.
    pub single_share: f64,
    /// Median remaining life of a single-session node, days.
    pub single_life_days: f64,
    /// Median life of a multi-session node, days.
    pub multi_life_days: f64,
    /// Median session of a multi-session node, hours.
    pub multi_session_hours: f64,
    /// Median downtime between its sessions, hours.
    pub multi_down_hours: f64,
    /// Median delay before a replacement joins, seconds.
    pub replace_secs: f64,
}

impl Default for Model {
    fn default() -> Self {
        Self {
            single_share: 0.4,
            single_life_days: 1.75,
            multi_life_days: 67.0,
            multi_session_hours: 12.0,
            multi_down_hours: 2.0,
            replace_secs: 60.0,
        }
    }
}

/// A super node's kind and its life.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Life {
    /// Whether it has one session only.
    pub single: bool,
    /// When its life ends (ms, absolute): it leaves for good.
    pub ends_ms: u64,
}

/// What happens next to a live node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Next {
    /// Its life ends at this time: it goes, a replacement comes.
    Dies(u64),
    /// Its session ends at this time; it comes back at the second.
    Pauses(u64, u64),
}

impl Model {
    /// A new node's kind and life, alive from `now`.
    pub fn life(&self, rng: &mut StdRng, now: u64) -> Life {
        let single = rng.random_bool(self.single_share);
        let days = if single { self.single_life_days } else { self.multi_life_days };
        Life { single, ends_ms: now + (exp_median(rng, days) * DAY_MS) as u64 }
    }

    /// What happens next to a node of `life` whose session starts at `now`.
    pub fn next(&self, rng: &mut StdRng, life: Life, now: u64) -> Next {
        if life.single {
            return Next::Dies(life.ends_ms);
        }
        let pause = now + (exp_median(rng, self.multi_session_hours) * HOUR_MS) as u64;
        if pause >= life.ends_ms {
            return Next::Dies(life.ends_ms);
        }
        Next::Pauses(pause, pause + (exp_median(rng, self.multi_down_hours) * HOUR_MS) as u64)
    }

    /// The delay before a replacement for a dead node joins.
    pub fn replace_after(&self, rng: &mut StdRng) -> u64 {
        (exp_median(rng, self.replace_secs) * 1000.0) as u64
    }

    /// Share of multi-session nodes up at any moment (the downtime they are in).
    pub fn multi_up_share(&self) -> f64 {
        self.multi_session_hours / (self.multi_session_hours + self.multi_down_hours)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sim::rng::stream;

    fn median(mut v: Vec<f64>) -> f64 {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    }

    #[test]
    fn shares_and_medians_match_the_measurements() {
        let m = Model::default();
        let mut r = stream(5, "churn");
        let lives: Vec<Life> = (0..40_000).map(|_| m.life(&mut r, 0)).collect();
        let single: Vec<f64> = lives.iter().filter(|l| l.single).map(|l| l.ends_ms as f64 / DAY_MS).collect();
        let multi: Vec<f64> = lives.iter().filter(|l| !l.single).map(|l| l.ends_ms as f64 / DAY_MS).collect();
        let share = single.len() as f64 / lives.len() as f64;
        assert!((0.39..0.41).contains(&share), "single-session share {share}");
        let (ms, mm) = (median(single), median(multi));
        assert!((1.65..1.85).contains(&ms), "single-session median life {ms} days");
        assert!((63.0..71.0).contains(&mm), "multi-session median life {mm} days");
        let sessions: Vec<f64> = lives
            .iter()
            .filter(|l| !l.single)
            .filter_map(|l| match m.next(&mut r, *l, 0) {
                Next::Pauses(p, _) => Some(p as f64 / HOUR_MS),
                Next::Dies(_) => None,
            })
            .collect();
        let s = median(sessions);
        assert!((11.0..13.0).contains(&s), "multi-session median session {s} h");
        assert_eq!(m.next(&mut r, Life { single: true, ends_ms: 9 }, 0), Next::Dies(9));
    }
}
