//! The host: a user's node. A library first; `confab host …` is a thin CLI on top.
//!
//! - [`home`] — the home folder: key pair, port P, host cache file.
//! - [`cache`] — the host cache (≤ 200 nodes), written atomically.
//! - [`ladder`] — the connection ladder of the original network, as a plan.
//! - [`handshake`] — the super-node handshake, host side, as a state machine.
//! - [`connect`] — running the ladder over real sockets; NAT discovery.
//! - [`account`] — register and log in with the login server.
//! - [`link`] — a bare link to a super node on a task of its own (the load test's light hosts).
//! - [`shell`] — the session's driver: port P, the link's core, the timer.
//! - [`liveness`] — when that link's super node is taken for gone, as plain state.
//! - [`buddies`] — the buddy list, presence pushed between buddies, events.
//! - [`calls`] — calls: the call state machine driven by messages through super nodes.

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
mod relay_tcp;
pub mod shell;
pub mod udp6;

use crate::crypto::credential::TrustedKeys;
use crate::crypto::password;
use crate::index::{Entry, EntryBody, Profile, Status};
use crate::nat::NatKind;
use crate::wire::ErrorCode;
use crate::wire::message::{FindReply, SeenRecord};
use account::{AccountError, LoginServers};
use cache::{CacheEntry, HostCache, NodeKind};
use connect::{AttemptLog, LadderError, Me, Timeouts};
use core::pending::{Answer, Request, RequestError};
use home::Home;
use ladder::{LadderConfig, Transport};
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

/// A logged-in host.
pub struct Session {
    /// What happened.
    pub report: LoginReport,
    /// The driver that owns port P and the link.
    shell: shell::Shell,
    direct: tokio::task::JoinHandle<()>,
    credential: crate::crypto::Credential,
    key: crate::crypto::PrivateKey,
    trusted: TrustedKeys,
    profile: Profile,
    status: Status,
    servers: LoginServers,
    list_key: crate::crypto::password::ListKey,
    buddies: buddies::BuddyBook,
    events: std::collections::VecDeque<buddies::Event>,
    listed_at: Option<tokio::time::Instant>,
    list_due: Option<tokio::time::Instant>,
    refreshed_at: tokio::time::Instant,
    presence_refresh: Duration,
    calls: calls::Calls,
    call_timeouts: crate::call::signal::Timeouts,
    media_clock: tokio::time::Interval,
    relay_only: bool,
    /// Reach relays over TCP even with UDP at hand.
    relay_tcp: bool,
    /// What connecting to another super node takes.
    rejoin: Rejoin,
    /// The key id of our super node's credential (left when it is revoked).
    supernode_key: crate::crypto::KeyId,
    /// Port P on IPv6, for media (None where the host has no IPv6).
    udp6: Option<udp6::Udp6>,
    /// How often the birthday technique ran lately.
    birthday: probe_sockets::BirthdayBudget,
}

/// What [`Session::reconnect`] needs from the login.
struct Rejoin {
    settings: HostSettings,
    cache_path: std::path::PathBuf,
    /// When the last attempt failed (the next waits a while).
    failed_at: Option<tokio::time::Instant>,
}

impl Drop for Session {
    fn drop(&mut self) {
        self.direct.abort();
    }
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

impl Session {
    /// Logs out: offline in the index and to online buddies, then a Bye to the super node.
    pub async fn logout(mut self) {
        // Others find us offline, with our last-seen time, for the retention window.
        let profile = self.profile.clone();
        if let Err(e) = self.publish(Status::Offline, &profile).await {
            tracing::debug!(error = %e, "offline status not published");
        }
        // Release port P before returning, so a new session can take it at once.
        self.direct.abort();
        let _ = (&mut self.direct).await;
        self.shell.bye().await;
    }

    /// One keepalive round trip; returns the address the super node sees.
    pub async fn keepalive(&mut self, timeout: Duration) -> Option<SocketAddr> {
        match self.shell.request(Request::Keepalive { timeout }).await {
            Ok(Answer::Observed(addr)) => Some(addr),
            _ => None,
        }
    }

    /// Signs our entry: `for_buddies` gives the real status and where to reach us. The
    /// index copy, which any account holder can look up, never carries our address, and
    /// an invisible host's looks like a logged-out one (offline).
    fn sign_entry(&self, status: Status, for_buddies: bool) -> Result<Entry, HostError> {
        let now_ms = now_ms();
        let hidden = !for_buddies && status == Status::Invisible;
        let shown = if hidden { Status::Offline } else { status };
        let body = EntryBody {
            user: self.credential.subject.clone(),
            credential: self.credential.encode(),
            status: shown,
            supernode: self.report.supernode.clone(),
            public_addr: (for_buddies && shown != Status::Offline).then_some(self.report.public_addr),
            nat: self.report.nat,
            profile: self.profile.clone(),
            last_seen: now_ms / 1000,
            timestamp_ms: now_ms,
        };
        Entry::sign(body, &self.credential, &self.key).map_err(|e| HostError::Refused(e.to_string()))
    }

    /// Sets our status and profile: publishes the entry in the Global Index and tells
    /// the buddies we know to be online (within a second, through the super nodes).
    /// Returns how many replicas the super node sent the entry to.
    pub async fn publish(&mut self, status: Status, profile: &Profile) -> Result<u8, HostError> {
        self.status = status;
        self.profile = profile.clone();
        let replicas = self.publish_index(status, profile).await;
        self.tell_buddies(false).await;
        replicas
    }

    /// What the session's driver dropped or could not deliver (datagrams on a full
    /// socket buffer, notices nobody read, failed notices).
    pub fn io_stats(&self) -> &shell::ShellStats {
        self.shell.stats()
    }

    /// Our status.
    pub fn status(&self) -> Status {
        self.status
    }

    /// Publishes our entry in the Global Index only.
    async fn publish_index(&mut self, status: Status, profile: &Profile) -> Result<u8, HostError> {
        self.profile = profile.clone();
        let entry = self.sign_entry(status, false)?;
        match self.shell.request(Request::Publish { entry: entry.encode() }).await {
            Ok(Answer::Published(ack)) if ack.code == 0 => Ok(ack.replicas),
            Ok(Answer::Published(ack)) => {
                Err(HostError::Refused(format!("{}: {}", ErrorCode::from_code(ack.code).label(), ack.detail)))
            }
            Err(RequestError::Refused(e)) => Err(HostError::Refused(e.detail)),
            other => Err(unanswered(other, "publish")),
        }
    }

    /// Looks a user up in the Global Index. `Ok(None)`: not found.
    pub async fn find(&mut self, user: &str) -> Result<Option<Found>, HostError> {
        let (r, entry) = self.lookup(user).await?;
        match entry {
            Some((e, _)) => {
                let mut found = Found::from_entry(&e, r.asked, r.stage.clone());
                // The index shows no address; an authorized buddy told us theirs.
                let now = crate::unix_now();
                if let Some(p) = self.buddies.contacts().into_iter().find_map(|b| {
                    (b.user.eq_ignore_ascii_case(user) && b.relation == crate::buddy::Relation::Authorized)
                        .then_some(b.presence)
                        .flatten()
                }) && p.shown(now) != Status::Offline
                {
                    found.public_addr = found.public_addr.or(p.public_addr);
                }
                Ok(Some(found))
            }
            None => self.found_in_directory(user, &r),
        }
    }

    /// The lookup itself: the super node's answer, and the entry with its credential once
    /// both verified here.
    async fn lookup(
        &mut self,
        user: &str,
    ) -> Result<(FindReply, Option<(Entry, crate::crypto::Credential)>), HostError> {
        let r = match self.shell.request(Request::Find { user: user.to_owned() }).await {
            Ok(Answer::Found(r)) => r,
            Err(RequestError::Refused(e)) => {
                return Err(HostError::Refused(format!("{}: {}", e.code.label(), e.detail)));
            }
            other => return Err(unanswered(other, "lookup")),
        };
        if r.entry.is_empty() {
            return Ok((r, None));
        }
        // Trust no super node: the entry must verify here too.
        let e = Entry::decode(&r.entry).map_err(|e| HostError::Refused(format!("malformed entry: {e}")))?;
        let credential = e
            .verify(&self.trusted, now_ms())
            .map_err(|e| HostError::Refused(format!("the entry found does not verify: {e}")))?;
        if e.key() != user.to_ascii_lowercase() {
            return Err(HostError::Refused("the super node answered with another user's entry".into()));
        }
        Ok((r, Some((e, credential))))
    }

    /// Not in the index: the login server's signed directory record, if the super node
    /// passed one on, still says when the user was last seen.
    fn found_in_directory(&self, user: &str, r: &FindReply) -> Result<Option<Found>, HostError> {
        if r.directory.is_empty() {
            return Ok(None);
        }
        let rec = SeenRecord::decode(&r.directory)
            .map_err(|e| HostError::Refused(format!("malformed directory record: {e}")))?;
        if !rec.verify(&self.trusted) || rec.user != user.to_ascii_lowercase() {
            return Err(HostError::Refused("the directory record does not verify".into()));
        }
        if !rec.found {
            return Ok(None);
        }
        Ok(Some(Found {
            user: rec.user,
            status: Status::Offline,
            last_seen: rec.last_seen,
            supernode: rec.supernode,
            public_addr: None,
            nat: NatKind::Unknown,
            profile: Profile::default(),
            asked: r.asked,
            stage: r.stage.clone(),
        }))
    }

    /// Searches users whose profile has every word (case and accents ignored); at most
    /// `limit` results, each verified here.
    pub async fn search(&mut self, words: &str, limit: u8) -> Result<Vec<Found>, HostError> {
        let results = match self.shell.request(Request::Search { words: words.to_owned(), limit }).await {
            Ok(Answer::Searched(parts)) => parts,
            Err(RequestError::Refused(e)) => return Err(HostError::Refused(e.detail)),
            other => return Err(unanswered(other, "search")),
        };
        let mut out = Vec::new();
        for bytes in results {
            let e = Entry::decode(&bytes).map_err(|e| HostError::Refused(format!("malformed entry: {e}")))?;
            // A result that does not verify is dropped, not believed.
            if e.verify(&self.trusted, now_ms()).is_ok() {
                out.push(Found::from_entry(&e, 0, "search".into()));
            }
        }
        Ok(out)
    }
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

/// The error for a request that got no answer of the kind it wanted.
fn unanswered(r: Result<Answer, RequestError>, what: &str) -> HostError {
    match r {
        Err(RequestError::TimedOut(_)) => HostError::Refused(format!("the super node did not answer the {what}")),
        Err(e) => HostError::Refused(format!("{what}: {e}")),
        Ok(a) => HostError::Refused(format!("{what}: an answer of another kind: {a:?}")),
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
    Ok(account::register(&settings.login_servers(&cache), username, &keys.shared).await?)
}

async fn derive_keys(username: &str, password: &str) -> password::PasswordKeys {
    let (u, p) = (username.to_owned(), password.to_owned());
    tokio::task::spawn_blocking(move || password::derive(&u, &p)).await.expect("argon2 task")
}

/// Logs in: credential from the login server, then the ladder to a super node, then
/// NAT discovery; updates the host cache.
pub async fn login(settings: &HostSettings, home: &Home, username: &str, password: &str) -> Result<Session, HostError> {
    let key = {
        let home = home.clone();
        tokio::task::spawn_blocking(move || home.key()).await.expect("key task")?
    };
    let port = home.port()?;
    let (udp, tcp_listener) = match bind_port(port, home).await {
        Ok(b) => b,
        // Something else took our port since we last used it (or since we picked it: a
        // free port can be taken before it is bound): move to another, as a user expects.
        Err(e) => {
            let next = home.new_port()?;
            tracing::warn!(error = %e, port, next, "port P is taken; moving to another");
            bind_port(next, home).await?
        }
    };
    let udp = Arc::new(udp);

    let mut cache = HostCache::load(&home.cache_path());
    let keys = derive_keys(username, password).await;
    let secret = keys.shared;
    let mut servers = settings.login_servers(&cache);
    let last_supernode =
        cache.supernodes().into_iter().find(|e| e.last_success.is_some()).map(|e| e.name).unwrap_or_default();
    let logged_in = account::login(&servers, username, &secret, &key, &last_supernode).await?;
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

    let plan = ladder::plan(&cache.supernodes(), &settings.ladder);
    let mut log = Vec::new();
    let me = Me { trusted: &settings.trusted, credential: &logged_in.credential, key: &key };
    let result = connect::run(&plan, &udp, &me, &settings.timeouts, &mut log).await;
    let connected = ladder_outcome(&mut cache, result, &log)?;
    let sn_addr = connected.session.addr;
    let (nat, public_addr) = match connected.attempt.transport {
        Transport::Udp => {
            let (nat, obs) = connect::discover_nat(&udp, &connected.session).await;
            tracing::info!(?obs, %nat, "NAT discovery");
            (nat, connected.session.welcome.observed)
        }
        Transport::Tcp => {
            // We only got here over TCP: UDP is blocked if no UDP attempt got any answer.
            let udp_answered = log.iter().any(|a| a.transport == "udp" && a.outcome != "timeout");
            (if udp_answered { NatKind::Unknown } else { NatKind::UdpBlocked }, connected.session.welcome.observed)
        }
    };
    let sn_name = connected.session.supernode.subject.clone();
    let supernode_key = connected.session.supernode.public_key.id();
    let expires = logged_in.credential.expires_at;
    let report = LoginReport {
        user: logged_in.credential.subject.clone(),
        supernode: sn_name,
        supernode_addr: sn_addr,
        transport: connected.attempt.transport.label(),
        public_addr,
        nat,
        credential_expires: humantime::format_rfc3339_seconds(std::time::UNIX_EPOCH + Duration::from_secs(expires))
            .to_string(),
        credential_expires_unix: expires,
        local_port: port,
        rtt_ms: connected.rtt.as_secs_f64() * 1000.0,
        update_available: account::is_newer(&logged_in.latest_version, crate::VERSION),
        latest_version: logged_in.latest_version,
        attempts: log,
    };
    let calls = calls::Calls::default();
    let udp6 = udp6::Udp6::open(port, calls.media6_sender());
    let mut session = Session {
        report,
        shell: shell::Shell::start(udp, udp6.as_ref().map(udp6::Udp6::shared), connected),
        direct: serve_direct(tcp_listener, public_addr),
        credential: logged_in.credential.clone(),
        key,
        trusted: settings.trusted.clone(),
        profile: home.profile(),
        status: Status::Online,
        servers,
        list_key: keys.list,
        buddies: buddies::BuddyBook::default(),
        events: std::collections::VecDeque::new(),
        listed_at: None,
        list_due: None,
        refreshed_at: tokio::time::Instant::now(),
        presence_refresh: settings.presence_refresh,
        calls,
        call_timeouts: crate::call::signal::Timeouts::default(),
        media_clock: {
            let mut i = tokio::time::interval(Duration::from_millis(u64::from(crate::call::codec::FRAME_MS)));
            // A late tick sends one frame, not a burst: the jitter buffer absorbs the rest.
            i.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            i
        },
        relay_only: false,
        relay_tcp: false,
        rejoin: Rejoin { settings: settings.clone(), cache_path: home.cache_path(), failed_at: None },
        supernode_key,
        udp6,
        birthday: probe_sockets::BirthdayBudget::default(),
    };
    // Advertise presence, as the original's login sequence ends. A network without a
    // Global Index (a lone super node) is still a network to be logged in to.
    let profile = session.profile.clone();
    let status = match home.status() {
        Status::Offline => Status::Online,
        s => s,
    };
    session.status = status;
    match session.publish_index(status, &profile).await {
        Ok(n) => tracing::info!(replicas = n, "presence published"),
        Err(e) => tracing::warn!(error = %e, "presence not published"),
    }
    // Then the buddies: the list from the login server, and our presence to each of them
    // (those online answer with theirs).
    match session.refresh_buddies().await {
        Ok(()) => session.tell_buddies(true).await,
        Err(e) => tracing::warn!(error = %e, "buddy list not read"),
    }
    Ok(session)
}

/// Records what a ladder run found in the host cache, which it saves: on success,
/// [`remember_supernodes`]; on failure, every attempt as a failure.
fn ladder_outcome(
    cache: &mut HostCache,
    result: Result<connect::Connected, LadderError>,
    log: &[AttemptLog],
) -> Result<connect::Connected, HostError> {
    match result {
        Ok(c) => {
            remember_supernodes(cache, &c, log);
            Ok(c)
        }
        Err(e) => {
            for a in log {
                cache.record_failure(a.addr);
            }
            let _ = cache.save();
            Err(e.into())
        }
    }
}

/// Records in the host cache the super node a ladder reached (and those it failed
/// at), and learns the others its welcome lists; saves the cache.
fn remember_supernodes(cache: &mut HostCache, connected: &connect::Connected, log: &[AttemptLog]) {
    for a in log.iter().filter(|a| a.outcome != "ok") {
        cache.record_failure(a.addr);
    }
    let sn_addr = connected.session.addr;
    let (udp, tcp) = match connected.attempt.transport {
        Transport::Udp => (Some(sn_addr), None),
        Transport::Tcp => (None, Some(sn_addr)),
    };
    cache.record_success(
        CacheEntry {
            kind: NodeKind::Supernode,
            name: connected.session.supernode.subject.clone(),
            udp,
            tcp,
            last_success: None,
            rtt_ms: None,
            failures: 0,
        },
        connected.rtt.as_millis() as u32,
        crate::unix_now(),
    );
    for s in &connected.session.welcome.supernodes {
        cache.learn(CacheEntry {
            kind: NodeKind::Supernode,
            name: s.name.clone(),
            udp: s.udp,
            tcp: s.tcp,
            last_success: None,
            rtt_ms: None,
            failures: 0,
        });
    }
    if let Err(e) = cache.save() {
        tracing::warn!(error = %e, "could not save the host cache");
    }
}

impl Session {
    /// Connects to another super node after ours stopped answering: the ladder over the
    /// super nodes we know, without the one we lost; then our presence is published
    /// there so others find us, and our buddies online are told. Calls in progress go
    /// on (their media does not pass through our super node unless it relays them).
    pub async fn reconnect(&mut self) -> Result<(), HostError> {
        let lost = self.report.supernode.clone();
        tracing::warn!(supernode = %lost, "lost our super node; connecting to another");
        // The old link ends; port P goes to the ladder (its media still to the calls).
        let mut port = self.shell.lend().await;
        let mut cache = HostCache::load(&self.rejoin.cache_path);
        let (gone, others): (Vec<CacheEntry>, Vec<CacheEntry>) =
            cache.supernodes().into_iter().partition(|e| e.name == lost);
        // Its addresses may also be among the configured bootstrap nodes.
        let mut gone: Vec<SocketAddr> = gone.iter().flat_map(|e| [e.udp, e.tcp]).flatten().collect();
        gone.push(self.report.supernode_addr);
        let plan: Vec<_> = ladder::plan(&others, &self.rejoin.settings.ladder)
            .into_iter()
            .filter(|a| !gone.contains(&a.addr))
            .collect();
        let me = Me { trusted: &self.trusted, credential: &self.credential, key: &self.key };
        let mut log = Vec::new();
        let result = connect::run_lent(&plan, &mut port, &me, &self.rejoin.settings.timeouts, &mut log).await;
        let connected = ladder_outcome(&mut cache, result, &log)?;
        let r = &mut self.report;
        r.supernode = connected.session.supernode.subject.clone();
        r.supernode_addr = connected.session.addr;
        r.transport = connected.attempt.transport.label();
        r.public_addr = connected.session.welcome.observed;
        r.rtt_ms = connected.rtt.as_secs_f64() * 1000.0;
        r.attempts = log;
        self.supernode_key = connected.session.supernode.public_key.id();
        self.shell.attach(connected).await;
        tracing::info!(supernode = %self.report.supernode, "reconnected");
        let profile = self.profile.clone();
        if let Err(e) = self.publish_index(self.status, &profile).await {
            tracing::warn!(error = %e, "presence not published after reconnecting");
        }
        // After the publish: a peer that looks us up finds where we are now.
        self.tell_calls_we_moved(&lost).await;
        self.refreshed_at = tokio::time::Instant::now();
        self.tell_buddies(false).await;
        self.events.push_back(buddies::Event::Reconnected { supernode: self.report.supernode.clone() });
        Ok(())
    }
}
