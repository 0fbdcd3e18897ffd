//! Media packets: one voice frame (or a path probe) each, sealed end to end with
//! AES-256-GCM under the call's per-direction media key.
//!
//! ```text
//!  0      1              9          13              17
//!  | kind | call tag (8) | seq (4)  | timestamp (4) | sealed payload + GCM tag (16) |
//! ```
//!
//! The header is authenticated (it is the AEAD's associated data) but not secret: a relay
//! forwards packets without reading them, and the receiver finds the call by its tag.
//! The 32-bit sequence number is extended to 64 bits at the receiver (as SRTP does with
//! its rollover counter); the extended number is the GCM nonce, so no nonce repeats in
//! one direction, and a replay window refuses duplicates.

use super::invite::MediaKey;
use super::signal::Role;
use crate::crypto::aead::{SealKey, TAG_LEN};
use crate::wire::replay::ReplayWindow;

/// Bytes before the sealed payload.
pub const HEADER_LEN: usize = 17;
/// Largest media packet (a 20 ms Opus frame is far below; L16 is 1920 bytes).
pub const PACKET_LEN_MAX: usize = 2048;

/// What a media packet carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// One encoded voice frame.
    Voice,
    /// A path probe (hole punching, relay checks): "can you hear me on this path?"
    Probe,
    /// The answer to a probe, on the path it came by.
    ProbeAck,
}

impl Kind {
    fn code(self) -> u8 {
        match self {
            Self::Voice => 0x4d,
            Self::Probe => 0x50,
            Self::ProbeAck => 0x51,
        }
    }

    fn from_code(c: u8) -> Option<Self> {
        [Self::Voice, Self::Probe, Self::ProbeAck].into_iter().find(|k| k.code() == c)
    }
}

/// The first 8 bytes of a call id: how packets find their call.
pub fn call_tag(call_id: &[u8; 16]) -> [u8; 8] {
    let mut t = [0u8; 8];
    t.copy_from_slice(&call_id[..8]);
    t
}

/// Peeks at a packet's kind and call tag without authenticating it (for demultiplexing).
pub fn peek(packet: &[u8]) -> Option<(Kind, [u8; 8])> {
    if packet.len() < HEADER_LEN + TAG_LEN {
        return None;
    }
    let kind = Kind::from_code(packet[0])?;
    Some((kind, packet[1..9].try_into().ok()?))
}

/// The 32-bit sequence number of anything shaped like a media packet (for a relay's
/// replay window: it cannot authenticate the packet, only refuse to repeat one).
pub fn sequence(packet: &[u8]) -> Option<u32> {
    if packet.len() < HEADER_LEN + TAG_LEN {
        return None;
    }
    Some(u32::from_be_bytes([packet[9], packet[10], packet[11], packet[12]]))
}

fn nonce(seq: u64) -> [u8; 12] {
    let mut n = [0u8; 12];
    n[4..].copy_from_slice(&seq.to_be_bytes());
    n
}

/// Our side's sealing of outgoing media.
#[derive(Debug)]
pub struct MediaSender {
    key: SealKey,
    tag: [u8; 8],
    seq: u64,
}

impl MediaSender {
    /// The sender of `role` in call `call_id`.
    pub fn new(call_id: &[u8; 16], key: &MediaKey, role: Role) -> Self {
        Self { key: key.derive("media", role), tag: call_tag(call_id), seq: 0 }
    }

    /// Seals one packet; `timestamp` counts 48 kHz samples.
    pub fn seal(&mut self, kind: Kind, timestamp: u32, payload: &[u8]) -> Vec<u8> {
        let seq = self.seq;
        self.seq += 1;
        let mut p = Vec::with_capacity(HEADER_LEN + payload.len() + TAG_LEN);
        p.push(kind.code());
        p.extend_from_slice(&self.tag);
        p.extend_from_slice(&(seq as u32).to_be_bytes());
        p.extend_from_slice(&timestamp.to_be_bytes());
        let sealed = self.key.seal(&nonce(seq), &p, payload);
        p.extend(sealed);
        p
    }

    /// Packets sealed so far.
    pub fn sent(&self) -> u64 {
        self.seq
    }
}

/// An opened packet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Opened {
    /// What it carries.
    pub kind: Kind,
    /// The extended sequence number.
    pub seq: u64,
    /// The sender's timestamp (48 kHz samples).
    pub timestamp: u32,
    /// The payload.
    pub payload: Vec<u8>,
}

/// Why a packet was dropped (each counted by the receiver).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum MediaError {
    /// Too short, too long, or an unknown kind.
    #[error("malformed media packet")]
    Malformed,
    /// For another call.
    #[error("media packet for another call")]
    OtherCall,
    /// Seen before, or too old to tell.
    #[error("replayed media packet")]
    Replayed,
    /// Does not authenticate: forged, corrupted, or keyed for someone else.
    #[error("media packet does not authenticate")]
    Unauthenticated,
}

impl MediaError {
    /// The metric label.
    pub fn label(self) -> &'static str {
        match self {
            Self::Malformed => "malformed",
            Self::OtherCall => "other_call",
            Self::Replayed => "replayed",
            Self::Unauthenticated => "unauthenticated",
        }
    }
}

/// Our side's opening of incoming media.
#[derive(Debug)]
pub struct MediaReceiver {
    key: SealKey,
    tag: [u8; 8],
    highest: Option<u64>,
    window: ReplayWindow,
}

/// The 64-bit number closest to `highest` whose low 32 bits are `low`.
fn extend(low: u32, highest: Option<u64>) -> u64 {
    let Some(h) = highest else { return u64::from(low) };
    let base = (h & !0xffff_ffff) | u64::from(low);
    [base.wrapping_sub(1 << 32), base, base.wrapping_add(1 << 32)]
        .into_iter()
        .filter(|c| *c <= h.saturating_add(1 << 31))
        .min_by_key(|c| c.abs_diff(h))
        .unwrap_or(base)
}

impl MediaReceiver {
    /// The receiver of `role` in call `call_id` (it opens what the other role sealed).
    pub fn new(call_id: &[u8; 16], key: &MediaKey, role: Role) -> Self {
        let other = match role {
            Role::Caller => Role::Callee,
            Role::Callee => Role::Caller,
        };
        Self { key: key.derive("media", other), tag: call_tag(call_id), highest: None, window: ReplayWindow::new() }
    }

    /// Checks and opens one packet. A dropped packet changes nothing.
    pub fn open(&mut self, packet: &[u8]) -> Result<Opened, MediaError> {
        if packet.len() > PACKET_LEN_MAX {
            return Err(MediaError::Malformed);
        }
        let (kind, tag) = peek(packet).ok_or(MediaError::Malformed)?;
        if tag != self.tag {
            return Err(MediaError::OtherCall);
        }
        let low = u32::from_be_bytes(packet[9..13].try_into().map_err(|_| MediaError::Malformed)?);
        let timestamp = u32::from_be_bytes(packet[13..17].try_into().map_err(|_| MediaError::Malformed)?);
        let seq = extend(low, self.highest);
        if !self.window.check(seq) {
            return Err(MediaError::Replayed);
        }
        let payload = self
            .key
            .open(&nonce(seq), &packet[..HEADER_LEN], &packet[HEADER_LEN..])
            .map_err(|_| MediaError::Unauthenticated)?;
        self.window.accept(seq);
        self.highest = Some(self.highest.map_or(seq, |h| h.max(seq)));
        Ok(Opened { kind, seq, timestamp, payload })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn pair() -> (MediaSender, MediaReceiver) {
        let id = [7u8; 16];
        let key = MediaKey([9; 32]);
        (MediaSender::new(&id, &key, Role::Caller), MediaReceiver::new(&id, &key, Role::Callee))
    }

    #[test]
    fn round_trip_reorder_replay_forgery() {
        let (mut tx, mut rx) = pair();
        let a = tx.seal(Kind::Voice, 0, b"frame 0");
        let b = tx.seal(Kind::Voice, 960, b"frame 1");
        let o = rx.open(&b).unwrap();
        assert_eq!((o.kind, o.seq, o.timestamp, o.payload.as_slice()), (Kind::Voice, 1, 960, &b"frame 1"[..]));
        assert_eq!(rx.open(&a).unwrap().seq, 0, "reordered packets still open");
        assert_eq!(rx.open(&a), Err(MediaError::Replayed));
        let mut forged = tx.seal(Kind::Voice, 1920, b"frame 2");
        forged[HEADER_LEN] ^= 1;
        assert_eq!(rx.open(&forged), Err(MediaError::Unauthenticated));
        let mut header = tx.seal(Kind::Voice, 2880, b"frame 3");
        header[16] ^= 1;
        assert_eq!(rx.open(&header), Err(MediaError::Unauthenticated), "the timestamp is authenticated");
        // Our own packets are sealed under the other direction's key.
        let (mut tx2, _) = pair();
        let mut own = MediaReceiver::new(&[7; 16], &MediaKey([9; 32]), Role::Caller);
        assert_eq!(own.open(&tx2.seal(Kind::Voice, 0, b"x")), Err(MediaError::Unauthenticated));
        let mut other = MediaReceiver::new(&[8; 16], &MediaKey([9; 32]), Role::Callee);
        assert_eq!(other.open(&tx.seal(Kind::Probe, 0, b"")), Err(MediaError::OtherCall));
        assert_eq!(rx.open(&[0x4d; 20]), Err(MediaError::Malformed));
        assert_eq!(rx.open(&vec![0; PACKET_LEN_MAX + 1]), Err(MediaError::Malformed));
    }

    #[test]
    fn sequence_numbers_extend_past_32_bits() {
        assert_eq!(extend(5, None), 5);
        assert_eq!(extend(2, Some(0xffff_fffe)), 0x1_0000_0002, "wrapped forward");
        assert_eq!(extend(0xffff_fffe, Some(0x1_0000_0002)), 0xffff_fffe, "a late packet from before the wrap");
        let (mut tx, mut rx) = pair();
        tx.seq = 0xffff_fff0;
        rx.highest = Some(0xffff_ffef);
        for i in 0..40u64 {
            let o = rx.open(&tx.seal(Kind::Voice, 0, b"v")).unwrap();
            assert_eq!(o.seq, 0xffff_fff0 + i);
        }
    }

    proptest! {
        #[test]
        fn garbage_never_panics_nor_opens(b in proptest::collection::vec(any::<u8>(), 0..200)) {
            let (_, mut rx) = pair();
            prop_assert!(rx.open(&b).is_err());
        }

        #[test]
        fn any_arrival_order_opens_each_packet_once(order in Just((0..60u32).collect::<Vec<_>>()).prop_shuffle()) {
            let (mut tx, mut rx) = pair();
            let packets: Vec<_> = (0..60u32).map(|i| tx.seal(Kind::Voice, i * 960, &i.to_be_bytes())).collect();
            let mut got = 0;
            for i in order {
                if let Ok(o) = rx.open(&packets[i as usize]) {
                    prop_assert_eq!(o.payload, i.to_be_bytes().to_vec());
                    got += 1;
                }
                prop_assert!(rx.open(&packets[i as usize]).is_err());
            }
            prop_assert_eq!(got, 60, "60 packets fit the replay window whatever their order");
        }
    }
}
