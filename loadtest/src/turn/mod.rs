//! The `turn` scenario: the same pairs and packets as `relay`, through a standard TURN
//! server (RFC 8656). Each pair is two allocations relaying to each other: leg A sends
//! ChannelData to its allocation, which relays it from A's relayed address to B's;
//! B's allocation has the channel bound to A's relayed address, so B receives it as
//! ChannelData too.
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

/// Allocates `pairs` pairs on `server` and binds each allocation's channel to its
/// peer's relayed address; `tick` is called once per pair set up.
pub fn setup(
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
