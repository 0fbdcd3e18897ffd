//! The host's side of the super-node handshake, as a plain state machine:
//! [`Dialing`] → [`Authenticating`] → [`ClientSession`].

use crate::crypto::aead::{SealKey, SessionSecret, label};
use crate::crypto::credential::{Credential, CredentialError, CredentialKind, TrustedKeys};
use crate::crypto::{PrivateKey, envelope};
use crate::supernode::handshake::auth_transcript;
use crate::wire::frame::{self, Direction, FrameError};
use crate::wire::message::{AuthBody, Bye, Challenge, ErrorMsg, Hello, MessageKind, Welcome};
use crate::wire::replay::ReplayWindow;
use std::net::SocketAddr;

/// Why a handshake with one super node failed.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum HandshakeError {
    /// The super node's credential is not signed by a trusted login server (or expired):
    /// it may be an impostor.
    #[error("super node {addr} is not certified by a trusted login server ({source}); possibly an impostor")]
    Impostor {
        /// The super node's address.
        addr: SocketAddr,
        /// What was wrong with its credential.
        source: CredentialError,
    },
    /// The super node answered our Auth with an error.
    #[error("super node {addr} refused the login: {} ({})", .error.code.label(), .error.detail)]
    Refused {
        /// The super node's address.
        addr: SocketAddr,
        /// Its error.
        error: ErrorMsg,
    },
    /// The super node could not open the session key we sealed for the key its credential
    /// certifies: whoever answered holds a real super node's credential but not its key.
    #[error(
        "super node {addr} could not open a message sealed for its certified key: it does not hold that key (impostor?)"
    )]
    NotKeyHolder {
        /// The address that answered.
        addr: SocketAddr,
    },
    /// An answer that does not fit the protocol (malformed, or the wrong kind).
    #[error("super node {addr}: {what}")]
    Protocol {
        /// The super node's address.
        addr: SocketAddr,
        /// What was wrong.
        what: String,
    },
}

/// Step one: Hello sent, waiting for the Challenge.
#[derive(Debug)]
pub struct Dialing {
    addr: SocketAddr,
    host_nonce: [u8; 16],
}

/// Either an expected message, or an Error frame in its place.
fn plain_error(addr: SocketAddr, kind: MessageKind, payload: &[u8]) -> Option<HandshakeError> {
    (kind == MessageKind::Error).then(|| match ErrorMsg::decode(payload) {
        Ok(error) => HandshakeError::Refused { addr, error },
        Err(e) => HandshakeError::Protocol { addr, what: format!("malformed error: {e}") },
    })
}

impl Dialing {
    /// Starts a handshake with the super node at `addr` (the address we dial).
    pub fn new(addr: SocketAddr) -> Self {
        Self::with_nonce(addr, crate::crypto::random::bytes())
    }

    /// [`Dialing::new`] with the Hello's nonce given (drawn from the caller's generator),
    /// which is what matches the Challenge to this attempt.
    pub fn with_nonce(addr: SocketAddr, host_nonce: [u8; 16]) -> Self {
        Self { addr, host_nonce }
    }

    /// The Hello frame.
    pub fn hello(&self) -> Vec<u8> {
        let h = Hello { client_version: crate::VERSION.to_owned(), host_nonce: self.host_nonce };
        frame::encode_plain(self.addr, MessageKind::Hello, 0, &h.encode())
    }

    /// Reads the Challenge, checks the super node's credential and builds our Auth.
    /// `Ok(None)`: not an answer to our Hello (stray or stale frame): keep waiting.
    pub fn on_challenge(
        &self,
        bytes: &[u8],
        trusted: &TrustedKeys,
        credential: &Credential,
        key: &PrivateKey,
        now: u64,
    ) -> Result<Option<Authenticating>, HandshakeError> {
        let addr = self.addr;
        let Ok(raw) = frame::decode(addr, bytes) else { return Ok(None) };
        if let Some(e) = plain_error(addr, raw.header.kind, raw.payload) {
            return Err(e);
        }
        if raw.header.kind != MessageKind::Challenge {
            return Ok(None);
        }
        let c = Challenge::decode(raw.payload)
            .map_err(|e| HandshakeError::Protocol { addr, what: format!("malformed challenge: {e}") })?;
        if c.host_nonce != self.host_nonce {
            return Ok(None);
        }
        let sn = Credential::decode_verified(&c.credential, trusted, CredentialKind::SuperNode, now)
            .map_err(|source| HandshakeError::Impostor { addr, source })?;
        let encoded_credential = credential.encode();
        let (env, secret) = envelope::seal_with(&sn.public_key, MessageKind::Auth, c.cookie, |wrapped| {
            let signature = key.sign_pss(&auth_transcript(&c.cookie, &sn.public_key.id().0, wrapped));
            AuthBody { credential: encoded_credential, signature }.encode()
        });
        let auth = frame::encode_plain(addr, MessageKind::Auth, 0, &env.encode());
        Ok(Some(Authenticating { addr, secret, auth, supernode: sn, observed_in_challenge: c.observed }))
    }
}

/// Step two: Auth sent, waiting for the Welcome.
#[derive(Debug)]
pub struct Authenticating {
    addr: SocketAddr,
    secret: SessionSecret,
    auth: Vec<u8>,
    supernode: Credential,
    observed_in_challenge: SocketAddr,
}

impl Authenticating {
    /// The Auth frame (sent again, unchanged, if the Welcome is lost).
    pub fn auth(&self) -> &[u8] {
        &self.auth
    }

    /// Reads the Welcome. `Ok(None)`: not the answer (stray frame): keep waiting.
    pub fn on_reply(&self, bytes: &[u8]) -> Result<Option<ClientSession>, HandshakeError> {
        let addr = self.addr;
        let Ok(raw) = frame::decode(addr, bytes) else { return Ok(None) };
        if !raw.header.sealed {
            // A plain Error is the super node refusing before keys exist; anything else
            // (a repeated Challenge) is stale.
            return match plain_error(addr, raw.header.kind, raw.payload) {
                Some(HandshakeError::Refused { error, .. }) if error.code == crate::wire::ErrorCode::BadEnvelope => {
                    Err(HandshakeError::NotKeyHolder { addr })
                }
                Some(e) => Err(e),
                None => Ok(None),
            };
        }
        let rx = self.secret.derive(label::RESPONDER_TO_INITIATOR);
        let body = raw.open(&rx, Direction::ToInitiator).map_err(|_| HandshakeError::NotKeyHolder { addr })?;
        if raw.header.kind != MessageKind::Welcome {
            return Err(HandshakeError::Protocol {
                addr,
                what: format!("expected Welcome, got {}", raw.header.kind.label()),
            });
        }
        let welcome = Welcome::decode(&body)
            .map_err(|e| HandshakeError::Protocol { addr, what: format!("malformed Welcome: {e}") })?;
        let mut replay = ReplayWindow::new();
        replay.accept(raw.seq());
        Ok(Some(ClientSession {
            id: raw.header.session,
            addr,
            supernode: self.supernode.clone(),
            welcome,
            tx: self.secret.derive(label::INITIATOR_TO_RESPONDER),
            rx,
            tx_seq: 0,
            replay,
        }))
    }

    /// The address the super node reported in its Challenge.
    pub fn observed(&self) -> SocketAddr {
        self.observed_in_challenge
    }
}

/// An established session, host side.
#[derive(Debug)]
pub struct ClientSession {
    /// The session id.
    pub id: u32,
    /// The super node's address.
    pub addr: SocketAddr,
    /// The super node's verified credential.
    pub supernode: Credential,
    /// What the super node said in Welcome.
    pub welcome: Welcome,
    tx: SealKey,
    rx: SealKey,
    tx_seq: u64,
    replay: ReplayWindow,
}

impl ClientSession {
    /// Seals a frame to the super node.
    pub fn seal(&mut self, kind: MessageKind, body: &[u8]) -> Vec<u8> {
        let seq = self.tx_seq;
        self.tx_seq += 1;
        frame::encode_sealed(self.addr, kind, self.id, seq, &self.tx, Direction::ToResponder, body)
    }

    /// A keepalive frame.
    pub fn keepalive(&mut self) -> Vec<u8> {
        self.seal(MessageKind::Keepalive, &[])
    }

    /// A Bye frame (normal log-out).
    pub fn bye(&mut self) -> Vec<u8> {
        self.seal(MessageKind::Bye, &Bye { reason: 0 }.encode())
    }

    /// Opens a sealed frame from the super node.
    pub fn open(&mut self, bytes: &[u8]) -> Result<(MessageKind, Vec<u8>), FrameError> {
        let raw = frame::decode(self.addr, bytes)?;
        if !self.replay.check(raw.seq()) {
            return Err(FrameError::Replayed);
        }
        let body = raw.open(&self.rx, Direction::ToInitiator)?;
        self.replay.accept(raw.seq());
        Ok((raw.header.kind, body))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crypto::credential::Claims;
    use crate::crypto::keys::tests::{fixture_key, test_key};
    use crate::supernode::handshake::{accept, precheck};
    use crate::supernode::session::{Session, SessionPeer, Transport};
    use crate::wire::message::Observed;

    fn host_credential(now: u64) -> Credential {
        Credential::issue(
            Claims {
                kind: CredentialKind::Host,
                subject: "alice".into(),
                public_key: test_key(2).public().clone(),
                issued_at: now,
                expires_at: now + 3600,
                serial: 9,
            },
            &test_key(0),
        )
    }

    /// The whole handshake, host and super node, with no sockets.
    #[test]
    fn full_handshake_then_keepalive() {
        let now = 1_700_000_000;
        handshake_then_keepalive(crate::supernode::tests::identity(), &host_credential(now), &test_key(2), now);
    }

    /// With 4096-bit keys everywhere every frame still fits, and the Challenge still
    /// is no larger than the Hello (no amplification).
    #[test]
    fn full_handshake_with_4096_bit_keys() {
        let now = 1_700_000_000;
        let login = fixture_key("login-4096");
        let sn_key = fixture_key("supernode-4096");
        let host_key = fixture_key("host-4096");
        let sn_cred = crate::keygen::certify_supernode(&login, &"n".repeat(64), sn_key.public(), 1, now);
        let trusted = TrustedKeys::new(vec![login.public().clone()]);
        let sn = crate::supernode::Identity::new("big".into(), sn_key, sn_cred, trusted);
        let cred = Credential::issue(
            Claims {
                kind: CredentialKind::Host,
                subject: "x".repeat(32),
                public_key: host_key.public().clone(),
                issued_at: now,
                expires_at: now + 60,
                serial: 1,
            },
            &login,
        );
        handshake_then_keepalive(sn, &cred, &host_key, now);
    }

    fn handshake_then_keepalive(sn: crate::supernode::Identity, cred: &Credential, host_key: &PrivateKey, now: u64) {
        let sn_addr: SocketAddr = "198.18.0.1:33033".parse().unwrap();
        let host_addr: SocketAddr = "[2001:db8::1]:40000".parse().unwrap();
        let trusted = sn.trusted.clone();
        let d = Dialing::new(sn_addr);
        let hello = d.hello();
        let raw = frame::decode(sn_addr, &hello).unwrap();
        let h = Hello::decode(raw.payload).unwrap();
        let challenge_body = sn.challenge(&h, host_addr, now).encode();
        assert!(
            challenge_body.len() <= raw.payload.len(),
            "Challenge {} > Hello {}",
            challenge_body.len(),
            raw.payload.len()
        );
        let challenge = frame::encode_plain(sn_addr, MessageKind::Challenge, 0, &challenge_body);
        let a = d.on_challenge(&challenge, &trusted, cred, host_key, now).unwrap().unwrap();
        assert_eq!(a.observed(), host_addr);
        let raw = frame::decode(sn_addr, a.auth()).unwrap();
        let env = precheck(&sn, raw.payload, host_addr, now).unwrap();
        let accepted = accept(&sn, &env, now).unwrap();
        assert_eq!(&accepted.credential.subject, &cred.subject);
        // The cookie was for host_addr: the same Auth from elsewhere fails the cheap check.
        assert!(precheck(&sn, raw.payload, "198.18.1.3:40000".parse().unwrap(), now).is_err());

        let who = SessionPeer {
            id: 5,
            user: cred.subject.clone(),
            peer: host_addr,
            listener: sn_addr,
            transport: Transport::Udp,
        };
        let mut s = Session::new(who, &accepted.secret, now, 60);
        let welcome = s.welcome(&Welcome {
            observed: host_addr,
            keepalive_secs: 15,
            idle_timeout_secs: 60,
            probe_addr: Some("[2001:db8::2]:33034".parse().unwrap()),
            // The most a Welcome carries: 24 peers with IPv6 addresses and over-long names.
            supernodes: (0..40)
                .map(|i| crate::wire::message::SupernodeInfo {
                    name: format!("{i}-{}", "é".repeat(100)),
                    udp: Some("[2001:db8::3]:33033".parse().unwrap()),
                    tcp: Some("[2001:db8::3]:33033".parse().unwrap()),
                })
                .collect(),
        });
        let mut cs = a.on_reply(&welcome).unwrap().unwrap();
        assert_eq!(cs.welcome.observed, host_addr);
        assert_eq!(cs.id, 5);
        let ka = cs.keepalive();
        let actions = s.on_frame(&frame::decode(sn_addr, &ka).unwrap(), now + 1).unwrap();
        let crate::supernode::session::Action::Send(_, ack) = &actions[0] else { panic!() };
        let (kind, body) = cs.open(ack).unwrap();
        assert_eq!(kind, MessageKind::KeepaliveAck);
        assert_eq!(Observed::decode(&body).unwrap().addr, host_addr);
        assert_eq!(cs.open(ack), Err(FrameError::Replayed));
    }

    #[test]
    fn impostor_supernode_is_named() {
        // A super node whose credential is signed by an untrusted login key.
        let sn = crate::supernode::tests::identity();
        let sn_addr: SocketAddr = "198.18.0.1:33033".parse().unwrap();
        let untrusted = TrustedKeys::new(vec![test_key(1).public().clone()]);
        let d = Dialing::new(sn_addr);
        let hello = d.hello();
        let raw = frame::decode(sn_addr, &hello).unwrap();
        let h = Hello::decode(raw.payload).unwrap();
        let ch = frame::encode_plain(sn_addr, MessageKind::Challenge, 0, &sn.challenge(&h, sn_addr, 10).encode());
        let err = d.on_challenge(&ch, &untrusted, &host_credential(10), &test_key(2), 10).unwrap_err();
        assert!(matches!(err, HandshakeError::Impostor { .. }), "{err}");
        assert!(err.to_string().contains("impostor"));
    }

    #[test]
    fn a_given_nonce_is_the_one_the_challenge_must_echo() {
        let sn = crate::supernode::tests::identity();
        let sn_addr: SocketAddr = "198.18.0.1:33033".parse().unwrap();
        let host_addr: SocketAddr = "198.18.1.3:40000".parse().unwrap();
        let d = Dialing::with_nonce(sn_addr, [9; 16]);
        let raw_hello = d.hello();
        let h = Hello::decode(frame::decode(sn_addr, &raw_hello).unwrap().payload).unwrap();
        assert_eq!(h.host_nonce, [9; 16]);
        let again = Dialing::with_nonce(sn_addr, [9; 16]).hello();
        assert_eq!(
            frame::decode(sn_addr, &again).unwrap().payload,
            frame::decode(sn_addr, &raw_hello).unwrap().payload
        );
        // A Challenge for another attempt's nonce is not ours.
        let other = Hello { host_nonce: [8; 16], ..h.clone() };
        let ch = |h: &Hello| {
            frame::encode_plain(sn_addr, MessageKind::Challenge, 0, &sn.challenge(h, host_addr, 10).encode())
        };
        let cred = host_credential(10);
        assert!(d.on_challenge(&ch(&other), &sn.trusted, &cred, &test_key(2), 10).unwrap().is_none());
        assert!(d.on_challenge(&ch(&h), &sn.trusted, &cred, &test_key(2), 10).unwrap().is_some());
    }

    #[test]
    fn stray_frames_are_ignored_not_fatal() {
        let d = Dialing::new("198.18.0.1:33033".parse().unwrap());
        let trusted = TrustedKeys::default();
        assert!(d.on_challenge(b"garbage", &trusted, &host_credential(0), &test_key(2), 0).unwrap().is_none());
    }
}
