//! Voice codecs: 20 ms frames of 48 kHz mono PCM in, packets out, and back.
//!
//! Opus goes through Debian's libopus (the `opus` crate). L16 is raw PCM for tests and
//! debugging. Every decoder is total: malformed bytes give an error, never a panic, and a
//! lost frame is concealed without failing.

use thiserror::Error;

use crate::call::invite::Codec;

/// Samples per second of every call's audio.
pub const SAMPLE_RATE: u32 = 48_000;
/// Milliseconds of audio in one frame (one packet).
pub const FRAME_MS: u32 = 20;
/// Samples in one frame: 20 ms at 48 kHz.
pub const FRAME_SAMPLES: usize = (SAMPLE_RATE * FRAME_MS / 1000) as usize;
/// Opus bitrate when none is given: wideband speech is transparent well below it.
pub const OPUS_BITRATE_BPS_DEFAULT: i32 = 32_000;
/// Lowest Opus bitrate we accept (libopus's own floor).
pub const OPUS_BITRATE_BPS_MIN: i32 = 6_000;
/// Highest Opus bitrate we accept (libopus's own ceiling for one channel).
pub const OPUS_BITRATE_BPS_MAX: i32 = 510_000;
/// Largest Opus packet for one 20 ms frame: 1275 bytes of frame plus the TOC byte
/// (RFC 6716 §3.2.1).
pub const OPUS_PACKET_BYTES_MAX: usize = 1276;
/// Bytes in one L16 packet: each sample as little-endian i16.
pub const L16_PACKET_BYTES: usize = FRAME_SAMPLES * 2;

/// Why a codec could not be made, or a frame encoded or decoded.
///
/// A packet that fails to decode is dropped whole: [`VoiceCodec::conceal`] its frame
/// instead. Packets of the wrong length or duration are refused before they reach the
/// decoder's state.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum CodecError {
    /// The bitrate is outside what Opus supports; no codec was made.
    #[error("opus bitrate {0} bit/s is outside {OPUS_BITRATE_BPS_MIN}..={OPUS_BITRATE_BPS_MAX}")]
    Bitrate(i32),
    /// libopus refused (a malformed packet, or an encoder failure); the message is its own.
    #[error("opus: {0}")]
    Opus(String),
    /// The packet is well formed but holds another duration than one 20 ms frame.
    #[error("packet holds {samples} samples; calls use {FRAME_SAMPLES} (20 ms)")]
    FrameSamples {
        /// Samples per channel the packet holds.
        samples: usize,
    },
    /// An L16 packet of the wrong length.
    #[error("L16 packet of {len} bytes; a frame is {L16_PACKET_BYTES}")]
    PacketLength {
        /// Bytes received.
        len: usize,
    },
    /// An empty packet: loss is signalled by calling `conceal`, not by empty bytes.
    #[error("empty packet")]
    Empty,
}

impl From<opus::Error> for CodecError {
    fn from(e: opus::Error) -> Self {
        CodecError::Opus(e.to_string())
    }
}

/// One direction's encoder and the other direction's decoder for one call.
pub trait VoiceCodec {
    /// The negotiated codec this implements.
    fn codec(&self) -> Codec;

    /// A short name for logs ("opus", "L16").
    fn name(&self) -> &'static str;

    /// Encodes one 20 ms frame into one packet.
    fn encode(&mut self, pcm: &[i16; FRAME_SAMPLES]) -> Result<Vec<u8>, CodecError>;

    /// Decodes one packet into exactly [`FRAME_SAMPLES`] samples.
    fn decode(&mut self, packet: &[u8]) -> Result<Vec<i16>, CodecError>;

    /// A stand-in for one lost frame, [`FRAME_SAMPLES`] samples. Never fails: on any
    /// error it returns silence, because the playout clock must go on.
    fn conceal(&mut self) -> Vec<i16>;
}

/// The codec for a negotiated [`Codec`], Opus at [`OPUS_BITRATE_BPS_DEFAULT`].
pub fn voice_codec(c: Codec) -> Result<Box<dyn VoiceCodec + Send>, CodecError> {
    Ok(match c {
        Codec::Opus => Box::new(OpusCodec::new(OPUS_BITRATE_BPS_DEFAULT)?),
        Codec::L16 => Box::new(L16Codec),
    })
}

/// Opus in VoIP mode, 48 kHz mono, 20 ms frames, no in-band FEC.
pub struct OpusCodec {
    encoder: opus::Encoder,
    decoder: opus::Decoder,
}

impl OpusCodec {
    /// An encoder at `bitrate_bps` and a fresh decoder.
    pub fn new(bitrate_bps: i32) -> Result<Self, CodecError> {
        if !(OPUS_BITRATE_BPS_MIN..=OPUS_BITRATE_BPS_MAX).contains(&bitrate_bps) {
            return Err(CodecError::Bitrate(bitrate_bps));
        }
        let mut encoder = opus::Encoder::new(SAMPLE_RATE, opus::Channels::Mono, opus::Application::Voip)?;
        encoder.set_bitrate(opus::Bitrate::Bits(bitrate_bps))?;
        let decoder = opus::Decoder::new(SAMPLE_RATE, opus::Channels::Mono)?;
        Ok(OpusCodec { encoder, decoder })
    }
}

impl VoiceCodec for OpusCodec {
    fn codec(&self) -> Codec {
        Codec::Opus
    }

    fn name(&self) -> &'static str {
        "opus"
    }

    fn encode(&mut self, pcm: &[i16; FRAME_SAMPLES]) -> Result<Vec<u8>, CodecError> {
        Ok(self.encoder.encode_vec(pcm, OPUS_PACKET_BYTES_MAX)?)
    }

    fn decode(&mut self, packet: &[u8]) -> Result<Vec<i16>, CodecError> {
        // An empty slice would make libopus conceal instead of decode; loss has its own call.
        if packet.is_empty() {
            return Err(CodecError::Empty);
        }
        // Check the duration from the header first so a 10 or 60 ms packet is refused
        // before it touches the decoder's state.
        let samples = opus::packet::get_nb_samples(packet, SAMPLE_RATE)?;
        if samples != FRAME_SAMPLES {
            return Err(CodecError::FrameSamples { samples });
        }
        let mut pcm = vec![0i16; FRAME_SAMPLES];
        let n = self.decoder.decode(packet, &mut pcm, false)?;
        if n != FRAME_SAMPLES {
            return Err(CodecError::FrameSamples { samples: n });
        }
        Ok(pcm)
    }

    fn conceal(&mut self) -> Vec<i16> {
        let mut pcm = vec![0i16; FRAME_SAMPLES];
        // An empty packet asks libopus for packet-loss concealment: it extrapolates from
        // the last frames and fades to silence over consecutive losses.
        match self.decoder.decode(&[], &mut pcm, false) {
            Ok(FRAME_SAMPLES) => pcm,
            _ => vec![0; FRAME_SAMPLES],
        }
    }
}

/// Uncompressed 16-bit little-endian PCM: exact, and easy to read in a packet dump.
#[derive(Debug, Clone, Copy, Default)]
pub struct L16Codec;

impl VoiceCodec for L16Codec {
    fn codec(&self) -> Codec {
        Codec::L16
    }

    fn name(&self) -> &'static str {
        "L16"
    }

    fn encode(&mut self, pcm: &[i16; FRAME_SAMPLES]) -> Result<Vec<u8>, CodecError> {
        Ok(pcm.iter().flat_map(|s| s.to_le_bytes()).collect())
    }

    fn decode(&mut self, packet: &[u8]) -> Result<Vec<i16>, CodecError> {
        if packet.is_empty() {
            return Err(CodecError::Empty);
        }
        if packet.len() != L16_PACKET_BYTES {
            return Err(CodecError::PacketLength { len: packet.len() });
        }
        Ok(packet.chunks_exact(2).map(|b| i16::from_le_bytes([b[0], b[1]])).collect())
    }

    fn conceal(&mut self) -> Vec<i16> {
        // L16 exists for tests and debugging, where a gap should be plainly visible.
        vec![0; FRAME_SAMPLES]
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::call::audio::{best_correlation, dominant_frequencies, sweep, tone, tone_strength};
    use proptest::prelude::*;

    /// Encodes and decodes `pcm` frame by frame (a trailing partial frame is dropped).
    fn round_trip(codec: &mut dyn VoiceCodec, pcm: &[i16]) -> (Vec<i16>, usize) {
        let (frames, _) = pcm.as_chunks::<FRAME_SAMPLES>();
        let mut out = Vec::with_capacity(pcm.len());
        let mut bytes = 0;
        for frame in frames {
            let packet = codec.encode(frame).unwrap();
            bytes += packet.len();
            out.extend(codec.decode(&packet).unwrap());
        }
        (out, bytes)
    }

    fn peak(pcm: &[i16]) -> i32 {
        pcm.iter().map(|s| i32::from(*s).abs()).max().unwrap_or(0)
    }

    fn rms(pcm: &[i16]) -> f64 {
        (pcm.iter().map(|s| f64::from(*s).powi(2)).sum::<f64>() / pcm.len() as f64).sqrt()
    }

    #[test]
    fn frame_constants_agree() {
        assert_eq!(FRAME_SAMPLES, 960);
        assert_eq!(FRAME_SAMPLES as u32 * 1000 / SAMPLE_RATE, FRAME_MS);
    }

    /// Opus's delay in samples: the encoder's lookahead (6.5 ms in every mode we use).
    fn opus_delay(codec: &mut OpusCodec) -> usize {
        codec.encoder.get_lookahead().unwrap() as usize
    }

    #[test]
    fn opus_delay_is_its_lookahead() {
        // A sweep has one correlation peak, so it pins the delay; a steady tone would not.
        let reference = sweep(100.0, 4000.0, 1.0, 0.5);
        let mut codec = OpusCodec::new(OPUS_BITRATE_BPS_DEFAULT).unwrap();
        let delay = opus_delay(&mut codec);
        let (decoded, _) = round_trip(&mut codec, &reference);
        let (lag, corr) = best_correlation(&reference, &decoded, FRAME_SAMPLES);
        println!("opus sweep: lookahead {delay}, lag {lag} samples, correlation {corr:.4}");
        assert!(lag.abs_diff(delay) <= 4, "lag {lag}, lookahead {delay}");
        assert!(corr > 0.95, "correlation {corr}");
    }

    #[test]
    fn opus_tone_round_trips_with_high_correlation() {
        let reference = tone(&[440.0, 1000.0], 1.0, 0.5);
        let mut codec = OpusCodec::new(OPUS_BITRATE_BPS_DEFAULT).unwrap();
        assert_eq!((codec.codec(), codec.name()), (Codec::Opus, "opus"));
        let delay = opus_delay(&mut codec);
        let (decoded, bytes) = round_trip(&mut codec, &reference);
        assert_eq!(decoded.len(), reference.len());
        let kbps = bytes as f64 * 8.0 / 1000.0; // one second of audio
        // Within a frame this tone nearly repeats every 9 ms (4 cycles of 440 Hz, 9 of
        // 1000 Hz), so the best lag may be an alias of the true delay: check both.
        let (lag, corr) = best_correlation(&reference, &decoded, FRAME_SAMPLES);
        let (near, corr_near) = best_correlation(&reference, &decoded[delay - 8..], 16);
        println!(
            "opus tone: {kbps:.1} kbit/s sent, best lag {lag} corr {corr:.4}, at lag {} corr {corr_near:.4}",
            delay - 8 + near
        );
        assert!(corr > 0.95, "correlation {corr} at lag {lag}");
        assert!(corr_near > 0.95, "correlation {corr_near} near the codec delay");
        // Skip the encoder's first frames while it settles.
        let settled = &decoded[5 * FRAME_SAMPLES..];
        let candidates = [250.0, 440.0, 700.0, 1000.0, 1600.0, 3000.0];
        let mut top = dominant_frequencies(settled, &candidates, 2);
        top.sort_by(f32::total_cmp);
        assert_eq!(top, vec![440.0, 1000.0]);
        let strengths = [440.0, 1000.0, 700.0].map(|f| tone_strength(settled, f));
        println!("opus tone strengths at 440, 1000, 700 Hz: {strengths:.3?}");
        assert!(strengths[0] > 0.4 && strengths[1] > 0.4, "{strengths:?}");
        assert!(strengths[2] < 0.01, "{strengths:?}");
    }

    #[test]
    fn opus_concealment_after_a_good_frame_is_bounded_sound() {
        let reference = tone(&[440.0, 1000.0], 0.2, 0.5);
        let mut codec = OpusCodec::new(OPUS_BITRATE_BPS_DEFAULT).unwrap();
        let (decoded, _) = round_trip(&mut codec, &reference);
        let last = &decoded[decoded.len() - FRAME_SAMPLES..];
        let first = codec.conceal();
        assert_eq!(first.len(), FRAME_SAMPLES);
        println!("opus PLC: last good frame rms {:.0}, concealed rms {:.0}", rms(last), rms(&first));
        assert!(rms(&first) > 0.1 * rms(last), "concealment is not silence");
        assert!(peak(&first) <= peak(&reference) * 3 / 2, "concealment peak {}", peak(&first));
        // Over a long loss it fades rather than repeating forever.
        let mut later = Vec::new();
        for _ in 0..25 {
            later = codec.conceal();
            assert_eq!(later.len(), FRAME_SAMPLES);
        }
        assert!(rms(&later) < 0.5 * rms(&first), "after 0.5 s of loss rms {:.0}", rms(&later));
        // And a good frame decodes normally afterwards.
        let frame = reference.first_chunk::<FRAME_SAMPLES>().unwrap();
        let packet = codec.encode(frame).unwrap();
        assert_eq!(codec.decode(&packet).unwrap().len(), FRAME_SAMPLES);
    }

    #[test]
    fn opus_refuses_other_durations_and_empty() {
        let mut codec = OpusCodec::new(OPUS_BITRATE_BPS_DEFAULT).unwrap();
        assert_eq!(codec.decode(&[]), Err(CodecError::Empty));
        // TOC config 0 (SILK narrowband, 10 ms), code 0: one 10 ms frame.
        assert_eq!(codec.decode(&[0x00, 0xff]), Err(CodecError::FrameSamples { samples: 480 }));
        assert!(matches!(OpusCodec::new(1_000), Err(CodecError::Bitrate(1_000))));
        assert!(OpusCodec::new(OPUS_BITRATE_BPS_MAX).is_ok());
    }

    #[test]
    fn l16_round_trips_exactly_and_conceals_with_silence() {
        let reference = tone(&[440.0, 1000.0], 0.1, 0.9);
        let mut codec = voice_codec(Codec::L16).unwrap();
        assert_eq!((codec.codec(), codec.name()), (Codec::L16, "L16"));
        let (decoded, bytes) = round_trip(codec.as_mut(), &reference);
        assert_eq!(decoded, reference[..decoded.len()]);
        assert_eq!(bytes, decoded.len() * 2);
        assert_eq!(codec.conceal(), vec![0; FRAME_SAMPLES]);
        assert_eq!(codec.decode(&[0; 3]), Err(CodecError::PacketLength { len: 3 }));
    }

    proptest! {
        #[test]
        fn decoders_are_total(bytes in prop::collection::vec(any::<u8>(), 0..1600)) {
            let mut opus = OpusCodec::new(OPUS_BITRATE_BPS_DEFAULT).unwrap();
            let mut l16 = L16Codec;
            for codec in [&mut opus as &mut dyn VoiceCodec, &mut l16] {
                if let Ok(pcm) = codec.decode(&bytes) {
                    prop_assert_eq!(pcm.len(), FRAME_SAMPLES);
                }
                prop_assert_eq!(codec.conceal().len(), FRAME_SAMPLES);
            }
        }

        /// Random payloads behind a valid 20 ms header reach libopus's decoder itself.
        #[test]
        fn opus_decodes_random_payloads_without_panic(
            config in prop::sample::select(vec![1u8, 5, 9, 13, 15, 19, 23, 27, 31]),
            stereo in any::<bool>(),
            payload in prop::collection::vec(any::<u8>(), 0..1300),
        ) {
            let mut opus = OpusCodec::new(OPUS_BITRATE_BPS_DEFAULT).unwrap();
            let mut packet = vec![config << 3 | u8::from(stereo) << 2];
            packet.extend(payload);
            if let Ok(pcm) = opus.decode(&packet) {
                prop_assert_eq!(pcm.len(), FRAME_SAMPLES);
            }
            prop_assert_eq!(opus.conceal().len(), FRAME_SAMPLES);
        }
    }
}
