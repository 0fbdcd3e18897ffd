//! The real-NAT testbed: network namespaces joined by veth pairs, NAT routers built
//! from nftables masquerade, and the real `confab` binary on both sides.
//!
//! ```text
//!  [host ns]10.200.0.2 --in-- [nat ns] --out 198.18.2.2 --- 198.18.2.1 [sn ns: 198.18.0.1 on lo]
//!  [pub ns]198.18.1.2 ------------------------------------ 198.18.1.1      confab up --bind 198.18.0.1
//! ```
//!
//! The routers are modelled on home routers: masquerade on the public side
//! (port-preserving for "cone", `fully-random` for "symmetric") and unsolicited inbound
//! packets dropped in both the forward and input hooks. Only 198.18.0.0/15 and
//! 10.200.0.0/24 are used, inside namespaces this test creates and deletes.
//! Needs root, `ip` and `nft`: without them the tests skip, unless CI=true.

mod common;

use common::netns::{prerequisites_missing, run};

use std::path::PathBuf;
use std::process::{Child, Command, Output, Stdio};

const PW: &str = "correct horse battery";
const SN_IP: &str = "198.18.0.1";

/// How the router between a host and the internet behaves.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Router {
    /// No router: the host has a public address.
    None,
    /// Masquerade keeping source ports: endpoint-independent mapping.
    Cone,
    /// Masquerade with a random port per connection: address/port-dependent mapping.
    Symmetric,
    /// A cone NAT whose firewall also drops all UDP.
    ConeNoUdp,
}

/// One testbed: namespaces, the network process, a host home. Torn down on drop.
struct Testbed {
    prefix: String,
    namespaces: Vec<String>,
    network: Option<Child>,
    dir: tempfile::TempDir,
    host_ns: String,
}

impl Testbed {
    fn ns(&self, name: &str) -> String {
        format!("{}-{name}", self.prefix)
    }

    fn add_ns(&mut self, name: &str) -> String {
        common::netns::add_ns(&self.prefix, name, &mut self.namespaces)
    }

    /// A veth pair between two namespaces, with names and /24 addresses on each end.
    fn link(&self, a: (&str, &str, &str), b: (&str, &str, &str), tag: &str) {
        common::netns::link(&self.prefix, a, b, tag)
    }

    fn build(tag: char, router: Router) -> Self {
        let prefix = format!("cf{}{tag}", std::process::id() % 100_000);
        let mut tb = Testbed {
            prefix,
            namespaces: vec![],
            network: None,
            dir: tempfile::tempdir().unwrap(),
            host_ns: String::new(),
        };
        let sn = tb.add_ns("sn");
        run(&["ip", "-n", &sn, "addr", "add", &format!("{SN_IP}/32"), "dev", "lo"]);
        let host = tb.add_ns("host");
        if router == Router::None {
            tb.link((&sn, "h0", "198.18.1.1/24"), (&host, "eth0", "198.18.1.2/24"), "p");
            run(&["ip", "-n", &host, "route", "add", "default", "via", "198.18.1.1"]);
        } else {
            let nat = tb.add_ns("nat");
            tb.link((&sn, "n0", "198.18.2.1/24"), (&nat, "out", "198.18.2.2/24"), "o");
            tb.link((&nat, "in", "10.200.0.1/24"), (&host, "eth0", "10.200.0.2/24"), "i");
            run(&["ip", "-n", &nat, "route", "add", "default", "via", "198.18.2.1"]);
            run(&["ip", "-n", &host, "route", "add", "default", "via", "10.200.0.1"]);
            run(&["ip", "netns", "exec", &nat, "sysctl", "-qw", "net.ipv4.ip_forward=1"]);
            let rules = tb.dir.path().join("router.nft");
            common::netns::home_router(&nat, router == Router::Symmetric, router == Router::ConeNoUdp, &rules);
        }
        tb.host_ns = host;
        tb
    }

    fn data(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    fn home(&self) -> PathBuf {
        self.dir.path().join("home")
    }

    /// Starts `confab up` in the super-node namespace and waits until it listens.
    fn start_network(&mut self) {
        common::seed_data(&self.data(), 3, "sn");
        let mut child = Command::new("ip")
            .args([
                "netns",
                "exec",
                &self.ns("sn"),
                env!("CARGO_BIN_EXE_confab"),
                "up",
                "--json",
                "--bind",
                SN_IP,
                "--data",
            ])
            .arg(self.data())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let line = common::first_line(&mut child, std::time::Duration::from_secs(60));
        self.network = Some(child);
        let info: serde_json::Value =
            serde_json::from_str(&line).unwrap_or_else(|e| panic!("confab up: {e}: {line:?}"));
        assert_eq!(info["login_server"], format!("{SN_IP}:33030"));
    }

    /// Runs `confab host …` in the host namespace.
    fn host(&self, args: &[&str]) -> Output {
        Command::new("ip")
            .args(["netns", "exec", &self.host_ns, env!("CARGO_BIN_EXE_confab"), "host", "--config"])
            .arg(self.data().join("host.toml"))
            .arg("--home")
            .arg(self.home())
            .args(args)
            .env("CONFAB_PASSWORD", PW)
            .env("CONFAB_HOST__STEP_TIMEOUT_MS", "400")
            .env_remove("RUST_LOG")
            .output()
            .unwrap()
    }

    fn login(&self, user: &str) -> serde_json::Value {
        let out = self.host(&["register", user]);
        assert!(out.status.success(), "register: {}", String::from_utf8_lossy(&out.stderr));
        let out = self.host(&["login", user, "--json"]);
        assert!(out.status.success(), "login: {}", String::from_utf8_lossy(&out.stderr));
        serde_json::from_slice(&out.stdout).unwrap()
    }

    fn port(&self) -> u16 {
        let s: serde_json::Value =
            serde_json::from_slice(&std::fs::read(self.home().join("host.json")).unwrap()).unwrap();
        s["port"].as_u64().unwrap() as u16
    }
}

impl Drop for Testbed {
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

fn public_ip(r: &serde_json::Value) -> String {
    r["public_addr"].as_str().unwrap().rsplit_once(':').unwrap().0.to_owned()
}

#[test]
fn public_host_sees_no_nat() {
    if prerequisites_missing() {
        return;
    }
    let mut tb = Testbed::build('p', Router::None);
    tb.start_network();
    let r = tb.login("alice");
    assert_eq!(r["nat"], "none", "{r}");
    assert_eq!(r["transport"], "udp");
    assert_eq!(r["public_addr"], format!("198.18.1.2:{}", tb.port()));
}

#[test]
fn cone_nat_is_classified_and_its_public_address_learned() {
    if prerequisites_missing() {
        return;
    }
    let mut tb = Testbed::build('c', Router::Cone);
    tb.start_network();
    let r = tb.login("bob");
    assert_eq!(r["transport"], "udp", "{r}");
    assert_eq!(public_ip(&r), "198.18.2.2", "the NAT's public address: {r}");
    assert_eq!(r["nat"], "cone", "{r}");
    assert_eq!(r["public_addr"], format!("198.18.2.2:{}", tb.port()), "this masquerade keeps ports");
}

#[test]
fn symmetric_nat_is_classified() {
    if prerequisites_missing() {
        return;
    }
    let mut tb = Testbed::build('s', Router::Symmetric);
    tb.start_network();
    let r = tb.login("carol");
    assert_eq!(r["transport"], "udp", "{r}");
    assert_eq!(public_ip(&r), "198.18.2.2", "{r}");
    assert_eq!(r["nat"], "symmetric", "{r}");
}

#[test]
fn udp_blocked_falls_back_to_tcp() {
    if prerequisites_missing() {
        return;
    }
    let mut tb = Testbed::build('u', Router::ConeNoUdp);
    tb.start_network();
    let r = tb.login("dave");
    assert_eq!(r["transport"], "tcp", "{r}");
    assert_eq!(r["nat"], "udp_blocked", "{r}");
    assert_eq!(public_ip(&r), "198.18.2.2", "{r}");
    let stages: Vec<&str> = r["attempts"].as_array().unwrap().iter().map(|a| a["stage"].as_str().unwrap()).collect();
    assert_eq!(stages, ["bootstrap_udp", "bootstrap_udp", "bootstrap_udp", "bootstrap_tcp"], "{r}");
}

#[test]
fn every_cached_super_node_down_reaches_a_bootstrap_node() {
    if prerequisites_missing() {
        return;
    }
    let mut tb = Testbed::build('b', Router::Cone);
    tb.start_network();
    std::fs::create_dir_all(tb.home()).unwrap();
    let dead: Vec<serde_json::Value> = (0..3)
        .map(|i| {
            serde_json::json!({"kind": "supernode", "name": format!("gone{i}"), "udp": format!("{SN_IP}:{}", 40001 + i),
                "tcp": format!("{SN_IP}:{}", 40001 + i), "last_success": 1, "rtt_ms": 1, "failures": 0})
        })
        .collect();
    let cache = serde_json::json!({"version": 1, "entries": dead});
    std::fs::write(tb.home().join("hostcache.json"), cache.to_string()).unwrap();
    let r = tb.login("erin");
    let attempts = r["attempts"].as_array().unwrap();
    let last = attempts.last().unwrap();
    assert_eq!(last["stage"], "bootstrap_udp", "{r}");
    assert_eq!(last["outcome"], "ok", "{r}");
    assert_eq!(attempts.iter().filter(|a| a["stage"] == "cached_udp").count(), 3, "{r}");
    let cache: serde_json::Value =
        serde_json::from_slice(&std::fs::read(tb.home().join("hostcache.json")).unwrap()).unwrap();
    assert!(cache["entries"].as_array().unwrap().len() >= 6, "the super nodes' list was cached: {cache}");
}
