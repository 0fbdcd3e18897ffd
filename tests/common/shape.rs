//! What an emulated link does to each packet, as a pure function of arrival times, sizes
//! and a seed: random loss, a drop-tail queue in front of a serialisation at a fixed
//! rate, then a fixed one-way delay (the rules `sch_netem` applies, which this kernel
//! lacks). The I/O shell is [`super::link`].

use std::time::Duration;

/// One direction of a link.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Shape {
    /// Propagation delay, added after serialisation.
    pub delay: Duration,
    /// Serialisation rate in bits per second.
    pub rate_bps: u64,
    /// Bytes the queue in front of the serialiser holds; a packet that would not fit is dropped.
    pub queue_bytes: u64,
    /// Probability that a packet is lost on arrival, before the queue.
    pub loss: f64,
}

impl Shape {
    /// The WAN, one way: 20 ms (40 ms round trip), 20 Mbit/s, 1% loss, a queue of
    /// one round trip's worth of bytes at that rate (100 kB).
    pub fn wan() -> Self {
        let rate_bps = 20_000_000;
        Shape { delay: Duration::from_millis(20), rate_bps, queue_bytes: rate_bps / 8 * 40 / 1000, loss: 0.01 }
    }

    /// How long `len` bytes take to serialise.
    pub fn serialise(&self, len: usize) -> Duration {
        Duration::from_nanos((len as u64 * 8).saturating_mul(1_000_000_000) / self.rate_bps.max(1))
    }
}

/// What becomes of a packet.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// It leaves the link at this time (since the link started).
    Deliver(Duration),
    /// Lost at random.
    Lost,
    /// The queue was full.
    QueueFull,
}

/// One direction's state: when its serialiser is next free, and its random numbers.
#[derive(Clone, Debug)]
pub struct Scheduler {
    shape: Shape,
    busy_until: Duration,
    rng: u64,
}

impl Scheduler {
    /// A link direction with `shape`, its losses drawn from `seed`.
    pub fn new(shape: Shape, seed: u64) -> Self {
        Scheduler { shape, busy_until: Duration::ZERO, rng: seed }
    }

    /// The verdict on a packet of `len` bytes arriving at `now` (since the link started;
    /// arrivals in order). Departures are in arrival order, so a FIFO holds what waits.
    pub fn admit(&mut self, now: Duration, len: usize) -> Verdict {
        if self.uniform() < self.shape.loss {
            return Verdict::Lost;
        }
        let start = self.busy_until.max(now);
        // Bytes still ahead of this packet in the serialiser's queue.
        let backlog = (start - now).as_nanos() * u128::from(self.shape.rate_bps) / 8_000_000_000;
        if backlog + len as u128 > u128::from(self.shape.queue_bytes) {
            return Verdict::QueueFull;
        }
        self.busy_until = start + self.shape.serialise(len);
        Verdict::Deliver(self.busy_until + self.shape.delay)
    }

    /// A uniform number in [0, 1) (splitmix64: small, seeded, good enough for loss).
    fn uniform(&mut self) -> f64 {
        self.rng = self.rng.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.rng;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^= z >> 31;
        (z >> 11) as f64 / (1u64 << 53) as f64
    }
}
