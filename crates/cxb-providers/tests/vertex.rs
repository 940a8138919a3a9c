//! Gemini on Vertex AI against cxb-sim's strict Vertex double and Google token endpoint double
//! (wire-protocols part 2 §3): the path, Bearer tokens from a service-account key (one token for
//! every concurrent call, refreshed before it expires, a new one after a 401), clear errors for
//! bad keys and config, Vertex's body differences, and explicit caches under the project.

mod support;

use std::sync::atomic::Ordering;
use std::time::Duration;

use cxb_providers::llm::{CacheStatus, LlmClient, LlmClientSettings, LlmParams, TokenSettings};
use cxb_providers::ProviderError;
use cxb_sim::oauth_token::token_uri;
use cxb_sim::SimServer;
use cxb_wire::llm::{ChatMessage, ChatRequest, PromptCache, ToolSpec};
use serde_json::{json, Value};
use support::llm::{big_static_prompt, cache_report, collect, done, error, params, sim, text, tool_calls};

/// A fresh service account of the double: its key JSON.
fn service_account(server: &SimServer) -> Value {
    server.state.oauth.new_account(&token_uri(&server.state))
}

fn vertex(server: &SimServer, key: &Value) -> LlmParams {
    params("google_vertex", &server.url("http"), &key.to_string())
}

fn request(said: &str) -> ChatRequest {
    ChatRequest {
        model: "gemini-2.5-flash".into(),
        messages: vec![ChatMessage::System("You are Priya.".into()), ChatMessage::User(said.into())],
        tools: vec![ToolSpec::from_openai_json(
            &json!({"type": "function", "function": {"name": "end_call", "parameters": {"type": "object",
            "additionalProperties": false, "properties": {"final_message": {"type": "string"}}}}}),
        )
        .unwrap()],
        extra: json!({"project_id": "cxb-test", "location": "asia-south1"}).as_object().cloned().unwrap(),
        ..Default::default()
    }
}

fn token_requests(server: &SimServer) -> u64 {
    server.state.oauth.token_requests.load(Ordering::Relaxed)
}

#[tokio::test]
async fn vertex_path_bearer_and_body_differences() {
    let server = sim().await;
    let key = service_account(&server);
    let client = LlmClient::new();
    let events = collect(client.stream(&vertex(&server, &key), request("thank you, goodbye"))).await;
    let calls = tool_calls(&events);
    assert_eq!(calls[0].name, "end_call");
    let seen = server.state.google.requests().pop().unwrap();
    assert_eq!(
        seen.path,
        "/v1/projects/cxb-test/locations/asia-south1/publishers/google/models/gemini-2.5-flash:streamGenerateContent"
    );
    // Vertex keeps `additionalProperties`.
    assert_eq!(seen.body["tools"][0]["functionDeclarations"][0]["parameters"]["additionalProperties"], json!(false));

    // The tool round trip: no `id` on Vertex function parts (the double refuses one).
    let mut history = request("thank you, goodbye");
    history.messages.push(ChatMessage::Assistant { content: None, tool_calls: calls.clone() });
    history.messages.push(ChatMessage::Tool { tool_call_id: calls[0].id.clone(), content: "ok".into() });
    let events = collect(client.stream(&vertex(&server, &key), history)).await;
    assert_eq!(text(&events), "Thank you for calling. Goodbye!", "end_call's own after-tool reply");
    let body = server.state.google.requests().pop().unwrap().body;
    assert_eq!(
        body["contents"][2]["parts"][0],
        json!({"functionResponse": {"name": "end_call", "response": {"output": "ok"}}})
    );
    assert!(body["contents"][1]["parts"][0]["functionCall"].get("id").is_none());
    assert_eq!(token_requests(&server), 1);
}

#[tokio::test]
async fn vertex_one_token_for_many_concurrent_streams() {
    let server = sim().await;
    let key = service_account(&server);
    let client = LlmClient::new();
    let p = vertex(&server, &key);
    let all = futures_util::future::join_all((0..24).map(|_| collect(client.stream(&p, request("hello"))))).await;
    for events in &all {
        done(events);
    }
    assert_eq!(token_requests(&server), 1, "concurrent first calls wait on one token request");
    collect(client.stream(&p, request("hello"))).await;
    assert_eq!(token_requests(&server), 1);
    // Another LlmClient (another worker) has its own token.
    collect(LlmClient::new().stream(&p, request("hello"))).await;
    assert_eq!(token_requests(&server), 2);
}

#[tokio::test]
async fn vertex_token_refreshed_in_the_background_before_it_expires() {
    let server = sim().await;
    let key = service_account(&server);
    server.state.oauth.expires_in.store(3, Ordering::Relaxed);
    let settings = LlmClientSettings {
        google_tokens: TokenSettings {
            refresh_before: Duration::from_millis(2000),
            min_remaining: Duration::from_millis(500),
            ..TokenSettings::default()
        },
        ..LlmClientSettings::default()
    };
    let client = LlmClient::with_settings(settings);
    let p = vertex(&server, &key);
    done(&collect(client.stream(&p, request("hello"))).await);
    assert_eq!(token_requests(&server), 1);
    // 1.2 s in, 1.8 s left: the request goes on with the current token and a refresh starts.
    tokio::time::sleep(Duration::from_millis(1200)).await;
    server.state.oauth.expires_in.store(3599, Ordering::Relaxed);
    done(&collect(client.stream(&p, request("hello"))).await);
    support::within(async {
        while token_requests(&server) < 2 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    // Past the first token's expiry: the refreshed one serves, no new request.
    tokio::time::sleep(Duration::from_millis(2000)).await;
    done(&collect(client.stream(&p, request("hello"))).await);
    assert_eq!(token_requests(&server), 2);
}

#[tokio::test]
async fn vertex_401_fetches_a_new_token_once() {
    let server = sim().await;
    let key = service_account(&server);
    let client = LlmClient::new();
    let p = vertex(&server, &key);
    done(&collect(client.stream(&p, request("hello"))).await);
    server.state.oauth.revoke_tokens();
    done(&collect(client.stream(&p, request("hello"))).await);
    assert_eq!(token_requests(&server), 2);
}

#[tokio::test]
async fn vertex_bad_keys_and_config_are_clear_errors() {
    let server = sim().await;
    let client = LlmClient::new();
    // A key whose private key is not the account's: Google's invalid_grant.
    let mut forged = service_account(&server);
    forged["private_key"] = service_account(&server)["private_key"].clone();
    let e = error(&collect(client.stream(&vertex(&server, &forged), request("hello"))).await);
    match &e {
        ProviderError::Remote { provider: "google_vertex", detail } => {
            assert!(detail.contains("HTTP 400: invalid_grant: Invalid JWT Signature."), "{detail}")
        }
        other => panic!("unexpected {other:?}"),
    }
    assert!(e.to_string().starts_with("google_vertex: provider reported an error: no access token"), "{e}");

    let config_error = |p: LlmParams, req: ChatRequest| async move {
        match error(&collect(LlmClient::new().stream(&p, req)).await) {
            ProviderError::Config { provider: "google_vertex", detail } => detail,
            other => panic!("unexpected {other:?}"),
        }
    };
    let key = service_account(&server);
    let mut no_project = request("hello");
    no_project.extra.remove("project_id");
    assert!(config_error(vertex(&server, &key), no_project).await.contains("llm.extra.project_id is required"));
    let mut bad_location = request("hello");
    bad_location.extra.insert("location".into(), json!("evil.example.com/x"));
    assert!(config_error(vertex(&server, &key), bad_location).await.contains("is not a Vertex AI location"));
    let garbage = params("google_vertex", &server.url("http"), "{not json");
    assert!(config_error(garbage, request("hello")).await.contains("not a key JSON object"));
    let api_key = params("google_vertex", &server.url("http"), "AIza-not-a-service-account");
    let detail = config_error(api_key, request("hello")).await;
    assert!(detail.contains("GOOGLE_APPLICATION_CREDENTIALS") && !detail.contains("AIza"), "{detail}");
}

#[tokio::test]
async fn vertex_key_from_the_credentials_file() {
    let server = sim().await;
    let path = std::env::temp_dir().join(format!("cxb-vertex-key-{}.json", std::process::id()));
    std::fs::write(&path, service_account(&server).to_string()).unwrap();
    let settings = LlmClientSettings { google_credentials_file: Some(path.clone()), ..LlmClientSettings::default() };
    let client = LlmClient::with_settings(settings);
    let events = collect(client.stream(&params("google_vertex", &server.url("http"), ""), request("hello"))).await;
    std::fs::remove_file(&path).ok();
    done(&events);
    assert_eq!(token_requests(&server), 1);
}

#[tokio::test]
async fn vertex_explicit_cache_lives_under_the_project() {
    let server = sim().await;
    let key = service_account(&server);
    let mut settings = LlmClientSettings::default();
    settings.prompt_cache.create_wait = Duration::from_secs(5);
    let client = LlmClient::with_settings(settings);
    let cached = |said: &str| {
        let mut req = request(said);
        req.messages.remove(0);
        req.prompt_cache = Some(PromptCache {
            key: "bot-9".into(),
            static_system: big_static_prompt(),
            dynamic_system: "The caller is Ravi.".into(),
            static_version: "3".into(),
            ..Default::default()
        });
        req
    };
    let p = vertex(&server, &key);
    let first = collect(client.stream(&p, cached("hello"))).await;
    let second = collect(client.stream(&p, cached("my bill"))).await;
    let name = cache_report(&first).unwrap().resource.unwrap();
    assert!(name.starts_with("projects/cxb-test/locations/asia-south1/cachedContents/"), "{name}");
    assert_eq!(cache_report(&second).unwrap().status, CacheStatus::Reused);
    assert!(done(&second).1.unwrap().cached_tokens >= 1024);
    assert_eq!(server.state.google.requests().pop().unwrap().body["cachedContent"], json!(name));
    // Token requests: one, shared by the cache calls and the generations.
    assert_eq!(token_requests(&server), 1);
}
