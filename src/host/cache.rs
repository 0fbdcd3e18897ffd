//! The host cache: up to 200 super nodes and login servers the host has heard of, with
//! when each last worked and how fast, kept in the host's home and written atomically.

use serde::{Deserialize, Serialize};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

/// Most entries kept, as in the original network.
pub const HOST_CACHE_ENTRIES_MAX: usize = 200;

/// What kind of node an entry is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum NodeKind {
    /// A super node.
    Supernode,
    /// A login server.
    LoginServer,
}

/// One cached node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CacheEntry {
    /// Super node or login server.
    pub kind: NodeKind,
    /// Its name, if known.
    pub name: String,
    /// Its UDP endpoint.
    pub udp: Option<SocketAddr>,
    /// Its TCP endpoint.
    pub tcp: Option<SocketAddr>,
    /// Unix seconds of the last successful connection.
    pub last_success: Option<u64>,
    /// Round-trip time of the last successful handshake, in milliseconds.
    pub rtt_ms: Option<u32>,
    /// Failures since the last success.
    pub failures: u32,
}

impl CacheEntry {
    fn same_node(&self, other: &CacheEntry) -> bool {
        self.kind == other.kind
            && ((self.udp.is_some() && self.udp == other.udp) || (self.tcp.is_some() && self.tcp == other.tcp))
    }
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct File {
    version: u32,
    entries: Vec<CacheEntry>,
}

/// The cache's logic: entries, ladder order, bounds. No file: the core keeps one of
/// these and hands a copy to whoever writes it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Cache {
    entries: Vec<CacheEntry>,
}

impl Cache {
    /// A cache holding `entries`, trimmed to [`HOST_CACHE_ENTRIES_MAX`].
    pub fn new(entries: Vec<CacheEntry>) -> Self {
        let mut c = Self { entries };
        c.trim();
        c
    }

    /// All entries.
    pub fn entries(&self) -> &[CacheEntry] {
        &self.entries
    }

    /// Super nodes, best first: recently successful and fast first, never-tried next,
    /// repeatedly failing last.
    pub fn supernodes(&self) -> Vec<CacheEntry> {
        let mut v: Vec<CacheEntry> = self.entries.iter().filter(|e| e.kind == NodeKind::Supernode).cloned().collect();
        v.sort_by_key(|e| (e.failures, std::cmp::Reverse(e.last_success), e.rtt_ms.unwrap_or(u32::MAX)));
        v
    }

    /// Adds a node we heard of (keeps what we know of it already).
    pub fn learn(&mut self, entry: CacheEntry) {
        if let Some(e) = self.entries.iter_mut().find(|e| e.same_node(&entry)) {
            if !entry.name.is_empty() {
                e.name = entry.name;
            }
            e.udp = entry.udp.or(e.udp);
            e.tcp = entry.tcp.or(e.tcp);
        } else {
            self.entries.push(entry);
        }
        self.trim();
    }

    /// Records a successful connection to a node.
    pub fn record_success(&mut self, entry: CacheEntry, rtt_ms: u32, now: u64) {
        self.learn(entry.clone());
        if let Some(e) = self.entries.iter_mut().find(|e| e.same_node(&entry)) {
            e.last_success = Some(now);
            e.rtt_ms = Some(rtt_ms);
            e.failures = 0;
        }
    }

    /// Records a failed attempt on the node reachable at `addr`.
    pub fn record_failure(&mut self, addr: SocketAddr) {
        for e in self.entries.iter_mut().filter(|e| e.udp == Some(addr) || e.tcp == Some(addr)) {
            e.failures = e.failures.saturating_add(1);
        }
    }

    fn trim(&mut self) {
        if self.entries.len() > HOST_CACHE_ENTRIES_MAX {
            // Keep the most useful: login servers, then super nodes in ladder order.
            self.entries
                .sort_by_key(|e| (e.kind != NodeKind::LoginServer, e.failures, std::cmp::Reverse(e.last_success)));
            self.entries.truncate(HOST_CACHE_ENTRIES_MAX);
        }
    }
}

/// The cache and the file it lives in.
#[derive(Debug)]
pub struct HostCache {
    path: PathBuf,
    cache: Cache,
}

impl HostCache {
    /// Loads the cache; a missing file is an empty cache, a corrupt one is set aside
    /// (renamed `.corrupt`) with a warning, because the host can always rebuild it.
    pub fn load(path: &Path) -> Self {
        let entries = match std::fs::read(path) {
            Ok(bytes) => match serde_json::from_slice::<File>(&bytes) {
                Ok(f) => f.entries,
                Err(e) => {
                    tracing::warn!(path = %path.display(), error = %e, "host cache is corrupt; starting empty");
                    let _ = std::fs::rename(path, path.with_extension("corrupt"));
                    Vec::new()
                }
            },
            Err(_) => Vec::new(),
        };
        Self { path: path.to_owned(), cache: Cache::new(entries) }
    }

    /// The cache of `entries`, to be written to `path`.
    pub fn with_entries(path: &Path, entries: Vec<CacheEntry>) -> Self {
        Self { path: path.to_owned(), cache: Cache::new(entries) }
    }

    /// Writes the cache atomically.
    pub fn save(&self) -> std::io::Result<()> {
        let f = File { version: 1, entries: self.cache.entries.clone() };
        let bytes = serde_json::to_vec_pretty(&f).expect("cache serialises");
        crate::fsutil::write_atomic(&self.path, &bytes, 0o600)
    }

    /// The logic, to read.
    pub fn cache(&self) -> &Cache {
        &self.cache
    }

    /// All entries.
    pub fn entries(&self) -> &[CacheEntry] {
        self.cache.entries()
    }

    /// Super nodes, best first (see [`Cache::supernodes`]).
    pub fn supernodes(&self) -> Vec<CacheEntry> {
        self.cache.supernodes()
    }

    /// Adds a node we heard of (see [`Cache::learn`]).
    pub fn learn(&mut self, entry: CacheEntry) {
        self.cache.learn(entry)
    }

    /// Records a successful connection to a node.
    pub fn record_success(&mut self, entry: CacheEntry, rtt_ms: u32, now: u64) {
        self.cache.record_success(entry, rtt_ms, now)
    }

    /// Records a failed attempt on the node reachable at `addr`.
    pub fn record_failure(&mut self, addr: SocketAddr) {
        self.cache.record_failure(addr)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sn(i: u16) -> CacheEntry {
        CacheEntry {
            kind: NodeKind::Supernode,
            name: format!("sn{i}"),
            udp: Some(SocketAddr::from(([198, 18, 0, 1], 30000 + i))),
            tcp: None,
            last_success: None,
            rtt_ms: None,
            failures: 0,
        }
    }

    #[test]
    fn bounded_ordered_and_persistent() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("hostcache.json");
        let mut c = HostCache::load(&p);
        for i in 0..300 {
            c.learn(sn(i));
        }
        assert_eq!(c.entries().len(), HOST_CACHE_ENTRIES_MAX);
        c.record_success(sn(7), 12, 1000);
        c.record_success(sn(8), 5, 900);
        c.record_failure(sn(0).udp.unwrap());
        let order = c.supernodes();
        assert_eq!(order[0].name, "sn7");
        assert_eq!(order[1].name, "sn8");
        assert_eq!(order.last().unwrap().name, "sn0");
        c.save().unwrap();
        let again = HostCache::load(&p);
        assert_eq!(again.entries(), c.entries());
    }

    /// The file-backed cache and the pure one make the same decisions from the same
    /// calls, and what the file holds comes back as the same pure cache.
    #[test]
    fn the_pure_cache_decides_as_the_file_backed_one() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("hostcache.json");
        let mut file = HostCache::load(&p);
        let mut pure = Cache::default();
        for i in 0..250 {
            file.learn(sn(i));
            pure.learn(sn(i));
        }
        file.record_success(sn(3), 40, 500);
        pure.record_success(sn(3), 40, 500);
        file.record_failure(sn(1).udp.unwrap());
        pure.record_failure(sn(1).udp.unwrap());
        assert_eq!(file.cache(), &pure);
        assert_eq!(pure.supernodes()[0].name, "sn3");
        assert_eq!(pure.entries().len(), HOST_CACHE_ENTRIES_MAX);
        file.save().unwrap();
        assert_eq!(HostCache::load(&p).cache(), &pure);
        assert_eq!(Cache::new(pure.entries().to_vec()), pure);
        assert_eq!(Cache::new((0..300).map(sn).collect()).entries().len(), HOST_CACHE_ENTRIES_MAX);
    }

    #[test]
    fn corrupt_file_starts_empty() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("hostcache.json");
        std::fs::write(&p, b"{not json").unwrap();
        assert!(HostCache::load(&p).entries().is_empty());
        assert!(p.with_extension("corrupt").exists());
    }
}
