//! What arrives for the engine — link events, caller audio, STT, TTS and LLM events — turned
//! into its inputs.

use cxb_audio::vad::VadTransition;
use cxb_engine::{Input, Service, WordTime};
use cxb_providers::llm::LlmEvent;
use cxb_providers::stt::SttEvent;
use cxb_providers::tts::TtsEvent;
use cxb_transports::{Inbound, ProtocolError};
use serde_json::json;
use tracing::{debug, info, warn};

use super::drive::{parse_context, Driver};
use crate::link::{CallLink, LinkEvent};

impl<L: CallLink> Driver<'_, L> {
    pub(super) fn on_link_event(&mut self, ev: LinkEvent) {
        match ev {
            LinkEvent::Inbound(inb) => self.on_inbound(inb),
            LinkEvent::Protocol(e) => self.protocol_error(e),
            LinkEvent::Gone { why } => {
                info!(%why, "caller gone");
                self.input(Input::CustomerHangup);
            }
            LinkEvent::Failed { error, event } => {
                if let Some((kind, data)) = event {
                    self.log.events.push(self.event(kind, data));
                }
                warn!(%error, "the link to the caller failed; ending the call");
                self.input(Input::ServiceFailed { service: Service::Transport, error });
            }
            // Agents only matter once the call is handed off (see `hold`).
            LinkEvent::AgentJoined { identity } | LinkEvent::AgentLeft { identity } => {
                debug!(%identity, "agent participant change before any handoff")
            }
            LinkEvent::AgentAudio(_) => {}
        }
    }

    fn protocol_error(&mut self, e: ProtocolError) {
        self.log.protocol_errors += 1;
        metrics::counter!("cxb_protocol_errors_total", "transport" => self.link.name()).increment(1);
        // Log the first few in full, then only count, so a flood cannot fill the logs.
        if self.log.protocol_errors <= 5 {
            warn!(error = %e, "ignoring bad frame");
        }
        if self.log.protocol_errors <= 20 {
            self.log.events.push(self.event("protocol_error", json!({"error": e.to_string()})));
        }
    }

    fn on_inbound(&mut self, inbound: Inbound) {
        match inbound {
            Inbound::Audio(samples) => self.on_caller_audio(&samples),
            Inbound::Hangup { by } => {
                info!(by = ?by, "caller hung up");
                self.input(Input::CustomerHangup);
            }
            Inbound::Mark(name) => match self.marks.echoed(&name) {
                Some(utterance) => self.input(Input::PlaybackConfirmed { utterance }),
                None => debug!(mark = %name, "echo of a mark no longer tracked"),
            },
            Inbound::Dtmf(digits) => {
                info!(%digits, "caller pressed keys");
                self.input(Input::Dtmf { digits });
            }
            Inbound::Ignored(why) => debug!(why, "ignored frame"),
        }
    }

    pub(super) fn on_caller_audio(&mut self, samples: &[i16]) {
        if samples.is_empty() {
            return;
        }
        if let Some(rec) = &mut self.recording {
            rec.customer(samples, self.t0.elapsed());
        }
        self.caller.stt_buf.extend_from_slice(samples);
        if self.caller.stt_buf.len() >= self.caller.stt_batch {
            self.flush_stt();
        }
        if let Some(turn) = &mut self.caller.turn {
            turn.scratch.clear();
            turn.resampler.process(samples, &mut turn.scratch);
            turn.audio.push_i16(&turn.scratch);
        }
        let mut transitions: [Option<VadTransition>; 4] = [None; 4];
        let mut n = 0;
        if let Some(vad) = &mut self.caller.vad {
            vad.push(samples, |t, _| {
                if n < transitions.len() {
                    transitions[n] = Some(t);
                    n += 1;
                }
            });
        }
        for t in transitions.into_iter().flatten() {
            if let (VadTransition::Started, Some(turn)) = (t, &mut self.caller.turn) {
                turn.audio.speech_started();
            }
            let input = match t {
                VadTransition::Started => Input::SpeechStarted,
                VadTransition::Stopped => Input::SpeechStopped,
            };
            self.input(input);
        }
    }

    /// Send buffered caller audio to STT now.
    pub(super) fn flush_stt(&mut self) {
        if self.caller.stt_buf.is_empty() {
            return;
        }
        let sent = self.providers.stt.as_ref().map_or(Ok(()), |stt| stt.send_audio(&self.caller.stt_buf));
        self.caller.stt_buf.clear();
        if let Err(e) = sent {
            self.service_failed(Service::Stt, e.provider(), e.to_string());
        }
    }

    pub(super) fn on_stt(&mut self, ev: Option<SttEvent>) {
        match ev {
            Some(SttEvent::Transcript(t)) => {
                if !t.text.trim().is_empty() || t.is_final {
                    self.input(Input::Transcript { text: t.text, is_final: t.is_final, speech_final: t.speech_final });
                }
            }
            Some(SttEvent::UtteranceEnd) => self.input(Input::UtteranceEnd),
            Some(SttEvent::SpeechStarted) => {}
            Some(SttEvent::Error(e)) => self.service_failed(Service::Stt, e.provider(), e.to_string()),
            Some(SttEvent::Closed) | None => {
                self.service_failed(Service::Stt, "stt", "stream closed unexpectedly".into());
            }
        }
    }

    pub(super) fn on_tts(&mut self, ev: Option<TtsEvent>) {
        match ev {
            Some(TtsEvent::Audio { context_id, pcm }) => {
                if let Some(utterance) = parse_context(&context_id) {
                    self.input(Input::TtsAudio { utterance, pcm });
                }
            }
            Some(TtsEvent::Words { context_id, words }) => {
                if let Some(utterance) = parse_context(&context_id) {
                    let words =
                        words.into_iter().map(|w| WordTime { word: w.word, start_secs: w.start_secs }).collect();
                    self.input(Input::TtsWords { utterance, words });
                }
            }
            Some(TtsEvent::Done { context_id }) => {
                if let Some(utterance) = parse_context(&context_id) {
                    self.input(Input::TtsDone { utterance });
                }
            }
            Some(TtsEvent::Error { error, .. }) => {
                self.service_failed(Service::Tts, error.provider(), error.to_string())
            }
            None => self.service_failed(Service::Tts, "tts", "stream closed unexpectedly".into()),
        }
    }

    pub(super) fn on_llm(&mut self, turn: u64, ev: Option<LlmEvent>) {
        match ev {
            Some(LlmEvent::Token(text)) => self.input(Input::LlmToken { turn, text }),
            Some(LlmEvent::ToolCalls(calls)) => self.input(Input::LlmToolCalls { turn, calls }),
            // Only requests with a prompt_cache hint report one; the driver sends none yet.
            Some(LlmEvent::Cache(_)) => {}
            Some(LlmEvent::Done { usage, .. }) => {
                self.providers.llm = None;
                self.input(Input::LlmDone { turn, usage });
            }
            Some(LlmEvent::Error(e)) => {
                self.providers.llm = None;
                metrics::counter!("cxb_provider_errors_total", "service" => "llm", "provider" => e.provider())
                    .increment(1);
                warn!(error = %e, "LLM request failed");
                self.input(Input::LlmFailed { turn, error: e.to_string() });
            }
            None => {
                self.providers.llm = None;
                self.input(Input::LlmFailed { turn, error: "LLM stream ended without a result".into() });
            }
        }
    }
}
