//! Configuration: built-in defaults < config files < `CONFAB_…` environment < flags.
//!
//! Files are TOML, read with `file_exact` (a missing file named on the command line is
//! an error, not silently nothing). Environment keys split sections on `__`, e.g.
//! `CONFAB_LOGIN_SERVER__LISTEN=0.0.0.0:33030`. Paths in a file are relative to that
//! file's folder. A bad value is reported in one line naming its key.

use figment::Figment;
use figment::providers::{Env, Format, Serialized, Toml};
use figment::value::magic::RelativePathBuf;
use serde::{Deserialize, Serialize};
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};

/// The default config file, read when present and no `--config` is given.
pub const DEFAULT_FILE: &str = "config/confab.toml";

/// Log output.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogConfig {
    /// `human` or `json`.
    pub format: LogFormat,
    /// A tracing filter, e.g. `info` or `confab=debug`.
    pub level: String,
}

impl Default for LogConfig {
    fn default() -> Self {
        Self { format: LogFormat::Human, level: "info".into() }
    }
}

/// Log format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Readable lines.
    Human,
    /// One JSON object per line.
    Json,
}

/// The Prometheus endpoint.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MetricsConfig {
    /// Where `/metrics` is served (none: not served).
    pub listen: Option<SocketAddr>,
}

/// The login server.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LoginServerConfig {
    /// TCP listen address.
    pub listen: SocketAddr,
    /// The address hosts dial, when `listen` is a wildcard.
    pub public_addr: Option<SocketAddr>,
    /// The login key (PKCS#8 PEM): it signs new credentials and revocation lists.
    pub key: RelativePathBuf,
    /// Earlier login keys (PKCS#8 PEM) whose envelopes are still opened during a key
    /// rotation; credentials they signed are accepted until they leave the trust lists.
    pub previous_keys: Vec<RelativePathBuf>,
    /// The account database (SQLite).
    pub database: RelativePathBuf,
    /// Host credential lifetime.
    pub credential_lifetime_secs: u64,
    /// Accepted clock difference for requests.
    pub replay_window_secs: u64,
    /// Newest released version, advertised to hosts.
    pub latest_version: String,
    /// Which RSA implementation does private-key work.
    pub rsa_backend: crate::crypto::RsaBackend,
    /// Most TCP connections at once.
    pub connections_max: usize,
    /// Most TCP connections at once from one source (IPv4 address or IPv6 /64).
    pub connections_per_source_max: usize,
    /// Longest a TCP connection may live.
    pub connection_lifetime_secs: u64,
    /// Per-source and per-user limits, client puzzles, registrations, surges.
    pub throttle: crate::login::guard::ThrottlePolicy,
}

impl LoginServerConfig {
    /// The TCP connection limits.
    pub fn connection_limits(&self) -> crate::login::server::ConnectionLimits {
        crate::login::server::ConnectionLimits {
            total: self.connections_max,
            per_source: self.connections_per_source_max,
            lifetime: std::time::Duration::from_secs(self.connection_lifetime_secs),
        }
    }
}

impl Default for LoginServerConfig {
    fn default() -> Self {
        Self {
            listen: "127.0.0.1:33030".parse().expect("literal"),
            public_addr: None,
            key: PathBuf::from("data/login.key.pem").into(),
            previous_keys: Vec::new(),
            database: PathBuf::from("data/accounts.sqlite").into(),
            credential_lifetime_secs: 24 * 3600,
            replay_window_secs: 300,
            latest_version: crate::VERSION.into(),
            rsa_backend: crate::crypto::RsaBackend::default(),
            connections_max: 4096,
            connections_per_source_max: 64,
            connection_lifetime_secs: 60,
            throttle: crate::login::guard::ThrottlePolicy::default(),
        }
    }
}

/// One super node of a `confab supernode` process.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeConfig {
    /// Its name (must match its credential's subject).
    pub name: String,
    /// Its private key.
    pub key: RelativePathBuf,
    /// Its credential (from `confab keygen supernode`).
    pub credential: RelativePathBuf,
    /// Main UDP socket.
    #[serde(default = "default_node_addr")]
    pub udp: SocketAddr,
    /// Main TCP listener.
    #[serde(default = "default_node_addr")]
    pub tcp: SocketAddr,
    /// Alternate UDP port for NAT discovery.
    #[serde(default)]
    pub probe_udp: Option<SocketAddr>,
    /// Last-resort TCP listeners, e.g. `["0.0.0.0:443", "0.0.0.0:80"]`.
    #[serde(default)]
    pub fallback_tcp: Vec<SocketAddr>,
    /// The IP hosts dial, when binding a wildcard address.
    #[serde(default)]
    pub public_ip: Option<IpAddr>,
    /// The UDP socket for cluster gossip (none: this node does not join a cluster).
    #[serde(default)]
    pub gossip: Option<SocketAddr>,
    /// The relay's UDP port (none: this node relays no calls).
    #[serde(default)]
    pub relay: Option<SocketAddr>,
}

fn default_node_addr() -> SocketAddr {
    "0.0.0.0:33033".parse().expect("literal")
}

/// A statically configured peer, announced to hosts for their cache.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PeerConfig {
    /// Its name.
    pub name: String,
    /// Its UDP endpoint.
    pub udp: Option<SocketAddr>,
    /// Its TCP endpoint.
    pub tcp: Option<SocketAddr>,
}

/// The super-node process.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SupernodeConfig {
    /// Login-server public keys whose credentials are accepted.
    pub trusted_login_keys: Vec<RelativePathBuf>,
    /// The nodes this process runs.
    pub nodes: Vec<NodeConfig>,
    /// Other super nodes to announce.
    pub peers: Vec<PeerConfig>,
    /// The cluster secret shared by every super node (`confab keygen cluster`).
    pub cluster_secret: Option<RelativePathBuf>,
    /// Gossip addresses of a few cluster members to join through.
    pub seeds: Vec<SocketAddr>,
    /// SWIM probe period: a dead super node is noticed within a few of these.
    pub probe_period_ms: u64,
    /// The Global Index.
    pub index: crate::index::IndexConfig,
    /// Limits of the cluster's authentication layer.
    pub cluster: crate::cluster::ClusterLimits,
    /// Fetching the revocation list from the login servers and spreading it.
    pub revocation: crate::supernode::revocation::RevocationConfig,
    /// Keepalive interval asked of hosts.
    pub keepalive_secs: u64,
    /// Silence after which a host is dropped.
    pub idle_timeout_secs: u64,
    /// Most hosts per node.
    pub hosts_max: usize,
    /// Most handshakes being checked at once per node.
    pub handshakes_max: usize,
    /// Most handshakes (RSA jobs) running at once for one source.
    pub handshakes_per_source_max: usize,
    /// STUN Binding answers a second to one source (twice that at once).
    pub stun_per_source_per_sec: u32,
    /// Most host TCP connections at once, per listener (main, 443, 80).
    pub tcp_connections_max: usize,
    /// Most host TCP connections at once from one source (IPv4 address or IPv6 /64).
    pub tcp_connections_per_source_max: usize,
    /// UDP receive buffer per socket.
    pub udp_recv_buffer_bytes: usize,
    /// Call relays.
    pub relay: RelayConfig,
}

/// Call relays (for nodes with a `relay` address).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RelayConfig {
    /// Worker threads, each with its own socket on the relay port (0: one per core).
    pub workers: usize,
    /// Relay sessions one node holds at most.
    pub sessions_max: usize,
    /// Relay sessions one connected host may hold.
    pub sessions_per_host_max: usize,
    /// Relay sessions one user may hold on this node, over all its hosts.
    pub sessions_per_user_max: usize,
    /// Relay sessions one source (IPv4 address or IPv6 /64) may hold on this node.
    pub sessions_per_source_max: usize,
    /// Seconds without a packet after which a session ends.
    pub idle_timeout_secs: u64,
    /// Packets per second one session may relay (voice needs 50 each way).
    pub packets_per_second_max: u32,
    /// Bytes per second one session may relay.
    pub bytes_per_second_max: u64,
    /// Bytes per second of file transfer data one session may relay in each direction
    /// (0: relays carry no file data).
    pub file_bytes_per_second_max: u64,
    /// Relay to loopback, private and link-local addresses (test networks only).
    pub allow_private_peers: bool,
    /// TCP connections to the relay port open at once (legs of hosts whose UDP is
    /// blocked); 0: no relaying over TCP.
    pub tcp_connections_max: usize,
    /// TCP connections to the relay port one source may hold open at once.
    pub tcp_connections_per_source_max: usize,
    /// SO_RCVBUF of each worker's socket (the kernel caps it at net.core.rmem_max).
    pub recv_buffer_bytes: usize,
    /// SO_SNDBUF of each worker's socket (the kernel caps it at net.core.wmem_max).
    pub send_buffer_bytes: usize,
    /// Datagrams per receive call (recvmmsg), 1 to 32.
    pub batch: usize,
    /// Receive calls per wake-up of a worker before it flushes its counters.
    pub read_budget: usize,
    /// DSCP code point on relayed datagrams (46: Expedited Forwarding; 0: leave it).
    pub dscp: u8,
    /// SO_BUSY_POLL microseconds (0: off).
    pub busy_poll_us: u32,
}

impl Default for RelayConfig {
    fn default() -> Self {
        let l = crate::relay::table::Limits::default();
        let w = crate::relay::worker::WorkerConfig::default();
        Self {
            workers: 0,
            sessions_max: l.sessions_max,
            sessions_per_host_max: 4,
            sessions_per_user_max: 8,
            sessions_per_source_max: 256,
            idle_timeout_secs: 30,
            packets_per_second_max: l.packets_per_second_max,
            bytes_per_second_max: l.bytes_per_second_max,
            file_bytes_per_second_max: l.file_bytes_per_second_max,
            allow_private_peers: false,
            tcp_connections_max: crate::relay::worker::TCP_CONNS_MAX_DEFAULT,
            tcp_connections_per_source_max: crate::relay::worker::TCP_CONNS_PER_SOURCE_MAX_DEFAULT,
            recv_buffer_bytes: w.recv_buffer_bytes,
            send_buffer_bytes: w.send_buffer_bytes,
            batch: w.batch,
            read_budget: w.read_budget,
            dscp: w.dscp,
            busy_poll_us: w.busy_poll_us,
        }
    }
}

impl Default for SupernodeConfig {
    fn default() -> Self {
        let p = crate::supernode::SessionParams::default();
        Self {
            trusted_login_keys: vec![PathBuf::from("data/login.pub.pem").into()],
            nodes: Vec::new(),
            peers: Vec::new(),
            cluster_secret: None,
            seeds: Vec::new(),
            probe_period_ms: 1000,
            index: Default::default(),
            cluster: Default::default(),
            revocation: Default::default(),
            keepalive_secs: p.keepalive_secs,
            idle_timeout_secs: p.idle_timeout_secs,
            hosts_max: p.hosts_max,
            handshakes_max: p.handshakes_max,
            handshakes_per_source_max: p.handshakes_per_source_max,
            stun_per_source_per_sec: p.stun_per_source_per_sec,
            tcp_connections_max: p.tcp_connections_max,
            tcp_connections_per_source_max: p.tcp_connections_per_source_max,
            udp_recv_buffer_bytes: p.udp_recv_buffer_bytes,
            relay: RelayConfig::default(),
        }
    }
}

/// The host.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HostConfig {
    /// The home folder (key, port, host cache). Default: `$HOME/.confab`.
    pub home: Option<RelativePathBuf>,
    /// Login servers (TCP), tried in order.
    pub login_servers: Vec<SocketAddr>,
    /// Login-server public keys shipped with the software.
    pub trusted_login_keys: Vec<RelativePathBuf>,
    /// Bootstrap super nodes (address:port).
    pub bootstrap: Vec<SocketAddr>,
    /// Last-resort TCP ports on the bootstrap nodes' addresses.
    pub fallback_ports: Vec<u16>,
    /// UDP attempts on cached super nodes before switching to TCP.
    pub udp_failures_max: usize,
    /// Most attempts in one connection run.
    pub attempts_max: usize,
    /// Timeout of one attempt.
    pub step_timeout_ms: u64,
    /// Time budget of the whole ladder.
    pub connect_budget_secs: u64,
    /// Timeout of one login-server request.
    pub login_timeout_secs: u64,
    /// How often a long-running host republishes its presence and tells its buddies
    /// (below the 15-minute presence TTL, after which a silent host shows offline).
    pub presence_refresh_secs: u64,
    /// To whom a call offers the host's interface addresses as media candidates.
    pub local_candidates: LocalCandidates,
}

/// To whom a host offers its interface addresses (LAN and IPv6 ones) in a call: they let
/// two hosts behind one NAT, or two with IPv6, talk directly, and they tell the other side
/// where the host sits in its network (a stable IPv6 address identifies the device).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum LocalCandidates {
    /// Only to authorized buddies (the default): a stranger learns the public address alone.
    #[default]
    Buddies,
    /// To everyone we call or who calls us and is answered.
    Always,
    /// To nobody.
    Never,
}

impl LocalCandidates {
    /// Whether a peer gets our interface addresses (`buddy`: an authorized buddy).
    pub fn offer_to(self, buddy: bool) -> bool {
        match self {
            Self::Always => true,
            Self::Buddies => buddy,
            Self::Never => false,
        }
    }
}

impl Default for HostConfig {
    fn default() -> Self {
        Self {
            home: None,
            login_servers: vec!["127.0.0.1:33030".parse().expect("literal")],
            trusted_login_keys: vec![PathBuf::from("data/login.pub.pem").into()],
            bootstrap: vec!["127.0.0.1:33033".parse().expect("literal")],
            fallback_ports: vec![443, 80],
            udp_failures_max: crate::host::ladder::UDP_FAILURES_MAX,
            attempts_max: 64,
            step_timeout_ms: 1000,
            connect_budget_secs: 60,
            login_timeout_secs: 10,
            presence_refresh_secs: 300,
            local_candidates: LocalCandidates::Buddies,
        }
    }
}

/// The whole configuration.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Logging.
    pub log: LogConfig,
    /// Metrics endpoint.
    pub metrics: MetricsConfig,
    /// Login server.
    pub login_server: LoginServerConfig,
    /// Super nodes.
    pub supernode: SupernodeConfig,
    /// Host.
    pub host: HostConfig,
}

/// A configuration problem, in one line naming the key.
#[derive(Debug, thiserror::Error)]
#[error("configuration: {0}")]
pub struct ConfigError(pub String);

impl Config {
    /// Layers defaults, `files` (or [`DEFAULT_FILE`] when present and none are given)
    /// and the environment.
    pub fn load(files: &[PathBuf]) -> Result<Self, ConfigError> {
        let mut fig = Figment::from(Serialized::defaults(Config::default()));
        if files.is_empty() {
            if Path::new(DEFAULT_FILE).exists() {
                fig = fig.merge(Toml::file_exact(DEFAULT_FILE));
            }
        } else {
            for f in files {
                if !f.exists() {
                    return Err(ConfigError(format!("{}: no such file", f.display())));
                }
                fig = fig.merge(Toml::file_exact(f));
            }
        }
        // CONFAB_PASSWORD is the host's password, not a setting.
        fig = fig.merge(Env::prefixed("CONFAB_").split("__").ignore(&["password"]));
        let c: Config = fig.extract().map_err(|e| ConfigError(one_line(&e)))?;
        c.validate()?;
        Ok(c)
    }

    /// Checks values serde cannot.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let bad = |key: &str, why: &str| Err(ConfigError(format!("{key}: {why}")));
        if self.login_server.credential_lifetime_secs < 60 {
            return bad("login_server.credential_lifetime_secs", "must be at least 60");
        }
        if self.login_server.connections_max == 0 {
            return bad("login_server.connections_max", "must be at least 1");
        }
        if self.login_server.connections_per_source_max == 0
            || self.login_server.connections_per_source_max > self.login_server.connections_max
        {
            return bad("login_server.connections_per_source_max", "must be 1..=login_server.connections_max");
        }
        if self.login_server.connection_lifetime_secs < 5 {
            return bad("login_server.connection_lifetime_secs", "must be at least 5");
        }
        if let Err((key, why)) = self.login_server.throttle.validate() {
            return bad(&format!("login_server.throttle.{key}"), &why);
        }
        let sn = &self.supernode;
        if sn.tcp_connections_max == 0 {
            return bad("supernode.tcp_connections_max", "must be at least 1");
        }
        if sn.tcp_connections_per_source_max == 0 || sn.tcp_connections_per_source_max > sn.tcp_connections_max {
            return bad("supernode.tcp_connections_per_source_max", "must be 1..=supernode.tcp_connections_max");
        }
        if sn.stun_per_source_per_sec == 0 {
            return bad("supernode.stun_per_source_per_sec", "must be at least 1");
        }
        if sn.handshakes_per_source_max == 0 || sn.handshakes_per_source_max > sn.handshakes_max {
            return bad("supernode.handshakes_per_source_max", "must be 1..=supernode.handshakes_max");
        }
        if self.supernode.keepalive_secs == 0 || self.supernode.keepalive_secs >= self.supernode.idle_timeout_secs {
            return bad("supernode.keepalive_secs", "must be at least 1 and below supernode.idle_timeout_secs");
        }
        if let Err(e) = crate::index::SlotSpace::new(self.supernode.index.slots) {
            return bad("supernode.index.slots", &e.to_string());
        }
        if !(10..=60_000).contains(&self.supernode.cluster.hello_interval_ms) {
            return bad("supernode.cluster.hello_interval_ms", "must be between 10 and 60000");
        }
        if !(1..=4096).contains(&self.supernode.cluster.pending_per_peer_max) {
            return bad("supernode.cluster.pending_per_peer_max", "must be between 1 and 4096");
        }
        if !(1..=86_400).contains(&self.supernode.revocation.fetch_interval_secs) {
            return bad("supernode.revocation.fetch_interval_secs", "must be between 1 and 86400");
        }
        if !(50..=60_000).contains(&self.supernode.revocation.gossip_interval_ms) {
            return bad("supernode.revocation.gossip_interval_ms", "must be between 50 and 60000");
        }
        if self.supernode.index.repair_bytes_per_answer_max < 4096 {
            return bad("supernode.index.repair_bytes_per_answer_max", "must be at least 4096");
        }
        if self.supernode.index.repair_bytes_per_peer_per_sec < 4096 {
            return bad("supernode.index.repair_bytes_per_peer_per_sec", "must be at least 4096");
        }
        if self.supernode.index.postings_refresh_secs > crate::index::store::POSTINGS_REFRESH_MAX_SECS {
            return bad(
                "supernode.index.postings_refresh_secs",
                "must be at most 86400 (postings outlive the retention by a day)",
            );
        }
        if self.supernode.index.replicas == 0 {
            return bad("supernode.index.replicas", "must be at least 1");
        }
        let steps = &self.supernode.index.lookup.steps;
        if steps.is_empty() || steps.windows(2).any(|w| w[0] >= w[1]) {
            return bad("supernode.index.lookup.steps", "must be a non-empty increasing list, e.g. [4, 8, 16]");
        }
        if !(50..=60_000).contains(&self.supernode.probe_period_ms) {
            return bad("supernode.probe_period_ms", "must be between 50 and 60000");
        }
        if self.supernode.idle_timeout_secs > u64::from(u16::MAX) {
            return bad("supernode.idle_timeout_secs", "must be at most 65535");
        }
        let mut names = std::collections::HashSet::new();
        for (i, n) in self.supernode.nodes.iter().enumerate() {
            if n.name.is_empty() || n.name.len() > 64 {
                return bad(&format!("supernode.nodes[{i}].name"), "must be 1 to 64 characters");
            }
            if !names.insert(&n.name) {
                return bad(&format!("supernode.nodes[{i}].name"), "is used by two nodes");
            }
            if n.udp.ip().is_unspecified() && n.public_ip.is_none() {
                return bad(
                    &format!("supernode.nodes[{i}].public_ip"),
                    "is required when udp binds a wildcard address",
                );
            }
            if n.gossip.is_some() && self.supernode.cluster_secret.is_none() {
                return bad("supernode.cluster_secret", &format!("is required: supernode.nodes[{i}] gossips"));
            }
        }
        if !(10..crate::index::store::PRESENCE_TTL_SECS_DEFAULT).contains(&self.host.presence_refresh_secs) {
            return bad(
                "host.presence_refresh_secs",
                "must be at least 10 and below the 900 s presence TTL (others would see the host go offline)",
            );
        }
        let r = &self.supernode.relay;
        if r.idle_timeout_secs == 0 || r.idle_timeout_secs > u64::from(u16::MAX) {
            return bad("supernode.relay.idle_timeout_secs", "must be between 1 and 65535");
        }
        if r.workers > crate::relay::worker::WORKERS_MAX {
            return bad(
                "supernode.relay.workers",
                &format!("must be at most {} (0: one per core)", crate::relay::worker::WORKERS_MAX),
            );
        }
        if r.sessions_per_host_max == 0 {
            return bad("supernode.relay.sessions_per_host_max", "must be at least 1");
        }
        if r.sessions_per_user_max < r.sessions_per_host_max {
            return bad(
                "supernode.relay.sessions_per_user_max",
                "must be at least supernode.relay.sessions_per_host_max",
            );
        }
        if r.sessions_per_source_max < r.sessions_per_host_max {
            return bad(
                "supernode.relay.sessions_per_source_max",
                "must be at least supernode.relay.sessions_per_host_max",
            );
        }
        if !(1..=crate::relay::mmsg::BATCH_MAX).contains(&r.batch) {
            return bad("supernode.relay.batch", &format!("must be between 1 and {}", crate::relay::mmsg::BATCH_MAX));
        }
        if r.read_budget == 0 {
            return bad("supernode.relay.read_budget", "must be at least 1");
        }
        if r.dscp > 63 {
            return bad(
                "supernode.relay.dscp",
                "must be a 6-bit DSCP code point (0 to 63; 46 is Expedited Forwarding)",
            );
        }
        if self.host.step_timeout_ms == 0 {
            return bad("host.step_timeout_ms", "must be at least 1");
        }
        if self.host.attempts_max == 0 {
            return bad("host.attempts_max", "must be at least 1");
        }
        Ok(())
    }
}

fn one_line(e: &figment::Error) -> String {
    // figment reports every error; the first names its key, which is what a person needs.
    let first = e.clone().into_iter().next().unwrap_or_else(|| e.clone());
    let key = if first.path.is_empty() { String::new() } else { format!("{}: ", first.path.join(".")) };
    let source = first.metadata.as_ref().map(|m| format!(" (from {})", m.name)).unwrap_or_default();
    format!("{key}{}{source}", first.kind)
}

/// Resolves a path from the config (relative to its file, or to the working folder).
pub fn path(p: &RelativePathBuf) -> PathBuf {
    p.relative()
}

#[cfg(test)]
// figment's Jail API returns its large error type by value; that is its signature, not ours.
#[allow(clippy::result_large_err)]
mod tests {
    use super::*;

    #[test]
    fn defaults_validate() {
        Config::default().validate().unwrap();
    }

    #[test]
    fn the_shipped_files_load_and_the_load_test_file_lifts_only_one_source_limits() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("config");
        let base = Config::load(&[dir.join("confab.toml")]).unwrap();
        let load = Config::load(&[dir.join("confab.toml"), dir.join("loadtest.toml")]).unwrap();
        let (b, l) = (&base.login_server.throttle, &load.login_server.throttle);
        assert!(l.registrations_burst > 1_000_000 && l.surge_requests_per_sec > 1_000_000);
        assert_eq!((l.source_refuse_after, l.user_puzzle_after), (b.source_refuse_after, b.user_puzzle_after));
    }

    #[test]
    fn a_bad_throttle_value_names_its_key() {
        let mut c = Config::default();
        c.login_server.throttle.puzzle_bits = 0;
        let e = c.validate().unwrap_err().to_string();
        assert!(e.contains("login_server.throttle.puzzle_bits"), "{e}");
        let mut c = Config::default();
        c.supernode.tcp_connections_per_source_max = c.supernode.tcp_connections_max + 1;
        assert!(c.validate().unwrap_err().to_string().contains("supernode.tcp_connections_per_source_max"));
    }

    #[test]
    fn bad_value_names_its_key() {
        figment::Jail::expect_with(|jail| {
            jail.create_file("c.toml", "[login_server]\nlisten = \"not an address\"\n")?;
            let e = Config::load(&["c.toml".into()]).unwrap_err().to_string();
            assert!(e.contains("login_server.listen"), "{e}");
            assert!(!e.contains('\n'), "one line: {e}");
            jail.create_file("d.toml", "[supernode]\nkeepalive_secs = 100\n")?;
            let e = Config::load(&["d.toml".into()]).unwrap_err().to_string();
            assert!(e.contains("supernode.keepalive_secs"), "{e}");
            jail.create_file("e.toml", "[host]\nbootstrapp = []\n")?;
            let e = Config::load(&["e.toml".into()]).unwrap_err().to_string();
            assert!(e.contains("bootstrapp"), "unknown keys are named: {e}");
            jail.create_file("f.toml", "[supernode.relay]\nidle_timeout_secs = 0\n")?;
            let e = Config::load(&["f.toml".into()]).unwrap_err().to_string();
            assert!(e.contains("supernode.relay.idle_timeout_secs"), "{e}");
            for (key, value) in [("batch", "0"), ("batch", "64"), ("read_budget", "0"), ("dscp", "64")] {
                jail.create_file("r.toml", &format!("[supernode.relay]\n{key} = {value}\n"))?;
                let e = Config::load(&["r.toml".into()]).unwrap_err().to_string();
                assert!(e.contains(&format!("supernode.relay.{key}")), "{e}");
            }
            jail.create_file("g.toml", "[host]\npresence_refresh_secs = 3600\n")?;
            let e = Config::load(&["g.toml".into()]).unwrap_err().to_string();
            assert!(e.contains("host.presence_refresh_secs"), "{e}");
            Ok(())
        });
    }

    #[test]
    fn cluster_and_repair_limits_name_their_keys() {
        figment::Jail::expect_with(|jail| {
            for (table, key, value) in [
                ("supernode.cluster", "hello_interval_ms", "0"),
                ("supernode.cluster", "pending_per_peer_max", "0"),
                ("supernode.index", "repair_bytes_per_answer_max", "10"),
                ("supernode.index", "repair_bytes_per_peer_per_sec", "10"),
                ("supernode.index", "postings_refresh_secs", "90000"),
                ("supernode.revocation", "fetch_interval_secs", "0"),
                ("supernode.revocation", "gossip_interval_ms", "10"),
            ] {
                jail.create_file("k.toml", &format!("[{table}]\n{key} = {value}\n"))?;
                let e = Config::load(&["k.toml".into()]).unwrap_err().to_string();
                assert!(e.contains(&format!("{table}.{key}")), "{e}");
            }
            Ok(())
        });
    }

    #[test]
    fn layering_env_over_file_and_relative_paths() {
        figment::Jail::expect_with(|jail| {
            jail.create_dir("etc")?;
            jail.create_file("etc/c.toml", "[login_server]\nlisten = \"127.0.0.1:1000\"\nkey = \"keys/login.pem\"\n")?;
            jail.set_env("CONFAB_LOGIN_SERVER__LISTEN", "127.0.0.1:2000");
            jail.set_env("CONFAB_PASSWORD", "not a setting");
            let c = Config::load(&["etc/c.toml".into()]).unwrap();
            assert_eq!(c.login_server.listen.port(), 2000);
            assert!(path(&c.login_server.key).ends_with("etc/keys/login.pem"));
            Ok(())
        });
    }
}
