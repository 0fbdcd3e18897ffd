//! Packets between super nodes: membership gossip (foca's bytes), index requests, and the
//! hellos that exchange cluster certificates, told apart by their magic.
//!
//! ```text
//! data  = magic (4: "CFG2" gossip, "CFI2" index, "CFR2" revocation list) ‖ sender (8) ‖ counter (8) ‖
//!         ChaCha20-Poly1305(direction key, nonce = 0⁴ ‖ counter, aad = magic ‖ sender ‖ counter, payload)
//! hello = "CFH2" ‖ nonce (24) ‖ XChaCha20-Poly1305(cluster key, nonce, aad = magic, body),
//!         always HELLO_LEN bytes
//! body  = flags (1: bit 0 "answer me") ‖ sent_ms (8) ‖ certificate (u16 len) ‖ zero padding
//! ```
//!
//! The sender is its credential's key id; the counter grows with every packet it sends
//! (it starts at the unix time in µs, so a restart continues above the old one), and the
//! receiver keeps a replay window per sender. The pair key is derived from both nodes'
//! certified X25519 keys and the cluster secret (see [`super::cert`]), so a packet opens
//! only for the one node it was sealed for and only as from the one node that sealed
//! it. Each direction of a pair has its own key, and both static keys are fresh at every
//! start, so the counter alone is a nonce that never repeats under one key. Hellos, the only packets sealed under the shared cluster key alone, carry a
//! certificate (which proves itself) and are padded to one size, so answering one never
//! sends more bytes than came in.

use chacha20poly1305::XChaCha20Poly1305;
use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use sha2::{Digest, Sha256};

/// What a cluster packet carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Channel {
    /// SWIM membership.
    Gossip,
    /// Global Index requests between replicas.
    Index,
    /// A certificate exchange.
    Hello,
    /// The revocation list, spread between members (see [`super::revocation`]).
    Revocation,
}

impl Channel {
    fn magic(self) -> &'static [u8; 4] {
        match self {
            Self::Gossip => b"CFG2",
            Self::Index => b"CFI2",
            Self::Hello => b"CFH2",
            Self::Revocation => b"CFR2",
        }
    }

    /// The channel of a packet, by its magic.
    pub fn of(packet: &[u8]) -> Option<Self> {
        [Self::Gossip, Self::Index, Self::Hello, Self::Revocation]
            .into_iter()
            .find(|c| packet.get(..4) == Some(&c.magic()[..]))
    }
}

const NONCE_LEN: usize = 24;
const TAG_LEN: usize = 16;
/// Bytes before a data packet's ciphertext.
const DATA_HEADER: usize = 4 + 8 + 8;
/// Bytes a sealed data packet adds to its payload.
pub const OVERHEAD: usize = DATA_HEADER + TAG_LEN;
/// The size of every hello (room for the largest certificate).
pub const HELLO_LEN: usize = 2400;
const HELLO_BODY_LEN: usize = HELLO_LEN - 4 - NONCE_LEN - TAG_LEN;

/// A cluster packet that was not accepted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum GossipError {
    /// Not a cluster packet, or cut short.
    #[error("malformed cluster packet")]
    Malformed,
    /// Does not open with the key it names.
    #[error("cluster packet does not open")]
    BadMac,
}

/// The clear header of a data packet. Nothing in it counts until the packet opens.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    /// Gossip or index.
    pub channel: Channel,
    /// The claimed sender (its credential's key id).
    pub sender: [u8; 8],
    /// The sender's packet counter.
    pub counter: u64,
}

impl Header {
    /// Reads the header of a data packet; total.
    pub fn parse(packet: &[u8]) -> Result<Self, GossipError> {
        let channel = Channel::of(packet).filter(|c| *c != Channel::Hello).ok_or(GossipError::Malformed)?;
        if packet.len() < OVERHEAD {
            return Err(GossipError::Malformed);
        }
        let sender = packet[4..12].try_into().map_err(|_| GossipError::Malformed)?;
        let counter = u64::from_be_bytes(packet[12..20].try_into().map_err(|_| GossipError::Malformed)?);
        Ok(Self { channel, sender, counter })
    }

    fn aad(&self) -> [u8; 20] {
        let mut aad = [0u8; 20];
        aad[..4].copy_from_slice(self.channel.magic());
        aad[4..12].copy_from_slice(&self.sender);
        aad[12..].copy_from_slice(&self.counter.to_be_bytes());
        aad
    }
}

/// The keys two members share, one per direction (from the pair key of
/// [`super::cert::StaticSecret::pair_key`]). ChaCha20-Poly1305 from aws-lc: compiled
/// C, as fast in a debug build as in a release one.
#[derive(Clone)]
pub struct PairKey {
    send: std::sync::Arc<aws_lc_rs::aead::LessSafeKey>,
    recv: std::sync::Arc<aws_lc_rs::aead::LessSafeKey>,
}

impl std::fmt::Debug for PairKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("PairKey(..)")
    }
}

fn direction_key(pair: &[u8; 32], from: [u8; 8], to: [u8; 8]) -> std::sync::Arc<aws_lc_rs::aead::LessSafeKey> {
    use aws_lc_rs::aead::{CHACHA20_POLY1305, LessSafeKey, UnboundKey};
    let k: [u8; 32] = Sha256::new()
        .chain_update(b"confab/v1/cluster-dir\0")
        .chain_update(pair)
        .chain_update(from)
        .chain_update(to)
        .finalize()
        .into();
    std::sync::Arc::new(LessSafeKey::new(UnboundKey::new(&CHACHA20_POLY1305, &k).expect("32-byte key")))
}

fn nonce(counter: u64) -> aws_lc_rs::aead::Nonce {
    let mut n = [0u8; 12];
    n[4..].copy_from_slice(&counter.to_be_bytes());
    aws_lc_rs::aead::Nonce::assume_unique_for_key(n)
}

impl PairKey {
    /// The keys of node `me` with `peer`, from their pair key.
    pub fn new(pair: &[u8; 32], me: [u8; 8], peer: [u8; 8]) -> Self {
        Self { send: direction_key(pair, me, peer), recv: direction_key(pair, peer, me) }
    }

    /// Seals one data packet from `me` (`h.sender`); `h.counter` must never repeat.
    pub fn seal(&self, h: Header, payload: &[u8]) -> Vec<u8> {
        let mut out = Vec::with_capacity(OVERHEAD + payload.len());
        out.extend_from_slice(&h.aad());
        let mut body = payload.to_vec();
        self.send
            .seal_in_place_append_tag(nonce(h.counter), aws_lc_rs::aead::Aad::from(h.aad()), &mut body)
            .expect("cluster payloads are small");
        out.extend_from_slice(&body);
        out
    }

    /// Opens one data packet from the peer: its header and payload; total.
    pub fn open(&self, packet: &[u8]) -> Result<(Header, Vec<u8>), GossipError> {
        let h = Header::parse(packet)?;
        let mut body = packet.get(DATA_HEADER..).ok_or(GossipError::Malformed)?.to_vec();
        let n = self
            .recv
            .open_in_place(nonce(h.counter), aws_lc_rs::aead::Aad::from(h.aad()), &mut body)
            .map_err(|_| GossipError::BadMac)?
            .len();
        body.truncate(n);
        Ok((h, body))
    }
}

/// A hello: a member's certificate, and whether it wants the receiver's.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hello {
    /// Answer with your own hello.
    pub want_reply: bool,
    /// When it was sent (unix ms): old hellos are dropped.
    pub sent_ms: u64,
    /// The sender's encoded cluster certificate.
    pub cert: Vec<u8>,
}

/// The cluster's shared key: it seals hellos and salts every pair key.
#[derive(Clone)]
pub struct ClusterKey {
    aead: XChaCha20Poly1305,
    salt: [u8; 32],
}

impl std::fmt::Debug for ClusterKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ClusterKey(..)")
    }
}

impl ClusterKey {
    /// The key for a cluster secret.
    pub fn from_secret(secret: &[u8; 32]) -> Self {
        let k: [u8; 32] =
            Sha256::new().chain_update(b"confab/v2/gossip-hello\0").chain_update(secret).finalize().into();
        let salt = Sha256::new().chain_update(b"confab/v2/gossip-pair-salt\0").chain_update(secret).finalize().into();
        Self { aead: XChaCha20Poly1305::new(&k.into()), salt }
    }

    /// The salt of every pair key in this cluster.
    pub fn pair_salt(&self) -> &[u8; 32] {
        &self.salt
    }

    /// Seals a hello, padded to [`HELLO_LEN`]; None if the certificate does not fit.
    pub fn seal_hello(&self, hello: &Hello) -> Option<Vec<u8>> {
        let len = u16::try_from(hello.cert.len()).ok()?;
        if 1 + 8 + 2 + hello.cert.len() > HELLO_BODY_LEN {
            return None;
        }
        let mut body = Vec::with_capacity(HELLO_BODY_LEN);
        body.push(u8::from(hello.want_reply));
        body.extend_from_slice(&hello.sent_ms.to_be_bytes());
        body.extend_from_slice(&len.to_be_bytes());
        body.extend_from_slice(&hello.cert);
        body.resize(HELLO_BODY_LEN, 0);
        let magic = Channel::Hello.magic();
        let nonce: [u8; NONCE_LEN] = crate::crypto::random::bytes();
        let ct = self.aead.encrypt(&nonce.into(), Payload { msg: &body, aad: magic }).ok()?;
        let mut out = Vec::with_capacity(HELLO_LEN);
        out.extend_from_slice(magic);
        out.extend_from_slice(&nonce);
        out.extend_from_slice(&ct);
        Some(out)
    }

    /// Opens a hello; total.
    pub fn open_hello(&self, packet: &[u8]) -> Result<Hello, GossipError> {
        if Channel::of(packet) != Some(Channel::Hello) || packet.len() != HELLO_LEN {
            return Err(GossipError::Malformed);
        }
        let nonce: [u8; NONCE_LEN] = packet[4..4 + NONCE_LEN].try_into().map_err(|_| GossipError::Malformed)?;
        let body = self
            .aead
            .decrypt(&nonce.into(), Payload { msg: &packet[4 + NONCE_LEN..], aad: Channel::Hello.magic() })
            .map_err(|_| GossipError::BadMac)?;
        let flags = *body.first().ok_or(GossipError::Malformed)?;
        let sent_ms = u64::from_be_bytes(
            body.get(1..9).ok_or(GossipError::Malformed)?.try_into().map_err(|_| GossipError::Malformed)?,
        );
        let len = u16::from_be_bytes(
            body.get(9..11).ok_or(GossipError::Malformed)?.try_into().map_err(|_| GossipError::Malformed)?,
        );
        let cert = body.get(11..11 + usize::from(len)).ok_or(GossipError::Malformed)?.to_vec();
        Ok(Hello { want_reply: flags & 1 != 0, sent_ms, cert })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn header(channel: Channel) -> Header {
        Header { channel, sender: [4; 8], counter: 99 }
    }

    #[test]
    fn data_round_trip_and_every_tamper() {
        let (tx, k) = (PairKey::new(&[1; 32], [4; 8], [5; 8]), PairKey::new(&[1; 32], [5; 8], [4; 8]));
        let p = tx.seal(header(Channel::Gossip), b"members");
        assert_eq!(p.len(), OVERHEAD + 7);
        assert_eq!(k.open(&p).unwrap(), (header(Channel::Gossip), b"members".to_vec()));
        assert_eq!(tx.open(&p), Err(GossipError::BadMac), "each direction has its own key");
        let i = tx.seal(header(Channel::Index), b"fetch");
        assert_eq!(k.open(&i).unwrap().0.channel, Channel::Index);
        // The magic, the sender and the counter are authenticated.
        for at in [2usize, 5, 15, 22, i.len() - 1] {
            let mut bad = i.clone();
            bad[at] ^= if at == 2 { b'I' ^ b'G' } else { 1 };
            assert!(k.open(&bad).is_err(), "byte {at} flipped");
        }
        assert_eq!(PairKey::new(&[2; 32], [5; 8], [4; 8]).open(&p), Err(GossipError::BadMac));
        assert_eq!(k.open(&p[..OVERHEAD - 1]), Err(GossipError::Malformed));
    }

    #[test]
    fn hellos_are_one_size_and_only_open_in_their_cluster() {
        let k = ClusterKey::from_secret(&[1; 32]);
        let h = Hello { want_reply: true, sent_ms: 5, cert: vec![9; 1000] };
        let p = k.seal_hello(&h).unwrap();
        assert_eq!(p.len(), HELLO_LEN);
        assert_eq!(k.open_hello(&p).unwrap(), h);
        assert_eq!(ClusterKey::from_secret(&[2; 32]).open_hello(&p), Err(GossipError::BadMac));
        assert_eq!(k.open_hello(&p[..HELLO_LEN - 1]), Err(GossipError::Malformed));
        assert!(k.seal_hello(&Hello { cert: vec![0; HELLO_LEN], ..h }).is_none());
        assert_ne!(k.pair_salt(), ClusterKey::from_secret(&[2; 32]).pair_salt());
    }

    proptest! {
        /// Every opener is total: arbitrary bytes (with or without a valid magic) are
        /// refused, never a panic.
        #[test]
        fn openers_are_total(magic in 0usize..4, b in proptest::collection::vec(any::<u8>(), 0..2600)) {
            let mut p = [&b"CFG2"[..], b"CFI2", b"CFH2", b""][magic].to_vec();
            p.extend_from_slice(&b);
            let _ = Header::parse(&p);
            prop_assert!(PairKey::new(&[1; 32], [4; 8], [5; 8]).open(&p).is_err());
            prop_assert!(ClusterKey::from_secret(&[1; 32]).open_hello(&p).is_err());
        }
    }
}
