//! Frames over TCP: each frame preceded by its length as a big-endian `u16`; and the
//! connection slots every TCP listener shares out (a cap in all, a cap per source).

use super::source::{PerSource, RefusalLog, SourceClaim, SourceKey};
use crate::wire::frame::{FRAME_LEN_MAX, PREFIX_LEN};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

/// Longest a peer may take to accept one frame we write: a peer that stops reading
/// loses its connection instead of holding a slot and a task forever.
pub const WRITE_TIMEOUT: Duration = Duration::from_secs(10);

/// The connection slots of one TCP listener: at most `total` connections at once, and at
/// most `per_source` from one source (an IPv4 address or IPv6 /64), so one source can
/// never take the slots another's login needs.
#[derive(Debug)]
pub struct Slots {
    role: &'static str,
    addr: String,
    total: Arc<Semaphore>,
    per_source: Arc<PerSource>,
    refusals: RefusalLog,
}

impl Slots {
    /// Slots for the listener of `role` (`login`, `supernode`, `relay`, `host`) at `addr`.
    pub fn new(role: &'static str, addr: SocketAddr, total: usize, per_source: usize) -> Arc<Self> {
        metrics::describe_counter!(
            "confab_net_connections_refused_total",
            "TCP connections closed at once by a listener, by reason (per_source: the source holds its cap)"
        );
        Arc::new(Self {
            role,
            addr: addr.to_string(),
            total: Arc::new(Semaphore::new(total.max(1))),
            per_source: PerSource::new(per_source),
            refusals: RefusalLog::default(),
        })
    }

    /// Claims a slot for `peer`'s source; None (counted, logged once per source) if that
    /// source holds its cap already.
    pub fn claim(&self, peer: SocketAddr) -> Option<SourceClaim> {
        let source = SourceKey::from(peer.ip());
        let claim = self.per_source.claim(source);
        if claim.is_none() {
            self.refused(source, "per_source");
        }
        claim
    }

    /// Counts a refused connection, and logs the first one per source and reason.
    pub fn refused(&self, source: SourceKey, reason: &'static str) {
        metrics::counter!("confab_net_connections_refused_total", "role" => self.role, "addr" => self.addr.clone(), "reason" => reason)
            .increment(1);
        if self.refusals.first(source, reason) {
            tracing::warn!(role = self.role, addr = %self.addr, %source, reason, cap = self.per_source.max(),
                "refused a TCP connection (further refusals of this source for this reason are only counted)");
        }
    }

    /// Admits a connection `serve` did not accept for us (listeners with their own accept
    /// loop): a slot in all and one of its source's, or, over either cap, None with the
    /// stream reset, the refusal counted (`full` or `per_source`) and logged once.
    pub fn admit(&self, stream: &TcpStream, peer: SocketAddr) -> Option<Slot> {
        let Ok(permit) = self.total.clone().try_acquire_owned() else {
            self.refused(SourceKey::from(peer.ip()), "full");
            reset(stream);
            return None;
        };
        let Some(claim) = self.claim(peer) else {
            reset(stream);
            return None;
        };
        Some(Slot { _permit: permit, _claim: claim })
    }
}

/// A connection's place in its listener's [`Slots`], given back when dropped.
#[derive(Debug)]
pub struct Slot {
    _permit: tokio::sync::OwnedSemaphorePermit,
    _claim: SourceClaim,
}

/// Closes a refused connection with a reset, not a lingering FIN: it costs the source its
/// handshake and us nothing more.
fn reset(stream: &TcpStream) {
    let _ = socket2::SockRef::from(stream).set_linger(Some(Duration::ZERO));
}

/// Accepts connections until `shutdown` fires, within `slots` (a cap in all and per
/// source: a connection over its source's cap is closed at once), and runs `handle` for
/// each on its own local task (so handlers may start actix actors). An accept error
/// (usually EMFILE) backs off instead of spinning.
pub async fn serve<F, Fut>(listener: &TcpListener, slots: Arc<Slots>, shutdown: CancellationToken, handle: F)
where
    F: Fn(TcpStream, SocketAddr) -> Fut,
    Fut: std::future::Future<Output = ()> + 'static,
{
    loop {
        let permit = tokio::select! {
            _ = shutdown.cancelled() => break,
            p = slots.total.clone().acquire_owned() => p.expect("the semaphore is never closed"),
        };
        let (stream, peer) = tokio::select! {
            _ = shutdown.cancelled() => break,
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(e) => {
                    tracing::warn!(error = %e, "TCP accept failed; backing off");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let Some(claim) = slots.claim(peer) else {
            reset(&stream);
            continue;
        };
        let _ = stream.set_nodelay(true);
        let work = handle(stream, peer);
        tokio::task::spawn_local(async move {
            work.await;
            drop(claim);
            drop(permit);
        });
    }
}

/// Why a TCP frame could not be read.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    /// The socket failed or closed mid-frame.
    #[error("connection: {0}")]
    Io(#[from] std::io::Error),
    /// The length prefix is outside the valid frame sizes: the stream is not confab.
    #[error("frame length {0} out of range")]
    BadLength(usize),
}

/// Reads one frame; `Ok(None)` on a clean end of stream between frames.
pub async fn read_frame<R: AsyncRead + Unpin>(r: &mut R) -> Result<Option<Vec<u8>>, ReadError> {
    let mut len = [0u8; 2];
    match r.read_exact(&mut len).await {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e.into()),
    }
    let len = u16::from_be_bytes(len) as usize;
    if !(PREFIX_LEN..=FRAME_LEN_MAX).contains(&len) {
        return Err(ReadError::BadLength(len));
    }
    let mut buf = vec![0u8; len];
    r.read_exact(&mut buf).await?;
    Ok(Some(buf))
}

/// Writes one frame with its length prefix, within [`WRITE_TIMEOUT`] (a peer that does
/// not read gets `TimedOut`, and the caller drops the connection).
pub async fn write_frame<W: AsyncWrite + Unpin>(w: &mut W, frame: &[u8]) -> std::io::Result<()> {
    let mut out = Vec::with_capacity(frame.len() + 2);
    out.extend_from_slice(&(frame.len() as u16).to_be_bytes());
    out.extend_from_slice(frame);
    match tokio::time::timeout(WRITE_TIMEOUT, w.write_all(&out)).await {
        Ok(r) => r,
        Err(_) => Err(std::io::Error::new(std::io::ErrorKind::TimedOut, "peer did not read within the write deadline")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn round_trip_and_bad_length() {
        let (mut a, mut b) = tokio::io::duplex(4096);
        write_frame(&mut a, &[7u8; 40]).await.unwrap();
        assert_eq!(read_frame(&mut b).await.unwrap().unwrap(), vec![7u8; 40]);
        a.write_all(&[0xff, 0xff]).await.unwrap();
        assert!(matches!(read_frame(&mut b).await, Err(ReadError::BadLength(65535))));
        drop(a);
        assert!(read_frame(&mut b).await.unwrap().is_none());
    }
}

#[cfg(test)]
mod slot_tests {
    use super::*;

    #[test]
    fn per_source_cap_and_release() {
        let slots = Slots::new("test", "127.0.0.1:1".parse().unwrap(), 100, 2);
        let a: SocketAddr = "127.0.0.2:1000".parse().unwrap();
        let a2: SocketAddr = "127.0.0.2:1001".parse().unwrap();
        let b: SocketAddr = "127.0.0.1:1000".parse().unwrap();
        let first = slots.claim(a).unwrap();
        let _second = slots.claim(a2).unwrap();
        assert!(slots.claim(a).is_none(), "the third from one address is over its cap");
        assert!(slots.claim(b).is_some(), "another source is not affected");
        drop(first);
        assert!(slots.claim(a).is_some(), "a closed connection gives its place back");
        let _third = slots.claim(a2);
        assert!(slots.claim(a).is_none(), "one place came back, not more");
    }

    /// A listener with its own accept loop: over the total cap a connection is refused
    /// as `full`, and a slot given back lets the next one in.
    #[tokio::test]
    async fn admit_holds_both_caps() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let slots = Slots::new("test", addr, 1, 1);
        let _c1 = TcpStream::connect(addr).await.unwrap();
        let _c2 = TcpStream::connect(addr).await.unwrap();
        let (s1, p1) = listener.accept().await.unwrap();
        let (s2, p2) = listener.accept().await.unwrap();
        let slot = slots.admit(&s1, p1).expect("the first is admitted");
        assert!(slots.admit(&s2, p2).is_none(), "over the total cap");
        drop(slot);
        assert!(slots.admit(&s2, p2).is_some(), "a slot given back admits the next");
    }

    #[tokio::test(start_paused = true)]
    async fn a_peer_that_does_not_read_times_out() {
        // A duplex pipe whose other end never reads: the write fills it and stalls.
        let (mut a, _b) = tokio::io::duplex(64);
        let e = write_frame(&mut a, &[1u8; 1000]).await.unwrap_err();
        assert_eq!(e.kind(), std::io::ErrorKind::TimedOut);
    }
}
