//! Calls through real NATs: two hosts, each in its own network namespace, each public or
//! behind its own home-router model (nftables masquerade, port-preserving "cone" or
//! `fully-random` "symmetric", unsolicited inbound dropped in the forward and input
//! hooks; or a firewall dropping all UDP), and `confab up` in a third. The real binary places the call with a WAV file;
//! the other side's recording must carry it.
//!
//! ```text
//!  [a ns]10.200.1.2 -- [nat-a] 198.18.2.2 --+                     +-- 198.18.3.2 [nat-b] -- 10.201.1.2[b ns]
//!  (or [a ns]198.18.1.2 straight)            +-- [sn ns] 198.18.0.1 +       (or [b ns]198.18.4.2 straight)
//! ```
//! Only 198.18.0.0/15 and 10.200.0.0/23 are used, inside namespaces this test creates
//! and deletes. Needs root, `ip` and `nft`: without them the tests skip, unless CI=true.

mod common;

use common::netns::prerequisites_missing;
use common::testbed::{PW, Router, SN_IP, Testbed};

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The super nodes' namespace and the two sides: (testbed, sn namespace, side a's host
/// namespace, side b's).
fn two_sides(tag: char, a: Router, b: Router) -> (Testbed, String, String, String) {
    let mut bed = Testbed::new(format!("cc{}{tag}", std::process::id() % 100_000));
    let sn = bed.internet();
    let ns_a = side(&mut bed, &sn, "a", a, 1, 2, 200);
    let ns_b = side(&mut bed, &sn, "b", b, 4, 3, 201);
    (bed, sn, ns_a, ns_b)
}

/// One side: a host namespace `side`, public on `public_net` or behind a router whose
/// public side is on `nat_net` and private side on `inside`.
fn side(bed: &mut Testbed, sn: &str, side: &str, router: Router, public_net: u8, nat_net: u8, inside: u8) -> String {
    match router {
        Router::None => bed.public_host(sn, side, public_net),
        _ => bed.home_router(sn, &format!("nat{side}"), router, nat_net, inside, &[side]).remove(0),
    }
}

/// `confab host` arguments: Alice calls Bob for `duration`, playing and recording WAVs.
fn alice_calls_bob<'a>(duration: &'a str, play: &'a str, record: &'a str) -> [&'a str; 11] {
    ["call", "--as", "alice", "bob", "--duration", duration, "--json", "--play", play, "--record", record]
}

/// Alice (side a) calls Bob (side b) for 3 s, both playing tones; returns the path each
/// reported, after checking what each heard.
fn call(tag: char, a: Router, b: Router) -> (String, String) {
    let (mut bed, sn, ns_a, ns_b) = two_sides(tag, a, b);
    bed.start_network(&sn);
    for (ns, user) in [(&ns_a, "alice"), (&ns_b, "bob")] {
        bed.register(ns, user);
    }
    let c = common::testbed::place_call(&bed, (&ns_a, "alice"), (&ns_b, "bob"), 3);
    eprintln!(
        "{a:?} ⇄ {b:?}: alice {:?} {}, bob {:?} {}",
        c.caller.path, c.caller.report, c.callee.path, c.callee.report
    );
    // One call on the machine: a side connects a little after the other, so 80% of the
    // frames, and under 1% lost.
    c.assert_both_heard(common::testbed::Hearing { received_share_min: 0.8, lost_share_max: 0.01 });
    (c.caller.path_label().into(), c.callee.path_label().into())
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

/// Daemons of a test, stopped (SIGTERM, then waited for) however the test ends.
struct Daemons(Vec<Child>);

impl Drop for Daemons {
    fn drop(&mut self) {
        for c in &mut self.0 {
            let _ = Command::new("kill").args(["-TERM", &c.id().to_string()]).status();
            let _ = c.wait();
        }
    }
}

/// Runs `confab` with `args` in namespace `ns`, output to a log file in `dir`.
fn daemon(ns: &str, dir: &std::path::Path, name: &str, args: &[&str]) -> Child {
    let log = std::fs::File::create(dir.join(format!("{name}.log"))).unwrap();
    Command::new("ip")
        .args(["netns", "exec", ns, env!("CARGO_BIN_EXE_confab")])
        .args(args)
        .env_remove("RUST_LOG")
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .unwrap()
}

/// Waits until something in namespace `ns` accepts TCP on `addr:port`.
fn wait_listening(ns: &str, addr: &str, port: u16) {
    let t = Instant::now();
    let probe = format!("exec 3<>/dev/tcp/{addr}/{port}");
    while !Command::new("ip").args(["netns", "exec", ns, "bash", "-c", &probe]).status().unwrap().success() {
        assert!(t.elapsed() < Duration::from_secs(30), "nothing listens on {addr}:{port} in {ns}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Both hosts behind symmetric NATs, each on its own super node, every super node in a
/// process of its own: the call goes through a relay at the caller's super node, which
/// is then killed. The caller reconnects to the other super node, opens a relay there,
/// and both sides hear each other again.
#[test]
fn a_relayed_call_survives_the_death_of_its_relaying_super_node() {
    use confab::call::audio;
    use std::io::BufRead;
    if prerequisites_missing() {
        return;
    }
    let (bed, sn, ns_a, ns_b) = two_sides('f', Router::Symmetric, Router::Symmetric);

    // Keys, credentials and configuration, as an operator deploys them.
    let d = bed.dir.path().to_path_buf();
    let keygen = |args: &[&str]| {
        let out = Command::new(env!("CARGO_BIN_EXE_confab")).args(args).output().unwrap();
        assert!(out.status.success(), "keygen {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    };
    let p = |f: &str| d.join(f).to_str().unwrap().to_owned();
    keygen(&["keygen", "login", "--out", &p("login")]);
    keygen(&["keygen", "cluster", "--out", &p("cluster.secret")]);
    // (name, base port): udp/tcp base, probe base+1, gossip base+2, relay base+3.
    let nodes = [("sn-a", 33033u16), ("sn-b", 33043u16)];
    for (name, base) in nodes {
        keygen(&["keygen", "supernode", "--name", name, "--login-key", &p("login.key.pem"), "--out", &p(name)]);
        let other = nodes.iter().find(|(n, _)| *n != name).unwrap().1;
        std::fs::write(
            d.join(format!("{name}.toml")),
            format!(
                "[supernode]\ntrusted_login_keys = [\"login.pub.pem\"]\ncluster_secret = \"cluster.secret\"\n\
                 seeds = [\"{SN_IP}:{}\"]\nprobe_period_ms = 200\n\
                 [[supernode.nodes]]\nname = \"{name}\"\nkey = \"{name}.key.pem\"\ncredential = \"{name}.cred\"\n\
                 udp = \"{SN_IP}:{base}\"\ntcp = \"{SN_IP}:{base}\"\nprobe_udp = \"{SN_IP}:{}\"\n\
                 gossip = \"{SN_IP}:{}\"\nrelay = \"{SN_IP}:{}\"\n\
                 [[supernode.peers]]\nname = \"{}\"\nudp = \"{SN_IP}:{other}\"\ntcp = \"{SN_IP}:{other}\"\n",
                other + 2,
                base + 1,
                base + 2,
                base + 3,
                nodes.iter().find(|(n, _)| *n != name).unwrap().0,
            ),
        )
        .unwrap();
    }
    std::fs::write(
        d.join("login.toml"),
        format!(
            "[login_server]\nlisten = \"{SN_IP}:33030\"\nkey = \"login.key.pem\"\ndatabase = \"accounts.sqlite\"\n"
        ),
    )
    .unwrap();
    // Alice starts at sn-a, Bob at sn-b; each knows the other node as a second choice.
    for (who, first, second) in [("alice", 33033, 33043), ("bob", 33043, 33033)] {
        std::fs::write(
            d.join(format!("host-{who}.toml")),
            format!(
                "[host]\nlogin_servers = [\"{SN_IP}:33030\"]\ntrusted_login_keys = [\"login.pub.pem\"]\n\
                 bootstrap = [\"{SN_IP}:{first}\", \"{SN_IP}:{second}\"]\nfallback_ports = []\nstep_timeout_ms = 400\n"
            ),
        )
        .unwrap();
    }
    let mut daemons = Daemons(vec![
        daemon(&sn, &d, "login", &["--config", &p("login.toml"), "login-server"]),
        daemon(&sn, &d, "sn-a", &["--config", &p("sn-a.toml"), "supernode"]),
        daemon(&sn, &d, "sn-b", &["--config", &p("sn-b.toml"), "supernode"]),
    ]);
    wait_listening(&sn, SN_IP, 33030);
    wait_listening(&sn, SN_IP, 33033);
    wait_listening(&sn, SN_IP, 33043);

    let host = |ns: &str, who: &str, args: &[&str]| {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", ns, env!("CARGO_BIN_EXE_confab"), "host", "--config"])
            .arg(d.join(format!("host-{who}.toml")))
            .arg("--home")
            .arg(d.join(who))
            .args(args)
            .env("CONFAB_PASSWORD", PW)
            .env_remove("RUST_LOG");
        c
    };
    for (ns, who) in [(&ns_a, "alice"), (&ns_b, "bob")] {
        let out = host(ns, who, &["register", who]).output().unwrap();
        assert!(out.status.success(), "register {who}: {}", String::from_utf8_lossy(&out.stderr));
    }
    let (to_bob, to_alice) = (d.join("to-bob.wav"), d.join("to-alice.wav"));
    let (heard_by_bob, heard_by_alice) = (d.join("bob.wav"), d.join("alice.wav"));
    audio::write_wav(&to_bob, &audio::tone(&[440.0, 1000.0], 12.0, 12_000.0)).unwrap();
    audio::write_wav(&to_alice, &audio::tone(&[600.0], 12.0, 12_000.0)).unwrap();
    let online = host(
        &ns_b,
        "bob",
        &["online", "bob", "--json", "--wait", "90s", "--play", &p("to-alice.wav"), "--record", &p("bob.wav")],
    )
    .stdout(Stdio::piped())
    .stderr(Stdio::null())
    .spawn()
    .unwrap();
    common::testbed::until_online("bob", || {
        host(&ns_a, "alice", &["find", "--as", "alice", "bob", "--json"]).output().unwrap()
    });
    let mut call = host(&ns_a, "alice", &alice_calls_bob("9s", &p("to-bob.wav"), &p("alice.wav")))
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    // Alice's events as they come.
    let (tx, events) = std::sync::mpsc::channel::<String>();
    let stdout = call.stdout.take().unwrap();
    let reader = std::thread::spawn(move || {
        let mut all = Vec::new();
        for line in std::io::BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = tx.send(line.clone());
            all.push(line);
        }
        all
    });
    let connected = loop {
        let line = events.recv_timeout(Duration::from_secs(30)).expect("alice's call never connected");
        if line.contains("\"state\":\"connected\"") {
            break line;
        }
    };
    assert!(connected.contains("relayed_udp"), "{connected}");
    std::thread::sleep(Duration::from_secs(2));
    // The relaying super node (Alice's) dies.
    let mut sn_a = daemons.0.remove(1);
    sn_a.kill().unwrap();
    let _ = sn_a.wait();

    assert!(call.wait().unwrap().success(), "alice's call failed");
    let alice_lines = reader.join().unwrap();
    let bob_out = online.wait_with_output().unwrap();
    let bob_lines: Vec<String> = String::from_utf8_lossy(&bob_out.stdout).lines().map(str::to_owned).collect();
    assert!(bob_out.status.success(), "{bob_lines:?}");
    let report = |lines: &[String]| -> serde_json::Value {
        lines
            .iter()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .find(|e| e["event"] == "report")
            .unwrap_or_default()
    };
    let (ra, rb) = (report(&alice_lines), report(&bob_lines));
    eprintln!("failover: alice {ra}\nbob {rb}");
    assert!(
        alice_lines.iter().any(|l| l.contains("\"event\":\"reconnected\"") && l.contains("sn-b")),
        "{alice_lines:?}"
    );
    for (who, r, wav, tones) in
        [("alice", &ra, &heard_by_alice, &[600.0f32][..]), ("bob", &rb, &heard_by_bob, &[440.0f32, 1000.0][..])]
    {
        assert_eq!(r["media"]["path_restarts"], 1, "{who}: {r}");
        // The call lasted 9 s after connecting; the gap of the failover is at most 5 s.
        let received = r["media"]["received"].as_u64().unwrap();
        assert!(received >= 200, "{who} received {received} frames: {r}");
        // The last two seconds, well after the failover, carry the other side's voice.
        let heard = audio::read_wav(wav).unwrap();
        let tail = &heard[heard.len().saturating_sub(2 * 48_000)..];
        for f in tones {
            assert!(audio::tone_strength(tail, *f) > 0.2, "{who} does not hear {f} Hz after the failover");
        }
    }
}
