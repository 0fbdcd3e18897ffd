//! Calls on the host: the [`crate::call`] state machine driven by call messages carried
//! as notices through the super nodes (invite, ringing, accept, decline, busy, cancel,
//! hang-up, every timeout), and each call's media ([`super::media`]): the path search,
//! relay legs, the birthday technique's extra sockets, failover.

use super::buddies::Event;
use super::ladder::Transport;
use super::{HostError, Session};
use crate::buddy::Notice;
use crate::call::invite::{
    CallError, CallMessage, Candidate, CandidateKind, Codec, Invite, MediaKey, Offer, Reply, SealedSignal,
    SignalChannel,
};
use crate::call::path::RelayLeg;
use crate::call::signal::{Action, Call, Intent, Role, Signal, State, Timeouts};
use crate::index::Status;
use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::time::Duration;

/// How far an invite's clock may be from ours.
const INVITE_WINDOW_MS: u64 = 30_000;
/// Call ids remembered against replayed invites (well over what arrives in the window).
const SEEN_INVITES_MAX: usize = 4096;
/// The callee's signals a caller keeps while its reply is still on the way.
const EARLY_SIGNALS_MAX: usize = 4;
/// The caller offers its relay leg again this often while media has no path through it:
/// the offer may have gone to a super node the callee lost, before its new one was known.
const RELAY_OFFER_REPEAT_MS: u64 = 2_000;
/// Codecs this host speaks, preferred first.
pub const CODECS: [Codec; 2] = [Codec::Opus, Codec::L16];

/// One call in progress on this host.
pub(super) struct ActiveCall {
    peer: String,
    /// The other side's verified credential: a relay's leg B is sealed to its key.
    peer_credential: crate::crypto::Credential,
    peer_supernode: String,
    call: Call,
    channel: SignalChannel,
    /// Caller: the invite and our secrets, to check the reply against and key the call.
    invite: Option<(Invite, Offer)>,
    /// Callee: the signed reply, sent with the ringing (or as the busy answer).
    reply: Option<Reply>,
    /// The call's key (the caller's, once the reply came).
    key: Option<MediaKey>,
    codec: Option<Codec>,
    /// Where the other side receives media.
    peer_candidates: Vec<Candidate>,
    /// Callee: our reply told a caller who is not an authorized buddy nothing of where
    /// we are; our candidates go with the user's Accept.
    withheld: bool,
    /// What we play into the call (then silence).
    source: Vec<i16>,
    /// Whether to keep what we hear.
    record: bool,
    media: Option<super::media::CallMedia>,
    /// Caller: signals that overtook the reply (an Accept before the Ringing), opened
    /// once the reply has brought the key.
    early: Vec<SealedSignal>,
    /// Our relay leg, when it arrived before media started (the callee's, from the caller).
    pending_relay: Option<RelayLeg>,
    /// The relay session we opened (the caller), released when media stops.
    relay_session: Option<u32>,
    /// The caller: the callee's leg of that session, as last offered, and when (unix ms).
    relay_offer: Option<(Signal, u64)>,
    /// When the call began here (the invite sent or received), unix ms.
    began_ms: u64,
    /// The first path media flowed on, and after how long.
    connected: Option<(crate::call::signal::Path, u64)>,
    /// The other side's NAT kind, if it said before our media started.
    peer_nat: Option<crate::nat::NatKind>,
    /// The extra sockets our path search opened (behind a symmetric NAT).
    probe_sockets: Option<super::probe_sockets::ProbeSockets>,
}

impl ActiveCall {
    /// The caller's relay offer, if it is due again at `now_ms`: media has no path, its
    /// search still holds our leg of the offered session, and the last offer is at least
    /// `repeat_ms` old. The first offer may have gone to a super node the callee lost.
    fn relay_offer_due(&mut self, now_ms: u64, repeat_ms: u64) -> Option<Signal> {
        let m = self.media.as_ref()?;
        let (offer, sent_ms) = self.relay_offer.as_mut()?;
        let Signal::Relay { session, .. } = offer else { return None };
        let waiting = !m.has_path() && m.relay_leg().is_some_and(|l| l.session == *session);
        if !waiting || now_ms.saturating_sub(*sent_ms) < repeat_ms {
            return None;
        }
        *sent_ms = now_ms;
        Some(offer.clone())
    }

    /// The callee's candidates that came with its Accept: kept, and the signal taken as
    /// a plain Accept by the state machine.
    fn take_candidates(&mut self, s: Signal) -> Signal {
        match s {
            Signal::AcceptAt { mut candidates } if self.call.role() == Role::Caller => {
                candidates.truncate(crate::call::invite::LIST_MAX);
                self.peer_candidates = candidates;
                Signal::Accept
            }
            s => s,
        }
    }

    /// A call with the holder of `peer` (reached through `peer_supernode`), nothing
    /// negotiated yet.
    fn new(
        peer: crate::crypto::Credential,
        peer_supernode: String,
        call: Call,
        channel: SignalChannel,
        key: Option<MediaKey>,
    ) -> Self {
        Self {
            peer: peer.subject.clone(),
            peer_credential: peer,
            peer_supernode,
            call,
            channel,
            invite: None,
            reply: None,
            key,
            codec: None,
            peer_candidates: Vec::new(),
            withheld: false,
            source: Vec::new(),
            record: false,
            media: None,
            early: Vec::new(),
            pending_relay: None,
            relay_session: None,
            relay_offer: None,
            began_ms: now_ms(),
            connected: None,
            peer_nat: None,
            probe_sockets: None,
        }
    }
}

/// What an ended call carried, and what we heard.
#[derive(Debug, Clone, Default)]
pub struct CallReport {
    /// Path, packets, loss, jitter.
    pub media: super::media::MediaReport,
    /// The audio we heard (48 kHz mono).
    pub heard: Vec<i16>,
}

/// The calls of a session.
pub(super) struct Calls {
    active: HashMap<[u8; 16], ActiveCall>,
    seen: VecDeque<[u8; 16]>,
    /// Reports of the last calls that ended, until the application takes them.
    finished: VecDeque<([u8; 16], CallReport)>,
    /// Our relay legs over TCP, by relay session.
    relay_conns: HashMap<u32, super::relay_tcp::RelayConn>,
    /// What the calls' extra sockets receive.
    pub(super) probe_rx: tokio::sync::mpsc::Receiver<super::probe_sockets::ProbeDatagram>,
    probe_tx: tokio::sync::mpsc::Sender<super::probe_sockets::ProbeDatagram>,
    /// What port P receives on IPv6 (media only).
    pub(super) media6_rx: tokio::sync::mpsc::Receiver<(SocketAddr, Vec<u8>)>,
    media6_tx: tokio::sync::mpsc::Sender<(SocketAddr, Vec<u8>)>,
}

impl Default for Calls {
    fn default() -> Self {
        let (probe_tx, probe_rx) = tokio::sync::mpsc::channel(super::probe_sockets::QUEUED_MAX);
        let (media6_tx, media6_rx) = tokio::sync::mpsc::channel(super::udp6::QUEUED_MAX);
        Self {
            active: HashMap::new(),
            seen: VecDeque::new(),
            finished: VecDeque::new(),
            relay_conns: HashMap::new(),
            probe_rx,
            probe_tx,
            media6_rx,
            media6_tx,
        }
    }
}

/// Reports of ended calls kept for the application (the oldest go first).
const FINISHED_KEPT_MAX: usize = 16;

/// A call's id, as shown to users and scripts.
pub fn call_id_hex(id: &[u8; 16]) -> String {
    id.iter().map(|b| format!("{b:02x}")).collect()
}

/// The call id that [`call_id_hex`] shows (None if `hex` is not one).
pub fn call_id_from_hex(hex: &str) -> Option<[u8; 16]> {
    let mut id = [0u8; 16];
    if hex.len() != 32 {
        return None;
    }
    for (i, b) in id.iter_mut().enumerate() {
        *b = u8::from_str_radix(hex.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(id)
}

impl Calls {
    /// Where port P's IPv6 socket queues what it receives.
    pub(super) fn media6_sender(&self) -> tokio::sync::mpsc::Sender<(SocketAddr, Vec<u8>)> {
        self.media6_tx.clone()
    }

    /// Whether any call has media to clock.
    pub(super) fn has_media(&self) -> bool {
        self.active.values().any(|c| c.media.is_some())
    }

    /// Whether any call is under way (not yet over).
    pub(super) fn busy(&self) -> bool {
        self.active.values().any(|c| !c.call.is_over())
    }

    fn remember(&mut self, id: [u8; 16]) -> bool {
        if self.seen.contains(&id) {
            return false;
        }
        if self.seen.len() >= SEEN_INVITES_MAX {
            self.seen.pop_front();
        }
        self.seen.push_back(id);
        true
    }

    /// The earliest deadline of any call.
    pub(super) fn deadline_ms(&self) -> Option<u64> {
        self.active.values().filter_map(|c| c.call.deadline_ms()).min()
    }
}

fn now_ms() -> u64 {
    super::now_ms()
}

impl Session {
    /// Calls `user`: looks them up, checks they are online, sends a signed invite through
    /// the super nodes. Returns the call id; what follows arrives as [`Event::Call`].
    pub async fn call(&mut self, user: &str) -> Result<[u8; 16], HostError> {
        let (_, found) = self.lookup(user).await?;
        let Some((entry, callee)) = found else {
            return Err(HostError::Refused(format!("no user {user:?} seen in the last 72 hours")));
        };
        let shown = crate::index::store::shown_status(
            &entry,
            crate::unix_now(),
            crate::index::store::PRESENCE_TTL_SECS_DEFAULT,
        );
        // A buddy who let us see them invisible is reachable too.
        let reachable = shown != Status::Offline
            || self.buddies.contacts().iter().any(|b| {
                b.user.eq_ignore_ascii_case(user)
                    && b.presence.as_ref().is_some_and(|p| p.shown(crate::unix_now()) != Status::Offline)
            });
        if !reachable {
            return Err(HostError::Refused(format!("{user} is offline")));
        }
        Ok(self.invite(&callee, entry.supernode.clone()).await)
    }

    /// Sends an invite to the holder of `user`'s index entry whatever it shows: what a
    /// modified client can do, so tests check that an invisible callee stays silent.
    #[doc(hidden)]
    pub async fn call_even_if_offline(&mut self, user: &str) -> Result<[u8; 16], HostError> {
        let (_, found) = self.lookup(user).await?;
        let (entry, callee) = found.ok_or_else(|| HostError::Refused(format!("no user {user:?}")))?;
        Ok(self.invite(&callee, entry.supernode.clone()).await)
    }

    async fn invite(&mut self, callee: &crate::crypto::Credential, supernode: String) -> [u8; 16] {
        let candidates = self.candidates(&callee.subject);
        let (invite, offer, channel) = Invite::make(
            &self.credential,
            &self.key,
            &self.report.supernode,
            callee,
            CODECS.to_vec(),
            candidates,
            now_ms(),
        );
        let id = invite.body.call_id;
        let (call, actions) = Call::outgoing(now_ms(), self.call_timeouts.clone());
        let mut c = ActiveCall::new(callee.clone(), supernode.clone(), call, channel, None);
        c.invite = Some((invite.clone(), offer));
        self.calls.active.insert(id, c);
        self.send_call(&callee.subject, Some(supernode), &CallMessage::Invite(invite)).await;
        self.apply_call(id, actions).await;
        id
    }

    /// Accepts or declines an incoming call.
    pub async fn answer_call(&mut self, id: [u8; 16], accept: bool) {
        let Some(c) = self.calls.active.get_mut(&id) else { return };
        let actions = c.call.intent(if accept { Intent::Accept } else { Intent::Decline }, now_ms());
        self.apply_call(id, actions).await;
    }

    /// Ends a call: cancels it before an answer, hangs up after.
    pub async fn end_call(&mut self, id: [u8; 16]) {
        let Some(c) = self.calls.active.get_mut(&id) else { return };
        let actions = c.call.intent(Intent::End, now_ms());
        self.apply_call(id, actions).await;
    }

    /// Calls not yet over (a leak check for tests and the CLI).
    pub fn calls_in_progress(&self) -> usize {
        // Ended calls leave the table as soon as they end.
        self.calls.active.len()
    }

    async fn send_call(&mut self, to: &str, via: Option<String>, m: &CallMessage) {
        self.notify(to, via, &Notice::Call { message: m.encode() }).await;
    }

    /// Carries out what a call's state machine asked for.
    async fn apply_call(&mut self, id: [u8; 16], actions: Vec<Action>) {
        let mut late_legs = Vec::new();
        let mut release = Vec::new();
        let mut nat_signals = Vec::new();
        let mut early_media = Vec::new();
        let relay_at_once = self.relay_only || self.relay_over_tcp();
        // Our candidates go with an Accept whose Reply withheld them; read (the machine's
        // interface addresses) only then.
        let accepting = actions.iter().any(|a| matches!(a, Action::Send(Signal::Accept)));
        let ours = match self.calls.active.get(&id) {
            Some(c) if accepting && c.withheld => self.candidates(&c.peer),
            _ => Vec::new(),
        };
        for a in actions {
            let Some(c) = self.calls.active.get_mut(&id) else { break };
            match a {
                // The callee's ringing (or busy) goes out as its signed reply: mutual
                // authentication and the callee's key share travel with the first answer.
                Action::Send(Signal::Ringing | Signal::Busy) if c.call.role() == Role::Callee && c.reply.is_some() => {
                    let (peer, via) = (c.peer.clone(), c.peer_supernode.clone());
                    if let Some(reply) = c.reply.take().map(CallMessage::Reply) {
                        self.send_call(&peer, Some(via), &reply).await;
                    }
                }
                Action::Send(s) => {
                    let s = match s {
                        Signal::Accept if c.withheld => Signal::AcceptAt { candidates: ours.clone() },
                        s => s,
                    };
                    let m = CallMessage::Signal(c.channel.seal(s));
                    let (peer, via) = (c.peer.clone(), c.peer_supernode.clone());
                    self.send_call(&peer, Some(via), &m).await;
                }
                Action::StartMedia => {
                    let codec = c.codec.unwrap_or(Codec::L16);
                    let Some(key) = c.key.as_ref() else {
                        tracing::warn!("media asked for before the call's key is known");
                        continue;
                    };
                    let source = std::mem::take(&mut c.source);
                    let (peer, timing) = super::media::search_plan(
                        self.report.nat,
                        relay_at_once,
                        self.udp6.is_some(),
                        self.report.public_addr.ip().is_loopback(),
                        &c.peer_candidates,
                    );
                    let setup = super::media::Setup {
                        call_id: &id,
                        key,
                        role: c.call.role(),
                        codec,
                        peer: &peer,
                        timing,
                        public: self.report.nat == crate::nat::NatKind::None,
                        nat: self.report.nat,
                        seed: crate::crypto::random::u64(),
                        relay_only: self.relay_only,
                    };
                    match super::media::CallMedia::new(setup, source, now_ms()) {
                        Ok(mut m) => {
                            m.set_recording(c.record);
                            // Whether punching needs the birthday technique depends on
                            // both NATs: tell the other side ours.
                            nat_signals
                                .push(CallMessage::Signal(c.channel.seal(Signal::Nat { kind: self.report.nat })));
                            if let Some(kind) = c.peer_nat.take() {
                                let mut out = Vec::new();
                                let allowed = self.birthday.allowed(now_ms());
                                m.on_peer_nat(kind, allowed, now_ms(), &mut out);
                                if m.birthday_ran() {
                                    self.birthday.spend(now_ms());
                                }
                                early_media.extend(out);
                            }
                            c.media = Some(m);
                            // A leg that came while ringing: connected now, if over TCP.
                            late_legs.extend(c.pending_relay.take());
                        }
                        Err(e) => tracing::warn!(error = %e, "no codec for the call"),
                    }
                }
                Action::StopMedia => {
                    if let Some(s) = c.relay_session.take() {
                        release.push(s);
                    }
                    for leg in c.media.as_ref().and_then(|m| m.relay_leg()).into_iter().chain(c.pending_relay.take()) {
                        self.calls.relay_conns.remove(&leg.session);
                    }
                    if let Some(mut m) = c.media.take() {
                        let report = CallReport { media: m.report(), heard: m.take_heard() };
                        if self.calls.finished.len() >= FINISHED_KEPT_MAX {
                            self.calls.finished.pop_front();
                        }
                        self.calls.finished.push_back((id, report));
                    }
                }
                Action::Report(state) => {
                    match state {
                        State::Connected(p) if c.connected.is_none() => {
                            c.connected = Some((p, now_ms().saturating_sub(c.began_ms)));
                        }
                        // The caller tells its super node how the call went (labels only),
                        // so operators see calls by path and their setup time.
                        State::Ended(reason) if c.call.role() == Role::Caller => {
                            let (path, setup) = c.connected.map_or(("none", 0), |(p, ms)| (p.label(), ms));
                            let stats = crate::wire::message::CallStats {
                                path: path.into(),
                                outcome: reason.label().into(),
                                setup_ms: setup.min(u64::from(u32::MAX)) as u32,
                            };
                            self.shell.call_stats(stats);
                        }
                        _ => {}
                    }
                    let Some(c) = self.calls.active.get_mut(&id) else { break };
                    let (peer, codec) = (c.peer.clone(), c.codec);
                    self.events.push_back(Event::Call { call_id: call_id_hex(&id), peer, state: state.into(), codec });
                }
            }
        }
        if let Some(c) = self.calls.active.get(&id) {
            let (peer, via) = (c.peer.clone(), c.peer_supernode.clone());
            for m in nat_signals {
                self.send_call(&peer, Some(via.clone()), &m).await;
            }
        }
        self.send_media(early_media).await;
        for leg in late_legs {
            self.relay_leg_ready(id, leg).await;
        }
        for session in release {
            self.release_relay(session).await;
        }
        // Ended calls leave nothing behind but their id (against replays).
        self.calls.active.retain(|_, c| !c.call.is_over());
    }

    /// A call message arrived through our super node.
    pub(super) async fn on_call_message(&mut self, bytes: &[u8]) {
        let m = match CallMessage::decode(bytes) {
            Ok(m) => m,
            Err(e) => {
                tracing::debug!(error = %e, "dropped a malformed call message");
                return;
            }
        };
        let id = m.call_id();
        match m {
            CallMessage::Invite(invite) => self.on_invite(invite).await,
            CallMessage::Reply(reply) => {
                let Some(c) = self.calls.active.get_mut(&id) else { return };
                let Some((invite, offer)) = c.invite.as_ref() else { return };
                let key = reply.verify(invite, &self.trusted, now_ms()).and_then(|_| offer.key(invite, &reply));
                match key {
                    Ok(key) => {
                        c.channel.set_key(&key);
                        c.key = Some(key);
                        c.codec = Some(reply.body.codec);
                        c.peer_candidates = reply.body.candidates.clone();
                        c.invite = None;
                        let answer = if reply.body.busy { Signal::Busy } else { Signal::Ringing };
                        let mut actions = c.call.on_signal(answer, now_ms());
                        for s in std::mem::take(&mut c.early) {
                            match c.channel.open(&s) {
                                // The callee's NAT kind, overtaking its reply: kept for
                                // when our media starts (with the Accept, perhaps below).
                                Some(Signal::Nat { kind }) => c.peer_nat = Some(kind),
                                // Where the callee went, overtaking its reply.
                                Some(Signal::Moved { supernode })
                                    if !supernode.is_empty()
                                        && supernode.len() <= crate::wire::message::SUPERNODE_NAME_LEN_MAX =>
                                {
                                    c.peer_supernode = supernode;
                                }
                                Some(signal) => {
                                    let signal = c.take_candidates(signal);
                                    actions.extend(c.call.on_signal(signal, now_ms()));
                                }
                                None => {}
                            }
                        }
                        self.apply_call(id, actions).await;
                    }
                    Err(e) => tracing::info!(error = %e, "dropped a call reply that does not verify"),
                }
            }
            CallMessage::Signal(s) => {
                let tcp = self.relay_over_tcp();
                let Some(c) = self.calls.active.get_mut(&id) else { return };
                // Before the reply, a caller cannot open the callee's signals (the key
                // needs the callee's share): keep a few until it comes.
                if !c.channel.can_open() {
                    if c.early.len() < EARLY_SIGNALS_MAX {
                        c.early.push(s);
                    }
                    return;
                }
                match c.channel.open(&s) {
                    // Only the caller opens relays: a callee's "leg" would only make us
                    // probe an address of its choosing.
                    Some(Signal::Relay { .. }) if c.call.role() == Role::Caller => {
                        tracing::debug!("dropped a relay leg sent by the callee");
                    }
                    // Our leg's token, sealed to our key by the caller's super node.
                    Some(Signal::Relay { relay, session, leg }) => {
                        match crate::relay::handoff::open(&self.key, session, &leg) {
                            Ok(token) => self.relay_leg_ready(id, RelayLeg { addr: relay, session, token, tcp }).await,
                            // Anyone can seal a leg to our key: not worth more than debug.
                            Err(e) => tracing::debug!(error = %e, "dropped a relay leg that does not open"),
                        }
                    }
                    Some(Signal::Moved { supernode }) => {
                        if supernode.is_empty() || supernode.len() > crate::wire::message::SUPERNODE_NAME_LEN_MAX {
                            tracing::debug!("dropped a Moved signal naming no super node");
                            return;
                        }
                        // Only a change counts: a peer repeating Moved would otherwise spend
                        // our request budget on relay offers.
                        if supernode == c.peer_supernode {
                            return;
                        }
                        tracing::info!(peer = %c.peer, %supernode, "the other side of a call moved to another super node");
                        c.peer_supernode = supernode;
                        c.call.on_heard(now_ms());
                        // Our relay offer may have gone to the super node it lost: again at
                        // once, unless one went out in the last half of the repeat time.
                        if let Some(offer) = c.relay_offer_due(now_ms(), RELAY_OFFER_REPEAT_MS / 2) {
                            let m = CallMessage::Signal(c.channel.seal(offer));
                            let (peer, via) = (c.peer.clone(), c.peer_supernode.clone());
                            self.send_call(&peer, Some(via), &m).await;
                        }
                    }
                    Some(Signal::Nat { kind }) => {
                        let mut out = Vec::new();
                        match c.media.as_mut() {
                            Some(m) => {
                                let ran = m.birthday_ran();
                                m.on_peer_nat(kind, self.birthday.allowed(now_ms()), now_ms(), &mut out);
                                if !ran && m.birthday_ran() {
                                    self.birthday.spend(now_ms());
                                }
                            }
                            None => c.peer_nat = Some(kind),
                        }
                        self.send_media(out).await;
                        self.service_probe_sockets().await;
                    }
                    Some(signal) => {
                        let signal = c.take_candidates(signal);
                        let actions = c.call.on_signal(signal, now_ms());
                        self.apply_call(id, actions).await;
                    }
                    None => tracing::debug!("dropped a call signal that does not open"),
                }
            }
        }
    }

    async fn on_invite(&mut self, invite: Invite) {
        let me = self.credential.subject.clone();
        let opened = match invite.open(&self.trusted, &me, &self.key, now_ms(), INVITE_WINDOW_MS) {
            Ok(o) => o,
            Err(e) => {
                tracing::info!(error = %e, caller = %invite.body.caller, "refused an invite");
                return;
            }
        };
        if !self.calls.remember(opened.call_id) {
            tracing::info!(caller = %invite.body.caller, "refused a replayed invite");
            return;
        }
        if self.buddies.relation(&opened.caller.subject) == Some(crate::buddy::Relation::Blocked) {
            tracing::info!(caller = %opened.caller.subject, "ignored an invite from a blocked user");
            return;
        }
        // Invisible means offline to everyone but buddies: a stranger's invite gets no
        // answer at all (not even Busy), so it cannot tell we are there.
        if self.status == crate::index::Status::Invisible
            && self.buddies.relation(&opened.caller.subject) != Some(crate::buddy::Relation::Authorized)
        {
            tracing::info!(caller = %opened.caller.subject, "invisible: ignored an invite from someone not a buddy");
            return;
        }
        // A busy callee says so in its signed reply, with no candidates. A caller who is
        // not an authorized buddy learns where we are only if the user accepts: a
        // stranger's ringing call reveals no address.
        let busy = self.calls.busy();
        let buddy = self.buddies.relation(&opened.caller.subject) == Some(crate::buddy::Relation::Authorized);
        let candidates = if buddy { self.candidates(&opened.caller.subject) } else { Vec::new() };
        let (reply, key) = match Reply::make(&opened, &self.credential, &self.key, &CODECS, busy, candidates, now_ms())
        {
            Ok(r) => r,
            Err(CallError::NoCodec) => {
                tracing::info!(caller = %opened.caller.subject, "no codec in common; call refused");
                return;
            }
            Err(e) => {
                tracing::info!(error = %e, "could not answer an invite");
                return;
            }
        };
        let id = opened.call_id;
        let (call, actions) = Call::incoming(now_ms(), self.call_timeouts.clone(), busy);
        let channel = SignalChannel::callee(&opened, &key);
        let mut c = ActiveCall::new(opened.caller.clone(), invite.body.supernode.clone(), call, channel, Some(key));
        c.codec = Some(reply.body.codec);
        c.reply = Some(reply);
        c.withheld = !buddy;
        c.peer_candidates = opened.candidates;
        self.calls.active.insert(id, c);
        self.apply_call(id, actions).await;
    }

    /// Ends calls whose state timed out.
    pub(super) async fn tick_calls(&mut self) {
        let now = now_ms();
        let due: Vec<[u8; 16]> = self
            .calls
            .active
            .iter()
            .filter(|(_, c)| c.call.deadline_ms().is_some_and(|d| d <= now))
            .map(|(id, _)| *id)
            .collect();
        for id in due {
            if let Some(c) = self.calls.active.get_mut(&id) {
                let actions = c.call.tick(now);
                self.apply_call(id, actions).await;
            }
        }
    }

    /// Where `peer` may send us media: the address our super node sees, our own when
    /// there is no NAT between us and the internet (the same address: a direct path),
    /// and our interface addresses if `host.local_candidates` lets `peer` see them (two
    /// hosts behind one NAT reach each other there).
    fn candidates(&self, peer: &str) -> Vec<Candidate> {
        if self.relay_only || self.relay_over_tcp() {
            return Vec::new();
        }
        let public = self.report.public_addr;
        let mut v = vec![Candidate { kind: CandidateKind::Public, addr: public }];
        if self.report.nat == crate::nat::NatKind::None {
            v.push(Candidate { kind: CandidateKind::Host, addr: public });
        }
        let buddy = self.buddies.relation(peer) == Some(crate::buddy::Relation::Authorized);
        if self.rejoin.settings.local_candidates.offer_to(buddy) {
            let (port, v6) = (self.report.local_port, self.udp6.is_some());
            for addr in super::interfaces::offerable(super::interfaces::addresses(), port, v6, public) {
                v.push(Candidate { kind: CandidateKind::Host, addr });
            }
        }
        v
    }

    /// What to play into call `id` (48 kHz mono samples; silence after).
    pub fn set_call_audio(&mut self, id: [u8; 16], samples: Vec<i16>) {
        if let Some(c) = self.calls.active.get_mut(&id) {
            c.source = samples;
        }
    }

    /// The report of an ended call (what it carried, what we heard); once.
    pub fn take_call_report(&mut self, id: [u8; 16]) -> Option<CallReport> {
        let i = self.calls.finished.iter().position(|(f, _)| *f == id)?;
        self.calls.finished.remove(i).map(|(_, r)| r)
    }

    /// Keeps what call `id` sounds like at our end, for its report (off by default: an
    /// hour of a call is 345 MB of samples).
    pub fn set_call_recording(&mut self, id: [u8; 16], on: bool) {
        if let Some(c) = self.calls.active.get_mut(&id) {
            c.record = on;
            if let Some(m) = c.media.as_mut() {
                m.set_recording(on);
            }
        }
    }

    /// A datagram on port P that looks like media.
    pub(super) async fn on_media_datagram(&mut self, from: SocketAddr, datagram: Vec<u8>) {
        let Some((tag, packet, relay_session)) = super::media::demux(&datagram) else { return };
        let now = now_ms();
        let Some((id, c)) =
            self.calls.active.iter_mut().find(|(id, c)| crate::call::media::call_tag(id) == tag && c.media.is_some())
        else {
            return;
        };
        let id = *id;
        let Some(m) = c.media.as_mut() else { return };
        // A relayed packet counts only through our own leg of this call's relay session.
        let via = match relay_session {
            None => None,
            Some(s) => match m.relay_leg() {
                Some(leg) if leg.session == s && leg.addr == from => Some(leg),
                _ => return,
            },
        };
        let mut out = Vec::new();
        let (heard, chosen) = m.on_datagram(from, packet, via, None, now, &mut out);
        if heard {
            c.call.on_heard(now);
        }
        let actions = chosen.map(|p| c.call.on_media_up(p, now)).unwrap_or_default();
        self.send_media(out).await;
        self.apply_call(id, actions).await;
    }

    /// A datagram came to one of a call's extra sockets.
    pub(super) async fn on_probe_datagram(&mut self, d: super::probe_sockets::ProbeDatagram) {
        let Some((tag, packet, None)) = super::media::demux(&d.bytes) else { return };
        let now = now_ms();
        let Some(c) = self.calls.active.get_mut(&d.call) else { return };
        if crate::call::media::call_tag(&d.call) != tag {
            return;
        }
        let Some(m) = c.media.as_mut() else { return };
        let mut out = Vec::new();
        let (heard, chosen) = m.on_datagram(d.from, packet, None, Some(d.socket), now, &mut out);
        if heard {
            c.call.on_heard(now);
        }
        let actions = chosen.map(|p| c.call.on_media_up(p, now)).unwrap_or_default();
        self.send_media(out).await;
        self.apply_call(d.call, actions).await;
        self.service_probe_sockets().await;
    }

    /// Opens and closes the extra sockets the calls' path searches ask for (at most
    /// `probe_sockets::OPEN_MAX` across calls).
    async fn service_probe_sockets(&mut self) {
        let now = now_ms();
        let mut open: usize =
            self.calls.active.values().filter_map(|c| c.probe_sockets.as_ref()).map(|p| p.open_count()).sum();
        let mut out = Vec::new();
        for (id, c) in self.calls.active.iter_mut() {
            let Some(m) = c.media.as_mut() else { continue };
            if let Some(keep) = m.take_socket_close()
                && let Some(p) = c.probe_sockets.as_mut()
            {
                open -= p.open_count();
                p.close_except(&keep);
                open += p.open_count();
            }
            if let Some((n, peer)) = m.take_socket_request() {
                let room = super::probe_sockets::OPEN_MAX.saturating_sub(open);
                let n = n.min(u16::try_from(room).unwrap_or(u16::MAX));
                let p = super::probe_sockets::ProbeSockets::open(n, *id, peer, &self.calls.probe_tx);
                let opened = p.open_count();
                open += opened;
                tracing::debug!(asked = n, opened, "opened probe sockets for the birthday technique");
                c.probe_sockets = Some(p);
                m.sockets_opened(opened as u16, now, &mut out);
            }
        }
        self.send_media(out).await;
    }

    /// The 20 ms media clock.
    pub(super) async fn media_tick(&mut self) {
        let now = now_ms();
        let mut out = Vec::new();
        let mut ups = Vec::new();
        let mut silent = false;
        for (id, c) in self.calls.active.iter_mut() {
            let connected = matches!(c.call.state(), State::Connected(_));
            let Some(m) = c.media.as_mut() else { continue };
            if let Some(p) = m.tick(connected, now, &mut out) {
                ups.push((*id, c.call.on_media_up(p, now)));
            }
            silent |= m.take_silence();
        }
        if silent {
            // The super node that failed may be ours, on either side of the call: a relay
            // there, or nothing of the media path at all but still the way the other
            // side's signals reach us. Ask it now (a second to answer) rather than wait
            // for the link's own silence limit; if it is gone the link ends and the event
            // loop connects to another super node. This never waits.
            self.shell.check();
        }
        self.send_media(out).await;
        for (id, actions) in ups {
            self.apply_call(id, actions).await;
        }
        let mut offers = Vec::new();
        for c in self.calls.active.values_mut() {
            if let Some(offer) = c.relay_offer_due(now, RELAY_OFFER_REPEAT_MS) {
                offers.push((c.peer.clone(), c.peer_supernode.clone(), CallMessage::Signal(c.channel.seal(offer))));
            }
        }
        for (peer, via, m) in offers {
            self.send_call(&peer, Some(via), &m).await;
        }
        self.service_probe_sockets().await;
        self.open_requested_relays().await;
    }

    /// Opens the relays the path searches asked for (the caller's side): our leg goes to
    /// the search, the other leg's token to the callee, sealed end to end.
    async fn open_requested_relays(&mut self) {
        let wanted: Vec<[u8; 16]> = self
            .calls
            .active
            .iter_mut()
            .filter_map(|(id, c)| c.media.as_mut().is_some_and(|m| m.take_relay_request()).then_some(*id))
            .collect();
        if !wanted.is_empty() && self.keepalive(Duration::from_secs(1)).await.is_none() {
            // A relay that died mid-call may have been our own super node: find another
            // first, and open the new relay there.
            if let Err(e) = self.reconnect().await {
                tracing::warn!(error = %e, "no super node answers; the calls end if their media does not come back");
                return;
            }
        }
        for id in wanted {
            let Some(peer) = self.calls.active.get(&id).map(|c| c.peer_credential.clone()) else { continue };
            let grant = match self.allocate_relay(&peer).await {
                Ok(g) => g,
                Err(e) => {
                    tracing::warn!(error = %e, "no relay for the call; it ends if no other path comes up");
                    continue;
                }
            };
            let Some(relay) = grant.relay else { continue };
            let Some(c) = self.calls.active.get_mut(&id) else {
                self.release_relay(grant.session).await;
                continue;
            };
            // A relay session we opened before, now failed: free it, if its node lives.
            let old = c.relay_session.replace(grant.session);
            let theirs = Signal::Relay { relay, session: grant.session, leg: grant.leg_b };
            c.relay_offer = Some((theirs.clone(), now_ms()));
            let sealed = CallMessage::Signal(c.channel.seal(theirs));
            let (peer, via) = (c.peer.clone(), c.peer_supernode.clone());
            self.send_call(&peer, Some(via), &sealed).await;
            let ours =
                RelayLeg { addr: relay, session: grant.session, token: grant.token_a, tcp: self.relay_over_tcp() };
            self.relay_leg_ready(id, ours).await;
            if let Some(old) = old {
                self.release_relay(old).await;
            }
        }
    }

    /// We moved to another super node after losing `lost`: tells the other side of each
    /// call where its signals reach us now. Signals travel through the receiver's super
    /// node (the `via` of a Forward), and the other side knows ours only from the invite
    /// or its lookup: without this, its hang-up or its next relay leg would go to the
    /// super node we lost. A peer whose super node was that one too is addressed by
    /// lookup (no `via`) until it tells us where it went.
    pub(super) async fn tell_calls_we_moved(&mut self, lost: &str) {
        let here = self.report.supernode.clone();
        let mut out = Vec::new();
        for c in self.calls.active.values_mut().filter(|c| !c.call.is_over()) {
            if c.peer_supernode == lost {
                c.peer_supernode.clear();
            }
            let m = CallMessage::Signal(c.channel.seal(Signal::Moved { supernode: here.clone() }));
            out.push((c.peer.clone(), c.peer_supernode.clone(), m));
        }
        for (peer, via, m) in out {
            self.send_call(&peer, Some(via), &m).await;
        }
    }

    /// The super node call `id`'s signals go through to reach the other side (for tests:
    /// it follows the other side's Moved).
    #[doc(hidden)]
    pub fn call_peer_supernode(&self, id: [u8; 16]) -> Option<String> {
        self.calls.active.get(&id).map(|c| c.peer_supernode.clone())
    }

    /// Where the other side of call `id` said it receives media, so far (a caller who is
    /// not the callee's buddy learns it only when the call is accepted).
    pub fn call_peer_candidates(&self, id: [u8; 16]) -> Option<Vec<Candidate>> {
        self.calls.active.get(&id).map(|c| c.peer_candidates.clone())
    }

    /// How call `id` is doing so far (path, frames, loss, jitter), while it lasts.
    pub fn call_media(&self, id: [u8; 16]) -> Option<super::media::MediaReport> {
        self.calls.active.get(&id)?.media.as_ref().map(|m| m.report())
    }

    /// Our leg of a relay session for call `id` is known: connect to the relay if we
    /// reach it over TCP, then hand the leg to the call's path search (or keep it until
    /// media starts).
    async fn relay_leg_ready(&mut self, id: [u8; 16], leg: RelayLeg) {
        let Some(c) = self.calls.active.get_mut(&id) else { return };
        if c.media.is_none() {
            // Not accepted yet: keep the latest leg and connect nowhere. A ringing phone
            // reaches out to no address a caller chose (anyone can seal a leg to our key,
            // so its relay address proves nothing until the user takes the call).
            c.pending_relay = Some(leg);
            return;
        }
        // The same leg offered again (the caller repeats its offer until a path is up):
        // keep the connection we have. The relay latches a leg to its first TCP
        // connection for good, so a second one would cut the leg off.
        let same = c.media.as_ref().and_then(|m| m.relay_leg()) == Some(leg);
        if leg.tcp && !(same && self.calls.relay_conns.contains_key(&leg.session)) {
            match super::relay_tcp::RelayConn::open(leg.addr, self.shell.media_in.clone()).await {
                Ok(conn) => {
                    self.calls.relay_conns.insert(leg.session, conn);
                }
                Err(e) => {
                    tracing::warn!(relay = %leg.addr, error = %e, "could not reach the relay over TCP");
                    return;
                }
            }
        }
        let Some(c) = self.calls.active.get_mut(&id) else {
            self.calls.relay_conns.remove(&leg.session);
            return;
        };
        let Some(m) = c.media.as_mut() else {
            self.calls.relay_conns.remove(&leg.session);
            return;
        };
        // A replaced leg's connection goes with it.
        if let Some(old) = m.relay_leg().filter(|old| old.session != leg.session) {
            self.calls.relay_conns.remove(&old.session);
        }
        let mut out = Vec::new();
        m.relay_ready(leg, now_ms(), &mut out);
        self.send_media(out).await;
    }

    /// Whether our relay legs go over TCP: when we have no UDP (we logged in over TCP
    /// because UDP is blocked), or when asked to.
    fn relay_over_tcp(&self) -> bool {
        self.relay_tcp || self.link_over_tcp()
    }

    /// Reach relays over TCP, as a host whose UDP is blocked does (for networks that let
    /// only TCP out, and tests); implies relay only.
    pub fn set_relay_tcp(&mut self, on: bool) {
        self.relay_tcp = on;
    }

    /// Relay only: media goes through a super node's relay, never straight to the other
    /// host (which then never learns our address from the media path).
    pub fn set_relay_only(&mut self, on: bool) {
        self.relay_only = on;
    }

    /// Whether the link to our super node is over TCP (we logged in that way because
    /// UDP is blocked): media then goes through relay legs over TCP only.
    fn link_over_tcp(&self) -> bool {
        self.report.transport == Transport::Tcp.label()
    }

    /// Sends media without waiting: a full socket buffer (or relay leg queue) drops the
    /// datagram, as the network would.
    async fn send_media(&self, out: Vec<super::media::Outgoing>) {
        let over_tcp = self.link_over_tcp();
        for o in out {
            if let Some((call, socket)) = o.local {
                let udp = self.calls.active.get(&call).and_then(|c| c.probe_sockets.as_ref()?.get(socket));
                if let Some(udp) = udp {
                    super::shell::send_now(udp, &o.bytes, o.to);
                }
                continue;
            }
            match o.tcp {
                Some(session) => {
                    if let Some(conn) = self.calls.relay_conns.get(&session) {
                        conn.send(o.bytes);
                    }
                }
                // Port P on IPv6 carries media whatever the link's transport.
                None if o.to.is_ipv6() || !over_tcp => self.shell.send_udp(&o.bytes, o.to),
                None => {}
            }
        }
    }

    /// Sets the call timeouts (tests shorten them).
    pub fn set_call_timeouts(&mut self, t: Timeouts) {
        self.call_timeouts = t;
    }
}

/// A call's state for events and JSON.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case", tag = "state")]
pub enum CallState {
    /// Invite sent.
    Inviting,
    /// The callee's host rings.
    Ringing,
    /// Accepted; finding a media path.
    Connecting,
    /// Media flows.
    Connected {
        /// The path.
        path: &'static str,
    },
    /// Over.
    Ended {
        /// Why.
        reason: &'static str,
    },
}

impl From<State> for CallState {
    fn from(s: State) -> Self {
        match s {
            State::Inviting => Self::Inviting,
            State::Ringing => Self::Ringing,
            State::Connecting => Self::Connecting,
            State::Connected(p) => Self::Connected { path: p.label() },
            State::Ended(r) => Self::Ended { reason: r.label() },
        }
    }
}

impl Session {
    /// Opens a relay session at our super node for a call with the holder of `peer` (a
    /// verified host credential); leg A is ours, leg B's token comes sealed to `peer`'s
    /// key, for us to send on end to end.
    pub async fn allocate_relay(
        &mut self,
        peer: &crate::crypto::Credential,
    ) -> Result<crate::wire::message::RelayGrant, HostError> {
        use super::core::pending::{Answer, Request, RequestError};
        let g = match self.shell.request(Request::RelayAllocate { callee: peer.encode() }).await {
            Ok(Answer::Granted(g)) => g,
            Err(RequestError::Refused(e)) => {
                return Err(HostError::Refused(format!("no relay session: {}: {}", e.code.label(), e.detail)));
            }
            Err(RequestError::TimedOut(_)) => {
                return Err(HostError::Refused("the super node did not answer the relay request".into()));
            }
            other => return Err(HostError::Refused(format!("no relay session: {other:?}"))),
        };
        if g.code != 0 {
            let code = crate::wire::ErrorCode::from_code(g.code);
            return Err(HostError::Refused(format!("no relay session: {}", code.label())));
        }
        Ok(g)
    }

    /// Our host credential (what another host's super node seals our relay leg to).
    pub fn credential(&self) -> &crate::crypto::Credential {
        &self.credential
    }

    /// Opens the token of leg B of relay `session`, sealed to our key by the super node
    /// of the host that opened the session for a call with us.
    pub fn open_relay_leg(&self, session: u32, sealed: &[u8]) -> Result<[u8; 16], HostError> {
        crate::relay::handoff::open(&self.key, session, sealed).map_err(|e| HostError::Refused(e.to_string()))
    }

    /// Frees a relay session we opened.
    pub async fn release_relay(&mut self, session: u32) {
        self.shell.release_relay(session);
    }
}
