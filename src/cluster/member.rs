//! A super node as the membership layer knows it.

use crate::index::NodeId;
use std::net::SocketAddr;

/// A cluster member's identity: its gossip address (unique in the cluster), a bump that
/// grows each time it rejoins, and what other nodes need to know about it.
#[derive(Clone, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub struct Member {
    /// The UDP address it gossips on: its identity's address.
    pub gossip: SocketAddr,
    /// Grows on every rejoin, so a restarted node wins over its old self.
    pub bump: u32,
    /// Its index identity (its credential's key id); None for a seed known only by address.
    pub node: Option<[u8; 8]>,
    /// Its name.
    pub name: String,
    /// Where hosts reach it over UDP.
    pub udp: Option<SocketAddr>,
    /// Where hosts reach it over TCP.
    pub tcp: Option<SocketAddr>,
}

impl Member {
    /// A seed known only by its gossip address (bump 0: any real identity wins over it).
    pub fn seed(gossip: SocketAddr) -> Self {
        Self { gossip, bump: 0, node: None, name: String::new(), udp: None, tcp: None }
    }

    /// Its index identity, if it announced one.
    pub fn node_id(&self) -> Option<NodeId> {
        self.node.map(crate::crypto::KeyId)
    }
}

impl foca::Identity for Member {
    type Addr = SocketAddr;

    fn renew(&self) -> Option<Self> {
        Some(Self { bump: self.bump.wrapping_add(1).max(1), ..self.clone() })
    }

    fn addr(&self) -> SocketAddr {
        self.gossip
    }

    fn win_addr_conflict(&self, adversary: &Self) -> bool {
        self.bump > adversary.bump
    }
}
