//! Provider-neutral chat types shared by the conversation engine and the LLM clients.

use serde::{Deserialize, Serialize};

/// A tool call the model asked for, reassembled from streamed deltas.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ToolCall {
    pub id: String,
    pub name: String,
    /// Raw JSON arguments as the model produced them (may be invalid JSON: the caller checks).
    pub arguments: String,
}

/// One message of the conversation context.
#[derive(Debug, Clone, PartialEq)]
pub enum ChatMessage {
    System(String),
    User(String),
    Assistant { content: Option<String>, tool_calls: Vec<ToolCall> },
    Tool { tool_call_id: String, content: String },
}

/// Token usage of one LLM request (OpenAI naming; see wire-protocols §4 for the cache mapping).
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct Usage {
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
    pub total_tokens: u64,
    /// `prompt_tokens_details.cached_tokens`: cache reads.
    pub cached_tokens: u64,
    /// `prompt_tokens_details.cache_write_tokens` (0 when absent/null).
    pub cache_write_tokens: u64,
}

/// A streaming chat request. `tools` are OpenAI function-tool JSON objects
/// (`{"type":"function","function":{...}}`).
#[derive(Debug, Clone, Default)]
pub struct ChatRequest {
    pub model: String,
    pub messages: Vec<ChatMessage>,
    pub tools: Vec<serde_json::Value>,
    pub temperature: Option<f32>,
    pub max_tokens: Option<u32>,
    /// Extra provider parameters merged into the body (top_p, presence_penalty, ...).
    pub extra: serde_json::Map<String, serde_json::Value>,
}
