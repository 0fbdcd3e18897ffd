//! `IndexSlot`: one actor per Global Index slot this super node replicates. It owns the
//! slot's [`SlotStore`]; entries reach it already verified.

use crate::index::store::{Merge, SlotStore};
use crate::index::{Entry, Slot};
use actix::prelude::*;
use std::time::Duration;

/// How often a slot drops expired entries.
const EXPIRE_EVERY: Duration = Duration::from_secs(60);

/// The actor.
pub struct IndexSlot {
    slot: Slot,
    store: SlotStore,
    retention_secs: u64,
    node: String,
}

impl IndexSlot {
    /// An empty slot.
    pub fn new(slot: Slot, entries_max: usize, retention_secs: u64, node: String) -> Self {
        Self { slot, store: SlotStore::new(entries_max), retention_secs, node }
    }
}

impl Actor for IndexSlot {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        ctx.run_interval(EXPIRE_EVERY, |act, _| {
            let n = act.store.expire(crate::unix_now(), act.retention_secs);
            if n > 0 {
                tracing::debug!(node = %act.node, slot = act.slot.0, expired = n, "index entries expired");
                metrics::counter!("confab_index_entries_expired_total", "node" => act.node.clone()).increment(n as u64);
            }
        });
    }
}

/// Merge a verified entry.
#[derive(Message)]
#[rtype(result = "Merge")]
pub struct Put {
    /// The key.
    pub key: String,
    /// The verified entry.
    pub entry: Entry,
}

impl Handler<Put> for IndexSlot {
    type Result = MessageResult<Put>;

    fn handle(&mut self, msg: Put, _: &mut Context<Self>) -> Self::Result {
        // An entry already past retention is not worth holding.
        if msg.entry.last_seen.saturating_add(self.retention_secs) <= crate::unix_now() {
            return MessageResult(Merge::Stale);
        }
        MessageResult(self.store.merge(&msg.key, msg.entry))
    }
}

/// Read the entry under a key.
#[derive(Message)]
#[rtype(result = "Option<Entry>")]
pub struct Get(pub String);

impl Handler<Get> for IndexSlot {
    type Result = Option<Entry>;

    fn handle(&mut self, msg: Get, _: &mut Context<Self>) -> Option<Entry> {
        let e = self.store.get(&msg.0)?;
        (e.last_seen.saturating_add(self.retention_secs) > crate::unix_now()).then(|| e.clone())
    }
}

/// How many keys the slot holds.
#[derive(Message)]
#[rtype(result = "usize")]
pub struct Len;

impl Handler<Len> for IndexSlot {
    type Result = usize;

    fn handle(&mut self, _: Len, _: &mut Context<Self>) -> usize {
        self.store.len()
    }
}
