//! Anthropic Messages against cxb-sim's strict Anthropic double over loopback (wire-protocols
//! §4): headers and body the double accepts, `tool_use` assembled from `input_json_delta`, the
//! `tool_result` round trip, prompt-cache usage through `cache_control`, every error path.

mod support;

use std::time::Duration;

use cxb_providers::llm::{CacheStatus, LlmClient, LlmEvent, LlmParams};
use cxb_providers::ProviderError;
use cxb_sim::SimServer;
use cxb_wire::llm::{ChatMessage, ChatRequest, PromptCache, ToolSpec, Usage};
use serde_json::json;
use support::llm::{big_static_prompt, cache_report, collect, done, error, params, sim, text, tool_calls};

fn anthropic(server: &SimServer) -> LlmParams {
    params("anthropic", &server.url("http"), "sk-ant-test")
}

fn request(model: &str, said: &str) -> ChatRequest {
    ChatRequest {
        model: model.into(),
        messages: vec![
            ChatMessage::System("You are Priya.".into()),
            ChatMessage::Assistant { content: Some("Hello! How can I help?".into()), tool_calls: vec![] },
            ChatMessage::User(said.into()),
        ],
        tools: vec![ToolSpec::from_openai_json(
            &json!({"type": "function", "function": {"name": "end_call", "description": "End the call.",
            "parameters": {"type": "object", "properties": {"final_message": {"type": "string"}}}}}),
        )
        .unwrap()],
        temperature: Some(0.3),
        max_tokens: Some(200),
        extra: json!({"top_p": 0.9, "presence_penalty": 0.2}).as_object().cloned().unwrap(),
        ..Default::default()
    }
}

#[tokio::test]
async fn anthropic_request_shape_text_and_usage() {
    let server = sim().await;
    let events =
        collect(LlmClient::new().stream(&anthropic(&server), request("claude-sonnet-4-5", "my bill please"))).await;
    assert!(text(&events).starts_with("Of course. Your last bill"), "{events:?}");
    let (finish, usage) = done(&events);
    assert_eq!(finish.as_deref(), Some("stop"));
    let usage = usage.unwrap();
    assert!(usage.prompt_tokens > 0 && usage.completion_tokens > 0);
    assert_eq!(usage.total_tokens, usage.prompt_tokens + usage.completion_tokens);
    let body = server.state.llm_requests.lock().unwrap().back().cloned().unwrap();
    assert_eq!(
        body,
        json!({"model": "claude-sonnet-4-5", "max_tokens": 200, "stream": true, "temperature": 0.3, "top_p": 0.9,
            "system": [{"type": "text", "text": "You are Priya."}],
            "messages": [
                {"role": "user", "content": [{"type": "text", "text": "(The call has started.)"}]},
                {"role": "assistant", "content": [{"type": "text", "text": "Hello! How can I help?"}]},
                {"role": "user", "content": [{"type": "text", "text": "my bill please"}]}],
            "tools": [{"name": "end_call", "description": "End the call.",
                "input_schema": {"type": "object", "properties": {"final_message": {"type": "string"}}}}],
            "tool_choice": {"type": "auto"}})
    );
}

#[tokio::test]
async fn anthropic_tool_use_from_input_json_deltas_and_the_result_round_trip() {
    let server = sim().await;
    let client = LlmClient::new();
    let first = request("claude-sonnet-4-5", "thank you, goodbye");
    let events = collect(client.stream(&anthropic(&server), first.clone())).await;
    assert_eq!(done(&events).0.as_deref(), Some("tool_calls"));
    let calls = tool_calls(&events);
    assert_eq!(calls.len(), 1);
    assert!(calls[0].id.starts_with("toolu_"));
    assert_eq!(calls[0].name, "end_call");
    assert_eq!(
        serde_json::from_str::<serde_json::Value>(&calls[0].arguments).unwrap(),
        json!({"reason": "the caller said goodbye"})
    );

    let mut next = first;
    next.messages.push(ChatMessage::Assistant { content: None, tool_calls: calls.clone() });
    next.messages.push(ChatMessage::Tool { tool_call_id: calls[0].id.clone(), content: "ended".into() });
    let events = collect(client.stream(&anthropic(&server), next)).await;
    assert_eq!(text(&events), "Thank you for calling. Goodbye!", "end_call's own after-tool reply");
    let body = server.state.llm_requests.lock().unwrap().back().cloned().unwrap();
    assert_eq!(body["messages"][3]["content"][0]["type"], "tool_use");
    assert_eq!(
        body["messages"][4],
        json!({"role": "user", "content": [
        {"type": "tool_result", "tool_use_id": calls[0].id, "content": "ended"}]})
    );
}

#[tokio::test]
async fn anthropic_prompt_cache_writes_then_reads() {
    let server = sim().await;
    let client = LlmClient::new();
    let cached = |caller: &str| {
        let mut req = request("claude-sonnet-4-5", "my bill please");
        req.messages.remove(0);
        req.prompt_cache = Some(PromptCache {
            key: "bot-1".into(),
            static_system: big_static_prompt(),
            dynamic_system: format!("The caller is {caller}."),
            static_version: "1".into(),
            ..Default::default()
        });
        req
    };
    let first = collect(client.stream(&anthropic(&server), cached("Asha"))).await;
    let u1: Usage = done(&first).1.unwrap();
    assert_eq!(cache_report(&first).unwrap().status, CacheStatus::Written);
    assert!(u1.cache_write_tokens >= 1024 && u1.cached_tokens == 0, "{u1:?}");
    // Another call, another dynamic block: the static prefix is read from the cache.
    let second = collect(client.stream(&anthropic(&server), cached("Ravi"))).await;
    let u2 = done(&second).1.unwrap();
    assert_eq!(cache_report(&second).unwrap().status, CacheStatus::Hit);
    assert_eq!(u2.cached_tokens, u1.cache_write_tokens);
    assert_eq!(u2.prompt_tokens, u2.fresh_prompt_tokens() + u2.cached_tokens);
    let body = server.state.llm_requests.lock().unwrap().back().cloned().unwrap();
    assert_eq!(body["system"][0]["cache_control"], json!({"type": "ephemeral"}));
    assert_eq!(body["system"][1], json!({"type": "text", "text": "The caller is Ravi."}));
}

#[tokio::test]
async fn anthropic_error_paths() {
    let server = sim().await;
    let client = LlmClient::new();
    let run = |model: &str, p: LlmParams| collect(client.stream(&p, request(model, "hello")));

    let e = error(&run("fail-500", anthropic(&server)).await);
    assert!(
        matches!(&e, ProviderError::Status { status: 500, body, .. } if body == "Internal server error (api_error)"),
        "{e:?}"
    );
    let e = error(&run("overloaded", anthropic(&server)).await);
    assert!(
        matches!(&e, ProviderError::Status { status: 529, body, .. } if body == "Overloaded (overloaded_error)"),
        "{e:?}"
    );
    let e = error(&run("claude", params("anthropic", &server.url("http"), "bad-key")).await);
    assert!(
        matches!(&e, ProviderError::Status { status: 401, body, .. } if body == "invalid x-api-key (authentication_error)"),
        "{e:?}"
    );
    let e = error(&run("claude", params("anthropic", &server.url("http"), "")).await);
    assert!(matches!(&e, ProviderError::Config { provider: "anthropic", .. }), "{e:?}");

    let events = run("midstream-error", anthropic(&server)).await;
    assert!(matches!(events[0], LlmEvent::Token(_)), "{events:?}");
    assert!(
        matches!(&error(&events), ProviderError::Remote { provider: "anthropic", detail } if detail == "Overloaded (overloaded_error)")
    );
    let e = error(&run("truncated", anthropic(&server)).await);
    assert!(matches!(&e, ProviderError::Closed { detail, .. } if detail.contains("message_stop")), "{e:?}");

    let mut p = anthropic(&server);
    p.idle_timeout = Duration::from_millis(300);
    let e = error(&run("stall", p).await);
    assert!(matches!(e, ProviderError::Timeout { provider: "anthropic", .. }), "{e:?}");
}
