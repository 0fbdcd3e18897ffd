//! A `confab` network in network namespaces, and calls placed on it with the real binary:
//! the shared part of the call testbeds (root, `ip`, `nft`).
//!
//! The super nodes' namespace is the simulated internet: `SN_IP` on its loopback, one
//! link per public host or home router on its own 198.18.`net`.0/24, and forwarding
//! between them. A home router's LAN ports are each a link of their own,
//! 10.`lan`.`port`.0/24.

use super::link::Link;
use super::netns::{self, run};
use super::shape::Shape;
use serde_json::Value;
use std::path::PathBuf;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

/// The password of every test account.
pub const PW: &str = "correct horse battery";
/// Where `confab up` listens, on the super nodes' namespace's loopback.
pub const SN_IP: &str = "198.18.0.1";

/// The `confab` binary a testbed runs: this build's, or the one `TESTBED_CONFAB_BIN` names (not
/// `CONFAB_…`: those are confab's settings), an optimised build for a measurement of CPU time.
pub fn confab_bin() -> String {
    std::env::var("TESTBED_CONFAB_BIN").unwrap_or_else(|_| env!("CARGO_BIN_EXE_confab").to_owned())
}

/// How a host reaches the internet.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Router {
    /// No router: the host has a public address.
    None,
    /// Port-preserving masquerade, unsolicited inbound dropped.
    Cone,
    /// Masquerade with `fully-random` ports: a new mapping per destination.
    Symmetric,
    /// A cone NAT whose firewall drops all UDP.
    NoUdp,
}

/// Namespaces, links and the `confab up` process of one testbed, torn down on drop.
pub struct Testbed {
    prefix: String,
    namespaces: Vec<String>,
    network: Option<Child>,
    /// Emulated links, stopped before the namespaces go.
    links: Vec<Link>,
    /// The shape of the next uplink made, if it is to be emulated.
    next_uplink: Option<Shape>,
    /// The testbed's files: the network's data folder, host homes, WAVs, router rules.
    pub dir: tempfile::TempDir,
}

impl Testbed {
    /// An empty testbed whose namespaces and interfaces are named after `prefix`
    /// (at most 8 characters, so that interface names fit in 15).
    pub fn new(prefix: String) -> Self {
        assert!(prefix.len() <= 8, "{prefix}: too long for interface names");
        Testbed {
            prefix,
            namespaces: vec![],
            network: None,
            links: vec![],
            next_uplink: None,
            dir: tempfile::tempdir().unwrap(),
        }
    }

    /// Creates namespace `<prefix>-<name>`.
    pub fn add_ns(&mut self, name: &str) -> String {
        netns::add_ns(&self.prefix, name, &mut self.namespaces)
    }

    /// A veth pair between two namespaces: (namespace, interface, address/prefix) each;
    /// `tag` (at most 6 characters) names the pair while it is moved.
    pub fn link(&self, a: (&str, &str, &str), b: (&str, &str, &str), tag: &str) {
        netns::link(&self.prefix, a, b, tag)
    }

    /// The next public host's or home router's link to the internet goes through the link
    /// emulator with `shape` each way (seeded from its network number) instead of a veth.
    /// Always the emulator, never `tc netem` where the kernel has it: runs on different
    /// machines then see the same link.
    pub fn emulate_next_uplink(&mut self, shape: Shape) {
        self.next_uplink = Some(shape);
    }

    /// The emulated links made so far, in order.
    pub fn links(&self) -> &[Link] {
        &self.links
    }

    /// An uplink: the emulator if one was asked for, a veth pair otherwise.
    fn uplink(&mut self, internet: (&str, &str, &str), home: (&str, &str, &str), net: u8) {
        match self.next_uplink.take() {
            Some(shape) => self.links.push(Link::new(internet, home, shape, u64::from(net))),
            None => self.link(internet, home, internet.1),
        }
    }

    /// The super nodes' namespace: `SN_IP` on its loopback, forwarding on.
    pub fn internet(&mut self) -> String {
        let sn = self.add_ns("sn");
        run(&["ip", "-n", &sn, "addr", "add", &format!("{SN_IP}/32"), "dev", "lo"]);
        run(&["ip", "netns", "exec", &sn, "sysctl", "-qw", "net.ipv4.ip_forward=1"]);
        sn
    }

    /// Host namespace `name` with public address 198.18.`net`.2 on its own link to `sn`.
    pub fn public_host(&mut self, sn: &str, name: &str, net: u8) -> String {
        let host = self.add_ns(name);
        let (gw, me) = (format!("198.18.{net}.1/24"), format!("198.18.{net}.2/24"));
        self.uplink((sn, &format!("p{net}"), &gw), (&host, "eth0", &me), net);
        run(&["ip", "-n", &host, "route", "add", "default", "via", &format!("198.18.{net}.1")]);
        host
    }

    /// Router namespace `name` of kind `router` (not `None`), public address 198.18.`net`.2
    /// on interface `out`, and one host namespace per entry of `hosts`, each on a LAN port
    /// of its own: interface `in<i>` with 10.`lan`.`i`.1/24, the host at 10.`lan`.`i`.2
    /// (i from 1). Returns the hosts' namespaces.
    pub fn home_router(
        &mut self,
        sn: &str,
        name: &str,
        router: Router,
        net: u8,
        lan: u8,
        hosts: &[&str],
    ) -> Vec<String> {
        assert_ne!(router, Router::None, "a router needs a kind");
        let nat = self.add_ns(name);
        let (gw, out) = (format!("198.18.{net}.1/24"), format!("198.18.{net}.2/24"));
        self.uplink((sn, &format!("o{net}"), &gw), (&nat, "out", &out), net);
        run(&["ip", "-n", &nat, "route", "add", "default", "via", &format!("198.18.{net}.1")]);
        run(&["ip", "netns", "exec", &nat, "sysctl", "-qw", "net.ipv4.ip_forward=1"]);
        let namespaces = hosts
            .iter()
            .zip(1u8..)
            .map(|(h, i)| {
                let host = self.add_ns(h);
                let (port_ip, me) = (format!("10.{lan}.{i}.1/24"), format!("10.{lan}.{i}.2/24"));
                self.link((&nat, &format!("in{i}"), &port_ip), (&host, "eth0", &me), &format!("i{net}x{i}"));
                run(&["ip", "-n", &host, "route", "add", "default", "via", &format!("10.{lan}.{i}.1")]);
                host
            })
            .collect();
        let rules = self.dir.path().join(format!("{name}.nft"));
        netns::home_router(&nat, router == Router::Symmetric, router == Router::NoUdp, &rules);
        namespaces
    }

    /// Gives router `name` (made by [`Testbed::home_router`] on `net`) and its first LAN
    /// port's host `host` IPv6 as an ISP would: global addresses from 2001:2::/48 (RFC
    /// 5180's benchmarking range), routed without NAT, behind the router's stateful
    /// firewall (its `inet` rules drop unsolicited inbound on IPv6 too). The link is
    /// 2001:2:0:`net`00::/64, the LAN 2001:2:0:`net`01::/64, the host ::2 there.
    pub fn add_ipv6(&self, sn: &str, name: &str, net: u8, host: &str) {
        let nat = format!("{}-{name}", self.prefix);
        let (link, lan) = (u16::from(net) << 8, (u16::from(net) << 8) | 1);
        let addr = |prefix: u16, me: u8| format!("2001:2:0:{prefix:x}::{me}");
        for ns in [sn, &nat] {
            run(&["ip", "netns", "exec", ns, "sysctl", "-qw", "net.ipv6.conf.all.forwarding=1"]);
        }
        // `nodad`: the addresses are usable at once, not after duplicate detection.
        let add = |ns: &str, a: String, dev: &str| {
            run(&["ip", "-n", ns, "-6", "addr", "add", &format!("{a}/64"), "dev", dev, "nodad"])
        };
        add(sn, addr(link, 1), &format!("o{net}"));
        add(&nat, addr(link, 2), "out");
        add(&nat, addr(lan, 1), "in1");
        add(host, addr(lan, 2), "eth0");
        run(&["ip", "-n", sn, "-6", "route", "add", &format!("2001:2:0:{:x}::/56", link), "via", &addr(link, 2)]);
        run(&["ip", "-n", &nat, "-6", "route", "add", "default", "via", &addr(link, 1)]);
        run(&["ip", "-n", host, "-6", "route", "add", "default", "via", &addr(lan, 1)]);
    }

    /// The network's data folder (keys, `host.toml`).
    pub fn data(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    /// Starts `confab up` (three super nodes, fixture keys) in namespace `sn` and waits
    /// until it reports that it listens.
    pub fn start_network(&mut self, sn: &str) {
        self.start_network_with(sn, &[]);
    }

    /// `start_network` with settings for `confab up` (`CONFAB_…` variables: name, value).
    pub fn start_network_with(&mut self, sn: &str, settings: &[(&str, &str)]) {
        super::seed_data(&self.data(), 3, "sn");
        let mut up = Command::new("ip")
            .args(["netns", "exec", sn, &confab_bin(), "up", "--json", "--bind", SN_IP, "--data"])
            .arg(self.data())
            .envs(settings.iter().copied())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let line = super::first_line(&mut up, Duration::from_secs(60));
        self.network = Some(up);
        let info: Value = serde_json::from_str(&line).unwrap_or_else(|e| panic!("confab up: {e}: {line:?}"));
        assert_eq!(info["login_server"], format!("{SN_IP}:33030"), "{info}");
    }

    /// `confab host <args>` in namespace `ns` with home folder `home` (under the
    /// testbed's folder), the test password and short ladder steps.
    pub fn host_cmd(&self, ns: &str, home: &str, args: &[&str]) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", ns, &confab_bin(), "host", "--config"])
            .arg(self.data().join("host.toml"))
            .arg("--home")
            .arg(self.dir.path().join(home))
            .args(args)
            .env("CONFAB_PASSWORD", PW)
            .env("CONFAB_HOST__STEP_TIMEOUT_MS", "400")
            .env_remove("RUST_LOG");
        c
    }

    /// Runs `confab host <args>` to its end (killed and failing the test past `limit`).
    pub fn host(&self, ns: &str, home: &str, args: &[&str], limit: Duration) -> Output {
        let child = self.host_cmd(ns, home, args).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
        wait_within(child, limit, &format!("confab host {args:?} in {ns}"))
    }

    /// Registers `user` from namespace `ns`, with a home folder named after the user.
    pub fn register(&self, ns: &str, user: &str) {
        let out = self.host(ns, user, &["register", user], Duration::from_secs(30));
        assert!(out.status.success(), "register {user}: {}", String::from_utf8_lossy(&out.stderr));
    }

    /// Runs `find` as `me` until `whom` is online (30 s at most).
    pub fn until_online(&self, ns: &str, me: &str, whom: &str) {
        until_online(whom, || self.host(ns, me, &["find", "--as", me, whom, "--json"], Duration::from_secs(20)));
    }
}

/// Runs `find` (a `confab host find --json` for `whom`) until `whom` is online (30 s at most).
pub fn until_online(whom: &str, find: impl Fn() -> Output) {
    let online = format!("{{\"user\":\"{whom}\",\"status\":\"online\"");
    let t = Instant::now();
    loop {
        let out = find();
        if out.stdout.starts_with(online.as_bytes()) {
            return;
        }
        assert!(
            t.elapsed() < Duration::from_secs(30),
            "{whom} never came online: {}",
            String::from_utf8_lossy(&out.stdout)
        );
        std::thread::sleep(Duration::from_millis(300));
    }
}

impl Drop for Testbed {
    fn drop(&mut self) {
        if let Some(mut c) = self.network.take() {
            let _ = Command::new("kill").args(["-TERM", &c.id().to_string()]).status();
            let _ = c.wait();
        }
        self.links.clear();
        for ns in &self.namespaces {
            let _ = Command::new("ip").args(["netns", "del", ns]).output();
        }
    }
}

/// A child killed (and reaped) if the test fails before waiting for it.
struct KilledOnDrop(Option<Child>);

impl Drop for KilledOnDrop {
    fn drop(&mut self) {
        if let Some(c) = &mut self.0 {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Waits for a child whose stdout and stderr are piped; past `limit` it is killed and
/// the test fails, naming `what` (a test must never hang, even when the program does).
pub fn wait_within(mut child: Child, limit: Duration, what: &str) -> Output {
    use std::io::Read;
    let drain = |mut r: Box<dyn Read + Send>| {
        std::thread::spawn(move || {
            let mut v = Vec::new();
            let _ = r.read_to_end(&mut v);
            v
        })
    };
    let stdout = drain(Box::new(child.stdout.take().expect("stdout is piped")));
    let stderr = drain(Box::new(child.stderr.take().expect("stderr is piped")));
    let deadline = Instant::now() + limit;
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            let err = stderr.join().unwrap_or_default();
            panic!("{what} did not end within {limit:?}: {}", String::from_utf8_lossy(&err));
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    Output { status, stdout: stdout.join().unwrap_or_default(), stderr: stderr.join().unwrap_or_default() }
}

/// What one side of a call reported.
#[derive(Debug, Clone)]
pub struct Side {
    /// Its user.
    pub user: String,
    /// The path it named when the call connected (`None`: it never connected).
    pub path: Option<String>,
    /// Its `report` event (`media`: path, frames, loss, `setup_ms`).
    pub report: Value,
    /// The WAV it recorded, and the one the other side played to it.
    heard: PathBuf,
    sent_to_it: PathBuf,
    /// Its exit status and output, for messages.
    success: bool,
    output: String,
}

impl Side {
    /// From the side's JSON lines: the first `connected` event's path, and the report.
    fn parse(user: &str, out: &Output, heard: PathBuf, sent_to_it: PathBuf) -> Self {
        let lines = String::from_utf8_lossy(&out.stdout);
        let events: Vec<Value> = lines.lines().filter_map(|l| serde_json::from_str(l).ok()).collect();
        let path =
            events.iter().find(|e| e["state"] == "connected").and_then(|e| e["path"].as_str()).map(str::to_owned);
        let report = events.iter().find(|e| e["event"] == "report").cloned().unwrap_or_default();
        let output = format!("{lines}\n{}", String::from_utf8_lossy(&out.stderr));
        Side { user: user.into(), path, report, heard, sent_to_it, success: out.status.success(), output }
    }

    /// The path, or `none` when it never connected.
    pub fn path_label(&self) -> &str {
        self.path.as_deref().unwrap_or("none")
    }

    /// From the answer to media flowing, as the side measured it.
    pub fn setup_ms(&self) -> Option<u64> {
        self.report["media"]["setup_ms"].as_u64()
    }

    /// The path media took at the end of the call (a better one may have replaced the
    /// first), or `none`.
    pub fn final_path(&self) -> &str {
        self.report["media"]["path"].as_str().unwrap_or("none")
    }

    /// From the answer to the path media took at the end.
    pub fn path_ms(&self) -> Option<u64> {
        self.report["media"]["path_ms"].as_u64()
    }

    /// Fails the test unless this side connected, received and lost frames of a `secs`
    /// call within `bounds`, and its recording carries `tones` and correlates with what
    /// the other side played.
    fn assert_heard(&self, secs: u32, bounds: Hearing, tones: &[f32]) {
        use confab::call::audio;
        let (who, r) = (&self.user, &self.report);
        assert!(self.success && self.path.is_some(), "{who} never connected: {}", self.output);
        let (received, lost) = (r["media"]["received"].as_u64().unwrap(), r["media"]["lost"].as_u64().unwrap());
        let frames = f64::from(secs) * 50.0;
        assert!(received as f64 >= bounds.received_share_min * frames, "{who} received {received} frames: {r}");
        // A short call may lose one frame whatever the share.
        let lost_max = (bounds.lost_share_max * received as f64).max(1.0);
        assert!(lost as f64 <= lost_max, "{who} lost {lost} of {received}: {r}");
        let heard = audio::read_wav(&self.heard).unwrap();
        let heard = &heard[heard.len().min(9600)..];
        for f in tones {
            // The figures that tell a gap (silence), a wrong stream and noise apart, should
            // this ever fail: every tone's strength and the side's report.
            let strength = audio::tone_strength(heard, *f);
            let all: Vec<String> =
                tones.iter().map(|t| format!("{t} Hz {:.3}", audio::tone_strength(heard, *t))).collect();
            let silent = heard.chunks(960).filter(|c| c.iter().all(|x| x.unsigned_abs() < 64)).count();
            assert!(
                strength > 0.2,
                "{who} does not hear {f} Hz ({}; {silent} of {} 20 ms frames silent): {}",
                all.join(", "),
                heard.len().div_ceil(960),
                r["media"]
            );
        }
        let sent = audio::read_wav(&self.sent_to_it).unwrap();
        let (_, corr) = audio::best_correlation(&sent[..48_000], heard, 48_000);
        assert!(corr > 0.8, "{who}: correlation {corr}");
    }
}

/// How much of a call each side must have received.
#[derive(Debug, Clone, Copy)]
pub struct Hearing {
    /// Frames received, as a share of the call's length (50 a second).
    pub received_share_min: f64,
    /// Frames lost, as a share of those received (one is always allowed).
    pub lost_share_max: f64,
}

/// Both sides of a finished call.
#[derive(Debug, Clone)]
pub struct Call {
    /// The side that placed it.
    pub caller: Side,
    /// The side that answered.
    pub callee: Side,
    secs: u32,
}

impl Call {
    /// Fails the test unless both sides connected, each received and lost frames within
    /// `bounds`, and each one's recording carries the other's tones.
    pub fn assert_both_heard(&self, bounds: Hearing) {
        self.caller.assert_heard(self.secs, bounds, &CALLEE_TONES);
        self.callee.assert_heard(self.secs, bounds, &CALLER_TONES);
    }
}

/// Whom a call involves: the namespace the host runs in and its user (who is also the
/// name of its home folder).
pub type Party<'a> = (&'a str, &'a str);

/// The caller's tones and the callee's (each side must hear the other's).
const CALLER_TONES: [f32; 2] = [440.0, 1000.0];
const CALLEE_TONES: [f32; 1] = [600.0];

/// A call with the real binary: `callee` waits online (answering automatically), and
/// `caller` finds it, calls, and hangs up `secs` seconds after connecting; both play
/// tones and record. Fails the test only if a process outlives its bound; what each
/// side reported is returned, to be checked with [`Call::assert_both_heard`].
pub fn place_call(bed: &Testbed, caller: Party<'_>, callee: Party<'_>, secs: u32) -> Call {
    use confab::call::audio;
    let ((ns_a, a), (ns_b, b)) = (caller, callee);
    let f = |name: &str| bed.dir.path().join(format!("{a}-{b}-{name}.wav"));
    let (to_b, to_a, heard_by_b, heard_by_a) = (f("to-callee"), f("to-caller"), f("callee-heard"), f("caller-heard"));
    // A second more than the call, so neither side runs out of voice before it ends.
    audio::write_wav(&to_b, &audio::tone(&CALLER_TONES, secs as f32 + 1.0, 12_000.0)).unwrap();
    audio::write_wav(&to_a, &audio::tone(&CALLEE_TONES, secs as f32 + 1.0, 12_000.0)).unwrap();
    let (to_a_s, heard_by_b_s) = (to_a.to_str().unwrap(), heard_by_b.to_str().unwrap());
    let online = bed
        .host_cmd(ns_b, b, &["online", b, "--json", "--wait", "60s", "--play", to_a_s, "--record", heard_by_b_s])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut online = KilledOnDrop(Some(online));
    bed.until_online(ns_a, a, b);
    let duration = format!("{secs}s");
    let (play, record) = (to_b.to_str().unwrap(), heard_by_a.to_str().unwrap());
    let args = ["call", "--as", a, b, "--duration", &duration, "--json", "--play", play, "--record", record];
    let out = bed.host(ns_a, a, &args, Duration::from_secs(60));
    let b_out = wait_within(online.0.take().unwrap(), Duration::from_secs(70), &format!("{b} online"));
    Call { caller: Side::parse(a, &out, heard_by_a, to_a), callee: Side::parse(b, &b_out, heard_by_b, to_b), secs }
}
