//! The login server's TCP shell: accepts connections, reads frames, runs the
//! [`LoginService`] on the blocking pool (RSA and SQLite block), writes the reply.

use super::service::{Handled, LoginService, Reply};
use crate::crypto::aead::label;
use crate::net::source::RefusalLog;
use crate::net::tcp;
use crate::wire::frame::{self, Direction};
use crate::wire::message::{ErrorCode, MessageKind};
use metrics::{Unit, counter, describe_counter, describe_histogram, gauge, histogram};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

/// How long a connection may stay silent.
const IDLE_TIMEOUT: Duration = Duration::from_secs(15);

/// Connection limits of a login server.
#[derive(Debug, Clone, Copy)]
pub struct ConnectionLimits {
    /// Most connections at once.
    pub total: usize,
    /// Most connections at once from one source (IPv4 address or IPv6 /64).
    pub per_source: usize,
    /// Longest a connection may live, however busy: a host needs one or two requests.
    pub lifetime: Duration,
}

impl Default for ConnectionLimits {
    fn default() -> Self {
        Self { total: 4096, per_source: 64, lifetime: Duration::from_secs(60) }
    }
}

/// A bound login server.
pub struct LoginServer {
    service: Arc<LoginService>,
    listener: TcpListener,
    addr: SocketAddr,
    limits: ConnectionLimits,
    refusals: Arc<RefusalLog>,
}

fn describe() {
    describe_counter!("confab_login_requests_total", "Login-server requests by kind and outcome");
    describe_histogram!(
        "confab_login_handshake_duration_seconds",
        Unit::Seconds,
        "Time to handle one register, login or buddy request"
    );
    describe_counter!("confab_login_frames_rejected_total", "Frames the login server could not decode, by reason");
    describe_counter!(
        "confab_login_revocation_queries_total",
        "Revocation-list queries by outcome (answered, or the refusal's error code)"
    );
    describe_counter!(
        "confab_login_buddy_ops_total",
        "Buddy-list operations by operation (unknown: not decoded) and outcome"
    );
}

impl LoginServer {
    /// Binds `bind`; `public` is the address hosts dial (keys the header obfuscation),
    /// defaulting to the bound address.
    pub async fn bind(
        service: Arc<LoginService>,
        bind: SocketAddr,
        public: Option<SocketAddr>,
        limits: ConnectionLimits,
    ) -> std::io::Result<Self> {
        let listener = TcpListener::bind(bind)
            .await
            .map_err(|e| std::io::Error::new(e.kind(), format!("bind login server TCP {bind}: {e}")))?;
        let local = listener.local_addr()?;
        let addr = match public {
            Some(p) => SocketAddr::new(p.ip(), if p.port() == 0 { local.port() } else { p.port() }),
            None if local.ip().is_unspecified() => {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::InvalidInput,
                    "login_server.public_addr is required when listening on a wildcard address",
                ));
            }
            None => local,
        };
        describe();
        Ok(Self { service, listener, addr, limits, refusals: Arc::new(RefusalLog::default()) })
    }

    /// The address hosts dial.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Serves until `shutdown` fires.
    pub async fn run(self, shutdown: CancellationToken) {
        tracing::info!(addr = %self.addr, "login server listening");
        let slots = tcp::Slots::new("login", self.addr, self.limits.total, self.limits.per_source);
        let (service, addr, lifetime) = (self.service.clone(), self.addr, self.limits.lifetime);
        let refusals = self.refusals.clone();
        tcp::serve(&self.listener, slots, shutdown.clone(), |stream, peer| {
            let (service, shutdown, refusals) = (service.clone(), shutdown.clone(), refusals.clone());
            async move {
                tokio::select! {
                    _ = shutdown.cancelled() => {}
                    _ = tokio::time::sleep(lifetime) => {}
                    _ = connection(service, stream, peer, addr, &refusals) => {}
                }
            }
        })
        .await;
        tracing::info!("login server stopped");
    }
}

fn reject(
    refusals: &RefusalLog,
    listener: SocketAddr,
    reason: &'static str,
    peer: SocketAddr,
    detail: &dyn std::fmt::Display,
) {
    counter!("confab_login_frames_rejected_total", "addr" => listener.to_string(), "reason" => reason).increment(1);
    if refusals.first(peer.ip().into(), reason) {
        tracing::info!(%peer, reason, %detail, "login server rejected a frame (further ones from this source for this reason are only counted)");
    }
}

async fn connection(
    service: Arc<LoginService>,
    mut stream: TcpStream,
    peer: SocketAddr,
    listener: SocketAddr,
    refusals: &RefusalLog,
) {
    let _ = stream.set_nodelay(true);
    loop {
        let bytes = match tokio::time::timeout(IDLE_TIMEOUT, tcp::read_frame(&mut stream)).await {
            Ok(Ok(Some(b))) => b,
            Ok(Ok(None)) | Err(_) => return,
            Ok(Err(e)) => {
                reject(refusals, listener, "bad_stream", peer, &e);
                return;
            }
        };
        let (kind, payload) = match frame::decode(listener, &bytes) {
            Ok(raw) => (raw.header.kind, raw.payload.to_vec()),
            Err(e) => {
                reject(refusals, listener, e.reason(), peer, &e);
                return;
            }
        };
        if matches!(kind, MessageKind::SeenQuery | MessageKind::RevocationQuery) {
            let svc = service.clone();
            let now = crate::unix_now();
            let Ok(answer) = tokio::task::spawn_blocking(move || match kind {
                MessageKind::SeenQuery => svc.seen(now, peer.ip(), listener, &payload),
                _ => svc.revocation_query(now, peer.ip(), listener, &payload),
            })
            .await
            else {
                return;
            };
            let (answer_kind, metric) = match kind {
                MessageKind::SeenQuery => (MessageKind::SeenReply, "confab_login_directory_queries_total"),
                _ => (MessageKind::RevocationReply, "confab_login_revocation_queries_total"),
            };
            let (outcome, reply) = match answer {
                Ok(body) => ("answered", frame::encode_plain(listener, answer_kind, 0, &body)),
                Err(e) => {
                    if refusals.first(peer.ip().into(), e.code.label()) {
                        tracing::info!(%peer, kind = kind.label(), outcome = e.code.label(), detail = %e.detail, "login server refused a query (further ones from this source for this reason are only counted)");
                    }
                    (e.code.label(), frame::encode_plain(listener, MessageKind::Error, 0, &e.encode()))
                }
            };
            counter!(metric, "addr" => listener.to_string(), "outcome" => outcome).increment(1);
            if kind == MessageKind::RevocationQuery {
                let (version, entries) = service.signed_revocations();
                gauge!("confab_revocation_list_version", "addr" => listener.to_string()).set(version as f64);
                gauge!("confab_revocation_list_entries", "addr" => listener.to_string()).set(entries as f64);
            }
            if tcp::write_frame(&mut stream, &reply).await.is_err() {
                return;
            }
            continue;
        }
        let started = Instant::now();
        let svc = service.clone();
        let now = crate::unix_now();
        let handled = match tokio::task::spawn_blocking(move || svc.handle(now, peer.ip(), kind, &payload)).await {
            Ok(h) => h,
            Err(e) => {
                tracing::error!(error = %e, "login request task failed");
                return;
            }
        };
        let kind_label = handled.kind.map(MessageKind::label).unwrap_or("other");
        // Labelled by the listener, as the super nodes' metrics are by node: one process (a
        // test binary, a local network) may hold several login servers.
        let addr = listener.to_string();
        counter!("confab_login_requests_total", "addr" => addr.clone(), "kind" => kind_label, "outcome" => handled.outcome)
            .increment(1);
        histogram!("confab_login_handshake_duration_seconds", "addr" => addr.clone(), "kind" => kind_label)
            .record(started.elapsed().as_secs_f64());
        let ok = matches!(handled.reply, Reply::Sealed { .. });
        if kind == MessageKind::BuddyRequest {
            let op = handled.op.unwrap_or("unknown");
            counter!("confab_login_buddy_ops_total", "addr" => addr, "op" => op, "outcome" => handled.outcome)
                .increment(1);
            // Buddy operations are routine (a host makes several per login); an owner over
            // its rate would flood the log at info.
            if ok || handled.outcome == ErrorCode::TooManyAttempts.label() {
                tracing::debug!(%peer, op, outcome = handled.outcome, "buddy operation");
            } else if refusals.first(peer.ip().into(), handled.outcome) {
                tracing::info!(%peer, op, outcome = handled.outcome, "login server refused a buddy operation (further ones from this source for this reason are only counted)");
            }
        } else if ok {
            tracing::info!(%peer, outcome = handled.outcome, "login server request");
        } else if refusals.first(peer.ip().into(), handled.outcome) {
            // An attack is one line per source and reason, then only counted.
            tracing::info!(%peer, outcome = handled.outcome, kind = kind_label, "login server refused a request (further ones from this source for this reason are only counted)");
        } else {
            tracing::debug!(%peer, outcome = handled.outcome, kind = kind_label, "login server refused a request");
        }
        if tcp::write_frame(&mut stream, &encode_reply(listener, handled)).await.is_err() {
            return;
        }
    }
}

/// Encodes a handled request's reply as a frame.
pub fn encode_reply(listener: SocketAddr, handled: Handled) -> Vec<u8> {
    match handled.reply {
        Reply::Sealed { kind, body, secret } => {
            let key = secret.derive(label::RESPONDER_TO_INITIATOR);
            frame::encode_sealed(listener, kind, 0, 0, &key, Direction::ToInitiator, &body)
        }
        Reply::Error { error, secret: Some(secret) } => {
            let key = secret.derive(label::RESPONDER_TO_INITIATOR);
            frame::encode_sealed(listener, MessageKind::Error, 0, 0, &key, Direction::ToInitiator, &error.encode())
        }
        Reply::Error { error, secret: None } => frame::encode_plain(listener, MessageKind::Error, 0, &error.encode()),
        Reply::Puzzle { challenge, secret: Some(secret) } => {
            let key = secret.derive(label::RESPONDER_TO_INITIATOR);
            frame::encode_sealed(listener, MessageKind::Puzzle, 0, 0, &key, Direction::ToInitiator, &challenge.encode())
        }
        Reply::Puzzle { challenge, secret: None } => {
            frame::encode_plain(listener, MessageKind::Puzzle, 0, &challenge.encode())
        }
    }
}
