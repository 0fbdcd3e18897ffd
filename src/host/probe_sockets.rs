//! The extra UDP sockets a call's path search opens behind a symmetric NAT (the hard side
//! of the birthday technique, `call::birthday`): each gets its own mapping from the NAT.
//! What they receive that looks like media goes to the session's queue, tagged with the
//! call and the socket; the sockets an authenticated packet came to stay for the call.

use std::net::SocketAddr;
use std::sync::Arc;
use tokio::net::UdpSocket;
use tokio::sync::mpsc;

/// Most extra sockets open at once across all calls of a session.
pub const OPEN_MAX: usize = 512;
/// Datagrams from the extra sockets waiting for the session (more are dropped).
pub const QUEUED_MAX: usize = 256;

/// Times the birthday technique may start in a session per [`BUDGET_WINDOW_MS`]: each
/// run sends up to 2,048 probes at an address the other side named, which nobody vouches
/// for, so a host cannot be made to spray much for anyone.
pub const BUDGET_RUNS_MAX: usize = 4;
/// The window of [`BUDGET_RUNS_MAX`].
pub const BUDGET_WINDOW_MS: u64 = 10 * 60 * 1000;

/// How often a session has run the birthday technique lately.
#[derive(Debug, Default)]
pub struct BirthdayBudget {
    started: std::collections::VecDeque<u64>,
}

impl BirthdayBudget {
    /// Whether another run may start at `now_ms`.
    pub fn allowed(&mut self, now_ms: u64) -> bool {
        while self.started.front().is_some_and(|t| now_ms.saturating_sub(*t) >= BUDGET_WINDOW_MS) {
            self.started.pop_front();
        }
        self.started.len() < BUDGET_RUNS_MAX
    }

    /// A run started at `now_ms`.
    pub fn spend(&mut self, now_ms: u64) {
        self.started.push_back(now_ms);
    }
}

/// A datagram that came to an extra socket.
#[derive(Debug)]
pub struct ProbeDatagram {
    /// The call whose socket it came to.
    pub call: [u8; 16],
    /// Which socket.
    pub socket: u16,
    /// From where.
    pub from: SocketAddr,
    /// The datagram.
    pub bytes: Vec<u8>,
}

/// One call's extra sockets, each with its reader task (aborted when dropped).
#[derive(Debug, Default)]
pub struct ProbeSockets {
    sockets: Vec<Option<(Arc<UdpSocket>, tokio::task::JoinHandle<()>)>>,
}

impl Drop for ProbeSockets {
    fn drop(&mut self) {
        self.close_except(&[]);
    }
}

impl ProbeSockets {
    /// Opens up to `n` sockets on any local port for call `call`, hearing only from
    /// `peer` (the address they probe) and feeding `queue`; fewer when the system refuses
    /// more (each failure is logged once, then they stop).
    pub fn open(n: u16, call: [u8; 16], peer: std::net::IpAddr, queue: &mpsc::Sender<ProbeDatagram>) -> Self {
        let epoch = std::time::Instant::now();
        let mut sockets = Vec::with_capacity(usize::from(n));
        for socket in 0..n {
            let bound = std::net::UdpSocket::bind(("0.0.0.0", 0))
                .and_then(|s| s.set_nonblocking(true).map(|()| s))
                .and_then(UdpSocket::from_std);
            let udp = match bound {
                Ok(u) => Arc::new(u),
                Err(e) => {
                    tracing::warn!(error = %e, opened = socket, asked = n, "could not open more probe sockets");
                    break;
                }
            };
            let (reader, queue) = (udp.clone(), queue.clone());
            let task = tokio::spawn(async move {
                let mut buf = vec![0u8; crate::call::media::PACKET_LEN_MAX];
                let mut gate = super::media_gate::MediaGate::only_from(peer);
                loop {
                    let Ok((len, from)) = reader.recv_from(&mut buf).await else {
                        tokio::task::yield_now().await;
                        continue;
                    };
                    // Only media, only from the peer: a scan of these ports fills nothing.
                    if !gate.admit(from, &buf[..len], epoch.elapsed().as_millis() as u64) {
                        continue;
                    }
                    let d = ProbeDatagram { call, socket, from, bytes: buf[..len].to_vec() };
                    // A full queue drops, as port P's does: probes repeat.
                    let _ = queue.try_send(d);
                }
            });
            sockets.push(Some((udp, task)));
        }
        Self { sockets }
    }

    /// How many are open.
    pub fn open_count(&self) -> usize {
        self.sockets.iter().flatten().count()
    }

    /// Socket `i`, if open.
    pub fn get(&self, i: u16) -> Option<&Arc<UdpSocket>> {
        self.sockets.get(usize::from(i))?.as_ref().map(|(s, _)| s)
    }

    /// Closes every socket but those in `keep`.
    pub fn close_except(&mut self, keep: &[u16]) {
        for (i, slot) in self.sockets.iter_mut().enumerate() {
            if keep.iter().any(|&k| usize::from(k) == i) {
                continue;
            }
            if let Some((_, task)) = slot.take() {
                task.abort();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_budget_allows_a_few_runs_per_window() {
        let mut b = BirthdayBudget::default();
        for i in 0..BUDGET_RUNS_MAX as u64 {
            assert!(b.allowed(i));
            b.spend(i);
        }
        assert!(!b.allowed(1000));
        assert!(b.allowed(BUDGET_WINDOW_MS), "the first run has left the window");
    }

    #[tokio::test]
    async fn sockets_feed_the_queue_tagged_and_close_but_the_one_kept() {
        let (tx, mut rx) = mpsc::channel(QUEUED_MAX);
        let mut p = ProbeSockets::open(3, [7; 16], "127.0.0.1".parse().unwrap(), &tx);
        assert_eq!(p.open_count(), 3);
        let peer = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let port = p.get(2).unwrap().local_addr().unwrap().port();
        // Another address (all of 127/8 is loopback here) is not the peer: it gets nothing in.
        let stranger = UdpSocket::bind("127.0.0.2:0").await.unwrap();
        for _ in 0..50 {
            stranger.send_to(&[0x50, 9, 9], ("127.0.0.1", port)).await.unwrap();
        }
        peer.send_to(b"hello", ("127.0.0.1", port)).await.unwrap();
        peer.send_to(&[0x50, 1, 2], ("127.0.0.1", port)).await.unwrap();
        let d = tokio::time::timeout(std::time::Duration::from_secs(5), rx.recv()).await.unwrap().unwrap();
        let from = peer.local_addr().unwrap();
        assert_eq!(
            (d.call, d.socket, d.from, &d.bytes[..]),
            ([7; 16], 2, from, &[0x50, 1, 2][..]),
            "not media: dropped"
        );
        p.close_except(&[1]);
        assert_eq!(p.open_count(), 1);
        assert!(p.get(0).is_none() && p.get(1).is_some());
    }
}
