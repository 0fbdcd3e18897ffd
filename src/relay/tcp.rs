//! Relay legs over TCP, for hosts whose UDP is blocked (a firewall that lets only TCP
//! out). Such a host connects to the relay's port over TCP and sends each relayed
//! datagram as a frame — a 2-byte big-endian length, then the datagram (header, token,
//! inner packet) exactly as it would over UDP. The [`SessionTable`] latches the leg to
//! the connection ([`Peer::Tcp`]), and what the other leg sends comes back as frames.
//!
//! One thread runs a single-threaded tokio runtime for every connection: TCP legs are
//! the exception (most hosts have UDP), and a stream needs buffering and back-pressure
//! that the UDP workers' loop has no room for. Datagrams from a TCP leg to a UDP leg
//! leave through a clone of a worker's socket, so they come from the relay port as the
//! other host (and its NAT) expects; datagrams for a TCP leg are queued to its
//! connection's writer ([`TcpConns::send`], never waiting: a full queue drops the
//! datagram, counted `send_failed`, as a full socket buffer would).
//!
//! Limits: at most `tcp_conns_max` connections, and `tcp_connections_per_source_max` from
//! one source (more are closed at once and counted in `confab_net_connections_refused_total`); a write that the peer does not take within
//! [`crate::net::tcp::WRITE_TIMEOUT`] ends the connection; a connection that
//! has not latched a leg within [`LATCH_TIMEOUT`], or is silent for [`IDLE_TIMEOUT`],
//! is closed; a frame of length 0 or above [`RELAYED_LEN_MAX`] ends the connection (a
//! stream cannot find the next frame after a bad length). Metrics are the workers',
//! with `worker="tcp"`.

use super::clock_ms;
use super::packet::{self, RELAYED_LEN_MAX};
use super::table::{Decision, DropReason, Peer, SessionTable};
use super::worker::{Local, Meters, Tally, forward};
use dashmap::DashMap;
use std::io;
use std::net::{SocketAddr, UdpSocket};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::mpsc;

/// How long a new connection may take to latch a leg (its first valid datagram).
pub const LATCH_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a latched connection may stay silent (voice sends every 20 ms).
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(60);
/// Datagrams queued for one connection's writer (a second of voice both ways).
const WRITE_QUEUE: usize = 128;

/// The writers of the open TCP legs, shared with the UDP workers.
#[derive(Debug, Default)]
pub struct TcpConns {
    writers: DashMap<u64, mpsc::Sender<Box<[u8]>>>,
    next: AtomicU64,
}

impl TcpConns {
    /// Queues `datagram` for connection `conn`; false if it is gone or its queue is full.
    pub(super) fn send(&self, conn: u64, datagram: &[u8]) -> bool {
        self.writers.get(&conn).is_some_and(|w| w.try_send(datagram.into()).is_ok())
    }

    /// Open connections.
    pub fn len(&self) -> usize {
        self.writers.len()
    }

    /// Whether no connection is open.
    pub fn is_empty(&self) -> bool {
        self.writers.is_empty()
    }
}

/// What the TCP thread shares with its connections.
pub(super) struct Context {
    pub table: SessionTable,
    /// A clone of a worker's socket on the relay port, for datagrams to UDP legs.
    pub udp: UdpSocket,
    pub conns: Arc<TcpConns>,
    pub stop: Arc<AtomicBool>,
    pub local: Arc<Local>,
    pub node: String,
    /// The connection caps, in all (`tcp_conns_max`) and per source.
    pub slots: Arc<crate::net::tcp::Slots>,
    /// How often the accept loop looks at `stop`.
    pub poll: Duration,
    /// `confab_relay_tcp_connections` for this node.
    pub open: metrics::Gauge,
}

/// Starts the TCP thread on `listener` (bound and listening).
pub(super) fn start(listener: std::net::TcpListener, ctx: Context) -> io::Result<std::thread::JoinHandle<()>> {
    listener.set_nonblocking(true)?;
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let conns = ctx.conns.clone();
    let open = ctx.open.clone();
    std::thread::Builder::new().name("relay-tcp".into()).spawn(move || {
        runtime.block_on(async move {
            match tokio::net::TcpListener::from_std(listener) {
                Ok(l) => serve(l, Arc::new(ctx)).await,
                Err(e) => tracing::error!(error = %e, "relay TCP listener unusable"),
            }
        });
        // Dropping the runtime cancels every connection task (their sockets close)
        // before they could forget their writers themselves.
        drop(runtime);
        // Decremented rather than set to zero: the gauge is the node's, and tests run
        // several networks with the same node names in one process.
        open.decrement(conns.writers.len() as f64);
        conns.writers.clear();
    })
}

async fn serve(listener: tokio::net::TcpListener, ctx: Arc<Context>) {
    let meters = Arc::new(Meters::register(&ctx.node, "tcp"));
    let mut tick = tokio::time::interval(ctx.poll);
    loop {
        tokio::select! {
            r = listener.accept() => match r {
                Ok((stream, addr)) => {
                    let Some(slot) = ctx.slots.admit(&stream, addr) else { continue };
                    let conn = ctx.conns.next.fetch_add(1, Relaxed);
                    let (tx, rx) = mpsc::channel(WRITE_QUEUE);
                    ctx.conns.writers.insert(conn, tx);
                    let work = connection(stream, Peer::Tcp { conn, addr }, rx, ctx.clone(), meters.clone());
                    tokio::spawn(async move {
                        work.await;
                        drop(slot);
                    });
                }
                Err(e) => {
                    meters.recv_errors.increment(1);
                    tracing::debug!(error = %e, "relay TCP accept failed");
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            },
            _ = tick.tick() => {
                if ctx.stop.load(Relaxed) {
                    return;
                }
            }
        }
    }
}

async fn connection(
    stream: tokio::net::TcpStream,
    peer: Peer,
    mut queued: mpsc::Receiver<Box<[u8]>>,
    ctx: Arc<Context>,
    meters: Arc<Meters>,
) {
    let Peer::Tcp { conn, .. } = peer else { return };
    let _ = stream.set_nodelay(true);
    let (mut r, mut w) = stream.into_split();
    let writer = tokio::spawn(async move {
        let mut frame = Vec::with_capacity(2 + RELAYED_LEN_MAX);
        while let Some(d) = queued.recv().await {
            frame.clear();
            frame.extend_from_slice(&(d.len() as u16).to_be_bytes());
            frame.extend_from_slice(&d);
            // A peer that stops reading loses its leg, not a task forever.
            match tokio::time::timeout(crate::net::tcp::WRITE_TIMEOUT, w.write_all(&frame)).await {
                Ok(Ok(())) => {}
                _ => break,
            }
        }
    });
    ctx.open.increment(1.0);
    let opened = tokio::time::Instant::now();
    let mut latched = false;
    let mut buf = vec![0u8; RELAYED_LEN_MAX];
    loop {
        let deadline = if latched { tokio::time::Instant::now() + IDLE_TIMEOUT } else { opened + LATCH_TIMEOUT };
        let mut len = [0u8; 2];
        if tokio::time::timeout_at(deadline, r.read_exact(&mut len)).await.map_or(true, |r| r.is_err()) {
            break;
        }
        let len = usize::from(u16::from_be_bytes(len));
        let mut tally = Tally { received: 1, ..Tally::default() };
        if len == 0 || len > RELAYED_LEN_MAX {
            let reason = if len == 0 { DropReason::Malformed } else { DropReason::Oversized };
            tally.drops[reason.index()] += 1;
            tally.flush(&meters, &ctx.local);
            tracing::debug!(%conn, len, "relay TCP frame of a bad length; closing");
            break;
        }
        let datagram = &mut buf[..len];
        if tokio::time::timeout_at(deadline, r.read_exact(datagram)).await.map_or(true, |r| r.is_err()) {
            break;
        }
        tally.bytes_in = len as u64;
        match ctx.table.decide_from(datagram, peer, clock_ms()) {
            // `decide_from` never holds: a TCP leg's file data meets the bucket alone.
            Decision::Forward { to } | Decision::Hold { to, .. } => {
                latched = true;
                if packet::is_file(datagram) {
                    tally.file_bytes += datagram.len() as u64;
                }
                packet::wipe_token(datagram);
                forward(&ctx.udp, &ctx.conns, to, datagram, &mut tally);
            }
            Decision::Drop(reason) => {
                latched |= reason == DropReason::PeerUnknown;
                tally.drops[reason.index()] += 1;
            }
        }
        tally.flush(&meters, &ctx.local);
    }
    ctx.conns.writers.remove(&conn);
    ctx.open.decrement(1.0);
    writer.abort();
}

/// Binds the relay's TCP listener on `addr` (the UDP workers' address).
pub(super) fn listen(addr: SocketAddr) -> io::Result<std::net::TcpListener> {
    use socket2::{Domain, Protocol, Socket, Type};
    let s = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    // A restarted node gets its port back while old connections sit in TIME_WAIT.
    s.set_reuse_address(true)?;
    s.bind(&addr.into())?;
    s.listen(1024)?;
    Ok(s.into())
}
