//! The pure parsers of vendor messages behind the streaming clients, reachable from outside the
//! crate so the fuzz targets (`fuzz/`) drive exactly the code the clients run. Not a stable API.

use crate::llm::LlmEvent;
use crate::llm_openai::{SseParser, StreamState};
use crate::stt::SttEvent;
use crate::tts_context::Contexts;
use crate::ProviderError;

pub use crate::google_auth::Fetch as GoogleTokenFailure;
pub use crate::prompt_cache::CacheError as GoogleCacheError;
pub use crate::stt_flux::Incoming as FluxIncoming;
pub use crate::tts_cartesia::Reaction as CartesiaReaction;
pub use crate::tts_elevenlabs::{ContextDecoder as ElevenLabsContext, ContextMessage as ElevenLabsMessage};

/// One Deepgram live v1 text frame; `None` for messages the client does not surface.
pub fn deepgram_message(text: &str) -> Option<SttEvent> {
    crate::stt_deepgram::parse_server_message(text)
}

/// One Deepgram Flux text frame; `None` for messages the client does not surface.
pub fn flux_message(text: &str) -> Option<FluxIncoming> {
    crate::stt_flux::parse_server_message(text)
}

/// A Cartesia socket's server messages against the contexts the session has open.
#[derive(Default)]
pub struct CartesiaMessages {
    contexts: Contexts<crate::tts_cartesia::Context>,
}

impl CartesiaMessages {
    /// The session spoke into `context_id` (a closed context is never reopened).
    pub fn open(&mut self, context_id: &str) {
        if !self.contexts.is_closed(context_id) {
            self.contexts.get_or_open(context_id, Default::default);
        }
    }

    /// The session cancelled `context_id`.
    pub fn cancel(&mut self, context_id: &str) {
        self.contexts.close(context_id);
    }

    pub fn is_live(&self, context_id: &str) -> bool {
        self.contexts.is_live(context_id)
    }

    pub fn on_text(&mut self, text: &str) -> CartesiaReaction {
        crate::tts_cartesia::react(&mut self.contexts, text)
    }
}

/// A streaming LLM response body (OpenAI-compatible, Gemini / Vertex, Anthropic), fed in pieces
/// as the network splits it, read as the client's SSE pump reads it: payloads stop being read
/// once the vendor's end marker is seen, and the body's end concludes the answer.
pub struct LlmStream {
    parser: SseParser,
    state: VendorState,
    /// The vendor's end marker was seen: the client reads no further.
    finished: bool,
}

enum VendorState {
    OpenAi(crate::llm_openai::Accumulator),
    Gemini(crate::llm_gemini::Accumulator),
    Anthropic(crate::llm_anthropic::Accumulator),
}

impl LlmStream {
    pub fn openai() -> Self {
        Self::new(crate::registry::OPENAI.name, VendorState::OpenAi(Default::default()))
    }

    /// The Gemini API's stream (Vertex AI's is the same).
    pub fn gemini() -> Self {
        let provider = crate::registry::GOOGLE.name;
        Self::new(provider, VendorState::Gemini(crate::llm_gemini::Accumulator::new(provider)))
    }

    pub fn anthropic() -> Self {
        Self::new(crate::registry::ANTHROPIC.name, VendorState::Anthropic(Default::default()))
    }

    fn new(provider: &'static str, state: VendorState) -> Self {
        Self { parser: SseParser::new(provider), state, finished: false }
    }

    /// Tokens completed by this piece of the body. An error ends the stream.
    pub fn feed(&mut self, bytes: &[u8]) -> Result<Vec<LlmEvent>, ProviderError> {
        if self.finished {
            return Ok(Vec::new());
        }
        let payloads = self.parser.feed(bytes)?;
        self.on_payloads(payloads)
    }

    /// The body ended: the last tokens, then the closing events (with a cache report when
    /// `cache_hint`, for the vendors whose cache is a prefix hint), or why the answer is
    /// incomplete.
    pub fn finish(mut self, cache_hint: bool) -> Result<Vec<LlmEvent>, ProviderError> {
        let mut events = Vec::new();
        if !self.finished {
            if let Some(data) = self.parser.finish() {
                events = self.on_payloads(vec![data])?;
            }
        }
        events.extend(match self.state {
            VendorState::OpenAi(acc) => acc.conclude(cache_hint)?,
            VendorState::Gemini(acc) => acc.conclude(self.parser.stray())?.into_events(None),
            VendorState::Anthropic(acc) => acc.conclude(cache_hint)?,
        });
        Ok(events)
    }

    fn on_payloads(&mut self, payloads: Vec<String>) -> Result<Vec<LlmEvent>, ProviderError> {
        let state: &mut dyn StreamState = match &mut self.state {
            VendorState::OpenAi(acc) => acc,
            VendorState::Gemini(acc) => acc,
            VendorState::Anthropic(acc) => acc,
        };
        let mut events = Vec::new();
        for data in payloads {
            if let Some(token) = state.on_data(&data)? {
                events.push(LlmEvent::Token(token));
            }
            if state.finished() {
                self.finished = true;
                break;
            }
        }
        Ok(events)
    }
}

/// A Google API error body (Gemini, Vertex, their caches): the detail the clients report.
pub fn google_error_detail(body: &str) -> Option<String> {
    crate::llm_gemini::parse_google_error(body).map(|e| e.detail())
}

/// An Anthropic non-2xx body: the detail the client reports.
pub fn anthropic_error_detail(body: &str) -> String {
    crate::llm_anthropic::error_body_detail(body.to_string())
}

/// A Google token endpoint's answer (`status`, `body`): the access token and its lifetime.
pub fn google_token_answer(status: u16, body: &str) -> Result<(String, std::time::Duration), GoogleTokenFailure> {
    crate::google_auth::read_token_answer(status, body)
}

/// The longest token lifetime the client believes.
pub const GOOGLE_MAX_TOKEN_LIFETIME: std::time::Duration = crate::google_auth::MAX_TOKEN_LIFETIME;

/// A `cachedContents` create call's answer (`status`, `body`) on the Gemini API, or on Vertex AI
/// when `vertex`: the new cache's name, checked as the client checks it.
pub fn gemini_created_cache(status: u16, body: &str, vertex: bool) -> Result<String, GoogleCacheError> {
    let flavour = if vertex { crate::llm_gemini::Flavour::Vertex } else { crate::llm_gemini::Flavour::Api };
    crate::llm_gemini::created_cache_name(&crate::llm_gemini::read_cache_answer(status, body)?, flavour)
}

/// The URL the client extends the cache `name` at, under the API root `resource_root`.
pub fn gemini_cache_url(resource_root: &url::Url, name: &str) -> url::Url {
    crate::llm_gemini::cache_url(resource_root, name)
}

pub use crate::stt_session::Parsed as SttParsed;
pub use crate::tts_aura::Incoming as AuraIncoming;
pub use crate::tts_sarvam::Incoming as SarvamTtsIncoming;

/// A streaming STT vendor's side of the shared session loop (`stt_session::Dialect`), fed the
/// way the session feeds it.
pub struct SttDialect(Box<dyn DialectCalls>);

/// The dialect calls the session makes with server input (object-safe).
trait DialectCalls {
    fn on_text(&mut self, text: &str) -> SttParsed;
    fn finalize(&mut self);
    fn end_of_stream(&mut self);
    fn on_end(&mut self) -> Vec<SttEvent>;
}

impl<D: crate::stt_session::Dialect> DialectCalls for D {
    fn on_text(&mut self, text: &str) -> SttParsed {
        crate::stt_session::Dialect::on_text(self, text)
    }
    fn finalize(&mut self) {
        let _ = crate::stt_session::Dialect::finalize(self);
    }
    fn end_of_stream(&mut self) {
        let _ = crate::stt_session::Dialect::end_of_stream(self);
    }
    fn on_end(&mut self) -> Vec<SttEvent> {
        crate::stt_session::Dialect::on_end(self)
    }
}

impl SttDialect {
    pub fn soniox() -> Self {
        Self(Box::<crate::stt_soniox::Soniox>::default())
    }

    pub fn sarvam() -> Self {
        Self(Box::<crate::stt_sarvam::Sarvam>::default())
    }

    /// One server text frame.
    pub fn on_text(&mut self, text: &str) -> SttParsed {
        self.0.on_text(text)
    }

    /// The caller's turn ended on our side (`finalize()`).
    pub fn finalize(&mut self) {
        self.0.finalize();
    }

    /// The driver closes the stream (`close()`).
    pub fn end_of_stream(&mut self) {
        self.0.end_of_stream();
    }

    /// The socket ended: what is still buffered.
    pub fn on_end(&mut self) -> Vec<SttEvent> {
        self.0.on_end()
    }
}

/// One Deepgram Aura server text frame; `None` for what needs no action.
pub fn aura_message(text: &str) -> Option<AuraIncoming> {
    crate::tts_aura::parse(text)
}

/// One Sarvam TTS server text frame; `None` for what needs no action.
pub fn sarvam_tts_message(text: &str) -> Option<SarvamTtsIncoming> {
    crate::tts_sarvam::parse(text)
}

/// s16le audio split anywhere by the vendor (Aura's binary frames, the base64 chunks of
/// Cartesia, ElevenLabs and Sarvam): an odd byte is carried into the next piece.
#[derive(Default)]
pub struct PcmCarry(Option<u8>);

impl PcmCarry {
    pub fn from_le_bytes(&mut self, bytes: &[u8]) -> Vec<i16> {
        crate::ws::pcm_from_le_bytes(&mut self.0, bytes)
    }

    pub fn from_base64(&mut self, b64: &str) -> Result<Vec<i16>, base64::DecodeError> {
        crate::ws::pcm_from_base64(&mut self.0, b64)
    }
}
