//! Group chat as a signed, hash-linked log (`docs/chat.md` §0 "Groups").
//!
//! # Layout
//!
//! - [`log`] — one entry: its canonical encoding, hash, signature, total decoder.
//! - [`dag`] — a member's entries, closed under parents, signatures checked against keys
//!   the log carries, the agreed order (parents first, ties by hash).
//! - [`state`] — members, admins and epoch folded from the DAG in that order.
//! - [`member`] — one member's side: writing entries, epoch keys, the history it reads.
//! - [`sync`] — heads and samples exchanged on reconnect, entries the peer lacks sent back.
//!
//! Plain logic: time and randomness are inputs; entries come and go as bytes, each small
//! enough for one sealed chat message.

pub mod dag;
pub mod log;
pub mod member;
pub mod state;
pub mod sync;

#[cfg(test)]
mod tests;

pub use dag::{Dag, Inserted, Refused};
pub use log::{Entry, EntryHash, GroupId, Op};
pub use member::{Group, GroupError, HistoryItem};
pub use state::{Exclusion, State};
