//! `HostSession`: one actix actor per connected host.
//!
//! It performs the expensive half of the handshake (on the blocking pool, so one slow
//! RSA operation never stalls the listeners), then drives a [`Session`] state machine
//! with frames from the listener and a once-a-second tick. It owns no socket: it
//! answers through an [`Outbound`] handle.

use super::handshake::{self, Accepted};
use super::index_router::{AckMail, FetchMail, FindUser, IndexRouter, Publish, Route, SearchUsers, SubmitMail};
use super::mailbox::{self, Deliver};
use super::node::NodeShared;
use super::relay_session::{RelaySession, Release};
use super::session::{Action, Session, SessionPeer, Transport};
use crate::crypto::{Credential, CredentialKind};
use crate::net::source::SourceClaim;
use crate::wire::ErrorCode;
use crate::wire::frame;
use crate::wire::mail::{MailAckReply, MailBatch, MailSubmitReply};
use crate::wire::message::{
    Envelope, ErrorMsg, FindReply, ForwardAck, MessageKind, PublishAck, RelayGrant, SEARCH_RESULTS_MAX, SearchReply,
    Welcome,
};
use actix::prelude::*;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Where a session's frames go.
#[derive(Debug, Clone)]
pub enum Outbound {
    /// Datagrams from the super node's UDP socket.
    Udp {
        /// The socket.
        socket: Arc<tokio::net::UdpSocket>,
        /// The host's address.
        peer: SocketAddr,
    },
    /// The host's TCP connection (its writer task).
    Tcp {
        /// Queue to the writer.
        tx: tokio::sync::mpsc::Sender<Vec<u8>>,
    },
}

impl Outbound {
    /// Sends without waiting; false if the socket or queue is full (the frame is dropped,
    /// as a congested network would).
    pub fn send(&self, frame: Vec<u8>) -> bool {
        match self {
            Self::Udp { socket, peer } => socket.try_send_to(&frame, *peer).is_ok(),
            Self::Tcp { tx } => tx.try_send(frame).is_ok(),
        }
    }

    fn transport(&self) -> Transport {
        match self {
            Self::Udp { .. } => Transport::Udp,
            Self::Tcp { .. } => Transport::Tcp,
        }
    }
}

/// A frame from the host, as received.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Inbound(pub Vec<u8>);

/// The host sent the same Auth again (its Welcome was lost): answer it again.
#[derive(Message)]
#[rtype(result = "()")]
pub struct RepeatWelcome;

/// End the session: `notify` sends the host a Bye first.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Close {
    /// Tell the host.
    pub notify: bool,
    /// Why, for the log.
    pub reason: &'static str,
}

enum State {
    /// The Auth to check, and this source's claim on an RSA job (given back when the job
    /// ends, so one source never has more than its share of RSA work running).
    Handshaking(Option<(Envelope, SourceClaim)>),
    Established {
        session: Session,
        welcome: Vec<u8>,
    },
}

/// The actor.
pub struct HostSession {
    node: Arc<NodeShared>,
    peer: SocketAddr,
    listener: SocketAddr,
    out: Outbound,
    state: State,
    handshake_id: [u8; 32],
    user: String,
    finds: (u64, u32),
    /// Call and file reports this minute (unix minute, count).
    reports: (u64, u32),
    relays: std::collections::HashMap<u32, Addr<RelaySession>>,
    /// The key id of the host's credential, once established (its session ends if revoked).
    host_key: Option<crate::crypto::KeyId>,
}

impl HostSession {
    /// A session for the host at `peer` whose Auth passed the cookie check.
    pub fn new(
        node: Arc<NodeShared>,
        peer: SocketAddr,
        listener: SocketAddr,
        out: Outbound,
        env: Envelope,
        rsa_job: SourceClaim,
        handshake_id: [u8; 32],
    ) -> Self {
        Self {
            node,
            peer,
            listener,
            out,
            state: State::Handshaking(Some((env, rsa_job))),
            handshake_id,
            user: String::new(),
            finds: (0, 0),
            reports: (0, 0),
            relays: std::collections::HashMap::new(),
            host_key: None,
        }
    }

    fn send(&self, kind: MessageKind, frame: Vec<u8>) {
        let t = self.out.transport().label();
        if self.out.send(frame) {
            self.node.metrics.frame_out(kind.label(), t);
        } else {
            self.node.metrics.reject(t, "send_queue_full", self.peer, &kind.label());
        }
    }

    fn established(&mut self, accepted: Accepted, ctx: &mut Context<Self>) {
        let now = crate::unix_now();
        let Some(id) = self.node.register_session(self.peer, ctx.address()) else {
            let e = ErrorMsg::new(
                crate::wire::ErrorCode::Full,
                "this super node has no room for another host; try another",
            );
            self.send(MessageKind::Error, frame::encode_plain(self.listener, MessageKind::Error, 0, &e.encode()));
            self.node.metrics.handshake("full", 0.0);
            ctx.stop();
            return;
        };
        let mut session = Session::new(
            SessionPeer {
                id,
                user: accepted.credential.subject.clone(),
                peer: self.peer,
                listener: self.listener,
                transport: self.out.transport(),
            },
            &accepted.secret,
            now,
            self.node.params.idle_timeout_secs,
        );
        let welcome = session.welcome(&Welcome {
            observed: self.peer,
            keepalive_secs: self.node.params.keepalive_secs as u16,
            idle_timeout_secs: self.node.params.idle_timeout_secs as u16,
            probe_addr: self.node.probe_addr,
            supernodes: self.node.peers(),
        });
        self.send(MessageKind::Welcome, welcome.clone());
        self.user = accepted.credential.subject.clone();
        self.host_key = Some(accepted.credential.public_key.id());
        self.node.mailboxes.register(&self.user, id, ctx.address().recipient());
        tracing::info!(node = %self.node.identity.name, user = %accepted.credential.subject, peer = %self.peer,
            transport = self.out.transport().label(), session = id, "host connected");
        self.state = State::Established { session, welcome };
        ctx.run_interval(Duration::from_secs(1), |act, ctx| {
            // A host whose credential was revoked since it connected is let go.
            if act.host_key.is_some_and(|k| {
                act.node.identity.trusted.revoked().contains(crate::crypto::CredentialKind::Host, k)
            }) {
                metrics::counter!("confab_supernode_hosts_revoked_total", "node" => act.node.identity.name.clone())
                    .increment(1);
                tracing::info!(node = %act.node.identity.name, user = %act.user, peer = %act.peer, "host credential revoked: session closed");
                ctx.notify(Close { notify: true, reason: "host credential revoked" });
                return;
            }
            if let State::Established { session, .. } = &mut act.state {
                let actions = session.on_tick(crate::unix_now());
                act.apply(actions, ctx);
            }
        });
    }

    /// Seals and sends a reply, if the session still exists.
    fn reply(&mut self, kind: MessageKind, body: &[u8]) {
        if let State::Established { session, .. } = &mut self.state {
            let f = session.seal(kind, body);
            self.send(kind, f);
        }
    }

    /// Tells the host that request `req` failed, in the form its revision reads.
    fn reply_error(&mut self, req: u32, error: ErrorMsg) {
        if let State::Established { session, .. } = &mut self.state {
            let (kind, f) = session.request_error(req, error);
            self.send(kind, f);
        }
    }

    /// Answers a Publish (`req` None) or a PublishReq.
    fn reply_publish(&mut self, req: Option<u32>, ack: PublishAck) {
        if let State::Established { session, .. } = &mut self.state {
            let (kind, f) = session.publish_answer(req, ack);
            self.send(kind, f);
        }
    }

    /// Index requests (lookups, searches, publishes) a host may make per second: a storm
    /// from one host is refused, not served.
    const INDEX_REQUESTS_PER_SECOND_MAX: u32 = 50;

    /// Call and file reports (CallStats) a host may send per minute: what it reports is
    /// believed, so one host cannot make the counters say much.
    const REPORTS_PER_MINUTE_MAX: u32 = 60;

    fn allow_report(&mut self) -> bool {
        let minute = crate::unix_now() / 60;
        if self.reports.0 != minute {
            self.reports = (minute, 0);
        }
        self.reports.1 += 1;
        self.reports.1 <= Self::REPORTS_PER_MINUTE_MAX
    }

    fn allow_index_request(&mut self) -> bool {
        let now = crate::unix_now();
        if self.finds.0 != now {
            self.finds = (now, 0);
        }
        self.finds.1 += 1;
        self.finds.1 <= Self::INDEX_REQUESTS_PER_SECOND_MAX
    }

    /// The index router for a store request, or None (no index here, or the host asks too
    /// fast: counted as `what`).
    fn mail_router(&mut self, what: &'static str) -> Option<Addr<IndexRouter>> {
        let router = self.node.index.clone()?;
        if !self.allow_index_request() {
            self.node.metrics.reject(self.out.transport().label(), "mail_rate", self.peer, &what);
            return None;
        }
        Some(router)
    }

    /// The index router for a lookup or search, or None after telling the host why not
    /// (no index here, or it is asking too fast).
    fn router_for_lookup(&mut self, what: &'static str, req: u32) -> Option<Addr<IndexRouter>> {
        if !self.allow_index_request() {
            self.node.metrics.reject(self.out.transport().label(), "lookup_rate", self.peer, &what);
            let mut e = ErrorMsg::new(ErrorCode::TooManyAttempts, "too many lookups; slow down");
            e.retry_after_secs = 1;
            self.reply_error(req, e);
            return None;
        }
        let router = self.node.index.clone();
        if router.is_none() {
            self.reply_error(req, ErrorMsg::new(ErrorCode::Unsupported, "this super node holds no index"));
        }
        router
    }

    /// Opens a relay session for this host, within the node's and the host's quotas; leg
    /// B's token is sealed to the callee named by its verified host credential.
    fn allocate_relay(&mut self, req: u32, callee: &[u8]) -> RelayGrant {
        let node = self.node.identity.name.clone();
        let count = move |outcome: &'static str| {
            metrics::counter!("confab_relay_allocations_total", "node" => node.clone(), "outcome" => outcome)
                .increment(1);
        };
        let refused = |code: ErrorCode| RelayGrant {
            req,
            code: code.code(),
            relay: None,
            session: 0,
            token_a: [0; 16],
            leg_b: Vec::new(),
            idle_timeout_secs: 0,
        };
        let Some(plane) = &self.node.relay else {
            count("no_relay");
            return refused(ErrorCode::Unsupported);
        };
        self.relays.retain(|_, a| a.connected());
        if self.relays.len() >= plane.cfg.sessions_per_host_max {
            count("host_quota");
            return refused(ErrorCode::Full);
        }
        // One RSA verification (a public-key operation, tens of µs), at most as often as
        // the host's relay rate allows, and only within its quota.
        let trusted = &self.node.identity.trusted;
        let callee = match Credential::decode_verified(callee, trusted, CredentialKind::Host, crate::unix_now()) {
            Ok(c) => c,
            Err(e) => {
                count("bad_callee");
                tracing::debug!(peer = %self.peer, error = %e, "relay request for a callee without a valid credential");
                return refused(ErrorCode::UntrustedCredential);
            }
        };
        // Leg B sealed to the asker's own account would give it both legs.
        if callee.subject.eq_ignore_ascii_case(&self.user) {
            count("self_callee");
            return refused(ErrorCode::UntrustedCredential);
        }
        // A user with many hosts, or a source with many users, has its own quota too: the
        // claims live as long as the session's actor.
        let Some(user_claim) = plane.per_user.claim(self.user.clone()) else {
            count("user_quota");
            return refused(ErrorCode::Full);
        };
        let Some(source_claim) = plane.per_source.claim(self.peer.ip().into()) else {
            count("source_quota");
            return refused(ErrorCode::Full);
        };
        let grant = match plane.table.allocate(crate::relay::clock_ms()) {
            Ok(g) => g,
            Err(_) => {
                count("full");
                return refused(ErrorCode::Full);
            }
        };
        count("granted");
        let idle = Duration::from_secs(plane.cfg.idle_timeout_secs.max(1));
        let actor =
            RelaySession::new(self.node.identity.name.clone(), plane.table.clone(), grant, self.user.clone(), idle)
                .holding(user_claim, source_claim)
                .start();
        self.relays.insert(grant.session.0, actor);
        RelayGrant {
            req,
            code: 0,
            relay: Some(plane.addr),
            session: grant.session.0,
            token_a: *grant.token_a.as_bytes(),
            leg_b: crate::relay::handoff::seal(&callee.public_key, grant.session.0, grant.token_b.as_bytes()),
            idle_timeout_secs: plane.cfg.idle_timeout_secs.min(u64::from(u16::MAX)) as u16,
        }
    }

    fn apply(&mut self, actions: Vec<Action>, ctx: &mut Context<Self>) {
        for a in actions {
            match a {
                Action::Send(kind, f) => self.send(kind, f),
                Action::Publish { req, entry } => {
                    if !self.allow_index_request() {
                        self.node.metrics.reject(self.out.transport().label(), "publish_rate", self.peer, &"publish");
                        let ack = PublishAck {
                            code: ErrorCode::TooManyAttempts.code(),
                            replicas: 0,
                            detail: "too many publishes; slow down".into(),
                        };
                        self.reply_publish(req, ack);
                        continue;
                    }
                    let Some(router) = self.node.index.clone() else {
                        let ack = PublishAck {
                            code: ErrorCode::Unsupported.code(),
                            replicas: 0,
                            detail: "this super node holds no index".into(),
                        };
                        self.reply_publish(req, ack);
                        continue;
                    };
                    let user = self.user.clone();
                    ctx.spawn(router.send(Publish { user, entry }).into_actor(self).map(move |res, act, _| {
                        let ack = match res {
                            Ok(Ok(n)) => PublishAck { code: 0, replicas: n.min(255) as u8, detail: String::new() },
                            Ok(Err((code, why))) => PublishAck { code: code.code(), replicas: 0, detail: why },
                            Err(_) => PublishAck {
                                code: ErrorCode::Internal.code(),
                                replicas: 0,
                                detail: "index unavailable".into(),
                            },
                        };
                        act.reply_publish(req, ack);
                    }));
                }
                Action::Search(q) => {
                    let Some(router) = self.router_for_lookup("search", q.req) else { continue };
                    let (tx, rx) = tokio::sync::oneshot::channel();
                    let limit = usize::from(q.limit.clamp(1, SEARCH_RESULTS_MAX));
                    if router.try_send(SearchUsers { words: q.words.clone(), limit, reply: tx }).is_err() {
                        self.reply_error(q.req, ErrorMsg::new(ErrorCode::Internal, "the index is busy; try again"));
                        continue;
                    }
                    let req = q.req;
                    ctx.spawn(rx.into_actor(self).map(move |res, act, _| {
                        let entries = res.unwrap_or_default();
                        if entries.is_empty() {
                            act.reply(
                                MessageKind::SearchReply,
                                &SearchReply { req, total: 0, index: 0, entry: Vec::new() }.encode(),
                            );
                        }
                        let total = entries.len() as u8;
                        for (i, e) in entries.iter().enumerate() {
                            let r = SearchReply { req, total, index: i as u8, entry: e.encode() };
                            act.reply(MessageKind::SearchReply, &r.encode());
                        }
                    }));
                }
                Action::Find(f) => {
                    let Some(router) = self.router_for_lookup("find", f.req) else { continue };
                    let (tx, rx) = tokio::sync::oneshot::channel();
                    if router.try_send(FindUser { user: f.user.clone(), reply: tx }).is_err() {
                        self.reply_error(f.req, ErrorMsg::new(ErrorCode::Internal, "the index is busy; try again"));
                        continue;
                    }
                    let req = f.req;
                    ctx.spawn(rx.into_actor(self).map(move |res, act, _| {
                        let r = match res {
                            Ok(r) => FindReply {
                                req,
                                entry: r.entry.map(|e| e.encode()).unwrap_or_default(),
                                asked: r.asked.min(usize::from(u16::MAX)) as u16,
                                stage: r.stage.into(),
                                directory: r.directory.unwrap_or_default(),
                            },
                            Err(_) => FindReply {
                                req,
                                entry: Vec::new(),
                                asked: 0,
                                stage: "failed".into(),
                                directory: Vec::new(),
                            },
                        };
                        act.reply(MessageKind::FindReply, &r.encode());
                    }));
                }
                Action::Forward(f) => {
                    let req = f.req;
                    let ack = move |code: Result<String, ErrorCode>| match code {
                        Ok(sn) => ForwardAck { req, code: 0, supernode: sn },
                        Err(c) => ForwardAck { req, code: c.code(), supernode: String::new() },
                    };
                    if !self.allow_index_request() {
                        mailbox::count(&self.node.identity.name, "rate_limited");
                        self.reply(MessageKind::ForwardAck, &ack(Err(ErrorCode::TooManyAttempts)).encode());
                        continue;
                    }
                    let Some(router) = self.node.index.clone() else {
                        // A lone super node: only its own hosts can be reached.
                        let r = if self.node.mailboxes.deliver(&f.to, f.body) {
                            Ok(self.node.identity.name.clone())
                        } else {
                            Err(ErrorCode::NotOnline)
                        };
                        self.reply(MessageKind::ForwardAck, &ack(r).encode());
                        continue;
                    };
                    let (tx, rx) = tokio::sync::oneshot::channel();
                    if router.try_send(Route { to: f.to, via: f.via, body: f.body, reply: tx }).is_err() {
                        self.reply(MessageKind::ForwardAck, &ack(Err(ErrorCode::Internal)).encode());
                        continue;
                    }
                    ctx.spawn(rx.into_actor(self).map(move |res, act, _| {
                        let r = res.unwrap_or(Err(ErrorCode::Internal));
                        act.reply(MessageKind::ForwardAck, &ack(r).encode());
                    }));
                }
                Action::RelayAllocate(r) => {
                    // Each grant starts an actor: allocations share the index requests' budget.
                    if !self.allow_index_request() {
                        self.node.metrics.reject(self.out.transport().label(), "relay_rate", self.peer, &"relay");
                        let mut e = ErrorMsg::new(ErrorCode::TooManyAttempts, "too many relay requests; slow down");
                        e.retry_after_secs = 1;
                        self.reply_error(r.req, e);
                        continue;
                    }
                    let grant = self.allocate_relay(r.req, &r.callee);
                    self.reply(MessageKind::RelayGrant, &grant.encode());
                }
                Action::CallStats(s) if self.allow_report() => self.node.metrics.call(&s),
                Action::CallStats(_) => self.node.metrics.report_refused(),
                Action::MailSubmit(m) => {
                    let req = m.req;
                    let refuse =
                        move |code: ErrorCode| MailSubmitReply { req, code: code.code(), replicas: 0, pushed: 0 };
                    let Some(router) = self.mail_router("mail_submit") else {
                        let code =
                            if self.node.index.is_some() { ErrorCode::TooManyAttempts } else { ErrorCode::Unsupported };
                        self.reply(MessageKind::MailSubmitReply, &refuse(code).encode());
                        continue;
                    };
                    let (tx, rx) = tokio::sync::oneshot::channel();
                    if router.try_send(SubmitMail { from: self.user.clone(), submit: m, reply: tx }).is_err() {
                        self.reply(MessageKind::MailSubmitReply, &refuse(ErrorCode::Internal).encode());
                        continue;
                    }
                    ctx.spawn(rx.into_actor(self).map(move |res, act, _| {
                        let r = res.unwrap_or_else(|_| refuse(ErrorCode::Internal));
                        act.reply(MessageKind::MailSubmitReply, &r.encode());
                    }));
                }
                Action::MailFetch(f) => {
                    let req = f.req;
                    let refuse =
                        move |code: ErrorCode| MailBatch { req, code: code.code(), messages: Vec::new(), more: false };
                    let Some(router) = self.mail_router("mail_fetch") else {
                        let code =
                            if self.node.index.is_some() { ErrorCode::TooManyAttempts } else { ErrorCode::Unsupported };
                        self.reply(MessageKind::MailBatch, &refuse(code).encode());
                        continue;
                    };
                    let (tx, rx) = tokio::sync::oneshot::channel();
                    if router.try_send(FetchMail { user: self.user.clone(), fetch: f, reply: tx }).is_err() {
                        self.reply(MessageKind::MailBatch, &refuse(ErrorCode::Internal).encode());
                        continue;
                    }
                    ctx.spawn(rx.into_actor(self).map(move |res, act, _| {
                        let b = res.unwrap_or_else(|_| refuse(ErrorCode::Internal));
                        act.reply(MessageKind::MailBatch, &b.encode());
                    }));
                }
                Action::MailAck(a) => {
                    let req = a.req;
                    let code = match self.mail_router("mail_ack") {
                        Some(router) => match router.try_send(AckMail { user: self.user.clone(), ack: a }) {
                            Ok(()) => 0,
                            Err(_) => ErrorCode::Internal.code(),
                        },
                        None if self.node.index.is_some() => ErrorCode::TooManyAttempts.code(),
                        None => ErrorCode::Unsupported.code(),
                    };
                    self.reply(MessageKind::MailAckReply, &MailAckReply { req, code }.encode());
                }
                Action::RelayRelease(r) => {
                    if let Some(actor) = self.relays.remove(&r.session) {
                        actor.do_send(Release("released"));
                    }
                }
                Action::Close(reason) => {
                    tracing::info!(node = %self.node.identity.name, peer = %self.peer, reason, "host session closed");
                    ctx.stop();
                }
            }
        }
    }
}

impl Actor for HostSession {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        // Frames come from the network: a bounded mailbox, and the listener uses
        // try_send, so a flood is dropped and counted instead of queued without end.
        ctx.set_mailbox_capacity(64);
        let State::Handshaking(env) = &mut self.state else { return };
        let (env, rsa_job) = env.take().expect("handshake starts once");
        let identity = self.node.identity.clone();
        let started = Instant::now();
        let work = tokio::task::spawn_blocking(move || {
            let accepted = handshake::accept(&identity, &env, crate::unix_now());
            drop(rsa_job);
            accepted
        });
        ctx.wait(work.into_actor(self).map(move |res, act, ctx| {
            let secs = started.elapsed().as_secs_f64();
            match res {
                Ok(Ok(accepted)) => {
                    act.node.metrics.handshake("established", secs);
                    act.established(accepted, ctx);
                }
                Ok(Err(e)) => {
                    act.node.metrics.handshake(e.reason(), secs);
                    act.node.metrics.reject(act.out.transport().label(), e.reason(), act.peer, &e);
                    let msg = ErrorMsg::new(e.code(), e.to_string());
                    act.send(
                        MessageKind::Error,
                        frame::encode_plain(act.listener, MessageKind::Error, 0, &msg.encode()),
                    );
                    ctx.stop();
                }
                Err(join) => {
                    tracing::error!(error = %join, "handshake task failed");
                    ctx.stop();
                }
            }
        }));
    }

    fn stopped(&mut self, _: &mut Context<Self>) {
        let id = match &self.state {
            State::Established { session, .. } => Some(session.id()),
            State::Handshaking(_) => None,
        };
        if let Some(id) = id {
            self.node.mailboxes.unregister(&self.user, id);
        }
        // A host that leaves takes its relay sessions with it.
        for (_, actor) in self.relays.drain() {
            actor.do_send(Release("owner_left"));
        }
        self.node.unregister_session(self.peer, self.handshake_id, id);
    }
}

impl Handler<Deliver> for HostSession {
    type Result = ();

    fn handle(&mut self, msg: Deliver, _: &mut Context<Self>) {
        // Sealing more than a frame holds would fail; whoever queued it is checked too.
        if msg.0.len() <= crate::buddy::notice::NOTICE_LEN_MAX {
            self.reply(MessageKind::Notice, &msg.0);
        }
    }
}

impl Handler<Inbound> for HostSession {
    type Result = ();

    fn handle(&mut self, msg: Inbound, ctx: &mut Context<Self>) {
        let transport = self.out.transport().label();
        let State::Established { session, .. } = &mut self.state else {
            self.node.metrics.reject(transport, "not_established", self.peer, &"frame before Welcome");
            return;
        };
        let result = frame::decode(self.listener, &msg.0).and_then(|raw| {
            let kind = raw.header.kind;
            session.on_frame(&raw, crate::unix_now()).map(|a| (kind, a))
        });
        match result {
            Ok((kind, actions)) => {
                self.node.metrics.frame_in(kind.label(), transport);
                self.apply(actions, ctx);
            }
            Err(e) => self.node.metrics.reject(transport, e.reason(), self.peer, &e),
        }
    }
}

impl Handler<RepeatWelcome> for HostSession {
    type Result = ();

    fn handle(&mut self, _: RepeatWelcome, _: &mut Context<Self>) {
        if let State::Established { welcome, .. } = &self.state {
            self.send(MessageKind::Welcome, welcome.clone());
        }
    }
}

impl Handler<Close> for HostSession {
    type Result = ();

    fn handle(&mut self, msg: Close, ctx: &mut Context<Self>) {
        if msg.notify
            && let State::Established { session, .. } = &mut self.state
        {
            let bye = session.goodbye();
            self.send(MessageKind::Bye, bye);
        }
        tracing::debug!(node = %self.node.identity.name, peer = %self.peer, reason = msg.reason, "closing host session");
        ctx.stop();
    }
}
