//! A user's own keys, the same on every device: derived from the password's list key, so
//! nothing new is stored anywhere and a device that was away reads what was sent to the
//! user meanwhile (`docs/chat.md` §0).
//!
//! - X25519: messages are sealed to it (ECIES: a fresh ephemeral key, X25519, HKDF-SHA256,
//!   AES-256-GCM), so only the user's devices open them.
//! - Ed25519: the user signs what it sends with it, so a recipient knows the user wrote it
//!   whichever device sent it.
//!
//! The public halves travel in the user's signed index entries, whose credential certifies
//! them.

use super::aead::SealKey;
use super::dh;
use super::password::ListKey;
use aws_lc_rs::signature::{self, Ed25519KeyPair, KeyPair};
use aws_lc_rs::{agreement, hkdf};

/// HKDF salt of both derivations.
const DERIVE_SALT: &[u8] = b"confab/v1/user-keys\0";
/// HKDF salt of a seal's key.
const SEAL_SALT: &[u8] = b"confab/v1/user-seal\0";
/// Bytes a seal adds to its plaintext: the ephemeral key and the GCM tag.
pub const SEAL_OVERHEAD: usize = 32 + super::aead::TAG_LEN;
/// Length of an Ed25519 signature.
pub const SIGNATURE_LEN: usize = 64;

/// A device of a user: the id of its home folder's RSA key (`host.key.pem`), the key its
/// credentials certify. Two sessions from one home folder are one device.
pub type DeviceId = super::keys::KeyId;

/// The public halves of a user's keys (64 bytes on the wire).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub struct UserPublicKeys {
    /// Messages are sealed to this X25519 key.
    pub x25519: [u8; 32],
    /// Messages are signed with the matching Ed25519 key.
    pub ed25519: [u8; 32],
}

/// A user's private keys.
pub struct UserKeys {
    x25519: agreement::PrivateKey,
    ed25519: Ed25519KeyPair,
    public: UserPublicKeys,
}

impl std::fmt::Debug for UserKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UserKeys").field("public", &self.public).finish_non_exhaustive()
    }
}

fn expand(list: &ListKey, label: &[u8]) -> zeroize::Zeroizing<[u8; 32]> {
    let prk = hkdf::Salt::new(hkdf::HKDF_SHA256, DERIVE_SALT).extract(&list.0);
    let mut out = zeroize::Zeroizing::new([0u8; 32]);
    prk.expand(&[label], hkdf::HKDF_SHA256).and_then(|okm| okm.fill(&mut out[..])).expect("HKDF-SHA256 gives 32 bytes");
    out
}

impl UserKeys {
    /// The user's keys, from the list key every device of the user derives from the password.
    pub fn derive(list: &ListKey) -> Self {
        let x = expand(list, b"x25519");
        let e = expand(list, b"ed25519");
        let x25519 = agreement::PrivateKey::from_private_key(&agreement::X25519, &x[..])
            .expect("any 32 bytes are an X25519 key");
        let ed25519 = Ed25519KeyPair::from_seed_unchecked(&e[..]).expect("any 32 bytes are an Ed25519 seed");
        let xp = x25519.compute_public_key().expect("X25519 public key");
        let public = UserPublicKeys {
            x25519: xp.as_ref().try_into().expect("X25519 public keys are 32 bytes"),
            ed25519: ed25519.public_key().as_ref().try_into().expect("Ed25519 public keys are 32 bytes"),
        };
        Self { x25519, ed25519, public }
    }

    /// The public halves.
    pub fn public(&self) -> UserPublicKeys {
        self.public
    }

    /// Signs `domain ‖ message` (the domain keeps one kind of signed object from passing as another).
    pub fn sign(&self, domain: &[u8], message: &[u8]) -> [u8; SIGNATURE_LEN] {
        let mut m = Vec::with_capacity(domain.len() + message.len());
        m.extend_from_slice(domain);
        m.extend_from_slice(message);
        self.ed25519.sign(&m).as_ref().try_into().expect("Ed25519 signatures are 64 bytes")
    }

    /// Opens what [`UserPublicKeys::seal`] sealed to these keys with the same `aad`.
    pub fn open(&self, aad: &[u8], sealed: &[u8]) -> Option<Vec<u8>> {
        if sealed.len() < SEAL_OVERHEAD {
            return None;
        }
        let eph: [u8; 32] = sealed[..32].try_into().ok()?;
        let peer = agreement::UnparsedPublicKey::new(&agreement::X25519, &eph);
        let key =
            agreement::agree(&self.x25519, peer, (), |shared| seal_key(shared, &eph, &self.public.x25519)).ok()?;
        key.open(&[0; 12], aad, &sealed[32..]).ok()
    }
}

/// The AEAD key of one seal: HKDF over the shared secret, bound to both public keys. Each
/// seal has a fresh ephemeral key, so the key is used once and the nonce can be fixed.
fn seal_key(shared: &[u8], eph: &[u8; 32], to: &[u8; 32]) -> Result<SealKey, ()> {
    if shared.iter().all(|b| *b == 0) {
        return Err(());
    }
    let mut ikm = zeroize::Zeroizing::new(Vec::with_capacity(96));
    ikm.extend_from_slice(shared);
    ikm.extend_from_slice(eph);
    ikm.extend_from_slice(to);
    let prk = hkdf::Salt::new(hkdf::HKDF_SHA256, SEAL_SALT).extract(&ikm);
    let mut out = [0u8; 32];
    prk.expand(&[b"aes-256-gcm"], hkdf::HKDF_SHA256).and_then(|okm| okm.fill(&mut out)).map_err(|_| ())?;
    Ok(SealKey::from_bytes(out))
}

impl UserPublicKeys {
    /// Encodes (64 bytes).
    pub fn to_bytes(&self) -> [u8; 64] {
        let mut b = [0; 64];
        b[..32].copy_from_slice(&self.x25519);
        b[32..].copy_from_slice(&self.ed25519);
        b
    }

    /// Decodes what [`UserPublicKeys::to_bytes`] gave.
    pub fn from_bytes(b: &[u8; 64]) -> Self {
        Self { x25519: b[..32].try_into().expect("32"), ed25519: b[32..].try_into().expect("32") }
    }

    /// Whether `signature` is the user's over `domain ‖ message`.
    pub fn verify(&self, domain: &[u8], message: &[u8], signature: &[u8]) -> bool {
        let mut m = Vec::with_capacity(domain.len() + message.len());
        m.extend_from_slice(domain);
        m.extend_from_slice(message);
        signature::UnparsedPublicKey::new(&signature::ED25519, &self.ed25519).verify(&m, signature).is_ok()
    }

    /// Seals `plaintext` so only this user's devices open it, binding `aad`. The result is
    /// [`SEAL_OVERHEAD`] bytes longer than the plaintext. None if the key is a low-order
    /// point (an entry can carry any 32 bytes).
    pub fn seal(&self, aad: &[u8], plaintext: &[u8]) -> Option<Vec<u8>> {
        self.seal_with(&dh::Secret::generate(), aad, plaintext)
    }

    /// [`UserPublicKeys::seal`] with the ephemeral key given (tests, and a caller that draws
    /// its own randomness). An ephemeral key must never be used twice.
    pub fn seal_with(&self, eph: &dh::Secret, aad: &[u8], plaintext: &[u8]) -> Option<Vec<u8>> {
        let eph_pub = eph.public();
        let key = eph.agree_raw(&self.x25519, |shared| seal_key(shared, &eph_pub, &self.x25519)).ok()?;
        let mut out = Vec::with_capacity(SEAL_OVERHEAD + plaintext.len());
        out.extend_from_slice(&eph_pub);
        out.extend(key.seal(&[0; 12], aad, plaintext));
        Some(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys(b: u8) -> UserKeys {
        UserKeys::derive(&ListKey([b; 32]))
    }

    #[test]
    fn every_device_derives_the_same_keys_and_other_users_others() {
        assert_eq!(keys(1).public(), keys(1).public());
        assert_ne!(keys(1).public().x25519, keys(2).public().x25519);
        assert_ne!(keys(1).public().ed25519, keys(2).public().ed25519);
        let p = keys(1).public();
        assert_eq!(UserPublicKeys::from_bytes(&p.to_bytes()), p);
    }

    #[test]
    fn a_seal_opens_only_for_its_user_and_its_aad() {
        let (alice, bob) = (keys(1), keys(2));
        let s = alice.public().seal(b"aad", b"hello").unwrap();
        assert_eq!(s.len(), 5 + SEAL_OVERHEAD);
        assert_eq!(alice.open(b"aad", &s).as_deref(), Some(&b"hello"[..]));
        assert_eq!(bob.open(b"aad", &s), None);
        assert_eq!(alice.open(b"other", &s), None);
        for i in 0..s.len() {
            let mut t = s.clone();
            t[i] ^= 0x40;
            assert_eq!(alice.open(b"aad", &t), None, "byte {i} flipped still opens");
        }
        assert_eq!(alice.open(b"aad", &s[..SEAL_OVERHEAD - 1]), None);
        assert_ne!(s, alice.public().seal(b"aad", b"hello").unwrap(), "each seal has a fresh ephemeral key");
    }

    #[test]
    fn a_low_order_key_is_refused_when_sealing() {
        let bad = UserPublicKeys { x25519: [0; 32], ed25519: [0; 32] };
        assert_eq!(bad.seal(b"", b"x"), None);
    }

    #[test]
    fn signatures_bind_user_domain_and_message() {
        let (alice, bob) = (keys(1), keys(2));
        let sig = alice.sign(b"d\0", b"m");
        assert!(alice.public().verify(b"d\0", b"m", &sig));
        assert!(!alice.public().verify(b"e\0", b"m", &sig));
        assert!(!alice.public().verify(b"d\0", b"n", &sig));
        assert!(!bob.public().verify(b"d\0", b"m", &sig));
        assert!(!alice.public().verify(b"d\0", b"m", &sig[..63]));
    }
}
