//! Finding a media path, as plain logic, in the manner of ICE (RFC 8445) for one
//! component and with aggressive nomination.
//!
//! Each side probes every candidate of the other: its interface addresses (host
//! candidates), the address its super node sees through its NAT (the public one), and
//! any address an authenticated probe of the other side came from (peer-reflexive: a
//! symmetric NAT's per-destination mapping, which no super node can see). Probes that
//! cross in flight open both NATs' mappings, which is UDP hole punching. An answer picks
//! a path; a better one answering later replaces it, never a worse one. The ranks, best
//! first: a host candidate on a private network (the same LAN), a direct path, a punched
//! one, a relay over UDP, a relay over TCP.
//!
//! If no answer comes within the punch time (symmetric NATs, or UDP filtered), the
//! caller asks its super node for a relay and both sides probe through it — at once when
//! either side has no address to try (relay only, or UDP blocked). A host whose UDP is
//! blocked reaches the relay over TCP; each side says in its probes and answers whether
//! it does, so both name the path `relayed_tcp`. Once a path is chosen, the better
//! candidates are still checked now and then, so a call that began relayed moves to a
//! direct path when one opens.
//!
//! Between a cone NAT and a symmetric one, once each side has told the other its NAT
//! kind, the sides also run the birthday technique ([`super::birthday`]) while the relay
//! is opened: the hard side probes from many sockets, the easy side probes many ports.
//!
//! Probes and answers are media packets (`call::media`), sealed under the call's keys, so
//! only the other host can make one, and each packet is accepted once (the receiver's
//! replay window). Each probe carries a nonce that its answer echoes: an answer counts
//! only on the route its probe went out on, within [`ANSWER_WINDOW_MS`]. So a probe
//! replayed from elsewhere gains its sender nothing — the check we send back to that
//! address must be answered fresh, and only the other host can.

use super::birthday::{self, Birthday};
use super::invite::{Candidate, CandidateKind};
use super::signal::{Path, Role};
use crate::nat::NatKind;
use rand::SeedableRng;
use std::collections::VecDeque;
use std::net::{IpAddr, SocketAddr};

/// How long a probe waits for its answer; a later one counts for nothing.
pub const ANSWER_WINDOW_MS: u64 = 5_000;
/// Most peer-reflexive addresses one call learns (each costs probes).
pub const PEER_REFLEXIVE_MAX: usize = 4;
/// Probes a learnt (peer-reflexive) address may leave unanswered before a new one may
/// take its place.
const PEER_REFLEXIVE_UNANSWERED_MAX: u32 = 5;
/// Most probes awaiting an answer at once (the birthday technique sends thousands); the
/// oldest go first.
const OUTSTANDING_MAX: usize = 4096;
/// Most extra sockets kept for a call: several of the hard side's mappings may meet the
/// easy side's ports (about eight on average), and each side may pick a different one.
const LIVE_SOCKETS_MAX: usize = 16;
/// Routes remembered as answered (a fresh answer to our probe came by them).
const VALIDATED_MAX: usize = 32;
/// How long the chosen route must be quiet, while the other side's voice comes by another
/// answered route as good, before media follows it there.
pub const LATCH_QUIET_MS: u64 = 200;
/// A triggered check goes out unless that address was probed this recently (our last
/// probe may have come before the other side was listening: the side that answers a
/// call starts its media first).
const TRIGGERED_GAP_MS: u64 = 2;
/// After a path is chosen, better candidates are rechecked at the fast interval this long.
const RECHECK_FAST_FOR_MS: u64 = 30_000;

/// A relay leg: where to send, and what to put in the relay header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RelayLeg {
    /// The relay's UDP address.
    pub addr: SocketAddr,
    /// The relay session.
    pub session: u32,
    /// This side's token.
    pub token: [u8; 16],
    /// We reach the relay over TCP (our UDP is blocked).
    pub tcp: bool,
}

/// Where media goes once a path is chosen.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route {
    /// Straight to the other host's address.
    To(SocketAddr),
    /// Through a relay leg.
    Relay(RelayLeg),
    /// From one of the extra sockets the birthday technique opened, to the other host.
    Via {
        /// Which of them (0 ..).
        socket: u16,
        /// The other host's address.
        to: SocketAddr,
    },
}

/// What the driver must do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PathAction {
    /// Send a probe carrying `nonce` on this route.
    Probe {
        /// Where.
        route: Route,
        /// What its answer must echo.
        nonce: u64,
    },
    /// Answer a probe on the route it came by, echoing its nonce.
    Answer {
        /// Where.
        route: Route,
        /// The probe's nonce (0 for a probe that carried none).
        echo: u64,
    },
    /// Ask our super node for a relay session (the caller, after the punch time).
    AllocateRelay,
    /// Media goes this way from now on.
    Chosen(Route, Path),
    /// Open this many extra UDP sockets for probes (the hard side of the birthday
    /// technique); say how many opened with [`PathFinder::sockets_opened`].
    OpenSockets {
        /// How many.
        n: u16,
        /// The only address they hear from: the one they probe.
        peer: IpAddr,
    },
    /// Close the extra sockets, except those in `keep`: every socket that an
    /// authenticated packet came to (the chosen path goes through one; the other side may
    /// have chosen another, and sends its media there).
    CloseSockets {
        /// The sockets to keep.
        keep: Vec<u16>,
    },
}

/// What the birthday technique spent on a call (for its report).
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct HardNatReport {
    /// Our part: `easy` (behind the cone, probing many ports) or `hard` (behind the
    /// symmetric NAT, probing from many sockets).
    pub role: &'static str,
    /// Probes it sent.
    pub probes: usize,
    /// Sockets it opened (the hard side).
    pub sockets: u16,
    /// Probes sent when the punched path answered, if it did.
    pub success_after: Option<usize>,
    /// The answering port was a predicted one (the easy side).
    pub predicted: bool,
}

/// Timing of the search.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PathTiming {
    /// Between rounds of probes while searching.
    pub probe_interval_ms: u64,
    /// How long direct and punched paths are tried before a relay is asked for.
    pub punch_ms: u64,
    /// Between rechecks of better candidates once a path is chosen (for the first 30 s).
    pub recheck_ms: u64,
    /// Between rechecks after that.
    pub recheck_slow_ms: u64,
}

impl Default for PathTiming {
    fn default() -> Self {
        Self { probe_interval_ms: 100, punch_ms: 3000, recheck_ms: 1000, recheck_slow_ms: 5000 }
    }
}

/// How good a path is: the order is the preference, worst first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Rank {
    /// Through a relay, one side reaching it over TCP.
    RelayedTcp,
    /// Through a relay over UDP.
    RelayedUdp,
    /// Between public addresses of hosts behind NATs.
    Punched,
    /// To a host with no NAT in front of it (or from one).
    Direct,
    /// To the other host's address on a private network: the same LAN.
    Lan,
}

impl Rank {
    /// The path this rank reports (a LAN path is direct).
    pub fn path(self) -> Path {
        match self {
            Self::RelayedTcp => Path::RelayedTcp,
            Self::RelayedUdp => Path::RelayedUdp,
            Self::Punched => Path::Punched,
            Self::Direct | Self::Lan => Path::Direct,
        }
    }
}

/// Where we learnt an address of the other side.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    /// One of its interface addresses, offered.
    Host,
    /// The address its super node sees, offered.
    Public,
    /// The source of one of its authenticated probes, offered by nobody.
    PeerReflexive,
}

#[derive(Debug, Clone)]
struct Remote {
    addr: SocketAddr,
    origin: Origin,
    last_probe_ms: Option<u64>,
    /// Probes sent to it since it last answered.
    unanswered: u32,
}

#[derive(Debug, Clone, Copy)]
struct Sent {
    nonce: u64,
    route: Route,
    at_ms: u64,
    /// One of the birthday technique's probes, to a port nobody offered.
    spray: bool,
}

/// Whether an address is one the birthday technique may aim thousands of probes at: a
/// unicast address on the internet, not a private, shared (RFC 6598), loopback,
/// link-local, multicast, broadcast or unspecified one.
pub fn is_global_unicast(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => {
            let shared = v4.octets()[0] == 100 && (v4.octets()[1] & 0xc0) == 64;
            !(is_private(ip)
                || shared
                || v4.is_loopback()
                || v4.is_multicast()
                || v4.is_broadcast()
                || v4.is_unspecified())
        }
        IpAddr::V6(v6) => !(is_private(ip) || v6.is_loopback() || v6.is_multicast() || v6.is_unspecified()),
    }
}

/// Whether an address belongs to a private network (RFC 1918, link-local, RFC 4193):
/// two hosts that reach each other there are on the same site.
pub fn is_private(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => v4.is_private() || v4.is_link_local(),
        IpAddr::V6(v6) => (v6.segments()[0] & 0xfe00) == 0xfc00 || v6.is_unicast_link_local(),
    }
}

/// The search for one call's path.
#[derive(Debug)]
pub struct PathFinder {
    role: Role,
    remotes: Vec<Remote>,
    timing: PathTiming,
    started_ms: u64,
    next_probe_ms: u64,
    relay: Option<RelayLeg>,
    relay_asked: bool,
    chosen: Option<(Route, Path, Rank)>,
    chosen_at_ms: u64,
    public: bool,
    /// Draws probe nonces (random, so that not even the other side can answer a probe
    /// it did not receive) and the birthday technique's ports.
    rng: rand::rngs::StdRng,
    sent: VecDeque<Sent>,
    nat: NatKind,
    seed: u64,
    birthday: Option<Birthday>,
    hard_nat: Option<HardNatReport>,
    /// Ask for the relay without waiting for the punch time.
    relay_now: bool,
    /// Relay only: nothing straight (see [`PathFinder::set_relay_only`]).
    relay_only: bool,
    /// The other side has sent a probe with a nonce: it echoes them too, and an answer
    /// without one is not believed.
    peer_echoes: bool,
    /// Extra sockets an authenticated packet came to (at most `LIVE_SOCKETS_MAX`).
    live_sockets: Vec<u16>,
    /// Routes a fresh answer to our probe came by: both ways work there.
    validated: VecDeque<Route>,
    /// When something authenticated last came by the chosen route.
    chosen_heard_ms: u64,
}

impl PathFinder {
    /// A search by `role` towards the other side's `candidates`, from `now_ms`.
    pub fn new(role: Role, candidates: &[Candidate], timing: PathTiming, now_ms: u64) -> Self {
        let mut remotes: Vec<Remote> = Vec::new();
        // Host candidates first: an address offered as both (a host with no NAT) is one.
        let offered = |k| candidates.iter().filter(move |c| c.kind == k);
        for (c, origin) in offered(CandidateKind::Host)
            .map(|c| (c, Origin::Host))
            .chain(offered(CandidateKind::Public).map(|c| (c, Origin::Public)))
        {
            if !remotes.iter().any(|r| r.addr == c.addr) {
                remotes.push(Remote { addr: c.addr, origin, last_probe_ms: None, unanswered: 0 });
            }
        }
        Self {
            role,
            remotes,
            timing,
            started_ms: now_ms,
            next_probe_ms: now_ms,
            relay: None,
            relay_asked: false,
            chosen: None,
            chosen_at_ms: now_ms,
            public: false,
            rng: rand::rngs::StdRng::seed_from_u64(0),
            sent: VecDeque::new(),
            nat: NatKind::Unknown,
            seed: 0,
            birthday: None,
            hard_nat: None,
            relay_now: false,
            relay_only: false,
            peer_echoes: false,
            live_sockets: Vec::new(),
            validated: VecDeque::new(),
            chosen_heard_ms: now_ms,
        }
    }

    /// Our NAT's kind, and a seed for the nonces and the ports the birthday technique
    /// draws (from the OS in a host, fixed in tests).
    pub fn set_nat(&mut self, nat: NatKind, seed: u64) {
        self.nat = nat;
        self.seed = seed;
        self.rng = rand::rngs::StdRng::seed_from_u64(seed);
    }

    /// Relay only: media never goes straight to the other side, so a probe that comes
    /// straight is neither answered nor learnt from (an answer would tell whoever sent it
    /// that we are at this address).
    pub fn set_relay_only(&mut self, on: bool) {
        self.relay_only = on;
    }

    /// Whether the birthday technique has run (or runs) in this call.
    pub fn birthday_ran(&self) -> bool {
        self.hard_nat.is_some()
    }

    /// What the birthday technique spent, if it ran.
    pub fn hard_nat(&self) -> Option<HardNatReport> {
        self.hard_nat.clone()
    }

    /// The other side told us its NAT's kind. Between a cone and a symmetric NAT,
    /// punching needs the birthday technique: start our part if `allowed` (the host
    /// bounds how often it runs) and the other side's public address is a global unicast
    /// one, and (the caller) ask for the relay at once, so the call never waits for it.
    /// Neither the address nor the kind can be checked: a peer could name a third
    /// party's address, which is why the easy side's thousands of probes are bounded
    /// per call and per host, and never go to a private, loopback or multicast address.
    pub fn on_peer_nat(&mut self, peer: NatKind, allowed: bool, now_ms: u64) -> Vec<PathAction> {
        let mut out = Vec::new();
        let punched = self.chosen_rank().is_some_and(|r| r >= Rank::Punched);
        let Some(public) = self.remotes.iter().find(|r| r.origin == Origin::Public).map(|r| r.addr) else {
            return out;
        };
        let hard_pair =
            matches!((self.nat, peer), (NatKind::Cone, NatKind::Symmetric) | (NatKind::Symmetric, NatKind::Cone));
        if punched || self.birthday.is_some() || self.hard_nat.is_some() || !hard_pair || self.relay_only {
            return out;
        }
        self.relay_now = true;
        if !allowed || !is_global_unicast(public.ip()) {
            out.extend(self.tick(now_ms));
            return out;
        }
        match (self.nat, peer) {
            (NatKind::Cone, NatKind::Symmetric) => {
                let rng = rand::rngs::StdRng::seed_from_u64(self.seed ^ 0x6269_7274_6864_6179);
                self.birthday = Some(Birthday::Easy(Box::new(birthday::Easy::new(public, rng, now_ms))));
                self.hard_nat = Some(HardNatReport { role: "easy", ..HardNatReport::default() });
            }
            (NatKind::Symmetric, NatKind::Cone) => {
                self.birthday = Some(Birthday::Hard(birthday::Hard::new(public, now_ms)));
                self.hard_nat = Some(HardNatReport { role: "hard", ..HardNatReport::default() });
                out.push(PathAction::OpenSockets { n: birthday::HARD_SOCKETS, peer: public.ip() });
            }
            _ => return out,
        }
        out.extend(self.tick(now_ms));
        out
    }

    /// The sockets to keep when the hard side is done: those that heard from the other
    /// side, and the one the chosen path goes through.
    fn sockets_to_keep(&self) -> Vec<u16> {
        let mut keep = self.live_sockets.clone();
        if let Some((Route::Via { socket, .. }, _, _)) = self.chosen
            && !keep.contains(&socket)
        {
            keep.push(socket);
        }
        keep
    }

    /// `n` of the extra sockets asked for are open (the hard side).
    pub fn sockets_opened(&mut self, n: u16, now_ms: u64) -> Vec<PathAction> {
        if let Some(Birthday::Hard(h)) = self.birthday.as_mut() {
            h.opened(n, now_ms);
            if let Some(r) = self.hard_nat.as_mut() {
                r.sockets = n;
            }
        }
        self.tick(now_ms)
    }

    /// `addr` sent an authenticated probe: kept as a peer-reflexive candidate if nobody
    /// offered it and there is room (a learnt one that has not answered in a while gives
    /// way).
    fn learn(&mut self, addr: SocketAddr) {
        if self.remotes.iter().any(|r| r.addr == addr) {
            return;
        }
        if self.peer_reflexive().count() >= PEER_REFLEXIVE_MAX
            && let Some(i) = self
                .remotes
                .iter()
                .position(|r| r.origin == Origin::PeerReflexive && r.unanswered >= PEER_REFLEXIVE_UNANSWERED_MAX)
        {
            self.remotes.remove(i);
        }
        if self.peer_reflexive().count() < PEER_REFLEXIVE_MAX {
            self.remotes.push(Remote { addr, origin: Origin::PeerReflexive, last_probe_ms: None, unanswered: 0 });
        }
    }

    /// An authenticated packet came by `route`: an extra socket it came to is kept.
    fn note_live(&mut self, route: Route) {
        if let Route::Via { socket, .. } = route
            && !self.live_sockets.contains(&socket)
            && self.live_sockets.len() < LIVE_SOCKETS_MAX
        {
            self.live_sockets.push(socket);
        }
    }

    /// The birthday technique's probes due now, and its end.
    fn birthday_step(&mut self, now_ms: u64, out: &mut Vec<PathAction>) {
        let routes: Vec<Route> = match self.birthday.as_mut() {
            None => return,
            Some(Birthday::Easy(e)) => e.step(now_ms).into_iter().map(Route::To).collect(),
            Some(Birthday::Hard(h)) if h.done(now_ms) => {
                self.birthday = None;
                out.push(PathAction::CloseSockets { keep: self.sockets_to_keep() });
                return;
            }
            Some(Birthday::Hard(h)) => {
                h.step(now_ms).into_iter().map(|(socket, to)| Route::Via { socket, to }).collect()
            }
        };
        if let Some(r) = self.hard_nat.as_mut() {
            r.probes += routes.len();
        }
        for route in routes {
            out.push(self.probe_as(route, now_ms, true));
        }
    }

    /// A punched path answered: the birthday technique ends (the hard side keeps the
    /// socket it goes through).
    fn birthday_won(&mut self, route: Route, out: &mut Vec<PathAction>) {
        let Some(b) = self.birthday.take() else { return };
        if let Some(r) = self.hard_nat.as_mut() {
            r.success_after = Some(r.probes);
            if let (Birthday::Easy(e), Route::To(addr)) = (&b, route) {
                r.predicted = e.predicted(addr.port());
            }
        }
        if matches!(b, Birthday::Hard(_)) {
            out.push(PathAction::CloseSockets { keep: self.sockets_to_keep() });
        }
    }

    /// We have a public address (no NAT between us and the internet): any path that does
    /// not go through a relay is direct for us, whatever the other side's NAT did.
    pub fn set_public(&mut self, public: bool) {
        self.public = public;
    }

    /// Our relay leg, once we have one.
    pub fn relay(&self) -> Option<RelayLeg> {
        self.relay
    }

    /// The path chosen, once there is one.
    pub fn chosen(&self) -> Option<(Route, Path)> {
        self.chosen.map(|(r, p, _)| (r, p))
    }

    /// Addresses learnt from the other side's probes alone.
    pub fn peer_reflexive(&self) -> impl Iterator<Item = SocketAddr> + '_ {
        self.remotes.iter().filter(|r| r.origin == Origin::PeerReflexive).map(|r| r.addr)
    }

    /// The rank of the path to `addr`, an address of the other side.
    fn rank_to(&self, addr: SocketAddr) -> Option<Rank> {
        let r = self.remotes.iter().find(|r| r.addr == addr)?;
        Some(match r.origin {
            Origin::Host if is_private(addr.ip()) => Rank::Lan,
            Origin::Host => Rank::Direct,
            Origin::Public | Origin::PeerReflexive if self.public => Rank::Direct,
            Origin::Public | Origin::PeerReflexive => Rank::Punched,
        })
    }

    /// The rank of a path by `route` (`peer_tcp`: the other side reaches the relay over
    /// TCP); None for a relay leg not ours or an address of the other side we do not know.
    fn route_rank(&self, route: Route, peer_tcp: bool) -> Option<Rank> {
        Some(match route {
            Route::Relay(leg) if Some(leg) != self.relay => return None,
            Route::Relay(leg) if leg.tcp || peer_tcp => Rank::RelayedTcp,
            Route::Relay(_) => Rank::RelayedUdp,
            // Only the birthday technique's sockets receive by `Via`: what gets through is
            // punched (direct if we are public).
            Route::Via { .. } if self.public => Rank::Direct,
            Route::Via { .. } => Rank::Punched,
            Route::To(addr) => return self.rank_to(addr),
        })
    }

    fn chosen_rank(&self) -> Option<Rank> {
        self.chosen.map(|(_, _, rank)| rank)
    }

    fn probe(&mut self, route: Route, now_ms: u64) -> PathAction {
        self.probe_as(route, now_ms, false)
    }

    fn probe_as(&mut self, route: Route, now_ms: u64, spray: bool) -> PathAction {
        // Never 0: an echo of 0 means "the probe carried none".
        let nonce = rand::Rng::next_u64(&mut self.rng).max(1);
        if self.sent.len() == OUTSTANDING_MAX {
            self.sent.pop_front();
        }
        self.sent.push_back(Sent { nonce, route, at_ms: now_ms, spray });
        if let Route::To(addr) = route
            && let Some(r) = self.remotes.iter_mut().find(|r| r.addr == addr)
        {
            r.last_probe_ms = Some(now_ms);
            r.unanswered = r.unanswered.saturating_add(1);
        }
        PathAction::Probe { route, nonce }
    }

    /// The clock: probe rounds while searching, the caller's relay request once punching
    /// had its time, and rechecks of better candidates once a path is chosen.
    pub fn tick(&mut self, now_ms: u64) -> Vec<PathAction> {
        while self.sent.front().is_some_and(|s| now_ms.saturating_sub(s.at_ms) > ANSWER_WINDOW_MS) {
            self.sent.pop_front();
        }
        let mut out = Vec::new();
        if now_ms >= self.next_probe_ms {
            let floor = self.chosen_rank();
            self.next_probe_ms = now_ms
                + match floor {
                    None => self.timing.probe_interval_ms,
                    Some(_) if now_ms < self.chosen_at_ms + RECHECK_FAST_FOR_MS => self.timing.recheck_ms,
                    Some(_) => self.timing.recheck_slow_ms,
                };
            let better: Vec<SocketAddr> = self
                .remotes
                .iter()
                .map(|r| r.addr)
                .filter(|a| floor.is_none_or(|f| self.rank_to(*a).is_some_and(|r| r > f)))
                .collect();
            for addr in better {
                out.push(self.probe(Route::To(addr), now_ms));
            }
            if let (None, Some(leg)) = (floor, self.relay) {
                out.push(self.probe(Route::Relay(leg), now_ms));
            }
        }
        self.birthday_step(now_ms, &mut out);
        // With no address of the other side to try, there is nothing to punch; with the
        // birthday technique to run, the relay carries the call meanwhile.
        if self.role == Role::Caller
            && self.chosen.is_none()
            && !self.relay_asked
            && (((self.remotes.is_empty() || self.relay_now) && self.relay.is_none())
                || now_ms >= self.started_ms + self.timing.punch_ms)
        {
            self.relay_asked = true;
            out.push(PathAction::AllocateRelay);
        }
        out
    }

    /// Our relay leg is ready (the caller's grant, or the leg the caller sent us). A new
    /// leg while media goes through an old one means the old relay failed (the caller
    /// replaced it): the search starts again on the new one.
    pub fn relay_ready(&mut self, leg: RelayLeg, now_ms: u64) -> Vec<PathAction> {
        if matches!(self.chosen, Some((Route::Relay(old), _, _)) if old != leg) {
            self.chosen = None;
        }
        self.relay = Some(leg);
        if self.chosen.is_none() {
            self.next_probe_ms = now_ms;
        }
        self.tick(now_ms)
    }

    /// An authenticated probe carrying `nonce` (none from a peer that sends none) arrived
    /// by `route`: answer it there. (It says nothing yet about whether our packets reach
    /// the other side; its answer to ours will.) An address we did not know is a
    /// peer-reflexive candidate: the other side's NAT mapped it towards us alone. If the
    /// route would be better than what we use, probe back at once (a triggered check,
    /// RFC 8445 §7.3.1.4), so neither side waits for its next round.
    pub fn on_probe(&mut self, route: Route, nonce: Option<u64>, now_ms: u64) -> Vec<PathAction> {
        if self.relay_only && !matches!(route, Route::Relay(_)) {
            return Vec::new();
        }
        self.heard_on(route, now_ms);
        self.peer_echoes |= nonce.is_some();
        self.note_live(route);
        let mut out = vec![PathAction::Answer { route, echo: nonce.unwrap_or(0) }];
        if let Route::To(addr) = route {
            self.learn(addr);
        }
        let Some(rank) = self.route_rank(route, false) else { return out };
        // Checked back if better than our route; or as good, while ours is quiet (the
        // other side may have moved there: once it answers, the callee can follow).
        let quiet = now_ms.saturating_sub(self.chosen_heard_ms) >= LATCH_QUIET_MS;
        if self.chosen.is_some_and(|(r, _, f)| r == route || rank < f || (rank == f && !quiet)) {
            return out;
        }
        let recent = match route {
            Route::To(addr) => self
                .remotes
                .iter()
                .find(|r| r.addr == addr)
                .and_then(|r| r.last_probe_ms)
                .is_some_and(|t| now_ms.saturating_sub(t) < TRIGGERED_GAP_MS),
            Route::Relay(_) | Route::Via { .. } => false,
        };
        if !recent {
            out.push(self.probe(route, now_ms));
        }
        out
    }

    /// An authenticated answer arrived by `route`, echoing `echo` (none from a peer that
    /// echoes none); `peer_tcp`: the other side reaches the relay over TCP. It counts only
    /// as the answer to a probe of ours on that same route, sent within
    /// [`ANSWER_WINDOW_MS`] — or, without an echo, on a route the other side offered. The
    /// first picks the path; a better one replaces it later, never a worse one.
    pub fn on_answer(&mut self, route: Route, echo: Option<u64>, peer_tcp: bool, now_ms: u64) -> Vec<PathAction> {
        if self.relay_only && !matches!(route, Route::Relay(_)) {
            return Vec::new();
        }
        match echo {
            Some(nonce) => {
                let Some(i) = self.sent.iter().position(|s| {
                    s.nonce == nonce && s.route == route && now_ms.saturating_sub(s.at_ms) <= ANSWER_WINDOW_MS
                }) else {
                    return Vec::new();
                };
                let sent = self.sent.remove(i);
                // A sprayed port answered: the other side's mapping towards us.
                if let (Some(Sent { spray: true, .. }), Route::To(addr)) = (sent, route)
                    && !self.remotes.iter().any(|r| r.addr == addr)
                {
                    self.remotes.push(Remote {
                        addr,
                        origin: Origin::PeerReflexive,
                        last_probe_ms: Some(now_ms),
                        unanswered: 0,
                    });
                }
            }
            None if self.peer_echoes => return Vec::new(),
            None => {
                let offered = match route {
                    Route::Relay(leg) => Some(leg) == self.relay,
                    Route::To(addr) => self.remotes.iter().any(|r| r.addr == addr && r.origin != Origin::PeerReflexive),
                    Route::Via { .. } => false,
                };
                if !offered {
                    return Vec::new();
                }
            }
        }
        let Some(rank) = self.route_rank(route, peer_tcp) else { return Vec::new() };
        self.note_live(route);
        if let Route::To(addr) = route
            && let Some(r) = self.remotes.iter_mut().find(|r| r.addr == addr)
        {
            r.unanswered = 0;
        }
        if !self.validated.contains(&route) {
            if self.validated.len() == VALIDATED_MAX {
                self.validated.pop_front();
            }
            self.validated.push_back(route);
        }
        self.heard_on(route, now_ms);
        if self.chosen_rank().is_some_and(|f| rank <= f) {
            return Vec::new();
        }
        self.choose(route, rank, now_ms)
    }

    /// Media goes by `route` from now on.
    fn choose(&mut self, route: Route, rank: Rank, now_ms: u64) -> Vec<PathAction> {
        if self.chosen.is_none() {
            self.chosen_at_ms = now_ms;
        }
        let path = rank.path();
        self.chosen = Some((route, path, rank));
        self.chosen_heard_ms = now_ms;
        self.next_probe_ms = now_ms + self.timing.recheck_ms;
        let mut out = vec![PathAction::Chosen(route, path)];
        if rank >= Rank::Punched {
            self.birthday_won(route, &mut out);
        }
        out
    }

    /// Something authenticated came by `route`.
    fn heard_on(&mut self, route: Route, now_ms: u64) {
        if self.chosen.is_some_and(|(r, _, _)| r == route) {
            self.chosen_heard_ms = now_ms;
        }
    }

    /// When something authenticated last came by the chosen route: the path is alive only
    /// while this moves (packets by other routes do not count, or a side whose packets go
    /// to a dead mapping would never notice).
    pub fn chosen_heard_ms(&self) -> u64 {
        self.chosen_heard_ms
    }

    /// A voice packet came by `route`. The two sides choose on their own and may pick
    /// different routes (each the first to answer it), or the other side's NAT may have
    /// moved it to a new mapping. The caller's choice stands (as ICE's controlling agent's
    /// does): when the caller's voice keeps coming by a route we, the callee, have seen
    /// answer and that ranks as well as ours, while ours has been quiet for
    /// [`LATCH_QUIET_MS`], our media follows it there. (Both sides following each other
    /// would swap routes forever.) Only an answered route is followed, so a packet whose
    /// source was forged cannot steer our media anywhere; a caller whose route stays quiet
    /// searches again after the silence limit.
    pub fn on_voice(&mut self, route: Route, now_ms: u64) -> Vec<PathAction> {
        self.heard_on(route, now_ms);
        if self.role != Role::Callee {
            return Vec::new();
        }
        let Some((chosen, _, floor)) = self.chosen else { return Vec::new() };
        if chosen == route || !self.validated.contains(&route) {
            return Vec::new();
        }
        if now_ms.saturating_sub(self.chosen_heard_ms) < LATCH_QUIET_MS {
            return Vec::new();
        }
        let Some(rank) = self.route_rank(route, false) else { return Vec::new() };
        if rank < floor {
            return Vec::new();
        }
        self.choose(route, rank, now_ms)
    }

    /// The chosen path failed (the relay died, the NAT mapping went): search again,
    /// straight to the relay step when punching failed before. Nothing to do while no
    /// path is chosen (a new relay leg may have just restarted the search).
    pub fn restart(&mut self, now_ms: u64) -> Vec<PathAction> {
        let Some((route, _, _)) = self.chosen.take() else { return Vec::new() };
        self.next_probe_ms = now_ms;
        self.relay_asked = false;
        if matches!(route, Route::Relay(_)) {
            // Ask for a fresh relay at once (its node may be the one that died).
            self.relay = None;
            self.started_ms = now_ms.saturating_sub(self.timing.punch_ms);
        } else {
            // Probe the relay we hold as well; if nothing answers within the punch time,
            // the caller asks for a fresh one (ours may have expired unused).
            self.started_ms = now_ms;
        }
        self.tick(now_ms)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cand(kind: CandidateKind, a: &str) -> Candidate {
        Candidate { kind, addr: a.parse().unwrap() }
    }

    fn to(a: &str) -> Route {
        Route::To(a.parse().unwrap())
    }

    fn leg() -> RelayLeg {
        RelayLeg { addr: "198.18.0.1:33036".parse().unwrap(), session: 7, token: [1; 16], tcp: false }
    }

    /// The probes in `actions`: (route, nonce).
    fn probes(actions: &[PathAction]) -> Vec<(Route, u64)> {
        actions
            .iter()
            .filter_map(|a| if let PathAction::Probe { route, nonce } = a { Some((*route, *nonce)) } else { None })
            .collect()
    }

    fn nonce_to(actions: &[PathAction], route: Route) -> u64 {
        probes(actions).into_iter().find(|(r, _)| *r == route).map(|(_, n)| n).expect("a probe on that route")
    }

    #[test]
    fn probes_every_candidate_and_an_answer_picks_direct_or_punched() {
        let peer = [cand(CandidateKind::Host, "10.0.0.2:5000"), cand(CandidateKind::Public, "198.18.1.2:6000")];
        let mut p = PathFinder::new(Role::Callee, &peer, PathTiming::default(), 0);
        let round = p.tick(0);
        assert_eq!(probes(&round).len(), 2);
        assert!(p.tick(50).is_empty(), "one round per probe interval");
        let round = p.tick(100);
        assert_eq!(probes(&round).len(), 2);
        let public = to("198.18.1.2:6000");
        assert_eq!(
            p.on_answer(public, Some(nonce_to(&round, public)), false, 120),
            vec![PathAction::Chosen(public, Path::Punched)]
        );
        let q = PathFinder::new(
            Role::Callee,
            &[cand(CandidateKind::Host, "198.18.1.9:7000"), cand(CandidateKind::Public, "198.18.1.9:7000")],
            PathTiming::default(),
            0,
        );
        assert_eq!(q.remotes.len(), 1, "an address offered twice is one candidate");
        assert_eq!(
            q.rank_to("198.18.1.9:7000".parse().unwrap()),
            Some(Rank::Direct),
            "a host with no NAT is reached directly"
        );
        let mut me_public = PathFinder::new(Role::Caller, &peer, PathTiming::default(), 0);
        me_public.set_public(true);
        let round = me_public.tick(0);
        assert_eq!(
            me_public.on_answer(public, Some(nonce_to(&round, public)), false, 10),
            vec![PathAction::Chosen(public, Path::Direct)]
        );
    }

    #[test]
    fn an_answer_counts_once_on_the_route_its_probe_took_and_in_time() {
        let peer = [cand(CandidateKind::Public, "198.18.1.2:6000"), cand(CandidateKind::Public, "198.18.1.3:6000")];
        let (a, b) = (to("198.18.1.2:6000"), to("198.18.1.3:6000"));
        let mut p = PathFinder::new(Role::Callee, &peer, PathTiming::default(), 0);
        let round = p.tick(0);
        let na = nonce_to(&round, a);
        assert!(p.on_answer(b, Some(na), false, 10).is_empty(), "the nonce of a probe sent elsewhere");
        assert!(p.on_answer(a, Some(9_999), false, 10).is_empty(), "a nonce never sent");
        assert!(p.on_answer(to("203.0.113.9:1"), Some(na), false, 10).is_empty(), "an address never probed");
        assert!(p.on_answer(Route::Relay(leg()), Some(na), false, 10).is_empty(), "not our relay leg");
        assert!(p.on_answer(a, Some(na), false, ANSWER_WINDOW_MS + 1).is_empty(), "too late");
        let round = p.tick(ANSWER_WINDOW_MS + 1);
        let na = nonce_to(&round, a);
        assert_eq!(p.on_answer(a, Some(na), false, ANSWER_WINDOW_MS + 20).len(), 1);
        let mut q = PathFinder::new(Role::Callee, &peer, PathTiming::default(), 0);
        let round = q.tick(0);
        let nb = nonce_to(&round, b);
        q.chosen = None;
        assert_eq!(q.on_answer(b, Some(nb), false, 5).len(), 1);
        q.chosen = None;
        assert!(q.on_answer(b, Some(nb), false, 6).is_empty(), "an answer is used once");
        // A peer that echoes nothing is believed only on a route it offered.
        assert_eq!(q.on_answer(a, None, false, 7).len(), 1);
    }

    #[test]
    fn a_probe_from_an_unknown_address_is_answered_and_checked_back() {
        // We are public; the other side is behind a symmetric NAT, so its probe comes from
        // a mapping made for us alone.
        let peer = [cand(CandidateKind::Public, "198.18.3.2:40000")];
        let mut p = PathFinder::new(Role::Caller, &peer, PathTiming::default(), 0);
        p.set_public(true);
        p.tick(0);
        let m = to("198.18.3.2:51234");
        let out = p.on_probe(m, Some(77), 30);
        assert_eq!(out[0], PathAction::Answer { route: m, echo: 77 });
        let n = nonce_to(&out, m);
        assert_eq!(p.peer_reflexive().collect::<Vec<_>>(), vec!["198.18.3.2:51234".parse().unwrap()]);
        assert!(p.on_answer(m, None, false, 40).is_empty(), "a peer-reflexive route needs a fresh echo");
        assert_eq!(p.on_answer(m, Some(n), false, 40), vec![PathAction::Chosen(m, Path::Direct)]);
        // A flood of replayed or forged probes from many addresses learns only a few.
        let mut q = PathFinder::new(Role::Caller, &peer, PathTiming::default(), 0);
        for i in 0..100u16 {
            q.on_probe(Route::To(SocketAddr::from(([198, 18, 9, 9], 1000 + i))), Some(1), 10);
        }
        assert_eq!(q.peer_reflexive().count(), PEER_REFLEXIVE_MAX);
        assert_eq!(probes(&q.tick(200)).len(), 1 + PEER_REFLEXIVE_MAX);
        // Learnt addresses that never answer give way to new ones after a few checks.
        let learnt: Vec<SocketAddr> = q.peer_reflexive().collect();
        for i in 3..3 + PEER_REFLEXIVE_UNANSWERED_MAX as u64 {
            q.tick(i * 100);
        }
        let newcomer = Route::To(SocketAddr::from(([198, 18, 9, 10], 1)));
        q.on_probe(newcomer, Some(2), 2_000);
        assert!(q.peer_reflexive().any(|a| Route::To(a) == newcomer));
        assert_eq!(q.peer_reflexive().count(), PEER_REFLEXIVE_MAX);
        assert_eq!(q.peer_reflexive().filter(|a| learnt.contains(a)).count(), PEER_REFLEXIVE_MAX - 1);
        // A probe on a relay leg that is not ours is answered, never checked.
        assert_eq!(
            q.on_probe(Route::Relay(leg()), Some(3), 10),
            vec![PathAction::Answer { route: Route::Relay(leg()), echo: 3 }]
        );
    }

    #[test]
    fn relay_only_answers_and_learns_nothing_that_comes_straight() {
        let mut p = PathFinder::new(Role::Callee, &[], PathTiming::default(), 0);
        p.set_relay_only(true);
        let stranger = to("198.18.9.9:1");
        assert!(p.on_probe(stranger, Some(5), 10).is_empty(), "no answer: it would say where we are");
        assert_eq!(p.peer_reflexive().count(), 0);
        assert!(p.on_answer(stranger, None, false, 10).is_empty());
        let out = p.relay_ready(leg(), 20);
        let r = Route::Relay(leg());
        assert_eq!(p.on_probe(r, Some(6), 21)[0], PathAction::Answer { route: r, echo: 6 });
        assert_eq!(p.on_answer(r, Some(nonce_to(&out, r)), false, 22).len(), 1);
    }

    #[test]
    fn an_answer_without_a_nonce_counts_only_from_a_peer_that_never_sent_one() {
        let peer = [cand(CandidateKind::Public, "198.18.1.2:6000")];
        let r = to("198.18.1.2:6000");
        let mut old = PathFinder::new(Role::Callee, &peer, PathTiming::default(), 0);
        old.on_probe(r, None, 0);
        assert_eq!(old.on_answer(r, None, false, 1).len(), 1, "an older host echoes nothing");
        let mut new = PathFinder::new(Role::Callee, &peer, PathTiming::default(), 0);
        new.on_probe(r, Some(9), 0);
        assert!(new.on_answer(r, None, false, 1).is_empty(), "a peer that sends nonces echoes them");
    }

    #[test]
    fn nonces_are_drawn_from_the_seed() {
        let peer = [cand(CandidateKind::Public, "198.18.1.2:6000")];
        let nonces = |seed| {
            let mut p = PathFinder::new(Role::Callee, &peer, PathTiming::default(), 0);
            p.set_nat(NatKind::Cone, seed);
            (0..3).flat_map(|i| probes(&p.tick(i * 100))).map(|(_, n)| n).collect::<Vec<_>>()
        };
        assert_eq!(nonces(1), nonces(1));
        assert_ne!(nonces(1), nonces(2));
        assert!(nonces(1).windows(2).all(|w| w[1] != w[0].wrapping_add(1)), "not a counter");
    }

    #[test]
    fn the_callee_follows_the_callers_voice_to_another_answered_route_once_its_own_is_quiet() {
        // B's NAT moved it to a new mapping X2 mid-call (or each side picked another
        // birthday mapping): A, the callee, still sends to X1.
        let peer = [cand(CandidateKind::Public, "198.18.3.2:40000")];
        let (x1, x2) = (to("198.18.3.2:40000"), to("198.18.3.2:40001"));
        for role in [Role::Callee, Role::Caller] {
            let mut a = PathFinder::new(role, &peer, PathTiming::default(), 0);
            let round = a.tick(0);
            assert_eq!(a.on_answer(x1, Some(nonce_to(&round, x1)), false, 10).len(), 1);
            assert!(a.on_voice(x1, 100).is_empty());
            assert_eq!(a.chosen_heard_ms(), 100);
            // Voice by X2, which never answered a probe of ours: not followed, and not heard
            // on the chosen route either.
            assert!(a.on_voice(x2, 400).is_empty());
            assert_eq!(a.chosen_heard_ms(), 100, "only the chosen route counts");
            // B probes from X2 after its own silence: with ours quiet, we check X2 back, and
            // it answers.
            let out = a.on_probe(x2, Some(3), 410);
            a.on_answer(x2, Some(nonce_to(&out, x2)), false, 420);
            let followed = a.on_voice(x2, 430);
            match role {
                Role::Callee => assert_eq!(followed, vec![PathAction::Chosen(x2, Path::Punched)]),
                Role::Caller => assert!(followed.is_empty(), "the caller's choice stands"),
            }
        }
        // Not while our own route is heard.
        let mut a = PathFinder::new(Role::Callee, &peer, PathTiming::default(), 0);
        let round = a.tick(0);
        a.on_answer(x1, Some(nonce_to(&round, x1)), false, 10);
        assert!(probes(&a.on_probe(x2, Some(3), 20)).is_empty(), "ours is not quiet: no check of an equal route");
        let out = a.on_probe(x2, Some(4), 10 + LATCH_QUIET_MS);
        a.on_answer(x2, Some(nonce_to(&out, x2)), false, 15 + LATCH_QUIET_MS);
        a.on_voice(x1, 300);
        assert!(a.on_voice(x2, 300 + LATCH_QUIET_MS - 1).is_empty(), "ours is heard");
    }

    #[test]
    fn a_triggered_check_goes_out_unless_the_address_was_just_probed() {
        let peer = [cand(CandidateKind::Public, "198.18.1.2:6000")];
        let r = to("198.18.1.2:6000");
        let mut p = PathFinder::new(Role::Callee, &peer, PathTiming::default(), 0);
        p.tick(0);
        assert_eq!(probes(&p.on_probe(r, Some(1), 1)).len(), 0, "probed 1 ms ago");
        assert_eq!(probes(&p.on_probe(r, Some(2), 3)).len(), 1, "our first probe came too early");
        assert_eq!(probes(&p.on_probe(r, Some(3), 4)).len(), 0);
    }

    #[test]
    fn a_better_path_replaces_a_worse_one_and_never_the_reverse() {
        let peer = [cand(CandidateKind::Host, "10.0.0.2:5000"), cand(CandidateKind::Public, "198.18.1.2:6000")];
        let (lan, public) = (to("10.0.0.2:5000"), to("198.18.1.2:6000"));
        let t = PathTiming { punch_ms: 0, ..PathTiming::default() };
        let mut p = PathFinder::new(Role::Caller, &peer, t, 0);
        let round = p.tick(0);
        assert!(round.contains(&PathAction::AllocateRelay));
        let relay_round = p.relay_ready(leg(), 10);
        let nr = nonce_to(&relay_round, Route::Relay(leg()));
        let np = nonce_to(&round, public);
        let nl = nonce_to(&round, lan);
        assert_eq!(
            p.on_answer(Route::Relay(leg()), Some(nr), false, 20),
            vec![PathAction::Chosen(Route::Relay(leg()), Path::RelayedUdp)]
        );
        assert_eq!(p.on_answer(public, Some(np), false, 30), vec![PathAction::Chosen(public, Path::Punched)]);
        assert_eq!(
            p.on_answer(lan, Some(nl), false, 40),
            vec![PathAction::Chosen(lan, Path::Direct)],
            "the same LAN beats punched"
        );
        assert_eq!(p.chosen(), Some((lan, Path::Direct)));
        // Nothing is better than the LAN: no more probes, and worse answers change nothing.
        assert!(probes(&p.tick(5_000)).is_empty());
        let again = p.restart(6_000);
        let np = nonce_to(&again, public);
        assert_eq!(p.on_answer(public, Some(np), false, 6_010).len(), 1);
        assert!(
            p.on_answer(Route::Relay(leg()), None, false, 6_020).is_empty(),
            "a relay never replaces a punched path"
        );
    }

    #[test]
    fn a_relayed_call_keeps_checking_and_moves_to_a_direct_path_that_opens_later() {
        let peer = [cand(CandidateKind::Public, "198.18.1.2:6000")];
        let public = to("198.18.1.2:6000");
        let t = PathTiming { probe_interval_ms: 100, punch_ms: 1000, recheck_ms: 1000, recheck_slow_ms: 5000 };
        let mut p = PathFinder::new(Role::Caller, &peer, t, 0);
        for now in (0..=1000).step_by(100) {
            p.tick(now);
        }
        let out = p.relay_ready(leg(), 1000);
        let nr = nonce_to(&out, Route::Relay(leg()));
        assert_eq!(p.on_answer(Route::Relay(leg()), Some(nr), false, 1010).len(), 1);
        // Rechecks of the better candidate (never of the relay) each second for 30 s…
        let mut at = Vec::new();
        for now in (1010..=40_000).step_by(10) {
            let out = p.tick(now);
            assert!(!out.contains(&PathAction::AllocateRelay));
            for (route, _) in probes(&out) {
                assert_eq!(route, public);
                at.push(now);
            }
        }
        assert_eq!(at[..3], [2010, 3010, 4010]);
        assert!(at.iter().filter(|&&t| t > 31_010).all(|t| (t - 31_010) % 5000 == 0), "then every 5 s: {at:?}");
        assert_eq!(at.len(), 30 + 1, "{at:?}");
        // …until the peer's NAT lets one through.
        let out = p.tick(41_010);
        let n = nonce_to(&out, public);
        assert_eq!(p.on_answer(public, Some(n), false, 41_050), vec![PathAction::Chosen(public, Path::Punched)]);
        assert!(probes(&p.tick(60_000)).is_empty(), "nothing better left to check");
    }

    #[test]
    fn the_caller_asks_for_a_relay_after_the_punch_time() {
        let peer = [cand(CandidateKind::Public, "198.18.1.2:6000")];
        let t = PathTiming { probe_interval_ms: 100, punch_ms: 1000, ..PathTiming::default() };
        let mut caller = PathFinder::new(Role::Caller, &peer, t, 0);
        let mut callee = PathFinder::new(Role::Callee, &peer, t, 0);
        assert!(!caller.tick(900).contains(&PathAction::AllocateRelay));
        assert!(caller.tick(1000).contains(&PathAction::AllocateRelay));
        assert!(!caller.tick(1100).contains(&PathAction::AllocateRelay), "asked once");
        assert!(!callee.tick(5000).contains(&PathAction::AllocateRelay), "the callee waits for the caller's relay");
        let out = caller.relay_ready(leg(), 1200);
        let n = nonce_to(&out, Route::Relay(leg()));
        assert_eq!(
            caller.on_answer(Route::Relay(leg()), Some(n), false, 1210),
            vec![PathAction::Chosen(Route::Relay(leg()), Path::RelayedUdp)]
        );
    }

    #[test]
    fn a_failed_relay_is_replaced_at_once_and_a_silent_one_after_the_punch_time() {
        let peer = [cand(CandidateKind::Public, "198.18.1.2:6000")];
        let t = PathTiming { probe_interval_ms: 100, punch_ms: 1000, ..PathTiming::default() };
        let mut caller = PathFinder::new(Role::Caller, &peer, t, 0);
        caller.tick(1000);
        let out = caller.relay_ready(leg(), 1000);
        caller.on_answer(Route::Relay(leg()), Some(nonce_to(&out, Route::Relay(leg()))), false, 1001);
        let out = caller.restart(20_000);
        assert!(out.contains(&PathAction::AllocateRelay), "{out:?}");
        assert!(caller.chosen().is_none());
        // A punched path that fails: its relay leg is probed again, and replaced when it
        // stays silent for the punch time.
        let out = caller.relay_ready(leg(), 20_100);
        let public = to("198.18.1.2:6000");
        caller.on_answer(public, Some(nonce_to(&out, public)), false, 20_110);
        let out = caller.restart(30_000);
        assert!(probes(&out).iter().any(|(r, _)| *r == Route::Relay(leg())));
        assert!(!out.contains(&PathAction::AllocateRelay));
        assert!(caller.tick(31_000).contains(&PathAction::AllocateRelay));
    }

    #[test]
    fn no_address_to_try_means_a_relay_at_once_and_tcp_on_either_side_names_the_path() {
        let t = PathTiming { probe_interval_ms: 100, punch_ms: 3000, ..PathTiming::default() };
        let mut caller = PathFinder::new(Role::Caller, &[], t, 0);
        assert!(caller.tick(0).contains(&PathAction::AllocateRelay), "nothing to punch");
        let udp = leg();
        let out = caller.relay_ready(udp, 10);
        let r = Route::Relay(udp);
        assert_eq!(
            caller.on_answer(r, Some(nonce_to(&out, r)), true, 11),
            vec![PathAction::Chosen(r, Path::RelayedTcp)],
            "the callee's leg is TCP"
        );
        let tcp = RelayLeg { tcp: true, ..leg() };
        let mut callee = PathFinder::new(Role::Callee, &[], t, 0);
        assert!(!callee.tick(0).contains(&PathAction::AllocateRelay));
        let out = callee.relay_ready(tcp, 10);
        let r = Route::Relay(tcp);
        assert_eq!(
            callee.on_answer(r, Some(nonce_to(&out, r)), false, 11),
            vec![PathAction::Chosen(r, Path::RelayedTcp)],
            "our own leg is TCP"
        );
    }

    #[test]
    fn a_new_relay_leg_replaces_a_failed_one_on_both_sides() {
        let t = PathTiming { probe_interval_ms: 100, punch_ms: 0, ..PathTiming::default() };
        let old = leg();
        let new = RelayLeg { session: 8, token: [2; 16], ..leg() };
        let mut callee = PathFinder::new(Role::Callee, &[], t, 0);
        callee.relay_ready(old, 0);
        callee.on_answer(Route::Relay(old), None, false, 1);
        // The caller's new leg arrives before the callee noticed the silence itself…
        let out = callee.relay_ready(new, 5_000);
        let n = nonce_to(&out, Route::Relay(new));
        assert!(callee.chosen().is_none());
        // …so its own restart, a moment later, leaves the new leg alone.
        assert!(callee.restart(5_100).is_empty());
        assert_eq!(callee.relay(), Some(new));
        assert_eq!(
            callee.on_answer(Route::Relay(new), Some(n), false, 5_110),
            vec![PathAction::Chosen(Route::Relay(new), Path::RelayedUdp)]
        );
        // The other order: the callee restarts first and waits for the caller's new leg.
        let mut callee = PathFinder::new(Role::Callee, &[], t, 0);
        callee.relay_ready(old, 0);
        callee.on_answer(Route::Relay(old), None, false, 1);
        assert!(!callee.restart(5_000).contains(&PathAction::AllocateRelay), "only the caller opens relays");
        assert_eq!(callee.relay(), None, "the failed leg is forgotten");
        assert!(probes(&callee.relay_ready(new, 5_100)).iter().any(|(r, _)| *r == Route::Relay(new)));
    }

    /// One side of [`meet`]: its NAT as functions.
    struct Side<'a> {
        public: bool,
        cands: &'a [Candidate],
        /// A packet to `dst`: the source the other side sees, or None (lost).
        out: &'a dyn Fn(SocketAddr) -> Option<SocketAddr>,
        /// Whether a packet from `src` to `dst` gets in, given where this side has sent.
        inbound: &'a dyn Fn(SocketAddr, SocketAddr, &[SocketAddr]) -> bool,
    }

    /// Two searches through NATs given as functions, on virtual time: what each side
    /// chooses.
    fn meet(a_side: Side<'_>, b_side: Side<'_>) -> [Option<(Route, Path)>; 2] {
        let t = PathTiming { punch_ms: 60_000, ..PathTiming::default() };
        let mut a = PathFinder::new(Role::Caller, b_side.cands, t, 0);
        a.set_public(a_side.public);
        let mut b = PathFinder::new(Role::Callee, a_side.cands, t, 0);
        b.set_public(b_side.public);
        let (mut a_sent, mut b_sent) = (Vec::new(), Vec::new());
        for now in (0..3000).step_by(10) {
            let mut queue: Vec<(bool, PathAction)> = a.tick(now).into_iter().map(|x| (true, x)).collect();
            queue.extend(b.tick(now).into_iter().map(|x| (false, x)));
            let mut steps = 0;
            while let Some((from_a, action)) = queue.pop() {
                steps += 1;
                assert!(steps < 10_000);
                let (route, answer, n) = match action {
                    PathAction::Probe { route, nonce } => (route, false, nonce),
                    PathAction::Answer { route, echo } => (route, true, echo),
                    _ => continue,
                };
                let Route::To(dst) = route else { continue };
                let (tx, rx_side, sent, rx_sent) = if from_a {
                    (&a_side, &b_side, &mut a_sent, &b_sent)
                } else {
                    (&b_side, &a_side, &mut b_sent, &a_sent)
                };
                sent.push(dst);
                let Some(src) = (tx.out)(dst) else { continue };
                if !(rx_side.inbound)(src, dst, rx_sent) {
                    continue;
                }
                let rx = if from_a { &mut b } else { &mut a };
                let out = if answer {
                    rx.on_answer(Route::To(src), Some(n), false, now)
                } else {
                    rx.on_probe(Route::To(src), Some(n), now)
                };
                queue.extend(out.into_iter().map(|x| (!from_a, x)));
            }
        }
        [a.chosen(), b.chosen()]
    }

    #[test]
    fn a_public_host_and_one_behind_a_symmetric_nat_meet_directly() {
        let a_addr: SocketAddr = "198.18.1.2:5000".parse().unwrap();
        // B's NAT maps each destination to its own port; its super node saw 40000.
        let b_map = |dst: SocketAddr| SocketAddr::new("198.18.3.2".parse().unwrap(), 50_000 + dst.port() % 1000);
        let a_cands = [cand(CandidateKind::Host, "198.18.1.2:5000"), cand(CandidateKind::Public, "198.18.1.2:5000")];
        let b_cands = [cand(CandidateKind::Public, "198.18.3.2:40000")];
        let [a, b] = meet(
            Side { public: true, cands: &a_cands, out: &|_| Some(a_addr), inbound: &|_, _, _| true },
            Side {
                public: false,
                cands: &b_cands,
                out: &|dst| Some(b_map(dst)),
                // In only from a destination, to the mapping made for it.
                inbound: &|src, dst, sent| sent.contains(&src) && b_map(src) == dst,
            },
        );
        let m = b_map(a_addr);
        assert_eq!(a, Some((Route::To(m), Path::Direct)), "A learnt B's mapping from its probe");
        assert_eq!(b, Some((Route::To(a_addr), Path::Direct)));
    }

    #[test]
    fn two_hosts_behind_one_nat_meet_on_their_lan_addresses() {
        let (a_lan, b_lan): (SocketAddr, SocketAddr) =
            ("10.200.0.2:5000".parse().unwrap(), "10.200.1.2:5001".parse().unwrap());
        let nat = |p: u16| SocketAddr::new("198.18.2.2".parse().unwrap(), p);
        let a_cands =
            [cand(CandidateKind::Host, "10.200.0.2:5000"), Candidate { kind: CandidateKind::Public, addr: nat(5000) }];
        let b_cands =
            [cand(CandidateKind::Host, "10.200.1.2:5001"), Candidate { kind: CandidateKind::Public, addr: nat(5001) }];
        // No hairpinning: a packet to the NAT's own public address is lost; the LAN
        // addresses reach each other through the router.
        let lan = |me: SocketAddr| move |dst: SocketAddr| is_private(dst.ip()).then_some(me);
        let (a_out, b_out) = (lan(a_lan), lan(b_lan));
        let [a, b] = meet(
            Side { public: false, cands: &a_cands, out: &a_out, inbound: &|_, _, _| true },
            Side { public: false, cands: &b_cands, out: &b_out, inbound: &|_, _, _| true },
        );
        assert_eq!(a, Some((Route::To(b_lan), Path::Direct)));
        assert_eq!(b, Some((Route::To(a_lan), Path::Direct)));
    }

    /// A cone NAT's host (A, caller) and a symmetric NAT's host (B) on virtual time, B's
    /// NAT handing out ports at random or (`sequential`) in sequence from the one its super
    /// node saw: once they know each other's NAT kind, the birthday technique punches a
    /// path, and B keeps the sockets that heard from A. Returns what each side spent and
    /// when both were done.
    fn birthday_run(sequential: bool) -> (HardNatReport, HardNatReport, u64) {
        use rand::RngExt;
        use std::collections::HashMap;
        let (a_pub, b_ip): (SocketAddr, IpAddr) = ("198.18.2.2:5000".parse().unwrap(), "198.18.3.2".parse().unwrap());
        let b_seen = SocketAddr::new(b_ip, 40_000);
        let t = PathTiming { punch_ms: 60_000, ..PathTiming::default() };
        let mut a = PathFinder::new(Role::Caller, &[Candidate { kind: CandidateKind::Public, addr: b_seen }], t, 0);
        a.set_nat(NatKind::Cone, 7);
        let mut b = PathFinder::new(Role::Callee, &[Candidate { kind: CandidateKind::Public, addr: a_pub }], t, 0);
        b.set_nat(NatKind::Symmetric, 8);
        // B's NAT: a random port per (local socket, destination); in only from that destination.
        let mut nat_rng = rand::rngs::StdRng::seed_from_u64(99);
        let mut next_port = b_seen.port();
        let mut b_map: HashMap<(Option<u16>, SocketAddr), u16> = HashMap::new();
        let mut b_back: HashMap<u16, (Option<u16>, SocketAddr)> = HashMap::new();
        // A's NAT: one public address; in only from where A has sent.
        let mut a_sent: std::collections::HashSet<SocketAddr> = Default::default();
        let mut queue: VecDeque<(bool, PathAction)> = VecDeque::new();
        queue.extend(a.on_peer_nat(NatKind::Symmetric, true, 0).into_iter().map(|x| (true, x)));
        queue.extend(b.on_peer_nat(NatKind::Cone, true, 0).into_iter().map(|x| (false, x)));
        let mut closed = None;
        let mut now = 0;
        while now < 10_000 && !(a.chosen().is_some() && b.chosen().is_some() && closed.is_some()) {
            while let Some((from_a, action)) = queue.pop_front() {
                let (route, answer, n) = match action {
                    PathAction::Probe { route, nonce } => (route, false, nonce),
                    PathAction::Answer { route, echo } => (route, true, echo),
                    PathAction::OpenSockets { n: k, .. } => {
                        assert!(!from_a);
                        queue.extend(b.sockets_opened(k, now).into_iter().map(|x| (false, x)));
                        continue;
                    }
                    PathAction::CloseSockets { keep } => {
                        closed = Some(keep.clone());
                        continue;
                    }
                    _ => continue,
                };
                let out = if from_a {
                    let Route::To(dst) = route else { panic!("A has no extra sockets") };
                    a_sent.insert(dst);
                    // Into B's NAT: only to a mapping made for A's address.
                    let Some(&(local, mapped_for)) = b_back.get(&dst.port()) else { continue };
                    if dst.ip() != b_ip || mapped_for != a_pub {
                        continue;
                    }
                    let r = match local {
                        Some(socket) => Route::Via { socket, to: a_pub },
                        None => Route::To(a_pub),
                    };
                    if answer { b.on_answer(r, Some(n), false, now) } else { b.on_probe(r, Some(n), now) }
                } else {
                    let (local, dst) = match route {
                        Route::Via { socket, to } => (Some(socket), to),
                        Route::To(to) => (None, to),
                        Route::Relay(_) => continue,
                    };
                    let port = *b_map.entry((local, dst)).or_insert_with(|| {
                        loop {
                            next_port += 1;
                            let p = if sequential { next_port } else { nat_rng.random_range(1024..=u16::MAX) };
                            if let std::collections::hash_map::Entry::Vacant(e) = b_back.entry(p) {
                                e.insert((local, dst));
                                break p;
                            }
                        }
                    });
                    let src = SocketAddr::new(b_ip, port);
                    if dst != a_pub || !a_sent.contains(&src) {
                        continue;
                    }
                    if answer {
                        a.on_answer(Route::To(src), Some(n), false, now)
                    } else {
                        a.on_probe(Route::To(src), Some(n), now)
                    }
                };
                queue.extend(out.into_iter().map(|x| (!from_a, x)));
            }
            now += 10;
            queue.extend(a.tick(now).into_iter().map(|x| (true, x)));
            queue.extend(b.tick(now).into_iter().map(|x| (false, x)));
        }
        let (Some((Route::To(at), Path::Punched)), Some((b_route, Path::Punched))) = (a.chosen(), b.chosen()) else {
            panic!("not punched: {:?} {:?}", a.chosen(), b.chosen());
        };
        // Each side picks the first path that answered it. A's goes to one of B's mappings
        // made for A (an extra socket's, or port P's); B's from port P or an extra socket.
        let (a_socket, for_a) = b_back[&at.port()];
        assert_eq!(for_a, a_pub);
        let closed = closed.expect("B closed its sockets");
        match b_route {
            Route::Via { socket, to } => {
                assert_eq!(to, a_pub);
                assert!(closed.contains(&socket), "B keeps its path's socket: {closed:?}");
            }
            Route::To(to) => assert_eq!(to, a_pub),
            Route::Relay(_) => unreachable!(),
        }
        if let Some(s) = a_socket {
            assert!(closed.contains(&s), "B keeps the socket A's path goes to: {closed:?}");
        }
        assert!(closed.len() <= 16, "and at most a few others that heard from A: {closed:?}");
        let (ra, rb) = (a.hard_nat().unwrap(), b.hard_nat().unwrap());
        assert_eq!((ra.role, rb.role), ("easy", "hard"));
        assert!(ra.success_after.is_some() && rb.success_after.is_some(), "{ra:?} {rb:?}");
        assert!(ra.probes <= birthday::EASY_PROBES_MAX && rb.sockets == birthday::HARD_SOCKETS);
        assert!(now < 3_000, "found within {now} ms");
        // Nothing more is sprayed once punched.
        assert!(probes(&a.tick(now + 20)).len() <= 1 && probes(&b.tick(now + 20)).len() <= 1);
        (ra, rb, now)
    }

    #[test]
    fn a_cone_and_a_random_symmetric_nat_punch_with_the_birthday_technique() {
        let (easy, _, _) = birthday_run(false);
        assert!(easy.success_after.unwrap() <= birthday::EASY_PROBES_MAX);
    }

    #[test]
    fn a_symmetric_nat_that_hands_out_ports_in_sequence_is_punched_by_prediction() {
        let (easy, hard, now) = birthday_run(true);
        assert!(easy.predicted, "{easy:?}");
        assert_eq!(easy.success_after, Some(birthday::EASY_PROBES_PER_STEP), "within the first step");
        assert_eq!(hard.sockets, birthday::HARD_SOCKETS);
        assert!(now <= 100, "{now} ms");
    }

    #[test]
    fn the_birthday_technique_runs_only_between_a_cone_and_a_symmetric_nat_with_an_address_to_aim_at() {
        let peer = [cand(CandidateKind::Public, "198.18.3.2:40000")];
        for (ours, theirs, runs) in [
            (NatKind::Cone, NatKind::Symmetric, true),
            (NatKind::Symmetric, NatKind::Cone, true),
            (NatKind::Cone, NatKind::Cone, false),
            (NatKind::Symmetric, NatKind::Symmetric, false),
            (NatKind::None, NatKind::Symmetric, false),
            (NatKind::Unknown, NatKind::Symmetric, false),
        ] {
            let mut p = PathFinder::new(Role::Caller, &peer, PathTiming::default(), 0);
            p.set_nat(ours, 1);
            let out = p.on_peer_nat(theirs, true, 0);
            assert_eq!(p.hard_nat().is_some(), runs, "{ours:?} × {theirs:?}");
            assert_eq!(out.contains(&PathAction::AllocateRelay), runs, "the relay at once, in parallel");
        }
        let mut p = PathFinder::new(Role::Caller, &[], PathTiming::default(), 0);
        p.set_nat(NatKind::Cone, 1);
        p.on_peer_nat(NatKind::Symmetric, true, 0);
        assert!(p.hard_nat().is_none(), "no public address to aim at");
        // Not where the host's budget is spent, nor at an address that is not global: the
        // relay at once all the same.
        for (addr, allowed) in [("198.18.3.2:40000", false), ("10.0.0.1:40000", true), ("100.64.0.9:1", true)] {
            let mut p = PathFinder::new(Role::Caller, &[cand(CandidateKind::Public, addr)], PathTiming::default(), 0);
            p.set_nat(NatKind::Cone, 1);
            let out = p.on_peer_nat(NatKind::Symmetric, allowed, 0);
            assert!(p.hard_nat().is_none() && out.contains(&PathAction::AllocateRelay), "{addr} {allowed}");
        }
        // The hard side gives up after its time, closing every socket.
        let mut p = PathFinder::new(Role::Callee, &peer, PathTiming::default(), 0);
        p.set_nat(NatKind::Symmetric, 1);
        assert!(
            p.on_peer_nat(NatKind::Cone, true, 0)
                .contains(&PathAction::OpenSockets { n: birthday::HARD_SOCKETS, peer: "198.18.3.2".parse().unwrap() })
        );
        assert_eq!(probes(&p.sockets_opened(4, 10)).len(), 4);
        let mut closes = 0;
        for now in (20..=20_000).step_by(20) {
            closes += p.tick(now).iter().filter(|a| **a == PathAction::CloseSockets { keep: Vec::new() }).count();
        }
        assert_eq!(closes, 1);
        assert!(p.hard_nat().unwrap().success_after.is_none());
    }
}
