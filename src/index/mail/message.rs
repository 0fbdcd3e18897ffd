//! A stored message as a super node sees it: sealed bytes it cannot open, and the
//! metadata that routing, quotas and expiry need (`docs/chat.md` §2).

use crate::login::username;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// A message's id: random, chosen by the sender, the store's key.
pub type MailId = [u8; 16];

/// Largest sealed message held.
pub const SEALED_LEN_MAX: usize = 2300;
/// How far in the future a message's stored-at time may lie: the stamping super node's
/// clock may run ahead of ours by this much.
pub const CLOCK_SKEW_MS_MAX: u64 = 5 * 60 * 1000;
/// Largest postcard encoding of a [`Mail`]: the id, two usernames with their length
/// bytes, two times and the sealed bytes with their length prefix.
pub const MAIL_WIRE_LEN_MAX: usize =
    16 + 2 * (1 + username::USERNAME_LEN_MAX) + 2 * 10 + varint_len(SEALED_LEN_MAX as u64) + SEALED_LEN_MAX;

/// One stored message.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Mail {
    /// Random, chosen by the sender.
    pub id: MailId,
    /// The recipient's canonical username (the slot's key).
    pub to: String,
    /// The sender's canonical username (for the per-sender quota).
    pub from: String,
    /// When the sender's super node accepted it (unix ms); it sets the order in which
    /// the recipient is handed its messages, the same at every replica.
    pub stored_at_ms: u64,
    /// When it is dropped unread (unix ms); a replica shortens it to its own retention.
    pub expires_at_ms: u64,
    /// The sealed message, opaque here.
    pub sealed: Vec<u8>,
}

/// Why a message is malformed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum MailError {
    /// No sealed bytes.
    #[error("empty message")]
    Empty,
    /// More sealed bytes than [`SEALED_LEN_MAX`].
    #[error("message of {0} bytes, at most {SEALED_LEN_MAX}")]
    TooLarge(usize),
    /// A recipient or sender that is not a canonical username.
    #[error("not a canonical username: {0:?}")]
    User(String),
    /// Stored later than our clock allows, or expiring before it was stored.
    #[error("stored at {stored_at_ms} ms, expires at {expires_at_ms} ms")]
    Times {
        /// The stored-at time.
        stored_at_ms: u64,
        /// The expiry time.
        expires_at_ms: u64,
    },
}

impl Mail {
    /// Checks what a replica can check without opening the message, at `now_ms`.
    pub fn check(&self, now_ms: u64) -> Result<(), MailError> {
        if self.sealed.is_empty() {
            return Err(MailError::Empty);
        }
        if self.sealed.len() > SEALED_LEN_MAX {
            return Err(MailError::TooLarge(self.sealed.len()));
        }
        for user in [&self.to, &self.from] {
            if username::canonical(user).as_ref() != Ok(user) {
                return Err(MailError::User(user.clone()));
            }
        }
        if self.stored_at_ms > now_ms.saturating_add(CLOCK_SKEW_MS_MAX) || self.expires_at_ms <= self.stored_at_ms {
            return Err(MailError::Times { stored_at_ms: self.stored_at_ms, expires_at_ms: self.expires_at_ms });
        }
        Ok(())
    }

    /// When a replica keeping messages `retention_ms` drops it: never later than that.
    pub fn expiry_ms(&self, retention_ms: u64) -> u64 {
        self.expires_at_ms.min(self.stored_at_ms.saturating_add(retention_ms))
    }

    /// Its postcard encoding's length, without encoding it.
    pub fn wire_len(&self) -> usize {
        16 + varint_len(self.to.len() as u64)
            + self.to.len()
            + varint_len(self.from.len() as u64)
            + self.from.len()
            + varint_len(self.stored_at_ms)
            + varint_len(self.expires_at_ms)
            + varint_len(self.sealed.len() as u64)
            + self.sealed.len()
    }

    /// A digest of everything but the id: two messages under one id (a forgery, or
    /// a collision) are told apart by it, and every replica keeps the same one.
    pub fn content_digest(&self) -> [u8; 32] {
        let mut h = Sha256::new();
        h.update(b"confab/v1/mail-content\0");
        for s in [&self.to, &self.from] {
            h.update((s.len() as u32).to_be_bytes());
            h.update(s.as_bytes());
        }
        h.update(self.stored_at_ms.to_be_bytes());
        h.update(self.expires_at_ms.to_be_bytes());
        h.update(Sha256::digest(&self.sealed));
        h.finalize().into()
    }
}

/// Bytes postcard uses for `n` as a varint.
pub(crate) const fn varint_len(n: u64) -> usize {
    let bits = 64 - (n | 1).leading_zeros() as usize;
    bits.div_ceil(7)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use proptest::prelude::*;

    /// A well-formed message for tests.
    pub(crate) fn mail(id: u8, to: &str, from: &str, stored_at_ms: u64, len: usize) -> Mail {
        let mut m = Mail {
            id: [0; 16],
            to: to.into(),
            from: from.into(),
            stored_at_ms,
            expires_at_ms: stored_at_ms + 30 * 24 * 3600 * 1000,
            sealed: vec![id; len],
        };
        m.id[0] = id;
        m.id[15] = 0xA5;
        m
    }

    #[test]
    fn checks() {
        let now = 1_800_000_000_000;
        let ok = mail(1, "bob", "alice", now, 100);
        assert_eq!(ok.check(now), Ok(()));
        assert_eq!(Mail { sealed: vec![], ..ok.clone() }.check(now), Err(MailError::Empty));
        assert_eq!(Mail { sealed: vec![0; 2301], ..ok.clone() }.check(now), Err(MailError::TooLarge(2301)));
        assert!(Mail { sealed: vec![0; 2300], ..ok.clone() }.check(now).is_ok());
        assert_eq!(Mail { to: "Bob".into(), ..ok.clone() }.check(now), Err(MailError::User("Bob".into())));
        assert!(Mail { from: "x".into(), ..ok.clone() }.check(now).is_err());
        let ahead = Mail { stored_at_ms: now + CLOCK_SKEW_MS_MAX + 1, ..ok.clone() };
        assert!(matches!(ahead.check(now), Err(MailError::Times { .. })));
        assert!(Mail { stored_at_ms: now + CLOCK_SKEW_MS_MAX, ..ok.clone() }.check(now).is_ok());
        assert!(Mail { expires_at_ms: now, ..ok.clone() }.check(now).is_err());
        assert_eq!(ok.expiry_ms(1000), now + 1000, "a replica keeps it no longer than its retention");
        assert_eq!(Mail { expires_at_ms: now + 10, ..ok }.expiry_ms(1000), now + 10);
    }

    #[test]
    fn largest_message_fits_its_bound() {
        let m = Mail {
            id: [0xff; 16],
            to: "a".repeat(32),
            from: "b".repeat(32),
            stored_at_ms: u64::MAX,
            expires_at_ms: u64::MAX,
            sealed: vec![0xff; SEALED_LEN_MAX],
        };
        assert_eq!(postcard::to_allocvec(&m).unwrap().len(), MAIL_WIRE_LEN_MAX);
        assert_eq!(m.wire_len(), MAIL_WIRE_LEN_MAX);
    }

    proptest! {
        #[test]
        fn wire_len_is_the_encoding_length(to in "[a-z]{3,32}", from in "[a-z]{3,32}", s in any::<u64>(),
                                           e in any::<u64>(), len in 0usize..2400) {
            let m = Mail { id: [7; 16], to, from, stored_at_ms: s, expires_at_ms: e, sealed: vec![1; len] };
            prop_assert_eq!(m.wire_len(), postcard::to_allocvec(&m).unwrap().len());
        }
    }
}
