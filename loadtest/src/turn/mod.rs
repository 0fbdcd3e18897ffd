//! The `turn` scenario: the same pairs and packets as `relay`, through a standard TURN
//! server (RFC 8656), in one of two shapes:
//!
//! - **one hop** (the default, as a confab relay session is one hop): one allocation per
//!   pair. Leg A is the TURN client: it sends ChannelData to the server, which relays the
//!   inner packet from A's relayed address to leg B, a plain UDP peer with a permission
//!   and a channel bound to it; B sends plain datagrams to A's relayed address, which
//!   reach A as ChannelData. Every datagram crosses the server once.
//! - **two hops** (`--turn-hops 2`): two allocations relaying to each other, each leg a
//!   TURN client (A → allocation A → allocation B → B): every datagram crosses the
//!   server twice, so it does twice a one-hop relay's work per delivered datagram.
//!
//! - [`stun`] — message encoding, MESSAGE-INTEGRITY, ChannelData framing. No I/O.
//! - [`client`] — Allocate (long-term credentials), CreatePermission, ChannelBind.
//! - [`server`] — coturn as a child process on loopback.

pub mod client;
pub mod server;
pub mod stun;

use crate::traffic::{Leg, Pair, leg_socket};
use client::{Allocation, Credentials};
use std::net::SocketAddr;

/// The channel each allocation binds to its peer (the first one RFC 8656 allows).
pub const CHANNEL: u16 = 0x4000;

/// Sets `pairs` pairs up on `server` with `hops` (1 or 2) crossings of the server per
/// datagram; `tick` is called once per pair set up.
pub fn setup(
    server: SocketAddr,
    creds: &Credentials,
    pairs: usize,
    inner_len: usize,
    hops: u8,
    tick: &dyn Fn(),
) -> anyhow::Result<(Vec<Pair>, Vec<Allocation>)> {
    match hops {
        1 => setup_one_hop(server, creds, pairs, inner_len, tick),
        2 => setup_two_hops(server, creds, pairs, inner_len, tick),
        _ => anyhow::bail!("--turn-hops: 1 or 2"),
    }
}

/// One allocation per pair (leg A's); leg B a plain UDP peer of A's relayed address,
/// with a permission and a channel bound to it.
fn setup_one_hop(
    server: SocketAddr,
    creds: &Credentials,
    pairs: usize,
    inner_len: usize,
    tick: &dyn Fn(),
) -> anyhow::Result<(Vec<Pair>, Vec<Allocation>)> {
    let mut out = Vec::with_capacity(pairs);
    let mut allocations = Vec::with_capacity(pairs);
    let prefix = stun::channel_data_header(CHANNEL, inner_len).to_vec();
    for i in 0..pairs {
        let mut a =
            Allocation::allocate(leg_socket(server)?, creds).map_err(|e| e.context(format!("pair {i}, leg A")))?;
        let peer = leg_socket(a.relayed)?;
        let peer_addr = peer.local_addr()?;
        a.create_permission(peer_addr)?;
        a.channel_bind(CHANNEL, peer_addr)?;
        out.push(Pair {
            a: Leg { socket: a.socket()?, prefix: prefix.clone(), skip: stun::CHANNEL_DATA_HEADER_LEN },
            b: Leg { socket: peer, prefix: vec![], skip: 0 },
        });
        allocations.push(a);
        tick();
    }
    Ok((out, allocations))
}

/// Two allocations per pair relaying to each other over bound channels.
fn setup_two_hops(
    server: SocketAddr,
    creds: &Credentials,
    pairs: usize,
    inner_len: usize,
    tick: &dyn Fn(),
) -> anyhow::Result<(Vec<Pair>, Vec<Allocation>)> {
    let mut out = Vec::with_capacity(pairs);
    let mut allocations = Vec::with_capacity(2 * pairs);
    let prefix = stun::channel_data_header(CHANNEL, inner_len).to_vec();
    for i in 0..pairs {
        let mut a =
            Allocation::allocate(leg_socket(server)?, creds).map_err(|e| e.context(format!("pair {i}, leg A")))?;
        let mut b =
            Allocation::allocate(leg_socket(server)?, creds).map_err(|e| e.context(format!("pair {i}, leg B")))?;
        a.create_permission(b.relayed)?;
        a.channel_bind(CHANNEL, b.relayed)?;
        b.create_permission(a.relayed)?;
        b.channel_bind(CHANNEL, a.relayed)?;
        let leg = |x: &Allocation| -> anyhow::Result<Leg> {
            Ok(Leg { socket: x.socket()?, prefix: prefix.clone(), skip: stun::CHANNEL_DATA_HEADER_LEN })
        };
        out.push(Pair { a: leg(&a)?, b: leg(&b)? });
        allocations.push(a);
        allocations.push(b);
        tick();
    }
    Ok((out, allocations))
}

/// Releases every allocation (best effort: the server frees them at their lifetime's end
/// anyway); returns how many it refused or did not answer.
pub fn release(allocations: &mut [Allocation]) -> usize {
    allocations.iter_mut().filter_map(|a| a.release().err()).count()
}
