//! RSA key pairs: generation, PEM files, OAEP encryption and PSS signatures.
//!
//! Public-key operations (encrypt, verify) always use the `rsa` crate. The private-key
//! operations a server performs for every handshake (OAEP decrypt, PSS sign) can run on
//! either the `rsa` crate or aws-lc-rs; `benches/handshake.rs` measures both and the
//! faster one is the default. aws-lc's RSA is constant-time, which also keeps the
//! login server off the `rsa` crate's decryption path that RUSTSEC-2023-0071 concerns.

use rsa::pkcs8::{DecodePrivateKey, DecodePublicKey, EncodePrivateKey, EncodePublicKey, LineEnding};
use rsa::sha2::Sha256;
use rsa::traits::PublicKeyParts;
use sha2::Digest;
use std::path::Path;
use std::sync::Arc;

/// Smallest modulus we accept anywhere: 1024-bit RSA is no longer safe.
pub const RSA_BITS_MIN: usize = 2048;
/// Largest modulus we accept, to bound the cost of a verification an attacker can ask for.
pub const RSA_BITS_MAX: usize = 4096;
/// Largest SubjectPublicKeyInfo DER we decode (a 4096-bit key is 550 bytes).
pub const PUBLIC_KEY_DER_MAX: usize = 600;

/// What went wrong with a key.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum KeyError {
    /// The key file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// The underlying error.
        source: std::io::Error,
    },
    /// The bytes are not a valid RSA key of the expected form.
    #[error("not a valid RSA key: {0}")]
    Invalid(String),
    /// The key is outside the accepted size range.
    #[error("RSA key of {0} bits is outside the accepted range {RSA_BITS_MIN}..={RSA_BITS_MAX}")]
    Size(usize),
    /// Decryption failed (wrong key or corrupt ciphertext).
    #[error("RSA decryption failed")]
    Decrypt,
    /// A signature did not verify.
    #[error("signature does not verify")]
    BadSignature,
}

/// The first 8 bytes of SHA-256 over a public key's DER: names a key on the wire.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct KeyId(pub [u8; 8]);

impl std::fmt::Debug for KeyId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "KeyId({})", hex::encode(self.0))
    }
}

impl std::fmt::Display for KeyId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&hex::encode(self.0))
    }
}

/// An RSA public key with its DER encoding kept, since that is what goes on the wire.
#[derive(Clone)]
pub struct PublicKey {
    key: rsa::PublicKey,
    der: Arc<[u8]>,
    id: KeyId,
}

impl PartialEq for PublicKey {
    fn eq(&self, other: &Self) -> bool {
        self.der == other.der
    }
}
impl Eq for PublicKey {}

impl std::fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "PublicKey({}, {} bits)", self.id, self.bits())
    }
}

impl PublicKey {
    /// Decodes a SubjectPublicKeyInfo DER, checking the size range.
    pub fn from_der(der: &[u8]) -> Result<Self, KeyError> {
        if der.len() > PUBLIC_KEY_DER_MAX {
            return Err(KeyError::Invalid(format!("public key of {} bytes is too long", der.len())));
        }
        let key = rsa::PublicKey::from_public_key_der(der).map_err(|e| KeyError::Invalid(e.to_string()))?;
        let bits = key.size() * 8;
        if !(RSA_BITS_MIN..=RSA_BITS_MAX).contains(&bits) {
            return Err(KeyError::Size(bits));
        }
        let id = key_id(der);
        Ok(Self { key, der: der.into(), id })
    }

    /// Decodes a PEM "PUBLIC KEY" document.
    pub fn from_pem(pem: &str) -> Result<Self, KeyError> {
        let key = rsa::PublicKey::from_public_key_pem(pem).map_err(|e| KeyError::Invalid(e.to_string()))?;
        let der = key.to_public_key_der().map_err(|e| KeyError::Invalid(e.to_string()))?;
        Self::from_der(der.as_bytes())
    }

    /// Reads a PEM public key file.
    pub fn read_pem_file(path: &Path) -> Result<Self, KeyError> {
        let text = std::fs::read_to_string(path)
            .map_err(|source| KeyError::Io { path: path.display().to_string(), source })?;
        Self::from_pem(&text)
    }

    /// The PEM encoding.
    pub fn to_pem(&self) -> String {
        self.key.to_public_key_pem(LineEnding::LF).expect("encoding a valid public key")
    }

    /// The DER encoding (SubjectPublicKeyInfo).
    pub fn der(&self) -> &[u8] {
        &self.der
    }

    /// The key's short identifier.
    pub fn id(&self) -> KeyId {
        self.id
    }

    /// Modulus size in bits.
    pub fn bits(&self) -> usize {
        self.key.size() * 8
    }

    /// Modulus size in bytes: the length of every ciphertext and signature.
    pub fn size_bytes(&self) -> usize {
        self.key.size()
    }

    /// RSA-OAEP (SHA-256) encryption.
    pub fn encrypt_oaep(&self, plaintext: &[u8]) -> Vec<u8> {
        self.key.oaep_encrypt::<Sha256>(plaintext).expect("OAEP plaintext is a short fixed-size secret")
    }

    /// RSA-PSS (SHA-256) verification.
    pub fn verify_pss(&self, msg: &[u8], sig: &[u8]) -> Result<(), KeyError> {
        if sig.len() != self.size_bytes() {
            return Err(KeyError::BadSignature);
        }
        self.key.pss_verify::<Sha256>(msg, sig).map_err(|_| KeyError::BadSignature)
    }
}

fn key_id(der: &[u8]) -> KeyId {
    let d = sha2::Sha256::digest(der);
    let mut id = [0u8; 8];
    id.copy_from_slice(&d[..8]);
    KeyId(id)
}

/// Which implementation runs private-key operations.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum RsaBackend {
    /// aws-lc-rs: several times faster and constant-time (the default).
    #[default]
    AwsLc,
    /// The pure-Rust `rsa` crate.
    RustCrypto,
}

/// An RSA private key, able to decrypt OAEP and sign PSS with either backend.
#[derive(Clone)]
pub struct PrivateKey {
    inner: Arc<PrivateInner>,
}

struct PrivateInner {
    rsa: rsa::PrivateKey,
    aws_sign: aws_lc_rs::signature::RsaKeyPair,
    aws_decrypt: aws_lc_rs::rsa::OaepPrivateDecryptingKey,
    public: PublicKey,
    backend: RsaBackend,
}

impl std::fmt::Debug for PrivateKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "PrivateKey({:?})", self.inner.public)
    }
}

impl PrivateKey {
    /// Generates a new key pair (slow: around a second for 2048 bits in a release build).
    pub fn generate(bits: usize) -> Result<Self, KeyError> {
        if !(RSA_BITS_MIN..=RSA_BITS_MAX).contains(&bits) {
            return Err(KeyError::Size(bits));
        }
        let key = rsa::PrivateKey::new(&mut getrandom::SysRng, bits).map_err(|e| KeyError::Invalid(e.to_string()))?;
        Self::from_rsa(key, RsaBackend::default())
    }

    fn from_rsa(key: rsa::PrivateKey, backend: RsaBackend) -> Result<Self, KeyError> {
        let pkcs8 = key.to_pkcs8_der().map_err(|e| KeyError::Invalid(e.to_string()))?;
        let invalid = |e: &dyn std::fmt::Display| KeyError::Invalid(e.to_string());
        let aws_sign = aws_lc_rs::signature::RsaKeyPair::from_pkcs8(pkcs8.as_bytes()).map_err(|e| invalid(&e))?;
        let aws_decrypt =
            aws_lc_rs::rsa::PrivateDecryptingKey::from_pkcs8(pkcs8.as_bytes()).map_err(|e| invalid(&e))?;
        let aws_decrypt = aws_lc_rs::rsa::OaepPrivateDecryptingKey::new(aws_decrypt).map_err(|e| invalid(&e))?;
        let pub_der = key.to_public_key().to_public_key_der().map_err(|e| invalid(&e))?;
        let public = PublicKey::from_der(pub_der.as_bytes())?;
        Ok(Self { inner: Arc::new(PrivateInner { rsa: key, aws_sign, aws_decrypt, public, backend }) })
    }

    /// The same key, running private operations on `backend`.
    pub fn with_backend(&self, backend: RsaBackend) -> Self {
        Self::from_rsa(self.inner.rsa.clone(), backend).expect("re-wrapping a valid key")
    }

    /// Decodes a PKCS#8 PEM "PRIVATE KEY" document.
    pub fn from_pem(pem: &str) -> Result<Self, KeyError> {
        let key = rsa::PrivateKey::from_pkcs8_pem(pem).map_err(|e| KeyError::Invalid(e.to_string()))?;
        let bits = key.size() * 8;
        if !(RSA_BITS_MIN..=RSA_BITS_MAX).contains(&bits) {
            return Err(KeyError::Size(bits));
        }
        Self::from_rsa(key, RsaBackend::default())
    }

    /// Reads a PEM private key file.
    pub fn read_pem_file(path: &Path) -> Result<Self, KeyError> {
        let text = std::fs::read_to_string(path)
            .map_err(|source| KeyError::Io { path: path.display().to_string(), source })?;
        Self::from_pem(&text)
    }

    /// Writes the private key (mode 0600, created atomically) and the public key (0644) beside it.
    pub fn write_pem_files(&self, private_path: &Path, public_path: &Path) -> Result<(), KeyError> {
        let pem = self.inner.rsa.to_pkcs8_pem(LineEnding::LF).map_err(|e| KeyError::Invalid(e.to_string()))?;
        crate::fsutil::write_atomic(private_path, pem.as_bytes(), 0o600)
            .map_err(|source| KeyError::Io { path: private_path.display().to_string(), source })?;
        crate::fsutil::write_atomic(public_path, self.public().to_pem().as_bytes(), 0o644)
            .map_err(|source| KeyError::Io { path: public_path.display().to_string(), source })
    }

    /// The public half.
    pub fn public(&self) -> &PublicKey {
        &self.inner.public
    }

    /// The backend private operations run on.
    pub fn backend(&self) -> RsaBackend {
        self.inner.backend
    }

    /// RSA-OAEP (SHA-256) decryption.
    pub fn decrypt_oaep(&self, ciphertext: &[u8]) -> Result<Vec<u8>, KeyError> {
        if ciphertext.len() != self.inner.public.size_bytes() {
            return Err(KeyError::Decrypt);
        }
        match self.inner.backend {
            RsaBackend::AwsLc => {
                let mut out = vec![0u8; self.inner.aws_decrypt.min_output_size()];
                let plain = self
                    .inner
                    .aws_decrypt
                    .decrypt(&aws_lc_rs::rsa::OAEP_SHA256_MGF1SHA256, ciphertext, &mut out, None)
                    .map_err(|_| KeyError::Decrypt)?;
                Ok(plain.to_vec())
            }
            RsaBackend::RustCrypto => self.inner.rsa.oaep_decrypt::<Sha256>(ciphertext).map_err(|_| KeyError::Decrypt),
        }
    }

    /// RSA-PSS (SHA-256, salt = digest length) signature.
    pub fn sign_pss(&self, msg: &[u8]) -> Vec<u8> {
        match self.inner.backend {
            RsaBackend::AwsLc => {
                let mut sig = vec![0u8; self.inner.aws_sign.public_modulus_len()];
                self.inner
                    .aws_sign
                    .sign(&aws_lc_rs::signature::RSA_PSS_SHA256, &aws_lc_rs::rand::SystemRandom::new(), msg, &mut sig)
                    .expect("PSS signing with a valid key");
                sig
            }
            RsaBackend::RustCrypto => self.inner.rsa.pss_sign::<Sha256>(msg).expect("PSS signing with a valid key"),
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A fixed 2048-bit test key, so unit tests do not spend seconds generating keys.
    pub fn test_key(n: usize) -> PrivateKey {
        let pem = match n {
            0 => include_str!("../../tests/fixtures/keys/login-0.key.pem"),
            1 => include_str!("../../tests/fixtures/keys/supernode-0.key.pem"),
            _ => include_str!("../../tests/fixtures/keys/host-0.key.pem"),
        };
        PrivateKey::from_pem(pem).unwrap()
    }

    /// A fixture key by file stem, read at run time (for the large 4096-bit ones).
    pub fn fixture_key(stem: &str) -> PrivateKey {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(format!("tests/fixtures/keys/{stem}.key.pem"));
        PrivateKey::read_pem_file(&path).unwrap()
    }

    #[test]
    fn backends_interoperate() {
        let k = test_key(0);
        for backend in [RsaBackend::AwsLc, RsaBackend::RustCrypto] {
            let k = k.with_backend(backend);
            let ct = k.public().encrypt_oaep(b"secret");
            assert_eq!(k.decrypt_oaep(&ct).unwrap(), b"secret");
            let sig = k.sign_pss(b"message");
            k.public().verify_pss(b"message", &sig).unwrap();
            assert!(k.public().verify_pss(b"messagf", &sig).is_err());
        }
    }

    #[test]
    fn rejects_garbage() {
        let k = test_key(0);
        assert!(k.decrypt_oaep(&[0u8; 256]).is_err());
        assert!(k.decrypt_oaep(&[0u8; 3]).is_err());
        assert!(PublicKey::from_der(&[0x30, 0x82, 0xff]).is_err());
        assert!(k.public().verify_pss(b"m", &[1, 2, 3]).is_err());
    }

    #[test]
    fn pem_round_trip_and_id() {
        let k = test_key(1);
        let p = PublicKey::from_pem(&k.public().to_pem()).unwrap();
        assert_eq!(&p, k.public());
        assert_eq!(p.id(), k.public().id());
        assert_eq!(p.bits(), 2048);
    }
}
