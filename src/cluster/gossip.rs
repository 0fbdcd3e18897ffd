//! Packets between super nodes, sealed with the cluster key: membership gossip (foca's
//! bytes) and index requests share the gossip socket, told apart by their magic.
//!
//! ```text
//! magic (4: "CFG1" gossip, "CFI1" index) ‖ nonce (24, random) ‖
//!     XChaCha20-Poly1305(cluster key, nonce, aad = magic, payload)
//! ```
//!
//! Every super node of a cluster shares the 32-byte cluster secret (as a Serf keyring
//! does), so only cluster members can add, suspect or remove members. Many senders
//! share the key, so nonces are random and 192 bits long: no coordination, no reuse.

use chacha20poly1305::XChaCha20Poly1305;
use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use sha2::{Digest, Sha256};

/// What a cluster packet carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Channel {
    /// SWIM membership.
    Gossip,
    /// Global Index requests between replicas.
    Index,
}

impl Channel {
    fn magic(self) -> &'static [u8; 4] {
        match self {
            Self::Gossip => b"CFG1",
            Self::Index => b"CFI1",
        }
    }

    /// The channel of a packet, by its magic.
    pub fn of(packet: &[u8]) -> Option<Self> {
        [Self::Gossip, Self::Index].into_iter().find(|c| packet.get(..4) == Some(&c.magic()[..]))
    }
}
const NONCE_LEN: usize = 24;
/// Bytes a sealed packet adds to its payload.
pub const OVERHEAD: usize = 4 + NONCE_LEN + 16;

/// The cluster's gossip key.
#[derive(Clone)]
pub struct ClusterKey(XChaCha20Poly1305);

impl std::fmt::Debug for ClusterKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ClusterKey(..)")
    }
}

/// A gossip packet that does not open.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("gossip packet does not open with the cluster key")]
pub struct GossipError;

impl ClusterKey {
    /// The key for a cluster secret.
    pub fn from_secret(secret: &[u8; 32]) -> Self {
        let k: [u8; 32] = Sha256::new().chain_update(b"confab/v1/gossip\0").chain_update(secret).finalize().into();
        Self(XChaCha20Poly1305::new(&k.into()))
    }

    /// Seals one packet for `channel`.
    pub fn seal(&self, channel: Channel, payload: &[u8]) -> Vec<u8> {
        let magic = channel.magic();
        let nonce: [u8; NONCE_LEN] = crate::crypto::random::bytes();
        let ct =
            self.0.encrypt(&nonce.into(), Payload { msg: payload, aad: magic }).expect("cluster payloads are small");
        let mut out = Vec::with_capacity(OVERHEAD + payload.len());
        out.extend_from_slice(magic);
        out.extend_from_slice(&nonce);
        out.extend_from_slice(&ct);
        out
    }

    /// Opens one packet: its channel and payload.
    pub fn open(&self, packet: &[u8]) -> Result<(Channel, Vec<u8>), GossipError> {
        let channel = Channel::of(packet).ok_or(GossipError)?;
        if packet.len() < OVERHEAD {
            return Err(GossipError);
        }
        let nonce: [u8; NONCE_LEN] = packet[4..4 + NONCE_LEN].try_into().expect("length checked");
        let aad = channel.magic();
        let payload =
            self.0.decrypt(&nonce.into(), Payload { msg: &packet[4 + NONCE_LEN..], aad }).map_err(|_| GossipError)?;
        Ok((channel, payload))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_other_clusters() {
        let k = ClusterKey::from_secret(&[1; 32]);
        let p = k.seal(Channel::Gossip, b"members");
        assert_eq!(k.open(&p).unwrap(), (Channel::Gossip, b"members".to_vec()));
        let i = k.seal(Channel::Index, b"fetch");
        assert_eq!(k.open(&i).unwrap().0, Channel::Index);
        // The magic is authenticated: relabelling a packet breaks it.
        let mut relabelled = i.clone();
        relabelled[..4].copy_from_slice(b"CFG1");
        assert!(k.open(&relabelled).is_err());
        assert!(ClusterKey::from_secret(&[2; 32]).open(&p).is_err());
        let mut bad = p.clone();
        bad[30] ^= 1;
        assert!(k.open(&bad).is_err());
        assert!(k.open(&p[..10]).is_err());
    }
}
