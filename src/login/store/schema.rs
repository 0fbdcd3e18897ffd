//! The account database's schema and its migrations: `PRAGMA user_version` says which
//! this file has, and opening brings it to [`SCHEMA_VERSION`] in one transaction.

use super::StoreError;
use rusqlite::{Connection, TransactionBehavior};

/// The schema this build writes. Version 0 is every file from before versions were kept
/// (no user keys); 1 adds the accounts' user public keys.
pub const SCHEMA_VERSION: i64 = 1;

/// Version 0: the tables as they were before versions were kept. `IF NOT EXISTS`, since a
/// file at version 0 may hold them already.
pub(super) const SCHEMA_0: &str = "
CREATE TABLE IF NOT EXISTS seen (
    name_key   TEXT PRIMARY KEY NOT NULL,   -- the recently-seen directory: last login of each user
    last_seen  INTEGER NOT NULL,
    supernode  TEXT NOT NULL                -- the super node the host last used, as it reported
) STRICT;
CREATE TABLE IF NOT EXISTS accounts (
    name_key   TEXT PRIMARY KEY NOT NULL,   -- lower-case username: uniqueness ignores case
    name       TEXT NOT NULL,               -- as the user typed it at registration
    verifier   BLOB NOT NULL CHECK (length(verifier) = 32),
    created_at INTEGER NOT NULL
) STRICT;
CREATE TABLE IF NOT EXISTS meta (
    key        TEXT PRIMARY KEY NOT NULL,
    value      BLOB NOT NULL
) STRICT;
CREATE TABLE IF NOT EXISTS buddies (
    owner      TEXT NOT NULL,               -- canonical username of the list's owner
    tag        INTEGER NOT NULL CHECK (tag BETWEEN 0 AND 4294967295),  -- TagKey::tag(owner, contact)
    relation   INTEGER NOT NULL CHECK (relation BETWEEN 1 AND 4),      -- Relation::code
    sealed     BLOB NOT NULL,               -- the contact's name, sealed under the owner's list key
    changed_at INTEGER NOT NULL,
    PRIMARY KEY (owner, tag)
) STRICT, WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS buddy_requests (
    from_key   TEXT NOT NULL,               -- canonical usernames: a request names both sides
    to_key     TEXT NOT NULL,
    message    TEXT NOT NULL,
    at         INTEGER NOT NULL,
    PRIMARY KEY (from_key, to_key)
) STRICT;
CREATE INDEX IF NOT EXISTS buddy_requests_by_recipient ON buddy_requests (to_key, at);
CREATE TABLE IF NOT EXISTS revocations (
    key_id     BLOB PRIMARY KEY NOT NULL CHECK (length(key_id) = 8),  -- the revoked credential's key id
    kind       INTEGER NOT NULL CHECK (kind IN (1, 2)),               -- 1 host, 2 super node
    subject    TEXT NOT NULL,
    expires_at INTEGER NOT NULL,               -- the entry leaves the signed list after this
    revoked_at INTEGER NOT NULL
) STRICT;
";

/// Version 1: each account's user public keys (`UserPublicKeys::to_bytes`), given at
/// registration and at every login; NULL until the account's host gives them.
const SCHEMA_1: &str = "
ALTER TABLE accounts ADD COLUMN user_keys BLOB CHECK (user_keys IS NULL OR length(user_keys) = 64);
";

/// Brings the file to [`SCHEMA_VERSION`]. IMMEDIATE: two login servers opening one file
/// at once migrate it once, the second finding it done.
pub(super) fn migrate(conn: &mut Connection) -> Result<(), StoreError> {
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    let version: i64 = tx.query_row("PRAGMA user_version", [], |r| r.get(0))?;
    match version {
        0 => {
            tx.execute_batch(SCHEMA_0)?;
            tx.execute_batch(SCHEMA_1)?;
            tx.pragma_update(None, "user_version", SCHEMA_VERSION)?;
        }
        SCHEMA_VERSION => {}
        v => return Err(StoreError::NewerSchema(v)),
    }
    tx.commit()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::super::{AccountStore, Verifier};
    use super::*;
    use crate::crypto::user::UserPublicKeys;

    const KEYS: UserPublicKeys = UserPublicKeys { x25519: [3; 32], ed25519: [4; 32] };

    /// A file as a build before versions wrote it (version 0: no user keys) opens, keeps
    /// its accounts and sightings, and takes keys from then on.
    #[test]
    fn a_file_from_before_versions_migrates_and_keeps_its_accounts() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("accounts.sqlite");
        {
            let conn = Connection::open(&p).unwrap();
            conn.execute_batch(SCHEMA_0).unwrap();
            conn.execute(
                "INSERT INTO accounts (name_key, name, verifier, created_at) VALUES ('carol', 'Carol', ?1, 5)",
                [&[1u8; 32][..]],
            )
            .unwrap();
            conn.execute("INSERT INTO seen (name_key, last_seen, supernode) VALUES ('carol', 9, 'sn1')", []).unwrap();
            let v: i64 = conn.query_row("PRAGMA user_version", [], |r| r.get(0)).unwrap();
            assert_eq!(v, 0);
            let cols: i64 = conn
                .query_row("SELECT count(*) FROM pragma_table_info('accounts') WHERE name = 'user_keys'", [], |r| {
                    r.get(0)
                })
                .unwrap();
            assert_eq!(cols, 0, "the old file has no keys column");
        }
        let s = AccountStore::open(&p).unwrap();
        let v: i64 = s.conn().query_row("PRAGMA user_version", [], |r| r.get(0)).unwrap();
        assert_eq!(v, SCHEMA_VERSION);
        assert_eq!(s.get("carol").unwrap().unwrap().verifier, Verifier([1; 32]));
        assert_eq!(s.seen("carol").unwrap(), Some((9, "sn1".into())));
        assert_eq!(s.user_keys("carol").unwrap(), None, "no keys until carol's host gives them");
        s.record_login("carol", 10, "sn2", Some(&KEYS)).unwrap();
        drop(s);
        // Opened again: at the current version, nothing to do, the keys still there.
        let s = AccountStore::open(&p).unwrap();
        assert_eq!(s.user_keys("carol").unwrap(), Some(KEYS));
        assert_eq!(s.seen("carol").unwrap(), Some((10, "sn2".into())));
    }

    #[test]
    fn a_newer_file_is_refused() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("accounts.sqlite");
        drop(AccountStore::open(&p).unwrap());
        Connection::open(&p).unwrap().pragma_update(None, "user_version", SCHEMA_VERSION + 1).unwrap();
        assert!(matches!(AccountStore::open(&p), Err(StoreError::NewerSchema(v)) if v == SCHEMA_VERSION + 1));
    }

    /// Registration stores the keys; the latest login's keys win (a new password brings
    /// new ones); a login without keys, from an older host, leaves them.
    #[test]
    fn keys_from_registration_then_the_latest_login() {
        let d = tempfile::tempdir().unwrap();
        let s = AccountStore::open(&d.path().join("accounts.sqlite")).unwrap();
        s.create("carol", "carol", Verifier([1; 32]), Some(&KEYS), 1).unwrap();
        s.create("dave", "dave", Verifier([1; 32]), None, 1).unwrap();
        assert_eq!(s.user_keys("carol").unwrap(), Some(KEYS));
        assert_eq!(s.user_keys("dave").unwrap(), None);
        assert_eq!(s.user_keys("nobody").unwrap(), None);
        assert_eq!(s.seen("carol").unwrap(), None, "registered, never logged in");
        let newer = UserPublicKeys { x25519: [5; 32], ed25519: [6; 32] };
        s.record_login("carol", 2, "sn1", Some(&newer)).unwrap();
        assert_eq!(s.user_keys("carol").unwrap(), Some(newer));
        s.record_login("carol", 3, "sn1", None).unwrap();
        assert_eq!(s.user_keys("carol").unwrap(), Some(newer));
        assert!(matches!(s.create("carol", "Carol", Verifier([2; 32]), Some(&KEYS), 4), Err(StoreError::Taken)));
        assert_eq!(s.user_keys("carol").unwrap(), Some(newer), "a refused registration changes nothing");
    }
}
