//! The fuzz corpus on stable: every file under fuzz/corpus and fuzz/regressions goes
//! through `confab::fuzzing::decode_any`, the function the cargo-fuzz target calls.
//!
//! The seeds are valid encodings of every message kind, made by `write_seed_corpus`
//! below (ignored; run it after a format change):
//!
//! ```text
//! cargo test --test fuzz_corpus -- --ignored write_seed_corpus
//! ```

use confab::buddy::notice::Notice;
use confab::buddy::op::{BuddyAnswer, BuddyOp, Incoming, Relation, Row, SignedOp};
use confab::buddy::record::{self, Contact};
use confab::call::invite::{
    CallMessage, Candidate, CandidateKind, Codec, Invite, MediaKey, Reply, SealedSignal, SignalChannel,
};
use confab::call::media::{Kind, MediaSender};
use confab::call::signal::{Role, Signal};
use confab::cluster::gossip::Channel;
use confab::cluster::member::Member;
use confab::cluster::membership::{self, Membership, Output};
use confab::crypto::PrivateKey;
use confab::crypto::aead::{SessionSecret, label};
use confab::crypto::credential::{Claims, Credential, CredentialKind};
use confab::crypto::password::ListKey;
use confab::fuzzing::{self, NOW_SECS, Target, chunked};
use confab::index::entry::{Entry, EntryBody, Profile, Status};
use confab::index::rpc::IndexRpc;
use confab::nat::NatKind;
use confab::relay::packet::{self, SessionId, Token};
use confab::wire::codec::Writer;
use confab::wire::frame::{self, Direction};
use confab::wire::message::*;
use std::collections::{BTreeMap, HashSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

fn fuzz_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz")
}

/// Every file under `dir`, recursively, sorted; empty if `dir` does not exist.
fn files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else { continue };
        for e in entries {
            let p = e.expect("a readable directory entry").path();
            if p.is_dir() { todo.push(p) } else { out.push(p) }
        }
    }
    out.sort();
    out
}

fn replay(path: &Path) {
    let bytes = std::fs::read(path).expect("a readable corpus file");
    let r = std::panic::catch_unwind(|| fuzzing::decode_any(&bytes));
    assert!(r.is_ok(), "{} makes a decoder panic (see above)", path.display());
}

#[test]
fn the_seed_corpus_replays_and_covers_every_decoder() {
    let corpus = files(&fuzz_dir().join("corpus"));
    assert!(!corpus.is_empty(), "no seed corpus under {}", fuzz_dir().join("corpus").display());
    let mut covered = HashSet::new();
    for path in &corpus {
        replay(path);
        if let Some(&b) = std::fs::read(path).unwrap().first() {
            covered.insert(Target::of(b));
        }
    }
    let missing: Vec<_> = Target::ALL.iter().filter(|t| !covered.contains(*t)).map(|t| t.name()).collect();
    assert!(missing.is_empty(), "no seed for {missing:?}");
}

#[test]
fn every_regression_replays() {
    // Inputs that once crashed a decoder (none is fine: the folder may be empty).
    for path in files(&fuzz_dir().join("regressions")) {
        replay(&path);
    }
}

// ---- the seed generator ----

fn key(stem: &str) -> PrivateKey {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join(format!("tests/fixtures/keys/{stem}.key.pem"));
    PrivateKey::read_pem_file(&path).unwrap()
}

fn sa(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

fn host_credential(login: &PrivateKey, user: &str, key: &PrivateKey, serial: u64, expires_at: u64) -> Credential {
    let claims = Claims {
        kind: CredentialKind::Host,
        subject: user.into(),
        public_key: key.public().clone(),
        issued_at: NOW_SECS - 60,
        expires_at,
        serial,
    };
    Credential::issue(claims, login)
}

/// An inner packet shaped like media (header and tag) with sequence number `seq`.
fn media_like(seq: u32) -> Vec<u8> {
    let mut inner = vec![0u8; 17 + 16];
    inner[0] = 0x4d;
    inner[1..9].copy_from_slice(&[0x11; 8]);
    inner[9..13].copy_from_slice(&seq.to_be_bytes());
    inner
}

/// The packets a member joining through the fuzz targets' member sends it.
fn gossip_packets() -> Vec<Vec<u8>> {
    let me = fuzzing::fuzz_member();
    let other = Member {
        gossip: sa("127.0.0.1:33101"),
        bump: 3,
        node: Some([0xbb; 8]),
        name: "sn2".into(),
        udp: Some(sa("127.0.0.1:33034")),
        tcp: Some(sa("127.0.0.1:33034")),
    };
    let config = || membership::config(32, Duration::from_secs(1));
    let mut a = Membership::new(other, config());
    let mut b = Membership::new(me.clone(), config());
    let mut to_b = Vec::new();
    let mut pending: Vec<Output> = a.join(me.gossip);
    for _ in 0..4 {
        let mut next = Vec::new();
        for o in pending {
            if let Output::Send(to, bytes) = o {
                if to.gossip == me.gossip {
                    to_b.push(bytes.clone());
                    next.extend(b.handle_data(&bytes));
                } else {
                    next.extend(a.handle_data(&bytes));
                }
            }
        }
        pending = next;
    }
    assert!(!to_b.is_empty(), "joining sent the fuzz member nothing");
    to_b
}

/// Makes valid encodings of every kind the decoders read, keyed by target.
fn seeds() -> BTreeMap<&'static str, Vec<Vec<u8>>> {
    let login = key("login-0");
    let (alice_key, bob_key, sn_key) = (key("host-0"), key("host-1"), key("supernode-0"));
    let alice = host_credential(&login, "alice", &alice_key, 7, NOW_SECS + 3600);
    let bob = host_credential(&login, "bob", &bob_key, 8, NOW_SECS + 3600);
    let expired = host_credential(&login, "carol", &bob_key, 9, NOW_SECS - 1);
    let sn = confab::keygen::certify_supernode(&login, "sn1", sn_key.public(), 365, NOW_SECS - 60);
    let listener = sa(fuzzing::LISTENER);
    let now_ms = NOW_SECS * 1000;

    let profile = Profile {
        display_name: "Alice Liddell".into(),
        city: "Oxford".into(),
        country: "GB".into(),
        language: "en".into(),
        about: "down the rabbit hole".into(),
    };
    let entry_body = EntryBody {
        user: "alice".into(),
        credential: alice.encode(),
        status: Status::Online,
        supernode: "sn1".into(),
        public_addr: Some(sa("198.18.7.1:40000")),
        nat: NatKind::Cone,
        profile,
        last_seen: NOW_SECS - 1,
        timestamp_ms: now_ms - 1000,
        user_keys: Some(confab::crypto::user::UserPublicKeys { x25519: [9; 32], ed25519: [8; 32] }),
    };
    let entry = Entry::sign(entry_body.clone(), &alice, &alice_key).unwrap().encode();
    let offline = EntryBody { status: Status::Offline, public_addr: None, nat: NatKind::UdpBlocked, ..entry_body };
    let offline = Entry::sign(offline, &alice, &alice_key).unwrap().encode();

    let mut seen = SeenRecord {
        user: "alice".into(),
        found: true,
        last_seen: NOW_SECS - 10,
        supernode: "sn1".into(),
        issued_at: NOW_SECS,
        key_id: login.public().id().0,
        signature: Vec::new(),
        user_keys: Some(confab::crypto::user::UserPublicKeys { x25519: [9; 32], ed25519: [8; 32] }),
    };
    seen.signature = login.sign_pss(&seen.signed_message());

    let hello = Hello { client_version: confab::VERSION.into(), host_nonce: [3; 16] };
    let challenge =
        Challenge { credential: sn.encode(), cookie: [4; 32], host_nonce: [3; 16], observed: sa("198.18.7.1:40000") };
    let envelope = |n: usize| Envelope {
        key_id: login.public().id().0,
        cookie: [4; 32],
        wrapped: vec![5; 256],
        sealed: vec![6; n],
    };
    let account = AccountBody {
        username: "alice".into(),
        shared_secret: [8; 32],
        timestamp: NOW_SECS,
        client_version: confab::VERSION.into(),
        host_public_key: alice_key.public().der().to_vec(),
        last_supernode: "sn1".into(),
        possession: Vec::new(),
        user_keys: Some(confab::crypto::user::UserPublicKeys { x25519: [9; 32], ed25519: [8; 32] }),
    };
    let welcome = Welcome {
        observed: sa("198.18.7.1:40000"),
        keepalive_secs: 15,
        idle_timeout_secs: 60,
        probe_addr: Some(sa("198.18.0.1:33034")),
        supernodes: vec![
            SupernodeInfo { name: "sn1".into(), udp: Some(sa("198.18.0.1:33033")), tcp: Some(sa("198.18.0.1:33033")) },
            SupernodeInfo { name: "sn2".into(), udp: Some(sa("[2001:db8::2]:33033")), tcp: None },
        ],
    };
    let grant = RelayGrant {
        req: 5,
        code: 0,
        relay: Some(sa("198.18.0.1:3478")),
        session: 0xdead_beef,
        token_a: [1; 16],
        leg_b: vec![2; 256],
        idle_timeout_secs: 30,
    };

    let media_key = MediaKey(fuzzing::MEDIA_KEY);
    let signal = SignalChannel::keyed(fuzzing::CALL_ID, &media_key, &media_key, Role::Caller).seal(Signal::Accept);
    let candidates = vec![
        Candidate { kind: CandidateKind::Host, addr: sa("10.0.0.5:40000") },
        Candidate { kind: CandidateKind::Public, addr: sa("198.18.7.1:40000") },
        Candidate { kind: CandidateKind::Relay, addr: sa("[2001:db8::9]:3478") },
    ];
    let (invite, _, _) =
        Invite::make(&alice, &alice_key, "sn1", &bob, vec![Codec::Opus, Codec::L16], candidates.clone(), now_ms);
    let opened = invite.open(fuzzing::trusted(), "bob", &bob_key, now_ms, 30_000).unwrap();
    let (reply, _) = Reply::make(&opened, &bob, &bob_key, &[Codec::L16], false, candidates, now_ms).unwrap();
    let call_messages = [
        CallMessage::Invite(invite.clone()).encode(),
        CallMessage::Reply(reply.clone()).encode(),
        CallMessage::Signal(signal.clone()).encode(),
    ];
    let notices = [
        Notice::Presence { entry: entry.clone() }.encode(),
        Notice::ListChanged { from: "bob".into() }.encode(),
        Notice::Call { message: call_messages[2].clone() }.encode(),
        Notice::Chat { sealed: chat_seed().encode() }.encode(),
    ];
    let rpcs = [
        IndexRpc::Store { req: 1, key: "alice".into(), entry: entry.clone() },
        IndexRpc::StoreAck { req: 1, held: true },
        IndexRpc::Fetch { req: 2, key: "alice".into() },
        IndexRpc::FetchReply { req: 2, entry: Some(entry.clone()) },
        IndexRpc::PrefixQuery { req: 3, prefix: "token:alice/".into(), limit: 20 },
        IndexRpc::PrefixReply { req: 3, users: vec!["alice".into(), "bob".into()] },
        IndexRpc::Digests { slots: vec![(1, [7; 32]), (2, [8; 32])] },
        IndexRpc::Differ { slots: vec![1, 2047] },
        IndexRpc::Deliver { to: "bob".into(), body: notices[1].clone() },
        IndexRpc::Buckets { slot: 1, digests: vec![[3; 8]; confab::index::store::BUCKETS] },
        IndexRpc::Summary { slot: 1, buckets: 1 << 5, answer: true, items: vec![([1; 8], [2; 8]), ([3; 8], [4; 8])] },
        IndexRpc::Want { slot: 1, keys: vec![[1; 8], [3; 8]] },
    ]
    .map(|r| r.encode());

    let secret = SessionSecret(fuzzing::SESSION_SECRET);
    let to_sn = secret.derive(label::INITIATOR_TO_RESPONDER);
    let sealed = |kind: MessageKind, seq: u64, body: &[u8]| {
        frame::encode_sealed(listener, kind, fuzzing::SESSION_ID, seq, &to_sn, Direction::ToResponder, body)
    };
    let session_chunk = |kind: MessageKind, seq: u64, body: &[u8]| {
        let mut c = vec![kind as u8, 0];
        c.extend_from_slice(&seq.to_be_bytes());
        c.extend_from_slice(body);
        c
    };
    let find = Find { req: 9, user: "bob".into() };
    let search = Search { req: 10, words: "alice oxford".into(), limit: 5 };
    let forward = Forward { req: 11, to: "bob".into(), via: "sn2".into(), body: notices[2].clone() };
    let stats = CallStats { path: "relayed_udp".into(), outcome: "hung_up".into(), setup_ms: 800, file_bytes: None };
    let keepalive_id = Keepalive { id: 0x0102_0304_0506_0708 };
    let publish_req = PublishReq { req: 12, entry: entry.clone() };

    let plain_hello = frame::encode_plain(listener, MessageKind::Hello, 0, &hello.encode());
    let plain_probe = frame::encode_plain(listener, MessageKind::NatProbe, 0, &NatProbe { id: 77 }.encode());
    let tcp = |frames: &[&[u8]]| {
        frames.iter().flat_map(|f| [&(f.len() as u16).to_be_bytes()[..], f].concat()).collect::<Vec<u8>>()
    };

    let mut codec = Writer::new();
    codec.u8(0).u8(7).u8(1).u16(513).u8(2).u32(70_000).u8(3).u64(u64::MAX).u8(4).bytes(b"bytes");
    codec
        .u8(5)
        .str("héllo")
        .u8(6)
        .addr(sa("[2001:db8::1]:443"))
        .u8(7)
        .opt_addr(None)
        .u8(7)
        .opt_addr(Some(sa("10.1.2.3:4")));

    // RFC 5769 §2.1's sample request, a bare Binding request, and one with an unknown
    // comprehension-required attribute (which gets a 420).
    let rfc5769: Vec<u8> = vec![
        0x00, 0x01, 0x00, 0x58, 0x21, 0x12, 0xa4, 0x42, 0xb7, 0xe7, 0xa7, 0x01, 0xbc, 0x34, 0xd6, 0x86, 0xfa, 0x87,
        0xdf, 0xae, 0x80, 0x22, 0x00, 0x10, 0x53, 0x54, 0x55, 0x4e, 0x20, 0x74, 0x65, 0x73, 0x74, 0x20, 0x63, 0x6c,
        0x69, 0x65, 0x6e, 0x74, 0x00, 0x24, 0x00, 0x04, 0x6e, 0x00, 0x01, 0xff, 0x80, 0x29, 0x00, 0x08, 0x93, 0x2f,
        0xf9, 0xb1, 0x51, 0x26, 0x3b, 0x36, 0x00, 0x06, 0x00, 0x09, 0x65, 0x76, 0x74, 0x6a, 0x3a, 0x68, 0x36, 0x76,
        0x59, 0x20, 0x20, 0x20, 0x00, 0x08, 0x00, 0x14, 0x9a, 0xea, 0xa7, 0x0c, 0xbf, 0xd8, 0xcb, 0x56, 0x78, 0x1e,
        0xf2, 0xb5, 0xb2, 0xd3, 0xf2, 0x49, 0xc1, 0xb5, 0x71, 0xa2, 0x80, 0x28, 0x00, 0x04, 0xe5, 0x7a, 0x3b, 0xcf,
    ];
    let mut bare = vec![0x00, 0x01, 0x00, 0x00, 0x21, 0x12, 0xa4, 0x42];
    bare.extend_from_slice(&[7; 12]);
    let mut unknown = vec![0x00, 0x01, 0x00, 0x08, 0x21, 0x12, 0xa4, 0x42];
    unknown.extend_from_slice(&[8; 12]);
    unknown.extend_from_slice(&[0x00, 0x03, 0x00, 0x04, 0, 0, 0, 6]);

    // The relay: leg A from one address, leg B from another, then traffic both ways,
    // through the worker cache, and after a release.
    let dg = |seq: u32| packet::build(SessionId(0), Token::ZERO, &media_like(seq));
    let relay_chunk = |flags: u8, dt: u16, seq: u32| [&[flags][..], &dt.to_be_bytes(), &dg(seq)].concat();
    let relay = |setup: u8| {
        [
            vec![setup],
            chunked(&[
                relay_chunk(0b0011, 0, 1),
                relay_chunk(0b1101, 20, 1),
                relay_chunk(0b0011, 20, 2),
                relay_chunk(0b1101, 20, 2),
                relay_chunk(0b1000_0011, 20, 3),
                relay_chunk(0b0011, 0, 3),
                relay_chunk(0b0001, 20, 4),
                relay_chunk(0b0111, 20, 5),
                relay_chunk(0b0100_0011, 20, 6),
            ]),
        ]
        .concat()
    };

    let mut tx = MediaSender::new(&fuzzing::CALL_ID, &media_key, Role::Caller);
    let gossip = gossip_packets();

    let ops = [
        BuddyOp::List { after: None },
        BuddyOp::Requests,
        BuddyOp::Add { contact: "bob".into(), sealed: vec![1; 60], message: "Hi, it's Alice".into() },
        BuddyOp::Answer { from: "bob".into(), accept: true, sealed: vec![2; 60] },
        BuddyOp::Block { contact: "mallory".into(), sealed: vec![3; 60] },
    ];
    let answers = [
        BuddyAnswer::Page {
            rows: vec![Row { tag: 0xabcd, relation: Relation::Authorized, sealed: vec![4; 60], changed_at: NOW_SECS }],
            more: true,
        },
        BuddyAnswer::Requests { items: vec![Incoming { from: "bob".into(), message: "hello".into(), at: NOW_SECS }] },
        BuddyAnswer::Relation(Relation::Requested),
        BuddyAnswer::Done,
    ];
    let contact = Contact { user: "Bob".into(), added_at: NOW_SECS };

    let revocations = confab::crypto::RevocationList::issue(
        NOW_SECS,
        vec![confab::crypto::revocation::Revocation {
            key: sn.public_key.id(),
            kind: CredentialKind::SuperNode,
            subject: sn.subject.clone(),
            expires_at: sn.expires_at,
        }],
        &login,
    )
    .encode();
    let revocation_query =
        RevocationQuery { have: 1, timestamp: NOW_SECS, credential: sn.encode(), signature: vec![5; 256] };
    let mut s: BTreeMap<&'static str, Vec<Vec<u8>>> = BTreeMap::new();
    let mut add = |t: Target, bodies: Vec<Vec<u8>>| {
        s.insert(t.name(), bodies.into_iter().map(|b| t.input(&b)).collect());
    };
    add(
        Target::Frame,
        vec![
            plain_hello.clone(),
            plain_probe.clone(),
            frame::encode_plain(
                listener,
                MessageKind::Error,
                0,
                &ErrorMsg::new(ErrorCode::StaleCookie, "stale").encode(),
            ),
            frame::encode_plain(listener, MessageKind::SeenReply, 0, &seen.encode()),
            sealed(MessageKind::Keepalive, 1, b""),
            sealed(MessageKind::Find, 2, &find.encode()),
            frame::encode_plain(listener, MessageKind::RevocationReply, 0, &revocations),
            frame::encode_plain(listener, MessageKind::RevocationQuery, 0, &revocation_query.encode()),
            sealed(MessageKind::Keepalive, 4, &keepalive_id.encode()),
            sealed(MessageKind::PublishReq, 5, &publish_req.encode()),
        ],
    );
    add(
        Target::TcpStream,
        vec![tcp(&[&plain_hello, &plain_probe]), tcp(&[&sealed(MessageKind::Search, 3, &search.encode())])],
    );
    add(Target::Codec, vec![codec.into_bytes()]);
    add(Target::Hello, vec![hello.encode()]);
    add(Target::Challenge, vec![challenge.encode()]);
    add(Target::Envelope, vec![envelope(120).encode(), envelope(0).encode()]);
    add(Target::AuthBody, vec![AuthBody { credential: alice.encode(), signature: vec![9; 256] }.encode()]);
    add(Target::Welcome, vec![welcome.encode()]);
    add(
        Target::Observed,
        vec![
            Observed { id: 3, addr: sa("198.18.7.1:40000") }.encode(),
            Observed { id: 0, addr: sa("[2001:db8::1]:1") }.encode(),
        ],
    );
    add(Target::NatProbe, vec![NatProbe { id: 77 }.encode()]);
    add(Target::Bye, vec![Bye { reason: 0 }.encode()]);
    add(
        Target::ErrorMsg,
        vec![
            ErrorMsg { code: ErrorCode::TooManyAttempts, retry_after_secs: 30, detail: "slow down".into() }.encode(),
            ErrorMsg::new(ErrorCode::Unknown(999), "").encode(),
        ],
    );
    add(
        Target::AccountBody,
        vec![
            account.encode(),
            AccountBody { host_public_key: Vec::new(), user_keys: None, ..account.clone() }.encode(),
        ],
    );
    add(
        Target::LoginReply,
        vec![
            LoginReply { credential: alice.encode(), latest_version: "0.2.0".into(), revocations: Vec::new() }.encode(),
        ],
    );
    add(Target::PublishAck, vec![PublishAck { code: 0, replicas: 9, detail: String::new() }.encode()]);
    add(Target::Find, vec![find.encode()]);
    add(
        Target::FindReply,
        vec![
            FindReply { req: 9, entry: entry.clone(), asked: 4, stage: "first".into(), directory: Vec::new() }.encode(),
            FindReply { req: 9, entry: Vec::new(), asked: 16, stage: "directory".into(), directory: seen.encode() }
                .encode(),
        ],
    );
    add(Target::SeenRecord, vec![seen.encode()]);
    add(Target::Search, vec![search.encode()]);
    add(Target::SearchReply, vec![SearchReply { req: 10, total: 2, index: 1, entry: entry.clone() }.encode()]);
    add(Target::Forward, vec![forward.encode()]);
    add(Target::ForwardAck, vec![ForwardAck { req: 11, code: 0, supernode: "sn2".into() }.encode()]);
    add(Target::RelayAllocate, vec![RelayAllocate { req: 5, callee: bob.encode() }.encode()]);
    add(Target::RelayGrant, vec![grant.encode(), RelayGrant { code: 24, relay: None, ..grant }.encode()]);
    add(Target::RelayRelease, vec![RelayRelease { session: 0xdead_beef }.encode()]);
    add(Target::CallStats, vec![stats.encode()]);
    add(Target::RegisterReply, vec![RegisterReply { username: "alice".into() }.encode()]);
    add(Target::Stun, vec![rfc5769.clone(), rfc5769[..107].to_vec(), bare, unknown]);
    add(
        Target::RelayPacket,
        vec![packet::build(SessionId(0xdead_beef), Token::from_bytes([9; 16]), &media_like(1)), dg(2)],
    );
    add(Target::RelayDecide, vec![relay(0b101), relay(0b000), relay(0b011)]);
    add(
        Target::Media,
        vec![tx.seal(Kind::Voice, 0, &[1; 80]), tx.seal(Kind::Probe, 960, b""), tx.seal(Kind::ProbeAck, 1920, b"")],
    );
    add(Target::MediaOrder, vec![vec![0, 1, 2, 1, 5, 3, 3, 0, 40, 4]]);
    let jitter_record =
        |push: bool, ts: u32, dt: u16| [&[push as u8][..], &ts.to_be_bytes(), &dt.to_be_bytes()].concat();
    let mut talk = vec![60u8];
    for (i, ts) in [0u32, 960, 2880, 1920, 3840, 3840, 0, 4800, 96_000].into_iter().enumerate() {
        talk.extend(jitter_record(true, ts, 20));
        talk.extend(jitter_record(i % 2 == 0, 0, 20));
    }
    add(Target::Jitter, vec![talk]);
    // Data packets from the peer to the fuzz member, under the pair key the target uses.
    let peer_key = confab::cluster::gossip::PairKey::new(&[0x11; 32], [0xbb; 8], [0xaa; 8]);
    let data = |channel, counter, payload: &[u8]| {
        peer_key.seal(confab::cluster::gossip::Header { channel, sender: [0xbb; 8], counter }, payload)
    };
    add(Target::ClusterPacket, vec![data(Channel::Index, 1, &rpcs[2]), data(Channel::Gossip, 2, &gossip[0])]);
    let payload = |which: u8, counter: u64, p: &[u8]| [&[which][..], &counter.to_be_bytes(), p].concat();
    let spread = confab::cluster::revocation::Spread::List(revocations.clone()).encode();
    add(Target::ClusterPayload, vec![payload(1, 7, &rpcs[0]), payload(0, 8, &gossip[0]), payload(0xff, 9, &spread)]);
    add(Target::IndexRpc, rpcs.to_vec());
    add(Target::Gossip, vec![chunked(&gossip), chunked(&gossip[..1])]);
    add(Target::Credential, vec![alice.encode(), sn.encode(), expired.encode()]);
    add(Target::Entry, vec![entry.clone(), offline]);
    add(Target::SignedOp, ops.iter().map(|op| SignedOp::sign(&alice, &alice_key, &[], NOW_SECS, op.clone())).collect());
    add(Target::BuddyAnswer, answers.iter().map(|a| a.encode()).collect());
    add(Target::Notice, notices.to_vec());
    add(
        Target::BuddyRecord,
        vec![
            record::seal(&ListKey(fuzzing::LIST_KEY), fuzzing::LIST_OWNER, &contact),
            postcard::to_allocvec(&contact).unwrap(),
        ],
    );
    add(Target::Invite, vec![invite.encode()]);
    add(Target::Reply, vec![reply.encode()]);
    add(Target::CallMessage, call_messages.to_vec());
    add(Target::SealedSignal, vec![signal.encode()]);
    add(
        Target::Signal,
        [
            Signal::Ringing,
            Signal::HangUp,
            Signal::Relay { relay: sa("198.18.0.1:3478"), session: 0xdead_beef, leg: vec![2; 256] },
            Signal::AcceptAt {
                candidates: vec![Candidate { kind: CandidateKind::Public, addr: sa("198.18.7.1:40000") }],
            },
            Signal::Nat { kind: confab::nat::NatKind::Symmetric },
            Signal::Moved { supernode: "sn2".into() },
        ]
        .iter()
        .map(|s| postcard::to_allocvec(s).unwrap())
        .collect(),
    );
    add(
        Target::Session,
        vec![
            chunked(&[
                session_chunk(MessageKind::Keepalive, 0, b""),
                session_chunk(MessageKind::Find, 1, &find.encode()),
                session_chunk(MessageKind::Search, 2, &search.encode()),
                session_chunk(MessageKind::Publish, 3, &entry),
                session_chunk(MessageKind::Forward, 4, &forward.encode()),
                session_chunk(MessageKind::RelayAllocate, 5, &RelayAllocate { req: 5, callee: bob.encode() }.encode()),
                session_chunk(MessageKind::CallStats, 6, &stats.encode()),
                session_chunk(MessageKind::RelayRelease, 7, &RelayRelease { session: 1 }.encode()),
                session_chunk(MessageKind::Welcome, 8, &welcome.encode()),
                session_chunk(MessageKind::Keepalive, 1, b""),
                session_chunk(MessageKind::Bye, 9, &Bye { reason: 0 }.encode()),
            ]),
            chunked(&[session_chunk(MessageKind::Error, 0, &ErrorMsg::new(ErrorCode::Internal, "x").encode())]),
            // Revision 2: a keepalive id first, then failures answered with request ids.
            chunked(&[
                session_chunk(MessageKind::Keepalive, 0, &keepalive_id.encode()),
                session_chunk(MessageKind::PublishReq, 1, &publish_req.encode()),
                session_chunk(MessageKind::Find, 2, &[0, 0, 0, 9]),
                session_chunk(MessageKind::PublishReq, 3, &[0, 0, 0, 12, 0xff]),
                session_chunk(MessageKind::Welcome, 4, &welcome.encode()),
                session_chunk(MessageKind::Keepalive, 5, &[1, 2, 3]),
                session_chunk(MessageKind::Keepalive, 6, b""),
                session_chunk(
                    MessageKind::RequestError,
                    7,
                    &RequestError { req: 3, error: ErrorMsg::new(ErrorCode::Internal, "x") }.encode(),
                ),
                session_chunk(MessageKind::Publish, 8, &entry),
            ]),
        ],
    );
    add(Target::Keepalive, vec![Keepalive { id: 0 }.encode(), keepalive_id.encode()]);
    add(
        Target::RequestError,
        vec![
            RequestError {
                req: 9,
                error: ErrorMsg { code: ErrorCode::TooManyAttempts, retry_after_secs: 1, detail: "slow down".into() },
            }
            .encode(),
            RequestError { req: 0, error: ErrorMsg::new(ErrorCode::Malformed, "find: truncated") }.encode(),
        ],
    );
    add(Target::PublishReq, vec![publish_req.encode()]);
    add(
        Target::PublishReply,
        vec![
            PublishReply { req: 12, ack: PublishAck { code: 0, replicas: 9, detail: String::new() } }.encode(),
            PublishReply {
                req: 13,
                ack: PublishAck { code: ErrorCode::BadSignature.code(), replicas: 0, detail: "wrong user".into() },
            }
            .encode(),
        ],
    );
    chat_seeds(&mut add);
    assert_eq!(s.len(), Target::ALL.len(), "a seed for every target");
    s
}

/// Seeds of the chat, group and file transfer targets: messages from the fuzz sender to
/// the fuzz recipient, a group's first entries, a transfer's two streams.
fn chat_seeds(add: &mut impl FnMut(Target, Vec<Vec<u8>>)) {
    use confab::chat::group::Group;
    use confab::chat::group::sync::Payload;
    use confab::chat::message::{Body, Conversation, Inner, ReceiptKind, seal};
    use confab::transfer::{bitmap::ChunkBitmap, frames, manifest::Manifest, state::TransferId};
    use rand::SeedableRng;
    let (alice, bob) = (fuzzing::chat_keys(fuzzing::CHAT_RECIPIENT), fuzzing::chat_keys(fuzzing::CHAT_SENDER));
    let inner = |seq: u64, body: Body| Inner {
        from: fuzzing::CHAT_SENDER.into(),
        from_device: confab::crypto::keys::KeyId([2; 8]),
        conversation: Conversation::User(fuzzing::CHAT_SENDER.into()),
        seq,
        sent_at_ms: NOW_SECS * 1000,
        body,
    };
    let inners = [
        inner(1, Body::Text { text: "are you there?".into() }),
        inner(2, Body::Receipt { kind: ReceiptKind::Read, ids: vec![[7; 16], [8; 16]] }),
        inner(
            3,
            Body::FileOffer {
                transfer: [9; 16],
                name: "notes.txt".into(),
                bytes: 70_000,
                sha256: [1; 32],
                manifest: [2; 32],
                cert_fingerprint: [3; 32],
            },
        ),
        inner(4, Body::FileAnswer { transfer: [9; 16], accept: true }),
    ];
    let sealed: Vec<Vec<u8>> = inners
        .iter()
        .enumerate()
        .map(|(i, m)| seal(m, [i as u8; 16], fuzzing::CHAT_RECIPIENT, &alice.public(), &bob).unwrap().encode())
        .collect();
    add(Target::ChatSealed, sealed);
    add(Target::ChatInner, inners.iter().map(|m| m.encode().unwrap()).collect());

    let mut rng = rand::rngs::StdRng::seed_from_u64(7);
    let (group, entries) = Group::create(fuzzing::CHAT_SENDER, bob, "friends", NOW_SECS * 1000, &mut rng).unwrap();
    add(Target::GroupEntry, entries.clone());
    let heads: Vec<_> = entries.iter().map(|e| confab::chat::group::Entry::decode(e).unwrap().hash()).collect();
    let gid = group.id();
    add(
        Target::GroupSync,
        vec![
            Payload::Entry(entries[0].clone()).encode(),
            Payload::Hello { group: gid, complete: true, reply: false, heads: heads.clone(), sample: heads.clone() }
                .encode(),
            Payload::Want { group: gid, hashes: heads }.encode(),
        ],
    );

    let file: Vec<u8> = (0..70_000u32).map(|i| (i % 251) as u8).collect();
    let m = Manifest::from_reader(&file[..]).unwrap();
    let mut held = ChunkBitmap::new(m.chunks());
    held.set(0);
    let requests = [
        frames::encode_request(&frames::Request { id: TransferId([9; 16]), held: None }),
        frames::encode_request(&frames::Request { id: TransferId([9; 16]), held: Some(held) }),
    ];
    let to_sender = [&[0u8][..], &chunked(&requests)].concat();
    let chunk_bytes = (confab::transfer::manifest::CHUNK_BYTES as usize).min(file.len());
    let to_receiver =
        [&[1u8][..], &chunked(&[frames::encode_manifest(&m), frames::encode_chunk(1, &file[chunk_bytes..])])].concat();
    add(Target::TransferStream, vec![to_sender, to_receiver]);
    add(Target::TransferManifest, vec![m.encode()]);
}

/// A chat message the fuzz target opens and verifies: bob's own copy of a message to alice,
/// sealed to and signed with the fixture user keys.
fn chat_seed() -> confab::chat::message::Sealed {
    use confab::chat::message::{Body, Conversation, Inner, seal};
    let keys = confab::crypto::user::UserKeys::derive(&ListKey(fuzzing::LIST_KEY));
    let inner = Inner {
        from: "bob".into(),
        from_device: confab::crypto::keys::KeyId([1; 8]),
        conversation: Conversation::User("alice".into()),
        seq: 1,
        sent_at_ms: NOW_SECS * 1000,
        body: Body::Text { text: "hello".into() },
    };
    seal(&inner, [0x42; 16], "bob", &keys.public(), &keys).unwrap()
}

#[test]
#[ignore = "writes fuzz/corpus/decode_any; run it by hand after a format change"]
fn write_seed_corpus() {
    let dir = fuzz_dir().join("corpus").join("decode_any");
    // Seeds are named after their target; anything else in the folder stays.
    for old in files(&dir) {
        let name = old.file_name().unwrap().to_string_lossy().into_owned();
        if Target::ALL.iter().any(|t| name.strip_prefix(t.name()).is_some_and(|r| r.starts_with('-'))) {
            std::fs::remove_file(old).unwrap();
        }
    }
    std::fs::create_dir_all(&dir).unwrap();
    for (name, inputs) in seeds() {
        for (i, input) in inputs.iter().enumerate() {
            fuzzing::decode_any(input);
            std::fs::write(dir.join(format!("{name}-{i:02}")), input).unwrap();
        }
    }
}

#[test]
fn fresh_seeds_reach_past_the_checks() {
    // Made now, not read from disk: the seeds decode and verify, so the fuzzer starts
    // from inputs that get through every check (a stale fixture would start it at the
    // first refusal).
    let s = seeds();
    let first = |t: Target| s[t.name()][0][1..].to_vec();
    let trusted = fuzzing::trusted();
    let c = Credential::decode(&first(Target::Credential)).unwrap();
    c.verify(trusted, CredentialKind::Host, NOW_SECS).unwrap();
    Entry::decode(&first(Target::Entry)).unwrap().verify(trusted, NOW_SECS * 1000).unwrap();
    assert!(SeenRecord::decode(&first(Target::SeenRecord)).unwrap().verify(trusted));
    let revocations = frame::decode(fuzzing::LISTENER.parse().unwrap(), &s["frame"][6][1..]).unwrap();
    confab::crypto::RevocationList::decode(revocations.payload).unwrap().verify(trusted).unwrap();
    SignedOp::decode(&first(Target::SignedOp)).unwrap().verify(trusted, &[], NOW_SECS).unwrap();
    let sig = SealedSignal::decode(&first(Target::SealedSignal)).unwrap();
    let key = MediaKey(fuzzing::MEDIA_KEY);
    let mut callee = SignalChannel::keyed(fuzzing::CALL_ID, &key, &key, Role::Callee);
    assert_eq!(callee.open(&sig), Some(Signal::Accept));
    let Some(Notice::Chat { sealed }) = Notice::decode(&s["notice"][3][1..]) else { panic!("the chat notice seed") };
    let keys = confab::crypto::user::UserKeys::derive(&ListKey(fuzzing::LIST_KEY));
    let sealed = confab::chat::message::Sealed::decode(&sealed).unwrap();
    confab::chat::message::open(&sealed, "bob", &keys).unwrap().verify(&keys.public()).unwrap();
    let (alice, bob) = (fuzzing::chat_keys(fuzzing::CHAT_RECIPIENT), fuzzing::chat_keys(fuzzing::CHAT_SENDER));
    for sealed in &s["chat_sealed"] {
        let sealed = confab::chat::message::Sealed::decode(&sealed[1..]).unwrap();
        confab::chat::message::open(&sealed, fuzzing::CHAT_RECIPIENT, &alice).unwrap().verify(&bob.public()).unwrap();
    }
    for e in &s["group_entry"] {
        assert!(confab::chat::group::Entry::decode(&e[1..]).unwrap().verify(&bob.public()), "a group seed verifies");
    }
    for inputs in s.values() {
        for input in inputs {
            fuzzing::decode_any(input);
        }
    }
}
