//! An in-memory path between two transfer sides, on virtual time: a fixed one-way delay,
//! random loss from a seed, and an optional bottleneck (a token bucket with a drop-tail
//! queue), as `tc netem` and a shaped link would give.

use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};
use std::collections::VecDeque;
use std::time::{Duration, Instant};

/// The demux byte the caller puts in front of every transfer datagram.
pub const DEMUX: u8 = 0x54;

/// One direction of the path.
#[derive(Debug)]
struct Direction {
    queue: VecDeque<(Instant, Vec<u8>)>,
    // When the bottleneck has sent everything queued so far.
    busy_until: Option<Instant>,
}

/// Both directions, with their shaping.
#[derive(Debug)]
pub struct Link {
    delay: Duration,
    loss: f64,
    rate_bps: Option<u64>,
    queue_max: Duration,
    dirs: [Direction; 2],
    rng: StdRng,
    /// Datagrams dropped by loss, and by the full queue.
    pub lost: u64,
    /// Datagrams dropped because the bottleneck's queue was full.
    pub tail_dropped: u64,
}

impl Link {
    /// A path with `delay` each way, `loss` (0..1) per datagram, and an optional rate.
    pub fn new(delay: Duration, loss: f64, rate_bps: Option<u64>, seed: u64) -> Link {
        let dir = || Direction { queue: VecDeque::new(), busy_until: None };
        Link {
            delay,
            loss,
            rate_bps,
            queue_max: Duration::from_millis(100),
            dirs: [dir(), dir()],
            rng: StdRng::seed_from_u64(seed),
            lost: 0,
            tail_dropped: 0,
        }
    }

    /// Sends `datagram` (the demux byte added here) in direction `dir` (0 or 1).
    pub fn send(&mut self, dir: usize, now: Instant, datagram: &[u8]) {
        let mut framed = Vec::with_capacity(datagram.len() + 1);
        framed.push(DEMUX);
        framed.extend_from_slice(datagram);
        let d = &mut self.dirs[dir];
        let leaves = match self.rate_bps {
            None => now,
            Some(rate) => {
                let start = d.busy_until.map_or(now, |b| b.max(now));
                if start - now > self.queue_max {
                    self.tail_dropped += 1;
                    return;
                }
                let done = start + Duration::from_nanos(framed.len() as u64 * 8 * 1_000_000_000 / rate);
                d.busy_until = Some(done);
                done
            }
        };
        if self.rng.random::<f64>() < self.loss {
            self.lost += 1;
            return;
        }
        d.queue.push_back((leaves + self.delay, framed));
    }

    /// When the next datagram arrives, in either direction.
    pub fn next_arrival(&self) -> Option<Instant> {
        self.dirs.iter().filter_map(|d| d.queue.front().map(|(t, _)| *t)).min()
    }

    /// A datagram due by `now` in direction `dir`, the demux byte checked and removed.
    pub fn arrive(&mut self, dir: usize, now: Instant) -> Option<Vec<u8>> {
        let d = &mut self.dirs[dir];
        if d.queue.front().is_some_and(|(t, _)| *t <= now) {
            let (_, framed) = d.queue.pop_front().expect("front checked");
            assert_eq!(framed[0], DEMUX, "every transfer datagram carries the demux byte");
            return Some(framed[1..].to_vec());
        }
        None
    }

    /// Drops everything in flight (the side it was going to is gone).
    pub fn clear(&mut self) {
        for d in &mut self.dirs {
            d.queue.clear();
        }
    }
}
