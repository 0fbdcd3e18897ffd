//! The relay's session table: shared by the worker threads (which read it once per
//! datagram through [`SessionTable::decide`]) and the control plane (one `RelaySession`
//! actor per call, which allocates, watches and releases sessions).
//!
//! A session has two legs, A and B, each with its own random token. The first valid
//! datagram on a leg latches that leg's source address for good; after that, a datagram
//! on the leg is forwarded to the other leg's latched address, or dropped with a counted
//! reason. The handshake is therefore: each host sends a probe until it hears from the
//! other; the first probe to arrive latches its sender and is dropped `peer_unknown`
//! (there is nowhere to send it yet), every later one is forwarded.
//!
//! Per datagram there is no lock and nothing both legs write: each worker finds sessions
//! in its own [`SessionCache`] (the shared map, and its shard lock, only for a session
//! the worker has not seen yet), and everything a datagram changes is an atomic in its
//! own leg (counters, the replay window, the rate meters, the activity time) or a
//! `OnceLock` (the latch). Legs are cache-line aligned because on Linux SO_REUSEPORT
//! hashes each source to one worker, so each leg is in practice written by one worker.
//! Releases reach the caches through a short log the workers read once per batch.
//!
//! **Replays.** The inner packet is sealed end to end and the relay cannot check it, but
//! it can refuse to forward the same packet twice: each leg keeps a 32-packet sliding
//! window over the inner packet's 32-bit sequence number (as IPsec does, RFC 4303
//! §3.4.3), so a captured datagram sent again — from the latched address, the only one
//! that gets this far — is dropped `replayed` before it spends the leg's rate budget.
//! (Someone who can both see the token and forge the latched source could advance the
//! window; such an on-path attacker could as well drop the packets.)
//!
//! **Transports.** A leg is latched to a UDP address or, for a host whose UDP is blocked,
//! to a TCP connection to the relay port ([`Peer`]); forwarding is the same either way.
//!
//! Invariants:
//! - a dropped datagram changes nothing but drop counters, with two deliberate exceptions:
//!   a datagram with a valid token whose peer has not latched yet latches its own leg
//!   (that is the handshake) and is then dropped `peer_unknown`; and a datagram from the
//!   latched source marks its sequence number seen even when a rate cap then drops it
//!   (a host never sends one number twice);
//! - a datagram without a valid token (`bad_token`, including every forwarded copy, whose
//!   token is zeroed) never latches anything;
//! - a destination is always a latched address, which came from a datagram carrying that
//!   leg's token and passed the forbidden-peer check.
//!
//! Limitation: a host whose NAT rebinds mid-call (new source port) is dropped as
//! `wrong_source`; the control plane recovers by granting a new session.

use super::packet::{self, SessionId, Token};
use crate::call::media;
use crate::crypto::random;
use dashmap::DashMap;
use dashmap::mapref::entry::Entry;
use std::collections::VecDeque;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering::Acquire, Ordering::Relaxed, Ordering::Release};
use std::sync::{Arc, Mutex, OnceLock};
use subtle::ConstantTimeEq;

/// Default cap on live relay sessions per table.
pub const SESSIONS_MAX_DEFAULT: usize = 10_000;
/// Default cap on datagrams per second in each direction of a session: twice a 20 ms
/// voice stream's 50.
pub const PACKETS_PER_SECOND_MAX_DEFAULT: u32 = 100;
/// Default cap on bytes per second in each direction of a session. Opus voice is about
/// 7 KB/s relayed; the cap still admits every codec `call` ships at 50 packets per
/// second, L16 included (1974-byte datagrams, 98.7 KB/s), with room to spare.
pub const BYTES_PER_SECOND_MAX_DEFAULT: u64 = 128 * 1024;
/// Random session ids tried before `allocate` gives up (reached only if the id space is
/// nearly full, which `sessions_max` prevents).
const ID_ATTEMPTS_MAX: usize = 64;
/// A rate meter's bucket: one second's worth of its cap may be spent at once.
const BURST_NS: u64 = 1_000_000_000;
/// How far past its bucket a file datagram may be held rather than dropped, when the
/// caller can hold it ([`SessionTable::decide_cached`]): a queue of 50 ms at the file cap.
/// Without it the bucket drops every datagram over the cap, and on a short path QUIC's
/// smallest window already exceeds the cap, so a transfer lost a third of its packets;
/// with it the queue's delay grows the round trip until the window fits, as behind any
/// bottleneck, and the controller sees a loss only when the queue overflows.
pub const FILE_QUEUE_NS: u64 = 50_000_000;

/// The table's limits, fixed when it is made.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Live sessions at most; `allocate` fails with [`TableError::Full`] beyond.
    pub sessions_max: usize,
    /// Datagrams per second forwarded in each direction of a session (0 forwards none).
    pub packets_per_second_max: u32,
    /// Bytes per second forwarded in each direction of a session, headers included.
    pub bytes_per_second_max: u64,
    /// Longest datagram accepted (whole, header included); never above
    /// [`packet::RELAYED_LEN_MAX`], which `decide` enforces regardless.
    pub packet_len_max: usize,
    /// Whether a leg may latch to a loopback, private, link-local or otherwise
    /// non-public address (for tests and private deployments; off on the internet).
    pub allow_private_peers: bool,
    /// Bytes per second of file transfer data (datagrams behind [`packet::FILE_DEMUX`])
    /// in each direction of a session; 0 carries no file data. They spend the session's
    /// byte budget at this rate instead of `bytes_per_second_max`, and neither the packet
    /// cap (a voice rate) nor the replay window (QUIC keeps its own) applies to them.
    pub file_bytes_per_second_max: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            sessions_max: SESSIONS_MAX_DEFAULT,
            packets_per_second_max: PACKETS_PER_SECOND_MAX_DEFAULT,
            bytes_per_second_max: BYTES_PER_SECOND_MAX_DEFAULT,
            packet_len_max: packet::RELAYED_LEN_MAX,
            allow_private_peers: false,
            file_bytes_per_second_max: BYTES_PER_SECOND_MAX_DEFAULT,
        }
    }
}

/// What `allocate` hands the control plane: the session and the two legs' tokens (one
/// for each host; each host learns only its own).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Grant {
    /// The new session.
    pub session: SessionId,
    /// Leg A's token.
    pub token_a: Token,
    /// Leg B's token.
    pub token_b: Token,
}

/// Why a session could not be allocated; the table is unchanged.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum TableError {
    /// `sessions_max` sessions are live.
    #[error("relay session table is full")]
    Full,
}

/// A session's traffic so far. Bytes are whole datagrams as forwarded (header included).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct Accounting {
    /// Datagrams forwarded from leg A to leg B.
    pub packets_a_to_b: u64,
    /// Bytes forwarded from leg A to leg B.
    pub bytes_a_to_b: u64,
    /// Datagrams forwarded from leg B to leg A.
    pub packets_b_to_a: u64,
    /// Bytes forwarded from leg B to leg A.
    pub bytes_b_to_a: u64,
    /// Datagrams for this session dropped (bad token, wrong source, forbidden peer, peer
    /// unknown, rate cap).
    pub dropped: u64,
}

/// The addresses a session's legs have latched so far.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Endpoints {
    /// Leg A's address, once it has spoken.
    pub a: Option<SocketAddr>,
    /// Leg B's address, once it has spoken.
    pub b: Option<SocketAddr>,
}

/// Where a leg's datagrams come from, and so where the other leg's go.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Peer {
    /// A UDP address.
    Udp(SocketAddr),
    /// A TCP connection to the relay port (numbered by the relay), from `addr`.
    Tcp {
        /// The connection's number, unique for the relay's life.
        conn: u64,
        /// The remote end of the connection.
        addr: SocketAddr,
    },
}

impl Peer {
    /// The remote address, whatever the transport.
    pub fn addr(&self) -> SocketAddr {
        match *self {
            Self::Udp(a) | Self::Tcp { addr: a, .. } => a,
        }
    }
}

/// What to do with one received datagram.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// Wipe its token ([`packet::wipe_token`]) and send it to `to`.
    Forward {
        /// The other leg's latch.
        to: Peer,
    },
    /// Drop it, counting the reason.
    Drop(DropReason),
    /// Wipe its token and send it to `to` once the clock reads `until_ms` (file data
    /// over its cap, within [`FILE_QUEUE_NS`]; only [`SessionTable::decide_cached`]).
    Hold {
        /// The other leg's latch.
        to: Peer,
        /// When it conforms to its leg's file cap ([`super::clock_ms`]).
        until_ms: u64,
    },
}

/// Why the relay dropped a datagram (each is a metric label).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DropReason {
    /// Shorter than the header (or its inner packet shorter than a media packet's
    /// header and tag), or not starting with 0x52.
    Malformed,
    /// Longer than the table's `packet_len_max` (or [`packet::RELAYED_LEN_MAX`]).
    Oversized,
    /// No such session (never allocated, or released).
    UnknownSession,
    /// The token is neither leg's (a forwarded copy's zeroed token included).
    BadToken,
    /// The right token from another address than the one the leg latched.
    WrongSource,
    /// The leg would latch to an address a public relay must not send to.
    ForbiddenPeer,
    /// The other leg has not latched yet: nowhere to send (this one latched, though).
    PeerUnknown,
    /// The direction's packet or byte rate cap is spent for now.
    RateCap,
    /// Its sequence number was forwarded on this leg before (or is too old to tell).
    Replayed,
}

impl DropReason {
    /// Number of reasons (for per-reason counter arrays).
    pub const COUNT: usize = 9;
    /// Every reason, in `index` order.
    pub const ALL: [DropReason; Self::COUNT] = [
        Self::Malformed,
        Self::Oversized,
        Self::UnknownSession,
        Self::BadToken,
        Self::WrongSource,
        Self::ForbiddenPeer,
        Self::PeerUnknown,
        Self::RateCap,
        Self::Replayed,
    ];

    /// The metric label.
    pub fn label(self) -> &'static str {
        match self {
            Self::Malformed => "malformed",
            Self::Oversized => "oversized",
            Self::UnknownSession => "unknown_session",
            Self::BadToken => "bad_token",
            Self::WrongSource => "wrong_source",
            Self::ForbiddenPeer => "forbidden_peer",
            Self::PeerUnknown => "peer_unknown",
            Self::RateCap => "rate_cap",
            Self::Replayed => "replayed",
        }
    }

    /// Position in [`DropReason::ALL`].
    pub fn index(self) -> usize {
        self as usize
    }
}

impl std::fmt::Display for DropReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.label())
    }
}

/// Whether a public relay must refuse to latch (and so ever send) to `ip`: unspecified,
/// "this network", loopback, private (RFC 1918, RFC 4193), link-local (with the cloud
/// metadata address 169.254.169.254), shared CGNAT space 100.64.0.0/10 (with Alibaba's
/// metadata 100.100.100.200), multicast, broadcast and reserved 240.0.0.0/4, IPv6
/// site-local, and NAT64 or IPv4-mapped forms of any of these. The 198.18.0.0/15
/// benchmarking range stays allowed: the namespace testbed uses it as the internet.
pub fn is_forbidden_peer(ip: IpAddr) -> bool {
    match ip.to_canonical() {
        IpAddr::V4(v4) => forbidden_v4(v4),
        IpAddr::V6(v6) => forbidden_v6(v6),
    }
}

fn forbidden_v4(ip: Ipv4Addr) -> bool {
    let [a, b, ..] = ip.octets();
    a == 0
        || ip.is_loopback()
        || ip.is_private()
        || ip.is_link_local()
        || (a == 100 && (b & 0xc0) == 64)
        || ip.is_multicast()
        || a >= 240
}

fn forbidden_v6(ip: Ipv6Addr) -> bool {
    let s = ip.segments();
    let nat64 = s[..6] == [0x64, 0xff9b, 0, 0, 0, 0];
    ip.is_unspecified()
        || ip.is_loopback()
        || ip.is_unique_local()
        || ip.is_unicast_link_local()
        || (s[0] & 0xffc0) == 0xfec0
        || ip.is_multicast()
        || (nat64 && forbidden_v4(Ipv4Addr::from_bits((u32::from(s[6]) << 16) | u32::from(s[7]))))
}

/// A token bucket in one atomic (GCRA): `tat_ns` is the time at which the bucket would
/// be full again. Spending `cost_ns` is allowed while that stays within one second of
/// now, so one second's worth of the cap may come at once, then the cap's rate.
#[derive(Debug, Default)]
struct Meter {
    tat_ns: AtomicU64,
}

impl Meter {
    fn take(&self, now_ns: u64, cost_ns: u64) -> bool {
        self.take_within(now_ns, cost_ns, 0) == Some(0)
    }

    /// Spends `cost_ns` if that stays within `queue_ns` past the bucket: the nanoseconds
    /// to wait before the spending conforms (0: at once), or None (nothing spent).
    fn take_within(&self, now_ns: u64, cost_ns: u64, queue_ns: u64) -> Option<u64> {
        let mut wait_ns = 0;
        self.tat_ns
            .fetch_update(Relaxed, Relaxed, |tat| {
                let next = tat.max(now_ns).saturating_add(cost_ns);
                wait_ns = (next - now_ns).saturating_sub(BURST_NS);
                (wait_ns <= queue_ns).then_some(next)
            })
            .ok()
            .map(|_| wait_ns)
    }

    fn give_back(&self, cost_ns: u64) {
        let _ = self.tat_ns.fetch_update(Relaxed, Relaxed, |tat| Some(tat.saturating_sub(cost_ns)));
    }
}

/// Packets behind the highest sequence number a leg's replay window still tells apart.
const REPLAY_WINDOW: u32 = 32;

/// A leg's replay window in one `u64`: the highest sequence number forwarded in the high
/// half, and in the low half a bitmap of the 32 numbers up to it (bit `i`: highest − i
/// was seen). Zero is the empty window (bit 0 is set once anything is seen). Returns the
/// window with `seq` marked, or None if `seq` was seen or is too old to tell. Numbers
/// wrap: a number less than 2³¹ ahead (mod 2³²) is ahead.
fn window_accept(window: u64, seq: u32) -> Option<u64> {
    let (high, seen) = ((window >> 32) as u32, window as u32);
    if seen == 0 {
        return Some((u64::from(seq) << 32) | 1);
    }
    let ahead = seq.wrapping_sub(high);
    if ahead != 0 && ahead < 1 << 31 {
        let shifted = if ahead >= REPLAY_WINDOW { 0 } else { seen << ahead };
        return Some((u64::from(seq) << 32) | u64::from(shifted | 1));
    }
    let behind = high.wrapping_sub(seq);
    if behind >= REPLAY_WINDOW || seen & (1 << behind) != 0 {
        return None;
    }
    Some(window | u64::from(1u32 << behind))
}

/// One direction of a session: written by the worker that receives this leg's traffic.
#[derive(Debug)]
#[repr(align(64))]
struct Leg {
    token: Token,
    addr: OnceLock<Peer>,
    /// The replay window ([`window_accept`]).
    window: AtomicU64,
    /// Datagrams on this leg dropped (and, on leg A, those with neither leg's token).
    dropped: AtomicU64,
    packets: AtomicU64,
    bytes: AtomicU64,
    last_active_ms: AtomicU64,
    packet_meter: Meter,
    byte_meter: Meter,
}

impl Leg {
    fn drop_for(&self, reason: DropReason) -> Decision {
        self.dropped.fetch_add(1, Relaxed);
        Decision::Drop(reason)
    }

    fn new(token: Token, now_ms: u64) -> Self {
        Self {
            token,
            addr: OnceLock::new(),
            window: AtomicU64::new(0),
            dropped: AtomicU64::new(0),
            packets: AtomicU64::new(0),
            bytes: AtomicU64::new(0),
            last_active_ms: AtomicU64::new(now_ms),
            packet_meter: Meter::default(),
            byte_meter: Meter::default(),
        }
    }
}

/// A session: two legs, 256 bytes, behind a pointer so the map's buckets stay small (an
/// entry of cache-aligned legs would carry the alignment's padding into every bucket,
/// empty ones included) and workers can keep it in their caches.
#[derive(Debug)]
struct Session {
    a: Leg,
    b: Leg,
}

impl Session {
    fn accounting(&self) -> Accounting {
        Accounting {
            packets_a_to_b: self.a.packets.load(Relaxed),
            bytes_a_to_b: self.a.bytes.load(Relaxed),
            packets_b_to_a: self.b.packets.load(Relaxed),
            bytes_b_to_a: self.b.bytes.load(Relaxed),
            dropped: self.a.dropped.load(Relaxed) + self.b.dropped.load(Relaxed),
        }
    }
}

#[derive(Debug)]
struct Inner {
    sessions: DashMap<SessionId, Arc<Session>>,
    /// Live sessions, counted apart from the map so `allocate` enforces the cap exactly.
    live: AtomicUsize,
    limits: Limits,
    packet_cost_ns: u64,
    /// Releases so far; workers compare it with theirs once per batch.
    epoch: AtomicU64,
    /// The most recent releases, for workers to forget them.
    released: Mutex<ReleasedLog>,
}

/// The releases so far (`epoch`) and the most recent ones' ids, newest first, so a
/// worker that has seen some of them can forget exactly the others.
#[derive(Debug, Default)]
struct ReleasedLog {
    epoch: u64,
    ids: VecDeque<SessionId>,
}

/// Releases remembered for the workers' caches; a worker further behind empties its
/// cache instead.
const RELEASED_LOG_MAX: usize = 4096;

/// A worker's own view of the session table: the sessions it has looked up, so the
/// per-datagram lookup touches no lock and writes nothing shared (the map's shard
/// lock would be a cache line every worker writes, both legs' included). Releases reach
/// it through [`SessionCache::sync`], once per batch: a worker may forward what it
/// received in the same batch as a release, never later.
#[derive(Debug, Default)]
pub struct SessionCache {
    sessions: std::collections::HashMap<SessionId, Arc<Session>>,
    epoch: u64,
}

impl SessionCache {
    /// Forgets the sessions released since the last sync (one atomic load when none was).
    pub fn sync(&mut self, table: &SessionTable) {
        if table.inner.epoch.load(Acquire) == self.epoch {
            return;
        }
        let log = table.inner.released.lock().unwrap_or_else(|p| p.into_inner());
        let behind = log.epoch - self.epoch;
        if behind > log.ids.len() as u64 {
            self.sessions.clear();
        } else {
            for id in log.ids.iter().take(behind as usize) {
                self.sessions.remove(id);
            }
        }
        self.epoch = log.epoch;
    }

    /// Sessions cached.
    pub fn len(&self) -> usize {
        self.sessions.len()
    }

    /// Whether none is.
    pub fn is_empty(&self) -> bool {
        self.sessions.is_empty()
    }
}

/// The shared session table (a cheap handle: clones share one table).
#[derive(Debug, Clone)]
pub struct SessionTable {
    inner: Arc<Inner>,
}

impl SessionTable {
    /// An empty table with `limits`.
    pub fn new(limits: Limits) -> Self {
        let packet_cost_ns = match limits.packets_per_second_max {
            0 => u64::MAX,
            pps => BURST_NS.div_ceil(u64::from(pps)),
        };
        Self {
            inner: Arc::new(Inner {
                sessions: DashMap::new(),
                live: AtomicUsize::new(0),
                limits,
                packet_cost_ns,
                epoch: AtomicU64::new(0),
                released: Mutex::new(ReleasedLog::default()),
            }),
        }
    }

    /// The table's limits.
    pub fn limits(&self) -> &Limits {
        &self.inner.limits
    }

    /// Creates a session with a fresh random id and two fresh random tokens.
    pub fn allocate(&self, now_ms: u64) -> Result<Grant, TableError> {
        let inner = &*self.inner;
        let max = inner.limits.sessions_max;
        inner.live.fetch_update(Relaxed, Relaxed, |n| (n < max).then_some(n + 1)).map_err(|_| TableError::Full)?;
        let token_a = Token::random();
        let token_b = loop {
            let t = Token::random();
            if t != token_a {
                break t;
            }
        };
        for _ in 0..ID_ATTEMPTS_MAX {
            let session = SessionId(u32::from_be_bytes(random::bytes()));
            if session.0 == 0 {
                continue;
            }
            if let Entry::Vacant(slot) = inner.sessions.entry(session) {
                slot.insert(Arc::new(Session { a: Leg::new(token_a, now_ms), b: Leg::new(token_b, now_ms) }));
                return Ok(Grant { session, token_a, token_b });
            }
        }
        inner.live.fetch_sub(1, Relaxed);
        Err(TableError::Full)
    }

    /// Removes a session; returns its final accounting (`None` if it was not there).
    pub fn release(&self, session: SessionId) -> Option<Accounting> {
        let (_, s) = self.inner.sessions.remove(&session)?;
        self.inner.live.fetch_sub(1, Relaxed);
        let mut log = self.inner.released.lock().unwrap_or_else(|p| p.into_inner());
        log.ids.push_front(session);
        log.ids.truncate(RELEASED_LOG_MAX);
        log.epoch += 1;
        self.inner.epoch.store(log.epoch, Release);
        // Workers' caches let go at their next batch: datagrams of the batch under way
        // may still count (and be forwarded) after this accounting.
        Some(s.accounting())
    }

    /// A live session's traffic so far.
    pub fn accounting(&self, session: SessionId) -> Option<Accounting> {
        self.inner.sessions.get(&session).map(|s| s.accounting())
    }

    /// Milliseconds since a session last forwarded a datagram (or since it was allocated,
    /// if it never has). A leg probing alone does not count as activity.
    pub fn idle_ms(&self, session: SessionId, now_ms: u64) -> Option<u64> {
        let s = self.inner.sessions.get(&session)?;
        let last = s.a.last_active_ms.load(Relaxed).max(s.b.last_active_ms.load(Relaxed));
        Some(now_ms.saturating_sub(last))
    }

    /// The addresses a session's legs have latched so far.
    pub fn endpoints(&self, session: SessionId) -> Option<Endpoints> {
        let s = self.inner.sessions.get(&session)?;
        Some(Endpoints { a: s.a.addr.get().map(Peer::addr), b: s.b.addr.get().map(Peer::addr) })
    }

    /// Live sessions.
    pub fn len(&self) -> usize {
        self.inner.live.load(Relaxed)
    }

    /// Whether no session is live.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The forwarding rule for one UDP datagram received from `from`: where to send it,
    /// or why to drop it. No I/O; the caller wipes the token before sending.
    pub fn decide(&self, datagram: &[u8], from: SocketAddr, now_ms: u64) -> Decision {
        self.decide_from(datagram, Peer::Udp(from), now_ms)
    }

    /// [`SessionTable::decide`] for a datagram from any transport.
    pub fn decide_from(&self, datagram: &[u8], from: Peer, now_ms: u64) -> Decision {
        let (id, token, seq) = match self.header(datagram) {
            Ok(h) => h,
            Err(reason) => return Decision::Drop(reason),
        };
        let Some(s) = self.inner.sessions.get(&id) else {
            return Decision::Drop(DropReason::UnknownSession);
        };
        self.decide_on(&s, token, seq, datagram.len(), from, now_ms, false)
    }

    /// [`SessionTable::decide`] through a worker's [`SessionCache`]: the map is read only
    /// for a session the worker has not seen yet. With `hold`, file data over its cap
    /// may come back as [`Decision::Hold`] (the caller has room to keep it).
    pub fn decide_cached(
        &self,
        cache: &mut SessionCache,
        datagram: &[u8],
        from: SocketAddr,
        now_ms: u64,
        hold: bool,
    ) -> Decision {
        let (id, token, seq) = match self.header(datagram) {
            Ok(h) => h,
            Err(reason) => return Decision::Drop(reason),
        };
        let s = match cache.sessions.get(&id) {
            Some(s) => s,
            None => {
                let Some(s) = self.inner.sessions.get(&id).map(|s| Arc::clone(&s)) else {
                    return Decision::Drop(DropReason::UnknownSession);
                };
                // Never more than the table can hold, whatever a sync missed.
                if cache.sessions.len() >= self.inner.limits.sessions_max {
                    cache.sessions.clear();
                }
                cache.sessions.entry(id).or_insert(s)
            }
        };
        self.decide_on(s, token, seq, datagram.len(), Peer::Udp(from), now_ms, hold)
    }

    /// A datagram's session, token and inner sequence number (None for file data, which
    /// has none), or why it is refused before any session is looked at.
    fn header(&self, datagram: &[u8]) -> Result<(SessionId, Token, Option<u32>), DropReason> {
        if datagram.len() > self.inner.limits.packet_len_max {
            return Err(DropReason::Oversized);
        }
        let (id, token, inner) = packet::parse(datagram)?;
        if inner.first() == Some(&packet::FILE_DEMUX) {
            return Ok((id, token, None));
        }
        let seq = media::sequence(inner).ok_or(DropReason::Malformed)?;
        Ok((id, token, Some(seq)))
    }

    /// The forwarding rule once the session is found.
    #[allow(clippy::too_many_arguments)]
    fn decide_on(
        &self,
        s: &Session,
        token: Token,
        seq: Option<u32>,
        len: usize,
        from: Peer,
        now_ms: u64,
        hold: bool,
    ) -> Decision {
        let limits = &self.inner.limits;
        // Both comparisons always run, each in constant time.
        let is_a = token.ct_eq(&s.a.token);
        let is_b = token.ct_eq(&s.b.token);
        let (leg, peer) = if bool::from(is_a) {
            (&s.a, &s.b)
        } else if bool::from(is_b) {
            (&s.b, &s.a)
        } else {
            // Neither leg's: counted on A's, which a stranger has no more claim to.
            return s.a.drop_for(DropReason::BadToken);
        };
        let latched = match leg.addr.get() {
            Some(addr) => addr,
            // A TCP leg is answered on the connection it opened, so its address is never
            // a destination the relay chooses.
            None if matches!(from, Peer::Udp(_))
                && !limits.allow_private_peers
                && is_forbidden_peer(from.addr().ip()) =>
            {
                return leg.drop_for(DropReason::ForbiddenPeer);
            }
            // Two first datagrams from different addresses racing on two workers: one
            // wins the latch, the other sees `wrong_source` below.
            None => leg.addr.get_or_init(|| from),
        };
        if *latched != from {
            return leg.drop_for(DropReason::WrongSource);
        }
        if let Some(seq) = seq
            && leg.window.fetch_update(Relaxed, Relaxed, |w| window_accept(w, seq)).is_err()
        {
            return leg.drop_for(DropReason::Replayed);
        }
        let Some(&to) = peer.addr.get() else {
            return leg.drop_for(DropReason::PeerUnknown);
        };
        // The caps bound what the relay sends on a leg's behalf, so only datagrams that
        // would be forwarded spend them.
        let len = len as u64;
        let now_ns = now_ms.saturating_mul(1_000_000);
        let mut wait_ns = 0;
        if seq.is_none() {
            let queue_ns = if hold { FILE_QUEUE_NS } else { 0 };
            match leg.byte_meter.take_within(now_ns, byte_cost_ns(len, limits.file_bytes_per_second_max), queue_ns) {
                Some(w) => wait_ns = w,
                None => return leg.drop_for(DropReason::RateCap),
            }
        } else {
            if !leg.packet_meter.take(now_ns, self.inner.packet_cost_ns) {
                return leg.drop_for(DropReason::RateCap);
            }
            let byte_cost_ns = byte_cost_ns(len, limits.bytes_per_second_max);
            if !leg.byte_meter.take(now_ns, byte_cost_ns) {
                leg.packet_meter.give_back(self.inner.packet_cost_ns);
                return leg.drop_for(DropReason::RateCap);
            }
        }
        leg.packets.fetch_add(1, Relaxed);
        leg.bytes.fetch_add(len, Relaxed);
        if leg.last_active_ms.load(Relaxed) < now_ms {
            leg.last_active_ms.store(now_ms, Relaxed);
        }
        if wait_ns > 0 {
            return Decision::Hold { to, until_ms: now_ms.saturating_add(wait_ns.div_ceil(1_000_000)) };
        }
        Decision::Forward { to }
    }
}

/// Nanoseconds of a `bytes_per_second` budget that `len` bytes spend (rounded up, so the
/// cap is never exceeded; a zero cap forwards nothing).
fn byte_cost_ns(len: u64, bytes_per_second: u64) -> u64 {
    if bytes_per_second == 0 {
        return u64::MAX;
    }
    let cost = (u128::from(len) * u128::from(BURST_NS)).div_ceil(u128::from(bytes_per_second));
    u64::try_from(cost).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::relay::packet::build;
    use proptest::prelude::*;
    use std::sync::atomic::AtomicU32;

    /// The shortest inner packet a relay forwards: a media header and tag.
    const MIN: usize = media::HEADER_LEN + crate::crypto::aead::TAG_LEN;

    /// A datagram on `token`'s leg of `session` whose inner packet is `len` bytes
    /// shaped like media, with a sequence number no datagram had before (tests share
    /// one counter, so each leg sees its numbers increase).
    fn dg(session: SessionId, token: Token, len: usize) -> Vec<u8> {
        static SEQ: AtomicU32 = AtomicU32::new(1);
        let mut inner = vec![0u8; len.max(MIN)];
        inner[0] = 0x4d;
        inner[9..13].copy_from_slice(&SEQ.fetch_add(1, Relaxed).to_be_bytes());
        inner.truncate(len);
        build(session, token, &inner)
    }

    /// A file transfer's datagram of `len` inner bytes on `token`'s leg of `session`.
    fn file_dg(session: SessionId, token: Token, len: usize) -> Vec<u8> {
        let mut inner = vec![0xab; len];
        inner[0] = packet::FILE_DEMUX;
        build(session, token, &inner)
    }

    #[test]
    fn file_data_spends_its_own_rate_skips_the_voice_caps_and_can_be_switched_off() {
        let limits = Limits {
            packets_per_second_max: 5,
            bytes_per_second_max: 1 << 30,
            file_bytes_per_second_max: 12_010,
            allow_private_peers: true,
            ..Limits::default()
        };
        let t = table(limits);
        let g = t.allocate(0).unwrap();
        let (a, b) = (addr(PUB_A), addr(PUB_B));
        // B's leg latches with media; then A sends file data, identical datagrams included
        // (QUIC refuses its own replays; the relay has no sequence to read).
        assert_eq!(t.decide(&dg(g.session, g.token_b, 100), b, 0), Decision::Drop(DropReason::PeerUnknown));
        let same = file_dg(g.session, g.token_a, 1201);
        let forwarded = (0..20).filter(|_| matches!(t.decide(&same, a, 0), Decision::Forward { .. })).count();
        // 12,010 bytes a second, one second's worth at once: 5 datagrams of 1,222 bytes...
        // beyond the packet cap of 5 and with no replay refused.
        assert_eq!(forwarded, 9, "a second of the file cap, whatever the packet cap");
        assert!(matches!(t.decide(&same, a, 1_000), Decision::Forward { .. }), "the next second's budget");
        let off = table(Limits { file_bytes_per_second_max: 0, ..limits });
        let g = off.allocate(0).unwrap();
        assert_eq!(off.decide(&dg(g.session, g.token_b, 100), b, 0), Decision::Drop(DropReason::PeerUnknown));
        assert_eq!(off.decide(&file_dg(g.session, g.token_a, 100), a, 0), Decision::Drop(DropReason::RateCap));
        assert!(matches!(off.decide(&dg(g.session, g.token_a, 100), a, 0), Decision::Forward { .. }), "voice goes on");
    }

    #[test]
    fn file_data_over_its_cap_is_held_up_to_the_queue_then_dropped_and_voice_never_is() {
        // 122,200 bytes a second: each 1,222-byte datagram is 10 ms of the cap.
        let limits = Limits { file_bytes_per_second_max: 122_200, allow_private_peers: true, ..Limits::default() };
        let t = table(limits);
        let g = t.allocate(0).unwrap();
        let (a, b) = (addr(PUB_A), addr(PUB_B));
        let mut cache = SessionCache::default();
        assert_eq!(t.decide(&dg(g.session, g.token_b, 100), b, 0), Decision::Drop(DropReason::PeerUnknown));
        let file = file_dg(g.session, g.token_a, 1201);
        let mut decide = |hold| t.decide_cached(&mut cache, &file, a, 0, hold);
        // A second's worth goes at once, as before.
        assert!((0..100).all(|_| decide(true) == Decision::Forward { to: Peer::Udp(b) }));
        // Then each waits 10 ms more than the one before, up to the queue's 50 ms.
        let held: Vec<Decision> = (0..5).map(|_| decide(true)).collect();
        let want: Vec<Decision> = (1..=5).map(|i| Decision::Hold { to: Peer::Udp(b), until_ms: i * 10 }).collect();
        assert_eq!(held, want);
        let before = t.accounting(g.session).unwrap();
        assert_eq!(decide(true), Decision::Drop(DropReason::RateCap), "past the queue");
        let after = t.accounting(g.session).unwrap();
        assert_eq!((after.dropped - before.dropped, after.bytes_a_to_b), (1, before.bytes_a_to_b), "nothing spent");
        // 15 ms on, the next would wait 45 ms: a caller with no room, or `decide`, drops it.
        assert_eq!(t.decide_cached(&mut cache, &file, a, 15, false), Decision::Drop(DropReason::RateCap));
        assert_eq!(t.decide(&file, a, 15), Decision::Drop(DropReason::RateCap));
        assert_eq!(t.decide_cached(&mut cache, &file, a, 15, true), Decision::Hold { to: Peer::Udp(b), until_ms: 60 });
        // Voice over its caps is dropped, never held.
        let voice = Limits { bytes_per_second_max: 1_000, allow_private_peers: true, ..Limits::default() };
        let t = table(voice);
        let g = t.allocate(0).unwrap();
        let mut cache = SessionCache::default();
        assert_eq!(t.decide(&dg(g.session, g.token_b, 100), b, 0), Decision::Drop(DropReason::PeerUnknown));
        let outcomes: Vec<Decision> =
            (0..3).map(|_| t.decide_cached(&mut cache, &dg(g.session, g.token_a, 600), a, 0, true)).collect();
        assert_eq!(outcomes[2], Decision::Drop(DropReason::RateCap), "{outcomes:?}");
    }

    /// A datagram with sequence number `seq`.
    fn numbered(session: SessionId, token: Token, seq: u32) -> Vec<u8> {
        let mut inner = vec![0u8; MIN];
        inner[9..13].copy_from_slice(&seq.to_be_bytes());
        build(session, token, &inner)
    }

    /// Feeds `seqs` to a fresh replay window: which it accepted.
    fn accepted(seqs: &[u32]) -> Vec<bool> {
        let mut w = 0;
        seqs.iter().map(|&seq| window_accept(w, seq).map(|next| w = next).is_some()).collect()
    }

    #[test]
    fn the_replay_window_refuses_repeats_and_old_numbers() {
        // A repeat; late but within the window; older than the window; a jump ahead,
        // after which the old numbers are far behind.
        assert_eq!(
            accepted(&[100, 100, 102, 101, 101, 102 - 31, 102 - 32, 1000, 102]),
            [true, false, true, true, false, true, false, true, false]
        );
        // Numbers wrap: past the wrap is ahead, just before it within the window.
        assert_eq!(accepted(&[u32::MAX - 1, 1, u32::MAX, u32::MAX - 1]), [true, true, true, false]);
    }

    #[test]
    fn replayed_and_runt_datagrams_are_dropped_without_spending_the_budget() {
        let t = table(Limits { packets_per_second_max: 4, ..roomy() });
        let g = latched(&t);
        // Ahead of the numbers `latched` used.
        const BASE: u32 = 1 << 30;
        let d = numbered(g.session, g.token_a, BASE + 5);
        assert!(matches!(t.decide(&d, addr(PUB_A), 0), Decision::Forward { .. }));
        for _ in 0..10 {
            assert_eq!(t.decide(&d, addr(PUB_A), 0), Decision::Drop(DropReason::Replayed));
        }
        // The replays spent nothing: fresh datagrams still fit this second's budget.
        for seq in [BASE + 6, BASE + 4] {
            let d = t.decide(&numbered(g.session, g.token_a, seq), addr(PUB_A), 0);
            assert!(matches!(d, Decision::Forward { .. }), "{seq}: {d:?}");
        }
        assert_eq!(t.accounting(g.session).unwrap().packets_a_to_b, 3);
        // Each leg has its own window: B may use the same numbers.
        assert!(matches!(
            t.decide(&numbered(g.session, g.token_b, BASE + 5), addr(PUB_B), 0),
            Decision::Forward { .. }
        ));
        // An inner packet too short to be media is malformed.
        let runt = build(g.session, g.token_a, &[0x4d; MIN - 1]);
        assert_eq!(t.decide(&runt, addr(PUB_A), 1_000), Decision::Drop(DropReason::Malformed));
    }

    #[test]
    fn a_tcp_leg_latches_to_its_connection() {
        let t = table(Limits::default());
        let g = t.allocate(0).unwrap();
        let conn = Peer::Tcp { conn: 7, addr: addr("10.0.0.2:5000") };
        assert_eq!(
            t.decide_from(&dg(g.session, g.token_a, MIN), conn, 0),
            Decision::Drop(DropReason::PeerUnknown),
            "a private address is fine on a connection the host opened"
        );
        assert_eq!(
            t.decide_from(&dg(g.session, g.token_b, MIN), Peer::Udp(addr(PUB_B)), 0),
            Decision::Forward { to: conn }
        );
        assert_eq!(
            t.decide_from(&dg(g.session, g.token_a, MIN), conn, 0),
            Decision::Forward { to: Peer::Udp(addr(PUB_B)) }
        );
        // The same address on another connection, or over UDP, is another source.
        let other = Peer::Tcp { conn: 8, addr: addr("10.0.0.2:5000") };
        assert_eq!(t.decide_from(&dg(g.session, g.token_a, MIN), other, 0), Decision::Drop(DropReason::WrongSource));
        assert_eq!(
            t.decide(&dg(g.session, g.token_a, MIN), addr("10.0.0.2:5000"), 0),
            Decision::Drop(DropReason::WrongSource)
        );
        assert_eq!(t.endpoints(g.session).unwrap().a, Some(addr("10.0.0.2:5000")));
    }

    const PUB_A: &str = "198.18.0.10:40000";
    const PUB_B: &str = "203.0.113.7:50000";

    fn addr(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    fn table(limits: Limits) -> SessionTable {
        SessionTable::new(limits)
    }

    fn roomy() -> Limits {
        Limits { packets_per_second_max: 1_000_000, bytes_per_second_max: 1 << 40, ..Limits::default() }
    }

    /// A session whose legs have both latched (A probed first, B's probe forwarded).
    fn latched(t: &SessionTable) -> Grant {
        let g = t.allocate(0).unwrap();
        assert_eq!(t.decide(&dg(g.session, g.token_a, MIN), addr(PUB_A), 0), Decision::Drop(DropReason::PeerUnknown));
        assert_eq!(
            t.decide(&dg(g.session, g.token_b, MIN), addr(PUB_B), 0),
            Decision::Forward { to: Peer::Udp(addr(PUB_A)) }
        );
        g
    }

    #[test]
    fn allocate_and_release() {
        let t = table(Limits::default());
        assert!(t.is_empty());
        let g1 = t.allocate(5).unwrap();
        let g2 = t.allocate(5).unwrap();
        assert_ne!(g1.session, g2.session);
        assert_ne!(g1.session.0, 0);
        assert_ne!(g1.token_a, g1.token_b);
        assert_ne!(g1.token_a, g2.token_a);
        assert_eq!(t.len(), 2);
        assert_eq!(t.accounting(g1.session), Some(Accounting::default()));
        assert_eq!(t.endpoints(g1.session), Some(Endpoints::default()));
        assert_eq!(t.release(g1.session), Some(Accounting::default()));
        assert_eq!(t.release(g1.session), None);
        assert_eq!(t.accounting(g1.session), None);
        assert_eq!(t.len(), 1);
        let d = || dg(g1.session, g1.token_a, MIN);
        assert_eq!(t.decide(&d(), addr(PUB_A), 6), Decision::Drop(DropReason::UnknownSession));
    }

    #[test]
    fn full_until_one_is_released() {
        let t = table(Limits { sessions_max: 2, ..Limits::default() });
        let g = t.allocate(0).unwrap();
        t.allocate(0).unwrap();
        assert_eq!(t.allocate(0), Err(TableError::Full));
        assert_eq!(t.len(), 2);
        t.release(g.session);
        t.allocate(0).unwrap();
        assert_eq!(t.allocate(0), Err(TableError::Full));
        let none = table(Limits { sessions_max: 0, ..Limits::default() });
        assert_eq!(none.allocate(0), Err(TableError::Full));
        assert_eq!(none.len(), 0);
    }

    #[test]
    fn legs_latch_on_their_first_valid_datagram() {
        let t = table(Limits::default());
        let g = t.allocate(0).unwrap();
        let from_a = || dg(g.session, g.token_a, MIN);
        assert_eq!(t.decide(&from_a(), addr(PUB_A), 1), Decision::Drop(DropReason::PeerUnknown));
        assert_eq!(t.endpoints(g.session), Some(Endpoints { a: Some(addr(PUB_A)), b: None }));
        assert_eq!(
            t.decide(&from_a(), addr(PUB_A), 2),
            Decision::Drop(DropReason::PeerUnknown),
            "still nowhere to send"
        );
        let from_b = || dg(g.session, g.token_b, MIN);
        assert_eq!(t.decide(&from_b(), addr(PUB_B), 3), Decision::Forward { to: Peer::Udp(addr(PUB_A)) });
        assert_eq!(t.decide(&from_a(), addr(PUB_A), 4), Decision::Forward { to: Peer::Udp(addr(PUB_B)) });
        assert_eq!(t.endpoints(g.session), Some(Endpoints { a: Some(addr(PUB_A)), b: Some(addr(PUB_B)) }));
        assert_eq!(t.accounting(g.session).unwrap().dropped, 2);
    }

    #[test]
    fn a_latched_leg_refuses_other_sources() {
        let t = table(Limits::default());
        let g = latched(&t);
        let from_a = || dg(g.session, g.token_a, MIN);
        let before = t.accounting(g.session).unwrap();
        assert_eq!(t.decide(&from_a(), addr("198.18.0.99:40000"), 1), Decision::Drop(DropReason::WrongSource));
        assert_eq!(t.decide(&from_a(), addr("198.18.0.10:40001"), 1), Decision::Drop(DropReason::WrongSource));
        // Even a forbidden address, once the leg is latched, is simply the wrong source.
        assert_eq!(t.decide(&from_a(), addr("127.0.0.1:40000"), 1), Decision::Drop(DropReason::WrongSource));
        let after = t.accounting(g.session).unwrap();
        assert_eq!(after, Accounting { dropped: before.dropped + 3, ..before });
        assert_eq!(t.endpoints(g.session).unwrap().a, Some(addr(PUB_A)));
        assert_eq!(t.decide(&from_a(), addr(PUB_A), 1), Decision::Forward { to: Peer::Udp(addr(PUB_B)) });
    }

    #[test]
    fn bad_tokens_never_latch() {
        let t = table(Limits::default());
        let g = t.allocate(0).unwrap();
        let other = t.allocate(0).unwrap();
        let mut near = *g.token_a.as_bytes();
        near[15] ^= 1;
        for token in [Token::random(), Token::ZERO, Token::from_bytes(near), other.token_a] {
            let d = || dg(g.session, token, MIN);
            assert_eq!(t.decide(&d(), addr(PUB_A), 0), Decision::Drop(DropReason::BadToken));
        }
        assert_eq!(t.endpoints(g.session), Some(Endpoints::default()));
        assert_eq!(t.accounting(g.session).unwrap().dropped, 4);
        // The rightful owner still latches from wherever it is.
        let d = || dg(g.session, g.token_a, MIN);
        assert_eq!(t.decide(&d(), addr("198.18.7.7:1234"), 0), Decision::Drop(DropReason::PeerUnknown));
        assert_eq!(t.endpoints(g.session).unwrap().a, Some(addr("198.18.7.7:1234")));
    }

    #[test]
    fn forwarded_copies_cannot_loop_back_in() {
        let t = table(Limits::default());
        let g = latched(&t);
        let mut d = dg(g.session, g.token_a, MIN);
        assert!(matches!(t.decide(&d, addr(PUB_A), 0), Decision::Forward { .. }));
        packet::wipe_token(&mut d);
        assert_eq!(t.decide(&d, addr(PUB_B), 0), Decision::Drop(DropReason::BadToken));
    }

    #[test]
    fn malformed_and_oversized() {
        let t = table(Limits { packet_len_max: 100, ..roomy() });
        let g = latched(&t);
        assert_eq!(t.decide(b"", addr(PUB_A), 0), Decision::Drop(DropReason::Malformed));
        assert_eq!(t.decide(&[0x52; 20], addr(PUB_A), 0), Decision::Drop(DropReason::Malformed));
        let big = || dg(g.session, g.token_a, 80);
        assert_eq!(t.decide(&big(), addr(PUB_A), 0), Decision::Drop(DropReason::Oversized));
        let fits = || dg(g.session, g.token_a, 79);
        assert!(matches!(t.decide(&fits(), addr(PUB_A), 0), Decision::Forward { .. }));
        // A limit above the wire maximum does not raise the wire maximum.
        let lax = table(Limits { packet_len_max: usize::MAX, ..roomy() });
        let g = latched(&lax);
        let huge = || dg(g.session, g.token_a, crate::call::media::PACKET_LEN_MAX + 1);
        assert_eq!(lax.decide(&huge(), addr(PUB_A), 0), Decision::Drop(DropReason::Oversized));
    }

    #[test]
    fn packet_rate_is_capped_per_direction_per_second() {
        let t = table(Limits { packets_per_second_max: 10, ..roomy() });
        let g = latched(&t);
        let from_a = || dg(g.session, g.token_a, MIN);
        let from_b = || dg(g.session, g.token_b, MIN);
        let t0 = 10_000;
        for _ in 0..10 {
            assert!(matches!(t.decide(&from_a(), addr(PUB_A), t0), Decision::Forward { .. }));
        }
        assert_eq!(t.decide(&from_a(), addr(PUB_A), t0), Decision::Drop(DropReason::RateCap));
        assert_eq!(t.decide(&from_a(), addr(PUB_A), t0 + 50), Decision::Drop(DropReason::RateCap));
        // The other direction has its own budget.
        for _ in 0..10 {
            assert!(matches!(t.decide(&from_b(), addr(PUB_B), t0), Decision::Forward { .. }));
        }
        // The budget refills at the cap's rate: one datagram per 100 ms…
        assert!(matches!(t.decide(&from_a(), addr(PUB_A), t0 + 100), Decision::Forward { .. }));
        assert_eq!(t.decide(&from_a(), addr(PUB_A), t0 + 150), Decision::Drop(DropReason::RateCap));
        // …and a second later it is full again, never more than a second's worth.
        for _ in 0..10 {
            assert!(matches!(t.decide(&from_a(), addr(PUB_A), t0 + 5_000), Decision::Forward { .. }));
        }
        assert_eq!(t.decide(&from_a(), addr(PUB_A), t0 + 5_000), Decision::Drop(DropReason::RateCap));
        let acc = t.accounting(g.session).unwrap();
        assert_eq!(acc.packets_a_to_b, 21);
        assert_eq!(acc.packets_b_to_a, 1 + 10);
        assert_eq!(acc.dropped, 1 + 4, "the probe, then four capped");
    }

    #[test]
    fn byte_rate_is_capped_and_refunds_the_packet_budget() {
        // 10 datagrams of 1000 bytes per second at most; packets are not the limit.
        let t = table(Limits { bytes_per_second_max: 10_000, ..roomy() });
        let g = latched(&t);
        let kb = || dg(g.session, g.token_a, 1000 - packet::RELAY_HEADER_LEN);
        assert_eq!(kb().len(), 1000);
        for _ in 0..10 {
            assert!(matches!(t.decide(&kb(), addr(PUB_A), 0), Decision::Forward { .. }));
        }
        assert_eq!(t.decide(&kb(), addr(PUB_A), 0), Decision::Drop(DropReason::RateCap));
        let small = || dg(g.session, g.token_a, MIN);
        assert_eq!(t.decide(&small(), addr(PUB_A), 0), Decision::Drop(DropReason::RateCap));
        assert!(matches!(t.decide(&kb(), addr(PUB_A), 100), Decision::Forward { .. }));
        assert_eq!(t.accounting(g.session).unwrap().bytes_a_to_b, 11_000);

        // Refused by bytes, a datagram gives back the packet budget it briefly took.
        let both = table(Limits { packets_per_second_max: 3, bytes_per_second_max: 1_000, ..Limits::default() });
        let g = latched(&both);
        let d = || dg(g.session, g.token_a, 479);
        assert_eq!(d().len(), 500);
        for _ in 0..2 {
            assert!(matches!(both.decide(&d(), addr(PUB_A), 0), Decision::Forward { .. }));
        }
        for _ in 0..5 {
            assert_eq!(both.decide(&d(), addr(PUB_A), 0), Decision::Drop(DropReason::RateCap));
        }
        // Half a second later half the byte budget is back, and the packet budget was not
        // spent by the five refusals (it would be two seconds in debt otherwise).
        let small = || dg(g.session, g.token_a, MIN);
        assert!(matches!(both.decide(&small(), addr(PUB_A), 500), Decision::Forward { .. }));
        let zero = table(Limits { packets_per_second_max: 0, ..Limits::default() });
        let g = latched_refused(&zero);
        assert_eq!(zero.accounting(g.session).unwrap().packets_b_to_a, 0);
    }

    fn latched_refused(t: &SessionTable) -> Grant {
        let g = t.allocate(0).unwrap();
        t.decide(&dg(g.session, g.token_a, MIN), addr(PUB_A), 0);
        assert_eq!(t.decide(&dg(g.session, g.token_b, MIN), addr(PUB_B), 0), Decision::Drop(DropReason::RateCap));
        g
    }

    #[test]
    fn default_caps_carry_every_codec() {
        use crate::call::{codec, media};
        let t = table(Limits::default());
        let g = latched(&t);
        // 50 L16 packets a second each way, for three seconds: none capped.
        let l16 = || dg(g.session, g.token_a, media::HEADER_LEN + codec::L16_PACKET_BYTES + 16);
        let mut forwarded = 0;
        for i in 0..150u64 {
            if matches!(t.decide(&l16(), addr(PUB_A), 1_000 + i * 20), Decision::Forward { .. }) {
                forwarded += 1;
            }
        }
        assert_eq!(forwarded, 150);
    }

    #[test]
    fn forbidden_peers_unless_allowed() {
        let forbidden = [
            "127.0.0.1:5",
            "10.1.2.3:5",
            "172.16.0.1:5",
            "192.168.1.1:5",
            "169.254.169.254:80",
            "100.100.100.200:80",
            "0.0.0.0:5",
            "224.0.0.1:5",
            "255.255.255.255:5",
            "[::1]:5",
            "[::]:5",
            "[fd00:ec2::254]:80",
            "[fe80::1]:5",
            "[ff02::1]:5",
            "[::ffff:10.0.0.1]:5",
            "[::ffff:127.0.0.1]:5",
            "[64:ff9b::a9fe:a9fe]:80",
        ];
        for a in forbidden {
            assert!(is_forbidden_peer(addr(a).ip()), "{a} should be forbidden");
        }
        for a in
            ["198.18.0.1:5", "198.19.255.1:5", "203.0.113.5:5", "8.8.8.8:53", "[2001:db8::1]:5", "[::ffff:8.8.8.8]:5"]
        {
            assert!(!is_forbidden_peer(addr(a).ip()), "{a} should be allowed");
        }

        let strict = table(Limits::default());
        let g = strict.allocate(0).unwrap();
        let d = || dg(g.session, g.token_a, MIN);
        assert_eq!(strict.decide(&d(), addr("127.0.0.1:9"), 0), Decision::Drop(DropReason::ForbiddenPeer));
        assert_eq!(strict.decide(&d(), addr("[::ffff:192.168.0.2]:9"), 0), Decision::Drop(DropReason::ForbiddenPeer));
        assert_eq!(strict.endpoints(g.session), Some(Endpoints::default()), "a refused source never latches");
        assert_eq!(strict.decide(&d(), addr(PUB_A), 0), Decision::Drop(DropReason::PeerUnknown));

        let lab = table(Limits { allow_private_peers: true, ..Limits::default() });
        let g = lab.allocate(0).unwrap();
        assert_eq!(
            lab.decide(&dg(g.session, g.token_a, MIN), addr("127.0.0.1:9"), 0),
            Decision::Drop(DropReason::PeerUnknown)
        );
        assert_eq!(
            lab.decide(&dg(g.session, g.token_b, MIN), addr("127.0.0.1:10"), 0),
            Decision::Forward { to: Peer::Udp(addr("127.0.0.1:9")) }
        );
    }

    #[test]
    fn accounting_per_direction_and_idle_time() {
        let t = table(roomy());
        let g = t.allocate(1_000).unwrap();
        assert_eq!(t.idle_ms(g.session, 1_500), Some(500));
        t.decide(&dg(g.session, g.token_a, MIN), addr(PUB_A), 1_100);
        assert_eq!(t.idle_ms(g.session, 1_500), Some(500), "a lone probe is not activity");
        t.decide(&dg(g.session, g.token_b, 40), addr(PUB_B), 2_000);
        for _ in 0..3 {
            t.decide(&dg(g.session, g.token_a, 100), addr(PUB_A), 2_500);
        }
        t.decide(&dg(g.session, g.token_b, 40), addr(PUB_B), 2_200);
        t.decide(&dg(g.session, Token::random(), MIN), addr(PUB_B), 2_600);
        let acc = Accounting {
            packets_a_to_b: 3,
            bytes_a_to_b: 3 * 121,
            packets_b_to_a: 2,
            bytes_b_to_a: 2 * 61,
            dropped: 2,
        };
        assert_eq!(t.accounting(g.session), Some(acc));
        assert_eq!(t.idle_ms(g.session, 3_000), Some(500));
        assert_eq!(t.idle_ms(g.session, 100), Some(0), "a clock behind the last activity is not negative");
        assert_eq!(t.idle_ms(SessionId(g.session.0 ^ 1), 3_000), None);
        assert_eq!(t.release(g.session), Some(acc));
    }

    #[test]
    fn concurrent_legs_count_exactly() {
        let t = table(roomy());
        let g = latched(&t);
        std::thread::scope(|scope| {
            for (token, from) in [(g.token_a, PUB_A), (g.token_b, PUB_B)] {
                let t = t.clone();
                scope.spawn(move || {
                    let d = || dg(g.session, token, 79);
                    for i in 0..10_000 {
                        assert!(matches!(t.decide(&d(), addr(from), i / 10), Decision::Forward { .. }));
                    }
                });
            }
        });
        let acc = t.accounting(g.session).unwrap();
        assert_eq!((acc.packets_a_to_b, acc.packets_b_to_a), (10_000, 10_001));
        assert_eq!((acc.bytes_a_to_b, acc.bytes_b_to_a), (1_000_000, 1_000_000 + 54));
    }

    #[test]
    fn a_session_costs_under_512_bytes_of_table() {
        // The boxed session (plus the allocator's 16-byte header), and its map entry
        // (key and pointer) with the map's slack: hashbrown keeps buckets at most 7/8
        // full and doubles them, so just after a resize a bucket and its control byte
        // are paid for up to 2 × 8/7 times per entry.
        let session = std::mem::size_of::<Session>() + 16;
        let entry = std::mem::size_of::<(SessionId, Box<Session>)>() + 1;
        let worst = session + entry * 2 * 8 / 7;
        eprintln!("relay session: {session} bytes boxed, map entry {entry} bytes, at worst {worst} bytes per session");
        assert_eq!(std::mem::size_of::<Session>(), 256, "two cache-line pairs, no padding");
        assert!(worst < 512, "{worst}");
    }

    /// A measurement, not a check: resident memory per live session, with 10,000 and
    /// 100,000 sessions. Run with
    /// `cargo test --release --lib relay::table::tests::memory_per_session -- --ignored --nocapture`.
    #[test]
    #[ignore = "a measurement: reads this process's RSS, which other tests would disturb"]
    fn memory_per_session() {
        let rss = || {
            let statm = std::fs::read_to_string("/proc/self/statm").unwrap_or_default();
            statm.split_whitespace().nth(1).and_then(|p| p.parse::<u64>().ok()).unwrap_or(0) * 4096
        };
        for n in [10_000usize, 100_000] {
            let before = rss();
            let t = table(Limits { sessions_max: n, ..Limits::default() });
            for _ in 0..n {
                t.allocate(0).unwrap();
            }
            let after = rss();
            println!("{n} relay sessions: {} bytes of RSS each", (after - before) / n as u64);
            drop(t);
        }
    }

    #[test]
    fn a_workers_cache_follows_releases_at_its_next_sync() {
        let t = table(roomy());
        let g = latched(&t);
        let mut cache = SessionCache::default();
        cache.sync(&t);
        let from_a = || dg(g.session, g.token_a, MIN);
        assert!(matches!(t.decide_cached(&mut cache, &from_a(), addr(PUB_A), 0, false), Decision::Forward { .. }));
        assert_eq!(cache.len(), 1);
        t.release(g.session);
        // Within the batch under way the worker still knows it…
        assert!(matches!(t.decide_cached(&mut cache, &from_a(), addr(PUB_A), 0, false), Decision::Forward { .. }));
        // …and forgets it at the next.
        cache.sync(&t);
        assert!(cache.is_empty());
        assert_eq!(
            t.decide_cached(&mut cache, &from_a(), addr(PUB_A), 0, false),
            Decision::Drop(DropReason::UnknownSession)
        );
        // A worker further behind than the log remembers starts afresh.
        let live = latched(&t);
        assert!(matches!(
            t.decide_cached(&mut cache, &dg(live.session, live.token_a, MIN), addr(PUB_A), 0, false),
            Decision::Forward { .. }
        ));
        for _ in 0..RELEASED_LOG_MAX + 1 {
            let g = t.allocate(0).unwrap();
            t.release(g.session);
        }
        cache.sync(&t);
        assert!(cache.is_empty());
        assert!(
            matches!(
                t.decide_cached(&mut cache, &dg(live.session, live.token_a, MIN), addr(PUB_A), 0, false),
                Decision::Forward { .. }
            ),
            "the live session is looked up again"
        );
    }

    proptest! {
        #[test]
        fn decide_is_total(bytes in proptest::collection::vec(any::<u8>(), 0..2200), port: u16, use_session: bool) {
            let t = table(Limits::default());
            let g = latched(&t);
            let mut d = bytes;
            if use_session && d.len() >= 5 {
                d[0] = packet::MAGIC;
                d[1..5].copy_from_slice(&g.session.0.to_be_bytes());
            }
            let from = SocketAddr::from(([198, 18, 3, 4], port));
            match t.decide(&d, from, 7) {
                Decision::Forward { .. } | Decision::Hold { .. } => prop_assert!(false, "random bytes were forwarded"),
                Decision::Drop(_) => {}
            }
            prop_assert_eq!(t.endpoints(g.session), Some(Endpoints { a: Some(addr(PUB_A)), b: Some(addr(PUB_B)) }));
            prop_assert_eq!(t.accounting(g.session).unwrap().packets_a_to_b, 0);
        }
    }
}
