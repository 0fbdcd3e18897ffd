//! The messages between a host and its super node for the message store (`docs/chat.md`
//! §3). The super node never opens a stored message: it sees its id, its recipient, its
//! size, and the sender (the session's own user).

use super::codec::{DecodeError, Reader, Writer};
use super::frame::PAYLOAD_LEN_MAX;
use super::message::USERNAME_WIRE_MAX;

/// Largest sealed message a store takes (the store's bound).
pub const MAIL_SEALED_MAX: usize = crate::index::mail::message::SEALED_LEN_MAX;
/// Most ids one MailAck carries.
pub const ACK_IDS_MAX: usize = 64;
/// Largest MailBatch body: one frame.
pub const BATCH_LEN_MAX: usize = PAYLOAD_LEN_MAX - 64;

/// A stored message's id: random, chosen by the sender, the store's key.
pub type MailId = [u8; 16];
/// A device's id (`crypto::user::DeviceId`'s bytes).
pub type DeviceBytes = [u8; 8];

/// MailSubmit: store this sealed message for `to` (and push it to `to`'s sessions).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MailSubmit {
    /// Matches the reply.
    pub req: u32,
    /// The message's id.
    pub id: MailId,
    /// The recipient.
    pub to: String,
    /// The sealed message, opaque to super nodes.
    pub sealed: Vec<u8>,
}

impl MailSubmit {
    /// Encodes.
    pub fn encode(&self) -> Vec<u8> {
        let mut w = Writer::new();
        w.u32(self.req).raw(&self.id).str(&self.to).bytes(&self.sealed);
        w.into_bytes()
    }

    /// Decodes.
    pub fn decode(b: &[u8]) -> Result<Self, DecodeError> {
        let mut r = Reader::new(b);
        let req = r.u32("mail_submit.req")?;
        let id = r.array("mail_submit.id")?;
        let to = r.str("mail_submit.to", USERNAME_WIRE_MAX)?.to_owned();
        let sealed = r.bytes("mail_submit.sealed", MAIL_SEALED_MAX)?.to_vec();
        r.finish()?;
        Ok(Self { req, id, to, sealed })
    }
}

/// MailSubmitReply: stored (`code` 0) at `replicas` replicas, or why not (an
/// `ErrorCode`: over quota, no such user, too many requests).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MailSubmitReply {
    /// The MailSubmit's id.
    pub req: u32,
    /// 0, or an `ErrorCode`.
    pub code: u16,
    /// Replicas that hold the message.
    pub replicas: u8,
    /// Sessions of the recipient it was pushed to at once.
    pub pushed: u8,
}

impl MailSubmitReply {
    /// Encodes.
    pub fn encode(&self) -> Vec<u8> {
        let mut w = Writer::new();
        w.u32(self.req).u16(self.code).u8(self.replicas).u8(self.pushed);
        w.into_bytes()
    }

    /// Decodes.
    pub fn decode(b: &[u8]) -> Result<Self, DecodeError> {
        let mut r = Reader::new(b);
        let req = r.u32("mail_submit_reply.req")?;
        let code = r.u16("mail_submit_reply.code")?;
        let replicas = r.u8("mail_submit_reply.replicas")?;
        let pushed = r.u8("mail_submit_reply.pushed")?;
        r.finish()?;
        Ok(Self { req, code, replicas, pushed })
    }
}

/// MailFetch: what is stored for this device, after `after` (a page at a time).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MailFetch {
    /// Matches the batch.
    pub req: u32,
    /// The fetching device.
    pub device: DeviceBytes,
    /// The last id of the previous page, if any.
    pub after: Option<MailId>,
}

impl MailFetch {
    /// Encodes.
    pub fn encode(&self) -> Vec<u8> {
        let mut w = Writer::new();
        w.u32(self.req).raw(&self.device);
        match &self.after {
            Some(id) => w.u8(1).raw(id),
            None => w.u8(0),
        };
        w.into_bytes()
    }

    /// Decodes.
    pub fn decode(b: &[u8]) -> Result<Self, DecodeError> {
        let mut r = Reader::new(b);
        let req = r.u32("mail_fetch.req")?;
        let device = r.array("mail_fetch.device")?;
        let after = match r.u8("mail_fetch.after")? {
            0 => None,
            1 => Some(r.array("mail_fetch.after")?),
            _ => return Err(DecodeError::Invalid("mail_fetch.after")),
        };
        r.finish()?;
        Ok(Self { req, device, after })
    }
}

/// MailBatch: a page of sealed messages for the fetching device, oldest first.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MailBatch {
    /// The MailFetch's id.
    pub req: u32,
    /// 0, or an `ErrorCode` (the store could not be reached).
    pub code: u16,
    /// The messages: each with its id (so even one that does not open can be
    /// acknowledged) and its sealed bytes.
    pub messages: Vec<(MailId, Vec<u8>)>,
    /// Whether more wait after the last.
    pub more: bool,
}

impl MailBatch {
    /// Encodes; the caller keeps the whole within [`BATCH_LEN_MAX`] (see [`MailBatch::fits`]).
    pub fn encode(&self) -> Vec<u8> {
        let mut w = Writer::new();
        w.u32(self.req).u16(self.code).u8(u8::from(self.more)).u8(self.messages.len() as u8);
        for (id, m) in &self.messages {
            w.raw(id).bytes(m);
        }
        w.into_bytes()
    }

    /// Whether a page holding `messages` plus one of `next` bytes still fits one frame.
    pub fn fits(messages: &[(MailId, Vec<u8>)], next: usize) -> bool {
        const EACH: usize = 16 + 2;
        let used: usize = messages.iter().map(|(_, m)| m.len() + EACH).sum();
        messages.len() < usize::from(u8::MAX) && 8 + used + next + EACH <= BATCH_LEN_MAX
    }

    /// Decodes.
    pub fn decode(b: &[u8]) -> Result<Self, DecodeError> {
        if b.len() > BATCH_LEN_MAX {
            return Err(DecodeError::TooLong { field: "mail_batch", len: b.len(), max: BATCH_LEN_MAX });
        }
        let mut r = Reader::new(b);
        let req = r.u32("mail_batch.req")?;
        let code = r.u16("mail_batch.code")?;
        let more = match r.u8("mail_batch.more")? {
            0 => false,
            1 => true,
            _ => return Err(DecodeError::Invalid("mail_batch.more")),
        };
        let n = r.u8("mail_batch.count")?;
        let mut messages = Vec::with_capacity(usize::from(n));
        for _ in 0..n {
            let id = r.array("mail_batch.id")?;
            messages.push((id, r.bytes("mail_batch.message", MAIL_SEALED_MAX)?.to_vec()));
        }
        r.finish()?;
        Ok(Self { req, code, messages, more })
    }
}

/// MailAck: this device holds these messages in its history; the store may forget them
/// for it (and delete them once every device of the user has them).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MailAck {
    /// Matches the reply.
    pub req: u32,
    /// The acknowledging device.
    pub device: DeviceBytes,
    /// The messages, at most [`ACK_IDS_MAX`].
    pub ids: Vec<MailId>,
}

impl MailAck {
    /// Encodes.
    pub fn encode(&self) -> Vec<u8> {
        let mut w = Writer::new();
        w.u32(self.req).raw(&self.device).u8(self.ids.len() as u8);
        for id in &self.ids {
            w.raw(id);
        }
        w.into_bytes()
    }

    /// Decodes.
    pub fn decode(b: &[u8]) -> Result<Self, DecodeError> {
        let mut r = Reader::new(b);
        let req = r.u32("mail_ack.req")?;
        let device = r.array("mail_ack.device")?;
        let n = usize::from(r.u8("mail_ack.count")?);
        if n > ACK_IDS_MAX {
            return Err(DecodeError::TooLong { field: "mail_ack.ids", len: n, max: ACK_IDS_MAX });
        }
        let mut ids = Vec::with_capacity(n);
        for _ in 0..n {
            ids.push(r.array("mail_ack.id")?);
        }
        r.finish()?;
        Ok(Self { req, device, ids })
    }
}

/// MailAckReply: the acknowledgement reached the store (`code` 0), or why not.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MailAckReply {
    /// The MailAck's id.
    pub req: u32,
    /// 0, or an `ErrorCode`.
    pub code: u16,
}

impl MailAckReply {
    /// Encodes.
    pub fn encode(&self) -> Vec<u8> {
        let mut w = Writer::new();
        w.u32(self.req).u16(self.code);
        w.into_bytes()
    }

    /// Decodes.
    pub fn decode(b: &[u8]) -> Result<Self, DecodeError> {
        let mut r = Reader::new(b);
        let req = r.u32("mail_ack_reply.req")?;
        let code = r.u16("mail_ack_reply.code")?;
        r.finish()?;
        Ok(Self { req, code })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn round_trips_and_truncations() {
        let s = MailSubmit { req: 7, id: [1; 16], to: "bob".into(), sealed: vec![9; MAIL_SEALED_MAX] };
        let mut big = s.clone();
        big.sealed.push(0);
        assert!(MailSubmit::decode(&big.encode()).is_err(), "one byte over the store's bound");
        assert_eq!(MailSubmit::decode(&s.encode()).unwrap(), s);
        let f = MailFetch { req: 8, device: [2; 8], after: Some([3; 16]) };
        assert_eq!(MailFetch::decode(&f.encode()).unwrap(), f);
        let f0 = MailFetch { after: None, ..f.clone() };
        assert_eq!(MailFetch::decode(&f0.encode()).unwrap(), f0);
        let a = MailAck { req: 9, device: [2; 8], ids: vec![[4; 16]; ACK_IDS_MAX] };
        assert_eq!(MailAck::decode(&a.encode()).unwrap(), a);
        let r = MailSubmitReply { req: 1, code: 0, replicas: 3, pushed: 2 };
        assert_eq!(MailSubmitReply::decode(&r.encode()).unwrap(), r);
        let k = MailAckReply { req: 1, code: 29 };
        assert_eq!(MailAckReply::decode(&k.encode()).unwrap(), k);
        for bytes in [s.encode(), f.encode(), a.encode()] {
            for n in 0..bytes.len() {
                assert!(MailSubmit::decode(&bytes[..n]).is_err() || n == bytes.len());
                let _ = MailFetch::decode(&bytes[..n]);
                let _ = MailAck::decode(&bytes[..n]);
            }
        }
        let mut too_many = MailAck { req: 1, device: [0; 8], ids: vec![[0; 16]; ACK_IDS_MAX] }.encode();
        too_many[12] = (ACK_IDS_MAX + 1) as u8;
        assert!(MailAck::decode(&too_many).is_err());
    }

    #[test]
    fn a_batch_filled_as_fits_allows_fits_one_frame() {
        let mut page = Vec::new();
        while MailBatch::fits(&page, 1000) {
            page.push(([page.len() as u8; 16], vec![5; 1000]));
        }
        assert!(!page.is_empty());
        let b = MailBatch { req: 3, code: 0, messages: page, more: true };
        let bytes = b.encode();
        assert!(bytes.len() <= BATCH_LEN_MAX, "{} bytes", bytes.len());
        assert_eq!(MailBatch::decode(&bytes).unwrap(), b);
    }

    proptest! {
        #[test]
        fn decoders_are_total(b in proptest::collection::vec(any::<u8>(), 0..3200)) {
            let _ = MailSubmit::decode(&b);
            let _ = MailSubmitReply::decode(&b);
            let _ = MailFetch::decode(&b);
            let _ = MailBatch::decode(&b);
            let _ = MailAck::decode(&b);
            let _ = MailAckReply::decode(&b);
        }
    }
}
