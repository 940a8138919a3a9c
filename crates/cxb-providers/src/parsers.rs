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
