//! The host: a user's node. A library first; `confab host …` is a thin CLI on top.
//!
//! - [`home`] — the home folder: key pair, port P, host cache file.
//! - [`cache`] — the host cache (≤ 200 nodes), written atomically.
//! - [`ladder`] — the connection ladder of the original network, as a plan.
//! - [`handshake`] — the super-node handshake, host side, as a state machine.
//! - [`connect`] — running the ladder over real sockets; NAT discovery.
//! - [`account`] — register and log in with the login server.
//! - [`link`] — a bare link to a super node on a task of its own (the load test's light hosts).
//! - [`core`] — the host as one sans-IO machine: link, ladder, calls, buddies.
//! - [`shell`] — the session's driver: port P, the TCP connections, the timer, the effects.
//! - [`session`] — [`Session`], the application's handle on the core.
//! - [`liveness`] — when a link's super node is taken for gone, as plain state.
//! - [`buddies`] — the buddy list's types and events.
//! - [`calls`] — calls' public types (states, reports, ids).

pub mod account;
pub mod buddies;
pub mod cache;
pub mod calls;
pub mod connect;
pub mod core;
pub mod handshake;
pub mod home;
pub mod interfaces;
pub mod ladder;
pub mod link;
pub mod liveness;
pub mod media;
pub mod media_gate;
pub mod probe_sockets;
pub mod session;
pub mod shell;
pub mod udp6;

use crate::crypto::credential::TrustedKeys;
use crate::crypto::password;
use crate::index::{Entry, Profile, Status};
use crate::nat::NatKind;
use account::{AccountError, LoginServers};
use cache::{CacheEntry, HostCache, NodeKind};
use connect::{AttemptLog, LadderError, Timeouts};
use home::Home;
use ladder::LadderConfig;
pub use session::Session;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;
use tokio::net::{TcpListener, UdpSocket};

/// Everything a host needs to know about the network.
#[derive(Debug, Clone)]
pub struct HostSettings {
    /// Login servers, tried in order.
    pub login_servers: Vec<SocketAddr>,
    /// Trusted login-server keys.
    pub trusted: TrustedKeys,
    /// The ladder's bootstrap nodes and limits.
    pub ladder: LadderConfig,
    /// Ladder timeouts.
    pub timeouts: Timeouts,
    /// Timeout of one login-server request.
    pub login_timeout: Duration,
    /// How often a long-running host republishes its presence and tells its buddies.
    pub presence_refresh: Duration,
    /// To whom a call offers our interface addresses.
    pub local_candidates: crate::config::LocalCandidates,
}

impl HostSettings {
    /// The settings a host configuration (`[host]`) describes, as `confab host` uses them.
    pub fn from_config(c: &crate::config::HostConfig) -> anyhow::Result<Self> {
        Ok(Self {
            login_servers: c.login_servers.clone(),
            trusted: crate::network::trusted_keys(&c.trusted_login_keys, "host.trusted_login_keys")?,
            ladder: LadderConfig {
                bootstrap: c.bootstrap.clone(),
                fallback_ports: c.fallback_ports.clone(),
                udp_failures_max: c.udp_failures_max,
                attempts_max: c.attempts_max,
            },
            timeouts: Timeouts {
                step: Duration::from_millis(c.step_timeout_ms),
                budget: Duration::from_secs(c.connect_budget_secs),
            },
            login_timeout: Duration::from_secs(c.login_timeout_secs),
            presence_refresh: Duration::from_secs(c.presence_refresh_secs),
            local_candidates: c.local_candidates,
        })
    }
}

/// Why a host command failed.
#[derive(Debug, thiserror::Error)]
pub enum HostError {
    /// The login server refused or could not be reached.
    #[error(transparent)]
    Account(#[from] AccountError),
    /// No super node took us.
    #[error(transparent)]
    Ladder(#[from] LadderError),
    /// Local trouble (home folder, port in use).
    #[error(transparent)]
    Local(#[from] anyhow::Error),
    /// The super node refused a request, or answered nonsense.
    #[error("{0}")]
    Refused(String),
}

/// What `confab host login` reports.
#[derive(Debug, Clone, serde::Serialize)]
pub struct LoginReport {
    /// The username as registered.
    pub user: String,
    /// The super node's name (from its credential).
    pub supernode: String,
    /// The super node's address.
    pub supernode_addr: SocketAddr,
    /// `udp` or `tcp`.
    pub transport: &'static str,
    /// Our address as the super node sees it.
    pub public_addr: SocketAddr,
    /// NAT classification.
    pub nat: NatKind,
    /// When the credential expires (RFC 3339).
    pub credential_expires: String,
    /// The same, in Unix seconds.
    pub credential_expires_unix: u64,
    /// Our port P (UDP and TCP).
    pub local_port: u16,
    /// Handshake round trip to the super node, in milliseconds.
    pub rtt_ms: f64,
    /// The login server's newest version.
    pub latest_version: String,
    /// Whether that is newer than ours.
    pub update_available: bool,
    /// Every attempt of the ladder.
    pub attempts: Vec<AttemptLog>,
}

/// Binds port P (UDP and TCP). A session of this process that was just dropped may
/// still hold it for a moment (its tasks are torn down asynchronously): retry briefly.
async fn bind_port(port: u16, home: &Home) -> anyhow::Result<(UdpSocket, TcpListener)> {
    let addr = SocketAddr::from((Ipv4Addr::UNSPECIFIED, port));
    let mut tries = 0;
    loop {
        let bound = match UdpSocket::bind(addr).await {
            Ok(u) => TcpListener::bind(addr).await.map(|t| (u, t)),
            Err(e) => Err(e),
        };
        match bound {
            Ok(b) => return Ok(b),
            Err(e) if e.kind() == std::io::ErrorKind::AddrInUse && tries < 50 => {
                tries += 1;
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            Err(e) => {
                anyhow::bail!("cannot listen on port {port} (is another host using {}?): {e}", home.dir().display())
            }
        }
    }
}

/// Connections port P holds at once: a host answers a few peers, never a crowd.
const DIRECT_CONNECTIONS_MAX: usize = 64;
/// Connections port P holds at once from one source.
const DIRECT_CONNECTIONS_PER_SOURCE_MAX: usize = 4;

/// Serves the host's own TCP port P. Direct calls between public hosts will use it; for
/// now a peer that connects is told, in protocol terms, that this host takes no direct
/// requests yet, instead of being left hanging.
/// A peer keys the header obfuscation with the address it dialed: our local address if it
/// reached us directly, our public address if through our NAT's port mapping.
fn serve_direct(listener: TcpListener, public: SocketAddr) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let addr = listener.local_addr().unwrap_or(public);
        let slots =
            crate::net::tcp::Slots::new("host", addr, DIRECT_CONNECTIONS_MAX, DIRECT_CONNECTIONS_PER_SOURCE_MAX);
        loop {
            let Ok((mut stream, peer)) = listener.accept().await else {
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            };
            let Some(slot) = slots.admit(&stream, peer) else { continue };
            tokio::spawn(async move {
                let _slot = slot;
                let Ok(local) = stream.local_addr() else { return };
                let read = tokio::time::timeout(Duration::from_secs(5), crate::net::tcp::read_frame(&mut stream));
                let Ok(Ok(Some(bytes))) = read.await else { return };
                let dialed = [local, SocketAddr::new(public.ip(), local.port())]
                    .into_iter()
                    .find(|a| crate::wire::frame::decode(*a, &bytes).is_ok());
                if let Some(local) = dialed {
                    let e = crate::wire::message::ErrorMsg::new(
                        crate::wire::ErrorCode::Unsupported,
                        "this host takes no direct requests yet",
                    );
                    let f = crate::wire::frame::encode_plain(local, crate::wire::MessageKind::Error, 0, &e.encode());
                    let _ = crate::net::tcp::write_frame(&mut stream, &f).await;
                }
                tracing::debug!(%peer, "direct connection on port P answered and closed");
            });
        }
    })
}

/// A user found in the Global Index, as others see them.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Found {
    /// The username as registered.
    pub user: String,
    /// The status shown (invisible and stale entries show as offline).
    pub status: Status,
    /// Unix seconds the user was last seen online.
    pub last_seen: u64,
    /// The super node the user was connected to.
    pub supernode: String,
    /// The user's public address: only for an authorized buddy who told us (the index
    /// copy of an entry carries none); None when offline.
    pub public_addr: Option<SocketAddr>,
    /// The user's NAT kind.
    pub nat: NatKind,
    /// The profile.
    pub profile: Profile,
    /// Super nodes the lookup asked.
    pub asked: u16,
    /// The lookup stage that found the user.
    pub stage: String,
}

impl Found {
    fn from_entry(e: &Entry, asked: u16, stage: String) -> Self {
        Self {
            user: e.user.clone(),
            status: crate::index::store::shown_status(
                e,
                crate::unix_now(),
                crate::index::store::PRESENCE_TTL_SECS_DEFAULT,
            ),
            last_seen: e.last_seen,
            supernode: e.supernode.clone(),
            public_addr: e.public_addr,
            nat: e.nat,
            profile: e.profile.clone(),
            asked,
            stage,
        }
    }
}

fn now_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

impl HostSettings {
    fn login_servers(&self, cache: &HostCache) -> LoginServers {
        let mut addrs = self.login_servers.clone();
        for e in cache.entries().iter().filter(|e| e.kind == NodeKind::LoginServer) {
            if let Some(a) = e.tcp
                && !addrs.contains(&a)
            {
                addrs.push(a);
            }
        }
        LoginServers { addrs, trusted: self.trusted.clone(), timeout: self.login_timeout }
    }
}

/// Registers `username` with `password` (checked for length first).
pub async fn register(
    settings: &HostSettings,
    home: &Home,
    username: &str,
    password: &str,
) -> Result<String, HostError> {
    crate::login::username::canonical(username).map_err(|e| anyhow::anyhow!("{e}"))?;
    crate::login::username::check_password(password).map_err(|e| anyhow::anyhow!("{e}"))?;
    let cache = HostCache::load(&home.cache_path());
    let keys = derive_keys(username, password).await;
    let user_keys = crate::crypto::user::UserKeys::derive(&keys.list).public();
    Ok(account::register(&settings.login_servers(&cache), username, &keys.shared, user_keys).await?)
}

async fn derive_keys(username: &str, password: &str) -> password::PasswordKeys {
    let (u, p) = (username.to_owned(), password.to_owned());
    tokio::task::spawn_blocking(move || password::derive(&u, &p)).await.expect("argon2 task")
}

/// How long login waits, once a super node took us, for our entry to be published and the
/// buddy list read (the login server's own timeouts end it sooner when it cannot be
/// reached).
const LOGIN_LIST_WAIT: Duration = Duration::from_secs(30);

/// Logs in: credential from the login server (argon2 and the login here), then the
/// host's core runs the ladder to a super node and NAT discovery; returns once a super
/// node took us, our entry is published and the buddy list read.
pub async fn login(settings: &HostSettings, home: &Home, username: &str, password: &str) -> Result<Session, HostError> {
    let key = {
        let home = home.clone();
        tokio::task::spawn_blocking(move || home.key()).await.expect("key task")?
    };
    let port = home.port()?;
    let (udp, tcp_listener, port) = match bind_port(port, home).await {
        Ok((u, t)) => (u, t, port),
        // Something else took our port since we last used it (or since we picked it: a
        // free port can be taken before it is bound): move to another, as a user expects.
        Err(e) => {
            let next = home.new_port()?;
            tracing::warn!(error = %e, port, next, "port P is taken; moving to another");
            let (u, t) = bind_port(next, home).await?;
            (u, t, next)
        }
    };
    let udp = Arc::new(udp);

    let mut cache = HostCache::load(&home.cache_path());
    let keys = derive_keys(username, password).await;
    let secret = keys.shared;
    let mut servers = settings.login_servers(&cache);
    let last_supernode =
        cache.supernodes().into_iter().find(|e| e.last_success.is_some()).map(|e| e.name).unwrap_or_default();
    let user_keys = crate::crypto::user::UserKeys::derive(&keys.list).public();
    let logged_in = account::login(&servers, username, &secret, &key, &last_supernode, user_keys).await?;
    // Later requests (buddy operations, revocation lists) are wrapped for the key the login
    // server signs with now: during a key rotation, the new one, even if listed second.
    servers.trusted = servers.trusted.preferring(logged_in.credential.issuer);
    cache.record_success(
        CacheEntry {
            kind: NodeKind::LoginServer,
            name: String::new(),
            udp: None,
            tcp: Some(logged_in.server),
            last_success: None,
            rtt_ms: None,
            failures: 0,
        },
        0,
        crate::unix_now(),
    );
    tracing::info!(server = %logged_in.server, expires = logged_in.credential.expires_at, "credential received");

    let expires = logged_in.credential.expires_at;
    let placeholder = SocketAddr::from((Ipv4Addr::UNSPECIFIED, port));
    let report = LoginReport {
        user: logged_in.credential.subject.clone(),
        supernode: String::new(),
        supernode_addr: placeholder,
        transport: "",
        public_addr: placeholder,
        nat: NatKind::Unknown,
        credential_expires: humantime::format_rfc3339_seconds(std::time::UNIX_EPOCH + Duration::from_secs(expires))
            .to_string(),
        credential_expires_unix: expires,
        local_port: port,
        rtt_ms: 0.0,
        update_available: account::is_newer(&logged_in.latest_version, crate::VERSION),
        latest_version: logged_in.latest_version,
        attempts: Vec::new(),
    };
    let (media6_tx, media6) = tokio::sync::mpsc::channel(udp6::QUEUED_MAX);
    let udp6 = udp6::Udp6::open(port, media6_tx);
    let status = match home.status() {
        Status::Offline => Status::Online,
        s => s,
    };
    let history_path = home.chat_history_path(&logged_in.credential.subject);
    // The history's epoch names this device's message stream; opening also makes the file.
    let history_epoch = match crate::chat::history::History::open(&history_path) {
        Ok(h) => h.epoch(),
        Err(e) => {
            // Chat will say so at its first write; calls and files do not need the file.
            tracing::warn!(path = %history_path.display(), error = %e, "the chat history does not open");
            0
        }
    };
    let cfg = core::HostConfig {
        ladder: core::ladder::LadderSettings {
            ladder: settings.ladder.clone(),
            timeouts: settings.timeouts.clone(),
            local_port: port,
        },
        calls: core::calls::CallsConfig {
            timeouts: crate::call::signal::Timeouts::default(),
            relay_only: false,
            relay_tcp: false,
            local_candidates: settings.local_candidates,
        },
        status,
        profile: home.profile(),
        interfaces: interfaces::addresses(),
        v6: udp6.is_some(),
        list_key: keys.list,
        login_timeout: settings.login_timeout,
        login_servers: servers.addrs.len(),
        presence_refresh: settings.presence_refresh,
        history_epoch,
    };
    let me = core::ladder::Identity {
        trusted: settings.trusted.clone(),
        credential: logged_in.credential.clone(),
        key: key.clone(),
    };
    let seed: [u8; 32] = crate::crypto::random::bytes();
    let now = core::Now { mono: std::time::Instant::now(), unix_ms: now_ms() };
    let host = core::HostCore::new(me, cfg, cache.cache().clone(), report, now, rand::SeedableRng::from_seed(seed));
    let io = shell::ShellIo {
        udp,
        udp6: udp6.as_ref().map(udp6::Udp6::shared),
        media6,
        login: shell::LoginIo { servers, credential: logged_in.credential.clone(), key: key.clone() },
        cache_path: home.cache_path(),
        history_path,
    };
    let mut shell = shell::Shell::start(host, io);
    // The ladder, then NAT discovery after a UDP login.
    loop {
        match shell.read(|c| c.phase().clone()) {
            core::host::Phase::Online => break,
            core::host::Phase::LoggingIn => shell.events_changed().await,
            core::host::Phase::Failed(why) => {
                let e = shell.change(core::HostCore::take_login_error);
                shell.stop().await;
                return Err(match e {
                    Some(e) => HostError::Ladder(e),
                    None => HostError::Refused(why),
                });
            }
            core::host::Phase::LoggedOut => return Err(HostError::Refused("logged out during login".into())),
        }
    }
    let report = shell.read(|c| c.report().clone());
    let public_addr = report.public_addr;
    let session = Session {
        report,
        shell,
        direct: serve_direct(tcp_listener, public_addr),
        credential: logged_in.credential,
        key,
        trusted: settings.trusted.clone(),
        _udp6: udp6,
    };
    // As the original's login sequence ends: our presence advertised (the core
    // published it on joining, with the status and profile it was given), then the buddy
    // list read, which the core began on joining (the buddies are told after it).
    let read = async {
        let published = loop {
            match session.shell.read(|c| c.buddies_core().own_publish().cloned()) {
                Some(outcome) => break outcome,
                None => session.shell.events_changed().await,
            }
        };
        match published {
            Ok(n) => tracing::info!(replicas = n, "presence published"),
            Err(e) => tracing::warn!(error = %e, "presence not published"),
        }
        while session.shell.read(|c| c.buddies_core().refreshing()) {
            session.shell.events_changed().await;
        }
    };
    if tokio::time::timeout(LOGIN_LIST_WAIT, read).await.is_err() {
        tracing::warn!("presence not published or buddy list not read yet");
    }
    Ok(session)
}
