//! The in-memory world (`docs/host-core.md` §6): hosts behind NATs and super nodes on
//! one virtual clock, exchanging datagrams over a wire with delay and loss drawn from
//! one seeded generator. No socket, no thread, no clock: the same seed gives the same
//! trace.
//!
//! Each [`World::step`] moves time to the earliest of a packet's delivery and a node's
//! timer, delivers or fires that, and puts what the node sends on the wire. Everything
//! is bounded: steps, packets in flight, records.
//!
//! The world is at link level: a host is a [`CoreLink`] over a session its real
//! handshake established in-world, through its NAT, with its super node.
//!
//! [`media`] is a smaller world for one call's media: two `CallMedia`, the NATs and a
//! relay session table, on which the NAT matrix runs in memory (`matrix`).

pub mod calls;
pub mod host;
pub mod media;
pub mod nat;
pub mod supernode;
pub mod whole;

use self::host::SimHost;
use self::nat::NatFn;
use self::supernode::{FakeSupernode, SimIndex};
use self::whole::CoreNode;
use super::io::{ConnId, TcpEvent};
use super::pending::{OpId, OpResult};
use super::{CoreEvent, CoreLink, Now};
use crate::wire::{MessageKind, frame};
use rand::Rng as _;
use rand::RngExt;
use rand::SeedableRng;
use rand::rngs::StdRng;
use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap};
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

/// The wall clock when a world begins (Unix seconds): credentials are issued then.
pub const EPOCH_UNIX_SECS: u64 = 1_700_000_000;
/// Most steps a world takes before it is declared stuck.
pub const STEPS_MAX: usize = 1_000_000;
/// Most datagrams in flight; beyond, new ones are lost (and counted).
pub const WIRE_MAX: usize = 100_000;
/// Most trace rows kept; a longer run is a test bug.
pub const TRACE_MAX: usize = 1_000_000;

/// Names a node of the world.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct NodeId(pub u32);

/// A datagram on the wire, between public addresses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Packet {
    /// Its public source.
    pub from: SocketAddr,
    /// Its public destination.
    pub to: SocketAddr,
    /// The datagram.
    pub bytes: Vec<u8>,
}

#[derive(Debug)]
struct InFlight {
    at: Duration,
    seq: u64,
    packet: Packet,
}

impl PartialEq for InFlight {
    fn eq(&self, o: &Self) -> bool {
        (self.at, self.seq) == (o.at, o.seq)
    }
}
impl Eq for InFlight {}
impl PartialOrd for InFlight {
    fn partial_cmp(&self, o: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(o))
    }
}
impl Ord for InFlight {
    fn cmp(&self, o: &Self) -> std::cmp::Ordering {
        (self.at, self.seq).cmp(&(o.at, o.seq))
    }
}

/// How datagrams fare between two nodes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LinkSpec {
    /// One-way delay.
    pub delay: Duration,
    /// Added to the delay: uniform in `0..=jitter`.
    pub jitter: Duration,
    /// Datagrams lost, per million.
    pub loss_ppm: u32,
}

impl Default for LinkSpec {
    fn default() -> Self {
        Self { delay: Duration::from_millis(20), jitter: Duration::from_millis(5), loss_ppm: 0 }
    }
}

/// What one trace row records. Only what the seed decides: times, addresses, kinds
/// and lengths, never the bytes (RSA padding and session keys come from elsewhere).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum What {
    /// A datagram went on the wire.
    Sent {
        /// Public source.
        from: SocketAddr,
        /// Public destination.
        to: SocketAddr,
        /// Its kind, read from the header.
        kind: Option<MessageKind>,
        /// Its length.
        len: usize,
    },
    /// A datagram was lost on the wire.
    Lost {
        /// Public source.
        from: SocketAddr,
        /// Its kind.
        kind: Option<MessageKind>,
    },
    /// A node's NAT dropped what it sent.
    NatDropped {
        /// Where to.
        to: SocketAddr,
    },
    /// A datagram reached the public address of a NAT that did not let it in.
    Filtered {
        /// From.
        from: SocketAddr,
        /// Its kind.
        kind: Option<MessageKind>,
    },
    /// A datagram to an address no node has.
    Unroutable {
        /// Where to.
        to: SocketAddr,
    },
    /// A host's handshake finished.
    Linked {
        /// Its super node.
        supernode: SocketAddr,
    },
    /// A request finished: its op and outcome.
    Completed {
        /// Which.
        op: OpId,
        /// "ok:<answer kind>" or "err:<error>".
        outcome: String,
    },
    /// An event.
    Event(String),
}

/// What a host asks of the world's TCP.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TcpOut {
    /// Open a connection named `conn` to `addr`.
    Connect {
        /// The host's name for it.
        conn: ConnId,
        /// Where to.
        addr: SocketAddr,
    },
    /// One frame on `conn`.
    Frame {
        /// Which connection.
        conn: ConnId,
        /// The frame.
        bytes: Vec<u8>,
    },
    /// Close `conn`.
    Close {
        /// Which connection.
        conn: ConnId,
    },
}

/// One TCP connection of the world: a host's, to a super node. Frames travel the wire
/// as datagrams between `public` (the host's address on the connection) and the super
/// node, past the NATs: a firewall that drops UDP lets TCP through.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct SimConn {
    host: NodeId,
    conn: ConnId,
    supernode: SocketAddr,
}

/// Most TCP connections open in the world at once.
pub const CONNS_MAX: usize = 4096;

/// One row of the trace.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TraceRow {
    /// When.
    pub at: Duration,
    /// Which node.
    pub node: NodeId,
    /// What.
    pub what: What,
}

/// One node.
#[derive(Debug)]
pub enum Node {
    /// A host.
    Host(Box<SimHost>),
    /// A super node.
    Supernode(Box<FakeSupernode>),
    /// A host whose machine is a whole `HostCore`.
    Core(Box<CoreNode>),
}

/// What a node may touch while it handles one input.
pub struct Ctx<'a> {
    /// The world's time.
    pub now: Duration,
    base: Instant,
    node: NodeId,
    /// The world's generator.
    pub rng: &'a mut StdRng,
    /// The shared index.
    pub index: &'a mut SimIndex,
    out: &'a mut Vec<Packet>,
    /// What a host asks of TCP.
    pub tcp: &'a mut Vec<TcpOut>,
    /// Notices for other super nodes' hosts: (node name, user, body).
    pub notices: &'a mut Vec<(String, String, Vec<u8>)>,
    trace: &'a mut Vec<TraceRow>,
}

impl Ctx<'_> {
    /// The wall clock, in whole seconds.
    pub fn unix_secs(&self) -> u64 {
        EPOCH_UNIX_SECS + self.now.as_secs()
    }

    /// The time as the core takes it.
    pub fn core_now(&self) -> Now {
        Now { mono: self.base + self.now, unix_ms: EPOCH_UNIX_SECS * 1000 + self.now.as_millis() as u64 }
    }

    /// Puts a datagram on the wire.
    pub fn send(&mut self, from: SocketAddr, to: SocketAddr, bytes: Vec<u8>) {
        self.out.push(Packet { from, to, bytes });
    }

    fn row(&mut self, what: What) {
        assert!(self.trace.len() < TRACE_MAX, "more than {TRACE_MAX} trace rows");
        self.trace.push(TraceRow { at: self.now, node: self.node, what });
    }

    fn dropped_by_nat(&mut self, to: SocketAddr) {
        self.row(What::NatDropped { to });
    }

    fn filtered(&mut self, from: SocketAddr, to: SocketAddr, bytes: &[u8]) {
        let kind = kind_of(from, to, bytes);
        self.row(What::Filtered { from, kind });
    }

    fn note(&mut self, label: String) {
        self.row(What::Event(label));
    }

    fn linked(&mut self, supernode: SocketAddr) {
        self.row(What::Linked { supernode });
    }

    fn completed(&mut self, op: OpId, r: &OpResult) {
        let outcome = match r {
            Ok(a) => format!("ok:{}", answer_label(a)),
            Err(e) => format!("err:{e}"),
        };
        self.row(What::Completed { op, outcome });
    }

    fn event(&mut self, e: &CoreEvent) {
        let label = match e {
            CoreEvent::Notice(b) => format!("notice:{}", b.len()),
            CoreEvent::LinkEnded { epoch, why } => format!("link_ended:{epoch}:{why}"),
        };
        self.row(What::Event(label));
    }
}

fn answer_label(a: &super::pending::Answer) -> &'static str {
    use super::pending::Answer;
    match a {
        Answer::Observed(_) => "observed",
        Answer::Published(_) => "published",
        Answer::Found(_) => "found",
        Answer::Searched(_) => "searched",
        Answer::Forwarded(_) => "forwarded",
        Answer::Granted(_) => "granted",
        Answer::Mailed(_) => "mailed",
        Answer::Mail(_) => "mail",
        Answer::MailAcked(_) => "mail_acked",
    }
}

/// A frame's kind, read with whichever end's address keys its header (the super node's,
/// in both directions).
fn kind_of(a: SocketAddr, b: SocketAddr, bytes: &[u8]) -> Option<MessageKind> {
    [b, a].into_iter().find_map(|k| frame::decode(k, bytes).ok().map(|r| r.header.kind))
}

/// Counters of the wire.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct WireStats {
    /// Datagrams delivered to a node.
    pub delivered: u64,
    /// Lost by the link's loss rate.
    pub lost: u64,
    /// Lost because too many were in flight.
    pub overflowed: u64,
    /// Addressed to nobody.
    pub unroutable: u64,
}

/// The world.
#[derive(Debug)]
pub struct World {
    /// Virtual time since the world began.
    pub now: Duration,
    base: Instant,
    /// The one generator: NAT ports, delays, loss, nonces, request ids.
    pub rng: StdRng,
    nodes: BTreeMap<NodeId, Node>,
    routes: BTreeMap<IpAddr, NodeId>,
    wire: BinaryHeap<Reverse<InFlight>>,
    seq: u64,
    /// Everything that happened, in order.
    pub trace: Vec<TraceRow>,
    /// The shared index.
    pub index: SimIndex,
    link_default: LinkSpec,
    links: BTreeMap<(NodeId, NodeId), LinkSpec>,
    stats: WireStats,
    steps: usize,
    /// TCP connections by the host's public address on each.
    conns: BTreeMap<SocketAddr, SimConn>,
    next_conn_port: u16,
    /// TCP events on their way to hosts, by when and order.
    tcp_events: BTreeMap<(Duration, u64), (NodeId, ConnId, TcpEvent)>,
}

impl World {
    /// An empty world whose every random choice comes from `seed`.
    pub fn new(seed: u64) -> Self {
        Self {
            now: Duration::ZERO,
            base: Instant::now(),
            rng: StdRng::seed_from_u64(seed),
            nodes: BTreeMap::new(),
            routes: BTreeMap::new(),
            wire: BinaryHeap::new(),
            seq: 0,
            trace: Vec::new(),
            index: SimIndex::default(),
            link_default: LinkSpec::default(),
            links: BTreeMap::new(),
            stats: WireStats::default(),
            steps: 0,
            conns: BTreeMap::new(),
            next_conn_port: 50_000,
            tcp_events: BTreeMap::new(),
        }
    }

    /// Counters of the wire.
    pub fn wire_stats(&self) -> WireStats {
        self.stats
    }

    /// How datagrams fare between nodes with no link of their own.
    pub fn set_default_link(&mut self, spec: LinkSpec) {
        self.link_default = spec;
    }

    /// How datagrams fare between `a` and `b` (both ways).
    pub fn set_link(&mut self, a: NodeId, b: NodeId, spec: LinkSpec) {
        self.links.insert((a.min(b), a.max(b)), spec);
    }

    fn add(&mut self, ip: IpAddr, node: Node) -> NodeId {
        let id = NodeId(self.nodes.len() as u32);
        assert!(self.routes.insert(ip, id).is_none(), "two nodes on {ip}");
        self.nodes.insert(id, node);
        id
    }

    /// A super node named `name` on `addr`.
    pub fn add_supernode(
        &mut self,
        name: &str,
        addr: SocketAddr,
        keepalive_secs: u16,
        idle_timeout_secs: u16,
    ) -> NodeId {
        let sn = FakeSupernode::new(name, addr, keepalive_secs, idle_timeout_secs, EPOCH_UNIX_SECS);
        self.add(addr.ip(), Node::Supernode(Box::new(sn)))
    }

    /// A host `user` on `private` behind `nat`, which starts its handshake with
    /// `supernode` now.
    pub fn add_host(&mut self, user: &str, private: SocketAddr, nat: Box<dyn NatFn>, supernode: SocketAddr) -> NodeId {
        let serial = self.nodes.len() as u64 + 100;
        let host = SimHost::new(user, private, nat, supernode, serial, EPOCH_UNIX_SECS);
        let ip = host.nat().public_ip();
        let id = self.add(ip, Node::Host(Box::new(host)));
        self.with_node(id, |node, ctx| {
            if let Node::Host(h) = node {
                h.start(ctx);
            }
        });
        id
    }

    /// A host `user` on `private` behind `nat` that logs in through the core's ladder
    /// over `cache` now (see [`SimHost::with_ladder`]).
    pub fn add_ladder_host(
        &mut self,
        user: &str,
        private: SocketAddr,
        nat: Box<dyn NatFn>,
        cache: Vec<crate::host::cache::CacheEntry>,
        ladder: crate::host::ladder::LadderConfig,
        timeouts: crate::host::connect::Timeouts,
    ) -> NodeId {
        let serial = self.nodes.len() as u64 + 100;
        let seed = self.rng.next_u64();
        let supernode = cache.iter().find_map(|e| e.udp).unwrap_or(private);
        let host = SimHost::new(user, private, nat, supernode, serial, EPOCH_UNIX_SECS)
            .with_ladder(cache, ladder, timeouts, seed);
        let ip = host.nat().public_ip();
        let id = self.add(ip, Node::Host(Box::new(host)));
        self.with_node(id, |node, ctx| {
            if let Node::Host(h) = node {
                h.start(ctx);
            }
        });
        id
    }

    /// A host where `seat` says whose machine is a whole `HostCore` with `cfg` over the
    /// host cache `cache`; it starts its ladder now.
    pub fn add_core_host(
        &mut self,
        seat: whole::Seat,
        cfg: super::host::HostConfig,
        cache: Vec<crate::host::cache::CacheEntry>,
    ) -> NodeId {
        let serial = self.nodes.len() as u64 + 100;
        let seed = self.rng.next_u64();
        let now = Now { mono: self.base + self.now, unix_ms: EPOCH_UNIX_SECS * 1000 + self.now.as_millis() as u64 };
        let cache = crate::host::cache::Cache::new(cache);
        let node = CoreNode::new(seat, cfg, cache, (serial, EPOCH_UNIX_SECS, seed), now);
        let ip = node.nat().public_ip();
        let id = self.add(ip, Node::Core(Box::new(node)));
        self.with_node(id, |node, ctx| {
            if let Node::Core(h) = node {
                h.start(ctx);
            }
        });
        id
    }

    /// The whole-core host `id`.
    pub fn core_host(&self, id: NodeId) -> &CoreNode {
        match self.nodes.get(&id) {
            Some(Node::Core(h)) => h,
            _ => panic!("{id:?} is no whole-core host"),
        }
    }

    /// The whole-core host `id`, to change it.
    pub fn core_host_mut(&mut self, id: NodeId) -> &mut CoreNode {
        match self.nodes.get_mut(&id) {
            Some(Node::Core(h)) => h,
            _ => panic!("{id:?} is no whole-core host"),
        }
    }

    /// Sets where whole-core host `id` keeps transfers and takes offers into.
    pub fn core_set_files(&mut self, id: NodeId, cfg: super::files::FilesConfig) {
        self.with_node(id, |node, ctx| {
            if let Node::Core(h) = node {
                h.set_files(ctx, cfg);
            }
        });
    }

    /// Gives whole-core host `id` a command now.
    pub fn core_command(&mut self, id: NodeId, c: super::host::Command) -> OpId {
        let mut op = None;
        self.with_node(id, |node, ctx| {
            if let Node::Core(h) = node {
                op = Some(h.command(ctx, c));
            }
        });
        op.expect("a whole-core host")
    }

    /// The host `id`, to set it up.
    pub fn host_mut(&mut self, id: NodeId) -> &mut SimHost {
        match self.nodes.get_mut(&id) {
            Some(Node::Host(h)) => h,
            _ => panic!("{id:?} is no host"),
        }
    }

    /// Puts a datagram on the wire now, as if a node at `from` sent it (a peer's media).
    pub fn inject(&mut self, by: NodeId, from: SocketAddr, to: SocketAddr, bytes: Vec<u8>) {
        self.transmit(by, vec![Packet { from, to, bytes }]);
    }

    /// The host `id`.
    pub fn host(&self, id: NodeId) -> &SimHost {
        match self.nodes.get(&id) {
            Some(Node::Host(h)) => h,
            _ => panic!("{id:?} is no host"),
        }
    }

    /// The super node `id`.
    pub fn supernode(&self, id: NodeId) -> &FakeSupernode {
        match self.nodes.get(&id) {
            Some(Node::Supernode(s)) => s,
            _ => panic!("{id:?} is no super node"),
        }
    }

    /// The super node `id`, to change its mode.
    pub fn supernode_mut(&mut self, id: NodeId) -> &mut FakeSupernode {
        match self.nodes.get_mut(&id) {
            Some(Node::Supernode(s)) => s,
            _ => panic!("{id:?} is no super node"),
        }
    }

    /// Gives host `id`'s core a command now (None if it has no link yet).
    pub fn command<T>(&mut self, id: NodeId, f: impl FnOnce(&mut CoreLink, Now) -> T) -> Option<T> {
        let mut out = None;
        self.with_node(id, |node, ctx| {
            if let Node::Host(h) = node {
                out = h.command(ctx, f);
            }
        });
        out
    }

    /// Runs `f` on node `id` with a context, then puts what it sent on the wire and
    /// hands notices to their super nodes.
    fn with_node(&mut self, id: NodeId, f: impl FnOnce(&mut Node, &mut Ctx<'_>)) {
        let mut out = Vec::new();
        let mut tcp = Vec::new();
        let mut notices = Vec::new();
        {
            let node = self.nodes.get_mut(&id).expect("a node of this world");
            let mut ctx = Ctx {
                now: self.now,
                base: self.base,
                node: id,
                rng: &mut self.rng,
                index: &mut self.index,
                out: &mut out,
                tcp: &mut tcp,
                notices: &mut notices,
                trace: &mut self.trace,
            };
            f(node, &mut ctx);
        }
        self.transmit(id, out);
        for t in tcp {
            self.tcp_out(id, t);
        }
        for (name, user, body) in notices {
            self.deliver_notice(&name, &user, &body);
        }
    }

    /// A notice routed by one super node to a host of another (the backbone between
    /// super nodes is not modelled: it arrives in the same step).
    fn deliver_notice(&mut self, supernode: &str, user: &str, body: &[u8]) {
        let target = self.nodes.iter_mut().find_map(|(i, n)| match n {
            Node::Supernode(s) if s.name() == supernode => Some((*i, s)),
            _ => None,
        });
        let Some((id, sn)) = target else { return };
        let mut out = Vec::new();
        let mut tcp = Vec::new();
        let mut notices = Vec::new();
        let mut ctx = Ctx {
            now: self.now,
            base: self.base,
            node: id,
            rng: &mut self.rng,
            index: &mut self.index,
            out: &mut out,
            tcp: &mut tcp,
            notices: &mut notices,
            trace: &mut self.trace,
        };
        sn.deliver_notice(&mut ctx, user, body);
        debug_assert!(notices.is_empty(), "delivering a notice routes nothing further");
        self.transmit(id, out);
    }

    /// What a host asked of TCP: a connect is answered after the link's delay (refused
    /// where nothing listens, never where the node is dead); frames go on the wire.
    fn tcp_out(&mut self, host: NodeId, t: TcpOut) {
        let delay = self.link_default.delay;
        match t {
            TcpOut::Connect { conn, addr } => {
                let target = match self.routes.get(&addr.ip()).and_then(|id| self.nodes.get(id)) {
                    // A dead node's SYNs go unanswered: the connect hangs.
                    Some(Node::Supernode(s)) if s.is_dead() => None,
                    Some(Node::Supernode(s)) => Some(s.addr() == addr && s.takes_tcp()),
                    _ => Some(false),
                };
                let event = match target {
                    None => return,
                    Some(false) => TcpEvent::ConnectFailed("connection refused".into()),
                    Some(true) if self.conns.len() >= CONNS_MAX => {
                        TcpEvent::ConnectFailed("too many connections".into())
                    }
                    Some(true) => {
                        let ip = match &self.nodes[&host] {
                            Node::Host(h) => h.nat().public_ip(),
                            Node::Core(h) => h.nat().public_ip(),
                            Node::Supernode(_) => return,
                        };
                        let public = SocketAddr::new(ip, self.next_conn_port);
                        self.next_conn_port = self.next_conn_port.checked_add(1).unwrap_or(50_000);
                        self.conns.insert(public, SimConn { host, conn, supernode: addr });
                        TcpEvent::Connected { local: public }
                    }
                };
                self.seq += 1;
                self.tcp_events.insert((self.now + delay, self.seq), (host, conn, event));
            }
            TcpOut::Frame { conn, bytes } => {
                let Some((public, c)) = self.conns.iter().find(|(_, c)| c.host == host && c.conn == conn) else {
                    return;
                };
                let p = Packet { from: *public, to: c.supernode, bytes };
                self.transmit(host, vec![p]);
            }
            TcpOut::Close { conn } => self.conns.retain(|_, c| !(c.host == host && c.conn == conn)),
        }
    }

    fn transmit(&mut self, from_node: NodeId, packets: Vec<Packet>) {
        for p in packets {
            let kind = kind_of(p.from, p.to, &p.bytes);
            let row = |what| TraceRow { at: self.now, node: from_node, what };
            let Some(&to_node) = self.routes.get(&p.to.ip()) else {
                self.stats.unroutable += 1;
                self.trace.push(row(What::Unroutable { to: p.to }));
                continue;
            };
            let key = (from_node.min(to_node), from_node.max(to_node));
            let spec = self.links.get(&key).copied().unwrap_or(self.link_default);
            let lost = spec.loss_ppm > 0 && self.rng.random_range(0..1_000_000) < spec.loss_ppm;
            let jitter = if spec.jitter.is_zero() {
                Duration::ZERO
            } else {
                Duration::from_micros(self.rng.random_range(0..=spec.jitter.as_micros() as u64))
            };
            if lost || self.wire.len() >= WIRE_MAX {
                if lost {
                    self.stats.lost += 1;
                } else {
                    self.stats.overflowed += 1;
                }
                self.trace.push(row(What::Lost { from: p.from, kind }));
                continue;
            }
            self.trace.push(row(What::Sent { from: p.from, to: p.to, kind, len: p.bytes.len() }));
            let at = self.now + spec.delay + jitter;
            self.seq += 1;
            self.wire.push(Reverse(InFlight { at, seq: self.seq, packet: p }));
        }
    }

    fn node_timeout(&self, node: &Node) -> Option<Duration> {
        match node {
            Node::Host(h) => h.poll_timeout(self.base),
            Node::Supernode(s) => s.poll_timeout(EPOCH_UNIX_SECS),
            Node::Core(h) => h.poll_timeout(self.base),
        }
    }

    /// When the next thing happens.
    pub fn next_at(&self) -> Option<Duration> {
        let packet = self.wire.peek().map(|Reverse(f)| f.at);
        let tcp = self.tcp_events.keys().next().map(|(at, _)| *at);
        let timers = self.nodes.values().filter_map(|n| self.node_timeout(n));
        packet.into_iter().chain(tcp).chain(timers).min()
    }

    /// Moves to the next thing that happens, if it is no later than `end`, and does it.
    /// False when nothing happens by `end` (time is then `end`).
    pub fn step(&mut self, end: Duration) -> bool {
        let Some(at) = self.next_at().filter(|a| *a <= end) else {
            self.now = self.now.max(end);
            return false;
        };
        self.steps += 1;
        assert!(self.steps <= STEPS_MAX, "more than {STEPS_MAX} steps: the world is stuck");
        self.now = self.now.max(at);
        if let Some(Reverse(f)) = self.wire.peek()
            && f.at <= self.now
        {
            let Reverse(f) = self.wire.pop().expect("just peeked");
            self.deliver(f.packet);
            return true;
        }
        if let Some(e) = self.tcp_events.first_entry()
            && e.key().0 <= self.now
        {
            let (host, conn, event) = e.remove();
            self.with_node(host, |node, ctx| match node {
                Node::Host(h) => h.handle_tcp(ctx, conn, event),
                Node::Core(h) => h.handle_tcp(ctx, conn, event),
                Node::Supernode(_) => {}
            });
            return true;
        }
        let due: Vec<NodeId> = self
            .nodes
            .iter()
            .filter(|(_, n)| self.node_timeout(n).is_some_and(|t| t <= self.now))
            .map(|(i, _)| *i)
            .collect();
        for id in due {
            self.with_node(id, |node, ctx| match node {
                Node::Host(h) => h.handle_timeout(ctx),
                Node::Supernode(s) => s.handle_timeout(ctx),
                Node::Core(h) => h.handle_timeout(ctx),
            });
            let left = self.node_timeout(&self.nodes[&id]);
            assert!(left.is_none_or(|t| t >= self.now), "{id:?} left a timer overdue at {:?}", self.now);
        }
        true
    }

    /// Steps until nothing happens by `end`; time is then `end`.
    pub fn run_until(&mut self, end: Duration) {
        while self.step(end) {}
    }

    fn deliver(&mut self, p: Packet) {
        let Some(&id) = self.routes.get(&p.to.ip()) else {
            self.stats.unroutable += 1;
            return;
        };
        self.stats.delivered += 1;
        if let Some(c) = self.conns.get(&p.to).copied().filter(|c| c.supernode == p.from) {
            // A frame on a TCP connection, from its super node. A UDP datagram from that
            // same node to a NAT mapping that drew the connection's port would be taken
            // for one; a host that links over TCP has no UDP link to that node.
            self.with_node(c.host, |node, ctx| match node {
                Node::Host(h) => h.handle_tcp(ctx, c.conn, TcpEvent::Frame(p.bytes)),
                Node::Core(h) => h.handle_tcp(ctx, c.conn, TcpEvent::Frame(p.bytes)),
                Node::Supernode(_) => {}
            });
            return;
        }
        self.with_node(id, |node, ctx| match node {
            Node::Host(h) => h.handle_datagram(ctx, p.from, p.to, &p.bytes),
            Node::Supernode(s) => s.handle_datagram(ctx, p.from, &p.bytes),
            Node::Core(h) => h.handle_datagram(ctx, p.from, p.to, &p.bytes),
        });
    }
}

#[cfg(test)]
mod ladder;
#[cfg(test)]
mod matrix;
#[cfg(test)]
mod tests;
#[cfg(test)]
mod whole_tests;
