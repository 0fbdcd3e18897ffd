//! Running the ladder: each attempt is a handshake over UDP (from the host's own port)
//! or TCP, with a short timeout; the first super node that welcomes us wins.

use super::handshake::{Authenticating, ClientSession, Dialing, HandshakeError};
use super::ladder::{Attempt, Stage, Transport};
use crate::crypto::PrivateKey;
use crate::crypto::credential::{Credential, TrustedKeys};
use crate::nat::{self, NatKind, Observations};
use crate::net::tcp;
use crate::wire::frame;
use crate::wire::message::{MessageKind, NatProbe, Observed};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::net::{TcpStream, UdpSocket};

/// Timeouts of the ladder.
#[derive(Debug, Clone)]
pub struct Timeouts {
    /// One attempt (both round trips of the handshake).
    pub step: Duration,
    /// The whole ladder.
    pub budget: Duration,
}

/// What the host needs to prove who it is.
pub struct Me<'a> {
    /// Trusted login-server keys (to check super nodes).
    pub trusted: &'a TrustedKeys,
    /// Our credential.
    pub credential: &'a Credential,
    /// Our key.
    pub key: &'a PrivateKey,
}

/// The link to the super node.
#[derive(Debug)]
pub enum Link {
    /// Our UDP socket (on port P).
    Udp(Arc<UdpSocket>),
    /// A TCP connection.
    Tcp(TcpStream),
}

/// A successful connection.
#[derive(Debug)]
pub struct Connected {
    /// The attempt that worked.
    pub attempt: Attempt,
    /// The session.
    pub session: ClientSession,
    /// The link.
    pub link: Link,
    /// Handshake round-trip time (Hello to Challenge).
    pub rtt: Duration,
}

/// One attempt's outcome, for the report and the cache.
#[derive(Debug, Clone, serde::Serialize)]
pub struct AttemptLog {
    /// Which rung.
    pub stage: Stage,
    /// `udp` or `tcp`.
    pub transport: &'static str,
    /// Where.
    pub addr: SocketAddr,
    /// `ok`, `timeout`, or the error.
    pub outcome: String,
}

/// Why the ladder found no super node.
#[derive(Debug, thiserror::Error)]
pub enum LadderError {
    /// Every attempt failed; the last real error (other than timeouts) is kept.
    #[error("no super node could be reached after {attempts} attempts{}", .last.as_ref().map(|e| format!("; last error: {e}")).unwrap_or_default())]
    Exhausted {
        /// How many attempts were made.
        attempts: usize,
        /// The most telling error seen.
        last: Option<HandshakeError>,
    },
}

enum StepError {
    Timeout,
    Io(std::io::Error),
    Handshake(HandshakeError),
}

/// Runs the attempts in order until one succeeds, within the time budget, reading port
/// P (`udp`) itself.
pub async fn run(
    plan: &[Attempt],
    udp: &Arc<UdpSocket>,
    me: &Me<'_>,
    t: &Timeouts,
    log: &mut Vec<AttemptLog>,
) -> Result<Connected, LadderError> {
    run_on(plan, udp, me, t, log).await
}

async fn run_on(
    plan: &[Attempt],
    udp: &Arc<UdpSocket>,
    me: &Me<'_>,
    t: &Timeouts,
    log: &mut Vec<AttemptLog>,
) -> Result<Connected, LadderError> {
    let started = Instant::now();
    let mut last = None;
    for (i, a) in plan.iter().enumerate() {
        if started.elapsed() >= t.budget {
            tracing::warn!(budget = ?t.budget, "connection budget spent");
            break;
        }
        tracing::info!(n = i + 1, stage = ?a.stage, transport = a.transport.label(), addr = %a.addr, "trying super node");
        let result = match a.transport {
            Transport::Udp => try_udp(udp, a.addr, me, t.step).await,
            Transport::Tcp => try_tcp(a.addr, me, t.step).await,
        };
        let outcome = match result {
            Ok((session, link, rtt)) => {
                log.push(AttemptLog {
                    stage: a.stage,
                    transport: a.transport.label(),
                    addr: a.addr,
                    outcome: "ok".into(),
                });
                return Ok(Connected { attempt: *a, session, link, rtt });
            }
            Err(StepError::Timeout) => "timeout".to_owned(),
            Err(StepError::Io(e)) => e.to_string(),
            Err(StepError::Handshake(e)) => {
                let s = e.to_string();
                tracing::warn!(addr = %a.addr, error = %s, "super node attempt failed");
                last = Some(e);
                s
            }
        };
        tracing::info!(addr = %a.addr, %outcome, "attempt failed");
        log.push(AttemptLog { stage: a.stage, transport: a.transport.label(), addr: a.addr, outcome });
    }
    Err(LadderError::Exhausted { attempts: log.len(), last })
}

/// Waits for a datagram from `from` until `deadline`; others are ignored.
async fn recv_from(udp: &UdpSocket, from: SocketAddr, deadline: tokio::time::Instant) -> Option<Vec<u8>> {
    let mut buf = vec![0u8; crate::wire::frame::FRAME_LEN_MAX + 1];
    loop {
        match tokio::time::timeout_at(deadline, udp.recv_from(&mut buf)).await {
            Err(_) => return None,
            Ok(Ok((n, src))) if src == from => return Some(buf[..n].to_vec()),
            Ok(_) => continue,
        }
    }
}

async fn try_udp(
    udp: &Arc<UdpSocket>,
    addr: SocketAddr,
    me: &Me<'_>,
    step: Duration,
) -> Result<(ClientSession, Link, Duration), StepError> {
    let deadline = tokio::time::Instant::now() + step;
    let dialing = Dialing::new(addr);
    let hello = dialing.hello();
    let sent_at = Instant::now();
    // Two sends per message within the step: a lost datagram costs half a step, not all.
    let half = step / 2;
    let mut auth: Option<(Authenticating, Duration)> = None;
    let mut resend_at = tokio::time::Instant::now();
    loop {
        let now = tokio::time::Instant::now();
        if now >= deadline {
            return Err(StepError::Timeout);
        }
        if now >= resend_at {
            let bytes = match &auth {
                None => hello.as_slice(),
                Some((a, _)) => a.auth(),
            };
            udp.send_to(bytes, addr).await.map_err(StepError::Io)?;
            resend_at = now + half;
        }
        let Some(pkt) = recv_from(udp, addr, resend_at.min(deadline)).await else { continue };
        match &auth {
            None => {
                if let Some(a) = dialing
                    .on_challenge(&pkt, me.trusted, me.credential, me.key, crate::unix_now())
                    .map_err(StepError::Handshake)?
                {
                    auth = Some((a, sent_at.elapsed()));
                    resend_at = tokio::time::Instant::now();
                }
            }
            Some((a, rtt)) => {
                if let Some(session) = a.on_reply(&pkt).map_err(StepError::Handshake)? {
                    return Ok((session, Link::Udp(udp.clone()), *rtt));
                }
            }
        }
    }
}

async fn try_tcp(addr: SocketAddr, me: &Me<'_>, step: Duration) -> Result<(ClientSession, Link, Duration), StepError> {
    let fut = async {
        let mut stream = TcpStream::connect(addr).await.map_err(StepError::Io)?;
        let _ = stream.set_nodelay(true);
        let dialing = Dialing::new(addr);
        let sent_at = Instant::now();
        tcp::write_frame(&mut stream, &dialing.hello()).await.map_err(StepError::Io)?;
        let auth = loop {
            let f = read(&mut stream).await?;
            if let Some(a) = dialing
                .on_challenge(&f, me.trusted, me.credential, me.key, crate::unix_now())
                .map_err(StepError::Handshake)?
            {
                break a;
            }
        };
        let rtt = sent_at.elapsed();
        tcp::write_frame(&mut stream, auth.auth()).await.map_err(StepError::Io)?;
        loop {
            let f = read(&mut stream).await?;
            if let Some(session) = auth.on_reply(&f).map_err(StepError::Handshake)? {
                return Ok((session, rtt, stream));
            }
        }
    };
    match tokio::time::timeout(step, fut).await {
        Err(_) => Err(StepError::Timeout),
        Ok(Err(e)) => Err(e),
        Ok(Ok((session, rtt, stream))) => Ok((session, Link::Tcp(stream), rtt)),
    }
}

async fn read(stream: &mut TcpStream) -> Result<Vec<u8>, StepError> {
    match tcp::read_frame(stream).await {
        Ok(Some(f)) => Ok(f),
        Ok(None) => Err(StepError::Io(std::io::Error::new(std::io::ErrorKind::UnexpectedEof, "connection closed"))),
        Err(e) => Err(StepError::Io(std::io::Error::other(e.to_string()))),
    }
}

/// Asks `target` which address our UDP socket appears from.
async fn probe(udp: &UdpSocket, target: SocketAddr) -> Option<SocketAddr> {
    let id = crate::crypto::random::u64();
    let req = frame::encode_plain(target, MessageKind::NatProbe, 0, &NatProbe { id }.encode());
    for _ in 0..3 {
        udp.send_to(&req, target).await.ok()?;
        let deadline = tokio::time::Instant::now() + Duration::from_millis(400);
        while let Some(pkt) = recv_from(udp, target, deadline).await {
            let Ok(raw) = frame::decode(target, &pkt) else { continue };
            if raw.header.kind != MessageKind::NatProbeReply {
                continue;
            }
            if let Ok(o) = Observed::decode(raw.payload)
                && o.id == id
            {
                return Some(o.addr);
            }
        }
    }
    None
}

/// The local address the kernel would use toward `dest` (never the wildcard).
pub(crate) fn local_ip_toward(dest: SocketAddr) -> Option<std::net::IpAddr> {
    let bind: SocketAddr = if dest.is_ipv4() { "0.0.0.0:0".parse().ok()? } else { "[::]:0".parse().ok()? };
    let s = std::net::UdpSocket::bind(bind).ok()?;
    s.connect(dest).ok()?;
    s.local_addr().ok().map(|a| a.ip())
}

/// Where to probe: a super node on another IP address first (does the mapping depend on
/// the destination address?), then the alternate port (on the destination port?), then
/// other super nodes if those did not answer.
fn probe_targets(session: &ClientSession) -> Vec<SocketAddr> {
    let others: Vec<SocketAddr> =
        session.welcome.supernodes.iter().filter_map(|s| s.udp).filter(|a| *a != session.addr).collect();
    let mut v: Vec<SocketAddr> = others.iter().copied().filter(|a| a.ip() != session.addr.ip()).take(1).collect();
    v.extend(session.welcome.probe_addr);
    v.extend(others.iter().copied().filter(|a| !v.contains(a)).take(2).collect::<Vec<_>>());
    v
}

/// Classifies the NAT after a UDP connection: the Welcome's observed address is the
/// first observation, probes to [`probe_targets`] the others. Stops at the first
/// difference, or after two agreeing answers.
pub async fn discover_nat(udp: &UdpSocket, session: &ClientSession) -> (NatKind, Observations) {
    let port = udp.local_addr().map(|a| a.port()).unwrap_or(0);
    let ip = local_ip_toward(session.addr)
        .unwrap_or_else(|| udp.local_addr().map(|a| a.ip()).unwrap_or([0, 0, 0, 0].into()));
    let first = session.welcome.observed;
    let mut obs = Observations { local: SocketAddr::new(ip, port), first: Some(first), others: Vec::new() };
    for t in probe_targets(session) {
        if let Some(o) = probe(udp, t).await {
            obs.others.push(o);
            if o != first || obs.others.len() >= 2 {
                break;
            }
        }
    }
    (nat::classify(&obs), obs)
}
