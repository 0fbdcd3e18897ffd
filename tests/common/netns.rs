//! Network-namespace helpers for the NAT testbeds (root, `ip`, `nft`).

use std::process::Command;

/// Runs a command that must succeed.
pub fn run(args: &[&str]) {
    let out = Command::new(args[0]).args(&args[1..]).output().unwrap_or_else(|e| panic!("{args:?}: {e}"));
    assert!(out.status.success(), "{args:?}: {}", String::from_utf8_lossy(&out.stderr));
}

fn have(tool: &str) -> bool {
    Command::new("sh").args(["-c", &format!("command -v {tool}")]).output().map(|o| o.status.success()).unwrap_or(false)
}

fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| s.lines().find(|l| l.starts_with("Uid:")).map(|l| l.split_whitespace().nth(1) == Some("0")))
        .unwrap_or(false)
}

/// Whether a testbed cannot run here (a failure in CI, a skip elsewhere).
pub fn prerequisites_missing() -> bool {
    super::missing("root (for network namespaces)", is_root())
        || super::missing("ip (Debian package iproute2)", have("ip"))
        || super::missing("nft (Debian package nftables)", have("nft"))
}

/// Creates namespace `<prefix>-<name>` (replacing a leftover), loopback up; records it.
pub fn add_ns(prefix: &str, name: &str, made: &mut Vec<String>) -> String {
    let ns = format!("{prefix}-{name}");
    let _ = Command::new("ip").args(["netns", "del", &ns]).output();
    run(&["ip", "netns", "add", &ns]);
    run(&["ip", "-n", &ns, "link", "set", "lo", "up"]);
    made.push(ns.clone());
    ns
}

/// A veth pair between two namespaces: (namespace, interface name, address/prefix) each.
pub fn link(prefix: &str, a: (&str, &str, &str), b: (&str, &str, &str), tag: &str) {
    let (ta, tb) = (format!("{prefix}{tag}a"), format!("{prefix}{tag}b"));
    run(&["ip", "link", "add", &ta, "type", "veth", "peer", "name", &tb]);
    for ((ns, name, addr), tmp) in [(a, &ta), (b, &tb)] {
        run(&["ip", "link", "set", tmp, "netns", ns]);
        run(&["ip", "-n", ns, "link", "set", tmp, "name", name]);
        run(&["ip", "-n", ns, "addr", "add", addr, "dev", name]);
        run(&["ip", "-n", ns, "link", "set", name, "up"]);
    }
}
