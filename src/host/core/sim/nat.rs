//! NATs as functions of what crosses them, on virtual time: what a home router does to a
//! datagram going out (which public source it gets) and coming in (which private host
//! it reaches, if any). They stand in for the nftables routers of the namespace testbed.
//!
//! Mappings are refreshed by what the host sends, never by what arrives, and expire
//! after a time without it: a host keeps its mapping alive only by sending.

use rand::RngExt;
use rand::rngs::StdRng;
use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

/// Lowest public port a NAT hands out.
pub const PORT_MIN: u16 = 1024;
/// Most mappings one NAT holds; beyond, a datagram that needs a new one is dropped.
pub const MAPPINGS_MAX: usize = 4096;
/// Most remote endpoints one cone mapping lets in: room for every port the birthday
/// technique's easy side probes (`call::birthday::EASY_PROBES_MAX`), each of which must
/// open the filter as a conntrack entry would.
pub const PERMITS_MAX: usize = 4096;

/// What a NAT does to datagrams crossing it.
pub trait NatFn: std::fmt::Debug {
    /// The public source of a datagram from the private `src` to `dst` at `now`,
    /// making or refreshing the mapping; None: dropped.
    fn outbound(&mut self, src: SocketAddr, dst: SocketAddr, now: Duration, rng: &mut StdRng) -> Option<SocketAddr>;
    /// The private destination of a datagram from `from` to `public_dst` at `now`;
    /// None: filtered.
    fn inbound(&mut self, from: SocketAddr, public_dst: SocketAddr, now: Duration) -> Option<SocketAddr>;
    /// The public address inbound datagrams are routed to.
    fn public_ip(&self) -> IpAddr;
    /// A short name for traces.
    fn label(&self) -> &'static str;
}

/// No NAT: the host's address is public and anything reaches it.
#[derive(Debug)]
pub struct NoNat {
    ip: IpAddr,
}

impl NoNat {
    /// A host on the public address `ip`.
    pub fn new(ip: IpAddr) -> Self {
        Self { ip }
    }
}

impl NatFn for NoNat {
    fn outbound(&mut self, src: SocketAddr, _: SocketAddr, _: Duration, _: &mut StdRng) -> Option<SocketAddr> {
        Some(src)
    }

    fn inbound(&mut self, _: SocketAddr, public_dst: SocketAddr, _: Duration) -> Option<SocketAddr> {
        Some(public_dst)
    }

    fn public_ip(&self) -> IpAddr {
        self.ip
    }

    fn label(&self) -> &'static str {
        "public"
    }
}

/// A firewall that drops every datagram both ways.
#[derive(Debug)]
pub struct UdpBlocked {
    ip: IpAddr,
}

impl UdpBlocked {
    /// A blocked host whose router has the public address `ip`.
    pub fn new(ip: IpAddr) -> Self {
        Self { ip }
    }
}

impl NatFn for UdpBlocked {
    fn outbound(&mut self, _: SocketAddr, _: SocketAddr, _: Duration, _: &mut StdRng) -> Option<SocketAddr> {
        None
    }

    fn inbound(&mut self, _: SocketAddr, _: SocketAddr, _: Duration) -> Option<SocketAddr> {
        None
    }

    fn public_ip(&self) -> IpAddr {
        self.ip
    }

    fn label(&self) -> &'static str {
        "udp_blocked"
    }
}

#[derive(Debug)]
struct Mapping {
    private: SocketAddr,
    /// The one remote it was made for (symmetric); None: any (cone).
    remote: Option<SocketAddr>,
    /// Remotes the host has sent to through it (cone filtering).
    permits: BTreeSet<SocketAddr>,
    last_out: Duration,
}

/// How a mapping's public port is chosen.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Ports {
    Random,
    Sequential { next: Option<u16> },
}

/// The mapping table every translating NAT shares.
#[derive(Debug)]
struct Table {
    ip: IpAddr,
    ttl: Duration,
    ports: Ports,
    by_key: BTreeMap<(SocketAddr, Option<SocketAddr>), u16>,
    by_port: BTreeMap<u16, Mapping>,
}

impl Table {
    fn new(ip: IpAddr, ttl: Duration, ports: Ports) -> Self {
        Self { ip, ttl, ports, by_key: BTreeMap::new(), by_port: BTreeMap::new() }
    }

    fn live(&self, m: &Mapping, now: Duration) -> bool {
        now < m.last_out + self.ttl
    }

    fn expire(&mut self, now: Duration) {
        let ttl = self.ttl;
        let dead: Vec<u16> = self.by_port.iter().filter(|(_, m)| now >= m.last_out + ttl).map(|(p, _)| *p).collect();
        for p in dead {
            if let Some(m) = self.by_port.remove(&p) {
                self.by_key.remove(&(m.private, m.remote));
            }
        }
    }

    fn free_port(&mut self, rng: &mut StdRng) -> u16 {
        loop {
            let p = match &mut self.ports {
                Ports::Random => rng.random_range(PORT_MIN..=u16::MAX),
                Ports::Sequential { next } => {
                    let p = next.unwrap_or_else(|| rng.random_range(PORT_MIN..=u16::MAX));
                    *next = Some(p.checked_add(1).unwrap_or(PORT_MIN));
                    p
                }
            };
            if !self.by_port.contains_key(&p) {
                return p;
            }
        }
    }

    /// The mapping for `key`, made if missing, refreshed, and with `dst` permitted.
    fn out(
        &mut self,
        private: SocketAddr,
        remote: Option<SocketAddr>,
        dst: SocketAddr,
        now: Duration,
        rng: &mut StdRng,
    ) -> Option<SocketAddr> {
        let key = (private, remote);
        let existing = self.by_key.get(&key).copied().filter(|p| self.live(&self.by_port[p], now));
        let port = match existing {
            Some(p) => p,
            None => {
                self.expire(now);
                if self.by_port.len() >= MAPPINGS_MAX {
                    return None;
                }
                let p = self.free_port(rng);
                self.by_key.insert(key, p);
                let m = Mapping { private, remote, permits: BTreeSet::new(), last_out: now };
                self.by_port.insert(p, m);
                p
            }
        };
        let m = self.by_port.get_mut(&port).expect("just found or made");
        m.last_out = now;
        if m.permits.len() < PERMITS_MAX {
            m.permits.insert(dst);
        }
        Some(SocketAddr::new(self.ip, port))
    }

    /// The live mapping at `port` whose filter lets `from` in.
    fn let_in(&self, from: SocketAddr, public_dst: SocketAddr, now: Duration) -> Option<SocketAddr> {
        if public_dst.ip() != self.ip {
            return None;
        }
        let m = self.by_port.get(&public_dst.port()).filter(|m| self.live(m, now))?;
        let allowed = match m.remote {
            Some(r) => r == from,
            None => m.permits.contains(&from),
        };
        allowed.then_some(m.private)
    }
}

/// Endpoint-independent mapping (one public port per private socket, whatever the
/// destination) with address-and-port-dependent filtering (in only from an address
/// and port the host has sent to): the testbed's cone router.
#[derive(Debug)]
pub struct Cone(Table);

impl Cone {
    /// A cone NAT on the public address `ip` whose mappings live `ttl` after the last
    /// datagram out.
    pub fn new(ip: IpAddr, ttl: Duration) -> Self {
        Self(Table::new(ip, ttl, Ports::Random))
    }
}

impl NatFn for Cone {
    fn outbound(&mut self, src: SocketAddr, dst: SocketAddr, now: Duration, rng: &mut StdRng) -> Option<SocketAddr> {
        self.0.out(src, None, dst, now, rng)
    }

    fn inbound(&mut self, from: SocketAddr, public_dst: SocketAddr, now: Duration) -> Option<SocketAddr> {
        self.0.let_in(from, public_dst, now)
    }

    fn public_ip(&self) -> IpAddr {
        self.0.ip
    }

    fn label(&self) -> &'static str {
        "cone"
    }
}

/// A mapping per (private socket, destination), each on a random public port (the
/// testbed's `fully-random` router) or on the next one ([`Symmetric::sequential`]), in
/// only from that destination. The label says which.
#[derive(Debug)]
pub struct Symmetric(Table, &'static str);

impl Symmetric {
    /// A symmetric NAT on `ip`, mappings living `ttl` after the last datagram out.
    pub fn new(ip: IpAddr, ttl: Duration) -> Self {
        Self(Table::new(ip, ttl, Ports::Random), "symmetric")
    }

    /// The same, but each new mapping takes the port after the last one (the first from
    /// the generator): the NAT port prediction works against.
    pub fn sequential(ip: IpAddr, ttl: Duration) -> Self {
        Self(Table::new(ip, ttl, Ports::Sequential { next: None }), "sequential")
    }
}

impl NatFn for Symmetric {
    fn outbound(&mut self, src: SocketAddr, dst: SocketAddr, now: Duration, rng: &mut StdRng) -> Option<SocketAddr> {
        self.0.out(src, Some(dst), dst, now, rng)
    }

    fn inbound(&mut self, from: SocketAddr, public_dst: SocketAddr, now: Duration) -> Option<SocketAddr> {
        self.0.let_in(from, public_dst, now)
    }

    fn public_ip(&self) -> IpAddr {
        self.0.ip
    }

    fn label(&self) -> &'static str {
        self.1
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    const TTL: Duration = Duration::from_secs(30);

    fn a(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    fn ip() -> IpAddr {
        "198.18.5.1".parse().unwrap()
    }

    fn secs(s: u64) -> Duration {
        Duration::from_secs(s)
    }

    /// The private host, and two remotes on one address plus one elsewhere.
    fn ends() -> (SocketAddr, SocketAddr, SocketAddr, SocketAddr) {
        (a("10.0.0.2:40000"), a("198.18.0.1:33033"), a("198.18.0.1:33034"), a("198.18.0.2:33033"))
    }

    #[test]
    fn no_nat_passes_everything_unchanged() {
        let (_, sn, other, _) = ends();
        let host = a("198.18.2.2:40000");
        let mut n = NoNat::new(host.ip());
        let mut rng = StdRng::seed_from_u64(1);
        assert_eq!(n.outbound(host, sn, secs(0), &mut rng), Some(host));
        assert_eq!(n.inbound(other, host, secs(999)), Some(host), "unsolicited, long after: still in");
    }

    #[test]
    fn udp_blocked_passes_nothing() {
        let (private, sn, _, _) = ends();
        let mut n = UdpBlocked::new(ip());
        let mut rng = StdRng::seed_from_u64(1);
        assert_eq!(n.outbound(private, sn, secs(0), &mut rng), None);
        assert_eq!(n.inbound(sn, SocketAddr::new(ip(), 40000), secs(0)), None);
    }

    #[test]
    fn a_cone_maps_once_and_lets_in_only_where_it_sent() {
        let (private, sn, sn_other_port, elsewhere) = ends();
        let mut n = Cone::new(ip(), TTL);
        let mut rng = StdRng::seed_from_u64(1);
        let public = n.outbound(private, sn, secs(0), &mut rng).unwrap();
        assert_eq!(public.ip(), ip());
        assert_eq!(n.outbound(private, elsewhere, secs(1), &mut rng), Some(public), "one mapping for all destinations");
        assert_eq!(n.inbound(sn, public, secs(2)), Some(private));
        assert_eq!(n.inbound(elsewhere, public, secs(2)), Some(private));
        assert_eq!(n.inbound(sn_other_port, public, secs(2)), None, "filtering is by address and port");
        assert_eq!(n.inbound(sn, SocketAddr::new(ip(), public.port().wrapping_add(1)), secs(2)), None);
        // Sending keeps the mapping past its lifetime; silence lets it go.
        assert_eq!(n.outbound(private, sn, secs(29), &mut rng), Some(public));
        assert_eq!(n.inbound(sn, public, secs(58)), Some(private));
        assert_eq!(n.inbound(sn, public, secs(59)), None, "expired 30 s after the last datagram out");
        let again = n.outbound(private, sn, secs(60), &mut rng).unwrap();
        assert_ne!(again, public, "a new mapping, on another port");
        assert_eq!(n.inbound(elsewhere, again, secs(61)), None, "the new mapping has not sent there");
    }

    #[test]
    fn a_symmetric_nat_maps_each_destination_on_a_random_port() {
        let (private, sn, sn_other_port, elsewhere) = ends();
        let ports = |seed: u64| {
            let mut n = Symmetric::new(ip(), TTL);
            let mut rng = StdRng::seed_from_u64(seed);
            let p1 = n.outbound(private, sn, secs(0), &mut rng).unwrap();
            let p2 = n.outbound(private, elsewhere, secs(0), &mut rng).unwrap();
            assert_ne!(p1, p2, "one mapping per destination");
            assert_eq!(n.outbound(private, sn, secs(1), &mut rng), Some(p1), "kept while used");
            assert_eq!(n.inbound(sn, p1, secs(1)), Some(private));
            assert_eq!(n.inbound(elsewhere, p1, secs(1)), None, "only the mapping's destination gets in");
            assert_eq!(n.inbound(sn_other_port, p1, secs(1)), None);
            assert_eq!(n.inbound(elsewhere, p2, secs(1)), Some(private));
            assert_eq!(n.inbound(elsewhere, p2, secs(30)), None, "expired");
            assert_eq!(n.inbound(sn, p1, secs(30)), Some(private), "refreshed at 1 s");
            (p1.port(), p2.port())
        };
        assert_eq!(ports(7), ports(7));
        assert_ne!(ports(7), ports(8), "the ports come from the generator");
        let (p1, p2) = ports(7);
        assert!(p1.abs_diff(p2) > 1, "not in sequence: {p1} {p2}");
    }

    #[test]
    fn a_sequential_nat_hands_ports_out_in_order() {
        let (private, sn, _, elsewhere) = ends();
        let mut n = Symmetric::sequential(ip(), TTL);
        let mut rng = StdRng::seed_from_u64(3);
        let ports: Vec<u16> = [sn, elsewhere, a("198.18.0.3:1"), a("198.18.0.4:1")]
            .iter()
            .map(|d| n.outbound(private, *d, secs(0), &mut rng).unwrap().port())
            .collect();
        assert!(ports.windows(2).all(|w| w[1] == w[0] + 1 || w[0] == u16::MAX), "{ports:?}");
        assert_eq!(n.inbound(sn, SocketAddr::new(ip(), ports[0]), secs(1)), Some(private));
        assert_eq!(n.inbound(elsewhere, SocketAddr::new(ip(), ports[0]), secs(1)), None, "still symmetric");
        // Expiry frees the mapping; the next one still takes the next port.
        let next = n.outbound(private, sn, secs(31), &mut rng).unwrap().port();
        assert_eq!(next, ports[3] + 1);
    }

    #[test]
    fn a_full_table_drops_what_needs_a_new_mapping() {
        let private = a("10.0.0.2:40000");
        let mut n = Symmetric::new(ip(), TTL);
        let mut rng = StdRng::seed_from_u64(4);
        for i in 0..MAPPINGS_MAX {
            let dst = SocketAddr::new(IpAddr::from([198, 19, (i / 250) as u8, (i % 250) as u8 + 1]), 9);
            assert!(n.outbound(private, dst, secs(0), &mut rng).is_some());
        }
        assert_eq!(n.outbound(private, a("198.18.9.9:9"), secs(1), &mut rng), None);
        assert!(n.outbound(private, a("198.18.9.9:9"), TTL, &mut rng).is_some(), "expired mappings make room");
    }
}
