//! Why a cluster packet was dropped, and the log-once rule for it.

use std::collections::HashSet;
use std::net::IpAddr;

/// Why a cluster packet was dropped (the `reason` label of
/// `confab_cluster_packets_rejected_total`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Reject {
    /// Not a cluster packet, cut short, or a payload that does not decode.
    Malformed,
    /// Names a sender whose certificate this node does not hold.
    UnknownSender,
    /// Does not open with the key it names (the pair key, or for a hello the cluster key).
    BadMac,
    /// Its counter was seen before (or is too old for the window).
    Replayed,
    /// Came from another address than the sender's certified gossip address.
    WrongAddress,
    /// A hello whose certificate does not verify, or claims this node's own id.
    BadCertificate,
    /// A hello sent too long ago (or in the future).
    StaleHello,
    /// A hello with an older certificate than the one held for its node.
    StaleCertificate,
    /// A gossip packet whose sender inside (foca's header) is not the authenticated one.
    WrongIdentity,
    /// An index request from a node that is not a member of the current view.
    NotMember,
    /// From a node whose credential is on the revocation list (a packet, or a hello).
    Revoked,
    /// A revocation-list packet that does not decode, or a list that was refused.
    BadRevocationList,
}

impl Reject {
    /// The metric label.
    pub fn label(self) -> &'static str {
        match self {
            Self::Malformed => "malformed",
            Self::UnknownSender => "unknown_sender",
            Self::BadMac => "bad_mac",
            Self::Replayed => "replayed",
            Self::WrongAddress => "wrong_address",
            Self::BadCertificate => "bad_certificate",
            Self::StaleHello => "stale_hello",
            Self::StaleCertificate => "stale_certificate",
            Self::WrongIdentity => "wrong_identity",
            Self::NotMember => "not_member",
            Self::Revoked => "revoked",
            Self::BadRevocationList => "bad_revocation_list",
        }
    }
}

/// Most (source, reason) pairs remembered; past it, new ones are only counted.
const REMEMBERED_MAX: usize = 4096;

/// Remembers which (source, reason) pairs were logged, so each is logged once.
#[derive(Debug, Default)]
pub struct LogOnce(HashSet<(IpAddr, Reject)>);

impl LogOnce {
    /// True the first time `source` is refused for `why` (while there is room).
    pub fn first(&mut self, source: IpAddr, why: Reject) -> bool {
        self.0.len() < REMEMBERED_MAX && self.0.insert((source, why))
    }
}

/// Counts a dropped packet for node `node`, and logs it once per source and reason.
pub fn count(node: &str, log: &mut LogOnce, source: std::net::SocketAddr, why: Reject) {
    metrics::counter!("confab_cluster_packets_rejected_total", "node" => node.to_owned(), "reason" => why.label())
        .increment(1);
    if log.first(source.ip(), why) {
        tracing::warn!(node, %source, reason = why.label(), "dropped a cluster packet (further drops from this source for this reason are only counted)");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn once_per_source_and_reason() {
        let mut l = LogOnce::default();
        let a: IpAddr = "127.0.0.2".parse().unwrap();
        assert!(l.first(a, Reject::Replayed));
        assert!(!l.first(a, Reject::Replayed));
        assert!(l.first(a, Reject::BadMac));
        assert!(l.first("127.0.0.3".parse().unwrap(), Reject::Replayed));
    }
}
