//! Cryptography: key pairs, credentials, AEAD sealing, header obfuscation, password hashing.
//!
//! Everything here is plain functions over bytes; nothing does I/O except the PEM
//! helpers in [`keys`], which read and write key files.

pub mod aead;
pub mod credential;
pub mod dh;
pub mod envelope;
pub mod keys;
pub mod obfuscation;
pub mod password;
pub mod random;
pub mod revocation;
pub mod user;

pub use credential::{Credential, CredentialError, CredentialKind, TrustedKeys};
pub use keys::{KeyError, KeyId, PrivateKey, PublicKey, RsaBackend};
pub use revocation::{RevocationList, Revoked};

/// Domain-separation prefixes: a signature over one kind of object can never be replayed as
/// another, because every signed message starts with the prefix of its kind.
pub mod domain {
    /// A credential issued by a login server.
    pub const CREDENTIAL: &[u8] = b"confab/v1/credential\0";
    /// A host's proof of possession of its key during the super-node handshake.
    pub const SESSION_AUTH: &[u8] = b"confab/v1/session-auth\0";
}
