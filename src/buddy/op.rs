//! What a host asks of the login server about its buddy list, and the answers.
//!
//! A request travels in the login server's RSA envelope (like login); inside, a
//! [`SignedOp`] carries the host's credential and an RSA-PSS signature over the operation
//! and the envelope's wrapped key, so the operation is bound to this one envelope (whose
//! nonce the server's replay cache remembers). Bodies are postcard; decoding is total.

use crate::crypto::credential::{Credential, CredentialKind, TrustedKeys};
use crate::crypto::{PrivateKey, credential::CREDENTIAL_LEN_MAX};
use serde::{Deserialize, Serialize};

/// Domain prefix of the signature over a buddy operation.
pub const DOMAIN_BUDDY_OP: &[u8] = b"confab/v1/buddy-op\0";
/// Most contacts in one list.
pub const CONTACTS_MAX: usize = 1000;
/// Rows in one page of [`BuddyAnswer::Page`] (each ≤ ~150 bytes: a page stays in one frame).
pub const PAGE_ROWS: usize = 16;
/// Longest authorization message, in characters.
pub const MESSAGE_CHARS_MAX: usize = 200;
/// Pending authorization requests kept per recipient (the oldest go first).
pub const REQUESTS_PENDING_MAX: usize = 100;
/// Largest encoded [`SignedOp`].
pub const SIGNED_OP_LEN_MAX: usize = 2900;

/// How the owner stands with a contact.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Relation {
    /// The owner asked for authorization; no answer yet.
    Requested,
    /// Both sides agreed: they see each other's presence (invisible included).
    Authorized,
    /// The contact declined the owner's request.
    Declined,
    /// The owner blocked the contact: their requests are dropped.
    Blocked,
}

impl Relation {
    /// The code stored in the database.
    pub fn code(self) -> i64 {
        match self {
            Self::Requested => 1,
            Self::Authorized => 2,
            Self::Declined => 3,
            Self::Blocked => 4,
        }
    }

    /// The relation for a stored code.
    pub fn from_code(c: i64) -> Option<Self> {
        [Self::Requested, Self::Authorized, Self::Declined, Self::Blocked].into_iter().find(|r| r.code() == c)
    }

    /// A short label for the CLI and JSON.
    pub fn label(self) -> &'static str {
        match self {
            Self::Requested => "requested",
            Self::Authorized => "authorized",
            Self::Declined => "declined",
            Self::Blocked => "blocked",
        }
    }
}

/// One operation on the owner's list.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum BuddyOp {
    /// One page of the owner's contacts: those with a tag above `after`, in tag order.
    List {
        /// The last tag of the previous page (None: from the start).
        after: Option<u32>,
    },
    /// Authorization requests waiting for the owner's answer.
    Requests,
    /// Add `contact`, asking for authorization (or accepting theirs, if they asked first).
    Add {
        /// The contact's username.
        contact: String,
        /// The contact's record, sealed under the owner's list key.
        sealed: Vec<u8>,
        /// A note for the contact ("Hi, it's Jaan from the conference").
        message: String,
    },
    /// Answer `from`'s pending request.
    Answer {
        /// Who asked.
        from: String,
        /// Accept (both see each other) or decline.
        accept: bool,
        /// When accepting: their record for the owner's list, sealed.
        sealed: Vec<u8>,
    },
    /// Take `contact` off the list (withdrawing a pending request to them).
    Remove {
        /// The contact's username.
        contact: String,
    },
    /// Block `contact`: their requests are dropped from now on.
    Block {
        /// The contact's username.
        contact: String,
        /// Their record, sealed (a blocked user stays on the list, marked).
        sealed: Vec<u8>,
    },
}

impl BuddyOp {
    /// A short label for metrics.
    pub fn label(&self) -> &'static str {
        match self {
            Self::List { .. } => "list",
            Self::Requests => "requests",
            Self::Add { .. } => "add",
            Self::Answer { .. } => "answer",
            Self::Remove { .. } => "remove",
            Self::Block { .. } => "block",
        }
    }
}

/// One stored contact.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Row {
    /// Its 4-byte id.
    pub tag: u32,
    /// How the owner stands with it.
    pub relation: Relation,
    /// The sealed record (only the owner's password opens it).
    pub sealed: Vec<u8>,
    /// Unix seconds of the last change.
    pub changed_at: u64,
}

/// A pending authorization request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Incoming {
    /// Who asks.
    pub from: String,
    /// Their note.
    pub message: String,
    /// Unix seconds it was made.
    pub at: u64,
}

/// The login server's answer to a [`BuddyOp`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum BuddyAnswer {
    /// A page of contacts.
    Page {
        /// The contacts.
        rows: Vec<Row>,
        /// Whether another page follows.
        more: bool,
    },
    /// Pending requests to the owner, oldest first.
    Requests {
        /// The requests.
        items: Vec<Incoming>,
    },
    /// The owner's relation to the contact after an Add or Answer.
    Relation(Relation),
    /// Done (Remove, Block).
    Done,
}

impl BuddyAnswer {
    /// Encodes.
    pub fn encode(&self) -> Vec<u8> {
        postcard::to_allocvec(self).expect("an answer always encodes")
    }

    /// Decodes (total).
    pub fn decode(b: &[u8]) -> Option<Self> {
        if b.len() > crate::wire::frame::PAYLOAD_LEN_MAX {
            return None;
        }
        postcard::from_bytes(b).ok()
    }
}

/// An operation, signed by the host that makes it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SignedOp {
    /// The host's credential (issued by a login server).
    pub credential: Vec<u8>,
    /// Unix seconds at the host (checked against the replay window).
    pub timestamp: u64,
    /// The operation.
    pub op: BuddyOp,
    /// RSA-PSS over [`SignedOp::message`].
    pub signature: Vec<u8>,
}

/// Why a signed operation was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OpError {
    /// The bytes are not a signed operation.
    #[error("malformed buddy operation")]
    Malformed,
    /// The credential is not from a trusted login server, or has expired.
    #[error("credential: {0}")]
    Credential(#[from] crate::crypto::credential::CredentialError),
    /// The signature does not verify with the credential's key.
    #[error("the operation's signature does not verify")]
    BadSignature,
}

impl SignedOp {
    /// What the signature covers: the domain, the envelope's wrapped key, the time, the op.
    pub fn message(wrapped: &[u8], timestamp: u64, op: &BuddyOp) -> Vec<u8> {
        let mut m = DOMAIN_BUDDY_OP.to_vec();
        m.extend_from_slice(&(wrapped.len() as u32).to_be_bytes());
        m.extend_from_slice(wrapped);
        m.extend_from_slice(&timestamp.to_be_bytes());
        m.extend(postcard::to_allocvec(op).expect("an op always encodes"));
        m
    }

    /// Signs `op` for the envelope whose wrapped key is `wrapped`; returns the encoding.
    pub fn sign(credential: &Credential, key: &PrivateKey, wrapped: &[u8], timestamp: u64, op: BuddyOp) -> Vec<u8> {
        let signature = key.sign_pss(&Self::message(wrapped, timestamp, &op));
        let s = Self { credential: credential.encode(), timestamp, op, signature };
        postcard::to_allocvec(&s).expect("a signed op always encodes")
    }

    /// Decodes (total).
    pub fn decode(b: &[u8]) -> Result<Self, OpError> {
        if b.len() > SIGNED_OP_LEN_MAX {
            return Err(OpError::Malformed);
        }
        let s: Self = postcard::from_bytes(b).map_err(|_| OpError::Malformed)?;
        if s.credential.len() > CREDENTIAL_LEN_MAX || s.signature.len() > 1024 {
            return Err(OpError::Malformed);
        }
        Ok(s)
    }

    /// Checks the credential (a host's, valid `now`) and the signature; returns the
    /// credential, whose subject owns the list.
    pub fn verify(&self, trusted: &TrustedKeys, wrapped: &[u8], now: u64) -> Result<Credential, OpError> {
        let c = Credential::decode_verified(&self.credential, trusted, CredentialKind::Host, now)?;
        c.public_key
            .verify_pss(&Self::message(wrapped, self.timestamp, &self.op), &self.signature)
            .map_err(|_| OpError::BadSignature)?;
        Ok(c)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn relation_codes_round_trip() {
        for r in [Relation::Requested, Relation::Authorized, Relation::Declined, Relation::Blocked] {
            assert_eq!(Relation::from_code(r.code()), Some(r));
        }
        assert_eq!(Relation::from_code(0), None);
    }

    #[test]
    fn a_full_page_fits_one_frame() {
        let row = Row { tag: u32::MAX, relation: Relation::Authorized, sealed: vec![0; 128], changed_at: u64::MAX };
        let page = BuddyAnswer::Page { rows: vec![row; PAGE_ROWS], more: true };
        assert!(page.encode().len() < crate::wire::frame::PAYLOAD_LEN_MAX - 64);
        let inc = Incoming { from: "x".repeat(32), message: "é".repeat(MESSAGE_CHARS_MAX), at: u64::MAX };
        let reqs = BuddyAnswer::Requests { items: vec![inc; 6] };
        assert_eq!(BuddyAnswer::decode(&reqs.encode()), Some(reqs));
    }

    proptest! {
        #[test]
        fn decoders_are_total(b in proptest::collection::vec(any::<u8>(), 0..3000)) {
            let _ = SignedOp::decode(&b);
            let _ = BuddyAnswer::decode(&b);
        }
    }
}
