//! Audio helpers: the energy utterance detector used by the STT double and the dialler, the
//! synthetic "speech" generator used by the TTS doubles, and WAV loading.

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex, OnceLock};

/// RMS (i16 scale) above which a 20 ms window counts as speech.
pub const SPEECH_RMS: f64 = 400.0;
/// Analysis window.
pub const WINDOW_MS: u64 = 20;
/// Interim results cadence (ms of speech).
pub const INTERIM_EVERY_MS: u64 = 250;

pub fn rms(samples: &[i16]) -> f64 {
    if samples.is_empty() {
        return 0.0;
    }
    let sum: f64 = samples.iter().map(|&s| f64::from(s) * f64::from(s)).sum();
    (sum / samples.len() as f64).sqrt()
}

/// `rms(window) > SPEECH_RMS`, in integers: the STT double runs this on every 20 ms of every
/// call's audio, and an exact integer sum of squares (≤ 2^30 per sample) needs no float
/// conversion per sample and no square root.
pub fn is_speech(window: &[i16]) -> bool {
    const THRESHOLD_SQ: u64 = (SPEECH_RMS * SPEECH_RMS) as u64;
    let sum: u64 = window.iter().map(|&s| u64::from(s.unsigned_abs()).pow(2)).sum();
    !window.is_empty() && sum > THRESHOLD_SQ * window.len() as u64
}

/// What the detector saw. Times are milliseconds of *audio* since the stream started.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DetEvent {
    /// Speech began at `at_ms` (start of the first speech window).
    Onset { at_ms: u64 },
    /// Emitted at the first speech window and then every 250 ms of the utterance while it lasts.
    /// `speech_ms` = audio time from onset to the end of the current window.
    Interim { onset_ms: u64, speech_ms: u64 },
    /// `endpointing_ms` of non-speech followed the last speech window, which ended at `end_ms`.
    End { onset_ms: u64, end_ms: u64 },
}

#[derive(Debug, Clone, Copy)]
enum DetState {
    Idle,
    Speech { onset_ms: u64, last_speech_end_ms: u64, next_interim_ms: u64 },
}

/// Energy-based utterance detector over a mono LINEAR16 stream.
#[derive(Debug)]
pub struct UtteranceDetector {
    window: usize,
    pending: Vec<i16>,
    audio_ms: u64,
    endpointing_ms: u64,
    state: DetState,
}

impl UtteranceDetector {
    pub fn new(sample_rate: u32, endpointing_ms: u64) -> Self {
        let window = ((sample_rate as u64 * WINDOW_MS) / 1000).max(1) as usize;
        Self {
            window,
            pending: Vec::with_capacity(window),
            audio_ms: 0,
            endpointing_ms: endpointing_ms.max(WINDOW_MS),
            state: DetState::Idle,
        }
    }

    /// Audio received so far, in ms (whole windows only).
    pub fn audio_ms(&self) -> u64 {
        self.audio_ms
    }

    /// `Some(onset_ms)` while an utterance is in progress.
    pub fn in_speech(&self) -> Option<u64> {
        match self.state {
            DetState::Speech { onset_ms, .. } => Some(onset_ms),
            DetState::Idle => None,
        }
    }

    /// End of the last speech window of the current utterance.
    pub fn last_speech_end_ms(&self) -> Option<u64> {
        match self.state {
            DetState::Speech { last_speech_end_ms, .. } => Some(last_speech_end_ms),
            DetState::Idle => None,
        }
    }

    /// Ends the current utterance now (flush); returns its `End` event if one was in progress.
    pub fn force_end(&mut self) -> Option<DetEvent> {
        match std::mem::replace(&mut self.state, DetState::Idle) {
            DetState::Speech { onset_ms, last_speech_end_ms, .. } => {
                Some(DetEvent::End { onset_ms, end_ms: last_speech_end_ms })
            }
            DetState::Idle => None,
        }
    }

    pub fn push(&mut self, samples: &[i16], out: &mut Vec<DetEvent>) {
        let mut rest = samples;
        while !rest.is_empty() {
            let need = self.window - self.pending.len();
            let take = need.min(rest.len());
            self.pending.extend_from_slice(&rest[..take]);
            rest = &rest[take..];
            if self.pending.len() == self.window {
                let speech = is_speech(&self.pending);
                self.pending.clear();
                self.window_done(speech, out);
            }
        }
    }

    fn window_done(&mut self, speech: bool, out: &mut Vec<DetEvent>) {
        let start = self.audio_ms;
        let end = start + WINDOW_MS;
        self.audio_ms = end;
        match &mut self.state {
            DetState::Idle => {
                if speech {
                    out.push(DetEvent::Onset { at_ms: start });
                    out.push(DetEvent::Interim { onset_ms: start, speech_ms: WINDOW_MS });
                    self.state = DetState::Speech {
                        onset_ms: start,
                        last_speech_end_ms: end,
                        next_interim_ms: WINDOW_MS + INTERIM_EVERY_MS,
                    };
                }
            }
            DetState::Speech { onset_ms, last_speech_end_ms, next_interim_ms } => {
                if speech {
                    *last_speech_end_ms = end;
                } else if end - *last_speech_end_ms >= self.endpointing_ms {
                    out.push(DetEvent::End { onset_ms: *onset_ms, end_ms: *last_speech_end_ms });
                    self.state = DetState::Idle;
                    return;
                }
                let speech_ms = end - *onset_ms;
                if speech_ms >= *next_interim_ms {
                    *next_interim_ms += INTERIM_EVERY_MS;
                    // Only while speech is ongoing (not during the trailing silence).
                    if speech {
                        out.push(DetEvent::Interim { onset_ms: *onset_ms, speech_ms });
                    }
                }
            }
        }
    }
}

/// LINEAR16 bytes appended to `out` as samples. Clients may split a sample between two
/// messages: the odd trailing byte waits in `odd` for the next call.
pub fn decode_pcm16(odd: &mut Option<u8>, bytes: &[u8], out: &mut Vec<i16>) {
    let mut rest = bytes;
    if let Some(lo) = odd.take() {
        let Some((&hi, tail)) = rest.split_first() else {
            *odd = Some(lo);
            return;
        };
        out.push(i16::from_le_bytes([lo, hi]));
        rest = tail;
    }
    let mut pairs = rest.chunks_exact(2);
    // `extend` over an exact-size iterator reserves once and converts without a capacity check
    // per sample (the STT doubles run this on every sample of every call).
    out.extend(pairs.by_ref().map(|c| i16::from_le_bytes([c[0], c[1]])));
    if let [b] = pairs.remainder() {
        *odd = Some(*b);
    }
}

/// Words an interim result carries after `speech_ms` of speech: 1 + speech_ms/250.
pub fn interim_word_count(speech_ms: u64, total_words: usize) -> usize {
    ((1 + speech_ms / INTERIM_EVERY_MS) as usize).min(total_words)
}

/// Synthetic speech-like audio: a 220 Hz tone with a ~4 Hz "syllable" envelope, peak ~6000.
/// Continuous across calls (keeps its phase), so chunks of one context join without clicks.
#[derive(Debug, Clone)]
pub struct SpeechSynth {
    sample_rate: u32,
    n: u64,
}

pub const SYNTH_PEAK: f64 = 6000.0;
/// Milliseconds of audio per transcript character.
pub const MS_PER_CHAR: u64 = 65;
/// Minimum audio for a non-empty text.
pub const MIN_TEXT_MS: u64 = 200;

impl SpeechSynth {
    pub fn new(sample_rate: u32) -> Self {
        Self { sample_rate: sample_rate.max(1), n: 0 }
    }

    /// The waveform repeats every second (220 Hz and 4 Hz both divide 1 s), so one second is
    /// computed once per sample rate and then copied.
    fn table(sample_rate: u32) -> Arc<[i16]> {
        static TABLES: OnceLock<Mutex<HashMap<u32, Arc<[i16]>>>> = OnceLock::new();
        let mut map = TABLES.get_or_init(Default::default).lock().unwrap_or_else(|p| p.into_inner());
        map.entry(sample_rate)
            .or_insert_with(|| {
                let sr = f64::from(sample_rate);
                (0..sample_rate)
                    .map(|i| {
                        let t = f64::from(i) / sr;
                        let env = 0.25 + 0.75 * (std::f64::consts::PI * 4.0 * t).sin().abs();
                        (SYNTH_PEAK * env * (2.0 * std::f64::consts::PI * 220.0 * t).sin()).round() as i16
                    })
                    .collect()
            })
            .clone()
    }

    pub fn render(&mut self, samples: usize, out: &mut Vec<i16>) {
        let table = Self::table(self.sample_rate);
        let len = table.len() as u64;
        out.reserve(samples);
        let mut left = samples;
        while left > 0 {
            let pos = (self.n % len) as usize;
            let take = left.min(table.len() - pos);
            out.extend_from_slice(&table[pos..pos + take]);
            self.n += take as u64;
            left -= take;
        }
    }
}

/// Audio duration for a text: 65 ms per character, at least 200 ms when non-empty.
pub fn text_duration_ms(text: &str) -> u64 {
    let chars = text.chars().count() as u64;
    if chars == 0 || text.trim().is_empty() {
        0
    } else {
        (chars * MS_PER_CHAR).max(MIN_TEXT_MS)
    }
}

pub fn samples_for_ms(sample_rate: u32, ms: u64) -> usize {
    (u64::from(sample_rate) * ms / 1000) as usize
}

pub fn pcm_bytes(samples: &[i16]) -> Vec<u8> {
    let mut b = Vec::with_capacity(samples.len() * 2);
    for s in samples {
        b.extend_from_slice(&s.to_le_bytes());
    }
    b
}

/// Word spans (start, end) in ms for a text spread over `dur_ms`, proportional to characters.
pub fn word_spans(text: &str, dur_ms: f64) -> Vec<(String, f64, f64)> {
    let total = text.chars().count().max(1) as f64;
    let per = dur_ms / total;
    let mut out = Vec::new();
    let mut idx = 0usize;
    let mut word = String::new();
    let mut start = 0usize;
    for c in text.chars() {
        if c.is_whitespace() {
            if !word.is_empty() {
                out.push((std::mem::take(&mut word), start as f64 * per, idx as f64 * per));
            }
        } else {
            if word.is_empty() {
                start = idx;
            }
            word.push(c);
        }
        idx += 1;
    }
    if !word.is_empty() {
        out.push((word, start as f64 * per, idx as f64 * per));
    }
    out
}

/// A caller WAV: 8 kHz mono 16-bit samples plus where speech ends (by energy).
#[derive(Debug, Clone)]
pub struct CallerWav {
    pub samples: Vec<i16>,
    pub sample_rate: u32,
    /// Sample index just after the last speech window (RMS > 400).
    pub speech_end: usize,
}

pub fn load_wav(path: &Path) -> anyhow::Result<CallerWav> {
    let mut r = hound::WavReader::open(path).map_err(|e| anyhow::anyhow!("cannot open {}: {e}", path.display()))?;
    let spec = r.spec();
    if spec.channels != 1 || spec.bits_per_sample != 16 || spec.sample_format != hound::SampleFormat::Int {
        anyhow::bail!(
            "{}: need mono 16-bit PCM, got {} ch {} bit {:?}",
            path.display(),
            spec.channels,
            spec.bits_per_sample,
            spec.sample_format
        );
    }
    let samples: Vec<i16> = r.samples::<i16>().collect::<Result<_, _>>()?;
    let speech_end = speech_end(&samples, spec.sample_rate);
    Ok(CallerWav { samples, sample_rate: spec.sample_rate, speech_end })
}

/// Sample index just after the last 20 ms window whose RMS exceeds the speech threshold
/// (0 when there is no speech).
pub fn speech_end(samples: &[i16], sample_rate: u32) -> usize {
    let w = samples_for_ms(sample_rate, WINDOW_MS).max(1);
    let mut end = 0;
    for (i, win) in samples.chunks(w).enumerate() {
        if is_speech(win) {
            end = (i * w + win.len()).min(samples.len());
        }
    }
    end
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tone(ms: u64) -> Vec<i16> {
        let mut s = SpeechSynth::new(8000);
        let mut v = Vec::new();
        s.render(samples_for_ms(8000, ms), &mut v);
        v
    }

    fn run(det: &mut UtteranceDetector, samples: &[i16], chunk: usize) -> Vec<DetEvent> {
        let mut out = Vec::new();
        for c in samples.chunks(chunk) {
            det.push(c, &mut out);
        }
        out
    }

    #[test]
    fn detects_one_utterance_with_interims_and_end() {
        let mut audio = vec![0i16; 8 * 300];
        audio.extend(tone(1000));
        audio.extend(vec![0i16; 8 * 400]);
        let mut det = UtteranceDetector::new(8000, 200);
        // Odd chunk size to exercise window assembly.
        let ev = run(&mut det, &audio, 333);
        assert_eq!(ev[0], DetEvent::Onset { at_ms: 300 });
        let interims: Vec<u64> = ev
            .iter()
            .filter_map(|e| match e {
                DetEvent::Interim { speech_ms, .. } => Some(*speech_ms),
                _ => None,
            })
            .collect();
        assert_eq!(interims, vec![20, 280, 520, 780]);
        let ends: Vec<_> = ev.iter().filter(|e| matches!(e, DetEvent::End { .. })).collect();
        assert_eq!(ends, vec![&DetEvent::End { onset_ms: 300, end_ms: 1300 }]);
        assert!(det.in_speech().is_none());
        assert_eq!(det.audio_ms(), 1700);
    }

    #[test]
    fn short_gaps_do_not_split_and_long_gaps_do() {
        let mut audio = tone(400);
        audio.extend(vec![0i16; 8 * 140]);
        audio.extend(tone(400));
        audio.extend(vec![0i16; 8 * 250]);
        audio.extend(tone(300));
        audio.extend(vec![0i16; 8 * 300]);
        let mut det = UtteranceDetector::new(8000, 200);
        let ev = run(&mut det, &audio, 160);
        let onsets = ev.iter().filter(|e| matches!(e, DetEvent::Onset { .. })).count();
        let ends: Vec<_> = ev.iter().filter(|e| matches!(e, DetEvent::End { .. })).collect();
        assert_eq!(onsets, 2);
        assert_eq!(ends.len(), 2);
        assert_eq!(ends[0], &DetEvent::End { onset_ms: 0, end_ms: 940 });
    }

    #[test]
    fn quiet_noise_is_not_speech_and_force_end_flushes() {
        let noise: Vec<i16> = (0..8000).map(|i| if i % 2 == 0 { 300 } else { -300 }).collect();
        let mut det = UtteranceDetector::new(8000, 200);
        assert!(run(&mut det, &noise, 160).is_empty());
        let ev = run(&mut det, &tone(200), 160);
        assert!(matches!(ev[0], DetEvent::Onset { at_ms: 1000 }));
        assert_eq!(det.force_end(), Some(DetEvent::End { onset_ms: 1000, end_ms: 1200 }));
        assert_eq!(det.force_end(), None);
    }

    #[test]
    fn integer_speech_test_matches_rms() {
        for amp in [0i16, 1, 399, 400, 401, 565, 566, 1000, i16::MAX, i16::MIN] {
            for len in [1usize, 160, 320] {
                let w: Vec<i16> = (0..len).map(|i| if i % 2 == 0 { amp } else { amp.saturating_neg() }).collect();
                assert_eq!(is_speech(&w), rms(&w) > SPEECH_RMS, "amp {amp} len {len}");
            }
        }
        assert!(!is_speech(&[]));
    }

    #[test]
    fn interim_words_grow_and_cap() {
        assert_eq!(interim_word_count(20, 6), 1);
        assert_eq!(interim_word_count(270, 6), 2);
        assert_eq!(interim_word_count(520, 6), 3);
        assert_eq!(interim_word_count(10_000, 6), 6);
    }

    #[test]
    fn synth_is_speech_and_durations() {
        let t = tone(1000);
        assert!(t.iter().map(|s| s.unsigned_abs()).max().unwrap() <= 6000);
        for w in t.chunks(160) {
            assert!(is_speech(w), "every window of the synth counts as speech");
        }
        assert_eq!(text_duration_ms(""), 0);
        assert_eq!(text_duration_ms("Hi"), 200);
        assert_eq!(text_duration_ms("Hello world"), 715);
        let spans = word_spans("Hi there", 800.0);
        assert_eq!(spans[0], ("Hi".into(), 0.0, 200.0));
        assert_eq!(spans[1], ("there".into(), 300.0, 800.0));
    }

    #[test]
    fn assets_are_usable() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../assets/audio");
        for i in 1..=3 {
            let wav = load_wav(&root.join(format!("caller-{i}.wav"))).unwrap();
            assert_eq!(wav.sample_rate, 8000);
            let dur_ms = wav.samples.len() as u64 / 8;
            assert!(dur_ms < 3500, "caller-{i} too long: {dur_ms}");
            assert!(wav.samples.len() - wav.speech_end < 8 * 50, "caller-{i}: trailing silence");
            // One utterance each at the default endpointing.
            let mut det = UtteranceDetector::new(8000, 200);
            let mut audio = wav.samples.clone();
            audio.extend(vec![0i16; 8 * 400]);
            let ev = run(&mut det, &audio, 160);
            let onsets: Vec<_> = ev.iter().filter(|e| matches!(e, DetEvent::Onset { .. })).collect();
            assert_eq!(onsets.len(), 1, "caller-{i} splits into several utterances");
            assert!(matches!(onsets[0], DetEvent::Onset { at_ms } if *at_ms < 50));
        }
    }
}
