//! Deepgram live STT double: `GET /v1/listen` (wire-protocols §3).
//!
//! Utterances are detected by energy (see [`crate::audio::UtteranceDetector`]); utterance N of a
//! connection is "recognised" as the script's `stt_transcripts[N]`. Timing (`start`, `duration`,
//! word times) is audio time since the stream began, as Deepgram reports it.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::ws::rejection::WebSocketUpgradeRejection;
use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::extract::{Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::{json, Value};
use tokio::time::Instant;

use crate::audio::{decode_pcm16, interim_word_count, DetEvent, UtteranceDetector};
use crate::{close_ws, Latencies, SimState};

const MODEL_UUID: &str = "1dbdfb4d-85b2-4659-9c58-a6ec2a9e0ff9";

/// Query parameters the double acts on.
#[derive(Debug, Clone)]
pub struct ListenParams {
    pub sample_rate: u32,
    pub interim_results: bool,
    /// `None` = `endpointing=false` (no speech_final; finals after 500 ms of silence).
    pub endpointing_ms: Option<u64>,
    pub utterance_end_ms: Option<u64>,
    pub vad_events: bool,
}

pub(crate) fn dg_error(status: StatusCode, code: &str, msg: &str, request_id: &str) -> Response {
    let mut r = (status, Json(json!({"err_code": code, "err_msg": msg, "request_id": request_id}))).into_response();
    if let Ok(v) = HeaderValue::from_str(msg) {
        r.headers_mut().insert("dg-error", v);
    }
    if let Ok(v) = HeaderValue::from_str(request_id) {
        r.headers_mut().insert("dg-request-id", v);
    }
    r
}

fn parse_bool(q: &HashMap<String, String>, key: &str) -> Result<bool, String> {
    match q.get(key).map(|s| s.to_ascii_lowercase()) {
        None => Ok(false),
        Some(s) if s == "true" => Ok(true),
        Some(s) if s == "false" => Ok(false),
        Some(s) => Err(format!("{key} must be true or false, got {s:?}")),
    }
}

/// Parses and validates the query (public for tests).
pub fn parse_params(q: &HashMap<String, String>, default_endpointing: u64) -> Result<ListenParams, String> {
    match q.get("encoding").map(String::as_str) {
        Some("linear16") => {}
        Some(other) => return Err(format!("this double only supports encoding=linear16, got {other:?}")),
        None => return Err("encoding is required for raw audio (encoding=linear16)".into()),
    }
    let sample_rate = match q.get("sample_rate") {
        None => return Err("sample_rate is required for raw audio".into()),
        Some(s) => s
            .parse::<u32>()
            .ok()
            .filter(|r| (1000..=192_000).contains(r))
            .ok_or_else(|| format!("sample_rate {s:?} is not a valid rate"))?,
    };
    if let Some(ch) = q.get("channels") {
        if ch != "1" {
            return Err(format!("this double only supports channels=1, got {ch:?}"));
        }
    }
    let endpointing_ms = match q.get("endpointing").map(String::as_str) {
        None => Some(default_endpointing),
        Some("false") => None,
        Some("true") => Some(10),
        Some(s) => Some(s.parse::<u64>().map_err(|_| format!("endpointing must be ms or false, got {s:?}"))?),
    };
    let utterance_end_ms = match q.get("utterance_end_ms") {
        None => None,
        Some(s) => Some(s.parse::<u64>().map_err(|_| format!("utterance_end_ms must be ms, got {s:?}"))?),
    };
    Ok(ListenParams {
        sample_rate,
        interim_results: parse_bool(q, "interim_results")?,
        endpointing_ms,
        utterance_end_ms,
        vad_events: parse_bool(q, "vad_events")?,
    })
}

/// Deepgram's key rule for every Deepgram double: `Authorization: Token|Bearer <key>`, any
/// non-empty key but "bad-key". `Some` is the 401 to answer.
pub(crate) fn refuse_bad_key(headers: &HeaderMap, request_id: &str, double: &str) -> Option<Response> {
    let auth = headers.get(axum::http::header::AUTHORIZATION).and_then(|v| v.to_str().ok()).unwrap_or("");
    let key = auth.strip_prefix("Token ").or_else(|| auth.strip_prefix("Bearer ")).unwrap_or("").trim();
    if !key.is_empty() && key != "bad-key" {
        return None;
    }
    tracing::warn!("{double}: rejected upgrade, bad credentials");
    Some(dg_error(StatusCode::UNAUTHORIZED, "INVALID_AUTH", "Invalid credentials.", request_id))
}

pub async fn handler(
    State(state): State<Arc<SimState>>,
    headers: HeaderMap,
    Query(q): Query<HashMap<String, String>>,
    ws: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
) -> Response {
    let request_id = uuid::Uuid::new_v4().to_string();
    if let Some(refused) = refuse_bad_key(&headers, &request_id, "deepgram") {
        return refused;
    }
    let params = match parse_params(&q, Latencies::get(&state.lat.stt_endpointing_ms)) {
        Ok(p) => p,
        Err(e) => {
            tracing::warn!("deepgram: rejected upgrade: {e}");
            return dg_error(StatusCode::BAD_REQUEST, "Bad Request", &e, &request_id);
        }
    };
    let ws = match ws {
        Ok(ws) => ws,
        Err(rej) => return rej.into_response(),
    };
    state.counters.stt_connections.fetch_add(1, Ordering::Relaxed);
    let rid = request_id.clone();
    let mut resp = ws.read_buffer_size(crate::WS_READ_BUFFER).on_upgrade(move |socket| async move {
        let mut conn = Conn::new(state, params, rid);
        conn.run(socket).await;
    });
    if let Ok(v) = HeaderValue::from_str(&request_id) {
        resp.headers_mut().insert("dg-request-id", v);
    }
    resp
}

#[derive(Debug, Clone)]
struct Utt {
    transcript: String,
    onset_ms: u64,
    /// A final has already been sent (Finalize while speech continued).
    finalized: bool,
}

#[derive(Debug)]
struct PendingFinal {
    due: Instant,
    utt: Utt,
    end_ms: u64,
}

struct Conn {
    state: Arc<SimState>,
    p: ListenParams,
    request_id: String,
    det: UtteranceDetector,
    next_index: usize,
    current: Option<Utt>,
    pending: VecDeque<PendingFinal>,
    utt_end: Option<(Instant, u64)>,
    odd_byte: Option<u8>,
    samples: Vec<i16>,
    events: Vec<DetEvent>,
    out: Vec<String>,
}

enum Flow {
    Continue,
    Stop,
    /// Flush pending output, send a close frame, stop.
    Close(u16, String),
}

fn secs(ms: u64) -> f64 {
    ms as f64 / 1000.0
}

fn round3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

/// Deepgram's `word` is the lower-cased token without punctuation; `punctuated_word` keeps it.
fn bare_word(token: &str) -> String {
    token.chars().filter(|c| c.is_alphanumeric() || *c == '\'' || *c == '-').flat_map(char::to_lowercase).collect()
}

impl Conn {
    fn new(state: Arc<SimState>, p: ListenParams, request_id: String) -> Self {
        // endpointing=false: Deepgram still finalises segments; we do it after 500 ms of silence.
        let ep = p.endpointing_ms.unwrap_or(500);
        Self {
            det: UtteranceDetector::new(p.sample_rate, ep),
            state,
            p,
            request_id,
            next_index: 0,
            current: None,
            pending: VecDeque::new(),
            utt_end: None,
            odd_byte: None,
            samples: Vec::with_capacity(4096),
            events: Vec::with_capacity(8),
            out: Vec::with_capacity(8),
        }
    }

    async fn run(&mut self, mut socket: WebSocket) {
        let idle = self.state.stt_idle_timeout;
        let mut last_activity = Instant::now();
        // One timer for the connection, moved only when its deadline changes. The idle check is
        // lazy: `idle_check` moves on when the timer fires, not on every audio message (a fresh
        // `sleep_until` per message was a timer-wheel insert and removal every 20–60 ms per call).
        let mut idle_check = last_activity + idle;
        let timer = tokio::time::sleep_until(idle_check);
        tokio::pin!(timer);
        loop {
            let mut deadline = idle_check;
            if let Some(f) = self.pending.front() {
                deadline = deadline.min(f.due);
            }
            if let Some((due, _)) = self.utt_end {
                deadline = deadline.min(due);
            }
            if timer.deadline() != deadline {
                timer.as_mut().reset(deadline);
            }
            let flow = tokio::select! {
                msg = socket.recv() => match msg {
                    None => Flow::Stop,
                    Some(Err(e)) => {
                        tracing::debug!("deepgram: socket error: {e}");
                        Flow::Stop
                    }
                    Some(Ok(Message::Binary(b))) => {
                        last_activity = Instant::now();
                        self.on_audio(&b);
                        Flow::Continue
                    }
                    Some(Ok(Message::Text(t))) => {
                        match self.on_text(t.as_str(), &mut last_activity) {
                            Ok(flow) => flow,
                            Err(reason) => {
                                tracing::warn!("deepgram: {reason}");
                                Flow::Close(1008, reason)
                            }
                        }
                    }
                    Some(Ok(Message::Close(_))) => Flow::Stop,
                    Some(Ok(_)) => Flow::Continue,
                },
                _ = &mut timer => {
                    let now = Instant::now();
                    if now >= last_activity + idle {
                        tracing::info!("deepgram: no audio or KeepAlive for {idle:?}; closing with NET-0001");
                        Flow::Close(1011, "NET-0001".into())
                    } else {
                        idle_check = last_activity + idle;
                        self.on_timers(now);
                        Flow::Continue
                    }
                }
            };
            if self.flush_out(&mut socket).await.is_err() {
                return;
            }
            match flow {
                Flow::Continue => {}
                Flow::Stop => return,
                Flow::Close(code, reason) => {
                    close_ws(&mut socket, code, &reason).await;
                    return;
                }
            }
        }
    }

    async fn flush_out(&mut self, socket: &mut WebSocket) -> Result<(), axum::Error> {
        for m in self.out.drain(..) {
            socket.send(Message::Text(m.into())).await?;
        }
        Ok(())
    }

    fn on_text(&mut self, text: &str, last_activity: &mut Instant) -> Result<Flow, String> {
        let v: Value = serde_json::from_str(text).map_err(|e| format!("DATA-0000: text frame is not JSON: {e}"))?;
        match v.get("type").and_then(Value::as_str) {
            Some("KeepAlive") => {
                *last_activity = Instant::now();
                Ok(Flow::Continue)
            }
            Some("Finalize") => {
                self.finalize();
                Ok(Flow::Continue)
            }
            Some("CloseStream") => {
                self.close_stream();
                Ok(Flow::Close(1000, String::new()))
            }
            other => {
                tracing::warn!("deepgram: ignoring unknown control message type {other:?}");
                Ok(Flow::Continue)
            }
        }
    }

    fn on_audio(&mut self, bytes: &[u8]) {
        self.samples.clear();
        decode_pcm16(&mut self.odd_byte, bytes, &mut self.samples);
        self.events.clear();
        self.det.push(&self.samples, &mut self.events);
        let events = std::mem::take(&mut self.events);
        for ev in &events {
            self.on_event(*ev);
        }
        self.events = events;
    }

    fn on_event(&mut self, ev: DetEvent) {
        match ev {
            DetEvent::Onset { at_ms } => {
                let transcript = self.state.script.transcript(self.next_index).to_string();
                self.next_index += 1;
                self.state.counters.stt_utterances.fetch_add(1, Ordering::Relaxed);
                self.current = Some(Utt { transcript, onset_ms: at_ms, finalized: false });
                self.utt_end = None;
                if self.p.vad_events {
                    self.out.push(
                        json!({"type":"SpeechStarted","channel":[0],"timestamp":round3(secs(at_ms))}).to_string(),
                    );
                }
            }
            DetEvent::Interim { onset_ms, speech_ms } => {
                if !self.p.interim_results {
                    return;
                }
                if let Some(u) = &self.current {
                    if !u.finalized {
                        let total = u.transcript.split_whitespace().count();
                        let k = interim_word_count(speech_ms, total);
                        let msg = self.results(&u.transcript, k, onset_ms, speech_ms, false, false, false);
                        self.out.push(msg);
                    }
                }
            }
            DetEvent::End { end_ms, .. } => {
                if let Some(u) = self.current.take() {
                    if u.finalized {
                        self.schedule_utt_end(end_ms);
                    } else {
                        let due = Instant::now() + Latencies::dur(&self.state.lat.stt_latency_ms);
                        self.pending.push_back(PendingFinal { due, utt: u, end_ms });
                    }
                }
            }
        }
    }

    fn schedule_utt_end(&mut self, end_ms: u64) {
        if let Some(ms) = self.p.utterance_end_ms {
            self.utt_end = Some((Instant::now() + Duration::from_millis(ms), end_ms));
        }
    }

    fn on_timers(&mut self, now: Instant) {
        while self.pending.front().is_some_and(|f| f.due <= now) {
            if let Some(f) = self.pending.pop_front() {
                self.send_final(&f.utt, f.end_ms, self.p.endpointing_ms.is_some(), false);
                self.schedule_utt_end(f.end_ms);
            }
        }
        if let Some((due, end_ms)) = self.utt_end {
            if due <= now {
                self.utt_end = None;
                self.out.push(
                    json!({"type":"UtteranceEnd","channel":[0,1],"last_word_end":round3(secs(end_ms))}).to_string(),
                );
            }
        }
    }

    fn send_final(&mut self, u: &Utt, end_ms: u64, speech_final: bool, from_finalize: bool) {
        let n = u.transcript.split_whitespace().count();
        let dur = end_ms.saturating_sub(u.onset_ms);
        let msg = self.results(&u.transcript, n, u.onset_ms, dur, true, speech_final, from_finalize);
        self.out.push(msg);
    }

    /// `{"type":"Finalize"}`: finalise whatever is pending or in progress, once.
    fn finalize(&mut self) {
        if !self.pending.is_empty() {
            while let Some(f) = self.pending.pop_front() {
                // Endpointing had already detected the pause: this is the end of speech.
                self.send_final(&f.utt, f.end_ms, self.p.endpointing_ms.is_some(), true);
                self.schedule_utt_end(f.end_ms);
            }
            return;
        }
        let end_ms = self.det.last_speech_end_ms();
        if let (Some(u), Some(end_ms)) = (self.current.clone(), end_ms) {
            if !u.finalized {
                // Speech may still be going on: is_final but not speech_final.
                self.send_final(&u, end_ms, false, true);
                if let Some(c) = self.current.as_mut() {
                    c.finalized = true;
                }
            }
        }
    }

    /// `{"type":"CloseStream"}`: flush finals, then Metadata; the caller closes with 1000.
    fn close_stream(&mut self) {
        while let Some(f) = self.pending.pop_front() {
            self.send_final(&f.utt, f.end_ms, self.p.endpointing_ms.is_some(), false);
        }
        if let Some(DetEvent::End { end_ms, .. }) = self.det.force_end() {
            if let Some(u) = self.current.take() {
                if !u.finalized {
                    self.send_final(&u, end_ms, true, false);
                }
            }
        }
        self.utt_end = None;
        self.out.push(
            json!({
                "type": "Metadata",
                "transaction_key": "deprecated",
                "request_id": self.request_id,
                "sha256": "0000000000000000000000000000000000000000000000000000000000000000",
                "created": chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
                "duration": round3(secs(self.det.audio_ms())),
                "channels": 1,
                "models": [MODEL_UUID],
                "model_info": {MODEL_UUID: {"name":"general-nova-3","version":"2025-01-01.0","arch":"nova-3"}},
            })
            .to_string(),
        );
    }

    #[allow(clippy::too_many_arguments)]
    fn results(
        &self,
        transcript: &str,
        k: usize,
        start_ms: u64,
        dur_ms: u64,
        is_final: bool,
        speech_final: bool,
        from_finalize: bool,
    ) -> String {
        results_json(&self.request_id, transcript, k, start_ms, dur_ms, is_final, speech_final, from_finalize)
            .to_string()
    }
}

/// A `Results` message with the first `k` words of `transcript`, spread evenly over the segment.
#[allow(clippy::too_many_arguments)]
pub fn results_json(
    request_id: &str,
    transcript: &str,
    k: usize,
    start_ms: u64,
    dur_ms: u64,
    is_final: bool,
    speech_final: bool,
    from_finalize: bool,
) -> Value {
    let tokens: Vec<&str> = transcript.split_whitespace().take(k).collect();
    let n = tokens.len().max(1) as f64;
    let per = secs(dur_ms) / n;
    let start = secs(start_ms);
    let words: Vec<Value> = tokens
        .iter()
        .enumerate()
        .map(|(i, t)| {
            json!({
                "word": bare_word(t),
                "start": round3(start + per * i as f64),
                "end": round3(start + per * (i + 1) as f64),
                "confidence": 0.98,
                "punctuated_word": t,
            })
        })
        .collect();
    json!({
        "type": "Results",
        "channel_index": [0, 1],
        "duration": round3(secs(dur_ms)),
        "start": round3(start),
        "is_final": is_final,
        "speech_final": speech_final,
        "from_finalize": from_finalize,
        "channel": {"alternatives": [{
            "transcript": tokens.join(" "),
            "confidence": if tokens.is_empty() { 0.0 } else { 0.98 },
            "words": words,
        }]},
        "metadata": {
            "request_id": request_id,
            "model_uuid": MODEL_UUID,
            "model_info": {"name": "general-nova-3", "version": "2025-01-01.0", "arch": "nova-3"},
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn q(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    #[test]
    fn params_are_validated() {
        assert!(parse_params(&q(&[("sample_rate", "8000")]), 200).unwrap_err().contains("encoding"));
        assert!(parse_params(&q(&[("encoding", "mulaw"), ("sample_rate", "8000")]), 200).is_err());
        assert!(parse_params(&q(&[("encoding", "linear16")]), 200).unwrap_err().contains("sample_rate"));
        assert!(parse_params(&q(&[("encoding", "linear16"), ("sample_rate", "x")]), 200).is_err());
        let p = parse_params(
            &q(&[
                ("encoding", "linear16"),
                ("sample_rate", "8000"),
                ("interim_results", "true"),
                ("utterance_end_ms", "1000"),
                ("vad_events", "true"),
            ]),
            200,
        )
        .unwrap();
        assert_eq!(
            (p.sample_rate, p.interim_results, p.endpointing_ms, p.utterance_end_ms, p.vad_events),
            (8000, true, Some(200), Some(1000), true)
        );
        let p = parse_params(&q(&[("encoding", "linear16"), ("sample_rate", "16000"), ("endpointing", "false")]), 200)
            .unwrap();
        assert_eq!(p.endpointing_ms, None);
    }

    #[test]
    fn results_shape() {
        let v = results_json("r", "Actually wait, I have", 2, 1000, 500, false, false, false);
        assert_eq!(v["channel"]["alternatives"][0]["transcript"], "Actually wait,");
        let w = &v["channel"]["alternatives"][0]["words"];
        assert_eq!(w[1]["word"], "wait");
        assert_eq!(w[1]["punctuated_word"], "wait,");
        assert_eq!(w[1]["start"], 1.25);
        assert_eq!(w[1]["end"], 1.5);
        for k in ["type", "channel_index", "duration", "start", "is_final", "speech_final", "from_finalize", "metadata"]
        {
            assert!(v.get(k).is_some(), "{k}");
        }
        assert!(v["metadata"]["model_info"]["name"].is_string());
    }
}
