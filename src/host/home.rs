//! The host's home folder: its key pair, its port, its host cache.

use crate::crypto::PrivateKey;
use std::path::{Path, PathBuf};

/// Lowest port a host picks for itself.
pub const PORT_MIN: u16 = 20_000;
/// Highest port a host picks for itself.
pub const PORT_MAX: u16 = 60_999;

/// A host's home folder.
#[derive(Debug, Clone)]
pub struct Home {
    dir: PathBuf,
}

#[derive(serde::Serialize, serde::Deserialize)]
struct State {
    port: u16,
}

impl Home {
    /// Opens (creating, mode 0700) the folder.
    pub fn open(dir: &Path) -> std::io::Result<Self> {
        use std::os::unix::fs::DirBuilderExt;
        std::fs::DirBuilder::new().recursive(true).mode(0o700).create(dir)?;
        Ok(Self { dir: dir.to_owned() })
    }

    /// The folder.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The host cache file.
    pub fn cache_path(&self) -> PathBuf {
        self.dir.join("hostcache.json")
    }

    /// A user's chat history on this device (several users may share a home folder).
    pub fn chat_history_path(&self, user: &str) -> PathBuf {
        self.dir.join(format!("chat-{}.sqlite", user.to_ascii_lowercase()))
    }

    /// The host's key pair, generated (2048-bit) on first use.
    pub fn key(&self) -> anyhow::Result<PrivateKey> {
        let path = self.dir.join("host.key.pem");
        if path.exists() {
            return Ok(PrivateKey::read_pem_file(&path)?);
        }
        tracing::info!(path = %path.display(), "first run: generating this host's RSA key pair");
        let key = PrivateKey::generate(2048)?;
        key.write_pem_files(&path, &self.dir.join("host.pub.pem"))?;
        Ok(key)
    }

    /// The user's profile, kept in the home (empty until set).
    pub fn profile(&self) -> crate::index::Profile {
        std::fs::read(self.dir.join("profile.json"))
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or_default()
    }

    /// Saves the profile.
    pub fn set_profile(&self, p: &crate::index::Profile) -> std::io::Result<()> {
        crate::fsutil::write_atomic(&self.dir.join("profile.json"), &serde_json::to_vec_pretty(p)?, 0o600)
    }

    /// The status to publish at login (online unless set otherwise).
    pub fn status(&self) -> crate::index::Status {
        std::fs::read(self.dir.join("status.json"))
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or(crate::index::Status::Online)
    }

    /// Saves the status to publish at login.
    pub fn set_status(&self, s: crate::index::Status) -> std::io::Result<()> {
        crate::fsutil::write_atomic(&self.dir.join("status.json"), &serde_json::to_vec(&s)?, 0o600)
    }

    /// The host's own port P: picked at random on first run, then kept.
    pub fn port(&self) -> anyhow::Result<u16> {
        let path = self.dir.join("host.json");
        if let Ok(bytes) = std::fs::read(&path) {
            if let Ok(s) = serde_json::from_slice::<State>(&bytes) {
                return Ok(s.port);
            }
            tracing::warn!(path = %path.display(), "unreadable host state; picking a new port");
        }
        self.new_port()
    }

    /// Picks a new port P that is free now, over UDP and TCP alike, and keeps it (the old
    /// one is held by something else).
    pub fn new_port(&self) -> anyhow::Result<u16> {
        let path = self.dir.join("host.json");
        let span = u64::from(PORT_MAX - PORT_MIN) + 1;
        // A port something else already holds would make every login fail: pick one
        // that is free now, over UDP and TCP alike.
        let free = |p: u16| {
            std::net::UdpSocket::bind(("0.0.0.0", p)).is_ok() && std::net::TcpListener::bind(("0.0.0.0", p)).is_ok()
        };
        let port = (0..64)
            .map(|_| PORT_MIN + (crate::crypto::random::u64() % span) as u16)
            .find(|p| free(*p))
            .ok_or_else(|| anyhow::anyhow!("no free port between {PORT_MIN} and {PORT_MAX}"))?;
        crate::fsutil::write_atomic(&path, &serde_json::to_vec(&State { port })?, 0o600)?;
        Ok(port)
    }
}
