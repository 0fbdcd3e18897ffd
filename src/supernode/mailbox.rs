//! Connected hosts by username, so a notice for a user reaches its `HostSession`.
//!
//! The routing decision (which super node holds the user) is the index router's; this
//! table only answers "is that user connected here, and to which actor".

use actix::prelude::*;
use dashmap::DashMap;
use metrics::counter;
use std::sync::Arc;

/// A notice for the connected host (opaque bytes, sealed to it as a Notice frame).
#[derive(Message)]
#[rtype(result = "()")]
pub struct Deliver(pub Vec<u8>);

/// Most sessions of one user held here at once (devices, and one-shot commands beside a
/// running host); a further login replaces the oldest.
pub const SESSIONS_PER_USER_MAX: usize = 8;

/// One session held: its id and its actor.
type Held = (u32, Recipient<Deliver>);

/// Users connected to this super node: canonical username → its sessions (id, actor),
/// oldest first.
#[derive(Clone, Default)]
pub struct Mailboxes {
    node: Arc<str>,
    users: Arc<DashMap<String, Vec<Held>>>,
}

impl Mailboxes {
    /// An empty table for the node named `node`.
    pub fn new(node: &str) -> Self {
        Self { node: node.into(), users: Arc::default() }
    }

    /// A session of `user` is established. Several sessions of one user (several devices,
    /// or a command run beside a running host) all receive the user's notices.
    pub fn register(&self, user: &str, session: u32, to: Recipient<Deliver>) {
        let mut held = self.users.entry(user.to_ascii_lowercase()).or_default();
        held.retain(|(s, _)| *s != session);
        if held.len() >= SESSIONS_PER_USER_MAX {
            held.remove(0);
        }
        held.push((session, to));
    }

    /// Session `session` of `user` ended (the others keep theirs).
    pub fn unregister(&self, user: &str, session: u32) {
        let key = user.to_ascii_lowercase();
        if let Some(mut held) = self.users.get_mut(&key) {
            held.retain(|(s, _)| *s != session);
        }
        self.users.remove_if(&key, |_, held| held.is_empty());
    }

    /// Hands `body` to every session of `user` connected here; counts the outcome.
    pub fn deliver(&self, user: &str, body: Vec<u8>) -> bool {
        let to: Vec<_> = self
            .users
            .get(&user.to_ascii_lowercase())
            .map(|held| held.iter().map(|(_, r)| r.clone()).collect())
            .unwrap_or_default();
        let mut delivered = false;
        for r in to {
            delivered |= r.try_send(Deliver(body.clone())).is_ok();
        }
        let outcome = if delivered { "delivered" } else { "not_connected" };
        counter!("confab_supernode_notices_total", "node" => self.node.to_string(), "outcome" => outcome).increment(1);
        delivered
    }

    /// Whether `user` is connected here.
    pub fn holds(&self, user: &str) -> bool {
        self.users.contains_key(&user.to_ascii_lowercase())
    }

    /// How many sessions of `user` are connected here.
    pub fn sessions(&self, user: &str) -> usize {
        self.users.get(&user.to_ascii_lowercase()).map_or(0, |held| held.len())
    }
}

/// Counts a notice routed (or refused) on its way from a local host.
pub fn count(node: &str, outcome: &'static str) {
    counter!("confab_supernode_notices_total", "node" => node.to_owned(), "outcome" => outcome).increment(1);
}
