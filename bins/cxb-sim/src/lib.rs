//! cxb-sim: provider doubles (Deepgram live STT, Soniox and Sarvam STT, OpenAI chat completions
//! SSE, Cartesia, ElevenLabs, Sarvam and Deepgram Aura TTS WebSockets), a fake CXB API (config endpoint + results receiver) and a
//! load-generating dialler, for testing and benchmarking cxb-core.
//!
//! The doubles are written from the wire-protocol spec (shared/spec/wire-protocols.md), not from
//! the worker's client code, so that client bugs show up against them.

pub mod audio;
pub mod dialler;
pub mod fake_api;
pub mod llm_anthropic;
pub mod llm_gemini;
pub mod llm_openai;
pub mod oauth_token;
pub mod protocols;
pub mod script;
pub mod stats;
pub mod stt_deepgram;
pub mod stt_flux;
pub mod stt_sarvam;
pub mod stt_soniox;
pub mod telephony_fakes;
pub mod tts_aura;
pub mod tts_cartesia;
pub mod tts_elevenlabs;
pub mod tts_sarvam;

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU16, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::routing::{get, post};
use axum::Router;
use serde_json::{json, Value};

pub use script::Script;

/// Injected latencies (ms). Adjustable at run time through `POST /sim/control`.
#[derive(Debug, Default)]
pub struct Latencies {
    pub stt_latency_ms: AtomicU64,
    pub stt_endpointing_ms: AtomicU64,
    pub llm_ttft_ms: AtomicU64,
    pub llm_token_interval_ms: AtomicU64,
    pub tts_ttfb_ms: AtomicU64,
    /// Extra time the Sarvam and Aura TTS doubles take to answer a WebSocket upgrade (a stand-in
    /// for TLS and the vendor's handshake).
    pub tts_connect_ms: AtomicU64,
}

impl Latencies {
    pub fn get(v: &AtomicU64) -> u64 {
        v.load(Ordering::Relaxed)
    }
    pub fn dur(v: &AtomicU64) -> Duration {
        Duration::from_millis(v.load(Ordering::Relaxed))
    }
}

/// Everything `cxb-sim serve` is configured with.
#[derive(Debug, Clone)]
pub struct ServeOptions {
    pub listen: SocketAddr,
    pub secret: Option<String>,
    pub stt_latency_ms: u64,
    pub stt_endpointing_ms: u64,
    pub llm_ttft_ms: u64,
    pub llm_token_interval_ms: u64,
    pub tts_ttfb_ms: u64,
    pub tts_connect_ms: u64,
    pub script: Script,
    pub results_file: Option<PathBuf>,
    /// Host to put in the URLs the fake API serves (provider base URLs, the webhook), for a
    /// worker on another machine; default: the listen address (127.0.0.1 when unspecified).
    pub public_host: Option<String>,
    /// Deepgram closes with NET-0001 after this long without audio or KeepAlive (10 s).
    pub stt_idle_timeout: Duration,
    /// How long `slow-config` sleeps (30 s).
    pub slow_config_delay: Duration,
    /// How long a `stall` LLM request is held open (120 s).
    pub llm_stall_max: Duration,
}

impl Default for ServeOptions {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            secret: None,
            stt_latency_ms: 80,
            stt_endpointing_ms: 200,
            llm_ttft_ms: 150,
            llm_token_interval_ms: 0,
            tts_ttfb_ms: 100,
            tts_connect_ms: 0,
            script: Script::embedded(),
            results_file: None,
            public_host: None,
            stt_idle_timeout: Duration::from_secs(10),
            slow_config_delay: Duration::from_secs(30),
            llm_stall_max: Duration::from_secs(120),
        }
    }
}

/// Activity counters, served at `GET /sim/stats`.
#[derive(Debug, Default)]
pub struct Counters {
    pub stt_connections: AtomicU64,
    pub stt_utterances: AtomicU64,
    pub llm_requests: AtomicU64,
    pub cartesia_connections: AtomicU64,
    pub cartesia_contexts: AtomicU64,
    pub elevenlabs_connections: AtomicU64,
    pub soniox_connections: AtomicU64,
    pub sarvam_stt_connections: AtomicU64,
    pub sarvam_tts_connections: AtomicU64,
    /// Sarvam TTS sockets the client closed while synthesis was unfinished (barge-in).
    pub sarvam_tts_closed_mid_utterance: AtomicU64,
    pub aura_connections: AtomicU64,
    pub aura_clears: AtomicU64,
    pub config_requests: AtomicU64,
    pub results_posts: AtomicU64,
}

/// How long the doubles really took to apply their injected delays: request in → first byte
/// handed to the connection. Under load a double's own timers and run queue make this longer than
/// the injected value; the benchmark reads it (`GET /sim/timings`, `DELETE` clears) to tell the
/// doubles' lateness from the worker's.
#[derive(Debug, Default)]
pub struct DoubleTimings {
    pub llm_ttft: Mutex<stats::MsHistogram>,
    pub tts_ttfb: Mutex<stats::MsHistogram>,
}

impl DoubleTimings {
    pub fn record(h: &Mutex<stats::MsHistogram>, since: tokio::time::Instant) {
        let ms = since.elapsed().as_secs_f64() * 1000.0;
        h.lock().unwrap_or_else(|p| p.into_inner()).record(ms);
    }

    pub fn json(&self) -> Value {
        let d = |h: &Mutex<stats::MsHistogram>| json!(h.lock().unwrap_or_else(|p| p.into_inner()).dist());
        json!({"llm_ttft_ms": d(&self.llm_ttft), "tts_ttfb_ms": d(&self.tts_ttfb)})
    }

    pub fn clear(&self) {
        for h in [&self.llm_ttft, &self.tts_ttfb] {
            *h.lock().unwrap_or_else(|p| p.into_inner()) = stats::MsHistogram::default();
        }
    }
}

/// Shared state of the server.
#[derive(Debug)]
pub struct SimState {
    /// Address the server is reachable at (used in the URLs it serves).
    pub addr: SocketAddr,
    pub public_host: Option<String>,
    pub secret: Option<String>,
    pub script: Script,
    pub lat: Latencies,
    pub stt_idle_timeout: Duration,
    pub slow_config_delay: Duration,
    pub llm_stall_max: Duration,
    pub api: Mutex<fake_api::ApiStore>,
    /// Status the results receiver answers (200 = normal behaviour).
    pub results_status: AtomicU16,
    /// Status the config endpoint answers (200 = normal behaviour).
    pub config_status: AtomicU16,
    pub results_file: Option<PathBuf>,
    /// The last LLM request bodies (bounded), for tests: `GET /sim/llm-requests`.
    pub llm_requests: Mutex<VecDeque<Value>>,
    pub counters: Counters,
    pub timings: DoubleTimings,
    /// Tool-call id counter (`call_<n>`).
    pub next_call_id: AtomicU64,
    /// Requests seen by the telephony REST fakes.
    pub telephony: telephony_fakes::Store,
    /// Sarvam TTS connection histories (`GET /sim/sarvam-tts`).
    pub sarvam_tts: tts_sarvam::Log,
    /// Gemini / Vertex caches and requests; the Google token endpoint; Anthropic prompt caches.
    pub google: llm_gemini::Store,
    pub oauth: oauth_token::Store,
    pub anthropic: llm_anthropic::Store,
}

pub const LLM_REQUESTS_KEPT: usize = 200;

/// WebSocket read buffer size for every socket of the sim. tungstenite zero-fills the whole read
/// buffer (128 KiB by default) before each read; with hundreds of 20 ms streams that memset was
/// ~45% of the CPU. Our frames are small, so 8 KiB is plenty (larger frames still work).
pub const WS_READ_BUFFER: usize = 8 * 1024;

impl SimState {
    pub fn new(opts: &ServeOptions, addr: SocketAddr) -> Self {
        let lat = Latencies::default();
        lat.stt_latency_ms.store(opts.stt_latency_ms, Ordering::Relaxed);
        lat.stt_endpointing_ms.store(opts.stt_endpointing_ms, Ordering::Relaxed);
        lat.llm_ttft_ms.store(opts.llm_ttft_ms, Ordering::Relaxed);
        lat.llm_token_interval_ms.store(opts.llm_token_interval_ms, Ordering::Relaxed);
        lat.tts_ttfb_ms.store(opts.tts_ttfb_ms, Ordering::Relaxed);
        lat.tts_connect_ms.store(opts.tts_connect_ms, Ordering::Relaxed);
        Self {
            addr,
            public_host: opts.public_host.clone(),
            secret: opts.secret.clone().filter(|s| !s.is_empty()),
            script: opts.script.clone(),
            lat,
            stt_idle_timeout: opts.stt_idle_timeout,
            slow_config_delay: opts.slow_config_delay,
            llm_stall_max: opts.llm_stall_max,
            api: Mutex::new(fake_api::ApiStore::default()),
            results_status: AtomicU16::new(200),
            config_status: AtomicU16::new(200),
            results_file: opts.results_file.clone(),
            llm_requests: Mutex::new(VecDeque::new()),
            counters: Counters::default(),
            timings: DoubleTimings::default(),
            next_call_id: AtomicU64::new(1),
            telephony: telephony_fakes::Store::default(),
            sarvam_tts: tts_sarvam::Log::default(),
            google: Default::default(),
            oauth: Default::default(),
            anthropic: Default::default(),
        }
    }

    /// `/sim/settings`: the injected latencies plus what the dialler needs to subtract them.
    pub fn settings_json(&self) -> Value {
        let l = &self.lat;
        json!({
            "stt_latency_ms": Latencies::get(&l.stt_latency_ms),
            "stt_endpointing_ms": Latencies::get(&l.stt_endpointing_ms),
            "llm_ttft_ms": Latencies::get(&l.llm_ttft_ms),
            "llm_token_interval_ms": Latencies::get(&l.llm_token_interval_ms),
            "tts_ttfb_ms": Latencies::get(&l.tts_ttfb_ms),
            "tts_connect_ms": Latencies::get(&l.tts_connect_ms),
            "stt_idle_timeout_ms": self.stt_idle_timeout.as_millis() as u64,
            // Per scripted caller turn N: LLM chunks until the reply's first sentence is complete.
            "first_sentence_chunks": self.script.first_sentence_chunks(),
        })
    }

    pub fn stats_json(&self) -> Value {
        let c = &self.counters;
        let g = |a: &AtomicU64| a.load(Ordering::Relaxed);
        json!({
            "stt_connections": g(&c.stt_connections),
            "stt_utterances": g(&c.stt_utterances),
            "llm_requests": g(&c.llm_requests),
            "cartesia_connections": g(&c.cartesia_connections),
            "cartesia_contexts": g(&c.cartesia_contexts),
            "elevenlabs_connections": g(&c.elevenlabs_connections),
            "soniox_connections": g(&c.soniox_connections),
            "sarvam_stt_connections": g(&c.sarvam_stt_connections),
            "sarvam_tts_connections": g(&c.sarvam_tts_connections),
            "sarvam_tts_closed_mid_utterance": g(&c.sarvam_tts_closed_mid_utterance),
            "sarvam_tts_spares_waiting": self.sarvam_tts.spares_waiting(),
            "aura_connections": g(&c.aura_connections),
            "aura_clears": g(&c.aura_clears),
            "config_requests": g(&c.config_requests),
            "results_posts": g(&c.results_posts),
        })
    }

    /// `host:port` to put in the URLs the fake API serves.
    pub fn public_addr(&self) -> String {
        if let Some(host) = &self.public_host {
            format!("{host}:{}", self.addr.port())
        } else if self.addr.ip().is_unspecified() {
            format!("127.0.0.1:{}", self.addr.port())
        } else {
            self.addr.to_string()
        }
    }
}

/// The single router serving every double and the fake API.
pub fn router(state: Arc<SimState>) -> Router {
    Router::new()
        .route("/v1/listen", get(stt_deepgram::handler))
        .route("/v2/listen", get(stt_flux::handler))
        .route("/v1/chat/completions", post(llm_openai::handler))
        .route("/tts/websocket", get(tts_cartesia::handler))
        .route("/v1/text-to-speech/{voice_id}/stream-input", get(tts_elevenlabs::handler))
        .route("/transcribe-websocket", get(stt_soniox::handler))
        .route("/speech-to-text/ws", get(stt_sarvam::handler))
        .route("/text-to-speech/ws", get(tts_sarvam::handler))
        .route("/sim/sarvam-tts", get(tts_sarvam::log_handler))
        .route("/v1/speak", get(tts_aura::handler))
        .merge(fake_api::routes())
        .merge(telephony_fakes::routes())
        .merge(llm_gemini::routes())
        .merge(oauth_token::routes())
        .merge(llm_anthropic::routes())
        .with_state(state)
}

/// A running server.
pub struct SimServer {
    pub addr: SocketAddr,
    pub state: Arc<SimState>,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    join: tokio::task::JoinHandle<std::io::Result<()>>,
}

impl SimServer {
    pub fn url(&self, scheme: &str) -> String {
        format!("{scheme}://{}", self.state.public_addr())
    }

    /// Stops accepting, waits up to 2 s for open HTTP requests.
    pub async fn shutdown(mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        let _ = tokio::time::timeout(Duration::from_secs(2), &mut self.join).await;
        self.join.abort();
    }

    /// Runs until the server stops.
    pub async fn wait(&mut self) -> anyhow::Result<()> {
        (&mut self.join).await??;
        Ok(())
    }
}

/// Binds and starts the server in the background.
pub async fn start(opts: ServeOptions) -> anyhow::Result<SimServer> {
    let listener = tokio::net::TcpListener::bind(opts.listen)
        .await
        .map_err(|e| anyhow::anyhow!("cannot listen on {}: {e}", opts.listen))?;
    let addr = listener.local_addr()?;
    let state = Arc::new(SimState::new(&opts, addr));
    let app = router(state.clone());
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    // The doubles keep Nagle on their accepted sockets: the first byte of a reply goes out at once
    // (nothing is unacknowledged after the injected wait) and what follows back to back (audio
    // chunks, SSE tokens) coalesces into fewer segments. With TCP_NODELAY here the 500-call
    // benchmark measured ~6 % more CPU on both sides and no lower latency.
    let join = tokio::spawn(async move {
        axum::serve(listener, app.into_make_service_with_connect_info::<SocketAddr>())
            .with_graceful_shutdown(async move {
                let _ = rx.await;
            })
            .await
    });
    Ok(SimServer { addr, state, shutdown: Some(tx), join })
}

/// Raise the soft open-files limit to the hard limit (load tests hold thousands of sockets).
/// Returns the new soft limit.
#[allow(clippy::unnecessary_cast)] // rlim_t is not u64 everywhere
pub fn raise_fd_limit() -> Option<u64> {
    // SAFETY: getrlimit/setrlimit only read/write the struct we pass.
    unsafe {
        let mut lim = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) != 0 {
            return None;
        }
        if lim.rlim_cur < lim.rlim_max {
            let want = libc::rlimit { rlim_cur: lim.rlim_max, rlim_max: lim.rlim_max };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &want) == 0 {
                return Some(want.rlim_cur as u64);
            }
        }
        Some(lim.rlim_cur as u64)
    }
}

/// Text of a WebSocket close reason, capped at the 123 bytes a close frame allows.
pub fn close_reason(s: &str) -> String {
    let mut out = String::new();
    for c in s.chars() {
        if out.len() + c.len_utf8() > 123 {
            break;
        }
        out.push(c);
    }
    out
}

/// Sends a close frame and waits (at most 2 s) for the peer's close reply.
pub async fn close_ws(socket: &mut axum::extract::ws::WebSocket, code: u16, reason: &str) {
    use axum::extract::ws::{CloseFrame, Message};
    let frame = CloseFrame { code, reason: close_reason(reason).into() };
    if socket.send(Message::Close(Some(frame))).await.is_err() {
        return;
    }
    let _ = tokio::time::timeout(Duration::from_secs(2), async {
        while let Some(Ok(m)) = socket.recv().await {
            if matches!(m, Message::Close(_)) {
                break;
            }
        }
    })
    .await;
}
