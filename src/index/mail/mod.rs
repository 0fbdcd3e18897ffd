//! Offline messages: the store a slot's replicas keep for the slot's users, as plain
//! logic (`docs/chat.md` §3). A super node never opens a message; it holds the sealed
//! bytes with the metadata it needs (id, recipient, sender, size, times), hands them to
//! each device of the recipient until that device acknowledges them, deletes a message
//! once every known device has, and leaves a tombstone so replication never brings it
//! back. No clock, no sockets, no randomness: time is an input, in unix milliseconds.
//!
//! - [`message`] — the stored message and what a replica checks of it.
//! - [`limits`] — retention and quotas, with their defaults.
//! - [`budget`] — the node's memory cap, shared by every slot's store.
//! - [`store`] — one slot's mail on one replica: store, fetch, acknowledge, expire.
//! - [`sync`] — anti-entropy between replicas and a slot's hand-over: digests, bucket
//!   digests, summaries, items, the merge (a join), and what a replica answers to each.
//! - [`handover`] — when a node that left a slot may let its copy of the slot's mail go.

pub mod budget;
pub mod handover;
pub mod limits;
pub mod message;
pub mod store;
pub mod sync;

#[cfg(test)]
mod tests;

pub use budget::Budget;
pub use handover::HandOvers;
pub use limits::MailLimits;
pub use message::{Mail, MailError, MailId};
pub use store::{Acked, Expired, MailStats, MailStore, Page, Refusal, Stored};
pub use sync::{Answer, ItemState, MailItem, Merged, Reconcile, Standing, Summary, Want};
