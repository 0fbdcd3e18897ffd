//! Super-node membership: who is in the cluster, who is alive.
//!
//! - [`member`] — a member's identity and what others need to know about it.
//! - [`gossip`] — gossip packets sealed with the cluster key.
//! - [`membership`] — SWIM (the foca crate) as a plain state machine.

pub mod gossip;
pub mod member;
pub mod membership;

pub use member::Member;
pub use membership::Membership;
pub mod agent;

pub use agent::{AgentHandle, AgentSpec, View};
