//! Streaming STT, LLM and TTS provider clients speaking the vendors' real wire protocols
//! (wire-protocols.md §3–§5, wire-protocols-2.md §2–§3). Each client is a thin async shell: a connection task per stream,
//! bounded command channels in, bounded event channels out. Nothing here knows about calls.

pub mod error;
pub mod llm;
pub mod stt;
pub mod stt_flux;
pub mod tts;

pub use error::ProviderError;

mod google_auth;
pub mod llm_anthropic;
pub mod llm_gemini;
mod llm_openai;
pub mod llm_vertex;
mod prompt_cache;
mod stt_deepgram;
mod tts_cartesia;
mod tts_elevenlabs;
mod ws;
