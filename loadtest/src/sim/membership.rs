//! A cluster of super nodes running foca exactly as production does
//! (`confab::cluster::membership`), on the simulated network: packets carry foca's real
//! bytes, counted with the cluster channel's sealing overhead; the seal itself (an AEAD in
//! production) is skipped — the stand-in crypto the report names.
//!
//! Each node keeps what it believes alive (from foca's up and down notifications) and the
//! cluster tells the caller every change a node notices, so the caller can follow views
//! and measure how long each change took to reach each node.

use super::clock::Ms;
use super::net::{Addr, Class, Net, Traffic};
use super::rng;
use confab::cluster::Member;
use confab::cluster::gossip::OVERHEAD;
use confab::cluster::membership::{self, Membership, Output};
use confab::crypto::KeyId;
use confab::index::NodeId;
use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::time::Duration;

/// Foca's probe period in production.
pub const PROBE_PERIOD: Duration = Duration::from_secs(1);

/// What the caller must do after a cluster call.
#[derive(Debug)]
pub enum Action {
    /// Deliver `data` to slot `to` after `delay`.
    Deliver { to: u32, delay: Ms, data: Vec<u8> },
    /// Fire `timer` at slot `slot` (incarnation `inc`) after `after`.
    Timer { slot: u32, inc: u32, after: Ms, timer: foca::Timer<Member> },
    /// Node `observer` now believes `member` (bump `bump`) is up or down.
    Noticed { observer: u32, member: NodeId, bump: u32, up: bool },
}

/// One slot of the cluster: the node in it now (or its last one, if down).
pub struct Slot {
    /// The index identity of the node in the slot (kept across its sessions).
    pub id: NodeId,
    /// Grows on each session.
    pub bump: u32,
    /// Grows on each start: timers of an earlier session are stale.
    pub inc: u32,
    /// Its foca, while up.
    pub foca: Option<Membership>,
    /// Who it believes alive (itself excluded), with the bump it heard of.
    pub believed: BTreeMap<NodeId, u32>,
    /// Bytes it sent and received.
    pub traffic: Traffic,
}

/// A cluster whose slot `i` is the gossip address `base + i`.
pub struct Cluster {
    /// Which cluster this is (the high bits of its network addresses).
    pub tag: u64,
    base: u32,
    seed: u64,
    size_hint: u32,
    /// Every slot ever started.
    pub slots: Vec<Slot>,
}

/// The index identity of slot `i` of cluster `tag` under `seed`.
pub fn node_id(seed: u64, tag: u64, i: u32) -> NodeId {
    let b = rng::bytes(seed, "node-id", (tag << 32) | u64::from(i));
    KeyId(b[..8].try_into().expect("8 bytes"))
}

impl Cluster {
    /// An empty cluster, addresses from `base` (in 198.18.0.0/15), sized for about
    /// `size_hint` members as production configures it.
    pub fn new(tag: u64, base: Ipv4Addr, seed: u64, size_hint: u32) -> Self {
        Self { tag, base: u32::from(base), seed, size_hint, slots: Vec::new() }
    }

    /// The network address of slot `i`.
    pub fn addr(&self, i: u32) -> Addr {
        (self.tag << 32) | u64::from(i)
    }

    fn gossip(&self, i: u32) -> SocketAddr {
        SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::from(self.base + i), 33033))
    }

    fn slot_of(&self, a: SocketAddr) -> Option<u32> {
        match a {
            SocketAddr::V4(v) => u32::from(*v.ip()).checked_sub(self.base).filter(|i| (*i as usize) < self.slots.len()),
            SocketAddr::V6(_) => None,
        }
    }

    /// The member record slot `i` announces: the same shape as production's.
    fn member(&self, i: u32) -> Member {
        let s = &self.slots[i as usize];
        let ip = Ipv4Addr::from(self.base + i);
        Member {
            gossip: self.gossip(i),
            bump: s.bump,
            node: Some(s.id.0),
            name: format!("sn-{}-{i}", self.tag),
            udp: Some(SocketAddr::V4(SocketAddrV4::new(ip, 33033))),
            tcp: Some(SocketAddr::V4(SocketAddrV4::new(ip, 443))),
        }
    }

    /// Adds a new, not yet started slot; returns its number.
    pub fn add(&mut self) -> u32 {
        let i = self.slots.len() as u32;
        let id = node_id(self.seed, self.tag, i);
        self.slots.push(Slot {
            id,
            bump: 0,
            inc: 0,
            foca: None,
            believed: BTreeMap::new(),
            traffic: Traffic::default(),
        });
        i
    }

    /// Whether slot `i` is up.
    pub fn is_up(&self, i: u32) -> bool {
        self.slots.get(i as usize).is_some_and(|s| s.foca.is_some())
    }

    /// Starts slot `i` (a new session) and has it join through slots `seeds`.
    pub fn start(&mut self, i: u32, seeds: &[u32], net: &mut Net, out: &mut Vec<Action>) {
        let s = &mut self.slots[i as usize];
        s.bump += 1;
        s.inc += 1;
        s.believed.clear();
        let rng_seed = rng::bytes(self.seed, "foca", (self.tag << 48) | (u64::from(i) << 16) | u64::from(s.bump));
        let member = self.member(i);
        let mut m = Membership::with_seed(member, membership::config(self.size_hint, PROBE_PERIOD), rng_seed);
        let outputs: Vec<Output> = seeds.iter().filter(|j| **j != i).flat_map(|j| m.join(self.gossip(*j))).collect();
        self.slots[i as usize].foca = Some(m);
        self.apply(i, outputs, net, out);
    }

    /// Stops slot `i` without a word (a crash, as a home machine switched off).
    pub fn crash(&mut self, i: u32) {
        let s = &mut self.slots[i as usize];
        s.foca = None;
        s.believed.clear();
    }

    /// Whether every up node believes exactly the up nodes alive.
    pub fn converged(&self) -> bool {
        let mut up: Vec<NodeId> = self.slots.iter().filter(|s| s.foca.is_some()).map(|s| s.id).collect();
        up.sort_unstable();
        self.slots
            .iter()
            .filter(|s| s.foca.is_some())
            .all(|s| s.believed.len() + 1 == up.len() && s.believed.keys().all(|k| up.binary_search(k).is_ok()))
    }

    /// A packet reached slot `to`.
    pub fn deliver(&mut self, to: u32, data: &[u8], net: &mut Net, out: &mut Vec<Action>) {
        let s = &mut self.slots[to as usize];
        let Some(m) = s.foca.as_mut() else { return };
        s.traffic.recv[Class::Gossip as usize] += (data.len() + OVERHEAD) as u64;
        let outputs = m.handle_data(data);
        self.apply(to, outputs, net, out);
    }

    /// A timer of slot `i` came due.
    pub fn timer(&mut self, i: u32, inc: u32, t: foca::Timer<Member>, net: &mut Net, out: &mut Vec<Action>) {
        let s = &mut self.slots[i as usize];
        if s.inc != inc {
            return;
        }
        let Some(m) = s.foca.as_mut() else { return };
        let outputs = m.handle_timer(t);
        self.apply(i, outputs, net, out);
    }

    fn apply(&mut self, i: u32, outputs: Vec<Output>, net: &mut Net, out: &mut Vec<Action>) {
        let inc = self.slots[i as usize].inc;
        for o in outputs {
            match o {
                Output::Send(to, data) => {
                    self.slots[i as usize].traffic.sent[Class::Gossip as usize] += (data.len() + OVERHEAD) as u64;
                    let Some(j) = self.slot_of(to.gossip) else { continue };
                    if let Ok(delay) = net.send(self.addr(i), self.addr(j)) {
                        out.push(Action::Deliver { to: j, delay, data });
                    }
                }
                Output::Schedule(after, timer) => {
                    out.push(Action::Timer { slot: i, inc, after: after.as_millis() as Ms, timer })
                }
                Output::Up(m) | Output::Down(m) if m.node.is_none() => {}
                Output::Up(m) => {
                    let id = KeyId(m.node.expect("checked"));
                    let believed = &mut self.slots[i as usize].believed;
                    if believed.get(&id).is_none_or(|b| *b < m.bump) {
                        let was = believed.insert(id, m.bump);
                        if was.is_none() {
                            out.push(Action::Noticed { observer: i, member: id, bump: m.bump, up: true });
                        }
                    }
                }
                Output::Down(m) => {
                    let id = KeyId(m.node.expect("checked"));
                    let believed = &mut self.slots[i as usize].believed;
                    // A later session of the same node may already be believed: an
                    // old session's death does not take it out.
                    if believed.get(&id).is_some_and(|b| *b <= m.bump) {
                        believed.remove(&id);
                        out.push(Action::Noticed { observer: i, member: id, bump: m.bump, up: false });
                    }
                }
            }
        }
    }
}
