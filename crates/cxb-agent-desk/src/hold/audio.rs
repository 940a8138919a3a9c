//! Hold audio: a mono loop at the transport rate, played in 20 ms frames.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use rubato::audioadapter_buffers::direct::SequentialSlice;
use rubato::{Fft, FixedSync, Resampler};

/// Hold files longer than this are refused: hold music is a short loop, and the decoded
/// audio lives in memory for the life of the process.
pub const MAX_FILE_DURATION: Duration = Duration::from_secs(600);
/// Source files: at most this many channels (mixed down to mono).
pub const MAX_CHANNELS: u16 = 8;
/// Source files: sample rates accepted (resampled to the transport rate).
pub const SOURCE_RATES: std::ops::RangeInclusive<u32> = 8_000..=48_000;
/// Transport rates accepted; they must also be multiples of 50 (whole 20 ms frames).
pub const OUTPUT_RATES: std::ops::RangeInclusive<u32> = 8_000..=48_000;
/// Default playback gain: hold music sits well below speech level.
pub const DEFAULT_GAIN: f32 = 0.5;
/// Highest accepted gain; above 1 samples saturate.
pub const MAX_GAIN: f32 = 4.0;

/// A loop endpoint jump larger than this (of full scale 32767) would click at the wrap, so the
/// loop gets a short fade through zero at both ends.
const SEAM_JUMP_LIMIT: i32 = 1_000;
const SEAM_FADE: Duration = Duration::from_millis(10);

#[derive(Debug, thiserror::Error)]
pub enum HoldError {
    #[error("cannot read hold audio {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: hound::Error,
    },
    #[error("hold audio {path}: {why}")]
    Unsupported { path: PathBuf, why: String },
    #[error("hold audio {path} lasts {seconds:.1} s; at most {} s is accepted", MAX_FILE_DURATION.as_secs())]
    TooLong { path: PathBuf, seconds: f64 },
    #[error("hold audio {path} is shorter than one 20 ms frame")]
    TooShort { path: PathBuf },
    #[error("transport sample rate {0} Hz is not supported (8000..=48000 Hz, a multiple of 50)")]
    Rate(u32),
    #[error("cannot resample hold audio {path}: {why}")]
    Resample { path: PathBuf, why: String },
}

/// A mono loop of 16-bit samples at one rate, with a playback gain.
///
/// Cloning is cheap (the samples are shared), so one loaded file can serve every call.
/// [`HoldAudio::load`] does blocking file I/O and resampling: call it once at startup or in
/// `spawn_blocking`.
#[derive(Clone, Debug)]
pub struct HoldAudio {
    samples: Arc<[i16]>,
    rate: u32,
    gain: f32,
}

fn check_rate(rate: u32) -> Result<(), HoldError> {
    if OUTPUT_RATES.contains(&rate) && rate % 50 == 0 {
        Ok(())
    } else {
        Err(HoldError::Rate(rate))
    }
}

impl HoldAudio {
    /// Reads a WAV file (integer PCM 8–32 bit or 32-bit float, any channel count up to 8,
    /// 8–48 kHz, at most 10 minutes), mixes it down to mono and resamples it to `rate`.
    ///
    /// The resampling wraps around the loop point, so a seamless file stays seamless; a file
    /// whose ends do not meet gets a 10 ms fade at each end so the wrap cannot click.
    pub fn load(path: impl AsRef<Path>, rate: u32) -> Result<HoldAudio, HoldError> {
        let path = path.as_ref();
        check_rate(rate)?;
        let read_err = |source| HoldError::Read { path: path.to_path_buf(), source };
        let unsupported = |why: String| HoldError::Unsupported { path: path.to_path_buf(), why };
        let reader = hound::WavReader::open(path).map_err(read_err)?;
        let spec = reader.spec();
        if spec.channels == 0 || spec.channels > MAX_CHANNELS {
            return Err(unsupported(format!("{} channels (1..={MAX_CHANNELS} supported)", spec.channels)));
        }
        if !SOURCE_RATES.contains(&spec.sample_rate) {
            return Err(unsupported(format!("sample rate {} Hz (8000..=48000 supported)", spec.sample_rate)));
        }
        let max_frames = MAX_FILE_DURATION.as_secs() as usize * spec.sample_rate as usize;
        let declared = reader.duration() as usize;
        if declared > max_frames {
            return Err(HoldError::TooLong {
                path: path.to_path_buf(),
                seconds: declared as f64 / f64::from(spec.sample_rate),
            });
        }
        let channels = usize::from(spec.channels);
        // The header's length is only a claim: never read more than the limit allows.
        let max_samples = max_frames * channels;
        let interleaved: Vec<f32> = match (spec.sample_format, spec.bits_per_sample) {
            (hound::SampleFormat::Float, 32) => {
                reader.into_samples::<f32>().take(max_samples).collect::<Result<_, _>>().map_err(read_err)?
            }
            (hound::SampleFormat::Int, bits @ 8..=32) => {
                let scale = 1.0 / (1u64 << (bits - 1)) as f32;
                reader
                    .into_samples::<i32>()
                    .take(max_samples)
                    .map(|s| s.map(|s| s as f32 * scale))
                    .collect::<Result<_, _>>()
                    .map_err(read_err)?
            }
            (format, bits) => return Err(unsupported(format!("{bits}-bit {format:?} samples"))),
        };
        let mono: Vec<f32> = interleaved
            .chunks_exact(channels)
            .map(|frame| {
                let sum: f32 = frame.iter().map(|s| if s.is_finite() { *s } else { 0.0 }).sum();
                sum / channels as f32
            })
            .collect();
        let mono = if spec.sample_rate == rate {
            mono
        } else {
            resample_loop(&mono, spec.sample_rate, rate)
                .map_err(|why| HoldError::Resample { path: path.to_path_buf(), why })?
        };
        let samples: Vec<i16> =
            mono.iter().map(|s| (s * 32767.0).round().clamp(f32::from(i16::MIN), f32::from(i16::MAX)) as i16).collect();
        if samples.len() < frame_samples(rate) {
            return Err(HoldError::TooShort { path: path.to_path_buf() });
        }
        Ok(HoldAudio { samples: smooth_seam(samples, rate).into(), rate, gain: DEFAULT_GAIN })
    }

    /// The built-in fallback when no hold file is configured (or it cannot be read): a soft
    /// two-tone chime ("ding–dong", E5 then C5, bell-like decay) repeating every 3.2 s.
    pub fn tone(rate: u32) -> Result<HoldAudio, HoldError> {
        check_rate(rate)?;
        let len = rate as usize * 16 / 5; // 3.2 s
        let mut loop_ = vec![0f64; len];
        let fs = f64::from(rate);
        for (start, freq) in [(0.0, 659.25), (0.8, 523.25)] {
            let first = (start * fs) as usize;
            // Written modulo the loop length, so the tail of a note continues at the start of
            // the buffer with its phase intact: the loop point is seamless by construction.
            for i in 0..len {
                let t = i as f64 / fs;
                let attack = (t / 0.015).min(1.0);
                let env = 0.5 - 0.5 * (std::f64::consts::PI * attack).cos();
                let env = env * (-t / 0.45).exp();
                let w = 2.0 * std::f64::consts::PI * freq * t;
                let v = env * (w.sin() + 0.2 * (2.0 * w).sin() + 0.05 * (3.0 * w).sin());
                loop_[(first + i) % len] += 0.3 * v;
            }
        }
        let samples: Vec<i16> = loop_.iter().map(|v| (v * 32767.0).round().clamp(-32768.0, 32767.0) as i16).collect();
        Ok(HoldAudio { samples: samples.into(), rate, gain: DEFAULT_GAIN })
    }

    /// A loop from samples already at `rate` (at least one 20 ms frame).
    pub fn from_samples(samples: Vec<i16>, rate: u32) -> Result<HoldAudio, HoldError> {
        check_rate(rate)?;
        if samples.len() < frame_samples(rate) {
            return Err(HoldError::TooShort { path: PathBuf::from("<samples>") });
        }
        Ok(HoldAudio { samples: samples.into(), rate, gain: DEFAULT_GAIN })
    }

    /// Playback gain, clamped to `0..=4` (NaN → the default 0.5); above 1 samples saturate.
    pub fn with_gain(mut self, gain: f32) -> HoldAudio {
        self.gain = if gain.is_nan() { DEFAULT_GAIN } else { gain.clamp(0.0, MAX_GAIN) };
        self
    }

    pub fn gain(&self) -> f32 {
        self.gain
    }

    pub fn rate(&self) -> u32 {
        self.rate
    }

    /// Samples per 20 ms frame.
    pub fn frame_samples(&self) -> usize {
        frame_samples(self.rate)
    }

    /// The loop, before gain.
    pub fn samples(&self) -> &[i16] {
        &self.samples
    }

    /// Length of one pass of the loop.
    pub fn duration(&self) -> Duration {
        Duration::from_secs_f64(self.samples.len() as f64 / f64::from(self.rate))
    }

    /// Fills `out` from loop position `*pos` (wrapping, gain applied) and advances `*pos`.
    pub fn fill(&self, pos: &mut usize, out: &mut [i16]) {
        let n = self.samples.len();
        if n == 0 {
            out.fill(0);
            return;
        }
        let mut p = *pos % n;
        for o in out.iter_mut() {
            let v = f32::from(self.samples[p]) * self.gain;
            *o = v.round().clamp(f32::from(i16::MIN), f32::from(i16::MAX)) as i16;
            p += 1;
            if p == n {
                p = 0;
            }
        }
        *pos = p;
    }
}

pub(crate) fn frame_samples(rate: u32) -> usize {
    rate as usize / 50
}

/// Resamples a loop with wrap-around context: the input is extended with its own tail before
/// and its head after, so the filter sees the loop's real neighbours at both ends; the middle
/// of the output is the resampled loop.
fn resample_loop(input: &[f32], from: u32, to: u32) -> Result<Vec<f32>, String> {
    let n = input.len();
    if n == 0 {
        return Ok(Vec::new());
    }
    let pad = (from as usize / 10).max(1); // 100 ms of context each side
    let ext: Vec<f32> = (0..n + 2 * pad).map(|i| input[(i + n - pad % n) % n]).collect();
    let mut resampler =
        Fft::<f32>::new(from as usize, to as usize, 1024, 1, FixedSync::Input).map_err(|e| format!("{e}"))?;
    let adapter = SequentialSlice::new(&ext, 1, ext.len()).map_err(|e| format!("{e}"))?;
    let out = resampler.process_all(&adapter, ext.len(), None).map_err(|e| format!("{e}"))?.take_data();
    let ratio = f64::from(to) / f64::from(from);
    let skip = (pad as f64 * ratio).round() as usize;
    let len = (n as f64 * ratio).round() as usize;
    out.get(skip..skip + len)
        .map(<[f32]>::to_vec)
        .ok_or_else(|| format!("resampler returned {} samples, expected at least {}", out.len(), skip + len))
}

/// A loop whose last and first samples are far apart clicks at every wrap: fade both ends
/// through zero (10 ms each). Seamless loops are left untouched.
fn smooth_seam(mut s: Vec<i16>, rate: u32) -> Vec<i16> {
    let (Some(&first), Some(&last)) = (s.first(), s.last()) else { return s };
    if (i32::from(first) - i32::from(last)).abs() <= SEAM_JUMP_LIMIT {
        return s;
    }
    let fade = ((SEAM_FADE.as_secs_f64() * f64::from(rate)) as usize).min(s.len() / 2).max(1);
    let n = s.len();
    for i in 0..fade {
        let g = i as f32 / fade as f32;
        s[i] = (f32::from(s[i]) * g) as i16;
        s[n - 1 - i] = (f32::from(s[n - 1 - i]) * g) as i16;
    }
    s
}
