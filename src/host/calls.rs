//! Calls' public types: their states as events show them, the report of an ended call,
//! and call ids as users see them. The calls themselves run in the host's core
//! (`core::calls`).

use crate::call::invite::Codec;
use crate::call::signal::State;

/// Codecs this host speaks, preferred first.
pub const CODECS: [Codec; 2] = [Codec::Opus, Codec::L16];

/// What an ended call carried, and what we heard.
#[derive(Debug, Clone, Default)]
pub struct CallReport {
    /// Path, packets, loss, jitter.
    pub media: super::media::MediaReport,
    /// The audio we heard (48 kHz mono).
    pub heard: Vec<i16>,
}

/// A call's id, as shown to users and scripts.
pub fn call_id_hex(id: &[u8; 16]) -> String {
    id.iter().map(|b| format!("{b:02x}")).collect()
}

/// The call id that [`call_id_hex`] shows (None if `hex` is not one).
pub fn call_id_from_hex(hex: &str) -> Option<[u8; 16]> {
    let mut id = [0u8; 16];
    if hex.len() != 32 {
        return None;
    }
    for (i, b) in id.iter_mut().enumerate() {
        *b = u8::from_str_radix(hex.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(id)
}

/// A call's state for events and JSON.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case", tag = "state")]
pub enum CallState {
    /// Invite sent.
    Inviting,
    /// The callee's host rings.
    Ringing,
    /// Accepted; finding a media path.
    Connecting,
    /// Media flows.
    Connected {
        /// The path.
        path: &'static str,
    },
    /// Over.
    Ended {
        /// Why.
        reason: &'static str,
    },
}

impl From<State> for CallState {
    fn from(s: State) -> Self {
        match s {
            State::Inviting => Self::Inviting,
            State::Ringing => Self::Ringing,
            State::Connecting => Self::Connecting,
            State::Connected(p) => Self::Connected { path: p.label() },
            State::Ended(r) => Self::Ended { reason: r.label() },
        }
    }
}
