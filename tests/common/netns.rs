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

/// Loads a home-router model into namespace `nat` (interface `out` to the internet, LAN
/// ports `in…`): masquerade on `out` (`fully-random` ports when `symmetric`), unsolicited
/// inbound dropped in both the forward and input hooks (IPv6 too; neighbour discovery is
/// let in, as on any router), and all UDP dropped when `drop_udp`. LAN ports reach each
/// other, unmasqueraded, as on a home router's switch.
/// There is no hairpinning: a LAN host's packet to the router's public address ends at
/// the router (no rule maps it back into the LAN), as on many home routers.
pub fn home_router(nat: &str, symmetric: bool, drop_udp: bool, rules_file: &std::path::Path) {
    let masquerade = if symmetric { "masquerade fully-random" } else { "masquerade" };
    let drop_udp = if drop_udp { "meta l4proto udp drop" } else { "" };
    let rules = format!(
        "table ip nat {{\n chain postrouting {{ type nat hook postrouting priority srcnat; policy accept;\n  oifname \"out\" {masquerade}\n }}\n}}\n\
         table inet filter {{\n chain forward {{ type filter hook forward priority filter; policy drop;\n  {drop_udp}\n  ct state established,related accept\n  iifname \"in*\" oifname {{ \"out\", \"in*\" }} accept\n }}\n\
         chain input {{ type filter hook input priority filter; policy drop;\n  ct state established,related accept\n  iifname \"lo\" accept\n  iifname \"in*\" accept\n  icmpv6 type {{ nd-neighbor-solicit, nd-neighbor-advert }} accept\n }}\n}}\n"
    );
    std::fs::write(rules_file, rules).unwrap();
    run(&["ip", "netns", "exec", nat, "nft", "-f", rules_file.to_str().unwrap()]);
}
