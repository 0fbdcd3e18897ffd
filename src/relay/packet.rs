//! The relay header, prefixed by a host to each media packet it sends through a relay.
//!
//! ```text
//!  0      1                  5                 21
//!  | 0x52 | session id (BE)  | token (16)      | inner packet (sealed end to end) … |
//! ```
//!
//! The session id finds the session; the token says which leg (A or B) sent it and
//! proves the sender was granted that leg. The inner packet is opaque to the relay.
//!
//! **What is forwarded.** The relay forwards the datagram unchanged except that the 16
//! token bytes are zeroed in place ([`wipe_token`]):
//! - the receiver never learns the sender's token, so it cannot speak as the other leg;
//! - a forwarded copy never carries a valid token, so a datagram that finds its way back
//!   to a relay (a leg latched to a relay's own address, two relays pointed at each
//!   other) is dropped as `bad_token` at the next hop instead of looping;
//! - keeping the header (rather than sending `inner` alone) costs nothing — the send
//!   is from the same buffer — and lets the receiver tell a relayed packet (first byte
//!   0x52) from a direct one (media kinds 0x4d/0x50/0x51) and which relay session it
//!   came through (useful during a relay failover).
//!
//! Hosts use [`build`] to send and [`parse`] to unwrap what a relay forwarded (its token
//! is all zeros).

use super::table::DropReason;
use crate::call::media;
use subtle::ConstantTimeEq;

/// First byte of every relayed datagram ('R').
pub const MAGIC: u8 = 0x52;
/// Bytes in a relay token.
pub const TOKEN_LEN: usize = 16;
/// Bytes before the inner packet: magic, session id, token.
pub const RELAY_HEADER_LEN: usize = 1 + 4 + TOKEN_LEN;
/// The first byte of a file transfer's QUIC datagram inside the relay header (media
/// starts with its own kinds' bytes).
pub const FILE_DEMUX: u8 = 0x54;

/// Whether a relayed datagram carries a file transfer's QUIC datagram.
pub fn is_file(datagram: &[u8]) -> bool {
    datagram.first() == Some(&MAGIC) && datagram.get(RELAY_HEADER_LEN) == Some(&FILE_DEMUX)
}

/// Whether a datagram on a host's port P is a file transfer's: behind the demux byte, or
/// inside a relay header.
pub fn is_file_on_port(datagram: &[u8]) -> bool {
    datagram.first() == Some(&FILE_DEMUX) || is_file(datagram)
}

/// Largest relayed datagram: the header plus the largest media packet (2048 bytes).
///
/// Every packet `call::media` can produce fits (Opus at most 17 + 1276 + 16 = 1309
/// inner bytes; L16, the lab codec, 17 + 1920 + 16 = 1953) and anything longer is
/// refused, so a relay cannot be used to push bulk data. Datagrams above 1472 bytes are
/// IP-fragmented on a 1500-byte MTU path; that only concerns L16, never Opus.
pub const RELAYED_LEN_MAX: usize = RELAY_HEADER_LEN + media::PACKET_LEN_MAX;

/// A relay session's id: random, nonzero, allocated by the session table.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SessionId(pub u32);

impl std::fmt::Display for SessionId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:08x}", self.0)
    }
}

/// A leg's 16-byte secret: whoever holds it may send on that leg.
///
/// Equality is constant time (`subtle`), and `Debug` never prints the bytes.
#[derive(Clone, Copy)]
pub struct Token([u8; TOKEN_LEN]);

impl Token {
    /// The all-zero token a forwarded datagram carries (never granted).
    pub const ZERO: Token = Token([0; TOKEN_LEN]);

    /// A token from its bytes (as received in signaling).
    pub fn from_bytes(bytes: [u8; TOKEN_LEN]) -> Self {
        Self(bytes)
    }

    /// A fresh random token from the operating system's CSPRNG (never all zeros).
    pub fn random() -> Self {
        loop {
            let t = Self(crate::crypto::random::bytes());
            if t != Self::ZERO {
                return t;
            }
        }
    }

    /// The token's bytes (to hand to the host it was granted to).
    pub fn as_bytes(&self) -> &[u8; TOKEN_LEN] {
        &self.0
    }
}

impl ConstantTimeEq for Token {
    fn ct_eq(&self, other: &Self) -> subtle::Choice {
        // As one 128-bit word: a few instructions where the byte slice's comparison
        // costs a fenced step per byte (the relay compares twice per datagram).
        u128::from_ne_bytes(self.0).ct_eq(&u128::from_ne_bytes(other.0))
    }
}

impl PartialEq for Token {
    fn eq(&self, other: &Self) -> bool {
        self.ct_eq(other).into()
    }
}

impl Eq for Token {}

impl std::fmt::Debug for Token {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Token(..)")
    }
}

/// Splits a relayed datagram into session id, token and inner packet. Total: any bytes
/// give a value or a reason, never a panic.
pub fn parse(datagram: &[u8]) -> Result<(SessionId, Token, &[u8]), DropReason> {
    if datagram.len() > RELAYED_LEN_MAX {
        return Err(DropReason::Oversized);
    }
    let Some((header, inner)) = datagram.split_first_chunk::<RELAY_HEADER_LEN>() else {
        return Err(DropReason::Malformed);
    };
    let [magic, s0, s1, s2, s3, token @ ..] = *header;
    if magic != MAGIC {
        return Err(DropReason::Malformed);
    }
    Ok((SessionId(u32::from_be_bytes([s0, s1, s2, s3])), Token(token), inner))
}

/// A datagram carrying `inner` on `session`'s leg identified by `token` (for hosts).
/// A relay drops it if it is longer than [`RELAYED_LEN_MAX`].
pub fn build(session: SessionId, token: Token, inner: &[u8]) -> Vec<u8> {
    let mut d = Vec::with_capacity(RELAY_HEADER_LEN + inner.len());
    d.push(MAGIC);
    d.extend_from_slice(&session.0.to_be_bytes());
    d.extend_from_slice(&token.0);
    d.extend_from_slice(inner);
    d
}

/// Zeroes the token bytes of a relayed datagram in place: what the relay does to every
/// datagram it forwards. Shorter input (which `parse` refuses anyway) is left alone.
pub fn wipe_token(datagram: &mut [u8]) {
    if let Some(token) = datagram.get_mut(5..RELAY_HEADER_LEN) {
        token.fill(0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn build_then_parse() {
        let t = Token::random();
        let d = build(SessionId(0xdead_beef), t, b"inner");
        assert_eq!(d.len(), RELAY_HEADER_LEN + 5);
        assert_eq!(&d[..5], &[0x52, 0xde, 0xad, 0xbe, 0xef]);
        let (s, tok, inner) = parse(&d).unwrap();
        assert_eq!((s, tok, inner), (SessionId(0xdead_beef), t, &b"inner"[..]));
    }

    #[test]
    fn limits_and_malformed() {
        assert_eq!(RELAY_HEADER_LEN, 21);
        assert_eq!(parse(&[]), Err(DropReason::Malformed));
        assert_eq!(parse(&[MAGIC; RELAY_HEADER_LEN - 1]), Err(DropReason::Malformed));
        let mut d = build(SessionId(1), Token::random(), &[]);
        assert!(parse(&d).is_ok(), "an empty inner packet is still a relayed datagram");
        d[0] = 0x4d;
        assert_eq!(parse(&d), Err(DropReason::Malformed));
        let t = Token::random();
        let largest = build(SessionId(1), t, &[7; media::PACKET_LEN_MAX]);
        assert_eq!(largest.len(), RELAYED_LEN_MAX);
        assert!(parse(&largest).is_ok());
        let too_long = build(SessionId(1), t, &[7; media::PACKET_LEN_MAX + 1]);
        assert_eq!(parse(&too_long), Err(DropReason::Oversized));
    }

    #[test]
    fn wiped_copy_keeps_everything_but_the_token() {
        let t = Token::random();
        let original = build(SessionId(42), t, b"sealed media");
        let mut fwd = original.clone();
        wipe_token(&mut fwd);
        let (s, tok, inner) = parse(&fwd).unwrap();
        assert_eq!((s, inner), (SessionId(42), &b"sealed media"[..]));
        assert_eq!(tok, Token::ZERO);
        assert_eq!(&fwd[..5], &original[..5]);
        assert_eq!(&fwd[RELAY_HEADER_LEN..], &original[RELAY_HEADER_LEN..]);
        let mut short = [MAGIC, 1, 2];
        wipe_token(&mut short);
        assert_eq!(short, [MAGIC, 1, 2]);
    }

    #[test]
    fn tokens_compare_in_constant_time_and_stay_secret() {
        let a = Token::from_bytes([9; TOKEN_LEN]);
        let mut last = [9; TOKEN_LEN];
        last[TOKEN_LEN - 1] = 8;
        let b = Token::from_bytes(last);
        assert!(bool::from(a.ct_eq(&a)));
        assert!(!bool::from(a.ct_eq(&b)));
        assert_ne!(a, b);
        assert_ne!(Token::random(), Token::ZERO);
        assert_eq!(format!("{a:?}"), "Token(..)");
    }

    proptest! {
        #[test]
        fn parse_is_total(bytes in proptest::collection::vec(any::<u8>(), 0..2200)) {
            let _ = parse(&bytes);
            let mut b = bytes.clone();
            wipe_token(&mut b);
        }

        #[test]
        fn parse_inverts_build(session: u32, token: [u8; 16], inner in proptest::collection::vec(any::<u8>(), 0..100)) {
            let d = build(SessionId(session), Token::from_bytes(token), &inner);
            let (s, t, i) = parse(&d).unwrap();
            prop_assert_eq!(s, SessionId(session));
            prop_assert_eq!(t, Token::from_bytes(token));
            prop_assert_eq!(i, &inner[..]);
        }
    }
}
