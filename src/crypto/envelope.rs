//! The RSA envelope of the original handshake: RSA(K ‖ R) plus AES(K) of a body.

use super::aead::{SessionSecret, label};
use super::keys::{PrivateKey, PublicKey};
use crate::wire::message::{AccountBody, COOKIE_LEN, Envelope, MessageKind};

/// What the receiver recovers from an envelope.
#[derive(Debug)]
pub struct Opened {
    /// The session secret K.
    pub secret: SessionSecret,
    /// The 32 random bytes R wrapped with K: the request's unique nonce.
    pub nonce: [u8; 32],
    /// The decrypted body.
    pub body: Vec<u8>,
}

/// Why an envelope could not be opened.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum EnvelopeError {
    /// Wrapped for a key we do not hold.
    #[error("envelope is for another key")]
    WrongKey,
    /// RSA or AES-GCM failed: corrupt, forged, or not for us.
    #[error("envelope does not open")]
    Corrupt,
}

/// Seals `body` for `receiver`, to travel in a message of `kind`; returns the envelope and
/// the secret K for the reply.
pub fn seal(
    receiver: &PublicKey,
    kind: MessageKind,
    cookie: [u8; COOKIE_LEN],
    body: &[u8],
) -> (Envelope, SessionSecret) {
    seal_with(receiver, kind, cookie, |_| body.to_vec())
}

/// Like [`seal`], but the body is built from the wrapped key, so that a signature inside
/// the body can cover it (binding the proof of possession to this one handshake).
pub fn seal_with(
    receiver: &PublicKey,
    kind: MessageKind,
    cookie: [u8; COOKIE_LEN],
    body: impl FnOnce(&[u8]) -> Vec<u8>,
) -> (Envelope, SessionSecret) {
    let secret = SessionSecret::generate();
    let nonce: [u8; 32] = super::random::bytes();
    let mut kr = [0u8; 64];
    kr[..32].copy_from_slice(&secret.0);
    kr[32..].copy_from_slice(&nonce);
    let wrapped = receiver.encrypt_oaep(&kr);
    let key_id = receiver.id().0;
    let body = body(&wrapped);
    let sealed = secret.derive(label::REQUEST).seal(&[0; 12], &Envelope::aad(kind, &key_id, &cookie), &body);
    (Envelope { key_id, cookie, wrapped, sealed }, secret)
}

/// Seals a LoginRequest's `body` for `receiver`, with its proof that the host holds
/// `host_key` (the key the body asks to have certified) bound to this envelope.
pub fn seal_login(receiver: &PublicKey, mut body: AccountBody, host_key: &PrivateKey) -> (Envelope, SessionSecret) {
    body.host_public_key = host_key.public().der().to_vec();
    seal_with(receiver, MessageKind::LoginRequest, [0; COOKIE_LEN], |wrapped| {
        body.possession = host_key.sign_pss(&body.possession_message(wrapped));
        body.encode()
    })
}

/// Opens an envelope that arrived in a message of `kind` with our private key.
pub fn open(key: &PrivateKey, kind: MessageKind, env: &Envelope) -> Result<Opened, EnvelopeError> {
    if env.key_id != key.public().id().0 {
        return Err(EnvelopeError::WrongKey);
    }
    let kr = key.decrypt_oaep(&env.wrapped).map_err(|_| EnvelopeError::Corrupt)?;
    if kr.len() != 64 {
        return Err(EnvelopeError::Corrupt);
    }
    let mut secret = [0u8; 32];
    secret.copy_from_slice(&kr[..32]);
    let mut nonce = [0u8; 32];
    nonce.copy_from_slice(&kr[32..]);
    let secret = SessionSecret(secret);
    let body = secret
        .derive(label::REQUEST)
        .open(&[0; 12], &Envelope::aad(kind, &env.key_id, &env.cookie), &env.sealed)
        .map_err(|_| EnvelopeError::Corrupt)?;
    Ok(Opened { secret, nonce, body })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crypto::keys::tests::test_key;

    #[test]
    fn round_trip_and_tamper() {
        let k = test_key(0);
        let (env, secret) = seal(k.public(), MessageKind::LoginRequest, [4; 32], b"body");
        let o = open(&k, MessageKind::LoginRequest, &env).unwrap();
        assert_eq!(o.body, b"body");
        assert_eq!(o.secret.0, secret.0);
        let mut other = env.clone();
        other.cookie[0] ^= 1;
        assert_eq!(open(&k, MessageKind::LoginRequest, &other).unwrap_err(), EnvelopeError::Corrupt);
        assert_eq!(open(&test_key(1), MessageKind::LoginRequest, &env).unwrap_err(), EnvelopeError::WrongKey);
        // A login request's body does not open as a registration (or anything else).
        assert_eq!(open(&k, MessageKind::RegisterRequest, &env).unwrap_err(), EnvelopeError::Corrupt);
        let mut bad = env;
        bad.wrapped[10] ^= 1;
        assert_eq!(open(&k, MessageKind::LoginRequest, &bad).unwrap_err(), EnvelopeError::Corrupt);
    }
}
