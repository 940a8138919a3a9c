//! Agent Desk handoff (contract §6.7): durable enqueue, the hold worker, and the updates.
//!
//! 1. `transfer_call` resolves to an `agent_desk` target → [`Driver::enqueue_handoff`] persists
//!    `POST {api}/agent-desk/enqueue` in the outbox; persisted = success, and the engine ends
//!    the conversation as `transfer_to_agent` without hanging up.
//! 2. [`Driver::hold`] keeps the caller company ([`cxb_agent_desk::Hold`]): the hold message
//!    through TTS, hold music from `assets/`, reminders; it goes quiet when an agent joins and
//!    ends when the caller leaves, the room closes, every agent leaves or the hold limit passes.
//!    `max_call_duration` no longer applies: the conversation engine has already ended.
//! 3. [`Driver::report_handoff_end`] sends the events, the final transcript, the recording and
//!    `customer-disconnected`, all through the outbox.

use std::time::Duration;

use cxb_agent_desk::protocol::{
    AgentDeskEvent, Caller, CustomerDisconnected, EnqueueRequest, EnqueueTarget, RecordingUpdate, Role,
    TranscriptEntry, TranscriptUpdate,
};
use cxb_agent_desk::{AgentDesk, AgentDeskError, Hold, HoldAction, HoldAudio, HoldConfig, HoldInput, HoldOutcome};
use cxb_delivery::OutboxError;
use cxb_providers::tts::TtsEvent;
use cxb_transports::Inbound;
use cxb_wire::result::Speaker;
use cxb_wire::CallResultsPayload;
use serde_json::{json, Value};
use tracing::{error, info, warn, Instrument};

use super::drive::{recv_opt, Driver};
use super::timer::Deadline;
use crate::link::{CallLink, LinkEvent, TransferStart};

/// Where and as what a call is handed to Agent Desk.
#[derive(Debug, Clone)]
pub struct AgentDeskTarget {
    /// `{api}/api/v1` — the enqueue and update routes hang off it.
    pub api_base: String,
    pub room_name: String,
    pub call_id: String,
}

/// Why a call cannot be handed to Agent Desk.
#[derive(Debug, thiserror::Error)]
pub enum HandoffError {
    #[error("Agent Desk is not available on this call")]
    Unavailable,
    /// The call's Agent Desk target cannot be used (a bad API base).
    #[error(transparent)]
    Client(AgentDeskError),
    #[error("Agent Desk request is invalid: {0}")]
    Request(#[source] AgentDeskError),
    #[error("the handoff could not be queued: {0}")]
    Queue(#[source] OutboxError),
}

/// Events per Agent Desk events update.
const EVENTS_PER_UPDATE: usize = 50;

/// How the handed-off part of the call went.
#[derive(Debug)]
pub(super) struct HandoffReport {
    outcome: HoldOutcome,
    reason: String,
    hold: Duration,
    agent_joined: bool,
    ended_at: chrono::DateTime<chrono::Utc>,
    events: Vec<AgentDeskEvent>,
}

impl HandoffReport {
    /// Should the bot end the caller's leg as it leaves? Not when the caller is already gone.
    pub(super) fn hang_up_caller(&self) -> bool {
        matches!(self.outcome, HoldOutcome::HoldTimeout | HoldOutcome::AgentFinished | HoldOutcome::EndRequested)
    }
}

impl<L: CallLink> Driver<'_, L> {
    fn desk(&self) -> Result<(AgentDesk, AgentDeskTarget), HandoffError> {
        let target = self.agent_desk.clone().ok_or(HandoffError::Unavailable)?;
        let desk =
            AgentDesk::new(target.api_base.clone(), self.app.settings.secret.clone()).map_err(HandoffError::Client)?;
        Ok((desk, target))
    }

    fn desk_transcript(&self) -> Vec<TranscriptEntry> {
        self.engine
            .record()
            .transcript
            .iter()
            .map(|l| TranscriptEntry {
                role: match l.speaker {
                    Speaker::Customer => Role::Customer,
                    Speaker::Bot => Role::Bot,
                },
                text: l.text.clone(),
                at_seconds: l.at.as_secs_f64(),
            })
            .collect()
    }

    /// Persist the enqueue request; the transfer "succeeds" once it is durable.
    pub(super) fn enqueue_handoff(&mut self, destination: &str, target: &str, reason: &str) -> TransferStart {
        let (desk, t) = match self.desk() {
            Ok(v) => v,
            Err(e) => return TransferStart::Done(Err(e.into())),
        };
        let meta = self.link.meta();
        let request = EnqueueRequest {
            call_id: t.call_id.clone(),
            session_id: self.cfg.session_id.clone(),
            room_name: t.room_name.clone(),
            bot_id: self.cfg.bot_id.clone(),
            transport: self.link.name().to_string(),
            caller: Caller {
                number: Some(meta.caller_id.clone()).filter(|n| !n.is_empty()),
                identity: self.link.caller_identity().unwrap_or_default().to_string(),
            },
            escalation_reason: reason.to_string(),
            target: EnqueueTarget { id: None, label: target.to_string(), value: destination.to_string() },
            transcript: self.desk_transcript(),
            variables: crate::variables::call_variables(&self.cfg, meta),
            context: meta.connected_event.clone(),
            enqueued_at: chrono::Utc::now(),
        };
        let entry = match desk.enqueue(&request) {
            Ok(e) => e,
            Err(e) => return TransferStart::Done(Err(HandoffError::Request(e).into())),
        };
        let outbox = self.app.delivery.outbox().clone();
        TransferStart::Pending(Box::pin(
            async move {
                match outbox.enqueue(entry).await {
                    Ok(id) => {
                        info!(entry = %id, "Agent Desk handoff persisted");
                        metrics::counter!("cxb_agent_desk_handoffs_total").increment(1);
                        Ok(())
                    }
                    Err(e) => {
                        error!(error = %e, "could not persist the Agent Desk handoff");
                        Err(HandoffError::Queue(e).into())
                    }
                }
            }
            .in_current_span(),
        ))
    }

    /// Keep the caller company until the handed-off call is over. The hold worker sets the pace:
    /// the loop sleeps until its next deadline, forwards the hold message's TTS audio to it and
    /// writes the frames it releases.
    pub(super) async fn hold(&mut self) -> HandoffReport {
        let s = &self.app.settings.livekit;
        let rate = self.link.meta().sample_rate;
        let audio = HoldAudio::load(&s.hold_audio, rate).or_else(|e| {
            warn!(error = %e, path = %s.hold_audio.display(), "hold music unavailable; using the built-in chime");
            HoldAudio::tone(rate)
        });
        let cfg = HoldConfig {
            message: Some(s.hold_message.clone()).filter(|m| !m.trim().is_empty()),
            reminder_every: Duration::from_secs(s.hold_reminder_s),
            max_hold: Duration::from_secs(s.hold_max_s.max(1)),
            ..HoldConfig::default()
        };
        let started_utc = chrono::Utc::now();
        // Hold time zero, on the call's clock.
        let origin = self.t0 + self.now();
        let audio = match audio {
            Ok(a) => a,
            Err(e) => {
                // Cannot happen with the built-in tone; still, never leave a call hanging.
                error!(error = %e, "no hold audio at all; ending the handoff");
                return HandoffReport {
                    outcome: HoldOutcome::EndRequested,
                    reason: format!("no hold audio: {e}"),
                    hold: Duration::ZERO,
                    agent_joined: false,
                    ended_at: chrono::Utc::now(),
                    events: Vec::new(),
                };
            }
        };
        let mut hold = Hold::new(cfg, audio);
        let mut events = Vec::new();
        // The TTS context of the hold message being spoken; audio of any other is stale.
        let mut message_ctx: Option<String> = None;
        let mut messages = 0u32;
        let mut wake = Deadline::new();
        let mut shutting_down = false;
        info!("caller on hold for Agent Desk");
        hold.handle(origin.elapsed(), HoldInput::Start);
        let report = loop {
            // Perform what the hold worker asked for.
            let mut ended = None;
            while let Some(action) = hold.poll_action() {
                match action {
                    HoldAction::Speak { text } => {
                        messages += 1;
                        let ctx = format!("h{messages}");
                        match &self.providers.tts {
                            Some(t) if t.speak(&ctx, &text).and_then(|_| t.flush(&ctx)).is_ok() => {
                                message_ctx = Some(ctx)
                            }
                            _ => {
                                warn!("cannot speak the hold message; music only");
                                message_ctx = None;
                                hold.handle(origin.elapsed(), HoldInput::MessageDone);
                            }
                        }
                    }
                    HoldAction::StopAudio => {
                        if let (Some(ctx), Some(t)) = (message_ctx.take(), &self.providers.tts) {
                            let _ = t.cancel(&ctx);
                        }
                        self.link.clear();
                        if let Some(rec) = &mut self.recording {
                            rec.bot_cleared(self.t0.elapsed());
                        }
                    }
                    HoldAction::Event { kind, at, data } => {
                        let at_utc = started_utc + chrono::Duration::from_std(at).unwrap_or_default();
                        self.log.events.push(self.event(kind, Value::Object(data.clone())));
                        events.push(AgentDeskEvent::new(kind, at_utc, data));
                    }
                    HoldAction::End { outcome, reason, at: _, hold: held, agent_joined } => {
                        ended = Some(HandoffReport {
                            outcome,
                            reason,
                            hold: held,
                            agent_joined,
                            ended_at: chrono::Utc::now(),
                            events: Vec::new(),
                        });
                    }
                }
            }
            if let Some(mut report) = ended {
                report.events = std::mem::take(&mut events);
                break report;
            }
            // The hold message and the music, as the worker's pacing releases them.
            let now = origin.elapsed();
            while let Some(frame) = hold.poll_frame(now) {
                if let Some(rec) = &mut self.recording {
                    rec.bot(frame, self.t0.elapsed());
                }
                self.link.audio(frame);
            }
            if !self.link.flush().await {
                hold.handle(origin.elapsed(), HoldInput::CustomerLeft { reason: "link closed".into() });
                continue;
            }
            self.journal_progress();
            wake.set(hold.poll_timeout().map(|t| tokio::time::Instant::from_std(origin + t)));
            tokio::select! {
                () = wake.passed() => hold.handle_timeout(origin.elapsed()),
                () = self.shutdown.cancelled(), if !shutting_down => {
                    warn!("the worker is stopping: ending the hold");
                    shutting_down = true;
                    self.log.events.push(self.event("worker_shutdown", json!({})));
                    hold.handle(origin.elapsed(), HoldInput::EndRequested { reason: "worker_shutdown".into() });
                }
                ev = self.link.recv() => {
                    let now = origin.elapsed();
                    match ev {
                        LinkEvent::Inbound(Inbound::Audio(pcm)) => {
                            if let Some(rec) = &mut self.recording {
                                rec.customer(&pcm, self.t0.elapsed());
                            }
                        }
                        LinkEvent::Inbound(Inbound::Hangup { .. }) => {
                            hold.handle(now, HoldInput::CustomerLeft { reason: "hangup".into() })
                        }
                        LinkEvent::Inbound(_) | LinkEvent::Protocol(_) => {}
                        LinkEvent::AgentAudio(pcm) => {
                            if let Some(rec) = &mut self.recording {
                                rec.bot(&pcm, self.t0.elapsed());
                            }
                        }
                        LinkEvent::AgentJoined { identity } => {
                            info!(%identity, "an agent joined the call");
                            hold.handle(now, HoldInput::AgentJoined { identity });
                        }
                        LinkEvent::AgentLeft { identity } => {
                            info!(%identity, "an agent left the call");
                            hold.handle(now, HoldInput::AgentLeft { identity });
                        }
                        LinkEvent::Gone { why } if why.starts_with("room") => {
                            hold.handle(now, HoldInput::RoomClosed { reason: why })
                        }
                        LinkEvent::Gone { why } => hold.handle(now, HoldInput::CustomerLeft { reason: why }),
                        LinkEvent::Failed { error, .. } => hold.handle(now, HoldInput::RoomClosed { reason: error }),
                    }
                }
                ev = recv_opt(&mut self.providers.tts_rx) => {
                    let now = origin.elapsed();
                    match ev {
                        Some(TtsEvent::Audio { context_id, pcm }) if message_ctx.as_deref() == Some(context_id.as_str()) => {
                            hold.handle(now, HoldInput::MessageAudio(pcm))
                        }
                        Some(TtsEvent::Done { context_id }) if message_ctx.as_deref() == Some(context_id.as_str()) => {
                            message_ctx = None;
                            hold.handle(now, HoldInput::MessageSynthDone);
                        }
                        Some(TtsEvent::Error { error, .. }) => {
                            warn!(error = %error, "hold message synthesis failed; music only");
                            message_ctx = None;
                            hold.handle(now, HoldInput::MessageDone);
                        }
                        Some(_) => {}
                        None => {
                            self.providers.tts_rx = None;
                            message_ctx = None;
                            hold.handle(now, HoldInput::MessageSynthDone);
                        }
                    }
                }
            }
        };
        info!(outcome = %report.outcome, reason = %report.reason, hold_s = report.hold.as_secs(), agent_joined = report.agent_joined, "handoff over");
        self.log.events.push(self.event(
            "agent_desk_ended",
            json!({"outcome": report.outcome.as_str(), "reason": report.reason, "hold_seconds": report.hold.as_secs_f64(), "agent_joined": report.agent_joined}),
        ));
        if report.hang_up_caller() {
            self.link.hang_up();
            self.log.bot_hung_up = true;
        }
        report
    }

    /// The handed-off call is over: tell Agent Desk everything, durably.
    pub(super) async fn report_handoff_end(&mut self, report: &HandoffReport, payload: &CallResultsPayload) {
        let (desk, t) = match self.desk() {
            Ok(v) => v,
            Err(e) => return warn!(error = %e, "cannot send the Agent Desk updates"),
        };
        let mut entries = Vec::new();
        for chunk in report.events.chunks(EVENTS_PER_UPDATE) {
            entries.push(desk.events(&t.call_id, chunk));
        }
        entries.push(
            desk.transcript(&t.call_id, &TranscriptUpdate { transcript: self.desk_transcript(), is_final: true }),
        );
        if let Some(key) = &payload.recording_key {
            let update = RecordingUpdate {
                recording_key: key.clone(),
                recording_url: payload.recording_url.clone(),
                duration_seconds: payload.call_duration_seconds,
            };
            entries.push(desk.recording(&t.call_id, &update));
        }
        // Every end of the handoff ends the customer's leg (left, room closed, or hung up by us).
        {
            let update = CustomerDisconnected {
                reason: report.outcome.as_str().to_string(),
                at: report.ended_at,
                hold_seconds: report.hold.as_secs_f64(),
                agent_joined: report.agent_joined,
            };
            entries.push(desk.customer_disconnected(&t.call_id, &update));
        }
        for entry in entries {
            match entry {
                Ok(e) => {
                    if let Err(err) = self.app.delivery.outbox().enqueue(e).await {
                        error!(error = %err, "could not persist an Agent Desk update");
                    }
                }
                Err(e) => warn!(error = %e, "invalid Agent Desk update"),
            }
        }
    }
}
