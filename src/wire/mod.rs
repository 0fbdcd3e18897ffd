//! The wire protocol: frames, messages, STUN Binding — encoding and decoding only, no I/O.

pub mod codec;
pub mod frame;
pub mod mail;
pub mod message;
pub mod replay;
pub mod stun;

pub use codec::DecodeError;
pub use frame::{Direction, FrameError};
pub use message::{ErrorCode, MessageKind};
