//! A group of 20 on three super nodes, split by a real partition: `confab up` in a network
//! namespace, every member a one-shot `confab host` process in that namespace, half of
//! them bootstrapping on super node 1 and half on super nodes 2 and 3. nftables rules in
//! the namespace drop the gossip between super node 1 and the other two (the channel that
//! also carries index and mail requests between super nodes) while both sides write; after
//! the heal every member's group history must hold the same texts in the same order.
//!
//! Only 198.18.0.1, inside a namespace this test creates and deletes. Needs root, `ip` and
//! `nft`: without them the test skips, unless CI=true.

mod common;

use common::netns::{prerequisites_missing, run};
use common::testbed::{SN_IP, Testbed};

use serde_json::Value;
use std::process::{Output, Stdio};
use std::time::{Duration, Instant};

const MEMBERS: usize = 20;
/// Messages each writer sends while partitioned.
const WRITES: usize = 2;
/// Writers on each side while partitioned.
const WRITERS: usize = 5;
const GROUP: &str = "crew";
/// Super node i's host port and gossip port under `confab up`'s default base 33030.
const HOST_PORT: [u16; 3] = [33033, 33043, 33053];
const GOSSIP_PORT: [u16; 3] = [33035, 33045, 33055];
/// The test's own nftables table (in the super nodes' namespace only).
const TABLE: &str = "partition";

fn user(i: usize) -> String {
    format!("m{i:02}")
}

/// Member `i`'s side: the first half on super node 1, the rest on super nodes 2 and 3.
fn bootstrap(i: usize) -> String {
    let nodes: &[u16] = if i < MEMBERS / 2 { &HOST_PORT[..1] } else { &HOST_PORT[1..] };
    let list: Vec<String> = nodes.iter().map(|p| format!("\"{SN_IP}:{p}\"")).collect();
    format!("[{}]", list.join(","))
}

/// `confab host <args>` as member `i` (its own home, its side's bootstrap list).
fn member(bed: &Testbed, ns: &str, i: usize, args: &[&str]) -> Output {
    let u = user(i);
    let child = bed
        .host_cmd(ns, &u, args)
        .env("CONFAB_HOST__BOOTSTRAP", bootstrap(i))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    common::testbed::wait_within(child, Duration::from_secs(40), &format!("{u}: {args:?}"))
}

/// Runs `f` for every member in `ids`, one after the other: every member logs in from
/// the same address, and a super node checks one handshake per address at a time.
fn each(ids: &[usize], f: impl Fn(usize)) {
    for &i in ids {
        f(i);
    }
}

fn ok(out: &Output, what: &str) {
    assert!(
        out.status.success(),
        "{what}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Member `i`'s group history from its own device: (author, text) in order.
fn texts(bed: &Testbed, ns: &str, i: usize) -> Vec<(String, String)> {
    let out =
        member(bed, ns, i, &["--json", "chat", "--as", &user(i), "history", &format!("@{GROUP}"), "--limit", "1000"]);
    ok(&out, "history");
    let v: Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("history: {e}: {out:?}"));
    v["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| (m["from"].as_str().unwrap().to_owned(), m["text"].as_str().unwrap().to_owned()))
        .collect()
}

/// Dropped packets counted by the partition's rules (0 when the table is absent).
fn dropped(ns: &str) -> u64 {
    let out = std::process::Command::new("ip")
        .args(["netns", "exec", ns, "nft", "list", "table", "inet", TABLE])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    text.split("packets ").skip(1).filter_map(|s| s.split_whitespace().next()?.parse::<u64>().ok()).sum()
}

fn partition(ns: &str) {
    let rules = format!(
        "table inet {TABLE} {{\n chain out {{\n  type filter hook output priority 0; policy accept;\n  \
         ip daddr {SN_IP} udp sport {a} udp dport {{ {b}, {c} }} counter drop\n  \
         ip daddr {SN_IP} udp sport {{ {b}, {c} }} udp dport {a} counter drop\n  \
         ip daddr {SN_IP} tcp sport {a} tcp dport {{ {b}, {c} }} counter drop\n  \
         ip daddr {SN_IP} tcp sport {{ {b}, {c} }} tcp dport {a} counter drop\n }}\n}}\n",
        a = GOSSIP_PORT[0],
        b = GOSSIP_PORT[1],
        c = GOSSIP_PORT[2],
    );
    let file = std::env::temp_dir().join(format!("{TABLE}-{}.nft", std::process::id()));
    std::fs::write(&file, rules).unwrap();
    run(&["ip", "netns", "exec", ns, "nft", "-f", file.to_str().unwrap()]);
    let _ = std::fs::remove_file(file);
}

#[test]
fn a_group_of_twenty_split_by_a_real_partition_converges_after_the_heal() {
    if prerequisites_missing() {
        return;
    }
    let t0 = Instant::now();
    let mut bed = Testbed::new(format!("gp{}", std::process::id() % 100_000));
    let ns = bed.internet();
    // Every member registers from the one address of the namespace.
    bed.start_network_with(
        &ns,
        &[
            ("CONFAB_LOGIN_SERVER__THROTTLE__REGISTRATIONS_BURST", "40"),
            ("CONFAB_LOGIN_SERVER__THROTTLE__REGISTRATIONS_PER_SOURCE_PER_HOUR", "400"),
        ],
    );
    let all: Vec<usize> = (0..MEMBERS).collect();

    // Registered and logged in once, so that every member's keys are published.
    each(&all, |i| {
        ok(&member(&bed, &ns, i, &["register", &user(i)]), "register");
        ok(&member(&bed, &ns, i, &["chat", "--as", &user(i), "read"]), "first login");
    });
    eprintln!("{:?}: 20 registered and logged in", t0.elapsed());

    let others: Vec<String> = (1..MEMBERS).map(user).collect();
    ok(
        &member(&bed, &ns, 0, &["chat", "--as", &user(0), "group", "create", GROUP, "--members", &others.join(",")]),
        "group create",
    );
    let at = format!("@{GROUP}");
    ok(&member(&bed, &ns, 0, &["chat", "--as", &user(0), "send", &at, "hello all"]), "first message");
    // Every member takes the invitation and the first message before the split.
    each(&all, |i| {
        common::poll_until(&format!("{} holds the first message", user(i)), Duration::from_secs(30), || {
            ok(&member(&bed, &ns, i, &["chat", "--as", &user(i), "read"]), "read");
            texts(&bed, &ns, i).iter().any(|(_, t)| t == "hello all")
        });
    });
    eprintln!("{:?}: group created, every member in it", t0.elapsed());

    assert_eq!(dropped(&ns), 0);
    partition(&ns);
    // The cluster's heartbeats keep flowing: the rules took when they start dropping them.
    common::poll_until("gossip across the partition dropped", Duration::from_secs(20), || dropped(&ns) > 0);
    let before = dropped(&ns);

    // Both sides write while apart.
    let writers: Vec<usize> = (0..WRITERS).chain(MEMBERS / 2..MEMBERS / 2 + WRITERS).collect();
    each(&writers, |i| {
        for k in 0..WRITES {
            let text = format!("{} apart {k}", user(i));
            ok(&member(&bed, &ns, i, &["chat", "--as", &user(i), "send", &at, &text]), "send while apart");
        }
    });
    let during = dropped(&ns) - before;
    assert!(during > 0, "the partition held while the sides wrote");
    eprintln!("{:?}: written apart ({during} packets dropped meanwhile)", t0.elapsed());

    run(&["ip", "netns", "exec", &ns, "nft", "delete", "table", "inet", TABLE]);

    let mut expected: Vec<String> = vec!["hello all".into()];
    for &i in &writers {
        expected.extend((0..WRITES).map(|k| format!("{} apart {k}", user(i))));
    }
    expected.sort();
    // Each `read` is a login: it fetches what waits and syncs the group's log.
    let deadline = Duration::from_secs(60);
    each(&all, |i| {
        common::poll_until(&format!("{} holds every text", user(i)), deadline, || {
            ok(&member(&bed, &ns, i, &["chat", "--as", &user(i), "read"]), "read");
            let mut have: Vec<String> = texts(&bed, &ns, i).into_iter().map(|(_, t)| t).collect();
            have.sort();
            have == expected
        });
    });
    eprintln!("{:?}: every member holds every text", t0.elapsed());

    let reference = texts(&bed, &ns, 0);
    assert_eq!(reference.len(), expected.len());
    for i in 1..MEMBERS {
        assert_eq!(texts(&bed, &ns, i), reference, "{}'s history is member 0's, in the same order", user(i));
    }
    eprintln!("{:?}: 20 identical histories", t0.elapsed());
}
