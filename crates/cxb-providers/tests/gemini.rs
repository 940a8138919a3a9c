//! The Gemini API client against cxb-sim's strict Gemini double over loopback (wire-protocols
//! part 2 §2): body shapes the double accepts, tool calls with thought signatures replayed, usage,
//! every error path, and the live prompt cache (`cachedContents`).

mod support;

use std::time::Duration;

use cxb_providers::llm::{CacheStatus, LlmClient, LlmClientSettings, LlmEvent, PromptCacheSettings};
use cxb_providers::ProviderError;
use cxb_sim::script::{Reply, Rule, ToolCallSpec};
use cxb_sim::{Script, SimServer};
use cxb_wire::llm::{ChatMessage, ChatRequest, PromptCache, ResponseFormat, ToolCall, ToolSpec, Usage};
use serde_json::{json, Value};
use support::llm::{big_static_prompt, cache_report, collect, done, error, params, sim, sim_with, text, tool_calls};

fn gemini(server: &SimServer) -> cxb_providers::llm::LlmParams {
    params("google", &server.url("http"), "test-key")
}

fn lookup_tool() -> ToolSpec {
    tool(json!({"type": "function", "function": {"name": "lookup_policy", "description": "Look up a policy.",
        "parameters": {"type": "object", "additionalProperties": false, "$schema": "x",
            "properties": {"phone": {"type": "string", "format": "phone"}, "kind": {"const": "renewal"},
                           "note": {"type": ["string", "null"]}},
            "required": ["phone"]}}}))
}

fn end_call_tool() -> ToolSpec {
    tool(
        json!({"type": "function", "function": {"name": "end_call", "parameters": {"type": "object", "properties": {}}}}),
    )
}

fn tool(openai_json: Value) -> ToolSpec {
    ToolSpec::from_openai_json(&openai_json).expect("a named tool")
}

/// The last generate request the double received.
fn last_body(server: &SimServer) -> Value {
    server.state.google.requests().last().expect("a request").body.clone()
}

fn user(text: &str) -> ChatMessage {
    ChatMessage::User(text.into())
}

#[tokio::test]
async fn gemini_request_shape_text_and_usage() {
    let server = sim().await;
    let req = ChatRequest {
        model: "gemini-2.5-flash".into(),
        messages: vec![
            ChatMessage::System("You are Priya.".into()),
            ChatMessage::Assistant { content: Some("Namaste! How can I help?".into()), tool_calls: vec![] },
            user("hello"),
            ChatMessage::System("The caller sounds hurried.".into()),
            user("I want to check my order status"),
        ],
        tools: vec![lookup_tool(), end_call_tool()],
        temperature: Some(0.3),
        max_tokens: Some(300),
        extra: json!({"top_p": 0.95, "top_k": 40, "parallel_tool_calls": true, "presence_penalty": 0.1})
            .as_object()
            .cloned()
            .unwrap(),
        ..Default::default()
    };
    let events = collect(LlmClient::new().stream(&gemini(&server), req)).await;
    assert!(text(&events).starts_with("Sure. Your order shipped yesterday"), "{events:?}");
    let (finish, usage) = done(&events);
    assert_eq!(finish.as_deref(), Some("stop"));
    let usage = usage.expect("usage");
    assert!(usage.prompt_tokens > 0 && usage.completion_tokens > 0);
    assert_eq!((usage.cached_tokens, usage.thoughts_tokens), (0, 0));
    assert_eq!(usage.total_tokens, usage.prompt_tokens + usage.completion_tokens);
    assert!(cache_report(&events).is_none(), "no cache hint, no cache report");

    let seen = server.state.google.requests().pop().unwrap();
    assert_eq!(seen.path, "/v1beta/models/gemini-2.5-flash:streamGenerateContent");
    let body = seen.body;
    assert_eq!(body["systemInstruction"], json!({"parts": [{"text": "You are Priya."}]}));
    // Consecutive user turns (and the later system note) merged into one user content.
    assert_eq!(
        body["contents"],
        json!([
            {"role": "model", "parts": [{"text": "Namaste! How can I help?"}]},
            {"role": "user", "parts": [{"text": "hello"}, {"text": "The caller sounds hurried."},
                                       {"text": "I want to check my order status"}]}
        ])
    );
    assert_eq!(
        body["generationConfig"],
        json!({"temperature": 0.3, "maxOutputTokens": 300, "topP": 0.95, "topK": 40, "presencePenalty": 0.1,
               "thinkingConfig": {"thinkingBudget": 0}})
    );
    assert_eq!(body["toolConfig"], json!({"functionCallingConfig": {"mode": "AUTO"}}));
    assert_eq!(
        body["tools"],
        json!([{"functionDeclarations": [
            {"name": "lookup_policy", "description": "Look up a policy.",
             "parameters": {"type": "OBJECT", "required": ["phone"], "properties": {
                 "phone": {"type": "STRING"}, "kind": {"enum": ["renewal"]}, "note": {"type": "STRING", "nullable": true}}}},
            {"name": "end_call"}
        ]}])
    );
}

#[tokio::test]
async fn gemini_thinking_json_mode_and_extra_thinking_settings() {
    let server = sim().await;
    let schema = json!({"type": "object", "additionalProperties": false,
        "properties": {"intent": {"type": "string", "enum": ["renew", "cancel"]}, "score": {"type": "integer"}},
        "required": ["intent"]});
    let req = ChatRequest {
        model: "gemini-3-flash".into(),
        messages: vec![user("summarise")],
        response: ResponseFormat::Json { schema: Some(schema) },
        ..Default::default()
    };
    let events = collect(LlmClient::new().stream(&gemini(&server), req)).await;
    done(&events);
    let gc = &last_body(&server)["generationConfig"];
    assert_eq!(gc["thinkingConfig"], json!({"thinkingLevel": "LOW"}));
    assert_eq!(gc["responseMimeType"], "application/json");
    assert_eq!(
        gc["responseSchema"],
        json!({"type": "OBJECT", "required": ["intent"],
               "properties": {"intent": {"type": "STRING", "enum": ["renew", "cancel"]}, "score": {"type": "INTEGER"}}})
    );

    // Configured thinking wins over the default; OpenAI-style JSON mode (post-call) is understood.
    let req = ChatRequest {
        model: "gemini-2.5-flash".into(),
        messages: vec![user("summarise")],
        extra: json!({"thinking_budget": 512, "include_thoughts": false, "response_format": {"type": "json_object"}})
            .as_object()
            .cloned()
            .unwrap(),
        ..Default::default()
    };
    let events = collect(LlmClient::new().stream(&gemini(&server), req)).await;
    assert!(done(&events).1.unwrap().thoughts_tokens > 0, "thinking on: thought tokens counted apart");
    let gc = &last_body(&server)["generationConfig"];
    assert_eq!(gc["thinkingConfig"], json!({"thinkingBudget": 512, "includeThoughts": false}));
    assert_eq!(gc["responseMimeType"], "application/json");
    assert!(gc.get("responseSchema").is_none());
}

/// A script whose "two things" turn calls two functions at once.
fn parallel_script() -> Script {
    let mut script = Script::embedded();
    script.rules.insert(
        0,
        Rule {
            when_user_says: "two things".into(),
            reply: Reply {
                text: String::new(),
                tool_calls: vec![
                    ToolCallSpec { name: "lookup_policy".into(), arguments: json!({"phone": "+919800000000"}) },
                    ToolCallSpec { name: "end_call".into(), arguments: json!({}) },
                ],
                ..Reply::default()
            },
        },
    );
    script
}

#[tokio::test]
async fn gemini_tool_calls_round_trip_with_thought_signatures() {
    let server = sim_with(|o| o.script = parallel_script()).await;
    let client = LlmClient::new();
    let first = vec![ChatMessage::System("sys".into()), user("two things please")];
    let req = |messages: Vec<ChatMessage>| ChatRequest {
        model: "gemini-3-flash".into(),
        messages,
        tools: vec![lookup_tool(), end_call_tool()],
        ..Default::default()
    };
    let events = collect(client.stream(&gemini(&server), req(first.clone()))).await;
    assert_eq!(done(&events).0.as_deref(), Some("tool_calls"));
    let calls = tool_calls(&events);
    assert_eq!(calls.len(), 2);
    assert_eq!(
        (calls[0].name.as_str(), calls[0].arguments.as_str()),
        ("lookup_policy", r#"{"phone":"+919800000000"}"#)
    );
    assert_eq!((calls[1].name.as_str(), calls[1].arguments.as_str()), ("end_call", "{}"));
    assert!(calls[0].thought_signature.is_some(), "the signature of a parallel call rides on the first part");
    assert!(calls[1].thought_signature.is_none());
    assert_ne!(calls[0].id, calls[1].id, "ids are made up when the API gives none");

    // The next turn replays the calls (with the signature) and answers both in one user turn.
    let mut history = first.clone();
    history.push(ChatMessage::Assistant { content: None, tool_calls: calls.clone() });
    history.push(ChatMessage::Tool { tool_call_id: calls[0].id.clone(), content: r#"{"expiry":"2026-09-30"}"#.into() });
    history.push(ChatMessage::Tool { tool_call_id: calls[1].id.clone(), content: "ok".into() });
    let events = collect(client.stream(&gemini(&server), req(history.clone()))).await;
    assert_eq!(text(&events), "Done.", "the first answered call picks the after-tool reply");
    let contents = &last_body(&server)["contents"];
    assert_eq!(contents[1]["role"], "model");
    assert_eq!(contents[1]["parts"][0]["thoughtSignature"], json!(calls[0].thought_signature));
    assert_eq!(
        contents[1]["parts"][0]["functionCall"],
        json!({"name": "lookup_policy", "args": {"phone": "+919800000000"}})
    );
    assert_eq!(
        contents[2],
        json!({"role": "user", "parts": [
            {"functionResponse": {"name": "lookup_policy", "response": {"output": {"expiry": "2026-09-30"}}}},
            {"functionResponse": {"name": "end_call", "response": {"output": "ok"}}}]})
    );

    // Without the signature Gemini 3 refuses the history, as the real API does.
    let mut unsigned = history;
    if let ChatMessage::Assistant { tool_calls, .. } = &mut unsigned[2] {
        tool_calls[0].thought_signature = None;
    }
    let events = collect(client.stream(&gemini(&server), req(unsigned))).await;
    match error(&events) {
        ProviderError::Status { provider: "google", status: 400, body } => {
            assert!(body.contains("missing a thought_signature") && body.ends_with("(INVALID_ARGUMENT)"), "{body}")
        }
        other => panic!("unexpected {other:?}"),
    }
}

#[tokio::test]
async fn gemini_model_given_ids_go_back_on_the_api() {
    let server = sim().await;
    let call =
        ToolCall { id: "fc_abc".into(), name: "end_call".into(), arguments: "{}".into(), thought_signature: None };
    let req = ChatRequest {
        model: "gemini-2.5-flash".into(),
        messages: vec![
            user("bye"),
            ChatMessage::Assistant { content: Some("Let me end this.".into()), tool_calls: vec![call] },
            ChatMessage::Tool { tool_call_id: "fc_abc".into(), content: "done".into() },
            // A result whose call is no longer in the history stays as text.
            ChatMessage::Tool { tool_call_id: "gone".into(), content: "x".into() },
        ],
        tools: vec![end_call_tool()],
        ..Default::default()
    };
    let events = collect(LlmClient::new().stream(&gemini(&server), req)).await;
    // Two user parts answering one call: the double (like Gemini) counts only function responses.
    assert_eq!(text(&events), "Thank you for calling. Goodbye!", "end_call's own after-tool reply");
    let contents = &last_body(&server)["contents"];
    assert_eq!(contents[1]["parts"][1]["functionCall"]["id"], "fc_abc");
    assert_eq!(contents[2]["parts"][0]["functionResponse"]["id"], "fc_abc");
    assert_eq!(contents[2]["parts"][1], json!({"text": "Result of tool call gone: x"}));
}

fn request(model: &str) -> ChatRequest {
    ChatRequest { model: model.into(), messages: vec![user("hello")], ..Default::default() }
}

#[tokio::test]
async fn gemini_error_paths() {
    let server = sim().await;
    let client = LlmClient::new();
    let run = |model: &str, p: cxb_providers::llm::LlmParams| collect(client.stream(&p, request(model)));

    let e = error(&run("fail-500", gemini(&server)).await);
    assert!(
        matches!(&e, ProviderError::Status { status: 500, body, .. } if body.starts_with("An internal error") && body.ends_with("(INTERNAL)")),
        "{e:?}"
    );
    let e = error(&run("fail-429", gemini(&server)).await);
    assert!(
        matches!(&e, ProviderError::Status { status: 429, body, .. } if body.ends_with("(RESOURCE_EXHAUSTED)")),
        "{e:?}"
    );
    let e = error(&run("gemini-2.5-flash", params("google", &server.url("http"), "bad-key")).await);
    assert!(
        matches!(&e, ProviderError::Status { status: 400, body, .. } if body == "API key not valid. Please pass a valid API key. (INVALID_ARGUMENT)"),
        "{e:?}"
    );
    let e = error(&run("gemini-2.5-flash", params("google", &server.url("http"), " ")).await);
    assert!(matches!(&e, ProviderError::Config { provider: "google", .. }), "{e:?}");
    let e = error(&run("gemini-2.5-flash", params("google", "ftp://x", "k")).await);
    assert!(matches!(&e, ProviderError::Config { .. }), "{e:?}");

    let events = run("midstream-error", gemini(&server)).await;
    assert!(matches!(events[0], LlmEvent::Token(_)), "{events:?}");
    assert!(
        matches!(&error(&events), ProviderError::Remote { detail, .. } if detail == "An internal error has occurred. (INTERNAL)")
    );
    let e = error(&run("truncated", gemini(&server)).await);
    assert!(matches!(&e, ProviderError::Closed { detail, .. } if detail.contains("without a finishReason")), "{e:?}");
    let e = error(&run("blocked", gemini(&server)).await);
    assert!(matches!(&e, ProviderError::Remote { detail, .. } if detail == "prompt blocked: SAFETY"), "{e:?}");
    let e = error(&run("unframed-error", gemini(&server)).await);
    assert!(
        matches!(&e, ProviderError::Remote { detail, .. } if detail == "Request contains an invalid argument. (INVALID_ARGUMENT)"),
        "{e:?}"
    );

    let mut p = gemini(&server);
    p.idle_timeout = Duration::from_millis(300);
    let e = error(&run("stall", p).await);
    assert!(matches!(e, ProviderError::Timeout { provider: "google", .. }), "{e:?}");

    // A request the double refuses shows the vendor's message: thinking off on a Pro model.
    let mut req = request("gemini-2.5-pro");
    req.extra = json!({"thinking_budget": 0}).as_object().cloned().unwrap();
    let e = error(&collect(client.stream(&gemini(&server), req)).await);
    assert!(
        matches!(&e, ProviderError::Status { status: 400, body, .. } if body.starts_with("Budget 0 is invalid")),
        "{e:?}"
    );
}

// ---------------------------------------------------------------------------------------------
// The live prompt cache

fn cached_request(static_prompt: &str, caller: &str, said: &str) -> ChatRequest {
    ChatRequest {
        model: "gemini-2.5-flash".into(),
        messages: vec![ChatMessage::Assistant { content: Some("Hello!".into()), tool_calls: vec![] }, user(said)],
        tools: vec![lookup_tool(), end_call_tool()],
        prompt_cache: Some(PromptCache {
            key: "bot-42".into(),
            static_system: static_prompt.into(),
            dynamic_system: format!("The caller is {caller}."),
            static_version: "v7".into(),
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn cache_client(f: impl FnOnce(&mut PromptCacheSettings)) -> LlmClient {
    let mut settings = LlmClientSettings::default();
    settings.prompt_cache.create_wait = Duration::from_secs(5);
    f(&mut settings.prompt_cache);
    LlmClient::with_settings(settings)
}

#[tokio::test]
async fn cache_created_once_shared_by_concurrent_calls_and_referenced_by_every_request() {
    let server = sim().await;
    let client = cache_client(|_| {});
    let p = gemini(&server);
    let big = big_static_prompt();
    // Eight calls' first turns at once, then more turns.
    let first = futures_util::future::join_all(
        (0..8).map(|i| collect(client.stream(&p, cached_request(&big, &format!("caller {i}"), "hello")))),
    )
    .await;
    let mut later = Vec::new();
    for i in 0..4 {
        later.push(collect(client.stream(&p, cached_request(&big, &format!("caller {i}"), "my bill"))).await);
    }
    assert_eq!(server.state.google.cache_creates.load(std::sync::atomic::Ordering::Relaxed), 1);
    let name = server.state.google.live_caches().pop().expect("one live cache");
    for events in first.iter().chain(&later) {
        let report = cache_report(events).expect("a cache report");
        assert_eq!(report.resource.as_deref(), Some(name.as_str()));
        let usage = done(events).1.unwrap();
        assert!(usage.cached_tokens >= 1024 && usage.prompt_tokens > usage.cached_tokens, "{usage:?}");
    }
    assert!(first.iter().all(|e| cache_report(e).unwrap().status == CacheStatus::Created));
    assert!(later.iter().all(|e| cache_report(e).unwrap().status == CacheStatus::Reused));

    let requests = server.state.google.requests();
    assert_eq!(requests.len(), 12);
    for seen in &requests {
        let body = &seen.body;
        assert_eq!(body["cachedContent"], json!(name));
        for key in ["systemInstruction", "tools", "toolConfig"] {
            assert!(body.get(key).is_none(), "{key} must live in the cache");
        }
        // The per-call block opens the conversation.
        assert!(body["contents"][0]["parts"][0]["text"].as_str().unwrap().starts_with("The caller is caller "));
    }
}

#[tokio::test]
async fn cache_expired_mid_call_is_recreated_and_the_turn_succeeds() {
    let server = sim().await;
    let client = cache_client(|_| {});
    let p = gemini(&server);
    let big = big_static_prompt();
    let events = collect(client.stream(&p, cached_request(&big, "Asha", "hello"))).await;
    let first = cache_report(&events).unwrap().resource.unwrap();
    server.state.google.expire_caches();

    let events = collect(client.stream(&p, cached_request(&big, "Asha", "my bill"))).await;
    assert!(text(&events).starts_with("Of course."), "no failed turn: {events:?}");
    let report = cache_report(&events).unwrap();
    assert_eq!(report.status, CacheStatus::Recreated);
    let second = report.resource.unwrap();
    assert_ne!(first, second);
    assert!(done(&events).1.unwrap().cached_tokens > 0);
    assert_eq!(server.state.google.cache_creates.load(std::sync::atomic::Ordering::Relaxed), 2);
    // The refused request referenced the expired cache; its retry the new one.
    let requests = server.state.google.requests();
    let refs: Vec<&Value> = requests.iter().map(|s| &s.body["cachedContent"]).collect();
    assert_eq!(refs, [&json!(first), &json!(first), &json!(second)]);
}

#[tokio::test]
async fn cache_failure_falls_back_to_an_uncached_request() {
    let server = sim().await;
    let client = cache_client(|_| {});
    let p = gemini(&server);
    // Below the provider's minimum: the creation is refused.
    let small = "You are Priya.";
    for said in ["hello", "my bill"] {
        let events = collect(client.stream(&p, cached_request(small, "Asha", said))).await;
        done(&events);
        let report = cache_report(&events).unwrap();
        assert_eq!(report.status, CacheStatus::Fallback);
        assert!(report.detail.unwrap().contains("Cached content is too small"));
        let body = last_body(&server);
        assert!(body.get("cachedContent").is_none());
        assert_eq!(body["systemInstruction"]["parts"][0]["text"], "You are Priya.\n\nThe caller is Asha.");
        assert!(body.get("tools").is_some());
    }
    // The refusal is remembered: no second creation within the backoff.
    assert_eq!(server.state.google.cache_creates.load(std::sync::atomic::Ordering::Relaxed), 1);
}

#[tokio::test]
async fn cache_extended_before_its_ttl_ends() {
    let server = sim().await;
    let client = cache_client(|s| {
        s.ttl = Duration::from_secs(3);
        s.refresh_before = Duration::from_millis(2200);
        s.min_remaining = Duration::from_millis(300);
    });
    let p = gemini(&server);
    let big = big_static_prompt();
    let mut names = Vec::new();
    // Turns every 400 ms for 4.8 s: well past the first TTL.
    for _ in 0..12 {
        let events = collect(client.stream(&p, cached_request(&big, "Asha", "hello"))).await;
        assert!(matches!(done(&events).0.as_deref(), Some("stop")));
        names.push(cache_report(&events).unwrap().resource.unwrap());
        tokio::time::sleep(Duration::from_millis(400)).await;
    }
    let google = &server.state.google;
    assert!(names.iter().all(|n| *n == names[0]), "one cache throughout: {names:?}");
    assert_eq!(google.cache_creates.load(std::sync::atomic::Ordering::Relaxed), 1);
    assert!(google.cache_patches.load(std::sync::atomic::Ordering::Relaxed) >= 2);
    assert_eq!(google.live_caches(), vec![names[0].clone()]);
}

#[tokio::test]
async fn usage_maps_cached_and_thought_tokens() {
    let server = sim().await;
    let client = cache_client(|_| {});
    let mut req = cached_request(&big_static_prompt(), "Asha", "hello");
    req.model = "gemini-2.5-pro".into();
    let events = collect(client.stream(&gemini(&server), req)).await;
    let u: Usage = done(&events).1.unwrap();
    assert!(u.cached_tokens >= 1024 && u.thoughts_tokens > 0);
    assert_eq!(u.total_tokens, u.prompt_tokens + u.completion_tokens + u.thoughts_tokens);
    assert_eq!(u.fresh_prompt_tokens(), u.prompt_tokens - u.cached_tokens);
}

#[tokio::test]
async fn prewarmed_cache_is_ready_for_the_first_turn() {
    let server = sim().await;
    let client = cache_client(|_| {});
    let p = gemini(&server);
    let req = cached_request(&big_static_prompt(), "Asha", "hello");
    client.prewarm_prompt_cache(&p, req.clone());
    support::within(async {
        while server.state.google.live_caches().is_empty() {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
    let events = collect(client.stream(&p, req)).await;
    // The server holds the cache a moment before the client has read the create answer; a turn
    // that starts in that moment waits for the prewarm's creation (and reports it as created)
    // instead of making its own. Either way the turn uses the prewarmed cache.
    let report = cache_report(&events).unwrap();
    assert!(matches!(report.status, CacheStatus::Reused | CacheStatus::Created), "{report:?}");
    assert_eq!(report.resource, server.state.google.live_caches().pop());
    assert_eq!(server.state.google.cache_creates.load(std::sync::atomic::Ordering::Relaxed), 1);
    assert_eq!(server.state.google.requests().len(), 1, "prewarming generates nothing");
}
