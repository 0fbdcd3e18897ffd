//! Which keys a lookup for a user's keys gave: those of the user's verified index entry,
//! or else those of the login server's signed directory record, which has them for any
//! registered user (one who never logged in, or whose entries expired, too).

use super::super::pending::{Answer, OpResult};
use crate::crypto::TrustedKeys;
use crate::crypto::user::UserPublicKeys;
use crate::index::Entry;
use crate::wire::message::SeenRecord;

/// Where a lookup's keys came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum KeysFrom {
    /// The user's entry, signed by their host under a login-signed credential.
    Entry(UserPublicKeys),
    /// The login server's directory record, signed by a trusted login key.
    Directory(UserPublicKeys),
}

/// How old a directory record's keys may be (it is signed when asked for), and how far
/// ahead of our clock its time may be.
pub(super) const RECORD_AGE_MAX_SECS: u64 = 600;
/// Clocks differ: a record signed a little "in the future" is still believed.
const RECORD_SKEW_SECS: u64 = 120;

/// Whether a record signed at `issued_at` (unix seconds) is of now.
fn fresh(issued_at: u64, now_ms: u64) -> bool {
    let now = now_ms / 1000;
    issued_at <= now.saturating_add(RECORD_SKEW_SECS) && now.saturating_sub(issued_at) <= RECORD_AGE_MAX_SECS
}

/// The keys of `user` (canonical) in a lookup's answer at `now_ms`, believed only from an
/// entry or a record a trusted login key vouches for, about `user` and no one else: the
/// super node that passed them on is trusted with neither.
pub(super) fn keys_found(user: &str, r: &OpResult, trusted: &TrustedKeys, now_ms: u64) -> Option<KeysFrom> {
    let Ok(Answer::Found(f)) = r else { return None };
    let from_entry = (!f.entry.is_empty())
        .then(|| Entry::decode(&f.entry).ok())
        .flatten()
        .filter(|e| e.key() == user && e.verify(trusted, now_ms).is_ok())
        .and_then(|e| e.user_keys);
    if let Some(k) = from_entry {
        return Some(KeysFrom::Entry(k));
    }
    if f.directory.is_empty() {
        return None;
    }
    match SeenRecord::decode_verified(&f.directory, user, trusted) {
        Ok(rec) if !fresh(rec.issued_at, now_ms) => {
            // A signed record of another time: a super node replaying keys the user has
            // since replaced.
            tracing::debug!(user, issued_at = rec.issued_at, "a directory record too old or too new was not believed");
            None
        }
        Ok(rec) => rec.user_keys.map(KeysFrom::Directory),
        Err(e) => {
            tracing::debug!(user, error = %e, "a directory record with keys was not believed");
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::super::pending::RequestError;
    use super::*;
    use crate::crypto::PrivateKey;
    use crate::crypto::keys::tests::test_key;
    use crate::crypto::password::ListKey;
    use crate::crypto::user::UserKeys;
    use crate::wire::message::FindReply;

    fn carol() -> UserPublicKeys {
        UserKeys::derive(&ListKey([7; 32])).public()
    }

    fn record(user: &str, signer: &PrivateKey, keys: Option<UserPublicKeys>) -> SeenRecord {
        let mut rec = SeenRecord {
            user: user.into(),
            found: false,
            last_seen: 0,
            supernode: String::new(),
            issued_at: 1_800_000_000,
            key_id: signer.public().id().0,
            signature: Vec::new(),
            user_keys: keys,
        };
        rec.signature = signer.sign_pss(&rec.signed_message());
        rec
    }

    fn answer(directory: Vec<u8>) -> OpResult {
        Ok(Answer::Found(FindReply { req: 1, entry: Vec::new(), asked: 3, stage: "directory".into(), directory }))
    }

    fn trusted() -> TrustedKeys {
        TrustedKeys::new(vec![test_key(1).public().clone()])
    }

    const NOW_MS: u64 = 1_800_000_000_000;

    #[test]
    fn a_signed_record_for_the_user_gives_their_keys() {
        let r = answer(record("carol", &test_key(1), Some(carol())).encode());
        assert_eq!(keys_found("carol", &r, &trusted(), NOW_MS), Some(KeysFrom::Directory(carol())));
        let none = answer(record("carol", &test_key(1), None).encode());
        assert_eq!(keys_found("carol", &none, &trusted(), NOW_MS), None, "a record without keys gives none");
        assert_eq!(keys_found("carol", &answer(Vec::new()), &trusted(), NOW_MS), None);
    }

    #[test]
    fn a_forged_or_altered_record_or_one_for_another_user_is_refused() {
        let forged = answer(record("carol", &test_key(2), Some(carol())).encode());
        assert_eq!(keys_found("carol", &forged, &trusted(), NOW_MS), None, "signed by a key we do not trust");
        let mut swapped = record("carol", &test_key(1), Some(carol()));
        swapped.user_keys = Some(UserKeys::derive(&ListKey([9; 32])).public());
        assert_eq!(keys_found("carol", &answer(swapped.encode()), &trusted(), NOW_MS), None, "keys swapped in");
        let mut unsigned = record("carol", &test_key(1), Some(carol()));
        unsigned.signature = Vec::new();
        assert_eq!(keys_found("carol", &answer(unsigned.encode()), &trusted(), NOW_MS), None, "unsigned");
        let mallory = answer(record("mallory", &test_key(1), Some(carol())).encode());
        assert_eq!(keys_found("carol", &mallory, &trusted(), NOW_MS), None, "another user's record");
        let garbage = answer(vec![0xff; 40]);
        assert_eq!(keys_found("carol", &garbage, &trusted(), NOW_MS), None);
        assert_eq!(keys_found("carol", &Err(RequestError::LinkDown), &trusted(), NOW_MS), None);
    }

    #[test]
    fn a_record_of_another_time_is_refused_whoever_signed_it() {
        let at = |issued_at: u64| {
            let mut rec = record("carol", &test_key(1), Some(carol()));
            rec.issued_at = issued_at;
            rec.signature = test_key(1).sign_pss(&rec.signed_message());
            answer(rec.encode())
        };
        let now = NOW_MS / 1000;
        let keys = Some(KeysFrom::Directory(carol()));
        assert_eq!(keys_found("carol", &at(now - RECORD_AGE_MAX_SECS), &trusted(), NOW_MS), keys);
        assert_eq!(keys_found("carol", &at(now - RECORD_AGE_MAX_SECS - 1), &trusted(), NOW_MS), None, "replayed");
        assert_eq!(keys_found("carol", &at(now + 60), &trusted(), NOW_MS), keys, "a clock a minute ahead");
        assert_eq!(keys_found("carol", &at(now + 3600), &trusted(), NOW_MS), None, "from the future");
    }
}
