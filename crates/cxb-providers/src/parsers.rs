//! The pure parsers of vendor messages behind the streaming clients, reachable from outside the
//! crate so the fuzz targets (`fuzz/`) drive exactly the code the clients run. Not a stable API.

use crate::llm::LlmEvent;
use crate::llm_openai::{Accumulator, SseParser};
use crate::stt::SttEvent;
use crate::tts_context::Contexts;
use crate::ProviderError;

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

/// An OpenAI-compatible streaming response body, fed in pieces as the network splits it.
#[derive(Default)]
pub struct OpenAiStream {
    parser: SseParser,
    acc: Accumulator,
}

impl OpenAiStream {
    /// Tokens completed by this piece of the body. An error ends the stream.
    pub fn feed(&mut self, bytes: &[u8]) -> Result<Vec<LlmEvent>, ProviderError> {
        let payloads = self.parser.feed(bytes)?;
        self.on_payloads(payloads)
    }

    /// The body ended: the last tokens, then the closing events when the answer is complete.
    pub fn finish(mut self) -> Result<Vec<LlmEvent>, ProviderError> {
        let mut events = match self.parser.finish() {
            Some(data) => self.on_payloads(vec![data])?,
            None => Vec::new(),
        };
        events.extend(self.acc.into_events());
        Ok(events)
    }

    fn on_payloads(&mut self, payloads: Vec<String>) -> Result<Vec<LlmEvent>, ProviderError> {
        let mut events = Vec::new();
        for data in payloads {
            if let Some(token) = self.acc.on_data(&data)? {
                events.push(LlmEvent::Token(token));
            }
        }
        Ok(events)
    }
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
