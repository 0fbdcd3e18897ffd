//! Total big-endian reader and writer for message bodies.
//!
//! Every read checks the remaining length first and returns [`DecodeError`] instead of
//! panicking, and every length prefix is checked against a per-field maximum before any
//! allocation, so a hostile length can neither crash nor balloon a decoder.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

/// Why a body failed to decode.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DecodeError {
    /// Fewer bytes than a field needs.
    #[error("truncated: {0} needs more bytes")]
    Truncated(&'static str),
    /// A length prefix above the field's maximum.
    #[error("{field} is {len} bytes, over the maximum of {max}")]
    TooLong {
        /// The field.
        field: &'static str,
        /// The length on the wire.
        len: usize,
        /// The maximum allowed.
        max: usize,
    },
    /// Bytes left over after the last field.
    #[error("{0} trailing bytes")]
    Trailing(usize),
    /// A field holds a value outside its domain.
    #[error("invalid {0}")]
    Invalid(&'static str),
}

/// Reads fields from a byte slice.
pub struct Reader<'a> {
    buf: &'a [u8],
}

impl<'a> Reader<'a> {
    /// Starts reading `buf`.
    pub fn new(buf: &'a [u8]) -> Self {
        Self { buf }
    }

    /// Bytes not yet read.
    pub fn remaining(&self) -> usize {
        self.buf.len()
    }

    /// Takes exactly `n` bytes.
    pub fn take(&mut self, n: usize, field: &'static str) -> Result<&'a [u8], DecodeError> {
        if self.buf.len() < n {
            return Err(DecodeError::Truncated(field));
        }
        let (head, tail) = self.buf.split_at(n);
        self.buf = tail;
        Ok(head)
    }

    /// Takes a fixed-size array.
    pub fn array<const N: usize>(&mut self, field: &'static str) -> Result<[u8; N], DecodeError> {
        let mut a = [0u8; N];
        a.copy_from_slice(self.take(N, field)?);
        Ok(a)
    }

    /// A `u8`.
    pub fn u8(&mut self, field: &'static str) -> Result<u8, DecodeError> {
        Ok(self.take(1, field)?[0])
    }

    /// A big-endian `u16`.
    pub fn u16(&mut self, field: &'static str) -> Result<u16, DecodeError> {
        Ok(u16::from_be_bytes(self.array(field)?))
    }

    /// A big-endian `u32`.
    pub fn u32(&mut self, field: &'static str) -> Result<u32, DecodeError> {
        Ok(u32::from_be_bytes(self.array(field)?))
    }

    /// A big-endian `u64`.
    pub fn u64(&mut self, field: &'static str) -> Result<u64, DecodeError> {
        Ok(u64::from_be_bytes(self.array(field)?))
    }

    /// Bytes with a `u16` length prefix, at most `max` long.
    pub fn bytes(&mut self, field: &'static str, max: usize) -> Result<&'a [u8], DecodeError> {
        let len = self.u16(field)? as usize;
        if len > max {
            return Err(DecodeError::TooLong { field, len, max });
        }
        self.take(len, field)
    }

    /// UTF-8 text with a `u8` length prefix, at most `max` bytes.
    pub fn str(&mut self, field: &'static str, max: usize) -> Result<&'a str, DecodeError> {
        let len = self.u8(field)? as usize;
        if len > max {
            return Err(DecodeError::TooLong { field, len, max });
        }
        std::str::from_utf8(self.take(len, field)?).map_err(|_| DecodeError::Invalid(field))
    }

    /// A socket address: family (4 or 6), address bytes, port.
    pub fn addr(&mut self, field: &'static str) -> Result<SocketAddr, DecodeError> {
        let ip = match self.u8(field)? {
            4 => IpAddr::V4(Ipv4Addr::from(self.array::<4>(field)?)),
            6 => IpAddr::V6(Ipv6Addr::from(self.array::<16>(field)?)),
            _ => return Err(DecodeError::Invalid(field)),
        };
        Ok(SocketAddr::new(ip, self.u16(field)?))
    }

    /// An optional socket address: family 0 means none.
    pub fn opt_addr(&mut self, field: &'static str) -> Result<Option<SocketAddr>, DecodeError> {
        if self.buf.first() == Some(&0) {
            self.buf = &self.buf[1..];
            return Ok(None);
        }
        self.addr(field).map(Some)
    }

    /// Fails unless everything was read.
    pub fn finish(self) -> Result<(), DecodeError> {
        if self.buf.is_empty() { Ok(()) } else { Err(DecodeError::Trailing(self.buf.len())) }
    }
}

/// Appends fields to a byte vector; the mirror of [`Reader`].
#[derive(Default)]
pub struct Writer {
    buf: Vec<u8>,
}

impl Writer {
    /// An empty writer.
    pub fn new() -> Self {
        Self::default()
    }

    /// The bytes written.
    pub fn into_bytes(self) -> Vec<u8> {
        self.buf
    }

    /// Raw bytes, no prefix.
    pub fn raw(&mut self, b: &[u8]) -> &mut Self {
        self.buf.extend_from_slice(b);
        self
    }

    /// A `u8`.
    pub fn u8(&mut self, v: u8) -> &mut Self {
        self.buf.push(v);
        self
    }

    /// A big-endian `u16`.
    pub fn u16(&mut self, v: u16) -> &mut Self {
        self.raw(&v.to_be_bytes())
    }

    /// A big-endian `u32`.
    pub fn u32(&mut self, v: u32) -> &mut Self {
        self.raw(&v.to_be_bytes())
    }

    /// A big-endian `u64`.
    pub fn u64(&mut self, v: u64) -> &mut Self {
        self.raw(&v.to_be_bytes())
    }

    /// Bytes with a `u16` length prefix. Callers bound lengths far below 64 KiB.
    pub fn bytes(&mut self, b: &[u8]) -> &mut Self {
        let len = u16::try_from(b.len()).expect("field shorter than 64 KiB");
        self.u16(len).raw(b)
    }

    /// Text with a `u8` length prefix; longer text is cut at a character boundary.
    pub fn str(&mut self, s: &str) -> &mut Self {
        let mut end = s.len().min(255);
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        self.u8(end as u8).raw(&s.as_bytes()[..end])
    }

    /// A socket address.
    pub fn addr(&mut self, a: SocketAddr) -> &mut Self {
        self.raw(&crate::crypto::obfuscation::address_bytes(a))
    }

    /// An optional socket address.
    pub fn opt_addr(&mut self, a: Option<SocketAddr>) -> &mut Self {
        match a {
            Some(a) => self.addr(a),
            None => self.u8(0),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip() {
        let a: SocketAddr = "[2001:db8::1]:443".parse().unwrap();
        let b: SocketAddr = "198.18.0.1:33033".parse().unwrap();
        let mut w = Writer::new();
        w.u8(1).u16(2).u32(3).u64(4).bytes(b"xyz").str("héllo").addr(a).opt_addr(None).opt_addr(Some(b));
        let bytes = w.into_bytes();
        let mut r = Reader::new(&bytes);
        assert_eq!(r.u8("a").unwrap(), 1);
        assert_eq!(r.u16("b").unwrap(), 2);
        assert_eq!(r.u32("c").unwrap(), 3);
        assert_eq!(r.u64("d").unwrap(), 4);
        assert_eq!(r.bytes("e", 3).unwrap(), b"xyz");
        assert_eq!(r.str("f", 10).unwrap(), "héllo");
        assert_eq!(r.addr("g").unwrap(), a);
        assert_eq!(r.opt_addr("h").unwrap(), None);
        assert_eq!(r.opt_addr("i").unwrap(), Some(b));
        r.finish().unwrap();
    }

    #[test]
    fn limits_are_checked_before_reading() {
        let mut r = Reader::new(&[0xff, 0xff, 1, 2]);
        assert!(matches!(r.bytes("x", 100), Err(DecodeError::TooLong { .. })));
        let mut r = Reader::new(&[0, 5, 1, 2]);
        assert_eq!(r.bytes("x", 100), Err(DecodeError::Truncated("x")));
        let mut r = Reader::new(&[9, 1, 2, 3, 4, 0, 1]);
        assert_eq!(r.addr("a"), Err(DecodeError::Invalid("a")));
    }
}
