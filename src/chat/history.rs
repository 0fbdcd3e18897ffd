//! A device's chat history: `chat.sqlite` in the home folder.
//!
//! This is where "exactly once" is decided (`docs/chat.md` §0): a message is new unless
//! its (sender, sender device, conversation, sequence number) or its id is here already,
//! so a store that hands a message over twice, or replays it under a new id, shows it
//! once. A message is acknowledged to the store only after it is committed here, and
//! commits are durable (WAL, `synchronous=FULL`): what was acknowledged survives a crash.
//!
//! Two processes of one home folder (an `online` session and a one-shot CLI command) may
//! use the file at once: every write is one IMMEDIATE transaction (it takes the write lock
//! before reading, so two writers never both read the same counter), and a busy file is
//! waited for rather than failed.
//!
//! Everything is recorded, receipts included (their sequence numbers count for gaps);
//! [`History::history`] and [`History::unread`] show what a user reads: text and files.

use super::group::log::{Entry as GroupEntry, GroupId, Op};
use super::message::{Body, Conversation, Inner, Message, ReceiptKind, own_copy_id};
use crate::crypto::keys::KeyId;
use crate::crypto::user::{DeviceId, UserPublicKeys};
use rusqlite::{Connection, OptionalExtension, Transaction, TransactionBehavior, params};
use sha2::Digest;
use std::ops::RangeInclusive;
use std::path::Path;
use std::time::Duration;

/// The history's file name in the home folder.
pub const HISTORY_FILE: &str = "chat.sqlite";
/// The schema this build writes (`PRAGMA user_version`); version 1 lacked the group
/// tables, version 2 the peers' keys and version 3 the file's epoch, which opening adds.
pub const SCHEMA_VERSION: i64 = 4;
/// Most peers' keys [`History::peer_keys`] gives back (the most recently learned).
pub const PEER_KEYS_MAX: usize = 4096;
/// How long a write waits for another process's transaction before giving up.
pub const BUSY_TIMEOUT: Duration = Duration::from_secs(10);
/// Most gaps [`History::gaps`] reports at once (the lowest first).
pub const GAPS_MAX: usize = 64;

/// The body kinds a user reads; receipts and group-log entries are bookkeeping.
const VISIBLE_KINDS: &str = "('text', 'file_offer', 'file_answer')";

const SCHEMA: &str = "
CREATE TABLE seq (
    conversation TEXT PRIMARY KEY NOT NULL,  -- see conversation_key
    next         INTEGER NOT NULL            -- the last number handed out
) STRICT;
CREATE TABLE message (
    id            BLOB PRIMARY KEY NOT NULL CHECK (length(id) = 16),
    sender        TEXT NOT NULL,
    sender_device BLOB NOT NULL CHECK (length(sender_device) = 8),
    conversation  TEXT NOT NULL,             -- as this user sees it
    seq           INTEGER NOT NULL CHECK (seq >= 1),
    sent_at_ms    INTEGER NOT NULL,
    kind          TEXT NOT NULL,             -- Body::label
    body          BLOB NOT NULL,             -- Body::encode
    outgoing      INTEGER NOT NULL CHECK (outgoing IN (0, 1)),  -- sent by this user, from any device
    status        INTEGER NOT NULL CHECK (status BETWEEN 0 AND 3),  -- Status::code, outgoing only
    unread        INTEGER NOT NULL CHECK (unread IN (0, 1)),
    UNIQUE (sender, sender_device, conversation, seq)
) STRICT;
CREATE INDEX message_unread ON message (unread) WHERE unread = 1;
CREATE INDEX message_by_conversation ON message (conversation, sent_at_ms);
";

/// Version 2: the groups this user is in, by the entries of their logs (`chat::group`).
const SCHEMA_GROUPS: &str = "
CREATE TABLE group_log (
    id    BLOB PRIMARY KEY NOT NULL CHECK (length(id) = 16),
    name  TEXT                               -- from the Create entry, once held
) STRICT;
CREATE TABLE group_entry (
    hash  BLOB PRIMARY KEY NOT NULL CHECK (length(hash) = 32),
    grp   BLOB NOT NULL REFERENCES group_log (id),
    bytes BLOB NOT NULL
) STRICT;
CREATE INDEX group_entry_by_group ON group_entry (grp);
";

/// Version 3: the user keys of the people this user wrote to or heard from, as their
/// signed index entries gave them, so that a message can still be sealed to someone
/// whose entries have left the index (offline longer than its retention).
const SCHEMA_PEERS: &str = "
CREATE TABLE peer_keys (
    user        TEXT PRIMARY KEY NOT NULL,
    keys        BLOB NOT NULL CHECK (length(keys) = 64),  -- UserPublicKeys::to_bytes
    learned_ms  INTEGER NOT NULL
) STRICT;
";

/// The file's epoch: a random number drawn when the file (or this table) is made. The
/// device numbers its messages in a stream named after its key and this epoch, so a
/// history deleted and made again starts a new stream at 1, which recipients take as new
/// rather than dropping its numbers as repeats of the old stream's.
const SCHEMA_META: &str = "
CREATE TABLE meta (
    key   TEXT PRIMARY KEY NOT NULL,
    value INTEGER NOT NULL
) STRICT;
";

/// What went wrong with the history file.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum HistoryError {
    /// SQLite refused (busy past the timeout, disk full, a corrupt file).
    #[error("chat history: {0}")]
    Sqlite(#[from] rusqlite::Error),
    /// The folder or file could not be made.
    #[error("chat history: {0}")]
    Io(#[from] std::io::Error),
    /// The file was written by a newer build.
    #[error("chat history has schema version {0}, newer than this build's {SCHEMA_VERSION}")]
    NewerSchema(i64),
    /// The message breaks the message rules (a caller's mistake: decoded messages keep them).
    #[error("chat history: {0}")]
    Invalid(#[from] super::message::ChatError),
    /// A stored row does not hold what this build wrote.
    #[error("chat history row is corrupt: {0}")]
    Corrupt(&'static str),
}

/// Where a message I sent has got to; it only moves forward.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Status {
    /// Handed to a super node, not yet confirmed.
    Sent,
    /// The recipient's store holds it.
    Stored,
    /// A device of the recipient wrote it to its history.
    Delivered,
    /// The recipient read it.
    Read,
}

impl Status {
    fn code(self) -> i64 {
        match self {
            Self::Sent => 0,
            Self::Stored => 1,
            Self::Delivered => 2,
            Self::Read => 3,
        }
    }

    fn from_code(c: i64) -> Option<Self> {
        [Self::Sent, Self::Stored, Self::Delivered, Self::Read].into_iter().find(|s| s.code() == c)
    }

    /// A short label for the CLI and JSON.
    pub fn label(self) -> &'static str {
        match self {
            Self::Sent => "sent",
            Self::Stored => "stored",
            Self::Delivered => "delivered",
            Self::Read => "read",
        }
    }
}

/// Whether a recorded message was new.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Recorded {
    /// First seen: show it, acknowledge it.
    New,
    /// Seen before (same sender, device, conversation and sequence number, or same id):
    /// acknowledge it again, show nothing.
    Repeat,
}

/// Which side of a conversation a row is on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    /// Sent by this user, from this device or another.
    Sent {
        /// How far it got (known on the device that sent it).
        status: Status,
    },
    /// Received from someone else.
    Received {
        /// Whether the user has read it.
        read: bool,
    },
}

/// A message in the history.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Row {
    /// The message id.
    pub id: [u8; 16],
    /// The sender user.
    pub from: String,
    /// The sender's device.
    pub from_device: DeviceId,
    /// The conversation, as this user sees it.
    pub conversation: Conversation,
    /// The sender device's sequence number in the conversation.
    pub seq: u64,
    /// When it was sent (unix milliseconds, the sender's clock).
    pub sent_at_ms: u64,
    /// What it carries.
    pub body: Body,
    /// Sent or received.
    pub side: Side,
}

/// Numbers missing from one sender device's sequence in a conversation: (sender, its
/// device, the conversation, the missing numbers).
pub type Missing = (String, DeviceId, Conversation, RangeInclusive<u64>);

/// A group text as the group's log shows it, to record in the history.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupText {
    /// The entry's hash.
    pub entry: [u8; 32],
    /// Who wrote it.
    pub author: String,
    /// When, by the author's clock (unix milliseconds).
    pub at_ms: u64,
    /// The text.
    pub text: String,
    /// Written by this user (from any device).
    pub mine: bool,
}

/// A group as kept: its id, its name once its Create is held, its entries' bytes.
pub type GroupLog = (GroupId, Option<String>, Vec<Vec<u8>>);

/// A device's chat history, one SQLite connection.
#[derive(Debug)]
pub struct History {
    conn: Connection,
    epoch: u64,
}

/// A conversation as a text key: `u:` and the user, or `g:` and the group id in hex.
fn conversation_key(c: &Conversation) -> String {
    match c {
        Conversation::User(u) => format!("u:{u}"),
        Conversation::Group(g) => format!("g:{}", hex::encode(g)),
    }
}

fn parse_conversation(k: &str) -> Option<Conversation> {
    if let Some(u) = k.strip_prefix("u:") {
        return Some(Conversation::User(u.to_owned()));
    }
    let g = hex::decode(k.strip_prefix("g:")?).ok()?;
    Some(Conversation::Group(g.try_into().ok()?))
}

/// Sequence numbers and times are at most `i64::MAX` (`message::SEQ_MAX`, `TIME_MS_MAX`).
fn int(v: u64) -> i64 {
    i64::try_from(v).expect("sequence numbers and times are bounded to i64 by the message rules")
}

const ROW_COLUMNS: &str = "id, sender, sender_device, conversation, seq, sent_at_ms, body, outgoing, status, unread";

fn read_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<Result<Row, HistoryError>> {
    let id: Vec<u8> = r.get(0)?;
    let from: String = r.get(1)?;
    let device: Vec<u8> = r.get(2)?;
    let conversation: String = r.get(3)?;
    let seq: i64 = r.get(4)?;
    let sent_at_ms: i64 = r.get(5)?;
    let body: Vec<u8> = r.get(6)?;
    let outgoing: bool = r.get(7)?;
    let status: i64 = r.get(8)?;
    let unread: bool = r.get(9)?;
    Ok((|| {
        Ok(Row {
            id: id.try_into().map_err(|_| HistoryError::Corrupt("id"))?,
            from,
            from_device: KeyId(device.try_into().map_err(|_| HistoryError::Corrupt("sender_device"))?),
            conversation: parse_conversation(&conversation).ok_or(HistoryError::Corrupt("conversation"))?,
            seq: u64::try_from(seq).map_err(|_| HistoryError::Corrupt("seq"))?,
            sent_at_ms: u64::try_from(sent_at_ms).map_err(|_| HistoryError::Corrupt("sent_at_ms"))?,
            body: Body::decode(&body).map_err(|_| HistoryError::Corrupt("body"))?,
            side: if outgoing {
                Side::Sent { status: Status::from_code(status).ok_or(HistoryError::Corrupt("status"))? }
            } else {
                Side::Received { read: !unread }
            },
        })
    })())
}

impl History {
    /// Opens `chat.sqlite` in the home folder `home`, creating it on first use.
    pub fn open_in(home: &Path) -> Result<Self, HistoryError> {
        Self::open(&home.join(HISTORY_FILE))
    }

    /// Opens (creating if needed) the history at `path`.
    pub fn open(path: &Path) -> Result<Self, HistoryError> {
        if let Some(dir) = path.parent()
            && !dir.as_os_str().is_empty()
        {
            crate::fsutil::private_dir(dir)?;
        }
        // Messages are private: 0600, and SQLite gives its WAL and -shm files the same mode.
        crate::fsutil::private_file(path)?;
        let mut conn = Connection::open(path)?;
        // First, so that a second process opening the file meanwhile waits instead of failing.
        conn.busy_timeout(BUSY_TIMEOUT)?;
        conn.pragma_update(None, "journal_mode", "WAL")?;
        // A commit is on disk when it returns: the store is told "written" only after it.
        conn.pragma_update(None, "synchronous", "FULL")?;
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let version: i64 = tx.query_row("PRAGMA user_version", [], |r| r.get(0))?;
        if version > SCHEMA_VERSION {
            return Err(HistoryError::NewerSchema(version));
        }
        // Each step adds what the versions before it lacked.
        for (from, sql) in [(0, SCHEMA), (1, SCHEMA_GROUPS), (2, SCHEMA_PEERS), (3, SCHEMA_META)] {
            if version <= from {
                tx.execute_batch(sql)?;
            }
        }
        if version <= 3 {
            // Positive, so that it reads back as the same u64.
            let epoch = u64::from_le_bytes(crate::crypto::random::bytes()) >> 1;
            tx.execute("INSERT INTO meta (key, value) VALUES ('epoch', ?1)", [int(epoch)])?;
        }
        if version != SCHEMA_VERSION {
            tx.pragma_update(None, "user_version", SCHEMA_VERSION)?;
        }
        tx.commit()?;
        let epoch: i64 = conn.query_row("SELECT value FROM meta WHERE key = 'epoch'", [], |r| r.get(0))?;
        let epoch = u64::try_from(epoch).map_err(|_| HistoryError::Corrupt("epoch"))?;
        Ok(Self { conn, epoch })
    }

    /// The file's epoch (see the `meta` table): with the device's key, it names the
    /// stream this device numbers its messages in ([`crate::chat::message::stream_id`]).
    pub fn epoch(&self) -> u64 {
        self.epoch
    }

    fn write(&mut self) -> Result<Transaction<'_>, HistoryError> {
        Ok(self.conn.transaction_with_behavior(TransactionBehavior::Immediate)?)
    }

    /// The next sequence number of this device in `conversation` (as this user sees it:
    /// the peer, or the group), from 1: committed before it is returned, so it is never
    /// handed out again, whatever process asks or restarts. A numbered 1:1 message goes
    /// both to the peer and, as the own copy, to this user: each of them sees every number,
    /// so a number only one of them got would show as a gap to the other.
    pub fn next_seq(&mut self, conversation: &Conversation) -> Result<u64, HistoryError> {
        let tx = self.write()?;
        let next: i64 = tx.query_row(
            "INSERT INTO seq (conversation, next) VALUES (?1, 1)
             ON CONFLICT (conversation) DO UPDATE SET next = next + 1 RETURNING next",
            [conversation_key(conversation)],
            |r| r.get(0),
        )?;
        tx.commit()?;
        u64::try_from(next).map_err(|_| HistoryError::Corrupt("seq"))
    }

    /// Records a message this device sends (before it goes out), with the id of the copy
    /// sealed to the recipient: the one receipts will name.
    pub fn record_sent(&mut self, inner: &Inner, id: [u8; 16]) -> Result<Recorded, HistoryError> {
        let tx = self.write()?;
        let r = insert(&tx, id, inner, true)?;
        tx.commit()?;
        Ok(r)
    }

    /// Records a verified message addressed to this user: from someone else, or this
    /// user's own copy from another device (shown as sent). A new receipt moves the status
    /// of the messages it names, here under their id or their own copy's
    /// ([`own_copy_id`]); a repeat changes nothing.
    pub fn record_received(&mut self, m: &Message) -> Result<Recorded, HistoryError> {
        let inner = &m.inner;
        let mine = inner.from == m.to;
        let tx = self.write()?;
        let r = insert(&tx, m.id, inner, mine)?;
        if r == Recorded::New
            && let Body::Receipt { kind, ids } = &inner.body
        {
            let conversation = conversation_key(&inner.conversation);
            for id in ids {
                if mine {
                    // Read on another of my devices: read here too.
                    if *kind == ReceiptKind::Read {
                        tx.execute(
                            "UPDATE message SET unread = 0 WHERE id = ?1 AND outgoing = 0 AND conversation = ?2",
                            params![&id[..], conversation],
                        )?;
                    }
                } else {
                    // Only the peer of the conversation moves my messages in it.
                    let status = match kind {
                        ReceiptKind::Delivered => Status::Delivered,
                        ReceiptKind::Read => Status::Read,
                    };
                    // My other devices hold the message under its own copy's id.
                    advance(&tx, id, status, Some(&conversation))?;
                    advance(&tx, &own_copy_id(id), status, Some(&conversation))?;
                }
            }
        }
        tx.commit()?;
        Ok(r)
    }

    /// The recipient's store holds a message I sent; false if it was already further on
    /// (or is not one of mine).
    pub fn mark_stored(&mut self, id: [u8; 16]) -> Result<bool, HistoryError> {
        let tx = self.write()?;
        let moved = advance(&tx, &id, Status::Stored, None)?;
        tx.commit()?;
        Ok(moved)
    }

    /// The status of a message I sent.
    pub fn status(&self, id: [u8; 16]) -> Result<Option<Status>, HistoryError> {
        let code: Option<i64> = self
            .conn
            .query_row("SELECT status FROM message WHERE id = ?1 AND outgoing = 1", [&id[..]], |r| r.get(0))
            .optional()?;
        code.map(|c| Status::from_code(c).ok_or(HistoryError::Corrupt("status"))).transpose()
    }

    /// Received messages the user has not read yet, oldest first.
    pub fn unread(&self) -> Result<Vec<Row>, HistoryError> {
        self.rows(
            &format!("SELECT {ROW_COLUMNS} FROM message WHERE unread = 1 AND kind IN {VISIBLE_KINDS} ORDER BY rowid"),
            [],
        )
    }

    /// Marks messages read; returns how many were unread.
    pub fn mark_read(&mut self, ids: &[[u8; 16]]) -> Result<usize, HistoryError> {
        let tx = self.write()?;
        let mut n = 0;
        for id in ids {
            n += tx.execute("UPDATE message SET unread = 0 WHERE id = ?1 AND unread = 1", [&id[..]])?;
        }
        tx.commit()?;
        Ok(n)
    }

    /// The last `limit` messages of a conversation, oldest first, sent and received.
    pub fn history(&self, conversation: &Conversation, limit: usize) -> Result<Vec<Row>, HistoryError> {
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let mut rows = self.rows(
            &format!(
                "SELECT {ROW_COLUMNS} FROM message WHERE conversation = ?1 AND kind IN {VISIBLE_KINDS}
                 ORDER BY sent_at_ms DESC, CASE WHEN conversation LIKE 'g:%' THEN id END DESC, rowid DESC
                 LIMIT ?2"
            ),
            params![conversation_key(conversation), limit],
        )?;
        rows.reverse();
        Ok(rows)
    }

    /// Sequence numbers of one sender device in a conversation missing below the highest
    /// seen (at most [`GAPS_MAX`] ranges, lowest first): what a store failed to hand over.
    pub fn gaps(
        &self,
        from: &str,
        from_device: DeviceId,
        conversation: &Conversation,
    ) -> Result<Vec<RangeInclusive<u64>>, HistoryError> {
        let mut st = self.conn.prepare_cached(
            "SELECT prev + 1, seq - 1 FROM (
                 SELECT seq, LAG(seq, 1, 0) OVER (ORDER BY seq) AS prev FROM message
                 WHERE sender = ?1 AND sender_device = ?2 AND conversation = ?3
             ) WHERE seq > prev + 1 ORDER BY seq LIMIT ?4",
        )?;
        let rows = st
            .query_map(params![from, &from_device.0[..], conversation_key(conversation), GAPS_MAX as i64], |r| {
                Ok((r.get::<_, i64>(0)?, r.get::<_, i64>(1)?))
            })?;
        rows.map(|r| {
            let (lo, hi) = r?;
            let lo = u64::try_from(lo).map_err(|_| HistoryError::Corrupt("seq"))?;
            let hi = u64::try_from(hi).map_err(|_| HistoryError::Corrupt("seq"))?;
            Ok(lo..=hi)
        })
        .collect()
    }

    /// Every gap in the numbers of messages received from the senders `keep` accepts
    /// (never `me`: this user's own devices copy only part of what they send to each
    /// other), as (sender, device, conversation, missing numbers), at most [`GAPS_MAX`] in
    /// all. Only gaps above the first number received count: a device that came late
    /// never saw what the store had already handed to the others and deleted. A gap that
    /// stays after a fetch is a message some store lost or withheld, or one the store
    /// refused when it was sent.
    pub fn missing(&self, me: &str, keep: impl Fn(&str) -> bool) -> Result<Vec<Missing>, HistoryError> {
        let mut st = self.conn.prepare_cached(
            "SELECT DISTINCT sender, sender_device, conversation FROM message WHERE sender <> ?1 AND outgoing = 0",
        )?;
        let streams = st
            .query_map([me], |r| Ok((r.get::<_, String>(0)?, r.get::<_, Vec<u8>>(1)?, r.get::<_, String>(2)?)))?
            .collect::<Result<Vec<_>, _>>()?;
        let mut out = Vec::new();
        for (from, device, conversation) in streams.into_iter().filter(|(from, ..)| keep(from)) {
            let device = KeyId(device.try_into().map_err(|_| HistoryError::Corrupt("sender_device"))?);
            let conversation = parse_conversation(&conversation).ok_or(HistoryError::Corrupt("conversation"))?;
            // The range below the first number received is not a gap (see above).
            for r in self.gaps(&from, device, &conversation)?.into_iter().filter(|r| *r.start() > 1) {
                if out.len() >= GAPS_MAX {
                    return Ok(out);
                }
                out.push((from.clone(), device, conversation.clone(), r));
            }
        }
        Ok(out)
    }

    /// Keeps entries of a group's log (their bytes as they travel; the log decodes and
    /// judges them when they are loaded), in one transaction. Returns how many were new.
    pub fn add_group_entries(&mut self, group: &GroupId, entries: &[Vec<u8>]) -> Result<usize, HistoryError> {
        let tx = self.write()?;
        tx.execute("INSERT INTO group_log (id) VALUES (?1) ON CONFLICT DO NOTHING", [&group[..]])?;
        let mut new = 0;
        for bytes in entries {
            // A Create names the group: what `@NAME` finds.
            if let Ok(GroupEntry { op: Op::Create { name, .. }, group: g, .. }) = GroupEntry::decode(bytes)
                && g == *group
            {
                tx.execute("UPDATE group_log SET name = ?2 WHERE id = ?1 AND name IS NULL", params![&group[..], name])?;
            }
            let hash: [u8; 32] = sha2::Sha256::digest(bytes).into();
            new += tx.execute(
                "INSERT INTO group_entry (hash, grp, bytes) VALUES (?1, ?2, ?3) ON CONFLICT DO NOTHING",
                params![&hash[..], &group[..], bytes],
            )?;
        }
        tx.commit()?;
        Ok(new)
    }

    /// Every group kept, with its name once its Create is held, and its entries' bytes.
    pub fn group_logs(&self) -> Result<Vec<GroupLog>, HistoryError> {
        let mut st = self.conn.prepare_cached("SELECT id, name FROM group_log ORDER BY id")?;
        let groups = st
            .query_map([], |r| Ok((r.get::<_, Vec<u8>>(0)?, r.get::<_, Option<String>>(1)?)))?
            .collect::<Result<Vec<_>, _>>()?;
        let mut out = Vec::with_capacity(groups.len());
        let mut entries = self.conn.prepare_cached("SELECT bytes FROM group_entry WHERE grp = ?1 ORDER BY rowid")?;
        for (id, name) in groups {
            let gid: GroupId = id.as_slice().try_into().map_err(|_| HistoryError::Corrupt("group id"))?;
            let bytes = entries.query_map([&id], |r| r.get::<_, Vec<u8>>(0))?.collect::<Result<Vec<_>, _>>()?;
            out.push((gid, name, bytes));
        }
        Ok(out)
    }

    /// The groups named `name` (names are not unique: ids are).
    pub fn groups_named(&self, name: &str) -> Result<Vec<GroupId>, HistoryError> {
        let mut st = self.conn.prepare_cached("SELECT id FROM group_log WHERE name = ?1 ORDER BY id")?;
        let ids = st.query_map([name], |r| r.get::<_, Vec<u8>>(0))?.collect::<Result<Vec<_>, _>>()?;
        ids.into_iter().map(|id| id.as_slice().try_into().map_err(|_| HistoryError::Corrupt("group id"))).collect()
    }

    /// A group's name, once its Create is held.
    pub fn group_name(&self, group: &GroupId) -> Result<Option<String>, HistoryError> {
        Ok(self
            .conn
            .query_row("SELECT name FROM group_log WHERE id = ?1", [&group[..]], |r| r.get::<_, Option<String>>(0))
            .optional()?
            .flatten())
    }

    /// Records group texts as the log shows them, once each, in one transaction. A text's
    /// id is the first half of its entry's hash; since the log (not the author's device)
    /// numbers group messages, the hash's next 8 bytes stand for the device and the
    /// sequence number is 1. Returns, for each, whether it was new.
    pub fn record_group_texts(&mut self, group: &GroupId, texts: &[GroupText]) -> Result<Vec<bool>, HistoryError> {
        let tx = self.write()?;
        let mut out = Vec::with_capacity(texts.len());
        for t in texts {
            let inner = Inner {
                from: t.author.clone(),
                from_device: KeyId(t.entry[16..24].try_into().expect("8 of 32 bytes")),
                conversation: Conversation::Group(*group),
                seq: 1,
                sent_at_ms: t.at_ms.min(super::message::TIME_MS_MAX),
                body: Body::Text { text: t.text.clone() },
            };
            let id: [u8; 16] = t.entry[..16].try_into().expect("16 of 32 bytes");
            let r = insert(&tx, id, &inner, t.mine)?;
            if t.mine {
                // Nothing confirms delivery to a group: in the log is as far as it goes.
                advance(&tx, &id, Status::Stored, None)?;
            }
            out.push(r == Recorded::New);
        }
        tx.commit()?;
        Ok(out)
    }

    /// Keeps `user`'s keys as learned at `at_ms` (replacing older ones).
    pub fn remember_keys(&mut self, user: &str, keys: &UserPublicKeys, at_ms: u64) -> Result<(), HistoryError> {
        self.conn.execute(
            "INSERT INTO peer_keys (user, keys, learned_ms) VALUES (?1, ?2, ?3)
             ON CONFLICT (user) DO UPDATE SET keys = excluded.keys, learned_ms = excluded.learned_ms",
            params![user, &keys.to_bytes()[..], int(at_ms.min(super::message::TIME_MS_MAX))],
        )?;
        Ok(())
    }

    /// The peers' keys kept, the most recently learned first (at most [`PEER_KEYS_MAX`]).
    pub fn peer_keys(&self) -> Result<Vec<(String, UserPublicKeys)>, HistoryError> {
        let mut st =
            self.conn.prepare_cached("SELECT user, keys FROM peer_keys ORDER BY learned_ms DESC, user LIMIT ?1")?;
        let rows = st.query_map([PEER_KEYS_MAX as i64], |r| Ok((r.get::<_, String>(0)?, r.get::<_, Vec<u8>>(1)?)))?;
        rows.map(|r| {
            let (user, keys) = r?;
            let keys: [u8; 64] = keys.try_into().map_err(|_| HistoryError::Corrupt("peer keys"))?;
            Ok((user, UserPublicKeys::from_bytes(&keys)))
        })
        .collect()
    }

    fn rows(&self, sql: &str, params: impl rusqlite::Params) -> Result<Vec<Row>, HistoryError> {
        let mut st = self.conn.prepare_cached(sql)?;
        let rows = st.query_map(params, read_row)?;
        rows.map(|r| r?).collect()
    }
}

/// Inserts a message unless it is a repeat.
fn insert(tx: &Transaction<'_>, id: [u8; 16], inner: &Inner, outgoing: bool) -> Result<Recorded, HistoryError> {
    inner.encode()?;
    let body = inner.body.encode()?;
    let visible = matches!(inner.body, Body::Text { .. } | Body::FileOffer { .. } | Body::FileAnswer { .. });
    // DO NOTHING on a uniqueness conflict (a CHECK still fails loudly): the primary key
    // (same id) and the unique key (same sender, device, conversation and sequence
    // number) are exactly the two ways of being a repeat.
    let n = tx.execute(
        "INSERT INTO message
             (id, sender, sender_device, conversation, seq, sent_at_ms, kind, body, outgoing, status, unread)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11) ON CONFLICT DO NOTHING",
        params![
            &id[..],
            inner.from,
            &inner.from_device.0[..],
            conversation_key(&inner.conversation),
            int(inner.seq),
            int(inner.sent_at_ms),
            inner.body.label(),
            body,
            outgoing,
            Status::Sent.code(),
            !outgoing && visible,
        ],
    )?;
    Ok(if n == 1 { Recorded::New } else { Recorded::Repeat })
}

/// Moves one of my messages forward to `status` (never back); only within `conversation`
/// when given. True if it moved.
fn advance(
    tx: &Transaction<'_>,
    id: &[u8; 16],
    status: Status,
    conversation: Option<&str>,
) -> Result<bool, HistoryError> {
    let n = tx.execute(
        "UPDATE message SET status = ?2
         WHERE id = ?1 AND outgoing = 1 AND status < ?2 AND (?3 IS NULL OR conversation = ?3)",
        params![&id[..], status.code(), conversation],
    )?;
    Ok(n == 1)
}

#[cfg(test)]
mod tests;
