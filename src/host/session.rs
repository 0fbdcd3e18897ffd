//! A logged-in host: the application's handle on the [`HostCore`](super::core::HostCore)
//! that its driver ([`super::shell`]) runs. Each async method submits a command and
//! awaits its completion only; getters read the core; events are the core's.
//!
//! What needs no network stays here: a lookup's entry verified and shown as a
//! [`Found`], search results verified, a relay leg's token opened with our key.

use super::buddies::{Buddy, Event};
use super::calls::CallReport;
use super::core::buddies::BuddyDone;
use super::core::chat::Sent;
use super::core::pending::{Answer, RequestError};
use super::core::{CallAudio, Command, Done, HostResult};
use super::{Found, HostError, LoginReport, shell};
use crate::buddy::Relation;
use crate::buddy::op::Incoming;
use crate::call::invite::Candidate;
use crate::crypto::credential::TrustedKeys;
use crate::index::{Entry, Profile, Status};
use crate::nat::NatKind;
use crate::wire::message::{FindReply, RelayGrant, SeenRecord};
use std::net::SocketAddr;
use std::time::Duration;

/// A logged-in host.
pub struct Session {
    /// What happened at login, brought up to date by every join (read it after a
    /// method or an event: a failover changes it).
    pub report: LoginReport,
    pub(super) shell: shell::Shell,
    pub(super) direct: tokio::task::JoinHandle<()>,
    pub(super) credential: crate::crypto::Credential,
    pub(super) key: crate::crypto::PrivateKey,
    pub(super) trusted: TrustedKeys,
    /// Port P on IPv6 and its reader, kept for the session's life.
    pub(super) _udp6: Option<super::udp6::Udp6>,
}

impl Drop for Session {
    fn drop(&mut self) {
        self.direct.abort();
    }
}

/// A core's error as the session's.
fn host_error(e: super::core::HostError) -> HostError {
    use super::core::HostError as E;
    match e {
        E::Buddies(e) => e,
        E::Request(RequestError::Refused(e)) => HostError::Refused(format!("{}: {}", e.code.label(), e.detail)),
        E::Request(RequestError::TimedOut(what)) => {
            HostError::Refused(format!("the super node did not answer the {what}"))
        }
        other => HostError::Refused(other.to_string()),
    }
}

/// The answer a command came to, or the session's error.
fn answer(r: HostResult, what: &str) -> Result<Answer, HostError> {
    match r.map_err(host_error)? {
        Done::Answer(a) => Ok(a),
        other => Err(HostError::Refused(format!("{what}: an outcome of another kind: {other:?}"))),
    }
}

/// A buddy command's outcome, or the session's error.
fn buddy_done(r: HostResult) -> Result<BuddyDone, HostError> {
    match r.map_err(host_error)? {
        Done::Buddy(d) => Ok(d),
        other => Err(HostError::Refused(format!("a buddy command came to {other:?}"))),
    }
}

impl Session {
    async fn run(&mut self, c: Command) -> HostResult {
        let r = self.shell.run(c).await;
        self.sync_report();
        r
    }

    /// Brings `report` up to date with the core's.
    fn sync_report(&mut self) {
        self.report = self.shell.read(|c| c.report().clone());
    }

    /// Logs out: offline in the index, then a Bye to the super node; port P is free
    /// when this returns.
    pub async fn logout(mut self) {
        if let Err(e) = self.shell.run(Command::Logout).await {
            tracing::debug!(error = %e, "logout");
        }
        self.direct.abort();
        let _ = (&mut self.direct).await;
        self.shell.stop().await;
    }

    /// One keepalive round trip; returns the address the super node sees.
    pub async fn keepalive(&mut self, timeout: Duration) -> Option<SocketAddr> {
        match self.run(Command::Keepalive { timeout }).await {
            Ok(Done::Answer(Answer::Observed(addr))) => Some(addr),
            _ => None,
        }
    }

    /// Sets our status and profile: publishes the entry in the Global Index and tells
    /// the buddies we know to be online (paced by the core, after this returns).
    /// Returns how many replicas the super node sent the entry to.
    pub async fn publish(&mut self, status: Status, profile: &Profile) -> Result<u8, HostError> {
        let r = self.run(Command::Publish { status, profile: profile.clone() }).await;
        match buddy_done(r)? {
            BuddyDone::Published { replicas } => Ok(replicas),
            other => Err(HostError::Refused(format!("publish came to {other:?}"))),
        }
    }

    /// Sends a chat message to `to` through the message store; returns its id and whether
    /// it was delivered at once or stored for later.
    pub async fn send_chat(&mut self, to: &str, text: &str) -> Result<Sent, HostError> {
        match self.run(Command::SendChat { to: to.to_owned(), text: text.to_owned() }).await {
            Ok(Done::Chat(s)) => Ok(s),
            Ok(other) => Err(HostError::Refused(format!("a chat send came to {other:?}"))),
            Err(e) => Err(host_error(e)),
        }
    }

    /// Founds group `name` and invites `members`; returns its id (as `Sent::id`). Fails
    /// naming members who could not be invited (the group exists all the same).
    pub async fn group_create(&mut self, name: &str, members: &[String]) -> Result<Sent, HostError> {
        self.chat_done(Command::GroupCreate { name: name.to_owned(), members: members.to_vec() }).await
    }

    /// Sends `text` to a group (by name, `@` optional, or id); returns the text's id and
    /// whether every member's copy was pushed at once (`delivered`) or stored.
    pub async fn group_send(&mut self, group: &str, text: &str) -> Result<Sent, HostError> {
        self.chat_done(Command::GroupSend { group: group.to_owned(), text: text.to_owned() }).await
    }

    /// Invites, removes, or leaves (see [`GroupCommand`](super::core::chat::GroupCommand)).
    pub async fn group_command(&mut self, c: super::core::chat::GroupCommand) -> Result<Sent, HostError> {
        self.chat_done(Command::Group(c)).await
    }

    async fn chat_done(&mut self, c: Command) -> Result<Sent, HostError> {
        match self.run(c).await {
            Ok(Done::Chat(s)) => Ok(s),
            Ok(other) => Err(HostError::Refused(format!("a group command came to {other:?}"))),
            Err(e) => Err(host_error(e)),
        }
    }

    /// Keeps file transfers under `transfers` (the home's `transfers/`) and, with
    /// `accept_into`, takes every offer into that folder; unfinished receptions found
    /// there resume.
    pub fn set_files(&mut self, transfers: std::path::PathBuf, accept_into: Option<std::path::PathBuf>) {
        let cfg = crate::host::core::files::FilesConfig { transfers: Some(transfers), accept_into };
        self.shell.change_now(|c, now| c.set_files(now, cfg));
    }

    /// Offers the file at `path` to `to`: returns once they have it whole, or with
    /// status `offered` when the offer waits for them (this session still serves it
    /// while it lasts).
    pub async fn send_file(
        &mut self,
        to: &str,
        path: &std::path::Path,
    ) -> Result<crate::host::core::files::FileDone, HostError> {
        match self.run(Command::SendFile { to: to.to_owned(), path: path.to_path_buf() }).await {
            Ok(Done::File(f)) => Ok(f),
            Ok(other) => Err(HostError::Refused(format!("a file send came to {other:?}"))),
            Err(e) => Err(host_error(e)),
        }
    }

    /// Whether a file transfer runs or waits for its call.
    pub fn files_busy(&self) -> bool {
        self.shell.read(|c| c.files_busy())
    }

    /// Fetches what the store holds for this device and waits, up to `limit`, until it
    /// is written to the history and acknowledged (and every send under way is done).
    /// False if the limit came first.
    pub async fn settle_chat(&mut self, limit: std::time::Duration) -> bool {
        let _ = self.run(Command::FetchChat).await;
        self.wait_chat_idle(limit).await
    }

    /// Waits, up to `limit`, until the chat has nothing under way.
    pub async fn wait_chat_idle(&mut self, limit: std::time::Duration) -> bool {
        let deadline = tokio::time::Instant::now() + limit;
        while self.shell.read(|c| c.chat_busy()) {
            if tokio::time::Instant::now() >= deadline {
                return false;
            }
            // Not every step that moves the chat on makes an event: look again soon.
            let _ = tokio::time::timeout(Duration::from_millis(20), self.shell.events_changed()).await;
        }
        true
    }

    /// What the chat has received, refused and sent so far.
    pub fn chat_stats(&self) -> crate::host::core::chat::ChatStats {
        self.shell.read(|c| c.chat_stats())
    }

    /// Tells `from` we read these of their messages (receipts, through the store).
    pub async fn read_chat(&mut self, from: &str, ids: Vec<[u8; 16]>) {
        let _ = self.run(Command::ReadChat { from: from.to_owned(), ids }).await;
    }

    /// What the session's driver dropped or could not deliver.
    pub fn io_stats(&self) -> &shell::ShellStats {
        self.shell.stats()
    }

    /// Our status.
    pub fn status(&self) -> Status {
        self.shell.read(|c| c.status())
    }

    /// Looks a user up in the Global Index. `Ok(None)`: not found.
    pub async fn find(&mut self, user: &str) -> Result<Option<Found>, HostError> {
        let (r, entry) = self.lookup(user).await?;
        match entry {
            Some(e) => {
                let mut found = Found::from_entry(&e, r.asked, r.stage.clone());
                // The index shows no address; an authorized buddy told us theirs.
                let now = crate::unix_now();
                if let Some(p) = self.buddies().into_iter().find_map(|b| {
                    (b.user.eq_ignore_ascii_case(user) && b.relation == Relation::Authorized)
                        .then_some(b.presence)
                        .flatten()
                }) && p.shown(now) != Status::Offline
                {
                    found.public_addr = found.public_addr.or(p.public_addr);
                }
                Ok(Some(found))
            }
            None => self.found_in_directory(user, &r),
        }
    }

    /// The lookup itself: the super node's answer, and the entry once it verified here.
    async fn lookup(&mut self, user: &str) -> Result<(FindReply, Option<Entry>), HostError> {
        let r = match answer(self.run(Command::Find { user: user.to_owned() }).await, "lookup")? {
            Answer::Found(r) => r,
            other => return Err(HostError::Refused(format!("lookup: an answer of another kind: {other:?}"))),
        };
        if r.entry.is_empty() {
            return Ok((r, None));
        }
        // Trust no super node: the entry must verify here too.
        let e = Entry::decode(&r.entry).map_err(|e| HostError::Refused(format!("malformed entry: {e}")))?;
        e.verify(&self.trusted, super::now_ms())
            .map_err(|e| HostError::Refused(format!("the entry found does not verify: {e}")))?;
        if e.key() != user.to_ascii_lowercase() {
            return Err(HostError::Refused("the super node answered with another user's entry".into()));
        }
        Ok((r, Some(e)))
    }

    /// Not in the index: the login server's signed directory record, if the super node
    /// passed one on, still says when the user was last seen.
    fn found_in_directory(&self, user: &str, r: &FindReply) -> Result<Option<Found>, HostError> {
        if r.directory.is_empty() {
            return Ok(None);
        }
        let rec = SeenRecord::decode_verified(&r.directory, user, &self.trusted)
            .map_err(|e| HostError::Refused(e.to_string()))?;
        if !rec.found {
            return Ok(None);
        }
        Ok(Some(Found {
            user: rec.user,
            status: Status::Offline,
            last_seen: rec.last_seen,
            supernode: rec.supernode,
            public_addr: None,
            nat: NatKind::Unknown,
            profile: Profile::default(),
            asked: r.asked,
            stage: r.stage.clone(),
        }))
    }

    /// Searches users whose profile has every word (case and accents ignored); at most
    /// `limit` results, each verified here.
    pub async fn search(&mut self, words: &str, limit: u8) -> Result<Vec<Found>, HostError> {
        let c = Command::Search { words: words.to_owned(), limit };
        let results = match answer(self.run(c).await, "search")? {
            Answer::Searched(parts) => parts,
            other => return Err(HostError::Refused(format!("search: an answer of another kind: {other:?}"))),
        };
        let mut out = Vec::new();
        for bytes in results {
            let e = Entry::decode(&bytes).map_err(|e| HostError::Refused(format!("malformed entry: {e}")))?;
            // A result that does not verify is dropped, not believed.
            if e.verify(&self.trusted, super::now_ms()).is_ok() {
                out.push(Found::from_entry(&e, 0, "search".into()));
            }
        }
        Ok(out)
    }

    /// Connects to another super node, leaving ours (a Bye first): the ladder over the
    /// super nodes we know, without the one we leave; there our presence is published
    /// and our buddies online told. Calls in progress go on, and learn where we are.
    pub async fn reconnect(&mut self) -> Result<(), HostError> {
        self.run(Command::Reconnect).await.map(|_| ()).map_err(host_error)
    }

    // ---- calls ----

    /// Calls `user`: looks them up (they must show online), then sends the invite.
    /// Returns the call id; what happens next comes as [`Event::Call`]s.
    pub async fn call(&mut self, user: &str) -> Result<[u8; 16], HostError> {
        self.place(user, false, CallAudio::default()).await
    }

    /// Like [`Session::call`], playing `audio.source` into the call and, with
    /// `audio.record`, keeping what it sounds like here, from its very start (set later,
    /// they miss whatever came before).
    pub async fn call_with(&mut self, user: &str, audio: CallAudio) -> Result<[u8; 16], HostError> {
        self.place(user, false, audio).await
    }

    /// Like [`Session::call`], but invites even a user the index shows offline (an
    /// invisible buddy, or a modified client's test).
    pub async fn call_even_if_offline(&mut self, user: &str) -> Result<[u8; 16], HostError> {
        self.place(user, true, CallAudio::default()).await
    }

    async fn place(&mut self, user: &str, even_if_offline: bool, audio: CallAudio) -> Result<[u8; 16], HostError> {
        match self.run(Command::Call { user: user.to_owned(), even_if_offline, audio }).await.map_err(host_error)? {
            Done::Called(id) => Ok(id),
            other => Err(HostError::Refused(format!("a call came to {other:?}"))),
        }
    }

    /// Accepts or declines an incoming call.
    pub async fn answer_call(&mut self, id: [u8; 16], accept: bool) {
        let _ = self.run(Command::AnswerCall { id, accept }).await;
    }

    /// Cancels or hangs up a call.
    pub async fn end_call(&mut self, id: [u8; 16]) {
        let _ = self.run(Command::EndCall { id }).await;
    }

    /// Calls not yet over.
    pub fn calls_in_progress(&self) -> usize {
        self.shell.read(|c| c.calls().calls_in_progress())
    }

    /// What to play into call `id` (48 kHz mono samples; silence after). Given once media
    /// runs (the other side answered first), it plays from its start from then on.
    pub fn set_call_audio(&mut self, id: [u8; 16], samples: Vec<i16>) {
        self.shell.change(|c| c.set_call_audio(id, samples));
    }

    /// The report of an ended call, once.
    pub fn take_call_report(&mut self, id: [u8; 16]) -> Option<CallReport> {
        self.shell.change(|c| c.take_call_report(id))
    }

    /// Keeps what call `id` sounds like at our end, for its report.
    pub fn set_call_recording(&mut self, id: [u8; 16], on: bool) {
        self.shell.change(|c| c.set_call_recording(id, on));
    }

    /// The super node the other side of call `id` is reached through.
    pub fn call_peer_supernode(&self, id: [u8; 16]) -> Option<String> {
        self.shell.read(|c| c.calls().call_peer_supernode(id))
    }

    /// Where the other side of call `id` said it receives media.
    pub fn call_peer_candidates(&self, id: [u8; 16]) -> Option<Vec<Candidate>> {
        self.shell.read(|c| c.calls().call_peer_candidates(id))
    }

    /// Call `id`'s media so far (path, packets, loss, jitter).
    pub fn call_media(&self, id: [u8; 16]) -> Option<super::media::MediaReport> {
        self.shell.read(|c| c.calls().call_media(id))
    }

    /// Relay legs over TCP even with UDP at hand (implies relay only), for calls that
    /// start from now on.
    pub fn set_relay_tcp(&mut self, on: bool) {
        self.shell.change(|c| c.set_relay_tcp(on));
    }

    /// Media only through a relay, for calls that start from now on.
    pub fn set_relay_only(&mut self, on: bool) {
        self.shell.change(|c| c.set_relay_only(on));
    }

    /// Sets the call timeouts (tests shorten them).
    pub fn set_call_timeouts(&mut self, t: crate::call::signal::Timeouts) {
        self.shell.change(|c| c.set_call_timeouts(t));
    }

    // ---- relays ----

    /// Opens a relay session at our super node for a call with the holder of `peer` (a
    /// verified host credential); leg A is ours, leg B's token comes sealed to `peer`'s
    /// key, for us to send on end to end.
    pub async fn allocate_relay(&mut self, peer: &crate::crypto::Credential) -> Result<RelayGrant, HostError> {
        match self.run(Command::AllocateRelay { peer: peer.encode() }).await {
            Ok(Done::Answer(Answer::Granted(g))) => Ok(g),
            Err(super::core::HostError::Request(RequestError::Refused(e))) => {
                Err(HostError::Refused(format!("no relay session: {}: {}", e.code.label(), e.detail)))
            }
            Err(super::core::HostError::Request(RequestError::TimedOut(_))) => {
                Err(HostError::Refused("the super node did not answer the relay request".into()))
            }
            Err(e) => Err(HostError::Refused(format!("no relay session: {e}"))),
            Ok(other) => Err(HostError::Refused(format!("no relay session: {other:?}"))),
        }
    }

    /// Our host credential (what another host's super node seals our relay leg to).
    pub fn credential(&self) -> &crate::crypto::Credential {
        &self.credential
    }

    /// Opens the token of leg B of relay `session`, sealed to our key by the super node
    /// of the host that opened the session for a call with us.
    pub fn open_relay_leg(&self, session: u32, sealed: &[u8]) -> Result<[u8; 16], HostError> {
        crate::relay::handoff::open(&self.key, session, sealed).map_err(|e| HostError::Refused(e.to_string()))
    }

    /// Frees a relay session we opened.
    pub async fn release_relay(&mut self, session: u32) {
        let _ = self.run(Command::ReleaseRelay { session }).await;
    }

    // ---- buddies ----

    /// Reads the list and the pending requests from the login server; what changed
    /// comes as events.
    pub async fn refresh_buddies(&mut self) -> Result<(), HostError> {
        buddy_done(self.run(Command::RefreshBuddies).await).map(|_| ())
    }

    /// Adds `user`, asking for authorization with `message`; returns the relation now
    /// (authorized at once if they had asked us first).
    pub async fn add_buddy(&mut self, user: &str, message: &str) -> Result<Relation, HostError> {
        let c = Command::AddBuddy { user: user.to_owned(), message: message.to_owned() };
        match buddy_done(self.run(c).await)? {
            BuddyDone::Relation(r) => Ok(r),
            other => Err(HostError::Refused(format!("unexpected answer to Add: {other:?}"))),
        }
    }

    /// Accepts or declines `from`'s request.
    pub async fn answer_buddy(&mut self, from: &str, accept: bool) -> Result<Relation, HostError> {
        match buddy_done(self.run(Command::AnswerBuddy { from: from.to_owned(), accept }).await)? {
            BuddyDone::Relation(r) => Ok(r),
            other => Err(HostError::Refused(format!("unexpected answer to Answer: {other:?}"))),
        }
    }

    /// Takes `user` off the list.
    pub async fn remove_buddy(&mut self, user: &str) -> Result<(), HostError> {
        buddy_done(self.run(Command::RemoveBuddy { user: user.to_owned() }).await).map(|_| ())
    }

    /// Blocks `user`: their requests are dropped, they get no presence.
    pub async fn block_buddy(&mut self, user: &str) -> Result<(), HostError> {
        buddy_done(self.run(Command::BlockBuddy { user: user.to_owned() }).await).map(|_| ())
    }

    /// The contacts, with the presence buddies pushed.
    pub fn buddies(&self) -> Vec<Buddy> {
        self.shell.read(|c| c.buddies())
    }

    /// Requests waiting for our answer.
    pub fn buddy_requests(&self) -> Vec<Incoming> {
        self.shell.read(|c| c.buddy_requests())
    }

    // ---- events ----

    /// Waits for the next thing that happens: a buddy's presence, a request, an answer,
    /// a call's change. The host works on meanwhile whether or not anyone waits here.
    pub async fn next_event(&mut self) -> Event {
        loop {
            if let Some(e) = self.next_event_within(Duration::from_secs(3600)).await {
                return e;
            }
        }
    }

    /// Like [`Session::next_event`], but gives up after `timeout`.
    pub async fn next_event_within(&mut self, timeout: Duration) -> Option<Event> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            if let Some(e) = self.shell.poll_event() {
                self.sync_report();
                return Some(e);
            }
            if tokio::time::timeout_at(deadline, self.shell.events_changed()).await.is_err() {
                self.sync_report();
                return None;
            }
        }
    }
}
