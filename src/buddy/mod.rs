//! Buddy lists as plain logic: what the login server stores and what hosts tell each other.
//!
//! - [`tag`] — the 4-byte contact ids the login server keeps (keyed hash of owner and contact).
//! - [`record`] — contact names sealed under the owner's list key (only the password opens them).
//! - [`op`] — the signed requests a host makes of the login server, and the answers.
//! - [`notice`] — what one host sends another through the super nodes (presence, list changes).
//!
//! The login server is the durable source of truth (SQLite, transactions); the super nodes
//! only carry notices between online hosts, best effort.

pub mod notice;
pub mod op;
pub mod record;
pub mod tag;

pub use notice::Notice;
pub use op::{BuddyAnswer, BuddyOp, Relation};
pub use tag::{Tag, TagKey};
