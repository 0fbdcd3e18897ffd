//! The traffic engine behind `relay`, `raw` and `turn`: pairs of UDP legs that send
//! media-shaped packets to each other through a relay, at a fixed rate or flat out, for a
//! bounded time and count, and measure what arrives.
//!
//! Each leg is one UDP socket connected to the relay it sends to; the relay forwards
//! leg A's datagrams to leg B and back. What differs between relays is only the framing:
//! bytes put before the inner packet when sending (the confab relay header, a TURN
//! ChannelData header, nothing for the raw forwarder) and bytes to skip before it in what
//! arrives. Sender threads pace the legs; receiver threads wait on every socket with
//! epoll (mio) and read until the sockets are dry, so a few threads carry hundreds of legs.

use crate::packet::{self, PROBE, VOICE};
use crate::stats;
use anyhow::Context;
use hdrhistogram::Histogram;
use indicatif::ProgressBar;
use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::io;
use std::net::{SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// Socket buffers of a leg: as large as the relay's own (4 MiB), so a burst is lost at
/// the relay, where it is counted, rather than in the harness.
const LEG_BUFFER_BYTES: usize = 4 << 20;
/// How long a send may wait for room in a full socket buffer before it counts as failed.
const SEND_WAIT_MAX: Duration = Duration::from_millis(200);
/// After the window: how long the receivers wait for stragglers once nothing arrives.
const DRAIN_QUIET: Duration = Duration::from_millis(300);
/// After the window: the longest wait for stragglers.
const DRAIN_MAX: Duration = Duration::from_secs(2);

/// One end of a relayed pair.
pub struct Leg {
    /// Bound locally and connected to the relay this leg sends to.
    pub socket: UdpSocket,
    /// Bytes before the inner packet in every datagram this leg sends.
    pub prefix: Vec<u8>,
    /// Bytes before the inner packet in every datagram this leg receives.
    pub skip: usize,
}

/// Two legs that send to each other through a relay.
pub struct Pair {
    /// The first leg (the confab relay's leg A, the TURN client that allocated first).
    pub a: Leg,
    /// The second leg.
    pub b: Leg,
}

/// What to send.
#[derive(Debug, Clone)]
pub struct Pattern {
    /// Datagrams per second per leg (each direction of each pair), unless flat out.
    pub rate: u32,
    /// Bytes of each inner packet (the relay's framing comes on top).
    pub inner_len: usize,
    /// The timed window.
    pub duration: Duration,
    /// Send as fast as the sender threads can, bounded by the window and `max_packets`.
    pub flat_out: bool,
    /// Most timed datagrams in all (over every leg).
    pub max_packets: u64,
    /// Sender threads.
    pub senders: usize,
    /// Receiver threads.
    pub receivers: usize,
}

/// What a run measured.
pub struct Outcome {
    /// Timed datagrams sent.
    pub sent: u64,
    /// Timed datagrams that arrived at the other leg.
    pub delivered: u64,
    /// The timed window (shorter than asked when `max_packets` ended it).
    pub window: Duration,
    /// Arrivals with a sequence number at or below one already seen on that leg.
    pub reordered: u64,
    /// Arrivals that came from another leg than the peer, or were not our packets.
    pub misrouted: u64,
    /// Arrivals sent in an earlier window (not counted as delivered).
    pub stale: u64,
    /// Sends that found the socket buffer full and had to wait.
    pub send_waits: u64,
    /// Sends that failed (an error, or no room within 200 ms).
    pub send_errors: u64,
    /// One-way latency of each delivered datagram, nanoseconds.
    pub latency: Histogram<u64>,
    /// Mean over receiving legs of the RFC 3550 interarrival jitter, nanoseconds.
    pub jitter_ns: Option<f64>,
}

/// A leg socket connected to `dest`, with large buffers, blocking with a read timeout
/// (the TURN setup talks on it before the traffic starts).
pub fn leg_socket(dest: SocketAddr) -> anyhow::Result<UdpSocket> {
    use socket2::{Domain, Protocol, Socket, Type};
    let s = Socket::new(Domain::for_address(dest), Type::DGRAM, Some(Protocol::UDP))?;
    // Best effort: the kernel caps them at net.core.rmem_max / wmem_max.
    let _ = s.set_recv_buffer_size(LEG_BUFFER_BYTES);
    let _ = s.set_send_buffer_size(LEG_BUFFER_BYTES);
    let any: SocketAddr = if dest.is_ipv4() { "0.0.0.0:0".parse()? } else { "[::]:0".parse()? };
    s.bind(&any.into())?;
    s.connect(&dest.into()).with_context(|| format!("connecting a leg to {dest}"))?;
    let s: UdpSocket = s.into();
    s.set_read_timeout(Some(Duration::from_millis(300)))?;
    Ok(s)
}

fn ns(epoch: Instant) -> u64 {
    u64::try_from(epoch.elapsed().as_nanos()).unwrap_or(u64::MAX)
}

/// Pairs of legs that send straight to each other, no relay between: the generator's
/// own ceiling (what it can send and receive on this machine), measured like a server.
pub fn looped_pairs(n: usize) -> anyhow::Result<Vec<Pair>> {
    (0..n)
        .map(|_| {
            let a = leg_socket("127.0.0.1:9".parse()?)?;
            let b = leg_socket(a.local_addr()?)?;
            a.connect(b.local_addr()?)?;
            Ok(Pair { a: Leg { socket: a, prefix: vec![], skip: 0 }, b: Leg { socket: b, prefix: vec![], skip: 0 } })
        })
        .collect()
}

/// Datagrams one send call (`sendmmsg`) or receive call (`recvmmsg`) of the generator
/// handles at most: the relay's batch.
pub const BATCH: usize = confab::relay::mmsg::BATCH_MAX;

struct SendLeg {
    socket: UdpSocket,
    buf: Vec<u8>,
    prefix_len: usize,
    seq: u32,
}

/// What one send call did.
#[derive(Default)]
struct Burst {
    sent: u64,
    waited: bool,
    failed: u64,
}

impl SendLeg {
    /// Sends the next `k` (at most [`BATCH`]) packets of this leg in one `sendmmsg` (the
    /// socket is connected), stamped now; a full socket buffer is waited out briefly.
    fn send(&mut self, epoch: Instant, kind: u8, k: usize, scratch: &mut [Vec<u8>]) -> Burst {
        let k = k.clamp(1, BATCH.min(scratch.len()));
        let len = self.buf.len();
        let now = ns(epoch);
        for b in scratch.iter_mut().take(k) {
            // A fresh number for every datagram: the confab relay drops a repeated one.
            self.seq = self.seq.wrapping_add(1);
            b.clear();
            b.extend_from_slice(&self.buf);
            packet::stamp(&mut b[self.prefix_len..], kind, self.seq, now);
        }
        let mut out = Burst::default();
        let mut done = 0;
        let mut waiting: Option<Instant> = None;
        while done < k {
            match send_batch(&self.socket, &scratch[done..k], len) {
                Ok(n) => {
                    done += n;
                    out.sent += n as u64;
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    out.waited = true;
                    if waiting.get_or_insert_with(Instant::now).elapsed() > SEND_WAIT_MAX {
                        out.failed += (k - done) as u64;
                        break;
                    }
                    std::thread::yield_now();
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => {
                    // This datagram is refused; the rest may still go.
                    out.failed += 1;
                    done += 1;
                }
            }
        }
        out
    }
}

/// `sendmmsg` of `bufs` (each `len` bytes) on a connected socket; how many went.
#[cfg(target_os = "linux")]
fn send_batch(socket: &UdpSocket, bufs: &[Vec<u8>], len: usize) -> io::Result<usize> {
    use std::os::fd::AsRawFd;
    let n = bufs.len().min(BATCH);
    // SAFETY: plain old data; all zeros is valid (no destination: the socket is connected).
    let mut iovecs: [libc::iovec; BATCH] = unsafe { std::mem::zeroed() };
    let mut hdrs: [libc::mmsghdr; BATCH] = unsafe { std::mem::zeroed() };
    for i in 0..n {
        iovecs[i] = libc::iovec { iov_base: bufs[i].as_ptr() as *mut libc::c_void, iov_len: len.min(bufs[i].len()) };
        hdrs[i].msg_hdr.msg_iov = &raw mut iovecs[i];
        hdrs[i].msg_hdr.msg_iovlen = 1;
    }
    // SAFETY: every header points into `iovecs`, which point into `bufs`; all outlive the
    // call, and the kernel only reads them.
    let r = unsafe { libc::sendmmsg(socket.as_raw_fd(), hdrs.as_mut_ptr(), n as libc::c_uint, 0) };
    if r < 0 { Err(io::Error::last_os_error()) } else { Ok(r as usize) }
}

#[cfg(not(target_os = "linux"))]
fn send_batch(socket: &UdpSocket, bufs: &[Vec<u8>], len: usize) -> io::Result<usize> {
    socket.send(&bufs[0][..len]).map(|_| 1)
}

struct Shared {
    stop: AtomicBool,
    /// Per leg: it has received a probe from its peer.
    heard: Vec<AtomicBool>,
    delivered: AtomicU64,
    sent: AtomicU64,
    /// When the current window's first packet may leave (ns since the epoch): anything
    /// stamped before it is a straggler of an earlier window and not counted.
    window_start_ns: AtomicU64,
}

#[derive(Default, Clone)]
struct RecvLeg {
    highest: Option<u32>,
    last_transit: Option<u64>,
    jitter: Option<f64>,
}

/// One receiver's tally of the current window.
struct RecvOut {
    delivered: u64,
    reordered: u64,
    misrouted: u64,
    stale: u64,
    state: Vec<RecvLeg>,
    latency: Histogram<u64>,
}

impl RecvOut {
    fn new(legs: usize) -> Self {
        Self {
            delivered: 0,
            reordered: 0,
            misrouted: 0,
            stale: 0,
            state: vec![RecvLeg::default(); legs],
            latency: stats::histogram(),
        }
    }
}

/// A receiver thread and the tally it keeps for the current window.
struct Receiver {
    thread: Option<JoinHandle<anyhow::Result<()>>>,
    tally: Arc<Mutex<RecvOut>>,
    legs: usize,
}

/// Legs ready to send, and receivers already listening. Several windows may run one
/// after another on the same legs (the `limit` search): each has its own tally.
pub struct Traffic {
    legs: Vec<SendLeg>,
    receivers: Vec<Receiver>,
    shared: Arc<Shared>,
    epoch: Instant,
    pattern: Pattern,
}

impl Drop for Traffic {
    fn drop(&mut self) {
        self.shared.stop.store(true, Relaxed);
        for r in &mut self.receivers {
            if let Some(t) = r.thread.take() {
                let _ = t.join();
            }
        }
    }
}

impl Traffic {
    /// Starts the receivers on every leg of `pairs`.
    pub fn start(pairs: Vec<Pair>, pattern: Pattern) -> anyhow::Result<Self> {
        anyhow::ensure!(!pairs.is_empty(), "no pairs to send between");
        let epoch = Instant::now();
        let legs: Vec<Leg> = pairs.into_iter().flat_map(|p| [p.a, p.b]).collect();
        let shared = Arc::new(Shared {
            stop: AtomicBool::new(false),
            heard: legs.iter().map(|_| AtomicBool::new(false)).collect(),
            delivered: AtomicU64::new(0),
            sent: AtomicU64::new(0),
            window_start_ns: AtomicU64::new(u64::MAX),
        });
        let receivers_n = pattern.receivers.clamp(1, legs.len());
        let mut groups: Vec<Vec<(u32, UdpSocket, usize)>> = (0..receivers_n).map(|_| Vec::new()).collect();
        let mut send_legs = Vec::with_capacity(legs.len());
        for (i, leg) in legs.into_iter().enumerate() {
            leg.socket.set_nonblocking(true)?;
            let rx = leg.socket.try_clone()?;
            groups[i % receivers_n].push((i as u32, rx, leg.skip));
            let mut buf = leg.prefix.clone();
            buf.extend_from_slice(&packet::template(pattern.inner_len, i as u32));
            send_legs.push(SendLeg { socket: leg.socket, buf, prefix_len: leg.prefix.len(), seq: 0 });
        }
        let mut receivers = Vec::new();
        for (n, group) in groups.into_iter().enumerate() {
            let shared = shared.clone();
            let legs = group.len();
            let tally = Arc::new(Mutex::new(RecvOut::new(legs)));
            let t = tally.clone();
            let thread = std::thread::Builder::new()
                .name(format!("receiver-{n}"))
                .spawn(move || receive(group, &shared, &t, epoch))?;
            receivers.push(Receiver { thread: Some(thread), tally, legs });
        }
        Ok(Self { legs: send_legs, receivers, shared, epoch, pattern })
    }

    /// The pattern the next window sends.
    pub fn pattern(&self) -> &Pattern {
        &self.pattern
    }

    /// Changes the rate per leg of the next window.
    pub fn set_rate(&mut self, rate: u32) {
        self.pattern.rate = rate.max(1);
    }

    /// Changes the length of the next window.
    pub fn set_duration(&mut self, d: Duration) {
        self.pattern.duration = d;
    }

    /// Legs in all (two per pair).
    pub fn legs(&self) -> usize {
        self.legs.len()
    }

    /// Sends probes on every leg until each has heard its peer's (a relay that latches,
    /// as confab's does, drops the first one of a pair); returns how long that took.
    pub fn latch(&mut self, timeout: Duration) -> anyhow::Result<Duration> {
        let started = Instant::now();
        let mut scratch = vec![Vec::new(); 1];
        loop {
            for (i, leg) in self.legs.iter_mut().enumerate() {
                if !self.shared.heard[i ^ 1].load(Relaxed) {
                    leg.send(self.epoch, PROBE, 1, &mut scratch);
                }
            }
            std::thread::sleep(Duration::from_millis(20));
            let deaf = self.shared.heard.iter().filter(|h| !h.load(Relaxed)).count();
            if deaf == 0 {
                return Ok(started.elapsed());
            }
            if started.elapsed() > timeout {
                anyhow::bail!(
                    "{deaf} of {} legs heard no probe from their peer within {timeout:?}: the relay did not \
                     forward them",
                    self.legs.len()
                );
            }
        }
    }

    /// Runs one timed window (showing it on `bar`), waits for stragglers, and tallies it.
    pub fn run(&mut self, bar: &ProgressBar) -> anyhow::Result<Outcome> {
        let total = self.legs.len();
        let senders_n = self.pattern.senders.clamp(1, total);
        let start_ns = ns(self.epoch) + 20_000_000;
        let window_ns = u64::try_from(self.pattern.duration.as_nanos()).unwrap_or(u64::MAX);
        // A fresh tally for this window; what arrives from earlier windows is not counted.
        let sent_before = self.shared.sent.load(Relaxed);
        let delivered_before = self.shared.delivered.load(Relaxed);
        self.shared.window_start_ns.store(start_ns, Relaxed);
        for r in &self.receivers {
            *r.tally.lock().expect("receiver tally") = RecvOut::new(r.legs);
        }
        let mut groups: Vec<Vec<(usize, SendLeg)>> = (0..senders_n).map(|_| Vec::new()).collect();
        for (i, leg) in std::mem::take(&mut self.legs).into_iter().enumerate() {
            groups[i % senders_n].push((i, leg));
        }
        let mut senders = Vec::new();
        for (n, group) in groups.into_iter().enumerate() {
            let quota = (self.pattern.max_packets.saturating_mul(group.len() as u64) / total as u64).max(1);
            let plan = Plan {
                epoch: self.epoch,
                start_ns,
                end_ns: start_ns + window_ns,
                quota,
                interval_ns: 1_000_000_000 / u64::from(self.pattern.rate.max(1)),
                legs_total: total as u64,
                flat_out: self.pattern.flat_out,
            };
            let shared = self.shared.clone();
            senders.push(std::thread::Builder::new().name(format!("sender-{n}")).spawn(move || {
                let mut group = group;
                let out = if plan.flat_out {
                    send_flat_out(&mut group, &plan, &shared)
                } else {
                    send_paced(&mut group, &plan, &shared)
                };
                (out, group)
            })?);
        }
        bar.set_length(self.pattern.duration.as_millis() as u64);
        while senders.iter().any(|s| !s.is_finished()) {
            let elapsed_ms = ns(self.epoch).saturating_sub(start_ns) / 1_000_000;
            bar.set_position(elapsed_ms.min(bar.length().unwrap_or(0)));
            bar.set_message(format!(
                "sent {} delivered {}",
                self.shared.sent.load(Relaxed) - sent_before,
                self.shared.delivered.load(Relaxed) - delivered_before
            ));
            std::thread::sleep(Duration::from_millis(100));
        }
        let mut sent = SendOut::default();
        let mut legs: Vec<(usize, SendLeg)> = Vec::with_capacity(total);
        for s in senders {
            let (o, group) = s.join().map_err(|_| anyhow::anyhow!("a sender thread panicked"))?;
            sent.sent += o.sent;
            sent.waits += o.waits;
            sent.errors += o.errors;
            sent.hit_quota |= o.hit_quota;
            sent.last_ns = sent.last_ns.max(o.last_ns);
            legs.extend(group);
        }
        legs.sort_by_key(|(i, _)| *i);
        self.legs = legs.into_iter().map(|(_, l)| l).collect();
        bar.set_message("draining");
        self.drain(delivered_before, sent.sent);
        let mut out = Outcome {
            sent: sent.sent,
            delivered: 0,
            window: if sent.hit_quota {
                Duration::from_nanos(sent.last_ns.saturating_sub(start_ns).max(1))
            } else {
                self.pattern.duration
            },
            reordered: 0,
            misrouted: 0,
            stale: 0,
            send_waits: sent.waits,
            send_errors: sent.errors,
            latency: stats::histogram(),
            jitter_ns: None,
        };
        let mut jitters = Vec::new();
        for r in &self.receivers {
            if r.thread.as_ref().is_some_and(|t| t.is_finished()) {
                anyhow::bail!("a receiver thread stopped early");
            }
            let tally = std::mem::replace(&mut *r.tally.lock().expect("receiver tally"), RecvOut::new(r.legs));
            out.delivered += tally.delivered;
            out.reordered += tally.reordered;
            out.misrouted += tally.misrouted;
            out.stale += tally.stale;
            out.latency.add(&tally.latency).context("merging latency histograms")?;
            jitters.extend(tally.state.iter().filter_map(|s| s.jitter));
        }
        if !jitters.is_empty() {
            out.jitter_ns = Some(jitters.iter().sum::<f64>() / jitters.len() as f64);
        }
        Ok(out)
    }

    /// Waits until every datagram sent in the window arrived, or nothing arrived for a
    /// while.
    fn drain(&self, delivered_before: u64, sent: u64) {
        let started = Instant::now();
        let got = || self.shared.delivered.load(Relaxed) - delivered_before;
        let mut last = got();
        let mut quiet_since = Instant::now();
        while last < sent && started.elapsed() < DRAIN_MAX && quiet_since.elapsed() < DRAIN_QUIET {
            std::thread::sleep(Duration::from_millis(20));
            let now = got();
            if now != last {
                last = now;
                quiet_since = Instant::now();
            }
        }
    }
}

struct Plan {
    epoch: Instant,
    start_ns: u64,
    end_ns: u64,
    quota: u64,
    interval_ns: u64,
    legs_total: u64,
    flat_out: bool,
}

#[derive(Default)]
struct SendOut {
    sent: u64,
    waits: u64,
    errors: u64,
    hit_quota: bool,
    last_ns: u64,
}

impl SendOut {
    fn count(&mut self, b: &Burst, shared: &Shared) {
        self.sent += b.sent;
        self.errors += b.failed;
        if b.waited {
            self.waits += 1;
        }
        shared.sent.fetch_add(b.sent, Relaxed);
    }
}

fn sleep_until(epoch: Instant, at_ns: u64) {
    let now = ns(epoch);
    if at_ns > now {
        std::thread::sleep(Duration::from_nanos(at_ns - now));
    }
}

/// Each leg sends every `interval_ns`; legs are spread evenly over the interval (as the
/// calls of a real relay start at unrelated times) instead of all sending at once. When
/// the thread wakes late (a sleep's slack, or more due than one thread sends one by
/// one), the packets of a leg that are already due go in one `sendmmsg`, each stamped
/// when it actually leaves.
fn send_paced(legs: &mut [(usize, SendLeg)], plan: &Plan, shared: &Shared) -> SendOut {
    let mut out = SendOut::default();
    let mut scratch = vec![Vec::new(); BATCH];
    let mut due: BinaryHeap<Reverse<(u64, usize)>> = legs
        .iter()
        .enumerate()
        .map(|(k, (global, _))| Reverse((plan.start_ns + plan.interval_ns * *global as u64 / plan.legs_total, k)))
        .collect();
    while let Some(Reverse((at, k))) = due.pop() {
        if at >= plan.end_ns {
            break;
        }
        let done = out.sent + out.errors;
        if done >= plan.quota {
            out.hit_quota = true;
            break;
        }
        sleep_until(plan.epoch, at);
        let now = ns(plan.epoch);
        // The window is over in real time: what is still due was not sent in it (a sender
        // that falls behind offers less than asked, and the tally says so).
        if now >= plan.end_ns {
            break;
        }
        // Packets of this leg due by now (this one included), within the window and quota.
        let behind = 1 + now.saturating_sub(at) / plan.interval_ns;
        let n = behind.min(BATCH as u64).min(plan.quota - done) as usize;
        let b = legs[k].1.send(plan.epoch, VOICE, n, &mut scratch);
        out.count(&b, shared);
        out.last_ns = ns(plan.epoch);
        due.push(Reverse((at + plan.interval_ns * n as u64, k)));
    }
    out
}

/// Every leg in turn, [`BATCH`] packets per send call, as fast as one thread sends, until
/// the window or the quota ends.
fn send_flat_out(legs: &mut [(usize, SendLeg)], plan: &Plan, shared: &Shared) -> SendOut {
    let mut out = SendOut::default();
    let mut scratch = vec![Vec::new(); BATCH];
    sleep_until(plan.epoch, plan.start_ns);
    'window: loop {
        for (_, leg) in legs.iter_mut() {
            let done = out.sent + out.errors;
            if done >= plan.quota {
                out.hit_quota = true;
                break 'window;
            }
            if ns(plan.epoch) >= plan.end_ns {
                break 'window;
            }
            let n = (BATCH as u64).min(plan.quota - done) as usize;
            let b = leg.send(plan.epoch, VOICE, n, &mut scratch);
            out.count(&b, shared);
        }
    }
    out.last_ns = ns(plan.epoch);
    out
}

/// One receiver thread: reads every socket of its group, [`BATCH`] datagrams a call,
/// until told to stop.
fn receive(
    group: Vec<(u32, UdpSocket, usize)>,
    shared: &Shared,
    tally: &Mutex<RecvOut>,
    epoch: Instant,
) -> anyhow::Result<()> {
    use confab::relay::mmsg::RecvBatch;
    use mio::unix::SourceFd;
    use mio::{Events, Interest, Poll, Token};
    use std::os::fd::AsRawFd;
    let mut poll = Poll::new()?;
    for (k, (_, socket, _)) in group.iter().enumerate() {
        poll.registry().register(&mut SourceFd(&socket.as_raw_fd()), Token(k), Interest::READABLE)?;
    }
    let mut events = Events::with_capacity(1024);
    let mut batch = RecvBatch::new(BATCH, 4096).full_requests();
    while !shared.stop.load(Relaxed) {
        match poll.poll(&mut events, Some(Duration::from_millis(20))) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e.into()),
        }
        let mut out = tally.lock().map_err(|_| anyhow::anyhow!("receiver tally poisoned"))?;
        let seen = out.delivered;
        let window_start = shared.window_start_ns.load(Relaxed);
        for ev in events.iter() {
            let k = ev.token().0;
            let (leg, socket, skip) = &group[k];
            // Edge-triggered: read until the socket is dry.
            loop {
                let n = match batch.recv(socket) {
                    Ok(n) => n,
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                    // An ICMP error from an earlier send, reported on this socket.
                    Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => continue,
                    Err(_) => break,
                };
                let now_ns = ns(epoch);
                for i in 0..n {
                    let Some(p) = batch.get(i).get(*skip..).and_then(packet::parse) else {
                        out.misrouted += 1;
                        continue;
                    };
                    if p.leg != leg ^ 1 {
                        out.misrouted += 1;
                        continue;
                    }
                    if p.kind == PROBE {
                        shared.heard[*leg as usize].store(true, Relaxed);
                        continue;
                    }
                    if p.sent_ns < window_start {
                        out.stale += 1;
                        continue;
                    }
                    out.delivered += 1;
                    let transit = now_ns.saturating_sub(p.sent_ns);
                    stats::record(&mut out.latency, Duration::from_nanos(transit));
                    let st = &mut out.state[k];
                    let reordered = match st.highest {
                        Some(h) if p.seq.wrapping_sub(h) as i32 <= 0 => true,
                        _ => {
                            st.highest = Some(p.seq);
                            false
                        }
                    };
                    // RFC 3550 §6.4.1: J += (|D| - J) / 16, D the change in transit time.
                    if let Some(prev) = st.last_transit {
                        let d = (transit as f64 - prev as f64).abs();
                        let j = st.jitter.get_or_insert(0.0);
                        *j += (d - *j) / 16.0;
                    }
                    st.last_transit = Some(transit);
                    if reordered {
                        out.reordered += 1;
                    }
                }
                if batch.drained() {
                    break;
                }
            }
        }
        let new = out.delivered - seen;
        drop(out);
        shared.delivered.fetch_add(new, Relaxed);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Two legs that talk straight to each other: the engine alone, no relay.
    fn looped_pair() -> Pair {
        let a = UdpSocket::bind("127.0.0.1:0").unwrap();
        let b = UdpSocket::bind("127.0.0.1:0").unwrap();
        a.connect(b.local_addr().unwrap()).unwrap();
        b.connect(a.local_addr().unwrap()).unwrap();
        Pair { a: Leg { socket: a, prefix: vec![], skip: 0 }, b: Leg { socket: b, prefix: vec![], skip: 0 } }
    }

    #[test]
    fn paced_pairs_deliver_everything_they_send() {
        let pattern = Pattern {
            rate: 100,
            inner_len: 100,
            duration: Duration::from_millis(500),
            flat_out: false,
            max_packets: 1_000_000,
            senders: 2,
            receivers: 2,
        };
        let mut t = Traffic::start(vec![looped_pair(), looped_pair()], pattern).unwrap();
        t.latch(Duration::from_secs(2)).unwrap();
        let o = t.run(&ProgressBar::hidden()).unwrap();
        // 4 legs × 100 pps × 0.5 s.
        assert!((195..=205).contains(&o.sent), "sent {}", o.sent);
        assert_eq!(o.delivered, o.sent);
        assert_eq!((o.misrouted, o.reordered, o.send_errors), (0, 0, 0));
        assert_eq!(o.latency.len(), o.delivered);
        assert!(o.jitter_ns.is_some());
    }

    #[test]
    fn flat_out_stops_at_the_packet_quota() {
        let pattern = Pattern {
            rate: 50,
            inner_len: 64,
            duration: Duration::from_secs(5),
            flat_out: true,
            max_packets: 2_000,
            senders: 1,
            receivers: 1,
        };
        let mut t = Traffic::start(vec![looped_pair()], pattern).unwrap();
        t.latch(Duration::from_secs(2)).unwrap();
        let started = Instant::now();
        let o = t.run(&ProgressBar::hidden()).unwrap();
        assert_eq!(o.sent + o.send_errors, 2_000);
        assert!(o.window < Duration::from_secs(5) && started.elapsed() < Duration::from_secs(4));
    }
}
