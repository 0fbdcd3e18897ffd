//! One call's media in memory: the two sides' [`CallMedia`] (path search, birthday
//! technique, sealing, the 20 ms clock, jitter buffer), the routers in front of them as
//! [`NatFn`]s, and a real relay [`SessionTable`] standing in for the caller's super node,
//! all on one virtual clock, with every delay drawn from one seeded generator.
//!
//! It models what the session does around the media, and no more: the callee starts its
//! media when it accepts, the caller a signalling delay later; each side tells the other
//! its NAT kind when its media starts; the caller's relay request is granted on the table
//! after a delay, and leg B's token reaches the callee sealed to its key
//! (`relay::handoff`), as the super node seals it. Signalling itself (invites, the call
//! state machine, the super nodes' links) is not here: `sim::World` is its place.
//!
//! Relay legs over TCP (a host whose UDP is blocked) are datagrams that skip the host's
//! router and reach the table as `Peer::Tcp`, as the relay's TCP port hands them over.

use super::nat::NatFn;
use crate::call::invite::{Candidate, CandidateKind, Codec, MediaKey};
use crate::call::path::{RelayLeg, is_private};
use crate::call::signal::{Path, Role};
use crate::host::media::{CallMedia, MediaReport, Outgoing, Setup, demux, search_plan};
use crate::nat::NatKind;
use crate::relay::packet::{SessionId, wipe_token};
use crate::relay::table::{Decision, Limits, Peer, SessionTable};
use rand::RngExt;
use rand::SeedableRng;
use rand::rngs::StdRng;
use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

/// Most events one call handles before it is declared stuck.
pub const EVENTS_MAX: usize = 1_000_000;
/// Port P, on every host.
const PORT_P: u16 = 40_000;
/// The first extra socket's local port (socket `i` is on `EXTRA_PORT_BASE + i`).
const EXTRA_PORT_BASE: u16 = 50_000;
/// One way over the LAN between two hosts behind one router.
const LAN_DELAY_MS: u64 = 1;
/// A link's one-way delay is drawn once in this range…
const LINK_DELAY_MS: std::ops::RangeInclusive<u64> = 5..=30;
/// …and each datagram adds up to this much.
const JITTER_MS_MAX: u64 = 2;

/// The super node every host logged in to (its public address is what it saw).
pub fn supernode() -> SocketAddr {
    SocketAddr::from(([198, 18, 0, 1], 33_033))
}

/// The relay's UDP port on that super node.
pub fn relay() -> SocketAddr {
    SocketAddr::from(([198, 18, 0, 1], 33_036))
}

/// One datagram's delay between `a` and `b`: over a LAN, or over the link between the
/// two addresses, whose base delay is drawn once and kept, plus jitter. Shared by the
/// worlds that carry media, so their wires behave alike.
pub(super) fn delay_ms(
    link_ms: &mut BTreeMap<(IpAddr, IpAddr), u64>,
    rng: &mut StdRng,
    lan: bool,
    a: IpAddr,
    b: IpAddr,
) -> u64 {
    let base = if lan {
        LAN_DELAY_MS
    } else {
        *link_ms.entry((a.min(b), a.max(b))).or_insert_with(|| rng.random_range(LINK_DELAY_MS))
    };
    base + rng.random_range(0..=JITTER_MS_MAX)
}

/// How the world's signalling behaves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timing {
    /// One way between the hosts through their super nodes (the Accept, the Nat signal,
    /// the relay leg): the caller's media starts this long after the callee's.
    pub signal_ms: u64,
    /// From the caller's relay request to its grant.
    pub grant_ms: u64,
}

impl Default for Timing {
    fn default() -> Self {
        Self { signal_ms: 30, grant_ms: 60 }
    }
}

/// One side of the call: where it sits.
pub struct HostSpec {
    /// Index of its router in the world's list.
    pub router: usize,
    /// Its private address (its public one when the router is `NoNat`).
    pub ip: IpAddr,
    /// Its NAT's kind as its login classified it.
    pub nat: NatKind,
    /// It offers its LAN address (a buddy, on the same router as the other side).
    pub offer_lan: bool,
}

/// A datagram on its way.
#[derive(Debug, Clone)]
struct Datagram {
    from: SocketAddr,
    to: SocketAddr,
    bytes: Vec<u8>,
    over: Over,
}

/// How a datagram travels.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Over {
    /// Between public addresses, through the routers.
    Internet,
    /// Between two hosts behind one router, to `to` as it is.
    Lan,
    /// On side `i`'s TCP connection to the relay, one way or the other.
    RelayTcp(usize),
}

#[derive(Debug)]
enum Event {
    Start(usize),
    Tick(usize),
    Arrive(Datagram),
    PeerNat { to: usize, kind: NatKind },
    Grant,
    LegB { session: u32, sealed: Vec<u8> },
}

/// One side's state around its media.
pub struct Side {
    /// Where it sits.
    pub spec: HostSpec,
    /// The address its super node saw (its public candidate).
    pub public: SocketAddr,
    /// Its media, once started.
    pub(in crate::host) media: Option<CallMedia>,
    /// A path was chosen (the call state machine's Connected).
    pub connected: bool,
    /// The paths it chose, in order, with when.
    pub chosen: Vec<(u64, Path)>,
    /// Extra sockets open now.
    pub sockets: BTreeSet<u16>,
    /// Most extra sockets it asked for.
    pub sockets_asked: u16,
    /// Extra sockets an authenticated datagram reached (before it closed them).
    pub sockets_heard: BTreeSet<u16>,
    /// What it kept when it closed the extra sockets, and the sockets that had heard then.
    pub sockets_kept: Option<(Vec<u16>, BTreeSet<u16>)>,
    /// When its media started.
    pub started_ms: Option<u64>,
    /// Every public address it sent a datagram to (through its router).
    pub sent_to: BTreeSet<SocketAddr>,
    peer_nat: Option<NatKind>,
    pending_leg: Option<RelayLeg>,
    offered: Vec<Candidate>,
}

impl Side {
    fn private(&self) -> SocketAddr {
        SocketAddr::new(self.spec.ip, PORT_P)
    }

    fn blocked(&self) -> bool {
        self.spec.nat == NatKind::UdpBlocked
    }

    /// What it offers, as `Session::candidates` builds them: nothing when its relay legs
    /// go over TCP; else its public address, its own address when it has no NAT, its LAN
    /// address when it offers it.
    fn candidates(&self) -> Vec<Candidate> {
        if self.blocked() {
            return Vec::new();
        }
        let mut v = vec![Candidate { kind: CandidateKind::Public, addr: self.public }];
        if self.spec.nat == NatKind::None {
            v.push(Candidate { kind: CandidateKind::Host, addr: self.public });
        }
        if self.spec.offer_lan && self.private() != self.public {
            v.push(Candidate { kind: CandidateKind::Host, addr: self.private() });
        }
        v
    }

    /// Its media report (empty before its media starts).
    pub fn report(&self) -> MediaReport {
        self.media.as_ref().map(|m| m.report()).unwrap_or_default()
    }
}

/// One call between side 0 (the caller) and side 1 (the callee).
pub struct MediaWorld {
    /// Virtual time, milliseconds.
    pub now_ms: u64,
    /// The caller and the callee.
    pub sides: [Side; 2],
    /// Datagrams dropped, by why: a router's filter, a NAT, a closed socket, the relay's
    /// rule (by its reason), and so on.
    pub drops: BTreeMap<&'static str, u64>,
    /// Relay sessions granted, in order.
    pub sessions: Vec<u32>,
    routers: Vec<Box<dyn NatFn>>,
    table: SessionTable,
    rng: StdRng,
    timing: Timing,
    events: BTreeMap<(u64, u64), Event>,
    seq: u64,
    link_ms: BTreeMap<(IpAddr, IpAddr), u64>,
    call_id: [u8; 16],
    key: MediaKey,
    callee_key: crate::crypto::keys::PrivateKey,
    handled: usize,
}

impl MediaWorld {
    /// A call between `caller` and `callee` behind `routers`, the callee accepting at
    /// `accept_ms`; every draw from `seed`.
    pub fn new(
        seed: u64,
        routers: Vec<Box<dyn NatFn>>,
        caller: HostSpec,
        callee: HostSpec,
        timing: Timing,
        accept_ms: u64,
    ) -> Self {
        let mut rng = StdRng::seed_from_u64(seed);
        let call_id: [u8; 16] = rng.random();
        let key = MediaKey(rng.random());
        let side = |spec: HostSpec| Side {
            spec,
            public: SocketAddr::from(([0, 0, 0, 0], 0)),
            media: None,
            connected: false,
            chosen: Vec::new(),
            sockets: BTreeSet::new(),
            sockets_asked: 0,
            sockets_heard: BTreeSet::new(),
            sockets_kept: None,
            started_ms: None,
            sent_to: BTreeSet::new(),
            peer_nat: None,
            pending_leg: None,
            offered: Vec::new(),
        };
        let mut w = Self {
            now_ms: 0,
            sides: [side(caller), side(callee)],
            drops: BTreeMap::new(),
            sessions: Vec::new(),
            routers,
            table: SessionTable::new(Limits::default()),
            rng,
            timing,
            events: BTreeMap::new(),
            seq: 0,
            link_ms: BTreeMap::new(),
            call_id,
            key,
            callee_key: crate::crypto::keys::tests::test_key(2),
            handled: 0,
        };
        // Login: each host's super node sees its mapping towards it (a host with UDP
        // blocked logged in over TCP, and its public address is never offered).
        for i in 0..2 {
            let (router, private) = (w.sides[i].spec.router, w.sides[i].private());
            let seen = w.routers[router].outbound(private, supernode(), Duration::ZERO, &mut w.rng);
            w.sides[i].public = seen.unwrap_or(SocketAddr::new(w.routers[router].public_ip(), PORT_P));
        }
        for i in 0..2 {
            w.sides[i].offered = w.sides[i].candidates();
        }
        w.at(accept_ms, Event::Start(1));
        w.at(accept_ms + timing.signal_ms, Event::Start(0));
        w
    }

    fn at(&mut self, at_ms: u64, e: Event) {
        self.seq += 1;
        self.events.insert((at_ms, self.seq), e);
    }

    fn drop_for(&mut self, why: &'static str) {
        *self.drops.entry(why).or_default() += 1;
    }

    /// Runs every event up to `until_ms`.
    pub fn run_until(&mut self, until_ms: u64) {
        while let Some(entry) = self.events.first_entry() {
            let (at, _) = *entry.key();
            if at > until_ms {
                break;
            }
            let e = entry.remove();
            self.handled += 1;
            assert!(self.handled <= EVENTS_MAX, "the call never settles");
            self.now_ms = at;
            self.handle(e);
        }
        self.now_ms = until_ms;
    }

    fn handle(&mut self, e: Event) {
        let now = self.now_ms;
        match e {
            Event::Start(i) => self.start(i),
            Event::Tick(i) => {
                self.at(now + 20, Event::Tick(i));
                let mut out = Vec::new();
                let side = &mut self.sides[i];
                let Some(m) = side.media.as_mut() else { return };
                let chosen = m.tick(side.connected, now, &mut out);
                self.note_chosen(i, chosen);
                self.send(i, out);
                self.service(i);
                if self.sides[i].media.as_mut().is_some_and(|m| m.take_relay_request()) {
                    self.at(now + self.timing.grant_ms, Event::Grant);
                }
            }
            Event::Arrive(d) => self.arrive(d),
            Event::PeerNat { to, kind } => {
                let mut out = Vec::new();
                match self.sides[to].media.as_mut() {
                    Some(m) => {
                        let chosen = m.on_peer_nat(kind, true, now, &mut out);
                        self.note_chosen(to, chosen);
                    }
                    None => self.sides[to].peer_nat = Some(kind),
                }
                self.send(to, out);
                self.service(to);
            }
            Event::Grant => {
                let Ok(grant) = self.table.allocate(now) else {
                    self.drop_for("relay_full");
                    return;
                };
                self.sessions.push(grant.session.0);
                let leg = RelayLeg {
                    addr: relay(),
                    session: grant.session.0,
                    token: *grant.token_a.as_bytes(),
                    tcp: self.sides[0].blocked(),
                };
                self.leg_ready(0, leg);
                let sealed =
                    crate::relay::handoff::seal(self.callee_key.public(), grant.session.0, grant.token_b.as_bytes());
                self.at(now + self.timing.signal_ms, Event::LegB { session: grant.session.0, sealed });
            }
            Event::LegB { session, sealed } => {
                let token =
                    crate::relay::handoff::open(&self.callee_key, session, &sealed).expect("sealed to the callee");
                let leg = RelayLeg { addr: relay(), session, token, tcp: self.sides[1].blocked() };
                self.leg_ready(1, leg);
            }
        }
    }

    /// Side `i` accepts (the callee) or hears the accept (the caller): its media starts.
    fn start(&mut self, i: usize) {
        let now = self.now_ms;
        let peer_offered = self.sides[1 - i].offered.clone();
        let side = &mut self.sides[i];
        let (peer, timing) = search_plan(side.spec.nat, side.blocked(), false, false, &peer_offered);
        let setup = Setup {
            call_id: &self.call_id,
            key: &self.key,
            role: if i == 0 { Role::Caller } else { Role::Callee },
            codec: Codec::Opus,
            peer: &peer,
            timing,
            public: side.spec.nat == NatKind::None,
            nat: side.spec.nat,
            seed: self.rng.random(),
            relay_only: false,
        };
        let mut m = CallMedia::new(setup, Vec::new(), now).expect("an Opus codec");
        side.started_ms = Some(now);
        let mut out = Vec::new();
        let mut chosen = side.peer_nat.take().and_then(|kind| m.on_peer_nat(kind, true, now, &mut out));
        if let Some(leg) = side.pending_leg.take() {
            chosen = chosen.or(m.relay_ready(leg, now, &mut out));
        }
        side.media = Some(m);
        let kind = side.spec.nat;
        self.note_chosen(i, chosen);
        self.at(now + self.timing.signal_ms, Event::PeerNat { to: 1 - i, kind });
        self.at(now, Event::Tick(i));
        self.send(i, out);
        self.service(i);
    }

    fn leg_ready(&mut self, i: usize, leg: RelayLeg) {
        let now = self.now_ms;
        let mut out = Vec::new();
        match self.sides[i].media.as_mut() {
            Some(m) => {
                let chosen = m.relay_ready(leg, now, &mut out);
                self.note_chosen(i, chosen);
            }
            None => self.sides[i].pending_leg = Some(leg),
        }
        self.send(i, out);
    }

    fn note_chosen(&mut self, i: usize, chosen: Option<Path>) {
        if let Some(p) = chosen {
            let side = &mut self.sides[i];
            side.connected = true;
            side.chosen.push((self.now_ms, p));
        }
    }

    /// Opens and closes the extra sockets side `i`'s search asks for, as the session's
    /// `service_probe_sockets` does.
    fn service(&mut self, i: usize) {
        let now = self.now_ms;
        let side = &mut self.sides[i];
        let Some(m) = side.media.as_mut() else { return };
        let mut out = Vec::new();
        if let Some(keep) = m.take_socket_close() {
            side.sockets.retain(|s| keep.contains(s));
            side.sockets_kept = Some((keep, side.sockets_heard.clone()));
        }
        if let Some((n, _)) = m.take_socket_request() {
            let n = n.min(u16::try_from(crate::host::probe_sockets::OPEN_MAX).unwrap_or(u16::MAX));
            side.sockets_asked = side.sockets_asked.max(n);
            side.sockets = (0..n).collect();
            let chosen = m.sockets_opened(n, now, &mut out);
            self.note_chosen(i, chosen);
        }
        self.send(i, out);
    }

    /// Puts what side `i` sends on its way, through its router.
    fn send(&mut self, i: usize, out: Vec<Outgoing>) {
        for o in out {
            let side = &self.sides[i];
            if o.tcp.is_some() {
                let from = SocketAddr::new(self.routers[side.spec.router].public_ip(), PORT_P);
                self.travel(Datagram { from, to: o.to, bytes: o.bytes, over: Over::RelayTcp(i) });
                continue;
            }
            let src = match o.local {
                None => side.private(),
                Some((_, s)) if side.sockets.contains(&s) => SocketAddr::new(side.spec.ip, EXTRA_PORT_BASE + s),
                Some(_) => {
                    self.drop_for("socket_closed");
                    continue;
                }
            };
            if is_private(o.to.ip()) {
                let router = side.spec.router;
                if self.sides.iter().any(|s| s.spec.router == router && s.spec.ip == o.to.ip()) {
                    self.travel(Datagram { from: src, to: o.to, bytes: o.bytes, over: Over::Lan });
                } else {
                    self.drop_for("unroutable");
                }
                continue;
            }
            let nat = &mut self.routers[side.spec.router];
            if o.to.ip() == nat.public_ip() && side.spec.nat != NatKind::None {
                self.drop_for("no_hairpin");
                continue;
            }
            match nat.outbound(src, o.to, Duration::from_millis(self.now_ms), &mut self.rng) {
                Some(from) => {
                    self.sides[i].sent_to.insert(o.to);
                    self.travel(Datagram { from, to: o.to, bytes: o.bytes, over: Over::Internet });
                }
                None => self.drop_for("nat_dropped"),
            }
        }
    }

    /// Schedules a datagram's arrival after its link's delay.
    fn travel(&mut self, d: Datagram) {
        let lan = matches!(d.over, Over::Lan);
        let at = self.now_ms + delay_ms(&mut self.link_ms, &mut self.rng, lan, d.from.ip(), d.to.ip());
        self.at(at, Event::Arrive(d));
    }

    fn arrive(&mut self, d: Datagram) {
        if d.to == relay() {
            return self.relay(d);
        }
        let (i, local) = match d.over {
            Over::RelayTcp(i) => (i, d.to),
            Over::Lan => match self.sides.iter().position(|s| s.spec.ip == d.to.ip()) {
                Some(i) => (i, d.to),
                None => return self.drop_for("unroutable"),
            },
            Over::Internet => {
                let Some(r) = self.routers.iter().position(|n| n.public_ip() == d.to.ip()) else {
                    return self.drop_for("unroutable");
                };
                let Some(local) = self.routers[r].inbound(d.from, d.to, Duration::from_millis(self.now_ms)) else {
                    return self.drop_for("filtered");
                };
                match self.sides.iter().position(|s| s.spec.router == r && s.spec.ip == local.ip()) {
                    Some(i) => (i, local),
                    None => return self.drop_for("unroutable"),
                }
            }
        };
        self.deliver(i, d.from, local.port(), &d.bytes, matches!(d.over, Over::RelayTcp(_)));
    }

    /// A datagram reaches side `i`'s socket on `port`, as the session's
    /// `on_media_datagram` and `on_probe_datagram` take it.
    fn deliver(&mut self, i: usize, from: SocketAddr, port: u16, bytes: &[u8], tcp: bool) {
        let now = self.now_ms;
        let call_id = self.call_id;
        let side = &mut self.sides[i];
        let extra = port.checked_sub(EXTRA_PORT_BASE);
        if !tcp && port != PORT_P && !extra.is_some_and(|s| side.sockets.contains(&s)) {
            return self.drop_for("socket_closed");
        }
        let Some(m) = side.media.as_mut() else { return self.drop_for("media_not_started") };
        let Some((tag, packet, session)) = demux(bytes) else { return self.drop_for("not_media") };
        if tag != crate::call::media::call_tag(&call_id) {
            return self.drop_for("other_call");
        }
        let via = match session {
            None => None,
            // A relayed packet counts only through our own leg, and only on port P.
            Some(s) => match m.relay_leg() {
                Some(leg) if leg.session == s && leg.addr == from && extra.is_none() => Some(leg),
                _ => return self.drop_for("not_our_leg"),
            },
        };
        let local = if tcp { None } else { extra };
        let mut out = Vec::new();
        let (heard, chosen) = m.on_datagram(from, packet, via, local, now, &mut out);
        if heard && let Some(s) = local {
            side.sockets_heard.insert(s);
        }
        self.note_chosen(i, chosen);
        self.send(i, out);
        self.service(i);
    }

    /// The relay: the session table's rule, the token wiped, on to the other leg.
    fn relay(&mut self, mut d: Datagram) {
        let from = match d.over {
            Over::RelayTcp(i) => Peer::Tcp { conn: i as u64, addr: d.from },
            _ => Peer::Udp(d.from),
        };
        match self.table.decide_from(&d.bytes, from, self.now_ms) {
            // `decide_from` never holds.
            Decision::Forward { to } | Decision::Hold { to, .. } => {
                wipe_token(&mut d.bytes);
                let over = match to {
                    Peer::Tcp { conn, .. } => Over::RelayTcp(conn as usize),
                    Peer::Udp(_) => Over::Internet,
                };
                self.travel(Datagram { from: relay(), to: to.addr(), bytes: d.bytes, over });
            }
            Decision::Drop(why) => self.drop_for(why.label()),
        }
    }

    /// Datagrams the relay forwarded so far, both ways, over every session granted.
    pub fn relayed(&self) -> u64 {
        let forwarded = |id: &u32| self.table.accounting(SessionId(*id)).map(|a| a.packets_a_to_b + a.packets_b_to_a);
        self.sessions.iter().filter_map(forwarded).sum()
    }
}
