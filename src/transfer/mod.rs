//! File transfer as plain logic over QUIC (`docs/chat.md` §4).
//!
//! A file is described by a manifest of chunk hashes; what each side holds is kept in a
//! folder, so either side can be dropped at any moment and rebuilt from it.
//!
//! - [`manifest`] — size, SHA-256 per 64 KiB chunk and of the whole file; its hash.
//! - [`bitmap`] — which chunks a side holds.
//! - [`frames`] — the request, manifest and chunk frames on the stream.
//! - [`state`] — the folders that make a transfer resumable.

pub mod bitmap;
pub mod frames;
pub mod manifest;
pub mod state;
