//! Chat: groups as signed, hash-linked logs (`docs/chat.md`).

pub mod group;
