//! A super node for the in-memory world, made of the real sans-IO parts: the stateless
//! handshake (`supernode::handshake`: challenge, precheck, accept) and the established
//! session (`supernode::session::Session::on_frame`). What the `HostSession` actor and
//! the index router do around them is stood in for by [`SimIndex`], shared by every
//! super node of the world: it answers Find, Search and Publish and routes Forward.

use super::Ctx;
use crate::crypto::credential::{Claims, Credential, CredentialKind, TrustedKeys};
use crate::crypto::keys::tests::test_key;
use crate::supernode::handshake::{Identity, accept, precheck};
use crate::supernode::session::{Action, Session, SessionPeer, Transport};
use crate::wire::frame;
use crate::wire::mail::{MailAckReply, MailBatch, MailSubmitReply};
use crate::wire::message::{
    ErrorCode, FindReply, ForwardAck, Hello, MessageKind, NatProbe, Observed, PublishAck, RelayGrant, SearchReply,
    SupernodeInfo, Welcome,
};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

/// Most answers a slow super node holds back at once; beyond, requests are dropped.
pub const SLOW_ANSWERS_MAX: usize = 1024;
/// Most sessions one super node holds.
pub const SESSIONS_MAX: usize = 1024;

/// How a super node behaves.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SnMode {
    /// Answers everything at once.
    Up,
    /// Drops everything, sends nothing: a node that died without a word.
    BlackHole,
    /// Drops requests of these kinds unread; the rest as `Up`.
    Drop(Vec<MessageKind>),
    /// Answers lookups (Find, Search) this late, as an overloaded index does; the rest
    /// at once.
    Slow(Duration),
}

/// The Global Index and the directory of who is where, shared by the world's super nodes.
#[derive(Debug, Default)]
pub struct SimIndex {
    /// User → their published entry (bytes as published, unchecked).
    pub entries: BTreeMap<String, Vec<u8>>,
    /// User → the super node holding their session.
    pub located: BTreeMap<String, String>,
    /// The message store (the real one, one for the whole world: its replication is not
    /// what these worlds test).
    pub mail: Option<crate::index::mail::MailStore>,
}

impl SimIndex {
    fn mail(&mut self) -> &mut crate::index::mail::MailStore {
        self.mail.get_or_insert_with(|| {
            crate::index::mail::MailStore::new(Default::default(), crate::index::mail::Budget::new(64 << 20))
        })
    }
}

/// Counters of what a super node did with what arrived.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SnStats {
    /// Sessions established.
    pub handshakes: u64,
    /// Datagrams dropped by the mode.
    pub dropped: u64,
    /// Datagrams that were no frame of a session, or did not open.
    pub rejected: u64,
    /// Requests answered.
    pub answered: u64,
}

#[derive(Debug)]
struct Held {
    session: Session,
    welcome: Vec<u8>,
    handshake_id: [u8; 32],
}

/// One super node of the world.
#[derive(Debug)]
pub struct FakeSupernode {
    identity: Identity,
    addr: SocketAddr,
    mode: SnMode,
    keepalive_secs: u16,
    idle_timeout_secs: u16,
    sessions: BTreeMap<SocketAddr, Held>,
    next_session: u32,
    slow: BTreeMap<(Duration, u64), (SocketAddr, Action)>,
    slow_seq: u64,
    stats: SnStats,
    peers: Vec<SupernodeInfo>,
    tcp: bool,
}

/// The login server's trusted keys, as every node of the world ships them.
pub fn trusted() -> TrustedKeys {
    TrustedKeys::new(vec![test_key(0).public().clone()])
}

impl FakeSupernode {
    /// A super node named `name` on `addr`, its credential issued by the test login key
    /// at `unix_secs`; it tells hosts to send a keepalive every `keepalive_secs`.
    pub fn new(name: &str, addr: SocketAddr, keepalive_secs: u16, idle_timeout_secs: u16, unix_secs: u64) -> Self {
        let key = test_key(1);
        let credential = Credential::issue(
            Claims {
                kind: CredentialKind::SuperNode,
                subject: name.into(),
                public_key: key.public().clone(),
                issued_at: unix_secs,
                expires_at: unix_secs + 86_400,
                serial: 1,
            },
            &test_key(0),
        );
        Self {
            identity: Identity::new(name.into(), key, credential, trusted()),
            addr,
            mode: SnMode::Up,
            keepalive_secs,
            idle_timeout_secs,
            sessions: BTreeMap::new(),
            next_session: 1,
            slow: BTreeMap::new(),
            slow_seq: 0,
            stats: SnStats::default(),
            peers: Vec::new(),
            tcp: true,
        }
    }

    /// Its name.
    pub fn name(&self) -> &str {
        &self.identity.name
    }

    /// Its address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Counters.
    pub fn stats(&self) -> SnStats {
        self.stats
    }

    /// Changes how it behaves from now on.
    pub fn set_mode(&mut self, mode: SnMode) {
        self.mode = mode;
    }

    /// Other super nodes its Welcome lists (hosts learn them, and probe them to tell
    /// their NAT).
    pub fn set_peers(&mut self, peers: Vec<SupernodeInfo>) {
        self.peers = peers;
    }

    /// Whether it takes TCP connections on its address (it does unless told otherwise).
    pub fn set_tcp(&mut self, on: bool) {
        self.tcp = on;
    }

    /// Whether it takes TCP connections.
    pub fn takes_tcp(&self) -> bool {
        self.tcp
    }

    /// Whether it is dead (answers nothing, not even a TCP connect).
    pub fn is_dead(&self) -> bool {
        self.mode == SnMode::BlackHole
    }

    /// The established sessions, by the host address they came from.
    pub fn peers(&self) -> Vec<SocketAddr> {
        self.sessions.keys().copied().collect()
    }

    /// A datagram from `from`.
    pub(super) fn handle_datagram(&mut self, ctx: &mut Ctx<'_>, from: SocketAddr, bytes: &[u8]) {
        if self.mode == SnMode::BlackHole {
            self.stats.dropped += 1;
            return;
        }
        let Ok(raw) = frame::decode(self.addr, bytes) else {
            self.stats.rejected += 1;
            return;
        };
        if !raw.header.sealed {
            match raw.header.kind {
                MessageKind::Hello => self.on_hello(ctx, from, raw.payload),
                MessageKind::Auth => self.on_auth(ctx, from, raw.payload),
                MessageKind::NatProbe => self.on_nat_probe(ctx, from, raw.payload),
                _ => self.stats.rejected += 1,
            }
            return;
        }
        if let SnMode::Drop(kinds) = &self.mode
            && kinds.contains(&raw.header.kind)
        {
            self.stats.dropped += 1;
            return;
        }
        let unix = ctx.unix_secs();
        let Some(held) = self.sessions.get_mut(&from) else {
            self.stats.rejected += 1;
            return;
        };
        match held.session.on_frame(&raw, unix) {
            Ok(actions) => actions.into_iter().for_each(|a| self.act(ctx, from, a)),
            Err(_) => self.stats.rejected += 1,
        }
    }

    fn on_hello(&mut self, ctx: &mut Ctx<'_>, from: SocketAddr, payload: &[u8]) {
        let Ok(h) = Hello::decode(payload) else {
            self.stats.rejected += 1;
            return;
        };
        let c = self.identity.challenge(&h, from, ctx.unix_secs());
        ctx.send(self.addr, from, frame::encode_plain(self.addr, MessageKind::Challenge, 0, &c.encode()));
    }

    /// Stateless, as the real node answers it: the address the probe came from.
    fn on_nat_probe(&mut self, ctx: &mut Ctx<'_>, from: SocketAddr, payload: &[u8]) {
        let Ok(probe) = NatProbe::decode(payload) else {
            self.stats.rejected += 1;
            return;
        };
        let reply = Observed { id: probe.id, addr: from }.encode();
        ctx.send(self.addr, from, frame::encode_plain(self.addr, MessageKind::NatProbeReply, 0, &reply));
    }

    fn on_auth(&mut self, ctx: &mut Ctx<'_>, from: SocketAddr, payload: &[u8]) {
        let unix = ctx.unix_secs();
        let accepted = precheck(&self.identity, payload, from, unix).and_then(|env| accept(&self.identity, &env, unix));
        let Ok(accepted) = accepted else {
            self.stats.rejected += 1;
            return;
        };
        // A repeated Auth (its Welcome was lost) gets the same Welcome again.
        if let Some(held) = self.sessions.get(&from).filter(|h| h.handshake_id == accepted.handshake_id) {
            ctx.send(self.addr, from, held.welcome.clone());
            return;
        }
        if self.sessions.len() >= SESSIONS_MAX && !self.sessions.contains_key(&from) {
            self.stats.rejected += 1;
            return;
        }
        let user = accepted.credential.subject.clone();
        let who = SessionPeer {
            id: self.next_session,
            user: user.clone(),
            peer: from,
            listener: self.addr,
            transport: Transport::Udp,
        };
        self.next_session += 1;
        let mut session = Session::new(who, &accepted.secret, unix, u64::from(self.idle_timeout_secs));
        let welcome = session.welcome(&Welcome {
            observed: from,
            keepalive_secs: self.keepalive_secs,
            idle_timeout_secs: self.idle_timeout_secs,
            probe_addr: None,
            supernodes: self.peers.clone(),
        });
        ctx.send(self.addr, from, welcome.clone());
        self.sessions.insert(from, Held { session, welcome, handshake_id: accepted.handshake_id });
        ctx.index.located.insert(user, self.identity.name.clone());
        self.stats.handshakes += 1;
    }

    fn act(&mut self, ctx: &mut Ctx<'_>, peer: SocketAddr, action: Action) {
        match action {
            Action::Send(_, f) => ctx.send(self.addr, peer, f),
            Action::Close(_) => self.close(ctx, peer),
            Action::Find(_) | Action::Search(_) => match self.mode {
                SnMode::Slow(d) if self.slow.len() < SLOW_ANSWERS_MAX => {
                    self.slow.insert((ctx.now + d, self.slow_seq), (peer, action));
                    self.slow_seq += 1;
                }
                SnMode::Slow(_) => self.stats.dropped += 1,
                _ => self.answer(ctx, peer, action),
            },
            a => self.answer(ctx, peer, a),
        }
    }

    fn close(&mut self, ctx: &mut Ctx<'_>, peer: SocketAddr) {
        if let Some(held) = self.sessions.remove(&peer) {
            let user = held.session.user();
            if ctx.index.located.get(user).is_some_and(|n| *n == self.identity.name) {
                ctx.index.located.remove(user);
            }
        }
    }

    /// Answers one request from the session at `peer`, as the real node's actor would.
    fn answer(&mut self, ctx: &mut Ctx<'_>, peer: SocketAddr, action: Action) {
        let Some(held) = self.sessions.get_mut(&peer) else { return };
        let s = &mut held.session;
        let reply = |s: &mut Session, kind: MessageKind, body: &[u8]| s.seal(kind, body);
        let frames: Vec<Vec<u8>> = match action {
            Action::Publish { req, entry } => {
                ctx.index.entries.insert(s.user().to_owned(), entry);
                vec![s.publish_answer(req, PublishAck { code: 0, replicas: 1, detail: String::new() }).1]
            }
            Action::Find(f) => {
                let entry = ctx.index.entries.get(&f.user).cloned().unwrap_or_default();
                let r = FindReply { req: f.req, entry, asked: 1, stage: "index".into(), directory: Vec::new() };
                vec![reply(s, MessageKind::FindReply, &r.encode())]
            }
            Action::Search(q) => {
                let hits: Vec<Vec<u8>> = ctx
                    .index
                    .entries
                    .iter()
                    .filter(|(user, _)| user.contains(q.words.as_str()))
                    .take(usize::from(q.limit))
                    .map(|(_, e)| e.clone())
                    .collect();
                if hits.is_empty() {
                    let r = SearchReply { req: q.req, total: 0, index: 0, entry: Vec::new() };
                    vec![reply(s, MessageKind::SearchReply, &r.encode())]
                } else {
                    let total = hits.len() as u8;
                    hits.into_iter()
                        .enumerate()
                        .map(|(i, entry)| {
                            let r = SearchReply { req: q.req, total, index: i as u8, entry };
                            reply(s, MessageKind::SearchReply, &r.encode())
                        })
                        .collect()
                }
            }
            Action::Forward(f) => {
                let ack = match ctx.index.located.get(&f.to) {
                    Some(node) => {
                        ctx.notices.push((node.clone(), f.to.clone(), f.body));
                        ForwardAck { req: f.req, code: 0, supernode: node.clone() }
                    }
                    None => ForwardAck { req: f.req, code: ErrorCode::NotOnline.code(), supernode: String::new() },
                };
                vec![reply(s, MessageKind::ForwardAck, &ack.encode())]
            }
            Action::RelayAllocate(r) => {
                // No relay plane in this world yet: refused as a node without one refuses.
                let g = RelayGrant {
                    req: r.req,
                    code: ErrorCode::Unsupported.code(),
                    relay: None,
                    session: 0,
                    token_a: [0; 16],
                    leg_b: Vec::new(),
                    idle_timeout_secs: 0,
                };
                vec![reply(s, MessageKind::RelayGrant, &g.encode())]
            }
            Action::MailSubmit(m) => {
                let now_ms = ctx.unix_secs() * 1000;
                let mail = crate::index::mail::Mail {
                    id: m.id,
                    to: m.to.to_ascii_lowercase(),
                    from: s.user().to_ascii_lowercase(),
                    stored_at_ms: now_ms,
                    expires_at_ms: now_ms + 30 * 86_400_000,
                    sealed: m.sealed,
                };
                let push = (mail.to.clone(), mail.sealed.clone());
                let code = match ctx.index.mail().store(now_ms, mail) {
                    crate::index::mail::Stored::Refused(_) => ErrorCode::OverQuota.code(),
                    _ => 0,
                };
                // Stored, then pushed to the recipient's session as the real node does
                // (a hint: a device that misses it fetches the message).
                let mut pushed = 0;
                if let (0, Some(node)) = (code, ctx.index.located.get(&push.0)) {
                    let body = crate::buddy::Notice::Chat { sealed: push.1 }.encode();
                    ctx.notices.push((node.clone(), push.0, body));
                    pushed = 1;
                }
                let r = MailSubmitReply { req: m.req, code, replicas: u8::from(code == 0), pushed };
                vec![reply(s, MessageKind::MailSubmitReply, &r.encode())]
            }
            Action::MailFetch(f) => {
                let now_ms = ctx.unix_secs() * 1000;
                let user = s.user().to_ascii_lowercase();
                let device = crate::crypto::keys::KeyId(f.device);
                let page = ctx.index.mail().fetch(now_ms, &user, device, f.after, crate::wire::mail::BATCH_LEN_MAX);
                let mut messages = Vec::new();
                let mut more = page.more;
                for m in page.messages {
                    if !MailBatch::fits(&messages, m.sealed.len()) {
                        more = true;
                        break;
                    }
                    messages.push((m.id, m.sealed));
                }
                let b = MailBatch { req: f.req, code: 0, messages, more };
                vec![reply(s, MessageKind::MailBatch, &b.encode())]
            }
            Action::MailAck(a) => {
                let now_ms = ctx.unix_secs() * 1000;
                let user = s.user().to_ascii_lowercase();
                ctx.index.mail().ack(now_ms, &user, crate::crypto::keys::KeyId(a.device), &a.ids);
                vec![reply(s, MessageKind::MailAckReply, &MailAckReply { req: a.req, code: 0 }.encode())]
            }
            Action::RelayRelease(_) | Action::CallStats(_) | Action::Send(..) | Action::Close(_) => Vec::new(),
        };
        if !frames.is_empty() {
            self.stats.answered += 1;
        }
        for f in frames {
            ctx.send(self.addr, peer, f);
        }
    }

    /// A notice for `user`, if their session is here.
    pub(super) fn deliver_notice(&mut self, ctx: &mut Ctx<'_>, user: &str, body: &[u8]) {
        if self.mode == SnMode::BlackHole {
            return;
        }
        let Some((peer, held)) = self.sessions.iter_mut().find(|(_, h)| h.session.user() == user) else { return };
        let f = held.session.seal(MessageKind::Notice, body);
        ctx.send(self.addr, *peer, f);
    }

    /// Held answers that are due, and sessions idle too long.
    pub(super) fn handle_timeout(&mut self, ctx: &mut Ctx<'_>) {
        while let Some(entry) = self.slow.first_entry() {
            if entry.key().0 > ctx.now {
                break;
            }
            let (peer, action) = entry.remove();
            if self.mode != SnMode::BlackHole {
                self.answer(ctx, peer, action);
            }
        }
        let unix = ctx.unix_secs();
        let peers: Vec<SocketAddr> = self.sessions.keys().copied().collect();
        for peer in peers {
            let Some(held) = self.sessions.get_mut(&peer) else { continue };
            let actions = held.session.on_tick(unix);
            for a in actions {
                if self.mode == SnMode::BlackHole {
                    if matches!(a, Action::Close(_)) {
                        self.close(ctx, peer);
                    }
                } else {
                    self.act(ctx, peer, a);
                }
            }
        }
    }

    /// When `handle_timeout` next has work, as time since the world began.
    pub(super) fn poll_timeout(&self, epoch_unix_secs: u64) -> Option<Duration> {
        let slow = self.slow.keys().next().map(|(at, _)| *at);
        let idle = self
            .sessions
            .values()
            .map(|h| Duration::from_secs(h.session.deadline().saturating_sub(epoch_unix_secs)))
            .min();
        slow.into_iter().chain(idle).min()
    }
}
