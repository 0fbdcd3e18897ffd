//! The baselines: the least a UDP relay can do, the loops of `confab::relay::floor`. One
//! thread, one socket: receive, look the destination up by source address, send. No
//! header, no session, no token, no rate cap — what is left is the kernel's cost of a
//! forwarded datagram, which the confab relay pays too.
//!
//! Two ways, each a baseline of its own:
//! - **batched** (`raw`, the floor): `recvmmsg` up to [`BATCH`] datagrams a call, then
//!   `sendmmsg` them on, with `confab::relay::mmsg` — the calls, batch size and read
//!   budget the relay's workers use;
//! - **unbatched** (`raw-unbatched`): one `recv_from` and one `send_to` per datagram.
//!
//! For a comparison the forwarder runs in a process of its own ([`RawProcess`]: the
//! harness's binary started again with the hidden `forward` subcommand), so its CPU is
//! read the way every server's is: the process, and its `raw-forwarder` thread, from
//! `/proc`. [`Forwarder`] runs the same loop in a thread of this process (unit tests).

use crate::traffic::{Leg, Pair, leg_socket};
use confab::relay::floor::{self, Counts};
use confab::relay::mmsg;
use std::collections::HashMap;
use std::io::{self, BufRead, Write};
use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::thread::JoinHandle;
use std::time::Duration;

pub use confab::relay::floor::Mode;

/// Datagrams per receive and send call: the relay workers' default (`batch`).
pub const BATCH: usize = mmsg::BATCH_MAX;
/// The forwarding thread's name, by which its CPU is found in `/proc`.
pub const THREAD_NAME: &str = "raw-forwarder";
/// Socket buffers the forwarder asks for: what the relay's workers ask for.
pub const BUFFER_BYTES: usize = 4 << 20;

/// The forwarder's socket: `buffer_bytes` asked for (None: the kernel's defaults), a read
/// timeout that bounds noticing a stop.
pub fn bind(ip: IpAddr, buffer_bytes: Option<usize>) -> anyhow::Result<UdpSocket> {
    use socket2::{Domain, Protocol, Socket, Type};
    let s = Socket::new(Domain::for_address(SocketAddr::new(ip, 0)), Type::DGRAM, Some(Protocol::UDP))?;
    if let Some(b) = buffer_bytes {
        let _ = s.set_recv_buffer_size(b);
        let _ = s.set_send_buffer_size(b);
    }
    s.bind(&SocketAddr::new(ip, 0).into())?;
    let socket: UdpSocket = s.into();
    socket.set_read_timeout(Some(Duration::from_millis(200)))?;
    Ok(socket)
}

/// `pairs` pairs of legs connected to `addr`, and the routes between them.
fn legs(addr: SocketAddr, pairs: usize) -> anyhow::Result<(Vec<Pair>, HashMap<SocketAddr, SocketAddr>)> {
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
    Ok((legs, routes))
}

/// A forwarder in a thread of this process.
pub struct Forwarder {
    /// Where it listens.
    pub addr: SocketAddr,
    stop: Arc<AtomicBool>,
    counts: Arc<Counts>,
    thread: Option<JoinHandle<()>>,
}

impl Forwarder {
    /// Binds on `ip` and builds `pairs` legs that send to it, then starts forwarding
    /// between the two legs of each pair.
    pub fn start(ip: IpAddr, pairs: usize, mode: Mode) -> anyhow::Result<(Self, Vec<Pair>)> {
        let socket = bind(ip, Some(BUFFER_BYTES))?;
        let addr = socket.local_addr()?;
        let (legs, routes) = legs(addr, pairs)?;
        let stop = Arc::new(AtomicBool::new(false));
        let counts = Arc::new(Counts::default());
        let thread = {
            let (stop, counts) = (stop.clone(), counts.clone());
            std::thread::Builder::new()
                .name(THREAD_NAME.into())
                .spawn(move || floor::forward(mode, &socket, &routes, &stop, &counts))?
        };
        Ok((Self { addr, stop, counts, thread: Some(thread) }, legs))
    }

    /// Datagrams forwarded so far.
    pub fn forwarded(&self) -> u64 {
        self.counts.forwarded.load(Relaxed)
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

/// A forwarder in a process of its own (this binary's `forward` subcommand), killed on
/// drop.
pub struct RawProcess {
    child: Child,
    /// Where it listens.
    pub addr: SocketAddr,
}

impl RawProcess {
    /// Starts `exe forward` on `ip`, builds `pairs` legs that send to it and hands it
    /// their routes.
    pub fn start(
        exe: &std::path::Path,
        ip: IpAddr,
        pairs: usize,
        mode: Mode,
        buffer_bytes: Option<usize>,
    ) -> anyhow::Result<(Self, Vec<Pair>)> {
        let mut cmd = Command::new(exe);
        cmd.args(["forward", "--bind", &ip.to_string()]);
        if mode == Mode::Unbatched {
            cmd.arg("--unbatched");
        }
        if let Some(b) = buffer_bytes {
            cmd.args(["--buffer-bytes", &b.to_string()]);
        }
        let mut child = cmd.stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::inherit()).spawn()?;
        let mut line = String::new();
        io::BufReader::new(child.stdout.take().expect("piped")).read_line(&mut line)?;
        let addr: SocketAddr = match line.trim().parse() {
            Ok(a) => a,
            Err(_) => {
                let _ = child.kill();
                let _ = child.wait();
                anyhow::bail!("the raw forwarder process said {line:?}, not its address");
            }
        };
        let me = Self { child, addr };
        let (legs, routes) = legs(addr, pairs)?;
        let mut stdin = me.child.stdin.as_ref().expect("piped");
        let mut text = String::new();
        for (from, to) in &routes {
            text.push_str(&format!("{from} {to}\n"));
        }
        stdin.write_all(text.as_bytes())?;
        let mut me = me;
        // End of input: it starts forwarding.
        drop(me.child.stdin.take());
        Ok((me, legs))
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for RawProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The `forward` subcommand: binds, prints its address, reads `from to` routes from
/// standard input until its end, then forwards until killed.
pub fn serve(ip: IpAddr, mode: Mode, buffer_bytes: Option<usize>) -> anyhow::Result<()> {
    let socket = bind(ip, buffer_bytes)?;
    println!("{}", socket.local_addr()?);
    io::stdout().flush()?;
    let mut routes = HashMap::new();
    for line in io::stdin().lock().lines() {
        let line = line?;
        let Some((a, b)) = line.split_once(' ') else { continue };
        routes.insert(a.parse()?, b.parse()?);
    }
    let stop = AtomicBool::new(false);
    let counts = Counts::default();
    std::thread::scope(|s| {
        std::thread::Builder::new()
            .name(THREAD_NAME.into())
            .spawn_scoped(s, || floor::forward(mode, &socket, &routes, &stop, &counts))
            .map(drop)
    })?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::traffic::{Pattern, Traffic};

    fn carries(mode: Mode) {
        let (fwd, pairs) = Forwarder::start("127.0.0.1".parse().unwrap(), 3, mode).unwrap();
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
        // The loop adds its tallies every 50 ms, and when idle within its read timeout.
        let deadline = std::time::Instant::now() + Duration::from_secs(2);
        while fwd.forwarded() < o.sent && std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
        assert!(fwd.forwarded() >= o.sent, "{} forwarded, {} sent", fwd.forwarded(), o.sent);
    }

    #[test]
    fn batched_forwards_between_the_legs_of_each_pair() {
        carries(Mode::Batched);
    }

    #[test]
    fn unbatched_forwards_between_the_legs_of_each_pair() {
        carries(Mode::Unbatched);
    }
}
