//! Leg B's token, sealed by the super node to the callee's key: the caller who asked for
//! the relay session carries it to the callee but cannot use it, so one account cannot
//! hold both legs of a session (and aim its far leg wherever it likes).
//!
//! The sealed form is RSA-OAEP (SHA-256) over `DOMAIN ‖ session ‖ token` under the public
//! key of a host credential the super node verified. Its plaintext is 38 bytes, so it never
//! opens as another OAEP secret sealed to a host (an invite's wrapped secret is exactly 32,
//! a login envelope's 64), and an invite's secret never opens as a leg.
//!
//! The callee cannot tell a leg its caller's super node sealed from one a caller sealed
//! itself (anyone can encrypt to the callee's public key): it connects to a leg's relay
//! only once the user has taken the call.

use super::packet::TOKEN_LEN;
use crate::crypto::{PrivateKey, PublicKey};

/// Domain prefix of the sealed plaintext.
const DOMAIN: &[u8; 18] = b"confab/relay-leg-b";
/// Plaintext length: domain, session id, token.
const PLAIN_LEN: usize = DOMAIN.len() + 4 + TOKEN_LEN;
/// Largest sealed leg (OAEP under a 4096-bit key).
pub const SEALED_LEN_MAX: usize = crate::crypto::keys::RSA_BITS_MAX / 8;

/// Why a sealed leg did not open.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum HandoffError {
    /// Not sealed to our key, or not a sealed leg at all.
    #[error("the relay leg does not open with our key")]
    NotOurs,
    /// Sealed for another relay session than the one it came with.
    #[error("the relay leg is for another session")]
    WrongSession,
}

/// Seals leg B's `token` of relay `session` to `callee` (a verified host credential's key).
pub fn seal(callee: &PublicKey, session: u32, token: &[u8; TOKEN_LEN]) -> Vec<u8> {
    let mut plain = zeroize::Zeroizing::new([0u8; PLAIN_LEN]);
    plain[..DOMAIN.len()].copy_from_slice(DOMAIN);
    plain[DOMAIN.len()..DOMAIN.len() + 4].copy_from_slice(&session.to_be_bytes());
    plain[DOMAIN.len() + 4..].copy_from_slice(token);
    callee.encrypt_oaep(plain.as_slice())
}

/// Opens a leg sealed to `key`, for relay `session`; returns leg B's token.
pub fn open(key: &PrivateKey, session: u32, sealed: &[u8]) -> Result<[u8; TOKEN_LEN], HandoffError> {
    if sealed.len() > SEALED_LEN_MAX {
        return Err(HandoffError::NotOurs);
    }
    let plain = zeroize::Zeroizing::new(key.decrypt_oaep(sealed).map_err(|_| HandoffError::NotOurs)?);
    if plain.len() != PLAIN_LEN || &plain[..DOMAIN.len()] != DOMAIN {
        return Err(HandoffError::NotOurs);
    }
    if plain[DOMAIN.len()..DOMAIN.len() + 4] != session.to_be_bytes() {
        return Err(HandoffError::WrongSession);
    }
    let mut token = [0u8; TOKEN_LEN];
    token.copy_from_slice(&plain[DOMAIN.len() + 4..]);
    Ok(token)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crypto::keys::tests::test_key;

    #[test]
    fn only_the_callee_opens_it_and_only_for_its_session() {
        let (callee, caller) = (test_key(2), test_key(1));
        let sealed = seal(callee.public(), 7, &[9; TOKEN_LEN]);
        assert!(sealed.len() <= SEALED_LEN_MAX);
        assert_eq!(open(&callee, 7, &sealed), Ok([9; TOKEN_LEN]));
        assert_eq!(open(&caller, 7, &sealed), Err(HandoffError::NotOurs), "the caller cannot use leg B");
        assert_eq!(open(&callee, 8, &sealed), Err(HandoffError::WrongSession));
        let mut bent = sealed.clone();
        bent[5] ^= 1;
        assert_eq!(open(&callee, 7, &bent), Err(HandoffError::NotOurs));
        // Another OAEP secret under the same key (an invite's wrapped key) is not a leg,
        // and a leg is not one: the lengths differ.
        let wrapped = callee.public().encrypt_oaep(&[3; 32]);
        assert_eq!(open(&callee, 7, &wrapped), Err(HandoffError::NotOurs));
        assert_eq!(PLAIN_LEN, 38);
        assert_ne!(callee.decrypt_oaep(&sealed).unwrap().len(), 32);
        assert_eq!(open(&callee, 7, &[]), Err(HandoffError::NotOurs));
        assert_eq!(open(&callee, 7, &vec![0; SEALED_LEN_MAX + 1]), Err(HandoffError::NotOurs));
    }
}
