//! The floor the relay is measured against: the least a UDP forwarder can do. One
//! socket: receive, look the destination up by source address, send. No header, no
//! session, no token, no rate cap, no counters but one — what is left is the kernel's
//! cost of a forwarded datagram, which the relay pays too.
//!
//! Two loops, each a baseline of its own:
//! - [`Mode::Batched`] (the floor): the relay workers' loop — `recvmmsg` up to
//!   [`mmsg::BATCH_MAX`] datagrams a call, `sendmmsg` them on, the same read budget per
//!   wake-up — through the same [`mmsg`] code;
//! - [`Mode::Unbatched`]: one `recv_from` and one `send_to` per datagram.
//!
//! Used by the load-test harness's `raw` servers and by `benches/relay_call.rs`, so
//! both compare the relay with the same floor.

use super::mmsg::{self, RecvBatch};
use super::worker::WorkerConfig;
use std::collections::HashMap;
use std::net::{SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::time::{Duration, Instant};

/// How often the batched loop adds its tallies to [`Counts`], as the relay's workers do.
const FLUSH_EVERY: Duration = Duration::from_millis(50);
/// Datagrams after which it adds them sooner.
const FLUSH_AFTER_DATAGRAMS: usize = 4096;

/// Which loop forwards.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// `recvmmsg` / `sendmmsg`, [`mmsg::BATCH_MAX`] at a time: the floor.
    Batched,
    /// `recv_from` / `send_to`, one at a time.
    Unbatched,
}

impl Mode {
    /// The name reports give it.
    pub fn label(self) -> &'static str {
        match self {
            Mode::Batched => "raw",
            Mode::Unbatched => "raw-unbatched",
        }
    }
}

/// What one forwarder has done (shared with whoever reads it).
#[derive(Debug, Default)]
pub struct Counts {
    /// Datagrams received.
    pub received: AtomicU64,
    /// Datagrams sent on.
    pub forwarded: AtomicU64,
    /// Datagrams the socket refused to send.
    pub send_failed: AtomicU64,
}

/// Forwards between the addresses `routes` pairs until `stop` (noticed within the
/// socket's read timeout, which the caller sets).
pub fn forward(
    mode: Mode,
    socket: &UdpSocket,
    routes: &HashMap<SocketAddr, SocketAddr>,
    stop: &AtomicBool,
    counts: &Counts,
) {
    match mode {
        Mode::Batched => forward_batched(socket, routes, stop, counts),
        Mode::Unbatched => forward_unbatched(socket, routes, stop, counts),
    }
}

fn forward_unbatched(socket: &UdpSocket, routes: &HashMap<SocketAddr, SocketAddr>, stop: &AtomicBool, counts: &Counts) {
    let mut buf = vec![0u8; 4096];
    while !stop.load(Relaxed) {
        let Ok((n, from)) = socket.recv_from(&mut buf) else { continue };
        counts.received.fetch_add(1, Relaxed);
        let Some(to) = routes.get(&from) else { continue };
        match socket.send_to(&buf[..n], to) {
            Ok(_) => counts.forwarded.fetch_add(1, Relaxed),
            Err(_) => counts.send_failed.fetch_add(1, Relaxed),
        };
    }
}

/// The relay worker's loop without the relay: up to `read_budget` batches per wake-up,
/// each received with one `recvmmsg`, routed by source address, sent with `sendmmsg`.
fn forward_batched(socket: &UdpSocket, routes: &HashMap<SocketAddr, SocketAddr>, stop: &AtomicBool, counts: &Counts) {
    let config = WorkerConfig::default();
    let mut batch = RecvBatch::new(config.batch, 4096);
    let mut to = [None; mmsg::BATCH_MAX];
    let (mut received, mut sent, mut failed) = (0, 0, 0);
    let mut flushed_at = Instant::now();
    while !stop.load(Relaxed) {
        for _ in 0..config.read_budget.max(1) {
            let Ok(n) = batch.recv(socket) else { break };
            for (i, t) in to.iter_mut().enumerate().take(n) {
                let (_, from) = batch.get_mut(i);
                *t = from.and_then(|f| routes.get(&f).copied());
            }
            let s = batch.send(socket, &to[..n]);
            (received, sent, failed) = (received + n, sent + s.sent, failed + s.failed);
            if batch.drained() {
                break;
            }
        }
        // Counted as the relay's workers count: every FLUSH_EVERY, or at once in a big
        // batch, not on every wake-up.
        if flushed_at.elapsed() >= FLUSH_EVERY || received >= FLUSH_AFTER_DATAGRAMS {
            flush(counts, &mut received, &mut sent, &mut failed);
            flushed_at = Instant::now();
        }
    }
    flush(counts, &mut received, &mut sent, &mut failed);
}

/// Adds the tallies to `counts` and zeroes them.
fn flush(counts: &Counts, received: &mut usize, sent: &mut usize, failed: &mut usize) {
    for (counter, n) in [(&counts.received, received), (&counts.forwarded, sent), (&counts.send_failed, failed)] {
        if *n > 0 {
            counter.fetch_add(*n as u64, Relaxed);
            *n = 0;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[test]
    fn both_loops_forward_between_the_routed_pair() {
        for mode in [Mode::Batched, Mode::Unbatched] {
            let fwd = UdpSocket::bind("127.0.0.1:0").unwrap();
            fwd.set_read_timeout(Some(Duration::from_millis(50))).unwrap();
            let at = fwd.local_addr().unwrap();
            let (a, b) = (UdpSocket::bind("127.0.0.1:0").unwrap(), UdpSocket::bind("127.0.0.1:0").unwrap());
            b.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
            let routes = HashMap::from([(a.local_addr().unwrap(), b.local_addr().unwrap())]);
            let (stop, counts) = (Arc::new(AtomicBool::new(false)), Arc::new(Counts::default()));
            let thread = {
                let (stop, counts) = (Arc::clone(&stop), Arc::clone(&counts));
                std::thread::spawn(move || forward(mode, &fwd, &routes, &stop, &counts))
            };
            let stranger = UdpSocket::bind("127.0.0.1:0").unwrap();
            stranger.send_to(b"nobody's", at).unwrap();
            for i in 0..10u8 {
                a.send_to(&[i; 20], at).unwrap();
            }
            let mut buf = [0u8; 64];
            for i in 0..10u8 {
                let (n, from) = b.recv_from(&mut buf).unwrap();
                assert_eq!((&buf[..n], from), (&[i; 20][..], at), "{mode:?}");
            }
            let deadline = Instant::now() + Duration::from_secs(2);
            while counts.received.load(Relaxed) < 11 && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(5));
            }
            stop.store(true, Relaxed);
            thread.join().unwrap();
            assert_eq!(counts.received.load(Relaxed), 11, "{mode:?}: the stranger's datagram is received, not sent");
            assert_eq!(counts.forwarded.load(Relaxed), 10, "{mode:?}");
        }
    }
}
