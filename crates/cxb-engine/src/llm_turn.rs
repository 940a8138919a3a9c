//! An LLM request and its streamed answer: text spoken sentence by sentence as it arrives, then
//! the tool calls it made.

use std::time::Duration;

use cxb_wire::llm::{ChatMessage, ToolCall, Usage};
use cxb_wire::result::DisconnectedBy;
use serde_json::{json, Value};

use crate::sentences::SentenceSplitter;
use crate::timer::Timer;
use crate::tools::{END_CALL_TOOL, TRANSFER_TOOL, VOICEMAIL_TOOL};
use crate::utterance::UtteranceKind;
use crate::{behaviour, ms, Action, Conversation, Service};

#[derive(Debug)]
pub(crate) struct LlmTurn {
    pub(crate) id: u64,
    started_at: Duration,
    first_token_at: Option<Duration>,
    /// The utterance the answer's text goes to.
    pub(crate) utterance: u64,
    splitter: SentenceSplitter,
    text: String,
    tool_calls: Vec<ToolCall>,
    pub(crate) latency_sample: Option<usize>,
    /// Say a filler then unless the LLM has answered; `None` once said, moot or not wanted.
    pub(crate) filler_at: Option<Duration>,
    /// This request asks for the goodbye after a bare `end_call`: its tool calls are ignored
    /// and a failure falls back to the bot's `end_call_message`.
    pub(crate) goodbye: bool,
}

impl Conversation {
    pub(crate) fn start_llm(&mut self, now: Duration, latency_sample: Option<usize>) {
        self.start_llm_turn(now, latency_sample, false);
    }

    /// Ask the LLM with the context so far; its answer is spoken as a new utterance (one the
    /// caller cannot interrupt when it is the goodbye).
    pub(crate) fn start_llm_turn(&mut self, now: Duration, latency_sample: Option<usize>, goodbye: bool) {
        let id = self.fresh_id();
        let utterance = self.new_utterance(if goodbye { UtteranceKind::Final } else { UtteranceKind::Response });
        if let Some(u) = self.speech.get_mut(utterance) {
            u.latency_sample = latency_sample;
            u.llm_started_at = Some(now);
        }
        self.record.llm_requests += 1;
        self.actions.push_back(Action::StartLlm {
            turn: id,
            messages: self.messages.clone(),
            tools: self.tools.clone(),
        });
        let filler_at = if goodbye { None } else { self.filler_due(now) };
        self.llm = Some(LlmTurn {
            id,
            started_at: now,
            first_token_at: None,
            utterance,
            splitter: SentenceSplitter::default(),
            text: String::new(),
            tool_calls: vec![],
            latency_sample,
            filler_at,
            goodbye,
        });
        self.timers.set(Timer::LlmFirstToken, now + self.cfg.llm_first_token_timeout);
        self.arm_filler_timer();
    }

    /// The current LLM turn, gone: its timers go with it.
    fn take_llm(&mut self) -> Option<LlmTurn> {
        let llm = self.llm.take()?;
        self.timers.clear(Timer::LlmFirstToken);
        self.arm_filler_timer();
        Some(llm)
    }

    /// Stop the current LLM turn, if any, and tell the driver to drop its stream.
    pub(crate) fn cancel_llm(&mut self) -> Option<LlmTurn> {
        let llm = self.take_llm()?;
        self.actions.push_back(Action::CancelLlm { turn: llm.id });
        Some(llm)
    }

    pub(crate) fn on_llm_token(&mut self, now: Duration, turn: u64, text: String) {
        self.mark_first_token(now, turn);
        let Some(llm) = self.llm.as_mut().filter(|l| l.id == turn) else { return };
        llm.text.push_str(&text);
        let pieces = llm.splitter.push(&text);
        let utterance = llm.utterance;
        for p in pieces {
            self.speak(now, utterance, &p);
        }
    }

    pub(crate) fn on_llm_tool_calls(&mut self, now: Duration, turn: u64, calls: Vec<ToolCall>) {
        if let Some(llm) = self.llm.as_mut().filter(|l| l.id == turn) {
            llm.tool_calls.extend(calls);
        }
        self.mark_first_token(now, turn);
    }

    fn mark_first_token(&mut self, now: Duration, turn: u64) {
        let Some(llm) = self.llm.as_mut().filter(|l| l.id == turn) else { return };
        if llm.first_token_at.is_some() {
            return;
        }
        llm.first_token_at = Some(now);
        llm.filler_at = None;
        if let Some(i) = llm.latency_sample {
            self.record.latency[i].llm_ttft_ms = Some(ms(now.saturating_sub(llm.started_at)));
        }
        self.timers.clear(Timer::LlmFirstToken);
        self.arm_filler_timer();
    }

    pub(crate) fn on_llm_failed(&mut self, now: Duration, turn: u64, error: String) {
        match &self.llm {
            Some(l) if l.id == turn && l.goodbye => self.goodbye_reply_failed(now, error),
            Some(l) if l.id == turn => self.fail(now, Service::Llm, error),
            _ => {}
        }
    }

    pub(crate) fn on_llm_first_token_timeout(&mut self, now: Duration) {
        let Some(llm) = &self.llm else { return };
        let error = format!("no response within {} ms", self.cfg.llm_first_token_timeout.as_millis());
        if llm.goodbye {
            self.goodbye_reply_failed(now, error);
        } else {
            self.fail(now, Service::Llm, error);
        }
    }

    pub(crate) fn on_llm_done(&mut self, now: Duration, turn: u64, usage: Option<Usage>) {
        if self.llm.as_ref().is_none_or(|l| l.id != turn) {
            return;
        }
        let Some(mut llm) = self.take_llm() else { return };
        if let Some(u) = usage {
            self.record.add_usage(&u);
        }
        if let Some(tail) = llm.splitter.finish() {
            self.speak(now, llm.utterance, &tail);
        }
        let content = Some(llm.text.trim().to_string()).filter(|t| !t.is_empty());
        let calls = std::mem::take(&mut llm.tool_calls);
        if llm.goodbye {
            self.on_goodbye_reply(now, &llm, content, !calls.is_empty());
            return;
        }
        if calls.is_empty() {
            self.flush(llm.utterance);
            let closing = content
                .as_deref()
                .is_some_and(|t| self.cfg.closure_phrases.occurs_in(&behaviour::tokens(behaviour::last_sentence(t))));
            self.messages.push(ChatMessage::Assistant { content, tool_calls: vec![] });
            self.discard_if_silent(llm.utterance);
            if closing {
                self.record.event("closure_phrase", now, Value::Null);
                self.end_after_speech = Some(DisconnectedBy::Bot);
                self.after_playout_change(now);
            }
            return;
        }
        for c in &calls {
            self.record.event(
                "tool_call",
                now,
                json!({"tool_call_id": c.id, "name": c.name, "arguments": c.arguments}),
            );
        }
        if let Some(end) = calls.iter().find(|c| c.name == END_CALL_TOOL) {
            self.on_end_call(now, &llm, content, end.clone());
            return;
        }
        self.flush(llm.utterance);
        self.discard_if_silent(llm.utterance);
        if let Some(vm) = calls.iter().find(|c| c.name == VOICEMAIL_TOOL) {
            self.on_voicemail(now, content, vm.clone());
            return;
        }
        if let Some(i) = calls.iter().position(|c| c.name == TRANSFER_TOOL) {
            self.start_transfer(now, content, calls, i);
            return;
        }
        self.start_tool_round(now, content, calls, llm.latency_sample);
    }
}
