//! One entry point that sends arbitrary bytes to every decoder of untrusted input, for
//! the cargo-fuzz target in `fuzz/` and for `tests/fuzz_corpus.rs`, which replays the
//! committed corpus on stable. Not part of the API: nothing else calls it.
//!
//! The first input byte picks a [`Target`] (folded modulo their number, so any byte
//! means something); the rest goes to that decoder. Besides "never panics, never hangs,
//! never allocates without bound", every decoder that has an encoder must round-trip:
//! `decode(encode(decode(x))) == decode(x)`. Stateful targets (the relay's session
//! table, a super node's session, a media receiver, SWIM membership) take a sequence of
//! chunks, each a big-endian `u16` length and that many bytes (see [`chunked`]).
//!
//! Everything is deterministic apart from the OS randomness some constructors use for
//! ids and nonces: the clock is the fixed [`NOW_SECS`], keys are fixed, and the one
//! trusted login key is the test fixture `login-0`, so a seed signed with the fixture
//! keys reaches the signature checks.

use crate::buddy::notice::Notice;
use crate::buddy::op::{BuddyAnswer, SignedOp};
use crate::buddy::record::{self, Contact};
use crate::call::invite::{CallMessage, Invite, MediaKey, Reply, SealedSignal, SignalChannel};
use crate::call::media::{self, MediaReceiver, MediaSender};
use crate::call::signal::{Role, Signal};
use crate::cluster::gossip::{Channel, ClusterKey};
use crate::cluster::member::Member;
use crate::cluster::membership::{self, Membership, Output};
use crate::crypto::aead::{SessionSecret, label};
use crate::crypto::credential::{Credential, CredentialKind, TrustedKeys};
use crate::crypto::keys::{PrivateKey, PublicKey};
use crate::crypto::password::ListKey;
use crate::index::entry::Entry;
use crate::index::rpc::{IndexRpc, MailRpc};
use crate::relay::packet::{self, Token};
use crate::relay::table::{Decision, Limits, Peer, SessionCache, SessionTable};
use crate::supernode::session::{Action, Session, SessionPeer, Transport};
use crate::wire::codec::{Reader, Writer};
use crate::wire::frame::{self, Direction, PAYLOAD_LEN_MAX};
use crate::wire::mail;
use crate::wire::message::{self as msg, MessageKind};
use crate::wire::stun;
use std::collections::HashSet;
use std::fmt::Debug;
use std::net::SocketAddr;
use std::sync::OnceLock;
use std::time::Duration;

/// The clock every target reads (unix seconds): seeds are made valid at this time.
pub const NOW_SECS: u64 = 1_700_000_000;
/// The listening address that keys the frame header obfuscation.
pub const LISTENER: &str = "198.18.0.1:33033";
/// The session secret of the super-node session target (both directions derive from it).
pub const SESSION_SECRET: [u8; 32] = [0x5e; 32];
/// The session id of the super-node session target.
pub const SESSION_ID: u32 = 0x0102_0304;
/// The cluster secret of the cluster targets.
pub const CLUSTER_SECRET: [u8; 32] = [0xc1; 32];
/// The media key and call id of the media and signal targets.
pub const MEDIA_KEY: [u8; 32] = [0x3d; 32];
/// The call id of the media and signal targets.
pub const CALL_ID: [u8; 16] = [0x11; 16];
/// The buddy-list key and owner of the sealed-record target.
pub const LIST_KEY: [u8; 32] = [0x4b; 32];
/// The owner of the sealed-record target.
pub const LIST_OWNER: &str = "alice";
/// Most chunks a stateful target reads from one input.
pub const CHUNKS_MAX: usize = 64;

macro_rules! targets {
    ($($variant:ident = $name:literal: $doc:literal),* $(,)?) => {
        /// A decoder, chosen by an input's first byte.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        pub enum Target {
            $(#[doc = $doc] $variant),*
        }

        impl Target {
            /// Every target, in selector order.
            pub const ALL: &'static [Target] = &[$(Target::$variant),*];

            /// A short stable name (seed files are named after it).
            pub fn name(self) -> &'static str {
                match self {
                    $(Target::$variant => $name),*
                }
            }
        }
    };
}

targets! {
    Frame = "frame": "`wire::frame::decode`, opening sealed payloads, re-encoding plain ones, and the body by kind.",
    TcpStream = "tcp_stream": "`net::tcp::read_frame` over a byte stream, then each frame.",
    Codec = "codec": "`wire::codec::Reader` driven by an op script, re-written with `Writer`.",
    Hello = "hello": "`wire::message::Hello`.",
    Challenge = "challenge": "`wire::message::Challenge`.",
    Envelope = "envelope": "`wire::message::Envelope`.",
    AuthBody = "auth_body": "`wire::message::AuthBody`.",
    Welcome = "welcome": "`wire::message::Welcome`.",
    Observed = "observed": "`wire::message::Observed`.",
    NatProbe = "nat_probe": "`wire::message::NatProbe`.",
    Bye = "bye": "`wire::message::Bye`.",
    ErrorMsg = "error_msg": "`wire::message::ErrorMsg`.",
    AccountBody = "account_body": "`wire::message::AccountBody`.",
    LoginReply = "login_reply": "`wire::message::LoginReply`.",
    PublishAck = "publish_ack": "`wire::message::PublishAck`.",
    Find = "find": "`wire::message::Find`.",
    FindReply = "find_reply": "`wire::message::FindReply`.",
    SeenRecord = "seen_record": "`wire::message::SeenRecord`, and its signature check.",
    Search = "search": "`wire::message::Search`.",
    SearchReply = "search_reply": "`wire::message::SearchReply`.",
    Forward = "forward": "`wire::message::Forward`.",
    ForwardAck = "forward_ack": "`wire::message::ForwardAck`.",
    RelayAllocate = "relay_allocate": "`wire::message::RelayAllocate`.",
    RelayGrant = "relay_grant": "`wire::message::RelayGrant`.",
    RelayRelease = "relay_release": "`wire::message::RelayRelease`.",
    CallStats = "call_stats": "`wire::message::CallStats`.",
    RegisterReply = "register_reply": "`wire::message::RegisterReply`.",
    Stun = "stun": "`wire::stun::answer` (the answer must carry the source back) and `parse_xor_mapped_address`.",
    RelayPacket = "relay_packet": "`relay::packet::parse`, `build` and `wipe_token`.",
    RelayDecide = "relay_decide": "`relay::table::SessionTable::decide` and `decide_cached` over chunks of datagrams.",
    Media = "media": "`call::media::MediaReceiver::open`, `peek` and `sequence` on one packet.",
    MediaOrder = "media_order": "Real media packets delivered in the order (and with the repeats) the input says.",
    ClusterPacket = "cluster_packet": "A gossip-port packet: a hello (`ClusterKey::open_hello`), or a data packet's header, `PairKey::open`, then the payload by channel.",
    ClusterPayload = "cluster_payload": "A payload sealed under a pair key with a counter, opened and handled by channel.",
    IndexRpc = "index_rpc": "`index::rpc::IndexRpc`.",
    Gossip = "gossip": "foca's postcard codec (header, then members) and `cluster::Membership::handle_data`.",
    Credential = "credential": "`crypto::credential::Credential`, and its verification.",
    Entry = "entry": "`index::entry::Entry`, and its verification.",
    SignedOp = "signed_op": "`buddy::op::SignedOp`, and its verification.",
    BuddyAnswer = "buddy_answer": "`buddy::op::BuddyAnswer`.",
    Notice = "notice": "`buddy::notice::Notice`, then what it carries.",
    BuddyRecord = "buddy_record": "`buddy::record::open` and the `Contact` inside.",
    Invite = "invite": "`call::invite::Invite`, and the callee's checks (`Invite::open`).",
    Reply = "reply": "`call::invite::Reply`.",
    CallMessage = "call_message": "`call::invite::CallMessage`, and an invite's checks.",
    SealedSignal = "sealed_signal": "`call::invite::SealedSignal`, opened by a `SignalChannel`.",
    Signal = "signal": "`call::signal::Signal` as a signal channel decodes it.",
    Session = "session": "A super node's established `Session` fed chunks of (mostly sealed) frames.",
    // New targets go last: a selector keeps its meaning, and the corpus with it.
    Jitter = "jitter": "`call::jitter::JitterBuffer` fed the sender's timestamps and arrival times the input says.",
    Keepalive = "keepalive": "`wire::message::Keepalive`.",
    RequestError = "request_error": "`wire::message::RequestError`.",
    PublishReq = "publish_req": "`wire::message::PublishReq`, then the entry it carries.",
    PublishReply = "publish_reply": "`wire::message::PublishReply`.",
    ChatSealed = "chat_sealed": "`chat::message::Sealed`, opened with the fuzz recipient's user keys, then verified.",
    ChatInner = "chat_inner": "`chat::message::Inner` (the signed message and its body).",
    GroupEntry = "group_entry": "`chat::group::log::Entry`, and its signature check.",
    GroupSync = "group_sync": "`chat::group::sync::Payload`.",
    TransferStream = "transfer_stream": "The file transfer stream: `transfer::frames` request, manifest and chunks over chunks of bytes.",
    TransferManifest = "transfer_manifest": "`transfer::manifest::Manifest`.",
}

impl Target {
    /// The target an input's first byte selects.
    pub fn of(selector: u8) -> Target {
        Self::ALL[usize::from(selector) % Self::ALL.len()]
    }

    /// The first byte that selects this target.
    pub fn selector(self) -> u8 {
        let i = Self::ALL.iter().position(|t| *t == self).expect("every target is listed");
        u8::try_from(i).expect("fewer than 256 targets")
    }

    /// A whole fuzz input for this target.
    pub fn input(self, body: &[u8]) -> Vec<u8> {
        let mut v = Vec::with_capacity(1 + body.len());
        v.push(self.selector());
        v.extend_from_slice(body);
        v
    }
}

/// Joins chunks the way stateful targets read them: each a `u16` length, then its bytes.
pub fn chunked<B: AsRef<[u8]>>(chunks: &[B]) -> Vec<u8> {
    let mut v = Vec::new();
    for c in chunks {
        let c = c.as_ref();
        let len = u16::try_from(c.len()).expect("chunks are shorter than 64 KiB");
        v.extend_from_slice(&len.to_be_bytes());
        v.extend_from_slice(c);
    }
    v
}

/// The chunks of an input (a short last chunk is taken as it is), at most [`CHUNKS_MAX`].
fn chunks(mut data: &[u8]) -> impl Iterator<Item = &[u8]> {
    std::iter::from_fn(move || {
        let (len, rest) = data.split_first_chunk::<2>()?;
        let len = usize::from(u16::from_be_bytes(*len)).min(rest.len());
        let (chunk, rest) = rest.split_at(len);
        data = rest;
        Some(chunk)
    })
    .take(CHUNKS_MAX)
}

/// The login key every target trusts: the test fixture `login-0`.
pub fn trusted() -> &'static TrustedKeys {
    static KEYS: OnceLock<TrustedKeys> = OnceLock::new();
    KEYS.get_or_init(|| {
        let pem = include_str!("../tests/fixtures/keys/login-0.pub.pem");
        TrustedKeys::new(vec![PublicKey::from_pem(pem).expect("the fixture key parses")])
    })
}

fn listener() -> SocketAddr {
    LISTENER.parse().expect("a valid address")
}

/// Feeds one input to the decoder its first byte selects. Panics only on a bug: a
/// decoder that panics, or a round trip that does not hold.
pub fn decode_any(data: &[u8]) {
    let Some((&selector, rest)) = data.split_first() else { return };
    run(Target::of(selector), rest);
}

/// Feeds `data` to one target.
pub fn run(target: Target, data: &[u8]) {
    match target {
        Target::Frame => frame_target(data),
        Target::TcpStream => tcp_stream(data),
        Target::Codec => codec_script(data),
        Target::Hello => {
            let _ = round_trip("hello", data, msg::Hello::decode, msg::Hello::encode);
        }
        Target::Challenge => {
            let _ = round_trip("challenge", data, msg::Challenge::decode, msg::Challenge::encode);
        }
        Target::Envelope => {
            let _ = round_trip("envelope", data, msg::Envelope::decode, msg::Envelope::encode);
        }
        Target::AuthBody => {
            let _ = round_trip("auth_body", data, msg::AuthBody::decode, msg::AuthBody::encode);
        }
        Target::Welcome => {
            let _ = round_trip("welcome", data, msg::Welcome::decode, msg::Welcome::encode);
        }
        Target::Observed => {
            let _ = round_trip("observed", data, msg::Observed::decode, msg::Observed::encode);
        }
        Target::NatProbe => {
            let _ = round_trip("nat_probe", data, msg::NatProbe::decode, msg::NatProbe::encode);
        }
        Target::Bye => {
            let _ = round_trip("bye", data, msg::Bye::decode, msg::Bye::encode);
        }
        Target::ErrorMsg => {
            let _ = round_trip("error_msg", data, msg::ErrorMsg::decode, msg::ErrorMsg::encode);
        }
        Target::AccountBody => {
            let _ = round_trip("account_body", data, msg::AccountBody::decode, msg::AccountBody::encode);
        }
        Target::LoginReply => {
            let _ = round_trip("login_reply", data, msg::LoginReply::decode, msg::LoginReply::encode);
        }
        Target::PublishAck => {
            let _ = round_trip("publish_ack", data, msg::PublishAck::decode, msg::PublishAck::encode);
        }
        Target::Find => {
            let _ = round_trip("find", data, msg::Find::decode, msg::Find::encode);
        }
        Target::FindReply => {
            let _ = round_trip("find_reply", data, msg::FindReply::decode, msg::FindReply::encode);
        }
        Target::SeenRecord => {
            if let Some(r) = round_trip("seen_record", data, msg::SeenRecord::decode, msg::SeenRecord::encode) {
                let _ = r.verify(trusted());
            }
        }
        Target::Search => {
            let _ = round_trip("search", data, msg::Search::decode, msg::Search::encode);
        }
        Target::SearchReply => {
            let _ = round_trip("search_reply", data, msg::SearchReply::decode, msg::SearchReply::encode);
        }
        Target::Forward => {
            let _ = round_trip("forward", data, msg::Forward::decode, msg::Forward::encode);
        }
        Target::ForwardAck => {
            let _ = round_trip("forward_ack", data, msg::ForwardAck::decode, msg::ForwardAck::encode);
        }
        Target::RelayAllocate => {
            let _ = round_trip("relay_allocate", data, msg::RelayAllocate::decode, msg::RelayAllocate::encode);
        }
        Target::RelayGrant => {
            let _ = round_trip("relay_grant", data, msg::RelayGrant::decode, msg::RelayGrant::encode);
        }
        Target::RelayRelease => {
            let _ = round_trip("relay_release", data, msg::RelayRelease::decode, msg::RelayRelease::encode);
        }
        Target::CallStats => {
            let _ = round_trip("call_stats", data, msg::CallStats::decode, msg::CallStats::encode);
        }
        Target::RegisterReply => {
            let _ = round_trip("register_reply", data, msg::RegisterReply::decode, msg::RegisterReply::encode);
        }
        Target::Stun => stun_target(data),
        Target::RelayPacket => relay_packet(data),
        Target::RelayDecide => relay_decide(data),
        Target::Media => media_packet(data),
        Target::MediaOrder => media_order(data),
        Target::Jitter => jitter(data),
        Target::ClusterPacket => cluster_packet(&cluster_key(), data),
        Target::ClusterPayload => cluster_payload(data),
        Target::IndexRpc => {
            let _ = round_trip("index_rpc", data, IndexRpc::decode, IndexRpc::encode);
            let _ = round_trip("mail_rpc", data, MailRpc::decode, MailRpc::encode);
        }
        Target::Gossip => gossip(data),
        Target::Credential => credential(data),
        Target::Entry => entry(data),
        Target::SignedOp => {
            let encode = |s: &SignedOp| postcard::to_allocvec(s).expect("a signed op encodes");
            if let Some(op) = round_trip("signed_op", data, SignedOp::decode, encode) {
                let _ = op.verify(trusted(), &[], NOW_SECS);
            }
        }
        Target::BuddyAnswer => {
            let _ = round_trip("buddy_answer", data, |b| BuddyAnswer::decode(b).ok_or(()), BuddyAnswer::encode);
        }
        Target::Notice => notice(data),
        Target::BuddyRecord => buddy_record(data),
        Target::Invite => {
            if let Some(i) = round_trip("invite", data, Invite::decode, Invite::encode) {
                open_invite(&i);
            }
        }
        Target::Reply => {
            let _ = round_trip("reply", data, Reply::decode, Reply::encode);
        }
        Target::CallMessage => call_message(data),
        Target::SealedSignal => {
            if let Some(s) = round_trip("sealed_signal", data, SealedSignal::decode, SealedSignal::encode) {
                let key = MediaKey(MEDIA_KEY);
                let _ = SignalChannel::keyed(CALL_ID, &key, &key, Role::Callee).open(&s);
                let _ = SignalChannel::keyed(CALL_ID, &key, &key, Role::Caller).open(&s);
            }
        }
        Target::Signal => {
            let decode = |b: &[u8]| postcard::from_bytes::<Signal>(b);
            let encode = |s: &Signal| postcard::to_allocvec(s).expect("a signal encodes");
            let _ = round_trip("signal", data, decode, encode);
        }
        Target::Session => session(data),
        Target::Keepalive => {
            let _ = round_trip("keepalive", data, msg::Keepalive::decode, msg::Keepalive::encode);
        }
        Target::RequestError => {
            let _ = round_trip("request_error", data, msg::RequestError::decode, msg::RequestError::encode);
        }
        Target::PublishReq => publish_req(data),
        Target::PublishReply => {
            let _ = round_trip("publish_reply", data, msg::PublishReply::decode, msg::PublishReply::encode);
        }
        Target::ChatSealed => chat_sealed(data),
        Target::ChatInner => {
            let encode = |i: &crate::chat::message::Inner| i.encode().expect("a decoded message encodes");
            let _ = round_trip("chat_inner", data, crate::chat::message::Inner::decode, encode);
        }
        Target::GroupEntry => {
            use crate::chat::group::log::Entry as GroupEntry;
            if let Some(e) = round_trip("group_entry", data, GroupEntry::decode, GroupEntry::encode) {
                let _ = e.verify(&chat_keys(CHAT_SENDER).public());
            }
        }
        Target::GroupSync => {
            use crate::chat::group::sync::Payload;
            let _ = round_trip("group_sync", data, Payload::decode, Payload::encode);
        }
        Target::TransferStream => transfer_stream(data),
        Target::TransferManifest => {
            use crate::transfer::manifest::Manifest;
            let _ = round_trip("transfer_manifest", data, Manifest::decode, Manifest::encode);
        }
    }
}

/// The recipient of the chat targets (its user keys derive from `[0x43; 32]`).
pub const CHAT_RECIPIENT: &str = "alice";
/// The sender whose keys the chat targets verify against (keys from `[0x44; 32]`).
pub const CHAT_SENDER: &str = "bob";

/// The fuzz users' keys: alice's from `[0x43; 32]`, anyone else's from `[0x44; 32]`.
pub fn chat_keys(user: &str) -> crate::crypto::user::UserKeys {
    let seed = if user == CHAT_RECIPIENT { 0x43 } else { 0x44 };
    crate::crypto::user::UserKeys::derive(&crate::crypto::password::ListKey([seed; 32]))
}

fn chat_sealed(data: &[u8]) {
    use crate::chat::message::{self, Sealed};
    let Some(sealed) = round_trip("chat_sealed", data, Sealed::decode, Sealed::encode) else { return };
    let Ok(u) = message::open(&sealed, CHAT_RECIPIENT, &chat_keys(CHAT_RECIPIENT)) else { return };
    let _ = u.verify(&chat_keys(CHAT_SENDER).public());
}

/// One side of a transfer's stream, as `transfer::sender` / `transfer::receiver` read
/// it, chosen by the first byte: the sender reads the receiver's request; the receiver
/// reads the manifest, then chunks checked against it. Each decode sees the bytes
/// buffered so far, arriving in the input's chunks.
fn transfer_stream(data: &[u8]) {
    use crate::transfer::frames;
    let Some((&side, data)) = data.split_first() else { return };
    let mut buf: Vec<u8> = Vec::new();
    let mut manifest = None;
    for chunk in chunks(data) {
        buf.extend_from_slice(chunk);
        loop {
            let used = if side & 1 == 0 {
                match frames::decode_request(&buf) {
                    Ok(Some((_, used))) => used,
                    Ok(None) => break,
                    Err(_) => return,
                }
            } else {
                match &manifest {
                    None => match frames::decode_manifest(&buf) {
                        Ok(Some((m, used))) => {
                            manifest = Some(m);
                            used
                        }
                        Ok(None) => break,
                        Err(_) => return,
                    },
                    Some(m) => match frames::decode_chunk(&buf, m) {
                        Ok(Some((index, range, used))) => {
                            assert!(range.end <= used && used <= buf.len(), "a chunk's bytes lie within its frame");
                            let _ = m.verify_chunk(index, &buf[range]);
                            used
                        }
                        Ok(None) => break,
                        Err(_) => return,
                    },
                }
            };
            assert!(used > 0, "a decoded frame has a length");
            buf.drain(..used);
        }
    }
}

fn publish_req(data: &[u8]) {
    if let Some(p) = round_trip("publish_req", data, msg::PublishReq::decode, msg::PublishReq::encode) {
        entry(&p.entry);
    }
}

/// Decodes; if that worked, checks that the re-encoded value decodes to the same value.
fn round_trip<T: PartialEq + Debug, E: Debug>(
    what: &str,
    data: &[u8],
    decode: impl Fn(&[u8]) -> Result<T, E>,
    encode: impl Fn(&T) -> Vec<u8>,
) -> Option<T> {
    let value = decode(data).ok()?;
    let bytes = encode(&value);
    match decode(&bytes) {
        Ok(again) => assert_eq!(again, value, "{what}: the re-encoded value decodes differently"),
        Err(e) => panic!("{what}: the re-encoded value does not decode: {e:?}"),
    }
    Some(value)
}

/// A frame's payload decoded as its kind says, as the receiving role would.
fn body(kind: MessageKind, payload: &[u8]) {
    match kind {
        MessageKind::Hello => ignore(msg::Hello::decode(payload)),
        MessageKind::Challenge => ignore(msg::Challenge::decode(payload)),
        MessageKind::Auth => ignore(msg::Envelope::decode(payload)),
        MessageKind::RegisterRequest | MessageKind::LoginRequest | MessageKind::BuddyRequest => {
            let _ =
                round_trip("enveloped_request", payload, msg::EnvelopedRequest::decode, msg::EnvelopedRequest::encode);
        }
        MessageKind::Puzzle => {
            let _ = round_trip("puzzle", payload, msg::PuzzleChallenge::decode, |c: &msg::PuzzleChallenge| c.encode());
        }
        MessageKind::Welcome => ignore(msg::Welcome::decode(payload)),
        MessageKind::Keepalive => ignore(msg::Keepalive::decode(payload)),
        MessageKind::KeepaliveAck | MessageKind::NatProbeReply => ignore(msg::Observed::decode(payload)),
        MessageKind::Bye => ignore(msg::Bye::decode(payload)),
        MessageKind::Error => ignore(msg::ErrorMsg::decode(payload)),
        MessageKind::RequestError => ignore(msg::RequestError::decode(payload)),
        MessageKind::NatProbe => ignore(msg::NatProbe::decode(payload)),
        MessageKind::RegisterReply => ignore(msg::RegisterReply::decode(payload)),
        MessageKind::LoginReply => ignore(msg::LoginReply::decode(payload)),
        MessageKind::SeenQuery => {
            let _ = round_trip("seen_query", payload, msg::SeenQuery::decode, msg::SeenQuery::encode);
        }
        MessageKind::RevocationQuery => {
            let _ = round_trip("revocation_query", payload, msg::RevocationQuery::decode, msg::RevocationQuery::encode);
        }
        MessageKind::RevocationReply => {
            if let Some(list) = round_trip(
                "revocation_list",
                payload,
                crate::crypto::RevocationList::decode,
                crate::crypto::RevocationList::encode,
            ) {
                let _ = list.verify(trusted());
            }
        }
        MessageKind::Find => ignore(msg::Find::decode(payload)),
        MessageKind::SeenReply => ignore(msg::SeenRecord::decode(payload)),
        MessageKind::BuddyReply => ignore(BuddyAnswer::decode(payload).ok_or(())),
        MessageKind::Publish => ignore(Entry::decode(payload)),
        MessageKind::PublishAck => ignore(msg::PublishAck::decode(payload)),
        MessageKind::PublishReq => publish_req(payload),
        MessageKind::PublishReply => ignore(msg::PublishReply::decode(payload)),
        MessageKind::FindReply => ignore(msg::FindReply::decode(payload)),
        MessageKind::Search => ignore(msg::Search::decode(payload)),
        MessageKind::SearchReply => ignore(msg::SearchReply::decode(payload)),
        MessageKind::Forward => ignore(msg::Forward::decode(payload)),
        MessageKind::ForwardAck => ignore(msg::ForwardAck::decode(payload)),
        MessageKind::Notice => notice(payload),
        MessageKind::RelayAllocate => ignore(msg::RelayAllocate::decode(payload)),
        MessageKind::RelayGrant => ignore(msg::RelayGrant::decode(payload)),
        MessageKind::RelayRelease => ignore(msg::RelayRelease::decode(payload)),
        MessageKind::CallStats => ignore(msg::CallStats::decode(payload)),
        MessageKind::MailSubmit => {
            let _ = round_trip("mail_submit", payload, mail::MailSubmit::decode, mail::MailSubmit::encode);
        }
        MessageKind::MailSubmitReply => ignore(mail::MailSubmitReply::decode(payload)),
        MessageKind::MailFetch => {
            let _ = round_trip("mail_fetch", payload, mail::MailFetch::decode, mail::MailFetch::encode);
        }
        MessageKind::MailBatch => {
            let _ = round_trip("mail_batch", payload, mail::MailBatch::decode, mail::MailBatch::encode);
        }
        MessageKind::MailAck => {
            let _ = round_trip("mail_ack", payload, mail::MailAck::decode, mail::MailAck::encode);
        }
        MessageKind::MailAckReply => ignore(mail::MailAckReply::decode(payload)),
    }
}

/// A decoder's verdict, which only had to come back (a panic is the finding).
fn ignore<T, E>(_: Result<T, E>) {}

fn frame_target(data: &[u8]) {
    let listener = listener();
    let Ok(raw) = frame::decode(listener, data) else { return };
    if raw.header.sealed {
        let secret = SessionSecret(SESSION_SECRET);
        if let Ok(b) = raw.open(&secret.derive(label::INITIATOR_TO_RESPONDER), Direction::ToResponder) {
            body(raw.header.kind, &b);
        }
        let _ = raw.open(&secret.derive(label::RESPONDER_TO_INITIATOR), Direction::ToInitiator);
    } else {
        body(raw.header.kind, raw.payload);
        let again = frame::encode_plain(listener, raw.header.kind, raw.header.session, raw.payload);
        let back = frame::decode(listener, &again).expect("a re-encoded plain frame decodes");
        assert_eq!(back.header, raw.header, "frame: the re-encoded header differs");
        assert_eq!(back.payload, raw.payload, "frame: the re-encoded payload differs");
    }
}

fn tcp_stream(data: &[u8]) {
    use std::future::Future;
    use std::task::{Context, Poll, Waker};
    let mut stream = data;
    let mut cx = Context::from_waker(Waker::noop());
    for _ in 0..CHUNKS_MAX {
        // A byte slice never makes a read wait: one poll finishes the future.
        let mut read = std::pin::pin!(crate::net::tcp::read_frame(&mut stream));
        match read.as_mut().poll(&mut cx) {
            Poll::Ready(Ok(Some(f))) => frame_target(&f),
            Poll::Ready(_) => return,
            Poll::Pending => panic!("tcp_stream: reading from a byte slice waited"),
        }
    }
}

/// One field of the codec script.
#[derive(Debug, PartialEq, Eq)]
enum Field<'a> {
    U8(u8),
    U16(u16),
    U32(u32),
    U64(u64),
    Bytes(&'a [u8]),
    Str(&'a str),
    Addr(SocketAddr),
    OptAddr(Option<SocketAddr>),
}

/// Reads (op, field) pairs until the input or a field ends.
fn read_fields(b: &[u8]) -> Vec<Field<'_>> {
    let mut r = Reader::new(b);
    let mut out = Vec::new();
    while let Ok(op) = r.u8("op") {
        let f = match op % 8 {
            0 => r.u8("u8").map(Field::U8),
            1 => r.u16("u16").map(Field::U16),
            2 => r.u32("u32").map(Field::U32),
            3 => r.u64("u64").map(Field::U64),
            4 => r.bytes("bytes", 512).map(Field::Bytes),
            5 => r.str("str", 255).map(Field::Str),
            6 => r.addr("addr").map(Field::Addr),
            _ => r.opt_addr("opt_addr").map(Field::OptAddr),
        };
        let Ok(f) = f else { break };
        out.push(f);
    }
    out
}

fn write_fields(fields: &[Field<'_>]) -> Vec<u8> {
    let mut w = Writer::new();
    for f in fields {
        match f {
            Field::U8(v) => w.u8(0).u8(*v),
            Field::U16(v) => w.u8(1).u16(*v),
            Field::U32(v) => w.u8(2).u32(*v),
            Field::U64(v) => w.u8(3).u64(*v),
            Field::Bytes(v) => w.u8(4).bytes(v),
            Field::Str(v) => w.u8(5).str(v),
            Field::Addr(v) => w.u8(6).addr(*v),
            Field::OptAddr(v) => w.u8(7).opt_addr(*v),
        };
    }
    w.into_bytes()
}

fn codec_script(data: &[u8]) {
    let fields = read_fields(data);
    let bytes = write_fields(&fields);
    assert_eq!(read_fields(&bytes), fields, "codec: written fields read back differently");
}

fn stun_target(data: &[u8]) {
    let source: SocketAddr = if data.len().is_multiple_of(2) {
        "192.0.2.1:32853".parse().expect("valid")
    } else {
        "[2001:db8:1234:5678:11:2233:4455:6677]:32853".parse().expect("valid")
    };
    let _ = stun::looks_like_stun(data);
    let _ = stun::parse_xor_mapped_address(data);
    if let Ok(resp) = stun::answer(data, source, "confab") {
        assert!(stun::looks_like_stun(&resp), "stun: the answer is not STUN");
        assert_eq!(resp[8..20], data[8..20], "stun: the answer has another transaction id");
        let success = resp[..2] == [0x01, 0x01];
        if success {
            assert_eq!(stun::parse_xor_mapped_address(&resp), Some(source), "stun: the answer maps another address");
        }
        // An answer is never itself answered: two servers cannot be set to ping-pong.
        assert!(stun::answer(&resp, source, "confab").is_err(), "stun: an answer was answered");
    }
}

fn relay_packet(data: &[u8]) {
    let Ok((session, token, inner)) = packet::parse(data) else { return };
    assert_eq!(packet::build(session, token, inner), data, "relay_packet: build does not invert parse");
    let mut wiped = data.to_vec();
    packet::wipe_token(&mut wiped);
    let (s, t, i) = packet::parse(&wiped).expect("a wiped datagram still parses");
    assert_eq!((s, t, i), (session, Token::ZERO, inner), "relay_packet: wiping changed more than the token");
}

/// Sources the relay-decide target's datagrams come from.
const RELAY_SOURCES: [&str; 4] = ["127.0.0.1:40000", "127.0.0.2:40001", "198.18.0.7:5000", "[2001:db8::7]:5000"];

fn relay_decide(data: &[u8]) {
    // The first byte sets the limits: whether private peers may latch, the packet rate.
    let Some((&setup, data)) = data.split_first() else { return };
    let limits = Limits {
        allow_private_peers: setup & 1 != 0,
        packets_per_second_max: [0, 1, 100, 100_000][usize::from(setup >> 1) % 4],
        ..Limits::default()
    };
    let table = SessionTable::new(limits);
    let mut now_ms = NOW_SECS * 1000;
    let Ok(grant) = table.allocate(now_ms) else { return };
    let mut cache = SessionCache::default();
    let mut seen: Vec<Peer> = Vec::new();
    for chunk in chunks(data) {
        // Each chunk: flags, a time step in ms (u16), the datagram.
        let Some(([flags, t0, t1], datagram)) = chunk.split_first_chunk::<3>() else { continue };
        now_ms += u64::from(u16::from_be_bytes([*t0, *t1]));
        let mut d = datagram.to_vec();
        if flags & 1 != 0 && d.len() >= packet::RELAY_HEADER_LEN {
            d[1..5].copy_from_slice(&grant.session.0.to_be_bytes());
        }
        let token = match (flags >> 1) & 3 {
            1 => Some(grant.token_a),
            2 => Some(grant.token_b),
            3 => Some(Token::ZERO),
            _ => None,
        };
        if let Some(t) = token
            && d.len() >= packet::RELAY_HEADER_LEN
        {
            d[5..packet::RELAY_HEADER_LEN].copy_from_slice(t.as_bytes());
        }
        let addr: SocketAddr = RELAY_SOURCES[usize::from(flags >> 3) % 4].parse().expect("valid");
        let from =
            if flags & 0x20 != 0 { Peer::Tcp { conn: u64::from((flags >> 3) & 3), addr } } else { Peer::Udp(addr) };
        if flags & 0x40 != 0 {
            let _ = table.release(grant.session);
            cache.sync(&table);
        }
        let decision = match (flags & 0x80 != 0, from) {
            (true, Peer::Udp(a)) => table.decide_cached(&mut cache, &d, a, now_ms, true),
            _ => table.decide_from(&d, from, now_ms),
        };
        if !seen.contains(&from) {
            seen.push(from);
        }
        if let Decision::Forward { to } | Decision::Hold { to, .. } = decision {
            assert!(seen.contains(&to), "relay_decide: forwarded to {to:?}, which never sent a datagram");
        }
    }
    let _ = table.accounting(grant.session);
}

fn media_packet(data: &[u8]) {
    let key = MediaKey(MEDIA_KEY);
    let mut rx = MediaReceiver::new(&CALL_ID, &key, Role::Callee);
    let _ = rx.open(data);
    if media::peek(data).is_some() {
        assert!(media::sequence(data).is_some(), "media: peek reads a packet whose sequence is unreadable");
    }
}

fn media_order(data: &[u8]) {
    // Each input byte delivers the sender's packet with that index (repeats included).
    let key = MediaKey(MEDIA_KEY);
    let mut tx = MediaSender::new(&CALL_ID, &key, Role::Caller);
    let mut rx = MediaReceiver::new(&CALL_ID, &key, Role::Callee);
    let data = &data[..data.len().min(512)];
    let Some(&last) = data.iter().max() else { return };
    let packets: Vec<Vec<u8>> =
        (0..=u32::from(last)).map(|i| tx.seal(media::Kind::Voice, i * 960, &[i as u8])).collect();
    let mut opened = HashSet::new();
    for &i in data {
        if let Ok(o) = rx.open(&packets[usize::from(i)]) {
            assert_eq!(o.seq, u64::from(i), "media_order: packet {i} opened with another sequence number");
            assert!(opened.insert(i), "media_order: packet {i} opened twice");
        }
    }
}

fn jitter(data: &[u8]) {
    // Records of 7 bytes: op (bit 0: push, else pop), the sender's timestamp (u32), the
    // milliseconds since the last record (u16). Frames are numbered as a host numbers
    // them: by timestamp, 960 samples (20 ms at 48 kHz) a frame.
    let Some((&delay, data)) = data.split_first() else { return };
    let mut jb = crate::call::jitter::JitterBuffer::new(u64::from(delay));
    let mut now_ms = NOW_SECS * 1000;
    for r in data.chunks_exact(7).take(4 * CHUNKS_MAX) {
        let ts = u32::from_be_bytes([r[1], r[2], r[3], r[4]]);
        now_ms += u64::from(u16::from_be_bytes([r[5], r[6]]));
        if r[0] & 1 != 0 {
            let _ = jb.push(u64::from(ts) / 960, ts, now_ms, vec![r[0]]);
        } else {
            let _ = jb.pop(now_ms);
        }
        assert!(jb.len() <= crate::call::jitter::FRAMES_HELD_MAX, "jitter: the buffer outgrew its bound");
    }
    let _ = (jb.jitter_ms(), jb.stats());
}

fn cluster_key() -> ClusterKey {
    ClusterKey::from_secret(&CLUSTER_SECRET)
}

/// The pair key the cluster targets' two members share, and their ids.
const CLUSTER_PAIR: [u8; 32] = [0x11; 32];
const CLUSTER_ME: [u8; 8] = [0xaa; 8];
const CLUSTER_PEER: [u8; 8] = [0xbb; 8];

/// What a super node does with a packet on its gossip socket: a hello opens under the
/// cluster key; a data packet's header is read, then it opens under the pair key of the
/// member it names, and its payload is handled by channel.
fn cluster_packet(key: &ClusterKey, packet: &[u8]) {
    if Channel::of(packet) == Some(Channel::Hello) {
        let _ = key.open_hello(packet);
        return;
    }
    if crate::cluster::gossip::Header::parse(packet).is_err() {
        return;
    }
    let mine = crate::cluster::gossip::PairKey::new(&CLUSTER_PAIR, CLUSTER_ME, CLUSTER_PEER);
    let Ok((header, payload)) = mine.open(packet) else { return };
    match header.channel {
        Channel::Index => {
            let _ = round_trip("index_rpc", &payload, IndexRpc::decode, IndexRpc::encode);
        }
        Channel::Gossip => {
            let _ = membership().handle_data(&payload);
        }
        Channel::Revocation => {
            if let Some(crate::cluster::revocation::Spread::List(l)) = round_trip(
                "revocation_spread",
                &payload,
                |b| crate::cluster::revocation::Spread::decode(b).ok_or(()),
                |m| m.encode(),
            ) {
                let _ = crate::crypto::RevocationList::decode(&l).map(|list| list.verify(trusted()));
            }
        }
        Channel::Hello => {}
    }
}

fn cluster_payload(data: &[u8]) {
    use crate::cluster::gossip::{Header, PairKey};
    let Some((&which, rest)) = data.split_first() else { return };
    let (counter, payload) = match rest.split_first_chunk::<8>() {
        Some((c, p)) => (u64::from_be_bytes(*c), p),
        None => (0, rest),
    };
    // 0xff (new, so earlier seeds keep their meaning): the revocation channel.
    let channel = match which {
        0xff => Channel::Revocation,
        w if w & 1 == 0 => Channel::Gossip,
        _ => Channel::Index,
    };
    let header = Header { channel, sender: CLUSTER_PEER, counter };
    let sealed = PairKey::new(&CLUSTER_PAIR, CLUSTER_PEER, CLUSTER_ME).seal(header, payload);
    let mine = PairKey::new(&CLUSTER_PAIR, CLUSTER_ME, CLUSTER_PEER);
    let opened = mine.open(&sealed).expect("a sealed cluster packet opens");
    assert_eq!(opened, (header, payload.to_vec()), "cluster_payload: opened something else");
    cluster_packet(&cluster_key(), &sealed);
}

/// The member the gossip targets speak to.
pub fn fuzz_member() -> Member {
    Member {
        gossip: "127.0.0.1:33100".parse().expect("valid"),
        bump: 1,
        node: Some([0xaa; 8]),
        name: "fuzz".into(),
        udp: Some("127.0.0.1:33033".parse().expect("valid")),
        tcp: None,
    }
}

fn membership() -> Membership {
    Membership::new(fuzz_member(), membership::config(32, Duration::from_secs(1)))
}

fn gossip(data: &[u8]) {
    use foca::Codec;
    let mut codec = foca::PostcardCodec;
    let mut m = membership();
    for chunk in chunks(data) {
        // foca's own decoding, as `handle_data` begins it: a header, then members.
        let mut buf = chunk;
        if let Ok(header) = Codec::<Member>::decode_header(&mut codec, &mut buf) {
            let mut out = Vec::new();
            codec.encode_header(&header, &mut out).expect("a header encodes");
            let again: foca::Header<Member> = codec.decode_header(&out[..]).expect("a re-encoded header decodes");
            assert_eq!(again, header, "gossip: the re-encoded header decodes differently");
            for _ in 0..CHUNKS_MAX {
                let Ok(member) = Codec::<Member>::decode_member(&mut codec, &mut buf) else { break };
                let mut out = Vec::new();
                codec.encode_member(&member, &mut out).expect("a member encodes");
                let again: foca::Member<Member> = codec.decode_member(&out[..]).expect("a re-encoded member decodes");
                assert_eq!(again, member, "gossip: the re-encoded member decodes differently");
            }
        }
        // The whole state machine, fed the chunks in turn; what it sends must decode.
        for o in m.handle_data(chunk) {
            if let Output::Send(_, bytes) = o {
                let h: Result<foca::Header<Member>, _> = codec.decode_header(&bytes[..]);
                assert!(h.is_ok(), "gossip: a packet membership sent does not decode");
            }
        }
    }
}

fn credential(data: &[u8]) {
    let Some(c) = round_trip("credential", data, Credential::decode, Credential::encode) else { return };
    for kind in [CredentialKind::Host, CredentialKind::SuperNode] {
        let _ = c.verify(trusted(), kind, NOW_SECS);
    }
}

fn entry(data: &[u8]) {
    let Some(e) = round_trip("entry", data, Entry::decode, Entry::encode) else { return };
    let _ = e.verify(trusted(), NOW_SECS * 1000);
    let _ = e.key();
}

fn notice(data: &[u8]) {
    let Some(n) = round_trip("notice", data, |b| Notice::decode(b).ok_or(()), Notice::encode) else { return };
    match n {
        Notice::Presence { entry: e } => entry(&e),
        Notice::ListChanged { .. } => {}
        Notice::Call { message } => call_message(&message),
        Notice::Chat { sealed } => chat(&sealed),
    }
}

/// A sealed chat message, opened as its recipient with the fixture user keys (`LIST_KEY`).
fn chat(data: &[u8]) {
    use crate::chat::message::{Inner, Sealed, open};
    let Some(s) = round_trip("chat", data, Sealed::decode, Sealed::encode) else { return };
    let keys = crate::crypto::user::UserKeys::derive(&ListKey(LIST_KEY));
    if let Ok(u) = open(&s, &s.to, &keys) {
        let _ = u.verify(&keys.public());
    }
    let _ = round_trip("chat inner", data, Inner::decode, |i| i.encode().expect("a decoded message encodes"));
}

/// The callee the invite targets answer as (seeds invite "bob").
pub const CALLEE: &str = "bob";

/// The callee's checks of an invite, up to unwrapping the media key (with a key made
/// once per process: no private key ships in the library, so that last step fails).
fn open_invite(invite: &Invite) {
    static KEY: OnceLock<PrivateKey> = OnceLock::new();
    let key = KEY.get_or_init(|| PrivateKey::generate(2048).expect("an RSA key"));
    let _ = invite.open(trusted(), CALLEE, key, NOW_SECS * 1000, 30_000);
}

fn call_message(data: &[u8]) {
    if let Some(CallMessage::Invite(i)) = round_trip("call_message", data, CallMessage::decode, CallMessage::encode) {
        open_invite(&i);
    }
}

fn buddy_record(data: &[u8]) {
    let _ = record::open(&ListKey(LIST_KEY), LIST_OWNER, data);
    let decode = |b: &[u8]| postcard::from_bytes::<Contact>(b);
    let encode = |c: &Contact| postcard::to_allocvec(c).expect("a contact encodes");
    let _ = round_trip("contact", data, decode, encode);
}

fn session(data: &[u8]) {
    let listener = listener();
    let secret = SessionSecret(SESSION_SECRET);
    let to_sn = secret.derive(label::INITIATOR_TO_RESPONDER);
    let from_sn = secret.derive(label::RESPONDER_TO_INITIATOR);
    let peer = SessionPeer {
        id: SESSION_ID,
        user: "alice".into(),
        peer: "198.18.5.5:40000".parse().expect("valid"),
        listener,
        transport: Transport::Udp,
    };
    let mut s = Session::new(peer, &secret, NOW_SECS, 60);
    for (i, chunk) in chunks(data).enumerate() {
        // Each chunk: kind, flags, sequence number (u64), body. Flag 1: the chunk after
        // the flags is a raw frame; flag 2: another session's id.
        let Some(([kind, flags], rest)) = chunk.split_first_chunk::<2>() else { continue };
        let id = if flags & 2 != 0 { SESSION_ID ^ 1 } else { SESSION_ID };
        let frame = match (flags & 1, MessageKind::from_code(*kind), rest.split_first_chunk::<8>()) {
            (0, Some(k), Some((seq, b))) if k.sealing_allowed(true) && b.len() + 16 <= PAYLOAD_LEN_MAX => {
                frame::encode_sealed(listener, k, id, u64::from_be_bytes(*seq), &to_sn, Direction::ToResponder, b)
            }
            _ => rest.to_vec(),
        };
        let Ok(raw) = frame::decode(listener, &frame) else { continue };
        let Ok(actions) = s.on_frame(&raw, NOW_SECS + i as u64) else { continue };
        for a in actions {
            if let Action::Send(kind, bytes) = a {
                // What the session sends, its host must be able to read.
                let raw = frame::decode(listener, &bytes).expect("a frame the session sent decodes");
                assert_eq!(raw.header.kind, kind, "session: sent a frame of another kind");
                let b = raw.open(&from_sn, Direction::ToInitiator).expect("a frame the session sent opens");
                body(kind, &b);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn selectors_are_stable_and_every_byte_selects_a_target() {
        for (i, t) in Target::ALL.iter().enumerate() {
            assert_eq!(usize::from(t.selector()), i);
            assert_eq!(Target::of(t.selector()), *t);
        }
        let names: HashSet<_> = Target::ALL.iter().map(|t| t.name()).collect();
        assert_eq!(names.len(), Target::ALL.len(), "target names are unique");
        for b in 0..=255u8 {
            decode_any(&[b]);
        }
    }

    #[test]
    fn chunks_read_what_chunked_wrote() {
        let parts: [&[u8]; 3] = [b"one", b"", b"three"];
        let joined = chunked(&parts);
        assert_eq!(chunks(&joined).collect::<Vec<_>>(), parts);
        // A length past the end takes what is there.
        assert_eq!(chunks(&[0, 9, 1, 2]).collect::<Vec<_>>(), [&[1u8, 2][..]]);
        assert_eq!(chunks(&[0]).count(), 0);
    }

    #[test]
    fn the_fixture_login_key_is_trusted() {
        assert!(trusted().get(trusted_id()).is_some());
    }

    fn trusted_id() -> crate::crypto::KeyId {
        let pem = include_str!("../tests/fixtures/keys/login-0.pub.pem");
        PublicKey::from_pem(pem).unwrap().id()
    }
}
