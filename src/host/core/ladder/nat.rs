//! NAT discovery after a UDP link came up, as states (today's `connect::discover_nat`):
//! the Welcome's observed address is the first observation; NAT probes from port P to
//! [`probe_targets`] give the others, each target asked up to [`PROBE_TRIES`] times,
//! [`PROBE_WAIT`] apart. It stops at the first answer that differs from the first
//! observation, or after two agreeing answers, and ends in `nat::classify`.

use super::Out;
use crate::host::core::Now;
use crate::host::core::io::{Dest, Effect, Transmit};
use crate::host::handshake::ClientSession;
use crate::nat::{self, NatKind, Observations};
use crate::wire::frame;
use crate::wire::message::{MessageKind, NatProbe, Observed};
use rand::Rng;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

/// Sends of one probe before its target is given up.
pub const PROBE_TRIES: u8 = 3;
/// How long one probe's answer is awaited.
pub const PROBE_WAIT: Duration = Duration::from_millis(400);
/// How long the local address is awaited once the probes are done: the shell answers
/// at once, and without it the wildcard stands in, as it does today.
pub const LOCAL_IP_WAIT: Duration = Duration::from_secs(1);

/// Where to probe: a super node on another IP address first (does the mapping depend on
/// the destination address?), then the alternate port (on the destination port?), then
/// other super nodes if those did not answer.
pub fn probe_targets(session: &ClientSession) -> Vec<SocketAddr> {
    let others: Vec<SocketAddr> =
        session.welcome.supernodes.iter().filter_map(|s| s.udp).filter(|a| *a != session.addr).collect();
    let mut v: Vec<SocketAddr> = others.iter().copied().filter(|a| a.ip() != session.addr.ip()).take(1).collect();
    v.extend(session.welcome.probe_addr);
    v.extend(others.iter().copied().filter(|a| !v.contains(a)).take(2).collect::<Vec<_>>());
    v
}

/// The local address toward the super node, as the shell reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum LocalIp {
    /// Asked for under this effect tag.
    Asked(u64),
    /// Known (None: the system had no answer).
    Known(Option<IpAddr>),
}

/// NAT discovery over port P.
#[derive(Debug)]
pub struct NatDiscovery {
    targets: Vec<SocketAddr>,
    at: usize,
    probe_id: u64,
    tries: u8,
    deadline: Instant,
    started: Instant,
    port: u16,
    local: LocalIp,
    first: SocketAddr,
    others: Vec<SocketAddr>,
}

impl NatDiscovery {
    /// Starts discovery for the link `session` on port `port`: asks the shell for the
    /// local address toward the super node, and sends the first probe.
    pub fn start(session: &ClientSession, port: u16, now: Now, rng: &mut impl Rng, out: &mut Out) -> Self {
        let tag = out.effect(Effect::LocalIpToward(session.addr));
        let mut d = Self {
            targets: probe_targets(session),
            at: 0,
            probe_id: 0,
            tries: 0,
            deadline: now.mono,
            started: now.mono,
            port,
            local: LocalIp::Asked(tag),
            first: session.welcome.observed,
            others: Vec::new(),
        };
        d.probe_next_target(now, rng, out);
        d
    }

    /// The target now being probed.
    fn target(&self) -> Option<SocketAddr> {
        self.targets.get(self.at).copied()
    }

    fn probing(&self) -> bool {
        self.target().is_some() && !self.settled()
    }

    /// The first difference, or two agreeing answers, settle it.
    fn settled(&self) -> bool {
        self.others.last().is_some_and(|o| *o != self.first) || self.others.len() >= 2
    }

    fn probe_next_target(&mut self, now: Now, rng: &mut impl Rng, out: &mut Out) {
        self.probe_id = rng.next_u64();
        self.tries = 0;
        self.send_probe(now, rng, out);
    }

    fn send_probe(&mut self, now: Now, rng: &mut impl Rng, out: &mut Out) {
        let Some(target) = self.target() else { return };
        let mut nonce = [0u8; 8];
        rng.fill_bytes(&mut nonce);
        let body = NatProbe { id: self.probe_id }.encode();
        let bytes = frame::encode_plain_with_nonce(target, MessageKind::NatProbe, 0, &body, nonce);
        out.transmit(Transmit { dest: Dest::Udp(target), bytes });
        self.tries += 1;
        self.deadline = now.mono + PROBE_WAIT;
    }

    /// A datagram on port P: true if it is the answer to the probe under way (from its
    /// target, with its id), which is then taken.
    pub fn handle_datagram(
        &mut self,
        now: Now,
        from: SocketAddr,
        bytes: &[u8],
        rng: &mut impl Rng,
        out: &mut Out,
    ) -> bool {
        if !self.probing() || self.target() != Some(from) {
            return false;
        }
        let Ok(raw) = frame::decode(from, bytes) else { return false };
        if raw.header.kind != MessageKind::NatProbeReply {
            return false;
        }
        let Ok(o) = Observed::decode(raw.payload) else { return false };
        if o.id != self.probe_id {
            return false;
        }
        self.others.push(o.addr);
        self.at += 1;
        if self.probing() {
            self.probe_next_target(now, rng, out);
        }
        true
    }

    /// The shell's answer to the local-address effect `tag`; false if not ours.
    pub fn on_local_ip(&mut self, tag: u64, ip: Option<IpAddr>) -> bool {
        if self.local != LocalIp::Asked(tag) {
            return false;
        }
        self.local = LocalIp::Known(ip);
        true
    }

    /// When [`NatDiscovery::handle_timeout`] has work.
    pub fn poll_timeout(&self) -> Instant {
        if self.probing() { self.deadline } else { self.started + LOCAL_IP_WAIT }
    }

    /// A probe's wait ran out: again, or the next target.
    pub fn handle_timeout(&mut self, now: Now, rng: &mut impl Rng, out: &mut Out) {
        if !self.probing() || now.mono < self.deadline {
            return;
        }
        if self.tries < PROBE_TRIES {
            self.send_probe(now, rng, out);
        } else {
            self.at += 1;
            self.probe_next_target(now, rng, out);
        }
    }

    /// The classification, once the probes are done and the local address is known
    /// (or waited for long enough).
    pub fn result(&self, now: Now) -> Option<(NatKind, Observations)> {
        if self.probing() {
            return None;
        }
        let ip = match self.local {
            LocalIp::Known(ip) => ip,
            LocalIp::Asked(_) if now.mono >= self.started + LOCAL_IP_WAIT => None,
            LocalIp::Asked(_) => return None,
        };
        let ip = ip.unwrap_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED));
        let obs = Observations {
            local: SocketAddr::new(ip, self.port),
            first: Some(self.first),
            others: self.others.clone(),
        };
        Some((nat::classify(&obs), obs))
    }
}
