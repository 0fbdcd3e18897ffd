//! A file's manifest: its size, the SHA-256 of every 64 KiB chunk and of the whole file.
//!
//! The manifest travels on the transfer's QUIC stream (up to 2 MiB for a 4 GiB file, too
//! big for a message); the signed offer carries only [`Manifest::hash`], so the receiver
//! checks the manifest it is sent against what the sender signed.

use sha2::{Digest, Sha256};
use std::io::Read;
use thiserror::Error;

/// Bytes per chunk; the last chunk of a file may be shorter.
pub const CHUNK_BYTES: u64 = 64 * 1024;
/// The largest file a transfer carries: 4 GiB.
pub const FILE_BYTES_MAX: u64 = 4 << 30;
/// The most chunks a manifest lists (a 4 GiB file).
pub const CHUNKS_MAX: u32 = (FILE_BYTES_MAX / CHUNK_BYTES) as u32;

const MAGIC: &[u8; 4] = b"CFM1";
const HEADER_BYTES: usize = 4 + 8 + 32 + 4;
/// The longest encoded manifest: the header and one hash per chunk of a 4 GiB file.
pub const ENCODED_BYTES_MAX: usize = HEADER_BYTES + CHUNKS_MAX as usize * 32;
const HASH_DOMAIN: &[u8] = b"confab file manifest v1";

/// Why bytes are not a manifest, or a file cannot have one.
#[derive(Debug, Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum ManifestError {
    /// Fewer bytes than the header or the chunk list needs.
    #[error("manifest truncated: {have} bytes, need {need}")]
    Truncated {
        /// Bytes given.
        have: usize,
        /// Bytes the header says there are.
        need: usize,
    },
    /// More bytes than the chunk list accounts for.
    #[error("manifest has {0} trailing bytes")]
    Trailing(usize),
    /// Not a manifest of this version.
    #[error("not a manifest (bad magic)")]
    BadMagic,
    /// The file is larger than a transfer carries.
    #[error("file of {0} bytes is over the 4 GiB limit")]
    TooLarge(u64),
    /// The chunk count does not follow from the size.
    #[error("manifest lists {listed} chunks, a file of {size} bytes has {expected}")]
    CountMismatch {
        /// The size the manifest states.
        size: u64,
        /// Chunks it lists.
        listed: u32,
        /// Chunks that size has.
        expected: u32,
    },
}

/// What a receiver checks every chunk and the whole file against.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Manifest {
    size: u64,
    file_sha256: [u8; 32],
    chunks: Vec<[u8; 32]>,
}

/// The number of chunks of a file of `size` bytes.
pub fn chunk_count(size: u64) -> u32 {
    size.div_ceil(CHUNK_BYTES) as u32
}

impl Manifest {
    /// Reads a whole file (or any reader) and hashes it chunk by chunk.
    pub fn from_reader(mut reader: impl Read) -> Result<Manifest, std::io::Error> {
        let mut whole = Sha256::new();
        let mut chunks = Vec::new();
        let mut size = 0u64;
        let mut buf = vec![0u8; CHUNK_BYTES as usize];
        loop {
            let mut filled = 0;
            while filled < buf.len() {
                match reader.read(&mut buf[filled..])? {
                    0 => break,
                    n => filled += n,
                }
            }
            if filled == 0 {
                break;
            }
            size += filled as u64;
            if size > FILE_BYTES_MAX {
                return Err(std::io::Error::other(ManifestError::TooLarge(size)));
            }
            whole.update(&buf[..filled]);
            chunks.push(Sha256::digest(&buf[..filled]).into());
            if filled < buf.len() {
                break;
            }
        }
        Ok(Manifest { size, file_sha256: whole.finalize().into(), chunks })
    }

    /// The file's size in bytes.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// The SHA-256 of the whole file.
    pub fn file_sha256(&self) -> [u8; 32] {
        self.file_sha256
    }

    /// The number of chunks.
    pub fn chunks(&self) -> u32 {
        self.chunks.len() as u32
    }

    /// The length of chunk `index` (0 past the end).
    pub fn chunk_len(&self, index: u32) -> usize {
        let start = u64::from(index) * CHUNK_BYTES;
        self.size.saturating_sub(start).min(CHUNK_BYTES) as usize
    }

    /// The file offset of chunk `index`.
    pub fn chunk_offset(index: u32) -> u64 {
        u64::from(index) * CHUNK_BYTES
    }

    /// Whether `bytes` is chunk `index` of this file, length included.
    pub fn verify_chunk(&self, index: u32, bytes: &[u8]) -> bool {
        match self.chunks.get(index as usize) {
            Some(h) => bytes.len() == self.chunk_len(index) && Sha256::digest(bytes).as_slice() == h,
            None => false,
        }
    }

    /// The manifest's own hash, which the signed offer carries.
    pub fn hash(&self) -> [u8; 32] {
        let mut h = Sha256::new();
        h.update(HASH_DOMAIN);
        h.update(self.encode());
        h.finalize().into()
    }

    /// `CFM1`, size (u64 BE), file SHA-256, chunk count (u32 BE), then each chunk's SHA-256.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(HEADER_BYTES + self.chunks.len() * 32);
        out.extend_from_slice(MAGIC);
        out.extend_from_slice(&self.size.to_be_bytes());
        out.extend_from_slice(&self.file_sha256);
        out.extend_from_slice(&(self.chunks.len() as u32).to_be_bytes());
        for c in &self.chunks {
            out.extend_from_slice(c);
        }
        out
    }

    /// Decodes exactly one manifest; anything malformed is refused with its reason.
    pub fn decode(bytes: &[u8]) -> Result<Manifest, ManifestError> {
        if bytes.len() < HEADER_BYTES {
            return Err(ManifestError::Truncated { have: bytes.len(), need: HEADER_BYTES });
        }
        if &bytes[..4] != MAGIC {
            return Err(ManifestError::BadMagic);
        }
        let size = u64::from_be_bytes(bytes[4..12].try_into().expect("8 bytes"));
        if size > FILE_BYTES_MAX {
            return Err(ManifestError::TooLarge(size));
        }
        let file_sha256: [u8; 32] = bytes[12..44].try_into().expect("32 bytes");
        let listed = u32::from_be_bytes(bytes[44..48].try_into().expect("4 bytes"));
        let expected = chunk_count(size);
        if listed != expected {
            return Err(ManifestError::CountMismatch { size, listed, expected });
        }
        let need = HEADER_BYTES + listed as usize * 32;
        if bytes.len() < need {
            return Err(ManifestError::Truncated { have: bytes.len(), need });
        }
        if bytes.len() > need {
            return Err(ManifestError::Trailing(bytes.len() - need));
        }
        let chunks = bytes[HEADER_BYTES..].chunks_exact(32).map(|c| c.try_into().expect("32 bytes")).collect();
        Ok(Manifest { size, file_sha256, chunks })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(len: usize) -> Vec<u8> {
        (0..len).map(|i| (i * 7 + i / 251) as u8).collect()
    }

    #[test]
    fn chunks_and_hashes_follow_the_bytes() {
        let data = sample(3 * CHUNK_BYTES as usize + 10);
        let m = Manifest::from_reader(&data[..]).unwrap();
        assert_eq!(m.size(), data.len() as u64);
        assert_eq!(m.chunks(), 4);
        assert_eq!(m.chunk_len(3), 10);
        assert_eq!(m.chunk_len(4), 0);
        assert_eq!(m.file_sha256(), <[u8; 32]>::from(Sha256::digest(&data)));
        let last = &data[3 * CHUNK_BYTES as usize..];
        assert!(m.verify_chunk(3, last));
        let mut bad = last.to_vec();
        bad[0] ^= 1;
        assert!(!m.verify_chunk(3, &bad), "a changed byte fails");
        assert!(!m.verify_chunk(2, last), "the right bytes at the wrong index fail");
        assert!(!m.verify_chunk(4, b""), "past the end fails");
    }

    #[test]
    fn exact_multiple_and_empty_files() {
        let m = Manifest::from_reader(&sample(2 * CHUNK_BYTES as usize)[..]).unwrap();
        assert_eq!(m.chunks(), 2);
        assert_eq!(m.chunk_len(1), CHUNK_BYTES as usize);
        let e = Manifest::from_reader(&b""[..]).unwrap();
        assert_eq!((e.size(), e.chunks()), (0, 0));
        assert_eq!(Manifest::decode(&e.encode()).unwrap(), e);
    }

    #[test]
    fn round_trip_and_hash_binds_every_byte() {
        let m = Manifest::from_reader(&sample(200_000)[..]).unwrap();
        let enc = m.encode();
        assert_eq!(Manifest::decode(&enc).unwrap(), m);
        let other = Manifest::from_reader(&sample(200_001)[..]).unwrap();
        assert_ne!(m.hash(), other.hash());
        for i in [0, 5, 20, 47, enc.len() - 1] {
            let mut e = enc.clone();
            e[i] ^= 0x80;
            if let Ok(d) = Manifest::decode(&e) {
                assert_ne!(d.hash(), m.hash(), "byte {i} changed, hash must change");
            }
        }
    }

    #[test]
    fn malformed_is_refused_with_a_reason() {
        let m = Manifest::from_reader(&sample(70_000)[..]).unwrap();
        let enc = m.encode();
        assert!(matches!(Manifest::decode(&enc[..10]), Err(ManifestError::Truncated { .. })));
        assert!(matches!(Manifest::decode(&enc[..enc.len() - 1]), Err(ManifestError::Truncated { .. })));
        let mut long = enc.clone();
        long.push(0);
        assert_eq!(Manifest::decode(&long), Err(ManifestError::Trailing(1)));
        let mut magic = enc.clone();
        magic[0] = b'X';
        assert_eq!(Manifest::decode(&magic), Err(ManifestError::BadMagic));
        let mut big = enc.clone();
        big[4..12].copy_from_slice(&(FILE_BYTES_MAX + 1).to_be_bytes());
        assert_eq!(Manifest::decode(&big), Err(ManifestError::TooLarge(FILE_BYTES_MAX + 1)));
        let mut count = enc.clone();
        count[44..48].copy_from_slice(&u32::MAX.to_be_bytes());
        assert!(matches!(Manifest::decode(&count), Err(ManifestError::CountMismatch { .. })));
    }

    #[test]
    fn a_four_gib_manifest_is_within_bounds() {
        // Built by hand: hashing 4 GiB in a unit test would take too long.
        let m = Manifest { size: FILE_BYTES_MAX, file_sha256: [1; 32], chunks: vec![[2; 32]; CHUNKS_MAX as usize] };
        let enc = m.encode();
        assert_eq!(enc.len(), ENCODED_BYTES_MAX);
        assert_eq!(Manifest::decode(&enc).unwrap().chunks(), 65_536);
    }

    proptest::proptest! {
        #[test]
        fn decode_is_total(bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..400)) {
            let _ = Manifest::decode(&bytes);
        }
    }
}
