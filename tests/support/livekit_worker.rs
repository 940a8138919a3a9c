//! The worker running in this process with LiveKit faked: an in-memory room connector in place
//! of the FFI engine and a loopback fake Twirp server as the LiveKit server API. Shared by
//! `tests/livekit.rs` and the LiveKit load benchmark (`examples/livekit_load.rs`).

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use cxb_livekit::room::{Participant, ParticipantKind};
use cxb_livekit::{FakeConnector, FakeRoom};
use serde_json::Value;

use crate::fake_livekit::FakeLiveKitServer;
use crate::{repo_root, Sim, SECRET};

pub const LK_KEY: &str = "APIe2ekey";
pub const LK_SECRET: &str = "e2e-livekit-secret-0123456789abcdef012345";

/// The worker under test, in this process.
pub struct LkWorker {
    pub base: String,
    pub rooms: FakeConnector,
    pub lk: FakeLiveKitServer,
    pub http: reqwest::Client,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    _data: tempfile::TempDir,
}

impl LkWorker {
    pub async fn start(sim: Option<&Sim>, tweak: impl FnOnce(&mut cxb_core::Settings)) -> LkWorker {
        let data = tempfile::tempdir().unwrap();
        let mut settings = cxb_core::Settings::for_tests(data.path().to_path_buf());
        settings.secret = Some(SECRET.into());
        settings.config_url = sim.map(Sim::config_url);
        settings.bots_dir = repo_root().join("assets/bots");
        let lk = FakeLiveKitServer::start(LK_KEY, LK_SECRET).await;
        settings.livekit.livekit_url = Some(lk.url());
        settings.livekit.livekit_api_key = Some(LK_KEY.into());
        settings.livekit.livekit_api_secret = Some(LK_SECRET.into());
        // No FFI engine in this process: the fake connector is put in its place below.
        settings.livekit.ffi_lib = Some(data.path().join("no-such-liblivekit_ffi.so"));
        settings.livekit.hold_audio = repo_root().join("assets/audio/hold-music.wav");
        settings.livekit.dialout_alive_check_ms = 300;
        settings.outbox.outbox_backoff_base_ms = 100;
        tweak(&mut settings);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let rooms = FakeConnector::new();
        let connector = rooms.clone();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        tokio::spawn(cxb_core::serve_with(
            listener,
            settings,
            async move {
                let _ = stopped.await;
            },
            move |state| {
                if let Some(lk) = state.livekit.as_mut() {
                    lk.connector = Arc::new(connector);
                }
            },
        ));
        let w = LkWorker { base, rooms, lk, http: reqwest::Client::new(), stop: Some(stop), _data: data };
        let deadline = Instant::now() + Duration::from_secs(10);
        while w.http.get(format!("{}/health", w.base)).send().await.is_err() {
            assert!(Instant::now() < deadline, "worker did not start");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        w
    }

    pub async fn post(&self, path: &str, body: Value) -> (u16, Value) {
        self.post_with(path, body, Some(SECRET)).await
    }

    pub async fn post_with(&self, path: &str, body: Value, secret: Option<&str>) -> (u16, Value) {
        let mut req = self.http.post(format!("{}{path}", self.base)).json(&body);
        if let Some(s) = secret {
            req = req.header("X-CXB-Core-Secret", s);
        }
        let resp = req.send().await.unwrap();
        let status = resp.status().as_u16();
        (status, resp.json().await.unwrap_or(Value::Null))
    }

    /// Stop the worker as SIGTERM does: it drains, and its server ends once the calls have.
    pub fn begin_stop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
    }

    pub async fn health(&self) -> Value {
        self.http.get(format!("{}/health", self.base)).send().await.unwrap().json().await.unwrap()
    }

    pub async fn wait_idle(&self, timeout: Duration) -> bool {
        super::poll_until(timeout, || async { self.health().await["worker_calls"] == 0 }).await
    }

    pub async fn room(&self) -> FakeRoom {
        self.rooms.next_room(Duration::from_secs(10)).await.expect("the worker joined a room")
    }
}

impl Drop for LkWorker {
    fn drop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
    }
}

pub fn sip_participant(identity: &str, headers: &[(&str, &str)]) -> Participant {
    let mut attributes: BTreeMap<String, String> =
        headers.iter().map(|(k, v)| (format!("sip.h.{k}"), v.to_string())).collect();
    attributes.insert("sip.callStatus".into(), "active".into());
    Participant { identity: identity.into(), kind: ParticipantKind::Sip, attributes }
}

pub fn person(identity: &str) -> Participant {
    Participant { identity: identity.into(), kind: ParticipantKind::Standard, attributes: BTreeMap::new() }
}

/// An 8 kHz caller WAV as 16 kHz samples (linear interpolation is plenty for an energy-based STT
/// double and webrtc-vad).
pub fn caller_audio_16k(path: &Path) -> Vec<i16> {
    let mut r = hound::WavReader::open(path).unwrap();
    let s: Vec<i16> = r.samples::<i16>().map(Result::unwrap).collect();
    let mut out = Vec::with_capacity(s.len() * 2);
    for (i, &x) in s.iter().enumerate() {
        let next = s.get(i + 1).copied().unwrap_or(x);
        out.push(x);
        out.push(((x as i32 + next as i32) / 2) as i16);
    }
    out
}

/// Stream audio as the caller, in real time, 20 ms frames, then `trail_ms` of silence.
pub async fn say(room: &FakeRoom, identity: &str, pcm: &[i16], trail_ms: u64) {
    let frame = 320;
    let start = tokio::time::Instant::now();
    let mut n = 0u32;
    let silence = vec![0i16; frame];
    let total = pcm.len().div_ceil(frame) + (trail_ms / 20) as usize;
    for i in 0..total {
        let chunk = pcm.get(i * frame..((i + 1) * frame).min(pcm.len())).filter(|c| !c.is_empty());
        let mut f = chunk.map(<[i16]>::to_vec).unwrap_or_else(|| silence.clone());
        f.resize(frame, 0);
        if room.audio(identity, f).await.is_err() {
            return;
        }
        n += 1;
        tokio::time::sleep_until(start + Duration::from_millis(20) * n).await;
    }
}

/// Silence from the caller until the bot has published at least `samples` more samples.
pub async fn until_bot_spoke(room: &FakeRoom, identity: &str, samples: u64, timeout: Duration) -> bool {
    let target = room.captured_sample_count() + samples;
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if room.captured_sample_count() >= target {
            return true;
        }
        say(room, identity, &[], 100).await;
    }
    false
}
