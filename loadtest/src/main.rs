//! `confab-loadtest`: the command line.

use anyhow::Context;
use clap::{Args, Parser, Subcommand};
use confab::relay::RELAY_HEADER_LEN;
use confab_loadtest::hosts::{HostOptions, Hosts};
use confab_loadtest::report::Report;
use confab_loadtest::scenarios::{self, Subject, bar};
use confab_loadtest::server::{self, Probe};
use confab_loadtest::traffic::Pattern;
use confab_loadtest::turn::client::Credentials;
use confab_loadtest::turn::server::Coturn;
use confab_loadtest::{packet, raw, relay, turn};
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::{Duration, Instant};
use tokio::runtime::Runtime;

/// Load tests for a confab network: relayed calls beside a raw UDP forwarder and coturn,
/// logins, idle hosts, Global Index lookups.
#[derive(Debug, Parser)]
#[command(name = "confab-loadtest", version, about)]
struct Cli {
    /// Also write every figure to FILE as JSON.
    #[arg(long, global = true, value_name = "FILE")]
    json: Option<PathBuf>,
    /// No progress bar or progress lines on standard error.
    #[arg(long, global = true)]
    quiet: bool,
    /// Folder for the host key pool and the run's temporary files (homes, coturn's).
    #[arg(long, global = true, value_name = "DIR", default_value_os_t = std::env::temp_dir().join("confab-loadtest"))]
    work_dir: PathBuf,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Relayed calls through the network's own super-node relays, hosts logged in for real.
    Relay {
        #[command(flatten)]
        traffic: TrafficArgs,
        #[command(flatten)]
        host: HostArgs,
        #[command(flatten)]
        server: ServerArgs,
    },
    /// The same traffic through a one-thread UDP forwarder the harness runs: the baseline.
    Raw {
        #[command(flatten)]
        traffic: TrafficArgs,
        #[command(flatten)]
        raw: RawArgs,
    },
    /// The same traffic through a standard TURN server (coturn, started on loopback).
    Turn {
        #[command(flatten)]
        traffic: TrafficArgs,
        #[command(flatten)]
        turn: TurnArgs,
    },
    /// relay, raw and turn back to back with the same settings, side by side with ratios.
    Compare {
        #[command(flatten)]
        traffic: TrafficArgs,
        #[command(flatten)]
        host: HostArgs,
        #[command(flatten)]
        server: ServerArgs,
        #[command(flatten)]
        raw: RawArgs,
        #[command(flatten)]
        turn: TurnArgs,
    },
    /// Register + login + logout cycles, several at once: handshakes per second, latency.
    Login {
        #[command(flatten)]
        host: HostArgs,
        #[command(flatten)]
        server: ServerArgs,
        /// Cycles in flight at once.
        #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u32).range(1..=1000))]
        concurrency: u32,
        /// How long to keep cycling.
        #[arg(long, default_value = "10s", value_parser = bounded_duration)]
        duration: Duration,
        /// Most cycles (each creates one account).
        #[arg(long, default_value_t = 10_000)]
        max_cycles: u64,
    },
    /// Many idle hosts held connected: the node's memory per host, the cost of keepalives.
    Hosts {
        #[command(flatten)]
        host: HostArgs,
        #[command(flatten)]
        server: ServerArgs,
        /// Hosts to log in and hold (a process may hold as many as it may open files).
        #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u32).range(1..=200_000))]
        hosts: u32,
        /// Log in only this many accounts and connect every host with one of their
        /// credentials (super-node handshake and keepalives, no login per host): for
        /// tens of thousands of hosts. 0: every host logs in for real.
        #[arg(long, default_value_t = 0)]
        accounts: u32,
        /// How long to hold them connected.
        #[arg(long, default_value = "10s", value_parser = bounded_duration)]
        duration: Duration,
    },
    /// Hosts looking each other up in the Global Index: lookups per second, latency.
    Lookup {
        #[command(flatten)]
        host: HostArgs,
        #[command(flatten)]
        server: ServerArgs,
        /// Hosts logged in, each looking the others up.
        #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u32).range(2..=5_000))]
        hosts: u32,
        /// Lookups per second per host (a super node refuses beyond 50 a second per host).
        #[arg(long, default_value_t = 20.0)]
        rate: f64,
        /// How long to keep looking up.
        #[arg(long, default_value = "10s", value_parser = bounded_duration)]
        duration: Duration,
        /// Most lookups in all.
        #[arg(long, default_value_t = 1_000_000)]
        max_lookups: u64,
    },
}

/// The smallest datagram: the relay header and the smallest inner packet.
const SIZE_MIN: usize = RELAY_HEADER_LEN + packet::INNER_MIN;
/// The largest datagram a confab relay forwards.
const SIZE_MAX: usize = confab::relay::RELAYED_LEN_MAX;

/// Longest run a scenario accepts.
const DURATION_MAX: Duration = Duration::from_secs(3600);

fn bounded_duration(s: &str) -> Result<Duration, String> {
    let d = humantime::parse_duration(s).map_err(|e| e.to_string())?;
    if d.is_zero() || d > DURATION_MAX {
        return Err(format!("between 1ms and {}", humantime::format_duration(DURATION_MAX)));
    }
    Ok(d)
}

/// The traffic pattern, the same for relay, raw and turn.
#[derive(Debug, Clone, Args)]
struct TrafficArgs {
    /// Pairs of legs: each pair is one relayed call, both directions.
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u32).range(1..=20_000))]
    pairs: u32,
    /// Datagrams per second per leg (each direction of each pair); 50 is a voice stream.
    #[arg(long, default_value_t = 50, value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    rate: u32,
    /// Bytes of each datagram the confab relay receives, its 21-byte header included;
    /// raw and turn carry the same inner packet (SIZE − 21 bytes) in their own framing.
    #[arg(long, default_value_t = 141, value_parser = clap::value_parser!(u32).range(SIZE_MIN as i64..=SIZE_MAX as i64))]
    size: u32,
    /// The timed window.
    #[arg(long, default_value = "10s", value_parser = bounded_duration)]
    duration: Duration,
    /// Send as fast as the sender threads can, bounded by --duration and --max-packets.
    #[arg(long)]
    flat_out: bool,
    /// Most timed datagrams in all (every leg together).
    #[arg(long, default_value_t = 50_000_000, value_parser = clap::value_parser!(u64).range(1..))]
    max_packets: u64,
    /// Sender threads.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=64))]
    senders: u32,
    /// Receiver threads.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=64))]
    receivers: u32,
}

impl TrafficArgs {
    fn pattern(&self) -> Pattern {
        Pattern {
            rate: self.rate,
            inner_len: self.size as usize - RELAY_HEADER_LEN,
            duration: self.duration,
            flat_out: self.flat_out,
            max_packets: self.max_packets,
            senders: self.senders as usize,
            receivers: self.receivers as usize,
        }
    }
}

/// Where real hosts come from.
#[derive(Debug, Clone, Args)]
struct HostArgs {
    /// Host configuration (as for `confab host`; `confab up` writes data/host.toml).
    #[arg(long, value_name = "FILE", default_value = "data/host.toml")]
    config: PathBuf,
    /// Every simulated user's password.
    #[arg(long, env = "CONFAB_PASSWORD", hide_env_values = true)]
    password: Option<String>,
    /// First part of every username (`PREFIX-r3a`, `PREFIX-h12`, …); accounts are reused
    /// across runs, so the password must stay the same.
    #[arg(long, default_value = "lt")]
    user_prefix: String,
    /// Logins in flight at once while setting up.
    #[arg(long, default_value_t = 8, value_parser = clap::value_parser!(u32).range(1..=256))]
    login_concurrency: u32,
    /// Relay sessions each calling host opens (`relay`): `--pairs` sessions need
    /// ⌈pairs / this⌉ host pairs. Above the super node's `sessions_per_host_max` (4 by
    /// default) the allocations are refused: raise it for many sessions from few hosts.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=100_000))]
    sessions_per_host: u32,
}

impl HostArgs {
    fn hosts(&self, work_dir: &std::path::Path) -> anyhow::Result<std::sync::Arc<Hosts>> {
        let password = self.password.clone().context("a password is needed: --password or CONFAB_PASSWORD")?;
        Hosts::new(&HostOptions {
            config: self.config.clone(),
            password,
            work_dir: work_dir.to_owned(),
            prefix: self.user_prefix.clone(),
            concurrency: self.login_concurrency as usize,
        })
    }
}

/// Where the server's resources are read.
#[derive(Debug, Clone, Args)]
struct ServerArgs {
    /// The network's metrics endpoint (host:port; `confab up` serves 127.0.0.1:9464).
    #[arg(long, value_name = "ADDR")]
    metrics: Option<SocketAddr>,
    /// The network's process id, for its CPU and memory from /proc when the metrics
    /// endpoint does not export them.
    #[arg(long, value_name = "PID")]
    server_pid: Option<u32>,
}

impl ServerArgs {
    fn probe(&self) -> Probe {
        match (self.metrics, self.server_pid) {
            (None, None) => Probe::None,
            (addr, pid) => Probe::Metrics { addr, pid },
        }
    }
}

/// The raw forwarder.
#[derive(Debug, Clone, Args)]
struct RawArgs {
    /// Address the raw forwarder listens on.
    #[arg(long, default_value = "127.0.0.1")]
    raw_bind: IpAddr,
}

/// The TURN server.
#[derive(Debug, Clone, Args)]
struct TurnArgs {
    /// A TURN server already running (UDP); without it coturn is started on loopback.
    #[arg(long, value_name = "ADDR")]
    turn_server: Option<SocketAddr>,
    /// TURN username (long-term credentials).
    #[arg(long, default_value = "u")]
    turn_user: String,
    /// TURN password.
    #[arg(long, default_value = "p")]
    turn_password: String,
    /// The coturn binary to start.
    #[arg(long, default_value = "turnserver")]
    turnserver_bin: String,
    /// coturn relay threads (1, as `confab up` gives each relay one worker).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=64))]
    turn_threads: u32,
}

/// TURN permissions last 300 s and this client does not refresh them.
const TURN_DURATION_MAX: Duration = Duration::from_secs(240);

fn say(quiet: bool, msg: impl std::fmt::Display) {
    if !quiet {
        eprintln!("{msg}");
    }
}

fn run_relay(
    rt: &Runtime,
    cli: &Cli,
    t: &TrafficArgs,
    host: &HostArgs,
    srv: &ServerArgs,
    report: &mut Report,
) -> anyhow::Result<()> {
    let hosts = host.hosts(&cli.work_dir)?;
    let probe = srv.probe();
    let started = Instant::now();
    let per_host = host.sessions_per_host as usize;
    let host_pairs = (t.pairs as usize).div_ceil(per_host);
    let b = bar(cli.quiet, "relay", 2 * host_pairs as u64, true);
    let mut relayed = confab_loadtest::block_on(rt, relay::setup(&hosts, t.pairs as usize, per_host, &b))?;
    b.finish_and_clear();
    let setup_s = started.elapsed().as_secs_f64();
    let targets: Vec<String> = relayed.relays.iter().map(ToString::to_string).collect();
    say(
        cli.quiet,
        format_args!(
            "relay: {} hosts logged in, {} relay sessions on {} ({setup_s:.1} s)",
            2 * host_pairs,
            t.pairs,
            targets.join(", ")
        ),
    );
    let pairs = std::mem::take(&mut relayed.pairs);
    let subject = Subject {
        scenario: "relay",
        label: "confab".into(),
        targets,
        probe: &probe,
        setup_s,
        framing: RELAY_HEADER_LEN,
    };
    let result = scenarios::measure(subject, pairs, &t.pattern(), cli.quiet);
    confab_loadtest::block_on(rt, relay::teardown(relayed));
    let result = result?;
    if result.server.cpu_s.is_none() {
        report.warnings.push(match srv.metrics {
            None => "confab server CPU and memory: n/a (no --metrics or --server-pid given)".into(),
            Some(m) => format!(
                "confab server CPU and memory: n/a ({m} exports no {} / {}; --server-pid PID reads /proc instead)",
                server::CPU_METRIC,
                server::RSS_METRIC
            ),
        });
    }
    report.traffic.push(result);
    Ok(())
}

fn run_raw(cli: &Cli, t: &TrafficArgs, r: &RawArgs, report: &mut Report) -> anyhow::Result<()> {
    let started = Instant::now();
    let (fwd, pairs) = raw::Forwarder::start(r.raw_bind, t.pairs as usize)?;
    let probe = fwd.probe();
    let subject = Subject {
        scenario: "raw",
        label: "raw".into(),
        targets: vec![fwd.addr.to_string()],
        probe: &probe,
        setup_s: started.elapsed().as_secs_f64(),
        framing: 0,
    };
    say(cli.quiet, format_args!("raw: forwarder on {} for {} pairs", fwd.addr, t.pairs));
    report.traffic.push(scenarios::measure(subject, pairs, &t.pattern(), cli.quiet)?);
    Ok(())
}

fn run_turn(cli: &Cli, t: &TrafficArgs, a: &TurnArgs, report: &mut Report) -> anyhow::Result<()> {
    anyhow::ensure!(
        t.duration <= TURN_DURATION_MAX,
        "--duration: at most {} for turn (TURN permissions last 300 s and this client does not refresh them)",
        humantime::format_duration(TURN_DURATION_MAX)
    );
    let creds = Credentials { username: a.turn_user.clone(), password: a.turn_password.clone() };
    let started = Instant::now();
    std::fs::create_dir_all(&cli.work_dir)?;
    let coturn = match a.turn_server {
        Some(_) => None,
        None => Some(Coturn::start(&a.turnserver_bin, &cli.work_dir, a.turn_threads as usize, &creds)?),
    };
    let (addr, probe, label) = match &coturn {
        Some(c) => (c.addr, Probe::Pid(c.pid()), "coturn"),
        None => (a.turn_server.expect("given"), Probe::None, "turn"),
    };
    let pattern = t.pattern();
    let b = bar(cli.quiet, "turn", u64::from(t.pairs), true);
    b.set_message("allocating");
    let set_up = turn::setup(addr, &creds, t.pairs as usize, pattern.inner_len, &|| b.inc(1));
    b.finish_and_clear();
    let (pairs, mut allocations) = set_up.map_err(|e| match &coturn {
        Some(c) => e.context(format!("coturn's log ends:\n{}", c.log_tail())),
        None => e,
    })?;
    let setup_s = started.elapsed().as_secs_f64();
    say(cli.quiet, format_args!("turn: {} allocations on {addr} ({setup_s:.1} s)", allocations.len()));
    let subject = Subject {
        scenario: "turn",
        label: label.into(),
        targets: vec![addr.to_string()],
        probe: &probe,
        setup_s,
        framing: turn::stun::CHANNEL_DATA_HEADER_LEN,
    };
    let result = scenarios::measure(subject, pairs, &pattern, cli.quiet);
    let refused = turn::release(&mut allocations);
    if refused > 0 {
        report.warnings.push(format!("turn: {refused} allocations were not released cleanly"));
    }
    report.traffic.push(result?);
    Ok(())
}

fn runtime() -> anyhow::Result<Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?)
}

fn run(cli: &Cli) -> anyhow::Result<Report> {
    server::raise_fd_limit();
    let name = match &cli.command {
        Command::Relay { .. } => "relay",
        Command::Raw { .. } => "raw",
        Command::Turn { .. } => "turn",
        Command::Compare { .. } => "compare",
        Command::Login { .. } => "login",
        Command::Hosts { .. } => "hosts",
        Command::Lookup { .. } => "lookup",
    };
    let mut report = Report::new(name);
    match &cli.command {
        Command::Relay { traffic, host, server } => run_relay(&runtime()?, cli, traffic, host, server, &mut report)?,
        Command::Raw { traffic, raw } => run_raw(cli, traffic, raw, &mut report)?,
        Command::Turn { traffic, turn } => run_turn(cli, traffic, turn, &mut report)?,
        Command::Compare { traffic, host, server, raw, turn } => {
            run_relay(&runtime()?, cli, traffic, host, server, &mut report)?;
            run_raw(cli, traffic, raw, &mut report)?;
            if let Err(e) = run_turn(cli, traffic, turn, &mut report) {
                say(cli.quiet, format_args!("turn: skipped: {e:#}"));
                report.warnings.push(format!("turn skipped: {e:#}"));
            }
        }
        Command::Login { host, server, concurrency, duration, max_cycles } => {
            let hosts = host.hosts(&cli.work_dir)?;
            let probe = server.probe();
            let r = confab_loadtest::block_on(
                &runtime()?,
                scenarios::login_cycles(&hosts, *concurrency as usize, *duration, *max_cycles, &probe, cli.quiet),
            )?;
            report.login = Some(r);
        }
        Command::Hosts { host, server, hosts: m, duration, accounts } => {
            let hosts = host.hosts(&cli.work_dir)?;
            let probe = server.probe();
            let rt = runtime()?;
            report.hosts = Some(match *accounts {
                0 => confab_loadtest::block_on(
                    &rt,
                    scenarios::hold_hosts(&hosts, *m as usize, *duration, &probe, cli.quiet),
                )?,
                k => confab_loadtest::block_on(
                    &rt,
                    scenarios::hold_light_hosts(&hosts, *m as usize, k as usize, *duration, &probe, cli.quiet),
                )?,
            });
        }
        Command::Lookup { host, server, hosts: h, rate, duration, max_lookups } => {
            anyhow::ensure!(*rate > 0.0 && *rate <= 1000.0, "--rate: between 0 and 1000 lookups a second per host");
            let hosts = host.hosts(&cli.work_dir)?;
            let probe = server.probe();
            report.lookup = Some(confab_loadtest::block_on(
                &runtime()?,
                scenarios::lookups(&hosts, *h as usize, *rate, *duration, *max_lookups, &probe, cli.quiet),
            )?);
        }
    }
    report.compute_ratios();
    Ok(report)
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let report = run(&cli)?;
    print!("{}", report.render());
    if let Some(path) = &cli.json {
        let text = serde_json::to_string_pretty(&report)?;
        std::fs::write(path, text + "\n").with_context(|| format!("--json {}", path.display()))?;
    }
    Ok(())
}
