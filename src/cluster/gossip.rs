//! Gossip packets between super nodes: foca's bytes sealed with the cluster key.
//!
//! ```text
//! "CFG1" (4) ‖ nonce (24, random) ‖ XChaCha20-Poly1305(cluster key, nonce, aad = "CFG1", payload)
//! ```
//!
//! Every super node of a cluster shares the 32-byte cluster secret (as a Serf keyring
//! does), so only cluster members can add, suspect or remove members. Many senders
//! share the key, so nonces are random and 192 bits long: no coordination, no reuse.

use chacha20poly1305::XChaCha20Poly1305;
use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use sha2::{Digest, Sha256};

const MAGIC: &[u8; 4] = b"CFG1";
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

    /// Seals one packet.
    pub fn seal(&self, payload: &[u8]) -> Vec<u8> {
        let nonce: [u8; NONCE_LEN] = crate::crypto::random::bytes();
        let ct =
            self.0.encrypt(&nonce.into(), Payload { msg: payload, aad: MAGIC }).expect("gossip payloads are small");
        let mut out = Vec::with_capacity(OVERHEAD + payload.len());
        out.extend_from_slice(MAGIC);
        out.extend_from_slice(&nonce);
        out.extend_from_slice(&ct);
        out
    }

    /// Opens one packet.
    pub fn open(&self, packet: &[u8]) -> Result<Vec<u8>, GossipError> {
        if packet.len() < OVERHEAD || &packet[..4] != MAGIC {
            return Err(GossipError);
        }
        let nonce: [u8; NONCE_LEN] = packet[4..4 + NONCE_LEN].try_into().expect("length checked");
        self.0.decrypt(&nonce.into(), Payload { msg: &packet[4 + NONCE_LEN..], aad: MAGIC }).map_err(|_| GossipError)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_other_clusters() {
        let k = ClusterKey::from_secret(&[1; 32]);
        let p = k.seal(b"members");
        assert_eq!(k.open(&p).unwrap(), b"members");
        assert!(ClusterKey::from_secret(&[2; 32]).open(&p).is_err());
        let mut bad = p.clone();
        bad[30] ^= 1;
        assert!(k.open(&bad).is_err());
        assert!(k.open(&p[..10]).is_err());
    }
}
