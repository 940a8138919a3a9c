//! Recording uploads through the outbox against a real S3-compatible server on 127.0.0.1:
//! `s3s-fs` (checks SigV4 signatures). Install it with `cargo install s3s-fs --features binary`
//! (on rustc < 1.96: `cargo install s3s-fs --version 0.14.1 --locked --features binary`).
//! These tests fail — never skip — when it is missing.

mod common;

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use aws_sdk_s3::config::{BehaviorVersion, Credentials, Region};
use common::{wait_for, Server};
use cxb_delivery::outbox::{HttpTarget, NewEntry, Outbox, OutboxConfig, State};
use cxb_delivery::storage::{
    recording_path, upload_entry, uploaded_marker, S3Config, S3Uploader, UploadJob, RECORDING_KIND,
};
use serde_json::json;
use tokio_util::sync::CancellationToken;

const AK: &str = "cxb-test-access";
const SK: &str = "cxb-test-secret-key-1234567890";
const BUCKET: &str = "recordings";

fn s3s_fs_binary() -> PathBuf {
    let mut candidates: Vec<PathBuf> = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).map(|d| d.join("s3s-fs")).collect())
        .unwrap_or_default();
    if let Some(home) = std::env::var_os("CARGO_HOME") {
        candidates.push(PathBuf::from(home).join("bin/s3s-fs"));
    }
    if let Some(home) = std::env::var_os("HOME") {
        candidates.push(PathBuf::from(home).join(".cargo/bin/s3s-fs"));
    }
    candidates.into_iter().find(|p| p.is_file()).unwrap_or_else(|| {
        panic!(
            "s3s-fs not found on PATH or in ~/.cargo/bin: these tests need a real S3-compatible server. \
             Install it with `cargo install s3s-fs --features binary` \
             (rustc < 1.96: `cargo install s3s-fs --version 0.14.1 --locked --features binary`)"
        )
    })
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// A running s3s-fs; killed on drop.
struct S3Server {
    child: Child,
    port: u16,
}

impl S3Server {
    async fn start(root: &Path, port: u16) -> S3Server {
        std::fs::create_dir_all(root.join(BUCKET)).unwrap();
        let child = Command::new(s3s_fs_binary())
            .args(["--host", "127.0.0.1", "--port", &port.to_string(), "--access-key", AK, "--secret-key", SK])
            .arg(root)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start s3s-fs");
        let up = wait_for(Duration::from_secs(20), || std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()).await;
        assert!(up, "s3s-fs did not start listening on 127.0.0.1:{port}");
        S3Server { child, port }
    }

    fn endpoint(&self) -> String {
        endpoint(self.port)
    }
}

impl Drop for S3Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn endpoint(port: u16) -> String {
    format!("http://127.0.0.1:{port}")
}

fn s3_config(endpoint: String, secret: &str) -> S3Config {
    let mut c = S3Config::new(BUCKET, AK, secret);
    c.endpoint = Some(endpoint);
    c.path_style = true;
    c.connect_timeout = Duration::from_secs(2);
    c.request_timeout = Duration::from_secs(30);
    c.sdk_attempts = 1;
    c
}

fn outbox_config(dir: &Path) -> OutboxConfig {
    let mut c = OutboxConfig::new(dir);
    c.backoff_base = Duration::from_millis(50);
    c.backoff_max = Duration::from_millis(400);
    c.request_timeout = Duration::from_secs(2);
    c.custom_timeout = Duration::from_secs(60);
    c
}

/// Writes `bytes` pseudo-random bytes (starting with a WAV-looking header) as recording `key`.
fn write_recording(data_dir: &Path, key: &str, bytes: usize, seed: u64) -> Vec<u8> {
    let path = recording_path(data_dir, key).unwrap();
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    let mut x = seed | 1;
    let mut v: Vec<u8> = (0..bytes)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect();
    v[..4].copy_from_slice(b"RIFF");
    std::fs::write(&path, &v).unwrap();
    v
}

fn reader(endpoint: String) -> aws_sdk_s3::Client {
    let conf = aws_sdk_s3::Config::builder()
        .behavior_version(BehaviorVersion::latest())
        .region(Region::new("us-east-1"))
        .endpoint_url(endpoint)
        .force_path_style(true)
        .credentials_provider(Credentials::new(AK, SK, None, None, "test"))
        .build();
    aws_sdk_s3::Client::from_conf(conf)
}

async fn read_back(endpoint: String, key: &str) -> (Vec<u8>, Option<String>) {
    let out = reader(endpoint).get_object().bucket(BUCKET).key(key).send().await.expect("get_object");
    let ct = out.content_type().map(str::to_owned);
    (out.body.collect().await.unwrap().into_bytes().to_vec(), ct)
}

fn drained(ob: &Outbox) -> bool {
    let s = ob.stats();
    s.pending == 0 && s.in_flight == 0
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upload_and_byte_exact_read_back_single_and_multipart() {
    let tmp = tempfile::tempdir().unwrap();
    let srv = S3Server::start(&tmp.path().join("s3"), free_port()).await;
    let data_dir = tmp.path().join("data");
    let mut cfg = s3_config(srv.endpoint(), SK);
    cfg.part_size = 5 * 1024 * 1024;
    cfg.multipart_threshold = 6 * 1024 * 1024;
    let up = Arc::new(S3Uploader::new(cfg, &data_dir).unwrap());
    let ob = Outbox::open(outbox_config(&data_dir.join("outbox"))).await.unwrap();
    ob.register(RECORDING_KIND, up.clone());
    let stop = CancellationToken::new();
    let _h = ob.start(stop.clone());

    let small_key = "recordings/2025/06/01/small-call.wav";
    let big_key = "recordings/2025/06/01/long-call.wav";
    let small = write_recording(&data_dir, small_key, 300_001, 7);
    let big = write_recording(&data_dir, big_key, 13 * 1024 * 1024 + 17, 11);
    for (key, bytes) in [(small_key, &small), (big_key, &big)] {
        ob.enqueue(upload_entry(&UploadJob { key: key.into(), bytes: bytes.len() as u64 })).await.unwrap();
    }
    assert!(wait_for(Duration::from_secs(60), || drained(&ob)).await, "uploads did not finish: {:?}", up.health());
    assert_eq!(ob.stats().dead, 0);
    for (key, bytes) in [(small_key, &small), (big_key, &big)] {
        let (got, ct) = read_back(srv.endpoint(), key).await;
        assert_eq!(got.len(), bytes.len(), "{key}");
        assert!(got == *bytes, "{key} differs");
        assert_eq!(ct.as_deref(), Some("audio/wav"));
        let local = recording_path(&data_dir, key).unwrap();
        assert!(uploaded_marker(&local).exists(), "marker for the retention sweeper");
        assert!(local.exists(), "local copy kept until the retention period ends");
    }
    let h = up.health();
    assert_eq!((h.uploads, h.failures, h.alarm), (2, 0, false));

    // Idempotent: uploading again (at-least-once redelivery) succeeds and changes nothing.
    ob.enqueue(upload_entry(&UploadJob { key: small_key.into(), bytes: small.len() as u64 })).await.unwrap();
    assert!(wait_for(Duration::from_secs(20), || drained(&ob)).await);
    assert_eq!(read_back(srv.endpoint(), small_key).await.0, small);

    // A local copy that vanished without ever being uploaded is dead-lettered, not retried forever.
    ob.enqueue(upload_entry(&UploadJob { key: "recordings/2025/06/01/missing.wav".into(), bytes: 1 })).await.unwrap();
    assert!(wait_for(Duration::from_secs(20), || ob.stats().dead == 1).await);
    stop.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_credentials_are_retried_and_alarmed_while_the_result_is_delivered() {
    let tmp = tempfile::tempdir().unwrap();
    let srv = S3Server::start(&tmp.path().join("s3"), free_port()).await;
    let api = Server::start().await;
    let data_dir = tmp.path().join("data");
    let bad = Arc::new(S3Uploader::new(s3_config(srv.endpoint(), "not-the-secret"), &data_dir).unwrap());
    let ob = Outbox::open(outbox_config(&data_dir.join("outbox"))).await.unwrap();
    ob.register(RECORDING_KIND, bad.clone());
    let stop = CancellationToken::new();
    let _h = ob.start(stop.clone());

    let key = "recordings/2025/06/02/sess-auth.wav";
    let bytes = write_recording(&data_dir, key, 64_000, 3);
    // What the call driver does at call end: recording upload first, then the result.
    ob.enqueue(upload_entry(&UploadJob { key: key.into(), bytes: bytes.len() as u64 })).await.unwrap();
    let result = json!({"session_id": "sess-auth", "recording_key": key});
    ob.enqueue(NewEntry::http(
        "result",
        "sess-auth",
        HttpTarget::post_json(api.url("/api/v1/call-results"), &result).unwrap(),
    ))
    .await
    .unwrap();

    assert!(wait_for(Duration::from_secs(10), || api.hit_count() == 1).await, "result delivered");
    let sent: serde_json::Value = serde_json::from_slice(&api.hits()[0].body).unwrap();
    assert_eq!(sent["recording_key"], key);
    assert!(wait_for(Duration::from_secs(10), || bad.health().failures >= 3).await);
    let h = bad.health();
    assert!(h.alarm, "alarm raised: {h:?}");
    let err = h.last_error.unwrap_or_default();
    assert!(err.contains("403") || err.contains("Signature") || err.contains("AccessKey"), "{err}");
    let pending = ob.list(State::Pending).await;
    assert_eq!(pending.len(), 1, "the upload stays pending, not dead");
    assert_eq!(pending[0].kind, RECORDING_KIND);
    assert!(pending[0].attempts >= 2);
    assert!(!uploaded_marker(&recording_path(&data_dir, key).unwrap()).exists());

    // The operator fixes the credentials: the pending upload goes through.
    let good = Arc::new(S3Uploader::new(s3_config(srv.endpoint(), SK), &data_dir).unwrap());
    ob.register(RECORDING_KIND, good.clone());
    assert!(wait_for(Duration::from_secs(10), || drained(&ob)).await);
    assert_eq!(read_back(srv.endpoint(), key).await.0, bytes);
    assert!(!good.health().alarm);
    stop.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn storage_down_at_call_end_then_up_later_uploads_from_the_outbox() {
    let tmp = tempfile::tempdir().unwrap();
    let port = free_port();
    let data_dir = tmp.path().join("data");
    let key = "recordings/2025/06/03/sess-down.wav";
    let bytes = write_recording(&data_dir, key, 200_000, 5);

    // Storage is down when the call ends.
    let up = Arc::new(S3Uploader::new(s3_config(endpoint(port), SK), &data_dir).unwrap());
    let ob = Outbox::open(outbox_config(&data_dir.join("outbox"))).await.unwrap();
    ob.register(RECORDING_KIND, up.clone());
    let stop = CancellationToken::new();
    let h = ob.start(stop.clone());
    ob.enqueue(upload_entry(&UploadJob { key: key.into(), bytes: bytes.len() as u64 })).await.unwrap();
    assert!(wait_for(Duration::from_secs(15), || up.health().failures >= 2).await, "{:?}", up.health());
    assert_eq!(ob.stats().pending, 1);

    // The worker restarts while storage is still down; the entry survives on disk.
    stop.cancel();
    h.await.unwrap();
    drop(ob);

    // Storage comes back; the restarted worker replays the outbox and uploads.
    let srv = S3Server::start(&tmp.path().join("s3"), port).await;
    let up2 = Arc::new(S3Uploader::new(s3_config(srv.endpoint(), SK), &data_dir).unwrap());
    let ob = Outbox::open(outbox_config(&data_dir.join("outbox"))).await.unwrap();
    ob.register(RECORDING_KIND, up2.clone());
    let stop = CancellationToken::new();
    let _h = ob.start(stop.clone());
    assert!(wait_for(Duration::from_secs(20), || drained(&ob)).await, "{:?}", up2.health());
    assert_eq!(read_back(srv.endpoint(), key).await.0, bytes);
    assert_eq!(up2.health().uploads, 1);
    stop.cancel();
}

/// Upload throughput to s3s-fs on loopback (numbers in the README):
/// `cargo test --release -p cxb-delivery --test s3 -- --ignored --nocapture upload_throughput`
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "benchmark; run explicitly"]
async fn upload_throughput() {
    let tmp = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let srv = S3Server::start(&tmp.path().join("s3"), free_port()).await;
    let data_dir = tmp.path().join("data");
    let up = S3Uploader::new(s3_config(srv.endpoint(), SK), &data_dir).unwrap();
    // A 10-minute 8 kHz call (19.2 MB, multipart) and a 2-minute one (3.8 MB, single PUT),
    // then a 60-minute 16 kHz one (230 MB, multipart).
    for (name, bytes) in [("ten-min-8k", 19_200_044), ("two-min-8k", 3_840_044), ("hour-16k", 230_400_044)] {
        let key = format!("recordings/2025/07/01/{name}.wav");
        let data = write_recording(&data_dir, &key, bytes, 9);
        let path = recording_path(&data_dir, &key).unwrap();
        let t = std::time::Instant::now();
        up.upload_file(&path, &key).await.unwrap();
        let secs = t.elapsed().as_secs_f64();
        println!("upload {name}: {bytes} bytes in {secs:.3} s = {:.1} MB/s", bytes as f64 / secs / 1e6);
        assert_eq!(read_back(srv.endpoint(), &key).await.0.len(), data.len());
        std::fs::remove_file(&path).unwrap();
    }
}
