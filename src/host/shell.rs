//! The host's driver: one task per session that owns port P (IPv4, and IPv6 for media),
//! the TCP connections, the calls' extra sockets and the timer, and drives the
//! [`HostCore`] by its contract: after each input, drain every output; then sleep until
//! `poll_timeout` or the next input. Nothing in a step waits.
//!
//! The core sits behind a lock the session shares ([`Shell`]): a command locks it,
//! submits, and registers a oneshot under the command's [`OpId`] before the lock is let
//! go, so the driver, which delivers completions while it holds the same lock, always
//! finds the waiter. Getters lock and read. No lock is held across an `.await`.
//!
//! Effects: TCP connections (both framings) on tasks of their own, the local address
//! toward a destination, the host cache written to its file (writes that come close
//! together coalesce), the calls' extra sockets (each hearing only its peer), and the
//! login server on a task (`account::buddy`, `account::refresh_revocations`). UDP goes
//! out at once or not at all ([`send_now`]): a full socket buffer drops the datagram,
//! as the network would (counted); a send the system refuses goes back to the core.
//!
//! Port P's media is gated per source (`host::media_gate`) before the core sees it, as
//! the link task gated it; the super node's datagrams and everything else go straight in.

use super::account::LoginServers;
use super::cache::CacheEntry;
use super::core::io::{ConnId, Dest, Effect, EffectId, EffectResult, Framing, LoginAnswer, LoginCall, TcpEvent};
use super::core::pending::{OpId, RequestError};
use super::core::{Command, HostCore, HostError, HostResult, Now};
use super::media_gate::MediaGate;
use super::probe_sockets::{ProbeDatagram, ProbeSockets};
use crate::relay::packet::RELAYED_LEN_MAX;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UdpSocket;
use tokio::sync::{Notify, mpsc, oneshot, watch};

/// Frames queued for one TCP connection; beyond, new ones are dropped and counted.
const TCP_QUEUED_MAX: usize = 256;
/// TCP events and effect results queued for the driver.
const INPUTS_QUEUED_MAX: usize = 1024;
/// How long a TCP connection the core asks for may take to connect.
const TCP_CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
/// A frame not written within this long means the other end stopped reading: the
/// connection is given up rather than left holding its task and buffers.
const TCP_WRITE_TIMEOUT: Duration = Duration::from_secs(3);
/// Host-cache writes closer together than this are made as one.
const CACHE_WRITE_PAUSE: Duration = Duration::from_millis(200);

/// Counters of the driver.
#[derive(Debug, Default)]
pub struct ShellStats {
    /// UDP datagrams dropped because the socket's buffer was full (or another error).
    pub udp_dropped: AtomicU64,
    /// Frames dropped because a TCP connection's queue was full or it was gone.
    pub tcp_dropped: AtomicU64,
    /// Media datagrams on port P the media gate refused.
    pub media_gated: AtomicU64,
    /// Completions whose waiter had gone.
    pub unclaimed: AtomicU64,
    /// The longest step, in microseconds (a lock held this long delays getters too).
    pub step_max_us: AtomicU64,
}

impl ShellStats {
    fn bump(c: &AtomicU64) {
        c.fetch_add(1, Ordering::Relaxed);
    }
}

/// The core and who waits for its commands, under one lock.
struct Inner {
    core: HostCore,
    waiters: HashMap<OpId, oneshot::Sender<HostResult>>,
}

/// What the session and the driver share.
struct Shared {
    inner: Mutex<Inner>,
    /// The driver has work: a command was submitted, a setter changed the core.
    wake: Notify,
    /// The core may have events for the application.
    events: Notify,
    stats: ShellStats,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panic in a step poisons the lock; the core is still the best state there is.
        self.inner.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// What the driver needs besides the core: port P, and what runs the login-server
/// effects and saves the cache.
pub struct ShellIo {
    /// Port P on IPv4.
    pub udp: Arc<UdpSocket>,
    /// Port P on IPv6 (media only), where the host has it; its reader feeds `media6`.
    pub udp6: Option<Arc<UdpSocket>>,
    /// What port P's IPv6 socket received (gated by its reader).
    pub media6: mpsc::Receiver<(SocketAddr, Vec<u8>)>,
    /// The login servers, our credential and key, for `Effect::Login`.
    pub login: LoginIo,
    /// The host cache's file.
    pub cache_path: PathBuf,
    /// The chat history's file (opened at the first chat effect).
    pub history_path: PathBuf,
}

/// What the login-server effects are run with.
#[derive(Clone)]
pub struct LoginIo {
    /// The servers (and the trusted keys, shared with the core: an adopted revocation
    /// list is seen by both).
    pub servers: LoginServers,
    /// Our credential.
    pub credential: crate::crypto::Credential,
    /// Our key.
    pub key: crate::crypto::PrivateKey,
}

/// The session's handle on the core and its driver. Dropping it stops the driver.
pub struct Shell {
    shared: Arc<Shared>,
    driver: tokio::task::JoinHandle<()>,
}

impl Drop for Shell {
    fn drop(&mut self) {
        self.driver.abort();
    }
}

fn now() -> Now {
    Now { mono: Instant::now(), unix_ms: super::now_ms() }
}

impl Shell {
    /// Starts the driver over `core` (just built: its ladder's first outputs wait).
    pub fn start(core: HostCore, io: ShellIo) -> Self {
        let shared = Arc::new(Shared {
            inner: Mutex::new(Inner { core, waiters: HashMap::new() }),
            wake: Notify::new(),
            events: Notify::new(),
            stats: ShellStats::default(),
        });
        let (tcp_tx, tcp_rx) = mpsc::channel(INPUTS_QUEUED_MAX);
        let (effects_tx, effects_rx) = mpsc::channel(INPUTS_QUEUED_MAX);
        let (probe_tx, probe_rx) = mpsc::channel(super::probe_sockets::QUEUED_MAX);
        let (cache_tx, cache_rx) = watch::channel(None);
        let cache_writer = tokio::spawn(write_cache(io.cache_path, cache_rx));
        let d = Driver {
            shared: shared.clone(),
            port: Port { v4: io.udp, v6: io.udp6 },
            conns: HashMap::new(),
            tcp_tx,
            effects_tx,
            probes: HashMap::new(),
            probe_tx,
            gate: MediaGate::default(),
            gate_epoch: Instant::now(),
            cache: cache_tx,
            _cache_writer: AbortOnDrop(cache_writer),
            login: io.login,
            history: HistoryIo { path: io.history_path, db: None },
        };
        let driver = tokio::spawn(d.run(io.media6, tcp_rx, effects_rx, probe_rx));
        Self { shared, driver }
    }

    /// Submits a command; its result comes on the receiver (an error if the driver is
    /// gone). Never waits.
    pub fn submit(&self, c: Command) -> oneshot::Receiver<HostResult> {
        let (tx, rx) = oneshot::channel();
        {
            let mut inner = self.shared.lock();
            let op = inner.core.command(now(), c);
            inner.waiters.insert(op, tx);
        }
        self.shared.wake.notify_one();
        rx
    }

    /// Submits a command and waits for its result.
    pub async fn run(&self, c: Command) -> HostResult {
        self.submit(c).await.unwrap_or(Err(HostError::Request(RequestError::LinkDown)))
    }

    /// Reads the core.
    pub fn read<R>(&self, f: impl FnOnce(&HostCore) -> R) -> R {
        f(&self.shared.lock().core)
    }

    /// Changes the core through one of its setters; the driver then drains what it put
    /// out.
    pub fn change<R>(&self, f: impl FnOnce(&mut HostCore) -> R) -> R {
        let r = f(&mut self.shared.lock().core);
        self.shared.wake.notify_one();
        r
    }

    /// Changes the core through a setter that takes the time of the change.
    pub fn change_now<R>(&self, f: impl FnOnce(&mut HostCore, Now) -> R) -> R {
        let r = f(&mut self.shared.lock().core, now());
        self.shared.wake.notify_one();
        r
    }

    /// The application's next event, if one is waiting.
    pub fn poll_event(&self) -> Option<super::buddies::Event> {
        self.shared.lock().core.poll_event()
    }

    /// Waits until the core may have events (a step ran since the last call).
    pub async fn events_changed(&self) {
        self.shared.events.notified().await;
    }

    /// The driver's counters.
    pub fn stats(&self) -> &ShellStats {
        &self.shared.stats
    }

    /// Stops the driver and waits until it is gone, with the sockets it held.
    pub async fn stop(&mut self) {
        self.driver.abort();
        let _ = (&mut self.driver).await;
    }
}

/// Aborts a task when dropped.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Writes the host cache whenever the core asks, the newest entries only: asks that
/// come while a write is under way or within [`CACHE_WRITE_PAUSE`] of the last make one
/// more write, not one each.
async fn write_cache(path: PathBuf, mut rx: watch::Receiver<Option<Vec<CacheEntry>>>) {
    while rx.changed().await.is_ok() {
        let Some(entries) = rx.borrow_and_update().clone() else { continue };
        let cache = super::cache::HostCache::with_entries(&path, entries);
        match tokio::task::spawn_blocking(move || cache.save()).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::warn!(error = %e, "could not save the host cache"),
            Err(e) => tracing::warn!(error = %e, "the host cache's writer failed"),
        }
        tokio::time::sleep(CACHE_WRITE_PAUSE).await;
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
    fn send(&self, bytes: &[u8], to: SocketAddr) -> std::io::Result<()> {
        match (&self.v6, to) {
            (Some(v6), SocketAddr::V6(_)) => send_to(v6, bytes, to),
            (None, SocketAddr::V6(_)) => Err(std::io::ErrorKind::AddrNotAvailable.into()),
            (_, SocketAddr::V4(_)) => send_to(&self.v4, bytes, to),
        }
    }
}

struct Driver {
    shared: Arc<Shared>,
    port: Port,
    conns: HashMap<ConnId, Conn>,
    tcp_tx: mpsc::Sender<(ConnId, TcpEvent)>,
    effects_tx: mpsc::Sender<(EffectId, EffectResult)>,
    probes: HashMap<[u8; 16], ProbeSockets>,
    probe_tx: mpsc::Sender<ProbeDatagram>,
    gate: MediaGate,
    gate_epoch: Instant,
    cache: watch::Sender<Option<Vec<CacheEntry>>>,
    _cache_writer: AbortOnDrop,
    login: LoginIo,
    history: HistoryIo,
}

/// The chat history, opened when first needed; its writes run on the blocking pool, one
/// at a time (SQLite with `synchronous=FULL`: a write that acknowledges is on disk).
struct HistoryIo {
    path: PathBuf,
    db: Option<Arc<std::sync::Mutex<crate::chat::history::History>>>,
}

/// First bytes of media packets (`call::media`) and relayed packets (`relay::packet`).
fn is_media(first: u8) -> bool {
    super::link::is_media(first)
}

impl Driver {
    async fn run(
        mut self,
        mut media6: mpsc::Receiver<(SocketAddr, Vec<u8>)>,
        mut tcp: mpsc::Receiver<(ConnId, TcpEvent)>,
        mut effects: mpsc::Receiver<(EffectId, EffectResult)>,
        mut probes: mpsc::Receiver<ProbeDatagram>,
    ) {
        let mut buf = vec![0u8; crate::wire::frame::FRAME_LEN_MAX + 1];
        // What the core put out while it was built.
        self.step(|_, _| {});
        loop {
            let wake = self.shared.lock().core.poll_timeout().map(tokio::time::Instant::from_std);
            tokio::select! {
                _ = self.shared.wake.notified() => self.step(|_, _| {}),
                r = self.port.v4.recv_from(&mut buf) => {
                    if let Ok((n, from)) = r {
                        self.on_datagram(from, &buf[..n]);
                    }
                }
                Some((from, bytes)) = media6.recv() => self.step(|c, now| c.handle_datagram(now, from, &bytes)),
                Some(p) = probes.recv() => {
                    self.step(|c, now| c.handle_probe_datagram(now, p.call, p.socket, p.from, &p.bytes))
                }
                Some((conn, ev)) = tcp.recv() => {
                    if matches!(ev, TcpEvent::Closed | TcpEvent::ConnectFailed(_)) {
                        self.conns.remove(&conn);
                    }
                    self.step(|c, now| c.handle_tcp(now, conn, ev));
                }
                Some((id, r)) = effects.recv() => self.step(|c, now| c.handle_effect(now, id, r)),
                _ = tokio::time::sleep_until(wake.unwrap_or_else(tokio::time::Instant::now)), if wake.is_some() => {
                    self.step(|c, now| c.handle_timeout(now));
                }
            }
        }
    }

    fn on_datagram(&mut self, from: SocketAddr, bytes: &[u8]) {
        // A file transfer's datagrams inside a relay header are not media: the relay caps
        // them per session, and the core takes them only through a file call's relay leg.
        if bytes.first().is_some_and(|b| is_media(*b)) && !crate::relay::packet::is_file(bytes) {
            let now_ms = self.gate_epoch.elapsed().as_millis() as u64;
            // Checked by the call it belongs to (it is sealed under the call's keys).
            if !self.gate.admit(from, bytes, now_ms) {
                ShellStats::bump(&self.shared.stats.media_gated);
                return;
            }
        }
        self.step(|c, now| c.handle_datagram(now, from, bytes));
    }

    /// One input under the lock, then every output drained.
    fn step(&mut self, input: impl FnOnce(&mut HostCore, Now)) {
        let started = Instant::now();
        let shared = self.shared.clone();
        let mut inner = shared.lock();
        input(&mut inner.core, now());
        self.drain(&mut inner);
        drop(inner);
        let us = started.elapsed().as_micros() as u64;
        self.shared.stats.step_max_us.fetch_max(us, Ordering::Relaxed);
        self.shared.events.notify_one();
    }

    /// Every output of the core, until none is left.
    fn drain(&mut self, inner: &mut Inner) {
        loop {
            let mut refused = Vec::new();
            while let Some(t) = inner.core.poll_transmit() {
                match t.dest {
                    Dest::Udp(to) => match self.port.send(&t.bytes, to) {
                        Ok(()) => {}
                        Err(e) if refused_by_system(&e) => refused.push((to, e.to_string())),
                        Err(_) => ShellStats::bump(&self.shared.stats.udp_dropped),
                    },
                    Dest::Tcp(conn) => {
                        if self.conns.get(&conn).is_none_or(|c| c.tx.try_send(t.bytes).is_err()) {
                            ShellStats::bump(&self.shared.stats.tcp_dropped);
                        }
                    }
                    Dest::Probe { call, socket, to } => {
                        let sent = self
                            .probes
                            .get(&call)
                            .and_then(|p| p.get(socket))
                            .is_some_and(|s| send_now(s, &t.bytes, to));
                        if !sent {
                            ShellStats::bump(&self.shared.stats.udp_dropped);
                        }
                    }
                }
            }
            while let Some((id, effect)) = inner.core.poll_effect() {
                self.effect(id, effect);
            }
            while let Some((op, result)) = inner.core.poll_completion() {
                let delivered = inner.waiters.remove(&op).is_some_and(|w| w.send(result).is_ok());
                if !delivered {
                    ShellStats::bump(&self.shared.stats.unclaimed);
                }
            }
            if refused.is_empty() {
                return;
            }
            let now = now();
            for (to, why) in refused {
                inner.core.on_send_failed(now, to, &why);
            }
        }
    }

    fn effect(&mut self, id: EffectId, effect: Effect) {
        match effect {
            Effect::TcpConnect { conn, addr, framing } => {
                let tx = spawn_conn(conn, Err(addr), framing, self.tcp_tx.clone());
                self.conns.insert(conn, Conn { tx });
            }
            // Its writer shuts it down once what is queued is written.
            Effect::TcpClose { conn } => {
                self.conns.remove(&conn);
            }
            Effect::LocalIpToward(to) => {
                let ip = super::connect::local_ip_toward(to);
                self.answer(id, EffectResult::LocalIp(ip));
            }
            Effect::SaveCache(entries) => {
                self.cache.send_replace(Some(entries));
            }
            Effect::OpenProbeSockets { call, n, peer } => {
                let sockets = ProbeSockets::open(n, call, peer, &self.probe_tx);
                let opened = u16::try_from(sockets.open_count()).unwrap_or(u16::MAX);
                self.probes.insert(call, sockets);
                self.answer(id, EffectResult::ProbeSocketsOpened { call, opened });
            }
            Effect::CloseProbeSockets { call, keep } => {
                if keep.is_empty() {
                    self.probes.remove(&call);
                } else if let Some(p) = self.probes.get_mut(&call) {
                    p.close_except(&keep);
                }
            }
            Effect::Chat(e) => self.chat_effect(id, e),
            Effect::File(e) => {
                // Hashing a file and writing its folder: on the blocking pool.
                let tx = self.effects_tx.clone();
                tokio::task::spawn_blocking(move || {
                    let r = super::core::files::run_effect(e);
                    let _ = tx.blocking_send((id, EffectResult::File(Box::new(r))));
                });
            }
            Effect::Login(call) => {
                let (login, tx) = (self.login.clone(), self.effects_tx.clone());
                tokio::spawn(async move {
                    let r = match call {
                        LoginCall::Buddy(op) => {
                            super::account::buddy(&login.servers, &login.credential, &login.key, op)
                                .await
                                .map(LoginAnswer::Buddy)
                        }
                        LoginCall::Revocations => Ok(LoginAnswer::Revocations(
                            super::account::refresh_revocations(&login.servers, &login.credential, &login.key).await,
                        )),
                    };
                    let _ = tx.send((id, EffectResult::Login(r))).await;
                });
            }
        }
    }

    /// Runs a history effect on the blocking pool; its answer comes back as an input.
    fn chat_effect(&mut self, id: EffectId, e: super::core::chat::ChatEffect) {
        use super::core::chat::{ChatEffect, ChatEffectResult, SendStatus};
        use crate::chat::history::{History, Recorded};
        let db = match &self.history.db {
            Some(db) => Ok(db.clone()),
            None => match History::open(&self.history.path) {
                Ok(h) => {
                    let db = Arc::new(std::sync::Mutex::new(h));
                    self.history.db = Some(db.clone());
                    Ok(db)
                }
                Err(err) => Err(format!("{}: {err}", self.history.path.display())),
            },
        };
        let tx = self.effects_tx.clone();
        tokio::task::spawn_blocking(move || {
            let answer = |r: ChatEffectResult| {
                let _ = tx.blocking_send((id, EffectResult::Chat(r)));
            };
            let db = match db {
                Ok(db) => db,
                Err(why) => {
                    tracing::warn!(%why, "the chat history does not open");
                    match e {
                        ChatEffect::NextSeq { .. } => answer(ChatEffectResult::Seq(Err(why))),
                        ChatEffect::Record { .. } | ChatEffect::GroupKeep { .. } => {
                            answer(ChatEffectResult::Recorded(Err(why)))
                        }
                        ChatEffect::GroupLoad => answer(ChatEffectResult::GroupLogs(Err(why))),
                        ChatEffect::GroupRecord { .. } => answer(ChatEffectResult::GroupRecorded(Err(why))),
                        ChatEffect::KeysLoad => answer(ChatEffectResult::Keys(Err(why))),
                        ChatEffect::Sent { .. } | ChatEffect::KeysKeep { .. } => {}
                    }
                    return;
                }
            };
            let mut h = db.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            match e {
                ChatEffect::NextSeq { conversation } => {
                    answer(ChatEffectResult::Seq(h.next_seq(&conversation).map_err(|e| e.to_string())));
                }
                ChatEffect::Record { message } => {
                    let r = h.record_received(&message).map(|r| r == Recorded::New).map_err(|e| e.to_string());
                    answer(ChatEffectResult::Recorded(r));
                }
                ChatEffect::Sent { id: msg, inner, status } => {
                    let r = h.record_sent(&inner, msg).and_then(|_| match status {
                        SendStatus::Stored | SendStatus::Delivered => h.mark_stored(msg).map(|_| ()),
                    });
                    if let Err(e) = r {
                        tracing::warn!(error = %e, "a sent chat message could not be written to the history");
                    }
                }
                e @ (ChatEffect::GroupLoad | ChatEffect::GroupKeep { .. } | ChatEffect::GroupRecord { .. }) => {
                    answer(super::core::groups::group_effect(&mut h, e));
                }
                ChatEffect::KeysLoad => answer(ChatEffectResult::Keys(h.peer_keys().map_err(|e| e.to_string()))),
                ChatEffect::KeysKeep { user, keys } => {
                    if let Err(e) = h.remember_keys(&user, &keys, crate::unix_now().saturating_mul(1000)) {
                        tracing::warn!(error = %e, %user, "a peer's keys could not be kept");
                    }
                }
            }
        });
    }

    /// An effect's result, handled in a step of its own (never inside the one that asked).
    fn answer(&self, id: EffectId, r: EffectResult) {
        if self.effects_tx.try_send((id, r)).is_err() {
            tracing::warn!(?id, "an effect's result was dropped: the driver's queue is full");
        }
    }
}

/// Whether a failed send is the system refusing the destination (no route, not
/// permitted), which the core wants to know, rather than a full buffer.
fn refused_by_system(e: &std::io::Error) -> bool {
    !matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::Interrupted)
}

/// Sends one datagram at once, or drops it: false when the socket's buffer is full (or
/// the send failed). The send goes straight to the non-blocking socket, not through
/// tokio's `try_send_to`, which also fails while the reactor has not yet seen the
/// socket writable (a socket just bound, or just used by a ladder's awaited sends).
pub fn send_now(udp: &UdpSocket, bytes: &[u8], to: SocketAddr) -> bool {
    send_to(udp, bytes, to).is_ok()
}

fn send_to(udp: &UdpSocket, bytes: &[u8], to: SocketAddr) -> std::io::Result<()> {
    socket2::SockRef::from(udp).send_to(bytes, &to.into()).map(|_| ())
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
        let mut broken = false;
        while let Some(bytes) = rx.recv().await {
            if !matches!(
                tokio::time::timeout(TCP_WRITE_TIMEOUT, write_framed(&mut w, framing, &bytes)).await,
                Ok(Ok(()))
            ) {
                broken = true;
                break;
            }
        }
        let _ = tokio::time::timeout(TCP_WRITE_TIMEOUT, w.shutdown()).await;
        // The other end may keep the connection open: reading stops with the queue.
        reader.abort();
        // A write that failed or stalled ends the connection for the core too (a queue
        // closed by the core needs no word back).
        if broken {
            let _ = events.send((conn, TcpEvent::Closed)).await;
        }
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

    const WAIT: Duration = Duration::from_secs(5);

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
    async fn a_peer_that_stops_reading_is_given_up_after_the_write_deadline() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let (tx, mut events) = mpsc::channel(16);
        let out = spawn_conn(ConnId(5), Err(listener.local_addr().unwrap()), Framing::Relay, tx);
        // Accepted, then never read: the kernel's buffers fill and the writer stalls.
        let (_peer, _) = listener.accept().await.unwrap();
        assert!(matches!(next(&mut events).await, (_, TcpEvent::Connected { .. })));
        let filler = tokio::spawn(async move {
            let frame = vec![0x50; RELAYED_LEN_MAX];
            while out.send(frame.clone()).await.is_ok() {}
        });
        let closed = tokio::time::timeout(Duration::from_secs(60), events.recv()).await;
        filler.abort();
        assert_eq!(closed.expect("a stalled connection is given up").unwrap(), (ConnId(5), TcpEvent::Closed));
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
