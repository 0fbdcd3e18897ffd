//! A minimal TURN client (RFC 8656) over UDP, blocking: one allocation per socket, with
//! the long-term credential mechanism, permissions and channel bindings. Enough to push
//! the same media through a standard TURN server as through a confab relay.

use super::stun::{self, Builder, Class, attr, method};
use anyhow::Context;
use std::io;
use std::net::{SocketAddr, UdpSocket};
use std::time::{Duration, Instant};

/// The first retransmission timeout (RFC 8489 §6.2.1 says 500 ms for the open
/// internet; a local server answers in well under a millisecond).
const RTO: Duration = Duration::from_millis(250);
/// Transmissions of one request before giving up.
const TRIES: u32 = 7;
/// REQUESTED-TRANSPORT: UDP (protocol 17), then three reserved bytes.
const UDP_TRANSPORT: [u8; 4] = [17, 0, 0, 0];

/// A long-term credential.
#[derive(Debug, Clone)]
pub struct Credentials {
    /// The username.
    pub username: String,
    /// The password.
    pub password: String,
}

fn method_name(m: u16) -> &'static str {
    match m {
        method::BINDING => "Binding",
        method::ALLOCATE => "Allocate",
        method::REFRESH => "Refresh",
        method::CREATE_PERMISSION => "CreatePermission",
        method::CHANNEL_BIND => "ChannelBind",
        _ => "request",
    }
}

/// Sends `msg` on `socket` (connected to the server) and returns the answer with the
/// same transaction id, retransmitting with a doubling timeout. Anything else that
/// arrives meanwhile (relayed data) is skipped.
pub fn transact(socket: &UdpSocket, msg: &[u8]) -> anyhow::Result<Vec<u8>> {
    let server = socket.peer_addr()?;
    let tid = &msg[8..20];
    let mut buf = vec![0u8; 4096];
    let mut rto = RTO;
    for _ in 0..TRIES {
        socket.send(msg).with_context(|| format!("sending to the TURN server {server}"))?;
        let deadline = Instant::now() + rto;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            socket.set_read_timeout(Some(left))?;
            match socket.recv(&mut buf) {
                Ok(n) => {
                    if stun::parse(&buf[..n]).is_ok_and(|m| m.tid == tid) {
                        return Ok(buf[..n].to_vec());
                    }
                }
                Err(e) if matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut) => break,
                Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => {
                    anyhow::bail!("nothing listens on {server} (connection refused)")
                }
                Err(e) => return Err(e.into()),
            }
        }
        rto = (rto * 2).min(Duration::from_secs(2));
    }
    anyhow::bail!("no answer from the TURN server {server} after {TRIES} transmissions")
}

fn tid() -> [u8; 12] {
    confab::crypto::random::bytes()
}

/// A STUN Binding round trip: the address the server sees (also a readiness check).
pub fn binding(socket: &UdpSocket) -> anyhow::Result<SocketAddr> {
    let raw = transact(socket, &Builder::new(method::BINDING, Class::Request, tid()).finish())?;
    let m = stun::parse(&raw)?;
    anyhow::ensure!(m.class == Class::Success, "Binding refused: {:?}", m.error_code());
    m.xor_addr(attr::XOR_MAPPED_ADDRESS).context("Binding answer without XOR-MAPPED-ADDRESS")
}

/// One allocation on a TURN server, owned by the socket that made it.
pub struct Allocation {
    socket: UdpSocket,
    /// The relayed transport address: where peers send to reach this client.
    pub relayed: SocketAddr,
    /// This client's address as the server sees it.
    pub mapped: Option<SocketAddr>,
    /// Seconds the server grants the allocation.
    pub lifetime: Option<u32>,
    username: String,
    realm: String,
    nonce: String,
    key: [u8; 16],
}

impl Allocation {
    /// Allocates on the server `socket` is connected to: a first Allocate without
    /// credentials draws a 401 with the realm and a nonce, then the real one is signed.
    pub fn allocate(socket: UdpSocket, creds: &Credentials) -> anyhow::Result<Self> {
        let probe = Builder::new(method::ALLOCATE, Class::Request, tid())
            .attr(attr::REQUESTED_TRANSPORT, &UDP_TRANSPORT)
            .finish();
        let raw = transact(&socket, &probe)?;
        let m = stun::parse(&raw)?;
        let (realm, nonce) = match (m.class, m.error_code()) {
            (Class::Error, Some((401, _))) => {
                (m.text(attr::REALM).context("401 without REALM")?, m.text(attr::NONCE).context("401 without NONCE")?)
            }
            (Class::Error, Some((code, reason))) => anyhow::bail!("Allocate refused: {code} {reason}"),
            _ => anyhow::bail!("the TURN server allocated without credentials; this client wants a 401 first"),
        };
        let key = stun::long_term_key(&creds.username, &realm, &creds.password);
        let mut a = Self {
            socket,
            relayed: SocketAddr::from(([0, 0, 0, 0], 0)),
            mapped: None,
            lifetime: None,
            username: creds.username.clone(),
            realm,
            nonce,
            key,
        };
        let raw = a.signed(method::ALLOCATE, |b| b.attr(attr::REQUESTED_TRANSPORT, &UDP_TRANSPORT))?;
        let m = stun::parse(&raw)?;
        a.relayed = m.xor_addr(attr::XOR_RELAYED_ADDRESS).context("Allocate answer without XOR-RELAYED-ADDRESS")?;
        a.mapped = m.xor_addr(attr::XOR_MAPPED_ADDRESS);
        a.lifetime = m.attr(attr::LIFETIME).and_then(|v| Some(u32::from_be_bytes(v.try_into().ok()?)));
        Ok(a)
    }

    /// Sends a request signed with the long-term key; a stale nonce (438) is renewed
    /// once. Returns the success answer.
    fn signed(&mut self, m: u16, add: impl Fn(Builder) -> Builder) -> anyhow::Result<Vec<u8>> {
        for _ in 0..2 {
            let msg = add(Builder::new(m, Class::Request, tid()))
                .attr(attr::USERNAME, self.username.as_bytes())
                .attr(attr::REALM, self.realm.as_bytes())
                .attr(attr::NONCE, self.nonce.as_bytes())
                .integrity(&self.key)
                .finish();
            let raw = transact(&self.socket, &msg)?;
            let answer = stun::parse(&raw)?;
            match answer.class {
                Class::Success => {
                    // An answer to a signed request is signed too (RFC 8489 §9.2.4).
                    if answer.attr(attr::MESSAGE_INTEGRITY).is_some() && !answer.check_integrity(&self.key) {
                        anyhow::bail!("{} answer fails MESSAGE-INTEGRITY", method_name(m));
                    }
                    return Ok(raw);
                }
                Class::Error => {
                    let (code, reason) = answer.error_code().unwrap_or((0, String::new()));
                    if code == 438
                        && let Some(n) = answer.text(attr::NONCE)
                    {
                        self.nonce = n;
                        continue;
                    }
                    anyhow::bail!("{} refused: {code} {reason}", method_name(m));
                }
                _ => anyhow::bail!("{}: unexpected answer class", method_name(m)),
            }
        }
        anyhow::bail!("{}: the nonce went stale twice", method_name(m))
    }

    /// Lets `peer`'s IP address send to this allocation (5 minutes).
    pub fn create_permission(&mut self, peer: SocketAddr) -> anyhow::Result<()> {
        self.signed(method::CREATE_PERMISSION, |b| b.xor_addr(attr::XOR_PEER_ADDRESS, peer)).map(drop)
    }

    /// Binds `channel` (0x4000–0x4FFF) to `peer` (10 minutes): data to and from `peer`
    /// then travels as ChannelData with a 4-byte header.
    pub fn channel_bind(&mut self, channel: u16, peer: SocketAddr) -> anyhow::Result<()> {
        let [hi, lo] = channel.to_be_bytes();
        self.signed(method::CHANNEL_BIND, |b| {
            b.attr(attr::CHANNEL_NUMBER, &[hi, lo, 0, 0]).xor_addr(attr::XOR_PEER_ADDRESS, peer)
        })
        .map(drop)
    }

    /// The allocation's socket, for the traffic (a second handle on the same socket).
    pub fn socket(&self) -> anyhow::Result<UdpSocket> {
        Ok(self.socket.try_clone()?)
    }

    /// Ends the allocation (Refresh with LIFETIME 0).
    pub fn release(&mut self) -> anyhow::Result<()> {
        // The traffic engine made the shared socket non-blocking.
        self.socket.set_nonblocking(false)?;
        self.signed(method::REFRESH, |b| b.attr(attr::LIFETIME, &0u32.to_be_bytes())).map(drop)
    }
}
