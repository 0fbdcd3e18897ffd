//! The host's buddy list: contacts from the login server (their names sealed under the
//! list key), authorization requests, and buddies' presence as they push it.
//!
//! [`BuddyBook`] is plain logic, tested directly; the `Session` methods at the bottom
//! move its bytes to the login server and, through the super nodes, to other hosts.

use super::core::pending::{Class, Request};
use super::{HostError, Session, account};
use crate::buddy::Notice;
use crate::buddy::op::{BuddyAnswer, BuddyOp, Incoming, Relation, Row};
use crate::buddy::record::{self, Contact};
use crate::crypto::password::ListKey;
use crate::index::{Entry, Status};
use crate::nat::NatKind;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

/// A buddy's presence, from its own signed entry.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Presence {
    /// The status the buddy chose (invisible included: buddies see it).
    pub status: Status,
    /// Unix seconds the buddy was last seen online.
    pub last_seen: u64,
    /// Its super node.
    pub supernode: String,
    /// Its public address.
    pub public_addr: Option<SocketAddr>,
    /// Its NAT kind.
    pub nat: NatKind,
    /// When the buddy made the entry (orders updates).
    pub timestamp_ms: u64,
}

impl Presence {
    /// The status to show at `now`: a buddy not heard from within the presence TTL went
    /// away without logging out.
    pub fn shown(&self, now: u64) -> Status {
        if self.status != Status::Offline
            && self.last_seen.saturating_add(crate::index::store::PRESENCE_TTL_SECS_DEFAULT) < now
        {
            Status::Offline
        } else {
            self.status
        }
    }

    pub(crate) fn from_entry(e: &Entry) -> Self {
        Self {
            status: e.status,
            last_seen: e.last_seen,
            supernode: e.supernode.clone(),
            public_addr: e.public_addr,
            nat: e.nat,
            timestamp_ms: e.timestamp_ms,
        }
    }
}

/// One contact.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Buddy {
    /// The username as the owner typed it.
    pub user: String,
    /// How the owner stands with it.
    pub relation: Relation,
    /// Its presence, once it told us (authorized buddies only).
    pub presence: Option<Presence>,
}

/// What a presence notice did to the book.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PresenceOutcome {
    /// From someone we have not authorized: ignored.
    NotABuddy,
    /// Not newer than what we hold.
    Stale,
    /// Updated; `came_online` when we had them offline or unknown.
    Changed {
        /// The buddy just came online (so it may not know our presence yet).
        came_online: bool,
    },
}

/// Something that happened, for the application.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum Event {
    /// A buddy's presence changed.
    Presence {
        /// The buddy.
        user: String,
        /// Its status now.
        status: Status,
        /// When it was last seen online (Unix seconds).
        last_seen: u64,
    },
    /// Someone asks to be our buddy.
    Request {
        /// Who.
        from: String,
        /// Their note.
        message: String,
    },
    /// A contact accepted or declined our request.
    Answered {
        /// The contact.
        user: String,
        /// Authorized or Declined.
        relation: Relation,
    },
    /// A call changed state (incoming calls start in `ringing`).
    Call {
        /// The call's id (hex).
        call_id: String,
        /// The other side.
        peer: String,
        /// Where the call is now.
        #[serde(flatten)]
        state: super::calls::CallState,
        /// The codec agreed, once known.
        codec: Option<crate::call::Codec>,
    },
    /// We lost our super node and are now connected through another.
    Reconnected {
        /// The super node we are connected through now.
        supernode: String,
    },
    /// The super node ended the session (or the link failed) and no other took us.
    Disconnected,
}

/// Between two attempts at finding another super node, after one failed.
pub(crate) const REJOIN_PAUSE: Duration = Duration::from_secs(5);

/// The buddy list as this device knows it.
#[derive(Debug, Clone, Default)]
pub struct BuddyBook {
    contacts: BTreeMap<String, Buddy>,
    requests: Vec<Incoming>,
}

impl BuddyBook {
    /// Rebuilds the contacts from the login server's rows, keeping presence already
    /// known; returns the changes of relation (for events) and how many rows did not
    /// open (sealed under another password: the password was changed, or the row is damaged).
    pub fn load(&mut self, owner: &str, key: &ListKey, rows: &[Row]) -> (Vec<(String, Relation)>, usize) {
        let mut fresh = BTreeMap::new();
        let mut unreadable = 0;
        let mut changed = Vec::new();
        for r in rows {
            let Some(c) = record::open(key, owner, &r.sealed) else {
                unreadable += 1;
                continue;
            };
            let k = c.user.to_ascii_lowercase();
            let old = self.contacts.remove(&k);
            if old.as_ref().is_some_and(|o| o.relation != r.relation) {
                changed.push((c.user.clone(), r.relation));
            }
            let presence = old.and_then(|o| o.presence).filter(|_| r.relation == Relation::Authorized);
            fresh.insert(k, Buddy { user: c.user, relation: r.relation, presence });
        }
        self.contacts = fresh;
        (changed, unreadable)
    }

    /// Replaces the pending requests; returns those not seen before.
    pub fn set_requests(&mut self, items: Vec<Incoming>) -> Vec<Incoming> {
        let new = items.iter().filter(|i| !self.requests.iter().any(|o| o.from == i.from)).cloned().collect();
        self.requests = items;
        new
    }

    /// Records (or updates) a contact after an operation of ours.
    pub fn set(&mut self, user: &str, relation: Relation) {
        let e = self.contacts.entry(user.to_ascii_lowercase()).or_insert_with(|| Buddy {
            user: user.to_owned(),
            relation,
            presence: None,
        });
        e.relation = relation;
        if relation != Relation::Authorized {
            e.presence = None;
        }
        self.requests.retain(|r| !r.from.eq_ignore_ascii_case(user));
    }

    /// Forgets a contact.
    pub fn remove(&mut self, user: &str) {
        self.contacts.remove(&user.to_ascii_lowercase());
    }

    /// The relation with `user`, if on the list.
    pub fn relation(&self, user: &str) -> Option<Relation> {
        self.contacts.get(&user.to_ascii_lowercase()).map(|b| b.relation)
    }

    /// Applies a verified presence entry.
    pub fn on_presence(&mut self, e: &Entry, now: u64) -> PresenceOutcome {
        let Some(b) = self.contacts.get_mut(&e.user.to_ascii_lowercase()) else {
            return PresenceOutcome::NotABuddy;
        };
        if b.relation != Relation::Authorized {
            return PresenceOutcome::NotABuddy;
        }
        if b.presence.as_ref().is_some_and(|p| p.timestamp_ms >= e.timestamp_ms) {
            return PresenceOutcome::Stale;
        }
        let was_online = b.presence.as_ref().is_some_and(|p| p.shown(now) != Status::Offline);
        let p = Presence::from_entry(e);
        let came_online = !was_online && p.status != Status::Offline;
        b.presence = Some(p);
        PresenceOutcome::Changed { came_online }
    }

    /// Authorized buddies, with their super node when we know they are online.
    pub fn authorized(&self, now: u64) -> Vec<(String, Option<String>)> {
        self.contacts
            .values()
            .filter(|b| b.relation == Relation::Authorized)
            .map(|b| {
                let via = b.presence.as_ref().filter(|p| p.shown(now) != Status::Offline).map(|p| p.supernode.clone());
                (b.user.clone(), via)
            })
            .collect()
    }

    /// Every contact, by name.
    pub fn contacts(&self) -> Vec<Buddy> {
        self.contacts.values().cloned().collect()
    }

    /// Pending requests to us.
    pub fn requests(&self) -> &[Incoming] {
        &self.requests
    }
}

impl Session {
    async fn buddy_op(&self, op: BuddyOp) -> Result<BuddyAnswer, HostError> {
        Ok(account::buddy(&self.servers, &self.credential, &self.key, op).await?)
    }

    fn me(&self) -> String {
        self.credential.subject.to_ascii_lowercase()
    }

    /// Reads the list and the pending requests from the login server; queues events for
    /// what changed (answers to our requests, new requests to us).
    pub async fn refresh_buddies(&mut self) -> Result<(), HostError> {
        let mut rows = Vec::new();
        let mut after = None;
        loop {
            match self.buddy_op(BuddyOp::List { after }).await? {
                BuddyAnswer::Page { rows: page, more } => {
                    after = page.last().map(|r| r.tag);
                    rows.extend(page);
                    if !more || after.is_none() {
                        break;
                    }
                }
                other => return Err(HostError::Refused(format!("unexpected answer to List: {other:?}"))),
            }
        }
        let (changed, unreadable) = self.buddies.load(&self.me(), &self.list_key, &rows);
        if unreadable > 0 {
            tracing::warn!(unreadable, "some buddy-list records do not open with this password");
        }
        let requests = match self.buddy_op(BuddyOp::Requests).await? {
            BuddyAnswer::Requests { items } => items,
            other => return Err(HostError::Refused(format!("unexpected answer to Requests: {other:?}"))),
        };
        for r in self.buddies.set_requests(requests) {
            self.events.push_back(Event::Request { from: r.from, message: r.message });
        }
        for (user, relation) in changed {
            if matches!(relation, Relation::Authorized | Relation::Declined) {
                self.events.push_back(Event::Answered { user: user.clone(), relation });
            }
            if relation == Relation::Authorized {
                self.tell_presence(&user, None).await;
            }
        }
        Ok(())
    }

    /// Adds `user`, asking for authorization with `message`; returns the relation now
    /// (authorized at once if they had asked us first).
    pub async fn add_buddy(&mut self, user: &str, message: &str) -> Result<Relation, HostError> {
        let contact = Contact { user: user.to_owned(), added_at: crate::unix_now() };
        let sealed = record::seal(&self.list_key, &self.me(), &contact);
        let op = BuddyOp::Add { contact: user.to_owned(), sealed, message: message.to_owned() };
        let relation = match self.buddy_op(op).await? {
            BuddyAnswer::Relation(r) => r,
            other => return Err(HostError::Refused(format!("unexpected answer to Add: {other:?}"))),
        };
        self.buddies.set(user, relation);
        self.notify(user, None, &Notice::ListChanged { from: self.credential.subject.clone() }).await;
        if relation == Relation::Authorized {
            self.tell_presence(user, None).await;
        }
        Ok(relation)
    }

    /// Accepts or declines `from`'s request.
    pub async fn answer_buddy(&mut self, from: &str, accept: bool) -> Result<Relation, HostError> {
        let contact = Contact { user: from.to_owned(), added_at: crate::unix_now() };
        let sealed = if accept { record::seal(&self.list_key, &self.me(), &contact) } else { Vec::new() };
        let relation = match self.buddy_op(BuddyOp::Answer { from: from.to_owned(), accept, sealed }).await? {
            BuddyAnswer::Relation(r) => r,
            other => return Err(HostError::Refused(format!("unexpected answer to Answer: {other:?}"))),
        };
        if accept {
            self.buddies.set(from, Relation::Authorized);
            self.tell_presence(from, None).await;
        } else {
            self.buddies.set_requests(self.buddies.requests().iter().filter(|r| r.from != from).cloned().collect());
        }
        self.notify(from, None, &Notice::ListChanged { from: self.credential.subject.clone() }).await;
        Ok(relation)
    }

    /// Takes `user` off the list.
    pub async fn remove_buddy(&mut self, user: &str) -> Result<(), HostError> {
        self.buddy_op(BuddyOp::Remove { contact: user.to_owned() }).await?;
        self.buddies.remove(user);
        Ok(())
    }

    /// Blocks `user`: their requests are dropped, they get no presence.
    pub async fn block_buddy(&mut self, user: &str) -> Result<(), HostError> {
        let contact = Contact { user: user.to_owned(), added_at: crate::unix_now() };
        let sealed = record::seal(&self.list_key, &self.me(), &contact);
        self.buddy_op(BuddyOp::Block { contact: user.to_owned(), sealed }).await?;
        self.buddies.set(user, Relation::Blocked);
        Ok(())
    }

    /// The contacts, with the presence buddies pushed.
    pub fn buddies(&self) -> Vec<Buddy> {
        self.buddies.contacts()
    }

    /// Requests waiting for our answer.
    pub fn buddy_requests(&self) -> Vec<Incoming> {
        self.buddies.requests().to_vec()
    }

    /// Sends a notice to `user` through our super node (fire and forget: notices are
    /// hints and presence, repeated at every refresh).
    pub(super) async fn notify(&mut self, user: &str, via: Option<String>, notice: &Notice) {
        // A call's signals go first, presence last (the core paces them all under the
        // super node's limit).
        let class = match notice {
            Notice::Call { .. } => Class::Call,
            Notice::ListChanged { .. } => Class::User,
            Notice::Presence { .. } => Class::Presence,
        };
        let body = notice.encode();
        self.shell.submit(Request::Forward { to: user.to_owned(), via: via.unwrap_or_default(), body, class });
    }

    /// Our presence as buddies see it: the real status, invisible included, with where
    /// to reach us.
    async fn tell_presence(&mut self, user: &str, via: Option<String>) {
        let Ok(entry) = self.sign_entry(self.status, true) else { return };
        self.notify(user, via, &Notice::Presence { entry: entry.encode() }).await;
    }

    /// Tells every authorized buddy (`all`), or those we know online, our presence.
    pub(super) async fn tell_buddies(&mut self, all: bool) {
        // Presence that arrived while the application was busy decides who is online.
        while let Ok(body) = self.shell.notices.try_recv() {
            self.on_notice(&body).await;
        }
        let Ok(entry) = self.sign_entry(self.status, true) else { return };
        let notice = Notice::Presence { entry: entry.encode() };
        let targets: Vec<_> =
            self.buddies.authorized(crate::unix_now()).into_iter().filter(|(_, via)| all || via.is_some()).collect();
        // The driver paces them under the super node's limit: nothing waits here.
        for (user, via) in targets {
            self.notify(&user, via, &notice).await;
        }
    }

    /// Waits for the next thing that happens: a buddy's presence, a request, an answer.
    /// While it waits the session does its periodic work (presence refresh); the link
    /// keeps itself alive on its own.
    pub async fn next_event(&mut self) -> Event {
        loop {
            if let Some(e) = self.next_event_until(None).await {
                return e;
            }
        }
    }

    /// Like [`Session::next_event`], but gives up after `timeout`.
    pub async fn next_event_within(&mut self, timeout: Duration) -> Option<Event> {
        self.next_event_until(Some(tokio::time::Instant::now() + timeout)).await
    }

    /// The event loop. The deadline is one of its branches, so it only ever cuts the
    /// waiting short, never a handler halfway (a relay granted but not recorded, a
    /// release not sent).
    async fn next_event_until(&mut self, deadline: Option<tokio::time::Instant>) -> Option<Event> {
        loop {
            if let Some(e) = self.events.pop_front() {
                return Some(e);
            }
            // While a call is under way (ringing included) its signals must get through:
            // the link keeps a quicker pace then, and notices a dead super node in seconds.
            let in_call = self.calls.busy();
            self.shell.set_in_call(in_call);
            let refresh = self.refreshed_at + self.presence_refresh;
            // A call's next timeout, on the tokio clock.
            let call_due = self
                .calls
                .deadline_ms()
                .map(|d| tokio::time::Instant::now() + Duration::from_millis(d.saturating_sub(super::now_ms())));
            let list_due = self.list_due;
            tokio::select! {
                _ = tokio::time::sleep_until(deadline.unwrap_or(refresh)), if deadline.is_some() => return None,
                Some(body) = self.shell.notices.recv() => self.on_notice(&body).await,
                // The link is gone (the super node said goodbye, or went silent):
                // another super node takes us, or we are disconnected.
                _ = self.shell.link.down() => {
                    // After a failed attempt, the next waits a while (an application
                    // that keeps asking for events must not spin on the ladder).
                    if let Some(at) = self.rejoin.failed_at {
                        let wake = at + REJOIN_PAUSE;
                        if deadline.is_some_and(|d| d < wake) {
                            tokio::time::sleep_until(deadline.unwrap_or(wake)).await;
                            return None;
                        }
                        tokio::time::sleep_until(wake).await;
                    }
                    match self.reconnect().await {
                        Ok(()) => self.rejoin.failed_at = None,
                        Err(e) => {
                            tracing::warn!(error = %e, "no other super node takes us");
                            self.rejoin.failed_at = Some(tokio::time::Instant::now());
                            return Some(Event::Disconnected);
                        }
                    }
                }
                _ = tokio::time::sleep_until(list_due.unwrap_or(refresh)), if list_due.is_some() => {
                    self.list_due = None;
                    self.listed_at = Some(tokio::time::Instant::now());
                    if let Err(e) = self.refresh_buddies().await {
                        tracing::warn!(error = %e, "could not read the buddy list");
                    }
                }
                _ = tokio::time::sleep_until(refresh) => self.refresh_presence().await,
                _ = tokio::time::sleep_until(call_due.unwrap_or(refresh)), if call_due.is_some() => self.tick_calls().await,
                m = self.shell.media.recv() => if let Some((from, bytes)) = m {
                    self.on_media_datagram(from, bytes).await;
                },
                d = self.calls.probe_rx.recv() => if let Some(d) = d {
                    self.on_probe_datagram(d).await;
                },
                m = self.calls.media6_rx.recv() => if let Some((from, bytes)) = m {
                    self.on_media_datagram(from, bytes).await;
                },
                _ = self.media_clock.tick(), if self.calls.has_media() => self.media_tick().await,
            }
        }
    }

    async fn on_notice(&mut self, body: &[u8]) {
        match Notice::decode(body) {
            Some(Notice::Presence { entry }) => self.on_presence(&entry).await,
            Some(Notice::ListChanged { from }) => {
                // A hint anyone could forge: it costs us one read of the list, at most
                // once a second, read by the event loop's timer (never waiting here, where
                // it would hold up a call's media).
                let now = tokio::time::Instant::now();
                let earliest = self.listed_at.map_or(now, |t| (t + Duration::from_secs(1)).max(now));
                self.list_due.get_or_insert(earliest);
                tracing::debug!(%from, "buddy list changed; reading it again");
            }
            Some(Notice::Call { message }) => self.on_call_message(&message).await,
            None => tracing::debug!("dropped a malformed notice"),
        }
    }

    async fn on_presence(&mut self, bytes: &[u8]) {
        let Ok(e) = Entry::decode(bytes) else {
            tracing::debug!("dropped a malformed presence notice");
            return;
        };
        if let Err(why) = e.verify(&self.trusted, super::now_ms()) {
            tracing::info!(user = %e.user, %why, "dropped a presence notice that does not verify");
            return;
        }
        let now = crate::unix_now();
        let mut outcome = self.buddies.on_presence(&e, now);
        if outcome == PresenceOutcome::NotABuddy && self.buddies.relation(&e.user) == Some(Relation::Requested) {
            // They may have just accepted us: the login server knows.
            if self.refresh_buddies().await.is_ok() {
                outcome = self.buddies.on_presence(&e, now);
            }
        }
        match outcome {
            PresenceOutcome::Changed { came_online } => {
                if came_online {
                    // They may not know ours: a buddy that logs in tells its buddies, and
                    // each answers once.
                    self.tell_presence(&e.user, Some(e.supernode.clone())).await;
                }
                let status = Presence::from_entry(&e).shown(now);
                self.events.push_back(Event::Presence { user: e.user.clone(), status, last_seen: e.last_seen });
            }
            PresenceOutcome::Stale => {}
            PresenceOutcome::NotABuddy => tracing::debug!(user = %e.user, "presence from someone not authorized"),
        }
    }

    async fn refresh_presence(&mut self) {
        self.refreshed_at = tokio::time::Instant::now();
        // A revoked super node will not tell us it was revoked: the login server does.
        if super::account::refresh_revocations(&self.servers, &self.credential, &self.key).await.is_some()
            && self.trusted.revoked().contains(crate::crypto::CredentialKind::SuperNode, self.supernode_key)
        {
            tracing::warn!(supernode = %self.report.supernode, "our super node's credential is revoked; leaving it");
            match self.reconnect().await {
                Ok(()) => self.rejoin.failed_at = None,
                Err(e) => {
                    tracing::warn!(error = %e, "no other super node takes us");
                    self.rejoin.failed_at = Some(tokio::time::Instant::now());
                    self.events.push_back(Event::Disconnected);
                    return;
                }
            }
        }
        if self.status != Status::Invisible {
            let (status, profile) = (self.status, self.profile.clone());
            if let Err(e) = self.publish_index(status, &profile).await {
                tracing::warn!(error = %e, "presence refresh not published");
            }
        }
        self.tell_buddies(true).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::index::entry::tests::entry;

    fn row(key: &ListKey, owner: &str, user: &str, relation: Relation, tag: u32) -> Row {
        let sealed = record::seal(key, owner, &Contact { user: user.into(), added_at: 1 });
        Row { tag, relation, sealed, changed_at: 1 }
    }

    #[test]
    fn presence_only_from_authorized_buddies_and_only_newer() {
        let key = ListKey([3; 32]);
        let mut b = BuddyBook::default();
        let rows = [
            row(&key, "me", "alice", Relation::Authorized, 1),
            row(&key, "me", "bob", Relation::Requested, 2),
            row(&ListKey([4; 32]), "me", "mallory", Relation::Authorized, 3),
        ];
        let (changed, unreadable) = b.load("me", &key, &rows);
        assert!(changed.is_empty());
        assert_eq!(unreadable, 1, "a record sealed under another key does not open");
        let now = 1_700_000_100;
        let a1 = entry("alice", 1, 1_700_000_000_000, Status::Online);
        assert_eq!(b.on_presence(&a1, now), PresenceOutcome::Changed { came_online: true });
        assert_eq!(b.on_presence(&a1, now), PresenceOutcome::Stale);
        let a2 = entry("alice", 1, 1_700_000_050_000, Status::Away);
        assert_eq!(b.on_presence(&a2, now), PresenceOutcome::Changed { came_online: false });
        assert_eq!(b.on_presence(&entry("bob", 1, 1_700_000_000_000, Status::Online), now), PresenceOutcome::NotABuddy);
        assert_eq!(
            b.on_presence(&entry("carol", 1, 1_700_000_000_000, Status::Online), now),
            PresenceOutcome::NotABuddy
        );
        let auth = b.authorized(now);
        assert_eq!(auth.len(), 1);
        assert_eq!(auth[0].0, "alice");
        assert!(auth[0].1.is_some(), "alice is online: we know her super node");
    }

    #[test]
    fn reload_reports_answers_and_keeps_presence() {
        let key = ListKey([3; 32]);
        let mut b = BuddyBook::default();
        b.load(
            "me",
            &key,
            &[row(&key, "me", "alice", Relation::Authorized, 1), row(&key, "me", "bob", Relation::Requested, 2)],
        );
        b.on_presence(&entry("alice", 1, 1_700_000_000_000, Status::Busy), 1_700_000_001);
        let (changed, _) = b.load(
            "me",
            &key,
            &[row(&key, "me", "alice", Relation::Authorized, 1), row(&key, "me", "bob", Relation::Declined, 2)],
        );
        assert_eq!(changed, vec![("bob".to_string(), Relation::Declined)]);
        let alice = b.contacts().into_iter().find(|c| c.user == "alice").unwrap();
        assert_eq!(alice.presence.unwrap().status, Status::Busy);
        let new = b.set_requests(vec![Incoming { from: "carol".into(), message: "hi".into(), at: 1 }]);
        assert_eq!(new.len(), 1);
        assert!(b.set_requests(vec![Incoming { from: "carol".into(), message: "hi".into(), at: 1 }]).is_empty());
    }

    #[test]
    fn a_silent_buddy_goes_offline_after_the_presence_ttl() {
        let p = Presence {
            status: Status::Online,
            last_seen: 1000,
            supernode: "sn".into(),
            public_addr: None,
            nat: NatKind::Unknown,
            timestamp_ms: 1,
        };
        assert_eq!(p.shown(1000 + crate::index::store::PRESENCE_TTL_SECS_DEFAULT), Status::Online);
        assert_eq!(p.shown(1001 + crate::index::store::PRESENCE_TTL_SECS_DEFAULT), Status::Offline);
    }
}
