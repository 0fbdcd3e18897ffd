//! The shared secret a host derives from a password, and the verifier the server stores.
//!
//! stretched      = argon2id(password, salt = SHA-256("confab/v1/salt\0" ‖ lowercase username)[..16]), 64 bytes
//! shared secret  = stretched[..32]      (sent to the login server inside the RSA envelope)
//! list key       = stretched[32..]      (never leaves the device: opens the buddy list)
//! verifier       = SHA-256(shared secret)
//!
//! The server never sees the password and stores only the verifier, so a stolen account
//! database does not let anyone log in: the attacker would have to invert SHA-256 or run
//! the slow argon2id over password guesses, one username at a time. One stretch gives
//! both keys, and the server only ever sees the first half, so it cannot open the
//! buddy list it stores (argon2's output halves are independent).

use argon2::{Algorithm, Argon2, Params, Version};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

/// Length of the shared secret in bytes.
pub const SECRET_LEN: usize = 32;

/// argon2id cost: 19 MiB, 2 passes, 1 lane (the OWASP baseline for argon2id).
const MEMORY_KIB: u32 = 19 * 1024;
const PASSES: u32 = 2;

/// What the host proves it knows at login.
#[derive(Clone, PartialEq, Eq)]
pub struct SharedSecret(pub [u8; SECRET_LEN]);

impl std::fmt::Debug for SharedSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SharedSecret(..)")
    }
}

/// What the login server stores: SHA-256 of the shared secret.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct Verifier(pub [u8; 32]);

/// The per-user salt, derived from the case-folded username so every device computes it.
pub fn salt(username: &str) -> [u8; 16] {
    let mut h = Sha256::new();
    h.update(b"confab/v1/salt\0");
    h.update(username.to_ascii_lowercase().as_bytes());
    let d = h.finalize();
    let mut s = [0u8; 16];
    s.copy_from_slice(&d[..16]);
    s
}

/// The key that seals the buddy list's contact records; only the password gives it.
#[derive(Clone, PartialEq, Eq)]
pub struct ListKey(pub [u8; SECRET_LEN]);

impl std::fmt::Debug for ListKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ListKey(..)")
    }
}

/// Both keys a password gives.
#[derive(Debug, Clone)]
pub struct PasswordKeys {
    /// What the login server checks.
    pub shared: SharedSecret,
    /// What opens the buddy list.
    pub list: ListKey,
}

/// Derives both keys from a password (slow by design: tens of milliseconds).
pub fn derive(username: &str, password: &str) -> PasswordKeys {
    let params = Params::new(MEMORY_KIB, PASSES, 1, Some(2 * SECRET_LEN)).expect("valid argon2 params");
    let argon = Argon2::new(Algorithm::Argon2id, Version::V0x13, params);
    let mut out = [0u8; 2 * SECRET_LEN];
    argon
        .hash_password_into(password.as_bytes(), &salt(username), &mut out)
        .expect("argon2 with fixed, valid parameters");
    let mut shared = [0u8; SECRET_LEN];
    let mut list = [0u8; SECRET_LEN];
    shared.copy_from_slice(&out[..SECRET_LEN]);
    list.copy_from_slice(&out[SECRET_LEN..]);
    zeroize::Zeroize::zeroize(&mut out);
    let keys = PasswordKeys { shared: SharedSecret(shared), list: ListKey(list) };
    zeroize::Zeroize::zeroize(&mut shared);
    zeroize::Zeroize::zeroize(&mut list);
    keys
}

/// Derives the shared secret alone (see [`derive`]).
pub fn shared_secret(username: &str, password: &str) -> SharedSecret {
    derive(username, password).shared
}

// Secrets are wiped when dropped, so a freed page or a core dump does not keep them.
impl Drop for SharedSecret {
    fn drop(&mut self) {
        zeroize::Zeroize::zeroize(&mut self.0);
    }
}

impl Drop for ListKey {
    fn drop(&mut self) {
        zeroize::Zeroize::zeroize(&mut self.0);
    }
}

impl SharedSecret {
    /// The verifier to store for this secret.
    pub fn verifier(&self) -> Verifier {
        Verifier(Sha256::digest(self.0).into())
    }
}

impl Verifier {
    /// Constant-time check of a presented secret against this verifier.
    pub fn matches(&self, presented: &SharedSecret) -> bool {
        self.0.ct_eq(&presented.verifier().0).into()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn salt_is_case_insensitive_and_per_user() {
        assert_eq!(salt("Alice"), salt("alice"));
        assert_ne!(salt("alice"), salt("bob"));
    }

    #[test]
    fn verifier_matches_only_the_right_secret() {
        let s = shared_secret("alice", "correct horse");
        let v = s.verifier();
        assert!(v.matches(&s));
        assert!(!v.matches(&shared_secret("alice", "wrong horse")));
        assert_eq!(s, shared_secret("ALICE", "correct horse"));
    }

    #[test]
    fn list_key_is_not_the_shared_secret() {
        let k = derive("alice", "correct horse");
        assert_ne!(k.shared.0, k.list.0);
        assert_eq!(derive("Alice", "correct horse").list, k.list);
        assert_ne!(derive("alice", "wrong horse").list, k.list);
    }
}
