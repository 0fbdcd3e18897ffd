//! The Global Index's settings (`[supernode.index]`).

use super::lookup::LookupConfig;
use super::slot;
use std::net::SocketAddr;

/// Global Index settings.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct IndexConfig {
    /// Slots (a multiple of 8).
    pub slots: u32,
    /// Replicas per slot.
    pub replicas: usize,
    /// How long an entry is findable after its host was last seen.
    pub retention_secs: u64,
    /// Most keys per slot on one replica.
    pub entries_per_slot_max: usize,
    /// Lookup widening.
    pub lookup: LookupConfig,
    /// How often replicas compare slot digests and repair differences.
    pub anti_entropy_secs: u64,
    /// Login servers whose recently-seen directory is the lookup's last stage.
    pub directory: Vec<SocketAddr>,
    /// Entry bytes pushed in answer to one Want or Differ, at most.
    pub repair_bytes_per_answer_max: usize,
    /// Bytes of repair (entries, summaries, bucket lists, and a fixed cost per store read
    /// a member's request causes) for one replica per second, at most.
    pub repair_bytes_per_peer_per_sec: u64,
    /// How long a stored message waits for its recipient's devices.
    pub mail_retention_secs: u64,
    /// Bytes of stored messages this node holds at most, over all its slots.
    pub mail_bytes_max: u64,
    /// How often a user's search postings are written again while their profile stays the
    /// same (a presence refresh only writes the user's own key; 0: every publish).
    pub postings_refresh_secs: u64,
}

impl Default for IndexConfig {
    fn default() -> Self {
        Self {
            slots: slot::SLOTS_DEFAULT,
            replicas: slot::REPLICAS_DEFAULT,
            retention_secs: crate::index::store::RETENTION_SECS_DEFAULT,
            entries_per_slot_max: 100_000,
            lookup: LookupConfig::default(),
            anti_entropy_secs: 10,
            directory: Vec::new(),
            repair_bytes_per_answer_max: 256 << 10,
            repair_bytes_per_peer_per_sec: 1 << 20,
            mail_retention_secs: crate::index::mail::MailLimits::default().retention_ms / 1000,
            mail_bytes_max: crate::index::mail::budget::NODE_BYTES_MAX_DEFAULT,
            postings_refresh_secs: 24 * 3600,
        }
    }
}
