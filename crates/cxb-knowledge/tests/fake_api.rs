//! The client against cxb-sim's fake CXB API: both sides of `POST /api/v1/knowledge/search` agree.

use std::sync::Arc;
use std::time::Duration;

use cxb_knowledge::{ApiKnowledge, KnowledgeSettings, KnowledgeTool};
use serde_json::{json, Value};

async fn fake_api() -> cxb_sim::SimServer {
    cxb_sim::start(cxb_sim::ServeOptions {
        secret: Some("s3cret".into()),
        script: cxb_sim::Script::embedded(),
        ..Default::default()
    })
    .await
    .expect("cxb-sim")
}

fn tool(base: &str, secret: &str, extra: Value) -> KnowledgeTool {
    let api = ApiKnowledge::new(
        &format!("{base}/api/v1"),
        Some(secret.into()),
        reqwest::Client::new(),
        Duration::from_secs(2),
    )
    .expect("client");
    let mut config = json!({"knowledge_enabled": true, "knowledge_kb_ids": ["kb_demo"], "knowledge_top_k": 2});
    for (k, v) in extra.as_object().cloned().unwrap_or_default() {
        config[k] = v;
    }
    KnowledgeTool::new(KnowledgeSettings::from_config(&config), Arc::new(api))
}

#[tokio::test]
async fn the_tool_answers_from_the_fake_api_and_the_fake_sees_what_was_sent() {
    let sim = fake_api().await;
    let base = sim.url("http");

    let out = tool(&base, "s3cret", json!({})).run(r#"{"query":"check my order status"}"#, "demo", "sess-9").await;
    assert!(!out.is_error, "{}", out.content);
    let v: Value = serde_json::from_str(&out.content).expect("json");
    assert_eq!(v["results"][0]["title"], "Order status");
    assert_eq!(v["results"][0]["kb_id"], "kb_demo");
    assert_eq!(out.hits[0].chunk_id, "orders-2");
    assert_eq!(out.event()["top_score"], 0.9);

    // Strict mode: nothing about the weather in the demo knowledge base.
    let strict = tool(
        &base,
        "s3cret",
        json!({"knowledge_strict": true, "knowledge_fallback_message": "Let me connect you to an agent."}),
    );
    let out = strict.run(r#"{"query":"weather on mars"}"#, "demo", "sess-9").await;
    assert!(out.fallback);
    assert!(out.content.contains("Let me connect you to an agent."), "{}", out.content);

    // A wrong secret is an error result the LLM can read.
    let out = tool(&base, "wrong", json!({})).run(r#"{"query":"order"}"#, "demo", "sess-9").await;
    assert!(out.is_error);
    assert_eq!(
        out.content,
        "error: knowledge search failed: the knowledge service answered HTTP 403: invalid or missing secret"
    );

    let seen: Value =
        reqwest::get(format!("{base}/sim/knowledge-requests")).await.expect("get").json().await.expect("json");
    let seen = seen.as_array().cloned().unwrap_or_default();
    assert_eq!(seen.len(), 3);
    assert_eq!(
        seen[0]["body"],
        json!({"query": "check my order status", "kb_ids": ["kb_demo"], "top_k": 2, "score_threshold": 0.0,
               "bot_id": "demo", "session_id": "sess-9"})
    );
    assert_eq!(seen[0]["secret_headers"], json!({"X-CXBCore-Secret": true, "X-CXB-Core-Secret": true}));
    assert_eq!(seen[2]["secret_ok"], false);
    sim.shutdown().await;
}
