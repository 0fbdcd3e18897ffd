//! The `confab` binary as a user runs it: keygen, up, host register/login, a crash of
//! the login server, SIGTERM, and configuration errors.

mod common;

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const PW: &str = "correct horse battery";

fn confab() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_confab"));
    c.env_remove("RUST_LOG").env("CONFAB_PASSWORD", PW);
    c
}

/// Starts `confab up` on ephemeral ports and returns it with its JSON description.
fn up(data: &Path) -> (Child, serde_json::Value) {
    let mut child = confab()
        .args(["up", "--base-port", "0", "--metrics", "127.0.0.1:0", "--json", "--data"])
        .arg(data)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let line = common::first_line(&mut child, Duration::from_secs(60));
    let info: serde_json::Value = serde_json::from_str(&line).unwrap_or_else(|e| panic!("{e}: {line:?}"));
    (child, info)
}

fn host(data: &Path, home: &Path, args: &[&str]) -> std::process::Output {
    confab()
        .arg("host")
        .arg("--config")
        .arg(data.join("host.toml"))
        .arg("--home")
        .arg(home)
        .args(args)
        .output()
        .unwrap()
}

fn wait_exit(child: &mut Child, within: Duration) -> Option<std::process::ExitStatus> {
    let t = Instant::now();
    while t.elapsed() < within {
        if let Some(s) = child.try_wait().unwrap() {
            return Some(s);
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    None
}

#[test]
fn accounts_survive_a_crash_and_sigterm_stops_cleanly() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let home = dir.path().join("home");
    let (mut net, info) = up(&data);
    assert_eq!(info["supernodes"].as_array().unwrap().len(), 3);
    assert!(info["metrics"].as_str().unwrap().starts_with("http://127.0.0.1:"));
    let out = host(&data, &home, &["register", "zoe", "--json"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    // Kill -9: no chance to flush anything.
    net.kill().unwrap();
    net.wait().unwrap();

    let (mut net, info) = up(&data);
    let metrics =
        info["metrics"].as_str().unwrap().trim_start_matches("http://").trim_end_matches("/metrics").to_owned();
    // The three super nodes of `confab up` form one cluster; `supernode status` shows it.
    let t = Instant::now();
    let status = loop {
        let out = confab().args(["supernode", "status", "--json", "--metrics", &metrics]).output().unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        let s: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        if s["sn3"]["members"].as_array().map(Vec::len) == Some(3) || t.elapsed() > Duration::from_secs(20) {
            break s;
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    assert_eq!(status["sn1"]["members"].as_array().unwrap().len(), 3, "{status}");
    let out = confab().args(["supernode", "status", "--metrics", &metrics]).output().unwrap();
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("cluster members alive 3"),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    let out = host(&data, &home, &["login", "zoe", "--json"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let r: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    for k in ["user", "supernode", "transport", "public_addr", "nat", "credential_expires"] {
        assert!(!r[k].is_null(), "{k} missing in {r}");
    }
    assert_eq!(r["user"], "zoe");
    assert_eq!(r["transport"], "udp");

    let out = host(&data, &home, &["login", "zoe", "--json"]);
    assert!(out.status.success());
    let wrong = confab()
        .env("CONFAB_PASSWORD", "not the password")
        .arg("host")
        .arg("--config")
        .arg(data.join("host.toml"))
        .arg("--home")
        .arg(&home)
        .args(["login", "zoe", "--json"])
        .output()
        .unwrap();
    assert_eq!(wrong.status.code(), Some(1));
    let e: serde_json::Value = serde_json::from_slice(&wrong.stdout).unwrap();
    assert_eq!(e["code"], "wrong_password", "{e}");

    Command::new("kill").args(["-TERM", &net.id().to_string()]).status().unwrap();
    let status = wait_exit(&mut net, Duration::from_secs(10)).expect("confab up stops within 10 s of SIGTERM");
    assert!(status.success(), "{status:?}");
}

#[test]
fn keygen_writes_private_keys_0600_and_signs_super_nodes() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let login = dir.path().join("login");
    let out = confab().args(["keygen", "login", "--out"]).arg(&login).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let mode = std::fs::metadata(dir.path().join("login.key.pem")).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    let sn = dir.path().join("sn1");
    let out = confab()
        .args(["keygen", "supernode", "--name", "sn1", "--login-key"])
        .arg(dir.path().join("login.key.pem"))
        .arg("--out")
        .arg(&sn)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let cred = confab::keygen::read_credential(&dir.path().join("sn1.cred")).unwrap();
    let login_pub = confab::crypto::PublicKey::read_pem_file(&dir.path().join("login.pub.pem")).unwrap();
    let trusted = confab::crypto::TrustedKeys::new(vec![login_pub]);
    cred.verify(&trusted, confab::crypto::CredentialKind::SuperNode, confab::unix_now()).unwrap();
    assert_eq!(cred.subject, "sn1");
    let out =
        confab().args(["keygen", "login", "--bits", "1024", "--out"]).arg(dir.path().join("weak")).output().unwrap();
    assert!(!out.status.success(), "1024-bit keys are refused");
}

#[test]
fn a_bad_config_value_is_one_line_naming_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("bad.toml");
    std::fs::write(&cfg, "[supernode]\nidle_timeout_secs = \"soon\"\n").unwrap();
    let out = confab().arg("--config").arg(&cfg).args(["login-server"]).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert!(err.contains("supernode.idle_timeout_secs"), "{err}");
    let out = confab().env("CONFAB_HOST__STEP_TIMEOUT_MS", "0").args(["host", "login", "x"]).output().unwrap();
    assert!(String::from_utf8_lossy(&out.stderr).contains("host.step_timeout_ms"));
}

fn free_port() -> u16 {
    let t = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let p = t.local_addr().unwrap().port();
    drop(t);
    std::net::UdpSocket::bind(("127.0.0.1", p)).map(|_| p).unwrap_or_else(|_| free_port())
}

/// Waits until something accepts TCP connections on `port`.
fn wait_listening(port: u16, child: &mut Child) {
    let t = Instant::now();
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(child.try_wait().unwrap().is_none(), "daemon exited early");
        assert!(t.elapsed() < Duration::from_secs(20), "nothing listens on {port}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The deployment path of the README: keys made with keygen, separate login-server and
/// supernode processes (two super nodes in one process) configured from TOML files.
#[test]
fn separate_daemons_from_config_files() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let ok = |c: &mut Command| {
        let out = c.output().unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    };
    ok(confab().args(["keygen", "login", "--out"]).arg(d.join("login")));
    for sn in ["sn-a", "sn-b"] {
        ok(confab()
            .args(["keygen", "supernode", "--name", sn, "--login-key"])
            .arg(d.join("login.key.pem"))
            .arg("--out")
            .arg(d.join(sn)));
    }
    let (login, a, b, probe, metrics) = (free_port(), free_port(), free_port(), free_port(), free_port());
    std::fs::write(
        d.join("login.toml"),
        format!(
            "[login_server]\nlisten = \"127.0.0.1:{login}\"\nkey = \"login.key.pem\"\ndatabase = \"accounts.sqlite\"\n\
             [metrics]\nlisten = \"127.0.0.1:{metrics}\"\n"
        ),
    )
    .unwrap();
    std::fs::write(
        d.join("sn.toml"),
        format!(
            "[supernode]\ntrusted_login_keys = [\"login.pub.pem\"]\n\
             [[supernode.nodes]]\nname = \"sn-a\"\nkey = \"sn-a.key.pem\"\ncredential = \"sn-a.cred\"\n\
             udp = \"127.0.0.1:{a}\"\ntcp = \"127.0.0.1:{a}\"\nprobe_udp = \"127.0.0.1:{probe}\"\n\
             [[supernode.nodes]]\nname = \"sn-b\"\nkey = \"sn-b.key.pem\"\ncredential = \"sn-b.cred\"\n\
             udp = \"127.0.0.1:{b}\"\ntcp = \"127.0.0.1:{b}\"\n"
        ),
    )
    .unwrap();
    std::fs::write(
        d.join("host.toml"),
        format!(
            "[host]\nlogin_servers = [\"127.0.0.1:{login}\"]\ntrusted_login_keys = [\"login.pub.pem\"]\n\
             bootstrap = [\"127.0.0.1:{b}\"]\nfallback_ports = []\nhome = \"home\"\n"
        ),
    )
    .unwrap();
    let mut ls =
        confab().arg("--config").arg(d.join("login.toml")).arg("login-server").stderr(Stdio::null()).spawn().unwrap();
    let mut sn =
        confab().arg("--config").arg(d.join("sn.toml")).arg("supernode").stderr(Stdio::null()).spawn().unwrap();
    wait_listening(login, &mut ls);
    wait_listening(b, &mut sn);
    let host =
        |args: &[&str]| confab().arg("host").arg("--config").arg(d.join("host.toml")).args(args).output().unwrap();
    let out = host(&["register", "olga"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let out = host(&["login", "olga", "--json"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let r: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(r["supernode"], "sn-b", "the bootstrap node: {r}");
    assert_eq!(r["nat"], "none", "sn-b has no alternate port, so the probe went to sn-a: {r}");
    // The second login starts from the host cache, which now lists both super nodes.
    let cache: serde_json::Value =
        serde_json::from_slice(&std::fs::read(d.join("home/hostcache.json")).unwrap()).unwrap();
    assert!(cache.to_string().contains("sn-a"), "{cache}");
    let metrics = common::http_get_blocking(&format!("127.0.0.1:{metrics}"), "/metrics");
    assert!(metrics.contains("confab_login_requests_total"), "{metrics}");
    for mut c in [ls, sn] {
        Command::new("kill").args(["-TERM", &c.id().to_string()]).status().unwrap();
        let status = wait_exit(&mut c, Duration::from_secs(10)).expect("exits on SIGTERM");
        assert!(status.success(), "{status:?}");
    }
}

#[test]
fn daemons_log_json_on_request() {
    let dir = tempfile::tempdir().unwrap();
    let mut child = confab()
        .args(["--log-format", "json", "up", "--base-port", "0", "--metrics", "off", "--json", "--data"])
        .arg(dir.path().join("data"))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    common::first_line(&mut child, Duration::from_secs(60));
    Command::new("kill").args(["-TERM", &child.id().to_string()]).status().unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success());
    let logs = String::from_utf8_lossy(&out.stderr);
    let events: Vec<serde_json::Value> =
        logs.lines().map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}"))).collect();
    assert!(events.iter().any(|e| e["message"] == "super node listening" && e["node"] == "sn1"), "{logs}");
    assert!(events.iter().all(|e| e["level"].is_string() && e["timestamp"].is_string()), "{logs}");
}

#[test]
fn buddy_lists_from_the_command_line() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let (ann, ben) = (dir.path().join("ann"), dir.path().join("ben"));
    let (mut net, _) = up(&data);
    let json = |out: std::process::Output| -> serde_json::Value {
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        serde_json::from_slice(&out.stdout).unwrap()
    };
    json(host(&data, &ann, &["register", "ann", "--json"]));
    json(host(&data, &ben, &["register", "ben", "--json"]));

    let added = json(host(&data, &ann, &["buddy", "--as", "ann", "add", "ben", "--message", "it's Ann", "--json"]));
    assert_eq!(added["relation"], "requested", "{added}");
    let list = json(host(&data, &ben, &["buddy", "--as", "ben", "list", "--json"]));
    assert_eq!(list["requests"][0]["from"], "ann", "{list}");
    assert_eq!(list["requests"][0]["message"], "it's Ann");
    let accepted = json(host(&data, &ben, &["buddy", "--as", "ben", "accept", "ann", "--json"]));
    assert_eq!(accepted["relation"], "authorized");
    // Ann sees Ben authorized, offline since his last command, with his last-seen time.
    let list = json(host(&data, &ann, &["buddy", "--as", "ann", "list", "--json"]));
    let b = &list["buddies"][0];
    assert_eq!((b["user"].as_str(), b["relation"].as_str()), (Some("ben"), Some("authorized")), "{list}");
    assert_eq!(b["status"], "offline", "{list}");
    assert!(b["last_seen"].as_u64().unwrap() + 120 > confab::unix_now());

    // The status for the next logins, as JSON.
    assert_eq!(json(host(&data, &ann, &["status", "invisible", "--json"]))["status"], "invisible");

    // Mistakes are one clear line and a non-zero exit.
    let out = host(&data, &ann, &["buddy", "--as", "ann", "add", "nobody-here", "--json"]);
    assert_eq!(out.status.code(), Some(1));
    let e: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(e["code"], "unknown_user", "{e}");
    let out = host(&data, &ann, &["buddy", "--as", "ann", "accept", "ben", "--json"]);
    let e: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(e["code"], "not_pending", "{e}");

    net.kill().unwrap();
    net.wait().unwrap();
}

#[test]
fn chat_from_the_command_line_stores_reads_once_and_marks_strangers() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let (ann, ben, cat) = (dir.path().join("ann"), dir.path().join("ben"), dir.path().join("cat"));
    let (mut net, _) = up(&data);
    let json = |out: std::process::Output| -> serde_json::Value {
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        serde_json::from_slice(&out.stdout).unwrap()
    };
    for (home, user) in [(&ann, "ann"), (&ben, "ben"), (&cat, "cat")] {
        json(host(&data, home, &["register", user, "--json"]));
    }
    json(host(&data, &ann, &["buddy", "--as", "ann", "add", "ben", "--json"]));
    json(host(&data, &ben, &["buddy", "--as", "ben", "accept", "ann", "--json"]));

    // Ben is offline: both messages are stored; one is from a stranger.
    let sent = json(host(&data, &ann, &["chat", "--as", "ann", "send", "ben", "dinner at eight?", "--json"]));
    assert_eq!((sent["to"].as_str(), sent["status"].as_str()), (Some("ben"), Some("stored")), "{sent}");
    assert_eq!(sent["id"].as_str().map(str::len), Some(32));
    let from_cat = json(host(&data, &cat, &["chat", "--as", "cat", "send", "ben", "buy my course", "--json"]));
    assert_eq!(from_cat["status"], "stored", "{from_cat}");

    let read = json(host(&data, &ben, &["chat", "--as", "ben", "read", "--json"]));
    let got: Vec<(&str, &str, bool)> = read["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| (m["from"].as_str().unwrap(), m["text"].as_str().unwrap(), m["request"].as_bool().unwrap()))
        .collect();
    let mut got = got;
    got.sort();
    assert_eq!(got, vec![("ann", "dinner at eight?", false), ("cat", "buy my course", true)], "{read}");
    assert_eq!(read["messages"][0]["to"], "ben");
    assert_eq!(read["gaps"], serde_json::json!([]), "nothing lost on the way: {read}");
    // Read once: the next read has nothing new.
    let again = json(host(&data, &ben, &["chat", "--as", "ben", "read", "--json"]));
    assert_eq!(again["messages"].as_array().map(Vec::len), Some(0), "{again}");
    // Ann's history (read from her device, without logging in) says what she sent; ben's
    // receipts wait in the store for her next login.
    let h = json(host(&data, &ann, &["chat", "--as", "ann", "history", "ben", "--json"]));
    assert_eq!(h["messages"][0]["text"], "dinner at eight?", "{h}");
    assert_eq!((h["messages"][0]["from"].as_str(), h["messages"][0]["status"].as_str()), (Some("ann"), Some("stored")));
    // Her next command picks them up: the message was read.
    json(host(&data, &ann, &["chat", "--as", "ann", "read", "--json"]));
    let h = json(host(&data, &ann, &["chat", "--as", "ann", "history", "ben", "--json"]));
    assert_eq!(h["messages"][0]["status"], "read", "{h}");

    // Ann deletes her history and keeps her device's key: her numbers start at 1 again,
    // in a new stream, so ben takes the next message as new, not as a repeat of the first.
    let history = ann.join("chat-ann.sqlite");
    assert!(history.exists());
    for suffix in ["", "-wal", "-shm"] {
        let _ = std::fs::remove_file(format!("{}{suffix}", history.display()));
    }
    let sent = json(host(&data, &ann, &["chat", "--as", "ann", "send", "ben", "again, from a new history", "--json"]));
    assert_eq!(sent["status"], "stored", "{sent}");
    let read = json(host(&data, &ben, &["chat", "--as", "ben", "read", "--json"]));
    let texts: Vec<&str> = read["messages"].as_array().unwrap().iter().filter_map(|m| m["text"].as_str()).collect();
    assert_eq!(texts, vec!["again, from a new history"], "{read}");

    net.kill().unwrap();
    net.wait().unwrap();
}

#[test]
fn a_call_from_the_command_line_plays_and_records_wav() {
    use confab::call::audio;
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let (ann, ben) = (dir.path().join("ann"), dir.path().join("ben"));
    let (mut net, _) = up(&data);
    for (home, user) in [(&ann, "ann"), (&ben, "ben")] {
        assert!(host(&data, home, &["register", user, "--json"]).status.success());
    }
    let (play, record) = (dir.path().join("in.wav"), dir.path().join("out.wav"));
    audio::write_wav(&play, &audio::tone(&[440.0, 1000.0], 2.0, 12_000.0)).unwrap();
    let mut online = confab()
        .arg("host")
        .arg("--config")
        .arg(data.join("host.toml"))
        .arg("--home")
        .arg(&ben)
        .args(["online", "ben", "--json", "--wait", "30s", "--record"])
        .arg(&record)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    // Ben is online once his presence is in the index.
    common::testbed::until_online("ben", || host(&data, &ann, &["find", "--as", "ann", "ben", "--json"]));
    let out = host(
        &data,
        &ann,
        &["call", "--as", "ann", "ben", "--play", play.to_str().unwrap(), "--duration", "2s", "--json"],
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}\n{}", String::from_utf8_lossy(&out.stderr));
    let events: Vec<serde_json::Value> = text.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert!(events.iter().any(|e| e["state"] == "connected" && e["path"] == "direct"), "{text}");
    let report = events.iter().find(|e| e["event"] == "report").expect("a report at the end");
    assert!(report["media"]["sent"].as_u64().unwrap() >= 90, "{report}");
    let status = wait_exit(&mut online, Duration::from_secs(20)).expect("online exits when the call ends");
    assert!(status.success());
    let heard = audio::read_wav(&record).unwrap();
    assert!(heard.len() >= 48_000, "{} samples recorded", heard.len());
    let h = &heard[4800..];
    assert!(audio::tone_strength(h, 440.0) > 0.2 && audio::tone_strength(h, 1000.0) > 0.2, "the tones came through");
    net.kill().unwrap();
    net.wait().unwrap();
}

#[test]
fn group_chat_from_the_command_line() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let homes: Vec<_> = ["ann", "ben", "cyd"].iter().map(|u| dir.path().join(u)).collect();
    let (mut net, _) = up(&data);
    let json = |out: std::process::Output| -> serde_json::Value {
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        serde_json::from_slice(&out.stdout).unwrap()
    };
    for (u, home) in ["ann", "ben", "cyd"].iter().zip(&homes) {
        json(host(&data, home, &["register", u, "--json"]));
        // A first login publishes the user keys invites are sealed to.
        json(host(&data, home, &["chat", "--as", u, "read", "--json"]));
    }
    let made = json(host(
        &data,
        &homes[0],
        &["chat", "--as", "ann", "group", "create", "crew", "--members", "ben,cyd", "--json"],
    ));
    assert_eq!(made["group"], "crew", "{made}");
    assert_eq!(made["id"].as_str().map(str::len), Some(32), "{made}");
    let sent = json(host(&data, &homes[0], &["chat", "--as", "ann", "send", "@crew", "hello crew", "--json"]));
    assert_eq!(sent["to"], "@crew", "{sent}");
    assert_eq!(sent["status"], "stored", "nobody else is online: {sent}");

    // Ben reads it as a group message; then it is read.
    let read = json(host(&data, &homes[1], &["chat", "--as", "ben", "read", "--json"]));
    let m = &read["messages"][0];
    assert_eq!((m["from"].as_str(), m["text"].as_str()), (Some("ann"), Some("hello crew")), "{read}");
    assert_eq!((m["group"].as_str(), m["to"].as_str()), (Some("crew"), Some("@crew")), "{read}");
    let again = json(host(&data, &homes[1], &["chat", "--as", "ben", "read", "--json"]));
    assert_eq!(again["messages"].as_array().map(Vec::len), Some(0), "{again}");
    // Ben answers; Cyd, away all along, gets both, in order, in his history.
    json(host(&data, &homes[1], &["chat", "--as", "ben", "send", "@crew", "hi ann", "--json"]));
    json(host(&data, &homes[2], &["chat", "--as", "cyd", "read", "--json"]));
    let history = json(host(&data, &homes[2], &["chat", "--as", "cyd", "history", "@crew", "--json"]));
    let texts: Vec<_> = history["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| (m["from"].as_str().unwrap().to_owned(), m["text"].as_str().unwrap().to_owned()))
        .collect();
    assert_eq!(texts, [("ann".to_owned(), "hello crew".to_owned()), ("ben".to_owned(), "hi ann".to_owned())]);
    // A group nobody made is one clear error.
    let out = host(&data, &homes[2], &["chat", "--as", "cyd", "send", "@nope", "x", "--json"]);
    assert_eq!(out.status.code(), Some(1), "{}", String::from_utf8_lossy(&out.stdout));

    net.kill().unwrap();
    net.wait().unwrap();
}

/// Reads a child's stdout lines on a thread, as JSON values.
fn json_lines(child: &mut Child) -> std::sync::mpsc::Receiver<serde_json::Value> {
    use std::io::BufRead;
    let out = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(out).lines().map_while(Result::ok) {
            if let Ok(v) = serde_json::from_str(&line) {
                let _ = tx.send(v);
            }
        }
    });
    rx
}

/// Waits for a line that `f` accepts.
fn wait_line(
    rx: &std::sync::mpsc::Receiver<serde_json::Value>,
    within: Duration,
    f: impl Fn(&serde_json::Value) -> bool,
) -> serde_json::Value {
    let t = Instant::now();
    loop {
        let left = within.checked_sub(t.elapsed()).expect("no such line in time");
        let v = rx.recv_timeout(left).expect("no such line in time");
        if f(&v) {
            return v;
        }
    }
}

#[test]
fn send_file_killed_half_way_resumes_when_run_again() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let (ann, ben) = (dir.path().join("ann"), dir.path().join("ben"));
    let (mut net, _) = up(&data);
    for (home, user) in [(&ann, "ann"), (&ben, "ben")] {
        assert!(host(&data, home, &["register", user, "--json"]).status.success());
    }
    // Ben takes files from buddies only.
    assert!(host(&data, &ann, &["buddy", "--as", "ann", "add", "ben", "--json"]).status.success());
    assert!(host(&data, &ben, &["buddy", "--as", "ben", "accept", "ann", "--json"]).status.success());
    let inbox = dir.path().join("inbox");
    let mut online = confab()
        .arg("host")
        .arg("--config")
        .arg(data.join("host.toml"))
        .arg("--home")
        .arg(&ben)
        .args(["online", "ben", "--json", "--wait", "120s", "--files"])
        .arg(&inbox)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let events = json_lines(&mut online);
    let t = Instant::now();
    while !host(&data, &ann, &["find", "--as", "ann", "ben", "--json"])
        .stdout
        .starts_with(b"{\"user\":\"ben\",\"status\":\"online\"")
    {
        assert!(t.elapsed() < Duration::from_secs(20), "ben never came online");
        std::thread::sleep(Duration::from_millis(200));
    }
    const LEN: usize = 32 * 1024 * 1024;
    let file = dir.path().join("big.bin");
    let bytes: Vec<u8> = (0..LEN).map(|i| (i as u32).wrapping_mul(2_654_435_761).to_be_bytes()[2]).collect();
    std::fs::write(&file, &bytes).unwrap();
    let sha = {
        use sha2::Digest;
        hex::encode(sha2::Sha256::digest(&bytes))
    };
    let send = |file: &Path| {
        confab()
            .arg("host")
            .arg("--config")
            .arg(data.join("host.toml"))
            .arg("--home")
            .arg(&ann)
            .args(["send-file", "--as", "ann", "ben", "--json"])
            .arg(file)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap()
    };
    // SIGKILL once ben has a few MB.
    let mut first = send(&file);
    wait_line(&events, Duration::from_secs(60), |e| {
        e["event"] == "file" && e["state"] == "progress" && e["bytes"].as_u64().unwrap_or(0) >= 4 << 20
    });
    first.kill().unwrap();
    first.wait().unwrap();
    // Ben's side notices the sender is gone and keeps what it holds.
    wait_line(&events, Duration::from_secs(60), |e| e["event"] == "file" && e["state"] == "stopped");
    let transfers = ben.join("transfers");
    let folder = std::fs::read_dir(&transfers).unwrap().next().unwrap().unwrap().path();
    let held = confab::transfer::state::ReceiveState::open(&folder).unwrap().held().count();
    let total = confab::transfer::manifest::chunk_count(LEN as u64);
    assert!(held > 0 && held < total, "ben holds {held} of {total} chunks");
    // Run again: the same transfer, only the missing chunks.
    let second = send(&file).wait_with_output().unwrap();
    let text = String::from_utf8_lossy(&second.stdout);
    assert!(second.status.success(), "{text}");
    let r: serde_json::Value = serde_json::from_str(text.trim()).unwrap_or_else(|e| panic!("{e}: {text}"));
    assert_eq!(r["sha256"], sha.as_str(), "{r}");
    assert_eq!(r["bytes"], LEN as u64);
    assert_eq!(r["path"], "direct");
    assert!(r["seconds"].as_f64().unwrap() > 0.0);
    assert_eq!(r["chunks_sent"].as_u64().unwrap(), u64::from(total - held), "only what ben lacked: {r}");
    wait_line(&events, Duration::from_secs(10), |e| e["event"] == "file" && e["state"] == "done");
    let placed = std::fs::read(inbox.join("big.bin")).unwrap();
    assert!(placed == bytes, "the file at ben is the file sent");
    online.kill().unwrap();
    online.wait().unwrap();
    net.kill().unwrap();
    net.wait().unwrap();
}
