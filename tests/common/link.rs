//! A userspace link emulator between two network namespaces (root, `/dev/net/tun`): a TUN
//! device in each, and a thread that forwards IP packets between them through a
//! [`Scheduler`] per direction (delay, rate, loss, drop-tail queue). TCP and UDP see the
//! same link. The devices vanish when the [`Link`] is dropped (its descriptors close).

use super::netns::run;
use super::shape::{Scheduler, Shape, Verdict};
use std::collections::VecDeque;
use std::fs::File;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// What one direction did to the packets it read.
#[derive(Debug, Default)]
pub struct Counters {
    /// Written to the other side.
    pub forwarded: AtomicU64,
    /// Lost at random.
    pub lost: AtomicU64,
    /// Dropped because the queue was full.
    pub queue_full: AtomicU64,
    /// The other side's device refused the write.
    pub write_failed: AtomicU64,
}

impl Counters {
    /// (forwarded, lost, queue full, write failed).
    pub fn get(&self) -> (u64, u64, u64, u64) {
        let l = |a: &AtomicU64| a.load(Ordering::Relaxed);
        (l(&self.forwarded), l(&self.lost), l(&self.queue_full), l(&self.write_failed))
    }
}

/// One end: namespace, TUN device name, address/prefix.
pub type End<'a> = (&'a str, &'a str, &'a str);

/// A running emulated link; stopped (thread joined, devices gone) on drop.
pub struct Link {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
    /// From end a to end b, and from b to a.
    pub counters: [Arc<Counters>; 2],
}

/// Packets waiting in one direction at most (a bound on memory when the delay is long).
const IN_FLIGHT_MAX: usize = 65_536;
/// How long the thread sleeps at most between looks at the stop flag.
const TICK: Duration = Duration::from_millis(20);

impl Link {
    /// Joins end `a` and end `b` with `shape` each way (losses seeded from `seed`).
    pub fn new(a: End<'_>, b: End<'_>, shape: Shape, seed: u64) -> Self {
        let fds = [open_tun(a.0, a.1), open_tun(b.0, b.1)];
        for (ns, dev, addr) in [a, b] {
            run(&["ip", "-n", ns, "addr", "add", addr, "dev", dev]);
            run(&["ip", "-n", ns, "link", "set", dev, "txqueuelen", "2000", "up"]);
        }
        let stop = Arc::new(AtomicBool::new(false));
        let counters = [Arc::new(Counters::default()), Arc::new(Counters::default())];
        let schedulers = [Scheduler::new(shape, seed), Scheduler::new(shape, seed ^ 0x5eed_0000_0001)];
        let (s, c) = (stop.clone(), counters.clone());
        let thread = std::thread::Builder::new()
            .name(format!("link {}-{}", a.1, b.1))
            .spawn(move || forward(fds, schedulers, &c, &s))
            .unwrap();
        Link { stop, thread: Some(thread), counters }
    }
}

impl Drop for Link {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Opens TUN device `name` in namespace `ns`: the device belongs to the namespace the
/// descriptor was opened in, so a thread of its own enters `ns` (setns affects only the
/// calling thread) and opens it there.
fn open_tun(ns: &str, name: &str) -> OwnedFd {
    let name = name.to_owned();
    in_ns(ns, move || {
        // SAFETY: plain syscalls on a descriptor this function owns; `ifr` is zeroed and
        // its name NUL-terminated within IFNAMSIZ.
        unsafe {
            let fd = libc::open(c"/dev/net/tun".as_ptr(), libc::O_RDWR | libc::O_NONBLOCK | libc::O_CLOEXEC);
            assert!(fd >= 0, "/dev/net/tun: {}", std::io::Error::last_os_error());
            let fd = OwnedFd::from_raw_fd(fd);
            let mut ifr: libc::ifreq = std::mem::zeroed();
            assert!(name.len() < libc::IFNAMSIZ, "{name}: too long");
            for (d, s) in ifr.ifr_name.iter_mut().zip(name.bytes()) {
                *d = s as libc::c_char;
            }
            ifr.ifr_ifru.ifru_flags = (libc::IFF_TUN | libc::IFF_NO_PI) as libc::c_short;
            let r = libc::ioctl(fd.as_raw_fd(), libc::TUNSETIFF, &ifr);
            assert_eq!(r, 0, "TUNSETIFF {name}: {}", std::io::Error::last_os_error());
            fd
        }
    })
    .join()
    .unwrap()
}

/// The thread: reads whatever either device has, schedules it, and writes each packet
/// to the other device when its time comes; until `stop`.
fn forward(fds: [OwnedFd; 2], mut sched: [Scheduler; 2], counters: &[Arc<Counters>; 2], stop: &AtomicBool) {
    let start = Instant::now();
    // Departures in a direction come in arrival order (one serialiser, one fixed delay),
    // so a FIFO per direction is the ordered queue.
    let mut waiting: [VecDeque<(Duration, Vec<u8>)>; 2] = [VecDeque::new(), VecDeque::new()];
    let raw = [fds[0].as_raw_fd(), fds[1].as_raw_fd()];
    let mut buf = vec![0u8; 65_536];
    while !stop.load(Ordering::Relaxed) {
        let now = start.elapsed();
        for dir in 0..2 {
            while waiting[dir].front().is_some_and(|(at, _)| *at <= now) {
                let (_, p) = waiting[dir].pop_front().expect("a front");
                let c = &counters[dir];
                let counter = if write(raw[1 - dir], &p) { &c.forwarded } else { &c.write_failed };
                counter.fetch_add(1, Ordering::Relaxed);
            }
        }
        let next = waiting.iter().filter_map(|w| w.front().map(|(at, _)| *at)).min();
        let wait = next.map_or(TICK, |at| at.saturating_sub(start.elapsed()).min(TICK));
        let ready = poll(raw, wait);
        for dir in 0..2 {
            // A bounded batch per wake, so neither side starves the other's deliveries.
            for _ in 0..256 {
                if !ready[dir] {
                    break;
                }
                // SAFETY: reading into a buffer of the length given.
                let n = unsafe { libc::read(raw[dir], buf.as_mut_ptr().cast(), buf.len()) };
                let Ok(n) = usize::try_from(n) else { break };
                if n == 0 {
                    break;
                }
                let c = &counters[dir];
                match sched[dir].admit(start.elapsed(), n) {
                    Verdict::Deliver(_) if waiting[dir].len() >= IN_FLIGHT_MAX => {
                        c.queue_full.fetch_add(1, Ordering::Relaxed);
                    }
                    Verdict::Deliver(at) => waiting[dir].push_back((at, buf[..n].to_vec())),
                    Verdict::Lost => {
                        c.lost.fetch_add(1, Ordering::Relaxed);
                    }
                    Verdict::QueueFull => {
                        c.queue_full.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
        }
    }
}

fn write(fd: RawFd, p: &[u8]) -> bool {
    // SAFETY: writing a buffer of the length given.
    let n = unsafe { libc::write(fd, p.as_ptr().cast(), p.len()) };
    usize::try_from(n).is_ok_and(|n| n == p.len())
}

/// Waits at most `wait` for either descriptor to be readable; which are.
fn poll(fds: [RawFd; 2], wait: Duration) -> [bool; 2] {
    let mut p = fds.map(|fd| libc::pollfd { fd, events: libc::POLLIN, revents: 0 });
    let ts = libc::timespec { tv_sec: wait.as_secs() as libc::time_t, tv_nsec: wait.subsec_nanos().into() };
    // SAFETY: two valid pollfds and a timespec, no signal mask.
    let r = unsafe { libc::ppoll(p.as_mut_ptr(), 2, &ts, std::ptr::null()) };
    if r <= 0 {
        return [false; 2];
    }
    p.map(|p| p.revents & libc::POLLIN != 0)
}

/// Runs `f` on a thread of its own inside namespace `ns` (sockets it makes stay there).
pub fn in_ns<T: Send + 'static>(ns: &str, f: impl FnOnce() -> T + Send + 'static) -> JoinHandle<T> {
    let nsf = File::open(format!("/var/run/netns/{ns}")).unwrap_or_else(|e| panic!("netns {ns}: {e}"));
    std::thread::spawn(move || {
        // SAFETY: setns on a descriptor this thread owns; it affects this thread only.
        assert_eq!(unsafe { libc::setns(nsf.as_raw_fd(), libc::CLONE_NEWNET) }, 0, "setns");
        f()
    })
}

/// Whether emulated links cannot be made here (a failure in CI, a skip elsewhere): the
/// namespace testbed's prerequisites and `/dev/net/tun`.
pub fn prerequisites_missing() -> bool {
    super::netns::prerequisites_missing()
        || super::missing("/dev/net/tun (module tun)", std::path::Path::new("/dev/net/tun").exists())
}
