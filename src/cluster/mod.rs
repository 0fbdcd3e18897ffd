//! Super-node membership: who is in the cluster, who is alive.
//!
//! - [`member`] — a member's identity and what others need to know about it.
//! - [`gossip`] — the packet format: data sealed per pair of members, hellos.
//! - [`cert`] — cluster certificates: a static key bound to a login-signed credential.
//! - [`replay`] — the per-sender replay window.
//! - [`peers`] — the authenticated members, as a plain state machine.
//! - [`reject`] — why a packet was dropped.
//! - [`membership`] — SWIM (the foca crate) as a plain state machine.
//! - [`revocation`] — spreading the revocation list between members.

pub mod cert;
pub mod gossip;
pub mod member;
pub mod membership;
pub mod peers;
pub mod reject;
pub mod replay;
pub mod revocation;

pub use member::Member;
pub use membership::Membership;
pub use peers::{ClusterLimits, Peers};
pub mod agent;

pub use agent::{AgentHandle, AgentSpec, View};

/// Unix time in ms (hellos are dated, and a node's packet counter starts from it).
pub fn now_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}
