//! Shared helpers for the integration tests: whole networks on loopback with fixed keys.
#![allow(dead_code)]

pub mod cpu;
pub mod link;
pub mod netns;
pub mod relay;
pub mod shape;
pub mod testbed;

use confab::config::Config;
use confab::crypto::credential::TrustedKeys;
use confab::crypto::{PrivateKey, PublicKey};
use confab::host::HostSettings;
use confab::host::connect::Timeouts;
use confab::host::home::Home;
use confab::host::ladder::LadderConfig;
use confab::network::{self, Network, UpOptions};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// The fixture folder.
pub fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/keys")
}

/// A fixture key by file stem (`login-0`, `supernode-1`, `host-2`, …).
pub fn key(stem: &str) -> PrivateKey {
    PrivateKey::read_pem_file(&fixtures().join(format!("{stem}.key.pem"))).unwrap()
}

/// Copies fixture keys into a data folder the way `confab up` names them (super nodes
/// `<prefix>1`, …), so the network starts without generating keys.
pub fn seed_data(data: &Path, supernodes: usize, prefix: &str) {
    std::fs::create_dir_all(data).unwrap();
    let copy = |from: &str, to: &str| {
        for ext in ["key.pem", "pub.pem"] {
            std::fs::copy(fixtures().join(format!("{from}.{ext}")), data.join(format!("{to}.{ext}"))).unwrap();
        }
    };
    copy("login-0", "login");
    // Distinct keys: a super node's key id is its identity in the index. Beyond the
    // fixtures, `confab up` generates keys.
    for (i, stem) in ["supernode-0", "supernode-1", "supernode-2"].iter().enumerate().take(supernodes) {
        copy(stem, &format!("{prefix}{}", i + 1));
    }
}

/// A name prefix no other network of this test process has: `n<k>sn`, so its super nodes
/// are `n<k>sn1`, `n<k>sn2`, … and every metric they export is labelled as theirs (tests in
/// one binary share one metrics recorder).
pub fn unique_prefix() -> String {
    static NEXT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(1);
    format!("n{}sn", NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed))
}

/// A running in-process network and the folder it lives in.
pub struct TestNet {
    /// The network.
    pub net: Network,
    /// Its data folder (kept until the test ends).
    pub dir: tempfile::TempDir,
}

/// Starts `supernodes` super nodes and a login server on 127.0.0.1, ephemeral ports.
pub async fn start(supernodes: usize, tweak: impl FnOnce(&mut Config)) -> TestNet {
    // `RUST_LOG=confab=debug cargo test …` shows what the network did.
    if let Ok(filter) = std::env::var("RUST_LOG") {
        let _ = tracing_subscriber::fmt().with_env_filter(filter).with_test_writer().try_init();
    }
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let prefix = unique_prefix();
    seed_data(&data, supernodes, &prefix);
    let mut config = Config::default();
    // Every test host is on 127.0.0.1: one source to the login server's limits.
    config.login_server.throttle = confab::login::guard::ThrottlePolicy::one_source_load();
    config.supernode.handshakes_per_source_max = 64;
    tweak(&mut config);
    let net = network::up(UpOptions {
        data,
        bind: "127.0.0.1".parse().unwrap(),
        base_port: 0,
        supernodes,
        metrics: Some("127.0.0.1:0".parse().unwrap()),
        key_bits: 2048,
        config,
        name_prefix: prefix,
    })
    .await
    .unwrap();
    TestNet { net, dir }
}

impl TestNet {
    /// Host settings for this network: its bootstrap nodes, no 443/80, short steps.
    pub fn settings(&self) -> HostSettings {
        let login_pub = PublicKey::read_pem_file(&self.net.info.data.join("login.pub.pem")).unwrap();
        HostSettings {
            login_servers: vec![self.net.info.login_server],
            trusted: TrustedKeys::new(vec![login_pub]),
            ladder: LadderConfig {
                bootstrap: self.net.info.supernodes.iter().map(|n| n.udp).collect(),
                fallback_ports: vec![],
                ..LadderConfig::default()
            },
            timeouts: Timeouts { step: Duration::from_millis(500), budget: Duration::from_secs(20) },
            login_timeout: Duration::from_secs(10),
            presence_refresh: Duration::from_secs(300),
            local_candidates: confab::config::LocalCandidates::Never,
        }
    }

    /// A fresh host home with a fixture key (no key generation in tests).
    pub fn home(&self, name: &str) -> Home {
        let dir = self.dir.path().join("homes").join(name);
        let home = Home::open(&dir).unwrap();
        let k = ["host-0", "host-1", "host-2"][name.len() % 3];
        std::fs::copy(fixtures().join(format!("{k}.key.pem")), dir.join("host.key.pem")).unwrap();
        home
    }

    /// The name of super node `i` (0-based) of this network.
    pub fn node(&self, i: usize) -> String {
        self.net.info.supernodes[i].name.clone()
    }

    /// Sum of the samples of `name` with all of `labels` that belong to this network: a
    /// `node` label naming one of its super nodes, or an `addr` label naming one of its TCP
    /// listeners (the login server's, the super nodes'; TCP only, since a UDP port of
    /// another network may share a TCP listener's number). The recorder is the test
    /// process's, fed by every test of the binary; a matching sample that names no node or
    /// listener fails the test, so no assertion can pass on another test's traffic. (A TCP
    /// port a stopped network left behind could come back to a later one; ephemeral ports
    /// are drawn from ~28,000, so within one binary's few dozen networks that is unlikely.)
    pub fn metric(&self, exposition: &str, name: &str, labels: &[&str]) -> f64 {
        let info = &self.net.info;
        let mut ours: Vec<String> = info.supernodes.iter().map(|n| format!("node=\"{}\"", n.name)).collect();
        ours.push(format!("addr=\"{}\"", info.login_server));
        for n in &info.supernodes {
            ours.extend(n.tcp.iter().map(|a| format!("addr=\"{a}\"")));
        }
        samples(exposition, name, labels)
            .filter(|(line, _)| {
                assert!(
                    line.contains("node=\"") || line.contains("addr=\""),
                    "{line}: no node or addr label, so it cannot be told apart from other tests' networks"
                );
                ours.iter().any(|o| line.contains(o.as_str()))
            })
            .map(|(_, v)| v)
            .sum()
    }

    /// The metrics exposition.
    pub async fn metrics(&self) -> String {
        let url = self.net.info.metrics.clone().unwrap();
        let addr = url.trim_start_matches("http://").trim_end_matches("/metrics").to_owned();
        http_get(&addr, "/metrics").await
    }
}

/// A minimal HTTP GET, returning the body.
pub async fn http_get(addr: &str, path: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(format!("GET {path} HTTP/1.1\r\nhost: {addr}\r\n\r\n").as_bytes()).await.unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).await.unwrap();
    out.split_once("\r\n\r\n").map(|(_, b)| b.to_owned()).unwrap_or_default()
}

/// Sum of every sample of `name` whose labels contain all of `labels` (`k="v"` strings),
/// whichever network fed it: for an exposition of a process of its own (a `confab`
/// binary); in-process networks use [`TestNet::metric`].
pub fn metric_sum(exposition: &str, name: &str, labels: &[&str]) -> f64 {
    samples(exposition, name, labels).map(|(_, v)| v).sum()
}

/// The sample lines of `name` with all of `labels`, and their values.
fn samples<'a>(exposition: &'a str, name: &'a str, labels: &'a [&'a str]) -> impl Iterator<Item = (&'a str, f64)> {
    exposition
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter(move |l| l.starts_with(name) && l[name.len()..].starts_with(['{', ' ']))
        .filter(move |l| labels.iter().all(|kv| l.contains(kv)))
        .filter_map(|l| Some((l, l.rsplit(' ').next()?.parse::<f64>().ok()?)))
}

/// Whether the tests are running in CI, where a missing prerequisite is a failure.
pub fn in_ci() -> bool {
    std::env::var("CI").map(|v| v == "true" || v == "1").unwrap_or(false)
}

/// Skips (returns true) when a prerequisite is missing outside CI; panics in CI.
pub fn missing(prerequisite: &str, ok: bool) -> bool {
    if ok {
        return false;
    }
    if in_ci() {
        panic!("CI=true and a prerequisite is missing: {prerequisite}");
    }
    eprintln!("SKIPPED: {prerequisite} is missing (set CI=true to make this a failure)");
    true
}

/// A minimal blocking HTTP GET, returning the body.
pub fn http_get_blocking(addr: &str, path: &str) -> String {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    s.write_all(format!("GET {path} HTTP/1.1\r\nhost: {addr}\r\n\r\n").as_bytes()).unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    out.split_once("\r\n\r\n").map(|(_, b)| b.to_owned()).unwrap_or_default()
}

/// Reads the first line a child prints, failing the test if none comes within `limit`
/// (a test must never hang, even when the program under test does).
pub fn first_line(child: &mut std::process::Child, limit: Duration) -> String {
    use std::io::BufRead;
    let stdout = child.stdout.take().expect("stdout is piped");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut line = String::new();
        let _ = std::io::BufReader::new(stdout).read_line(&mut line);
        let _ = tx.send(line);
    });
    match rx.recv_timeout(limit) {
        Ok(line) => line,
        Err(_) => {
            let _ = child.kill();
            panic!("no output within {limit:?}");
        }
    }
}

/// Runs a test's body, failing it (rather than hanging CI) if it takes over `limit`.
pub async fn bounded(limit: Duration, body: impl std::future::Future<Output = ()>) {
    if tokio::time::timeout(limit, body).await.is_err() {
        panic!("the test did not finish within {limit:?}");
    }
}

/// Waits (blocking, polling every 100 ms) until `cond` holds; fails the test naming
/// `what` after `limit`.
pub fn poll_until(what: &str, limit: Duration, mut cond: impl FnMut() -> bool) {
    let t = std::time::Instant::now();
    while !cond() {
        assert!(t.elapsed() < limit, "{what}: not within {limit:?}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Polls `cond` every 50 ms until it holds; panics naming `what` once `limit` has passed.
pub async fn wait_for(what: &str, limit: Duration, mut cond: impl AsyncFnMut() -> bool) {
    let deadline = std::time::Instant::now() + limit;
    while !cond().await {
        assert!(std::time::Instant::now() < deadline, "timed out after {limit:?} waiting: {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Waits (at most `within`) for a host event that `want` accepts, skipping others;
/// returns how long it took.
pub async fn expect_event(
    s: &mut confab::host::Session,
    within: Duration,
    what: &str,
    want: impl Fn(&confab::host::buddies::Event) -> bool,
) -> Duration {
    let started = std::time::Instant::now();
    loop {
        let left = within.checked_sub(started.elapsed()).unwrap_or_else(|| panic!("no {what} within {within:?}"));
        match s.next_event_within(left).await {
            Some(e) if want(&e) => return started.elapsed(),
            Some(_) => continue,
            None => panic!("no {what} within {within:?}"),
        }
    }
}

impl TestNet {
    /// Waits (at most 20 s) until every super node sees all `n` members.
    pub async fn converge(&self, n: usize) {
        let started = std::time::Instant::now();
        while self.net.nodes().iter().any(|node| node.members().len() < n) {
            assert!(started.elapsed() < Duration::from_secs(20), "cluster of {n} did not converge");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        // The index rebuilds its slot map a moment after the view changes: until every
        // node's map holds all n, a notice or a lookup may miss (a call's invite, say).
        loop {
            let m = self.metrics().await;
            let behind = self.net.info.supernodes.iter().any(|s| {
                let label = format!("node=\"{}\"", s.name);
                let members = self.metric(&m, "confab_index_view_members", &[&label]);
                // A node without an index exports none: nothing to wait for there.
                members > 0.0 && (members as usize) < n
            });
            if !behind {
                break;
            }
            assert!(started.elapsed() < Duration::from_secs(20), "the index of {n} did not converge");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}
