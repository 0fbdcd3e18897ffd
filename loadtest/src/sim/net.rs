//! The in-memory internet: a one-way latency per pair of nodes (a fixed function of the
//! pair and the seed), random loss, partitions, and every packet's bytes counted per
//! sending and receiving node and per class.

use super::clock::Ms;
use super::rng;
use rand::RngExt;
use rand::rngs::StdRng;

/// Where a packet belongs in the byte counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Class {
    /// Membership (foca), sealed as the cluster channel seals it.
    Gossip = 0,
    /// Global Index RPCs.
    Index = 1,
}

/// A node's address on the simulated network: (cluster, slot).
pub type Addr = u64;

/// Bytes and packets one node sent and received, per class.
#[derive(Debug, Clone, Copy, Default)]
pub struct Traffic {
    /// Bytes sent, per [`Class`].
    pub sent: [u64; 2],
    /// Bytes received, per [`Class`].
    pub recv: [u64; 2],
}

impl Traffic {
    /// Sent plus received bytes of one class.
    pub fn total(&self, c: Class) -> u64 {
        self.sent[c as usize] + self.recv[c as usize]
    }
}

/// Why a packet did not arrive.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Drop {
    /// Random loss.
    Lost,
    /// The two ends are on different sides of a partition.
    Partitioned,
}

/// Latency, loss and partitions.
pub struct Net {
    seed: u64,
    loss: f64,
    min_ms: u64,
    max_ms: u64,
    rng: StdRng,
    /// While a partition holds: which side each address is on.
    side: Option<fn(Addr) -> u8>,
    /// Packets dropped per [`Drop`] reason, and delivered.
    pub lost: u64,
    /// Packets dropped by a partition.
    pub partitioned: u64,
    /// Packets handed on for delivery.
    pub passed: u64,
}

impl Net {
    /// A network with one-way latencies in `min_ms..=max_ms` and loss probability `loss`.
    pub fn new(seed: u64, min_ms: u64, max_ms: u64, loss: f64) -> Self {
        Self {
            seed,
            loss,
            min_ms,
            max_ms: max_ms.max(min_ms),
            rng: rng::stream(seed, "net"),
            side: None,
            lost: 0,
            partitioned: 0,
            passed: 0,
        }
    }

    /// One-way latency between two addresses, the same both ways and on every call: most
    /// pairs are near the low end, a tail reaches across the world.
    pub fn latency(&self, a: Addr, b: Addr) -> Ms {
        let (lo, hi) = (a.min(b), a.max(b));
        let u = (rng::hash2(self.seed, "latency", lo, hi) >> 11) as f64 / (1u64 << 53) as f64;
        self.min_ms + ((self.max_ms - self.min_ms) as f64 * u * u).round() as u64
    }

    /// Splits the network by `side` until [`Net::heal`].
    pub fn partition(&mut self, side: fn(Addr) -> u8) {
        self.side = Some(side);
    }

    /// Ends a partition.
    pub fn heal(&mut self) {
        self.side = None;
    }

    /// Whether a partition holds.
    pub fn partitioned_now(&self) -> bool {
        self.side.is_some()
    }

    /// A packet from `a` to `b`: its delay, or why it is dropped.
    pub fn send(&mut self, a: Addr, b: Addr) -> Result<Ms, Drop> {
        if let Some(side) = self.side
            && side(a) != side(b)
        {
            self.partitioned += 1;
            return Err(Drop::Partitioned);
        }
        if self.loss > 0.0 && self.rng.random_bool(self.loss) {
            self.lost += 1;
            return Err(Drop::Lost);
        }
        self.passed += 1;
        Ok(self.latency(a, b))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn latency_is_symmetric_stable_and_spread() {
        let n = Net::new(3, 5, 150, 0.0);
        assert_eq!(n.latency(1, 2), n.latency(2, 1));
        assert_eq!(n.latency(1, 2), Net::new(3, 5, 150, 0.0).latency(1, 2));
        let l: Vec<Ms> = (0..1000).map(|i| n.latency(i, i + 7)).collect();
        assert!(l.iter().all(|x| (5..=150).contains(x)));
        assert!(l.iter().min() < Some(&20) && l.iter().max() > Some(&120), "{:?}", (l.iter().min(), l.iter().max()));
    }

    #[test]
    fn partition_drops_across_and_heals() {
        let mut n = Net::new(3, 5, 150, 0.0);
        n.partition(|a| (a % 2) as u8);
        assert_eq!(n.send(1, 2), Err(Drop::Partitioned));
        assert!(n.send(1, 3).is_ok());
        n.heal();
        assert!(n.send(1, 2).is_ok());
        assert_eq!((n.partitioned, n.passed), (1, 2));
    }

    #[test]
    fn loss_rate() {
        let mut n = Net::new(3, 5, 150, 0.1);
        let lost = (0..10_000).filter(|i| n.send(*i, i + 1).is_err()).count();
        assert!((800..1200).contains(&lost), "{lost}");
    }
}
