//! Streaming STT, LLM and TTS provider clients speaking the vendors' real wire protocols
//! (wire-protocols.md §3–§5; Soniox, Gemini, Vertex AI, Sarvam and Aura-2: wire-protocols-2.md). Each client is a thin async shell: a connection task per stream,
//! bounded command channels in, bounded event channels out. Nothing here knows about calls.

pub mod error;
pub mod llm;
#[doc(hidden)]
pub mod parsers;
pub mod registry;
pub mod stt;
pub mod stt_flux;
pub mod stt_sarvam;
pub mod stt_soniox;
pub mod tts;
pub mod tts_aura;
pub mod tts_sarvam;

pub use error::ProviderError;

mod google_auth;
pub mod llm_anthropic;
pub mod llm_gemini;
mod llm_openai;
pub mod llm_vertex;
mod prompt_cache;
mod stt_deepgram;
mod stt_session;
mod tts_cartesia;
mod tts_context;
mod tts_elevenlabs;
mod ws;
