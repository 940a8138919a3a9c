//! Voice activity detection: webrtc-vad per 20 ms frame, gated by a minimum volume, with the
//! `start_secs` / `stop_secs` hysteresis of the bot config's `vad` block.

use webrtc_vad::{SampleRate, Vad, VadMode};

use crate::{dbfs, frame_len};

/// Resolved VAD settings (bot config `vad` block with worker defaults applied).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct VadSettings {
    /// 0..=1; mapped onto webrtc-vad's four aggressiveness modes.
    pub confidence: f32,
    /// Continuous speech needed before "started speaking".
    pub start_secs: f32,
    /// Continuous non-speech needed before "stopped speaking" (the end-of-speech hangover).
    pub stop_secs: f32,
    /// 0..=1 on a linear dBFS scale from −70 dBFS (0) to −10 dBFS (1); quieter frames are
    /// never speech. 0.3 ≈ −52 dBFS.
    pub min_volume: f32,
}

impl Default for VadSettings {
    fn default() -> Self {
        Self { confidence: 0.7, start_secs: 0.2, stop_secs: 0.5, min_volume: 0.3 }
    }
}

impl VadSettings {
    fn mode(&self) -> VadMode {
        match self.confidence {
            c if c < 0.5 => VadMode::Quality,
            c if c < 0.7 => VadMode::LowBitrate,
            c if c < 0.85 => VadMode::Aggressive,
            _ => VadMode::VeryAggressive,
        }
    }

    fn min_dbfs(&self) -> f32 {
        -70.0 + 60.0 * self.min_volume.clamp(0.0, 1.0)
    }
}

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum VadError {
    #[error("webrtc-vad does not support {0} Hz (8000, 16000, 32000, 48000 only)")]
    UnsupportedRate(u32),
}

/// A change of the caller's speaking state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VadTransition {
    Started,
    Stopped,
}

/// webrtc-vad's handle is a plain heap object with no thread affinity; it is only `!Send`
/// because it holds a raw pointer. We own it exclusively and never share it.
struct SendVad(Vad);
// SAFETY: the fvad instance is not shared or aliased; moving it between threads is sound.
unsafe impl Send for SendVad {}

/// Streaming detector: feed any amount of audio, get transitions.
pub struct VoiceDetector {
    vad: SendVad,
    settings: VadSettings,
    frame: usize,
    pending: Vec<i16>,
    speaking: bool,
    run_frames: u32,
    start_frames: u32,
    stop_frames: u32,
}

impl std::fmt::Debug for VoiceDetector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VoiceDetector").field("settings", &self.settings).field("speaking", &self.speaking).finish()
    }
}

impl VoiceDetector {
    pub fn new(sample_rate: u32, settings: VadSettings) -> Result<Self, VadError> {
        let rate = match sample_rate {
            8000 => SampleRate::Rate8kHz,
            16000 => SampleRate::Rate16kHz,
            32000 => SampleRate::Rate32kHz,
            48000 => SampleRate::Rate48kHz,
            other => return Err(VadError::UnsupportedRate(other)),
        };
        let vad = Vad::new_with_rate_and_mode(rate, settings.mode());
        let per_sec = 1000 / crate::FRAME_MS;
        let frames = |secs: f32| ((secs * per_sec as f32).round() as u32).max(1);
        Ok(Self {
            vad: SendVad(vad),
            settings,
            frame: frame_len(sample_rate),
            pending: Vec::with_capacity(frame_len(sample_rate) * 2),
            speaking: false,
            run_frames: 0,
            start_frames: frames(settings.start_secs),
            stop_frames: frames(settings.stop_secs),
        })
    }

    pub fn is_speaking(&self) -> bool {
        self.speaking
    }

    /// Feed audio; `on_transition` is called for each state change, with the number of samples
    /// of this push consumed up to the frame that caused it.
    pub fn push(&mut self, samples: &[i16], mut on_transition: impl FnMut(VadTransition, usize)) {
        let mut consumed = 0;
        let mut input = samples;
        // Complete a partial frame left over from the previous push first.
        if !self.pending.is_empty() {
            let need = self.frame - self.pending.len();
            let take = need.min(input.len());
            self.pending.extend_from_slice(&input[..take]);
            input = &input[take..];
            consumed += take;
            if self.pending.len() == self.frame {
                let frame = std::mem::take(&mut self.pending);
                if let Some(t) = self.classify(&frame) {
                    on_transition(t, consumed);
                }
                self.pending = frame;
                self.pending.clear();
            }
        }
        let mut chunks = input.chunks_exact(self.frame);
        for frame in &mut chunks {
            consumed += self.frame;
            if let Some(t) = self.classify(frame) {
                on_transition(t, consumed);
            }
        }
        self.pending.extend_from_slice(chunks.remainder());
    }

    fn classify(&mut self, frame: &[i16]) -> Option<VadTransition> {
        let loud = dbfs(frame) >= self.settings.min_dbfs();
        // webrtc-vad only errors on an invalid frame length, which `frame` never is.
        let voiced = loud && self.vad.0.is_voice_segment(frame).unwrap_or(false);
        if voiced == self.speaking {
            self.run_frames = 0;
            return None;
        }
        self.run_frames += 1;
        let needed = if self.speaking { self.stop_frames } else { self.start_frames };
        if self.run_frames < needed {
            return None;
        }
        self.run_frames = 0;
        self.speaking = voiced;
        Some(if voiced { VadTransition::Started } else { VadTransition::Stopped })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A vowel-like signal: a 140 Hz pulse train through two formant-ish sinusoids.
    fn voiced(ms: u32, rate: u32) -> Vec<i16> {
        let n = (rate * ms / 1000) as usize;
        (0..n)
            .map(|i| {
                let t = i as f32 / rate as f32;
                let f0 = 140.0;
                let s = (2.0 * std::f32::consts::PI * f0 * t).sin() * 0.5
                    + (2.0 * std::f32::consts::PI * 700.0 * t).sin()
                        * 0.3
                        * (2.0 * std::f32::consts::PI * f0 * t).sin().abs()
                    + (2.0 * std::f32::consts::PI * 1200.0 * t).sin() * 0.2;
                (s * 12000.0) as i16
            })
            .collect()
    }

    fn run(detector: &mut VoiceDetector, audio: &[i16], chunk: usize) -> Vec<(VadTransition, usize)> {
        let mut out = vec![];
        let mut offset = 0;
        for c in audio.chunks(chunk) {
            detector.push(c, |t, at| out.push((t, offset + at)));
            offset += c.len();
        }
        out
    }

    #[test]
    fn speech_then_silence_gives_start_then_stop_after_the_hangover() {
        let rate = 8000;
        let mut audio = vec![0i16; 8000];
        audio.extend(voiced(1000, rate));
        audio.extend(vec![0i16; 8000]);
        let mut d = VoiceDetector::new(rate, VadSettings::default()).unwrap();
        let t = run(&mut d, &audio, 160);
        assert_eq!(t.len(), 2, "{t:?}");
        assert_eq!(t[0].0, VadTransition::Started);
        // Started within start_secs (+ one frame) of the onset at 1 s.
        assert!(t[0].1 >= 8000 && t[0].1 <= 8000 + 1600 + 320, "{t:?}");
        assert_eq!(t[1].0, VadTransition::Stopped);
        // Stopped stop_secs after the end of speech at 2 s (within a frame).
        let expected = 16000 + 4000;
        assert!((t[1].1 as i64 - expected as i64).abs() <= 320, "{t:?}");
    }

    #[test]
    fn odd_chunk_sizes_give_the_same_transitions() {
        let rate = 8000;
        let mut audio = vec![0i16; 4000];
        audio.extend(voiced(800, rate));
        audio.extend(vec![0i16; 6000]);
        let mut a = VoiceDetector::new(rate, VadSettings::default()).unwrap();
        let mut b = VoiceDetector::new(rate, VadSettings::default()).unwrap();
        assert_eq!(run(&mut a, &audio, 160), run(&mut b, &audio, 77));
    }

    #[test]
    fn quiet_audio_below_min_volume_is_not_speech() {
        let rate = 8000;
        let quiet: Vec<i16> = voiced(1000, rate).iter().map(|s| s / 400).collect();
        let mut d = VoiceDetector::new(rate, VadSettings::default()).unwrap();
        assert!(run(&mut d, &quiet, 160).is_empty());
    }

    #[test]
    fn empty_pushes_and_unsupported_rates_are_handled() {
        let mut d = VoiceDetector::new(16000, VadSettings::default()).unwrap();
        d.push(&[], |_, _| panic!("no transition from nothing"));
        assert_eq!(VoiceDetector::new(24000, VadSettings::default()).unwrap_err(), VadError::UnsupportedRate(24000));
    }
}
