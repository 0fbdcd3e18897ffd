//! Real hosts, logged in through the confab host library exactly as `confab host` logs
//! in: register, credential from the login server, the connection ladder to a super
//! node, NAT discovery, presence published. Used by `relay` and by the `login`, `hosts`
//! and `lookup` scenarios.
//!
//! Each host gets its own home folder (in a temporary folder under `--work-dir`, removed
//! at the end) with its own port. Keys come from a small pool kept in `WORK_DIR/keys`
//! (made once): a 2048-bit RSA key pair takes the harness longer to generate than a
//! login takes, and the network checks credentials, not key uniqueness.

use anyhow::Context;
use confab::config::HostConfig;
use confab::crypto::PrivateKey;
use confab::host::home::Home;
use confab::host::{HostError, HostSettings, Session};
use confab::wire::ErrorCode;
use indicatif::ProgressBar;
use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
use std::sync::{Arc, Mutex};

/// Key pairs in the pool when the harness makes it.
const KEY_POOL: usize = 4;

/// Where the hosts come from.
#[derive(Debug, Clone)]
pub struct HostOptions {
    /// A host configuration file (`data/host.toml` written by `confab up`).
    pub config: PathBuf,
    /// Every simulated user's password.
    pub password: String,
    /// Folder for the key pool and the temporary homes.
    pub work_dir: PathBuf,
    /// First part of every username.
    pub prefix: String,
    /// Logins in flight at once.
    pub concurrency: usize,
}

/// Host settings from a host configuration, as `confab host` builds them.
pub fn settings(c: &HostConfig) -> anyhow::Result<HostSettings> {
    HostSettings::from_config(c)
}

/// The key pool: every `*.key.pem` in `dir`, or `KEY_POOL` fresh ones written there.
fn key_pool(dir: &Path) -> anyhow::Result<Vec<PathBuf>> {
    std::fs::create_dir_all(dir).with_context(|| format!("key pool {}", dir.display()))?;
    let mut keys: Vec<PathBuf> = std::fs::read_dir(dir)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.to_string_lossy().ends_with(".key.pem"))
        .collect();
    if keys.is_empty() {
        eprintln!("making a pool of {KEY_POOL} host key pairs in {} (once)…", dir.display());
        for i in 0..KEY_POOL {
            let key = PrivateKey::generate(2048)?;
            let path = dir.join(format!("host-{i}.key.pem"));
            key.write_pem_files(&path, &dir.join(format!("host-{i}.pub.pem")))?;
            keys.push(path);
        }
    }
    keys.sort();
    Ok(keys)
}

/// A factory of logged-in hosts for one run.
pub struct Hosts {
    /// What every host knows about the network.
    pub settings: HostSettings,
    password: String,
    prefix: String,
    concurrency: usize,
    keys: Vec<PathBuf>,
    homes: tempfile::TempDir,
    next: AtomicUsize,
    ports: Mutex<HashSet<u16>>,
}

impl Hosts {
    /// Reads the host configuration and prepares the key pool and the homes folder.
    pub fn new(o: &HostOptions) -> anyhow::Result<Arc<Self>> {
        let config = confab::config::Config::load(std::slice::from_ref(&o.config))
            .with_context(|| format!("--config {}", o.config.display()))?;
        let settings = settings(&config.host)?;
        confab::login::username::check_password(&o.password).map_err(|e| anyhow::anyhow!("--password: {e}"))?;
        std::fs::create_dir_all(&o.work_dir).with_context(|| format!("--work-dir {}", o.work_dir.display()))?;
        let keys = key_pool(&o.work_dir.join("keys"))?;
        let homes = tempfile::Builder::new().prefix("homes-").tempdir_in(&o.work_dir)?;
        Ok(Arc::new(Self {
            settings,
            password: o.password.clone(),
            prefix: o.prefix.clone(),
            concurrency: o.concurrency.max(1),
            keys,
            homes,
            next: AtomicUsize::new(0),
            ports: Mutex::new(HashSet::new()),
        }))
    }

    /// The password keys of `user` (argon2id, on a blocking thread).
    pub async fn password_keys(&self, user: &str) -> confab::crypto::password::PasswordKeys {
        let (u, p) = (user.to_owned(), self.password.clone());
        tokio::task::spawn_blocking(move || confab::crypto::password::derive(&u, &p)).await.expect("argon2 task")
    }

    /// The username for `what` (`r12a`, `h3`, …) under this run's prefix.
    pub fn user(&self, what: &str) -> String {
        format!("{}-{what}", self.prefix)
    }

    /// A fresh home with a pool key and a port no other home of this run holds: homes
    /// pick their port at random, and two hosts of one process must not draw the same.
    pub fn home(&self) -> anyhow::Result<Home> {
        loop {
            let n = self.next.fetch_add(1, Relaxed);
            let dir = self.homes.path().join(format!("h{n}"));
            let home = Home::open(&dir)?;
            std::fs::copy(&self.keys[n % self.keys.len()], dir.join("host.key.pem"))?;
            let port = home.port()?;
            if self.ports.lock().expect("ports lock").insert(port) {
                return Ok(home);
            }
        }
    }

    /// Registers `user`; an account of that name already there is fine (a previous run
    /// made it, with the same password or the login fails later).
    pub async fn register(&self, home: &Home, user: &str) -> Result<(), HostError> {
        match confab::host::register(&self.settings, home, user, &self.password).await {
            Ok(_) => Ok(()),
            Err(HostError::Account(a)) if a.code() == Some(ErrorCode::UsernameTaken) => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// Registers a new account; a name already taken is an error.
    pub async fn register_new(&self, home: &Home, user: &str) -> Result<(), HostError> {
        confab::host::register(&self.settings, home, user, &self.password).await.map(drop)
    }

    /// Logs `user` in from `home`.
    pub async fn login(&self, home: &Home, user: &str) -> Result<Session, HostError> {
        confab::host::login(&self.settings, home, user, &self.password).await
    }

    /// Registers (if need be) and logs in every user, at most `concurrency` at once;
    /// the sessions come back in the order of `users`. Any failure fails the whole.
    pub async fn login_all(self: &Arc<Self>, users: &[String], bar: &ProgressBar) -> anyhow::Result<Vec<Session>> {
        let (sessions, failures) = self.try_login_all(users, bar).await;
        if let Some((msg, n)) = failures.iter().next() {
            let failed = failures.values().sum::<u64>();
            let first = format!("{msg}, {n} times");
            // Leave the network as it was: the hosts that did log in log out.
            logout_all(sessions.into_iter().flatten().collect()).await;
            anyhow::bail!("{failed} of {} logins failed (first: {first})", users.len());
        }
        Ok(sessions.into_iter().map(|s| s.expect("no failures")).collect())
    }

    /// As [`Hosts::login_all`], but failures are tallied by message instead.
    pub async fn try_login_all(
        self: &Arc<Self>,
        users: &[String],
        bar: &ProgressBar,
    ) -> (Vec<Option<Session>>, BTreeMap<String, u64>) {
        let gate = Arc::new(tokio::sync::Semaphore::new(self.concurrency));
        let mut set = tokio::task::JoinSet::new();
        for (i, user) in users.iter().cloned().enumerate() {
            let (me, gate, bar) = (self.clone(), gate.clone(), bar.clone());
            set.spawn_local(async move {
                let _permit = gate.acquire_owned().await.expect("semaphore never closed");
                let r = async {
                    let mut tries = 0;
                    loop {
                        let home = me.home()?;
                        me.register(&home, &user).await?;
                        match me.login(&home, &user).await {
                            // Another process (a second harness) took the port first: a
                            // home with another port.
                            Err(e) if e.to_string().contains("Address already in use") && tries < 3 => tries += 1,
                            r => break anyhow::Ok(r?),
                        }
                    }
                }
                .await;
                bar.inc(1);
                (i, r)
            });
        }
        let mut sessions: Vec<Option<Session>> = users.iter().map(|_| None).collect();
        let mut failures = BTreeMap::new();
        while let Some(joined) = set.join_next().await {
            match joined {
                Ok((i, Ok(s))) => sessions[i] = Some(s),
                Ok((_, Err(e))) => *failures.entry(format!("{e:#}")).or_insert(0) += 1,
                Err(e) => *failures.entry(format!("login task: {e}")).or_insert(0) += 1,
            }
        }
        (sessions, failures)
    }
}

/// Logs every session out, all at once.
pub async fn logout_all(sessions: Vec<Session>) {
    let mut set = tokio::task::JoinSet::new();
    for s in sessions {
        set.spawn_local(s.logout());
    }
    while set.join_next().await.is_some() {}
}
