//! Whole calls in memory: hosts whose calls are [`CallsCore`]s, behind routers that are
//! [`NatFn`]s, with a tiny fake of the super nodes' forwarding (call notices carried
//! from host to host, relay sessions granted on a real [`SessionTable`] with leg B sealed
//! to the callee as `relay::handoff` does) and media over an in-memory wire, all on one
//! virtual clock with every draw from one seeded generator.
//!
//! Each host is driven as the contract says: one input, then every output drained, then
//! a wake-up at `poll_timeout`. The world records, for every `handle_timeout` step, how
//! many media ticks of each call were due and how many voice frames of that call the
//! step sent, and a trace of what the seed decides (times, kinds, addresses, lengths of
//! media; never the bytes, and not the lengths of call messages, which carry the relay's
//! random session ids).

use super::media::delay_ms;
use super::media::relay;
use super::nat::NatFn;
use crate::buddy::Relation;
use crate::call::media::{Kind, call_tag, peek};
use crate::call::path::is_private;
use crate::crypto::credential::{Claims, Credential, CredentialKind, TrustedKeys};
use crate::crypto::keys::PrivateKey;
use crate::host::buddies::Event;
use crate::host::core::Now;
use crate::host::core::calls::{CallsConfig, CallsCore, LinkInfo, Surroundings};
use crate::host::core::io::{ConnId, Dest, Effect, EffectResult, TcpEvent};
use crate::host::core::pending::{Answer, OpResult, Request};
use crate::host::media::demux;
use crate::index::Status;
use crate::nat::NatKind;
use crate::relay::packet::wipe_token;
use crate::relay::table::{Decision, Limits, Peer, SessionTable};
use crate::wire::MessageKind;
use crate::wire::message::{CallStats, ForwardAck, RelayGrant, RelayRelease};
use rand::RngExt;
use rand::SeedableRng;
use rand::rngs::StdRng;
use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

/// The wall clock when a world begins (Unix seconds): credentials are issued then.
pub const EPOCH_UNIX_SECS: u64 = super::EPOCH_UNIX_SECS;
/// Most events one world handles before it is declared stuck.
pub const EVENTS_MAX: usize = 2_000_000;
/// Port P, on every host.
pub const PORT_P: u16 = 40_000;
/// The first extra socket's local port.
const EXTRA_PORT_BASE: u16 = 50_000;
/// Connecting to the relay over TCP takes this long.
const TCP_CONNECT_MS: u64 = 1;
/// Most trace rows kept.
const TRACE_MAX: usize = 2_000_000;

/// How the fake super nodes treat relay requests.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RelayMode {
    /// Granted this long after the request.
    Grant(u64),
    /// Never answered: the request stays pending.
    Never,
}

/// How the world's signalling behaves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Signalling {
    /// One way from a host through the super nodes to another host.
    pub notice_ms: u64,
    /// Relay requests.
    pub relay: RelayMode,
}

impl Default for Signalling {
    fn default() -> Self {
        Self { notice_ms: 30, relay: RelayMode::Grant(60) }
    }
}

/// What a host's calls learn from the rest of the host in the world.
#[derive(Debug, Clone, Default)]
pub struct Env {
    /// Buddy relations.
    pub relations: BTreeMap<String, Relation>,
    /// Our status.
    pub status: Option<Status>,
    /// Interface addresses.
    pub interfaces: Vec<IpAddr>,
}

impl Surroundings for Env {
    fn relation(&self, user: &str) -> Option<Relation> {
        self.relations.get(&user.to_ascii_lowercase()).copied()
    }
    fn status(&self) -> Status {
        self.status.unwrap_or(Status::Online)
    }
    fn interface_addresses(&self) -> Vec<IpAddr> {
        self.interfaces.clone()
    }
}

/// Where a host sits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Seat {
    /// Its router (index in the world's list).
    pub router: usize,
    /// Its private address (its public one behind no NAT).
    pub ip: IpAddr,
    /// Its NAT's kind, as login classified it.
    pub nat: NatKind,
}

/// One host of the world.
pub struct CallHost {
    /// Its user.
    pub user: String,
    /// Its calls.
    pub core: CallsCore,
    /// Its credential.
    pub credential: Credential,
    /// Its router (index in the world's list).
    pub router: usize,
    /// Its private address.
    pub ip: IpAddr,
    /// Its NAT's kind, as login found it.
    pub nat: NatKind,
    /// The address its super node saw.
    pub public: SocketAddr,
    /// Its super node's name.
    pub supernode: String,
    /// What the calls ask of the rest of the host.
    pub env: Env,
    /// Events, with when.
    pub events: Vec<(u64, Event)>,
    /// Open extra sockets: local port → (call, index).
    sockets: BTreeMap<u16, ([u8; 16], u16)>,
    /// Open relay connections.
    conns: BTreeSet<ConnId>,
    /// When it is due to wake (its `poll_timeout`, in world ms).
    wake_ms: Option<u64>,
}

impl CallHost {
    /// Whether a call event with this state label was seen for `id`.
    pub fn saw(&self, id: &[u8; 16], state: &str) -> bool {
        let hex = crate::host::calls::call_id_hex(id);
        self.events.iter().any(|(_, e)| match e {
            Event::Call { call_id, state: s, .. } => *call_id == hex && call_state_label(s) == state,
            _ => false,
        })
    }

    /// The id of the first call that rang here.
    pub fn ringing(&self) -> Option<[u8; 16]> {
        self.events.iter().find_map(|(_, e)| match e {
            Event::Call { call_id, state, .. } if call_state_label(state) == "ringing" => {
                crate::host::calls::call_id_from_hex(call_id)
            }
            _ => None,
        })
    }
}

/// A call state as its label: `ringing`, `connected:<path>`, `ended:<reason>`.
pub fn call_state_label(s: &crate::host::calls::CallState) -> String {
    use crate::host::calls::CallState;
    match s {
        CallState::Inviting => "inviting".into(),
        CallState::Ringing => "ringing".into(),
        CallState::Connecting => "connecting".into(),
        CallState::Connected { path } => format!("connected:{path}"),
        CallState::Ended { reason } => format!("ended:{reason}"),
    }
}

/// One `handle_timeout` step of one host: per call, the media ticks due and the voice
/// frames the step sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TickStep {
    /// When.
    pub at_ms: u64,
    /// Which host.
    pub host: usize,
    /// The call.
    pub call: [u8; 16],
    /// Ticks due at the step.
    pub due: u64,
    /// Voice frames of that call in the step's transmits.
    pub voice: u64,
}

#[derive(Debug, Clone)]
struct Datagram {
    from: SocketAddr,
    to: SocketAddr,
    bytes: Vec<u8>,
    over: Over,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Over {
    Internet,
    Lan,
    /// On host `h`'s TCP connection `conn` to the relay (either way).
    RelayTcp(usize, ConnId),
}

enum Ev {
    Wake(usize),
    Arrive(Datagram),
    Notice { to: usize, body: Vec<u8> },
    Result { host: usize, tag: u64, result: OpResult },
    Grant { host: usize, tag: u64, callee: Vec<u8> },
    Effect { host: usize, result: EffectResult },
    Tcp { host: usize, conn: ConnId, event: TcpEvent },
}

/// The world.
pub struct CallsWorld {
    /// Virtual time, ms.
    pub now_ms: u64,
    /// The hosts.
    pub hosts: Vec<CallHost>,
    /// Datagrams dropped, by why.
    pub drops: BTreeMap<String, u64>,
    /// Every `handle_timeout` step with a media tick due.
    pub tick_steps: Vec<TickStep>,
    /// Voice frames sent outside a `handle_timeout` step (there must be none).
    pub voice_outside_ticks: u64,
    /// What the seed decided, in order.
    pub trace: Vec<String>,
    /// Call stats the hosts reported, by host.
    pub call_stats: Vec<(usize, CallStats)>,
    /// Relay sessions granted, and released.
    pub granted: Vec<u32>,
    /// Relay sessions released.
    pub released: Vec<u32>,
    /// Relay requests made (answered or not).
    pub relay_requests: u64,
    /// Call notices carried.
    pub notices: u64,
    /// How signalling behaves (may be changed mid-run).
    pub signalling: Signalling,
    /// Relay requests fail at once as if no link were up (may be changed mid-run).
    pub fail_relay_requests_link_down: bool,
    /// Call notices fail at once as if the link had ended under them (may be changed
    /// mid-run).
    pub fail_forwards_link_down: bool,
    /// Call notices to this host are lost (its super node lost them; may be changed mid-run).
    pub lose_notices_to: Option<usize>,
    /// How long the shell takes to say that extra sockets opened (they are open at once).
    pub probe_open_ms: u64,
    /// Every call notice delivered, to which host.
    delivered: Vec<(usize, Vec<u8>)>,
    routers: Vec<Box<dyn NatFn>>,
    table: SessionTable,
    rng: StdRng,
    base: Instant,
    events: BTreeMap<(u64, u64), Ev>,
    seq: u64,
    link_ms: BTreeMap<(IpAddr, IpAddr), u64>,
    handled: usize,
}

/// The super node every host's link goes to (its public mapping is what it saw).
pub fn supernode() -> SocketAddr {
    super::media::supernode()
}

fn trusted() -> TrustedKeys {
    super::supernode::trusted()
}

impl CallsWorld {
    /// An empty world with these routers, every draw from `seed`.
    pub fn new(seed: u64, routers: Vec<Box<dyn NatFn>>, signalling: Signalling) -> Self {
        Self {
            now_ms: 0,
            hosts: Vec::new(),
            drops: BTreeMap::new(),
            tick_steps: Vec::new(),
            voice_outside_ticks: 0,
            trace: Vec::new(),
            call_stats: Vec::new(),
            granted: Vec::new(),
            released: Vec::new(),
            relay_requests: 0,
            notices: 0,
            signalling,
            fail_relay_requests_link_down: false,
            fail_forwards_link_down: false,
            lose_notices_to: None,
            probe_open_ms: 0,
            delivered: Vec::new(),
            routers,
            table: SessionTable::new(Limits::default()),
            rng: StdRng::seed_from_u64(seed),
            base: Instant::now(),
            events: BTreeMap::new(),
            seq: 0,
            link_ms: BTreeMap::new(),
            handled: 0,
        }
    }

    /// How many extra sockets host `h` holds open.
    pub fn probe_sockets_open(&self, h: usize) -> usize {
        self.hosts[h].sockets.len()
    }

    /// The time as the cores take it.
    pub fn now(&self) -> Now {
        Now { mono: self.base + Duration::from_millis(self.now_ms), unix_ms: EPOCH_UNIX_SECS * 1000 + self.now_ms }
    }

    /// Adds `user` with `key` where `seat` says, linked to super node `sn`. Returns its
    /// index.
    pub fn add_host(&mut self, user: &str, key: PrivateKey, seat: Seat, sn: &str, cfg: CallsConfig) -> usize {
        let Seat { router, ip, nat } = seat;
        let credential = Credential::issue(
            Claims {
                kind: CredentialKind::Host,
                subject: user.into(),
                public_key: key.public().clone(),
                issued_at: EPOCH_UNIX_SECS,
                expires_at: EPOCH_UNIX_SECS + 86_400,
                serial: self.hosts.len() as u64 + 1,
            },
            &crate::crypto::keys::tests::test_key(0),
        );
        let private = SocketAddr::new(ip, PORT_P);
        let seen =
            self.routers[router].outbound(private, supernode(), Duration::from_millis(self.now_ms), &mut self.rng);
        let public = seen.unwrap_or(SocketAddr::new(self.routers[router].public_ip(), PORT_P));
        let rng = StdRng::seed_from_u64(self.rng.random());
        let mut core = CallsCore::new(credential.clone(), key, trusted(), cfg, self.base, rng);
        let info = LinkInfo {
            supernode: sn.into(),
            public_addr: public,
            nat,
            local_port: PORT_P,
            udp: nat != NatKind::UdpBlocked,
            v6: false,
        };
        core.on_link_up(self.now(), info);
        self.hosts.push(CallHost {
            user: user.into(),
            core,
            credential,
            router,
            ip,
            nat,
            public,
            supernode: sn.into(),
            env: Env::default(),
            events: Vec::new(),
            sockets: BTreeMap::new(),
            conns: BTreeSet::new(),
            wake_ms: None,
        });
        self.hosts.len() - 1
    }

    /// Makes `a` and `b` authorized buddies of each other.
    pub fn befriend(&mut self, a: usize, b: usize) {
        let (ua, ub) = (self.hosts[a].user.to_ascii_lowercase(), self.hosts[b].user.to_ascii_lowercase());
        self.hosts[a].env.relations.insert(ub, Relation::Authorized);
        self.hosts[b].env.relations.insert(ua, Relation::Authorized);
    }

    /// Host `from` calls host `to`, now.
    pub fn call(&mut self, from: usize, to: usize) -> [u8; 16] {
        let now = self.now();
        let (callee, sn) = (self.hosts[to].credential.clone(), self.hosts[to].supernode.clone());
        let h = &mut self.hosts[from];
        let id = h.core.call(now, &callee, sn, &h.env).expect("linked");
        self.drain(from, false);
        id
    }

    /// Host `h` accepts or declines call `id`, now.
    pub fn answer(&mut self, h: usize, id: [u8; 16], accept: bool) {
        let now = self.now();
        let host = &mut self.hosts[h];
        host.core.answer(now, id, accept, &host.env);
        self.drain(h, false);
    }

    /// Host `h` ends call `id`, now.
    pub fn end(&mut self, h: usize, id: [u8; 16]) {
        let now = self.now();
        self.hosts[h].core.end(now, id);
        self.drain(h, false);
    }

    /// Host `h` moved to super node `sn` (its link is up there now).
    pub fn move_to(&mut self, h: usize, sn: &str) {
        let now = self.now();
        let host = &mut self.hosts[h];
        host.supernode = sn.into();
        let info = LinkInfo {
            supernode: sn.into(),
            public_addr: host.public,
            nat: host.nat,
            local_port: PORT_P,
            udp: host.nat != NatKind::UdpBlocked,
            v6: false,
        };
        host.core.on_link_up(now, info);
        self.drain(h, false);
    }

    /// The call notices delivered to host `h` so far, in order.
    pub fn notices_to(&self, h: usize) -> Vec<Vec<u8>> {
        self.delivered.iter().filter(|(to, _)| *to == h).map(|(_, b)| b.clone()).collect()
    }

    /// Delivers `body` to host `h` as a call notice again, now (a replay).
    pub fn deliver_notice(&mut self, h: usize, body: Vec<u8>) {
        self.at(self.now_ms, Ev::Notice { to: h, body });
    }

    fn at(&mut self, at_ms: u64, e: Ev) {
        self.seq += 1;
        self.events.insert((at_ms, self.seq), e);
    }

    fn drop_for(&mut self, why: &str) {
        *self.drops.entry(why.to_owned()).or_default() += 1;
    }

    fn note(&mut self, host: usize, what: String) {
        assert!(self.trace.len() < TRACE_MAX, "the trace overflowed");
        self.trace.push(format!("{} h{host} {what}", self.now_ms));
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
            assert!(self.handled <= EVENTS_MAX, "the world never settles");
            self.now_ms = at;
            self.handle(e);
        }
        self.now_ms = until_ms;
    }

    /// Runs until `done` holds (checked every 10 ms) or `deadline_ms`; whether it held.
    pub fn run_while_not(&mut self, deadline_ms: u64, done: impl Fn(&Self) -> bool) -> bool {
        while !done(self) {
            if self.now_ms >= deadline_ms {
                return false;
            }
            self.run_until((self.now_ms + 10).min(deadline_ms));
        }
        true
    }

    fn handle(&mut self, e: Ev) {
        let now = self.now();
        match e {
            Ev::Wake(h) => {
                if self.hosts[h].wake_ms == Some(self.now_ms) {
                    self.hosts[h].wake_ms = None;
                }
                let Some(due) = self.hosts[h].core.poll_timeout() else { return };
                if due > now.mono {
                    return;
                }
                let calls: Vec<([u8; 16], u64)> = self.hosts[h]
                    .core
                    .call_ids()
                    .into_iter()
                    .filter_map(|id| {
                        let t = self.hosts[h].core.next_media_tick(id)?;
                        (t <= now.mono).then(|| (id, now.mono.duration_since(t).as_millis() as u64 / 20 + 1))
                    })
                    .collect();
                self.hosts[h].core.handle_timeout(now);
                let voice = self.drain(h, true);
                for (call, due) in calls {
                    let voice = voice.get(&call_tag(&call)).copied().unwrap_or(0);
                    self.tick_steps.push(TickStep { at_ms: self.now_ms, host: h, call, due, voice });
                }
            }
            Ev::Arrive(d) => self.arrive(d),
            Ev::Notice { to, body } => {
                self.delivered.push((to, body.clone()));
                let host = &mut self.hosts[to];
                let taken = host.core.on_notice(now, &body, &host.env);
                assert!(taken, "a call notice");
                self.drain(to, false);
            }
            Ev::Result { host, tag, result } => {
                self.hosts[host].core.on_request_result(now, tag, result);
                self.drain(host, false);
            }
            Ev::Grant { host, tag, callee } => {
                let callee = Credential::decode(&callee).expect("a credential");
                let g = self.table.allocate(self.now_ms).expect("room in the table");
                self.granted.push(g.session.0);
                let grant = RelayGrant {
                    req: 0,
                    code: 0,
                    relay: Some(relay()),
                    session: g.session.0,
                    token_a: *g.token_a.as_bytes(),
                    leg_b: crate::relay::handoff::seal(&callee.public_key, g.session.0, g.token_b.as_bytes()),
                    idle_timeout_secs: 30,
                };
                self.hosts[host].core.on_request_result(now, tag, Ok(Answer::Granted(grant)));
                self.drain(host, false);
            }
            Ev::Effect { host, result } => {
                self.hosts[host].core.on_effect_result(now, result);
                self.drain(host, false);
            }
            Ev::Tcp { host, conn, event } => {
                let ours = self.hosts[host].core.handle_tcp(now, conn, event);
                assert!(ours, "a relay connection of the calls");
                self.drain(host, false);
            }
        }
    }

    /// Drains every output of host `h`; returns the voice frames sent, per call tag.
    fn drain(&mut self, h: usize, in_timeout: bool) -> BTreeMap<[u8; 8], u64> {
        let mut voice = BTreeMap::new();
        while let Some(t) = self.hosts[h].core.poll_transmit() {
            if let Some((tag, packet, _)) = demux(&t.bytes)
                && peek(packet).is_some_and(|(k, _)| k == Kind::Voice)
            {
                *voice.entry(tag).or_default() += 1;
                if !in_timeout {
                    self.voice_outside_ticks += 1;
                }
            }
            self.transmit(h, t.dest, t.bytes);
        }
        while let Some((tag, r)) = self.hosts[h].core.poll_request() {
            self.request(h, tag, r);
        }
        while let Some((kind, body)) = self.hosts[h].core.poll_sealed() {
            self.note(h, format!("sealed {kind:?}"));
            match kind {
                MessageKind::CallStats => {
                    self.call_stats.push((h, CallStats::decode(&body).expect("call stats")));
                }
                MessageKind::RelayRelease => {
                    let r = RelayRelease::decode(&body).expect("a release");
                    self.table.release(crate::relay::packet::SessionId(r.session));
                    self.released.push(r.session);
                }
                other => panic!("an unexpected sealed message {other:?}"),
            }
        }
        while let Some(e) = self.hosts[h].core.poll_effect() {
            self.effect(h, e);
        }
        while let Some(e) = self.hosts[h].core.poll_event() {
            self.note(h, format!("event {e:?}"));
            self.hosts[h].events.push((self.now_ms, e));
        }
        let wake = self.hosts[h].core.poll_timeout().map(|t| {
            let d = t.saturating_duration_since(self.base);
            d.as_millis() as u64 + u64::from(d.subsec_nanos() % 1_000_000 != 0)
        });
        if let Some(w) = wake {
            assert!(w > self.now_ms || !in_timeout, "host {h} left a timer overdue at {}", self.now_ms);
            let w = w.max(self.now_ms);
            if self.hosts[h].wake_ms != Some(w) || w < self.now_ms {
                self.hosts[h].wake_ms = Some(w);
                self.at(w, Ev::Wake(h));
            }
        }
        voice
    }

    fn request(&mut self, h: usize, tag: u64, r: Request) {
        let notice_ms = self.signalling.notice_ms;
        match r {
            Request::Forward { to, via, body, .. } => {
                self.note(h, format!("forward to {to} via {via}"));
                if self.fail_forwards_link_down {
                    let result = Err(crate::host::core::pending::RequestError::LinkDown);
                    return self.at(self.now_ms, Ev::Result { host: h, tag, result });
                }
                self.notices += 1;
                let Some(to_host) = self.hosts.iter().position(|x| x.user.eq_ignore_ascii_case(&to)) else {
                    return self.drop_for("no_such_user");
                };
                let supernode = self.hosts[to_host].supernode.clone();
                if self.lose_notices_to == Some(to_host) {
                    self.drop_for("notice_lost");
                } else {
                    self.at(self.now_ms + notice_ms, Ev::Notice { to: to_host, body });
                }
                let ack = ForwardAck { req: 0, code: 0, supernode };
                self.at(self.now_ms + notice_ms, Ev::Result { host: h, tag, result: Ok(Answer::Forwarded(ack)) });
            }
            Request::RelayAllocate { callee } => {
                self.note(h, "relay_allocate".into());
                self.relay_requests += 1;
                if self.fail_relay_requests_link_down {
                    let result = Err(crate::host::core::pending::RequestError::LinkDown);
                    return self.at(self.now_ms, Ev::Result { host: h, tag, result });
                }
                match self.signalling.relay {
                    RelayMode::Grant(ms) => self.at(self.now_ms + ms, Ev::Grant { host: h, tag, callee }),
                    RelayMode::Never => {}
                }
            }
            Request::Keepalive { .. } => {
                self.note(h, "keepalive".into());
                let observed = Answer::Observed(self.hosts[h].public);
                self.at(self.now_ms + notice_ms, Ev::Result { host: h, tag, result: Ok(observed) });
            }
            other => panic!("calls asked for {other:?}"),
        }
    }

    fn effect(&mut self, h: usize, e: Effect) {
        self.note(h, format!("effect {}", effect_label(&e)));
        match e {
            Effect::OpenProbeSockets { call, n, .. } => {
                let host = &mut self.hosts[h];
                host.sockets.retain(|_, (c, _)| *c != call);
                let first = host.sockets.keys().next_back().map_or(EXTRA_PORT_BASE, |p| p + 1);
                for i in 0..n {
                    host.sockets.insert(first + i, (call, i));
                }
                self.at(
                    self.now_ms + self.probe_open_ms,
                    Ev::Effect { host: h, result: EffectResult::ProbeSocketsOpened { call, opened: n } },
                );
            }
            Effect::CloseProbeSockets { call, keep } => {
                self.hosts[h].sockets.retain(|_, (c, i)| *c != call || keep.contains(i));
            }
            Effect::TcpConnect { conn, addr, .. } => {
                let event = if addr == relay() && self.hosts[h].conns.insert(conn) {
                    TcpEvent::Connected { local: SocketAddr::new(self.hosts[h].ip, 1) }
                } else {
                    TcpEvent::ConnectFailed("refused".into())
                };
                self.at(self.now_ms + TCP_CONNECT_MS, Ev::Tcp { host: h, conn, event });
            }
            Effect::TcpClose { conn } => {
                self.hosts[h].conns.remove(&conn);
            }
            other @ (Effect::LocalIpToward(_)
            | Effect::SaveCache(_)
            | Effect::Login(_)
            | Effect::Chat(_)
            | Effect::File(_)) => {
                panic!("calls asked for {other:?}")
            }
        }
    }

    /// Puts what host `h` sends on its way, through its router.
    fn transmit(&mut self, h: usize, dest: Dest, bytes: Vec<u8>) {
        let (router, ip, nat_kind) = (self.hosts[h].router, self.hosts[h].ip, self.hosts[h].nat);
        let (src, to) = match dest {
            Dest::Tcp(conn) => {
                if !self.hosts[h].conns.contains(&conn) {
                    return self.drop_for("tcp_closed");
                }
                self.note(h, format!("tcp {} {}", conn.0, bytes.len()));
                let from = SocketAddr::new(self.routers[router].public_ip(), PORT_P);
                return self.travel(Datagram { from, to: relay(), bytes, over: Over::RelayTcp(h, conn) });
            }
            Dest::Udp(to) => (SocketAddr::new(ip, PORT_P), to),
            Dest::Probe { call, socket, to } => {
                match self.hosts[h].sockets.iter().find(|(_, s)| **s == (call, socket)).map(|(p, _)| *p) {
                    Some(port) => (SocketAddr::new(ip, port), to),
                    None => return self.drop_for("socket_closed"),
                }
            }
        };
        self.note(h, format!("udp {src} -> {to} {}", bytes.len()));
        if is_private(to.ip()) {
            if self.hosts.iter().any(|x| x.router == router && x.ip == to.ip()) {
                self.travel(Datagram { from: src, to, bytes, over: Over::Lan });
            } else {
                self.drop_for("unroutable");
            }
            return;
        }
        let nat = &mut self.routers[router];
        if to.ip() == nat.public_ip() && nat_kind != NatKind::None {
            return self.drop_for("no_hairpin");
        }
        match nat.outbound(src, to, Duration::from_millis(self.now_ms), &mut self.rng) {
            Some(from) => self.travel(Datagram { from, to, bytes, over: Over::Internet }),
            None => self.drop_for("nat_dropped"),
        }
    }

    fn travel(&mut self, d: Datagram) {
        let lan = matches!(d.over, Over::Lan);
        let at = self.now_ms + delay_ms(&mut self.link_ms, &mut self.rng, lan, d.from.ip(), d.to.ip());
        self.at(at, Ev::Arrive(d));
    }

    fn arrive(&mut self, d: Datagram) {
        if d.to == relay() {
            return self.relay(d);
        }
        let now = self.now();
        if let Over::RelayTcp(h, conn) = d.over {
            if !self.hosts[h].conns.contains(&conn) {
                return self.drop_for("tcp_closed");
            }
            self.hosts[h].core.handle_tcp(now, conn, TcpEvent::Frame(d.bytes));
            self.drain(h, false);
            return;
        }
        let (h, local) = match d.over {
            Over::Lan => match self.hosts.iter().position(|x| x.ip == d.to.ip()) {
                Some(h) => (h, d.to),
                None => return self.drop_for("unroutable"),
            },
            _ => {
                let Some(r) = self.routers.iter().position(|n| n.public_ip() == d.to.ip()) else {
                    return self.drop_for("unroutable");
                };
                let Some(local) = self.routers[r].inbound(d.from, d.to, Duration::from_millis(self.now_ms)) else {
                    return self.drop_for("filtered");
                };
                match self.hosts.iter().position(|x| x.router == r && x.ip == local.ip()) {
                    Some(h) => (h, local),
                    None => return self.drop_for("unroutable"),
                }
            }
        };
        let taken = if local.port() == PORT_P {
            self.hosts[h].core.handle_datagram(now, d.from, &d.bytes)
        } else {
            match self.hosts[h].sockets.get(&local.port()).copied() {
                Some((call, socket)) => self.hosts[h].core.handle_probe_datagram(now, call, socket, d.from, &d.bytes),
                None => return self.drop_for("socket_closed"),
            }
        };
        if !taken {
            self.drop_for("not_taken");
        }
        self.drain(h, false);
    }

    /// The relay: the session table's rule, the token wiped, on to the other leg.
    fn relay(&mut self, mut d: Datagram) {
        let from = match d.over {
            Over::RelayTcp(h, conn) => Peer::Tcp { conn: ((h as u64) << 32) | u64::from(conn.0), addr: d.from },
            _ => Peer::Udp(d.from),
        };
        match self.table.decide_from(&d.bytes, from, self.now_ms) {
            // `decide_from` never holds.
            Decision::Forward { to } | Decision::Hold { to, .. } => {
                wipe_token(&mut d.bytes);
                let over = match to {
                    Peer::Tcp { conn, .. } => Over::RelayTcp((conn >> 32) as usize, ConnId(conn as u32)),
                    Peer::Udp(_) => Over::Internet,
                };
                self.travel(Datagram { from: relay(), to: to.addr(), bytes: d.bytes, over });
            }
            Decision::Drop(why) => self.drop_for(why.label()),
        }
    }

    /// The relay forgets every session it holds, as a relay that restarted does.
    pub fn kill_relay_sessions(&mut self) {
        for s in &self.granted {
            self.table.release(crate::relay::packet::SessionId(*s));
        }
    }

    /// Datagrams the relay forwarded so far, both ways, over every session granted.
    pub fn relayed(&self) -> u64 {
        let forwarded = |id: &u32| {
            self.table.accounting(crate::relay::packet::SessionId(*id)).map(|a| a.packets_a_to_b + a.packets_b_to_a)
        };
        self.granted.iter().filter_map(forwarded).sum()
    }
}

fn effect_label(e: &Effect) -> String {
    match e {
        Effect::TcpConnect { addr, .. } => format!("tcp_connect {addr}"),
        Effect::TcpClose { .. } => "tcp_close".into(),
        Effect::OpenProbeSockets { n, .. } => format!("open_sockets {n}"),
        Effect::CloseProbeSockets { keep, .. } => format!("close_sockets keep {}", keep.len()),
        Effect::LocalIpToward(to) => format!("local_ip_toward {to}"),
        Effect::SaveCache(entries) => format!("save_cache {}", entries.len()),
        Effect::Login(call) => format!("login {call:?}"),
        Effect::Chat(e) => format!("chat {e:?}"),
        Effect::File(e) => format!("file {e:?}"),
    }
}
