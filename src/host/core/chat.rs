//! Chat in the host core: 1:1 messages sealed to the recipient's user keys, sent through
//! the message store, received as pushes or fetched pages, written to the history by the
//! shell, acknowledged to the store only once written (`docs/chat.md`).
//!
//! Sans-IO like the other parts: requests to the super node go out as `(tag, Request)`,
//! history writes as [`ChatEffect`]s whose results come back, time comes with every input.
//!
//! # Exactly once per device
//!
//! The store hands a message to this device until the device acknowledges it; the device
//! acknowledges only what the history has (written, or found there already: a repeat by
//! sender, sender device, conversation and sequence number). A crash between the write and
//! the acknowledgement brings the message again, and the history drops it as a repeat.

mod lookup_keys;

use super::Now;
use super::groups::{GroupOut, GroupsCore, GroupsError};
use super::pending::{Answer, OpResult, Request};
use crate::buddy::op::Relation;
use crate::chat::group::log::GroupId;
use crate::chat::history::GroupText;
use crate::chat::message::{self, Body, Conversation, Inner, Message, ReceiptKind, Sealed, Unverified, own_copy_id};
use crate::crypto::TrustedKeys;
use crate::crypto::user::{DeviceId, UserKeys, UserPublicKeys};
use crate::host::HostError;
use crate::index::Entry;
use crate::wire::ErrorCode;
use crate::wire::mail::{ACK_IDS_MAX, MailId};
use lookup_keys::KeysFrom;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::collections::{BTreeMap, VecDeque};
use std::time::{Duration, Instant};

/// How often the store is asked for what waits, besides at every new link (a push is a
/// hint: one lost on the way is fetched here).
pub const FETCH_EVERY: Duration = Duration::from_secs(60);
/// How long acknowledgements gather before they go (at most [`ACK_IDS_MAX`] at once).
pub const ACK_DELAY: Duration = Duration::from_millis(200);
/// Most users whose keys are remembered.
pub const KEYS_MAX: usize = 4096;
/// Most received messages held while the buddy list is being read.
const WAITING_FOR_LIST_MAX: usize = 1024;
/// Most received messages held while their sender's keys are looked up.
pub const HELD_MAX: usize = 256;
/// Most sends in progress at once.
pub const SENDS_MAX: usize = 1024;
/// Most group payloads being sent at once; the rest wait their turn (a group of a
/// hundred fans one entry out into a hundred messages, and a request queue overflows).
pub const GROUP_SENDS_WINDOW: usize = 256;
/// Most group payloads waiting their turn; beyond it a payload is dropped and its member
/// gets it by sync.
pub const GROUP_BACKLOG_MAX: usize = 16_384;

/// What a send became.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum SendStatus {
    /// The store holds it and pushed it to a session of the recipient at once.
    Delivered,
    /// The store holds it for when the recipient comes back.
    Stored,
}

/// A finished send.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sent {
    /// The message's id.
    pub id: MailId,
    /// The recipient.
    pub to: String,
    /// Where it stands.
    pub status: SendStatus,
}

/// History work for the shell (`chat::history`, a SQLite file in the home folder).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ChatEffect {
    /// The next sequence number of a conversation on this device; answered by
    /// [`ChatEffectResult::Seq`].
    NextSeq {
        /// The conversation, as we see it.
        conversation: Conversation,
    },
    /// Write a received message (or our own copy of one another device sent, or a
    /// receipt); answered by [`ChatEffectResult::Recorded`].
    Record {
        /// The verified message.
        message: Message,
    },
    /// Write a message we sent, the store having taken it (`inner` as we see it); no
    /// answer.
    Sent {
        /// The id of the recipient's copy (what receipts name).
        id: MailId,
        /// The message.
        inner: Inner,
        /// Where it stands.
        status: SendStatus,
    },
    /// Read every group log kept (once, at start); answered by
    /// [`ChatEffectResult::GroupLogs`].
    GroupLoad,
    /// Keep entries of a group's log; answered by [`ChatEffectResult::Recorded`] (true
    /// when any was new).
    GroupKeep {
        /// The group.
        group: GroupId,
        /// The entries' bytes.
        entries: Vec<Vec<u8>>,
    },
    /// Record group texts; answered by [`ChatEffectResult::GroupRecorded`].
    GroupRecord {
        /// The group.
        group: GroupId,
        /// The texts, in the log's order.
        texts: Vec<GroupText>,
    },
    /// Read the peers' keys kept; answered by [`ChatEffectResult::Keys`].
    KeysLoad,
    /// Keep a peer's keys (learned from their signed index entry); no answer.
    KeysKeep {
        /// The peer.
        user: String,
        /// Their keys.
        keys: UserPublicKeys,
    },
}

impl ChatEffect {
    /// Whether the shell answers it (the core remembers who waits only for those).
    pub fn answers(&self) -> bool {
        !matches!(self, ChatEffect::Sent { .. } | ChatEffect::KeysKeep { .. })
    }
}

/// A group's id and the bytes of the entries kept of its log.
pub type GroupEntries = (GroupId, Vec<Vec<u8>>);

/// What the shell reports back for an effect that asks for an answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ChatEffectResult {
    /// The sequence number drawn.
    Seq(Result<u64, String>),
    /// Written: `true` when new, `false` when the history had it already.
    Recorded(Result<bool, String>),
    /// The group logs kept: each group's entries.
    GroupLogs(Result<Vec<GroupEntries>, String>),
    /// Group texts written: for each, whether it was new.
    GroupRecorded(Result<Vec<bool>, String>),
    /// The peers' keys kept.
    Keys(Result<Vec<(String, UserPublicKeys)>, String>),
}

/// Something for the application.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ChatEvent {
    /// A new message (a receipt included), written to the history.
    Message {
        /// The store's id.
        id: MailId,
        /// The message.
        message: Box<Message>,
        /// From someone who is not an authorized buddy: a message request, answered by
        /// adding them as a buddy (no receipts go back until then).
        request: bool,
    },
    /// A message could not be opened or verified and was dropped (and acknowledged, so the
    /// store does not bring it again).
    Refused {
        /// Why, for metrics.
        reason: &'static str,
    },
    /// A new group text, written to the history.
    Group {
        /// The group.
        group: GroupId,
        /// Its name.
        name: String,
        /// The text.
        text: GroupText,
    },
}

/// A group command (`docs/chat.md` §5).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GroupCommand {
    /// Founds a group and invites `members`.
    Create {
        /// The group's name.
        name: String,
        /// Who is invited.
        members: Vec<String>,
    },
    /// Sends a text to a group (by name or id).
    Send {
        /// The group.
        group: String,
        /// The text.
        text: String,
    },
    /// Invites a member.
    Invite {
        /// The group.
        group: String,
        /// Whom.
        member: String,
    },
    /// Removes a member (creator and admins).
    Remove {
        /// The group.
        group: String,
        /// Whom.
        member: String,
    },
    /// Leaves a group.
    Leave {
        /// The group.
        group: String,
    },
}

/// A group command under way: it completes once its invites are written and the store
/// answered for its sends.
#[derive(Debug)]
struct GroupOp {
    /// What the completion names: the group's id, or a text's.
    id: MailId,
    /// `@NAME`.
    to: String,
    invites_left: usize,
    /// Whether it completes with its sends (a text) or with its invites.
    with_sends: bool,
    sends: usize,
    sends_left: usize,
    stored: usize,
    pushed_all: bool,
    /// Members who could not be invited, and why.
    failed: Vec<String>,
    /// The group it founds: the log goes out once the invites are written.
    founding: Option<GroupId>,
}

impl GroupOp {
    fn new(id: MailId, to: String, invites: usize, with_sends: bool) -> Self {
        Self {
            id,
            to,
            invites_left: invites,
            with_sends,
            sends: 0,
            sends_left: 0,
            stored: 0,
            pushed_all: true,
            failed: Vec::new(),
            founding: None,
        }
    }
}

/// Counters.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ChatStats {
    /// Messages written as new.
    pub received: u64,
    /// Messages the history had already.
    pub repeats: u64,
    /// Messages refused (malformed, not for us, bad seal or signature).
    pub refused: u64,
    /// Messages held back: their sender's keys could not be had.
    pub unverified: u64,
    /// Sends taken by the store.
    pub sent: u64,
    /// Sends refused or failed.
    pub send_failed: u64,
    /// Messages from users we blocked, dropped.
    pub blocked: u64,
    /// Messages from strangers (not authorized buddies), kept as message requests.
    pub requests: u64,
    /// Group payloads received (each in one message).
    pub group_payloads: u64,
    /// Lookups whose keys came from the login server's directory (no entry had them).
    pub keys_from_directory: u64,
}

/// What the chat part needs to know.
#[derive(Debug, Clone)]
pub struct ChatConfig {
    /// Our username.
    pub me: String,
    /// This device (what the store knows it by).
    pub device: DeviceId,
    /// The stream this device numbers its messages in (its key and its history's epoch).
    pub stream: DeviceId,
    /// The login servers' keys (to check entries carrying others' user keys).
    pub trusted: TrustedKeys,
    /// What the user keys derive from (the groups' logs each hold a copy of the keys).
    pub list_key: crate::crypto::password::ListKey,
}

/// What a request was for.
#[derive(Debug, Clone)]
enum ReqFor {
    /// The store's answer to a send (`copy`: our own copy, for our other devices).
    Submit { send: u64, copy: bool },
    /// A lookup of `user`'s keys.
    Keys { user: String },
    /// A page of stored messages.
    Fetch,
    /// Acknowledgements.
    Ack { ids: Vec<MailId> },
}

/// A send in progress.
#[derive(Debug)]
struct Sending {
    op: u64,
    to: String,
    body: Body,
    id: MailId,
    /// Drawn by the history; None until then.
    seq: Option<u64>,
    sent_at_ms: u64,
    /// Waiting for the recipient's keys.
    waiting_keys: bool,
    /// A group's payload (the conversation is the group's for both sides; no own copy).
    group: Option<GroupId>,
}

/// What an effect's answer is for.
#[derive(Debug)]
enum EffectFor {
    /// A send's sequence number.
    Seq(u64),
    /// A received message, and whom to send a delivery receipt.
    Record(Box<Message>, Option<String>),
    /// The group logs kept.
    GroupLoad,
    /// The peers' keys kept.
    KeysLoad,
    /// Group entries kept; the message that brought them, to acknowledge.
    GroupKept(Option<MailId>),
    /// Group texts recorded.
    GroupShown(GroupId, String, Vec<GroupText>),
}

/// The chat part of a host core.
pub struct ChatCore {
    cfg: ChatConfig,
    keys: UserKeys,
    rng: StdRng,
    known: BTreeMap<String, UserPublicKeys>,
    next_tag: u64,
    out: BTreeMap<u64, ReqFor>,
    sends: BTreeMap<u64, Sending>,
    /// Users whose keys are being looked up.
    looking: BTreeMap<String, u64>,
    /// Received messages waiting for their sender's keys.
    held: VecDeque<(MailId, Unverified)>,
    /// Effects waiting for their answer.
    effects_out: BTreeMap<u64, EffectFor>,
    acks: Vec<MailId>,
    ack_at: Option<Instant>,
    linked: bool,
    fetching: bool,
    fetch_after: Option<MailId>,
    fetch_at: Option<Instant>,
    requests: VecDeque<(u64, Request)>,
    effects: VecDeque<(u64, ChatEffect)>,
    events: VecDeque<ChatEvent>,
    completions: VecDeque<(u64, Result<Sent, HostError>)>,
    stats: ChatStats,
    /// How we stand with each user on the buddy list (lowercase names).
    contacts: BTreeMap<String, Relation>,
    /// Users whose keys this session has handed to the history to keep.
    kept: std::collections::BTreeSet<String>,
    /// Whether the buddy list has been read: until then nobody is known to be a buddy,
    /// a stranger or blocked, and received messages wait here (unacknowledged).
    contacts_known: bool,
    waiting_for_list: VecDeque<(MailId, Message)>,
    groups: GroupsCore,
    /// Group commands wait until the kept logs are read.
    groups_loaded: bool,
    group_cmds: Vec<(u64, GroupCommand)>,
    group_ops: BTreeMap<u64, GroupOp>,
    /// Invites waiting for the invitee's keys: (command, group, member).
    invites: Vec<(u64, GroupId, String)>,
    /// The latest time an input brought (group work is done when outputs are taken).
    seen: Option<Now>,
    /// Group payloads waiting for room in [`GROUP_SENDS_WINDOW`]: (command, to, group, payload).
    group_backlog: VecDeque<(u64, String, GroupId, Vec<u8>)>,
}

impl std::fmt::Debug for ChatCore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChatCore").field("me", &self.cfg.me).field("stats", &self.stats).finish_non_exhaustive()
    }
}

impl ChatCore {
    /// A chat part for `cfg.me`, whose user keys are `keys`.
    pub fn new(cfg: ChatConfig, keys: UserKeys, mut rng: StdRng) -> Self {
        let mut known = BTreeMap::new();
        known.insert(cfg.me.to_ascii_lowercase(), keys.public());
        let groups_rng = StdRng::seed_from_u64(rng.next_u64());
        let groups = GroupsCore::new(&cfg.me, cfg.list_key.clone(), groups_rng);
        let mut effects_out = BTreeMap::new();
        effects_out.insert(1, EffectFor::GroupLoad);
        effects_out.insert(2, EffectFor::KeysLoad);
        Self {
            cfg,
            keys,
            rng,
            known,
            next_tag: 3,
            out: BTreeMap::new(),
            sends: BTreeMap::new(),
            looking: BTreeMap::new(),
            held: VecDeque::new(),
            effects_out,
            acks: Vec::new(),
            ack_at: None,
            linked: false,
            fetching: false,
            fetch_after: None,
            fetch_at: None,
            requests: VecDeque::new(),
            effects: [(1, ChatEffect::GroupLoad), (2, ChatEffect::KeysLoad)].into(),
            events: VecDeque::new(),
            completions: VecDeque::new(),
            stats: ChatStats::default(),
            contacts: BTreeMap::new(),
            kept: std::collections::BTreeSet::new(),
            contacts_known: false,
            waiting_for_list: VecDeque::new(),
            groups,
            groups_loaded: false,
            group_cmds: Vec::new(),
            group_ops: BTreeMap::new(),
            invites: Vec::new(),
            seen: None,
            group_backlog: VecDeque::new(),
        }
    }

    /// Counters.
    pub fn stats(&self) -> ChatStats {
        self.stats
    }

    fn tag(&mut self) -> u64 {
        let t = self.next_tag;
        self.next_tag += 1;
        t
    }

    fn request(&mut self, why: ReqFor, r: Request) {
        let tag = self.tag();
        self.out.insert(tag, why);
        self.requests.push_back((tag, r));
    }

    // ---- keys ---------------------------------------------------------------------

    /// Learns a user's keys from an entry already verified (a buddy's presence, a lookup).
    pub fn learn_entry(&mut self, now: Now, e: &Entry) {
        self.seen = Some(now);
        if let Some(k) = e.user_keys {
            self.learn(now, &e.user, k);
        }
    }

    fn learn(&mut self, now: Now, user: &str, k: UserPublicKeys) {
        let user = user.to_ascii_lowercase();
        let me = self.cfg.me.to_ascii_lowercase();
        if self.known.len() >= KEYS_MAX && !self.known.contains_key(&user) {
            // Anyone but ourselves, a buddy, or someone a send waits for may go; the first
            // in name order is as good as any.
            let victim = self
                .known
                .keys()
                .find(|u| {
                    **u != me
                        && self.relation(u) != Some(Relation::Authorized)
                        && !self.sends.values().any(|s| s.to == **u)
                })
                .cloned();
            if let Some(v) = victim {
                self.known.remove(&v);
            }
        }
        let changed = self.known.insert(user.clone(), k) != Some(k);
        // Kept on disk, so a message can still be sealed to them once their entries are
        // gone: a buddy's (once a session, so their turn in the table stays fresh) or
        // someone we write to; not every stranger who wrote to us.
        let buddy = self.relation(&user) == Some(Relation::Authorized);
        let writing_to = self.sends.values().any(|s| s.to == user);
        if user != me && (buddy || writing_to) && (changed || self.kept.insert(user.clone())) {
            self.kept.insert(user.clone());
            self.effects.push_back((0, ChatEffect::KeysKeep { user: user.clone(), keys: k }));
        }
        self.keys_arrived(now, &user);
    }

    fn keys_of(&self, user: &str) -> Option<UserPublicKeys> {
        self.known.get(&user.to_ascii_lowercase()).copied()
    }

    /// Looks `user` up for their keys, once at a time.
    fn look_up(&mut self, user: &str) {
        let user = user.to_ascii_lowercase();
        if self.looking.contains_key(&user) {
            return;
        }
        let tag = self.tag();
        self.looking.insert(user.clone(), tag);
        self.out.insert(tag, ReqFor::Keys { user: user.clone() });
        self.requests.push_back((tag, Request::Find { user }));
    }

    /// Keys for `user` arrived: the sends and messages waiting for them go on.
    fn keys_arrived(&mut self, now: Now, user: &str) {
        let waiting: Vec<u64> = self
            .sends
            .iter()
            .filter(|(_, s)| s.waiting_keys && s.to.eq_ignore_ascii_case(user))
            .map(|(t, _)| *t)
            .collect();
        for t in waiting {
            match self.sends.get_mut(&t) {
                // A 1:1 message is numbered once it can be sealed.
                Some(s) if s.seq.is_none() => {
                    s.waiting_keys = false;
                    let conversation = Conversation::User(s.to.clone());
                    self.number(t, conversation);
                }
                _ => self.submit(now, t),
            }
        }
        self.invites_ready(now, user);
        let (ready, rest): (Vec<_>, Vec<_>) =
            std::mem::take(&mut self.held).into_iter().partition(|(_, u)| u.from().eq_ignore_ascii_case(user));
        self.held = rest.into();
        for (id, u) in ready {
            self.verify(now, id, u);
        }
    }

    /// A lookup for keys came back empty or failed: what waited for them gives up.
    fn keys_failed(&mut self, user: &str, why: &str) {
        if self.keys_of(user).is_some() {
            // Kept keys came in from the history meanwhile: what waited goes on with them.
            if let Some(now) = self.seen {
                self.keys_arrived(now, &user.to_ascii_lowercase());
                return;
            }
        }
        let failed: Vec<u64> = self
            .sends
            .iter()
            .filter(|(_, s)| s.waiting_keys && s.to.eq_ignore_ascii_case(user))
            .map(|(t, _)| *t)
            .collect();
        for t in failed {
            let s = self.sends.remove(&t).expect("listed just above");
            self.stats.send_failed += 1;
            if let Some(g) = s.group {
                self.groups.send_failed(g, &s.to);
                self.group_sent(s.op, &s.to, None);
                continue;
            }
            self.completions.push_back((s.op, Err(HostError::Refused(format!("{}: {why}", s.to)))));
        }
        self.invites_failed(user, why);
        // Held messages stay unacknowledged at the store: the next fetch brings them again.
        let before = self.held.len();
        self.held.retain(|(_, u)| !u.from().eq_ignore_ascii_case(user));
        self.stats.unverified += (before - self.held.len()) as u64;
    }

    // ---- sending ------------------------------------------------------------------

    /// Sends `text` to `to`; completes `op` once the store has it.
    pub fn send_text(&mut self, now: Now, op: u64, to: &str, text: String) {
        self.seen = Some(now);
        self.send(now, op, to, Body::Text { text });
    }

    /// Sends any message body to `to` (a file offer, say) the way a text goes; completes
    /// under `op` like [`ChatCore::send_text`].
    pub fn send_body(&mut self, now: Now, op: u64, to: &str, body: Body) {
        self.send(now, op, to, body);
    }

    fn send(&mut self, now: Now, op: u64, to: &str, body: Body) {
        if self.sends.len() >= SENDS_MAX {
            self.completions.push_back((op, Err(HostError::Refused("too many messages being sent".into()))));
            return;
        }
        let mut id = [0u8; 16];
        self.rng.fill_bytes(&mut id);
        let to = to.to_ascii_lowercase();
        let t = self.tag();
        let conversation = Conversation::User(to.clone());
        // The recipient's keys first, then the number: a send that cannot be sealed uses
        // no number, so it leaves no gap for the recipient to report as lost.
        let known = self.keys_of(&to).is_some();
        let lookup = (!known).then(|| to.clone());
        self.sends.insert(
            t,
            Sending { op, to, body, id, seq: None, sent_at_ms: now.unix_ms, waiting_keys: !known, group: None },
        );
        match lookup {
            None => self.number(t, conversation),
            Some(to) => self.look_up(&to),
        }
    }

    /// Asks the history for send `t`'s sequence number.
    fn number(&mut self, t: u64, conversation: Conversation) {
        let e = self.tag();
        self.effects_out.insert(e, EffectFor::Seq(t));
        self.effects.push_back((e, ChatEffect::NextSeq { conversation }));
    }

    /// Send `t` has its sequence number (its recipient's keys are known): seal and submit.
    fn numbered(&mut self, now: Now, t: u64, seq: Result<u64, String>) {
        let Some(s) = self.sends.get_mut(&t) else { return };
        match seq {
            Ok(n) => s.seq = Some(n),
            Err(e) => {
                let s = self.sends.remove(&t).expect("held just above");
                self.stats.send_failed += 1;
                self.completions.push_back((s.op, Err(HostError::Refused(format!("history: {e}")))));
                return;
            }
        }
        self.submit(now, t);
    }

    /// The message of send `s` as a conversation's side sees it.
    fn inner(&self, s: &Sending, conversation: Conversation) -> Inner {
        Inner {
            from: self.cfg.me.to_ascii_lowercase(),
            from_device: self.cfg.stream,
            conversation: s.group.map_or(conversation, Conversation::Group),
            seq: s.seq.unwrap_or(1),
            sent_at_ms: s.sent_at_ms,
            body: s.body.clone(),
        }
    }

    /// Seals send `t` to its recipient (and a copy to ourselves) and gives both to the store.
    fn submit(&mut self, _now: Now, t: u64) {
        let Some(s) = self.sends.get_mut(&t) else { return };
        let Some(to_keys) = self.known.get(&s.to).copied() else {
            // Forgotten meanwhile (the keys table was full): look them up again rather
            // than leave the send waiting for ever.
            s.waiting_keys = true;
            let to = s.to.clone();
            self.look_up(&to);
            return;
        };
        s.waiting_keys = false;
        let s = self.sends.get(&t).expect("held just above");
        let me = self.cfg.me.to_ascii_lowercase();
        // The recipient sees the conversation as one with us; our own copy as one with them.
        let theirs = self.inner(s, Conversation::User(me.clone()));
        let ours = self.inner(s, Conversation::User(s.to.clone()));
        let (to, id) = (s.to.clone(), s.id);
        match message::seal(&theirs, id, &to, &to_keys, &self.keys) {
            Ok(sealed) => self.request(
                ReqFor::Submit { send: t, copy: false },
                Request::MailSubmit { id, to: to.clone(), sealed: sealed.encode() },
            ),
            Err(e) => {
                let s = self.sends.remove(&t).expect("held just above");
                self.stats.send_failed += 1;
                self.completions.push_back((s.op, Err(HostError::Refused(e.to_string()))));
                return;
            }
        }
        // Our other devices learn what we sent from our own copy (its id derived from the
        // recipient's, so receipts naming that one find it).
        // A group's payloads go to this user explicitly, once (not once per member).
        let worth_a_copy = !matches!(ours.body, Body::Receipt { .. } | Body::Group(_));
        if worth_a_copy && to != me {
            let copy_id = own_copy_id(&id);
            if let Ok(sealed) = message::seal(&ours, copy_id, &me, &self.keys.public(), &self.keys) {
                self.request(
                    ReqFor::Submit { send: t, copy: true },
                    Request::MailSubmit { id: copy_id, to: me, sealed: sealed.encode() },
                );
            }
        }
    }

    fn on_submitted(&mut self, t: u64, copy: bool, r: OpResult) {
        if copy {
            // Our other devices miss one message of the history if this failed; nothing
            // the sender can do better now than the recipient's copy, which decides.
            return;
        }
        let Some(s) = self.sends.remove(&t) else { return };
        if let Some(g) = s.group {
            let pushed = match r {
                Ok(Answer::Mailed(a)) if a.code == 0 => Some(a.pushed > 0),
                _ => None,
            };
            if pushed.is_none() {
                self.stats.send_failed += 1;
                self.groups.send_failed(g, &s.to);
            } else {
                self.stats.sent += 1;
            }
            self.group_sent(s.op, &s.to, pushed);
            return;
        }
        let result = match r {
            Ok(Answer::Mailed(a)) if a.code == 0 => {
                let status = if a.pushed > 0 { SendStatus::Delivered } else { SendStatus::Stored };
                self.stats.sent += 1;
                let inner = self.inner(&s, Conversation::User(s.to.clone()));
                self.effects.push_back((0, ChatEffect::Sent { id: s.id, inner, status }));
                Ok(Sent { id: s.id, to: s.to, status })
            }
            Ok(Answer::Mailed(a)) => Err(HostError::Refused(format!(
                "the store refused the message: {}",
                ErrorCode::from_code(a.code).label()
            ))),
            Ok(other) => Err(HostError::Refused(format!("unexpected answer {other:?}"))),
            Err(e) => Err(HostError::Refused(e.to_string())),
        };
        if result.is_err() {
            self.stats.send_failed += 1;
        }
        self.completions.push_back((s.op, result));
    }

    // ---- receiving ----------------------------------------------------------------

    /// A sealed message pushed to us (a `Notice::Chat`): one that does not decode is
    /// dropped here and acknowledged when the store hands it with its id.
    pub fn on_pushed(&mut self, now: Now, bytes: &[u8]) {
        self.seen = Some(now);
        match Sealed::decode(bytes) {
            Ok(s) => self.on_opened(now, s),
            Err(e) => self.refuse_unknown(e.label()),
        }
    }

    /// A message the store handed us under `id`.
    fn on_stored(&mut self, now: Now, id: MailId, bytes: &[u8]) {
        match Sealed::decode(bytes) {
            Ok(s) if s.id == id => self.on_opened(now, s),
            Ok(_) => self.refuse(now, id, "id_mismatch"),
            Err(e) => self.refuse(now, id, e.label()),
        }
    }

    fn on_opened(&mut self, now: Now, sealed: Sealed) {
        let id = sealed.id;
        match message::open(&sealed, &self.cfg.me, &self.keys) {
            Ok(u) => self.verify(now, id, u),
            Err(e) => self.refuse(now, id, e.label()),
        }
    }

    fn verify(&mut self, now: Now, id: MailId, u: Unverified) {
        let from = u.from().to_owned();
        let Some(k) = self.keys_of(&from) else {
            if self.held.len() >= HELD_MAX {
                self.held.pop_front();
                self.stats.unverified += 1;
            }
            self.held.push_back((id, u));
            self.look_up(&from);
            return;
        };
        match u.verify(&k) {
            Ok(message) => self.record(now, id, message),
            Err(e) => self.refuse(now, id, e.label()),
        }
    }

    fn record(&mut self, now: Now, id: MailId, message: Message) {
        let from_me = message.inner.from.eq_ignore_ascii_case(&self.cfg.me);
        if !self.contacts_known && !from_me {
            // Buddy, stranger or blocked is not known yet: wait for the list. Past the
            // bound, the message stays unacknowledged and comes again at the next fetch.
            self.seen = Some(now);
            if self.waiting_for_list.len() < WAITING_FOR_LIST_MAX {
                self.waiting_for_list.push_back((id, message));
            }
            return;
        }
        if !from_me && self.relation(&message.inner.from) == Some(Relation::Blocked) {
            // Dropped for good, group payloads included: the store forgets it for this
            // device, the sender learns nothing (no receipt).
            self.stats.blocked += 1;
            self.ack(now, id);
            return;
        }
        if let Body::Group(body) = &message.inner.body {
            // The log decides what is new (by entry hash), not the history's numbers.
            self.stats.group_payloads += 1;
            tracing::debug!(from = %message.inner.from, bytes = body.len(), "a group payload");
            match message.inner.conversation {
                Conversation::Group(g) if !(from_me && message.inner.from_device == self.cfg.stream) => {
                    let buddy = from_me || self.relation(&message.inner.from) == Some(Relation::Authorized);
                    self.groups.receive(now.mono, &message.inner.from, g, body, Some(id), buddy)
                }
                _ => self.ack(now, id),
            }
            return;
        }
        if from_me && message.inner.from_device == self.cfg.stream {
            // Our own copy of what this device sent: the history has it under the id
            // receipts name (written when the store took it), so only the store hears.
            self.ack(now, id);
            return;
        }
        let standing = if from_me { Some(Relation::Authorized) } else { self.relation(&message.inner.from) };
        // Receipts go to buddies only: a stranger learns nothing of whether or when we
        // read, until we add them.
        let buddy = standing == Some(Relation::Authorized);
        let wants_receipt = buddy && !from_me && !matches!(message.inner.body, Body::Receipt { .. });
        let receipt_to = wants_receipt.then(|| message.inner.from.clone());
        let tag = self.tag();
        self.effects_out.insert(tag, EffectFor::Record(Box::new(message.clone()), receipt_to));
        self.effects.push_back((tag, ChatEffect::Record { message }));
    }

    /// How we stand with `user`, if they are on the buddy list.
    fn relation(&self, user: &str) -> Option<Relation> {
        self.contacts.get(&user.to_ascii_lowercase()).copied()
    }

    /// Whether a message from `user` is a message request (not from an authorized buddy).
    pub fn is_request_from(&self, user: &str) -> bool {
        !user.eq_ignore_ascii_case(&self.cfg.me) && self.relation(user) != Some(Relation::Authorized)
    }

    /// The buddy list as it stands now: who is a buddy, who is blocked; everyone else
    /// is a stranger whose messages arrive as requests.
    pub fn set_contacts(&mut self, contacts: impl IntoIterator<Item = (String, Relation)>) {
        self.contacts = contacts.into_iter().map(|(u, r)| (u.to_ascii_lowercase(), r)).collect();
        self.contacts_known = true;
        if let Some(now) = self.seen {
            for (id, message) in std::mem::take(&mut self.waiting_for_list) {
                self.record(now, id, message);
            }
        }
    }

    /// A message that cannot be opened is not for us or is broken: the store may forget it
    /// for this device (it would only come again).
    fn refuse(&mut self, now: Now, id: MailId, reason: &'static str) {
        self.stats.refused += 1;
        tracing::info!(reason, "dropped a chat message");
        self.events.push_back(ChatEvent::Refused { reason });
        self.ack(now, id);
    }

    fn refuse_unknown(&mut self, reason: &'static str) {
        self.stats.refused += 1;
        tracing::info!(reason, "dropped a chat message that does not decode");
        self.events.push_back(ChatEvent::Refused { reason });
    }

    /// An effect's answer: a send's sequence number, or a message written (or found).
    pub fn on_effect_result(&mut self, now: Now, tag: u64, r: ChatEffectResult) {
        self.seen = Some(now);
        match (self.effects_out.remove(&tag), r) {
            (Some(EffectFor::Seq(t)), ChatEffectResult::Seq(n)) => self.numbered(now, t, n),
            (Some(EffectFor::Record(message, receipt_to)), ChatEffectResult::Recorded(r)) => {
                self.recorded(now, *message, receipt_to, r)
            }
            (Some(EffectFor::KeysLoad), ChatEffectResult::Keys(r)) => match r {
                Ok(kept) => {
                    for (user, keys) in kept {
                        // What this run learned since is newer.
                        if self.known.len() < KEYS_MAX {
                            self.known.entry(user.to_ascii_lowercase()).or_insert(keys);
                        }
                    }
                }
                Err(e) => tracing::warn!(error = %e, "the peers' keys could not be read"),
            },
            (Some(EffectFor::GroupLoad), ChatEffectResult::GroupLogs(r)) => {
                match r {
                    Ok(logs) => self.groups.load(now.mono, logs),
                    // Without them, new entries still arrive and are kept; sync fills the rest.
                    Err(e) => tracing::warn!(error = %e, "the group logs could not be read"),
                }
                self.groups_loaded = true;
                for (op, c) in std::mem::take(&mut self.group_cmds) {
                    self.group_command(now, op, c);
                }
            }
            (Some(EffectFor::GroupKept(mail)), ChatEffectResult::Recorded(r)) => match (r, mail) {
                (Ok(_), Some(id)) => self.ack(now, id),
                (Ok(_), None) => {}
                // Not kept: not acknowledged, so the store brings them again.
                (Err(e), _) => tracing::warn!(error = %e, "group entries could not be kept"),
            },
            (Some(EffectFor::GroupShown(group, name, texts)), ChatEffectResult::GroupRecorded(r)) => match r {
                Ok(new) => {
                    for (text, new) in texts.into_iter().zip(new) {
                        if new {
                            self.events.push_back(ChatEvent::Group { group, name: name.clone(), text });
                        }
                    }
                }
                Err(e) => tracing::warn!(error = %e, "group texts could not be recorded"),
            },
            (other, r) => tracing::debug!(?other, ?r, "a chat effect answer that matches nothing"),
        }
    }

    /// The history wrote (or found) a message: acknowledge it, and tell its sender.
    fn recorded(&mut self, now: Now, message: Message, receipt_to: Option<String>, r: Result<bool, String>) {
        let id = message.id;
        match r {
            Ok(true) => {
                self.stats.received += 1;
                let request =
                    self.is_request_from(&message.inner.from) && !matches!(message.inner.body, Body::Receipt { .. });
                self.stats.requests += u64::from(request);
                self.events.push_back(ChatEvent::Message { id, message: Box::new(message), request });
                if let Some(to) = receipt_to {
                    self.send_receipt(now, &to, ReceiptKind::Delivered, vec![id]);
                }
                self.ack(now, id);
            }
            Ok(false) => {
                self.stats.repeats += 1;
                self.ack(now, id);
            }
            Err(e) => {
                // Not written: not acknowledged, so the store brings it again.
                tracing::warn!(error = %e, "a chat message could not be written to the history");
            }
        }
    }

    /// Receipts go like messages, so they reach a sender that is offline now.
    fn send_receipt(&mut self, now: Now, to: &str, kind: ReceiptKind, ids: Vec<MailId>) {
        // Nobody waits for a receipt's completion (op 0).
        self.send(now, 0, to, Body::Receipt { kind, ids });
    }

    /// The application read these messages of `from`: tell them.
    pub fn mark_read(&mut self, now: Now, from: &str, ids: Vec<MailId>) {
        self.seen = Some(now);
        if self.is_request_from(from) {
            // A stranger learns nothing of what we read.
            return;
        }
        for chunk in ids.chunks(ACK_IDS_MAX) {
            self.send_receipt(now, from, ReceiptKind::Read, chunk.to_vec());
        }
    }

    fn ack(&mut self, now: Now, id: MailId) {
        self.acks.push(id);
        self.ack_at.get_or_insert(now.mono + ACK_DELAY);
    }

    fn flush_acks(&mut self, now: Now) {
        if self.acks.is_empty() || !self.linked {
            return;
        }
        let due = *self.ack_at.get_or_insert(now.mono);
        if now.mono < due && self.acks.len() < ACK_IDS_MAX {
            return;
        }
        self.ack_at = None;
        while !self.acks.is_empty() {
            let n = self.acks.len().min(ACK_IDS_MAX);
            let ids: Vec<MailId> = self.acks.drain(..n).collect();
            let device = self.cfg.device.0;
            self.request(ReqFor::Ack { ids: ids.clone() }, Request::MailAck { device, ids });
        }
    }

    // ---- the store ----------------------------------------------------------------

    /// A link to a super node is up: fetch what waits.
    pub fn on_link_up(&mut self, now: Now) {
        self.seen = Some(now);
        self.linked = true;
        self.groups.on_link_up(now.mono);
        self.fetch_at = Some(now.mono);
    }

    /// The link ended: requests on it failed (their results say so).
    pub fn on_link_down(&mut self) {
        self.linked = false;
        self.groups.on_link_down();
    }

    /// Fetches what waits now (a command asks, or a test), unless a fetch is under way.
    pub fn fetch_now(&mut self, now: Now) {
        self.seen = Some(now);
        self.fetch_after = None;
        self.fetch(now);
    }

    /// Whether anything is under way: a fetch, a send, a history write, a lookup for
    /// keys, or acknowledgements not yet sent or answered. A command that must not end
    /// the session early (a one-shot send or read) waits until this is false.
    pub fn is_busy(&self) -> bool {
        self.fetching
            || !self.waiting_for_list.is_empty()
            || !self.sends.is_empty()
            || !self.effects_out.is_empty()
            || !self.looking.is_empty()
            || (!self.acks.is_empty() && self.linked)
            || self.out.values().any(|w| matches!(w, ReqFor::Ack { .. } | ReqFor::Submit { .. }))
            || !self.group_cmds.is_empty()
            || !self.group_ops.is_empty()
            || !self.group_backlog.is_empty()
            || self.groups.is_dirty()
    }

    fn fetch(&mut self, now: Now) {
        if !self.linked || self.fetching {
            return;
        }
        self.fetching = true;
        self.fetch_at = Some(now.mono + FETCH_EVERY);
        let device = self.cfg.device.0;
        let after = self.fetch_after;
        self.request(ReqFor::Fetch, Request::MailFetch { device, after });
    }

    fn on_fetched(&mut self, now: Now, r: OpResult) {
        self.fetching = false;
        match r {
            Ok(Answer::Mail(b)) if b.code == 0 => {
                tracing::debug!(messages = b.messages.len(), more = b.more, "a page of stored messages");
                let last = b.messages.last().map(|(id, _)| *id);
                for (id, m) in &b.messages {
                    self.on_stored(now, *id, m);
                }
                if b.more && last.is_some() {
                    self.fetch_after = last;
                    self.fetch(now);
                } else {
                    self.fetch_after = None;
                }
            }
            Ok(_) | Err(_) => {
                // Asked again at the next period or the next link.
                self.fetch_after = None;
            }
        }
    }

    /// A request's outcome.
    pub fn on_request_result(&mut self, now: Now, tag: u64, r: OpResult) {
        self.seen = Some(now);
        let Some(why) = self.out.remove(&tag) else { return };
        match why {
            ReqFor::Submit { send, copy } => self.on_submitted(send, copy, r),
            ReqFor::Fetch => self.on_fetched(now, r),
            ReqFor::Ack { ids } => {
                if !matches!(r, Ok(Answer::MailAcked(a)) if a.code == 0) {
                    // The store keeps them for this device and brings them again; the
                    // history drops the repeats. Acknowledge again with the next batch.
                    self.acks.extend(ids);
                    self.ack_at.get_or_insert(now.mono + ACK_DELAY);
                }
            }
            ReqFor::Keys { user } => {
                self.looking.remove(&user);
                match lookup_keys::keys_found(&user, &r, &self.cfg.trusted, now.unix_ms) {
                    Some(KeysFrom::Entry(k)) => self.learn(now, &user, k),
                    Some(KeysFrom::Directory(k)) => {
                        self.stats.keys_from_directory += 1;
                        self.learn(now, &user, k);
                    }
                    None => self.keys_failed(&user, "no keys to be had for them"),
                }
            }
        }
    }

    // ---- groups ---------------------------------------------------------------------

    /// The groups part (its list, its members).
    pub fn groups(&mut self) -> &mut GroupsCore {
        &mut self.groups
    }

    /// The groups' counters.
    pub fn group_stats(&self) -> super::groups::GroupStats {
        self.groups.stats()
    }

    /// A group command; completes `op` with the group's (or the text's) id.
    pub fn group_command(&mut self, now: Now, op: u64, c: GroupCommand) {
        self.seen = Some(now);
        if !self.groups_loaded {
            self.group_cmds.push((op, c));
            return;
        }
        let r = match c {
            GroupCommand::Create { name, members } => self.group_create(now, op, &name, members),
            GroupCommand::Send { group, text } => self.groups.find(&group).and_then(|g| {
                let hash = self.groups.send_text(now.unix_ms, g, &text, op)?;
                let name = self.groups.find_name(&g);
                let id = hash[..16].try_into().expect("16 of 32 bytes");
                self.group_ops.insert(op, GroupOp::new(id, name, 0, true));
                Ok(())
            }),
            GroupCommand::Invite { group, member } => self.groups.find(&group).map(|g| {
                let name = self.groups.find_name(&g);
                self.group_ops.insert(op, GroupOp::new(g, name, 1, false));
                self.invite(now, op, g, &member);
            }),
            GroupCommand::Remove { group, member } => self.groups.find(&group).and_then(|g| {
                self.groups.remove(now.unix_ms, g, &member)?;
                let name = self.groups.find_name(&g);
                self.group_ops.insert(op, GroupOp::new(g, name, 0, false));
                Ok(())
            }),
            GroupCommand::Leave { group } => self.groups.find(&group).and_then(|g| {
                self.groups.leave(now.unix_ms, g)?;
                let name = self.groups.find_name(&g);
                self.group_ops.insert(op, GroupOp::new(g, name, 0, false));
                Ok(())
            }),
        };
        if let Err(e) = r {
            self.completions.push_back((op, Err(HostError::Refused(e.to_string()))));
        }
        self.group_done(op);
    }

    fn group_create(&mut self, now: Now, op: u64, name: &str, members: Vec<String>) -> Result<(), GroupsError> {
        let g = self.groups.create(now.unix_ms, name)?;
        let me = self.cfg.me.to_ascii_lowercase();
        let members: std::collections::BTreeSet<String> =
            members.iter().map(|m| m.trim().to_ascii_lowercase()).filter(|m| !m.is_empty() && *m != me).collect();
        let mut o = GroupOp::new(g, format!("@{name}"), members.len(), false);
        o.founding = Some(g);
        self.group_ops.insert(op, o);
        for m in members {
            self.invite(now, op, g, &m);
        }
        Ok(())
    }

    /// Invites `member` once its keys are known (looked up if need be).
    fn invite(&mut self, now: Now, op: u64, g: GroupId, member: &str) {
        let member = member.to_ascii_lowercase();
        self.invites.push((op, g, member.clone()));
        if self.keys_of(&member).is_some() {
            self.invites_ready(now, &member);
        } else {
            self.look_up(&member);
        }
    }

    fn invites_ready(&mut self, now: Now, user: &str) {
        let Some(keys) = self.keys_of(user) else { return };
        let (ready, rest): (Vec<_>, Vec<_>) =
            std::mem::take(&mut self.invites).into_iter().partition(|(_, _, m)| m.eq_ignore_ascii_case(user));
        self.invites = rest;
        for (op, g, m) in ready {
            let r = self.groups.invite(now.unix_ms, g, &m, keys);
            if let Some(o) = self.group_ops.get_mut(&op) {
                o.invites_left = o.invites_left.saturating_sub(1);
                if let Err(e) = r {
                    o.failed.push(format!("{m} ({e})"));
                }
            }
            self.group_done(op);
        }
    }

    fn invites_failed(&mut self, user: &str, why: &str) {
        let (failed, rest): (Vec<_>, Vec<_>) =
            std::mem::take(&mut self.invites).into_iter().partition(|(_, _, m)| m.eq_ignore_ascii_case(user));
        self.invites = rest;
        for (op, _, m) in failed {
            if let Some(o) = self.group_ops.get_mut(&op) {
                o.invites_left = o.invites_left.saturating_sub(1);
                o.failed.push(format!("{m} ({why})"));
            }
            self.group_done(op);
        }
    }

    /// The store answered for one of a command's sends (`pushed`: None if it failed).
    fn group_sent(&mut self, op: u64, to: &str, pushed: Option<bool>) {
        let Some(o) = self.group_ops.get_mut(&op) else { return };
        o.sends_left = o.sends_left.saturating_sub(1);
        match pushed {
            Some(p) => {
                o.stored += 1;
                o.pushed_all &= p;
            }
            // That member gets it by sync.
            None => tracing::debug!(to, "a group payload was not stored"),
        }
        self.group_done(op);
    }

    /// Completes `op` once nothing of it is left under way.
    fn group_done(&mut self, op: u64) {
        let Some(o) = self.group_ops.get(&op) else { return };
        if o.invites_left > 0 || o.sends_left > 0 || (o.with_sends && o.sends == 0) {
            return;
        }
        let o = self.group_ops.remove(&op).expect("held just above");
        if let Some(g) = o.founding {
            self.groups.found(g);
        }
        let status = if o.with_sends && o.pushed_all { SendStatus::Delivered } else { SendStatus::Stored };
        let r = if !o.failed.is_empty() {
            Err(HostError::Refused(format!("{}: could not invite {}", o.to, o.failed.join(", "))))
        } else if o.with_sends && o.stored == 0 {
            Err(HostError::Refused(format!("{}: the store took no copy (it goes out by sync)", o.to)))
        } else {
            Ok(Sent { id: o.id, to: o.to, status })
        };
        self.completions.push_back((op, r));
    }

    /// Seals a group's payload to `to` and stores it (`op`: the command it is for, or 0).
    fn send_group(&mut self, now: Now, op: u64, to: &str, group: GroupId, payload: Vec<u8>) {
        let to = to.to_ascii_lowercase();
        if let Some(o) = self.group_ops.get_mut(&op) {
            o.sends += 1;
            o.sends_left += 1;
        }
        let sending = self.sends.values().filter(|s| s.group.is_some()).count();
        if sending >= GROUP_SENDS_WINDOW && self.group_backlog.len() < GROUP_BACKLOG_MAX {
            self.group_backlog.push_back((op, to, group, payload));
            return;
        }
        self.send_group_now(now, op, to, group, payload);
    }

    fn send_group_now(&mut self, now: Now, op: u64, to: String, group: GroupId, payload: Vec<u8>) {
        if self.sends.len() >= SENDS_MAX {
            self.stats.send_failed += 1;
            self.groups.send_failed(group, &to);
            self.group_sent(op, &to, None);
            return;
        }
        let mut id = [0u8; 16];
        self.rng.fill_bytes(&mut id);
        // Group payloads are not numbered by the history (the log orders and deduplicates
        // them by entry hash); a random number keeps (sender, device, conversation,
        // number) unique for any reader that looks.
        let seq = rand::RngExt::random_range(&mut self.rng, 1..=crate::chat::message::SEQ_MAX);
        let t = self.tag();
        let body = Body::Group(payload);
        let s = Sending {
            op,
            to: to.clone(),
            body,
            id,
            seq: Some(seq),
            sent_at_ms: now.unix_ms,
            waiting_keys: true,
            group: Some(group),
        };
        self.sends.insert(t, s);
        if self.keys_of(&to).is_some() {
            self.submit(now, t);
        } else {
            self.look_up(&to);
        }
    }

    /// Does the groups' due work and turns what they ask into sends, effects and
    /// acknowledgements (once per batch of inputs: when the outputs are taken).
    fn pump_groups(&mut self) {
        let Some(now) = self.seen else { return };
        let mut sending = self.sends.values().filter(|s| s.group.is_some()).count();
        while sending < GROUP_SENDS_WINDOW
            && let Some((op, to, group, payload)) = self.group_backlog.pop_front()
        {
            self.send_group_now(now, op, to, group, payload);
            sending += 1;
        }
        self.groups.step(now.mono, now.unix_ms);
        while let Some(o) = self.groups.poll_out() {
            match o {
                GroupOut::Send { to, group, payload, op } => self.send_group(now, op.unwrap_or(0), &to, group, payload),
                GroupOut::Keep { group, entries, ack } => {
                    let tag = self.tag();
                    self.effects_out.insert(tag, EffectFor::GroupKept(ack));
                    self.effects.push_back((tag, ChatEffect::GroupKeep { group, entries }));
                }
                GroupOut::Show { group, name, texts } => {
                    let tag = self.tag();
                    self.effects_out.insert(tag, EffectFor::GroupShown(group, name, texts.clone()));
                    self.effects.push_back((tag, ChatEffect::GroupRecord { group, texts }));
                }
                GroupOut::Ack(id) => self.ack(now, id),
            }
        }
    }

    // ---- time and outputs -----------------------------------------------------------

    /// Timers: the periodic fetch and the gathered acknowledgements.
    pub fn handle_timeout(&mut self, now: Now) {
        self.seen = Some(now);
        if self.fetch_at.is_some_and(|t| t <= now.mono) {
            self.fetch(now);
        }
        self.flush_acks(now);
    }

    /// The next instant a timer is due.
    pub fn poll_timeout(&self) -> Option<Instant> {
        let acks = self.ack_at.filter(|_| !self.acks.is_empty() && self.linked);
        let groups = self.groups.poll_timeout();
        [self.fetch_at.filter(|_| self.linked && !self.fetching), acks, groups].into_iter().flatten().min()
    }

    /// The next request for the super node.
    pub fn poll_request(&mut self) -> Option<(u64, Request)> {
        self.pump_groups();
        self.requests.pop_front()
    }

    /// The next history write (tag 0: no answer expected).
    pub fn poll_effect(&mut self) -> Option<(u64, ChatEffect)> {
        self.pump_groups();
        self.effects.pop_front()
    }

    /// The next event for the application.
    pub fn poll_event(&mut self) -> Option<ChatEvent> {
        self.events.pop_front()
    }

    /// The next finished send: the `op` given to [`ChatCore::send_text`], and its outcome.
    pub fn poll_completion(&mut self) -> Option<(u64, Result<Sent, HostError>)> {
        self.completions.pop_front()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crypto::keys::tests::test_key;
    use crate::crypto::password::ListKey;
    use crate::wire::mail::MailSubmitReply;

    fn now(ms: u64) -> Now {
        static BASE: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
        let base = *BASE.get_or_init(Instant::now);
        Now { mono: base + Duration::from_millis(ms), unix_ms: 1_800_000_000_000 + ms }
    }

    /// A chat part whose buddy list has not been read yet.
    fn core_unlisted() -> ChatCore {
        let list_key = ListKey([5; 32]);
        let cfg = ChatConfig {
            me: "alice".into(),
            device: crate::crypto::keys::KeyId([1; 8]),
            stream: crate::crypto::keys::KeyId([11; 8]),
            trusted: TrustedKeys::new(vec![test_key(1).public().clone()]),
            list_key: list_key.clone(),
        };
        let mut c = ChatCore::new(cfg, UserKeys::derive(&list_key), StdRng::seed_from_u64(3));
        c.on_link_up(now(0));
        c
    }

    #[test]
    fn received_messages_wait_for_the_buddy_list_then_a_blocked_sender_s_are_dropped() {
        let bob = UserKeys::derive(&ListKey([8; 32]));
        let alice = UserKeys::derive(&ListKey([5; 32])).public();
        let mut c = core_unlisted();
        c.learn(now(0), "bob", bob.public());
        let inner = Inner {
            from: "bob".into(),
            from_device: crate::crypto::keys::KeyId([2; 8]),
            conversation: Conversation::User("bob".into()),
            seq: 1,
            sent_at_ms: 1_800_000_000_000,
            body: Body::Text { text: "let me in".into() },
        };
        let sealed = message::seal(&inner, [3; 16], "alice", &alice, &bob).unwrap();
        c.on_pushed(now(1), &sealed.encode());
        let records = |c: &mut ChatCore| {
            std::iter::from_fn(|| c.poll_effect()).filter(|(_, e)| matches!(e, ChatEffect::Record { .. })).count()
        };
        assert_eq!(records(&mut c), 0, "nothing is written before the list says who bob is");
        assert!(c.is_busy(), "a settle waits for it");
        c.set_contacts([("bob".to_string(), Relation::Blocked)]);
        assert_eq!(records(&mut c), 0);
        assert_eq!(c.stats().blocked, 1);
        assert!(c.acks.contains(&[3; 16]), "acknowledged: the store forgets it for this device");
    }

    /// A chat part whose history answers at once (empty, and every write taken), its
    /// buddy list read (carol a buddy).
    fn core() -> ChatCore {
        let mut c = core_unlisted();
        c.set_contacts([("carol".to_string(), Relation::Authorized)]);
        c
    }

    /// Answers every history effect; returns the store requests put out.
    fn drain(c: &mut ChatCore, at: Now) -> Vec<(u64, Request)> {
        let mut reqs = Vec::new();
        loop {
            let mut any = false;
            while let Some(r) = c.poll_request() {
                any = true;
                reqs.push(r);
            }
            while let Some((tag, e)) = c.poll_effect() {
                any = true;
                let r = match e {
                    ChatEffect::GroupLoad => ChatEffectResult::GroupLogs(Ok(Vec::new())),
                    ChatEffect::KeysLoad => ChatEffectResult::Keys(Ok(Vec::new())),
                    ChatEffect::GroupRecord { texts, .. } => {
                        ChatEffectResult::GroupRecorded(Ok(vec![true; texts.len()]))
                    }
                    ChatEffect::NextSeq { .. } => ChatEffectResult::Seq(Ok(1)),
                    _ => ChatEffectResult::Recorded(Ok(true)),
                };
                if tag != 0 {
                    c.on_effect_result(at, tag, r);
                }
            }
            if !any {
                return reqs;
            }
        }
    }

    fn stored(pushed: u8) -> OpResult {
        Ok(Answer::Mailed(MailSubmitReply { req: 0, code: 0, replicas: 1, pushed }))
    }

    #[test]
    fn keys_kept_from_before_seal_a_message_without_a_lookup_and_new_ones_are_kept() {
        let bob = UserKeys::derive(&ListKey([6; 32])).public();
        let mut c = core();
        // The kept keys come back from the history first.
        let mut loaded = false;
        while let Some((tag, e)) = c.poll_effect() {
            let r = match e {
                ChatEffect::KeysLoad => {
                    loaded = true;
                    ChatEffectResult::Keys(Ok(vec![("bob".into(), bob)]))
                }
                _ => ChatEffectResult::GroupLogs(Ok(Vec::new())),
            };
            c.on_effect_result(now(0), tag, r);
        }
        assert!(loaded, "the core asks for the kept keys when it starts");
        c.send_text(now(1), 9, "bob", "still there?".into());
        let reqs = drain(&mut c, now(1));
        assert!(reqs.iter().all(|(_, r)| !matches!(r, Request::Find { .. })), "no lookup: {reqs:?}");
        assert!(reqs.iter().any(|(_, r)| matches!(r, Request::MailSubmit { to, .. } if to == "bob")), "{reqs:?}");
        // Keys learned (from a verified entry) are handed to the history to keep, once.
        let carol = UserKeys::derive(&ListKey([7; 32])).public();
        let kept = |c: &mut ChatCore| {
            std::iter::from_fn(|| c.poll_effect())
                .filter(|(_, e)| matches!(e, ChatEffect::KeysKeep { user, keys } if user == "carol" && *keys == carol))
                .count()
        };
        c.learn(now(2), "carol", carol);
        assert_eq!(kept(&mut c), 1);
        c.learn(now(3), "carol", carol);
        assert_eq!(kept(&mut c), 0, "the same keys again are not written again");
    }

    #[test]
    fn group_payloads_go_out_a_window_at_a_time_and_a_text_completes_when_all_are_stored() {
        let mut c = core();
        drain(&mut c, now(0));
        c.group_command(now(1), 7, GroupCommand::Create { name: "solo".into(), members: vec![] });
        let first = drain(&mut c, now(1));
        assert!(matches!(c.poll_completion(), Some((7, Ok(Sent { ref to, .. }))) if to == "@solo"));
        for (tag, _) in first {
            c.on_request_result(now(2), tag, stored(1));
        }
        // Many texts at once: each is one payload (to ourselves, the only member).
        let n = GROUP_SENDS_WINDOW + 40;
        for i in 0..n {
            c.group_command(now(3), 100 + i as u64, GroupCommand::Send { group: "@solo".into(), text: format!("{i}") });
        }
        let out = drain(&mut c, now(3));
        let submits = |r: &[(u64, Request)]| r.iter().filter(|(_, r)| matches!(r, Request::MailSubmit { .. })).count();
        assert_eq!(submits(&out), GROUP_SENDS_WINDOW, "a window's worth goes out");
        assert!(c.is_busy());
        assert!(c.poll_completion().is_none(), "no text is done before the store answers");
        for (tag, _) in out {
            c.on_request_result(now(4), tag, stored(1));
        }
        let rest = drain(&mut c, now(4));
        assert_eq!(submits(&rest), 40, "the rest follow as the window frees");
        for (tag, _) in rest {
            c.on_request_result(now(5), tag, stored(0));
        }
        drain(&mut c, now(5));
        let done: Vec<_> = std::iter::from_fn(|| c.poll_completion()).collect();
        assert_eq!(done.len(), n);
        assert!(done.iter().all(|(_, r)| r.is_ok()));
        let status = |op: u64| done.iter().find(|(o, _)| *o == op).and_then(|(_, r)| r.as_ref().ok()).map(|s| s.status);
        assert_eq!(status(100), Some(SendStatus::Delivered), "pushed at once");
        assert_eq!(status(100 + n as u64 - 1), Some(SendStatus::Stored), "stored only");
        assert!(!c.is_busy());
    }
}
