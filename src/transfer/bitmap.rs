//! Which chunks of a file a side holds: one bit per chunk.

use super::manifest::CHUNKS_MAX;
use thiserror::Error;

/// Why bytes are not a bitmap for a given chunk count.
#[derive(Debug, Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum BitmapError {
    /// More chunks than a manifest may list.
    #[error("{0} chunks is over the limit")]
    TooManyChunks(u32),
    /// The byte length does not match the chunk count.
    #[error("bitmap of {have} bytes for {chunks} chunks (need {need})")]
    Length {
        /// Chunks the bitmap covers.
        chunks: u32,
        /// Bytes given.
        have: usize,
        /// Bytes needed.
        need: usize,
    },
    /// A bit is set past the last chunk.
    #[error("bit set past the last chunk")]
    StrayBit,
}

/// A set of chunk indices below a fixed count.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChunkBitmap {
    chunks: u32,
    bits: Vec<u8>,
}

impl ChunkBitmap {
    /// An empty set for `chunks` chunks.
    pub fn new(chunks: u32) -> ChunkBitmap {
        ChunkBitmap { chunks, bits: vec![0; chunks.div_ceil(8) as usize] }
    }

    /// The number of chunks covered.
    pub fn chunks(&self) -> u32 {
        self.chunks
    }

    /// Whether chunk `i` is held (false past the end).
    pub fn get(&self, i: u32) -> bool {
        i < self.chunks && self.bits[(i / 8) as usize] & (1 << (i % 8)) != 0
    }

    /// Marks chunk `i` held; returns false if it is past the end.
    pub fn set(&mut self, i: u32) -> bool {
        if i >= self.chunks {
            return false;
        }
        self.bits[(i / 8) as usize] |= 1 << (i % 8);
        true
    }

    /// How many chunks are held.
    pub fn count(&self) -> u32 {
        self.bits.iter().map(|b| b.count_ones()).sum()
    }

    /// Whether every chunk is held.
    pub fn is_full(&self) -> bool {
        self.count() == self.chunks
    }

    /// The chunks not held, in order.
    pub fn missing(&self) -> impl Iterator<Item = u32> + '_ {
        (0..self.chunks).filter(|&i| !self.get(i))
    }

    /// The bits, chunk 0 in the low bit of byte 0.
    pub fn as_bytes(&self) -> &[u8] {
        &self.bits
    }

    /// Decodes the bits for `chunks` chunks, refusing a wrong length or a stray bit.
    pub fn decode(chunks: u32, bytes: &[u8]) -> Result<ChunkBitmap, BitmapError> {
        if chunks > CHUNKS_MAX {
            return Err(BitmapError::TooManyChunks(chunks));
        }
        let need = chunks.div_ceil(8) as usize;
        if bytes.len() != need {
            return Err(BitmapError::Length { chunks, have: bytes.len(), need });
        }
        if !chunks.is_multiple_of(8) && bytes[need - 1] >> (chunks % 8) != 0 {
            return Err(BitmapError::StrayBit);
        }
        Ok(ChunkBitmap { chunks, bits: bytes.to_vec() })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn set_get_count_missing() {
        let mut b = ChunkBitmap::new(10);
        assert!(b.set(0) && b.set(9) && !b.set(10));
        assert!(b.get(9) && !b.get(8) && !b.get(10));
        assert_eq!(b.count(), 2);
        assert_eq!(b.missing().collect::<Vec<_>>(), vec![1, 2, 3, 4, 5, 6, 7, 8]);
        assert_eq!(ChunkBitmap::decode(10, b.as_bytes()).unwrap(), b);
        for i in 0..10 {
            b.set(i);
        }
        assert!(b.is_full());
    }

    #[test]
    fn malformed_is_refused() {
        assert_eq!(ChunkBitmap::decode(10, &[0]), Err(BitmapError::Length { chunks: 10, have: 1, need: 2 }));
        assert_eq!(ChunkBitmap::decode(10, &[0, 0b100]), Err(BitmapError::StrayBit));
        assert_eq!(ChunkBitmap::decode(CHUNKS_MAX + 1, &[]), Err(BitmapError::TooManyChunks(CHUNKS_MAX + 1)));
        assert!(ChunkBitmap::decode(0, &[]).unwrap().is_full());
    }
}
