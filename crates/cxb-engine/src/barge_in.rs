//! Barge-in: when caller speech stops the bot, and what the bot keeps of what it was saying.

use std::time::Duration;

use cxb_wire::llm::ChatMessage;
use cxb_wire::result::Speaker;
use serde_json::{json, Value};

use crate::timer::Timer;
use crate::transfer::TransferState;
use crate::utterance::{Utterance, UtteranceKind};
use crate::{behaviour, ms, word_count, Action, Conversation, TranscriptLine};

/// Bot audio held back because the caller made a sound (`pause_on_speech`).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Pause {
    since: Duration,
    /// Resume then if the sound has not become words.
    resume_at: Duration,
}

impl Conversation {
    /// VAD heard the caller: with `pause_on_speech`, stop releasing bot audio at once; words
    /// will decide between barge-in and resuming.
    pub(crate) fn pause_for_speech(&mut self, now: Duration) {
        if self.cfg.pause_on_speech
            && self.speech.paused.is_none()
            && !self.saying_goodbye
            && self.speech.pacer.is_active()
            && self.speech.queue.front().is_some_and(|u| u.interruptible() && u.sent > 0)
            && !self.in_opening_guard(now)
        {
            self.speech.paused = Some(Pause { since: now, resume_at: now + self.cfg.false_interruption_timeout });
            self.record.event("bot_paused", now, Value::Null);
            self.arm_pause_timer();
        }
    }

    /// The pause ends on its own only while the caller's sound has no words.
    pub(crate) fn arm_pause_timer(&mut self) {
        let due = self.speech.paused.filter(|_| word_count(&self.user.text()) == 0).map(|p| p.resume_at);
        self.timers.put(Timer::FalseInterruption, due);
    }

    pub(crate) fn unpause(&mut self) {
        self.speech.paused = None;
        self.timers.clear(Timer::FalseInterruption);
    }

    /// The caller's sound was not a turn: play on.
    pub(crate) fn resume_after_false_interruption(&mut self, now: Duration) {
        if let Some(p) = self.speech.paused {
            self.record.event("false_interruption", now, json!({"paused_ms": ms(now.saturating_sub(p.since))}));
        }
        self.unpause();
    }

    /// Barge-in rule: while the bot holds the floor, caller speech of at least
    /// `min_words_interruption` words interrupts it — except during the opening guard.
    ///
    /// Backchannels ("haan", "hmm", "okay") never interrupt; high-intent phrases ("wrong number",
    /// "already paid") interrupt at once, past the word minimum and the opening guard. Nothing
    /// interrupts a voicemail message, a transfer announcement, DTMF tones or the goodbye the
    /// engine asked for after `end_call`.
    pub(crate) fn maybe_interrupt(&mut self, now: Duration) {
        if !self.bot_active() || !matches!(self.transfer, TransferState::Idle) || self.saying_goodbye {
            return;
        }
        if self.speech.queue.front().is_some_and(|u| !u.interruptible()) {
            return;
        }
        let text = self.user.text();
        let tokens = behaviour::tokens(&text);
        let words = word_count(&text);
        let high_intent = self.cfg.high_intent.occurs_in(&tokens);
        if !high_intent {
            if self.cfg.backchannels.covers(&tokens) || words < self.cfg.min_words_interruption.max(1) as usize {
                return;
            }
            if self.in_opening_guard(now) {
                return;
            }
        }
        if high_intent {
            self.record.event("high_intent", now, json!({"text": text}));
        }
        self.interrupt(now, words);
    }

    pub(crate) fn in_opening_guard(&self, now: Duration) -> bool {
        let Some(front) = self.speech.queue.front() else { return false };
        if front.kind != UtteranceKind::Opening {
            return false;
        }
        match self.speech.opening_started_at {
            None => true,
            Some(t) => now < t + self.cfg.opening_guard,
        }
    }

    /// Stop the bot: cancel its thinking and speech, clear the transport's audio, and keep in
    /// the transcript and the LLM context only what the caller heard.
    pub(crate) fn interrupt(&mut self, now: Duration, words: usize) {
        self.unpause();
        if let Some(llm) = self.cancel_llm() {
            // The LLM text never reached the caller beyond what was played (handled below).
            if let Some(u) = self.speech.get_mut(llm.utterance) {
                u.flushed = true;
            }
        }
        self.drop_tool_round();
        let heard_ahead = self.speech.pacer.samples_ahead(now);
        let mut spoken_texts = Vec::new();
        let mut cleared = false;
        let drained: Vec<Utterance> = self.speech.queue.drain(..).collect();
        for (i, u) in drained.into_iter().enumerate() {
            if !u.tts_done || !u.flushed {
                self.actions.push_back(Action::CancelSpeech { utterance: u.id });
            }
            if i == 0 && u.sent > 0 {
                let heard = u.heard(heard_ahead);
                let text = if u.confirmed && u.finished_playing() {
                    u.text.clone()
                } else {
                    u.heard_text(heard, self.cfg.sample_rate)
                };
                if !u.audio.is_empty() || heard < u.sent || !u.tts_done {
                    cleared = true;
                }
                spoken_texts.push((u.first_audio_at.unwrap_or(now), text));
            }
        }
        if cleared || self.speech.pacer.is_active() {
            self.actions.push_back(Action::ClearAudio);
        }
        self.speech.pacer.stop();
        self.speech.opening_started_at = None;
        self.arm_tts_timer();
        // The context keeps only what the caller heard.
        let heard: String = spoken_texts.iter().map(|(_, t)| t.as_str()).collect::<Vec<_>>().join(" ");
        self.rewrite_last_assistant(&heard);
        for (at, text) in spoken_texts {
            if !text.is_empty() {
                self.record.transcript.push(TranscriptLine { speaker: Speaker::Bot, text, at, interrupted: true });
            }
        }
        self.end_after_speech = None;
        self.record.event("interruption", now, json!({"words": words}));
    }

    /// Replace the trailing assistant message (or add one) with what was actually heard.
    fn rewrite_last_assistant(&mut self, heard: &str) {
        let heard = heard.trim();
        match self.messages.last_mut() {
            Some(ChatMessage::Assistant { content, tool_calls }) if tool_calls.is_empty() => {
                if heard.is_empty() {
                    self.messages.pop();
                } else {
                    *content = Some(heard.to_string());
                }
            }
            _ => {
                if !heard.is_empty() {
                    self.messages.push(ChatMessage::Assistant { content: Some(heard.to_string()), tool_calls: vec![] });
                }
            }
        }
    }
}
