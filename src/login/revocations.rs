//! Revoked credentials in the account database, and what `confab revoke` records.
//!
//! One row per revoked key (its credential's kind, subject and expiry) and the list's
//! version in `meta`; a revocation is one transaction that adds the row and raises the
//! version, so a login server reading the database (this process or another one on the
//! same file) signs a new list when, and only when, the version moved.

use super::store::{AccountStore, StoreError};
use crate::crypto::KeyId;
use crate::crypto::credential::{Credential, CredentialKind};
use crate::crypto::revocation::Revocation;
use rusqlite::{OptionalExtension, TransactionBehavior, params};

/// The `meta` key of the revocation list's version.
const VERSION_META: &str = "revocation_version";

/// How long a revocation by key id alone stays on the list (no credential says how long
/// the key was certified for): a little over the longest `confab keygen supernode --days`
/// default of 365 days.
pub const BY_KEY_LIFETIME_SECS: u64 = 400 * 86_400;

/// What to revoke, as an operator names it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// A credential file (`confab keygen supernode` writes them): its key, kind, subject, expiry.
    Credential(Credential),
    /// A key id (16 hex digits), of a super node's credential unless `kind` says otherwise.
    Key {
        /// The key id.
        key: KeyId,
        /// Host or super node.
        kind: CredentialKind,
        /// A name for the list's readers.
        subject: String,
    },
}

impl Target {
    /// The list entry, at `now`.
    pub fn entry(&self, now: u64) -> Revocation {
        match self {
            Self::Credential(c) => Revocation {
                key: c.public_key.id(),
                kind: c.kind,
                subject: c.subject.clone(),
                expires_at: c.expires_at,
            },
            Self::Key { key, kind, subject } => Revocation {
                key: *key,
                kind: *kind,
                subject: subject.clone(),
                expires_at: now.saturating_add(BY_KEY_LIFETIME_SECS),
            },
        }
    }
}

/// Parses a key id written as 16 hex digits.
pub fn parse_key_id(s: &str) -> Option<KeyId> {
    hex::decode(s.trim()).ok().and_then(|b| <[u8; 8]>::try_from(b).ok()).map(KeyId)
}

fn kind_code(k: CredentialKind) -> i64 {
    match k {
        CredentialKind::Host => 1,
        CredentialKind::SuperNode => 2,
    }
}

impl AccountStore {
    /// Records a revocation (replacing an earlier one of the same key) and raises the
    /// list's version to at least `now`; returns the new version.
    pub fn revoke(&self, r: &Revocation, now: u64) -> Result<u64, StoreError> {
        let mut conn = self.conn();
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        tx.execute(
            "INSERT INTO revocations (key_id, kind, subject, expires_at, revoked_at) VALUES (?1, ?2, ?3, ?4, ?5)
             ON CONFLICT (key_id) DO UPDATE SET kind = excluded.kind, subject = excluded.subject,
                 expires_at = max(expires_at, excluded.expires_at), revoked_at = excluded.revoked_at",
            params![&r.key.0[..], kind_code(r.kind), r.subject, r.expires_at.min(i64::MAX as u64) as i64, now as i64],
        )?;
        let old = read_version(&tx)?;
        let version = now.max(old.saturating_add(1));
        tx.execute(
            "INSERT INTO meta (key, value) VALUES (?1, ?2) ON CONFLICT (key) DO UPDATE SET value = excluded.value",
            params![VERSION_META, &version.to_be_bytes()[..]],
        )?;
        tx.commit()?;
        Ok(version)
    }

    /// The list's version (0: nothing was ever revoked).
    pub fn revocation_version(&self) -> Result<u64, StoreError> {
        read_version(&self.conn())
    }

    /// The version and the revocations still in force at `now` (expired ones are left out).
    pub fn revocations(&self, now: u64) -> Result<(u64, Vec<Revocation>), StoreError> {
        let conn = self.conn();
        let version = read_version(&conn)?;
        let mut stmt = conn.prepare(
            "SELECT key_id, kind, subject, expires_at FROM revocations WHERE expires_at >= ?1 ORDER BY key_id",
        )?;
        let rows = stmt.query_map([now.min(i64::MAX as u64) as i64], |r| {
            Ok((r.get::<_, Vec<u8>>(0)?, r.get::<_, i64>(1)?, r.get::<_, String>(2)?, r.get::<_, i64>(3)?))
        })?;
        let mut out = Vec::new();
        for row in rows {
            let (key, kind, subject, expires_at) = row?;
            let key: [u8; 8] =
                key.try_into().map_err(|_| StoreError::Damaged("a revoked key id is not 8 bytes".into()))?;
            let kind = match kind {
                1 => CredentialKind::Host,
                2 => CredentialKind::SuperNode,
                k => return Err(StoreError::Damaged(format!("revocation kind {k}"))),
            };
            out.push(Revocation { key: KeyId(key), kind, subject, expires_at: expires_at as u64 });
        }
        Ok((version, out))
    }
}

fn read_version(conn: &rusqlite::Connection) -> Result<u64, StoreError> {
    let v: Option<Vec<u8>> =
        conn.query_row("SELECT value FROM meta WHERE key = ?1", [VERSION_META], |r| r.get(0)).optional()?;
    match v {
        None => Ok(0),
        Some(b) => Ok(u64::from_be_bytes(
            b.try_into().map_err(|_| StoreError::Damaged("the revocation version is not 8 bytes".into()))?,
        )),
    }
}

/// Resolves what an operator typed: a credential file, a key id (16 hex digits, of
/// `kind`), or the name of a super node of `supernode.nodes` (its credential file).
pub fn resolve(
    target: &str,
    kind: CredentialKind,
    subject: &str,
    cfg: &crate::config::Config,
) -> anyhow::Result<Target> {
    use anyhow::Context;
    let path = std::path::Path::new(target);
    if path.is_file() {
        return Ok(Target::Credential(crate::keygen::read_credential(path)?));
    }
    if let Some(key) = parse_key_id(target) {
        return Ok(Target::Key { key, kind, subject: subject.to_owned() });
    }
    if let Some((i, n)) = cfg.supernode.nodes.iter().enumerate().find(|(_, n)| n.name == target) {
        let p = crate::config::path(&n.credential);
        return Ok(Target::Credential(
            crate::keygen::read_credential(&p).with_context(|| format!("supernode.nodes[{i}].credential"))?,
        ));
    }
    anyhow::bail!(
        "{target:?} is neither a credential file, a key id (16 hex digits), nor a super node of supernode.nodes"
    )
}

/// Records the revocation of `target` in the login server's database at `now`: the
/// running login server signs and serves the new list at its next request. Returns the
/// entry and the list's new version.
pub fn revoke(cfg: &crate::config::LoginServerConfig, target: &Target, now: u64) -> anyhow::Result<(Revocation, u64)> {
    use anyhow::Context;
    let db = crate::config::path(&cfg.database);
    let store = AccountStore::open(&db).with_context(|| format!("login_server.database: {}", db.display()))?;
    let entry = target.entry(now);
    let version = store.revoke(&entry, now).context("recording the revocation")?;
    Ok((entry, version))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn revocations_are_kept_versioned_and_expire_from_the_list() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("accounts.sqlite");
        let store = AccountStore::open(&path).unwrap();
        assert_eq!(store.revocations(100).unwrap(), (0, vec![]));
        let r = |n: u8, expires_at: u64| Revocation {
            key: KeyId([n; 8]),
            kind: CredentialKind::SuperNode,
            subject: format!("sn{n}"),
            expires_at,
        };
        assert_eq!(store.revoke(&r(1, 1000), 100).unwrap(), 100);
        // Within the same second the version still grows.
        assert_eq!(store.revoke(&r(2, 150), 100).unwrap(), 101);
        let (v, list) = store.revocations(120).unwrap();
        assert_eq!((v, list.len()), (101, 2));
        // Another connection to the same file (the `confab revoke` command) sees it too.
        let other = AccountStore::open(&path).unwrap();
        assert_eq!(other.revoke(&r(3, 1000), 90).unwrap(), 102, "never lower, whatever the clock");
        assert_eq!(store.revocation_version().unwrap(), 102);
        let (_, later) = store.revocations(200).unwrap();
        assert_eq!(later.iter().map(|e| e.key.0[0]).collect::<Vec<_>>(), vec![1, 3], "the expired entry left");
        assert_eq!(parse_key_id("0102030405060708"), Some(KeyId([1, 2, 3, 4, 5, 6, 7, 8])));
        assert_eq!(parse_key_id("01"), None);
    }
}
