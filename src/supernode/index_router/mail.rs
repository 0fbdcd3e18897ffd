//! The router's share of the message store: a host's message goes to every replica of
//! its recipient's slot, a device's fetch to one replica (the next if it does not
//! answer), its acknowledgements to all. Replicas keep each slot's mail equal by
//! anti-entropy, and a node that leaves a slot hands its mail over. The store and the
//! exchange's decisions are plain logic (`index::mail::MailStore::respond`,
//! `index::mail::HandOvers`) inside each slot's actor; this is only the routing.

use super::{IndexRouter, Peer, now_ms};
use crate::index::mail::{Mail, MailId, Refusal, Standing, Stored};
use crate::index::repair::{self, RepairBudget};
use crate::index::rpc::{DIGESTS_PER_PACKET, IndexRpc, MAIL_PAGE_BYTES_MAX, MAIL_RPC_LEN_MAX, MailRpc};
use crate::index::{NodeId, Slot};
use crate::supernode::index_slot::{
    MailAcked, MailGet, MailHolds, MailPut, MailRelease, MailState, MailStateOf, MailSync, Retire,
};
use crate::wire::ErrorCode;
use crate::wire::mail::{MailAck, MailBatch, MailFetch, MailSubmit, MailSubmitReply};
use actix::prelude::*;
use metrics::{counter, gauge};
use std::collections::{HashMap, HashSet};
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
        let now_ms = now_ms();
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
        // Delivered: a device of the recipient wrote it to its history (counted once per
        // device, by the node the device is connected to).
        counter!("confab_mail_messages_total", "node" => self.node.clone(), "outcome" => "delivered")
            .increment(m.ack.ids.len() as u64);
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
            MailRpc::Digests { slots } => self.mail_digests_from(from, slots, ctx),
            MailRpc::Matches { slots } => self.mail_matches(from, slots, ctx),
            rpc @ (MailRpc::Buckets { .. }
            | MailRpc::Summary { .. }
            | MailRpc::Want { .. }
            | MailRpc::Items { .. }
            | MailRpc::Devices { .. }) => self.mail_sync(from, rpc, ctx),
        }
    }
}

/// Does this node hold the message `id` for `user` (tests and diagnostics)?
#[derive(Message)]
#[rtype(result = "bool")]
pub struct HoldsMail {
    /// The recipient.
    pub user: String,
    /// The message.
    pub id: MailId,
}

/// Every mail series of a node at zero from its start: a panel or a rate shows the node
/// before its first message.
pub(super) fn zero_series(node: &str) {
    gauge!("confab_mail_stored_messages", "node" => node.to_owned()).set(0.0);
    gauge!("confab_mail_stored_bytes", "node" => node.to_owned()).set(0.0);
    for direction in ["sent", "received"] {
        counter!("confab_mail_sync_items_total", "node" => node.to_owned(), "direction" => direction).increment(0);
    }
    for outcome in ["sent", "offline", "no_answer", "no_replica", "unknown_node"] {
        counter!("confab_mail_pushes_total", "node" => node.to_owned(), "outcome" => outcome).increment(0);
    }
    for outcome in ["confirmed", "timed_out"] {
        counter!("confab_mail_handovers_total", "node" => node.to_owned(), "outcome" => outcome).increment(0);
    }
    let refusals = Refusal::ALL.iter().map(|r| r.label());
    for outcome in ["stored", "delivered", "expired", "malformed", "no_replica"].into_iter().chain(refusals) {
        counter!("confab_mail_messages_total", "node" => node.to_owned(), "outcome" => outcome).increment(0);
    }
}

/// The slot a mail anti-entropy request is about.
fn sync_slot(rpc: &MailRpc) -> Option<u32> {
    match rpc {
        MailRpc::Buckets { slot, .. }
        | MailRpc::Summary { slot, .. }
        | MailRpc::Want { slot, .. }
        | MailRpc::Items { slot, .. }
        | MailRpc::Devices { slot } => Some(*slot),
        _ => None,
    }
}

/// Items carried by a request.
fn items_in(rpc: &MailRpc) -> usize {
    if let MailRpc::Items { items, .. } = rpc { items.len() } else { 0 }
}

impl IndexRouter {
    pub(super) fn holds_mail(&self, m: HoldsMail) -> ResponseFuture<bool> {
        let actor = self.slots.get(&self.user_slot(&m.user)).cloned();
        Box::pin(async move {
            match actor {
                Some(a) => a.send(MailHolds(m.id)).await.unwrap_or(false),
                None => false,
            }
        })
    }

    fn standing(&self, slot: Slot, peer: NodeId) -> Standing {
        Standing { me_replica: self.held.contains(&slot), peer_replica: self.map.replicas(slot).contains(&peer) }
    }

    /// One mail anti-entropy round: every slot's mail in brief from its actor, then
    /// [`IndexRouter::mail_round_with`].
    pub(super) fn mail_round(&mut self, ctx: &mut Context<Self>) {
        let gained = std::mem::take(&mut self.mail_gained);
        let asks: Vec<_> = self
            .slots
            .iter()
            .map(|(s, a)| {
                let (s, a) = (*s, a.clone());
                async move { (s, a.send(MailStateOf).await.ok()) }
            })
            .collect();
        ctx.spawn(
            futures_util::future::join_all(asks)
                .into_actor(self)
                .map(move |states, act, ctx| act.mail_round_with(states, &gained, ctx)),
        );
    }

    /// Sends the digests of the slots' mail: of a slot this node replicates and holds
    /// mail in, to its other replicas; of a slot it just became a replica of (even
    /// empty), to two of them, which pulls it; of a slot it left and still holds mail in,
    /// to the slot's replicas, until one says it holds the same (or the time is up).
    fn mail_round_with(
        &mut self,
        states: Vec<(Slot, Option<MailState>)>,
        gained: &HashSet<Slot>,
        ctx: &mut Context<Self>,
    ) {
        let now = now_ms();
        let states: Vec<(Slot, MailState)> = states.into_iter().filter_map(|(s, st)| Some((s, st?))).collect();
        let messages: usize = states.iter().map(|(_, st)| st.messages).sum();
        let bytes: u64 = states.iter().map(|(_, st)| st.bytes).sum();
        gauge!("confab_mail_stored_messages", "node" => self.node.clone()).set(messages as f64);
        gauge!("confab_mail_stored_bytes", "node" => self.node.clone()).set(bytes as f64);
        let with_mail: Vec<u32> = states.iter().filter(|(_, st)| !st.empty).map(|(s, _)| s.0).collect();
        let held = &self.held;
        let round = self.handovers.round(now, &with_mail, |s| held.contains(&Slot(s)));
        // Former slots whose time is up and whose mail is handed over: their stores go, if
        // they still hold no mail when the actor itself is asked (a store from a peer
        // with an older view may have come since these states were read).
        let empty: HashSet<u32> = states.iter().filter(|(_, st)| st.empty).map(|(s, _)| s.0).collect();
        for s in self.former.due(now, |s| empty.contains(&s)) {
            let Some(a) = self.slots.get(&Slot(s)).cloned() else { continue };
            ctx.spawn(a.send(Retire).into_actor(self).map(move |stopped, act, _| {
                if stopped != Ok(true) {
                    // Mail came: handed over first, and retired a while later.
                    act.former.restart(s, now_ms());
                    return;
                }
                act.slots.remove(&Slot(s));
                act.core.slot_changed(Slot(s), None);
                act.counts.remove(&Slot(s));
                counter!("confab_index_slots_retired_total", "node" => act.node.clone()).increment(1);
                gauge!("confab_index_slot_stores", "node" => act.node.clone()).set(act.slots.len() as f64);
                tracing::debug!(node = %act.node, slot = s, "a former slot's store went");
            }));
        }
        gauge!("confab_index_slot_stores", "node" => self.node.clone()).set(self.slots.len() as f64);
        for s in round.expired {
            if let Some(a) = self.slots.get(&Slot(s)) {
                a.do_send(MailRelease { matching: None });
            }
            counter!("confab_mail_handovers_total", "node" => self.node.clone(), "outcome" => "timed_out").increment(1);
            tracing::warn!(node = %self.node, slot = s, "let a left slot's mail go unconfirmed");
        }
        let offer: HashSet<u32> = round.offer.into_iter().collect();
        let mut per_peer: HashMap<NodeId, Vec<(u32, [u8; 16])>> = HashMap::new();
        for (s, st) in &states {
            let replicas = self.map.replicas(*s);
            let others = replicas.iter().filter(|r| **r != self.me).copied();
            let to: Vec<NodeId> = if self.held.contains(s) {
                if !st.empty {
                    others.collect()
                } else if gained.contains(s) {
                    others.take(crate::index::node::PULL_FROM).collect()
                } else {
                    continue;
                }
            } else if offer.contains(&s.0) {
                others.collect()
            } else {
                continue;
            };
            for r in to {
                per_peer.entry(r).or_default().push((s.0, st.digest));
            }
        }
        for (peer, list) in per_peer {
            let Some(addr) = self.gossip_of.get(&peer).copied() else { continue };
            for chunk in list.chunks(DIGESTS_PER_PACKET) {
                self.send_to((peer, addr), &IndexRpc::Mail(MailRpc::Digests { slots: chunk.to_vec() }));
            }
        }
    }

    /// A member's mail digests: each slot's store answers (buckets where they differ, a
    /// match to a former replica handing over); the matches go back in one packet.
    fn mail_digests_from(&mut self, from: Peer, slots: Vec<(u32, [u8; 16])>, ctx: &mut Context<Self>) {
        let asks: Vec<_> = slots
            .into_iter()
            .filter_map(|(s, d)| {
                let actor = self.slots.get(&Slot(s))?.clone();
                let at = self.standing(Slot(s), from.0);
                Some(actor.send(MailSync { at, rpc: MailRpc::Digests { slots: vec![(s, d)] } }))
            })
            .collect();
        if asks.is_empty() {
            return;
        }
        ctx.spawn(futures_util::future::join_all(asks).into_actor(self).map(move |answers, act, _| {
            let (mut replies, mut matches) = (Vec::new(), Vec::new());
            for r in answers.into_iter().flatten().flat_map(|a| a.replies) {
                match r {
                    MailRpc::Matches { slots } => matches.extend(slots),
                    other => replies.push(other),
                }
            }
            replies.extend(matches.chunks(DIGESTS_PER_PACKET).map(|c| MailRpc::Matches { slots: c.to_vec() }));
            act.send_mail(from, replies);
        }));
    }

    /// A replica holds exactly the mail we offered of these slots: the copies of slots
    /// this node left go (each only if still what was offered).
    fn mail_matches(&mut self, from: Peer, slots: Vec<(u32, [u8; 16])>, ctx: &mut Context<Self>) {
        for (s, digest) in slots {
            let Some(actor) = self.slots.get(&Slot(s)).cloned() else { continue };
            let at = self.standing(Slot(s), from.0);
            if !self.handovers.matched(s, at.me_replica, at.peer_replica) {
                continue;
            }
            ctx.spawn(actor.send(MailRelease { matching: Some(digest) }).into_actor(self).map(move |gone, act, _| {
                if gone == Ok(true) {
                    act.handovers.released(s);
                    counter!("confab_mail_handovers_total", "node" => act.node.clone(), "outcome" => "confirmed")
                        .increment(1);
                    tracing::debug!(node = %act.node, slot = s, to = %from.1, "handed a slot's mail over");
                }
            }));
        }
    }

    /// The rest of the exchange (buckets, summaries, wants, items, devices) goes to the
    /// slot's store; a slot this node has no store for gets nothing.
    fn mail_sync(&mut self, from: Peer, rpc: MailRpc, ctx: &mut Context<Self>) {
        let Some(s) = sync_slot(&rpc) else { return };
        let Some(actor) = self.slots.get(&Slot(s)).cloned() else {
            counter!("confab_index_rpc_rejected_total", "node" => self.node.clone(), "reason" => "mail_slot_not_held")
                .increment(1);
            return;
        };
        let received = items_in(&rpc);
        if received > 0 {
            counter!("confab_mail_sync_items_total", "node" => self.node.clone(), "direction" => "received")
                .increment(received as u64);
        }
        let at = self.standing(Slot(s), from.0);
        ctx.spawn(actor.send(MailSync { at, rpc }).into_actor(self).map(move |res, act, _| {
            let Ok(answer) = res else { return };
            if answer.merged.refused > 0 {
                tracing::debug!(node = %act.node, slot = s, refused = answer.merged.refused, "mail items refused");
            }
            act.send_mail(from, answer.replies);
        }));
    }

    /// Sends mail anti-entropy replies to a member, each within one frame, within one
    /// answer's byte cap and the member's repair rate; what does not fit waits for the
    /// next round.
    fn send_mail(&mut self, to: Peer, replies: Vec<MailRpc>) {
        if replies.is_empty() {
            return;
        }
        let now = now_ms();
        let total = replies.len();
        let encoded: Vec<(Vec<u8>, usize)> = replies
            .into_iter()
            .map(|r| {
                let n = items_in(&r);
                (IndexRpc::Mail(r).encode(), n)
            })
            .filter(|(b, _)| b.len() <= MAIL_RPC_LEN_MAX)
            .collect();
        let sizes: Vec<usize> = encoded.iter().map(|(b, _)| b.len()).collect();
        let (per_sec, cap) = (self.cfg.repair_bytes_per_peer_per_sec, self.cfg.repair_bytes_per_answer_max);
        let budget = self.mail_repair.entry(to.0).or_insert_with(|| RepairBudget::new(per_sec, now));
        let n = repair::fit(&sizes, cap, budget, now);
        let mut items = 0;
        for (b, k) in encoded.iter().take(n) {
            if self.sender.send(to.0, to.1, b) {
                items += k;
            }
        }
        if items > 0 {
            counter!("confab_mail_sync_items_total", "node" => self.node.clone(), "direction" => "sent")
                .increment(items as u64);
        }
        if n < total {
            counter!("confab_index_rpc_rejected_total", "node" => self.node.clone(), "reason" => "mail_sync_capped")
                .increment((total - n) as u64);
            tracing::debug!(node = %self.node, to = %to.1, sent = n, skipped = total - n, "mail repair capped");
        }
    }
}
