//! One transfer's QUIC connection, sans-IO, through `quinn_proto`.
//!
//! Roles: the sender serves, the receiver connects, because the receiver knows what it
//! lacks and asks for it; the sender's certificate fingerprint travels in the signed offer.
//!
//! Trust: each transfer has its own self-signed Ed25519 certificate, made from the caller's
//! RNG. The client's verifier accepts exactly the certificate whose SHA-256 the offer
//! names (and checks the handshake signature with its key), nothing else: no super node or
//! relay on the path can stand in. The server asks no client certificate: whoever has the
//! offer may fetch the bytes, and the offer is sealed to the receiver.
//!
//! Size: datagrams ride inside a relay header or a TCP relay framing, so the UDP payload is
//! held at QUIC's minimum, 1,200 bytes, initial and maximum, with no path MTU discovery
//! (a probe larger than the path would only be lost).
//!
//! Congestion: CUBIC (RFC 9438), quinn's default and its most exercised controller, with
//! RFC 9002 loss recovery. Not BBR: quinn marks its BBR experimental, and BBRv1 does not
//! back off on loss, so beside calls on a shared relay or a home uplink it would take more
//! than its share; a file transfer should yield to a voice call, not the other way.
//!
//! Flow control: 512 KiB on the stream and the connection, and of send buffer: the most
//! a transfer holds in memory on either side, and the most in flight when a side dies
//! (sent again after a `kill -9`). It fills an 80 ms round trip at 52 Mbit/s, more than a
//! home uplink or a relay's file cap; with 2 MiB a kill cost a fifth of a 10 MB file, and
//! slow start overshot a relay's queue by the whole window. A faster, longer path is held
//! to 512 KiB a round trip.
//!
//! Randomness: the endpoint's RNG, its reset and token keys, the client's first
//! connection id and the certificate come from the seed given. rustls draws the TLS key
//! exchange's randomness from aws-lc itself, as it must.
//!
//! The path is the caller's (direct, punched, relayed): quinn sees one fixed placeholder
//! address for the peer, and [`QuicConn::path_changed`] tells it when the call machinery
//! moved to another path, so congestion state starts again.

use bytes::BytesMut;
use quinn_proto::{
    ClientConfig, Connection, ConnectionHandle, ConnectionId, ConnectionStats, DatagramEvent, Endpoint, EndpointConfig,
    Event, IdleTimeout, ServerConfig, TransportConfig, VarInt,
};
use rand::SeedableRng;
use rand::rngs::StdRng;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};
use sha2::{Digest, Sha256};
use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use thiserror::Error;

/// The UDP payload size, initial and maximum (the caller's 0x54 byte not included).
pub const DATAGRAM_BYTES_MAX: u16 = 1200;
/// Flow-control window of the stream and the connection, and the send buffer.
pub const WINDOW_BYTES: u32 = 512 << 10;
/// A connection silent this long is given up.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(30);
/// A quiet connection sends a ping this often, so the idle timeout means a dead path.
pub const KEEPALIVE: Duration = Duration::from_secs(5);
/// Datagrams of endpoint responses queued at most (a flood of stray Initials).
const RESPONSES_MAX: usize = 16;

const ALPN: &[u8] = b"confab-file/1";
const SERVER_NAME: &str = "confab-transfer";
/// What quinn sees as the peer's address; the caller owns the real path.
const PEER: SocketAddr = SocketAddr::new(std::net::IpAddr::V4(std::net::Ipv4Addr::new(198, 18, 0, 84)), 5484);

/// Why a connection could not be set up.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum ConnError {
    /// The TLS configuration was refused (a bad key or certificate).
    #[error("TLS setup: {0}")]
    Tls(String),
    /// quinn refused to start the connection.
    #[error("QUIC connect: {0}")]
    Connect(#[from] quinn_proto::ConnectError),
}

/// A transfer's TLS certificate and its PKCS#8 private key.
#[derive(Clone, PartialEq, Eq)]
pub struct TlsIdentity {
    /// The DER certificate.
    pub cert_der: Vec<u8>,
    /// The DER PKCS#8 key.
    pub key_der: Vec<u8>,
}

impl std::fmt::Debug for TlsIdentity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "TlsIdentity({})", hex::encode(&self.fingerprint()[..8]))
    }
}

impl TlsIdentity {
    /// A fresh self-signed Ed25519 certificate made from `rng`.
    pub fn generate(rng: &mut impl rand::Rng) -> Result<TlsIdentity, ConnError> {
        let mut seed = [0u8; 32];
        rng.fill_bytes(&mut seed);
        let ed = aws_lc_rs::signature::Ed25519KeyPair::from_seed_unchecked(&seed)
            .map_err(|e| ConnError::Tls(e.to_string()))?;
        let pkcs8 = ed.to_pkcs8v1().map_err(|_| ConnError::Tls("Ed25519 key to PKCS#8".into()))?;
        let key_der = pkcs8.as_ref().to_vec();
        let key = rcgen::KeyPair::from_pkcs8_der_and_sign_algo(
            &PrivatePkcs8KeyDer::from(key_der.clone()),
            &rcgen::PKCS_ED25519,
        )
        .map_err(|e| ConnError::Tls(e.to_string()))?;
        let cert = rcgen::CertificateParams::new(vec![SERVER_NAME.to_string()])
            .and_then(|p| p.self_signed(&key))
            .map_err(|e| ConnError::Tls(e.to_string()))?;
        Ok(TlsIdentity { cert_der: cert.der().to_vec(), key_der })
    }

    /// The SHA-256 of the certificate: what the offer carries.
    pub fn fingerprint(&self) -> [u8; 32] {
        Sha256::digest(&self.cert_der).into()
    }
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

/// Accepts exactly one certificate, by its SHA-256, and checks the handshake against it.
#[derive(Debug)]
struct PinnedCertificate {
    fingerprint: [u8; 32],
    provider: Arc<CryptoProvider>,
}

impl ServerCertVerifier for PinnedCertificate {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        use subtle::ConstantTimeEq;
        let seen: [u8; 32] = Sha256::digest(end_entity.as_ref()).into();
        if intermediates.is_empty() && bool::from(seen.ct_eq(&self.fingerprint)) {
            Ok(ServerCertVerified::assertion())
        } else {
            Err(rustls::Error::InvalidCertificate(rustls::CertificateError::ApplicationVerificationFailure))
        }
    }

    fn verify_tls12_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        // QUIC is TLS 1.3 only.
        Err(rustls::Error::PeerIncompatible(rustls::PeerIncompatible::Tls12NotOffered))
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.provider.signature_verification_algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider.signature_verification_algorithms.supported_schemes()
    }
}

fn transport(server: bool) -> Arc<TransportConfig> {
    let mut t = TransportConfig::default();
    t.initial_mtu(DATAGRAM_BYTES_MAX)
        .min_mtu(DATAGRAM_BYTES_MAX)
        .mtu_discovery_config(None)
        .stream_receive_window(VarInt::from_u32(WINDOW_BYTES))
        .receive_window(VarInt::from_u32(WINDOW_BYTES))
        .send_window(u64::from(WINDOW_BYTES))
        .max_idle_timeout(Some(IdleTimeout::try_from(IDLE_TIMEOUT).expect("30 s is a valid idle timeout")))
        .keep_alive_interval(Some(KEEPALIVE))
        .max_concurrent_uni_streams(VarInt::from_u32(0))
        // The receiver opens the one stream; the sender accepts it and opens none.
        .max_concurrent_bidi_streams(VarInt::from_u32(u32::from(server)))
        .datagram_receive_buffer_size(None)
        .enable_segmentation_offload(false);
    Arc::new(t)
}

fn endpoint(rng: &mut StdRng, server: Option<Arc<ServerConfig>>) -> Endpoint {
    let mut reset_key = [0u8; 64];
    rand::Rng::fill_bytes(rng, &mut reset_key);
    let mut seed = [0u8; 32];
    rand::Rng::fill_bytes(rng, &mut seed);
    let mut config = EndpointConfig::new(Arc::new(aws_lc_rs::hmac::Key::new(aws_lc_rs::hmac::HMAC_SHA256, &reset_key)));
    config.max_udp_payload_size(DATAGRAM_BYTES_MAX).expect("1200 is within QUIC's bounds").rng_seed(Some(seed));
    Endpoint::new(Arc::new(config), server, false, None)
}

/// One QUIC connection of a transfer, driven by the caller with `now`.
pub struct QuicConn {
    endpoint: Endpoint,
    server: Option<Arc<ServerConfig>>,
    conn: Option<(ConnectionHandle, Connection)>,
    responses: VecDeque<Vec<u8>>,
    buf: Vec<u8>,
    ignored: u64,
}

impl std::fmt::Debug for QuicConn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("QuicConn").field("server", &self.server.is_some()).field("open", &self.conn.is_some()).finish()
    }
}

impl QuicConn {
    /// The sender's side: waits for the receiver's connection, presenting `identity`.
    pub fn server(identity: &TlsIdentity, rng: &mut impl rand::Rng) -> Result<QuicConn, ConnError> {
        let mut rng = StdRng::from_rng(rng);
        let mut tls = rustls::ServerConfig::builder_with_provider(provider())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(|e| ConnError::Tls(e.to_string()))?
            .with_no_client_auth()
            .with_single_cert(
                vec![CertificateDer::from(identity.cert_der.clone())],
                PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(identity.key_der.clone())),
            )
            .map_err(|e| ConnError::Tls(e.to_string()))?;
        tls.alpn_protocols = vec![ALPN.to_vec()];
        let crypto =
            quinn_proto::crypto::rustls::QuicServerConfig::try_from(tls).map_err(|e| ConnError::Tls(e.to_string()))?;
        let mut master = [0u8; 64];
        rand::Rng::fill_bytes(&mut rng, &mut master);
        let token_key = aws_lc_rs::hkdf::Salt::new(aws_lc_rs::hkdf::HKDF_SHA256, &[]).extract(&master);
        let mut config = ServerConfig::new(Arc::new(crypto), Arc::new(token_key));
        config.transport_config(transport(true)).migration(false).max_incoming(1);
        let config = Arc::new(config);
        let endpoint = endpoint(&mut rng, Some(config.clone()));
        Ok(QuicConn {
            endpoint,
            server: Some(config),
            conn: None,
            responses: VecDeque::new(),
            buf: Vec::new(),
            ignored: 0,
        })
    }

    /// The receiver's side: connects at once, trusting only the certificate `fingerprint`.
    pub fn client(fingerprint: [u8; 32], now: Instant, rng: &mut impl rand::Rng) -> Result<QuicConn, ConnError> {
        let mut rng = StdRng::from_rng(rng);
        let provider = provider();
        let mut tls = rustls::ClientConfig::builder_with_provider(provider.clone())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(|e| ConnError::Tls(e.to_string()))?
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(PinnedCertificate { fingerprint, provider }))
            .with_no_client_auth();
        tls.alpn_protocols = vec![ALPN.to_vec()];
        let crypto = quinn_proto::crypto::rustls::QuicClientConfig::try_from(Arc::new(tls))
            .map_err(|e| ConnError::Tls(e.to_string()))?;
        let mut config = ClientConfig::new(Arc::new(crypto));
        config.transport_config(transport(false));
        let cid_rng = Mutex::new(StdRng::from_rng(&mut rng));
        config.initial_dst_cid_provider(Arc::new(move || {
            let mut id = [0u8; 20];
            rand::Rng::fill_bytes(&mut *cid_rng.lock().expect("never poisoned: nothing panics holding it"), &mut id);
            ConnectionId::new(&id)
        }));
        let mut endpoint = endpoint(&mut rng, None);
        let conn = endpoint.connect(now, config, PEER, SERVER_NAME)?;
        Ok(QuicConn {
            endpoint,
            server: None,
            conn: Some(conn),
            responses: VecDeque::new(),
            buf: Vec::new(),
            ignored: 0,
        })
    }

    /// Feeds one datagram from the peer (without the demux byte).
    pub fn handle_datagram(&mut self, now: Instant, bytes: &[u8]) {
        self.buf.clear();
        match self.endpoint.handle(now, PEER, None, None, BytesMut::from(bytes), &mut self.buf) {
            Some(DatagramEvent::ConnectionEvent(ch, ev)) => match self.conn.as_mut() {
                Some((h, conn)) if *h == ch => conn.handle_event(ev),
                _ => self.ignored += 1,
            },
            Some(DatagramEvent::NewConnection(incoming)) => {
                if self.conn.is_none() && self.server.is_some() {
                    self.buf.clear();
                    match self.endpoint.accept(incoming, now, &mut self.buf, None) {
                        Ok(conn) => self.conn = Some(conn),
                        Err(e) => {
                            self.ignored += 1;
                            if let Some(t) = e.response {
                                self.push_response(t.size);
                            }
                        }
                    }
                } else {
                    // One connection per transfer: a second is not served.
                    self.ignored += 1;
                    self.endpoint.ignore(incoming);
                }
            }
            Some(DatagramEvent::Response(t)) => self.push_response(t.size),
            None => self.ignored += 1,
        }
        self.endpoint_events();
    }

    fn push_response(&mut self, size: usize) {
        if self.responses.len() < RESPONSES_MAX {
            self.responses.push_back(self.buf[..size].to_vec());
        }
    }

    fn endpoint_events(&mut self) {
        if let Some((ch, conn)) = self.conn.as_mut() {
            while let Some(ev) = conn.poll_endpoint_events() {
                if let Some(back) = self.endpoint.handle_event(*ch, ev) {
                    conn.handle_event(back);
                }
            }
        }
    }

    /// The next datagram to send, without the demux byte.
    pub fn poll_transmit(&mut self, now: Instant) -> Option<Vec<u8>> {
        if let Some(r) = self.responses.pop_front() {
            return Some(r);
        }
        let (_, conn) = self.conn.as_mut()?;
        self.buf.clear();
        let t = conn.poll_transmit(now, 1, &mut self.buf)?;
        let out = self.buf[..t.size].to_vec();
        self.endpoint_events();
        Some(out)
    }

    /// When [`QuicConn::handle_timeout`] is next due.
    pub fn poll_timeout(&mut self) -> Option<Instant> {
        self.conn.as_mut().and_then(|(_, c)| c.poll_timeout())
    }

    /// Runs the timers due at `now` (loss detection, pacing, idle, keep-alive).
    pub fn handle_timeout(&mut self, now: Instant) {
        if let Some((_, conn)) = self.conn.as_mut() {
            conn.handle_timeout(now);
        }
        self.endpoint_events();
    }

    /// The next event of the connection (handshake done, stream readable, lost, …).
    pub fn poll_event(&mut self) -> Option<Event> {
        self.conn.as_mut().and_then(|(_, c)| c.poll())
    }

    /// The connection, once there is one (the server's appears with the first Initial).
    pub fn connection(&mut self) -> Option<&mut Connection> {
        self.conn.as_mut().map(|(_, c)| c)
    }

    /// Closes with an application code and reason the peer sees.
    pub fn close(&mut self, now: Instant, code: u32, reason: &str) {
        if let Some((_, conn)) = self.conn.as_mut() {
            conn.close(now, VarInt::from_u32(code), bytes::Bytes::copy_from_slice(reason.as_bytes()));
        }
        self.endpoint_events();
    }

    /// Tells quinn the call machinery moved to another path: congestion, RTT and pacing
    /// start again from their initial values.
    pub fn path_changed(&mut self, now: Instant) {
        if let Some((_, conn)) = self.conn.as_mut() {
            conn.path_changed(now);
        }
    }

    /// Whether the connection has closed and sent its last datagram.
    pub fn is_drained(&self) -> bool {
        self.conn.as_ref().is_some_and(|(_, c)| c.is_drained())
    }

    /// quinn's counters: UDP payload bytes and datagrams sent, retransmissions included.
    pub fn stats(&self) -> Option<ConnectionStats> {
        self.conn.as_ref().map(|(_, c)| c.stats())
    }

    /// Datagrams dropped before any connection took them (strays, a second client).
    pub fn ignored(&self) -> u64 {
        self.ignored
    }
}
