//! Revocation lists: which credentials no longer count, signed by a login key.
//!
//! A list names each revoked credential by the id of the public key it certifies, with
//! its kind, subject and expiry; an entry leaves the list once that expiry has passed
//! (the credential is refused as expired by then anyway), so the list stays small. Its
//! `version` only grows: a node never adopts a list older than the one it holds, so an
//! old list replayed cannot bring a revoked node back.
//!
//! ```text
//! signed  = "confab/v1/revocation-list\0" ‖ body
//! body    = version (8) ‖ issuer key id (8) ‖ n (u16) ‖ n × entry
//! entry   = key id (8) ‖ kind (1) ‖ subject (u16 len) ‖ expires_at (8)
//! encoded = body ‖ signature (u16 len)
//! ```
//!
//! [`Revoked`] is what a node honours: the newest list it verified, shared by every
//! clone of its [`super::TrustedKeys`], so that [`super::Credential::verify`] answers "valid
//! now and not revoked" in one call wherever credentials are checked.

use super::credential::{CredentialKind, SUBJECT_LEN_MAX, TrustedKeys};
use super::keys::{KeyId, PrivateKey};
use crate::wire::codec::{DecodeError, Reader, Writer};
use std::collections::HashMap;
use std::sync::{Arc, RwLock};

/// Domain-separation prefix of a revocation list's signature.
pub const DOMAIN: &[u8] = b"confab/v1/revocation-list\0";
/// Most entries one list may hold.
pub const ENTRIES_MAX: usize = 256;
/// Longest encoded list accepted (256 entries of the longest subject, a 4096-bit signature).
pub const LIST_LEN_MAX: usize = 20 + ENTRIES_MAX * (8 + 1 + 2 + SUBJECT_LEN_MAX + 8) + 2 + 512;

/// One revoked credential.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Revocation {
    /// The id of the public key the credential certifies.
    pub key: KeyId,
    /// Host or super node.
    pub kind: CredentialKind,
    /// Its subject (username or super-node name), for operators reading the list.
    pub subject: String,
    /// Its expiry (unix seconds): after it the entry may leave the list.
    pub expires_at: u64,
}

/// A signed revocation list.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RevocationList {
    /// Grows with every change (the login server uses the issue time in unix seconds).
    pub version: u64,
    /// The login key that signed it.
    pub issuer: KeyId,
    /// The revoked credentials, sorted by key id.
    pub entries: Vec<Revocation>,
    signature: Vec<u8>,
}

/// Why a list was not adopted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum RevocationError {
    /// Malformed encoding, or over the caps.
    #[error("malformed revocation list: {0}")]
    Malformed(#[from] DecodeError),
    /// Signed by a key that is not among the trusted login keys.
    #[error("revocation list signed by untrusted key {0}")]
    UntrustedIssuer(KeyId),
    /// The signature does not verify.
    #[error("revocation list signature does not verify")]
    BadSignature,
    /// Not newer than the list held.
    #[error("revocation list version {got} is not newer than {held}")]
    NotNewer {
        /// The version held.
        held: u64,
        /// The version offered.
        got: u64,
    },
}

impl RevocationError {
    /// A short, stable label for metrics.
    pub fn label(&self) -> &'static str {
        match self {
            Self::Malformed(_) => "malformed",
            Self::UntrustedIssuer(_) => "untrusted_issuer",
            Self::BadSignature => "bad_signature",
            Self::NotNewer { .. } => "not_newer",
        }
    }
}

fn kind_code(k: CredentialKind) -> u8 {
    match k {
        CredentialKind::Host => 1,
        CredentialKind::SuperNode => 2,
    }
}

fn write_body(w: &mut Writer, version: u64, issuer: KeyId, entries: &[Revocation]) {
    w.u64(version).raw(&issuer.0).u16(entries.len() as u16);
    for e in entries {
        w.raw(&e.key.0).u8(kind_code(e.kind)).str(&e.subject).u64(e.expires_at);
    }
}

impl RevocationList {
    /// Signs a list of `entries` (sorted, one per key and kind, at most [`ENTRIES_MAX`]:
    /// those expiring soonest are left out past it) with a login key.
    pub fn issue(version: u64, mut entries: Vec<Revocation>, signer: &PrivateKey) -> Self {
        entries.sort_by_key(|e| (e.key, kind_code(e.kind)));
        entries.dedup_by(|a, b| a.key == b.key && a.kind == b.kind);
        if entries.len() > ENTRIES_MAX {
            let mut by_expiry = entries.clone();
            by_expiry.sort_by_key(|e| std::cmp::Reverse(e.expires_at));
            let cut = by_expiry[ENTRIES_MAX - 1].expires_at;
            entries.retain(|e| e.expires_at >= cut);
            entries.truncate(ENTRIES_MAX);
        }
        for e in &mut entries {
            e.subject = truncate(&e.subject, SUBJECT_LEN_MAX).to_owned();
        }
        let issuer = signer.public().id();
        let mut w = Writer::new();
        w.raw(DOMAIN);
        write_body(&mut w, version, issuer, &entries);
        let signature = signer.sign_pss(&w.into_bytes());
        Self { version, issuer, entries, signature }
    }

    /// Canonical encoding.
    pub fn encode(&self) -> Vec<u8> {
        let mut w = Writer::new();
        write_body(&mut w, self.version, self.issuer, &self.entries);
        w.bytes(&self.signature);
        w.into_bytes()
    }

    /// Decodes without verifying; total, within [`LIST_LEN_MAX`] and [`ENTRIES_MAX`].
    pub fn decode(bytes: &[u8]) -> Result<Self, DecodeError> {
        if bytes.len() > LIST_LEN_MAX {
            return Err(DecodeError::TooLong { field: "revocation_list", len: bytes.len(), max: LIST_LEN_MAX });
        }
        let mut r = Reader::new(bytes);
        let version = r.u64("revocation_list.version")?;
        let issuer = KeyId(r.array("revocation_list.issuer")?);
        let n = usize::from(r.u16("revocation_list.entries")?);
        if n > ENTRIES_MAX {
            return Err(DecodeError::TooLong { field: "revocation_list.entries", len: n, max: ENTRIES_MAX });
        }
        let mut entries = Vec::with_capacity(n);
        for _ in 0..n {
            let key = KeyId(r.array("revocation.key")?);
            let kind = match r.u8("revocation.kind")? {
                1 => CredentialKind::Host,
                2 => CredentialKind::SuperNode,
                _ => return Err(DecodeError::Invalid("revocation.kind")),
            };
            let subject = r.str("revocation.subject", SUBJECT_LEN_MAX)?.to_owned();
            let expires_at = r.u64("revocation.expires_at")?;
            entries.push(Revocation { key, kind, subject, expires_at });
        }
        let signature = r.bytes("revocation_list.signature", 512)?.to_vec();
        r.finish()?;
        Ok(Self { version, issuer, entries, signature })
    }

    /// Checks the issuer is a trusted login key and the signature verifies under it.
    pub fn verify(&self, trusted: &TrustedKeys) -> Result<(), RevocationError> {
        let key = trusted.get(self.issuer).ok_or(RevocationError::UntrustedIssuer(self.issuer))?;
        let mut w = Writer::new();
        w.raw(DOMAIN);
        write_body(&mut w, self.version, self.issuer, &self.entries);
        key.verify_pss(&w.into_bytes(), &self.signature).map_err(|_| RevocationError::BadSignature)
    }

    /// Whether the credential of `kind` for key `key` is on the list.
    pub fn names(&self, kind: CredentialKind, key: KeyId) -> bool {
        self.entries.iter().any(|e| e.key == key && e.kind == kind)
    }
}

fn truncate(s: &str, max: usize) -> &str {
    let mut end = s.len().min(max);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

#[derive(Debug, Default)]
struct Held {
    version: u64,
    encoded: Option<Arc<[u8]>>,
    keys: HashMap<(KeyId, u8), u64>,
}

/// The revocations one node honours: the newest verified list. Clones share it, so
/// every part of a node that holds its [`TrustedKeys`] sees a list the moment any part
/// adopts it.
#[derive(Debug, Clone, Default)]
pub struct Revoked {
    held: Arc<RwLock<Held>>,
}

impl Revoked {
    fn read(&self) -> std::sync::RwLockReadGuard<'_, Held> {
        // Every write leaves the state whole: a panic elsewhere cannot corrupt it.
        self.held.read().unwrap_or_else(|p| p.into_inner())
    }

    /// The version of the list held (0: none).
    pub fn version(&self) -> u64 {
        self.read().version
    }

    /// The encoded list held, to pass on.
    pub fn encoded(&self) -> Option<Arc<[u8]>> {
        self.read().encoded.clone()
    }

    /// Whether the credential of `kind` for key `key` is revoked.
    pub fn contains(&self, kind: CredentialKind, key: KeyId) -> bool {
        self.read().keys.contains_key(&(key, kind_code(kind)))
    }

    /// How many credentials are revoked.
    pub fn len(&self) -> usize {
        self.read().keys.len()
    }

    /// True when nothing is revoked.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The version an encoded list claims, without verifying it (to skip the signature
    /// check of a list that would not be newer).
    pub fn peek_version(bytes: &[u8]) -> Option<u64> {
        bytes.get(..8).and_then(|b| b.try_into().ok()).map(u64::from_be_bytes)
    }

    /// Verifies `bytes` against `trusted` and adopts the list if it is newer than the one
    /// held; returns the adopted list. An equal or older version is refused before any
    /// signature check.
    pub fn adopt(&self, bytes: &[u8], trusted: &TrustedKeys) -> Result<RevocationList, RevocationError> {
        let list = RevocationList::decode(bytes)?;
        let held = self.version();
        if list.version <= held {
            return Err(RevocationError::NotNewer { held, got: list.version });
        }
        list.verify(trusted)?;
        let mut h = self.held.write().unwrap_or_else(|p| p.into_inner());
        // Another thread may have adopted a newer one meanwhile.
        if list.version <= h.version {
            return Err(RevocationError::NotNewer { held: h.version, got: list.version });
        }
        h.version = list.version;
        h.encoded = Some(bytes.into());
        h.keys = list.entries.iter().map(|e| ((e.key, kind_code(e.kind)), e.expires_at)).collect();
        Ok(list)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crypto::keys::tests::test_key;

    fn entry(n: u8, kind: CredentialKind) -> Revocation {
        Revocation { key: KeyId([n; 8]), kind, subject: format!("sn{n}"), expires_at: 2_000_000_000 }
    }

    fn trusted() -> TrustedKeys {
        TrustedKeys::new(vec![test_key(0).public().clone()])
    }

    #[test]
    fn issue_encode_decode_verify_adopt() {
        let login = test_key(0);
        let list = RevocationList::issue(
            10,
            vec![
                entry(2, CredentialKind::SuperNode),
                entry(1, CredentialKind::Host),
                entry(2, CredentialKind::SuperNode),
            ],
            &login,
        );
        assert_eq!(list.entries.len(), 2, "duplicates dropped");
        assert_eq!(list.entries[0].key, KeyId([1; 8]), "sorted by key id");
        let bytes = list.encode();
        assert_eq!(RevocationList::decode(&bytes).unwrap(), list);
        list.verify(&trusted()).unwrap();
        let t = trusted();
        assert!(!t.revoked().contains(CredentialKind::SuperNode, KeyId([2; 8])));
        t.revoked().adopt(&bytes, &t).unwrap();
        assert_eq!(t.revoked().version(), 10);
        assert!(t.revoked().contains(CredentialKind::SuperNode, KeyId([2; 8])));
        assert!(!t.revoked().contains(CredentialKind::Host, KeyId([2; 8])), "the kind counts");
        assert!(t.clone().revoked().contains(CredentialKind::Host, KeyId([1; 8])), "clones share the list");
        assert_eq!(Revoked::peek_version(&bytes), Some(10));
    }

    #[test]
    fn forged_truncated_oversized_untrusted_and_older_lists_are_refused() {
        let login = test_key(0);
        let t = trusted();
        let v20 = RevocationList::issue(20, vec![entry(1, CredentialKind::SuperNode)], &login).encode();
        // Forged: one byte of an entry changed under the signature.
        let mut forged = v20.clone();
        forged[20] ^= 1;
        assert_eq!(t.revoked().adopt(&forged, &t).unwrap_err(), RevocationError::BadSignature);
        // Truncated anywhere.
        for n in 0..v20.len() {
            assert!(matches!(t.revoked().adopt(&v20[..n], &t), Err(RevocationError::Malformed(_))), "cut at {n}");
        }
        // Signed by a key nobody trusts.
        let other = RevocationList::issue(30, vec![], &test_key(1)).encode();
        assert!(matches!(t.revoked().adopt(&other, &t), Err(RevocationError::UntrustedIssuer(_))));
        // Oversized: too many entries, or too many bytes.
        let mut w = Writer::new();
        w.u64(40).raw(&login.public().id().0).u16(ENTRIES_MAX as u16 + 1);
        assert!(matches!(RevocationList::decode(&w.into_bytes()), Err(DecodeError::TooLong { .. })));
        assert!(matches!(RevocationList::decode(&vec![0; LIST_LEN_MAX + 1]), Err(DecodeError::TooLong { .. })));
        assert_eq!(t.revoked().version(), 0, "nothing was adopted");
        // Older or equal versions are refused once a list is held.
        t.revoked().adopt(&v20, &t).unwrap();
        let v19 = RevocationList::issue(19, vec![], &login).encode();
        assert_eq!(t.revoked().adopt(&v19, &t).unwrap_err(), RevocationError::NotNewer { held: 20, got: 19 });
        assert_eq!(t.revoked().adopt(&v20, &t).unwrap_err(), RevocationError::NotNewer { held: 20, got: 20 });
        assert!(t.revoked().contains(CredentialKind::SuperNode, KeyId([1; 8])));
        // A newer list replaces the whole set (an entry that left is no longer revoked).
        let v21 = RevocationList::issue(21, vec![entry(3, CredentialKind::Host)], &login).encode();
        t.revoked().adopt(&v21, &t).unwrap();
        assert!(!t.revoked().contains(CredentialKind::SuperNode, KeyId([1; 8])));
        assert!(t.revoked().contains(CredentialKind::Host, KeyId([3; 8])));
    }

    #[test]
    fn the_entry_cap_keeps_the_latest_expiries() {
        let login = test_key(0);
        let many: Vec<Revocation> = (0..ENTRIES_MAX + 10)
            .map(|i| Revocation {
                key: KeyId((i as u64).to_be_bytes()),
                kind: CredentialKind::Host,
                subject: "x".repeat(200),
                expires_at: i as u64,
            })
            .collect();
        let list = RevocationList::issue(1, many, &login);
        assert_eq!(list.entries.len(), ENTRIES_MAX);
        assert!(list.entries.iter().all(|e| e.expires_at >= 10 && e.subject.len() == SUBJECT_LEN_MAX));
        let bytes = list.encode();
        assert!(bytes.len() <= LIST_LEN_MAX);
        RevocationList::decode(&bytes).unwrap().verify(&trusted()).unwrap();
    }

    #[test]
    fn one_call_answers_valid_and_not_revoked() {
        use crate::crypto::credential::{Claims, Credential, CredentialError};
        let login = test_key(0);
        let sn = test_key(1);
        let c = Credential::issue(
            Claims {
                kind: CredentialKind::SuperNode,
                subject: "sn1".into(),
                public_key: sn.public().clone(),
                issued_at: 1000,
                expires_at: 2000,
                serial: 1,
            },
            &login,
        );
        let t = trusted();
        let mine = t.with_own_revocations();
        c.verify(&t, CredentialKind::SuperNode, 1500).unwrap();
        let entry = Revocation { key: sn.public().id(), kind: c.kind, subject: c.subject.clone(), expires_at: 2000 };
        t.adopt_revocations(&RevocationList::issue(5, vec![entry], &login).encode()).unwrap();
        assert_eq!(c.verify(&t, CredentialKind::SuperNode, 1500), Err(CredentialError::Revoked(sn.public().id())));
        c.verify(&mine, CredentialKind::SuperNode, 1500).expect("a node with its own list has not adopted it");
        let other = test_key(2).public().id();
        let preferring = t.preferring(other);
        assert_eq!(preferring.keys()[0].id(), login.public().id(), "an untrusted id changes nothing");
        assert!(preferring.revoked().contains(CredentialKind::SuperNode, sn.public().id()), "the list is shared");
    }

    proptest::proptest! {
        #[test]
        fn decode_is_total(b in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..4096)) {
            let _ = RevocationList::decode(&b);
        }
    }
}
