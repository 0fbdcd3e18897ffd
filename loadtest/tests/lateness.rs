//! `confab-loadtest lateness`, short: one run on a network the harness starts itself (the
//! fixture keys in its work folder, so nothing is generated), its report read back from
//! `--json`. The figures themselves are the measurement's business; this checks that the
//! run did what it says (a call, a failover, the list read) and that the report is whole.

use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/keys")
}

/// A work folder holding the fixture keys: the host key pool and the network's keys.
fn work_dir(parent: &Path) -> PathBuf {
    let work = parent.join("work");
    let (keys, net) = (work.join("keys"), work.join("network-keys"));
    std::fs::create_dir_all(&keys).unwrap();
    std::fs::create_dir_all(&net).unwrap();
    for k in ["host-0", "host-1", "host-2"] {
        std::fs::copy(fixtures().join(format!("{k}.key.pem")), keys.join(format!("{k}.key.pem"))).unwrap();
    }
    for (from, to) in [("login-0", "login"), ("supernode-0", "sn1"), ("supernode-1", "sn2"), ("supernode-2", "sn3")] {
        for ext in ["key.pem", "pub.pem"] {
            std::fs::copy(fixtures().join(format!("{from}.{ext}")), net.join(format!("{to}.{ext}"))).unwrap();
        }
    }
    work
}

fn number(v: &Value, what: &str) -> f64 {
    v.as_f64().unwrap_or_else(|| panic!("{what} is not a number: {v}"))
}

#[test]
fn a_short_lateness_run_reports_every_figure() {
    let dir = tempfile::tempdir().unwrap();
    let work = work_dir(dir.path());
    let json = work.join("lateness.json");
    let args =
        ["lateness", "--runs", "1", "--buddies", "20", "--warmup", "1s", "--presence-refresh", "3s", "--window", "6s"];
    let mut child = Command::new(env!("CARGO_BIN_EXE_confab-loadtest"))
        .args(["--quiet", "--json", json.to_str().unwrap(), "--work-dir", work.to_str().unwrap()])
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let limit = Duration::from_secs(90);
    let started = Instant::now();
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if started.elapsed() > limit {
            let _ = child.kill();
            let _ = child.wait();
            panic!("confab-loadtest lateness ran past {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let out = child.wait_with_output().unwrap();
    let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(status.success(), "lateness failed: {status}\n{stdout}\n{stderr}");
    eprintln!("{stdout}");
    assert!(stdout.contains("alice.tick_late_ms_p99"), "the table: {stdout}");

    let r: Value = serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    assert_eq!(r["command"], "lateness");
    let l = &r["lateness"];
    assert_eq!((l["buddies"].as_u64(), l["supernodes"].as_u64()), (Some(20), Some(3)), "{l:#}");
    assert!(l["load"].as_str().unwrap().contains("20 authorized buddies, 2 pages"), "{l:#}");
    // A run during whose call the wall clock moved is left out and run again, once at most.
    let runs = l["runs"].as_array().unwrap();
    let left_out = l["runs_left_out"].as_u64().unwrap() as usize;
    assert!(left_out <= 1 && runs.len() == 1 + left_out, "{l:#}");
    let run = runs.last().unwrap();
    assert!(number(&run["wall_clock_moved_ms"], "wall_clock_moved_ms").abs() <= 20.0, "{run:#}");
    for who in ["alice", "bob"] {
        let s = &run[who];
        let (p99, max) = (number(&s["tick_late_ms_p99"], "p99"), number(&s["tick_late_ms_max"], "max"));
        assert!(p99 <= max, "{who}: {s:#}");
        // Media flowed both ways, the caller's through a relay to the end.
        assert!(number(&s["sent"], "sent") > 0.0 && number(&s["received"], "received") > 0.0, "{who}: {s:#}");
        for k in ["lost", "loop_stalls", "loop_stalled_s", "path_restarts"] {
            number(&s[k], k);
        }
    }
    assert_eq!(run["alice"]["path"], "relayed_udp", "{run:#}");
    let p = &run["phases"];
    for k in ["setup_s", "login_alice_s", "login_bob_s", "call_setup_s", "media_s", "media_before_load_s"] {
        assert!(number(&p[k], k) > 0.0, "{k}: {p:#}");
    }
    // The load happened: alice moved to another super node, her list was read, and her
    // presence reached bob at the load's start (how the harness saw her refresh begin).
    assert!(number(&p["reconnected_s"], "reconnected_s") > 0.0, "{p:#}");
    assert!(number(&p["list_read_s"], "list_read_s") > 0.0, "{p:#}");
    assert!(p["presence_at_bob_s"].as_array().unwrap().iter().any(|t| t.as_f64().is_some_and(|t| t <= 0.0)), "{p:#}");
    // Every figure summarised, the median within the range.
    for name in ["alice.tick_late_ms_p99", "alice.tick_late_ms_max", "bob.tick_late_ms_p99", "bob.lost", "call_setup_s"]
    {
        let s = &l["summary"][name];
        let (median, min, max) = (number(&s["median"], name), number(&s["min"], name), number(&s["max"], name));
        assert!(min <= median && median <= max, "{name}: {s}");
    }
}
