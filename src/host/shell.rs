//! The host's driver: one task per session that owns port P, the link's TCP connection,
//! the timer and the [`CoreLink`], and drives the core by its contract (after each
//! input, drain every output; then sleep until `poll_timeout` or the next input).
//!
//! The session talks to it through [`Shell`], a handle over a command channel. A
//! request is a command carrying a oneshot: the driver submits it to the core and keeps
//! the sender under the request's [`OpId`]; the completion, whenever it comes, goes to
//! that sender and to no other. So a method of the session awaits its own answer only,
//! any number can be in flight, and an answer nobody waits for (a notice's
//! acknowledgement) is matched by the core and dropped here. A channel rather than a
//! core behind a shared lock: the session today reads nothing of the link's state but
//! what the driver publishes (the link's status, the notices, the media), so the core
//! has exactly one owner and no lock is ever taken in a step.
//!
//! What arrives on port P is sorted as the link task sorted it: from the super node, to
//! the core; what looks like media (its first byte) and passes the media gate, to the
//! calls' queue; anything else, to the ladder while one runs on the lent port, or to
//! the core (which counts it as foreign). While the session connects to another super
//! node ([`Shell::lend`]), the driver keeps reading port P: media still reaches the
//! calls during a failover, and the ladder gets the rest through a queue.
//!
//! `Dest::Udp` means port P: on IPv4 or, for an IPv6 destination, port P's IPv6 socket
//! (`host::udp6`, whose own task still reads it: it carries media only).
//!
//! UDP goes out at once or not at all ([`send_now`]): a full socket buffer drops the
//! datagram, as the network would, and the drop is counted; no step waits for the socket.

use super::connect::{Connected, Link};
use super::core::io::{ConnId, Dest, Effect, Framing, TcpEvent, Transmit};
use super::core::pending::{OpId, OpResult, Request, RequestError};
use super::core::{CoreEvent, CoreLink, Now};
use super::media_gate::MediaGate;
use crate::relay::packet::RELAYED_LEN_MAX;
use crate::wire::message::CallStats;
use rand::SeedableRng;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UdpSocket;
use tokio::sync::{mpsc, oneshot, watch};

/// Media datagrams queued for the calls (a second and a half of 20 ms frames from both
/// directions and the probes); beyond, new ones are dropped as a full socket buffer would.
pub const MEDIA_QUEUED_MAX: usize = 256;
/// Notices queued for the application; when a host does not read them, newer ones are
/// dropped (presence is repeated at every refresh, list changes are read from the server).
pub const NOTICES_QUEUED_MAX: usize = 256;
/// Datagrams queued for a ladder running on the lent port.
const LADDER_QUEUED_MAX: usize = 64;
/// Frames queued for one TCP connection; beyond, new ones are dropped and counted.
const TCP_QUEUED_MAX: usize = 256;
/// How long a TCP connection the core asks for may take to connect.
const TCP_CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
/// How long a goodbye may take to go out.
const BYE_WAIT: Duration = Duration::from_secs(1);
/// Connection ids the shell gives the links the ladder hands over; the core's own start
/// low, so the two never meet.
const SHELL_CONN_BASE: u32 = 1 << 31;

/// Counters of the driver.
#[derive(Debug, Default)]
pub struct ShellStats {
    /// UDP datagrams dropped because the socket's buffer was full (or another error).
    pub udp_dropped: AtomicU64,
    /// Frames dropped because a TCP connection's queue was full or it was gone.
    pub tcp_dropped: AtomicU64,
    /// Notices dropped because the application did not read them.
    pub notices_dropped: AtomicU64,
    /// Media datagrams dropped because the calls' queue was full.
    pub media_dropped: AtomicU64,
    /// Answers to requests whose waiter had gone.
    pub unclaimed: AtomicU64,
    /// Notices (their answer awaited by nobody) that failed: refused, unanswered, or
    /// no link.
    pub notices_failed: AtomicU64,
}

impl ShellStats {
    fn bump(c: &AtomicU64) {
        c.fetch_add(1, Ordering::Relaxed);
    }
}

/// The link as the driver last saw it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LinkStatus {
    /// Which link (one more at every super node the host joins).
    pub epoch: u32,
    /// Whether it is up; false once it ended, until the next one.
    pub up: bool,
}

enum Command {
    Request(Request, Option<oneshot::Sender<OpResult>>),
    ReleaseRelay(u32),
    CallStats(CallStats),
    InCall(bool),
    Check,
    Bye(oneshot::Sender<()>),
    /// Stop the link; what arrives on port P that is not media goes to this queue.
    Lend(mpsc::Sender<(SocketAddr, Vec<u8>)>, oneshot::Sender<()>),
    /// A new link from the ladder.
    Attach(Box<Connected>, oneshot::Sender<()>),
}

/// The session's handle on its driver. Dropping it stops the driver.
pub struct Shell {
    commands: mpsc::UnboundedSender<Command>,
    /// Notice bodies from other hosts.
    pub notices: mpsc::Receiver<Vec<u8>>,
    /// Datagrams on port P from anyone but the super node that look like media (their
    /// first byte) and pass the media gate, with their source.
    pub media: mpsc::Receiver<(SocketAddr, Vec<u8>)>,
    /// The sending end of `media`, for media that arrives another way (a relay leg over
    /// TCP).
    pub media_in: mpsc::Sender<(SocketAddr, Vec<u8>)>,
    /// The link's status, as the driver publishes it.
    pub link: LinkWatch,
    udp: Port,
    stats: Arc<ShellStats>,
    in_call: bool,
    driver: tokio::task::JoinHandle<()>,
}

impl Drop for Shell {
    fn drop(&mut self) {
        self.driver.abort();
    }
}

/// The link's status as the driver publishes it.
#[derive(Clone)]
pub struct LinkWatch(watch::Receiver<LinkStatus>);

impl LinkWatch {
    /// The link's status now.
    pub fn now(&self) -> LinkStatus {
        *self.0.borrow()
    }

    /// Waits until the link is down (at once if it is).
    pub async fn down(&mut self) {
        if self.0.wait_for(|s| !s.up).await.is_err() {
            // The driver is gone; the session sees it stop, not a link going down.
            std::future::pending::<()>().await;
        }
    }
}

/// A ladder's view of port P while the driver lends it: the socket to send from, and
/// what arrived that was neither media nor for the driver.
pub struct LentPort {
    /// Port P.
    pub udp: Arc<UdpSocket>,
    /// Datagrams for the ladder, with their source.
    pub inbound: mpsc::Receiver<(SocketAddr, Vec<u8>)>,
}

fn now() -> Now {
    Now { mono: Instant::now(), unix_ms: super::now_ms() }
}

impl Shell {
    /// Starts the driver on port P (`udp`, and `udp6` where the host has IPv6) over the
    /// link the ladder made.
    pub fn start(udp: Arc<UdpSocket>, udp6: Option<Arc<UdpSocket>>, connected: Connected) -> Self {
        let port = Port { v4: udp, v6: udp6 };
        let (commands, rx) = mpsc::unbounded_channel();
        let (notices_tx, notices) = mpsc::channel(NOTICES_QUEUED_MAX);
        let (media_tx, media) = mpsc::channel(MEDIA_QUEUED_MAX);
        let (tcp_tx, tcp_rx) = mpsc::channel(TCP_QUEUED_MAX);
        let (status, link) = watch::channel(LinkStatus { epoch: 0, up: false });
        let stats = Arc::new(ShellStats::default());
        let seed: [u8; 32] = crate::crypto::random::bytes();
        let mut d = Driver {
            udp: port.clone(),
            core: None,
            epoch: 0,
            rng: rand::rngs::StdRng::from_seed(seed),
            waiters: HashMap::new(),
            notices: notices_tx,
            media: media_tx.clone(),
            gate: MediaGate::default(),
            gate_epoch: Instant::now(),
            ladder: None,
            conns: HashMap::new(),
            tcp_tx,
            next_conn: SHELL_CONN_BASE,
            status,
            stats: stats.clone(),
            in_call: false,
        };
        d.attach(connected);
        let driver = tokio::spawn(d.run(rx, tcp_rx));
        Self {
            commands,
            notices,
            media,
            media_in: media_tx,
            link: LinkWatch(link),
            udp: port,
            stats,
            in_call: false,
            driver,
        }
    }

    fn send(&self, c: Command) -> bool {
        self.commands.send(c).is_ok()
    }

    /// Makes a request of the super node and waits for its answer (or its deadline, or
    /// the link's end): only for this one, whatever else is in flight.
    pub async fn request(&self, r: Request) -> OpResult {
        let (tx, rx) = oneshot::channel();
        if !self.send(Command::Request(r, Some(tx))) {
            return Err(RequestError::LinkDown);
        }
        rx.await.unwrap_or(Err(RequestError::LinkDown))
    }

    /// Makes a request whose answer nobody waits for (a notice). Never waits.
    pub fn submit(&self, r: Request) {
        self.send(Command::Request(r, None));
    }

    /// Frees a relay session (no answer comes). Never waits.
    pub fn release_relay(&self, session: u32) {
        self.send(Command::ReleaseRelay(session));
    }

    /// Tells the super node how a call went. Never waits.
    pub fn call_stats(&self, stats: CallStats) {
        self.send(Command::CallStats(stats));
    }

    /// Keeps the link's call pace while `on` (a call is under way). Never waits.
    pub fn set_in_call(&mut self, on: bool) {
        if on != self.in_call && self.send(Command::InCall(on)) {
            self.in_call = on;
        }
    }

    /// Asks the super node at once whether it is there (a call's media went silent): the
    /// link ends if it does not answer within 1.5 s. Never waits.
    pub fn check(&self) {
        self.send(Command::Check);
    }

    /// Says goodbye to the super node; waits until the Bye is out (a second at most).
    pub async fn bye(&self) {
        let (tx, rx) = oneshot::channel();
        if self.send(Command::Bye(tx)) {
            let _ = tokio::time::timeout(BYE_WAIT, rx).await;
        }
    }

    /// Ends the link (no goodbye: its super node is gone or to be left) and lends port P
    /// to a ladder until [`Shell::attach`]; media keeps reaching the calls meanwhile.
    pub async fn lend(&self) -> LentPort {
        let (tx, inbound) = mpsc::channel(LADDER_QUEUED_MAX);
        let (done, rx) = oneshot::channel();
        if self.send(Command::Lend(tx, done)) {
            let _ = rx.await;
        }
        LentPort { udp: self.udp.v4.clone(), inbound }
    }

    /// Takes port P back with the link the ladder made.
    pub async fn attach(&self, connected: Connected) {
        let (done, rx) = oneshot::channel();
        if self.send(Command::Attach(Box::new(connected), done)) {
            let _ = rx.await;
        }
    }

    /// Sends one datagram from port P (on IPv6 to an IPv6 address); a full socket
    /// buffer drops it, and so does the lack of an IPv6 port P (counted).
    pub fn send_udp(&self, bytes: &[u8], to: SocketAddr) {
        if !self.udp.send(bytes, to) {
            ShellStats::bump(&self.stats.udp_dropped);
        }
    }

    /// The driver's counters.
    pub fn stats(&self) -> &ShellStats {
        &self.stats
    }
}

/// One TCP connection of the driver's: the queue its writer drains.
struct Conn {
    tx: mpsc::Sender<Vec<u8>>,
}

/// Port P: its IPv4 socket, and its IPv6 one where the host has IPv6.
#[derive(Clone)]
struct Port {
    v4: Arc<UdpSocket>,
    v6: Option<Arc<UdpSocket>>,
}

impl Port {
    /// Sends from the socket of `to`'s family, at once or not at all.
    fn send(&self, bytes: &[u8], to: SocketAddr) -> bool {
        match (&self.v6, to) {
            (Some(v6), SocketAddr::V6(_)) => send_now(v6, bytes, to),
            (None, SocketAddr::V6(_)) => false,
            (_, SocketAddr::V4(_)) => send_now(&self.v4, bytes, to),
        }
    }
}

struct Driver {
    udp: Port,
    core: Option<CoreLink>,
    epoch: u32,
    rng: rand::rngs::StdRng,
    waiters: HashMap<OpId, oneshot::Sender<OpResult>>,
    notices: mpsc::Sender<Vec<u8>>,
    media: mpsc::Sender<(SocketAddr, Vec<u8>)>,
    gate: MediaGate,
    gate_epoch: Instant,
    ladder: Option<mpsc::Sender<(SocketAddr, Vec<u8>)>>,
    conns: HashMap<ConnId, Conn>,
    tcp_tx: mpsc::Sender<(ConnId, TcpEvent)>,
    next_conn: u32,
    status: watch::Sender<LinkStatus>,
    stats: Arc<ShellStats>,
    in_call: bool,
}

/// First bytes of media packets (`call::media`) and relayed packets (`relay::packet`).
fn is_media(first: u8) -> bool {
    super::link::is_media(first)
}

impl Driver {
    async fn run(
        mut self,
        mut commands: mpsc::UnboundedReceiver<Command>,
        mut tcp: mpsc::Receiver<(ConnId, TcpEvent)>,
    ) {
        let mut buf = vec![0u8; crate::wire::frame::FRAME_LEN_MAX + 1];
        loop {
            let wake = self.core.as_ref().and_then(CoreLink::poll_timeout).map(tokio::time::Instant::from_std);
            tokio::select! {
                c = commands.recv() => match c {
                    Some(c) => self.on_command(c),
                    // The session is gone.
                    None => return,
                },
                r = self.udp.v4.recv_from(&mut buf) => {
                    if let Ok((n, from)) = r {
                        self.on_datagram(from, &buf[..n]);
                    }
                }
                Some((conn, ev)) = tcp.recv() => self.on_tcp(conn, ev),
                _ = tokio::time::sleep_until(wake.unwrap_or_else(tokio::time::Instant::now)), if wake.is_some() => {
                    if let Some(core) = self.core.as_mut() {
                        core.handle_timeout(now());
                    }
                }
            }
            self.drain();
        }
    }

    fn on_command(&mut self, c: Command) {
        let now = now();
        match c {
            Command::Request(r, waiter) => match self.core.as_mut() {
                Some(core) => {
                    let op = core.request(now, r);
                    if let Some(w) = waiter {
                        self.waiters.insert(op, w);
                    }
                }
                None => {
                    if let Some(w) = waiter {
                        let _ = w.send(Err(RequestError::LinkDown));
                    }
                }
            },
            Command::ReleaseRelay(session) => {
                if let Some(core) = self.core.as_mut() {
                    core.release_relay(session);
                }
            }
            Command::CallStats(s) => {
                if let Some(core) = self.core.as_mut() {
                    core.call_stats(&s);
                }
            }
            Command::InCall(on) => {
                self.in_call = on;
                if let Some(core) = self.core.as_mut() {
                    core.set_in_call(now, on);
                }
            }
            Command::Check => {
                if let Some(core) = self.core.as_mut() {
                    core.check(now);
                }
            }
            Command::Bye(done) => {
                if let Some(core) = self.core.as_mut() {
                    core.bye();
                }
                self.drain();
                // The Bye is in the socket (UDP) or in its connection's queue (TCP),
                // whose writer shuts the connection down once it is written.
                self.conns.clear();
                let _ = done.send(());
            }
            Command::Lend(tx, done) => {
                self.detach();
                self.ladder = Some(tx);
                let _ = done.send(());
            }
            Command::Attach(connected, done) => {
                self.ladder = None;
                self.attach(*connected);
                let _ = done.send(());
            }
        }
    }

    /// Drops the link without a goodbye; every request on it fails with `LinkDown`.
    fn detach(&mut self) {
        if self.core.take().is_some() {
            for (_, w) in self.waiters.drain() {
                let _ = w.send(Err(RequestError::LinkDown));
            }
        }
        // The link's TCP connection, if it had one, closes with its queue.
        self.conns.retain(|c, _| c.0 < SHELL_CONN_BASE);
        self.status.send_replace(LinkStatus { epoch: self.epoch, up: false });
    }

    /// Builds the core over a new link (the next epoch).
    fn attach(&mut self, connected: Connected) {
        self.detach();
        self.epoch += 1;
        let dest = match connected.link {
            Link::Udp(_) => Dest::Udp(connected.session.addr),
            Link::Tcp(stream) => {
                let conn = ConnId(self.next_conn);
                self.next_conn = self.next_conn.wrapping_add(1).max(SHELL_CONN_BASE);
                let _ = stream.set_nodelay(true);
                let tx = spawn_conn(conn, Ok(stream), Framing::Wire, self.tcp_tx.clone());
                self.conns.insert(conn, Conn { tx });
                Dest::Tcp(conn)
            }
        };
        let now = now();
        let mut core = CoreLink::with_epoch(connected.session, dest, self.epoch, now, &mut self.rng);
        core.set_in_call(now, self.in_call);
        self.core = Some(core);
        self.status.send_replace(LinkStatus { epoch: self.epoch, up: true });
        self.drain();
    }

    fn on_datagram(&mut self, from: SocketAddr, bytes: &[u8]) {
        let now = now();
        let link = self.core.as_ref().filter(|c| c.link().dest() == Dest::Udp(from)).is_some();
        if link {
            if let Some(core) = self.core.as_mut() {
                core.handle_datagram(now, from, bytes);
            }
            return;
        }
        if bytes.first().is_some_and(|b| is_media(*b)) {
            let now_ms = self.gate_epoch.elapsed().as_millis() as u64;
            // Checked by the call it belongs to (it is sealed under the call's keys).
            if self.gate.admit(from, bytes, now_ms) && self.media.try_send((from, bytes.to_vec())).is_err() {
                ShellStats::bump(&self.stats.media_dropped);
            }
            return;
        }
        if let Some(l) = &self.ladder {
            let _ = l.try_send((from, bytes.to_vec()));
            return;
        }
        if let Some(core) = self.core.as_mut() {
            core.handle_datagram(now, from, bytes);
        }
    }

    fn on_tcp(&mut self, conn: ConnId, ev: TcpEvent) {
        if matches!(ev, TcpEvent::Closed | TcpEvent::ConnectFailed(_)) {
            self.conns.remove(&conn);
        }
        if let Some(core) = self.core.as_mut() {
            core.handle_tcp(now(), conn, ev);
        }
    }

    /// Every output of the core, until none is left.
    fn drain(&mut self) {
        let Some(core) = self.core.as_mut() else { return };
        while let Some(t) = core.poll_transmit() {
            transmit(&self.udp, &self.conns, &self.stats, t);
        }
        while let Some((_, effect)) = core.poll_effect() {
            match effect {
                Effect::TcpConnect { conn, addr, framing } => {
                    let stream = Err(addr);
                    let tx = spawn_conn(conn, stream, framing, self.tcp_tx.clone());
                    self.conns.insert(conn, Conn { tx });
                }
                // Its writer shuts it down once what is queued is written.
                Effect::TcpClose { conn } => {
                    self.conns.remove(&conn);
                }
                // The link's core asks for nothing else; the whole host's core does.
                other => tracing::error!(effect = ?other, "an effect this shell does not run"),
            }
        }
        while let Some(e) = core.poll_event() {
            match e {
                CoreEvent::Notice(body) => {
                    if self.notices.try_send(body).is_err() {
                        ShellStats::bump(&self.stats.notices_dropped);
                    }
                }
                CoreEvent::LinkEnded { epoch, why } => {
                    tracing::warn!(epoch, %why, "the link to the super node ended");
                    if epoch == self.epoch {
                        self.status.send_replace(LinkStatus { epoch, up: false });
                    }
                }
            }
        }
        while let Some((op, result)) = core.poll_completion() {
            let failed = result.is_err();
            let missed = match self.waiters.remove(&op) {
                Some(w) => w.send(result).is_err().then_some(&self.stats.unclaimed),
                None => failed.then_some(&self.stats.notices_failed),
            };
            if let Some(counter) = missed {
                ShellStats::bump(counter);
            }
        }
    }
}

/// Sends one datagram at once, or drops it: false when the socket's buffer is full (or
/// the send failed). The send goes straight to the non-blocking socket, not through
/// tokio's `try_send_to`, which also fails while the reactor has not yet seen the
/// socket writable (a socket just bound, or just used by a ladder's awaited sends).
pub fn send_now(udp: &UdpSocket, bytes: &[u8], to: SocketAddr) -> bool {
    socket2::SockRef::from(udp).send_to(bytes, &to.into()).is_ok()
}

fn transmit(udp: &Port, conns: &HashMap<ConnId, Conn>, stats: &ShellStats, t: Transmit) {
    match t.dest {
        Dest::Udp(to) => {
            if !udp.send(&t.bytes, to) {
                ShellStats::bump(&stats.udp_dropped);
            }
        }
        Dest::Tcp(conn) => {
            if conns.get(&conn).is_none_or(|c| c.tx.try_send(t.bytes).is_err()) {
                ShellStats::bump(&stats.tcp_dropped);
            }
        }
        // The link's core sends nothing from a call's extra sockets.
        Dest::Probe { .. } => ShellStats::bump(&stats.udp_dropped),
    }
}

/// Runs one TCP connection: connects (when given an address), then reads frames into
/// `events` and writes what its queue brings, framed. Its events end with `Closed` or
/// `ConnectFailed`; the connection closes when the queue's sender is dropped.
fn spawn_conn(
    conn: ConnId,
    stream: Result<tokio::net::TcpStream, SocketAddr>,
    framing: Framing,
    events: mpsc::Sender<(ConnId, TcpEvent)>,
) -> mpsc::Sender<Vec<u8>> {
    let (tx, mut rx) = mpsc::channel::<Vec<u8>>(TCP_QUEUED_MAX);
    tokio::spawn(async move {
        let stream = match stream {
            Ok(s) => s,
            Err(addr) => {
                let connected = tokio::time::timeout(TCP_CONNECT_TIMEOUT, tokio::net::TcpStream::connect(addr)).await;
                let s = match connected {
                    Ok(Ok(s)) => s,
                    Ok(Err(e)) => {
                        let _ = events.send((conn, TcpEvent::ConnectFailed(e.to_string()))).await;
                        return;
                    }
                    Err(_) => {
                        let _ = events.send((conn, TcpEvent::ConnectFailed("timed out".into()))).await;
                        return;
                    }
                };
                // Frames are small and timely: never hold one back to coalesce.
                let _ = s.set_nodelay(true);
                let local = s.local_addr().unwrap_or(addr);
                let _ = events.send((conn, TcpEvent::Connected { local })).await;
                s
            }
        };
        let (mut r, mut w) = stream.into_split();
        let reader_events = events.clone();
        let reader = tokio::spawn(async move {
            while let Some(f) = read_framed(&mut r, framing).await {
                if reader_events.send((conn, TcpEvent::Frame(f))).await.is_err() {
                    return;
                }
            }
            let _ = reader_events.send((conn, TcpEvent::Closed)).await;
        });
        while let Some(bytes) = rx.recv().await {
            if write_framed(&mut w, framing, &bytes).await.is_err() {
                break;
            }
        }
        let _ = w.shutdown().await;
        // The other end may keep the connection open: reading stops with the queue.
        reader.abort();
    });
    tx
}

async fn read_framed(r: &mut tokio::net::tcp::OwnedReadHalf, framing: Framing) -> Option<Vec<u8>> {
    match framing {
        Framing::Wire => crate::net::tcp::read_frame(r).await.ok().flatten(),
        Framing::Relay => {
            let mut len = [0u8; 2];
            r.read_exact(&mut len).await.ok()?;
            let len = usize::from(u16::from_be_bytes(len));
            if len == 0 || len > RELAYED_LEN_MAX {
                tracing::debug!(len, "a relay frame of a bad length; closing");
                return None;
            }
            let mut d = vec![0u8; len];
            r.read_exact(&mut d).await.ok()?;
            Some(d)
        }
    }
}

async fn write_framed(w: &mut tokio::net::tcp::OwnedWriteHalf, framing: Framing, bytes: &[u8]) -> std::io::Result<()> {
    match framing {
        Framing::Wire => crate::net::tcp::write_frame(w, bytes).await,
        Framing::Relay => {
            let len = u16::try_from(bytes.len()).ok().filter(|n| usize::from(*n) <= RELAYED_LEN_MAX);
            let Some(len) = len else { return Ok(()) };
            w.write_all(&[&len.to_be_bytes()[..], bytes].concat()).await
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::host::core::pending::Answer;
    use crate::host::core::tests::establish_at;
    use crate::host::ladder::{Attempt, Stage, Transport};
    use crate::supernode::session::{Action, Session as SnSession};
    use crate::wire::MessageKind;
    use crate::wire::message::{Bye, FindReply};

    const T0: u64 = 1_700_000_000;
    const WAIT: Duration = Duration::from_secs(5);

    /// A super node on a real socket, its session from the sans-IO parts: it answers
    /// keepalives, and Finds for anyone but "nobody" (whose lookup never comes back).
    struct FakeSupernode {
        udp: Arc<UdpSocket>,
        /// Says Bye to the host when told.
        bye: mpsc::Sender<()>,
        task: tokio::task::JoinHandle<()>,
    }

    impl Drop for FakeSupernode {
        fn drop(&mut self) {
            self.task.abort();
        }
    }

    async fn udp() -> Arc<UdpSocket> {
        Arc::new(UdpSocket::bind("127.0.0.1:0").await.unwrap())
    }

    /// A super node for the host on `host`, and the link's end the ladder would give.
    async fn supernode(host: &Arc<UdpSocket>) -> (FakeSupernode, Connected) {
        let sn_udp = udp().await;
        let (sn_addr, host_addr) = (sn_udp.local_addr().unwrap(), host.local_addr().unwrap());
        let (client, session) = establish_at(sn_addr, host_addr, 15);
        let (bye, bye_rx) = mpsc::channel(1);
        let task = tokio::spawn(serve(sn_udp.clone(), session, host_addr, bye_rx));
        let attempt = Attempt { stage: Stage::CachedUdp, transport: Transport::Udp, addr: sn_addr };
        let connected = Connected { attempt, session: client, link: Link::Udp(host.clone()), rtt: Duration::ZERO };
        (FakeSupernode { udp: sn_udp, bye, task }, connected)
    }

    async fn serve(udp: Arc<UdpSocket>, mut s: SnSession, host: SocketAddr, mut bye: mpsc::Receiver<()>) {
        let me = udp.local_addr().unwrap();
        let mut buf = vec![0u8; 4096];
        loop {
            let (n, _) = tokio::select! {
                r = udp.recv_from(&mut buf) => r.unwrap(),
                _ = bye.recv() => {
                    let f = s.seal(MessageKind::Bye, &Bye { reason: 0 }.encode());
                    udp.send_to(&f, host).await.unwrap();
                    continue;
                }
            };
            let Ok(raw) = crate::wire::frame::decode(me, &buf[..n]) else { continue };
            let Ok(actions) = s.on_frame(&raw, T0 + 1) else { continue };
            for a in actions {
                let reply = match a {
                    Action::Send(_, f) => f,
                    Action::Find(f) if f.user != "nobody" => {
                        let r = FindReply {
                            req: f.req,
                            entry: f.user.into_bytes(),
                            asked: 1,
                            stage: "index".into(),
                            directory: Vec::new(),
                        };
                        s.seal(MessageKind::FindReply, &r.encode())
                    }
                    _ => continue,
                };
                udp.send_to(&reply, host).await.unwrap();
            }
        }
    }

    fn find(user: &str) -> Request {
        Request::Find { user: user.into() }
    }

    #[tokio::test]
    async fn a_request_waits_for_its_own_answer_only() {
        let host = udp().await;
        let (_sn, connected) = supernode(&host).await;
        let shell = Shell::start(host, None, connected);
        // Once the super node's revision is known (2: every answer names its request;
        // until then the core sends lookups one at a time, as revision 1 needs)...
        let k = tokio::time::timeout(WAIT, shell.request(Request::Keepalive { timeout: WAIT })).await.unwrap();
        assert!(matches!(k, Ok(Answer::Observed(_))), "{k:?}");
        // ...a lookup the super node never answers is in flight while two others are made.
        let stuck = shell.request(find("nobody"));
        tokio::pin!(stuck);
        let quick = async {
            let (a, b) = tokio::join!(shell.request(find("bob")), shell.request(find("carol")));
            let k = shell.request(Request::Keepalive { timeout: WAIT }).await;
            (a, b, k)
        };
        let (a, b, k) = tokio::time::timeout(WAIT, async {
            tokio::select! {
                biased;
                r = &mut stuck => panic!("the stuck lookup finished first: {r:?}"),
                r = quick => r,
            }
        })
        .await
        .expect("the answered requests do not wait for the stuck one");
        let entry = |r: OpResult| match r {
            Ok(Answer::Found(f)) => String::from_utf8(f.entry).unwrap(),
            other => panic!("{other:?}"),
        };
        assert_eq!((entry(a), entry(b)), ("bob".to_string(), "carol".to_string()), "each got its own answer");
        assert!(matches!(k, Ok(Answer::Observed(_))), "{k:?}");
        // The stuck one ends at its deadline, not before.
        let started = Instant::now();
        let r = tokio::time::timeout(Duration::from_secs(15), stuck).await.expect("a deadline, not forever");
        assert_eq!(r, Err(RequestError::TimedOut("find")));
        assert!(started.elapsed() > Duration::from_secs(5), "{:?}", started.elapsed());
    }

    #[tokio::test]
    async fn media_reaches_the_calls_while_a_ladder_borrows_port_p() {
        let host = udp().await;
        let host_addr = host.local_addr().unwrap();
        let (_sn, connected) = supernode(&host).await;
        let mut shell = Shell::start(host.clone(), None, connected);
        assert_eq!(shell.link.now(), LinkStatus { epoch: 1, up: true });
        let peer = udp().await;
        let media = [0x4d, 1, 2, 3];

        peer.send_to(&media, host_addr).await.unwrap();
        let got = tokio::time::timeout(WAIT, shell.media.recv()).await.unwrap().unwrap();
        assert_eq!(got, (peer.local_addr().unwrap(), media.to_vec()));

        // Lent: the link is down, requests fail at once; media still goes to the calls,
        // anything else to the ladder.
        let mut port = shell.lend().await;
        assert_eq!(shell.link.now(), LinkStatus { epoch: 1, up: false });
        tokio::time::timeout(WAIT, shell.link.down()).await.expect("down at once");
        assert_eq!(shell.request(find("bob")).await, Err(RequestError::LinkDown));
        peer.send_to(b"\x01hello", host_addr).await.unwrap();
        peer.send_to(&media, host_addr).await.unwrap();
        let ladder = tokio::time::timeout(WAIT, port.inbound.recv()).await.unwrap().unwrap();
        assert_eq!(ladder.1, b"\x01hello");
        let got = tokio::time::timeout(WAIT, shell.media.recv()).await.unwrap().unwrap();
        assert_eq!(got.1, media);

        // Taken back with a new link: the next epoch, and requests are answered again.
        let (_sn2, connected) = supernode(&host).await;
        shell.attach(connected).await;
        assert_eq!(shell.link.now(), LinkStatus { epoch: 2, up: true });
        let k = tokio::time::timeout(WAIT, shell.request(Request::Keepalive { timeout: WAIT })).await.unwrap();
        assert!(matches!(k, Ok(Answer::Observed(_))), "{k:?}");
        assert_eq!(shell.stats().media_dropped.load(Ordering::Relaxed), 0);
    }

    #[tokio::test]
    async fn a_bye_from_the_super_node_ends_the_link_and_fails_what_waits() {
        let host = udp().await;
        let (sn, connected) = supernode(&host).await;
        let shell = Shell::start(host, None, connected);
        let mut link = shell.link.clone();
        let stuck = shell.request(find("nobody"));
        tokio::pin!(stuck);
        // Let the lookup go out first.
        assert!(tokio::time::timeout(Duration::from_millis(200), &mut stuck).await.is_err());
        sn.bye.send(()).await.unwrap();
        tokio::time::timeout(WAIT, link.down()).await.expect("the link goes down");
        assert_eq!(link.now(), LinkStatus { epoch: 1, up: false });
        assert_eq!(tokio::time::timeout(WAIT, stuck).await.unwrap(), Err(RequestError::LinkDown));
        // The super node hears nothing more (no keepalive on a dead link).
        let mut buf = [0u8; 2048];
        assert!(tokio::time::timeout(Duration::from_millis(300), sn.udp.recv_from(&mut buf)).await.is_err());
    }
    #[tokio::test]
    async fn port_p_sends_from_the_socket_of_the_destinations_family() {
        let host = udp().await;
        let (_sn, connected) = supernode(&host).await;
        let Ok(v6) = UdpSocket::bind("[::1]:0").await else {
            // A machine without IPv6 loopback has nothing to test here.
            assert!(std::env::var_os("CI").is_none(), "CI machines have ::1");
            return;
        };
        let v6 = Arc::new(v6);
        let shell = Shell::start(host.clone(), Some(v6.clone()), connected);
        let (peer4, peer6) = (udp().await, UdpSocket::bind("[::1]:0").await.unwrap());
        shell.send_udp(b"\x4d4", peer4.local_addr().unwrap());
        shell.send_udp(b"\x4d6", peer6.local_addr().unwrap());
        let mut buf = [0u8; 16];
        let (n, from) = tokio::time::timeout(WAIT, peer4.recv_from(&mut buf)).await.unwrap().unwrap();
        assert_eq!((&buf[..n], from), (&b"\x4d4"[..], host.local_addr().unwrap()));
        let (n, from) = tokio::time::timeout(WAIT, peer6.recv_from(&mut buf)).await.unwrap().unwrap();
        assert_eq!((&buf[..n], from), (&b"\x4d6"[..], v6.local_addr().unwrap()));
        assert_eq!(shell.stats().udp_dropped.load(Ordering::Relaxed), 0);

        // Without an IPv6 port P, an IPv6 destination is a drop, counted.
        let (_sn, connected) = supernode(&host).await;
        let v4_only = Shell::start(host, None, connected);
        v4_only.send_udp(b"\x4d6", peer6.local_addr().unwrap());
        assert_eq!(v4_only.stats().udp_dropped.load(Ordering::Relaxed), 1);
        assert!(tokio::time::timeout(Duration::from_millis(200), peer6.recv_from(&mut buf)).await.is_err());
    }

    async fn next(events: &mut mpsc::Receiver<(ConnId, TcpEvent)>) -> (ConnId, TcpEvent) {
        tokio::time::timeout(WAIT, events.recv()).await.expect("an event in time").expect("the queue is open")
    }

    #[tokio::test]
    async fn a_connection_the_core_asks_for_carries_frames_both_ways_in_its_framing() {
        for framing in [Framing::Wire, Framing::Relay] {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            let addr = listener.local_addr().unwrap();
            let (tx, mut events) = mpsc::channel(16);
            let conn = ConnId(7);
            let out = spawn_conn(conn, Err(addr), framing, tx);
            let (mut peer, _) = listener.accept().await.unwrap();
            assert!(matches!(next(&mut events).await, (c, TcpEvent::Connected { .. }) if c == conn));
            // Ours out: a u16 length, then the bytes, in both framings.
            out.send(b"\x4dvoice".to_vec()).await.unwrap();
            let mut got = [0u8; 8];
            peer.read_exact(&mut got).await.unwrap();
            assert_eq!(&got, b"\x00\x06\x4dvoice", "{framing:?}");
            // Theirs in, one frame per event (of lengths a wire frame can have).
            let (a, b) = (vec![1u8; 40], vec![2u8; 41]);
            peer.write_all(&[&[0, 40][..], &a, &[0, 41], &b].concat()).await.unwrap();
            assert_eq!(next(&mut events).await, (conn, TcpEvent::Frame(a)));
            assert_eq!(next(&mut events).await, (conn, TcpEvent::Frame(b)));
            // Their end closes: so does ours, once.
            drop(peer);
            assert_eq!(next(&mut events).await, (conn, TcpEvent::Closed));
            drop(out);
        }
        // Nobody listening: the attempt fails, and says so.
        let closed = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = closed.local_addr().unwrap();
        drop(closed);
        let (tx, mut events) = mpsc::channel(16);
        let _out = spawn_conn(ConnId(8), Err(addr), Framing::Relay, tx);
        assert!(matches!(next(&mut events).await, (ConnId(8), TcpEvent::ConnectFailed(_))));
    }

    #[tokio::test]
    async fn a_relay_frame_of_a_bad_length_closes_the_connection() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let (tx, mut events) = mpsc::channel(16);
        let _out = spawn_conn(ConnId(9), Err(listener.local_addr().unwrap()), Framing::Relay, tx);
        let (mut peer, _) = listener.accept().await.unwrap();
        assert!(matches!(next(&mut events).await, (_, TcpEvent::Connected { .. })));
        let too_long = u16::try_from(RELAYED_LEN_MAX + 1).unwrap().to_be_bytes();
        peer.write_all(&too_long).await.unwrap();
        assert_eq!(next(&mut events).await, (ConnId(9), TcpEvent::Closed));
    }
}
