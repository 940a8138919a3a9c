//! Provider-neutral chat types shared by the conversation engine and the LLM clients.

use serde::{Deserialize, Serialize};

/// A tool call the model asked for, reassembled from streamed deltas.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ToolCall {
    pub id: String,
    pub name: String,
    /// Raw JSON arguments as the model produced them (may be invalid JSON: the caller checks).
    pub arguments: String,
    /// Gemini's opaque `thoughtSignature` for this call, replayed with it on the next request
    /// (the API requires it for function calls of thinking models). `None` for other vendors.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub thought_signature: Option<String>,
}

/// One message of the conversation context.
#[derive(Debug, Clone, PartialEq)]
pub enum ChatMessage {
    System(String),
    User(String),
    Assistant { content: Option<String>, tool_calls: Vec<ToolCall> },
    Tool { tool_call_id: String, content: String },
}

/// Token usage of one LLM request, in OpenAI's naming whatever the vendor (wire-protocols §4 and
/// part 2 §2 give each vendor's mapping).
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct Usage {
    /// Every input token, cached or not (Gemini `promptTokenCount`; Anthropic `input_tokens` +
    /// `cache_creation_input_tokens` + `cache_read_input_tokens`).
    pub prompt_tokens: u64,
    /// Output tokens, thoughts excluded where the vendor counts them apart (Gemini).
    pub completion_tokens: u64,
    pub total_tokens: u64,
    /// Input tokens read from a prompt cache (OpenAI `cached_tokens`, Gemini
    /// `cachedContentTokenCount`, Anthropic `cache_read_input_tokens`).
    pub cached_tokens: u64,
    /// Input tokens written to a prompt cache (OpenAI `cache_write_tokens`, Anthropic
    /// `cache_creation_input_tokens`; 0 when the vendor does not report writes).
    pub cache_write_tokens: u64,
    /// Thinking tokens a vendor reports apart from the output (Gemini `thoughtsTokenCount`).
    #[serde(default)]
    pub thoughts_tokens: u64,
}

impl Usage {
    /// Input tokens neither read from nor written to a cache (`llm_cache_summary.fresh_prompt_tokens`).
    pub fn fresh_prompt_tokens(&self) -> u64 {
        self.prompt_tokens.saturating_sub(self.cached_tokens).saturating_sub(self.cache_write_tokens)
    }

    /// Add another request's counts (a call's or a job's total).
    pub fn accumulate(&mut self, other: &Usage) {
        self.prompt_tokens += other.prompt_tokens;
        self.completion_tokens += other.completion_tokens;
        self.total_tokens += other.total_tokens;
        self.cached_tokens += other.cached_tokens;
        self.cache_write_tokens += other.cache_write_tokens;
        self.thoughts_tokens += other.thoughts_tokens;
    }
}

/// A streaming chat request in no vendor's format; each LLM client renders it for its API.
#[derive(Debug, Clone, Default)]
pub struct ChatRequest {
    /// Empty: the vendor's default model (the provider registry's).
    pub model: String,
    pub messages: Vec<ChatMessage>,
    /// Functions the model may call (bot configs write them in OpenAI's shape: read them with
    /// [`ToolSpec::from_openai_json`]).
    pub tools: Vec<ToolSpec>,
    pub temperature: Option<f32>,
    pub max_tokens: Option<u32>,
    /// Vendor-specific parameters merged into the request body as they are (top_p,
    /// presence_penalty, prompt_cache_key, ...): the bot's `llm.extra` speaks its vendor's API.
    pub extra: serde_json::Map<String, serde_json::Value>,
    /// Plain text, or JSON output (post-call analysis): each client renders it in its vendor's
    /// way (OpenAI `response_format`, Gemini `responseMimeType`/`responseSchema`, Anthropic by
    /// instruction).
    pub response: ResponseFormat,
    /// The live prompt cache (contract §4.3): set when the bot's `prompt_parts` engage it. The
    /// system prompt then comes from here, not from `messages`.
    pub prompt_cache: Option<PromptCache>,
}

/// A request's cacheable prefix, in no vendor's terms. Each client uses the vendor's own
/// mechanism: Gemini/Vertex an explicit `cachedContents` resource holding the static block and the
/// tools, Anthropic `cache_control` on the static block, OpenAI `prompt_cache_key` hints.
///
/// With a `PromptCache` the request's system prompt is `static_system`, then `dynamic_system`,
/// then any `ChatMessage::System` messages that open `messages` (so `messages` should not repeat
/// the two blocks).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct PromptCache {
    /// Who shares the prefix: the bot (`bot_id`). Requests with the same key, version, model and
    /// static content share one cache across every call of the worker.
    pub key: String,
    /// The cacheable block (`prompt_parts.static_system_prompt`): the same for every call.
    pub static_system: String,
    /// The per-call block (`prompt_parts.dynamic_runtime_prompt`), sent after the static one.
    pub dynamic_system: String,
    /// `prompt_parts.static_version`: bumping it starts a new cache.
    pub static_version: String,
    /// `prompt_parts.prompt_cache_key`: OpenAI's `prompt_cache_key` (default: `key` and the version).
    pub openai_key: Option<String>,
    /// `prompt_parts.prompt_cache_retention` (`in_memory` or `24h`): OpenAI's
    /// `prompt_cache_retention`.
    pub retention: Option<String>,
}

/// What shape of answer a request asks for.
#[derive(Debug, Clone, Default, PartialEq)]
pub enum ResponseFormat {
    #[default]
    Text,
    /// A JSON object; with a JSON Schema when the prompt gives one.
    Json { schema: Option<serde_json::Value> },
}

/// A function the model may call, in no vendor's format. Each LLM client renders it to its own
/// wire shape (OpenAI `{"type":"function","function":{..}}`, Gemini `functionDeclarations`,
/// Anthropic `tools[].input_schema`), cleaning the schema to what that vendor accepts.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ToolSpec {
    pub name: String,
    #[serde(default)]
    pub description: String,
    /// JSON Schema of the arguments object (`{"type":"object","properties":{..}}`).
    #[serde(default = "empty_object_schema")]
    pub parameters: serde_json::Value,
}

fn empty_object_schema() -> serde_json::Value {
    serde_json::json!({"type": "object", "properties": {}})
}

impl ToolSpec {
    /// Read a tool as bot configs and the OpenAI API write it: `{"type":"function","function":
    /// {"name","description","parameters"}}`, or the bare function object. Fields only the worker
    /// uses (an HTTP binding) are not part of the spec. `None` when there is no usable name.
    pub fn from_openai_json(v: &serde_json::Value) -> Option<ToolSpec> {
        let f = v.get("function").unwrap_or(v);
        let name = f.get("name")?.as_str()?.trim();
        if name.is_empty() {
            return None;
        }
        let description = f.get("description").and_then(|d| d.as_str()).unwrap_or_default().to_string();
        let parameters = match f.get("parameters") {
            Some(p) if p.is_object() => p.clone(),
            _ => empty_object_schema(),
        };
        Some(ToolSpec { name: name.to_string(), description, parameters })
    }

    /// The OpenAI Chat Completions shape.
    pub fn to_openai_json(&self) -> serde_json::Value {
        serde_json::json!({
            "type": "function",
            "function": {"name": self.name, "description": self.description, "parameters": self.parameters}
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn usage_fresh_tokens_and_sums() {
        let a = Usage {
            prompt_tokens: 2000,
            completion_tokens: 10,
            total_tokens: 2016,
            cached_tokens: 1500,
            cache_write_tokens: 300,
            thoughts_tokens: 6,
        };
        assert_eq!(a.fresh_prompt_tokens(), 200);
        let mut total = Usage::default();
        total.accumulate(&a);
        total.accumulate(&a);
        assert_eq!((total.prompt_tokens, total.cached_tokens, total.thoughts_tokens), (4000, 3000, 12));
        // Older stored usage without the newer field still reads.
        let old: Usage = serde_json::from_value(json!({"prompt_tokens":1,"completion_tokens":2,"total_tokens":3,
            "cached_tokens":0,"cache_write_tokens":0}))
        .unwrap();
        assert_eq!(old.thoughts_tokens, 0);
    }

    #[test]
    fn tool_spec_reads_wrapped_and_bare_functions_and_round_trips() {
        let wrapped = json!({"type":"function","function":{"name":"lookup","description":"d",
            "parameters":{"type":"object","properties":{"q":{"type":"string"}}}},"http":{"url":"x"}});
        let spec = ToolSpec::from_openai_json(&wrapped).unwrap();
        assert_eq!(spec.name, "lookup");
        assert_eq!(spec.parameters["properties"]["q"]["type"], "string");
        assert_eq!(ToolSpec::from_openai_json(&spec.to_openai_json()).unwrap(), spec);
        let bare = json!({"name":"end_call"});
        assert_eq!(ToolSpec::from_openai_json(&bare).unwrap().parameters, json!({"type":"object","properties":{}}));
        assert!(ToolSpec::from_openai_json(&json!({"name":"  "})).is_none());
        assert!(ToolSpec::from_openai_json(&json!({"function":{}})).is_none());
    }
}
