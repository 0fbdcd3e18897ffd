//! Results: what each scenario measured, the JSON document, and the tables printed at
//! the end.

use crate::server::Spent;
use crate::stats::Latency;
use serde::Serialize;
use std::collections::BTreeMap;
use std::fmt::Write;

/// One traffic scenario's figures (`relay`, `raw` or `turn`).
#[derive(Debug, Clone, Serialize)]
pub struct TrafficResult {
    /// `relay`, `raw` or `turn`.
    pub scenario: &'static str,
    /// The column title: `confab`, `raw`, `coturn`.
    pub label: String,
    /// Where the datagrams were sent (the relays granted, the forwarder, the TURN server).
    pub targets: Vec<String>,
    /// Times each datagram crosses the server: 1, or 2 for coturn with two allocations.
    pub hops: u8,
    /// Pairs of legs.
    pub pairs: usize,
    /// Datagrams per second per leg, or null when flat out.
    pub rate_pps: Option<u32>,
    /// Whether the senders sent as fast as they could.
    pub flat_out: bool,
    /// Bytes of the inner (media-shaped) packet, the same in every scenario.
    pub inner_bytes: usize,
    /// Bytes of each datagram on the wire to the relay (inner packet plus framing).
    pub datagram_bytes: usize,
    /// Seconds to get ready: logins and relay sessions, allocations, sockets.
    pub setup_s: f64,
    /// Seconds until every leg had heard its peer's probe.
    pub latch_s: f64,
    /// Seconds of the timed window.
    pub window_s: f64,
    /// Seconds between the two readings of the server's resources.
    pub measured_s: f64,
    /// Timed datagrams sent.
    pub sent: u64,
    /// Timed datagrams delivered to the other leg.
    pub delivered: u64,
    /// `sent` per second of the window.
    pub offered_pps: f64,
    /// `delivered` per second of the window.
    pub delivered_pps: f64,
    /// 100 × (sent − delivered) / sent.
    pub loss_pct: f64,
    /// Deliveries at or below a sequence number already seen on that leg.
    pub reordered: u64,
    /// Deliveries from the wrong leg, or not ours at all.
    pub misrouted: u64,
    /// Arrivals sent in an earlier window (not counted).
    pub stale: u64,
    /// Sends that found the harness's socket buffer full and waited.
    pub send_waits: u64,
    /// Sends that failed in the harness.
    pub send_errors: u64,
    /// One-way latency through the relay, microseconds.
    pub latency_us: Option<Latency>,
    /// Mean RFC 3550 interarrival jitter over the receiving legs, microseconds.
    pub jitter_us: Option<f64>,
    /// The server's CPU and memory.
    pub server: Spent,
    /// Server CPU (the whole process) per delivered datagram, microseconds.
    pub cpu_us_per_packet: Option<f64>,
    /// The forwarding threads' CPU per delivered datagram, microseconds.
    pub thread_cpu_us_per_packet: Option<f64>,
    /// Server CPU as a share of one core while measured, percent.
    pub cpu_pct: Option<f64>,
    /// The forwarding threads' CPU as a share of one core, percent.
    pub thread_cpu_pct: Option<f64>,
    /// Which threads count as forwarding (`relay-N`, `raw-forwarder`, every thread).
    pub forwarding_threads: Option<String>,
    /// Process and forwarding-thread CPU seconds, from `/proc/PID/task/*/schedstat`.
    pub cpu: Option<crate::cpu::Split>,
    /// Socket buffer sizes in force on the server's ports (`ss`).
    pub buffers: crate::sockets::Buffers,
    /// The confab relay's drops during the timed window, by reason (null: no metrics).
    pub relay_drops: Option<BTreeMap<String, u64>>,
    /// Datagrams the server says it forwarded during the run.
    pub server_forwarded: Option<u64>,
}

/// Ratios of one scenario's figures to another's (null where either is unknown or the
/// divisor is 0).
#[derive(Debug, Clone, Serialize, Default)]
pub struct Ratios {
    /// Delivered datagrams per second.
    pub delivered_pps: Option<f64>,
    /// Loss.
    pub loss_pct: Option<f64>,
    /// Median latency.
    pub latency_p50: Option<f64>,
    /// 90th percentile latency.
    pub latency_p90: Option<f64>,
    /// 99th percentile latency.
    pub latency_p99: Option<f64>,
    /// 99.9th percentile latency.
    pub latency_p999: Option<f64>,
    /// Largest latency.
    pub latency_max: Option<f64>,
    /// Jitter.
    pub jitter: Option<f64>,
    /// Server CPU (whole process) per delivered datagram.
    pub cpu_per_packet: Option<f64>,
    /// Forwarding threads' CPU per delivered datagram.
    pub thread_cpu_per_packet: Option<f64>,
}

fn ratio(a: Option<f64>, b: Option<f64>) -> Option<f64> {
    match (a, b) {
        (Some(a), Some(b)) if b > 0.0 => Some(a / b),
        _ => None,
    }
}

impl Ratios {
    /// `a` ÷ `b`, figure by figure.
    pub fn of(a: &TrafficResult, b: &TrafficResult) -> Self {
        let lat = |r: &TrafficResult, f: fn(&Latency) -> f64| r.latency_us.as_ref().map(f);
        Self {
            delivered_pps: ratio(Some(a.delivered_pps), Some(b.delivered_pps)),
            loss_pct: ratio(Some(a.loss_pct), Some(b.loss_pct)),
            latency_p50: ratio(lat(a, |l| l.p50), lat(b, |l| l.p50)),
            latency_p90: ratio(lat(a, |l| l.p90), lat(b, |l| l.p90)),
            latency_p99: ratio(lat(a, |l| l.p99), lat(b, |l| l.p99)),
            latency_p999: ratio(lat(a, |l| l.p999), lat(b, |l| l.p999)),
            latency_max: ratio(lat(a, |l| l.max), lat(b, |l| l.max)),
            jitter: ratio(a.jitter_us, b.jitter_us),
            cpu_per_packet: ratio(a.cpu_us_per_packet, b.cpu_us_per_packet),
            thread_cpu_per_packet: ratio(a.thread_cpu_us_per_packet, b.thread_cpu_us_per_packet),
        }
    }
}

/// The `login` scenario's figures.
#[derive(Debug, Clone, Serialize)]
pub struct LoginResult {
    /// Cycles in flight at once.
    pub concurrency: usize,
    /// Seconds the cycles ran.
    pub window_s: f64,
    /// Register + login + logout cycles started.
    pub cycles: u64,
    /// Accounts created.
    pub registered: u64,
    /// Logins that succeeded.
    pub logged_in: u64,
    /// Failures, by message.
    pub failures: BTreeMap<String, u64>,
    /// Completed cycles per second.
    pub cycles_per_s: f64,
    /// Successful logins per second.
    pub logins_per_s: f64,
    /// Register latency (argon2 on the host included), microseconds.
    pub register_us: Option<Latency>,
    /// Login latency: credential, ladder, NAT discovery, presence, microseconds.
    pub login_us: Option<Latency>,
    /// Logout latency, microseconds.
    pub logout_us: Option<Latency>,
    /// What one argon2id derivation costs the harness (twice per cycle), milliseconds.
    pub client_argon2_ms: f64,
    /// The server's CPU and memory over the window.
    pub server: Spent,
    /// Server CPU per successful login (its register included), milliseconds.
    pub server_cpu_ms_per_login: Option<f64>,
}

/// The `hosts` scenario's figures.
#[derive(Debug, Clone, Serialize)]
pub struct HostsResult {
    /// What one "host" is in this run: logged in for real, or a super-node session on a
    /// shared credential (`--accounts`).
    pub what: String,
    /// Hosts asked for.
    pub hosts: usize,
    /// Hosts logged in and held.
    pub logged_in: usize,
    /// Login failures, by message.
    pub failures: BTreeMap<String, u64>,
    /// Seconds to log them all in.
    pub login_s: f64,
    /// Seconds they were held connected.
    pub held_s: f64,
    /// Hosts that still answered a keepalive at the end.
    pub keepalive_answered: usize,
    /// Keepalive round trips at the end, microseconds.
    pub keepalive_rtt_us: Option<Latency>,
    /// `confab_supernode_hosts_connected` (all nodes) before the logins.
    pub node_hosts_before: Option<f64>,
    /// The same at the end of the hold.
    pub node_hosts_after: Option<f64>,
    /// The server's memory before the logins and at the end of the hold; CPU over the hold.
    pub server: Spent,
    /// (RSS after − RSS before) ÷ hosts logged in, bytes.
    pub rss_per_host_bytes: Option<f64>,
    /// Server CPU while the hosts sat idle (keepalives, presence), percent of one core.
    pub idle_cpu_pct: Option<f64>,
}

/// The `lookup` scenario's figures.
#[derive(Debug, Clone, Serialize)]
pub struct LookupResult {
    /// Hosts looking each other up.
    pub hosts: usize,
    /// Lookups per second each host aims at.
    pub rate_per_host: f64,
    /// Seconds the lookups ran.
    pub window_s: f64,
    /// Lookups made.
    pub lookups: u64,
    /// Lookups that found the user.
    pub found: u64,
    /// Lookups that found nobody.
    pub not_found: u64,
    /// Lookups that failed, by message.
    pub errors: BTreeMap<String, u64>,
    /// Lookups per second.
    pub lookups_per_s: f64,
    /// Lookup latency seen by the host (the entry's signature checked), microseconds.
    pub latency_us: Option<Latency>,
    /// Super nodes asked per lookup: median.
    pub asked_p50: Option<u64>,
    /// Super nodes asked per lookup: most.
    pub asked_max: Option<u64>,
    /// The server's CPU and memory over the window.
    pub server: Spent,
    /// Server CPU per lookup, microseconds.
    pub server_cpu_us_per_lookup: Option<f64>,
}

/// The `chat` scenario's figures.
#[derive(Debug, Clone, Serialize)]
pub struct ChatResult {
    /// Hosts: half writers, half their partners.
    pub hosts: usize,
    /// Messages per second each writer aims at, online.
    pub rate_per_writer: f64,
    /// Seconds the online phase ran (patience included).
    pub window_s: f64,
    /// Messages the store took, online.
    pub sent: u64,
    /// Messages that reached their partner online (as an event).
    pub received: u64,
    /// Messages sent online that never arrived within the patience.
    pub lost: u64,
    /// Messages received per second, online.
    pub messages_per_s: f64,
    /// From the send's start to the partner's event, microseconds.
    pub latency_us: Option<Latency>,
    /// The server's CPU and memory over the online phase.
    pub server: Spent,
    /// Server CPU per message received online (its receipt included), microseconds.
    pub server_cpu_us_per_message: Option<f64>,
    /// Messages each writer left for its partner while away.
    pub offline_per_partner: usize,
    /// Offline messages the store took.
    pub offline_stored: u64,
    /// Offline messages handed to the partners when they came back.
    pub offline_handed: u64,
    /// Offline messages that did not arrive within the patience.
    pub offline_missing: u64,
    /// A partner's login when it came back, microseconds.
    pub login_us: Option<Latency>,
    /// From the start of a partner's login to its last offline message, microseconds.
    pub handover_us: Option<Latency>,
    /// Failures, by message.
    pub errors: BTreeMap<String, u64>,
}

/// Everything a run measured: what `--json FILE` writes.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// `confab-loadtest`.
    pub tool: &'static str,
    /// Its version.
    pub version: &'static str,
    /// The subcommand.
    pub command: String,
    /// When the run started, Unix seconds.
    pub started_unix: u64,
    /// Traffic scenarios, in the order they ran.
    pub traffic: Vec<TrafficResult>,
    /// `confab/raw`, `confab/coturn`: ratios of the traffic figures.
    pub ratios: BTreeMap<String, Ratios>,
    /// The `login` scenario.
    pub login: Option<LoginResult>,
    /// The `hosts` scenario.
    pub hosts: Option<HostsResult>,
    /// The `lookup` scenario.
    pub lookup: Option<LookupResult>,
    /// The `chat` scenario.
    pub chat: Option<ChatResult>,
    /// `limit`: each server's searched loss-free rate.
    pub limit: Vec<crate::limit::Summary>,
    /// `lateness`: the media clock under signalling load.
    pub lateness: Option<crate::lateness::LatenessResult>,
    /// The performance guard's verdict (`compare --guard-cpu-ratio`).
    pub guard: Option<Guard>,
    /// Why the guard failed the run, if it did.
    pub guard_failure: Option<String>,
    /// What could not be measured, and why.
    pub warnings: Vec<String>,
}

/// The performance guard's figures: confab against the batched raw floor, one run.
#[derive(Debug, Clone, Serialize)]
pub struct Guard {
    /// confab's relay worker threads' CPU per packet ÷ the raw forwarder thread's.
    pub cpu_ratio: f64,
    /// The most it may be.
    pub cpu_ratio_max: f64,
    /// confab's loss minus the floor's, percentage points.
    pub loss_pp: f64,
    /// The most it may be.
    pub loss_pp_max: f64,
    /// The floor's own loss, percent.
    pub floor_loss_pct: f64,
    /// Whether the run passed.
    pub ok: bool,
}

impl Report {
    /// An empty report for `command`.
    pub fn new(command: &str) -> Self {
        Self {
            tool: "confab-loadtest",
            version: env!("CARGO_PKG_VERSION"),
            command: command.to_owned(),
            started_unix: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(0),
            traffic: Vec::new(),
            ratios: BTreeMap::new(),
            login: None,
            hosts: None,
            lookup: None,
            chat: None,
            limit: Vec::new(),
            lateness: None,
            guard: None,
            guard_failure: None,
            warnings: Vec::new(),
        }
    }

    /// Adds a warning when the servers' sockets had different buffer sizes in force.
    pub fn check_buffers(&mut self) {
        let seen: Vec<&TrafficResult> = self.traffic.iter().filter(|t| t.buffers.sockets > 0).collect();
        let first = seen.first().map(|t| (&t.buffers.recv, &t.buffers.send));
        if seen.iter().any(|t| Some((&t.buffers.recv, &t.buffers.send)) != first) {
            let each: Vec<String> = seen.iter().map(|t| format!("{} {}", t.label, t.buffers.cell())).collect();
            self.warnings.push(format!(
                "socket buffers differ between servers (receive / send MiB in force): {}",
                each.join("; ")
            ));
        }
    }

    /// Fills the ratios of the confab relay to the others that ran.
    pub fn compute_ratios(&mut self) {
        let Some(confab) = self.traffic.iter().find(|t| t.scenario == "relay") else { return };
        for other in self.traffic.iter().filter(|t| t.scenario != "relay") {
            self.ratios.insert(format!("{}/{}", confab.label, other.label), Ratios::of(confab, other));
        }
    }

    /// The tables, as printed at the end of a run.
    pub fn render(&self) -> String {
        let mut out = String::new();
        if !self.traffic.is_empty() {
            out.push_str(&traffic_table(&self.traffic, &self.ratios));
        }
        if let Some(l) = &self.login {
            out.push_str(&login_table(l));
        }
        if let Some(h) = &self.hosts {
            out.push_str(&hosts_table(h));
        }
        if let Some(c) = &self.chat {
            out.push_str(&chat_table(c));
        }
        if let Some(l) = &self.lookup {
            out.push_str(&lookup_table(l));
        }
        if !self.limit.is_empty() {
            out.push_str(&limit_table(&self.limit));
        }
        if let Some(l) = &self.lateness {
            out.push_str(&lateness_table(l));
        }
        if let Some(g) = &self.guard {
            let _ = writeln!(
                out,
                "\nguard: relay threads' CPU per packet {:.2}× the batched raw floor's (at most {:.2}×); loss {:+.3} \
                 points over the floor's {:.3}% (at most {:+.3}): {}",
                g.cpu_ratio,
                g.cpu_ratio_max,
                g.loss_pp,
                g.floor_loss_pct,
                g.loss_pp_max,
                if g.ok { "pass" } else { "FAIL" }
            );
        }
        for w in &self.warnings {
            let _ = writeln!(out, "note: {w}");
        }
        out
    }
}

const NA: &str = "n/a";

fn f(v: Option<f64>, decimals: usize) -> String {
    v.map(|v| format!("{v:.decimals$}")).unwrap_or_else(|| NA.into())
}

fn mib(v: Option<u64>) -> String {
    v.map(|b| format!("{:.1}", b as f64 / (1 << 20) as f64)).unwrap_or_else(|| NA.into())
}

fn ratio_cell(v: Option<f64>) -> String {
    v.map(|v| format!("{v:.2}×")).unwrap_or_else(|| "–".into())
}

/// Aligned columns: the first left-aligned, the rest right-aligned.
fn table(rows: &[Vec<String>]) -> String {
    let cols = rows.iter().map(Vec::len).max().unwrap_or(0);
    let widths: Vec<usize> =
        (0..cols).map(|c| rows.iter().filter_map(|r| r.get(c)).map(|s| s.chars().count()).max().unwrap_or(0)).collect();
    let mut out = String::new();
    for r in rows {
        let mut line = String::new();
        for (c, cell) in r.iter().enumerate() {
            let pad = widths[c].saturating_sub(cell.chars().count());
            if c == 0 {
                line.push_str(cell);
                line.push_str(&" ".repeat(pad));
            } else {
                line.push_str("  ");
                line.push_str(&" ".repeat(pad));
                line.push_str(cell);
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

fn traffic_table(results: &[TrafficResult], ratios: &BTreeMap<String, Ratios>) -> String {
    // Ratio columns in the order the scenarios ran, not the map's.
    let ratios: Vec<(String, &Ratios)> = results
        .iter()
        .filter_map(|r| results.iter().find(|c| c.scenario == "relay").map(|c| format!("{}/{}", c.label, r.label)))
        .filter_map(|k| ratios.get(&k).map(|v| (k, v)))
        .collect();
    let mut header = vec![String::new()];
    header.extend(results.iter().map(|r| r.label.clone()));
    header.extend(ratios.iter().map(|(k, _)| k.clone()));
    let mut rows = vec![header];
    let mut row = |name: &str, cell: &dyn Fn(&TrafficResult) -> String, ratio: Option<fn(&Ratios) -> Option<f64>>| {
        let mut r = vec![name.to_owned()];
        r.extend(results.iter().map(cell));
        if let Some(pick) = ratio {
            r.extend(ratios.iter().map(|(_, x)| ratio_cell(pick(x))));
        }
        rows.push(r);
    };
    row("pairs", &|r| r.pairs.to_string(), None);
    row("rate per leg (pps)", &|r| r.rate_pps.map(|p| p.to_string()).unwrap_or_else(|| "flat out".into()), None);
    row("datagram bytes", &|r| r.datagram_bytes.to_string(), None);
    row("window s", &|r| format!("{:.1}", r.window_s), None);
    row("sent", &|r| r.sent.to_string(), None);
    row("delivered", &|r| r.delivered.to_string(), None);
    row("offered pps", &|r| format!("{:.0}", r.offered_pps), None);
    row("delivered pps", &|r| format!("{:.0}", r.delivered_pps), Some(|x| x.delivered_pps));
    row("loss %", &|r| format!("{:.3}", r.loss_pct), Some(|x| x.loss_pct));
    let lat = |pick: fn(&Latency) -> f64| move |r: &TrafficResult| f(r.latency_us.as_ref().map(pick), 1);
    row("latency p50 µs", &lat(|l| l.p50), Some(|x| x.latency_p50));
    row("latency p90 µs", &lat(|l| l.p90), Some(|x| x.latency_p90));
    row("latency p99 µs", &lat(|l| l.p99), Some(|x| x.latency_p99));
    row("latency p99.9 µs", &lat(|l| l.p999), Some(|x| x.latency_p999));
    row("latency max µs", &lat(|l| l.max), Some(|x| x.latency_max));
    row("jitter µs", &|r| f(r.jitter_us, 1), Some(|x| x.jitter));
    row("hops through the server", &|r| r.hops.to_string(), None);
    row("reordered", &|r| r.reordered.to_string(), None);
    row("misrouted", &|r| r.misrouted.to_string(), None);
    row("server CPU s", &|r| f(r.server.cpu_s, 2), None);
    row("server CPU % of a core", &|r| f(r.cpu_pct, 1), None);
    row("server CPU µs/packet", &|r| f(r.cpu_us_per_packet, 2), Some(|x| x.cpu_per_packet));
    row("forwarding threads", &|r| r.cpu.map(|c| c.threads.to_string()).unwrap_or_else(|| NA.into()), None);
    row("thread CPU % of a core", &|r| f(r.thread_cpu_pct, 1), None);
    row("thread CPU µs/packet", &|r| f(r.thread_cpu_us_per_packet, 2), Some(|x| x.thread_cpu_per_packet));
    row("socket buffers rcv / snd MiB", &|r| r.buffers.cell(), None);
    row("server RSS before MiB", &|r| mib(r.server.rss_before), None);
    row("server RSS after MiB", &|r| mib(r.server.rss_after), None);
    row("resources from", &|r| r.server.source.unwrap_or(NA).to_owned(), None);
    let mut out = table(&rows);
    for r in results {
        if r.scenario == "relay" {
            let drops = match &r.relay_drops {
                None => NA.to_owned(),
                Some(d) if d.is_empty() => "none".to_owned(),
                Some(d) => d.iter().map(|(k, v)| format!("{k} {v}")).collect::<Vec<_>>().join(", "),
            };
            let fwd = r.server_forwarded.map(|n| n.to_string()).unwrap_or_else(|| NA.into());
            let _ = writeln!(out, "\n{} relay in the window: forwarded {fwd}; dropped: {drops}", r.label);
        }
        let _ = writeln!(out, "{} sent to: {}", r.label, r.targets.join(", "));
    }
    out
}

fn ms(l: &Option<Latency>, pick: fn(&Latency) -> f64) -> String {
    f(l.as_ref().map(|l| pick(l) / 1000.0), 2)
}

fn failures_line(out: &mut String, what: &str, failures: &BTreeMap<String, u64>) {
    for (msg, n) in failures {
        let _ = writeln!(out, "{what} ×{n}: {msg}");
    }
}

fn login_table(l: &LoginResult) -> String {
    let mut rows = vec![vec![String::new(), "register ms".into(), "login ms".into(), "logout ms".into()]];
    for (name, pick) in [
        ("p50", (|l: &Latency| l.p50) as fn(&Latency) -> f64),
        ("p90", |l| l.p90),
        ("p99", |l| l.p99),
        ("max", |l| l.max),
    ] {
        rows.push(vec![name.into(), ms(&l.register_us, pick), ms(&l.login_us, pick), ms(&l.logout_us, pick)]);
    }
    let mut out = format!(
        "login: {} cycles in {:.1} s, {} at once: {:.1} cycles/s, {:.1} logins/s; {} registered, {} logged in, {} failed\n\
         client argon2id per derivation {:.1} ms (two per cycle); server CPU per login {} ms; server CPU {} s\n",
        l.cycles,
        l.window_s,
        l.concurrency,
        l.cycles_per_s,
        l.logins_per_s,
        l.registered,
        l.logged_in,
        l.failures.values().sum::<u64>(),
        l.client_argon2_ms,
        f(l.server_cpu_ms_per_login, 2),
        f(l.server.cpu_s, 2),
    );
    out.push_str(&table(&rows));
    failures_line(&mut out, "failed", &l.failures);
    out
}

fn hosts_table(h: &HostsResult) -> String {
    let rows = vec![
        vec!["hosts logged in".into(), format!("{} of {}", h.logged_in, h.hosts)],
        vec!["login time s".into(), format!("{:.1}", h.login_s)],
        vec!["held s".into(), format!("{:.1}", h.held_s)],
        vec!["keepalives answered at the end".into(), h.keepalive_answered.to_string()],
        vec!["keepalive RTT p50 µs".into(), f(h.keepalive_rtt_us.map(|l| l.p50), 1)],
        vec!["keepalive RTT p99 µs".into(), f(h.keepalive_rtt_us.map(|l| l.p99), 1)],
        vec!["node hosts_connected before".into(), f(h.node_hosts_before, 0)],
        vec!["node hosts_connected after".into(), f(h.node_hosts_after, 0)],
        vec![
            "node's count vs answered".into(),
            match (h.node_hosts_before, h.node_hosts_after) {
                (Some(b), Some(a)) => format!("{:+.0} vs {}", a - b, h.keepalive_answered),
                _ => NA.into(),
            },
        ],
        vec!["server RSS before MiB".into(), mib(h.server.rss_before)],
        vec!["server RSS after MiB".into(), mib(h.server.rss_after)],
        vec!["server memory per host KiB".into(), f(h.rss_per_host_bytes.map(|b| b / 1024.0), 1)],
        vec!["server CPU while idle % of a core".into(), f(h.idle_cpu_pct, 2)],
        vec!["resources from".into(), h.server.source.unwrap_or(NA).to_owned()],
    ];
    let mut out = format!("each host: {}\n", h.what);
    out.push_str(&table(&rows));
    failures_line(&mut out, "login failed", &h.failures);
    out
}

fn chat_table(c: &ChatResult) -> String {
    let us = |l: Option<Latency>, p: fn(&Latency) -> f64| f(l.as_ref().map(p), 0);
    let rows = vec![
        vec!["hosts (writers + partners)".into(), c.hosts.to_string()],
        vec!["target per writer /s".into(), format!("{:.1}", c.rate_per_writer)],
        vec!["online window s".into(), format!("{:.1}", c.window_s)],
        vec!["sent / received / lost".into(), format!("{} / {} / {}", c.sent, c.received, c.lost)],
        vec!["messages/s".into(), format!("{:.1}", c.messages_per_s)],
        vec!["delivery p50 µs".into(), us(c.latency_us, |x| x.p50)],
        vec!["delivery p99 µs".into(), us(c.latency_us, |x| x.p99)],
        vec!["delivery max µs".into(), us(c.latency_us, |x| x.max)],
        vec!["server CPU µs/message".into(), f(c.server_cpu_us_per_message, 1)],
        vec![
            "offline: stored / handed / missing".into(),
            format!("{} / {} / {}", c.offline_stored, c.offline_handed, c.offline_missing),
        ],
        vec!["offline: login p50 µs".into(), us(c.login_us, |x| x.p50)],
        vec!["offline: hand-over p50 µs".into(), us(c.handover_us, |x| x.p50)],
        vec!["offline: hand-over p99 µs".into(), us(c.handover_us, |x| x.p99)],
        vec!["resources from".into(), c.server.source.unwrap_or(NA).to_owned()],
    ];
    let mut out = table(&rows);
    failures_line(&mut out, "chat failed", &c.errors);
    out
}

fn lookup_table(l: &LookupResult) -> String {
    let rows = vec![
        vec!["hosts".into(), l.hosts.to_string()],
        vec!["target per host /s".into(), format!("{:.1}", l.rate_per_host)],
        vec!["window s".into(), format!("{:.1}", l.window_s)],
        vec!["lookups".into(), l.lookups.to_string()],
        vec!["lookups/s".into(), format!("{:.1}", l.lookups_per_s)],
        vec!["found".into(), l.found.to_string()],
        vec!["not found".into(), l.not_found.to_string()],
        vec!["errors".into(), l.errors.values().sum::<u64>().to_string()],
        vec!["latency p50 µs".into(), f(l.latency_us.map(|x| x.p50), 1)],
        vec!["latency p90 µs".into(), f(l.latency_us.map(|x| x.p90), 1)],
        vec!["latency p99 µs".into(), f(l.latency_us.map(|x| x.p99), 1)],
        vec!["latency p99.9 µs".into(), f(l.latency_us.map(|x| x.p999), 1)],
        vec!["latency max µs".into(), f(l.latency_us.map(|x| x.max), 1)],
        vec!["super nodes asked p50 / max".into(), format!("{} / {}", opt(l.asked_p50), opt(l.asked_max))],
        vec!["server CPU µs/lookup".into(), f(l.server_cpu_us_per_lookup, 1)],
        vec!["resources from".into(), l.server.source.unwrap_or(NA).to_owned()],
    ];
    let mut out = table(&rows);
    failures_line(&mut out, "lookup failed", &l.errors);
    out
}

fn limit_table(l: &[crate::limit::Summary]) -> String {
    let ceiling = l.iter().find(|s| s.label == "generator").and_then(|s| s.median);
    let mut rows = vec![vec![
        "loss-free pps".to_owned(),
        "hops".into(),
        "median".into(),
        "min".into(),
        "max".into(),
        "runs".into(),
        "÷ generator".into(),
        "".into(),
    ]];
    for s in l {
        let note = if s.at_max > 0 {
            format!("{} of {} at the highest rate tried", s.at_max, s.runs.len())
        } else if s.label == "generator" {
            "the generator's own ceiling (no server)".to_owned()
        } else if ceiling.zip(s.median).is_some_and(|(c, m)| m >= 0.9 * c) {
            "bounded by the generator (within 10% of its ceiling)".to_owned()
        } else {
            String::new()
        };
        rows.push(vec![
            s.label.clone(),
            s.hops.to_string(),
            f(s.median, 0),
            f(s.min, 0),
            f(s.max, 0),
            s.runs.len().to_string(),
            ratio_cell(s.median.zip(ceiling).filter(|(_, c)| *c > 0.0).map(|(m, c)| m / c)),
            note,
        ]);
    }
    let mut out = String::from("\n");
    out.push_str(&table(&rows));
    out
}

fn opt(v: Option<u64>) -> String {
    v.map(|v| v.to_string()).unwrap_or_else(|| NA.into())
}

/// The `lateness` table: each figure's median and range over the runs.
fn lateness_table(l: &crate::lateness::LatenessResult) -> String {
    let mut out = String::new();
    let counted = l.runs.len() - l.runs_left_out;
    let _ = writeln!(out, "\nlateness: {counted} run(s); load: {}", l.load);
    if l.runs_left_out > 0 {
        let _ = writeln!(
            out,
            "({} more run(s) left out: the wall clock, on which the host times its media clock, moved during the call)",
            l.runs_left_out
        );
    }
    let _ = writeln!(out, "{:<28} {:>10} {:>10} {:>10}", "figure", "median", "min", "max");
    for (name, s) in &l.summary {
        let _ = writeln!(out, "{name:<28} {:>10.2} {:>10.2} {:>10.2}", s.median, s.min, s.max);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_aligns_columns() {
        let t = table(&[vec!["".into(), "a".into(), "bbb".into()], vec!["row".into(), "10".into(), "2".into()]]);
        assert_eq!(t, "      a  bbb\nrow  10    2\n");
    }

    #[test]
    fn ratios_skip_unknowns_and_zero_divisors() {
        assert_eq!(ratio(Some(2.0), Some(1.0)), Some(2.0));
        assert_eq!(ratio(Some(2.0), Some(0.0)), None);
        assert_eq!(ratio(None, Some(1.0)), None);
    }
}
