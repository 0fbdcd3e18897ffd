//! What travels on a transfer's one bidirectional stream.
//!
//! Receiver → sender: the request `CFT1 ‖ transfer id [16] ‖ chunks u32 ‖ bitmap` (the
//! chunks it holds; `chunks` is 0 when it has no manifest yet), later one byte `DONE`
//! once the whole file verified, then the end of its stream.
//! Sender → receiver: `manifest length u32 ‖ manifest`, then each missing chunk as
//! `index u32 ‖ bytes` (the length follows from the manifest), then the end of its stream.
//! All integers big-endian. Decoders take what has arrived so far and answer "need more",
//! a frame and its length, or a reason to refuse.

use super::bitmap::{BitmapError, ChunkBitmap};
use super::manifest::{ENCODED_BYTES_MAX, Manifest, ManifestError};
use super::state::TransferId;
use thiserror::Error;

const MAGIC: &[u8; 4] = b"CFT1";
const REQUEST_HEADER: usize = 4 + 16 + 4;
/// The byte the receiver sends when the whole file has verified.
pub const DONE: u8 = 0x01;

/// Why bytes on the stream are refused.
#[derive(Debug, Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum FrameError {
    /// The request does not start with the protocol's magic.
    #[error("not a transfer request")]
    BadMagic,
    /// The request's bitmap is malformed.
    #[error("bad bitmap: {0}")]
    Bitmap(#[from] BitmapError),
    /// The manifest frame is over the limit or malformed.
    #[error("bad manifest: {0}")]
    Manifest(#[from] ManifestError),
    /// The manifest frame announces more than a manifest can be.
    #[error("manifest of {0} bytes is over the limit")]
    ManifestTooLong(u32),
    /// A chunk frame names a chunk the file does not have.
    #[error("chunk {index} is past the last ({chunks} chunks)")]
    ChunkOutOfRange {
        /// The index named.
        index: u32,
        /// Chunks in the file.
        chunks: u32,
    },
    /// More bytes than a request and `DONE` can be.
    #[error("more bytes than a request and DONE")]
    Overlong,
    /// Something other than `DONE` where only it may come.
    #[error("unexpected byte {0:#04x} after the request")]
    Unexpected(u8),
}

/// What the receiver asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    /// The transfer.
    pub id: TransferId,
    /// The chunks it holds, if it has the manifest.
    pub held: Option<ChunkBitmap>,
}

/// Encodes a request.
pub fn encode_request(req: &Request) -> Vec<u8> {
    let mut out = Vec::with_capacity(REQUEST_HEADER + req.held.as_ref().map_or(0, |b| b.as_bytes().len()));
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&req.id.0);
    out.extend_from_slice(&req.held.as_ref().map_or(0, |b| b.chunks()).to_be_bytes());
    if let Some(b) = &req.held {
        out.extend_from_slice(b.as_bytes());
    }
    out
}

/// Decodes a request from the start of `buf`: `Ok(None)` until it has all arrived.
pub fn decode_request(buf: &[u8]) -> Result<Option<(Request, usize)>, FrameError> {
    if buf.len() >= 4 && &buf[..4] != MAGIC {
        return Err(FrameError::BadMagic);
    }
    if buf.len() < REQUEST_HEADER {
        return Ok(None);
    }
    let id = TransferId(buf[4..20].try_into().expect("16 bytes"));
    let chunks = u32::from_be_bytes(buf[20..24].try_into().expect("4 bytes"));
    if chunks == 0 {
        return Ok(Some((Request { id, held: None }, REQUEST_HEADER)));
    }
    if chunks > super::manifest::CHUNKS_MAX {
        return Err(BitmapError::TooManyChunks(chunks).into());
    }
    let len = REQUEST_HEADER + chunks.div_ceil(8) as usize;
    if buf.len() < len {
        return Ok(None);
    }
    let held = ChunkBitmap::decode(chunks, &buf[REQUEST_HEADER..len])?;
    Ok(Some((Request { id, held: Some(held) }, len)))
}

/// Encodes the manifest frame.
pub fn encode_manifest(m: &Manifest) -> Vec<u8> {
    let enc = m.encode();
    let mut out = Vec::with_capacity(4 + enc.len());
    out.extend_from_slice(&(enc.len() as u32).to_be_bytes());
    out.extend_from_slice(&enc);
    out
}

/// Decodes the manifest frame from the start of `buf`.
pub fn decode_manifest(buf: &[u8]) -> Result<Option<(Manifest, usize)>, FrameError> {
    if buf.len() < 4 {
        return Ok(None);
    }
    let len = u32::from_be_bytes(buf[..4].try_into().expect("4 bytes"));
    if len as usize > ENCODED_BYTES_MAX {
        return Err(FrameError::ManifestTooLong(len));
    }
    let end = 4 + len as usize;
    if buf.len() < end {
        return Ok(None);
    }
    Ok(Some((Manifest::decode(&buf[4..end])?, end)))
}

/// Encodes a chunk frame.
pub fn encode_chunk(index: u32, bytes: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(4 + bytes.len());
    out.extend_from_slice(&index.to_be_bytes());
    out.extend_from_slice(bytes);
    out
}

/// Decodes a chunk frame from the start of `buf`: the index, the bytes' range in `buf`
/// and the frame's length.
pub fn decode_chunk(buf: &[u8], m: &Manifest) -> Result<Option<(u32, std::ops::Range<usize>, usize)>, FrameError> {
    if buf.len() < 4 {
        return Ok(None);
    }
    let index = u32::from_be_bytes(buf[..4].try_into().expect("4 bytes"));
    if index >= m.chunks() {
        return Err(FrameError::ChunkOutOfRange { index, chunks: m.chunks() });
    }
    let end = 4 + m.chunk_len(index);
    if buf.len() < end {
        return Ok(None);
    }
    Ok(Some((index, 4..end, end)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_round_trips_and_waits_for_all_its_bytes() {
        let mut held = ChunkBitmap::new(20);
        held.set(3);
        let req = Request { id: TransferId([5; 16]), held: Some(held) };
        let enc = encode_request(&req);
        for cut in 0..enc.len() {
            assert_eq!(decode_request(&enc[..cut]), Ok(None), "cut at {cut}");
        }
        let mut more = enc.clone();
        more.push(DONE);
        assert_eq!(decode_request(&more), Ok(Some((req, enc.len()))));
        let fresh = Request { id: TransferId([6; 16]), held: None };
        assert_eq!(decode_request(&encode_request(&fresh)), Ok(Some((fresh, 24))));
    }

    #[test]
    fn malformed_requests_are_refused() {
        assert_eq!(decode_request(b"HTTP/1.1"), Err(FrameError::BadMagic));
        let mut big = encode_request(&Request { id: TransferId([0; 16]), held: None });
        big[20..24].copy_from_slice(&u32::MAX.to_be_bytes());
        assert!(matches!(decode_request(&big), Err(FrameError::Bitmap(BitmapError::TooManyChunks(_)))));
        let mut stray = encode_request(&Request { id: TransferId([0; 16]), held: Some(ChunkBitmap::new(3)) });
        stray[24] = 0xff;
        assert_eq!(decode_request(&stray), Err(FrameError::Bitmap(BitmapError::StrayBit)));
    }

    #[test]
    fn manifest_and_chunk_frames() {
        let data = vec![7u8; 70_000];
        let m = Manifest::from_reader(&data[..]).unwrap();
        let enc = encode_manifest(&m);
        assert_eq!(decode_manifest(&enc[..enc.len() - 1]), Ok(None));
        assert_eq!(decode_manifest(&enc), Ok(Some((m.clone(), enc.len()))));
        assert_eq!(decode_manifest(&[0xff, 0xff, 0xff, 0xff]), Err(FrameError::ManifestTooLong(u32::MAX)));
        let c = encode_chunk(1, &data[65_536..]);
        assert_eq!(decode_chunk(&c[..c.len() - 1], &m), Ok(None));
        assert_eq!(decode_chunk(&c, &m), Ok(Some((1, 4..c.len(), c.len()))));
        assert_eq!(decode_chunk(&encode_chunk(2, b""), &m), Err(FrameError::ChunkOutOfRange { index: 2, chunks: 2 }));
    }

    proptest::proptest! {
        #[test]
        fn decoders_are_total(bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..200)) {
            let m = Manifest::from_reader(&[1u8; 100][..]).unwrap();
            let _ = decode_request(&bytes);
            let _ = decode_manifest(&bytes);
            let _ = decode_chunk(&bytes, &m);
        }
    }
}
