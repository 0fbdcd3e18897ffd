//! Chat as plain logic (`docs/chat.md`): what a message is, how a device keeps its
//! history, and groups. No sockets, no clock, no OS randomness; the history's SQLite file
//! is the one piece of I/O.
//!
//! - [`message`] — the sealed message a super node carries and stores, the signed inner
//!   message only the recipient's devices read, sealing, opening and verifying.
//! - [`history`] — a device's history in `chat.sqlite` in the home folder: sequence
//!   numbers, repeats dropped, receipts, unread messages, gaps a store left.
//! - [`group`] — groups as signed, hash-linked logs: membership, epoch keys, sync.

pub mod group;
pub mod history;
pub mod message;
