//! Transport helpers shared by every role.
//!
//! - [`tcp`] — length-prefixed frames over TCP, and the connection slots of a listener.
//! - [`source`] — what a "source" is for limits, and refusals logged once per source.

pub mod source;
pub mod tcp;
