//! Every decoder of untrusted bytes, chosen by the input's first byte
//! (`confab::fuzzing::decode_any`, which tests/fuzz_corpus.rs replays on stable).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| confab::fuzzing::decode_any(data));
