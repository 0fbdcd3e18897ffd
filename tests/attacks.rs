//! Attacks from a stranger on a second loopback address (127.0.0.2, no account) against a
//! whole network on 127.0.0.1: each one fails, the real user's login completes in its
//! usual time, and the refusal is counted.
//!
//! The login server's metrics carry no per-network label, so the tests in this file run
//! one at a time (`SERIAL`) and assert on before/after differences.

mod common;

use common::{TestNet, key};
use confab::crypto::credential::{Claims, Credential, CredentialKind};
use confab::crypto::password::SharedSecret;
use confab::crypto::{PrivateKey, PublicKey, envelope};
use confab::host::account::{self, AccountError, LoginServers};
use confab::login::puzzle;
use confab::net::tcp;
use confab::wire::ErrorCode;
use confab::wire::frame;
use confab::wire::message::{
    AccountBody, EnvelopedRequest, ErrorMsg, MessageKind, NatProbe, PuzzleChallenge, SeenQuery,
};
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};
use tokio::net::{TcpSocket, TcpStream};

const PW: &str = "correct horse battery";
const STRANGER: &str = "127.0.0.2";

static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// A TCP connection from `from` (a loopback address) to `to`.
async fn connect_from(from: &str, to: SocketAddr) -> std::io::Result<TcpStream> {
    let s = TcpSocket::new_v4()?;
    s.bind(SocketAddr::new(from.parse::<IpAddr>().unwrap(), 0))?;
    s.connect(to).await
}

fn servers(t: &TestNet) -> LoginServers {
    let s = t.settings();
    LoginServers { addrs: s.login_servers, trusted: s.trusted, timeout: Duration::from_secs(10) }
}

fn login_key(t: &TestNet) -> PublicKey {
    PublicKey::read_pem_file(&t.net.info.data.join("login.pub.pem")).unwrap()
}

/// What the login server said to one guess.
#[derive(Debug, PartialEq)]
enum Answer {
    Error(ErrorCode),
    Puzzle(PuzzleChallenge),
    Other(MessageKind),
}

/// One password guess for `user` from `from`, as a guesser would send it: a fresh
/// envelope, and the solution when `challenge` is given.
async fn guess(t: &TestNet, from: &str, user: &str, challenge: Option<PuzzleChallenge>) -> Answer {
    let addr = t.net.info.login_server;
    let body = AccountBody {
        username: user.into(),
        shared_secret: confab::crypto::random::bytes(),
        timestamp: confab::unix_now(),
        client_version: confab::VERSION.into(),
        host_public_key: key("host-0").public().der().to_vec(),
        last_supernode: String::new(),
        possession: Vec::new(),
        user_keys: None,
    };
    let (envelope, secret) = envelope::seal(&login_key(t), MessageKind::LoginRequest, [0; 32], &body.encode());
    let solution = challenge.map(|c| puzzle::solve(&c, &envelope.wrapped, 1 << 30).expect("solvable"));
    let request = EnvelopedRequest { envelope, solution }.encode();
    let mut s = connect_from(from, addr).await.unwrap();
    tcp::write_frame(&mut s, &frame::encode_plain(addr, MessageKind::LoginRequest, 0, &request)).await.unwrap();
    let reply = tcp::read_frame(&mut s).await.unwrap().unwrap();
    let raw = frame::decode(addr, &reply).unwrap();
    let body = if raw.header.sealed {
        let key = secret.derive(confab::crypto::aead::label::RESPONDER_TO_INITIATOR);
        raw.open(&key, frame::Direction::ToInitiator).unwrap()
    } else {
        raw.payload.to_vec()
    };
    match raw.header.kind {
        MessageKind::Error => Answer::Error(ErrorMsg::decode(&body).unwrap().code),
        MessageKind::Puzzle => Answer::Puzzle(PuzzleChallenge::decode(&body).unwrap()),
        k => Answer::Other(k),
    }
}

/// A guesser that pays every puzzle it is asked for: the answers to `n` guesses.
async fn guesses(t: &TestNet, from: &str, user: &str, n: usize) -> Vec<Answer> {
    let mut out = Vec::new();
    for _ in 0..n {
        // The source's puzzle (before the envelope is opened), then the user's (after),
        // which may be harder.
        let (mut challenge, mut rounds) = (None, 0);
        let answer = loop {
            match guess(t, from, user, challenge).await {
                Answer::Puzzle(c) if rounds < 3 => (challenge, rounds) = (Some(c), rounds + 1),
                a => break a,
            }
        };
        out.push(answer);
    }
    out
}

/// The real user's login at the login server (the password already stretched, as a host
/// does once per login), timed.
async fn real_login(t: &TestNet, secret: &SharedSecret, host_key: &PrivateKey) -> Result<Duration, AccountError> {
    let started = Instant::now();
    // The victim's user keys do not matter here; the directory serves whatever they are.
    let user_keys = confab::crypto::user::UserPublicKeys { x25519: [1; 32], ed25519: [2; 32] };
    account::login(&servers(t), "victim", secret, host_key, "", user_keys).await?;
    Ok(started.elapsed())
}

fn percentile(v: &mut [Duration], p: f64) -> Duration {
    v.sort();
    v[((v.len() - 1) as f64 * p).round() as usize]
}

#[actix_rt::test]
async fn a_stranger_cannot_lock_a_user_out() {
    let _serial = SERIAL.lock().await;
    let t = common::start(1, |c| {
        let th = &mut c.login_server.throttle;
        // Low enough that the guesser reaches every stage within the test, and forgiven
        // slowly enough that the count does not depend on how fast this machine is.
        (th.source_puzzle_after, th.source_refuse_after, th.source_forgive_per_min) = (10, 30, 1);
    })
    .await;
    confab::host::register(&t.settings(), &t.home("victim"), "victim", PW).await.unwrap();
    let secret = confab::crypto::password::shared_secret("victim", PW);
    let host_key = key("host-1");
    let before = t.metrics().await;

    let mut alone: Vec<Duration> = Vec::new();
    for _ in 0..10 {
        alone.push(real_login(&t, &secret, &host_key).await.unwrap());
    }

    // Nine wrong passwords from the stranger: the account is now "under attack".
    let answers = guesses(&t, STRANGER, "victim", 9).await;
    assert!(answers.iter().all(|a| *a == Answer::Error(ErrorCode::WrongPassword)), "{answers:?}");
    // The real user, from her own address with the right password, is not refused: her
    // host solves the puzzle the server now asks of every login to her account.
    let mut attacked: Vec<Duration> = Vec::new();
    for _ in 0..10 {
        attacked.push(real_login(&t, &secret, &host_key).await.expect("the right password is never refused"));
    }
    // The guesser keeps going, paying a puzzle per guess, until its own source is refused
    // before any work; the user still logs in.
    let answers = guesses(&t, STRANGER, "victim", 40).await;
    let wrong = answers.iter().filter(|a| **a == Answer::Error(ErrorCode::WrongPassword)).count();
    let refused = answers.iter().filter(|a| **a == Answer::Error(ErrorCode::TooManyAttempts)).count();
    assert_eq!(wrong + refused, answers.len(), "{answers:?}");
    // 30 failures refuse the source (one more may get through as it is forgiven).
    assert!(wrong <= 23, "the source is refused past source_refuse_after: {wrong} guesses checked");
    assert!(refused >= 17, "{answers:?}");
    for _ in 0..10 {
        attacked.push(real_login(&t, &secret, &host_key).await.expect("the right password is never refused"));
    }
    // A guess without the work is not even opened.
    assert!(matches!(guess(&t, "127.0.0.3", "victim", None).await, Answer::Puzzle(c) if c.bits >= 14));

    let after = t.metrics().await;
    let delta = |outcome: &str| {
        let l = format!("outcome=\"{outcome}\"");
        t.metric(&after, "confab_login_requests_total", &[&l]) - t.metric(&before, "confab_login_requests_total", &[&l])
    };
    assert_eq!(delta("login_ok"), 30.0);
    assert!(delta("wrong_password") >= 9.0 + wrong as f64);
    assert!(delta("too_many_attempts") >= refused as f64);
    assert!(delta("puzzle_required") >= 20.0, "each of the user's logins under attack paid a puzzle");
    let (a50, a99) = (percentile(&mut alone, 0.5), percentile(&mut alone, 0.99));
    let (b50, b99) = (percentile(&mut attacked, 0.5), percentile(&mut attacked, 0.99));
    println!("login alone: p50 {a50:?} p99 {a99:?}; under a guessing attack: p50 {b50:?} p99 {b99:?}");
    assert!(b99 < Duration::from_secs(5), "a login under attack took {b99:?}");
    t.net.stop().await;
}

#[actix_rt::test]
async fn one_source_cannot_pin_the_login_servers_slots() {
    let _serial = SERIAL.lock().await;
    let t = common::start(1, |c| {
        c.login_server.connections_max = 16;
        c.login_server.connections_per_source_max = 4;
    })
    .await;
    confab::host::register(&t.settings(), &t.home("victim"), "victim", PW).await.unwrap();
    let secret = confab::crypto::password::shared_secret("victim", PW);
    let host_key = key("host-1");
    let addr = t.net.info.login_server;
    let label = format!("addr=\"{addr}\"");
    let refused = |m: &str| t.metric(m, "confab_net_connections_refused_total", &["role=\"login\"", &label]);
    let before = refused(&t.metrics().await);

    // Twenty connections from one address that send a request and never read.
    let mut held = Vec::new();
    for _ in 0..20 {
        // A connection over the cap may be reset before the connect returns.
        let Ok(mut s) = connect_from(STRANGER, addr).await else { continue };
        let _ = tcp::write_frame(&mut s, &frame::encode_plain(addr, MessageKind::LoginRequest, 0, &[0; 40])).await;
        held.push(s);
    }
    common::wait_for("the connections over the source's cap refused", Duration::from_secs(5), async || {
        refused(&t.metrics().await) - before >= 16.0
    })
    .await;
    // The real user logs in at once, over and over, while the stranger holds its four.
    for _ in 0..5 {
        let took = tokio::time::timeout(Duration::from_secs(10), real_login(&t, &secret, &host_key))
            .await
            .expect("the login did not complete")
            .unwrap();
        assert!(took < Duration::from_secs(3), "a login took {took:?} while a stranger held connections");
    }
    drop(held);
    t.net.stop().await;
}

#[actix_rt::test]
async fn a_pre_auth_connection_cannot_outlive_the_handshake_deadline() {
    let _serial = SERIAL.lock().await;
    let t = common::start(1, |c| c.supernode.tcp_connections_per_source_max = 4).await;
    let sn = t.net.info.supernodes[0].tcp[0];
    let label = format!("addr=\"{sn}\"");
    let refused = |m: &str| t.metric(m, "confab_net_connections_refused_total", &["role=\"supernode\"", &label]);
    let before = refused(&t.metrics().await);

    // A NatProbe every 3 s keeps each read within its deadline, but not the handshake's.
    let opened = Instant::now();
    let mut s = connect_from(STRANGER, sn).await.unwrap();
    let probe = frame::encode_plain(sn, MessageKind::NatProbe, 0, &NatProbe { id: 1 }.encode());
    let closed_after = loop {
        if tcp::write_frame(&mut s, &probe).await.is_err() {
            break opened.elapsed();
        }
        match tokio::time::timeout(Duration::from_secs(3), tcp::read_frame(&mut s)).await {
            Ok(Ok(Some(_))) => tokio::time::sleep(Duration::from_secs(3)).await,
            Ok(Ok(None)) | Ok(Err(_)) => break opened.elapsed(),
            Err(_) => {}
        }
        assert!(opened.elapsed() < Duration::from_secs(20), "the connection is still open");
    };
    assert!(closed_after >= Duration::from_secs(9), "closed too early: {closed_after:?}");

    // The fifth and later connections from one source are closed at once.
    let mut held = Vec::new();
    for _ in 0..10 {
        // A connection over the cap may be reset before the connect returns.
        held.extend(connect_from(STRANGER, sn).await.ok());
    }
    common::wait_for("the connections over the source's cap refused", Duration::from_secs(5), async || {
        refused(&t.metrics().await) - before >= 6.0
    })
    .await;
    // A real host still logs in.
    let s = confab::host::register(&t.settings(), &t.home("victim"), "victim", PW).await;
    s.unwrap();
    let session = confab::host::login(&t.settings(), &t.home("victim"), "victim", PW).await.unwrap();
    session.logout().await;
    drop(held);
    t.net.stop().await;
}

fn supernode_credential(signer: &PrivateKey, subject: &PrivateKey, kind: CredentialKind) -> Credential {
    let now = confab::unix_now();
    Credential::issue(
        Claims {
            kind,
            subject: "sn-test".into(),
            public_key: subject.public().clone(),
            issued_at: now - 10,
            expires_at: now + 3600,
            serial: 7,
        },
        signer,
    )
}

/// Sends a SeenQuery from the stranger's address; the reply's kind and body.
async fn seen_query(t: &TestNet, payload: &[u8]) -> (MessageKind, Vec<u8>) {
    let addr = t.net.info.login_server;
    let mut s = connect_from(STRANGER, addr).await.unwrap();
    tcp::write_frame(&mut s, &frame::encode_plain(addr, MessageKind::SeenQuery, 0, payload)).await.unwrap();
    let reply = tcp::read_frame(&mut s).await.unwrap().unwrap();
    let raw = frame::decode(addr, &reply).unwrap();
    (raw.header.kind, raw.payload.to_vec())
}

fn signed_query(cred: &Credential, signer: &PrivateKey, for_server: SocketAddr, user: &str) -> Vec<u8> {
    let mut q = SeenQuery {
        user: user.into(),
        timestamp: confab::unix_now(),
        credential: cred.encode(),
        signature: Vec::new(),
    };
    q.signature = signer.sign_pss(&q.signed_message(for_server));
    q.encode()
}

#[actix_rt::test]
async fn the_directory_answers_only_super_nodes() {
    let _serial = SERIAL.lock().await;
    let t = common::start(1, |_| {}).await;
    confab::host::register(&t.settings(), &t.home("victim"), "victim", PW).await.unwrap();
    let session = confab::host::login(&t.settings(), &t.home("victim"), "victim", PW).await.unwrap();
    session.logout().await;
    let addr = t.net.info.login_server;
    let (login, sn_key, host_key) = (key("login-0"), key("supernode-1"), key("host-2"));
    let error = |(kind, body): (MessageKind, Vec<u8>)| {
        assert_eq!(kind, MessageKind::Error, "a stranger got an answer");
        ErrorMsg::decode(&body).unwrap().code
    };
    // The old, unsigned query; a host's credential; a super-node credential from a key the
    // server does not trust; a real super node's query for another server.
    let old = confab::wire::message::Find { req: 0, user: "victim".into() }.encode();
    assert_eq!(error(seen_query(&t, &old).await), ErrorCode::Malformed);
    let host_cred = supernode_credential(&login, &host_key, CredentialKind::Host);
    let q = signed_query(&host_cred, &host_key, addr, "victim");
    assert_eq!(error(seen_query(&t, &q).await), ErrorCode::UntrustedCredential);
    let foreign = supernode_credential(&key("login-1"), &sn_key, CredentialKind::SuperNode);
    let q = signed_query(&foreign, &sn_key, addr, "victim");
    assert_eq!(error(seen_query(&t, &q).await), ErrorCode::UntrustedCredential);
    let real = supernode_credential(&login, &sn_key, CredentialKind::SuperNode);
    let elsewhere: SocketAddr = "127.0.0.1:9".parse().unwrap();
    let q = signed_query(&real, &sn_key, elsewhere, "victim");
    assert_eq!(error(seen_query(&t, &q).await), ErrorCode::BadSignature);
    // A credential without its key: signed by someone else.
    let q = signed_query(&real, &host_key, addr, "victim");
    assert_eq!(error(seen_query(&t, &q).await), ErrorCode::BadSignature);
    // The real thing is answered, with the signed record.
    let q = signed_query(&real, &sn_key, addr, "victim");
    let (kind, body) = seen_query(&t, &q).await;
    assert_eq!(kind, MessageKind::SeenReply);
    let rec = confab::wire::message::SeenRecord::decode(&body).unwrap();
    assert!(rec.found && rec.user == "victim");
    t.net.stop().await;
}

/// Bytes a stranger sends and gets back for one kind of datagram.
struct Reflection {
    what: &'static str,
    sent: usize,
    received: usize,
    answers: usize,
}

/// Sends `datagram` `n` times from the stranger to `to`; counts what comes back.
async fn reflect(what: &'static str, to: SocketAddr, datagram: &[u8], n: usize) -> Reflection {
    let s = tokio::net::UdpSocket::bind((STRANGER, 0)).await.unwrap();
    for _ in 0..n {
        s.send_to(datagram, to).await.unwrap();
    }
    let (mut received, mut answers) = (0, 0);
    let mut buf = vec![0u8; 4096];
    // Answers come at once; a quiet 300 ms means there are no more.
    while let Ok(Ok((len, _))) = tokio::time::timeout(Duration::from_millis(300), s.recv_from(&mut buf)).await {
        received += len;
        answers += 1;
    }
    Reflection { what, sent: datagram.len() * n, received, answers }
}

#[actix_rt::test]
async fn no_stranger_gets_an_answer_larger_than_its_question() {
    let _serial = SERIAL.lock().await;
    let t = common::start(1, |_| {}).await;
    let sn = &t.net.info.supernodes[0];
    let (udp, probe) = (sn.udp, sn.probe_udp.expect("a probe port"));
    let hello = confab::wire::message::Hello { client_version: "0.1.0".into(), host_nonce: [1; 16] };
    let hello = frame::encode_plain(udp, MessageKind::Hello, 0, &hello.encode());
    let nat_probe = |to| frame::encode_plain(to, MessageKind::NatProbe, 0, &NatProbe { id: 9 }.encode());
    let auth = confab::wire::message::Envelope {
        key_id: [7; 8],
        cookie: [3; 32],
        wrapped: vec![5; 256],
        sealed: vec![6; 200],
    };
    let auth = frame::encode_plain(udp, MessageKind::Auth, 0, &auth.encode());
    let mut stun = vec![0x00, 0x01, 0x00, 0x00, 0x21, 0x12, 0xa4, 0x42];
    stun.extend_from_slice(&[0xab; 12]);
    let mut rows = vec![
        reflect("Hello (main port)", udp, &hello, 10).await,
        reflect("NatProbe (main port)", udp, &nat_probe(udp), 10).await,
        reflect("NatProbe (probe port)", probe, &nat_probe(probe), 10).await,
        reflect("Auth with a forged cookie", udp, &auth, 10).await,
        reflect("garbage (main port)", udp, &[0x55; 100], 10).await,
    ];
    if let Some(relay) = sn.relay {
        rows.push(reflect("garbage (relay port)", relay, &[0x55; 100], 10).await);
    }
    if let Some(gossip) = sn.gossip {
        rows.push(reflect("garbage (gossip port)", gossip, &[0x55; 100], 10).await);
    }
    println!("| datagram from a stranger | bytes in | bytes out | out / in |");
    println!("| --- | --- | --- | --- |");
    for r in &rows {
        println!("| {} | {} | {} | {:.2} |", r.what, r.sent, r.received, r.received as f64 / r.sent as f64);
        assert!(r.received <= r.sent, "{}: {} bytes out for {} in", r.what, r.received, r.sent);
    }
    // STUN (RFC 8489) fixes an answer larger than the smallest request: a burst of 100
    // gets at most the per-source burst (2 x stun_per_source_per_sec) of answers.
    let r = reflect("STUN Binding, 100 at once", udp, &stun, 100).await;
    println!(
        "| {} | {} | {} | {:.2} ({} answers) |",
        r.what,
        r.sent,
        r.received,
        r.received as f64 / r.sent as f64,
        r.answers
    );
    assert!(r.answers > 0, "a STUN client is answered");
    assert!(r.answers <= 41, "{} STUN answers to a burst from one source", r.answers);
    t.net.stop().await;
}
