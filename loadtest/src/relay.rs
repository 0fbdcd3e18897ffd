//! The `relay` scenario's setup: pairs of real hosts logged in to the network; the first
//! host of each pair opens a relay session at its super node (RelayAllocate, as the
//! caller of a relayed call does) and the pair's two legs use its two tokens.

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
    /// Host A and host B of each pair, with A's relay session id.
    sessions: Vec<(Session, Session, u32)>,
}

/// Logs `n` pairs of hosts in and opens one relay session per pair.
pub async fn setup(hosts: &Arc<Hosts>, n: usize, bar: &ProgressBar) -> anyhow::Result<Relayed> {
    let users: Vec<String> =
        (0..n).flat_map(|i| [hosts.user(&format!("r{i}a")), hosts.user(&format!("r{i}b"))]).collect();
    bar.set_length(users.len() as u64);
    bar.set_message("logging in");
    let sessions = hosts.login_all(&users, bar).await?;
    let mut out = Relayed { pairs: Vec::with_capacity(n), relays: BTreeSet::new(), sessions: Vec::with_capacity(n) };
    let mut it = sessions.into_iter();
    bar.set_message("opening relay sessions");
    while let (Some(mut a), Some(b)) = (it.next(), it.next()) {
        let g = match a.allocate_relay().await {
            Ok(g) => g,
            Err(e) => {
                // Leave the pairs made so far logged out, not dangling.
                teardown(out).await;
                hosts::logout_all(vec![a, b]).await;
                return Err(anyhow::anyhow!("RelayAllocate: {e}"));
            }
        };
        let relay = g.relay.context("a RelayGrant without a relay address")?;
        let leg = |token: [u8; 16]| -> anyhow::Result<Leg> {
            Ok(Leg {
                socket: leg_socket(relay)?,
                prefix: packet::build(SessionId(g.session), Token::from_bytes(token), &[]),
                skip: RELAY_HEADER_LEN,
            })
        };
        out.pairs.push(Pair { a: leg(g.token_a)?, b: leg(g.token_b)? });
        out.relays.insert(relay);
        out.sessions.push((a, b, g.session));
    }
    Ok(out)
}

/// Releases the relay sessions and logs every host out.
pub async fn teardown(r: Relayed) {
    let mut all = Vec::with_capacity(2 * r.sessions.len());
    for (mut a, b, session) in r.sessions {
        a.release_relay(session).await;
        all.push(a);
        all.push(b);
    }
    hosts::logout_all(all).await;
}
