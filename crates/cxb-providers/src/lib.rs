//! Streaming STT, LLM and TTS provider clients speaking the vendors' real wire protocols
//! (wire-protocols.md §3–§5). Each client is a thin async shell: a connection task per stream,
//! bounded command channels in, bounded event channels out. Nothing here knows about calls.

pub mod error;
pub mod llm;
#[doc(hidden)]
pub mod parsers;
pub mod registry;
pub mod stt;
pub mod stt_flux;
pub mod tts;

pub use error::ProviderError;

mod llm_openai;
mod stt_deepgram;
mod tts_cartesia;
mod tts_context;
mod tts_elevenlabs;
mod ws;
