//! In-process tests: start the sim server on 127.0.0.1:0 and drive every double with a raw
//! client, checking exact message shapes.

use std::time::Duration;

use base64::Engine;
use cxb_sim::audio::{pcm_bytes, samples_for_ms, SpeechSynth};
use cxb_sim::{start, ServeOptions, SimServer};
use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::{HeaderName, HeaderValue};
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::{self, Message};

type Ws = tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

async fn server(f: impl FnOnce(&mut ServeOptions)) -> SimServer {
    let mut o = ServeOptions { stt_latency_ms: 30, llm_ttft_ms: 20, tts_ttfb_ms: 20, ..ServeOptions::default() };
    f(&mut o);
    start(o).await.expect("server starts")
}

fn tone(ms: u64) -> Vec<u8> {
    let mut s = SpeechSynth::new(8000);
    let mut v = Vec::new();
    s.render(samples_for_ms(8000, ms), &mut v);
    pcm_bytes(&v)
}

fn silence(ms: u64) -> Vec<u8> {
    vec![0u8; samples_for_ms(8000, ms) * 2]
}

async fn connect(url: &str, headers: &[(&str, &str)]) -> Result<Ws, tungstenite::Error> {
    let mut req = url.into_client_request()?;
    for (k, v) in headers {
        req.headers_mut().insert(HeaderName::from_bytes(k.as_bytes()).unwrap(), HeaderValue::from_str(v).unwrap());
    }
    Ok(tokio_tungstenite::connect_async(req).await?.0)
}

fn http_status(r: Result<Ws, tungstenite::Error>) -> u16 {
    match r {
        Err(tungstenite::Error::Http(resp)) => resp.status().as_u16(),
        Err(e) => panic!("unexpected error {e}"),
        Ok(_) => panic!("upgrade unexpectedly accepted"),
    }
}

enum Got {
    Json(Value),
    Closed(Option<CloseFrame>),
    Timeout,
}

async fn next(ws: &mut Ws, within: Duration) -> Got {
    let deadline = tokio::time::Instant::now() + within;
    loop {
        match tokio::time::timeout_at(deadline, ws.next()).await {
            Err(_) => return Got::Timeout,
            Ok(None) | Ok(Some(Err(_))) => return Got::Closed(None),
            Ok(Some(Ok(Message::Close(cf)))) => return Got::Closed(cf),
            Ok(Some(Ok(Message::Text(t)))) => {
                return Got::Json(serde_json::from_str(t.as_str()).expect("JSON text frame"))
            }
            Ok(Some(Ok(_))) => continue,
        }
    }
}

async fn next_json(ws: &mut Ws) -> Value {
    match next(ws, Duration::from_secs(3)).await {
        Got::Json(v) => v,
        Got::Closed(cf) => panic!("closed: {cf:?}"),
        Got::Timeout => panic!("no message within 3 s"),
    }
}

async fn send_audio(ws: &mut Ws, pcm: &[u8]) {
    for c in pcm.chunks(320) {
        ws.send(Message::Binary(c.to_vec().into())).await.unwrap();
    }
}

async fn send_text(ws: &mut Ws, v: Value) {
    ws.send(Message::Text(v.to_string().into())).await.unwrap();
}

// ---------------------------------------------------------------- Deepgram

const DG_QUERY: &str = "/v1/listen?model=nova-3&language=en&encoding=linear16&sample_rate=8000&channels=1&interim_results=true&endpointing=200&utterance_end_ms=300&vad_events=true&smart_format=true";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deepgram_rejects_bad_upgrades() {
    let s = server(|_| {}).await;
    let url = format!("{}{DG_QUERY}", s.url("ws"));
    assert_eq!(http_status(connect(&url, &[]).await), 401);
    assert_eq!(http_status(connect(&url, &[("Authorization", "Token bad-key")]).await), 401);
    let no_enc = format!("{}/v1/listen?sample_rate=8000", s.url("ws"));
    assert_eq!(http_status(connect(&no_enc, &[("Authorization", "Token k")]).await), 400);
    let no_rate = format!("{}/v1/listen?encoding=linear16", s.url("ws"));
    assert_eq!(http_status(connect(&no_rate, &[("Authorization", "Token k")]).await), 400);
    s.shutdown().await;
}

fn words_of(v: &Value) -> usize {
    v["channel"]["alternatives"][0]["words"].as_array().unwrap().len()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deepgram_utterances_interims_finals_and_close() {
    let s = server(|_| {}).await;
    let mut ws = connect(&format!("{}{DG_QUERY}", s.url("ws")), &[("Authorization", "Token sim-key")]).await.unwrap();
    // Utterance 1: 1 s of speech after 200 ms of silence, then 400 ms of silence.
    let mut audio = silence(200);
    audio.extend(tone(1000));
    audio.extend(silence(400));
    send_audio(&mut ws, &audio).await;

    let started = next_json(&mut ws).await;
    assert_eq!(started, json!({"type":"SpeechStarted","channel":[0],"timestamp":0.2}));
    let mut interim_words = vec![];
    let fin = loop {
        let v = next_json(&mut ws).await;
        assert_eq!(v["type"], "Results");
        if v["is_final"] == true {
            break v;
        }
        assert_eq!(v["speech_final"], false);
        interim_words.push(words_of(&v));
    };
    assert_eq!(interim_words, vec![1, 2, 3, 4]);
    assert_eq!(fin["speech_final"], true);
    assert_eq!(fin["from_finalize"], false);
    assert_eq!(fin["start"], 0.2);
    assert_eq!(fin["duration"], 1.0);
    assert_eq!(fin["channel_index"], json!([0, 1]));
    let alt = &fin["channel"]["alternatives"][0];
    assert_eq!(alt["transcript"], "I want to check my order status");
    assert_eq!(words_of(&fin), 7);
    let w0 = &alt["words"][0];
    for k in ["word", "start", "end", "confidence", "punctuated_word"] {
        assert!(w0.get(k).is_some(), "word field {k}");
    }
    for k in ["request_id", "model_uuid", "model_info"] {
        assert!(fin["metadata"].get(k).is_some(), "metadata field {k}");
    }
    let ue = next_json(&mut ws).await;
    assert_eq!(ue, json!({"type":"UtteranceEnd","channel":[0,1],"last_word_end":1.2}));

    // Utterance 2: Finalize while speech is still going on → one final, from_finalize, not speech_final.
    send_audio(&mut ws, &tone(600)).await;
    send_text(&mut ws, json!({"type":"KeepAlive"})).await;
    send_text(&mut ws, json!({"type":"Finalize"})).await;
    let fin2 = loop {
        let v = next_json(&mut ws).await;
        if v["is_final"] == true {
            break v;
        }
    };
    assert_eq!(fin2["from_finalize"], true);
    assert_eq!(fin2["speech_final"], false);
    assert_eq!(
        fin2["channel"]["alternatives"][0]["transcript"],
        "Actually wait, I have a different question about my bill"
    );
    send_audio(&mut ws, &silence(400)).await;
    // No second final for the same utterance; only its UtteranceEnd.
    let v = next_json(&mut ws).await;
    assert_eq!(v["type"], "UtteranceEnd", "{v}");

    // Utterance 3 ended by endpointing, then CloseStream flushes, sends Metadata and closes 1000.
    send_audio(&mut ws, &tone(300)).await;
    send_audio(&mut ws, &silence(240)).await;
    send_text(&mut ws, json!({"type":"CloseStream"})).await;
    let mut finals = 0;
    let meta = loop {
        let v = next_json(&mut ws).await;
        if v["type"] == "Metadata" {
            break v;
        }
        if v["is_final"] == true {
            finals += 1;
            assert_eq!(v["channel"]["alternatives"][0]["transcript"], "No that is all, thank you, goodbye");
        }
    };
    assert_eq!(finals, 1);
    for k in ["transaction_key", "request_id", "sha256", "created", "duration", "channels"] {
        assert!(meta.get(k).is_some(), "Metadata.{k}");
    }
    match next(&mut ws, Duration::from_secs(3)).await {
        Got::Closed(Some(cf)) => assert_eq!(u16::from(cf.code), 1000),
        _ => panic!("expected close 1000"),
    }
    s.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deepgram_finalize_after_end_and_idle_close() {
    let s = server(|o| {
        o.stt_latency_ms = 2000;
        o.stt_idle_timeout = Duration::from_millis(400);
    })
    .await;
    let q = "/v1/listen?encoding=linear16&sample_rate=8000&interim_results=false";
    let mut ws = connect(&format!("{}{q}", s.url("ws")), &[("Authorization", "Token k")]).await.unwrap();
    let mut audio = tone(400);
    audio.extend(silence(300));
    send_audio(&mut ws, &audio).await;
    // The final is pending (2 s STT latency): Finalize sends it at once, exactly once.
    tokio::time::sleep(Duration::from_millis(50)).await;
    send_text(&mut ws, json!({"type":"Finalize"})).await;
    let v = next_json(&mut ws).await;
    assert_eq!(
        (v["is_final"].as_bool(), v["speech_final"].as_bool(), v["from_finalize"].as_bool()),
        (Some(true), Some(true), Some(true))
    );
    // Nothing else, then NET-0001 after 400 ms without audio or KeepAlive.
    match next(&mut ws, Duration::from_secs(3)).await {
        Got::Closed(Some(cf)) => {
            assert_eq!(u16::from(cf.code), 1011);
            assert_eq!(cf.reason.as_str(), "NET-0001");
        }
        Got::Json(v) => panic!("unexpected {v}"),
        _ => panic!("expected close 1011"),
    }
    s.shutdown().await;
}

// ---------------------------------------------------------------- OpenAI

fn sse_events(body: &str) -> Vec<String> {
    body.split("\n\n")
        .filter(|e| !e.trim().is_empty())
        .map(|e| e.strip_prefix("data: ").unwrap_or_else(|| panic!("not a data line: {e:?}")).to_string())
        .collect()
}

async fn timings(s: &SimServer) -> Value {
    let url = format!("{}/sim/timings", s.url("http"));
    reqwest::Client::new().get(url).send().await.unwrap().json().await.unwrap()
}

async fn chat(s: &SimServer, body: Value, auth: Option<&str>) -> reqwest::Response {
    let mut r = reqwest::Client::new().post(format!("{}/v1/chat/completions", s.url("http"))).json(&body);
    if let Some(a) = auth {
        r = r.header("Authorization", a);
    }
    r.timeout(Duration::from_secs(5)).send().await.unwrap()
}

fn req(model: &str, messages: Value) -> Value {
    json!({"model":model,"stream":true,"stream_options":{"include_usage":true},"messages":messages,"temperature":0.3})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openai_streams_text_tools_and_faults() {
    let s = server(|_| {}).await;
    let user = |t: &str| json!([{"role":"system","content":"sys"},{"role":"user","content":t}]);

    let r = chat(&s, req("m", user("hi")), None).await;
    assert_eq!(r.status(), 401);
    assert!(r.json::<Value>().await.unwrap()["error"]["message"].is_string());
    let r = chat(&s, json!({"model":"m","messages":[{"role":"user","content":"x"}]}), Some("Bearer k")).await;
    assert_eq!(r.status(), 400, "stream:true is required");

    // Text reply.
    let r = chat(&s, req("sim-model", user("check my order status please")), Some("Bearer k")).await;
    assert_eq!(r.status(), 200);
    assert!(r.headers()["content-type"].to_str().unwrap().starts_with("text/event-stream"));
    let ev = sse_events(&r.text().await.unwrap());
    assert_eq!(ev.last().unwrap(), "[DONE]");
    let chunks: Vec<Value> = ev[..ev.len() - 1].iter().map(|e| serde_json::from_str(e).unwrap()).collect();
    let (usage, choice_chunks) = chunks.split_last().unwrap();
    assert_eq!(usage["choices"], json!([]));
    let u = &usage["usage"];
    assert_eq!(u["total_tokens"], u["prompt_tokens"].as_u64().unwrap() + u["completion_tokens"].as_u64().unwrap());
    assert_eq!(u["prompt_tokens_details"]["cached_tokens"], 0);
    assert!(u["prompt_tokens_details"]["cache_write_tokens"].is_null());
    assert_eq!(choice_chunks[0]["choices"][0]["delta"]["role"], "assistant");
    let mut text = String::new();
    for c in choice_chunks {
        for k in ["id", "object", "created", "model", "system_fingerprint", "choices", "usage"] {
            assert!(c.get(k).is_some(), "chunk field {k}");
        }
        assert_eq!(c["object"], "chat.completion.chunk");
        assert_eq!(c["model"], "sim-model");
        assert!(c["usage"].is_null());
        let ch = &c["choices"][0];
        assert_eq!(ch["index"], 0);
        assert!(ch.get("logprobs").is_some());
        text.push_str(ch["delta"]["content"].as_str().unwrap_or(""));
    }
    assert!(text.starts_with("Sure. Your order shipped yesterday"));
    assert_eq!(choice_chunks.last().unwrap()["choices"][0]["finish_reason"], "stop");
    assert_eq!(choice_chunks[1]["choices"][0]["delta"]["content"], "Sure. ");
    // The double reports the delay it really applied (at least the injected 20 ms), and clears.
    let t = timings(&s).await;
    assert_eq!(t["llm_ttft_ms"]["count"], 1);
    assert!(t["llm_ttft_ms"]["max"].as_f64().unwrap() >= 20.0, "{t}");
    let http = s.url("http");
    let cleared = reqwest::Client::new().delete(format!("{http}/sim/timings")).send().await.unwrap();
    assert_eq!(cleared.status(), 204);
    assert_eq!(timings(&s).await["llm_ttft_ms"]["count"], 0);

    // Tool call reply.
    let r = chat(&s, req("sim-model", user("No that is all, thank you, goodbye")), Some("Bearer k")).await;
    let ev = sse_events(&r.text().await.unwrap());
    let chunks: Vec<Value> = ev[..ev.len() - 1].iter().map(|e| serde_json::from_str(e).unwrap()).collect();
    let mut args = String::new();
    let mut fragments = 0;
    let mut name = None;
    for c in &chunks {
        if let Some(tcs) = c["choices"][0]["delta"]["tool_calls"].as_array() {
            let tc = &tcs[0];
            assert_eq!(tc["index"], 0);
            if let Some(id) = tc.get("id") {
                assert!(id.as_str().unwrap().starts_with("call_"));
                assert_eq!(tc["type"], "function");
                assert_eq!(tc["function"]["arguments"], "");
                name = tc["function"]["name"].as_str().map(str::to_string);
            } else {
                fragments += 1;
                args.push_str(tc["function"]["arguments"].as_str().unwrap());
            }
        }
    }
    assert_eq!(name.as_deref(), Some("end_call"));
    assert!(fragments >= 2);
    assert_eq!(serde_json::from_str::<Value>(&args).unwrap(), json!({"reason":"the caller said goodbye"}));
    let finish = chunks.iter().rev().find(|c| !c["choices"].as_array().unwrap().is_empty()).unwrap();
    assert_eq!(finish["choices"][0]["finish_reason"], "tool_calls");

    // After a tool result.
    let after = json!([{"role":"user","content":"bye"},{"role":"assistant","tool_calls":[{"id":"call_1","type":"function","function":{"name":"end_call","arguments":"{}"}}]},{"role":"tool","tool_call_id":"call_1","content":"ok"}]);
    let ev = sse_events(&chat(&s, req("sim-model", after), Some("Bearer k")).await.text().await.unwrap());
    let text: String = ev
        .iter()
        .filter(|e| *e != "[DONE]")
        .map(|e| serde_json::from_str::<Value>(e).unwrap())
        .filter_map(|c| c["choices"][0]["delta"]["content"].as_str().map(str::to_string))
        .collect();
    assert_eq!(text, "Thank you for calling. Goodbye!", "end_call's own after-tool reply");

    // Faults.
    let r = chat(&s, req("fail-500", user("x")), Some("Bearer k")).await;
    assert_eq!(r.status(), 500);
    assert_eq!(r.json::<Value>().await.unwrap()["error"]["type"], "server_error");
    let ev = sse_events(&chat(&s, req("midstream-error", user("x")), Some("Bearer k")).await.text().await.unwrap());
    assert_eq!(ev.len(), 2);
    assert_eq!(serde_json::from_str::<Value>(&ev[1]).unwrap()["error"]["message"], "boom");
    let r = chat(&s, req("stall", user("x")), Some("Bearer k")).await;
    assert_eq!(r.status(), 200, "headers arrive");
    let mut body = r.bytes_stream();
    assert!(tokio::time::timeout(Duration::from_millis(300), body.next()).await.is_err(), "no body");
    drop(body);
    s.shutdown().await;
}

// ---------------------------------------------------------------- Cartesia

fn cartesia_req(ctx: &str, text: &str, cont: bool) -> Value {
    json!({"context_id":ctx,"model_id":"sonic-3","transcript":text,"continue":cont,
        "voice":{"mode":"id","id":"sim-voice"},"language":"en",
        "output_format":{"container":"raw","encoding":"pcm_s16le","sample_rate":8000},
        "add_timestamps":true,"use_normalized_timestamps":false,"max_buffer_delay_ms":0})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cartesia_contexts_cancel_and_errors() {
    let s = server(|o| o.tts_ttfb_ms = 100).await;
    let url = format!("{}/tts/websocket", s.url("ws"));
    assert_eq!(http_status(connect(&url, &[("Cartesia-Version", "2026-03-01")]).await), 401);
    assert_eq!(http_status(connect(&url, &[("X-API-Key", "bad-key"), ("Cartesia-Version", "2026-03-01")]).await), 401);
    assert_eq!(http_status(connect(&url, &[("X-API-Key", "k")]).await), 400);
    let mut ws = connect(&url, &[("X-API-Key", "k"), ("Cartesia-Version", "2026-03-01")]).await.unwrap();

    // A (two pieces, then closed) and B (one piece) interleave; C is cancelled before its TTFB.
    send_text(&mut ws, cartesia_req("A", "Hello there. ", true)).await;
    send_text(&mut ws, cartesia_req("C", &"long text ".repeat(20), true)).await;
    send_text(&mut ws, json!({"context_id":"C","cancel":true})).await;
    send_text(&mut ws, cartesia_req("B", "Hi", false)).await;
    send_text(&mut ws, cartesia_req("A", "Bye.", true)).await;
    send_text(&mut ws, cartesia_req("A", "", false)).await;
    let mut bytes = std::collections::HashMap::<String, usize>::new();
    let mut done = vec![];
    let mut stamps = vec![];
    while done.len() < 2 {
        let v = next_json(&mut ws).await;
        let ctx = v["context_id"].as_str().unwrap().to_string();
        assert_ne!(ctx, "C", "cancelled context produced {v}");
        match v["type"].as_str().unwrap() {
            "chunk" => {
                assert_eq!((v["done"].as_bool(), v["status_code"].as_u64()), (Some(false), Some(206)));
                assert!(v["step_time"].is_number());
                let b = base64::engine::general_purpose::STANDARD.decode(v["data"].as_str().unwrap()).unwrap();
                assert!(b.len() <= 1600, "100 ms chunks at 8 kHz");
                *bytes.entry(ctx).or_default() += b.len();
            }
            "timestamps" => stamps.push(v),
            "done" => {
                assert_eq!(v, json!({"type":"done","context_id":ctx,"done":true,"status_code":206}));
                done.push(ctx);
            }
            other => panic!("unexpected {other}: {v}"),
        }
    }
    done.sort();
    assert_eq!(done, vec!["A", "B"]);
    // A and B each had a first byte after at least the injected 100 ms; cancelled C had none.
    let t = timings(&s).await;
    assert_eq!(t["tts_ttfb_ms"]["count"], 2, "{t}");
    assert!(t["tts_ttfb_ms"]["p50"].as_f64().unwrap() >= 100.0, "{t}");
    // 65 ms per character: "Hello there. " (13) + "Bye." (4) = 1105 ms; "Hi" → min 200 ms.
    assert_eq!(bytes["A"], 1105 * 16);
    assert_eq!(bytes["B"], 200 * 16);
    let a: Vec<&Value> = stamps.iter().filter(|v| v["context_id"] == "A").collect();
    assert_eq!(a.len(), 2);
    assert_eq!(a[0]["word_timestamps"]["words"], json!(["Hello", "there."]));
    assert_eq!(a[1]["word_timestamps"]["start"], json!([0.845]), "relative to the context's audio start");
    assert!(matches!(next(&mut ws, Duration::from_millis(400)).await, Got::Timeout), "nothing more (C stays silent)");

    send_text(
        &mut ws,
        json!({"context_id":"E","model_id":"sonic-3","transcript":"x","voice":{"mode":"id","id":"fail-voice"},
        "output_format":{"container":"raw","encoding":"pcm_s16le","sample_rate":8000}}),
    )
    .await;
    let e = next_json(&mut ws).await;
    assert_eq!(
        (e["type"].as_str(), e["status_code"].as_u64(), e["context_id"].as_str()),
        (Some("error"), Some(400), Some("E"))
    );
    for k in ["title", "message", "error_code"] {
        assert!(e[k].is_string(), "{k}");
    }
    let mut bad = cartesia_req("F", "x", false);
    bad["output_format"]["encoding"] = json!("pcm_mulaw");
    send_text(&mut ws, bad).await;
    assert_eq!(next_json(&mut ws).await["type"], "error");
    s.shutdown().await;
}

// ---------------------------------------------------------------- ElevenLabs

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn elevenlabs_stream_input() {
    let s = server(|_| {}).await;
    let base = s.url("ws");
    let url =
        format!("{base}/v1/text-to-speech/sim-voice/stream-input?model_id=eleven_flash_v2_5&output_format=pcm_16000");
    assert_eq!(http_status(connect(&url, &[]).await), 401);
    let bad = format!("{base}/v1/text-to-speech/sim-voice/stream-input?model_id=m&output_format=mp3_44100_128");
    assert_eq!(http_status(connect(&bad, &[("xi-api-key", "k")]).await), 400);
    let mut ws = connect(&url, &[("xi-api-key", "k")]).await.unwrap();
    send_text(&mut ws, json!({"text":" ","voice_settings":{"stability":0.5,"similarity_boost":0.8},"generation_config":{"chunk_length_schedule":[120,160,250,290]}})).await;
    send_text(&mut ws, json!({"text":"Hello there. ","try_trigger_generation":true})).await;
    send_text(&mut ws, json!({"text":""})).await;
    let a = next_json(&mut ws).await;
    assert!(a["isFinal"].is_null());
    let audio = base64::engine::general_purpose::STANDARD.decode(a["audio"].as_str().unwrap()).unwrap();
    assert_eq!(audio.len(), 845 * 32, "13 chars × 65 ms at 16 kHz");
    let al = &a["normalizedAlignment"];
    assert_eq!(al["chars"].as_array().unwrap().len(), 13);
    assert_eq!(al["charStartTimesMs"][1], 65);
    assert_eq!(al["charDurationsMs"][0], 65);
    assert_eq!(a["alignment"], a["normalizedAlignment"]);
    assert_eq!(next_json(&mut ws).await, json!({"isFinal":true}));
    match next(&mut ws, Duration::from_secs(3)).await {
        Got::Closed(Some(cf)) => assert_eq!(u16::from(cf.code), 1000),
        _ => panic!("expected close 1000"),
    }
    let t = timings(&s).await;
    assert_eq!(t["tts_ttfb_ms"]["count"], 1, "{t}");
    assert!(t["tts_ttfb_ms"]["max"].as_f64().unwrap() >= 20.0, "{t}");
    // A first message that is not the initialise message is refused with a clear reason.
    let mut ws = connect(&url, &[("xi-api-key", "k")]).await.unwrap();
    send_text(&mut ws, json!({"text":"Hello"})).await;
    match next(&mut ws, Duration::from_secs(3)).await {
        Got::Closed(Some(cf)) => assert_eq!(u16::from(cf.code), 1008),
        _ => panic!("expected close 1008"),
    }
    s.shutdown().await;
}

// ---------------------------------------------------------------- fake CXB API

/// `--public-host`: a worker on another machine is pointed at the host it can reach, not at
/// the address the sim listens on.
#[tokio::test]
async fn public_host_goes_into_the_served_urls() {
    let s = server(|o| {
        o.listen = "0.0.0.0:0".parse().unwrap();
        o.public_host = Some("sim.test".into());
    })
    .await;
    let port = s.state.addr.port();
    let url = format!("http://127.0.0.1:{port}/api/v1/config/demo?caller_id=1&stream_id=s&connected_event=%7B%7D");
    let cfg: Value = reqwest::get(url).await.unwrap().json().await.unwrap();
    assert_eq!(cfg["webhook_url"], format!("http://sim.test:{port}/api/v1/call-results"));
    assert_eq!(cfg["llm"]["base_url"], format!("http://sim.test:{port}/v1"));
    assert_eq!(cfg["stt"]["base_url"], format!("ws://sim.test:{port}"));
    s.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fake_api_config_and_results() {
    let dir = tempfile::tempdir().unwrap();
    let results_file = dir.path().join("results.jsonl");
    let rf = results_file.clone();
    let s = server(move |o| {
        o.secret = Some("s3cret".into());
        o.results_file = Some(rf);
    })
    .await;
    let http = s.url("http");
    let c = reqwest::Client::builder().timeout(Duration::from_secs(5)).build().unwrap();
    let ce = json!({"callerId":"+919800000001","did":"+911140000000","customer_name":"Test Caller"}).to_string();
    let cfg_url = |bot: &str| format!("{http}/api/v1/config/{bot}");
    let get = |bot: &str, secret: Option<(&str, &str)>| {
        let mut r = c.get(cfg_url(bot)).query(&[
            ("caller_id", "+919800000001"),
            ("stream_id", "st-1"),
            ("connected_event", ce.as_str()),
        ]);
        if let Some((h, v)) = secret {
            r = r.header(h, v);
        }
        r.send()
    };
    assert_eq!(get("demo", None).await.unwrap().status(), 403);
    assert_eq!(get("demo", Some(("X-CXBCore-Secret", "wrong"))).await.unwrap().status(), 403);
    let r = get("demo", Some(("X-CXB-Core-Secret", "s3cret"))).await.unwrap();
    assert_eq!(r.status(), 200);
    let body = r.bytes().await.unwrap();
    let cfg = cxb_wire::config::BotConfig::from_json(&body).expect("served config parses with the worker's types");
    assert_eq!(cfg.min_words_interruption, 3);
    assert_eq!(cfg.max_call_duration_seconds, 600);
    assert_eq!(cfg.webhook_url.as_deref(), Some(format!("{http}/api/v1/call-results").as_str()));
    assert_eq!(cfg.stt.base_url.as_deref(), Some(s.url("ws").as_str()));
    assert_eq!(cfg.llm.base_url.as_deref(), Some(format!("{http}/v1").as_str()));
    let raw: Value = serde_json::from_slice(&body).unwrap();
    for k in ["re_engagement", "conversation_policy", "post_call_analysis_prompt", "qc_prompt", "auto_dispositions"] {
        assert!(raw[k].is_null() && raw.get(k).is_some(), "{k} is served as null");
    }

    let ok = Some(("X-CXBCore-Secret", "s3cret"));
    let cases = [
        ("missing", 404, "Bot not found"),
        ("closed", 503, "outside_active_hours: 09:00-18:00 Asia/Kolkata"),
        ("deny", 403, ""),
        ("broken", 500, ""),
    ];
    for (bot, status, det) in cases {
        let r = get(bot, ok).await.unwrap();
        assert_eq!(r.status(), status, "{bot}");
        if !det.is_empty() {
            assert_eq!(r.json::<Value>().await.unwrap()["detail"], det);
        }
    }
    assert_eq!(get("garbage-config", ok).await.unwrap().json::<Value>().await.unwrap(), json!({"session_id":5}));
    let v = |bot: &'static str| {
        let g = get(bot, ok);
        async move { g.await.unwrap().json::<Value>().await.unwrap() }
    };
    assert_eq!(v("short-call").await["max_call_duration_seconds"], 8);
    let el = v("demo-elevenlabs").await;
    assert_eq!(
        (el["tts"]["provider"].as_str(), el["tts"]["model"].as_str()),
        (Some("elevenlabs"), Some("eleven_flash_v2_5"))
    );
    assert_eq!(v("stt-down").await["stt"]["base_url"], "ws://127.0.0.1:9");
    assert_eq!(v("llm-down").await["llm"]["base_url"], "http://127.0.0.1:9/v1");
    assert_eq!(v("tts-down").await["tts"]["base_url"], "ws://127.0.0.1:9");
    assert_eq!(v("llm-stall").await["llm"]["model"], "stall");
    assert_eq!(v("llm-500").await["llm"]["model"], "fail-500");
    assert_eq!(v("bad-voice").await["tts"]["voice_id"], "fail-voice");
    assert_eq!(v("stt-badkey").await["stt"]["api_key"], "bad-key");
    let a = v("a").await["session_id"].as_str().unwrap().to_string();
    assert_ne!(a, v("a").await["session_id"].as_str().unwrap());

    let reqs: Value = c.get(format!("{http}/sim/config-requests")).send().await.unwrap().json().await.unwrap();
    let first = &reqs[0];
    assert_eq!(first["bot_id"], "demo");
    assert_eq!(first["status"], 403);
    assert_eq!(first["query"]["connected_event"]["customer_name"], "Test Caller");
    assert_eq!(first["query"]["stream_id"], "st-1");
    assert_eq!(reqs[2]["secret_headers"], json!({"X-CXBCore-Secret": false, "X-CXB-Core-Secret": true}));

    // Config control.
    let ctl = |b: Value| c.post(format!("{http}/sim/control")).json(&b).send();
    assert_eq!(ctl(json!({"config_status": 502})).await.unwrap().status(), 200);
    assert_eq!(get("demo", ok).await.unwrap().status(), 502);
    ctl(json!({"config_status": 200})).await.unwrap();
    assert_eq!(get("demo", ok).await.unwrap().status(), 200);

    // Results.
    let post = |b: Value, secret: bool| {
        let mut r = c.post(format!("{http}/api/v1/call-results")).json(&b);
        if secret {
            r = r.header("X-CXBCore-Secret", "s3cret").header("X-CXB-Core-Secret", "s3cret");
        }
        r.send()
    };
    let good = json!({"session_id":"sess-1","disconnected_by":"bot","call_duration_seconds":3.5,
        "transcript":[{"speaker":"customer","text":"hi","timestamp":"2026-01-01T00:00:00Z"}],"events":[]});
    assert_eq!(post(good.clone(), false).await.unwrap().status(), 403);
    let r = post(good.clone(), true).await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.json::<Value>().await.unwrap(), json!({"status":"ok","session_id":"sess-1"}));
    let mut with_null = good.clone();
    with_null["recording_url"] = Value::Null;
    let r = post(with_null, true).await.unwrap();
    assert_eq!(r.status(), 422);
    assert!(r.json::<Value>().await.unwrap()["detail"].as_str().unwrap().contains("recording_url"));
    let mut bad_enum = good.clone();
    bad_enum["disconnected_by"] = json!("hangup");
    assert_eq!(post(bad_enum, true).await.unwrap().status(), 422);
    ctl(json!({"results_status": 503})).await.unwrap();
    let r = post(good.clone(), true).await.unwrap();
    assert_eq!(r.status(), 503);
    assert_eq!(r.json::<Value>().await.unwrap(), json!({"detail":"injected"}));
    ctl(json!({"results_status": 200})).await.unwrap();
    let mut dup = good.clone();
    dup["call_duration_seconds"] = json!(4.0);
    assert_eq!(post(dup, true).await.unwrap().status(), 200);

    let all: Value = c.get(format!("{http}/sim/results")).send().await.unwrap().json().await.unwrap();
    assert_eq!(all.as_array().unwrap().len(), 2);
    let latest: Value = c.get(format!("{http}/sim/results/sess-1")).send().await.unwrap().json().await.unwrap();
    assert_eq!(latest["call_duration_seconds"], 4.0);
    assert_eq!(c.get(format!("{http}/sim/results/nope")).send().await.unwrap().status(), 404);
    let rej: Value = c.get(format!("{http}/sim/rejections")).send().await.unwrap().json().await.unwrap();
    assert_eq!(rej.as_array().unwrap().iter().filter(|r| r["status"] == 422).count(), 2);
    let stats: Value = c.get(format!("{http}/sim/stats")).send().await.unwrap().json().await.unwrap();
    assert_eq!(stats["results_duplicates"], 1);
    let settings: Value = c.get(format!("{http}/sim/settings")).send().await.unwrap().json().await.unwrap();
    assert_eq!(settings["llm_ttft_ms"], 20);
    assert_eq!(settings["first_sentence_chunks"].as_array().unwrap().len(), 3);
    assert_eq!(c.get(format!("{http}/sim/health")).send().await.unwrap().status(), 200);
    let lines = std::fs::read_to_string(&results_file).unwrap();
    assert_eq!(lines.lines().count(), 2);
    s.shutdown().await;
}
