//! `cxb-sim dial`: a load-generating telephony dialler, one tokio task per call. It speaks the
//! dialler WebSocket protocol (contract §6.1, wire-protocols §7) by default, and Exotel, Twilio,
//! Telnyx, Plivo or Vonage with `--protocol` (see [`crate::protocols`]).
//!
//! Sending keeps a fixed 20 ms frame clock, as a real dialler's packet clock does: a tick that
//! fires late (this process starved of CPU) sends its frame late, and the frames due meanwhile
//! follow at once (`MissedTickBehavior::Burst`), which the worker sees as network jitter. The
//! caller's audio therefore never runs slower than real time, and a late tick does not push
//! every later frame (and the end of every later say) back; the worker's VAD counts audio, not
//! wall time, so a short catch-up does not change its decisions. Latency is measured from the
//! *scheduled* instant of the frame holding the last speech sample (when the caller stopped
//! speaking), so the dialler's own lateness counts against the worker, never for it. A lag beyond
//! [`MAX_CATCH_UP`] restarts the clock instead of bursting (counted in `audio_drift_ms`); the
//! lag is reported as `max_send_lag_ms` and `send_lag_ms` (p50/p99 of every frame).
//!
//! Bot audio is modelled as a playback buffer, as a real dialler plays it: each `reverse-media`
//! frame plays for its duration after the previous one; `reverse-media-stop` clears the buffer.

use std::borrow::Cow;
use std::collections::{BTreeMap, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use base64::Engine;
use futures_util::{SinkExt, StreamExt};
use serde::Deserialize;
use serde_json::{json, Value};
use tokio::time::{Instant, MissedTickBehavior};
use tokio_tungstenite::tungstenite::{self, Message, Utf8Bytes};

use crate::audio::{load_wav, samples_for_ms};
use crate::protocols::{FramePayload, Protocol, Reply, Session, WireFormat};
use crate::stats::{Dist, MsHistogram};

/// A gap this long (with nothing playing) separates two bot utterances; also the `bot_done` gap.
pub const BOT_GAP: Duration = Duration::from_millis(600);
/// Playback-end tolerance for "the bot is speaking" (arrival jitter of paced frames).
const SPEAKING_TOLERANCE: Duration = Duration::from_millis(200);
const MAX_EXAMPLES: usize = 10;
const DIALLER_RATE: u32 = 8000;
/// Bot audio buffered further ahead of real time than this is a pacing violation (the worker
/// must pace playout; Exotel's 200 ms chunks plus the worker's lead stay far below it).
pub const MAX_AHEAD_MS: f64 = 1000.0;

#[derive(Debug, Clone)]
pub struct DialOptions {
    pub url: String,
    pub calls: usize,
    pub concurrency: usize,
    pub scenario: PathBuf,
    pub ramp_ms: u64,
    pub timeout_secs: u64,
    pub sim_url: Option<String>,
    pub out: Option<PathBuf>,
    pub frame_ms: u64,
}

/// Which telephony protocol `dial` speaks (default: the dialler WebSocket).
#[derive(Debug, Clone)]
pub struct ProtocolOptions {
    pub protocol: Protocol,
    /// Wire sample rate (protocol default when `None`).
    pub sample_rate: Option<u32>,
    /// Telnyx `PCMU|PCMA`, Plivo `mulaw|l16`.
    pub encoding: Option<String>,
}

impl Default for ProtocolOptions {
    fn default() -> Self {
        Self { protocol: Protocol::Dialler, sample_rate: None, encoding: None }
    }
}

/// A caller WAV cut into ready-to-send `media` frames.
#[derive(Debug)]
pub struct PreparedWav {
    pub path: String,
    pub frames: Vec<FramePayload>,
    /// Index of the frame holding the last speech sample (`None`: no speech in the file).
    pub speech_end_frame: Option<usize>,
}

#[derive(Debug, Clone)]
pub enum Step {
    WaitBotDone {
        timeout: Duration,
    },
    WaitBotSpeaking {
        after: Duration,
        timeout: Duration,
    },
    WaitBotHangup {
        timeout: Duration,
    },
    /// `turn`: 0-based ordinal of this say in the scenario (= the STT utterance it produces).
    Say {
        wav: Arc<PreparedWav>,
        turn: usize,
    },
    /// Line silence for `frames`, plus up to `jitter_frames` more chosen per call (stable for a
    /// given stream id), so calls answered together stop speaking in lockstep.
    Silence {
        frames: usize,
        jitter_frames: usize,
    },
    Hangup,
}

impl Step {
    fn name(&self) -> &'static str {
        match self {
            Step::WaitBotDone { .. } => "bot_done",
            Step::WaitBotSpeaking { .. } => "bot_speaking",
            Step::WaitBotHangup { .. } => "bot_hangup",
            Step::Say { .. } => "say",
            Step::Silence { .. } => "silence",
            Step::Hangup => "hangup",
        }
    }
}

pub fn media_frame(samples: &[i16]) -> Utf8Bytes {
    let mut bytes = Vec::with_capacity(samples.len() * 2);
    for s in samples {
        bytes.extend_from_slice(&s.to_le_bytes());
    }
    let b64 = base64::engine::general_purpose::STANDARD.encode(bytes);
    Utf8Bytes::from(format!("{{\"event\":\"media\",\"payload\":\"{b64}\"}}"))
}

fn resolve(path: &str, scenario: &Path) -> PathBuf {
    let p = PathBuf::from(path);
    if p.is_absolute() || p.exists() {
        return p;
    }
    // Relative to the scenario file, or to the repository root two levels above assets/sim/.
    let dir = scenario.parent().unwrap_or(Path::new("."));
    for base in [dir.to_path_buf(), dir.join("../..")] {
        let c = base.join(path);
        if c.exists() {
            return c;
        }
    }
    p
}

pub fn prepare_wav(path: &Path, frame_ms: u64, fmt: &WireFormat) -> anyhow::Result<PreparedWav> {
    let wav = load_wav(path)?;
    if wav.sample_rate != DIALLER_RATE {
        anyhow::bail!("{}: the dialler streams 8 kHz; this file is {} Hz", path.display(), wav.sample_rate);
    }
    let n = samples_for_ms(DIALLER_RATE, frame_ms).max(1);
    let mut frames = Vec::with_capacity(wav.samples.len().div_ceil(n));
    let mut buf = vec![0i16; n];
    for c in wav.samples.chunks(n) {
        buf.fill(0);
        buf[..c.len()].copy_from_slice(c);
        frames.push(fmt.frame(&buf));
    }
    let speech_end_frame = (wav.speech_end > 0).then(|| (wav.speech_end - 1) / n);
    Ok(PreparedWav { path: path.display().to_string(), frames, speech_end_frame })
}

/// A value in `0..=max` that depends only on the call's stream id and the step: runs repeat.
fn per_call_jitter(stream_id: &str, step: usize, max: usize) -> usize {
    use std::hash::{Hash, Hasher};
    if max == 0 {
        return 0;
    }
    let mut h = std::collections::hash_map::DefaultHasher::new();
    (stream_id, step).hash(&mut h);
    (h.finish() % (max as u64 + 1)) as usize
}

fn ms_field(step: &Value, key: &str, default: u64) -> anyhow::Result<Duration> {
    match step.get(key) {
        None => Ok(Duration::from_millis(default)),
        Some(v) => v
            .as_u64()
            .map(Duration::from_millis)
            .ok_or_else(|| anyhow::anyhow!("{key} must be a non-negative integer (ms) in {step}")),
    }
}

/// Loads a scenario (`{"steps":[...]}`) and prepares its WAVs.
pub fn load_scenario(path: &Path, frame_ms: u64, fmt: &WireFormat) -> anyhow::Result<Vec<Step>> {
    let text = std::fs::read_to_string(path).map_err(|e| anyhow::anyhow!("cannot read {}: {e}", path.display()))?;
    let v: Value = serde_json::from_str(&text).map_err(|e| anyhow::anyhow!("{} is not JSON: {e}", path.display()))?;
    let steps = v
        .get("steps")
        .and_then(Value::as_array)
        .ok_or_else(|| anyhow::anyhow!("{}: expected {{\"steps\":[...]}}", path.display()))?;
    let mut out = Vec::new();
    let mut wavs: BTreeMap<PathBuf, Arc<PreparedWav>> = BTreeMap::new();
    let mut turn = 0;
    for s in steps {
        let step = if let Some(w) = s.get("wait") {
            match w.as_str() {
                Some("bot_done") => Step::WaitBotDone { timeout: ms_field(s, "timeout_ms", 15_000)? },
                Some("bot_speaking") => Step::WaitBotSpeaking {
                    after: ms_field(s, "after_ms", 0)?,
                    timeout: ms_field(s, "timeout_ms", 15_000)?,
                },
                Some("bot_hangup") => Step::WaitBotHangup { timeout: ms_field(s, "timeout_ms", 20_000)? },
                _ => anyhow::bail!("unknown wait {w} (bot_done|bot_speaking|bot_hangup)"),
            }
        } else if let Some(p) = s.get("say") {
            let p = p.as_str().ok_or_else(|| anyhow::anyhow!("say must be a WAV path: {s}"))?;
            let full = resolve(p, path);
            let wav = match wavs.get(&full) {
                Some(w) => w.clone(),
                None => {
                    let w = Arc::new(prepare_wav(&full, frame_ms, fmt)?);
                    wavs.insert(full, w.clone());
                    w
                }
            };
            turn += 1;
            Step::Say { wav, turn: turn - 1 }
        } else if s.get("silence_ms").is_some() {
            let to_frames = |d: Duration| (d.as_millis() as u64).div_ceil(frame_ms.max(1)) as usize;
            Step::Silence {
                frames: to_frames(ms_field(s, "silence_ms", 0)?),
                jitter_frames: to_frames(ms_field(s, "jitter_ms", 0)?),
            }
        } else if s.get("hangup").and_then(Value::as_bool) == Some(true) {
            Step::Hangup
        } else {
            anyhow::bail!("unknown scenario step {s}");
        };
        out.push(step);
    }
    Ok(out)
}

/// What `/sim/settings` tells us about injected latencies.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct SimSettings {
    #[serde(default)]
    pub stt_latency_ms: u64,
    #[serde(default)]
    pub stt_endpointing_ms: u64,
    #[serde(default)]
    pub llm_ttft_ms: u64,
    #[serde(default)]
    pub llm_token_interval_ms: u64,
    #[serde(default)]
    pub tts_ttfb_ms: u64,
    #[serde(default)]
    pub first_sentence_chunks: Vec<usize>,
}

impl SimSettings {
    /// Injected delay on the path from "caller stopped" to "first bot audio" for caller turn N:
    /// llm_ttft + tts_ttfb + llm_token_interval × (LLM chunks up to the end of the reply's first
    /// sentence). STT endpointing and STT latency are NOT subtracted (the worker may cut them
    /// short with Finalize); they are reported separately.
    pub fn injected_ms(&self, turn: usize) -> f64 {
        let chunks = self.first_sentence_chunks.get(turn).copied().unwrap_or(0) as u64;
        (self.llm_ttft_ms + self.tts_ttfb_ms + self.llm_token_interval_ms * chunks) as f64
    }
}

/// Per-call measurements.
#[derive(Debug, Default)]
pub struct CallReport {
    pub failure: Option<String>,
    /// (latency ms, injected ms)
    pub latencies: Vec<(f64, f64)>,
    pub violations: BTreeMap<String, u64>,
    pub examples: Vec<String>,
    pub payload_size_mismatches: u64,
    pub bot_frames: u64,
    pub barge_in_says: u64,
    pub media_stops_after_barge_in: u64,
    pub barge_in_stop_ms: Vec<f64>,
    pub media_stops_total: u64,
    pub bot_hangups: u64,
    pub transfers: u64,
    /// How late each caller frame went out against the frame clock (its max is the worst).
    pub send_lag: MsHistogram,
    pub audio_drift_ms: f64,
    /// Playback marks (mark / checkpoint / notify) the bot placed, and the echoes we sent back.
    pub marks_sent: u64,
    pub marks_echoed: u64,
    /// Bot hang-ups seen as the provider's REST call (verified by the sim) / as a socket close.
    pub rest_hangups: u64,
    pub close_hangups: u64,
    /// Most bot audio ever buffered ahead of real time (ms).
    pub max_ahead_ms: f64,
    /// From the last handshake frame (`answer`) to the first audible bot frame (the greeting).
    pub opening_ms: Option<f64>,
    /// Connect to end of this call.
    pub call_secs: f64,
    /// Audible bot audio (ms) after the caller's last speech and before the bot hung up: the
    /// goodbye the caller heard (`None`: the bot did not hang up).
    pub goodbye_ms: Option<f64>,
}

impl CallReport {
    pub fn violation(&mut self, kind: &str, example: impl FnOnce() -> String) {
        *self.violations.entry(kind.to_string()).or_default() += 1;
        if self.examples.len() < MAX_EXAMPLES {
            self.examples.push(format!("{kind}: {}", example()));
        }
    }
}

/// Immutable things every call shares.
pub struct Shared {
    pub url: String,
    pub steps: Vec<Step>,
    pub silence: FramePayload,
    pub fmt: Arc<WireFormat>,
    pub sim_url: Option<String>,
    pub http: reqwest::Client,
    pub frame: Duration,
    pub settings: Option<SimSettings>,
    pub timeout: Duration,
    pub number_base: u64,
}

#[derive(Deserialize)]
struct BotFrame<'a> {
    #[serde(borrow)]
    event: Cow<'a, str>,
    chunk: Option<i64>,
    #[serde(borrow)]
    did: Option<Cow<'a, str>>,
    #[serde(borrow)]
    payload: Option<Cow<'a, str>>,
    #[serde(borrow)]
    timestamp: Option<Cow<'a, str>>,
    #[serde(rename = "streamId", borrow)]
    stream_id: Option<Cow<'a, str>>,
    #[serde(rename = "callerId", borrow)]
    caller_id: Option<Cow<'a, str>>,
    chunk_durn_ms: Option<f64>,
    #[serde(rename = "callDirection", borrow)]
    call_direction: Option<Cow<'a, str>>,
    #[serde(borrow)]
    encoding: Option<Cow<'a, str>>,
    #[serde(rename = "RevMediaQ")]
    rev_media_q: Option<f64>,
    #[serde(borrow)]
    source: Option<Cow<'a, str>>,
    #[serde(rename = "transferTo", borrow)]
    transfer_to: Option<Cow<'a, str>>,
    #[serde(borrow)]
    message: Option<Cow<'a, str>>,
}

/// `YYYY-MM-DD HH:MM:SS`
pub fn valid_timestamp(s: &str) -> bool {
    let b = s.as_bytes();
    b.len() == 19
        && b.iter().enumerate().all(|(i, c)| match i {
            4 | 7 => *c == b'-',
            10 => *c == b' ',
            13 | 16 => *c == b':',
            _ => c.is_ascii_digit(),
        })
}

/// What a bot frame meant for the call.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum BotEvent {
    Media { audible: bool, dur: Duration },
    MediaStop,
    Hangup,
    Transfer,
    Ignored,
}

/// Validates bot → dialler frames of one call.
pub struct Validator {
    pub stream_id: String,
    pub caller_id: String,
    pub did: String,
    last_chunk: Option<i64>,
    buf: Vec<u8>,
}

impl Validator {
    pub fn new(stream_id: &str, caller_id: &str, did: &str) -> Self {
        Self {
            stream_id: stream_id.into(),
            caller_id: caller_id.into(),
            did: did.into(),
            last_chunk: None,
            buf: Vec::with_capacity(4096),
        }
    }

    pub fn check(&mut self, text: &str, rep: &mut CallReport) -> BotEvent {
        let f: BotFrame<'_> = match serde_json::from_str(text) {
            Ok(f) => f,
            Err(e) => {
                let v: Result<Value, _> = serde_json::from_str(text);
                match v {
                    Err(_) => rep.violation("not_json", || trunc(text)),
                    Ok(v) => {
                        let ev = v.get("event").and_then(Value::as_str).unwrap_or("?").to_string();
                        rep.violation(&format!("{}.bad_field_type", trunc_name(&ev)), || {
                            format!("{e}: {}", trunc(text))
                        });
                        // Still follow the conversation as well as we can.
                        return match ev.as_str() {
                            "reverse-media-stop" => BotEvent::MediaStop,
                            "reverse-hangup-call" => BotEvent::Hangup,
                            "reverse-call-transfer" => BotEvent::Transfer,
                            _ => BotEvent::Ignored,
                        };
                    }
                }
                return BotEvent::Ignored;
            }
        };
        let ident = |rep: &mut CallReport, ev: &str, key: &str, got: &Option<Cow<'_, str>>, want: &str| match got {
            None => rep.violation(&format!("{ev}.missing.{key}"), || trunc(text)),
            Some(g) if g != want => rep.violation(&format!("{ev}.wrong.{key}"), || format!("got {g:?}, want {want:?}")),
            _ => {}
        };
        match f.event.as_ref() {
            "reverse-media" => {
                rep.bot_frames += 1;
                const EV: &str = "reverse-media";
                ident(rep, EV, "streamId", &f.stream_id, &self.stream_id);
                ident(rep, EV, "callerId", &f.caller_id, &self.caller_id);
                ident(rep, EV, "did", &f.did, &self.did);
                ident(rep, EV, "callDirection", &f.call_direction, "incoming");
                ident(rep, EV, "encoding", &f.encoding, "LINEAR");
                ident(rep, EV, "source", &f.source, "ai");
                match &f.timestamp {
                    None => rep.violation("reverse-media.missing.timestamp", || trunc(text)),
                    Some(t) if !valid_timestamp(t) => rep.violation("reverse-media.bad_timestamp", || t.to_string()),
                    _ => {}
                }
                if f.rev_media_q.is_none() {
                    rep.violation("reverse-media.missing.RevMediaQ", || trunc(text));
                }
                match f.chunk {
                    None => rep.violation("reverse-media.missing.chunk", || trunc(text)),
                    Some(c) => {
                        if let Some(prev) = self.last_chunk {
                            if c != prev + 1 {
                                rep.violation("reverse-media.chunk_not_incrementing", || format!("{prev} -> {c}"));
                            }
                        }
                        self.last_chunk = Some(c);
                    }
                }
                let Some(payload) = &f.payload else {
                    rep.violation("reverse-media.missing.payload", || trunc(text));
                    return BotEvent::Ignored;
                };
                self.buf.clear();
                if base64::engine::general_purpose::STANDARD.decode_vec(payload.as_bytes(), &mut self.buf).is_err() {
                    rep.violation("reverse-media.payload_not_base64", || trunc(text));
                    return BotEvent::Ignored;
                }
                let bytes = self.buf.len();
                let declared = match f.chunk_durn_ms {
                    None => {
                        rep.violation("reverse-media.missing.chunk_durn_ms", || trunc(text));
                        None
                    }
                    Some(d) => Some(d),
                };
                // 8 kHz 16-bit mono: 16 bytes per ms (320 bytes per 20 ms).
                let expect = declared.map(|d| (d * 16.0).round() as usize);
                if !bytes.is_multiple_of(2) || expect.is_some_and(|e| e != bytes) {
                    rep.payload_size_mismatches += 1;
                    rep.violation("reverse-media.payload_size", || {
                        format!("{bytes} bytes for chunk_durn_ms {}", declared.unwrap_or(f64::NAN))
                    });
                }
                let audible = self.buf.iter().any(|b| *b != 0);
                let dur = Duration::from_micros((bytes as u64 / 2) * 1_000_000 / u64::from(DIALLER_RATE));
                BotEvent::Media { audible, dur }
            }
            "reverse-media-stop" => {
                ident(rep, "reverse-media-stop", "streamId", &f.stream_id, &self.stream_id);
                ident(rep, "reverse-media-stop", "callerId", &f.caller_id, &self.caller_id);
                BotEvent::MediaStop
            }
            "reverse-hangup-call" => {
                const EV: &str = "reverse-hangup-call";
                ident(rep, EV, "streamId", &f.stream_id, &self.stream_id);
                ident(rep, EV, "callerId", &f.caller_id, &self.caller_id);
                if f.source.is_none() {
                    rep.violation("reverse-hangup-call.missing.source", || trunc(text));
                }
                if f.message.is_none() {
                    rep.violation("reverse-hangup-call.missing.message", || trunc(text));
                }
                BotEvent::Hangup
            }
            "reverse-call-transfer" => {
                ident(rep, "reverse-call-transfer", "streamId", &f.stream_id, &self.stream_id);
                ident(rep, "reverse-call-transfer", "callerId", &f.caller_id, &self.caller_id);
                if f.transfer_to.as_deref().is_none_or(str::is_empty) {
                    rep.violation("reverse-call-transfer.missing.transferTo", || trunc(text));
                }
                BotEvent::Transfer
            }
            other => {
                rep.violation(&format!("unknown_event.{}", trunc_name(other)), || trunc(text));
                BotEvent::Ignored
            }
        }
    }
}

fn trunc(s: &str) -> String {
    let mut out: String = s.chars().take(200).collect();
    if out.len() < s.len() {
        out.push('…');
    }
    out
}

fn trunc_name(s: &str) -> String {
    s.chars().filter(|c| c.is_ascii_graphic()).take(32).collect()
}

/// The bot side as the dialler's playback buffer sees it.
#[derive(Debug, Default)]
struct BotPlayback {
    /// When everything received so far has finished playing.
    playout_end: Option<Instant>,
    /// When the last audible frame finishes playing.
    speech_end: Option<Instant>,
    /// Arrival of the first audible frame of the current utterance.
    utt_start: Option<Instant>,
    /// Audible frames received so far.
    audible_frames: u64,
    stopped_since_audio: bool,
    hangup: bool,
}

impl BotPlayback {
    /// Returns true when this audible frame starts a new bot utterance.
    fn on_media(&mut self, now: Instant, audible: bool, dur: Duration) -> bool {
        let start = self.playout_end.map_or(now, |p| p.max(now));
        self.playout_end = Some(start + dur);
        if !audible {
            return false;
        }
        let new_utt = self.stopped_since_audio || self.speech_end.is_none_or(|e| now >= e + BOT_GAP);
        self.speech_end = Some(start + dur);
        self.audible_frames += 1;
        self.stopped_since_audio = false;
        if new_utt {
            self.utt_start = Some(now);
        }
        new_utt
    }

    fn on_stop(&mut self, now: Instant) {
        self.playout_end = Some(now);
        if let Some(e) = self.speech_end.as_mut() {
            *e = (*e).min(now);
        }
        self.stopped_since_audio = true;
    }

    /// Bot audio received but not yet played, in ms.
    fn ahead_ms(&self, now: Instant) -> f64 {
        self.playout_end.map_or(0.0, |p| p.saturating_duration_since(now).as_secs_f64() * 1000.0)
    }

    fn speaking(&self, now: Instant) -> bool {
        self.speech_end.is_some_and(|e| now < e + SPEAKING_TOLERANCE) && !self.stopped_since_audio
    }
}

/// Progress counters shared by all calls.
#[derive(Debug, Default)]
pub struct Progress {
    pub active: AtomicUsize,
    pub completed: AtomicU64,
    pub failed: AtomicU64,
}

struct Call<'a> {
    sh: &'a Shared,
    sess: Session,
    /// Mark echoes due once the bot audio before them has played: (due, frame).
    echoes: VecDeque<(Instant, Message)>,
    rep: CallReport,
    bot: BotPlayback,
    step: usize,
    step_entered: Option<Instant>,
    /// audible-frame count when the current wait began
    wait_mark: u64,
    say_pos: usize,
    silence_left: usize,
    /// (speech end sent at, injected ms) of the last say, until a reply starts
    pending_latency: Option<(Instant, f64)>,
    /// start of the current barge-in say, until a media-stop is seen
    barge_in_open: Option<Instant>,
    /// When the handshake finished, until the greeting's first audible frame arrives.
    answered_at: Option<Instant>,
    /// Audible bot audio since the caller's last speech ended (the goodbye, at a hang-up).
    audible_since_speech_ms: f64,
}

type Ws = tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

enum Next {
    Continue,
    Done,
}

impl<'a> Call<'a> {
    fn new(sh: &'a Shared, sess: Session) -> Self {
        Self {
            sh,
            sess,
            echoes: VecDeque::new(),
            rep: CallReport::default(),
            bot: BotPlayback::default(),
            step: 0,
            step_entered: None,
            wait_mark: 0,
            say_pos: 0,
            silence_left: 0,
            pending_latency: None,
            barge_in_open: None,
            answered_at: None,
            audible_since_speech_ms: 0.0,
        }
    }

    fn next_step(&mut self) {
        self.step += 1;
        self.step_entered = None;
    }

    /// Runs steps that can progress now (waits, starting says/silences, hangups).
    async fn advance(&mut self, ws: &mut Ws, now: Instant) -> Result<Next, String> {
        loop {
            let Some(step) = self.sh.steps.get(self.step) else {
                // Scenario over without an explicit end: the customer hangs up.
                hangup(ws, self.sess.customer_hangup()).await;
                return Ok(Next::Done);
            };
            let first = self.step_entered.is_none();
            let entered = *self.step_entered.get_or_insert(now);
            match step {
                Step::WaitBotDone { timeout }
                | Step::WaitBotSpeaking { timeout, .. }
                | Step::WaitBotHangup { timeout } => {
                    if first {
                        self.wait_mark = self.bot.audible_frames;
                    }
                    let met = match step {
                        Step::WaitBotDone { .. } => {
                            self.bot.audible_frames > self.wait_mark
                                && self.bot.speech_end.is_some_and(|e| now >= e + BOT_GAP)
                        }
                        Step::WaitBotSpeaking { after, .. } => {
                            self.bot.speaking(now) && self.bot.utt_start.is_some_and(|s| now >= s + *after)
                        }
                        _ => self.bot.hangup,
                    };
                    if met {
                        if matches!(step, Step::WaitBotHangup { .. }) {
                            hangup(ws, self.sess.after_bot_hangup()).await;
                            return Ok(Next::Done);
                        }
                        self.next_step();
                        continue;
                    }
                    if now >= entered + *timeout {
                        return Err(format!("wait_timeout:{}(step {})", step.name(), self.step));
                    }
                    return Ok(Next::Continue);
                }
                Step::Say { .. } => {
                    if first {
                        self.say_pos = 0;
                        // A new say ends the wait for a reply to the previous one.
                        self.pending_latency = None;
                        self.barge_in_open = None;
                        if self.bot.speaking(now) {
                            self.rep.barge_in_says += 1;
                            self.barge_in_open = Some(now);
                        }
                    }
                    return Ok(Next::Continue);
                }
                Step::Silence { frames, jitter_frames } => {
                    if first {
                        self.silence_left = frames + per_call_jitter(&self.sess.stream_id, self.step, *jitter_frames);
                    }
                    if self.silence_left == 0 {
                        self.next_step();
                        continue;
                    }
                    return Ok(Next::Continue);
                }
                Step::Hangup => {
                    hangup(ws, self.sess.customer_hangup()).await;
                    return Ok(Next::Done);
                }
            }
        }
    }

    /// The frame to send on this tick (and bookkeeping for says/silences).
    fn frame_for_tick(&mut self) -> (FramePayload, Option<(bool, usize)>) {
        match self.sh.steps.get(self.step) {
            Some(Step::Say { wav, turn }) if self.step_entered.is_some() => {
                let i = self.say_pos;
                let f = wav.frames.get(i).cloned().unwrap_or_else(|| self.sh.silence.clone());
                self.say_pos += 1;
                let speech_end_now = wav.speech_end_frame == Some(i);
                (f, Some((speech_end_now, *turn)))
            }
            Some(Step::Silence { .. }) if self.step_entered.is_some() => {
                self.silence_left = self.silence_left.saturating_sub(1);
                (self.sh.silence.clone(), None)
            }
            _ => (self.sh.silence.clone(), None),
        }
    }

    /// `due`: when the frame was due on the frame clock (the caller's real time), not when this
    /// process got round to sending it.
    fn after_say_frame(&mut self, speech_end_now: bool, turn: usize, due: Instant) {
        if speech_end_now {
            let injected = self.sh.settings.as_ref().map_or(0.0, |s| s.injected_ms(turn));
            self.pending_latency = Some((due, injected));
            self.audible_since_speech_ms = 0.0;
        }
        if let Some(Step::Say { wav, .. }) = self.sh.steps.get(self.step) {
            if self.say_pos >= wav.frames.len() {
                self.next_step();
            }
        }
    }

    fn on_bot_event(&mut self, ev: BotEvent, now: Instant) {
        match ev {
            BotEvent::Media { audible, dur } => {
                let new_utt = self.bot.on_media(now, audible, dur);
                if audible {
                    self.audible_since_speech_ms += dur.as_secs_f64() * 1000.0;
                    if let Some(answered) = self.answered_at.take() {
                        self.rep.opening_ms = Some(now.duration_since(answered).as_secs_f64() * 1000.0);
                    }
                }
                if new_utt {
                    if let Some((end, injected)) = self.pending_latency.take() {
                        let ms = now.duration_since(end).as_secs_f64() * 1000.0;
                        self.rep.latencies.push((ms, injected));
                    }
                }
            }
            BotEvent::MediaStop => {
                self.bot.on_stop(now);
                self.rep.media_stops_total += 1;
                if let Some(start) = self.barge_in_open.take() {
                    self.rep.media_stops_after_barge_in += 1;
                    self.rep.barge_in_stop_ms.push(now.duration_since(start).as_secs_f64() * 1000.0);
                }
            }
            BotEvent::Hangup => {
                self.bot.hangup = true;
                self.rep.bot_hangups += 1;
                self.rep.goodbye_ms = Some(self.audible_since_speech_ms);
            }
            BotEvent::Transfer => self.rep.transfers += 1,
            BotEvent::Ignored => {}
        }
    }
}

async fn send(ws: &mut Ws, m: Message) -> Result<(), String> {
    ws.send(m).await.map_err(|e| format!("send_failed:{}", err_kind(&e)))
}

/// Sends the protocol's hang-up frames (`hangup-call`, `stop`, …) and closes, waiting (≤ 2 s)
/// for the close handshake.
async fn hangup(ws: &mut Ws, msgs: Vec<Message>) {
    for m in msgs {
        let _ = ws.send(m).await;
    }
    let _ = ws.close(None).await;
    let _ = tokio::time::timeout(Duration::from_secs(2), async { while let Some(Ok(_)) = ws.next().await {} }).await;
}

fn err_kind(e: &tungstenite::Error) -> String {
    match e {
        tungstenite::Error::Io(io) => format!("{:?}", io.kind()),
        tungstenite::Error::ConnectionClosed | tungstenite::Error::AlreadyClosed => "closed".into(),
        tungstenite::Error::Protocol(p) => format!("protocol({p})").chars().take(60).collect(),
        other => other.to_string().chars().take(60).collect(),
    }
}

/// Read buffer of a dialler socket. tungstenite zero-fills the free part of its read buffer
/// before every socket read, including the read that only finds `WouldBlock` (so at least two per
/// received frame); at 128 KiB (the default) that memset dominated the dialler's CPU, at 8 KiB it
/// was still ~2.5 %. Bot frames are ~0.7 KiB (`reverse-media`, 20 ms) to ~4.5 KiB (Exotel's 3.2 KB
/// chunks); a frame larger than the buffer just takes more than one read.
pub const DIALLER_READ_BUFFER: usize = 2 * 1024;

pub fn ws_config() -> tungstenite::protocol::WebSocketConfig {
    tungstenite::protocol::WebSocketConfig::default().read_buffer_size(DIALLER_READ_BUFFER)
}

/// CPU seconds (user + system) this process has used so far, for the summary's
/// `dialler_cpu_secs` (the benchmark reports the load generator's cost next to the worker's).
pub fn process_cpu_secs() -> Option<f64> {
    // SAFETY: getrusage only writes the struct we pass.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    if unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut ru) } != 0 {
        return None;
    }
    let tv = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    Some(tv(ru.ru_utime) + tv(ru.ru_stime))
}

/// Runs one call to completion. Never panics; every wait is bounded by `sh.timeout`.
pub async fn run_call(index: usize, sh: &Shared) -> CallReport {
    let sess = Session::new(sh.fmt.clone(), index, sh.number_base, sh.frame.as_millis() as u64);
    let mut call = Call::new(sh, sess);
    let t0 = Instant::now();
    let deadline = t0 + sh.timeout;
    let res = tokio::time::timeout_at(deadline, drive(index, &mut call)).await;
    let mut rep = std::mem::take(&mut call.rep);
    rep.call_secs = t0.elapsed().as_secs_f64();
    match res {
        Ok(Ok(())) => {}
        Ok(Err(reason)) => rep.failure = Some(reason),
        Err(_) => rep.failure = Some(format!("call_timeout(step {})", call.step)),
    }
    rep
}

/// Aborts the REST hang-up watch when the call ends.
struct AbortOnDrop(tokio::task::JoinHandle<bool>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Long-polls the sim until the provider's REST hang-up for `call_id` arrived there (with the
/// right method, path, auth and body). `false`: the wait ended without one.
async fn watch_rest_hangup(
    http: reqwest::Client,
    sim_url: String,
    provider: &'static str,
    call_id: String,
    wait: Duration,
) -> bool {
    let url = format!("{}/sim/telephony-requests/wait", sim_url.trim_end_matches('/'));
    let ms = wait.as_millis().to_string();
    let r = http
        .get(&url)
        .query(&[("provider", provider), ("call_id", call_id.as_str()), ("timeout_ms", ms.as_str())])
        .timeout(wait + Duration::from_secs(5))
        .send()
        .await;
    matches!(r, Ok(resp) if resp.status().is_success())
}

async fn watch_or_pending(w: &mut Option<AbortOnDrop>) -> bool {
    match w {
        Some(h) => (&mut h.0).await.unwrap_or(false),
        None => std::future::pending().await,
    }
}

/// The bot ended the call by closing the socket: the hang-up primitive of Exotel and Vonage (and
/// of Twilio/Telnyx/Plivo without REST credentials).
fn closed_by_bot(call: &mut Call<'_>) -> bool {
    if call.sess.fmt.protocol == Protocol::Dialler
        || !matches!(call.sh.steps.get(call.step), Some(Step::WaitBotHangup { .. }))
    {
        return false;
    }
    call.bot.hangup = true;
    call.rep.bot_hangups += 1;
    call.rep.close_hangups += 1;
    call.rep.goodbye_ms = Some(call.audible_since_speech_ms);
    true
}

/// Less audible bot audio than this between the caller's last words and the bot's hang-up is
/// a hang-up in silence (no goodbye heard).
const MIN_GOODBYE_MS: f64 = 300.0;

/// The furthest the frame clock may fall behind before it restarts instead of catching up (the
/// catch-up would be a burst of this much audio).
const MAX_CATCH_UP: Duration = Duration::from_millis(200);

/// Offset of call `index`'s frame clock inside one frame period. A golden-ratio sequence spreads
/// the calls' send instants evenly over the period whatever the ramp: with the benchmark's 5 ms
/// ramp and 20 ms frames every call otherwise ticked at one of only 4 instants, so a quarter of
/// all calls sent their frames in one burst (the tail of each burst late, for the dialler and
/// for the worker reading them), where a real trunk's calls have unrelated packet clocks.
pub fn frame_phase(index: usize, frame: Duration) -> Duration {
    const PHI_FRACTION: f64 = 0.618_033_988_749_894_9;
    frame.mul_f64((index as f64 * PHI_FRACTION).fract())
}

async fn drive(index: usize, call: &mut Call<'_>) -> Result<(), String> {
    let sh = call.sh;
    let url = call.sess.url(&sh.url);
    let connect = tokio_tungstenite::connect_async_with_config(url.as_str(), Some(ws_config()), true);
    let (mut ws, _) = match tokio::time::timeout(Duration::from_secs(10), connect).await {
        Err(_) => return Err("connect_timeout".into()),
        Ok(Err(tungstenite::Error::Http(resp))) => return Err(format!("refused:{}", resp.status().as_u16())),
        Ok(Err(e)) => return Err(format!("connect:{}", err_kind(&e))),
        Ok(Ok(x)) => x,
    };
    for m in call.sess.handshake() {
        send(&mut ws, m).await?;
    }
    let answered = Instant::now();
    call.answered_at = Some(answered);
    let mut watch = match (call.sess.rest_hangup_id(), &sh.sim_url) {
        (Some((provider, id)), Some(sim)) => Some(AbortOnDrop(tokio::spawn(watch_rest_hangup(
            sh.http.clone(),
            sim.clone(),
            provider,
            id.to_string(),
            sh.timeout,
        )))),
        _ => None,
    };
    // The first caller frame goes out within one frame period of `answer`.
    let first_tick = answered + frame_phase(index, sh.frame);
    let mut ticker = tokio::time::interval_at(first_tick, sh.frame);
    ticker.set_missed_tick_behavior(MissedTickBehavior::Burst);
    let mut frames_sent: u64 = 0;

    if let Next::Done = call.advance(&mut ws, answered).await? {
        return Ok(());
    }
    loop {
        tokio::select! {
            // Polled in this order, and only until one is ready: a tick wake-up (50 per second
            // per call) then sends its frame without polling the socket for nothing (a poll of
            // an idle tungstenite stream is a waker swap plus a zero-filled read attempt). A tick
            // is ready at most once per frame (`Delay`), so it cannot starve the reads.
            biased;
            scheduled = ticker.tick() => {
                let now = Instant::now();
                let late = now.saturating_duration_since(scheduled);
                call.rep.send_lag.record(late.as_secs_f64() * 1000.0);
                if late > MAX_CATCH_UP {
                    // Too far behind to catch up without a long burst: restart the clock.
                    ticker.reset();
                }
                while call.echoes.front().is_some_and(|(due, _)| *due <= now) {
                    let (_, m) = call.echoes.pop_front().expect("checked");
                    call.rep.marks_echoed += 1;
                    send(&mut ws, m).await?;
                }
                let (frame, say) = call.frame_for_tick();
                let msg = call.sess.media(&frame);
                send(&mut ws, msg).await?;
                frames_sent += 1;
                let sent_at = Instant::now();
                if let Some((speech_end_now, turn)) = say {
                    call.after_say_frame(speech_end_now, turn, scheduled);
                }
                let elapsed = sent_at.duration_since(first_tick).as_secs_f64() * 1000.0;
                call.rep.audio_drift_ms = elapsed - (frames_sent - 1) as f64 * sh.frame.as_secs_f64() * 1000.0;
                if let Next::Done = call.advance(&mut ws, sent_at).await? {
                    return Ok(());
                }
            }
            msg = ws.next() => {
                let now = Instant::now();
                let checked = match msg {
                    None => {
                        if closed_by_bot(call) {
                            return Ok(());
                        }
                        return Err(format!("server_closed(step {})", call.step));
                    }
                    Some(Err(e)) => return Err(format!("ws_error:{}(step {})", err_kind(&e), call.step)),
                    Some(Ok(Message::Text(t))) => call.sess.check_text(t.as_str(), &mut call.rep),
                    Some(Ok(Message::Binary(b))) => call.sess.check_binary(&b, &mut call.rep),
                    Some(Ok(Message::Close(cf))) => {
                        if closed_by_bot(call) {
                            let _ = ws.close(None).await;
                            return Ok(());
                        }
                        let code = cf.map(|c| u16::from(c.code).to_string()).unwrap_or_else(|| "none".into());
                        return Err(format!("server_closed:{code}(step {})", call.step));
                    }
                    Some(Ok(_)) => BotEvent::Ignored.into(),
                };
                let ev = checked.ev;
                call.on_bot_event(ev, now);
                if let BotEvent::Media { .. } = ev {
                    let ahead = call.bot.ahead_ms(now);
                    if ahead > call.rep.max_ahead_ms {
                        call.rep.max_ahead_ms = ahead;
                    }
                    if ahead > MAX_AHEAD_MS {
                        call.rep.violation("media.ahead_of_real_time", || format!("{ahead:.0} ms of bot audio buffered"));
                    }
                }
                if ev == BotEvent::MediaStop {
                    if call.sess.echo_marks_on_clear() {
                        // Twilio echoes the marks a clear dropped, at once.
                        while let Some((_, m)) = call.echoes.pop_front() {
                            call.rep.marks_echoed += 1;
                            send(&mut ws, m).await?;
                        }
                    } else {
                        call.echoes.clear();
                    }
                }
                match checked.reply {
                    Some(Reply::Now(m)) => send(&mut ws, m).await?,
                    Some(Reply::AfterPlayout(m)) => {
                        let due = call.bot.playout_end.map_or(now, |p| p.max(now));
                        call.echoes.push_back((due, m));
                    }
                    None => {}
                }
                if ev == BotEvent::Hangup && !matches!(sh.steps.get(call.step), Some(Step::WaitBotHangup { .. })) {
                    let step = call.step;
                    hangup(&mut ws, call.sess.after_bot_hangup()).await;
                    return Err(format!("unexpected_bot_hangup(step {step})"));
                }
                if let Next::Done = call.advance(&mut ws, now).await? {
                    return Ok(());
                }
            }
            verified = watch_or_pending(&mut watch) => {
                watch = None;
                if !verified {
                    continue;
                }
                // The provider got the REST hang-up: it ends the stream (`stop`, close).
                let now = Instant::now();
                call.rep.rest_hangups += 1;
                call.on_bot_event(BotEvent::Hangup, now);
                if !matches!(sh.steps.get(call.step), Some(Step::WaitBotHangup { .. })) {
                    let step = call.step;
                    hangup(&mut ws, call.sess.after_bot_hangup()).await;
                    return Err(format!("unexpected_bot_hangup(step {step})"));
                }
                if let Next::Done = call.advance(&mut ws, now).await? {
                    return Ok(());
                }
            }
        }
    }
}

/// Fetches `/sim/settings` (bounded: 5 s).
pub async fn fetch_settings(sim_url: &str) -> anyhow::Result<SimSettings> {
    let client = reqwest::Client::builder().timeout(Duration::from_secs(5)).build()?;
    let url = format!("{}/sim/settings", sim_url.trim_end_matches('/'));
    let s = client.get(&url).send().await?.error_for_status()?.json::<SimSettings>().await?;
    Ok(s)
}

/// Runs the whole load test over the dialler protocol and returns the summary JSON.
pub async fn run_dial(opts: DialOptions) -> anyhow::Result<Value> {
    run_dial_with(opts, ProtocolOptions::default()).await
}

/// Runs the whole load test over `proto` and returns the summary JSON.
pub async fn run_dial_with(opts: DialOptions, proto: ProtocolOptions) -> anyhow::Result<Value> {
    if opts.calls == 0 {
        anyhow::bail!("--calls must be at least 1");
    }
    if opts.frame_ms == 0 || opts.frame_ms > 1000 {
        anyhow::bail!("--frame-ms must be within 1..=1000");
    }
    let fmt = Arc::new(WireFormat::new(proto.protocol, proto.sample_rate, proto.encoding.as_deref())?);
    let steps = load_scenario(&opts.scenario, opts.frame_ms, &fmt)?;
    let settings = match &opts.sim_url {
        None => None,
        Some(u) => match fetch_settings(u).await {
            Ok(s) => Some(s),
            Err(e) => {
                tracing::warn!("cannot read {u}/sim/settings ({e}); injected latencies unknown");
                None
            }
        },
    };
    let silence = fmt.frame(&vec![0i16; samples_for_ms(DIALLER_RATE, opts.frame_ms)]);
    let number_base = u64::from(uuid::Uuid::new_v4().as_u128() as u32) % 100_000_000;
    let shared = Arc::new(Shared {
        url: opts.url.clone(),
        steps,
        silence,
        fmt: fmt.clone(),
        sim_url: opts.sim_url.clone(),
        http: reqwest::Client::builder().pool_max_idle_per_host(16).build()?,
        frame: Duration::from_millis(opts.frame_ms),
        settings: settings.clone(),
        timeout: Duration::from_secs(opts.timeout_secs.max(1)),
        number_base,
    });
    let concurrency = if opts.concurrency == 0 { opts.calls } else { opts.concurrency.min(opts.calls) };
    let progress = Arc::new(Progress::default());
    let sem = Arc::new(tokio::sync::Semaphore::new(concurrency));
    let started = Instant::now();
    let reporter = {
        let p = progress.clone();
        let total = opts.calls;
        tokio::spawn(async move {
            let mut t = tokio::time::interval(Duration::from_secs(5));
            t.tick().await;
            loop {
                t.tick().await;
                tracing::info!(
                    "dial: {} active, {} completed, {} failed of {total}",
                    p.active.load(Ordering::Relaxed),
                    p.completed.load(Ordering::Relaxed),
                    p.failed.load(Ordering::Relaxed)
                );
            }
        })
    };
    let mut set = tokio::task::JoinSet::new();
    for i in 0..opts.calls {
        tokio::time::sleep_until(started + Duration::from_millis(opts.ramp_ms * i as u64)).await;
        let permit = sem.clone().acquire_owned().await?;
        let sh = shared.clone();
        let p = progress.clone();
        set.spawn(async move {
            p.active.fetch_add(1, Ordering::Relaxed);
            let rep = run_call(i, &sh).await;
            p.active.fetch_sub(1, Ordering::Relaxed);
            if rep.failure.is_some() { &p.failed } else { &p.completed }.fetch_add(1, Ordering::Relaxed);
            drop(permit);
            rep
        });
    }
    let mut reports = Vec::with_capacity(opts.calls);
    while let Some(r) = set.join_next().await {
        match r {
            Ok(rep) => reports.push(rep),
            Err(e) => {
                let rep = CallReport { failure: Some(format!("task_panicked:{e}")), ..Default::default() };
                reports.push(rep);
            }
        }
    }
    reporter.abort();
    let wall = started.elapsed().as_secs_f64();
    let mut summary = summarize(&reports, settings.as_ref(), wall, &opts, concurrency);
    if let Some(cpu) = process_cpu_secs() {
        // Includes preparing the scenario (a few ms); the calls dominate.
        summary["dialler_cpu_secs"] = json!((cpu * 100.0).round() / 100.0);
    }
    summary["protocol"] = json!(proto.protocol.name());
    summary["sample_rate"] = json!(fmt.rate);
    let text = serde_json::to_string_pretty(&summary)?;
    if let Some(out) = &opts.out {
        std::fs::write(out, format!("{text}\n")).map_err(|e| anyhow::anyhow!("cannot write {}: {e}", out.display()))?;
    }
    Ok(summary)
}

pub fn summarize(
    reports: &[CallReport],
    settings: Option<&SimSettings>,
    wall_secs: f64,
    opts: &DialOptions,
    concurrency: usize,
) -> Value {
    let mut reasons: BTreeMap<String, u64> = BTreeMap::new();
    let mut kinds: BTreeMap<String, u64> = BTreeMap::new();
    let mut examples = Vec::new();
    let (mut lat, mut lat_minus, mut injected, mut stop_ms, mut drift) = (vec![], vec![], vec![], vec![], vec![]);
    let (mut opening, mut opening_minus, mut goodbye) = (vec![], vec![], vec![]);
    let tts_ttfb = settings.map_or(0.0, |s| s.tts_ttfb_ms as f64);
    let mut totals = [0u64; 8];
    let mut send_lag = MsHistogram::default();
    let (mut marks_sent, mut marks_echoed, mut rest_hangups, mut close_hangups) = (0u64, 0u64, 0u64, 0u64);
    let (mut call_secs, mut max_ahead) = (0.0f64, 0.0f64);
    for r in reports {
        if let Some(f) = &r.failure {
            *reasons.entry(f.clone()).or_default() += 1;
        }
        for (k, n) in &r.violations {
            *kinds.entry(k.clone()).or_default() += n;
        }
        for e in &r.examples {
            if examples.len() < MAX_EXAMPLES {
                examples.push(e.clone());
            }
        }
        for (l, inj) in &r.latencies {
            lat.push(*l);
            injected.push(*inj);
            lat_minus.push(l - inj);
        }
        stop_ms.extend_from_slice(&r.barge_in_stop_ms);
        goodbye.extend(r.goodbye_ms);
        if let Some(o) = r.opening_ms {
            opening.push(o);
            opening_minus.push(o - tts_ttfb);
        }
        drift.push(r.audio_drift_ms);
        send_lag.merge(&r.send_lag);
        marks_sent += r.marks_sent;
        marks_echoed += r.marks_echoed;
        rest_hangups += r.rest_hangups;
        close_hangups += r.close_hangups;
        call_secs += r.call_secs;
        max_ahead = max_ahead.max(r.max_ahead_ms);
        for (i, v) in [
            r.payload_size_mismatches,
            r.bot_frames,
            r.barge_in_says,
            r.media_stops_after_barge_in,
            r.media_stops_total,
            r.bot_hangups,
            r.transfers,
            r.violations.values().sum(),
        ]
        .into_iter()
        .enumerate()
        {
            totals[i] += v;
        }
    }
    let failed = reports.iter().filter(|r| r.failure.is_some()).count();
    let mean_injected = if injected.is_empty() { 0.0 } else { injected.iter().sum::<f64>() / injected.len() as f64 };
    let breakdown = match settings {
        Some(s) => json!({
            "source": "sim /sim/settings",
            "formula": "per caller turn N: llm_ttft_ms + tts_ttfb_ms + llm_token_interval_ms * first_sentence_chunks[N]",
            "llm_ttft_ms": s.llm_ttft_ms,
            "tts_ttfb_ms": s.tts_ttfb_ms,
            "llm_token_interval_ms": s.llm_token_interval_ms,
            "first_sentence_chunks": s.first_sentence_chunks,
            "not_subtracted": {"stt_endpointing_ms": s.stt_endpointing_ms, "stt_latency_ms": s.stt_latency_ms},
        }),
        None => json!({"source": "none (pass --sim-url to subtract injected latencies)"}),
    };
    let send_lag_dist = send_lag.dist();
    json!({
        "calls": reports.len(),
        "completed": reports.len() - failed,
        "failed": failed,
        "failure_reasons": reasons,
        "latency_ms": Dist::from(&lat),
        "injected_ms": (mean_injected * 10.0).round() / 10.0,
        "injected_breakdown": breakdown,
        "latency_minus_injected_ms": Dist::from(&lat_minus),
        "opening_ms": Dist::from(&opening),
        "opening_minus_tts_ttfb_ms": Dist::from(&opening_minus),
        "protocol_violations": totals[7],
        "protocol_violation_kinds": kinds,
        "violation_examples": examples,
        "payload_size_mismatches": totals[0],
        "bot_frames": totals[1],
        "barge_in_says": totals[2],
        "media_stops": totals[3],
        "media_stops_total": totals[4],
        "barge_in_stop_ms": Dist::from(&stop_ms),
        "bot_hangups": totals[5],
        "goodbye_ms": Dist::from(&goodbye),
        "silent_bot_hangups": goodbye.iter().filter(|ms| **ms < MIN_GOODBYE_MS).count(),
        "transfers": totals[6],
        "marks_sent": marks_sent,
        "marks_echoed": marks_echoed,
        "bot_hangups_rest": rest_hangups,
        "bot_hangups_close": close_hangups,
        "max_bot_audio_ahead_ms": (max_ahead * 10.0).round() / 10.0,
        "call_seconds_total": (call_secs * 100.0).round() / 100.0,
        "max_send_lag_ms": send_lag_dist.max,
        "send_lag_ms": send_lag_dist,
        "audio_drift_ms": Dist::from(&drift),
        "wall_secs": (wall_secs * 100.0).round() / 100.0,
        "url": opts.url,
        "scenario": opts.scenario.display().to_string(),
        "concurrency": concurrency,
        "frame_ms": opts.frame_ms,
        "latency_definition": "from sending the frame holding the last speech sample of a say to the first audible reverse-media of a bot utterance that starts after it",
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rev(chunk: i64, payload: &str, ts: &str) -> String {
        json!({"event":"reverse-media","chunk":chunk,"did":"+911140000000","payload":payload,"timestamp":ts,
            "streamId":"s","callerId":"c","chunk_durn_ms":20,"callDirection":"incoming","encoding":"LINEAR",
            "RevMediaQ":0,"source":"ai"})
        .to_string()
    }

    fn b64(bytes: &[u8]) -> String {
        base64::engine::general_purpose::STANDARD.encode(bytes)
    }

    #[test]
    fn validator_accepts_good_frames_and_counts_bad_ones() {
        let mut v = Validator::new("s", "c", "+911140000000");
        let mut rep = CallReport::default();
        let loud = b64(&[1u8; 320]);
        let quiet = b64(&[0u8; 320]);
        assert_eq!(
            v.check(&rev(1, &loud, "2026-04-24 14:30:00"), &mut rep),
            BotEvent::Media { audible: true, dur: Duration::from_millis(20) }
        );
        assert!(matches!(
            v.check(&rev(2, &quiet, "2026-04-24 14:30:00"), &mut rep),
            BotEvent::Media { audible: false, .. }
        ));
        assert!(rep.violations.is_empty(), "{:?}", rep.violations);
        v.check(&rev(4, &loud, "2026-04-24T14:30:00"), &mut rep);
        v.check(&rev(5, &b64(&[1u8; 100]), "2026-04-24 14:30:00"), &mut rep);
        assert_eq!(rep.violations["reverse-media.chunk_not_incrementing"], 1);
        assert_eq!(rep.violations["reverse-media.bad_timestamp"], 1);
        assert_eq!(rep.payload_size_mismatches, 1);
        let missing = json!({"event":"reverse-media","chunk":6,"payload":loud}).to_string();
        v.check(&missing, &mut rep);
        for k in [
            "did",
            "streamId",
            "callerId",
            "timestamp",
            "callDirection",
            "encoding",
            "source",
            "RevMediaQ",
            "chunk_durn_ms",
        ] {
            assert!(rep.violations.keys().any(|x| x.ends_with(k)), "{k}: {:?}", rep.violations);
        }
        assert_eq!(
            v.check(r#"{"event":"reverse-media-stop","callerId":"c","streamId":"s"}"#, &mut rep),
            BotEvent::MediaStop
        );
        let before: u64 = rep.violations.values().sum();
        assert_eq!(
            v.check(r#"{"event":"reverse-hangup-call","streamId":"s","callerId":"c","source":"ai","message":"Call ended by bot"}"#, &mut rep),
            BotEvent::Hangup
        );
        assert_eq!(rep.violations.values().sum::<u64>(), before);
        assert_eq!(
            v.check(r#"{"event":"reverse-call-transfer","streamId":"s","callerId":"c"}"#, &mut rep),
            BotEvent::Transfer
        );
        assert!(rep.violations.contains_key("reverse-call-transfer.missing.transferTo"));
        v.check("garbage", &mut rep);
        v.check(r#"{"event":"surprise"}"#, &mut rep);
        v.check(r#"{"event":"reverse-media","chunk":"7"}"#, &mut rep);
        assert!(rep.violations.contains_key("not_json"));
        assert!(rep.violations.contains_key("unknown_event.surprise"));
        assert!(rep.violations.contains_key("reverse-media.bad_field_type"));
    }

    #[test]
    fn frame_clocks_are_spread_over_the_period() {
        let frame = Duration::from_millis(20);
        let mut phases: Vec<Duration> = (0..500).map(|i| frame_phase(i, frame)).collect();
        assert_eq!(phases[0], Duration::ZERO);
        assert!(phases.iter().all(|p| *p < frame));
        phases.sort();
        phases.dedup();
        assert_eq!(phases.len(), 500, "every call has its own phase");
        // Evenly spread: no gap between neighbouring phases is more than 3x the average gap.
        let max_gap = phases.windows(2).map(|w| w[1] - w[0]).max().unwrap();
        assert!(max_gap < frame * 3 / 500, "{max_gap:?}");
    }

    #[test]
    fn timestamps() {
        assert!(valid_timestamp("2026-04-24 14:30:00"));
        assert!(!valid_timestamp("2026-04-24 14:30"));
        assert!(!valid_timestamp("2026/04/24 14:30:00"));
    }

    #[test]
    fn playback_model() {
        let t0 = Instant::now();
        let mut b = BotPlayback::default();
        let f = Duration::from_millis(20);
        assert!(b.on_media(t0, true, f));
        assert!(!b.on_media(t0 + f, true, f));
        assert!(b.speaking(t0 + f));
        // A burst of 1 s arriving at once keeps the bot "speaking" while it plays out.
        for _ in 0..50 {
            b.on_media(t0 + 2 * f, true, f);
        }
        assert!(b.speaking(t0 + Duration::from_millis(900)));
        b.on_stop(t0 + Duration::from_millis(100));
        assert!(!b.speaking(t0 + Duration::from_millis(110)));
        // After a stop the next audible frame is a new utterance.
        assert!(b.on_media(t0 + Duration::from_millis(150), true, f));
        // Silent frames do not make the bot "speak".
        let mut q = BotPlayback::default();
        assert!(!q.on_media(t0, false, f));
        assert!(!q.speaking(t0));
    }

    #[test]
    fn silence_jitter_is_per_call_bounded_and_repeatable() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../assets/sim");
        let fmt = WireFormat::new(Protocol::Dialler, None, None).unwrap();
        let steps = load_scenario(&root.join("scenario-steady.json"), 20, &fmt).unwrap();
        assert!(matches!(steps[1], Step::Silence { frames: 0, jitter_frames: 200 }), "{:?}", steps[1].name());
        let picks: Vec<usize> = (0..200).map(|i| per_call_jitter(&format!("stream-{i}"), 1, 200)).collect();
        assert!(picks.iter().all(|&p| p <= 200));
        assert!(picks.iter().collect::<std::collections::BTreeSet<_>>().len() > 100, "spread, not lockstep");
        assert_eq!(per_call_jitter("stream-7", 1, 200), picks[7], "same call, same pause");
        assert_eq!(per_call_jitter("stream-7", 1, 0), 0);
    }

    #[test]
    fn scenarios_in_assets_load() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../assets/sim");
        let fmt = WireFormat::new(Protocol::Dialler, None, None).unwrap();
        let steps = load_scenario(&root.join("scenario.json"), 20, &fmt).unwrap();
        assert_eq!(steps.len(), 7);
        let turns: Vec<usize> = steps
            .iter()
            .filter_map(|s| {
                if let Step::Say { turn, wav } = s {
                    assert!(wav.speech_end_frame.is_some());
                    let FramePayload::Text(f) = &wav.frames[0] else { panic!("dialler frames are text") };
                    assert_eq!(f.len(), r#"{"event":"media","payload":""}"#.len() + 428);
                    Some(*turn)
                } else {
                    None
                }
            })
            .collect();
        assert_eq!(turns, vec![0, 1, 2]);
        let steps = load_scenario(&root.join("scenario-hangup.json"), 20, &fmt).unwrap();
        // Every protocol can prepare the same scenario.
        for (p, rate) in [(Protocol::Exotel, 24000), (Protocol::Vonage, 16000), (Protocol::Twilio, 8000)] {
            let fmt = WireFormat::new(p, Some(rate), None).unwrap();
            let steps = load_scenario(&root.join("scenario.json"), 20, &fmt).unwrap();
            assert_eq!(steps.len(), 7);
        }
        assert!(matches!(steps.last(), Some(Step::Hangup)));
    }

    #[test]
    fn injected_formula() {
        let s = SimSettings {
            llm_ttft_ms: 150,
            tts_ttfb_ms: 100,
            llm_token_interval_ms: 10,
            first_sentence_chunks: vec![1, 2],
            ..Default::default()
        };
        assert_eq!(s.injected_ms(0), 260.0);
        assert_eq!(s.injected_ms(1), 270.0);
        assert_eq!(s.injected_ms(5), 250.0);
    }
}
