//! The receiver's side: connects to the sender, says what it holds, verifies and writes
//! every chunk it is sent, and places the file once the whole of it verifies.
//!
//! Driving contract as for the sender: after every input drain `poll_transmit`, wake at
//! `poll_timeout`. Dropped at any moment (a `kill -9`), it is rebuilt with
//! [`Receiver::new`] from [`ReceiveState::open`] and asks only for what its folder lacks.
//! When the connection fails it flushes what it wrote, so a new connection (the caller's
//! next call to the sender) resumes from there.

use super::conn::QuicConn;
use super::frames::{self, DONE, Request};
use super::state::{ReceiveState, StateError};
use super::{Progress, TransferError, WireStats, close_code};
use quinn_proto::{Dir, Event, StreamEvent, StreamId};
use std::path::PathBuf;
use std::time::Instant;

/// One transfer's receiving side.
#[derive(Debug)]
pub struct Receiver {
    conn: QuicConn,
    state: ReceiveState,
    stream: Option<StreamId>,
    outbound: Vec<u8>,
    outbound_at: usize,
    inbound: Vec<u8>,
    sender_ended: bool,
    manifest_seen: bool,
    placed: Option<PathBuf>,
    outcome: Option<Result<PathBuf, TransferError>>,
}

impl Receiver {
    /// Connects to the sender the offer in `state` names (by its certificate fingerprint).
    pub fn new(state: ReceiveState, now: Instant, rng: &mut impl rand::Rng) -> Result<Receiver, TransferError> {
        let conn = QuicConn::client(state.offer().cert_fingerprint, now, rng)?;
        Ok(Receiver {
            conn,
            state,
            stream: None,
            outbound: Vec::new(),
            outbound_at: 0,
            inbound: Vec::new(),
            sender_ended: false,
            manifest_seen: false,
            placed: None,
            outcome: None,
        })
    }

    /// Feeds one datagram from the sender (the demux byte removed).
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
        self.conn.poll_transmit(now)
    }

    /// When `handle_timeout` is next due.
    pub fn poll_timeout(&mut self) -> Option<Instant> {
        self.conn.poll_timeout()
    }

    /// `None` while running; then where the file was placed, or why it was not.
    pub fn outcome(&self) -> Option<&Result<PathBuf, TransferError>> {
        self.outcome.as_ref()
    }

    /// Chunks and bytes verified and written, of the whole file (zero until the manifest).
    pub fn progress(&self) -> Progress {
        match self.state.manifest() {
            None => Progress::default(),
            Some(m) => {
                let held = self.state.held();
                Progress {
                    chunks: held.count(),
                    chunks_total: m.chunks(),
                    bytes: (0..m.chunks()).filter(|&i| held.get(i)).map(|i| m.chunk_len(i) as u64).sum(),
                    bytes_total: m.size(),
                }
            }
        }
    }

    /// The transfer's state on disk.
    pub fn state(&self) -> &ReceiveState {
        &self.state
    }

    /// What the connection has sent (acknowledgements, mostly).
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

    fn fail(&mut self, now: Instant, code: u32, err: TransferError) {
        if self.outcome.is_none() {
            // What was written and verified stays: a later connection resumes from it.
            let _ = self.state.flush();
            self.conn.close(now, code, &err.to_string());
            self.outcome = Some(Err(err));
        }
    }

    fn drive(&mut self, now: Instant) {
        while let Some(ev) = self.conn.poll_event() {
            match ev {
                Event::Connected if self.stream.is_none() => self.open_stream(),
                Event::ConnectionLost { reason } if self.outcome.is_none() => {
                    let _ = self.state.flush();
                    self.outcome = Some(Err(TransferError::from_lost(reason)));
                }
                // Our `DONE` is acknowledged: the sender knows, the connection can go.
                Event::Stream(StreamEvent::Finished { id }) if Some(id) == self.stream && self.placed.is_some() => {
                    self.conn.close(now, close_code::DONE, "done");
                }
                _ => {}
            }
        }
        if self.outcome.is_some() || self.stream.is_none() {
            return;
        }
        self.write();
        self.read(now);
    }

    fn open_stream(&mut self) {
        let Some(conn) = self.conn.connection() else { return };
        self.stream = conn.streams().open(Dir::Bi);
        let held = self.state.manifest().map(|_| self.state.held().clone());
        self.outbound = frames::encode_request(&Request { id: self.state.offer().id, held });
        self.outbound_at = 0;
    }

    fn write(&mut self) {
        let (Some(id), Some(conn)) = (self.stream, self.conn.connection()) else { return };
        while self.outbound_at < self.outbound.len() {
            match conn.send_stream(id).write(&self.outbound[self.outbound_at..]) {
                Ok(n) => self.outbound_at += n,
                Err(_) => return,
            }
        }
    }

    fn read(&mut self, now: Instant) {
        let (Some(id), Some(conn)) = (self.stream, self.conn.connection()) else { return };
        let mut recv = conn.recv_stream(id);
        let Ok(mut chunks) = recv.read(true) else { return };
        let mut got = Vec::new();
        loop {
            match chunks.next(usize::MAX) {
                Ok(Some(c)) => got.push(c.bytes),
                Ok(None) => {
                    self.sender_ended = true;
                    break;
                }
                Err(_) => break,
            }
        }
        let _ = chunks.finalize();
        // Parse as each piece lands, so the buffer holds at most one partial frame.
        for piece in got {
            self.inbound.extend_from_slice(&piece);
            if let Err((code, e)) = self.parse() {
                return self.fail(now, code, e);
            }
            if self.placed.is_some() {
                break;
            }
        }
        if self.placed.is_none() && self.sender_ended {
            let missing = self.state.manifest().map_or(0, |m| m.chunks() - self.state.held().count());
            self.fail(now, close_code::PROTOCOL, TransferError::EndedEarly(missing));
        }
    }

    fn parse(&mut self) -> Result<(), (u32, TransferError)> {
        let mut at = 0;
        let result = self.parse_from(&mut at);
        self.inbound.drain(..at);
        result
    }

    fn parse_from(&mut self, at: &mut usize) -> Result<(), (u32, TransferError)> {
        while self.placed.is_none() {
            let buf = &self.inbound[*at..];
            // Every connection starts with the manifest, a resumed one too: it must hash to
            // the offer's, so a resumed transfer goes on with the same file.
            if !self.manifest_seen {
                let Some((m, used)) = frames::decode_manifest(buf).map_err(|e| (close_code::PROTOCOL, e.into()))?
                else {
                    return Ok(());
                };
                *at += used;
                self.state.set_manifest(m).map_err(|e| (state_code(&e), e.into()))?;
                self.manifest_seen = true;
                self.finish_if_whole()?;
                continue;
            }
            let manifest = self.state.manifest().expect("seen above");
            let Some((index, range, used)) =
                frames::decode_chunk(buf, manifest).map_err(|e| (close_code::PROTOCOL, e.into()))?
            else {
                return Ok(());
            };
            let (start, end) = (*at + range.start, *at + range.end);
            *at += used;
            let bytes = &self.inbound[start..end];
            self.state.write_chunk(index, bytes).map_err(|e| (state_code(&e), e.into()))?;
            self.finish_if_whole()?;
        }
        Ok(())
    }

    fn finish_if_whole(&mut self) -> Result<(), (u32, TransferError)> {
        if !self.state.held().is_full() || self.state.manifest().is_none() {
            return Ok(());
        }
        let dest = self.state.finish().map_err(|e| (close_code::LOCAL, e.into()))?;
        self.placed = Some(dest.clone());
        self.outcome = Some(Ok(dest));
        if let (Some(id), Some(conn)) = (self.stream, self.conn.connection()) {
            let mut send = conn.send_stream(id);
            let _ = send.write(&[DONE]);
            let _ = send.finish();
        }
        Ok(())
    }
}

fn state_code(e: &StateError) -> u32 {
    match e {
        StateError::BadChunk(_) => close_code::BAD_CHUNK,
        StateError::ManifestMismatch | StateError::BadManifest(_) => close_code::MANIFEST,
        _ => close_code::LOCAL,
    }
}
