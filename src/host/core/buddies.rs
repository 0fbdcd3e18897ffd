//! Buddies and presence as a sans-IO machine: the buddy list read from the login server,
//! the operations on it, presence from buddies and ours to them. What `Session` does in
//! `host::buddies` with awaits, this does by recording state and returning.
//!
//! # The driving contract
//!
//! [`BuddiesCore`] holds no socket, no clock and no link. Its driver (the joined host
//! core, or a test on virtual time):
//!
//! - feeds inputs, each with [`Now`]: [`BuddiesCore::on_link_up`] on every new link
//!   (the first one starts the login sequence: publish, read the list, tell every buddy),
//!   [`BuddiesCore::on_link_down`] when a link ends, [`BuddiesCore::on_notice`] for every
//!   presence or list-changed notice, [`BuddiesCore::on_request_result`] for every
//!   request it submitted, [`BuddiesCore::on_login_result`] for every login effect it
//!   ran, commands ([`BuddiesCore::add_buddy`] and the others, each returning the tag its
//!   completion comes back under), and [`BuddiesCore::handle_timeout`] when
//!   [`BuddiesCore::poll_timeout`] comes;
//! - then drains every output until `None`: [`BuddiesCore::poll_request`] (requests to
//!   the super node, each under a tag of this machine's, answered later by
//!   `on_request_result` under that tag), [`BuddiesCore::poll_effect`] (login-server
//!   calls, answered by `on_login_result` under their tag), [`BuddiesCore::poll_event`],
//!   [`BuddiesCore::poll_completion`] and [`BuddiesCore::poll_signal`].
//!
//! Every request and every effect must get exactly one answer (a failure, `LinkDown`
//! included, is an answer). The core owns each login effect's deadline: past it the
//! operation fails with a clear error, and a late answer is counted and ignored.
//!
//! # What it keeps from today's code
//!
//! - The list is read one page (`PAGE_ROWS` rows) per effect, the cursor chaining them,
//!   so one page is in flight at a time; the pending requests are read beside the pages.
//!   A page the login servers could not be reached for is read again (twice at most). A
//!   refresh asked for while one runs is coalesced into one more after it.
//! - Presence from someone the book does not hold as an authorized buddy, while a list
//!   read is under way or from someone we asked, waits for the read (at most
//!   [`PRESENCE_WAITING_MAX`]) and is applied after it, as today's `on_presence` did by
//!   reading the list inline.
//! - Our presence goes to every buddy at [`FORWARDS_PER_SECOND`], one notice per step at
//!   most, paced by the timer instead of a sleep.
//! - The presence refresh (every `presence_refresh`): the revocation list from the login
//!   server, then our entry published and every buddy told. When the new list revokes
//!   our super node, [`Signal::SupernodeRevoked`] asks the driver to leave it, and the
//!   publish and the telling wait for the next link.

use super::Now;
use super::io::{Effect, LoginAnswer, LoginCall};
use super::pending::{Answer, Class, OpResult, Request, RequestError};
use crate::buddy::Notice;
use crate::buddy::op::{BuddyAnswer, BuddyOp, CONTACTS_MAX, Incoming, PAGE_ROWS, Relation, Row};
use crate::buddy::record::{self, Contact};
use crate::crypto::credential::{CredentialKind, TrustedKeys};
use crate::crypto::password::ListKey;
use crate::crypto::user::{UserKeys, UserPublicKeys};
use crate::crypto::{Credential, KeyId, PrivateKey};
use crate::host::HostError;
use crate::host::account::AccountError;
use crate::host::buddies::{Buddy, BuddyBook, Event, Presence, PresenceOutcome};
use crate::index::{Entry, EntryBody, Profile, Status};
use crate::nat::NatKind;
use crate::wire::ErrorCode;
use rand::Rng;
use rand::rngs::StdRng;
use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

/// Presence notices sent a second when every buddy is told at once (the super node
/// refuses more than 50 requests a second from one host).
pub const FORWARDS_PER_SECOND: u32 = 40;
/// Between two notices of a fan-out.
pub const FANOUT_GAP: Duration = Duration::from_millis(1000 / FORWARDS_PER_SECOND as u64);
/// Most events kept unread; beyond, the oldest presence goes first.
pub const EVENTS_QUEUED_MAX: usize = 1024;
/// Most presence notices kept waiting for a list read.
pub const PRESENCE_WAITING_MAX: usize = 64;
/// Most verified buddy entries waiting for the chat to take their keys.
const ENTRIES_OUT_MAX: usize = 256;
/// User operations at the login server at once; more wait their turn.
pub const USER_OPS_IN_FLIGHT_MAX: usize = 4;
/// User operations waiting their turn; beyond, an operation fails at once.
pub const USER_OPS_QUEUED_MAX: usize = 64;
/// When a read the login servers could not be reached for is made again, counted from
/// its failure: one entry per retry.
pub const READ_RETRIES: [Duration; 2] = [Duration::from_secs(1), Duration::from_secs(3)];
/// Added to `login_timeout × servers` for a login effect's deadline (the shell's task,
/// the puzzles, the blocking pool).
pub const LOGIN_DEADLINE_SLACK: Duration = Duration::from_secs(5);
/// A list change noticed within this of the last read waits for its end.
pub const LIST_READ_GAP: Duration = Duration::from_secs(1);
/// Most pages of one list read: a full list and one more (a login server whose pages
/// never end does not keep us reading).
const PAGES_MAX: usize = CONTACTS_MAX / PAGE_ROWS + 2;
/// Most requests kept unpolled; beyond, notices are dropped (presence repeats).
const REQUESTS_QUEUED_MAX: usize = 1024;

/// What the machine needs of the logged-in host.
#[derive(Debug, Clone)]
pub struct BuddiesConfig {
    /// Our credential (its subject owns the list).
    pub credential: Credential,
    /// The key the credential certifies (signs our entry).
    pub key: PrivateKey,
    /// Opens the contacts' sealed names.
    pub list_key: ListKey,
    /// The login servers' keys, shared with the shell (a revocation list it adopts is
    /// seen here).
    pub trusted: TrustedKeys,
    /// One login-server request's timeout (`HostSettings::login_timeout`).
    pub login_timeout: Duration,
    /// How many login servers the shell tries.
    pub login_servers: usize,
    /// How often presence is refreshed (`HostSettings::presence_refresh`).
    pub presence_refresh: Duration,
    /// Our status at login.
    pub status: Status,
    /// Our profile.
    pub profile: Profile,
}

/// The link the host is on, as our entry tells it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LinkInfo {
    /// The super node's name.
    pub supernode: String,
    /// The key of its credential (we leave it when it is revoked).
    pub supernode_key: KeyId,
    /// Our address as it sees it.
    pub public_addr: SocketAddr,
    /// Our NAT.
    pub nat: NatKind,
}

/// What a buddy command did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BuddyDone {
    /// Add or answer: the relation with the contact now.
    Relation(Relation),
    /// Publish: how many replicas the super node sent our entry to.
    Published {
        /// Replicas.
        replicas: u8,
    },
    /// Remove, block, refresh.
    Done,
}

/// A buddy command's outcome.
pub type BuddyResult = Result<BuddyDone, HostError>;

/// What the machine needs of the rest of the host.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Signal {
    /// The revocation list names our super node's key: leave it (the publish and the
    /// presence refresh follow on the next link).
    SupernodeRevoked,
}

/// Counters of what went differently than asked.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct BuddiesStats {
    /// Presence notices that did not decode or verify.
    pub presence_invalid: u64,
    /// Presence notices dropped from the waiting list (full).
    pub presence_waiting_dropped: u64,
    /// Events dropped because nobody read them.
    pub events_dropped: u64,
    /// Login answers after their deadline (or for nothing asked).
    pub login_late: u64,
    /// Login effects given up at their deadline.
    pub login_timed_out: u64,
    /// Reads made again after the login servers could not be reached.
    pub reads_retried: u64,
    /// Notices that did not reach the super node or were refused by it.
    pub forwards_failed: u64,
    /// Requests dropped because nobody polled them.
    pub requests_dropped: u64,
}

#[derive(Debug, Clone)]
enum UserOp {
    Add { user: String },
    Answer { from: String, accept: bool },
    Remove { user: String },
    Block { user: String },
}

impl UserOp {
    fn label(&self) -> &'static str {
        match self {
            Self::Add { .. } => "Add",
            Self::Answer { .. } => "Answer",
            Self::Remove { .. } => "Remove",
            Self::Block { .. } => "Block",
        }
    }
}

#[derive(Debug)]
enum LoginFor {
    Page,
    Requests,
    User { tag: u64, op: UserOp },
    Revocations,
}

#[derive(Debug)]
struct LoginOut {
    purpose: LoginFor,
    label: &'static str,
    deadline: Instant,
}

/// One read of a list refresh.
#[derive(Debug)]
enum Read<T> {
    Out,
    RetryAt(Instant),
    Got(T),
}

/// A list refresh: pages chained by their cursor, and the pending requests beside.
#[derive(Debug)]
struct ListRefresh {
    rows: Vec<Row>,
    after: Option<u32>,
    pages: usize,
    page: Read<()>,
    page_tries: usize,
    requests: Read<Vec<Incoming>>,
    requests_tries: usize,
    waiters: Vec<u64>,
    tell_all: bool,
}

/// A refresh asked for while one runs.
#[derive(Debug, Default)]
struct Again {
    waiters: Vec<u64>,
    tell_all: bool,
}

/// Our presence going out to buddies, one notice per [`FANOUT_GAP`].
#[derive(Debug)]
struct FanOut {
    body: Vec<u8>,
    targets: VecDeque<(String, String)>,
    queued: BTreeSet<(String, String)>,
}

#[derive(Debug, Clone, Copy)]
enum ReqFor {
    Forward,
    Publish { tag: Option<u64> },
}

/// Buddies and presence, driven as the module's documentation says.
#[derive(Debug)]
pub struct BuddiesCore {
    cfg: BuddiesConfig,
    rng: StdRng,
    book: BuddyBook,
    /// Verified buddy entries that brought news, for the chat.
    entries: VecDeque<Entry>,
    /// The newest timestamp we signed an entry with: each is later than the last, so a
    /// status changed within the same millisecond is not taken for a stale copy.
    signed_ms: u64,
    /// Our user's public keys (derived from the list key), published in every entry.
    user_keys: UserPublicKeys,
    status: Status,
    link: Option<LinkInfo>,
    ever_linked: bool,
    /// How the last publish we made on our own (on a link's coming up) ended: the
    /// replicas, or why not. None until one has.
    own_publish: Option<Result<u8, String>>,
    next_tag: u64,
    login_out: BTreeMap<u64, LoginOut>,
    refresh: Option<ListRefresh>,
    again: Option<Again>,
    waiting: VecDeque<Entry>,
    user_out: usize,
    user_queued: VecDeque<(u64, UserOp, BuddyOp)>,
    list_due: Option<Instant>,
    listed_at: Option<Instant>,
    refreshed_at: Instant,
    revocations_out: bool,
    tell_all_on_link: bool,
    fanout: Option<FanOut>,
    /// When the next notice of a fan-out may go (kept across fan-outs, so one that
    /// follows another does not start with a burst).
    fanout_next: Instant,
    requests_out: BTreeMap<u64, ReqFor>,
    requests: VecDeque<(u64, Request)>,
    effects: VecDeque<(u64, Effect)>,
    events: VecDeque<Event>,
    completions: VecDeque<(u64, BuddyResult)>,
    signals: VecDeque<Signal>,
    stats: BuddiesStats,
}

impl BuddiesCore {
    /// The machine at login, before any link; `rng` seals the contacts' records.
    pub fn new(cfg: BuddiesConfig, now: Now, rng: StdRng) -> Self {
        Self {
            status: cfg.status,
            user_keys: UserKeys::derive(&cfg.list_key).public(),
            cfg,
            rng,
            book: BuddyBook::default(),
            entries: VecDeque::new(),
            signed_ms: 0,
            link: None,
            ever_linked: false,
            own_publish: None,
            next_tag: 1,
            login_out: BTreeMap::new(),
            refresh: None,
            again: None,
            waiting: VecDeque::new(),
            user_out: 0,
            user_queued: VecDeque::new(),
            list_due: None,
            listed_at: None,
            refreshed_at: now.mono,
            revocations_out: false,
            tell_all_on_link: false,
            fanout: None,
            fanout_next: now.mono,
            requests_out: BTreeMap::new(),
            requests: VecDeque::new(),
            effects: VecDeque::new(),
            events: VecDeque::new(),
            completions: VecDeque::new(),
            signals: VecDeque::new(),
            stats: BuddiesStats::default(),
        }
    }

    /// The contacts, with the presence buddies pushed.
    pub fn buddies(&self) -> Vec<Buddy> {
        self.book.contacts()
    }

    /// A number that changes whenever the contacts or their relations may have.
    pub fn list_revision(&self) -> u64 {
        self.book.revision()
    }

    /// The next verified buddy entry that brought news (for the chat: its user keys).
    pub fn poll_entry(&mut self) -> Option<Entry> {
        self.entries.pop_front()
    }

    /// Requests waiting for our answer.
    pub fn buddy_requests(&self) -> Vec<Incoming> {
        self.book.requests().to_vec()
    }

    /// Our status.
    pub fn status(&self) -> Status {
        self.status
    }

    /// Counters.
    pub fn stats(&self) -> BuddiesStats {
        self.stats
    }

    /// How the last publish made on a link's coming up ended (the replicas, or why not);
    /// None until one has. The login waits for it rather than publishing twice.
    pub fn own_publish(&self) -> Option<&Result<u8, String>> {
        self.own_publish.as_ref()
    }

    /// Whether a list read is under way.
    pub fn refreshing(&self) -> bool {
        self.refresh.is_some()
    }

    /// Presence notices waiting for a list read.
    pub fn presence_waiting(&self) -> usize {
        self.waiting.len()
    }

    /// Buddies still to be told in the fan-out under way.
    pub fn fanout_left(&self) -> usize {
        self.fanout.as_ref().map_or(0, |f| f.targets.len())
    }

    fn tag(&mut self) -> u64 {
        let t = self.next_tag;
        self.next_tag += 1;
        t
    }

    fn me(&self) -> String {
        self.cfg.credential.subject.to_ascii_lowercase()
    }

    fn login_deadline(&self) -> Duration {
        self.cfg.login_timeout * self.cfg.login_servers.max(1) as u32 + LOGIN_DEADLINE_SLACK
    }

    fn emit_login(&mut self, now: Now, call: LoginCall, purpose: LoginFor) -> u64 {
        let tag = self.tag();
        let label = match &call {
            LoginCall::Buddy(op) => op.label(),
            LoginCall::Revocations => "revocations",
        };
        let deadline = now.mono + self.login_deadline();
        self.login_out.insert(tag, LoginOut { purpose, label, deadline });
        self.effects.push_back((tag, Effect::Login(call)));
        tag
    }

    fn emit_request(&mut self, request: Request, purpose: ReqFor) -> Option<u64> {
        if self.requests.len() >= REQUESTS_QUEUED_MAX {
            self.stats.requests_dropped += 1;
            return None;
        }
        let tag = self.tag();
        self.requests_out.insert(tag, purpose);
        self.requests.push_back((tag, request));
        Some(tag)
    }

    fn push_event(&mut self, e: Event) {
        if self.events.len() >= EVENTS_QUEUED_MAX {
            self.stats.events_dropped += 1;
            if let Some(i) = self.events.iter().position(|x| matches!(x, Event::Presence { .. })) {
                self.events.remove(i);
            } else if matches!(e, Event::Presence { .. }) {
                return;
            } else {
                let i = self.events.iter().position(|x| !matches!(x, Event::Call { .. })).unwrap_or(0);
                self.events.remove(i);
            }
        }
        self.events.push_back(e);
    }

    // ---- links -------------------------------------------------------------------

    /// A link to a super node is up. The first one starts the login sequence: our entry
    /// published, the list read, then every buddy told. A later one (after a failover)
    /// publishes there and tells the buddies known online (all of them when a presence
    /// refresh waited for it).
    pub fn on_link_up(&mut self, now: Now, info: LinkInfo) {
        self.link = Some(info);
        self.publish_entry(now, None);
        if !self.ever_linked {
            self.ever_linked = true;
            self.ask_refresh(now, None, true);
        } else {
            self.refreshed_at = now.mono;
            let all = std::mem::take(&mut self.tell_all_on_link);
            self.tell_buddies(now, all);
        }
    }

    /// The link ended: the fan-out under way stops (the next link tells again).
    pub fn on_link_down(&mut self) {
        self.link = None;
        self.fanout = None;
    }

    // ---- commands ----------------------------------------------------------------

    /// Sets our status and profile: publishes the entry and tells the buddies known
    /// online. Completes with the replicas when the super node answers the publish.
    pub fn publish(&mut self, now: Now, status: Status, profile: Profile) -> u64 {
        self.status = status;
        self.cfg.profile = profile;
        let tag = self.tag();
        self.publish_entry(now, Some(tag));
        self.tell_buddies(now, false);
        tag
    }

    /// Reads the list and the pending requests again; completes when a read that began
    /// after this call has ended.
    pub fn refresh(&mut self, now: Now) -> u64 {
        let tag = self.tag();
        self.ask_refresh(now, Some(tag), false);
        tag
    }

    /// Adds `user`, asking for authorization with `message`; completes with the relation
    /// (authorized at once if they had asked us first).
    pub fn add_buddy(&mut self, now: Now, user: &str, message: &str) -> u64 {
        let sealed = self.seal(now, user);
        let op = BuddyOp::Add { contact: user.to_owned(), sealed, message: message.to_owned() };
        self.user_op(now, UserOp::Add { user: user.to_owned() }, op)
    }

    /// Accepts or declines `from`'s request; completes with the relation.
    pub fn answer_buddy(&mut self, now: Now, from: &str, accept: bool) -> u64 {
        let sealed = if accept { self.seal(now, from) } else { Vec::new() };
        let op = BuddyOp::Answer { from: from.to_owned(), accept, sealed };
        self.user_op(now, UserOp::Answer { from: from.to_owned(), accept }, op)
    }

    /// Takes `user` off the list.
    pub fn remove_buddy(&mut self, now: Now, user: &str) -> u64 {
        let op = BuddyOp::Remove { contact: user.to_owned() };
        self.user_op(now, UserOp::Remove { user: user.to_owned() }, op)
    }

    /// Blocks `user`: their requests are dropped, they get no presence.
    pub fn block_buddy(&mut self, now: Now, user: &str) -> u64 {
        let sealed = self.seal(now, user);
        let op = BuddyOp::Block { contact: user.to_owned(), sealed };
        self.user_op(now, UserOp::Block { user: user.to_owned() }, op)
    }

    fn seal(&mut self, now: Now, user: &str) -> Vec<u8> {
        let contact = Contact { user: user.to_owned(), added_at: now.unix_ms / 1000 };
        let mut nonce = [0; 12];
        self.rng.fill_bytes(&mut nonce);
        record::seal_with_nonce(&self.cfg.list_key, &self.me(), &contact, nonce)
    }

    fn user_op(&mut self, now: Now, user: UserOp, op: BuddyOp) -> u64 {
        let tag = self.tag();
        if self.user_out < USER_OPS_IN_FLIGHT_MAX {
            self.user_out += 1;
            self.emit_login(now, LoginCall::Buddy(op), LoginFor::User { tag, op: user });
        } else if self.user_queued.len() < USER_OPS_QUEUED_MAX {
            self.user_queued.push_back((tag, user, op));
        } else {
            let e = HostError::Refused("too many buddy operations pending".into());
            self.completions.push_back((tag, Err(e)));
        }
        tag
    }

    // ---- presence out ------------------------------------------------------------

    /// Signs our entry: `for_buddies` gives the real status and where to reach us; the
    /// index copy never carries our address, and an invisible host's looks offline.
    fn sign_entry(&mut self, now: Now, for_buddies: bool) -> Option<Entry> {
        let link = self.link.as_ref()?;
        let timestamp_ms = now.unix_ms.max(self.signed_ms + 1);
        let hidden = !for_buddies && self.status == Status::Invisible;
        let shown = if hidden { Status::Offline } else { self.status };
        let body = EntryBody {
            user: self.cfg.credential.subject.clone(),
            credential: self.cfg.credential.encode(),
            status: shown,
            supernode: link.supernode.clone(),
            public_addr: (for_buddies && shown != Status::Offline).then_some(link.public_addr),
            nat: link.nat,
            profile: self.cfg.profile.clone(),
            last_seen: timestamp_ms / 1000,
            timestamp_ms,
            user_keys: Some(self.user_keys),
        };
        match Entry::sign(body, &self.cfg.credential, &self.cfg.key) {
            Ok(e) => {
                self.signed_ms = timestamp_ms;
                Some(e)
            }
            Err(e) => {
                tracing::warn!(error = %e, "our entry does not sign");
                None
            }
        }
    }

    /// Publishes our index entry; `tag`: a user's publish waiting for the answer.
    fn publish_entry(&mut self, now: Now, tag: Option<u64>) {
        match self.sign_entry(now, false) {
            Some(e) => {
                if self.emit_request(Request::Publish { entry: e.encode() }, ReqFor::Publish { tag }).is_none()
                    && let Some(t) = tag
                {
                    self.completions.push_back((t, Err(HostError::Refused("too many requests queued".into()))));
                }
            }
            None => {
                if let Some(t) = tag {
                    let why = if self.link.is_none() { "no link to a super node" } else { "our entry does not sign" };
                    self.completions.push_back((t, Err(HostError::Refused(why.into()))));
                }
            }
        }
    }

    /// Tells one buddy our presence (`via`: their super node, or empty).
    fn tell_presence(&mut self, now: Now, user: &str, via: String) {
        let Some(entry) = self.sign_entry(now, true) else { return };
        let body = Notice::Presence { entry: entry.encode() }.encode();
        let f = Request::Forward { to: user.to_owned(), via, body, class: Class::Presence };
        self.emit_request(f, ReqFor::Forward);
    }

    /// Tells `user` our relation changed, so they read their list.
    fn tell_list_changed(&mut self, user: &str) {
        if self.link.is_none() {
            return;
        }
        let body = Notice::ListChanged { from: self.cfg.credential.subject.clone() }.encode();
        let f = Request::Forward { to: user.to_owned(), via: String::new(), body, class: Class::User };
        self.emit_request(f, ReqFor::Forward);
    }

    /// Tells every authorized buddy (`all`), or those known online, our presence: a
    /// fan-out paced at [`FORWARDS_PER_SECOND`]. One under way takes the new entry and
    /// the new targets.
    pub fn tell_buddies(&mut self, now: Now, all: bool) {
        let Some(entry) = self.sign_entry(now, true) else { return };
        let body = Notice::Presence { entry: entry.encode() }.encode();
        let targets = self
            .book
            .authorized(now.unix_ms / 1000)
            .into_iter()
            .filter(|(_, via)| all || via.is_some())
            .map(|(user, via)| (user, via.unwrap_or_default()));
        match &mut self.fanout {
            Some(f) => {
                f.body = body;
                for t in targets {
                    if f.queued.insert(t.clone()) {
                        f.targets.push_back(t);
                    }
                }
            }
            None => {
                let targets: VecDeque<_> = targets.collect();
                if !targets.is_empty() {
                    let queued = targets.iter().cloned().collect();
                    self.fanout = Some(FanOut { body, targets, queued });
                }
            }
        }
        self.step_fanout(now);
    }

    /// One notice of the fan-out when it is due; the next no sooner than a gap later
    /// (a late step does not catch up in a burst).
    fn step_fanout(&mut self, now: Now) {
        let Some(f) = self.fanout.as_mut() else { return };
        if self.fanout_next > now.mono {
            return;
        }
        let Some((to, via)) = f.targets.pop_front() else {
            self.fanout = None;
            return;
        };
        f.queued.remove(&(to.clone(), via.clone()));
        self.fanout_next = now.mono + FANOUT_GAP;
        let body = f.body.clone();
        if f.targets.is_empty() {
            self.fanout = None;
        }
        self.emit_request(Request::Forward { to, via, body, class: Class::Presence }, ReqFor::Forward);
    }

    // ---- presence in -------------------------------------------------------------

    /// A notice from another host: presence and list changes are handled here; call
    /// messages belong to the calls and are ignored.
    pub fn on_notice(&mut self, now: Now, notice: &Notice) {
        match notice {
            Notice::Presence { entry } => self.on_presence(now, entry),
            Notice::ListChanged { from } => {
                tracing::debug!(%from, "buddy list changed; reading it again");
                self.read_list_soon(now);
            }
            Notice::Call { .. } | Notice::Chat { .. } => {}
        }
    }

    fn on_presence(&mut self, now: Now, bytes: &[u8]) {
        let Ok(e) = Entry::decode(bytes) else {
            self.stats.presence_invalid += 1;
            tracing::debug!("dropped a malformed presence notice");
            return;
        };
        if let Err(why) = e.verify(&self.cfg.trusted, now.unix_ms) {
            self.stats.presence_invalid += 1;
            tracing::info!(user = %e.user, %why, "dropped a presence notice that does not verify");
            return;
        }
        self.apply_presence(now, e, true);
    }

    fn apply_presence(&mut self, now: Now, e: Entry, may_wait: bool) {
        let secs = now.unix_ms / 1000;
        match self.book.on_presence(&e, secs) {
            PresenceOutcome::Changed { came_online } => {
                // A buddy's verified entry carries their user keys: the chat needs no
                // lookup to write to them.
                if e.user_keys.is_some() && self.entries.len() < ENTRIES_OUT_MAX {
                    self.entries.push_back(e.clone());
                }
                if came_online {
                    // They may not know ours: a buddy that logs in tells its buddies, and
                    // each answers once.
                    self.tell_presence(now, &e.user, e.supernode.clone());
                }
                let status = Presence::from_entry(&e).shown(secs);
                self.push_event(Event::Presence { user: e.user.clone(), status, last_seen: e.last_seen });
            }
            PresenceOutcome::Stale => {}
            PresenceOutcome::NotABuddy => {
                // They may have just accepted us (the login server knows), or the list
                // being read may hold them.
                let asked = self.book.relation(&e.user) == Some(Relation::Requested);
                let reading = self.refresh.is_some() || self.again.is_some();
                if may_wait && (asked || reading) {
                    self.hold(e);
                    if asked {
                        self.read_list_soon(now);
                    }
                } else {
                    tracing::debug!(user = %e.user, "presence from someone not authorized");
                }
            }
        }
    }

    /// A read of the list for a hint (a list-changed notice anyone could forge, a
    /// presence from someone we asked): at most one a second, by the timer.
    fn read_list_soon(&mut self, now: Now) {
        let earliest = self.listed_at.map_or(now.mono, |t| (t + LIST_READ_GAP).max(now.mono));
        self.list_due.get_or_insert(earliest);
    }

    fn hold(&mut self, e: Entry) {
        if let Some(i) = self.waiting.iter().position(|w| w.user.eq_ignore_ascii_case(&e.user)) {
            if self.waiting[i].timestamp_ms < e.timestamp_ms {
                self.waiting[i] = e;
            }
            return;
        }
        if self.waiting.len() >= PRESENCE_WAITING_MAX {
            self.waiting.pop_front();
            self.stats.presence_waiting_dropped += 1;
        }
        self.waiting.push_back(e);
    }

    // ---- the list ----------------------------------------------------------------

    fn ask_refresh(&mut self, now: Now, waiter: Option<u64>, tell_all: bool) {
        if self.refresh.is_some() {
            let again = self.again.get_or_insert_with(Again::default);
            again.waiters.extend(waiter);
            again.tell_all |= tell_all;
            return;
        }
        self.start_refresh(now, waiter.into_iter().collect(), tell_all);
    }

    fn start_refresh(&mut self, now: Now, waiters: Vec<u64>, tell_all: bool) {
        self.refresh = Some(ListRefresh {
            rows: Vec::new(),
            after: None,
            pages: 0,
            page: Read::Out,
            page_tries: 0,
            requests: Read::Out,
            requests_tries: 0,
            waiters,
            tell_all,
        });
        self.emit_login(now, LoginCall::Buddy(BuddyOp::List { after: None }), LoginFor::Page);
        self.emit_login(now, LoginCall::Buddy(BuddyOp::Requests), LoginFor::Requests);
    }

    fn on_page(&mut self, now: Now, r: Result<LoginAnswer, AccountError>, retry: bool) {
        let Some(f) = self.refresh.as_mut() else { return };
        let mut next = None;
        let failed = match r {
            Ok(LoginAnswer::Buddy(BuddyAnswer::Page { rows, more })) => {
                f.pages += 1;
                let last = rows.last().map(|r| r.tag);
                if last.is_some() && f.after.is_some() && last <= f.after {
                    Some(HostError::Refused("the login server's list pages do not move forward".into()))
                } else if f.rows.len() + rows.len() > CONTACTS_MAX + PAGE_ROWS || (more && f.pages >= PAGES_MAX) {
                    Some(HostError::Refused("the login server's list does not end".into()))
                } else {
                    f.rows.extend(rows);
                    if !more || last.is_none() {
                        f.page = Read::Got(());
                    } else {
                        f.after = last;
                        f.page = Read::Out;
                        next = Some(last);
                    }
                    None
                }
            }
            Ok(other) => Some(HostError::Refused(format!("unexpected answer to List: {other:?}"))),
            Err(AccountError::Unreachable(e)) if retry && f.page_tries < READ_RETRIES.len() => {
                tracing::info!(error = %e, "a page of the buddy list could not be read; trying again");
                f.page = Read::RetryAt(now.mono + READ_RETRIES[f.page_tries]);
                f.page_tries += 1;
                self.stats.reads_retried += 1;
                None
            }
            Err(e) => Some(HostError::Account(e)),
        };
        if let Some(after) = next {
            self.emit_login(now, LoginCall::Buddy(BuddyOp::List { after }), LoginFor::Page);
        }
        match failed {
            Some(e) => self.end_refresh(now, Err(e)),
            None => self.finish_if_read(now),
        }
    }

    fn on_requests(&mut self, now: Now, r: Result<LoginAnswer, AccountError>, retry: bool) {
        let Some(f) = self.refresh.as_mut() else { return };
        let failed = match r {
            Ok(LoginAnswer::Buddy(BuddyAnswer::Requests { items })) => {
                f.requests = Read::Got(items);
                None
            }
            Ok(other) => Some(HostError::Refused(format!("unexpected answer to Requests: {other:?}"))),
            Err(AccountError::Unreachable(e)) if retry && f.requests_tries < READ_RETRIES.len() => {
                tracing::info!(error = %e, "the buddy requests could not be read; trying again");
                f.requests = Read::RetryAt(now.mono + READ_RETRIES[f.requests_tries]);
                f.requests_tries += 1;
                self.stats.reads_retried += 1;
                None
            }
            Err(e) => Some(HostError::Account(e)),
        };
        match failed {
            Some(e) => self.end_refresh(now, Err(e)),
            None => self.finish_if_read(now),
        }
    }

    fn finish_if_read(&mut self, now: Now) {
        let Some(f) = self.refresh.as_mut() else { return };
        if !matches!((&f.page, &f.requests), (Read::Got(()), Read::Got(_))) {
            return;
        }
        if let Read::Got(items) = std::mem::replace(&mut f.requests, Read::Out) {
            self.end_refresh(now, Ok(items));
        }
    }

    /// The refresh is over: on success the book takes the rows and the requests, with
    /// events for what changed. Either way the presence waiting is applied, the waiters
    /// complete, and a refresh asked for meanwhile starts.
    fn end_refresh(&mut self, now: Now, outcome: Result<Vec<Incoming>, HostError>) {
        let Some(f) = self.refresh.take() else { return };
        // Reads still out are answered into nothing.
        self.login_out.retain(|_, o| !matches!(o.purpose, LoginFor::Page | LoginFor::Requests));
        let ok = outcome.is_ok();
        match outcome {
            Ok(items) => {
                let (changed, unreadable) = self.book.load(&self.me(), &self.cfg.list_key, &f.rows);
                if unreadable > 0 {
                    tracing::warn!(unreadable, "some buddy-list records do not open with this password");
                }
                for r in self.book.set_requests(items) {
                    self.push_event(Event::Request { from: r.from, message: r.message });
                }
                for (user, relation) in changed {
                    if matches!(relation, Relation::Authorized | Relation::Declined) {
                        self.push_event(Event::Answered { user: user.clone(), relation });
                    }
                    if relation == Relation::Authorized {
                        self.tell_presence(now, &user, String::new());
                    }
                }
                for w in f.waiters {
                    self.completions.push_back((w, Ok(BuddyDone::Done)));
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "could not read the buddy list");
                for w in f.waiters {
                    self.completions.push_back((w, Err(clone_error(&e))));
                }
            }
        }
        for e in std::mem::take(&mut self.waiting) {
            self.apply_presence(now, e, false);
        }
        if ok && f.tell_all {
            self.tell_buddies(now, true);
        }
        if let Some(a) = self.again.take() {
            // A login whose first read failed still tells everyone after the next.
            self.start_refresh(now, a.waiters, a.tell_all || (!ok && f.tell_all));
        }
    }

    // ---- results -----------------------------------------------------------------

    /// The outcome of the login effect under `tag`.
    pub fn on_login_result(&mut self, now: Now, tag: u64, r: Result<LoginAnswer, AccountError>) {
        let Some(out) = self.login_out.remove(&tag) else {
            self.stats.login_late += 1;
            tracing::debug!(tag, "a login answer for nothing pending");
            // An operation its caller was told had timed out may have been applied at
            // the login server after all: the book reads the list again to catch up.
            if r.is_ok() {
                self.read_list_soon(now);
            }
            return;
        };
        self.on_login(now, out.purpose, r, true);
    }

    fn on_login(&mut self, now: Now, purpose: LoginFor, r: Result<LoginAnswer, AccountError>, retry: bool) {
        match purpose {
            LoginFor::Page => self.on_page(now, r, retry),
            LoginFor::Requests => self.on_requests(now, r, retry),
            LoginFor::User { tag, op } => {
                self.user_out -= 1;
                let result = self.on_user_answer(now, op, r);
                self.completions.push_back((tag, result));
                if let Some((tag, user, op)) = self.user_queued.pop_front() {
                    self.user_out += 1;
                    self.emit_login(now, LoginCall::Buddy(op), LoginFor::User { tag, op: user });
                }
            }
            LoginFor::Revocations => {
                self.revocations_out = false;
                let adopted = match r {
                    Ok(LoginAnswer::Revocations(v)) => v,
                    Ok(other) => {
                        tracing::warn!(?other, "unexpected answer to a revocation query");
                        None
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "no revocation list");
                        None
                    }
                };
                self.after_revocations(now, adopted);
            }
        }
    }

    fn on_user_answer(&mut self, now: Now, op: UserOp, r: Result<LoginAnswer, AccountError>) -> BuddyResult {
        let label = op.label();
        let answer = match r {
            Ok(LoginAnswer::Buddy(a)) => a,
            Ok(other) => return Err(HostError::Refused(format!("unexpected answer to {label}: {other:?}"))),
            Err(e) => return Err(HostError::Account(e)),
        };
        match (op, answer) {
            (UserOp::Add { user }, BuddyAnswer::Relation(relation)) => {
                self.book.set(&user, relation);
                self.tell_list_changed(&user);
                if relation == Relation::Authorized {
                    self.tell_presence(now, &user, String::new());
                }
                Ok(BuddyDone::Relation(relation))
            }
            (UserOp::Answer { from, accept }, BuddyAnswer::Relation(relation)) => {
                if accept {
                    self.book.set(&from, Relation::Authorized);
                    self.tell_presence(now, &from, String::new());
                } else {
                    let left = self.book.requests().iter().filter(|r| r.from != from).cloned().collect();
                    self.book.set_requests(left);
                }
                self.tell_list_changed(&from);
                Ok(BuddyDone::Relation(relation))
            }
            (UserOp::Remove { user }, _) => {
                self.book.remove(&user);
                Ok(BuddyDone::Done)
            }
            (UserOp::Block { user }, _) => {
                self.book.set(&user, Relation::Blocked);
                Ok(BuddyDone::Done)
            }
            (op, other) => Err(HostError::Refused(format!("unexpected answer to {}: {other:?}", op.label()))),
        }
    }

    fn after_revocations(&mut self, now: Now, adopted: Option<u64>) {
        // A revoked super node will not tell us it was revoked: the login server does.
        let revoked = adopted.is_some()
            && self
                .link
                .as_ref()
                .is_some_and(|l| self.cfg.trusted.revoked().contains(CredentialKind::SuperNode, l.supernode_key));
        if revoked {
            tracing::warn!("our super node's credential is revoked; leaving it");
            self.signals.push_back(Signal::SupernodeRevoked);
            self.tell_all_on_link = true;
            return;
        }
        if self.link.is_none() {
            self.tell_all_on_link = true;
            return;
        }
        if self.status != Status::Invisible {
            self.publish_entry(now, None);
        }
        self.tell_buddies(now, true);
    }

    /// The outcome of the request submitted under `tag`.
    pub fn on_request_result(&mut self, _now: Now, tag: u64, r: OpResult) {
        let Some(purpose) = self.requests_out.remove(&tag) else {
            tracing::debug!(tag, "a request result for nothing pending");
            return;
        };
        match purpose {
            ReqFor::Forward => match r {
                Ok(Answer::Forwarded(a)) if a.code == 0 => {}
                Ok(_) | Err(_) => self.stats.forwards_failed += 1,
            },
            ReqFor::Publish { tag } => {
                let result = match r {
                    Ok(Answer::Published(ack)) if ack.code == 0 => Ok(BuddyDone::Published { replicas: ack.replicas }),
                    Ok(Answer::Published(ack)) => {
                        Err(HostError::Refused(format!("{}: {}", ErrorCode::from_code(ack.code).label(), ack.detail)))
                    }
                    Ok(other) => Err(HostError::Refused(format!("unexpected answer to a publish: {other:?}"))),
                    Err(RequestError::Refused(e)) => Err(HostError::Refused(e.detail)),
                    Err(RequestError::TimedOut(_)) => {
                        Err(HostError::Refused("the super node did not answer the publish".into()))
                    }
                    Err(e) => Err(HostError::Refused(e.to_string())),
                };
                match (tag, result) {
                    (Some(t), result) => self.completions.push_back((t, result)),
                    (None, Ok(done)) => {
                        tracing::debug!("presence published");
                        let replicas = match done {
                            BuddyDone::Published { replicas } => replicas,
                            _ => 0,
                        };
                        self.own_publish = Some(Ok(replicas));
                    }
                    (None, Err(e)) => {
                        tracing::warn!(error = %e, "presence not published");
                        self.own_publish = Some(Err(e.to_string()));
                    }
                }
            }
        }
    }

    // ---- timers ------------------------------------------------------------------

    /// Timers: login deadlines, reads to make again, the list read a change asked for,
    /// the presence refresh, the fan-out's next notice. Bounded work: one notice at most.
    pub fn handle_timeout(&mut self, now: Now) {
        let expired: Vec<u64> =
            self.login_out.iter().filter(|(_, o)| o.deadline <= now.mono).map(|(t, _)| *t).collect();
        for tag in expired {
            let Some(out) = self.login_out.remove(&tag) else { continue };
            self.stats.login_timed_out += 1;
            let e =
                AccountError::Unreachable(format!("no answer to the {} within {:?}", out.label, self.login_deadline()));
            self.on_login(now, out.purpose, Err(e), false);
        }
        if let Some(f) = self.refresh.as_mut()
            && let Read::RetryAt(at) = f.page
            && at <= now.mono
        {
            f.page = Read::Out;
            let after = f.after;
            self.emit_login(now, LoginCall::Buddy(BuddyOp::List { after }), LoginFor::Page);
        }
        if let Some(f) = self.refresh.as_mut()
            && let Read::RetryAt(at) = f.requests
            && at <= now.mono
        {
            f.requests = Read::Out;
            self.emit_login(now, LoginCall::Buddy(BuddyOp::Requests), LoginFor::Requests);
        }
        if self.list_due.is_some_and(|d| d <= now.mono) {
            self.list_due = None;
            self.listed_at = Some(now.mono);
            self.ask_refresh(now, None, false);
        }
        if self.refreshed_at + self.cfg.presence_refresh <= now.mono {
            self.refreshed_at = now.mono;
            if !self.revocations_out {
                self.revocations_out = true;
                self.emit_login(now, LoginCall::Revocations, LoginFor::Revocations);
            }
        }
        self.step_fanout(now);
    }

    /// When `handle_timeout` next has work.
    pub fn poll_timeout(&self) -> Option<Instant> {
        let deadlines = self.login_out.values().map(|o| o.deadline);
        let retries = self.refresh.iter().flat_map(|f| {
            let page = match f.page {
                Read::RetryAt(t) => Some(t),
                _ => None,
            };
            let requests = match f.requests {
                Read::RetryAt(t) => Some(t),
                _ => None,
            };
            page.into_iter().chain(requests)
        });
        let presence = Some(self.refreshed_at + self.cfg.presence_refresh);
        let fanout = self.fanout.as_ref().map(|_| self.fanout_next);
        deadlines.chain(retries).chain(self.list_due).chain(presence).chain(fanout).min()
    }

    // ---- outputs -----------------------------------------------------------------

    /// The next request for the super node, under this machine's tag.
    pub fn poll_request(&mut self) -> Option<(u64, Request)> {
        self.requests.pop_front()
    }

    /// The next login effect, under this machine's tag.
    pub fn poll_effect(&mut self) -> Option<(u64, Effect)> {
        self.effects.pop_front()
    }

    /// The next event for the application.
    pub fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }

    /// The next finished command.
    pub fn poll_completion(&mut self) -> Option<(u64, BuddyResult)> {
        self.completions.pop_front()
    }

    /// The next thing the rest of the host must do.
    pub fn poll_signal(&mut self) -> Option<Signal> {
        self.signals.pop_front()
    }
}

/// The same error again, for the second waiter of one refresh (`HostError` holds
/// errors that cannot be cloned).
fn clone_error(e: &HostError) -> HostError {
    match e {
        HostError::Account(AccountError::Refused(m)) => HostError::Account(AccountError::Refused(m.clone())),
        HostError::Account(AccountError::Unreachable(s)) => HostError::Account(AccountError::Unreachable(s.clone())),
        HostError::Account(AccountError::Protocol { addr, what }) => {
            HostError::Account(AccountError::Protocol { addr: *addr, what: what.clone() })
        }
        other => HostError::Refused(other.to_string()),
    }
}

#[cfg(test)]
mod tests;
