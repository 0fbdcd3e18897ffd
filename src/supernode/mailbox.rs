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

/// Users connected to this super node: canonical username → (session id, actor).
#[derive(Clone, Default)]
pub struct Mailboxes {
    node: Arc<str>,
    users: Arc<DashMap<String, (u32, Recipient<Deliver>)>>,
}

impl Mailboxes {
    /// An empty table for the node named `node`.
    pub fn new(node: &str) -> Self {
        Self { node: node.into(), users: Arc::default() }
    }

    /// A session of `user` is established; a newer session of the same user (a second
    /// device, a restart) takes over its notices.
    pub fn register(&self, user: &str, session: u32, to: Recipient<Deliver>) {
        self.users.insert(user.to_ascii_lowercase(), (session, to));
    }

    /// Session `session` of `user` ended (a newer one keeps its place).
    pub fn unregister(&self, user: &str, session: u32) {
        self.users.remove_if(&user.to_ascii_lowercase(), |_, (s, _)| *s == session);
    }

    /// Hands `body` to `user`'s session if it is connected here; counts the outcome.
    pub fn deliver(&self, user: &str, body: Vec<u8>) -> bool {
        let to = self.users.get(&user.to_ascii_lowercase()).map(|e| e.1.clone());
        let delivered = to.is_some_and(|to| to.try_send(Deliver(body)).is_ok());
        let outcome = if delivered { "delivered" } else { "not_connected" };
        counter!("confab_supernode_notices_total", "node" => self.node.to_string(), "outcome" => outcome).increment(1);
        delivered
    }

    /// Whether `user` is connected here.
    pub fn holds(&self, user: &str) -> bool {
        self.users.contains_key(&user.to_ascii_lowercase())
    }
}

/// Counts a notice routed (or refused) on its way from a local host.
pub fn count(node: &str, outcome: &'static str) {
    counter!("confab_supernode_notices_total", "node" => node.to_owned(), "outcome" => outcome).increment(1);
}
