//! One member's side of a group: its copy of the DAG, the epoch keys sealed to it, the
//! entries it writes (signed with its user key) and the history it reads. Time and
//! randomness are inputs; every entry written is returned as bytes for the caller to send
//! to the other members (each fits one sealed chat message).

use super::dag::{Dag, Inserted, Refused};
use super::log::{ENTRY_BYTES_MAX, EncodeError, Entry, EntryHash, GroupId, Op, PARENTS_MAX, group_id, key_seal_aad};
use super::state::State;
use crate::crypto::aead::SealKey;
use crate::crypto::dh;
use crate::crypto::user::{UserKeys, UserPublicKeys};
use std::collections::{BTreeMap, HashMap};

/// Why a member cannot write an entry.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum GroupError {
    /// The member is not (or no longer) in the group.
    #[error("not a member of the group")]
    NotMember,
    /// Only the creator and admins invite, remove and promote.
    #[error("only the creator and admins may do that")]
    NotAdmin,
    /// The target is already (or is not) a member, or cannot be removed.
    #[error("{0}")]
    Target(&'static str),
    /// The epoch counter is exhausted (only after billions of epochs).
    #[error("no epoch is left")]
    EpochsExhausted,
    /// No key of the current epoch has reached this member yet.
    #[error("no key for epoch {0} yet")]
    NoKey(u32),
    /// The entry would not fit.
    #[error(transparent)]
    Encode(#[from] EncodeError),
    /// Our own entry was held or a duplicate, not taken in.
    #[error("own entry not taken in")]
    NotTakenIn,
    /// Our own entry was refused (the log announced other keys for us).
    #[error("own entry refused: {0}")]
    Own(#[from] Refused),
}

/// A message of the history, as one member reads it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HistoryItem {
    /// The entry's hash (the message's id).
    pub id: EntryHash,
    /// Who wrote it.
    pub author: String,
    /// When, by the author's clock.
    pub at_ms: u64,
    /// The text, or None if this member holds no key of its epoch (it had left, or not
    /// joined yet) or the ciphertext does not open.
    pub text: Option<String>,
}

/// One member's view of a group.
pub struct Group {
    me: String,
    keys: UserKeys,
    dag: Dag,
    /// Epoch keys opened from Rekey pages, by page (None: not for us or did not open).
    opened: HashMap<EntryHash, Option<[u8; 32]>>,
    state: Option<State>,
}

impl std::fmt::Debug for Group {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Group").field("me", &self.me).field("entries", &self.dag.len()).finish_non_exhaustive()
    }
}

fn random<const N: usize>(rng: &mut impl rand::Rng) -> [u8; N] {
    let mut b = [0; N];
    rng.fill_bytes(&mut b);
    b
}

impl Group {
    /// Founds a group: the Create entry and the first epoch's key, sealed to the creator.
    pub fn create(
        me: &str,
        keys: UserKeys,
        name: &str,
        now_ms: u64,
        rng: &mut impl rand::Rng,
    ) -> Result<(Group, Vec<Vec<u8>>), GroupError> {
        let gid = group_id(me, &keys.public(), name, now_ms);
        let op = Op::Create { name: name.to_owned(), creator_keys: keys.public() };
        let create = Entry::sign(gid, me, vec![], 0, now_ms, op, &keys)?;
        let mut g = Group::join(me, keys, gid);
        g.dag.insert(create.clone())?;
        let mut out = vec![create.encode()];
        out.extend(g.new_epoch(now_ms, rng)?);
        Ok((g, out))
    }

    /// A member's empty copy of `group`, to be filled by sync.
    pub fn join(me: &str, keys: UserKeys, group: GroupId) -> Group {
        Group { me: me.to_owned(), keys, dag: Dag::new(group), opened: HashMap::new(), state: None }
    }

    /// The group's id.
    pub fn id(&self) -> GroupId {
        self.dag.group()
    }

    /// This member's name.
    pub fn me(&self) -> &str {
        &self.me
    }

    /// The entries held.
    pub fn dag(&self) -> &Dag {
        &self.dag
    }

    /// The DAG, for sync (its order is computed lazily). Inserting through it would leave
    /// the folded state stale: [`Group::receive`] is the way in.
    pub(super) fn dag_mut(&mut self) -> &mut Dag {
        &mut self.dag
    }

    /// Every accepted entry's bytes in the agreed order: what a member saves, and feeds
    /// back through [`Group::receive`] (into [`Group::join`]'s empty copy) on restart.
    pub fn export(&mut self) -> Vec<Vec<u8>> {
        let order = self.dag.order().to_vec();
        order.iter().map(|h| self.dag.get(h).expect("ordered entries are held").bytes.clone()).collect()
    }

    /// Takes in an entry received from another member.
    pub fn receive(&mut self, bytes: &[u8]) -> Result<Inserted, Refused> {
        let r = self.dag.insert_bytes(bytes);
        if matches!(r, Ok(Inserted::Accepted { .. })) {
            self.state = None;
        }
        r
    }

    /// The state folded from the entries held.
    pub fn state(&mut self) -> &State {
        if self.state.is_none() {
            self.state = Some(State::fold(&mut self.dag));
        }
        self.state.as_ref().expect("folded above")
    }

    /// Whether the log, as folded, ever made this user a member: its applied Create is ours,
    /// or an applied Invite names us. Only such a log is worth keeping: entries anyone can
    /// sign under a group id of their own prove nothing until then.
    pub fn ever_mine(&mut self) -> bool {
        let me = self.me.clone();
        self.state();
        let s = self.state.as_ref().expect("folded above");
        s.applied.iter().filter_map(|h| self.dag.get(h)).any(|st| match &st.entry.op {
            Op::Create { .. } => st.entry.author == me,
            Op::Invite { member, .. } => *member == me,
            _ => false,
        })
    }

    /// Epoch keys this member holds, oldest page first within an epoch. `applied_only`
    /// leaves out pages the fold excluded: new messages are sealed only under keys a member
    /// handed out, but a page whose author turned out to be removed concurrently still
    /// opens what was sealed under it by members who did not know yet.
    fn keyring(&mut self, applied_only: bool) -> BTreeMap<u32, Vec<[u8; 32]>> {
        self.state();
        let s = self.state.as_ref().expect("folded above");
        let mut rekeys = s.rekeys.clone();
        if !applied_only {
            let excluded = s.excluded.iter().map(|(h, _)| *h);
            rekeys.extend(excluded.filter(|h| matches!(self.dag.get(h).map(|e| &e.entry.op), Some(Op::Rekey { .. }))));
        }
        let mut ring: BTreeMap<u32, Vec<[u8; 32]>> = BTreeMap::new();
        for h in rekeys {
            let Op::Rekey { epoch, sealed } = &self.dag.get(&h).expect("applied entries are held").entry.op else {
                continue;
            };
            let key = *self.opened.entry(h).or_insert_with(|| {
                let (_, s) = sealed.iter().find(|(m, _)| *m == self.me)?;
                let k = self.keys.open(&key_seal_aad(&self.dag.group(), *epoch, &self.me), s)?;
                k.try_into().ok()
            });
            if let Some(k) = key {
                let keys = ring.entry(*epoch).or_default();
                if !keys.contains(&k) {
                    keys.push(k);
                }
            }
        }
        ring
    }

    /// The key this member seals new messages under: of the current epoch, the one from
    /// the latest page in order.
    fn current_key(&mut self) -> Result<(u32, [u8; 32]), GroupError> {
        let epoch = self.state().epoch;
        let ring = self.keyring(true);
        ring.get(&epoch).and_then(|ks| ks.last()).map(|k| (epoch, *k)).ok_or(GroupError::NoKey(epoch))
    }

    /// Signs an entry below the current heads, takes it in, and returns its bytes.
    fn write(&mut self, op: Op, epoch: u32, now_ms: u64) -> Result<Vec<u8>, GroupError> {
        let parents = self.parents();
        let e = Entry::sign(self.dag.group(), &self.me, parents, epoch, now_ms, op, &self.keys)?;
        let bytes = e.encode();
        match self.dag.insert(e)? {
            Inserted::Accepted { .. } => {}
            // Below our own heads, so only an author the log has no keys for (or an
            // identical entry written twice) lands here.
            _ => return Err(GroupError::NotTakenIn),
        }
        self.state = None;
        Ok(bytes)
    }

    /// The heads a new entry names: all of them, or the newest [`PARENTS_MAX`] in order (the
    /// rest stay heads and are named by the next entry).
    fn parents(&mut self) -> Vec<EntryHash> {
        let heads = self.dag.heads().clone();
        if heads.len() <= PARENTS_MAX {
            return heads.into_iter().collect();
        }
        let order = self.dag.order();
        order.iter().rev().filter(|h| heads.contains(*h)).take(PARENTS_MAX).copied().collect()
    }

    fn require_member(&mut self) -> Result<(), GroupError> {
        let me = self.me.clone();
        if self.state().members.contains_key(&me) { Ok(()) } else { Err(GroupError::NotMember) }
    }

    fn require_admin(&mut self) -> Result<(), GroupError> {
        self.require_member()?;
        let me = self.me.clone();
        if self.state().admins.contains(&me) { Ok(()) } else { Err(GroupError::NotAdmin) }
    }

    /// Rekey pages sealing `key` for `epoch` to `to`, as many pages as the entry bound needs.
    fn key_pages(
        &mut self,
        epoch: u32,
        key: &[u8; 32],
        to: &[(String, UserPublicKeys)],
        now_ms: u64,
        rng: &mut impl rand::Rng,
    ) -> Result<Vec<Vec<u8>>, GroupError> {
        let gid = self.dag.group();
        let mut sealed: Vec<(String, Vec<u8>)> = to
            .iter()
            .filter_map(|(m, k)| {
                let eph = dh::Secret::from_bytes(&random(rng));
                // A member whose published key is a low-order point cannot be sealed to.
                Some((m.clone(), k.seal_with(&eph, &key_seal_aad(&gid, epoch, m), key)?))
            })
            .collect();
        sealed.sort_by(|a, b| a.0.cmp(&b.0));
        let mut out = Vec::new();
        let mut rest = sealed.as_slice();
        while !rest.is_empty() {
            let n = self.page_fit(epoch, rest);
            let epoch_now = self.state().epoch;
            out.push(self.write(Op::Rekey { epoch, sealed: rest[..n].to_vec() }, epoch_now, now_ms)?);
            rest = &rest[n..];
        }
        Ok(out)
    }

    /// How many of `sealed` (at least one) fit one Rekey page written below the current
    /// heads: the largest prefix whose encoding stays within [`ENTRY_BYTES_MAX`].
    fn page_fit(&mut self, epoch: u32, sealed: &[(String, Vec<u8>)]) -> usize {
        let mut shell = Entry {
            group: self.dag.group(),
            author: self.me.clone(),
            parents: self.parents(),
            epoch: self.state().epoch,
            at_ms: 0,
            op: Op::Rekey { epoch, sealed: Vec::new() },
            sig: [0; crate::crypto::user::SIGNATURE_LEN],
        };
        shell.parents.sort_unstable();
        let mut len = shell.encode().len();
        let mut n = 0;
        // A page names at most 255 members (its count is one byte).
        while n < sealed.len().min(u8::MAX as usize) {
            let (m, k) = &sealed[n];
            len += 1 + m.len() + k.len();
            if len > ENTRY_BYTES_MAX && n > 0 {
                break;
            }
            n += 1;
        }
        n
    }

    /// Starts a new epoch: a fresh key sealed to every member.
    fn new_epoch(&mut self, now_ms: u64, rng: &mut impl rand::Rng) -> Result<Vec<Vec<u8>>, GroupError> {
        let epoch = self.state().epoch.checked_add(1).ok_or(GroupError::EpochsExhausted)?;
        let key: [u8; 32] = random(rng);
        let to: Vec<(String, UserPublicKeys)> = self.state().members.iter().map(|(m, k)| (m.clone(), *k)).collect();
        self.key_pages(epoch, &key, &to, now_ms, rng)
    }

    /// Invites `member` (whose keys come from its signed index entry) and hands it the
    /// current epoch's key.
    pub fn invite(
        &mut self,
        member: &str,
        keys: UserPublicKeys,
        now_ms: u64,
        rng: &mut impl rand::Rng,
    ) -> Result<Vec<Vec<u8>>, GroupError> {
        self.require_admin()?;
        if self.state().members.contains_key(member) {
            return Err(GroupError::Target("already a member"));
        }
        let (epoch, key) = self.current_key()?;
        let mut out = vec![self.write(Op::Invite { member: member.to_owned(), keys }, epoch, now_ms)?];
        out.extend(self.key_pages(epoch, &key, &[(member.to_owned(), keys)], now_ms, rng)?);
        Ok(out)
    }

    /// Removes `member` and starts a new epoch it does not get the key of.
    pub fn remove(&mut self, member: &str, now_ms: u64, rng: &mut impl rand::Rng) -> Result<Vec<Vec<u8>>, GroupError> {
        self.require_admin()?;
        let me = self.me.clone();
        let s = self.state();
        if !s.members.contains_key(member) {
            return Err(GroupError::Target("not a member"));
        }
        if member == s.creator || member == me {
            return Err(GroupError::Target(
                "the creator cannot be removed, and one leaves rather than removes oneself",
            ));
        }
        let epoch = s.epoch;
        let mut out = vec![self.write(Op::Remove { member: member.to_owned() }, epoch, now_ms)?];
        out.extend(self.new_epoch(now_ms, rng)?);
        Ok(out)
    }

    /// Makes `member` an admin.
    pub fn promote(&mut self, member: &str, now_ms: u64) -> Result<Vec<u8>, GroupError> {
        self.require_admin()?;
        let s = self.state();
        if !s.members.contains_key(member) || s.admins.contains(member) {
            return Err(GroupError::Target("not a member, or an admin already"));
        }
        let epoch = s.epoch;
        self.write(Op::Promote { member: member.to_owned() }, epoch, now_ms)
    }

    /// Leaves the group; the rekeyer starts a new epoch when it sees this ([`Group::maintain`]).
    pub fn leave(&mut self, now_ms: u64) -> Result<Vec<u8>, GroupError> {
        self.require_member()?;
        let epoch = self.state().epoch;
        self.write(Op::Leave, epoch, now_ms)
    }

    /// Sends a text to the group, sealed under the current epoch's key.
    pub fn send(&mut self, text: &str, now_ms: u64, rng: &mut impl rand::Rng) -> Result<Vec<u8>, GroupError> {
        self.require_member()?;
        let (epoch, key) = self.current_key()?;
        let nonce: [u8; 12] = random(rng);
        let parents = self.parents();
        let aad = Entry::message_aad(&self.dag.group(), &self.me, &parents, epoch, now_ms, &nonce);
        let ciphertext = SealKey::from_bytes(key).seal(&nonce, &aad, text.as_bytes());
        self.write(Op::Message { nonce, ciphertext }, epoch, now_ms)
    }

    /// What the state asks of this member, if it is the rekeyer: a new epoch when someone
    /// outside the group knows the current key, else the current key for members who lack
    /// it. Entries to send, usually none.
    pub fn maintain(&mut self, now_ms: u64, rng: &mut impl rand::Rng) -> Result<Vec<Vec<u8>>, GroupError> {
        let me = self.me.clone();
        let s = self.state();
        if s.rekeyer() != Some(me.as_str()) {
            return Ok(Vec::new());
        }
        if s.rekey_due() {
            return self.new_epoch(now_ms, rng);
        }
        let lacking: Vec<(String, UserPublicKeys)> =
            s.members_without_key().into_iter().map(|m| (m.clone(), s.members[&m])).collect();
        if lacking.is_empty() {
            return Ok(Vec::new());
        }
        match self.current_key() {
            Ok((epoch, key)) => self.key_pages(epoch, &key, &lacking, now_ms, rng),
            Err(GroupError::NoKey(_)) => self.new_epoch(now_ms, rng),
            Err(e) => Err(e),
        }
    }

    /// The messages in the order every member agrees on, decrypted where this member holds
    /// the key of their epoch.
    pub fn history(&mut self) -> Vec<HistoryItem> {
        let ring = self.keyring(false);
        let messages = self.state().messages.clone();
        messages
            .into_iter()
            .map(|h| {
                let e = &self.dag.get(&h).expect("applied entries are held").entry;
                let text = match &e.op {
                    Op::Message { nonce, ciphertext } => {
                        let aad = Entry::message_aad(&e.group, &e.author, &e.parents, e.epoch, e.at_ms, nonce);
                        ring.get(&e.epoch)
                            .into_iter()
                            .flatten()
                            .find_map(|k| SealKey::from_bytes(*k).open(nonce, &aad, ciphertext).ok())
                            .and_then(|p| String::from_utf8(p).ok())
                    }
                    _ => None,
                };
                HistoryItem { id: h, author: e.author.clone(), at_ms: e.at_ms, text }
            })
            .collect()
    }
}
