//! ElevenLabs stream-input double: `GET /v1/text-to-speech/{voice_id}/stream-input`
//! (wire-protocols §5, ElevenLabs, single-context).
//!
//! Every non-blank text message is answered at once (the double does not buffer by
//! `chunk_length_schedule`) with one audio message whose alignment times are relative to the
//! start of that message's audio.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::ws::rejection::WebSocketUpgradeRejection;
use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use base64::Engine;
use serde_json::{json, Value};

use crate::audio::{pcm_bytes, samples_for_ms, text_duration_ms, SpeechSynth};
use crate::{close_ws, Latencies, SimState};

pub const SAMPLE_RATES: [u32; 5] = [8000, 16000, 22050, 24000, 44100];

fn http_error(status: StatusCode, status_str: &str, message: &str) -> Response {
    (status, Json(json!({"detail": {"status": status_str, "message": message}}))).into_response()
}

/// `pcm_<rate>` → rate.
pub fn parse_output_format(v: Option<&str>) -> Result<u32, String> {
    let f = v.ok_or("output_format is required (this double serves pcm_<rate> only)")?;
    f.strip_prefix("pcm_").and_then(|r| r.parse::<u32>().ok()).filter(|r| SAMPLE_RATES.contains(r)).ok_or_else(|| {
        format!("output_format {f:?} is not supported; use pcm_8000|pcm_16000|pcm_22050|pcm_24000|pcm_44100")
    })
}

pub async fn handler(
    State(state): State<Arc<SimState>>,
    Path(voice_id): Path<String>,
    headers: HeaderMap,
    Query(q): Query<HashMap<String, String>>,
    ws: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
) -> Response {
    let key = headers.get("xi-api-key").and_then(|v| v.to_str().ok()).unwrap_or("").trim();
    if key.is_empty() || key == "bad-key" {
        tracing::warn!("elevenlabs: rejected upgrade, bad xi-api-key");
        return http_error(StatusCode::UNAUTHORIZED, "invalid_api_key", "Invalid API key");
    }
    let rate = match parse_output_format(q.get("output_format").map(String::as_str)) {
        Ok(r) => r,
        Err(e) => return http_error(StatusCode::BAD_REQUEST, "invalid_output_format", &e),
    };
    if q.get("model_id").is_none_or(|m| m.is_empty()) {
        return http_error(StatusCode::BAD_REQUEST, "invalid_model", "model_id is required");
    }
    let inactivity =
        q.get("inactivity_timeout").and_then(|s| s.parse::<u64>().ok()).map(|s| s.clamp(1, 180)).unwrap_or(20);
    let ws = match ws {
        Ok(ws) => ws,
        Err(rej) => return rej.into_response(),
    };
    state.counters.elevenlabs_connections.fetch_add(1, Ordering::Relaxed);
    ws.read_buffer_size(crate::WS_READ_BUFFER)
        .on_upgrade(move |socket| run(socket, state, voice_id, rate, Duration::from_secs(inactivity)))
}

/// The audio message for one text piece: (JSON, audio ms).
pub fn audio_message(synth: &mut SpeechSynth, sample_rate: u32, text: &str) -> (Value, u64) {
    let dur_ms = text_duration_ms(text);
    let mut pcm = Vec::new();
    synth.render(samples_for_ms(sample_rate, dur_ms), &mut pcm);
    let chars: Vec<String> = text.chars().map(|c| c.to_string()).collect();
    let n = chars.len().max(1) as u64;
    let starts: Vec<u64> = (0..chars.len() as u64).map(|i| i * dur_ms / n).collect();
    let durs: Vec<u64> = (0..chars.len() as u64).map(|i| (i + 1) * dur_ms / n - i * dur_ms / n).collect();
    let alignment = json!({"chars": chars, "charStartTimesMs": starts, "charDurationsMs": durs});
    let audio = base64::engine::general_purpose::STANDARD.encode(pcm_bytes(&pcm));
    (json!({"audio": audio, "isFinal": null, "normalizedAlignment": alignment, "alignment": alignment}), dur_ms)
}

async fn send(socket: &mut WebSocket, v: Value) -> bool {
    socket.send(Message::Text(v.to_string().into())).await.is_ok()
}

async fn run(mut socket: WebSocket, state: Arc<SimState>, voice_id: String, rate: u32, inactivity: Duration) {
    if voice_id == "fail-voice" {
        let msg = format!("A voice with the voice_id {voice_id} was not found.");
        send(&mut socket, json!({"message": msg, "error": "voice_not_found", "code": 1008})).await;
        close_ws(&mut socket, 1008, "voice_not_found").await;
        return;
    }
    let mut synth = SpeechSynth::new(rate);
    let mut initialised = false;
    let mut first_audio = true;
    loop {
        let msg = match tokio::time::timeout(inactivity, socket.recv()).await {
            Err(_) => {
                tracing::info!("elevenlabs: no input for {inactivity:?}, closing");
                let reason = format!(
                    "Have not received a new text input within the timeout of {} seconds.",
                    inactivity.as_secs()
                );
                send(&mut socket, json!({"message": reason, "error": "input_timeout_exceeded", "code": 1008})).await;
                close_ws(&mut socket, 1008, "input_timeout_exceeded").await;
                return;
            }
            Ok(None | Some(Err(_)) | Some(Ok(Message::Close(_)))) => return,
            Ok(Some(Ok(Message::Text(t)))) => t,
            Ok(Some(Ok(Message::Binary(_)))) => {
                close_ws(&mut socket, 1003, "binary frames are not supported; send JSON text").await;
                return;
            }
            Ok(Some(Ok(_))) => continue,
        };
        let text = match serde_json::from_str::<Value>(msg.as_str()) {
            Ok(v) => match v.get("text").and_then(Value::as_str) {
                Some(t) => t.to_string(),
                None => {
                    tracing::warn!("elevenlabs: message without a string \"text\"");
                    close_ws(&mut socket, 1008, "invalid_request: every message needs a string \"text\" field").await;
                    return;
                }
            },
            Err(_) => {
                close_ws(&mut socket, 1008, "invalid_request: message is not JSON").await;
                return;
            }
        };
        if !initialised {
            if text != " " {
                tracing::warn!("elevenlabs: first message is not the initialise message");
                close_ws(&mut socket, 1008, "invalid_request: the first message must be {\"text\":\" \"}").await;
                return;
            }
            initialised = true;
            continue;
        }
        if text.is_empty() {
            // End of input: all audio has been sent already (we answer each message at once).
            send(&mut socket, json!({"isFinal": true})).await;
            close_ws(&mut socket, 1000, "").await;
            return;
        }
        if text.trim().is_empty() {
            continue; // keep-alive
        }
        if text.chars().count() > crate::tts_cartesia::MAX_TRANSCRIPT_CHARS {
            close_ws(&mut socket, 1009, "invalid_request: text message too long").await;
            return;
        }
        let first_text_at = first_audio.then(tokio::time::Instant::now);
        if first_audio {
            first_audio = false;
            tokio::time::sleep(Latencies::dur(&state.lat.tts_ttfb_ms)).await;
        }
        let (m, _) = audio_message(&mut synth, rate, &text);
        if !send(&mut socket, m).await {
            return;
        }
        if let Some(at) = first_text_at {
            crate::DoubleTimings::record(&state.timings.tts_ttfb, at);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn output_formats() {
        assert_eq!(parse_output_format(Some("pcm_16000")), Ok(16000));
        assert!(parse_output_format(Some("mp3_44100_128")).is_err());
        assert!(parse_output_format(Some("pcm_32000")).is_err());
        assert!(parse_output_format(None).is_err());
    }

    #[test]
    fn alignment_covers_the_audio() {
        let mut s = SpeechSynth::new(8000);
        let (m, dur) = audio_message(&mut s, 8000, "Hi there");
        assert_eq!(dur, 520);
        let a = &m["alignment"];
        assert_eq!(a["chars"].as_array().unwrap().len(), 8);
        let total: u64 = a["charDurationsMs"].as_array().unwrap().iter().map(|v| v.as_u64().unwrap()).sum();
        assert_eq!(total, dur);
        assert_eq!(m["normalizedAlignment"], m["alignment"]);
        assert!(m["isFinal"].is_null());
        let bytes = base64::engine::general_purpose::STANDARD.decode(m["audio"].as_str().unwrap()).unwrap();
        assert_eq!(bytes.len(), 520 * 16);
    }
}
