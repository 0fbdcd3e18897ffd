//! The host's own addresses, offered as host candidates in calls (the LAN address two
//! hosts behind one NAT reach each other on, the IPv6 address two hosts behind IPv4 NATs
//! that cannot be punched may meet on).

use std::net::{IpAddr, SocketAddr};

/// Most interface addresses offered in one call (an invite holds eight candidates).
pub const HOST_CANDIDATES_MAX: usize = 4;

/// Which of `ips` to offer, on port `port`: not loopback, unspecified, multicast or
/// link-local (a link-local address means nothing without its interface), IPv4 only while
/// port P is bound on IPv4 alone, not `public` (offered already); then private ones
/// first, at most [`HOST_CANDIDATES_MAX`].
pub fn offerable(ips: impl IntoIterator<Item = IpAddr>, port: u16, ipv6: bool, public: SocketAddr) -> Vec<SocketAddr> {
    let usable = |ip: &IpAddr| {
        let kind_ok = match ip {
            IpAddr::V4(v4) => !v4.is_link_local() && !v4.is_broadcast(),
            IpAddr::V6(v6) => ipv6 && !v6.is_unicast_link_local(),
        };
        kind_ok && !ip.is_loopback() && !ip.is_unspecified() && !ip.is_multicast()
    };
    let mut v: Vec<IpAddr> = Vec::new();
    for ip in ips.into_iter().filter(usable).filter(|ip| SocketAddr::new(*ip, port) != public) {
        if !v.contains(&ip) {
            v.push(ip);
        }
    }
    v.sort_by_key(|ip| !crate::call::path::is_private(*ip));
    v.truncate(HOST_CANDIDATES_MAX);
    v.into_iter().map(|ip| SocketAddr::new(ip, port)).collect()
}

/// The interface addresses of this machine (none when they cannot be read).
pub fn addresses() -> Vec<IpAddr> {
    match if_addrs::get_if_addrs() {
        Ok(ifs) => ifs.into_iter().map(|i| i.ip()).collect(),
        Err(e) => {
            tracing::warn!(error = %e, "could not read the interface addresses; offering none");
            Vec::new()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn offers_usable_addresses_private_first_and_few() {
        let ips =
            ["127.0.0.1", "198.18.1.2", "10.0.0.2", "169.254.1.1", "0.0.0.0", "fd00::2", "fe80::1", "::1", "10.0.0.2"]
                .map(|s| s.parse::<IpAddr>().unwrap());
        let none: SocketAddr = "0.0.0.0:0".parse().unwrap();
        let v4: Vec<String> = offerable(ips, 5000, false, none).iter().map(|a| a.to_string()).collect();
        assert_eq!(v4, ["10.0.0.2:5000", "198.18.1.2:5000"]);
        let both: Vec<String> = offerable(ips, 5000, true, none).iter().map(|a| a.to_string()).collect();
        assert_eq!(both, ["10.0.0.2:5000", "[fd00::2]:5000", "198.18.1.2:5000"]);
        let public = "198.18.1.2:5000".parse().unwrap();
        assert_eq!(offerable(ips, 5000, false, public).len(), 1, "the public address is offered already");
        let many = (1..=9).map(|i| IpAddr::from([10, 0, 0, i]));
        assert_eq!(offerable(many, 1, false, none).len(), HOST_CANDIDATES_MAX);
        // Filtered before the cut: unusable addresses take no place.
        let crowded = ["127.0.0.1", "169.254.0.1", "fe80::1", "::1", "224.0.0.1", "10.0.0.1", "2001:2::7"]
            .map(|s| s.parse::<IpAddr>().unwrap());
        assert_eq!(offerable(crowded, 1, true, none).len(), 2);
    }

    #[test]
    fn by_default_only_buddies_get_the_interface_addresses() {
        use crate::config::LocalCandidates;
        assert_eq!(LocalCandidates::default(), LocalCandidates::Buddies);
        assert!(LocalCandidates::Buddies.offer_to(true) && !LocalCandidates::Buddies.offer_to(false));
        assert!(LocalCandidates::Always.offer_to(false) && !LocalCandidates::Never.offer_to(true));
    }
}
