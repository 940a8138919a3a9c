//! A real call through a real LiveKit server (opt-in; no server can be installed on CI):
//!
//! ```sh
//! docker compose -f deploy/livekit/docker-compose.yml up -d     # or: livekit-server --dev
//! scripts/fetch-livekit-ffi.sh
//! LIVEKIT_URL=ws://localhost:7880 LIVEKIT_API_KEY=devkey LIVEKIT_API_SECRET=secret \
//!   cargo test -p cxb-e2e --test livekit_real -- --ignored
//! ```
//!
//! The worker runs in this process with LiveKit's FFI engine; the test joins the same room as a
//! browser user (also through the FFI engine), asks for the bot with `POST /livekit/widget`,
//! hears the greeting, speaks a scripted turn, hears the answer, and leaves.

use std::time::{Duration, Instant};

use cxb_e2e::livekit_worker::caller_audio_16k;
use cxb_e2e::{repo_root, Sim, SECRET};
use cxb_livekit::room::{JoinRequest, RoomConnector, RoomEvent, RoomHandle};
use cxb_livekit::{JoinGrant, TokenIssuer};
use serde_json::json;

/// Samples the bot published that reached the user within `timeout`.
async fn bot_audio(user: &mut RoomHandle, samples: usize, timeout: Duration) -> usize {
    let deadline = tokio::time::Instant::now() + timeout;
    let mut got = 0;
    while got < samples {
        match tokio::time::timeout_at(deadline, user.events.recv()).await {
            Ok(Some(RoomEvent::Audio { identity, pcm })) if identity.starts_with("cxb-bot-") => {
                got += pcm.iter().filter(|s| s.unsigned_abs() > 200).count().min(pcm.len());
            }
            Ok(Some(_)) => {}
            _ => break,
        }
    }
    got
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs a LiveKit server: LIVEKIT_URL, LIVEKIT_API_KEY, LIVEKIT_API_SECRET"]
async fn a_widget_call_through_a_real_livekit_server() {
    let (Ok(url), Ok(key), Ok(secret)) =
        (std::env::var("LIVEKIT_URL"), std::env::var("LIVEKIT_API_KEY"), std::env::var("LIVEKIT_API_SECRET"))
    else {
        panic!("set LIVEKIT_URL, LIVEKIT_API_KEY and LIVEKIT_API_SECRET");
    };
    let sim = Sim::start(&[]).await;
    let data = tempfile::tempdir().unwrap();
    let mut settings = cxb_core::Settings::for_tests(data.path().to_path_buf());
    settings.secret = Some(SECRET.into());
    settings.config_url = Some(sim.config_url());
    settings.bots_dir = repo_root().join("assets/bots");
    settings.livekit.livekit_url = Some(url.clone());
    settings.livekit.livekit_api_key = Some(key.clone());
    settings.livekit.livekit_api_secret = Some(secret.clone());
    settings.livekit.ffi_lib = Some(repo_root().join("target/livekit-ffi/liblivekit_ffi.so"));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let (_stop, stopped) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(cxb_core::serve_with(
        listener,
        settings,
        async move {
            let _ = stopped.await;
        },
        |_| {},
    ));
    tokio::time::sleep(Duration::from_millis(300)).await;

    // The browser user joins first.
    let room = format!("widget-demo-{}", std::process::id());
    let engine = cxb_livekit_ffi::FfiEngine::load(repo_root().join("target/livekit-ffi/liblivekit_ffi.so"))
        .expect("run scripts/fetch-livekit-ffi.sh first");
    let connector = cxb_livekit_ffi::FfiConnector::new(engine);
    let token =
        TokenIssuer::new(&key, &secret).unwrap().join_token(&JoinGrant::bot(room.clone(), "browser-user")).unwrap();
    let request = JoinRequest {
        url,
        token,
        room_name: room.clone(),
        identity: "browser-user".into(),
        sample_rate: 16_000,
        num_channels: 1,
    };
    let mut user = connector.connect(request).await.expect("the user joined");

    let resp = reqwest::Client::new()
        .post(format!("{base}/livekit/widget"))
        .header("X-CXB-Core-Secret", SECRET)
        .json(&json!({"bot_id": "demo", "room_name": room}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 200);
    assert!(bot_audio(&mut user, 8_000, Duration::from_secs(20)).await >= 8_000, "no greeting reached the user");

    // Say the first scripted turn in real time, then listen for the answer.
    let speech = caller_audio_16k(&repo_root().join("assets/audio/caller-1.wav"));
    let start = Instant::now();
    for (i, frame) in speech.chunks(320).chain(std::iter::repeat_n(&[0i16; 320][..], 50)).enumerate() {
        let mut f = frame.to_vec();
        f.resize(320, 0);
        let _ = user.media.capture_frame(&f);
        let due = start + Duration::from_millis(20 * (i as u64 + 1));
        tokio::time::sleep(due.saturating_duration_since(Instant::now())).await;
    }
    assert!(bot_audio(&mut user, 8_000, Duration::from_secs(20)).await >= 8_000, "no answer reached the user");
    user.media.disconnect();

    let results = sim.wait_results(1, Duration::from_secs(30)).await;
    assert_eq!(results.len(), 1);
    let r = &results[0];
    assert_eq!(r["transport"], "widget");
    assert_eq!(r["disconnected_by"], "customer");
    assert!(r["transcript"].as_array().unwrap().iter().any(|l| l["speaker"] == "customer"), "{r}");
}
