//! The 4-byte contact id: HMAC-SHA256(server key, owner ‖ 0 ‖ contact)[..4].
//!
//! The owner is part of the input, so two owners of the same buddy store different ids:
//! the ids do not link lists to each other. The key is the login server's own secret
//! (kept in its database, never sent), so nobody without the server's data can compute
//! an id; someone with the whole database can test guesses, one pair at a time, which is
//! why the contact names themselves are sealed under the owner's password.

use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;

/// The login server's secret for contact ids (kept in its database).
#[derive(Clone)]
pub struct TagKey(pub [u8; 32]);

impl std::fmt::Debug for TagKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TagKey(..)")
    }
}

/// A contact's 4-byte id in one owner's list.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Tag(pub u32);

impl TagKey {
    /// The id of `contact` in `owner`'s list; both are canonical (lower-case) usernames.
    pub fn tag(&self, owner: &str, contact: &str) -> Tag {
        let mut mac = <Hmac<Sha256> as KeyInit>::new_from_slice(&self.0).expect("HMAC takes any key length");
        mac.update(b"confab/v1/buddy-tag\0");
        mac.update(owner.as_bytes());
        mac.update(&[0]);
        mac.update(contact.as_bytes());
        let d = mac.finalize().into_bytes();
        Tag(u32::from_be_bytes([d[0], d[1], d[2], d[3]]))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn two_owners_of_one_buddy_store_different_ids() {
        let k = TagKey([7; 32]);
        assert_ne!(k.tag("alice", "carol"), k.tag("bob", "carol"));
        assert_ne!(k.tag("alice", "carol"), k.tag("carol", "alice"));
        assert_eq!(k.tag("alice", "carol"), k.tag("alice", "carol"));
        // No ambiguity between ("ab", "c") and ("a", "bc").
        assert_ne!(k.tag("ab", "c"), k.tag("a", "bc"));
        assert_ne!(TagKey([8; 32]).tag("alice", "carol"), k.tag("alice", "carol"));
    }
}
