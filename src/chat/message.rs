//! One chat message (`docs/chat.md` §2): the [`Sealed`] form a super node carries and
//! stores, and the [`Inner`] message only the recipient's devices read.
//!
//! The sender signs the inner message together with the outer id, recipient, sender and
//! time with its Ed25519 user key, then seals signature and message to the recipient's
//! X25519 user key with the outer fields as associated data. A super node therefore can
//! neither read the message nor re-address, re-date or re-label it: the seal would not
//! open, and a replay under a new id carries the same (sender, device, conversation,
//! sequence number), which the recipient's history drops as a repeat.
//!
//! Opening takes two steps because the sender's keys may need a lookup: [`open`] decrypts
//! and checks the addressing, [`Unverified::verify`] checks the signature.
//!
//! Encodings are big-endian fields with bounded lengths (`wire::codec`); every decoder is
//! total and canonical (one byte string per value), so what is signed is what is sent.

use crate::crypto::keys::KeyId;
use crate::crypto::user::{DeviceId, SEAL_OVERHEAD, SIGNATURE_LEN, UserKeys, UserPublicKeys};
use crate::wire::codec::{DecodeError, Reader, Writer};
use crate::wire::message::USERNAME_WIRE_MAX;

/// The version byte that starts every encoded [`Sealed`].
pub const VERSION: u8 = 1;
/// Domain prefix of a chat message's signature.
pub const DOMAIN_CHAT_MESSAGE: &[u8] = b"confab/v1/chat-message\0";
/// Domain prefix of the hash that gives the id of a sender's own copy.
const DOMAIN_OWN_COPY: &[u8] = b"confab/v1/chat-own-copy\0";
/// Hash domain of a device's message stream id.
const DOMAIN_STREAM: &[u8] = b"confab/v1/chat-stream\0";
/// Largest encoded [`Sealed`]: it fits a notice (2,400 bytes) and a 3,072-byte frame with headroom.
pub const SEALED_LEN_MAX: usize = 2300;
/// Longest text, in bytes of UTF-8.
pub const TEXT_LEN_MAX: usize = 1500;
/// Most message ids in one receipt.
pub const RECEIPT_IDS_MAX: usize = 64;
/// Longest opaque group-log body.
pub const GROUP_BODY_LEN_MAX: usize = 1700;
/// Longest offered file name, in bytes of UTF-8.
pub const FILE_NAME_LEN_MAX: usize = 255;
/// Largest sequence number, and latest time in unix milliseconds: both fit SQLite's
/// signed 64-bit integers, so a history stores them as they are.
pub const SEQ_MAX: u64 = i64::MAX as u64;
/// Latest time a message may carry (unix milliseconds); see [`SEQ_MAX`].
pub const TIME_MS_MAX: u64 = i64::MAX as u64;
/// Longest outer header: version, id, two usernames with their length bytes, the time.
const HEADER_LEN_MAX: usize = 1 + 16 + 2 * (1 + USERNAME_WIRE_MAX) + 8;
/// Longest ciphertext of a [`Sealed`] (what is left of [`SEALED_LEN_MAX`] after the header
/// and the ciphertext's length prefix).
pub const CIPHERTEXT_LEN_MAX: usize = SEALED_LEN_MAX - HEADER_LEN_MAX - 2;
/// Shortest ciphertext: an empty-bodied seal of a signature.
const CIPHERTEXT_LEN_MIN: usize = SEAL_OVERHEAD + SIGNATURE_LEN;

/// Why a message was refused; one variant per reason, each with a metrics label.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ChatError {
    /// The bytes do not decode (truncated, trailing bytes, a field outside its domain).
    #[error("malformed message: {0}")]
    Malformed(DecodeError),
    /// A field or the whole message is over its limit.
    #[error("{what} is {len} bytes, over the maximum of {max}")]
    TooLarge {
        /// What is too large.
        what: &'static str,
        /// Its length.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// The version byte is not one this build reads.
    #[error("unknown message version {0}")]
    Version(u8),
    /// The message is addressed to someone else, or names a conversation its recipient is
    /// not in with its sender.
    #[error("the message is not for this user")]
    NotForMe,
    /// The seal does not open with our keys and the outer fields (altered, or not ours).
    #[error("the seal does not open")]
    BadSeal,
    /// The recipient's published X25519 key cannot be sealed to (a low-order point).
    #[error("the recipient's key cannot be sealed to")]
    BadRecipientKey,
    /// The signature is not the sender's over this message and its outer fields.
    #[error("the signature does not verify")]
    BadSignature,
    /// The sender inside differs from the sender outside.
    #[error("the inner sender differs from the outer one")]
    SenderMismatch,
    /// The time inside differs from the time outside.
    #[error("the inner time differs from the outer one")]
    TimeMismatch,
}

impl ChatError {
    /// A short label for metrics.
    pub fn label(&self) -> &'static str {
        match self {
            Self::Malformed(_) => "malformed",
            Self::TooLarge { .. } => "too_large",
            Self::Version(_) => "version",
            Self::NotForMe => "not_for_me",
            Self::BadSeal => "bad_seal",
            Self::BadRecipientKey => "bad_recipient_key",
            Self::BadSignature => "bad_signature",
            Self::SenderMismatch => "sender_mismatch",
            Self::TimeMismatch => "time_mismatch",
        }
    }
}

impl From<DecodeError> for ChatError {
    fn from(e: DecodeError) -> Self {
        match e {
            DecodeError::TooLong { field, len, max } => Self::TooLarge { what: field, len, max },
            e => Self::Malformed(e),
        }
    }
}

/// A message as a super node sees and stores it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sealed {
    /// Random, chosen by the sender: the store's key.
    pub id: [u8; 16],
    /// The recipient user (routing).
    pub to: String,
    /// The sender user (quotas).
    pub from: String,
    /// When the sender sent it (unix milliseconds).
    pub sent_at_ms: u64,
    /// The seal: the ephemeral X25519 key, then AES-256-GCM of signature and inner message.
    pub ciphertext: Vec<u8>,
}

/// Which conversation a message belongs to, as its recipient sees it: a 1:1 message names
/// its sender, except in the sender's own copy, which names the peer it was sent to.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Conversation {
    /// A 1:1 conversation with this user.
    User(String),
    /// A group, by its id.
    Group([u8; 16]),
}

/// What a receipt says about the messages it names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ReceiptKind {
    /// A device of the recipient has written them to its history.
    Delivered,
    /// The recipient has read them.
    Read,
}

/// What a message carries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Body {
    /// Text for the user.
    Text {
        /// At most [`TEXT_LEN_MAX`] bytes.
        text: String,
    },
    /// A receipt for messages the receipt's recipient sent.
    Receipt {
        /// Delivered or read.
        kind: ReceiptKind,
        /// The ids of the messages, 1 to [`RECEIPT_IDS_MAX`].
        ids: Vec<[u8; 16]>,
    },
    /// An entry of a group's log, opaque here (at most [`GROUP_BODY_LEN_MAX`] bytes).
    Group(Vec<u8>),
    /// An offer of a file (`docs/chat.md` §4).
    FileOffer {
        /// The transfer's id.
        transfer: [u8; 16],
        /// The file's name: a plain name, no folders.
        name: String,
        /// Its size.
        bytes: u64,
        /// SHA-256 of the whole file.
        sha256: [u8; 32],
        /// SHA-256 of the chunk manifest.
        manifest: [u8; 32],
        /// SHA-256 of the sender's QUIC certificate.
        cert_fingerprint: [u8; 32],
    },
    /// The answer to a file offer.
    FileAnswer {
        /// The transfer's id.
        transfer: [u8; 16],
        /// Whether the recipient takes the file.
        accept: bool,
    },
}

impl Body {
    /// A short label (metrics, and the history's `kind` column).
    pub fn label(&self) -> &'static str {
        match self {
            Self::Text { .. } => "text",
            Self::Receipt { .. } => "receipt",
            Self::Group(_) => "group",
            Self::FileOffer { .. } => "file_offer",
            Self::FileAnswer { .. } => "file_answer",
        }
    }

    /// Encodes (the fields must be within their limits: see [`Body::check`]).
    pub fn encode(&self) -> Result<Vec<u8>, ChatError> {
        self.check()?;
        let mut w = Writer::new();
        self.write(&mut w);
        Ok(w.into_bytes())
    }

    /// Decodes what [`Body::encode`] gave (total).
    pub fn decode(b: &[u8]) -> Result<Self, ChatError> {
        let mut r = Reader::new(b);
        let body = Self::read(&mut r)?;
        r.finish()?;
        Ok(body)
    }

    /// Whether every field is within its limits (the same rules the decoder applies).
    pub fn check(&self) -> Result<(), ChatError> {
        match self {
            Self::Text { text } => max_len("text", text.len(), TEXT_LEN_MAX),
            Self::Receipt { ids, .. } => {
                if ids.is_empty() {
                    return Err(DecodeError::Invalid("receipt.ids").into());
                }
                max_len("receipt.ids", ids.len(), RECEIPT_IDS_MAX)
            }
            Self::Group(b) => max_len("group", b.len(), GROUP_BODY_LEN_MAX),
            Self::FileOffer { name, .. } => {
                max_len("file.name", name.len(), FILE_NAME_LEN_MAX)?;
                if plain_file_name(name) { Ok(()) } else { Err(DecodeError::Invalid("file.name").into()) }
            }
            Self::FileAnswer { .. } => Ok(()),
        }
    }

    fn write(&self, w: &mut Writer) {
        match self {
            Self::Text { text } => {
                w.u8(1).bytes(text.as_bytes());
            }
            Self::Receipt { kind, ids } => {
                w.u8(2).u8(match kind {
                    ReceiptKind::Delivered => 1,
                    ReceiptKind::Read => 2,
                });
                w.u8(ids.len() as u8);
                for id in ids {
                    w.raw(id);
                }
            }
            Self::Group(b) => {
                w.u8(3).bytes(b);
            }
            Self::FileOffer { transfer, name, bytes, sha256, manifest, cert_fingerprint } => {
                w.u8(4).raw(transfer).str(name).u64(*bytes).raw(sha256).raw(manifest).raw(cert_fingerprint);
            }
            Self::FileAnswer { transfer, accept } => {
                w.u8(5).raw(transfer).u8(u8::from(*accept));
            }
        }
    }

    fn read(r: &mut Reader<'_>) -> Result<Self, ChatError> {
        let body = match r.u8("body")? {
            1 => {
                let b = r.bytes("text", TEXT_LEN_MAX)?;
                let text = std::str::from_utf8(b).map_err(|_| DecodeError::Invalid("text"))?.to_owned();
                Self::Text { text }
            }
            2 => {
                let kind = match r.u8("receipt.kind")? {
                    1 => ReceiptKind::Delivered,
                    2 => ReceiptKind::Read,
                    _ => return Err(DecodeError::Invalid("receipt.kind").into()),
                };
                let n = r.u8("receipt.ids")? as usize;
                max_len("receipt.ids", n, RECEIPT_IDS_MAX)?;
                let ids = (0..n).map(|_| r.array::<16>("receipt.ids")).collect::<Result<Vec<_>, _>>()?;
                Self::Receipt { kind, ids }
            }
            3 => Self::Group(r.bytes("group", GROUP_BODY_LEN_MAX)?.to_vec()),
            4 => Self::FileOffer {
                transfer: r.array("file.transfer")?,
                name: r.str("file.name", FILE_NAME_LEN_MAX)?.to_owned(),
                bytes: r.u64("file.bytes")?,
                sha256: r.array("file.sha256")?,
                manifest: r.array("file.manifest")?,
                cert_fingerprint: r.array("file.cert_fingerprint")?,
            },
            5 => Self::FileAnswer {
                transfer: r.array("file.transfer")?,
                accept: match r.u8("file.accept")? {
                    0 => false,
                    1 => true,
                    _ => return Err(DecodeError::Invalid("file.accept").into()),
                },
            },
            _ => return Err(DecodeError::Invalid("body").into()),
        };
        // The encoder's rules, so a decoded body always encodes again.
        body.check()?;
        Ok(body)
    }
}

/// A name that is safe to create in the receiving folder: one non-empty path component.
fn plain_file_name(name: &str) -> bool {
    !name.is_empty() && name != "." && name != ".." && !name.contains(['/', '\\', '\0'])
}

fn max_len(what: &'static str, len: usize, max: usize) -> Result<(), ChatError> {
    if len > max { Err(ChatError::TooLarge { what, len, max }) } else { Ok(()) }
}

fn check_username(what: &'static str, name: &str) -> Result<(), ChatError> {
    if name.is_empty() {
        return Err(DecodeError::Invalid(what).into());
    }
    max_len(what, name.len(), USERNAME_WIRE_MAX)
}

/// The message inside the seal.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Inner {
    /// The sender user.
    pub from: String,
    /// The sender device's stream ([`stream_id`]: its key and its history's epoch); its
    /// sequence numbers are its own.
    pub from_device: DeviceId,
    /// The conversation, as the recipient sees it (see [`Conversation`]).
    pub conversation: Conversation,
    /// Per (sender device, conversation), from 1, never repeated.
    pub seq: u64,
    /// When it was sent (unix milliseconds); equal to the outer time.
    pub sent_at_ms: u64,
    /// What it carries.
    pub body: Body,
}

impl Inner {
    /// Encodes canonically (what the signature covers).
    pub fn encode(&self) -> Result<Vec<u8>, ChatError> {
        check_username("from", &self.from)?;
        if let Conversation::User(u) = &self.conversation {
            check_username("conversation.user", u)?;
        }
        check_numbers(self.seq, self.sent_at_ms)?;
        self.body.check()?;
        let mut w = Writer::new();
        w.str(&self.from).raw(&self.from_device.0);
        match &self.conversation {
            Conversation::User(u) => w.u8(1).str(u),
            Conversation::Group(g) => w.u8(2).raw(g),
        };
        w.u64(self.seq).u64(self.sent_at_ms);
        self.body.write(&mut w);
        Ok(w.into_bytes())
    }

    /// Decodes what [`Inner::encode`] gave (total).
    pub fn decode(b: &[u8]) -> Result<Self, ChatError> {
        let mut r = Reader::new(b);
        let from = r.str("from", USERNAME_WIRE_MAX)?.to_owned();
        check_username("from", &from)?;
        let from_device = KeyId(r.array("from_device")?);
        let conversation = match r.u8("conversation")? {
            1 => {
                let u = r.str("conversation.user", USERNAME_WIRE_MAX)?.to_owned();
                check_username("conversation.user", &u)?;
                Conversation::User(u)
            }
            2 => Conversation::Group(r.array("conversation.group")?),
            _ => return Err(DecodeError::Invalid("conversation").into()),
        };
        let seq = r.u64("seq")?;
        let sent_at_ms = r.u64("sent_at_ms")?;
        check_numbers(seq, sent_at_ms)?;
        let body = Body::read(&mut r)?;
        r.finish()?;
        Ok(Self { from, from_device, conversation, seq, sent_at_ms, body })
    }
}

fn check_numbers(seq: u64, sent_at_ms: u64) -> Result<(), ChatError> {
    if !(1..=SEQ_MAX).contains(&seq) {
        return Err(DecodeError::Invalid("seq").into());
    }
    if sent_at_ms > TIME_MS_MAX {
        return Err(DecodeError::Invalid("sent_at_ms").into());
    }
    Ok(())
}

/// Whether a message from `inner.from` to user `to` may name `inner.conversation`: a 1:1
/// message names its sender, the sender's own copy names any peer, a group any group
/// (membership is the group log's business).
fn addressed(to: &str, inner: &Inner) -> bool {
    match &inner.conversation {
        Conversation::Group(_) => true,
        Conversation::User(peer) => inner.from == to || *peer == inner.from,
    }
}

/// The outer fields as signed and as the seal's associated data.
fn header(id: &[u8; 16], to: &str, from: &str, sent_at_ms: u64) -> Vec<u8> {
    let mut w = Writer::new();
    w.u8(VERSION).raw(id).str(to).str(from).u64(sent_at_ms);
    w.into_bytes()
}

fn signed(header: &[u8], inner: &[u8]) -> Vec<u8> {
    let mut m = Vec::with_capacity(header.len() + inner.len());
    m.extend_from_slice(header);
    m.extend_from_slice(inner);
    m
}

impl Sealed {
    /// Encodes.
    pub fn encode(&self) -> Vec<u8> {
        let mut w = Writer::new();
        w.raw(&header(&self.id, &self.to, &self.from, self.sent_at_ms)).bytes(&self.ciphertext);
        w.into_bytes()
    }

    /// Decodes (total): the size, version, usernames and ciphertext length are checked;
    /// what is inside is not (only the recipient can open it).
    pub fn decode(b: &[u8]) -> Result<Self, ChatError> {
        max_len("sealed message", b.len(), SEALED_LEN_MAX)?;
        let mut r = Reader::new(b);
        let version = r.u8("version")?;
        if version != VERSION {
            return Err(ChatError::Version(version));
        }
        let id = r.array("id")?;
        let to = r.str("to", USERNAME_WIRE_MAX)?.to_owned();
        check_username("to", &to)?;
        let from = r.str("from", USERNAME_WIRE_MAX)?.to_owned();
        check_username("from", &from)?;
        let sent_at_ms = r.u64("sent_at_ms")?;
        if sent_at_ms > TIME_MS_MAX {
            return Err(DecodeError::Invalid("sent_at_ms").into());
        }
        let ciphertext = r.bytes("ciphertext", CIPHERTEXT_LEN_MAX)?.to_vec();
        if ciphertext.len() < CIPHERTEXT_LEN_MIN {
            return Err(DecodeError::Invalid("ciphertext").into());
        }
        r.finish()?;
        Ok(Self { id, to, from, sent_at_ms, ciphertext })
    }
}

/// The id of the sender's own copy of the message whose copy to its recipient has id `id`.
/// Derived rather than drawn so that the sender's other devices, which hold only the own
/// copy, can match the recipient's receipts (which name `id`) to it.
pub fn own_copy_id(id: &[u8; 16]) -> [u8; 16] {
    use sha2::Digest;
    let mut h = sha2::Sha256::new();
    h.update(DOMAIN_OWN_COPY);
    h.update(id);
    h.finalize()[..16].try_into().expect("SHA-256 is 32 bytes")
}

/// The stream a device numbers its messages in ([`Inner::from_device`]): its key's id and
/// its history file's epoch, hashed. A history deleted and made again gets a new epoch,
/// so its numbers, which start again at 1, are a new stream to every recipient.
pub fn stream_id(device: &DeviceId, epoch: u64) -> DeviceId {
    use sha2::Digest;
    let mut h = sha2::Sha256::new();
    h.update(DOMAIN_STREAM);
    h.update(device.0);
    h.update(epoch.to_be_bytes());
    KeyId(h.finalize()[..8].try_into().expect("SHA-256 is 32 bytes"))
}

/// Signs `inner` with the outer `id`, recipient `to_user`, sender (`inner.from`) and time
/// (`inner.sent_at_ms`), and seals it to `to_keys` with those outer fields bound. The id
/// must be fresh and random (the caller draws it). Refuses what the recipient would refuse.
pub fn seal(
    inner: &Inner,
    id: [u8; 16],
    to_user: &str,
    to_keys: &UserPublicKeys,
    sender: &UserKeys,
) -> Result<Sealed, ChatError> {
    check_username("to", to_user)?;
    if !addressed(to_user, inner) {
        return Err(ChatError::NotForMe);
    }
    seal_raw(
        inner,
        Sealed {
            id,
            to: to_user.to_owned(),
            from: inner.from.clone(),
            sent_at_ms: inner.sent_at_ms,
            ciphertext: Vec::new(),
        },
        to_keys,
        sender,
    )
}

/// Seals `inner` under the outer fields of `outer` (its ciphertext is replaced), without
/// checking that they agree: tests use it to make the mismatches [`open`] refuses.
fn seal_raw(inner: &Inner, outer: Sealed, to_keys: &UserPublicKeys, sender: &UserKeys) -> Result<Sealed, ChatError> {
    let inner_bytes = inner.encode()?;
    let head = header(&outer.id, &outer.to, &outer.from, outer.sent_at_ms);
    let sig = sender.sign(DOMAIN_CHAT_MESSAGE, &signed(&head, &inner_bytes));
    let mut plain = Vec::with_capacity(SIGNATURE_LEN + inner_bytes.len());
    plain.extend_from_slice(&sig);
    plain.extend_from_slice(&inner_bytes);
    let ciphertext = to_keys.seal(&head, &plain).ok_or(ChatError::BadRecipientKey)?;
    max_len("ciphertext", ciphertext.len(), CIPHERTEXT_LEN_MAX)?;
    Ok(Sealed { ciphertext, ..outer })
}

/// A message opened and addressed to us, whose signature is not checked yet.
#[derive(Debug, Clone)]
pub struct Unverified {
    id: [u8; 16],
    to: String,
    header: Vec<u8>,
    inner_bytes: Vec<u8>,
    signature: [u8; SIGNATURE_LEN],
    inner: Inner,
}

impl Unverified {
    /// Who claims to have sent it: whose user keys [`Unverified::verify`] needs.
    pub fn from(&self) -> &str {
        &self.inner.from
    }

    /// The message id.
    pub fn id(&self) -> [u8; 16] {
        self.id
    }

    /// Checks the signature with the sender's user keys (from its certified index entry).
    pub fn verify(self, sender_keys: &UserPublicKeys) -> Result<Message, ChatError> {
        if !sender_keys.verify(DOMAIN_CHAT_MESSAGE, &signed(&self.header, &self.inner_bytes), &self.signature) {
            return Err(ChatError::BadSignature);
        }
        Ok(Message { id: self.id, to: self.to, inner: self.inner })
    }
}

/// A message opened, addressed to us and signed by its sender.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    /// The outer id (the store's key, and what receipts name).
    pub id: [u8; 16],
    /// The recipient user (us).
    pub to: String,
    /// The message.
    pub inner: Inner,
}

/// Opens a message for user `me`: it must be addressed to `me`, open with `my_keys` and
/// the outer fields, and agree with them; the conversation must be one `me` is in with
/// the sender (see [`Conversation`]).
pub fn open(sealed: &Sealed, me: &str, my_keys: &UserKeys) -> Result<Unverified, ChatError> {
    if sealed.to != me {
        return Err(ChatError::NotForMe);
    }
    let head = header(&sealed.id, &sealed.to, &sealed.from, sealed.sent_at_ms);
    let plain = my_keys.open(&head, &sealed.ciphertext).ok_or(ChatError::BadSeal)?;
    let (sig, inner_bytes) = plain.split_at_checked(SIGNATURE_LEN).ok_or(DecodeError::Truncated("signature"))?;
    let inner = Inner::decode(inner_bytes)?;
    if inner.from != sealed.from {
        return Err(ChatError::SenderMismatch);
    }
    if inner.sent_at_ms != sealed.sent_at_ms {
        return Err(ChatError::TimeMismatch);
    }
    if !addressed(me, &inner) {
        return Err(ChatError::NotForMe);
    }
    Ok(Unverified {
        id: sealed.id,
        to: sealed.to.clone(),
        header: head,
        inner_bytes: inner_bytes.to_vec(),
        signature: sig.try_into().expect("split at the signature's length"),
        inner,
    })
}

#[cfg(test)]
mod tests;
