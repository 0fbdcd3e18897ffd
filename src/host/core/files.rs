//! File transfers joined to the host (`docs/transfer.md`, "Joined to the host"): the
//! offer as a chat message, the receiver's "file" call to the sender, the transfer's QUIC
//! datagrams on that call's path, progress and completion.
//!
//! # The driving contract
//!
//! [`FilesCore`] reads no clock and opens no socket. What touches the disk before a
//! transfer runs (hashing the file, creating or reopening a transfer's folder) is a
//! [`FileEffect`], which the shell carries out with [`run_effect`]; the running transfer's
//! chunk reads and writes stay inside `transfer::{Sender, Receiver}`, which own their
//! folder. The host core:
//!
//! 1. Feeds commands ([`FilesCore::send_file`]), offers from the chat
//!    ([`FilesCore::on_offer`]), the outcome of the offer's chat send
//!    ([`FilesCore::on_offer_sent`]), calls placed ([`FilesCore::on_call_placed`]), file
//!    calls that ring ([`FilesCore::on_file_call`]), calls that end
//!    ([`FilesCore::on_call_ended`]), datagrams ([`FilesCore::handle_datagram`]) with the
//!    route their call took, effect results, and [`FilesCore::handle_timeout`].
//! 2. Drains [`FilesCore::poll_out`], [`FilesCore::poll_effect`],
//!    [`FilesCore::poll_event`], [`FilesCore::poll_completion`].

use super::Now;
use super::calls::FILE_DEMUX;
use crate::chat::message::Body;
use crate::host::buddies::Event;
use crate::transfer::bitmap::ChunkBitmap;
use crate::transfer::conn::TlsIdentity;
use crate::transfer::receiver::Receiver;
use crate::transfer::sender::Sender;
use crate::transfer::state::{ReceiveOffer, ReceiveState, SendState, TransferId};
use crate::transfer::{Progress, WireStats};
use rand::rngs::StdRng;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, VecDeque};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// How long a sender whose offer reached an online recipient waits for their call before
/// it reports the offer as `offered` (the recipient takes it later, or never): longer than
/// the chat's periodic fetch, which brings an offer whose push was lost.
pub const CALL_WAIT: Duration = Duration::from_secs(90);
/// How long a receiver waits before calling the sender again after a call ended with
/// the file incomplete; doubled after each call that could not be placed (the sender
/// offline), up to [`RECALL_MAX`].
pub const RECALL_AFTER: Duration = Duration::from_secs(3);
/// The longest wait between two calls to a sender that cannot be reached.
pub const RECALL_MAX: Duration = Duration::from_secs(300);
/// Most progress events per transfer per second.
pub const PROGRESS_EVERY: Duration = Duration::from_millis(500);
/// Offers kept while no folder takes them.
pub const UNANSWERED_MAX: usize = 64;
/// Offers remembered as shown (by sender and transfer), so that one offered again (the
/// sender's next session sends it anew) is shown once.
pub const SHOWN_MAX: usize = 1024;
/// The side file in a transfer's folder that says who the other side is.
pub const PEER_FILE: &str = "peer.json";

/// How the files behave.
#[derive(Debug, Clone, Default)]
pub struct FilesConfig {
    /// Where transfers keep their folders (`<home>/transfers`); None: no files.
    pub transfers: Option<PathBuf>,
    /// Accept every offer from a buddy into this folder; None: offers are only shown.
    pub accept_into: Option<PathBuf>,
}

/// Disk work for the shell ([`run_effect`] does it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FileEffect {
    /// Hash `path` and record the sender's folder `dir` for a transfer to `to`.
    Prepare {
        /// The transfer.
        transfer: [u8; 16],
        /// The file.
        path: PathBuf,
        /// Its folder.
        dir: PathBuf,
        /// The recipient.
        to: String,
        /// The transfer's TLS certificate (DER).
        cert_der: Vec<u8>,
        /// Its key (PKCS#8 DER).
        key_der: Vec<u8>,
    },
    /// Reopen a sender's folder, for a call that asks for it.
    OpenSend {
        /// The folder.
        dir: PathBuf,
    },
    /// Create (or reopen, after a restart) a receiver's folder.
    OpenReceive {
        /// The folder.
        dir: PathBuf,
        /// The offer accepted.
        offer: ReceiveOffer,
        /// Who offered.
        from: String,
    },
    /// List the receivers' folders left unfinished (at start).
    ListReceiving {
        /// `<home>/transfers`.
        root: PathBuf,
    },
    /// Remove a sender's folder: its transfer is over (the same file sent again later is
    /// a new transfer, not one the receiver has finished and forgotten).
    Forget {
        /// The folder.
        dir: PathBuf,
    },
}

/// A side's folder as reopened, with who the other side is.
#[derive(Debug)]
pub struct Opened<T> {
    /// The state.
    pub state: T,
    /// The other side.
    pub peer: String,
}

/// What a [`FileEffect`] came to.
#[derive(Debug)]
pub enum FileEffectResult {
    /// The sender's folder, made.
    Prepared(Result<Opened<SendState>, String>),
    /// The sender's folder, reopened.
    OpenedSend(Result<Opened<SendState>, String>),
    /// The receiver's folder.
    OpenedReceive(Result<Opened<ReceiveState>, String>),
    /// The receivers' unfinished folders.
    Receiving(Vec<Opened<ReceiveState>>),
    /// The folder is gone (or could not be removed: why).
    Forgotten(Result<(), String>),
}

#[derive(Serialize, Deserialize)]
struct PeerMeta {
    peer: String,
}

fn write_peer(dir: &Path, peer: &str) -> Result<(), String> {
    let bytes = serde_json::to_vec(&PeerMeta { peer: peer.to_owned() }).map_err(|e| e.to_string())?;
    crate::fsutil::write_atomic(&dir.join(PEER_FILE), &bytes, 0o600).map_err(|e| format!("write peer: {e}"))
}

fn read_peer(dir: &Path) -> Result<String, String> {
    let bytes = std::fs::read(dir.join(PEER_FILE)).map_err(|e| format!("read peer: {e}"))?;
    serde_json::from_slice::<PeerMeta>(&bytes).map(|m| m.peer).map_err(|e| format!("peer: {e}"))
}

/// An offer of the same file (by path and content) to the same peer, made before and
/// kept in a sibling of `dir`: sending it again resumes that transfer, so the receiver's
/// folder keeps every chunk it holds.
fn earlier_offer(dir: &Path, path: &Path, to: &str) -> Option<Opened<SendState>> {
    let root = dir.parent()?;
    let mut candidates: Vec<Opened<SendState>> = std::fs::read_dir(root)
        .ok()?
        .flatten()
        .map(|d| d.path())
        .filter(|d| d.join("send.json").exists())
        .filter_map(|d| Some(Opened { state: SendState::open(&d).ok()?, peer: read_peer(&d).ok()? }))
        .filter(|o| o.peer == to && o.state.path() == path)
        .collect();
    if candidates.is_empty() {
        return None;
    }
    let file = std::fs::File::open(path).ok()?;
    let now = crate::transfer::manifest::Manifest::from_reader(std::io::BufReader::new(file)).ok()?;
    let i = candidates.iter().position(|o| o.state.manifest().hash() == now.hash())?;
    Some(candidates.swap_remove(i))
}

/// Carries out a [`FileEffect`] (the shell's part: it reads and writes the disk).
pub fn run_effect(e: FileEffect) -> FileEffectResult {
    match e {
        FileEffect::Prepare { transfer, path, dir, to, cert_der, key_der } => {
            let path = std::fs::canonicalize(&path).unwrap_or(path);
            if let Some(earlier) = earlier_offer(&dir, &path, &to) {
                return FileEffectResult::Prepared(Ok(earlier));
            }
            FileEffectResult::Prepared(
                SendState::create(&dir, TransferId(transfer), &path, cert_der, key_der)
                    .map_err(|e| e.to_string())
                    .and_then(|state| write_peer(&dir, &to).map(|()| Opened { state, peer: to })),
            )
        }
        FileEffect::OpenSend { dir } => FileEffectResult::OpenedSend(
            SendState::open(&dir)
                .map_err(|e| e.to_string())
                .and_then(|state| Ok(Opened { state, peer: read_peer(&dir)? })),
        ),
        FileEffect::OpenReceive { dir, offer, from } => {
            let state = if dir.join("receive.json").exists() {
                ReceiveState::open(&dir)
            } else {
                ReceiveState::create(&dir, offer.clone())
            };
            FileEffectResult::OpenedReceive(
                state
                    .map_err(|e| e.to_string())
                    .and_then(|s| if s.offer() == &offer { Ok(s) } else { Err("another offer in its folder".into()) })
                    .and_then(|state| write_peer(&dir, &from).map(|()| Opened { state, peer: from })),
            )
        }
        FileEffect::ListReceiving { root } => {
            let mut out = Vec::new();
            for d in std::fs::read_dir(&root).into_iter().flatten().flatten() {
                let dir = d.path();
                if !dir.join("receive.json").exists() {
                    continue;
                }
                match (ReceiveState::open(&dir), read_peer(&dir)) {
                    (Ok(state), Ok(peer)) => out.push(Opened { state, peer }),
                    (Err(e), _) => {
                        tracing::warn!(dir = %dir.display(), error = %e, "an unfinished transfer does not open")
                    }
                    (_, Err(e)) => {
                        tracing::warn!(dir = %dir.display(), error = %e, "an unfinished transfer names no peer")
                    }
                }
            }
            FileEffectResult::Receiving(out)
        }
        FileEffect::Forget { dir } => FileEffectResult::Forgotten(
            std::fs::remove_dir_all(&dir).map_err(|e| format!("remove {}: {e}", dir.display())),
        ),
    }
}

/// What a finished transfer came to (the command's completion on the sending side).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct FileDone {
    /// The transfer (hex).
    pub transfer: String,
    /// SHA-256 of the whole file (hex).
    pub sha256: String,
    /// Its size.
    pub bytes: u64,
    /// The path the call found: `direct`, `punched`, `relay-udp` or `relay-tcp`; for an
    /// offer that waits for its recipient, `offered`.
    pub path: String,
    /// From the offer (or the call, on a resume) to the end, in milliseconds.
    pub ms: u64,
    /// Bytes this host's QUIC connections for the transfer sent, retransmissions included
    /// (every connection since the command, when the recipient called again).
    pub wire_bytes: u64,
    /// Chunks this host sent for the command, over all its connections.
    pub chunks: u32,
    /// Of those, chunks an earlier connection had already put on its stream (the
    /// receiver did not have them durable when it asked again).
    pub chunks_resent: u32,
    /// Bytes quinn declared lost over all the connections (sent again when still wanted).
    pub lost_bytes: u64,
    /// `done` or `offered`.
    pub status: String,
}

/// What the files ask of the rest of the host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FilesOut {
    /// Send `body` to `to` as a chat message; its outcome comes back by `tag`.
    Chat {
        /// Ours.
        tag: u64,
        /// Whom.
        to: String,
        /// The offer.
        body: Body,
    },
    /// Look `user` up and place a file call for `transfer`; comes back by transfer.
    Call {
        /// The transfer.
        transfer: [u8; 16],
        /// The sender.
        user: String,
    },
    /// Look `user` up: do they show online? Comes back by transfer.
    Presence {
        /// The transfer.
        transfer: [u8; 16],
        /// The recipient.
        user: String,
    },
    /// Answer a ringing file call.
    Answer {
        /// The call.
        call: [u8; 16],
        /// Take it.
        accept: bool,
    },
    /// Hang a file call up.
    End {
        /// The call.
        call: [u8; 16],
    },
    /// A datagram for call `call`'s path (its demux byte in front).
    Datagram {
        /// The call.
        call: [u8; 16],
        /// The bytes.
        bytes: Vec<u8>,
    },
    /// Tell the super node a receiving connection ended: the file bytes it brought, and
    /// its route as a completion names it.
    Report {
        /// `direct`, `punched`, `relay-udp` or `relay-tcp`.
        route: &'static str,
        /// File bytes taken in over this connection.
        bytes: u64,
    },
}

enum Side {
    Send(Box<Sender>),
    Receive(Box<Receiver>),
}

struct Running {
    transfer: [u8; 16],
    peer: String,
    side: Side,
    began: Instant,
    last_progress: Option<Instant>,
    chunks_at_start: u32,
    /// The receiver's bytes held when this connection began.
    bytes_at_start: u64,
    route: Option<&'static str>,
    /// The receiver's end is reported; it waits for its connection to drain.
    reported: bool,
}

/// A send command still waiting for its end.
struct Outgoing {
    op: u64,
    to: String,
    began: Instant,
    /// The recipient was online when the offer went (or its call ended half way):
    /// wait for their call until then.
    call_by: Option<Instant>,
    /// What earlier connections of this transfer sent: QUIC bytes and chunks.
    wire_bytes: u64,
    chunks: u32,
    /// Bytes those connections' quinn declared lost.
    lost_bytes: u64,
    /// The chunks those connections put on their streams, and how many of them were
    /// put on a stream more than once.
    sent_before: Option<ChunkBitmap>,
    chunks_resent: u32,
}

impl Outgoing {
    /// Adds a connection's counts as it ends.
    fn add_connection(&mut self, wire: WireStats, chunks: u32, sent: &ChunkBitmap) {
        self.wire_bytes += wire.udp_tx_bytes;
        self.lost_bytes += wire.lost_bytes;
        self.chunks += chunks;
        let before = self.sent_before.get_or_insert_with(|| ChunkBitmap::new(sent.chunks()));
        for i in (0..sent.chunks()).filter(|&i| sent.get(i)) {
            if before.get(i) {
                self.chunks_resent += 1;
            }
            before.set(i);
        }
    }
}

/// An accepted offer waiting for its call to be placed or to come up.
struct Wanted {
    sender: String,
    state: Option<ReceiveState>,
    /// When to call (again).
    call_at: Option<Instant>,
    calling: bool,
    /// Calls in a row that could not be placed.
    failed: u32,
}

enum EffectFor {
    Prepare { op: u64, transfer: [u8; 16] },
    OpenSend { call: [u8; 16], transfer: [u8; 16], caller: String },
    OpenReceive { transfer: [u8; 16] },
    List,
    Forget,
}

/// Counters.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct FilesStats {
    /// Datagrams for no running transfer.
    pub stray: u64,
    /// File calls declined (no such transfer here, or not for that caller).
    pub declined: u64,
    /// Offers seen (accepted or not).
    pub offers: u64,
    /// Transfers that ended whole.
    pub done: u64,
}

/// The file transfers of a host; see the module's documentation.
pub struct FilesCore {
    cfg: FilesConfig,
    rng: StdRng,
    running: BTreeMap<[u8; 16], Running>,
    sending: BTreeMap<[u8; 16], Outgoing>,
    offered: BTreeMap<u64, [u8; 16]>,
    wanted: BTreeMap<[u8; 16], Wanted>,
    effects_for: BTreeMap<u64, EffectFor>,
    next_tag: u64,
    out: VecDeque<FilesOut>,
    effects: VecDeque<(u64, FileEffect)>,
    events: VecDeque<Event>,
    completions: VecDeque<(u64, Result<FileDone, String>)>,
    stats: FilesStats,
    /// Offers seen while no folder took them: (from, offer, from a buddy).
    unanswered: VecDeque<(String, Body, bool)>,
    /// Offers shown, oldest first (at most [`SHOWN_MAX`]).
    shown: VecDeque<(String, [u8; 16])>,
}

impl FilesCore {
    /// The files of a host with `cfg`; `rng` draws transfer ids, TLS identities and QUIC's
    /// randomness.
    pub fn new(cfg: FilesConfig, rng: StdRng) -> Self {
        let mut f = Self {
            cfg,
            rng,
            running: BTreeMap::new(),
            sending: BTreeMap::new(),
            offered: BTreeMap::new(),
            wanted: BTreeMap::new(),
            effects_for: BTreeMap::new(),
            next_tag: 1,
            out: VecDeque::new(),
            effects: VecDeque::new(),
            events: VecDeque::new(),
            completions: VecDeque::new(),
            stats: FilesStats::default(),
            unanswered: VecDeque::new(),
            shown: VecDeque::new(),
        };
        if let (Some(root), Some(_)) = (f.cfg.transfers.clone(), f.cfg.accept_into.as_ref()) {
            let tag = f.tag();
            f.effects_for.insert(tag, EffectFor::List);
            f.effects.push_back((tag, FileEffect::ListReceiving { root }));
        }
        f
    }

    fn tag(&mut self) -> u64 {
        let t = self.next_tag;
        self.next_tag += 1;
        t
    }

    fn dir(&self, transfer: &[u8; 16]) -> Option<PathBuf> {
        self.cfg.transfers.as_ref().map(|r| r.join(hex::encode(transfer)))
    }

    /// The offers seen while no folder took them, to give to the files' next
    /// configuration.
    pub fn take_unanswered(&mut self) -> Vec<(String, Body, bool)> {
        self.unanswered.drain(..).collect()
    }

    /// Counters.
    pub fn stats(&self) -> FilesStats {
        self.stats
    }

    /// Whether a transfer runs or waits for its call.
    pub fn is_busy(&self) -> bool {
        !self.running.is_empty() || !self.sending.is_empty() || !self.wanted.is_empty()
    }

    /// The calls that carry a transfer now.
    pub fn calls(&self) -> impl Iterator<Item = [u8; 16]> + '_ {
        self.running.keys().copied()
    }

    // ---- inputs ----

    /// Offers the file at `path` to `to`; completes under `op`.
    pub fn send_file(&mut self, now: Now, op: u64, to: &str, path: PathBuf) {
        let mut transfer = [0u8; 16];
        rand::Rng::fill_bytes(&mut self.rng, &mut transfer);
        let Some(dir) = self.dir(&transfer) else {
            self.completions.push_back((op, Err("this host keeps no transfers (no home folder)".into())));
            return;
        };
        let identity = match TlsIdentity::generate(&mut self.rng) {
            Ok(i) => i,
            Err(e) => {
                self.completions.push_back((op, Err(e.to_string())));
                return;
            }
        };
        let to = to.to_ascii_lowercase();
        self.sending.insert(
            transfer,
            Outgoing {
                op,
                to: to.clone(),
                began: now.mono,
                call_by: None,
                wire_bytes: 0,
                chunks: 0,
                lost_bytes: 0,
                sent_before: None,
                chunks_resent: 0,
            },
        );
        let tag = self.tag();
        self.effects_for.insert(tag, EffectFor::Prepare { op, transfer });
        let e = FileEffect::Prepare {
            transfer,
            path,
            dir,
            to,
            cert_der: identity.cert_der.clone(),
            key_der: identity.key_der.clone(),
        };
        self.effects.push_back((tag, e));
    }

    /// A message from `from` with an offer in it (seen once, from the chat's history);
    /// taken into the folder for offers only from an authorized buddy (`buddy`), shown
    /// either way.
    pub fn on_offer(&mut self, now: Now, from: &str, body: &Body, buddy: bool) {
        let Body::FileOffer { transfer, name, bytes, sha256, manifest, cert_fingerprint } = body else { return };
        self.stats.offers += 1;
        let seen = (from.to_owned(), *transfer);
        let again = self.shown.contains(&seen);
        if !again {
            if self.shown.len() >= SHOWN_MAX {
                self.shown.pop_front();
            }
            self.shown.push_back(seen);
            self.push_event(Event::File {
                transfer: hex::encode(transfer),
                peer: from.to_owned(),
                name: name.clone(),
                state: FileState::Offered,
                bytes: 0,
                bytes_total: *bytes,
                sha256: Some(hex::encode(sha256)),
                path: None,
            });
        }
        let (Some(into), Some(dir)) = (self.cfg.accept_into.clone(), self.dir(transfer)) else {
            if again {
                return;
            }
            // Kept for a folder set later (offers come with the messages fetched at login,
            // before the application has said where files go).
            if self.unanswered.len() >= UNANSWERED_MAX {
                self.unanswered.pop_front();
            }
            self.unanswered.push_back((from.to_owned(), body.clone(), buddy));
            return;
        };
        if !buddy {
            tracing::info!(%from, "a file offered by someone who is not a buddy: shown, not taken");
            return;
        }
        if self.wanted.contains_key(transfer) || self.running.values().any(|r| r.transfer == *transfer) {
            return;
        }
        let offer = ReceiveOffer {
            id: TransferId(*transfer),
            manifest_hash: *manifest,
            cert_fingerprint: *cert_fingerprint,
            destination: into.join(name),
        };
        self.wanted.insert(
            *transfer,
            Wanted { sender: from.to_owned(), state: None, call_at: Some(now.mono), calling: false, failed: 0 },
        );
        let tag = self.tag();
        self.effects_for.insert(tag, EffectFor::OpenReceive { transfer: *transfer });
        self.effects.push_back((tag, FileEffect::OpenReceive { dir, offer, from: from.to_owned() }));
    }

    /// The offer's chat message under `tag` went out: `Ok(true)` if the store pushed it
    /// to an online session of the recipient.
    pub fn on_offer_sent(&mut self, now: Now, tag: u64, r: Result<bool, String>) {
        let Some(transfer) = self.offered.remove(&tag) else { return };
        let Some(o) = self.sending.get_mut(&transfer) else { return };
        match r {
            Ok(true) => o.call_by = Some(now.mono + CALL_WAIT),
            // Stored need not mean offline (a push from another super node is not
            // counted): the recipient's entry says.
            Ok(false) => self.out.push_back(FilesOut::Presence { transfer, user: o.to.clone() }),
            Err(e) => {
                let o = self.sending.remove(&transfer).expect("held just above");
                self.completions.push_back((o.op, Err(format!("the offer did not go out: {e}"))));
            }
        }
    }

    /// Whether the recipient of `transfer`'s offer shows online: if so, its call is
    /// awaited; if not, the offer waits for them.
    pub fn on_presence(&mut self, now: Now, transfer: [u8; 16], online: bool) {
        match self.sending.get_mut(&transfer) {
            Some(o) if online => o.call_by = Some(now.mono + CALL_WAIT),
            Some(_) => self.offered_only(now, transfer),
            None => {}
        }
    }

    /// The offer waits for its recipient: the command completes `offered`.
    fn offered_only(&mut self, now: Now, transfer: [u8; 16]) {
        let Some(o) = self.sending.remove(&transfer) else { return };
        let done = FileDone {
            transfer: hex::encode(transfer),
            sha256: String::new(),
            bytes: 0,
            path: "offered".into(),
            ms: now.mono.saturating_duration_since(o.began).as_millis() as u64,
            wire_bytes: 0,
            chunks: 0,
            chunks_resent: 0,
            lost_bytes: 0,
            status: "offered".into(),
        };
        self.completions.push_back((o.op, Ok(done)));
    }

    /// The file call for `transfer` was placed (`Ok(call)`) or could not be.
    pub fn on_call_placed(&mut self, now: Now, transfer: [u8; 16], r: Result<[u8; 16], String>) {
        let Some(w) = self.wanted.get_mut(&transfer) else {
            if let Ok(call) = r {
                self.out.push_back(FilesOut::End { call });
            }
            return;
        };
        match r {
            Ok(call) => {
                let Some(state) = w.state.take() else { return };
                let peer = w.sender.clone();
                self.wanted.remove(&transfer);
                match Receiver::new(state, now.mono, &mut self.rng) {
                    Ok(rx) => {
                        let (chunks_at_start, bytes_at_start) = (rx.progress().chunks, rx.progress().bytes);
                        let side = Side::Receive(Box::new(rx));
                        let r = Running {
                            transfer,
                            peer,
                            side,
                            began: now.mono,
                            last_progress: None,
                            chunks_at_start,
                            bytes_at_start,
                            route: None,
                            reported: false,
                        };
                        self.running.insert(call, r);
                        self.step(now, call);
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "a receiver could not start");
                        self.out.push_back(FilesOut::End { call });
                    }
                }
            }
            Err(e) => {
                w.calling = false;
                w.failed = w.failed.saturating_add(1);
                let wait = RECALL_AFTER.saturating_mul(1 << w.failed.min(8)).min(RECALL_MAX);
                tracing::info!(error = %e, ?wait, "the file call could not be placed; trying again later");
                w.call_at = Some(now.mono + wait);
            }
        }
    }

    /// A file call rings: answered once the transfer's folder is open and the caller is
    /// the one it was offered to.
    pub fn on_file_call(&mut self, call: [u8; 16], transfer: [u8; 16], caller: &str) {
        let Some(dir) = self.dir(&transfer) else {
            self.stats.declined += 1;
            self.out.push_back(FilesOut::Answer { call, accept: false });
            return;
        };
        let tag = self.tag();
        self.effects_for.insert(tag, EffectFor::OpenSend { call, transfer, caller: caller.to_ascii_lowercase() });
        self.effects.push_back((tag, FileEffect::OpenSend { dir }));
    }

    /// Call `call` ended: its transfer stops (its folder keeps what it had); a receiver
    /// calls again later if the file is not whole.
    pub fn on_call_ended(&mut self, now: Now, call: [u8; 16]) {
        let Some(r) = self.running.remove(&call) else { return };
        if r.reported {
            return;
        }
        let (progress, wire) = match &r.side {
            Side::Send(s) => (s.progress(), s.wire_stats()),
            Side::Receive(rx) => (rx.progress(), rx.wire_stats()),
        };
        self.stopped(now, r, progress, wire, "the call ended".into());
    }

    /// A transfer stopped before the end (its call ended, or its connection failed): the
    /// sender waits for the recipient to call again, the receiver calls again.
    fn stopped(&mut self, now: Now, r: Running, progress: Progress, wire: WireStats, reason: String) {
        tracing::info!(%reason, "a transfer stopped; it resumes from its folder");
        self.report(&r, progress);
        let ev = file_event(&r, FileState::Stopped { reason }, progress, None);
        self.push_event(ev);
        match r.side {
            Side::Send(s) => {
                if let Some(o) = self.sending.get_mut(&r.transfer) {
                    o.add_connection(wire, progress.chunks, s.sent_chunks());
                    o.call_by = Some(now.mono + CALL_WAIT);
                }
            }
            Side::Receive(rx) => {
                let offer = rx.state().offer().clone();
                // Dropped first: its folder is reopened for the next call.
                drop(rx);
                let Some(dir) = self.dir(&r.transfer) else { return };
                let w = Wanted { sender: r.peer.clone(), state: None, call_at: None, calling: false, failed: 0 };
                self.wanted.insert(r.transfer, w);
                let tag = self.tag();
                self.effects_for.insert(tag, EffectFor::OpenReceive { transfer: r.transfer });
                self.effects.push_back((tag, FileEffect::OpenReceive { dir, offer, from: r.peer }));
            }
        }
    }

    /// A datagram (its demux byte removed) on file call `call`'s path.
    /// `route`: the path the call chose, as the completion names it.
    pub fn handle_datagram(&mut self, now: Now, call: [u8; 16], bytes: &[u8], route: Option<&'static str>) {
        let Some(r) = self.running.get_mut(&call) else {
            self.stats.stray += 1;
            return;
        };
        if route.is_some() {
            r.route = route;
        }
        match &mut r.side {
            Side::Send(s) => s.handle_datagram(now.mono, bytes),
            Side::Receive(rx) => rx.handle_datagram(now.mono, bytes),
        }
        self.step(now, call);
    }

    /// The outcome of effect `tag`.
    pub fn on_effect_result(&mut self, now: Now, tag: u64, result: FileEffectResult) {
        let Some(for_) = self.effects_for.remove(&tag) else { return };
        match (for_, result) {
            (EffectFor::Prepare { op, transfer }, FileEffectResult::Prepared(r)) => match r {
                Ok(o) => {
                    // An earlier offer of the same file to the same peer goes again.
                    let transfer = match o.state.id().0 {
                        same if same == transfer => same,
                        earlier => {
                            if let Some(x) = self.sending.remove(&transfer) {
                                self.sending.insert(earlier, x);
                            }
                            earlier
                        }
                    };
                    let m = o.state.manifest();
                    let name = o.state.path().file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
                    let (cert, _) = o.state.identity();
                    let body = Body::FileOffer {
                        transfer,
                        name,
                        bytes: m.size(),
                        sha256: m.file_sha256(),
                        manifest: m.hash(),
                        cert_fingerprint: sha256(cert),
                    };
                    let tag = self.tag();
                    self.offered.insert(tag, transfer);
                    self.out.push_back(FilesOut::Chat { tag, to: o.peer, body });
                }
                Err(e) => {
                    self.sending.remove(&transfer);
                    self.completions.push_back((op, Err(e)));
                }
            },
            (EffectFor::OpenSend { call, transfer, caller }, FileEffectResult::OpenedSend(r)) => {
                let ok = match r {
                    Ok(o) if o.peer == caller && o.state.id().0 == transfer => Some(o),
                    Ok(_) => {
                        tracing::info!(%caller, "a file call for a transfer offered to someone else");
                        None
                    }
                    Err(e) => {
                        tracing::info!(error = %e, "a file call for a transfer not served here");
                        None
                    }
                };
                let Some(o) = ok else {
                    self.stats.declined += 1;
                    self.out.push_back(FilesOut::Answer { call, accept: false });
                    return;
                };
                match Sender::new(o.state, &mut self.rng) {
                    Ok(s) => {
                        let side = Side::Send(Box::new(s));
                        // A connection of an earlier call for it (a receiver that
                        // restarted calls again before that call has timed out) ends here,
                        // its counts kept.
                        let earlier: Vec<[u8; 16]> = self
                            .running
                            .iter()
                            .filter(|(_, r)| r.transfer == transfer && matches!(r.side, Side::Send(_)))
                            .map(|(c, _)| *c)
                            .collect();
                        for c in earlier {
                            self.out.push_back(FilesOut::End { call: c });
                            self.on_call_ended(now, c);
                        }
                        // Its call came: no more waiting for one while it runs.
                        if let Some(o) = self.sending.get_mut(&transfer) {
                            o.call_by = None;
                        }
                        let began = self.sending.get(&transfer).map_or(now.mono, |o| o.began);
                        let r = Running {
                            transfer,
                            peer: o.peer,
                            side,
                            began,
                            last_progress: None,
                            chunks_at_start: 0,
                            bytes_at_start: 0,
                            route: None,
                            reported: false,
                        };
                        self.running.insert(call, r);
                        self.out.push_back(FilesOut::Answer { call, accept: true });
                        self.step(now, call);
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "a sender could not start");
                        self.out.push_back(FilesOut::Answer { call, accept: false });
                    }
                }
            }
            (EffectFor::OpenReceive { transfer }, FileEffectResult::OpenedReceive(r)) => match r {
                Ok(o) => {
                    if let Some(w) = self.wanted.get_mut(&transfer) {
                        w.state = Some(o.state);
                        w.call_at.get_or_insert(now.mono + RECALL_AFTER);
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %e, "a transfer's folder could not be opened");
                    self.wanted.remove(&transfer);
                }
            },
            (EffectFor::List, FileEffectResult::Receiving(list)) => {
                for o in list {
                    let transfer = o.state.offer().id.0;
                    self.wanted.entry(transfer).or_insert(Wanted {
                        sender: o.peer,
                        state: Some(o.state),
                        call_at: Some(now.mono),
                        calling: false,
                        failed: 0,
                    });
                }
            }
            (EffectFor::Forget, FileEffectResult::Forgotten(r)) => {
                if let Err(e) = r {
                    tracing::warn!(error = %e, "a finished transfer's folder stays");
                }
            }
            _ => tracing::warn!("a file effect answered with another kind"),
        }
    }

    /// Timers: every transfer's QUIC timers, calls to place, offers that waited long
    /// enough for their call.
    pub fn handle_timeout(&mut self, now: Now) {
        let calls: Vec<[u8; 16]> = self.running.keys().copied().collect();
        for call in calls {
            if let Some(r) = self.running.get_mut(&call) {
                match &mut r.side {
                    Side::Send(s) => s.handle_timeout(now.mono),
                    Side::Receive(rx) => rx.handle_timeout(now.mono),
                }
            }
            self.step(now, call);
        }
        let due: Vec<[u8; 16]> = self
            .wanted
            .iter()
            .filter(|(_, w)| !w.calling && w.state.is_some() && w.call_at.is_some_and(|t| t <= now.mono))
            .map(|(t, _)| *t)
            .collect();
        for transfer in due {
            if let Some(w) = self.wanted.get_mut(&transfer) {
                w.calling = true;
                w.call_at = None;
                self.out.push_back(FilesOut::Call { transfer, user: w.sender.clone() });
            }
        }
        let waited: Vec<[u8; 16]> = self
            .sending
            .iter()
            .filter(|(t, o)| {
                o.call_by.is_some_and(|b| b <= now.mono) && !self.running.values().any(|r| r.transfer == **t)
            })
            .map(|(t, _)| *t)
            .collect();
        for t in waited {
            self.offered_only(now, t);
        }
    }

    /// When `handle_timeout` next has work.
    pub fn poll_timeout(&mut self) -> Option<Instant> {
        let quic = self.running.values_mut().filter_map(|r| match &mut r.side {
            Side::Send(s) => s.poll_timeout(),
            Side::Receive(rx) => rx.poll_timeout(),
        });
        let mut t: Option<Instant> = quic.min();
        let calls = self.wanted.values().filter(|w| !w.calling && w.state.is_some()).filter_map(|w| w.call_at);
        let running: Vec<[u8; 16]> = self.running.values().map(|r| r.transfer).collect();
        let waits = self.sending.iter().filter(|(t, _)| !running.contains(t)).filter_map(|(_, o)| o.call_by);
        for x in calls.chain(waits) {
            t = Some(t.map_or(x, |t| t.min(x)));
        }
        t
    }

    /// Moves call `call`'s transfer on: its datagrams out, its progress and end reported.
    fn step(&mut self, now: Now, call: [u8; 16]) {
        let Some(r) = self.running.get_mut(&call) else { return };
        loop {
            let d = match &mut r.side {
                Side::Send(s) => s.poll_transmit(now.mono),
                Side::Receive(rx) => rx.poll_transmit(now.mono),
            };
            let Some(d) = d else { break };
            let mut bytes = Vec::with_capacity(d.len() + 1);
            bytes.push(FILE_DEMUX);
            bytes.extend(d);
            self.out.push_back(FilesOut::Datagram { call, bytes });
        }
        let (progress, ended, wire) = match &r.side {
            Side::Send(s) => {
                (s.progress(), s.outcome().map(|o| o.as_ref().map(|_| None).map_err(|e| e.to_string())), s.wire_stats())
            }
            Side::Receive(rx) => (
                rx.progress(),
                rx.outcome().map(|o| o.as_ref().map(|p| Some(p.clone())).map_err(|e| e.to_string())),
                rx.wire_stats(),
            ),
        };
        let due = r.last_progress.is_none_or(|t| now.mono.saturating_duration_since(t) >= PROGRESS_EVERY);
        if ended.is_none() && due && progress.chunks_total > 0 {
            r.last_progress = Some(now.mono);
            let e = file_event(r, FileState::Progress, progress, None);
            self.push_event(e);
        }
        let Some(ended) = ended else { return };
        let mut r = self.running.remove(&call).expect("held just above");
        if let (Side::Receive(rx), Ok(placed)) = (&r.side, &ended) {
            // The receiver has the file. It stays until its connection has drained, so a
            // lost close is sent again when the sender repeats itself, and it leaves the
            // call to the sender to end: a hang-up overtaking the close (through the
            // super nodes, while the datagrams queue at a relay) would leave the sender
            // waiting for the end of a transfer that is over.
            let drained = rx.is_drained();
            if !r.reported {
                r.reported = true;
                let placed = placed.clone();
                self.finish(now, &r, progress, wire, placed);
            }
            if !drained {
                self.running.insert(call, r);
            }
            return;
        }
        self.out.push_back(FilesOut::End { call });
        match ended {
            Ok(placed) => self.finish(now, &r, progress, wire, placed),
            Err(e) => self.stopped(now, r, progress, wire, e),
        }
    }

    /// A receiving connection ended: what it brought, by route, for the super node.
    fn report(&mut self, r: &Running, progress: Progress) {
        let bytes = progress.bytes.saturating_sub(r.bytes_at_start);
        if let (Side::Receive(_), Some(route), true) = (&r.side, r.route, bytes > 0) {
            self.out.push_back(FilesOut::Report { route, bytes });
        }
    }

    /// A transfer ended whole (`placed`: where the receiver put the file).
    fn finish(&mut self, now: Now, r: &Running, progress: Progress, wire: WireStats, placed: Option<PathBuf>) {
        self.stats.done += 1;
        self.report(r, progress);
        let (sha, size) = match &r.side {
            Side::Send(s) => (s.manifest().file_sha256(), s.manifest().size()),
            Side::Receive(rx) => rx.state().manifest().map(|m| (m.file_sha256(), m.size())).unwrap_or_default(),
        };
        let path_shown = placed.as_ref().map(|p| p.display().to_string());
        let mut e = file_event(r, FileState::Done, progress, path_shown);
        if let Event::File { sha256, .. } = &mut e {
            *sha256 = Some(hex::encode(sha));
        }
        self.push_event(e);
        if let (Side::Send(_), Some(dir)) = (&r.side, self.dir(&r.transfer)) {
            let tag = self.tag();
            self.effects_for.insert(tag, EffectFor::Forget);
            self.effects.push_back((tag, FileEffect::Forget { dir }));
        }
        if let Some(mut o) = self.sending.remove(&r.transfer) {
            if let Side::Send(s) = &r.side {
                o.add_connection(wire, progress.chunks.saturating_sub(r.chunks_at_start), s.sent_chunks());
            }
            let done = FileDone {
                transfer: hex::encode(r.transfer),
                sha256: hex::encode(sha),
                bytes: size,
                path: r.route.unwrap_or("unknown").into(),
                ms: now.mono.saturating_duration_since(o.began.min(r.began)).as_millis() as u64,
                wire_bytes: o.wire_bytes,
                chunks: o.chunks,
                chunks_resent: o.chunks_resent,
                lost_bytes: o.lost_bytes,
                status: "done".into(),
            };
            self.completions.push_back((o.op, Ok(done)));
        }
    }

    fn push_event(&mut self, e: Event) {
        if self.events.len() < super::host::EVENTS_MAX {
            self.events.push_back(e);
        }
    }

    // ---- outputs ----

    /// The next thing for the rest of the host.
    pub fn poll_out(&mut self) -> Option<FilesOut> {
        self.out.pop_front()
    }

    /// The next effect, under its tag.
    pub fn poll_effect(&mut self) -> Option<(u64, FileEffect)> {
        self.effects.pop_front()
    }

    /// The next event.
    pub fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }

    /// The next finished send command.
    pub fn poll_completion(&mut self) -> Option<(u64, Result<FileDone, String>)> {
        self.completions.pop_front()
    }
}

fn sha256(b: &[u8]) -> [u8; 32] {
    use sha2::Digest;
    sha2::Sha256::digest(b).into()
}

/// Where a transfer is, as events tell it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum FileState {
    /// An offer arrived.
    Offered,
    /// Bytes move.
    Progress,
    /// The whole file arrived and verified (the receiver), or was acknowledged (the sender).
    Done,
    /// The call carrying it ended or the transfer failed; it resumes from its folder.
    Stopped {
        /// Why.
        reason: String,
    },
}

fn file_event(r: &Running, state: FileState, p: Progress, path: Option<String>) -> Event {
    Event::File {
        transfer: hex::encode(r.transfer),
        peer: r.peer.clone(),
        name: String::new(),
        state,
        bytes: p.bytes,
        bytes_total: p.bytes_total,
        sha256: None,
        path,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    #[test]
    fn a_sender_waits_for_the_call_longer_than_a_lost_push_takes_to_be_fetched() {
        assert!(CALL_WAIT > super::super::chat::FETCH_EVERY);
    }

    fn now() -> Now {
        Now { mono: Instant::now(), unix_ms: 1_700_000_000_000 }
    }

    fn offer() -> Body {
        Body::FileOffer {
            transfer: [1; 16],
            name: "a.bin".into(),
            bytes: 10,
            sha256: [2; 32],
            manifest: [3; 32],
            cert_fingerprint: [4; 32],
        }
    }

    #[test]
    fn an_offer_is_taken_into_the_folder_only_from_a_buddy_and_shown_either_way() {
        let dir = tempfile::tempdir().unwrap();
        let cfg =
            FilesConfig { transfers: Some(dir.path().join("transfers")), accept_into: Some(dir.path().join("inbox")) };
        let mut f = FilesCore::new(cfg, StdRng::seed_from_u64(1));
        // At start: the unfinished receptions are listed.
        assert!(matches!(f.poll_effect(), Some((_, FileEffect::ListReceiving { .. }))));
        // Seen before the folder was set: kept for it.
        let mut before = FilesCore::new(FilesConfig::default(), StdRng::seed_from_u64(1));
        before.on_offer(now(), "alice", &offer(), true);
        assert_eq!(before.take_unanswered(), vec![("alice".to_owned(), offer(), true)]);
        f.on_offer(now(), "mallory", &offer(), false);
        assert!(matches!(f.poll_event(), Some(Event::File { state: FileState::Offered, .. })));
        assert_eq!(f.poll_effect(), None, "a stranger's file is not taken");
        assert!(!f.is_busy());
        f.on_offer(now(), "alice", &offer(), true);
        assert!(matches!(f.poll_event(), Some(Event::File { state: FileState::Offered, .. })));
        let Some((_, FileEffect::OpenReceive { offer: taken, from, .. })) = f.poll_effect() else {
            panic!("a folder opened")
        };
        assert_eq!((from.as_str(), taken.destination), ("alice", dir.path().join("inbox").join("a.bin")));
        // The same offer again (a resend) opens nothing more, and is not shown again.
        f.on_offer(now(), "alice", &offer(), true);
        assert_eq!(f.poll_effect(), None);
        assert_eq!(f.poll_event(), None);
        before.on_offer(now(), "alice", &offer(), true);
        assert!(before.take_unanswered().is_empty(), "kept once for the folder");
    }

    #[test]
    fn a_sender_that_cannot_be_called_is_called_again_less_and_less_often() {
        let dir = tempfile::tempdir().unwrap();
        let cfg =
            FilesConfig { transfers: Some(dir.path().join("transfers")), accept_into: Some(dir.path().join("inbox")) };
        let mut f = FilesCore::new(cfg, StdRng::seed_from_u64(3));
        let (tag, e) = f.poll_effect().unwrap();
        let t0 = now();
        f.on_effect_result(t0, tag, run_effect(e));
        f.on_offer(t0, "alice", &offer(), true);
        let (tag, e) = f.poll_effect().unwrap();
        f.on_effect_result(t0, tag, run_effect(e));
        let at = |s: u64| Now { mono: t0.mono + Duration::from_secs(s), unix_ms: t0.unix_ms + s * 1000 };
        let mut calls = Vec::new();
        for s in 0..60 {
            f.handle_timeout(at(s));
            while let Some(o) = f.poll_out() {
                if let FilesOut::Call { transfer, user } = o {
                    assert_eq!((transfer, user.as_str()), ([1; 16], "alice"));
                    calls.push(s);
                    f.on_call_placed(at(s), transfer, Err("alice is offline".into()));
                }
            }
        }
        // At once for a new offer, then 6, 12, 24 s after each failure.
        assert_eq!(calls, vec![0, 6, 18, 42]);
    }

    #[test]
    fn a_file_call_for_a_transfer_offered_to_someone_else_is_declined() {
        let dir = tempfile::tempdir().unwrap();
        let src = dir.path().join("f.bin");
        std::fs::write(&src, vec![7u8; 100_000]).unwrap();
        let cfg = FilesConfig { transfers: Some(dir.path().join("transfers")), accept_into: None };
        let mut f = FilesCore::new(cfg, StdRng::seed_from_u64(2));
        f.send_file(now(), 9, "bob", src);
        let (tag, e) = f.poll_effect().unwrap();
        f.on_effect_result(now(), tag, run_effect(e));
        let Some(FilesOut::Chat { body: Body::FileOffer { transfer, .. }, .. }) = f.poll_out() else {
            panic!("the offer goes as a chat message")
        };
        f.on_file_call([5; 16], transfer, "mallory");
        let (tag, e) = f.poll_effect().unwrap();
        f.on_effect_result(now(), tag, run_effect(e));
        assert_eq!(f.poll_out(), Some(FilesOut::Answer { call: [5; 16], accept: false }));
        f.on_file_call([6; 16], transfer, "Bob");
        let (tag, e) = f.poll_effect().unwrap();
        f.on_effect_result(now(), tag, run_effect(e));
        assert_eq!(f.poll_out(), Some(FilesOut::Answer { call: [6; 16], accept: true }));
        assert_eq!(f.stats().declined, 1);
    }
}
