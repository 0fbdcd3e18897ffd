//! The account store: SQLite on disk, WAL journal, every write in a transaction.
//!
//! `synchronous=FULL` makes each committed registration durable before the host is told
//! it succeeded: a crash of the login server (or of the machine) loses no account.
//!
//! Buddy lists live here too. A list row holds the contact's 4-byte tag and a record only
//! the owner's password opens, never the contact's name; the pending authorization
//! requests do name both users, but only until they are answered.

use crate::buddy::op::{CONTACTS_MAX, Incoming, PAGE_ROWS, REQUESTS_PENDING_MAX, Row};
use crate::buddy::record::SEALED_LEN_MAX;
use crate::buddy::{Relation, Tag, TagKey};
use crate::crypto::password::Verifier;
use crate::crypto::user::UserPublicKeys;
use rusqlite::{Connection, OptionalExtension, Transaction, TransactionBehavior, params};
use std::path::Path;
use std::sync::Mutex;

mod schema;
pub use schema::SCHEMA_VERSION;

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
    /// The named contact has no account.
    #[error("no account named {0:?}")]
    UnknownUser(String),
    /// The owner's buddy list has [`CONTACTS_MAX`] contacts already.
    #[error("the buddy list has {CONTACTS_MAX} contacts already")]
    Full,
    /// No pending authorization request from that user.
    #[error("no pending request from {0:?}")]
    NotPending(String),
    /// The file was written by a newer build.
    #[error("account database has schema version {0}, newer than this build's {SCHEMA_VERSION}")]
    NewerSchema(i64),
}

/// What an Add did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Added {
    /// Both sides are authorized (the contact had asked first, or had authorized us).
    Authorized,
    /// A request is waiting for the contact's answer.
    Requested,
    /// The contact blocked the owner: the owner's row says Requested, but no request was made.
    RequestedSilently,
}

impl Added {
    /// The relation the owner is told about (a silent request looks like any other).
    pub fn relation(self) -> Relation {
        match self {
            Self::Authorized => Relation::Authorized,
            Self::Requested | Self::RequestedSilently => Relation::Requested,
        }
    }
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
    tag_key: TagKey,
}

/// The `meta` key of the contact-tag secret.
const TAG_KEY_META: &str = "buddy_tag_key";

impl AccountStore {
    /// Opens (creating if needed) the database file.
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        if let Some(dir) = path.parent()
            && !dir.as_os_str().is_empty()
        {
            crate::fsutil::private_dir(dir).map_err(|e| rusqlite::Error::ToSqlConversionFailure(Box::new(e)))?;
        }
        // Accounts are private: 0600, and SQLite gives its WAL and -shm files the same mode.
        crate::fsutil::private_file(path).map_err(|e| rusqlite::Error::ToSqlConversionFailure(Box::new(e)))?;
        let mut conn = Connection::open(path)?;
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(None, "synchronous", "FULL")?;
        conn.busy_timeout(std::time::Duration::from_secs(5))?;
        schema::migrate(&mut conn)?;
        let tag_key = load_tag_key(&mut conn)?;
        Ok(Self { conn: Mutex::new(conn), tag_key })
    }

    /// The secret that turns (owner, contact) into a contact's tag.
    pub fn tag_key(&self) -> &TagKey {
        &self.tag_key
    }

    pub(super) fn conn(&self) -> std::sync::MutexGuard<'_, Connection> {
        // A panic while holding the lock cannot leave SQLite half-written (the
        // transaction rolls back), so a poisoned lock is safe to reuse.
        self.conn.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Creates an account; `name_key` must be the canonical form of `name`;
    /// `user_keys` are the user's public keys, served by the directory from now on.
    pub fn create(
        &self,
        name_key: &str,
        name: &str,
        verifier: Verifier,
        user_keys: Option<&UserPublicKeys>,
        now: u64,
    ) -> Result<(), StoreError> {
        let mut conn = self.conn();
        let tx = conn.transaction()?;
        let keys = user_keys.map(|k| k.to_bytes().to_vec());
        let inserted = tx.execute(
            "INSERT INTO accounts (name_key, name, verifier, created_at, user_keys) VALUES (?1, ?2, ?3, ?4, ?5)
             ON CONFLICT (name_key) DO NOTHING",
            params![name_key, name, &verifier.0[..], now as i64, keys],
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

    /// Records a login in the recently-seen directory, and the user keys it gave (if any).
    /// The latest authenticated login's keys win: they derive from the password, so a new
    /// password brings new keys, and only the password's holder gets this far. A login
    /// without keys (an older host) leaves the stored ones.
    pub fn record_login(
        &self,
        name_key: &str,
        now: u64,
        supernode: &str,
        user_keys: Option<&UserPublicKeys>,
    ) -> Result<(), StoreError> {
        self.write(|tx| {
            tx.execute(
                "INSERT INTO seen (name_key, last_seen, supernode) VALUES (?1, ?2, ?3)
                 ON CONFLICT (name_key) DO UPDATE SET last_seen = excluded.last_seen, supernode = excluded.supernode",
                params![name_key, now as i64, supernode],
            )?;
            if let Some(k) = user_keys {
                tx.execute(
                    "UPDATE accounts SET user_keys = ?2 WHERE name_key = ?1",
                    params![name_key, &k.to_bytes()[..]],
                )?;
            }
            Ok(())
        })
    }

    /// The user public keys of an account, as last given (None: no such account, or it
    /// never gave any).
    pub fn user_keys(&self, name_key: &str) -> Result<Option<UserPublicKeys>, StoreError> {
        let raw: Option<Option<Vec<u8>>> = self
            .conn()
            .query_row("SELECT user_keys FROM accounts WHERE name_key = ?1", [name_key], |r| r.get(0))
            .optional()?;
        let Some(b) = raw.flatten() else { return Ok(None) };
        let b: [u8; 64] =
            b.try_into().map_err(|_| StoreError::Damaged(format!("user keys of {name_key:?} are not 64 bytes")))?;
        Ok(Some(UserPublicKeys::from_bytes(&b)))
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

    fn write<T>(&self, f: impl FnOnce(&Transaction<'_>) -> Result<T, StoreError>) -> Result<T, StoreError> {
        let mut conn = self.conn();
        // IMMEDIATE takes the write lock up front: these transactions read then write, and
        // a deferred one could fail to upgrade if another process writes in between.
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let out = f(&tx)?;
        tx.commit()?;
        Ok(out)
    }

    /// One page of `owner`'s list: up to [`PAGE_ROWS`] rows with a tag above `after`, in
    /// tag order, and whether more follow.
    pub fn buddy_page(&self, owner: &str, after: Option<u32>) -> Result<(Vec<Row>, bool), StoreError> {
        let conn = self.conn();
        let mut st = conn.prepare_cached(
            "SELECT tag, relation, sealed, changed_at FROM buddies WHERE owner = ?1 AND tag > ?2
             ORDER BY tag LIMIT ?3",
        )?;
        let after = after.map_or(-1, i64::from);
        let raw = st
            .query_map(params![owner, after, PAGE_ROWS as i64 + 1], |r| {
                Ok((r.get::<_, i64>(0)?, r.get::<_, i64>(1)?, r.get::<_, Vec<u8>>(2)?, r.get::<_, i64>(3)?))
            })?
            .collect::<Result<Vec<_>, _>>()?;
        let more = raw.len() > PAGE_ROWS;
        let rows = raw
            .into_iter()
            .take(PAGE_ROWS)
            .map(|(tag, rel, sealed, changed)| {
                let tag = u32::try_from(tag).map_err(|_| StoreError::Damaged(format!("buddy tag {tag}")))?;
                let relation =
                    Relation::from_code(rel).ok_or_else(|| StoreError::Damaged(format!("buddy relation {rel}")))?;
                // A longer record would not fit the reply frame.
                if sealed.len() > SEALED_LEN_MAX {
                    return Err(StoreError::Damaged(format!("buddy record of {} bytes", sealed.len())));
                }
                Ok(Row { tag, relation, sealed, changed_at: changed.max(0) as u64 })
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok((rows, more))
    }

    /// Pending requests to `owner`, oldest first, at most `limit` (and
    /// [`REQUESTS_PENDING_MAX`]); `from` is the requester's name as registered.
    pub fn buddy_requests(&self, owner: &str, limit: usize) -> Result<Vec<Incoming>, StoreError> {
        let conn = self.conn();
        let mut st = conn.prepare_cached(
            "SELECT coalesce(a.name, r.from_key), r.message, r.at FROM buddy_requests r
             LEFT JOIN accounts a ON a.name_key = r.from_key
             WHERE r.to_key = ?1 ORDER BY r.at, r.rowid LIMIT ?2",
        )?;
        let limit = limit.min(REQUESTS_PENDING_MAX) as i64;
        let items = st
            .query_map(params![owner, limit], |r| {
                Ok(Incoming { from: r.get(0)?, message: r.get(1)?, at: r.get::<_, i64>(2)?.max(0) as u64 })
            })?
            .collect::<Result<Vec<_>, _>>()?;
        Ok(items)
    }

    /// Adds `contact` to `owner`'s list (both canonical, different), asking for
    /// authorization, or completing it if the contact asked first or had authorized us.
    pub fn buddy_add(
        &self,
        owner: &str,
        contact: &str,
        sealed: &[u8],
        message: &str,
        now: u64,
    ) -> Result<Added, StoreError> {
        let (mine, theirs) = (self.tag_key.tag(owner, contact), self.tag_key.tag(contact, owner));
        self.write(|tx| {
            require_account(tx, contact)?;
            let existing = relation_of(tx, owner, mine)?;
            require_room(tx, owner, existing)?;
            let their_row = relation_of(tx, contact, theirs)?;
            if pending(tx, contact, owner)? || their_row == Some(Relation::Authorized) {
                upsert_row(tx, owner, mine, Relation::Authorized, sealed, now)?;
                promote(tx, contact, theirs, Relation::Authorized, now)?;
                delete_requests_between(tx, owner, contact)?;
                return Ok(Added::Authorized);
            }
            if existing == Some(Relation::Authorized) {
                // Re-adding only refreshes the record; going back to Requested would also
                // tell the owner that the contact has since blocked them.
                upsert_row(tx, owner, mine, Relation::Authorized, sealed, now)?;
                return Ok(Added::Authorized);
            }
            upsert_row(tx, owner, mine, Relation::Requested, sealed, now)?;
            if their_row == Some(Relation::Blocked) {
                return Ok(Added::RequestedSilently);
            }
            tx.execute(
                "INSERT INTO buddy_requests (from_key, to_key, message, at) VALUES (?1, ?2, ?3, ?4)
                 ON CONFLICT (from_key, to_key) DO UPDATE SET message = excluded.message, at = excluded.at",
                params![owner, contact, message, now as i64],
            )?;
            tx.execute(
                "DELETE FROM buddy_requests WHERE to_key = ?1 AND rowid NOT IN (
                     SELECT rowid FROM buddy_requests WHERE to_key = ?1 ORDER BY at DESC, rowid DESC LIMIT ?2)",
                params![contact, REQUESTS_PENDING_MAX as i64],
            )?;
            Ok(Added::Requested)
        })
    }

    /// Answers `from`'s pending request to `owner`: accepting authorizes both sides (and
    /// stores `sealed` as the owner's record of `from`); declining marks the requester's row.
    pub fn buddy_answer(
        &self,
        owner: &str,
        from: &str,
        accept: bool,
        sealed: &[u8],
        now: u64,
    ) -> Result<Relation, StoreError> {
        let (mine, theirs) = (self.tag_key.tag(owner, from), self.tag_key.tag(from, owner));
        self.write(|tx| {
            if !pending(tx, from, owner)? {
                return Err(StoreError::NotPending(from.to_owned()));
            }
            let relation = if accept {
                require_room(tx, owner, relation_of(tx, owner, mine)?)?;
                upsert_row(tx, owner, mine, Relation::Authorized, sealed, now)?;
                promote(tx, from, theirs, Relation::Authorized, now)?;
                Relation::Authorized
            } else {
                promote(tx, from, theirs, Relation::Declined, now)?;
                Relation::Declined
            };
            delete_requests_between(tx, owner, from)?;
            Ok(relation)
        })
    }

    /// Takes `contact` off `owner`'s list and withdraws a pending request to them.
    pub fn buddy_remove(&self, owner: &str, contact: &str) -> Result<(), StoreError> {
        let mine = self.tag_key.tag(owner, contact);
        self.write(|tx| {
            tx.execute("DELETE FROM buddies WHERE owner = ?1 AND tag = ?2", params![owner, i64::from(mine.0)])?;
            tx.execute("DELETE FROM buddy_requests WHERE from_key = ?1 AND to_key = ?2", params![owner, contact])?;
            Ok(())
        })
    }

    /// Marks `contact` blocked on `owner`'s list and drops the requests between them.
    pub fn buddy_block(&self, owner: &str, contact: &str, sealed: &[u8], now: u64) -> Result<(), StoreError> {
        let mine = self.tag_key.tag(owner, contact);
        self.write(|tx| {
            require_account(tx, contact)?;
            require_room(tx, owner, relation_of(tx, owner, mine)?)?;
            upsert_row(tx, owner, mine, Relation::Blocked, sealed, now)?;
            // The owner's own request goes too: were it accepted later, it would turn the
            // Blocked row back into Authorized.
            delete_requests_between(tx, owner, contact)?;
            Ok(())
        })
    }
}

fn load_tag_key(conn: &mut Connection) -> Result<TagKey, StoreError> {
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    let fresh: [u8; 32] = crate::crypto::random::bytes();
    // Created once, by whichever process opens the file first; changing it later would
    // orphan every stored tag.
    tx.execute(
        "INSERT INTO meta (key, value) VALUES (?1, ?2) ON CONFLICT (key) DO NOTHING",
        params![TAG_KEY_META, &fresh[..]],
    )?;
    let v: Vec<u8> = tx.query_row("SELECT value FROM meta WHERE key = ?1", [TAG_KEY_META], |r| r.get(0))?;
    tx.commit()?;
    let k: [u8; 32] = v.try_into().map_err(|_| StoreError::Damaged(format!("{TAG_KEY_META} is not 32 bytes")))?;
    Ok(TagKey(k))
}

fn require_account(tx: &Transaction<'_>, name_key: &str) -> Result<(), StoreError> {
    let found = tx.query_row("SELECT 1 FROM accounts WHERE name_key = ?1", [name_key], |_| Ok(())).optional()?;
    found.ok_or_else(|| StoreError::UnknownUser(name_key.to_owned()))
}

/// Refuses a new row on a full list (`existing` is the row this write would replace).
fn require_room(tx: &Transaction<'_>, owner: &str, existing: Option<Relation>) -> Result<(), StoreError> {
    if existing.is_some() {
        return Ok(());
    }
    let n: i64 = tx.query_row("SELECT count(*) FROM buddies WHERE owner = ?1", [owner], |r| r.get(0))?;
    if n as usize >= CONTACTS_MAX {
        return Err(StoreError::Full);
    }
    Ok(())
}

fn relation_of(tx: &Transaction<'_>, owner: &str, tag: Tag) -> Result<Option<Relation>, StoreError> {
    let code: Option<i64> = tx
        .query_row(
            "SELECT relation FROM buddies WHERE owner = ?1 AND tag = ?2",
            params![owner, i64::from(tag.0)],
            |r| r.get(0),
        )
        .optional()?;
    code.map(|c| Relation::from_code(c).ok_or_else(|| StoreError::Damaged(format!("buddy relation {c}")))).transpose()
}

fn upsert_row(
    tx: &Transaction<'_>,
    owner: &str,
    tag: Tag,
    relation: Relation,
    sealed: &[u8],
    now: u64,
) -> Result<(), StoreError> {
    tx.execute(
        "INSERT INTO buddies (owner, tag, relation, sealed, changed_at) VALUES (?1, ?2, ?3, ?4, ?5)
         ON CONFLICT (owner, tag) DO UPDATE SET relation = excluded.relation, sealed = excluded.sealed,
             changed_at = excluded.changed_at",
        params![owner, i64::from(tag.0), relation.code(), sealed, now as i64],
    )?;
    Ok(())
}

/// Moves the requester's row on from Requested; any other state (removed, blocked since)
/// is the requester's own choice and stays.
fn promote(tx: &Transaction<'_>, owner: &str, tag: Tag, to: Relation, now: u64) -> Result<(), StoreError> {
    tx.execute(
        "UPDATE buddies SET relation = ?3, changed_at = ?4 WHERE owner = ?1 AND tag = ?2 AND relation = ?5",
        params![owner, i64::from(tag.0), to.code(), now as i64, Relation::Requested.code()],
    )?;
    Ok(())
}

fn pending(tx: &Transaction<'_>, from: &str, to: &str) -> Result<bool, StoreError> {
    let found = tx
        .query_row("SELECT 1 FROM buddy_requests WHERE from_key = ?1 AND to_key = ?2", [from, to], |_| Ok(()))
        .optional()?;
    Ok(found.is_some())
}

fn delete_requests_between(tx: &Transaction<'_>, a: &str, b: &str) -> Result<(), StoreError> {
    tx.execute(
        "DELETE FROM buddy_requests WHERE (from_key = ?1 AND to_key = ?2) OR (from_key = ?2 AND to_key = ?1)",
        [a, b],
    )?;
    Ok(())
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
            s.create("alice", "Alice", Verifier([1; 32]), None, 5).unwrap();
            assert!(matches!(s.create("alice", "ALICE", Verifier([2; 32]), None, 6), Err(StoreError::Taken)));
            assert_eq!(s.count().unwrap(), 1);
        }
        let s = AccountStore::open(&p).unwrap();
        let a = s.get("alice").unwrap().unwrap();
        assert_eq!(a, Account { username: "Alice".into(), verifier: Verifier([1; 32]), created_at: 5 });
        assert!(s.get("bob").unwrap().is_none());
    }

    #[test]
    fn the_database_its_wal_and_its_folder_are_private() {
        use std::os::unix::fs::PermissionsExt;
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("data/accounts.sqlite");
        let s = AccountStore::open(&p).unwrap();
        s.create("alice", "Alice", Verifier([1; 32]), None, 5).unwrap();
        let mode = |f: &Path| std::fs::metadata(f).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(p.parent().unwrap()), 0o700);
        assert_eq!(mode(&p), 0o600);
        let wal = p.with_extension("sqlite-wal");
        assert!(wal.exists(), "WAL mode keeps a -wal file while the store is open");
        assert_eq!(mode(&wal), 0o600, "SQLite gives the WAL the database's mode");
    }

    fn with_users(names: &[&str]) -> (tempfile::TempDir, AccountStore) {
        let d = tempfile::tempdir().unwrap();
        let s = AccountStore::open(&d.path().join("accounts.sqlite")).unwrap();
        for n in names {
            s.create(&n.to_ascii_lowercase(), n, Verifier([0; 32]), None, 1).unwrap();
        }
        (d, s)
    }

    fn relation(s: &AccountStore, owner: &str, contact: &str) -> Option<Relation> {
        let tag = s.tag_key().tag(owner, contact);
        let conn = s.conn();
        let tx = conn.unchecked_transaction().unwrap();
        relation_of(&tx, owner, tag).unwrap()
    }

    fn pending_count(s: &AccountStore) -> i64 {
        s.conn().query_row("SELECT count(*) FROM buddy_requests", [], |r| r.get(0)).unwrap()
    }

    #[test]
    fn request_accept_decline_block() {
        let (_d, s) = with_users(&["Alice", "bob", "carol", "dave"]);
        assert_eq!(s.buddy_add("alice", "bob", b"r1", "hi", 10).unwrap(), Added::Requested);
        assert_eq!(relation(&s, "alice", "bob"), Some(Relation::Requested));
        let reqs = s.buddy_requests("bob", 100).unwrap();
        assert_eq!(reqs, vec![Incoming { from: "Alice".into(), message: "hi".into(), at: 10 }]);
        assert!(s.buddy_requests("alice", 100).unwrap().is_empty());
        assert_eq!(s.buddy_answer("bob", "alice", true, b"r2", 11).unwrap(), Relation::Authorized);
        assert_eq!(relation(&s, "alice", "bob"), Some(Relation::Authorized));
        assert_eq!(relation(&s, "bob", "alice"), Some(Relation::Authorized));
        assert!(s.buddy_requests("bob", 100).unwrap().is_empty());
        assert!(matches!(s.buddy_answer("bob", "alice", true, b"r2", 12), Err(StoreError::NotPending(_))));

        s.buddy_add("carol", "bob", b"r3", "", 12).unwrap();
        assert_eq!(s.buddy_answer("bob", "carol", false, b"", 13).unwrap(), Relation::Declined);
        assert_eq!(relation(&s, "carol", "bob"), Some(Relation::Declined));
        assert_eq!(relation(&s, "bob", "carol"), None);

        // Dave asked first: Carol's add completes it.
        s.buddy_add("dave", "carol", b"r4", "", 14).unwrap();
        assert_eq!(s.buddy_add("carol", "dave", b"r5", "", 15).unwrap(), Added::Authorized);
        assert_eq!(relation(&s, "dave", "carol"), Some(Relation::Authorized));
        assert_eq!(pending_count(&s), 0);

        // Dave blocks Alice: her request is made on her side only.
        s.buddy_block("dave", "alice", b"r6", 16).unwrap();
        assert_eq!(s.buddy_add("alice", "dave", b"r7", "let me in", 17).unwrap(), Added::RequestedSilently);
        assert_eq!(relation(&s, "alice", "dave"), Some(Relation::Requested));
        assert!(s.buddy_requests("dave", 100).unwrap().is_empty());

        // A request made before the block is dropped by it.
        s.buddy_add("bob", "dave", b"r8", "", 18).unwrap();
        s.buddy_block("dave", "bob", b"r9", 19).unwrap();
        assert_eq!(pending_count(&s), 0);

        // Removing withdraws; it is idempotent.
        s.buddy_add("alice", "carol", b"ra", "", 20).unwrap();
        s.buddy_remove("alice", "carol").unwrap();
        s.buddy_remove("alice", "carol").unwrap();
        assert_eq!(relation(&s, "alice", "carol"), None);
        assert!(s.buddy_requests("carol", 100).unwrap().is_empty());
        assert!(matches!(s.buddy_add("alice", "zed", b"x", "", 21), Err(StoreError::UnknownUser(_))));
        assert!(matches!(s.buddy_block("alice", "zed", b"x", 21), Err(StoreError::UnknownUser(_))));
    }

    #[test]
    fn accepting_does_not_unblock_the_requester() {
        let (_d, s) = with_users(&["alice", "bob"]);
        s.buddy_add("alice", "bob", b"r", "", 1).unwrap();
        // Alice blocks Bob after asking: her request goes, so Bob has nothing to accept.
        s.buddy_block("alice", "bob", b"r", 2).unwrap();
        assert!(matches!(s.buddy_answer("bob", "alice", true, b"r", 3), Err(StoreError::NotPending(_))));
        assert_eq!(relation(&s, "alice", "bob"), Some(Relation::Blocked));
    }

    #[test]
    fn pages_in_tag_order() {
        let names: Vec<String> = (0..40).map(|i| format!("user{i:02}")).collect();
        let mut all: Vec<&str> = names.iter().map(String::as_str).collect();
        all.push("owner");
        let (_d, s) = with_users(&all);
        for n in &names {
            s.buddy_add("owner", n, n.as_bytes(), "", 5).unwrap();
        }
        let mut seen = Vec::new();
        let mut after = None;
        let mut pages = 0;
        loop {
            let (rows, more) = s.buddy_page("owner", after).unwrap();
            assert!(rows.len() <= PAGE_ROWS);
            pages += 1;
            seen.extend(rows.iter().map(|r| r.tag));
            after = rows.last().map(|r| r.tag);
            if !more {
                break;
            }
            assert_eq!(rows.len(), PAGE_ROWS);
        }
        assert_eq!(pages, 3);
        let mut sorted = seen.clone();
        sorted.sort_unstable();
        sorted.dedup();
        assert_eq!(seen, sorted, "pages are in strictly increasing tag order");
        assert_eq!(seen.len(), 40);
        let (rows, more) = s.buddy_page("owner", Some(u32::MAX)).unwrap();
        assert!(rows.is_empty() && !more);
        assert_eq!(s.buddy_page("nobody", None).unwrap(), (vec![], false));
    }

    #[test]
    fn a_full_list_refuses_new_contacts_only() {
        let (_d, s) = with_users(&["alice", "bob", "carol"]);
        s.buddy_add("alice", "bob", b"r", "", 1).unwrap();
        {
            let mut conn = s.conn();
            let tx = conn.transaction().unwrap();
            // Filler rows with tags that cannot collide with Bob's or Carol's.
            let taken = [s.tag_key().tag("alice", "bob").0, s.tag_key().tag("alice", "carol").0];
            let mut t = 0u32;
            let mut n = 1;
            while n < CONTACTS_MAX {
                t += 1;
                if !taken.contains(&t) {
                    upsert_row(&tx, "alice", Tag(t), Relation::Authorized, b"f", 1).unwrap();
                    n += 1;
                }
            }
            tx.commit().unwrap();
        }
        assert!(matches!(s.buddy_add("alice", "carol", b"r", "", 2), Err(StoreError::Full)));
        assert!(matches!(s.buddy_block("alice", "carol", b"r", 2), Err(StoreError::Full)));
        // Updating a contact already on the list is fine.
        assert_eq!(s.buddy_add("alice", "bob", b"r2", "", 2).unwrap(), Added::Requested);
        // Accepting onto a full list fails and leaves the request for later.
        s.buddy_add("carol", "alice", b"r", "", 3).unwrap();
        assert!(matches!(s.buddy_answer("alice", "carol", true, b"r", 4), Err(StoreError::Full)));
        assert_eq!(s.buddy_requests("alice", 100).unwrap().len(), 1);
        s.buddy_remove("alice", "bob").unwrap();
        assert_eq!(s.buddy_answer("alice", "carol", true, b"r", 5).unwrap(), Relation::Authorized);
    }

    #[test]
    fn a_thousand_adds_fill_the_list() {
        let names: Vec<String> = (0..=CONTACTS_MAX).map(|i| format!("user{i:04}")).collect();
        let mut all: Vec<&str> = names.iter().map(String::as_str).collect();
        all.push("owner");
        let (_d, s) = with_users(&all);
        let started = std::time::Instant::now();
        for n in &names[..CONTACTS_MAX] {
            s.buddy_add("owner", n, b"sealed", "", 5).unwrap();
        }
        assert!(matches!(s.buddy_add("owner", &names[CONTACTS_MAX], b"sealed", "", 5), Err(StoreError::Full)));
        eprintln!("{} adds in {:?}", CONTACTS_MAX, started.elapsed());
    }

    #[test]
    fn pending_requests_are_bounded_oldest_first() {
        let names: Vec<String> = (0..REQUESTS_PENDING_MAX + 5).map(|i| format!("fan{i:03}")).collect();
        let mut all: Vec<&str> = names.iter().map(String::as_str).collect();
        all.push("star");
        let (_d, s) = with_users(&all);
        for (i, n) in names.iter().enumerate() {
            s.buddy_add(n, "star", b"r", "hello", 100 + i as u64).unwrap();
        }
        let reqs = s.buddy_requests("star", usize::MAX).unwrap();
        assert_eq!(reqs.len(), REQUESTS_PENDING_MAX);
        assert_eq!(reqs[0].from, "fan005");
        assert_eq!(reqs.last().unwrap().from, names.last().unwrap().as_str());
        assert_eq!(s.buddy_requests("star", 3).unwrap().len(), 3);
    }

    #[test]
    fn two_owners_store_different_tags_and_no_names() {
        let (d, s) = with_users(&["alice", "bob", "carol"]);
        s.buddy_add("alice", "carol", b"a", "", 1).unwrap();
        s.buddy_add("bob", "carol", b"b", "", 1).unwrap();
        let rows: Vec<(String, i64)> = {
            let conn = s.conn();
            let mut st = conn.prepare("SELECT owner, tag FROM buddies ORDER BY owner").unwrap();
            st.query_map([], |r| Ok((r.get(0)?, r.get(1)?))).unwrap().map(Result::unwrap).collect()
        };
        assert_eq!(rows.len(), 2);
        assert_eq!(rows[0].0, "alice");
        assert_eq!(rows[1].0, "bob");
        assert_ne!(rows[0].1, rows[1].1);
        let key = s.tag_key().clone();
        assert_eq!(rows[0].1, i64::from(key.tag("alice", "carol").0));
        drop(s);
        // Once the requests are answered, the file no longer names Carol at all.
        let s = AccountStore::open(&d.path().join("accounts.sqlite")).unwrap();
        s.buddy_answer("carol", "alice", false, b"", 2).unwrap();
        s.buddy_answer("carol", "bob", false, b"", 2).unwrap();
        let names: i64 = s
            .conn()
            .query_row(
                "SELECT (SELECT count(*) FROM buddies WHERE owner = 'carol')
                      + (SELECT count(*) FROM buddy_requests)",
                [],
                |r| r.get(0),
            )
            .unwrap();
        assert_eq!(names, 0);
    }

    #[test]
    fn tag_key_and_rows_survive_reopen() {
        let (d, s) = with_users(&["alice", "bob"]);
        let p = d.path().join("accounts.sqlite");
        s.buddy_add("alice", "bob", b"sealed", "hi", 7).unwrap();
        let key = s.tag_key().0;
        let page = s.buddy_page("alice", None).unwrap();
        drop(s);
        let s = AccountStore::open(&p).unwrap();
        assert_eq!(s.tag_key().0, key);
        assert_eq!(s.buddy_page("alice", None).unwrap(), page);
        assert_eq!(s.buddy_requests("bob", 10).unwrap().len(), 1);
        // The reopened store computes the same tags: Bob's accept finds Alice's row.
        s.buddy_answer("bob", "alice", true, b"s", 8).unwrap();
        assert_eq!(relation(&s, "alice", "bob"), Some(Relation::Authorized));
        // A different file has a different key.
        let (_d2, other) = with_users(&[]);
        assert_ne!(other.tag_key().0, key);
    }

    #[test]
    fn damaged_rows_are_errors_not_panics() {
        let (_d, s) = with_users(&["alice", "bob"]);
        s.buddy_add("alice", "bob", b"r", "", 1).unwrap();
        s.conn().execute("UPDATE buddies SET sealed = zeroblob(4000)", []).unwrap();
        assert!(matches!(s.buddy_page("alice", None), Err(StoreError::Damaged(_))));
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("a.sqlite");
        drop(AccountStore::open(&p).unwrap());
        Connection::open(&p).unwrap().execute("UPDATE meta SET value = x'00'", []).unwrap();
        assert!(matches!(AccountStore::open(&p), Err(StoreError::Damaged(_))));
    }
}
