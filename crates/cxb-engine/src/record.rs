//! What the engine remembers about a call for the result payload: transcript lines, events,
//! per-turn latency samples and token usage. Offsets are from the call start; the driver turns
//! them into wall-clock timestamps.

use std::time::Duration;

use cxb_wire::llm::Usage;
use cxb_wire::result::Speaker;
use serde_json::{Map, Value};

#[derive(Debug, Clone, PartialEq)]
pub struct TranscriptLine {
    pub speaker: Speaker,
    pub text: String,
    pub at: Duration,
    pub interrupted: bool,
}

#[derive(Debug, Clone, PartialEq)]
pub struct EventRecord {
    pub kind: &'static str,
    pub at: Duration,
    pub data: Map<String, Value>,
}

/// One caller-turn → bot-audio response, all in milliseconds.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct LatencySample {
    pub turn: u32,
    /// VAD end-of-speech decision → turn closed (final transcript in hand).
    pub stt_final_delay_ms: f64,
    /// LLM request → first token.
    pub llm_ttft_ms: Option<f64>,
    /// LLM request → first speakable text (a whole sentence, or the reply's end) sent to TTS:
    /// the provider's first token plus the tokens it takes to finish a sentence.
    pub llm_first_sentence_ms: Option<f64>,
    /// First text sent to TTS → first audio back.
    pub tts_ttfb_ms: Option<f64>,
    /// Caller's last voiced frame (VAD stop minus its hangover) → first bot audio sent.
    pub total_response_ms: Option<f64>,
}

#[derive(Debug, Clone, Default)]
pub struct CallRecord {
    pub transcript: Vec<TranscriptLine>,
    pub events: Vec<EventRecord>,
    pub latency: Vec<LatencySample>,
    /// Conversation LLM usage, summed over requests.
    pub llm_usage: Usage,
    pub llm_requests: u32,
    pub tts_characters: u64,
    /// Seconds of caller audio the engine heard about (for STT usage).
    pub customer_spoke: bool,
}

impl CallRecord {
    pub(crate) fn event(&mut self, kind: &'static str, at: Duration, data: Value) {
        let data = match data {
            Value::Object(m) => m,
            Value::Null => Map::new(),
            other => {
                let mut m = Map::new();
                m.insert("value".into(), other);
                m
            }
        };
        self.events.push(EventRecord { kind, at, data });
    }

    pub(crate) fn add_usage(&mut self, u: &Usage) {
        let t = &mut self.llm_usage;
        t.prompt_tokens += u.prompt_tokens;
        t.completion_tokens += u.completion_tokens;
        t.total_tokens += u.total_tokens;
        t.cached_tokens += u.cached_tokens;
        t.cache_write_tokens += u.cache_write_tokens;
    }
}
