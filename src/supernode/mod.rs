//! The super node: public-IP machines that keep hosts connected, tell them their public
//! address, answer STUN, and (in later steps) hold the Global Index and relay calls.
//!
//! - [`handshake`] — the host handshake, as plain functions (cookie, Auth checks).
//! - [`directory`] — signed queries to the login servers' recently-seen directory.
//! - [`session`] — one established host session, as a plain state machine.
//! - [`host_session`] — the `HostSession` actor that drives a session.
//! - [`node`] — sockets and routing of frames to sessions.
//! - [`mailbox`] — connected hosts by username, for notices between hosts.
//! - [`relay_session`] — the `RelaySession` actor: one per relayed call, over the relay's table.
//! - [`metrics`] — counters and the once-per-reason rejection log.

pub mod directory;
pub mod handshake;
pub mod host_session;
pub mod index_router;
pub mod index_slot;
pub mod mailbox;
pub mod metrics;
pub mod node;
pub mod relay_session;
pub mod revocation;
pub mod session;

pub use handshake::Identity;
pub use node::{BoundNode, NodeAddrs, NodeSpec, RunningNode, SessionParams};

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::crypto::credential::{Claims, Credential, CredentialKind, TrustedKeys};
    use crate::crypto::keys::tests::test_key;

    /// A super-node identity signed by test login key 0.
    pub fn identity() -> Identity {
        let login = test_key(0);
        let key = test_key(1);
        let cred = Credential::issue(
            Claims {
                kind: CredentialKind::SuperNode,
                subject: "sn-test".into(),
                public_key: key.public().clone(),
                issued_at: 0,
                expires_at: u64::MAX / 2,
                serial: 1,
            },
            &login,
        );
        Identity::new("sn-test".into(), key, cred, TrustedKeys::new(vec![login.public().clone()]))
    }
}
