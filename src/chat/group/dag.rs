//! The entries one member holds of a group: a DAG closed under parents (an entry is taken in
//! only once all its parents are), each entry's signature checked against keys the log
//! itself carries. What is accepted does not depend on the order entries arrive in: an
//! entry that cannot be placed yet is held, bounded, and retried when what it waits for
//! arrives.

use super::log::{DecodeError, Entry, EntryHash, GroupId, Op, group_id};
use crate::crypto::user::UserPublicKeys;
use std::cmp::Reverse;
use std::collections::{BTreeSet, BinaryHeap, HashMap, HashSet};

/// Most entries held while they wait for a parent or their author's keys.
pub const HELD_MAX: usize = 4096;
/// Most of those that wait for their author's keys: forged entries wait there, so a flood
/// of them cannot crowd out entries that wait for parents.
pub const HELD_FOR_KEYS_MAX: usize = 256;

/// An entry taken into the DAG, with the keys that verified it.
#[derive(Debug, Clone)]
pub struct Stored {
    /// The entry.
    pub entry: Entry,
    /// Its encoding (what travels).
    pub bytes: Vec<u8>,
    /// The user keys its signature verified with (the fold checks they are the member's).
    pub signer: UserPublicKeys,
}

/// What became of an entry offered to the DAG.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Inserted {
    /// Taken in, with this many held entries it unblocked.
    Accepted {
        /// Held entries taken in after it.
        released: usize,
    },
    /// Already there.
    Duplicate,
    /// Held until these parents arrive.
    MissingParents(Vec<EntryHash>),
    /// Held until an Invite or Create carrying its author's keys arrives.
    UnknownAuthor,
}

/// Why an entry was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Refused {
    /// Not an entry.
    #[error("malformed entry: {0}")]
    Decode(#[from] DecodeError),
    /// An entry of another group.
    #[error("an entry of another group")]
    OtherGroup,
    /// A Create whose fields do not give this group's id, or not signed by its creator.
    #[error("a Create that does not found this group")]
    BadCreate,
    /// No key the log knows for its author verifies it (kept aside in case the log later
    /// learns another key for that name, which the fold then judges).
    #[error("no known key of {0} verifies the signature")]
    BadSignature(String),
    /// Too many entries are already held.
    #[error("{HELD_MAX} entries already wait for their parents")]
    HeldFull,
    /// Too many entries already wait for their authors' keys.
    #[error("{HELD_FOR_KEYS_MAX} entries already wait for their authors' keys")]
    HeldForKeysFull,
}

/// A member's copy of a group's DAG.
#[derive(Debug, Clone)]
pub struct Dag {
    group: GroupId,
    entries: HashMap<EntryHash, Stored>,
    heads: BTreeSet<EntryHash>,
    /// Keys every accepted Create or Invite announced for a name.
    keys: HashMap<String, Vec<UserPublicKeys>>,
    held: HashMap<EntryHash, Entry>,
    /// Held entries by the parent they wait for.
    waiting_parent: HashMap<EntryHash, Vec<EntryHash>>,
    /// Held entries by the author whose keys they wait for.
    waiting_author: HashMap<String, Vec<EntryHash>>,
    /// Entries in `waiting_author`.
    held_for_keys: usize,
    order: Option<Vec<EntryHash>>,
}

impl Dag {
    /// An empty DAG of `group`.
    pub fn new(group: GroupId) -> Self {
        Self {
            group,
            entries: HashMap::new(),
            heads: BTreeSet::new(),
            keys: HashMap::new(),
            held: HashMap::new(),
            waiting_parent: HashMap::new(),
            waiting_author: HashMap::new(),
            held_for_keys: 0,
            order: None,
        }
    }

    /// The group.
    pub fn group(&self) -> GroupId {
        self.group
    }

    /// Number of accepted entries.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether nothing is accepted yet.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Number of held entries.
    pub fn held(&self) -> usize {
        self.held.len()
    }

    /// An accepted entry.
    pub fn get(&self, h: &EntryHash) -> Option<&Stored> {
        self.entries.get(h)
    }

    /// Whether `h` is accepted.
    pub fn contains(&self, h: &EntryHash) -> bool {
        self.entries.contains_key(h)
    }

    /// The accepted entries no other accepted entry names as parent.
    pub fn heads(&self) -> &BTreeSet<EntryHash> {
        &self.heads
    }

    /// Parents held entries wait for that are neither accepted nor held themselves: what
    /// to ask a peer for.
    pub fn wanted(&self) -> Vec<EntryHash> {
        let mut w: Vec<EntryHash> = self
            .waiting_parent
            .keys()
            .filter(|h| !self.held.contains_key(*h) && !self.entries.contains_key(*h))
            .copied()
            .collect();
        w.sort_unstable();
        w
    }

    /// Offers the bytes of one entry.
    pub fn insert_bytes(&mut self, bytes: &[u8]) -> Result<Inserted, Refused> {
        self.insert(Entry::decode(bytes)?)
    }

    /// Offers one decoded entry.
    pub fn insert(&mut self, e: Entry) -> Result<Inserted, Refused> {
        if e.group != self.group {
            return Err(Refused::OtherGroup);
        }
        let h = e.hash();
        if self.entries.contains_key(&h) || self.held.contains_key(&h) {
            return Ok(Inserted::Duplicate);
        }
        if let Op::Create { name, creator_keys } = &e.op {
            if group_id(&e.author, creator_keys, name, e.at_ms) != self.group || !e.verify(creator_keys) {
                return Err(Refused::BadCreate);
            }
            let signer = *creator_keys;
            self.accept(h, e, signer);
            return Ok(Inserted::Accepted { released: self.release(h) });
        }
        let missing: Vec<EntryHash> = e.parents.iter().filter(|p| !self.entries.contains_key(*p)).copied().collect();
        if !missing.is_empty() {
            self.hold(h, e, |dag, h| {
                for p in &missing {
                    dag.waiting_parent.entry(*p).or_default().push(h);
                }
            })?;
            return Ok(Inserted::MissingParents(missing));
        }
        match self.place(h, e)? {
            true => Ok(Inserted::Accepted { released: self.release(h) }),
            false => Ok(Inserted::UnknownAuthor),
        }
    }

    /// Accepts an entry whose parents are all present if a known key verifies it, holds it
    /// if its author has no known key; false when held.
    fn place(&mut self, h: EntryHash, e: Entry) -> Result<bool, Refused> {
        let known = self.keys.get(&e.author).cloned().unwrap_or_default();
        if let Some(signer) = known.iter().find(|k| e.verify(k)).copied() {
            self.accept(h, e, signer);
            return Ok(true);
        }
        let author = e.author.clone();
        if self.held_for_keys >= HELD_FOR_KEYS_MAX {
            return Err(Refused::HeldForKeysFull);
        }
        self.hold(h, e, |dag, h| {
            dag.waiting_author.entry(author.clone()).or_default().push(h);
            dag.held_for_keys += 1;
        })?;
        if known.is_empty() { Ok(false) } else { Err(Refused::BadSignature(author)) }
    }

    fn hold(&mut self, h: EntryHash, e: Entry, index: impl FnOnce(&mut Self, EntryHash)) -> Result<(), Refused> {
        if self.held.len() >= HELD_MAX {
            return Err(Refused::HeldFull);
        }
        self.held.insert(h, e);
        index(self, h);
        Ok(())
    }

    fn accept(&mut self, h: EntryHash, e: Entry, signer: UserPublicKeys) {
        for p in &e.parents {
            self.heads.remove(p);
        }
        self.heads.insert(h);
        match &e.op {
            Op::Create { creator_keys: k, .. } | Op::Invite { keys: k, .. } => {
                let name = match &e.op {
                    Op::Invite { member, .. } => member.clone(),
                    _ => e.author.clone(),
                };
                let ks = self.keys.entry(name).or_default();
                if !ks.contains(k) {
                    ks.push(*k);
                }
            }
            _ => {}
        }
        let bytes = e.encode();
        self.entries.insert(h, Stored { entry: e, bytes, signer });
        self.order = None;
    }

    /// Retries held entries that waited for `h` (as a parent, or for keys it announced).
    fn release(&mut self, h: EntryHash) -> usize {
        let mut released = 0;
        let mut done = vec![h];
        while let Some(h) = done.pop() {
            let mut retry = self.waiting_parent.remove(&h).unwrap_or_default();
            if let Some(Op::Create { .. } | Op::Invite { .. }) = self.entries.get(&h).map(|s| &s.entry.op) {
                let name = match &self.entries[&h].entry.op {
                    Op::Invite { member, .. } => member.clone(),
                    _ => self.entries[&h].entry.author.clone(),
                };
                let waiting = self.waiting_author.remove(&name).unwrap_or_default();
                self.held_for_keys -= waiting.len();
                retry.extend(waiting);
            }
            for r in retry {
                let Some(e) = self.held.remove(&r) else { continue };
                if e.parents.iter().any(|p| !self.entries.contains_key(p)) {
                    // Still waiting for another parent, indexed under it already.
                    self.held.insert(r, e);
                    continue;
                }
                if let Ok(true) = self.place(r, e) {
                    released += 1;
                    done.push(r);
                }
            }
        }
        released
    }

    /// Every accepted entry in the order all members agree on: parents before children,
    /// ties broken by the smaller hash (Kahn's algorithm with a min-heap).
    pub fn order(&mut self) -> &[EntryHash] {
        if self.order.is_none() {
            self.order = Some(self.compute_order());
        }
        self.order.as_deref().expect("computed above")
    }

    fn compute_order(&self) -> Vec<EntryHash> {
        let mut indegree: HashMap<EntryHash, usize> = HashMap::with_capacity(self.entries.len());
        let mut children: HashMap<EntryHash, Vec<EntryHash>> = HashMap::with_capacity(self.entries.len());
        for (h, s) in &self.entries {
            indegree.insert(*h, s.entry.parents.len());
            for p in &s.entry.parents {
                children.entry(*p).or_default().push(*h);
            }
        }
        let mut ready: BinaryHeap<Reverse<EntryHash>> =
            indegree.iter().filter(|(_, d)| **d == 0).map(|(h, _)| Reverse(*h)).collect();
        let mut out = Vec::with_capacity(self.entries.len());
        while let Some(Reverse(h)) = ready.pop() {
            out.push(h);
            for c in children.get(&h).map(Vec::as_slice).unwrap_or_default() {
                let d = indegree.get_mut(c).expect("every child is accepted");
                *d -= 1;
                if *d == 0 {
                    ready.push(Reverse(*c));
                }
            }
        }
        out
    }

    /// `from` and all their ancestors that are accepted.
    pub fn ancestors(&self, from: impl IntoIterator<Item = EntryHash>) -> HashSet<EntryHash> {
        let mut seen = HashSet::new();
        let mut stack: Vec<EntryHash> = from.into_iter().filter(|h| self.entries.contains_key(h)).collect();
        while let Some(h) = stack.pop() {
            if !seen.insert(h) {
                continue;
            }
            stack.extend(self.entries[&h].entry.parents.iter().copied());
        }
        seen
    }
}
