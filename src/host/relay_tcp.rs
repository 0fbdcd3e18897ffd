//! A relay leg over TCP, for a host whose UDP is blocked: one connection to the relay's
//! port per relayed call, carrying each relayed datagram as a frame (2-byte big-endian
//! length, then the datagram — `relay::tcp` is the other end). What arrives joins the
//! UDP media queue, from the relay's address, so a call cannot tell the transports
//! apart past this module.

use crate::relay::packet::RELAYED_LEN_MAX;
use std::net::SocketAddr;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

/// How long connecting to a relay may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
/// Datagrams queued for sending (a second of voice and probes); beyond, new ones are
/// dropped as a full socket buffer would.
const SEND_QUEUE: usize = 64;

/// One open relay connection; dropping it closes it.
pub(super) struct RelayConn {
    tx: mpsc::Sender<Vec<u8>>,
    reader: JoinHandle<()>,
    writer: JoinHandle<()>,
}

impl Drop for RelayConn {
    fn drop(&mut self) {
        self.reader.abort();
        self.writer.abort();
    }
}

impl RelayConn {
    /// Connects to `relay`; frames that come back are queued on `media` from `relay`.
    pub async fn open(relay: SocketAddr, media: mpsc::Sender<(SocketAddr, Vec<u8>)>) -> std::io::Result<Self> {
        let stream = tokio::time::timeout(CONNECT_TIMEOUT, tokio::net::TcpStream::connect(relay))
            .await
            .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "relay did not accept in time"))??;
        // Voice frames are small and timely: never hold one back to coalesce.
        stream.set_nodelay(true)?;
        let (mut r, mut w) = stream.into_split();
        let reader = tokio::spawn(async move {
            loop {
                let mut len = [0u8; 2];
                if r.read_exact(&mut len).await.is_err() {
                    break;
                }
                let len = usize::from(u16::from_be_bytes(len));
                if len == 0 || len > RELAYED_LEN_MAX {
                    tracing::debug!(%relay, len, "relay sent a frame of a bad length; closing");
                    break;
                }
                let mut d = vec![0u8; len];
                if r.read_exact(&mut d).await.is_err() {
                    break;
                }
                // A full queue drops, as a full UDP socket buffer would.
                let _ = media.try_send((relay, d));
            }
        });
        let (tx, mut rx) = mpsc::channel::<Vec<u8>>(SEND_QUEUE);
        let writer = tokio::spawn(async move {
            while let Some(d) = rx.recv().await {
                let frame = [&(d.len() as u16).to_be_bytes()[..], &d].concat();
                if w.write_all(&frame).await.is_err() {
                    break;
                }
            }
        });
        Ok(Self { tx, reader, writer })
    }

    /// Queues one datagram; false if the connection is gone or its queue is full.
    pub fn send(&self, datagram: Vec<u8>) -> bool {
        datagram.len() <= RELAYED_LEN_MAX && self.tx.try_send(datagram).is_ok()
    }
}
