//! # confab — an open re-creation of the Skype-era peer-to-peer network
//!
//! # Layout
//!
//! - [`crypto`] — RSA keys, credentials, AES-256-GCM sealing, RC4 header obfuscation,
//!   the argon2id shared secret. Plain functions over bytes.
//! - [`wire`] — frames, messages and STUN Binding: encode and total decode, no I/O.
//! - [`nat`] — NAT classification from observed addresses, no I/O.
//! - [`login`] — the login server: username rules, the handshake as plain logic,
//!   back-off, replay cache, the SQLite account store, and the TCP shell around them.
//! - [`cluster`] — super-node membership: SWIM gossip (foca) sealed with the cluster key.
//! - [`supernode`] — the super node: the host-session state machine, the actix
//!   `HostSession` actor that drives it, and the UDP/TCP listeners.
//! - [`relay`] — the relay data plane: the session table and the UDP worker threads.
//! - [`host`] — the host library: home folder, host cache, connection ladder, login.
//! - [`index`] — the Global Index as plain logic: slots, signed entries, lookups.
//! - [`buddy`] — buddy lists: contact ids, sealed records, signed operations, notices.
//! - [`call`] — calls as plain logic: the state machine, invites, sealed signals.
//! - [`chat`] — chat as plain logic: sealed, signed messages, a device's history, groups.
//! - [`transfer`] — file transfer as plain logic over QUIC (quinn-proto): manifest,
//!   resumable state in the home folder, the pinned-certificate connection, both sides.
//! - [`net`] — length-prefixed frames over TCP, shared by every role.
//! - [`config`] — figment layering and validation with key names.
//! - [`telemetry`] — tracing and the Prometheus exporter.
//! - [`network`] — `confab up`: a whole local network in one process.
//! - `fuzzing` (hidden) — one function that feeds bytes to every decoder, for `fuzz/`.
//!
//! Protocol logic takes `now` (unix seconds) as an argument and returns what to send;
//! actors and sockets only feed it. `docs/protocol.md` describes every byte on the wire.

// No unsafe code, except in the one module that wraps batched socket calls
// (`relay::mmsg`), which allows it for itself.
#![deny(unsafe_code)]
#![warn(missing_docs)]

pub mod buddy;
pub mod call;
pub mod chat;
pub mod cluster;
pub mod config;
pub mod crypto;
pub mod fsutil;
// Entry points for the fuzz targets in `fuzz/` and the corpus replay in tests/fuzz_corpus.rs.
#[doc(hidden)]
pub mod fuzzing;
pub mod host;
pub mod index;
pub mod keygen;
pub mod login;
pub mod nat;
pub mod net;
pub mod network;
pub mod relay;
pub mod supernode;
pub mod telemetry;
pub mod transfer;
pub mod wire;

/// This build's software version, advertised in Hello and compared with the login
/// server's latest version.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

/// Seconds since the Unix epoch: the one place the wall clock is read by protocol code's
/// callers. Logic functions take this value as an argument.
pub fn unix_now() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}
