//! Conversation behaviours (contract §7) through the real binary: RNR, dead air, voicemail,
//! transfer and a custom HTTP tool. Each test serves its own script (rules and per-bot config)
//! from the sim; the caller audio comes from the load dialler's scenarios.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use cxb_e2e::*;
use serde_json::{json, Value};

/// A sim whose LLM answers "order status" (caller-1's transcript) with `reply`, and which serves
/// `bot` with `overrides` merged into its config.
async fn sim_with(reply: Value, bot: &str, overrides: Value) -> (Sim, tempfile::TempDir) {
    sim_with_script(|script| {
        if !reply.is_null() {
            script["rules"] = json!([{"when_user_says": "order status", "reply": reply}]);
        }
        script["bots"] = json!({ bot: overrides });
    })
    .await
}

fn events<'a>(r: &'a Value, kind: &str) -> Vec<&'a Value> {
    r["events"].as_array().unwrap().iter().filter(|e| e["type"] == kind || e["kind"] == kind).collect()
}

fn bot_lines(r: &Value) -> Vec<String> {
    r["transcript"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|l| l["speaker"] == "bot")
        .map(|l| l["text"].as_str().unwrap().to_string())
        .collect()
}

async fn one_result(sim: &Sim, worker: &Worker) -> Value {
    let results = sim.wait_results(1, Duration::from_secs(15)).await;
    assert_eq!(results.len(), 1, "{}", worker.log_text());
    assert_valid_result(&results[0]);
    results[0].clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_caller_is_rnr_after_a_re_engagement_prompt() {
    let overrides = json!({
        "silence": {"rnr_seconds": 2},
        "re_engagement": {"after_seconds": 1.5, "max_attempts": 1, "messages": ["Are you still there?"]},
    });
    let (sim, _dir) = sim_with(json!({"text": "unused"}), "rnr", overrides).await;
    let worker = Worker::start(Some(&sim), &[]).await;
    let summary = dial(&worker, &sim, "rnr", "assets/sim/scenario-silent.json", 1).await;
    assert_eq!(summary["completed"], 1, "{summary:#}\n{}", worker.log_text());
    assert_eq!(summary["bot_hangups"], 1);
    let r = one_result(&sim, &worker).await;
    assert_eq!(r["disconnected_by"], "RNR");
    assert_eq!(events(&r, "re_engagement").len(), 1, "{:#}", r["events"]);
    assert_eq!(events(&r, "no_response").len(), 1);
    assert!(bot_lines(&r).contains(&"Are you still there?".to_string()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_air_after_the_caller_spoke_ends_the_call_as_bot() {
    let overrides = json!({"silence": {"dead_air_seconds": 2, "dead_air_message": "I will call you back. Goodbye."}});
    let (sim, _dir) = sim_with(json!({"text": "Your order ships tomorrow."}), "dead-air", overrides).await;
    let worker = Worker::start(Some(&sim), &[]).await;
    let summary = dial(&worker, &sim, "dead-air", "assets/sim/scenario-one-turn.json", 1).await;
    assert_eq!(summary["completed"], 1, "{summary:#}\n{}", worker.log_text());
    let r = one_result(&sim, &worker).await;
    assert_eq!(r["disconnected_by"], "bot");
    assert_eq!(events(&r, "dead_air").len(), 1);
    assert_eq!(bot_lines(&r).last().unwrap(), "I will call you back. Goodbye.");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn voicemail_leaves_the_message_and_hangs_up_as_voicemail() {
    let reply = json!({"text": "", "tool_calls": [{"name": "detected_voicemail", "arguments": {}}]});
    let overrides = json!({"voicemail_message": "Sorry we missed you. We will call back."});
    let (sim, _dir) = sim_with(reply, "vm", overrides).await;
    let worker = Worker::start(Some(&sim), &[]).await;
    let summary = dial(&worker, &sim, "vm", "assets/sim/scenario-one-turn.json", 1).await;
    assert_eq!(summary["completed"], 1, "{summary:#}\n{}", worker.log_text());
    assert_eq!(summary["bot_hangups"], 1);
    let r = one_result(&sim, &worker).await;
    assert_eq!(r["disconnected_by"], "voicemail");
    assert_eq!(bot_lines(&r).last().unwrap(), "Sorry we missed you. We will call back.");
    assert_eq!(events(&r, "voicemail_detected").len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transfer_call_sends_reverse_call_transfer_to_the_resolved_target() {
    let reply = json!({"text": "", "tool_calls": [{"name": "transfer_call", "arguments": {"reason": "wants sales"}}]});
    let overrides = json!({
        "pre_transfer_message": "Please hold while I transfer you.",
        "transfer_targets": [
            {"id": "t1", "label": "Sales", "method": "websocket_reverse_transfer", "type": "extension", "value": "2001", "is_default": true, "enabled": true},
            {"id": "t2", "label": "Desk", "method": "livekit_sip_refer", "type": "sip_uri", "value": "sip:desk@example.com", "is_default": false, "enabled": true}
        ]
    });
    let (sim, _dir) = sim_with(reply, "xfer", overrides).await;
    let worker = Worker::start(Some(&sim), &[]).await;
    let summary = dial(&worker, &sim, "xfer", "assets/sim/scenario-transfer.json", 1).await;
    assert_eq!(summary["completed"], 1, "{summary:#}\n{}", worker.log_text());
    assert_eq!(summary["transfers"], 1, "{summary:#}");
    assert_eq!(summary["protocol_violations"], 0, "{summary:#}");
    let r = one_result(&sim, &worker).await;
    assert_eq!(r["disconnected_by"], "customer");
    assert_eq!(r["was_transferred"], true);
    assert_eq!(r["transfer_destination"], "2001");
    assert_eq!(r["transfer_target"], "Sales");
    assert_eq!(r["transfer_reason"], "wants sales");
    assert_eq!(r["transfer_method"], "websocket_reverse_transfer");
    assert_eq!(bot_lines(&r).last().unwrap(), "Please hold while I transfer you.");
}

/// What the loopback tool server saw.
#[derive(Default)]
struct Seen {
    requests: Vec<(String, String, Value)>,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_custom_http_tool_is_called_and_its_result_reaches_the_llm() {
    use axum::extract::{Path, RawQuery, State};
    let seen = Arc::new(Mutex::new(Seen::default()));
    let app =
        axum::Router::new()
            .route(
                "/orders/{id}",
                axum::routing::post(
                    |State(seen): State<Arc<Mutex<Seen>>>,
                     Path(id): Path<String>,
                     RawQuery(q): RawQuery,
                     body: String| async move {
                        let body: Value = serde_json::from_str(&body).unwrap_or(Value::Null);
                        seen.lock().unwrap().requests.push((id.clone(), q.unwrap_or_default(), body));
                        axum::Json(json!({"order": id, "status": "shipped"}))
                    },
                ),
            )
            .with_state(seen.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let tool_addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });

    let reply = json!({"text": "", "tool_calls": [{"name": "lookup_order", "arguments": {"order_id": "42"}}]});
    let overrides = json!({
        "tools": [{
            "type": "function",
            "function": {
                "name": "lookup_order",
                "description": "Look up an order",
                "parameters": {"type": "object", "properties": {"order_id": {"type": "string"}}, "required": ["order_id"]}
            },
            "http": {
                "method": "POST",
                "url": format!("http://{tool_addr}/orders/{{{{args.order_id}}}}?caller={{{{call.caller_id}}}}"),
                "body": {"order": "{{args.order_id}}", "session": "{{call.session_id}}"},
                "timeout_ms": 3000
            }
        }]
    });
    let (sim, _dir) = sim_with(reply, "tools", overrides).await;
    let worker = Worker::start(Some(&sim), &[]).await;
    let summary = dial(&worker, &sim, "tools", "assets/sim/scenario-transfer.json", 1).await;
    assert_eq!(summary["completed"], 1, "{summary:#}\n{}", worker.log_text());
    let r = one_result(&sim, &worker).await;
    let requests = std::mem::take(&mut seen.lock().unwrap().requests);
    assert_eq!(requests.len(), 1, "{}", worker.log_text());
    let (id, query, body) = &requests[0];
    assert_eq!(id, "42");
    assert!(query.starts_with("caller=") && query.len() > "caller=".len(), "{query}");
    assert_eq!(body["order"], "42");
    assert_eq!(body["session"], r["session_id"]);
    let results = events(&r, "custom_tool_result");
    assert_eq!(results.len(), 1, "{:#}", r["events"]);
    let data = &results[0]["data"];
    assert_eq!(data["is_error"], false, "{data:#}");
    assert!(data["result"].as_str().unwrap().contains("shipped"));
    assert!(data["elapsed_ms"].as_f64().is_some());
    assert_eq!(events(&r, "tool_call").len(), 1);
    // The LLM answered after the tool (the script's after-tool reply).
    assert_eq!(bot_lines(&r).last().unwrap(), "Done.");
    // The binding never reached the LLM.
    let reqs = sim.get("/sim/llm-requests").await;
    assert!(!reqs.to_string().contains(&tool_addr.to_string()), "tool URL leaked to the LLM");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flux_turn_events_close_the_turns_of_a_full_call() {
    // The demo script's rules: answers, a barge-in, and end_call on "goodbye".
    let (sim, _dir) = sim_with(Value::Null, "flux", json!({"stt": {"model": "flux-general-en"}})).await;
    let worker = Worker::start(Some(&sim), &[]).await;
    let summary = dial(&worker, &sim, "flux", "assets/sim/scenario.json", 1).await;
    assert_eq!(summary["completed"], 1, "{summary:#}\n{}", worker.log_text());
    assert_eq!(summary["bot_hangups"], 1);
    let r = one_result(&sim, &worker).await;
    let customer: Vec<&str> = r["transcript"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|l| l["speaker"] == "customer")
        .map(|l| l["text"].as_str().unwrap())
        .collect();
    assert_eq!(customer.len(), 3, "{:#}", r["transcript"]);
    assert_eq!(customer[0], "I want to check my order status");
    // The v2 turn-detecting stream served the call, not v1.
    assert!(worker.log_text().contains("stt_turns=true"), "{}", worker.log_text());
}
