//! RC4 header obfuscation, as in the original network.
//!
//! The key is computed from public data only — the listening side's address and the
//! per-frame nonce sent in the clear — so this hides frame headers from naive pattern
//! matching and nothing more. Security comes from AES-GCM on the payload, which also
//! authenticates the header bytes (they are its associated data).

use rc4::{KeyInit, Rc4, StreamCipher};
use sha2::{Digest, Sha256};
use std::net::SocketAddr;

/// Encodes an address the same way on both ends: family byte, IP bytes, port.
pub fn address_bytes(addr: SocketAddr) -> Vec<u8> {
    let mut v = Vec::with_capacity(19);
    match addr {
        SocketAddr::V4(a) => {
            v.push(4);
            v.extend_from_slice(&a.ip().octets());
        }
        SocketAddr::V6(a) => {
            v.push(6);
            v.extend_from_slice(&a.ip().octets());
        }
    }
    v.extend_from_slice(&addr.port().to_be_bytes());
    v
}

/// The 128-bit RC4 key for one frame.
pub fn header_key(listener: SocketAddr, nonce: &[u8; 8]) -> [u8; 16] {
    let mut h = Sha256::new();
    h.update(b"confab/v1/rc4\0");
    h.update(address_bytes(listener));
    h.update(nonce);
    let d = h.finalize();
    let mut k = [0u8; 16];
    k.copy_from_slice(&d[..16]);
    k
}

/// XORs `header` with the RC4 keystream for (listener, nonce); applying it twice restores it.
pub fn apply(listener: SocketAddr, nonce: &[u8; 8], header: &mut [u8]) {
    let key = header_key(listener, nonce);
    let mut rc4 = Rc4::new_from_slice(&key).expect("16-byte RC4 key is valid");
    rc4.apply_keystream(header);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_address_dependence() {
        let a: SocketAddr = "198.18.0.1:33033".parse().unwrap();
        let b: SocketAddr = "198.18.0.2:33033".parse().unwrap();
        let clear = *b"\x01\x02\x03\x04\x05\x06\x07\x08";
        let mut h = clear;
        apply(a, &[9; 8], &mut h);
        assert_ne!(h, clear);
        let mut wrong = h;
        apply(b, &[9; 8], &mut wrong);
        assert_ne!(wrong, clear);
        apply(a, &[9; 8], &mut h);
        assert_eq!(h, clear);
    }
}
