//! The super node's metrics and its once-per-reason rejection log.

use metrics::{Unit, counter, describe_counter, describe_gauge, describe_histogram, gauge};
use std::collections::HashSet;
use std::sync::Mutex;

/// Registers descriptions (once per process is enough; repeating is harmless).
pub fn describe() {
    describe_gauge!("confab_supernode_hosts_connected", "Hosts with an established session");
    describe_counter!("confab_supernode_handshakes_total", "Host handshakes by outcome");
    describe_histogram!(
        "confab_supernode_handshake_duration_seconds",
        Unit::Seconds,
        "Time to check an Auth (RSA decrypt, credential, proof)"
    );
    describe_counter!("confab_wire_frames_in_total", "Frames received, by kind and transport");
    describe_counter!("confab_wire_frames_out_total", "Frames sent, by kind and transport");
    describe_counter!("confab_wire_frames_rejected_total", "Frames rejected, by reason");
    describe_counter!("confab_stun_requests_total", "STUN requests, by outcome");
    describe_counter!("confab_supernode_nat_probes_total", "NAT probes answered, by port");
    describe_index();
    describe_counter!("confab_calls_total", "Calls placed by this node's hosts, by path and outcome");
    describe_counter!(
        "confab_supernode_reports_refused_total",
        "Call and file reports not counted: their host sent more than 60 a minute"
    );
    describe_counter!(
        "confab_file_bytes_total",
        "File bytes this node's hosts received, by path, as they report each connection"
    );
    describe_histogram!(
        "confab_call_setup_duration_seconds",
        Unit::Seconds,
        "From the invite to media flowing, by path (calls that connected)"
    );
    describe_counter!(
        "confab_supernode_notices_total",
        "Host-to-host notices: delivered here, forwarded to another super node, or dropped (by outcome)"
    );
}

/// The Global Index's metrics (all labelled by node; none by slot or user).
fn describe_index() {
    describe_gauge!("confab_index_slots_held", "Slots this super node replicates");
    describe_gauge!("confab_index_slot_stores", "Slot stores (actors) here: slots held and former slots not yet gone");
    describe_counter!("confab_index_slots_retired_total", "Former slots whose store went after their time");
    describe_gauge!("confab_index_entries", "Keys (entries and search postings) held, over all slots");
    describe_gauge!("confab_index_slot_entries_max", "Keys in the fullest slot held");
    describe_counter!("confab_index_publishes_total", "Entries hosts published here, by outcome");
    describe_counter!("confab_index_writes_total", "Writes to a local slot, by outcome (stored, replaced, stale, …)");
    describe_histogram!(
        "confab_index_replication_lag_seconds",
        Unit::Seconds,
        "From a host signing an entry to a replica storing it (repairs show their delay)"
    );
    describe_counter!("confab_index_lookups_total", "Lookups by outcome and the widening stage that ended them");
    describe_histogram!("confab_index_lookup_asked", "Super nodes one lookup asked");
    describe_histogram!("confab_index_lookup_duration_seconds", Unit::Seconds, "Time to answer one lookup");
    describe_counter!("confab_index_searches_total", "User searches by outcome");
    describe_counter!("confab_index_bad_answers_total", "Answers from other super nodes that did not verify");
    describe_counter!("confab_index_rpc_rejected_total", "Index requests from other super nodes refused, by reason");
    describe_counter!("confab_index_antientropy_differing_slots_total", "Slots found to differ from a co-replica");
    describe_counter!("confab_index_repair_entries_total", "Entries pushed to co-replicas to repair a slot");
    describe_counter!("confab_index_entries_expired_total", "Entries dropped after the retention window");
    describe_counter!(
        "confab_mail_messages_total",
        "Offline messages by outcome (stored, delivered, expired, refused …)"
    );
    describe_gauge!("confab_mail_stored_messages", "Offline messages held, over all slots (former ones included)");
    describe_gauge!("confab_mail_stored_bytes", "Sealed bytes of the offline messages held, over all slots");
    describe_counter!(
        "confab_mail_sync_items_total",
        "Mail items (messages, acks, tombstones, devices) moved by anti-entropy, by direction"
    );
    describe_counter!(
        "confab_mail_handovers_total",
        "Slots whose mail a former replica let go, by outcome (confirmed, timed_out)"
    );
}

/// The `path` labels of `confab_calls_total` (a host cannot add others).
const CALL_PATHS: [&str; 5] = ["direct", "punched", "relayed_udp", "relayed_tcp", "none"];
/// Most file bytes one report counts: what a host reports is believed, within reason.
const FILE_BYTES_REPORT_MAX: u64 = 1 << 36;
/// The `outcome` labels of `confab_calls_total`.
const CALL_OUTCOMES: [&str; 8] =
    ["hung_up", "declined", "busy", "cancelled", "no_answer", "unreachable", "media_failed", "lost"];

/// Per-node metric helpers (labels are the node name and bounded enums only).
#[derive(Debug)]
pub struct NodeMetrics {
    node: String,
    logged: Mutex<HashSet<(&'static str, &'static str)>>,
}

impl NodeMetrics {
    /// Metrics for the node named `node`.
    pub fn new(node: &str) -> Self {
        describe();
        gauge!("confab_supernode_hosts_connected", "node" => node.to_owned()).set(0.0);
        counter!("confab_supernode_reports_refused_total", "node" => node.to_owned()).absolute(0);
        // Every call series at zero from the start: a counter whose first sample is
        // already 1 never shows a rate, and its panel "No data" until the next call.
        for path in CALL_PATHS {
            for outcome in CALL_OUTCOMES {
                counter!("confab_calls_total", "node" => node.to_owned(), "path" => path, "outcome" => outcome)
                    .absolute(0);
            }
            if path != "none" {
                let _ = metrics::histogram!("confab_call_setup_duration_seconds", "node" => node.to_owned(), "path" => path);
                counter!("confab_file_bytes_total", "node" => node.to_owned(), "path" => path).absolute(0);
            }
        }
        Self { node: node.to_owned(), logged: Mutex::new(HashSet::new()) }
    }

    /// A frame came in.
    pub fn frame_in(&self, kind: &'static str, transport: &'static str) {
        counter!("confab_wire_frames_in_total", "node" => self.node.clone(), "kind" => kind, "transport" => transport)
            .increment(1);
    }

    /// A frame went out.
    pub fn frame_out(&self, kind: &'static str, transport: &'static str) {
        counter!("confab_wire_frames_out_total", "node" => self.node.clone(), "kind" => kind, "transport" => transport)
            .increment(1);
    }

    /// A frame was rejected: counted always, logged at warn the first time per reason and
    /// transport, at debug after that (a flood must not flood the log).
    pub fn reject(
        &self,
        transport: &'static str,
        reason: &'static str,
        from: std::net::SocketAddr,
        detail: &dyn std::fmt::Display,
    ) {
        counter!("confab_wire_frames_rejected_total", "node" => self.node.clone(), "transport" => transport, "reason" => reason).increment(1);
        let first = self.logged.lock().unwrap_or_else(|p| p.into_inner()).insert((transport, reason));
        if first {
            tracing::warn!(node = %self.node, transport, reason, %from, %detail, "rejected a frame (further rejections for this reason are logged at debug)");
        } else {
            tracing::debug!(node = %self.node, transport, reason, %from, %detail, "rejected a frame");
        }
    }

    /// A handshake finished.
    pub fn handshake(&self, outcome: &'static str, seconds: f64) {
        counter!("confab_supernode_handshakes_total", "node" => self.node.clone(), "outcome" => outcome).increment(1);
        metrics::histogram!("confab_supernode_handshake_duration_seconds", "node" => self.node.clone()).record(seconds);
    }

    /// The connected-host gauge, set from the session table itself so it cannot drift.
    pub fn hosts_connected(&self, count: usize) {
        gauge!("confab_supernode_hosts_connected", "node" => self.node.clone()).set(count as f64);
    }

    /// A STUN request was handled.
    pub fn stun(&self, outcome: &'static str) {
        counter!("confab_stun_requests_total", "node" => self.node.clone(), "outcome" => outcome).increment(1);
    }

    /// A host reported a call it placed. Only known labels are counted: a host cannot
    /// make up label values (and so cannot grow the metric's cardinality).
    pub fn call(&self, s: &crate::wire::message::CallStats) {
        let path = CALL_PATHS.iter().find(|p| **p == s.path).copied().unwrap_or("none");
        if let Some(bytes) = s.file_bytes {
            // A file transfer's connection, not a call.
            if path != "none" {
                counter!("confab_file_bytes_total", "node" => self.node.clone(), "path" => path)
                    .increment(bytes.min(FILE_BYTES_REPORT_MAX));
            }
            return;
        }
        let Some(outcome) = CALL_OUTCOMES.iter().find(|o| **o == s.outcome).copied() else { return };
        counter!("confab_calls_total", "node" => self.node.clone(), "path" => path, "outcome" => outcome).increment(1);
        if path != "none" {
            metrics::histogram!("confab_call_setup_duration_seconds", "node" => self.node.clone(), "path" => path)
                .record(f64::from(s.setup_ms) / 1000.0);
        }
    }

    /// A host's call or file report was not counted (it reports too often).
    pub fn report_refused(&self) {
        counter!("confab_supernode_reports_refused_total", "node" => self.node.clone()).increment(1);
    }

    /// A NAT probe was answered on the main or alternate port.
    pub fn nat_probe(&self, port: &'static str) {
        counter!("confab_supernode_nat_probes_total", "node" => self.node.clone(), "port" => port).increment(1);
    }
}
