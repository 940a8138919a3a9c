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
