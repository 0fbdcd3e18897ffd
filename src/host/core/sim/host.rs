//! A host of the in-memory world: behind its NAT, it runs the real host handshake
//! (`host::handshake::{Dialing, Authenticating}`) to its super node through the world,
//! then drives a [`CoreLink`] over the session it established.
//!
//! Two ways to the handshake: a plain host does the one-node part itself (a Hello and
//! an Auth, each sent again every [`HANDSHAKE_RESEND`] until answered or
//! [`HANDSHAKE_SENDS_MAX`] sends); a ladder host runs the core's [`Ladder`] over its
//! cache (UDP, then TCP, then the bootstrap nodes; NAT discovery; a rejoin when the
//! link ends), and builds a new `CoreLink` on each super node that takes it, as the
//! joining code will. A ladder host hands every datagram the ladder and the link do not
//! take to [`SimHost::passed_on`], where media would get it, and may keep a periodic
//! timer ([`SimHost::set_ticker`]) standing for the media clock.

use super::Ctx;
use super::TcpOut;
use super::nat::NatFn;
use super::supernode::trusted;
use crate::crypto::credential::{Claims, Credential, CredentialKind};
use crate::crypto::keys::PrivateKey;
use crate::crypto::keys::tests::test_key;
use crate::host::buddies::Event;
use crate::host::cache::CacheEntry;
use crate::host::connect::AttemptLog;
use crate::host::core::io::{ConnId, Dest, Effect, EffectResult, TcpEvent, Transmit};
use crate::host::core::ladder::{Identity, Ladder, LadderSettings, Lost, Outcome, Purpose};
use crate::host::core::pending::{OpId, OpResult};
use crate::host::core::{CoreEvent, CoreLink};
use crate::host::handshake::{Authenticating, Dialing};
use crate::nat::{NatKind, Observations};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::net::SocketAddr;
use std::time::Duration;

/// How long a handshake step waits for its answer before sending again.
pub const HANDSHAKE_RESEND: Duration = Duration::from_millis(500);
/// Sends of one handshake step before the host gives up.
pub const HANDSHAKE_SENDS_MAX: u32 = 6;
/// Most completions and events a host keeps for the test to read.
pub const RECORDS_MAX: usize = 100_000;

/// Where a host's link stands.
#[derive(Debug)]
enum Phase {
    Dialing {
        d: Dialing,
        resend_at: Duration,
        sends: u32,
    },
    Authenticating {
        a: Box<Authenticating>,
        resend_at: Duration,
        sends: u32,
    },
    Linked(Box<CoreLink>),
    /// A ladder host between links: its ladder is at work.
    Joining,
    GaveUp(&'static str),
}

/// How one of a ladder host's runs ended.
#[derive(Debug, Clone)]
pub struct Run {
    /// When.
    pub at: Duration,
    /// Login or rejoin.
    pub purpose: Purpose,
    /// The super node that took us (its name), if one did.
    pub supernode: Option<String>,
    /// Where the link went.
    pub dest: Option<Dest>,
    /// The NAT found (at login).
    pub nat: Option<NatKind>,
    /// What NAT discovery saw.
    pub observations: Option<Observations>,
    /// Our address as the super node saw it.
    pub public_addr: Option<SocketAddr>,
    /// Every attempt.
    pub attempts: Vec<AttemptLog>,
    /// Why no super node took us.
    pub error: Option<String>,
}

/// A periodic timer standing for the media clock: it must fire on time whatever else
/// the host is doing.
#[derive(Debug, Clone, Copy)]
struct Ticker {
    period: Duration,
    next: Duration,
}

/// What a ladder host keeps beside its ladder.
#[derive(Debug)]
struct LadderParts {
    ladder: Box<Ladder>,
    rng: StdRng,
}

/// One host of the world.
#[derive(Debug)]
pub struct SimHost {
    user: String,
    private: SocketAddr,
    nat: Box<dyn NatFn>,
    supernode: SocketAddr,
    credential: Credential,
    key: PrivateKey,
    phase: Phase,
    /// Finished requests, with when.
    pub done: Vec<(Duration, OpId, OpResult)>,
    /// Events, with when.
    pub events: Vec<(Duration, CoreEvent)>,
    /// Effects asked for, with when (a UDP link asks for none).
    pub effects: Vec<(Duration, Effect)>,
    ladder: Option<LadderParts>,
    /// A ladder host's runs.
    pub runs: Vec<Run>,
    /// A ladder host's application events (`Reconnected`, `Disconnected`).
    pub app_events: Vec<(Duration, Event)>,
    /// The host caches a ladder host was asked to write.
    pub saved: Vec<(Duration, Vec<CacheEntry>)>,
    /// Datagrams neither the ladder nor the link took, with when and from whom.
    pub passed_on: Vec<(Duration, SocketAddr)>,
    ticker: Option<Ticker>,
    /// When the ticker fired.
    pub ticks: Vec<Duration>,
    /// The most transmits and effects one input made.
    pub max_outputs: usize,
    /// A ladder host's login report, brought up to date by each run that joins.
    pub report: crate::host::LoginReport,
}

impl SimHost {
    /// `user` on the private socket `private` behind `nat`, to log in to `supernode`;
    /// the credential is issued by the test login key at `unix_secs`.
    pub fn new(
        user: &str,
        private: SocketAddr,
        nat: Box<dyn NatFn>,
        supernode: SocketAddr,
        serial: u64,
        unix_secs: u64,
    ) -> Self {
        let key = test_key(2);
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
        Self {
            user: user.into(),
            private,
            nat,
            supernode,
            credential,
            key,
            phase: Phase::GaveUp("not started"),
            done: Vec::new(),
            events: Vec::new(),
            effects: Vec::new(),
            ladder: None,
            runs: Vec::new(),
            app_events: Vec::new(),
            saved: Vec::new(),
            passed_on: Vec::new(),
            ticker: None,
            ticks: Vec::new(),
            max_outputs: 0,
            report: crate::host::LoginReport {
                user: user.into(),
                supernode: String::new(),
                supernode_addr: supernode,
                transport: "",
                public_addr: private,
                nat: NatKind::Unknown,
                credential_expires: String::new(),
                credential_expires_unix: 0,
                local_port: private.port(),
                rtt_ms: 0.0,
                latest_version: String::new(),
                update_available: false,
                attempts: Vec::new(),
            },
        }
    }

    /// Makes this host a ladder host: it logs in through the core's ladder over `cache`,
    /// its generator seeded with `seed`.
    pub fn with_ladder(
        mut self,
        cache: Vec<CacheEntry>,
        ladder: crate::host::ladder::LadderConfig,
        timeouts: crate::host::connect::Timeouts,
        seed: u64,
    ) -> Self {
        let me = Identity { trusted: trusted(), credential: self.credential.clone(), key: self.key.clone() };
        let settings = LadderSettings { ladder, timeouts, local_port: self.private.port() };
        let l = Ladder::new(me, settings, crate::host::cache::Cache::new(cache), 1..1000, StdRng::seed_from_u64(seed));
        self.ladder = Some(LadderParts { ladder: Box::new(l), rng: StdRng::seed_from_u64(seed ^ 0x5eed) });
        self
    }

    /// The ladder, for a ladder host.
    pub fn ladder(&self) -> Option<&Ladder> {
        self.ladder.as_ref().map(|l| l.ladder.as_ref())
    }

    /// Fires a timer every `period` from `first` on, recording when.
    pub fn set_ticker(&mut self, first: Duration, period: Duration) {
        self.ticker = Some(Ticker { period, next: first });
    }

    /// The user.
    pub fn user(&self) -> &str {
        &self.user
    }

    /// The NAT in front of it.
    pub fn nat(&self) -> &dyn NatFn {
        self.nat.as_ref()
    }

    /// The core, once the handshake is done.
    pub fn core(&self) -> Option<&CoreLink> {
        match &self.phase {
            Phase::Linked(c) => Some(c),
            _ => None,
        }
    }

    pub(super) fn core_mut(&mut self) -> Option<&mut CoreLink> {
        match &mut self.phase {
            Phase::Linked(c) => Some(c),
            _ => None,
        }
    }

    /// Why the handshake was given up, if it was.
    pub fn gave_up(&self) -> Option<&'static str> {
        match self.phase {
            Phase::GaveUp(why) => Some(why),
            _ => None,
        }
    }

    /// Starts the handshake: the Hello goes out (or the ladder starts).
    pub(super) fn start(&mut self, ctx: &mut Ctx<'_>) {
        if let Some(l) = &mut self.ladder {
            l.ladder.login(ctx.core_now());
            self.phase = Phase::Joining;
            self.drain(ctx);
            return;
        }
        let mut nonce = [0u8; 16];
        ctx.rng.fill_bytes(&mut nonce);
        let d = Dialing::with_nonce(self.supernode, nonce);
        self.send(ctx, d.hello());
        self.phase = Phase::Dialing { d, resend_at: ctx.now + HANDSHAKE_RESEND, sends: 1 };
    }

    fn send(&mut self, ctx: &mut Ctx<'_>, bytes: Vec<u8>) {
        match self.nat.outbound(self.private, self.supernode, ctx.now, ctx.rng) {
            Some(public) => ctx.send(public, self.supernode, bytes),
            None => ctx.dropped_by_nat(self.supernode),
        }
    }

    /// A datagram that reached the router's public address `to` from `from`.
    pub(super) fn handle_datagram(&mut self, ctx: &mut Ctx<'_>, from: SocketAddr, to: SocketAddr, bytes: &[u8]) {
        if self.nat.inbound(from, to, ctx.now).is_none() {
            ctx.filtered(from, to, bytes);
            return;
        }
        let unix = ctx.unix_secs();
        if let Some(l) = &mut self.ladder {
            let now = ctx.core_now();
            if !l.ladder.handle_datagram(now, from, bytes) {
                match &mut self.phase {
                    Phase::Linked(core) if core.link().dest() == Dest::Udp(from) => {
                        core.handle_datagram(now, from, bytes)
                    }
                    _ => self.passed_on.push((ctx.now, from)),
                }
            }
            self.drain(ctx);
            return;
        }
        match &mut self.phase {
            Phase::Dialing { d, .. } if from == self.supernode => {
                match d.on_challenge(bytes, &trusted(), &self.credential, &self.key, unix) {
                    Ok(Some(a)) => {
                        let auth = a.auth().to_vec();
                        self.phase =
                            Phase::Authenticating { a: Box::new(a), resend_at: ctx.now + HANDSHAKE_RESEND, sends: 1 };
                        self.send(ctx, auth);
                    }
                    Ok(None) => {}
                    Err(_) => self.phase = Phase::GaveUp("the super node refused the hello"),
                }
            }
            Phase::Authenticating { a, .. } if from == self.supernode => match a.on_reply(bytes) {
                Ok(Some(session)) => {
                    let now = ctx.core_now();
                    let core = CoreLink::new(session, Dest::Udp(self.supernode), now, ctx.rng);
                    self.phase = Phase::Linked(Box::new(core));
                    ctx.linked(self.supernode);
                }
                Ok(None) => {}
                Err(_) => self.phase = Phase::GaveUp("the super node refused the auth"),
            },
            Phase::Linked(core) => {
                let now = ctx.core_now();
                core.handle_datagram(now, from, bytes);
            }
            _ => {}
        }
        self.drain(ctx);
    }

    /// The handshake's resends, or the core's timers.
    pub(super) fn handle_timeout(&mut self, ctx: &mut Ctx<'_>) {
        if let Some(t) = &mut self.ticker
            && ctx.now >= t.next
        {
            self.ticks.push(ctx.now);
            t.next += t.period;
        }
        if let Some(l) = &mut self.ladder {
            let now = ctx.core_now();
            if l.ladder.poll_timeout().is_some_and(|t| t <= now.mono) {
                l.ladder.handle_timeout(now);
            }
            if let Phase::Linked(core) = &mut self.phase
                && core.poll_timeout().is_some_and(|t| t <= now.mono)
            {
                core.handle_timeout(now);
            }
            self.drain(ctx);
            return;
        }
        let resend = match &mut self.phase {
            Phase::Dialing { d, resend_at, sends } if ctx.now >= *resend_at => {
                *resend_at = ctx.now + HANDSHAKE_RESEND;
                *sends += 1;
                (*sends <= HANDSHAKE_SENDS_MAX).then(|| d.hello())
            }
            Phase::Authenticating { a, resend_at, sends } if ctx.now >= *resend_at => {
                *resend_at = ctx.now + HANDSHAKE_RESEND;
                *sends += 1;
                (*sends <= HANDSHAKE_SENDS_MAX).then(|| a.auth().to_vec())
            }
            Phase::Linked(core) => {
                let now = ctx.core_now();
                core.handle_timeout(now);
                self.drain(ctx);
                return;
            }
            _ => return,
        };
        match resend {
            Some(bytes) => self.send(ctx, bytes),
            None => self.phase = Phase::GaveUp("no answer to the handshake"),
        }
    }

    /// An event on one of the host's TCP connections.
    pub(super) fn handle_tcp(&mut self, ctx: &mut Ctx<'_>, conn: ConnId, event: TcpEvent) {
        let now = ctx.core_now();
        let ladders = self.ladder.as_mut().is_some_and(|l| l.ladder.handle_tcp(now, conn, event.clone()));
        if !ladders && let Phase::Linked(core) = &mut self.phase {
            core.handle_tcp(now, conn, event);
        }
        self.drain(ctx);
    }

    /// Runs a command on the core at the world's `now`, then drains it.
    pub(super) fn command<T>(
        &mut self,
        ctx: &mut Ctx<'_>,
        f: impl FnOnce(&mut CoreLink, crate::host::core::Now) -> T,
    ) -> Option<T> {
        let now = ctx.core_now();
        let out = f(self.core_mut()?, now);
        self.drain(ctx);
        Some(out)
    }

    /// Every output of the ladder and the core, onto the world's wire and into the
    /// records, until neither has any.
    fn drain(&mut self, ctx: &mut Ctx<'_>) {
        let mut outputs = 0;
        loop {
            let mut out = Vec::new();
            let mut effects = Vec::new();
            self.drain_ladder(ctx, &mut out, &mut effects);
            self.drain_core(ctx, &mut out, &mut effects);
            if out.is_empty() && effects.is_empty() {
                break;
            }
            outputs += out.len() + effects.len();
            for t in out {
                self.send_transmit(ctx, t);
            }
            for (tag, e) in effects {
                self.effect(ctx, tag, e);
            }
        }
        self.max_outputs = self.max_outputs.max(outputs);
        assert!(self.done.len() + self.events.len() <= RECORDS_MAX, "a host recorded more than {RECORDS_MAX}");
    }

    /// The ladder's outputs; a super node that took us becomes the new link.
    fn drain_ladder(&mut self, ctx: &mut Ctx<'_>, out: &mut Vec<Transmit>, effects: &mut Vec<(Option<u64>, Effect)>) {
        let Some(l) = &mut self.ladder else { return };
        while let Some(t) = l.ladder.poll_transmit() {
            out.push(t);
        }
        while let Some((tag, e)) = l.ladder.poll_effect() {
            effects.push((Some(tag), e));
        }
        while let Some(e) = l.ladder.poll_event() {
            ctx.note(format!("{e:?}"));
            self.app_events.push((ctx.now, e));
        }
        while let Some(o) = l.ladder.poll_outcome() {
            let mut run = Run {
                at: ctx.now,
                purpose: Purpose::Login,
                supernode: None,
                dest: None,
                nat: None,
                observations: None,
                public_addr: None,
                attempts: Vec::new(),
                error: None,
            };
            match o {
                Outcome::Joined(j) => {
                    run = Run {
                        purpose: j.purpose.clone(),
                        supernode: Some(j.supernode().to_owned()),
                        dest: Some(j.dest),
                        nat: j.nat,
                        observations: j.observations.clone(),
                        public_addr: Some(j.public_addr),
                        attempts: j.attempts.clone(),
                        ..run
                    };
                    j.update_report(&mut self.report);
                    ctx.linked(j.session.addr);
                    let core = CoreLink::new(j.session, j.dest, ctx.core_now(), &mut l.rng);
                    self.phase = Phase::Linked(Box::new(core));
                }
                Outcome::Failed { purpose, error, attempts } => {
                    ctx.note(format!("ladder failed: {error}"));
                    if purpose == Purpose::Login {
                        self.phase = Phase::GaveUp("no super node took us");
                    }
                    run = Run { purpose, attempts, error: Some(error.to_string()), ..run };
                }
            }
            self.runs.push(run);
        }
    }

    /// The core's outputs; a link that ends sends a ladder host to another super node.
    fn drain_core(&mut self, ctx: &mut Ctx<'_>, out: &mut Vec<Transmit>, effects: &mut Vec<(Option<u64>, Effect)>) {
        let Phase::Linked(core) = &mut self.phase else { return };
        while let Some(t) = core.poll_transmit() {
            out.push(t);
        }
        while let Some((op, r)) = core.poll_completion() {
            ctx.completed(op, &r);
            self.done.push((ctx.now, op, r));
        }
        while let Some((_, e)) = core.poll_effect() {
            effects.push((None, e));
        }
        let mut lost = None;
        while let Some(e) = core.poll_event() {
            ctx.event(&e);
            if matches!(e, CoreEvent::LinkEnded { .. }) {
                let s = core.link().session();
                lost = Some(Lost { name: s.supernode.subject.clone(), addr: s.addr });
            }
            self.events.push((ctx.now, e));
        }
        if let (Some(lost), Some(l)) = (lost, &mut self.ladder) {
            l.ladder.rejoin(ctx.core_now(), lost);
            self.phase = Phase::Joining;
        }
    }

    fn send_transmit(&mut self, ctx: &mut Ctx<'_>, t: Transmit) {
        match t.dest {
            Dest::Udp(to) => match self.nat.outbound(self.private, to, ctx.now, ctx.rng) {
                Some(public) => ctx.send(public, to, t.bytes),
                None => ctx.dropped_by_nat(to),
            },
            Dest::Tcp(conn) => ctx.tcp.push(TcpOut::Frame { conn, bytes: t.bytes }),
            Dest::Probe { .. } => unreachable!("a world host at link level opens no probe sockets"),
        }
    }

    /// Does an effect as a shell would: TCP through the world, the local address from
    /// the host's own, the cache into the records.
    fn effect(&mut self, ctx: &mut Ctx<'_>, tag: Option<u64>, e: Effect) {
        self.effects.push((ctx.now, e.clone()));
        match e {
            Effect::TcpConnect { conn, addr, .. } => ctx.tcp.push(TcpOut::Connect { conn, addr }),
            Effect::TcpClose { conn } => ctx.tcp.push(TcpOut::Close { conn }),
            Effect::LocalIpToward(_) => {
                if let (Some(tag), Some(l)) = (tag, &mut self.ladder) {
                    l.ladder.on_effect_result(ctx.core_now(), tag, EffectResult::LocalIp(Some(self.private.ip())));
                }
            }
            Effect::SaveCache(entries) => self.saved.push((ctx.now, entries)),
            Effect::OpenProbeSockets { .. }
            | Effect::CloseProbeSockets { .. }
            | Effect::Login(_)
            | Effect::Chat(_)
            | Effect::File(_) => {
                unreachable!("a world host at link level has no calls, no buddies and no chat")
            }
        }
    }

    /// When `handle_timeout` next has work.
    /// `base`: the instant the world's time counts from.
    pub(super) fn poll_timeout(&self, base: std::time::Instant) -> Option<Duration> {
        let phase = match &self.phase {
            Phase::Dialing { resend_at, .. } | Phase::Authenticating { resend_at, .. } => Some(*resend_at),
            Phase::Linked(core) => core.poll_timeout().map(|i| i.saturating_duration_since(base)),
            Phase::Joining | Phase::GaveUp(_) => None,
        };
        let ladder = self.ladder().and_then(Ladder::poll_timeout).map(|i| i.saturating_duration_since(base));
        let ticker = self.ticker.map(|t| t.next);
        [phase, ladder, ticker].into_iter().flatten().min()
    }
}
