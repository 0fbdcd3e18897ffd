//! `simulate`: the Global Index's network at internet scale — thousands of super nodes, a
//! million users — in one process, on virtual time, from one seed (issue 14).
//!
//! - [`clock`] — the event queue; [`rng`] — one seed, a stream per purpose.
//! - [`net`] — latency per pair, loss, partitions, bytes per node and class.
//! - [`membership`] — foca exactly as production runs it, on the simulated network.
//! - [`sampled`] — beyond `--full-max` super nodes: a foca sample stands for the rest.
//! - [`view`] — views shared between nodes that agree, each with its slot map.
//! - [`churn`], [`users`] — who comes and goes, and when.
//! - [`index`] — the hooks the Global Index plugs into ([`index::NotWired`] until then).
//! - [`world`] — it all on one queue; [`stats`], [`report`] — what a run shows.
//!
//! Determinism: every random draw comes from the run's seed, time is virtual, and nothing
//! iterates a randomly-ordered map; only the wall-clock and CPU figures differ between
//! two runs of one seed. Crypto is a stand-in: packets are not sealed, but their sizes
//! include the seal.

pub mod args;
pub mod churn;
pub mod clock;
pub mod global;
pub mod index;
pub mod membership;
pub mod net;
pub mod report;
pub mod rng;
pub mod sampled;
pub mod stats;
pub mod users;
pub mod view;
pub mod world;

use serde::Serialize;

/// How membership is simulated.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Mode {
    /// Every super node runs foca.
    Full,
    /// A foca sample stands for the rest ([`sampled`]).
    Sampled,
}

/// What strikes during the run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum Scenario {
    /// Churn only.
    None,
    /// A share of the super nodes (30%) crashes at once.
    Crash30,
    /// The cluster splits in two, then heals.
    Partition,
    /// A share of the users (20%) logs in within a minute.
    FlashCrowd,
}

/// A run's settings.
#[derive(Debug, Clone, Serialize)]
pub struct Config {
    /// Super nodes (the cluster's size at the start).
    pub supernodes: u32,
    /// Users.
    pub users: u32,
    /// Simulated hours measured (after the warm-up).
    pub hours: f64,
    /// The seed.
    pub seed: u64,
    /// What strikes.
    pub scenario: Scenario,
    /// When it strikes, seconds into the measurement (default: a third of the run).
    pub scenario_at_secs: Option<u64>,
    /// Share of super nodes `crash30` crashes.
    pub crash_share: f64,
    /// How long the partition lasts.
    pub partition_secs: u64,
    /// Share of users the flash crowd logs in, and over how long.
    pub flash_share: f64,
    /// The flash crowd's spread, seconds.
    pub flash_secs: u64,
    /// Most super nodes for which every node runs foca; above, sampled mode.
    pub full_max: u32,
    /// Calibration sample size in sampled mode.
    pub sample: u32,
    /// Most virtual seconds for the cluster to form before measuring (measuring starts
    /// as soon as every foca node knows every other).
    pub warmup_secs: u64,
    /// One-way latency range.
    pub latency_min_ms: u64,
    /// Upper end of it.
    pub latency_max_ms: u64,
    /// Packet loss probability.
    pub loss: f64,
    /// Slots and replicas of the slot map.
    pub slots: u32,
    /// Replicas per slot.
    pub replicas: usize,
    /// Round trip to the login server's directory.
    pub directory_rtt_ms: u64,
    /// Super-node churn.
    pub churn: churn::Model,
    /// Users.
    pub user_model: users::Model,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            supernodes: 1000,
            users: 50_000,
            hours: 2.0,
            seed: 7,
            scenario: Scenario::None,
            scenario_at_secs: None,
            crash_share: 0.3,
            partition_secs: 600,
            flash_share: 0.2,
            flash_secs: 60,
            full_max: 1000,
            sample: 500,
            warmup_secs: 900,
            latency_min_ms: 5,
            latency_max_ms: 150,
            loss: 0.005,
            slots: confab::index::slot::SLOTS_DEFAULT,
            replicas: confab::index::slot::REPLICAS_DEFAULT,
            directory_rtt_ms: 100,
            churn: churn::Model::default(),
            user_model: users::Model::default(),
        }
    }
}

impl Config {
    /// Which membership mode this size runs in.
    pub fn mode(&self) -> Mode {
        if self.supernodes <= self.full_max { Mode::Full } else { Mode::Sampled }
    }

    /// When the scenario strikes, ms into the measurement.
    pub fn scenario_at_ms(&self) -> u64 {
        self.scenario_at_secs.map(|s| s * 1000).unwrap_or((self.hours * 3_600_000.0 / 3.0) as u64)
    }

    /// How much longer than the sample's a change takes to reach every node:
    /// ln N / ln K (SWIM's dissemination grows with log N).
    pub fn sample_scale(&self) -> f64 {
        let (n, k) = (f64::from(self.supernodes.max(2)), f64::from(self.sample.max(2)));
        (n.ln() / k.ln()).max(1.0)
    }

    /// Checks the settings make sense.
    pub fn check(&self) -> Result<(), String> {
        if self.supernodes < 2 {
            return Err("--supernodes must be at least 2".into());
        }
        if self.mode() == Mode::Sampled && (self.sample < 10 || !self.sample.is_multiple_of(2)) {
            return Err("--sample must be even and at least 10 (the partition splits it by parity)".into());
        }
        if confab::index::SlotSpace::new(self.slots).is_err() {
            return Err("--slots must be a positive multiple of 8".into());
        }
        if !(0.0..1.0).contains(&self.loss) || !(0.0..=1.0).contains(&self.crash_share) {
            return Err("--loss and --crash-share are probabilities".into());
        }
        Ok(())
    }
}

/// Runs `cfg` with `index` to the end, with a progress bar unless `quiet`.
pub fn run<I: index::Index>(cfg: Config, index: I, quiet: bool) -> report::Report {
    let wall = std::time::Instant::now();
    let cpu0 = view::process_cpu_us();
    let mut w = world::World::new(cfg, index);
    let bar = crate::scenarios::bar(quiet, "simulate", (w.end - w.start) / 1000, true);
    let mut last = (std::time::Instant::now(), 0u64);
    // Without a terminal (a log file, CI, journald) the bar draws nothing: a line every
    // half minute of wall time instead.
    let lines = !quiet && !std::io::IsTerminal::is_terminal(&std::io::stderr());
    let mut last_line = std::time::Instant::now();
    w.run_until(u64::MAX, |w| {
        if !w.stats.measuring {
            // The cluster forming (the warm-up): no window to measure yet.
            if lines && last_line.elapsed() >= std::time::Duration::from_secs(30) {
                last_line = std::time::Instant::now();
                eprintln!(
                    "simulate: forming the cluster, {} virtual seconds, {:.0} s wall, {} super nodes up",
                    w.q.now() / 1000,
                    wall.elapsed().as_secs_f64(),
                    w.live()
                );
            }
            return;
        }
        let now = (w.q.now() - w.start) / 1000;
        let len = (w.end - w.start) / 1000;
        bar.set_length(len);
        bar.set_position(now);
        if now.is_multiple_of(10) {
            let dt = last.0.elapsed().as_secs_f64().max(1e-6);
            let rate = (w.events - last.1) as f64 / dt;
            last = (std::time::Instant::now(), w.events);
            let msg =
                format!("{:.0} events/s, {} super nodes up, {} devices online", rate, w.live(), w.users.online.len());
            if lines && last_line.elapsed() >= std::time::Duration::from_secs(30) {
                last_line = std::time::Instant::now();
                eprintln!("simulate: {now}/{len} virtual seconds, {:.0} s wall, {msg}", wall.elapsed().as_secs_f64());
            }
            bar.set_message(msg);
        }
    });
    bar.finish_and_clear();
    w.finish();
    report::Report::of(&w, wall.elapsed().as_secs_f64(), view::process_cpu_us().saturating_sub(cpu0))
}
