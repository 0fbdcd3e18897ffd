//! The super node's client of the login servers' revocation list: a task that asks for
//! a newer list every `fetch_interval_secs` (and when told to, [`FetchNow`]), verifies
//! it and adopts it into the node's [`crate::crypto::TrustedKeys`]. From there the
//! cluster agent spreads it to the other members and drops revoked ones, the handshake
//! refuses revoked hosts, and the index starts its verified-entry cache over.
//!
//! Each query is signed with this node's credential key (`RevocationQuery`), so the
//! login server answers only super nodes (and hosts) it certified. Round trips run in
//! this task, never in an actor's handler.

use super::handshake::Identity;
use crate::wire::frame;
use crate::wire::message::{MessageKind, RevocationQuery};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// How long one login server has to answer.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(2);

/// Revocation list settings (`[supernode.revocation]`).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RevocationConfig {
    /// Login servers to ask (empty: those of `supernode.index.directory`).
    pub login_servers: Vec<SocketAddr>,
    /// How often to ask them for a newer list.
    pub fetch_interval_secs: u64,
    /// How often to tell one random member the version held (the list spreads from it).
    pub gossip_interval_ms: u64,
}

impl Default for RevocationConfig {
    fn default() -> Self {
        Self { login_servers: Vec::new(), fetch_interval_secs: 60, gossip_interval_ms: 1000 }
    }
}

/// Asks the fetch task to ask the login servers now (an operator, or a test).
#[derive(Debug, Clone, Default)]
pub struct FetchNow(Arc<tokio::sync::Notify>);

impl FetchNow {
    /// Wakes the task; a wake-up while it is busy is kept for its next round.
    pub fn fetch(&self) {
        self.0.notify_one();
    }
}

/// Starts the fetch task for `identity`'s node; it stops when `shutdown` fires.
pub fn start(
    identity: Identity,
    servers: Vec<SocketAddr>,
    interval: Duration,
    shutdown: CancellationToken,
) -> FetchNow {
    let now = FetchNow::default();
    let wake = now.clone();
    let identity = Arc::new(identity);
    tokio::spawn(async move {
        // (server, reason) pairs logged already: a login server that keeps refusing, or
        // serving a list that does not verify, is logged once, then only counted.
        let mut logged = std::collections::HashSet::new();
        loop {
            fetch_once(&identity, &servers, &mut logged).await;
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = tokio::time::sleep(interval) => {}
                _ = wake.0.notified() => {}
            }
        }
    });
    now
}

/// The signed query frame for the login server at `to`, holding version `have`.
pub fn query(identity: &Identity, to: SocketAddr, have: u64, now: u64) -> Vec<u8> {
    let mut q =
        RevocationQuery { have, timestamp: now, credential: identity.credential.encode(), signature: Vec::new() };
    q.signature = identity.key.sign_pss(&q.signed_message(to));
    frame::encode_plain(to, MessageKind::RevocationQuery, 0, &q.encode())
}

/// Asks each login server in turn until one answers; adopts a newer list.
async fn fetch_once(
    identity: &Arc<Identity>,
    servers: &[SocketAddr],
    logged: &mut std::collections::HashSet<(SocketAddr, &'static str)>,
) {
    let node = identity.name.as_str();
    for &addr in servers {
        let have = identity.trusted.revoked().version();
        let id = identity.clone();
        // RSA signing: off the event loop.
        let Ok(q) = tokio::task::spawn_blocking(move || query(&id, addr, have, crate::unix_now())).await else {
            return;
        };
        let answer = tokio::time::timeout(ANSWER_TIMEOUT, async {
            let mut s = tokio::net::TcpStream::connect(addr).await.ok()?;
            crate::net::tcp::write_frame(&mut s, &q).await.ok()?;
            crate::net::tcp::read_frame(&mut s).await.ok()?
        })
        .await
        .ok()
        .flatten();
        let Some(bytes) = answer else {
            tracing::debug!(node, %addr, "revocation list: no answer");
            continue;
        };
        let Ok(raw) = frame::decode(addr, &bytes) else { continue };
        if raw.header.kind != MessageKind::RevocationReply {
            let error = crate::wire::message::ErrorMsg::decode(raw.payload).ok();
            let reason = error.as_ref().map_or("unexpected_answer", |e| e.code.label());
            let detail = error.map(|e| e.detail).unwrap_or_default();
            crate::cluster::revocation::record(node, "login_server", "refused", 0);
            if logged.len() < 64 && logged.insert((addr, reason)) {
                tracing::warn!(node, %addr, reason, %detail, "the login server refused a revocation query (further refusals for this reason are only counted)");
            }
            continue;
        }
        if raw.payload.is_empty() {
            // Nothing newer than what this node holds.
            crate::cluster::revocation::record(node, "login_server", "current", 0);
            return;
        }
        let payload = raw.payload.to_vec();
        let trusted = identity.trusted.clone();
        // A signature check: off the event loop too.
        let adopted = tokio::task::spawn_blocking(move || trusted.adopt_revocations(&payload)).await;
        match adopted {
            Ok(Ok(list)) => crate::cluster::revocation::record(node, "login_server", "adopted", list.version),
            Ok(Err(e)) => {
                if logged.len() < 64 && logged.insert((addr, e.label())) {
                    tracing::warn!(node, %addr, error = %e, "the login server's revocation list was refused (further ones for this reason are only counted)");
                }
                crate::cluster::revocation::record(node, "login_server", e.label(), 0);
            }
            Err(_) => {}
        }
        return;
    }
}
