//! NAT classification from address observations, in the manner of RFC 5780 §4.3.
//!
//! The host sends probes from one local socket to several destinations and compares the
//! public addresses they report: a super node on another IP address tells whether the
//! mapping depends on the destination address, the super node's alternate port whether
//! it depends on the destination port. No sockets here: the host gathers observations.

use std::net::SocketAddr;

/// What kind of NAT (if any) stands between a host and the internet.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum NatKind {
    /// The host's own address is public: no translation.
    None,
    /// Endpoint-independent mapping: the same public address for every destination.
    Cone,
    /// Address- or port-dependent mapping: a new public address per destination.
    Symmetric,
    /// Translation observed, but only one destination answered, so the mapping
    /// behaviour could not be told.
    Unknown,
    /// No UDP answer at all: the host got through over TCP only.
    UdpBlocked,
}

impl NatKind {
    /// A short label for output and metrics.
    pub fn label(self) -> &'static str {
        match self {
            Self::None => "none",
            Self::Cone => "cone",
            Self::Symmetric => "symmetric",
            Self::Unknown => "unknown",
            Self::UdpBlocked => "udp_blocked",
        }
    }
}

impl std::fmt::Display for NatKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.label())
    }
}

/// What the host saw.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Observations {
    /// The local address of the probing socket (with the interface address toward the
    /// first destination filled in, not 0.0.0.0).
    pub local: SocketAddr,
    /// The public address reported by the first destination (None: no UDP answer).
    pub first: Option<SocketAddr>,
    /// The public addresses reported by other destinations (other address or port).
    pub others: Vec<SocketAddr>,
}

/// Classifies the NAT from one round of observations.
pub fn classify(o: &Observations) -> NatKind {
    let Some(first) = o.first.or_else(|| o.others.first().copied()) else {
        return NatKind::UdpBlocked;
    };
    if first == o.local {
        return NatKind::None;
    }
    let others: Vec<&SocketAddr> = o.others.iter().filter(|a| o.first.is_some() || **a != first).collect();
    if o.first.is_none() || others.is_empty() {
        return NatKind::Unknown;
    }
    if others.iter().all(|a| **a == first) { NatKind::Cone } else { NatKind::Symmetric }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sa(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    #[test]
    fn all_cases() {
        let local = sa("10.0.0.2:4000");
        let obs = |first, others: &[SocketAddr]| Observations { local, first, others: others.to_vec() };
        assert_eq!(classify(&obs(None, &[])), NatKind::UdpBlocked);
        assert_eq!(classify(&obs(Some(local), &[local])), NatKind::None);
        assert_eq!(classify(&obs(Some(local), &[])), NatKind::None);
        let p = sa("198.18.1.2:4000");
        assert_eq!(classify(&obs(Some(p), &[p, p])), NatKind::Cone);
        // Same mapping toward the alternate port, another toward another address: the
        // mapping depends on the address, which is what breaks hole punching.
        assert_eq!(classify(&obs(Some(p), &[p, sa("198.18.1.2:51234")])), NatKind::Symmetric);
        assert_eq!(classify(&obs(Some(p), &[sa("198.18.1.2:51234")])), NatKind::Symmetric);
        assert_eq!(classify(&obs(Some(p), &[])), NatKind::Unknown);
        assert_eq!(classify(&obs(None, &[p])), NatKind::Unknown);
    }
}
