//! The operators' view: the Grafana dashboards in dashboards/, the Prometheus
//! configuration and alert rules in config/, checked with promtool and against a real
//! Prometheus scraping a real network that carries every kind of traffic a panel shows.

mod common;

use serde_json::Value;
use std::collections::HashSet;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

const PW: &str = "correct horse battery";

/// What Grafana's built-in interval variables become: wide enough that every rate()
/// window spans the whole load of the test, which is over within a minute.
const BUILTINS: [(&str, &str); 6] = [
    ("${__rate_interval}", "1m"),
    ("$__rate_interval", "1m"),
    ("${__interval}", "1m"),
    ("$__interval", "1m"),
    ("${__range}", "5m"),
    ("$__range", "5m"),
];

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// A child process killed when the test ends, however it ends.
struct Reaper(Child);

impl Drop for Reaper {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn confab() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_confab"));
    c.env_remove("RUST_LOG").env("CONFAB_PASSWORD", PW);
    c
}

fn runs(bin: &str) -> bool {
    Command::new(bin).arg("--version").output().map(|o| o.status.success()).unwrap_or(false)
}

/// Skips (or fails, in CI) when Prometheus's binaries are missing.
fn missing_prometheus() -> bool {
    common::missing(
        "prometheus and promtool (Debian: apt-get install prometheus)",
        runs("prometheus") && runs("promtool"),
    )
}

/// Every dashboard file with its parsed JSON.
fn dashboards() -> Vec<(String, Value)> {
    let mut out: Vec<(String, Value)> = std::fs::read_dir(repo().join("dashboards"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "json"))
        .map(|p| {
            let text = std::fs::read_to_string(&p).unwrap();
            let v = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
            (p.file_name().unwrap().to_string_lossy().into_owned(), v)
        })
        .collect();
    out.sort_by(|a, b| a.0.cmp(&b.0));
    out
}

/// Panels, those nested in collapsed rows included.
fn panels(d: &Value) -> Vec<&Value> {
    let mut out = Vec::new();
    for p in d["panels"].as_array().map(Vec::as_slice).unwrap_or_default() {
        out.push(p);
        out.extend(p["panels"].as_array().map(Vec::as_slice).unwrap_or_default());
    }
    out
}

/// The template variables a query may use (the data source variable aside).
fn variables(d: &Value) -> Vec<&Value> {
    d["templating"]["list"].as_array().map(Vec::as_slice).unwrap_or_default().iter().collect()
}

/// Replaces Grafana's variables by what Prometheus accepts: template variables by `.*`
/// (so they must be used with `=~`), intervals by fixed windows.
fn substitute(expr: &str, d: &Value) -> String {
    let mut s = expr.to_owned();
    for (from, to) in BUILTINS {
        s = s.replace(from, to);
    }
    let mut names: Vec<&str> = variables(d).iter().filter_map(|v| v["name"].as_str()).collect();
    // Longest first, so `$node` does not eat the start of a `$nodes`.
    names.sort_by_key(|n| std::cmp::Reverse(n.len()));
    for n in names {
        s = s.replace(&format!("${{{n}}}"), ".*").replace(&format!("${n}"), ".*");
    }
    s
}

/// (dashboard, panel title, expr) for every target of every panel.
fn queries(all: &[(String, Value)]) -> Vec<(String, String, String)> {
    let mut out = Vec::new();
    for (file, d) in all {
        for p in panels(d).into_iter().filter(|p| p["type"] != "row") {
            for t in p["targets"].as_array().map(Vec::as_slice).unwrap_or_default() {
                let expr = t["expr"].as_str().unwrap_or_default().to_owned();
                out.push((file.clone(), p["title"].as_str().unwrap_or_default().to_owned(), expr));
            }
        }
    }
    out
}

/// Every `confab_…` name in the Rust sources.
fn metric_names_in_source() -> HashSet<String> {
    fn walk(dir: &Path, names: &mut HashSet<String>) {
        for e in std::fs::read_dir(dir).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                walk(&p, names);
            } else if p.extension().is_some_and(|e| e == "rs") {
                let text = std::fs::read_to_string(&p).unwrap();
                names.extend(metric_names(&text));
            }
        }
    }
    let mut names = HashSet::new();
    walk(&repo().join("src"), &mut names);
    names
}

fn metric_names(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut rest = text;
    while let Some(i) = rest.find("confab_") {
        let tail = &rest[i..];
        let end = tail.find(|c: char| !(c.is_ascii_alphanumeric() || c == '_')).unwrap_or(tail.len());
        out.push(tail[..end].to_owned());
        rest = &tail[end..];
    }
    out
}

#[test]
fn dashboards_parse_and_every_panel_queries_a_metric_that_exists() {
    let all = dashboards();
    let files: Vec<&str> = all.iter().map(|(f, _)| f.as_str()).collect();
    for want in ["cluster-overview.json", "global-index.json", "login-server.json", "relays.json"] {
        assert!(files.contains(&want), "dashboards/{want} is missing: {files:?}");
    }
    let known = metric_names_in_source();
    let mut uids = HashSet::new();
    for (file, d) in &all {
        assert!(d["schemaVersion"].as_u64().unwrap_or(0) >= 36, "{file}: schemaVersion");
        assert!(d["title"].as_str().is_some_and(|t| !t.is_empty()), "{file}: title");
        assert!(uids.insert(d["uid"].as_str().unwrap_or_else(|| panic!("{file}: uid")).to_owned()), "{file}: uid");
        assert!(
            variables(d)
                .iter()
                .any(|v| v["name"] == "datasource" && v["type"] == "datasource" && v["query"] == "prometheus"),
            "{file}: a `datasource` variable of type datasource (prometheus)"
        );
        let mut ids = HashSet::new();
        for p in panels(d) {
            let title = p["title"].as_str().unwrap_or_default();
            assert!(
                ids.insert(p["id"].as_u64().unwrap_or_else(|| panic!("{file}: {title}: id"))),
                "{file}: {title}: id"
            );
            assert!(p["gridPos"]["w"].as_u64().is_some(), "{file}: {title}: gridPos");
            if p["type"] == "row" {
                continue;
            }
            assert_eq!(p["datasource"]["uid"], "${datasource}", "{file}: {title}: data source");
            let targets = p["targets"].as_array().unwrap_or_else(|| panic!("{file}: {title}: no targets"));
            assert!(!targets.is_empty(), "{file}: {title}: no targets");
            let mut refs = HashSet::new();
            for t in targets {
                assert!(refs.insert(t["refId"].as_str().unwrap_or_default()), "{file}: {title}: refId");
                let expr = t["expr"].as_str().unwrap_or_default();
                assert!(!expr.trim().is_empty(), "{file}: {title}: a target without expr");
                let plain = substitute(expr, d);
                assert!(!plain.contains('$'), "{file}: {title}: unknown variable in {expr}");
                for name in metric_names(expr) {
                    let base = ["_bucket", "_sum", "_count"]
                        .iter()
                        .find_map(|s| name.strip_suffix(s))
                        .filter(|b| known.contains(*b))
                        .unwrap_or(&name);
                    assert!(known.contains(base), "{file}: {title}: {name} is not a metric of src/");
                }
            }
        }
    }
    for f in ["dashboards/provisioning/datasources/prometheus.yml", "dashboards/provisioning/dashboards/confab.yml"] {
        assert!(repo().join(f).is_file(), "{f} is missing");
    }
}

#[test]
fn prometheus_config_and_alert_rules_pass_promtool() {
    if missing_prometheus() {
        return;
    }
    for args in [["check", "config", "config/prometheus.yml"], ["check", "rules", "config/alerts.yml"]] {
        let out = Command::new("promtool").args(args).current_dir(repo()).output().unwrap();
        assert!(
            out.status.success(),
            "promtool {}:\n{}{}",
            args.join(" "),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

/// A port nothing listens on (for a listener another process binds).
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// GET over HTTP/1.0, so the server closes the connection and never chunks the body.
fn http_get(addr: SocketAddr, path: &str) -> std::io::Result<(u16, String)> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    s.write_all(format!("GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").as_bytes())?;
    let mut out = String::new();
    s.read_to_string(&mut out)?;
    let status = out.split_whitespace().nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
    Ok((status, out.split_once("\r\n\r\n").map(|(_, b)| b.to_owned()).unwrap_or_default()))
}

fn urlencode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// A running Prometheus and its HTTP API.
struct Prometheus {
    addr: SocketAddr,
    log: PathBuf,
    _child: Reaper,
}

impl Prometheus {
    /// Starts Prometheus scraping `targets` (job, address) every second, with the alert
    /// rules of config/alerts.yml.
    fn start(dir: &Path, targets: &[(&str, SocketAddr)]) -> Self {
        let mut jobs = String::new();
        for (job, addr) in targets {
            jobs += &format!("  - job_name: {job}\n    static_configs:\n      - targets: [\"{addr}\"]\n");
        }
        let config = dir.join("prometheus.yml");
        std::fs::write(
            &config,
            format!(
                "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n  evaluation_interval: 1s\n\
                 rule_files:\n  - {:?}\nscrape_configs:\n{jobs}",
                repo().join("config/alerts.yml").display().to_string()
            ),
        )
        .unwrap();
        let log = dir.join("prometheus.log");
        // The port is free a moment before Prometheus binds it: if another process takes
        // it in between, Prometheus exits and gets another.
        for _ in 0..3 {
            let addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
            let mut child = Reaper(
                Command::new("prometheus")
                    .arg(format!("--config.file={}", config.display()))
                    .arg(format!("--storage.tsdb.path={}", dir.join("tsdb").display()))
                    .arg(format!("--web.listen-address={addr}"))
                    .stdout(Stdio::null())
                    .stderr(std::fs::File::create(&log).unwrap())
                    .spawn()
                    .unwrap(),
            );
            let started = Instant::now();
            loop {
                if matches!(http_get(addr, "/-/ready"), Ok((200, _))) {
                    return Self { addr, log, _child: child };
                }
                if child.0.try_wait().unwrap().is_some() {
                    break;
                }
                assert!(started.elapsed() < Duration::from_secs(20), "prometheus not ready within 20 s");
                std::thread::sleep(Duration::from_millis(100));
            }
        }
        panic!("prometheus exited three times:\n{}", std::fs::read_to_string(&log).unwrap_or_default());
    }

    /// A successful API answer's `data`.
    fn api(&self, path: &str) -> Value {
        let (status, body) = http_get(self.addr, path).unwrap_or_else(|e| panic!("GET {path}: {e}"));
        let v: Value = serde_json::from_str(&body).unwrap_or_else(|e| panic!("GET {path}: {e}: {status} {body}"));
        assert_eq!(v["status"], "success", "GET {path}: {status} {body}");
        v["data"].clone()
    }

    /// An instant query's samples as (labels, value).
    fn query(&self, expr: &str) -> Vec<(Value, f64)> {
        let data = self.api(&format!("/api/v1/query?query={}", urlencode(expr)));
        let value = |v: &Value| v[1].as_str().and_then(|s| s.parse::<f64>().ok()).unwrap_or(f64::NAN);
        match data["resultType"].as_str() {
            Some("vector") => {
                data["result"].as_array().unwrap().iter().map(|s| (s["metric"].clone(), value(&s["value"]))).collect()
            }
            Some("scalar") => vec![(Value::Null, value(&data["result"]))],
            other => panic!("{expr}: unexpected result type {other:?}"),
        }
    }

    /// Waits until every target has been scraped after `since` (Unix seconds).
    fn scraped_after(&self, since: f64) {
        let started = Instant::now();
        loop {
            let last = self.query("min(timestamp(up))").first().map(|s| s.1).unwrap_or(0.0);
            if last > since {
                return;
            }
            assert!(started.elapsed() < Duration::from_secs(10), "no scrape after {since} within 10 s");
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}

fn unix_now_f64() -> f64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs_f64()
}

/// A `confab up` network run by the binary, and the homes of its hosts.
struct Net {
    dir: PathBuf,
    data: PathBuf,
    info: Value,
}

impl Net {
    fn addr(&self, v: &Value) -> SocketAddr {
        v.as_str().unwrap_or_else(|| panic!("not an address: {v}")).parse().unwrap()
    }

    fn metrics(&self) -> SocketAddr {
        let url = self.info["metrics"].as_str().unwrap();
        url.trim_start_matches("http://").trim_end_matches("/metrics").parse().unwrap()
    }

    fn home(&self, user: &str) -> PathBuf {
        self.dir.join("homes").join(user)
    }

    /// A host command run from `user`'s home.
    fn host_cmd(&self, user: &str, args: &[&str]) -> Command {
        let mut c = confab();
        c.arg("host").arg("--config").arg(self.data.join("host.toml")).arg("--home").arg(self.home(user)).args(args);
        c
    }

    fn host(&self, user: &str, args: &[&str]) -> Output {
        self.host_cmd(user, args).output().unwrap()
    }

    /// A host command that must succeed.
    fn ok(&self, user: &str, args: &[&str]) -> String {
        let out = self.host(user, args);
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(out.status.success(), "{user} {args:?}: {stdout}{}", String::from_utf8_lossy(&out.stderr));
        stdout
    }

    /// A host command that must fail with the error `code`.
    fn fails(&self, c: &mut Command, code: &str) {
        let out = c.output().unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(!out.status.success() && stdout.contains(&format!("\"code\":\"{code}\"")), "want {code}: {stdout}");
    }

    /// One relay-only call of `alice` to `bob` (relay legs over TCP with `tcp`).
    fn relay_call(&self, tcp: bool) {
        let mut flags = vec!["--relay-only"];
        if tcp {
            flags.push("--relay-tcp");
        }
        let mut online = Reaper(
            self.host_cmd(
                "bob",
                &[&["online", "bob", "--answer", "auto", "--wait", "30s", "--json"], &flags[..]].concat(),
            )
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
        );
        let started = Instant::now();
        while !self
            .host("alice", &["find", "--as", "alice", "bob", "--json"])
            .stdout
            .starts_with(b"{\"user\":\"bob\",\"status\":\"online\"")
        {
            assert!(started.elapsed() < Duration::from_secs(20), "bob never came online");
            std::thread::sleep(Duration::from_millis(100));
        }
        let text =
            self.ok("alice", &[&["call", "--as", "alice", "bob", "--duration", "2s", "--json"], &flags[..]].concat());
        let path = if tcp { "relayed_tcp" } else { "relayed_udp" };
        let connected = text
            .lines()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .any(|e| e["state"] == "connected" && e["path"] == path);
        assert!(connected, "not connected over {path}: {text}");
        let started = Instant::now();
        while online.0.try_wait().unwrap().is_none() {
            assert!(started.elapsed() < Duration::from_secs(20), "bob's `online` did not exit after the call");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Datagrams no super node accepts, to its frame port and to every relay port, and
    /// bytes the login server cannot read: the rejection and drop panels need some.
    fn garbage(&self) {
        let udp = UdpSocket::bind("127.0.0.1:0").unwrap();
        for n in self.info["supernodes"].as_array().unwrap() {
            for port in ["udp", "relay"] {
                for len in [3usize, 40] {
                    udp.send_to(&vec![0xa5; len], self.addr(&n[port])).unwrap();
                }
            }
        }
        let mut s = TcpStream::connect(self.addr(&self.info["login_server"])).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
        s.write_all(&[0xff; 24]).unwrap();
        // The server closes the connection once it has counted the frame.
        let _ = s.read(&mut [0u8; 64]);
    }
}

/// A super node run as its own daemon (`confab supernode`), joining the network's cluster
/// through sn1: the index hands it every entry by anti-entropy, so the repair panels have
/// data, and Prometheus has a second target as it would in a deployment.
fn join_supernode(net: &Net, metrics: SocketAddr) -> Reaper {
    let d = net.dir.join("sn9");
    std::fs::create_dir_all(&d).unwrap();
    // A fixture key no other node uses: no RSA key generation in the test.
    for ext in ["key.pem", "pub.pem"] {
        std::fs::copy(common::fixtures().join(format!("login-1.{ext}")), d.join(format!("sn9.{ext}"))).unwrap();
    }
    let out = confab()
        .args(["keygen", "certify", "--name", "sn9", "--login-key"])
        .arg(net.data.join("login.key.pem"))
        .arg("--public-key")
        .arg(d.join("sn9.pub.pem"))
        .arg("--out")
        .arg(d.join("sn9.cred"))
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let seed = net.info["supernodes"][0]["gossip"].as_str().unwrap();
    std::fs::write(
        d.join("sn.toml"),
        format!(
            "[metrics]\nlisten = \"{metrics}\"\n\
             [supernode]\ntrusted_login_keys = [{:?}]\ncluster_secret = {:?}\nseeds = [\"{seed}\"]\n\
             [supernode.index]\ndirectory = [{:?}]\n\
             [[supernode.nodes]]\nname = \"sn9\"\nkey = \"sn9.key.pem\"\ncredential = \"sn9.cred\"\n\
             udp = \"127.0.0.1:0\"\ntcp = \"127.0.0.1:0\"\ngossip = \"127.0.0.1:0\"\n",
            net.data.join("login.pub.pem").display().to_string(),
            net.data.join("cluster.secret").display().to_string(),
            net.info["login_server"].as_str().unwrap(),
        ),
    )
    .unwrap();
    let child = confab()
        .arg("--config")
        .arg(d.join("sn.toml"))
        .arg("supernode")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(d.join("sn9.log")).unwrap())
        .spawn()
        .unwrap();
    let sn9 = Reaper(child);
    let started = Instant::now();
    loop {
        let body = http_get(metrics, "/metrics").map(|(_, b)| b).unwrap_or_default();
        if common::metric_sum(&body, "confab_cluster_members", &[]) >= 4.0 {
            break sn9;
        }
        if started.elapsed() > Duration::from_secs(20) {
            panic!("sn9 did not join the cluster:\n{}", std::fs::read_to_string(d.join("sn9.log")).unwrap_or_default());
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Everything hosts do that a panel counts: registering, logging in (and failing to),
/// lookups that find and that fall back to the login server's directory, buddy
/// operations, a search, relayed calls, garbage.
fn traffic(net: &Net, round: usize) {
    if round == 0 {
        for (i, user) in ["alice", "bob", "carol"].iter().enumerate() {
            std::fs::create_dir_all(net.home(user)).unwrap();
            std::fs::copy(common::fixtures().join(format!("host-{i}.key.pem")), net.home(user).join("host.key.pem"))
                .unwrap();
            net.ok(user, &["register", user, "--json"]);
        }
        net.ok("alice", &["profile", "set", "--city", "Tallinn", "--json"]);
        net.ok("alice", &["buddy", "--as", "alice", "add", "bob", "--message", "it's Alice", "--json"]);
        net.ok("bob", &["buddy", "--as", "bob", "accept", "alice", "--json"]);
    }
    net.ok("alice", &["login", "alice", "--json"]);
    net.fails(
        net.host_cmd("alice", &["login", "alice", "--json"]).env("CONFAB_PASSWORD", "not the password"),
        "wrong_password",
    );
    // Carol registered but never logged in: not in the index, so the lookup asks the
    // login server's directory.
    net.fails(&mut net.host_cmd("alice", &["find", "--as", "alice", "carol", "--json"]), "not_found");
    net.ok("bob", &["find", "--as", "bob", "alice", "--json"]);
    net.ok("alice", &["search", "--as", "alice", "tallinn", "--json"]);
    net.ok("bob", &["buddy", "--as", "bob", "list", "--json"]);
    net.fails(&mut net.host_cmd("alice", &["buddy", "--as", "alice", "add", "nobody-here", "--json"]), "unknown_user");
    net.garbage();
    net.relay_call(false);
    if round == 1 {
        net.relay_call(true);
    }
}

#[test]
fn every_dashboard_query_returns_data_from_a_live_network() {
    if missing_prometheus() {
        return;
    }
    let started = Instant::now();
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().to_owned();
    let data = dir.join("data");
    common::seed_data(&data, 3, "sn");
    let mut up = Reaper(
        confab()
            .args(["up", "--json", "--base-port", "0", "--metrics", "127.0.0.1:0", "--data"])
            .arg(&data)
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(dir.join("up.log")).unwrap())
            .spawn()
            .unwrap(),
    );
    let line = common::first_line(&mut up.0, Duration::from_secs(60));
    let info: Value = serde_json::from_str(&line).unwrap_or_else(|e| panic!("{e}: {line:?}"));
    let net = Net { dir: dir.clone(), data, info };
    let sn9_metrics: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let prom = Prometheus::start(&dir, &[("confab", net.metrics()), ("confab-supernode", sn9_metrics)]);
    eprintln!("network and prometheus up after {:?}", started.elapsed());

    // Round 0 makes every series; a scrape records them; round 1 adds to them, so rates
    // and histogram quantiles have something to compute from, not only series that exist.
    traffic(&net, 0);
    let _sn9 = join_supernode(&net, sn9_metrics);
    prom.scraped_after(unix_now_f64());
    traffic(&net, 1);
    // Two scrapes: a series round 1 made (the TCP call's path) needs two samples for rate().
    prom.scraped_after(unix_now_f64());
    prom.scraped_after(unix_now_f64());
    eprintln!("traffic done after {:?}", started.elapsed());

    let all = dashboards();
    let mut failures = Vec::new();
    let mut checked = 0;
    for (file, d) in &all {
        for v in variables(d).into_iter().filter(|v| v["type"] == "query") {
            let q = v["query"]["query"].as_str().or(v["query"].as_str()).unwrap_or_default();
            let inner = q.strip_prefix("label_values(").and_then(|s| s.strip_suffix(')')).unwrap_or_default();
            let Some((selector, label)) = inner.rsplit_once(',') else {
                failures.push(format!("{file}: variable {}: not label_values(selector, label): {q}", v["name"]));
                continue;
            };
            let selector = substitute(selector.trim(), d);
            let series = prom.api(&format!("/api/v1/series?match[]={}", urlencode(&selector)));
            let values: HashSet<&str> =
                series.as_array().unwrap().iter().filter_map(|s| s[label.trim()].as_str()).collect();
            eprintln!("{file}: ${} = {values:?}", v["name"].as_str().unwrap_or_default());
            if values.is_empty() {
                failures.push(format!("{file}: variable {}: {q} has no values", v["name"]));
            }
        }
    }
    for (file, title, expr) in queries(&all) {
        let d = &all.iter().find(|(f, _)| *f == file).unwrap().1;
        let q = substitute(&expr, d);
        let samples = prom.query(&q);
        checked += 1;
        let finite = samples.iter().filter(|s| s.1.is_finite()).count();
        let shown: Vec<String> = samples.iter().take(12).map(|(m, v)| format!("{m}={v}")).collect();
        eprintln!("{file} / {title}: {q}\n    {}", shown.join(" "));
        if samples.is_empty() {
            failures.push(format!("{file} / {title}: no data: {q}"));
        } else if finite == 0 {
            failures.push(format!("{file} / {title}: only NaN: {q}"));
        }
    }
    // The alert rules loaded, and every one evaluated against real series without error.
    let groups = prom.api("/api/v1/rules");
    let rules: Vec<&Value> =
        groups["groups"].as_array().unwrap().iter().flat_map(|g| g["rules"].as_array().unwrap()).collect();
    assert!(!rules.is_empty(), "no alert rules loaded: {groups}");
    for r in &rules {
        if r["health"] != "ok" {
            failures.push(format!("alert {}: health {} {}", r["name"], r["health"], r["lastError"]));
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {checked} queries or rules failed:\n{}\n(prometheus log: {})",
        failures.len(),
        failures.join("\n"),
        std::fs::read_to_string(&prom.log).unwrap_or_default().lines().rev().take(5).collect::<Vec<_>>().join("\n")
    );
    eprintln!("{checked} queries and {} alert rules checked in {:?}", rules.len(), started.elapsed());
}
