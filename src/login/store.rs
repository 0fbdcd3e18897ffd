//! The account store: SQLite on disk, WAL journal, every write in a transaction.
//!
//! `synchronous=FULL` makes each committed registration durable before the host is told
//! it succeeded: a crash of the login server (or of the machine) loses no account.

use crate::crypto::password::Verifier;
use rusqlite::{Connection, OptionalExtension, params};
use std::path::Path;
use std::sync::Mutex;

/// What can go wrong in the store.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// SQLite failed.
    #[error("account database: {0}")]
    Sqlite(#[from] rusqlite::Error),
    /// The name is registered already.
    #[error("username is taken")]
    Taken,
    /// A row that breaks the schema's invariants (the file was edited or damaged).
    #[error("account database is damaged: {0}")]
    Damaged(String),
}

/// One account as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Account {
    /// The username as registered.
    pub username: String,
    /// SHA-256 of the shared secret.
    pub verifier: Verifier,
    /// Unix seconds.
    pub created_at: u64,
}

/// The accounts database.
#[derive(Debug)]
pub struct AccountStore {
    conn: Mutex<Connection>,
}

const SCHEMA: &str = "
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
";

impl AccountStore {
    /// Opens (creating if needed) the database file.
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        if let Some(dir) = path.parent()
            && !dir.as_os_str().is_empty()
        {
            std::fs::create_dir_all(dir).map_err(|e| rusqlite::Error::ToSqlConversionFailure(Box::new(e)))?;
        }
        let conn = Connection::open(path)?;
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(None, "synchronous", "FULL")?;
        conn.busy_timeout(std::time::Duration::from_secs(5))?;
        conn.execute_batch(SCHEMA)?;
        Ok(Self { conn: Mutex::new(conn) })
    }

    fn conn(&self) -> std::sync::MutexGuard<'_, Connection> {
        // A panic while holding the lock cannot leave SQLite half-written (the
        // transaction rolls back), so a poisoned lock is safe to reuse.
        self.conn.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Creates an account; `name_key` must be the canonical form of `name`.
    pub fn create(&self, name_key: &str, name: &str, verifier: Verifier, now: u64) -> Result<(), StoreError> {
        let mut conn = self.conn();
        let tx = conn.transaction()?;
        let inserted = tx.execute(
            "INSERT INTO accounts (name_key, name, verifier, created_at) VALUES (?1, ?2, ?3, ?4)
             ON CONFLICT (name_key) DO NOTHING",
            params![name_key, name, &verifier.0[..], now as i64],
        )?;
        if inserted == 0 {
            return Err(StoreError::Taken);
        }
        tx.commit()?;
        Ok(())
    }

    /// Looks an account up by its canonical name.
    pub fn get(&self, name_key: &str) -> Result<Option<Account>, StoreError> {
        let conn = self.conn();
        let row = conn
            .query_row("SELECT name, verifier, created_at FROM accounts WHERE name_key = ?1", [name_key], |r| {
                let v: Vec<u8> = r.get(1)?;
                let created: i64 = r.get(2)?;
                Ok((r.get::<_, String>(0)?, v, created))
            })
            .optional()?;
        let Some((username, v, created)) = row else { return Ok(None) };
        let verifier: [u8; 32] =
            v.try_into().map_err(|_| StoreError::Damaged(format!("verifier of {name_key:?} is not 32 bytes")))?;
        Ok(Some(Account { username, verifier: Verifier(verifier), created_at: created as u64 }))
    }

    /// Records a login in the recently-seen directory.
    pub fn record_seen(&self, name_key: &str, now: u64, supernode: &str) -> Result<(), StoreError> {
        self.conn().execute(
            "INSERT INTO seen (name_key, last_seen, supernode) VALUES (?1, ?2, ?3)
             ON CONFLICT (name_key) DO UPDATE SET last_seen = excluded.last_seen, supernode = excluded.supernode",
            params![name_key, now as i64, supernode],
        )?;
        Ok(())
    }

    /// The directory's record of a user: (last login, last super node).
    pub fn seen(&self, name_key: &str) -> Result<Option<(u64, String)>, StoreError> {
        let row = self
            .conn()
            .query_row("SELECT last_seen, supernode FROM seen WHERE name_key = ?1", [name_key], |r| {
                Ok((r.get::<_, i64>(0)? as u64, r.get::<_, String>(1)?))
            })
            .optional()?;
        Ok(row)
    }

    /// Number of accounts.
    pub fn count(&self) -> Result<u64, StoreError> {
        Ok(self.conn().query_row("SELECT count(*) FROM accounts", [], |r| r.get::<_, i64>(0))? as u64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn create_get_unique_and_persistent() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("accounts.sqlite");
        {
            let s = AccountStore::open(&p).unwrap();
            s.create("alice", "Alice", Verifier([1; 32]), 5).unwrap();
            assert!(matches!(s.create("alice", "ALICE", Verifier([2; 32]), 6), Err(StoreError::Taken)));
            assert_eq!(s.count().unwrap(), 1);
        }
        let s = AccountStore::open(&p).unwrap();
        let a = s.get("alice").unwrap().unwrap();
        assert_eq!(a, Account { username: "Alice".into(), verifier: Verifier([1; 32]), created_at: 5 });
        assert!(s.get("bob").unwrap().is_none());
    }
}
