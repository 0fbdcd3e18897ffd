//! The membership actor: owns the gossip socket, drives [`Membership`], and publishes
//! the view of live members to the rest of the super node.

use super::gossip::Channel;
use super::member::Member;
use super::membership::{self, Membership, Output};
use super::peers::{Peers, Received};
use super::reject::{self, LogOnce, Reject};
use actix::prelude::*;
use metrics::{counter, gauge};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::net::UdpSocket;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

/// How often a node that sees nobody else asks its seeds again.
const REJOIN_EVERY: Duration = Duration::from_secs(3);

/// What to start.
#[derive(Debug)]
pub struct AgentSpec {
    /// This node.
    pub me: Member,
    /// Seeds to join through (gossip addresses).
    pub seeds: Vec<SocketAddr>,
    /// Its authenticated peers (its certificate, the cluster key).
    pub peers: Peers,
    /// SWIM probe period (a dead node is noticed within a few of these).
    pub probe_period: Duration,
    /// Expected cluster size (tunes dissemination).
    pub cluster_size_hint: u32,
    /// How often this node tells a random member its revocation list's version.
    pub revocation_gossip: Duration,
}

/// The live members as one node sees them (itself included), sorted by gossip address:
/// only members whose certificate it holds and binds all they say of themselves.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct View {
    /// The members.
    pub members: Vec<Member>,
}

/// A running agent: its view, and the address it gossips on.
#[derive(Debug, Clone)]
pub struct AgentHandle {
    /// The gossip address.
    pub addr: SocketAddr,
    /// The current view; `changed()` wakes on every change.
    pub view: watch::Receiver<Arc<View>>,
    /// Sends index packets to other members over the gossip socket.
    pub sender: ClusterSender,
}

/// An index packet from another member (opened and authenticated).
#[derive(Debug, Message)]
#[rtype(result = "()")]
pub struct IndexPacket {
    /// The sender's gossip address.
    pub from: SocketAddr,
    /// The authenticated sender.
    pub sender: crate::index::NodeId,
    /// The payload.
    pub payload: Vec<u8>,
}

/// Sends sealed index packets from the gossip socket.
#[derive(Debug, Clone)]
pub struct ClusterSender {
    socket: Arc<UdpSocket>,
    peers: Arc<Mutex<Peers>>,
}

impl ClusterSender {
    /// Seals for member `node` at `to` and sends without waiting; false if the socket
    /// buffer is full (a packet that waits for the member's certificate counts as sent).
    pub fn send(&self, node: crate::index::NodeId, to: SocketAddr, payload: &[u8]) -> bool {
        let out = lock(&self.peers).send(to, Some(node.0), Channel::Index, payload, super::now_ms());
        out.iter().all(|(to, d)| self.socket.try_send_to(d, *to).is_ok())
    }

    /// Seals an index packet for `node` at `to` as this node would, without sending it
    /// (None until its certificate is held): for tests that replay a real packet.
    pub fn seal(&self, node: crate::index::NodeId, to: SocketAddr, payload: &[u8]) -> Option<Vec<u8>> {
        let mut p = lock(&self.peers);
        if p.addr_of(node.0) != Some(to) {
            return None;
        }
        p.send(to, Some(node.0), Channel::Index, payload, super::now_ms()).pop().map(|(_, d)| d)
    }

    /// Sends raw bytes from the gossip socket (tests: delivering a packet from [`Self::seal`]).
    pub fn send_raw(&self, to: SocketAddr, datagram: &[u8]) -> bool {
        self.socket.try_send_to(datagram, to).is_ok()
    }
}

fn lock(p: &Mutex<Peers>) -> std::sync::MutexGuard<'_, Peers> {
    // The state stays consistent across a panic elsewhere: every method leaves it whole.
    p.lock().unwrap_or_else(|e| e.into_inner())
}

#[derive(Message)]
#[rtype(result = "()")]
struct Datagram(Vec<u8>, SocketAddr);

struct Agent {
    membership: Membership,
    socket: Arc<UdpSocket>,
    peers: Arc<Mutex<Peers>>,
    log: LogOnce,
    seeds: Vec<SocketAddr>,
    name: String,
    view: watch::Sender<Arc<View>>,
    shutdown: CancellationToken,
    crash: CancellationToken,
    index: Option<tokio::sync::mpsc::Sender<IndexPacket>>,
    /// The trusted keys and revocation list this node honours (shared with its other parts).
    trusted: crate::crypto::TrustedKeys,
    /// The revocation list version the peers and the view were last checked against.
    revocations_seen: u64,
    spreader: super::revocation::Spreader,
    revocation_gossip: Duration,
}

impl Agent {
    /// After a newer revocation list was adopted (here, or by another part of the node):
    /// forgets the revoked peers, so they leave the view and their packets are refused.
    fn check_revocations(&mut self) {
        let version = self.trusted.revoked().version();
        if version == self.revocations_seen {
            return;
        }
        self.revocations_seen = version;
        let (dropped, me) = {
            let mut peers = lock(&self.peers);
            (peers.drop_revoked(), peers.me())
        };
        if self.trusted.revoked().contains(crate::crypto::CredentialKind::SuperNode, crate::crypto::KeyId(me)) {
            tracing::error!(node = %self.name, version, "this super node's own credential is revoked: the other members and hosts refuse it");
        }
        for name in &dropped {
            tracing::warn!(node = %self.name, member = %name, version, "cluster member's credential is revoked: dropped");
        }
        counter!("confab_cluster_members_revoked_total", "node" => self.name.clone()).increment(dropped.len() as u64);
        self.publish();
    }

    /// Tells one random member this node's revocation list version.
    fn spread_revocations(&mut self) {
        self.check_revocations();
        let mine = self.trusted.revoked().version();
        if mine == 0 {
            return;
        }
        let me = lock(&self.peers).me();
        let others: Vec<Member> =
            self.view.borrow().members.iter().filter(|m| m.node.is_some_and(|n| n != me)).cloned().collect();
        if others.is_empty() {
            return;
        }
        let to = &others[(crate::crypto::random::u64() % others.len() as u64) as usize];
        self.send_revocation(to.gossip, to.node, &super::revocation::Spread::Have(mine));
    }

    fn send_revocation(&self, to: SocketAddr, node: Option<[u8; 8]>, m: &super::revocation::Spread) {
        let out = lock(&self.peers).send(to, node, Channel::Revocation, &m.encode(), super::now_ms());
        for (to, d) in out {
            let _ = self.socket.try_send_to(&d, to);
        }
    }

    /// A revocation packet from an authenticated member.
    fn on_revocation(&mut self, from: SocketAddr, sender: [u8; 8], payload: &[u8]) {
        use super::revocation::Spread;
        match Spread::decode(payload) {
            None => reject::count(&self.name, &mut self.log, from, Reject::BadRevocationList),
            Some(Spread::Have(theirs)) => {
                let revoked = self.trusted.revoked();
                let answer =
                    self.spreader.on_have(sender, theirs, revoked.version(), revoked.encoded(), super::now_ms());
                if let Some(a) = answer {
                    self.send_revocation(from, Some(sender), &a);
                }
            }
            Some(Spread::List(bytes)) => {
                // The version is checked before any RSA; the signature at most once per
                // member per interval.
                let newer =
                    crate::crypto::Revoked::peek_version(&bytes).is_some_and(|v| v > self.trusted.revoked().version());
                if newer && !self.spreader.admit_list(sender, super::now_ms()) {
                    super::revocation::record(&self.name, "gossip", "rate_limited", 0);
                    return;
                }
                let outcome = match self.trusted.adopt_revocations(&bytes) {
                    Ok(list) => {
                        super::revocation::record(&self.name, "gossip", "adopted", list.version);
                        self.check_revocations();
                        return;
                    }
                    Err(crate::crypto::revocation::RevocationError::NotNewer { .. }) => "not_newer",
                    Err(e) => {
                        reject::count(&self.name, &mut self.log, from, Reject::BadRevocationList);
                        e.label()
                    }
                };
                super::revocation::record(&self.name, "gossip", outcome, 0);
            }
        }
    }

    fn apply(&mut self, out: Vec<Output>, ctx: &mut Context<Self>) {
        let mut changed = false;
        for o in out {
            match o {
                Output::Send(to, data) => {
                    let out = lock(&self.peers).send(to.gossip, to.node, Channel::Gossip, &data, super::now_ms());
                    for (to, d) in out {
                        let ok = self.socket.try_send_to(&d, to).is_ok();
                        let outcome = if ok { "sent" } else { "dropped" };
                        counter!("confab_cluster_gossip_packets_total", "node" => self.name.clone(), "direction" => "out", "outcome" => outcome).increment(1);
                    }
                }
                Output::Schedule(after, t) => {
                    ctx.run_later(after, move |act, ctx| {
                        let out = act.membership.handle_timer(t);
                        act.apply(out, ctx);
                    });
                }
                Output::Up(m) => {
                    tracing::info!(node = %self.name, member = %m.name, gossip = %m.gossip, "cluster member up");
                    self.ask_certificates();
                    changed = true;
                }
                Output::Down(m) => {
                    tracing::warn!(node = %self.name, member = %m.name, gossip = %m.gossip, "cluster member down");
                    changed = true;
                }
            }
        }
        if changed {
            self.publish();
        }
    }

    /// Publishes the view: the members foca believes alive whose certificate binds what
    /// they say of themselves (a member whose certificate is still being fetched joins
    /// the view when it arrives).
    fn publish(&mut self) {
        let peers = lock(&self.peers);
        let members: Vec<Member> = self.membership.alive().into_iter().filter(|m| peers.vouches_for(m)).collect();
        drop(peers);
        gauge!("confab_cluster_members", "node" => self.name.clone()).set(members.len() as f64);
        if self.view.borrow().members != members {
            self.view.send_replace(Arc::new(View { members }));
        }
    }

    /// Asks the members foca knows for their certificates, where this node lacks one
    /// (rate limited per address by [`Peers::hello`]).
    fn ask_certificates(&mut self) {
        let now = super::now_ms();
        let mut peers = lock(&self.peers);
        let missing: Vec<SocketAddr> =
            self.membership.others().filter(|m| !peers.vouches_for(m)).map(|m| m.gossip).collect();
        for to in missing {
            if let Some(h) = peers.hello(to, true, now) {
                let _ = self.socket.try_send_to(&h, to);
            }
        }
    }

    fn join_seeds(&mut self, ctx: &mut Context<Self>) {
        for seed in self.seeds.clone() {
            if seed != self.socket.local_addr().unwrap_or(seed) {
                let out = self.membership.join(seed);
                self.apply(out, ctx);
            }
        }
    }

    /// Announces to the seeds that are not in the view. Nodes that start together can
    /// form two groups that each hold several members (a first packet refused before the
    /// sender's certificate had arrived), and a group that is not alone never knocked
    /// again: a seed missing from the view is asked each time, so groups merge.
    fn join_missing_seeds(&mut self, ctx: &mut Context<Self>) {
        let known: std::collections::HashSet<SocketAddr> = self.membership.alive().iter().map(|m| m.gossip).collect();
        let me = self.socket.local_addr().ok();
        for seed in self.seeds.clone() {
            if Some(seed) != me && !known.contains(&seed) {
                let out = self.membership.join(seed);
                self.apply(out, ctx);
            }
        }
    }
}

impl Actor for Agent {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        ctx.set_mailbox_capacity(1024);
        let (socket, addr, shutdown, crash) =
            (self.socket.clone(), ctx.address(), self.shutdown.clone(), self.crash.clone());
        let name = self.name.clone();
        actix_rt::spawn(async move {
            // Room for the largest index request plus the seal, or a hello.
            let len = (crate::index::rpc::RPC_LEN_MAX + super::gossip::OVERHEAD)
                .max(super::gossip::HELLO_LEN)
                .max(super::revocation::Spread::LEN_MAX + super::gossip::OVERHEAD)
                + 64;
            let mut buf = vec![0u8; len];
            let graceful = loop {
                let (n, from) = tokio::select! {
                    biased;
                    _ = crash.cancelled() => break false,
                    _ = shutdown.cancelled() => break true,
                    r = socket.recv_from(&mut buf) => match r { Ok(x) => x, Err(_) => continue },
                };
                if addr.try_send(Datagram(buf[..n].to_vec(), from)).is_err() {
                    counter!("confab_cluster_gossip_packets_total", "node" => name.clone(), "direction" => "in", "outcome" => "mailbox_full").increment(1);
                }
            };
            addr.do_send(Stop { graceful });
        });
        self.join_seeds(ctx);
        ctx.run_interval(REJOIN_EVERY, |act, ctx| {
            // Alone (a seed restarted, or we started first), or apart from some seeds
            // (two groups formed at once): knock again.
            act.join_missing_seeds(ctx);
            // A lost hello or answer: ask again.
            act.ask_certificates();
        });
        ctx.run_interval(self.revocation_gossip, |act, _| act.spread_revocations());
        self.publish();
    }
}

impl Handler<Datagram> for Agent {
    type Result = ();

    fn handle(&mut self, msg: Datagram, ctx: &mut Context<Self>) {
        let Datagram(bytes, from) = msg;
        let received = lock(&self.peers).receive(from, &bytes, super::now_ms());
        match received {
            Received::Data(a) if a.channel == Channel::Revocation => self.on_revocation(from, a.sender, &a.payload),
            Received::Data(a) if a.channel == Channel::Index => {
                let packet = IndexPacket { from, sender: crate::crypto::KeyId(a.sender), payload: a.payload };
                let delivered = self.index.as_ref().is_some_and(|tx| tx.try_send(packet).is_ok());
                let outcome = if delivered { "accepted" } else { "index_queue_full" };
                counter!("confab_cluster_index_packets_total", "node" => self.name.clone(), "direction" => "in", "outcome" => outcome).increment(1);
            }
            Received::Data(a) => {
                // foca answers the sender its header names: it must be the one that sealed.
                let named = membership::sender_of(&a.payload);
                if !named.is_some_and(|m| m.node == Some(a.sender) && m.gossip == from) {
                    reject::count(&self.name, &mut self.log, from, Reject::WrongIdentity);
                    return;
                }
                counter!("confab_cluster_gossip_packets_total", "node" => self.name.clone(), "direction" => "in", "outcome" => "accepted").increment(1);
                let out = self.membership.handle_data(&a.payload);
                self.apply(out, ctx);
            }
            Received::Hello { learned, send } => {
                for (to, d) in send {
                    let _ = self.socket.try_send_to(&d, to);
                }
                if learned.is_some() {
                    self.publish();
                }
            }
            Received::Rejected(why) => {
                // A member we know of speaks under a certificate we do not hold (a hello
                // or its answer was lost, or it restarted): ask it again now rather than
                // at the next probe. Only a member's known address gets a hello, so a
                // spoofed packet cannot aim one anywhere else.
                if why == Reject::UnknownSender && self.membership.others().any(|m| m.gossip == from) {
                    let hello = lock(&self.peers).hello(from, true, super::now_ms());
                    if let Some(h) = hello {
                        let _ = self.socket.try_send_to(&h, from);
                    }
                }
                reject::count(&self.name, &mut self.log, from, why)
            }
        }
    }
}

#[derive(Message)]
#[rtype(result = "()")]
struct Stop {
    graceful: bool,
}

impl Handler<Stop> for Agent {
    type Result = ();

    fn handle(&mut self, msg: Stop, ctx: &mut Context<Self>) {
        if !msg.graceful {
            ctx.stop();
            return;
        }
        // Tell the others now rather than let them suspect us for seconds.
        let out = self.membership.leave();
        let mut peers = lock(&self.peers);
        for o in out {
            if let Output::Send(to, data) = o {
                for (to, d) in peers.send(to.gossip, to.node, Channel::Gossip, &data, super::now_ms()) {
                    let _ = self.socket.try_send_to(&d, to);
                }
            }
        }
        ctx.stop();
    }
}

/// Starts the agent on a bound gossip socket (inside an actix System); `spec.me.gossip`
/// must be the address others reach that socket at. It stops, announcing its departure,
/// when `shutdown` fires, and silently (as a crashed node would) when `crash` fires.
pub fn start(
    spec: AgentSpec,
    socket: UdpSocket,
    shutdown: CancellationToken,
    crash: CancellationToken,
    index: Option<tokio::sync::mpsc::Sender<IndexPacket>>,
) -> AgentHandle {
    let me = spec.me;
    let addr = me.gossip;
    let name = me.name.clone();
    let config = membership::config(spec.cluster_size_hint, spec.probe_period);
    let (tx, rx) = watch::channel(Arc::new(View::default()));
    let socket = Arc::new(socket);
    let trusted = spec.peers.trusted().clone();
    let peers = Arc::new(Mutex::new(spec.peers));
    let sender = ClusterSender { socket: socket.clone(), peers: peers.clone() };
    Agent {
        membership: Membership::new(me, config),
        socket,
        peers,
        log: LogOnce::default(),
        seeds: spec.seeds,
        name,
        view: tx,
        shutdown,
        crash,
        index,
        trusted,
        revocations_seen: 0,
        spreader: super::revocation::Spreader::new(spec.revocation_gossip.as_millis() as u64),
        revocation_gossip: spec.revocation_gossip,
    }
    .start();
    AgentHandle { addr, view: rx, sender }
}
