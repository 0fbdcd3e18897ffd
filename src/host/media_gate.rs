//! What a host's media sockets (port P on IPv4 and IPv6, the birthday technique's extra
//! sockets) let through to its calls: datagrams shaped like media, at most so many a
//! second per source, and for an extra socket only from the address it probes. The calls
//! authenticate what passes; this keeps a flood from one address from filling the queue
//! the calls share. A refusal is logged once per source and reason, then dropped quietly.

use crate::net::source::{RefusalLog, SourceKey, SourceRate};
use std::net::{IpAddr, SocketAddr};

/// Datagrams a second one source may send a host's media queue: a call's voice is 50 and
/// its path search's probes a few dozen more, and a relay sends every call relayed
/// through it from one address.
pub const PER_SOURCE_PER_SEC: u32 = 1000;
/// What one source may send at once before its rate holds it.
pub const PER_SOURCE_BURST: u32 = 200;
/// Sources remembered at once.
const SOURCES_MAX: usize = 4096;

/// The gate in front of one socket's media queue.
#[derive(Debug)]
pub struct MediaGate {
    rate: SourceRate,
    refused: RefusalLog,
    only: Option<IpAddr>,
}

impl Default for MediaGate {
    fn default() -> Self {
        Self {
            rate: SourceRate::new(PER_SOURCE_PER_SEC, PER_SOURCE_BURST, SOURCES_MAX),
            refused: RefusalLog::new(SOURCES_MAX),
            only: None,
        }
    }
}

impl MediaGate {
    /// A gate that lets through only what comes from `peer` (an extra socket probes one
    /// address: nobody else has business sending to it).
    pub fn only_from(peer: IpAddr) -> Self {
        Self { only: Some(peer), ..Self::default() }
    }

    /// Whether `datagram` from `from` at `now_ms` goes on to the calls.
    pub fn admit(&mut self, from: SocketAddr, datagram: &[u8], now_ms: u64) -> bool {
        if datagram.first().is_none_or(|b| !super::link::is_media(*b)) {
            return false;
        }
        let source = SourceKey::from(from.ip());
        let reason = if self.only.is_some_and(|p| p != from.ip()) {
            "not_the_peer"
        } else if !self.rate.allow(source, now_ms) {
            "media_rate"
        } else {
            return true;
        };
        if self.refused.first(source, reason) {
            tracing::info!(%from, reason, "dropping media datagrams from this source");
        }
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    #[test]
    fn a_flood_from_one_source_is_held_to_its_rate_and_others_still_pass() {
        let mut g = MediaGate::default();
        let (attacker, peer) = (addr("198.18.9.9:1"), addr("198.18.1.2:5000"));
        let media = [0x4d, 0, 0];
        let passed = (0..10_000).filter(|_| g.admit(attacker, &media, 0)).count();
        assert_eq!(passed, PER_SOURCE_BURST as usize, "a burst, then nothing within the same instant");
        assert!(g.admit(peer, &media, 0), "another source is untouched");
        let later = (0..10_000).filter(|_| g.admit(attacker, &media, 100)).count();
        assert_eq!(later, PER_SOURCE_PER_SEC as usize / 10, "refilled at its rate");
        assert!(!g.admit(peer, &[0x01, 0, 0], 0), "a frame's first byte is not media");
        assert!(!g.admit(peer, &[], 0));
    }

    #[test]
    fn an_extra_socket_hears_only_its_peer() {
        let mut g = MediaGate::only_from("198.18.2.2".parse().unwrap());
        assert!(g.admit(addr("198.18.2.2:5000"), &[0x50, 1], 0));
        assert!(g.admit(addr("198.18.2.2:6000"), &[0x50, 1], 0), "any port of its address (the NAT's)");
        assert!(!g.admit(addr("198.18.9.9:5000"), &[0x50, 1], 0));
    }
}
