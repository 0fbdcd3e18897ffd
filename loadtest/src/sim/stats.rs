//! What a run counts and measures, as it goes.

use super::clock::Ms;
use hdrhistogram::Histogram;

fn hist() -> Histogram<u64> {
    Histogram::new(3).expect("valid")
}

/// Counters and histograms of one run.
pub struct Stats {
    /// Whether the warm-up is over.
    pub measuring: bool,
    /// How long the cluster took to form (the warm-up), ms.
    pub warmup_ms: u64,
    /// Whether every view matched the truth when measuring began.
    pub converged_at_start: bool,
    /// CPU of the one full slot-map build at the start, µs.
    pub slot_map_build_us: u64,
    /// How long a super node took to see a join (ms), one sample per (node, change).
    pub lag_up: Histogram<u64>,
    /// How long a super node took to see a departure.
    pub lag_down: Histogram<u64>,
    /// The same, measured in the calibration sample's own foca (sampled mode).
    pub cal_lag_up: Histogram<u64>,
    /// The same for departures.
    pub cal_lag_down: Histogram<u64>,
    /// Live members declared down.
    pub false_downs: u64,
    /// Group takes-in that came from a change's expiry, not a shadow's notice.
    pub fallback_applies: u64,
    /// Super-node sessions started, ended for good, paused.
    pub sn_starts: u64,
    /// Super nodes whose life ended.
    pub sn_deaths: u64,
    /// Multi-session super nodes that went down for a while.
    pub sn_pauses: u64,
    /// Super nodes the crash scenario took down.
    pub crashed: u64,
    /// Users the flash crowd logged in.
    pub flash_logins: u64,
    /// When the scenario struck, and when the partition healed.
    pub scenario_at: Option<Ms>,
    /// When the partition healed.
    pub healed_at: Option<Ms>,
    /// Users online when measuring began.
    pub warm_online: u64,
    /// User logins, logouts, presence refreshes, moves to another super node.
    pub logins: u64,
    /// Logouts.
    pub logouts: u64,
    /// Refreshes.
    pub refreshes: u64,
    /// Moves after a super node died.
    pub user_moves: u64,
    /// Lookups issued for users seen within the retention, and for names nobody has.
    pub lookups_existing: u64,
    /// Lookups for names nobody has.
    pub lookups_missing: u64,
    /// Lookups answered, for existing users: found (by the index or the directory).
    pub answered_existing: u64,
    /// Found among those.
    pub found: u64,
    /// Found by the directory among those.
    pub found_by_directory: u64,
    /// Names nobody has that a lookup claimed to find.
    pub found_missing: u64,
    /// Super nodes asked per lookup of a user seen (itself included, if a replica).
    pub lookup_messages: Histogram<u64>,
    /// Super nodes asked per lookup of a name nobody has.
    pub missing_messages: Histogram<u64>,
    /// Virtual ms per lookup of a user seen.
    pub lookup_latency: Histogram<u64>,
    /// Live super nodes each second.
    pub live: Histogram<u64>,
    /// Users online each second.
    pub online: Histogram<u64>,
    /// Most distinct views alive at once (sampled each minute).
    pub views_distinct_max: u64,
    /// Per sample slot: since when it is up in the window (u64::MAX: down).
    pub cal_since: Vec<Ms>,
    /// Per sample slot: ms up in the window.
    pub cal_up_ms: Vec<Ms>,
}

impl Stats {
    /// All zero.
    pub fn new() -> Self {
        Self {
            measuring: false,
            converged_at_start: false,
            warmup_ms: 0,
            slot_map_build_us: 0,
            lag_up: hist(),
            lag_down: hist(),
            cal_lag_up: hist(),
            cal_lag_down: hist(),
            false_downs: 0,
            fallback_applies: 0,
            sn_starts: 0,
            sn_deaths: 0,
            sn_pauses: 0,
            crashed: 0,
            flash_logins: 0,
            scenario_at: None,
            healed_at: None,
            warm_online: 0,
            logins: 0,
            logouts: 0,
            refreshes: 0,
            user_moves: 0,
            lookups_existing: 0,
            lookups_missing: 0,
            answered_existing: 0,
            found: 0,
            found_by_directory: 0,
            found_missing: 0,
            lookup_messages: hist(),
            missing_messages: hist(),
            lookup_latency: hist(),
            live: hist(),
            online: hist(),
            views_distinct_max: 0,
            cal_since: Vec::new(),
            cal_up_ms: Vec::new(),
        }
    }

    /// `n` super nodes took `lag` to see a join (`up`) or a departure.
    pub fn lag(&mut self, up: bool, lag: Ms, n: u64) {
        let h = if up { &mut self.lag_up } else { &mut self.lag_down };
        let _ = h.record_n(lag.max(1), n);
    }

    /// A calibration node took `lag` to see a mirrored change.
    pub fn cal_lag(&mut self, up: bool, lag: Ms) {
        let h = if up { &mut self.cal_lag_up } else { &mut self.cal_lag_down };
        let _ = h.record(lag.max(1));
    }

    /// One second's sample of the population.
    pub fn sample(&mut self, _now: Ms, live: usize, online: usize) {
        if self.measuring {
            let _ = self.live.record(live as u64);
            let _ = self.online.record(online as u64);
        }
    }

    /// A sample slot started at `now`.
    pub fn cal_started(&mut self, slot: u32, now: Ms) {
        if !self.measuring {
            return;
        }
        let i = slot as usize;
        if self.cal_since.len() <= i {
            self.cal_since.resize(i + 1, u64::MAX);
            self.cal_up_ms.resize(i + 1, 0);
        }
        self.cal_since[i] = now;
    }

    /// A sample slot stopped at `now`.
    pub fn cal_stopped(&mut self, slot: u32, now: Ms) {
        let i = slot as usize;
        if let (Some(s), Some(u)) = (self.cal_since.get_mut(i), self.cal_up_ms.get_mut(i))
            && *s != u64::MAX
        {
            *u += now.saturating_sub(*s);
            *s = u64::MAX;
        }
    }

    /// A lookup was issued.
    pub fn lookup_issued(&mut self, exists: bool) {
        if exists {
            self.lookups_existing += 1;
        } else {
            self.lookups_missing += 1;
        }
    }

    /// A lookup ended.
    pub fn lookup_done(&mut self, exists: bool, found: bool, by_directory: bool, asked: u32, latency: Ms) {
        if !exists {
            // A name nobody has widens to the last stage: counted apart, so the figures
            // for users seen are theirs alone.
            let _ = self.missing_messages.record(u64::from(asked));
            self.found_missing += u64::from(found);
            return;
        }
        let _ = self.lookup_messages.record(u64::from(asked));
        let _ = self.lookup_latency.record(latency);
        self.answered_existing += 1;
        if found {
            self.found += 1;
            self.found_by_directory += u64::from(by_directory);
        }
    }
}

impl Default for Stats {
    fn default() -> Self {
        Self::new()
    }
}
