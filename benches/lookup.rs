//! Global Index lookups: latency (p50/p99) and super nodes asked per lookup, for 20 and
//! 100 super nodes in one process: healthy; from the crash of 30% of them until every
//! survivor's view is exact (the detection window); and after.
//!
//! ```text
//! cargo bench --bench lookup            # both sizes
//! cargo bench --bench lookup -- 20      # one size
//! ```
//!
//! Each run starts a whole network on loopback (`confab::network::up`), logs 100 hosts in
//! (each publishes its entry), then one host looks up users in turn. Every super node runs
//! on the same thread here, so absolute latencies include queueing behind the others:
//! compare the healthy and degraded figures of one run, and the super nodes asked.

use confab::config::Config;
use confab::crypto::PublicKey;
use confab::crypto::credential::TrustedKeys;
use confab::host::HostSettings;
use confab::host::connect::Timeouts;
use confab::host::home::Home;
use confab::host::ladder::LadderConfig;
use confab::network::{self, UpOptions};
use std::time::{Duration, Instant};

const HOSTS: usize = 100;
const LOOKUPS: usize = 500;
const PW: &str = "correct horse battery";

/// What a run of lookups saw (latency over every lookup answered, found or not).
#[derive(Default)]
struct Tally {
    latency_ms: Vec<f64>,
    asked: Vec<f64>,
    found: usize,
    missed: usize,
    failed: usize,
    took: Duration,
}

impl Tally {
    fn made(&self) -> usize {
        self.found + self.missed + self.failed
    }
}

/// Up to `n` lookups of users in turn, from `askers` in turn; with `until`, also stops
/// once its condition holds or its deadline passes (checked before each lookup).
async fn lookups(
    sessions: &mut [confab::host::Session],
    askers: &[usize],
    n: usize,
    until: Option<(&dyn Fn() -> bool, Instant)>,
) -> Tally {
    let mut t = Tally::default();
    let started = Instant::now();
    for k in 0..n {
        if let Some((done, deadline)) = until
            && (done() || Instant::now() >= deadline)
        {
            break;
        }
        let whom = format!("user{:03}", (k * 7) % HOSTS);
        let began = Instant::now();
        match sessions[askers[k % askers.len()]].find(&whom).await {
            Ok(Some(f)) => {
                t.latency_ms.push(began.elapsed().as_secs_f64() * 1000.0);
                t.asked.push(f64::from(f.asked));
                t.found += 1;
            }
            Ok(None) => {
                t.latency_ms.push(began.elapsed().as_secs_f64() * 1000.0);
                t.missed += 1;
            }
            Err(_) => t.failed += 1,
        }
    }
    t.took = started.elapsed();
    t
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

async fn run(supernodes: usize) {
    let dir = tempfile::tempdir().unwrap();
    let mut config = Config::default();
    config.supernode.probe_period_ms = 1000;
    // Every host of the bench is on 127.0.0.1: one source to the login server's limits.
    config.login_server.throttle = confab::login::guard::ThrottlePolicy::one_source_load();
    config.supernode.handshakes_per_source_max = 64;
    let net = network::up(UpOptions {
        data: dir.path().join("data"),
        bind: "127.0.0.1".parse().unwrap(),
        base_port: 0,
        supernodes,
        metrics: None,
        key_bits: 2048,
        config,
        name_prefix: "sn".into(),
    })
    .await
    .unwrap();
    let started = Instant::now();
    while net.nodes().iter().any(|n| n.members().len() < supernodes) {
        let sizes: Vec<usize> = net.nodes().iter().map(|n| n.members().len()).collect();
        assert!(started.elapsed() < Duration::from_secs(120), "cluster of {supernodes} did not converge: {sizes:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    eprintln!("{supernodes} super nodes converged in {:?}", started.elapsed());
    let login_pub = PublicKey::read_pem_file(&net.info.data.join("login.pub.pem")).unwrap();
    let settings = |i: usize| {
        let mut bootstrap: Vec<_> = net.info.supernodes.iter().map(|n| n.udp).collect();
        bootstrap.rotate_left(i % supernodes);
        HostSettings {
            login_servers: vec![net.info.login_server],
            trusted: TrustedKeys::new(vec![login_pub.clone()]),
            ladder: LadderConfig { bootstrap, fallback_ports: vec![], ..LadderConfig::default() },
            timeouts: Timeouts { step: Duration::from_millis(500), budget: Duration::from_secs(30) },
            login_timeout: Duration::from_secs(10),
            presence_refresh: Duration::from_secs(300),
            local_candidates: confab::config::LocalCandidates::Never,
        }
    };
    let mut sessions = Vec::new();
    for i in 0..HOSTS {
        let user = format!("user{i:03}");
        let home = Home::open(&dir.path().join("homes").join(&user)).unwrap();
        confab::host::register(&settings(i), &home, &user, PW).await.unwrap();
        sessions.push(confab::host::login(&settings(i), &home, &user, PW).await.unwrap());
    }
    // Hosts may make 50 lookups a second each: the lookups rotate over the askers, all on
    // super nodes that survive the crash below.
    let dead: Vec<usize> = (0..supernodes).filter(|i| i % 10 == 3 || i % 10 == 6 || i % 10 == 9).collect();
    let dead_names: Vec<String> = dead.iter().map(|i| format!("sn{}", i + 1)).collect();
    let askers: Vec<usize> = (0..HOSTS).filter(|i| !dead_names.contains(&sessions[*i].report.supernode)).collect();
    let report = |phase: &str, t: &Tally| {
        let (mut latency_ms, mut asked) = (t.latency_ms.clone(), t.asked.clone());
        latency_ms.sort_by(f64::total_cmp);
        asked.sort_by(f64::total_cmp);
        let p = |v: &[f64], q: f64| if v.is_empty() { f64::NAN } else { percentile(v, q) };
        println!(
            "{supernodes:>3} super nodes, {phase:<24} {} lookups in {:.1} s: latency p50 {:.2} ms p99 {:.2} ms max {:.2} ms; super nodes asked p50 {} p99 {} max {}; found {}; not found {}; failed {}",
            t.made(),
            t.took.as_secs_f64(),
            p(&latency_ms, 0.5),
            p(&latency_ms, 0.99),
            latency_ms.last().copied().unwrap_or(f64::NAN),
            p(&asked, 0.5),
            p(&asked, 0.99),
            asked.last().copied().unwrap_or(f64::NAN),
            t.found,
            t.missed,
            t.failed
        );
    };
    let t = lookups(&mut sessions, &askers, LOOKUPS, None).await;
    report("healthy", &t);

    // The crash, with no goodbye. From then until every survivor's view is exact (or 60 s,
    // reported: with many nodes on one thread, SWIM lags), lookups go on: what users see
    // while the failure is being detected.
    for i in &dead {
        net.kill_node(*i);
    }
    let alive = supernodes - dead.len();
    let views = || -> Vec<usize> {
        net.nodes().iter().enumerate().filter(|(i, _)| !dead.contains(i)).map(|(_, n)| n.members().len()).collect()
    };
    let exact = || views().iter().all(|v| *v == alive);
    let crashed = Instant::now();
    // Bounded by the 60 s deadline (and a count no 60 s of lookups reaches).
    let t = lookups(&mut sessions, &askers, 1_000_000, Some((&exact, crashed + Duration::from_secs(60)))).await;
    let v = views();
    let why = if exact() { "views exact" } else { "60 s deadline, views not exact" };
    eprintln!(
        "{} crashed; the detecting phase ended after {:?} ({why}): survivors' views hold {}..={} members (exact: {alive})",
        dead.len(),
        crashed.elapsed(),
        v.iter().min().unwrap(),
        v.iter().max().unwrap()
    );
    report("30% crashed, detecting", &t);
    while !exact() && crashed.elapsed() < Duration::from_secs(60) {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let t = lookups(&mut sessions, &askers, LOOKUPS, None).await;
    report("30% crashed, views exact", &t);
    drop(sessions);
    net.stop().await;
}

fn main() {
    // `RUST_LOG=confab=info cargo bench --bench lookup` shows what the network did.
    if let Ok(filter) = std::env::var("RUST_LOG") {
        let _ = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).try_init();
    }
    let sizes: Vec<usize> = std::env::args().skip(1).filter_map(|a| a.parse().ok()).collect();
    let sizes = if sizes.is_empty() { vec![20, 100] } else { sizes };
    for n in sizes {
        actix_rt::System::new().block_on(run(n));
    }
}
