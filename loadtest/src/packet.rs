//! The inner packet every traffic scenario carries, whatever the relay in between.
//!
//! ```text
//!  0      1              9          13              17             25
//!  | kind | tag (8)      | seq (4)  | timestamp (4) | sent at (8)  | padding … | 16 zero bytes |
//! ```
//!
//! It is shaped like a confab media packet (`confab::call::media`): the confab relay
//! reads the kind's position, refuses anything shorter than a media header and GCM tag
//! (33 bytes), and keeps a replay window over the sequence number, so each leg numbers
//! its packets upwards. The tag names the sending leg, so a receiver can tell a packet
//! delivered to the wrong leg; "sent at" is nanoseconds since the run's shared epoch,
//! so the receiving leg on the same machine measures one-way latency with one clock.

/// Kind byte of a timed packet (a confab voice frame).
pub const VOICE: u8 = 0x4d;
/// Kind byte of a latching probe, sent before the timed window (a confab path probe).
pub const PROBE: u8 = 0x50;
/// Bytes of the media header: kind, tag, sequence number, timestamp.
const HEADER_LEN: usize = 17;
/// Bytes a confab media packet ends with (the AES-GCM tag; zeros here).
const GCM_TAG_LEN: usize = 16;
/// The smallest inner packet: header, send time, GCM tag.
pub const INNER_MIN: usize = HEADER_LEN + 8 + GCM_TAG_LEN;
/// The largest inner packet a confab relay forwards (`confab::call::media::PACKET_LEN_MAX`).
pub const INNER_MAX: usize = confab::call::media::PACKET_LEN_MAX;
/// First two tag bytes: not a call tag any real call would pick by chance.
const TAG_MAGIC: [u8; 2] = *b"lt";

/// What a receiver reads from an inner packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Parsed {
    /// [`VOICE`] or [`PROBE`].
    pub kind: u8,
    /// The sending leg.
    pub leg: u32,
    /// The sending leg's sequence number.
    pub seq: u32,
    /// When it was sent, nanoseconds since the epoch of the run.
    pub sent_ns: u64,
}

/// A zeroed inner packet of `len` bytes, tagged with `leg`.
pub fn template(len: usize, leg: u32) -> Vec<u8> {
    let mut p = vec![0u8; len.max(INNER_MIN)];
    p[0] = VOICE;
    p[1..3].copy_from_slice(&TAG_MAGIC);
    p[3..7].copy_from_slice(&leg.to_be_bytes());
    p
}

/// Stamps kind, sequence number and send time into `inner` (made by [`template`]).
pub fn stamp(inner: &mut [u8], kind: u8, seq: u32, sent_ns: u64) {
    inner[0] = kind;
    inner[9..13].copy_from_slice(&seq.to_be_bytes());
    // A media timestamp in microseconds, wrapping: decorative, the relay ignores it.
    inner[13..17].copy_from_slice(&((sent_ns / 1000) as u32).to_be_bytes());
    inner[17..25].copy_from_slice(&sent_ns.to_be_bytes());
}

/// Reads a packet made by [`template`] and [`stamp`]; None for anything else.
pub fn parse(inner: &[u8]) -> Option<Parsed> {
    if inner.len() < INNER_MIN || inner[1..3] != TAG_MAGIC || !matches!(inner[0], VOICE | PROBE) {
        return None;
    }
    let u32_at = |i: usize| u32::from_be_bytes([inner[i], inner[i + 1], inner[i + 2], inner[i + 3]]);
    let mut sent = [0u8; 8];
    sent.copy_from_slice(&inner[17..25]);
    Some(Parsed { kind: inner[0], leg: u32_at(3), seq: u32_at(9), sent_ns: u64::from_be_bytes(sent) })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stamp_then_parse() {
        let mut p = template(120, 7);
        stamp(&mut p, VOICE, 42, 1_234_567_890_123);
        assert_eq!(p.len(), 120);
        assert_eq!(parse(&p), Some(Parsed { kind: VOICE, leg: 7, seq: 42, sent_ns: 1_234_567_890_123 }));
        assert_eq!(confab::call::media::sequence(&p), Some(42), "the relay reads the same sequence number");
    }

    #[test]
    fn short_and_foreign_packets_are_refused() {
        assert_eq!(template(10, 1).len(), INNER_MIN);
        assert_eq!(parse(&[0x4d; 20]), None);
        let mut p = template(64, 1);
        p[1] = b'x';
        assert_eq!(parse(&p), None);
    }
}
