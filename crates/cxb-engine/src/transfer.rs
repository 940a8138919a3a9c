//! `transfer_call`: choose the target, announce the transfer, have the driver perform it.

use std::time::Duration;

use cxb_wire::llm::{ChatMessage, ToolCall};
use cxb_wire::result::DisconnectedBy;
use cxb_wire::transfer::{ResolvedTransfer, TransferTargetError};
use serde_json::{json, Value};

use crate::timer::Timer;
use crate::utterance::UtteranceKind;
use crate::{Action, Conversation};

/// Where a `transfer_call` stands.
#[derive(Debug)]
pub(crate) enum TransferState {
    Idle,
    /// The pre-transfer message is playing; the transfer follows once it has been heard.
    Announcing {
        call: ToolCall,
        resolved: ResolvedTransfer,
        reason: String,
    },
    /// [`Action::Transfer`] is out; waiting for [`crate::Input::TransferResult`].
    InFlight {
        call: ToolCall,
        resolved: ResolvedTransfer,
        reason: String,
    },
    /// The transport took the caller; the bot is silent until the leg drops.
    Done,
}

impl Conversation {
    pub(crate) fn start_transfer(&mut self, now: Duration, content: Option<String>, calls: Vec<ToolCall>, idx: usize) {
        let call = calls[idx].clone();
        let args = serde_json::from_str::<Value>(&call.arguments).unwrap_or(Value::Null);
        let reason = args.get("reason").and_then(Value::as_str).unwrap_or_default().to_string();
        let requested = args.get("target").and_then(Value::as_str).map(str::to_string);
        let resolved = match &self.cfg.transfer {
            Some(o) => o.choices.resolve(requested.as_deref()),
            None => Err(TransferTargetError::NotSupported),
        };
        self.messages.push(ChatMessage::Assistant { content, tool_calls: calls.clone() });
        for c in calls.iter().filter(|c| c.id != call.id) {
            self.messages.push(ChatMessage::Tool {
                tool_call_id: c.id.clone(),
                content: "error: not run because the call is being transferred".into(),
            });
        }
        match resolved {
            Err(e) => {
                self.record.event(
                    "transfer_failed",
                    now,
                    json!({"reason": reason, "target": requested, "error": e.to_string()}),
                );
                self.messages.push(ChatMessage::Tool {
                    tool_call_id: call.id.clone(),
                    content: format!("error: TransferTargetError: {e}"),
                });
                self.start_llm(now, None);
            }
            Ok(resolved) => {
                let message = self.cfg.transfer.as_ref().map(|o| o.pre_transfer_message.clone()).unwrap_or_default();
                self.say(now, UtteranceKind::Final, &message);
                self.transfer = TransferState::Announcing { call, resolved, reason };
                self.after_playout_change(now);
            }
        }
    }

    /// Once the pre-transfer message has been heard, perform the transfer.
    pub(crate) fn transfer_when_announced(&mut self, now: Duration) {
        if !self.speech.queue.is_empty() || self.llm.is_some() || self.tool_round.is_some() {
            return;
        }
        if !matches!(self.transfer, TransferState::Announcing { .. }) {
            return;
        }
        let TransferState::Announcing { call, resolved, reason } =
            std::mem::replace(&mut self.transfer, TransferState::Idle)
        else {
            return;
        };
        self.actions.push_back(Action::Transfer { to: resolved.clone(), reason: reason.clone() });
        self.transfer = TransferState::InFlight { call, resolved, reason };
        self.timers.set(Timer::Transfer, now + self.cfg.transfer_timeout);
    }

    pub(crate) fn on_transfer_result(&mut self, now: Duration, ok: bool, error: Option<String>) {
        let TransferState::InFlight { call, resolved, reason } =
            std::mem::replace(&mut self.transfer, TransferState::Idle)
        else {
            return;
        };
        self.timers.clear(Timer::Transfer);
        let mut data = json!({
            "destination": resolved.destination,
            "target": resolved.target,
            "reason": reason,
            "method": resolved.method,
        });
        if ok {
            self.record.event("transfer_sent", now, data);
            self.messages.push(ChatMessage::Tool {
                tool_call_id: call.id,
                content: format!("ok: the caller is being transferred to {}", resolved.target),
            });
            if resolved.is_agent_desk() {
                // The handoff is durably enqueued: the conversation is over, but the caller
                // stays connected (the driver's hold worker takes over until an agent joins).
                self.end(now, DisconnectedBy::TransferToAgent, false);
                return;
            }
            self.transfer = TransferState::Done;
            self.timers.set(Timer::Transfer, now + self.cfg.transfer_hold);
            return;
        }
        let error = error.unwrap_or_else(|| "unknown".into());
        data["error"] = Value::String(error.clone());
        self.record.event("transfer_failed", now, data);
        self.messages
            .push(ChatMessage::Tool { tool_call_id: call.id, content: format!("error: the transfer failed: {error}") });
        self.start_llm(now, None);
    }

    /// No confirmation from the transport, or the transferred leg never dropped.
    pub(crate) fn on_transfer_timeout(&mut self, now: Duration) {
        match self.transfer {
            TransferState::InFlight { .. } => {
                let error = format!("no confirmation within {} ms", self.cfg.transfer_timeout.as_millis());
                self.on_transfer_result(now, false, Some(error));
            }
            // The transport never dropped the leg: leave it to whoever has it now.
            TransferState::Done => self.end(now, DisconnectedBy::Bot, false),
            TransferState::Idle | TransferState::Announcing { .. } => {}
        }
    }
}
