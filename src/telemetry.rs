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
        ("GET", "/metrics") => ("200 OK", "text/plain; version=0.0.4", handle.render()),
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
