//! File transfer as plain logic over QUIC (`docs/chat.md` §4).
//!
//! The sender serves, the receiver connects and asks for the chunks it lacks; each side
//! is a sans-IO machine (`handle_datagram`, `poll_transmit`, `poll_timeout`,
//! `handle_timeout`, all with `now`) whose datagrams the caller carries on the call's path
//! behind the demux byte `0x54`. Either side can be dropped at any moment and rebuilt
//! from its folder; the transfer then resumes where the disk says it stood.
//!
//! - [`manifest`] — size, SHA-256 per 64 KiB chunk and of the whole file; its hash.
//! - [`bitmap`] — which chunks a side holds.
//! - [`frames`] — the request, manifest and chunk frames on the stream.
//! - [`state`] — the folders that make a transfer resumable.
//! - [`conn`] — the QUIC connection: roles, pinned certificate, MTU, congestion control.
//! - [`sender`] / [`receiver`] — the two sides of the protocol.

pub mod bitmap;
pub mod conn;
pub mod frames;
pub mod manifest;
pub mod receiver;
pub mod sender;
pub mod state;

#[cfg(test)]
mod link;
#[cfg(test)]
mod tests;

use thiserror::Error;

/// Application close codes: what the peer learns about why a transfer stopped.
pub mod close_code {
    /// The whole file arrived and verified.
    pub const DONE: u32 = 0;
    /// The peer broke the stream's protocol.
    pub const PROTOCOL: u32 = 1;
    /// A chunk failed its SHA-256 and was refused.
    pub const BAD_CHUNK: u32 = 2;
    /// The sender does not serve the transfer asked for.
    pub const UNKNOWN_TRANSFER: u32 = 3;
    /// The manifest does not match the offer, or the file changed since.
    pub const MANIFEST: u32 = 4;
    /// A local failure (disk) on the side that closed.
    pub const LOCAL: u32 = 5;
}

/// Why a transfer stopped without the whole file.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum TransferError {
    /// The folder or the file could not be read or written, or a chunk was refused.
    #[error(transparent)]
    State(#[from] state::StateError),
    /// The QUIC connection could not be set up.
    #[error(transparent)]
    Conn(#[from] conn::ConnError),
    /// The peer broke the stream's protocol.
    #[error("protocol: {0}")]
    Protocol(#[from] frames::FrameError),
    /// The peer closed the connection with a reason.
    #[error("the peer stopped the transfer (code {code}): {reason}")]
    Refused {
        /// Its close code ([`close_code`]).
        code: u64,
        /// Its reason.
        reason: String,
    },
    /// The receiver asked for something this sender does not serve.
    #[error("bad request: {0}")]
    BadRequest(String),
    /// The connection failed (handshake refused, timed out, reset).
    #[error("connection lost: {0}")]
    Lost(quinn_proto::ConnectionError),
    /// The sender ended its stream before every chunk was sent.
    #[error("the sender ended with {0} chunks missing")]
    EndedEarly(u32),
}

impl TransferError {
    fn from_lost(reason: quinn_proto::ConnectionError) -> TransferError {
        match reason {
            quinn_proto::ConnectionError::ApplicationClosed(c) => TransferError::Refused {
                code: c.error_code.into_inner(),
                reason: String::from_utf8_lossy(&c.reason).into_owned(),
            },
            other => TransferError::Lost(other),
        }
    }
}

/// How far a side has come.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Progress {
    /// Chunks done (the receiver: verified and written; the sender: put on the stream).
    pub chunks: u32,
    /// Of how many.
    pub chunks_total: u32,
    /// Bytes done.
    pub bytes: u64,
    /// Of how many.
    pub bytes_total: u64,
}

/// What a side's QUIC connection sent: every datagram, retransmissions included.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct WireStats {
    /// UDP payload bytes sent (the caller's demux byte not included).
    pub udp_tx_bytes: u64,
    /// Datagrams sent.
    pub udp_tx_datagrams: u64,
    /// Packets quinn declared lost.
    pub lost_packets: u64,
    /// Their bytes: what congestion (or a dead peer) cost, each sent again if still wanted.
    pub lost_bytes: u64,
}

impl WireStats {
    fn of(conn: &conn::QuicConn) -> WireStats {
        conn.stats().map_or_else(WireStats::default, |s| WireStats {
            udp_tx_bytes: s.udp_tx.bytes,
            udp_tx_datagrams: s.udp_tx.datagrams,
            lost_packets: s.path.lost_packets,
            lost_bytes: s.path.lost_bytes,
        })
    }
}
