//! The NAT matrix: a real call with the real binary for every caller × callee pair of
//! {public, cone, symmetric, UDP-blocked}, between two hosts behind one cone router and
//! two behind one symmetric router, each on its own LAN port, and between two hosts
//! behind symmetric routers that also have IPv6. It records the path each side takes
//! and how long its setup took, prints them as a Markdown table, and checks the paths
//! against [`EXPECTED`].
//!
//! One network serves every case: `confab up` in the super nodes' namespace, which is
//! also the simulated internet, and two hosts of each kind, "…1" placing calls and "…2"
//! answering them, so a same-kind pair goes through two different routers of its kind.
//!
//! ```text
//!                    pub1 198.18.1.2 ---+              +--- 198.18.2.2 pub2
//!  cone1 10.203.1.2 -- [rcone1] 198.18.3.2 --+    +-- 198.18.4.2 [rcone2] -- 10.204.1.2 cone2
//!  sym1  10.205.1.2 -- [rsym1]  198.18.5.2 --[sn: 198.18.0.1]-- 198.18.6.2 [rsym2]  -- 10.206.1.2 sym2
//!  noudp1 10.207.1.2 - [rnoudp1] 198.18.7.2 -+  | |  +-- 198.18.8.2 [rnoudp2] - 10.208.1.2 noudp2
//!                                            |  | |  |
//!  lanc1 10.209.1.2 --in1 [rconelan] 198.18.9.2 | |  198.18.10.2 [rsymlan] in1-- 10.210.1.2 lans1
//!  lanc2 10.209.2.2 --in2                       | |                      in2-- 10.210.2.2 lans2
//!  v6a 10.211.1.2 -- [rv6a] 198.18.11.2 --------+ +-------- 198.18.12.2 [rv6b] -- 10.212.1.2 v6b
//!      2001:2:0:b01::2        2001:2:0:b00::2       2001:2:0:c00::2         2001:2:0:c01::2
//! ```
//!
//! Routers are `tests/common/netns.rs`'s home-router models (cone: port-preserving
//! masquerade; symmetric: `fully-random`; noudp: a cone whose firewall drops all UDP;
//! unsolicited inbound dropped, IPv6 included, no hairpinning). Each round runs calls
//! between disjoint pairs of hosts at once, so the 19 cases take 4 rounds. Only
//! 198.18.0.0/15, 2001:2::/48 and 10.203.0.0–10.212.255.255 are used, inside namespaces
//! this test creates and deletes. Needs root, `ip` and `nft`: without them the test
//! skips, unless CI=true.

mod common;

use common::netns::prerequisites_missing;
use common::testbed::{self, Call, Hearing, Party, Router, Testbed};
use std::collections::BTreeMap;
use std::time::Instant;

/// The path each case settles on: (caller, callee, caller's path, callee's path) at the
/// end of the call, `none` for a side that never connected. When path search changes,
/// this table changes with it (docs/nat-matrix.md has the history).
///
/// - A public host and one behind a symmetric NAT: the public side learns the other's
///   per-destination mapping from its authenticated probe (a peer-reflexive candidate)
///   and checks it back: direct both ways.
/// - A cone NAT and a symmetric one: the birthday technique (`call::birthday`) punches a
///   path while the relay carries the call's first moments; the path ends `punched`.
/// - Two hosts behind one router without hairpinning (buddies, so they offer their LAN
///   addresses): direct over the LAN.
/// - Two symmetric NATs, and any UDP-blocked side: relayed; but two symmetric NATs whose
///   hosts also have IPv6 (global addresses behind the routers' stateful firewalls) and
///   are buddies meet directly over IPv6, each offering its address as a host candidate.
const EXPECTED: [(&str, &str, &str, &str); 19] = [
    ("public", "public", "direct", "direct"),
    ("public", "cone", "direct", "direct"),
    ("public", "symmetric", "direct", "direct"),
    ("public", "udp-blocked", "relayed_tcp", "relayed_tcp"),
    ("cone", "public", "direct", "direct"),
    ("cone", "cone", "punched", "punched"),
    ("cone", "symmetric", "punched", "punched"),
    ("cone", "udp-blocked", "relayed_tcp", "relayed_tcp"),
    ("symmetric", "public", "direct", "direct"),
    ("symmetric", "cone", "punched", "punched"),
    ("symmetric", "symmetric", "relayed_udp", "relayed_udp"),
    ("symmetric", "udp-blocked", "relayed_tcp", "relayed_tcp"),
    ("udp-blocked", "public", "relayed_tcp", "relayed_tcp"),
    ("udp-blocked", "cone", "relayed_tcp", "relayed_tcp"),
    ("udp-blocked", "symmetric", "relayed_tcp", "relayed_tcp"),
    ("udp-blocked", "udp-blocked", "relayed_tcp", "relayed_tcp"),
    ("cone", "cone, same router", "direct", "direct"),
    ("symmetric", "symmetric, same router", "direct", "direct"),
    ("symmetric, IPv6", "symmetric, IPv6", "direct", "direct"),
];

/// The path of a side that never connected.
const NEVER: &str = "none";

/// The expected paths of a case: (caller's, callee's).
fn expected(caller: &str, callee: &str) -> [&'static str; 2] {
    let row = EXPECTED.iter().find(|r| (r.0, r.1) == (caller, callee));
    row.map(|r| [r.2, r.3]).unwrap_or_else(|| panic!("{caller} → {callee} is not in EXPECTED"))
}

/// How much each side must hear. Five calls at once (unoptimised binaries) share two
/// cores with the network: a host's media clock can fall a few hundred ms behind (no
/// CPU, or a handler waiting on the network), and late frames count as lost. The matrix
/// is about paths and hearing each other (tones, correlation); frames and loss are
/// measured where one call runs.
const HEARING: Hearing = Hearing { received_share_min: 0.6, lost_share_max: 0.10 };

/// How long each call talks once connected.
const CALL_SECS: u32 = 2;

/// The four kinds of host, in the table's order, and the user-name stem of each.
const KINDS: [(&str, &str); 4] = [("public", "pub"), ("cone", "cone"), ("symmetric", "sym"), ("udp-blocked", "noudp")];

/// One call to place: the kinds (as [`EXPECTED`] names them) and the hosts.
struct Case {
    caller_kind: &'static str,
    callee_kind: &'static str,
    caller: String,
    callee: String,
}

/// The shared network: every host's namespace by user name.
fn build() -> (Testbed, BTreeMap<String, String>) {
    let mut bed = Testbed::new(format!("nm{}", std::process::id() % 100_000));
    let sn = bed.internet();
    let mut hosts = BTreeMap::new();
    let mut net = 0u8;
    for (_, stem) in KINDS {
        for i in 1..=2 {
            net += 1;
            let user = format!("{stem}{i}");
            let router = match stem {
                "pub" => Router::None,
                "cone" => Router::Cone,
                "sym" => Router::Symmetric,
                _ => Router::NoUdp,
            };
            let ns = match router {
                Router::None => bed.public_host(&sn, &user, net),
                _ => bed.home_router(&sn, &format!("r{user}"), router, net, 200 + net, &[&user]).remove(0),
            };
            hosts.insert(user, ns);
        }
    }
    for (name, router, net, users) in
        [("rconelan", Router::Cone, 9, ["lanc1", "lanc2"]), ("rsymlan", Router::Symmetric, 10, ["lans1", "lans2"])]
    {
        let namespaces = bed.home_router(&sn, name, router, net, 200 + net, &users);
        hosts.extend(users.iter().map(|u| u.to_string()).zip(namespaces));
    }
    for (user, net) in [("v6a", 11), ("v6b", 12)] {
        let router = format!("r{user}");
        let ns = bed.home_router(&sn, &router, Router::Symmetric, net, 200 + net, &[user]).remove(0);
        bed.add_ipv6(&sn, &router, net, &ns);
        hosts.insert(user.to_string(), ns);
    }
    bed.start_network(&sn);
    (bed, hosts)
}

/// The 18 cases in rounds of calls between disjoint pairs of hosts: round r has kind i's
/// caller call kind (i + r) mod 4's callee, so each host is in one call at a time.
fn rounds() -> Vec<Vec<Case>> {
    let mut rounds: Vec<Vec<Case>> = (0..KINDS.len())
        .map(|r| {
            (0..KINDS.len())
                .map(|i| {
                    let ((caller_kind, from), (callee_kind, to)) = (KINDS[i], KINDS[(i + r) % KINDS.len()]);
                    Case { caller_kind, callee_kind, caller: format!("{from}1"), callee: format!("{to}2") }
                })
                .collect()
        })
        .collect();
    let same = |caller_kind, callee_kind, caller: &str, callee: &str| Case {
        caller_kind,
        callee_kind,
        caller: caller.into(),
        callee: callee.into(),
    };
    rounds[2].push(same("cone", "cone, same router", "lanc1", "lanc2"));
    rounds[3].push(same("symmetric", "symmetric, same router", "lans1", "lans2"));
    rounds[0].push(same("symmetric, IPv6", "symmetric, IPv6", "v6a", "v6b"));
    rounds
}

/// The message a case's thread panicked with.
fn panic_text(p: Box<dyn std::any::Any + Send>) -> String {
    p.downcast_ref::<String>().cloned().or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string())).unwrap_or_default()
}

fn relayed(path: &str) -> bool {
    path.starts_with("relayed")
}

#[test]
fn every_pair_of_nat_kinds_calls_and_takes_the_expected_path() {
    if prerequisites_missing() {
        return;
    }
    let started = Instant::now();
    let (bed, hosts) = build();
    std::thread::scope(|s| {
        let registering: Vec<_> = hosts.iter().map(|(user, ns)| s.spawn(|| bed.register(ns, user))).collect();
        for r in registering {
            r.join().expect("registration failed");
        }
    });
    // The hosts behind one router, and the two with IPv6, are buddies: they offer each
    // other their interface addresses (`host.local_candidates`, by default to buddies only).
    std::thread::scope(|s| {
        for (a, b) in [("lanc1", "lanc2"), ("lans1", "lans2"), ("v6a", "v6b")] {
            let (bed, hosts) = (&bed, &hosts);
            s.spawn(move || {
                let limit = std::time::Duration::from_secs(60);
                let out = bed.host(&hosts[a], a, &["buddy", "--as", a, "add", b], limit);
                assert!(out.status.success(), "{a} adds {b}: {}", String::from_utf8_lossy(&out.stderr));
                let out = bed.host(&hosts[b], b, &["buddy", "--as", b, "accept", a], limit);
                assert!(out.status.success(), "{b} accepts {a}: {}", String::from_utf8_lossy(&out.stderr));
            });
        }
    });
    eprintln!("network up and {} hosts registered in {:.1} s", hosts.len(), started.elapsed().as_secs_f64());

    // Per case: what each side reported, and whether each heard the other.
    type Outcome = (Call, Result<(), String>);
    let mut results: BTreeMap<(&str, &str), Result<Outcome, String>> = BTreeMap::new();
    for (i, round) in rounds().into_iter().enumerate() {
        let t = Instant::now();
        let outcomes: Vec<_> = std::thread::scope(|s| {
            let running: Vec<_> = round
                .iter()
                .map(|c| {
                    let (from, to): (Party<'_>, Party<'_>) =
                        ((&hosts[&c.caller], &c.caller), (&hosts[&c.callee], &c.callee));
                    let (bed, one_sided) = (&bed, expected(c.caller_kind, c.callee_kind).contains(&NEVER));
                    s.spawn(move || {
                        let call = testbed::place_call(bed, from, to, CALL_SECS);
                        let heard = match one_sided {
                            true => Ok(()),
                            false => std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                                call.assert_both_heard(HEARING)
                            }))
                            .map_err(panic_text),
                        };
                        (call, heard)
                    })
                })
                .collect();
            running.into_iter().map(|h| h.join().map_err(panic_text)).collect()
        });
        for (c, outcome) in round.iter().zip(outcomes) {
            results.insert((c.caller_kind, c.callee_kind), outcome);
        }
        eprintln!("round {} ({} calls) in {:.1} s", i + 1, round.len(), t.elapsed().as_secs_f64());
    }

    let ms = |v: Option<u64>| v.map_or("-".to_owned(), |v| v.to_string());
    // A side whose first path was replaced by a better one shows both, and the times to each.
    let shown = |first: &str, last: &str| if first == last { last.to_owned() } else { format!("{first} → {last}") };
    let times = |first: Option<u64>, last: Option<u64>| match (first, last) {
        (Some(f), Some(l)) if f != l => format!("{f} → {l}"),
        _ => ms(first),
    };
    let mut table = String::from(
        "| caller | callee | caller's path | callee's path | setup ms (caller) | setup ms (callee) |\n|---|---|---|---|---|---|\n",
    );
    let (mut failed, mut unexpected, mut relayed_n, mut relayed_expected) = (vec![], vec![], 0, 0);
    let mut spent = vec![];
    for (caller, callee, want_a, want_b) in EXPECTED {
        relayed_expected += usize::from(relayed(want_a) || relayed(want_b));
        match &results[&(caller, callee)] {
            Ok((c, heard)) => {
                let (a, b) = (c.caller.final_path(), c.callee.final_path());
                let (pa, pb) = (shown(c.caller.path_label(), a), shown(c.callee.path_label(), b));
                let sa = times(c.caller.setup_ms(), c.caller.path_ms());
                let sb = times(c.callee.setup_ms(), c.callee.path_ms());
                table += &format!("| {caller} | {callee} | {pa} | {pb} | {sa} | {sb} |\n");
                for side in [&c.caller, &c.callee] {
                    let h = &side.report["media"]["hard_nat"];
                    if !h.is_null() {
                        spent.push(format!("{caller} → {callee}, {}: {h}", side.user));
                    }
                }
                relayed_n += usize::from(relayed(a) || relayed(b));
                if (a, b) != (want_a, want_b) {
                    unexpected.push(format!("{caller} → {callee}: {a} / {b}, expected {want_a} / {want_b}"));
                }
                if let Err(e) = heard {
                    failed.push(format!("{caller} → {callee}: {e}"));
                }
            }
            Err(e) => {
                table += &format!("| {caller} | {callee} | failed | failed | - | - |\n");
                failed.push(format!("{caller} → {callee}: {e}"));
            }
        }
    }
    println!("{table}");
    println!("birthday technique (probes spent; success_after: probes sent when the path answered):");
    for line in &spent {
        println!("  {line}");
    }
    println!(
        "relayed: {relayed_n} of {} cases ({:.0}%); whole test {:.1} s",
        EXPECTED.len(),
        100.0 * relayed_n as f64 / EXPECTED.len() as f64,
        started.elapsed().as_secs_f64()
    );
    assert!(failed.is_empty(), "calls failed:\n{}", failed.join("\n"));
    assert!(unexpected.is_empty(), "paths differ from EXPECTED:\n{}", unexpected.join("\n"));
    assert_eq!(relayed_n, relayed_expected, "share of cases relayed");
}
