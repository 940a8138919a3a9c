//! DTMF both ways: the caller's keypresses become a turn, and `send_dtmf` plays in-band tones
//! (ITU-T Q.23 frequency pairs), which pass through every transport's audio path (linear PCM,
//! μ-law, A-law) without a signalling primitive.

use std::time::Duration;

use serde_json::{json, Value};

use crate::timer::Timer;
use crate::transfer::TransferState;
use crate::utterance::UtteranceKind;
use crate::Conversation;

/// Tone and gap length: 100 ms each, well above the 40 ms Q.24 minimum receivers accept.
const TONE_MS: u32 = 100;
const GAP_MS: u32 = 100;
/// Each of the two sines at about −9 dBFS, so their sum stays clear of clipping.
const AMPLITUDE: f32 = 0.35 * i16::MAX as f32;

pub fn is_dtmf(c: char) -> bool {
    c.is_ascii_digit() || matches!(c, '*' | '#' | 'A'..='D')
}

fn frequencies(c: char) -> Option<(f32, f32)> {
    let (row, col) = match c {
        '1' => (0, 0),
        '2' => (0, 1),
        '3' => (0, 2),
        'A' => (0, 3),
        '4' => (1, 0),
        '5' => (1, 1),
        '6' => (1, 2),
        'B' => (1, 3),
        '7' => (2, 0),
        '8' => (2, 1),
        '9' => (2, 2),
        'C' => (2, 3),
        '*' => (3, 0),
        '0' => (3, 1),
        '#' => (3, 2),
        'D' => (3, 3),
        _ => return None,
    };
    const ROWS: [f32; 4] = [697.0, 770.0, 852.0, 941.0];
    const COLS: [f32; 4] = [1209.0, 1336.0, 1477.0, 1633.0];
    Some((ROWS[row], COLS[col]))
}

/// PCM for `digits` at `sample_rate`: tone, gap, tone, gap, ... Unknown characters are skipped.
pub fn tones(digits: &str, sample_rate: u32) -> Vec<i16> {
    let tone = (sample_rate * TONE_MS / 1000) as usize;
    let gap = (sample_rate * GAP_MS / 1000) as usize;
    let mut out = Vec::with_capacity(digits.len() * (tone + gap));
    for (lo, hi) in digits.chars().filter_map(frequencies) {
        for n in 0..tone {
            let t = n as f32 / sample_rate as f32;
            let v = AMPLITUDE * ((std::f32::consts::TAU * lo * t).sin() + (std::f32::consts::TAU * hi * t).sin());
            out.push(v as i16);
        }
        out.extend(std::iter::repeat_n(0, gap));
    }
    out
}

/// Keys pressed since the last keypad turn.
#[derive(Debug, Default)]
pub(crate) struct Keypad {
    digits: String,
    started: Option<Duration>,
}

impl Keypad {
    pub(crate) fn is_empty(&self) -> bool {
        self.digits.is_empty()
    }
}

impl Conversation {
    pub(crate) fn on_dtmf(&mut self, now: Duration, digits: String) {
        let digits: String = digits.chars().filter(|c| is_dtmf(*c)).collect();
        if digits.is_empty() {
            return;
        }
        self.record.event("dtmf", now, json!({"digits": digits}));
        if matches!(self.transfer, TransferState::Idle)
            && !self.saying_goodbye
            && self.speech.front_interruptible()
            && !self.in_opening_guard(now)
        {
            // A keypress is deliberate: it interrupts like a high-intent phrase.
            self.interrupt(now, 0);
        }
        self.keys.started.get_or_insert(now);
        self.keys.digits.push_str(&digits);
        if self.keys.digits.ends_with('#') || self.keys.digits.len() >= 32 {
            self.close_dtmf_turn(now);
        } else {
            self.timers.set(Timer::Dtmf, now + self.cfg.dtmf_input_timeout);
        }
    }

    /// The keys pressed so far become a caller turn `[DTMF] 123`.
    pub(crate) fn close_dtmf_turn(&mut self, now: Duration) {
        self.timers.clear(Timer::Dtmf);
        let digits = std::mem::take(&mut self.keys.digits);
        let started = self.keys.started.take().unwrap_or(now);
        if digits.is_empty() || !matches!(self.transfer, TransferState::Idle) || self.saying_goodbye {
            return;
        }
        self.take_turn(now, format!("[DTMF] {digits}"), started, None);
    }

    /// `send_dtmf(digits)`: queue in-band tones (not interruptible) and tell the LLM.
    pub(crate) fn send_dtmf(&mut self, now: Duration, arguments: &str) -> String {
        let digits = serde_json::from_str::<Value>(arguments)
            .ok()
            .and_then(|v| v.get("digits").and_then(Value::as_str).map(str::to_string))
            .unwrap_or_default();
        let digits: String = digits.chars().filter(|c| is_dtmf(*c)).take(32).collect();
        if digits.is_empty() {
            return "error: no valid DTMF digits (0-9, *, #, A-D)".into();
        }
        self.record.event("dtmf_sent", now, json!({"digits": digits}));
        let id = self.new_utterance(UtteranceKind::Final);
        let pcm = tones(&digits, self.cfg.sample_rate);
        if let Some(u) = self.speech.get_mut(id) {
            u.received = pcm.len();
            u.audio.extend(pcm);
            u.flushed = true;
            u.tts_done = true;
        }
        format!("sent DTMF {digits}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Goertzel power of `freq` in `x`.
    fn power(x: &[i16], freq: f32, rate: u32) -> f32 {
        let k = 2.0 * (std::f32::consts::TAU * freq / rate as f32).cos();
        let (mut s1, mut s2) = (0.0f32, 0.0f32);
        for &v in x {
            let s = v as f32 + k * s1 - s2;
            s2 = s1;
            s1 = s;
        }
        s1 * s1 + s2 * s2 - k * s1 * s2
    }

    #[test]
    fn each_digit_carries_its_row_and_column_frequencies() {
        let pcm = tones("5#", 8000);
        assert_eq!(pcm.len(), 2 * 1600);
        let five = &pcm[..800];
        let p770 = power(five, 770.0, 8000);
        let p1336 = power(five, 1336.0, 8000);
        let p941 = power(five, 941.0, 8000);
        assert!(p770 > 100.0 * p941 && p1336 > 100.0 * p941, "{p770} {p1336} {p941}");
        assert!(pcm[800..1600].iter().all(|&v| v == 0), "gap is silent");
        let hash = &pcm[1600..2400];
        assert!(power(hash, 941.0, 8000) > 100.0 * power(hash, 770.0, 8000));
        assert!(tones("xyz", 8000).is_empty());
    }
}
