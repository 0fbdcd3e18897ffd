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

use super::Now;
use super::pending::{Answer, OpResult, Request};
use crate::chat::message::{self, Body, Conversation, Inner, Message, ReceiptKind, Sealed, Unverified, own_copy_id};
use crate::crypto::TrustedKeys;
use crate::crypto::user::{DeviceId, UserKeys, UserPublicKeys};
use crate::host::HostError;
use crate::index::Entry;
use crate::wire::ErrorCode;
use crate::wire::mail::{ACK_IDS_MAX, MailId};
use rand::Rng;
use rand::rngs::StdRng;
use std::collections::{BTreeMap, VecDeque};
use std::time::{Duration, Instant};

/// How often the store is asked for what waits, besides at every new link (a push is a
/// hint: one lost on the way is fetched here).
pub const FETCH_EVERY: Duration = Duration::from_secs(60);
/// How long acknowledgements gather before they go (at most [`ACK_IDS_MAX`] at once).
pub const ACK_DELAY: Duration = Duration::from_millis(200);
/// Most users whose keys are remembered.
pub const KEYS_MAX: usize = 4096;
/// Most received messages held while their sender's keys are looked up.
pub const HELD_MAX: usize = 256;
/// Most sends in progress at once.
pub const SENDS_MAX: usize = 1024;

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
}

impl ChatEffect {
    /// Whether the shell answers it (the core remembers who waits only for those).
    pub fn answers(&self) -> bool {
        !matches!(self, ChatEffect::Sent { .. })
    }
}

/// What the shell reports back for an effect that asks for an answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ChatEffectResult {
    /// The sequence number drawn.
    Seq(Result<u64, String>),
    /// Written: `true` when new, `false` when the history had it already.
    Recorded(Result<bool, String>),
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
    },
    /// A message could not be opened or verified and was dropped (and acknowledged, so the
    /// store does not bring it again).
    Refused {
        /// Why, for metrics.
        reason: &'static str,
    },
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
}

/// What the chat part needs to know.
#[derive(Debug, Clone)]
pub struct ChatConfig {
    /// Our username.
    pub me: String,
    /// This device.
    pub device: DeviceId,
    /// The login servers' keys (to check entries carrying others' user keys).
    pub trusted: TrustedKeys,
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
}

/// What an effect's answer is for.
#[derive(Debug)]
enum EffectFor {
    /// A send's sequence number.
    Seq(u64),
    /// A received message, and whom to send a delivery receipt.
    Record(Box<Message>, Option<String>),
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
}

impl std::fmt::Debug for ChatCore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChatCore").field("me", &self.cfg.me).field("stats", &self.stats).finish_non_exhaustive()
    }
}

impl ChatCore {
    /// A chat part for `cfg.me`, whose user keys are `keys`.
    pub fn new(cfg: ChatConfig, keys: UserKeys, rng: StdRng) -> Self {
        let mut known = BTreeMap::new();
        known.insert(cfg.me.to_ascii_lowercase(), keys.public());
        Self {
            cfg,
            keys,
            rng,
            known,
            next_tag: 1,
            out: BTreeMap::new(),
            sends: BTreeMap::new(),
            looking: BTreeMap::new(),
            held: VecDeque::new(),
            effects_out: BTreeMap::new(),
            acks: Vec::new(),
            ack_at: None,
            linked: false,
            fetching: false,
            fetch_after: None,
            fetch_at: None,
            requests: VecDeque::new(),
            effects: VecDeque::new(),
            events: VecDeque::new(),
            completions: VecDeque::new(),
            stats: ChatStats::default(),
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
        if let Some(k) = e.user_keys {
            self.learn(now, &e.user, k);
        }
    }

    fn learn(&mut self, now: Now, user: &str, k: UserPublicKeys) {
        let user = user.to_ascii_lowercase();
        if self.known.len() >= KEYS_MAX && !self.known.contains_key(&user) {
            // Anyone but ourselves may go; the first in name order is as good as any.
            let victim = self.known.keys().find(|u| **u != self.cfg.me.to_ascii_lowercase()).cloned();
            if let Some(v) = victim {
                self.known.remove(&v);
            }
        }
        self.known.insert(user.clone(), k);
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
            self.submit(now, t);
        }
        let (ready, rest): (Vec<_>, Vec<_>) =
            std::mem::take(&mut self.held).into_iter().partition(|(_, u)| u.from().eq_ignore_ascii_case(user));
        self.held = rest.into();
        for (id, u) in ready {
            self.verify(now, id, u);
        }
    }

    /// A lookup for keys came back empty or failed: what waited for them gives up.
    fn keys_failed(&mut self, user: &str, why: &str) {
        let failed: Vec<u64> = self
            .sends
            .iter()
            .filter(|(_, s)| s.waiting_keys && s.to.eq_ignore_ascii_case(user))
            .map(|(t, _)| *t)
            .collect();
        for t in failed {
            let s = self.sends.remove(&t).expect("listed just above");
            self.stats.send_failed += 1;
            self.completions.push_back((s.op, Err(HostError::Refused(format!("{}: {why}", s.to)))));
        }
        // Held messages stay unacknowledged at the store: the next fetch brings them again.
        let before = self.held.len();
        self.held.retain(|(_, u)| !u.from().eq_ignore_ascii_case(user));
        self.stats.unverified += (before - self.held.len()) as u64;
    }

    // ---- sending ------------------------------------------------------------------

    /// Sends `text` to `to`; completes `op` once the store has it.
    pub fn send_text(&mut self, now: Now, op: u64, to: &str, text: String) {
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
        self.sends.insert(t, Sending { op, to, body, id, seq: None, sent_at_ms: now.unix_ms, waiting_keys: false });
        let e = self.tag();
        self.effects_out.insert(e, EffectFor::Seq(t));
        self.effects.push_back((e, ChatEffect::NextSeq { conversation }));
    }

    /// Send `t` has its sequence number: on to the recipient's keys.
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
        s.waiting_keys = true;
        let to = s.to.clone();
        if self.keys_of(&to).is_some() {
            self.submit(now, t);
        } else {
            self.look_up(&to);
        }
    }

    /// The message of send `s` as a conversation's side sees it.
    fn inner(&self, s: &Sending, conversation: Conversation) -> Inner {
        Inner {
            from: self.cfg.me.to_ascii_lowercase(),
            from_device: self.cfg.device,
            conversation,
            seq: s.seq.unwrap_or(1),
            sent_at_ms: s.sent_at_ms,
            body: s.body.clone(),
        }
    }

    /// Seals send `t` to its recipient (and a copy to ourselves) and gives both to the store.
    fn submit(&mut self, _now: Now, t: u64) {
        let Some(s) = self.sends.get_mut(&t) else { return };
        let Some(to_keys) = self.known.get(&s.to).copied() else { return };
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
        let worth_a_copy = !matches!(ours.body, Body::Receipt { .. });
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
        if from_me && message.inner.from_device == self.cfg.device {
            // Our own copy of what this device sent: the history has it under the id
            // receipts name (written when the store took it), so only the store hears.
            self.ack(now, id);
            return;
        }
        let wants_receipt = !from_me && !matches!(message.inner.body, Body::Receipt { .. });
        let receipt_to = wants_receipt.then(|| message.inner.from.clone());
        let tag = self.tag();
        self.effects_out.insert(tag, EffectFor::Record(Box::new(message.clone()), receipt_to));
        self.effects.push_back((tag, ChatEffect::Record { message }));
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
        match (self.effects_out.remove(&tag), r) {
            (Some(EffectFor::Seq(t)), ChatEffectResult::Seq(n)) => self.numbered(now, t, n),
            (Some(EffectFor::Record(message, receipt_to)), ChatEffectResult::Recorded(r)) => {
                self.recorded(now, *message, receipt_to, r)
            }
            (other, r) => tracing::debug!(?other, ?r, "a chat effect answer that matches nothing"),
        }
    }

    /// The history wrote (or found) a message: acknowledge it, and tell its sender.
    fn recorded(&mut self, now: Now, message: Message, receipt_to: Option<String>, r: Result<bool, String>) {
        let id = message.id;
        match r {
            Ok(true) => {
                self.stats.received += 1;
                self.events.push_back(ChatEvent::Message { id, message: Box::new(message) });
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
        self.linked = true;
        self.fetch_at = Some(now.mono);
    }

    /// The link ended: requests on it failed (their results say so).
    pub fn on_link_down(&mut self) {
        self.linked = false;
    }

    /// Fetches what waits now (a command asks, or a test), unless a fetch is under way.
    pub fn fetch_now(&mut self, now: Now) {
        self.fetch_after = None;
        self.fetch(now);
    }

    /// Whether anything is under way: a fetch, a send, a history write, a lookup for
    /// keys, or acknowledgements not yet sent or answered. A command that must not end
    /// the session early (a one-shot send or read) waits until this is false.
    pub fn is_busy(&self) -> bool {
        self.fetching
            || !self.sends.is_empty()
            || !self.effects_out.is_empty()
            || !self.looking.is_empty()
            || (!self.acks.is_empty() && self.linked)
            || self.out.values().any(|w| matches!(w, ReqFor::Ack { .. } | ReqFor::Submit { .. }))
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
                let found = match r {
                    Ok(Answer::Found(f)) if !f.entry.is_empty() => Entry::decode(&f.entry).ok(),
                    _ => None,
                };
                let verified = found.filter(|e| e.key() == user && e.verify(&self.cfg.trusted, now.unix_ms).is_ok());
                match verified.and_then(|e| e.user_keys) {
                    Some(k) => self.learn(now, &user, k),
                    None => self.keys_failed(&user, "no keys to be had for them"),
                }
            }
        }
    }

    // ---- time and outputs -----------------------------------------------------------

    /// Timers: the periodic fetch and the gathered acknowledgements.
    pub fn handle_timeout(&mut self, now: Now) {
        if self.fetch_at.is_some_and(|t| t <= now.mono) {
            self.fetch(now);
        }
        self.flush_acks(now);
    }

    /// The next instant a timer is due.
    pub fn poll_timeout(&self) -> Option<Instant> {
        let acks = self.ack_at.filter(|_| !self.acks.is_empty() && self.linked);
        [self.fetch_at.filter(|_| self.linked && !self.fetching), acks].into_iter().flatten().min()
    }

    /// The next request for the super node.
    pub fn poll_request(&mut self) -> Option<(u64, Request)> {
        self.requests.pop_front()
    }

    /// The next history write (tag 0: no answer expected).
    pub fn poll_effect(&mut self) -> Option<(u64, ChatEffect)> {
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
