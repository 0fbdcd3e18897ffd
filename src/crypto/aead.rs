//! AES-256-GCM sealing with keys derived from a handshake secret.

use aes::Aes256;
use aes_gcm::AesGcm;
use aes_gcm::aead::consts::U12;
use aes_gcm::aead::{Aead, KeyInit, Payload};
use sha2::{Digest, Sha256};

/// AES-256 in GCM mode with the standard 96-bit nonce.
type Cipher = AesGcm<Aes256, U12>;

/// Length of the GCM authentication tag appended to every sealed payload.
pub const TAG_LEN: usize = 16;

/// A 256-bit secret shared by the two ends of a handshake (the "K" of the design).
#[derive(Clone)]
pub struct SessionSecret(pub [u8; 32]);

impl SessionSecret {
    /// A fresh random secret.
    pub fn generate() -> Self {
        Self(super::random::bytes())
    }

    /// Derives the AEAD key for one purpose, so the same secret never keys two streams.
    pub fn derive(&self, label: &str) -> SealKey {
        let mut h = Sha256::new();
        h.update(b"confab/v1/kdf\0");
        h.update(label.as_bytes());
        h.update([0]);
        h.update(self.0);
        SealKey(h.finalize().into())
    }
}

// Secrets are wiped when dropped, so a freed page or a core dump does not keep them.
impl Drop for SessionSecret {
    fn drop(&mut self) {
        zeroize::Zeroize::zeroize(&mut self.0);
    }
}

impl Drop for SealKey {
    fn drop(&mut self) {
        zeroize::Zeroize::zeroize(&mut self.0);
    }
}

impl std::fmt::Debug for SessionSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SessionSecret(..)")
    }
}

/// Key labels: one per direction and purpose.
pub mod label {
    /// The body of a handshake request (login, register, super-node auth).
    pub const REQUEST: &str = "request";
    /// Frames from the side that opened the association to the side that listens.
    pub const INITIATOR_TO_RESPONDER: &str = "i2r";
    /// Frames from the listening side back to the side that opened the association.
    pub const RESPONDER_TO_INITIATOR: &str = "r2i";
}

/// An AES-256-GCM key.
#[derive(Clone)]
pub struct SealKey([u8; 32]);

/// Authentication failed: wrong key, tampered ciphertext, tampered associated data.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("authentication failed")]
pub struct OpenError;

impl SealKey {
    /// Wraps raw key bytes.
    pub fn from_bytes(b: [u8; 32]) -> Self {
        Self(b)
    }

    fn cipher(&self) -> Cipher {
        Cipher::new(&self.0.into())
    }

    /// Encrypts and authenticates `plaintext`, binding `aad`; the result carries the tag.
    pub fn seal(&self, nonce: &[u8; 12], aad: &[u8], plaintext: &[u8]) -> Vec<u8> {
        self.cipher()
            .encrypt(&(*nonce).into(), Payload { msg: plaintext, aad })
            // Only fails for inputs of gigabytes; frames are bounded far below that.
            .expect("AES-GCM input within limits")
    }

    /// Checks and decrypts what [`SealKey::seal`] produced.
    pub fn open(&self, nonce: &[u8; 12], aad: &[u8], sealed: &[u8]) -> Result<Vec<u8>, OpenError> {
        if sealed.len() < TAG_LEN {
            return Err(OpenError);
        }
        self.cipher().decrypt(&(*nonce).into(), Payload { msg: sealed, aad }).map_err(|_| OpenError)
    }
}

impl std::fmt::Debug for SealKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SealKey(..)")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn labels_give_independent_keys() {
        let k = SessionSecret([7; 32]);
        let a = k.derive(label::INITIATOR_TO_RESPONDER);
        let b = k.derive(label::RESPONDER_TO_INITIATOR);
        let sealed = a.seal(&[0; 12], b"", b"hello");
        assert!(b.open(&[0; 12], b"", &sealed).is_err());
        assert_eq!(a.open(&[0; 12], b"", &sealed).unwrap(), b"hello");
    }

    proptest! {
        #[test]
        fn any_bit_flip_is_rejected(msg in proptest::collection::vec(any::<u8>(), 0..200), aad in proptest::collection::vec(any::<u8>(), 0..40), bit in 0usize..1000) {
            let k = SessionSecret([1; 32]).derive("t");
            let mut sealed = k.seal(&[3; 12], &aad, &msg);
            let i = bit % (sealed.len() * 8);
            sealed[i / 8] ^= 1 << (i % 8);
            prop_assert!(k.open(&[3; 12], &aad, &sealed).is_err());
        }

        #[test]
        fn open_never_panics(garbage in proptest::collection::vec(any::<u8>(), 0..100)) {
            let k = SessionSecret([1; 32]).derive("t");
            let _ = k.open(&[0; 12], b"", &garbage);
        }
    }
}
