//! The sender's side: serves one offered file to the receiver that connects.
//!
//! Driving contract: after every `handle_datagram` or `handle_timeout`, drain
//! `poll_transmit` until `None`, then wake at `poll_timeout`. The outcome is `None` while
//! the transfer runs, then `Ok(())` once the receiver said the whole file verified, or the
//! error that stopped it. Dropped at any moment, it is rebuilt with
//! [`Sender::new`] from [`SendState::open`] and serves the same offer again.

use super::bitmap::ChunkBitmap;
use super::conn::{QuicConn, TlsIdentity};
use super::frames::{self, DONE};
use super::state::{SendState, StateError};
use super::{Progress, TransferError, WireStats, close_code};
use quinn_proto::{Dir, Event, StreamEvent, StreamId, WriteError};
use std::collections::VecDeque;
use std::fs::File;
use std::time::Instant;

/// The bytes of a request the sender buffers at most (a 4 GiB file's bitmap and `DONE`).
const INBOUND_BYTES_MAX: usize = 24 + 8192 + 1;

/// One transfer's sending side.
#[derive(Debug)]
pub struct Sender {
    conn: QuicConn,
    state: SendState,
    file: Option<File>,
    stream: Option<StreamId>,
    inbound: Vec<u8>,
    requested: bool,
    queue: VecDeque<u32>,
    pending: Vec<u8>,
    pending_at: usize,
    finished: bool,
    sent: ChunkBitmap,
    progress: Progress,
    outcome: Option<Result<(), TransferError>>,
    #[cfg(test)]
    lie_about: Option<u32>,
}

impl Sender {
    /// Serves the offer in `state` with its recorded TLS identity.
    pub fn new(state: SendState, rng: &mut impl rand::Rng) -> Result<Sender, TransferError> {
        let (cert_der, key_der) = state.identity();
        let identity = TlsIdentity { cert_der: cert_der.to_vec(), key_der: key_der.to_vec() };
        let conn = QuicConn::server(&identity, rng)?;
        let sent = ChunkBitmap::new(state.manifest().chunks());
        Ok(Sender {
            conn,
            state,
            file: None,
            stream: None,
            inbound: Vec::new(),
            requested: false,
            queue: VecDeque::new(),
            pending: Vec::new(),
            pending_at: 0,
            finished: false,
            sent,
            progress: Progress::default(),
            outcome: None,
            #[cfg(test)]
            lie_about: None,
        })
    }

    /// The manifest served.
    pub fn manifest(&self) -> &crate::transfer::manifest::Manifest {
        self.state.manifest()
    }

    /// Feeds one datagram from the receiver (the demux byte removed).
    pub fn handle_datagram(&mut self, now: Instant, bytes: &[u8]) {
        self.conn.handle_datagram(now, bytes);
        self.drive(now);
    }

    /// Runs what is due at `now`.
    pub fn handle_timeout(&mut self, now: Instant) {
        self.conn.handle_timeout(now);
        self.drive(now);
    }

    /// The next datagram to send (the caller adds the demux byte).
    pub fn poll_transmit(&mut self, now: Instant) -> Option<Vec<u8>> {
        let d = self.conn.poll_transmit(now);
        // Sending frees room in the stream's buffer; fill it before the next datagram.
        self.drive(now);
        d
    }

    /// When `handle_timeout` is next due.
    pub fn poll_timeout(&mut self) -> Option<Instant> {
        self.conn.poll_timeout()
    }

    /// `None` while running; then how it ended.
    pub fn outcome(&self) -> Option<&Result<(), TransferError>> {
        self.outcome.as_ref()
    }

    /// The chunks asked for and how many have gone onto the stream.
    pub fn progress(&self) -> Progress {
        self.progress
    }

    /// The chunks put on the stream by this sender (since it was built).
    pub fn sent_chunks(&self) -> &ChunkBitmap {
        &self.sent
    }

    /// What the connection has sent, retransmissions included.
    pub fn wire_stats(&self) -> WireStats {
        WireStats::of(&self.conn)
    }

    /// Whether the connection is closed and silent: the caller may drop it.
    pub fn is_drained(&self) -> bool {
        self.conn.is_drained()
    }

    /// The call machinery moved the transfer to another path.
    pub fn path_changed(&mut self, now: Instant) {
        self.conn.path_changed(now);
    }

    /// Makes this sender flip a byte of chunk `index` after checking it: a sender that lies.
    #[cfg(test)]
    pub(crate) fn lie_about(&mut self, index: u32) {
        self.lie_about = Some(index);
    }

    fn fail(&mut self, now: Instant, code: u32, err: TransferError) {
        if self.outcome.is_none() {
            self.conn.close(now, code, &err.to_string());
            self.outcome = Some(Err(err));
        }
    }

    fn drive(&mut self, now: Instant) {
        while let Some(ev) = self.conn.poll_event() {
            match ev {
                Event::ConnectionLost { reason } if self.outcome.is_none() => {
                    // The receiver closes with DONE only once the whole file verified.
                    let done = matches!(&reason, quinn_proto::ConnectionError::ApplicationClosed(c)
                        if c.error_code.into_inner() == u64::from(close_code::DONE));
                    self.outcome = Some(if done { Ok(()) } else { Err(TransferError::from_lost(reason)) });
                }
                Event::Stream(StreamEvent::Opened { dir: Dir::Bi }) if self.stream.is_none() => {
                    self.stream = self.conn.connection().and_then(|c| c.streams().accept(Dir::Bi));
                }
                _ => {}
            }
        }
        if self.outcome.is_some() {
            return;
        }
        self.read(now);
        if self.outcome.is_none() && self.requested {
            self.write(now);
        }
    }

    fn read(&mut self, now: Instant) {
        let (Some(id), Some(conn)) = (self.stream, self.conn.connection()) else { return };
        let mut recv = conn.recv_stream(id);
        let Ok(mut chunks) = recv.read(true) else { return };
        let mut overflow = false;
        while let Ok(Some(c)) = chunks.next(INBOUND_BYTES_MAX) {
            if self.inbound.len() + c.bytes.len() > INBOUND_BYTES_MAX {
                overflow = true;
                break;
            }
            self.inbound.extend_from_slice(&c.bytes);
        }
        let _ = chunks.finalize();
        if overflow {
            return self.fail(now, close_code::PROTOCOL, frames::FrameError::Overlong.into());
        }
        if !self.requested {
            match frames::decode_request(&self.inbound) {
                Ok(None) => return,
                Ok(Some((req, used))) => {
                    self.inbound.drain(..used);
                    if let Err((code, e)) = self.start(req) {
                        return self.fail(now, code, e);
                    }
                }
                Err(e) => return self.fail(now, close_code::PROTOCOL, e.into()),
            }
        }
        match self.inbound.first() {
            None => {}
            Some(&DONE) => {
                self.outcome = Some(Ok(()));
                self.conn.close(now, close_code::DONE, "done");
            }
            Some(&b) => self.fail(now, close_code::PROTOCOL, frames::FrameError::Unexpected(b).into()),
        }
    }

    fn start(&mut self, req: frames::Request) -> Result<(), (u32, TransferError)> {
        let manifest = self.state.manifest();
        if req.id != self.state.id() {
            let reason = format!("transfer {} is not served here", req.id.hex());
            return Err((close_code::UNKNOWN_TRANSFER, TransferError::BadRequest(reason)));
        }
        let held = match req.held {
            None => ChunkBitmap::new(manifest.chunks()),
            Some(h) if h.chunks() == manifest.chunks() => h,
            Some(h) => {
                let reason = format!("request covers {} chunks, the file has {}", h.chunks(), manifest.chunks());
                return Err((close_code::PROTOCOL, TransferError::BadRequest(reason)));
            }
        };
        self.queue = held.missing().collect();
        self.progress = Progress {
            chunks: 0,
            chunks_total: self.queue.len() as u32,
            bytes: 0,
            bytes_total: self.queue.iter().map(|&i| manifest.chunk_len(i) as u64).sum(),
        };
        self.pending = frames::encode_manifest(manifest);
        self.pending_at = 0;
        self.file = Some(self.state.open_file().map_err(|e| (close_code::LOCAL, e.into()))?);
        self.requested = true;
        Ok(())
    }

    fn write(&mut self, now: Instant) {
        let Some(id) = self.stream else { return };
        loop {
            if self.pending_at == self.pending.len() {
                let Some(index) = self.queue.pop_front() else { break };
                let file = self.file.as_ref().expect("opened with the request");
                #[allow(unused_mut)]
                let mut bytes = match self.state.read_chunk(file, index) {
                    Ok(b) => b,
                    Err(e @ StateError::SourceChanged(_)) => return self.fail(now, close_code::MANIFEST, e.into()),
                    Err(e) => return self.fail(now, close_code::LOCAL, e.into()),
                };
                #[cfg(test)]
                if self.lie_about == Some(index) {
                    bytes[0] ^= 0x55;
                }
                self.pending = frames::encode_chunk(index, &bytes);
                self.pending_at = 0;
                self.sent.set(index);
                self.progress.chunks += 1;
                self.progress.bytes += bytes.len() as u64;
            }
            let Some(conn) = self.conn.connection() else { return };
            match conn.send_stream(id).write(&self.pending[self.pending_at..]) {
                Ok(n) => self.pending_at += n,
                Err(WriteError::Blocked) => return,
                Err(_) => return, // stopped or closed: the connection's event says why
            }
        }
        if !self.finished {
            self.finished = true;
            if let Some(conn) = self.conn.connection() {
                let _ = conn.send_stream(id).finish();
            }
        }
    }
}
