//! Groups in the host core: the logs this user is in (`chat::group`), how their entries
//! travel, and how two members' copies converge (`docs/chat.md` §5).
//!
//! Plain logic, driven by the chat part ([`super::chat::ChatCore`]), which seals and
//! stores what this part puts out and hands it what arrives:
//!
//! - every entry this member writes goes, as one `Body::Group` chat message, to every
//!   member (a removed member included, so it learns), and to this user (its other
//!   devices): through the store, so offline members get it when they come back;
//! - every payload received (an entry, a Hello, a Want: `chat::group::sync` tells them
//!   apart by their first byte, so one body kind carries them all) feeds the log; an
//!   entry is kept in the history's file before its message is acknowledged, so an entry
//!   acknowledged is never lost;
//! - sync runs with one other member when the link comes up, every [`SYNC_EVERY`], when
//!   an entry arrives whose parents are missing, and after a payload to a member could
//!   not be stored: a Hello names our heads, the peer sends what we lack (at most
//!   [`ANSWER_ENTRIES_MAX`] a round) and its own Hello if it lacks ours;
//! - texts the log can open are recorded in the history under the group, once.

use crate::chat::group::log::{ENTRY_BYTES_MAX, ENTRY_VERSION, EntryHash, GroupId};
use crate::chat::group::sync::{self, Payload};
use crate::chat::group::{Group, GroupError, Inserted};
use crate::chat::history::GroupText;
use crate::crypto::password::ListKey;
use crate::crypto::user::{UserKeys, UserPublicKeys};
use crate::wire::mail::MailId;
use rand::rngs::StdRng;
use std::collections::{BTreeMap, BTreeSet, HashSet, VecDeque};
use std::time::{Duration, Instant};

/// Most groups one user is in (a stranger's entries found no more than this many).
pub const GROUPS_MAX: usize = 256;
/// How often a member syncs each group with one other member, besides at link-up.
pub const SYNC_EVERY: Duration = Duration::from_secs(120);
/// Least time between two Hellos of one group (entries missing parents come in bursts).
pub const HELLO_GAP: Duration = Duration::from_secs(2);
/// Most entries one answer to a Hello carries; the rest come in the next round (the
/// store's per-sender quota is 500 messages a slot).
pub const ANSWER_ENTRIES_MAX: usize = 200;
/// Most members one group's next round of Hellos goes to (those our payloads missed,
/// those whose entries lacked parents, one drawn at random).
pub const HELLO_PEERS_MAX: usize = 32;
/// Most answers (to Hellos and Wants) one peer gets per group per minute.
pub const ANSWERS_PER_MINUTE: u32 = 30;
/// Most groups at once whose entries arrived but whose log does not make this user a
/// member yet (an invite whose earlier entries are still on their way).
pub const PENDING_MAX: usize = 16;
/// Most of those one sender's entries may open.
pub const PENDING_PER_SENDER: usize = 2;
/// Most entries held for one such group.
pub const PENDING_ENTRIES_MAX: usize = 3 * ANSWER_ENTRIES_MAX;
/// Groups a user may be in before a stranger's invite no longer makes a group theirs
/// (a buddy's still does, up to [`GROUPS_MAX`]).
pub const STRANGER_GROUPS_UNTIL: usize = GROUPS_MAX / 2;
/// How long such a group waits to be shown ours before it is forgotten (its messages are
/// not acknowledged, so the store brings them again at the next login).
pub const PENDING_FOR: Duration = Duration::from_secs(600);

/// First byte of a bundle: several payloads in one chat message (`n u8`, then each as
/// `len u16` and its bytes). Most entries are a few hundred bytes, so a bundle carries
/// an invite with its key page, or a sync answer, in a fraction of the messages (the
/// store paces a host at 45 requests a second).
pub const BUNDLE: u8 = 0x12;
/// Largest bundle: what a `Body::Group` carries.
pub const BUNDLE_BYTES_MAX: usize = crate::chat::message::GROUP_BODY_LEN_MAX;

/// Packs payloads (each at most [`ENTRY_BYTES_MAX`] bytes) into as few bodies as fit, in
/// order; a body of one payload is the payload itself.
pub fn bundle(parts: Vec<Vec<u8>>) -> Vec<Vec<u8>> {
    let mut out: Vec<Vec<Vec<u8>>> = Vec::new();
    let mut size = 0;
    for p in parts {
        let fits = out.last().is_some_and(|b| b.len() < 255 && size + 2 + p.len() <= BUNDLE_BYTES_MAX);
        if !fits {
            out.push(Vec::new());
            size = 2;
        }
        size += 2 + p.len();
        out.last_mut().expect("pushed above").push(p);
    }
    out.into_iter()
        .map(|mut b| {
            if b.len() == 1 {
                return b.pop().expect("one part");
            }
            let mut body = vec![BUNDLE, b.len() as u8];
            for p in b {
                body.extend_from_slice(&(p.len() as u16).to_be_bytes());
                body.extend_from_slice(&p);
            }
            body
        })
        .collect()
}

/// The payloads in a body: a bundle's parts, or the body itself. None if a bundle is
/// malformed (truncated, empty, nested, a part over [`ENTRY_BYTES_MAX`], trailing bytes).
pub fn unbundle(body: &[u8]) -> Option<Vec<&[u8]>> {
    if body.len() > BUNDLE_BYTES_MAX {
        return None;
    }
    if body.first() != Some(&BUNDLE) {
        return Some(vec![body]);
    }
    let n = *body.get(1)? as usize;
    let mut rest = &body[2..];
    let mut parts = Vec::with_capacity(n);
    for _ in 0..n {
        let len = u16::from_be_bytes(rest.get(..2)?.try_into().ok()?) as usize;
        let part = rest.get(2..2 + len)?;
        if part.is_empty() || part.len() > ENTRY_BYTES_MAX || part[0] == BUNDLE {
            return None;
        }
        parts.push(part);
        rest = &rest[2 + len..];
    }
    (n > 0 && rest.is_empty()).then_some(parts)
}

/// What the groups ask of the chat part.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GroupOut {
    /// Seal `payload` to `to` as a `Body::Group` message of `group` and store it.
    Send {
        /// The recipient user.
        to: String,
        /// The group.
        group: GroupId,
        /// An entry, a Hello or a Want.
        payload: Vec<u8>,
        /// The command this send belongs to (its outcome waits for the store's answers).
        op: Option<u64>,
    },
    /// Keep entries in the history's file; then acknowledge `ack`, if any.
    Keep {
        /// The group.
        group: GroupId,
        /// The entries' bytes.
        entries: Vec<Vec<u8>>,
        /// The message that brought it.
        ack: Option<MailId>,
    },
    /// Record texts in the history.
    Show {
        /// The group.
        group: GroupId,
        /// Its name.
        name: String,
        /// The texts, in the log's order.
        texts: Vec<GroupText>,
    },
    /// Acknowledge a message that needs nothing kept.
    Ack(MailId),
}

/// Counters.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct GroupStats {
    /// Entries taken in (ours included).
    pub accepted: u64,
    /// Payloads refused (malformed, another group's, a bad signature).
    pub refused: u64,
    /// Hellos sent.
    pub hellos: u64,
    /// Entries sent in answers to Hellos and Wants.
    pub answered: u64,
    /// Answers not given: the peer asked too often.
    pub throttled: u64,
    /// Groups whose entries came but whose log never made this user a member (junk from
    /// a stranger, or an invite whose earlier entries never came): forgotten.
    pub forgotten: u64,
}

/// A group not yet shown to be this user's: held in memory only, never on disk, until
/// its log makes this user a member ([`Group::ever_mine`]).
struct Pending {
    since: Instant,
    /// Who sent its first entry.
    from: String,
    /// Entries to keep once it is ours.
    entries: Vec<Vec<u8>>,
    /// The messages that brought them, acknowledged once it is ours.
    mails: Vec<MailId>,
}

/// One group this user is in.
struct Joined {
    group: Group,
    /// Texts already recorded (this run; the history drops repeats across runs).
    shown: HashSet<EntryHash>,
    /// The log changed since texts and the rekeyer's duty were looked at.
    dirty: bool,
    /// Members to send a Hello once [`HELLO_GAP`] allows (at most [`HELLO_PEERS_MAX`]).
    hello_to: BTreeSet<String>,
    /// Members a payload of ours missed: they get a Hello at the next link-up or
    /// periodic sync (not at once, so an unreachable member is not asked every
    /// [`HELLO_GAP`]).
    missed: BTreeSet<String>,
    last_hello: Option<Instant>,
    next_sync: Option<Instant>,
    /// Answers per peer in the current minute, and when that minute began.
    answers: BTreeMap<String, u32>,
    answers_since: Option<Instant>,
    /// Being founded: entries are kept, not sent, until [`GroupsCore::found`] sends the
    /// whole log to every member at once (each invite's fan-out to the members so far
    /// would cost a square of the group's size).
    founding: bool,
    /// Not yet shown to be ours.
    pending: Option<Pending>,
}

impl Joined {
    fn new(group: Group) -> Self {
        Self {
            group,
            shown: HashSet::new(),
            dirty: true,
            hello_to: BTreeSet::new(),
            missed: BTreeSet::new(),
            last_hello: None,
            next_sync: None,
            answers: BTreeMap::new(),
            answers_since: None,
            founding: false,
            pending: None,
        }
    }
}

/// Why a group command failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum GroupsError {
    /// No group by that name or id.
    #[error("no group {0}")]
    Unknown(String),
    /// Several groups have that name.
    #[error("several groups are named {0}; name one by its id")]
    Ambiguous(String),
    /// Already in [`GROUPS_MAX`] groups.
    #[error("in {GROUPS_MAX} groups already")]
    Full,
    /// The log refused.
    #[error(transparent)]
    Log(#[from] GroupError),
}

/// One of the groups shown to be ours, for a command (a pending one is not named).
fn ours_in(groups: &mut BTreeMap<GroupId, Joined>, group: GroupId) -> Result<&mut Joined, GroupsError> {
    groups.get_mut(&group).filter(|j| j.pending.is_none()).ok_or_else(|| GroupsError::Unknown(hex::encode(group)))
}

/// The groups part of a host core.
pub struct GroupsCore {
    me: String,
    /// Each group's copy of the user keys derives from it (the keys are not `Clone`).
    list_key: ListKey,
    rng: StdRng,
    groups: BTreeMap<GroupId, Joined>,
    linked: bool,
    /// The latest time an input brought.
    seen: Option<Instant>,
    out: VecDeque<GroupOut>,
    stats: GroupStats,
}

impl std::fmt::Debug for GroupsCore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GroupsCore").field("me", &self.me).field("groups", &self.groups.len()).finish_non_exhaustive()
    }
}

impl GroupsCore {
    /// The groups of `me`, whose user keys derive from `list_key`.
    pub fn new(me: &str, list_key: ListKey, rng: StdRng) -> Self {
        Self {
            me: me.to_ascii_lowercase(),
            list_key,
            rng,
            groups: BTreeMap::new(),
            linked: false,
            seen: None,
            out: VecDeque::new(),
            stats: GroupStats::default(),
        }
    }

    /// Counters.
    pub fn stats(&self) -> GroupStats {
        self.stats
    }

    /// The groups, by id, with their names once known.
    pub fn list(&mut self) -> Vec<(GroupId, String)> {
        self.ours().map(|(id, j)| (*id, j.group.state().name.clone())).collect()
    }

    /// The groups shown to be ours (not those still pending).
    fn ours(&mut self) -> impl Iterator<Item = (&GroupId, &mut Joined)> {
        self.groups.iter_mut().filter(|(_, j)| j.pending.is_none())
    }

    /// One of our groups (not one still pending).
    fn ours_get(&mut self, group: &GroupId) -> Option<&mut Joined> {
        ours_in(&mut self.groups, *group).ok()
    }

    /// How many groups are ours.
    fn ours_count(&self) -> usize {
        self.groups.values().filter(|j| j.pending.is_none()).count()
    }

    /// A group's members as its log has them now.
    pub fn members(&mut self, group: &GroupId) -> Option<BTreeSet<String>> {
        self.ours_get(group).map(|j| j.group.state().members.keys().cloned().collect())
    }

    /// `@NAME` of a group.
    pub fn find_name(&mut self, group: &GroupId) -> String {
        self.ours_get(group).map(|j| format!("@{}", j.group.state().name)).unwrap_or_default()
    }

    /// Finds a group by name (`@` before it optional) or by its id in hex.
    pub fn find(&mut self, name: &str) -> Result<GroupId, GroupsError> {
        let name = name.strip_prefix('@').unwrap_or(name);
        if let Ok(b) = hex::decode(name)
            && let Ok(id) = GroupId::try_from(b.as_slice())
            && self.ours_get(&id).is_some()
        {
            return Ok(id);
        }
        let found: Vec<GroupId> =
            self.ours().filter_map(|(id, j)| (j.group.state().name == name).then_some(*id)).collect();
        match found.as_slice() {
            [id] => Ok(*id),
            [] => Err(GroupsError::Unknown(name.to_owned())),
            _ => Err(GroupsError::Ambiguous(name.to_owned())),
        }
    }

    /// A group kept in the history's file (so shown ours when it was kept).
    fn joined(&mut self, group: GroupId) -> Option<&mut Joined> {
        if !self.groups.contains_key(&group) {
            if self.ours_count() >= GROUPS_MAX {
                return None;
            }
            self.groups.insert(group, Joined::new(Group::join(&self.me, UserKeys::derive(&self.list_key), group)));
        }
        self.groups.get_mut(&group)
    }

    /// A group `from`'s entry names that we do not have: held as pending, within the
    /// limits that keep a stranger from making us hold much.
    fn pending(&mut self, now: Instant, from: &str, group: GroupId) -> Option<&mut Joined> {
        let pending = self.groups.values().filter_map(|j| j.pending.as_ref());
        let (all, theirs) = pending.fold((0, 0), |(a, t), p| (a + 1, t + usize::from(p.from == from)));
        if all >= PENDING_MAX || theirs >= PENDING_PER_SENDER {
            return None;
        }
        let mut j = Joined::new(Group::join(&self.me, UserKeys::derive(&self.list_key), group));
        j.pending = Some(Pending { since: now, from: from.to_owned(), entries: Vec::new(), mails: Vec::new() });
        self.groups.insert(group, j);
        self.groups.get_mut(&group)
    }

    /// The logs kept in the history's file, read at start; entries arriving meanwhile
    /// were taken in already (the log takes entries in any order).
    pub fn load(&mut self, now: Instant, logs: Vec<(GroupId, Vec<Vec<u8>>)>) {
        let linked = self.linked;
        for (id, entries) in logs {
            let Some(j) = self.joined(id) else { break };
            for e in entries {
                if matches!(j.group.receive(&e), Ok(Inserted::Accepted { .. })) {
                    j.dirty = true;
                }
            }
            if linked {
                j.next_sync = Some(now);
            }
        }
    }

    // ---- commands -------------------------------------------------------------------

    /// Founds a group named `name`; its members are invited one by one with
    /// [`GroupsCore::invite`] as their keys are found, and nothing is sent until
    /// [`GroupsCore::found`].
    pub fn create(&mut self, now_ms: u64, name: &str) -> Result<GroupId, GroupsError> {
        if self.ours_count() >= GROUPS_MAX {
            return Err(GroupsError::Full);
        }
        let (g, entries) = Group::create(&self.me, UserKeys::derive(&self.list_key), name, now_ms, &mut self.rng)?;
        let id = g.id();
        let mut j = Joined::new(g);
        j.founding = true;
        self.groups.insert(id, j);
        self.distribute(id, entries, None, None);
        Ok(id)
    }

    /// The founding invites are written: the whole log goes to every member (and to us).
    pub fn found(&mut self, group: GroupId) {
        let me = self.me.clone();
        let Some(j) = self.groups.get_mut(&group).filter(|j| j.founding) else { return };
        j.founding = false;
        let log = j.group.export();
        let to: BTreeSet<String> = j.group.state().members.keys().cloned().chain([me]).collect();
        for body in bundle(log) {
            for m in &to {
                self.out.push_back(GroupOut::Send { to: m.clone(), group, payload: body.clone(), op: None });
            }
        }
    }

    /// Invites `member`, whose keys come from its signed index entry.
    pub fn invite(
        &mut self,
        now_ms: u64,
        group: GroupId,
        member: &str,
        keys: UserPublicKeys,
    ) -> Result<(), GroupsError> {
        let member = member.to_ascii_lowercase();
        let j = ours_in(&mut self.groups, group)?;
        if j.founding {
            let entries = j.group.invite(&member, keys, now_ms, &mut self.rng)?;
            self.distribute(group, entries, None, None);
            return Ok(());
        }
        // What the invitee needs to take the invite in: the log so far, which nobody sent
        // it (it was not a member). At most a round's worth; our Hello after it brings the
        // rest once the invitee answers.
        let mut before = j.group.export();
        let truncated = before.len() > ANSWER_ENTRIES_MAX;
        before.truncate(ANSWER_ENTRIES_MAX);
        if truncated {
            before.push(sync::hello(&mut j.group));
        }
        let entries = j.group.invite(&member, keys, now_ms, &mut self.rng)?;
        for payload in bundle(before) {
            self.out.push_back(GroupOut::Send { to: member.clone(), group, payload, op: None });
        }
        self.distribute(group, entries, None, None);
        Ok(())
    }

    /// Removes `member` (creator or admins only: the log's rules) and starts a new epoch.
    pub fn remove(&mut self, now_ms: u64, group: GroupId, member: &str) -> Result<(), GroupsError> {
        let member = member.to_ascii_lowercase();
        let j = ours_in(&mut self.groups, group)?;
        let entries = j.group.remove(&member, now_ms, &mut self.rng)?;
        // The removed member hears of it too (the new epoch's key is not sealed to it).
        self.distribute(group, entries, Some(member), None);
        Ok(())
    }

    /// Leaves the group.
    pub fn leave(&mut self, now_ms: u64, group: GroupId) -> Result<(), GroupsError> {
        let j = ours_in(&mut self.groups, group)?;
        let members: Vec<String> = j.group.state().members.keys().cloned().collect();
        let entry = j.group.leave(now_ms)?;
        // Sent to who were members before it: we are no longer one after it.
        self.keep(group, std::slice::from_ref(&entry));
        for to in members.into_iter().chain([self.me.clone()]).collect::<BTreeSet<_>>() {
            self.out.push_back(GroupOut::Send { to, group, payload: entry.clone(), op: None });
        }
        Ok(())
    }

    /// Sends a text; returns the entry's hash. The sends carry `op`.
    pub fn send_text(&mut self, now_ms: u64, group: GroupId, text: &str, op: u64) -> Result<EntryHash, GroupsError> {
        let j = ours_in(&mut self.groups, group)?;
        let entry = j.group.send(text, now_ms, &mut self.rng)?;
        let hash: EntryHash = sha2::Digest::finalize(<sha2::Sha256 as sha2::Digest>::new_with_prefix(&entry)).into();
        self.distribute(group, vec![entry], None, Some(op));
        Ok(hash)
    }

    /// Keeps our new entries and sends them to every member (and `also`) and to us.
    fn distribute(&mut self, group: GroupId, entries: Vec<Vec<u8>>, also: Option<String>, op: Option<u64>) {
        let Some(j) = self.groups.get_mut(&group) else { return };
        j.dirty = true;
        if j.founding {
            self.stats.accepted += entries.len() as u64;
            self.keep(group, &entries);
            return;
        }
        let mut to: BTreeSet<String> = j.group.state().members.keys().cloned().collect();
        to.extend(also);
        to.insert(self.me.clone());
        self.stats.accepted += entries.len() as u64;
        self.keep(group, &entries);
        for body in bundle(entries) {
            for m in &to {
                self.out.push_back(GroupOut::Send { to: m.clone(), group, payload: body.clone(), op });
            }
        }
    }

    fn keep(&mut self, group: GroupId, entries: &[Vec<u8>]) {
        self.out.push_back(GroupOut::Keep { group, entries: entries.to_vec(), ack: None });
    }

    // ---- receiving ------------------------------------------------------------------

    /// A body `from` sent in a verified message of `group` (`mail`: the store's id, to
    /// acknowledge once the entries it brought are kept).
    /// `buddy`: the sender is an authorized buddy, or this user (a group a stranger's
    /// payload makes ours counts against [`STRANGER_GROUPS_UNTIL`], not [`GROUPS_MAX`]).
    pub fn receive(
        &mut self,
        now: Instant,
        from: &str,
        group: GroupId,
        body: &[u8],
        mail: Option<MailId>,
        buddy: bool,
    ) {
        let from = from.to_ascii_lowercase();
        let mut keep = Vec::new();
        let mut no_room = false;
        match unbundle(body) {
            Some(parts) => {
                for p in parts {
                    if matches!(p.first(), Some(&ENTRY_VERSION)) && !self.room(now, &from, group, keep.len()) {
                        self.stats.refused += 1;
                        no_room = true;
                        continue;
                    }
                    self.receive_one(now, &from, group, p, &mut keep);
                }
            }
            None => self.stats.refused += 1,
        }
        if no_room && keep.is_empty() {
            // Not acknowledged: the store brings it again at the next login, when there
            // may be room (a flood of strangers' groups does not cost an invite).
            return;
        }
        let ours = self.ours_count();
        if let Some(j) = self.groups.get_mut(&group)
            && let Some(p) = j.pending.as_mut()
        {
            if keep.is_empty() {
                // Nothing it brought was worth holding.
                if p.entries.is_empty() {
                    self.groups.remove(&group);
                }
                if let Some(id) = mail {
                    self.out.push_back(GroupOut::Ack(id));
                }
                return;
            }
            // `room` let in no more than fits.
            p.entries.extend(keep);
            if !no_room {
                // A message part of which found no room comes again; the rest of it is
                // taken in again by hash then.
                p.mails.extend(mail);
            }
            if !j.group.ever_mine() {
                // Kept nowhere yet, and its messages not acknowledged: after a restart
                // the store brings them again.
                return;
            }
            if ours >= if buddy { GROUPS_MAX } else { STRANGER_GROUPS_UNTIL } {
                // No room: it stays pending (forgotten in time, its messages brought
                // again at the next login). Strangers' invites stop at half the groups a
                // user can be in, so they never crowd out a buddy's.
                self.stats.refused += 1;
                return;
            }
            let p = j.pending.take().expect("pending above");
            j.dirty = true;
            let mut mails = p.mails.into_iter();
            self.out.push_back(GroupOut::Keep { group, entries: p.entries, ack: mails.next() });
            self.out.extend(mails.map(GroupOut::Ack));
            return;
        }
        match (keep.is_empty(), mail) {
            (false, ack) => self.out.push_back(GroupOut::Keep { group, entries: keep, ack }),
            (true, Some(id)) => self.out.push_back(GroupOut::Ack(id)),
            (true, None) => {}
        }
    }

    /// Whether there is room to take in an entry of `group` from `from`: a group we have
    /// with room, or one to hold as pending.
    /// `queued`: entries of the same bundle already taken in (its messages are
    /// acknowledged whole or not at all).
    fn room(&mut self, now: Instant, from: &str, group: GroupId, queued: usize) -> bool {
        // An entry of a group we do not have is held in memory as pending until the log
        // makes us a member: anyone can sign entries under a group id of their own.
        let j = match self.groups.contains_key(&group) {
            true => self.groups.get_mut(&group),
            false => self.pending(now, from, group),
        };
        // None: too many pending groups (a stranger's flood).
        j.is_some_and(|j| j.pending.as_ref().is_none_or(|p| p.entries.len() + queued < PENDING_ENTRIES_MAX))
    }

    fn receive_one(&mut self, now: Instant, from: &str, group: GroupId, payload: &[u8], keep: &mut Vec<Vec<u8>>) {
        let me = self.me.clone();
        let Ok(p) = Payload::decode(payload) else {
            self.stats.refused += 1;
            return;
        };
        // Only an entry founds a copy of a group here: a Hello or a Want names what its
        // sender holds, and we hold nothing of an unknown group to answer with.
        if !matches!(p, Payload::Entry(_)) && !self.groups.contains_key(&group) {
            self.stats.refused += 1;
            return;
        }
        let Some(j) = self.groups.get_mut(&group) else { return };
        match p {
            Payload::Entry(bytes) => match j.group.receive(&bytes) {
                Ok(r) => {
                    match r {
                        Inserted::Accepted { released } => {
                            j.dirty = true;
                            self.stats.accepted += 1 + released as u64;
                        }
                        Inserted::MissingParents(_) | Inserted::UnknownAuthor => {
                            // Ask the sender for what led to it: a Hello brings every
                            // missing entry in one round, where Wants take one per level.
                            if from != me && j.hello_to.len() < HELLO_PEERS_MAX {
                                j.hello_to.insert(from.to_owned());
                            }
                        }
                        Inserted::Duplicate => {}
                    }
                    keep.push(bytes);
                }
                Err(e) => {
                    tracing::debug!(error = %e, "a group entry was refused");
                    self.stats.refused += 1;
                }
            },
            Payload::Hello { .. } | Payload::Want { .. } => {
                if from == me {
                    // Our own devices sync with other members, not with each other.
                    return;
                }
                if !j.group.state().members.contains_key(from) {
                    // The log is for its members: a stranger, or someone removed, asks in vain.
                    self.stats.refused += 1;
                    return;
                }
                let since = *j.answers_since.get_or_insert(now);
                if now.saturating_duration_since(since) >= Duration::from_secs(60) {
                    j.answers.clear();
                    j.answers_since = Some(now);
                }
                let n = j.answers.entry(from.to_owned()).or_default();
                if *n >= ANSWERS_PER_MINUTE {
                    self.stats.throttled += 1;
                    return;
                }
                *n += 1;
                match sync::handle(&mut j.group, payload) {
                    Ok(replies) => {
                        let (mut entries, mut hellos): (Vec<_>, Vec<_>) =
                            replies.into_iter().partition(|r| r.first() == Some(&ENTRY_VERSION));
                        if entries.len() > ANSWER_ENTRIES_MAX {
                            entries.truncate(ANSWER_ENTRIES_MAX);
                            // The peer's answer to our Hello asks for the next round.
                            if hellos.is_empty() {
                                hellos.push(sync::hello(&mut j.group));
                            }
                        }
                        self.stats.answered += entries.len() as u64;
                        // Our Hello last, so the peer answers it after taking in the rest.
                        entries.extend(hellos);
                        for payload in bundle(entries) {
                            self.out.push_back(GroupOut::Send { to: from.to_owned(), group, payload, op: None });
                        }
                    }
                    Err(e) => {
                        tracing::debug!(error = %e, "a group sync payload was refused");
                        self.stats.refused += 1;
                    }
                }
            }
        }
    }

    /// A payload for `to` could not be stored: sync with them once we can.
    pub fn send_failed(&mut self, group: GroupId, to: &str) {
        if to.eq_ignore_ascii_case(&self.me) {
            return;
        }
        if let Some(j) = self.groups.get_mut(&group)
            && j.missed.len() < HELLO_PEERS_MAX
        {
            j.missed.insert(to.to_ascii_lowercase());
        }
    }

    // ---- links and time -------------------------------------------------------------

    /// The link is up: every group syncs with one member.
    pub fn on_link_up(&mut self, now: Instant) {
        self.linked = true;
        for j in self.groups.values_mut() {
            j.next_sync = Some(now);
        }
    }

    /// The link ended.
    pub fn on_link_down(&mut self) {
        self.linked = false;
    }

    /// Does what is due: Hellos, the rekeyer's duty, texts to record. `now_ms` dates
    /// entries written.
    pub fn step(&mut self, now: Instant, now_ms: u64) {
        self.seen = Some(now);
        let before = self.groups.len();
        self.groups.retain(|_, j| j.pending.as_ref().is_none_or(|p| now < p.since + PENDING_FOR));
        self.stats.forgotten += (before - self.groups.len()) as u64;
        let ids: Vec<GroupId> = self.groups.keys().copied().collect();
        for id in ids {
            self.step_one(now, now_ms, id);
        }
    }

    fn step_one(&mut self, now: Instant, now_ms: u64, id: GroupId) {
        let me = self.me.clone();
        let Some(j) = self.groups.get_mut(&id) else { return };
        if j.pending.is_some() {
            // Its texts wait until it is ours (then it is dirty again).
            j.dirty = false;
        }
        if j.dirty {
            j.dirty = false;
            // The rekeyer hands out keys when someone left or a member lacks one.
            let is_member = j.group.state().members.contains_key(&me);
            if is_member {
                match j.group.maintain(now_ms, &mut self.rng) {
                    Ok(entries) if !entries.is_empty() => self.distribute(id, entries, None, None),
                    Ok(_) => {}
                    Err(e) => tracing::debug!(error = %e, "a group's upkeep failed"),
                }
            }
            let Some(j) = self.groups.get_mut(&id) else { return };
            let name = j.group.state().name.clone();
            let texts: Vec<GroupText> = j
                .group
                .history()
                .into_iter()
                .filter(|h| !j.shown.contains(&h.id))
                .filter_map(|h| {
                    let text = h.text?;
                    Some(GroupText { entry: h.id, mine: h.author == me, author: h.author, at_ms: h.at_ms, text })
                })
                .collect();
            // A log whose Create is still to come has no name yet: its texts wait.
            if !texts.is_empty() && !name.is_empty() {
                j.shown.extend(texts.iter().map(|t| t.entry));
                self.out.push_back(GroupOut::Show { group: id, name, texts });
            }
        }
        let Some(j) = self.groups.get_mut(&id) else { return };
        if !self.linked || j.founding {
            return;
        }
        if j.next_sync.is_none() {
            // Joined or founded while linked.
            j.next_sync = Some(now + SYNC_EVERY);
        }
        if j.next_sync.is_some_and(|t| t <= now) {
            j.next_sync = Some(now + SYNC_EVERY);
            let missed = std::mem::take(&mut j.missed);
            j.hello_to.extend(missed);
            // One other member, drawn at random: over a few rounds, news from anyone
            // reaches everyone.
            let members = &j.group.state().members;
            let others: Vec<String> = members.keys().filter(|m| **m != me).cloned().collect();
            // One who left or was removed has nobody to ask: members answer members only.
            if members.contains_key(&me) && !others.is_empty() {
                let i = rand::RngExt::random_range(&mut self.rng, 0..others.len());
                j.hello_to.insert(others[i].clone());
            }
        }
        if j.last_hello.is_some_and(|t| now < t + HELLO_GAP) {
            return;
        }
        if !j.hello_to.is_empty() {
            j.last_hello = Some(now);
            let payload = sync::hello(&mut j.group);
            for to in std::mem::take(&mut j.hello_to) {
                self.stats.hellos += 1;
                self.out.push_back(GroupOut::Send { to, group: id, payload: payload.clone(), op: None });
            }
        }
    }

    /// The next instant [`GroupsCore::step`] has something to do.
    pub fn poll_timeout(&self) -> Option<Instant> {
        if !self.linked {
            return None;
        }
        self.groups
            .values()
            // A group being founded syncs with nobody yet.
            .filter(|j| !j.founding)
            .filter_map(|j| {
                let hello =
                    (!j.hello_to.is_empty()).then(|| j.last_hello.map(|t| t + HELLO_GAP).or(self.seen)).flatten();
                let forget = j.pending.as_ref().map(|p| p.since + PENDING_FOR);
                [hello, j.next_sync, forget].into_iter().flatten().min()
            })
            .min()
    }

    /// Whether a step would do something now (a log changed).
    pub fn is_dirty(&self) -> bool {
        self.groups.values().any(|j| j.dirty)
    }

    /// The next thing for the chat part.
    pub fn poll_out(&mut self) -> Option<GroupOut> {
        self.out.pop_front()
    }
}

/// Runs a group effect on the history (the shells' one way of doing it): the kept logs
/// read, entries kept, texts recorded. Other effects are not the groups'.
pub fn group_effect(
    h: &mut crate::chat::history::History,
    e: super::chat::ChatEffect,
) -> super::chat::ChatEffectResult {
    use super::chat::{ChatEffect, ChatEffectResult};
    let s = |e: crate::chat::history::HistoryError| e.to_string();
    match e {
        ChatEffect::GroupLoad => ChatEffectResult::GroupLogs(
            h.group_logs().map(|l| l.into_iter().map(|(id, _, entries)| (id, entries)).collect()).map_err(s),
        ),
        ChatEffect::GroupKeep { group, entries } => {
            ChatEffectResult::Recorded(h.add_group_entries(&group, &entries).map(|n| n > 0).map_err(s))
        }
        ChatEffect::GroupRecord { group, texts } => {
            ChatEffectResult::GroupRecorded(h.record_group_texts(&group, &texts).map_err(s))
        }
        other => ChatEffectResult::Recorded(Err(format!("not a group effect: {other:?}"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    #[test]
    fn bundles_carry_their_parts_in_order_and_malformed_ones_are_refused() {
        let parts: Vec<Vec<u8>> = (0..20u8).map(|i| vec![ENTRY_VERSION; 100 + i as usize * 30]).collect();
        let bodies = bundle(parts.clone());
        assert!(bodies.len() > 1 && bodies.len() < parts.len(), "{} bodies", bodies.len());
        assert!(bodies.iter().all(|b| b.len() <= BUNDLE_BYTES_MAX));
        let back: Vec<Vec<u8>> = bodies.iter().flat_map(|b| unbundle(b).unwrap()).map(|p| p.to_vec()).collect();
        assert_eq!(back, parts);
        // One part travels as itself.
        assert_eq!(bundle(vec![vec![ENTRY_VERSION, 2]]), vec![vec![ENTRY_VERSION, 2]]);
        let good = bundle(vec![vec![1, 2], vec![1, 3]]).remove(0);
        assert_eq!(unbundle(&good).unwrap(), vec![&[1u8, 2][..], &[1, 3][..]]);
        for bad in [
            vec![BUNDLE],
            vec![BUNDLE, 0],
            good[..good.len() - 1].to_vec(),
            [good.clone(), vec![0]].concat(),
            vec![BUNDLE, 1, 0, 0],
            vec![BUNDLE, 1, 0, 1, BUNDLE],
            vec![ENTRY_VERSION; BUNDLE_BYTES_MAX + 1],
        ] {
            assert_eq!(unbundle(&bad), None, "{bad:?}");
        }
    }

    fn core(me: &str, k: u8) -> GroupsCore {
        GroupsCore::new(me, ListKey([k; 32]), StdRng::seed_from_u64(k as u64))
    }

    /// Moves every send between the cores until none is left; returns how many went.
    fn exchange(cores: &mut [&mut GroupsCore], now: Instant, drop_to: Option<&str>) -> usize {
        let mut n = 0;
        loop {
            let mut sends = Vec::new();
            for c in cores.iter_mut() {
                c.step(now, 1_000);
                let from = c.me.clone();
                while let Some(o) = c.poll_out() {
                    if let GroupOut::Send { to, group, payload, .. } = o {
                        sends.push((from.clone(), to, group, payload));
                    }
                }
            }
            if sends.is_empty() {
                return n;
            }
            for (from, to, group, payload) in sends {
                if drop_to == Some(to.as_str()) {
                    cores.iter_mut().find(|c| c.me == from).unwrap().send_failed(group, &to);
                    continue;
                }
                n += 1;
                if let Some(c) = cores.iter_mut().find(|c| c.me == to) {
                    c.receive(now, &from, group, &payload, None, true);
                }
            }
        }
    }

    fn texts(c: &mut GroupsCore, g: GroupId) -> Vec<(String, Option<String>)> {
        c.groups.get_mut(&g).unwrap().group.history().into_iter().map(|h| (h.author, h.text)).collect()
    }

    #[test]
    fn a_member_whose_payloads_were_lost_catches_up_by_sync_when_linked_again() {
        let t0 = Instant::now();
        let (mut a, mut b, mut c) = (core("alice", 1), core("bob", 2), core("carol", 3));
        for x in [&mut a, &mut b, &mut c] {
            x.on_link_up(t0);
        }
        let g = a.create(1_000, "team").unwrap();
        for (m, k) in [("bob", &b), ("carol", &c)] {
            let keys = UserKeys::derive(&k.list_key).public();
            a.invite(1_000, g, m, keys).unwrap();
        }
        a.found(g);
        exchange(&mut [&mut a, &mut b, &mut c], t0, None);
        assert_eq!(b.find("@team"), Ok(g));
        // Carol's link is gone: what is sent to her is lost (the store refused it).
        c.on_link_down();
        a.send_text(2_000, g, "one", 1).unwrap();
        b.send_text(2_001, g, "two", 2).unwrap();
        exchange(&mut [&mut a, &mut b, &mut c], t0, Some("carol"));
        assert_eq!(texts(&mut c, g).len(), 0);
        // Back: her Hello (a Hello after the payloads missed her) brings them.
        let later = t0 + SYNC_EVERY;
        c.on_link_up(later);
        exchange(&mut [&mut a, &mut b, &mut c], later, None);
        let want = vec![("alice".to_string(), Some("one".to_string())), ("bob".to_string(), Some("two".to_string()))];
        assert_eq!(texts(&mut c, g), want);
        assert_eq!(texts(&mut a, g), want);
        assert!(c.stats().hellos > 0);
    }

    #[test]
    fn invitees_read_the_group_with_its_creator_gone_after_writing() {
        let t0 = Instant::now();
        let (mut a, mut b, mut c) = (core("alice", 1), core("bob", 2), core("carol", 3));
        let g = a.create(1_000, "team").unwrap();
        // Founded alone; then each invite carries the log so far to its invitee.
        a.found(g);
        for (m, k) in [("bob", &b), ("carol", &c)] {
            let keys = UserKeys::derive(&k.list_key).public();
            a.invite(1_000, g, m, keys).unwrap();
        }
        a.send_text(2_000, g, "hello", 1).unwrap();
        // Nothing reaches alice any more: what she sent is all the others get.
        exchange(&mut [&mut a, &mut b, &mut c], t0, Some("alice"));
        for x in [&mut b, &mut c] {
            assert_eq!(x.find("@team"), Ok(g));
            assert_eq!(texts(x, g), vec![("alice".to_string(), Some("hello".to_string()))]);
        }
    }

    #[test]
    fn only_members_are_answered() {
        let t0 = Instant::now();
        let (mut a, mut b, mut s) = (core("alice", 1), core("bob", 2), core("stranger", 4));
        let g = a.create(1_000, "team").unwrap();
        a.invite(1_000, g, "bob", UserKeys::derive(&b.list_key).public()).unwrap();
        a.found(g);
        while a.poll_out().is_some() {}
        // An empty copy's Hello asks for everything.
        let hello = |c: &mut GroupsCore| sync::hello(&mut c.joined(g).unwrap().group);
        let (hb, hs) = (hello(&mut b), hello(&mut s));
        let sends = |a: &mut GroupsCore| {
            std::iter::from_fn(|| a.poll_out()).filter(|o| matches!(o, GroupOut::Send { .. })).count()
        };
        a.receive(t0, "stranger", g, &hs, None, false);
        assert_eq!(sends(&mut a), 0, "a stranger gets nothing");
        a.receive(t0, "bob", g, &hb, None, true);
        assert!(sends(&mut a) > 0, "a member gets the log");
    }

    #[test]
    fn a_removed_member_and_one_who_left_cannot_read_what_follows() {
        let t0 = Instant::now();
        let (mut a, mut b, mut c) = (core("alice", 1), core("bob", 2), core("carol", 3));
        let g = a.create(1_000, "team").unwrap();
        for (m, k) in [("bob", &b), ("carol", &c)] {
            a.invite(1_000, g, m, UserKeys::derive(&k.list_key).public()).unwrap();
        }
        a.found(g);
        a.send_text(2_000, g, "all of us", 1).unwrap();
        exchange(&mut [&mut a, &mut b, &mut c], t0, None);
        // Only the creator and admins remove.
        assert!(matches!(b.remove(3_000, g, "carol"), Err(GroupsError::Log(GroupError::NotAdmin))));
        a.remove(3_000, g, "carol").unwrap();
        a.send_text(4_000, g, "without carol", 2).unwrap();
        exchange(&mut [&mut a, &mut b, &mut c], t0, None);
        assert_eq!(c.members(&g).unwrap(), ["alice".to_string(), "bob".to_string()].into());
        let said = |x: &mut GroupsCore| texts(x, g).into_iter().map(|(_, t)| t).collect::<Vec<_>>();
        assert_eq!(said(&mut b), [Some("all of us".to_string()), Some("without carol".to_string())]);
        // Carol hears of her removal, and of nothing after it.
        assert_eq!(said(&mut c), [Some("all of us".to_string())]);
        // Bob leaves; alice (the rekeyer) starts a new epoch when she sees it.
        let epoch = |x: &mut GroupsCore| x.groups.get_mut(&g).unwrap().group.state().epoch;
        let before = epoch(&mut a);
        b.leave(5_000, g).unwrap();
        exchange(&mut [&mut a, &mut b, &mut c], t0, None);
        assert_eq!(epoch(&mut a), before + 1, "a new epoch after the leave");
        a.send_text(6_000, g, "alone", 3).unwrap();
        exchange(&mut [&mut a, &mut b, &mut c], t0, None);
        assert_eq!(said(&mut a).last(), Some(&Some("alone".to_string())));
        assert!(!said(&mut b).contains(&Some("alone".to_string())), "bob left before it");

        assert!(matches!(b.send_text(7_000, g, "still here?", 4), Err(GroupsError::Log(GroupError::NotMember))));
    }

    #[test]
    fn a_group_of_a_hundred_is_founded_by_sending_each_member_the_whole_log_once() {
        let t0 = Instant::now();
        let mut a = core("alice", 1);
        let mut others: Vec<GroupsCore> = (0..99).map(|i| core(&format!("member{i:02}"), 10 + i as u8)).collect();
        let g = a.create(1_000, "big").unwrap();
        for o in &others {
            a.invite(1_000, g, &o.me.clone(), UserKeys::derive(&o.list_key).public()).unwrap();
        }
        let written = std::iter::from_fn(|| a.poll_out()).filter(|o| matches!(o, GroupOut::Send { .. })).count();
        assert_eq!(written, 0, "nothing goes out while the group is being founded");
        // A link coming up meanwhile sets no timer for it (one due now would spin).
        a.on_link_up(t0);
        a.step(t0, 1_000);
        assert_eq!(a.poll_timeout(), None);
        a.found(g);
        let log = a.groups.get_mut(&g).unwrap().group.export();
        assert_eq!(log.len(), 2 + 2 * others.len(), "the Create, its key, an invite and a key page each");
        let sends: Vec<GroupOut> =
            std::iter::from_fn(|| a.poll_out()).filter(|o| matches!(o, GroupOut::Send { .. })).collect();
        assert_eq!(sends.len(), (others.len() + 1) * bundle(log).len());
        for o in sends {
            if let GroupOut::Send { to, payload, .. } = o
                && let Some(m) = others.iter_mut().find(|m| m.me == to)
            {
                m.receive(t0, "alice", g, &payload, None, true);
            }
        }
        a.send_text(2_000, g, "all here", 1).unwrap();
        let mut all: Vec<&mut GroupsCore> = std::iter::once(&mut a).chain(others.iter_mut()).collect();
        exchange(&mut all, t0, None);
        for m in &mut others {
            assert_eq!(texts(m, g), vec![("alice".to_string(), Some("all here".to_string()))], "{}", m.me);
        }
    }

    /// What `c` put out: (entries kept, messages acknowledged).
    fn kept_and_acked(c: &mut GroupsCore) -> (usize, Vec<MailId>) {
        let (mut kept, mut acked) = (0, Vec::new());
        while let Some(o) = c.poll_out() {
            match o {
                GroupOut::Keep { entries, ack, .. } => {
                    kept += entries.len();
                    acked.extend(ack);
                }
                GroupOut::Ack(id) => acked.push(id),
                _ => {}
            }
        }
        (kept, acked)
    }

    #[test]
    fn a_strangers_groups_that_never_name_us_are_held_in_memory_only_and_forgotten() {
        let t0 = Instant::now();
        let mut bob = core("bob", 2);
        bob.on_link_up(t0);
        let mut mallory = core("mallory", 9);
        let mut offered = 0;
        for i in 0..40u8 {
            // Well-formed, signed logs of groups of mallory's own, without bob in them.
            let g = mallory.create(1_000 + u64::from(i), &format!("junk{i}")).unwrap();
            mallory.found(g);
            for body in bundle(mallory.groups.get_mut(&g).unwrap().group.export()) {
                bob.receive(t0, "mallory", g, &body, Some([i; 16]), false);
                offered += 1;
            }
        }
        assert!(offered >= 40);
        let (kept, acked) = kept_and_acked(&mut bob);
        assert_eq!(kept, 0, "nothing of them reaches the history's file");
        assert!(acked.is_empty(), "their messages wait in the store: {acked:?}");
        assert!(bob.list().is_empty());
        assert_eq!(bob.groups.len(), PENDING_PER_SENDER, "one sender holds at most this many");
        assert!(bob.stats().refused >= 38);
        // Bytes that are no entry hold nothing, and their message is done with.
        bob.receive(t0, "eve", [7; 16], &[ENTRY_VERSION, 0, 0], Some([99; 16]), false);
        assert_eq!(bob.groups.len(), PENDING_PER_SENDER);
        assert_eq!(kept_and_acked(&mut bob), (0, vec![[99; 16]]));
        // Another sender still gets a pending slot of its own.
        let mut carol = core("carol", 3);
        let g = carol.create(5_000, "carols").unwrap();
        carol.found(g);
        for body in bundle(carol.groups.get_mut(&g).unwrap().group.export()) {
            bob.receive(t0, "carol", g, &body, None, false);
        }
        assert_eq!(bob.groups.len(), PENDING_PER_SENDER + 1);
        // Then forgotten, all of them, without a trace on disk.
        let later = t0 + PENDING_FOR;
        assert_eq!(bob.poll_timeout().map(|t| t <= later), Some(true), "a deadline to forget them");
        bob.step(later, 2_000);
        assert!(bob.groups.is_empty());
        assert_eq!(bob.stats().forgotten, PENDING_PER_SENDER as u64 + 1);
        assert_eq!(kept_and_acked(&mut bob).0, 0);
        // A log naming nobody can be found again, but is still not ours.
        assert_eq!(bob.find("@junk0"), Err(GroupsError::Unknown("junk0".into())));
    }

    #[test]
    fn an_invite_whose_create_comes_last_is_kept_with_all_its_messages_acknowledged_once_it_names_us() {
        let t0 = Instant::now();
        let (mut a, mut b) = (core("alice", 1), core("bob", 2));
        let g = a.create(1_000, "team").unwrap();
        a.invite(1_000, g, "bob", UserKeys::derive(&b.list_key).public()).unwrap();
        a.found(g);
        std::iter::from_fn(|| a.poll_out()).for_each(drop);
        let log = a.groups.get_mut(&g).unwrap().group.export();
        assert!(log.len() >= 4);
        // Entry by entry, the Create last: until then the log names nobody.
        for (i, e) in log.iter().enumerate().rev() {
            b.receive(t0, "alice", g, e, Some([i as u8; 16]), true);
            let (kept, acked) = kept_and_acked(&mut b);
            if i > 0 {
                assert_eq!((kept, acked.len()), (0, 0), "entry {i}: not ours yet");
                assert!(b.list().is_empty());
            } else {
                assert_eq!(kept, log.len(), "every entry kept at once");
                let mut acked = acked;
                acked.sort();
                assert_eq!(acked, (0..log.len()).map(|i| [i as u8; 16]).collect::<Vec<_>>());
            }
        }
        assert_eq!(b.find("@team"), Ok(g));
        a.send_text(2_000, g, "hi", 1).unwrap();
        exchange(&mut [&mut a, &mut b], t0, None);
        assert_eq!(texts(&mut b, g), vec![("alice".to_string(), Some("hi".to_string()))]);
    }

    #[test]
    fn a_strangers_invite_stops_at_half_the_groups_a_buddys_does_not() {
        let t0 = Instant::now();
        let (mut a, mut b) = (core("alice", 1), core("bob", 2));
        for i in 0..STRANGER_GROUPS_UNTIL {
            b.create(1_000, &format!("own{i}")).unwrap();
        }
        std::iter::from_fn(|| b.poll_out()).for_each(drop);
        let g = a.create(1_000, "team").unwrap();
        a.invite(1_000, g, "bob", UserKeys::derive(&b.list_key).public()).unwrap();
        a.found(g);
        let bodies = bundle(a.groups.get_mut(&g).unwrap().group.export());
        for body in &bodies {
            b.receive(t0, "alice", g, body, Some([1; 16]), false);
        }
        assert_eq!(kept_and_acked(&mut b), (0, vec![]), "a stranger's invite waits");
        assert!(b.find("@team").is_err());
        // The same from a buddy: ours.
        for body in &bodies {
            b.receive(t0, "alice", g, body, Some([2; 16]), true);
        }
        let (kept, acked) = kept_and_acked(&mut b);
        assert!(kept > 0, "{kept} kept");
        assert!(acked.contains(&[1; 16]) && acked.contains(&[2; 16]), "every message that brought it: {acked:?}");
        assert_eq!(b.find("@team"), Ok(g));
    }

    proptest::proptest! {
        #[test]
        fn unbundle_is_total_and_bundle_round_trips(
            junk in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..2000),
            parts in proptest::collection::vec(proptest::collection::vec(proptest::prelude::any::<u8>(), 1..ENTRY_BYTES_MAX), 1..12),
        ) {
            let _ = unbundle(&junk);
            let mut bundled = junk.clone();
            bundled.insert(0, BUNDLE);
            let _ = unbundle(&bundled);
            // Payloads never start with the bundle byte (the log's kinds are 1, 0x10, 0x11).
            let parts: Vec<Vec<u8>> = parts.into_iter().map(|mut p| { p[0] = ENTRY_VERSION; p }).collect();
            let bodies = bundle(parts.clone());
            let back: Vec<Vec<u8>> = bodies.iter().flat_map(|b| unbundle(b).expect("a bundle decodes")).map(<[u8]>::to_vec).collect();
            proptest::prop_assert_eq!(back, parts);
        }
    }
}
