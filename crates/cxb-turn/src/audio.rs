//! [`TurnAudio`]: the bounded buffer of caller audio that Smart Turn scores.

use std::collections::VecDeque;
use std::time::Duration;

use crate::features::{SAMPLE_RATE, WINDOW_SAMPLES};

/// Caller audio at 16 kHz for the current turn, bounded to the 8 s Smart Turn looks at.
///
/// Between turns it keeps only `pre_roll` (pipecat keeps 500 ms): the VAD declares speech a
/// little after it began, and the model should hear the onset. From
/// [`speech_started`](Self::speech_started) until [`clear`](Self::clear) (turn closed) it keeps
/// everything, up to the last 8 s — so after an "incomplete" prediction the next one scores the
/// whole turn so far, pauses included, as pipecat does.
#[derive(Debug, Clone)]
pub struct TurnAudio {
    samples: VecDeque<f32>,
    pre_roll: usize,
    in_turn: bool,
}

impl TurnAudio {
    pub fn new(pre_roll: Duration) -> Self {
        let pre_roll = ((pre_roll.as_secs_f64() * f64::from(SAMPLE_RATE)) as usize).min(WINDOW_SAMPLES);
        Self { samples: VecDeque::with_capacity(WINDOW_SAMPLES), pre_roll, in_turn: false }
    }

    /// Append 16 kHz mono samples in −1..1.
    pub fn push(&mut self, samples: &[f32]) {
        let keep = if self.in_turn { WINDOW_SAMPLES } else { self.pre_roll };
        // Only the newest `keep` samples of a large push can survive: skip the rest up front.
        let samples = &samples[samples.len().saturating_sub(keep)..];
        self.samples.extend(samples);
        let excess = self.samples.len().saturating_sub(keep);
        self.samples.drain(..excess);
    }

    /// Append 16 kHz mono 16-bit PCM.
    pub fn push_i16(&mut self, samples: &[i16]) {
        // Bounded chunks so a large push does not allocate a large temporary.
        let mut chunk = [0f32; 320];
        for part in samples.chunks(chunk.len()) {
            for (dst, &s) in chunk.iter_mut().zip(part) {
                *dst = f32::from(s) / 32768.0;
            }
            self.push(&chunk[..part.len()]);
        }
    }

    /// The VAD declared speech: from now on the buffer holds the turn (plus its pre-roll).
    pub fn speech_started(&mut self) {
        self.in_turn = true;
    }

    /// The turn closed: drop its audio and go back to keeping only the pre-roll.
    pub fn clear(&mut self) {
        self.samples.clear();
        self.in_turn = false;
    }

    /// Copy the buffered audio (oldest first, at most 8 s) into `out`.
    pub fn copy_to(&self, out: &mut Vec<f32>) {
        out.clear();
        let (a, b) = self.samples.as_slices();
        out.extend_from_slice(a);
        out.extend_from_slice(b);
    }

    pub fn len(&self) -> usize {
        self.samples.len()
    }

    pub fn is_empty(&self) -> bool {
        self.samples.is_empty()
    }

    pub fn in_turn(&self) -> bool {
        self.in_turn
    }
}
