//! The membership actor: owns the gossip socket, drives [`Membership`], and publishes
//! the view of live members to the rest of the super node.

use super::gossip::{Channel, ClusterKey};
use super::member::Member;
use super::membership::{self, Membership, Output};
use actix::prelude::*;
use metrics::{counter, gauge};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::UdpSocket;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

/// How often a node that sees nobody else asks its seeds again.
const REJOIN_EVERY: Duration = Duration::from_secs(3);

/// What to start.
#[derive(Debug, Clone)]
pub struct AgentSpec {
    /// This node.
    pub me: Member,
    /// Seeds to join through (gossip addresses).
    pub seeds: Vec<SocketAddr>,
    /// The cluster key.
    pub key: ClusterKey,
    /// SWIM probe period (a dead node is noticed within a few of these).
    pub probe_period: Duration,
    /// Expected cluster size (tunes dissemination).
    pub cluster_size_hint: u32,
}

/// The live members as one node sees them (itself included), sorted by gossip address.
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

/// An index packet from another member (opened).
#[derive(Debug, Message)]
#[rtype(result = "()")]
pub struct IndexPacket {
    /// The sender's gossip address.
    pub from: SocketAddr,
    /// The payload.
    pub payload: Vec<u8>,
}

/// Sends sealed index packets from the gossip socket.
#[derive(Debug, Clone)]
pub struct ClusterSender {
    socket: Arc<UdpSocket>,
    key: ClusterKey,
}

impl ClusterSender {
    /// Seals and sends without waiting; false if the socket buffer is full.
    pub fn send(&self, to: SocketAddr, payload: &[u8]) -> bool {
        self.socket.try_send_to(&self.key.seal(Channel::Index, payload), to).is_ok()
    }
}

#[derive(Message)]
#[rtype(result = "()")]
struct Datagram(Vec<u8>, SocketAddr);

struct Agent {
    membership: Membership,
    socket: Arc<UdpSocket>,
    key: ClusterKey,
    seeds: Vec<SocketAddr>,
    name: String,
    view: watch::Sender<Arc<View>>,
    shutdown: CancellationToken,
    crash: CancellationToken,
    index: Option<tokio::sync::mpsc::Sender<IndexPacket>>,
}

impl Agent {
    fn apply(&mut self, out: Vec<Output>, ctx: &mut Context<Self>) {
        let mut changed = false;
        for o in out {
            match o {
                Output::Send(to, data) => {
                    let ok = self.socket.try_send_to(&self.key.seal(Channel::Gossip, &data), to).is_ok();
                    let outcome = if ok { "sent" } else { "dropped" };
                    counter!("confab_cluster_gossip_packets_total", "node" => self.name.clone(), "direction" => "out", "outcome" => outcome).increment(1);
                }
                Output::Schedule(after, t) => {
                    ctx.run_later(after, move |act, ctx| {
                        let out = act.membership.handle_timer(t);
                        act.apply(out, ctx);
                    });
                }
                Output::Up(m) => {
                    tracing::info!(node = %self.name, member = %m.name, gossip = %m.gossip, "cluster member up");
                    changed = true;
                }
                Output::Down(m) => {
                    tracing::warn!(node = %self.name, member = %m.name, gossip = %m.gossip, "cluster member down");
                    changed = true;
                }
            }
        }
        if changed {
            let members = self.membership.alive();
            gauge!("confab_cluster_members", "node" => self.name.clone()).set(members.len() as f64);
            self.view.send_replace(Arc::new(View { members }));
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
}

impl Actor for Agent {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        ctx.set_mailbox_capacity(1024);
        let (socket, addr, shutdown, crash) =
            (self.socket.clone(), ctx.address(), self.shutdown.clone(), self.crash.clone());
        let name = self.name.clone();
        actix_rt::spawn(async move {
            // Room for the largest index request plus the seal.
            let mut buf = vec![0u8; crate::index::rpc::RPC_LEN_MAX + super::gossip::OVERHEAD + 64];
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
            // Alone (a seed restarted, or we started first): knock again.
            if act.membership.alive().len() <= 1 {
                act.join_seeds(ctx);
            }
        });
        let members = self.membership.alive();
        gauge!("confab_cluster_members", "node" => self.name.clone()).set(members.len() as f64);
        self.view.send_replace(Arc::new(View { members }));
    }
}

impl Handler<Datagram> for Agent {
    type Result = ();

    fn handle(&mut self, msg: Datagram, ctx: &mut Context<Self>) {
        match self.key.open(&msg.0) {
            Ok((Channel::Index, payload)) => {
                let delivered =
                    self.index.as_ref().is_some_and(|tx| tx.try_send(IndexPacket { from: msg.1, payload }).is_ok());
                let outcome = if delivered { "accepted" } else { "index_queue_full" };
                counter!("confab_cluster_index_packets_total", "node" => self.name.clone(), "direction" => "in", "outcome" => outcome).increment(1);
            }
            Ok((Channel::Gossip, data)) => {
                counter!("confab_cluster_gossip_packets_total", "node" => self.name.clone(), "direction" => "in", "outcome" => "accepted").increment(1);
                let out = self.membership.handle_data(&data);
                self.apply(out, ctx);
            }
            Err(_) => {
                counter!("confab_cluster_gossip_packets_total", "node" => self.name.clone(), "direction" => "in", "outcome" => "unauthenticated").increment(1);
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
        for o in out {
            if let Output::Send(to, data) = o {
                let _ = self.socket.try_send_to(&self.key.seal(Channel::Gossip, &data), to);
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
    let sender = ClusterSender { socket: socket.clone(), key: spec.key.clone() };
    Agent {
        membership: Membership::new(me, config),
        socket,
        key: spec.key,
        seeds: spec.seeds,
        name,
        view: tx,
        shutdown,
        crash,
        index,
    }
    .start();
    AgentHandle { addr, view: rx, sender }
}
