//! `limit`: the highest loss-free rate of a server, searched rather than stepped.
//!
//! One search runs short windows on the same legs at a rate per leg that doubles from a
//! start until a window fails, then bisects between the last good and the first failed
//! rate until they are within a precision of each other (or the probe count ends). A
//! window is good when every datagram sent arrived, no send failed, and the generator
//! really offered the rate asked (at least 98% of it): a rate the generator cannot send
//! is not a rate the server carried. The search is repeated, and the median and range
//! reported; the generator's own ceiling (the legs looped to each other, no server) is
//! searched the same way and printed beside, so a limit the generator sets says so.

use crate::traffic::{Outcome, Traffic};
use indicatif::ProgressBar;
use serde::Serialize;
use std::time::{Duration, Instant};

/// How one search runs.
#[derive(Debug, Clone)]
pub struct Options {
    /// The rate per leg of the first window.
    pub start_rate: u32,
    /// The highest rate per leg tried.
    pub max_rate: u32,
    /// Stop when the failed and good rates are within this fraction of each other.
    pub precision: f64,
    /// Most windows per search.
    pub max_probes: usize,
}

/// Share of the asked rate the generator must have offered for a window to count.
const OFFERED_MIN: f64 = 0.98;

/// One window of a search.
#[derive(Debug, Clone, Serialize)]
pub struct Probe {
    /// Rate per leg asked.
    pub rate_per_leg: u32,
    /// Rate asked over every leg, datagrams a second.
    pub asked_pps: f64,
    /// What the generator sent, datagrams a second.
    pub offered_pps: f64,
    /// Datagrams sent.
    pub sent: u64,
    /// Datagrams lost.
    pub lost: u64,
    /// Sends that failed.
    pub send_errors: u64,
    /// Whether the window counted as loss-free.
    pub good: bool,
}

/// What one search found.
#[derive(Debug, Clone, Serialize)]
pub struct Search {
    /// The highest good rate per leg (0: none).
    pub rate_per_leg: u32,
    /// The same over every leg, datagrams a second.
    pub pps: f64,
    /// Whether the search reached `max_rate` without a failure (the limit is above).
    pub at_max: bool,
    /// Whether a failed window fell short of the asked rate at the generator.
    pub generator_short: bool,
    /// Every window, in order.
    pub probes: Vec<Probe>,
}

/// Judges one window at `rate` per leg over `legs` legs.
pub fn judge(rate: u32, legs: usize, o: &Outcome) -> Probe {
    let asked = f64::from(rate) * legs as f64;
    let window = o.window.as_secs_f64().max(1e-9);
    let offered = o.sent as f64 / window;
    let lost = o.sent.saturating_sub(o.delivered);
    Probe {
        rate_per_leg: rate,
        asked_pps: asked,
        offered_pps: offered,
        sent: o.sent,
        lost,
        send_errors: o.send_errors,
        good: o.sent > 0 && lost == 0 && o.send_errors == 0 && offered >= OFFERED_MIN * asked,
    }
}

/// The unjudged window before a search's first probe.
const WARMUP: Duration = Duration::from_millis(200);

/// The next rate to try: doubling until the first failure, then halfway (None: done).
pub fn next_rate(good: u32, failed: Option<u32>, o: &Options, probes: usize) -> Option<u32> {
    if probes >= o.max_probes {
        return None;
    }
    match failed {
        None if good >= o.max_rate => None,
        None if good == 0 => Some(o.start_rate.min(o.max_rate)),
        None => Some(good.saturating_mul(2).min(o.max_rate)),
        Some(f) => {
            if f <= good + 1 || f64::from(f - good) <= o.precision * f64::from(f) {
                None
            } else {
                Some(good + (f - good) / 2)
            }
        }
    }
}

/// Searches the highest loss-free rate per leg on `t` (whose legs are latched), each
/// window `probe` long; `deadline` bounds the whole search.
pub fn search(
    t: &mut Traffic,
    o: &Options,
    probe: Duration,
    bar: &ProgressBar,
    deadline: Instant,
) -> anyhow::Result<Search> {
    // One window at the start rate first, not judged: the first window after the legs
    // latch can fall a few datagrams short of its rate (threads and caches still cold),
    // and a search must not begin by blaming the generator.
    t.set_rate(o.start_rate.min(o.max_rate));
    t.set_duration(WARMUP.min(probe));
    t.run(&ProgressBar::hidden())?;
    t.set_duration(probe);
    let legs = t.legs();
    let (mut good, mut failed) = (0u32, None::<u32>);
    let mut out = Search { rate_per_leg: 0, pps: 0.0, at_max: false, generator_short: false, probes: Vec::new() };
    while let Some(rate) = next_rate(good, failed, o, out.probes.len()) {
        if Instant::now() >= deadline {
            break;
        }
        t.set_rate(rate);
        let w = t.run(&ProgressBar::hidden())?;
        let p = judge(rate, legs, &w);
        bar.set_message(format!(
            "{} pps: {}",
            p.asked_pps as u64,
            if p.good { "no loss".to_string() } else { format!("{} lost, {} send errors", p.lost, p.send_errors) }
        ));
        if p.good {
            good = good.max(rate);
        } else {
            failed = Some(failed.map_or(rate, |f| f.min(rate)));
            if p.offered_pps < OFFERED_MIN * p.asked_pps {
                out.generator_short = true;
            }
        }
        out.probes.push(p);
    }
    out.rate_per_leg = good;
    out.pps = f64::from(good) * legs as f64;
    out.at_max = failed.is_none() && good >= o.max_rate;
    Ok(out)
}

/// Median, least and most of several searches, datagrams a second.
#[derive(Debug, Clone, Serialize)]
pub struct Summary {
    /// The column title (`confab`, `raw`, `coturn`, `generator`, …).
    pub label: String,
    /// Times each datagram crosses the server (0 for the looped generator).
    pub hops: u8,
    /// Every search's loss-free rate over every leg, in the order they ran.
    pub runs: Vec<f64>,
    /// Their median.
    pub median: Option<f64>,
    /// The least.
    pub min: Option<f64>,
    /// The most.
    pub max: Option<f64>,
    /// Searches that hit the highest rate tried (their limit is above).
    pub at_max: usize,
    /// Searches with a failed window where the generator fell short of the rate.
    pub generator_short: usize,
    /// Every search in full.
    pub searches: Vec<Search>,
}

impl Summary {
    /// A summary of `searches` for `label`.
    pub fn of(label: &str, hops: u8, searches: Vec<Search>) -> Self {
        let runs: Vec<f64> = searches.iter().map(|s| s.pps).collect();
        let mut sorted = runs.clone();
        sorted.sort_by(f64::total_cmp);
        let median = match sorted.len() {
            0 => None,
            n if n % 2 == 1 => Some(sorted[n / 2]),
            n => Some((sorted[n / 2 - 1] + sorted[n / 2]) / 2.0),
        };
        Self {
            label: label.to_owned(),
            hops,
            median,
            min: sorted.first().copied(),
            max: sorted.last().copied(),
            at_max: searches.iter().filter(|s| s.at_max).count(),
            generator_short: searches.iter().filter(|s| s.generator_short).count(),
            runs,
            searches,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn opts() -> Options {
        Options { start_rate: 100, max_rate: 100_000, precision: 0.05, max_probes: 20 }
    }

    /// A server that carries up to `limit` per leg, searched without sockets.
    fn simulate(limit: u32) -> u32 {
        let o = opts();
        let (mut good, mut failed, mut n) = (0, None, 0);
        while let Some(r) = next_rate(good, failed, &o, n) {
            n += 1;
            if r <= limit {
                good = good.max(r);
            } else {
                failed = Some(failed.map_or(r, |f: u32| f.min(r)));
            }
        }
        good
    }

    #[test]
    fn the_search_converges_within_its_precision() {
        for limit in [150, 999, 4_321, 77_777] {
            let found = simulate(limit);
            assert!(found <= limit && f64::from(limit - found) <= 0.05 * f64::from(limit) + 1.0, "{limit}: {found}");
        }
        assert_eq!(simulate(1_000_000), 100_000, "stops at the highest rate tried");
    }

    #[test]
    fn medians_and_ranges() {
        let s = |pps: f64| Search { rate_per_leg: 0, pps, at_max: false, generator_short: false, probes: vec![] };
        let m = Summary::of("x", 1, vec![s(5.0), s(1.0), s(3.0), s(4.0), s(2.0)]);
        assert_eq!((m.median, m.min, m.max), (Some(3.0), Some(1.0), Some(5.0)));
        assert_eq!(m.runs, vec![5.0, 1.0, 3.0, 4.0, 2.0]);
    }
}
