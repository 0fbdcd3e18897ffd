//! The simulator (`simulate`): determinism, membership convergence, the scenarios.

use confab_loadtest::sim::index::NotWired;
use confab_loadtest::sim::world::World;
use confab_loadtest::sim::{self, Config, Scenario};

fn small(supernodes: u32) -> Config {
    Config { supernodes, users: 2000, hours: 0.05, warmup_secs: 900, ..Config::default() }
}

/// Runs `w` second by second until `done` holds or `limit_ms` of virtual time passed;
/// returns the virtual ms it took.
fn until(w: &mut World<NotWired>, limit_ms: u64, done: impl Fn(&World<NotWired>) -> bool) -> Option<u64> {
    let t0 = w.q.now();
    while w.q.now() < t0 + limit_ms {
        if done(w) {
            return Some(w.q.now() - t0);
        }
        let next = w.q.now() + 1000;
        w.run_until(next, |_| {});
    }
    done(w).then(|| w.q.now() - t0)
}

/// The world once measuring began (the cluster formed).
fn formed(cfg: Config) -> World<NotWired> {
    let mut w = World::new(cfg, NotWired);
    let took = until(&mut w, 1_000_000, |w| w.stats.measuring);
    assert!(took.is_some(), "the warm-up ended");
    w
}

#[test]
fn same_seed_same_run() {
    let run = |seed| {
        let cfg = Config { seed, ..small(60) };
        sim::run(cfg, NotWired, true)
    };
    let (a, b, c) = (run(3), run(3), run(4));
    assert!(a.json["events"].as_u64().unwrap() > 10_000, "{}", a.json["events"]);
    assert!(a.json["membership"]["view_lag_join_ms"]["samples"].as_u64().is_some());
    assert_eq!(a.deterministic(), b.deterministic(), "one seed, one run");
    assert_ne!(a.deterministic(), c.deterministic(), "another seed, another run");
    assert_eq!(a.json["index"], "not wired");
    assert!(a.json["findability"].is_null());
}

#[test]
fn views_converge_after_the_cluster_forms() {
    let w = formed(small(200));
    assert!(w.stats.converged_at_start, "every view is the true membership");
    assert_eq!(w.live(), 200);
    // Joins spread by gossip and the periodic announcements: well within 15 virtual
    // minutes for 200 nodes joining over one.
    assert!(w.start <= 600_000, "formed after {} ms", w.start);
    let n = w.sns[0].view.len();
    assert_eq!(n, 200);
}

#[test]
fn after_crash30_survivors_drop_the_dead() {
    let cfg = Config { scenario: Scenario::Crash30, scenario_at_secs: Some(30), ..small(200) };
    let mut w = formed(cfg);
    let before = w.live();
    let strike = w.start + 30_000;
    w.run_until(strike, |_| {});
    assert!(w.live() <= before - 55, "30% crashed: {before} → {}", w.live());
    assert!(w.diverged() > 0, "nobody noticed at once");
    let took = until(&mut w, 60_000, |w| w.converged());
    eprintln!("crash30: every survivor dropped the dead after {took:?} ms (virtual)");
    assert!(took.is_some_and(|t| t <= 30_000), "converged after {took:?}");
}

#[test]
fn a_partition_heals() {
    let cfg = Config { scenario: Scenario::Partition, scenario_at_secs: Some(20), partition_secs: 60, ..small(100) };
    let mut w = formed(cfg);
    let heal = w.start + 20_000 + 60_000;
    w.run_until(heal - 1, |_| {});
    let split = w.diverged();
    assert!(split >= 90, "during the partition the sides declared each other down ({split} of 100 views differ)");
    w.run_until(heal, |_| {});
    let took = until(&mut w, 120_000, |w| w.converged());
    eprintln!("partition: views whole again {took:?} ms (virtual) after the heal");
    assert!(took.is_some_and(|t| t <= 60_000), "healed after {took:?}");
}

/// The sampled mode stands for the full one: at a size both can run, view lag and gossip
/// bytes per node agree. Heavy in debug: `cargo test --release -p confab-loadtest --test
/// sim -- --ignored`.
#[test]
#[ignore]
fn sampled_mode_is_representative() {
    let base = Config { supernodes: 400, users: 5000, hours: 0.5, ..Config::default() };
    let full = sim::run(Config { full_max: 400, ..base.clone() }, NotWired, true).json;
    let samp = sim::run(Config { full_max: 100, sample: 100, ..base }, NotWired, true).json;
    assert_eq!(
        (full["membership"]["mode"].as_str(), samp["membership"]["mode"].as_str()),
        (Some("full"), Some("sampled"))
    );
    for (key, tol) in [("view_lag_join_ms", 2.0), ("view_lag_leave_ms", 1.5)] {
        let (f, s) =
            (full["membership"][key]["p50"].as_f64().unwrap(), samp["membership"][key]["p50"].as_f64().unwrap());
        eprintln!("{key} p50: full {f}, sampled {s}");
        assert!(s / f < tol && f / s < tol, "{key}: full {f}, sampled {s}");
    }
    let (f, s) =
        (full["gossip_bytes_per_second_p50"].as_f64().unwrap(), samp["gossip_bytes_per_second_p50"].as_f64().unwrap());
    eprintln!("gossip bytes/s p50: full {f}, sampled {s}");
    assert!(s / f < 1.5 && f / s < 1.5, "gossip: full {f}, sampled {s}");
}

/// In sampled mode the partition reaches the super nodes through the sample's own foca:
/// their views split while it holds and are whole again soon after the heal.
#[test]
fn a_partition_heals_in_sampled_mode() {
    let cfg = Config {
        scenario: Scenario::Partition,
        scenario_at_secs: Some(20),
        partition_secs: 60,
        full_max: 60,
        sample: 60,
        ..small(300)
    };
    let mut w = formed(cfg);
    assert!(!w.full());
    let heal = w.start + 20_000 + 60_000;
    w.run_until(heal - 1, |_| {});
    let split = w.diverged();
    assert!(split >= 270, "during the partition the sides declared each other down ({split} of 300 views differ)");
    w.run_until(heal, |_| {});
    let took = until(&mut w, 300_000, |w| w.converged());
    eprintln!("sampled partition: views whole again {took:?} ms (virtual) after the heal");
    assert!(took.is_some_and(|t| t <= 90_000), "healed after {took:?}");
}

/// The Global Index wired in: every user seen is found by the index itself, in the first
/// step, and the index's own choices replay from the seed too.
#[test]
fn the_index_finds_users_seen_and_replays_from_its_seed() {
    use confab_loadtest::sim::global::Global;
    let run = || {
        let cfg = Config { users: 600, hours: 0.1, ..small(40) };
        let index = confab::index::IndexConfig { slots: cfg.slots, replicas: cfg.replicas, ..Default::default() };
        sim::run(cfg, Global::new(index).expect("an index"), true)
    };
    let (a, b) = (run(), run());
    assert_eq!(a.json["index"], "wired");
    let answered = a.json["lookups"]["existing_answered"].as_u64().unwrap();
    assert!(answered >= 20, "{answered} lookups answered");
    assert_eq!(a.json["findability"].as_f64(), Some(1.0));
    assert_eq!(a.json["found_by_directory"].as_f64(), Some(0.0), "the index had everyone");
    assert!(a.json["lookup_messages_p99"].as_f64().unwrap() <= 10.0, "{}", a.json["lookup_messages_p99"]);
    assert!(a.json["index_detail"]["sent_by_kind"]["store"]["bytes"].as_u64().unwrap() > 0);
    assert_eq!(a.deterministic(), b.deterministic(), "one seed, one run");
}

#[test]
fn a_users_devices_are_sessions_of_one_key() {
    use confab_loadtest::sim::global::Global;
    use confab_loadtest::sim::users;
    let run = |share: f64| {
        let mut cfg = Config { users: 400, hours: 0.05, ..small(30) };
        cfg.user_model = users::Model { second_device_share: share, ..cfg.user_model };
        let index = confab::index::IndexConfig { slots: cfg.slots, replicas: cfg.replicas, ..Default::default() };
        sim::run(cfg, Global::new(index).expect("an index"), true).json
    };
    for (share, devices) in [(0.0, 400), (0.5, 600)] {
        let j = run(share);
        assert_eq!(j["users"]["devices"].as_u64(), Some(devices));
        assert_eq!(j["findability"].as_f64(), Some(1.0), "share {share}");
        let d = &j["index_detail"];
        let (keys, sessions) = (d["keys_held_at_end"].as_u64().unwrap(), d["sessions_held_at_end"].as_u64().unwrap());
        if share == 0.0 {
            assert_eq!(sessions, keys, "one device each: one session a key");
        } else {
            // The user's key and its postings hold both devices' entries on every replica
            // while one is online (of offline sessions a key keeps the newest only).
            assert!(sessions * 100 > keys * 105, "{sessions} sessions over {keys} keys");
        }
    }
}
