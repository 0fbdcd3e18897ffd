//! `lateness`: how late a call's 20 ms media clock ticks while signalling load is pending
//! on the same host. A whole network starts in this process (login server and super nodes
//! on loopback); alice and bob log in through the host library, each on a thread of its
//! own running its session's event loop, as a real host does; alice calls bob, relay
//! only, so her media passes through her super node's relay. Alice has 200 authorized
//! buddies (bob, and 199 who never log in), written into the login server's store. After
//! a warm-up, the load starts when alice's presence refresh does (her `presence_refresh`
//! timer: the revocation list, her entry republished, then her 200 buddies told, paced at
//! 40 a second; bob, first in her list, is told first, which is how the harness sees it
//! begin), and at that moment:
//!
//! - alice's super node is killed: her media goes silent, she checks her super node (a
//!   keepalive that is never answered), connects to another and allocates a relay there;
//! - alice's application reads her buddy list (`Session::refresh_buddies`: 13 pages from
//!   the login server for 200 buddies).
//!
//! The call then runs to the end of the window; both sides' call reports give the
//! clock's lateness (`tick_late_ms_p99`, `tick_late_ms_max`) and the frames.

use crate::hosts::{HostOptions, Hosts};
use confab::host::buddies::Event;
use confab::host::calls::CallState;
use confab::host::media::MediaReport;
use confab::host::{HostSettings, Session};
use serde::Serialize;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};
use tokio::sync::mpsc;

/// What a lateness measurement is asked to do.
#[derive(Debug, Clone)]
pub struct Options {
    /// Runs, each on a fresh network.
    pub runs: u32,
    /// Super nodes in the network (alice's dies; she moves to another).
    pub supernodes: usize,
    /// Alice's authorized buddies (bob among them; the rest never log in).
    pub buddies: usize,
    /// Media at least before the load starts (it starts with alice's next presence refresh).
    pub warmup: Duration,
    /// Media from the load's start to the call's end.
    pub window: Duration,
    /// Alice's presence refresh period.
    pub presence_refresh: Duration,
    /// From the load's start to the kill of alice's super node (0: at once).
    pub kill_after: Duration,
    /// The harness's folder (host key pool, network keys, temporary data).
    pub work_dir: PathBuf,
    /// No progress lines.
    pub quiet: bool,
}

/// The password of every account of the run (on a network the run made and removes).
const PASSWORD: &str = "lateness measurement";
/// Longest wait for any one phase (logins, the call connecting, the reports).
const PHASE_MAX: Duration = Duration::from_secs(40);
/// How often a host's thread hands the controller its event loop (and a media snapshot).
const SLICE: Duration = Duration::from_millis(50);
/// The most the wall clock may move against the monotonic clock over a run's call for
/// the run to count.
pub const CLOCK_MOVED_MS: i64 = 20;
/// A gap between two of a host's media snapshots longer than this is a stall of its loop.
pub const STALL_MS: u64 = 100;

/// One side's call, from its call report.
#[derive(Debug, Clone, Serialize)]
pub struct Side {
    /// 99th percentile of the media clock's lateness, ms.
    pub tick_late_ms_p99: u64,
    /// The worst tick, ms.
    pub tick_late_ms_max: u64,
    /// Voice frames sent.
    pub sent: u64,
    /// Voice frames received in time.
    pub received: u64,
    /// Frames lost.
    pub lost: u64,
    /// Gaps of more than [`STALL_MS`] between the host thread's media snapshots, from the
    /// call's connection to the hang-up (the span of the call report). The thread takes
    /// one after each 50 ms slice of the event loop, so a handler that waits on the
    /// network, or a command the thread awaits (the list read), makes a gap. A stalled
    /// clock makes one late tick per stall, however long, so the p99 above can hide what
    /// this shows.
    pub loop_stalls: u64,
    /// Those stalls' total length, seconds.
    pub loop_stalled_s: f64,
    /// Times the path failed and media found another.
    pub path_restarts: u32,
    /// The path at the end.
    pub path: Option<&'static str>,
}

/// When things happened in one run, seconds.
#[derive(Debug, Clone, Serialize)]
pub struct Phases {
    /// Network up and converged, accounts and buddy lists made.
    pub setup_s: f64,
    /// Alice's login (her list read and her 200 buddies told, as every login does).
    pub login_alice_s: f64,
    /// Bob's login.
    pub login_bob_s: f64,
    /// From alice's call to media flowing on both sides.
    pub call_setup_s: f64,
    /// Media from both sides connected to the hang-up.
    pub media_s: f64,
    /// Media from both sides connected to the load's start.
    pub media_before_load_s: f64,
    /// From the load's start: alice's super node killed.
    pub kill_s: f64,
    /// From the load's start: alice reconnected to another super node.
    pub reconnected_s: Option<f64>,
    /// From the load's start: alice hears bob again (10 fresh frames after reconnecting).
    pub media_back_s: Option<f64>,
    /// How long alice's application waited for her list read (13 pages for 200).
    pub list_read_s: Option<f64>,
    /// From the load's start: each time alice's presence reached bob (her fan-outs).
    pub presence_at_bob_s: Vec<f64>,
}

/// One run's figures.
#[derive(Debug, Clone, Serialize)]
pub struct Run {
    /// How far the wall clock moved against the monotonic one over the call, ms. The host
    /// times its media clock's ticks on the wall clock, so a step or a slew of it shows
    /// as lateness that never happened (or hides some): a run whose clock moved by more
    /// than [`CLOCK_MOVED_MS`] is kept in `runs` but left out of the summary.
    pub wall_clock_moved_ms: i64,
    /// The caller, whose super node died.
    pub alice: Side,
    /// The callee.
    pub bob: Side,
    /// Timings.
    pub phases: Phases,
}

/// Median and range of one figure over the runs.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Spread {
    /// The median (the mean of the middle two for an even count).
    pub median: f64,
    /// The least.
    pub min: f64,
    /// The most.
    pub max: f64,
}

impl Spread {
    /// The spread of `values` (None when empty).
    pub fn of(values: &[f64]) -> Option<Self> {
        let mut v: Vec<f64> = values.iter().copied().filter(|x| x.is_finite()).collect();
        if v.is_empty() {
            return None;
        }
        v.sort_by(f64::total_cmp);
        let n = v.len();
        let median = if n % 2 == 1 { v[n / 2] } else { (v[n / 2 - 1] + v[n / 2]) / 2.0 };
        Some(Self { median, min: v[0], max: v[n - 1] })
    }
}

/// What `lateness` measured: the load, every run, and the spread of the main figures.
#[derive(Debug, Clone, Serialize)]
pub struct LatenessResult {
    /// The load, in words.
    pub load: String,
    /// Super nodes in the network.
    pub supernodes: usize,
    /// Alice's authorized buddies.
    pub buddies: usize,
    /// Media before the load, seconds.
    pub warmup_s: f64,
    /// Media from the load's start to the hang-up, seconds.
    pub window_s: f64,
    /// Alice's presence refresh period, seconds.
    pub presence_refresh_s: f64,
    /// From the load's start to the kill, seconds.
    pub kill_after_s: f64,
    /// Every run, those left out of the summary included.
    pub runs: Vec<Run>,
    /// Runs left out of the summary because the wall clock moved during their call.
    pub runs_left_out: usize,
    /// Figure name (`alice.tick_late_ms_p99`, …) → median and range over the runs.
    pub summary: std::collections::BTreeMap<String, Spread>,
}

impl LatenessResult {
    fn summarize(&mut self) {
        let counted: Vec<&Run> = self.runs.iter().filter(|r| r.wall_clock_moved_ms.abs() <= CLOCK_MOVED_MS).collect();
        self.runs_left_out = self.runs.len() - counted.len();
        let mut put = |name: &str, f: &dyn Fn(&Run) -> Option<f64>| {
            let v: Vec<f64> = counted.iter().copied().filter_map(f).collect();
            if let Some(s) = Spread::of(&v) {
                self.summary.insert(name.to_owned(), s);
            }
        };
        for (who, side) in [("alice", (|r: &Run| &r.alice) as fn(&Run) -> &Side), ("bob", |r: &Run| &r.bob)] {
            put(&format!("{who}.tick_late_ms_p99"), &|r| Some(side(r).tick_late_ms_p99 as f64));
            put(&format!("{who}.tick_late_ms_max"), &|r| Some(side(r).tick_late_ms_max as f64));
            put(&format!("{who}.sent"), &|r| Some(side(r).sent as f64));
            put(&format!("{who}.loop_stalls"), &|r| Some(side(r).loop_stalls as f64));
            put(&format!("{who}.loop_stalled_s"), &|r| Some(side(r).loop_stalled_s));
            put(&format!("{who}.received"), &|r| Some(side(r).received as f64));
            put(&format!("{who}.lost"), &|r| Some(side(r).lost as f64));
        }
        put("call_setup_s", &|r| Some(r.phases.call_setup_s));
        put("media_s", &|r| Some(r.phases.media_s));
        put("kill_s", &|r| Some(r.phases.kill_s));
        put("reconnected_s", &|r| r.phases.reconnected_s);
        put("media_back_s", &|r| r.phases.media_back_s);
        put("list_read_s", &|r| r.phases.list_read_s);
        put("login_alice_s", &|r| Some(r.phases.login_alice_s));
    }
}

/// Runs the measurement `o.runs` times, each on a fresh network in its own actix System.
pub fn measure(o: &Options) -> anyhow::Result<LatenessResult> {
    anyhow::ensure!(o.supernodes >= 2, "--supernodes: at least 2 (alice's dies, she moves to another)");
    anyhow::ensure!(o.buddies >= 1, "--buddies: at least 1 (bob)");
    let mut result = LatenessResult {
        load: load_words(o),
        supernodes: o.supernodes,
        buddies: o.buddies,
        warmup_s: o.warmup.as_secs_f64(),
        window_s: o.window.as_secs_f64(),
        presence_refresh_s: o.presence_refresh.as_secs_f64(),
        kill_after_s: o.kill_after.as_secs_f64(),
        runs: Vec::new(),
        runs_left_out: 0,
        summary: Default::default(),
    };
    // A run the wall clock spoilt is repeated, up to as many again.
    let mut counted = 0;
    for i in 0..2 * o.runs {
        if counted == o.runs {
            break;
        }
        let progress = |what: &str| say(o.quiet, format_args!("lateness run {}/{}: {what}", i + 1, o.runs));
        let run = actix_rt::System::new().block_on(one_run(o, &progress))?;
        if run.wall_clock_moved_ms.abs() <= CLOCK_MOVED_MS {
            counted += 1;
            progress(&format!(
                "alice late p99 {} ms max {} ms, bob late p99 {} ms max {} ms",
                run.alice.tick_late_ms_p99,
                run.alice.tick_late_ms_max,
                run.bob.tick_late_ms_p99,
                run.bob.tick_late_ms_max
            ));
        } else {
            progress(&format!(
                "the wall clock moved {} ms against the monotonic one during the call: left out, run again",
                run.wall_clock_moved_ms
            ));
        }
        result.runs.push(run);
    }
    result.summarize();
    Ok(result)
}

fn say(quiet: bool, msg: impl std::fmt::Display) {
    if !quiet {
        eprintln!("{msg}");
    }
}

/// The load as the report states it.
fn load_words(o: &Options) -> String {
    format!(
        "alice (caller, relay only: media through her super node's relay) and bob in a call; after at least \
         {:.1} s of media, when alice's presence refresh begins (her timer, every {:.1} s: revocation list, \
         publish, {} buddies told at 40 a second), alice's application reads her buddy list \
         (Session::refresh_buddies, {} authorized buddies, {} pages) and {} alice's super node is killed \
         (her media goes silent; she checks her super node, reconnects to another, allocates a new relay \
         there); the call runs {:.1} s from the load's start",
        o.warmup.as_secs_f64(),
        o.presence_refresh.as_secs_f64(),
        o.buddies,
        o.buddies,
        o.buddies.div_ceil(confab::buddy::op::PAGE_ROWS),
        if o.kill_after.is_zero() {
            "at once".to_owned()
        } else {
            format!("{:.1} s later", o.kill_after.as_secs_f64())
        },
        o.window.as_secs_f64(),
    )
}

/// What the controller asks of a host's thread.
#[derive(Debug)]
enum Cmd {
    /// Call this user.
    Call(String),
    /// Read the buddy list from the login server, as an application would.
    RefreshBuddies,
    /// Hang up (the caller).
    End,
    /// Log out and stop.
    Stop,
}

/// What a host's thread tells the controller.
#[derive(Debug)]
enum Note {
    LoggedIn { who: Who, supernode: String, took: Duration },
    Event { who: Who, at: Instant, event: Event },
    Media { who: Who, at: Instant, received: u64 },
    ListRead { took: Duration },
    Report { who: Who, media: MediaReport },
    Failed { who: Who, error: String },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Who {
    Alice,
    Bob,
}

/// One host's part: who, how it logs in, what it does by itself.
struct HostSpec {
    who: Who,
    user: String,
    home: confab::host::home::Home,
    settings: HostSettings,
    /// Media only through a relay.
    relay_only: bool,
    /// Answers the calls that ring.
    answers: bool,
}

/// Starts a host on a thread of its own, with its own runtime: the session's event loop
/// runs there in slices, between which it takes the controller's commands.
fn spawn_host(
    spec: HostSpec,
    cmds: std::sync::mpsc::Receiver<Cmd>,
    notes: mpsc::UnboundedSender<Note>,
) -> std::io::Result<std::thread::JoinHandle<()>> {
    std::thread::Builder::new().name(format!("host-{}", spec.user)).spawn(move || {
        let who = spec.who;
        let rt = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
            Ok(rt) => rt,
            Err(e) => {
                let _ = notes.send(Note::Failed { who, error: format!("runtime: {e}") });
                return;
            }
        };
        let local = tokio::task::LocalSet::new();
        if let Err(e) = local.block_on(&rt, host_loop(spec, cmds, notes.clone())) {
            let _ = notes.send(Note::Failed { who, error: format!("{e:#}") });
        }
    })
}

async fn host_loop(
    spec: HostSpec,
    cmds: std::sync::mpsc::Receiver<Cmd>,
    notes: mpsc::UnboundedSender<Note>,
) -> anyhow::Result<()> {
    let who = spec.who;
    let started = Instant::now();
    let mut s = confab::host::login(&spec.settings, &spec.home, &spec.user, PASSWORD).await?;
    s.set_relay_only(spec.relay_only);
    let _ = notes.send(Note::LoggedIn { who, supernode: s.report.supernode.clone(), took: started.elapsed() });
    let mut call: Option<[u8; 16]> = None;
    loop {
        while let Ok(cmd) = cmds.try_recv() {
            match cmd {
                Cmd::Call(user) => call = Some(s.call(&user).await?),
                Cmd::RefreshBuddies => {
                    let t = Instant::now();
                    s.refresh_buddies().await?;
                    let _ = notes.send(Note::ListRead { took: t.elapsed() });
                }
                Cmd::End => {
                    let id = call.take().ok_or_else(|| anyhow::anyhow!("no call to end"))?;
                    s.end_call(id).await;
                    let media = report_of(&mut s, id).await?;
                    let _ = notes.send(Note::Report { who, media });
                }
                Cmd::Stop => {
                    s.logout().await;
                    return Ok(());
                }
            }
        }
        if let Some(event) = s.next_event_within(SLICE).await {
            if let Event::Call { call_id, state, .. } = &event {
                let id = confab::host::calls::call_id_from_hex(call_id);
                match state {
                    CallState::Ringing if spec.answers => {
                        if let Some(id) = id {
                            call = Some(id);
                            s.answer_call(id, true).await;
                        }
                    }
                    CallState::Ended { .. } if id.is_some() && id == call => {
                        let id = call.take().expect("checked");
                        let media = report_of(&mut s, id).await?;
                        let _ = notes.send(Note::Report { who, media });
                    }
                    _ => {}
                }
            }
            let _ = notes.send(Note::Event { who, at: Instant::now(), event });
        }
        if let Some(m) = call.and_then(|id| s.call_media(id)) {
            let _ = notes.send(Note::Media { who, at: Instant::now(), received: m.received });
        }
    }
}

/// The report of ended call `id`, once the session has it.
async fn report_of(s: &mut Session, id: [u8; 16]) -> anyhow::Result<MediaReport> {
    let until = Instant::now() + Duration::from_secs(5);
    loop {
        if let Some(r) = s.take_call_report(id) {
            return Ok(r.media);
        }
        anyhow::ensure!(Instant::now() < until, "no report of the ended call");
        s.next_event_within(SLICE).await;
    }
}

/// The controller's view of one run: the notes of both hosts, as they came.
struct Notes {
    notes: mpsc::UnboundedReceiver<Note>,
    seen: Vec<Note>,
}

impl Notes {
    /// Takes notes until `done` holds over what was seen, or `limit` passes.
    async fn until(&mut self, limit: Duration, what: &str, done: impl Fn(&[Note]) -> bool) -> anyhow::Result<()> {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            if let Some(Note::Failed { who, error }) = self.seen.iter().find(|n| matches!(n, Note::Failed { .. })) {
                anyhow::bail!("{who:?} failed while waiting for {what}: {error}");
            }
            if done(&self.seen) {
                return Ok(());
            }
            match tokio::time::timeout_at(deadline, self.notes.recv()).await {
                Ok(Some(n)) => self.seen.push(n),
                Ok(None) => anyhow::bail!("the hosts stopped while waiting for {what}"),
                Err(_) => anyhow::bail!("{what}: not within {limit:?}"),
            }
        }
    }

    /// Takes notes for `d`.
    async fn take_for(&mut self, d: Duration) -> anyhow::Result<()> {
        let until = tokio::time::Instant::now() + d;
        while let Ok(n) = tokio::time::timeout_at(until, self.notes.recv()).await {
            match n {
                Some(n) => self.seen.push(n),
                None => anyhow::bail!("the hosts stopped"),
            }
        }
        if let Some(Note::Failed { who, error }) = self.seen.iter().find(|n| matches!(n, Note::Failed { .. })) {
            anyhow::bail!("{who:?} failed: {error}");
        }
        Ok(())
    }
}

fn connected(n: &Note, whom: Who) -> bool {
    matches!(n, Note::Event { who, event: Event::Call { state: CallState::Connected { .. }, .. }, .. } if *who == whom)
}

fn report(seen: &[Note], whom: Who) -> Option<&MediaReport> {
    seen.iter().find_map(|n| match n {
        Note::Report { who, media } if *who == whom => Some(media),
        _ => None,
    })
}

/// The network's keys, kept in the work folder so that runs do not generate them.
fn keys_dir(work: &Path) -> PathBuf {
    work.join("network-keys")
}

/// Copies every key file between two folders (those already there are kept).
fn copy_keys(from: &Path, to: &Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(to)?;
    let Ok(dir) = std::fs::read_dir(from) else { return Ok(()) };
    for e in dir.flatten() {
        let name = e.file_name();
        let s = name.to_string_lossy();
        if (s.ends_with(".key.pem") || s.ends_with(".pub.pem")) && !to.join(&name).exists() {
            std::fs::copy(e.path(), to.join(&name))?;
        }
    }
    Ok(())
}

/// Waits until every node sees all `n` members and its index maps hold them all.
async fn converge(net: &confab::network::Network, n: usize) -> anyhow::Result<()> {
    let metrics: std::net::SocketAddr = net
        .info
        .metrics
        .as_deref()
        .and_then(|u| u.trim_start_matches("http://").trim_end_matches("/metrics").parse().ok())
        .ok_or_else(|| anyhow::anyhow!("the network serves no metrics"))?;
    let names: Vec<String> = net.info.supernodes.iter().map(|s| s.name.clone()).collect();
    let deadline = Instant::now() + PHASE_MAX;
    loop {
        let members_ok = net.nodes().iter().all(|node| node.members().len() >= n);
        let index_ok = members_ok && {
            let text = tokio::task::spawn_blocking(move || crate::server::scrape(metrics)).await??;
            let views: Vec<f64> = text
                .lines()
                .filter_map(crate::server::parse_line)
                .filter(|l| l.name == "confab_index_view_members")
                .filter(|l| l.label("node").is_some_and(|v| names.iter().any(|m| m == v)))
                .map(|l| l.value)
                .collect();
            views.len() == n && views.iter().all(|v| *v as usize >= n)
        };
        if index_ok {
            return Ok(());
        }
        anyhow::ensure!(Instant::now() < deadline, "the cluster of {n} did not converge within {PHASE_MAX:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Alice's authorized buddies, written straight into the login server's store (as if
/// each had asked and she had accepted): bob, and `n − 1` who never log in.
fn seed_buddies(
    db: &Path,
    n: usize,
    alice: &confab::crypto::password::ListKey,
    bob: &confab::crypto::password::ListKey,
) -> anyhow::Result<()> {
    use confab::buddy::record::{Contact, seal};
    let store = confab::login::AccountStore::open(db)?;
    let now = confab::unix_now();
    let contact = |user: &str| Contact { user: user.to_owned(), added_at: now };
    // The other side's record is sealed under a key nobody holds: those lists are never read.
    let nobody = confab::crypto::password::ListKey(confab::crypto::random::bytes());
    let mut names = vec!["bob".to_owned()];
    for i in 1..n {
        let name = format!("buddy{i:04}");
        store.create(&name, &name, confab::crypto::password::Verifier(confab::crypto::random::bytes()), None, now)?;
        names.push(name);
    }
    for name in &names {
        let theirs =
            if name == "bob" { seal(bob, name, &contact("alice")) } else { seal(&nobody, name, &contact("alice")) };
        store.buddy_add(name, "alice", &theirs, "", now)?;
        let added = store.buddy_add("alice", name, &seal(alice, "alice", &contact(name)), "", now)?;
        anyhow::ensure!(
            added.relation() == confab::buddy::op::Relation::Authorized,
            "{name} was not authorized: {added:?}"
        );
    }
    Ok(())
}

async fn one_run(o: &Options, progress: &dyn Fn(&str)) -> anyhow::Result<Run> {
    let started = Instant::now();
    std::fs::create_dir_all(&o.work_dir)?;
    let dir = tempfile::Builder::new().prefix("lateness-").tempdir_in(&o.work_dir)?;
    let data = dir.path().join("data");
    copy_keys(&keys_dir(&o.work_dir), &data)?;
    let mut config = confab::config::Config::default();
    // Every host of the run is on loopback: one source to the login server's limits.
    config.login_server.throttle = confab::login::guard::ThrottlePolicy::one_source_load();
    config.supernode.handshakes_per_source_max = 64;
    config.supernode.probe_period_ms = 200;
    let net = confab::network::up(confab::network::UpOptions {
        data: data.clone(),
        bind: "127.0.0.1".parse()?,
        base_port: 0,
        supernodes: o.supernodes,
        metrics: Some("127.0.0.1:0".parse()?),
        key_bits: 2048,
        config,
        name_prefix: "sn".into(),
    })
    .await?;
    copy_keys(&data, &keys_dir(&o.work_dir))?;
    let outcome = drive(o, &net, started, progress).await;
    net.stop().await;
    outcome
}

async fn drive(
    o: &Options,
    net: &confab::network::Network,
    started: Instant,
    progress: &dyn Fn(&str),
) -> anyhow::Result<Run> {
    converge(net, o.supernodes).await?;
    progress("network up");
    let hosts = Hosts::new(&HostOptions {
        config: net.info.host_config.clone(),
        password: PASSWORD.into(),
        work_dir: o.work_dir.clone(),
        prefix: "lt".into(),
        concurrency: 2,
    })?;
    let (home_a, home_b) = (hosts.home()?, hosts.home()?);
    hosts.register(&home_a, "alice").await?;
    hosts.register(&home_b, "bob").await?;
    let (keys_a, keys_b) = (hosts.password_keys("alice").await, hosts.password_keys("bob").await);
    let db = net.info.data.join("accounts.sqlite");
    let n = o.buddies;
    tokio::task::spawn_blocking(move || seed_buddies(&db, n, &keys_a.list, &keys_b.list)).await??;
    let setup_s = started.elapsed().as_secs_f64();
    progress(&format!("{n} buddies of alice's made"));

    // Alice starts at super node 1, bob at 2: the one that dies is hers alone.
    let on = |i: usize, refresh: Duration| {
        let mut s = hosts.settings.clone();
        let len = s.ladder.bootstrap.len();
        s.ladder.bootstrap.rotate_left(i % len.max(1));
        s.presence_refresh = refresh;
        s
    };
    let (tx, rx) = mpsc::unbounded_channel();
    let mut h = Notes { notes: rx, seen: Vec::new() };
    let (to_bob, bob_cmds) = std::sync::mpsc::channel();
    let bob_spec = HostSpec {
        who: Who::Bob,
        user: "bob".into(),
        home: home_b,
        settings: on(1, hosts.settings.presence_refresh),
        relay_only: false,
        answers: true,
    };
    let bob = spawn_host(bob_spec, bob_cmds, tx.clone())?;
    h.until(PHASE_MAX, "bob logged in", |s| s.iter().any(|n| matches!(n, Note::LoggedIn { who: Who::Bob, .. })))
        .await?;
    let (to_alice, alice_cmds) = std::sync::mpsc::channel();
    let alice_spec = HostSpec {
        who: Who::Alice,
        user: "alice".into(),
        home: home_a,
        settings: on(0, o.presence_refresh),
        relay_only: true,
        answers: false,
    };
    let alice = spawn_host(alice_spec, alice_cmds, tx)?;
    let outcome = call_under_load(o, net, &mut h, &to_alice, setup_s, progress).await;
    // Whatever happened, the hosts log out and their threads end.
    let _ = to_alice.send(Cmd::Stop);
    let _ = to_bob.send(Cmd::Stop);
    let _ = tokio::task::spawn_blocking(move || {
        let _ = alice.join();
        let _ = bob.join();
    })
    .await;
    outcome
}

async fn call_under_load(
    o: &Options,
    net: &confab::network::Network,
    h: &mut Notes,
    to_alice: &std::sync::mpsc::Sender<Cmd>,
    setup_s: f64,
    progress: &dyn Fn(&str),
) -> anyhow::Result<Run> {
    h.until(PHASE_MAX, "alice logged in", |s| s.iter().any(|n| matches!(n, Note::LoggedIn { who: Who::Alice, .. })))
        .await?;
    let logins: Vec<(Who, String, f64)> = h
        .seen
        .iter()
        .filter_map(|n| match n {
            Note::LoggedIn { who, supernode, took } => Some((*who, supernode.clone(), took.as_secs_f64())),
            _ => None,
        })
        .collect();
    let of = |w: Who| logins.iter().find(|l| l.0 == w).cloned().expect("both logged in");
    let ((_, sn_alice, login_alice_s), (_, sn_bob, login_bob_s)) = (of(Who::Alice), of(Who::Bob));
    anyhow::ensure!(sn_alice != sn_bob, "alice and bob are on one super node ({sn_alice}): the load would hit both");
    let dying = net
        .info
        .supernodes
        .iter()
        .position(|s| s.name == sn_alice)
        .ok_or_else(|| anyhow::anyhow!("alice's super node {sn_alice} is not the network's"))?;
    progress(&format!("alice on {sn_alice} ({login_alice_s:.1} s), bob on {sn_bob} ({login_bob_s:.1} s)"));

    let asked = Instant::now();
    to_alice.send(Cmd::Call("bob".into()))?;
    h.until(PHASE_MAX, "the call connected on both sides", |s| {
        s.iter().any(|n| connected(n, Who::Alice)) && s.iter().any(|n| connected(n, Who::Bob))
    })
    .await?;
    let connected_at = Instant::now();
    let wall_connected = std::time::SystemTime::now();
    let call_setup_s = asked.elapsed().as_secs_f64();
    progress(&format!("call connected ({call_setup_s:.1} s); media for {:.1} s", o.warmup.as_secs_f64()));
    h.take_for(o.warmup).await?;
    // The load starts with alice's presence refresh: her timer fires, and the first buddy
    // her fan-out tells is bob (her list goes in name order).
    progress("waiting for alice's presence refresh to begin");
    let from = h.seen.len();
    h.until(o.presence_refresh + PHASE_MAX, "alice's presence refresh", |s| {
        s[from..].iter().any(
            |n| matches!(n, Note::Event { who: Who::Bob, event: Event::Presence { user, .. }, .. } if user == "alice"),
        )
    })
    .await?;
    let load = Instant::now();
    to_alice.send(Cmd::RefreshBuddies)?;
    if !o.kill_after.is_zero() {
        progress(&format!(
            "load started: alice's presence refresh under way, her list read; media for {:.1} s",
            o.window.as_secs_f64()
        ));
        h.take_for(o.kill_after.min(o.window)).await?;
    }
    net.kill_node(dying);
    let kill_s = load.elapsed().as_secs_f64();
    progress(&format!(
        "{sn_alice} killed {kill_s:.1} s after alice's presence refresh began and her list read was asked for; \
         media until {:.1} s",
        o.window.as_secs_f64()
    ));
    h.take_for(o.window.saturating_sub(load.elapsed())).await?;
    let ended = Instant::now();
    let wall_ms = std::time::SystemTime::now()
        .duration_since(wall_connected)
        .map_or_else(|e| -(e.duration().as_millis() as i64), |d| d.as_millis() as i64);
    let wall_clock_moved_ms = wall_ms - ended.duration_since(connected_at).as_millis() as i64;
    to_alice.send(Cmd::End)?;
    h.until(PHASE_MAX, "both call reports", |s| report(s, Who::Alice).is_some() && report(s, Who::Bob).is_some())
        .await?;
    let media_s = ended.duration_since(connected_at).as_secs_f64();

    let since = |at: Instant| at.checked_duration_since(load).map(|d| d.as_secs_f64());
    let reconnected_at = h.seen.iter().find_map(|n| match n {
        Note::Event { who: Who::Alice, at, event: Event::Reconnected { .. } } if *at >= load => Some(*at),
        _ => None,
    });
    // Alice hears bob again: 10 fresh frames after she reconnected.
    let media_back_s = reconnected_at.and_then(|r| {
        let mut after = h.seen.iter().filter_map(|n| match n {
            Note::Media { who: Who::Alice, at, received, .. } if *at >= r => Some((*at, *received)),
            _ => None,
        });
        let (_, base) = after.next()?;
        after.find(|(_, got)| *got >= base + 10).and_then(|(at, _)| since(at))
    });
    let list_read_s = h.seen.iter().find_map(|n| match n {
        Note::ListRead { took } => Some(took.as_secs_f64()),
        _ => None,
    });
    // Relative to the load's start (negative: before it), from the call's connection on.
    let signed = |at: Instant| match at.checked_duration_since(load) {
        Some(d) => d.as_secs_f64(),
        None => -load.duration_since(at).as_secs_f64(),
    };
    let presence_at_bob_s = h
        .seen
        .iter()
        .filter_map(|n| match n {
            Note::Event { who: Who::Bob, at, event: Event::Presence { user, .. } }
                if user == "alice" && *at >= connected_at =>
            {
                Some(signed(*at))
            }
            _ => None,
        })
        .collect();
    let side = |w: Who| {
        let m = report(&h.seen, w).expect("both reports");
        let snapshots: Vec<Instant> = h
            .seen
            .iter()
            .filter_map(|n| match n {
                Note::Media { who, at, .. } if *who == w && *at >= connected_at && *at <= ended => Some(*at),
                _ => None,
            })
            .collect();
        let stalls: Vec<f64> = snapshots
            .windows(2)
            .map(|p| p[1].duration_since(p[0]))
            .filter(|d| *d > Duration::from_millis(STALL_MS))
            .map(|d| d.as_secs_f64())
            .collect();
        Side {
            tick_late_ms_p99: m.tick_late_ms_p99,
            tick_late_ms_max: m.tick_late_ms_max,
            sent: m.sent,
            received: m.received,
            lost: m.lost,
            loop_stalls: stalls.len() as u64,
            loop_stalled_s: stalls.iter().fold(0.0, |a, b| a + b),
            path_restarts: m.path_restarts,
            path: m.path,
        }
    };
    Ok(Run {
        wall_clock_moved_ms,
        alice: side(Who::Alice),
        bob: side(Who::Bob),
        phases: Phases {
            setup_s,
            login_alice_s,
            login_bob_s,
            call_setup_s,
            media_s,
            media_before_load_s: load.duration_since(connected_at).as_secs_f64(),
            kill_s,
            reconnected_s: reconnected_at.and_then(since),
            media_back_s,
            list_read_s,
            presence_at_bob_s,
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spread_is_median_and_range() {
        let s = Spread::of(&[5.0, 1.0, 9.0, 3.0, 7.0]).unwrap();
        assert_eq!((s.median, s.min, s.max), (5.0, 1.0, 9.0));
        let s = Spread::of(&[4.0, 2.0]).unwrap();
        assert_eq!((s.median, s.min, s.max), (3.0, 2.0, 4.0));
        assert!(Spread::of(&[]).is_none());
    }
}
