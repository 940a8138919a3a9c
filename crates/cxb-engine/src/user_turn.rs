//! The caller's turn: VAD and STT results accumulate until the turn closes and the LLM answers.

use std::time::Duration;

use cxb_wire::llm::ChatMessage;
use cxb_wire::result::Speaker;
use serde_json::json;

use crate::timer::Timer;
use crate::transfer::TransferState;
use crate::{behaviour, ms, Action, Conversation, LatencySample, TranscriptLine};

/// What the caller has said since the last turn closed.
#[derive(Debug, Default)]
pub(crate) struct UserTurn {
    pub(crate) started_at: Option<Duration>,
    finals: String,
    interim: String,
    vad_stopped_at: Option<Duration>,
    finalize_sent: bool,
    end_signalled: bool,
    /// The close was already postponed once because the words looked unfinished.
    unfinished_extended: bool,
    /// Waiting for the turn model's verdict before closing.
    awaiting_turn_model: bool,
}

impl UserTurn {
    pub(crate) fn text(&self) -> String {
        let mut t = self.finals.trim().to_string();
        let interim = self.interim.trim();
        if !interim.is_empty() {
            if !t.is_empty() {
                t.push(' ');
            }
            t.push_str(interim);
        }
        t
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.finals.trim().is_empty() && self.interim.trim().is_empty()
    }
}

/// Words as the interruption rule counts them.
pub fn word_count(text: &str) -> usize {
    text.split_whitespace().filter(|w| w.chars().any(char::is_alphanumeric)).count()
}

impl Conversation {
    pub(crate) fn on_speech_started(&mut self, now: Duration) {
        self.vad_speaking = true;
        self.user.vad_stopped_at = None;
        self.timers.clear(Timer::SttFinal);
        self.user.finalize_sent = false;
        self.user.unfinished_extended = false;
        self.user.awaiting_turn_model = false;
        if self.user.started_at.is_none() {
            self.user.started_at = Some(now);
        }
        self.pause_for_speech(now);
    }

    pub(crate) fn on_speech_stopped(&mut self, now: Duration) {
        self.vad_speaking = false;
        self.user.vad_stopped_at = Some(now);
        if let Some(max_wait) = self.cfg.turn_model_max_wait {
            // Smart turn: the model decides; the wait is bounded either way.
            self.user.awaiting_turn_model = true;
            self.timers.set(Timer::SttFinal, now + max_wait);
            self.actions.push_back(Action::PredictTurn);
            return;
        }
        self.close_at_speech_stop(now);
    }

    pub(crate) fn on_turn_prediction(&mut self, now: Duration, complete: bool) {
        if !self.user.awaiting_turn_model || self.vad_speaking {
            return;
        }
        self.record.event("turn_prediction", now, json!({"complete": complete}));
        if complete {
            self.user.awaiting_turn_model = false;
            self.close_at_speech_stop(now);
        }
        // Incomplete: keep listening until the caller goes on or the bounded wait ends.
    }

    /// VAD says the caller stopped (and the turn model, if any, agrees): close the turn now, or
    /// wait a bounded time for the STT to catch up.
    fn close_at_speech_stop(&mut self, now: Duration) {
        let words = !self.user.is_empty();
        if words && (self.user.interim.trim().is_empty() || self.user.end_signalled) {
            self.try_close_user_turn(now);
            return;
        }
        if words && !self.user.finalize_sent {
            // Words are still pending as an interim result: ask STT to finalize them now.
            self.user.finalize_sent = true;
            self.actions.push_back(Action::FinalizeStt);
        }
        // No words yet, or only an interim: wait a bounded time for the STT to catch up.
        self.timers.set(Timer::SttFinal, now + self.cfg.stt_final_wait);
    }

    pub(crate) fn on_transcript(&mut self, now: Duration, text: String, is_final: bool, speech_final: bool) {
        let text = text.trim();
        if self.user.started_at.is_none() && !text.is_empty() {
            self.user.started_at = Some(now);
        }
        if is_final {
            if !text.is_empty() {
                if !self.user.finals.is_empty() {
                    self.user.finals.push(' ');
                }
                self.user.finals.push_str(text);
            }
            self.user.interim.clear();
        } else {
            self.user.interim = text.to_string();
        }
        self.arm_pause_timer();
        if !text.is_empty() {
            self.maybe_interrupt(now);
        }
        if speech_final {
            self.user.end_signalled = true;
        }
        let final_in_hand = is_final && !self.user.finals.is_empty();
        if final_in_hand
            && !self.vad_speaking
            && !self.user.awaiting_turn_model
            && (self.user.vad_stopped_at.is_some() || speech_final)
        {
            self.try_close_user_turn(now);
        }
    }

    pub(crate) fn on_utterance_end(&mut self, now: Duration) {
        self.user.end_signalled = true;
        if !self.vad_speaking && !self.user.is_empty() && !self.user.awaiting_turn_model {
            self.try_close_user_turn(now);
        }
    }

    /// Close the caller's turn — unless the words so far look like a number or an e-mail being
    /// spelled out, in which case wait (once per pause) for the caller to go on.
    fn try_close_user_turn(&mut self, now: Duration) {
        if !self.user.unfinished_extended
            && !self.cfg.unfinished_wait.is_zero()
            && behaviour::looks_unfinished(&self.user.text())
        {
            self.user.unfinished_extended = true;
            self.timers.set(Timer::SttFinal, now + self.cfg.unfinished_wait);
            return;
        }
        self.close_user_turn(now);
    }

    pub(crate) fn close_user_turn(&mut self, now: Duration) {
        let turn = std::mem::take(&mut self.user);
        self.timers.clear(Timer::SttFinal);
        self.arm_pause_timer();
        let text = turn.text();
        if text.is_empty() {
            return;
        }
        if !matches!(self.transfer, TransferState::Idle) {
            // The caller is being handed over; the bot no longer answers.
            self.record.event("ignored_speech", now, json!({"text": text, "why": "transfer"}));
            return;
        }
        if self.saying_goodbye
            || (self.end_after_speech.is_some() && self.speech.queue.iter().any(|u| !u.interruptible()))
        {
            // A voicemail message or a last goodbye is playing; the call ends after it.
            self.record.event("ignored_speech", now, json!({"text": text, "why": "ending"}));
            return;
        }
        let words = word_count(&text);
        let tokens = behaviour::tokens(&text);
        let high_intent = self.cfg.high_intent.occurs_in(&tokens);
        if self.bot_active()
            && !high_intent
            && (words < self.cfg.min_words_interruption.max(1) as usize || self.cfg.backchannels.covers(&tokens))
        {
            // A short utterance or a backchannel while the bot holds the floor is not a turn.
            self.record.event("ignored_speech", now, json!({"text": text}));
            self.resume_after_false_interruption(now);
            return;
        }
        self.take_turn(now, text, turn.started_at.unwrap_or(now), turn.vad_stopped_at);
    }

    /// The caller's words (or keypresses) become a turn the LLM answers.
    pub(crate) fn take_turn(
        &mut self,
        now: Duration,
        text: String,
        started: Duration,
        vad_stopped_at: Option<Duration>,
    ) {
        self.unpause();
        self.silence.reengage_attempts = 0;
        // Enough words but the interruption was blocked (opening guard): the caller still gets
        // an answer once the bot finishes; cancel only pending thinking.
        self.cancel_llm();
        self.record.customer_spoke = true;
        self.record.transcript.push(TranscriptLine {
            speaker: Speaker::Customer,
            text: text.clone(),
            at: started,
            interrupted: false,
        });
        match self.messages.last_mut() {
            Some(ChatMessage::User(prev)) => {
                prev.push(' ');
                prev.push_str(&text);
            }
            _ => self.messages.push(ChatMessage::User(text)),
        }
        self.turns += 1;
        let vad_stop = vad_stopped_at.unwrap_or(now);
        let speech_end = match vad_stopped_at {
            Some(t) => t.saturating_sub(self.cfg.vad_stop_hangover),
            None => now,
        };
        let sample = LatencySample {
            turn: self.turns,
            stt_final_delay_ms: ms(now.saturating_sub(vad_stop)),
            ..Default::default()
        };
        self.record.latency.push(sample);
        let idx = self.record.latency.len() - 1;
        self.pending_speech_end = Some((idx, speech_end));
        self.start_llm(now, Some(idx));
    }
}
