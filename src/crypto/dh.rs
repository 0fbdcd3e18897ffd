//! X25519 key agreement (RFC 7748), then HKDF-SHA256 (RFC 5869): the one place both the
//! cluster's pairwise keys and a call's fresh media key are agreed.

use aws_lc_rs::{agreement, hkdf};

/// An X25519 secret key: a node's static key (fresh at each start) or a call's ephemeral.
pub struct Secret(agreement::PrivateKey);

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("dh::Secret(..)")
    }
}

/// The agreement failed (a low-order or malformed peer key), or HKDF refused the length.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("X25519 agreement failed")]
pub struct AgreementError;

impl Secret {
    /// A fresh random secret.
    pub fn generate() -> Self {
        Self(agreement::PrivateKey::generate(&agreement::X25519).expect("X25519 key generation"))
    }

    /// A secret from 32 bytes the caller drew (a seeded generator in plain logic; any 32
    /// bytes are an X25519 key, clamped by the agreement).
    pub fn from_bytes(bytes: &[u8; 32]) -> Self {
        Self(
            agreement::PrivateKey::from_private_key(&agreement::X25519, bytes).expect("any 32 bytes are an X25519 key"),
        )
    }

    /// Its public key.
    pub fn public(&self) -> [u8; 32] {
        let p = self.0.compute_public_key().expect("X25519 public key");
        p.as_ref().try_into().expect("X25519 public keys are 32 bytes")
    }

    /// X25519 with `peer`, the shared secret handed to `kdf` (which must refuse an
    /// all-zero one). For derivations other than [`Secret::agree`]'s.
    pub fn agree_raw<T>(&self, peer: &[u8; 32], kdf: impl FnOnce(&[u8]) -> Result<T, ()>) -> Result<T, AgreementError> {
        let peer_key = agreement::UnparsedPublicKey::new(&agreement::X25519, peer);
        agreement::agree(&self.0, peer_key, AgreementError, |shared| kdf(shared).map_err(|_| AgreementError))
    }

    /// X25519 with `peer`, then HKDF-SHA256: extract with `salt`, expand with the
    /// concatenation of `info`, 32 bytes out. `extra` is mixed in after the shared
    /// secret (input key material = shared ‖ extra). An all-zero shared secret (a
    /// low-order peer key) is refused.
    pub fn agree(
        &self,
        peer: &[u8; 32],
        extra: &[u8],
        salt: &[u8],
        info: &[&[u8]],
    ) -> Result<[u8; 32], AgreementError> {
        let peer_key = agreement::UnparsedPublicKey::new(&agreement::X25519, peer);
        agreement::agree(&self.0, peer_key, AgreementError, |shared| {
            if shared.iter().all(|b| *b == 0) {
                return Err(AgreementError);
            }
            let mut ikm = zeroize::Zeroizing::new(Vec::with_capacity(shared.len() + extra.len()));
            ikm.extend_from_slice(shared);
            ikm.extend_from_slice(extra);
            let prk = hkdf::Salt::new(hkdf::HKDF_SHA256, salt).extract(&ikm);
            let mut out = [0u8; 32];
            prk.expand(info, hkdf::HKDF_SHA256).and_then(|okm| okm.fill(&mut out)).map_err(|_| AgreementError)?;
            Ok(out)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_secret_from_bytes_is_the_same_secret_each_time() {
        let (a, b) = (Secret::from_bytes(&[7; 32]), Secret::from_bytes(&[7; 32]));
        assert_eq!(a.public(), b.public());
        assert_ne!(a.public(), Secret::from_bytes(&[8; 32]).public());
        let peer = Secret::generate();
        let k = a.agree(&peer.public(), b"", b"s", &[b"i"]).unwrap();
        assert_eq!(k, peer.agree(&b.public(), b"", b"s", &[b"i"]).unwrap());
    }

    #[test]
    fn both_sides_agree_and_every_input_matters() {
        let (a, b) = (Secret::generate(), Secret::generate());
        let k = a.agree(&b.public(), b"x", b"salt", &[b"info"]).unwrap();
        assert_eq!(k, b.agree(&a.public(), b"x", b"salt", &[b"info"]).unwrap());
        assert_ne!(k, a.agree(&b.public(), b"y", b"salt", &[b"info"]).unwrap());
        assert_ne!(k, a.agree(&b.public(), b"x", b"pepper", &[b"info"]).unwrap());
        assert_ne!(k, a.agree(&b.public(), b"x", b"salt", &[b"other"]).unwrap());
        assert_ne!(k, a.agree(&Secret::generate().public(), b"x", b"salt", &[b"info"]).unwrap());
    }

    #[test]
    fn a_low_order_peer_key_is_refused() {
        // Low-order points: 0 (the identity's u) and 1 (a point of order 4); both give an
        // all-zero shared secret.
        assert_eq!(Secret::generate().agree(&[0; 32], b"", b"", &[]), Err(AgreementError));
        let mut one = [0u8; 32];
        one[0] = 1;
        assert_eq!(Secret::generate().agree(&one, b"", b"", &[]), Err(AgreementError));
    }
}
