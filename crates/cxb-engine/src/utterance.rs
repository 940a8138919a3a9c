//! Bot utterances: text sent to TTS, the audio that comes back, and what the caller heard of it.

use std::collections::VecDeque;
use std::time::Duration;

use cxb_audio::pacing::Pacer;

use crate::barge_in::Pause;
use crate::timer::Timer;
use crate::{ms, Action, Conversation, WordTime};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum UtteranceKind {
    /// The opening message: guarded against line noise at pick-up.
    Opening,
    /// Interruptible speech: LLM replies, fillers, tool pre-messages, re-engagement prompts.
    Response,
    /// Not interruptible: voicemail message, transfer announcement, dead-air goodbye, DTMF
    /// tones, the `end_call` goodbye the engine asked for.
    Final,
}

#[derive(Debug)]
pub(crate) struct Utterance {
    pub(crate) id: u64,
    pub(crate) kind: UtteranceKind,
    pub(crate) text: String,
    pub(crate) flushed: bool,
    pub(crate) tts_done: bool,
    pub(crate) audio: VecDeque<i16>,
    pub(crate) received: usize,
    pub(crate) sent: usize,
    pub(crate) text_sent_at: Option<Duration>,
    /// TTS must answer the first text by then; cleared by the first audio.
    pub(crate) audio_due: Option<Duration>,
    /// When the LLM request this utterance speaks was made (responses only).
    pub(crate) llm_started_at: Option<Duration>,
    pub(crate) first_audio_at: Option<Duration>,
    pub(crate) words: Vec<WordTime>,
    /// Index into `record.latency` this utterance completes, for the first response audio.
    pub(crate) latency_sample: Option<usize>,
    /// [`Action::UtteranceDone`] was emitted.
    pub(crate) done_signalled: bool,
    /// The far end confirmed it played this utterance to its end.
    pub(crate) confirmed: bool,
}

impl Utterance {
    fn new(id: u64, kind: UtteranceKind) -> Self {
        Self {
            id,
            kind,
            text: String::new(),
            flushed: false,
            tts_done: false,
            audio: VecDeque::new(),
            received: 0,
            sent: 0,
            text_sent_at: None,
            audio_due: None,
            llm_started_at: None,
            first_audio_at: None,
            words: Vec::new(),
            latency_sample: None,
            done_signalled: false,
            confirmed: false,
        }
    }

    pub(crate) fn interruptible(&self) -> bool {
        self.kind != UtteranceKind::Final
    }

    pub(crate) fn finished_playing(&self) -> bool {
        self.flushed && self.tts_done && self.audio.is_empty()
    }

    /// Samples the caller has heard, given how far released audio runs ahead of real time.
    pub(crate) fn heard(&self, samples_ahead: usize) -> usize {
        if self.confirmed {
            self.sent
        } else {
            self.sent.saturating_sub(samples_ahead)
        }
    }

    /// The part of the text covered by the first `heard` samples: by TTS word timings when we
    /// have them, else proportionally by characters, cut back to a word boundary.
    pub(crate) fn heard_text(&self, heard: usize, sample_rate: u32) -> String {
        if heard == 0 {
            return String::new();
        }
        let heard_secs = heard as f32 / sample_rate.max(1) as f32;
        if !self.words.is_empty() {
            let n = self.words.iter().take_while(|w| w.start_secs < heard_secs).count();
            return self.text.split_whitespace().take(n).collect::<Vec<_>>().join(" ");
        }
        let total = if self.tts_done { self.received.max(1) } else { self.received.max(heard).max(1) };
        let frac = (heard as f64 / total as f64).min(1.0);
        let chars: Vec<char> = self.text.chars().collect();
        if frac >= 1.0 && self.tts_done {
            return self.text.clone();
        }
        let cut = (chars.len() as f64 * frac) as usize;
        let prefix: String = chars[..cut.min(chars.len())].iter().collect();
        // Only whole words the caller heard.
        let full_word_end = if cut < chars.len() && !chars[cut].is_whitespace() {
            prefix.rfind(char::is_whitespace).unwrap_or(0)
        } else {
            prefix.len()
        };
        prefix[..full_word_end].trim().to_string()
    }
}

/// Bot speech: utterances in playing order, their real-time pacing, and a pause for caller noise.
#[derive(Debug)]
pub(crate) struct Speech {
    pub(crate) queue: VecDeque<Utterance>,
    pub(crate) pacer: Pacer,
    /// When the current opening's first frame was played (for the opening guard).
    pub(crate) opening_started_at: Option<Duration>,
    /// Bot audio paused by caller speech that has not (yet) become words.
    pub(crate) paused: Option<Pause>,
}

impl Speech {
    pub(crate) fn new(pacer: Pacer) -> Self {
        Self { queue: VecDeque::new(), pacer, opening_started_at: None, paused: None }
    }

    pub(crate) fn get_mut(&mut self, id: u64) -> Option<&mut Utterance> {
        self.queue.iter_mut().find(|u| u.id == id)
    }

    /// Can the front utterance release a frame of `frame` samples now? A partial last frame
    /// waits until TTS is done with the utterance (then it is padded), so this never reports
    /// work it cannot do.
    pub(crate) fn front_has_audio(&self, frame: usize) -> bool {
        self.queue.front().is_some_and(|u| !u.audio.is_empty() && (u.audio.len() >= frame || (u.tts_done && u.flushed)))
    }

    /// Something audible is queued or playing (no dead air to cover).
    pub(crate) fn audible(&self) -> bool {
        self.queue.iter().any(|u| !u.text.is_empty() || !u.audio.is_empty())
    }

    pub(crate) fn front_interruptible(&self) -> bool {
        self.queue.front().is_some_and(Utterance::interruptible)
    }
}

impl Conversation {
    pub(crate) fn new_utterance(&mut self, kind: UtteranceKind) -> u64 {
        let id = self.fresh_id();
        self.speech.queue.push_back(Utterance::new(id, kind));
        id
    }

    pub(crate) fn insert_utterance_before(&mut self, before: u64, kind: UtteranceKind) -> u64 {
        let id = self.fresh_id();
        let queue = &mut self.speech.queue;
        let pos = queue.iter().position(|u| u.id == before).unwrap_or(queue.len());
        queue.insert(pos, Utterance::new(id, kind));
        id
    }

    /// A whole utterance of fixed text: queued, sent to TTS and flushed. Empty text says nothing.
    pub(crate) fn say(&mut self, now: Duration, kind: UtteranceKind, text: &str) {
        if text.trim().is_empty() {
            return;
        }
        let id = self.new_utterance(kind);
        self.speak(now, id, text);
        self.flush(id);
    }

    pub(crate) fn speak(&mut self, now: Duration, utterance: u64, text: &str) {
        let text = text.trim();
        if text.is_empty() {
            return;
        }
        self.record.tts_characters += text.chars().count() as u64;
        let audio_timeout = self.cfg.tts_first_audio_timeout;
        let Some(u) = self.speech.get_mut(utterance) else { return };
        if !u.text.is_empty() {
            u.text.push(' ');
        }
        u.text.push_str(text);
        if u.text_sent_at.is_none() {
            u.text_sent_at = Some(now);
            if u.received == 0 {
                u.audio_due = Some(now + audio_timeout);
            }
            if let (Some(i), Some(asked)) = (u.latency_sample, u.llm_started_at) {
                self.record.latency[i].llm_first_sentence_ms = Some(ms(now.saturating_sub(asked)));
            }
            self.arm_tts_timer();
        }
        self.actions.push_back(Action::Speak { utterance, text: text.to_string() });
    }

    pub(crate) fn flush(&mut self, utterance: u64) {
        if let Some(u) = self.speech.get_mut(utterance) {
            if !u.flushed {
                u.flushed = true;
                self.actions.push_back(Action::FlushSpeech { utterance });
            }
        }
    }

    /// An utterance that never got any text (a pure tool-call response) produces no audio.
    pub(crate) fn discard_if_silent(&mut self, utterance: u64) {
        let queue = &mut self.speech.queue;
        if let Some(pos) = queue.iter().position(|u| u.id == utterance && u.text.is_empty()) {
            let u = queue.remove(pos).expect("position is valid");
            // Keep the latency sample pointing at the next response.
            if let (Some(i), Some(round)) = (u.latency_sample, self.tool_round.as_mut()) {
                round.latency_sample = Some(i);
            }
        }
    }

    /// The TTS deadline is the oldest unanswered text's.
    pub(crate) fn arm_tts_timer(&mut self) {
        let due = self.speech.queue.iter().filter_map(|u| u.audio_due).min();
        self.timers.put(Timer::TtsFirstAudio, due);
    }

    pub(crate) fn on_tts_audio(&mut self, now: Duration, utterance: u64, pcm: Vec<i16>) {
        let Some(u) = self.speech.get_mut(utterance) else { return };
        if pcm.is_empty() {
            return;
        }
        let first = u.received == 0;
        if first {
            if let (Some(i), Some(sent)) = (u.latency_sample, u.text_sent_at) {
                self.record.latency[i].tts_ttfb_ms = Some(ms(now.saturating_sub(sent)));
            }
        }
        let u = self.speech.get_mut(utterance).expect("checked above");
        u.received += pcm.len();
        u.audio.extend(pcm);
        if first {
            u.audio_due = None;
            self.arm_tts_timer();
        }
    }

    pub(crate) fn on_tts_words(&mut self, utterance: u64, words: Vec<WordTime>) {
        if let Some(u) = self.speech.get_mut(utterance) {
            u.words.extend(words);
        }
    }

    pub(crate) fn on_tts_done(&mut self, now: Duration, utterance: u64) {
        if let Some(u) = self.speech.get_mut(utterance) {
            u.tts_done = true;
        }
        self.after_playout_change(now);
    }

    pub(crate) fn on_playback_confirmed(&mut self, utterance: u64) {
        if let Some(u) = self.speech.get_mut(utterance) {
            u.confirmed = true;
        }
    }
}
