//! Hole punching between a cone NAT and a symmetric one, as plain logic: the "birthday"
//! technique (see Tailscale's "How NAT traversal works") with port prediction first.
//!
//! The side behind the symmetric NAT (the hard side) opens many sockets, and each sends
//! probes to the other side's public address: its NAT makes one mapping per socket, on
//! ports it picks (at random, for a `fully-random` NAT). The side behind the cone (the
//! easy side) sends probes from its one socket to many ports of the hard side's public
//! IP, which opens its own NAT's filter for each of them. When one of the easy side's
//! ports is one of the hard side's mappings, a probe gets through, its answer comes back,
//! and the path is punched. With `HARD_SOCKETS` mappings and `EASY_PROBES_MAX` ports out
//! of 64,512, the chance that no port matches is about e^(−256·2048/64512) ≈ 0.03%.
//!
//! A NAT that allocates its mappings in sequence puts the hard side's new mappings just
//! above the public port its super node saw; the easy side tries those first (port
//! prediction), so such a NAT is punched after a few dozen probes.
//!
//! Everything is bounded: the ports tried, the sockets, the time; and it stops at the
//! first authenticated answer. The relay is asked for at the same time, so a call never
//! waits for this: a punched path found later replaces the relay.

use rand::RngExt;
use rand::rngs::StdRng;
use std::net::{IpAddr, SocketAddr};

/// Ports just above the hard side's known public port tried first (port prediction).
pub const PREDICT_WINDOW: u16 = 32;
/// Most ports the easy side tries.
pub const EASY_PROBES_MAX: usize = 2048;
/// Ports the easy side tries per step (a step is a 20 ms media tick): 2048 in 0.64 s.
pub const EASY_PROBES_PER_STEP: usize = 64;
/// Between the easy side's steps.
pub const EASY_STEP_MS: u64 = 20;
/// Sockets the hard side opens.
pub const HARD_SOCKETS: u16 = 256;
/// Between the hard side's rounds (each socket probes once a round).
pub const HARD_ROUND_MS: u64 = 500;
/// How long the hard side keeps its sockets probing without an answer.
pub const HARD_FOR_MS: u64 = 8_000;
/// The lowest port a NAT hands out (Linux's `fully-random` range starts there).
const PORT_MIN: u16 = 1024;

/// One side's part.
#[derive(Debug)]
pub enum Birthday {
    /// Behind the cone: probe many ports of the other side's public IP.
    Easy(Box<Easy>),
    /// Behind the symmetric NAT: many sockets, each probing the other side.
    Hard(Hard),
}

/// The easy side's state.
#[derive(Debug)]
pub struct Easy {
    ip: IpAddr,
    base: u16,
    tried: Vec<u64>,
    count: usize,
    next_ms: u64,
    rng: StdRng,
}

impl Easy {
    /// Towards `peer`, the other side's public address (as its super node saw it).
    pub fn new(peer: SocketAddr, rng: StdRng, now_ms: u64) -> Self {
        Self { ip: peer.ip(), base: peer.port(), tried: vec![0; 1024], count: 0, next_ms: now_ms, rng }
    }

    fn mark(&mut self, port: u16) -> bool {
        let (w, b) = (usize::from(port) / 64, u64::from(port) % 64);
        let fresh = self.tried[w] & (1 << b) == 0;
        self.tried[w] |= 1 << b;
        fresh
    }

    /// The next port: the prediction window first, then ports at random, none twice.
    fn next_port(&mut self) -> Option<u16> {
        if self.count >= EASY_PROBES_MAX {
            return None;
        }
        let i = self.count;
        self.count += 1;
        if i < usize::from(PREDICT_WINDOW) {
            let p = self.base.checked_add(1 + i as u16).filter(|p| *p >= PORT_MIN);
            if let Some(p) = p
                && self.mark(p)
            {
                return Some(p);
            }
        }
        // At most 2048 of 64,512 ports are taken: a fresh one comes within a few draws.
        loop {
            let p = self.rng.random_range(PORT_MIN..=u16::MAX);
            if p != self.base && self.mark(p) {
                return Some(p);
            }
        }
    }

    /// The addresses to probe now (empty between steps and once all are tried).
    pub fn step(&mut self, now_ms: u64) -> Vec<SocketAddr> {
        if now_ms < self.next_ms {
            return Vec::new();
        }
        self.next_ms = now_ms + EASY_STEP_MS;
        let ip = self.ip;
        (0..EASY_PROBES_PER_STEP).map_while(|_| self.next_port()).map(|p| SocketAddr::new(ip, p)).collect()
    }

    /// Ports tried so far.
    pub fn tried(&self) -> usize {
        self.count
    }

    /// Whether every port allowed has been tried.
    pub fn done(&self) -> bool {
        self.count >= EASY_PROBES_MAX
    }

    /// Whether `port` was one of the predicted ones.
    pub fn predicted(&self, port: u16) -> bool {
        port > self.base && port - self.base <= PREDICT_WINDOW
    }
}

/// The hard side's state.
#[derive(Debug, Clone)]
pub struct Hard {
    target: SocketAddr,
    sockets: u16,
    next_ms: u64,
    until_ms: u64,
    probes: usize,
}

impl Hard {
    /// Towards `peer`, the other side's public address; the sockets are not open yet.
    pub fn new(peer: SocketAddr, now_ms: u64) -> Self {
        Self { target: peer, sockets: 0, next_ms: now_ms, until_ms: now_ms + HARD_FOR_MS, probes: 0 }
    }

    /// `n` sockets are open (the driver may get fewer than asked): probe from them now.
    pub fn opened(&mut self, n: u16, now_ms: u64) {
        self.sockets = n;
        self.next_ms = now_ms;
    }

    /// The probes due now: (socket, destination); none before the sockets are open.
    pub fn step(&mut self, now_ms: u64) -> Vec<(u16, SocketAddr)> {
        if self.sockets == 0 || now_ms < self.next_ms || self.done(now_ms) {
            return Vec::new();
        }
        self.next_ms = now_ms + HARD_ROUND_MS;
        self.probes += usize::from(self.sockets);
        (0..self.sockets).map(|s| (s, self.target)).collect()
    }

    /// Whether its time is up.
    pub fn done(&self, now_ms: u64) -> bool {
        now_ms >= self.until_ms
    }

    /// Probes sent so far.
    pub fn tried(&self) -> usize {
        self.probes
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    #[test]
    fn the_easy_side_tries_predicted_ports_then_random_ones_never_twice_and_no_more_than_the_cap() {
        let peer: SocketAddr = "198.18.3.2:40000".parse().unwrap();
        let mut e = Easy::new(peer, StdRng::seed_from_u64(7), 0);
        let first = e.step(0);
        assert_eq!(first.len(), EASY_PROBES_PER_STEP);
        let ports: Vec<u16> = first.iter().map(|a| a.port()).collect();
        assert_eq!(ports[..PREDICT_WINDOW as usize], (40001..=40032).collect::<Vec<_>>()[..]);
        assert!(first.iter().all(|a| a.ip() == peer.ip()));
        assert!(e.step(10).is_empty(), "one step per 20 ms");
        let mut all = ports;
        let mut now = 20;
        while !e.done() {
            all.extend(e.step(now).iter().map(|a| a.port()));
            now += EASY_STEP_MS;
        }
        assert_eq!(all.len(), EASY_PROBES_MAX);
        assert_eq!(now, EASY_STEP_MS * (EASY_PROBES_MAX / EASY_PROBES_PER_STEP) as u64);
        let mut sorted = all.clone();
        sorted.sort_unstable();
        sorted.dedup();
        assert_eq!(sorted.len(), EASY_PROBES_MAX, "no port twice");
        assert!(all.iter().all(|p| *p >= PORT_MIN && *p != 40000));
        assert!(e.step(now + 1000).is_empty(), "bounded");
        // The same seed draws the same ports.
        let mut again = Easy::new(peer, StdRng::seed_from_u64(7), 0);
        assert_eq!(again.step(0).iter().map(|a| a.port()).collect::<Vec<_>>(), all[..EASY_PROBES_PER_STEP]);
        // A public port at the top of the range predicts nothing past it.
        let mut top = Easy::new("198.18.3.2:65530".parse().unwrap(), StdRng::seed_from_u64(1), 0);
        let ports: Vec<u16> = top.step(0).iter().map(|a| a.port()).collect();
        assert_eq!(ports[..5], [65531, 65532, 65533, 65534, 65535]);
        assert!(top.predicted(65535) && !top.predicted(65530) && !top.predicted(1024));
    }

    #[test]
    fn the_hard_side_probes_from_every_socket_each_round_until_its_time_is_up() {
        let peer: SocketAddr = "198.18.2.2:5000".parse().unwrap();
        let mut h = Hard::new(peer, 0);
        assert!(h.step(0).is_empty(), "no sockets yet");
        h.opened(3, 100);
        assert_eq!(h.step(100), vec![(0, peer), (1, peer), (2, peer)]);
        assert!(h.step(400).is_empty());
        assert_eq!(h.step(600).len(), 3);
        let mut n = 0;
        for now in (700..20_000).step_by(20) {
            n += h.step(now).len();
        }
        assert!(h.done(HARD_FOR_MS));
        assert_eq!(h.tried(), 6 + n);
        assert_eq!(h.tried(), 3 * (1 + ((HARD_FOR_MS - 100 - 1) / HARD_ROUND_MS) as usize));
    }

    /// The easy side against a `fully-random` NAT: across seeds, nearly every run finds a
    /// port in common, as the arithmetic in the module doc says.
    #[test]
    fn against_random_mappings_a_port_in_common_is_found_nearly_always() {
        let mut found = 0;
        for seed in 0..200u64 {
            let mut nat = StdRng::seed_from_u64(1000 + seed);
            let mappings: Vec<u16> = (0..HARD_SOCKETS).map(|_| nat.random_range(PORT_MIN..=u16::MAX)).collect();
            let mut e = Easy::new("198.18.3.2:40000".parse().unwrap(), StdRng::seed_from_u64(seed), 0);
            let mut now = 0;
            while !e.done() {
                if e.step(now).iter().any(|a| mappings.contains(&a.port())) {
                    found += 1;
                    break;
                }
                now += EASY_STEP_MS;
            }
        }
        assert!(found >= 198, "{found} of 200");
    }
}
