//! Transport helpers shared by every role.

pub mod tcp;
