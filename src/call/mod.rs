//! Calls as plain logic: no sockets, no actors, no timers.
//!
//! - [`signal`] — the call state machine (invite, ringing, accept, decline, busy, cancel,
//!   hang-up, a timeout at each state) and the media paths.
//! - [`invite`] — mutual authentication, the media key under the callee's RSA key, codec
//!   negotiation, and signals sealed end to end.
//! - [`codec`] — voice codecs: Opus (libopus) and L16, 20 ms frames of 48 kHz mono.
//! - [`audio`] — WAV files, test tones, tone strength and delay-searching correlation.
//! - [`media`] — voice and probe packets sealed end to end, with replay protection.
//! - [`path`] — finding the media path: probes, hole punching, the relay fallback.
//! - [`jitter`] — the jitter buffer: playout delay, reordering, loss, RFC 3550 jitter.

pub mod audio;
pub mod birthday;
pub mod codec;
pub mod invite;
pub mod jitter;
pub mod media;
pub mod path;
pub mod signal;

pub use invite::{Codec, Invite, Reply};
pub use signal::{Call, Path, Signal, State};
