//! Fillers: a phrase (or a slow tool's own pre-message) when the LLM or a tool keeps the caller
//! waiting in silence.

use std::time::Duration;

use serde_json::json;

use crate::timer::Timer;
use crate::utterance::UtteranceKind;
use crate::Conversation;

impl Conversation {
    /// When a wait that starts now deserves a filler (`None`: no filler phrases).
    pub(crate) fn filler_due(&self, now: Duration) -> Option<Duration> {
        (!self.cfg.filler_phrases.is_empty()).then(|| now + self.cfg.filler_after)
    }

    /// The filler timer is the earliest announcement the LLM turn or the tool round has due.
    pub(crate) fn arm_filler_timer(&mut self) {
        let llm = self.llm.as_ref().and_then(|l| l.filler_at);
        let round = self.tool_round.as_ref().and_then(|r| r.next_announcement_at());
        self.timers.put(Timer::Filler, llm.into_iter().chain(round).min());
    }

    fn next_filler(&mut self) -> String {
        let phrase = self.cfg.filler_phrases[self.filler_next % self.cfg.filler_phrases.len()].clone();
        self.filler_next += 1;
        phrase
    }

    /// Say what is due, unless the bot is audible anyway (then there is no dead air to cover).
    pub(crate) fn speak_fillers(&mut self, now: Duration) {
        if let Some(llm) = self.llm.as_mut().filter(|l| l.filler_at.is_some_and(|at| at <= now)) {
            llm.filler_at = None;
            let before = llm.utterance;
            if !self.speech.audible() {
                let phrase = self.next_filler();
                self.record.event("filler", now, json!({"text": phrase, "waiting_for": "llm"}));
                // Ahead of the answer it covers for.
                let id = self.insert_utterance_before(before, UtteranceKind::Response);
                self.speak(now, id, &phrase);
                self.flush(id);
            }
        }
        if let Some(round) = self.tool_round.as_mut() {
            let due = round.take_due(now);
            if !self.speech.audible() {
                let mut to_say = due.pre_messages;
                if due.filler {
                    to_say.push((self.next_filler(), String::new()));
                }
                for (text, tool) in to_say {
                    let kind = if tool.is_empty() { "filler" } else { "tool_pre_message" };
                    self.record.event(kind, now, json!({"text": text, "tool": tool}));
                    self.say(now, UtteranceKind::Response, &text);
                }
            }
        }
        self.arm_filler_timer();
    }
}
