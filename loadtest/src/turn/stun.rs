//! STUN messages (RFC 8489) as a TURN client needs them: building requests with the
//! long-term credential mechanism's MESSAGE-INTEGRITY, reading answers, and ChannelData
//! framing (RFC 8656 §12). No I/O.

use hmac::{Hmac, KeyInit, Mac};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

/// The magic cookie every STUN message carries in bytes 4..8.
pub const MAGIC_COOKIE: u32 = 0x2112_A442;
/// Bytes of a STUN header.
pub const HEADER_LEN: usize = 20;
/// Bytes of a ChannelData header.
pub const CHANNEL_DATA_HEADER_LEN: usize = 4;
/// Bytes of the MESSAGE-INTEGRITY attribute, header included.
const INTEGRITY_ATTR_LEN: usize = 4 + 20;
/// XORed into the CRC-32 of a FINGERPRINT ("STUN").
const FINGERPRINT_XOR: u32 = 0x5354_554e;

/// Methods.
pub mod method {
    /// Binding (RFC 8489).
    pub const BINDING: u16 = 0x001;
    /// Allocate (RFC 8656).
    pub const ALLOCATE: u16 = 0x003;
    /// Refresh.
    pub const REFRESH: u16 = 0x004;
    /// CreatePermission.
    pub const CREATE_PERMISSION: u16 = 0x008;
    /// ChannelBind.
    pub const CHANNEL_BIND: u16 = 0x009;
}

/// Attribute types.
pub mod attr {
    /// USERNAME.
    pub const USERNAME: u16 = 0x0006;
    /// MESSAGE-INTEGRITY (HMAC-SHA1).
    pub const MESSAGE_INTEGRITY: u16 = 0x0008;
    /// ERROR-CODE.
    pub const ERROR_CODE: u16 = 0x0009;
    /// CHANNEL-NUMBER.
    pub const CHANNEL_NUMBER: u16 = 0x000C;
    /// LIFETIME.
    pub const LIFETIME: u16 = 0x000D;
    /// XOR-PEER-ADDRESS.
    pub const XOR_PEER_ADDRESS: u16 = 0x0012;
    /// REALM.
    pub const REALM: u16 = 0x0014;
    /// NONCE.
    pub const NONCE: u16 = 0x0015;
    /// XOR-RELAYED-ADDRESS.
    pub const XOR_RELAYED_ADDRESS: u16 = 0x0016;
    /// REQUESTED-TRANSPORT.
    pub const REQUESTED_TRANSPORT: u16 = 0x0019;
    /// XOR-MAPPED-ADDRESS.
    pub const XOR_MAPPED_ADDRESS: u16 = 0x0020;
    /// SOFTWARE.
    pub const SOFTWARE: u16 = 0x8022;
    /// FINGERPRINT.
    pub const FINGERPRINT: u16 = 0x8028;
}

/// A message's class.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Class {
    /// A request.
    Request,
    /// An indication.
    Indication,
    /// A success response.
    Success,
    /// An error response.
    Error,
}

/// The 14-bit message type of `method` and `class` (the class bits sit at 4 and 8).
pub fn message_type(method: u16, class: Class) -> u16 {
    let c = match class {
        Class::Request => 0b00,
        Class::Indication => 0b01,
        Class::Success => 0b10,
        Class::Error => 0b11,
    };
    (method & 0x000f) | ((method & 0x0070) << 1) | ((method & 0x0f80) << 2) | ((c & 1) << 4) | ((c & 2) << 7)
}

/// Method and class of a message type.
pub fn split_type(t: u16) -> (u16, Class) {
    let method = (t & 0x000f) | ((t >> 1) & 0x0070) | ((t >> 2) & 0x0f80);
    let class = match ((t >> 4) & 1) | ((t >> 7) & 2) {
        0 => Class::Request,
        1 => Class::Indication,
        2 => Class::Success,
        _ => Class::Error,
    };
    (method, class)
}

/// The long-term credential key: MD5(username ":" realm ":" password) (RFC 8489 §9.2.2;
/// the strings are taken as given, without SASLprep/OpaqueString).
pub fn long_term_key(username: &str, realm: &str, password: &str) -> [u8; 16] {
    use md5::{Digest, Md5};
    Md5::digest(format!("{username}:{realm}:{password}").as_bytes()).into()
}

fn hmac_sha1(key: &[u8], data: &[u8]) -> [u8; 20] {
    let mut mac = <Hmac<sha1::Sha1> as KeyInit>::new_from_slice(key).expect("HMAC takes any key length");
    mac.update(data);
    mac.finalize().into_bytes().into()
}

fn set_length(msg: &mut [u8], attrs_len: usize) {
    msg[2..4].copy_from_slice(&(attrs_len as u16).to_be_bytes());
}

/// Builds one message, attribute by attribute.
pub struct Builder {
    buf: Vec<u8>,
}

impl Builder {
    /// A message of `method` and `class` with transaction id `tid`.
    pub fn new(method: u16, class: Class, tid: [u8; 12]) -> Self {
        let mut buf = Vec::with_capacity(128);
        buf.extend_from_slice(&message_type(method, class).to_be_bytes());
        buf.extend_from_slice(&[0, 0]);
        buf.extend_from_slice(&MAGIC_COOKIE.to_be_bytes());
        buf.extend_from_slice(&tid);
        Self { buf }
    }

    /// Adds an attribute, padded with zeros to a multiple of 4 bytes.
    pub fn attr(mut self, t: u16, value: &[u8]) -> Self {
        self.buf.extend_from_slice(&t.to_be_bytes());
        self.buf.extend_from_slice(&(value.len() as u16).to_be_bytes());
        self.buf.extend_from_slice(value);
        self.buf.resize(self.buf.len().next_multiple_of(4), 0);
        let len = self.buf.len() - HEADER_LEN;
        set_length(&mut self.buf, len);
        self
    }

    /// Adds an XOR-…-ADDRESS attribute.
    pub fn xor_addr(self, t: u16, addr: SocketAddr) -> Self {
        let tid: [u8; 12] = self.buf[8..20].try_into().expect("header is built");
        let v = encode_xor_addr(addr, &tid);
        self.attr(t, &v)
    }

    /// Adds MESSAGE-INTEGRITY with `key`: HMAC-SHA1 over the message so far, its length
    /// field already counting the integrity attribute (RFC 8489 §14.5).
    pub fn integrity(mut self, key: &[u8]) -> Self {
        let len = self.buf.len() - HEADER_LEN + INTEGRITY_ATTR_LEN;
        set_length(&mut self.buf, len);
        let mac = hmac_sha1(key, &self.buf);
        self.attr(attr::MESSAGE_INTEGRITY, &mac)
    }

    /// Adds FINGERPRINT: CRC-32 of the message so far (length counting it), XOR "STUN".
    pub fn fingerprint(mut self) -> Self {
        let len = self.buf.len() - HEADER_LEN + 8;
        set_length(&mut self.buf, len);
        let crc = crc32fast::hash(&self.buf) ^ FINGERPRINT_XOR;
        self.attr(attr::FINGERPRINT, &crc.to_be_bytes())
    }

    /// The encoded message.
    pub fn finish(self) -> Vec<u8> {
        self.buf
    }
}

/// The value of an XOR-…-ADDRESS attribute for `addr`.
pub fn encode_xor_addr(addr: SocketAddr, tid: &[u8; 12]) -> Vec<u8> {
    let port = addr.port() ^ (MAGIC_COOKIE >> 16) as u16;
    let mut v = Vec::with_capacity(20);
    match addr.ip() {
        IpAddr::V4(ip) => {
            v.extend_from_slice(&[0, 0x01]);
            v.extend_from_slice(&port.to_be_bytes());
            v.extend_from_slice(&(u32::from(ip) ^ MAGIC_COOKIE).to_be_bytes());
        }
        IpAddr::V6(ip) => {
            v.extend_from_slice(&[0, 0x02]);
            v.extend_from_slice(&port.to_be_bytes());
            let mut mask = [0u8; 16];
            mask[..4].copy_from_slice(&MAGIC_COOKIE.to_be_bytes());
            mask[4..].copy_from_slice(tid);
            v.extend(ip.octets().iter().zip(mask).map(|(a, m)| a ^ m));
        }
    }
    v
}

/// Why bytes are not a STUN message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ParseError {
    /// Shorter than a header, or than the length it announces.
    Truncated,
    /// Not a STUN message: the top bits or the magic cookie are wrong.
    NotStun,
    /// An attribute runs past the end.
    BadAttribute,
}

/// A parsed message, borrowing the bytes.
#[derive(Debug, Clone)]
pub struct Message<'a> {
    /// The method.
    pub method: u16,
    /// The class.
    pub class: Class,
    /// The transaction id.
    pub tid: [u8; 12],
    /// Attributes in order: type, value (unpadded), offset of the attribute's header.
    pub attrs: Vec<(u16, &'a [u8], usize)>,
    raw: &'a [u8],
}

/// Parses a message.
pub fn parse(raw: &[u8]) -> Result<Message<'_>, ParseError> {
    if raw.len() < HEADER_LEN {
        return Err(ParseError::Truncated);
    }
    let t = u16::from_be_bytes([raw[0], raw[1]]);
    let len = usize::from(u16::from_be_bytes([raw[2], raw[3]]));
    if t & 0xc000 != 0 || raw[4..8] != MAGIC_COOKIE.to_be_bytes() || len % 4 != 0 {
        return Err(ParseError::NotStun);
    }
    if raw.len() < HEADER_LEN + len {
        return Err(ParseError::Truncated);
    }
    let raw = &raw[..HEADER_LEN + len];
    let (method, class) = split_type(t);
    let mut attrs = Vec::new();
    let mut at = HEADER_LEN;
    while at < raw.len() {
        let head = raw.get(at..at + 4).ok_or(ParseError::BadAttribute)?;
        let at_t = u16::from_be_bytes([head[0], head[1]]);
        let at_len = usize::from(u16::from_be_bytes([head[2], head[3]]));
        let value = raw.get(at + 4..at + 4 + at_len).ok_or(ParseError::BadAttribute)?;
        attrs.push((at_t, value, at));
        at += 4 + at_len.next_multiple_of(4);
    }
    Ok(Message { method, class, tid: raw[8..20].try_into().expect("20-byte header"), attrs, raw })
}

impl Message<'_> {
    /// The first attribute of type `t`.
    pub fn attr(&self, t: u16) -> Option<&[u8]> {
        self.attrs.iter().find(|(at, _, _)| *at == t).map(|(_, v, _)| *v)
    }

    /// A UTF-8 attribute (REALM, NONCE, …).
    pub fn text(&self, t: u16) -> Option<String> {
        self.attr(t).map(|v| String::from_utf8_lossy(v).into_owned())
    }

    /// An XOR-…-ADDRESS attribute.
    pub fn xor_addr(&self, t: u16) -> Option<SocketAddr> {
        let v = self.attr(t)?;
        let port = u16::from_be_bytes([*v.get(2)?, *v.get(3)?]) ^ (MAGIC_COOKIE >> 16) as u16;
        match v.get(1)? {
            0x01 => {
                let x = u32::from_be_bytes(v.get(4..8)?.try_into().ok()?) ^ MAGIC_COOKIE;
                Some(SocketAddr::new(Ipv4Addr::from(x).into(), port))
            }
            0x02 => {
                let mut mask = [0u8; 16];
                mask[..4].copy_from_slice(&MAGIC_COOKIE.to_be_bytes());
                mask[4..].copy_from_slice(&self.tid);
                let mut ip = [0u8; 16];
                for (i, b) in v.get(4..20)?.iter().enumerate() {
                    ip[i] = b ^ mask[i];
                }
                Some(SocketAddr::new(Ipv6Addr::from(ip).into(), port))
            }
            _ => None,
        }
    }

    /// ERROR-CODE: the number (class × 100 + number) and the reason phrase.
    pub fn error_code(&self) -> Option<(u16, String)> {
        let v = self.attr(attr::ERROR_CODE)?;
        let code = u16::from(*v.get(2)? & 0x07) * 100 + u16::from(*v.get(3)?);
        Some((code, String::from_utf8_lossy(&v[4..]).into_owned()))
    }

    /// Whether MESSAGE-INTEGRITY is present and right for `key`.
    pub fn check_integrity(&self, key: &[u8]) -> bool {
        let Some((_, mac, at)) = self.attrs.iter().find(|(t, _, _)| *t == attr::MESSAGE_INTEGRITY) else {
            return false;
        };
        let mut covered = self.raw[..*at].to_vec();
        set_length(&mut covered, *at - HEADER_LEN + INTEGRITY_ATTR_LEN);
        hmac_sha1(key, &covered).as_slice() == *mac
    }

    /// Whether FINGERPRINT is present and right.
    pub fn check_fingerprint(&self) -> bool {
        let Some((_, crc, at)) = self.attrs.iter().find(|(t, _, _)| *t == attr::FINGERPRINT) else {
            return false;
        };
        let mut covered = self.raw[..*at].to_vec();
        set_length(&mut covered, *at - HEADER_LEN + 8);
        (crc32fast::hash(&covered) ^ FINGERPRINT_XOR).to_be_bytes().as_slice() == *crc
    }
}

/// The ChannelData header for `len` bytes of application data on `channel` (RFC 8656
/// §12.4; over UDP no padding follows).
pub fn channel_data_header(channel: u16, len: usize) -> [u8; CHANNEL_DATA_HEADER_LEN] {
    let [c0, c1] = channel.to_be_bytes();
    let [l0, l1] = (len as u16).to_be_bytes();
    [c0, c1, l0, l1]
}

/// Channel number and application data of a ChannelData message, or None.
pub fn parse_channel_data(raw: &[u8]) -> Option<(u16, &[u8])> {
    let head = raw.get(..CHANNEL_DATA_HEADER_LEN)?;
    let channel = u16::from_be_bytes([head[0], head[1]]);
    let len = usize::from(u16::from_be_bytes([head[2], head[3]]));
    if !(0x4000..=0x4fff).contains(&channel) {
        return None;
    }
    Some((channel, raw.get(CHANNEL_DATA_HEADER_LEN..CHANNEL_DATA_HEADER_LEN + len)?))
}

impl std::fmt::Display for ParseError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Truncated => "truncated STUN message",
            Self::NotStun => "not a STUN message",
            Self::BadAttribute => "STUN attribute runs past the end",
        })
    }
}

impl std::error::Error for ParseError {}

#[cfg(test)]
mod tests {
    use super::*;

    /// Hex with whitespace and `#` comments, as the RFC lays the vectors out.
    fn hex(s: &str) -> Vec<u8> {
        let digits: String =
            s.lines().map(|l| l.split('#').next().unwrap_or("")).collect::<String>().split_whitespace().collect();
        (0..digits.len()).step_by(2).map(|i| u8::from_str_radix(&digits[i..i + 2], 16).unwrap()).collect()
    }

    /// RFC 5769 §2.1, sample request (short-term credentials).
    fn sample_request() -> Vec<u8> {
        hex("00 01 00 58  21 12 a4 42  b7 e7 a7 01  bc 34 d6 86  fa 87 df ae  # header
             80 22 00 10  53 54 55 4e  20 74 65 73  74 20 63 6c  69 65 6e 74  # SOFTWARE
             00 24 00 04  6e 00 01 ff                                         # PRIORITY
             80 29 00 08  93 2f f9 b1  51 26 3b 36                            # ICE-CONTROLLED
             00 06 00 09  65 76 74 6a  3a 68 36 76  59 20 20 20               # USERNAME
             00 08 00 14  9a ea a7 0c  bf d8 cb 56  78 1e f2 b5  b2 d3 f2 49  c1 b5 71 a2
             80 28 00 04  e5 7a 3b cf                                         # FINGERPRINT")
    }

    /// RFC 5769 §2.2, sample IPv4 response.
    fn sample_ipv4_response() -> Vec<u8> {
        hex("01 01 00 3c  21 12 a4 42  b7 e7 a7 01  bc 34 d6 86  fa 87 df ae
             80 22 00 0b  74 65 73 74  20 76 65 63  74 6f 72 20               # SOFTWARE
             00 20 00 08  00 01 a1 47  e1 12 a6 43                            # XOR-MAPPED-ADDRESS
             00 08 00 14  2b 91 f5 99  fd 9e 90 c3  8c 74 89 f9  2a f9 ba 53  f0 6b e7 d7
             80 28 00 04  c0 7d 4c 96")
    }

    /// RFC 5769 §2.4, sample request with long-term authentication.
    fn sample_long_term_request() -> Vec<u8> {
        hex("00 01 00 60  21 12 a4 42  78 ad 34 33  c6 ad 72 c0  29 da 41 2e
             00 06 00 12  e3 83 9e e3  83 88 e3 83  aa e3 83 83  e3 82 af e3  82 b9 00 00  # USERNAME
             00 15 00 1c  66 2f 2f 34  39 39 6b 39  35 34 64 36  4f 4c 33 34  6f 4c 39 46
                          53 54 76 79  36 34 73 41                                         # NONCE
             00 14 00 0b  65 78 61 6d  70 6c 65 2e  6f 72 67 00                            # REALM
             00 08 00 14  f6 70 24 65  6d d6 4a 3e  02 b8 e0 71  2e 85 c9 a2  8c a8 96 66")
    }

    const SHORT_TERM_PASSWORD: &[u8] = b"VOkJxbRl1RmTxUk/WvJxBt";

    #[test]
    fn rfc5769_sample_request_integrity_and_fingerprint() {
        let raw = sample_request();
        let m = parse(&raw).unwrap();
        assert_eq!((m.method, m.class), (method::BINDING, Class::Request));
        assert_eq!(m.text(attr::USERNAME).as_deref(), Some("evtj:h6vY"));
        assert!(m.check_integrity(SHORT_TERM_PASSWORD));
        assert!(!m.check_integrity(b"wrong"));
        assert!(m.check_fingerprint());
        let mut bad = raw.clone();
        bad[30] ^= 1;
        assert!(!parse(&bad).unwrap().check_integrity(SHORT_TERM_PASSWORD));
    }

    #[test]
    fn rfc5769_sample_ipv4_response() {
        let raw = sample_ipv4_response();
        let m = parse(&raw).unwrap();
        assert_eq!((m.method, m.class), (method::BINDING, Class::Success));
        assert_eq!(m.xor_addr(attr::XOR_MAPPED_ADDRESS), Some("192.0.2.1:32853".parse().unwrap()));
        assert!(m.check_integrity(SHORT_TERM_PASSWORD));
        assert!(m.check_fingerprint());
        // Encoding the address back gives the vector's bytes.
        assert_eq!(encode_xor_addr("192.0.2.1:32853".parse().unwrap(), &m.tid), hex("00 01 a1 47 e1 12 a6 43"));
    }

    #[test]
    fn rfc5769_long_term_request_is_rebuilt_byte_for_byte() {
        let want = sample_long_term_request();
        let tid: [u8; 12] = want[8..20].try_into().unwrap();
        // SASLprep of "The\u{00AD}M\u{00AA}tr\u{2168}" is "TheMatrIX" (RFC 5769 §2.4).
        let key = long_term_key("\u{30DE}\u{30C8}\u{30EA}\u{30C3}\u{30AF}\u{30B9}", "example.org", "TheMatrIX");
        let built = Builder::new(method::BINDING, Class::Request, tid)
            .attr(attr::USERNAME, "\u{30DE}\u{30C8}\u{30EA}\u{30C3}\u{30AF}\u{30B9}".as_bytes())
            .attr(attr::NONCE, b"f//499k954d6OL34oL9FSTvy64sA")
            .attr(attr::REALM, b"example.org")
            .integrity(&key)
            .finish();
        assert_eq!(built, want);
        let m = parse(&built).unwrap();
        assert!(m.check_integrity(&key));
        assert_eq!(m.text(attr::REALM).as_deref(), Some("example.org"));
    }

    #[test]
    fn message_types_of_turn_methods() {
        assert_eq!(message_type(method::ALLOCATE, Class::Request), 0x0003);
        assert_eq!(message_type(method::ALLOCATE, Class::Success), 0x0103);
        assert_eq!(message_type(method::ALLOCATE, Class::Error), 0x0113);
        assert_eq!(message_type(method::CHANNEL_BIND, Class::Success), 0x0109);
        // Send and Data indications.
        assert_eq!(message_type(0x006, Class::Indication), 0x0016);
        assert_eq!(message_type(0x007, Class::Indication), 0x0017);
        for t in [0x0001, 0x0101, 0x0111, 0x0003, 0x0113, 0x0016, 0x0017, 0x0109, 0x3eef] {
            let (m, c) = split_type(t);
            assert_eq!(message_type(m, c), t, "{t:#06x}");
        }
    }

    #[test]
    fn xor_addresses_round_trip() {
        let tid = [7u8; 12];
        for a in ["127.0.0.1:3478", "[2001:db8::1]:50000"] {
            let addr: SocketAddr = a.parse().unwrap();
            let msg = Builder::new(method::CREATE_PERMISSION, Class::Request, tid)
                .xor_addr(attr::XOR_PEER_ADDRESS, addr)
                .fingerprint()
                .finish();
            let m = parse(&msg).unwrap();
            assert_eq!(m.xor_addr(attr::XOR_PEER_ADDRESS), Some(addr));
            assert!(m.check_fingerprint());
        }
    }

    #[test]
    fn error_codes_and_channel_data() {
        let msg = Builder::new(method::ALLOCATE, Class::Error, [1; 12])
            .attr(attr::ERROR_CODE, &[0, 0, 4, 1, b'U', b'n', b'a', b'u', b't', b'h'])
            .attr(attr::NONCE, b"abc")
            .finish();
        let m = parse(&msg).unwrap();
        assert_eq!(m.class, Class::Error);
        assert_eq!(m.error_code(), Some((401, "Unauth".into())));
        assert_eq!(m.text(attr::NONCE).as_deref(), Some("abc"));
        let mut cd = channel_data_header(0x4000, 3).to_vec();
        cd.extend_from_slice(b"xyz");
        assert_eq!(parse_channel_data(&cd), Some((0x4000, &b"xyz"[..])));
        assert_eq!(parse_channel_data(&cd[..5]), None);
        assert!(parse(&cd).is_err(), "ChannelData is not a STUN message");
        assert_eq!(parse(&msg[..25]).unwrap_err(), ParseError::Truncated);
    }
}
