//! The router's share of the message store: a host's message goes to every replica of
//! its recipient's slot, a device's fetch to one replica (the next if it does not
//! answer), its acknowledgements to all. The store itself is plain logic
//! (`index::mail::MailStore`) inside each slot's actor; this is only the routing.

use super::{IndexRouter, Peer};
use crate::index::mail::{Mail, MailId, Refusal, Stored};
use crate::index::rpc::{IndexRpc, MAIL_PAGE_BYTES_MAX, MailRpc};
use crate::index::{NodeId, Slot};
use crate::supernode::index_slot::{MailAcked, MailGet, MailPut};
use crate::wire::ErrorCode;
use crate::wire::mail::{MailAck, MailBatch, MailFetch, MailSubmit, MailSubmitReply};
use actix::prelude::*;
use metrics::counter;
use std::time::Duration;
use tokio::sync::oneshot;

/// How long the replicas of a message have to answer before the host hears how many did.
const SUBMIT_WAIT: Duration = Duration::from_secs(2);
/// How long one replica has to answer a fetch before the next is asked.
const FETCH_WAIT: Duration = Duration::from_millis(1500);
/// Replicas that must hold a message before the sender hears it is stored (fewer when
/// the slot has fewer): one more than any single failure can take away.
const SUBMIT_COPIES: usize = 2;

/// A host's message, to store.
#[derive(Message)]
#[rtype(result = "()")]
pub struct SubmitMail {
    /// The sender (the session's user).
    pub from: String,
    /// What it sent.
    pub submit: MailSubmit,
    /// The answer for the host.
    pub reply: oneshot::Sender<MailSubmitReply>,
}

/// A device's fetch.
#[derive(Message)]
#[rtype(result = "()")]
pub struct FetchMail {
    /// The recipient (the session's user).
    pub user: String,
    /// What it asked.
    pub fetch: MailFetch,
    /// The answer for the host.
    pub reply: oneshot::Sender<MailBatch>,
}

/// A device's acknowledgements.
#[derive(Message)]
#[rtype(result = "()")]
pub struct AckMail {
    /// The recipient (the session's user).
    pub user: String,
    /// What it acknowledged.
    pub ack: MailAck,
}

/// A message waiting for its replicas' answers.
pub(super) struct Submitting {
    reply: oneshot::Sender<MailSubmitReply>,
    /// The recipient and the sealed message, pushed to the recipient once stored.
    push: (String, Vec<u8>),
    req: u32,
    needed: usize,
    held: usize,
    refused: Option<Refusal>,
    waiting: usize,
}

/// A fetch waiting for a replica.
pub(super) struct Fetching {
    reply: oneshot::Sender<MailBatch>,
    fetch: MailFetch,
    user: String,
    /// Replicas not asked yet, in order.
    next: Vec<NodeId>,
}

fn outcome_label(o: &Stored) -> &'static str {
    match o {
        Stored::New => "stored",
        Stored::Duplicate => "duplicate",
        Stored::Refused(r) => r.label(),
    }
}

impl IndexRouter {
    fn mail_count(&self, outcome: &'static str) {
        counter!("confab_mail_messages_total", "node" => self.node.clone(), "outcome" => outcome).increment(1);
    }

    fn user_slot(&self, user: &str) -> Slot {
        self.slot_of(&user.to_ascii_lowercase())
    }

    /// Sends `mail` to every replica of its recipient's slot.
    pub(super) fn submit_mail(&mut self, m: SubmitMail, ctx: &mut Context<Self>) {
        let SubmitMail { from, submit, reply } = m;
        let now_ms = super::now_ms();
        let to = submit.to.to_ascii_lowercase();
        let mail = Mail {
            id: submit.id,
            to,
            from: from.to_ascii_lowercase(),
            stored_at_ms: now_ms,
            expires_at_ms: now_ms.saturating_add(self.cfg.mail_retention_secs.saturating_mul(1000)),
            sealed: submit.sealed,
        };
        let answer = |code: ErrorCode| MailSubmitReply { req: submit.req, code: code.code(), replicas: 0, pushed: 0 };
        if let Err(why) = mail.check(now_ms) {
            self.mail_count("malformed");
            tracing::debug!(node = %self.node, %why, "refused a message for the store");
            let _ = reply.send(answer(ErrorCode::Malformed));
            return;
        }
        let slot = self.user_slot(&mail.to);
        let replicas = self.map.replicas(slot).to_vec();
        let req = self.req();
        let needed = replicas.len().clamp(1, SUBMIT_COPIES);
        let push = (mail.to.clone(), mail.sealed.clone());
        self.mail_submits.insert(
            req,
            Submitting { reply, push, req: submit.req, needed, held: 0, refused: None, waiting: replicas.len() },
        );
        for r in replicas {
            if r == self.me {
                let Some(actor) = self.slots.get(&slot).cloned() else {
                    self.mail_stored(req, None, ctx);
                    continue;
                };
                ctx.spawn(actor.send(MailPut(mail.clone())).into_actor(self).map(move |res, act, ctx| {
                    act.mail_stored(req, res.ok(), ctx);
                }));
            } else if let Some(addr) = self.gossip_of.get(&r).copied() {
                let rpc = IndexRpc::Mail(MailRpc::Store { req, mail: mail.clone() });
                if !self.send_to((r, addr), &rpc) {
                    self.mail_stored(req, None, ctx);
                }
            } else {
                self.mail_stored(req, None, ctx);
            }
        }
        ctx.run_later(SUBMIT_WAIT, move |act, ctx| act.finish_submit(req, ctx));
    }

    /// A replica's answer to a message (None: it could not be asked or failed).
    pub(super) fn mail_stored(&mut self, req: u64, outcome: Option<Stored>, ctx: &mut Context<Self>) {
        let Some(s) = self.mail_submits.get_mut(&req) else { return };
        s.waiting = s.waiting.saturating_sub(1);
        match outcome {
            Some(Stored::New | Stored::Duplicate) => s.held += 1,
            Some(Stored::Refused(r)) => s.refused = Some(r),
            None => {}
        }
        if s.held >= s.needed || s.waiting == 0 {
            self.finish_submit(req, ctx);
        }
    }

    fn finish_submit(&mut self, req: u64, ctx: &mut Context<Self>) {
        let Some(s) = self.mail_submits.remove(&req) else { return };
        let code = if s.held > 0 {
            0
        } else if s.refused.is_some() {
            ErrorCode::OverQuota.code()
        } else {
            ErrorCode::Internal.code()
        };
        let outcome = match (code, s.refused) {
            (0, _) => "stored",
            (_, Some(r)) => r.label(),
            _ => "no_replica",
        };
        self.mail_count(outcome);
        let replicas = u8::try_from(s.held).unwrap_or(u8::MAX);
        let _ = s.reply.send(MailSubmitReply { req: s.req, code, replicas, pushed: 0 });
        if code == 0 {
            // Stored: now pushed to the recipient's session as a notice, which is only a
            // hint (a device that misses it fetches the message). The recipient's own
            // receipt tells the sender it arrived.
            let (to, sealed) = s.push;
            let body = crate::buddy::Notice::Chat { sealed }.encode();
            self.push_to_sessions(to, body, ctx);
        }
    }

    /// Asks the first replica of the user's slot (ourselves first when we are one).
    pub(super) fn fetch_mail(&mut self, m: FetchMail, ctx: &mut Context<Self>) {
        let FetchMail { user, fetch, reply } = m;
        let user = user.to_ascii_lowercase();
        let slot = self.user_slot(&user);
        let mut next = self.map.replicas(slot).to_vec();
        // Ourselves first: no round trip.
        if let Some(i) = next.iter().position(|r| *r == self.me) {
            let me = next.remove(i);
            next.insert(0, me);
        }
        next.reverse();
        let req = self.req();
        self.mail_fetches.insert(req, Fetching { reply, fetch, user, next });
        self.fetch_next(req, ctx);
    }

    fn fetch_next(&mut self, req: u64, ctx: &mut Context<Self>) {
        let Some(f) = self.mail_fetches.get_mut(&req) else { return };
        let Some(r) = f.next.pop() else {
            let f = self.mail_fetches.remove(&req).expect("held just above");
            let _ = f.reply.send(MailBatch {
                req: f.fetch.req,
                code: ErrorCode::Internal.code(),
                messages: Vec::new(),
                more: false,
            });
            return;
        };
        let (user, device, after) = (f.user.clone(), f.fetch.device, f.fetch.after);
        let slot = self.user_slot(&user);
        if r == self.me {
            let Some(actor) = self.slots.get(&slot).cloned() else { return self.fetch_next(req, ctx) };
            let get = MailGet { user, device, after, max_bytes: crate::wire::mail::BATCH_LEN_MAX };
            ctx.spawn(actor.send(get).into_actor(self).map(move |res, act, ctx| match res {
                Ok(page) => act.fetched(req, page.messages, page.more),
                Err(_) => act.fetch_next(req, ctx),
            }));
            return;
        }
        let Some(addr) = self.gossip_of.get(&r).copied() else { return self.fetch_next(req, ctx) };
        let rpc = IndexRpc::Mail(MailRpc::Fetch { req, user, device, after });
        if !self.send_to((r, addr), &rpc) {
            return self.fetch_next(req, ctx);
        }
        // A replica that does not answer in time: the next one is asked. Its late answer
        // finds the fetch gone or answered.
        let asked = self.mail_fetches.get(&req).map_or(0, |f| f.next.len());
        ctx.run_later(FETCH_WAIT, move |act, ctx| {
            if act.mail_fetches.get(&req).is_some_and(|f| f.next.len() == asked) {
                act.fetch_next(req, ctx);
            }
        });
    }

    /// A page for fetch `req`: cut to one frame for the host.
    pub(super) fn fetched(&mut self, req: u64, messages: Vec<Mail>, more: bool) {
        let Some(f) = self.mail_fetches.remove(&req) else { return };
        let mut page: Vec<(MailId, Vec<u8>)> = Vec::new();
        let mut cut = false;
        for m in messages {
            if !MailBatch::fits(&page, m.sealed.len()) {
                cut = true;
                break;
            }
            page.push((m.id, m.sealed));
        }
        let _ = f.reply.send(MailBatch { req: f.fetch.req, code: 0, messages: page, more: more || cut });
    }

    /// Sends a device's acknowledgements to every replica of its user's slot.
    pub(super) fn ack_mail(&mut self, m: AckMail, ctx: &mut Context<Self>) {
        let user = m.user.to_ascii_lowercase();
        let slot = self.user_slot(&user);
        for r in self.map.replicas(slot).to_vec() {
            if r == self.me {
                if let Some(actor) = self.slots.get(&slot) {
                    actor.do_send(MailAcked { user: user.clone(), device: m.ack.device, ids: m.ack.ids.clone() });
                }
            } else if let Some(addr) = self.gossip_of.get(&r).copied() {
                let rpc = MailRpc::Ack { user: user.clone(), device: m.ack.device, ids: m.ack.ids.clone() };
                self.send_to((r, addr), &IndexRpc::Mail(rpc));
            }
        }
        let _ = ctx;
    }

    /// A mail request from another member.
    pub(super) fn on_mail_rpc(&mut self, from: Peer, rpc: MailRpc, ctx: &mut Context<Self>) {
        match rpc {
            MailRpc::Store { req, mail } => {
                let slot = self.user_slot(&mail.to);
                let Some(actor) = self.slots.get(&slot).cloned() else {
                    // Not a replica of that slot (the sender's map is stale): no answer,
                    // and the sender counts this replica out when its wait ends.
                    counter!("confab_mail_replica_writes_total", "node" => self.node.clone(), "outcome" => "not_replica")
                        .increment(1);
                    return;
                };
                ctx.spawn(actor.send(MailPut(mail)).into_actor(self).map(move |res, act, _| {
                    let outcome = res.unwrap_or(Stored::Refused(Refusal::NodeFull));
                    counter!("confab_mail_replica_writes_total", "node" => act.node.clone(), "outcome" => outcome_label(&outcome))
                        .increment(1);
                    act.send_to(from, &IndexRpc::Mail(MailRpc::Stored { req, outcome }));
                }));
            }
            MailRpc::Stored { req, outcome } => self.mail_stored(req, Some(outcome), ctx),
            MailRpc::Fetch { req, user, device, after } => {
                let slot = self.user_slot(&user);
                let Some(actor) = self.slots.get(&slot).cloned() else {
                    self.send_to(from, &IndexRpc::Mail(MailRpc::Page { req, messages: Vec::new(), more: false }));
                    return;
                };
                let get = MailGet { user, device, after, max_bytes: MAIL_PAGE_BYTES_MAX };
                ctx.spawn(actor.send(get).into_actor(self).map(move |res, act, _| {
                    let page = res.unwrap_or_default();
                    act.send_to(from, &IndexRpc::Mail(MailRpc::Page { req, messages: page.messages, more: page.more }));
                }));
            }
            MailRpc::Page { req, messages, more } => self.fetched(req, messages, more),
            MailRpc::Ack { user, device, ids } => {
                let slot = self.user_slot(&user);
                if let Some(actor) = self.slots.get(&slot) {
                    actor.do_send(MailAcked { user, device, ids });
                }
            }
            MailRpc::Sessions { req, user } => self.answer_sessions(from, req, user, ctx),
            MailRpc::At { req, supernodes } => self.sessions_answered(req, supernodes),
            other => {
                // Mail anti-entropy between replicas is not served yet: counted, so an
                // operator sees a newer member asking for it.
                counter!("confab_index_rpc_rejected_total", "node" => self.node.clone(), "reason" => "mail_sync_unserved")
                    .increment(1);
                tracing::debug!(node = %self.node, from = %from.1, kind = ?std::mem::discriminant(&other), "mail sync request not served");
            }
        }
    }
}
