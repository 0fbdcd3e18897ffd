//! The login server: the network's only central node.
//!
//! - [`username`] — username and password rules.
//! - [`service`] — request handling as plain logic over the store and the clock.
//! - [`buddies`] — buddy-list requests: signed operations on the owner's list.
//! - [`guard`] — throttling, puzzles and replay state behind one interface.
//! - [`puzzle`] — client puzzles: the cost a guesser pays instead of a refusal.
//! - [`replay`] — the timestamp window and nonce cache against replayed requests.
//! - [`store`] — accounts in SQLite (WAL, transactions, fsync on commit).
//! - [`revocations`] — revoked credentials in the same database, as `confab revoke` records them.
//! - [`server`] — the TCP shell.

pub mod buddies;
pub mod guard;
pub mod puzzle;
pub mod replay;
pub mod revocations;
pub mod server;
pub mod service;
pub mod store;
pub mod username;

pub use server::LoginServer;
pub use service::{LoginPolicy, LoginService};
pub use store::AccountStore;
