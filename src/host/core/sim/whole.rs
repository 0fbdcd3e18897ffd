//! Whole [`HostCore`]s in the world: hosts that log in through the ladder, publish,
//! look each other up, call, and fail over, driven as the shell will drive them (one
//! input, every output drained, a wake-up at `poll_timeout`).
//!
//! Its login-server effects are answered by a [`FakeLogin`] (the owner's buddy list in
//! memory) after a delay of the test's choosing, as a slow login server would.
//!
//! Each `handle_timeout` step is recorded: which media ticks of which call were due,
//! the voice frames of each call among the step's transmits, where in the step's
//! output the first of them stood, and how much the step put out in all. That is
//! what the test that no media tick waits for signalling reads.

use super::nat::NatFn;
use super::{Ctx, TcpOut};
use crate::buddy::op::{BuddyAnswer, BuddyOp, PAGE_ROWS, Relation, Row};
use crate::buddy::record::{self, Contact};
use crate::call::media::{Kind, peek};
use crate::crypto::credential::{Claims, Credential, CredentialKind};
use crate::crypto::keys::tests::test_key;
use crate::crypto::password::ListKey;
use crate::host::LoginReport;
use crate::host::account::AccountError;
use crate::host::buddies::Event;
use crate::host::cache::Cache;
use crate::host::core::host::{Command, HostConfig, HostCore, HostResult};
use crate::host::core::io::{Dest, Effect, EffectId, EffectResult, TcpEvent, Transmit};
use crate::host::core::io::{LoginAnswer, LoginCall};
use crate::host::core::ladder::Identity;
use crate::host::core::pending::OpId;
use crate::host::media::demux;
use crate::nat::NatKind;
use crate::wire::ErrorCode;
use crate::wire::message::ErrorMsg;
use rand::SeedableRng;
use rand::rngs::StdRng;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

/// The first local port of a call's extra sockets.
const EXTRA_PORT_BASE: u16 = 50_000;
/// Most records one host keeps.
const RECORDS_MAX: usize = 1_000_000;

/// The login server's side of one owner's buddy list, answering as `login::` does.
#[derive(Debug, Clone)]
pub struct FakeLogin {
    owner: String,
    list_key: ListKey,
    /// The contacts: (tag, user, relation), in tag order.
    pub contacts: Vec<(u32, String, Relation)>,
    /// How long each answer takes.
    pub delay: Duration,
    /// Calls answered, by kind label.
    pub answered: BTreeMap<&'static str, u64>,
}

impl FakeLogin {
    /// `owner`'s list (sealed under `list_key`) with `authorized` buddies, answering after `delay`.
    pub fn new(owner: &str, list_key: ListKey, authorized: usize, delay: Duration) -> Self {
        let contacts =
            (0..authorized).map(|i| (7 * i as u32 + 3, format!("buddy{i:03}"), Relation::Authorized)).collect();
        Self { owner: owner.to_ascii_lowercase(), list_key, contacts, delay, answered: BTreeMap::new() }
    }

    fn row(&self, tag: u32, user: &str, relation: Relation) -> Row {
        let mut nonce = [0; 12];
        nonce[..4].copy_from_slice(&tag.to_be_bytes());
        let contact = Contact { user: user.into(), added_at: 1 };
        Row {
            tag,
            relation,
            sealed: record::seal_with_nonce(&self.list_key, &self.owner, &contact, nonce),
            changed_at: 1,
        }
    }

    fn answer(&mut self, call: &LoginCall) -> Result<LoginAnswer, AccountError> {
        let LoginCall::Buddy(op) = call else {
            *self.answered.entry("revocations").or_default() += 1;
            return Ok(LoginAnswer::Revocations(None));
        };
        *self.answered.entry(op.label()).or_default() += 1;
        let a = match op {
            BuddyOp::List { after } => {
                let from: Vec<_> = self.contacts.iter().filter(|c| Some(c.0) > *after).collect();
                let rows = from.iter().take(PAGE_ROWS).map(|c| self.row(c.0, &c.1, c.2)).collect();
                BuddyAnswer::Page { rows, more: from.len() > PAGE_ROWS }
            }
            BuddyOp::Requests => BuddyAnswer::Requests { items: Vec::new() },
            _ => {
                return Err(AccountError::Refused(ErrorMsg::new(ErrorCode::Unsupported, "not in this world")));
            }
        };
        Ok(LoginAnswer::Buddy(a))
    }
}

/// Who a whole-core host is and where it sits.
pub struct Seat {
    /// Its user.
    pub user: String,
    /// Its private address (port P's).
    pub private: SocketAddr,
    /// Its router.
    pub nat: Box<dyn NatFn>,
    /// The key its credential certifies.
    pub key: crate::crypto::keys::PrivateKey,
    /// Its login server.
    pub login: FakeLogin,
}

/// One `handle_timeout` step of a host that had a media tick due.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Step {
    /// When.
    pub at: Duration,
    /// Per call: the ticks due at the step.
    pub due: Vec<([u8; 16], u64)>,
    /// Per call tag: voice frames among the step's transmits.
    pub voice: BTreeMap<[u8; 8], u64>,
    /// Transmits that were no media (signalling) and came before the step's first voice
    /// frame.
    pub before_voice: usize,
    /// Everything the step put out (transmits and effects).
    pub outputs: usize,
}

/// A host of the world whose machine is a whole [`HostCore`].
pub struct CoreNode {
    user: String,
    private: SocketAddr,
    nat: Box<dyn NatFn>,
    /// The machine.
    pub core: HostCore,
    /// Finished commands, with when.
    pub done: Vec<(Duration, OpId, HostResult)>,
    /// Application events, with when.
    pub events: Vec<(Duration, Event)>,
    /// Steps at which a media tick was due.
    pub steps: Vec<Step>,
    /// Voice frames sent outside a `handle_timeout` step.
    pub voice_outside_ticks: u64,
    /// The most outputs one input made.
    pub max_outputs: usize,
    /// The login server its login effects go to.
    pub login: FakeLogin,
    /// Extra sockets opened, and datagrams they took in.
    pub probe_sockets: (u64, u64),
    /// Login effects on their way back: when, and their id and call.
    login_out: BTreeMap<(Duration, u64), (EffectId, LoginCall)>,
    login_seq: u64,
    /// Extra sockets: (call, index) → local port, and back.
    sockets: BTreeMap<([u8; 16], u16), u16>,
    ports: BTreeMap<u16, ([u8; 16], u16)>,
    next_port: u16,
    /// The chat history: a real SQLite file in a folder of its own, answered at once (a
    /// device's history is local; its timing is not what these worlds test).
    history: Option<(tempfile::TempDir, crate::chat::history::History)>,
}

impl std::fmt::Debug for CoreNode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CoreNode").field("user", &self.user).field("private", &self.private).finish()
    }
}

impl CoreNode {
    /// The host `seat` says, with `cfg` and the host cache `cache`; the credential is
    /// issued by the world's login key at `unix_secs`, the machine seeded with `seed`.
    /// It starts its ladder at `now`.
    pub fn new(
        seat: Seat,
        cfg: HostConfig,
        cache: Cache,
        (serial, unix_secs, seed): (u64, u64, u64),
        now: crate::host::core::Now,
    ) -> Self {
        let Seat { user, private, nat, key, login } = seat;
        let user = user.as_str();
        let credential = Credential::issue(
            Claims {
                kind: CredentialKind::Host,
                subject: user.into(),
                public_key: key.public().clone(),
                issued_at: unix_secs,
                expires_at: unix_secs + 86_400,
                serial,
            },
            &test_key(0),
        );
        let me = Identity { trusted: super::supernode::trusted(), credential, key };
        let report = LoginReport {
            user: user.into(),
            supernode: String::new(),
            supernode_addr: private,
            transport: "",
            public_addr: private,
            nat: NatKind::Unknown,
            credential_expires: String::new(),
            credential_expires_unix: unix_secs + 86_400,
            local_port: private.port(),
            rtt_ms: 0.0,
            latest_version: String::new(),
            update_available: false,
            attempts: Vec::new(),
        };
        let core = HostCore::new(me, cfg, cache, report, now, StdRng::seed_from_u64(seed));
        Self {
            user: user.into(),
            private,
            nat,
            core,
            done: Vec::new(),
            events: Vec::new(),
            steps: Vec::new(),
            voice_outside_ticks: 0,
            max_outputs: 0,
            login,
            probe_sockets: (0, 0),
            login_out: BTreeMap::new(),
            login_seq: 0,
            sockets: BTreeMap::new(),
            ports: BTreeMap::new(),
            next_port: EXTRA_PORT_BASE,
            history: None,
        }
    }

    /// This host's chat history (opened at first use).
    pub fn history(&mut self) -> &mut crate::chat::history::History {
        let (_, h) = self.history.get_or_insert_with(|| {
            let dir = tempfile::tempdir().expect("a temporary folder");
            let h = crate::chat::history::History::open(&dir.path().join("chat.sqlite")).expect("a fresh history");
            (dir, h)
        });
        h
    }

    /// The user.
    pub fn user(&self) -> &str {
        &self.user
    }

    /// The NAT in front of it.
    pub fn nat(&self) -> &dyn NatFn {
        self.nat.as_ref()
    }

    /// The outcome of command `op`, once finished.
    pub fn result(&self, op: OpId) -> Option<&HostResult> {
        self.done.iter().find(|(_, o, _)| *o == op).map(|(_, _, r)| r)
    }

    /// The events seen, in order.
    pub fn events(&self) -> impl Iterator<Item = &Event> {
        self.events.iter().map(|(_, e)| e)
    }

    /// Whether an event matching `f` was seen.
    pub fn saw(&self, f: impl Fn(&Event) -> bool) -> bool {
        self.events.iter().any(|(_, e)| f(e))
    }

    pub(super) fn start(&mut self, ctx: &mut Ctx<'_>) {
        self.drain(ctx, false);
    }

    pub(super) fn set_files(&mut self, ctx: &mut Ctx<'_>, cfg: crate::host::core::files::FilesConfig) {
        self.core.set_files(ctx.core_now(), cfg);
        self.drain(ctx, false);
    }

    pub(super) fn command(&mut self, ctx: &mut Ctx<'_>, c: Command) -> OpId {
        let op = self.core.command(ctx.core_now(), c);
        self.drain(ctx, false);
        op
    }

    pub(super) fn handle_datagram(&mut self, ctx: &mut Ctx<'_>, from: SocketAddr, to: SocketAddr, bytes: &[u8]) {
        let Some(inside) = self.nat.inbound(from, to, ctx.now) else {
            ctx.filtered(from, to, bytes);
            return;
        };
        let now = ctx.core_now();
        match self.ports.get(&inside.port()) {
            Some(&(call, socket)) => {
                self.probe_sockets.1 += 1;
                self.core.handle_probe_datagram(now, call, socket, from, bytes)
            }
            None => self.core.handle_datagram(now, from, bytes),
        }
        self.drain(ctx, false);
    }

    pub(super) fn handle_tcp(&mut self, ctx: &mut Ctx<'_>, conn: crate::host::core::io::ConnId, event: TcpEvent) {
        self.core.handle_tcp(ctx.core_now(), conn, event);
        self.drain(ctx, false);
    }

    pub(super) fn handle_timeout(&mut self, ctx: &mut Ctx<'_>) {
        // The login server's answers that are due, each an input of its own.
        while let Some(e) = self.login_out.first_entry().filter(|e| e.key().0 <= ctx.now) {
            let (id, call) = e.remove();
            let r = self.login.answer(&call);
            self.core.handle_effect(ctx.core_now(), id, EffectResult::Login(r));
            self.drain(ctx, false);
        }
        let now = ctx.core_now();
        if self.core.poll_timeout().is_none_or(|t| t > now.mono) {
            return;
        }
        let calls = self.core.calls();
        let due: Vec<([u8; 16], u64)> = calls
            .call_ids()
            .into_iter()
            .filter_map(|id| {
                let t = calls.next_media_tick(id)?;
                (t <= now.mono).then(|| (id, now.mono.duration_since(t).as_millis() as u64 / 20 + 1))
            })
            .collect();
        self.core.handle_timeout(now);
        let (voice, before_voice, outputs) = self.drain(ctx, true);
        if !due.is_empty() {
            assert!(self.steps.len() < RECORDS_MAX, "too many steps recorded");
            self.steps.push(Step { at: ctx.now, due, voice, before_voice, outputs });
        }
    }

    /// Every output onto the world; returns the voice frames per call tag, how many
    /// signalling transmits came before the first, and the outputs in all.
    fn drain(&mut self, ctx: &mut Ctx<'_>, in_timeout: bool) -> (BTreeMap<[u8; 8], u64>, usize, usize) {
        let mut voice = BTreeMap::new();
        let mut before_voice = 0;
        let mut outputs = 0;
        loop {
            let mut any = false;
            while let Some(t) = self.core.poll_transmit() {
                any = true;
                outputs += 1;
                match demux(&t.bytes).map(|(tag, p, _)| (tag, peek(p).map(|(k, _)| k))) {
                    Some((tag, Some(Kind::Voice))) => {
                        *voice.entry(tag).or_default() += 1;
                        if !in_timeout {
                            self.voice_outside_ticks += 1;
                        }
                    }
                    // Media of another kind (path probes) is the clock's own work.
                    Some(_) => {}
                    None if voice.is_empty() => before_voice += 1,
                    None => {}
                }
                self.send(ctx, t);
            }
            while let Some((id, e)) = self.core.poll_effect() {
                any = true;
                outputs += 1;
                self.effect(ctx, id, e);
            }
            while let Some(e) = self.core.poll_event() {
                any = true;
                ctx.note(format!("{e:?}"));
                self.events.push((ctx.now, e));
            }
            while let Some((op, r)) = self.core.poll_completion() {
                any = true;
                ctx.note(format!("done {op:?} {}", if r.is_ok() { "ok" } else { "err" }));
                self.done.push((ctx.now, op, r));
            }
            if !any {
                break;
            }
        }
        assert!(self.events.len() + self.done.len() < RECORDS_MAX, "too many records");
        self.max_outputs = self.max_outputs.max(outputs);
        (voice, before_voice, outputs)
    }

    fn send(&mut self, ctx: &mut Ctx<'_>, t: Transmit) {
        let (src, to) = match t.dest {
            Dest::Udp(to) => (self.private, to),
            Dest::Probe { call, socket, to } => match self.sockets.get(&(call, socket)) {
                Some(port) => (SocketAddr::new(self.private.ip(), *port), to),
                None => return,
            },
            Dest::Tcp(conn) => {
                ctx.tcp.push(TcpOut::Frame { conn, bytes: t.bytes });
                return;
            }
        };
        match self.nat.outbound(src, to, ctx.now, ctx.rng) {
            Some(public) => ctx.send(public, to, t.bytes),
            None => ctx.dropped_by_nat(to),
        }
    }

    /// Does an effect as a shell would, answering at once what needs no network.
    fn effect(&mut self, ctx: &mut Ctx<'_>, id: EffectId, e: Effect) {
        let now = ctx.core_now();
        match e {
            Effect::TcpConnect { conn, addr, .. } => ctx.tcp.push(TcpOut::Connect { conn, addr }),
            Effect::TcpClose { conn } => ctx.tcp.push(TcpOut::Close { conn }),
            Effect::LocalIpToward(_) => {
                self.core.handle_effect(now, id, EffectResult::LocalIp(Some(self.private.ip())));
            }
            Effect::SaveCache(_) => {}
            Effect::OpenProbeSockets { call, n, .. } => {
                self.close_sockets(call, &[]);
                for i in 0..n {
                    let port = self.next_port;
                    self.next_port = self.next_port.wrapping_add(1).max(EXTRA_PORT_BASE);
                    self.sockets.insert((call, i), port);
                    self.ports.insert(port, (call, i));
                }
                self.probe_sockets.0 += u64::from(n);
                self.core.handle_effect(now, id, EffectResult::ProbeSocketsOpened { call, opened: n });
            }
            Effect::CloseProbeSockets { call, keep } => self.close_sockets(call, &keep),
            Effect::Login(call) => {
                self.login_seq += 1;
                self.login_out.insert((ctx.now + self.login.delay, self.login_seq), (id, call));
            }
            Effect::File(e) => {
                let r = crate::host::core::files::run_effect(e);
                self.core.handle_effect(now, id, EffectResult::File(Box::new(r)));
            }
            Effect::Chat(e) => {
                use crate::host::core::chat::{ChatEffect, ChatEffectResult};
                let h = self.history();
                let r = match e {
                    ChatEffect::NextSeq { conversation } => {
                        Some(ChatEffectResult::Seq(h.next_seq(&conversation).map_err(|e| e.to_string())))
                    }
                    ChatEffect::Record { message } => Some(ChatEffectResult::Recorded(
                        h.record_received(&message)
                            .map(|r| r == crate::chat::history::Recorded::New)
                            .map_err(|e| e.to_string()),
                    )),
                    ChatEffect::Sent { id: msg, inner, .. } => {
                        h.record_sent(&inner, msg).and_then(|_| h.mark_stored(msg)).expect("the history writes");
                        None
                    }
                    ChatEffect::KeysLoad => Some(ChatEffectResult::Keys(h.peer_keys().map_err(|e| e.to_string()))),
                    ChatEffect::KeysKeep { user, keys } => {
                        h.remember_keys(&user, &keys, now.unix_ms).expect("the history writes");
                        None
                    }
                    e => Some(crate::host::core::groups::group_effect(h, e)),
                };
                if let Some(r) = r {
                    self.core.handle_effect(now, id, EffectResult::Chat(r));
                }
            }
        }
    }

    fn close_sockets(&mut self, call: [u8; 16], keep: &[u16]) {
        let gone: Vec<(([u8; 16], u16), u16)> =
            self.sockets.iter().filter(|((c, i), _)| *c == call && !keep.contains(i)).map(|(k, p)| (*k, *p)).collect();
        for (k, p) in gone {
            self.sockets.remove(&k);
            self.ports.remove(&p);
        }
    }

    /// When `handle_timeout` next has work, as world time.
    pub(super) fn poll_timeout(&self, base: Instant) -> Option<Duration> {
        let core = self.core.poll_timeout().map(|i| i.saturating_duration_since(base));
        let login = self.login_out.keys().next().map(|(at, _)| *at);
        core.into_iter().chain(login).min()
    }
}
