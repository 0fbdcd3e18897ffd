//! Buddy-list requests at the login server.
//!
//! A request is a [`SignedOp`] inside the login key's RSA envelope: the envelope keeps it
//! private and gives the reply key, the signature under the host's credential says whose
//! list it is. Checks run cheapest first (the source's back-off before any RSA), and each
//! owner gets a small per-second budget so one account cannot keep SQLite busy. The list
//! semantics themselves are transactions in [`super::store`].

use super::service::{Handled, LoginService, Reply, fail};
use super::store::{AccountStore, Added, StoreError};
use super::username;
use crate::buddy::op::{Incoming, MESSAGE_CHARS_MAX, OpError, REQUESTS_PENDING_MAX, SignedOp};
use crate::buddy::record::SEALED_LEN_MAX;
use crate::buddy::{BuddyAnswer, BuddyOp};
use crate::crypto::credential::CredentialError;
use crate::crypto::envelope::Opened;
use crate::wire::message::{Envelope, ErrorCode, ErrorMsg, MessageKind};
use std::collections::HashMap;
use std::net::IpAddr;

/// Buddy operations one owner may make per second.
pub const OPS_PER_SECOND_MAX: u32 = 20;
/// Largest encoded [`BuddyAnswer::Requests`]: the sealed reply must fit one frame.
pub const REQUESTS_ANSWER_LEN_MAX: usize = 2800;
/// Owners whose counts are kept before the stale ones are dropped.
const LIMITER_ENTRIES_MAX: usize = 100_000;

/// Counts each owner's operations in the current second.
#[derive(Debug, Default)]
pub struct OpsLimiter {
    counts: HashMap<String, (u64, u32)>,
}

impl OpsLimiter {
    /// Counts one operation by `owner` at `now`; false once the second's budget is spent.
    pub fn admit(&mut self, owner: &str, now: u64) -> bool {
        if self.counts.len() >= LIMITER_ENTRIES_MAX && !self.counts.contains_key(owner) {
            // Only this second's counts matter, so the rest can go.
            self.counts.retain(|_, (t, _)| *t == now);
        }
        let e = self.counts.entry(owner.to_owned()).or_insert((now, 0));
        if e.0 != now {
            *e = (now, 0);
        }
        e.1 = e.1.saturating_add(1);
        e.1 <= OPS_PER_SECOND_MAX
    }
}

/// An operation that was carried out: the answer and the outcome label for the metrics.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Applied {
    /// What the owner is told.
    pub answer: BuddyAnswer,
    /// `buddy_ok` or `blocked_silently`.
    pub outcome: &'static str,
}

/// Handles an opened buddy envelope (the service has decoded it, checked the source's
/// back-off and opened it).
pub(super) fn handle(svc: &LoginService, now: u64, source: IpAddr, env: &Envelope, opened: Opened) -> Handled {
    let secret = opened.secret;
    let signed = match SignedOp::decode(&opened.body) {
        Ok(s) => s,
        Err(_) => return fail(ErrorCode::Malformed, "malformed buddy operation", Some(&secret)),
    };
    let op = signed.op.label();
    let with_op = |mut h: Handled| {
        h.op = Some(op);
        h
    };
    if let Err(refused) = svc.check_replay(source, opened.nonce, signed.timestamp, now, &secret) {
        return with_op(refused);
    }
    let credential = match signed.verify(svc.trusted(), &env.wrapped, now) {
        Ok(c) => c,
        Err(e) => {
            let (code, forged) = classify(&e);
            if forged {
                svc.source_failed(source, now);
            }
            return with_op(fail(code, e.to_string(), Some(&secret)));
        }
    };
    let Ok(owner) = username::canonical(&credential.subject) else {
        return with_op(fail(ErrorCode::InvalidUsername, "the credential's subject is not a username", Some(&secret)));
    };
    if !svc.admit_buddy_op(&owner, now) {
        let mut h = fail(
            ErrorCode::TooManyAttempts,
            format!("more than {OPS_PER_SECOND_MAX} buddy operations in one second"),
            Some(&secret),
        );
        if let Reply::Error { error, .. } = &mut h.reply {
            error.retry_after_secs = 1;
        }
        return with_op(h);
    }
    match apply(svc.store(), &owner, &signed.op, now) {
        Ok(done) => Handled {
            reply: Reply::Sealed { kind: MessageKind::BuddyReply, body: done.answer.encode(), secret },
            outcome: done.outcome,
            kind: None,
            op: Some(op),
        },
        Err(error) => {
            let outcome = error.code.label();
            Handled { reply: Reply::Error { error, secret: Some(secret) }, outcome, kind: None, op: Some(op) }
        }
    }
}

/// The error code for a refused operation, and whether it looks forged (counted against
/// the source, as a wrong password is).
fn classify(e: &OpError) -> (ErrorCode, bool) {
    match e {
        OpError::Malformed | OpError::Credential(CredentialError::Malformed(_)) => (ErrorCode::Malformed, false),
        OpError::Credential(CredentialError::Expired(_)) => (ErrorCode::CredentialExpired, false),
        OpError::Credential(CredentialError::UntrustedIssuer(_)) => (ErrorCode::UntrustedCredential, false),
        OpError::Credential(CredentialError::NotYetValid(_)) => (ErrorCode::ClockSkew, false),
        OpError::Credential(CredentialError::Revoked(_)) => (ErrorCode::Revoked, false),
        OpError::Credential(_) | OpError::BadSignature => (ErrorCode::BadSignature, true),
    }
}

/// Carries out `owner`'s (canonical, verified) operation at `now`.
pub fn apply(store: &AccountStore, owner: &str, op: &BuddyOp, now: u64) -> Result<Applied, ErrorMsg> {
    let ok = |answer| Ok(Applied { answer, outcome: "buddy_ok" });
    match op {
        BuddyOp::List { after } => {
            let (rows, more) = store.buddy_page(owner, *after).map_err(internal)?;
            ok(BuddyAnswer::Page { rows, more })
        }
        BuddyOp::Requests => {
            let items = store.buddy_requests(owner, REQUESTS_PENDING_MAX).map_err(internal)?;
            ok(BuddyAnswer::Requests { items: fit_one_frame(items) })
        }
        BuddyOp::Add { contact, sealed, message } => {
            let contact = other_user(owner, contact)?;
            check_sealed(sealed)?;
            check_message(message)?;
            let added = store.buddy_add(owner, &contact, sealed, message, now).map_err(refusal)?;
            let outcome = if added == Added::RequestedSilently { "blocked_silently" } else { "buddy_ok" };
            Ok(Applied { answer: BuddyAnswer::Relation(added.relation()), outcome })
        }
        BuddyOp::Answer { from, accept, sealed } => {
            let from = other_user(owner, from)?;
            if *accept {
                check_sealed(sealed)?;
            }
            let relation = store.buddy_answer(owner, &from, *accept, sealed, now).map_err(refusal)?;
            ok(BuddyAnswer::Relation(relation))
        }
        BuddyOp::Remove { contact } => {
            // No account check: removing is idempotent, and should work for a name that
            // no longer resolves.
            let contact = other_user(owner, contact)?;
            store.buddy_remove(owner, &contact).map_err(refusal)?;
            ok(BuddyAnswer::Done)
        }
        BuddyOp::Block { contact, sealed } => {
            let contact = other_user(owner, contact)?;
            check_sealed(sealed)?;
            store.buddy_block(owner, &contact, sealed, now).map_err(refusal)?;
            ok(BuddyAnswer::Done)
        }
    }
}

/// The oldest requests that fit one reply frame.
fn fit_one_frame(items: Vec<Incoming>) -> Vec<Incoming> {
    // The enum tag and the item count (under 128: one byte each in postcard).
    let mut len = 2;
    let mut out = Vec::new();
    for item in items {
        len += postcard::to_allocvec(&item).map_or(usize::MAX / 2, |b| b.len());
        if len > REQUESTS_ANSWER_LEN_MAX {
            break;
        }
        out.push(item);
    }
    out
}

fn other_user(owner: &str, name: &str) -> Result<String, ErrorMsg> {
    let key = username::canonical(name).map_err(|e| ErrorMsg::new(ErrorCode::InvalidUsername, e.to_string()))?;
    if key == owner {
        return Err(ErrorMsg::new(ErrorCode::InvalidUsername, "you cannot be your own buddy"));
    }
    Ok(key)
}

fn check_sealed(sealed: &[u8]) -> Result<(), ErrorMsg> {
    // An empty record would be a row the owner's devices cannot name.
    if sealed.is_empty() || sealed.len() > SEALED_LEN_MAX {
        return Err(ErrorMsg::new(
            ErrorCode::Malformed,
            format!("a sealed contact record has 1 to {SEALED_LEN_MAX} bytes, this one has {}", sealed.len()),
        ));
    }
    Ok(())
}

fn check_message(message: &str) -> Result<(), ErrorMsg> {
    let n = message.chars().count();
    if n > MESSAGE_CHARS_MAX {
        return Err(ErrorMsg::new(
            ErrorCode::Malformed,
            format!("a request message has at most {MESSAGE_CHARS_MAX} characters, this one has {n}"),
        ));
    }
    // The recipient's terminal prints it: no escape sequences from strangers.
    if message.chars().any(char::is_control) {
        return Err(ErrorMsg::new(ErrorCode::Malformed, "a request message may not contain control characters"));
    }
    Ok(())
}

fn refusal(e: StoreError) -> ErrorMsg {
    match e {
        StoreError::UnknownUser(name) => ErrorMsg::new(ErrorCode::UnknownUser, format!("no account named {name:?}")),
        StoreError::Full => ErrorMsg::new(ErrorCode::Full, e.to_string()),
        StoreError::NotPending(from) => {
            ErrorMsg::new(ErrorCode::NotPending, format!("no pending request from {from:?}"))
        }
        e => internal(e),
    }
}

fn internal(e: StoreError) -> ErrorMsg {
    tracing::error!(error = %e, "account store failed during a buddy operation");
    ErrorMsg::new(ErrorCode::Internal, "the account store failed; try again later")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::buddy::Relation;
    use crate::buddy::op::Row;
    use crate::crypto::PrivateKey;
    use crate::crypto::aead::SessionSecret;
    use crate::crypto::credential::{Claims, Credential, CredentialKind};
    use crate::crypto::envelope;
    use crate::crypto::keys::tests::test_key;
    use crate::crypto::password::Verifier;
    use crate::login::guard::ThrottlePolicy;
    use crate::login::service::LoginPolicy;
    use proptest::prelude::*;

    const NOW: u64 = 1_700_000_000;
    const SRC: IpAddr = IpAddr::V4(std::net::Ipv4Addr::LOCALHOST);

    struct T {
        _dir: tempfile::TempDir,
        svc: LoginService,
        host: PrivateKey,
    }

    fn setup_with(policy: LoginPolicy) -> T {
        let dir = tempfile::tempdir().unwrap();
        let store = AccountStore::open(&dir.path().join("accounts.sqlite")).unwrap();
        for n in ["Alice", "Bob", "Carol", "Dave"] {
            store.create(&n.to_ascii_lowercase(), n, Verifier([0; 32]), None, 1).unwrap();
        }
        T { _dir: dir, svc: LoginService::new(test_key(0), store, policy), host: test_key(2) }
    }

    fn setup() -> T {
        setup_with(LoginPolicy::default())
    }

    fn credential(signer: &PrivateKey, host: &PrivateKey, user: &str, issued: u64, expires: u64) -> Credential {
        Credential::issue(
            Claims {
                kind: CredentialKind::Host,
                subject: user.into(),
                public_key: host.public().clone(),
                issued_at: issued,
                expires_at: expires,
                serial: 1,
            },
            signer,
        )
    }

    /// A request as the client builds it: (frame payload, reply secret).
    fn request(t: &T, cred: &Credential, signer: &PrivateKey, ts: u64, op: BuddyOp) -> (Vec<u8>, SessionSecret) {
        let (env, secret) = envelope::seal_with(t.svc.public_key(), MessageKind::BuddyRequest, [0; 32], |wrapped| {
            SignedOp::sign(cred, signer, wrapped, ts, op)
        });
        (env.encode(), secret)
    }

    impl T {
        fn cred(&self, user: &str) -> Credential {
            credential(&test_key(0), &self.host, user, NOW - 10, NOW + 3600)
        }

        fn send(&self, user: &str, op: BuddyOp) -> Result<BuddyAnswer, ErrorMsg> {
            self.send_at(user, op, NOW)
        }

        fn send_at(&self, user: &str, op: BuddyOp, now: u64) -> Result<BuddyAnswer, ErrorMsg> {
            let (payload, _) = request(self, &self.cred(user), &self.host, now, op);
            answer(self.svc.handle(now, SRC, MessageKind::BuddyRequest, &payload))
        }

        fn add(&self, owner: &str, contact: &str) -> Result<BuddyAnswer, ErrorMsg> {
            let op = BuddyOp::Add { contact: contact.into(), sealed: b"sealed".to_vec(), message: "hi".into() };
            self.send(owner, op)
        }

        fn requests(&self, user: &str) -> Vec<Incoming> {
            match self.send(user, BuddyOp::Requests).unwrap() {
                BuddyAnswer::Requests { items } => items,
                a => panic!("{a:?}"),
            }
        }

        fn rows(&self, user: &str) -> Vec<Row> {
            match self.send(user, BuddyOp::List { after: None }).unwrap() {
                BuddyAnswer::Page { rows, .. } => rows,
                a => panic!("{a:?}"),
            }
        }

        fn relation(&self, owner: &str, contact: &str) -> Option<Relation> {
            let tag = self.svc.store().tag_key().tag(owner, contact).0;
            self.rows(owner).into_iter().find(|r| r.tag == tag).map(|r| r.relation)
        }
    }

    fn answer(h: Handled) -> Result<BuddyAnswer, ErrorMsg> {
        assert_eq!(h.kind, Some(MessageKind::BuddyRequest));
        match h.reply {
            Reply::Sealed { kind, body, .. } => {
                assert_eq!(kind, MessageKind::BuddyReply);
                assert!(matches!(h.outcome, "buddy_ok" | "blocked_silently"));
                Ok(BuddyAnswer::decode(&body).expect("the answer decodes"))
            }
            Reply::Error { error, .. } => {
                assert_eq!(h.outcome, error.code.label());
                Err(error)
            }
            Reply::Puzzle { .. } => panic!("a buddy request was asked for a puzzle"),
        }
    }

    fn code(r: Result<BuddyAnswer, ErrorMsg>) -> ErrorCode {
        r.expect_err("refused").code
    }

    #[test]
    fn request_then_accept_authorizes_both() {
        let t = setup();
        assert_eq!(t.add("alice", "BOB").unwrap(), BuddyAnswer::Relation(Relation::Requested));
        let reqs = t.requests("bob");
        assert_eq!(reqs.len(), 1);
        assert_eq!((reqs[0].from.as_str(), reqs[0].message.as_str(), reqs[0].at), ("Alice", "hi", NOW));
        assert_eq!(t.relation("alice", "bob"), Some(Relation::Requested));
        let accept = BuddyOp::Answer { from: "alice".into(), accept: true, sealed: b"rec".to_vec() };
        assert_eq!(t.send("bob", accept.clone()).unwrap(), BuddyAnswer::Relation(Relation::Authorized));
        assert_eq!(t.relation("alice", "bob"), Some(Relation::Authorized));
        assert_eq!(t.relation("bob", "alice"), Some(Relation::Authorized));
        assert!(t.requests("bob").is_empty());
        assert_eq!(code(t.send("bob", accept)), ErrorCode::NotPending);
    }

    #[test]
    fn decline_marks_the_requester() {
        let t = setup();
        t.add("alice", "bob").unwrap();
        let decline = BuddyOp::Answer { from: "Alice".into(), accept: false, sealed: vec![] };
        assert_eq!(t.send("bob", decline).unwrap(), BuddyAnswer::Relation(Relation::Declined));
        assert_eq!(t.relation("alice", "bob"), Some(Relation::Declined));
        assert!(t.rows("bob").is_empty());
        // Accepting needs a record to store.
        t.add("carol", "bob").unwrap();
        let empty = BuddyOp::Answer { from: "carol".into(), accept: true, sealed: vec![] };
        assert_eq!(code(t.send("bob", empty)), ErrorCode::Malformed);
        assert_eq!(t.requests("bob").len(), 1, "a malformed answer leaves the request");
    }

    #[test]
    fn adding_someone_who_asked_first_authorizes_both() {
        let t = setup();
        t.add("alice", "bob").unwrap();
        assert_eq!(t.add("bob", "alice").unwrap(), BuddyAnswer::Relation(Relation::Authorized));
        assert_eq!(t.relation("alice", "bob"), Some(Relation::Authorized));
        assert_eq!(t.relation("bob", "alice"), Some(Relation::Authorized));
        assert!(t.requests("bob").is_empty() && t.requests("alice").is_empty());
        // Adding again keeps the authorization.
        assert_eq!(t.add("alice", "bob").unwrap(), BuddyAnswer::Relation(Relation::Authorized));
    }

    #[test]
    fn a_blocked_requester_cannot_tell() {
        let t = setup();
        let block = BuddyOp::Block { contact: "alice".into(), sealed: b"rec".to_vec() };
        assert_eq!(t.send("bob", block).unwrap(), BuddyAnswer::Done);
        let op = BuddyOp::Add { contact: "bob".into(), sealed: b"s".to_vec(), message: "hi".into() };
        let (payload, _) = request(&t, &t.cred("alice"), &t.host, NOW, op);
        let h = t.svc.handle(NOW, SRC, MessageKind::BuddyRequest, &payload);
        assert_eq!(h.outcome, "blocked_silently");
        assert_eq!(h.op, Some("add"));
        assert_eq!(answer(h).unwrap(), BuddyAnswer::Relation(Relation::Requested));
        assert!(t.requests("bob").is_empty());
        assert_eq!(t.relation("alice", "bob"), Some(Relation::Requested));
        assert_eq!(t.relation("bob", "alice"), Some(Relation::Blocked));
    }

    #[test]
    fn remove_withdraws_the_request() {
        let t = setup();
        t.add("alice", "bob").unwrap();
        assert_eq!(t.send("alice", BuddyOp::Remove { contact: "bob".into() }).unwrap(), BuddyAnswer::Done);
        assert!(t.requests("bob").is_empty());
        assert!(t.rows("alice").is_empty());
        assert_eq!(t.send("alice", BuddyOp::Remove { contact: "bob".into() }).unwrap(), BuddyAnswer::Done);
    }

    #[test]
    fn bad_names_and_fields_are_refused() {
        let t = setup();
        assert_eq!(code(t.add("alice", "alice")), ErrorCode::InvalidUsername);
        assert_eq!(code(t.add("alice", "ALICE")), ErrorCode::InvalidUsername);
        assert_eq!(code(t.add("alice", "no such user")), ErrorCode::InvalidUsername);
        assert_eq!(code(t.add("alice", "zed")), ErrorCode::UnknownUser);
        let long = BuddyOp::Add { contact: "bob".into(), sealed: b"s".to_vec(), message: "x".repeat(201) };
        assert_eq!(code(t.send("alice", long)), ErrorCode::Malformed);
        let escape = BuddyOp::Add { contact: "bob".into(), sealed: b"s".to_vec(), message: "\x1b[2J".into() };
        assert_eq!(code(t.send("alice", escape)), ErrorCode::Malformed);
        let big = BuddyOp::Add { contact: "bob".into(), sealed: vec![0; SEALED_LEN_MAX + 1], message: String::new() };
        assert_eq!(code(t.send("alice", big)), ErrorCode::Malformed);
        let fits = BuddyOp::Add { contact: "bob".into(), sealed: vec![0; SEALED_LEN_MAX], message: "é".repeat(200) };
        assert!(t.send("alice", fits).is_ok());
        assert!(t.rows("alice").len() == 1 && t.requests("bob").len() == 1);
    }

    #[test]
    fn requests_answer_fits_one_frame() {
        let t = setup();
        let long = "\u{10000}".repeat(MESSAGE_CHARS_MAX);
        for (i, u) in ["alice", "carol", "dave"].into_iter().enumerate() {
            let op = BuddyOp::Add { contact: "bob".into(), sealed: b"s".to_vec(), message: long.clone() };
            t.send_at(u, op, NOW + i as u64).unwrap();
        }
        let items = t.requests("bob");
        let encoded = BuddyAnswer::Requests { items: items.clone() }.encode();
        assert!(encoded.len() <= REQUESTS_ANSWER_LEN_MAX);
        assert_eq!(items.len(), 3);
        // Beyond what fits, the oldest come first.
        let many: Vec<Incoming> =
            (0..10).map(|i| Incoming { from: format!("user{i}"), message: long.clone(), at: i }).collect();
        let fitted = fit_one_frame(many);
        assert!((2..10).contains(&fitted.len()));
        assert_eq!(fitted[0].at, 0);
        assert!(BuddyAnswer::Requests { items: fitted }.encode().len() <= REQUESTS_ANSWER_LEN_MAX);
    }

    #[test]
    fn replayed_request_is_refused() {
        let t = setup();
        let (payload, _) = request(&t, &t.cred("alice"), &t.host, NOW, BuddyOp::Requests);
        assert!(answer(t.svc.handle(NOW, SRC, MessageKind::BuddyRequest, &payload)).is_ok());
        assert_eq!(code(answer(t.svc.handle(NOW + 1, SRC, MessageKind::BuddyRequest, &payload))), ErrorCode::Replayed);
        let (old, _) = request(&t, &t.cred("alice"), &t.host, NOW - 3600, BuddyOp::Requests);
        assert_eq!(code(answer(t.svc.handle(NOW, SRC, MessageKind::BuddyRequest, &old))), ErrorCode::ClockSkew);
    }

    #[test]
    fn forged_signature_is_refused_and_counts_against_the_source() {
        let policy = LoginPolicy {
            throttle: ThrottlePolicy { source_refuse_after: 2, source_puzzle_after: 2, ..Default::default() },
            ..LoginPolicy::default()
        };
        let t = setup_with(policy);
        // Alice's credential, but the operation signed by another key.
        let cred = t.cred("alice");
        let (payload, secret) = request(&t, &cred, &test_key(1), NOW, BuddyOp::Requests);
        let h = t.svc.handle(NOW, SRC, MessageKind::BuddyRequest, &payload);
        assert!(matches!(&h.reply, Reply::Error { secret: Some(s), .. } if s.0 == secret.0), "sealed error");
        assert_eq!(code(answer(h)), ErrorCode::BadSignature);
        // A credential the server did not issue.
        let foreign = credential(&test_key(1), &t.host, "alice", NOW, NOW + 3600);
        let (payload, _) = request(&t, &foreign, &t.host, NOW, BuddyOp::Requests);
        assert_eq!(
            code(answer(t.svc.handle(NOW, SRC, MessageKind::BuddyRequest, &payload))),
            ErrorCode::UntrustedCredential
        );
        // A second forgery starts the source's back-off: even a good request waits.
        let (payload, _) = request(&t, &cred, &test_key(1), NOW, BuddyOp::Requests);
        assert_eq!(code(answer(t.svc.handle(NOW, SRC, MessageKind::BuddyRequest, &payload))), ErrorCode::BadSignature);
        assert_eq!(code(t.send("alice", BuddyOp::Requests)), ErrorCode::TooManyAttempts);
    }

    #[test]
    fn peer_login_keys_can_be_trusted() {
        let t = setup();
        let dir = tempfile::tempdir().unwrap();
        let store = AccountStore::open(&dir.path().join("a.sqlite")).unwrap();
        let svc = LoginService::new(test_key(0), store, LoginPolicy::default())
            .with_peer_keys([test_key(1).public().clone()]);
        let foreign = credential(&test_key(1), &t.host, "alice", NOW, NOW + 3600);
        let (payload, _) = request(&t, &foreign, &t.host, NOW, BuddyOp::Requests);
        assert!(answer(svc.handle(NOW, SRC, MessageKind::BuddyRequest, &payload)).is_ok());
    }

    #[test]
    fn expired_credential_is_refused() {
        let t = setup();
        let old = credential(&test_key(0), &t.host, "alice", NOW - 90_000, NOW - 3600);
        let (payload, _) = request(&t, &old, &t.host, NOW, BuddyOp::Requests);
        assert_eq!(
            code(answer(t.svc.handle(NOW, SRC, MessageKind::BuddyRequest, &payload))),
            ErrorCode::CredentialExpired
        );
        // Expiry is no sign of forgery: the source is not held back.
        assert!(t.send("alice", BuddyOp::Requests).is_ok());
    }

    #[test]
    fn an_owner_gets_twenty_operations_a_second() {
        let t = setup();
        for _ in 0..OPS_PER_SECOND_MAX {
            t.send("alice", BuddyOp::List { after: None }).unwrap();
        }
        let e = t.send("alice", BuddyOp::List { after: None }).unwrap_err();
        assert_eq!((e.code, e.retry_after_secs), (ErrorCode::TooManyAttempts, 1));
        // Others are not affected, and the next second starts over.
        t.send("bob", BuddyOp::List { after: None }).unwrap();
        t.send_at("alice", BuddyOp::List { after: None }, NOW + 1).unwrap();
    }

    #[test]
    fn limiter_memory_is_bounded() {
        let mut l = OpsLimiter::default();
        for i in 0..(LIMITER_ENTRIES_MAX as u64 + 10) {
            assert!(l.admit(&i.to_string(), i / 1000));
        }
        assert!(l.counts.len() <= LIMITER_ENTRIES_MAX);
    }

    #[test]
    fn garbage_is_refused_without_panicking() {
        let t = setup();
        for payload in [&[][..], &[0; 10], &[0xff; 3000]] {
            assert_eq!(code(answer(t.svc.handle(NOW, SRC, MessageKind::BuddyRequest, payload))), ErrorCode::Malformed);
        }
        // A well-formed envelope around garbage: refused, sealed.
        let (env, _) = envelope::seal(t.svc.public_key(), MessageKind::BuddyRequest, [0; 32], &[1, 2, 3]);
        let h = t.svc.handle(NOW, SRC, MessageKind::BuddyRequest, &env.encode());
        assert!(matches!(h.reply, Reply::Error { secret: Some(_), .. }));
        assert_eq!(code(answer(h)), ErrorCode::Malformed);
        // Wrapped for another key: refused, but not held against the source (a host that
        // trusts several login keys tries each in turn).
        let (env, _) = envelope::seal(test_key(1).public(), MessageKind::BuddyRequest, [0; 32], &[1, 2, 3]);
        for _ in 0..10 {
            let h = t.svc.handle(NOW, SRC, MessageKind::BuddyRequest, &env.encode());
            assert_eq!(code(answer(h)), ErrorCode::BadEnvelope);
        }
        assert!(t.send("alice", BuddyOp::Requests).is_ok());
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]
        #[test]
        fn any_payload_or_body_is_handled(b in proptest::collection::vec(any::<u8>(), 0..3000)) {
            let t = setup();
            let h = t.svc.handle(NOW, SRC, MessageKind::BuddyRequest, &b);
            let refused = matches!(h.reply, Reply::Error { .. });
            prop_assert!(refused);
            let (env, _) = envelope::seal(t.svc.public_key(), MessageKind::BuddyRequest, [0; 32], &b);
            let h = t.svc.handle(NOW, SRC, MessageKind::BuddyRequest, &env.encode());
            let refused = matches!(h.reply, Reply::Error { .. });
            prop_assert!(refused);
            let _ = SignedOp::decode(&b);
            let _ = BuddyAnswer::decode(&b);
        }

        #[test]
        fn any_operation_is_handled(contact in "\\PC{0,40}", message in "\\PC{0,250}", sealed in proptest::collection::vec(any::<u8>(), 0..200), after in any::<Option<u32>>()) {
            let t = setup();
            for op in [
                BuddyOp::Add { contact: contact.clone(), sealed: sealed.clone(), message: message.clone() },
                BuddyOp::Answer { from: contact.clone(), accept: true, sealed: sealed.clone() },
                BuddyOp::Remove { contact: contact.clone() },
                BuddyOp::Block { contact: contact.clone(), sealed: sealed.clone() },
                BuddyOp::List { after },
            ] {
                let _ = apply(t.svc.store(), "alice", &op, NOW);
            }
        }
    }
}
