//! What [`super::Node`] asks its driver to do, and the jobs it hands out and takes back.

use crate::index::rpc::IndexRpc;
use crate::index::store::Merge;
use crate::index::{Entry, NodeId, Slot};

/// What a slot summary read for anti-entropy is for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reconcile {
    /// Offer it to the member, asking for theirs in return.
    Offer,
    /// Compare it with a page of the member's: ask for the keys theirs has that ours lacks
    /// or holds otherwise, and send ours if they asked.
    Compare {
        /// Their page: (key hash, digest lane).
        theirs: Vec<(u64, u64)>,
        /// They asked for our summary.
        answer: bool,
    },
}

impl Reconcile {
    /// The key hashes whose items are all a summary read must return, or None for the
    /// whole of its buckets: a page compared, and not answered, needs only its own
    /// keys looked up (a scan of the buckets for every page of a large slot was
    /// quadratic in the slot's size).
    pub fn only(&self) -> Option<Vec<u64>> {
        match self {
            Reconcile::Compare { theirs, answer: false } => Some(theirs.iter().map(|(h, _)| *h).collect()),
            _ => None,
        }
    }
}

/// What a lookup found.
#[derive(Debug, Clone)]
pub struct FindResult {
    /// The newest verified entry, if any super node held one.
    pub entry: Option<Entry>,
    /// Super nodes asked.
    pub asked: usize,
    /// The stage that ended the lookup (a label).
    pub stage: &'static str,
    /// When the index had nothing: the login server's signed directory record.
    pub directory: Option<Vec<u8>>,
}

/// A timer the node asked for; given back to [`super::Node::timer`] when due.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Timer {
    /// View changes gathered long enough: rebuild the slot map.
    Settle,
    /// A moment after a rebuild: hand slots off to their new replicas.
    HandOff,
    /// The periodic anti-entropy round.
    AntiEntropy,
    /// A lookup's stage is over.
    Lookup(u64),
    /// A search stops waiting for postings.
    Search(u64),
}

/// Where an answer to a store read goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GetFor {
    /// A member's `Fetch`: answer it.
    Fetch {
        /// The member.
        to: NodeId,
        /// Its request id.
        req: u64,
    },
    /// One of our lookups asked this node itself.
    Lookup {
        /// The lookup.
        id: u64,
    },
}

/// A replicated write the driver applies to a slot's store; its result goes back to
/// [`super::Node::put_done`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PutDone {
    /// The member to acknowledge, and its request id (None: our own write).
    pub ack: Option<(NodeId, u64)>,
    /// When the host made the entry (for the replication lag).
    pub made_ms: u64,
}

/// What a store did with a write, as the node counts it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PutResult {
    /// The store merged it.
    Merged(Merge),
    /// There is no store for the slot here.
    NoStore,
    /// The store could not be reached.
    Failed,
}

/// An entry that needs its signatures checked before the node acts on it.
#[derive(Debug, Clone)]
pub struct Verify {
    /// The decoded entry.
    pub entry: Entry,
    /// Its bytes, as they arrived (the driver's cache of verified entries keys on them).
    pub bytes: Vec<u8>,
    /// What it is for.
    pub purpose: VerifyFor,
}

/// Why an entry is checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VerifyFor {
    /// A member replicates it to us (`Store`): may be checked in the background, within
    /// the driver's bounds per sender.
    Store {
        /// The member.
        from: NodeId,
        /// Its request id.
        req: u64,
        /// The key it goes under.
        key: String,
    },
    /// A member answered one of our lookups with it: checked at once.
    Answer {
        /// The lookup.
        id: u64,
        /// The member.
        from: NodeId,
    },
}

/// How a check ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Checked {
    /// The signatures hold.
    Valid,
    /// They do not (the reason, for the log).
    Invalid(String),
    /// The driver had no room to check it now (its bounds per sender or in all).
    Busy,
}

/// What the driver must do.
#[derive(Debug)]
pub enum Output {
    /// Send this to a member.
    Send {
        /// The member.
        to: NodeId,
        /// The request.
        rpc: IndexRpc,
    },
    /// Call [`super::Node::timer`] with this at `at_ms`.
    Schedule {
        /// When.
        at_ms: u64,
        /// What.
        timer: Timer,
    },
    /// The slot map changed: the slots this node now replicates (a store must exist for
    /// each), and those it became a replica of (their contents are pulled).
    Rebuilt {
        /// Every slot held.
        held: Vec<Slot>,
        /// The newly held ones.
        gained: Vec<Slot>,
    },
    /// Write an entry to a slot's store, then call [`super::Node::put_done`] (no store:
    /// `PutResult::NoStore`).
    Put {
        /// The slot.
        slot: Slot,
        /// The key.
        key: String,
        /// The verified entry.
        entry: Entry,
        /// What to give back.
        done: PutDone,
    },
    /// Read a key's entry from a slot's store, then call [`super::Node::got`].
    Get {
        /// The slot.
        slot: Slot,
        /// The key.
        key: String,
        /// What to give back.
        purpose: GetFor,
    },
    /// Read the live entries of these slots (those with a store here, encoded), then call
    /// [`super::Node::dumped`] for `to`.
    Dump {
        /// The slots.
        slots: Vec<Slot>,
        /// The member they are for.
        to: NodeId,
    },
    /// Drop what expired from a slot's store, then read the (key hash, digest lane) of
    /// every key in the buckets of `buckets` (bit b: bucket b), or only of the hashes
    /// [`Reconcile::only`] names, and call [`super::Node::summarized`] with them (no
    /// store: none).
    Summarize {
        /// The slot.
        slot: Slot,
        /// The buckets.
        buckets: u64,
        /// The member compared with.
        to: NodeId,
        /// What to do with the summary.
        then: Reconcile,
    },
    /// Read the live entries of a slot's keys whose hashes are in `keys` (sorted), encoded,
    /// then call [`super::Node::dumped`] for `to`.
    Pick {
        /// The slot.
        slot: Slot,
        /// Key hashes, sorted.
        keys: Vec<u64>,
        /// The member they are for.
        to: NodeId,
    },
    /// Read the usernames posted under `prefix` in a slot's store (at most `limit`), then
    /// call [`super::Node::posted`] (no store: none).
    Posted {
        /// The slot.
        slot: Slot,
        /// `token:<token>/`.
        prefix: String,
        /// Most usernames.
        limit: usize,
        /// What to give back.
        purpose: super::PostedFor,
    },
    /// A search ended: the verified entries whose profile has every word.
    Searched {
        /// The search.
        id: u64,
        /// What it found, by username.
        entries: Vec<Entry>,
    },
    /// Check an entry's signatures, then call [`super::Node::verified`].
    Verify(Box<Verify>),
    /// Ask the login servers' recently-seen directory for `user`, then call
    /// [`super::Node::directory_answer`].
    AskDirectory {
        /// The lookup.
        id: u64,
        /// The user.
        user: String,
    },
    /// A lookup ended.
    Found {
        /// The lookup.
        id: u64,
        /// What it found.
        result: FindResult,
    },
}
