//! coturn, the standard TURN server, started by the harness on loopback for the `turn`
//! scenario and stopped when the run ends.

use super::client::Credentials;
use super::stun::{self, Builder, Class, method};
use std::net::{SocketAddr, TcpListener, UdpSocket};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// How long coturn may take to answer its first Binding request.
const READY_WITHIN: Duration = Duration::from_secs(10);

/// A running `turnserver`, killed on drop.
pub struct Coturn {
    child: Child,
    /// Where it listens (UDP and TCP).
    pub addr: SocketAddr,
    /// Its log file.
    pub log: PathBuf,
    _dir: tempfile::TempDir,
}

/// A loopback port free for both UDP and TCP right now.
fn free_port() -> anyhow::Result<u16> {
    for _ in 0..32 {
        let udp = UdpSocket::bind("127.0.0.1:0")?;
        let port = udp.local_addr()?.port();
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return Ok(port);
        }
    }
    anyhow::bail!("no loopback port free for both UDP and TCP")
}

impl Coturn {
    /// Starts `bin` on 127.0.0.1 with one long-term user, `relay_threads` relay threads,
    /// its files (log, pid, user database) in a temporary folder under `work_dir`, and
    /// waits until it answers.
    pub fn start(
        bin: &str,
        work_dir: &std::path::Path,
        relay_threads: usize,
        creds: &Credentials,
    ) -> anyhow::Result<Self> {
        let dir = tempfile::Builder::new().prefix("coturn-").tempdir_in(work_dir)?;
        let port = free_port()?;
        let log = dir.path().join("turnserver.log");
        let path = |name: &str| dir.path().join(name).display().to_string();
        let mut cmd = Command::new(bin);
        cmd.arg("-n")
            .args(["--listening-ip", "127.0.0.1", "--relay-ip", "127.0.0.1"])
            .args(["--listening-port", &port.to_string()])
            .args(["--allow-loopback-peers", "--no-tls", "--no-dtls", "--no-cli"])
            .args(["--lt-cred-mech", "--user", &format!("{}:{}", creds.username, creds.password), "--realm", "confab"])
            .args(["--relay-threads", &relay_threads.max(1).to_string()])
            .args(["--log-file", &log.display().to_string(), "--simple-log", "--no-stdout-log"])
            .args(["--pidfile", &path("turnserver.pid"), "--db", &path("turndb")])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        let child = cmd.spawn().map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => anyhow::anyhow!(
                "{bin} not found: install coturn (Debian: apt install coturn) or pass --turn-server ADDR"
            ),
            _ => anyhow::anyhow!("starting {bin}: {e}"),
        })?;
        let mut me = Self { child, addr: SocketAddr::from(([127, 0, 0, 1], port)), log, _dir: dir };
        me.wait_ready()?;
        Ok(me)
    }

    fn wait_ready(&mut self) -> anyhow::Result<()> {
        let started = Instant::now();
        let mut buf = [0u8; 1500];
        while started.elapsed() < READY_WITHIN {
            if let Some(status) = self.child.try_wait()? {
                anyhow::bail!("turnserver exited ({status}) at start; its log:\n{}", self.log_tail());
            }
            // A fresh source port each time: coturn keeps state per client address, and
            // one that knocked while it was still starting may be ignored for good.
            let probe = UdpSocket::bind("127.0.0.1:0")?;
            probe.connect(self.addr)?;
            probe.set_read_timeout(Some(Duration::from_millis(100)))?;
            let req = Builder::new(method::BINDING, Class::Request, confab::crypto::random::bytes()).finish();
            // Refused until it listens: try again.
            let _ = probe.send(&req);
            if let Ok(n) = probe.recv(&mut buf)
                && stun::parse(&buf[..n]).is_ok_and(|m| m.tid[..] == req[8..20] && m.class == Class::Success)
            {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        anyhow::bail!(
            "turnserver did not answer on {} within {READY_WITHIN:?}; its log:\n{}",
            self.addr,
            self.log_tail()
        )
    }

    /// The end of the log, for error messages.
    pub fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(20)..].join("\n")
    }

    /// The process id (for its CPU and memory in `/proc`).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for Coturn {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Whether `bin` can be run (for tests that need coturn).
pub fn available(bin: &str) -> bool {
    Command::new(bin).arg("--help").stdout(Stdio::null()).stderr(Stdio::null()).status().is_ok()
}
