//! The connection ladder of the original network, as a plan of attempts:
//! UDP to cached super nodes (at most 20), then TCP to them, then the bootstrap nodes
//! over UDP and TCP on their port (33033), then TCP 443 and 80 on the bootstrap nodes.

use super::cache::CacheEntry;
use std::net::SocketAddr;

/// Failed UDP attempts after which UDP is assumed blocked.
pub const UDP_FAILURES_MAX: usize = 20;

/// UDP or TCP.
pub use crate::supernode::session::Transport;

/// Which rung of the ladder an attempt is on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Stage {
    /// A cached super node over UDP.
    CachedUdp,
    /// A cached super node over TCP (UDP looked blocked).
    CachedTcp,
    /// A bootstrap node over UDP on its main port.
    BootstrapUdp,
    /// A bootstrap node over TCP on its main port.
    BootstrapTcp,
    /// A bootstrap node over TCP on a last-resort port (443, 80).
    FallbackTcp,
}

/// One attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Attempt {
    /// The rung.
    pub stage: Stage,
    /// UDP or TCP.
    pub transport: Transport,
    /// Where to.
    pub addr: SocketAddr,
}

/// Ladder settings.
#[derive(Debug, Clone)]
pub struct LadderConfig {
    /// Bootstrap super nodes (address and main port).
    pub bootstrap: Vec<SocketAddr>,
    /// Last-resort TCP ports tried on the bootstrap nodes' addresses.
    pub fallback_ports: Vec<u16>,
    /// UDP attempts on cached nodes before moving to TCP.
    pub udp_failures_max: usize,
    /// Hard cap on attempts in one run.
    pub attempts_max: usize,
}

impl Default for LadderConfig {
    fn default() -> Self {
        Self {
            bootstrap: Vec::new(),
            fallback_ports: vec![443, 80],
            udp_failures_max: UDP_FAILURES_MAX,
            attempts_max: 64,
        }
    }
}

/// The attempts to make, in order, bounded by `attempts_max`.
pub fn plan(cached: &[CacheEntry], cfg: &LadderConfig) -> Vec<Attempt> {
    let mut v = Vec::new();
    let mut push = |stage, transport, addr| {
        let a = Attempt { stage, transport, addr };
        if !v.contains(&a) {
            v.push(a);
        }
    };
    for addr in cached.iter().filter_map(|e| e.udp).take(cfg.udp_failures_max) {
        push(Stage::CachedUdp, Transport::Udp, addr);
    }
    for addr in cached.iter().filter_map(|e| e.tcp).take(cfg.udp_failures_max) {
        push(Stage::CachedTcp, Transport::Tcp, addr);
    }
    for &addr in &cfg.bootstrap {
        push(Stage::BootstrapUdp, Transport::Udp, addr);
    }
    for &addr in &cfg.bootstrap {
        push(Stage::BootstrapTcp, Transport::Tcp, addr);
    }
    for &port in &cfg.fallback_ports {
        for b in &cfg.bootstrap {
            push(Stage::FallbackTcp, Transport::Tcp, SocketAddr::new(b.ip(), port));
        }
    }
    v.truncate(cfg.attempts_max);
    v
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::host::cache::NodeKind;

    fn entry(i: u8) -> CacheEntry {
        CacheEntry {
            kind: NodeKind::Supernode,
            name: String::new(),
            udp: Some(SocketAddr::from(([198, 18, 0, i], 33033))),
            tcp: Some(SocketAddr::from(([198, 18, 0, i], 33033))),
            last_success: None,
            rtt_ms: None,
            failures: 0,
        }
    }

    #[test]
    fn order_of_the_original() {
        let cached: Vec<_> = (1..=25).map(entry).collect();
        let cfg = LadderConfig { bootstrap: vec!["198.18.9.1:33033".parse().unwrap()], ..Default::default() };
        let p = plan(&cached, &cfg);
        let stages: Vec<Stage> = p.iter().map(|a| a.stage).collect();
        let mut want = vec![Stage::CachedUdp; 20];
        want.extend([Stage::CachedTcp; 20]);
        want.extend([Stage::BootstrapUdp, Stage::BootstrapTcp, Stage::FallbackTcp, Stage::FallbackTcp]);
        assert_eq!(stages, want, "20 UDP failures, then TCP, then bootstrap, then 443/80");
        let small = LadderConfig { attempts_max: 5, ..cfg };
        assert_eq!(plan(&cached, &small).len(), 5, "bounded by attempts_max");
    }

    #[test]
    fn empty_cache_goes_to_bootstrap_then_fallback() {
        let cfg = LadderConfig {
            bootstrap: vec!["198.18.9.1:33033".parse().unwrap(), "198.18.9.2:33033".parse().unwrap()],
            ..Default::default()
        };
        let p = plan(&[], &cfg);
        let got: Vec<(Stage, Transport, u16)> = p.iter().map(|a| (a.stage, a.transport, a.addr.port())).collect();
        assert_eq!(
            got,
            vec![
                (Stage::BootstrapUdp, Transport::Udp, 33033),
                (Stage::BootstrapUdp, Transport::Udp, 33033),
                (Stage::BootstrapTcp, Transport::Tcp, 33033),
                (Stage::BootstrapTcp, Transport::Tcp, 33033),
                (Stage::FallbackTcp, Transport::Tcp, 443),
                (Stage::FallbackTcp, Transport::Tcp, 443),
                (Stage::FallbackTcp, Transport::Tcp, 80),
                (Stage::FallbackTcp, Transport::Tcp, 80),
            ]
        );
    }
}
