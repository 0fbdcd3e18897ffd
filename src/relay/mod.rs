//! The super node's relay data plane: UDP media between two hosts that cannot reach
//! each other, forwarded by worker threads without an actor (or a lock) per packet.
//!
//! - [`packet`] — the relay header (`0x52 | session id | token | inner`): parse, build,
//!   and the in-place token wipe applied to every forwarded copy. No I/O.
//! - [`table`] — the shared [`SessionTable`] the control plane (one `RelaySession` actor
//!   per call) fills with [`SessionTable::allocate`] and clears with
//!   [`SessionTable::release`]; [`SessionTable::decide`] is the whole forwarding rule
//!   for one datagram. No I/O.
//! - [`worker`] — [`RelayWorkers`]: one SO_REUSEPORT UDP socket and one thread per worker,
//!   each running receive → decide → wipe token → send, counted per worker.
//! - [`hold`] — a worker's file datagrams held for their session's file cap (a short
//!   queue in front of the bucket, so a transfer meets a bottleneck, not a policer).
//! - [`tcp`] — legs over TCP on the same port number, for hosts whose UDP is blocked.
//! - [`handoff`] — leg B's token sealed to the callee, so the caller cannot use it.
//! - [`floor`] — the least a forwarder can do, batched as the workers are: the baseline
//!   benchmarks and the load-test harness measure the relay against.
//!
//! The relay never decrypts media: the inner packet is sealed end to end
//! ([`crate::call::media`]) and the relay only reads its own 21-byte header.
//!
//! Driving contract: every timestamp here is [`clock_ms`] (a monotonic millisecond
//! clock shared by the workers and the control plane), so `allocate`, `idle_ms` and the
//! workers' `decide` calls agree on what "now" is.

pub mod floor;
pub mod handoff;
pub mod hold;
pub mod mmsg;
pub mod packet;
pub mod table;
pub mod tcp;
pub mod worker;

pub use packet::{RELAY_HEADER_LEN, RELAYED_LEN_MAX, SessionId, TOKEN_LEN, Token};
pub use table::{Accounting, Decision, DropReason, Endpoints, Grant, Limits, Peer, SessionTable, TableError};
pub use worker::{RelayStats, RelayWorkers, WorkerConfig};

use std::sync::OnceLock;
use std::time::Instant;

/// Milliseconds on a monotonic clock (since this process first asked): the `now_ms`
/// the relay's workers use, so the control plane must use it too.
pub fn clock_ms() -> u64 {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    let epoch = *EPOCH.get_or_init(Instant::now);
    u64::try_from(epoch.elapsed().as_millis()).unwrap_or(u64::MAX)
}
