//! A contact as the owner's devices store it at the login server: the name sealed with
//! AES-256-GCM under the owner's list key (derived from the password, never sent), bound
//! to the owner's name so a record cannot be moved to another list.

use crate::crypto::aead::SealKey;
use crate::crypto::password::ListKey;
use serde::{Deserialize, Serialize};

/// Largest sealed record accepted (a 32-character name, the time, nonce and tag fit well).
pub const SEALED_LEN_MAX: usize = 128;

/// What a sealed record holds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Contact {
    /// The contact's username, as the owner typed it.
    pub user: String,
    /// Unix seconds the owner added it.
    pub added_at: u64,
}

fn aad(owner: &str) -> Vec<u8> {
    let mut a = b"confab/v1/buddy-record\0".to_vec();
    a.extend_from_slice(owner.to_ascii_lowercase().as_bytes());
    a
}

fn key(list: &ListKey) -> SealKey {
    SealKey::from_bytes(list.0)
}

/// Seals `contact` for `owner`'s list under a fresh random nonce: nonce ‖ ciphertext ‖ tag.
pub fn seal(list: &ListKey, owner: &str, contact: &Contact) -> Vec<u8> {
    seal_with_nonce(list, owner, contact, crate::crypto::random::bytes())
}

/// [`seal`] with the nonce given; it must never repeat under one list key.
pub fn seal_with_nonce(list: &ListKey, owner: &str, contact: &Contact, nonce: [u8; 12]) -> Vec<u8> {
    let plain = postcard::to_allocvec(contact).expect("a contact always encodes");
    let mut out = nonce.to_vec();
    out.extend(key(list).seal(&nonce, &aad(owner), &plain));
    out
}

/// Opens a record sealed by [`seal`]; None if it was not sealed for this owner and key.
pub fn open(list: &ListKey, owner: &str, sealed: &[u8]) -> Option<Contact> {
    if sealed.len() < 12 || sealed.len() > SEALED_LEN_MAX {
        return None;
    }
    let nonce: [u8; 12] = sealed[..12].try_into().ok()?;
    let plain = key(list).open(&nonce, &aad(owner), &sealed[12..]).ok()?;
    postcard::from_bytes(&plain).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_owner_with_the_password_opens_it() {
        let k = ListKey([1; 32]);
        let c = Contact { user: "Carol".into(), added_at: 5 };
        let s = seal(&k, "alice", &c);
        assert!(s.len() <= SEALED_LEN_MAX);
        assert_eq!(open(&k, "ALICE", &s), Some(c));
        assert_eq!(open(&k, "bob", &s), None);
        assert_eq!(open(&ListKey([2; 32]), "alice", &s), None);
        let long = Contact { user: "x".repeat(32), added_at: u64::MAX };
        assert!(seal(&k, "alice", &long).len() <= SEALED_LEN_MAX);
        assert_eq!(open(&k, "alice", &[0; 11]), None);
    }

    #[test]
    fn a_given_nonce_gives_the_same_record() {
        let k = ListKey([1; 32]);
        let c = Contact { user: "Carol".into(), added_at: 5 };
        let a = seal_with_nonce(&k, "alice", &c, [3; 12]);
        assert_eq!(a, seal_with_nonce(&k, "alice", &c, [3; 12]));
        assert_ne!(a, seal_with_nonce(&k, "alice", &c, [4; 12]));
        assert_eq!(a[..12], [3; 12]);
        assert_eq!(open(&k, "alice", &a), Some(c));
    }
}
