//! UDP legs of a relay session for the relay tests: a socket, media-shaped packets, draining.

use std::net::UdpSocket;
use std::time::Duration;

/// A loopback UDP socket that gives up reading after 300 ms of quiet.
pub fn socket() -> UdpSocket {
    let s = UdpSocket::bind("127.0.0.1:0").unwrap();
    s.set_read_timeout(Some(Duration::from_millis(300))).unwrap();
    s
}

/// An inner packet shaped like media (`call::media`): sequence number `seq`, carrying
/// `text` where the sealed payload would be.
pub fn media(seq: u32, text: &[u8]) -> Vec<u8> {
    let mut p = vec![0x4d; 17];
    p[9..13].copy_from_slice(&seq.to_be_bytes());
    p.extend_from_slice(text);
    p.extend_from_slice(&[0; 16]);
    p
}

/// Datagrams `s` receives until it goes quiet.
pub fn drain(s: &UdpSocket) -> Vec<Vec<u8>> {
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    while let Ok(n) = s.recv(&mut buf) {
        got.push(buf[..n].to_vec());
    }
    got
}

/// Datagrams waiting on `s` right now (does not wait for more).
pub fn drain_quick(s: &UdpSocket) -> usize {
    s.set_nonblocking(true).unwrap();
    let mut n = 0;
    let mut buf = [0u8; 4096];
    while s.recv(&mut buf).is_ok() {
        n += 1;
    }
    s.set_nonblocking(false).unwrap();
    n
}
