//! A group's state, folded from its DAG in the order every member computes the same way
//! (parents first, ties by hash), applying the membership rules entry by entry. Two
//! members holding the same entries get the same state, whatever order the entries came
//! in: concurrent conflicting operations (two admins removing each other) resolve by that
//! order, and the one applied second is excluded because its author is no longer a member.

use super::dag::Dag;
use super::log::{EntryHash, Op};
use crate::crypto::user::UserPublicKeys;
use std::collections::{BTreeMap, BTreeSet};

/// Why an accepted entry is left out of the state (not an error: sync carries on).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exclusion {
    /// Its author was not a member at that point (never invited, removed, or departed).
    NotMember,
    /// Its signature verified with other keys than the member's (an Invite by a
    /// non-admin announced them).
    WrongKeys,
    /// Invite, Remove or Promote by someone who is not the creator or an admin.
    NotAdmin,
    /// An Invite of a member, or a Promote of an admin.
    NoChange,
    /// Remove or Promote of someone who is not a member.
    NotATarget,
    /// Remove of the creator, or of oneself (that is Leave).
    Forbidden,
    /// A second Create, or an entry before any Create.
    NoRoot,
    /// A Rekey more than [`EPOCH_JUMP_MAX`] epochs ahead (epochs are not to run out).
    EpochJump,
}

/// Most epochs one Rekey may move ahead. One is the rule; more happens when a page's
/// author built on an epoch whose own page the fold excluded (its author was removed
/// concurrently).
pub const EPOCH_JUMP_MAX: u32 = 64;

/// The group as the fold left it.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct State {
    /// The group's name (from its Create).
    pub name: String,
    /// The creator.
    pub creator: String,
    /// Members and their user keys.
    pub members: BTreeMap<String, UserPublicKeys>,
    /// Members who may invite, remove and promote (the creator while a member).
    pub admins: BTreeSet<String>,
    /// The newest epoch any applied Rekey named.
    pub epoch: u32,
    /// Everyone a page of the newest epoch's key was sealed to.
    pub audience: BTreeSet<String>,
    /// Applied entries, in order.
    pub applied: Vec<EntryHash>,
    /// Accepted entries left out, in order, and why.
    pub excluded: Vec<(EntryHash, Exclusion)>,
    /// Applied Rekey pages, in order.
    pub rekeys: Vec<EntryHash>,
    /// Applied Messages, in order.
    pub messages: Vec<EntryHash>,
}

impl State {
    /// Folds the DAG.
    pub fn fold(dag: &mut Dag) -> State {
        let order = dag.order().to_vec();
        let mut s = State::default();
        let mut founded = false;
        for h in order {
            let stored = dag.get(&h).expect("ordered entries are accepted");
            let e = &stored.entry;
            let verdict = if let Op::Create { name, creator_keys } = &e.op {
                if founded {
                    Err(Exclusion::NoRoot)
                } else {
                    founded = true;
                    s.name = name.clone();
                    s.creator = e.author.clone();
                    s.members.insert(e.author.clone(), *creator_keys);
                    s.admins.insert(e.author.clone());
                    Ok(())
                }
            } else if !founded {
                Err(Exclusion::NoRoot)
            } else {
                match s.members.get(&e.author) {
                    None => Err(Exclusion::NotMember),
                    Some(k) if *k != stored.signer => Err(Exclusion::WrongKeys),
                    Some(_) => s.apply(h, &e.author, &e.op),
                }
            };
            match verdict {
                Ok(()) => s.applied.push(h),
                Err(why) => s.excluded.push((h, why)),
            }
        }
        s
    }

    fn admin(&self, who: &str) -> Result<(), Exclusion> {
        if self.admins.contains(who) { Ok(()) } else { Err(Exclusion::NotAdmin) }
    }

    fn apply(&mut self, h: EntryHash, author: &str, op: &Op) -> Result<(), Exclusion> {
        match op {
            Op::Create { .. } => unreachable!("handled by fold"),
            Op::Invite { member, keys } => {
                self.admin(author)?;
                if self.members.contains_key(member) {
                    return Err(Exclusion::NoChange);
                }
                self.members.insert(member.clone(), *keys);
            }
            Op::Leave => {
                self.members.remove(author);
                self.admins.remove(author);
            }
            Op::Remove { member } => {
                self.admin(author)?;
                if !self.members.contains_key(member) {
                    return Err(Exclusion::NotATarget);
                }
                if *member == self.creator || member == author {
                    return Err(Exclusion::Forbidden);
                }
                self.members.remove(member);
                self.admins.remove(member);
            }
            Op::Promote { member } => {
                self.admin(author)?;
                if !self.members.contains_key(member) {
                    return Err(Exclusion::NotATarget);
                }
                if !self.admins.insert(member.clone()) {
                    return Err(Exclusion::NoChange);
                }
            }
            Op::Rekey { epoch, sealed } => {
                if u64::from(*epoch) > u64::from(self.epoch) + u64::from(EPOCH_JUMP_MAX) {
                    return Err(Exclusion::EpochJump);
                }
                let names = sealed.iter().map(|(m, _)| m.clone());
                if *epoch > self.epoch {
                    self.epoch = *epoch;
                    self.audience = names.collect();
                } else if *epoch == self.epoch {
                    self.audience.extend(names);
                }
                // An older epoch's page (written concurrently with a newer one) still
                // opens that epoch's messages, so it is applied without moving the epoch.
                self.rekeys.push(h);
            }
            Op::Message { .. } => self.messages.push(h),
        }
        Ok(())
    }

    /// Whether the newest epoch's key is known to someone who is no longer a member (after
    /// a Leave or Remove, or a merge of concurrent epochs), or there is no key yet: a new
    /// epoch is due.
    pub fn rekey_due(&self) -> bool {
        self.epoch == 0 || self.audience.iter().any(|m| !self.members.contains_key(m))
    }

    /// Members no page of the newest epoch was sealed to (invited concurrently with a new
    /// epoch): they need the current key.
    pub fn members_without_key(&self) -> Vec<String> {
        self.members.keys().filter(|m| !self.audience.contains(*m)).cloned().collect()
    }

    /// The member expected to write a due Rekey: the first admin by name, or the first
    /// member when no admin is left (one writer, not a storm of concurrent epochs).
    pub fn rekeyer(&self) -> Option<&str> {
        self.admins.iter().next().or_else(|| self.members.keys().next()).map(String::as_str)
    }
}
