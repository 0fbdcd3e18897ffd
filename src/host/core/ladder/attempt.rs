//! One run of the ladder ([`LadderRun`]) and its current attempt ([`AttemptRun`]): the
//! handshake with one super node over UDP from port P, or over a TCP connection the
//! shell opens, as states instead of awaits. The order, the timeouts and the log are
//! those of `host::connect::run`.

use super::{Identity, Out};
use crate::host::connect::{AttemptLog, LadderError, Timeouts};
use crate::host::core::Now;
use crate::host::core::io::{ConnId, Dest, Effect, Framing, TcpEvent, Transmit};
use crate::host::handshake::{Authenticating, ClientSession, Dialing, HandshakeError};
use crate::host::ladder::{Attempt, Transport};
use rand::Rng;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

/// The handshake's state within one attempt.
#[derive(Debug)]
pub enum Handshake {
    /// Hello sent (over TCP: to be sent once connected), waiting for the Challenge.
    Dialing(Dialing),
    /// Auth sent, waiting for the Welcome.
    Auth {
        /// The handshake's second step.
        auth: Box<Authenticating>,
        /// Hello to Challenge.
        rtt: Duration,
    },
}

/// Where a TCP attempt stands.
#[derive(Debug)]
pub enum TcpPhase {
    /// The shell is connecting.
    Connecting,
    /// Connected; the handshake runs over the connection.
    Open,
}

/// One attempt at one super node.
#[derive(Debug)]
pub enum AttemptRun {
    /// Over UDP from port P: each message is sent twice within the step, so a lost
    /// datagram costs half a step, not all of it.
    Udp {
        /// Where.
        addr: SocketAddr,
        /// The handshake.
        handshake: Handshake,
        /// When the Hello first went out (the round trip is measured from it).
        sent_at: Instant,
        /// The end of the step.
        deadline: Instant,
        /// When the current message goes out again.
        resend_at: Instant,
        /// Half the step: the time between two sends of one message.
        half: Duration,
    },
    /// Over a TCP connection named `conn`.
    Tcp {
        /// Where.
        addr: SocketAddr,
        /// The connection.
        conn: ConnId,
        /// Connecting, or open.
        phase: TcpPhase,
        /// The handshake.
        handshake: Handshake,
        /// When the Hello went out.
        sent_at: Instant,
        /// The end of the step (the connect counts in it).
        deadline: Instant,
    },
}

/// How an attempt ended.
#[derive(Debug)]
pub enum Ended {
    /// The super node welcomed us.
    Won {
        /// The session.
        session: Box<ClientSession>,
        /// Where its frames go.
        dest: Dest,
        /// Hello to Challenge.
        rtt: Duration,
    },
    /// No answer within the step.
    Timeout,
    /// The connection failed or closed (the shell's words): nothing is left to close.
    Io(String),
    /// A send to the super node failed at once (the shell's words).
    SendFailed(String),
    /// The super node answered, but the handshake failed.
    Handshake(HandshakeError),
}

impl AttemptRun {
    /// Starts `attempt` at `now`: the Hello goes out, or the TCP connection is asked for.
    pub fn start(attempt: &Attempt, now: Now, step: Duration, conn: ConnId, rng: &mut impl Rng, out: &mut Out) -> Self {
        let mut nonce = [0u8; 16];
        rng.fill_bytes(&mut nonce);
        let dialing = Dialing::with_nonce(attempt.addr, nonce);
        let deadline = now.mono + step;
        match attempt.transport {
            Transport::Udp => {
                out.transmit(Transmit { dest: Dest::Udp(attempt.addr), bytes: dialing.hello() });
                AttemptRun::Udp {
                    addr: attempt.addr,
                    handshake: Handshake::Dialing(dialing),
                    sent_at: now.mono,
                    deadline,
                    resend_at: now.mono + step / 2,
                    half: step / 2,
                }
            }
            Transport::Tcp => {
                out.effect(Effect::TcpConnect { conn, addr: attempt.addr, framing: Framing::Wire });
                AttemptRun::Tcp {
                    addr: attempt.addr,
                    conn,
                    phase: TcpPhase::Connecting,
                    handshake: Handshake::Dialing(dialing),
                    sent_at: now.mono,
                    deadline,
                }
            }
        }
    }

    /// The super node's address.
    pub fn addr(&self) -> SocketAddr {
        match self {
            Self::Udp { addr, .. } | Self::Tcp { addr, .. } => *addr,
        }
    }

    /// The TCP connection, for a TCP attempt.
    pub fn conn(&self) -> Option<ConnId> {
        match self {
            Self::Tcp { conn, .. } => Some(*conn),
            Self::Udp { .. } => None,
        }
    }

    /// When [`AttemptRun::on_timeout`] has work.
    pub fn poll_timeout(&self) -> Instant {
        match self {
            Self::Udp { deadline, resend_at, .. } => (*resend_at).min(*deadline),
            Self::Tcp { deadline, .. } => *deadline,
        }
    }

    /// The step's end, or the half-step resend.
    pub fn on_timeout(&mut self, now: Now, out: &mut Out) -> Option<Ended> {
        match self {
            Self::Udp { deadline, .. } | Self::Tcp { deadline, .. } if now.mono >= *deadline => Some(Ended::Timeout),
            Self::Udp { addr, handshake, resend_at, half, .. } if now.mono >= *resend_at => {
                out.transmit(Transmit { dest: Dest::Udp(*addr), bytes: handshake.message() });
                *resend_at = now.mono + *half;
                None
            }
            _ => None,
        }
    }

    /// A datagram from the attempt's address (the caller checked the source).
    pub fn on_datagram(&mut self, now: Now, bytes: &[u8], me: &Identity, out: &mut Out) -> Option<Ended> {
        let Self::Udp { addr, handshake, sent_at, resend_at, half, .. } = self else { return None };
        match handshake.on_frame(now, bytes, me, *sent_at) {
            Err(e) => Some(Ended::Handshake(e)),
            Ok(Progress::None) => None,
            Ok(Progress::Authenticating) => {
                out.transmit(Transmit { dest: Dest::Udp(*addr), bytes: handshake.message() });
                *resend_at = now.mono + *half;
                None
            }
            Ok(Progress::Welcomed(session, rtt)) => Some(Ended::Won { session, dest: Dest::Udp(*addr), rtt }),
        }
    }

    /// Something happened on the attempt's connection (the caller checked `conn`).
    pub fn on_tcp(&mut self, now: Now, event: TcpEvent, me: &Identity, out: &mut Out) -> Option<Ended> {
        let Self::Tcp { conn, phase, handshake, sent_at, .. } = self else { return None };
        match event {
            TcpEvent::Connected { .. } => {
                if matches!(phase, TcpPhase::Connecting) {
                    *phase = TcpPhase::Open;
                    *sent_at = now.mono;
                    out.transmit(Transmit { dest: Dest::Tcp(*conn), bytes: handshake.message() });
                }
                None
            }
            TcpEvent::ConnectFailed(e) => Some(Ended::Io(e)),
            TcpEvent::Closed => Some(Ended::Io("connection closed".into())),
            TcpEvent::Frame(bytes) => match handshake.on_frame(now, &bytes, me, *sent_at) {
                Err(e) => Some(Ended::Handshake(e)),
                Ok(Progress::None) => None,
                Ok(Progress::Authenticating) => {
                    out.transmit(Transmit { dest: Dest::Tcp(*conn), bytes: handshake.message() });
                    None
                }
                Ok(Progress::Welcomed(session, rtt)) => Some(Ended::Won { session, dest: Dest::Tcp(*conn), rtt }),
            },
        }
    }
}

/// What one frame did to the handshake.
enum Progress {
    None,
    Authenticating,
    Welcomed(Box<ClientSession>, Duration),
}

impl Handshake {
    /// The message of the current state (Hello or Auth), to send or send again.
    fn message(&self) -> Vec<u8> {
        match self {
            Self::Dialing(d) => d.hello(),
            Self::Auth { auth, .. } => auth.auth().to_vec(),
        }
    }

    fn on_frame(
        &mut self,
        now: Now,
        bytes: &[u8],
        me: &Identity,
        sent_at: Instant,
    ) -> Result<Progress, HandshakeError> {
        match self {
            Self::Dialing(d) => {
                let Some(auth) = d.on_challenge(bytes, &me.trusted, &me.credential, &me.key, now.unix_ms / 1000)?
                else {
                    return Ok(Progress::None);
                };
                *self = Self::Auth { auth: Box::new(auth), rtt: now.mono.saturating_duration_since(sent_at) };
                Ok(Progress::Authenticating)
            }
            Self::Auth { auth, rtt } => Ok(match auth.on_reply(bytes)? {
                Some(session) => Progress::Welcomed(Box::new(session), *rtt),
                None => Progress::None,
            }),
        }
    }
}

/// One run of the ladder: the attempts of a plan in order, one at a time, until one
/// succeeds, the plan ends, or the budget is spent.
#[derive(Debug)]
pub struct LadderRun {
    plan: Vec<Attempt>,
    next: usize,
    started: Instant,
    current: Option<(Attempt, AttemptRun)>,
    log: Vec<AttemptLog>,
    last_error: Option<HandshakeError>,
}

/// A run that reached a super node.
#[derive(Debug)]
pub struct Reached {
    /// The attempt that worked.
    pub attempt: Attempt,
    /// The session.
    pub session: ClientSession,
    /// Where its frames go.
    pub dest: Dest,
    /// Hello to Challenge.
    pub rtt: Duration,
    /// Every attempt of the run, the last one `ok`.
    pub log: Vec<AttemptLog>,
}

/// How a run ended.
#[derive(Debug)]
pub enum RunEnd {
    /// A super node welcomed us.
    Reached(Box<Reached>),
    /// No super node did; the log says what each attempt got.
    Exhausted(LadderError, Vec<AttemptLog>),
}

impl LadderRun {
    /// A run of `plan` starting at `now` (nothing is sent until [`LadderRun::advance`]).
    pub fn new(plan: Vec<Attempt>, now: Now) -> Self {
        Self { plan, next: 0, started: now.mono, current: None, log: Vec::new(), last_error: None }
    }

    /// The attempt under way.
    pub fn current(&self) -> Option<&AttemptRun> {
        self.current.as_ref().map(|(_, r)| r)
    }

    /// The attempts made so far.
    pub fn log(&self) -> &[AttemptLog] {
        &self.log
    }

    /// With no attempt under way, starts the next one; returns the end of the run if
    /// there is none left or the budget is spent.
    pub fn advance(
        &mut self,
        now: Now,
        t: &Timeouts,
        conn: impl FnOnce() -> ConnId,
        rng: &mut impl Rng,
        out: &mut Out,
    ) -> Option<RunEnd> {
        if self.current.is_some() {
            return None;
        }
        let next = self.plan.get(self.next).copied();
        let spent = now.mono.saturating_duration_since(self.started) >= t.budget;
        let Some(a) = next.filter(|_| !spent) else {
            if spent && next.is_some() {
                tracing::warn!(budget = ?t.budget, "connection budget spent");
            }
            let log = std::mem::take(&mut self.log);
            let e = LadderError::Exhausted { attempts: log.len(), last: self.last_error.take() };
            return Some(RunEnd::Exhausted(e, log));
        };
        self.next += 1;
        tracing::info!(n = self.next, stage = ?a.stage, transport = a.transport.label(), addr = %a.addr, "trying super node");
        let conn = match a.transport {
            Transport::Tcp => conn(),
            Transport::Udp => ConnId(0),
        };
        self.current = Some((a, AttemptRun::start(&a, now, t.step, conn, rng, out)));
        None
    }

    /// Records how the current attempt ended; a win ends the run.
    pub fn finish(&mut self, ended: Ended, out: &mut Out) -> Option<RunEnd> {
        let (a, run) = self.current.take()?;
        let log =
            |outcome: String| AttemptLog { stage: a.stage, transport: a.transport.label(), addr: a.addr, outcome };
        let conn_gone = matches!(ended, Ended::Io(_));
        let outcome = match ended {
            Ended::Won { session, dest, rtt } => {
                self.log.push(log("ok".into()));
                let log = std::mem::take(&mut self.log);
                return Some(RunEnd::Reached(Box::new(Reached { attempt: a, session: *session, dest, rtt, log })));
            }
            Ended::Timeout => "timeout".to_owned(),
            Ended::Io(e) | Ended::SendFailed(e) => e,
            Ended::Handshake(e) => {
                let s = e.to_string();
                tracing::warn!(addr = %a.addr, error = %s, "super node attempt failed");
                self.last_error = Some(e);
                s
            }
        };
        tracing::info!(addr = %a.addr, %outcome, "attempt failed");
        // A connection that is not used is closed, whatever state it got to.
        if let (Some(conn), false) = (run.conn(), conn_gone) {
            out.effect(Effect::TcpClose { conn });
        }
        self.log.push(log(outcome));
        None
    }

    /// The current attempt, to feed it.
    pub fn current_mut(&mut self) -> Option<&mut AttemptRun> {
        self.current.as_mut().map(|(_, r)| r)
    }
}
