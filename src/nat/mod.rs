//! NAT classification from address observations, in the manner of RFC 5780 §4.3.
//!
//! The host sends probes from one local socket to two different destinations (a super
//! node's main and alternate ports, or two super nodes) and compares the public
//! addresses they report. No sockets here: the host library gathers the observations.

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
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Observations {
    /// The local address of the probing socket (with the interface address toward the
    /// first destination filled in, not 0.0.0.0).
    pub local: SocketAddr,
    /// The public address reported by the first destination (None: no UDP answer).
    pub first: Option<SocketAddr>,
    /// The public address reported by the second destination, which differs from the
    /// first in port or address (None: it did not answer).
    pub second: Option<SocketAddr>,
}

/// Classifies the NAT from one round of observations.
pub fn classify(o: &Observations) -> NatKind {
    match (o.first, o.second) {
        (None, None) => NatKind::UdpBlocked,
        (Some(a), _) | (None, Some(a)) if a == o.local => NatKind::None,
        (Some(a), Some(b)) if a == b => NatKind::Cone,
        (Some(_), Some(_)) => NatKind::Symmetric,
        _ => NatKind::Unknown,
    }
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
        let obs = |first, second| Observations { local, first, second };
        assert_eq!(classify(&obs(None, None)), NatKind::UdpBlocked);
        assert_eq!(classify(&obs(Some(local), Some(local))), NatKind::None);
        assert_eq!(classify(&obs(Some(local), None)), NatKind::None);
        let p = sa("198.18.1.2:4000");
        assert_eq!(classify(&obs(Some(p), Some(p))), NatKind::Cone);
        assert_eq!(classify(&obs(Some(p), Some(sa("198.18.1.2:51234")))), NatKind::Symmetric);
        assert_eq!(classify(&obs(Some(p), None)), NatKind::Unknown);
    }
}
