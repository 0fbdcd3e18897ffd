//! Talking to the login server: register an account, log in for a credential, change
//! the buddy list.

use crate::buddy::op::SignedOp;
use crate::buddy::{BuddyAnswer, BuddyOp};
use crate::crypto::aead::{SessionSecret, label};
use crate::crypto::credential::{Credential, CredentialKind, TrustedKeys};
use crate::crypto::password::SharedSecret;
use crate::crypto::user::UserPublicKeys;
use crate::crypto::{PrivateKey, PublicKey, envelope};
use crate::net::tcp;
use crate::wire::frame::{self, Direction};
use crate::wire::message::{
    AccountBody, Envelope, EnvelopedRequest, ErrorCode, ErrorMsg, LoginReply, MessageKind, PuzzleChallenge,
    RegisterReply,
};
use std::net::SocketAddr;
use std::time::Duration;

/// Why a login-server request failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AccountError {
    /// The login server said no.
    #[error("{}", describe(.0))]
    Refused(ErrorMsg),
    /// No login server could be reached.
    #[error("no login server answered: {0}")]
    Unreachable(String),
    /// The answer broke the protocol or did not verify.
    #[error("login server {addr}: {what}")]
    Protocol {
        /// The login server.
        addr: SocketAddr,
        /// What was wrong.
        what: String,
    },
}

impl AccountError {
    /// The login server's error code, if it refused.
    pub fn code(&self) -> Option<ErrorCode> {
        match self {
            Self::Refused(e) => Some(e.code),
            _ => None,
        }
    }
}

fn describe(e: &ErrorMsg) -> String {
    match e.code {
        ErrorCode::TooManyAttempts => format!("too many failed attempts; try again in {} s", e.retry_after_secs),
        ErrorCode::ClockSkew => format!("this machine's clock differs too much from the login server's ({})", e.detail),
        _ => e.detail.clone(),
    }
}

/// How to reach the login servers.
#[derive(Debug, Clone)]
pub struct LoginServers {
    /// Their addresses, tried in order.
    pub addrs: Vec<SocketAddr>,
    /// The login-server keys we trust (requests are wrapped under one of them).
    pub trusted: TrustedKeys,
    /// Per-request timeout.
    pub timeout: Duration,
}

/// Sends one enveloped request to `addr` and returns the reply's kind and body, opened
/// with the envelope's `secret` when sealed.
async fn exchange(
    addr: SocketAddr,
    kind: MessageKind,
    request: &EnvelopedRequest,
    secret: &SessionSecret,
    timeout: Duration,
) -> Result<(MessageKind, Vec<u8>), AccountError> {
    let io = |e: std::io::Error| AccountError::Unreachable(format!("{addr}: {e}"));
    let request = frame::encode_plain(addr, kind, 0, &request.encode());
    let reply = tokio::time::timeout(timeout, async {
        let mut stream = tokio::net::TcpStream::connect(addr).await?;
        stream.set_nodelay(true)?;
        tcp::write_frame(&mut stream, &request).await?;
        tcp::read_frame(&mut stream)
            .await
            .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e.to_string()))
    })
    .await
    .map_err(|_| AccountError::Unreachable(format!("{addr}: timed out after {timeout:?}")))?
    .map_err(io)?
    .ok_or_else(|| AccountError::Unreachable(format!("{addr}: connection closed without an answer")))?;
    let raw = frame::decode(addr, &reply).map_err(|e| AccountError::Protocol { addr, what: e.to_string() })?;
    let body = if raw.header.sealed {
        raw.open(&secret.derive(label::RESPONDER_TO_INITIATOR), Direction::ToInitiator)
            .map_err(|_| AccountError::Protocol { addr, what: "reply does not open with our session key".into() })?
    } else {
        raw.payload.to_vec()
    };
    Ok((raw.header.kind, body))
}

/// Sends one request, trying each login server and each trusted key in turn: a server
/// that cannot open an envelope for one key may hold another. `seal` builds a fresh
/// envelope for a key (a fresh nonce each time, or the server would see a replay).
async fn request(
    servers: &LoginServers,
    kind: MessageKind,
    seal: impl Fn(&PublicKey) -> (Envelope, SessionSecret),
) -> Result<(SocketAddr, MessageKind, Vec<u8>), AccountError> {
    let mut errors = Vec::new();
    for &addr in &servers.addrs {
        let mut puzzles = 0;
        let mut keys = servers.trusted.keys().iter();
        let mut key = keys.next();
        let mut challenge: Option<PuzzleChallenge> = None;
        while let Some(k) = key {
            let (envelope, secret) = seal(k);
            let solution = match challenge.take() {
                Some(c) => Some(solve(addr, c, envelope.wrapped.clone()).await?),
                None => None,
            };
            let request = EnvelopedRequest { envelope, solution };
            match exchange(addr, kind, &request, &secret, servers.timeout).await {
                Ok((MessageKind::Puzzle, b)) => {
                    // The server wants work before it looks at this request (its user is
                    // under attack, or the server is in a surge): solve and ask again.
                    puzzles += 1;
                    if puzzles > PUZZLES_PER_REQUEST_MAX {
                        return Err(AccountError::Protocol {
                            addr,
                            what: "the login server keeps asking for puzzles".into(),
                        });
                    }
                    let c = PuzzleChallenge::decode(&b)
                        .map_err(|e| AccountError::Protocol { addr, what: format!("malformed puzzle: {e}") })?;
                    challenge = Some(c);
                    continue;
                }
                Ok((MessageKind::Error, b)) => {
                    let e = ErrorMsg::decode(&b)
                        .map_err(|e| AccountError::Protocol { addr, what: format!("malformed error: {e}") })?;
                    if e.code == ErrorCode::BadEnvelope {
                        errors.push(format!("{addr}: {}", e.detail));
                        key = keys.next();
                        continue;
                    }
                    return Err(AccountError::Refused(e));
                }
                Ok((k, b)) => return Ok((addr, k, b)),
                Err(AccountError::Unreachable(e)) => {
                    tracing::warn!(%addr, error = %e, "login server unreachable");
                    errors.push(e);
                    break;
                }
                Err(e) => return Err(e),
            }
        }
    }
    if errors.is_empty() {
        errors.push("no login server configured".into());
    }
    Err(AccountError::Unreachable(errors.join("; ")))
}

/// Puzzles one request may be asked to solve before we give up on that server (a second
/// one is normal when the first expired on a slow machine).
const PUZZLES_PER_REQUEST_MAX: u32 = 3;

/// Solves a login server's puzzle for the request whose wrapped key is `wrapped`, on the
/// blocking pool (it is CPU work: ~15 ms at 14 bits, ~0.13 s at 17).
async fn solve(
    addr: SocketAddr,
    c: PuzzleChallenge,
    wrapped: Vec<u8>,
) -> Result<crate::wire::message::PuzzleSolution, AccountError> {
    if c.bits > crate::login::puzzle::BITS_MAX {
        return Err(AccountError::Protocol {
            addr,
            what: format!("the login server asked for a {}-bit puzzle", c.bits),
        });
    }
    tracing::debug!(%addr, bits = c.bits, "solving the login server's puzzle");
    // 2^(bits+6) tries fail only with probability e^-64.
    let tries = 1u64 << (u32::from(c.bits) + 6);
    tokio::task::spawn_blocking(move || crate::login::puzzle::solve(&c, &wrapped, tries))
        .await
        .ok()
        .flatten()
        .ok_or_else(|| AccountError::Protocol { addr, what: "could not solve the login server's puzzle".into() })
}

fn account_envelope(kind: MessageKind, body: &AccountBody) -> impl Fn(&PublicKey) -> (Envelope, SessionSecret) {
    let plain = body.encode();
    move |key| envelope::seal(key, kind, [0; 32], &plain)
}

/// Registers `username` with the user's public keys (so that others can write to the
/// user before any login); returns the name as registered.
pub async fn register(
    servers: &LoginServers,
    username: &str,
    secret: &SharedSecret,
    user_keys: UserPublicKeys,
) -> Result<String, AccountError> {
    let body = AccountBody {
        username: username.to_owned(),
        shared_secret: secret.0,
        timestamp: crate::unix_now(),
        client_version: crate::VERSION.to_owned(),
        host_public_key: Vec::new(),
        last_supernode: String::new(),
        possession: Vec::new(),
        user_keys: Some(user_keys),
    };
    let (addr, kind, reply) =
        request(servers, MessageKind::RegisterRequest, account_envelope(MessageKind::RegisterRequest, &body)).await?;
    if kind != MessageKind::RegisterReply {
        return Err(AccountError::Protocol { addr, what: format!("expected RegisterReply, got {}", kind.label()) });
    }
    let r = RegisterReply::decode(&reply).map_err(|e| AccountError::Protocol { addr, what: e.to_string() })?;
    Ok(r.username)
}

/// A credential and what came with it.
#[derive(Debug, Clone)]
pub struct LoggedIn {
    /// The login server that answered.
    pub server: SocketAddr,
    /// Our verified credential.
    pub credential: Credential,
    /// The newest software version.
    pub latest_version: String,
}

/// Logs in: proves the password, has `key` certified, and hands the login server the
/// user's public keys (the latest login's are the ones it serves).
pub async fn login(
    servers: &LoginServers,
    username: &str,
    secret: &SharedSecret,
    key: &PrivateKey,
    last_supernode: &str,
    user_keys: UserPublicKeys,
) -> Result<LoggedIn, AccountError> {
    let body = AccountBody {
        username: username.to_owned(),
        shared_secret: secret.0,
        timestamp: crate::unix_now(),
        client_version: crate::VERSION.to_owned(),
        host_public_key: key.public().der().to_vec(),
        last_supernode: last_supernode.to_owned(),
        possession: Vec::new(),
        user_keys: Some(user_keys),
    };
    // The body proves we hold `key`, bound to each envelope: a fresh signature per try.
    let seal = |login_key: &PublicKey| envelope::seal_login(login_key, body.clone(), key);
    let (addr, kind, reply) = request(servers, MessageKind::LoginRequest, seal).await?;
    if kind != MessageKind::LoginReply {
        return Err(AccountError::Protocol { addr, what: format!("expected LoginReply, got {}", kind.label()) });
    }
    let r = LoginReply::decode(&reply).map_err(|e| AccountError::Protocol { addr, what: e.to_string() })?;
    let credential =
        Credential::decode_verified(&r.credential, &servers.trusted, CredentialKind::Host, crate::unix_now())
            .map_err(|e| AccountError::Protocol { addr, what: format!("credential does not verify: {e}") })?;
    if &credential.public_key != key.public() || !credential.subject.eq_ignore_ascii_case(username) {
        return Err(AccountError::Protocol { addr, what: "credential is for another user or key".into() });
    }
    // The revocations, before a super node is picked: a revoked one is refused in its
    // handshake. A list that is not newer than ours, or does not verify, changes nothing.
    if !r.revocations.is_empty() {
        match servers.trusted.adopt_revocations(&r.revocations) {
            Ok(list) => tracing::info!(version = list.version, entries = list.entries.len(), "revocation list adopted"),
            Err(crate::crypto::revocation::RevocationError::NotNewer { .. }) => {}
            Err(e) => tracing::warn!(%addr, error = %e, "the login server's revocation list was refused"),
        }
    }
    Ok(LoggedIn { server: addr, credential, latest_version: r.latest_version })
}

/// Asks the login server to carry out `op` on the list of `credential`'s subject, signed
/// with the credential's `key`.
pub async fn buddy(
    servers: &LoginServers,
    credential: &Credential,
    key: &PrivateKey,
    op: BuddyOp,
) -> Result<BuddyAnswer, AccountError> {
    let seal = |login_key: &PublicKey| {
        // The signature covers the envelope's wrapped key, tying the operation to this one
        // envelope (whose nonce the server remembers), so it cannot be replayed in another.
        envelope::seal_with(login_key, MessageKind::BuddyRequest, [0; 32], |wrapped| {
            SignedOp::sign(credential, key, wrapped, crate::unix_now(), op.clone())
        })
    };
    let (addr, kind, reply) = request(servers, MessageKind::BuddyRequest, seal).await?;
    if kind != MessageKind::BuddyReply {
        return Err(AccountError::Protocol { addr, what: format!("expected BuddyReply, got {}", kind.label()) });
    }
    BuddyAnswer::decode(&reply).ok_or_else(|| AccountError::Protocol { addr, what: "malformed buddy answer".into() })
}

/// Asks the login servers for a revocation list newer than the one `servers.trusted`
/// holds (signed with our credential's `key`) and adopts it; returns the version adopted.
pub async fn refresh_revocations(servers: &LoginServers, credential: &Credential, key: &PrivateKey) -> Option<u64> {
    for &addr in &servers.addrs {
        let have = servers.trusted.revoked().version();
        let (c, k) = (credential.encode(), key.clone());
        // RSA signing: off the event loop.
        let query = tokio::task::spawn_blocking(move || {
            let mut q = crate::wire::message::RevocationQuery {
                have,
                timestamp: crate::unix_now(),
                credential: c,
                signature: Vec::new(),
            };
            q.signature = k.sign_pss(&q.signed_message(addr));
            frame::encode_plain(addr, MessageKind::RevocationQuery, 0, &q.encode())
        })
        .await
        .ok()?;
        let answer = tokio::time::timeout(servers.timeout, async {
            let mut s = tokio::net::TcpStream::connect(addr).await.ok()?;
            tcp::write_frame(&mut s, &query).await.ok()?;
            tcp::read_frame(&mut s).await.ok()?
        })
        .await
        .ok()
        .flatten();
        let Some(bytes) = answer else { continue };
        let Ok(raw) = frame::decode(addr, &bytes) else { continue };
        if raw.header.kind != MessageKind::RevocationReply {
            continue;
        }
        if raw.payload.is_empty() {
            return None;
        }
        return match servers.trusted.adopt_revocations(raw.payload) {
            Ok(list) => {
                tracing::info!(version = list.version, entries = list.entries.len(), "revocation list adopted");
                Some(list.version)
            }
            Err(e) => {
                tracing::warn!(%addr, error = %e, "the login server's revocation list was refused");
                None
            }
        };
    }
    None
}

/// Whether `latest` is a newer dotted version than `current`.
pub fn is_newer(latest: &str, current: &str) -> bool {
    let parse = |s: &str| -> Vec<u64> { s.split(['.', '-', '+']).map_while(|p| p.parse().ok()).collect() };
    parse(latest) > parse(current)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::buddy::Relation;
    use crate::crypto::credential::Claims;
    use crate::crypto::keys::tests::test_key;
    use crate::crypto::password::Verifier;
    use crate::login::{AccountStore, LoginPolicy, LoginServer, LoginService};
    use std::sync::Arc;
    use tokio_util::sync::CancellationToken;

    fn credential(user: &str, host: &PrivateKey) -> Credential {
        let now = crate::unix_now();
        Credential::issue(
            Claims {
                kind: CredentialKind::Host,
                subject: user.into(),
                public_key: host.public().clone(),
                issued_at: now,
                expires_at: now + 3600,
                serial: 1,
            },
            &test_key(0),
        )
    }

    #[actix_rt::test]
    async fn buddy_operations_over_tcp() {
        let dir = tempfile::tempdir().unwrap();
        let store = AccountStore::open(&dir.path().join("accounts.sqlite")).unwrap();
        store.create("alice", "Alice", Verifier([0; 32]), None, 1).unwrap();
        store.create("bob", "Bob", Verifier([0; 32]), None, 1).unwrap();
        let service = Arc::new(LoginService::new(test_key(0), store, LoginPolicy::default()));
        let server = LoginServer::bind(
            service,
            "127.0.0.1:0".parse().unwrap(),
            None,
            crate::login::server::ConnectionLimits { total: 8, ..Default::default() },
        )
        .await
        .unwrap();
        // A key the server does not hold comes first: the client moves on to the next.
        let servers = LoginServers {
            addrs: vec![server.addr()],
            trusted: TrustedKeys::new(vec![test_key(1).public().clone(), test_key(0).public().clone()]),
            timeout: Duration::from_secs(10),
        };
        let stop = CancellationToken::new();
        let running = actix_rt::spawn(server.run(stop.clone()));
        let host = test_key(2);
        let (alice, bob) = (credential("Alice", &host), credential("Bob", &host));

        let add = BuddyOp::Add { contact: "bob".into(), sealed: b"rec".to_vec(), message: "hi".into() };
        assert_eq!(buddy(&servers, &alice, &host, add).await.unwrap(), BuddyAnswer::Relation(Relation::Requested));
        let BuddyAnswer::Requests { items } = buddy(&servers, &bob, &host, BuddyOp::Requests).await.unwrap() else {
            panic!("expected requests")
        };
        assert_eq!(items.len(), 1);
        assert_eq!(items[0].from, "Alice");
        let accept = BuddyOp::Answer { from: "alice".into(), accept: true, sealed: b"rec".to_vec() };
        assert_eq!(
            buddy(&servers, &bob, &host, accept.clone()).await.unwrap(),
            BuddyAnswer::Relation(Relation::Authorized)
        );
        let e = buddy(&servers, &bob, &host, accept).await.unwrap_err();
        assert_eq!(e.code(), Some(ErrorCode::NotPending), "{e}");
        let BuddyAnswer::Page { rows, more } =
            buddy(&servers, &alice, &host, BuddyOp::List { after: None }).await.unwrap()
        else {
            panic!("expected a page")
        };
        assert!(!more);
        assert_eq!(rows.len(), 1);
        assert_eq!(rows[0].relation, Relation::Authorized);
        // Signed with a key the credential does not name.
        let e = buddy(&servers, &alice, &test_key(1), BuddyOp::Requests).await.unwrap_err();
        assert_eq!(e.code(), Some(ErrorCode::BadSignature), "{e}");
        stop.cancel();
        running.await.unwrap();
    }

    #[test]
    fn versions() {
        assert!(is_newer("0.2.0", "0.1.9"));
        assert!(is_newer("0.10.0", "0.9.0"));
        assert!(!is_newer("0.1.0", "0.1.0"));
        assert!(!is_newer("0.1.0", "0.2.0"));
        assert!(!is_newer("garbage", "0.1.0"));
    }
}
