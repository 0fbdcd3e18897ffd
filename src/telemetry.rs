//! Logging (tracing) and metrics (Prometheus text format on `/metrics`).

use crate::config::LogFormat;
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use std::net::SocketAddr;
use std::sync::OnceLock;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// Starts logging to standard error; `level` is a tracing filter (RUST_LOG overrides it).
pub fn init_tracing(format: LogFormat, level: &str) {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env()
        .or_else(|_| EnvFilter::try_new(level))
        .unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    let _ = match format {
        LogFormat::Human => builder.try_init(),
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
    };
}

/// Latency buckets (seconds) shared by the handshake histograms: 100 µs to 10 s.
const LATENCY_BUCKETS: [f64; 14] =
    [0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 10.0];

static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();

/// Something that can describe itself for `/status`.
pub type StatusFn = Box<dyn Fn() -> serde_json::Value + Send + Sync>;

static STATUS: std::sync::Mutex<Vec<(String, StatusFn)>> = std::sync::Mutex::new(Vec::new());

/// Adds a section to the `/status` document (a super node registers itself under its name;
/// a later registration under the same name replaces the earlier one).
pub fn register_status(name: &str, f: StatusFn) {
    let mut s = STATUS.lock().unwrap_or_else(|p| p.into_inner());
    s.retain(|(n, _)| n != name);
    s.push((name.to_owned(), f));
}

/// The `/status` document: one section per registered component.
pub fn status() -> serde_json::Value {
    let s = STATUS.lock().unwrap_or_else(|p| p.into_inner());
    serde_json::Value::Object(s.iter().map(|(n, f)| (n.clone(), f())).collect())
}

/// Installs the process-wide metrics recorder (once) and returns its handle.
pub fn metrics_handle() -> PrometheusHandle {
    HANDLE
        .get_or_init(|| {
            let recorder = PrometheusBuilder::new()
                .set_buckets_for_metric(Matcher::Suffix("_duration_seconds".into()), &LATENCY_BUCKETS)
                .expect("non-empty buckets")
                .set_buckets_for_metric(
                    Matcher::Full("confab_relay_batch_size".into()),
                    &[1.0, 2.0, 4.0, 8.0, 16.0, 32.0],
                )
                .expect("non-empty buckets")
                .set_buckets_for_metric(
                    Matcher::Full("confab_relay_forward_latency_seconds".into()),
                    // A relay adds microseconds when idle, more under load; past 10 ms
                    // something is wrong.
                    &[1e-6, 2.5e-6, 5e-6, 1e-5, 2.5e-5, 5e-5, 1e-4, 2.5e-4, 5e-4, 1e-3, 2.5e-3, 1e-2],
                )
                .expect("non-empty buckets")
                .set_buckets_for_metric(
                    Matcher::Full("confab_index_lookup_asked".into()),
                    &[1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0],
                )
                .expect("non-empty buckets")
                .set_buckets_for_metric(
                    Matcher::Full("confab_index_replication_lag_seconds".into()),
                    // Direct writes land in milliseconds, anti-entropy repairs in seconds to
                    // minutes, hand-offs of old entries much later.
                    &[0.001, 0.005, 0.025, 0.1, 0.5, 1.0, 5.0, 15.0, 60.0, 300.0, 3600.0, 86_400.0],
                )
                .expect("non-empty buckets")
                .build_recorder();
            let handle = recorder.handle();
            // Another recorder may be installed by an embedding program; then ours only
            // renders what it sees, which is still a valid (if empty) exposition.
            if metrics::set_global_recorder(recorder).is_err() {
                tracing::warn!("a metrics recorder was already installed");
            }
            describe_process_metrics();
            handle
        })
        .clone()
}

/// A bound `/metrics` endpoint.
pub struct MetricsServer {
    listener: TcpListener,
    addr: SocketAddr,
}

impl MetricsServer {
    /// Binds the endpoint.
    pub async fn bind(addr: SocketAddr) -> std::io::Result<Self> {
        let listener = TcpListener::bind(addr)
            .await
            .map_err(|e| std::io::Error::new(e.kind(), format!("bind metrics {addr}: {e}")))?;
        let addr = listener.local_addr()?;
        Ok(Self { listener, addr })
    }

    /// Where it listens.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Serves `GET /metrics` until `shutdown` fires.
    pub async fn run(self, shutdown: CancellationToken) {
        let handle = metrics_handle();
        let upkeep = handle.clone();
        loop {
            let (mut stream, _) = tokio::select! {
                _ = shutdown.cancelled() => break,
                r = self.listener.accept() => match r {
                    Ok(x) => x,
                    Err(_) => {
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                },
            };
            let handle = handle.clone();
            tokio::spawn(async move {
                let _ = tokio::time::timeout(Duration::from_secs(10), serve_one(&mut stream, &handle)).await;
            });
            upkeep.run_upkeep();
        }
    }
}

/// Answers one HTTP/1.x request: the exposition for `GET /metrics`, 404 otherwise.
async fn serve_one(stream: &mut tokio::net::TcpStream, handle: &PrometheusHandle) -> std::io::Result<()> {
    let mut buf = vec![0u8; 8192];
    let mut n = 0;
    while !buf[..n].windows(4).any(|w| w == b"\r\n\r\n") {
        if n == buf.len() {
            return stream
                .write_all(
                    b"HTTP/1.1 431 Request Header Fields Too Large\r\ncontent-length: 0\r\nconnection: close\r\n\r\n",
                )
                .await;
        }
        let m = stream.read(&mut buf[n..]).await?;
        if m == 0 {
            return Ok(());
        }
        n += m;
    }
    let line = buf[..n].split(|b| *b == b'\n').next().unwrap_or_default();
    let line = String::from_utf8_lossy(line);
    let mut parts = line.split_whitespace();
    let (method, target) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    let path = target.split('?').next().unwrap_or("");
    let (status, ctype, body) = match (method, path) {
        ("GET", "/metrics") => {
            refresh_process_metrics();
            ("200 OK", "text/plain; version=0.0.4", handle.render())
        }
        ("GET", "/status") => ("200 OK", "application/json", status().to_string()),
        _ => ("404 Not Found", "text/plain", "try /metrics or /status\n".to_owned()),
    };
    let head = format!(
        "HTTP/1.1 {status}\r\ncontent-type: {ctype}\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes()).await?;
    stream.write_all(body.as_bytes()).await?;
    stream.shutdown().await
}

/// What the process uses, as of now (from /proc: Linux only).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ProcessStats {
    /// Resident set size.
    pub resident_memory_bytes: f64,
    /// User plus system CPU time.
    pub cpu_seconds: f64,
    /// Open file descriptors (sockets included).
    pub open_fds: f64,
    /// When the process started, in seconds since the Unix epoch.
    pub start_time_seconds: f64,
}

fn describe_process_metrics() {
    use metrics::{Unit, describe_gauge};
    describe_gauge!("confab_process_resident_memory_bytes", Unit::Bytes, "Resident memory of this process");
    // A gauge, not a counter: the metrics crate's counters are whole numbers, and whole
    // CPU seconds would make rate() a staircase.
    describe_gauge!("confab_process_cpu_seconds_total", Unit::Seconds, "User and system CPU time of this process");
    describe_gauge!("confab_process_open_fds", "Open file descriptors of this process (sockets included)");
    describe_gauge!(
        "confab_process_start_time_seconds",
        Unit::Seconds,
        "Start time of this process since the Unix epoch"
    );
}

/// Sets the process gauges; called on every scrape so they are as fresh as the scrape.
fn refresh_process_metrics() {
    let Some(s) = process_stats() else { return };
    metrics::gauge!("confab_process_resident_memory_bytes").set(s.resident_memory_bytes);
    metrics::gauge!("confab_process_cpu_seconds_total").set(s.cpu_seconds);
    metrics::gauge!("confab_process_open_fds").set(s.open_fds);
    metrics::gauge!("confab_process_start_time_seconds").set(s.start_time_seconds);
}

/// A `getconf` value (callers keep it): there is no libc binding here to ask sysconf.
fn getconf(name: &str, fallback: f64) -> f64 {
    std::process::Command::new("getconf")
        .arg(name)
        .output()
        .ok()
        .filter(|o| o.status.success())
        .and_then(|o| String::from_utf8_lossy(&o.stdout).trim().parse::<f64>().ok())
        .filter(|v| *v > 0.0)
        .unwrap_or(fallback)
}

/// Reads the process's memory, CPU time, descriptors and start time from /proc.
pub fn process_stats() -> Option<ProcessStats> {
    static PAGE_SIZE: OnceLock<f64> = OnceLock::new();
    static CLK_TCK: OnceLock<f64> = OnceLock::new();
    static BOOT_TIME: OnceLock<Option<f64>> = OnceLock::new();
    let page = *PAGE_SIZE.get_or_init(|| getconf("PAGESIZE", 4096.0));
    let ticks = *CLK_TCK.get_or_init(|| getconf("CLK_TCK", 100.0));
    let boot = (*BOOT_TIME.get_or_init(|| {
        let s = std::fs::read_to_string("/proc/stat").ok()?;
        s.lines().find_map(|l| l.strip_prefix("btime "))?.trim().parse().ok()
    }))?;
    let statm = std::fs::read_to_string("/proc/self/statm").ok()?;
    let resident_pages: f64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // The command name (field 2) is in parentheses and may hold spaces: count from after it.
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    let field = |n: usize| fields.get(n - 3)?.parse::<f64>().ok();
    let (utime, stime, started) = (field(14)?, field(15)?, field(22)?);
    let open_fds = std::fs::read_dir("/proc/self/fd").ok()?.count() as f64;
    Some(ProcessStats {
        resident_memory_bytes: resident_pages * page,
        cpu_seconds: (utime + stime) / ticks,
        open_fds,
        start_time_seconds: boot + started / ticks,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn process_stats_are_read_from_proc() {
        // A fresh test process may not have used one clock tick yet: spend some.
        let started = std::time::Instant::now();
        let mut x = 0u64;
        let s = loop {
            for i in 0..1_000_000u64 {
                x = std::hint::black_box(x.wrapping_mul(31).wrapping_add(i));
            }
            let s = process_stats().expect("/proc is readable");
            if s.cpu_seconds > 0.0 || started.elapsed() > Duration::from_secs(5) {
                break s;
            }
        };
        assert!(s.resident_memory_bytes > 1_000_000.0, "{s:?}");
        assert!(s.cpu_seconds > 0.0, "{s:?}");
        assert!(s.open_fds >= 3.0, "{s:?}");
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs_f64();
        assert!(s.start_time_seconds > now - 3600.0 && s.start_time_seconds <= now + 1.0, "{s:?}");
    }

    #[tokio::test]
    async fn a_scrape_exposes_the_process_metrics() {
        let server = MetricsServer::bind("127.0.0.1:0".parse().unwrap()).await.unwrap();
        let addr = server.addr();
        let stop = CancellationToken::new();
        tokio::spawn(server.run(stop.clone()));
        let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
        s.write_all(b"GET /metrics HTTP/1.1\r\nhost: x\r\n\r\n").await.unwrap();
        let mut body = String::new();
        s.read_to_string(&mut body).await.unwrap();
        stop.cancel();
        for name in [
            "confab_process_resident_memory_bytes",
            "confab_process_cpu_seconds_total",
            "confab_process_open_fds",
            "confab_process_start_time_seconds",
        ] {
            let value = body
                .lines()
                .find_map(|l| l.strip_prefix(name)?.strip_prefix(' '))
                .and_then(|v| v.parse::<f64>().ok())
                .unwrap_or_else(|| panic!("{name} missing:\n{body}"));
            assert!(value >= 0.0, "{name} {value}");
        }
    }
}
