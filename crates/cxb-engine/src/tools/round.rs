//! A round of custom tool calls: run them (bounded), then give the results back to the LLM.

use std::time::Duration;

use cxb_wire::llm::{ChatMessage, ToolCall};
use serde_json::json;

use super::SEND_DTMF_TOOL;
use crate::timer::Timer;
use crate::{ms, Action, Conversation};

#[derive(Debug)]
pub(crate) struct ToolRound {
    assistant_text: Option<String>,
    calls: Vec<ToolCall>,
    results: Vec<Option<String>>,
    started_at: Duration,
    pub(crate) latency_sample: Option<usize>,
    /// Per call, its pre-message and when it is due; `None` once said, or when it has none.
    pre_messages: Vec<Option<(String, Duration)>>,
    /// When the filler is due; `None` once a filler or a pre-message was said, or without phrases.
    filler_at: Option<Duration>,
}

/// What a waiting round should say now.
pub(crate) struct DueAnnouncements {
    /// Pre-messages: (text, tool name).
    pub(crate) pre_messages: Vec<(String, String)>,
    pub(crate) filler: bool,
}

impl ToolRound {
    fn waiting(&self) -> bool {
        self.results.iter().any(Option::is_none)
    }

    /// When the next pre-message or filler is due.
    pub(crate) fn next_announcement_at(&self) -> Option<Duration> {
        let pre = self.pre_messages.iter().zip(&self.results).filter(|(_, r)| r.is_none());
        let filler = self.filler_at.filter(|_| self.waiting());
        pre.filter_map(|(p, _)| p.as_ref().map(|(_, at)| *at)).chain(filler).min()
    }

    /// Take what is due at `now`: the pre-messages of calls still running, else the filler.
    /// Either way no filler follows.
    pub(crate) fn take_due(&mut self, now: Duration) -> DueAnnouncements {
        let mut pre_messages = Vec::new();
        for (i, call) in self.calls.iter().enumerate() {
            if self.results[i].is_none() && self.pre_messages[i].as_ref().is_some_and(|(_, at)| *at <= now) {
                let (text, _) = self.pre_messages[i].take().expect("checked");
                pre_messages.push((text, call.name.clone()));
            }
        }
        let filler = pre_messages.is_empty() && self.waiting() && self.filler_at.is_some_and(|at| at <= now);
        if !pre_messages.is_empty() || filler {
            self.filler_at = None;
        }
        DueAnnouncements { pre_messages, filler }
    }
}

impl Conversation {
    /// Run the custom tools the LLM called (and `send_dtmf` at once); the slowest one bounds
    /// the round.
    pub(crate) fn start_tool_round(
        &mut self,
        now: Duration,
        assistant_text: Option<String>,
        calls: Vec<ToolCall>,
        latency_sample: Option<usize>,
    ) {
        let mut results = vec![None; calls.len()];
        let mut timeout = Duration::ZERO;
        for (i, c) in calls.iter().enumerate() {
            if c.name == SEND_DTMF_TOOL && self.cfg.dtmf_send {
                results[i] = Some(self.send_dtmf(now, &c.arguments));
                continue;
            }
            timeout = timeout.max(self.cfg.tool_timings.get(&c.name).map_or(self.cfg.tool_timeout, |t| t.timeout));
            self.actions.push_back(Action::RunTool {
                call_id: c.id.clone(),
                name: c.name.clone(),
                arguments: c.arguments.clone(),
            });
        }
        let pre_messages = calls
            .iter()
            .map(|c| {
                let (text, after) = self.cfg.tool_timings.get(&c.name)?.pre_message.clone()?;
                Some((text, now + after))
            })
            .collect();
        let filler_at = self.filler_due(now);
        self.tool_round = Some(ToolRound {
            assistant_text,
            calls,
            results,
            started_at: now,
            latency_sample,
            pre_messages,
            filler_at,
        });
        self.timers.set(Timer::ToolRound, now + timeout);
        self.arm_filler_timer();
        self.finish_tool_round_if_complete(now);
    }

    pub(crate) fn on_tool_result(&mut self, now: Duration, call_id: String, content: String, is_error: bool) {
        let Some(round) = self.tool_round.as_mut() else { return };
        let Some(i) = round.calls.iter().position(|c| c.id == call_id) else { return };
        if round.results[i].is_some() {
            return;
        }
        let name = round.calls[i].name.clone();
        let elapsed_ms = ms(now.saturating_sub(round.started_at));
        round.results[i] = Some(content.clone());
        let mut preview: String = content.chars().take(500).collect();
        if preview.len() < content.len() {
            preview.push('…');
        }
        self.record.event(
            "custom_tool_result",
            now,
            json!({"tool_call_id": call_id, "name": name, "is_error": is_error, "result": preview, "elapsed_ms": elapsed_ms}),
        );
        self.arm_filler_timer();
        self.finish_tool_round_if_complete(now);
    }

    /// The round's time is up: every call still running answers with an error.
    pub(crate) fn on_tool_timeout(&mut self, now: Duration) {
        let Some(round) = &self.tool_round else { return };
        let pending: Vec<String> =
            round.calls.iter().zip(&round.results).filter(|(_, r)| r.is_none()).map(|(c, _)| c.id.clone()).collect();
        self.record.event("tool_timeout", now, json!({"timeout_ms": self.cfg.tool_timeout.as_millis() as u64}));
        for id in pending {
            self.on_tool_result(now, id, "error: the tool did not answer in time".into(), true);
        }
    }

    fn finish_tool_round_if_complete(&mut self, now: Duration) {
        if self.tool_round.as_ref().is_none_or(ToolRound::waiting) {
            return;
        }
        let Some(round) = self.drop_tool_round() else { return };
        self.messages.push(ChatMessage::Assistant { content: round.assistant_text, tool_calls: round.calls.clone() });
        for (call, result) in round.calls.iter().zip(round.results) {
            self.messages
                .push(ChatMessage::Tool { tool_call_id: call.id.clone(), content: result.unwrap_or_default() });
        }
        self.start_llm(now, round.latency_sample);
    }

    /// The round is over (finished or abandoned): its timers go with it.
    pub(crate) fn drop_tool_round(&mut self) -> Option<ToolRound> {
        let round = self.tool_round.take()?;
        self.timers.clear(Timer::ToolRound);
        self.arm_filler_timer();
        Some(round)
    }
}
