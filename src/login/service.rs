//! The login server's request handling: plain logic over an envelope, the store and
//! the clock. The TCP shell in [`super::server`] only moves bytes.

use super::buddies::OpsLimiter;
use super::guard::{Gate, Guard, MemoryGuard, RequestKind, ThrottlePolicy};
use super::puzzle::{PuzzleError, PuzzleKey};
use super::replay::ReplayVerdict;
use super::store::{AccountStore, StoreError};
use super::username;
use crate::crypto::aead::SessionSecret;
use crate::crypto::credential::{Claims, Credential, CredentialKind, TrustedKeys};
use crate::crypto::envelope::Opened;
use crate::crypto::password::SharedSecret;
use crate::crypto::{PrivateKey, PublicKey, envelope, random};
use crate::net::source::SourceKey;
use crate::wire::message::{
    AccountBody, EnvelopedRequest, ErrorCode, ErrorMsg, LoginReply, MessageKind, PuzzleChallenge, RegisterReply,
    SeenQuery,
};
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};

/// Settings of the login service.
#[derive(Debug, Clone)]
pub struct LoginPolicy {
    /// How long a host credential is valid.
    pub credential_lifetime_secs: u64,
    /// Accepted clock difference for request timestamps.
    pub replay_window_secs: u64,
    /// Newest released version, advertised to hosts.
    pub latest_version: String,
    /// Throttling and puzzles.
    pub throttle: ThrottlePolicy,
}

impl Default for LoginPolicy {
    fn default() -> Self {
        Self {
            credential_lifetime_secs: 24 * 3600,
            replay_window_secs: 300,
            latest_version: crate::VERSION.to_owned(),
            throttle: ThrottlePolicy::default(),
        }
    }
}

/// What to send back.
#[derive(Debug)]
pub enum Reply {
    /// A sealed success reply under the request's session secret.
    Sealed {
        /// RegisterReply, LoginReply or BuddyReply.
        kind: MessageKind,
        /// Its body.
        body: Vec<u8>,
        /// The request's K.
        secret: SessionSecret,
    },
    /// Solve this puzzle and ask again: sealed when the request's K is known.
    Puzzle {
        /// The challenge.
        challenge: PuzzleChallenge,
        /// The request's K, once the envelope opened.
        secret: Option<SessionSecret>,
    },
    /// An error: sealed when the request's K is known, plain otherwise.
    Error {
        /// The error.
        error: ErrorMsg,
        /// The request's K, once the envelope opened.
        secret: Option<SessionSecret>,
    },
}

/// A handled request: the reply and the outcome label for the metrics.
#[derive(Debug)]
pub struct Handled {
    /// What to send.
    pub reply: Reply,
    /// `login_ok`, `registered`, `buddy_ok`, `blocked_silently`, or an error code label.
    pub outcome: &'static str,
    /// The request kind, for metrics (None if not a login-server request).
    pub kind: Option<MessageKind>,
    /// A buddy request's operation label, once it was decoded.
    pub op: Option<&'static str>,
}

/// The login service.
#[derive(Debug)]
pub struct LoginService {
    key: PrivateKey,
    /// Earlier login keys whose envelopes are still opened (a key rotation in progress).
    previous: Vec<PrivateKey>,
    /// The revocation list signed last.
    list: Mutex<Option<SignedList>>,
    store: AccountStore,
    policy: LoginPolicy,
    guard: Arc<dyn Guard>,
    queries: Mutex<std::collections::HashMap<IpAddr, (u64, u32)>>,
    trusted: TrustedKeys,
    buddy_ops: Mutex<OpsLimiter>,
}

/// A signed revocation list: the database version it was signed at, its encoding, its entries.
#[derive(Debug)]
struct SignedList {
    version: u64,
    bytes: Arc<Vec<u8>>,
    entries: usize,
}

/// Directory queries one address may make per second (each costs a signature).
const DIRECTORY_QUERIES_PER_SECOND_MAX: u32 = 50;
/// How far a directory query's time may be from ours: it is made and sent at once.
const SEEN_QUERY_WINDOW_SECS: u64 = 60;

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // The guarded values are plain caches that stay consistent between statements.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

pub(super) fn fail(code: ErrorCode, detail: impl Into<String>, secret: Option<&SessionSecret>) -> Handled {
    Handled {
        reply: Reply::Error { error: ErrorMsg::new(code, detail), secret: secret.cloned() },
        outcome: code.label(),
        kind: None,
        op: None,
    }
}

impl LoginService {
    /// A service signing with `key` and storing accounts in `store`.
    pub fn new(key: PrivateKey, store: AccountStore, policy: LoginPolicy) -> Self {
        let guard = MemoryGuard::new(policy.throttle.clone(), policy.replay_window_secs, PuzzleKey::generate());
        Self::with_guard(key, store, policy, Arc::new(guard))
    }

    /// A service whose throttling, puzzle and replay state lives in `guard` (shared by
    /// login servers of one database).
    pub fn with_guard(key: PrivateKey, store: AccountStore, policy: LoginPolicy, guard: Arc<dyn Guard>) -> Self {
        let trusted = TrustedKeys::new(vec![key.public().clone()]);
        Self {
            trusted,
            buddy_ops: Mutex::new(OpsLimiter::default()),
            key,
            previous: Vec::new(),
            list: Mutex::new(None),
            store,
            policy,
            guard,
            queries: Mutex::new(std::collections::HashMap::new()),
        }
    }

    /// Also opens envelopes wrapped for `keys`, earlier login keys (hosts may still
    /// encrypt to one during a rotation), and trusts credentials they signed. New
    /// credentials and lists are signed with the current key only.
    pub fn with_previous_keys(mut self, keys: impl IntoIterator<Item = PrivateKey>) -> Self {
        let keys: Vec<PrivateKey> = keys.into_iter().filter(|k| k.public() != self.key.public()).collect();
        let mut all = self.trusted.keys().to_vec();
        all.extend(keys.iter().map(|k| k.public().clone()));
        self.trusted = TrustedKeys::new(all);
        self.previous = keys;
        self
    }

    /// The private key an envelope names: the current one or a previous one.
    fn key_for(&self, key_id: [u8; 8]) -> &PrivateKey {
        std::iter::once(&self.key).chain(&self.previous).find(|k| k.public().id().0 == key_id).unwrap_or(&self.key)
    }

    /// The current signed revocation list (None: nothing was ever revoked), re-signed
    /// when the database's version moved (a `confab revoke` from another process shows
    /// at the next request), and honoured by this server too: a revoked super node's
    /// queries and a revoked host key's logins are refused.
    pub fn revocation_list(&self, now: u64) -> Option<Arc<Vec<u8>>> {
        let version = match self.store.revocation_version() {
            Ok(v) => v,
            Err(e) => {
                tracing::error!(error = %e, "could not read the revocation version");
                return lock(&self.list).as_ref().map(|l| l.bytes.clone());
            }
        };
        if version == 0 {
            return None;
        }
        if let Some(l) = lock(&self.list).as_ref()
            && l.version == version
        {
            return Some(l.bytes.clone());
        }
        let (version, entries) = match self.store.revocations(now) {
            Ok(x) => x,
            Err(e) => {
                tracing::error!(error = %e, "could not read the revocations");
                return lock(&self.list).as_ref().map(|l| l.bytes.clone());
            }
        };
        let list = crate::crypto::RevocationList::issue(version, entries, &self.key);
        let bytes = Arc::new(list.encode());
        if let Err(e) = self.trusted.adopt_revocations(&bytes)
            && !matches!(e, crate::crypto::revocation::RevocationError::NotNewer { .. })
        {
            tracing::error!(error = %e, "the login server's own revocation list does not verify");
        }
        tracing::info!(version, entries = list.entries.len(), "revocation list signed");
        *lock(&self.list) = Some(SignedList { version, bytes: bytes.clone(), entries: list.entries.len() });
        Some(bytes)
    }

    /// The version and entry count of the revocation list signed last ((0, 0): none).
    pub fn signed_revocations(&self) -> (u64, usize) {
        lock(&self.list).as_ref().map(|l| (l.version, l.entries)).unwrap_or((0, 0))
    }

    /// Answers a revocation query (a super node's or a host's): the signed list if it is
    /// newer than the one the asker holds, else an empty body. Only holders of a credential
    /// this server trusts, signing for this server (`listener`) within the window, get an
    /// answer; a stranger gets a short error, never more bytes than it sent.
    pub fn revocation_query(
        &self,
        now: u64,
        source: IpAddr,
        listener: SocketAddr,
        payload: &[u8],
    ) -> Result<Vec<u8>, ErrorMsg> {
        self.admit_query(source, now)?;
        let q = crate::wire::message::RevocationQuery::decode(payload)
            .map_err(|e| ErrorMsg::new(ErrorCode::Malformed, e.to_string()))?;
        let window = self.policy.replay_window_secs.min(SEEN_QUERY_WINDOW_SECS);
        if q.timestamp.saturating_add(window) < now || q.timestamp > now.saturating_add(window) {
            return Err(ErrorMsg::new(ErrorCode::ClockSkew, "revocation query outside the time window"));
        }
        let list = self.revocation_list(now);
        let cred = Credential::decode(&q.credential)
            .map_err(|e| ErrorMsg::new(ErrorCode::Malformed, format!("revocation query: {e}")))?;
        cred.verify(&self.trusted, cred.kind, now).map_err(|e| {
            let code = match e {
                crate::crypto::CredentialError::Revoked(_) => ErrorCode::Revoked,
                _ => ErrorCode::UntrustedCredential,
            };
            ErrorMsg::new(code, format!("revocation query: {e}"))
        })?;
        cred.public_key
            .verify_pss(&q.signed_message(listener), &q.signature)
            .map_err(|_| ErrorMsg::new(ErrorCode::BadSignature, "revocation query signature does not verify"))?;
        Ok(match list {
            Some(l) if crate::crypto::Revoked::peek_version(&l).is_some_and(|v| v > q.have) => l.to_vec(),
            _ => Vec::new(),
        })
    }

    /// Counts a directory or revocation query from `source`; refuses past the per-second cap.
    fn admit_query(&self, source: IpAddr, now: u64) -> Result<(), ErrorMsg> {
        let mut q = lock(&self.queries);
        if q.len() > 100_000 {
            q.retain(|_, (t, _)| *t == now);
        }
        let e = q.entry(source).or_insert((now, 0));
        if e.0 != now {
            *e = (now, 0);
        }
        e.1 += 1;
        if e.1 > DIRECTORY_QUERIES_PER_SECOND_MAX {
            let mut err = ErrorMsg::new(ErrorCode::TooManyAttempts, "too many directory queries");
            err.retry_after_secs = 1;
            return Err(err);
        }
        Ok(())
    }

    /// The login key's public half.
    pub fn public_key(&self) -> &PublicKey {
        self.key.public()
    }

    /// Also accepts buddy requests whose credentials other login servers issued (servers
    /// that share this account database under their own keys).
    pub fn with_peer_keys(mut self, keys: impl IntoIterator<Item = PublicKey>) -> Self {
        let mut all = self.trusted.keys().to_vec();
        all.extend(keys);
        self.trusted = TrustedKeys::new(all);
        self
    }

    /// The login keys whose host credentials buddy requests may carry.
    pub(super) fn trusted(&self) -> &TrustedKeys {
        &self.trusted
    }

    /// Counts a failure against `source` (a forged or unreadable request).
    pub(super) fn source_failed(&self, source: IpAddr, now: u64) {
        self.guard.failed(source.into(), None, now);
    }

    /// Whether `owner` may make another buddy operation at `now`.
    pub(super) fn admit_buddy_op(&self, owner: &str, now: u64) -> bool {
        lock(&self.buddy_ops).admit(owner, now)
    }

    /// Checks a request's nonce and timestamp; the refusal to send if it is not fresh.
    /// A replay or a clock outside the window counts as a failure of the source.
    pub(super) fn check_replay(
        &self,
        source: IpAddr,
        nonce: [u8; 32],
        timestamp: u64,
        now: u64,
        secret: &SessionSecret,
    ) -> Result<(), Handled> {
        let verdict = self.guard.check_replay(nonce, timestamp, now);
        if verdict != ReplayVerdict::Fresh {
            self.guard.failed(source.into(), None, now);
        }
        match verdict {
            ReplayVerdict::Fresh => Ok(()),
            ReplayVerdict::Replayed => Err(fail(ErrorCode::Replayed, "this request was seen before", Some(secret))),
            ReplayVerdict::Skewed => Err(fail(
                ErrorCode::ClockSkew,
                format!("request time is more than {} s from the server's clock", self.policy.replay_window_secs),
                Some(secret),
            )),
        }
    }

    /// Answers a recently-seen directory query (a super node's lookup that found nothing
    /// in the index): a record signed with the login key, so hosts can trust it. Only super
    /// nodes ask: the query must carry a super-node credential this server trusts and be
    /// signed by its key for this server (`listener`) within the replay window.
    pub fn seen(&self, now: u64, source: IpAddr, listener: SocketAddr, payload: &[u8]) -> Result<Vec<u8>, ErrorMsg> {
        self.admit_query(source, now)?;
        // Refreshes the revocations honoured: a revoked super node is not answered.
        let _ = self.revocation_list(now);
        let q = SeenQuery::decode(payload).map_err(|e| ErrorMsg::new(ErrorCode::Malformed, e.to_string()))?;
        let window = self.policy.replay_window_secs.min(SEEN_QUERY_WINDOW_SECS);
        if q.timestamp.saturating_add(window) < now || q.timestamp > now.saturating_add(window) {
            return Err(ErrorMsg::new(ErrorCode::ClockSkew, "directory query outside the time window"));
        }
        let cred =
            Credential::decode_verified(&q.credential, &self.trusted, CredentialKind::SuperNode, now).map_err(|e| {
                let code = match e {
                    crate::crypto::CredentialError::Revoked(_) => ErrorCode::Revoked,
                    _ => ErrorCode::UntrustedCredential,
                };
                ErrorMsg::new(code, format!("directory query: {e}"))
            })?;
        cred.public_key
            .verify_pss(&q.signed_message(listener), &q.signature)
            .map_err(|_| ErrorMsg::new(ErrorCode::BadSignature, "directory query signature does not verify"))?;
        let user =
            username::canonical(&q.user).map_err(|e| ErrorMsg::new(ErrorCode::InvalidUsername, e.to_string()))?;
        let failed = |e: StoreError| {
            tracing::error!(error = %e, "directory lookup failed");
            ErrorMsg::new(ErrorCode::Internal, "the directory failed")
        };
        let row = self.store.seen(&user).map_err(failed)?;
        // Served for any registered user, logged in or not: whoever never had their keys
        // can still write to them.
        let user_keys = self.store.user_keys(&user).map_err(failed)?;
        let (found, last_seen, supernode) = match row {
            Some((t, sn)) => (true, t, sn),
            None => (false, 0, String::new()),
        };
        let mut rec = crate::wire::message::SeenRecord {
            user,
            found,
            last_seen,
            supernode,
            issued_at: now,
            key_id: self.key.public().id().0,
            signature: Vec::new(),
            user_keys,
        };
        rec.signature = self.key.sign_pss(&rec.signed_message());
        Ok(rec.encode())
    }

    /// The account store.
    pub fn store(&self) -> &AccountStore {
        &self.store
    }

    /// Handles one request frame's payload from `source` at `now` (blocking: RSA and SQLite).
    pub fn handle(&self, now: u64, source: IpAddr, kind: MessageKind, payload: &[u8]) -> Handled {
        let mut h = self.handle_inner(now, source, kind, payload);
        h.kind = Some(kind);
        h
    }

    fn handle_inner(&self, now: u64, source: IpAddr, kind: MessageKind, payload: &[u8]) -> Handled {
        let request_kind = match kind {
            MessageKind::RegisterRequest => RequestKind::Register,
            MessageKind::LoginRequest => RequestKind::Login,
            MessageKind::BuddyRequest => RequestKind::Buddy,
            _ => {
                return fail(
                    ErrorCode::Unsupported,
                    "a login server answers only register, login and buddy requests",
                    None,
                );
            }
        };
        let Ok(request) = EnvelopedRequest::decode(payload) else {
            return fail(ErrorCode::Malformed, "malformed envelope", None);
        };
        let env = &request.envelope;
        let src = SourceKey::from(source);
        // Everything before the RSA work costs a few hashes: a flood from one source, or a
        // surge from many, is turned away or made to pay before we pay.
        let solved = self.solved_bits(&request, src, now);
        match self.guard.admit(src, request_kind, now) {
            Gate::Refuse(wait) => return too_many(wait, None),
            Gate::Puzzle(bits) if solved < bits => return self.puzzle(src, bits, now, None),
            Gate::Puzzle(_) | Gate::Admit => {}
        }
        let opened = match envelope::open(self.key_for(env.key_id), kind, env) {
            Ok(o) => o,
            Err(e) => {
                // A host that trusts several login keys tries them in turn, and a wrong key
                // is refused before any RSA: only an envelope that fails to decrypt counts.
                if e != envelope::EnvelopeError::WrongKey {
                    self.guard.failed(src, None, now);
                }
                return fail(ErrorCode::BadEnvelope, e.to_string(), None);
            }
        };
        if kind == MessageKind::BuddyRequest {
            // A revoked host credential makes no buddy operations.
            let _ = self.revocation_list(now);
            return super::buddies::handle(self, now, source, env, opened);
        }
        self.account(now, source, kind, opened, solved, &env.wrapped)
    }

    /// The difficulty of the request's puzzle solution if it is valid (0 if none). A
    /// forged or unsolved one counts as a failure; an expired one is just not enough.
    fn solved_bits(&self, request: &EnvelopedRequest, src: SourceKey, now: u64) -> u8 {
        let Some(solution) = &request.solution else { return 0 };
        let lifetime = self.guard.policy().puzzle_lifetime_secs;
        match self.guard.puzzle_key().verify(solution, &request.envelope.wrapped, src, now, lifetime, 0) {
            Ok(()) => solution.challenge.bits,
            Err(PuzzleError::Expired) => 0,
            Err(_) => {
                self.guard.failed(src, None, now);
                0
            }
        }
    }

    fn puzzle(&self, src: SourceKey, bits: u8, now: u64, secret: Option<&SessionSecret>) -> Handled {
        Handled {
            reply: Reply::Puzzle { challenge: self.guard.puzzle_key().issue(now, bits, src), secret: secret.cloned() },
            outcome: "puzzle_required",
            kind: None,
            op: None,
        }
    }

    fn account(
        &self,
        now: u64,
        source: IpAddr,
        kind: MessageKind,
        opened: Opened,
        solved: u8,
        wrapped: &[u8],
    ) -> Handled {
        let secret = Some(&opened.secret);
        let Ok(body) = AccountBody::decode(&opened.body) else {
            self.guard.failed(source.into(), None, now);
            return fail(ErrorCode::Malformed, "malformed request body", secret);
        };
        if let Err(refused) = self.check_replay(source, opened.nonce, body.timestamp, now, &opened.secret) {
            return refused;
        }
        let name_key = match username::canonical(&body.username) {
            Ok(k) => k,
            Err(e) => return fail(ErrorCode::InvalidUsername, e.to_string(), secret),
        };
        let shared = SharedSecret(body.shared_secret);
        if kind == MessageKind::RegisterRequest {
            if let Err(wait) = self.guard.register(source.into(), now) {
                return too_many_registrations(wait, &opened.secret);
            }
            return self.register(now, &name_key, &body, &shared, opened.secret);
        }
        // A user under attack costs every login a puzzle; the right password is never
        // refused because someone else guessed wrong.
        if let Some(bits) = self.guard.user_puzzle(&name_key, now)
            && solved < bits
        {
            return self.puzzle(source.into(), bits, now, secret);
        }
        self.login(now, source, &name_key, &body, opened.secret, wrapped)
    }

    fn register(
        &self,
        now: u64,
        name_key: &str,
        body: &AccountBody,
        shared: &SharedSecret,
        secret: SessionSecret,
    ) -> Handled {
        let name = &body.username;
        match self.store.create(name_key, name, shared.verifier(), body.user_keys.as_ref(), now) {
            Ok(()) => Handled {
                reply: Reply::Sealed {
                    kind: MessageKind::RegisterReply,
                    body: RegisterReply { username: name.to_owned() }.encode(),
                    secret,
                },
                outcome: "registered",
                kind: None,
                op: None,
            },
            Err(StoreError::Taken) => {
                fail(ErrorCode::UsernameTaken, format!("the username {name:?} is taken"), Some(&secret))
            }
            Err(e) => {
                tracing::error!(error = %e, "account store failed during registration");
                fail(ErrorCode::Internal, "the account store failed; try again later", Some(&secret))
            }
        }
    }

    fn login(
        &self,
        now: u64,
        source: IpAddr,
        name_key: &str,
        body: &AccountBody,
        secret: SessionSecret,
        wrapped: &[u8],
    ) -> Handled {
        let shared = &SharedSecret(body.shared_secret);
        let account = match self.store.get(name_key) {
            Ok(Some(a)) => a,
            Ok(None) => {
                self.guard.failed(source.into(), None, now);
                return fail(ErrorCode::UnknownUser, format!("no account named {name_key:?}"), Some(&secret));
            }
            Err(e) => {
                tracing::error!(error = %e, "account store failed during login");
                return fail(ErrorCode::Internal, "the account store failed; try again later", Some(&secret));
            }
        };
        if !account.verifier.matches(shared) {
            self.guard.failed(source.into(), Some(name_key), now);
            return fail(ErrorCode::WrongPassword, "wrong password", Some(&secret));
        }
        let Ok(public_key) = PublicKey::from_der(&body.host_public_key) else {
            return fail(
                ErrorCode::Malformed,
                "the host public key is not a valid RSA key of 2048-4096 bits",
                Some(&secret),
            );
        };
        // The host must hold the key it asks us to certify, or a credential could be issued
        // for someone else's key.
        if public_key.verify_pss(&body.possession_message(wrapped), &body.possession).is_err() {
            self.guard.failed(source.into(), None, now);
            return fail(ErrorCode::BadSignature, "no proof of possession of the host key", Some(&secret));
        }
        // A revoked host key gets no new credential while its revocation lasts.
        let _ = self.revocation_list(now);
        if self.trusted.revoked().contains(CredentialKind::Host, public_key.id()) {
            return fail(ErrorCode::Revoked, "this host key is revoked", Some(&secret));
        }
        if let Err(e) = self.store.record_login(name_key, now, &body.last_supernode, body.user_keys.as_ref()) {
            tracing::warn!(error = %e, "could not update the recently-seen directory");
        }
        let credential = Credential::issue(
            Claims {
                kind: CredentialKind::Host,
                subject: account.username,
                public_key,
                issued_at: now,
                expires_at: now + self.policy.credential_lifetime_secs,
                // Random serials need no shared counter between login servers.
                serial: random::u64(),
            },
            &self.key,
        );
        // The host learns the revocations here, before it picks a super node.
        let revocations = self.revocation_list(now).map(|l| l.to_vec()).unwrap_or_default();
        let body = LoginReply {
            credential: credential.encode(),
            latest_version: self.policy.latest_version.clone(),
            revocations,
        }
        .encode();
        Handled {
            reply: Reply::Sealed { kind: MessageKind::LoginReply, body, secret },
            outcome: "login_ok",
            kind: None,
            op: None,
        }
    }
}

fn too_many_registrations(wait: u64, secret: &SessionSecret) -> Handled {
    let mut h = fail(
        ErrorCode::TooManyAttempts,
        format!("too many registrations from this address; retry in {wait} s"),
        Some(secret),
    );
    if let Reply::Error { error, .. } = &mut h.reply {
        error.retry_after_secs = wait.min(u64::from(u32::MAX)) as u32;
    }
    h
}

pub(super) fn too_many(wait: u64, secret: Option<&SessionSecret>) -> Handled {
    let mut h = fail(ErrorCode::TooManyAttempts, format!("too many failed attempts; retry in {wait} s"), secret);
    if let Reply::Error { error, .. } = &mut h.reply {
        error.retry_after_secs = wait.min(u64::from(u32::MAX)) as u32;
    }
    h
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crypto::keys::tests::{fixture_key, test_key};
    use crate::crypto::user::UserPublicKeys;
    use crate::wire::message::SeenRecord;

    fn login_request(login_key: &PublicKey, host: &PrivateKey, now: u64) -> Vec<u8> {
        login_request_with(login_key, host, now, None)
    }

    /// Alice's body (password secret [7; 32]); `seal_login` fills in the host's part.
    fn alice(now: u64, user_keys: Option<UserPublicKeys>) -> AccountBody {
        AccountBody {
            username: "alice".into(),
            shared_secret: [7; 32],
            timestamp: now,
            client_version: "0.1.0".into(),
            host_public_key: Vec::new(),
            last_supernode: String::new(),
            possession: Vec::new(),
            user_keys,
        }
    }

    fn login_request_with(
        login_key: &PublicKey,
        host: &PrivateKey,
        now: u64,
        user_keys: Option<UserPublicKeys>,
    ) -> Vec<u8> {
        let (envelope, _) = envelope::seal_login(login_key, alice(now, user_keys), host);
        EnvelopedRequest { envelope, solution: None }.encode()
    }

    /// During a rotation the server opens envelopes wrapped for its previous key, but
    /// signs the credential with its current one; without the previous key it cannot.
    #[test]
    fn envelopes_for_a_previous_key_open_and_credentials_come_from_the_current_key() {
        let dir = tempfile::tempdir().unwrap();
        let store = AccountStore::open(&dir.path().join("accounts.sqlite")).unwrap();
        store.create("alice", "alice", SharedSecret([7; 32]).verifier(), None, 1).unwrap();
        let (k1, k2, host) = (test_key(0), fixture_key("login-1"), test_key(2));
        let svc = LoginService::new(k2.clone(), store, LoginPolicy::default()).with_previous_keys([k1.clone()]);
        let now = crate::unix_now();
        let ip: IpAddr = "127.0.0.1".parse().unwrap();
        let h = svc.handle(now, ip, MessageKind::LoginRequest, &login_request(k1.public(), &host, now));
        assert_eq!(h.outcome, "login_ok");
        let Reply::Sealed { body, .. } = h.reply else { panic!("sealed reply expected") };
        let cred = Credential::decode(&LoginReply::decode(&body).unwrap().credential).unwrap();
        assert_eq!(cred.issuer, k2.public().id());
        cred.verify(svc.trusted(), CredentialKind::Host, now).unwrap();

        let dir = tempfile::tempdir().unwrap();
        let store = AccountStore::open(&dir.path().join("accounts.sqlite")).unwrap();
        let without = LoginService::new(k2, store, LoginPolicy::default());
        let h = without.handle(now, ip, MessageKind::LoginRequest, &login_request(k1.public(), &host, now));
        assert_eq!(h.outcome, "bad_envelope");
    }

    /// A revoked host key gets no credential; the list rides in every LoginReply.
    #[test]
    fn a_revoked_host_key_is_refused_and_hosts_get_the_list_at_login() {
        let dir = tempfile::tempdir().unwrap();
        let store = AccountStore::open(&dir.path().join("accounts.sqlite")).unwrap();
        store.create("alice", "alice", SharedSecret([7; 32]).verifier(), None, 1).unwrap();
        let (k1, host, other) = (test_key(0), test_key(2), test_key(1));
        let now = crate::unix_now();
        let revoke = |key: &PrivateKey| crate::crypto::revocation::Revocation {
            key: key.public().id(),
            kind: CredentialKind::Host,
            subject: "alice".into(),
            expires_at: now + 60,
        };
        let version = store.revoke(&revoke(&other), now).unwrap();
        let svc = LoginService::new(k1.clone(), store, LoginPolicy::default());
        let ip: IpAddr = "127.0.0.1".parse().unwrap();
        let h = svc.handle(now, ip, MessageKind::LoginRequest, &login_request(k1.public(), &host, now));
        let Reply::Sealed { body, .. } = h.reply else { panic!("sealed reply expected") };
        let reply = LoginReply::decode(&body).unwrap();
        let t = TrustedKeys::new(vec![k1.public().clone()]);
        assert_eq!(t.adopt_revocations(&reply.revocations).unwrap().version, version);
        svc.store().revoke(&revoke(&host), now).unwrap();
        let h = svc.handle(now, ip, MessageKind::LoginRequest, &login_request(k1.public(), &host, now));
        assert_eq!(h.outcome, "revoked");
    }

    /// The directory signs a registered user's keys whether or not they ever logged in
    /// (`found` keeps meaning "logged in"); a login's keys replace them.
    #[test]
    fn the_directory_serves_the_keys_of_registration_then_of_the_latest_login() {
        let dir = tempfile::tempdir().unwrap();
        let store = AccountStore::open(&dir.path().join("accounts.sqlite")).unwrap();
        let (login, sn, host) = (test_key(0), test_key(1), test_key(2));
        let svc = LoginService::new(login.clone(), store, LoginPolicy::default());
        let now = crate::unix_now();
        let ip: IpAddr = "127.0.0.1".parse().unwrap();
        let listener: SocketAddr = "127.0.0.1:33000".parse().unwrap();
        let (registered, logged_in) = (
            UserPublicKeys { x25519: [1; 32], ed25519: [2; 32] },
            UserPublicKeys { x25519: [3; 32], ed25519: [4; 32] },
        );
        let body = alice(now, Some(registered)).encode();
        let (envelope, _) = envelope::seal(login.public(), MessageKind::RegisterRequest, [0; 32], &body);
        let request = EnvelopedRequest { envelope, solution: None }.encode();
        assert_eq!(svc.handle(now, ip, MessageKind::RegisterRequest, &request).outcome, "registered");
        let credential = Credential::issue(
            Claims {
                kind: CredentialKind::SuperNode,
                subject: "sn1".into(),
                public_key: sn.public().clone(),
                issued_at: now,
                expires_at: now + 600,
                serial: 1,
            },
            &login,
        );
        let ask = |user: &str| {
            let mut q =
                SeenQuery { user: user.into(), timestamp: now, credential: credential.encode(), signature: vec![] };
            q.signature = sn.sign_pss(&q.signed_message(listener));
            let rec = svc.seen(now, ip, listener, &q.encode()).unwrap();
            SeenRecord::decode_verified(&rec, user, svc.trusted()).unwrap()
        };
        let rec = ask("alice");
        assert_eq!((rec.found, rec.user_keys), (false, Some(registered)), "registered, never logged in");
        let h = svc.handle(
            now,
            ip,
            MessageKind::LoginRequest,
            &login_request_with(login.public(), &host, now, Some(logged_in)),
        );
        assert_eq!(h.outcome, "login_ok");
        let rec = ask("alice");
        assert_eq!((rec.found, rec.user_keys), (true, Some(logged_in)), "the latest login's keys");
        assert_eq!(ask("nobody").user_keys, None);
    }
}
