//! The host's buddy list: contacts from the login server (their names sealed under the
//! list key), authorization requests, and buddies' presence as they push it.
//!
//! [`BuddyBook`] is plain logic, tested directly; the host's core
//! (`core::buddies`) moves its bytes to the login server and, through the super nodes,
//! to other hosts.

use crate::buddy::op::{Incoming, Relation, Row};
use crate::buddy::record;
use crate::crypto::password::ListKey;
use crate::index::store::{Merge, Sessions};
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
    /// Its presence, once it told us (authorized buddies only): that of the session that
    /// speaks for it when it is logged in more than once.
    pub presence: Option<Presence>,
    /// Its sessions' entries, as they told us (one per login).
    #[serde(skip)]
    pub sessions: Sessions,
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
    /// A chat message arrived (or our own, sent from another device), written to the
    /// history.
    Chat {
        /// Its id (hex).
        id: String,
        /// The sender.
        from: String,
        /// The recipient (ourselves, or the peer of our own copy).
        to: String,
        /// The text.
        text: String,
        /// When it was sent (unix milliseconds, the sender's clock).
        sent_at: u64,
        /// The group's id (hex), for a group message.
        group: Option<String>,
        /// From someone who is not an authorized buddy: a message request (add them as a
        /// buddy to answer; until then they get no receipts).
        #[serde(default)]
        request: bool,
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
    /// A file transfer moved on: an offer came, bytes moved, it ended or stopped.
    File {
        /// The transfer (hex).
        transfer: String,
        /// The other side.
        peer: String,
        /// The file's name (in an offer).
        name: String,
        /// Where it is.
        #[serde(flatten)]
        state: crate::host::core::files::FileState,
        /// Bytes done.
        bytes: u64,
        /// Of how many.
        bytes_total: u64,
        /// SHA-256 of the whole file (hex), when known.
        sha256: Option<String>,
        /// Where the file was placed (the receiver, once whole).
        path: Option<String>,
    },
}

/// Between two attempts at finding another super node, after one failed.
pub(crate) const REJOIN_PAUSE: Duration = Duration::from_secs(5);

/// The buddy list as this device knows it.
#[derive(Debug, Clone, Default)]
pub struct BuddyBook {
    contacts: BTreeMap<String, Buddy>,
    requests: Vec<Incoming>,
    /// Bumped whenever a contact or its relation may have changed.
    revision: u64,
}

impl BuddyBook {
    /// A number that changes whenever the contacts or their relations may have.
    pub fn revision(&self) -> u64 {
        self.revision
    }

    /// Rebuilds the contacts from the login server's rows, keeping presence already
    /// known; returns the changes of relation (for events) and how many rows did not
    /// open (sealed under another password: the password was changed, or the row is damaged).
    pub fn load(&mut self, owner: &str, key: &ListKey, rows: &[Row]) -> (Vec<(String, Relation)>, usize) {
        self.revision += 1;
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
            let (presence, sessions) = old
                .filter(|_| r.relation == Relation::Authorized)
                .map(|o| (o.presence, o.sessions))
                .unwrap_or_default();
            fresh.insert(k, Buddy { user: c.user, relation: r.relation, presence, sessions });
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
        self.revision += 1;
        let e = self.contacts.entry(user.to_ascii_lowercase()).or_insert_with(|| Buddy {
            user: user.to_owned(),
            relation,
            presence: None,
            sessions: Sessions::default(),
        });
        e.relation = relation;
        if relation != Relation::Authorized {
            e.presence = None;
            e.sessions = Sessions::default();
        }
        self.requests.retain(|r| !r.from.eq_ignore_ascii_case(user));
    }

    /// Forgets a contact.
    pub fn remove(&mut self, user: &str) {
        self.revision += 1;
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
        let merged = b.sessions.merge(e.clone());
        if !matches!(merged, Merge::Stored | Merge::Replaced) {
            return PresenceOutcome::Stale;
        }
        // A session we did not know came online (another device, a restart): it may not
        // know our presence yet, even when the buddy was online on another session.
        let came_online = merged == Merge::Stored && e.status != Status::Offline;
        let best = b.sessions.best().map(Presence::from_entry);
        if best == b.presence {
            return if came_online { PresenceOutcome::Changed { came_online } } else { PresenceOutcome::Stale };
        }
        let was_online = b.presence.as_ref().is_some_and(|p| p.shown(now) != Status::Offline);
        let now_online = best.as_ref().is_some_and(|p| p.status != Status::Offline);
        b.presence = best;
        PresenceOutcome::Changed { came_online: came_online || (!was_online && now_online) }
    }

    /// Authorized buddies, once per super node of each session we know online (a buddy
    /// logged in on two devices at two super nodes is reached at both), or once with no
    /// super node when we know none.
    pub fn authorized(&self, now: u64) -> Vec<(String, Option<String>)> {
        let mut out = Vec::new();
        for b in self.contacts.values().filter(|b| b.relation == Relation::Authorized) {
            let mut vias: Vec<String> = b
                .sessions
                .entries()
                .iter()
                .filter(|e| Presence::from_entry(e).shown(now) != Status::Offline)
                .map(|e| e.supernode.clone())
                .collect();
            vias.sort();
            vias.dedup();
            if vias.is_empty() {
                out.push((b.user.clone(), None));
            }
            out.extend(vias.into_iter().map(|v| (b.user.clone(), Some(v))));
        }
        out
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::buddy::record::Contact;
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
    fn a_buddy_on_two_sessions_stays_online_when_one_logs_out() {
        let key = ListKey([3; 32]);
        let mut b = BuddyBook::default();
        b.load("me", &key, &[row(&key, "me", "alice", Relation::Authorized, 1)]);
        let now = 1_700_000_100;
        let home = entry("alice", 1, 1_700_000_000_000, Status::Online);
        assert_eq!(b.on_presence(&home, now), PresenceOutcome::Changed { came_online: true });
        // A second device logs in: news to answer (it may not know our presence), and it speaks.
        let phone = entry("alice", 2, 1_700_000_010_000, Status::Busy);
        assert_eq!(b.on_presence(&phone, now), PresenceOutcome::Changed { came_online: true });
        assert_eq!(b.contacts()[0].presence.as_ref().unwrap().status, Status::Busy);
        // It logs out: alice is still online, on the first.
        let out = entry("alice", 2, 1_700_000_020_000, Status::Offline);
        assert_eq!(b.on_presence(&out, now), PresenceOutcome::Changed { came_online: false });
        assert_eq!(b.contacts()[0].presence.as_ref().unwrap().status, Status::Online);
        assert_eq!(b.on_presence(&phone, now), PresenceOutcome::Stale, "a late copy changes nothing");
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
