//! What one host sends another through the super nodes.
//!
//! Super nodes carry notices without reading them. A presence notice is the sender's
//! signed index entry (with its real status, invisible included), so the receiver trusts
//! it only after verifying it; a list-changed notice only makes the receiver ask the login
//! server again, so forging one gains nothing; a call message carries its own
//! signatures and seals (see `call::invite`).

use serde::{Deserialize, Serialize};

/// Largest encoded notice.
pub const NOTICE_LEN_MAX: usize = 2400;

/// A host-to-host notice.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Notice {
    /// The sender's presence: its signed entry.
    Presence {
        /// The signed entry.
        entry: Vec<u8>,
    },
    /// The sender changed something between us (a request, an answer): ask the login server.
    ListChanged {
        /// Who says so (unverified: it only prompts a refresh).
        from: String,
    },
    /// A call message (`call::invite::CallMessage`), authenticated end to end by the call.
    Call {
        /// The encoded message.
        message: Vec<u8>,
    },
    /// A chat message (`chat::message::Sealed`), sealed and signed end to end. Last: the
    /// postcard tag of every variant is its position.
    Chat {
        /// The encoded sealed message.
        sealed: Vec<u8>,
    },
}

impl Notice {
    /// Encodes.
    pub fn encode(&self) -> Vec<u8> {
        postcard::to_allocvec(self).expect("a notice always encodes")
    }

    /// Decodes (total).
    pub fn decode(b: &[u8]) -> Option<Self> {
        if b.len() > NOTICE_LEN_MAX {
            return None;
        }
        postcard::from_bytes(b).ok()
    }

    /// A short label for metrics.
    pub fn label(&self) -> &'static str {
        match self {
            Self::Presence { .. } => "presence",
            Self::ListChanged { .. } => "list_changed",
            Self::Call { .. } => "call",
            Self::Chat { .. } => "chat",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn round_trip() {
        let n = Notice::Presence { entry: vec![1; 2048] };
        assert!(n.encode().len() <= NOTICE_LEN_MAX);
        assert_eq!(Notice::decode(&n.encode()), Some(n));
        assert_eq!(Notice::decode(&[9, 9]), None);
    }

    #[test]
    fn earlier_variants_keep_their_tags() {
        // Hosts of different builds exchange notices: a new variant goes last.
        assert_eq!(Notice::Presence { entry: vec![] }.encode(), [0, 0]);
        assert_eq!(Notice::ListChanged { from: String::new() }.encode(), [1, 0]);
        assert_eq!(Notice::Call { message: vec![] }.encode(), [2, 0]);
        let chat = Notice::Chat { sealed: vec![7; crate::chat::message::SEALED_LEN_MAX] };
        assert_eq!(chat.encode()[0], 3);
        assert!(chat.encode().len() <= NOTICE_LEN_MAX);
        assert_eq!(Notice::decode(&chat.encode()), Some(chat));
    }

    proptest! {
        #[test]
        fn decode_is_total(b in proptest::collection::vec(any::<u8>(), 0..3000)) {
            let _ = Notice::decode(&b);
        }
    }
}
