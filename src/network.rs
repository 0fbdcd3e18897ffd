//! Starting the daemons from configuration, and `confab up`: a login server and several
//! super nodes in one process, on one address, with a host configuration written for them.

use crate::config::{self, Config};
use crate::crypto::PublicKey;
use crate::crypto::credential::{CredentialKind, TrustedKeys};
use crate::login::{AccountStore, LoginPolicy, LoginServer, LoginService};
use crate::supernode::{BoundNode, Identity, NodeAddrs, NodeSpec, RunningNode, SessionParams};
use crate::telemetry::MetricsServer;
use crate::wire::message::SupernodeInfo;
use anyhow::Context;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use tokio_util::sync::CancellationToken;

/// Builds the login service from configuration (opens the database, loads the key).
pub fn login_service(cfg: &config::LoginServerConfig) -> anyhow::Result<LoginService> {
    let key_path = config::path(&cfg.key);
    let key = crate::crypto::PrivateKey::read_pem_file(&key_path)
        .with_context(|| format!("login_server.key: {} (make one with `confab keygen login`)", key_path.display()))?
        .with_backend(cfg.rsa_backend);
    let db = config::path(&cfg.database);
    let store = AccountStore::open(&db).with_context(|| format!("login_server.database: {}", db.display()))?;
    let policy = LoginPolicy {
        credential_lifetime_secs: cfg.credential_lifetime_secs,
        replay_window_secs: cfg.replay_window_secs,
        latest_version: cfg.latest_version.clone(),
        throttle: cfg.throttle.clone(),
    };
    let mut previous = Vec::new();
    for (i, p) in cfg.previous_keys.iter().enumerate() {
        let path = config::path(p);
        previous.push(
            crate::crypto::PrivateKey::read_pem_file(&path)
                .with_context(|| format!("login_server.previous_keys[{i}]: {}", path.display()))?
                .with_backend(cfg.rsa_backend),
        );
    }
    Ok(LoginService::new(key, store, policy).with_previous_keys(previous))
}

/// Loads trusted login keys.
pub fn trusted_keys(paths: &[figment::value::magic::RelativePathBuf], key: &str) -> anyhow::Result<TrustedKeys> {
    let mut keys = Vec::new();
    for (i, p) in paths.iter().enumerate() {
        let path = config::path(p);
        keys.push(PublicKey::read_pem_file(&path).with_context(|| format!("{key}[{i}]: {}", path.display()))?);
    }
    if keys.is_empty() {
        anyhow::bail!("{key}: at least one trusted login key is needed");
    }
    Ok(TrustedKeys::new(keys))
}

/// Session parameters from configuration.
pub fn session_params(cfg: &config::SupernodeConfig) -> SessionParams {
    SessionParams {
        keepalive_secs: cfg.keepalive_secs,
        idle_timeout_secs: cfg.idle_timeout_secs,
        hosts_max: cfg.hosts_max,
        handshakes_max: cfg.handshakes_max,
        handshakes_per_source_max: cfg.handshakes_per_source_max,
        stun_per_source_per_sec: cfg.stun_per_source_per_sec,
        tcp_connections_max: cfg.tcp_connections_max,
        tcp_connections_per_source_max: cfg.tcp_connections_per_source_max,
        udp_recv_buffer_bytes: cfg.udp_recv_buffer_bytes,
    }
}

/// Loads one node's identity and checks its credential against the trusted keys.
pub fn node_identity(n: &config::NodeConfig, trusted: &TrustedKeys, i: usize) -> anyhow::Result<Identity> {
    let key_path = config::path(&n.key);
    let key = crate::crypto::PrivateKey::read_pem_file(&key_path)
        .with_context(|| format!("supernode.nodes[{i}].key: {}", key_path.display()))?;
    let cred_path = config::path(&n.credential);
    let cred =
        crate::keygen::read_credential(&cred_path).with_context(|| format!("supernode.nodes[{i}].credential"))?;
    cred.verify(trusted, CredentialKind::SuperNode, crate::unix_now())
        .with_context(|| format!("supernode.nodes[{i}].credential: {}", cred_path.display()))?;
    if cred.public_key != *key.public() {
        anyhow::bail!("supernode.nodes[{i}].credential: certifies another key than supernode.nodes[{i}].key");
    }
    if cred.subject != n.name {
        anyhow::bail!("supernode.nodes[{i}].name: {:?} but the credential is for {:?}", n.name, cred.subject);
    }
    // Each node honours the revocation lists it verified itself, even beside others in
    // one process.
    Ok(Identity::new(n.name.clone(), key, cred, trusted.with_own_revocations()))
}

/// Binds every node of the configuration; each announces the others and the static peers.
pub async fn start_supernodes(
    cfg: &config::SupernodeConfig,
    shutdown: &CancellationToken,
) -> anyhow::Result<Vec<RunningNode>> {
    let trusted = trusted_keys(&cfg.trusted_login_keys, "supernode.trusted_login_keys")?;
    let params = session_params(cfg);
    let key = match &cfg.cluster_secret {
        Some(p) => Some(crate::cluster::gossip::ClusterKey::from_secret(
            &crate::keygen::read_cluster_secret(&config::path(p)).context("supernode.cluster_secret")?,
        )),
        None => None,
    };
    let mut bound = Vec::new();
    for (i, n) in cfg.nodes.iter().enumerate() {
        let spec = NodeSpec {
            identity: node_identity(n, &trusted, i)?,
            udp: n.udp,
            tcp: n.tcp,
            probe_udp: n.probe_udp,
            fallback_tcp: n.fallback_tcp.clone(),
            public_ip: n.public_ip,
            params: params.clone(),
            cluster: match (n.gossip, &key) {
                (Some(gossip), Some(key)) => Some(crate::supernode::node::ClusterSpec {
                    gossip,
                    seeds: cfg.seeds.clone(),
                    key: key.clone(),
                    limits: cfg.cluster.clone(),
                    probe_period: std::time::Duration::from_millis(cfg.probe_period_ms),
                    index: cfg.index.clone(),
                    revocation: cfg.revocation.clone(),
                }),
                _ => None,
            },
            relay: n.relay.map(|a| (a, cfg.relay.clone())),
        };
        bound.push(BoundNode::bind(spec).await.with_context(|| format!("supernode.nodes[{i}]"))?);
    }
    let infos: Vec<SupernodeInfo> = bound.iter().map(BoundNode::info).collect();
    // The nodes of one process seed each other's gossip.
    let siblings: Vec<SocketAddr> = bound.iter().filter_map(|b| b.addrs().gossip).collect();
    let statics: Vec<SupernodeInfo> =
        cfg.peers.iter().map(|p| SupernodeInfo { name: p.name.clone(), udp: p.udp, tcp: p.tcp }).collect();
    Ok(bound
        .into_iter()
        .map(|b| {
            let me = b.info();
            let peers = infos.iter().filter(|i| **i != me).chain(statics.iter()).cloned().collect();
            b.start(peers, &siblings, shutdown.clone())
        })
        .collect())
}

/// Options of `confab up`.
#[derive(Debug, Clone)]
pub struct UpOptions {
    /// Folder for keys, credentials, the account database and `host.toml`.
    pub data: PathBuf,
    /// The one address everything listens on.
    pub bind: IpAddr,
    /// First port: login server on it, super node i on base+3+10i (UDP/TCP),
    /// base+4+10i (alternate UDP) and base+5+10i (gossip). 0: every port ephemeral.
    pub base_port: u16,
    /// How many super nodes.
    pub supernodes: usize,
    /// The metrics endpoint (None: not served).
    pub metrics: Option<SocketAddr>,
    /// Key size for keys generated on first start.
    pub key_bits: usize,
    /// Settings the `config` layer provides (log, super-node limits, login policy).
    pub config: Config,
    /// Super nodes are named `<prefix>1`, `<prefix>2`, … (`sn` for `confab up`). Tests give
    /// each network its own, so every metric a network's nodes export is labelled as its.
    pub name_prefix: String,
}

/// What a running local network listens on.
#[derive(Debug, Clone, serde::Serialize)]
pub struct UpInfo {
    /// The login server (TCP).
    pub login_server: SocketAddr,
    /// The super nodes.
    pub supernodes: Vec<NodeAddrs>,
    /// The metrics endpoint URL.
    pub metrics: Option<String>,
    /// The host configuration written for this network.
    pub host_config: PathBuf,
    /// The data folder.
    pub data: PathBuf,
}

/// A running local network.
pub struct Network {
    /// Where everything listens.
    pub info: UpInfo,
    shutdown: CancellationToken,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    running: Vec<RunningNode>,
    supernode_cfg: config::SupernodeConfig,
}

fn port(base: u16, offset: u16) -> u16 {
    if base == 0 { 0 } else { base + offset }
}

/// Starts a whole network (must run inside an actix System).
pub async fn up(opts: UpOptions) -> anyhow::Result<Network> {
    crate::fsutil::private_dir(&opts.data).with_context(|| format!("--data {}", opts.data.display()))?;
    let data = opts.data.canonicalize()?;
    let login_stem = data.join("login");
    let login_key = crate::keygen::load_or_generate(&login_stem, opts.key_bits)?;
    let (_, login_pub) = crate::keygen::key_paths(&login_stem);
    let shutdown = CancellationToken::new();
    let mut tasks = Vec::new();
    if opts.metrics.is_some() {
        // Before anything describes its metrics: descriptions given to no recorder are lost.
        crate::telemetry::metrics_handle();
    }

    let mut cfg = opts.config.clone();
    cfg.login_server.listen = SocketAddr::new(opts.bind, port(opts.base_port, 0));
    cfg.login_server.public_addr = None;
    cfg.login_server.key = login_stem.with_extension("key.pem").into();
    cfg.login_server.database = data.join("accounts.sqlite").into();
    let service = Arc::new(login_service(&cfg.login_server)?);
    let login = LoginServer::bind(service, cfg.login_server.listen, None, cfg.login_server.connection_limits()).await?;
    let login_addr = login.addr();
    tasks.push(actix_rt::spawn(login.run(shutdown.clone())));

    cfg.supernode.trusted_login_keys = vec![login_pub.clone().into()];
    cfg.supernode.nodes.clear();
    let secret = data.join("cluster.secret");
    if !secret.exists() {
        crate::keygen::generate_cluster_secret(&secret)?;
    }
    cfg.supernode.cluster_secret = Some(secret.into());
    cfg.supernode.index.directory = vec![login_addr];
    // A network on a loopback or private address has its hosts on such addresses too: its
    // relays must reach them. On any other address the relays keep refusing private peers
    // (a relay that forwards to them lets a stranger reach the operator's own network),
    // unless the configuration says otherwise.
    if !opts.bind.is_unspecified() && crate::relay::table::is_forbidden_peer(opts.bind) {
        cfg.supernode.relay.allow_private_peers = true;
        tracing::info!(bind = %opts.bind, "relays of this local network forward to private and loopback addresses");
    } else if cfg.supernode.relay.allow_private_peers {
        tracing::warn!(bind = %opts.bind, "supernode.relay.allow_private_peers is on: relays forward to private and loopback addresses");
    }
    if cfg.supernode.relay.workers == 0 {
        cfg.supernode.relay.workers = 1;
    }
    for i in 0..opts.supernodes {
        let name = format!("{}{}", opts.name_prefix, i + 1);
        let stem = data.join(&name);
        let key = crate::keygen::load_or_generate(&stem, opts.key_bits)?;
        // Re-issued at every start: cheap, and never stale.
        let cred = crate::keygen::certify_supernode(&login_key, &name, key.public(), 365, crate::unix_now());
        let cred_path = data.join(format!("{name}.cred"));
        crate::keygen::write_credential(&cred_path, &cred)?;
        let off = 3 + 10 * i as u16;
        cfg.supernode.nodes.push(config::NodeConfig {
            name,
            key: stem.with_extension("key.pem").into(),
            credential: cred_path.into(),
            udp: SocketAddr::new(opts.bind, port(opts.base_port, off)),
            tcp: SocketAddr::new(opts.bind, port(opts.base_port, off)),
            probe_udp: Some(SocketAddr::new(opts.bind, port(opts.base_port, off + 1))),
            fallback_tcp: Vec::new(),
            public_ip: None,
            gossip: Some(SocketAddr::new(opts.bind, port(opts.base_port, off + 2))),
            relay: Some(SocketAddr::new(opts.bind, port(opts.base_port, off + 3))),
        });
    }
    let running = start_supernodes(&cfg.supernode, &shutdown).await?;

    let metrics = match opts.metrics {
        Some(addr) => {
            let m = MetricsServer::bind(addr).await?;
            let url = format!("http://{}/metrics", m.addr());
            tasks.push(tokio::spawn(m.run(shutdown.clone())));
            Some(url)
        }
        None => None,
    };

    let host_config = data.join("host.toml");
    write_host_config(&host_config, login_addr, &login_pub, &running)?;
    let info = UpInfo {
        login_server: login_addr,
        supernodes: running.iter().map(|r| r.addrs.clone()).collect(),
        metrics,
        host_config,
        data,
    };
    Ok(Network { info, shutdown, tasks, running, supernode_cfg: cfg.supernode })
}

fn write_host_config(path: &Path, login: SocketAddr, login_pub: &Path, nodes: &[RunningNode]) -> anyhow::Result<()> {
    let bootstrap: Vec<String> = nodes.iter().map(|n| format!("{:?}", n.addrs.udp.to_string())).collect();
    let text = format!(
        "# Written by `confab up`: how a host reaches this local network.\n\
         # Use it with: confab host --config {} register alice\n\
         [host]\n\
         login_servers = [{:?}]\n\
         trusted_login_keys = [{:?}]\n\
         bootstrap = [{}]\n\
         # A local network has no listeners on 443/80.\n\
         fallback_ports = []\n",
        path.display(),
        login.to_string(),
        login_pub.display().to_string(),
        bootstrap.join(", "),
    );
    crate::fsutil::write_atomic(path, text.as_bytes(), 0o644).with_context(|| format!("writing {}", path.display()))
}

impl Network {
    /// The super nodes' shared state (for tests and status), in start order.
    pub fn nodes(&self) -> Vec<&Arc<crate::supernode::node::NodeShared>> {
        self.running.iter().map(|r| &r.shared).collect()
    }

    /// Stops super node `i` alone (its listeners and gossip), leaving the rest running.
    pub fn kill_node(&self, i: usize) {
        self.running[i].kill();
    }

    /// Starts super node `i` again after [`Network::kill_node`]: same identity, same
    /// addresses, seeded with the others' gossip addresses, as an operator restarting a
    /// crashed machine would.
    pub async fn restart_node(&mut self, i: usize) -> anyhow::Result<()> {
        let old = &self.running[i].addrs;
        let mut cfg = self.supernode_cfg.clone();
        let mut n = cfg.nodes[i].clone();
        n.udp = old.udp;
        n.tcp = *old.tcp.first().context("the node had no TCP listener")?;
        n.probe_udp = old.probe_udp;
        n.gossip = old.gossip;
        n.relay = old.relay;
        cfg.nodes = vec![n];
        cfg.seeds =
            self.running.iter().enumerate().filter(|(j, _)| *j != i).filter_map(|(_, r)| r.addrs.gossip).collect();
        // The crashed node's sockets close as its tasks wind down: retry for a moment.
        let mut tries = 0;
        let node = loop {
            match start_supernodes(&cfg, &self.shutdown).await {
                Ok(mut v) => break v.remove(0),
                Err(e) if tries < 40 => {
                    tries += 1;
                    tracing::debug!(error = %e, "restart: ports not free yet");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                }
                Err(e) => return Err(e),
            }
        };
        self.running[i] = node;
        Ok(())
    }

    /// Asks everything to stop.
    pub fn shutdown(&self) {
        self.shutdown.cancel();
    }

    /// A token that stops the network when cancelled.
    pub fn shutdown_token(&self) -> CancellationToken {
        self.shutdown.clone()
    }

    /// Stops everything and waits: sessions get a Bye, listeners close.
    pub async fn stop(self) {
        self.shutdown.cancel();
        for r in self.running {
            r.stopped().await;
        }
        for t in self.tasks {
            let _ = t.await;
        }
        // Let the actors deliver their Byes before the System goes.
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
}
