//! Bringing two members' copies of a group together after a partition or an absence.
//!
//! A member names what it holds in a Hello: its heads, and a sample of its entries at
//! exponentially spaced positions from the end of its order (the last, the 2nd last, the
//! 4th, 8th… last, and the root), so a peer finds a recent common point however far the
//! two drifted apart. The peer answers with every entry it holds that is not an ancestor
//! of a named entry it also holds. A DAG is closed under parents, so none of what the asker
//! lacks is left out; what it already had may come again, bounded by the sample's spacing.
//! When the peer lacks some of the asker's heads it adds its own Hello, and the asker
//! answers the same way: two members that each saw different halves of a thousand entries
//! converge in three batches. An entry that arrives before its parents is held, and its
//! missing parents are asked for by hash (Want).
//!
//! Every payload is at most [`ENTRY_BYTES_MAX`] bytes (one sealed chat message); an answer
//! is a batch of at most [`ANSWER_ENTRIES_MAX`] payloads, the rest coming in later rounds.
//!
//! Payload encoding: an entry travels as itself (its first byte is the entry version, 1);
//! `0x10 group[16] flags u8 (1 complete, 2 reply) n_heads u8 n_sample u8 hashes` is a Hello,
//! `0x11 group[16] n u8 hashes` a Want.

use super::dag::{Inserted, Refused};
use super::log::{ENTRY_BYTES_MAX, ENTRY_VERSION, EntryHash, GroupId};
use super::member::Group;
use std::collections::HashSet;

/// First byte of a Hello.
const HELLO: u8 = 0x10;
/// First byte of a Want.
const WANT: u8 = 0x11;
/// Most hashes one Hello or Want names (fits [`ENTRY_BYTES_MAX`]).
pub const NAMED_MAX: usize = 40;
/// Most heads a Hello names; the rest of its room goes to the sample.
pub const HELLO_HEADS_MAX: usize = 24;
/// Most entries one answer carries.
pub const ANSWER_ENTRIES_MAX: usize = 1024;

/// One sync payload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Payload {
    /// An entry's bytes (decoded by the DAG).
    Entry(Vec<u8>),
    /// What the sender holds.
    Hello {
        /// The group.
        group: GroupId,
        /// Whether `heads` are all the sender's heads.
        complete: bool,
        /// Whether it answers a Hello (then its incompleteness alone asks for no Hello back,
        /// or two members with many heads would trade Hellos for ever).
        reply: bool,
        /// The sender's heads (newest first when there are more than fit).
        heads: Vec<EntryHash>,
        /// Entries at exponentially spaced positions from the end of the sender's order.
        sample: Vec<EntryHash>,
    },
    /// Entries the sender lacks, by hash.
    Want {
        /// The group.
        group: GroupId,
        /// What it lacks.
        hashes: Vec<EntryHash>,
    },
}

/// Why a payload was not taken.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SyncError {
    /// Bytes that are no payload.
    #[error("malformed sync payload: {0}")]
    Malformed(&'static str),
    /// A Hello or Want of another group.
    #[error("a payload of another group")]
    OtherGroup,
    /// An entry the DAG refused.
    #[error(transparent)]
    Refused(#[from] Refused),
}

fn hashes(b: &[u8], n: usize) -> Result<Vec<EntryHash>, SyncError> {
    if b.len() != n * 32 {
        return Err(SyncError::Malformed("hash list length"));
    }
    Ok(b.chunks_exact(32).map(|c| c.try_into().expect("32-byte chunk")).collect())
}

impl Payload {
    /// Encodes.
    pub fn encode(&self) -> Vec<u8> {
        match self {
            Payload::Entry(b) => b.clone(),
            Payload::Hello { group, complete, reply, heads, sample } => {
                let mut out = Vec::with_capacity(20 + 32 * (heads.len() + sample.len()));
                out.push(HELLO);
                out.extend_from_slice(group);
                let flags = *complete as u8 | (*reply as u8) << 1;
                out.extend_from_slice(&[flags, heads.len() as u8, sample.len() as u8]);
                heads.iter().chain(sample).for_each(|h| out.extend_from_slice(h));
                out
            }
            Payload::Want { group, hashes } => {
                let mut out = Vec::with_capacity(18 + 32 * hashes.len());
                out.push(WANT);
                out.extend_from_slice(group);
                out.push(hashes.len() as u8);
                hashes.iter().for_each(|h| out.extend_from_slice(h));
                out
            }
        }
    }

    /// Decodes; refuses anything malformed or over [`ENTRY_BYTES_MAX`].
    pub fn decode(b: &[u8]) -> Result<Payload, SyncError> {
        if b.len() > ENTRY_BYTES_MAX {
            return Err(SyncError::Malformed("larger than a chat message carries"));
        }
        match b.first() {
            Some(&ENTRY_VERSION) => Ok(Payload::Entry(b.to_vec())),
            Some(&HELLO) => {
                if b.len() < 20 {
                    return Err(SyncError::Malformed("truncated hello"));
                }
                let group: GroupId = b[1..17].try_into().expect("16 bytes");
                if b[17] > 3 {
                    return Err(SyncError::Malformed("hello flags"));
                }
                let (complete, reply) = (b[17] & 1 != 0, b[17] & 2 != 0);
                let (nh, ns) = (b[18] as usize, b[19] as usize);
                if nh > HELLO_HEADS_MAX || nh + ns > NAMED_MAX {
                    return Err(SyncError::Malformed("too many hashes"));
                }
                let all = hashes(&b[20..], nh + ns)?;
                Ok(Payload::Hello { group, complete, reply, heads: all[..nh].to_vec(), sample: all[nh..].to_vec() })
            }
            Some(&WANT) => {
                if b.len() < 18 {
                    return Err(SyncError::Malformed("truncated want"));
                }
                let n = b[17] as usize;
                if n > NAMED_MAX {
                    return Err(SyncError::Malformed("too many hashes"));
                }
                Ok(Payload::Want { group: b[1..17].try_into().expect("16 bytes"), hashes: hashes(&b[18..], n)? })
            }
            _ => Err(SyncError::Malformed("unknown kind")),
        }
    }
}

/// The Hello a member sends on reconnecting (or periodically) to a peer.
pub fn hello(g: &mut Group) -> Vec<u8> {
    hello_as(g, false)
}

fn hello_as(g: &mut Group, reply: bool) -> Vec<u8> {
    let group = g.id();
    let dag = g.dag_mut();
    let all_heads = dag.heads().clone();
    let order = dag.order().to_vec();
    let heads: Vec<EntryHash> =
        order.iter().rev().filter(|h| all_heads.contains(*h)).take(HELLO_HEADS_MAX).copied().collect();
    let complete = heads.len() == all_heads.len();
    let mut sample = Vec::new();
    let mut back = 1usize;
    while back <= order.len() && heads.len() + sample.len() < NAMED_MAX - 1 {
        let h = order[order.len() - back];
        if !all_heads.contains(&h) {
            sample.push(h);
        }
        back *= 2;
    }
    if let Some(root) = order.first()
        && !heads.contains(root)
        && !sample.contains(root)
    {
        sample.push(*root);
    }
    Payload::Hello { group, complete, reply, heads, sample }.encode()
}

/// Takes in one payload from a peer; returns the payloads to send back (possibly none).
pub fn handle(g: &mut Group, bytes: &[u8]) -> Result<Vec<Vec<u8>>, SyncError> {
    let group = g.id();
    match Payload::decode(bytes)? {
        Payload::Entry(b) => match g.receive(&b)? {
            Inserted::MissingParents(_) => {
                let mut wanted = g.dag_mut().wanted();
                wanted.truncate(NAMED_MAX);
                if wanted.is_empty() {
                    return Ok(Vec::new());
                }
                Ok(vec![Payload::Want { group, hashes: wanted }.encode()])
            }
            _ => Ok(Vec::new()),
        },
        Payload::Want { group: gid, hashes } => {
            if gid != group {
                return Err(SyncError::OtherGroup);
            }
            let dag = g.dag_mut();
            Ok(hashes.iter().filter_map(|h| dag.get(h).map(|s| s.bytes.clone())).collect())
        }
        Payload::Hello { group: gid, complete, reply, heads, sample } => {
            if gid != group {
                return Err(SyncError::OtherGroup);
            }
            let dag = g.dag_mut();
            let lacking_heads = heads.iter().any(|h| !dag.contains(h));
            let known: Vec<EntryHash> = heads.iter().chain(&sample).filter(|h| dag.contains(h)).copied().collect();
            let theirs: HashSet<EntryHash> = dag.ancestors(known);
            let order = dag.order().to_vec();
            let mut out: Vec<Vec<u8>> = order
                .iter()
                .filter(|h| !theirs.contains(*h))
                .take(ANSWER_ENTRIES_MAX + 1)
                .map(|h| dag.get(h).expect("ordered entries are held").bytes.clone())
                .collect();
            let truncated = out.len() > ANSWER_ENTRIES_MAX;
            out.truncate(ANSWER_ENTRIES_MAX);
            // Our Hello goes last, so the peer answers it after taking in what we sent.
            if lacking_heads || truncated || (!complete && !reply) {
                out.push(hello_as(g, true));
            }
            Ok(out)
        }
    }
}
