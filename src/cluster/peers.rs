//! The members this node has authenticated, as a plain state machine: packets to seal in,
//! datagrams to send out; datagrams in, accepted payloads or a reason to drop out.
//!
//! A node learns a peer from its hello (a certificate, see [`super::cert`]); until then
//! what it wants to send there waits in a short queue while it asks with a hello of its
//! own. A data packet is accepted when it names a known sender, opens with that pair's
//! key, its counter is new to the sender's replay window, and it came from the sender's
//! certified gossip address, in that order; it marks the window only then, so a copy
//! sent from elsewhere cannot use up the real packet's counter.

use super::cert::{ClusterCert, StaticSecret};
use super::gossip::{Channel, ClusterKey, Header, Hello, PairKey};
use super::reject::Reject;
use super::replay::ReplayWindow;
use crate::crypto::PrivateKey;
use crate::crypto::credential::{CLOCK_SKEW_SECS, Credential, TrustedKeys};
use sha2::{Digest, Sha256};
use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;

/// Limits of the cluster's authentication layer (`[supernode.cluster]`).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ClusterLimits {
    /// Least time between two hellos sent to one address, asked or answered (ms).
    pub hello_interval_ms: u64,
    /// Packets held for one address while its certificate is asked for.
    pub pending_per_peer_max: usize,
}

impl Default for ClusterLimits {
    fn default() -> Self {
        Self { hello_interval_ms: 500, pending_per_peer_max: 64 }
    }
}

/// Addresses with packets waiting for a certificate, at most.
const PENDING_ADDRS_MAX: usize = 1024;
/// A waiting packet older than this is dropped (foca and the index retry on their own).
const PENDING_AGE_MAX_MS: u64 = 5_000;
/// Addresses whose last hello time is remembered, at most (older ones are forgotten first).
const HELLO_TIMES_MAX: usize = 4096;

struct Peer {
    cert: Certified,
    pair: PairKey,
    window: ReplayWindow,
}

/// What a peer's verified certificate binds, kept instead of the certificate: its
/// signatures, its credential and the parsed RSA key are needed only to verify it, and
/// held for every member they were most of a super node's memory for its view (about
/// 5.5 kB a member, 110 MB at 20,000; `cargo bench --bench view_memory`).
struct Certified {
    id: [u8; 8],
    name: String,
    gossip: SocketAddr,
    udp: Option<SocketAddr>,
    tcp: Option<SocketAddr>,
    issued_ms: u64,
    /// SHA-256 of the encoded certificate: a hello carrying the same one is known.
    digest: [u8; 32],
}

impl Certified {
    fn of(cert: &ClusterCert, encoded: &[u8]) -> Self {
        Self {
            id: cert.node().0,
            name: cert.credential.subject.clone(),
            gossip: cert.gossip,
            udp: cert.udp,
            tcp: cert.tcp,
            issued_ms: cert.issued_ms,
            digest: Sha256::digest(encoded).into(),
        }
    }

    /// Whether `m` says of itself exactly what the certificate bound (id, name, addresses).
    fn vouches_for(&self, m: &super::Member) -> bool {
        m.node == Some(self.id)
            && m.gossip == self.gossip
            && m.udp == self.udp
            && m.tcp == self.tcp
            && m.name == self.name
    }
}

struct Waiting {
    channel: Channel,
    node: Option<[u8; 8]>,
    payload: Vec<u8>,
    at_ms: u64,
}

/// An accepted data packet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Accepted {
    /// Gossip or index.
    pub channel: Channel,
    /// The authenticated sender.
    pub sender: [u8; 8],
    /// The payload.
    pub payload: Vec<u8>,
}

/// What a received datagram led to.
#[derive(Debug)]
pub enum Received {
    /// A data packet from an authenticated member.
    Data(Accepted),
    /// A hello: the node it taught us (if new or renewed), and datagrams to send (the
    /// answer, and packets that were waiting for this certificate).
    Hello {
        /// The node whose certificate is now held, if it changed.
        learned: Option<[u8; 8]>,
        /// (to, datagram).
        send: Vec<(SocketAddr, Vec<u8>)>,
    },
    /// Dropped.
    Rejected(Reject),
}

/// One node's authenticated peers.
pub struct Peers {
    me: [u8; 8],
    my_cert: Vec<u8>,
    secret: StaticSecret,
    key: ClusterKey,
    trusted: TrustedKeys,
    limits: ClusterLimits,
    counter: u64,
    by_id: HashMap<[u8; 8], Peer>,
    by_addr: HashMap<SocketAddr, [u8; 8]>,
    pending: HashMap<SocketAddr, VecDeque<Waiting>>,
    hello_at: HashMap<SocketAddr, u64>,
}

impl std::fmt::Debug for Peers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Peers").field("me", &hex::encode(self.me)).field("known", &self.by_id.len()).finish()
    }
}

/// The certificate could not be made (it does not fit in a hello).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the cluster certificate does not fit in a hello")]
pub struct CertTooLarge;

impl Peers {
    /// A node with credential key `key` and `credential`, speaking from `addrs`
    /// (gossip, udp, tcp); its counter starts at `now_ms` in µs, above any it used
    /// before a restart.
    pub fn new(
        key: &PrivateKey,
        credential: Credential,
        trusted: TrustedKeys,
        cluster: ClusterKey,
        addrs: (SocketAddr, Option<SocketAddr>, Option<SocketAddr>),
        limits: ClusterLimits,
        now_ms: u64,
    ) -> Result<Self, CertTooLarge> {
        let secret = StaticSecret::generate();
        let cert = ClusterCert::issue(key, credential, secret.public(), addrs, now_ms);
        let my_cert = cert.encode();
        cluster.seal_hello(&Hello { want_reply: false, sent_ms: now_ms, cert: my_cert.clone() }).ok_or(CertTooLarge)?;
        Ok(Self {
            me: key.public().id().0,
            my_cert,
            secret,
            key: cluster,
            trusted,
            limits,
            counter: now_ms.saturating_mul(1000),
            by_id: HashMap::new(),
            by_addr: HashMap::new(),
            pending: HashMap::new(),
            hello_at: HashMap::new(),
        })
    }

    /// This node's id.
    pub fn me(&self) -> [u8; 8] {
        self.me
    }

    fn next_counter(&mut self) -> Option<u64> {
        // At the top the node stops sending rather than wrap (2^64 µs is 584,000 years).
        self.counter = self.counter.checked_add(1)?;
        Some(self.counter)
    }

    /// Seals `payload` for the member at `to` (whose id is `node`, when known). Without
    /// its certificate the packet waits and a hello asks for it.
    pub fn send(
        &mut self,
        to: SocketAddr,
        node: Option<[u8; 8]>,
        channel: Channel,
        payload: &[u8],
        now_ms: u64,
    ) -> Vec<(SocketAddr, Vec<u8>)> {
        let pair = self
            .by_addr
            .get(&to)
            .filter(|id| node.is_none_or(|n| n == **id))
            .and_then(|id| self.by_id.get(id))
            .map(|p| p.pair.clone());
        if let Some(pair) = pair {
            let Some(counter) = self.next_counter() else { return Vec::new() };
            return vec![(to, pair.seal(Header { channel, sender: self.me, counter }, payload))];
        }
        if self.pending.len() < PENDING_ADDRS_MAX || self.pending.contains_key(&to) {
            let q = self.pending.entry(to).or_default();
            while q.len() >= self.limits.pending_per_peer_max.max(1) {
                q.pop_front();
            }
            q.push_back(Waiting { channel, node, payload: payload.to_vec(), at_ms: now_ms });
        }
        self.hello(to, true, now_ms).map(|h| vec![(to, h)]).unwrap_or_default()
    }

    /// A hello for `to`, unless one went there within the hello interval.
    pub fn hello(&mut self, to: SocketAddr, want_reply: bool, now_ms: u64) -> Option<Vec<u8>> {
        if self.hello_at.get(&to).is_some_and(|t| now_ms.saturating_sub(*t) < self.limits.hello_interval_ms) {
            return None;
        }
        if self.hello_at.len() >= HELLO_TIMES_MAX {
            let interval = self.limits.hello_interval_ms;
            self.hello_at.retain(|_, t| now_ms.saturating_sub(*t) < interval);
            if self.hello_at.len() >= HELLO_TIMES_MAX {
                return None;
            }
        }
        self.hello_at.insert(to, now_ms);
        self.key.seal_hello(&Hello { want_reply, sent_ms: now_ms, cert: self.my_cert.clone() })
    }

    /// Takes one datagram from `from`.
    pub fn receive(&mut self, from: SocketAddr, packet: &[u8], now_ms: u64) -> Received {
        match Channel::of(packet) {
            None => Received::Rejected(Reject::Malformed),
            Some(Channel::Hello) => self.on_hello(from, packet, now_ms),
            Some(_) => match self.open_data(from, packet) {
                Ok(a) => Received::Data(a),
                Err(why) => Received::Rejected(why),
            },
        }
    }

    fn open_data(&mut self, from: SocketAddr, packet: &[u8]) -> Result<Accepted, Reject> {
        let h = Header::parse(packet).map_err(|_| Reject::Malformed)?;
        if self.is_revoked(h.sender) {
            return Err(Reject::Revoked);
        }
        let peer = self.by_id.get_mut(&h.sender).ok_or(Reject::UnknownSender)?;
        let (_, payload) = peer.pair.open(packet).map_err(|_| Reject::BadMac)?;
        peer.window.check(h.counter).map_err(|_| Reject::Replayed)?;
        if from != peer.cert.gossip {
            return Err(Reject::WrongAddress);
        }
        peer.window.accept(h.counter).map_err(|_| Reject::Replayed)?;
        Ok(Accepted { channel: h.channel, sender: h.sender, payload })
    }

    fn on_hello(&mut self, from: SocketAddr, packet: &[u8], now_ms: u64) -> Received {
        match self.learn(from, packet, now_ms) {
            Err(why) => Received::Rejected(why),
            Ok((learned, want_reply)) => {
                let mut send = Vec::new();
                if want_reply && let Some(h) = self.hello(from, false, now_ms) {
                    send.push((from, h));
                }
                send.extend(self.flush(from, now_ms));
                Received::Hello { learned, send }
            }
        }
    }

    /// Checks a hello and takes its certificate: (the node, if new or renewed; whether
    /// an answer is wanted).
    fn learn(&mut self, from: SocketAddr, packet: &[u8], now_ms: u64) -> Result<(Option<[u8; 8]>, bool), Reject> {
        use super::gossip::GossipError;
        let hello = self.key.open_hello(packet).map_err(|e| match e {
            GossipError::Malformed => Reject::Malformed,
            GossipError::BadMac => Reject::BadMac,
        })?;
        if hello.sent_ms.abs_diff(now_ms) > CLOCK_SKEW_SECS * 1000 {
            return Err(Reject::StaleHello);
        }
        let cert = ClusterCert::decode(&hello.cert).map_err(|_| Reject::BadCertificate)?;
        let id = cert.node().0;
        if id == self.me {
            return Err(Reject::BadCertificate);
        }
        if from != cert.gossip {
            return Err(Reject::WrongAddress);
        }
        if let Some(p) = self.by_id.get(&id) {
            if p.cert.digest == <[u8; 32]>::from(Sha256::digest(&hello.cert)) {
                return Ok((None, hello.want_reply));
            }
            if p.cert.issued_ms >= cert.issued_ms {
                return Err(Reject::StaleCertificate);
            }
        }
        cert.verify(&self.trusted, now_ms / 1000).map_err(|e| match e {
            super::cert::CertError::Credential(crate::crypto::CredentialError::Revoked(_)) => Reject::Revoked,
            _ => Reject::BadCertificate,
        })?;
        let pair = self
            .secret
            .pair_key(self.me, id, &cert.static_key, self.key.pair_salt())
            .map_err(|_| Reject::BadCertificate)?;
        if let Some(old) = self.by_id.remove(&id) {
            self.by_addr.remove(&old.cert.gossip);
        }
        // One address, one node: whoever held it before has gone.
        if let Some(prev) = self.by_addr.insert(cert.gossip, id) {
            self.by_id.remove(&prev);
        }
        self.by_id.insert(
            id,
            Peer {
                cert: Certified::of(&cert, &hello.cert),
                pair: PairKey::new(&pair, self.me, id),
                window: ReplayWindow::default(),
            },
        );
        Ok((Some(id), hello.want_reply))
    }

    fn flush(&mut self, to: SocketAddr, now_ms: u64) -> Vec<(SocketAddr, Vec<u8>)> {
        let Some(id) = self.by_addr.get(&to).copied() else { return Vec::new() };
        let Some(q) = self.pending.remove(&to) else { return Vec::new() };
        let mut out = Vec::new();
        for w in q {
            if now_ms.saturating_sub(w.at_ms) > PENDING_AGE_MAX_MS || w.node.is_some_and(|n| n != id) {
                continue;
            }
            out.extend(self.send(to, Some(id), w.channel, &w.payload, now_ms));
        }
        out
    }

    /// Does this node hold a certificate that binds everything `m` says of itself (id,
    /// name, addresses)? This node itself always counts.
    pub fn vouches_for(&self, m: &super::Member) -> bool {
        match m.node {
            Some(id) if id == self.me => true,
            // A revoked member leaves the view at once, before its certificate is dropped.
            Some(id) => !self.is_revoked(id) && self.by_id.get(&id).is_some_and(|p| p.cert.vouches_for(m)),
            None => false,
        }
    }

    /// The trusted login keys and the revocation list this node honours.
    pub fn trusted(&self) -> &TrustedKeys {
        &self.trusted
    }

    fn is_revoked(&self, id: [u8; 8]) -> bool {
        self.trusted.revoked().contains(crate::crypto::CredentialKind::SuperNode, crate::crypto::KeyId(id))
    }

    /// Forgets every peer whose credential is now revoked (after a newer list was
    /// adopted): its packets are refused from here on, and its hellos too. Returns the
    /// names of those forgotten.
    pub fn drop_revoked(&mut self) -> Vec<String> {
        let gone: Vec<[u8; 8]> = self.by_id.keys().copied().filter(|id| self.is_revoked(*id)).collect();
        let mut names = Vec::new();
        for id in gone {
            if let Some(p) = self.by_id.remove(&id) {
                self.by_addr.remove(&p.cert.gossip);
                self.pending.remove(&p.cert.gossip);
                names.push(p.cert.name);
            }
        }
        names
    }

    /// The certified gossip address of node `id`.
    pub fn addr_of(&self, id: [u8; 8]) -> Option<SocketAddr> {
        self.by_id.get(&id).map(|p| p.cert.gossip)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster::cert::tests::{NOW, credential};

    const T: u64 = NOW * 1000;

    fn addr(host: u8, port: u16) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, host], port))
    }

    fn node(n: usize, secret: u8) -> Peers {
        node_at(n, secret, T)
    }

    /// Node `n` (re)started at `now_ms`: a fresh static key and certificate.
    fn node_at(n: usize, secret: u8, now_ms: u64) -> Peers {
        let (key, cred, trusted) = credential(n, &format!("sn{}", n + 1));
        let a = addr(1, 7000 + n as u16);
        Peers::new(
            &key,
            cred,
            trusted,
            ClusterKey::from_secret(&[secret; 32]),
            (a, None, None),
            ClusterLimits::default(),
            now_ms,
        )
        .unwrap()
    }

    /// Delivers every datagram in `out` from `from` to `to`; returns what `to` accepted
    /// and what it sent back.
    fn deliver(
        to: &mut Peers,
        from: SocketAddr,
        out: Vec<(SocketAddr, Vec<u8>)>,
        now: u64,
    ) -> (Vec<Accepted>, Vec<(SocketAddr, Vec<u8>)>) {
        let (mut got, mut back) = (Vec::new(), Vec::new());
        for (_, d) in out {
            match to.receive(from, &d, now) {
                Received::Data(a) => got.push(a),
                Received::Hello { send, .. } => back.extend(send),
                Received::Rejected(r) => panic!("rejected: {r:?}"),
            }
        }
        (got, back)
    }

    /// Two nodes: a hello and its answer, the waiting packet delivered, then a replay
    /// refused, a copy from another address refused, a forged sender refused.
    #[test]
    fn handshake_then_authenticated_packets() {
        let (mut a, mut b) = (node(0, 1), node(1, 1));
        let (aa, ba) = (addr(1, 7000), addr(1, 7001));
        let out = a.send(ba, Some(b.me()), Channel::Index, b"store", T);
        assert_eq!(out.len(), 1, "only a hello: the packet waits");
        assert_eq!(out[0].1.len(), super::super::gossip::HELLO_LEN);
        let (got, back) = deliver(&mut b, aa, out, T);
        assert!(got.is_empty());
        assert_eq!(back.len(), 1, "b answers the hello with its own (same size)");
        let (_, flushed) = deliver(&mut a, ba, back, T + 1);
        assert_eq!(flushed.len(), 1, "a's waiting packet goes out once b's certificate is in");
        let packet = flushed[0].1.clone();
        let (got, _) = deliver(&mut b, aa, flushed, T + 2);
        assert_eq!(got, vec![Accepted { channel: Channel::Index, sender: a.me(), payload: b"store".to_vec() }]);
        assert!(b.vouches_for(&crate::cluster::Member {
            gossip: aa,
            bump: 1,
            node: Some(a.me()),
            name: "sn1".into(),
            udp: None,
            tcp: None
        }));
        assert!(
            !b.vouches_for(&crate::cluster::Member {
                gossip: addr(2, 7000),
                bump: 1,
                node: Some(a.me()),
                name: "sn1".into(),
                udp: None,
                tcp: None
            }),
            "an address the certificate does not bind"
        );

        // Replayed from a's address, or from anywhere else: refused, and nothing answered.
        assert!(matches!(b.receive(aa, &packet, T + 3), Received::Rejected(Reject::Replayed)));
        assert!(matches!(b.receive(addr(2, 9), &packet, T + 3), Received::Rejected(Reject::Replayed)));
        // A fresh packet sent from another address is refused and does not use up its
        // counter: the real one still arrives.
        let fresh = a.send(ba, Some(b.me()), Channel::Gossip, b"ping", T + 4);
        assert!(matches!(b.receive(addr(2, 9), &fresh[0].1, T + 4), Received::Rejected(Reject::WrongAddress)));
        assert_eq!(deliver(&mut b, aa, fresh, T + 4).0.len(), 1);
        // Answers go out sealed for a, as b.
        let reply = b.send(aa, Some(a.me()), Channel::Index, b"ack", T + 5);
        assert_eq!(deliver(&mut a, ba, reply, T + 5).0[0].sender, b.me());
    }

    /// A third node with the cluster secret but not a's key cannot speak as a: a packet
    /// naming a's id does not open; a hello with a's certificate from its own address is
    /// refused; a certificate of its own cannot claim a's id.
    #[test]
    fn the_cluster_secret_alone_cannot_speak_as_another_node() {
        let (mut a, mut b, mut c) = (node(0, 1), node(1, 1), node(2, 1));
        let (aa, ba, ca) = (addr(1, 7000), addr(1, 7001), addr(1, 7002));
        let ha = a.hello(ba, true, T).unwrap();
        let (_, back) = deliver(&mut b, aa, vec![(ba, ha.clone())], T);
        deliver(&mut a, ba, back, T);
        let h = c.hello(ba, true, T).unwrap();
        let (_, back) = deliver(&mut b, ca, vec![(ba, h)], T);
        deliver(&mut c, ba, back, T);
        // c seals with its own pair key but writes a's id as the sender.
        let mut forged = c.send(ba, Some(b.me()), Channel::Index, b"store", T)[0].1.clone();
        forged[4..12].copy_from_slice(&a.me());
        assert!(matches!(b.receive(ca, &forged, T), Received::Rejected(Reject::BadMac)));
        assert!(matches!(b.receive(aa, &forged, T), Received::Rejected(Reject::BadMac)));
        // c replays a's hello from its own address.
        assert!(matches!(b.receive(ca, &ha, T), Received::Rejected(Reject::WrongAddress)));
        // A stranger without the cluster secret gets nothing back.
        let mut stranger = node(2, 9);
        let h = stranger.hello(ba, true, T).unwrap();
        assert!(matches!(b.receive(ca, &h, T), Received::Rejected(Reject::BadMac)));
        assert!(matches!(b.receive(ca, b"CFI2 short", T), Received::Rejected(Reject::Malformed)));
        assert!(matches!(b.receive(ca, &[0u8; 100], T), Received::Rejected(Reject::Malformed)));
        let mut unknown = forged.clone();
        unknown[4..12].copy_from_slice(&[0xee; 8]);
        assert!(matches!(b.receive(ca, &unknown, T), Received::Rejected(Reject::UnknownSender)));
    }

    /// Once b holds a list that revokes a: a's packets are refused before they are
    /// opened, a leaves b's view, its certificate is forgotten, and its hellos (even a
    /// fresh certificate after a restart) are refused.
    #[test]
    fn a_revoked_member_is_forgotten_and_refused() {
        use crate::crypto::revocation::{Revocation, RevocationList};
        let (mut a, mut b) = (node(0, 1), node(1, 1));
        let (aa, ba) = (addr(1, 7000), addr(1, 7001));
        let h = a.hello(ba, true, T).unwrap();
        let (_, back) = deliver(&mut b, aa, vec![(ba, h)], T);
        deliver(&mut a, ba, back, T);
        let before = a.send(ba, Some(b.me()), Channel::Gossip, b"ping", T + 1);
        let member = crate::cluster::Member {
            gossip: aa,
            bump: 1,
            node: Some(a.me()),
            name: "sn1".into(),
            udp: None,
            tcp: None,
        };
        assert!(b.vouches_for(&member));

        let entry = Revocation {
            key: crate::crypto::KeyId(a.me()),
            kind: crate::crypto::CredentialKind::SuperNode,
            subject: "sn1".into(),
            expires_at: NOW + 86_400,
        };
        let list = RevocationList::issue(1, vec![entry], &crate::crypto::keys::tests::test_key(0)).encode();
        b.trusted().adopt_revocations(&list).unwrap();
        assert!(!b.vouches_for(&member), "out of the view at once");
        assert!(matches!(b.receive(aa, &before[0].1, T + 2), Received::Rejected(Reject::Revoked)));
        assert_eq!(b.drop_revoked(), vec!["sn1".to_owned()]);
        assert_eq!(b.addr_of(a.me()), None);
        let mut a2 = node_at(0, 1, T + 10_000);
        let h2 = a2.hello(ba, true, T + 10_000).unwrap();
        assert!(matches!(b.receive(aa, &h2, T + 10_000), Received::Rejected(Reject::Revoked)));
    }

    proptest::proptest! {
        /// The receiver is total: arbitrary bytes, with or without a cluster magic and a
        /// known sender's id in place, are refused, never a panic.
        #[test]
        fn receive_is_total(magic in 0usize..4, known in proptest::bool::ANY, b in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..2600)) {
            use std::sync::OnceLock;
            static NODES: OnceLock<std::sync::Mutex<(Peers, [u8; 8])>> = OnceLock::new();
            let nodes = NODES.get_or_init(|| {
                let (mut a, mut b) = (node(0, 1), node(1, 1));
                let h = a.hello(addr(1, 7001), true, T).unwrap();
                let (_, back) = deliver(&mut b, addr(1, 7000), vec![(addr(1, 7001), h)], T);
                deliver(&mut a, addr(1, 7001), back, T);
                let id = a.me();
                std::sync::Mutex::new((b, id))
            });
            let mut g = nodes.lock().unwrap();
            let mut p = [&b"CFG2"[..], b"CFI2", b"CFH2", b""][magic].to_vec();
            if known {
                p.extend_from_slice(&g.1);
            }
            p.extend_from_slice(&b);
            proptest::prop_assert!(matches!(g.0.receive(addr(1, 7000), &p, T), Received::Rejected(_)));
        }
    }

    /// A restarted node (new static key, newer certificate) replaces its old self; the
    /// old certificate cannot come back; a hello's answer is rate limited.
    #[test]
    fn restart_old_certificates_and_hello_rate() {
        let (mut a, mut b) = (node(0, 1), node(1, 1));
        let (aa, ba) = (addr(1, 7000), addr(1, 7001));
        let old = a.hello(ba, true, T).unwrap();
        let (_, back) = deliver(&mut b, aa, vec![(ba, old.clone())], T);
        assert_eq!(back.len(), 1);
        // Asked again within the interval: no second answer.
        let again = a.key.seal_hello(&Hello { want_reply: true, sent_ms: T + 1, cert: a.my_cert.clone() }).unwrap();
        let (_, back) = deliver(&mut b, aa, vec![(ba, again)], T + 1);
        assert!(back.is_empty());
        let mut a2 = node_at(0, 1, T + 10_000);
        assert!(a2.counter > a.counter);
        let h2 = a2.hello(ba, true, T + 10_000).unwrap();
        let (_, back) = deliver(&mut b, aa, vec![(ba, h2)], T + 10_000);
        deliver(&mut a2, ba, back, T + 10_000);
        let p = a2.send(ba, Some(b.me()), Channel::Gossip, b"x", T + 10_001);
        assert_eq!(deliver(&mut b, aa, p, T + 10_001).0.len(), 1);
        assert!(matches!(b.receive(aa, &old, T + 10_002), Received::Rejected(Reject::StaleCertificate)));
        let late = a.key.seal_hello(&Hello { want_reply: true, sent_ms: T, cert: a.my_cert.clone() }).unwrap();
        assert!(matches!(b.receive(aa, &late, T + 400_000), Received::Rejected(Reject::StaleHello)));
    }
}
