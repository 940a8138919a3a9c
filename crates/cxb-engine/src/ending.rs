//! How a call ends: the `end_call` goodbye, voicemail, failures, and the final bookkeeping.
//!
//! Most models call `end_call` with no `final_message` and no text of their own (the vendors'
//! function-calling examples do the same), so a bare `end_call` would drop the line on the
//! caller mid-silence. The engine then answers the tool call (`GOODBYE_REQUEST`) and asks the LLM
//! once more for the goodbye, with the same tools offered — Anthropic and Bedrock reject a
//! request whose history holds tool calls but that defines no tools
//! (anthropics/anthropic-sdk-python#494) — and any tool call in that answer ignored, so it cannot
//! loop. If that answer fails, times out or is empty, the bot's `end_call_message` is spoken.
//! Either goodbye cannot be interrupted, and the hang-up waits until it has been heard.

use std::time::Duration;

use cxb_wire::llm::{ChatMessage, ToolCall};
use cxb_wire::result::{DisconnectedBy, Speaker};
use serde_json::{json, Value};

use crate::llm_turn::LlmTurn;
use crate::utterance::{Utterance, UtteranceKind};
use crate::{Action, Conversation, Service, TranscriptLine};

/// The tool result a bare `end_call` gets: it asks for words, not another call.
pub(crate) const GOODBYE_REQUEST: &str =
    "ok: the call will end right after your goodbye. Reply now with only a short spoken goodbye to the \
     caller (one sentence) and do not call any tool.";

/// Where the words the caller hears before an `end_call` hang-up came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum GoodbyeSource {
    /// The tool call's `final_message` argument.
    FinalMessage,
    /// Text the LLM said in the turn that called `end_call`.
    Reply,
    /// The LLM's answer when asked for a goodbye after a bare `end_call`.
    LlmFollowUp,
    /// The bot config's `end_call_message`, when that answer did not come.
    EndCallMessage,
}

impl GoodbyeSource {
    fn as_str(self) -> &'static str {
        match self {
            GoodbyeSource::FinalMessage => "final_message",
            GoodbyeSource::Reply => "reply",
            GoodbyeSource::LlmFollowUp => "llm_follow_up",
            GoodbyeSource::EndCallMessage => "end_call_message",
        }
    }
}

impl Conversation {
    /// `end_call(final_message?)`: the caller hears a goodbye, then the bot hangs up.
    pub(crate) fn on_end_call(&mut self, now: Duration, llm: &LlmTurn, content: Option<String>, end: ToolCall) {
        let final_message = serde_json::from_str::<Value>(&end.arguments)
            .ok()
            .and_then(|v| v.get("final_message").and_then(Value::as_str).map(str::to_string))
            .filter(|s| !s.trim().is_empty());
        if let Some(m) = &final_message {
            self.speak(now, llm.utterance, m);
        }
        self.flush(llm.utterance);
        let source = match (&final_message, &content) {
            (Some(_), _) => Some(GoodbyeSource::FinalMessage),
            (None, Some(_)) => Some(GoodbyeSource::Reply),
            (None, None) => None,
        };
        let spoken = [content, final_message].into_iter().flatten().collect::<Vec<_>>().join(" ");
        let end_id = end.id.clone();
        self.messages
            .push(ChatMessage::Assistant { content: Some(spoken).filter(|s| !s.is_empty()), tool_calls: vec![end] });
        self.discard_if_silent(llm.utterance);
        self.end_after_speech = Some(DisconnectedBy::Bot);
        match source {
            Some(source) => self.goodbye_event(now, source, None),
            None => {
                // Nothing to say yet: ask for the goodbye; from here on the caller cannot stop it.
                self.messages.push(ChatMessage::Tool { tool_call_id: end_id, content: GOODBYE_REQUEST.into() });
                self.saying_goodbye = true;
                self.start_llm_turn(now, llm.latency_sample, true);
            }
        }
        self.after_playout_change(now);
    }

    /// The LLM answered the request for a goodbye: speak it, or the fallback if it said nothing.
    pub(crate) fn on_goodbye_reply(
        &mut self,
        now: Duration,
        llm: &LlmTurn,
        content: Option<String>,
        called_tools: bool,
    ) {
        match content {
            Some(text) => {
                self.flush(llm.utterance);
                self.messages.push(ChatMessage::Assistant { content: Some(text), tool_calls: vec![] });
                self.goodbye_event(now, GoodbyeSource::LlmFollowUp, None);
            }
            None => {
                self.discard_if_silent(llm.utterance);
                let why = if called_tools { "a tool call instead of words" } else { "an empty answer" };
                self.say_end_call_message(now, why);
            }
        }
        self.after_playout_change(now);
    }

    /// The request for a goodbye failed or timed out: whatever it said plays, then the fallback.
    pub(crate) fn goodbye_reply_failed(&mut self, now: Duration, error: String) {
        let Some(llm) = self.cancel_llm() else { return };
        self.flush(llm.utterance);
        self.discard_if_silent(llm.utterance);
        self.say_end_call_message(now, &error);
        self.after_playout_change(now);
    }

    fn say_end_call_message(&mut self, now: Duration, why: &str) {
        self.goodbye_event(now, GoodbyeSource::EndCallMessage, Some(why));
        let message = self.cfg.end_call_message.clone();
        self.say(now, UtteranceKind::Final, &message);
    }

    fn goodbye_event(&mut self, now: Duration, source: GoodbyeSource, why: Option<&str>) {
        let mut data = json!({"source": source.as_str()});
        if let Some(why) = why {
            data["why"] = Value::String(why.to_string());
        }
        self.record.event("end_call_goodbye", now, data);
    }

    /// `detected_voicemail()`: leave the message (not interruptible), then hang up.
    pub(crate) fn on_voicemail(&mut self, now: Duration, content: Option<String>, call: ToolCall) {
        self.record.event("voicemail_detected", now, Value::Null);
        self.messages.push(ChatMessage::Assistant { content, tool_calls: vec![call] });
        let message = self.cfg.voicemail_message.clone();
        self.say(now, UtteranceKind::Final, &message);
        self.end_after_speech = Some(DisconnectedBy::Voicemail);
        self.after_playout_change(now);
    }

    pub(crate) fn fail(&mut self, now: Duration, service: Service, error: String) {
        self.record.event("service_error", now, json!({"service": service.as_str(), "error": error}));
        self.end(now, DisconnectedBy::Error, true);
    }

    /// The worker is stopping (drain deadline): end as `error` with a hang-up.
    pub(crate) fn shut_down(&mut self, now: Duration) {
        self.record.event("worker_shutdown", now, Value::Null);
        self.end(now, DisconnectedBy::Error, true);
    }

    /// The call is over: whatever was playing is cut, and the transcript keeps what was heard.
    pub(crate) fn end(&mut self, now: Duration, reason: DisconnectedBy, hang_up: bool) {
        if self.ended.is_some() {
            return;
        }
        self.cancel_llm();
        let ahead = self.speech.pacer.samples_ahead(now);
        let drained: Vec<Utterance> = self.speech.queue.drain(..).collect();
        if let Some(u) = drained.first().filter(|u| u.sent > 0) {
            let heard = u.heard(ahead);
            let complete = u.finished_playing() && heard >= u.sent;
            let text = if complete { u.text.clone() } else { u.heard_text(heard, self.cfg.sample_rate) };
            if !text.is_empty() {
                self.record.transcript.push(TranscriptLine {
                    speaker: Speaker::Bot,
                    text,
                    at: u.first_audio_at.unwrap_or(now),
                    interrupted: !complete,
                });
            }
        }
        self.record.event("call_ended", now, json!({"disconnected_by": reason.as_str()}));
        self.ended = Some(reason);
        self.timers.clear_all();
        self.actions.push_back(Action::End { disconnected_by: reason, hang_up });
    }
}
