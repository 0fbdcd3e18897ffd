//! Cluster certificates: a super node's X25519 static key and addresses, signed (RSA-PSS)
//! with the key its login-signed credential certifies. Holding the cluster secret is not
//! enough to speak as a node: its pairwise keys come from this static key, and only the
//! holder of the node's credential key can certify one.
//!
//! ```text
//! signed  = "confab/v1/cluster-cert\0" ‖ node id (8) ‖ static key (32) ‖ gossip ‖ udp? ‖ tcp? ‖ issued_ms (8)
//! encoded = credential (u16 len) ‖ static key (32) ‖ gossip ‖ udp? ‖ tcp? ‖ issued_ms (8) ‖ signature (u16 len)
//! ```

use crate::crypto::credential::{Credential, CredentialError, CredentialKind, TrustedKeys};
use crate::crypto::{KeyId, PrivateKey};
use crate::wire::codec::{DecodeError, Reader, Writer};
use std::net::SocketAddr;

/// Longest encoded certificate accepted (a credential at its maximum plus the rest).
pub const CERT_LEN_MAX: usize = crate::crypto::credential::CREDENTIAL_LEN_MAX + 700;
/// Domain-separation prefix of the certificate signature.
pub const DOMAIN: &[u8] = b"confab/v1/cluster-cert\0";

/// A node's cluster certificate.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClusterCert {
    /// The node's login-signed credential (a super node's).
    pub credential: Credential,
    /// Its X25519 static public key.
    pub static_key: [u8; 32],
    /// The gossip address it speaks from.
    pub gossip: SocketAddr,
    /// Where hosts reach it over UDP.
    pub udp: Option<SocketAddr>,
    /// Where hosts reach it over TCP.
    pub tcp: Option<SocketAddr>,
    /// When it was made (unix ms): a newer certificate replaces an older one.
    pub issued_ms: u64,
    signature: Vec<u8>,
}

/// Why a certificate was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CertError {
    /// Malformed encoding.
    #[error("malformed cluster certificate: {0}")]
    Malformed(#[from] DecodeError),
    /// The credential does not verify (or is not a super node's).
    #[error("cluster certificate's credential: {0}")]
    Credential(#[from] CredentialError),
    /// The certificate's own signature does not verify under the credential's key.
    #[error("cluster certificate signature does not verify")]
    BadSignature,
}

fn signed(
    node: KeyId,
    static_key: &[u8; 32],
    gossip: SocketAddr,
    udp: Option<SocketAddr>,
    tcp: Option<SocketAddr>,
    issued_ms: u64,
) -> Vec<u8> {
    let mut w = Writer::new();
    w.raw(DOMAIN).raw(&node.0).raw(static_key).addr(gossip).opt_addr(udp).opt_addr(tcp).u64(issued_ms);
    w.into_bytes()
}

impl ClusterCert {
    /// Certifies `static_key` and the addresses with the node's credential key.
    pub fn issue(
        key: &PrivateKey,
        credential: Credential,
        static_key: [u8; 32],
        addrs: (SocketAddr, Option<SocketAddr>, Option<SocketAddr>),
        issued_ms: u64,
    ) -> Self {
        let (gossip, udp, tcp) = addrs;
        let signature = key.sign_pss(&signed(key.public().id(), &static_key, gossip, udp, tcp, issued_ms));
        Self { credential, static_key, gossip, udp, tcp, issued_ms, signature }
    }

    /// The node it speaks for: its credential's key id (a [`super::Member`]'s `node`).
    pub fn node(&self) -> KeyId {
        self.credential.public_key.id()
    }

    /// Canonical encoding.
    pub fn encode(&self) -> Vec<u8> {
        let mut w = Writer::new();
        w.bytes(&self.credential.encode())
            .raw(&self.static_key)
            .addr(self.gossip)
            .opt_addr(self.udp)
            .opt_addr(self.tcp)
            .u64(self.issued_ms)
            .bytes(&self.signature);
        w.into_bytes()
    }

    /// Decodes without verifying; total.
    pub fn decode(bytes: &[u8]) -> Result<Self, DecodeError> {
        if bytes.len() > CERT_LEN_MAX {
            return Err(DecodeError::TooLong { field: "cluster_cert", len: bytes.len(), max: CERT_LEN_MAX });
        }
        let mut r = Reader::new(bytes);
        let credential =
            Credential::decode(r.bytes("cluster_cert.credential", crate::crypto::credential::CREDENTIAL_LEN_MAX)?)?;
        let static_key = r.array("cluster_cert.static_key")?;
        let gossip = r.addr("cluster_cert.gossip")?;
        let udp = r.opt_addr("cluster_cert.udp")?;
        let tcp = r.opt_addr("cluster_cert.tcp")?;
        let issued_ms = r.u64("cluster_cert.issued_ms")?;
        let signature = r.bytes("cluster_cert.signature", 512)?.to_vec();
        r.finish()?;
        Ok(Self { credential, static_key, gossip, udp, tcp, issued_ms, signature })
    }

    /// Checks the credential (a super node's, signed by a trusted login key, valid at
    /// `now_s`) and that its key signed this certificate.
    pub fn verify(&self, trusted: &TrustedKeys, now_s: u64) -> Result<(), CertError> {
        self.credential.verify(trusted, CredentialKind::SuperNode, now_s)?;
        let msg = signed(self.node(), &self.static_key, self.gossip, self.udp, self.tcp, self.issued_ms);
        self.credential.public_key.verify_pss(&msg, &self.signature).map_err(|_| CertError::BadSignature)
    }
}

/// A node's X25519 static secret, fresh at every start (a restart issues a new certificate).
#[derive(Debug)]
pub struct StaticSecret(crate::crypto::dh::Secret);

pub use crate::crypto::dh::AgreementError;

impl StaticSecret {
    /// A fresh random secret.
    pub fn generate() -> Self {
        Self(crate::crypto::dh::Secret::generate())
    }

    /// Its public key.
    pub fn public(&self) -> [u8; 32] {
        self.0.public()
    }

    /// The pairwise key between this node (`me`) and a peer: X25519, then HKDF-SHA256
    /// salted with the cluster secret's salt (only cluster members can derive it) and
    /// bound to both ids and both static keys.
    pub fn pair_key(
        &self,
        me: [u8; 8],
        peer: [u8; 8],
        peer_static: &[u8; 32],
        salt: &[u8; 32],
    ) -> Result<[u8; 32], AgreementError> {
        let mine = self.public();
        let ((lo, lo_key), (hi, hi_key)) =
            if me <= peer { ((me, &mine), (peer, peer_static)) } else { ((peer, peer_static), (me, &mine)) };
        let info: [&[u8]; 5] = [b"confab/v1/cluster-pair\0", &lo, lo_key, &hi, hi_key];
        self.0.agree(peer_static, &[], salt, &info)
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::crypto::credential::Claims;
    use crate::crypto::keys::tests::{fixture_key, test_key};
    use proptest::prelude::*;

    pub(crate) const NOW: u64 = 1_800_000_000;

    /// A super node credential for fixture key `supernode-<n>`, signed by the login key.
    pub(crate) fn credential(n: usize, name: &str) -> (PrivateKey, Credential, TrustedKeys) {
        let login = test_key(0);
        let key = fixture_key(&format!("supernode-{n}"));
        let c = Credential::issue(
            Claims {
                kind: CredentialKind::SuperNode,
                subject: name.into(),
                public_key: key.public().clone(),
                issued_at: NOW - 10,
                expires_at: NOW + 86_400,
                serial: n as u64,
            },
            &login,
        );
        (key, c, TrustedKeys::new(vec![login.public().clone()]))
    }

    fn addr(p: u16) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], p))
    }

    #[test]
    fn issue_verify_and_every_forgery() {
        let (key, cred, trusted) = credential(0, "sn1");
        let s = StaticSecret::generate();
        let cert = ClusterCert::issue(&key, cred.clone(), s.public(), (addr(1), Some(addr(2)), None), NOW * 1000);
        let back = ClusterCert::decode(&cert.encode()).unwrap();
        assert_eq!(back, cert);
        back.verify(&trusted, NOW).unwrap();
        assert_eq!(back.node(), key.public().id());

        // Another node's key cannot certify a static key for this node's credential.
        let (other, _, _) = credential(1, "sn2");
        let forged = ClusterCert::issue(&other, cred.clone(), s.public(), (addr(1), None, None), NOW * 1000);
        assert_eq!(forged.verify(&trusted, NOW), Err(CertError::BadSignature));
        // Changing an address (or the static key) breaks the signature.
        for tweak in [
            |c: &mut ClusterCert| c.gossip = SocketAddr::from(([127, 0, 0, 2], 1)),
            |c: &mut ClusterCert| c.udp = None,
            |c: &mut ClusterCert| c.static_key[0] ^= 1,
            |c: &mut ClusterCert| c.issued_ms += 1,
        ] {
            let mut c = cert.clone();
            tweak(&mut c);
            assert_eq!(c.verify(&trusted, NOW), Err(CertError::BadSignature));
        }
        // An untrusted login key, an expired credential, a host's credential.
        assert!(matches!(cert.verify(&TrustedKeys::new(vec![]), NOW), Err(CertError::Credential(_))));
        assert!(matches!(cert.verify(&trusted, NOW + 100_000), Err(CertError::Credential(_))));
    }

    #[test]
    fn both_sides_derive_the_same_pair_key_and_only_they() {
        let (a, b, c) = (StaticSecret::generate(), StaticSecret::generate(), StaticSecret::generate());
        let salt = [7; 32];
        let ab = a.pair_key([1; 8], [2; 8], &b.public(), &salt).unwrap();
        let ba = b.pair_key([2; 8], [1; 8], &a.public(), &salt).unwrap();
        assert_eq!(ab, ba);
        assert_ne!(ab, c.pair_key([3; 8], [2; 8], &b.public(), &salt).unwrap());
        assert_ne!(ab, a.pair_key([1; 8], [2; 8], &b.public(), &[8; 32]).unwrap(), "another cluster secret");
        assert_ne!(ab, a.pair_key([1; 8], [9; 8], &b.public(), &salt).unwrap(), "another claimed id");
        assert_eq!(a.pair_key([1; 8], [2; 8], &[0; 32], &salt), Err(AgreementError), "a low-order point");
    }

    proptest! {
        #[test]
        fn decode_is_total(b in proptest::collection::vec(any::<u8>(), 0..2200)) {
            let _ = ClusterCert::decode(&b);
        }
    }
}
