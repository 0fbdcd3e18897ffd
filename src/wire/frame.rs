//! The frame: a clear version byte and nonce, an RC4-obfuscated header, then the payload.
//!
//! ```text
//!  0      1          9                 17
//!  +------+----------+-----------------+----------------------------------+
//!  | ver  | nonce(8) | header(8), RC4  | payload (plain, or AES-256-GCM)  |
//!  +------+----------+-----------------+----------------------------------+
//!  header = kind(1) flags(1) session(4) payload_len(2), big-endian
//! ```
//!
//! On UDP a datagram is exactly one frame; on TCP each frame is preceded by its length
//! as a big-endian `u16`. See `docs/protocol.md` for the whole story.

use super::message::MessageKind;
use crate::crypto::aead::{OpenError, SealKey};
use crate::crypto::obfuscation;
use std::net::SocketAddr;

/// The only protocol version this build speaks.
pub const VERSION: u8 = 1;
/// Version byte + nonce + header.
pub const PREFIX_LEN: usize = 17;
/// Largest payload. With 2048-bit keys the handshake frames fit one unfragmented
/// datagram on common 1500-byte paths (Auth, the largest, is about 1200 bytes); 4096-bit
/// keys make Auth about 2200 bytes, and a Welcome listing 24 super nodes with long names
/// and IPv6 addresses reaches about 2500: those rely on IP fragmentation over UDP, or TCP.
pub const PAYLOAD_LEN_MAX: usize = 3072;
/// Largest frame on any transport.
pub const FRAME_LEN_MAX: usize = PREFIX_LEN + PAYLOAD_LEN_MAX;

/// Header flag: the payload is AES-256-GCM sealed and the nonce is a sequence number.
pub const FLAG_SEALED: u8 = 0x01;

/// Why a frame was rejected; the label doubles as the metric's `reason`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum FrameError {
    /// Shorter than the fixed prefix.
    #[error("truncated frame")]
    Truncated,
    /// Longer than [`FRAME_LEN_MAX`].
    #[error("oversized frame")]
    Oversized,
    /// A version this build does not speak.
    #[error("unsupported protocol version {0}")]
    UnknownVersion(u8),
    /// The header's length does not match the bytes present (also what a wrong RC4 key gives).
    #[error("length mismatch")]
    LengthMismatch,
    /// Reserved flag bits set.
    #[error("unknown flags")]
    BadFlags,
    /// An unknown message kind.
    #[error("unknown message kind {0:#04x}")]
    UnknownKind(u8),
    /// A kind that must be sealed arrived in the clear, or the reverse.
    #[error("message kind {0:?} with the wrong sealing")]
    WrongSealing(MessageKind),
    /// AES-GCM authentication failed.
    #[error("authentication failed")]
    Unauthenticated,
    /// A sequence number already seen, or too old to tell.
    #[error("replayed frame")]
    Replayed,
}

impl FrameError {
    /// A short, stable label for metrics and logs.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::Truncated => "truncated",
            Self::Oversized => "oversized",
            Self::UnknownVersion(_) => "unknown_version",
            Self::LengthMismatch => "length_mismatch",
            Self::BadFlags => "bad_flags",
            Self::UnknownKind(_) => "unknown_kind",
            Self::WrongSealing(_) => "wrong_sealing",
            Self::Unauthenticated => "unauthenticated",
            Self::Replayed => "replayed",
        }
    }
}

impl From<OpenError> for FrameError {
    fn from(_: OpenError) -> Self {
        Self::Unauthenticated
    }
}

/// Which way a sealed frame travels; part of its AES-GCM nonce so the two directions of
/// one association can never collide even if they used the same key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    /// From the side that opened the association (host) to the listening side.
    ToResponder,
    /// From the listening side back.
    ToInitiator,
}

/// The decoded header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    /// What the payload is.
    pub kind: MessageKind,
    /// Whether the payload is sealed.
    pub sealed: bool,
    /// The super node's session id (0 before one is assigned).
    pub session: u32,
}

/// A frame whose header was read but whose payload is not opened yet.
#[derive(Debug)]
pub struct RawFrame<'a> {
    /// The header.
    pub header: Header,
    /// The clear nonce: random for plain frames, the sequence number for sealed ones.
    pub nonce: [u8; 8],
    clear_prefix: [u8; PREFIX_LEN],
    /// The payload as received.
    pub payload: &'a [u8],
}

impl RawFrame<'_> {
    /// The sequence number of a sealed frame.
    pub fn seq(&self) -> u64 {
        u64::from_be_bytes(self.nonce)
    }

    /// Authenticates and decrypts a sealed payload.
    pub fn open(&self, key: &SealKey, dir: Direction) -> Result<Vec<u8>, FrameError> {
        if !self.header.sealed {
            return Err(FrameError::WrongSealing(self.header.kind));
        }
        Ok(key.open(&gcm_nonce(dir, &self.nonce), &self.clear_prefix, self.payload)?)
    }
}

fn gcm_nonce(dir: Direction, nonce: &[u8; 8]) -> [u8; 12] {
    let mut n = [0u8; 12];
    n[0] = match dir {
        Direction::ToResponder => 0,
        Direction::ToInitiator => 1,
    };
    n[4..].copy_from_slice(nonce);
    n
}

fn header_bytes(kind: MessageKind, sealed: bool, session: u32, len: usize) -> [u8; 8] {
    let mut h = [0u8; 8];
    h[0] = kind as u8;
    h[1] = if sealed { FLAG_SEALED } else { 0 };
    h[2..6].copy_from_slice(&session.to_be_bytes());
    h[6..8].copy_from_slice(&(len as u16).to_be_bytes());
    h
}

/// Reads the prefix of one frame. `listener` is the address of the association's
/// listening side (the super node or login server), which keys the RC4 obfuscation.
pub fn decode(listener: SocketAddr, bytes: &[u8]) -> Result<RawFrame<'_>, FrameError> {
    if bytes.len() < PREFIX_LEN {
        return Err(FrameError::Truncated);
    }
    if bytes[0] != VERSION {
        return Err(FrameError::UnknownVersion(bytes[0]));
    }
    if bytes.len() > FRAME_LEN_MAX {
        return Err(FrameError::Oversized);
    }
    let mut nonce = [0u8; 8];
    nonce.copy_from_slice(&bytes[1..9]);
    let mut header = [0u8; 8];
    header.copy_from_slice(&bytes[9..17]);
    obfuscation::apply(listener, &nonce, &mut header);
    let len = u16::from_be_bytes([header[6], header[7]]) as usize;
    if len != bytes.len() - PREFIX_LEN {
        return Err(FrameError::LengthMismatch);
    }
    if header[1] & !FLAG_SEALED != 0 {
        return Err(FrameError::BadFlags);
    }
    let kind = MessageKind::from_code(header[0]).ok_or(FrameError::UnknownKind(header[0]))?;
    let sealed = header[1] & FLAG_SEALED != 0;
    if !kind.sealing_allowed(sealed) {
        return Err(FrameError::WrongSealing(kind));
    }
    let session = u32::from_be_bytes([header[2], header[3], header[4], header[5]]);
    let mut clear_prefix = [0u8; PREFIX_LEN];
    clear_prefix[0] = VERSION;
    clear_prefix[1..9].copy_from_slice(&nonce);
    clear_prefix[9..].copy_from_slice(&header);
    Ok(RawFrame { header: Header { kind, sealed, session }, nonce, clear_prefix, payload: &bytes[PREFIX_LEN..] })
}

fn assemble(listener: SocketAddr, nonce: [u8; 8], header: [u8; 8], payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(PREFIX_LEN + payload.len());
    out.push(VERSION);
    out.extend_from_slice(&nonce);
    let mut h = header;
    obfuscation::apply(listener, &nonce, &mut h);
    out.extend_from_slice(&h);
    out.extend_from_slice(payload);
    out
}

/// Encodes a frame with a clear payload (only for handshake kinds), under a fresh random nonce.
pub fn encode_plain(listener: SocketAddr, kind: MessageKind, session: u32, body: &[u8]) -> Vec<u8> {
    encode_plain_with_nonce(listener, kind, session, body, crate::crypto::random::bytes())
}

/// [`encode_plain`] with the clear nonce given, so a caller that owns its randomness (a
/// seeded generator in tests) gets the same bytes from the same inputs.
pub fn encode_plain_with_nonce(
    listener: SocketAddr,
    kind: MessageKind,
    session: u32,
    body: &[u8],
    nonce: [u8; 8],
) -> Vec<u8> {
    debug_assert!(kind.sealing_allowed(false));
    assert!(body.len() <= PAYLOAD_LEN_MAX, "{kind:?} body of {} bytes", body.len());
    assemble(listener, nonce, header_bytes(kind, false, session, body.len()), body)
}

/// Encodes a sealed frame; `seq` must never repeat under one key and direction.
pub fn encode_sealed(
    listener: SocketAddr,
    kind: MessageKind,
    session: u32,
    seq: u64,
    key: &SealKey,
    dir: Direction,
    body: &[u8],
) -> Vec<u8> {
    debug_assert!(kind.sealing_allowed(true));
    let len = body.len() + crate::crypto::aead::TAG_LEN;
    assert!(len <= PAYLOAD_LEN_MAX, "{kind:?} body of {} bytes", body.len());
    let nonce = seq.to_be_bytes();
    let header = header_bytes(kind, true, session, len);
    let mut clear_prefix = [0u8; PREFIX_LEN];
    clear_prefix[0] = VERSION;
    clear_prefix[1..9].copy_from_slice(&nonce);
    clear_prefix[9..].copy_from_slice(&header);
    let sealed = key.seal(&gcm_nonce(dir, &nonce), &clear_prefix, body);
    assemble(listener, nonce, header, &sealed)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crypto::aead::SessionSecret;
    use proptest::prelude::*;

    fn addr() -> SocketAddr {
        "198.18.0.1:33033".parse().unwrap()
    }

    #[test]
    fn plain_round_trip() {
        let f = encode_plain(addr(), MessageKind::Hello, 0, b"hi");
        let raw = decode(addr(), &f).unwrap();
        assert_eq!(raw.header.kind, MessageKind::Hello);
        assert_eq!(raw.payload, b"hi");
        // The obfuscation hides the kind byte from a naive look.
        assert!(decode("198.18.0.2:33033".parse().unwrap(), &f).is_err());
    }

    #[test]
    fn plain_with_a_given_nonce_is_reproducible() {
        let a = encode_plain_with_nonce(addr(), MessageKind::Hello, 0, b"hi", [7; 8]);
        assert_eq!(a, encode_plain_with_nonce(addr(), MessageKind::Hello, 0, b"hi", [7; 8]));
        assert_ne!(a, encode_plain_with_nonce(addr(), MessageKind::Hello, 0, b"hi", [8; 8]));
        let raw = decode(addr(), &a).unwrap();
        assert_eq!(raw.nonce, [7; 8]);
        assert_eq!(raw.payload, b"hi");
    }

    #[test]
    fn sealed_round_trip_and_direction() {
        let key = SessionSecret([5; 32]).derive("x");
        let f = encode_sealed(addr(), MessageKind::Keepalive, 42, 9, &key, Direction::ToResponder, b"body");
        let raw = decode(addr(), &f).unwrap();
        assert_eq!(raw.header.session, 42);
        assert_eq!(raw.seq(), 9);
        assert_eq!(raw.open(&key, Direction::ToResponder).unwrap(), b"body");
        assert_eq!(raw.open(&key, Direction::ToInitiator), Err(FrameError::Unauthenticated));
    }

    #[test]
    fn sealing_rules_are_enforced() {
        // A sealed-only kind sent in the clear is refused before any crypto.
        let mut h = header_bytes(MessageKind::Welcome, false, 0, 2);
        let f = assemble(addr(), [1; 8], h, b"xx");
        assert_eq!(decode(addr(), &f).unwrap_err(), FrameError::WrongSealing(MessageKind::Welcome));
        h[1] = 0x80;
        let f = assemble(addr(), [1; 8], h, b"xx");
        assert_eq!(decode(addr(), &f).unwrap_err(), FrameError::BadFlags);
    }

    #[test]
    fn version_and_size_checks() {
        let mut f = encode_plain(addr(), MessageKind::Hello, 0, b"hi");
        f[0] = 2;
        assert_eq!(decode(addr(), &f).unwrap_err(), FrameError::UnknownVersion(2));
        assert_eq!(decode(addr(), &[1; 5]).unwrap_err(), FrameError::Truncated);
        assert_eq!(decode(addr(), &vec![1; FRAME_LEN_MAX + 1]).unwrap_err(), FrameError::Oversized);
    }

    proptest! {
        #[test]
        fn decode_is_total(bytes in proptest::collection::vec(any::<u8>(), 0..1600)) {
            if let Ok(raw) = decode(addr(), &bytes) {
                let key = SessionSecret([5; 32]).derive("x");
                let _ = raw.open(&key, Direction::ToResponder);
            }
        }

        #[test]
        fn any_bit_flip_of_a_sealed_frame_is_rejected(bit in 0usize..(8 * 60)) {
            let key = SessionSecret([5; 32]).derive("x");
            let mut f = encode_sealed(addr(), MessageKind::Keepalive, 42, 9, &key, Direction::ToResponder, b"0123456789");
            let i = bit % (f.len() * 8);
            f[i / 8] ^= 1 << (i % 8);
            let ok = decode(addr(), &f).and_then(|raw| raw.open(&key, Direction::ToResponder));
            prop_assert!(ok.is_err());
        }
    }
}
