//! Call audio as plain functions: WAV files in and out, test tones, and the measurements
//! a test needs to say "this came through": tone strength and delay-searching correlation.
//!
//! Everything is 48 kHz mono 16-bit ([`SAMPLE_RATE`]); nothing here resamples.

use std::path::{Path, PathBuf};

use thiserror::Error;

use crate::call::codec::SAMPLE_RATE;

/// Longest WAV file we read, in seconds: a bound on memory, far above any test call.
pub const WAV_SECONDS_MAX: u32 = 600;
/// What a call's audio must be, for error messages.
const NEEDED: &str = "calls need 48000 Hz 16-bit PCM, mono or stereo";
/// Multiply-adds allowed for the exhaustive search at the coarsest correlation level.
const CORRELATION_WORK_MAX: usize = 16_000_000;
/// Each correlation level is this many times coarser than the one below it.
const CORRELATION_STEP: usize = 4;
/// Coarsest decimation: 48 kHz / 64 = 750 Hz still follows a speech envelope.
const CORRELATION_DECIMATION_MAX: usize = 64;
/// Peaks carried from one level to the next, so a coarse near-tie cannot hide the best.
const CORRELATION_CANDIDATES: usize = 4;
/// Lags searched on each side of a candidate at the next finer level (one coarse step
/// is `CORRELATION_STEP`; the rest is margin for the box filter's smearing).
const CORRELATION_REFINE: usize = 6;

/// Why a WAV file could not be read or written.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum AudioError {
    /// The file could not be opened or parsed as WAV.
    #[error("{}: {source}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// What the WAV reader said.
        #[source]
        source: hound::Error,
    },
    /// A valid WAV file in a format calls do not use.
    #[error("{}: {found}; {NEEDED}", path.display())]
    Format {
        /// The file.
        path: PathBuf,
        /// What the file holds, e.g. "44100 Hz" or "32-bit float".
        found: String,
    },
    /// Longer than [`WAV_SECONDS_MAX`] (to read, or to write: what we write we can read).
    #[error("{}: {secs} s of audio; at most {WAV_SECONDS_MAX} s", path.display())]
    TooLong {
        /// The file.
        path: PathBuf,
        /// Its length in whole seconds.
        secs: u64,
    },
    /// The file could not be written; the previous file, if any, is unchanged.
    #[error("{}: {source}", path.display())]
    Write {
        /// The file.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
}

/// Reads a 48 kHz 16-bit PCM WAV file as mono samples (stereo is mixed down).
pub fn read_wav(path: impl AsRef<Path>) -> Result<Vec<i16>, AudioError> {
    let path = path.as_ref();
    let read_err = |source| AudioError::Read { path: path.to_owned(), source };
    let reader = hound::WavReader::open(path).map_err(read_err)?;
    let spec = reader.spec();
    let mut found = Vec::new();
    if spec.sample_rate != SAMPLE_RATE {
        found.push(format!("{} Hz", spec.sample_rate));
    }
    match spec.sample_format {
        hound::SampleFormat::Float => found.push(format!("{}-bit float", spec.bits_per_sample)),
        hound::SampleFormat::Int if spec.bits_per_sample != 16 => {
            found.push(format!("{}-bit PCM", spec.bits_per_sample))
        }
        hound::SampleFormat::Int => {}
    }
    if !(1..=2).contains(&spec.channels) {
        found.push(format!("{} channels", spec.channels));
    }
    if !found.is_empty() {
        return Err(AudioError::Format { path: path.to_owned(), found: found.join(", ") });
    }
    // Checked before reading so a huge file costs nothing.
    let secs = u64::from(reader.duration()) / u64::from(SAMPLE_RATE);
    if secs > u64::from(WAV_SECONDS_MAX) {
        return Err(AudioError::TooLong { path: path.to_owned(), secs });
    }
    let samples = reader.into_samples::<i16>().collect::<Result<Vec<i16>, _>>().map_err(read_err)?;
    Ok(match spec.channels {
        1 => samples,
        // The mean of the two channels: it cannot clip, unlike the sum.
        _ => samples.chunks_exact(2).map(|lr| ((i32::from(lr[0]) + i32::from(lr[1])) / 2) as i16).collect(),
    })
}

/// Writes 48 kHz mono 16-bit PCM WAV, atomically: a reader sees the old file or the new.
pub fn write_wav(path: impl AsRef<Path>, samples: &[i16]) -> Result<(), AudioError> {
    let path = path.as_ref();
    let write_err = |source| AudioError::Write { path: path.to_owned(), source };
    let secs = samples.len() as u64 / u64::from(SAMPLE_RATE);
    if secs > u64::from(WAV_SECONDS_MAX) {
        return Err(AudioError::TooLong { path: path.to_owned(), secs });
    }
    let spec = hound::WavSpec {
        channels: 1,
        sample_rate: SAMPLE_RATE,
        bits_per_sample: 16,
        sample_format: hound::SampleFormat::Int,
    };
    // Built in memory so the bytes can go through the temp-file-and-rename helper.
    let mut bytes = std::io::Cursor::new(Vec::with_capacity(44 + samples.len() * 2));
    let encode = |bytes: &mut std::io::Cursor<Vec<u8>>| -> Result<(), hound::Error> {
        let mut writer = hound::WavWriter::new(bytes, spec)?;
        let mut out = writer.get_i16_writer(samples.len() as u32);
        for s in samples {
            out.write_sample(*s);
        }
        out.flush()?;
        writer.finalize()
    };
    encode(&mut bytes).map_err(|e| write_err(std::io::Error::other(e)))?;
    crate::fsutil::write_atomic(path, &bytes.into_inner(), 0o644).map_err(write_err)
}

/// A test signal: the sum of sines at `freqs` Hz lasting `secs`. `amplitude` is the
/// peak of the sum as a fraction of full scale; each sine gets an equal share.
pub fn tone(freqs: &[f32], secs: f32, amplitude: f32) -> Vec<i16> {
    let n = (secs.max(0.0) * SAMPLE_RATE as f32).round() as usize;
    if freqs.is_empty() {
        return vec![0; n];
    }
    let share = f64::from(amplitude.clamp(0.0, 1.0)) / freqs.len() as f64 * f64::from(i16::MAX);
    (0..n)
        .map(|i| {
            let t = i as f64 / f64::from(SAMPLE_RATE);
            let sum: f64 = freqs.iter().map(|f| (std::f64::consts::TAU * f64::from(*f) * t).sin()).sum();
            (sum * share).round() as i16
        })
        .collect()
}

/// A test signal for measuring delay: a sine sweeping linearly from `from_hz` to `to_hz`
/// over `secs`, at `amplitude` of full scale. Unlike a steady tone it never repeats, so
/// its correlation with a delayed copy has a single peak.
pub fn sweep(from_hz: f32, to_hz: f32, secs: f32, amplitude: f32) -> Vec<i16> {
    let n = (secs.max(0.0) * SAMPLE_RATE as f32).round() as usize;
    let peak = f64::from(amplitude.clamp(0.0, 1.0)) * f64::from(i16::MAX);
    let (f0, f1, duration) = (f64::from(from_hz), f64::from(to_hz), f64::from(secs));
    (0..n)
        .map(|i| {
            let t = i as f64 / f64::from(SAMPLE_RATE);
            // The phase is the integral of the instantaneous frequency f0 + (f1 - f0)·t/T.
            let phase = std::f64::consts::TAU * (f0 * t + (f1 - f0) * t * t / (2.0 * duration));
            (phase.sin() * peak).round() as i16
        })
        .collect()
}

/// The squared magnitude of `samples`' spectrum at `freq` Hz (Goertzel's algorithm,
/// which works for any frequency, not only DFT bins). A sine of amplitude A over N
/// samples gives about (A·N/2)².
pub fn goertzel_power(samples: &[i16], freq: f32) -> f64 {
    let w = std::f64::consts::TAU * f64::from(freq) / f64::from(SAMPLE_RATE);
    let coeff = 2.0 * w.cos();
    let (mut s1, mut s2) = (0.0f64, 0.0f64);
    for x in samples {
        let s0 = f64::from(*x) + coeff * s1 - s2;
        s2 = s1;
        s1 = s0;
    }
    (s1 * s1 + s2 * s2 - coeff * s1 * s2).max(0.0)
}

/// The share of `samples`' energy in a sine at `freq` Hz: about 1.0 for a pure tone at
/// `freq`, 0.5 for each of two equal tones, near 0 for a frequency that is absent.
pub fn tone_strength(samples: &[i16], freq: f32) -> f64 {
    let energy: f64 = samples.iter().map(|x| f64::from(*x).powi(2)).sum();
    if energy == 0.0 {
        return 0.0;
    }
    // Parseval: a sine's Goertzel power is its energy times N/2.
    goertzel_power(samples, freq) / (energy * samples.len() as f64 / 2.0)
}

/// The `k` strongest of `candidates` in `samples`, strongest first.
pub fn dominant_frequencies(samples: &[i16], candidates: &[f32], k: usize) -> Vec<f32> {
    let mut scored: Vec<(f32, f64)> = candidates.iter().map(|f| (*f, goertzel_power(samples, *f))).collect();
    scored.sort_by(|a, b| b.1.total_cmp(&a.1));
    scored.into_iter().take(k).map(|(f, _)| f).collect()
}

/// Finds how much later `recorded` is than `reference`: the lag in `0..=max_lag_samples`
/// with the highest normalized cross-correlation, and that correlation (1.0 for an
/// exact, possibly scaled, copy; near 0 for unrelated signals).
///
/// Every lag compares the same stretch of `reference`: all of it, or as much as
/// `recorded` holds after the largest lag (so give `recorded` `max_lag_samples` extra
/// samples to compare the whole reference). Scores are thus comparable across lags. Large searches go
/// coarse to fine: an exhaustive search on a decimated copy, then the best few peaks are
/// refined at each finer level, down to exact values at full rate.
pub fn best_correlation(reference: &[i16], recorded: &[i16], max_lag_samples: usize) -> (usize, f64) {
    let max_lag = max_lag_samples.min(recorded.len().saturating_sub(1));
    let len = reference.len().min(recorded.len().saturating_sub(max_lag));
    if len == 0 {
        return (0, 0.0);
    }
    let a: Vec<f64> = reference[..len].iter().map(|x| f64::from(*x)).collect();
    let b: Vec<f64> = recorded[..len + max_lag].iter().map(|x| f64::from(*x)).collect();

    let mut factor = 1;
    while factor < CORRELATION_DECIMATION_MAX && (len / factor) * (max_lag / factor + 1) > CORRELATION_WORK_MAX {
        factor *= CORRELATION_STEP;
    }
    let level = Level::new(&a, &b, factor);
    let scores: Vec<f64> = (0..=max_lag / factor).map(|lag| level.correlation(lag)).collect();
    let mut peaks: Vec<(usize, f64)> = (0..scores.len())
        .filter(|&i| (i == 0 || scores[i] >= scores[i - 1]) && (i + 1 == scores.len() || scores[i] >= scores[i + 1]))
        .map(|i| (i, scores[i]))
        .collect();
    peaks.sort_by(|x, y| y.1.total_cmp(&x.1));
    peaks.truncate(CORRELATION_CANDIDATES);

    while factor > 1 {
        factor /= CORRELATION_STEP;
        let level = Level::new(&a, &b, factor);
        let top = max_lag / factor;
        peaks = peaks
            .iter()
            .map(|&(coarse, _)| {
                let center = coarse * CORRELATION_STEP;
                let lags = center.saturating_sub(CORRELATION_REFINE)..=(center + CORRELATION_REFINE).min(top);
                lags.map(|lag| (lag, level.correlation(lag))).max_by(|x, y| x.1.total_cmp(&y.1)).unwrap_or((0, 0.0))
            })
            .collect();
        peaks.sort_by(|x, y| y.1.total_cmp(&x.1));
        peaks.dedup_by_key(|p| p.0);
    }
    peaks.first().copied().unwrap_or((0, 0.0))
}

/// Both signals at one decimation level, with what makes a lag's score O(window).
struct Level {
    a: Vec<f64>,
    b: Vec<f64>,
    energy_a: f64,
    /// `b_energy_prefix[i]` is the energy of `b[..i]`: a window's energy in O(1).
    b_energy_prefix: Vec<f64>,
}

impl Level {
    fn new(a: &[f64], b: &[f64], factor: usize) -> Self {
        // Block means: a box low-pass and decimation in one, enough to find candidates.
        let decimate = |x: &[f64]| -> Vec<f64> {
            if factor == 1 {
                return x.to_vec();
            }
            x.chunks_exact(factor).map(|c| c.iter().sum::<f64>() / factor as f64).collect()
        };
        let (a, b) = (decimate(a), decimate(b));
        let energy_a = a.iter().map(|x| x * x).sum();
        let mut b_energy_prefix = Vec::with_capacity(b.len() + 1);
        let mut sum = 0.0;
        b_energy_prefix.push(sum);
        for x in &b {
            sum += x * x;
            b_energy_prefix.push(sum);
        }
        Level { a, b, energy_a, b_energy_prefix }
    }

    fn correlation(&self, lag: usize) -> f64 {
        let window = &self.b[lag..lag + self.a.len()];
        let energy_b = self.b_energy_prefix[lag + self.a.len()] - self.b_energy_prefix[lag];
        let denominator = (self.energy_a * energy_b).sqrt();
        if denominator <= 0.0 {
            return 0.0;
        }
        let dot: f64 = self.a.iter().zip(window).map(|(x, y)| x * y).sum();
        dot / denominator
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Uniform white noise from a fixed seed (xorshift64*): reproducible without a crate.
    fn noise(n: usize, seed: u64, amplitude: i16) -> Vec<i16> {
        let mut state = seed.max(1);
        (0..n)
            .map(|_| {
                state ^= state >> 12;
                state ^= state << 25;
                state ^= state >> 27;
                let r = state.wrapping_mul(0x2545_f491_4f6c_dd1d) >> 48; // 16 random bits
                ((r as i64 - 32_768) * i64::from(amplitude) / 32_768) as i16
            })
            .collect()
    }

    fn delayed(x: &[i16], lag: usize, gain: f64) -> Vec<i16> {
        let mut out = vec![0; lag];
        out.extend(x[..x.len() - lag].iter().map(|s| (f64::from(*s) * gain).round() as i16));
        out
    }

    #[test]
    fn wav_round_trips_atomically() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tone.wav");
        let samples = tone(&[440.0], 0.25, 0.8);
        write_wav(&path, &samples).unwrap();
        write_wav(&path, &samples).unwrap(); // over an existing file
        assert_eq!(read_wav(&path).unwrap(), samples);
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1, "no temporary left behind");
    }

    #[test]
    fn stereo_is_mixed_to_mono() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("stereo.wav");
        let spec = hound::WavSpec {
            channels: 2,
            sample_rate: SAMPLE_RATE,
            bits_per_sample: 16,
            sample_format: hound::SampleFormat::Int,
        };
        let mut w = hound::WavWriter::create(&path, spec).unwrap();
        for (l, r) in [(100i16, 300i16), (i16::MAX, i16::MAX), (-5, 5)] {
            w.write_sample(l).unwrap();
            w.write_sample(r).unwrap();
        }
        w.finalize().unwrap();
        assert_eq!(read_wav(&path).unwrap(), vec![200, i16::MAX, 0]);
    }

    #[test]
    fn other_formats_are_refused_by_name() {
        let dir = tempfile::tempdir().unwrap();
        let write = |name: &str, sample_rate, bits_per_sample, sample_format| {
            let path = dir.path().join(name);
            let spec = hound::WavSpec { channels: 1, sample_rate, bits_per_sample, sample_format };
            let mut w = hound::WavWriter::create(&path, spec).unwrap();
            match sample_format {
                hound::SampleFormat::Float => w.write_sample(0.0f32).unwrap(),
                hound::SampleFormat::Int => w.write_sample(0i32).unwrap(),
            }
            w.finalize().unwrap();
            read_wav(&path).unwrap_err().to_string()
        };
        let msg = write("in.wav", 44_100, 16, hound::SampleFormat::Int);
        assert!(msg.ends_with("in.wav: 44100 Hz; calls need 48000 Hz 16-bit PCM, mono or stereo"), "{msg}");
        let msg = write("float.wav", 48_000, 32, hound::SampleFormat::Float);
        assert!(msg.contains("float.wav: 32-bit float; calls need"), "{msg}");
        let msg = write("deep.wav", 96_000, 24, hound::SampleFormat::Int);
        assert!(msg.contains("deep.wav: 96000 Hz, 24-bit PCM; calls need"), "{msg}");
        let msg = read_wav(dir.path().join("missing.wav")).unwrap_err().to_string();
        assert!(msg.contains("missing.wav: "), "{msg}");
    }

    #[test]
    fn tone_has_its_frequencies_and_not_others() {
        let x = tone(&[440.0, 1000.0], 1.0, 0.5);
        assert_eq!(x.len(), SAMPLE_RATE as usize);
        let peak = x.iter().map(|s| i32::from(*s).abs()).max().unwrap();
        assert!(peak <= i32::from(i16::MAX) / 2 + 1, "peak {peak}");
        let mut top = dominant_frequencies(&x, &[300.0, 440.0, 700.0, 1000.0, 2000.0], 2);
        top.sort_by(f32::total_cmp);
        assert_eq!(top, vec![440.0, 1000.0]);
        for f in [440.0, 1000.0] {
            let s = tone_strength(&x, f);
            assert!((0.45..0.55).contains(&s), "{f} Hz strength {s}");
        }
        assert!(tone_strength(&x, 700.0) < 0.001);
        assert!(tone_strength(&noise(48_000, 7, 8000), 440.0) < 0.01);
        assert_eq!(tone_strength(&[0; 100], 440.0), 0.0);
    }

    #[test]
    fn correlation_finds_the_delay_of_a_copy() {
        let x = noise(SAMPLE_RATE as usize, 1, 10_000);
        assert_eq!(best_correlation(&x, &x, 960), (0, 1.0));
        let (lag, corr) = best_correlation(&x, &delayed(&x, 312, 0.5), 960);
        assert_eq!(lag, 312);
        assert!(corr > 0.999, "{corr}");
        // A tone whose period (25 ms) is longer than the search has one answer too.
        let t = tone(&[440.0, 1000.0], 1.0, 0.5);
        assert_eq!(best_correlation(&t, &delayed(&t, 500, 1.0), 960).0, 500);
    }

    #[test]
    fn sweep_has_one_correlation_peak() {
        let x = sweep(100.0, 4000.0, 1.0, 0.5);
        assert_eq!(x.len(), SAMPLE_RATE as usize);
        assert!(x.iter().all(|s| i32::from(*s).abs() <= i32::from(i16::MAX) / 2 + 1));
        // Unlike the 440 + 1000 Hz tone, no lag but the true one comes close.
        let y = delayed(&x, 300, 1.0);
        assert_eq!(best_correlation(&x, &y, 960).0, 300);
        let (_, alias) = best_correlation(&x, &y[400..], 960 - 400);
        assert!(alias < 0.2, "{alias}");
    }

    #[test]
    fn correlation_of_unrelated_noise_is_low() {
        let x = noise(SAMPLE_RATE as usize, 1, 10_000);
        let y = noise(SAMPLE_RATE as usize, 2, 10_000);
        let (_, corr) = best_correlation(&x, &y, 960);
        assert!(corr.abs() < 0.1, "{corr}");
    }

    #[test]
    fn correlation_handles_degenerate_input() {
        assert_eq!(best_correlation(&[], &[1, 2, 3], 10), (0, 0.0));
        assert_eq!(best_correlation(&[1, 2, 3], &[], 10), (0, 0.0));
        assert_eq!(best_correlation(&[0; 100], &[0; 100], 10), (0, 0.0));
        assert_eq!(best_correlation(&[1, 2, 3], &[0, 1, 2, 3], 1), (1, 1.0));
    }

    #[test]
    fn correlation_over_ten_seconds_with_a_one_second_search() {
        let n = 10 * SAMPLE_RATE as usize;
        let x = noise(n, 3, 10_000);
        // A delayed, quieter copy with its own noise on top, like a recording.
        let y: Vec<i16> = delayed(&x, 12_345, 0.5).iter().zip(noise(n, 4, 1_000)).map(|(s, e)| s + e).collect();
        let start = std::time::Instant::now();
        let (lag, corr) = best_correlation(&x, &y, SAMPLE_RATE as usize);
        println!("best_correlation over 10 s, lags 0..=48000: {:?}, lag {lag}, corr {corr:.4}", start.elapsed());
        assert_eq!(lag, 12_345);
        assert!(corr > 0.95, "{corr}");
        let z = noise(n, 5, 10_000);
        let (_, corr) = best_correlation(&x, &z, SAMPLE_RATE as usize);
        assert!(corr.abs() < 0.1, "{corr}");
    }
}
