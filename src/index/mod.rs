//! The Global Index as plain logic: slots and replicas, signed entries and their merge
//! order, slot contents with expiry, search tokens, and the widening lookup. No sockets,
//! no actors, no clock: `docs/index.md` states the invariants these implement.
//!
//! - [`slot`] — key → slot, rendezvous-hashed replica sets, the slot map of a view.
//! - [`entry`] — the signed entry a host publishes; verification; merge order.
//! - [`store`] — one slot's entries on one replica: merge, expiry, digest.
//! - [`fold`] — search tokens, case- and accent-insensitive.
//! - [`verified`] — digests of entries already verified, so repeats skip the RSA.
//! - [`lookup`] — limited multicast: 4 → 8 → 16 → everyone → the login directory.
//! - [`repair`] — how much anti-entropy repair one replica is sent.
//! - [`former`] — slots a node no longer replicates, and when their stores go.
//! - [`mail`] — offline messages kept beside a slot's entries: quotas, per-device
//!   acknowledgement, tombstones, anti-entropy.

pub mod config;
pub mod entry;
pub mod fold;
pub mod former;
pub mod lookup;
pub mod mail;
pub mod node;
pub mod repair;
pub mod rpc;
pub mod slot;
pub mod store;
pub mod verified;

pub use config::IndexConfig;
pub use entry::{Entry, EntryBody, EntryError, Profile, Status};
pub use slot::{NodeId, Slot, SlotMap, SlotSpace};
