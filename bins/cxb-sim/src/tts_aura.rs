//! Deepgram Aura-2 TTS double: `GET /v1/speak` (wire-protocols §5 "Deepgram Aura TTS",
//! wire-protocols-2 §6).
//!
//! Strict like the service: `Authorization: Token|Bearer` (401 with `dg-error` otherwise),
//! `model=aura-…`, `encoding=linear16` (the only encoding this double produces) and a
//! `sample_rate` Aura offers (8000/16000/24000/32000/48000; 400 otherwise). `Metadata` first;
//! then `Speak` text is buffered and synthesized on `Flush`, answered with binary LINEAR16
//! frames and `{"type":"Flushed","sequence_id":n}`. At most 20 flushes per 60 s: the 21st is
//! ignored with a `Warning`, as Deepgram does. `Clear` stops the audio (frames already produced
//! still arrive) and answers `Cleared`; `Close` finishes and closes with 1000. Text frames that
//! are not JSON close the socket with 1008; an unknown `type` gets a `Warning`.
//! `--tts-connect-ms` delays the upgrade, `--tts-ttfb-ms` each flush's first audio.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::ws::rejection::WebSocketUpgradeRejection;
use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::{json, Value};
use tokio::time::Instant;

use crate::stt_deepgram::{dg_error, refuse_bad_key};
use crate::tts_sarvam::{Job, Mark, Produced, Synth};
use crate::{close_ws, Latencies, SimState};

pub const SAMPLE_RATES: [u32; 5] = [8000, 16000, 24000, 32000, 48000];
/// Deepgram's flush limit (docs: tts-ws-flush).
pub const FLUSH_LIMIT: usize = 20;
pub const FLUSH_WINDOW: Duration = Duration::from_secs(60);
const MODEL_UUID: &str = "9a3e1c5b-2f4d-4e8a-b6c7-1d2e3f4a5b6c";

/// The query the double serves: (model, sample rate).
pub fn parse_params(q: &HashMap<String, String>) -> Result<(String, u32), String> {
    let model = match q.get("model") {
        Some(m) if m.starts_with("aura-") => m.clone(),
        Some(m) => return Err(format!("model {m:?} is not an Aura voice")),
        None => return Err("model is required".into()),
    };
    match q.get("encoding").map(String::as_str) {
        None | Some("linear16") => {}
        Some(e @ ("mulaw" | "alaw")) => return Err(format!("this double produces linear16 only, not {e}")),
        Some(e) => return Err(format!("encoding {e:?} is not supported on the streaming socket")),
    }
    if q.get("container").is_some_and(|c| c != "none") {
        return Err("the streaming socket sends raw audio: container must be none".into());
    }
    let sample_rate = match q.get("sample_rate") {
        None => 24000,
        Some(s) => s
            .parse::<u32>()
            .ok()
            .filter(|r| SAMPLE_RATES.contains(r))
            .ok_or(format!("sample_rate {s:?} is not supported"))?,
    };
    Ok((model, sample_rate))
}

pub async fn handler(
    State(state): State<Arc<SimState>>,
    headers: HeaderMap,
    Query(q): Query<HashMap<String, String>>,
    ws: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
) -> Response {
    let request_id = uuid::Uuid::new_v4().to_string();
    if let Some(refused) = refuse_bad_key(&headers, &request_id, "aura") {
        return refused;
    }
    let (model, rate) = match parse_params(&q) {
        Ok(p) => p,
        Err(e) => return dg_error(StatusCode::BAD_REQUEST, "UNSUPPORTED_AUDIO_FORMAT", &e, &request_id),
    };
    let ws = match ws {
        Ok(ws) => ws,
        Err(rej) => return rej.into_response(),
    };
    tokio::time::sleep(Latencies::dur(&state.lat.tts_connect_ms)).await;
    state.counters.aura_connections.fetch_add(1, Ordering::Relaxed);
    ws.read_buffer_size(crate::WS_READ_BUFFER).on_upgrade(move |socket| run(socket, state, model, rate, request_id))
}

fn warning(description: &str, code: &str) -> String {
    json!({"type": "Warning", "description": description, "code": code}).to_string()
}

/// Connection state that is not the socket.
struct Speaker {
    state: Arc<SimState>,
    synth: Synth,
    buffer: String,
    flushes: VecDeque<Instant>,
    /// Flushes accepted so far (the next `sequence_id`).
    flushed: u64,
}

/// What a client text frame asks of the connection loop.
enum Reply {
    None,
    Send(String),
    Close(u16, &'static str),
}

impl Speaker {
    fn on_text(&mut self, text: &str) -> Reply {
        let Ok(v) = serde_json::from_str::<Value>(text) else {
            return Reply::Close(1008, "DATA-0000: invalid JSON");
        };
        match v.get("type").and_then(Value::as_str) {
            Some("Speak") => match v.get("text").and_then(Value::as_str) {
                Some(t) if self.buffer.len() + t.len() > crate::tts_sarvam::MAX_BUFFERED_CHARS * 4 => {
                    Reply::Close(1008, "too much text without a Flush")
                }
                Some(t) => {
                    self.buffer.push_str(t);
                    Reply::None
                }
                None => Reply::Send(warning("Speak needs a string text field", "INVALID_MESSAGE")),
            },
            Some("Flush") => self.flush(),
            Some("Clear") => {
                self.state.counters.aura_clears.fetch_add(1, Ordering::Relaxed);
                self.buffer.clear();
                self.synth.clear();
                let cleared = json!({"type": "Cleared", "sequence_id": self.flushed}).to_string();
                self.queue(Job::Mark(Mark::Send(cleared)))
            }
            Some("Close") => {
                let pending = std::mem::take(&mut self.buffer);
                if !pending.is_empty() && !self.synth.submit(Job::Text(pending)) {
                    return Reply::Close(1008, "too much text queued");
                }
                self.queue(Job::Mark(Mark::Close))
            }
            other => Reply::Send(warning(&format!("Unknown message type {other:?}"), "UNKNOWN_MESSAGE_TYPE")),
        }
    }

    fn flush(&mut self) -> Reply {
        let now = Instant::now();
        while self.flushes.front().is_some_and(|&at| now.duration_since(at) >= FLUSH_WINDOW) {
            self.flushes.pop_front();
        }
        if self.flushes.len() >= FLUSH_LIMIT {
            tracing::warn!("aura: flush limit exceeded");
            let text = "Flush limit exceeded: no more than 20 Flush messages per 60 seconds.";
            return Reply::Send(warning(text, "FLUSH_LIMIT_EXCEEDED"));
        }
        self.flushes.push_back(now);
        let text = std::mem::take(&mut self.buffer);
        if !text.is_empty() && !self.synth.submit(Job::Text(text)) {
            return Reply::Close(1008, "too much text queued");
        }
        let flushed = json!({"type": "Flushed", "sequence_id": self.flushed}).to_string();
        self.flushed += 1;
        self.queue(Job::Mark(Mark::Send(flushed)))
    }

    fn queue(&self, job: Job) -> Reply {
        if self.synth.submit(job) {
            Reply::None
        } else {
            Reply::Close(1008, "too much text queued")
        }
    }
}

async fn run(mut socket: WebSocket, state: Arc<SimState>, model: String, rate: u32, request_id: String) {
    let metadata = json!({"type": "Metadata", "request_id": request_id, "model_name": model,
        "model_version": "2025-04-01.0", "model_uuid": MODEL_UUID, "additional_model_uuids": []});
    if socket.send(Message::Text(metadata.to_string().into())).await.is_err() {
        return;
    }
    let (synth, mut produced) = Synth::spawn(Arc::clone(&state), rate);
    let mut speaker = Speaker { state, synth, buffer: String::new(), flushes: VecDeque::new(), flushed: 0 };
    loop {
        let outgoing = tokio::select! {
            msg = socket.recv() => match msg {
                None | Some(Err(_)) | Some(Ok(Message::Close(_))) => return,
                Some(Ok(Message::Text(t))) => match speaker.on_text(t.as_str()) {
                    Reply::None => continue,
                    Reply::Send(m) => Message::Text(m.into()),
                    Reply::Close(code, reason) => {
                        close_ws(&mut socket, code, reason).await;
                        return;
                    }
                },
                Some(Ok(Message::Binary(_))) => {
                    close_ws(&mut socket, 1003, "binary frames are not accepted; send JSON text").await;
                    return;
                }
                Some(Ok(_)) => continue,
            },
            Some(item) = produced.recv() => match item {
                Produced::Audio(pcm) => Message::Binary(pcm.into()),
                Produced::TextDone => continue,
                Produced::Mark(Mark::Send(m)) => Message::Text(m.into()),
                Produced::Mark(Mark::Close) => {
                    close_ws(&mut socket, 1000, "").await;
                    return;
                }
            },
        };
        if socket.send(outgoing).await.is_err() {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stt_sarvam::query_map as q;

    #[test]
    fn query_is_validated() {
        let ok = q(&[("model", "aura-2-thalia-en"), ("encoding", "linear16"), ("sample_rate", "8000")]);
        assert_eq!(parse_params(&ok).unwrap(), ("aura-2-thalia-en".to_string(), 8000));
        for bad in [
            q(&[("encoding", "linear16"), ("sample_rate", "8000")]),
            q(&[("model", "sonic-3"), ("sample_rate", "8000")]),
            q(&[("model", "aura-2-thalia-en"), ("sample_rate", "22050")]),
            q(&[("model", "aura-2-thalia-en"), ("encoding", "mp3")]),
            q(&[("model", "aura-2-thalia-en"), ("container", "wav")]),
        ] {
            assert!(parse_params(&bad).is_err(), "{bad:?}");
        }
    }
}
