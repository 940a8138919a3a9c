//! Silence: re-engagement prompts, then RNR (the caller never spoke) or dead air (they did).

use std::time::Duration;

use cxb_wire::llm::ChatMessage;
use cxb_wire::result::DisconnectedBy;
use serde_json::json;

use crate::timer::Timer;
use crate::utterance::UtteranceKind;
use crate::{ms, Conversation};

#[derive(Debug, Default)]
pub(crate) struct Silence {
    /// Since when neither side has held the floor.
    since: Option<Duration>,
    /// Prompts said since the caller last spoke.
    pub(crate) reengage_attempts: u32,
}

impl Conversation {
    /// Is nobody holding the floor? Then the silence clock runs, and its deadline is set once.
    pub(crate) fn refresh_silence(&mut self, now: Duration) {
        let idle = self.started
            && self.ended.is_none()
            && !self.bot_active()
            && !self.vad_speaking
            && self.user.started_at.is_none()
            && self.user.is_empty()
            && self.keys.is_empty()
            && self.end_after_speech.is_none();
        if !idle {
            if self.silence.since.take().is_some() {
                self.timers.clear(Timer::Silence);
            }
        } else if self.silence.since.is_none() {
            self.silence.since = Some(now);
            let due = self.silence_deadline(now);
            self.timers.put(Timer::Silence, due);
        }
    }

    /// The next re-engagement prompt, else the RNR or dead-air limit (0: off).
    fn silence_deadline(&self, since: Duration) -> Option<Duration> {
        if let Some(re) = &self.cfg.re_engagement {
            if self.silence.reengage_attempts < re.max_attempts {
                return Some(since + re.after);
            }
        }
        let limit = if self.record.customer_spoke { self.cfg.dead_air_timeout } else { self.cfg.rnr_timeout };
        (!limit.is_zero()).then_some(since + limit)
    }

    pub(crate) fn on_silence(&mut self, now: Duration) {
        let silent_ms = self.silence.since.take().map(|s| ms(now.saturating_sub(s)));
        if let Some(re) = self.cfg.re_engagement.clone() {
            if self.silence.reengage_attempts < re.max_attempts {
                let i = (self.silence.reengage_attempts as usize).min(re.messages.len().saturating_sub(1));
                let Some(message) = re.messages.get(i).cloned() else { return };
                self.silence.reengage_attempts += 1;
                self.record.event(
                    "re_engagement",
                    now,
                    json!({"attempt": self.silence.reengage_attempts, "message": message, "silence_ms": silent_ms}),
                );
                self.say(now, UtteranceKind::Response, &message);
                self.messages.push(ChatMessage::Assistant { content: Some(message), tool_calls: vec![] });
                return;
            }
        }
        if self.record.customer_spoke {
            self.record.event("dead_air", now, json!({"silence_ms": silent_ms}));
            let message = self.cfg.dead_air_message.clone();
            if message.trim().is_empty() {
                self.end(now, DisconnectedBy::Bot, true);
            } else {
                self.say(now, UtteranceKind::Final, &message);
                self.end_after_speech = Some(DisconnectedBy::Bot);
            }
        } else {
            self.record.event("no_response", now, json!({"silence_ms": silent_ms}));
            self.end(now, DisconnectedBy::Rnr, true);
        }
    }
}
