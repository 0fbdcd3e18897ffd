//! Credentials: a public key bound to a name, signed by a login server (RSA-PSS).
//!
//! Any node checks a credential offline against the short list of trusted login-server
//! keys it ships with ([`TrustedKeys`]). Hosts get one at every login; super nodes get a
//! long-lived one from `confab keygen`, so a host can tell a real super node from an
//! impostor.

use super::keys::{KeyId, PUBLIC_KEY_DER_MAX, PrivateKey, PublicKey};
use super::revocation::{RevocationError, RevocationList, Revoked};
use crate::wire::codec::{DecodeError, Reader, Writer};

/// Longest encoded credential accepted (a 4096-bit key and signature fit with room).
pub const CREDENTIAL_LEN_MAX: usize = 1400;
/// Longest subject name.
pub const SUBJECT_LEN_MAX: usize = 64;
/// Clock skew tolerated between the issuer and the checker.
pub const CLOCK_SKEW_SECS: u64 = 300;

/// Whom a credential was issued to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CredentialKind {
    /// A user's host, for one login.
    Host,
    /// A super node, for its deployment.
    SuperNode,
}

impl CredentialKind {
    fn code(self) -> u8 {
        match self {
            Self::Host => 1,
            Self::SuperNode => 2,
        }
    }

    fn from_code(c: u8) -> Option<Self> {
        match c {
            1 => Some(Self::Host),
            2 => Some(Self::SuperNode),
            _ => None,
        }
    }
}

/// Why a credential was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum CredentialError {
    /// Malformed encoding.
    #[error("malformed credential: {0}")]
    Malformed(#[from] DecodeError),
    /// Signed by a key that is not among the trusted login keys.
    #[error("credential signed by untrusted key {0}")]
    UntrustedIssuer(KeyId),
    /// The signature does not verify.
    #[error("credential signature does not verify")]
    BadSignature,
    /// Past its expiry time.
    #[error("credential expired at {0}")]
    Expired(u64),
    /// Issued in the future (beyond tolerated clock skew).
    #[error("credential issued in the future ({0})")]
    NotYetValid(u64),
    /// Valid, but for the other kind of node.
    #[error("credential is for a {0:?}, expected a {1:?}")]
    WrongKind(CredentialKind, CredentialKind),
    /// On the revocation list this node holds.
    #[error("credential for key {0} is revoked")]
    Revoked(KeyId),
}

/// A signed credential: its claims, the issuing key, the signature. It reads as its
/// claims (`credential.subject`), and only [`Credential::issue`] and
/// [`Credential::decode`] make one, so the claims cannot change under the signature.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Credential {
    claims: Claims,
    /// The signing login key.
    pub issuer: KeyId,
    signature: Vec<u8>,
}

impl std::ops::Deref for Credential {
    type Target = Claims;

    fn deref(&self) -> &Claims {
        &self.claims
    }
}

/// The fields a login server fills in when it issues a credential.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Claims {
    /// Host or super node.
    pub kind: CredentialKind,
    /// Username or super-node name.
    pub subject: String,
    /// The subject's public key.
    pub public_key: PublicKey,
    /// Unix seconds.
    pub issued_at: u64,
    /// Unix seconds.
    pub expires_at: u64,
    /// Issuer-unique serial number.
    pub serial: u64,
}

fn encode_body(w: &mut Writer, c: &Claims, issuer: KeyId) {
    w.u8(c.kind.code())
        .str(&c.subject)
        .bytes(c.public_key.der())
        .u64(c.issued_at)
        .u64(c.expires_at)
        .u64(c.serial)
        .raw(&issuer.0);
}

impl Credential {
    /// Signs `claims` with a login key.
    pub fn issue(claims: Claims, signer: &PrivateKey) -> Self {
        let issuer = signer.public().id();
        let mut w = Writer::new();
        w.raw(super::domain::CREDENTIAL);
        encode_body(&mut w, &claims, issuer);
        let signature = signer.sign_pss(&w.into_bytes());
        Self { claims, issuer, signature }
    }

    /// Canonical encoding: body, then the signature with a `u16` length.
    pub fn encode(&self) -> Vec<u8> {
        let mut w = Writer::new();
        encode_body(&mut w, &self.claims, self.issuer);
        w.bytes(&self.signature);
        w.into_bytes()
    }

    /// Decodes (without verifying) a credential.
    pub fn decode(bytes: &[u8]) -> Result<Self, DecodeError> {
        if bytes.len() > CREDENTIAL_LEN_MAX {
            return Err(DecodeError::TooLong { field: "credential", len: bytes.len(), max: CREDENTIAL_LEN_MAX });
        }
        let mut r = Reader::new(bytes);
        let kind =
            CredentialKind::from_code(r.u8("credential.kind")?).ok_or(DecodeError::Invalid("credential.kind"))?;
        let subject = r.str("credential.subject", SUBJECT_LEN_MAX)?.to_owned();
        let public_key = PublicKey::from_der(r.bytes("credential.public_key", PUBLIC_KEY_DER_MAX)?)
            .map_err(|_| DecodeError::Invalid("credential.public_key"))?;
        let issued_at = r.u64("credential.issued_at")?;
        let expires_at = r.u64("credential.expires_at")?;
        let serial = r.u64("credential.serial")?;
        let issuer = KeyId(r.array("credential.issuer")?);
        let signature = r.bytes("credential.signature", 512)?.to_vec();
        r.finish()?;
        Ok(Self { claims: Claims { kind, subject, public_key, issued_at, expires_at, serial }, issuer, signature })
    }

    /// Checks issuer, signature, validity period and kind at time `now` (unix seconds).
    pub fn verify(&self, trusted: &TrustedKeys, kind: CredentialKind, now: u64) -> Result<(), CredentialError> {
        let key = trusted.get(self.issuer).ok_or(CredentialError::UntrustedIssuer(self.issuer))?;
        let mut w = Writer::new();
        w.raw(super::domain::CREDENTIAL);
        encode_body(&mut w, &self.claims, self.issuer);
        key.verify_pss(&w.into_bytes(), &self.signature).map_err(|_| CredentialError::BadSignature)?;
        if self.kind != kind {
            return Err(CredentialError::WrongKind(self.kind, kind));
        }
        if now > self.expires_at {
            return Err(CredentialError::Expired(self.expires_at));
        }
        if self.issued_at > now + CLOCK_SKEW_SECS {
            return Err(CredentialError::NotYetValid(self.issued_at));
        }
        if trusted.revoked.contains(self.kind, self.public_key.id()) {
            return Err(CredentialError::Revoked(self.public_key.id()));
        }
        Ok(())
    }

    /// Decodes and verifies in one step.
    pub fn decode_verified(
        bytes: &[u8],
        trusted: &TrustedKeys,
        kind: CredentialKind,
        now: u64,
    ) -> Result<Self, CredentialError> {
        let c = Self::decode(bytes)?;
        c.verify(trusted, kind, now)?;
        Ok(c)
    }
}

/// The login-server public keys a node trusts, and the revocation list it honours
/// (shared by every clone: see [`Revoked`]).
#[derive(Clone, Debug, Default)]
pub struct TrustedKeys {
    keys: Vec<PublicKey>,
    revoked: Revoked,
}

impl TrustedKeys {
    /// Trusts exactly these keys, with no revocations yet.
    pub fn new(keys: Vec<PublicKey>) -> Self {
        Self { keys, revoked: Revoked::default() }
    }

    /// The same keys with a revocation list of its own (empty), not shared with `self`'s
    /// clones: each node of a process honours the lists it verified itself.
    pub fn with_own_revocations(&self) -> Self {
        Self { keys: self.keys.clone(), revoked: Revoked::default() }
    }

    /// The same keys (and revocation list) with `id` first, if trusted: the key a host
    /// wraps its next login-server envelopes for.
    pub fn preferring(&self, id: KeyId) -> Self {
        let mut keys = self.keys.clone();
        if let Some(i) = keys.iter().position(|k| k.id() == id) {
            let k = keys.remove(i);
            keys.insert(0, k);
        }
        Self { keys, revoked: self.revoked.clone() }
    }

    /// The revocations honoured.
    pub fn revoked(&self) -> &Revoked {
        &self.revoked
    }

    /// Verifies a revocation list against these keys and adopts it if newer.
    pub fn adopt_revocations(&self, bytes: &[u8]) -> Result<RevocationList, RevocationError> {
        self.revoked.adopt(bytes, self)
    }

    /// The trusted key with this id.
    pub fn get(&self, id: KeyId) -> Option<&PublicKey> {
        self.keys.iter().find(|k| k.id() == id)
    }

    /// All trusted keys.
    pub fn keys(&self) -> &[PublicKey] {
        &self.keys
    }

    /// No key is trusted.
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crypto::keys::tests::test_key;

    fn cred(now: u64) -> (Credential, TrustedKeys) {
        let login = test_key(0);
        let host = test_key(2);
        let c = Credential::issue(
            Claims {
                kind: CredentialKind::Host,
                subject: "alice".into(),
                public_key: host.public().clone(),
                issued_at: now,
                expires_at: now + 86_400,
                serial: 7,
            },
            &login,
        );
        (c, TrustedKeys::new(vec![login.public().clone()]))
    }

    #[test]
    fn issue_encode_decode_verify() {
        let (c, trusted) = cred(1_000_000);
        let d = Credential::decode(&c.encode()).unwrap();
        assert_eq!(d, c);
        d.verify(&trusted, CredentialKind::Host, 1_000_100).unwrap();
    }

    #[test]
    fn every_failure_is_named() {
        let (c, trusted) = cred(1_000_000);
        assert_eq!(c.verify(&trusted, CredentialKind::Host, 1_086_401), Err(CredentialError::Expired(1_086_400)));
        assert!(matches!(
            c.verify(&trusted, CredentialKind::SuperNode, 1_000_000),
            Err(CredentialError::WrongKind(..))
        ));
        assert!(matches!(c.verify(&trusted, CredentialKind::Host, 1), Err(CredentialError::NotYetValid(_))));
        let other = TrustedKeys::new(vec![test_key(1).public().clone()]);
        assert!(matches!(c.verify(&other, CredentialKind::Host, 1_000_000), Err(CredentialError::UntrustedIssuer(_))));
        let mut bytes = c.encode();
        let n = bytes.len();
        bytes[n - 10] ^= 1;
        let forged = Credential::decode(&bytes).unwrap();
        assert_eq!(forged.verify(&trusted, CredentialKind::Host, 1_000_000), Err(CredentialError::BadSignature));
        // A longer validity claimed by the holder breaks the signature too.
        let mut stretched = c.clone();
        stretched.claims.expires_at += 1;
        assert_eq!(stretched.verify(&trusted, CredentialKind::Host, 1_000_000), Err(CredentialError::BadSignature));
    }

    #[test]
    fn truncations_never_panic() {
        let (c, _) = cred(5);
        let bytes = c.encode();
        for n in 0..bytes.len() {
            assert!(Credential::decode(&bytes[..n]).is_err());
        }
    }
}
