//! The host's own addresses, offered as host candidates in calls (the LAN address two
//! hosts behind one NAT reach each other on).

use std::net::{IpAddr, SocketAddr};

/// Most interface addresses offered in one call (an invite holds eight candidates).
pub const HOST_CANDIDATES_MAX: usize = 4;

/// Which of `ips` to offer, on port `port`: not loopback, unspecified, multicast or
/// link-local (a link-local address means nothing without its interface), IPv4 only while
/// port P is bound on IPv4 alone, at most [`HOST_CANDIDATES_MAX`], private ones first.
pub fn offerable(ips: impl IntoIterator<Item = IpAddr>, port: u16, ipv6: bool) -> Vec<SocketAddr> {
    let mut v: Vec<IpAddr> = Vec::new();
    for ip in
        ips.into_iter().filter(|ip| !ip.is_loopback() && !ip.is_unspecified() && !ip.is_multicast()).filter(|ip| {
            match ip {
                IpAddr::V4(v4) => !v4.is_link_local() && !v4.is_broadcast(),
                IpAddr::V6(v6) => ipv6 && !v6.is_unicast_link_local(),
            }
        })
    {
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
        let v4: Vec<String> = offerable(ips, 5000, false).iter().map(|a| a.to_string()).collect();
        assert_eq!(v4, ["10.0.0.2:5000", "198.18.1.2:5000"]);
        let both: Vec<String> = offerable(ips, 5000, true).iter().map(|a| a.to_string()).collect();
        assert_eq!(both, ["10.0.0.2:5000", "[fd00::2]:5000", "198.18.1.2:5000"]);
        let many = (1..=9).map(|i| IpAddr::from([10, 0, 0, i]));
        assert_eq!(offerable(many, 1, false).len(), HOST_CANDIDATES_MAX);
    }
}
