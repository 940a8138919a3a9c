//! The Gemini, Vertex, Google token and Anthropic doubles driven with raw HTTP: they accept what
//! the vendors accept and refuse what they refuse, with the vendors' status codes and bodies.

use std::time::{SystemTime, UNIX_EPOCH};

use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::signature::{RsaKeyPair, RSA_PKCS1_SHA256};
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine;
use cxb_sim::{start, ServeOptions, SimServer};
use serde_json::{json, Value};

async fn server() -> SimServer {
    start(ServeOptions { llm_ttft_ms: 0, ..ServeOptions::default() }).await.expect("server starts")
}

async fn post_json(url: &str, headers: &[(&str, &str)], body: &Value) -> (u16, String) {
    let mut rb = reqwest::Client::new().post(url).json(body);
    for (k, v) in headers {
        rb = rb.header(*k, *v);
    }
    let resp = rb.send().await.unwrap();
    (resp.status().as_u16(), resp.text().await.unwrap())
}

fn json_of(text: &str) -> Value {
    serde_json::from_str(text).unwrap_or_else(|e| panic!("not JSON ({e}): {text}"))
}

/// A JWT assertion for `key` (a service-account key JSON), with claims changed by `edit`.
fn assertion(key: &Value, edit: impl FnOnce(&mut Value)) -> String {
    let pem = key["private_key"].as_str().unwrap();
    let b64: String = pem.lines().filter(|l| !l.starts_with("-----")).collect();
    let pair = RsaKeyPair::from_pkcs8(&STANDARD.decode(b64).unwrap()).unwrap();
    let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs();
    let mut claims = json!({"iss": key["client_email"], "aud": key["token_uri"],
        "scope": "https://www.googleapis.com/auth/cloud-platform", "iat": now, "exp": now + 3600});
    edit(&mut claims);
    let header = json!({"alg": "RS256", "typ": "JWT", "kid": key["private_key_id"]});
    let input =
        format!("{}.{}", URL_SAFE_NO_PAD.encode(header.to_string()), URL_SAFE_NO_PAD.encode(claims.to_string()));
    let mut sig = vec![0; pair.public_modulus_len()];
    pair.sign(&RSA_PKCS1_SHA256, &SystemRandom::new(), input.as_bytes(), &mut sig).unwrap();
    format!("{input}.{}", URL_SAFE_NO_PAD.encode(sig))
}

async fn token_request(key: &Value, grant: &str, jwt: &str) -> (u16, Value) {
    let form = format!("grant_type={}&assertion={jwt}", urlencode(grant));
    let resp = reqwest::Client::new()
        .post(key["token_uri"].as_str().unwrap())
        .header("content-type", "application/x-www-form-urlencoded")
        .body(form)
        .send()
        .await
        .unwrap();
    (resp.status().as_u16(), json_of(&resp.text().await.unwrap()))
}

fn urlencode(s: &str) -> String {
    url::form_urlencoded::byte_serialize(s.as_bytes()).collect()
}

async fn new_key(s: &SimServer) -> Value {
    let (status, text) = post_json(&format!("{}/sim/google/service-accounts", s.url("http")), &[], &json!({})).await;
    assert_eq!(status, 200);
    json_of(&text)
}

const GRANT: &str = "urn:ietf:params:oauth:grant-type:jwt-bearer";

#[tokio::test]
async fn token_endpoint_verifies_the_assertion_like_google() {
    let s = server().await;
    let key = new_key(&s).await;
    assert_eq!(key["type"], "service_account");
    assert!(key["private_key"].as_str().unwrap().starts_with("-----BEGIN PRIVATE KEY-----\n"));

    let (status, ok) = token_request(&key, GRANT, &assertion(&key, |_| {})).await;
    assert_eq!(status, 200, "{ok}");
    assert!(ok["access_token"].as_str().unwrap().starts_with("ya29."));
    assert_eq!((ok["expires_in"].as_u64(), ok["token_type"].as_str()), (Some(3599), Some("Bearer")));

    let description =
        |v: &Value| format!("{}: {}", v["error"].as_str().unwrap(), v["error_description"].as_str().unwrap());
    // Claims edited after signing: the signature no longer matches.
    let jwt = assertion(&key, |_| {});
    let mut parts: Vec<String> = jwt.split('.').map(str::to_string).collect();
    parts[1] = URL_SAFE_NO_PAD.encode(json!({"iss": key["client_email"], "scope": "x"}).to_string());
    let (status, bad) = token_request(&key, GRANT, &parts.join(".")).await;
    assert_eq!((status, description(&bad).as_str()), (400, "invalid_grant: Invalid JWT Signature."));
    let (_, bad) = token_request(&key, GRANT, &assertion(&key, |c| c["aud"] = json!("https://elsewhere/token"))).await;
    assert_eq!(description(&bad), "invalid_grant: Invalid JWT: Failed audience check.");
    let (_, bad) =
        token_request(&key, GRANT, &assertion(&key, |c| c["exp"] = json!(c["iat"].as_u64().unwrap() + 7200))).await;
    assert!(description(&bad).starts_with("invalid_grant: Invalid JWT: Token must be a short-lived token"));
    let (_, bad) =
        token_request(&key, GRANT, &assertion(&key, |c| c["exp"] = json!(c["iat"].as_u64().unwrap() - 10))).await;
    assert!(description(&bad).contains("short-lived"));
    let (_, bad) = token_request(&key, GRANT, &assertion(&key, |c| c["scope"] = json!("openid"))).await;
    assert_eq!(bad["error"], "invalid_scope");
    let (_, bad) = token_request(&key, "client_credentials", &assertion(&key, |_| {})).await;
    assert_eq!(description(&bad), "unsupported_grant_type: Invalid grant_type: client_credentials");
    let other = new_key(&s).await;
    let (_, bad) = token_request(&key, GRANT, &assertion(&other, |c| c["iss"] = key["client_email"].clone())).await;
    assert_eq!(description(&bad), "invalid_grant: Invalid JWT Signature.");

    let stats = json_of(&reqwest::get(format!("{}/sim/google", s.url("http"))).await.unwrap().text().await.unwrap());
    assert_eq!((stats["token_requests"].as_u64(), stats["tokens_issued"].as_u64()), (Some(8), Some(1)));
}

fn gemini_url(s: &SimServer, model: &str) -> String {
    format!("{}/v1beta/models/{model}:streamGenerateContent?alt=sse", s.url("http"))
}

const KEY: (&str, &str) = ("x-goog-api-key", "k");

fn hello() -> Value {
    json!({"contents": [{"role": "user", "parts": [{"text": "hello"}]}]})
}

async fn gemini_error(s: &SimServer, body: Value) -> (u16, String) {
    let (status, text) = post_json(&gemini_url(s, "gemini-2.5-flash"), &[KEY], &body).await;
    let v = json_of(&text);
    assert_eq!(v["error"]["code"].as_u64(), Some(status as u64), "{text}");
    (status, v["error"]["message"].as_str().unwrap().to_string())
}

#[tokio::test]
async fn gemini_double_accepts_what_the_api_accepts() {
    let s = server().await;
    let (status, text) = post_json(&gemini_url(&s, "gemini-2.5-flash"), &[KEY], &hello()).await;
    assert_eq!(status, 200);
    let chunks: Vec<Value> = text.split("\r\n\r\n").filter_map(|e| e.strip_prefix("data: ")).map(json_of).collect();
    assert!(chunks.len() > 1);
    let last = chunks.last().unwrap();
    assert_eq!(last["candidates"][0]["finishReason"], "STOP");
    assert!(last["usageMetadata"]["candidatesTokenCount"].as_u64().unwrap() > 0);
    assert!(chunks[..chunks.len() - 1].iter().all(|c| c["candidates"][0].get("finishReason").is_none()));
    // Proto JSON takes the snake_case names too.
    let snake = json!({"contents": [{"role": "user", "parts": [{"text": "hi"}]}],
        "generation_config": {"max_output_tokens": 10, "thinking_config": {"thinking_budget": 0}}});
    assert_eq!(post_json(&gemini_url(&s, "gemini-2.5-flash"), &[KEY], &snake).await.0, 200);
}

#[tokio::test]
async fn gemini_double_refuses_what_the_api_refuses() {
    let s = server().await;
    let mut unknown = hello();
    unknown["temperature"] = json!(0.2);
    assert_eq!(
        gemini_error(&s, unknown).await,
        (400, "Invalid JSON payload received. Unknown name \"temperature\": Cannot find field.".into())
    );
    let mut schema = hello();
    schema["tools"] = json!([{"functionDeclarations": [{"name": "f", "parameters": {"type": "object",
        "additionalProperties": false, "properties": {"a": {"type": "string"}}}}]}]);
    assert_eq!(
        gemini_error(&s, schema).await.1,
        "Invalid JSON payload received. Unknown name \"additionalProperties\" at 'tools[0].function_declarations[0].parameters': Cannot find field."
    );
    let mut empty = hello();
    empty["tools"] =
        json!([{"functionDeclarations": [{"name": "f", "parameters": {"type": "OBJECT", "properties": {}}}]}]);
    assert!(gemini_error(&s, empty).await.1.ends_with("parameters.properties: should be non-empty for OBJECT type"));
    let mut name = hello();
    name["tools"] = json!([{"functionDeclarations": [{"name": "9 bad name"}]}]);
    assert!(gemini_error(&s, name).await.1.contains("Invalid function name."));
    let twice =
        json!({"contents": [{"role": "user", "parts": [{"text": "a"}]}, {"role": "user", "parts": [{"text": "b"}]}]});
    assert_eq!(
        gemini_error(&s, twice).await.1,
        "Please ensure that multiturn requests alternate between user and model."
    );
    let orphan =
        json!({"contents": [{"role": "user", "parts": [{"functionResponse": {"name": "f", "response": {}}}]}]});
    assert!(gemini_error(&s, orphan)
        .await
        .1
        .contains("function response turn comes immediately after a function call turn"));
    let forged = json!({"contents": [{"role": "user", "parts": [{"text": "a"}]},
        {"role": "model", "parts": [{"functionCall": {"name": "f", "args": {}}, "thoughtSignature": "Zm9yZ2Vk"}]},
        {"role": "user", "parts": [{"functionResponse": {"name": "f", "response": {"output": 1}}}]}]});
    assert_eq!(gemini_error(&s, forged).await.1, "Corrupted thought signature.");
    let mut mixed = hello();
    mixed["cachedContent"] = json!("cachedContents/x");
    mixed["systemInstruction"] = json!({"parts": [{"text": "s"}]});
    assert!(gemini_error(&s, mixed)
        .await
        .1
        .starts_with("CachedContent can not be used with GenerateContent request setting system_instruction"));
    let mut missing = hello();
    missing["cachedContent"] = json!("cachedContents/none");
    assert_eq!(gemini_error(&s, missing).await, (403, "CachedContent not found (or permission denied)".into()));
    let (status, text) = post_json(&gemini_url(&s, "gemini-2.5-flash"), &[], &hello()).await;
    assert_eq!((status, json_of(&text)["error"]["status"].as_str()), (403, Some("PERMISSION_DENIED")));
}

#[tokio::test]
async fn gemini_cache_lifecycle_and_expiry_switch() {
    let s = server().await;
    let base = s.url("http");
    let http = reqwest::Client::new();
    let small =
        json!({"model": "models/gemini-2.5-flash", "systemInstruction": {"parts": [{"text": "short"}]}, "ttl": "300s"});
    let (status, text) = post_json(&format!("{base}/v1beta/cachedContents"), &[KEY], &small).await;
    assert_eq!(status, 400);
    assert!(json_of(&text)["error"]["message"]
        .as_str()
        .unwrap()
        .starts_with("Cached content is too small. total_token_count="));

    let big = json!({"model": "models/gemini-2.5-flash", "displayName": "bot-42-v7",
        "systemInstruction": {"parts": [{"text": "rule. ".repeat(1000)}]}, "ttl": "300s"});
    let (status, text) = post_json(&format!("{base}/v1beta/cachedContents"), &[KEY], &big).await;
    assert_eq!(status, 200, "{text}");
    let created = json_of(&text);
    let name = created["name"].as_str().unwrap().to_string();
    assert!(name.starts_with("cachedContents/"));
    assert!(created["usageMetadata"]["totalTokenCount"].as_u64().unwrap() >= 1024);
    assert!(created["expireTime"].as_str().is_some());

    let patched = http
        .patch(format!("{base}/v1beta/{name}"))
        .header(KEY.0, KEY.1)
        .json(&json!({"ttl": "900s"}))
        .send()
        .await
        .unwrap();
    assert_eq!(patched.status(), 200);
    let mut uses = hello();
    uses["cachedContent"] = json!(name);
    let (status, text) = post_json(&gemini_url(&s, "gemini-2.5-flash"), &[KEY], &uses).await;
    assert_eq!(status, 200);
    assert!(text.contains("\"cachedContentTokenCount\""));
    let (status, text) = post_json(&gemini_url(&s, "gemini-2.5-pro"), &[KEY], &uses).await;
    assert_eq!(status, 400);
    assert!(json_of(&text)["error"]["message"].as_str().unwrap().starts_with("Model used by GenerateContent request"));

    post_json(&format!("{base}/sim/google/expire-caches"), &[], &json!({})).await;
    let got = http.get(format!("{base}/v1beta/{name}")).header(KEY.0, KEY.1).send().await.unwrap();
    assert_eq!(got.status(), 403);
    assert_eq!(post_json(&gemini_url(&s, "gemini-2.5-flash"), &[KEY], &uses).await.0, 403);
}

#[tokio::test]
async fn vertex_double_wants_a_live_token_and_no_function_ids() {
    let s = server().await;
    let url = format!(
        "{}/v1/projects/p1/locations/us-central1/publishers/google/models/gemini-2.5-flash:streamGenerateContent?alt=sse",
        s.url("http")
    );
    let (status, text) = post_json(&url, &[], &hello()).await;
    assert_eq!((status, json_of(&text)["error"]["status"].as_str()), (401, Some("UNAUTHENTICATED")));
    let key = new_key(&s).await;
    let (_, token) = token_request(&key, GRANT, &assertion(&key, |_| {})).await;
    let auth = format!("Bearer {}", token["access_token"].as_str().unwrap());
    assert_eq!(post_json(&url, &[("authorization", &auth)], &hello()).await.0, 200);
    let with_id = json!({"contents": [{"role": "user", "parts": [{"text": "a"}]},
        {"role": "model", "parts": [{"functionCall": {"name": "f", "args": {}}}]},
        {"role": "user", "parts": [{"functionResponse": {"id": "x", "name": "f", "response": {}}}]}]});
    let (status, text) = post_json(&url, &[("authorization", &auth)], &with_id).await;
    assert_eq!(status, 400);
    assert_eq!(
        json_of(&text)["error"]["message"],
        "Invalid JSON payload received. Unknown name \"id\" at 'contents[2].parts[0].function_response': Cannot find field."
    );
    // Vertex is strict about roles.
    let no_role = json!({"contents": [{"parts": [{"text": "a"}]}]});
    assert_eq!(post_json(&url, &[("authorization", &auth)], &no_role).await.0, 400);
}

#[tokio::test]
async fn anthropic_double_headers_fields_and_event_order() {
    let s = server().await;
    let url = format!("{}/v1/messages", s.url("http"));
    let body = json!({"model": "claude-x", "max_tokens": 50, "stream": true,
        "messages": [{"role": "user", "content": "my bill"}]});
    let (status, text) = post_json(&url, &[("x-api-key", "k")], &body).await;
    assert_eq!(
        (status, json_of(&text)["error"]["message"].as_str()),
        (400, Some("anthropic-version: header is required"))
    );
    let version = ("anthropic-version", "2023-06-01");
    let mut extra = body.clone();
    extra["response_format"] = json!({"type": "json_object"});
    let (status, text) = post_json(&url, &[("x-api-key", "k"), version], &extra).await;
    assert_eq!(status, 400);
    assert_eq!(
        json_of(&text)["error"],
        json!({"type": "invalid_request_error", "message": "response_format: Extra inputs are not permitted"})
    );
    let (status, text) = post_json(&url, &[("x-api-key", "k"), version], &body).await;
    assert_eq!(status, 200);
    let names: Vec<&str> = text.lines().filter_map(|l| l.strip_prefix("event: ")).collect();
    assert_eq!(names.first(), Some(&"message_start"));
    assert_eq!(&names[names.len() - 2..], ["message_delta", "message_stop"]);
    assert!(names.contains(&"content_block_delta"));
}
