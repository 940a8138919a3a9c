//! `search_knowledge`: the LLM searches CXB API's knowledge (or, on the embedded default, the
//! local index) and answers from what it found.

use std::time::Duration;

use cxb_e2e::*;
use serde_json::{json, Value};

/// The scripted LLM searches when the caller asks about an order and answers from the first
/// result (or with the fallback message a strict search tells it to say).
fn searching_script(script: &mut Value, bot: &str, knowledge: Value) {
    script["rules"] = json!([{
        "when_user_says": "order status",
        "reply": {"tool_calls": [{"name": "search_knowledge", "arguments": {"query": "order status"}}]}
    }]);
    script["after_tool_replies"]["search_knowledge"] = json!({"from_tool_result": "Here is what I found."});
    script["bots"][bot] = knowledge;
}

/// One caller turn ("I want to check my order status"), then the caller hangs up.
async fn ask_about_an_order(worker: &Worker, bot: &str) {
    let mut call = RawCall::connect(&worker.ws_url(bot)).await.unwrap();
    call.handshake("st-kb").await;
    // After the greeting; then long enough for the search and the whole answer to play.
    call.silence(4500).await;
    assert!(call.say("assets/audio/caller-1.wav").await);
    call.silence(9000).await;
    call.send(json!({"event":"hangup-call","disconnectedBy":"customer"})).await;
}

fn events<'a>(r: &'a Value, kind: &str) -> Vec<&'a Value> {
    r["events"].as_array().unwrap().iter().filter(|e| e["type"] == kind).collect()
}

fn bot_lines(r: &Value) -> Vec<String> {
    let lines = r["transcript"].as_array().unwrap().iter().filter(|l| l["speaker"] == "bot");
    lines.map(|l| l["text"].as_str().unwrap_or_default().to_string()).collect()
}

/// The tool message the LLM's follow-up request carried.
async fn tool_result_sent_to_the_llm(sim: &Sim) -> String {
    let requests = sim.get("/sim/llm-requests").await;
    let tool = requests
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|r| r["messages"].as_array().cloned().unwrap_or_default())
        .find(|m| m["role"] == "tool");
    tool.and_then(|m| m["content"].as_str().map(str::to_string)).expect("a tool result reached the LLM")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_llm_answers_from_cxb_api_knowledge_search() {
    let (sim, _script) = sim_with_script(|s| {
        searching_script(s, "demo", json!({"knowledge_enabled": true, "knowledge_kb_ids": ["kb_demo"]}))
    })
    .await;
    let worker = Worker::start(Some(&sim), &[]).await;
    ask_about_an_order(&worker, "demo").await;
    let r = sim.wait_results(1, Duration::from_secs(15)).await[0].clone();

    // The search went to CXB API with the bot's knowledge bases and both secret headers.
    let searches = sim.get("/sim/knowledge-requests").await;
    let search = &searches.as_array().expect("searches")[0];
    assert_eq!(search["body"]["kb_ids"], json!(["kb_demo"]), "{search:#}");
    assert_eq!(search["body"]["query"], "order status");
    assert_eq!(search["body"]["session_id"], r["session_id"]);
    assert_eq!(search["secret_ok"], true, "{search:#}");
    assert_eq!(search["secret_headers"].as_object().unwrap().len(), 2, "both spellings: {search:#}");

    // The chunk text reached the LLM verbatim, and the spoken reply uses it.
    let chunk = "To check an order status the agent needs the order number";
    let tool_result = tool_result_sent_to_the_llm(&sim).await;
    assert!(tool_result.contains(chunk), "{tool_result}");
    let bot = bot_lines(&r);
    assert!(bot.iter().any(|l| l.starts_with("Here is what I found.") && l.contains(chunk)), "{bot:#?}");

    let retrieval = events(&r, "knowledge_retrieval");
    assert_eq!(retrieval.len(), 1, "{:#}", r["events"]);
    let data = &retrieval[0]["data"];
    assert_eq!(data["query"], "order status");
    assert_eq!(data["kb_ids"], json!(["kb_demo"]));
    assert!(data["hits"].as_array().is_some_and(|h| !h.is_empty()), "{data:#}");
    assert!(data["top_score"].as_f64().unwrap() > 0.5, "{data:#}");
    assert!(data["elapsed_ms"].as_f64().is_some(), "{data:#}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_strict_search_with_no_good_hit_speaks_the_fallback_message() {
    let fallback = "Sorry, I cannot find that in our records.";
    let (sim, _script) = sim_with_script(|s| {
        let knowledge = json!({"knowledge_enabled": true, "knowledge_kb_ids": ["kb_demo"], "knowledge_strict": true,
            "knowledge_score_threshold": 0.99, "knowledge_fallback_message": fallback});
        searching_script(s, "demo", knowledge)
    })
    .await;
    let worker = Worker::start(Some(&sim), &[]).await;
    ask_about_an_order(&worker, "demo").await;
    let r = sim.wait_results(1, Duration::from_secs(15)).await[0].clone();
    assert!(tool_result_sent_to_the_llm(&sim).await.contains(fallback));
    assert!(bot_lines(&r).iter().any(|l| l == fallback), "{:#?}", bot_lines(&r));
    assert_eq!(events(&r, "knowledge_retrieval")[0]["data"]["fallback"], true);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_search_is_a_tool_error_not_a_failed_call() {
    let (sim, _script) = sim_with_script(|s| {
        searching_script(s, "demo", json!({"knowledge_enabled": true, "knowledge_kb_ids": ["kb_demo"]}))
    })
    .await;
    sim.control(json!({"knowledge_status": 503})).await;
    let worker = Worker::start(Some(&sim), &[]).await;
    ask_about_an_order(&worker, "demo").await;
    let r = sim.wait_results(1, Duration::from_secs(15)).await[0].clone();
    assert_eq!(r["disconnected_by"], "customer", "the call went on: {r:#}");
    assert!(tool_result_sent_to_the_llm(&sim).await.starts_with("error:"));
    assert!(events(&r, "knowledge_retrieval")[0]["data"]["error"].is_string());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_embedded_default_answers_from_the_local_index() {
    let (sim, _script) = sim_with_script(|s| searching_script(s, "demo", json!({}))).await;
    // The demo bot file, pointed at this test's doubles, searching the demo knowledge base of
    // assets/knowledge (the worker's default CXBCORE_KNOWLEDGE_DIR).
    let demo = std::fs::read_to_string(repo_root().join("assets/bots/demo.json")).unwrap();
    let mut bot: Value = serde_json::from_str(&demo.replace("127.0.0.1:9100", &sim.addr)).unwrap();
    bot["knowledge_enabled"] = true.into();
    bot["knowledge_kb_ids"] = json!(["demo"]);
    bot["webhook_url"] = format!("http://{}/api/v1/call-results", sim.addr).into();
    let bots = tempfile::tempdir().unwrap();
    std::fs::write(bots.path().join("kb.json"), bot.to_string()).unwrap();
    let worker = Worker::start(None, &[("CXBCORE_BOTS_DIR", bots.path().to_str().unwrap())]).await;
    ask_about_an_order(&worker, "kb").await;
    let r = sim.wait_results(1, Duration::from_secs(15)).await[0].clone();

    assert!(sim.get("/sim/knowledge-requests").await.as_array().unwrap().is_empty(), "no CXB API search");
    let tool_result: Value = serde_json::from_str(&tool_result_sent_to_the_llm(&sim).await).expect("results JSON");
    let first = &tool_result["results"][0];
    assert_eq!(first["kb_id"], "demo", "{tool_result:#}");
    let text = first["text"].as_str().unwrap();
    let source = std::fs::read_to_string(repo_root().join("assets/knowledge/demo/orders-and-delivery.md")).unwrap();
    assert!(source.contains(text), "chunks are verbatim slices of the document: {text}");
    let retrieval = events(&r, "knowledge_retrieval");
    assert_eq!(retrieval[0]["data"]["kb_ids"], json!(["demo"]));
    let bot = bot_lines(&r);
    assert!(bot.iter().any(|l| l.starts_with("Here is what I found.") && l.len() > 30), "{bot:#?}");
}
