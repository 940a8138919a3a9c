//! The Soniox, Sarvam and Aura doubles over real sockets: driven by the worker's own provider
//! clients (what a call does), and by raw sockets where the point is the double's strictness.

use std::time::Duration;

use cxb_providers::stt::{self, SttEvent, SttParams};
use cxb_providers::tts::{self, TtsEvent, TtsParams};
use cxb_sim::audio::{samples_for_ms, text_duration_ms, SpeechSynth};
use cxb_sim::{start, ServeOptions, SimServer};
use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::{self, Message};

type Raw = tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

const WAIT: Duration = Duration::from_secs(5);

async fn sim(f: impl FnOnce(&mut ServeOptions)) -> SimServer {
    let mut o = ServeOptions { stt_latency_ms: 30, tts_ttfb_ms: 20, ..ServeOptions::default() };
    f(&mut o);
    start(o).await.expect("sim starts")
}

async fn get_json(s: &SimServer, path: &str) -> Value {
    reqwest::get(format!("{}{path}", s.url("http"))).await.unwrap().json().await.unwrap()
}

/// Caller audio: `speech_ms` of tone then `silence_ms` of silence, at 8 kHz.
fn utterance(speech_ms: u64, silence_ms: u64) -> Vec<i16> {
    let mut pcm = Vec::new();
    SpeechSynth::new(8000).render(samples_for_ms(8000, speech_ms), &mut pcm);
    pcm.resize(pcm.len() + samples_for_ms(8000, silence_ms), 0);
    pcm
}

fn stt_params(s: &SimServer, provider: &str, model: &str, extra: Value) -> SttParams {
    SttParams {
        provider: provider.into(),
        base_url: s.url("ws"),
        api_key: "sim-key".into(),
        model: model.into(),
        language: "hi".into(),
        sample_rate: 8000,
        extra: extra.as_object().cloned().unwrap_or_default(),
        connect_timeout: WAIT,
    }
}

fn tts_params(s: &SimServer, provider: &str, model: &str, voice: &str, extra: Value) -> TtsParams {
    TtsParams {
        provider: provider.into(),
        base_url: s.url("ws"),
        api_key: "sim-key".into(),
        model: model.into(),
        voice_id: voice.into(),
        language: Some("hi".into()),
        sample_rate: 8000,
        extra: extra.as_object().cloned().unwrap_or_default(),
        connect_timeout: WAIT,
    }
}

async fn next<T>(rx: &mut mpsc::Receiver<T>) -> T {
    tokio::time::timeout(WAIT, rx.recv()).await.expect("no event in time").expect("event channel closed")
}

/// Events until (and including) the first that `stop` accepts.
async fn until<T: std::fmt::Debug>(rx: &mut mpsc::Receiver<T>, stop: impl Fn(&T) -> bool) -> Vec<T> {
    let mut seen = Vec::new();
    loop {
        let ev = next(rx).await;
        let done = stop(&ev);
        seen.push(ev);
        if done {
            return seen;
        }
    }
}

fn finals(events: &[SttEvent]) -> Vec<(String, bool, bool)> {
    events
        .iter()
        .filter_map(|e| match e {
            SttEvent::Transcript(t) if t.is_final => Some((t.text.clone(), t.speech_final, t.from_finalize)),
            _ => None,
        })
        .collect()
}

/// A raw WebSocket: Ok(socket) or the HTTP status the upgrade was refused with.
async fn raw(url: String, headers: &[(&'static str, &str)]) -> Result<Raw, u16> {
    let mut request = url.into_client_request().unwrap();
    for (name, value) in headers {
        request.headers_mut().insert(*name, value.parse().unwrap());
    }
    match tokio_tungstenite::connect_async(request).await {
        Ok((ws, _)) => Ok(ws),
        Err(tungstenite::Error::Http(response)) => Err(response.status().as_u16()),
        Err(e) => panic!("connect failed: {e}"),
    }
}

/// The server's text messages up to its close frame, and the close code.
async fn drain(ws: &mut Raw) -> (Vec<Value>, Option<u16>) {
    let mut texts = Vec::new();
    loop {
        match tokio::time::timeout(WAIT, ws.next()).await.expect("server went quiet") {
            Some(Ok(Message::Text(t))) => texts.push(serde_json::from_str(t.as_str()).unwrap()),
            Some(Ok(Message::Close(frame))) => return (texts, frame.map(|f| u16::from(f.code))),
            Some(Ok(_)) => {}
            None | Some(Err(_)) => return (texts, None),
        }
    }
}

async fn send(ws: &mut Raw, v: Value) {
    ws.send(Message::text(v.to_string())).await.unwrap();
}

// ---------------------------------------------------------------- Soniox

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn soniox_double_with_the_real_client() {
    let s = sim(|_| {}).await;
    let (handle, mut events) = stt::connect(&stt_params(&s, "soniox", "stt-rt-v4", json!({}))).await.unwrap();
    handle.send_audio(&utterance(1000, 400)).unwrap();
    let seen = until(&mut events, |e| *e == SttEvent::UtteranceEnd).await;
    assert_eq!(seen[0], SttEvent::SpeechStarted);
    let interims: Vec<String> = seen
        .iter()
        .filter_map(|e| match e {
            SttEvent::Transcript(t) if !t.is_final => Some(t.text.clone()),
            _ => None,
        })
        .collect();
    assert_eq!(interims.first().map(String::as_str), Some("I"), "{interims:?}");
    assert!(interims.windows(2).all(|w| w[1].starts_with(&w[0])), "interims grow: {interims:?}");
    // Soniox's endpoint (`<end>`) closes the turn with one whole-utterance final.
    assert_eq!(finals(&seen), [("I want to check my order status".to_string(), true, false)]);
    handle.close();
    until(&mut events, |e| *e == SttEvent::Closed).await;

    // Our VAD decides instead: endpoint detection off, `finalize` answered with `<fin>`.
    let extra = json!({"vad_force_turn_endpoint": true});
    let (handle, mut events) = stt::connect(&stt_params(&s, "soniox", "stt-rt-v5", extra)).await.unwrap();
    handle.send_audio(&utterance(600, 0)).unwrap();
    until(&mut events, |e| matches!(e, SttEvent::Transcript(_))).await;
    handle.finalize();
    let seen = until(&mut events, |e| matches!(e, SttEvent::Transcript(t) if t.is_final)).await;
    assert_eq!(finals(&seen), [("I want to check my order status".to_string(), false, true)]);
    assert_eq!(get_json(&s, "/sim/stats").await["soniox_connections"], 2);
    s.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn soniox_double_is_strict() {
    let s = sim(|o| o.stt_idle_timeout = Duration::from_millis(200)).await;
    let url = format!("{}/transcribe-websocket", s.url("ws"));
    assert_eq!(raw(url.clone(), &[("authorization", "Bearer bad-key")]).await.err(), Some(401));
    let config = json!({"model":"stt-rt-v4","audio_format":"pcm_s16le","sample_rate":8000,"num_channels":1});
    let cases = [
        (None, json!({"sample_rate": "8000"}), 400),
        (None, json!({"enable_endpoint_detection": 1}), 400),
        (None, json!({"model": "stt-rt-v9"}), 400),
        (Some("Bearer k"), json!({"api_key": "k"}), 400),
        (None, json!({"api_key": null}), 401),
    ];
    for (auth, change, code) in cases {
        let headers: Vec<(&str, &str)> = auth.map(|a| ("authorization", a)).into_iter().collect();
        let mut ws = raw(url.clone(), &headers).await.unwrap();
        let mut c = config.clone();
        for (k, v) in change.as_object().unwrap() {
            c[k] = v.clone();
        }
        if auth.is_none() && c.get("api_key").is_none() {
            c["api_key"] = json!("k");
        }
        send(&mut ws, c).await;
        let (texts, close) = drain(&mut ws).await;
        assert_eq!(texts.len(), 1, "{change}: {texts:?}");
        assert_eq!(texts[0]["error_code"], code, "{change}: {texts:?}");
        assert!(texts[0]["error_message"].is_string());
        assert_eq!(close, Some(1000));
    }
    // Neither audio nor keepalive: 408 after twice the configured idle timeout.
    let mut ws = raw(url, &[("authorization", "Bearer k")]).await.unwrap();
    send(&mut ws, config).await;
    send(&mut ws, json!({"type": "keepalive"})).await;
    let (texts, _) = drain(&mut ws).await;
    assert_eq!(
        texts,
        [json!({"error_code": 408, "error_message": "Request timeout: no audio or keepalive received."})]
    );
    s.shutdown().await;
}

// ---------------------------------------------------------------- Sarvam STT

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sarvam_stt_double_with_the_real_client() {
    let s = sim(|o| o.stt_latency_ms = 2000).await;
    let (handle, mut events) = stt::connect(&stt_params(&s, "sarvam", "saaras:v3", json!({}))).await.unwrap();
    handle.send_audio(&utterance(800, 400)).unwrap();
    assert_eq!(next(&mut events).await, SttEvent::SpeechStarted);
    // The transcript is held for the 2 s latency; our VAD's flush gets it at once.
    handle.finalize();
    let seen = until(&mut events, |e| *e == SttEvent::UtteranceEnd).await;
    assert_eq!(finals(&seen), [("I want to check my order status".to_string(), true, true)]);
    assert_eq!(get_json(&s, "/sim/stats").await["sarvam_stt_connections"], 1);
    handle.close();
    until(&mut events, |e| *e == SttEvent::Closed).await;
    s.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sarvam_stt_double_is_strict() {
    let s = sim(|_| {}).await;
    let base = format!("{}/speech-to-text/ws", s.url("ws"));
    let key = [("api-subscription-key", "k")];
    assert_eq!(raw(format!("{base}?language-code=hi-IN"), &[]).await.err(), Some(401));
    assert_eq!(raw(format!("{base}?language_code=hi-IN"), &key).await.err(), Some(400));
    assert_eq!(raw(format!("{base}?sample_rate=44100"), &key).await.err(), Some(400));
    let mut ws = raw(format!("{base}?language-code=hi-IN&sample_rate=8000"), &key).await.unwrap();
    send(&mut ws, json!({"audio": {"data": "AAAA", "sample_rate": 8000, "encoding": "audio/pcm"}})).await;
    let (texts, close) = drain(&mut ws).await;
    assert_eq!(texts[0]["type"], "error");
    assert!(texts[0]["data"]["error"].as_str().unwrap().contains("audio/wav"), "{texts:?}");
    assert_eq!(close, Some(1008));
    s.shutdown().await;
}

// ---------------------------------------------------------------- Sarvam TTS

/// Barge-in on the real client: the double sees the interrupted socket closed mid-utterance,
/// and the next reply's text arrive on a socket configured before that close (the warm spare).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sarvam_tts_barge_in_with_the_real_client() {
    let s = sim(|_| {}).await;
    let (handle, mut events) =
        tts::connect(&tts_params(&s, "sarvam", "bulbul:v2", "anushka", json!({}))).await.unwrap();
    handle.speak("t1", &"यह एक लंबा उत्तर है। ".repeat(10)).unwrap();
    handle.flush("t1").unwrap();
    let first = next(&mut events).await;
    assert!(matches!(&first, TtsEvent::Audio { context_id, .. } if context_id == "t1"), "{first:?}");
    handle.cancel("t1").unwrap();
    handle.speak("t2", "जी हाँ। ").unwrap();
    handle.flush("t2").unwrap();
    let seen = until(&mut events, |e| matches!(e, TtsEvent::Done { .. })).await;
    let samples: usize = seen
        .iter()
        .map(|e| match e {
            TtsEvent::Audio { context_id, pcm } if context_id == "t2" => pcm.len(),
            // t1 chunks already queued to us before the cancel (the drop after it is tested
            // against a scripted server in cxb-providers).
            _ => 0,
        })
        .sum();
    assert_eq!(samples, samples_for_ms(8000, text_duration_ms("जी हाँ। ")));
    assert_eq!(seen.last(), Some(&TtsEvent::Done { context_id: "t2".into() }));

    let stats = get_json(&s, "/sim/stats").await;
    assert_eq!(stats["sarvam_tts_closed_mid_utterance"], 1, "{stats}");
    let log = get_json(&s, "/sim/sarvam-tts").await;
    let conns = log.as_array().unwrap();
    let interrupted = conns.iter().find(|c| c["closed_mid_utterance"] == true).expect("an interrupted socket");
    let cut_at = interrupted["closed_ms"].as_u64().unwrap();
    let next_reply = conns.iter().find(|c| c["id"] != interrupted["id"] && c["first_text_ms"].is_u64()).unwrap();
    assert!(next_reply["configured_ms"].as_u64().unwrap() <= cut_at, "spare configured before the barge-in: {log}");
    // connect() opened the first socket, starting t1 opened the spare, starting t2 the next,
    // which now waits for the next reply.
    assert_eq!(stats["sarvam_tts_connections"], 3, "{stats}");
    assert_eq!(stats["sarvam_tts_spares_waiting"], 1, "{stats}");
    assert_eq!(get_json(&s, "/sim/timings").await["tts_ttfb_ms"]["count"], 2);
    s.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sarvam_tts_double_is_strict() {
    let s = sim(|_| {}).await;
    let url = format!("{}/text-to-speech/ws?model=bulbul:v2&send_completion_event=true", s.url("ws"));
    assert_eq!(raw(url.clone(), &[]).await.err(), Some(401));
    assert_eq!(raw(url.clone(), &[("api-subscription-key", "bad-key")]).await.err(), Some(403));
    let config = |speaker: &str| {
        json!({"type":"config","data":{"target_language_code":"hi-IN","speaker":speaker,
            "speech_sample_rate":8000,"output_audio_codec":"linear16"}})
    };
    for first in [config("Anushka"), json!({"type":"text","data":{"text":"hi"}})] {
        let mut ws = raw(url.clone(), &[("api-subscription-key", "k")]).await.unwrap();
        send(&mut ws, first.clone()).await;
        let (texts, close) = drain(&mut ws).await;
        assert_eq!(
            (texts[0]["type"].as_str(), texts[0]["data"]["code"].as_u64()),
            (Some("error"), Some(400)),
            "{first}"
        );
        assert_eq!(close, Some(1008));
    }
    // A well-formed exchange: audio chunks, then the completion event after the flush.
    let mut ws = raw(url, &[("api-subscription-key", "k")]).await.unwrap();
    send(&mut ws, config("anushka")).await;
    send(&mut ws, json!({"type":"text","data":{"text":"नमस्ते"}})).await;
    send(&mut ws, json!({"type":"flush"})).await;
    let mut kinds = Vec::new();
    while kinds.last() != Some(&"event".to_string()) {
        let Some(Ok(Message::Text(t))) = tokio::time::timeout(WAIT, ws.next()).await.unwrap() else { panic!() };
        let v: Value = serde_json::from_str(t.as_str()).unwrap();
        if v["type"] == "audio" {
            assert_eq!(v["data"]["content_type"], "audio/pcm");
        } else {
            assert_eq!(v["data"]["event_type"], "final");
        }
        kinds.push(v["type"].as_str().unwrap().to_string());
    }
    assert!(kinds.len() >= 2 && kinds[..kinds.len() - 1].iter().all(|k| k == "audio"), "{kinds:?}");
    s.shutdown().await;
}

// ---------------------------------------------------------------- Aura

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn aura_double_with_the_real_client() {
    let s = sim(|_| {}).await;
    let (handle, mut events) =
        tts::connect(&tts_params(&s, "deepgram", "aura-2-thalia-en", "", json!({}))).await.unwrap();
    handle.speak("t1", "Your policy renews soon. ").unwrap();
    handle.flush("t1").unwrap();
    let seen = until(&mut events, |e| matches!(e, TtsEvent::Done { .. })).await;
    let samples: usize = seen.iter().map(|e| if let TtsEvent::Audio { pcm, .. } = e { pcm.len() } else { 0 }).sum();
    assert_eq!(samples, samples_for_ms(8000, text_duration_ms("Your policy renews soon. ")));

    // Barge-in: Clear; the next context's audio is its own.
    handle.speak("t2", &"A very long answer that goes on. ".repeat(10)).unwrap();
    handle.flush("t2").unwrap();
    assert!(matches!(next(&mut events).await, TtsEvent::Audio { context_id, .. } if context_id == "t2"));
    handle.cancel("t2").unwrap();
    handle.speak("t3", "Sure. ").unwrap();
    handle.flush("t3").unwrap();
    let seen = until(&mut events, |e| matches!(e, TtsEvent::Done { .. })).await;
    let t3: usize = seen
        .iter()
        .map(|e| match e {
            TtsEvent::Audio { context_id, pcm } if context_id == "t3" => pcm.len(),
            // t2 frames already queued to us before the cancel.
            _ => 0,
        })
        .sum();
    assert_eq!(t3, samples_for_ms(8000, text_duration_ms("Sure. ")));
    assert_eq!(seen.last(), Some(&TtsEvent::Done { context_id: "t3".into() }));
    let stats = get_json(&s, "/sim/stats").await;
    assert_eq!((stats["aura_connections"].as_u64(), stats["aura_clears"].as_u64()), (Some(1), Some(1)), "{stats}");
    s.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn aura_double_is_strict_and_limits_flushes() {
    let s = sim(|o| o.tts_ttfb_ms = 0).await;
    let base = format!("{}/v1/speak", s.url("ws"));
    let auth = [("authorization", "Token k")];
    assert_eq!(raw(format!("{base}?model=aura-2-thalia-en"), &[]).await.err(), Some(401));
    assert_eq!(raw(format!("{base}?model=aura-2-thalia-en&sample_rate=22050"), &auth).await.err(), Some(400));
    let mut ws = raw(format!("{base}?model=aura-2-thalia-en&encoding=linear16&sample_rate=8000"), &auth).await.unwrap();
    for _ in 0..21 {
        send(&mut ws, json!({"type": "Flush"})).await;
    }
    send(&mut ws, json!({"type": "Close"})).await;
    let (texts, close) = drain(&mut ws).await;
    let count = |t: &str| texts.iter().filter(|v| v["type"] == t).count();
    assert_eq!((count("Metadata"), count("Flushed"), count("Warning")), (1, 20, 1), "{texts:?}");
    let warning: &Value = texts.iter().find(|v| v["type"] == "Warning").unwrap();
    assert!(warning["description"].is_string() && warning["code"].is_string());
    assert_eq!(close, Some(1000));
    let mut ws = raw(format!("{base}?model=aura-2-thalia-en&sample_rate=8000"), &auth).await.unwrap();
    ws.send(Message::text("not json")).await.unwrap();
    assert_eq!(drain(&mut ws).await.1, Some(1008));
    s.shutdown().await;
}

// ---------------------------------------------------------------- fake API

/// The Indian-language demo bots point their speech blocks at these doubles, and the worker's
/// own config types read them.
#[tokio::test]
async fn speech_demo_bots_are_served() {
    let s = sim(|_| {}).await;
    let config = |bot: &'static str| {
        let url = format!("{}/api/v1/config/{bot}?caller_id=1&stream_id=s&connected_event=%7B%7D", s.url("http"));
        async move { reqwest::get(url).await.unwrap().bytes().await.unwrap() }
    };
    let hindi = cxb_wire::config::BotConfig::from_json(&config("demo-hindi").await).unwrap();
    assert_eq!((hindi.stt.provider.as_str(), hindi.tts.provider.as_str()), ("soniox", "sarvam"));
    assert_eq!(hindi.tts.voice_id.as_deref(), Some("anushka"));
    assert_eq!(hindi.stt.base_url.as_deref(), Some(s.url("ws").as_str()));
    let sarvam = cxb_wire::config::BotConfig::from_json(&config("demo-sarvam").await).unwrap();
    assert_eq!((sarvam.stt.provider.as_str(), sarvam.stt.model.as_deref()), ("sarvam", Some("saaras:v3")));
    let aura = cxb_wire::config::BotConfig::from_json(&config("demo-aura").await).unwrap();
    assert_eq!((aura.tts.provider.as_str(), aura.tts.model.as_deref()), ("deepgram", Some("aura-2-thalia-en")));
    s.shutdown().await;
}
