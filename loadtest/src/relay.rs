//! The `relay` scenario's setup: pairs of real hosts logged in to the network; the first
//! host of each pair opens a relay session at its super node for a call with the second
//! (RelayAllocate, as the caller of a relayed call does): leg A's token is the first's,
//! leg B's comes sealed to the second, which opens it, as a callee does.

use crate::hosts::{self, Hosts};
use crate::traffic::{Leg, Pair, leg_socket};
use anyhow::Context;
use confab::host::Session;
use confab::relay::packet::{self, RELAY_HEADER_LEN, SessionId, Token};
use indicatif::ProgressBar;
use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::sync::Arc;

/// Logged-in pairs with a relay session each.
pub struct Relayed {
    /// The legs, ready for the traffic engine.
    pub pairs: Vec<Pair>,
    /// The relays the sessions were granted on.
    pub relays: BTreeSet<SocketAddr>,
    /// Host A and host B of each host pair, with the relay sessions A opened.
    sessions: Vec<(Session, Session, Vec<u32>)>,
}

/// Opens `n` relay sessions, `per_host` by the first host of each pair of hosts it logs
/// in (⌈n / per_host⌉ pairs); each session is one pair of legs.
pub async fn setup(hosts: &Arc<Hosts>, n: usize, per_host: usize, bar: &ProgressBar) -> anyhow::Result<Relayed> {
    let per_host = per_host.max(1);
    let host_pairs = n.div_ceil(per_host);
    let users: Vec<String> =
        (0..host_pairs).flat_map(|i| [hosts.user(&format!("r{i}a")), hosts.user(&format!("r{i}b"))]).collect();
    bar.set_length(users.len() as u64);
    bar.set_message("logging in");
    let sessions = hosts.login_all(&users, bar).await?;
    let mut out =
        Relayed { pairs: Vec::with_capacity(n), relays: BTreeSet::new(), sessions: Vec::with_capacity(host_pairs) };
    let mut it = sessions.into_iter();
    bar.set_message("opening relay sessions");
    bar.set_position(0);
    bar.set_length(n as u64);
    while let (Some(mut a), Some(b)) = (it.next(), it.next()) {
        let mut opened = Vec::new();
        let callee = b.credential().clone();
        while opened.len() < per_host && out.pairs.len() < n {
            let mut tries = 0;
            let grant = loop {
                match a.allocate_relay(&callee).await {
                    // A super node takes 50 requests a second from one host: wait it out.
                    Err(e) if e.to_string().contains("slow down") && tries < 3 => {
                        tries += 1;
                        tokio::time::sleep(std::time::Duration::from_secs(1)).await;
                    }
                    other => break other,
                }
            };
            let g = match grant {
                Ok(g) => g,
                Err(e) => {
                    // Leave what was made so far released and logged out, not dangling.
                    out.sessions.push((a, b, opened));
                    teardown(out).await;
                    return Err(anyhow::anyhow!("RelayAllocate: {e}"));
                }
            };
            opened.push(g.session);
            let relay = g.relay.context("a RelayGrant without a relay address")?;
            let leg = |token: [u8; 16]| -> anyhow::Result<Leg> {
                Ok(Leg {
                    socket: leg_socket(relay)?,
                    prefix: packet::build(SessionId(g.session), Token::from_bytes(token), &[]),
                    skip: RELAY_HEADER_LEN,
                })
            };
            let token_b = b.open_relay_leg(g.session, &g.leg_b).context("leg B's token")?;
            out.pairs.push(Pair { a: leg(g.token_a)?, b: leg(token_b)? });
            out.relays.insert(relay);
            bar.inc(1);
        }
        out.sessions.push((a, b, opened));
    }
    Ok(out)
}

/// Releases the relay sessions and logs every host out.
pub async fn teardown(r: Relayed) {
    let mut all = Vec::with_capacity(2 * r.sessions.len());
    for (mut a, b, sessions) in r.sessions {
        for s in sessions {
            a.release_relay(s).await;
        }
        all.push(a);
        all.push(b);
    }
    hosts::logout_all(all).await;
}
