//! A call's media on the host: the path search, sealing and opening packets, the voice
//! codec, the jitter buffer, what we play and what we hear. The session drives it with
//! the datagrams port P receives and a 20 ms clock; it decides nothing about sockets.

use crate::call::codec::{FRAME_SAMPLES, VoiceCodec};
use crate::call::invite::{Candidate, CandidateKind, Codec, MediaKey};
use crate::call::jitter::{JitterBuffer, Playout};
use crate::call::media::{self, Kind, MediaReceiver, MediaSender};
use crate::call::path::{PathAction, PathFinder, PathTiming, RelayLeg, Route};
use crate::call::signal::{Path, Role};
use std::net::SocketAddr;

/// Playout delay of the jitter buffer.
const PLAYOUT_DELAY_MS: u64 = 60;
/// Silence on the chosen path (the other side sends a frame every 20 ms) after which it
/// is taken for dead and the path search starts again: a relay that died, a NAT
/// mapping that went.
pub(super) const PATH_SILENCE_MS: u64 = 1500;

/// What a call carried, for its report.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize)]
pub struct MediaReport {
    /// The path media took.
    pub path: Option<&'static str>,
    /// Voice frames sent.
    pub sent: u64,
    /// Voice frames received in time.
    pub received: u64,
    /// Frames lost: missing at their turn while later ones had come, or arriving after it.
    pub lost: u64,
    /// Packets dropped: forged, replayed, for another call.
    pub rejected: u64,
    /// Mean interarrival jitter (RFC 3550), milliseconds.
    pub jitter_ms: f64,
    /// Times the path failed mid-call and media found another (a relay replaced).
    pub path_restarts: u32,
    /// From the answer to media flowing, milliseconds.
    pub setup_ms: Option<u64>,
    /// From the answer to the path in use at the end (later than `setup_ms` when a
    /// better path replaced the first), milliseconds.
    pub path_ms: Option<u64>,
    /// How late the 20 ms media clock ticked (the gap between two ticks beyond 20 ms), 99th
    /// percentile: a loop that waits on the network shows here.
    pub tick_late_ms_p99: u64,
    /// The same, the worst tick.
    pub tick_late_ms_max: u64,
    /// What the birthday technique spent, when it ran (a cone NAT and a symmetric one).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hard_nat: Option<crate::call::path::HardNatReport>,
}

/// What a call's media starts from.
pub(super) struct Setup<'a> {
    /// The call.
    pub call_id: &'a [u8; 16],
    /// Its media key.
    pub key: &'a MediaKey,
    /// Our side.
    pub role: Role,
    /// The codec agreed.
    pub codec: Codec,
    /// Where the other side receives media (empty: relay only).
    pub peer: &'a [Candidate],
    /// The path search's timing.
    pub timing: PathTiming,
    /// We have a public address.
    pub public: bool,
    /// Our NAT's kind.
    pub nat: crate::nat::NatKind,
    /// A seed for the probe nonces and the ports the birthday technique draws.
    pub seed: u64,
    /// Relay only: nothing straight, not even an answer to a probe that came straight.
    pub relay_only: bool,
}

/// Which of the other side's `peer` candidates a call's path search tries, and when it
/// asks for the relay, for a host behind `nat` (`relay_at_once`: relay only, or no UDP
/// here; `v6`: the host has IPv6; `loopback`: its address is a loopback one, as in tests).
pub(super) fn search_plan(
    nat: crate::nat::NatKind,
    relay_at_once: bool,
    v6: bool,
    loopback: bool,
    peer: &[Candidate],
) -> (Vec<Candidate>, PathTiming) {
    let at_once = PathTiming { punch_ms: 0, ..PathTiming::default() };
    if relay_at_once {
        // No direct probes either way, and the relay at once.
        return (Vec::new(), at_once);
    }
    // What we can and may try: IPv6 ones only with IPv6 here; never a multicast,
    // broadcast or unspecified address, nor a loopback one unless we are on loopback
    // ourselves (a peer names what it likes).
    let reachable: Vec<Candidate> = peer
        .iter()
        .filter(|p| v6 || p.addr.is_ipv4())
        .filter(|p| usable_peer_address(p.addr.ip(), loopback))
        .copied()
        .collect();
    // Behind a symmetric NAT, towards a host that is itself behind a NAT, plain punching
    // cannot work (our mapping towards it is not the one it knows): the relay at once,
    // while probes still go out in case (to its LAN addresses, say, or the birthday
    // technique's: an answer there replaces the relay).
    let hopeless = nat == crate::nat::NatKind::Symmetric
        && !reachable.iter().any(|p| p.kind == CandidateKind::Host && !crate::call::path::is_private(p.addr.ip()));
    if hopeless { (reachable, at_once) } else { (reachable, PathTiming::default()) }
}

/// Whether a media candidate the other side offered may be probed at all.
fn usable_peer_address(ip: std::net::IpAddr, we_are_on_loopback: bool) -> bool {
    let special = match ip {
        std::net::IpAddr::V4(v4) => v4.is_multicast() || v4.is_broadcast() || v4.is_unspecified(),
        std::net::IpAddr::V6(v6) => v6.is_multicast() || v6.is_unspecified(),
    };
    !special && (we_are_on_loopback || !ip.is_loopback())
}

/// How late a 20 ms clock ticks: a histogram of the gaps between ticks beyond 20 ms, in
/// whole milliseconds up to a second (later ones count as a second).
#[derive(Debug, Clone)]
pub struct TickLateness {
    last_ms: Option<u64>,
    counts: Vec<u32>,
    max_ms: u64,
}

impl Default for TickLateness {
    fn default() -> Self {
        Self { last_ms: None, counts: vec![0; 1001], max_ms: 0 }
    }
}

impl TickLateness {
    /// The clock ticked at `now_ms`.
    pub fn tick(&mut self, now_ms: u64) {
        if let Some(last) = self.last_ms {
            let late = now_ms.saturating_sub(last).saturating_sub(20);
            self.max_ms = self.max_ms.max(late);
            self.counts[late.min(1000) as usize] += 1;
        }
        self.last_ms = Some(now_ms);
    }

    /// The lateness at quantile `q` (0..=1), 0 before two ticks.
    pub fn quantile(&self, q: f64) -> u64 {
        let n: u64 = self.counts.iter().map(|&c| u64::from(c)).sum();
        let want = (q * n as f64).ceil() as u64;
        let mut seen = 0;
        for (ms, &c) in self.counts.iter().enumerate() {
            seen += u64::from(c);
            if seen >= want.max(1) {
                return ms as u64;
            }
        }
        0
    }

    /// The worst lateness.
    pub fn max(&self) -> u64 {
        self.max_ms
    }
}

/// A datagram to send.
pub(super) struct Outgoing {
    pub to: SocketAddr,
    pub bytes: Vec<u8>,
    /// Through relay session `tcp`'s TCP connection rather than UDP.
    pub tcp: Option<u32>,
    /// From this call's extra socket (the birthday technique's), not port P.
    pub local: Option<([u8; 16], u16)>,
}

/// Flag in a probe's or answer's payload: the sender reaches the relay over TCP.
const PROBE_FLAG_TCP: u8 = 1;
/// Flag in a probe's or answer's payload: a nonce follows (a probe's own, or the one its
/// answer echoes). Probe and answer are the same size, so no answer is larger than its
/// question.
const PROBE_FLAG_NONCE: u8 = 2;

/// One call's media.
pub(super) struct CallMedia {
    call_id: [u8; 16],
    finder: PathFinder,
    tx: MediaSender,
    rx: MediaReceiver,
    jitter: JitterBuffer,
    codec: Box<dyn VoiceCodec + Send>,
    source: Vec<i16>,
    position: usize,
    timestamp: u32,
    heard: Vec<i16>,
    recording: bool,
    playing: bool,
    started_ms: u64,
    report: MediaReport,
    wants_relay: bool,
    /// When media started or last restarted its search (the silence on the chosen route
    /// counts from the later of this and the last packet heard on it).
    heard_ms: u64,
    /// Times the chosen path failed and the search started again.
    restarts: u32,
    /// Extra sockets the path search asked for, not yet opened.
    wants_sockets: Option<(u16, std::net::IpAddr)>,
    /// The path search is done with the extra sockets, but for these.
    close_sockets: Option<Vec<u16>>,
    /// How late the media clock ticks.
    lateness: TickLateness,
    /// The chosen path went silent since the session last asked.
    went_silent: bool,
    /// Where the other side's last authenticated packet came from, not through a relay
    /// (its address and our extra socket, if not port P): a file transfer's datagrams
    /// come from the same socket.
    heard_from: Option<(SocketAddr, Option<u16>)>,
}

fn relayed(leg: &crate::call::path::RelayLeg, packet: &[u8]) -> Vec<u8> {
    crate::relay::packet::build(
        crate::relay::packet::SessionId(leg.session),
        crate::relay::packet::Token::from_bytes(leg.token),
        packet,
    )
}

impl CallMedia {
    /// Media for `call` on our side, playing `source`.
    pub fn new(call: Setup<'_>, source: Vec<i16>, now_ms: u64) -> Result<Self, crate::call::codec::CodecError> {
        let Setup { call_id, key, role, codec, peer, timing, public, nat, seed, relay_only } = call;
        let mut finder = PathFinder::new(role, peer, timing, now_ms);
        finder.set_public(public);
        finder.set_nat(nat, seed);
        finder.set_relay_only(relay_only);
        Ok(Self {
            call_id: *call_id,
            finder,
            tx: MediaSender::new(call_id, key, role),
            rx: MediaReceiver::new(call_id, key, role),
            jitter: JitterBuffer::new(PLAYOUT_DELAY_MS),
            codec: crate::call::codec::voice_codec(codec)?,
            source,
            position: 0,
            timestamp: 0,
            heard: Vec::new(),
            recording: false,
            playing: false,
            started_ms: now_ms,
            report: MediaReport::default(),
            wants_relay: false,
            heard_ms: now_ms,
            restarts: 0,
            wants_sockets: None,
            close_sockets: None,
            lateness: TickLateness::default(),
            went_silent: false,
            heard_from: None,
        })
    }

    fn route_bytes(&self, route: Route, packet: Vec<u8>) -> Outgoing {
        match route {
            Route::To(to) => Outgoing { to, bytes: packet, tcp: None, local: None },
            Route::Via { socket, to } => Outgoing { to, bytes: packet, tcp: None, local: Some((self.call_id, socket)) },
            Route::Relay(leg) => Outgoing {
                to: leg.addr,
                bytes: relayed(&leg, &packet),
                tcp: leg.tcp.then_some(leg.session),
                local: None,
            },
        }
    }

    /// A probe's or answer's payload on `route`: flags (what it says about us), then the
    /// nonce (sealed with them).
    fn probe_payload(route: Route, nonce: u64) -> [u8; 9] {
        let mut p = [0u8; 9];
        p[0] = PROBE_FLAG_NONCE | if matches!(route, Route::Relay(leg) if leg.tcp) { PROBE_FLAG_TCP } else { 0 };
        p[1..].copy_from_slice(&nonce.to_be_bytes());
        p
    }

    /// The flags and nonce of a probe's or answer's payload (no nonce from a peer that
    /// sends none).
    fn parse_probe(payload: &[u8]) -> (u8, Option<u64>) {
        let flags = payload.first().copied().unwrap_or(0);
        let nonce = match payload.get(1..9) {
            Some(n) if flags & PROBE_FLAG_NONCE != 0 => n.try_into().ok().map(u64::from_be_bytes),
            _ => None,
        };
        (flags, nonce)
    }

    fn act(&mut self, actions: Vec<PathAction>, now_ms: u64, out: &mut Vec<Outgoing>) -> Option<Path> {
        let mut chosen = None;
        for a in actions {
            match a {
                PathAction::Probe { route, nonce } => {
                    let p = self.tx.seal(Kind::Probe, 0, &Self::probe_payload(route, nonce));
                    out.push(self.route_bytes(route, p));
                }
                PathAction::Answer { route, echo } => {
                    // A probe without a nonce (an older host's, one byte) gets an answer
                    // of its own size.
                    let mut payload = Self::probe_payload(route, echo);
                    let len = if echo == 0 {
                        payload[0] &= !PROBE_FLAG_NONCE;
                        1
                    } else {
                        payload.len()
                    };
                    let p = self.tx.seal(Kind::ProbeAck, 0, &payload[..len]);
                    out.push(self.route_bytes(route, p));
                }
                PathAction::AllocateRelay => self.wants_relay = true,
                PathAction::OpenSockets { n, peer } => self.wants_sockets = Some((n, peer)),
                PathAction::CloseSockets { keep } => self.close_sockets = Some(keep),
                PathAction::Chosen(_, path) => {
                    self.report.path = Some(path.label());
                    self.report.setup_ms.get_or_insert(now_ms.saturating_sub(self.started_ms));
                    self.report.path_ms = Some(now_ms.saturating_sub(self.started_ms));
                    chosen = Some(path);
                }
            }
        }
        chosen
    }

    /// A datagram for this call arrived from `from` (the relay header, if any, already
    /// seen: `via` is the relay leg it came through; `local`, the extra socket it came to,
    /// if not port P). Returns the path if one was chosen.
    pub fn on_datagram(
        &mut self,
        from: SocketAddr,
        packet: &[u8],
        via: Option<crate::call::path::RelayLeg>,
        local: Option<u16>,
        now_ms: u64,
        out: &mut Vec<Outgoing>,
    ) -> (bool, Option<Path>) {
        let opened = match self.rx.open(packet) {
            Ok(o) => o,
            Err(e) => {
                self.report.rejected += 1;
                tracing::debug!(reason = e.label(), %from, "dropped a media packet");
                return (false, None);
            }
        };
        let route = match (via, local) {
            (Some(leg), _) => Route::Relay(leg),
            (None, Some(socket)) => Route::Via { socket, to: from },
            (None, None) => Route::To(from),
        };
        if via.is_none() {
            self.heard_from = Some((from, local));
        }
        let chosen = match opened.kind {
            Kind::Probe => {
                let (_, nonce) = Self::parse_probe(&opened.payload);
                let a = self.finder.on_probe(route, nonce, now_ms);
                self.act(a, now_ms, out)
            }
            Kind::ProbeAck => {
                let (flags, echo) = Self::parse_probe(&opened.payload);
                let a = self.finder.on_answer(route, echo, flags & PROBE_FLAG_TCP != 0, now_ms);
                self.act(a, now_ms, out)
            }
            Kind::Voice => {
                // Frames are ordered by their timestamp, not the packet sequence number:
                // probes and answers share that sequence and would look like gaps.
                let frame = u64::from(opened.timestamp) / FRAME_SAMPLES as u64;
                self.jitter.push(frame, opened.timestamp, now_ms, opened.payload);
                let a = self.finder.on_voice(route, now_ms);
                self.act(a, now_ms, out)
            }
        };
        (true, chosen)
    }

    /// The 20 ms clock: probes while searching; once connected, one frame out and one
    /// frame played.
    pub fn tick(&mut self, connected: bool, now_ms: u64, out: &mut Vec<Outgoing>) -> Option<Path> {
        self.lateness.tick(now_ms);
        // Silence counts on the chosen route alone: a side whose packets go to a mapping
        // that died keeps hearing the other, by its new one, and must not think all is well.
        let heard = self.heard_ms.max(self.finder.chosen_heard_ms());
        if connected && self.finder.chosen().is_some() && now_ms.saturating_sub(heard) >= PATH_SILENCE_MS {
            tracing::info!(path = ?self.report.path, silent_ms = now_ms - heard, "media path went silent; searching again");
            self.restarts += 1;
            self.heard_ms = now_ms;
            self.went_silent = true;
            let a = self.finder.restart(now_ms);
            self.act(a, now_ms, out);
        }
        let a = self.finder.tick(now_ms);
        let chosen = self.act(a, now_ms, out);
        if !connected {
            return chosen;
        }
        // Time goes on while a failed path is replaced: the frames of the gap are lost,
        // and the timestamps of those after it say when they were spoken, so the other
        // side plays them in their place instead of dropping them as late.
        let mut frame = [0i16; FRAME_SAMPLES];
        if let Some(chunk) = self.source.get(self.position..) {
            let n = chunk.len().min(FRAME_SAMPLES);
            frame[..n].copy_from_slice(&chunk[..n]);
        }
        self.position += FRAME_SAMPLES;
        if let Some((route, _)) = self.finder.chosen() {
            match self.codec.encode(&frame) {
                Ok(bytes) => {
                    let p = self.tx.seal(Kind::Voice, self.timestamp, &bytes);
                    out.push(self.route_bytes(route, p));
                    self.report.sent += 1;
                }
                Err(e) => tracing::warn!(error = %e, "could not encode a frame"),
            }
        }
        self.timestamp = self.timestamp.wrapping_add(FRAME_SAMPLES as u32);
        match self.jitter.pop(now_ms) {
            Playout::Wait => {}
            Playout::Frame(bytes) => {
                self.playing = true;
                let pcm = self.codec.decode(&bytes).unwrap_or_else(|_| self.codec.conceal());
                if self.recording {
                    self.heard.extend(pcm);
                }
            }
            Playout::Lost => {
                if self.playing {
                    // Concealment keeps the decoder's state right even when nobody listens.
                    let pcm = self.codec.conceal();
                    if self.recording {
                        self.heard.extend(pcm);
                    }
                }
            }
        }
        chosen
    }

    /// Plays `source` from its start on, in place of what was playing (silence, for a
    /// call whose audio came after its media started).
    pub fn set_source(&mut self, source: Vec<i16>) {
        self.source = source;
        self.position = 0;
    }

    /// Whether the chosen path went silent (once; the session checks its super node,
    /// which may be what failed).
    pub fn take_silence(&mut self) -> bool {
        std::mem::take(&mut self.went_silent)
    }

    /// Whether media has a path now.
    pub fn has_path(&self) -> bool {
        self.finder.chosen().is_some()
    }

    /// Whether the path search asked for a relay (once; the session opens it).
    pub fn take_relay_request(&mut self) -> bool {
        std::mem::take(&mut self.wants_relay)
    }

    /// How many extra sockets the path search asked for (once; the session opens them).
    pub fn take_socket_request(&mut self) -> Option<(u16, std::net::IpAddr)> {
        self.wants_sockets.take()
    }

    /// Whether the path search is done with the extra sockets, and which to keep (once).
    pub fn take_socket_close(&mut self) -> Option<Vec<u16>> {
        self.close_sockets.take()
    }

    /// Whether the birthday technique has run in this call (the session counts runs).
    pub fn birthday_ran(&self) -> bool {
        self.finder.birthday_ran()
    }

    /// `n` extra sockets are open: probe from them.
    pub fn sockets_opened(&mut self, n: u16, now_ms: u64, out: &mut Vec<Outgoing>) -> Option<Path> {
        let a = self.finder.sockets_opened(n, now_ms);
        self.act(a, now_ms, out)
    }

    /// The other side told us its NAT's kind.
    /// The birthday technique runs if `allowed` (the session's budget).
    pub fn on_peer_nat(
        &mut self,
        kind: crate::nat::NatKind,
        allowed: bool,
        now_ms: u64,
        out: &mut Vec<Outgoing>,
    ) -> Option<Path> {
        let a = self.finder.on_peer_nat(kind, allowed, now_ms);
        self.act(a, now_ms, out)
    }

    /// Our relay leg is ready: probe through it.
    pub fn relay_ready(&mut self, leg: RelayLeg, now_ms: u64, out: &mut Vec<Outgoing>) -> Option<Path> {
        let a = self.finder.relay_ready(leg, now_ms);
        self.act(a, now_ms, out)
    }

    /// Our relay leg, if any (relayed datagrams for this call come through it).
    pub fn relay_leg(&self) -> Option<RelayLeg> {
        self.finder.relay()
    }

    /// A file transfer's datagram (its demux byte in front) on the chosen route, once one
    /// is chosen.
    pub fn file_datagram(&self, bytes: Vec<u8>) -> Option<Outgoing> {
        let (route, _) = self.finder.chosen()?;
        Some(self.route_bytes(route, bytes))
    }

    /// What the chosen route is, as a transfer's completion names it: `direct`,
    /// `punched`, `relay-udp` or `relay-tcp`.
    pub fn route_label(&self) -> Option<&'static str> {
        let (_, path) = self.finder.chosen()?;
        Some(match path {
            Path::Direct => "direct",
            Path::Punched => "punched",
            Path::RelayedUdp => "relay-udp",
            Path::RelayedTcp => "relay-tcp",
        })
    }

    /// Whether a datagram from `from` (through relay session `via`, or to extra socket
    /// `local`) came on a route of this call: our relay leg, where the other side's
    /// packets come from, or the chosen route.
    pub fn is_route_of(&self, from: SocketAddr, via: Option<u32>, local: Option<u16>) -> bool {
        match via {
            Some(session) => self.finder.relay().is_some_and(|l| l.session == session && l.addr == from),
            // The two sides may each choose another of the routes between them (an
            // interface address one way, the loopback the other): what the other side's
            // authenticated packets last came from counts too.
            None if self.heard_from == Some((from, local)) => true,
            None => match self.finder.chosen() {
                Some((Route::To(to), _)) => local.is_none() && to == from,
                Some((Route::Via { socket, to }, _)) => local == Some(socket) && to == from,
                _ => false,
            },
        }
    }

    /// The route media takes and its path, once one is chosen.
    #[cfg(test)]
    pub fn chosen_route(&self) -> Option<(Route, Path)> {
        self.finder.chosen()
    }

    /// What the call carried so far.
    pub fn report(&self) -> MediaReport {
        let s = self.jitter.stats();
        MediaReport {
            path_restarts: self.restarts,
            received: s.played,
            lost: s.concealed + s.late,
            jitter_ms: self.jitter.jitter_ms(),
            hard_nat: self.finder.hard_nat(),
            tick_late_ms_p99: self.lateness.quantile(0.99),
            tick_late_ms_max: self.lateness.max(),
            ..self.report.clone()
        }
    }

    /// Keep what we hear (for the call's report), or not.
    pub fn set_recording(&mut self, on: bool) {
        self.recording = on;
    }

    /// What we heard.
    pub fn take_heard(&mut self) -> Vec<i16> {
        std::mem::take(&mut self.heard)
    }
}

/// The call tag of a datagram on port P, and its media packet (inside a relay header or
/// not), with the relay session it came through.
pub(super) fn demux(datagram: &[u8]) -> Option<([u8; 8], &[u8], Option<u32>)> {
    if datagram.first() == Some(&crate::relay::packet::MAGIC) {
        let (session, _, inner) = crate::relay::packet::parse(datagram).ok()?;
        let (_, tag) = media::peek(inner)?;
        return Some((tag, inner, Some(session.0)));
    }
    let (_, tag) = media::peek(datagram)?;
    Some((tag, datagram, None))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_search_plan_asks_for_the_relay_at_once_only_where_punching_cannot_work() {
        use crate::nat::NatKind;
        let c = |kind, a: &str| Candidate { kind, addr: a.parse().unwrap() };
        let behind_nat = [c(CandidateKind::Public, "198.18.3.2:40000"), c(CandidateKind::Host, "10.0.0.2:40000")];
        let public = [c(CandidateKind::Public, "198.18.1.2:40000"), c(CandidateKind::Host, "198.18.1.2:40000")];
        let v6 = [c(CandidateKind::Public, "198.18.3.2:40000"), c(CandidateKind::Host, "[2001:2::2]:40000")];
        let plan = |nat, at_once, v6, peer: &[Candidate]| {
            let (peer, timing) = search_plan(nat, at_once, v6, false, peer);
            (peer.len(), timing.punch_ms)
        };
        let punch = PathTiming::default().punch_ms;
        assert_eq!(plan(NatKind::Cone, true, true, &public), (0, 0), "relay only: nothing to probe");
        assert_eq!(plan(NatKind::Cone, false, false, &behind_nat), (2, punch));
        assert_eq!(plan(NatKind::Symmetric, false, false, &behind_nat), (2, 0), "probes go, the relay at once");
        assert_eq!(plan(NatKind::Symmetric, false, false, &public), (2, punch), "a public host learns our mapping");
        assert_eq!(plan(NatKind::Cone, false, false, &v6), (1, punch), "no IPv6 here");
        assert_eq!(plan(NatKind::Symmetric, false, true, &v6), (2, punch), "a global address to meet on");
        let odd = [
            c(CandidateKind::Host, "224.0.0.1:1"),
            c(CandidateKind::Host, "127.0.0.1:1"),
            c(CandidateKind::Host, "0.0.0.0:1"),
        ];
        assert_eq!(plan(NatKind::Cone, false, true, &odd), (0, punch), "multicast, loopback, unspecified: never");
        assert_eq!(
            search_plan(NatKind::None, false, false, true, &odd[1..2]).0.len(),
            1,
            "loopback among loopback hosts"
        );
    }

    #[test]
    fn lateness_counts_the_gap_beyond_twenty_ms() {
        let mut l = TickLateness::default();
        assert_eq!((l.quantile(0.99), l.max()), (0, 0));
        let mut now = 1000;
        for i in 0..200u64 {
            now += 20 + if i % 100 == 99 { 300 } else { i % 3 };
            l.tick(now);
        }
        l.tick(now + 5000);
        assert_eq!(l.quantile(0.5), 1);
        assert_eq!(l.quantile(0.99), 300);
        assert_eq!(l.max(), 4980);
        assert_eq!(l.quantile(1.0), 1000, "the last bucket holds what is later than a second");
    }
}
