//! `RelaySession`: one actix actor per relayed call. It owns a row of the relay's shared
//! session table for as long as the call needs it — the packets themselves never pass
//! through the actor (the relay workers forward them by the table) — and ends it when
//! the host releases it, when its owner's session ends, or when no packet has passed
//! for the idle timeout, logging and counting what it carried.

use crate::relay::table::{Grant, SessionTable};
use actix::prelude::*;
use metrics::{counter, gauge};
use std::time::Duration;

/// Ends the session now (the host released it, or its owner left).
#[derive(Message)]
#[rtype(result = "()")]
pub struct Release(pub &'static str);

/// The actor.
pub struct RelaySession {
    node: String,
    table: SessionTable,
    grant: Grant,
    owner: String,
    idle_timeout: Duration,
    reason: &'static str,
    /// The owner's and its source's hold on their quotas, given back when the session ends.
    quota: Option<(crate::net::source::Claim<String>, crate::net::source::SourceClaim)>,
}

impl RelaySession {
    /// A session for `grant`, opened by `owner`.
    pub fn new(node: String, table: SessionTable, grant: Grant, owner: String, idle_timeout: Duration) -> Self {
        Self { node, table, grant, owner, idle_timeout, reason: "released", quota: None }
    }

    /// Holds the owner's and its source's quota claims for the session's life.
    pub fn holding(mut self, user: crate::net::source::Claim<String>, source: crate::net::source::SourceClaim) -> Self {
        self.quota = Some((user, source));
        self
    }
}

impl Actor for RelaySession {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        gauge!("confab_relay_sessions_active", "node" => self.node.clone()).set(self.table.len() as f64);
        counter!("confab_relay_sessions_total", "node" => self.node.clone(), "event" => "created").increment(1);
        tracing::info!(node = %self.node, owner = %self.owner, session = self.grant.session.0, "relay session opened");
        let idle_ms = self.idle_timeout.as_millis() as u64;
        ctx.run_interval(Duration::from_secs(1), move |act, ctx| {
            let idle = act.table.idle_ms(act.grant.session, crate::relay::clock_ms());
            if idle.is_none_or(|i| i >= idle_ms) {
                act.reason = "idle";
                ctx.stop();
            }
        });
    }

    fn stopped(&mut self, _: &mut Context<Self>) {
        let acct = self.table.release(self.grant.session).unwrap_or_default();
        let event = match self.reason {
            "idle" => "expired",
            "owner_left" => "owner_left",
            _ => "released",
        };
        counter!("confab_relay_sessions_total", "node" => self.node.clone(), "event" => event).increment(1);
        gauge!("confab_relay_sessions_active", "node" => self.node.clone()).set(self.table.len() as f64);
        tracing::info!(
            node = %self.node, owner = %self.owner, session = self.grant.session.0, reason = self.reason,
            packets_a_to_b = acct.packets_a_to_b, bytes_a_to_b = acct.bytes_a_to_b,
            packets_b_to_a = acct.packets_b_to_a, bytes_b_to_a = acct.bytes_b_to_a, dropped = acct.dropped,
            "relay session closed"
        );
    }
}

impl Handler<Release> for RelaySession {
    type Result = ();

    fn handle(&mut self, msg: Release, ctx: &mut Context<Self>) {
        self.reason = msg.0;
        ctx.stop();
    }
}
