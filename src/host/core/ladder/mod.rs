//! Finding a super node, as a sans-IO machine: the connection ladder, NAT discovery, the
//! host-cache updates, and the failover to another super node when a link ends.
//!
//! [`Ladder`] runs `host::ladder::plan` one attempt at a time ([`LadderRun`], each
//! attempt an [`AttemptRun`] over UDP from port P or over a TCP connection the shell
//! opens), then, after a UDP success at login, [`NatDiscovery`]. Its outcome is a
//! [`Joined`]: the established `ClientSession` and its [`Dest`], from which the joining
//! code builds a new `CoreLink` with the next epoch, plus what `LoginReport` carries.
//! Every run ends by updating the host cache it holds and asking the shell to write it
//! ([`Effect::SaveCache`], fire and forget).
//!
//! # The driving contract
//!
//! - Start it with [`Ladder::login`] (the first run, followed by NAT discovery) or
//!   [`Ladder::rejoin`] (another super node than the one lost; no NAT discovery, as
//!   today: the NAT kind found at login stands).
//! - Feed it every datagram on port P through [`Ladder::handle_datagram`] before media:
//!   it returns true for what was the ladder's (from the current attempt's super node, or
//!   a NAT probe's answer from its target with its id); everything else is the caller's.
//!   Likewise [`Ladder::handle_tcp`] for TCP events (true: its connection), the results
//!   of its effects through [`Ladder::on_effect_result`] under the tag
//!   [`Ladder::poll_effect`] gave, a failed UDP send through [`Ladder::on_send_failed`],
//!   and [`Ladder::handle_timeout`] when [`Ladder::poll_timeout`] comes. Events on a
//!   connection the ladder no longer names (a connect that succeeds after its step
//!   ended and the ladder asked to close it) get false: drop them.
//! - After every input drain [`Ladder::poll_transmit`], [`Ladder::poll_effect`],
//!   [`Ladder::poll_event`] and [`Ladder::poll_outcome`] until `None`.
//!
//! Each input does bounded work: at most one attempt is started or ended, and at most
//! two datagrams and two effects come out of it. Nothing here waits: where today's code
//! sleeps (`REJOIN_PAUSE` after a failed rejoin) the ladder sets a timer.
//!
//! # Failover
//!
//! A failed rejoin emits `Event::Disconnected` and [`Outcome::Failed`], then tries
//! again [`REJOIN_PAUSE`] after it failed, without the lost super node, until one takes
//! us or [`Ladder::stop`]. A successful one emits `Event::Reconnected`. A rejoin asked
//! for while a run is under way is ignored; one asked for while pausing starts at once.

pub mod attempt;
pub mod nat;

pub use self::attempt::{AttemptRun, LadderRun, Reached, RunEnd};
pub use self::nat::{NatDiscovery, probe_targets};

use super::Now;
use super::io::{ConnId, Dest, Effect, EffectResult, TcpEvent, Transmit};
use crate::crypto::PrivateKey;
use crate::crypto::credential::{Credential, TrustedKeys};
use crate::host::LoginReport;
use crate::host::buddies::Event;
use crate::host::cache::{Cache, CacheEntry, NodeKind};
use crate::host::connect::{AttemptLog, LadderError, Timeouts};
use crate::host::handshake::ClientSession;
use crate::host::ladder::{self, Attempt, LadderConfig, Transport};
use crate::nat::{NatKind, Observations};
use rand::rngs::StdRng;
use std::collections::VecDeque;
use std::net::SocketAddr;
use std::ops::Range;
use std::time::{Duration, Instant};

/// Between a failed rejoin and the next (today's `buddies::REJOIN_PAUSE`).
pub const REJOIN_PAUSE: Duration = crate::host::buddies::REJOIN_PAUSE;

/// Most outputs of each kind queued; a driver that drains after every input never
/// comes near it.
pub const QUEUED_MAX: usize = 64;

/// Who the host is, to the super nodes it dials.
#[derive(Debug, Clone)]
pub struct Identity {
    /// Trusted login-server keys (to check super nodes' credentials).
    pub trusted: TrustedKeys,
    /// Our credential.
    pub credential: Credential,
    /// Our key.
    pub key: PrivateKey,
}

/// The ladder's settings.
#[derive(Debug, Clone)]
pub struct LadderSettings {
    /// Bootstrap nodes and limits of the plan.
    pub ladder: LadderConfig,
    /// One attempt's step and the whole run's budget.
    pub timeouts: Timeouts,
    /// Port P (the local port NAT discovery compares with).
    pub local_port: u16,
}

/// The super node that was lost, left out of a rejoin.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lost {
    /// Its name (from its credential): every cached address under that name is left out.
    pub name: String,
    /// The address the link went to.
    pub addr: SocketAddr,
}

/// Why a run was made.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Purpose {
    /// Logging in: NAT discovery follows a UDP success.
    Login,
    /// Another super node after `Lost`.
    Rejoin(Lost),
}

/// A super node took us.
#[derive(Debug)]
pub struct Joined {
    /// Login or rejoin.
    pub purpose: Purpose,
    /// The attempt that worked.
    pub attempt: Attempt,
    /// The session: build the next `CoreLink` over it.
    pub session: ClientSession,
    /// Where the link's frames go (`Dest::Udp` from port P, or the TCP connection).
    pub dest: Dest,
    /// Hello to Challenge.
    pub rtt: Duration,
    /// Every attempt of the run.
    pub attempts: Vec<AttemptLog>,
    /// Our address as the super node sees it.
    pub public_addr: SocketAddr,
    /// At login: the NAT found (over TCP: blocked, or unknown if UDP got any answer).
    /// At a rejoin: None, the kind found at login stands.
    pub nat: Option<NatKind>,
    /// At login over UDP: what NAT discovery saw.
    pub observations: Option<Observations>,
}

impl Joined {
    /// The super node's name, from its credential.
    pub fn supernode(&self) -> &str {
        &self.session.supernode.subject
    }

    /// Brings a report up to date, as today's `login` fills it and `reconnect` updates it.
    pub fn update_report(&self, r: &mut LoginReport) {
        r.supernode = self.supernode().to_owned();
        r.supernode_addr = self.session.addr;
        r.transport = self.attempt.transport.label();
        r.public_addr = self.public_addr;
        if let Some(nat) = self.nat {
            r.nat = nat;
        }
        r.rtt_ms = self.rtt.as_secs_f64() * 1000.0;
        r.attempts = self.attempts.clone();
    }
}

/// How a run ended.
#[derive(Debug)]
pub enum Outcome {
    /// A super node took us.
    Joined(Box<Joined>),
    /// None did. At login, the login fails; at a rejoin, another follows after
    /// [`REJOIN_PAUSE`].
    Failed {
        /// Login or rejoin.
        purpose: Purpose,
        /// Why.
        error: LadderError,
        /// Every attempt of the run.
        attempts: Vec<AttemptLog>,
    },
}

/// Counters.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LadderStats {
    /// Runs started.
    pub runs: u64,
    /// Attempts started.
    pub attempts: u64,
    /// Outputs dropped because the queues were full.
    pub dropped: u64,
}

/// What the ladder has queued for its driver.
#[derive(Debug, Default)]
pub struct Out {
    transmits: VecDeque<Transmit>,
    effects: VecDeque<(u64, Effect)>,
    next_tag: u64,
    dropped: u64,
}

impl Out {
    /// Queues a datagram or frame.
    pub fn transmit(&mut self, t: Transmit) {
        if self.transmits.len() >= QUEUED_MAX {
            self.dropped += 1;
        } else {
            self.transmits.push_back(t);
        }
    }

    /// Queues an effect; returns its tag.
    pub fn effect(&mut self, e: Effect) -> u64 {
        self.next_tag += 1;
        if self.effects.len() >= QUEUED_MAX {
            self.dropped += 1;
        } else {
            self.effects.push_back((self.next_tag, e));
        }
        self.next_tag
    }
}

#[derive(Debug)]
enum State {
    /// Nothing under way.
    Idle,
    /// A run.
    Running { run: Box<LadderRun>, purpose: Purpose },
    /// A login reached a super node over UDP; the NAT is being found.
    Discovering { nat: NatDiscovery, reached: Box<Reached> },
    /// A rejoin failed; the next starts at `until`.
    Paused { until: Instant, lost: Lost },
}

/// The ladder, NAT discovery and failover; see the module's documentation.
#[derive(Debug)]
pub struct Ladder {
    me: Identity,
    settings: LadderSettings,
    cache: Cache,
    rng: StdRng,
    conn_ids: Range<u32>,
    next_conn: u32,
    state: State,
    out: Out,
    events: VecDeque<Event>,
    outcomes: VecDeque<Outcome>,
    stats: LadderStats,
}

impl Ladder {
    /// A ladder for `me` over the host cache `cache`. It names its TCP connections from
    /// `conn_ids` only (a range the joining code keeps for it), cycling through them.
    pub fn new(me: Identity, settings: LadderSettings, cache: Cache, conn_ids: Range<u32>, rng: StdRng) -> Self {
        assert!(!conn_ids.is_empty(), "the ladder needs connection ids");
        Self {
            me,
            settings,
            cache,
            rng,
            next_conn: conn_ids.start,
            conn_ids,
            state: State::Idle,
            out: Out::default(),
            events: VecDeque::new(),
            outcomes: VecDeque::new(),
            stats: LadderStats::default(),
        }
    }

    /// The host cache as the ladder knows it.
    pub fn cache(&self) -> &Cache {
        &self.cache
    }

    /// Counters.
    pub fn stats(&self) -> LadderStats {
        LadderStats { dropped: self.stats.dropped + self.out.dropped, ..self.stats }
    }

    /// Whether a run (or NAT discovery, or a pause between rejoins) is under way.
    pub fn is_busy(&self) -> bool {
        !matches!(self.state, State::Idle)
    }

    /// The run under way, if any.
    pub fn run(&self) -> Option<&LadderRun> {
        match &self.state {
            State::Running { run, .. } => Some(run),
            _ => None,
        }
    }

    /// Starts the login's run over the cached super nodes (then the bootstrap nodes).
    /// Ignored if something is under way.
    pub fn login(&mut self, now: Now) {
        if self.is_busy() {
            return;
        }
        let plan = ladder::plan(&self.cache.supernodes(), &self.settings.ladder);
        self.start(now, plan, Purpose::Login);
    }

    /// Starts a run for another super node than `lost`: after the link to it ended, or
    /// its credential was revoked, or the user asked. Ignored while a run is under way;
    /// while pausing after a failed rejoin, starts at once.
    pub fn rejoin(&mut self, now: Now, lost: Lost) {
        if matches!(self.state, State::Running { .. } | State::Discovering { .. }) {
            return;
        }
        let (gone, others): (Vec<CacheEntry>, Vec<CacheEntry>) =
            self.cache.supernodes().into_iter().partition(|e| e.name == lost.name);
        // Its addresses may also be among the configured bootstrap nodes.
        let mut gone: Vec<SocketAddr> = gone.iter().flat_map(|e| [e.udp, e.tcp]).flatten().collect();
        gone.push(lost.addr);
        let plan: Vec<Attempt> =
            ladder::plan(&others, &self.settings.ladder).into_iter().filter(|a| !gone.contains(&a.addr)).collect();
        tracing::warn!(supernode = %lost.name, "lost our super node; connecting to another");
        self.start(now, plan, Purpose::Rejoin(lost));
    }

    /// Stops whatever is under way (a logout): no more attempts, no more rejoins.
    pub fn stop(&mut self) {
        if let State::Running { run, .. } = &self.state
            && let Some(conn) = run.current().and_then(AttemptRun::conn)
        {
            self.out.effect(Effect::TcpClose { conn });
        }
        self.state = State::Idle;
    }

    fn start(&mut self, now: Now, plan: Vec<Attempt>, purpose: Purpose) {
        self.stats.runs += 1;
        self.state = State::Running { run: Box::new(LadderRun::new(plan, now)), purpose };
        self.advance(now);
    }

    /// Starts the next attempt if none is under way, or ends the run.
    fn advance(&mut self, now: Now) {
        let State::Running { run, .. } = &mut self.state else { return };
        let idle = run.current().is_none();
        let (ids, next) = (&self.conn_ids, &mut self.next_conn);
        let conn = || {
            let c = *next;
            *next = if c + 1 >= ids.end { ids.start } else { c + 1 };
            ConnId(c)
        };
        let end = run.advance(now, &self.settings.timeouts, conn, &mut self.rng, &mut self.out);
        if idle && run.current().is_some() {
            self.stats.attempts += 1;
        }
        if let Some(end) = end {
            self.end_run(now, end);
        }
    }

    /// Feeds how the current attempt ended to the run, then moves on.
    fn attempt_ended(&mut self, now: Now, ended: attempt::Ended) {
        let State::Running { run, .. } = &mut self.state else { return };
        match run.finish(ended, &mut self.out) {
            Some(end) => self.end_run(now, end),
            None => self.advance(now),
        }
    }

    fn end_run(&mut self, now: Now, end: RunEnd) {
        let State::Running { purpose, .. } = std::mem::replace(&mut self.state, State::Idle) else { return };
        match end {
            RunEnd::Reached(reached) => {
                self.remember_supernodes(now, &reached);
                match (&purpose, reached.attempt.transport) {
                    (Purpose::Login, Transport::Udp) => {
                        let nat = NatDiscovery::start(
                            &reached.session,
                            self.settings.local_port,
                            now,
                            &mut self.rng,
                            &mut self.out,
                        );
                        self.state = State::Discovering { nat, reached };
                        self.check_discovery(now);
                    }
                    (Purpose::Login, Transport::Tcp) => {
                        // We only got here over TCP: UDP is blocked if no UDP attempt got any answer.
                        let udp_answered = reached.log.iter().any(|a| a.transport == "udp" && a.outcome != "timeout");
                        let nat = if udp_answered { NatKind::Unknown } else { NatKind::UdpBlocked };
                        self.joined(purpose, *reached, Some(nat), None);
                    }
                    (Purpose::Rejoin(_), _) => self.joined(purpose, *reached, None, None),
                }
            }
            RunEnd::Exhausted(error, attempts) => {
                for a in &attempts {
                    self.cache.record_failure(a.addr);
                }
                self.save_cache();
                if let Purpose::Rejoin(lost) = &purpose {
                    tracing::warn!(%error, "no other super node takes us");
                    self.push_event(Event::Disconnected);
                    self.state = State::Paused { until: now.mono + REJOIN_PAUSE, lost: lost.clone() };
                }
                self.push_outcome(Outcome::Failed { purpose, error, attempts });
            }
        }
    }

    fn joined(&mut self, purpose: Purpose, r: Reached, nat: Option<NatKind>, observations: Option<Observations>) {
        let public_addr = r.session.welcome.observed;
        if matches!(purpose, Purpose::Rejoin(_)) {
            tracing::info!(supernode = %r.session.supernode.subject, "reconnected");
            self.push_event(Event::Reconnected { supernode: r.session.supernode.subject.clone() });
        }
        self.push_outcome(Outcome::Joined(Box::new(Joined {
            purpose,
            attempt: r.attempt,
            session: r.session,
            dest: r.dest,
            rtt: r.rtt,
            attempts: r.log,
            public_addr,
            nat,
            observations,
        })));
    }

    fn check_discovery(&mut self, now: Now) {
        let State::Discovering { nat, .. } = &self.state else { return };
        let Some((kind, obs)) = nat.result(now) else { return };
        let State::Discovering { reached, .. } = std::mem::replace(&mut self.state, State::Idle) else { return };
        tracing::info!(?obs, nat = %kind, "NAT discovery");
        self.joined(Purpose::Login, *reached, Some(kind), Some(obs));
    }

    /// Records the super node reached (and those failed at), learns the others its
    /// Welcome lists, and has the cache written (today's `remember_supernodes`).
    fn remember_supernodes(&mut self, now: Now, r: &Reached) {
        for a in r.log.iter().filter(|a| a.outcome != "ok") {
            self.cache.record_failure(a.addr);
        }
        let sn_addr = r.session.addr;
        let (udp, tcp) = match r.attempt.transport {
            Transport::Udp => (Some(sn_addr), None),
            Transport::Tcp => (None, Some(sn_addr)),
        };
        let entry = |name: String, udp, tcp| CacheEntry {
            kind: NodeKind::Supernode,
            name,
            udp,
            tcp,
            last_success: None,
            rtt_ms: None,
            failures: 0,
        };
        self.cache.record_success(
            entry(r.session.supernode.subject.clone(), udp, tcp),
            r.rtt.as_millis() as u32,
            now.unix_ms / 1000,
        );
        for s in &r.session.welcome.supernodes {
            self.cache.learn(entry(s.name.clone(), s.udp, s.tcp));
        }
        self.save_cache();
    }

    fn save_cache(&mut self) {
        self.out.effect(Effect::SaveCache(self.cache.entries().to_vec()));
    }

    fn push_event(&mut self, e: Event) {
        if self.events.len() >= QUEUED_MAX {
            self.stats.dropped += 1;
        } else {
            self.events.push_back(e);
        }
    }

    fn push_outcome(&mut self, o: Outcome) {
        // One per run, and runs follow each other: never more than a couple queued.
        self.outcomes.push_back(o);
    }

    /// A datagram on port P. True if it was the ladder's; anything else is the caller's
    /// to pass on (media, the link).
    pub fn handle_datagram(&mut self, now: Now, from: SocketAddr, bytes: &[u8]) -> bool {
        match &mut self.state {
            State::Running { run, .. } => {
                let Some(cur) = run.current_mut() else { return false };
                if !matches!(cur, AttemptRun::Udp { .. }) || cur.addr() != from {
                    return false;
                }
                if let Some(ended) = cur.on_datagram(now, bytes, &self.me, &mut self.out) {
                    self.attempt_ended(now, ended);
                }
                true
            }
            State::Discovering { nat, .. } => {
                let ours = nat.handle_datagram(now, from, bytes, &mut self.rng, &mut self.out);
                if ours {
                    self.check_discovery(now);
                }
                ours
            }
            State::Idle | State::Paused { .. } => false,
        }
    }

    /// An event on a TCP connection. True if the connection is the current attempt's.
    pub fn handle_tcp(&mut self, now: Now, conn: ConnId, event: TcpEvent) -> bool {
        let State::Running { run, .. } = &mut self.state else { return false };
        let Some(cur) = run.current_mut().filter(|c| c.conn() == Some(conn)) else { return false };
        if let Some(ended) = cur.on_tcp(now, event, &self.me, &mut self.out) {
            self.attempt_ended(now, ended);
        }
        true
    }

    /// A datagram to `to` could not be sent (not "would block": the system refused it,
    /// as it does after an ICMP port unreachable). Ends the current UDP attempt if it is
    /// to `to`, with the system's words in the log, as today.
    pub fn on_send_failed(&mut self, now: Now, to: SocketAddr, error: &str) -> bool {
        let State::Running { run, .. } = &mut self.state else { return false };
        let Some(cur) = run.current_mut() else { return false };
        if !matches!(cur, AttemptRun::Udp { .. }) || cur.addr() != to {
            return false;
        }
        self.attempt_ended(now, attempt::Ended::SendFailed(error.to_owned()));
        true
    }

    /// The result of the effect the ladder tagged `tag`. False if not the ladder's.
    pub fn on_effect_result(&mut self, now: Now, tag: u64, result: EffectResult) -> bool {
        let State::Discovering { nat, .. } = &mut self.state else { return false };
        let EffectResult::LocalIp(ip) = result else { return false };
        let ours = nat.on_local_ip(tag, ip);
        if ours {
            self.check_discovery(now);
        }
        ours
    }

    /// Timers: the attempt's resends and step, the NAT probes, the pause between rejoins.
    pub fn handle_timeout(&mut self, now: Now) {
        match &mut self.state {
            State::Running { run, .. } => {
                let Some(cur) = run.current_mut() else { return };
                if now.mono < cur.poll_timeout() {
                    return;
                }
                if let Some(ended) = cur.on_timeout(now, &mut self.out) {
                    self.attempt_ended(now, ended);
                }
            }
            State::Discovering { nat, .. } => {
                nat.handle_timeout(now, &mut self.rng, &mut self.out);
                self.check_discovery(now);
            }
            State::Paused { until, lost } if now.mono >= *until => {
                let lost = lost.clone();
                self.state = State::Idle;
                self.rejoin(now, lost);
            }
            State::Paused { .. } | State::Idle => {}
        }
    }

    /// When [`Ladder::handle_timeout`] next has work.
    pub fn poll_timeout(&self) -> Option<Instant> {
        match &self.state {
            State::Running { run, .. } => run.current().map(AttemptRun::poll_timeout),
            State::Discovering { nat, .. } => Some(nat.poll_timeout()),
            State::Paused { until, .. } => Some(*until),
            State::Idle => None,
        }
    }

    /// The next datagram or frame to send.
    pub fn poll_transmit(&mut self) -> Option<Transmit> {
        self.out.transmits.pop_front()
    }

    /// The next effect, under the tag its result must come back with.
    pub fn poll_effect(&mut self) -> Option<(u64, Effect)> {
        self.out.effects.pop_front()
    }

    /// The next event for the application (`Reconnected`, `Disconnected`).
    pub fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }

    /// How the last run ended.
    pub fn poll_outcome(&mut self) -> Option<Outcome> {
        self.outcomes.pop_front()
    }
}

#[cfg(test)]
mod tests;
