//! Resumable transfer state in a folder (the home folder's `transfers/<id>/`).
//!
//! Receiver: `receive.json` (the offer: id, manifest hash, certificate fingerprint, where
//! the file goes), `manifest` once it has arrived, `data.part` (the partial file) and
//! `held.bitmap` (the chunks verified, written and flushed). A chunk is written into
//! `data.part`, the file is fsynced, and only then is the bitmap replaced atomically
//! (temporary file, fsync, rename, fsync of the folder): a `kill -9` at any moment loses
//! at most chunks written since the last flush, and the bitmap never names a chunk that is
//! not on disk. The file is moved into its final place only when its whole SHA-256 matches.
//!
//! Sender: `send.json` (id, the file's path, manifest hash), `manifest`, and the transfer's
//! TLS identity (`cert.der`, `key.der`, owner-only): the certificate's fingerprint travels
//! in the offer, which may wait days at the super nodes for an offline receiver, so a
//! restarted sender must present the same certificate.

use super::bitmap::ChunkBitmap;
use super::manifest::{Manifest, ManifestError};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::fs::File;
use std::io::Read;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use thiserror::Error;

/// Chunks written between two flushes (fsync and bitmap): 512 KiB, the most a crash of
/// the machine loses (a killed process loses none of them: see [`ReceiveState::open`]).
pub const FLUSH_EVERY_CHUNKS: u32 = 8;
/// At reopening, the scan for chunks written but not yet named by the bitmap stops after
/// this many missing chunks in a row that do not verify (the rest were never written).
const RECOVER_MISSES_MAX: u32 = 2 * FLUSH_EVERY_CHUNKS;

const RECEIVE_META: &str = "receive.json";
const SEND_META: &str = "send.json";
const MANIFEST: &str = "manifest";
const PART: &str = "data.part";
const HELD: &str = "held.bitmap";
const CERT: &str = "cert.der";
const KEY: &str = "key.der";

/// A transfer's id: random, chosen by the sender, named in the offer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct TransferId(pub [u8; 16]);

impl TransferId {
    /// Draws a fresh id.
    pub fn random(rng: &mut impl rand::Rng) -> TransferId {
        let mut id = [0u8; 16];
        rng.fill_bytes(&mut id);
        TransferId(id)
    }

    /// The folder name under `transfers/`.
    pub fn hex(&self) -> String {
        hex::encode(self.0)
    }
}

/// Why transfer state could not be read, written or completed.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum StateError {
    /// The file system refused.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// The system's error.
        source: std::io::Error,
    },
    /// A state file is not what this code wrote.
    #[error("transfer state {0} is corrupt")]
    Corrupt(String),
    /// The manifest sent does not hash to what the offer carries.
    #[error("the manifest does not match the offer")]
    ManifestMismatch,
    /// A stored or received manifest is malformed.
    #[error("bad manifest: {0}")]
    BadManifest(#[from] ManifestError),
    /// A chunk was asked for or given before the manifest.
    #[error("no manifest yet")]
    NoManifest,
    /// A chunk's bytes do not hash to the manifest's entry (or it is out of range).
    #[error("chunk {0} fails its SHA-256")]
    BadChunk(u32),
    /// The sender's file no longer matches the manifest it offered.
    #[error("the offered file changed since the offer (chunk {0} differs)")]
    SourceChanged(u32),
    /// All chunks verified but the whole file did not; the bad chunks are dropped.
    #[error("the whole file's SHA-256 does not match; {0} chunks will be fetched again")]
    WholeFileMismatch(u32),
    /// Not every chunk is held yet.
    #[error("{0} chunks are still missing")]
    Incomplete(u32),
    /// Something is already where the file should go.
    #[error("{0} already exists")]
    DestinationExists(PathBuf),
}

fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> StateError {
    let what = what.into();
    move |source| StateError::Io { what, source }
}

fn hex32(s: &str, what: &str) -> Result<[u8; 32], StateError> {
    hex::decode(s).ok().and_then(|v| v.try_into().ok()).ok_or_else(|| StateError::Corrupt(what.into()))
}

fn write_json(path: &Path, value: &impl Serialize) -> Result<(), StateError> {
    let bytes = serde_json::to_vec_pretty(value).expect("plain struct serializes");
    crate::fsutil::write_atomic(path, &bytes, 0o600).map_err(io(format!("write {}", path.display())))
}

fn read_json<T: for<'de> Deserialize<'de>>(path: &Path) -> Result<T, StateError> {
    let bytes = std::fs::read(path).map_err(io(format!("read {}", path.display())))?;
    serde_json::from_slice(&bytes).map_err(|_| StateError::Corrupt(path.display().to_string()))
}

/// What the receiver keeps of an offer it accepted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReceiveOffer {
    /// The transfer's id.
    pub id: TransferId,
    /// The manifest hash from the signed offer.
    pub manifest_hash: [u8; 32],
    /// The SHA-256 of the sender's certificate, from the signed offer.
    pub cert_fingerprint: [u8; 32],
    /// Where the file goes once whole.
    pub destination: PathBuf,
}

#[derive(Serialize, Deserialize)]
struct ReceiveMeta {
    id: String,
    manifest_hash: String,
    cert_fingerprint: String,
    destination: PathBuf,
}

/// The receiver's side of one transfer, on disk.
#[derive(Debug)]
pub struct ReceiveState {
    dir: PathBuf,
    offer: ReceiveOffer,
    manifest: Option<Manifest>,
    part: Option<File>,
    // Verified and written; `flushed` is the subset known durable and named by the bitmap file.
    held: ChunkBitmap,
    flushed: ChunkBitmap,
}

impl ReceiveState {
    /// Starts a transfer's folder for an accepted offer.
    pub fn create(dir: &Path, offer: ReceiveOffer) -> Result<ReceiveState, StateError> {
        crate::fsutil::private_dir(dir).map_err(io(format!("create {}", dir.display())))?;
        let meta = ReceiveMeta {
            id: offer.id.hex(),
            manifest_hash: hex::encode(offer.manifest_hash),
            cert_fingerprint: hex::encode(offer.cert_fingerprint),
            destination: offer.destination.clone(),
        };
        write_json(&dir.join(RECEIVE_META), &meta)?;
        Ok(ReceiveState {
            dir: dir.to_path_buf(),
            offer,
            manifest: None,
            part: None,
            held: ChunkBitmap::new(0),
            flushed: ChunkBitmap::new(0),
        })
    }

    /// Reopens a transfer's folder after a restart: the chunks its bitmap names are held.
    pub fn open(dir: &Path) -> Result<ReceiveState, StateError> {
        let meta: ReceiveMeta = read_json(&dir.join(RECEIVE_META))?;
        let id = hex::decode(&meta.id)
            .ok()
            .and_then(|v| v.try_into().ok())
            .ok_or_else(|| StateError::Corrupt("id".into()))?;
        let offer = ReceiveOffer {
            id: TransferId(id),
            manifest_hash: hex32(&meta.manifest_hash, "manifest hash")?,
            cert_fingerprint: hex32(&meta.cert_fingerprint, "certificate fingerprint")?,
            destination: meta.destination,
        };
        let mut state = ReceiveState {
            dir: dir.to_path_buf(),
            offer,
            manifest: None,
            part: None,
            held: ChunkBitmap::new(0),
            flushed: ChunkBitmap::new(0),
        };
        let manifest_path = dir.join(MANIFEST);
        if !manifest_path.exists() {
            return Ok(state);
        }
        let manifest = Manifest::decode(&std::fs::read(&manifest_path).map_err(io("read manifest"))?)?;
        if manifest.hash() != state.offer.manifest_hash {
            return Err(StateError::ManifestMismatch);
        }
        let held = match std::fs::read(dir.join(HELD)) {
            Ok(bytes) => {
                ChunkBitmap::decode(manifest.chunks(), &bytes).map_err(|_| StateError::Corrupt(HELD.into()))?
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => ChunkBitmap::new(manifest.chunks()),
            Err(e) => return Err(io("read bitmap")(e)),
        };
        state.part = Some(open_part(dir, manifest.size())?);
        state.flushed = held.clone();
        state.held = held;
        state.manifest = Some(manifest);
        state.recover()?;
        Ok(state)
    }

    /// After a `kill -9` the chunks written since the last flush are in the partial file
    /// (the kernel has them) but not in the bitmap: each missing chunk, in order, whose
    /// bytes on disk verify against the manifest is taken as held, and the lot flushed, so
    /// the sender does not send them again. Chunks arrive in order, so the scan stops after
    /// [`RECOVER_MISSES_MAX`] misses in a row. Returns how many were recovered.
    fn recover(&mut self) -> Result<u32, StateError> {
        let (Some(manifest), Some(part)) = (self.manifest.as_ref(), self.part.as_ref()) else { return Ok(0) };
        let missing: Vec<u32> = self.held.missing().collect();
        let (mut found, mut misses) = (0, 0);
        let mut buf = Vec::new();
        for index in missing {
            buf.resize(manifest.chunk_len(index), 0);
            let read = part.read_exact_at(&mut buf, Manifest::chunk_offset(index));
            if read.is_ok() && manifest.verify_chunk(index, &buf) {
                self.held.set(index);
                found += 1;
                misses = 0;
            } else {
                misses += 1;
                if misses >= RECOVER_MISSES_MAX {
                    break;
                }
            }
        }
        if found > 0 {
            self.flush()?;
        }
        Ok(found)
    }

    /// The offer this transfer serves.
    pub fn offer(&self) -> &ReceiveOffer {
        &self.offer
    }

    /// The manifest, once received.
    pub fn manifest(&self) -> Option<&Manifest> {
        self.manifest.as_ref()
    }

    /// The chunks verified and written (some perhaps not yet flushed).
    pub fn held(&self) -> &ChunkBitmap {
        &self.held
    }

    /// The chunks the bitmap file names: what survives a crash now.
    pub fn flushed(&self) -> &ChunkBitmap {
        &self.flushed
    }

    /// Takes the manifest the sender sent: refused unless it hashes to the offer's hash.
    /// One already held is kept (it is the same, by its hash).
    pub fn set_manifest(&mut self, manifest: Manifest) -> Result<(), StateError> {
        if manifest.hash() != self.offer.manifest_hash {
            return Err(StateError::ManifestMismatch);
        }
        if self.manifest.is_some() {
            return Ok(());
        }
        crate::fsutil::write_atomic(&self.dir.join(MANIFEST), &manifest.encode(), 0o600)
            .map_err(io("write manifest"))?;
        self.part = Some(open_part(&self.dir, manifest.size())?);
        self.held = ChunkBitmap::new(manifest.chunks());
        self.flushed = self.held.clone();
        self.manifest = Some(manifest);
        Ok(())
    }

    /// Verifies chunk `index` and writes it; flushes every [`FLUSH_EVERY_CHUNKS`] chunks.
    /// A chunk that fails its hash is refused and nothing is written.
    pub fn write_chunk(&mut self, index: u32, bytes: &[u8]) -> Result<(), StateError> {
        let manifest = self.manifest.as_ref().ok_or(StateError::NoManifest)?;
        if !manifest.verify_chunk(index, bytes) {
            return Err(StateError::BadChunk(index));
        }
        if self.held.get(index) {
            return Ok(());
        }
        let part = self.part.as_ref().expect("a manifest comes with its part file");
        part.write_all_at(bytes, Manifest::chunk_offset(index)).map_err(io("write chunk"))?;
        self.held.set(index);
        if self.held.count() - self.flushed.count() >= FLUSH_EVERY_CHUNKS {
            self.flush()?;
        }
        Ok(())
    }

    /// Makes every written chunk durable, then names them in the bitmap file.
    pub fn flush(&mut self) -> Result<(), StateError> {
        let Some(part) = self.part.as_ref() else { return Ok(()) };
        if self.held == self.flushed {
            return Ok(());
        }
        part.sync_data().map_err(io("fsync the partial file"))?;
        crate::fsutil::write_atomic(&self.dir.join(HELD), self.held.as_bytes(), 0o600).map_err(io("write bitmap"))?;
        self.flushed = self.held.clone();
        Ok(())
    }

    /// With every chunk held: checks the whole file's SHA-256, moves it to its destination
    /// (never over an existing file) and removes the transfer's folder. On a mismatch the
    /// chunks that no longer verify are dropped from the bitmap, so a resume fetches them.
    pub fn finish(&mut self) -> Result<PathBuf, StateError> {
        let manifest = self.manifest.clone().ok_or(StateError::NoManifest)?;
        if !self.held.is_full() {
            return Err(StateError::Incomplete(manifest.chunks() - self.held.count()));
        }
        self.flush()?;
        let part_path = self.dir.join(PART);
        let mut file = File::open(&part_path).map_err(io("read the partial file"))?;
        let mut whole = Sha256::new();
        let mut bad = Vec::new();
        let mut buf = vec![0u8; super::manifest::CHUNK_BYTES as usize];
        for i in 0..manifest.chunks() {
            let chunk = &mut buf[..manifest.chunk_len(i)];
            file.read_exact(chunk).map_err(io("read the partial file"))?;
            whole.update(&*chunk);
            if !manifest.verify_chunk(i, chunk) {
                bad.push(i);
            }
        }
        if <[u8; 32]>::from(whole.finalize()) != manifest.file_sha256() || !bad.is_empty() {
            let mut held = ChunkBitmap::new(manifest.chunks());
            for i in 0..manifest.chunks() {
                if !bad.contains(&i) {
                    held.set(i);
                }
            }
            crate::fsutil::write_atomic(&self.dir.join(HELD), held.as_bytes(), 0o600).map_err(io("write bitmap"))?;
            self.held = held.clone();
            self.flushed = held;
            return Err(StateError::WholeFileMismatch(bad.len() as u32));
        }
        let dest = self.offer.destination.clone();
        if let Some(parent) = dest.parent().filter(|p| !p.as_os_str().is_empty()) {
            std::fs::create_dir_all(parent).map_err(io(format!("create {}", parent.display())))?;
        }
        // A hard link fails if the destination exists: a received file never replaces one.
        std::fs::hard_link(&part_path, &dest).map_err(|e| match e.kind() {
            std::io::ErrorKind::AlreadyExists => StateError::DestinationExists(dest.clone()),
            _ => io(format!("place {}", dest.display()))(e),
        })?;
        if let Some(parent) = dest.parent().filter(|p| !p.as_os_str().is_empty()) {
            File::open(parent).and_then(|d| d.sync_all()).map_err(io("fsync the destination folder"))?;
        }
        self.part = None;
        std::fs::remove_dir_all(&self.dir).map_err(io(format!("remove {}", self.dir.display())))?;
        Ok(dest)
    }
}

fn open_part(dir: &Path, size: u64) -> Result<File, StateError> {
    use std::os::unix::fs::OpenOptionsExt;
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .open(dir.join(PART))
        .map_err(io("open the partial file"))?;
    if f.metadata().map_err(io("stat the partial file"))?.len() != size {
        f.set_len(size).map_err(io("size the partial file"))?;
    }
    Ok(f)
}

#[derive(Serialize, Deserialize)]
struct SendMeta {
    id: String,
    path: PathBuf,
    manifest_hash: String,
}

/// The sender's side of one transfer, on disk: enough to serve it again after a restart.
#[derive(Debug)]
pub struct SendState {
    id: TransferId,
    path: PathBuf,
    manifest: Manifest,
    cert_der: Vec<u8>,
    key_der: Vec<u8>,
}

impl SendState {
    /// Hashes the file at `path` and records the offer with its TLS identity in `dir`.
    pub fn create(
        dir: &Path,
        id: TransferId,
        path: &Path,
        cert_der: Vec<u8>,
        key_der: Vec<u8>,
    ) -> Result<SendState, StateError> {
        let file = File::open(path).map_err(io(format!("open {}", path.display())))?;
        let manifest =
            Manifest::from_reader(std::io::BufReader::new(file)).map_err(io(format!("read {}", path.display())))?;
        crate::fsutil::private_dir(dir).map_err(io(format!("create {}", dir.display())))?;
        crate::fsutil::write_atomic(&dir.join(MANIFEST), &manifest.encode(), 0o600).map_err(io("write manifest"))?;
        crate::fsutil::write_atomic(&dir.join(CERT), &cert_der, 0o600).map_err(io("write certificate"))?;
        crate::fsutil::write_atomic(&dir.join(KEY), &key_der, 0o600).map_err(io("write key"))?;
        let meta = SendMeta { id: id.hex(), path: path.to_path_buf(), manifest_hash: hex::encode(manifest.hash()) };
        write_json(&dir.join(SEND_META), &meta)?;
        Ok(SendState { id, path: path.to_path_buf(), manifest, cert_der, key_der })
    }

    /// Reloads an offer recorded by [`SendState::create`].
    pub fn open(dir: &Path) -> Result<SendState, StateError> {
        let meta: SendMeta = read_json(&dir.join(SEND_META))?;
        let id = hex::decode(&meta.id)
            .ok()
            .and_then(|v| v.try_into().ok())
            .ok_or_else(|| StateError::Corrupt("id".into()))?;
        let manifest = Manifest::decode(&std::fs::read(dir.join(MANIFEST)).map_err(io("read manifest"))?)?;
        if manifest.hash() != hex32(&meta.manifest_hash, "manifest hash")? {
            return Err(StateError::Corrupt(MANIFEST.into()));
        }
        let cert_der = std::fs::read(dir.join(CERT)).map_err(io("read certificate"))?;
        let key_der = std::fs::read(dir.join(KEY)).map_err(io("read key"))?;
        Ok(SendState { id: TransferId(id), path: meta.path, manifest, cert_der, key_der })
    }

    /// The file served.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The transfer's id.
    pub fn id(&self) -> TransferId {
        self.id
    }

    /// The manifest offered.
    pub fn manifest(&self) -> &Manifest {
        &self.manifest
    }

    /// The TLS certificate and PKCS#8 key the sender serves with.
    pub fn identity(&self) -> (&[u8], &[u8]) {
        (&self.cert_der, &self.key_der)
    }

    /// Opens the offered file for reading chunks.
    pub fn open_file(&self) -> Result<File, StateError> {
        File::open(&self.path).map_err(io(format!("open {}", self.path.display())))
    }

    /// Reads chunk `index` and checks it against the manifest, so a file changed since the
    /// offer is noticed here rather than by the receiver.
    pub fn read_chunk(&self, file: &File, index: u32) -> Result<Vec<u8>, StateError> {
        let mut buf = vec![0u8; self.manifest.chunk_len(index)];
        file.read_exact_at(&mut buf, Manifest::chunk_offset(index)).map_err(|_| StateError::SourceChanged(index))?;
        if !self.manifest.verify_chunk(index, &buf) {
            return Err(StateError::SourceChanged(index));
        }
        Ok(buf)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::transfer::manifest::CHUNK_BYTES;

    fn data(len: usize) -> Vec<u8> {
        (0..len).map(|i| (i % 253) as u8 ^ (i >> 16) as u8).collect()
    }

    fn offer_for(m: &Manifest, dest: PathBuf) -> ReceiveOffer {
        ReceiveOffer { id: TransferId([7; 16]), manifest_hash: m.hash(), cert_fingerprint: [9; 32], destination: dest }
    }

    fn chunk(d: &[u8], i: u32) -> &[u8] {
        let s = i as usize * CHUNK_BYTES as usize;
        &d[s..(s + CHUNK_BYTES as usize).min(d.len())]
    }

    #[test]
    fn a_restart_keeps_the_flushed_chunks_and_those_written_since_that_still_verify() {
        let home = tempfile::tempdir().unwrap();
        let d = data(40 * CHUNK_BYTES as usize + 5);
        let m = Manifest::from_reader(&d[..]).unwrap();
        let dir = home.path().join("transfers/x");
        let mut s = ReceiveState::create(&dir, offer_for(&m, home.path().join("out/f.bin"))).unwrap();
        s.set_manifest(m.clone()).unwrap();
        for i in 0..(FLUSH_EVERY_CHUNKS + 3) {
            s.write_chunk(i, chunk(&d, i)).unwrap();
        }
        assert_eq!(s.held().count(), FLUSH_EVERY_CHUNKS + 3);
        assert_eq!(s.flushed().count(), FLUSH_EVERY_CHUNKS, "the last three are not flushed yet");
        drop(s); // as a kill -9 would: no flush
        // As if the machine had crashed before the kernel wrote the last chunk: its bytes
        // on disk are not the chunk's.
        let last = FLUSH_EVERY_CHUNKS + 2;
        let part = std::fs::OpenOptions::new().write(true).open(dir.join("data.part")).unwrap();
        part.write_all_at(&[0xEE; 100], Manifest::chunk_offset(last)).unwrap();
        drop(part);
        let mut s = ReceiveState::open(&dir).unwrap();
        // The two chunks written after the last flush and intact are held again, and durable.
        assert_eq!(s.held().count(), FLUSH_EVERY_CHUNKS + 2);
        assert!((0..last).all(|i| s.held().get(i)) && !s.held().get(last));
        assert_eq!(s.flushed(), s.held(), "named by the bitmap file");
        assert_eq!(ReceiveState::open(&dir).unwrap().held().count(), FLUSH_EVERY_CHUNKS + 2);
        for i in s.held().missing().collect::<Vec<_>>() {
            s.write_chunk(i, chunk(&d, i)).unwrap();
        }
        let dest = s.finish().unwrap();
        assert_eq!(std::fs::read(&dest).unwrap(), d);
        assert!(!dir.exists(), "the transfer's folder is removed");
    }

    #[test]
    fn a_bad_chunk_or_manifest_is_refused_and_nothing_written() {
        let home = tempfile::tempdir().unwrap();
        let d = data(3 * CHUNK_BYTES as usize);
        let m = Manifest::from_reader(&d[..]).unwrap();
        let dir = home.path().join("t");
        let mut s = ReceiveState::create(&dir, offer_for(&m, home.path().join("f"))).unwrap();
        assert!(matches!(s.write_chunk(0, chunk(&d, 0)), Err(StateError::NoManifest)));
        let other = Manifest::from_reader(&data(10)[..]).unwrap();
        assert!(matches!(s.set_manifest(other), Err(StateError::ManifestMismatch)));
        s.set_manifest(m).unwrap();
        let mut bad = chunk(&d, 1).to_vec();
        bad[100] ^= 1;
        assert!(matches!(s.write_chunk(1, &bad), Err(StateError::BadChunk(1))));
        assert!(matches!(s.write_chunk(9, b"x"), Err(StateError::BadChunk(9))));
        assert_eq!(s.held().count(), 0);
        let part = std::fs::read(dir.join(PART)).unwrap();
        assert!(part.iter().all(|&b| b == 0), "the refused chunk left no byte");
        assert!(matches!(s.finish(), Err(StateError::Incomplete(3))));
    }

    #[test]
    fn a_whole_file_mismatch_drops_the_damaged_chunks() {
        let home = tempfile::tempdir().unwrap();
        let d = data(3 * CHUNK_BYTES as usize);
        let m = Manifest::from_reader(&d[..]).unwrap();
        let dir = home.path().join("t");
        let mut s = ReceiveState::create(&dir, offer_for(&m, home.path().join("f"))).unwrap();
        s.set_manifest(m).unwrap();
        for i in 0..3 {
            s.write_chunk(i, chunk(&d, i)).unwrap();
        }
        s.flush().unwrap();
        // The disk changes under us after the chunk was verified.
        File::options().write(true).open(dir.join(PART)).unwrap().write_all_at(b"zz", CHUNK_BYTES + 7).unwrap();
        assert!(matches!(s.finish(), Err(StateError::WholeFileMismatch(1))));
        assert_eq!(s.held().missing().collect::<Vec<_>>(), vec![1]);
        assert_eq!(ReceiveState::open(&dir).unwrap().held().missing().collect::<Vec<_>>(), vec![1]);
        assert!(!home.path().join("f").exists());
    }

    #[test]
    fn a_received_file_never_replaces_an_existing_one() {
        let home = tempfile::tempdir().unwrap();
        let d = data(1000);
        let m = Manifest::from_reader(&d[..]).unwrap();
        let dest = home.path().join("f");
        std::fs::write(&dest, b"mine").unwrap();
        let mut s = ReceiveState::create(&home.path().join("t"), offer_for(&m, dest.clone())).unwrap();
        s.set_manifest(m).unwrap();
        s.write_chunk(0, &d).unwrap();
        assert!(matches!(s.finish(), Err(StateError::DestinationExists(_))));
        assert_eq!(std::fs::read(&dest).unwrap(), b"mine");
    }

    #[test]
    fn corrupt_state_files_are_refused() {
        let home = tempfile::tempdir().unwrap();
        let d = data(20 * CHUNK_BYTES as usize);
        let m = Manifest::from_reader(&d[..]).unwrap();
        let dir = home.path().join("t");
        let mut s = ReceiveState::create(&dir, offer_for(&m, home.path().join("f"))).unwrap();
        s.set_manifest(m).unwrap();
        for i in 0..FLUSH_EVERY_CHUNKS {
            s.write_chunk(i, chunk(&d, i)).unwrap();
        }
        std::fs::write(dir.join(HELD), [0xff; 9]).unwrap();
        assert!(matches!(ReceiveState::open(&dir), Err(StateError::Corrupt(_))));
        std::fs::write(dir.join(RECEIVE_META), b"{").unwrap();
        assert!(matches!(ReceiveState::open(&dir), Err(StateError::Corrupt(_))));
    }

    #[test]
    fn the_sender_reloads_its_offer_and_notices_a_changed_file() {
        let home = tempfile::tempdir().unwrap();
        let src = home.path().join("src.bin");
        let d = data(2 * CHUNK_BYTES as usize + 1);
        std::fs::write(&src, &d).unwrap();
        let dir = home.path().join("transfers/s");
        let s = SendState::create(&dir, TransferId([1; 16]), &src, vec![1, 2], vec![3, 4]).unwrap();
        let r = SendState::open(&dir).unwrap();
        assert_eq!((r.id(), r.manifest(), r.identity()), (s.id(), s.manifest(), (&[1u8, 2][..], &[3u8, 4][..])));
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(std::fs::metadata(dir.join(KEY)).unwrap().permissions().mode() & 0o777, 0o600);
        let f = r.open_file().unwrap();
        assert_eq!(r.read_chunk(&f, 2).unwrap(), &d[2 * CHUNK_BYTES as usize..]);
        File::options().write(true).open(&src).unwrap().write_all_at(b"!", 3).unwrap();
        assert!(matches!(r.read_chunk(&f, 0), Err(StateError::SourceChanged(0))));
    }
}
