//! Anthropic Messages streaming (`POST {base}/v1/messages`, SSE; wire-protocols §4).
//!
//! Request: `system` at the top level (with the live prompt cache: the static block marked
//! `cache_control: ephemeral`, then the dynamic one), `tools` with `input_schema`, `tool_use`
//! blocks replayed in assistant turns and `tool_result` blocks in user turns, consecutive
//! same-role turns merged, a user turn first. JSON mode is an instruction appended to the system
//! prompt (the API has no JSON switch; a `{` prefill is refused by newer models, so none is sent).
//!
//! Response: `message_start` (input and cache usage), text deltas, tool input assembled from
//! `input_json_delta` per block, `message_delta` (stop reason, cumulative output tokens),
//! `message_stop`; `error` events at any point.

use std::collections::BTreeMap;

use cxb_wire::llm::{ChatMessage, ChatRequest, ResponseFormat, ToolCall, ToolSpec, Usage};
use serde_json::{json, Map, Value};
use tokio::sync::mpsc;

use crate::llm::{LlmEvent, LlmParams};
use crate::llm_gemini::OPENING_USER_TURN;
use crate::llm_openai::{error_body, f32_to_f64, report_failure, send_all, send_bounded, SseBody, StreamState};
use crate::prompt_cache::{split_system, CacheReport};
use crate::ProviderError;

const PROVIDER: &str = crate::registry::ANTHROPIC.name;
/// The API root (the client adds `/v1/messages`).
pub const DEFAULT_BASE_URL: &str = crate::registry::ANTHROPIC.api_root;
pub const API_VERSION: &str = "2023-06-01";
/// `max_tokens` is required; this is used when the bot sets none.
const DEFAULT_MAX_TOKENS: u32 = 1024;
/// Appended to the system prompt for `ResponseFormat::Json`.
const JSON_INSTRUCTION: &str = "Answer with a single JSON object and nothing else: no prose, no Markdown code fences.";

pub(crate) async fn run(http: reqwest::Client, params: LlmParams, req: ChatRequest, tx: mpsc::Sender<LlmEvent>) {
    if let Err(e) = stream_messages(&http, &params, &req, &tx).await {
        report_failure(e, &req.model, &tx).await;
    }
}

/// `{base}/v1/messages`; a base that already ends in `/v1` gets `/messages`.
fn messages_url(base: &str) -> String {
    let base = if base.trim().is_empty() { DEFAULT_BASE_URL } else { base.trim() }.trim_end_matches('/');
    if base.ends_with("/v1") {
        format!("{base}/messages")
    } else {
        format!("{base}/v1/messages")
    }
}

async fn stream_messages(
    http: &reqwest::Client,
    params: &LlmParams,
    req: &ChatRequest,
    tx: &mpsc::Sender<LlmEvent>,
) -> Result<(), ProviderError> {
    if params.api_key.trim().is_empty() {
        return Err(ProviderError::Config {
            provider: PROVIDER,
            detail: "no API key (llm.api_key or ANTHROPIC_API_KEY)".into(),
        });
    }
    let send = http
        .post(messages_url(&params.base_url))
        .header("x-api-key", params.api_key.trim())
        .header("anthropic-version", API_VERSION)
        .json(&request_body(req, &req.tools))
        .send();
    let resp = send_bounded(PROVIDER, params.idle_timeout, send).await?;
    if !resp.status().is_success() {
        let status = resp.status().as_u16();
        let body = error_body(resp, params.idle_timeout).await;
        let body = error_body_detail(body);
        return Err(ProviderError::Status { provider: PROVIDER, status, body });
    }
    let mut acc = Accumulator::default();
    if !SseBody::new(PROVIDER, resp, params.idle_timeout).pump(&mut acc, tx).await? {
        return Ok(());
    }
    send_all(tx, acc.conclude(req.prompt_cache.is_some())?).await;
    Ok(())
}

/// A non-2xx answer's body: the error's detail when it is Anthropic's error JSON, else the body.
pub(crate) fn error_body_detail(body: String) -> String {
    serde_json::from_str::<Value>(&body).ok().and_then(|v| error_detail(&v)).unwrap_or(body)
}

/// `{"type":"error","error":{"type":"overloaded_error","message":"Overloaded"}}` → "Overloaded
/// (overloaded_error)".
fn error_detail(v: &Value) -> Option<String> {
    let error = v.get("error")?;
    let message = error.get("message").and_then(Value::as_str).unwrap_or("unknown error");
    Some(match error.get("type").and_then(Value::as_str) {
        Some(kind) => format!("{message} ({kind})"),
        None => message.to_string(),
    })
}

// ---------------------------------------------------------------------------------------------
// Request

pub(crate) fn request_body(req: &ChatRequest, tools: &[ToolSpec]) -> Value {
    let mut body = Map::new();
    body.insert("model".into(), json!(req.model));
    body.insert("max_tokens".into(), json!(req.max_tokens.unwrap_or(DEFAULT_MAX_TOKENS)));
    body.insert("stream".into(), json!(true));
    let system = split_system(req);
    let system_blocks = system_blocks(req, system.cacheable, &system.rest);
    if !system_blocks.is_empty() {
        body.insert("system".into(), Value::Array(system_blocks));
    }
    body.insert("messages".into(), Value::Array(messages(system.conversation)));
    if !tools.is_empty() {
        let tools: Vec<Value> = tools
            .iter()
            .map(|t| {
                let mut schema = t.parameters.clone();
                if schema.get("type").is_none() {
                    schema["type"] = json!("object");
                }
                json!({ "name": t.name, "description": t.description, "input_schema": schema })
            })
            .collect();
        body.insert("tools".into(), Value::Array(tools));
        body.insert("tool_choice".into(), json!({ "type": "auto" }));
    }
    if let Some(t) = req.temperature {
        body.insert("temperature".into(), json!(f32_to_f64(t)));
    }
    for (key, value) in &req.extra {
        match key.as_str() {
            "top_p" | "top_k" | "stop_sequences" | "metadata" => {
                body.insert(key.clone(), value.clone());
            }
            "stop" => {
                let stops = if value.is_string() { json!([value]) } else { value.clone() };
                body.insert("stop_sequences".into(), stops);
            }
            // The API refuses fields it does not know; other vendors' options stay out.
            other => tracing::debug!(key = other, "llm.extra key not used by Anthropic"),
        }
    }
    Value::Object(body)
}

/// The system prompt as text blocks. The static block of a live prompt cache carries the cache
/// breakpoint (the cached prefix is tools, then system up to the breakpoint); without one, an
/// OpenAI-style `prompt_cache_key` hint (post-call) marks the whole system prompt.
fn system_blocks(req: &ChatRequest, cacheable: Option<&str>, rest: &str) -> Vec<Value> {
    let mut rest = rest.to_string();
    let json_mode = match &req.response {
        ResponseFormat::Json { schema } => Some(schema.clone()),
        ResponseFormat::Text => {
            match req.extra.get("response_format").and_then(|v| v.get("type")).and_then(Value::as_str) {
                Some("json_object") => Some(None),
                _ => None,
            }
        }
    };
    if let Some(schema) = json_mode {
        let mut instruction = JSON_INSTRUCTION.to_string();
        if let Some(schema) = schema {
            instruction.push_str(&format!(" It must validate against this JSON Schema: {schema}"));
        }
        rest = if rest.is_empty() { instruction } else { format!("{rest}\n\n{instruction}") };
    }
    let ephemeral = json!({ "type": "ephemeral" });
    let mut blocks = Vec::new();
    match cacheable {
        Some(static_block) => {
            blocks.push(json!({ "type": "text", "text": static_block, "cache_control": ephemeral }));
            if !rest.is_empty() {
                blocks.push(json!({ "type": "text", "text": rest }));
            }
        }
        None if !rest.is_empty() => {
            let mut block = json!({ "type": "text", "text": rest });
            if req.extra.contains_key("prompt_cache_key") {
                block["cache_control"] = ephemeral;
            }
            blocks.push(block);
        }
        None => {}
    }
    blocks
}

/// `user`/`assistant` messages of content blocks, consecutive same-role turns merged, opening with
/// a user turn (the API refuses an assistant turn first).
fn messages(conversation: &[ChatMessage]) -> Vec<Value> {
    let mut turns: Vec<(&'static str, Vec<Value>)> = Vec::new();
    let mut push = |role: &'static str, block: Value| match turns.last_mut() {
        Some((last, blocks)) if *last == role => blocks.push(block),
        _ => turns.push((role, vec![block])),
    };
    for msg in conversation {
        match msg {
            ChatMessage::System(text) | ChatMessage::User(text) => {
                if !text.trim().is_empty() {
                    push("user", json!({ "type": "text", "text": text }));
                }
            }
            ChatMessage::Assistant { content, tool_calls } => {
                if let Some(text) = content.as_deref().filter(|t| !t.trim().is_empty()) {
                    push("assistant", json!({ "type": "text", "text": text }));
                }
                for call in tool_calls {
                    let input = match serde_json::from_str::<Value>(&call.arguments) {
                        Ok(v @ Value::Object(_)) => v,
                        _ => json!({}),
                    };
                    push("assistant", json!({ "type": "tool_use", "id": call.id, "name": call.name, "input": input }));
                }
            }
            ChatMessage::Tool { tool_call_id, content } => {
                push("user", json!({ "type": "tool_result", "tool_use_id": tool_call_id, "content": content }));
            }
        }
    }
    if turns.first().is_none_or(|(role, _)| *role != "user") {
        turns.insert(0, ("user", vec![json!({ "type": "text", "text": OPENING_USER_TURN })]));
    }
    turns.into_iter().map(|(role, content)| json!({ "role": role, "content": content })).collect()
}

// ---------------------------------------------------------------------------------------------
// Response

enum Block {
    Text,
    ToolUse {
        id: String,
        name: String,
        input: String,
    },
    /// Thinking and anything newer: not for the caller.
    Other,
}

/// State of one response across events.
#[derive(Default)]
pub(crate) struct Accumulator {
    blocks: BTreeMap<u64, Block>,
    input_tokens: u64,
    cache_creation: u64,
    cache_read: u64,
    output_tokens: u64,
    saw_usage: bool,
    stop_reason: Option<String>,
    /// `message_stop` seen.
    stopped: bool,
}

impl StreamState for Accumulator {
    fn finished(&self) -> bool {
        self.stopped
    }

    /// Apply one event's data; returns a text delta, if any.
    fn on_data(&mut self, data: &str) -> Result<Option<String>, ProviderError> {
        let v: Value = match serde_json::from_str(data) {
            Ok(v) => v,
            Err(e) => {
                tracing::warn!(error = %e, "ignoring malformed Anthropic event");
                return Ok(None);
            }
        };
        let index = v.get("index").and_then(Value::as_u64).unwrap_or(0);
        match v.get("type").and_then(Value::as_str).unwrap_or("") {
            "message_start" => {
                if let Some(usage) = v.pointer("/message/usage") {
                    self.apply_usage(usage);
                }
            }
            "content_block_start" => {
                let block = &v["content_block"];
                let kind = match block.get("type").and_then(Value::as_str) {
                    Some("text") => Block::Text,
                    Some("tool_use") => Block::ToolUse {
                        id: block["id"].as_str().unwrap_or_default().to_string(),
                        name: block["name"].as_str().unwrap_or_default().to_string(),
                        input: String::new(),
                    },
                    _ => Block::Other,
                };
                self.blocks.insert(index, kind);
                // A text block may start with text already.
                if let Some(text) = block.get("text").and_then(Value::as_str).filter(|t| !t.is_empty()) {
                    return Ok(Some(text.to_string()));
                }
            }
            "content_block_delta" => {
                let delta = &v["delta"];
                match (self.blocks.get_mut(&index), delta.get("type").and_then(Value::as_str)) {
                    (Some(Block::Text) | None, Some("text_delta")) => {
                        let text = delta.get("text").and_then(Value::as_str).unwrap_or_default();
                        return Ok((!text.is_empty()).then(|| text.to_string()));
                    }
                    (Some(Block::ToolUse { input, .. }), Some("input_json_delta")) => {
                        input.push_str(delta.get("partial_json").and_then(Value::as_str).unwrap_or_default());
                    }
                    _ => {}
                }
            }
            "message_delta" => {
                if let Some(reason) = v.pointer("/delta/stop_reason").and_then(Value::as_str) {
                    self.stop_reason = Some(reason.to_string());
                }
                if let Some(usage) = v.get("usage") {
                    self.apply_usage(usage);
                }
            }
            "message_stop" => self.stopped = true,
            "error" => {
                let detail = error_detail(&v).unwrap_or_else(|| "error event".into());
                return Err(ProviderError::Remote { provider: PROVIDER, detail });
            }
            // `ping`, `content_block_stop` and event types added later.
            _ => {}
        }
        Ok(None)
    }
}

impl Accumulator {
    /// Counts present in the event replace the earlier ones (`output_tokens` is cumulative).
    fn apply_usage(&mut self, usage: &Value) {
        let n = |k: &str| usage.get(k).and_then(Value::as_u64);
        self.saw_usage = true;
        for (key, slot) in [
            ("input_tokens", &mut self.input_tokens),
            ("cache_creation_input_tokens", &mut self.cache_creation),
            ("cache_read_input_tokens", &mut self.cache_read),
            ("output_tokens", &mut self.output_tokens),
        ] {
            if let Some(value) = n(key) {
                *slot = value;
            }
        }
    }

    /// Input in total is `input_tokens` (the uncached part) plus both cache counts. The counts
    /// are the vendor's numbers: sums saturate rather than overflow.
    fn usage(&self) -> Option<Usage> {
        let prompt = self.input_tokens.saturating_add(self.cache_creation).saturating_add(self.cache_read);
        self.saw_usage.then_some(Usage {
            prompt_tokens: prompt,
            completion_tokens: self.output_tokens,
            total_tokens: prompt.saturating_add(self.output_tokens),
            cached_tokens: self.cache_read,
            cache_write_tokens: self.cache_creation,
            thoughts_tokens: 0,
        })
    }

    /// The body ended: the closing events (the cache report when the request carried a cache
    /// hint), or why the answer is incomplete.
    pub(crate) fn conclude(self, cache_hint: bool) -> Result<Vec<LlmEvent>, ProviderError> {
        if !self.stopped && self.stop_reason.is_none() {
            return Err(ProviderError::Closed {
                provider: PROVIDER,
                detail: "stream ended before message_stop".into(),
            });
        }
        let cache = cache_hint.then(|| CacheReport::from_usage(self.usage().as_ref()));
        Ok(self.into_events(cache))
    }

    /// `ToolCalls` (if any), the cache report (if any), then `Done`.
    fn into_events(self, cache: Option<CacheReport>) -> Vec<LlmEvent> {
        let usage = self.usage();
        let finish_reason = self.stop_reason.as_deref().map(|r| {
            match r {
                "end_turn" | "stop_sequence" => "stop",
                "max_tokens" => "length",
                "tool_use" => "tool_calls",
                "refusal" => "content_filter",
                other => other,
            }
            .to_string()
        });
        let calls: Vec<ToolCall> = self
            .blocks
            .into_values()
            .filter_map(|b| match b {
                Block::ToolUse { id, name, input } => Some(ToolCall {
                    id,
                    name,
                    // A tool without parameters streams no input at all.
                    arguments: if input.trim().is_empty() { "{}".into() } else { input },
                    thought_signature: None,
                }),
                _ => None,
            })
            .collect();
        let mut events = Vec::with_capacity(3);
        if !calls.is_empty() {
            events.push(LlmEvent::ToolCalls(calls));
        }
        events.extend(cache.map(LlmEvent::Cache));
        events.push(LlmEvent::Done { finish_reason, usage });
        events
    }
}

#[cfg(test)]
mod tests {
    use cxb_wire::llm::PromptCache;

    use super::*;

    /// Usage counts near `u64::MAX` overflowed the prompt total (a panic in builds with overflow
    /// checks, a wrong total in others); seen while writing the `llm_anthropic_sse` fuzz target.
    #[test]
    fn huge_usage_counts_saturate() {
        let mut acc = Accumulator::default();
        let max = u64::MAX;
        let start = format!(
            r#"{{"type":"message_start","message":{{"usage":{{"input_tokens":{max},"cache_read_input_tokens":{max},"output_tokens":{max}}}}}}}"#
        );
        for data in [start.as_str(), r#"{"type":"message_delta","delta":{"stop_reason":"end_turn"}}"#] {
            acc.on_data(data).expect("no error event");
        }
        let events = acc.conclude(true).expect("a finished answer");
        let Some(LlmEvent::Done { usage: Some(usage), .. }) = events.last() else { panic!("{events:?}") };
        assert_eq!((usage.prompt_tokens, usage.total_tokens, usage.cached_tokens), (max, max, max));
    }

    #[test]
    fn urls() {
        assert_eq!(messages_url(""), "https://api.anthropic.com/v1/messages");
        assert_eq!(messages_url("http://127.0.0.1:9/"), "http://127.0.0.1:9/v1/messages");
        assert_eq!(messages_url("https://proxy/anthropic/v1"), "https://proxy/anthropic/v1/messages");
    }

    #[test]
    fn body_merges_turns_and_marks_the_cacheable_block() {
        let call = ToolCall {
            id: "toolu_1".into(),
            name: "lookup".into(),
            arguments: r#"{"q":"x"}"#.into(),
            thought_signature: None,
        };
        let req = ChatRequest {
            model: "claude-x".into(),
            messages: vec![
                ChatMessage::System("extra rules".into()),
                ChatMessage::Assistant { content: Some("Hello!".into()), tool_calls: vec![] },
                ChatMessage::User("hi".into()),
                ChatMessage::User("are you there".into()),
                ChatMessage::Assistant { content: None, tool_calls: vec![call] },
                ChatMessage::Tool { tool_call_id: "toolu_1".into(), content: "found".into() },
            ],
            prompt_cache: Some(PromptCache {
                static_system: "STATIC".into(),
                dynamic_system: "DYN".into(),
                ..Default::default()
            }),
            response: ResponseFormat::Json { schema: None },
            extra: json!({"top_k": 5, "parallel_tool_calls": true}).as_object().cloned().unwrap(),
            ..Default::default()
        };
        let body = request_body(&req, &[]);
        assert_eq!(body["system"][0], json!({"type":"text","text":"STATIC","cache_control":{"type":"ephemeral"}}));
        assert_eq!(body["system"][1]["text"], format!("DYN\n\nextra rules\n\n{JSON_INSTRUCTION}"));
        assert_eq!(body["max_tokens"], 1024);
        assert_eq!(body["top_k"], 5);
        assert!(body.get("parallel_tool_calls").is_none());
        let m = body["messages"].as_array().unwrap();
        let roles: Vec<&str> = m.iter().map(|t| t["role"].as_str().unwrap()).collect();
        assert_eq!(roles, ["user", "assistant", "user", "assistant", "user"]);
        assert_eq!(m[0]["content"][0]["text"], OPENING_USER_TURN);
        assert_eq!(m[2]["content"].as_array().unwrap().len(), 2);
        assert_eq!(m[3]["content"][0], json!({"type":"tool_use","id":"toolu_1","name":"lookup","input":{"q":"x"}}));
        assert_eq!(m[4]["content"][0], json!({"type":"tool_result","tool_use_id":"toolu_1","content":"found"}));
    }
}
