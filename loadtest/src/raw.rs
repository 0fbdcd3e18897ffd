//! The baseline: the least a UDP relay can do. One thread, one socket: `recv_from`, look
//! the destination up by source address, `send_to`. No header, no session, no token, no
//! rate cap — what is left is the kernel's cost of a forwarded datagram, which the confab
//! relay pays too (one worker per node under `confab up`, the same socket buffers).

use crate::server::{self, Probe};
use crate::traffic::{Leg, Pair, leg_socket};
use std::collections::HashMap;
use std::io;
use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::thread::JoinHandle;
use std::time::Duration;

/// A running forwarder.
pub struct Forwarder {
    /// Where it listens.
    pub addr: SocketAddr,
    stop: Arc<AtomicBool>,
    forwarded: Arc<AtomicU64>,
    thread: Option<JoinHandle<()>>,
}

impl Forwarder {
    /// Binds on `ip` and builds `pairs` legs that send to it, then starts forwarding
    /// between the two legs of each pair.
    pub fn start(ip: IpAddr, pairs: usize) -> anyhow::Result<(Self, Vec<Pair>)> {
        use socket2::{Domain, Protocol, Socket, Type};
        let s = Socket::new(Domain::for_address(SocketAddr::new(ip, 0)), Type::DGRAM, Some(Protocol::UDP))?;
        // As the confab relay asks for its workers' sockets.
        let _ = s.set_recv_buffer_size(4 << 20);
        let _ = s.set_send_buffer_size(4 << 20);
        s.bind(&SocketAddr::new(ip, 0).into())?;
        let socket: UdpSocket = s.into();
        // The bound on noticing a stop, as the relay's workers have.
        socket.set_read_timeout(Some(Duration::from_millis(200)))?;
        let addr = socket.local_addr()?;
        let mut routes = HashMap::new();
        let mut legs = Vec::new();
        for _ in 0..pairs {
            let (a, b) = (leg_socket(addr)?, leg_socket(addr)?);
            let (la, lb) = (a.local_addr()?, b.local_addr()?);
            routes.insert(la, lb);
            routes.insert(lb, la);
            legs.push(Pair {
                a: Leg { socket: a, prefix: vec![], skip: 0 },
                b: Leg { socket: b, prefix: vec![], skip: 0 },
            });
        }
        let stop = Arc::new(AtomicBool::new(false));
        let forwarded = Arc::new(AtomicU64::new(0));
        let thread = {
            let (stop, forwarded) = (stop.clone(), forwarded.clone());
            std::thread::Builder::new().name("raw-forwarder".into()).spawn(move || {
                forward(&socket, &routes, &stop, &forwarded);
            })?
        };
        Ok((Self { addr, stop, forwarded, thread: Some(thread) }, legs))
    }

    /// Reads the forwarding thread's own CPU clock.
    pub fn probe(&self) -> Probe {
        match self.thread.as_ref().and_then(server::thread_clock) {
            Some(c) => Probe::Thread(c),
            None => Probe::None,
        }
    }

    /// Datagrams forwarded so far.
    pub fn forwarded(&self) -> u64 {
        self.forwarded.load(Relaxed)
    }
}

impl Drop for Forwarder {
    fn drop(&mut self) {
        self.stop.store(true, Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn forward(socket: &UdpSocket, routes: &HashMap<SocketAddr, SocketAddr>, stop: &AtomicBool, forwarded: &AtomicU64) {
    let mut buf = vec![0u8; 4096];
    while !stop.load(Relaxed) {
        let (n, from) = match socket.recv_from(&mut buf) {
            Ok(r) => r,
            Err(e) if matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut) => continue,
            Err(_) => continue,
        };
        if let Some(to) = routes.get(&from)
            && socket.send_to(&buf[..n], to).is_ok()
        {
            forwarded.fetch_add(1, Relaxed);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::traffic::{Pattern, Traffic};

    #[test]
    fn forwards_between_the_legs_of_each_pair() {
        let (fwd, pairs) = Forwarder::start("127.0.0.1".parse().unwrap(), 3).unwrap();
        let pattern = Pattern {
            rate: 50,
            inner_len: 120,
            duration: Duration::from_millis(400),
            flat_out: false,
            max_packets: 100_000,
            senders: 1,
            receivers: 1,
        };
        let mut t = Traffic::start(pairs, pattern).unwrap();
        t.latch(Duration::from_secs(2)).unwrap();
        let o = t.run(&indicatif::ProgressBar::hidden()).unwrap();
        assert!(o.sent >= 110, "6 legs × 50 pps × 0.4 s: {}", o.sent);
        assert_eq!(o.delivered, o.sent);
        assert_eq!(o.misrouted, 0);
        assert!(fwd.forwarded() >= o.sent);
        assert!(matches!(fwd.probe(), Probe::Thread(_)));
    }
}
