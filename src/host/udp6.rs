//! Port P on IPv6: a second UDP socket, IPv6 only, beside the IPv4 one that carries the
//! super-node link. It carries media alone (calls to the other side's IPv6 host
//! candidates) and file transfers on such calls' paths, so two hosts whose IPv4 goes
//! through NATs that cannot be punched may still meet directly where both have IPv6.

use std::net::{Ipv6Addr, SocketAddr};
use std::sync::Arc;
use tokio::net::UdpSocket;
use tokio::sync::mpsc;

/// Datagrams from the IPv6 socket waiting for the session (more are dropped).
pub const QUEUED_MAX: usize = 256;

/// Port P's IPv6 socket and the task that reads it.
#[derive(Debug)]
pub struct Udp6 {
    socket: Arc<UdpSocket>,
    reader: tokio::task::JoinHandle<()>,
}

impl Drop for Udp6 {
    fn drop(&mut self) {
        self.reader.abort();
    }
}

impl Udp6 {
    /// Binds `[::]:port` (IPv6 only) and queues what looks like media (its first byte, as
    /// on IPv4) on `queue`; None where the host has no IPv6 or the port is taken there.
    pub fn open(port: u16, queue: mpsc::Sender<(SocketAddr, Vec<u8>)>) -> Option<Self> {
        use socket2::{Domain, Protocol, Socket, Type};
        let bind = || -> std::io::Result<UdpSocket> {
            let s = Socket::new(Domain::IPV6, Type::DGRAM, Some(Protocol::UDP))?;
            s.set_only_v6(true)?;
            s.set_nonblocking(true)?;
            s.bind(&SocketAddr::from((Ipv6Addr::UNSPECIFIED, port)).into())?;
            UdpSocket::from_std(s.into())
        };
        let socket = match bind() {
            Ok(s) => Arc::new(s),
            Err(e) => {
                tracing::debug!(error = %e, port, "no IPv6 port P: IPv4 candidates only");
                return None;
            }
        };
        let reader = socket.clone();
        let reader = tokio::spawn(async move {
            let mut buf = vec![0u8; crate::call::media::PACKET_LEN_MAX];
            let (mut gate, epoch) = (super::media_gate::MediaGate::default(), std::time::Instant::now());
            loop {
                let Ok((len, from)) = reader.recv_from(&mut buf).await else {
                    tokio::task::yield_now().await;
                    continue;
                };
                // File transfer datagrams are not media: the core takes them only on a
                // file call's route (and a relay caps them per session).
                let file = crate::relay::packet::is_file_on_port(&buf[..len]);
                if file || gate.admit(from, &buf[..len], epoch.elapsed().as_millis() as u64) {
                    // A full queue drops, as port P's IPv4 queue does.
                    let _ = queue.try_send((from, buf[..len].to_vec()));
                }
            }
        });
        Some(Self { socket, reader })
    }

    /// The socket, for sending.
    pub fn socket(&self) -> &UdpSocket {
        &self.socket
    }

    /// The socket, shared (the session's driver sends from it).
    pub fn shared(&self) -> Arc<UdpSocket> {
        self.socket.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn media_and_file_data_on_ipv6_reach_the_queue_and_nothing_else_does() {
        let (tx, mut rx) = mpsc::channel(8);
        let probe = std::net::UdpSocket::bind("[::1]:0");
        let Ok(probe) = probe else {
            // A machine without IPv6 loopback has nothing to test here.
            assert!(std::env::var_os("CI").is_none(), "CI machines have ::1");
            return;
        };
        let port = probe.local_addr().unwrap().port();
        drop(probe);
        let udp6 = Udp6::open(port, tx).expect("IPv6 port P");
        let peer = UdpSocket::bind("[::1]:0").await.unwrap();
        peer.send_to(&[0x01, 2, 3], ("::1", port)).await.unwrap();
        peer.send_to(&[0x4d, 2, 3], ("::1", port)).await.unwrap();
        let (from, bytes) = tokio::time::timeout(std::time::Duration::from_secs(5), rx.recv()).await.unwrap().unwrap();
        assert_eq!((from, bytes), (peer.local_addr().unwrap(), vec![0x4d, 2, 3]), "a frame's first byte is not media");
        // A file transfer's datagram on a call's IPv6 path goes on too.
        peer.send_to(&[0x54, 9], ("::1", port)).await.unwrap();
        let (_, bytes) = tokio::time::timeout(std::time::Duration::from_secs(5), rx.recv()).await.unwrap().unwrap();
        assert_eq!(bytes, vec![0x54, 9]);
        udp6.socket().send_to(b"x", peer.local_addr().unwrap()).await.unwrap();
    }

    #[tokio::test]
    async fn a_flood_from_one_source_is_held_to_its_rate() {
        use crate::host::media_gate::{PER_SOURCE_BURST, PER_SOURCE_PER_SEC};
        let (tx, mut rx) = mpsc::channel(8192);
        let Ok(probe) = std::net::UdpSocket::bind("[::1]:0") else {
            assert!(std::env::var_os("CI").is_none(), "CI machines have ::1");
            return;
        };
        let port = probe.local_addr().unwrap().port();
        drop(probe);
        let _udp6 = Udp6::open(port, tx).expect("IPv6 port P");
        let flood = UdpSocket::bind("[::1]:0").await.unwrap();
        let started = std::time::Instant::now();
        for i in 0..4000u32 {
            flood.send_to(&[0x4d, (i >> 8) as u8, i as u8], ("::1", port)).await.unwrap();
        }
        // What got through, once the socket is drained (a last datagram marks the end).
        let elapsed = started.elapsed().as_secs_f64();
        let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(5);
        let mut passed = 0usize;
        while let Ok(Some(_)) = tokio::time::timeout_at(deadline, rx.recv()).await {
            passed += 1;
            if rx.is_empty() {
                // Quiet for a moment: the reader has read all it will.
                match tokio::time::timeout(std::time::Duration::from_millis(300), rx.recv()).await {
                    Ok(Some(_)) => passed += 1,
                    _ => break,
                }
            }
        }
        let allowed = PER_SOURCE_BURST as f64 + PER_SOURCE_PER_SEC as f64 * (elapsed + 0.5);
        assert!(passed >= PER_SOURCE_BURST as usize, "{passed}");
        assert!((passed as f64) <= allowed && passed < 4000, "{passed} of 4000 in {elapsed:.3} s passed");
    }
}
