//! The `search_knowledge` tool: definition, results, strict mode, size bound, errors, events.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use cxb_knowledge::{
    render_result, Hit, KnowledgeError, KnowledgeQuery, KnowledgeSettings, KnowledgeSource, KnowledgeTool,
    DEFAULT_FALLBACK_MESSAGE, TOOL_NAME,
};
use futures_util::future::BoxFuture;
use serde_json::{json, Value};

/// Answers with fixed hits (or fails, or hangs) and remembers the queries.
#[derive(Default)]
struct Fake {
    hits: Vec<Hit>,
    fail: bool,
    hang: bool,
    seen: Mutex<Vec<KnowledgeQuery>>,
}

impl KnowledgeSource for Fake {
    fn search<'a>(&'a self, query: &'a KnowledgeQuery) -> BoxFuture<'a, Result<Vec<Hit>, KnowledgeError>> {
        Box::pin(async move {
            self.seen.lock().unwrap_or_else(|p| p.into_inner()).push(query.clone());
            if self.hang {
                tokio::time::sleep(Duration::from_secs(3600)).await;
            }
            if self.fail {
                return Err(KnowledgeError::Status { status: 500, detail: "boom".into() });
            }
            Ok(self.hits.clone())
        })
    }

    fn name(&self) -> &'static str {
        "fake"
    }
}

fn hit(id: &str, score: f64, text: &str, title: Option<&str>) -> Hit {
    Hit {
        chunk_id: id.into(),
        document_id: format!("doc-{id}"),
        kb_id: "kb".into(),
        text: text.into(),
        score,
        title: title.map(str::to_string),
    }
}

fn settings(extra: Value) -> KnowledgeSettings {
    let mut v = json!({"knowledge_enabled": true, "knowledge_kb_ids": ["kb"], "knowledge_top_k": 3});
    for (k, x) in extra.as_object().cloned().unwrap_or_default() {
        v[k] = x;
    }
    KnowledgeSettings::from_config(&v)
}

fn tool(fake: Fake, extra: Value) -> (KnowledgeTool, Arc<Fake>) {
    let fake = Arc::new(fake);
    (KnowledgeTool::new(settings(extra), fake.clone()), fake)
}

fn parse(content: &str) -> Value {
    serde_json::from_str(content).expect("tool content is JSON")
}

#[test]
fn the_definition_has_one_query_parameter_and_the_bots_instructions() {
    let spec = cxb_knowledge::tool_spec(&settings(json!({})));
    assert_eq!(spec.name, TOOL_NAME);
    assert!(spec.description.contains("knowledge base"), "{}", spec.description);
    assert_eq!(spec.parameters["required"], json!(["query"]));
    assert_eq!(spec.parameters["properties"]["query"]["type"], "string");
    assert_eq!(spec.parameters["properties"].as_object().map(|o| o.len()), Some(1));

    let custom = cxb_knowledge::tool_spec(&settings(
        json!({"knowledge_trigger_instructions": "Use for questions about loan EMIs and foreclosure."}),
    ));
    assert!(
        custom.description.contains("Use for questions about loan EMIs and foreclosure."),
        "{}",
        custom.description
    );
    // The OpenAI rendering round-trips.
    assert_eq!(cxb_wire::llm::ToolSpec::from_openai_json(&custom.to_openai_json()), Some(custom));
}

#[tokio::test]
async fn results_are_verbatim_best_first_and_filtered() {
    let hits = vec![
        hit("a", 0.4, "Refunds take 5–7 days.\n\nNo fee.", Some("Refunds")),
        hit("b", 0.9, "रिफंड 5 से 7 दिन में आता है।", None),
        hit("c", 0.1, "Below the threshold.", None),
        hit("d", 0.35, "Fourth, cut by top_k.", None),
        hit("e", 0.2, "Fifth.", None),
    ];
    let (tool, fake) = tool(Fake { hits, ..Fake::default() }, json!({"knowledge_score_threshold": 0.15}));
    let out = tool.run(r#"{"query":"  refund time "}"#, "demo", "s-1").await;
    assert!(!out.is_error && !out.fallback, "{}", out.content);
    let v = parse(&out.content);
    assert_eq!(
        v,
        json!({"results": [
            {"text": "रिफंड 5 से 7 दिन में आता है।", "score": 0.9, "kb_id": "kb"},
            {"text": "Refunds take 5–7 days.\n\nNo fee.", "title": "Refunds", "score": 0.4, "kb_id": "kb"},
            {"text": "Fourth, cut by top_k.", "score": 0.35, "kb_id": "kb"}
        ]})
    );
    let q = fake.seen.lock().unwrap_or_else(|p| p.into_inner())[0].clone();
    assert_eq!(
        (q.query.as_str(), q.kb_ids.clone(), q.top_k, q.score_threshold),
        ("refund time", vec!["kb".to_string()], 3, 0.15)
    );
    assert_eq!((q.bot_id.as_str(), q.session_id.as_str()), ("demo", "s-1"));

    let event = out.event();
    assert_eq!(event["query"], "refund time");
    assert_eq!(event["kb_ids"], json!(["kb"]));
    assert_eq!(event["top_score"], 0.9);
    assert_eq!(
        event["hits"][1],
        json!({"chunk_id": "a", "document_id": "doc-a", "kb_id": "kb", "score": 0.4, "title": "Refunds"})
    );
    assert!(event["elapsed_ms"].is_u64());
    assert!(event.get("error").is_none() && event.get("fallback").is_none());
}

#[tokio::test]
async fn strict_mode_with_nothing_found_tells_the_llm_the_fallback_message() {
    let message = "Mujhe iski jaankari nahi hai, main aapko agent se jodta hoon.";
    let (strict, _) = tool(
        Fake { hits: vec![hit("a", 0.3, "weak", None)], ..Fake::default() },
        json!({"knowledge_strict": true, "knowledge_score_threshold": 0.5, "knowledge_fallback_message": message}),
    );
    let out = strict.run(r#"{"query":"loan foreclosure"}"#, "demo", "s").await;
    assert!(!out.is_error && out.fallback);
    let v = parse(&out.content);
    assert_eq!(v["results"], json!([]));
    assert_eq!(v["fallback_message"], message);
    assert!(v["instruction"].as_str().is_some_and(|i| i.contains("exactly the fallback_message")), "{v}");
    assert_eq!(out.event()["fallback"], true);
    assert!(out.event().get("top_score").is_none(), "no null, no top score without hits");

    // Strict without a message uses the default one.
    let (strict_default, _) = tool(Fake::default(), json!({"knowledge_strict": true}));
    let v = parse(&strict_default.run(r#"{"query":"x"}"#, "", "").await.content);
    assert_eq!(v["fallback_message"], DEFAULT_FALLBACK_MESSAGE);

    // Not strict: just "nothing found", the LLM answers as it sees fit.
    let (lenient, _) = tool(Fake::default(), json!({"knowledge_fallback_message": message}));
    let out = lenient.run(r#"{"query":"x"}"#, "", "").await;
    assert!(!out.fallback);
    let v = parse(&out.content);
    assert_eq!(v["results"], json!([]));
    assert!(v.get("fallback_message").is_none() && v["note"].is_string(), "{v}");

    // Strict with a hit at the threshold answers normally.
    let (at, _) = tool(
        Fake { hits: vec![hit("a", 0.5, "exactly at", None)], ..Fake::default() },
        json!({"knowledge_strict": true, "knowledge_score_threshold": 0.5}),
    );
    let out = at.run(r#"{"query":"x"}"#, "", "").await;
    assert!(!out.fallback);
    assert_eq!(parse(&out.content)["results"][0]["text"], "exactly at");
}

#[test]
fn results_are_bounded_in_size_with_whole_chunks() {
    let chunk = |id: &str, n: usize| hit(id, 0.5, &"स".repeat(n), None);
    // 1,000 + 1,000 fit in 2,500; the third (1,000) does not, and a smaller later one is not
    // pulled forward (best first, whole chunks, stop at the first that does not fit).
    let hits = vec![chunk("a", 1000), chunk("b", 1000), chunk("c", 1000), chunk("d", 10)];
    let v = parse(&render_result(&hits, None, 2500));
    let texts: Vec<usize> = v["results"]
        .as_array()
        .expect("array")
        .iter()
        .map(|r| r["text"].as_str().unwrap_or("").chars().count())
        .collect();
    assert_eq!(texts, [1000, 1000]);
    // A single chunk over the whole budget is still given, cut to it.
    let v = parse(&render_result(&[chunk("big", 5000), chunk("b", 10)], None, 300));
    let only = v["results"].as_array().expect("array");
    assert_eq!(only.len(), 1);
    let text = only[0]["text"].as_str().unwrap_or("");
    assert_eq!(text.chars().count(), 300);
    assert!(text.ends_with('…'));
}

#[tokio::test]
async fn the_default_budget_bounds_a_full_result() {
    let hits: Vec<Hit> = (0..10).map(|i| hit(&i.to_string(), 0.9, &"word ".repeat(240), None)).collect();
    let (tool, _) = tool(Fake { hits, ..Fake::default() }, json!({"knowledge_top_k": 10}));
    let out = tool.run(r#"{"query":"x"}"#, "", "").await;
    let n = parse(&out.content)["results"].as_array().map(Vec::len).unwrap_or(0);
    assert_eq!(n, cxb_knowledge::DEFAULT_RESULT_BUDGET_CHARS / 1200);
    assert_eq!(out.hits.len(), 10, "all hits are kept for the event");
    assert!(out.content.len() < cxb_knowledge::DEFAULT_RESULT_BUDGET_CHARS + 500);
}

#[tokio::test]
async fn failures_are_error_results_never_panics() {
    let (failing, _) = tool(Fake { fail: true, ..Fake::default() }, json!({}));
    let out = failing.run(r#"{"query":"refund"}"#, "demo", "s").await;
    assert!(out.is_error);
    assert_eq!(out.content, "error: knowledge search failed: the knowledge service answered HTTP 500: boom");
    let event = out.event();
    assert_eq!((event["error_kind"].as_str(), event["hits"].clone()), (Some("http_status"), json!([])));
    assert_eq!(event["query"], "refund");

    let (hanging, _) = tool(Fake { hang: true, ..Fake::default() }, json!({}));
    let hanging = hanging.with_timeout(Duration::from_millis(50));
    let out = tokio::time::timeout(Duration::from_secs(5), hanging.run(r#"{"query":"refund"}"#, "", ""))
        .await
        .expect("the tool bounds the search itself");
    assert!(out.is_error);
    assert_eq!(out.content, "error: knowledge search failed: the knowledge search timed out after 50 ms");
    assert_eq!(out.event()["error_kind"], "timeout");

    let (ok, fake) = tool(Fake::default(), json!({}));
    for (args, expected) in [
        ("{", "error: knowledge search failed: invalid arguments: the arguments are not valid JSON (line 1, column 1)"),
        (r#"{"query": 42}"#, "error: knowledge search failed: invalid arguments: \"query\" must be a string"),
        (r#"{}"#, "error: knowledge search failed: invalid arguments: missing \"query\""),
        (r#"{"query": "   "}"#, "error: knowledge search failed: the search query is empty"),
    ] {
        let out = ok.run(args, "", "").await;
        assert!(out.is_error, "{args}");
        assert_eq!(out.content, expected, "{args}");
    }
    assert!(fake.seen.lock().unwrap_or_else(|p| p.into_inner()).is_empty(), "bad arguments never reach the backend");
}
