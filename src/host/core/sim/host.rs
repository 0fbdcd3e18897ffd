//! A host of the in-memory world: behind its NAT, it runs the real host handshake
//! (`host::handshake::{Dialing, Authenticating}`) to its super node through the world,
//! then drives a [`CoreLink`] over the session it established. The core has no ladder
//! yet, so this file does the one-node part of it: a Hello and an Auth, each sent again
//! every [`HANDSHAKE_RESEND`] until answered or [`HANDSHAKE_SENDS_MAX`] sends.

use super::Ctx;
use super::nat::NatFn;
use super::supernode::trusted;
use crate::crypto::credential::{Claims, Credential, CredentialKind};
use crate::crypto::keys::PrivateKey;
use crate::crypto::keys::tests::test_key;
use crate::host::core::io::{Dest, Effect};
use crate::host::core::pending::{OpId, OpResult};
use crate::host::core::{CoreEvent, CoreLink};
use crate::host::handshake::{Authenticating, Dialing};
use rand::Rng;
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
    Dialing { d: Dialing, resend_at: Duration, sends: u32 },
    Authenticating { a: Box<Authenticating>, resend_at: Duration, sends: u32 },
    Linked(Box<CoreLink>),
    GaveUp(&'static str),
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
        }
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

    /// Starts the handshake: the Hello goes out.
    pub(super) fn start(&mut self, ctx: &mut Ctx<'_>) {
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

    /// Every output of the core, onto the world's wire and into the records.
    fn drain(&mut self, ctx: &mut Ctx<'_>) {
        let Phase::Linked(core) = &mut self.phase else { return };
        let mut out = Vec::new();
        while let Some(t) = core.poll_transmit() {
            out.push(t);
        }
        while let Some((op, r)) = core.poll_completion() {
            ctx.completed(op, &r);
            self.done.push((ctx.now, op, r));
        }
        while let Some(e) = core.poll_event() {
            ctx.event(&e);
            self.events.push((ctx.now, e));
        }
        while let Some((_, e)) = core.poll_effect() {
            self.effects.push((ctx.now, e));
        }
        assert!(self.done.len() + self.events.len() <= RECORDS_MAX, "a host recorded more than {RECORDS_MAX}");
        for t in out {
            match t.dest {
                Dest::Udp(to) => match self.nat.outbound(self.private, to, ctx.now, ctx.rng) {
                    Some(public) => ctx.send(public, to, t.bytes),
                    None => ctx.dropped_by_nat(to),
                },
                Dest::Tcp(_) | Dest::Probe { .. } => unreachable!("the world links hosts over UDP only"),
            }
        }
    }

    /// When `handle_timeout` next has work.
    /// `base`: the instant the world's time counts from.
    pub(super) fn poll_timeout(&self, base: std::time::Instant) -> Option<Duration> {
        match &self.phase {
            Phase::Dialing { resend_at, .. } | Phase::Authenticating { resend_at, .. } => Some(*resend_at),
            Phase::Linked(core) => core.poll_timeout().map(|i| i.saturating_duration_since(base)),
            Phase::GaveUp(_) => None,
        }
    }
}
