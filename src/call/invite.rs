//! How two hosts authenticate each other and agree on a media key no super node sees.
//!
//! 1. The caller sends an [`Invite`]: its credential, the codecs it offers, where it can
//!    receive media, a fresh 256-bit secret wrapped under the callee's RSA key (as in the
//!    original network) and a fresh X25519 public key, all signed with RSA-PSS by the caller.
//! 2. The callee checks the caller's credential and signature, unwraps the secret, and
//!    answers with a [`Reply`]: its credential, the codec chosen (or that it is busy), its
//!    candidates and its own fresh X25519 public key, signed over the invite's digest. The
//!    caller checks that in turn: mutual authentication.
//! 3. The call's key is HKDF over the wrapped secret and the X25519 agreement, bound to
//!    the invite and the callee's key share. The callee contributes fresh randomness to
//!    every reply, so an invite replayed to the callee (after a restart made it forget the
//!    call id) never yields a key used before, and a later theft of either RSA key does
//!    not open a recorded call (forward secrecy).
//! 4. Everything after travels as a [`SealedSignal`]: end-to-end encrypted and
//!    authenticated, so a super node relaying it can neither read nor forge it. The
//!    caller's signals are sealed under a key from its own fresh secret (it may cancel
//!    before any reply); the callee's, and all media, under the call's key.

use super::signal::{Role, Signal};
use crate::crypto::PrivateKey;
use crate::crypto::aead::{SealKey, SessionSecret};
use crate::crypto::credential::{Credential, CredentialError, CredentialKind, TrustedKeys};
use crate::crypto::dh;
use crate::wire::replay::ReplayWindow;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::net::SocketAddr;

/// Domain prefix of an invite's signature.
pub const DOMAIN_INVITE: &[u8] = b"confab/v1/call-invite\0";
/// Domain prefix of a reply's signature.
pub const DOMAIN_REPLY: &[u8] = b"confab/v1/call-reply\0";
/// Domain prefix of the signature that makes an invite a file transfer's.
pub const DOMAIN_FILE_INVITE: &[u8] = b"confab/v1/call-file\0";
/// HKDF info prefix of a call's key.
const CALL_KEY_INFO: &[u8] = b"confab/v1/call-key\0";
/// Largest encoded invite or reply (two credentials never travel in one message).
pub const CALL_MESSAGE_LEN_MAX: usize = 2300;
/// What a file invite may add to an invite: the transfer id and a signature under a
/// 4096-bit key, with their lengths.
pub const FILE_INVITE_EXTRA_MAX: usize = 16 + 512 + 4;
/// Largest sealed signal (a relay leg sealed under a 4096-bit key, its address, the tag).
pub const SEALED_SIGNAL_LEN_MAX: usize = crate::relay::handoff::SEALED_LEN_MAX + 64;
/// Most codecs offered, and media candidates given.
pub const LIST_MAX: usize = 8;

/// A voice codec (offered in order of preference).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Codec {
    /// Opus, 48 kHz mono, 20 ms frames.
    Opus,
    /// Uncompressed 16-bit PCM, 48 kHz mono, 20 ms frames (for tests and debugging).
    L16,
}

/// What kind of address a candidate is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum CandidateKind {
    /// The host's own address (reachable when public, or on the same network).
    Host,
    /// The address its super node sees (through its NAT): the hole-punching target.
    Public,
    /// A super-node relay.
    Relay,
}

/// Somewhere a host can receive media.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Candidate {
    /// The kind.
    pub kind: CandidateKind,
    /// The address.
    pub addr: SocketAddr,
}

/// A call's key (or the caller's wrapped secret); every signalling and media key is
/// derived from one.
#[derive(Clone)]
pub struct MediaKey(pub [u8; 32]);

impl Drop for MediaKey {
    fn drop(&mut self) {
        zeroize::Zeroize::zeroize(&mut self.0);
    }
}

impl std::fmt::Debug for MediaKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("MediaKey(..)")
    }
}

impl MediaKey {
    /// The key for one purpose and direction (`from` is the sender's role).
    pub fn derive(&self, purpose: &str, from: Role) -> SealKey {
        let dir = match from {
            Role::Caller => "caller",
            Role::Callee => "callee",
        };
        SessionSecret(self.0).derive(&format!("call/{purpose}/{dir}"))
    }
}

/// Why a call message was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CallError {
    /// Not a call message, or over the limits.
    #[error("malformed call message")]
    Malformed,
    /// For another user.
    #[error("the invite is for {0}, not us")]
    NotForUs(String),
    /// The sender's credential is not valid.
    #[error("credential: {0}")]
    Credential(#[from] CredentialError),
    /// The credential is someone else's than the message claims.
    #[error("the credential is {0}'s, not the sender's")]
    WrongSender(String),
    /// The signature does not verify.
    #[error("the signature does not verify")]
    BadSignature,
    /// Made too long ago, or in the future (a replay, or a wrong clock).
    #[error("made {0} ms from now: outside the accepted window")]
    Stale(i64),
    /// The wrapped secret does not open with our key, or a key share is unusable.
    #[error("the media key does not open")]
    BadKey,
    /// No codec in common.
    #[error("no codec in common")]
    NoCodec,
    /// A reply to another invite.
    #[error("the reply answers another invite")]
    WrongCall,
}

/// The signed part of an invite.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InviteBody {
    /// Random, names the call in every later message.
    pub call_id: [u8; 16],
    /// Who calls.
    pub caller: String,
    /// Whom.
    pub callee: String,
    /// The caller's super node, where signals for it go.
    pub supernode: String,
    /// The caller's credential.
    pub credential: Vec<u8>,
    /// Codecs offered, preferred first.
    pub codecs: Vec<Codec>,
    /// Where the caller receives media.
    pub candidates: Vec<Candidate>,
    /// RSA-OAEP(callee's key, the caller's 256-bit secret).
    pub wrapped_key: Vec<u8>,
    /// The caller's fresh X25519 public key.
    pub key_share: [u8; 32],
    /// Unix milliseconds at the caller.
    pub created_ms: u64,
}

/// An invite: the body and the caller's RSA-PSS signature over it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Invite {
    /// The body.
    pub body: InviteBody,
    /// Over [`DOMAIN_INVITE`] ‖ postcard(body).
    pub signature: Vec<u8>,
}

fn signed(domain: &[u8], body: &impl Serialize) -> Vec<u8> {
    let mut m = domain.to_vec();
    m.extend(postcard::to_allocvec(body).expect("a call body always encodes"));
    m
}

fn decode<T: for<'de> Deserialize<'de>>(b: &[u8]) -> Result<T, CallError> {
    if b.len() > CALL_MESSAGE_LEN_MAX {
        return Err(CallError::Malformed);
    }
    postcard::from_bytes(b).map_err(|_| CallError::Malformed)
}

fn check_time(created_ms: u64, now_ms: u64, window_ms: u64) -> Result<(), CallError> {
    // In i128: `created_ms` is any u64 the sender chose, checked before its signature.
    let ahead = i128::from(created_ms) - i128::from(now_ms);
    if ahead.unsigned_abs() > u128::from(window_ms) {
        return Err(CallError::Stale(i64::try_from(ahead).unwrap_or(i64::MAX)));
    }
    Ok(())
}

fn check_sender(c: &Credential, claimed: &str) -> Result<(), CallError> {
    if !c.subject.eq_ignore_ascii_case(claimed) {
        return Err(CallError::WrongSender(c.subject.clone()));
    }
    Ok(())
}

/// The call's key: HKDF-SHA256 over the X25519 agreement and the wrapped secret, salted
/// with the call id, bound to the invite (its digest) and the callee's key share.
fn call_key(
    mine: &dh::Secret,
    theirs: &[u8; 32],
    wrapped: &MediaKey,
    call_id: &[u8; 16],
    invite_digest: &[u8; 32],
    callee_share: &[u8; 32],
) -> Result<MediaKey, CallError> {
    mine.agree(theirs, &wrapped.0, call_id, &[CALL_KEY_INFO, invite_digest, callee_share])
        .map(MediaKey)
        .map_err(|_| CallError::BadKey)
}

/// The caller's secrets for one call, until the reply brings the callee's half.
#[derive(Debug)]
pub struct Offer {
    wrapped: MediaKey,
    share: dh::Secret,
}

impl Offer {
    /// The call's key, from a reply that [`Reply::verify`] accepted for `invite`.
    pub fn key(&self, invite: &Invite, reply: &Reply) -> Result<MediaKey, CallError> {
        let b = &invite.body;
        call_key(&self.share, &reply.body.key_share, &self.wrapped, &b.call_id, &invite.digest(), &reply.body.key_share)
    }
}

/// What the callee learns from a good invite.
#[derive(Debug, Clone)]
pub struct Opened {
    /// The call.
    pub call_id: [u8; 16],
    /// The caller's verified credential.
    pub caller: Credential,
    /// The caller's secret (the key of the caller's signals; the call's key comes with
    /// the reply).
    pub wrapped: MediaKey,
    /// The caller's X25519 public key.
    pub key_share: [u8; 32],
    /// The codecs offered.
    pub codecs: Vec<Codec>,
    /// The caller's candidates.
    pub candidates: Vec<Candidate>,
    /// The invite's digest, which the reply signs.
    pub digest: [u8; 32],
}

/// Who places a call: the caller's credential and key, and its super node's name.
#[derive(Debug, Clone, Copy)]
pub struct Caller<'a> {
    /// The caller's host credential.
    pub me: &'a Credential,
    /// Its private key (signs the invite).
    pub key: &'a PrivateKey,
    /// The super node where signals for the caller go.
    pub supernode: &'a str,
}

impl Invite {
    /// Makes an invite to the holder of `callee` (a credential the caller verified, from
    /// the callee's index entry); returns it with the caller's secrets and its signalling
    /// channel (made once here: a second channel under the same secret would reuse its
    /// nonces). The channel seals at once; it opens the callee's signals once
    /// [`SignalChannel::set_key`] has the call's key.
    pub fn make(
        me: &Credential,
        key: &PrivateKey,
        supernode: &str,
        callee: &Credential,
        codecs: Vec<Codec>,
        candidates: Vec<Candidate>,
        now_ms: u64,
    ) -> (Self, Offer, SignalChannel) {
        let mut os = rand::rand_core::UnwrapErr(getrandom::SysRng);
        Self::make_with_rng(Caller { me, key, supernode }, callee, codecs, candidates, now_ms, &mut os)
    }

    /// [`Invite::make`] drawing the call id and the wrapped secret from `rng` (a seeded
    /// generator makes them reproducible). The X25519 share, the RSA-OAEP padding and the
    /// PSS salt still come from the crypto library's own generator: they change bytes,
    /// never lengths or what happens next.
    pub fn make_with_rng(
        caller: Caller<'_>,
        callee: &Credential,
        codecs: Vec<Codec>,
        candidates: Vec<Candidate>,
        now_ms: u64,
        rng: &mut impl rand::Rng,
    ) -> (Self, Offer, SignalChannel) {
        let Caller { me, key, supernode } = caller;
        let mut wrapped = [0u8; 32];
        rng.fill_bytes(&mut wrapped);
        let mut call_id = [0u8; 16];
        rng.fill_bytes(&mut call_id);
        let offer = Offer { wrapped: MediaKey(wrapped), share: dh::Secret::generate() };
        let body = InviteBody {
            call_id,
            caller: me.subject.clone(),
            callee: callee.subject.clone(),
            supernode: supernode.to_owned(),
            credential: me.encode(),
            codecs,
            candidates,
            wrapped_key: callee.public_key.encrypt_oaep(&offer.wrapped.0),
            key_share: offer.share.public(),
            created_ms: now_ms,
        };
        let signature = key.sign_pss(&signed(DOMAIN_INVITE, &body));
        let channel = SignalChannel {
            call_id: body.call_id,
            tx: offer.wrapped.derive("signal", Role::Caller),
            rx: None,
            next: 0,
            seen: ReplayWindow::new(),
        };
        (Self { body, signature }, offer, channel)
    }

    /// Encodes.
    pub fn encode(&self) -> Vec<u8> {
        postcard::to_allocvec(self).expect("an invite always encodes")
    }

    /// Decodes (total).
    pub fn decode(b: &[u8]) -> Result<Self, CallError> {
        let i: Self = decode(b)?;
        if i.body.codecs.len() > LIST_MAX || i.body.candidates.len() > LIST_MAX {
            return Err(CallError::Malformed);
        }
        Ok(i)
    }

    /// What the reply signs: SHA-256 of the encoded invite.
    pub fn digest(&self) -> [u8; 32] {
        Sha256::digest(self.encode()).into()
    }

    /// The callee's checks: addressed to `me`, a valid host credential of the caller,
    /// its signature, made within `window_ms` of `now_ms`, and a secret that opens with
    /// our key. (The driver also remembers call ids, so a replay within the window is
    /// refused too.)
    pub fn open(
        &self,
        trusted: &TrustedKeys,
        me: &str,
        key: &PrivateKey,
        now_ms: u64,
        window_ms: u64,
    ) -> Result<Opened, CallError> {
        let b = &self.body;
        if !b.callee.eq_ignore_ascii_case(me) {
            return Err(CallError::NotForUs(b.callee.clone()));
        }
        check_time(b.created_ms, now_ms, window_ms)?;
        let caller = Credential::decode_verified(&b.credential, trusted, CredentialKind::Host, now_ms / 1000)?;
        check_sender(&caller, &b.caller)?;
        caller
            .public_key
            .verify_pss(&signed(DOMAIN_INVITE, b), &self.signature)
            .map_err(|_| CallError::BadSignature)?;
        let raw = zeroize::Zeroizing::new(key.decrypt_oaep(&b.wrapped_key).map_err(|_| CallError::BadKey)?);
        let wrapped: [u8; 32] = raw.as_slice().try_into().map_err(|_| CallError::BadKey)?;
        Ok(Opened {
            call_id: b.call_id,
            caller,
            wrapped: MediaKey(wrapped),
            key_share: b.key_share,
            codecs: b.codecs.clone(),
            candidates: b.candidates.clone(),
            digest: self.digest(),
        })
    }
}

/// The signed part of a reply.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReplyBody {
    /// The call.
    pub call_id: [u8; 16],
    /// SHA-256 of the invite answered.
    pub invite_digest: [u8; 32],
    /// The callee's credential.
    pub credential: Vec<u8>,
    /// The codec chosen (the first offered that the callee supports).
    pub codec: Codec,
    /// The callee is in another call: the call ends here (no candidates then).
    pub busy: bool,
    /// Where the callee receives media.
    pub candidates: Vec<Candidate>,
    /// The callee's fresh X25519 public key.
    pub key_share: [u8; 32],
    /// Unix milliseconds at the callee.
    pub created_ms: u64,
}

/// The callee's reply to a good invite (sent with its ringing, or saying it is busy).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Reply {
    /// The body.
    pub body: ReplyBody,
    /// Over [`DOMAIN_REPLY`] ‖ postcard(body).
    pub signature: Vec<u8>,
}

/// The first codec of `offered` that `supported` has.
pub fn choose(offered: &[Codec], supported: &[Codec]) -> Option<Codec> {
    offered.iter().copied().find(|c| supported.contains(c))
}

impl Reply {
    /// The callee's reply to `invite`, choosing among `supported` codecs (`busy`: that we
    /// are in another call, with no candidates); returns it with the call's key, fresh
    /// for every reply.
    pub fn make(
        invite: &Opened,
        me: &Credential,
        key: &PrivateKey,
        supported: &[Codec],
        busy: bool,
        candidates: Vec<Candidate>,
        now_ms: u64,
    ) -> Result<(Self, MediaKey), CallError> {
        let codec = choose(&invite.codecs, supported).ok_or(CallError::NoCodec)?;
        let share = dh::Secret::generate();
        let key_share = share.public();
        let call = call_key(&share, &invite.key_share, &invite.wrapped, &invite.call_id, &invite.digest, &key_share)?;
        let body = ReplyBody {
            call_id: invite.call_id,
            invite_digest: invite.digest,
            credential: me.encode(),
            codec,
            busy,
            candidates: if busy { Vec::new() } else { candidates },
            key_share,
            created_ms: now_ms,
        };
        let signature = key.sign_pss(&signed(DOMAIN_REPLY, &body));
        Ok((Self { body, signature }, call))
    }

    /// Encodes.
    pub fn encode(&self) -> Vec<u8> {
        postcard::to_allocvec(self).expect("a reply always encodes")
    }

    /// Decodes (total).
    pub fn decode(b: &[u8]) -> Result<Self, CallError> {
        let r: Self = decode(b)?;
        if r.body.candidates.len() > LIST_MAX {
            return Err(CallError::Malformed);
        }
        Ok(r)
    }

    /// The caller's checks: it answers our `invite`, from a valid host credential of the
    /// user we called, signed by that user's key, with a codec we offered.
    pub fn verify(&self, invite: &Invite, trusted: &TrustedKeys, now_ms: u64) -> Result<Credential, CallError> {
        let b = &self.body;
        if b.call_id != invite.body.call_id || b.invite_digest != invite.digest() {
            return Err(CallError::WrongCall);
        }
        let callee = Credential::decode_verified(&b.credential, trusted, CredentialKind::Host, now_ms / 1000)?;
        check_sender(&callee, &invite.body.callee)?;
        callee.public_key.verify_pss(&signed(DOMAIN_REPLY, b), &self.signature).map_err(|_| CallError::BadSignature)?;
        if !invite.body.codecs.contains(&b.codec) {
            return Err(CallError::NoCodec);
        }
        Ok(callee)
    }
}

/// A call message between two hosts (inside a host-to-host notice).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum CallMessage {
    /// Caller → callee.
    Invite(Invite),
    /// Callee → caller, with its ringing.
    Reply(Reply),
    /// Either way, after the invite.
    Signal(SealedSignal),
    /// Caller → callee: an invite to a call of kind "file", which carries the named
    /// transfer rather than voice (a variant of its own so that hosts that know no kinds
    /// refuse it as malformed instead of ringing).
    FileInvite(FileInvite),
}

/// An invite for a file transfer's call: the invite, the transfer, and the caller's
/// signature binding the two (the invite's own signature stays what it always was).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileInvite {
    /// The call's invite, as for voice.
    pub invite: Invite,
    /// The transfer the call is for (the receiver places the call to the sender).
    pub transfer: [u8; 16],
    /// RSA-PSS by the caller over [`DOMAIN_FILE_INVITE`] ‖ the invite's digest ‖ transfer.
    pub signature: Vec<u8>,
}

impl FileInvite {
    fn signed(invite: &Invite, transfer: &[u8; 16]) -> Vec<u8> {
        let mut m = DOMAIN_FILE_INVITE.to_vec();
        m.extend(invite.digest());
        m.extend(transfer);
        m
    }

    /// Makes `invite` (signed with `key`) an invite for `transfer`.
    pub fn make(invite: Invite, transfer: [u8; 16], key: &PrivateKey) -> FileInvite {
        let signature = key.sign_pss(&Self::signed(&invite, &transfer));
        FileInvite { invite, transfer, signature }
    }

    /// Checks the binding with the caller's key (from the opened invite).
    pub fn verify(&self, caller: &Credential) -> Result<(), CallError> {
        caller
            .public_key
            .verify_pss(&Self::signed(&self.invite, &self.transfer), &self.signature)
            .map_err(|_| CallError::BadSignature)
    }
}

impl CallMessage {
    /// Encodes.
    pub fn encode(&self) -> Vec<u8> {
        postcard::to_allocvec(self).expect("a call message always encodes")
    }

    /// Decodes (total), with the limits of each kind.
    pub fn decode(b: &[u8]) -> Result<Self, CallError> {
        // A file invite is an invite and a signature: it may exceed one call message.
        if b.len() > CALL_MESSAGE_LEN_MAX + FILE_INVITE_EXTRA_MAX {
            return Err(CallError::Malformed);
        }
        let m: Self = postcard::from_bytes(b).map_err(|_| CallError::Malformed)?;
        if b.len() > CALL_MESSAGE_LEN_MAX && !matches!(m, Self::FileInvite(_)) {
            return Err(CallError::Malformed);
        }
        let within = match &m {
            Self::Invite(i) => i.body.codecs.len() <= LIST_MAX && i.body.candidates.len() <= LIST_MAX,
            Self::FileInvite(f) => f.invite.body.codecs.len() <= LIST_MAX && f.invite.body.candidates.len() <= LIST_MAX,
            Self::Reply(r) => r.body.candidates.len() <= LIST_MAX,
            Self::Signal(s) => s.sealed.len() <= SEALED_SIGNAL_LEN_MAX,
        };
        if !within {
            return Err(CallError::Malformed);
        }
        Ok(m)
    }

    /// The call it belongs to.
    pub fn call_id(&self) -> [u8; 16] {
        match self {
            Self::Invite(i) => i.body.call_id,
            Self::FileInvite(f) => f.invite.body.call_id,
            Self::Reply(r) => r.body.call_id,
            Self::Signal(s) => s.call_id,
        }
    }
}

/// A signal sealed under the call's keys: `call_id` in the clear (to find the call),
/// the signal sealed with AES-256-GCM, its sequence number as the nonce.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SealedSignal {
    /// The call.
    pub call_id: [u8; 16],
    /// The sender's sequence number.
    pub seq: u64,
    /// The sealed signal.
    pub sealed: Vec<u8>,
}

impl SealedSignal {
    /// Encodes.
    pub fn encode(&self) -> Vec<u8> {
        postcard::to_allocvec(self).expect("a sealed signal always encodes")
    }

    /// Decodes (total).
    pub fn decode(b: &[u8]) -> Result<Self, CallError> {
        if b.len() > SEALED_SIGNAL_LEN_MAX + 32 {
            return Err(CallError::Malformed);
        }
        let s: Self = postcard::from_bytes(b).map_err(|_| CallError::Malformed)?;
        if s.sealed.len() > SEALED_SIGNAL_LEN_MAX {
            return Err(CallError::Malformed);
        }
        Ok(s)
    }
}

fn nonce(seq: u64) -> [u8; 12] {
    let mut n = [0u8; 12];
    n[4..].copy_from_slice(&seq.to_be_bytes());
    n
}

/// One side's end of the signalling channel: seals what it sends, opens and de-duplicates
/// what it receives.
#[derive(Debug)]
pub struct SignalChannel {
    call_id: [u8; 16],
    tx: SealKey,
    /// None at the caller until the reply brings the call's key.
    rx: Option<SealKey>,
    next: u64,
    seen: ReplayWindow,
}

impl SignalChannel {
    /// The channel of `role` in call `call_id` once both keys are known: the caller's
    /// signals go under its secret `wrapped`, the callee's under the call's key `call`.
    pub fn keyed(call_id: [u8; 16], wrapped: &MediaKey, call: &MediaKey, role: Role) -> Self {
        let (caller, callee) = (wrapped.derive("signal", Role::Caller), call.derive("signal", Role::Callee));
        let (tx, rx) = match role {
            Role::Caller => (caller, callee),
            Role::Callee => (callee, caller),
        };
        Self { call_id, tx, rx: Some(rx), next: 0, seen: ReplayWindow::new() }
    }

    /// The callee's channel, from the invite it opened and the call's key of its reply.
    pub fn callee(opened: &Opened, call: &MediaKey) -> Self {
        Self::keyed(opened.call_id, &opened.wrapped, call, Role::Callee)
    }

    /// The caller learnt the call's key (from the reply): it can open the callee's signals.
    pub fn set_key(&mut self, call: &MediaKey) {
        self.rx = Some(call.derive("signal", Role::Callee));
    }

    /// Whether the other side's signals can be opened yet.
    pub fn can_open(&self) -> bool {
        self.rx.is_some()
    }

    /// Seals a signal.
    pub fn seal(&mut self, s: Signal) -> SealedSignal {
        let seq = self.next;
        self.next += 1;
        let plain = postcard::to_allocvec(&s).expect("a signal always encodes");
        SealedSignal { call_id: self.call_id, seq, sealed: self.tx.seal(&nonce(seq), &self.call_id, &plain) }
    }

    /// Opens a signal from the other side; None if forged, for another call, replayed, or
    /// not openable yet.
    pub fn open(&mut self, m: &SealedSignal) -> Option<Signal> {
        let rx = self.rx.as_ref()?;
        if m.call_id != self.call_id || !self.seen.check(m.seq) {
            return None;
        }
        let plain = rx.open(&nonce(m.seq), &self.call_id, &m.sealed).ok()?;
        let s = postcard::from_bytes(&plain).ok()?;
        self.seen.accept(m.seq);
        Some(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crypto::credential::Claims;
    use crate::crypto::keys::tests::test_key;
    use proptest::prelude::*;

    const NOW_MS: u64 = 1_700_000_000_000;

    fn host(name: &str, key: &PrivateKey, issuer: &PrivateKey) -> Credential {
        Credential::issue(
            Claims {
                kind: CredentialKind::Host,
                subject: name.into(),
                public_key: key.public().clone(),
                issued_at: NOW_MS / 1000 - 60,
                expires_at: NOW_MS / 1000 + 3600,
                serial: 1,
            },
            issuer,
        )
    }

    struct Two {
        trusted: TrustedKeys,
        alice: (Credential, PrivateKey),
        bob: (Credential, PrivateKey),
    }

    fn two() -> Two {
        let login = test_key(0);
        let (ka, kb) = (test_key(1), test_key(2));
        Two {
            trusted: TrustedKeys::new(vec![login.public().clone()]),
            alice: (host("alice", &ka, &login), ka),
            bob: (host("bob", &kb, &login), kb),
        }
    }

    fn cand() -> Vec<Candidate> {
        vec![Candidate { kind: CandidateKind::Public, addr: "198.18.0.7:40000".parse().unwrap() }]
    }

    #[test]
    fn both_sides_authenticate_and_share_the_key() {
        let t = two();
        let (invite, offer, mut a) =
            Invite::make(&t.alice.0, &t.alice.1, "sn1", &t.bob.0, vec![Codec::Opus, Codec::L16], cand(), NOW_MS);
        let wire = Invite::decode(&invite.encode()).unwrap();
        let opened = wire.open(&t.trusted, "Bob", &t.bob.1, NOW_MS + 50, 30_000).unwrap();
        assert_eq!(opened.caller.subject, "alice");
        let (reply, bobs_key) =
            Reply::make(&opened, &t.bob.0, &t.bob.1, &[Codec::L16], false, cand(), NOW_MS + 60).unwrap();
        assert_eq!(reply.body.codec, Codec::L16, "the first offered codec the callee supports");
        let reply = Reply::decode(&reply.encode()).unwrap();
        let callee = reply.verify(&invite, &t.trusted, NOW_MS + 70).unwrap();
        assert_eq!(callee.subject, "bob");
        let alices_key = offer.key(&invite, &reply).unwrap();
        assert_eq!(alices_key.0, bobs_key.0, "both ends hold the call's key");
        assert_ne!(alices_key.0, opened.wrapped.0, "the call's key is not the wrapped secret");

        // Signals both ways, under keys only the two of them hold. The caller can seal
        // before the reply; it opens the callee's signals only with the call's key.
        let mut b = SignalChannel::callee(&opened, &bobs_key);
        let cancel = a.seal(Signal::Cancel);
        let m = b.seal(Signal::Accept);
        assert!(!a.can_open());
        assert_eq!(a.open(&m), None, "not before the reply");
        a.set_key(&alices_key);
        assert_eq!(a.open(&SealedSignal::decode(&m.encode()).unwrap()), Some(Signal::Accept));
        assert_eq!(a.open(&m), None, "a replayed signal is refused");
        assert_eq!(b.open(&cancel), Some(Signal::Cancel));
        let own = b.seal(Signal::HangUp);
        assert_eq!(b.open(&own), None, "our own signal does not open as theirs");
        let mut forged = a.seal(Signal::HangUp);
        forged.sealed[0] ^= 1;
        assert_eq!(b.open(&forged), None);
        let mut other_call = a.seal(Signal::HangUp);
        other_call.call_id[0] ^= 1;
        assert_eq!(b.open(&other_call), None);
        assert_eq!(b.open(&a.seal(Signal::HangUp)), Some(Signal::HangUp));
        let moved = Signal::Moved { supernode: "sn-7".into() };
        assert_eq!(a.open(&b.seal(moved.clone())), Some(moved.clone()), "either side says where it moved");
        assert_eq!(b.open(&a.seal(moved.clone())), Some(moved));
    }

    /// A callee that lost the call ids it had seen (a restart) opens a replayed invite
    /// again; its fresh key share makes a new call key every time, so the replayer gets
    /// nothing sealed under a key used before, and cannot derive the key itself.
    #[test]
    fn a_replayed_invite_never_yields_a_key_used_before() {
        let t = two();
        let (invite, offer, _) =
            Invite::make(&t.alice.0, &t.alice.1, "sn1", &t.bob.0, vec![Codec::Opus], cand(), NOW_MS);
        let mut keys = std::collections::HashSet::new();
        for _ in 0..3 {
            let opened = invite.open(&t.trusted, "bob", &t.bob.1, NOW_MS, 30_000).unwrap();
            let (reply, key) = Reply::make(&opened, &t.bob.0, &t.bob.1, &[Codec::Opus], false, cand(), NOW_MS).unwrap();
            assert!(keys.insert(key.0), "a call key came back");
            // Only the caller's secrets complete it.
            assert_eq!(offer.key(&invite, &reply).unwrap().0, key.0);
            let (_, other, _) =
                Invite::make(&t.alice.0, &t.alice.1, "sn1", &t.bob.0, vec![Codec::Opus], cand(), NOW_MS);
            assert_ne!(other.key(&invite, &reply).unwrap().0, key.0);
        }
    }

    #[test]
    fn a_seeded_generator_gives_the_same_call_id_and_secret() {
        use rand::SeedableRng;
        let t = two();
        let caller = Caller { me: &t.alice.0, key: &t.alice.1, supernode: "sn1" };
        let make = |seed: u64| {
            let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
            let (invite, _, _) = Invite::make_with_rng(caller, &t.bob.0, vec![Codec::Opus], cand(), NOW_MS, &mut rng);
            let opened = invite.open(&t.trusted, "bob", &t.bob.1, NOW_MS, 30_000).unwrap();
            (invite.body.call_id, opened.wrapped.0)
        };
        let (id, secret) = make(1);
        assert_eq!(make(1), (id, secret), "same seed, same call id and wrapped secret");
        let (other_id, other_secret) = make(2);
        assert_ne!(other_id, id);
        assert_ne!(other_secret, secret);
        assert_ne!(id[..], secret[..16], "the call id is not a slice of the secret");
    }

    #[test]
    fn a_busy_reply_keys_the_call_and_shows_no_candidates() {
        let t = two();
        let (invite, offer, _) =
            Invite::make(&t.alice.0, &t.alice.1, "sn1", &t.bob.0, vec![Codec::Opus], cand(), NOW_MS);
        let opened = invite.open(&t.trusted, "bob", &t.bob.1, NOW_MS, 30_000).unwrap();
        let (reply, key) = Reply::make(&opened, &t.bob.0, &t.bob.1, &[Codec::Opus], true, cand(), NOW_MS).unwrap();
        assert!(reply.body.busy && reply.body.candidates.is_empty());
        reply.verify(&invite, &t.trusted, NOW_MS).unwrap();
        assert_eq!(offer.key(&invite, &reply).unwrap().0, key.0);
        let mut unbusy = reply.clone();
        unbusy.body.busy = false;
        assert_eq!(unbusy.verify(&invite, &t.trusted, NOW_MS).unwrap_err(), CallError::BadSignature);
        // A low-order key share is refused rather than keying the call with zeros.
        let mut weak = reply;
        weak.body.key_share = [0; 32];
        assert_eq!(offer.key(&invite, &weak).unwrap_err(), CallError::BadKey);
    }

    /// A creation time past i64::MAX overflowed the age computation (a panic with
    /// overflow checks) before the signature was looked at; fuzz/regressions/invite-created-ms-overflow.
    #[test]
    fn any_creation_time_is_stale_or_fresh_never_a_panic() {
        let t = two();
        let (mut invite, _, _) =
            Invite::make(&t.alice.0, &t.alice.1, "sn1", &t.bob.0, vec![Codec::Opus], cand(), NOW_MS);
        for created_ms in [1 << 63, (1 << 63) + NOW_MS, u64::MAX, 0] {
            invite.body.created_ms = created_ms;
            let wire = Invite::decode(&invite.encode()).unwrap();
            assert!(matches!(wire.open(&t.trusted, "bob", &t.bob.1, NOW_MS, 30_000), Err(CallError::Stale(_))));
        }
        assert_eq!(check_time(NOW_MS + 5, NOW_MS, 30_000), Ok(()));
        assert_eq!(check_time(NOW_MS + 40_000, NOW_MS, 30_000), Err(CallError::Stale(40_000)));
        assert_eq!(check_time(NOW_MS - 40_000, NOW_MS, 30_000), Err(CallError::Stale(-40_000)));
        assert_eq!(check_time(u64::MAX, NOW_MS, 30_000), Err(CallError::Stale(i64::MAX)));
    }

    #[test]
    fn bad_invites_are_refused_with_a_reason() {
        let t = two();
        let (invite, _, _) = Invite::make(&t.alice.0, &t.alice.1, "sn1", &t.bob.0, vec![Codec::Opus], cand(), NOW_MS);
        assert_eq!(
            invite.open(&t.trusted, "carol", &t.bob.1, NOW_MS, 30_000).unwrap_err(),
            CallError::NotForUs("bob".into())
        );
        assert!(matches!(invite.open(&t.trusted, "bob", &t.bob.1, NOW_MS + 31_000, 30_000), Err(CallError::Stale(_))));
        assert_eq!(invite.open(&t.trusted, "bob", &t.alice.1, NOW_MS, 30_000).unwrap_err(), CallError::BadKey);
        let mut forged = invite.clone();
        forged.body.codecs = vec![Codec::L16];
        assert_eq!(forged.open(&t.trusted, "bob", &t.bob.1, NOW_MS, 30_000).unwrap_err(), CallError::BadSignature);
        let mut impostor = invite.clone();
        impostor.body.caller = "mallory".into();
        assert_eq!(
            impostor.open(&t.trusted, "bob", &t.bob.1, NOW_MS, 30_000).unwrap_err(),
            CallError::WrongSender("alice".into())
        );
        let untrusted = TrustedKeys::new(vec![test_key(3).public().clone()]);
        assert!(matches!(invite.open(&untrusted, "bob", &t.bob.1, NOW_MS, 30_000), Err(CallError::Credential(_))));

        // A reply must answer this invite, come from the callee, and pick an offered codec.
        let opened = invite.open(&t.trusted, "bob", &t.bob.1, NOW_MS, 30_000).unwrap();
        assert_eq!(
            Reply::make(&opened, &t.bob.0, &t.bob.1, &[Codec::L16], false, cand(), NOW_MS).unwrap_err(),
            CallError::NoCodec
        );
        let (reply, _) = Reply::make(&opened, &t.bob.0, &t.bob.1, &[Codec::Opus], false, cand(), NOW_MS).unwrap();
        let (other, _, _) = Invite::make(&t.alice.0, &t.alice.1, "sn1", &t.bob.0, vec![Codec::Opus], cand(), NOW_MS);
        assert_eq!(reply.verify(&other, &t.trusted, NOW_MS).unwrap_err(), CallError::WrongCall);
        let (by_alice, _) =
            Reply::make(&opened, &t.alice.0, &t.alice.1, &[Codec::Opus], false, cand(), NOW_MS).unwrap();
        assert_eq!(by_alice.verify(&invite, &t.trusted, NOW_MS).unwrap_err(), CallError::WrongSender("alice".into()));
        let mut tampered = reply.clone();
        tampered.body.candidates.clear();
        assert_eq!(tampered.verify(&invite, &t.trusted, NOW_MS).unwrap_err(), CallError::BadSignature);
    }

    #[test]
    fn a_file_invite_binds_its_transfer_to_the_invite_and_older_kinds_stay_as_they_were() {
        let t = two();
        let (invite, _, _) = Invite::make(&t.alice.0, &t.alice.1, "sn1", &t.bob.0, vec![Codec::Opus], cand(), NOW_MS);
        let voice = CallMessage::Invite(invite.clone()).encode();
        let f = FileInvite::make(invite.clone(), [7; 16], &t.alice.1);
        let m = CallMessage::FileInvite(f.clone()).encode();
        // The voice invite's bytes are what they were; the file invite is a new variant after them.
        assert_eq!(voice[0], 0);
        assert_eq!(m[0], 3);
        assert!(m.len() <= crate::buddy::notice::NOTICE_LEN_MAX - 8, "{} bytes", m.len());
        let CallMessage::FileInvite(back) = CallMessage::decode(&m).unwrap() else { panic!("a file invite") };
        assert_eq!(back, f);
        assert_eq!(back.invite.open(&t.trusted, "bob", &t.bob.1, NOW_MS, 30_000).unwrap().call_id, invite.body.call_id);
        back.verify(&t.alice.0).unwrap();
        let mut other = back.clone();
        other.transfer = [8; 16];
        assert_eq!(other.verify(&t.alice.0).unwrap_err(), CallError::BadSignature);
        let by_bob = FileInvite::make(invite.clone(), [7; 16], &t.bob.1);
        assert_eq!(by_bob.verify(&t.alice.0).unwrap_err(), CallError::BadSignature);
        // Only a file invite may be longer than a call message.
        let long =
            CallMessage::Signal(SealedSignal { call_id: [0; 16], seq: 0, sealed: vec![0; CALL_MESSAGE_LEN_MAX] });
        assert_eq!(CallMessage::decode(&long.encode()).unwrap_err(), CallError::Malformed);
    }

    proptest! {
        #[test]
        fn decoders_are_total(b in proptest::collection::vec(any::<u8>(), 0..2500)) {
            let _ = Invite::decode(&b);
            let _ = Reply::decode(&b);
            let _ = SealedSignal::decode(&b);
            let _ = CallMessage::decode(&b);
        }
    }
}
