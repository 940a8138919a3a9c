//! End-to-end test support: start the real `cxb-core` binary and the `cxb-sim` doubles on
//! 127.0.0.1, talk to them over real sockets, and stop them when the test ends.
//!
//! The binaries are built by `cargo build --workspace --bins` (the README's test command does
//! it first); they are found next to the test executable's target directory.

pub mod fake_livekit;
pub mod livekit_worker;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::Message;

pub const SECRET: &str = "e2e-secret";

/// The workspace root (assets/ paths are relative to it).
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("tests/ has a parent").to_path_buf()
}

/// Path of a workspace binary in the same target profile as this test.
pub fn bin(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("current exe");
    let profile_dir = exe.parent().and_then(Path::parent).expect("target/<profile>/deps/<test>");
    let p = profile_dir.join(name);
    assert!(p.exists(), "{} is missing: run `cargo build --workspace --bins` first", p.display());
    p
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").expect("bind").local_addr().expect("addr").port()
}

/// A child process killed on drop.
pub struct Proc {
    child: Child,
    pub log: PathBuf,
}

impl Proc {
    pub fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }
    /// SIGTERM, as a deploy stops the process.
    pub fn sigterm(&self) {
        let status = Command::new("kill").args(["-TERM", &self.child.id().to_string()]).status().expect("kill runs");
        assert!(status.success(), "SIGTERM not delivered");
    }
    /// Wait until the process has exited (polling every 20 ms); its status, or `None` if it is
    /// still running after `timeout`.
    pub async fn wait_exit(&mut self, timeout: Duration) -> Option<std::process::ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Some(status);
            }
            if Instant::now() >= deadline {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill9();
    }
}

fn spawn(bin_name: &str, args: &[&str], envs: &[(&str, String)], log: PathBuf) -> Proc {
    let out = std::fs::File::create(&log).expect("log file");
    let err = out.try_clone().expect("dup");
    let mut cmd = Command::new(bin(bin_name));
    cmd.args(args).current_dir(repo_root()).stdout(Stdio::from(out)).stderr(Stdio::from(err)).env("RUST_LOG", "info");
    for (k, v) in envs {
        cmd.env(k, v);
    }
    Proc { child: cmd.spawn().expect("spawn"), log }
}

/// The provider doubles and fake CXB API.
pub struct Sim {
    pub proc: Proc,
    pub addr: String,
    pub dir: tempfile::TempDir,
    http: reqwest::Client,
}

impl Sim {
    pub async fn start(extra: &[&str]) -> Sim {
        let dir = tempfile::tempdir().expect("tempdir");
        let addr_file = dir.path().join("addr");
        let addr_arg = addr_file.to_string_lossy().to_string();
        let mut args = vec!["serve", "--listen", "127.0.0.1:0", "--addr-file", addr_arg.as_str(), "--secret", SECRET];
        args.extend_from_slice(extra);
        let proc = spawn("cxb-sim", &args, &[], dir.path().join("sim.log"));
        let deadline = Instant::now() + Duration::from_secs(20);
        let addr = loop {
            if let Ok(a) = std::fs::read_to_string(&addr_file) {
                if !a.trim().is_empty() {
                    break a.trim().to_string();
                }
            }
            assert!(Instant::now() < deadline, "cxb-sim did not start: {}", proc.log_text());
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        Sim { proc, addr, dir, http: reqwest::Client::new() }
    }

    pub fn config_url(&self) -> String {
        format!("http://{}/api/v1/config", self.addr)
    }

    pub async fn get(&self, path: &str) -> Value {
        self.http
            .get(format!("http://{}{path}", self.addr))
            .send()
            .await
            .expect("sim reachable")
            .json()
            .await
            .expect("json")
    }

    pub async fn control(&self, body: Value) {
        let r = self
            .http
            .post(format!("http://{}/sim/control", self.addr))
            .json(&body)
            .send()
            .await
            .expect("sim reachable");
        assert!(r.status().is_success());
    }

    /// Every result received so far — each one validated against proto/results.schema.json.
    pub async fn results(&self) -> Vec<Value> {
        let results = self.get("/sim/results").await.as_array().cloned().unwrap_or_default();
        for r in &results {
            assert_valid_result(r);
        }
        results
    }

    /// Wait until at least `n` results have arrived.
    pub async fn wait_results(&self, n: usize, timeout: Duration) -> Vec<Value> {
        let deadline = Instant::now() + timeout;
        loop {
            let r = self.results().await;
            if r.len() >= n || Instant::now() > deadline {
                return r;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

/// cxb-sim serving `assets/sim/script.json` as changed by `edit` (rules, per-bot config
/// overrides under `bots`, SIP number maps, ...). Keep the returned directory alive.
pub async fn sim_with_script(edit: impl FnOnce(&mut Value)) -> (Sim, tempfile::TempDir) {
    let mut script: Value =
        serde_json::from_str(&std::fs::read_to_string(repo_root().join("assets/sim/script.json")).expect("script"))
            .expect("script is JSON");
    edit(&mut script);
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("script.json");
    std::fs::write(&path, script.to_string()).expect("write script");
    let sim = Sim::start(&["--script", path.to_str().expect("utf-8 path")]).await;
    (sim, dir)
}

/// The worker under test.
pub struct Worker {
    pub proc: Proc,
    pub addr: String,
    /// The worker's data dir (results/, outbox/, recordings/).
    pub data_path: PathBuf,
    _data: Option<tempfile::TempDir>,
    http: reqwest::Client,
}

impl Worker {
    /// Start `cxb-core` pointed at `sim`'s config endpoint (or the embedded default when
    /// `sim` is None), with extra env settings.
    pub async fn start(sim: Option<&Sim>, envs: &[(&str, &str)]) -> Worker {
        let data = tempfile::tempdir().expect("tempdir");
        Self::start_in(sim, envs, data).await
    }

    pub async fn start_in(sim: Option<&Sim>, envs: &[(&str, &str)], data: tempfile::TempDir) -> Worker {
        let path = data.path().to_path_buf();
        let mut w = Self::start_at(sim, envs, &path).await;
        w._data = Some(data);
        w
    }

    /// Start on an existing data dir that outlives the worker (restart tests).
    pub async fn start_at(sim: Option<&Sim>, envs: &[(&str, &str)], data_path: &Path) -> Worker {
        let port = free_port();
        let addr = format!("127.0.0.1:{port}");
        let mut env: Vec<(&str, String)> = vec![
            ("LISTEN_ADDR", addr.clone()),
            ("CXBCORE_DATA_DIR", data_path.to_string_lossy().to_string()),
            ("CXBCORE_SECRET", SECRET.to_string()),
            ("CXBCORE_DRAIN_SECS", "2".to_string()),
        ];
        if let Some(sim) = sim {
            env.push(("CXB_API_CONFIG_URL", sim.config_url()));
        }
        for (k, v) in envs {
            env.push((k, v.to_string()));
        }
        let log = data_path.join(format!("worker-{port}.log"));
        let proc = spawn("cxb-core", &[], &env, log);
        let w = Worker { proc, addr, data_path: data_path.to_path_buf(), _data: None, http: reqwest::Client::new() };
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if w.http.get(format!("http://{}/health", w.addr)).send().await.is_ok() {
                break;
            }
            assert!(Instant::now() < deadline, "cxb-core did not start: {}", w.proc.log_text());
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        w
    }

    /// GET an admin route with the secret.
    pub async fn admin(&self, path: &str) -> Value {
        self.http
            .get(format!("http://{}{path}", self.addr))
            .header("X-CXBCore-Secret", SECRET)
            .send()
            .await
            .expect("admin reachable")
            .json()
            .await
            .expect("json")
    }

    pub fn ws_url(&self, bot: &str) -> String {
        format!("ws://{}/ws/{bot}", self.addr)
    }

    pub async fn health(&self) -> Value {
        self.http.get(format!("http://{}/health", self.addr)).send().await.expect("health").json().await.expect("json")
    }

    pub async fn get_text(&self, path: &str) -> (u16, String) {
        let r = self.http.get(format!("http://{}{path}", self.addr)).send().await.expect("reachable");
        (r.status().as_u16(), r.text().await.unwrap_or_default())
    }

    /// Wait until the worker holds no call slot.
    pub async fn wait_idle(&self, timeout: Duration) -> bool {
        poll_until(timeout, || async { self.health().await["worker_calls"] == 0 }).await
    }

    pub fn log_text(&self) -> String {
        self.proc.log_text()
    }
}

/// Run `cxb-sim dial` against the worker and return its JSON summary.
pub async fn dial(worker: &Worker, sim: &Sim, bot: &str, scenario: &str, calls: usize) -> Value {
    dial_url(&worker.ws_url(bot), sim, scenario, calls).await
}

/// Run `cxb-sim dial` against a call route (`ws://…/ws/{bot}`) and return its JSON summary.
/// Dropping the future kills the dialler (its calls vanish with it).
pub async fn dial_url(url: &str, sim: &Sim, scenario: &str, calls: usize) -> Value {
    let out = sim.dir.path().join(format!("dial-{}.json", free_port()));
    let status = tokio::process::Command::new(bin("cxb-sim"))
        .current_dir(repo_root())
        .kill_on_drop(true)
        .args([
            "dial",
            "--url",
            url,
            "--calls",
            &calls.to_string(),
            "--concurrency",
            &calls.to_string(),
            "--scenario",
            scenario,
            "--sim-url",
            &format!("http://{}", sim.addr),
            "--out",
            &out.to_string_lossy(),
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .await
        .expect("dial runs");
    assert!(status.success() || out.exists(), "dial failed to run");
    serde_json::from_slice(&std::fs::read(&out).expect("summary written")).expect("summary json")
}

pub type Ws = tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// A hand-driven dialler connection for protocol tests.
pub struct RawCall {
    pub ws: Ws,
}

/// How a raw call's socket ended.
#[derive(Debug, Clone, PartialEq)]
pub struct Closed {
    pub code: Option<u16>,
    pub reason: String,
    /// Bot frames seen before the close, by `event`.
    pub events: Vec<String>,
}

impl RawCall {
    pub async fn connect(url: &str) -> Result<RawCall, tokio_tungstenite::tungstenite::Error> {
        let (ws, _) = tokio_tungstenite::connect_async(url).await?;
        Ok(RawCall { ws })
    }

    pub async fn send(&mut self, v: Value) {
        self.ws.send(Message::Text(v.to_string().into())).await.expect("send");
    }

    pub async fn send_raw(&mut self, m: Message) -> bool {
        self.ws.send(m).await.is_ok()
    }

    pub async fn handshake(&mut self, stream_id: &str) {
        self.send(json!({"event":"connected","callerId":"+919800000001","did":"+911140000000","callDirection":"incoming","streamId":stream_id})).await;
        self.send(json!({"event":"start","streamId":stream_id,"mediaFormat":{"encoding":"LINEAR","sampleRate":8000,"channels":1}})).await;
        self.send(json!({"event":"answer"})).await;
    }

    /// Play a caller WAV (8 kHz mono 16-bit, under `assets/`) as 20 ms media frames in real time;
    /// false when the socket closed first.
    pub async fn say(&mut self, wav: &str) -> bool {
        use base64::Engine;
        let reader = hound::WavReader::open(repo_root().join(wav)).expect("caller wav");
        let samples: Vec<i16> = reader.into_samples::<i16>().map(|s| s.expect("wav sample")).collect();
        let mut tick = tokio::time::interval(Duration::from_millis(20));
        for chunk in samples.chunks(160) {
            tick.tick().await;
            let bytes: Vec<u8> = chunk.iter().flat_map(|s| s.to_le_bytes()).collect();
            let payload = base64::engine::general_purpose::STANDARD.encode(bytes);
            let frame = json!({"event":"media","payload":payload}).to_string();
            if self.ws.send(Message::Text(frame.into())).await.is_err() {
                return false;
            }
        }
        true
    }

    /// Send `ms` of silence as 20 ms media frames, in real time.
    pub async fn silence(&mut self, ms: u64) {
        let frame = json!({"event":"media","payload": base64_zeros(320)}).to_string();
        let mut tick = tokio::time::interval(Duration::from_millis(20));
        for _ in 0..ms / 20 {
            tick.tick().await;
            if self.ws.send(Message::Text(frame.clone().into())).await.is_err() {
                return;
            }
        }
    }

    /// Read bot frames until `event` arrives (returns it) or the socket closes / times out.
    pub async fn wait_event(&mut self, event: &str, timeout: Duration) -> Option<Value> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            match tokio::time::timeout_at(deadline, self.ws.next()).await {
                Ok(Some(Ok(Message::Text(t)))) => {
                    let v: Value = serde_json::from_str(&t).ok()?;
                    if v["event"] == event {
                        return Some(v);
                    }
                }
                Ok(Some(Ok(Message::Close(_)))) | Ok(None) | Ok(Some(Err(_))) | Err(_) => return None,
                Ok(Some(Ok(_))) => {}
            }
        }
    }

    /// Be a dialler's quiet caller: send silence every 20 ms and read the bot's frames until the
    /// socket closes, answering the bot's `reverse-hangup-call` with `hangup-call` as a dialler
    /// does. Reports the close and the events seen (consecutive `reverse-media` once).
    pub async fn talk_until_closed(&mut self, timeout: Duration) -> Closed {
        let frame = json!({"event":"media","payload": base64_zeros(320)}).to_string();
        let deadline = tokio::time::Instant::now() + timeout;
        let mut tick = tokio::time::interval(Duration::from_millis(20));
        let mut events: Vec<String> = vec![];
        loop {
            tokio::select! {
                _ = tick.tick() => {
                    // A failed send means the close is on its way; keep reading for it.
                    let _ = self.ws.send(Message::Text(frame.clone().into())).await;
                }
                msg = tokio::time::timeout_at(deadline, self.ws.next()) => {
                    let seen = events.len();
                    if let Some(closed) = note_frame(msg, &mut events, timeout) {
                        return closed;
                    }
                    if events.len() > seen && events.last().map(String::as_str) == Some("reverse-hangup-call") {
                        let _ = self.ws.send(Message::Text(json!({"event":"hangup-call"}).to_string().into())).await;
                    }
                }
            }
        }
    }

    /// Read until the socket closes; report the close frame and the events seen.
    pub async fn until_closed(&mut self, timeout: Duration) -> Closed {
        let deadline = tokio::time::Instant::now() + timeout;
        let mut events = vec![];
        loop {
            let msg = tokio::time::timeout_at(deadline, self.ws.next()).await;
            if let Some(closed) = note_frame(msg, &mut events, timeout) {
                return closed;
            }
        }
    }
}

type Read = Option<Result<Message, tokio_tungstenite::tungstenite::Error>>;

/// One read while waiting for a close: a text frame's event is noted in `events` (consecutive
/// `reverse-media` once); `Some` once the socket has closed. Panics when the read timed out.
fn note_frame(
    msg: Result<Read, tokio::time::error::Elapsed>,
    events: &mut Vec<String>,
    timeout: Duration,
) -> Option<Closed> {
    match msg {
        Ok(Some(Ok(Message::Text(t)))) => {
            if let Some(e) =
                serde_json::from_str::<Value>(&t).ok().and_then(|v| v["event"].as_str().map(str::to_string))
            {
                if events.last() != Some(&e) || e != "reverse-media" {
                    events.push(e);
                }
            }
            None
        }
        Ok(Some(Ok(Message::Close(f)))) => Some(Closed {
            code: f.as_ref().map(|f| u16::from(f.code)),
            reason: f.map(|f| f.reason.to_string()).unwrap_or_default(),
            events: std::mem::take(events),
        }),
        Ok(None) | Ok(Some(Err(_))) => {
            Some(Closed { code: None, reason: String::new(), events: std::mem::take(events) })
        }
        Ok(Some(Ok(_))) => None,
        Err(_) => panic!("socket not closed within {timeout:?}; events so far: {events:?}"),
    }
}

pub fn base64_zeros(bytes: usize) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(vec![0u8; bytes])
}

/// Assert that a JSON document has no `null` anywhere.
pub fn assert_no_nulls(v: &Value, path: &str) {
    match v {
        Value::Null => panic!("null at {path}"),
        Value::Array(a) => a.iter().enumerate().for_each(|(i, x)| assert_no_nulls(x, &format!("{path}[{i}]"))),
        Value::Object(o) => o.iter().for_each(|(k, x)| assert_no_nulls(x, &format!("{path}.{k}"))),
        _ => {}
    }
}

/// A short call: handshake, `ms` of silence, customer hang-up. Returns the stream id.
pub async fn quick_call(worker: &Worker, stream_id: &str, ms: u64) -> Option<()> {
    let mut call = RawCall::connect(&worker.ws_url("demo")).await.ok()?;
    call.handshake(stream_id).await;
    call.silence(ms).await;
    call.send_raw(Message::Text(json!({"event":"hangup-call","disconnectedBy":"customer"}).to_string().into())).await;
    let _ = tokio::time::timeout(Duration::from_secs(5), call.until_closed_quiet()).await;
    Some(())
}

impl RawCall {
    /// Drain until the socket closes, ignoring what arrives.
    pub async fn until_closed_quiet(&mut self) {
        while let Some(Ok(m)) = self.ws.next().await {
            if matches!(m, Message::Close(_)) {
                return;
            }
        }
    }
}

/// The scripted LLM ends the call with a bare `end_call` (no `final_message`, no text), as most
/// models do: the caller must still hear a goodbye — the model's answer to the tool result —
/// before the hang-up.
pub fn assert_goodbye_heard(summary: &Value, result: &Value) {
    assert_eq!(summary["silent_bot_hangups"], 0, "a hang-up without a goodbye: {summary:#}");
    assert_eq!(summary["goodbye_ms"]["count"], summary["bot_hangups"], "{summary:#}");
    let goodbye = result["events"].as_array().unwrap().iter().find(|e| e["type"] == "end_call_goodbye").cloned();
    let goodbye = goodbye.unwrap_or_else(|| panic!("an end_call_goodbye event: {result:#}"));
    assert_eq!(goodbye["data"]["source"], "llm_follow_up", "{goodbye:#}");
}

/// Validate a result payload against the checked-in JSON Schema (and the no-null rule).
pub fn assert_valid_result(v: &Value) {
    static VALIDATOR: std::sync::OnceLock<jsonschema::Validator> = std::sync::OnceLock::new();
    let validator = VALIDATOR.get_or_init(|| {
        let schema: Value =
            serde_json::from_slice(&std::fs::read(repo_root().join("proto/results.schema.json")).expect("schema file"))
                .expect("schema json");
        jsonschema::draft202012::new(&schema).expect("schema compiles")
    });
    let errors: Vec<String> = validator.iter_errors(v).map(|e| format!("{} at {}", e, e.instance_path())).collect();
    assert!(errors.is_empty(), "result does not match proto/results.schema.json: {errors:#?}\n{v:#}");
    assert_no_nulls(v, "$");
    // Every recording is reachable: object storage's URL, or this worker's own route.
    if v.get("recording_key").is_some() {
        assert!(
            v["recording_url"].as_str().is_some_and(|u| u.ends_with(".wav")),
            "recording_key without recording_url: {v:#}"
        );
    }
}

/// Assert that `path` is a complete WAV as the recorder writes it: canonical 44-byte header,
/// stereo 16-bit, sizes that match the file, every sample readable. Returns its seconds.
pub fn assert_valid_wav(path: &Path) -> f64 {
    let len = std::fs::metadata(path).unwrap_or_else(|e| panic!("{}: {e}", path.display())).len();
    let reader = hound::WavReader::open(path).unwrap_or_else(|e| panic!("{} is not a WAV: {e}", path.display()));
    let spec = reader.spec();
    assert_eq!((spec.channels, spec.bits_per_sample), (2, 16), "{}", path.display());
    let frames = u64::from(reader.duration());
    assert_eq!(44 + frames * 4, len, "{}: the header's sizes cover exactly the file", path.display());
    let rate = spec.sample_rate;
    let mut samples = 0u64;
    for sample in reader.into_samples::<i16>() {
        sample.expect("readable sample");
        samples += 1;
    }
    assert_eq!(samples, frames * 2);
    frames as f64 / f64::from(rate)
}

/// Files under `dir` (recursively) whose name ends with `suffix`.
pub fn files_ending(dir: &Path, suffix: &str) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let Ok(entries) = std::fs::read_dir(dir) else { return out };
    for e in entries.flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(files_ending(&p, suffix));
        } else if p.to_string_lossy().ends_with(suffix) {
            out.push(p);
        }
    }
    out
}

/// Poll `check` every 50 ms until it holds (true) or `timeout` passes (false).
pub async fn poll_until<F: std::future::Future<Output = bool>>(
    timeout: Duration,
    mut check: impl FnMut() -> F,
) -> bool {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if check().await {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    false
}
