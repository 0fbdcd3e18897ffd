//! The `simulate` subcommand's flags; defaults are the measured rates.

use super::{Config, Scenario, churn, users};

/// Flags of `simulate`.
#[derive(Debug, Clone, clap::Args)]
pub struct SimArgs {
    /// Super nodes (the cluster's size, kept about constant by replacements).
    #[arg(long, default_value_t = 1000)]
    pub supernodes: u32,
    /// Users.
    #[arg(long, default_value_t = 50_000)]
    pub users: u32,
    /// Simulated hours measured (after the warm-up).
    #[arg(long, default_value_t = 2.0)]
    pub hours: f64,
    /// The seed: same seed, same run.
    #[arg(long, default_value_t = 7)]
    pub seed: u64,
    /// What strikes during the run.
    #[arg(long, value_enum, default_value_t = Scenario::None)]
    pub scenario: Scenario,
    /// When it strikes, seconds into the measurement (default: a third of the run).
    #[arg(long)]
    pub scenario_at_secs: Option<u64>,
    /// Share of super nodes crash30 crashes.
    #[arg(long, default_value_t = 0.3)]
    pub crash_share: f64,
    /// How long the partition lasts, seconds.
    #[arg(long, default_value_t = 600)]
    pub partition_secs: u64,
    /// Share of users the flash crowd logs in.
    #[arg(long, default_value_t = 0.2)]
    pub flash_share: f64,
    /// Seconds over which the flash crowd logs in.
    #[arg(long, default_value_t = 60)]
    pub flash_secs: u64,
    /// Most super nodes for which every node runs foca; above, a foca sample stands for
    /// the rest.
    #[arg(long, default_value_t = Config::default().full_max)]
    pub full_max: u32,
    /// Size of the foca sample in sampled mode (even).
    #[arg(long, default_value_t = Config::default().sample)]
    pub sample: u32,
    /// Most virtual seconds for the cluster to form before measuring (it starts as soon
    /// as every foca node knows every other).
    #[arg(long, default_value_t = Config::default().warmup_secs)]
    pub warmup_secs: u64,
    /// Shortest one-way latency, ms.
    #[arg(long, default_value_t = 5)]
    pub latency_min_ms: u64,
    /// Longest one-way latency, ms.
    #[arg(long, default_value_t = 150)]
    pub latency_max_ms: u64,
    /// Packet loss probability.
    #[arg(long, default_value_t = 0.005)]
    pub loss: f64,
    /// Share of super nodes with a single session.
    #[arg(long, default_value_t = 0.4)]
    pub sn_single_share: f64,
    /// Median remaining life of a single-session super node, days.
    #[arg(long, default_value_t = 1.75)]
    pub sn_single_life_days: f64,
    /// Median life of a multi-session super node, days.
    #[arg(long, default_value_t = 67.0)]
    pub sn_multi_life_days: f64,
    /// Median session of a multi-session super node, hours.
    #[arg(long, default_value_t = 12.0)]
    pub sn_session_hours: f64,
    /// Median downtime between its sessions, hours.
    #[arg(long, default_value_t = 2.0)]
    pub sn_down_hours: f64,
    /// Mean share of users online (the daily cycle swings around it).
    #[arg(long, default_value_t = 0.2)]
    pub online_mean: f64,
    /// Daily swing of the online share (± this).
    #[arg(long, default_value_t = 0.1)]
    pub online_swing: f64,
    /// Median user session, minutes.
    #[arg(long, default_value_t = 60.0)]
    pub session_minutes: f64,
    /// Presence refresh while online, seconds.
    #[arg(long, default_value_t = 300)]
    pub presence_refresh_secs: u64,
    /// Share of users with a second device (its own sessions, its own entry under the
    /// user's key).
    #[arg(long, default_value_t = users::Model::default().second_device_share)]
    pub second_device_share: f64,
    /// Lookups per online user per hour.
    #[arg(long, default_value_t = 2.0)]
    pub lookups_per_hour: f64,
    /// Share of lookups for names nobody has.
    #[arg(long, default_value_t = 0.01)]
    pub missing_share: f64,
    /// The index's `postings_refresh_secs` (0: postings written at every publish).
    #[arg(long, default_value_t = confab::index::IndexConfig::default().postings_refresh_secs)]
    pub postings_refresh_secs: u64,
    /// The index's anti-entropy period, seconds.
    #[arg(long, default_value_t = confab::index::IndexConfig::default().anti_entropy_secs)]
    pub anti_entropy_secs: u64,
    /// Fail (exit status 3) when findability ends below this.
    #[arg(long)]
    pub expect_findability: Option<f64>,
    /// Fail (exit status 3) when lookups of users seen ask more super nodes than this at
    /// the 99th percentile.
    #[arg(long)]
    pub expect_lookup_messages_p99: Option<f64>,
    /// Fail (exit status 3) when more than this share of lookups of users seen needed the
    /// login servers' directory (the index did not have them).
    #[arg(long)]
    pub expect_found_by_directory_max: Option<f64>,
}

impl SimArgs {
    /// The Global Index's settings for the run.
    pub fn index(&self, cfg: &Config) -> confab::index::IndexConfig {
        confab::index::IndexConfig {
            slots: cfg.slots,
            replicas: cfg.replicas,
            postings_refresh_secs: self.postings_refresh_secs,
            anti_entropy_secs: self.anti_entropy_secs,
            // The login servers' directory, answered by the simulator.
            directory: vec![std::net::SocketAddr::from(([198, 18, 0, 1], 443))],
            ..Default::default()
        }
    }

    /// What the run missed of `--expect-*`, one line each.
    pub fn failed(&self, json: &serde_json::Value) -> Vec<String> {
        let mut out = Vec::new();
        let get = |k: &str| json[k].as_f64();
        if let Some(min) = self.expect_findability {
            match get("findability") {
                Some(v) if v >= min => {}
                v => out.push(format!("findability {v:?} is below --expect-findability {min}")),
            }
        }
        if let Some(max) = self.expect_found_by_directory_max {
            match get("found_by_directory") {
                Some(v) if v <= max => {}
                v => out.push(format!("found_by_directory {v:?} is over --expect-found-by-directory-max {max}")),
            }
        }
        if let Some(max) = self.expect_lookup_messages_p99 {
            match get("lookup_messages_p99") {
                Some(v) if v <= max => {}
                v => out.push(format!("lookup_messages_p99 {v:?} is over --expect-lookup-messages-p99 {max}")),
            }
        }
        out
    }
}

impl SimArgs {
    /// The run's settings.
    pub fn config(&self) -> Config {
        Config {
            supernodes: self.supernodes,
            users: self.users,
            hours: self.hours,
            seed: self.seed,
            scenario: self.scenario,
            scenario_at_secs: self.scenario_at_secs,
            crash_share: self.crash_share,
            partition_secs: self.partition_secs,
            flash_share: self.flash_share,
            flash_secs: self.flash_secs,
            full_max: self.full_max,
            sample: self.sample.min(self.supernodes & !1),
            warmup_secs: self.warmup_secs,
            latency_min_ms: self.latency_min_ms,
            latency_max_ms: self.latency_max_ms,
            loss: self.loss,
            churn: churn::Model {
                single_share: self.sn_single_share,
                single_life_days: self.sn_single_life_days,
                multi_life_days: self.sn_multi_life_days,
                multi_session_hours: self.sn_session_hours,
                multi_down_hours: self.sn_down_hours,
                ..churn::Model::default()
            },
            user_model: users::Model {
                online_mean: self.online_mean,
                online_swing: self.online_swing,
                session_minutes: self.session_minutes,
                refresh_secs: self.presence_refresh_secs,
                lookups_per_hour: self.lookups_per_hour,
                missing_share: self.missing_share,
                second_device_share: self.second_device_share,
                ..users::Model::default()
            },
            ..Config::default()
        }
    }
}
