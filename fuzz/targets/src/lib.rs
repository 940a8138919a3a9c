//! The bodies of the fuzz targets: one function per parser of untrusted input, each taking raw
//! fuzzer bytes, driving the parser exactly as the worker does and asserting what must hold
//! whatever the input (no panic is the minimum). `fuzz/` wraps each in a libFuzzer binary for
//! the campaigns; `tests/smoke.rs` replays the seed corpora and a few seconds of mutations on
//! stable Rust (docs/reliability.md, "Fuzzing").
//!
//! Stateful parsers (telephony adapters, streaming TTS/STT/LLM clients) take a sequence of
//! records (see [`records`]) so one input can be a whole conversation.

pub mod records;
pub mod seeds;

mod core;
mod knowledge;
mod providers;
mod transports;

pub use records::{join, records, SEP};

/// One fuzz target: its name (the libFuzzer binary and the corpus directory are named after it)
/// and its body.
#[derive(Clone, Copy)]
pub struct Target {
    pub name: &'static str,
    pub run: fn(&[u8]),
}

/// Every target, in the order of the table in docs/reliability.md.
pub const TARGETS: &[Target] = &[
    Target { name: "transport_dialler", run: transports::dialler },
    Target { name: "transport_exotel", run: transports::exotel },
    Target { name: "transport_twilio", run: transports::twilio },
    Target { name: "transport_telnyx", run: transports::telnyx },
    Target { name: "transport_plivo", run: transports::plivo },
    Target { name: "transport_vonage", run: transports::vonage },
    Target { name: "stt_deepgram", run: providers::deepgram },
    Target { name: "stt_flux", run: providers::flux },
    Target { name: "stt_soniox", run: providers::soniox },
    Target { name: "stt_sarvam", run: providers::sarvam_stt },
    Target { name: "llm_openai_sse", run: providers::openai_sse },
    Target { name: "llm_gemini_sse", run: providers::gemini_sse },
    Target { name: "llm_anthropic_sse", run: providers::anthropic_sse },
    Target { name: "google_token", run: providers::google_token },
    Target { name: "gemini_cache", run: providers::gemini_cache },
    Target { name: "tts_cartesia", run: providers::cartesia },
    Target { name: "tts_elevenlabs", run: providers::elevenlabs },
    Target { name: "tts_sarvam", run: providers::sarvam_tts },
    Target { name: "tts_aura", run: providers::aura },
    Target { name: "bot_config", run: core::bot_config },
    Target { name: "livekit_dispatch", run: core::livekit_dispatch },
    Target { name: "livekit_dialout", run: core::livekit_dialout },
    Target { name: "livekit_attach", run: core::livekit_attach },
    Target { name: "livekit_widget", run: core::livekit_widget },
    Target { name: "outbox_entry", run: core::outbox_entry },
    Target { name: "recording_range", run: core::recording_range },
    Target { name: "journal_reader", run: core::journal_reader },
    Target { name: "knowledge_search", run: knowledge::search_response },
];

/// The target called `name`.
pub fn target(name: &str) -> Option<Target> {
    TARGETS.iter().copied().find(|t| t.name == name)
}

/// Runs the target called `name` on `data` (the body of each cargo-fuzz binary).
pub fn run_target(name: &str, data: &[u8]) {
    match target(name) {
        Some(t) => (t.run)(data),
        None => panic!("no fuzz target {name:?}"),
    }
}

/// UTF-8 text of a record (WebSocket text frames and HTTP headers are text; anything else never
/// reaches the parser).
fn text(bytes: &[u8]) -> Option<&str> {
    std::str::from_utf8(bytes).ok()
}
