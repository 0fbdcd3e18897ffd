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
    /// Lookups per online user per hour.
    #[arg(long, default_value_t = 2.0)]
    pub lookups_per_hour: f64,
    /// Share of lookups for names nobody has.
    #[arg(long, default_value_t = 0.01)]
    pub missing_share: f64,
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
                ..users::Model::default()
            },
            ..Config::default()
        }
    }
}
