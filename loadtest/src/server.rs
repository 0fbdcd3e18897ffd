//! What the server under test spent: CPU and memory, and the relay's drop counters, read
//! from its Prometheus endpoint, from `/proc` for a process id, or from a thread's CPU
//! clock for the harness's own raw forwarder.

use anyhow::Context;
use serde::Serialize;
use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

/// The node's CPU time, from its own metrics endpoint.
pub const CPU_METRIC: &str = "confab_process_cpu_seconds_total";
/// The node's resident memory, from its own metrics endpoint.
pub const RSS_METRIC: &str = "confab_process_resident_memory_bytes";
/// The relay's drops, labelled by `reason`.
pub const DROPS_METRIC: &str = "confab_relay_drops_total";
/// The relay's datagrams, labelled by `outcome` (`forwarded`, …).
pub const PACKETS_METRIC: &str = "confab_relay_packets_total";
/// Hosts with an established super-node session.
pub const HOSTS_METRIC: &str = "confab_supernode_hosts_connected";

/// Where to read the server's resources from.
#[derive(Debug, Clone)]
pub enum Probe {
    /// Nothing known: every figure is n/a.
    None,
    /// A Prometheus endpoint (`host:port`, path `/metrics`), and a process to read from
    /// `/proc` for what the endpoint does not export.
    Metrics { addr: Option<SocketAddr>, pid: Option<u32> },
    /// A process of this machine, from `/proc`.
    Pid(u32),
    /// A thread of this process, by its CPU clock (the raw forwarder).
    Thread(libc::clockid_t),
}

/// One reading.
#[derive(Debug, Clone, Default)]
pub struct Sample {
    /// CPU seconds (user + system) so far.
    pub cpu_s: Option<f64>,
    /// Resident memory, bytes.
    pub rss: Option<u64>,
    /// `confab_relay_drops_total` by reason, summed over nodes and workers.
    pub drops: BTreeMap<String, f64>,
    /// `confab_relay_packets_total{outcome="forwarded"}`.
    pub forwarded: Option<f64>,
    /// `confab_supernode_hosts_connected`, summed over nodes.
    pub hosts: Option<f64>,
    /// Where the CPU and memory figures came from.
    pub source: Option<&'static str>,
    /// Whether the metrics endpoint was read (so absent counters are zeros, not unknowns).
    pub scraped: bool,
}

/// What the server spent between two readings.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Spent {
    /// CPU seconds spent.
    pub cpu_s: Option<f64>,
    /// Resident memory before, bytes.
    pub rss_before: Option<u64>,
    /// Resident memory after, bytes.
    pub rss_after: Option<u64>,
    /// Where the figures came from: `metrics`, `proc`, `thread`, or null.
    pub source: Option<&'static str>,
}

impl Probe {
    /// Reads now. A probe that fails gives n/a figures and a warning, never an error:
    /// the traffic figures stand without it.
    pub fn sample(&self) -> Sample {
        match self {
            Probe::None => Sample::default(),
            Probe::Pid(pid) => from_proc(*pid),
            Probe::Thread(clock) => Sample { cpu_s: thread_cpu(*clock), source: Some("thread"), ..Default::default() },
            Probe::Metrics { addr, pid } => {
                let mut s = match addr.map(scrape) {
                    Some(Ok(text)) => from_exposition(&text),
                    Some(Err(e)) => {
                        eprintln!("warning: metrics not read: {e:#}");
                        Sample::default()
                    }
                    None => Sample::default(),
                };
                if let Some(pid) = pid
                    && (s.cpu_s.is_none() || s.rss.is_none())
                {
                    let p = from_proc(*pid);
                    s.cpu_s = s.cpu_s.or(p.cpu_s);
                    s.rss = s.rss.or(p.rss);
                    s.source = Some(if s.source.is_some() { "metrics+proc" } else { "proc" });
                }
                s
            }
        }
    }
}

/// What changed from `before` to `after`.
pub fn spent(before: &Sample, after: &Sample) -> Spent {
    Spent {
        cpu_s: before.cpu_s.zip(after.cpu_s).map(|(b, a)| (a - b).max(0.0)),
        rss_before: before.rss,
        rss_after: after.rss,
        source: after.source,
    }
}

/// Drops by reason between two readings (reasons that did not grow are left out), or
/// None when the metrics endpoint was not read both times.
pub fn drops_between(before: &Sample, after: &Sample) -> Option<BTreeMap<String, u64>> {
    if !(before.scraped && after.scraped) {
        return None;
    }
    Some(
        after
            .drops
            .iter()
            .map(|(r, a)| (r.clone(), (a - before.drops.get(r).copied().unwrap_or(0.0)).max(0.0).round() as u64))
            .filter(|(_, n)| *n > 0)
            .collect(),
    )
}

/// GET /metrics from `addr`, the body.
pub fn scrape(addr: SocketAddr) -> anyhow::Result<String> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(3)).with_context(|| format!("metrics {addr}"))?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    write!(s, "GET /metrics HTTP/1.1\r\nhost: {addr}\r\nconnection: close\r\n\r\n")?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).with_context(|| format!("metrics {addr}"))?;
    let text = String::from_utf8_lossy(&raw);
    let (head, body) = text.split_once("\r\n\r\n").context("metrics: not an HTTP answer")?;
    anyhow::ensure!(head.starts_with("HTTP/1.1 200") || head.starts_with("HTTP/1.0 200"), "metrics {addr}: {head}");
    Ok(body.to_owned())
}

/// One sample of a Prometheus exposition.
#[derive(Debug, Clone, PartialEq)]
pub struct Line<'a> {
    /// The metric's name.
    pub name: &'a str,
    /// Its labels, as written.
    pub labels: Vec<(&'a str, &'a str)>,
    /// The value.
    pub value: f64,
}

impl Line<'_> {
    /// The value of label `k`.
    pub fn label(&self, k: &str) -> Option<&str> {
        self.labels.iter().find(|(l, _)| *l == k).map(|(_, v)| *v)
    }
}

/// One sample line of a Prometheus exposition (None for comments and blank lines).
pub fn parse_line(line: &str) -> Option<Line<'_>> {
    let line = line.trim();
    if line.is_empty() || line.starts_with('#') {
        return None;
    }
    let (name, labels, rest) = match line.find('{') {
        Some(open) => {
            let close = line.rfind('}')?;
            (&line[..open], &line[open + 1..close], &line[close + 1..])
        }
        None => {
            let sp = line.find(' ')?;
            (&line[..sp], "", &line[sp..])
        }
    };
    let value = rest.split_whitespace().next()?.parse().ok()?;
    let labels = labels
        .split(',')
        .filter_map(|kv| {
            let (k, v) = kv.split_once('=')?;
            Some((k.trim(), v.trim().trim_matches('"')))
        })
        .collect();
    Some(Line { name, labels, value })
}

/// The figures this harness reads, from an exposition.
pub fn from_exposition(text: &str) -> Sample {
    let mut s = Sample { scraped: true, ..Default::default() };
    for l in text.lines().filter_map(parse_line) {
        let v = l.value;
        let label = |k: &str| l.label(k);
        match l.name {
            CPU_METRIC => *s.cpu_s.get_or_insert(0.0) += v,
            RSS_METRIC => *s.rss.get_or_insert(0) += v as u64,
            DROPS_METRIC => *s.drops.entry(label("reason").unwrap_or("?").to_owned()).or_default() += v,
            PACKETS_METRIC if label("outcome") == Some("forwarded") => *s.forwarded.get_or_insert(0.0) += v,
            HOSTS_METRIC => *s.hosts.get_or_insert(0.0) += v,
            _ => {}
        }
    }
    if s.cpu_s.is_some() || s.rss.is_some() {
        s.source = Some("metrics");
    }
    s
}

/// CPU (user + system) and resident memory of process `pid`.
pub fn from_proc(pid: u32) -> Sample {
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    // The command name (field 2) may hold spaces: count fields after its closing ')'.
    let cpu_s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok().and_then(|stat| {
        let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
        let utime: f64 = fields.get(11)?.parse().ok()?;
        let stime: f64 = fields.get(12)?.parse().ok()?;
        Some((utime + stime) / ticks)
    });
    let rss = std::fs::read_to_string(format!("/proc/{pid}/status")).ok().and_then(|status| {
        let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
        let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
        Some(kib * 1024)
    });
    Sample { cpu_s, rss, source: Some("proc"), ..Default::default() }
}

/// The CPU clock of a thread of this process, as a `Probe::Thread` needs it.
pub fn thread_clock<T>(handle: &std::thread::JoinHandle<T>) -> Option<libc::clockid_t> {
    use std::os::unix::thread::JoinHandleExt;
    let mut clock: libc::clockid_t = 0;
    // SAFETY: the pthread_t comes from a live JoinHandle, and `clock` is a valid out pointer.
    let rc = unsafe { libc::pthread_getcpuclockid(handle.as_pthread_t(), &mut clock) };
    (rc == 0).then_some(clock)
}

fn thread_cpu(clock: libc::clockid_t) -> Option<f64> {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: `ts` is a valid out pointer; a stale clock id only makes the call fail.
    let rc = unsafe { libc::clock_gettime(clock, &mut ts) };
    (rc == 0).then(|| ts.tv_sec as f64 + ts.tv_nsec as f64 / 1e9)
}

/// Lets this process open as many sockets as the hard limit allows (hundreds of legs
/// and hosts each hold a few).
pub fn raise_fd_limit() {
    let mut rl = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: plain calls with a valid pointer.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut rl) == 0 && rl.rlim_cur < rl.rlim_max {
            rl.rlim_cur = rl.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &rl);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exposition_figures() {
        let text = "# HELP confab_relay_drops_total Relay datagrams dropped, by reason\n\
            # TYPE confab_relay_drops_total counter\n\
            confab_relay_drops_total{node=\"sn1\",worker=\"0\",reason=\"peer_unknown\"} 3\n\
            confab_relay_drops_total{node=\"sn2\",worker=\"0\",reason=\"peer_unknown\"} 2\n\
            confab_relay_drops_total{node=\"sn1\",worker=\"0\",reason=\"rate_cap\"} 7\n\
            confab_relay_packets_total{node=\"sn1\",worker=\"0\",outcome=\"forwarded\"} 100\n\
            confab_relay_packets_total{node=\"sn1\",worker=\"0\",outcome=\"dropped\"} 12\n\
            confab_process_cpu_seconds_total 1.5\n\
            confab_process_resident_memory_bytes 1048576\n";
        let s = from_exposition(text);
        assert_eq!(s.cpu_s, Some(1.5));
        assert_eq!(s.rss, Some(1 << 20));
        assert_eq!(s.forwarded, Some(100.0));
        assert_eq!(s.drops.get("peer_unknown"), Some(&5.0));
        let before = from_exposition("confab_relay_drops_total{reason=\"peer_unknown\"} 4\n");
        let d = drops_between(&before, &s).unwrap();
        assert_eq!(d.into_iter().collect::<Vec<_>>(), vec![("peer_unknown".into(), 1), ("rate_cap".into(), 7)]);
        assert_eq!(from_exposition("up 1\n").cpu_s, None, "absent metrics are n/a");
        assert_eq!(drops_between(&Sample::default(), &s), None, "unread metrics are n/a");
    }

    #[test]
    fn this_process_from_proc() {
        let s = from_proc(std::process::id());
        assert!(s.cpu_s.is_some() && s.rss.unwrap() > 0);
    }
}
