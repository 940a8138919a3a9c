//! `GET /recordings/{key}` (contract §2.2 fleet fallback) against the real router on loopback,
//! plus the per-call recording glue end to end (start → audio → finish → served → enqueued).

use std::path::Path;
use std::time::Duration;

use chrono::TimeZone as _;
use cxb_core::recordings::{enqueue_upload, CallRecording};
use cxb_core::Settings;
use cxb_delivery::outbox::{Outbox, OutboxConfig, State, Target};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

const SECRET: &str = "route-secret";

struct Worker {
    base: String,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
}

impl Drop for Worker {
    fn drop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
    }
}

fn settings(data_dir: &Path) -> Settings {
    let mut s = Settings::for_tests(data_dir.to_path_buf());
    s.secret = Some(SECRET.into());
    s.drain_secs = 0;
    s
}

async fn start(data_dir: &Path) -> Worker {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let s = settings(data_dir);
    tokio::spawn(async move {
        let _ = cxb_core::serve(listener, s, async move {
            let _ = rx.await;
        })
        .await;
    });
    Worker { base: format!("http://{addr}"), stop: Some(tx) }
}

fn put(data_dir: &Path, rel: &str, bytes: &[u8]) {
    let p = data_dir.join(rel);
    std::fs::create_dir_all(p.parent().unwrap()).unwrap();
    std::fs::write(p, bytes).unwrap();
}

async fn get(url: &str, headers: &[(&str, &str)]) -> (u16, reqwest::header::HeaderMap, Vec<u8>) {
    let mut req = reqwest::Client::new().get(url).timeout(Duration::from_secs(5));
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let r = req.send().await.unwrap();
    let status = r.status().as_u16();
    let h = r.headers().clone();
    (status, h, r.bytes().await.unwrap().to_vec())
}

fn hv<'a>(h: &'a reqwest::header::HeaderMap, k: &str) -> &'a str {
    h.get(k).map(|v| v.to_str().unwrap()).unwrap_or("")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serves_local_copies_with_ranges_auth_and_no_traversal() {
    let dir = tempfile::tempdir().unwrap();
    let data: Vec<u8> = (0..1000u32).map(|i| (i % 251) as u8).collect();
    put(dir.path(), "recordings/2025/06/01/sess-1.wav", &data);
    put(dir.path(), "recordings/2025/06/01/live.wav.part", b"partial");
    put(dir.path(), "recordings/2025/06/01/sess-1.wav.uploaded", b"{}");
    put(dir.path(), "outbox/secret.wav", b"not a recording");
    put(dir.path(), "results/x.json", b"{}");
    let w = start(dir.path()).await;
    let url = format!("{}/recordings/recordings/2025/06/01/sess-1.wav", w.base);
    let auth = ("X-CXBCore-Secret", SECRET);

    // Secret required (either spelling).
    assert_eq!(get(&url, &[]).await.0, 403);
    assert_eq!(get(&url, &[("X-CXBCore-Secret", "wrong")]).await.0, 403);
    let (s, h, body) = get(&url, &[("X-CXB-Core-Secret", SECRET)]).await;
    assert_eq!(s, 200);
    assert_eq!(body, data);
    assert_eq!(hv(&h, "content-type"), "audio/wav");
    assert_eq!(hv(&h, "content-length"), "1000");
    assert_eq!(hv(&h, "accept-ranges"), "bytes");

    // The key without its `recordings/` prefix resolves to the same file.
    let short = format!("{}/recordings/2025/06/01/sess-1.wav", w.base);
    assert_eq!(get(&short, &[auth]).await.2, data);

    // Ranges.
    let (s, h, body) = get(&url, &[auth, ("Range", "bytes=0-99")]).await;
    assert_eq!((s, hv(&h, "content-range"), hv(&h, "content-length")), (206, "bytes 0-99/1000", "100"));
    assert_eq!(body, &data[..100]);
    let (s, h, body) = get(&url, &[auth, ("Range", "bytes=100-")]).await;
    assert_eq!((s, hv(&h, "content-range")), (206, "bytes 100-999/1000"));
    assert_eq!(body, &data[100..]);
    let (s, h, body) = get(&url, &[auth, ("Range", "bytes=-50")]).await;
    assert_eq!((s, hv(&h, "content-range")), (206, "bytes 950-999/1000"));
    assert_eq!(body, &data[950..]);
    let (s, h, _) = get(&url, &[auth, ("Range", "bytes=1000-")]).await;
    assert_eq!((s, hv(&h, "content-range")), (416, "bytes */1000"));
    let (s, _, body) = get(&url, &[auth, ("Range", "bytes=0-1,5-6")]).await;
    assert_eq!((s, body.len()), (200, 1000), "multiple ranges: the whole file");
    let (s, _, body) = get(&url, &[auth, ("Range", "bytes=9-3")]).await;
    assert_eq!((s, body.len()), (200, 1000), "a malformed range is ignored");

    // Unknown keys, in-progress files, markers and anything outside recordings/: 404.
    for path in [
        "/recordings/recordings/2025/06/01/nope.wav",
        "/recordings/recordings/2025/06/01/live.wav.part",
        "/recordings/recordings/2025/06/01/live.wav",
        "/recordings/recordings/2025/06/01/sess-1.wav.uploaded",
        "/recordings/outbox/secret.wav",
        "/recordings/recordings/..%2F..%2Foutbox%2Fsecret.wav",
        "/recordings/recordings/%2e%2e/%2e%2e/outbox/secret.wav",
        "/recordings/..%2Foutbox%2Fsecret.wav",
        "/recordings/%2Fetc%2Fpasswd",
        "/recordings/recordings/2025/06/01/sess-1.wav%00.txt",
    ] {
        let (s, _, _) = get(&format!("{}{path}", w.base), &[auth]).await;
        assert!(s == 404 || s == 400, "{path}: {s}");
    }
    // Raw dot segments (clients normally resolve them; a hostile one may not).
    let addr = w.base.trim_start_matches("http://");
    let mut tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let req = format!(
        "GET /recordings/recordings/../../outbox/secret.wav HTTP/1.1\r\nHost: x\r\nX-CXBCore-Secret: {SECRET}\r\nConnection: close\r\n\r\n"
    );
    tcp.write_all(req.as_bytes()).await.unwrap();
    let mut resp = String::new();
    tcp.read_to_string(&mut resp).await.unwrap();
    assert!(resp.starts_with("HTTP/1.1 404") || resp.starts_with("HTTP/1.1 400"), "{resp}");
    assert!(!resp.contains("not a recording"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_recording_is_served_and_its_upload_enqueued() {
    let dir = tempfile::tempdir().unwrap();
    let started = chrono::Utc.with_ymd_and_hms(2025, 6, 2, 10, 0, 0).unwrap();
    let ms = Duration::from_millis;

    // Embedded default: no bucket → local only, no upload, key known, no URL.
    let s = settings(dir.path());
    let mut rec = CallRecording::start(&s, "sess/42", 8000, started).unwrap().expect("recording enabled");
    assert_eq!(rec.key(), "recordings/2025/06/02/sess_42.wav");
    assert!(rec.url().is_none());
    for k in 0..100u64 {
        rec.customer(&[100i16; 160], ms(20 * (k + 1)));
        if (20..=30).contains(&k) {
            rec.bot(&[-200i16; 160], ms(20 * (k + 1)));
        }
        if k == 30 {
            rec.bot_cleared(ms(20 * (k + 1)));
        }
    }
    assert!(dir.path().join("recordings/2025/06/02/sess_42.wav.part").exists(), "written while the call runs");
    let done = rec.finish(ms(2020)).await.unwrap();
    assert_eq!(done.key, "recordings/2025/06/02/sess_42.wav");
    assert!(done.complete && !done.upload);
    assert_eq!(done.duration, ms(2000));
    assert_eq!(done.bytes, 44 + 16000 * 4);
    assert_eq!(done.stats.bot_samples_cleared, 160);
    assert!(!dir.path().join("recordings/2025/06/02/sess_42.wav.part").exists());

    let ob = Outbox::open(OutboxConfig::new(dir.path().join("test-outbox"))).await.unwrap();
    assert!(enqueue_upload(&ob, &done).await.unwrap().is_none(), "nothing to upload without a bucket");

    let w = start(dir.path()).await;
    let (st, h, body) = get(&format!("{}/recordings/{}", w.base, done.key), &[("X-CXBCore-Secret", SECRET)]).await;
    assert_eq!(st, 200);
    assert_eq!(hv(&h, "content-length"), (44 + 16000 * 4).to_string());
    assert_eq!(&body[..4], b"RIFF");
    assert_eq!(&body[8..12], b"WAVE");
    assert_eq!(u16::from_le_bytes([body[22], body[23]]), 2, "stereo");
    assert_eq!(u32::from_le_bytes(body[24..28].try_into().unwrap()), 8000);
    assert_eq!(u32::from_le_bytes(body[40..44].try_into().unwrap()), 16000 * 4);
    // Frame 0: customer 100 left, bot silent right; frame 25 (500 ms): bot speaking.
    let frame = |i: usize| {
        let o = 44 + i * 4;
        (i16::from_le_bytes([body[o], body[o + 1]]), i16::from_le_bytes([body[o + 2], body[o + 3]]))
    };
    assert_eq!(frame(0), (100, 0));
    assert_eq!(frame(25 * 160), (100, -200));
    assert_eq!(frame(35 * 160), (100, 0), "cleared at 620 ms");

    // With a bucket: URL known in advance, upload enqueued durably (delivered later).
    let mut s = settings(dir.path());
    s.storage.s3_bucket = Some("recs".into());
    s.storage.s3_endpoint = Some("http://127.0.0.1:9".into());
    s.storage.s3_access_key_id = Some("ak".into());
    s.storage.s3_secret_access_key = Some("sk".into());
    let mut rec = CallRecording::start(&s, "sess-43", 16000, started).unwrap().unwrap();
    assert_eq!(rec.url(), Some("http://127.0.0.1:9/recs/recordings/2025/06/02/sess-43.wav"));
    rec.customer(&[1i16; 320], ms(20));
    let done = rec.finish(ms(20)).await.unwrap();
    assert!(done.upload);
    let id = enqueue_upload(&ob, &done).await.unwrap().expect("enqueued");
    let pending = ob.list(State::Pending).await;
    assert_eq!(pending.len(), 1);
    assert_eq!(pending[0].id, id);
    assert_eq!(pending[0].kind, "recording");
    let entry = ob.get(id.as_str()).await.unwrap().entry.unwrap();
    let Target::Custom { data } = entry.target else { panic!("custom target") };
    assert_eq!(data["key"], "recordings/2025/06/02/sess-43.wav");

    // A second recording for the same session keeps the first.
    let again = CallRecording::start(&s, "sess-43", 16000, started).unwrap().unwrap();
    assert_eq!(again.key(), "recordings/2025/06/02/sess-43-2.wav");
}
