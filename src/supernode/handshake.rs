//! The super node's side of the host handshake, as plain functions.
//!
//! ```text
//! host                                   super node
//!  | Hello (plain, padded to 1280 B)  ->  |  no state kept
//!  | <- Challenge: SN credential, cookie  |  cookie = t ‖ HMAC(secret, addr ‖ t)
//!  | Auth: envelope{cookie, RSA(K‖R),  -> |  cookie checked (cheap) before RSA,
//!  |        AES-GCM(cred ‖ PSS sig)}      |  then credential, then proof of possession
//!  | <- Welcome (sealed under K)          |  session exists from here on
//! ```
//!
//! The cookie makes the super node keep nothing for a Hello, so a spoofed flood creates no
//! state; the padded Hello makes sure the answer is never larger than the request.

use crate::crypto::credential::{Credential, CredentialError, CredentialKind, TrustedKeys};
use crate::crypto::envelope::{self, EnvelopeError};
use crate::crypto::{PrivateKey, aead::SessionSecret, domain};
use crate::wire::message::{AuthBody, COOKIE_LEN, Challenge, Envelope, ErrorCode, Hello};
use hmac::{Hmac, KeyInit, Mac};
use sha2::{Digest, Sha256};
use std::net::SocketAddr;

/// How long a cookie stays valid.
pub const COOKIE_LIFETIME_SECS: u64 = 30;

/// A super node's identity: its key, its credential and the keys it trusts.
#[derive(Clone, Debug)]
pub struct Identity {
    /// The super node's name.
    pub name: String,
    /// Its private key.
    pub key: PrivateKey,
    /// Its credential, signed by a login server.
    pub credential: Credential,
    /// The login-server keys whose credentials it accepts.
    pub trusted: TrustedKeys,
    cookie_secret: [u8; 32],
}

impl Identity {
    /// An identity with a fresh cookie secret.
    pub fn new(name: String, key: PrivateKey, credential: Credential, trusted: TrustedKeys) -> Self {
        Self { name, key, credential, trusted, cookie_secret: crate::crypto::random::bytes() }
    }

    fn cookie_mac(&self, source: SocketAddr, t: u64) -> [u8; COOKIE_LEN - 8] {
        let mut mac =
            <Hmac<Sha256> as KeyInit>::new_from_slice(&self.cookie_secret).expect("HMAC takes any key length");
        mac.update(&crate::crypto::obfuscation::address_bytes(source));
        mac.update(&t.to_be_bytes());
        let d = mac.finalize().into_bytes();
        let mut out = [0u8; COOKIE_LEN - 8];
        out.copy_from_slice(&d[..COOKIE_LEN - 8]);
        out
    }

    /// A cookie for `source` at `now`.
    pub fn cookie(&self, source: SocketAddr, now: u64) -> [u8; COOKIE_LEN] {
        let mut c = [0u8; COOKIE_LEN];
        c[..8].copy_from_slice(&now.to_be_bytes());
        c[8..].copy_from_slice(&self.cookie_mac(source, now));
        c
    }

    /// Whether `cookie` was issued by us to `source` within the cookie lifetime.
    pub fn check_cookie(&self, source: SocketAddr, cookie: &[u8; COOKIE_LEN], now: u64) -> bool {
        let t = u64::from_be_bytes(cookie[..8].try_into().expect("8 bytes"));
        if t > now || now - t > COOKIE_LIFETIME_SECS {
            return false;
        }
        let want = self.cookie_mac(source, t);
        subtle::ConstantTimeEq::ct_eq(&want[..], &cookie[8..]).into()
    }

    /// The stateless answer to a Hello.
    pub fn challenge(&self, hello: &Hello, source: SocketAddr, now: u64) -> Challenge {
        Challenge {
            credential: self.credential.encode(),
            cookie: self.cookie(source, now),
            host_nonce: hello.host_nonce,
            observed: source,
        }
    }
}

/// What the host signs to prove it holds its credential's key: the cookie (fresh, bound
/// to its address), the super node's key id and the hash of the wrapped session key
/// (bound to this one handshake).
pub fn auth_transcript(cookie: &[u8; COOKIE_LEN], supernode_key_id: &[u8; 8], wrapped: &[u8]) -> Vec<u8> {
    let mut m = Vec::with_capacity(domain::SESSION_AUTH.len() + COOKIE_LEN + 8 + 32);
    m.extend_from_slice(domain::SESSION_AUTH);
    m.extend_from_slice(cookie);
    m.extend_from_slice(supernode_key_id);
    m.extend_from_slice(&Sha256::digest(wrapped));
    m
}

/// A host whose Auth checked out.
#[derive(Debug)]
pub struct Accepted {
    /// The host's verified credential.
    pub credential: Credential,
    /// The session secret K.
    pub secret: SessionSecret,
    /// SHA-256 of the wrapped key: identifies this handshake (a replayed Auth repeats it).
    pub handshake_id: [u8; 32],
}

/// Why an Auth was refused; each maps to an [`ErrorCode`] sent back (where the host can
/// be told) and a metric reason.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum AuthError {
    /// Malformed envelope or body.
    #[error("malformed auth")]
    Malformed,
    /// Cookie stale or not ours.
    #[error("stale or foreign cookie")]
    StaleCookie,
    /// The envelope does not open with our key.
    #[error("envelope: {0}")]
    Envelope(#[from] EnvelopeError),
    /// The host credential does not verify.
    #[error("credential: {0}")]
    Credential(#[from] CredentialError),
    /// The proof-of-possession signature does not verify.
    #[error("proof of possession does not verify")]
    BadProof,
}

impl AuthError {
    /// The error code sent to the host.
    pub fn code(&self) -> ErrorCode {
        match self {
            Self::Malformed => ErrorCode::Malformed,
            Self::StaleCookie => ErrorCode::StaleCookie,
            Self::Envelope(_) => ErrorCode::BadEnvelope,
            Self::Credential(CredentialError::Expired(_)) => ErrorCode::CredentialExpired,
            Self::Credential(CredentialError::UntrustedIssuer(_)) => ErrorCode::UntrustedCredential,
            Self::Credential(CredentialError::Revoked(_)) => ErrorCode::Revoked,
            Self::Credential(_) | Self::BadProof => ErrorCode::BadSignature,
        }
    }

    /// A short, stable label for metrics.
    pub fn reason(&self) -> &'static str {
        self.code().label()
    }
}

/// The cheap part of Auth handling: decode and check the cookie (no RSA yet).
pub fn precheck(identity: &Identity, payload: &[u8], source: SocketAddr, now: u64) -> Result<Envelope, AuthError> {
    let env = Envelope::decode(payload).map_err(|_| AuthError::Malformed)?;
    if !identity.check_cookie(source, &env.cookie, now) {
        return Err(AuthError::StaleCookie);
    }
    Ok(env)
}

/// The expensive part: open the envelope, verify the credential and the proof.
pub fn accept(identity: &Identity, env: &Envelope, now: u64) -> Result<Accepted, AuthError> {
    let opened = envelope::open(&identity.key, crate::wire::MessageKind::Auth, env)?;
    let body = AuthBody::decode(&opened.body).map_err(|_| AuthError::Malformed)?;
    let credential = Credential::decode_verified(&body.credential, &identity.trusted, CredentialKind::Host, now)?;
    let transcript = auth_transcript(&env.cookie, &env.key_id, &env.wrapped);
    credential.public_key.verify_pss(&transcript, &body.signature).map_err(|_| AuthError::BadProof)?;
    Ok(Accepted { credential, secret: opened.secret, handshake_id: Sha256::digest(&env.wrapped).into() })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cookies_bind_address_and_expire() {
        let id = crate::supernode::tests::identity();
        let a: SocketAddr = "198.18.1.2:4000".parse().unwrap();
        let b: SocketAddr = "198.18.1.2:4001".parse().unwrap();
        let c = id.cookie(a, 1000);
        assert!(id.check_cookie(a, &c, 1000));
        assert!(id.check_cookie(a, &c, 1000 + COOKIE_LIFETIME_SECS));
        assert!(!id.check_cookie(a, &c, 1001 + COOKIE_LIFETIME_SECS));
        assert!(!id.check_cookie(b, &c, 1000));
        assert!(!id.check_cookie(a, &c, 999), "a cookie from the future");
        let mut forged = c;
        forged[20] ^= 1;
        assert!(!id.check_cookie(a, &forged, 1000));
    }
}
