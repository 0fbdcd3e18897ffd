//! Message kinds and bodies. Each body has `encode` and a total `decode`.

use super::codec::{DecodeError, Reader, Writer};
use crate::crypto::credential::CREDENTIAL_LEN_MAX;
use crate::crypto::keys::PUBLIC_KEY_DER_MAX;
use crate::crypto::user::UserPublicKeys;
use std::net::SocketAddr;

/// Every message kind, with its code on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum MessageKind {
    /// Host → super node: open a session (plain, padded).
    Hello = 0x01,
    /// Super node → host: its credential and a stateless cookie (plain).
    Challenge = 0x02,
    /// Host → super node: wrapped session key, credential, proof of possession (plain envelope).
    Auth = 0x03,
    /// Super node → host: session established (sealed).
    Welcome = 0x04,
    /// Host → super node: still here (sealed).
    Keepalive = 0x05,
    /// Super node → host: keepalive answered, with the observed address (sealed).
    KeepaliveAck = 0x06,
    /// Either way: the session ends (sealed).
    Bye = 0x07,
    /// Either way: a request failed (plain before keys exist, sealed after).
    Error = 0x08,
    /// Super node → host: the request with this id failed (sealed; revision 2 only).
    RequestError = 0x09,
    /// Host → super node: what address do you see? (plain, padded, stateless)
    NatProbe = 0x10,
    /// Super node → host: the address seen (plain).
    NatProbeReply = 0x11,
    /// Host → login server: create an account (plain envelope).
    RegisterRequest = 0x20,
    /// Login server → host: account created (sealed).
    RegisterReply = 0x21,
    /// Host → login server: prove the password, get a credential (plain envelope).
    LoginRequest = 0x22,
    /// Login server → host: the credential (sealed).
    LoginReply = 0x23,
    /// Super node → login server: when was this user last seen? (plain)
    SeenQuery = 0x24,
    /// Login server → super node: the signed directory record (plain).
    SeenReply = 0x25,
    /// Host → login server: a signed buddy-list operation (plain envelope).
    BuddyRequest = 0x26,
    /// Login server → host: its answer (sealed).
    BuddyReply = 0x27,
    /// Login server → host: solve this puzzle and ask again (plain before the envelope is
    /// opened, sealed after).
    Puzzle = 0x28,
    /// Super node or host → login server: the current revocation list, if newer than mine? (plain)
    RevocationQuery = 0x29,
    /// Login server → super node or host: the signed revocation list, or nothing newer (plain).
    RevocationReply = 0x2a,
    /// Host → super node: store my signed index entry (sealed).
    Publish = 0x40,
    /// Super node → host: the entry was checked and sent to its replicas (sealed).
    PublishAck = 0x41,
    /// Host → super node: find a user in the Global Index (sealed).
    Find = 0x42,
    /// Super node → host: the lookup's result (sealed).
    FindReply = 0x43,
    /// Host → super node: search users by profile words (sealed).
    Search = 0x44,
    /// Super node → host: one search result, or an empty result set (sealed).
    SearchReply = 0x45,
    /// Host → super node: carry this notice to another user's host (sealed).
    Forward = 0x46,
    /// Super node → host: where the notice went (sealed).
    ForwardAck = 0x47,
    /// Super node → host: a notice from another host (sealed).
    Notice = 0x48,
    /// Host → super node: store my signed index entry, answer by id (sealed; revision 2).
    PublishReq = 0x49,
    /// Super node → host: what became of the PublishReq with this id (sealed; revision 2).
    PublishReply = 0x4a,
    /// Host → super node: open a relay session for a call (sealed).
    RelayAllocate = 0x50,
    /// Super node → host: the relay session, or why not (sealed).
    RelayGrant = 0x51,
    /// Host → super node: the call is over, free the relay session (sealed).
    RelayRelease = 0x52,
    /// Host → super node: how a call it placed went, for the operators' metrics (sealed).
    CallStats = 0x53,
    /// Host → super node: store this sealed message for its recipient (sealed; revision 2).
    MailSubmit = 0x60,
    /// Super node → host: what became of a MailSubmit (sealed).
    MailSubmitReply = 0x61,
    /// Host → super node: the messages stored for this device (sealed).
    MailFetch = 0x62,
    /// Super node → host: a page of stored messages (sealed).
    MailBatch = 0x63,
    /// Host → super node: this device has these messages, delete them for it (sealed).
    MailAck = 0x64,
    /// Super node → host: the acknowledgement reached the store (sealed).
    MailAckReply = 0x65,
}

impl MessageKind {
    /// Every kind, for tests and documentation.
    pub const ALL: [MessageKind; 43] = [
        Self::Hello,
        Self::Challenge,
        Self::Auth,
        Self::Welcome,
        Self::Keepalive,
        Self::KeepaliveAck,
        Self::Bye,
        Self::Error,
        Self::RequestError,
        Self::NatProbe,
        Self::NatProbeReply,
        Self::RegisterRequest,
        Self::RegisterReply,
        Self::LoginRequest,
        Self::LoginReply,
        Self::SeenQuery,
        Self::SeenReply,
        Self::BuddyRequest,
        Self::BuddyReply,
        Self::Puzzle,
        Self::RevocationQuery,
        Self::RevocationReply,
        Self::Publish,
        Self::PublishAck,
        Self::Find,
        Self::FindReply,
        Self::Search,
        Self::SearchReply,
        Self::Forward,
        Self::ForwardAck,
        Self::Notice,
        Self::PublishReq,
        Self::PublishReply,
        Self::RelayAllocate,
        Self::RelayGrant,
        Self::RelayRelease,
        Self::CallStats,
        Self::MailSubmit,
        Self::MailSubmitReply,
        Self::MailFetch,
        Self::MailBatch,
        Self::MailAck,
        Self::MailAckReply,
    ];

    /// The kind for a wire code.
    pub fn from_code(c: u8) -> Option<Self> {
        Self::ALL.iter().copied().find(|k| *k as u8 == c)
    }

    /// Whether a frame of this kind may (`sealed`) or may not be sealed.
    pub fn sealing_allowed(self, sealed: bool) -> bool {
        match self {
            Self::Hello | Self::Challenge | Self::Auth | Self::NatProbe | Self::NatProbeReply => !sealed,
            Self::RegisterRequest | Self::LoginRequest | Self::BuddyRequest => !sealed,
            Self::SeenQuery | Self::SeenReply => !sealed,
            Self::RevocationQuery | Self::RevocationReply => !sealed,
            Self::Welcome | Self::Keepalive | Self::KeepaliveAck | Self::Bye | Self::RequestError => sealed,
            Self::RegisterReply | Self::LoginReply | Self::BuddyReply => sealed,
            Self::Publish | Self::PublishAck | Self::Find | Self::FindReply => sealed,
            Self::Search | Self::SearchReply => sealed,
            Self::Forward | Self::ForwardAck | Self::Notice => sealed,
            Self::PublishReq | Self::PublishReply => sealed,
            Self::RelayAllocate | Self::RelayGrant | Self::RelayRelease | Self::CallStats => sealed,
            Self::MailSubmit | Self::MailSubmitReply | Self::MailFetch | Self::MailBatch => sealed,
            Self::MailAck | Self::MailAckReply => sealed,
            Self::Error | Self::Puzzle => true,
        }
    }

    /// A short, stable label for metrics.
    pub fn label(self) -> &'static str {
        match self {
            Self::Hello => "hello",
            Self::Challenge => "challenge",
            Self::Auth => "auth",
            Self::Welcome => "welcome",
            Self::Keepalive => "keepalive",
            Self::KeepaliveAck => "keepalive_ack",
            Self::Bye => "bye",
            Self::Error => "error",
            Self::RequestError => "request_error",
            Self::NatProbe => "nat_probe",
            Self::NatProbeReply => "nat_probe_reply",
            Self::RegisterRequest => "register_request",
            Self::RegisterReply => "register_reply",
            Self::LoginRequest => "login_request",
            Self::LoginReply => "login_reply",
            Self::SeenQuery => "seen_query",
            Self::SeenReply => "seen_reply",
            Self::BuddyRequest => "buddy_request",
            Self::BuddyReply => "buddy_reply",
            Self::Puzzle => "puzzle",
            Self::RevocationQuery => "revocation_query",
            Self::RevocationReply => "revocation_reply",
            Self::Publish => "publish",
            Self::PublishAck => "publish_ack",
            Self::Find => "find",
            Self::FindReply => "find_reply",
            Self::Search => "search",
            Self::SearchReply => "search_reply",
            Self::Forward => "forward",
            Self::ForwardAck => "forward_ack",
            Self::Notice => "notice",
            Self::PublishReq => "publish_req",
            Self::PublishReply => "publish_reply",
            Self::RelayAllocate => "relay_allocate",
            Self::RelayGrant => "relay_grant",
            Self::RelayRelease => "relay_release",
            Self::CallStats => "call_stats",
            Self::MailSubmit => "mail_submit",
            Self::MailSubmitReply => "mail_submit_reply",
            Self::MailFetch => "mail_fetch",
            Self::MailBatch => "mail_batch",
            Self::MailAck => "mail_ack",
            Self::MailAckReply => "mail_ack_reply",
        }
    }
}

/// Hello payloads are padded to at least this many bytes, and a super node answers a
/// Hello only if its Challenge is no larger: no amplification for spoofed sources. 1280
/// covers a Challenge with 4096-bit super-node and login keys, and keeps the Hello in
/// one datagram on common 1500-byte paths.
pub const HELLO_LEN_MIN: usize = 1280;
/// Minimum NatProbe payload: as long as the reply.
pub const NAT_PROBE_LEN_MIN: usize = 32;
/// Most super nodes listed in one Welcome.
pub const SUPERNODES_PER_WELCOME_MAX: usize = 24;
/// Longest super-node name in a Welcome (longer names are cut).
pub const SUPERNODE_NAME_LEN_MAX: usize = 64;
/// Longest version string.
pub const VERSION_LEN_MAX: usize = 32;
/// Longest username on the wire (the rules allow 32; decoding allows a little more so
/// the login server can answer "invalid username" rather than "malformed").
pub const USERNAME_WIRE_MAX: usize = 64;
/// Longest RSA ciphertext (4096-bit key).
pub const WRAPPED_KEY_LEN_MAX: usize = 512;
/// Length of the stateless cookie.
pub const COOKIE_LEN: usize = 32;

/// Error codes carried by [`ErrorMsg`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum ErrorCode {
    /// The request could not be decoded.
    Malformed,
    /// The server could not open the envelope (wrong key or corrupt).
    BadEnvelope,
    /// A request seen before.
    Replayed,
    /// The request's timestamp is outside the accepted window.
    ClockSkew,
    /// The username breaks the rules.
    InvalidUsername,
    /// The username is registered already.
    UsernameTaken,
    /// No such account.
    UnknownUser,
    /// The password does not match.
    WrongPassword,
    /// Too many failures: wait `retry_after_secs`.
    TooManyAttempts,
    /// The server failed; try again later.
    Internal,
    /// The credential was not issued by a trusted login server.
    UntrustedCredential,
    /// The credential has expired.
    CredentialExpired,
    /// The credential or the proof of possession did not verify.
    BadSignature,
    /// The cookie is stale or was not issued to this address.
    StaleCookie,
    /// The super node has no room for another host.
    Full,
    /// This endpoint does not handle that request (yet).
    Unsupported,
    /// No such pending request (a buddy answer to nobody's request).
    NotPending,
    /// The user is not online (a notice had nowhere to go).
    NotOnline,
    /// The credential is on the revocation list.
    Revoked,
    /// A message store's quota is full (the recipient's, the sender's or the node's).
    OverQuota,
    /// A code this build does not know.
    Unknown(u16),
}

impl ErrorCode {
    /// The code on the wire.
    pub fn code(self) -> u16 {
        match self {
            Self::Malformed => 1,
            Self::BadEnvelope => 2,
            Self::Replayed => 3,
            Self::ClockSkew => 4,
            Self::InvalidUsername => 10,
            Self::UsernameTaken => 12,
            Self::UnknownUser => 13,
            Self::WrongPassword => 14,
            Self::TooManyAttempts => 15,
            Self::Internal => 16,
            Self::UntrustedCredential => 20,
            Self::CredentialExpired => 21,
            Self::BadSignature => 22,
            Self::StaleCookie => 23,
            Self::Full => 24,
            Self::Unsupported => 25,
            Self::NotPending => 26,
            Self::NotOnline => 27,
            Self::Revoked => 28,
            Self::OverQuota => 29,
            Self::Unknown(c) => c,
        }
    }

    /// The code for a wire value.
    pub fn from_code(c: u16) -> Self {
        [
            Self::Malformed,
            Self::BadEnvelope,
            Self::Replayed,
            Self::ClockSkew,
            Self::InvalidUsername,
            Self::UsernameTaken,
            Self::UnknownUser,
            Self::WrongPassword,
            Self::TooManyAttempts,
            Self::Internal,
            Self::UntrustedCredential,
            Self::CredentialExpired,
            Self::BadSignature,
            Self::StaleCookie,
            Self::Full,
            Self::Unsupported,
            Self::NotPending,
            Self::NotOnline,
            Self::Revoked,
            Self::OverQuota,
        ]
        .into_iter()
        .find(|k| k.code() == c)
        .unwrap_or(Self::Unknown(c))
    }

    /// A short, stable label for metrics and JSON.
    pub fn label(self) -> &'static str {
        match self {
            Self::Malformed => "malformed",
            Self::BadEnvelope => "bad_envelope",
            Self::Replayed => "replayed",
            Self::ClockSkew => "clock_skew",
            Self::InvalidUsername => "invalid_username",
            Self::UsernameTaken => "username_taken",
            Self::UnknownUser => "unknown_user",
            Self::WrongPassword => "wrong_password",
            Self::TooManyAttempts => "too_many_attempts",
            Self::Internal => "internal",
            Self::UntrustedCredential => "untrusted_credential",
            Self::CredentialExpired => "credential_expired",
            Self::BadSignature => "bad_signature",
            Self::StaleCookie => "stale_cookie",
            Self::Full => "full",
            Self::Unsupported => "unsupported",
            Self::NotPending => "not_pending",
            Self::NotOnline => "not_online",
            Self::Revoked => "revoked",
            Self::OverQuota => "over_quota",
            Self::Unknown(_) => "unknown",
        }
    }
}

/// Hello: the host opens a session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hello {
    /// The host's software version.
    pub client_version: String,
    /// Echoed in the Challenge, so the host can match the answer to its request.
    pub host_nonce: [u8; 16],
}

impl Hello {
    /// Encodes, padded to [`HELLO_LEN_MIN`].
    pub fn encode(&self) -> Vec<u8> {
        let mut w = Writer::new();
        w.str(&self.client_version).raw(&self.host_nonce);
        let mut v = w.into_bytes();
        let pad = HELLO_LEN_MIN.saturating_sub(v.len() + 2);
        v.extend_from_slice(&(pad as u16).to_be_bytes());
        v.resize(v.len() + pad, 0);
        v
    }

    /// Decodes; refuses a Hello shorter than [`HELLO_LEN_MIN`].
    pub fn decode(b: &[u8]) -> Result<Self, DecodeError> {
        if b.len() < HELLO_LEN_MIN {
            return Err(DecodeError::Invalid("hello.padding"));
        }
        let mut r = Reader::new(b);
        let client_version = r.str("hello.client_version", VERSION_LEN_MAX)?.to_owned();
        let host_nonce = r.array("hello.host_nonce")?;
        r.bytes("hello.padding", crate::wire::frame::PAYLOAD_LEN_MAX)?;
        r.finish()?;
        Ok(Self { client_version, host_nonce })
    }
}

/// Challenge: the super node's credential and a cookie bound to the host's address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Challenge {
    /// The super node's credential (kind SuperNode).
    pub credential: Vec<u8>,
    /// Stateless cookie; returned in Auth.
    pub cookie: [u8; COOKIE_LEN],
    /// The Hello's nonce, echoed.
    pub host_nonce: [u8; 16],
    /// The host's address as the super node sees it.
    pub observed: SocketAddr,
}

impl Challenge {
    /// Encodes.
    pub fn encode(&self) -> Vec<u8> {
        let mut w = Writer::new();
        w.bytes(&self.credential).raw(&self.cookie).raw(&self.host_nonce).addr(self.observed);
        w.into_bytes()
    }

    /// Decodes.
    pub fn decode(b: &[u8]) -> Result<Self, DecodeError> {
        let mut r = Reader::new(b);
        let credential = r.bytes("challenge.credential", CREDENTIAL_LEN_MAX)?.to_vec();
        let cookie = r.array("challenge.cookie")?;
        let host_nonce = r.array("challenge.host_nonce")?;
        let observed = r.addr("challenge.observed")?;
        r.finish()?;
        Ok(Self { credential, cookie, host_nonce, observed })
    }
}

/// An RSA envelope: a session secret wrapped for the receiver, and a body sealed with it.
///
/// `wrapped` = RSA-OAEP-SHA256(K ‖ R) under the key named by `key_id`, where K is the
/// 32-byte session secret and R 32 random bytes (the request's replay nonce). `sealed` is
/// AES-256-GCM under the key derived from K with label "request", nonce all zero, and the
/// 8-byte key id plus the cookie (if any) as associated data.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Envelope {
    /// The receiver key the secret is wrapped under.
    pub key_id: [u8; 8],
    /// Super-node handshakes only: the cookie from the Challenge (zero for login requests).
    pub cookie: [u8; COOKIE_LEN],
    /// RSA-OAEP ciphertext.
    pub wrapped: Vec<u8>,
    /// AES-GCM ciphertext of the body.
    pub sealed: Vec<u8>,
}

impl Envelope {
    /// Encodes.
    pub fn encode(&self) -> Vec<u8> {
        let mut w = Writer::new();
        self.write(&mut w);
        w.into_bytes()
    }

    fn write(&self, w: &mut Writer) {
        w.raw(&self.key_id).raw(&self.cookie).bytes(&self.wrapped).bytes(&self.sealed);
    }

    fn read(r: &mut Reader) -> Result<Self, DecodeError> {
        let key_id = r.array("envelope.key_id")?;
        let cookie = r.array("envelope.cookie")?;
        let wrapped = r.bytes("envelope.wrapped", WRAPPED_KEY_LEN_MAX)?.to_vec();
        let sealed = r.bytes("envelope.sealed", crate::wire::frame::PAYLOAD_LEN_MAX)?.to_vec();
        Ok(Self { key_id, cookie, wrapped, sealed })
    }

    /// Decodes.
    pub fn decode(b: &[u8]) -> Result<Self, DecodeError> {
        let mut r = Reader::new(b);
        let env = Self::read(&mut r)?;
        r.finish()?;
        Ok(env)
    }

    /// The associated data the sealed body is bound to: the message kind it travels in
    /// (so a body sealed for one kind of request never opens as another), the key id and
    /// the cookie.
    pub fn aad(kind: MessageKind, key_id: &[u8; 8], cookie: &[u8; COOKIE_LEN]) -> Vec<u8> {
        let mut v = Vec::with_capacity(1 + 8 + COOKIE_LEN);
        v.push(kind as u8);
        v.extend_from_slice(key_id);
        v.extend_from_slice(cookie);
        v
    }
}

/// The sealed body of a super-node Auth.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuthBody {
    /// The host's credential (kind Host).
    pub credential: Vec<u8>,
    /// RSA-PSS by the credential's key over the session-auth transcript.
    pub signature: Vec<u8>,
}

impl AuthBody {
    /// Encodes.
    pub fn encode(&self) -> Vec<u8> {
        let mut w = Writer::new();
        w.bytes(&self.credential).bytes(&self.signature);
        w.into_bytes()
    }

    /// Decodes.
    pub fn decode(b: &[u8]) -> Result<Self, DecodeError> {
        let mut r = Reader::new(b);
        let credential = r.bytes("auth.credential", CREDENTIAL_LEN_MAX)?.to_vec();
        let signature = r.bytes("auth.signature", WRAPPED_KEY_LEN_MAX)?.to_vec();
        r.finish()?;
        Ok(Self { credential, signature })
    }
}

/// One super node in a Welcome's list.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SupernodeInfo {
    /// Its name.
    pub name: String,
    /// Its UDP endpoint.
    pub udp: Option<SocketAddr>,
    /// Its TCP endpoint.
    pub tcp: Option<SocketAddr>,
}

/// Welcome: the session is up.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Welcome {
    /// The host's address as the super node sees it.
    pub observed: SocketAddr,
    /// How often the host should send a keepalive.
    pub keepalive_secs: u16,
    /// Silence after which the super node drops the session.
    pub idle_timeout_secs: u16,
    /// A second UDP port of this super node that answers NatProbe (RFC 5780's "alternate port").
    pub probe_addr: Option<SocketAddr>,
    /// Other super nodes, for the host cache.
    pub supernodes: Vec<SupernodeInfo>,
}

impl Welcome {
    /// Encodes (at most [`SUPERNODES_PER_WELCOME_MAX`] super nodes are sent).
    pub fn encode(&self) -> Vec<u8> {
        let mut w = Writer::new();
        w.addr(self.observed).u16(self.keepalive_secs).u16(self.idle_timeout_secs).opt_addr(self.probe_addr);
        let n = self.supernodes.len().min(SUPERNODES_PER_WELCOME_MAX);
        w.u8(n as u8);
        for s in &self.supernodes[..n] {
            w.str(truncate(&s.name, SUPERNODE_NAME_LEN_MAX)).opt_addr(s.udp).opt_addr(s.tcp);
        }
        w.into_bytes()
    }

    /// Decodes.
    pub fn decode(b: &[u8]) -> Result<Self, DecodeError> {
        let mut r = Reader::new(b);
        let observed = r.addr("welcome.observed")?;
        let keepalive_secs = r.u16("welcome.keepalive_secs")?;
        let idle_timeout_secs = r.u16("welcome.idle_timeout_secs")?;
        let probe_addr = r.opt_addr("welcome.probe_addr")?;
        let n = r.u8("welcome.supernodes")? as usize;
        if n > SUPERNODES_PER_WELCOME_MAX {
            return Err(DecodeError::TooLong { field: "welcome.supernodes", len: n, max: SUPERNODES_PER_WELCOME_MAX });
        }
        let mut supernodes = Vec::with_capacity(n);
        for _ in 0..n {
            let name = r.str("welcome.supernode.name", SUPERNODE_NAME_LEN_MAX)?.to_owned();
            let udp = r.opt_addr("welcome.supernode.udp")?;
            let tcp = r.opt_addr("welcome.supernode.tcp")?;
            supernodes.push(SupernodeInfo { name, udp, tcp });
        }
        r.finish()?;
        Ok(Self { observed, keepalive_secs, idle_timeout_secs, probe_addr, supernodes })
    }
}

/// `s` cut to at most `max` bytes at a character boundary.
fn truncate(s: &str, max: usize) -> &str {
    let mut end = s.len().min(max);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

/// KeepaliveAck and NatProbeReply body: an observed address (NatProbeReply adds the probe id).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Observed {
    /// Echo of the request's id (0 for keepalives).
    pub id: u64,
    /// The address the request came from, as seen by the answering socket.
    pub addr: SocketAddr,
}

impl Observed {
    /// Encodes.
    pub fn encode(&self) -> Vec<u8> {
        let mut w = Writer::new();
        w.u64(self.id).addr(self.addr);
        w.into_bytes()
    }

    /// Decodes.
    pub fn decode(b: &[u8]) -> Result<Self, DecodeError> {
        let mut r = Reader::new(b);
        let id = r.u64("observed.id")?;
        let addr = r.addr("observed.addr")?;
        r.finish()?;
        Ok(Self { id, addr })
    }
}

/// Revision of the message layer a peer speaks. The frame version stays 1; the revision
/// is learnt from the keepalive echo (see [`Keepalive`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Revision {
    /// Answers without request ids: a sealed Error, PublishAck.
    One = 1,
    /// Keepalive ids, RequestError, PublishReq and PublishReply.
    Two = 2,
}

/// Keepalive body: empty (revision 1), or a non-zero id that a revision-2 super node
/// echoes in the KeepaliveAck's [`Observed::id`]. A revision-1 super node ignores the body
/// and echoes 0, so one round trip tells the host which revision it talks to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Keepalive {
    /// 0: no id (the empty body); otherwise the id to echo.
    pub id: u64,
}

impl Keepalive {
    /// Encodes: empty for id 0, else the id.
    pub fn encode(&self) -> Vec<u8> {
        if self.id == 0 { Vec::new() } else { self.id.to_be_bytes().to_vec() }
    }

    /// Decodes 0 or 8 bytes. Eight zero bytes are refused: an echoed 0 already means "no
    /// id", so a zero id could not tell the revisions apart.
    pub fn decode(b: &[u8]) -> Result<Self, DecodeError> {
        if b.is_empty() {
            return Ok(Self { id: 0 });
        }
        let mut r = Reader::new(b);
        let id = r.u64("keepalive.id")?;
        r.finish()?;
        if id == 0 {
            return Err(DecodeError::Invalid("keepalive.id"));
        }
        Ok(Self { id })
    }

    /// The revision a keepalive like this one announces.
    pub fn revision(&self) -> Revision {
        if self.id == 0 { Revision::One } else { Revision::Two }
    }
}

/// NatProbe: stateless "what address do you see?", padded to [`NAT_PROBE_LEN_MIN`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NatProbe {
    /// Matches the reply to the request.
    pub id: u64,
}

impl NatProbe {
    /// Encodes, padded.
    pub fn encode(&self) -> Vec<u8> {
        let mut v = self.id.to_be_bytes().to_vec();
        v.resize(NAT_PROBE_LEN_MIN, 0);
        v
    }

    /// Decodes; refuses an unpadded probe.
    pub fn decode(b: &[u8]) -> Result<Self, DecodeError> {
        if b.len() < NAT_PROBE_LEN_MIN {
            return Err(DecodeError::Invalid("nat_probe.padding"));
        }
        if b.len() > 256 {
            return Err(DecodeError::TooLong { field: "nat_probe", len: b.len(), max: 256 });
        }
        let mut r = Reader::new(b);
        Ok(Self { id: r.u64("nat_probe.id")? })
    }
}

/// Bye: the session ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Bye {
    /// Why (0: normal log-out; otherwise an [`ErrorCode`]).
    pub reason: u16,
}

impl Bye {
    /// Encodes.
    pub fn encode(&self) -> Vec<u8> {
        self.reason.to_be_bytes().to_vec()
    }

    /// Decodes.
    pub fn decode(b: &[u8]) -> Result<Self, DecodeError> {
        let mut r = Reader::new(b);
        let reason = r.u16("bye.reason")?;
        r.finish()?;
        Ok(Self { reason })
    }
}

/// Error: a request failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ErrorMsg {
    /// What failed.
    pub code: ErrorCode,
    /// When the client may try again (0: not applicable).
    pub retry_after_secs: u32,
    /// Human-readable detail.
    pub detail: String,
}

impl ErrorMsg {
    /// An error with no retry hint.
    pub fn new(code: ErrorCode, detail: impl Into<String>) -> Self {
        Self { code, retry_after_secs: 0, detail: detail.into() }
    }

    /// Encodes.
    pub fn encode(&self) -> Vec<u8> {
        let mut w = Writer::new();
        w.u16(self.code.code()).u32(self.retry_after_secs).str(&self.detail);
        w.into_bytes()
    }

    /// Decodes.
    pub fn decode(b: &[u8]) -> Result<Self, DecodeError> {
        let mut r = Reader::new(b);
        let code = ErrorCode::from_code(r.u16("error.code")?);
        let retry_after_secs = r.u32("error.retry_after_secs")?;
        let detail = r.str("error.detail", 255)?.to_owned();
        r.finish()?;
        Ok(Self { code, retry_after_secs, detail })
    }
}

/// RequestError: the request with id `req` failed (revision 2). `req` is 0 when the
/// request did not decode far enough to have one, or its kind is not handled.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestError {
    /// The failed request's id.
    pub req: u32,
    /// What failed, as an [`ErrorMsg`] says it.
    pub error: ErrorMsg,
}

impl RequestError {
    /// Encodes.
    pub fn encode(&self) -> Vec<u8> {
        let mut w = Writer::new();
        w.u32(self.req).u16(self.error.code.code()).u32(self.error.retry_after_secs).str(&self.error.detail);
        w.into_bytes()
    }

    /// Decodes.
    pub fn decode(b: &[u8]) -> Result<Self, DecodeError> {
        let mut r = Reader::new(b);
        let req = r.u32("request_error.req")?;
        let code = ErrorCode::from_code(r.u16("request_error.code")?);
        let retry_after_secs = r.u32("request_error.retry_after_secs")?;
        let detail = r.str("request_error.detail", 255)?.to_owned();
        r.finish()?;
        Ok(Self { req, error: ErrorMsg { code, retry_after_secs, detail } })
    }
}

/// A client puzzle from the login server (the `Puzzle` message): find a counter that
/// gives the work hash `bits` leading zero bits (see `login::puzzle`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PuzzleChallenge {
    /// Unix seconds when the server issued it.
    pub issued_at: u64,
    /// Leading zero bits the work hash needs.
    pub bits: u8,
    /// The server's MAC over the other fields and the client's source.
    pub salt: [u8; 16],
}

/// Bytes of an encoded [`PuzzleChallenge`].
pub const PUZZLE_CHALLENGE_LEN: usize = 8 + 1 + 16;

impl PuzzleChallenge {
    fn write(&self, w: &mut Writer) {
        w.u64(self.issued_at).u8(self.bits).raw(&self.salt);
    }

    fn read(r: &mut Reader) -> Result<Self, DecodeError> {
        Ok(Self { issued_at: r.u64("puzzle.issued_at")?, bits: r.u8("puzzle.bits")?, salt: r.array("puzzle.salt")? })
    }

    /// Encodes.
    pub fn encode(&self) -> Vec<u8> {
        let mut w = Writer::new();
        self.write(&mut w);
        w.into_bytes()
    }

    /// Decodes.
    pub fn decode(b: &[u8]) -> Result<Self, DecodeError> {
        let mut r = Reader::new(b);
        let c = Self::read(&mut r)?;
        r.finish()?;
        Ok(c)
    }
}

/// A solved puzzle: the challenge as issued and the counter that solves it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PuzzleSolution {
    /// The challenge.
    pub challenge: PuzzleChallenge,
    /// The counter.
    pub counter: u64,
}

/// The payload of a RegisterRequest, LoginRequest or BuddyRequest: the envelope, then,
/// when the server asked for one, a solved puzzle bound to this envelope's wrapped key.
/// Without a solution the payload is the bare envelope, as before puzzles existed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EnvelopedRequest {
    /// The RSA envelope.
    pub envelope: Envelope,
    /// The solved puzzle, if any.
    pub solution: Option<PuzzleSolution>,
}

/// Marks a puzzle solution after the envelope.
const SOLUTION_TAG: u8 = 1;

impl EnvelopedRequest {
    /// Encodes.
    pub fn encode(&self) -> Vec<u8> {
        let mut w = Writer::new();
        self.envelope.write(&mut w);
        if let Some(s) = &self.solution {
            w.u8(SOLUTION_TAG);
            s.challenge.write(&mut w);
            w.u64(s.counter);
        }
        w.into_bytes()
    }

    /// Decodes.
    pub fn decode(b: &[u8]) -> Result<Self, DecodeError> {
        let mut r = Reader::new(b);
        let envelope = Envelope::read(&mut r)?;
        let solution = if r.remaining() == 0 {
            None
        } else {
            if r.u8("request.solution_tag")? != SOLUTION_TAG {
                return Err(DecodeError::Invalid("request.solution_tag"));
            }
            let challenge = PuzzleChallenge::read(&mut r)?;
            Some(PuzzleSolution { challenge, counter: r.u64("request.solution_counter")? })
        };
        r.finish()?;
        Ok(Self { envelope, solution })
    }
}

/// The sealed body of a RegisterRequest or LoginRequest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AccountBody {
    /// The username as typed.
    pub username: String,
    /// argon2id(password, salt(username)).
    pub shared_secret: [u8; 32],
    /// Unix seconds at the client, checked against the server's replay window.
    pub timestamp: u64,
    /// The host's software version.
    pub client_version: String,
    /// Login only: the host public key to certify (empty for Register).
    pub host_public_key: Vec<u8>,
    /// Login only: the super node the host used last (for the recently-seen directory).
    pub last_supernode: String,
    /// Login only: RSA-PSS by the host key over [`AccountBody::possession_message`]: proof
    /// that the host holds the key it asks the server to certify.
    pub possession: Vec<u8>,
    /// The user's public keys, for the directory to serve to those who never had them
    /// (absent on the wire when None: a body from an older host still decodes).
    pub user_keys: Option<UserPublicKeys>,
}

/// Domain prefix of the proof of key possession in a LoginRequest.
pub const DOMAIN_POSSESSION: &[u8] = b"confab/v1/key-possession\0";

impl AccountBody {
    /// What the proof of possession signs: the domain, the envelope's wrapped key (this one
    /// request, so the proof cannot be lifted into another), the username, the time and the
    /// key to certify.
    pub fn possession_message(&self, wrapped: &[u8]) -> Vec<u8> {
        let mut w = Writer::new();
        w.raw(DOMAIN_POSSESSION).bytes(wrapped).str(&self.username).u64(self.timestamp).bytes(&self.host_public_key);
        w.into_bytes()
    }

    /// Encodes.
    pub fn encode(&self) -> Vec<u8> {
        let mut w = Writer::new();
        w.str(&self.username)
            .raw(&self.shared_secret)
            .u64(self.timestamp)
            .str(&self.client_version)
            .bytes(&self.host_public_key)
            .str(&self.last_supernode)
            .bytes(&self.possession);
        if let Some(k) = &self.user_keys {
            w.raw(&k.to_bytes());
        }
        w.into_bytes()
    }

    /// Decodes.
    pub fn decode(b: &[u8]) -> Result<Self, DecodeError> {
        let mut r = Reader::new(b);
        let username = r.str("account.username", USERNAME_WIRE_MAX)?.to_owned();
        let shared_secret = r.array("account.shared_secret")?;
        let timestamp = r.u64("account.timestamp")?;
        let client_version = r.str("account.client_version", VERSION_LEN_MAX)?.to_owned();
        let host_public_key = r.bytes("account.host_public_key", PUBLIC_KEY_DER_MAX)?.to_vec();
        let last_supernode = r.str("account.last_supernode", 64)?.to_owned();
        let possession = r.bytes("account.possession", WRAPPED_KEY_LEN_MAX)?.to_vec();
        let user_keys = trailing_keys(&mut r, "account.user_keys")?;
        r.finish()?;
        Ok(Self {
            username,
            shared_secret,
            timestamp,
            client_version,
            host_public_key,
            last_supernode,
            possession,
            user_keys,
        })
    }
}

/// LoginReply: the credential, the latest software version and the revocation list.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoginReply {
    /// The host's new credential.
    pub credential: Vec<u8>,
    /// The newest released version, for the "update available" notice.
    pub latest_version: String,
    /// The login server's signed revocation list (empty: none); absent on the wire when empty.
    pub revocations: Vec<u8>,
}

impl LoginReply {
    /// Encodes.
    pub fn encode(&self) -> Vec<u8> {
        let mut w = Writer::new();
        w.bytes(&self.credential).str(&self.latest_version);
        if !self.revocations.is_empty() {
            w.bytes(&self.revocations);
        }
        w.into_bytes()
    }

    /// Decodes.
    pub fn decode(b: &[u8]) -> Result<Self, DecodeError> {
        let mut r = Reader::new(b);
        let credential = r.bytes("login_reply.credential", CREDENTIAL_LEN_MAX)?.to_vec();
        let latest_version = r.str("login_reply.latest_version", VERSION_LEN_MAX)?.to_owned();
        let revocations = if r.remaining() == 0 {
            Vec::new()
        } else {
            r.bytes("login_reply.revocations", crate::crypto::revocation::LIST_LEN_MAX)?.to_vec()
        };
        r.finish()?;
        Ok(Self { credential, latest_version, revocations })
    }
}

/// PublishAck: what became of a Publish.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PublishAck {
    /// 0: accepted; otherwise the [`ErrorCode`] of the refusal.
    pub code: u16,
    /// How many replicas the entry was sent to.
    pub replicas: u8,
    /// Why, when refused.
    pub detail: String,
}

impl PublishAck {
    /// Encodes.
    pub fn encode(&self) -> Vec<u8> {
        let mut w = Writer::new();
        w.u16(self.code).u8(self.replicas).str(&self.detail);
        w.into_bytes()
    }

    /// Decodes.
    pub fn decode(b: &[u8]) -> Result<Self, DecodeError> {
        let mut r = Reader::new(b);
        let code = r.u16("publish_ack.code")?;
        let replicas = r.u8("publish_ack.replicas")?;
        let detail = r.str("publish_ack.detail", 255)?.to_owned();
        r.finish()?;
        Ok(Self { code, replicas, detail })
    }
}

/// PublishReq: a Publish with an id (revision 2).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PublishReq {
    /// Matches the PublishReply.
    pub req: u32,
    /// The signed index entry, as a Publish carries it.
    pub entry: Vec<u8>,
}

impl PublishReq {
    /// Encodes.
    pub fn encode(&self) -> Vec<u8> {
        let mut w = Writer::new();
        w.u32(self.req).bytes(&self.entry);
        w.into_bytes()
    }

    /// Decodes (the entry is checked by whoever stores it).
    pub fn decode(b: &[u8]) -> Result<Self, DecodeError> {
        let mut r = Reader::new(b);
        let req = r.u32("publish_req.req")?;
        let entry = r.bytes("publish_req.entry", crate::index::entry::ENTRY_LEN_MAX)?.to_vec();
        r.finish()?;
        Ok(Self { req, entry })
    }
}

/// PublishReply: a PublishAck with the PublishReq's id (revision 2).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PublishReply {
    /// The PublishReq's id.
    pub req: u32,
    /// The outcome, as a PublishAck says it.
    pub ack: PublishAck,
}

impl PublishReply {
    /// Encodes.
    pub fn encode(&self) -> Vec<u8> {
        let mut w = Writer::new();
        w.u32(self.req).u16(self.ack.code).u8(self.ack.replicas).str(&self.ack.detail);
        w.into_bytes()
    }

    /// Decodes.
    pub fn decode(b: &[u8]) -> Result<Self, DecodeError> {
        let mut r = Reader::new(b);
        let req = r.u32("publish_reply.req")?;
        let code = r.u16("publish_reply.code")?;
        let replicas = r.u8("publish_reply.replicas")?;
        let detail = r.str("publish_reply.detail", 255)?.to_owned();
        r.finish()?;
        Ok(Self { req, ack: PublishAck { code, replicas, detail } })
    }
}

/// Find: look a user up.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Find {
    /// Matches the reply.
    pub req: u32,
    /// The username.
    pub user: String,
}

impl Find {
    /// Encodes.
    pub fn encode(&self) -> Vec<u8> {
        let mut w = Writer::new();
        w.u32(self.req).str(&self.user);
        w.into_bytes()
    }

    /// Decodes.
    pub fn decode(b: &[u8]) -> Result<Self, DecodeError> {
        let mut r = Reader::new(b);
        let req = r.u32("find.req")?;
        let user = r.str("find.user", USERNAME_WIRE_MAX)?.to_owned();
        r.finish()?;
        Ok(Self { req, user })
    }
}

/// FindReply: the entry found (if any) and how far the lookup went.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FindReply {
    /// The Find's id.
    pub req: u32,
    /// The signed entry (empty: not found in the index).
    pub entry: Vec<u8>,
    /// Super nodes asked.
    pub asked: u16,
    /// The lookup stage that ended it (a label).
    pub stage: String,
    /// When the index had nothing: the login server's signed directory record (or empty).
    pub directory: Vec<u8>,
}

impl FindReply {
    /// Encodes.
    pub fn encode(&self) -> Vec<u8> {
        let mut w = Writer::new();
        w.u32(self.req).bytes(&self.entry).u16(self.asked).str(&self.stage).bytes(&self.directory);
        w.into_bytes()
    }

    /// Decodes.
    pub fn decode(b: &[u8]) -> Result<Self, DecodeError> {
        let mut r = Reader::new(b);
        let req = r.u32("find_reply.req")?;
        let entry = r.bytes("find_reply.entry", crate::index::entry::ENTRY_LEN_MAX)?.to_vec();
        let asked = r.u16("find_reply.asked")?;
        let stage = r.str("find_reply.stage", 32)?.to_owned();
        let directory = r.bytes("find_reply.directory", SEEN_RECORD_LEN_MAX)?.to_vec();
        r.finish()?;
        Ok(Self { req, entry, asked, stage, directory })
    }
}

/// Largest encoded directory record: 669 bytes with a 64-byte name, a 64-byte super node
/// and a 4096-bit key's signature, and 64 more for the user's keys.
pub const SEEN_RECORD_LEN_MAX: usize = 768;
/// Domain prefix of a directory record's signature.
pub const DOMAIN_SEEN: &[u8] = b"confab/v1/seen\0";

/// The login server's recently-seen directory record of one user, signed with its login
/// key so that a super node can pass it on and a host can trust it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SeenRecord {
    /// The canonical username asked for.
    pub user: String,
    /// Whether the user ever logged in (false: no such user, or never seen).
    pub found: bool,
    /// Unix seconds of the last login.
    pub last_seen: u64,
    /// The super node the host reported using.
    pub supernode: String,
    /// Unix seconds when the record was signed.
    pub issued_at: u64,
    /// The signing login key.
    pub key_id: [u8; 8],
    /// RSA-PSS over DOMAIN_SEEN ‖ the fields above ‖ the user's keys (when present).
    pub signature: Vec<u8>,
    /// The user's public keys as last given at registration or login, for any registered
    /// user (whatever `found` says); after the signature on the wire, absent when None.
    pub user_keys: Option<UserPublicKeys>,
}

/// Why a directory record passed on by a super node was not believed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SeenRecordError {
    /// It does not decode.
    #[error("malformed directory record: {0}")]
    Malformed(#[from] DecodeError),
    /// No trusted login key signed it, or it is about another user.
    #[error("the directory record does not verify")]
    Unverified,
}

impl SeenRecord {
    fn body(&self, w: &mut Writer) {
        w.str(&self.user)
            .u8(self.found as u8)
            .u64(self.last_seen)
            .str(&self.supernode)
            .u64(self.issued_at)
            .raw(&self.key_id);
    }

    /// The message the signature covers.
    pub fn signed_message(&self) -> Vec<u8> {
        let mut w = Writer::new();
        w.raw(DOMAIN_SEEN);
        self.body(&mut w);
        // Without keys the message is the one records had before keys existed.
        if let Some(k) = &self.user_keys {
            w.raw(&k.to_bytes());
        }
        w.into_bytes()
    }

    /// Encodes.
    pub fn encode(&self) -> Vec<u8> {
        let mut w = Writer::new();
        self.body(&mut w);
        w.bytes(&self.signature);
        if let Some(k) = &self.user_keys {
            w.raw(&k.to_bytes());
        }
        w.into_bytes()
    }

    /// Decodes (without verifying).
    pub fn decode(b: &[u8]) -> Result<Self, DecodeError> {
        let mut r = Reader::new(b);
        let user = r.str("seen.user", USERNAME_WIRE_MAX)?.to_owned();
        let found = r.u8("seen.found")? != 0;
        let last_seen = r.u64("seen.last_seen")?;
        let supernode = r.str("seen.supernode", 64)?.to_owned();
        let issued_at = r.u64("seen.issued_at")?;
        let key_id = r.array("seen.key_id")?;
        let signature = r.bytes("seen.signature", WRAPPED_KEY_LEN_MAX)?.to_vec();
        let user_keys = trailing_keys(&mut r, "seen.user_keys")?;
        r.finish()?;
        Ok(Self { user, found, last_seen, supernode, issued_at, key_id, signature, user_keys })
    }

    /// Checks the signature against the trusted login keys.
    pub fn verify(&self, trusted: &crate::crypto::TrustedKeys) -> bool {
        trusted
            .get(crate::crypto::KeyId(self.key_id))
            .is_some_and(|k| k.verify_pss(&self.signed_message(), &self.signature).is_ok())
    }

    /// Decodes a record and believes it only if a trusted login key signed it and it is
    /// about `user` (a super node could pass on another user's record, or make one up).
    pub fn decode_verified(
        b: &[u8],
        user: &str,
        trusted: &crate::crypto::TrustedKeys,
    ) -> Result<Self, SeenRecordError> {
        let rec = Self::decode(b)?;
        if rec.user != user.to_ascii_lowercase() || !rec.verify(trusted) {
            return Err(SeenRecordError::Unverified);
        }
        Ok(rec)
    }
}

/// An optional trailing [`UserPublicKeys`]: nothing left means None (an older sender), and
/// anything but exactly 64 bytes is refused.
fn trailing_keys(r: &mut Reader<'_>, field: &'static str) -> Result<Option<UserPublicKeys>, DecodeError> {
    if r.remaining() == 0 {
        return Ok(None);
    }
    Ok(Some(UserPublicKeys::from_bytes(&r.array(field)?)))
}

/// Domain prefix of a directory query's signature.
pub const DOMAIN_SEEN_QUERY: &[u8] = b"confab/v1/seen-query\0";

/// A super node's directory query (the `SeenQuery` message): signed with the super node's
/// key under its login-signed credential, so the directory answers only super nodes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SeenQuery {
    /// The username asked about.
    pub user: String,
    /// Unix seconds at the super node (checked against the login server's window).
    pub timestamp: u64,
    /// The super node's credential (kind SuperNode).
    pub credential: Vec<u8>,
    /// RSA-PSS by the credential's key over [`SeenQuery::signed_message`].
    pub signature: Vec<u8>,
}

impl SeenQuery {
    /// What the signature covers: the domain, the login server's address (a query for one
    /// server is no good at another), the user and the time.
    pub fn signed_message(&self, login_server: std::net::SocketAddr) -> Vec<u8> {
        let mut w = Writer::new();
        w.raw(DOMAIN_SEEN_QUERY).addr(login_server).str(&self.user).u64(self.timestamp);
        w.into_bytes()
    }

    /// Encodes.
    pub fn encode(&self) -> Vec<u8> {
        let mut w = Writer::new();
        w.str(&self.user).u64(self.timestamp).bytes(&self.credential).bytes(&self.signature);
        w.into_bytes()
    }

    /// Decodes (without verifying).
    pub fn decode(b: &[u8]) -> Result<Self, DecodeError> {
        let mut r = Reader::new(b);
        let user = r.str("seen_query.user", USERNAME_WIRE_MAX)?.to_owned();
        let timestamp = r.u64("seen_query.timestamp")?;
        let credential = r.bytes("seen_query.credential", CREDENTIAL_LEN_MAX)?.to_vec();
        let signature = r.bytes("seen_query.signature", WRAPPED_KEY_LEN_MAX)?.to_vec();
        r.finish()?;
        Ok(Self { user, timestamp, credential, signature })
    }
}

/// Domain prefix of a revocation query's signature.
pub const DOMAIN_REVOCATION_QUERY: &[u8] = b"confab/v1/revocation-query\0";

/// A request for the login server's revocation list (the `RevocationQuery` message),
/// signed like a [`SeenQuery`] by a super node's (or a host's) credential key, so the
/// login server answers only nodes it certified, never a stranger.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RevocationQuery {
    /// The version the asker holds (0: none): an answer carries a list only if newer.
    pub have: u64,
    /// Unix seconds at the asker (checked against the login server's window).
    pub timestamp: u64,
    /// The asker's credential.
    pub credential: Vec<u8>,
    /// RSA-PSS by the credential's key over [`RevocationQuery::signed_message`].
    pub signature: Vec<u8>,
}

impl RevocationQuery {
    /// What the signature covers: the domain, the login server's address, the version held
    /// and the time.
    pub fn signed_message(&self, login_server: std::net::SocketAddr) -> Vec<u8> {
        let mut w = Writer::new();
        w.raw(DOMAIN_REVOCATION_QUERY).addr(login_server).u64(self.have).u64(self.timestamp);
        w.into_bytes()
    }

    /// Encodes.
    pub fn encode(&self) -> Vec<u8> {
        let mut w = Writer::new();
        w.u64(self.have).u64(self.timestamp).bytes(&self.credential).bytes(&self.signature);
        w.into_bytes()
    }

    /// Decodes (without verifying).
    pub fn decode(b: &[u8]) -> Result<Self, DecodeError> {
        let mut r = Reader::new(b);
        let have = r.u64("revocation_query.have")?;
        let timestamp = r.u64("revocation_query.timestamp")?;
        let credential = r.bytes("revocation_query.credential", CREDENTIAL_LEN_MAX)?.to_vec();
        let signature = r.bytes("revocation_query.signature", WRAPPED_KEY_LEN_MAX)?.to_vec();
        r.finish()?;
        Ok(Self { have, timestamp, credential, signature })
    }
}

/// Most results of one search.
pub const SEARCH_RESULTS_MAX: u8 = 20;

/// Search: users whose profile has every word.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Search {
    /// Matches the replies.
    pub req: u32,
    /// The words, as typed.
    pub words: String,
    /// Most results wanted (at most [`SEARCH_RESULTS_MAX`]).
    pub limit: u8,
}

impl Search {
    /// Encodes.
    pub fn encode(&self) -> Vec<u8> {
        let mut w = Writer::new();
        w.u32(self.req).str(&self.words).u8(self.limit);
        w.into_bytes()
    }

    /// Decodes.
    pub fn decode(b: &[u8]) -> Result<Self, DecodeError> {
        let mut r = Reader::new(b);
        let req = r.u32("search.req")?;
        let words = r.str("search.words", 128)?.to_owned();
        let limit = r.u8("search.limit")?.min(SEARCH_RESULTS_MAX);
        r.finish()?;
        Ok(Self { req, words, limit })
    }
}

/// SearchReply: result `index` of `total` (one entry per frame, so results of any size
/// fit); `total` 0 with no entry means nothing matched.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SearchReply {
    /// The Search's id.
    pub req: u32,
    /// How many results there are.
    pub total: u8,
    /// Which one this is (0-based).
    pub index: u8,
    /// The signed entry.
    pub entry: Vec<u8>,
}

impl SearchReply {
    /// Encodes.
    pub fn encode(&self) -> Vec<u8> {
        let mut w = Writer::new();
        w.u32(self.req).u8(self.total).u8(self.index).bytes(&self.entry);
        w.into_bytes()
    }

    /// Decodes.
    pub fn decode(b: &[u8]) -> Result<Self, DecodeError> {
        let mut r = Reader::new(b);
        let req = r.u32("search_reply.req")?;
        let total = r.u8("search_reply.total")?;
        let index = r.u8("search_reply.index")?;
        let entry = r.bytes("search_reply.entry", crate::index::entry::ENTRY_LEN_MAX)?.to_vec();
        r.finish()?;
        Ok(Self { req, total, index, entry })
    }
}

/// Forward: carry a notice to another user's host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Forward {
    /// Matches the acknowledgement.
    pub req: u32,
    /// The receiving user.
    pub to: String,
    /// The receiver's super node, if the sender knows it (empty: look it up).
    pub via: String,
    /// The notice, opaque to super nodes.
    pub body: Vec<u8>,
}

impl Forward {
    /// Encodes.
    pub fn encode(&self) -> Vec<u8> {
        let mut w = Writer::new();
        w.u32(self.req).str(&self.to).str(&self.via).bytes(&self.body);
        w.into_bytes()
    }

    /// Decodes.
    pub fn decode(b: &[u8]) -> Result<Self, DecodeError> {
        let mut r = Reader::new(b);
        let req = r.u32("forward.req")?;
        let to = r.str("forward.to", USERNAME_WIRE_MAX)?.to_owned();
        let via = r.str("forward.via", 64)?.to_owned();
        let body = r.bytes("forward.body", crate::buddy::notice::NOTICE_LEN_MAX)?.to_vec();
        r.finish()?;
        Ok(Self { req, to, via, body })
    }
}

/// ForwardAck: where a Forward went.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ForwardAck {
    /// The Forward's id.
    pub req: u32,
    /// 0: handed to the receiver's super node; otherwise the [`ErrorCode`].
    pub code: u16,
    /// The super node it went to (empty when refused).
    pub supernode: String,
}

impl ForwardAck {
    /// Encodes.
    pub fn encode(&self) -> Vec<u8> {
        let mut w = Writer::new();
        w.u32(self.req).u16(self.code).str(&self.supernode);
        w.into_bytes()
    }

    /// Decodes.
    pub fn decode(b: &[u8]) -> Result<Self, DecodeError> {
        let mut r = Reader::new(b);
        let req = r.u32("forward_ack.req")?;
        let code = r.u16("forward_ack.code")?;
        let supernode = r.str("forward_ack.supernode", 64)?.to_owned();
        r.finish()?;
        Ok(Self { req, code, supernode })
    }
}

/// RelayAllocate: a relay session for a call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RelayAllocate {
    /// Matches the grant.
    pub req: u32,
    /// The callee's encoded host credential: leg B's token is sealed to its key.
    pub callee: Vec<u8>,
}

impl RelayAllocate {
    /// Encodes.
    pub fn encode(&self) -> Vec<u8> {
        let mut w = Writer::new();
        w.u32(self.req).bytes(&self.callee);
        w.into_bytes()
    }

    /// Decodes.
    pub fn decode(b: &[u8]) -> Result<Self, DecodeError> {
        let mut r = Reader::new(b);
        let req = r.u32("relay_allocate.req")?;
        let callee = r.bytes("relay_allocate.callee", crate::crypto::credential::CREDENTIAL_LEN_MAX)?.to_vec();
        r.finish()?;
        Ok(Self { req, callee })
    }
}

/// RelayGrant: where the relay is, leg A's token, and leg B's sealed to the callee.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RelayGrant {
    /// The RelayAllocate's id.
    pub req: u32,
    /// 0: granted; otherwise the [`ErrorCode`] (Full: too many sessions here or for you).
    pub code: u16,
    /// The relay's UDP address.
    pub relay: Option<SocketAddr>,
    /// The session id.
    pub session: u32,
    /// Leg A's token (for the host that asked).
    pub token_a: [u8; 16],
    /// Leg B's token sealed to the callee ([`crate::relay::handoff`]), sent to it end to end.
    pub leg_b: Vec<u8>,
    /// Seconds without packets after which the session ends.
    pub idle_timeout_secs: u16,
}

impl RelayGrant {
    /// Encodes.
    pub fn encode(&self) -> Vec<u8> {
        let mut w = Writer::new();
        w.u32(self.req)
            .u16(self.code)
            .opt_addr(self.relay)
            .u32(self.session)
            .raw(&self.token_a)
            .bytes(&self.leg_b)
            .u16(self.idle_timeout_secs);
        w.into_bytes()
    }

    /// Decodes.
    pub fn decode(b: &[u8]) -> Result<Self, DecodeError> {
        let mut r = Reader::new(b);
        let req = r.u32("relay_grant.req")?;
        let code = r.u16("relay_grant.code")?;
        let relay = r.opt_addr("relay_grant.relay")?;
        let session = r.u32("relay_grant.session")?;
        let token_a = r.array("relay_grant.token_a")?;
        let leg_b = r.bytes("relay_grant.leg_b", crate::relay::handoff::SEALED_LEN_MAX)?.to_vec();
        let idle_timeout_secs = r.u16("relay_grant.idle_timeout_secs")?;
        r.finish()?;
        Ok(Self { req, code, relay, session, token_a, leg_b, idle_timeout_secs })
    }
}

/// RelayRelease: free a relay session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RelayRelease {
    /// The session id.
    pub session: u32,
}

impl RelayRelease {
    /// Encodes.
    pub fn encode(&self) -> Vec<u8> {
        let mut w = Writer::new();
        w.u32(self.session);
        w.into_bytes()
    }

    /// Decodes.
    pub fn decode(b: &[u8]) -> Result<Self, DecodeError> {
        let mut r = Reader::new(b);
        let session = r.u32("relay_release.session")?;
        r.finish()?;
        Ok(Self { session })
    }
}

/// CallStats: how one call went. Labels only (a path, an outcome): nothing that names
/// the call or its parties. A file transfer's receiver also reports, per connection, the
/// file bytes it took in and on which path (`file_bytes`; such a report is not a call).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CallStats {
    /// `direct`, `punched`, `relayed_udp`, `relayed_tcp`, or empty when it never connected.
    pub path: String,
    /// How it ended (`hung_up`, `declined`, `busy`, `cancelled`, `no_answer`, …).
    pub outcome: String,
    /// From the invite to media flowing, in milliseconds (0 when it never connected).
    pub setup_ms: u32,
    /// A file transfer's report: the file bytes one connection brought (last on the wire,
    /// absent in a call's report).
    pub file_bytes: Option<u64>,
}

/// Tag before [`CallStats::file_bytes`].
const FILE_BYTES_TAG: u8 = 1;

impl CallStats {
    /// Encodes.
    pub fn encode(&self) -> Vec<u8> {
        let mut w = Writer::new();
        w.str(&self.path).str(&self.outcome).u32(self.setup_ms);
        if let Some(n) = self.file_bytes {
            w.u8(FILE_BYTES_TAG).u64(n);
        }
        w.into_bytes()
    }

    /// Decodes.
    pub fn decode(b: &[u8]) -> Result<Self, DecodeError> {
        let mut r = Reader::new(b);
        let path = r.str("call_stats.path", 16)?.to_owned();
        let outcome = r.str("call_stats.outcome", 16)?.to_owned();
        let setup_ms = r.u32("call_stats.setup_ms")?;
        let file_bytes = if r.remaining() == 0 {
            None
        } else {
            if r.u8("call_stats.file_bytes_tag")? != FILE_BYTES_TAG {
                return Err(DecodeError::Invalid("call_stats.file_bytes_tag"));
            }
            Some(r.u64("call_stats.file_bytes")?)
        };
        r.finish()?;
        Ok(Self { path, outcome, setup_ms, file_bytes })
    }
}

/// RegisterReply: the account as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RegisterReply {
    /// The username as registered.
    pub username: String,
}

impl RegisterReply {
    /// Encodes.
    pub fn encode(&self) -> Vec<u8> {
        let mut w = Writer::new();
        w.str(&self.username);
        w.into_bytes()
    }

    /// Decodes.
    pub fn decode(b: &[u8]) -> Result<Self, DecodeError> {
        let mut r = Reader::new(b);
        let username = r.str("register_reply.username", USERNAME_WIRE_MAX)?.to_owned();
        r.finish()?;
        Ok(Self { username })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn sa(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    #[test]
    fn kinds_round_trip() {
        for k in MessageKind::ALL {
            assert_eq!(MessageKind::from_code(k as u8), Some(k));
        }
        assert_eq!(MessageKind::from_code(0xee), None);
        for c in 0..40 {
            assert_eq!(ErrorCode::from_code(c).code(), c);
        }
    }

    #[test]
    fn bodies_round_trip() {
        let env = Envelope { key_id: [1; 8], cookie: [0; COOKIE_LEN], wrapped: vec![2; 256], sealed: vec![3; 90] };
        let challenge = PuzzleChallenge { issued_at: 77, bits: 16, salt: [9; 16] };
        assert_eq!(PuzzleChallenge::decode(&challenge.encode()).unwrap(), challenge);
        assert_eq!(challenge.encode().len(), PUZZLE_CHALLENGE_LEN);
        // Without a solution the request is the bare envelope, as older hosts send it.
        let bare = EnvelopedRequest { envelope: env.clone(), solution: None };
        assert_eq!(bare.encode(), env.encode());
        assert_eq!(EnvelopedRequest::decode(&env.encode()).unwrap(), bare);
        let solved = EnvelopedRequest { envelope: env, solution: Some(PuzzleSolution { challenge, counter: 5 }) };
        assert_eq!(EnvelopedRequest::decode(&solved.encode()).unwrap(), solved);
        let mut bad_tag = solved.encode();
        let at = bad_tag.len() - 8 - PUZZLE_CHALLENGE_LEN - 1;
        bad_tag[at] = 2;
        assert!(EnvelopedRequest::decode(&bad_tag).is_err());
        let q = SeenQuery { user: "alice".into(), timestamp: 9, credential: vec![4; 700], signature: vec![5; 256] };
        assert_eq!(SeenQuery::decode(&q.encode()).unwrap(), q);
        let h = Hello { client_version: "0.1.0".into(), host_nonce: [3; 16] };
        let e = h.encode();
        assert!(e.len() >= HELLO_LEN_MIN);
        assert_eq!(Hello::decode(&e).unwrap(), h);
        let c =
            Challenge { credential: vec![1; 600], cookie: [2; 32], host_nonce: [3; 16], observed: sa("10.0.0.1:5") };
        assert_eq!(Challenge::decode(&c.encode()).unwrap(), c);
        assert!(c.encode().len() < HELLO_LEN_MIN, "a Challenge must never outgrow the Hello");
        let w = Welcome {
            observed: sa("198.18.1.2:4000"),
            keepalive_secs: 15,
            idle_timeout_secs: 60,
            probe_addr: Some(sa("198.18.0.1:33034")),
            supernodes: vec![SupernodeInfo { name: "sn1".into(), udp: Some(sa("198.18.0.1:33033")), tcp: None }],
        };
        assert_eq!(Welcome::decode(&w.encode()).unwrap(), w);
        let a = AccountBody {
            username: "alice".into(),
            shared_secret: [9; 32],
            timestamp: 17,
            client_version: "0.1.0".into(),
            host_public_key: vec![1, 2, 3],
            last_supernode: "sn1".into(),
            possession: Vec::new(),
            user_keys: None,
        };
        assert_eq!(AccountBody::decode(&a.encode()).unwrap(), a);
        let err = ErrorMsg { code: ErrorCode::TooManyAttempts, retry_after_secs: 30, detail: "slow down".into() };
        assert_eq!(ErrorMsg::decode(&err.encode()).unwrap(), err);
        let env = Envelope { key_id: [1; 8], cookie: [0; 32], wrapped: vec![5; 256], sealed: vec![6; 100] };
        assert_eq!(Envelope::decode(&env.encode()).unwrap(), env);
        let p = NatProbe { id: 99 };
        assert_eq!(NatProbe::decode(&p.encode()).unwrap(), p);
        assert!(NatProbe::decode(&99u64.to_be_bytes()).is_err());
    }

    /// Every strict prefix of a valid encoding is refused as truncated, and one byte more
    /// as trailing.
    fn refuses_prefixes_and_trailing<T: std::fmt::Debug>(enc: &[u8], decode: impl Fn(&[u8]) -> Result<T, DecodeError>) {
        for n in 0..enc.len() {
            assert!(matches!(decode(&enc[..n]), Err(DecodeError::Truncated(_))), "{n} of {} bytes", enc.len());
        }
        let mut longer = enc.to_vec();
        longer.push(0);
        assert_eq!(decode(&longer).unwrap_err(), DecodeError::Trailing(1));
    }

    #[test]
    fn revision_two_kinds_are_sealed_and_numbered() {
        for (k, code) in
            [(MessageKind::RequestError, 0x09), (MessageKind::PublishReq, 0x49), (MessageKind::PublishReply, 0x4a)]
        {
            assert_eq!(k as u8, code);
            assert_eq!(MessageKind::from_code(code), Some(k));
            assert!(k.sealing_allowed(true) && !k.sealing_allowed(false), "{k:?}");
        }
        let labels: std::collections::HashSet<_> = MessageKind::ALL.iter().map(|k| k.label()).collect();
        assert_eq!(labels.len(), MessageKind::ALL.len(), "labels are unique");
    }

    #[test]
    fn keepalive_body_is_empty_or_a_nonzero_id() {
        assert_eq!(Keepalive { id: 0 }.encode(), Vec::<u8>::new(), "revision 1's keepalive is unchanged");
        assert_eq!(Keepalive::decode(&[]).unwrap(), Keepalive { id: 0 });
        assert_eq!(Keepalive::decode(&[]).unwrap().revision(), Revision::One);
        let k = Keepalive { id: 0x0102_0304_0506_0708 };
        assert_eq!(k.encode(), [1, 2, 3, 4, 5, 6, 7, 8]);
        assert_eq!(Keepalive::decode(&k.encode()).unwrap(), k);
        assert_eq!(k.revision(), Revision::Two);
        assert_eq!(Keepalive::decode(&u64::MAX.to_be_bytes()).unwrap().id, u64::MAX);
        for n in 1..8 {
            assert_eq!(Keepalive::decode(&[7; 8][..n]), Err(DecodeError::Truncated("keepalive.id")), "{n} bytes");
        }
        assert_eq!(Keepalive::decode(&[7; 9]), Err(DecodeError::Trailing(1)));
        assert_eq!(Keepalive::decode(&[7; 16]), Err(DecodeError::Trailing(8)));
        assert_eq!(Keepalive::decode(&[0; 8]), Err(DecodeError::Invalid("keepalive.id")));
    }

    #[test]
    fn request_error_round_trips_and_refuses_malformed() {
        for e in [
            RequestError {
                req: 0xfeed_beef,
                error: ErrorMsg { code: ErrorCode::TooManyAttempts, retry_after_secs: 1, detail: "slow down".into() },
            },
            RequestError { req: 0, error: ErrorMsg::new(ErrorCode::Unknown(999), "") },
            RequestError { req: 7, error: ErrorMsg::new(ErrorCode::Malformed, "é".repeat(127)) },
        ] {
            let b = e.encode();
            assert_eq!(RequestError::decode(&b).unwrap(), e);
            // The body is an Error's with the id in front.
            assert_eq!(&b[..4], &e.req.to_be_bytes());
            assert_eq!(ErrorMsg::decode(&b[4..]).unwrap(), e.error);
            refuses_prefixes_and_trailing(&b, RequestError::decode);
        }
        // Over-long text is cut when encoded, never sent whole.
        let long = RequestError { req: 1, error: ErrorMsg::new(ErrorCode::Internal, "x".repeat(300)) };
        assert_eq!(RequestError::decode(&long.encode()).unwrap().error.detail.len(), 255);
        let mut bad_utf8 = RequestError { req: 1, error: ErrorMsg::new(ErrorCode::Internal, "ab") }.encode();
        let at = bad_utf8.len() - 1;
        bad_utf8[at] = 0xff;
        assert_eq!(RequestError::decode(&bad_utf8), Err(DecodeError::Invalid("request_error.detail")));
    }

    #[test]
    fn publish_req_round_trips_and_refuses_malformed() {
        let entry_max = crate::index::entry::ENTRY_LEN_MAX;
        for p in [
            PublishReq { req: 3, entry: vec![9; 300] },
            PublishReq { req: u32::MAX, entry: vec![1; entry_max] },
            PublishReq { req: 1, entry: Vec::new() },
        ] {
            let b = p.encode();
            assert_eq!(PublishReq::decode(&b).unwrap(), p);
            refuses_prefixes_and_trailing(&b, PublishReq::decode);
        }
        // The entry's length is checked against the cap before anything is read.
        let mut over = 3u32.to_be_bytes().to_vec();
        over.extend_from_slice(&((entry_max + 1) as u16).to_be_bytes());
        over.extend_from_slice(&[0; 8]);
        assert_eq!(
            PublishReq::decode(&over),
            Err(DecodeError::TooLong { field: "publish_req.entry", len: entry_max + 1, max: entry_max })
        );
    }

    #[test]
    fn publish_reply_round_trips_and_refuses_malformed() {
        for r in [
            PublishReply { req: 3, ack: PublishAck { code: 0, replicas: 9, detail: String::new() } },
            PublishReply {
                req: 4,
                ack: PublishAck {
                    code: ErrorCode::BadSignature.code(),
                    replicas: 0,
                    detail: "entry made in the future".into(),
                },
            },
        ] {
            let b = r.encode();
            assert_eq!(PublishReply::decode(&b).unwrap(), r);
            // The body is a PublishAck's with the id in front.
            assert_eq!(PublishAck::decode(&b[4..]).unwrap(), r.ack);
            refuses_prefixes_and_trailing(&b, PublishReply::decode);
        }
        let mut bad_utf8 =
            PublishReply { req: 1, ack: PublishAck { code: 16, replicas: 0, detail: "ab".into() } }.encode();
        let at = bad_utf8.len() - 2;
        bad_utf8[at] = 0xc3;
        assert_eq!(PublishReply::decode(&bad_utf8), Err(DecodeError::Invalid("publish_reply.detail")));
    }

    #[test]
    fn a_file_report_rides_last_in_call_stats_and_a_calls_report_is_as_before() {
        let call = CallStats { path: "punched".into(), outcome: "hung_up".into(), setup_ms: 800, file_bytes: None };
        let before = [&[7][..], b"punched", &[7], b"hung_up", &800u32.to_be_bytes()].concat();
        assert_eq!(call.encode(), before, "a call's report is the bytes it always was");
        assert_eq!(CallStats::decode(&before), Ok(call));
        let file = CallStats { path: "direct".into(), outcome: "file".into(), setup_ms: 0, file_bytes: Some(5 << 20) };
        let b = file.encode();
        assert_eq!(CallStats::decode(&b), Ok(file));
        let mut bad_tag = b.clone();
        bad_tag[b.len() - 9] = 2;
        assert_eq!(CallStats::decode(&bad_tag), Err(DecodeError::Invalid("call_stats.file_bytes_tag")));
        assert!(CallStats::decode(&b[..b.len() - 1]).is_err(), "truncated");
        assert!(CallStats::decode(&[b.as_slice(), &[0]].concat()).is_err(), "trailing");
    }

    #[test]
    fn user_keys_ride_last_and_an_older_body_or_record_still_decodes() {
        let keys = UserPublicKeys { x25519: [4; 32], ed25519: [5; 32] };
        let old = AccountBody {
            username: "carol".into(),
            shared_secret: [9; 32],
            timestamp: 17,
            client_version: "0.1.0".into(),
            host_public_key: Vec::new(),
            last_supernode: String::new(),
            possession: Vec::new(),
            user_keys: None,
        };
        let new = AccountBody { user_keys: Some(keys), ..old.clone() };
        let (old_b, new_b) = (old.encode(), new.encode());
        assert_eq!(new_b.len(), old_b.len() + 64, "the keys are appended, nothing before them moves");
        assert_eq!(&new_b[..old_b.len()], &old_b[..]);
        assert_eq!(AccountBody::decode(&new_b).unwrap(), new);
        assert_eq!(AccountBody::decode(&old_b).unwrap(), old, "a body from an older host: no keys");
        for cut in [1, 32, 63] {
            assert!(AccountBody::decode(&new_b[..new_b.len() - cut]).is_err(), "keys cut by {cut}");
        }
        assert!(AccountBody::decode(&[&new_b[..], &[0]].concat()).is_err(), "a byte after the keys");

        let rec = SeenRecord {
            user: "carol".into(),
            found: false,
            last_seen: 0,
            supernode: String::new(),
            issued_at: 5,
            key_id: [1; 8],
            signature: vec![7; 512],
            user_keys: None,
        };
        let with = SeenRecord { user_keys: Some(keys), ..rec.clone() };
        assert_eq!(SeenRecord::decode(&with.encode()).unwrap(), with);
        assert_eq!(SeenRecord::decode(&rec.encode()).unwrap(), rec);
        let mut signed = rec.signed_message();
        assert_eq!(with.signed_message()[..signed.len()], signed[..], "the keys are covered, after the rest");
        signed.extend_from_slice(&keys.to_bytes());
        assert_eq!(with.signed_message(), signed);
        let b = with.encode();
        assert!(SeenRecord::decode(&b[..b.len() - 10]).is_err(), "truncated keys");
        let longest = SeenRecord {
            user: "u".repeat(USERNAME_WIRE_MAX),
            supernode: "s".repeat(64),
            signature: vec![0; WRAPPED_KEY_LEN_MAX],
            ..with
        };
        assert!(longest.encode().len() <= SEEN_RECORD_LEN_MAX, "{} bytes", longest.encode().len());
        let reply =
            FindReply { req: 1, entry: Vec::new(), asked: 3, stage: "directory".into(), directory: longest.encode() };
        assert_eq!(FindReply::decode(&reply.encode()).unwrap(), reply);
    }

    proptest! {
        #[test]
        fn decoders_are_total(b in proptest::collection::vec(any::<u8>(), 0..1500)) {
            let _ = Hello::decode(&b);
            let _ = Challenge::decode(&b);
            let _ = Envelope::decode(&b);
            let _ = AuthBody::decode(&b);
            let _ = Welcome::decode(&b);
            let _ = Observed::decode(&b);
            let _ = NatProbe::decode(&b);
            let _ = Bye::decode(&b);
            let _ = ErrorMsg::decode(&b);
            let _ = AccountBody::decode(&b);
            let _ = LoginReply::decode(&b);
            let _ = RegisterReply::decode(&b);
            let _ = Forward::decode(&b);
            let _ = ForwardAck::decode(&b);
            let _ = RelayAllocate::decode(&b);
            let _ = RelayGrant::decode(&b);
            let _ = RelayRelease::decode(&b);
            let _ = CallStats::decode(&b);
            let _ = EnvelopedRequest::decode(&b);
            let _ = PuzzleChallenge::decode(&b);
            let _ = SeenQuery::decode(&b);
            let _ = SeenRecord::decode(&b);
            let _ = Keepalive::decode(&b);
            let _ = RequestError::decode(&b);
            let _ = PublishReq::decode(&b);
            let _ = PublishReply::decode(&b);
        }
    }
}
