//! The host core: the link, the ladder and the calls joined into one sans-IO machine,
//! with the index operations (publish, find, search) as commands.
//!
//! # The driving contract
//!
//! [`HostCore`] has no socket, no clock, no OS randomness and no `.await`. Its shell
//! (or a test on virtual time) builds it with the credential and key the login server
//! gave (argon2 and the login stay outside), which starts the ladder, then:
//!
//! 1. Feeds one input: [`HostCore::handle_datagram`] (port P),
//!    [`HostCore::handle_probe_datagram`] (a call's extra socket),
//!    [`HostCore::handle_tcp`], [`HostCore::handle_effect`], [`HostCore::on_send_failed`],
//!    [`HostCore::handle_timeout`], or a [`Command`] through [`HostCore::command`], whose
//!    result comes back under the [`OpId`] it returns.
//! 2. Drains every output until `None`: [`HostCore::poll_transmit`],
//!    [`HostCore::poll_effect`], [`HostCore::poll_event`], [`HostCore::poll_completion`].
//! 3. Sleeps until [`HostCore::poll_timeout`] or the next input.
//!
//! # Routing
//!
//! - Datagrams on port P: the link's super node first, then the ladder (the current
//!   attempt's node, a NAT probe's answer), then the calls' media; the rest is counted.
//! - TCP events: the ladder names connections in `1..CONN_BASE`, the calls from
//!   `calls::CONN_BASE` up; a link over TCP uses the connection its attempt opened.
//! - Effects get their [`EffectId`] here, and their results go back to the part that
//!   asked.
//! - Requests of the parts (`(tag, Request)`) are submitted to the link, and each
//!   outcome goes back by `OpId → (part, tag)`; with no link, they fail `LinkDown` at
//!   once. Messages without an answer (`RelayRelease`, `CallStats`) are sealed as they are.
//! - A notice is decoded once: a call's goes to the calls, presence and list changes
//!   to the buddies.
//! - The buddies' login-server calls are effects (`Effect::Login`) like any other.
//!
//! # Time
//!
//! [`HostCore::handle_timeout`] runs the calls first (every due media frame of every
//! call, before anything else), then the ladder, then the link and its request table,
//! then the buddies' timers (list reads, the presence fan-out, the presence refresh).
//! Every part does bounded work per input, so no frame waits for signalling.
//!
//! # Life cycle
//!
//! Each time the ladder joins a super node the link is built (or replaced, keeping
//! the request table, at the next epoch), the calls are told where we stand, and the
//! buddies publish our entry (with the NAT kind login found) and tell the buddies (the
//! first time after reading the list). When the link ends, when the buddies find our
//! super node revoked, or on [`Command::Reconnect`], the ladder rejoins without the node
//! lost. [`Command::Logout`] publishes us offline, says Bye and stops the ladder.

use super::buddies::{self, BuddiesConfig, BuddiesCore, BuddyDone, Signal};
use super::calls::{CONN_BASE, CallsConfig, CallsCore, LinkInfo, Surroundings};
use super::chat::{ChatConfig, ChatCore, ChatEvent, Sent};
use super::files::{FileDone, FilesConfig, FilesCore, FilesOut};
use super::io::{ConnId, Dest, Effect, EffectId, EffectResult, TcpEvent, Transmit};
use super::ladder::{Identity, Joined, Ladder, LadderSettings, Lost, Outcome, Purpose};
use super::pending::{Answer, OpId, Request, RequestError};
use super::{CoreEvent, CoreLink, Now};
use crate::buddy::op::Incoming;
use crate::buddy::{Notice, Relation};
use crate::crypto::password::ListKey;
use crate::crypto::user::UserKeys;
use crate::host::LoginReport;
use crate::host::buddies::Buddy;
use crate::host::buddies::Event;
use crate::host::cache::Cache;
use crate::index::{Entry, Profile, Status};
use rand::SeedableRng;
use rand::rngs::StdRng;
use std::collections::{BTreeMap, VecDeque};
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

/// The TCP connection ids the ladder names (the calls name theirs from `CONN_BASE`).
pub const LADDER_CONNS: std::ops::Range<u32> = 1..CONN_BASE;
/// Most application events kept unread; beyond, the newest are dropped and counted.
pub const EVENTS_MAX: usize = 4096;
/// Most outputs of each kind queued for the shell.
pub const QUEUED_MAX: usize = 65_536;

/// How the host behaves (no `Debug`: it holds the list key).
#[derive(Clone)]
pub struct HostConfig {
    /// The ladder's bootstrap nodes, timeouts and port P.
    pub ladder: LadderSettings,
    /// The calls' timeouts and path choices.
    pub calls: CallsConfig,
    /// The status shown at login.
    pub status: Status,
    /// Our profile.
    pub profile: Profile,
    /// This machine's interface addresses (offered as host candidates by the calls' rules).
    pub interfaces: Vec<IpAddr>,
    /// Port P is bound on IPv6 too.
    pub v6: bool,
    /// Opens the buddy list's sealed names (from the password, at login).
    pub list_key: ListKey,
    /// One login-server request's timeout.
    pub login_timeout: Duration,
    /// How many login servers the shell tries.
    pub login_servers: usize,
    /// How often presence is refreshed.
    pub presence_refresh: Duration,
    /// The chat history file's epoch ([`crate::chat::history::History::epoch`]): names
    /// the stream this device numbers its messages in.
    pub history_epoch: u64,
}

/// A voice call's audio at our end, given when it is placed.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct CallAudio {
    /// What to play into it (48 kHz mono samples; silence after).
    pub source: Vec<i16>,
    /// Keep what it sounds like at our end, for its report.
    pub record: bool,
}

impl std::fmt::Debug for CallAudio {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CallAudio").field("samples", &self.source.len()).field("record", &self.record).finish()
    }
}

/// What the user asks of the host; each completes later under its [`OpId`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    /// Sets our status and profile and publishes our entry.
    Publish {
        /// The status shown.
        status: Status,
        /// The profile.
        profile: Profile,
    },
    /// Looks a user up (completes with the super node's answer, unverified).
    Find {
        /// Whom.
        user: String,
    },
    /// Searches profiles.
    Search {
        /// The words.
        words: String,
        /// At most this many results.
        limit: u8,
    },
    /// Looks `user` up and calls them (completes with the call id once the invite is out).
    Call {
        /// Whom.
        user: String,
        /// Call even if their entry shows them offline.
        even_if_offline: bool,
        /// What to play into it and whether to record it, set with the call itself: the
        /// other side may answer, and media start, before the caller hears the call's id.
        audio: CallAudio,
    },
    /// Accepts or declines an incoming call.
    AnswerCall {
        /// The call.
        id: [u8; 16],
        /// Accept (true) or decline.
        accept: bool,
    },
    /// Cancels or hangs up a call.
    EndCall {
        /// The call.
        id: [u8; 16],
    },
    /// Adds a buddy, asking for authorization (completes with the relation).
    AddBuddy {
        /// Whom.
        user: String,
        /// The note with the request.
        message: String,
    },
    /// Accepts or declines a buddy request (completes with the relation).
    AnswerBuddy {
        /// Who asked.
        from: String,
        /// Accept (true) or decline.
        accept: bool,
    },
    /// Takes a contact off the list.
    RemoveBuddy {
        /// Whom.
        user: String,
    },
    /// Blocks a contact.
    BlockBuddy {
        /// Whom.
        user: String,
    },
    /// Reads the buddy list again (completes when a read begun after it ends).
    RefreshBuddies,
    /// Opens a relay session for a call with the holder of `peer` (an encoded
    /// credential); completes with the grant.
    AllocateRelay {
        /// The other side's credential, encoded.
        peer: Vec<u8>,
    },
    /// Frees a relay session we opened (no answer comes; completes at once).
    ReleaseRelay {
        /// The session.
        session: u32,
    },
    /// A keepalive round trip (completes with the address the super node sees).
    Keepalive {
        /// How long to wait.
        timeout: Duration,
    },
    /// Leaves our super node for another (completes when the rejoin ends).
    Reconnect,
    /// Publishes us offline, says Bye, stops looking for super nodes.
    Logout,
    /// Sends a chat message (completes with its id and whether it was delivered or stored).
    SendChat {
        /// To whom.
        to: String,
        /// The text.
        text: String,
    },
    /// Fetches what the store holds for this device now (completes at once; the messages
    /// come as events).
    FetchChat,
    /// The user read these messages of `from`: tell them (completes at once).
    ReadChat {
        /// Who sent them.
        from: String,
        /// Their ids.
        ids: Vec<[u8; 16]>,
    },
    /// Founds a group and invites `members` (completes with the group's id once every
    /// invite is written, or fails naming who could not be invited).
    GroupCreate {
        /// The group's name.
        name: String,
        /// Who is invited.
        members: Vec<String>,
    },
    /// Sends a text to a group, by name or id (completes once the store answered for
    /// every member's copy).
    GroupSend {
        /// The group.
        group: String,
        /// The text.
        text: String,
    },
    /// Another group command: invite, remove, leave.
    Group(super::chat::GroupCommand),
    /// Offers a file to `to` (completes once they have it whole, or with status
    /// `offered` when the offer waits for them).
    SendFile {
        /// To whom.
        to: String,
        /// The file.
        path: std::path::PathBuf,
    },
}

/// What a command came to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Done {
    /// The super node's answer.
    Answer(Answer),
    /// A call was placed (the invite is on its way).
    Called([u8; 16]),
    /// A buddy command's outcome (a publish's replicas, a relation).
    Buddy(BuddyDone),
    /// A chat message the store took.
    Chat(Sent),
    /// A file transfer's end (or its offer, waiting for the recipient).
    File(FileDone),
    /// Done; nothing to tell.
    Ok,
}

/// Why a command failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum HostError {
    /// A buddy command failed (the login server, or the super node, refused or could
    /// not be reached).
    #[error(transparent)]
    Buddies(crate::host::HostError),
    /// The request to the super node failed.
    #[error(transparent)]
    Request(#[from] RequestError),
    /// A chat message could not be sent.
    #[error(transparent)]
    Chat(crate::host::HostError),
    /// The super node refused (its code's label and detail).
    #[error("refused: {0}")]
    Refused(String),
    /// The user is not in the index.
    #[error("no user {0:?} found")]
    NotFound(String),
    /// The user shows offline.
    #[error("{0} is offline")]
    Offline(String),
    /// No super node took us.
    #[error("no super node takes us: {0}")]
    NoSupernode(String),
    /// A file transfer failed.
    #[error("file transfer: {0}")]
    File(String),
}

/// A command's outcome.
pub type HostResult = Result<Done, HostError>;

/// Where the host is in its life.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Phase {
    /// The login's ladder is running.
    LoggingIn,
    /// Linked to a super node (or rejoining another after losing it).
    Online,
    /// The login found no super node.
    Failed(String),
    /// Logged out.
    LoggedOut,
}

/// Counters of the joining.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct HostStats {
    /// Datagrams on port P that no part took.
    pub foreign: u64,
    /// TCP events on connections nobody names.
    pub stray_tcp: u64,
    /// Effect results nobody asked for.
    pub stray_effects: u64,
    /// Notices that did not decode.
    pub malformed_notices: u64,
    /// Outputs dropped because the shell did not drain them.
    pub dropped: u64,
}

/// How long a logout waits for our offline entry's publish and the buddies' notices
/// before it says Bye.
pub const LOGOUT_WAIT: Duration = Duration::from_secs(5);

/// A logout under way.
#[derive(Debug, Clone, Copy)]
struct LogoutRun {
    /// The command.
    op: OpId,
    /// The buddies' publish of our offline entry (which tells the buddies online too).
    tag: u64,
    /// Whether that publish is over.
    published: bool,
    /// Bye by then, whatever is left.
    until: Instant,
}

/// How long the calls wait, after a failover, for our entry's publish before they
/// tell their peers we moved.
pub const MOVED_WAIT: Duration = Duration::from_secs(2);

/// The calls' news of a new link, held until our entry is published there.
#[derive(Debug, Clone)]
struct MovedWait {
    /// What the calls are told.
    info: LinkInfo,
    /// The publish's request, once submitted.
    publish: Option<OpId>,
    /// Told by then, whatever happened to the publish.
    until: Instant,
}

/// Who an effect is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Owner {
    Ladder(u64),
    Calls,
    Buddies(u64),
    Chat(u64),
    Files(u64),
}

/// Who waits for a request's outcome.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Waiter {
    /// A part's request, under its tag.
    Calls(u64),
    /// The buddies' request, under their tag.
    Buddies(u64),
    /// A user's command, answered as it is.
    User(OpId),
    /// The lookup before a call.
    CallLookup { op: OpId, user: String, even_if_offline: bool, audio: CallAudio },
    /// The chat's request, under its tag.
    Chat(u64),
    /// The lookup before a file call.
    FileCallLookup { transfer: [u8; 16], user: String },
    /// Whether a file's recipient shows online.
    FilePresence { transfer: [u8; 16], user: String },
}

/// What the calls learn of the rest of the host, read when they need it.
struct Around<'a> {
    buddies: &'a BuddiesCore,
    interfaces: &'a [IpAddr],
}

impl Surroundings for Around<'_> {
    fn relation(&self, user: &str) -> Option<Relation> {
        self.buddies.buddies().into_iter().find(|b| b.user.eq_ignore_ascii_case(user)).map(|b| b.relation)
    }
    fn status(&self) -> Status {
        self.buddies.status()
    }
    fn interface_addresses(&self) -> Vec<IpAddr> {
        self.interfaces.to_vec()
    }
}

/// The host as one machine; see the module's documentation for how to drive it.
pub struct HostCore {
    me: Identity,
    cfg: HostConfig,
    rng: StdRng,
    phase: Phase,
    report: LoginReport,
    profile: Profile,
    link: Option<CoreLink>,
    ladder: Ladder,
    calls: CallsCore,
    buddies: BuddiesCore,
    chat: ChatCore,
    /// The buddy list's revision the chat last saw.
    chat_list_revision: u64,
    files: FilesCore,
    /// The file offers' chat sends, by their op: the files' tag.
    file_offers: BTreeMap<OpId, u64>,
    /// When the files' timers are next due (their QUIC timers need `&mut` to ask).
    files_timeout: Option<Instant>,
    /// File calls under way (their events are not the application's).
    file_calls: std::collections::BTreeSet<[u8; 16]>,
    /// Buddy commands by the buddies' tag.
    buddy_ops: BTreeMap<u64, OpId>,
    waiters: BTreeMap<OpId, Waiter>,
    next_op: u64,
    reconnects: Vec<OpId>,
    logging_out: bool,
    /// A logout under way: the offline entry and presence going out, Bye next.
    logout: Option<LogoutRun>,
    /// After a failover, the calls wait for our entry's publish before they tell their
    /// peers we moved.
    moved: Option<MovedWait>,
    /// Why the login's ladder found no super node, until the shell takes it.
    login_error: Option<crate::host::connect::LadderError>,
    effects_owned: BTreeMap<EffectId, Owner>,
    next_effect: u64,
    transmits: VecDeque<Transmit>,
    effects: VecDeque<(EffectId, Effect)>,
    events: VecDeque<Event>,
    completions: VecDeque<(OpId, HostResult)>,
    stats: HostStats,
    #[cfg(test)]
    fault: Fault,
}

/// A deliberately broken order, to show the tests that guard the order can fail.
#[cfg(test)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Fault {
    /// As built.
    #[default]
    None,
    /// The calls' timers run after every other part's, as a loop that serves
    /// signalling before media would.
    MediaLast,
}

impl HostCore {
    /// The host of `me` (credential and key from the login server), with the host cache
    /// `cache` and the report login made so far; starts the ladder at `now`.
    pub fn new(me: Identity, cfg: HostConfig, cache: Cache, report: LoginReport, now: Now, mut rng: StdRng) -> Self {
        let ladder_rng = StdRng::seed_from_u64(rand::Rng::next_u64(&mut rng));
        let calls_rng = StdRng::seed_from_u64(rand::Rng::next_u64(&mut rng));
        let buddies_rng = StdRng::seed_from_u64(rand::Rng::next_u64(&mut rng));
        let chat_rng = StdRng::seed_from_u64(rand::Rng::next_u64(&mut rng));
        let files_rng = StdRng::seed_from_u64(rand::Rng::next_u64(&mut rng));
        let chat = ChatCore::new(
            ChatConfig {
                me: me.credential.subject.to_ascii_lowercase(),
                device: me.credential.public_key.id(),
                stream: crate::chat::message::stream_id(&me.credential.public_key.id(), cfg.history_epoch),
                trusted: me.trusted.clone(),
                list_key: cfg.list_key.clone(),
            },
            UserKeys::derive(&cfg.list_key),
            chat_rng,
        );
        let buddies = BuddiesCore::new(
            BuddiesConfig {
                credential: me.credential.clone(),
                key: me.key.clone(),
                list_key: cfg.list_key.clone(),
                trusted: me.trusted.clone(),
                login_timeout: cfg.login_timeout,
                login_servers: cfg.login_servers,
                presence_refresh: cfg.presence_refresh,
                status: cfg.status,
                profile: cfg.profile.clone(),
            },
            now,
            buddies_rng,
        );
        let ladder = Ladder::new(me.clone(), cfg.ladder.clone(), cache, LADDER_CONNS, ladder_rng);
        let calls = CallsCore::new(
            me.credential.clone(),
            me.key.clone(),
            me.trusted.clone(),
            cfg.calls.clone(),
            now.mono,
            calls_rng,
        );
        let mut core = Self {
            me,
            profile: cfg.profile.clone(),
            cfg,
            rng,
            phase: Phase::LoggingIn,
            report,
            link: None,
            ladder,
            calls,
            buddies,
            chat,
            chat_list_revision: 0,
            files: FilesCore::new(FilesConfig::default(), files_rng),
            file_offers: BTreeMap::new(),
            files_timeout: None,
            file_calls: std::collections::BTreeSet::new(),
            buddy_ops: BTreeMap::new(),
            waiters: BTreeMap::new(),
            next_op: 1,
            reconnects: Vec::new(),
            logging_out: false,
            login_error: None,
            logout: None,
            moved: None,
            effects_owned: BTreeMap::new(),
            next_effect: 1,
            transmits: VecDeque::new(),
            effects: VecDeque::new(),
            events: VecDeque::new(),
            completions: VecDeque::new(),
            stats: HostStats::default(),
            #[cfg(test)]
            fault: Fault::None,
        };
        core.ladder.login(now);
        core.flush(now);
        core
    }

    #[cfg(test)]
    pub(crate) fn set_fault(&mut self, f: Fault) {
        self.fault = f;
    }

    // ---- getters ----

    /// Where the host is in its life.
    pub fn phase(&self) -> &Phase {
        &self.phase
    }

    /// Why the login found no super node (once [`Phase::Failed`]), once.
    pub fn take_login_error(&mut self) -> Option<crate::host::connect::LadderError> {
        self.login_error.take()
    }

    /// The login report, brought up to date by every join.
    pub fn report(&self) -> &LoginReport {
        &self.report
    }

    /// Our status.
    pub fn status(&self) -> Status {
        self.buddies.status()
    }

    /// Where file transfers keep their folders and where offers are taken into; starts
    /// over the files' machine (unfinished receptions found in the folder resume).
    pub fn set_files(&mut self, now: Now, cfg: FilesConfig) {
        let rng = StdRng::seed_from_u64(rand::Rng::next_u64(&mut self.rng));
        // Offers fetched at login, before the folder was set, are taken now.
        let seen = self.files.take_unanswered();
        self.files = FilesCore::new(cfg, rng);
        for (from, body, buddy) in seen {
            self.files.on_offer(now, &from, &body, buddy);
        }
        self.flush(now);
    }

    /// The files' counters.
    pub fn files_stats(&self) -> super::files::FilesStats {
        self.files.stats()
    }

    /// Whether a file transfer runs or waits for its call.
    pub fn files_busy(&self) -> bool {
        self.files.is_busy()
    }

    /// Whether the chat has work under way (see `ChatCore::is_busy`).
    pub fn chat_busy(&self) -> bool {
        self.chat.is_busy()
    }

    /// The chat's counters.
    pub fn chat_stats(&self) -> super::chat::ChatStats {
        self.chat.stats()
    }

    /// The groups' counters.
    pub fn chat_group_stats(&self) -> super::groups::GroupStats {
        self.chat.group_stats()
    }

    /// The contacts, with the presence buddies pushed.
    pub fn buddies(&self) -> Vec<Buddy> {
        self.buddies.buddies()
    }

    /// Buddy requests waiting for our answer.
    pub fn buddy_requests(&self) -> Vec<Incoming> {
        self.buddies.buddy_requests()
    }

    /// The buddies' machine (its counters, whether a list read is under way).
    pub fn buddies_core(&self) -> &BuddiesCore {
        &self.buddies
    }

    /// Our credential.
    pub fn credential(&self) -> &crate::crypto::Credential {
        &self.me.credential
    }

    /// The link, once a super node took us.
    pub fn link(&self) -> Option<&CoreLink> {
        self.link.as_ref()
    }

    /// The ladder.
    pub fn ladder(&self) -> &Ladder {
        &self.ladder
    }

    /// The calls' getters (media, candidates, states); they change only through the
    /// core, so that what they put out is routed.
    pub fn calls(&self) -> &CallsCore {
        &self.calls
    }

    /// What to play into call `id` (48 kHz mono samples; silence after). Given once media
    /// runs (the other side answered first), it plays from its start from then on.
    pub fn set_call_audio(&mut self, id: [u8; 16], samples: Vec<i16>) {
        self.calls.set_call_audio(id, samples);
    }

    /// Keeps what call `id` sounds like at our end, for its report.
    pub fn set_call_recording(&mut self, id: [u8; 16], on: bool) {
        self.calls.set_call_recording(id, on);
    }

    /// The report of an ended call, once.
    pub fn take_call_report(&mut self, id: [u8; 16]) -> Option<crate::host::calls::CallReport> {
        self.calls.take_call_report(id)
    }

    /// Media only through a relay, or not (for calls that start from now on).
    pub fn set_relay_only(&mut self, on: bool) {
        self.calls.set_relay_only(on);
    }

    /// Relay legs over TCP even with UDP at hand, or not.
    pub fn set_relay_tcp(&mut self, on: bool) {
        self.calls.set_relay_tcp(on);
    }

    /// The call timeouts for calls that begin from now on.
    pub fn set_call_timeouts(&mut self, t: crate::call::signal::Timeouts) {
        self.calls.set_call_timeouts(t);
    }

    /// Counters.
    pub fn stats(&self) -> HostStats {
        self.stats
    }

    /// Effects whose results are still awaited.
    pub fn effects_waiting(&self) -> usize {
        self.effects_owned.len()
    }

    // ---- inputs ----

    /// A user's command; its result comes back from [`HostCore::poll_completion`].
    pub fn command(&mut self, now: Now, c: Command) -> OpId {
        let op = OpId(self.next_op);
        self.next_op += 1;
        match c {
            Command::Publish { status, profile } => {
                self.profile = profile.clone();
                let tag = self.buddies.publish(now, status, profile);
                self.buddy_ops.insert(tag, op);
            }
            Command::AddBuddy { user, message } => {
                let tag = self.buddies.add_buddy(now, &user, &message);
                self.buddy_ops.insert(tag, op);
            }
            Command::AnswerBuddy { from, accept } => {
                let tag = self.buddies.answer_buddy(now, &from, accept);
                self.buddy_ops.insert(tag, op);
            }
            Command::RemoveBuddy { user } => {
                let tag = self.buddies.remove_buddy(now, &user);
                self.buddy_ops.insert(tag, op);
            }
            Command::BlockBuddy { user } => {
                let tag = self.buddies.block_buddy(now, &user);
                self.buddy_ops.insert(tag, op);
            }
            Command::RefreshBuddies => {
                let tag = self.buddies.refresh(now);
                self.buddy_ops.insert(tag, op);
            }
            Command::Find { user } => self.request(now, Waiter::User(op), Request::Find { user }),
            Command::Search { words, limit } => self.request(now, Waiter::User(op), Request::Search { words, limit }),
            Command::Call { user, even_if_offline, audio } => {
                let w = Waiter::CallLookup { op, user: user.clone(), even_if_offline, audio };
                self.request(now, w, Request::Find { user });
            }
            Command::AnswerCall { id, accept } => {
                let env = Around { buddies: &self.buddies, interfaces: &self.cfg.interfaces };
                self.calls.answer(now, id, accept, &env);
                self.complete(op, Ok(Done::Ok));
            }
            Command::EndCall { id } => {
                self.calls.end(now, id);
                self.complete(op, Ok(Done::Ok));
            }
            Command::AllocateRelay { peer } => {
                self.request(now, Waiter::User(op), Request::RelayAllocate { callee: peer })
            }
            Command::ReleaseRelay { session } => {
                if let Some(link) = self.link.as_mut() {
                    link.release_relay(session);
                }
                self.complete(op, Ok(Done::Ok));
            }
            Command::Keepalive { timeout } => self.request(now, Waiter::User(op), Request::Keepalive { timeout }),
            Command::Reconnect => match self.link.as_mut().filter(|l| l.link().is_open()) {
                Some(link) => {
                    self.reconnects.push(op);
                    // The old link stops first; its end sends the ladder elsewhere.
                    link.bye();
                }
                None if self.ladder.is_busy() => self.reconnects.push(op),
                None => self.complete(op, Err(HostError::Request(RequestError::LinkDown))),
            },
            Command::SendChat { to, text } => self.chat.send_text(now, op.0, &to, text),
            Command::SendFile { to, path } => self.files.send_file(now, op.0, &to, path),
            Command::FetchChat => {
                self.chat.fetch_now(now);
                self.complete(op, Ok(Done::Ok));
            }
            Command::ReadChat { from, ids } => {
                self.chat.mark_read(now, &from, ids);
                self.complete(op, Ok(Done::Ok));
            }
            Command::GroupCreate { name, members } => {
                self.chat.group_command(now, op.0, super::chat::GroupCommand::Create { name, members })
            }
            Command::GroupSend { group, text } => {
                self.chat.group_command(now, op.0, super::chat::GroupCommand::Send { group, text })
            }
            Command::Group(c) => self.chat.group_command(now, op.0, c),
            Command::Logout => {
                self.logging_out = true;
                self.ladder.stop();
                if self.link.as_ref().is_some_and(|l| l.link().is_open()) {
                    // Offline in the index and to the buddies known online; the Bye
                    // waits for both (LOGOUT_WAIT at most).
                    let tag = self.buddies.publish(now, Status::Offline, self.profile.clone());
                    self.logout = Some(LogoutRun { op, tag, published: false, until: now.mono + LOGOUT_WAIT });
                } else {
                    self.phase = Phase::LoggedOut;
                    self.complete(op, Ok(Done::Ok));
                }
            }
        }
        self.flush(now);
        op
    }

    /// A datagram on port P.
    pub fn handle_datagram(&mut self, now: Now, from: SocketAddr, bytes: &[u8]) {
        match self.link.as_mut() {
            // An ended link takes nothing: the ladder may be dialing the same node.
            Some(link) if link.link().is_open() && link.link().dest() == Dest::Udp(from) => {
                link.handle_datagram(now, from, bytes)
            }
            _ if self.ladder.handle_datagram(now, from, bytes) => {}
            _ if self.calls.handle_datagram(now, from, bytes) => {}
            _ => self.stats.foreign += 1,
        }
        self.flush(now);
    }

    /// A datagram on extra socket `socket` of call `call`.
    pub fn handle_probe_datagram(&mut self, now: Now, call: [u8; 16], socket: u16, from: SocketAddr, bytes: &[u8]) {
        if !self.calls.handle_probe_datagram(now, call, socket, from, bytes) {
            self.stats.foreign += 1;
        }
        self.flush(now);
    }

    /// Something happened on a TCP connection.
    pub fn handle_tcp(&mut self, now: Now, conn: ConnId, event: TcpEvent) {
        let link_conn = self.link.as_ref().is_some_and(|l| l.link().dest() == Dest::Tcp(conn));
        if link_conn {
            if let Some(l) = self.link.as_mut() {
                l.handle_tcp(now, conn, event);
            }
        } else if conn.0 >= CONN_BASE {
            if !self.calls.handle_tcp(now, conn, event) {
                self.stats.stray_tcp += 1;
            }
        } else if !self.ladder.handle_tcp(now, conn, event) {
            self.stats.stray_tcp += 1;
        }
        self.flush(now);
    }

    /// A UDP send to `to` was refused by the system (not "would block").
    pub fn on_send_failed(&mut self, now: Now, to: SocketAddr, error: &str) {
        self.ladder.on_send_failed(now, to, error);
        self.flush(now);
    }

    /// The result of effect `id`.
    pub fn handle_effect(&mut self, now: Now, id: EffectId, result: EffectResult) {
        match self.effects_owned.remove(&id) {
            Some(Owner::Ladder(tag)) => {
                self.ladder.on_effect_result(now, tag, result);
            }
            Some(Owner::Calls) => self.calls.on_effect_result(now, result),
            Some(Owner::Buddies(tag)) => match result {
                EffectResult::Login(r) => self.buddies.on_login_result(now, tag, r),
                _ => self.stats.stray_effects += 1,
            },
            Some(Owner::Chat(tag)) => match result {
                EffectResult::Chat(r) => self.chat.on_effect_result(now, tag, r),
                _ => self.stats.stray_effects += 1,
            },
            Some(Owner::Files(tag)) => match result {
                EffectResult::File(r) => self.files.on_effect_result(now, tag, *r),
                _ => self.stats.stray_effects += 1,
            },
            None => self.stats.stray_effects += 1,
        }
        self.flush(now);
    }

    /// Timers: every due media frame first (the calls), then the ladder, then the link
    /// and its requests.
    pub fn handle_timeout(&mut self, now: Now) {
        let due = |t: Option<Instant>| t.is_some_and(|t| t <= now.mono);
        #[cfg(test)]
        let media_last = self.fault == Fault::MediaLast;
        #[cfg(not(test))]
        let media_last = false;
        if !media_last && due(self.calls.poll_timeout()) {
            self.calls.handle_timeout(now);
            // The frames go to the front of what this step sends.
            self.drain_calls(now);
        }
        if due(self.ladder.poll_timeout()) {
            self.ladder.handle_timeout(now);
        }
        if let Some(link) = self.link.as_mut()
            && due(link.poll_timeout())
        {
            link.handle_timeout(now);
        }
        if due(self.buddies.poll_timeout()) {
            self.buddies.handle_timeout(now);
        }
        if due(self.chat.poll_timeout()) {
            self.chat.handle_timeout(now);
        }
        if due(self.files_timeout) {
            self.files.handle_timeout(now);
        }
        self.flush(now);
        if media_last && due(self.calls.poll_timeout()) {
            self.calls.handle_timeout(now);
            self.flush(now);
        }
    }

    // ---- outputs ----

    /// The next datagram or frame to send.
    pub fn poll_transmit(&mut self) -> Option<Transmit> {
        self.transmits.pop_front()
    }

    /// The next effect for the shell, under the id its result comes back with.
    pub fn poll_effect(&mut self) -> Option<(EffectId, Effect)> {
        self.effects.pop_front()
    }

    /// The next event for the application.
    pub fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }

    /// The next finished command.
    pub fn poll_completion(&mut self) -> Option<(OpId, HostResult)> {
        self.completions.pop_front()
    }

    /// When [`HostCore::handle_timeout`] next has work.
    pub fn poll_timeout(&self) -> Option<Instant> {
        let link = self.link.as_ref().and_then(CoreLink::poll_timeout);
        let logout = self.logout.map(|l| l.until);
        let moved = self.moved.as_ref().map(|m| m.until);
        let chat = self.chat.poll_timeout();
        [
            self.calls.poll_timeout(),
            self.ladder.poll_timeout(),
            link,
            self.buddies.poll_timeout(),
            chat,
            logout,
            moved,
            self.files_timeout,
        ]
        .into_iter()
        .flatten()
        .min()
    }

    // ---- the joining ----

    fn complete(&mut self, op: OpId, r: HostResult) {
        self.completions.push_back((op, r));
    }

    fn push_event(&mut self, e: Event) {
        if self.events.len() >= EVENTS_MAX {
            self.stats.dropped += 1;
        } else {
            self.events.push_back(e);
        }
    }

    /// Submits a request to the link, or fails it at once without one.
    fn request(&mut self, now: Now, w: Waiter, r: Request) {
        let publish = matches!(r, Request::Publish { .. });
        match self.link.as_mut() {
            Some(link) => {
                let id = match r {
                    Request::Keepalive { timeout } => link.keepalive(now, timeout),
                    Request::Publish { entry } => link.publish(now, entry),
                    Request::Find { user } => link.find(now, &user),
                    Request::Search { words, limit } => link.search(now, &words, limit),
                    Request::Forward { to, via, body, class } => link.forward(now, &to, &via, body, class),
                    Request::RelayAllocate { callee } => link.allocate_relay(now, callee),
                    r @ (Request::MailSubmit { .. } | Request::MailFetch { .. } | Request::MailAck { .. }) => {
                        link.submit(now, r)
                    }
                };
                if let (Some(m), Waiter::Buddies(_), true) = (self.moved.as_mut(), &w, publish) {
                    m.publish.get_or_insert(id);
                }
                self.waiters.insert(id, w);
            }
            None => self.answer(now, w, Err(RequestError::LinkDown)),
        }
    }

    /// A request's outcome, to whoever waits for it.
    fn answer(&mut self, now: Now, w: Waiter, r: Result<Answer, RequestError>) {
        match w {
            Waiter::Calls(tag) => self.calls.on_request_result(now, tag, r),
            Waiter::Buddies(tag) => self.buddies.on_request_result(now, tag, r),
            Waiter::Chat(tag) => self.chat.on_request_result(now, tag, r),
            Waiter::User(op) => {
                let r = match r {
                    Ok(Answer::Published(a)) if a.code != 0 => Err(HostError::Refused(format!(
                        "{}: {}",
                        crate::wire::ErrorCode::from_code(a.code).label(),
                        a.detail
                    ))),
                    Ok(Answer::Granted(g)) if g.code != 0 => Err(HostError::Refused(format!(
                        "no relay: {}",
                        crate::wire::ErrorCode::from_code(g.code).label()
                    ))),
                    Ok(a) => Ok(Done::Answer(a)),
                    Err(e) => Err(e.into()),
                };
                self.complete(op, r);
            }
            Waiter::CallLookup { op, user, even_if_offline, audio } => {
                let r = self.place_call(now, &user, even_if_offline, None, r);
                if let Ok(Done::Called(id)) = &r {
                    // In the step that sent the invite: before any answer can start media.
                    self.calls.set_call_audio(*id, audio.source);
                    self.calls.set_call_recording(*id, audio.record);
                }
                self.complete(op, r);
            }
            Waiter::FilePresence { transfer, user } => {
                let online = self.shows_online(now, &user, r);
                self.files.on_presence(now, transfer, online);
            }
            Waiter::FileCallLookup { transfer, user } => {
                let r = match self.place_call(now, &user, false, Some(transfer), r) {
                    Ok(Done::Called(id)) => Ok(id),
                    Ok(other) => Err(format!("a call came to {other:?}")),
                    Err(e) => Err(e.to_string()),
                };
                self.files.on_call_placed(now, transfer, r);
            }
        }
    }

    /// Whether a lookup's answer shows `user` online (an entry that verifies, not offline).
    fn shows_online(&self, now: Now, user: &str, r: Result<Answer, RequestError>) -> bool {
        let Ok(Answer::Found(found)) = r else { return false };
        let Ok(e) = Entry::decode(&found.entry) else { return false };
        if e.verify(&self.me.trusted, now.unix_ms).is_err() || e.key() != user.to_ascii_lowercase() {
            return false;
        }
        let ttl = crate::index::store::PRESENCE_TTL_SECS_DEFAULT;
        crate::index::store::shown_status(&e, now.unix_ms / 1000, ttl) != Status::Offline
    }

    /// The lookup before a call came back: check the entry, then invite.
    fn place_call(
        &mut self,
        now: Now,
        user: &str,
        even_if_offline: bool,
        transfer: Option<[u8; 16]>,
        r: Result<Answer, RequestError>,
    ) -> HostResult {
        let found = match r? {
            Answer::Found(f) => f,
            other => return Err(HostError::Refused(format!("a lookup got {other:?}"))),
        };
        if found.entry.is_empty() {
            return Err(HostError::NotFound(user.to_owned()));
        }
        // Trust no super node: the entry must verify here too.
        let e = Entry::decode(&found.entry).map_err(|e| HostError::Refused(format!("malformed entry: {e}")))?;
        let callee = e
            .verify(&self.me.trusted, now.unix_ms)
            .map_err(|e| HostError::Refused(format!("the entry found does not verify: {e}")))?;
        if e.key() != user.to_ascii_lowercase() {
            return Err(HostError::Refused("the super node answered with another user's entry".into()));
        }
        let shown =
            crate::index::store::shown_status(&e, now.unix_ms / 1000, crate::index::store::PRESENCE_TTL_SECS_DEFAULT);
        if shown == Status::Offline && !even_if_offline {
            return Err(HostError::Offline(user.to_owned()));
        }
        let env = Around { buddies: &self.buddies, interfaces: &self.cfg.interfaces };
        let placed = match transfer {
            Some(t) => self.calls.call_for_file(now, &callee, e.supernode.clone(), t, &env),
            None => self.calls.call(now, &callee, e.supernode.clone(), &env),
        };
        let id = placed.map_err(|_| HostError::Request(RequestError::LinkDown))?;
        Ok(Done::Called(id))
    }

    fn effect(&mut self, owner: Option<Owner>, e: Effect) {
        let id = EffectId(self.next_effect);
        self.next_effect += 1;
        if self.effects.len() >= QUEUED_MAX {
            self.stats.dropped += 1;
            return;
        }
        // Only what answers is remembered: the rest would never leave the table.
        let answers = match &e {
            Effect::LocalIpToward(_) | Effect::OpenProbeSockets { .. } | Effect::Login(_) => true,
            Effect::Chat(c) => c.answers(),
            Effect::File(_) => true,
            _ => false,
        };
        if let Some(o) = owner.filter(|_| answers) {
            self.effects_owned.insert(id, o);
        }
        self.effects.push_back((id, e));
    }

    fn transmit(&mut self, t: Transmit) {
        if self.transmits.len() >= QUEUED_MAX {
            self.stats.dropped += 1;
        } else {
            self.transmits.push_back(t);
        }
    }

    /// Moves the calls' outputs out; true if there were any.
    fn drain_calls(&mut self, now: Now) -> bool {
        let mut any = false;
        while let Some(t) = self.calls.poll_transmit() {
            any = true;
            self.transmit(t);
        }
        while let Some((tag, r)) = self.calls.poll_request() {
            any = true;
            // A call's media went silent: the link itself ends if the super node does
            // not answer within 1.5 s, rather than at its call pace's 3.5 s of silence,
            // so the failover begins sooner.
            if let (Request::Keepalive { .. }, Some(link)) = (&r, self.link.as_mut()) {
                link.check(now);
            }
            self.request(now, Waiter::Calls(tag), r);
        }
        while let Some((kind, body)) = self.calls.poll_sealed() {
            any = true;
            if let Some(link) = self.link.as_mut() {
                link.send_sealed(kind, &body);
            }
        }
        while let Some(e) = self.calls.poll_effect() {
            any = true;
            self.effect(Some(Owner::Calls), e);
        }
        while let Some(e) = self.calls.poll_event() {
            any = true;
            if let Event::Call { call_id, state, .. } = &e
                && let Some(id) = hex::decode(call_id).ok().and_then(|v| <[u8; 16]>::try_from(v).ok())
                && (self.file_calls.contains(&id) || self.calls.call_transfer(id).is_some())
            {
                // A file call is the transfer's business: the application hears of it
                // through the file's events.
                tracing::debug!(%call_id, ?state, "a file call");
                if matches!(state, crate::host::calls::CallState::Ended { .. }) {
                    self.file_calls.remove(&id);
                    self.files.on_call_ended(now, id);
                } else {
                    self.file_calls.insert(id);
                }
                continue;
            }
            self.push_event(e);
        }
        while let Some(f) = self.calls.poll_file_call() {
            any = true;
            self.files.on_file_call(f.call, f.transfer, &f.peer);
        }
        while let Some((call, bytes)) = self.calls.poll_file_datagram() {
            any = true;
            let route = self.calls.call_route(call);
            self.files.handle_datagram(now, call, &bytes, route);
        }
        any
    }

    /// Moves the files' outputs out; true if there were any.
    fn drain_files(&mut self, now: Now) -> bool {
        let mut any = false;
        while let Some(o) = self.files.poll_out() {
            any = true;
            match o {
                FilesOut::Chat { tag, to, body } => {
                    let op = OpId(self.next_op);
                    self.next_op += 1;
                    self.file_offers.insert(op, tag);
                    self.chat.send_body(now, op.0, &to, body);
                }
                FilesOut::Call { transfer, user } => {
                    self.request(now, Waiter::FileCallLookup { transfer, user: user.clone() }, Request::Find { user });
                }
                FilesOut::Presence { transfer, user } => {
                    self.request(now, Waiter::FilePresence { transfer, user: user.clone() }, Request::Find { user });
                }
                FilesOut::Answer { call, accept } => {
                    let env = Around { buddies: &self.buddies, interfaces: &self.cfg.interfaces };
                    self.calls.answer(now, call, accept, &env);
                }
                FilesOut::End { call } => self.calls.end(now, call),
                FilesOut::Datagram { call, bytes } => {
                    self.calls.send_file_datagram(call, bytes);
                }
                FilesOut::Report { route, bytes } => self.calls.report_file_bytes(route, bytes),
            }
        }
        while let Some((tag, e)) = self.files.poll_effect() {
            any = true;
            self.effect(Some(Owner::Files(tag)), Effect::File(e));
        }
        while let Some(e) = self.files.poll_event() {
            any = true;
            self.push_event(e);
        }
        while let Some((op, r)) = self.files.poll_completion() {
            any = true;
            self.complete(OpId(op), r.map(Done::File).map_err(HostError::File));
        }
        self.files_timeout = self.files.poll_timeout();
        any
    }

    /// Moves the chat's outputs out; true if there were any.
    fn drain_chat(&mut self, now: Now) -> bool {
        let mut any = false;
        while let Some((tag, r)) = self.chat.poll_request() {
            any = true;
            self.request(now, Waiter::Chat(tag), r);
        }
        while let Some((tag, e)) = self.chat.poll_effect() {
            any = true;
            let owner = (tag != 0).then_some(Owner::Chat(tag));
            self.effect(owner, Effect::Chat(e));
        }
        while let Some(e) = self.chat.poll_event() {
            any = true;
            match e {
                ChatEvent::Message { message, request, .. } => {
                    if matches!(message.inner.body, crate::chat::message::Body::FileOffer { .. })
                        && message.inner.from != self.me.credential.subject.to_ascii_lowercase()
                    {
                        let env = Around { buddies: &self.buddies, interfaces: &self.cfg.interfaces };
                        let buddy = env.relation(&message.inner.from) == Some(Relation::Authorized);
                        self.files.on_offer(now, &message.inner.from, &message.inner.body, buddy);
                    }
                    if let Some(ev) = chat_event(&message, request) {
                        self.push_event(ev);
                    }
                }
                ChatEvent::Refused { .. } => {}
                ChatEvent::Group { name, text, .. } => self.push_event(Event::Chat {
                    id: hex::encode(&text.entry[..16]),
                    from: text.author,
                    to: format!("@{name}"),
                    text: text.text,
                    sent_at: text.at_ms,
                    group: Some(name),
                    request: false,
                }),
            }
        }
        while let Some((op, r)) = self.chat.poll_completion() {
            any = true;
            if let Some(tag) = self.file_offers.remove(&OpId(op)) {
                let r = r.map(|s| s.status == super::chat::SendStatus::Delivered).map_err(|e| e.to_string());
                self.files.on_offer_sent(now, tag, r);
                continue;
            }
            if op != 0 {
                self.complete(OpId(op), r.map(Done::Chat).map_err(HostError::Chat));
            }
        }
        any
    }

    /// Moves the buddies' outputs out; true if there were any.
    fn drain_buddies(&mut self, now: Now) -> bool {
        let mut any = false;
        while let Some((tag, r)) = self.buddies.poll_request() {
            any = true;
            self.request(now, Waiter::Buddies(tag), r);
        }
        while let Some((tag, e)) = self.buddies.poll_effect() {
            any = true;
            self.effect(Some(Owner::Buddies(tag)), e);
        }
        while let Some(e) = self.buddies.poll_event() {
            any = true;
            self.push_event(e);
        }
        while let Some((tag, r)) = self.buddies.poll_completion() {
            any = true;
            if let Some(l) = self.logout.as_mut().filter(|l| l.tag == tag) {
                l.published = true;
                continue;
            }
            let Some(op) = self.buddy_ops.remove(&tag) else { continue };
            self.complete(op, r.map(Done::Buddy).map_err(HostError::Buddies));
        }
        while let Some(e) = self.buddies.poll_entry() {
            any = true;
            self.chat.learn_entry(now, &e);
        }
        if self.buddies.list_revision() != self.chat_list_revision {
            // The chat decides buddy, stranger or blocked by the list as it stands.
            self.chat_list_revision = self.buddies.list_revision();
            self.chat.set_contacts(self.buddies.buddies().into_iter().map(|b| (b.user, b.relation)));
        }
        while let Some(Signal::SupernodeRevoked) = self.buddies.poll_signal() {
            any = true;
            // Leave it: its end sends the ladder to another.
            if let Some(link) = self.link.as_mut() {
                tracing::warn!(supernode = %link.link().session().supernode.subject, "our super node was revoked");
                link.bye();
            }
        }
        any
    }

    /// Moves the link's outputs out, routing completions and notices; true if any.
    fn drain_link(&mut self, now: Now) -> bool {
        let Some(link) = self.link.as_mut() else { return false };
        let mut any = false;
        let mut out = Vec::new();
        while let Some(t) = link.poll_transmit() {
            out.push(t);
        }
        let mut effects = Vec::new();
        while let Some((_, e)) = link.poll_effect() {
            effects.push(e);
        }
        let mut done = Vec::new();
        while let Some(c) = link.poll_completion() {
            done.push(c);
        }
        let mut events = Vec::new();
        while let Some(e) = link.poll_event() {
            events.push(e);
        }
        let (epoch, lost) = {
            let s = link.link().session();
            (link.link().epoch(), Lost { name: s.supernode.subject.clone(), addr: s.addr })
        };
        any |= !(out.is_empty() && effects.is_empty() && done.is_empty() && events.is_empty());
        out.into_iter().for_each(|t| self.transmit(t));
        effects.into_iter().for_each(|e| self.effect(None, e));
        for (id, r) in done {
            self.moved_step(now, Some(id));
            match self.waiters.remove(&id) {
                Some(w) => self.answer(now, w, r),
                None => tracing::debug!(?id, "a request finished that nobody waits for"),
            }
        }
        for e in events {
            match e {
                CoreEvent::Notice(body) => self.on_notice(now, &body),
                CoreEvent::LinkEnded { epoch: e, why } if e == epoch => {
                    if self.logging_out {
                        continue;
                    }
                    tracing::info!(%why, "our link ended; rejoining");
                    self.buddies.on_link_down();
                    self.calls.on_link_down();
                    self.chat.on_link_down();
                    // The calls hear of the link that replaces this one.
                    self.moved = None;
                    self.ladder.rejoin(now, lost.clone());
                }
                CoreEvent::LinkEnded { .. } => {}
            }
        }
        any
    }

    fn on_notice(&mut self, now: Now, body: &[u8]) {
        match Notice::decode(body) {
            Some(Notice::Call { message }) => {
                let env = Around { buddies: &self.buddies, interfaces: &self.cfg.interfaces };
                self.calls.on_call_message(now, &message, &env);
            }
            Some(Notice::Chat { sealed }) => self.chat.on_pushed(now, &sealed),
            Some(n) => self.buddies.on_notice(now, &n),
            None => self.stats.malformed_notices += 1,
        }
    }

    /// Moves the ladder's outputs out, joining super nodes it reached; true if any.
    fn drain_ladder(&mut self, now: Now) -> bool {
        let mut any = false;
        while let Some(t) = self.ladder.poll_transmit() {
            any = true;
            self.transmit(t);
        }
        while let Some((tag, e)) = self.ladder.poll_effect() {
            any = true;
            self.effect(Some(Owner::Ladder(tag)), e);
        }
        while let Some(e) = self.ladder.poll_event() {
            any = true;
            self.push_event(e);
        }
        while let Some(o) = self.ladder.poll_outcome() {
            any = true;
            match o {
                Outcome::Joined(j) => self.joined(now, *j),
                Outcome::Failed { purpose, error, .. } => {
                    for op in std::mem::take(&mut self.reconnects) {
                        self.complete(op, Err(HostError::NoSupernode(error.to_string())));
                    }
                    if purpose == Purpose::Login {
                        self.phase = Phase::Failed(error.to_string());
                        self.login_error = Some(error);
                    }
                }
            }
        }
        any
    }

    /// A super node took us: the link moves there, our entry is published, the calls
    /// learn where we stand.
    fn joined(&mut self, now: Now, j: Joined) {
        if self.logging_out {
            if let Dest::Tcp(conn) = j.dest {
                self.effect(None, Effect::TcpClose { conn });
            }
            return;
        }
        j.update_report(&mut self.report);
        let udp = matches!(j.dest, Dest::Udp(_));
        let rejoined = self.link.is_some();
        match self.link.as_mut() {
            Some(link) => link.replace(j.session, j.dest, now, &mut self.rng),
            None => self.link = Some(CoreLink::new(j.session, j.dest, now, &mut self.rng)),
        }
        self.phase = Phase::Online;
        let calls_info = LinkInfo {
            supernode: self.report.supernode.clone(),
            public_addr: self.report.public_addr,
            nat: self.report.nat,
            local_port: self.cfg.ladder.local_port,
            udp,
            v6: self.cfg.v6,
        };
        for op in std::mem::take(&mut self.reconnects) {
            self.complete(op, Ok(Done::Ok));
        }
        let Some(link) = self.link.as_ref() else { return };
        let sn = &link.link().session().supernode;
        let info = buddies::LinkInfo {
            supernode: sn.subject.clone(),
            supernode_key: sn.public_key.id(),
            public_addr: self.report.public_addr,
            nat: self.report.nat,
        };
        // Our entry first: after a failover, the calls tell their peers we moved once
        // it is published (MOVED_WAIT at most), so a peer that looks us up finds us
        // where we are.
        self.buddies.on_link_up(now, info);
        self.chat.on_link_up(now);
        if rejoined && self.calls.calls_in_progress() > 0 {
            self.moved = Some(MovedWait { info: calls_info, publish: None, until: now.mono + MOVED_WAIT });
        } else {
            self.moved = None;
            self.calls.on_link_up(now, calls_info);
        }
    }

    /// Tells the calls where we stand, once our entry's publish after a failover is
    /// answered or its time is up; true if it did.
    fn moved_step(&mut self, now: Now, published: Option<OpId>) -> bool {
        let Some(m) = self.moved.as_ref() else { return false };
        let answered = published.is_some() && published == m.publish;
        if !answered && now.mono < m.until {
            return false;
        }
        let Some(m) = self.moved.take() else { return false };
        self.calls.on_link_up(now, m.info);
        true
    }

    /// Routes every part's outputs until none has any left.
    fn flush(&mut self, now: Now) {
        loop {
            let mut any = self.drain_calls(now);
            any |= self.drain_buddies(now);
            any |= self.drain_chat(now);
            any |= self.drain_files(now);
            any |= self.drain_link(now);
            any |= self.drain_ladder(now);
            if let Some(link) = self.link.as_mut() {
                link.set_in_call(now, self.calls.has_media());
            }
            any |= self.logout_step(now);
            any |= self.moved_step(now, None);
            if !any {
                break;
            }
        }
    }

    /// Says Bye once the logout's publish is over and the buddies are told (or its
    /// time is up); true if it did.
    fn logout_step(&mut self, now: Now) -> bool {
        let Some(l) = self.logout else { return false };
        let told = l.published && self.buddies.fanout_left() == 0;
        if !told && now.mono < l.until {
            return false;
        }
        self.logout = None;
        if let Some(link) = self.link.as_mut() {
            link.bye();
        }
        self.phase = Phase::LoggedOut;
        self.complete(l.op, Ok(Done::Ok));
        true
    }
}

/// What the application hears of a new chat message (a text; receipts and the rest change
/// the history but are not shown as messages).
fn chat_event(m: &crate::chat::message::Message, request: bool) -> Option<Event> {
    use crate::chat::message::{Body, Conversation};
    let Body::Text { text } = &m.inner.body else { return None };
    let (with, group) = match &m.inner.conversation {
        Conversation::User(u) => (u.clone(), None),
        Conversation::Group(g) => (String::new(), Some(hex::encode(g))),
    };
    let to = if m.inner.from == m.to { with } else { m.to.clone() };
    Some(Event::Chat {
        id: hex::encode(m.id),
        from: m.inner.from.clone(),
        to,
        text: text.clone(),
        sent_at: m.inner.sent_at_ms,
        group,
        request,
    })
}
