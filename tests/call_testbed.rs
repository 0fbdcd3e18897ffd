//! Calls through real NATs: two hosts, each in its own network namespace, each public or
//! behind its own home-router model (nftables masquerade, port-preserving "cone" or
//! `fully-random` "symmetric", unsolicited inbound dropped in the forward and input
//! hooks; or a firewall dropping all UDP), and `confab up` in a third. The real binary places the call with a WAV file;
//! the other side's recording must carry it.
//!
//! ```text
//!  [a ns]10.200.0.2 -- [nat-a] 198.18.2.2 --+                     +-- 198.18.3.2 [nat-b] -- 10.201.0.2[b ns]
//!  (or [a ns]198.18.1.2 straight)            +-- [sn ns] 198.18.0.1 +       (or [b ns]198.18.4.2 straight)
//! ```
//! Only 198.18.0.0/15 and 10.200.0.0/23 are used, inside namespaces this test creates
//! and deletes. Needs root, `ip` and `nft`: without them the tests skip, unless CI=true.

mod common;

use common::netns::{prerequisites_missing, run};

use std::path::PathBuf;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

const PW: &str = "correct horse battery";
const SN_IP: &str = "198.18.0.1";

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Router {
    None,
    Cone,
    Symmetric,
    /// A cone NAT whose firewall drops all UDP.
    NoUdp,
}

struct Bed {
    prefix: String,
    namespaces: Vec<String>,
    network: Option<Child>,
    dir: tempfile::TempDir,
}

impl Bed {
    fn add_ns(&mut self, name: &str) -> String {
        common::netns::add_ns(&self.prefix, name, &mut self.namespaces)
    }

    fn link(&self, a: (&str, &str, &str), b: (&str, &str, &str), tag: &str) {
        common::netns::link(&self.prefix, a, b, tag)
    }

    /// One side: a host namespace `side`, public on `public_net` or behind a router whose
    /// public side is on `nat_net` and private side on `inside`.
    fn side(&mut self, sn: &str, side: &str, router: Router, public_net: u8, nat_net: u8, inside: u8) -> String {
        let host = self.add_ns(side);
        if router == Router::None {
            let (gw, me) = (format!("198.18.{public_net}.1/24"), format!("198.18.{public_net}.2/24"));
            self.link((sn, &format!("p{side}"), &gw), (&host, "eth0", &me), &format!("p{side}"));
            run(&["ip", "-n", &host, "route", "add", "default", "via", &format!("198.18.{public_net}.1")]);
            return host;
        }
        let nat = self.add_ns(&format!("nat{side}"));
        let (gw, out) = (format!("198.18.{nat_net}.1/24"), format!("198.18.{nat_net}.2/24"));
        self.link((sn, &format!("o{side}"), &gw), (&nat, "out", &out), &format!("o{side}"));
        let (inner_gw, me) = (format!("10.{inside}.0.1/24"), format!("10.{inside}.0.2/24"));
        self.link((&nat, "in", &inner_gw), (&host, "eth0", &me), &format!("i{side}"));
        run(&["ip", "-n", &nat, "route", "add", "default", "via", &format!("198.18.{nat_net}.1")]);
        run(&["ip", "-n", &host, "route", "add", "default", "via", &format!("10.{inside}.0.1")]);
        run(&["ip", "netns", "exec", &nat, "sysctl", "-qw", "net.ipv4.ip_forward=1"]);
        let rules = self.dir.path().join(format!("router-{side}.nft"));
        common::netns::home_router(&nat, router == Router::Symmetric, router == Router::NoUdp, &rules);
        host
    }

    fn data(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    fn host_cmd(&self, ns: &str, home: &str, args: &[&str]) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", ns, env!("CARGO_BIN_EXE_confab"), "host", "--config"])
            .arg(self.data().join("host.toml"))
            .arg("--home")
            .arg(self.dir.path().join(home))
            .args(args)
            .env("CONFAB_PASSWORD", PW)
            .env("CONFAB_HOST__STEP_TIMEOUT_MS", "400")
            .env_remove("RUST_LOG");
        c
    }

    fn host(&self, ns: &str, home: &str, args: &[&str]) -> Output {
        self.host_cmd(ns, home, args).output().unwrap()
    }
}

impl Drop for Bed {
    fn drop(&mut self) {
        if let Some(mut c) = self.network.take() {
            let _ = Command::new("kill").args(["-TERM", &c.id().to_string()]).status();
            let _ = c.wait();
        }
        for ns in &self.namespaces {
            let _ = Command::new("ip").args(["netns", "del", ns]).output();
        }
    }
}

/// Alice (side a) calls Bob (side b) for 3 s, both playing tones; returns the path each
/// reported, after checking what each heard.
fn call(tag: char, a: Router, b: Router) -> (String, String) {
    use confab::call::audio;
    let mut bed = Bed {
        prefix: format!("cc{}{tag}", std::process::id() % 100_000),
        namespaces: vec![],
        network: None,
        dir: tempfile::tempdir().unwrap(),
    };
    let sn = bed.add_ns("sn");
    run(&["ip", "-n", &sn, "addr", "add", &format!("{SN_IP}/32"), "dev", "lo"]);
    run(&["ip", "netns", "exec", &sn, "sysctl", "-qw", "net.ipv4.ip_forward=1"]);
    let ns_a = bed.side(&sn, "a", a, 1, 2, 200);
    let ns_b = bed.side(&sn, "b", b, 4, 3, 201);
    common::seed_data(&bed.data(), 3);
    let mut up = Command::new("ip")
        .args(["netns", "exec", &sn, env!("CARGO_BIN_EXE_confab"), "up", "--json", "--bind", SN_IP, "--data"])
        .arg(bed.data())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    common::first_line(&mut up, Duration::from_secs(60));
    bed.network = Some(up);
    for (ns, user) in [(&ns_a, "alice"), (&ns_b, "bob")] {
        let out = bed.host(ns, user, &["register", user]);
        assert!(out.status.success(), "register {user}: {}", String::from_utf8_lossy(&out.stderr));
    }
    let (to_bob, to_alice) = (bed.dir.path().join("to-bob.wav"), bed.dir.path().join("to-alice.wav"));
    let (heard_by_bob, heard_by_alice) = (bed.dir.path().join("bob.wav"), bed.dir.path().join("alice.wav"));
    audio::write_wav(&to_bob, &audio::tone(&[440.0, 1000.0], 3.0, 12_000.0)).unwrap();
    audio::write_wav(&to_alice, &audio::tone(&[600.0], 3.0, 12_000.0)).unwrap();
    let online = bed
        .host_cmd(
            &ns_b,
            "bob",
            &[
                "online",
                "bob",
                "--json",
                "--wait",
                "60s",
                "--play",
                to_alice.to_str().unwrap(),
                "--record",
                heard_by_bob.to_str().unwrap(),
            ],
        )
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let t = Instant::now();
    loop {
        let out = bed.host(&ns_a, "alice", &["find", "--as", "alice", "bob", "--json"]);
        if out.stdout.starts_with(b"{\"user\":\"bob\",\"status\":\"online\"") {
            break;
        }
        assert!(t.elapsed() < Duration::from_secs(30), "bob never came online");
        std::thread::sleep(Duration::from_millis(300));
    }
    let out = bed.host(
        &ns_a,
        "alice",
        &[
            "call",
            "--as",
            "alice",
            "bob",
            "--duration",
            "3s",
            "--json",
            "--play",
            to_bob.to_str().unwrap(),
            "--record",
            heard_by_alice.to_str().unwrap(),
        ],
    );
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(out.status.success(), "{text}\n{}", String::from_utf8_lossy(&out.stderr));
    let bob_out = online.wait_with_output().unwrap();
    let bob_text = String::from_utf8_lossy(&bob_out.stdout).to_string();
    assert!(bob_out.status.success(), "{bob_text}");
    let path = |t: &str| -> (String, serde_json::Value) {
        let events: Vec<serde_json::Value> = t.lines().filter_map(|l| serde_json::from_str(l).ok()).collect();
        let p = events.iter().find(|e| e["state"] == "connected").map(|e| e["path"].as_str().unwrap().to_owned());
        let report = events.iter().find(|e| e["event"] == "report").cloned().unwrap_or_default();
        (p.unwrap_or_else(|| panic!("never connected: {t}")), report)
    };
    let ((pa, ra), (pb, rb)) = (path(&text), path(&bob_text));
    eprintln!("{a:?} ⇄ {b:?}: alice {pa} {ra}, bob {pb} {rb}");
    for (who, report, wav, sent, tones) in [
        ("alice", &ra, &heard_by_alice, &to_alice, &[600.0f32][..]),
        ("bob", &rb, &heard_by_bob, &to_bob, &[440.0f32, 1000.0][..]),
    ] {
        let (received, lost) =
            (report["media"]["received"].as_u64().unwrap(), report["media"]["lost"].as_u64().unwrap());
        assert!(received >= 120, "{who} received {received} frames: {report}");
        assert!((lost as f64) < 0.01 * received as f64, "{who} lost {lost} of {received}");
        let heard = audio::read_wav(wav).unwrap();
        let heard = &heard[heard.len().min(9600)..];
        for f in tones {
            assert!(audio::tone_strength(heard, *f) > 0.2, "{who} does not hear {f} Hz");
        }
        let sent = audio::read_wav(sent).unwrap();
        let (_, corr) = audio::best_correlation(&sent[..48_000], heard, 48_000);
        assert!(corr > 0.8, "{who}: correlation {corr}");
    }
    (pa, pb)
}

#[test]
fn both_public_call_directly() {
    if prerequisites_missing() {
        return;
    }
    assert_eq!(call('p', Router::None, Router::None), ("direct".into(), "direct".into()));
}

#[test]
fn one_behind_a_cone_nat_calls_directly() {
    if prerequisites_missing() {
        return;
    }
    assert_eq!(call('o', Router::Cone, Router::None), ("direct".into(), "direct".into()));
}

#[test]
fn both_behind_cone_nats_punch_holes() {
    if prerequisites_missing() {
        return;
    }
    assert_eq!(call('c', Router::Cone, Router::Cone), ("punched".into(), "punched".into()));
}

#[test]
fn both_behind_symmetric_nats_go_through_a_relay() {
    if prerequisites_missing() {
        return;
    }
    assert_eq!(call('s', Router::Symmetric, Router::Symmetric), ("relayed_udp".into(), "relayed_udp".into()));
}

#[test]
fn a_host_behind_a_firewall_dropping_udp_goes_through_a_relay_over_tcp() {
    if prerequisites_missing() {
        return;
    }
    assert_eq!(call('u', Router::NoUdp, Router::None), ("relayed_tcp".into(), "relayed_tcp".into()));
}
