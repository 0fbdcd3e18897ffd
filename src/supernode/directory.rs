//! The super node's client of the login servers' recently-seen directory: the last stage
//! of a lookup that found nothing in the Global Index.
//!
//! The directory answers only super nodes: each query carries this node's login-signed
//! credential and an RSA-PSS signature over the user, the time and the login server it is
//! for (`SeenQuery`), so a stranger cannot ask whether a user exists or where they were.

use super::handshake::Identity;
use crate::crypto::TrustedKeys;
use crate::wire::frame;
use crate::wire::message::{MessageKind, SeenQuery, SeenRecord};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

/// How long one login server has to answer.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(2);

/// Asks the directory on behalf of one super node.
#[derive(Debug, Clone)]
pub struct DirectoryClient {
    identity: Arc<Identity>,
    servers: Vec<SocketAddr>,
}

impl DirectoryClient {
    /// A client signing as `identity`, asking `servers` in turn.
    pub fn new(identity: Identity, servers: Vec<SocketAddr>) -> Self {
        Self { identity: Arc::new(identity), servers }
    }

    /// The signed query frame for `user`, addressed to the login server at `to`.
    pub fn query(identity: &Identity, to: SocketAddr, user: &str, now: u64) -> Vec<u8> {
        let mut q = SeenQuery {
            user: user.to_owned(),
            timestamp: now,
            credential: identity.credential.encode(),
            signature: Vec::new(),
        };
        q.signature = identity.key.sign_pss(&q.signed_message(to));
        frame::encode_plain(to, MessageKind::SeenQuery, 0, &q.encode())
    }

    /// Asks each login server in turn about `user`; returns the signed record of a user
    /// that was found or has keys (verified against `trusted`, so a bad answer is not
    /// passed on).
    pub async fn ask(&self, user: String, trusted: TrustedKeys) -> Option<Vec<u8>> {
        for &addr in &self.servers {
            let identity = self.identity.clone();
            let u = user.clone();
            // RSA signing: off the actor's thread.
            let Ok(query) =
                tokio::task::spawn_blocking(move || Self::query(&identity, addr, &u, crate::unix_now())).await
            else {
                continue;
            };
            let answer = tokio::time::timeout(ANSWER_TIMEOUT, async {
                let mut s = tokio::net::TcpStream::connect(addr).await.ok()?;
                crate::net::tcp::write_frame(&mut s, &query).await.ok()?;
                crate::net::tcp::read_frame(&mut s).await.ok()?
            })
            .await
            .ok()
            .flatten();
            let Some(bytes) = answer else { continue };
            let Ok(raw) = frame::decode(addr, &bytes) else { continue };
            if raw.header.kind != MessageKind::SeenReply {
                tracing::debug!(%addr, kind = raw.header.kind.label(), "the directory refused a query");
                continue;
            }
            if let Ok(rec) = SeenRecord::decode(raw.payload)
                && rec.user == user
                && rec.verify(&trusted)
            {
                // A user who never logged in has no last sighting, but may have keys.
                return (rec.found || rec.user_keys.is_some()).then(|| raw.payload.to_vec());
            }
        }
        None
    }
}
