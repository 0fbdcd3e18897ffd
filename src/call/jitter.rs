//! The jitter buffer: voice frames arrive early, late, out of order or not at all; the
//! speaker wants one every 20 ms. Frames wait here for a fixed playout delay, come out
//! in sequence order, and a missing one is reported as lost (the decoder conceals it).
//! Interarrival jitter is estimated as RFC 3550 §6.4.1 does.

use std::collections::BTreeMap;

/// Samples per millisecond at 48 kHz (the timestamp clock).
const SAMPLES_PER_MS: f64 = 48.0;
/// Most frames held (2 s of 20 ms frames): a flood cannot grow the buffer without end.
pub const FRAMES_HELD_MAX: usize = 100;
/// A frame this many turns late into an empty buffer is not late but a new start (the
/// stream came back after a gap during which the two sides' clocks drifted apart: a
/// replaced path, a sender that stalled): playout begins again from it.
pub const RESYNC_FRAMES: u64 = 10;
/// So many late frames in a row, with none in time between them, also mean the stream
/// now runs behind the speaker (by less than [`RESYNC_FRAMES`]): playout begins again.
pub const RESYNC_LATE_RUN: u32 = 5;

/// What arrived, and what became of it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Arrival {
    /// Queued for playout.
    Queued,
    /// Its turn had passed: dropped (counted as late).
    Late,
    /// Already queued: dropped.
    Duplicate,
}

/// What to play in the next 20 ms.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Playout {
    /// Still filling up: play nothing yet.
    Wait,
    /// This frame.
    Frame(Vec<u8>),
    /// The frame due is missing: conceal it.
    Lost,
}

/// Counts for the call's report.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct JitterStats {
    /// Frames queued.
    pub received: u64,
    /// Frames played.
    pub played: u64,
    /// Frames concealed because they were missing at their turn while later ones were
    /// already here (a gap: lost or very late).
    pub concealed: u64,
    /// Turns with nothing at all to play (the stream paused, ended, or is late as a whole).
    pub underruns: u64,
    /// Frames that arrived after their turn.
    pub late: u64,
    /// Frames that arrived twice.
    pub duplicates: u64,
    /// Times playout started again after a gap ([`RESYNC_FRAMES`]).
    pub resyncs: u64,
}

/// The buffer.
#[derive(Debug, Clone)]
pub struct JitterBuffer {
    delay_ms: u64,
    frames: BTreeMap<u64, Vec<u8>>,
    next: Option<u64>,
    first_arrival_ms: Option<u64>,
    last_transit: Option<f64>,
    jitter: f64,
    stats: JitterStats,
    /// Late arrivals since the last frame that came in time.
    late_run: u32,
}

impl JitterBuffer {
    /// A buffer that holds frames for `delay_ms` before playing them.
    pub fn new(delay_ms: u64) -> Self {
        Self {
            delay_ms,
            frames: BTreeMap::new(),
            next: None,
            first_arrival_ms: None,
            last_transit: None,
            jitter: 0.0,
            stats: JitterStats::default(),
            late_run: 0,
        }
    }

    /// A frame `seq` with timestamp `timestamp` (48 kHz samples) arrived at `arrival_ms`.
    pub fn push(&mut self, seq: u64, timestamp: u32, arrival_ms: u64, frame: Vec<u8>) -> Arrival {
        if let Some(n) = self.next.filter(|n| seq < *n) {
            self.late_run += 1;
            if !(self.frames.is_empty() && n - seq > RESYNC_FRAMES) && self.late_run < RESYNC_LATE_RUN {
                self.stats.late += 1;
                return Arrival::Late;
            }
            self.next = None;
            self.first_arrival_ms = Some(arrival_ms);
            self.last_transit = None;
            self.stats.resyncs += 1;
        }
        if self.frames.contains_key(&seq) {
            self.stats.duplicates += 1;
            return Arrival::Duplicate;
        }
        // RFC 3550: J += (|D| - J) / 16, D the change in transit time.
        let transit = arrival_ms as f64 * SAMPLES_PER_MS - f64::from(timestamp);
        if let Some(last) = self.last_transit {
            self.jitter += ((transit - last).abs() - self.jitter) / 16.0;
        }
        self.last_transit = Some(transit);
        self.late_run = 0;
        self.first_arrival_ms.get_or_insert(arrival_ms);
        self.frames.insert(seq, frame);
        if self.frames.len() > FRAMES_HELD_MAX
            && let Some((&oldest, _)) = self.frames.iter().next()
        {
            // Far ahead of the speaker: the oldest frames go first, and playout skips on.
            self.frames.remove(&oldest);
            self.next = self.next.map(|n| n.max(oldest + 1));
        }
        self.stats.received += 1;
        Arrival::Queued
    }

    /// The next 20 ms at `now_ms` (call once per frame period).
    pub fn pop(&mut self, now_ms: u64) -> Playout {
        let next = match self.next {
            Some(n) => n,
            None => {
                // Start once the first frame has waited the playout delay.
                let Some(first) = self.first_arrival_ms else { return Playout::Wait };
                if now_ms < first + self.delay_ms {
                    return Playout::Wait;
                }
                let Some((&lowest, _)) = self.frames.iter().next() else { return Playout::Wait };
                lowest
            }
        };
        self.next = Some(next + 1);
        match self.frames.remove(&next) {
            Some(f) => {
                self.stats.played += 1;
                Playout::Frame(f)
            }
            None if self.frames.is_empty() => {
                self.stats.underruns += 1;
                Playout::Lost
            }
            None => {
                self.stats.concealed += 1;
                Playout::Lost
            }
        }
    }

    /// Frames waiting.
    pub fn len(&self) -> usize {
        self.frames.len()
    }

    /// Whether nothing waits.
    pub fn is_empty(&self) -> bool {
        self.frames.is_empty()
    }

    /// The interarrival jitter estimate, in milliseconds.
    pub fn jitter_ms(&self) -> f64 {
        self.jitter / SAMPLES_PER_MS
    }

    /// The counts so far.
    pub fn stats(&self) -> JitterStats {
        self.stats
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn f(i: u64) -> Vec<u8> {
        i.to_be_bytes().to_vec()
    }

    #[test]
    fn waits_for_the_delay_then_plays_in_order_and_conceals_gaps() {
        let mut j = JitterBuffer::new(60);
        // Frames 0..5 sent every 20 ms; 2 arrives after 3, 4 never arrives.
        j.push(0, 0, 1000, f(0));
        j.push(1, 960, 1020, f(1));
        assert_eq!(j.pop(1040), Playout::Wait, "the first frame has waited 40 of 60 ms");
        j.push(3, 2880, 1060, f(3));
        j.push(2, 1920, 1065, f(2));
        assert_eq!(j.pop(1060), Playout::Frame(f(0)));
        assert_eq!(j.pop(1080), Playout::Frame(f(1)));
        assert_eq!(j.pop(1100), Playout::Frame(f(2)));
        assert_eq!(j.pop(1120), Playout::Frame(f(3)));
        j.push(5, 4800, 1100, f(5));
        assert_eq!(j.pop(1140), Playout::Lost);
        assert_eq!(j.pop(1160), Playout::Frame(f(5)));
        assert_eq!(j.push(4, 3840, 1170, f(4)), Arrival::Late);
        assert_eq!(j.push(5, 4800, 1171, f(5)), Arrival::Late);
        j.push(6, 5760, 1172, f(6));
        assert_eq!(j.push(6, 5760, 1173, f(6)), Arrival::Duplicate);
        let s = j.stats();
        assert_eq!((s.received, s.played, s.concealed, s.late, s.duplicates), (6, 5, 1, 2, 1));
    }

    #[test]
    fn a_stream_that_comes_back_far_behind_starts_playout_again() {
        let mut j = JitterBuffer::new(60);
        for i in 0..10u64 {
            j.push(i, (i * 960) as u32, 1000 + i * 20, f(i));
        }
        for t in 0..10u64 {
            assert_eq!(j.pop(1060 + t * 20), Playout::Frame(f(t)));
        }
        // Three seconds of nothing: the turns pass, concealed.
        for t in 10..160u64 {
            assert_eq!(j.pop(1060 + t * 20), Playout::Lost);
        }
        // The sender stalled for a second of that, so its frames now come 50 turns behind
        // the speaker: the stream starts again rather than being dropped as late.
        assert_eq!(j.push(110, 110 * 960, 4300, f(110)), Arrival::Queued);
        assert_eq!(j.push(111, 111 * 960, 4320, f(111)), Arrival::Queued);
        assert_eq!(j.pop(4340), Playout::Wait, "the playout delay again");
        assert_eq!(j.pop(4360), Playout::Frame(f(110)));
        assert_eq!(j.pop(4380), Playout::Frame(f(111)));
        // A frame a few turns late is still just late.
        assert_eq!(j.push(105, 105 * 960, 4390, f(105)), Arrival::Late);
        assert_eq!((j.stats().resyncs, j.stats().late), (1, 1));
        // But a stream that keeps coming a few turns late starts again too.
        let mut played = 0;
        for k in 0..20u64 {
            let i = 106 + k;
            j.push(i, (i * 960) as u32, 4400 + k * 20, f(i));
            if let Playout::Frame(_) = j.pop(4400 + k * 20) {
                played += 1;
            }
        }
        assert_eq!(j.stats().resyncs, 2);
        assert!(played >= 10, "{played} of 20 played after the second start");
    }

    #[test]
    fn jitter_follows_rfc_3550() {
        let mut steady = JitterBuffer::new(60);
        for i in 0..100u64 {
            steady.push(i, (i * 960) as u32, 1000 + i * 20, f(i));
        }
        assert!(steady.jitter_ms() < 0.001, "even spacing has no jitter: {}", steady.jitter_ms());
        let mut shaky = JitterBuffer::new(60);
        for i in 0..400u64 {
            let wobble = if i % 2 == 0 { 0 } else { 10 };
            shaky.push(i, (i * 960) as u32, 1000 + i * 20 + wobble, f(i));
        }
        // |D| is 10 ms every packet, so J converges to 10 ms.
        assert!((shaky.jitter_ms() - 10.0).abs() < 0.1, "{}", shaky.jitter_ms());
    }

    #[test]
    fn a_flood_is_bounded() {
        let mut j = JitterBuffer::new(60);
        for i in 0..1000u64 {
            j.push(i, (i * 960) as u32, 1000, f(i));
        }
        assert_eq!(j.len(), FRAMES_HELD_MAX);
        assert_eq!(j.pop(2000), Playout::Frame(f(900)), "playout skips to what is held");
    }

    proptest! {
        /// Whatever the arrival order, every frame that arrives before its turn is played
        /// exactly once, in sequence order, and every turn is a frame or a concealment.
        #[test]
        fn order_is_restored(order in Just((0..50u64).collect::<Vec<_>>()).prop_shuffle()) {
            let mut j = JitterBuffer::new(1000);
            for (k, i) in order.iter().enumerate() {
                j.push(*i, (*i * 960) as u32, k as u64, f(*i));
            }
            let mut played = Vec::new();
            for t in 0..50u64 {
                match j.pop(2000 + t * 20) {
                    Playout::Frame(b) => played.push(u64::from_be_bytes(b.try_into().unwrap())),
                    other => prop_assert!(false, "{other:?} with every frame held"),
                }
            }
            prop_assert_eq!(played, (0..50).collect::<Vec<_>>());
        }
    }
}
