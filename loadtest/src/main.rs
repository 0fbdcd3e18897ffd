//! `confab-loadtest`: the command line.

use anyhow::Context;
use clap::{Args, Parser, Subcommand};
use confab::relay::RELAY_HEADER_LEN;
use confab_loadtest::hosts::{HostOptions, Hosts};
use confab_loadtest::report;
use confab_loadtest::report::Report;
use confab_loadtest::scenarios::{self, Subject, bar};
use confab_loadtest::server::Probe;
use confab_loadtest::traffic::{self, Pattern};
use confab_loadtest::turn::client::Credentials;
use confab_loadtest::turn::server::Coturn;
use confab_loadtest::{cpu, limit, packet, raw, relay, sockets, turn};
use std::collections::BTreeSet;
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
    /// The same traffic through a one-thread UDP forwarder the harness runs: the baseline
    /// (batched as the relay is; `--unbatched`: one datagram per call).
    Raw {
        #[command(flatten)]
        traffic: TrafficArgs,
        #[command(flatten)]
        raw: RawArgs,
        /// One `recv_from` and one `send_to` per datagram instead of recvmmsg/sendmmsg.
        #[arg(long)]
        unbatched: bool,
        #[command(flatten)]
        buffers: BufferArgs,
    },
    /// The same traffic through a standard TURN server (coturn, started on loopback).
    Turn {
        #[command(flatten)]
        traffic: TrafficArgs,
        #[command(flatten)]
        turn: TurnArgs,
        #[command(flatten)]
        buffers: BufferArgs,
    },
    /// Several servers back to back with the same traffic, side by side with ratios:
    /// confab, the batched raw floor, the unbatched raw forwarder, coturn.
    Compare {
        #[command(flatten)]
        side: SideBySideArgs,
        #[command(flatten)]
        guard: GuardArgs,
        /// The servers, in order: confab, raw, raw-unbatched, coturn (one entry per
        /// --turn-hops), generator (the legs looped to each other, no server).
        #[arg(long, value_delimiter = ',', default_value = "confab,raw,raw-unbatched,coturn")]
        servers: Vec<String>,
    },
    /// The highest loss-free rate of each server, searched by bisection and repeated:
    /// median and range, beside the generator's own ceiling.
    Limit {
        #[command(flatten)]
        side: SideBySideArgs,
        /// The servers searched, in order, every repeat (generator: the legs looped to
        /// each other, the generator's own ceiling).
        #[arg(long, value_delimiter = ',', default_value = "generator,confab,raw,raw-unbatched,coturn")]
        servers: Vec<String>,
        /// Searches per server.
        #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u32).range(1..=100))]
        repeats: u32,
        /// Each window of a search.
        #[arg(long, default_value = "2s", value_parser = bounded_duration)]
        probe: Duration,
        /// Rate per leg of a search's first window (doubled until one loses).
        #[arg(long, default_value_t = 500, value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
        start_rate: u32,
        /// Highest rate per leg tried.
        #[arg(long, default_value_t = 1_000_000, value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
        max_rate: u32,
        /// A search ends when the failed and loss-free rates are this close (a fraction).
        #[arg(long, default_value_t = 0.03)]
        precision: f64,
        /// Most windows per search.
        #[arg(long, default_value_t = 14, value_parser = clap::value_parser!(u32).range(1..=100))]
        max_probes: u32,
        /// Bound on the whole run; searches not started by then are left out.
        #[arg(long, default_value = "40m", value_parser = bounded_duration)]
        max_time: Duration,
    },
    /// (Internal) the raw forwarder as a process of its own: prints its address, reads
    /// `from to` routes from standard input until its end, forwards until killed.
    #[command(hide = true)]
    Forward {
        #[arg(long)]
        bind: IpAddr,
        #[arg(long)]
        unbatched: bool,
        #[arg(long)]
        buffer_bytes: Option<usize>,
    },
    /// A deterministic simulation on virtual time: N super nodes running foca (or a foca
    /// sample standing for them), M users with a daily cycle, churn at the measured rates.
    Simulate(confab_loadtest::sim::args::SimArgs),
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
    /// How late a call's 20 ms media clock ticks while signalling load is pending: a whole
    /// network in this process, alice and bob in a call, then alice's super node killed, her
    /// buddy list read (200 buddies) and her presence refreshed, all during the call.
    Lateness {
        /// Runs, each on a fresh network; the table shows median and range.
        #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u32).range(1..=50))]
        runs: u32,
        /// Super nodes in the network (alice's dies; she moves to another).
        #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u32).range(2..=10))]
        supernodes: u32,
        /// Alice's authorized buddies, bob among them (16 a page of her list).
        #[arg(long, default_value_t = 200, value_parser = clap::value_parser!(u32).range(1..=1000))]
        buddies: u32,
        /// Media at least before the load starts (it starts with alice's next presence
        /// refresh after this).
        #[arg(long, default_value = "2s", value_parser = bounded_duration)]
        warmup: Duration,
        /// Media from the load's start to the hang-up.
        #[arg(long, default_value = "12s", value_parser = bounded_duration)]
        window: Duration,
        /// Alice's presence refresh period (publish, revocation list, every buddy told).
        #[arg(long, default_value = "10s", value_parser = bounded_duration)]
        presence_refresh: Duration,
        /// Kill alice's super node this long after the load's start rather than at once
        /// (0s): the failover's own waits then come apart from the presence refresh's.
        #[arg(long, default_value = "0s", value_parser = humantime::parse_duration)]
        kill_after: Duration,
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
    /// Chat through the super nodes' store: online delivery latency (with receipts),
    /// then offline messages and their hand-over at the next login.
    Chat {
        #[command(flatten)]
        host: HostArgs,
        #[command(flatten)]
        server: ServerArgs,
        /// Hosts: half write, each to its partner in the other half (an even number).
        #[arg(long, default_value_t = 20, value_parser = clap::value_parser!(u32).range(2..=2_000))]
        hosts: u32,
        /// Messages per second per writer, online.
        #[arg(long, default_value_t = 5.0)]
        rate: f64,
        /// How long writers write, online.
        #[arg(long, default_value = "10s", value_parser = bounded_duration)]
        duration: Duration,
        /// Messages each writer leaves for its partner while it is away.
        #[arg(long, default_value_t = 20, value_parser = clap::value_parser!(u32).range(0..=1_000))]
        offline: u32,
        /// How long a message or a hand-over may take before it counts as lost.
        #[arg(long, default_value = "10s", value_parser = bounded_duration)]
        patience: Duration,
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
    /// A window of this length at the same rate before the measured one, not counted
    /// (the server's and the machine's state after the setup settles); 0: none.
    #[arg(long, default_value = "0s", value_parser = humantime::parse_duration)]
    warmup: Duration,
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
    /// Times each datagram crosses the TURN server: 1 (one allocation per pair, the other
    /// leg a plain peer, as a confab relay session is one hop) or 2 (two allocations
    /// relaying to each other); `1,2` runs both.
    #[arg(long, value_delimiter = ',', default_value = "1", value_parser = clap::value_parser!(u8).range(1..=2))]
    turn_hops: Vec<u8>,
}

/// Socket buffers: the same for every server in a run.
#[derive(Debug, Clone, Args)]
struct BufferArgs {
    /// SO_RCVBUF / SO_SNDBUF the raw forwarder asks for: what confab's relay asks for by
    /// default (`supernode.relay.recv_buffer_bytes`); the kernel doubles it. coturn asks
    /// for none of its own choosing, so the harness raises the kernel's defaults
    /// (net.core.rmem_default / wmem_default) to the size in force for the run, and puts
    /// them back at the end (needs root).
    #[arg(long, default_value_t = raw::BUFFER_BYTES)]
    buffer_bytes: usize,
    /// Leave the kernel's defaults alone: the raw forwarder asks for no size either, and
    /// confab should be started with relay buffers of half net.core.rmem_default.
    #[arg(long)]
    kernel_buffers: bool,
}

/// The performance guard (`compare`): fails the run when the relay falls behind the
/// batched raw floor in the same run.
#[derive(Debug, Clone, Args)]
struct GuardArgs {
    /// Fail when confab's relay worker threads spend more than this many times the batched
    /// raw forwarder's thread CPU per packet (0: no guard).
    #[arg(long, default_value_t = 0.0)]
    guard_cpu_ratio: f64,
    /// Fail when confab's loss exceeds the batched raw forwarder's by more than this many
    /// percentage points (with --guard-cpu-ratio).
    #[arg(long, default_value_t = 0.1)]
    guard_loss_pp: f64,
}

/// TURN permissions last 300 s and this client does not refresh them.
const TURN_DURATION_MAX: Duration = Duration::from_secs(240);

fn say(quiet: bool, msg: impl std::fmt::Display) {
    if !quiet {
        eprintln!("{msg}");
    }
}

/// A server the traffic goes through.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Server {
    /// The network's own relays.
    Confab,
    /// The harness's forwarder.
    Raw(raw::Mode),
    /// coturn, with this many hops.
    Coturn(u8),
    /// No server: the legs looped to each other.
    Generator,
}

impl Server {
    /// The `--servers` list, `coturn` expanded once per `--turn-hops` entry.
    fn parse_list(names: &[String], hops: &[u8]) -> anyhow::Result<Vec<Server>> {
        let mut out = Vec::new();
        for n in names {
            match n.trim() {
                "confab" | "relay" => out.push(Server::Confab),
                "raw" => out.push(Server::Raw(raw::Mode::Batched)),
                "raw-unbatched" => out.push(Server::Raw(raw::Mode::Unbatched)),
                "coturn" | "turn" => out.extend(hops.iter().map(|h| Server::Coturn(*h))),
                "coturn-2hop" => out.push(Server::Coturn(2)),
                "generator" | "loop" => out.push(Server::Generator),
                other => anyhow::bail!(
                    "--servers: {other:?} is none of confab, raw, raw-unbatched, coturn, coturn-2hop, generator"
                ),
            }
        }
        anyhow::ensure!(!out.is_empty(), "--servers: name at least one");
        Ok(out)
    }

    fn label(self) -> &'static str {
        match self {
            Server::Confab => "confab",
            Server::Raw(m) => m.label(),
            Server::Coturn(1) => "coturn",
            Server::Coturn(_) => "coturn-2hop",
            Server::Generator => "generator",
        }
    }
}

/// What keeps a server's side of a run alive until it is closed.
enum Keep {
    Confab(Box<relay::Relayed>),
    Raw(raw::RawProcess),
    Coturn(Option<Coturn>, Vec<turn::client::Allocation>),
    Nothing,
}

/// Everything a traffic command was given.
/// Everything a side-by-side run (`compare`, `limit`) needs to set up each server.
#[derive(Debug, Clone, Args)]
struct SideBySideArgs {
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
    #[command(flatten)]
    buffers: BufferArgs,
}

impl SideBySideArgs {
    /// The servers to run, in order; the kernel's buffer defaults as raised for the run
    /// (restored when dropped); and the context that sets each server up.
    fn prepare<'a>(
        &'a self,
        cli: &'a Cli,
        rt: &'a Runtime,
        servers: &[String],
        report: &mut Report,
    ) -> anyhow::Result<(Vec<Server>, Option<sockets::RaisedDefaults>, Ctx<'a>)> {
        let list = Server::parse_list(servers, &self.turn.turn_hops)?;
        let (raised, raw_buffer) = buffers(&self.buffers, report, cli.quiet);
        let ctx = Ctx {
            cli,
            rt: Some(rt),
            host: Some(&self.host),
            srv: Some(&self.server),
            raw: Some(&self.raw),
            turn: Some(&self.turn),
            raw_buffer,
        };
        Ok((list, raised, ctx))
    }
}

struct Ctx<'a> {
    cli: &'a Cli,
    rt: Option<&'a Runtime>,
    host: Option<&'a HostArgs>,
    srv: Option<&'a ServerArgs>,
    raw: Option<&'a RawArgs>,
    turn: Option<&'a TurnArgs>,
    /// What the raw forwarder asks for (None: the kernel's defaults).
    raw_buffer: Option<usize>,
}

/// Sets `server` up for `t.pairs` pairs: the subject to measure, its legs, and what to
/// close afterwards.
fn open(
    server: Server,
    ctx: &Ctx,
    t: &TrafficArgs,
    report: &mut Report,
) -> anyhow::Result<(Subject, Vec<traffic::Pair>, Keep)> {
    let cli = ctx.cli;
    let started = Instant::now();
    let pairs = t.pairs as usize;
    match server {
        Server::Confab => {
            let (rt, host, srv) =
                (ctx.rt.context("a runtime")?, ctx.host.context("host options")?, ctx.srv.context("server options")?);
            let hosts = host.hosts(&cli.work_dir)?;
            let per_host = host.sessions_per_host as usize;
            let host_pairs = pairs.div_ceil(per_host);
            let b = bar(cli.quiet, "relay", 2 * host_pairs as u64, true);
            let mut relayed = confab_loadtest::block_on(rt, relay::setup(&hosts, pairs, per_host, &b))?;
            b.finish_and_clear();
            let setup_s = started.elapsed().as_secs_f64();
            let targets: Vec<String> = relayed.relays.iter().map(ToString::to_string).collect();
            let ports: BTreeSet<u16> = relayed.relays.iter().map(|a| a.port()).collect();
            say(
                cli.quiet,
                format_args!(
                    "relay: {} hosts logged in, {pairs} relay sessions on {} ({setup_s:.1} s)",
                    2 * host_pairs,
                    targets.join(", ")
                ),
            );
            let pid = srv.server_pid.or_else(|| ports.iter().find_map(|p| sockets::pid_of_udp_port(*p)));
            if pid.is_none() {
                report.warnings.push("confab: the relay's process was not found: no per-thread CPU".into());
            }
            let legs = std::mem::take(&mut relayed.pairs);
            let subject = Subject {
                scenario: "relay",
                label: "confab".into(),
                targets,
                probe: srv.probe(),
                setup_s,
                framing: RELAY_HEADER_LEN,
                hops: 1,
                process: pid.map(|p| (p, cpu::Threads::Numbered("relay-"))),
                ports,
            };
            Ok((subject, legs, Keep::Confab(Box::new(relayed))))
        }
        Server::Raw(mode) => {
            let r = ctx.raw.context("raw options")?;
            let exe = std::env::current_exe()?;
            let (p, legs) = raw::RawProcess::start(&exe, r.raw_bind, pairs, mode, ctx.raw_buffer)?;
            say(
                cli.quiet,
                format_args!("{}: forwarder process {} on {} for {pairs} pairs", mode.label(), p.pid(), p.addr),
            );
            let subject = Subject {
                scenario: mode.label(),
                label: mode.label().into(),
                targets: vec![p.addr.to_string()],
                probe: Probe::Pid(p.pid()),
                setup_s: started.elapsed().as_secs_f64(),
                framing: 0,
                hops: 1,
                process: Some((p.pid(), cpu::Threads::Named(raw::THREAD_NAME))),
                ports: [p.addr.port()].into(),
            };
            Ok((subject, legs, Keep::Raw(p)))
        }
        Server::Coturn(hops) => {
            let a = ctx.turn.context("turn options")?;
            let creds = Credentials { username: a.turn_user.clone(), password: a.turn_password.clone() };
            std::fs::create_dir_all(&cli.work_dir)?;
            let coturn = match a.turn_server {
                Some(_) => None,
                None => Some(Coturn::start(&a.turnserver_bin, &cli.work_dir, a.turn_threads as usize, &creds)?),
            };
            let (addr, probe) = match &coturn {
                Some(c) => (c.addr, Probe::Pid(c.pid())),
                None => (a.turn_server.expect("given"), Probe::None),
            };
            let label = match (&coturn, hops) {
                (Some(_), _) => server.label().to_owned(),
                (None, 1) => "turn".to_owned(),
                (None, _) => "turn-2hop".to_owned(),
            };
            let b = bar(cli.quiet, "turn", u64::from(t.pairs), true);
            b.set_message("allocating");
            let set_up = turn::setup(addr, &creds, pairs, t.size as usize - RELAY_HEADER_LEN, hops, &|| b.inc(1));
            b.finish_and_clear();
            let (legs, allocations) = set_up.map_err(|e| match &coturn {
                Some(c) => e.context(format!("coturn's log ends:\n{}", c.log_tail())),
                None => e,
            })?;
            let setup_s = started.elapsed().as_secs_f64();
            say(
                cli.quiet,
                format_args!("{label}: {} allocations on {addr}, {hops} hop(s) ({setup_s:.1} s)", allocations.len()),
            );
            let mut ports: BTreeSet<u16> = allocations.iter().map(|x| x.relayed.port()).collect();
            ports.insert(addr.port());
            let subject = Subject {
                scenario: "turn",
                label,
                targets: vec![addr.to_string()],
                probe,
                setup_s,
                framing: turn::stun::CHANNEL_DATA_HEADER_LEN,
                hops,
                process: coturn.as_ref().map(|c| (c.pid(), cpu::Threads::Busy)),
                ports,
            };
            Ok((subject, legs, Keep::Coturn(coturn, allocations)))
        }
        Server::Generator => {
            let subject = Subject {
                scenario: "generator",
                label: "generator".into(),
                targets: vec!["the peer leg (no server)".into()],
                probe: Probe::None,
                setup_s: 0.0,
                framing: 0,
                hops: 0,
                process: None,
                ports: BTreeSet::new(),
            };
            Ok((subject, traffic::looped_pairs(pairs)?, Keep::Nothing))
        }
    }
}

/// Ends what [`open`] started.
fn close(keep: Keep, ctx: &Ctx, report: &mut Report) {
    match keep {
        Keep::Confab(relayed) => {
            if let Some(rt) = ctx.rt {
                confab_loadtest::block_on(rt, relay::teardown(*relayed));
            }
        }
        Keep::Coturn(coturn, mut allocations) => {
            let refused = turn::release(&mut allocations);
            if refused > 0 {
                report.warnings.push(format!("turn: {refused} allocations were not released cleanly"));
            }
            drop(coturn);
        }
        Keep::Raw(p) => drop(p),
        Keep::Nothing => {}
    }
}

/// One server measured with the traffic of `t`, its row added to `report`.
fn run_one(server: Server, ctx: &Ctx, t: &TrafficArgs, report: &mut Report) -> anyhow::Result<()> {
    if let Server::Coturn(_) = server {
        anyhow::ensure!(
            t.duration <= TURN_DURATION_MAX,
            "--duration: at most {} for turn (TURN permissions last 300 s and this client does not refresh them)",
            humantime::format_duration(TURN_DURATION_MAX)
        );
    }
    let (subject, legs, keep) = open(server, ctx, t, report)?;
    let label = subject.label.clone();
    let result = scenarios::measure(subject, legs, &t.pattern(), t.warmup, ctx.cli.quiet);
    close(keep, ctx, report);
    let result = result?;
    if server == Server::Confab && result.server.cpu_s.is_none() {
        report.warnings.push(format!("{label} server CPU and memory: n/a (no --metrics or --server-pid given, and the relay's process was not found)"));
    }
    report.traffic.push(result);
    Ok(())
}

/// Raises the kernel's default socket buffers to what the servers that ask get, unless
/// told not to; says what is in force either way.
fn buffers(b: &BufferArgs, report: &mut Report, quiet: bool) -> (Option<sockets::RaisedDefaults>, Option<usize>) {
    if b.kernel_buffers {
        report.warnings.push(format!(
            "socket buffers: kernel defaults ({} bytes in force); the raw forwarder asks for none; start confab \
             with supernode.relay.recv_buffer_bytes and send_buffer_bytes at half that (the kernel doubles a request)",
            sockets::default_recv_bytes().map(|v| v.to_string()).unwrap_or_else(|| "?".into())
        ));
        return (None, None);
    }
    let max = std::fs::read_to_string("/proc/sys/net/core/rmem_max").ok().and_then(|v| v.trim().parse::<u64>().ok());
    let in_force = 2 * (b.buffer_bytes as u64).min(max.unwrap_or(u64::MAX));
    match sockets::RaisedDefaults::raise(in_force) {
        Ok(r) => {
            say(quiet, format_args!("socket buffers: kernel defaults raised to {in_force} bytes for the run"));
            (Some(r), Some(b.buffer_bytes))
        }
        Err(e) => {
            report.warnings.push(format!(
                "socket buffers: the kernel defaults could not be raised ({e:#}; needs root), so coturn runs with \
                 the kernel's; the raw forwarder asks for none either; start confab with \
                 supernode.relay.recv_buffer_bytes and send_buffer_bytes at half net.core.rmem_default for an \
                 equal comparison"
            ));
            (None, None)
        }
    }
}

/// The guard's verdict on a `compare` run: confab against the batched raw floor.
fn guard(g: &GuardArgs, report: &mut Report) -> anyhow::Result<()> {
    if g.guard_cpu_ratio <= 0.0 {
        return Ok(());
    }
    let find = |l: &str| report.traffic.iter().find(|t| t.label == l);
    let (Some(c), Some(r)) = (find("confab"), find("raw")) else {
        anyhow::bail!("guard: needs both confab and raw in --servers");
    };
    let (ct, rt) = (
        c.thread_cpu_us_per_packet.context("guard: no thread CPU for confab's relay workers")?,
        r.thread_cpu_us_per_packet.context("guard: no thread CPU for the raw forwarder")?,
    );
    let ratio = ct / rt;
    let loss_pp = c.loss_pct - r.loss_pct;
    let v = report::Guard {
        cpu_ratio: ratio,
        cpu_ratio_max: g.guard_cpu_ratio,
        loss_pp,
        loss_pp_max: g.guard_loss_pp,
        floor_loss_pct: r.loss_pct,
        ok: ratio <= g.guard_cpu_ratio && loss_pp <= g.guard_loss_pp && r.loss_pct <= g.guard_loss_pp,
    };
    report.guard = Some(v.clone());
    if r.loss_pct > g.guard_loss_pp {
        anyhow::bail!("guard: the raw floor itself lost {:.3}% at this rate: choose a rate both carry", r.loss_pct);
    }
    anyhow::ensure!(
        v.ok,
        "guard: confab's relay threads spend {ct:.3} µs per packet, {ratio:.2}× the batched raw floor's {rt:.3} \
         (at most {:.2}×); loss confab {:.3}% vs raw {:.3}% ({loss_pp:+.3} points, at most {:+.3})",
        g.guard_cpu_ratio,
        c.loss_pct,
        r.loss_pct,
        g.guard_loss_pp
    );
    Ok(())
}

/// `limit`: every server searched `repeats` times, in turn (so a change in the machine's
/// load falls on all of them alike), each search on a fresh setup.
#[allow(clippy::too_many_arguments)]
fn run_limit(
    servers: &[Server],
    ctx: &Ctx,
    t: &TrafficArgs,
    opts: &limit::Options,
    repeats: u32,
    probe: Duration,
    max_time: Duration,
    report: &mut Report,
) -> anyhow::Result<()> {
    let deadline = Instant::now() + max_time;
    let mut found: Vec<Vec<limit::Search>> = servers.iter().map(|_| Vec::new()).collect();
    let b = bar(ctx.cli.quiet, "limit", u64::from(repeats) * servers.len() as u64, true);
    'all: for r in 0..repeats {
        for (k, server) in servers.iter().enumerate() {
            if Instant::now() >= deadline {
                report.warnings.push(format!("limit: --max-time reached after {r} full repeats"));
                break 'all;
            }
            b.set_prefix(server.label());
            let (subject, legs, keep) = open(*server, ctx, t, report)?;
            let mut tr = traffic::Traffic::start(legs, t.pattern())?;
            let searched =
                tr.latch(scenarios::LATCH_TIMEOUT).and_then(|_| limit::search(&mut tr, opts, probe, &b, deadline));
            drop(tr);
            drop(subject);
            close(keep, ctx, report);
            let s = searched?;
            let line = format!(
                "{:>14} run {}: {:.0} pps loss-free ({} windows{})",
                server.label(),
                r + 1,
                s.pps,
                s.probes.len(),
                if s.at_max { ", the highest rate tried" } else { "" }
            );
            // Progress lines even where the bar is not drawn (standard error not a terminal).
            if b.is_hidden() {
                say(ctx.cli.quiet, line);
            } else {
                b.println(line);
            }
            found[k].push(s);
            b.inc(1);
        }
    }
    b.finish_and_clear();
    for (server, searches) in servers.iter().zip(found) {
        let hops = match server {
            Server::Generator => 0,
            Server::Coturn(h) => *h,
            _ => 1,
        };
        report.limit.push(limit::Summary::of(server.label(), hops, searches));
    }
    Ok(())
}

fn runtime() -> anyhow::Result<Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?)
}

fn run(cli: &Cli) -> anyhow::Result<Report> {
    confab_loadtest::server::raise_fd_limit();
    let name = match &cli.command {
        Command::Relay { .. } => "relay",
        Command::Raw { .. } => "raw",
        Command::Turn { .. } => "turn",
        Command::Compare { .. } => "compare",
        Command::Limit { .. } => "limit",
        Command::Forward { .. } => "forward",
        Command::Login { .. } => "login",
        Command::Hosts { .. } => "hosts",
        Command::Lookup { .. } => "lookup",
        Command::Chat { .. } => "chat",
        Command::Lateness { .. } => "lateness",
        Command::Simulate(_) => "simulate",
    };
    let mut report = Report::new(name);
    match &cli.command {
        Command::Relay { traffic, host, server } => {
            let rt = runtime()?;
            let ctx = Ctx {
                cli,
                rt: Some(&rt),
                host: Some(host),
                srv: Some(server),
                raw: None,
                turn: None,
                raw_buffer: None,
            };
            run_one(Server::Confab, &ctx, traffic, &mut report)?;
        }
        Command::Raw { traffic, raw, unbatched, buffers: b } => {
            let (_raised, raw_buffer) = buffers(b, &mut report, cli.quiet);
            let ctx = Ctx { cli, rt: None, host: None, srv: None, raw: Some(raw), turn: None, raw_buffer };
            let mode = if *unbatched { raw::Mode::Unbatched } else { raw::Mode::Batched };
            run_one(Server::Raw(mode), &ctx, traffic, &mut report)?;
        }
        Command::Turn { traffic, turn, buffers: b } => {
            let (_raised, raw_buffer) = buffers(b, &mut report, cli.quiet);
            let ctx = Ctx { cli, rt: None, host: None, srv: None, raw: None, turn: Some(turn), raw_buffer };
            for h in &turn.turn_hops {
                run_one(Server::Coturn(*h), &ctx, traffic, &mut report)?;
            }
        }
        Command::Compare { side, guard: g, servers } => {
            let rt = runtime()?;
            let (list, raised, ctx) = side.prepare(cli, &rt, servers, &mut report)?;
            for s in list {
                match run_one(s, &ctx, &side.traffic, &mut report) {
                    Ok(()) => {}
                    Err(e) if matches!(s, Server::Coturn(_)) && !g.enabled() => {
                        say(cli.quiet, format_args!("{}: skipped: {e:#}", s.label()));
                        report.warnings.push(format!("{} skipped: {e:#}", s.label()));
                    }
                    Err(e) => return Err(e.context(s.label())),
                }
            }
            drop(raised);
            report.check_buffers();
            report.compute_ratios();
            if let Err(e) = guard(g, &mut report) {
                report.guard_failure = Some(format!("{e:#}"));
            }
            return Ok(report);
        }
        Command::Limit { side, servers, repeats, probe, start_rate, max_rate, precision, max_probes, max_time } => {
            anyhow::ensure!(*probe <= Duration::from_secs(60), "--probe: at most 60 s a window");
            anyhow::ensure!(*precision > 0.0 && *precision < 1.0, "--precision: between 0 and 1");
            let rt = runtime()?;
            let (list, _raised, ctx) = side.prepare(cli, &rt, servers, &mut report)?;
            let opts = limit::Options {
                start_rate: *start_rate,
                max_rate: *max_rate,
                precision: *precision,
                max_probes: *max_probes as usize,
            };
            run_limit(&list, &ctx, &side.traffic, &opts, *repeats, *probe, *max_time, &mut report)?;
        }
        Command::Forward { bind, unbatched, buffer_bytes } => {
            let mode = if *unbatched { raw::Mode::Unbatched } else { raw::Mode::Batched };
            raw::serve(*bind, mode, *buffer_bytes)?;
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
        Command::Chat { host, server, hosts: h, rate, duration, offline, patience } => {
            anyhow::ensure!(*rate > 0.0 && *rate <= 100.0, "--rate: between 0 and 100 messages a second per writer");
            let hosts = host.hosts(&cli.work_dir)?;
            let probe = server.probe();
            let o = confab_loadtest::chat::ChatOptions {
                hosts: *h as usize,
                rate: *rate,
                duration: *duration,
                offline: *offline as usize,
                patience: *patience,
            };
            report.chat = Some(confab_loadtest::block_on(
                &runtime()?,
                confab_loadtest::chat::chat(&hosts, &o, &probe, cli.quiet),
            )?);
        }
        Command::Simulate(_) => unreachable!("main runs simulate itself"),
        Command::Lateness { runs, supernodes, buddies, warmup, window, presence_refresh, kill_after } => {
            anyhow::ensure!(kill_after < window, "--kill-after: within --window");
            report.lateness = Some(confab_loadtest::lateness::measure(&confab_loadtest::lateness::Options {
                runs: *runs,
                supernodes: *supernodes as usize,
                buddies: *buddies as usize,
                warmup: *warmup,
                window: *window,
                presence_refresh: *presence_refresh,
                kill_after: *kill_after,
                work_dir: cli.work_dir.clone(),
                quiet: cli.quiet,
            })?);
        }
    }
    report.compute_ratios();
    Ok(report)
}

impl GuardArgs {
    fn enabled(&self) -> bool {
        self.guard_cpu_ratio > 0.0
    }
}

/// mimalloc: the simulator allocates and frees hundreds of millions of small messages and
/// entries; a 5,000-node run took 88.8 s with it against 103.6 s with glibc's allocator.
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    if let Command::Simulate(args) = &cli.command {
        return simulate(&cli, args);
    }
    let report = run(&cli)?;
    if matches!(cli.command, Command::Forward { .. }) {
        return Ok(());
    }
    print!("{}", report.render());
    if let Some(path) = &cli.json {
        let text = serde_json::to_string_pretty(&report)?;
        std::fs::write(path, text + "\n").with_context(|| format!("--json {}", path.display()))?;
    }
    if let Some(f) = &report.guard_failure {
        eprintln!("{f}");
        std::process::exit(3);
    }
    Ok(())
}

/// `simulate`: its own report (virtual time, not a live network's).
fn simulate(cli: &Cli, args: &confab_loadtest::sim::args::SimArgs) -> anyhow::Result<()> {
    let cfg = args.config();
    cfg.check().map_err(anyhow::Error::msg)?;
    let global = confab_loadtest::sim::global::Global::new(args.index(&cfg))?;
    let report = confab_loadtest::sim::run(cfg, global, cli.quiet);
    print!("{}", report.table());
    if let Some(path) = &cli.json {
        let text = serde_json::to_string_pretty(&report.json)?;
        std::fs::write(path, text + "\n").with_context(|| format!("--json {}", path.display()))?;
    }
    let failed = args.failed(&report.json);
    if !failed.is_empty() {
        for f in failed {
            eprintln!("{f}");
        }
        std::process::exit(3);
    }
    Ok(())
}
