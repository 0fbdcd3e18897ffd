//! Index requests between super nodes (carried on the cluster channel, sealed with the
//! cluster key). Entries travel in their signed encoding; every receiver verifies them.

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
}

/// Digests per anti-entropy packet (keeps a packet in one datagram).
pub const DIGESTS_PER_PACKET: usize = 32;

/// Why a request was not decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("malformed index request: {0}")]
pub struct RpcError(String);

impl IndexRpc {
    /// Encodes (postcard).
    pub fn encode(&self) -> Vec<u8> {
        postcard::to_allocvec(self).expect("index requests serialise")
    }

    /// Decodes; total (postcard checks every length against the input).
    pub fn decode(b: &[u8]) -> Result<Self, RpcError> {
        if b.len() > RPC_LEN_MAX {
            return Err(RpcError(format!("{} bytes", b.len())));
        }
        postcard::from_bytes(b).map_err(|e| RpcError(e.to_string()))
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
        }
    }

    proptest! {
        #[test]
        fn decode_is_total(b in proptest::collection::vec(any::<u8>(), 0..600)) {
            let _ = IndexRpc::decode(&b);
        }
    }
}
