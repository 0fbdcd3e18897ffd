//! A whole network in one test process, over real sockets and a real SQLite file:
//! register, log in, and every failure a user can meet.

mod common;

use common::{TestNet, key};
use confab::crypto::aead::{SessionSecret, label};
use confab::crypto::credential::{Claims, Credential, CredentialKind, TrustedKeys};
use confab::crypto::{PublicKey, envelope};
use confab::host::account::{self, LoginServers};
use confab::host::cache::{CacheEntry, HostCache, NodeKind};
use confab::host::connect::{self, Me};
use confab::host::handshake::HandshakeError;
use confab::host::{self, HostError};
use confab::nat::NatKind;
use confab::net::tcp;
use confab::supernode::{BoundNode, Identity, NodeSpec, SessionParams};
use confab::wire::frame::{self, Direction};
use confab::wire::message::{AccountBody, ErrorMsg, MessageKind};
use confab::wire::{DecodeError, ErrorCode};
use std::net::SocketAddr;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

const PW: &str = "correct horse battery";

async fn register(t: &TestNet, user: &str, pw: &str) -> Result<String, HostError> {
    host::register(&t.settings(), &t.home(user), user, pw).await
}

fn refused(e: &HostError) -> Option<ErrorCode> {
    match e {
        HostError::Account(a) => a.code(),
        _ => None,
    }
}

#[actix_rt::test]
async fn register_then_login_reports_everything() {
    let t = common::start(3, |_| {}).await;
    assert_eq!(register(&t, "Alice", PW).await.unwrap(), "Alice");
    let home = t.home("alice");
    let s = host::login(&t.settings(), &home, "alice", PW).await.unwrap();
    let r = s.report.clone();
    assert_eq!(r.user, "Alice", "the name as registered");
    assert_eq!(r.transport, "udp");
    assert!((0..3).any(|i| r.supernode == t.node(i)), "{}", r.supernode);
    assert_eq!(r.public_addr, SocketAddr::from(([127, 0, 0, 1], r.local_port)));
    assert_eq!(r.nat, NatKind::None, "loopback is no NAT");
    let now = confab::unix_now();
    assert!((now + 24 * 3600).abs_diff(r.credential_expires_unix) < 60, "24 h credential");
    assert!(!r.update_available);
    s.logout().await;

    // The host cache learned every super node and the login server, and the port is kept.
    let cache = HostCache::load(&home.cache_path());
    assert!(cache.supernodes().len() >= 3, "{:?}", cache.entries());
    assert!(cache.entries().iter().any(|e| e.kind == NodeKind::LoginServer && e.last_success.is_some()));
    assert_eq!(cache.supernodes()[0].name, r.supernode, "the one that worked comes first");
    let again = host::login(&t.settings(), &home, "alice", PW).await.unwrap();
    assert_eq!(again.report.local_port, r.local_port, "port P is kept in the home");
    assert_eq!(again.report.attempts[0].stage, confab::host::ladder::Stage::CachedUdp);
    again.logout().await;
    t.net.stop().await;
}

#[actix_rt::test]
async fn registration_rules_and_taken_names() {
    let t = common::start(1, |_| {}).await;
    register(&t, "bob", PW).await.unwrap();
    let e = register(&t, "BOB", PW).await.unwrap_err();
    assert_eq!(refused(&e), Some(ErrorCode::UsernameTaken), "{e}");
    assert!(e.to_string().contains("taken"), "{e}");
    // Rules are checked by the host first …
    for bad in ["ab", "has space", "ünïcode", &"x".repeat(33)] {
        let e = register(&t, bad, PW).await.unwrap_err();
        assert!(matches!(e, HostError::Local(_)), "{bad}: {e}");
    }
    let e = register(&t, "carol", "short").await.unwrap_err();
    assert!(e.to_string().contains("at least 8"), "{e}");
    // … and again by the server, whatever a client sends.
    let servers = login_servers(&t);
    let secret = confab::crypto::password::shared_secret("x y", PW);
    let keys = confab::crypto::user::UserPublicKeys { x25519: [1; 32], ed25519: [2; 32] };
    let e = account::register(&servers, "x y", &secret, keys).await.unwrap_err();
    assert_eq!(e.code(), Some(ErrorCode::InvalidUsername), "{e}");
    t.net.stop().await;
}

fn login_servers(t: &TestNet) -> LoginServers {
    let s = t.settings();
    LoginServers { addrs: s.login_servers, trusted: s.trusted, timeout: Duration::from_secs(5) }
}

#[actix_rt::test]
async fn wrong_password_unknown_user_and_source_backoff() {
    let t = common::start(1, |c| {
        let th = &mut c.login_server.throttle;
        (th.user_puzzle_after, th.source_puzzle_after, th.source_refuse_after) = (2, 3, 5);
        // One failure forgiven a minute (the recovery is unit-tested on virtual time).
        th.source_forgive_per_min = 1;
    })
    .await;
    register(&t, "dave", PW).await.unwrap();
    let s = t.settings();
    let ok = host::login(&s, &t.home("dave"), "dave", PW).await.unwrap();
    ok.logout().await;
    let e = host::login(&s, &t.home("dave"), "nobody", PW).await.err().unwrap();
    assert_eq!(refused(&e), Some(ErrorCode::UnknownUser), "{e}");
    assert!(e.to_string().contains("no account named"), "{e}");
    // Failures past user_puzzle_after and source_puzzle_after cost puzzles, which the
    // client solves: the answer is still the truth about the password, until this
    // source has failed source_refuse_after times and is refused before any work.
    let mut failures = 0;
    loop {
        let e = host::login(&s, &t.home("dave"), "dave", "wrong password").await.err().unwrap();
        match refused(&e) {
            Some(ErrorCode::WrongPassword) if failures < 10 => failures += 1,
            Some(ErrorCode::TooManyAttempts) => break,
            _ => panic!("after {failures} failures: {e}"),
        }
    }
    // The unknown user was the source's first failure.
    assert!(failures >= 4, "refused after only {failures} failures");
    // Refused whatever it sends, so a guesser learns nothing.
    let e = host::login(&s, &t.home("dave"), "dave", PW).await.err().unwrap();
    assert_eq!(refused(&e), Some(ErrorCode::TooManyAttempts), "{e}");
    assert!(e.to_string().contains("try again in"), "{e}");
    let m = t.metrics().await;
    assert!(t.metric(&m, "confab_login_requests_total", &["outcome=\"wrong_password\""]) >= 4.0);
    assert!(t.metric(&m, "confab_login_requests_total", &["outcome=\"puzzle_required\""]) >= 1.0);
    assert!(t.metric(&m, "confab_login_requests_total", &["outcome=\"too_many_attempts\""]) >= 1.0);
    t.net.stop().await;
}

/// Sends one raw request frame and returns (kind, opened body).
async fn raw_exchange(addr: SocketAddr, request: &[u8], secret: &SessionSecret) -> (MessageKind, Vec<u8>) {
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    tcp::write_frame(&mut s, request).await.unwrap();
    let reply = tcp::read_frame(&mut s).await.unwrap().unwrap();
    let raw = frame::decode(addr, &reply).unwrap();
    let body = if raw.header.sealed {
        raw.open(&secret.derive(label::RESPONDER_TO_INITIATOR), Direction::ToInitiator).unwrap()
    } else {
        raw.payload.to_vec()
    };
    (raw.header.kind, body)
}

fn login_request(t: &TestNet, user: &str, timestamp: u64) -> (Vec<u8>, SessionSecret) {
    let login_pub = PublicKey::read_pem_file(&t.net.info.data.join("login.pub.pem")).unwrap();
    let body = AccountBody {
        username: user.into(),
        shared_secret: confab::crypto::password::shared_secret(user, PW).0,
        timestamp,
        client_version: confab::VERSION.into(),
        host_public_key: Vec::new(),
        last_supernode: String::new(),
        possession: Vec::new(),
        user_keys: None,
    };
    let (env, secret) = envelope::seal_login(&login_pub, body, &key("host-0"));
    (frame::encode_plain(t.net.info.login_server, MessageKind::LoginRequest, 0, &env.encode()), secret)
}

#[actix_rt::test]
async fn replayed_and_skewed_requests_are_refused() {
    let t = common::start(1, |_| {}).await;
    register(&t, "erin", PW).await.unwrap();
    let addr = t.net.info.login_server;
    let (req, secret) = login_request(&t, "erin", confab::unix_now());
    let (kind, _) = raw_exchange(addr, &req, &secret).await;
    assert_eq!(kind, MessageKind::LoginReply);
    let (kind, body) = raw_exchange(addr, &req, &secret).await;
    assert_eq!(kind, MessageKind::Error);
    assert_eq!(ErrorMsg::decode(&body).unwrap().code, ErrorCode::Replayed);
    let (req, secret) = login_request(&t, "erin", confab::unix_now() - 3600);
    let (_, body) = raw_exchange(addr, &req, &secret).await;
    assert_eq!(ErrorMsg::decode(&body).unwrap().code, ErrorCode::ClockSkew);
    // A request wrapped for a key the server does not hold cannot even be read.
    let other = key("login-1");
    let body = AccountBody {
        username: "erin".into(),
        shared_secret: [0; 32],
        timestamp: confab::unix_now(),
        client_version: "x".into(),
        host_public_key: vec![],
        last_supernode: String::new(),
        possession: Vec::new(),
        user_keys: None,
    };
    let (env, secret) = envelope::seal(other.public(), MessageKind::LoginRequest, [0; 32], &body.encode());
    let req = frame::encode_plain(addr, MessageKind::LoginRequest, 0, &env.encode());
    let (kind, body) = raw_exchange(addr, &req, &secret).await;
    assert_eq!(kind, MessageKind::Error);
    assert_eq!(ErrorMsg::decode(&body).unwrap().code, ErrorCode::BadEnvelope);
    // The right password, but a key the host cannot prove it holds: no credential.
    let login_pub = PublicKey::read_pem_file(&t.net.info.data.join("login.pub.pem")).unwrap();
    let mut body = AccountBody {
        username: "erin".into(),
        shared_secret: confab::crypto::password::shared_secret("erin", PW).0,
        timestamp: confab::unix_now(),
        client_version: confab::VERSION.into(),
        host_public_key: key("host-1").public().der().to_vec(),
        last_supernode: String::new(),
        possession: Vec::new(),
        user_keys: None,
    };
    let (env, secret) = envelope::seal_with(&login_pub, MessageKind::LoginRequest, [0; 32], |wrapped| {
        body.possession = key("host-0").sign_pss(&body.possession_message(wrapped));
        body.encode()
    });
    let req = frame::encode_plain(addr, MessageKind::LoginRequest, 0, &env.encode());
    let (kind, body) = raw_exchange(addr, &req, &secret).await;
    assert_eq!(kind, MessageKind::Error);
    assert_eq!(ErrorMsg::decode(&body).unwrap().code, ErrorCode::BadSignature);
    t.net.stop().await;
}

fn host_credential(signer: &str, user: &str, issued: u64, expires: u64) -> Credential {
    Credential::issue(
        Claims {
            kind: CredentialKind::Host,
            subject: user.into(),
            public_key: key("host-1").public().clone(),
            issued_at: issued,
            expires_at: expires,
            serial: 1,
        },
        &key(signer),
    )
}

async fn handshake_with(t: &TestNet, addr: SocketAddr, cred: &Credential) -> Result<(), HandshakeError> {
    let s = t.settings();
    let udp = std::sync::Arc::new(tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap());
    let plan = [confab::host::ladder::Attempt {
        stage: confab::host::ladder::Stage::BootstrapUdp,
        transport: confab::host::ladder::Transport::Udp,
        addr,
    }];
    let host_key = key("host-1");
    let me = Me { trusted: &s.trusted, credential: cred, key: &host_key };
    let mut log = Vec::new();
    match connect::run(&plan, &udp, &me, &s.timeouts, &mut log).await {
        Ok(_) => Ok(()),
        Err(connect::LadderError::Exhausted { last: Some(e), .. }) => Err(e),
        Err(e) => panic!("no answer at all: {e} {log:?}"),
    }
}

#[actix_rt::test]
async fn super_node_refuses_expired_and_untrusted_credentials() {
    let t = common::start(1, |_| {}).await;
    let sn = t.net.info.supernodes[0].udp;
    let now = confab::unix_now();
    handshake_with(&t, sn, &host_credential("login-0", "frank", now, now + 60)).await.unwrap();
    let e = handshake_with(&t, sn, &host_credential("login-0", "frank", now - 7200, now - 3600)).await.unwrap_err();
    assert!(matches!(&e, HandshakeError::Refused { error, .. } if error.code == ErrorCode::CredentialExpired), "{e}");
    let e = handshake_with(&t, sn, &host_credential("login-1", "frank", now, now + 60)).await.unwrap_err();
    assert!(matches!(&e, HandshakeError::Refused { error, .. } if error.code == ErrorCode::UntrustedCredential), "{e}");
    let m = t.metrics().await;
    assert!(t.metric(&m, "confab_supernode_handshakes_total", &["outcome=\"credential_expired\""]) >= 1.0);
    t.net.stop().await;
}

/// Starts a lone super node with the given key and credential, trusting login-0.
async fn rogue_node(name: &str, node_key: &str, credential: Credential, token: &CancellationToken) -> SocketAddr {
    let trusted = TrustedKeys::new(vec![key("login-0").public().clone()]);
    let spec = NodeSpec {
        identity: Identity::new(name.into(), key(node_key), credential, trusted),
        udp: "127.0.0.1:0".parse().unwrap(),
        tcp: "127.0.0.1:0".parse().unwrap(),
        probe_udp: None,
        fallback_tcp: vec![],
        public_ip: None,
        params: SessionParams::default(),
        cluster: None,
        relay: None,
    };
    let b = BoundNode::bind(spec).await.unwrap();
    let addr = b.addrs().udp;
    let _ = b.start(vec![], &[], token.clone());
    addr
}

#[actix_rt::test]
async fn impostor_super_nodes_are_named() {
    let t = common::start(1, |_| {}).await;
    let token = CancellationToken::new();
    let now = confab::unix_now();
    let me = host_credential("login-0", "gina", now, now + 60);
    // 1. Certified by a login key the host does not trust.
    let forged = confab::keygen::certify_supernode(&key("login-1"), "evil", key("supernode-2").public(), 1, now);
    let evil = rogue_node("evil", "supernode-2", forged, &token).await;
    let e = handshake_with(&t, evil, &me).await.unwrap_err();
    assert!(matches!(e, HandshakeError::Impostor { .. }), "{e}");
    assert!(e.to_string().contains("impostor"), "{e}");
    // 2. A real super node's credential, replayed by a machine without its key.
    let real = confab::keygen::certify_supernode(&key("login-0"), "sn1", key("supernode-0").public(), 1, now);
    let thief = rogue_node("sn1", "supernode-2", real, &token).await;
    let e = handshake_with(&t, thief, &me).await.unwrap_err();
    assert!(matches!(e, HandshakeError::NotKeyHolder { .. }), "{e}");
    token.cancel();
    t.net.stop().await;
}

/// A host that speaks to a super node frame by frame: the handshake through the ladder,
/// then sealed requests and their answers over its own UDP socket.
struct RawHost {
    udp: std::sync::Arc<tokio::net::UdpSocket>,
    session: confab::host::handshake::ClientSession,
}

impl RawHost {
    async fn connect(t: &TestNet, addr: SocketAddr, cred: &Credential) -> Self {
        let s = t.settings();
        let udp = std::sync::Arc::new(tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap());
        let plan = [confab::host::ladder::Attempt {
            stage: confab::host::ladder::Stage::BootstrapUdp,
            transport: confab::host::ladder::Transport::Udp,
            addr,
        }];
        let host_key = key("host-1");
        let me = Me { trusted: &s.trusted, credential: cred, key: &host_key };
        let connected = connect::run(&plan, &udp, &me, &s.timeouts, &mut Vec::new()).await.unwrap();
        Self { udp, session: connected.session }
    }

    /// Sends one sealed request and returns the next sealed answer (notices skipped).
    async fn ask(&mut self, kind: MessageKind, body: &[u8]) -> (MessageKind, Vec<u8>) {
        let f = self.session.seal(kind, body);
        self.udp.send_to(&f, self.session.addr).await.unwrap();
        let mut buf = vec![0u8; frame::FRAME_LEN_MAX + 1];
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        loop {
            let (n, from) = tokio::time::timeout_at(deadline, self.udp.recv_from(&mut buf))
                .await
                .unwrap_or_else(|_| panic!("no answer to {}", kind.label()))
                .unwrap();
            if from != self.session.addr {
                continue;
            }
            match self.session.open(&buf[..n]) {
                Ok((MessageKind::Notice, _)) | Err(_) => continue,
                Ok(answer) => return answer,
            }
        }
    }
}

/// A signed, current index entry for `cred`'s user (signed with host-1, its key).
fn signed_entry(cred: &Credential) -> Vec<u8> {
    use confab::index::entry::{Entry, EntryBody, Profile, Status};
    let body = EntryBody {
        user: cred.subject.clone(),
        credential: cred.encode(),
        status: Status::Online,
        supernode: "sn".into(),
        public_addr: None,
        nat: NatKind::None,
        profile: Profile::default(),
        last_seen: confab::unix_now(),
        timestamp_ms: confab::unix_now() * 1000,
        user_keys: None,
    };
    Entry::sign(body, cred, &key("host-1")).unwrap().encode()
}

fn decoded<T>(
    answer: (MessageKind, Vec<u8>),
    kind: MessageKind,
    decode: impl Fn(&[u8]) -> Result<T, DecodeError>,
) -> T {
    assert_eq!(answer.0, kind, "expected {}, got {}", kind.label(), answer.0.label());
    decode(&answer.1).unwrap()
}

/// An old host (empty keepalives, Publish) gets exactly the answers it always got; a host
/// that sent a keepalive id gets the id back, PublishReply for PublishReq, and failures as
/// RequestError carrying the failed request's id.
#[actix_rt::test]
async fn old_hosts_get_old_answers_and_revision_two_hosts_get_ids() {
    use confab::wire::message::{
        Find, FindReply, Keepalive, Observed, PublishAck, PublishReply, PublishReq, RequestError, Search,
    };
    let t = common::start(1, |_| {}).await;
    let now = confab::unix_now();
    let token = CancellationToken::new();
    // A lone super node (no cluster) holds no index: every index request fails there.
    let lone_cred = confab::keygen::certify_supernode(&key("login-0"), "lone", key("supernode-2").public(), 1, now);
    let lone = rogue_node("lone", "supernode-2", lone_cred, &token).await;
    let with_index = t.net.info.supernodes[0].udp;

    for (addr, index) in [(lone, false), (with_index, true)] {
        let old_cred = host_credential("login-0", "olga", now, now + 600);
        let mut old = RawHost::connect(&t, addr, &old_cred).await;
        let ack = decoded(old.ask(MessageKind::Keepalive, b"").await, MessageKind::KeepaliveAck, Observed::decode);
        assert_eq!(ack.id, 0);
        let ack = decoded(
            old.ask(MessageKind::Publish, &signed_entry(&old_cred)).await,
            MessageKind::PublishAck,
            PublishAck::decode,
        );
        let find = Find { req: 41, user: "nobody".into() };
        if index {
            assert_eq!((ack.code, ack.detail.as_str()), (0, ""), "{ack:?}");
            assert!(ack.replicas >= 1, "{ack:?}");
            let r =
                decoded(old.ask(MessageKind::Find, &find.encode()).await, MessageKind::FindReply, FindReply::decode);
            assert_eq!(r.req, 41);
        } else {
            assert_eq!(ack.code, ErrorCode::Unsupported.code(), "{ack:?}");
            let e = decoded(old.ask(MessageKind::Find, &find.encode()).await, MessageKind::Error, ErrorMsg::decode);
            assert_eq!(e.code, ErrorCode::Unsupported);
        }
        let e = decoded(old.ask(MessageKind::Find, &[0, 0, 0, 42]).await, MessageKind::Error, ErrorMsg::decode);
        assert_eq!(e.code, ErrorCode::Malformed);

        let new_cred = host_credential("login-0", "nina", now, now + 600);
        let mut new = RawHost::connect(&t, addr, &new_cred).await;
        let id = 0x1234_5678_9abc_def0;
        let ack = decoded(
            new.ask(MessageKind::Keepalive, &Keepalive { id }.encode()).await,
            MessageKind::KeepaliveAck,
            Observed::decode,
        );
        assert_eq!(ack.id, id, "a revision-2 super node echoes the id");
        let publish = PublishReq { req: 51, entry: signed_entry(&new_cred) };
        let reply = decoded(
            new.ask(MessageKind::PublishReq, &publish.encode()).await,
            MessageKind::PublishReply,
            PublishReply::decode,
        );
        assert_eq!(reply.req, 51);
        if index {
            assert_eq!((reply.ack.code, reply.ack.replicas >= 1), (0, true), "{reply:?}");
            // Another user's entry is refused, in a PublishReply with that request's id.
            let stolen = PublishReq { req: 52, entry: signed_entry(&old_cred) };
            let reply = decoded(
                new.ask(MessageKind::PublishReq, &stolen.encode()).await,
                MessageKind::PublishReply,
                PublishReply::decode,
            );
            assert_eq!((reply.req, reply.ack.code), (52, ErrorCode::BadSignature.code()), "{reply:?}");
            let r = decoded(
                new.ask(MessageKind::Find, &Find { req: 53, user: "olga".into() }.encode()).await,
                MessageKind::FindReply,
                FindReply::decode,
            );
            assert_eq!(r.req, 53);
            assert!(!r.entry.is_empty(), "the old host's publish is in the index");
        } else {
            assert_eq!(reply.ack.code, ErrorCode::Unsupported.code(), "{reply:?}");
            let e = decoded(
                new.ask(MessageKind::Find, &Find { req: 53, user: "olga".into() }.encode()).await,
                MessageKind::RequestError,
                RequestError::decode,
            );
            assert_eq!((e.req, e.error.code), (53, ErrorCode::Unsupported));
            let search = Search { req: 54, words: "olga".into(), limit: 5 };
            let e = decoded(
                new.ask(MessageKind::Search, &search.encode()).await,
                MessageKind::RequestError,
                RequestError::decode,
            );
            assert_eq!((e.req, e.error.code), (54, ErrorCode::Unsupported));
        }
        // A request that does not decode is answered with the id it starts with.
        let e =
            decoded(new.ask(MessageKind::Find, &[0, 0, 0, 55]).await, MessageKind::RequestError, RequestError::decode);
        assert_eq!((e.req, e.error.code), (55, ErrorCode::Malformed));
        // The old host, still connected beside it, keeps getting id-less errors.
        let e = decoded(old.ask(MessageKind::Find, &[0, 0, 0, 56]).await, MessageKind::Error, ErrorMsg::decode);
        assert_eq!(e.code, ErrorCode::Malformed);
    }
    token.cancel();
    t.net.stop().await;
}

#[actix_rt::test]
async fn update_available_is_reported() {
    let t = common::start(1, |c| c.login_server.latest_version = "9.9.9".into()).await;
    register(&t, "hank", PW).await.unwrap();
    let s = host::login(&t.settings(), &t.home("hank"), "hank", PW).await.unwrap();
    assert!(s.report.update_available);
    assert_eq!(s.report.latest_version, "9.9.9");
    s.logout().await;
    t.net.stop().await;
}

fn dead_port_entry(port: u16) -> CacheEntry {
    CacheEntry {
        kind: NodeKind::Supernode,
        name: format!("gone{port}"),
        udp: Some(SocketAddr::from(([127, 0, 0, 1], port))),
        tcp: Some(SocketAddr::from(([127, 0, 0, 1], port))),
        last_success: Some(1),
        rtt_ms: Some(1),
        failures: 0,
    }
}

/// A port with nothing listening on UDP or TCP (bound, read, released).
fn dead_port() -> u16 {
    let s = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    s.local_addr().unwrap().port()
}

#[actix_rt::test]
async fn cached_super_nodes_down_then_bootstrap() {
    let t = common::start(1, |_| {}).await;
    register(&t, "ivan", PW).await.unwrap();
    let home = t.home("ivan");
    let mut cache = HostCache::load(&home.cache_path());
    for _ in 0..3 {
        cache.learn(dead_port_entry(dead_port()));
    }
    cache.save().unwrap();
    let s = host::login(&t.settings(), &home, "ivan", PW).await.unwrap();
    let stages: Vec<_> = s.report.attempts.iter().map(|a| (a.stage, a.outcome.clone())).collect();
    use confab::host::ladder::Stage;
    assert_eq!(stages.iter().filter(|(s, _)| *s == Stage::CachedUdp).count(), 3, "{stages:?}");
    assert_eq!(stages.iter().filter(|(s, _)| *s == Stage::CachedTcp).count(), 3, "{stages:?}");
    assert_eq!(stages.last().unwrap(), &(Stage::BootstrapUdp, "ok".to_owned()), "{stages:?}");
    // The dead entries now carry failures and sort last (the host writes its cache in the
    // background, a moment after the login).
    let live = t.node(0);
    common::wait_for("the cache to list the live node first", Duration::from_secs(10), async || {
        let cache = HostCache::load(&home.cache_path());
        cache.supernodes()[0].name == live
            && cache.supernodes().iter().filter(|e| e.name.starts_with("gone")).all(|e| e.failures >= 2)
    })
    .await;
    s.logout().await;
    t.net.stop().await;
}

#[actix_rt::test]
async fn udp_dead_tcp_alive_logs_in_over_tcp() {
    let t = common::start(1, |_| {}).await;
    register(&t, "judy", PW).await.unwrap();
    let home = t.home("judy");
    let sn_tcp = t.net.info.supernodes[0].tcp[0];
    let mut cache = HostCache::load(&home.cache_path());
    cache.learn(CacheEntry { tcp: Some(sn_tcp), ..dead_port_entry(dead_port()) });
    cache.save().unwrap();
    let mut s = t.settings();
    s.ladder.bootstrap.clear();
    let session = host::login(&s, &home, "judy", PW).await.unwrap();
    assert_eq!(session.report.transport, "tcp");
    assert_eq!(session.report.nat, NatKind::UdpBlocked);
    let mut session = session;
    let seen = session.keepalive(Duration::from_secs(2)).await.expect("keepalive over TCP");
    assert_eq!(seen.ip(), std::net::IpAddr::from([127, 0, 0, 1]));
    session.logout().await;
    t.net.stop().await;
}

#[actix_rt::test]
async fn sessions_end_on_bye_and_on_silence() {
    let t = common::start(1, |c| {
        c.supernode.keepalive_secs = 1;
        c.supernode.idle_timeout_secs = 2;
    })
    .await;
    let node = (*t.net.nodes()[0]).clone();
    register(&t, "kate", PW).await.unwrap();
    let s = host::login(&t.settings(), &t.home("kate"), "kate", PW).await.unwrap();
    assert_eq!(node.hosts_connected(), 1);
    s.logout().await;
    wait_until(|| node.hosts_connected() == 0, "Bye removes the session").await;

    // A host that restarts without saying Bye comes back from the same address and port:
    // its new session replaces the old one, which leaves nothing behind.
    let crashed = host::login(&t.settings(), &t.home("kate"), "kate", PW).await.unwrap();
    drop(crashed);
    let mut s = host::login(&t.settings(), &t.home("kate"), "kate", PW).await.unwrap();
    wait_until(|| node.hosts_connected() == 1, "the replaced session is gone").await;
    // The session's own background keepalives hold it past the idle timeout …
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(node.hosts_connected(), 1);
    assert!(s.keepalive(Duration::from_secs(1)).await.is_some());
    // … a host that vanishes without a Bye is timed out.
    drop(s);
    wait_until(|| node.hosts_connected() == 0, "idle timeout removes the session").await;
    t.net.stop().await;
}

async fn wait_until(cond: impl Fn() -> bool, what: &str) {
    for _ in 0..100 {
        if cond() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("timed out waiting: {what}");
}

#[actix_rt::test]
async fn last_resort_tcp_port_on_a_bootstrap_address() {
    let t = common::start(1, |_| {}).await;
    register(&t, "liam", PW).await.unwrap();
    // A super node with a last-resort listener (443/80 in production, any port here).
    let token = CancellationToken::new();
    let trusted = TrustedKeys::new(vec![key("login-0").public().clone()]);
    let cred =
        confab::keygen::certify_supernode(&key("login-0"), "edge", key("supernode-2").public(), 1, confab::unix_now());
    let dead = dead_port();
    let spec = NodeSpec {
        identity: Identity::new("edge".into(), key("supernode-2"), cred, trusted),
        udp: "127.0.0.1:0".parse().unwrap(),
        tcp: "127.0.0.1:0".parse().unwrap(),
        probe_udp: None,
        fallback_tcp: vec!["127.0.0.1:0".parse().unwrap()],
        public_ip: None,
        params: SessionParams::default(),
        cluster: None,
        relay: None,
    };
    let b = BoundNode::bind(spec).await.unwrap();
    let fallback = b.addrs().tcp[1];
    let _node = b.start(vec![], &[], token.clone());
    let mut s = t.settings();
    s.ladder.bootstrap = vec![SocketAddr::from(([127, 0, 0, 1], dead))];
    s.ladder.fallback_ports = vec![fallback.port()];
    let session = host::login(&s, &t.home("liam"), "liam", PW).await.unwrap();
    let stages: Vec<_> = session.report.attempts.iter().map(|a| a.stage).collect();
    use confab::host::ladder::Stage;
    assert_eq!(stages, [Stage::BootstrapUdp, Stage::BootstrapTcp, Stage::FallbackTcp]);
    assert_eq!(session.report.supernode, "edge");
    assert_eq!(session.report.transport, "tcp");
    session.logout().await;
    token.cancel();
    t.net.stop().await;
}

#[actix_rt::test]
async fn metrics_cover_logins_sessions_frames_and_stun() {
    let t = common::start(1, |_| {}).await;
    register(&t, "mia", PW).await.unwrap();
    let s = host::login(&t.settings(), &t.home("mia"), "mia", PW).await.unwrap();
    let m = t.metrics().await;
    let node = format!("node=\"{}\"", t.node(0));
    for (name, labels) in [
        ("confab_login_requests_total", &["kind=\"login_request\"", "outcome=\"login_ok\""][..]),
        ("confab_login_requests_total", &["kind=\"register_request\"", "outcome=\"registered\""]),
        ("confab_login_handshake_duration_seconds_count", &["kind=\"login_request\""]),
        ("confab_supernode_hosts_connected", &[node.as_str()]),
        ("confab_supernode_handshakes_total", &["outcome=\"established\""]),
        ("confab_supernode_handshake_duration_seconds_count", &[]),
        ("confab_wire_frames_in_total", &["kind=\"hello\"", "transport=\"udp\""]),
        ("confab_wire_frames_out_total", &["kind=\"welcome\"", "transport=\"udp\""]),
        ("confab_supernode_nat_probes_total", &["port=\"alternate\""]),
    ] {
        assert!(t.metric(&m, name, labels) >= 1.0, "{name}{labels:?} missing:\n{m}");
    }
    assert!(m.contains("confab_login_handshake_duration_seconds_bucket{"), "a real histogram with buckets");
    s.logout().await;
    t.net.stop().await;
}

#[actix_rt::test]
async fn a_logged_in_host_listens_on_its_port_over_udp_and_tcp() {
    let t = common::start(1, |_| {}).await;
    register(&t, "noah", PW).await.unwrap();
    let s = host::login(&t.settings(), &t.home("noah"), "noah", PW).await.unwrap();
    let p = SocketAddr::from(([127, 0, 0, 1], s.report.local_port));
    // UDP: the port is ours (binding it again fails).
    assert!(std::net::UdpSocket::bind(p).is_err(), "UDP port P is held by the host");
    // TCP: a peer gets a protocol answer, not silence.
    let mut c = tokio::net::TcpStream::connect(p).await.unwrap();
    let hello = confab::wire::message::Hello { client_version: "x".into(), host_nonce: [0; 16] };
    tcp::write_frame(&mut c, &frame::encode_plain(p, MessageKind::Hello, 0, &hello.encode())).await.unwrap();
    let reply = tcp::read_frame(&mut c).await.unwrap().unwrap();
    let raw = frame::decode(p, &reply).unwrap();
    assert_eq!(raw.header.kind, MessageKind::Error);
    assert_eq!(ErrorMsg::decode(raw.payload).unwrap().code, ErrorCode::Unsupported);
    s.logout().await;
    t.net.stop().await;
}

/// Past the retention window an entry is gone from the index; the login server's
/// recently-seen directory still tells when the user was last seen (signed, so the host
/// can trust it through any super node). Retention is shortened to 2 s here.
#[actix_rt::test]
async fn past_retention_the_login_directory_answers() {
    let t = common::start(2, |c| c.supernode.index.retention_secs = 2).await;
    for n in ["olivia", "pat"] {
        register(&t, n, PW).await.unwrap();
    }
    let olivia = host::login(&t.settings(), &t.home("olivia"), "olivia", PW).await.unwrap();
    let sn = olivia.report.supernode.clone();
    olivia.logout().await;
    let mut pat = host::login(&t.settings(), &t.home("pat"), "pat", PW).await.unwrap();
    let found = pat.find("olivia").await.unwrap().expect("in the index");
    assert_eq!((found.status, found.stage.as_str()), (confab::index::Status::Offline, "step1"));
    // Past the 2 s retention the index forgets her, and the directory answers.
    let mut found = None;
    common::wait_for("olivia found through the directory", Duration::from_secs(10), async || {
        found = pat.find("olivia").await.unwrap();
        found.as_ref().is_some_and(|f| f.stage == "directory")
    })
    .await;
    let found = found.expect("through the directory");
    assert_eq!(found.status, confab::index::Status::Offline);
    assert!(found.last_seen + 30 > confab::unix_now());
    assert_eq!(found.supernode, "", "olivia's first login had no super node to report yet");
    // Her next login reports the super node she used.
    let olivia = host::login(&t.settings(), &t.home("olivia"), "olivia", PW).await.unwrap();
    olivia.logout().await;
    common::wait_for("the directory naming olivia's super node", Duration::from_secs(10), async || {
        pat.find("olivia").await.unwrap().is_some_and(|f| f.stage == "directory" && f.supernode == sn)
    })
    .await;
    // Someone who never logged in is not found at all.
    register(&t, "quinn", PW).await.unwrap();
    assert!(pat.find("quinn").await.unwrap().is_none());
    pat.logout().await;
    t.net.stop().await;
}

/// The 72-hour rule at the super nodes, with time injected through the entries' own
/// clocks: an entry made 71 h ago (with a credential valid then) is stored and found,
/// shown offline with its last-seen time; one made 73 h ago is refused by every replica.
#[actix_rt::test]
async fn seventy_one_hours_is_found_seventy_three_is_not() {
    use confab::index::{Entry, EntryBody, Profile, Status};
    let t = common::start(2, |_| {}).await;
    t.converge(2).await;
    register(&t, "rita", PW).await.unwrap();
    let mut rita = host::login(&t.settings(), &t.home("rita"), "rita", PW).await.unwrap();
    let now = confab::unix_now();
    for (user, hours) in [("sam", 71u64), ("tom", 73)] {
        let made = now - hours * 3600;
        let cred = Credential::issue(
            Claims {
                kind: CredentialKind::Host,
                subject: user.into(),
                public_key: key("host-1").public().clone(),
                issued_at: made - 60,
                expires_at: made + 86_400,
                serial: 5,
            },
            &key("login-0"),
        );
        let body = EntryBody {
            user: user.into(),
            credential: cred.encode(),
            status: Status::Online,
            supernode: "sn1".into(),
            public_addr: Some("198.18.2.2:40000".parse().unwrap()),
            nat: NatKind::Cone,
            profile: Profile::default(),
            last_seen: made,
            timestamp_ms: made * 1000,
            user_keys: None,
        };
        let entry = Entry::sign(body, &cred, &key("host-1")).unwrap();
        // Straight onto the replication path, to every super node, each sent by another
        // member (only members speak on the cluster port).
        let nodes = t.net.nodes();
        for (i, n) in nodes.iter().enumerate() {
            let id = n.identity.key.public().id();
            let gossip = n.members().iter().find(|m| m.node_id() == Some(id)).unwrap().gossip;
            let store = confab::index::rpc::IndexRpc::Store { req: 1, key: user.into(), entry: entry.encode() };
            let router = nodes[(i + 1) % nodes.len()].index.clone().unwrap();
            let from = router.send(confab::supernode::index_router::SenderOf).await.unwrap();
            assert!(from.send(id, gossip, &store.encode()));
        }
    }
    common::wait_for("sam's entry stored", Duration::from_secs(3), async || rita.find("sam").await.unwrap().is_some())
        .await;
    let sam = rita.find("sam").await.unwrap().expect("71 h ago is inside the window");
    assert_eq!(sam.status, confab::index::Status::Offline, "not refreshed for 71 h: offline");
    assert_eq!(sam.last_seen, now - 71 * 3600);
    assert!(rita.find("tom").await.unwrap().is_none(), "73 h ago is past the window");
    rita.logout().await;
    t.net.stop().await;
}
