//! A stored message pushed to every session of its recipient. A user logged in on
//! several devices may hold sessions at several super nodes; the replicas of the user's
//! slot hold an index entry per session, each naming its super node. So the node that
//! stored a message asks one replica (itself first) where the sessions are, and sends the
//! notice to each of those nodes once. The push is only a hint: a device that misses it
//! fetches the message at its next fetch.

use super::IndexRouter;
use crate::index::rpc::{IndexRpc, MailRpc};
use crate::supernode::index_slot::SessionsAt;
use crate::supernode::mailbox;
use actix::prelude::*;
use metrics::counter;
use std::collections::BTreeSet;
use std::time::Duration;

/// How long a replica has to say where a recipient's sessions are.
const WHERE_WAIT: Duration = Duration::from_secs(1);

/// A push waiting for a replica's answer.
pub(super) struct Pushing {
    to: String,
    body: Vec<u8>,
}

impl IndexRouter {
    /// Pushes the notice `body` to every super node where `to` has a session.
    pub(super) fn push_to_sessions(&mut self, to: String, body: Vec<u8>, ctx: &mut Context<Self>) {
        let slot = self.slot_of(&to);
        let replicas = self.map.replicas(slot).to_vec();
        if replicas.contains(&self.me)
            && let Some(actor) = self.slots.get(&slot).cloned()
        {
            ctx.spawn(actor.send(SessionsAt { key: to.clone() }).into_actor(self).map(move |res, act, _| {
                act.push_at(&to, body, res.unwrap_or_default());
            }));
            return;
        }
        let Some((peer, addr)) =
            replicas.iter().find_map(|r| self.gossip_of.get(r).map(|a| (*r, *a))).filter(|_| !replicas.is_empty())
        else {
            counter!("confab_mail_pushes_total", "node" => self.node.clone(), "outcome" => "no_replica").increment(1);
            return;
        };
        let req = self.req();
        self.pushes.insert(req, Pushing { to: to.clone(), body });
        self.send_to((peer, addr), &IndexRpc::Mail(MailRpc::Sessions { req, user: to }));
        ctx.run_later(WHERE_WAIT, move |act, _| {
            if act.pushes.remove(&req).is_some() {
                counter!("confab_mail_pushes_total", "node" => act.node.clone(), "outcome" => "no_answer").increment(1);
            }
        });
    }

    /// A replica said where the sessions of a pending push's recipient are.
    pub(super) fn sessions_answered(&mut self, req: u64, supernodes: Vec<String>) {
        let Some(p) = self.pushes.remove(&req) else { return };
        self.push_at(&p.to, p.body, supernodes);
    }

    /// Sends the notice to each named super node once (ourselves included).
    fn push_at(&mut self, to: &str, body: Vec<u8>, supernodes: Vec<String>) {
        let at: BTreeSet<String> = supernodes.into_iter().collect();
        if at.is_empty() {
            counter!("confab_mail_pushes_total", "node" => self.node.clone(), "outcome" => "offline").increment(1);
        }
        for sn in at {
            if sn == self.node {
                self.mailboxes.deliver(to, body.clone());
            } else if let Some(&peer) = self.gossip_by_name.get(&sn) {
                self.send_to(peer, &IndexRpc::Deliver { to: to.to_owned(), body: body.clone() });
                mailbox::count(&self.node, "forwarded");
            } else {
                counter!("confab_mail_pushes_total", "node" => self.node.clone(), "outcome" => "unknown_node")
                    .increment(1);
                continue;
            }
            counter!("confab_mail_pushes_total", "node" => self.node.clone(), "outcome" => "sent").increment(1);
        }
    }

    /// Another member asks where `user`'s sessions are (we replicate the user's slot).
    pub(super) fn answer_sessions(&mut self, from: super::Peer, req: u64, user: String, ctx: &mut Context<Self>) {
        let slot = self.slot_of(&user);
        let Some(actor) = self.slots.get(&slot).cloned() else {
            self.send_to(from, &IndexRpc::Mail(MailRpc::At { req, supernodes: Vec::new() }));
            return;
        };
        ctx.spawn(actor.send(SessionsAt { key: user }).into_actor(self).map(move |res, act, _| {
            act.send_to(from, &IndexRpc::Mail(MailRpc::At { req, supernodes: res.unwrap_or_default() }));
        }));
    }
}
