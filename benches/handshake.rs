//! Login-server handshake cost, and the two RSA backends for its private-key operations.
//!
//! Groups (each private-key benchmark runs once per backend, `aws-lc` and `rust-crypto`):
//!
//! - `rsa_private/oaep_decrypt/<backend>`: RSA-OAEP-SHA256 decryption of one precomputed
//!   ciphertext of a 64-byte plaintext (the K ‖ R of a request envelope), 2048-bit key.
//! - `rsa_private/pss_sign/<backend>`: RSA-PSS-SHA256 signature over a 700-byte message
//!   (about the size of an issued credential), 2048-bit key.
//! - `login_handshake/<backend>`: the whole server side of one successful LoginRequest
//!   through [`LoginService::handle`]: envelope decode and open (OAEP decrypt, AES-GCM),
//!   replay check, SQLite account lookup, verifier check, credential issue and PSS sign,
//!   reply encoding. Each iteration gets a fresh envelope (the replay cache rejects a
//!   repeated nonce); the client side (argon2id once, RSA public-key encrypt and sealing
//!   per iteration) happens in setup and is not measured. The group reports throughput in
//!   elements per second, i.e. handshakes per second on one core.
//!
//! Keys are the fixed 2048-bit fixtures in `tests/fixtures/keys/` (login-0 as the login
//! key, host-0 as the host key being certified).
//!
//! Run with:
//!
//! ```text
//! cargo bench --bench handshake
//! ```

use confab::crypto::envelope;
use confab::crypto::password;
use confab::crypto::{PrivateKey, RsaBackend};
use confab::login::service::Reply;
use confab::login::{AccountStore, LoginPolicy, LoginService, username};
use confab::wire::message::{AccountBody, MessageKind};
use criterion::{BatchSize, BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use std::hint::black_box;
use std::net::{IpAddr, Ipv4Addr};
use std::time::Duration;

const LOGIN_KEY_PEM: &str = include_str!("../tests/fixtures/keys/login-0.key.pem");
const HOST_KEY_PEM: &str = include_str!("../tests/fixtures/keys/host-0.key.pem");

const USERNAME: &str = "BenchUser";
const PASSWORD: &str = "correct horse battery staple";
const SOURCE: IpAddr = IpAddr::V4(Ipv4Addr::new(192, 0, 2, 7));

const BACKENDS: [RsaBackend; 2] = [RsaBackend::AwsLc, RsaBackend::RustCrypto];

fn label(backend: RsaBackend) -> &'static str {
    match backend {
        RsaBackend::AwsLc => "aws-lc",
        RsaBackend::RustCrypto => "rust-crypto",
    }
}

fn login_key() -> PrivateKey {
    PrivateKey::from_pem(LOGIN_KEY_PEM).expect("login-0 fixture key")
}

fn rsa_private(c: &mut Criterion) {
    let base = login_key();
    let plaintext: Vec<u8> = (0..64u8).collect();
    let ciphertext = base.public().encrypt_oaep(&plaintext);
    let message: Vec<u8> = (0..700u32).map(|i| (i * 31 % 251) as u8).collect();

    let mut group = c.benchmark_group("rsa_private");
    for backend in BACKENDS {
        let key = base.with_backend(backend);
        assert_eq!(key.decrypt_oaep(&ciphertext).expect("OAEP decrypt"), plaintext);
        key.public().verify_pss(&message, &key.sign_pss(&message)).expect("PSS signature verifies");

        group.bench_with_input(BenchmarkId::new("oaep_decrypt", label(backend)), &ciphertext, |b, ct| {
            b.iter(|| key.decrypt_oaep(black_box(ct)).expect("OAEP decrypt"))
        });
        group.bench_with_input(BenchmarkId::new("pss_sign", label(backend)), &message, |b, msg| {
            b.iter(|| key.sign_pss(black_box(msg)))
        });
    }
    group.finish();
}

/// The client side of one LoginRequest: a fresh envelope around the account body.
fn login_request(service: &LoginService, shared: &[u8; 32], host: &PrivateKey, now: u64) -> Vec<u8> {
    let body = AccountBody {
        username: USERNAME.to_owned(),
        shared_secret: *shared,
        timestamp: now,
        client_version: confab::VERSION.to_owned(),
        host_public_key: Vec::new(),
        last_supernode: "sn1".to_owned(),
        possession: Vec::new(),
        user_keys: None,
    };
    let (env, _secret) = envelope::seal_login(service.public_key(), body, host);
    env.encode()
}

fn login_handshake(c: &mut Criterion) {
    let base = login_key();
    let host = PrivateKey::from_pem(HOST_KEY_PEM).expect("host-0 fixture key");
    // argon2id is the client's cost, paid once here.
    let shared = password::shared_secret(USERNAME, PASSWORD);
    let name_key = username::canonical(USERNAME).expect("valid username");
    let dir = tempfile::tempdir().expect("temporary directory");

    let mut group = c.benchmark_group("login_handshake");
    group.throughput(Throughput::Elements(1));
    for backend in BACKENDS {
        let store = AccountStore::open(&dir.path().join(format!("accounts-{}.db", label(backend)))).expect("store");
        store.create(&name_key, USERNAME, shared.verifier(), None, confab::unix_now()).expect("register the user");
        // Every request of the bench comes from one source, faster than the login server
        // lets a surge through without a puzzle: lift that limit (as the load test does),
        // so the measured path is the plain success path.
        let policy =
            LoginPolicy { throttle: confab::login::guard::ThrottlePolicy::one_source_load(), ..LoginPolicy::default() };
        let service = LoginService::new(base.with_backend(backend), store, policy);

        // Preflight: the measured path must be the success path.
        let now = confab::unix_now();
        let handled =
            service.handle(now, SOURCE, MessageKind::LoginRequest, &login_request(&service, &shared.0, &host, now));
        assert_eq!(handled.outcome, "login_ok", "preflight login failed: {:?}", handled.reply);
        assert!(matches!(handled.reply, Reply::Sealed { kind: MessageKind::LoginReply, .. }));

        group.bench_function(BenchmarkId::from_parameter(label(backend)), |b| {
            b.iter_batched(
                || {
                    let now = confab::unix_now();
                    (now, login_request(&service, &shared.0, &host, now))
                },
                |(now, payload)| {
                    let handled = service.handle(now, SOURCE, MessageKind::LoginRequest, black_box(&payload));
                    assert_eq!(handled.outcome, "login_ok");
                    handled
                },
                BatchSize::SmallInput,
            )
        });
    }
    group.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .sample_size(20)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(5));
    targets = rsa_private, login_handshake
}
criterion_main!(benches);
