//! Relay CPU per relayed voice call: how much of a core the relay's worker threads
//! (`relay-*`) spend forwarding N simultaneous Opus voice calls, next to minimal UDP
//! forwarders (`raw-fwd`, `confab::relay::floor`) carrying the same traffic: the floor
//! (`raw`: the workers' `recvmmsg`/`sendmmsg` loop with a `HashMap` lookup in place of
//! the relay's rules) and an unbatched one (`raw-unbatched`: `recv_from`, lookup,
//! `send_to`). The cost of the relay's own work (parse, session lookup, token checks,
//! latching, rate meters, counters) can be read off the ratio to the floor.
//!
//! ```text
//! cargo bench --bench relay_call
//! RELAY_CALL_COUNTS=10,50,200 RELAY_CALL_SECS=10 RELAY_CALL_WORKERS=1,2 RELAY_CALL_RUNS=5 cargo bench --bench relay_call
//! ```
//!
//! - `RELAY_CALL_COUNTS`: calls per run (default `10,50,200`);
//! - `RELAY_CALL_SECS`: length of each timed window (default 10);
//! - `RELAY_CALL_WORKERS`: relay worker counts to run (default `1,2`);
//! - `RELAY_CALL_RUNS`: how many times to run it all (default 1); from 2 on, a summary
//!   gives each forwarder's median and range, and its ratio to the floor's in each run.
//!
//! Every call is two legs, each with its own UDP socket on 127.0.0.1 (the relay latches a
//! leg to its source address), each sending one 20 ms voice frame to the relay: a
//! 113-byte media packet (17-byte header, 80 bytes of Opus, 16-byte GCM tag) behind the
//! 21-byte relay header, so 100 datagrams forwarded per second per call. One sender
//! thread spreads the legs evenly over up to 80 slots of each 20 ms tick (250 µs apart),
//! on absolute deadlines: calls are not phase-aligned in life, and bursts would let the
//! relay drain many datagrams per wakeup and look cheaper than it is. A one-thread tokio
//! runtime (`recv`) counts what reaches the legs.
//!
//! CPU is read from `/proc/self/task/<tid>/schedstat` (nanoseconds on the CPU) for the
//! forwarder's threads only, over the window that starts after a one-second warm-up;
//! utime+stime from `/proc/self/task/<tid>/stat` (clock ticks, usually 10 ms) is shown
//! alongside as a cross-check. Caveat for reading the figures: on loopback the kernel's
//! delivery of a datagram into the receiving socket runs in the *sending* thread, so a
//! forwarder's CPU includes delivering what it forwards to the legs but not the
//! delivery of what the legs send to it. Both forwarders are measured the same way.

use confab::relay::worker::WorkerConfig;
use confab::relay::{
    self, DropReason, Limits, RELAY_HEADER_LEN, RelayStats, RelayWorkers, SessionId, SessionTable, Token, floor,
};
use socket2::{Domain, Protocol, SockAddr, SockRef, Socket, Type};
use std::collections::{BTreeMap, HashMap};
use std::io;
use std::net::{SocketAddr, UdpSocket};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// One voice frame per leg per tick.
const TICK: Duration = Duration::from_millis(20);
/// Most send slots per tick; each leg owns one. 250 µs apart, a few times the timer
/// slack of a sleeping thread (50 µs), so the pacing is not just the sleep's rounding.
const SLOTS_PER_TICK: usize = 80;
/// Traffic before the window, so the window sees steady state only.
const WARMUP: Duration = Duration::from_secs(1);
/// Time after the senders stop for the last datagrams to arrive before counting loss.
const DRAIN: Duration = Duration::from_millis(300);
/// Bound on each wait for the latching handshake.
const LATCH_TIMEOUT: Duration = Duration::from_secs(5);
/// Media header (kind, call tag, seq, timestamp) + 80 bytes of Opus + GCM tag.
const INNER_LEN: usize = 17 + 80 + 16;
const VOICE: u8 = 0x4d;
const SEQ_AT: usize = RELAY_HEADER_LEN + 9;
const TIMESTAMP_AT: usize = RELAY_HEADER_LEN + 13;
/// RTP-style timestamp step of one 20 ms frame at 48 kHz.
const SAMPLES_PER_FRAME: u32 = 960;

struct Settings {
    counts: Vec<usize>,
    window: Duration,
    workers: Vec<usize>,
    runs: usize,
}

fn env_list(name: &str, default: &str) -> Vec<usize> {
    let raw = std::env::var(name).unwrap_or_else(|_| default.to_owned());
    raw.split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| s.parse().unwrap_or_else(|_| panic!("{name}: {s:?} is not a count")))
        .collect()
}

impl Settings {
    fn from_env() -> Self {
        let secs: f64 = std::env::var("RELAY_CALL_SECS")
            .map(|s| s.trim().parse().unwrap_or_else(|_| panic!("RELAY_CALL_SECS: {s:?} is not a number")))
            .unwrap_or(10.0);
        assert!(secs > 0.0, "RELAY_CALL_SECS must be above zero");
        let counts = env_list("RELAY_CALL_COUNTS", "10,50,200");
        let workers = env_list("RELAY_CALL_WORKERS", "1,2");
        assert!(counts.iter().all(|&n| n > 0), "RELAY_CALL_COUNTS must be above zero");
        assert!(workers.iter().all(|&w| w > 0), "RELAY_CALL_WORKERS must be above zero");
        let runs = env_list("RELAY_CALL_RUNS", "1").first().copied().unwrap_or(1);
        assert!(runs > 0, "RELAY_CALL_RUNS must be above zero");
        Self { counts, window: Duration::from_secs_f64(secs), workers, runs }
    }
}

/// CPU time of one thread: nanoseconds (schedstat) and clock ticks (utime + stime).
#[derive(Debug, Clone, Copy, Default)]
struct Cpu {
    ns: u64,
    ticks: u64,
}

impl std::ops::Sub for Cpu {
    type Output = Cpu;
    fn sub(self, rhs: Cpu) -> Cpu {
        Cpu { ns: self.ns.saturating_sub(rhs.ns), ticks: self.ticks.saturating_sub(rhs.ticks) }
    }
}

/// utime + stime from a `stat` file. The command name may hold spaces or parentheses,
/// so fields are counted from the last ')'.
fn stat_ticks(path: &str) -> io::Result<u64> {
    let text = std::fs::read_to_string(path)?;
    let after = text.rsplit_once(')').map(|(_, rest)| rest).unwrap_or_default();
    let fields: Vec<&str> = after.split_whitespace().collect();
    // `after` starts at field 3 (state); utime and stime are fields 14 and 15.
    let field = |i: usize| fields.get(i - 3).and_then(|f| f.parse::<u64>().ok()).unwrap_or(0);
    Ok(field(14) + field(15))
}

/// CPU of every thread of this process whose name starts with `prefix`, by thread id.
fn threads_cpu(prefix: &str) -> BTreeMap<u32, Cpu> {
    let mut out = BTreeMap::new();
    let Ok(dir) = std::fs::read_dir("/proc/self/task") else { return out };
    for entry in dir.flatten() {
        let Some(tid) = entry.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else { continue };
        let base = format!("/proc/self/task/{tid}");
        let Ok(comm) = std::fs::read_to_string(format!("{base}/comm")) else { continue };
        if !comm.trim_end().starts_with(prefix) {
            continue;
        }
        let ns = std::fs::read_to_string(format!("{base}/schedstat"))
            .ok()
            .and_then(|s| s.split_whitespace().next().and_then(|f| f.parse().ok()))
            .unwrap_or(0);
        let ticks = stat_ticks(&format!("{base}/stat")).unwrap_or(0);
        out.insert(tid, Cpu { ns, ticks });
    }
    out
}

/// CPU the threads present at both snapshots spent in between.
fn threads_delta(before: &BTreeMap<u32, Cpu>, after: &BTreeMap<u32, Cpu>) -> Cpu {
    after
        .iter()
        .filter_map(|(tid, a)| before.get(tid).map(|b| *a - *b))
        .fold(Cpu::default(), |sum, d| Cpu { ns: sum.ns + d.ns, ticks: sum.ticks + d.ticks })
}

/// Clock ticks per second of `/proc` times. No libc binding here, so ask getconf; every
/// Linux build this runs on uses 100 anyway.
fn clock_ticks_per_second() -> u64 {
    std::process::Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.trim().parse().ok())
        .filter(|&t| t > 0)
        .unwrap_or(100)
}

/// A forwarder the relay is compared with (`confab::relay::floor`): no parsing, no
/// latching, no limits, a plain map from each leg to the other; batched as the relay's
/// workers are (the floor), or one datagram per call.
struct RawForwarder {
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
    counts: Arc<floor::Counts>,
}

impl RawForwarder {
    fn start(mode: floor::Mode, routes: HashMap<SocketAddr, SocketAddr>) -> io::Result<Self> {
        // The relay's own socket settings, so buffers and timeouts are not the difference.
        let config = WorkerConfig::default();
        let socket = Socket::new(Domain::IPV4, Type::DGRAM, Some(Protocol::UDP))?;
        socket.set_recv_buffer_size(config.recv_buffer_bytes)?;
        socket.set_send_buffer_size(config.send_buffer_bytes)?;
        socket.bind(&SocketAddr::from(([127, 0, 0, 1], 0)).into())?;
        let socket = UdpSocket::from(socket);
        socket.set_read_timeout(Some(config.io_timeout))?;
        socket.set_write_timeout(Some(config.io_timeout))?;
        let addr = socket.local_addr()?;
        let stop = Arc::new(AtomicBool::new(false));
        let counts = Arc::new(floor::Counts::default());
        let thread = {
            let (stop, counts) = (Arc::clone(&stop), Arc::clone(&counts));
            std::thread::Builder::new()
                .name("raw-fwd".into())
                .spawn(move || floor::forward(mode, &socket, &routes, &stop, &counts))?
        };
        Ok(Self { addr, stop, thread: Some(thread), counts })
    }
}

impl Drop for RawForwarder {
    fn drop(&mut self) {
        self.stop.store(true, Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

enum Forwarder {
    Relay(RelayWorkers),
    Raw(RawForwarder),
}

impl Forwarder {
    fn addr(&self) -> SocketAddr {
        match self {
            Self::Relay(w) => w.local_addr(),
            Self::Raw(r) => r.addr,
        }
    }

    fn thread_prefix(&self) -> &'static str {
        match self {
            Self::Relay(_) => "relay-",
            Self::Raw(_) => "raw-fwd",
        }
    }

    fn stats(&self) -> RelayStats {
        match self {
            Self::Relay(w) => w.stats(),
            Self::Raw(r) => RelayStats {
                received: r.counts.received.load(Relaxed),
                forwarded: r.counts.forwarded.load(Relaxed),
                send_failed: r.counts.send_failed.load(Relaxed),
                ..RelayStats::default()
            },
        }
    }
}

/// One direction of a call: the socket it sends from (and receives the other leg's
/// frames on) and its datagram, rewritten in place for each frame.
struct Leg {
    socket: Arc<tokio::net::UdpSocket>,
    datagram: Vec<u8>,
    seq: u32,
}

impl Leg {
    fn new(socket: Arc<tokio::net::UdpSocket>, session: SessionId, token: Token, call_tag: [u8; 8]) -> Self {
        let mut inner = vec![0u8; INNER_LEN];
        confab::crypto::random::fill(&mut inner[17..]);
        inner[0] = VOICE;
        inner[1..9].copy_from_slice(&call_tag);
        Self { socket, datagram: relay::packet::build(session, token, &inner), seq: 0 }
    }

    /// Sends the next frame. The sequence number never repeats on a leg (the relay may
    /// keep a replay window on it).
    fn send(&mut self, to: &SockAddr) -> bool {
        self.datagram[SEQ_AT..SEQ_AT + 4].copy_from_slice(&self.seq.to_be_bytes());
        let timestamp = self.seq.wrapping_mul(SAMPLES_PER_FRAME);
        self.datagram[TIMESTAMP_AT..TIMESTAMP_AT + 4].copy_from_slice(&timestamp.to_be_bytes());
        self.seq += 1;
        // Through SockRef, so this thread sends on the socket the runtime receives on
        // without a second descriptor or a runtime context.
        SockRef::from(&*self.socket).send_to(&self.datagram, to).is_ok()
    }
}

/// What the sender thread has done so far.
#[derive(Default)]
struct SendCounters {
    sent: AtomicU64,
    failed: AtomicU64,
    /// Worst lateness of a slot behind its deadline, in microseconds.
    max_lag_us: AtomicU64,
}

/// Paces every leg at one frame per tick until `stop`, on absolute deadlines so a late
/// slot is caught up rather than shifting every later one.
fn start_sender(
    mut legs: Vec<Leg>,
    to: SocketAddr,
    stop: Arc<AtomicBool>,
    counters: Arc<SendCounters>,
) -> JoinHandle<()> {
    let to = SockAddr::from(to);
    // Fewer legs than slots: one leg per slot, rather than waking for empty slots.
    let slots = SLOTS_PER_TICK.min(legs.len()).max(1);
    let slot_len = TICK / slots as u32;
    std::thread::Builder::new()
        .name("sender".into())
        .spawn(move || {
            let start = Instant::now();
            let mut slot: u32 = 0;
            while !stop.load(Relaxed) {
                let due = start + slot_len * slot;
                let now = Instant::now();
                if due > now {
                    std::thread::sleep(due - now);
                } else {
                    counters.max_lag_us.fetch_max((now - due).as_micros() as u64, Relaxed);
                }
                let (mut sent, mut failed) = (0, 0);
                for leg in legs.iter_mut().skip(slot as usize % slots).step_by(slots) {
                    if leg.send(&to) {
                        sent += 1;
                    } else {
                        failed += 1;
                    }
                }
                counters.sent.fetch_add(sent, Relaxed);
                counters.failed.fetch_add(failed, Relaxed);
                slot += 1;
            }
        })
        .expect("spawn the sender")
}

fn wait_for(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + LATCH_TIMEOUT;
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(2));
    }
}

/// Everything one run measured.
struct Row {
    run: usize,
    forwarder: &'static str,
    workers: usize,
    calls: usize,
    window_s: f64,
    forwarded: u64,
    worker_cpu: Cpu,
    process_ticks: u64,
    sent: u64,
    delivered: u64,
    unexpected_drops: u64,
    send_failed: u64,
    max_lag_us: u64,
}

impl Row {
    fn forwarded_per_s(&self) -> f64 {
        self.forwarded as f64 / self.window_s
    }

    /// Worker CPU as a percentage of one core, from schedstat.
    fn cpu_pct(&self) -> f64 {
        self.worker_cpu.ns as f64 / 1e9 / self.window_s * 100.0
    }

    fn cpu_pct_ticks(&self, hz: u64) -> f64 {
        self.worker_cpu.ticks as f64 / hz as f64 / self.window_s * 100.0
    }

    fn us_per_packet(&self) -> f64 {
        if self.forwarded == 0 { f64::NAN } else { self.worker_cpu.ns as f64 / 1e3 / self.forwarded as f64 }
    }

    fn loss_pct(&self) -> f64 {
        if self.sent == 0 { 0.0 } else { 100.0 * (1.0 - self.delivered as f64 / self.sent as f64) }
    }
}

fn run(forwarder_kind: &'static str, workers: usize, calls: usize, window: Duration, hz: u64) -> Row {
    eprintln!("[{forwarder_kind} x{workers}, {calls} calls] setting up {} legs", 2 * calls);
    let receiver = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .thread_name("recv")
        .enable_io()
        .build()
        .expect("receiver runtime");
    let delivered = Arc::new(AtomicU64::new(0));
    let mut sockets = Vec::with_capacity(2 * calls);
    {
        let _rt = receiver.enter();
        for _ in 0..2 * calls {
            let std = UdpSocket::bind("127.0.0.1:0").expect("bind a leg");
            std.set_nonblocking(true).expect("non-blocking leg");
            let socket = Arc::new(tokio::net::UdpSocket::from_std(std).expect("register a leg"));
            let (s, delivered) = (Arc::clone(&socket), Arc::clone(&delivered));
            receiver.spawn(async move {
                let mut buf = vec![0u8; relay::RELAYED_LEN_MAX + 1];
                // An error ends the leg's count, which then shows up as loss.
                while s.recv(&mut buf).await.is_ok() {
                    delivered.fetch_add(1, Relaxed);
                }
            });
            sockets.push(socket);
        }
    }
    let addrs: Vec<SocketAddr> = sockets.iter().map(|s| s.local_addr().expect("leg address")).collect();

    let (forwarder, grants) = if forwarder_kind == "confab" {
        let limits = Limits { allow_private_peers: true, ..Limits::default() };
        let table = SessionTable::new(limits);
        let grants: Vec<_> = (0..calls)
            .map(|_| {
                let g = table.allocate(relay::clock_ms()).expect("allocate a session");
                (g.session, g.token_a, g.token_b)
            })
            .collect();
        let w = RelayWorkers::start("127.0.0.1:0".parse().unwrap(), workers, table, "bench".into())
            .expect("start the relay workers");
        (Forwarder::Relay(w), grants)
    } else {
        let routes = addrs.chunks(2).flat_map(|p| [(p[0], p[1]), (p[1], p[0])]).collect();
        let grants = (0..calls).map(|i| (SessionId(i as u32 + 1), Token::random(), Token::random())).collect();
        let mode = if forwarder_kind == "raw" { floor::Mode::Batched } else { floor::Mode::Unbatched };
        (Forwarder::Raw(RawForwarder::start(mode, routes).expect("start the raw forwarder")), grants)
    };
    let to = forwarder.addr();
    let mut legs: Vec<Leg> = Vec::with_capacity(2 * calls);
    for (pair, (session, token_a, token_b)) in sockets.chunks(2).zip(grants) {
        let call_tag = confab::crypto::random::bytes::<8>();
        legs.push(Leg::new(Arc::clone(&pair[0]), session, token_a, call_tag));
        legs.push(Leg::new(Arc::clone(&pair[1]), session, token_b, call_tag));
    }

    // The handshake: all A legs first (the relay latches and drops them as
    // peer_unknown), then all B legs (latched and forwarded to A).
    let to_addr = SockAddr::from(to);
    for leg in legs.iter_mut().step_by(2) {
        assert!(leg.send(&to_addr), "latch send failed");
    }
    wait_for("the A legs to reach the forwarder", || forwarder.stats().received >= calls as u64);
    for leg in legs.iter_mut().skip(1).step_by(2) {
        assert!(leg.send(&to_addr), "latch send failed");
    }
    wait_for("the B legs to reach the forwarder", || forwarder.stats().received >= 2 * calls as u64);
    let latch_delivered = if forwarder_kind == "confab" { calls as u64 } else { 2 * calls as u64 };
    wait_for("the handshake datagrams to be delivered", || delivered.load(Relaxed) >= latch_delivered);
    let after_latch = forwarder.stats();
    let delivered_at_latch = delivered.load(Relaxed);
    eprintln!(
        "[{forwarder_kind} x{workers}, {calls} calls] latched ({} peer_unknown); {:.0} s window after {:.0} s warm-up",
        after_latch.dropped(DropReason::PeerUnknown),
        window.as_secs_f64(),
        WARMUP.as_secs_f64()
    );

    let stop = Arc::new(AtomicBool::new(false));
    let counters = Arc::new(SendCounters::default());
    let sender = start_sender(legs, to, Arc::clone(&stop), Arc::clone(&counters));
    std::thread::sleep(WARMUP);

    let prefix = forwarder.thread_prefix();
    let (cpu0, proc0, stats0, t0) =
        (threads_cpu(prefix), stat_ticks("/proc/self/stat"), forwarder.stats(), Instant::now());
    std::thread::sleep(window);
    let (cpu1, proc1, stats1, t1) =
        (threads_cpu(prefix), stat_ticks("/proc/self/stat"), forwarder.stats(), Instant::now());

    stop.store(true, Relaxed);
    sender.join().expect("sender thread");
    std::thread::sleep(DRAIN);
    let last = forwarder.stats();
    drop(forwarder);
    let delivered = delivered.load(Relaxed) - delivered_at_latch;
    receiver.shutdown_background();

    assert!(cpu0.len() >= if prefix == "relay-" { workers } else { 1 }, "forwarder threads not found in /proc");
    let unexpected_drops = last.drops.iter().sum::<u64>() - after_latch.dropped(DropReason::PeerUnknown);
    let row = Row {
        run: 0,
        forwarder: forwarder_kind,
        workers,
        calls,
        window_s: (t1 - t0).as_secs_f64(),
        forwarded: stats1.forwarded - stats0.forwarded,
        worker_cpu: threads_delta(&cpu0, &cpu1),
        process_ticks: proc1.unwrap_or(0).saturating_sub(proc0.unwrap_or(0)),
        sent: counters.sent.load(Relaxed),
        delivered,
        unexpected_drops,
        send_failed: last.send_failed + counters.failed.load(Relaxed),
        max_lag_us: counters.max_lag_us.load(Relaxed),
    };
    eprintln!(
        "[{forwarder_kind} x{workers}, {calls} calls] {:.0} fwd/s, worker CPU {:.2}% ({:.1}% by ticks), {:.2} µs/pkt, \
         sent {} delivered {} (loss {:.3}%), drops {:?}, send failures {}, worst sender lag {} µs",
        row.forwarded_per_s(),
        row.cpu_pct(),
        row.cpu_pct_ticks(hz),
        row.us_per_packet(),
        row.sent,
        row.delivered,
        row.loss_pct(),
        DropReason::ALL
            .iter()
            .filter(|r| last.dropped(**r) > 0)
            .map(|r| (r.label(), last.dropped(*r)))
            .collect::<Vec<_>>(),
        row.send_failed,
        row.max_lag_us,
    );
    row
}

/// The forwarders each call count runs through, in order: the two baselines, then the
/// relay with each worker count.
const BASELINES: [&str; 2] = ["raw", "raw-unbatched"];

fn print_table(rows: &[Row], hz: u64) {
    let baseline_us = |kind: &str, run: usize, calls: usize| {
        rows.iter().find(|r| r.forwarder == kind && r.run == run && r.calls == calls).map(Row::us_per_packet)
    };
    println!();
    println!(
        "{:<14} {:>3} {:>5} {:>9} {:>9} {:>9} {:>9} {:>10} {:>10} {:>8} {:>8} {:>7} {:>8} {:>9}",
        "forwarder",
        "run",
        "calls",
        "fwd/s",
        "CPU %",
        "(ticks)",
        "%/call",
        "µs/s/call",
        "µs/pkt",
        "vs raw",
        "vs unb.",
        "loss %",
        "proc %",
        "drops+err"
    );
    for r in rows {
        let name = if BASELINES.contains(&r.forwarder) {
            r.forwarder.to_owned()
        } else {
            format!("{} x{}", r.forwarder, r.workers)
        };
        let ratio = |kind: &str| match baseline_us(kind, r.run, r.calls) {
            Some(base) if r.forwarder != kind => format!("{:.2}x", r.us_per_packet() / base),
            _ => "-".to_owned(),
        };
        println!(
            "{:<14} {:>3} {:>5} {:>9.0} {:>9.2} {:>9.1} {:>9.3} {:>10.1} {:>10.2} {:>8} {:>8} {:>7.3} {:>8.1} {:>9}",
            name,
            r.run + 1,
            r.calls,
            r.forwarded_per_s(),
            r.cpu_pct(),
            r.cpu_pct_ticks(hz),
            r.cpu_pct() / r.calls as f64,
            r.worker_cpu.ns as f64 / 1e3 / r.window_s / r.calls as f64,
            r.us_per_packet(),
            ratio("raw"),
            ratio("raw-unbatched"),
            r.loss_pct(),
            r.process_ticks as f64 / hz as f64 / r.window_s * 100.0,
            r.unexpected_drops + r.send_failed,
        );
    }
    println!();
    println!(
        "CPU % = forwarder threads' CPU as % of one core (schedstat ns); (ticks) = the same from utime+stime at \
         {hz} Hz; %/call and µs/s/call = CPU per call; µs/pkt = CPU per forwarded datagram; vs raw / vs unb. = \
         µs/pkt over the batched floor's / the unbatched forwarder's in the same run at the same call count; loss \
         over the whole run after latching; proc % = whole process (senders and receivers included); drops+err = \
         relay drops other than the handshake's peer_unknown, plus send failures."
    );
    let runs = rows.iter().map(|r| r.run).max().unwrap_or(0) + 1;
    if runs < 2 {
        return;
    }
    // Over several runs: the median and range of each ratio to the floor.
    println!();
    println!("{:<14} {:>5} {:>24} {:>24}", "forwarder", "calls", "µs/pkt median (range)", "vs raw median (range)");
    let mut keys: Vec<(&str, usize, usize)> = rows.iter().map(|r| (r.forwarder, r.workers, r.calls)).collect();
    keys.dedup();
    keys.sort_by_key(|&(f, w, c)| (c, BASELINES.contains(&f) as u8 ^ 1, f, w));
    keys.dedup();
    for (f, w, c) in keys {
        let mine: Vec<&Row> = rows.iter().filter(|r| (r.forwarder, r.workers, r.calls) == (f, w, c)).collect();
        let us: Vec<f64> = mine.iter().map(|r| r.us_per_packet()).collect();
        let ratios: Vec<f64> =
            mine.iter().filter_map(|r| baseline_us("raw", r.run, c).map(|b| r.us_per_packet() / b)).collect();
        let name = if BASELINES.contains(&f) { f.to_owned() } else { format!("{f} x{w}") };
        let ratio = if f == "raw" { "-".to_owned() } else { summary(&ratios, "x") };
        println!("{:<14} {:>5} {:>24} {:>24}", name, c, summary(&us, ""), ratio);
    }
}

/// "median (low–high)" of `values`, each followed by `unit`.
fn summary(values: &[f64], unit: &str) -> String {
    let mut v: Vec<f64> = values.iter().copied().filter(|x| x.is_finite()).collect();
    if v.is_empty() {
        return "-".to_owned();
    }
    v.sort_by(f64::total_cmp);
    let median = if v.len() % 2 == 1 { v[v.len() / 2] } else { (v[v.len() / 2 - 1] + v[v.len() / 2]) / 2.0 };
    format!("{median:.2}{unit} ({:.2}–{:.2})", v[0], v[v.len() - 1])
}

fn main() {
    let settings = Settings::from_env();
    let hz = clock_ticks_per_second();
    let per_run = settings.counts.len() * (BASELINES.len() + settings.workers.len());
    let runs = settings.runs * per_run;
    eprintln!(
        "relay_call: calls {:?}, relay workers {:?}, {:.0} s windows, {} runs of {per_run} (~{:.0} s)",
        settings.counts,
        settings.workers,
        settings.window.as_secs_f64(),
        settings.runs,
        runs as f64 * (settings.window + WARMUP + DRAIN).as_secs_f64()
    );
    let mut rows = Vec::new();
    for run_index in 0..settings.runs {
        for &calls in &settings.counts {
            let mut row = |kind: &'static str, workers: usize| {
                let mut r = run(kind, workers, calls, settings.window, hz);
                r.run = run_index;
                rows.push(r);
            };
            for kind in BASELINES {
                row(kind, 1);
            }
            for &workers in &settings.workers {
                row("confab", workers);
            }
        }
    }
    print_table(&rows, hz);
}
