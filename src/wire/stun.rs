//! STUN Binding (RFC 8489) on the super node's UDP port: any standard STUN client can
//! learn its public address from a super node.
//!
//! Only what a public Binding server needs: recognise a request by its magic cookie,
//! check FINGERPRINT when present, refuse unknown comprehension-required attributes
//! with a 420 response (as RFC 8489 §6.3.1 asks), and answer with XOR-MAPPED-ADDRESS,
//! SOFTWARE and FINGERPRINT.

use std::net::{IpAddr, SocketAddr};

/// The fixed magic cookie of RFC 5389/8489.
pub const MAGIC_COOKIE: u32 = 0x2112_A442;
const HEADER_LEN: usize = 20;
const BINDING_REQUEST: u16 = 0x0001;
const BINDING_SUCCESS: u16 = 0x0101;
const BINDING_ERROR: u16 = 0x0111;
const ATTR_XOR_MAPPED_ADDRESS: u16 = 0x0020;
const ATTR_ERROR_CODE: u16 = 0x0009;
const ATTR_UNKNOWN_ATTRIBUTES: u16 = 0x000A;
const ATTR_SOFTWARE: u16 = 0x8022;
const ATTR_FINGERPRINT: u16 = 0x8028;
const FINGERPRINT_XOR: u32 = 0x5354_554e;
/// Largest request we look at; Binding requests are tiny.
pub const REQUEST_LEN_MAX: usize = 548;

/// Comprehension-required attributes we understand (and ignore for an unauthenticated
/// Binding): USERNAME, MESSAGE-INTEGRITY, REALM, NONCE, MESSAGE-INTEGRITY-SHA256,
/// PASSWORD-ALGORITHM, USERHASH, PRIORITY, USE-CANDIDATE.
const KNOWN_REQUIRED: [u16; 9] = [0x0006, 0x0008, 0x0014, 0x0015, 0x001C, 0x001D, 0x001E, 0x0024, 0x0025];

/// Why a datagram that looked like STUN was not answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum StunError {
    /// Not a well-formed STUN message.
    #[error("malformed STUN message")]
    Malformed,
    /// A STUN message other than a Binding request (responses, indications, other methods).
    #[error("not a Binding request")]
    NotBindingRequest,
    /// FINGERPRINT present but wrong.
    #[error("bad FINGERPRINT")]
    BadFingerprint,
}

impl StunError {
    /// A short, stable label for metrics.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::Malformed => "malformed",
            Self::NotBindingRequest => "not_binding_request",
            Self::BadFingerprint => "bad_fingerprint",
        }
    }
}

/// Whether a datagram is STUN rather than a confab frame: the first two bits are zero
/// and the magic cookie sits at bytes 4..8. confab frames start with version 1, whose
/// first two bits are zero too, so the cookie is what tells them apart.
pub fn looks_like_stun(b: &[u8]) -> bool {
    b.len() >= HEADER_LEN && b[0] & 0xC0 == 0 && b[4..8] == MAGIC_COOKIE.to_be_bytes()
}

fn crc32(b: &[u8]) -> u32 {
    crc32fast::hash(b)
}

/// Answers one STUN datagram: the response to send back, or why there is none.
pub fn answer(request: &[u8], source: SocketAddr, software: &str) -> Result<Vec<u8>, StunError> {
    if request.len() < HEADER_LEN || request.len() > REQUEST_LEN_MAX || !looks_like_stun(request) {
        return Err(StunError::Malformed);
    }
    let msg_type = u16::from_be_bytes([request[0], request[1]]);
    let len = u16::from_be_bytes([request[2], request[3]]) as usize;
    if !len.is_multiple_of(4) || HEADER_LEN + len != request.len() {
        return Err(StunError::Malformed);
    }
    if msg_type != BINDING_REQUEST {
        return Err(StunError::NotBindingRequest);
    }
    let mut tid = [0u8; 12];
    tid.copy_from_slice(&request[8..20]);

    let mut unknown = Vec::new();
    let mut pos = HEADER_LEN;
    while pos < request.len() {
        if pos + 4 > request.len() {
            return Err(StunError::Malformed);
        }
        let t = u16::from_be_bytes([request[pos], request[pos + 1]]);
        let l = u16::from_be_bytes([request[pos + 2], request[pos + 3]]) as usize;
        let value = pos + 4;
        let end = value + l.div_ceil(4) * 4;
        if end > request.len() {
            return Err(StunError::Malformed);
        }
        if t == ATTR_FINGERPRINT {
            // FINGERPRINT must be last and covers everything before it, with the header's
            // length field counting up to and including the FINGERPRINT attribute.
            if l != 4 || end != request.len() {
                return Err(StunError::Malformed);
            }
            let want = u32::from_be_bytes([request[value], request[value + 1], request[value + 2], request[value + 3]]);
            if crc32(&request[..pos]) ^ FINGERPRINT_XOR != want {
                return Err(StunError::BadFingerprint);
            }
        } else if t < 0x8000 && !KNOWN_REQUIRED.contains(&t) && unknown.len() < 16 {
            unknown.push(t);
        }
        pos = end;
    }

    let mut attrs = Vec::with_capacity(64);
    let msg_type = if unknown.is_empty() {
        put_xor_mapped_address(&mut attrs, source, &tid);
        BINDING_SUCCESS
    } else {
        // 420 Unknown Attribute: class 4, number 20.
        let reason = b"Unknown Attribute";
        let mut v = vec![0, 0, 4, 20];
        v.extend_from_slice(reason);
        put_attr(&mut attrs, ATTR_ERROR_CODE, &v);
        let list: Vec<u8> = unknown.iter().flat_map(|t| t.to_be_bytes()).collect();
        put_attr(&mut attrs, ATTR_UNKNOWN_ATTRIBUTES, &list);
        BINDING_ERROR
    };
    put_attr(&mut attrs, ATTR_SOFTWARE, software.as_bytes());

    let mut out = Vec::with_capacity(HEADER_LEN + attrs.len() + 8);
    out.extend_from_slice(&msg_type.to_be_bytes());
    out.extend_from_slice(&((attrs.len() + 8) as u16).to_be_bytes());
    out.extend_from_slice(&MAGIC_COOKIE.to_be_bytes());
    out.extend_from_slice(&tid);
    out.extend_from_slice(&attrs);
    let fp = crc32(&out) ^ FINGERPRINT_XOR;
    put_attr(&mut out, ATTR_FINGERPRINT, &fp.to_be_bytes());
    Ok(out)
}

fn put_attr(out: &mut Vec<u8>, t: u16, v: &[u8]) {
    out.extend_from_slice(&t.to_be_bytes());
    out.extend_from_slice(&(v.len() as u16).to_be_bytes());
    out.extend_from_slice(v);
    out.resize(out.len() + (4 - v.len() % 4) % 4, 0);
}

fn put_xor_mapped_address(out: &mut Vec<u8>, addr: SocketAddr, tid: &[u8; 12]) {
    let cookie = MAGIC_COOKIE.to_be_bytes();
    let port = addr.port() ^ (MAGIC_COOKIE >> 16) as u16;
    let mut v = Vec::with_capacity(20);
    match addr.ip() {
        IpAddr::V4(ip) => {
            v.extend_from_slice(&[0, 1]);
            v.extend_from_slice(&port.to_be_bytes());
            v.extend(ip.octets().iter().zip(cookie.iter()).map(|(a, b)| a ^ b));
        }
        IpAddr::V6(ip) => {
            v.extend_from_slice(&[0, 2]);
            v.extend_from_slice(&port.to_be_bytes());
            let key: Vec<u8> = cookie.iter().chain(tid.iter()).copied().collect();
            v.extend(ip.octets().iter().zip(key.iter()).map(|(a, b)| a ^ b));
        }
    }
    put_attr(out, ATTR_XOR_MAPPED_ADDRESS, &v);
}

/// Reads XOR-MAPPED-ADDRESS from a Binding success response (for tests and diagnostics).
pub fn parse_xor_mapped_address(response: &[u8]) -> Option<SocketAddr> {
    if response.len() < HEADER_LEN || u16::from_be_bytes([response[0], response[1]]) != BINDING_SUCCESS {
        return None;
    }
    let tid = &response[8..20];
    let mut pos = HEADER_LEN;
    while pos + 4 <= response.len() {
        let t = u16::from_be_bytes([response[pos], response[pos + 1]]);
        let l = u16::from_be_bytes([response[pos + 2], response[pos + 3]]) as usize;
        let v = response.get(pos + 4..pos + 4 + l)?;
        if t == ATTR_XOR_MAPPED_ADDRESS && v.len() >= 8 {
            let port = u16::from_be_bytes([v[2], v[3]]) ^ (MAGIC_COOKIE >> 16) as u16;
            let cookie = MAGIC_COOKIE.to_be_bytes();
            let ip: IpAddr = match (v[1], v.len()) {
                (1, 8) => {
                    let mut o = [0u8; 4];
                    for i in 0..4 {
                        o[i] = v[4 + i] ^ cookie[i];
                    }
                    o.into()
                }
                (2, 20) => {
                    let key: Vec<u8> = cookie.iter().chain(tid.iter()).copied().collect();
                    let mut o = [0u8; 16];
                    for i in 0..16 {
                        o[i] = v[4 + i] ^ key[i];
                    }
                    o.into()
                }
                _ => return None,
            };
            return Some(SocketAddr::new(ip, port));
        }
        pos += 4 + l.div_ceil(4) * 4;
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// The sample request of RFC 5769 §2.1.
    const RFC5769_REQUEST: [u8; 108] = [
        0x00, 0x01, 0x00, 0x58, 0x21, 0x12, 0xa4, 0x42, 0xb7, 0xe7, 0xa7, 0x01, 0xbc, 0x34, 0xd6, 0x86, 0xfa, 0x87,
        0xdf, 0xae, 0x80, 0x22, 0x00, 0x10, 0x53, 0x54, 0x55, 0x4e, 0x20, 0x74, 0x65, 0x73, 0x74, 0x20, 0x63, 0x6c,
        0x69, 0x65, 0x6e, 0x74, 0x00, 0x24, 0x00, 0x04, 0x6e, 0x00, 0x01, 0xff, 0x80, 0x29, 0x00, 0x08, 0x93, 0x2f,
        0xf9, 0xb1, 0x51, 0x26, 0x3b, 0x36, 0x00, 0x06, 0x00, 0x09, 0x65, 0x76, 0x74, 0x6a, 0x3a, 0x68, 0x36, 0x76,
        0x59, 0x20, 0x20, 0x20, 0x00, 0x08, 0x00, 0x14, 0x9a, 0xea, 0xa7, 0x0c, 0xbf, 0xd8, 0xcb, 0x56, 0x78, 0x1e,
        0xf2, 0xb5, 0xb2, 0xd3, 0xf2, 0x49, 0xc1, 0xb5, 0x71, 0xa2, 0x80, 0x28, 0x00, 0x04, 0xe5, 0x7a, 0x3b, 0xcf,
    ];

    #[test]
    fn answers_the_rfc5769_request_with_the_rfc5769_mapped_address() {
        let src: SocketAddr = "192.0.2.1:32853".parse().unwrap();
        assert!(looks_like_stun(&RFC5769_REQUEST));
        let resp = answer(&RFC5769_REQUEST, src, "confab").unwrap();
        // RFC 5769 §2.2 gives these bytes for 192.0.2.1:32853.
        let xma = [0x00, 0x20, 0x00, 0x08, 0x00, 0x01, 0xa1, 0x47, 0xe1, 0x12, 0xa6, 0x43];
        assert!(resp.windows(12).any(|w| w == xma));
        assert_eq!(parse_xor_mapped_address(&resp), Some(src));
        assert_eq!(&resp[8..20], &RFC5769_REQUEST[8..20]);
    }

    #[test]
    fn ipv6_and_fingerprint() {
        let src: SocketAddr = "[2001:db8:1234:5678:11:2233:4455:6677]:32853".parse().unwrap();
        let resp = answer(&RFC5769_REQUEST, src, "confab").unwrap();
        assert_eq!(parse_xor_mapped_address(&resp), Some(src));
        let mut bad = RFC5769_REQUEST;
        bad[107] ^= 1;
        assert_eq!(answer(&bad, src, "x"), Err(StunError::BadFingerprint));
    }

    #[test]
    fn unknown_required_attribute_gets_420() {
        // CHANGE-REQUEST (RFC 5780) is comprehension-required and not supported here.
        let mut req = vec![0x00, 0x01, 0x00, 0x08, 0x21, 0x12, 0xa4, 0x42];
        req.extend_from_slice(&[7; 12]);
        req.extend_from_slice(&[0x00, 0x03, 0x00, 0x04, 0, 0, 0, 6]);
        let resp = answer(&req, "192.0.2.1:1".parse().unwrap(), "x").unwrap();
        assert_eq!(u16::from_be_bytes([resp[0], resp[1]]), BINDING_ERROR);
        assert!(resp.windows(4).any(|w| w == [0, 0, 4, 20]));
    }

    #[test]
    fn non_requests_are_not_answered() {
        let mut resp = answer(&RFC5769_REQUEST, "192.0.2.1:1".parse().unwrap(), "x").unwrap();
        assert_eq!(answer(&resp, "192.0.2.1:1".parse().unwrap(), "x"), Err(StunError::NotBindingRequest));
        resp.truncate(30);
        assert!(answer(&resp, "192.0.2.1:1".parse().unwrap(), "x").is_err());
    }

    proptest! {
        #[test]
        fn total(mut b in proptest::collection::vec(any::<u8>(), 0..600)) {
            if b.len() >= 8 {
                b[4..8].copy_from_slice(&MAGIC_COOKIE.to_be_bytes());
                b[0] &= 0x3f;
            }
            let _ = answer(&b, "192.0.2.1:1".parse().unwrap(), "x");
            let _ = parse_xor_mapped_address(&b);
        }
    }
}
