//! A super node's sockets and shared state: the UDP and TCP listeners that decode frame
//! headers, answer the stateless requests (Hello, NatProbe, STUN) themselves, and hand
//! everything else to the `HostSession` actor it belongs to.

use super::handshake::{self, Identity};
use super::host_session::{Close, HostSession, Inbound, Outbound, RepeatWelcome};
use super::metrics::NodeMetrics;
use crate::net::source::PerSource;
use crate::net::tcp;
use crate::wire::frame::{self, FrameError};
use crate::wire::message::{ErrorCode, ErrorMsg, Hello, MessageKind, NatProbe, Observed, SupernodeInfo};
use crate::wire::stun;
use actix::prelude::*;
use dashmap::DashMap;
use sha2::{Digest, Sha256};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;
use tokio::net::{TcpListener, UdpSocket};
use tokio_util::sync::CancellationToken;

/// Session limits and timers.
#[derive(Debug, Clone)]
pub struct SessionParams {
    /// Keepalive interval asked of hosts.
    pub keepalive_secs: u64,
    /// Silence after which a session is dropped.
    pub idle_timeout_secs: u64,
    /// Most hosts connected at once.
    pub hosts_max: usize,
    /// Most handshakes being checked at once (each costs an RSA decryption).
    pub handshakes_max: usize,
    /// Most TCP connections at once.
    pub tcp_connections_max: usize,
    /// Most TCP connections at once from one source (IPv4 address or IPv6 /64).
    pub tcp_connections_per_source_max: usize,
    /// Most handshakes (RSA jobs) running at once for one source.
    pub handshakes_per_source_max: usize,
    /// STUN Binding answers a second to one source (twice that at once).
    pub stun_per_source_per_sec: u32,
    /// UDP socket receive buffer.
    pub udp_recv_buffer_bytes: usize,
}

impl Default for SessionParams {
    fn default() -> Self {
        Self {
            keepalive_secs: 15,
            idle_timeout_secs: 60,
            hosts_max: 100_000,
            handshakes_max: 256,
            tcp_connections_max: 20_000,
            tcp_connections_per_source_max: 256,
            handshakes_per_source_max: 1,
            stun_per_source_per_sec: 20,
            udp_recv_buffer_bytes: 4 << 20,
        }
    }
}

/// How a super node joins its cluster.
#[derive(Debug, Clone)]
pub struct ClusterSpec {
    /// The gossip socket.
    pub gossip: SocketAddr,
    /// Gossip addresses to join through (other nodes of the same process are added).
    pub seeds: Vec<SocketAddr>,
    /// The cluster key.
    pub key: crate::cluster::gossip::ClusterKey,
    /// Limits of the cluster's authentication layer.
    pub limits: crate::cluster::ClusterLimits,
    /// SWIM probe period.
    pub probe_period: Duration,
    /// The Global Index this node takes part in.
    pub index: crate::index::IndexConfig,
    /// Fetching and spreading the revocation list.
    pub revocation: super::revocation::RevocationConfig,
}

/// Everything needed to start one super node.
#[derive(Debug, Clone)]
pub struct NodeSpec {
    /// Key, credential, trusted keys.
    pub identity: Identity,
    /// Main UDP socket.
    pub udp: SocketAddr,
    /// Main TCP listener.
    pub tcp: SocketAddr,
    /// Alternate UDP port for NAT discovery (RFC 5780's "alternate port").
    pub probe_udp: Option<SocketAddr>,
    /// Last-resort TCP listeners (443, 80).
    pub fallback_tcp: Vec<SocketAddr>,
    /// The address hosts reach this node at, when the sockets bind a wildcard address.
    pub public_ip: Option<IpAddr>,
    /// Limits and timers.
    pub params: SessionParams,
    /// Membership (None: a lone node that announces only its static peers).
    pub cluster: Option<ClusterSpec>,
    /// The call relay's UDP address and settings (None: no relay).
    pub relay: Option<(SocketAddr, crate::config::RelayConfig)>,
}

/// A node's call relay: the table its `RelaySession` actors fill, and its address.
pub struct RelayPlane {
    /// The shared session table (the workers forward by it).
    pub table: crate::relay::table::SessionTable,
    /// Where hosts send relayed packets.
    pub addr: SocketAddr,
    /// Settings.
    pub cfg: crate::config::RelayConfig,
    /// Sessions each user holds (over all its hosts).
    pub per_user: Arc<crate::net::source::Holds<String>>,
    /// Sessions each source holds (over all its hosts and users).
    pub per_source: Arc<PerSource>,
}

struct PeerEntry {
    handshake_id: [u8; 32],
    actor: Addr<HostSession>,
}

/// State shared by a node's listeners and its `HostSession` actors.
pub struct NodeShared {
    /// Who this node is.
    pub identity: Identity,
    /// Limits and timers.
    pub params: SessionParams,
    /// The advertised alternate port, sent in Welcome.
    pub probe_addr: Option<SocketAddr>,
    /// Statically configured super nodes, sent in Welcome with the live members.
    pub static_peers: Vec<SupernodeInfo>,
    /// The cluster view, when the node gossips.
    pub view: Option<tokio::sync::watch::Receiver<Arc<crate::cluster::View>>>,
    /// The node's part of the Global Index, when it gossips.
    pub index: Option<Addr<super::index_router::IndexRouter>>,
    /// Metrics with this node's label.
    pub metrics: NodeMetrics,
    /// Connected hosts by username, for notices.
    pub mailboxes: super::mailbox::Mailboxes,
    /// The call relay, when this node has one.
    pub relay: Option<RelayPlane>,
    /// Wakes the revocation-list fetch task, when the node has one.
    pub revocations: Option<super::revocation::FetchNow>,
    by_peer: DashMap<SocketAddr, PeerEntry>,
    sessions: DashMap<u32, (SocketAddr, Addr<HostSession>)>,
    rsa_jobs: Arc<PerSource>,
}

impl NodeShared {
    /// Assigns a session id to an accepted handshake; None if the node is full.
    pub(crate) fn register_session(&self, peer: SocketAddr, actor: Addr<HostSession>) -> Option<u32> {
        if self.sessions.len() >= self.params.hosts_max {
            return None;
        }
        let id = loop {
            let id = (crate::crypto::random::u64() as u32).max(1);
            if let dashmap::Entry::Vacant(v) = self.sessions.entry(id) {
                v.insert((peer, actor));
                break id;
            }
        };
        self.metrics.hosts_connected(self.sessions.len());
        Some(id)
    }

    /// Forgets a session (called when its actor stops). The address entry goes only if it
    /// is still this handshake's: a newer handshake from the same address may own it now.
    pub(crate) fn unregister_session(&self, peer: SocketAddr, handshake_id: [u8; 32], session: Option<u32>) {
        self.by_peer.remove_if(&peer, |_, e| e.handshake_id == handshake_id);
        if let Some(id) = session {
            self.sessions.remove(&id);
            self.metrics.hosts_connected(self.sessions.len());
        }
    }

    /// Hosts with an established session.
    pub fn hosts_connected(&self) -> usize {
        self.sessions.len()
    }

    /// Stops every session without a word, as a crash would.
    pub fn drop_all(&self) {
        for e in self.by_peer.iter() {
            e.actor.do_send(Close { notify: false, reason: "super node crashed" });
        }
    }

    /// Tells every session to say goodbye and stop.
    pub fn close_all(&self) {
        for e in self.by_peer.iter() {
            e.actor.do_send(Close { notify: true, reason: "super node shutting down" });
        }
    }

    /// The super nodes announced to hosts: live cluster members other than this one,
    /// then static peers, without duplicates.
    pub fn peers(&self) -> Vec<SupernodeInfo> {
        let me = self.identity.key.public().id().0;
        let mut v: Vec<SupernodeInfo> = match &self.view {
            Some(view) => view
                .borrow()
                .members
                .iter()
                .filter(|m| m.node != Some(me))
                .map(|m| SupernodeInfo { name: m.name.clone(), udp: m.udp, tcp: m.tcp })
                .collect(),
            None => Vec::new(),
        };
        for p in &self.static_peers {
            if !v.iter().any(|q| q.udp == p.udp && q.tcp == p.tcp) {
                v.push(p.clone());
            }
        }
        v
    }

    /// Live cluster members (itself included), or just itself without a cluster.
    pub fn members(&self) -> Vec<crate::cluster::Member> {
        self.view.as_ref().map(|v| v.borrow().members.clone()).unwrap_or_default()
    }

    /// A JSON summary for `/status`.
    pub fn status(&self) -> serde_json::Value {
        serde_json::json!({
            "name": self.identity.name,
            "node_id": self.identity.key.public().id().to_string(),
            "hosts_connected": self.hosts_connected(),
            "revocation_list_version": self.identity.trusted.revoked().version(),
            "members": self.members().iter().map(|m| serde_json::json!({
                "name": m.name, "gossip": m.gossip, "udp": m.udp, "tcp": m.tcp,
                "node_id": m.node_id().map(|n| n.to_string()),
            })).collect::<Vec<_>>(),
        })
    }

    fn pending_handshakes(&self) -> usize {
        self.by_peer.len().saturating_sub(self.sessions.len())
    }

    /// Routes an Auth: a repeat of the current handshake gets its Welcome again; a new
    /// one from the same address replaces the old session (the host restarted).
    fn start_session(
        self: &Arc<Self>,
        peer: SocketAddr,
        listener: SocketAddr,
        out: Outbound,
        payload: &[u8],
        transport: &'static str,
    ) -> Option<Addr<HostSession>> {
        let now = crate::unix_now();
        let env = match handshake::precheck(&self.identity, payload, peer, now) {
            Ok(env) => env,
            Err(e) => {
                self.metrics.reject(transport, e.reason(), peer, &e);
                if e.code() == ErrorCode::StaleCookie {
                    let msg = ErrorMsg::new(e.code(), "the cookie is stale; send Hello again");
                    out.send(frame::encode_plain(listener, MessageKind::Error, 0, &msg.encode()));
                }
                return None;
            }
        };
        let handshake_id: [u8; 32] = Sha256::digest(&env.wrapped).into();
        if let Some(existing) = self.by_peer.get(&peer) {
            if existing.handshake_id == handshake_id {
                existing.actor.do_send(RepeatWelcome);
                self.metrics.reject(transport, "duplicate_auth", peer, &"Auth repeated; Welcome sent again");
                return None;
            }
            existing.actor.do_send(Close { notify: false, reason: "replaced by a new handshake" });
        }
        if self.pending_handshakes() >= self.params.handshakes_max
            || self.by_peer.len() >= self.params.hosts_max + self.params.handshakes_max
        {
            self.metrics.reject(transport, "full", peer, &"no room for another handshake");
            let msg = ErrorMsg::new(ErrorCode::Full, "this super node is busy; try another");
            out.send(frame::encode_plain(listener, MessageKind::Error, 0, &msg.encode()));
            return None;
        }
        // One source's handshakes wait for each other: a flood of Auths from one address
        // costs one RSA job at a time, never the whole pool.
        let Some(rsa_job) = self.rsa_jobs.claim(peer.ip().into()) else {
            self.metrics.reject(transport, "source_busy", peer, &"a handshake from this source is being checked");
            let msg = ErrorMsg::new(ErrorCode::Full, "a handshake from this address is being checked; try again");
            out.send(frame::encode_plain(listener, MessageKind::Error, 0, &msg.encode()));
            return None;
        };
        let actor = HostSession::new(self.clone(), peer, listener, out, env, rsa_job, handshake_id).start();
        self.by_peer.insert(peer, PeerEntry { handshake_id, actor: actor.clone() });
        Some(actor)
    }
}

/// A node whose sockets are bound but not yet serving.
pub struct BoundNode {
    spec: NodeSpec,
    udp: Arc<UdpSocket>,
    udp_addr: SocketAddr,
    probe: Option<(Arc<UdpSocket>, SocketAddr)>,
    tcp: Vec<(TcpListener, SocketAddr)>,
    gossip: Option<(UdpSocket, SocketAddr)>,
    relay: Option<(crate::relay::worker::RelayWorkers, RelayPlane)>,
}

/// What a running node is reachable at.
#[derive(Debug, Clone, serde::Serialize)]
pub struct NodeAddrs {
    /// The node's name.
    pub name: String,
    /// UDP (and the STUN server).
    pub udp: SocketAddr,
    /// TCP; the first is the main port, the rest are fallbacks.
    pub tcp: Vec<SocketAddr>,
    /// The alternate UDP port for NAT discovery.
    pub probe_udp: Option<SocketAddr>,
    /// The gossip port.
    pub gossip: Option<SocketAddr>,
    /// The call relay's UDP port.
    pub relay: Option<SocketAddr>,
}

/// A running node.
pub struct RunningNode {
    /// Its addresses.
    pub addrs: NodeAddrs,
    /// Shared state (for status and tests).
    pub shared: Arc<NodeShared>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    stop: CancellationToken,
    crash: CancellationToken,
    relay_workers: std::sync::Mutex<Option<crate::relay::worker::RelayWorkers>>,
}

fn advertised(bound: SocketAddr, public_ip: Option<IpAddr>) -> std::io::Result<SocketAddr> {
    match public_ip {
        Some(ip) => Ok(SocketAddr::new(ip, bound.port())),
        None if bound.ip().is_unspecified() => Err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            "a wildcard bind address needs public_ip: hosts key the header obfuscation with the address they dial",
        )),
        None => Ok(bound),
    }
}

fn udp_socket(addr: SocketAddr, recv_buffer: usize) -> std::io::Result<UdpSocket> {
    use socket2::{Domain, Protocol, Socket, Type};
    let s = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))?;
    // The kernel may cap the size (net.core.rmem_max); a smaller buffer still works.
    let _ = s.set_recv_buffer_size(recv_buffer);
    s.set_nonblocking(true)?;
    s.bind(&addr.into())?;
    UdpSocket::from_std(s.into())
}

fn with_context(e: std::io::Error, what: &str, addr: SocketAddr) -> std::io::Error {
    std::io::Error::new(e.kind(), format!("{what} {addr}: {e}"))
}

impl BoundNode {
    /// Binds every socket of `spec` (must run inside a tokio runtime).
    pub async fn bind(spec: NodeSpec) -> std::io::Result<Self> {
        let udp = udp_socket(spec.udp, spec.params.udp_recv_buffer_bytes)
            .map_err(|e| with_context(e, "bind UDP", spec.udp))?;
        let udp_addr = advertised(udp.local_addr()?, spec.public_ip)?;
        let probe = match spec.probe_udp {
            Some(a) => {
                let s = udp_socket(a, 1 << 20).map_err(|e| with_context(e, "bind probe UDP", a))?;
                let adv = advertised(s.local_addr()?, spec.public_ip)?;
                Some((Arc::new(s), adv))
            }
            None => None,
        };
        let mut tcp = Vec::new();
        for a in std::iter::once(spec.tcp).chain(spec.fallback_tcp.iter().copied()) {
            let l = TcpListener::bind(a).await.map_err(|e| with_context(e, "bind TCP", a))?;
            let adv = advertised(l.local_addr()?, spec.public_ip)?;
            tcp.push((l, adv));
        }
        let gossip = match &spec.cluster {
            Some(c) => {
                // The index's repair pushes whole slots through this socket in bursts:
                // it gets the same receive buffer as the host port, not the default.
                let s = udp_socket(c.gossip, spec.params.udp_recv_buffer_bytes)
                    .map_err(|e| with_context(e, "bind gossip UDP", c.gossip))?;
                let adv = advertised(s.local_addr()?, spec.public_ip)?;
                Some((s, adv))
            }
            None => None,
        };
        let relay = match &spec.relay {
            Some((a, cfg)) => {
                let table = crate::relay::table::SessionTable::new(crate::relay::table::Limits {
                    sessions_max: cfg.sessions_max,
                    packets_per_second_max: cfg.packets_per_second_max,
                    bytes_per_second_max: cfg.bytes_per_second_max,
                    file_bytes_per_second_max: cfg.file_bytes_per_second_max,
                    allow_private_peers: cfg.allow_private_peers,
                    ..Default::default()
                });
                let workers = match cfg.workers {
                    0 => std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1),
                    n => n,
                };
                let sockets = crate::relay::worker::WorkerConfig {
                    tcp_conns_max: cfg.tcp_connections_max,
                    tcp_conns_per_source_max: cfg.tcp_connections_per_source_max,
                    recv_buffer_bytes: cfg.recv_buffer_bytes,
                    send_buffer_bytes: cfg.send_buffer_bytes,
                    batch: cfg.batch,
                    read_budget: cfg.read_budget,
                    dscp: cfg.dscp,
                    busy_poll_us: cfg.busy_poll_us,
                    ..Default::default()
                };
                let w = crate::relay::worker::RelayWorkers::start_with(
                    *a,
                    workers,
                    table.clone(),
                    spec.identity.name.clone(),
                    sockets,
                )
                .map_err(|e| with_context(e, "bind relay UDP and TCP", *a))?;
                let addr = advertised(w.local_addr(), spec.public_ip)?;
                let per_user = crate::net::source::Holds::new(cfg.sessions_per_user_max);
                let per_source = PerSource::new(cfg.sessions_per_source_max);
                Some((w, RelayPlane { table, addr, cfg: cfg.clone(), per_user, per_source }))
            }
            None => None,
        };
        Ok(Self { spec, udp: Arc::new(udp), udp_addr, probe, tcp, gossip, relay })
    }

    /// What this node will be reachable at.
    pub fn addrs(&self) -> NodeAddrs {
        NodeAddrs {
            name: self.spec.identity.name.clone(),
            udp: self.udp_addr,
            tcp: self.tcp.iter().map(|(_, a)| *a).collect(),
            probe_udp: self.probe.as_ref().map(|(_, a)| *a),
            gossip: self.gossip.as_ref().map(|(_, a)| *a),
            relay: self.relay.as_ref().map(|(_, p)| p.addr),
        }
    }

    /// This node as others list it in Welcome.
    pub fn info(&self) -> SupernodeInfo {
        SupernodeInfo {
            name: self.spec.identity.name.clone(),
            udp: Some(self.udp_addr),
            tcp: self.tcp.first().map(|(_, a)| *a),
        }
    }

    /// Starts serving (inside an actix System): `static_peers` are announced to hosts
    /// besides the live members, `siblings` are extra gossip seeds (the other nodes of
    /// the same process). The node stops when `shutdown` (or [`RunningNode::kill`]) fires.
    pub fn start(
        self,
        static_peers: Vec<SupernodeInfo>,
        siblings: &[SocketAddr],
        shutdown: CancellationToken,
    ) -> RunningNode {
        let addrs = self.addrs();
        let shutdown = shutdown.child_token();
        let crash = CancellationToken::new();
        let mailboxes = super::mailbox::Mailboxes::new(&self.spec.identity.name);
        let (relay_workers, relay_plane) = match self.relay {
            Some((w, p)) => (Some(w), Some(p)),
            None => (None, None),
        };
        let mut revocations = None;
        let (view, index) = match (self.spec.cluster, self.gossip) {
            (Some(c), Some((socket, gossip))) => {
                let me = crate::cluster::Member {
                    gossip,
                    // A restarted node must win over its own crashed incarnation, which
                    // the cluster remembers as down: a newer start has a higher bump.
                    bump: (crate::unix_now() as u32).max(1),
                    node: Some(self.spec.identity.key.public().id().0),
                    name: self.spec.identity.name.clone(),
                    udp: Some(addrs.udp),
                    tcp: addrs.tcp.first().copied(),
                };
                let mut seeds = c.seeds;
                seeds.extend(siblings.iter().copied().filter(|s| *s != gossip));
                // The certificate binds the id and every address the member announces.
                let peers = crate::cluster::Peers::new(
                    &self.spec.identity.key,
                    self.spec.identity.credential.clone(),
                    self.spec.identity.trusted.clone(),
                    c.key,
                    (gossip, me.udp, me.tcp),
                    c.limits,
                    crate::cluster::now_ms(),
                )
                .expect("a credential of at most CREDENTIAL_LEN_MAX fits in a hello");
                let spec = crate::cluster::AgentSpec {
                    me,
                    seeds,
                    peers,
                    probe_period: c.probe_period,
                    cluster_size_hint: 32,
                    revocation_gossip: Duration::from_millis(c.revocation.gossip_interval_ms),
                };
                let servers = match &c.revocation.login_servers {
                    s if s.is_empty() => c.index.directory.clone(),
                    s => s.clone(),
                };
                if !servers.is_empty() {
                    revocations = Some(super::revocation::start(
                        self.spec.identity.clone(),
                        servers,
                        Duration::from_secs(c.revocation.fetch_interval_secs),
                        shutdown.clone(),
                    ));
                }
                let (tx, rx) = tokio::sync::mpsc::channel(4096);
                let agent = crate::cluster::agent::start(spec, socket, shutdown.clone(), crash.clone(), Some(tx));
                let router = super::index_router::IndexRouter::new(
                    self.spec.identity.name.clone(),
                    self.spec.identity.key.public().id(),
                    c.index,
                    self.spec.identity.trusted.clone(),
                    agent.view.clone(),
                    agent.sender,
                    mailboxes.clone(),
                )
                .with_directory(self.spec.identity.clone());
                (Some(agent.view), Some(super::index_router::start(router, rx)))
            }
            _ => (None, None),
        };
        let rsa_jobs = PerSource::new(self.spec.params.handshakes_per_source_max);
        let shared = Arc::new(NodeShared {
            metrics: NodeMetrics::new(&self.spec.identity.name),
            identity: self.spec.identity,
            params: self.spec.params,
            probe_addr: addrs.probe_udp,
            static_peers,
            view,
            index,
            mailboxes,
            relay: relay_plane,
            revocations,
            by_peer: DashMap::new(),
            sessions: DashMap::new(),
            rsa_jobs,
        });
        let mut tasks =
            vec![actix_rt::spawn(udp_loop(shared.clone(), self.udp, self.udp_addr, Role::Main, shutdown.clone()))];
        if let Some((s, a)) = self.probe {
            tasks.push(actix_rt::spawn(udp_loop(shared.clone(), s, a, Role::Probe, shutdown.clone())));
        }
        for (l, a) in self.tcp {
            // Each listener (main, 443, 80) has its own slots: a source pinning one port
            // leaves the others free.
            let p = &shared.params;
            let slots = tcp::Slots::new("supernode", a, p.tcp_connections_max, p.tcp_connections_per_source_max);
            tasks.push(actix_rt::spawn(tcp_accept_loop(shared.clone(), l, a, slots, shutdown.clone())));
        }
        tracing::info!(node = %addrs.name, udp = %addrs.udp, tcp = ?addrs.tcp, probe = ?addrs.probe_udp, gossip = ?addrs.gossip, "super node listening");
        let weak = Arc::downgrade(&shared);
        crate::telemetry::register_status(
            &addrs.name,
            Box::new(move || weak.upgrade().map(|s| s.status()).unwrap_or(serde_json::Value::Null)),
        );
        RunningNode { addrs, shared, tasks, stop: shutdown, crash, relay_workers: std::sync::Mutex::new(relay_workers) }
    }
}

impl RunningNode {
    /// Stops this node alone, as a crash would: its sockets close and it says no goodbye,
    /// so the cluster has to notice by itself.
    pub fn kill(&self) {
        self.crash.cancel();
        self.stop.cancel();
        // Sessions hold the node's sockets; a crashed process holds nothing.
        self.shared.drop_all();
        self.stop_relay();
        if let Some(r) = &self.shared.index {
            r.do_send(super::index_router::Shutdown);
        }
    }

    fn stop_relay(&self) {
        let workers = self.relay_workers.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(mut w) = workers {
            // Joining the workers waits out their read timeout: not on the event loop.
            std::thread::spawn(move || w.stop());
        }
    }

    /// Waits for the listeners to finish (after the shutdown token fired), then closes
    /// every session with a Bye.
    pub async fn stopped(self) {
        self.stop_relay();
        for t in self.tasks {
            let _ = t.await;
        }
        self.shared.close_all();
        if let Some(r) = &self.shared.index {
            r.do_send(super::index_router::Shutdown);
        }
    }
}

/// Sources whose STUN rate a UDP socket remembers.
const STUN_SOURCES_MAX: usize = 100_000;

#[derive(Clone, Copy, PartialEq, Eq)]
enum Role {
    Main,
    Probe,
}

async fn udp_loop(
    node: Arc<NodeShared>,
    socket: Arc<UdpSocket>,
    listener: SocketAddr,
    role: Role,
    shutdown: CancellationToken,
) {
    let mut buf = vec![0u8; crate::wire::frame::FRAME_LEN_MAX + 1];
    let p = &node.params;
    let mut stun_rate = crate::net::source::SourceRate::new(
        p.stun_per_source_per_sec,
        p.stun_per_source_per_sec.saturating_mul(2),
        STUN_SOURCES_MAX,
    );
    let started = std::time::Instant::now();
    loop {
        let (n, from) = tokio::select! {
            _ = shutdown.cancelled() => break,
            r = socket.recv_from(&mut buf) => match r {
                Ok(x) => x,
                Err(e) => {
                    tracing::debug!(error = %e, "UDP receive error");
                    continue;
                }
            },
        };
        let pkt = &buf[..n];
        if stun::looks_like_stun(pkt) {
            // RFC 8489 fixes a Binding answer larger than the smallest request: a strict
            // per-source rate instead, so a spoofed source gets a trickle, not a flood.
            let now_ms = started.elapsed().as_millis() as u64;
            if !stun_rate.allow(from.ip().into(), now_ms) {
                node.metrics.stun("rate_limited");
                continue;
            }
            match stun::answer(pkt, from, concat!("confab ", env!("CARGO_PKG_VERSION"))) {
                Ok(resp) => {
                    node.metrics.stun("answered");
                    let _ = socket.try_send_to(&resp, from);
                }
                Err(e) => {
                    node.metrics.stun(e.reason());
                    node.metrics.reject("udp", "stun", from, &e);
                }
            }
            continue;
        }
        let raw = match frame::decode(listener, pkt) {
            Ok(r) => r,
            Err(e) => {
                node.metrics.reject("udp", e.reason(), from, &e);
                continue;
            }
        };
        let kind = raw.header.kind;
        match (role, kind) {
            (_, MessageKind::NatProbe) => {
                let Ok(probe) = NatProbe::decode(raw.payload) else {
                    node.metrics.reject("udp", "malformed", from, &"NatProbe");
                    continue;
                };
                node.metrics.frame_in(kind.label(), "udp");
                node.metrics.nat_probe(if role == Role::Main { "main" } else { "alternate" });
                let reply = Observed { id: probe.id, addr: from }.encode();
                let _ = socket.try_send_to(&frame::encode_plain(listener, MessageKind::NatProbeReply, 0, &reply), from);
                node.metrics.frame_out(MessageKind::NatProbeReply.label(), "udp");
            }
            (Role::Main, MessageKind::Hello) => {
                let Ok(hello) = Hello::decode(raw.payload) else {
                    node.metrics.reject("udp", "malformed", from, &"Hello");
                    continue;
                };
                node.metrics.frame_in(kind.label(), "udp");
                let c = node.identity.challenge(&hello, from, crate::unix_now()).encode();
                // Never answer a datagram with a larger one: a spoofed source must not
                // turn this node into an amplifier.
                if c.len() > raw.payload.len() {
                    node.metrics.reject("udp", "hello_too_short", from, &c.len());
                    continue;
                }
                let _ = socket.try_send_to(&frame::encode_plain(listener, MessageKind::Challenge, 0, &c), from);
                node.metrics.frame_out(MessageKind::Challenge.label(), "udp");
            }
            (Role::Main, MessageKind::Auth) => {
                node.metrics.frame_in(kind.label(), "udp");
                let out = Outbound::Udp { socket: socket.clone(), peer: from };
                node.start_session(from, listener, out, raw.payload, "udp");
            }
            (Role::Main, _) if raw.header.session != 0 => {
                let Some(entry) = node.sessions.get(&raw.header.session) else {
                    node.metrics.reject("udp", "unknown_session", from, &kind.label());
                    continue;
                };
                let (peer, actor) = entry.value();
                if *peer != from {
                    node.metrics.reject("udp", "wrong_source", from, &kind.label());
                    continue;
                }
                if actor.try_send(Inbound(pkt.to_vec())).is_err() {
                    node.metrics.reject("udp", "mailbox_full", from, &kind.label());
                }
            }
            _ => node.metrics.reject("udp", "unexpected_kind", from, &kind.label()),
        }
    }
}

async fn tcp_accept_loop(
    node: Arc<NodeShared>,
    l: TcpListener,
    listener: SocketAddr,
    slots: Arc<tcp::Slots>,
    shutdown: CancellationToken,
) {
    tcp::serve(&l, slots, shutdown.clone(), |stream, peer| {
        tcp_connection(node.clone(), stream, peer, listener, shutdown.clone())
    })
    .await;
}

/// Time a TCP client has, from its connection, to complete the handshake: an absolute
/// deadline, so frames that each arrive in time (a NatProbe every 9 s) cannot hold a
/// pre-authentication connection open.
const TCP_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long the writer may take to flush after the reader ended, before it is stopped.
const WRITER_GRACE: Duration = Duration::from_secs(1);

async fn tcp_connection(
    node: Arc<NodeShared>,
    stream: tokio::net::TcpStream,
    peer: SocketAddr,
    listener: SocketAddr,
    shutdown: CancellationToken,
) {
    let (mut rd, mut wr) = stream.into_split();
    let (tx, mut rx) = tokio::sync::mpsc::channel::<Vec<u8>>(64);
    let writer = actix_rt::spawn(async move {
        while let Some(f) = rx.recv().await {
            if tcp::write_frame(&mut wr, &f).await.is_err() {
                break;
            }
        }
        let _ = tokio::io::AsyncWriteExt::shutdown(&mut wr).await;
    });
    let mut actor: Option<Addr<HostSession>> = None;
    let idle = Duration::from_secs(node.params.idle_timeout_secs + 5);
    let handshake_deadline = tokio::time::Instant::now() + TCP_HANDSHAKE_TIMEOUT;
    loop {
        let deadline = match &actor {
            Some(_) => tokio::time::Instant::now() + idle,
            None => handshake_deadline,
        };
        let bytes = tokio::select! {
            _ = shutdown.cancelled() => break,
            r = tokio::time::timeout_at(deadline, tcp::read_frame(&mut rd)) => match r {
                Ok(Ok(Some(b))) => b,
                Ok(Ok(None)) => break,
                Ok(Err(e)) => {
                    node.metrics.reject("tcp", "bad_stream", peer, &e);
                    break;
                }
                Err(_) => break,
            },
        };
        if let Some(a) = &actor {
            if !a.connected() {
                break;
            }
            if a.try_send(Inbound(bytes)).is_err() {
                node.metrics.reject("tcp", "mailbox_full", peer, &"frame");
            }
            continue;
        }
        let raw = match frame::decode(listener, &bytes) {
            Ok(r) => r,
            Err(e) => {
                node.metrics.reject("tcp", e.reason(), peer, &e);
                // A TCP stream that carries one bad frame is not confab: drop it.
                if !matches!(e, FrameError::Unauthenticated | FrameError::Replayed) {
                    break;
                }
                continue;
            }
        };
        let kind = raw.header.kind;
        match kind {
            MessageKind::Hello => {
                let Ok(hello) = Hello::decode(raw.payload) else {
                    node.metrics.reject("tcp", "malformed", peer, &"Hello");
                    break;
                };
                node.metrics.frame_in(kind.label(), "tcp");
                let c = node.identity.challenge(&hello, peer, crate::unix_now());
                if tx.try_send(frame::encode_plain(listener, MessageKind::Challenge, 0, &c.encode())).is_ok() {
                    node.metrics.frame_out(MessageKind::Challenge.label(), "tcp");
                }
            }
            MessageKind::Auth => {
                node.metrics.frame_in(kind.label(), "tcp");
                actor = node.start_session(peer, listener, Outbound::Tcp { tx: tx.clone() }, raw.payload, "tcp");
            }
            MessageKind::NatProbe => {
                node.metrics.frame_in(kind.label(), "tcp");
                match NatProbe::decode(raw.payload) {
                    Ok(p) => {
                        let reply = Observed { id: p.id, addr: peer }.encode();
                        let _ = tx.try_send(frame::encode_plain(listener, MessageKind::NatProbeReply, 0, &reply));
                    }
                    Err(e) => node.metrics.reject("tcp", "malformed", peer, &e),
                }
            }
            _ => {
                node.metrics.reject("tcp", "unexpected_kind", peer, &kind.label());
                break;
            }
        }
    }
    if let Some(a) = actor {
        a.do_send(Close { notify: false, reason: "connection closed" });
    }
    drop(tx);
    // The session may still hold a sender for a moment; a writer whose peer stopped
    // reading must not outlive the connection.
    let abort = writer.abort_handle();
    if tokio::time::timeout(WRITER_GRACE, writer).await.is_err() {
        abort.abort();
    }
}
