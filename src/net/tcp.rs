//! Frames over TCP: each frame preceded by its length as a big-endian `u16`.

use crate::wire::frame::{FRAME_LEN_MAX, PREFIX_LEN};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

/// Accepts connections until `shutdown` fires, at most `limit` at once, and runs
/// `handle` for each on its own local task (so handlers may start actix actors). An
/// accept error (usually EMFILE) backs off instead of spinning.
pub async fn serve<F, Fut>(listener: &TcpListener, limit: Arc<Semaphore>, shutdown: CancellationToken, handle: F)
where
    F: Fn(TcpStream, SocketAddr) -> Fut,
    Fut: std::future::Future<Output = ()> + 'static,
{
    loop {
        let permit = tokio::select! {
            _ = shutdown.cancelled() => break,
            p = limit.clone().acquire_owned() => p.expect("the semaphore is never closed"),
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
        let _ = stream.set_nodelay(true);
        let work = handle(stream, peer);
        tokio::task::spawn_local(async move {
            work.await;
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

/// Writes one frame with its length prefix.
pub async fn write_frame<W: AsyncWrite + Unpin>(w: &mut W, frame: &[u8]) -> std::io::Result<()> {
    let mut out = Vec::with_capacity(frame.len() + 2);
    out.extend_from_slice(&(frame.len() as u16).to_be_bytes());
    out.extend_from_slice(frame);
    w.write_all(&out).await
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
