//! Index requests between super nodes (carried on the cluster channel, sealed with the
//! cluster key). Entries travel in their signed encoding; every receiver verifies them.

use super::mail::sync::{MAIL_BUCKETS, SUMMARY_ITEMS_MAX, WANTS_MAX};
use super::mail::{Mail, MailId, MailItem, Stored, Summary, Want};
use super::store::BUCKETS;
use serde::{Deserialize, Serialize};

/// Largest request or reply accepted.
pub const RPC_LEN_MAX: usize = 4096;

/// One request or reply.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum IndexRpc {
    /// Store this entry under `key` (a replica of the key's slot is asked).
    Store {
        /// Request id, echoed in the acknowledgement.
        req: u64,
        /// The index key.
        key: String,
        /// The signed entry.
        entry: Vec<u8>,
    },
    /// The outcome of a Store.
    StoreAck {
        /// The request id.
        req: u64,
        /// Whether the entry is now held (stored, replaced, or already held).
        held: bool,
    },
    /// What do you hold under `key`?
    Fetch {
        /// Request id, echoed in the reply.
        req: u64,
        /// The index key.
        key: String,
    },
    /// The answer to a Fetch.
    FetchReply {
        /// The request id.
        req: u64,
        /// The signed entry, if held.
        entry: Option<Vec<u8>>,
    },
    /// Search: which keys do you hold that start with `prefix` (a token's postings)?
    PrefixQuery {
        /// Request id, echoed in the reply.
        req: u64,
        /// The key prefix (`token:<token>/`).
        prefix: String,
        /// Most keys wanted.
        limit: u16,
    },
    /// The keys held under the prefix (without the prefix: the usernames).
    PrefixReply {
        /// The request id.
        req: u64,
        /// The usernames.
        users: Vec<String>,
    },
    /// Anti-entropy: my digests of slots we both replicate.
    Digests {
        /// (slot, digest of its contents).
        slots: Vec<(u32, [u8; 32])>,
    },
    /// Anti-entropy: these slots differ from mine; send me what you hold in them.
    Differ {
        /// The slots.
        slots: Vec<u32>,
    },
    /// A notice for `to`, a host connected to the receiving super node.
    Deliver {
        /// The canonical username.
        to: String,
        /// The notice, opaque to super nodes.
        body: Vec<u8>,
    },
    /// The offline-message store's requests.
    Mail(MailRpc),
    /// Anti-entropy: this slot's digest differs from mine; here is each bucket's.
    Buckets {
        /// The slot.
        slot: u32,
        /// Exactly [`BUCKETS`] (`index::store`), one per bucket.
        digests: Vec<[u8; 8]>,
    },
    /// Anti-entropy: every key I hold in these buckets of a slot, one page of them.
    Summary {
        /// The slot.
        slot: u32,
        /// Bit b: bucket b is summarised (its keys missing from every page: not held).
        buckets: u64,
        /// Answer with your summary of the same buckets (set on the first page only).
        answer: bool,
        /// (key hash, digest of the key's entries), at most [`SUMMARY_ITEMS_PER_PACKET`].
        items: Vec<([u8; 8], [u8; 8])>,
    },
    /// Anti-entropy: send me what you hold under these keys (by key hash).
    Want {
        /// The slot.
        slot: u32,
        /// Key hashes, at most [`SUMMARY_ITEMS_PER_PACKET`].
        keys: Vec<[u8; 8]>,
    },
}

/// Offline-mail requests between super nodes (`index::mail`), on the same sealed cluster
/// channel, as [`IndexRpc::Mail`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum MailRpc {
    /// Keep this message for its recipient (a replica of the recipient's slot is asked).
    Store {
        /// Request id, echoed in the reply.
        req: u64,
        /// The message.
        mail: Mail,
    },
    /// The outcome of a Store.
    Stored {
        /// The request id.
        req: u64,
        /// New, duplicate, or refused with the reason.
        outcome: Stored,
    },
    /// What has this device of `user` not acknowledged yet (one page)?
    Fetch {
        /// Request id, echoed in the reply.
        req: u64,
        /// The recipient.
        user: String,
        /// The asking device.
        device: [u8; 8],
        /// The last id of the previous page.
        after: Option<MailId>,
    },
    /// The answer to a Fetch: at most [`MAIL_PAGE_BYTES_MAX`] of messages.
    Page {
        /// The request id.
        req: u64,
        /// In the order stored.
        messages: Vec<Mail>,
        /// More are pending.
        more: bool,
    },
    /// This device of `user` has these messages in its history.
    Ack {
        /// The recipient.
        user: String,
        /// The device.
        device: [u8; 8],
        /// At most [`MAIL_ACK_IDS_MAX`] ids.
        ids: Vec<MailId>,
    },
    /// Mail anti-entropy: my digests of the mail of slots we both replicate.
    Digests {
        /// (slot, digest of its mail), at most [`DIGESTS_PER_PACKET`].
        slots: Vec<(u32, [u8; 16])>,
    },
    /// Mail anti-entropy: this slot's mail differs; here are my bucket digests.
    Buckets {
        /// The slot.
        slot: u32,
        /// One per bucket.
        digests: Vec<[u8; 8]>,
        /// The digest of the recipients' known devices.
        devices: [u8; 8],
    },
    /// Mail anti-entropy: what I hold in one bucket (a page).
    Summary {
        /// The slot.
        slot: u32,
        /// The ids and their states.
        summary: Summary,
    },
    /// Mail anti-entropy: send me these.
    Want {
        /// The slot.
        slot: u32,
        /// At most [`WANTS_MAX`].
        wants: Vec<Want>,
    },
    /// Mail anti-entropy or hand-over: items of a slot's mail.
    Items {
        /// The slot.
        slot: u32,
        /// At most [`MAIL_ITEMS_BYTES_MAX`] of encoded items.
        items: Vec<MailItem>,
    },
    /// Mail anti-entropy: our device digests differ; send me your devices (as Items).
    Devices {
        /// The slot.
        slot: u32,
    },
    /// Mail hand-over: a replica of these slots holds mail with exactly these digests, the
    /// ones a former replica sent it, so the former replica may let its copy go.
    Matches {
        /// (slot, digest of its mail), at most [`DIGESTS_PER_PACKET`].
        slots: Vec<(u32, [u8; 16])>,
    },
    /// At which super nodes does `user` have sessions (asked of a replica of the user's
    /// slot, to push a stored message to every device)?
    Sessions {
        /// Request id, echoed in the answer.
        req: u64,
        /// The recipient.
        user: String,
    },
    /// The answer to Sessions: at most [`crate::index::store::SESSIONS_MAX`] + 1 names.
    At {
        /// The request id.
        req: u64,
        /// The super nodes' names.
        supernodes: Vec<String>,
    },
}

/// Largest encoded mail request or reply: one frame's payload.
pub const MAIL_RPC_LEN_MAX: usize = crate::wire::frame::PAYLOAD_LEN_MAX;
/// Bytes of encoded messages in one Page.
pub const MAIL_PAGE_BYTES_MAX: usize = MAIL_RPC_LEN_MAX - 32;
/// Bytes of encoded items in one Items.
pub const MAIL_ITEMS_BYTES_MAX: usize = MAIL_RPC_LEN_MAX - 16;
/// Ids in one Ack.
pub const MAIL_ACK_IDS_MAX: usize = 128;

/// Digests per anti-entropy packet (keeps a packet in one datagram).
pub const DIGESTS_PER_PACKET: usize = 32;
/// Keys in one anti-entropy Summary or Want (16 bytes each: within [`RPC_LEN_MAX`]).
pub const SUMMARY_ITEMS_PER_PACKET: usize = 200;

/// Why a request was not decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("malformed index request: {0}")]
pub struct RpcError(String);

impl IndexRpc {
    /// The request's kind, a short label (logs, metrics, the simulator's breakdown).
    pub fn label(&self) -> &'static str {
        match self {
            IndexRpc::Store { .. } => "store",
            IndexRpc::StoreAck { .. } => "store_ack",
            IndexRpc::Fetch { .. } => "fetch",
            IndexRpc::FetchReply { .. } => "fetch_reply",
            IndexRpc::PrefixQuery { .. } => "prefix_query",
            IndexRpc::PrefixReply { .. } => "prefix_reply",
            IndexRpc::Digests { .. } => "digests",
            IndexRpc::Differ { .. } => "differ",
            IndexRpc::Deliver { .. } => "deliver",
            IndexRpc::Mail(_) => "mail",
            IndexRpc::Buckets { .. } => "buckets",
            IndexRpc::Summary { .. } => "summary",
            IndexRpc::Want { .. } => "want",
        }
    }

    /// Encodes (postcard).
    pub fn encode(&self) -> Vec<u8> {
        postcard::to_allocvec(self).expect("index requests serialise")
    }

    /// The length [`IndexRpc::encode`] gives, without encoding (the simulator counts the
    /// bytes of every message it carries).
    pub fn encoded_len(&self) -> usize {
        postcard::serialize_with_flavor(self, postcard::ser_flavors::Size::default()).expect("index requests serialise")
    }

    /// Decodes; total (postcard checks every length against the input), and a mail
    /// request's lists are held to their bounds.
    pub fn decode(b: &[u8]) -> Result<Self, RpcError> {
        if b.len() > RPC_LEN_MAX {
            return Err(RpcError(format!("{} bytes", b.len())));
        }
        let r: Self = postcard::from_bytes(b).map_err(|e| RpcError(e.to_string()))?;
        let (what, n, ok) = match &r {
            IndexRpc::Mail(m) => {
                m.check_bounds()?;
                return Ok(r);
            }
            IndexRpc::Buckets { digests, .. } => ("bucket digests", digests.len(), digests.len() == BUCKETS),
            IndexRpc::Summary { items, .. } => ("summary items", items.len(), items.len() <= SUMMARY_ITEMS_PER_PACKET),
            IndexRpc::Want { keys, .. } => ("wanted keys", keys.len(), keys.len() <= SUMMARY_ITEMS_PER_PACKET),
            _ => return Ok(r),
        };
        if !ok {
            return Err(RpcError(format!("{n} {what}")));
        }
        Ok(r)
    }
}

impl MailRpc {
    /// Encodes (postcard).
    pub fn encode(&self) -> Vec<u8> {
        postcard::to_allocvec(self).expect("mail requests serialise")
    }

    /// Decodes; total, and refuses lists longer than their bounds.
    pub fn decode(b: &[u8]) -> Result<Self, RpcError> {
        if b.len() > MAIL_RPC_LEN_MAX {
            return Err(RpcError(format!("{} bytes", b.len())));
        }
        let m: Self = postcard::from_bytes(b).map_err(|e| RpcError(e.to_string()))?;
        m.check_bounds()?;
        Ok(m)
    }

    /// Refuses lists longer than their bounds.
    fn check_bounds(&self) -> Result<(), RpcError> {
        let (what, n, max) = match self {
            MailRpc::Ack { ids, .. } => ("ids", ids.len(), MAIL_ACK_IDS_MAX),
            MailRpc::At { supernodes, .. } => ("supernodes", supernodes.len(), crate::index::store::SESSIONS_MAX + 1),
            MailRpc::Digests { slots } => ("digests", slots.len(), DIGESTS_PER_PACKET),
            MailRpc::Matches { slots } => ("matches", slots.len(), DIGESTS_PER_PACKET),
            MailRpc::Buckets { digests, .. } => ("bucket digests", digests.len(), MAIL_BUCKETS),
            MailRpc::Summary { summary, .. } => ("summary items", summary.items.len(), SUMMARY_ITEMS_MAX),
            MailRpc::Want { wants, .. } => ("wants", wants.len(), WANTS_MAX),
            _ => ("", 0, 0),
        };
        if n > max {
            return Err(RpcError(format!("{n} {what}, at most {max}")));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn round_trip() {
        for m in [
            IndexRpc::Store { req: 1, key: "alice".into(), entry: vec![1, 2, 3] },
            IndexRpc::StoreAck { req: 1, held: true },
            IndexRpc::Fetch { req: 2, key: "bob".into() },
            IndexRpc::FetchReply { req: 2, entry: None },
        ] {
            assert_eq!(IndexRpc::decode(&m.encode()).unwrap(), m);
            assert_eq!(m.encoded_len(), m.encode().len());
        }
        for m in largest_mail_rpcs() {
            let m = IndexRpc::Mail(m);
            assert_eq!(m.encoded_len(), m.encode().len());
        }
    }

    /// The largest request of each kind, each at its bound.
    fn largest_mail_rpcs() -> Vec<MailRpc> {
        use crate::index::mail::store::{ACKS_PER_MESSAGE_MAX, Refusal};
        use crate::index::mail::{ItemState, message::SEALED_LEN_MAX};
        let mail = Mail {
            id: [0xff; 16],
            to: "t".repeat(32),
            from: "f".repeat(32),
            stored_at_ms: u64::MAX,
            expires_at_ms: u64::MAX,
            sealed: vec![0xff; SEALED_LEN_MAX],
        };
        let user = "u".repeat(32);
        let live = ItemState::Live { content: [0xff; 8], acks: [0xff; 8] };
        vec![
            MailRpc::Store { req: u64::MAX, mail: mail.clone() },
            MailRpc::Stored { req: u64::MAX, outcome: Stored::Refused(Refusal::NodeFull) },
            MailRpc::Fetch { req: u64::MAX, user: user.clone(), device: [0xff; 8], after: Some([0xff; 16]) },
            MailRpc::Page { req: u64::MAX, messages: vec![mail.clone()], more: true },
            MailRpc::Ack { user, device: [0xff; 8], ids: vec![[0xff; 16]; MAIL_ACK_IDS_MAX] },
            MailRpc::Digests { slots: vec![(u32::MAX, [0xff; 16]); DIGESTS_PER_PACKET] },
            MailRpc::Buckets { slot: u32::MAX, digests: vec![[0xff; 8]; MAIL_BUCKETS], devices: [0xff; 8] },
            MailRpc::Devices { slot: u32::MAX },
            MailRpc::Matches { slots: vec![(u32::MAX, [0xff; 16]); DIGESTS_PER_PACKET] },
            MailRpc::Summary {
                slot: u32::MAX,
                summary: Summary {
                    bucket: 31,
                    after: Some([0xff; 16]),
                    end: Some([0xff; 16]),
                    items: vec![([0xff; 16], live); SUMMARY_ITEMS_MAX],
                },
            },
            MailRpc::Want { slot: u32::MAX, wants: vec![Want { id: [0xff; 16], acks_only: true }; WANTS_MAX] },
            MailRpc::Sessions { req: u64::MAX, user: "u".repeat(32) },
            MailRpc::At { req: u64::MAX, supernodes: vec!["s".repeat(64); crate::index::store::SESSIONS_MAX + 1] },
            MailRpc::Items {
                slot: u32::MAX,
                items: vec![MailItem::Message { mail, acks: vec![[0xff; 8]; ACKS_PER_MESSAGE_MAX] }],
            },
        ]
    }

    #[test]
    fn anti_entropy_requests_fit_and_hold_to_their_bounds() {
        let full = [
            IndexRpc::Buckets { slot: u32::MAX, digests: vec![[0xff; 8]; BUCKETS] },
            IndexRpc::Summary {
                slot: u32::MAX,
                buckets: u64::MAX,
                answer: true,
                items: vec![([0xff; 8], [0xff; 8]); SUMMARY_ITEMS_PER_PACKET],
            },
            IndexRpc::Want { slot: u32::MAX, keys: vec![[0xff; 8]; SUMMARY_ITEMS_PER_PACKET] },
        ];
        for m in full {
            let b = m.encode();
            assert!(b.len() <= RPC_LEN_MAX, "{} bytes: {}", b.len(), m.label());
            assert_eq!(IndexRpc::decode(&b).unwrap(), m);
        }
        let over = [
            IndexRpc::Buckets { slot: 1, digests: vec![[1; 8]; BUCKETS - 1] },
            IndexRpc::Buckets { slot: 1, digests: vec![[1; 8]; BUCKETS + 1] },
            IndexRpc::Summary {
                slot: 1,
                buckets: 1,
                answer: false,
                items: vec![([1; 8], [1; 8]); SUMMARY_ITEMS_PER_PACKET + 1],
            },
            IndexRpc::Want { slot: 1, keys: vec![[1; 8]; SUMMARY_ITEMS_PER_PACKET + 1] },
        ];
        for m in over {
            assert!(IndexRpc::decode(&m.encode()).is_err(), "{} past its bound", m.label());
        }
    }

    #[test]
    fn mail_requests_round_trip_within_one_frame() {
        for m in largest_mail_rpcs() {
            let b = m.encode();
            assert!(b.len() <= MAIL_RPC_LEN_MAX, "{} bytes: {m:?}", b.len());
            assert_eq!(MailRpc::decode(&b).unwrap(), m);
        }
        // A page of messages and a group of items are filled to their byte bounds.
        let MailRpc::Page { messages, .. } = &largest_mail_rpcs()[3] else { unreachable!() };
        assert!(messages[0].wire_len() <= MAIL_PAGE_BYTES_MAX);
        let full_page = MailRpc::Page { req: u64::MAX, messages: vec![messages[0].clone()], more: true };
        assert!(full_page.encode().len() + (MAIL_PAGE_BYTES_MAX - messages[0].wire_len()) <= MAIL_RPC_LEN_MAX);
        let items = MailRpc::Items {
            slot: u32::MAX,
            items: vec![MailItem::Tombstone { id: [0xff; 16], until_ms: u64::MAX }; MAIL_ITEMS_BYTES_MAX / 27],
        };
        assert!(items.encode().len() <= MAIL_RPC_LEN_MAX, "{}", items.encode().len());
    }

    #[test]
    fn mail_decoder_refuses_lists_past_their_bounds() {
        let long = MailRpc::Ack { user: "bob".into(), device: [1; 8], ids: vec![[1; 16]; MAIL_ACK_IDS_MAX + 1] };
        assert!(MailRpc::decode(&long.encode()).is_err());
        let wants = MailRpc::Want { slot: 1, wants: vec![Want { id: [1; 16], acks_only: false }; WANTS_MAX + 1] };
        assert!(MailRpc::decode(&wants.encode()).is_err());
        let buckets = MailRpc::Buckets { slot: 1, digests: vec![[1; 8]; MAIL_BUCKETS + 1], devices: [1; 8] };
        assert!(MailRpc::decode(&buckets.encode()).is_err());
        let matches = MailRpc::Matches { slots: vec![(1, [1; 16]); DIGESTS_PER_PACKET + 1] };
        assert!(MailRpc::decode(&matches.encode()).is_err());
        let at = MailRpc::At { req: 1, supernodes: vec!["sn1".into(); crate::index::store::SESSIONS_MAX + 2] };
        assert!(MailRpc::decode(&at.encode()).is_err());
        assert!(MailRpc::decode(&vec![0; MAIL_RPC_LEN_MAX + 1]).is_err());
        let b = largest_mail_rpcs()[0].encode();
        for cut in [1, b.len() / 2, b.len() - 1] {
            assert!(MailRpc::decode(&b[..cut]).is_err(), "truncated at {cut}");
        }
    }

    proptest! {
        #[test]
        fn decode_is_total(b in proptest::collection::vec(any::<u8>(), 0..600)) {
            let _ = IndexRpc::decode(&b);
            let _ = MailRpc::decode(&b);
        }
    }
}
