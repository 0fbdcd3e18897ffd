//! SWIM membership (foca) as a plain state machine: bytes and timer events in, packets
//! to send, timers to set and member changes out. The actor in [`super::agent`] only
//! moves them between foca and a socket.

use super::member::Member;
use foca::{AccumulatingRuntime, Config, Foca, NoCustomBroadcast, OwnedNotification, PostcardCodec, Timer};
use rand::SeedableRng;
use rand::rngs::StdRng;
use std::net::SocketAddr;
use std::num::NonZeroU32;
use std::time::Duration;

/// What the driver must do.
#[derive(Debug)]
pub enum Output {
    /// Send these bytes (unsealed) to this member (a seed: its address alone).
    Send(Member, Vec<u8>),
    /// Call [`Membership::handle_timer`] with this event after the delay.
    Schedule(Duration, Timer<Member>),
    /// A member came up (or changed identity).
    Up(Member),
    /// A member went down.
    Down(Member),
}

/// One node's view of the cluster.
pub struct Membership {
    foca: Foca<Member, PostcardCodec, StdRng, NoCustomBroadcast>,
    rt: AccumulatingRuntime<Member>,
    probe_period: Duration,
    max_transmissions: std::num::NonZeroU8,
}

/// The sender a gossip packet names inside (foca's header), if it decodes: the
/// transport checks it against the authenticated sender, since foca answers to it.
pub fn sender_of(data: &[u8]) -> Option<Member> {
    use foca::Codec;
    PostcardCodec.decode_header(data).ok().map(|h: foca::Header<Member>| h.src)
}

/// The smallest cluster size the retransmission count is fitted to.
const SIZE_FLOOR: u32 = 32;

/// Membership timing for a LAN-like cluster of about `cluster_size` nodes, with the
/// probe period given (1 s in production: a dead node is noticed within a few seconds).
pub fn config(cluster_size: u32, probe_period: Duration) -> Config {
    let mut c = Config::new_lan(NonZeroU32::new(cluster_size.max(1)).expect("at least one"));
    c.probe_period = probe_period;
    c.probe_rtt = probe_period / 2;
    c.suspect_to_down_after = probe_period * 3;
    // Each update is passed on this many times. With memberlist's 4·log10(n+1) about one
    // survivor in a hundred missed a death when 30 of 100 nodes died at once, and had to
    // find out by probing the dead node itself (up to n probe periods); 6·log10(n+1) makes
    // a miss some 50 times rarer for a few more bytes in each packet.
    let tx = (6.0 * f64::from(cluster_size.max(1) + 1).log10()).ceil().clamp(1.0, 255.0) as u8;
    c.max_transmissions = std::num::NonZeroU8::new(tx).expect("at least 1");
    // A partition (two groups that each declared the other down) heals when one side
    // announces itself to a member it holds as down; foca's LAN default waits 65 s for
    // that. Ten probe periods keeps a split short at the cost of one small packet to two
    // down members per round.
    c.periodic_announce_to_down_members = Some(foca::PeriodicParams {
        frequency: probe_period * 10,
        num_members: std::num::NonZeroUsize::new(2).expect("positive"),
    });
    // Leave room for the gossip seal inside one datagram.
    c.max_packet_size = std::num::NonZeroUsize::new(1400 - super::gossip::OVERHEAD).expect("positive");
    c
}

impl Membership {
    /// A node `me` with `config`.
    pub fn new(me: Member, config: Config) -> Self {
        Self::with_seed(me, config, crate::crypto::random::bytes())
    }

    /// A node `me` with `config` whose random choices (probe order, gossip targets)
    /// follow `seed`: the simulator replays a run from its seed.
    pub fn with_seed(me: Member, config: Config, seed: [u8; 32]) -> Self {
        let rng = StdRng::from_seed(seed);
        let (probe_period, max_transmissions) = (config.probe_period, config.max_transmissions);
        Self {
            foca: Foca::new(me, config, rng, PostcardCodec),
            rt: AccumulatingRuntime::new(),
            probe_period,
            max_transmissions,
        }
    }

    /// Asks a seed to let us in.
    pub fn join(&mut self, seed: SocketAddr) -> Vec<Output> {
        if let Err(e) = self.foca.announce(Member::seed(seed), &mut self.rt) {
            tracing::debug!(error = %e, %seed, "announce failed");
        }
        self.drain()
    }

    /// Feeds a received (opened) packet.
    pub fn handle_data(&mut self, data: &[u8]) -> Vec<Output> {
        if let Err(e) = self.foca.handle_data(data, &mut self.rt) {
            tracing::debug!(error = %e, "gossip data refused");
        }
        self.drain()
    }

    /// Feeds a timer event that came due.
    pub fn handle_timer(&mut self, t: Timer<Member>) -> Vec<Output> {
        if let Err(e) = self.foca.handle_timer(t, &mut self.rt) {
            tracing::debug!(error = %e, "gossip timer failed");
        }
        self.drain()
    }

    /// Leaves the cluster gracefully.
    pub fn leave(&mut self) -> Vec<Output> {
        let _ = self.foca.leave_cluster(&mut self.rt);
        self.drain()
    }

    /// Members foca believes alive (itself excluded), with or without a certificate.
    pub fn others(&self) -> impl Iterator<Item = &Member> {
        self.foca.iter_members().map(|m| m.id())
    }

    /// Every member this node believes alive, itself included, sorted by address.
    pub fn alive(&self) -> Vec<Member> {
        let mut v: Vec<Member> = self.foca.iter_members().map(|m| m.id().clone()).collect();
        v.push(self.foca.identity().clone());
        v.retain(|m| m.node.is_some());
        v.sort_by_key(|m| m.gossip);
        v.dedup_by_key(|m| m.gossip);
        v
    }

    /// Follows the cluster's size: how often an update is retransmitted grows with the
    /// log of the member count, or in a large cluster some members never hear of a death
    /// and must find out by probing the dead node themselves (up to N probe periods).
    fn fit_size(&mut self) {
        // Never below the start-up sizing: small clusters keep its margin.
        let n = u32::try_from(self.foca.num_members() + 1).unwrap_or(u32::MAX).max(SIZE_FLOOR);
        let fitted = config(n, self.probe_period);
        if fitted.max_transmissions != self.max_transmissions {
            self.max_transmissions = fitted.max_transmissions;
            let _ = self.foca.set_config(fitted);
        }
    }

    fn drain(&mut self) -> Vec<Output> {
        let mut out = Vec::new();
        while let Some((to, data)) = self.rt.to_send() {
            out.push(Output::Send(to, data.to_vec()));
        }
        while let Some((after, t)) = self.rt.to_schedule() {
            out.push(Output::Schedule(after, t));
        }
        while let Some(n) = self.rt.to_notify() {
            match n {
                OwnedNotification::MemberUp(m) => out.push(Output::Up(m)),
                OwnedNotification::MemberDown(m) => out.push(Output::Down(m)),
                _ => {}
            }
        }
        if out.iter().any(|o| matches!(o, Output::Up(_) | Output::Down(_))) {
            self.fit_size();
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::{BTreeMap, HashSet};

    fn member(i: u16) -> Member {
        Member {
            gossip: SocketAddr::from(([198, 18, 0, 1], 40000 + i)),
            bump: 1,
            node: Some([i as u8; 8]),
            name: format!("sn{i}"),
            udp: None,
            tcp: None,
        }
    }

    /// A deterministic in-memory network on a virtual clock: every node joins through
    /// node 0, the view converges, a killed node is noticed within a few probe periods.
    #[test]
    fn converges_and_notices_the_dead() {
        let n = 12u16;
        let period = Duration::from_millis(1000);
        let mut nodes: BTreeMap<SocketAddr, Membership> =
            (0..n).map(|i| (member(i).gossip, Membership::new(member(i), config(n as u32, period)))).collect();
        let mut dead: HashSet<SocketAddr> = HashSet::new();
        // (due time ms, target, event)
        let mut timers: Vec<(u64, SocketAddr, Timer<Member>)> = Vec::new();
        let mut wire: Vec<(SocketAddr, Vec<u8>)> = Vec::new();
        let seed = member(0).gossip;
        let mut now = 0u64;
        let apply = |from: SocketAddr, out: Vec<Output>, now: u64, timers: &mut Vec<_>, wire: &mut Vec<_>| {
            for o in out {
                match o {
                    Output::Send(to, d) => {
                        assert_eq!(sender_of(&d).map(|m| m.gossip), Some(from), "foca names its sender");
                        wire.push((to.gossip, d))
                    }
                    Output::Schedule(after, t) => timers.push((now + after.as_millis() as u64, from, t)),
                    Output::Up(_) | Output::Down(_) => {}
                }
            }
        };
        for i in 1..n {
            let a = member(i).gossip;
            let out = nodes.get_mut(&a).unwrap().join(seed);
            apply(a, out, now, &mut timers, &mut wire);
        }
        let mut run_until =
            |until: u64, nodes: &mut BTreeMap<SocketAddr, Membership>, dead: &HashSet<SocketAddr>, now: &mut u64| {
                while *now < until {
                    while let Some((to, d)) = wire.pop() {
                        if dead.contains(&to) {
                            continue;
                        }
                        let out = nodes.get_mut(&to).unwrap().handle_data(&d);
                        apply(to, out, *now, &mut timers, &mut wire);
                    }
                    *now += 50;
                    let due: Vec<_> = timers.iter().filter(|t| t.0 <= *now).cloned().collect();
                    timers.retain(|t| t.0 > *now);
                    for (_, at, t) in due {
                        if dead.contains(&at) {
                            continue;
                        }
                        let out = nodes.get_mut(&at).unwrap().handle_timer(t);
                        apply(at, out, *now, &mut timers, &mut wire);
                    }
                }
            };
        // Joins spread by gossip: usually within a few seconds, at worst by the periodic
        // announcements (every 30 s).
        let converged =
            |nodes: &BTreeMap<SocketAddr, Membership>| nodes.values().all(|m| m.alive().len() == n as usize);
        while !converged(&nodes) && now < 65_000 {
            run_until(now + 500, &mut nodes, &dead, &mut now);
        }
        eprintln!("{n} members converged after {now} ms (virtual)");
        for (a, m) in &nodes {
            assert_eq!(
                m.alive().len(),
                n as usize,
                "{a} sees {:?}",
                m.alive().iter().map(|m| &m.name).collect::<Vec<_>>()
            );
        }
        dead.insert(member(5).gossip);
        dead.insert(member(7).gossip);
        let killed_at = now;
        let everyone_noticed = |nodes: &BTreeMap<SocketAddr, Membership>, dead: &HashSet<SocketAddr>| {
            nodes.iter().filter(|(a, _)| !dead.contains(a)).all(|(_, m)| m.alive().len() == n as usize - 2)
        };
        while !everyone_noticed(&nodes, &dead) && now < killed_at + 60_000 {
            run_until(now + 500, &mut nodes, &dead, &mut now);
        }
        let took = now - killed_at;
        eprintln!("dead members noticed by every survivor after {took} ms (virtual)");
        assert!(took <= 15_000, "the dead were noticed everywhere after {took} ms");
        for (a, m) in nodes.iter().filter(|(a, _)| !dead.contains(a)) {
            let names: Vec<_> = m.alive().iter().map(|m| m.name.clone()).collect();
            assert_eq!(names.len(), n as usize - 2, "{a} sees {names:?}");
            assert!(!names.contains(&"sn5".to_owned()) && !names.contains(&"sn7".to_owned()));
        }
    }
}
