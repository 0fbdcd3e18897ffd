//! Calls and their media as a sans-IO machine: what `Session`'s calls do (invites,
//! replies, every signal, busy, cancel, hang-up, the call timeouts, relay legs, the
//! birthday technique's extra sockets, the media clock), with nothing that waits.
//!
//! # The driving contract
//!
//! [`CallsCore`] has no socket, no clock, no OS randomness and no `.await`. Its driver
//! (the host core, or a test on virtual time):
//!
//! 1. Tells it where the host stands: [`CallsCore::on_link_up`] every time a link to a
//!    super node is up (the first, and after every failover: the calls are then told
//!    where we moved, and relays that could not be asked for are asked now).
//! 2. Feeds inputs: user commands ([`CallsCore::call`], [`CallsCore::answer`],
//!    [`CallsCore::end`]), call notices ([`CallsCore::on_notice`]), datagrams on port P
//!    ([`CallsCore::handle_datagram`]) and on a call's extra sockets
//!    ([`CallsCore::handle_probe_datagram`]), relay legs over TCP
//!    ([`CallsCore::handle_tcp`]), the results of its requests
//!    ([`CallsCore::on_request_result`]) and effects ([`CallsCore::on_effect_result`]),
//!    and [`CallsCore::handle_timeout`] when [`CallsCore::poll_timeout`] comes.
//! 3. Drains every output until `None`: [`CallsCore::poll_transmit`] (media),
//!    [`CallsCore::poll_request`] (a tag and a [`Request`] for the super node: call
//!    messages as `Forward`, `RelayAllocate`, a `Keepalive` when media went silent; the
//!    result comes back under the tag), [`CallsCore::poll_sealed`] (messages without an
//!    answer: `RelayRelease`, `CallStats`), [`CallsCore::poll_effect`] (relay TCP
//!    connections, extra sockets) and [`CallsCore::poll_event`].
//!
//! Time: every input takes [`Now`]. Call and media timers run on `Now::mono` (ms since
//! the instant given at construction); what is signed or compared with the other host
//! (invites, replies, credentials) on `Now::unix_ms`.
//!
//! The media clock is in here: every call with media ticks every 20 ms, and
//! [`CallsCore::handle_timeout`] emits every due frame of every call before any other
//! work, one frame per call per due tick, so no frame waits for signalling.
//!
//! What the calls need of the rest of the host at the moment they need it (the buddy
//! relation, our status, the interface addresses) comes through [`Surroundings`].

mod active;
mod clock;
#[cfg(test)]
mod matrix;
mod messages;
mod relay;
#[cfg(test)]
mod tests;

use self::active::ActiveCall;
use super::Now;
use super::io::{ConnId, Dest, Effect, EffectResult, Framing, TcpEvent, Transmit};
use super::pending::{Answer, Class, OpResult, Request, RequestError};
use crate::buddy::{Notice, Relation};
use crate::call::invite::{
    CallError, CallMessage, Caller, Candidate, CandidateKind, FileInvite, Invite, Reply, SignalChannel,
};
use crate::call::path::RelayLeg;
use crate::call::signal::{Action, Call, Intent, Role, Signal, State, Timeouts};
use crate::config::LocalCandidates;
use crate::crypto::{Credential, PrivateKey, TrustedKeys};
use crate::host::buddies::Event;
use crate::host::calls::{CODECS, CallReport, CallState, call_id_hex};
use crate::host::media::{CallMedia, Outgoing, Setup, demux, search_plan};
use crate::host::probe_sockets::{BirthdayBudget, OPEN_MAX};
use crate::index::Status;
use crate::nat::NatKind;
use crate::wire::MessageKind;
use crate::wire::message::{CallStats, RelayRelease, SUPERNODE_NAME_LEN_MAX};
use rand::RngExt;
use rand::rngs::StdRng;
use std::collections::{BTreeMap, VecDeque};
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

/// The demux byte in front of every file transfer datagram, directly or inside a relay
/// header (QUIC's first byte would collide with the media bytes).
pub const FILE_DEMUX: u8 = 0x54;
/// Most file transfer datagrams kept for the host between two drains.
pub const FILE_IN_MAX: usize = 4096;

/// An invite to a call of kind "file", for the host to answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileCall {
    /// The call.
    pub call: [u8; 16],
    /// The transfer it is for.
    pub transfer: [u8; 16],
    /// Who calls (the receiver).
    pub peer: String,
}

/// How far an invite's clock may be from ours.
const INVITE_WINDOW_MS: u64 = 30_000;
/// Call ids remembered against replayed invites (well over what arrives in the window).
const SEEN_INVITES_MAX: usize = 4096;
/// The callee's signals a caller keeps while its reply is still on the way.
const EARLY_SIGNALS_MAX: usize = 4;
/// The caller offers its relay leg again this often while media has no path through it:
/// the offer may have gone to a super node the callee lost, before its new one was known.
const RELAY_OFFER_REPEAT_MS: u64 = 2_000;
/// Reports of ended calls kept for the application (the oldest go first).
const FINISHED_KEPT_MAX: usize = 16;
/// The media clock's period.
pub const TICK: Duration = Duration::from_millis(20);
/// Most frames one call sends in one step when the step comes late: a second of voice.
/// Ticks later than that are skipped (the gap is lost, as a late clock loses it).
pub const TICKS_PER_STEP_MAX: u32 = 50;
/// How long connecting to a relay over TCP may take.
pub const RELAY_CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
/// How long a keepalive asked for on media silence may take.
pub const SILENCE_CHECK_TIMEOUT: Duration = Duration::from_secs(1);
/// Most datagrams queued for the shell (the birthday technique sends up to 2,048 at once).
pub const TRANSMITS_MAX: usize = 16_384;
/// Most requests, sealed messages, effects and events queued each.
pub const QUEUED_MAX: usize = 4096;
/// The first TCP connection id these calls name (the link's ids stay below it).
pub const CONN_BASE: u32 = 0x8000_0000;

/// Where the host stands now: its link to a super node and what login learnt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LinkInfo {
    /// Our super node's name (signals for us go through it).
    pub supernode: String,
    /// The address our super node sees.
    pub public_addr: SocketAddr,
    /// Our NAT's kind.
    pub nat: NatKind,
    /// Port P.
    pub local_port: u16,
    /// Port P's UDP is ours (false: we linked over TCP because UDP is blocked, so relay
    /// legs go over TCP).
    pub udp: bool,
    /// Port P is bound on IPv6 too.
    pub v6: bool,
}

/// What the calls ask of the rest of the host, when they need it.
pub trait Surroundings {
    /// Our relation with `user`, if they are in our buddy list.
    fn relation(&self, user: &str) -> Option<Relation>;
    /// The status we show.
    fn status(&self) -> Status;
    /// This machine's interface addresses, read only when they are to be offered.
    fn interface_addresses(&self) -> Vec<IpAddr>;
}

/// How the calls behave.
#[derive(Debug, Clone, Default)]
pub struct CallsConfig {
    /// The call state machine's timeouts.
    pub timeouts: Timeouts,
    /// Media only through a relay.
    pub relay_only: bool,
    /// Relay legs over TCP even with UDP at hand (implies relay only).
    pub relay_tcp: bool,
    /// To whom we offer our interface addresses.
    pub local_candidates: LocalCandidates,
}

/// Why a call could not be placed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CallsError {
    /// No link to a super node yet: an invite names ours.
    #[error("no link to a super node")]
    NoLink,
}

/// Counters of what the calls dropped.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CallsStats {
    /// Datagrams for no call, or not media.
    pub foreign: u64,
    /// Outputs dropped because nobody drained them.
    pub dropped: u64,
    /// Media ticks skipped because a step came more than a second late.
    pub ticks_skipped: u64,
}

/// What a request under one of our tags was for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Asked {
    /// A call message: its answer says only where it went.
    Forward,
    /// A call's invite: if no super node carries it, the call ends at once.
    Invite([u8; 16]),
    /// A relay session for this call.
    Relay([u8; 16]),
    /// The super node asked whether it lives, on media silence.
    Check,
}

/// The calls of a host; see the module's documentation for how to drive it.
pub struct CallsCore {
    me: Credential,
    key: PrivateKey,
    trusted: TrustedKeys,
    cfg: CallsConfig,
    link: Option<LinkInfo>,
    /// The link ended and the next is not up: `link` is the last one's.
    link_down: bool,
    epoch: Instant,
    rng: StdRng,
    active: BTreeMap<[u8; 16], ActiveCall>,
    seen: VecDeque<[u8; 16]>,
    finished: VecDeque<([u8; 16], CallReport)>,
    birthday: BirthdayBudget,
    /// Relay legs over TCP, by relay session.
    relay_conns: BTreeMap<u32, relay::RelayConn>,
    next_conn: u32,
    asked: BTreeMap<u64, Asked>,
    next_tag: u64,
    transmits: VecDeque<Transmit>,
    requests: VecDeque<(u64, Request)>,
    sealed: VecDeque<(MessageKind, Vec<u8>)>,
    effects: VecDeque<Effect>,
    events: VecDeque<Event>,
    stats: CallsStats,
    file_in: VecDeque<([u8; 16], Vec<u8>)>,
    file_calls: VecDeque<FileCall>,
}

fn push_bounded<T>(q: &mut VecDeque<T>, max: usize, item: T, dropped: &mut u64) {
    if q.len() >= max {
        *dropped += 1;
    } else {
        q.push_back(item);
    }
}

impl CallsCore {
    /// Queues an event for the application. When nobody reads and the queue is full, the
    /// oldest event that is not a call's end gives way: an end is what an application
    /// must not miss (it frees what it holds for the call).
    fn push_event(&mut self, e: Event) {
        if self.events.len() >= QUEUED_MAX {
            let is_end = |e: &Event| matches!(e, Event::Call { state: CallState::Ended { .. }, .. });
            match self.events.iter().position(|e| !is_end(e)) {
                Some(i) => {
                    self.events.remove(i);
                }
                None if is_end(&e) => {
                    self.events.pop_front();
                }
                None => {
                    self.stats.dropped += 1;
                    return;
                }
            }
            self.stats.dropped += 1;
        }
        self.events.push_back(e);
    }

    /// The calls of the holder of `me` (signing with `key`, checking the other side's
    /// credentials against `trusted`); `epoch` is the instant the call and media timers
    /// count from, `rng` draws call ids, secrets and the path search's seeds.
    pub fn new(
        me: Credential,
        key: PrivateKey,
        trusted: TrustedKeys,
        cfg: CallsConfig,
        epoch: Instant,
        rng: StdRng,
    ) -> Self {
        Self {
            me,
            key,
            trusted,
            cfg,
            link: None,
            link_down: false,
            epoch,
            rng,
            active: BTreeMap::new(),
            seen: VecDeque::new(),
            finished: VecDeque::new(),
            birthday: BirthdayBudget::default(),
            relay_conns: BTreeMap::new(),
            next_conn: CONN_BASE,
            asked: BTreeMap::new(),
            next_tag: 1,
            transmits: VecDeque::new(),
            requests: VecDeque::new(),
            sealed: VecDeque::new(),
            effects: VecDeque::new(),
            events: VecDeque::new(),
            stats: CallsStats::default(),
            file_in: VecDeque::new(),
            file_calls: VecDeque::new(),
        }
    }

    fn ms(&self, now: Now) -> u64 {
        now.mono.saturating_duration_since(self.epoch).as_millis() as u64
    }

    fn at_ms(&self, ms: u64) -> Instant {
        self.epoch + Duration::from_millis(ms)
    }

    /// Counters.
    pub fn stats(&self) -> CallsStats {
        self.stats
    }

    // ---- where the host stands ----

    /// A link to a super node is up. After a failover (another super node than before)
    /// every call's other side is told where our signals go now; relays that could not
    /// be asked for are asked now.
    pub fn on_link_up(&mut self, _now: Now, info: LinkInfo) {
        self.link_down = false;
        let before = self.link.replace(info).map(|l| l.supernode);
        if let Some(lost) = before.filter(|b| Some(b) != self.link.as_ref().map(|l| &l.supernode)) {
            self.tell_calls_we_moved(&lost);
        }
        let waiting: Vec<[u8; 16]> = self
            .active
            .iter_mut()
            .filter(|(_, c)| c.relay_waiting && c.media.is_some())
            .map(|(id, c)| {
                c.relay_waiting = false;
                *id
            })
            .collect();
        for id in waiting {
            self.ask_relay(id);
        }
    }

    /// The link ended: no call is placed and no relay asked for until the next is up
    /// (an invite would name the super node we lost). What the last link told (our
    /// public address, the super node lost) stays for the calls under way and for
    /// telling them we moved.
    pub fn on_link_down(&mut self) {
        self.link_down = true;
    }

    /// Tells the other side of each call where its signals reach us now, after we lost
    /// `lost`. A peer whose super node was that one too is addressed by lookup (no
    /// `via`) until it tells us where it went.
    fn tell_calls_we_moved(&mut self, lost: &str) {
        let Some(here) = self.link.as_ref().map(|l| l.supernode.clone()) else { return };
        let mut out = Vec::new();
        for c in self.active.values_mut().filter(|c| !c.call.is_over()) {
            if c.peer_supernode == lost {
                c.peer_supernode.clear();
            }
            let m = CallMessage::Signal(c.channel.seal(Signal::Moved { supernode: here.clone() }));
            out.push((c.peer.clone(), c.peer_supernode.clone(), m));
        }
        for (peer, via, m) in out {
            self.send_call(&peer, via, &m);
        }
    }

    fn relay_over_tcp(&self) -> bool {
        self.cfg.relay_tcp || self.link.as_ref().is_some_and(|l| !l.udp)
    }

    /// Media only through a relay, or not.
    pub fn set_relay_only(&mut self, on: bool) {
        self.cfg.relay_only = on;
    }

    /// Relay legs over TCP even with UDP at hand, or not.
    pub fn set_relay_tcp(&mut self, on: bool) {
        self.cfg.relay_tcp = on;
    }

    /// The call timeouts for calls that begin from now on.
    pub fn set_call_timeouts(&mut self, t: Timeouts) {
        self.cfg.timeouts = t;
    }

    // ---- user commands ----

    /// Calls the holder of `callee` (a credential verified from their index entry),
    /// whose signals go through `supernode`. The lookup, and whether the callee shows
    /// online, are the caller's business. Returns the call id; what follows arrives as
    /// [`Event::Call`].
    pub fn call(
        &mut self,
        now: Now,
        callee: &Credential,
        supernode: String,
        env: &impl Surroundings,
    ) -> Result<[u8; 16], CallsError> {
        self.place(now, callee, supernode, None, env)
    }

    /// Calls the holder of `callee` for file transfer `transfer` (a call of kind "file",
    /// which the other side answers only if it serves that transfer to us): as
    /// [`CallsCore::call`], and the transfer's datagrams then travel on the path found.
    pub fn call_for_file(
        &mut self,
        now: Now,
        callee: &Credential,
        supernode: String,
        transfer: [u8; 16],
        env: &impl Surroundings,
    ) -> Result<[u8; 16], CallsError> {
        self.place(now, callee, supernode, Some(transfer), env)
    }

    fn place(
        &mut self,
        now: Now,
        callee: &Credential,
        supernode: String,
        transfer: Option<[u8; 16]>,
        env: &impl Surroundings,
    ) -> Result<[u8; 16], CallsError> {
        let here = self.link.as_ref().filter(|_| !self.link_down).map(|l| l.supernode.clone());
        let Some(here) = here else { return Err(CallsError::NoLink) };
        let candidates = self.candidates(&callee.subject, env);
        let (invite, offer, channel) = Invite::make_with_rng(
            Caller { me: &self.me, key: &self.key, supernode: &here },
            callee,
            CODECS.to_vec(),
            candidates,
            now.unix_ms,
            &mut self.rng,
        );
        let id = invite.body.call_id;
        let ms = self.ms(now);
        let (call, actions) = Call::outgoing(ms, self.cfg.timeouts.clone());
        let mut c = ActiveCall::new(callee.clone(), supernode.clone(), call, channel, None, ms);
        c.invite = Some((invite.clone(), offer));
        c.transfer = transfer;
        self.active.insert(id, c);
        let message = match transfer {
            Some(t) => CallMessage::FileInvite(FileInvite::make(invite, t, &self.key)),
            None => CallMessage::Invite(invite),
        };
        let body = Notice::Call { message: message.encode() }.encode();
        let to = callee.subject.clone();
        self.request(Asked::Invite(id), Request::Forward { to, via: supernode, body, class: Class::Call });
        self.apply_call(now, id, actions, Vec::new());
        Ok(id)
    }

    /// Accepts or declines an incoming call.
    pub fn answer(&mut self, now: Now, id: [u8; 16], accept: bool, env: &impl Surroundings) {
        let ms = self.ms(now);
        let Some(c) = self.active.get(&id) else { return };
        // Our candidates go with an Accept whose Reply withheld them; read (the
        // machine's interface addresses) only then.
        let ours = if accept && c.withheld { self.candidates(&c.peer.clone(), env) } else { Vec::new() };
        let Some(c) = self.active.get_mut(&id) else { return };
        let actions = c.call.intent(if accept { Intent::Accept } else { Intent::Decline }, ms);
        self.apply_call(now, id, actions, ours);
    }

    /// Ends a call: cancels it before an answer, hangs up after.
    pub fn end(&mut self, now: Now, id: [u8; 16]) {
        let ms = self.ms(now);
        let Some(c) = self.active.get_mut(&id) else { return };
        let actions = c.call.intent(Intent::End, ms);
        self.apply_call(now, id, actions, Vec::new());
    }

    /// What to play into call `id` (48 kHz mono samples; silence after).
    pub fn set_call_audio(&mut self, id: [u8; 16], samples: Vec<i16>) {
        if let Some(c) = self.active.get_mut(&id) {
            // The other side may have answered, and media started, before the caller's
            // application had the call's id to give its audio to.
            match c.media.as_mut() {
                Some(m) => m.set_source(samples),
                None => c.source = samples,
            }
        }
    }

    /// Keeps what call `id` sounds like at our end, for its report.
    pub fn set_call_recording(&mut self, id: [u8; 16], on: bool) {
        if let Some(c) = self.active.get_mut(&id) {
            c.record = on;
            if let Some(m) = c.media.as_mut() {
                m.set_recording(on);
            }
        }
    }

    // ---- getters ----

    /// Calls not yet over.
    pub fn calls_in_progress(&self) -> usize {
        self.active.len()
    }

    /// Whether any voice call is under way (a new invite is answered busy; file calls
    /// run beside anything).
    pub fn busy(&self) -> bool {
        self.active.values().any(|c| !c.call.is_over() && c.transfer.is_none())
    }

    /// The transfer call `id` carries, if it is a call of kind "file".
    pub fn call_transfer(&self, id: [u8; 16]) -> Option<[u8; 16]> {
        self.active.get(&id)?.transfer
    }

    /// The path a call's media chose, as a transfer's completion names it (`direct`,
    /// `punched`, `relay-udp`, `relay-tcp`); None before one is chosen.
    pub fn call_route(&self, id: [u8; 16]) -> Option<&'static str> {
        self.active.get(&id)?.media.as_ref()?.route_label()
    }

    /// Tells the super node that one connection of a file transfer brought `bytes` on the
    /// route named `route` (as a transfer's completion names it), so operators see file
    /// bytes by path: relays count what they carry, but direct and punched paths pass
    /// no super node.
    pub fn report_file_bytes(&mut self, route: &str, bytes: u64) {
        let path = match route {
            "direct" => "direct",
            "punched" => "punched",
            "relay-udp" => "relayed_udp",
            "relay-tcp" => "relayed_tcp",
            _ => return,
        };
        let stats = CallStats { path: path.into(), outcome: "file".into(), setup_ms: 0, file_bytes: Some(bytes) };
        self.seal(MessageKind::CallStats, stats.encode());
    }

    /// Sends a file transfer's datagram (the demux byte in front) on call `id`'s chosen
    /// path; false (dropped, as a lost datagram) while it has none.
    pub fn send_file_datagram(&mut self, id: [u8; 16], bytes: Vec<u8>) -> bool {
        let Some(o) = self.active.get(&id).and_then(|c| c.media.as_ref()).and_then(|m| m.file_datagram(bytes)) else {
            tracing::trace!("a file transfer datagram before its call has a path: dropped");
            return false;
        };
        tracing::trace!(to = %o.to, tcp = ?o.tcp, len = o.bytes.len(), "a file transfer datagram out");
        self.send_media(vec![o]);
        true
    }

    /// The next file transfer datagram that came on a file call's path: the call and the
    /// datagram, its demux byte removed.
    pub fn poll_file_datagram(&mut self) -> Option<([u8; 16], Vec<u8>)> {
        self.file_in.pop_front()
    }

    /// The next invite to a call of kind "file": the call, the transfer and who calls. The
    /// call rings until answered ([`CallsCore::answer`]).
    pub fn poll_file_call(&mut self) -> Option<FileCall> {
        self.file_calls.pop_front()
    }

    /// Whether any call has media (the link keeps its call pace then).
    pub fn has_media(&self) -> bool {
        self.active.values().any(|c| c.media.is_some())
    }

    /// The ids of the calls not yet over, in order.
    pub fn call_ids(&self) -> Vec<[u8; 16]> {
        self.active.keys().copied().collect()
    }

    /// Where call `id` is.
    pub fn call_state(&self, id: [u8; 16]) -> Option<State> {
        self.active.get(&id).map(|c| c.call.state())
    }

    /// How call `id` is doing so far, while it lasts.
    pub fn call_media(&self, id: [u8; 16]) -> Option<crate::host::media::MediaReport> {
        self.active.get(&id)?.media.as_ref().map(|m| m.report())
    }

    /// Where the other side of call `id` said it receives media, so far.
    pub fn call_peer_candidates(&self, id: [u8; 16]) -> Option<Vec<Candidate>> {
        self.active.get(&id).map(|c| c.peer_candidates.clone())
    }

    /// The super node call `id`'s signals go through to reach the other side.
    pub fn call_peer_supernode(&self, id: [u8; 16]) -> Option<String> {
        self.active.get(&id).map(|c| c.peer_supernode.clone())
    }

    /// When call `id`'s media clock ticks next (None without media).
    pub fn next_media_tick(&self, id: [u8; 16]) -> Option<Instant> {
        self.active.get(&id)?.next_tick
    }

    /// The report of an ended call (what it carried, what we heard); once.
    pub fn take_call_report(&mut self, id: [u8; 16]) -> Option<CallReport> {
        let i = self.finished.iter().position(|(f, _)| *f == id)?;
        self.finished.remove(i).map(|(_, r)| r)
    }

    // ---- outputs ----

    /// The next media datagram or relay frame.
    pub fn poll_transmit(&mut self) -> Option<Transmit> {
        self.transmits.pop_front()
    }

    /// The next request for the super node, under our tag.
    pub fn poll_request(&mut self) -> Option<(u64, Request)> {
        self.requests.pop_front()
    }

    /// The next message for the super node that has no answer (`RelayRelease`,
    /// `CallStats`): the joining code seals it on the link as it is.
    pub fn poll_sealed(&mut self) -> Option<(MessageKind, Vec<u8>)> {
        self.sealed.pop_front()
    }

    /// The next effect.
    pub fn poll_effect(&mut self) -> Option<Effect> {
        self.effects.pop_front()
    }

    /// The next event for the application.
    pub fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }

    /// When `handle_timeout` next has work: a media tick, a call's deadline, a relay
    /// connection's.
    pub fn poll_timeout(&self) -> Option<Instant> {
        let calls = self.active.values().flat_map(|c| {
            let deadline = c.call.deadline_ms().map(|ms| self.at_ms(ms));
            [c.next_tick, deadline]
        });
        let conns = self.relay_conns.values().map(|r| r.connecting);
        calls.chain(conns).flatten().min()
    }

    fn request(&mut self, asked: Asked, r: Request) {
        let tag = self.next_tag;
        self.next_tag += 1;
        if self.requests.len() >= QUEUED_MAX {
            self.stats.dropped += 1;
            if let Asked::Relay(id) = asked
                && let Some(c) = self.active.get_mut(&id)
            {
                c.relay_waiting = true;
            }
            return;
        }
        self.asked.insert(tag, asked);
        self.requests.push_back((tag, r));
    }

    fn send_call(&mut self, to: &str, via: String, m: &CallMessage) {
        let body = Notice::Call { message: m.encode() }.encode();
        self.request(Asked::Forward, Request::Forward { to: to.to_owned(), via, body, class: Class::Call });
    }

    fn seal(&mut self, kind: MessageKind, body: Vec<u8>) {
        push_bounded(&mut self.sealed, QUEUED_MAX, (kind, body), &mut self.stats.dropped);
    }

    fn effect(&mut self, e: Effect) {
        push_bounded(&mut self.effects, QUEUED_MAX, e, &mut self.stats.dropped);
    }

    fn release_relay(&mut self, session: u32) {
        self.seal(MessageKind::RelayRelease, RelayRelease { session }.encode());
    }

    /// Puts what a call's media sends on its way.
    fn send_media(&mut self, out: Vec<Outgoing>) {
        for o in out {
            let dest = match (o.local, o.tcp) {
                (Some((call, socket)), _) => Dest::Probe { call, socket, to: o.to },
                (None, Some(session)) => match self.relay_conns.get(&session) {
                    Some(r) if r.connecting.is_none() => Dest::Tcp(r.conn),
                    _ => continue,
                },
                (None, None) => Dest::Udp(o.to),
            };
            let t = Transmit { dest, bytes: o.bytes };
            push_bounded(&mut self.transmits, TRANSMITS_MAX, t, &mut self.stats.dropped);
        }
    }

    // ---- the call state machine's actions ----

    /// Carries out what a call's state machine asked for (`ours`: the candidates an
    /// Accept carries when our Reply withheld them).
    fn apply_call(&mut self, now: Now, id: [u8; 16], actions: Vec<Action>, ours: Vec<Candidate>) {
        let ms = self.ms(now);
        let relay_at_once = self.cfg.relay_only || self.relay_over_tcp();
        let link = self.link.clone();
        let mut late_legs = Vec::new();
        let mut release = Vec::new();
        let mut close_conns = Vec::new();
        let mut close_sockets = false;
        let mut nat_signals = Vec::new();
        let mut early_media = Vec::new();
        for a in actions {
            let Some(c) = self.active.get_mut(&id) else { break };
            match a {
                // The callee's ringing (or busy) goes out as its signed reply: mutual
                // authentication and the callee's key share travel with the first answer.
                Action::Send(Signal::Ringing | Signal::Busy) if c.call.role() == Role::Callee && c.reply.is_some() => {
                    let (peer, via) = (c.peer.clone(), c.peer_supernode.clone());
                    if let Some(reply) = c.reply.take().map(CallMessage::Reply) {
                        self.send_call(&peer, via, &reply);
                    }
                }
                Action::Send(s) => {
                    let s = match s {
                        Signal::Accept if c.withheld => Signal::AcceptAt { candidates: ours.clone() },
                        s => s,
                    };
                    let m = CallMessage::Signal(c.channel.seal(s));
                    let (peer, via) = (c.peer.clone(), c.peer_supernode.clone());
                    self.send_call(&peer, via, &m);
                }
                Action::StartMedia => {
                    let codec = c.codec.unwrap_or(crate::call::invite::Codec::L16);
                    let Some(key) = c.key.as_ref() else {
                        tracing::warn!("media asked for before the call's key is known");
                        continue;
                    };
                    let nat = link.as_ref().map_or(NatKind::Unknown, |l| l.nat);
                    let (v6, loopback) =
                        link.as_ref().map_or((false, false), |l| (l.v6, l.public_addr.ip().is_loopback()));
                    let source = std::mem::take(&mut c.source);
                    let (peer, timing) = search_plan(nat, relay_at_once, v6, loopback, &c.peer_candidates);
                    let setup = Setup {
                        call_id: &id,
                        key,
                        role: c.call.role(),
                        codec,
                        peer: &peer,
                        timing,
                        public: nat == NatKind::None,
                        nat,
                        seed: self.rng.random(),
                        relay_only: self.cfg.relay_only,
                    };
                    match CallMedia::new(setup, source, ms) {
                        Ok(mut m) => {
                            m.set_recording(c.record);
                            // Whether punching needs the birthday technique depends on
                            // both NATs: tell the other side ours.
                            nat_signals.push(CallMessage::Signal(c.channel.seal(Signal::Nat { kind: nat })));
                            if let Some(kind) = c.peer_nat.take() {
                                let mut out = Vec::new();
                                let allowed = self.birthday.allowed(ms);
                                m.on_peer_nat(kind, allowed, ms, &mut out);
                                if m.birthday_ran() {
                                    self.birthday.spend(ms);
                                }
                                early_media.extend(out);
                            }
                            c.media = Some(m);
                            c.next_tick = Some(now.mono + TICK);
                            // A leg that came while ringing: used now.
                            late_legs.extend(c.pending_relay.take());
                        }
                        Err(e) => tracing::warn!(error = %e, "no codec for the call"),
                    }
                }
                Action::StopMedia => {
                    if let Some(s) = c.relay_session.take() {
                        release.push(s);
                    }
                    c.pending_relay = None;
                    // Every relay leg over TCP of the call goes, connected or not yet.
                    close_conns.extend(self.relay_conns.iter().filter(|(_, r)| r.call == id).map(|(s, _)| *s));
                    close_sockets |= c.probe_sockets > 0 || c.probe_opening > 0;
                    c.probe_sockets = 0;
                    c.next_tick = None;
                    c.relay_waiting = false;
                    if let Some(mut m) = c.media.take() {
                        let report = CallReport { media: m.report(), heard: m.take_heard() };
                        if self.finished.len() >= FINISHED_KEPT_MAX {
                            self.finished.pop_front();
                        }
                        self.finished.push_back((id, report));
                    }
                }
                Action::Report(state) => {
                    match state {
                        State::Connected(p) if c.connected.is_none() => {
                            c.connected = Some((p, ms.saturating_sub(c.began_ms)));
                        }
                        // The caller tells its super node how the call went (labels
                        // only), so operators see calls by path and their setup time.
                        State::Ended(reason) if c.call.role() == Role::Caller => {
                            let (path, setup) = c.connected.map_or(("none", 0), |(p, ms)| (p.label(), ms));
                            let stats = CallStats {
                                path: path.into(),
                                outcome: reason.label().into(),
                                setup_ms: setup.min(u64::from(u32::MAX)) as u32,
                                file_bytes: None,
                            };
                            self.seal(MessageKind::CallStats, stats.encode());
                        }
                        _ => {}
                    }
                    let Some(c) = self.active.get(&id) else { break };
                    let e = Event::Call {
                        call_id: call_id_hex(&id),
                        peer: c.peer.clone(),
                        state: state.into(),
                        codec: c.codec,
                    };
                    self.push_event(e);
                }
            }
        }
        if let Some(c) = self.active.get(&id) {
            let (peer, via) = (c.peer.clone(), c.peer_supernode.clone());
            for m in nat_signals {
                self.send_call(&peer, via.clone(), &m);
            }
        }
        self.send_media(early_media);
        for leg in late_legs {
            self.relay_leg_ready(now, id, leg);
        }
        for session in close_conns {
            self.close_relay_conn(session);
        }
        if close_sockets {
            self.effect(Effect::CloseProbeSockets { call: id, keep: Vec::new() });
        }
        for session in release {
            self.release_relay(session);
        }
        // Ended calls leave nothing behind but their id (against replays).
        self.active.retain(|_, c| !c.call.is_over());
        self.service();
    }

    // ---- results of requests and effects ----

    /// The outcome of the request we emitted under `tag`.
    pub fn on_request_result(&mut self, now: Now, tag: u64, result: OpResult) {
        let Some(asked) = self.asked.remove(&tag) else { return };
        match (asked, result) {
            (Asked::Forward | Asked::Check | Asked::Invite(_), Ok(_)) => {}
            (Asked::Invite(id), Err(e @ (RequestError::LinkDown | RequestError::TimedOut(_)))) => {
                // It names a super node that is gone (or not answering): the callee's
                // reply would go there. Ended now, not at the invite's timeout.
                tracing::info!(error = %e, "the invite did not go out; the call ends");
                let ms = self.ms(now);
                if let Some(c) = self.active.get_mut(&id) {
                    let actions = c.call.undelivered(ms);
                    self.apply_call(now, id, actions, Vec::new());
                }
            }
            (Asked::Invite(_), Err(e)) => tracing::debug!(error = %e, "the invite was refused on its way"),
            (Asked::Forward, Err(e)) => {
                tracing::debug!(error = %e, "a call message did not reach the other side's super node")
            }
            (Asked::Check, Err(e)) => tracing::debug!(error = %e, "the super node did not answer the silence check"),
            (Asked::Relay(id), Ok(Answer::Granted(g))) => self.on_relay_granted(now, id, g),
            (Asked::Relay(_), Ok(other)) => {
                tracing::warn!(?other, "a relay request got an answer of another kind");
            }
            (Asked::Relay(id), Err(e @ (RequestError::LinkDown | RequestError::TimedOut(_)))) => {
                // No super node to ask now, or ours did not answer (it may be the one
                // that failed): asked again when a link is up.
                tracing::info!(error = %e, "no relay yet; asked again on the next link");
                if let Some(c) = self.active.get_mut(&id).filter(|c| c.media.is_some()) {
                    c.relay_waiting = true;
                }
            }
            (Asked::Relay(_), Err(e)) => {
                tracing::warn!(error = %e, "no relay for the call; it ends if no other path comes up");
            }
        }
    }
}
