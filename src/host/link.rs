//! The host's link to its super node, run by one background task.
//!
//! The task owns the socket and the session keys: it seals what the host sends, opens
//! what arrives, keeps the session alive with keepalives, and sorts arrivals into
//! answers (for the request waiting on one) and notices (from other hosts, pushed at any
//! time). A host that waits for nothing still stays connected. When the super node is
//! gone ([`super::liveness`] decides) the task ends, and the session looks for another.

use super::connect::{Connected, Link};
use super::handshake::ClientSession;
use super::liveness::{Liveness, Verdict};
use crate::wire::MessageKind;
use std::net::SocketAddr;
use std::time::Duration;
use tokio::sync::{mpsc, oneshot};

/// Answers queued for a request; older ones are dropped, a request drains them first.
const ANSWERS_QUEUED_MAX: usize = 64;
/// Media datagrams queued for the call in progress (a second and a half of 20 ms frames
/// from both directions and the probes); beyond, new ones are dropped as a full socket
/// buffer would.
const MEDIA_QUEUED_MAX: usize = 256;
/// Notices queued for the application; when a host does not read them, newer ones are
/// dropped (presence is repeated at every refresh, list changes are read from the server).
const NOTICES_QUEUED_MAX: usize = 256;

enum Command {
    Send(MessageKind, Vec<u8>),
    Bye(oneshot::Sender<()>),
    /// Ask the super node now; it must answer within a second.
    Check,
    /// Whether a call has media (the keepalive pace).
    InCall(bool),
}

/// The calls' media queue: datagrams on port P (and from relay legs over TCP) that look
/// like media. It outlives a link, so that a relay leg connected before a failover keeps
/// delivering after it.
struct MediaQueue {
    rx: mpsc::Receiver<(SocketAddr, Vec<u8>)>,
    tx: mpsc::Sender<(SocketAddr, Vec<u8>)>,
}

impl Default for MediaQueue {
    fn default() -> Self {
        let (tx, rx) = mpsc::channel(MEDIA_QUEUED_MAX);
        Self { rx, tx }
    }
}

/// The host's end of the link task.
pub struct LinkHandle {
    commands: mpsc::Sender<Command>,
    /// Sealed answers from the super node, opened.
    pub answers: mpsc::Receiver<(MessageKind, Vec<u8>)>,
    /// Notice bodies from other hosts.
    pub notices: mpsc::Receiver<Vec<u8>>,
    /// Datagrams on port P from anyone but the super node that look like media or relay
    /// packets (their first byte), with their source: the calls' media path.
    pub media: mpsc::Receiver<(SocketAddr, Vec<u8>)>,
    /// The sending end of `media`, for media that arrives another way (a relay leg over
    /// TCP).
    pub media_in: mpsc::Sender<(SocketAddr, Vec<u8>)>,
    /// Port P's UDP socket, for sending media (None when the link is TCP).
    pub udp: Option<std::sync::Arc<tokio::net::UdpSocket>>,
    task: tokio::task::JoinHandle<()>,
    /// The keepalive pace last asked for (a call has media).
    in_call: bool,
}

impl Drop for LinkHandle {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl LinkHandle {
    /// Starts the task over an established connection.
    pub fn start(connected: Connected) -> Self {
        Self::start_with(connected, MediaQueue::default())
    }

    /// Moves the link to another super node: this task stops, a new one starts over
    /// `connected` and takes over the media queue (relay legs over TCP feed it, and they
    /// outlive the super node we lost when their relay is elsewhere).
    pub fn replace(&mut self, connected: Connected) {
        self.stop();
        let rx = std::mem::replace(&mut self.media, mpsc::channel(1).1);
        *self = Self::start_with(connected, MediaQueue { rx, tx: self.media_in.clone() });
    }

    fn start_with(connected: Connected, media: MediaQueue) -> Self {
        let (commands, rx) = mpsc::channel(64);
        let (answers_tx, answers) = mpsc::channel(ANSWERS_QUEUED_MAX);
        let (notices_tx, notices) = mpsc::channel(NOTICES_QUEUED_MAX);
        let MediaQueue { rx: media, tx: media_tx } = media;
        let keepalive = Duration::from_secs(u64::from(connected.session.welcome.keepalive_secs.max(1)));
        let udp = match &connected.link {
            Link::Udp(s) => Some(s.clone()),
            Link::Tcp(_) => None,
        };
        let media_in = media_tx.clone();
        let queues = Queues { answers: answers_tx, notices: notices_tx, media: media_tx };
        let task = tokio::spawn(run(connected.session, connected.link, rx, queues, keepalive));
        Self { commands, answers, notices, media, media_in, udp, task, in_call: false }
    }

    /// Asks the super node at once whether it is there (a call's media went silent): the
    /// link ends if nothing answers within a second. Never waits.
    pub fn check(&self) {
        let _ = self.commands.try_send(Command::Check);
    }

    /// Keeps the keepalive pace of a call while `on` (a call has media). Never waits; a
    /// full command queue leaves the pace as it was, and the next call of this tries again.
    pub fn set_in_call(&mut self, on: bool) {
        if on != self.in_call && self.commands.try_send(Command::InCall(on)).is_ok() {
            self.in_call = on;
        }
    }

    /// Queues one message for the super node; false if the link is gone.
    pub async fn send(&self, kind: MessageKind, body: Vec<u8>) -> bool {
        self.commands.send(Command::Send(kind, body)).await.is_ok()
    }

    /// Says goodbye and closes the link (waits at most a second).
    pub async fn bye(&self) {
        let (tx, rx) = oneshot::channel();
        if self.commands.send(Command::Bye(tx)).await.is_ok() {
            let _ = tokio::time::timeout(Duration::from_secs(1), rx).await;
        }
    }

    /// Whether the task still runs (false once the super node closed the link).
    pub fn is_up(&self) -> bool {
        !self.task.is_finished()
    }

    /// Stops the task at once (the super node is gone; no goodbye).
    pub fn stop(&self) {
        self.task.abort();
    }
}

/// Where the link task sorts what arrives.
struct Queues {
    answers: mpsc::Sender<(MessageKind, Vec<u8>)>,
    notices: mpsc::Sender<Vec<u8>>,
    media: mpsc::Sender<(SocketAddr, Vec<u8>)>,
}

/// First bytes of media packets (`call::media`) and relayed packets (`relay::packet`).
pub(super) fn is_media(first: u8) -> bool {
    matches!(first, 0x4d | 0x50 | 0x51 | 0x52)
}

async fn run(
    mut session: ClientSession,
    link: Link,
    mut commands: mpsc::Receiver<Command>,
    queues: Queues,
    keepalive: Duration,
) {
    let Queues { answers, notices, media } = queues;
    let addr = session.addr;
    let (udp, mut tcp_write, mut inbound) = match link {
        Link::Udp(s) => (Some(s), None, None),
        Link::Tcp(s) => {
            // Reading a frame is not cancel-safe, so a reader task of its own feeds a queue.
            let (mut r, w) = s.into_split();
            let (tx, rx) = mpsc::channel(64);
            tokio::spawn(async move {
                while let Ok(Some(f)) = crate::net::tcp::read_frame(&mut r).await {
                    if tx.send(f).await.is_err() {
                        break;
                    }
                }
            });
            (None, Some(w), Some(rx))
        }
    };
    let now = || tokio::time::Instant::now().into_std();
    let mut liveness = Liveness::new(keepalive, now());
    let mut buf = vec![0u8; crate::wire::frame::FRAME_LEN_MAX + 1];
    // What port P lets through to the calls (media, a rate per source).
    let (mut gate, gate_epoch) = (super::media_gate::MediaGate::default(), std::time::Instant::now());
    loop {
        let wake = tokio::time::Instant::from_std(liveness.next_wake());
        let frame: Option<Vec<u8>> = tokio::select! {
            cmd = commands.recv() => {
                let (frame, done) = match cmd {
                    Some(Command::Send(kind, body)) => (session.seal(kind, &body), None),
                    Some(Command::Bye(done)) => (session.bye(), Some(done)),
                    Some(Command::Check) => {
                        if liveness.check(now()) {
                            let f = session.keepalive();
                            send(&udp, &mut tcp_write, addr, &f).await;
                        }
                        continue;
                    }
                    Some(Command::InCall(on)) => {
                        liveness.set_in_call(on, now());
                        continue;
                    }
                    None => return,
                };
                send(&udp, &mut tcp_write, addr, &frame).await;
                if let Some(done) = done {
                    if let Some(w) = &mut tcp_write {
                        let _ = tokio::io::AsyncWriteExt::shutdown(w).await;
                    }
                    let _ = done.send(());
                    return;
                }
                None
            }
            _ = tokio::time::sleep_until(wake) => match liveness.on_wake(now()) {
                Verdict::Wait => None,
                Verdict::Keepalive => {
                    let f = session.keepalive();
                    send(&udp, &mut tcp_write, addr, &f).await;
                    None
                }
                Verdict::Gone(why) => {
                    tracing::warn!(supernode = %addr, %why, "the super node stopped answering");
                    return;
                }
            },
            r = recv_udp(&udp, &mut buf, addr, &media, &mut gate, gate_epoch) => r,
            f = recv_tcp(&mut inbound) => match f {
                Some(f) => Some(f),
                // The super node closed the TCP connection: the link is gone.
                None => return,
            },
        };
        let Some(frame) = frame else { continue };
        let Ok((kind, body)) = session.open(&frame) else { continue };
        liveness.heard(now());
        match kind {
            MessageKind::Notice => {
                let _ = notices.try_send(body);
            }
            MessageKind::Bye => {
                tracing::info!(supernode = %addr, "the super node ended the session");
                return;
            }
            _ => {
                let _ = answers.try_send((kind, body));
            }
        }
    }
}

async fn send(
    udp: &Option<std::sync::Arc<tokio::net::UdpSocket>>,
    tcp: &mut Option<tokio::net::tcp::OwnedWriteHalf>,
    addr: SocketAddr,
    frame: &[u8],
) {
    if let Some(s) = udp {
        let _ = s.send_to(frame, addr).await;
    } else if let Some(w) = tcp {
        let _ = crate::net::tcp::write_frame(w, frame).await;
    }
}

async fn recv_udp(
    udp: &Option<std::sync::Arc<tokio::net::UdpSocket>>,
    buf: &mut [u8],
    addr: SocketAddr,
    media: &mpsc::Sender<(SocketAddr, Vec<u8>)>,
    gate: &mut super::media_gate::MediaGate,
    epoch: std::time::Instant,
) -> Option<Vec<u8>> {
    let Some(s) = udp else { return std::future::pending().await };
    let got = s.recv_from(buf).await;
    let now_ms = epoch.elapsed().as_millis() as u64;
    match got {
        Ok((n, from)) if from == addr => Some(buf[..n].to_vec()),
        Ok((n, from)) if gate.admit(from, &buf[..n], now_ms) => {
            // Checked by the call it belongs to (it is sealed under the call's keys).
            let _ = media.try_send((from, buf[..n].to_vec()));
            None
        }
        _ => None,
    }
}

async fn recv_tcp(inbound: &mut Option<mpsc::Receiver<Vec<u8>>>) -> Option<Vec<u8>> {
    match inbound {
        Some(rx) => rx.recv().await,
        None => std::future::pending().await,
    }
}
