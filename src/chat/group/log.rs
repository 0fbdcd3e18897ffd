//! One entry of a group's log: who wrote it, the heads it saw, what it does, and the
//! author's signature. The log is a DAG of these, each naming its parents by hash, so the
//! whole history verifies by itself: the Create entry carries the creator's keys and each
//! Invite the invitee's (`docs/chat.md` §0 "Groups").
//!
//! Encoding (big-endian, canonical: one entry has one encoding, so its hash is well
//! defined):
//!
//! ```text
//! version u8 = 1 | group [16] | author str8 | parents u8 n, n × [32] ascending
//! | epoch u32 | at_ms u64 | op tag u8, op body | sig [64]
//! ```
//!
//! `str8` is a length byte and UTF-8. The signature covers everything before it, after the
//! domain prefix; the entry's hash is SHA-256 of the whole encoding.

use crate::crypto::user::{SEAL_OVERHEAD, SIGNATURE_LEN, UserKeys, UserPublicKeys};
use sha2::{Digest, Sha256};

/// A group's id: derived from its Create entry (see [`group_id`]).
pub type GroupId = [u8; 16];
/// An entry's hash: SHA-256 of its encoding.
pub type EntryHash = [u8; 32];

/// The encoding's version byte (also the first byte of any group payload that is an entry).
pub const ENTRY_VERSION: u8 = 1;
/// Largest encoded entry: one entry travels alone in one sealed chat message.
pub const ENTRY_BYTES_MAX: usize = 1400;
/// Most parents an entry names; an author with more heads names the newest ones.
pub const PARENTS_MAX: usize = 16;
/// Longest group name, in bytes.
pub const GROUP_NAME_BYTES_MAX: usize = 64;
/// Longest member name, in bytes (a username, `login::username::USERNAME_LEN_MAX`).
pub const MEMBER_BYTES_MAX: usize = crate::login::username::USERNAME_LEN_MAX;
/// Length of a group key sealed to one member: the key and the seal's overhead.
pub const SEALED_KEY_LEN: usize = 32 + SEAL_OVERHEAD;
/// Signature domain of an entry.
pub const ENTRY_DOMAIN: &[u8] = b"confab/v1/group-entry\0";
/// Seal domain of a group key handed to one member (bound to group, epoch and member).
const KEY_SEAL_DOMAIN: &[u8] = b"confab/v1/group-key\0";
/// Hash domain of a group id.
const GROUP_ID_DOMAIN: &[u8] = b"confab/v1/group-id\0";

/// What an entry does.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op {
    /// Founds the group; its author is the creator, an admin for good.
    Create {
        /// The group's name, as its members see it.
        name: String,
        /// The creator's user keys: how every member verifies the creator's entries.
        creator_keys: UserPublicKeys,
    },
    /// Makes `member` a member (by the creator or an admin).
    Invite {
        /// The invitee.
        member: String,
        /// The invitee's user keys, as its signed index entry published them.
        keys: UserPublicKeys,
    },
    /// The author leaves.
    Leave,
    /// Removes `member` (by the creator or an admin; the creator cannot be removed).
    Remove {
        /// Who is removed.
        member: String,
    },
    /// Makes `member` an admin (by the creator or an admin).
    Promote {
        /// Who becomes an admin.
        member: String,
    },
    /// One page of an epoch's key, sealed to each member named. A new epoch takes as many
    /// pages as its members need; an invitee gets the current key in a page of its own.
    Rekey {
        /// The epoch whose key this is.
        epoch: u32,
        /// Member name and the key sealed to its user keys, names strictly ascending.
        sealed: Vec<(String, Vec<u8>)>,
    },
    /// A text, AES-256-GCM under the key of the entry's epoch.
    Message {
        /// The GCM nonce (random: one epoch key seals many messages).
        nonce: [u8; 12],
        /// Ciphertext and tag.
        ciphertext: Vec<u8>,
    },
}

impl Op {
    fn tag(&self) -> u8 {
        match self {
            Op::Create { .. } => 0,
            Op::Invite { .. } => 1,
            Op::Leave => 2,
            Op::Remove { .. } => 3,
            Op::Promote { .. } => 4,
            Op::Rekey { .. } => 5,
            Op::Message { .. } => 6,
        }
    }
}

/// One signed entry of a group's log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// The group.
    pub group: GroupId,
    /// Who wrote it (a username).
    pub author: String,
    /// The heads the author had, strictly ascending; empty only for Create.
    pub parents: Vec<EntryHash>,
    /// The epoch the author was in (a Message is sealed under its key).
    pub epoch: u32,
    /// The author's clock when writing, unix milliseconds (shown, never trusted for order).
    pub at_ms: u64,
    /// What it does.
    pub op: Op,
    /// Ed25519 by the author's user key over [`ENTRY_DOMAIN`] ‖ everything before it.
    pub sig: [u8; SIGNATURE_LEN],
}

/// Why bytes are not an entry.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DecodeError {
    /// Larger than [`ENTRY_BYTES_MAX`].
    #[error("an entry has at most {ENTRY_BYTES_MAX} bytes, this one has {0}")]
    TooLarge(usize),
    /// Ends inside a field.
    #[error("truncated in {0}")]
    Truncated(&'static str),
    /// Not version 1.
    #[error("unknown entry version {0}")]
    Version(u8),
    /// An op tag no version knows.
    #[error("unknown op {0}")]
    Op(u8),
    /// A string that is not UTF-8, empty where a name is needed, or too long.
    #[error("bad string in {0}")]
    Str(&'static str),
    /// Parents not strictly ascending, too many, or absent where required.
    #[error("parents must be 1 to {PARENTS_MAX} hashes, strictly ascending (none only for Create)")]
    Parents,
    /// A Rekey page with no member, members out of order, or a sealed key of the wrong length.
    #[error("bad rekey page")]
    Rekey,
    /// Bytes after the signature.
    #[error("{0} bytes after the signature")]
    Trailing(usize),
}

/// Why an entry cannot be written.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum EncodeError {
    /// Its encoding would exceed [`ENTRY_BYTES_MAX`].
    #[error("the entry would have {0} bytes, more than {ENTRY_BYTES_MAX}")]
    TooLarge(usize),
    /// A field breaks a rule the decoder enforces.
    #[error("invalid entry: {0}")]
    Invalid(DecodeError),
}

/// A group's id: SHA-256 over the Create entry's fixed fields, so one creator's signature
/// founds one group and nobody can found a second group under the same id.
pub fn group_id(creator: &str, keys: &UserPublicKeys, name: &str, at_ms: u64) -> GroupId {
    let mut h = Sha256::new();
    h.update(GROUP_ID_DOMAIN);
    h.update([creator.len() as u8]);
    h.update(creator.as_bytes());
    h.update(keys.to_bytes());
    h.update([name.len() as u8]);
    h.update(name.as_bytes());
    h.update(at_ms.to_be_bytes());
    h.finalize()[..16].try_into().expect("16 of 32 bytes")
}

/// The AAD of a group key sealed to `member` for `epoch`: a sealed key cannot be moved to
/// another group, epoch or member.
pub fn key_seal_aad(group: &GroupId, epoch: u32, member: &str) -> Vec<u8> {
    let mut a = Vec::with_capacity(KEY_SEAL_DOMAIN.len() + 16 + 4 + member.len());
    a.extend_from_slice(KEY_SEAL_DOMAIN);
    a.extend_from_slice(group);
    a.extend_from_slice(&epoch.to_be_bytes());
    a.extend_from_slice(member.as_bytes());
    a
}

fn put_str(out: &mut Vec<u8>, s: &str) {
    out.push(s.len() as u8);
    out.extend_from_slice(s.as_bytes());
}

impl Entry {
    /// Writes an entry signed by `keys` (the author's). Parents are sorted and deduplicated
    /// here, so callers pass heads in any order.
    pub fn sign(
        group: GroupId,
        author: &str,
        mut parents: Vec<EntryHash>,
        epoch: u32,
        at_ms: u64,
        op: Op,
        keys: &UserKeys,
    ) -> Result<Self, EncodeError> {
        parents.sort_unstable();
        parents.dedup();
        let mut e = Entry { group, author: author.to_owned(), parents, epoch, at_ms, op, sig: [0; SIGNATURE_LEN] };
        let body = e.signed_bytes();
        let len = body.len() + SIGNATURE_LEN;
        if len > ENTRY_BYTES_MAX {
            return Err(EncodeError::TooLarge(len));
        }
        e.sig = keys.sign(ENTRY_DOMAIN, &body);
        // The decoder is the one definition of a valid entry: what it refuses is never sent.
        Entry::decode(&e.encode()).map_err(EncodeError::Invalid)?;
        Ok(e)
    }

    /// The fields before the op: what a Message binds as AAD with its nonce.
    fn header(&self, out: &mut Vec<u8>) {
        out.push(ENTRY_VERSION);
        out.extend_from_slice(&self.group);
        put_str(out, &self.author);
        out.push(self.parents.len() as u8);
        for p in &self.parents {
            out.extend_from_slice(p);
        }
        out.extend_from_slice(&self.epoch.to_be_bytes());
        out.extend_from_slice(&self.at_ms.to_be_bytes());
    }

    /// Everything the signature covers.
    pub fn signed_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(256);
        self.header(&mut out);
        out.push(self.op.tag());
        match &self.op {
            Op::Create { name, creator_keys } => {
                put_str(&mut out, name);
                out.extend_from_slice(&creator_keys.to_bytes());
            }
            Op::Invite { member, keys } => {
                put_str(&mut out, member);
                out.extend_from_slice(&keys.to_bytes());
            }
            Op::Leave => {}
            Op::Remove { member } | Op::Promote { member } => put_str(&mut out, member),
            Op::Rekey { epoch, sealed } => {
                out.extend_from_slice(&epoch.to_be_bytes());
                out.push(sealed.len() as u8);
                for (m, k) in sealed {
                    put_str(&mut out, m);
                    out.extend_from_slice(k);
                }
            }
            Op::Message { nonce, ciphertext } => {
                out.extend_from_slice(nonce);
                out.extend_from_slice(&(ciphertext.len() as u16).to_be_bytes());
                out.extend_from_slice(ciphertext);
            }
        }
        out
    }

    /// The encoding.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = self.signed_bytes();
        out.extend_from_slice(&self.sig);
        out
    }

    /// SHA-256 of the encoding.
    pub fn hash(&self) -> EntryHash {
        Sha256::digest(self.encode()).into()
    }

    /// Whether the signature is `keys`'s.
    pub fn verify(&self, keys: &UserPublicKeys) -> bool {
        keys.verify(ENTRY_DOMAIN, &self.signed_bytes(), &self.sig)
    }

    /// The AAD of a Message's ciphertext: every field the entry's hash covers except the
    /// ciphertext and signature, so a ciphertext cannot be lifted into another entry.
    pub fn message_aad(
        group: &GroupId,
        author: &str,
        parents: &[EntryHash],
        epoch: u32,
        at_ms: u64,
        nonce: &[u8; 12],
    ) -> Vec<u8> {
        let mut parents = parents.to_vec();
        parents.sort_unstable();
        parents.dedup();
        let shell = Entry {
            group: *group,
            author: author.to_owned(),
            parents,
            epoch,
            at_ms,
            op: Op::Leave,
            sig: [0; SIGNATURE_LEN],
        };
        let mut out = Vec::with_capacity(128);
        shell.header(&mut out);
        out.push(6);
        out.extend_from_slice(nonce);
        out
    }

    /// Decodes one entry; refuses anything malformed, oversized or non-canonical.
    pub fn decode(b: &[u8]) -> Result<Self, DecodeError> {
        if b.len() > ENTRY_BYTES_MAX {
            return Err(DecodeError::TooLarge(b.len()));
        }
        let mut r = Reader { b, at: 0 };
        let v = r.u8("version")?;
        if v != ENTRY_VERSION {
            return Err(DecodeError::Version(v));
        }
        let group: GroupId = r.array("group")?;
        let author = r.name("author", MEMBER_BYTES_MAX)?;
        let n = r.u8("parents")? as usize;
        if n > PARENTS_MAX {
            return Err(DecodeError::Parents);
        }
        let mut parents = Vec::with_capacity(n);
        for _ in 0..n {
            let p: EntryHash = r.array("parents")?;
            if parents.last().is_some_and(|last| *last >= p) {
                return Err(DecodeError::Parents);
            }
            parents.push(p);
        }
        let epoch = u32::from_be_bytes(r.array("epoch")?);
        let at_ms = u64::from_be_bytes(r.array("at_ms")?);
        let tag = r.u8("op")?;
        let op = match tag {
            0 => {
                let name = r.name("create.name", GROUP_NAME_BYTES_MAX)?;
                let creator_keys = UserPublicKeys::from_bytes(&r.array("create.keys")?);
                Op::Create { name, creator_keys }
            }
            1 => {
                let member = r.name("invite.member", MEMBER_BYTES_MAX)?;
                let keys = UserPublicKeys::from_bytes(&r.array("invite.keys")?);
                Op::Invite { member, keys }
            }
            2 => Op::Leave,
            3 => Op::Remove { member: r.name("remove.member", MEMBER_BYTES_MAX)? },
            4 => Op::Promote { member: r.name("promote.member", MEMBER_BYTES_MAX)? },
            5 => {
                let epoch = u32::from_be_bytes(r.array("rekey.epoch")?);
                let n = r.u8("rekey.count")? as usize;
                if n == 0 {
                    return Err(DecodeError::Rekey);
                }
                let mut sealed: Vec<(String, Vec<u8>)> = Vec::with_capacity(n);
                for _ in 0..n {
                    let m = r.name("rekey.member", MEMBER_BYTES_MAX)?;
                    if sealed.last().is_some_and(|(last, _)| *last >= m) {
                        return Err(DecodeError::Rekey);
                    }
                    let k = r.take("rekey.sealed", SEALED_KEY_LEN)?.to_vec();
                    sealed.push((m, k));
                }
                Op::Rekey { epoch, sealed }
            }
            6 => {
                let nonce = r.array("message.nonce")?;
                let len = u16::from_be_bytes(r.array("message.len")?) as usize;
                let ciphertext = r.take("message.ciphertext", len)?.to_vec();
                Op::Message { nonce, ciphertext }
            }
            t => return Err(DecodeError::Op(t)),
        };
        // Create alone founds the DAG; every other entry hangs below something.
        if matches!(op, Op::Create { .. }) != parents.is_empty() {
            return Err(DecodeError::Parents);
        }
        let sig = r.array("sig")?;
        if r.at != b.len() {
            return Err(DecodeError::Trailing(b.len() - r.at));
        }
        Ok(Entry { group, author, parents, epoch, at_ms, op, sig })
    }
}

/// A cursor over bytes whose reads fail instead of panicking.
struct Reader<'a> {
    b: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, what: &'static str, n: usize) -> Result<&'a [u8], DecodeError> {
        let end = self.at.checked_add(n).filter(|e| *e <= self.b.len()).ok_or(DecodeError::Truncated(what))?;
        let s = &self.b[self.at..end];
        self.at = end;
        Ok(s)
    }

    fn u8(&mut self, what: &'static str) -> Result<u8, DecodeError> {
        Ok(self.take(what, 1)?[0])
    }

    fn array<const N: usize>(&mut self, what: &'static str) -> Result<[u8; N], DecodeError> {
        Ok(self.take(what, N)?.try_into().expect("took N bytes"))
    }

    /// A non-empty UTF-8 string of at most `max` bytes.
    fn name(&mut self, what: &'static str, max: usize) -> Result<String, DecodeError> {
        let n = self.u8(what)? as usize;
        if n == 0 || n > max {
            return Err(DecodeError::Str(what));
        }
        let s = self.take(what, n)?;
        std::str::from_utf8(s).map(str::to_owned).map_err(|_| DecodeError::Str(what))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crypto::password::ListKey;
    use proptest::prelude::*;

    fn keys(b: u8) -> UserKeys {
        UserKeys::derive(&ListKey([b; 32]))
    }

    fn sample_ops() -> Vec<Op> {
        let k = keys(2).public();
        vec![
            Op::Invite { member: "bob".into(), keys: k },
            Op::Leave,
            Op::Remove { member: "bob".into() },
            Op::Promote { member: "bob".into() },
            Op::Rekey {
                epoch: 3,
                sealed: vec![("amy".into(), vec![1; SEALED_KEY_LEN]), ("bob".into(), vec![2; SEALED_KEY_LEN])],
            },
            Op::Message { nonce: [9; 12], ciphertext: vec![7; 40] },
        ]
    }

    #[test]
    fn every_op_round_trips_and_verifies_only_with_its_author() {
        let alice = keys(1);
        let gid = group_id("alice", &alice.public(), "g", 5);
        let create = Entry::sign(
            gid,
            "alice",
            vec![],
            0,
            5,
            Op::Create { name: "g".into(), creator_keys: alice.public() },
            &alice,
        )
        .unwrap();
        let mut all = vec![create.clone()];
        for op in sample_ops() {
            all.push(Entry::sign(gid, "alice", vec![[3; 32], create.hash()], 1, 6, op, &alice).unwrap());
        }
        for e in &all {
            let d = Entry::decode(&e.encode()).unwrap();
            assert_eq!(&d, e);
            assert!(d.verify(&alice.public()));
            assert!(!d.verify(&keys(2).public()));
            assert_eq!(d.hash(), e.hash());
        }
        assert!(all[1].parents.windows(2).all(|w| w[0] < w[1]), "parents sorted when signing");
    }

    #[test]
    fn any_changed_byte_breaks_the_signature_or_the_decoding() {
        let alice = keys(1);
        let e =
            Entry::sign([1; 16], "alice", vec![[2; 32]], 1, 9, Op::Remove { member: "bob".into() }, &alice).unwrap();
        let b = e.encode();
        for i in 0..b.len() {
            let mut t = b.clone();
            t[i] ^= 0x01;
            if let Ok(d) = Entry::decode(&t) {
                assert!(!d.verify(&alice.public()), "byte {i} flipped still verifies");
            }
        }
    }

    #[test]
    fn non_canonical_and_oversized_entries_are_refused() {
        let alice = keys(1);
        let e = Entry::sign([1; 16], "alice", vec![[2; 32], [3; 32]], 1, 9, Op::Leave, &alice).unwrap();
        let b = e.encode();
        // Parents swapped: the same set in another order would give a second hash.
        let mut swapped = b.clone();
        let at = 1 + 16 + 1 + 5 + 1;
        swapped[at..at + 32].copy_from_slice(&[3; 32]);
        swapped[at + 32..at + 64].copy_from_slice(&[2; 32]);
        assert_eq!(Entry::decode(&swapped), Err(DecodeError::Parents));
        let mut long = b.clone();
        long.push(0);
        assert_eq!(Entry::decode(&long), Err(DecodeError::Trailing(1)));
        assert_eq!(Entry::decode(&vec![1; ENTRY_BYTES_MAX + 1]), Err(DecodeError::TooLarge(ENTRY_BYTES_MAX + 1)));
        let big = Op::Message { nonce: [0; 12], ciphertext: vec![0; ENTRY_BYTES_MAX] };
        assert!(matches!(
            Entry::sign([1; 16], "alice", vec![[2; 32]], 1, 9, big, &alice),
            Err(EncodeError::TooLarge(_))
        ));
        let orphan = Entry::sign([1; 16], "alice", vec![], 1, 9, Op::Leave, &alice);
        assert_eq!(orphan, Err(EncodeError::Invalid(DecodeError::Parents)));
        for cut in 0..b.len() {
            assert!(Entry::decode(&b[..cut]).is_err(), "a prefix of {cut} bytes decodes");
        }
    }

    proptest! {
        #[test]
        fn decode_is_total(bytes in proptest::collection::vec(any::<u8>(), 0..1600)) {
            let _ = Entry::decode(&bytes);
        }

        #[test]
        fn decode_is_total_near_valid_entries(pick in 0usize..6, at in 0usize..400, val in any::<u8>()) {
            let alice = keys(1);
            let op = sample_ops().swap_remove(pick);
            let mut b = Entry::sign([1; 16], "alice", vec![[2; 32]], 1, 9, op, &alice).unwrap().encode();
            let i = at % b.len();
            b[i] = val;
            if let Ok(d) = Entry::decode(&b) {
                prop_assert_eq!(d.encode(), b, "a decoded entry re-encodes to the same bytes");
            }
        }
    }
}
