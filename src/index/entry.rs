//! Index entries: what a host publishes about itself, signed with its credential's key.

use crate::crypto::PrivateKey;
use crate::crypto::credential::{CREDENTIAL_LEN_MAX, Credential, CredentialError, CredentialKind, TrustedKeys};
use crate::crypto::user::UserPublicKeys;
use crate::nat::NatKind;
use crate::wire::codec::{DecodeError, Reader, Writer};
use std::net::SocketAddr;

/// Domain prefix of the signed message.
pub const DOMAIN_INDEX_ENTRY: &[u8] = b"confab/v1/index-entry\0";
/// Largest encoded entry.
pub const ENTRY_LEN_MAX: usize = 2048;
/// Largest encoded profile.
pub const PROFILE_LEN_MAX: usize = 1024;
/// Clock skew tolerated between a host and a super node.
pub const CLOCK_SKEW_MS: u64 = 300_000;

/// A user's status.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    /// Online and available.
    Online,
    /// Online, away from the keyboard.
    Away,
    /// Online, do not disturb.
    Busy,
    /// Online, but shown as offline to everyone except allowed buddies.
    Invisible,
    /// Logged out.
    Offline,
}

impl Status {
    /// Every status.
    pub const ALL: [Status; 5] = [Self::Online, Self::Away, Self::Busy, Self::Invisible, Self::Offline];

    fn code(self) -> u8 {
        match self {
            Self::Online => 1,
            Self::Away => 2,
            Self::Busy => 3,
            Self::Invisible => 4,
            Self::Offline => 5,
        }
    }

    fn from_code(c: u8) -> Option<Self> {
        Self::ALL.into_iter().find(|s| s.code() == c)
    }

    /// A short label.
    pub fn label(self) -> &'static str {
        match self {
            Self::Online => "online",
            Self::Away => "away",
            Self::Busy => "busy",
            Self::Invisible => "invisible",
            Self::Offline => "offline",
        }
    }
}

fn nat_code(n: NatKind) -> u8 {
    match n {
        NatKind::None => 1,
        NatKind::Cone => 2,
        NatKind::Symmetric => 3,
        NatKind::Unknown => 4,
        NatKind::UdpBlocked => 5,
    }
}

fn nat_from_code(c: u8) -> Option<NatKind> {
    [NatKind::None, NatKind::Cone, NatKind::Symmetric, NatKind::Unknown, NatKind::UdpBlocked]
        .into_iter()
        .find(|n| nat_code(*n) == c)
}

/// Profile fields, at most [`PROFILE_LEN_MAX`] bytes encoded.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Profile {
    /// Display name.
    pub display_name: String,
    /// City.
    pub city: String,
    /// Country.
    pub country: String,
    /// Language.
    pub language: String,
    /// Free text.
    pub about: String,
}

impl Profile {
    fn encode(&self, w: &mut Writer) {
        w.str(&self.display_name).str(&self.city).str(&self.country).str(&self.language).bytes(self.about.as_bytes());
    }

    fn decode(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
        Ok(Self {
            display_name: r.str("profile.display_name", 128)?.to_owned(),
            city: r.str("profile.city", 128)?.to_owned(),
            country: r.str("profile.country", 128)?.to_owned(),
            language: r.str("profile.language", 64)?.to_owned(),
            about: std::str::from_utf8(r.bytes("profile.about", PROFILE_LEN_MAX)?)
                .map_err(|_| DecodeError::Invalid("profile.about"))?
                .to_owned(),
        })
    }

    /// Encoded size in bytes.
    pub fn encoded_len(&self) -> usize {
        let mut w = Writer::new();
        self.encode(&mut w);
        w.into_bytes().len()
    }
}

/// The fields of an entry (everything but the signature).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EntryBody {
    /// The username as registered.
    pub user: String,
    /// The host's encoded credential.
    pub credential: Vec<u8>,
    /// Status.
    pub status: Status,
    /// The name of the super node the host is connected to.
    pub supernode: String,
    /// The host's public address (None when offline).
    pub public_addr: Option<SocketAddr>,
    /// The host's NAT kind.
    pub nat: NatKind,
    /// Profile.
    pub profile: Profile,
    /// Unix seconds the host was last seen online.
    pub last_seen: u64,
    /// Unix milliseconds when the host made this entry: the first merge key.
    pub timestamp_ms: u64,
    /// The user's public keys (`crypto::user`), certified by this entry's credential and
    /// signature: how others seal messages to the user and check what it signs.
    pub user_keys: Option<UserPublicKeys>,
}

impl EntryBody {
    fn encode(&self, w: &mut Writer, origin: u64) {
        w.str(&self.user)
            .bytes(&self.credential)
            .u8(self.status.code())
            .str(&self.supernode)
            .opt_addr(self.public_addr)
            .u8(nat_code(self.nat));
        self.profile.encode(w);
        w.u64(self.last_seen).u64(self.timestamp_ms).u64(origin);
        match &self.user_keys {
            Some(k) => w.u8(1).raw(&k.to_bytes()),
            None => w.u8(0),
        };
    }
}

/// A signed entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    body: EntryBody,
    /// The credential's serial: the second merge key.
    pub origin: u64,
    signature: Vec<u8>,
}

impl std::ops::Deref for Entry {
    type Target = EntryBody;

    fn deref(&self) -> &EntryBody {
        &self.body
    }
}

/// Why an entry is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum EntryError {
    /// Malformed or oversized encoding.
    #[error("malformed entry: {0}")]
    Malformed(#[from] DecodeError),
    /// The profile is over 1 KiB.
    #[error("profile of {0} bytes is over {PROFILE_LEN_MAX}")]
    ProfileTooLarge(usize),
    /// The credential does not verify (or was not valid when the entry was made).
    #[error("credential: {0}")]
    Credential(#[from] CredentialError),
    /// The credential is another user's.
    #[error("entry for {user:?} carries a credential for {subject:?}")]
    WrongUser {
        /// The entry's user.
        user: String,
        /// The credential's subject.
        subject: String,
    },
    /// The origin is not the credential's serial.
    #[error("origin does not match the credential")]
    WrongOrigin,
    /// Made in the future.
    #[error("entry made in the future")]
    FromTheFuture,
    /// The signature does not verify under the credential's key.
    #[error("entry signature does not verify")]
    BadSignature,
}

impl EntryError {
    /// A short, stable label for metrics.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::Malformed(_) => "malformed",
            Self::ProfileTooLarge(_) => "oversized",
            Self::Credential(_) => "bad_credential",
            Self::WrongUser { .. } => "wrong_user",
            Self::WrongOrigin => "wrong_origin",
            Self::FromTheFuture => "from_the_future",
            Self::BadSignature => "bad_signature",
        }
    }
}

impl Entry {
    /// Signs `body` with the host's key; `credential` is the decoded form of `body.credential`.
    pub fn sign(body: EntryBody, credential: &Credential, key: &PrivateKey) -> Result<Self, EntryError> {
        let n = body.profile.encoded_len();
        if n > PROFILE_LEN_MAX {
            return Err(EntryError::ProfileTooLarge(n));
        }
        let origin = credential.serial;
        let mut w = Writer::new();
        w.raw(DOMAIN_INDEX_ENTRY);
        body.encode(&mut w, origin);
        let signature = key.sign_pss(&w.into_bytes());
        let e = Self { body, origin, signature };
        // What every receiver will check: an entry that does not decode (a field over its
        // limit, the whole over 2 KiB) is refused here, not by the whole network.
        Self::decode(&e.encode())?;
        Ok(e)
    }

    /// An entry carrying `signature` unchecked, so it will not verify: the simulator's
    /// stand-in for signing, which keeps an entry's real size without the RSA (anyone can
    /// already make such an entry by decoding bytes).
    pub fn unsigned(body: EntryBody, origin: u64, signature: Vec<u8>) -> Self {
        Self { body, origin, signature }
    }

    /// Canonical encoding.
    pub fn encode(&self) -> Vec<u8> {
        let mut w = Writer::new();
        self.body.encode(&mut w, self.origin);
        w.bytes(&self.signature);
        w.into_bytes()
    }

    /// Decodes without verifying.
    pub fn decode(b: &[u8]) -> Result<Self, DecodeError> {
        if b.len() > ENTRY_LEN_MAX {
            return Err(DecodeError::TooLong { field: "entry", len: b.len(), max: ENTRY_LEN_MAX });
        }
        let mut r = Reader::new(b);
        let user = r.str("entry.user", 64)?.to_owned();
        let credential = r.bytes("entry.credential", CREDENTIAL_LEN_MAX)?.to_vec();
        let status = Status::from_code(r.u8("entry.status")?).ok_or(DecodeError::Invalid("entry.status"))?;
        let supernode = r.str("entry.supernode", 64)?.to_owned();
        let public_addr = r.opt_addr("entry.public_addr")?;
        let nat = nat_from_code(r.u8("entry.nat")?).ok_or(DecodeError::Invalid("entry.nat"))?;
        let profile = Profile::decode(&mut r)?;
        let last_seen = r.u64("entry.last_seen")?;
        let timestamp_ms = r.u64("entry.timestamp_ms")?;
        let origin = r.u64("entry.origin")?;
        let user_keys = match r.u8("entry.user_keys")? {
            0 => None,
            1 => Some(UserPublicKeys::from_bytes(&r.array::<64>("entry.user_keys")?)),
            _ => return Err(DecodeError::Invalid("entry.user_keys")),
        };
        let signature = r.bytes("entry.signature", 512)?.to_vec();
        r.finish()?;
        let body = EntryBody {
            user,
            credential,
            status,
            supernode,
            public_addr,
            nat,
            profile,
            last_seen,
            timestamp_ms,
            user_keys,
        };
        Ok(Self { body, origin, signature })
    }

    /// Checks everything a super node (or an asker) must check before trusting an entry:
    /// the credential (trusted issuer, valid when the entry was made, this user's), the
    /// origin, the time, the size of the profile, and the signature.
    pub fn verify(&self, trusted: &TrustedKeys, now_ms: u64) -> Result<Credential, EntryError> {
        let n = self.profile.encoded_len();
        if n > PROFILE_LEN_MAX {
            return Err(EntryError::ProfileTooLarge(n));
        }
        if self.timestamp_ms > now_ms.saturating_add(CLOCK_SKEW_MS)
            || self.last_seen.saturating_mul(1000) > self.timestamp_ms.saturating_add(CLOCK_SKEW_MS)
        {
            return Err(EntryError::FromTheFuture);
        }
        let credential =
            Credential::decode_verified(&self.credential, trusted, CredentialKind::Host, self.timestamp_ms / 1000)?;
        if !credential.subject.eq_ignore_ascii_case(&self.user) {
            return Err(EntryError::WrongUser { user: self.user.clone(), subject: credential.subject.clone() });
        }
        if credential.serial != self.origin {
            return Err(EntryError::WrongOrigin);
        }
        let mut w = Writer::new();
        w.raw(DOMAIN_INDEX_ENTRY);
        self.body.encode(&mut w, self.origin);
        credential.public_key.verify_pss(&w.into_bytes(), &self.signature).map_err(|_| EntryError::BadSignature)?;
        Ok(credential)
    }

    /// The key the entry is stored under: the canonical username.
    pub fn key(&self) -> String {
        self.user.to_ascii_lowercase()
    }

    /// The merge order: greater wins. Total, so merging is commutative, associative and
    /// idempotent (invariant 4 of `docs/index.md`).
    pub fn order(&self) -> (u64, u64, &[u8]) {
        (self.timestamp_ms, self.origin, &self.signature)
    }

    /// Whether this entry wins over `other`.
    pub fn supersedes(&self, other: &Entry) -> bool {
        self.order() > other.order()
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::crypto::credential::Claims;
    use crate::crypto::keys::tests::test_key;

    pub fn credential(user: &str, serial: u64, issued: u64) -> Credential {
        Credential::issue(
            Claims {
                kind: CredentialKind::Host,
                subject: user.into(),
                public_key: test_key(2).public().clone(),
                issued_at: issued,
                expires_at: issued + 86_400,
                serial,
            },
            &test_key(0),
        )
    }

    pub fn trusted() -> TrustedKeys {
        TrustedKeys::new(vec![test_key(0).public().clone()])
    }

    pub fn entry(user: &str, serial: u64, ts_ms: u64, status: Status) -> Entry {
        let c = credential(user, serial, ts_ms / 1000 - 10);
        let body = EntryBody {
            user: user.into(),
            credential: c.encode(),
            status,
            supernode: "sn1".into(),
            public_addr: Some("198.18.2.2:40000".parse().unwrap()),
            nat: NatKind::Cone,
            profile: Profile { display_name: "Jaan Tallinn".into(), city: "Tallinn".into(), ..Default::default() },
            last_seen: ts_ms / 1000,
            timestamp_ms: ts_ms,
            user_keys: Some(UserPublicKeys { x25519: [serial as u8; 32], ed25519: [7; 32] }),
        };
        Entry::sign(body, &c, &test_key(2)).unwrap()
    }

    #[test]
    fn sign_encode_decode_verify() {
        let e = entry("alice", 7, 1_700_000_000_000, Status::Online);
        let d = Entry::decode(&e.encode()).unwrap();
        assert_eq!(d, e);
        let c = d.verify(&trusted(), 1_700_000_001_000).unwrap();
        assert_eq!(c.subject, "alice");
        assert_eq!(d.key(), "alice");
    }

    #[test]
    fn an_old_entry_stays_valid_after_its_credential_expires() {
        // 72 h retention outlives the 24 h credential: validity is judged when made.
        let e = entry("alice", 7, 1_700_000_000_000, Status::Offline);
        e.verify(&trusted(), 1_700_000_000_000 + 71 * 3_600_000).unwrap();
    }

    #[test]
    fn forgeries_are_refused() {
        let e = entry("alice", 7, 1_700_000_000_000, Status::Online);
        let now = 1_700_000_000_000;
        // A super node changing anything breaks the signature.
        let mut forged = e.clone();
        forged.body.status = Status::Offline;
        assert_eq!(forged.verify(&trusted(), now), Err(EntryError::BadSignature));
        let mut moved = e.clone();
        moved.body.public_addr = Some("203.0.113.9:1".parse().unwrap());
        assert_eq!(moved.verify(&trusted(), now), Err(EntryError::BadSignature));
        // Someone else's credential.
        let c = credential("mallory", 9, now / 1000 - 10);
        let body = EntryBody { credential: c.encode(), ..(*e).clone() };
        let other = Entry::sign(body, &c, &test_key(2)).unwrap();
        assert!(matches!(other.verify(&trusted(), now), Err(EntryError::WrongUser { .. })));
        // From the future.
        assert_eq!(e.verify(&trusted(), now - 3_600_000), Err(EntryError::FromTheFuture));
        // Untrusted issuer.
        let other_login = TrustedKeys::new(vec![test_key(1).public().clone()]);
        assert!(matches!(e.verify(&other_login, now), Err(EntryError::Credential(_))));
        // Truncations never panic.
        let bytes = e.encode();
        for n in 0..bytes.len() {
            assert!(Entry::decode(&bytes[..n]).is_err());
        }
    }

    #[test]
    fn oversized_profiles_are_refused() {
        let c = credential("alice", 7, 1_699_999_990);
        let mut body = (*entry("alice", 7, 1_700_000_000_000, Status::Online)).clone();
        body.profile.about = "x".repeat(1100);
        assert!(matches!(Entry::sign(body, &c, &test_key(2)), Err(EntryError::ProfileTooLarge(_))));
    }

    #[test]
    fn merge_order_is_total() {
        let a = entry("alice", 7, 1_700_000_000_000, Status::Online);
        let b = entry("alice", 7, 1_700_000_000_001, Status::Away);
        let c = entry("alice", 8, 1_700_000_000_001, Status::Busy);
        assert!(b.supersedes(&a) && !a.supersedes(&b));
        assert!(c.supersedes(&b), "same time: the greater origin wins");
        assert!(!a.supersedes(&a));
    }
}
