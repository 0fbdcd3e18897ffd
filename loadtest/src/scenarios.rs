//! The scenarios, each run to one result: the traffic measurement that `relay`, `raw`
//! and `turn` share, and the `login`, `hosts` and `lookup` scenarios.

use crate::cpu;
use crate::hosts::{self, Hosts};
use crate::report::{HostsResult, LoginResult, LookupResult, TrafficResult};
use crate::server::{self, Probe};
use crate::sockets::{self, Buffers};
use crate::stats::{self, Latency};
use crate::traffic::{self, Pair, Pattern, Traffic};
use hdrhistogram::Histogram;
use indicatif::{ProgressBar, ProgressStyle};
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::{Duration, Instant};

/// How long legs may take to hear each other's probes.
pub const LATCH_TIMEOUT: Duration = Duration::from_secs(5);

/// A progress bar on standard error (hidden with `quiet`, or when it is not a terminal).
pub fn bar(quiet: bool, prefix: &str, len: u64, counts: bool) -> ProgressBar {
    if quiet {
        return ProgressBar::hidden();
    }
    let template =
        if counts { "{prefix:>8} [{bar:40}] {pos}/{len} {msg}" } else { "{prefix:>8} [{bar:40}] {elapsed:>4} {msg}" };
    let b = ProgressBar::new(len);
    b.set_style(ProgressStyle::with_template(template).expect("valid template").progress_chars("=> "));
    b.set_prefix(prefix.to_owned());
    b
}

/// What a traffic measurement is about, besides its legs.
pub struct Subject {
    /// `relay`, `raw` or `turn`.
    pub scenario: &'static str,
    /// The column title.
    pub label: String,
    /// Where the legs send.
    pub targets: Vec<String>,
    /// Where the server's resources are read.
    pub probe: Probe,
    /// Seconds the setup took.
    pub setup_s: f64,
    /// Framing bytes each relay adds before the inner packet.
    pub framing: usize,
    /// Times each datagram crosses the server (coturn with two allocations: 2).
    pub hops: u8,
    /// The server's process and which of its threads forward, for CPU from `/proc`.
    pub process: Option<(u32, cpu::Threads)>,
    /// The server's UDP ports, for the buffer sizes in force.
    pub ports: BTreeSet<u16>,
}

/// A timed window's figures, before they are put in a [`TrafficResult`].
struct Window {
    outcome: traffic::Outcome,
    spent: server::Spent,
    split: Option<cpu::Split>,
    before: server::Sample,
    after: server::Sample,
    measured_s: f64,
    buffers: Buffers,
}

/// Longest wait after a window for the server's counters to take in its traffic.
const SETTLE_MAX: Duration = Duration::from_secs(1);

/// Runs one timed window on `t`, reading the server before and after (and its buffers
/// half way).
fn window(s: &Subject, t: &mut Traffic, bar: &ProgressBar) -> anyhow::Result<Window> {
    let tasks_before = s.process.as_ref().and_then(|(pid, _)| cpu::sample(*pid));
    let before = s.probe.sample();
    let started = Instant::now();
    let ports = s.ports.clone();
    let half = t.pattern().duration / 2;
    let looker = std::thread::spawn(move || {
        std::thread::sleep(half);
        sockets::buffers(&ports)
    });
    let outcome = t.run(bar)?;
    let tasks_after = s.process.as_ref().and_then(|(pid, _)| cpu::sample(*pid));
    let measured_s = started.elapsed().as_secs_f64();
    let mut after = s.probe.sample();
    // confab's relay workers add to their counters every 50 ms, and an idle worker at
    // its next wake-up (within its 200 ms receive timeout): wait, a second at most, for
    // the server's count of forwards to cover what the legs received.
    let settle = Instant::now() + SETTLE_MAX;
    while before.forwarded.zip(after.forwarded).is_some_and(|(b, a)| a - b < outcome.delivered as f64)
        && Instant::now() < settle
    {
        std::thread::sleep(Duration::from_millis(25));
        after = s.probe.sample();
    }
    let split = match (&s.process, tasks_before, tasks_after) {
        (Some((_, pick)), Some(b), Some(a)) => Some(cpu::between(&b, &a, pick)),
        _ => None,
    };
    let mut spent = server::spent(&before, &after);
    if let Some(c) = split {
        // The process's CPU from /proc, as for every server, rather than its own metric.
        spent.cpu_s = Some(c.process_s);
        spent.source = Some("proc");
    }
    let buffers = looker.join().unwrap_or_default();
    Ok(Window { outcome, spent, split, before, after, measured_s, buffers })
}

/// Latches the legs, runs a warm-up window (not counted) if asked, then the timed window
/// between two readings of the server, and tallies.
pub fn measure(
    s: Subject,
    pairs: Vec<Pair>,
    pattern: &Pattern,
    warmup: Duration,
    quiet: bool,
) -> anyhow::Result<TrafficResult> {
    let n = pairs.len();
    let mut t = Traffic::start(pairs, pattern.clone())?;
    let latch = t.latch(LATCH_TIMEOUT)?;
    if !warmup.is_zero() {
        let b = bar(quiet, &format!("{} warm-up", s.label), warmup.as_millis() as u64, false);
        t.set_duration(warmup);
        t.run(&b)?;
        b.finish_and_clear();
        t.set_duration(pattern.duration);
    }
    let b = bar(quiet, &s.label, pattern.duration.as_millis() as u64, false);
    let w = window(&s, &mut t, &b)?;
    b.finish_and_clear();
    Ok(result(s, n, pattern, latch, w))
}

/// A window's figures as a result row.
fn result(s: Subject, n: usize, pattern: &Pattern, latch: Duration, w: Window) -> TrafficResult {
    let Window { outcome: o, spent, split, before, after, measured_s: measured, buffers } = w;
    let window_s = o.window.as_secs_f64();
    let sent = o.sent.max(1) as f64;
    let per_packet = |c: f64| (o.delivered > 0).then(|| c * 1e6 / o.delivered as f64);
    TrafficResult {
        scenario: s.scenario,
        label: s.label,
        targets: s.targets,
        hops: s.hops,
        pairs: n,
        rate_pps: (!pattern.flat_out).then_some(pattern.rate),
        flat_out: pattern.flat_out,
        inner_bytes: pattern.inner_len,
        datagram_bytes: pattern.inner_len + s.framing,
        setup_s: s.setup_s,
        latch_s: latch.as_secs_f64(),
        window_s,
        measured_s: measured,
        sent: o.sent,
        delivered: o.delivered,
        offered_pps: o.sent as f64 / window_s,
        delivered_pps: o.delivered as f64 / window_s,
        loss_pct: 100.0 * o.sent.saturating_sub(o.delivered) as f64 / sent,
        reordered: o.reordered,
        misrouted: o.misrouted,
        stale: o.stale,
        send_waits: o.send_waits,
        send_errors: o.send_errors,
        latency_us: Latency::of(&o.latency),
        jitter_us: o.jitter_ns.map(|j| j / 1000.0),
        cpu_us_per_packet: spent.cpu_s.and_then(per_packet),
        thread_cpu_us_per_packet: split.and_then(|c| per_packet(c.threads_s)),
        cpu_pct: spent.cpu_s.map(|c| 100.0 * c / measured),
        thread_cpu_pct: split.map(|c| 100.0 * c.threads_s / measured),
        forwarding_threads: s.process.as_ref().map(|(_, p)| p.describe()),
        cpu: split,
        server: spent,
        buffers,
        relay_drops: server::drops_between(&before, &after),
        server_forwarded: before.forwarded.zip(after.forwarded).map(|(b, a)| (a - b).max(0.0).round() as u64),
    }
}

fn failed(map: &mut BTreeMap<String, u64>, e: impl std::fmt::Display) {
    *map.entry(e.to_string()).or_insert(0) += 1;
}

fn merge(into: &mut Histogram<u64>, from: &Histogram<u64>) {
    // Same bounds on both sides: adding cannot fail.
    let _ = into.add(from);
}

/// Probes the server off the async threads (it blocks on HTTP or `/proc`).
pub(crate) async fn sample(probe: &Probe) -> server::Sample {
    let p = probe.clone();
    tokio::task::spawn_blocking(move || p.sample()).await.unwrap_or_default()
}

/// `login`: `concurrency` workers, each cycling register (a new account) → login →
/// logout from its own home until the window or `max_cycles` ends.
pub async fn login_cycles(
    hosts: &Arc<Hosts>,
    concurrency: usize,
    duration: Duration,
    max_cycles: u64,
    probe: &Probe,
    quiet: bool,
) -> anyhow::Result<LoginResult> {
    let argon = {
        let t = Instant::now();
        tokio::task::spawn_blocking(|| confab::crypto::password::derive("loadtest", "correct horse battery")).await?;
        t.elapsed()
    };
    let run: String = confab::crypto::random::bytes::<3>().iter().map(|b| format!("{b:02x}")).collect();
    let b = bar(quiet, "login", duration.as_millis() as u64, false);
    let before = sample(probe).await;
    let started = Instant::now();
    let deadline = started + duration;
    let cycles = Arc::new(AtomicU64::new(0));
    let mut set = tokio::task::JoinSet::new();
    for _ in 0..concurrency.max(1) {
        let (hosts, cycles, run) = (hosts.clone(), cycles.clone(), run.clone());
        set.spawn_local(async move {
            let mut w = Worker::default();
            let home = match hosts.home() {
                Ok(h) => h,
                Err(e) => {
                    failed(&mut w.failures, format!("home: {e:#}"));
                    return w;
                }
            };
            while Instant::now() < deadline {
                let n = cycles.fetch_add(1, Relaxed);
                if n >= max_cycles {
                    break;
                }
                let user = hosts.user(&format!("c{run}-{n}"));
                let t = Instant::now();
                if let Err(e) = hosts.register_new(&home, &user).await {
                    failed(&mut w.failures, format!("register: {e}"));
                    continue;
                }
                stats::record(&mut w.register, t.elapsed());
                w.registered += 1;
                let t = Instant::now();
                match hosts.login(&home, &user).await {
                    Ok(s) => {
                        stats::record(&mut w.login, t.elapsed());
                        w.logged_in += 1;
                        let t = Instant::now();
                        s.logout().await;
                        stats::record(&mut w.logout, t.elapsed());
                        w.completed += 1;
                    }
                    Err(e) => failed(&mut w.failures, format!("login: {e}")),
                }
            }
            w
        });
    }
    let mut all = Worker::default();
    loop {
        tokio::select! {
            joined = set.join_next() => match joined {
                Some(Ok(w)) => all.absorb(w),
                Some(Err(e)) => failed(&mut all.failures, format!("worker: {e}")),
                None => break,
            },
            _ = tokio::time::sleep(Duration::from_millis(200)) => {
                b.set_position(started.elapsed().as_millis() as u64);
                b.set_message(format!("{} cycles", cycles.load(Relaxed)));
            }
        }
    }
    b.finish_and_clear();
    let window = started.elapsed().as_secs_f64();
    let after = sample(probe).await;
    let spent = server::spent(&before, &after);
    Ok(LoginResult {
        concurrency,
        window_s: window,
        cycles: cycles.load(Relaxed).min(max_cycles),
        registered: all.registered,
        logged_in: all.logged_in,
        cycles_per_s: all.completed as f64 / window,
        logins_per_s: all.logged_in as f64 / window,
        register_us: Latency::of(&all.register),
        login_us: Latency::of(&all.login),
        logout_us: Latency::of(&all.logout),
        client_argon2_ms: argon.as_secs_f64() * 1000.0,
        server_cpu_ms_per_login: spent.cpu_s.filter(|_| all.logged_in > 0).map(|c| c * 1000.0 / all.logged_in as f64),
        server: spent,
        failures: all.failures,
    })
}

/// One `login` worker's tally.
struct Worker {
    register: Histogram<u64>,
    login: Histogram<u64>,
    logout: Histogram<u64>,
    registered: u64,
    logged_in: u64,
    completed: u64,
    failures: BTreeMap<String, u64>,
}

impl Default for Worker {
    fn default() -> Self {
        Self {
            register: stats::histogram(),
            login: stats::histogram(),
            logout: stats::histogram(),
            registered: 0,
            logged_in: 0,
            completed: 0,
            failures: BTreeMap::new(),
        }
    }
}

impl Worker {
    fn absorb(&mut self, w: Worker) {
        merge(&mut self.register, &w.register);
        merge(&mut self.login, &w.login);
        merge(&mut self.logout, &w.logout);
        self.registered += w.registered;
        self.logged_in += w.logged_in;
        self.completed += w.completed;
        for (k, v) in w.failures {
            *self.failures.entry(k).or_insert(0) += v;
        }
    }
}

/// Shows a timed wait on a progress bar.
async fn wait_showing(b: &ProgressBar, d: Duration) {
    let started = Instant::now();
    b.set_length(d.as_millis() as u64);
    while started.elapsed() < d {
        b.set_position(started.elapsed().as_millis() as u64);
        tokio::time::sleep(d.saturating_sub(started.elapsed()).min(Duration::from_millis(200))).await;
    }
}

/// `hosts`: `m` hosts logged in and left idle (their keepalives running) for `hold`;
/// the server's memory before the logins and at the end gives its memory per host.
pub async fn hold_hosts(
    hosts: &Arc<Hosts>,
    m: usize,
    hold: Duration,
    probe: &Probe,
    quiet: bool,
) -> anyhow::Result<HostsResult> {
    let before = sample(probe).await;
    let users: Vec<String> = (0..m).map(|i| hosts.user(&format!("h{i}"))).collect();
    let b = bar(quiet, "hosts", m as u64, true);
    b.set_message("logging in");
    let started = Instant::now();
    let (sessions, failures) = hosts.try_login_all(&users, &b).await;
    let login_s = started.elapsed().as_secs_f64();
    let sessions: Vec<_> = sessions.into_iter().flatten().collect();
    b.finish_and_clear();
    let held = hold_for(sessions.len(), hold, probe, quiet).await;
    // Still there? One keepalive round trip each, all at once.
    let mut set = tokio::task::JoinSet::new();
    for mut s in sessions {
        set.spawn_local(async move {
            let t = Instant::now();
            let ok = s.keepalive(Duration::from_secs(3)).await.is_some();
            (s, ok.then(|| t.elapsed()))
        });
    }
    let mut rtt = stats::histogram();
    let mut kept = Vec::new();
    let mut answered = 0;
    while let Some(Ok((s, r))) = set.join_next().await {
        if let Some(d) = r {
            answered += 1;
            stats::record(&mut rtt, d);
        }
        kept.push(s);
    }
    let logged_in = kept.len();
    hosts::logout_all(kept).await;
    let mut r = held.result(m, logged_in, failures, login_s, &before, answered, &rtt);
    r.what = "hosts logged in (a login at the login server each)".into();
    Ok(r)
}

/// A hold of connected hosts, measured at the node.
struct Held {
    held_s: f64,
    mid: server::Sample,
    after: server::Sample,
}

/// Holds `connected` hosts for `hold` (a progress bar meanwhile), sampling the node at
/// the start and the end.
async fn hold_for(connected: usize, hold: Duration, probe: &Probe, quiet: bool) -> Held {
    let b = bar(quiet, "holding", hold.as_millis() as u64, false);
    b.set_message(format!("{connected} hosts connected"));
    let mid = sample(probe).await;
    let started = Instant::now();
    wait_showing(&b, hold).await;
    let held_s = started.elapsed().as_secs_f64();
    let after = sample(probe).await;
    b.finish_and_clear();
    Held { held_s, mid, after }
}

impl Held {
    /// The `hosts` result: `connected` of `m` hosts held, `answered` still there at the
    /// end (round trips in `rtt`), the node sampled `before` they connected.
    #[allow(clippy::too_many_arguments)]
    fn result(
        &self,
        m: usize,
        connected: usize,
        failures: BTreeMap<String, u64>,
        login_s: f64,
        before: &server::Sample,
        answered: usize,
        rtt: &Histogram<u64>,
    ) -> HostsResult {
        let (held_s, after) = (self.held_s, &self.after);
        let idle = server::spent(&self.mid, after);
        HostsResult {
            what: String::new(),
            hosts: m,
            logged_in: connected,
            failures,
            login_s,
            held_s,
            keepalive_answered: answered,
            keepalive_rtt_us: Latency::of(rtt),
            node_hosts_before: before.hosts,
            node_hosts_after: after.hosts,
            rss_per_host_bytes: before
                .rss
                .zip(after.rss)
                .filter(|_| connected > 0)
                .map(|(b, a)| (a as f64 - b as f64) / connected as f64),
            idle_cpu_pct: idle.cpu_s.map(|c| 100.0 * c / held_s),
            server: crate::server::Spent {
                cpu_s: idle.cpu_s,
                rss_before: before.rss,
                rss_after: after.rss,
                source: after.source,
            },
        }
    }
}

/// `hosts --accounts K`: `m` idle connections to the network's super nodes that log in
/// only `k` times: each connection is a host port (its own UDP socket) that runs the
/// super-node handshake with one of the `k` credentials and keeps its session alive, as
/// a host does, without the login server's work per host (an argon2 check each), which
/// would make 100,000 hosts take an hour. The super node keys sessions by address, so
/// connections sharing a credential are separate hosts to it; what it keeps per host is
/// what is measured.
pub async fn hold_light_hosts(
    hosts: &Arc<Hosts>,
    m: usize,
    k: usize,
    hold: Duration,
    probe: &Probe,
    quiet: bool,
) -> anyhow::Result<HostsResult> {
    use confab::host::{account, connect, ladder, link::LinkHandle};
    let before = sample(probe).await;
    let started = Instant::now();
    let settings = &hosts.settings;
    let servers = account::LoginServers {
        addrs: settings.login_servers.clone(),
        trusted: settings.trusted.clone(),
        timeout: settings.login_timeout,
    };
    // The k identities: real accounts, real credentials.
    let mut ids = Vec::with_capacity(k);
    for a in 0..k.max(1) {
        let user = hosts.user(&format!("i{a}"));
        let home = hosts.home()?;
        hosts.register(&home, &user).await?;
        let key = home.key()?;
        let keys = hosts.password_keys(&user).await;
        let user_keys = confab::crypto::user::UserKeys::derive(&keys.list).public();
        let logged = account::login(&servers, &user, &keys.shared, &key, "", user_keys).await?;
        ids.push((logged.credential, key));
    }
    let ids = Arc::new(ids);
    let plan = Arc::new(ladder::plan(&[], &settings.ladder));
    let b = bar(quiet, "hosts", m as u64, true);
    b.set_message("connecting");
    // A super node checks at most 256 handshakes at once (`handshakes_max`); several
    // harness processes share that.
    let gate = Arc::new(tokio::sync::Semaphore::new(32));
    let mut set = tokio::task::JoinSet::new();
    for i in 0..m {
        let (ids, plan, gate, b, trusted, t) =
            (ids.clone(), plan.clone(), gate.clone(), b.clone(), settings.trusted.clone(), settings.timeouts.clone());
        set.spawn_local(async move {
            let _permit = gate.acquire_owned().await.expect("semaphore never closed");
            let r = async {
                // One address has ~28,000 ephemeral ports: spread the hosts over the
                // loopback range (all of 127/8 is loopback) when that is where the super
                // node is, so 100,000 fit.
                let local: std::net::SocketAddr = match plan.first().map(|a| a.addr) {
                    Some(std::net::SocketAddr::V4(sn)) if sn.ip().is_loopback() => {
                        std::net::SocketAddr::from(([127, 0, 1, 1 + (i % 200) as u8], 0))
                    }
                    Some(std::net::SocketAddr::V6(_)) => "[::]:0".parse()?,
                    _ => "0.0.0.0:0".parse()?,
                };
                let udp = Arc::new(tokio::net::UdpSocket::bind(local).await?);
                let (credential, key) = &ids[i % ids.len()];
                let me = connect::Me { trusted: &trusted, credential, key };
                let mut log = Vec::new();
                let c = connect::run(&plan, &udp, &me, &t, &mut log).await?;
                anyhow::Ok(LinkHandle::start(c))
            }
            .await;
            b.inc(1);
            r
        });
    }
    let mut links = Vec::with_capacity(m);
    let mut failures = BTreeMap::new();
    while let Some(joined) = set.join_next().await {
        match joined {
            Ok(Ok(l)) => links.push(l),
            Ok(Err(e)) => *failures.entry(format!("{e:#}")).or_insert(0) += 1,
            Err(e) => *failures.entry(format!("connect task: {e}")).or_insert(0) += 1,
        }
    }
    let login_s = started.elapsed().as_secs_f64();
    b.finish_and_clear();
    let held = hold_for(links.len(), hold, probe, quiet).await;
    let connected = links.len();
    // Still there? A link notices a silent super node only after missing keepalives for
    // tens of seconds, so ask: one keepalive round trip each, 512 at a time (100,000 at
    // once would overflow socket buffers and count as silence).
    let gate = Arc::new(tokio::sync::Semaphore::new(512));
    let mut set = tokio::task::JoinSet::new();
    for mut l in links {
        let gate = gate.clone();
        set.spawn_local(async move {
            let _permit = gate.acquire_owned().await.expect("semaphore never closed");
            let rtt = link_round_trip(&mut l, Duration::from_secs(3)).await;
            (l, rtt)
        });
    }
    let mut rtt = stats::histogram();
    let mut answered = 0;
    let mut kept = Vec::with_capacity(connected);
    while let Some(joined) = set.join_next().await {
        match joined {
            Ok((l, r)) => {
                if let Some(d) = r {
                    answered += 1;
                    stats::record(&mut rtt, d);
                }
                kept.push(l);
            }
            Err(e) => *failures.entry(format!("keepalive task: {e}")).or_insert(0) += 1,
        }
    }
    drop(kept);
    let mut r = held.result(m, connected, failures, login_s, &before, answered, &rtt);
    r.what = format!(
        "super-node sessions on {} account credential(s): a handshake and keepalives each, no login per host",
        k.max(1)
    );
    Ok(r)
}

/// One keepalive round trip on a bare link: its time, or None without an answer.
async fn link_round_trip(l: &mut confab::host::link::LinkHandle, timeout: Duration) -> Option<Duration> {
    use confab::wire::MessageKind;
    // The link's own keepalives leave their answers queued: not this one's.
    while l.answers.try_recv().is_ok() {}
    let t = Instant::now();
    if !l.send(MessageKind::Keepalive, Vec::new()).await {
        return None;
    }
    let ack = async {
        while let Some((kind, _)) = l.answers.recv().await {
            if kind == MessageKind::KeepaliveAck {
                return true;
            }
        }
        false
    };
    matches!(tokio::time::timeout(timeout, ack).await, Ok(true)).then(|| t.elapsed())
}

/// `lookup`: `h` hosts look each other up in the Global Index, each at most `rate` a
/// second (a super node answers 50 index requests a second per host, then refuses),
/// until the window or `max_lookups` ends.
pub async fn lookups(
    hosts: &Arc<Hosts>,
    h: usize,
    rate: f64,
    duration: Duration,
    max_lookups: u64,
    probe: &Probe,
    quiet: bool,
) -> anyhow::Result<LookupResult> {
    anyhow::ensure!(h >= 2, "--hosts: at least 2 hosts to look each other up");
    let users: Vec<String> = (0..h).map(|i| hosts.user(&format!("l{i}"))).collect();
    let b = bar(quiet, "lookup", h as u64, true);
    b.set_message("logging in");
    let sessions = hosts.login_all(&users, &b).await?;
    b.finish_and_clear();
    let before = sample(probe).await;
    let b = bar(quiet, "lookup", duration.as_millis() as u64, false);
    let started = Instant::now();
    let deadline = started + duration;
    let count = Arc::new(AtomicU64::new(0));
    let users = Arc::new(users);
    let period = Duration::from_secs_f64(1.0 / rate.max(0.01));
    let mut set = tokio::task::JoinSet::new();
    for (i, mut s) in sessions.into_iter().enumerate() {
        let (users, count) = (users.clone(), count.clone());
        set.spawn_local(async move {
            let mut t = LookupTally::default();
            let mut tick = tokio::time::interval(period);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            // Hosts start spread over one period, not in a burst.
            tokio::time::sleep(period.mul_f64(i as f64 / users.len() as f64)).await;
            for k in 0.. {
                tick.tick().await;
                if Instant::now() >= deadline || count.fetch_add(1, Relaxed) >= max_lookups {
                    break;
                }
                let whom = &users[(i + 1 + k % (users.len() - 1)) % users.len()];
                let started = Instant::now();
                match s.find(whom).await {
                    Ok(Some(f)) => {
                        stats::record(&mut t.latency, started.elapsed());
                        t.found += 1;
                        t.asked.push(u64::from(f.asked));
                    }
                    Ok(None) => {
                        stats::record(&mut t.latency, started.elapsed());
                        t.not_found += 1;
                    }
                    Err(e) => failed(&mut t.errors, e),
                }
            }
            (s, t)
        });
    }
    let mut all = LookupTally::default();
    let mut sessions = Vec::new();
    loop {
        tokio::select! {
            joined = set.join_next() => match joined {
                Some(Ok((s, t))) => {
                    sessions.push(s);
                    merge(&mut all.latency, &t.latency);
                    all.found += t.found;
                    all.not_found += t.not_found;
                    all.asked.extend(t.asked);
                    for (k, v) in t.errors {
                        *all.errors.entry(k).or_insert(0) += v;
                    }
                }
                Some(Err(e)) => failed(&mut all.errors, format!("lookup task: {e}")),
                None => break,
            },
            _ = tokio::time::sleep(Duration::from_millis(200)) => {
                b.set_position(started.elapsed().as_millis() as u64);
                b.set_message(format!("{} lookups", count.load(Relaxed).min(max_lookups)));
            }
        }
    }
    b.finish_and_clear();
    let window = started.elapsed().as_secs_f64().min(duration.as_secs_f64().max(0.001)).max(0.001);
    let after = sample(probe).await;
    hosts::logout_all(sessions).await;
    let spent = server::spent(&before, &after);
    let lookups = all.found + all.not_found + all.errors.values().sum::<u64>();
    all.asked.sort_unstable();
    Ok(LookupResult {
        hosts: h,
        rate_per_host: rate,
        window_s: window,
        lookups,
        found: all.found,
        not_found: all.not_found,
        lookups_per_s: lookups as f64 / window,
        latency_us: Latency::of(&all.latency),
        asked_p50: all.asked.get(all.asked.len() / 2).copied(),
        asked_max: all.asked.last().copied(),
        server_cpu_us_per_lookup: spent.cpu_s.filter(|_| lookups > 0).map(|c| c * 1e6 / lookups as f64),
        server: spent,
        errors: all.errors,
    })
}

struct LookupTally {
    latency: Histogram<u64>,
    found: u64,
    not_found: u64,
    asked: Vec<u64>,
    errors: BTreeMap<String, u64>,
}

impl Default for LookupTally {
    fn default() -> Self {
        Self { latency: stats::histogram(), found: 0, not_found: 0, asked: Vec::new(), errors: BTreeMap::new() }
    }
}
