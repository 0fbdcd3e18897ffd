//! The login server: the network's only central node.
//!
//! - [`username`] — username and password rules.
//! - [`service`] — request handling as plain logic over the store and the clock.
//! - [`buddies`] — buddy-list requests: signed operations on the owner's list.
//! - [`backoff`] — per-username and per-address back-off after failures.
//! - [`replay`] — the timestamp window and nonce cache against replayed requests.
//! - [`store`] — accounts in SQLite (WAL, transactions, fsync on commit).
//! - [`server`] — the TCP shell.

pub mod backoff;
pub mod buddies;
pub mod replay;
pub mod server;
pub mod service;
pub mod store;
pub mod username;

pub use server::LoginServer;
pub use service::{LoginPolicy, LoginService};
pub use store::AccountStore;
