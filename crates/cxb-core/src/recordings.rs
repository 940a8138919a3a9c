//! Call recordings: storage settings, the per-call recorder hook-up, upload through the outbox,
//! retention, and the fleet-fallback route `GET /recordings/{key}` (contract §2.2, §13.5).
//!
//! Every call is recorded as a stereo 16-bit PCM WAV (customer left, bot right, at the
//! transport's rate; see [`cxb_audio::recorder`]) into
//! `{data_dir}/recordings/YYYY/MM/DD/{session_id}.wav` — the path mirrors the object key
//! `recordings/YYYY/MM/DD/{session_id}.wav`, so the key (and URL) is known before any upload.
//! While the call runs the file is `….wav.part`; it is renamed when finished.
//!
//! Driver glue, in call order:
//! ```text
//! let mut rec = CallRecording::start(&settings, &session_id, rate, started_at)?;  // after config
//! rec.customer(&samples, t0.elapsed());          // every caller-audio chunk
//! rec.bot(&frame, t0.elapsed());                 // every Action::PlayAudio frame sent
//! rec.bot_cleared(t0.elapsed());                 // every Action::ClearAudio
//! let done = rec.finish(t0.elapsed()).await?;    // at call end
//! enqueue_upload(&outbox, &done).await?;         // durable; returns before any upload
//! payload.recording_key = Some(done.key); payload.recording_url = done.url;
//! ```
//! With a bucket configured, uploads are outbox entries of kind `recording` handled by
//! [`cxb_delivery::storage::S3Uploader`] (register it with [`register`] or [`start_services`]);
//! the result is delivered without waiting for storage, and this worker serves the local copy
//! at `GET /recordings/{key}` meanwhile and for the retention period after the upload. Without a
//! bucket (the embedded default) recordings stay on local disk, served by the same route.

use std::path::{Path as FsPath, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use chrono::{DateTime, Utc};
use clap::builder::BoolishValueParser;
use cxb_audio::recorder::{FileRecorder, RecorderConfig, RecorderError, RecordingStats};
use cxb_delivery::outbox::{EntryId, Outbox, OutboxError};
use cxb_delivery::storage::{
    self, partial_path, recording_key, recording_path, upload_entry, RetentionConfig, RetentionSweeper, S3Config,
    S3Uploader, StorageError, UploadJob, RECORDING_KIND,
};
use tokio::io::{AsyncReadExt as _, AsyncSeekExt as _};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

use crate::app::AppState;
use crate::settings::Settings;

/// Recording storage settings. Object storage is used when `CXBCORE_S3_BUCKET` is set; otherwise
/// recordings stay on local disk (the embedded default).
#[derive(educe::Educe, Clone, clap::Args)]
#[educe(Debug)]
pub struct StorageSettings {
    /// Record calls at all (stereo WAV under --data-dir/recordings). `false` disables recording:
    /// results then carry no recording fields.
    #[arg(long, env = "CXBCORE_RECORDINGS_ENABLED", default_value_t = true, action = clap::ArgAction::Set,
          value_parser = BoolishValueParser::new())]
    pub recordings_enabled: bool,

    /// S3-compatible endpoint, e.g. `https://sgp1.digitaloceanspaces.com` or
    /// `http://127.0.0.1:9000` (MinIO). Unset with a bucket: AWS S3's regional endpoint.
    #[arg(long, env = "CXBCORE_S3_ENDPOINT")]
    pub s3_endpoint: Option<String>,

    /// Bucket for recordings. Unset: no upload, recordings stay on local disk.
    #[arg(long, env = "CXBCORE_S3_BUCKET")]
    pub s3_bucket: Option<String>,

    /// Region used for request signing (DigitalOcean Spaces: the datacenter, e.g. `sgp1`;
    /// MinIO: usually `us-east-1`).
    #[arg(long, env = "CXBCORE_S3_REGION", default_value = "us-east-1")]
    pub s3_region: String,

    /// Access key id. Unset: `AWS_ACCESS_KEY_ID`.
    #[arg(long, env = "CXBCORE_S3_ACCESS_KEY_ID", hide_env_values = true)]
    #[educe(Debug(method(crate::settings::redact)))]
    pub s3_access_key_id: Option<String>,

    /// Secret access key. Unset: `AWS_SECRET_ACCESS_KEY`.
    #[arg(long, env = "CXBCORE_S3_SECRET_ACCESS_KEY", hide_env_values = true)]
    #[educe(Debug(method(crate::settings::redact)))]
    pub s3_secret_access_key: Option<String>,

    /// Public base URL for `recording_url` (`{base}/{key}`), e.g. a CDN or
    /// `https://recs.sgp1.cdn.digitaloceanspaces.com`. Unset: the bucket's object URL.
    #[arg(long, env = "CXBCORE_S3_PUBLIC_BASE_URL")]
    pub s3_public_base_url: Option<String>,

    /// Path-style addressing (`endpoint/bucket/key`), needed by MinIO-style stores.
    /// Default: true when CXBCORE_S3_ENDPOINT is set, false for AWS.
    #[arg(long, env = "CXBCORE_S3_PATH_STYLE", value_parser = BoolishValueParser::new())]
    pub s3_path_style: Option<bool>,

    /// Multipart part size in MiB (at least 5); files up to twice this size go in one PutObject.
    #[arg(long, env = "CXBCORE_S3_PART_SIZE_MB", default_value_t = 8)]
    pub s3_part_size_mb: u64,

    /// Hours a local copy is kept after a successful upload (served by /recordings meanwhile).
    #[arg(long, env = "CXBCORE_RECORDINGS_RETENTION_HOURS", default_value_t = 72)]
    pub recordings_retention_hours: u64,

    /// Bound on local recording bytes: past it uploaded copies are deleted early (oldest first);
    /// the disk alarm (metric `cxb_recordings_disk_alarm`, error log) fires at 80 %. Copies not
    /// yet in object storage are never deleted.
    #[arg(long, env = "CXBCORE_RECORDINGS_MAX_BYTES", default_value_t = 20 * 1024 * 1024 * 1024)]
    pub recordings_max_bytes: u64,
}

impl StorageSettings {
    /// True when recordings are uploaded to object storage.
    pub fn uploads_enabled(&self) -> bool {
        self.s3_bucket.as_deref().is_some_and(|b| !b.trim().is_empty())
    }

    /// The S3 settings, when a bucket is configured.
    pub fn s3_config(&self) -> Option<Result<S3Config, StorageError>> {
        if !self.uploads_enabled() {
            return None;
        }
        let pick = |v: &Option<String>, fallback: &str| {
            v.clone().filter(|s| !s.is_empty()).or_else(|| std::env::var(fallback).ok().filter(|s| !s.is_empty()))
        };
        let (Some(ak), Some(sk)) = (
            pick(&self.s3_access_key_id, "AWS_ACCESS_KEY_ID"),
            pick(&self.s3_secret_access_key, "AWS_SECRET_ACCESS_KEY"),
        ) else {
            return Some(Err(StorageError::Config(
                "CXBCORE_S3_BUCKET is set but CXBCORE_S3_ACCESS_KEY_ID / CXBCORE_S3_SECRET_ACCESS_KEY are not".into(),
            )));
        };
        let mut c = S3Config::new(self.s3_bucket.clone().unwrap_or_default().trim(), ak, sk);
        c.endpoint = self.s3_endpoint.clone().filter(|e| !e.trim().is_empty());
        c.region = self.s3_region.clone();
        c.path_style = self.s3_path_style.unwrap_or(c.endpoint.is_some());
        c.part_size = self.s3_part_size_mb.saturating_mul(1024 * 1024);
        c.multipart_threshold = c.part_size.saturating_mul(2);
        Some(Ok(c))
    }

    /// `recording_url` for `key`: the public base URL, else the bucket's object URL, else None
    /// (local-only: the key is fetched through the fleet fallback route).
    pub fn recording_url(&self, key: &str) -> Option<String> {
        if let Some(base) = self.s3_public_base_url.as_deref().filter(|b| !b.trim().is_empty()) {
            return Some(format!("{}/{key}", base.trim().trim_end_matches('/')));
        }
        match self.s3_config() {
            Some(Ok(c)) => Some(c.object_url(key)),
            _ => None,
        }
    }

    pub fn retention_config(&self, data_dir: &FsPath) -> RetentionConfig {
        let mut r = RetentionConfig::new(data_dir);
        r.retention = Duration::from_secs(self.recordings_retention_hours.saturating_mul(3600));
        r.max_bytes = self.recordings_max_bytes.max(1);
        r
    }
}

#[derive(Debug, thiserror::Error)]
pub enum RecordingError {
    #[error(transparent)]
    Recorder(#[from] RecorderError),
    #[error("recording file error on {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("recording task failed: {0}")]
    Task(String),
}

/// One call's recording while it runs. Not `Clone`; owned by the call driver.
pub struct CallRecording {
    rec: FileRecorder,
    key: String,
    url: Option<String>,
    path: PathBuf,
    part: PathBuf,
    upload: bool,
}

/// A finished recording: what the result payload and the upload need.
#[derive(Clone, Debug)]
pub struct RecordingDone {
    /// `recording_key` (also the path under the data dir).
    pub key: String,
    /// `recording_url`, when one is known (public base URL or the bucket's object URL).
    pub url: Option<String>,
    pub local_path: PathBuf,
    pub duration: Duration,
    pub bytes: u64,
    /// Whether an upload should be enqueued (a bucket is configured).
    pub upload: bool,
    /// False when writing failed mid-call and the file holds what was written until then.
    pub complete: bool,
    pub stats: RecordingStats,
}

impl CallRecording {
    /// Creates the recording file for a call. `Ok(None)` when recording is disabled.
    /// Call once the session id is known (after the config fetch); `started_at` dates the key.
    /// Does a mkdir and a file create: fine on the async runtime.
    pub fn start(
        settings: &Settings,
        session_id: &str,
        sample_rate: u32,
        started_at: DateTime<Utc>,
    ) -> Result<Option<CallRecording>, RecordingError> {
        let st = &settings.storage;
        if !st.recordings_enabled {
            return Ok(None);
        }
        // The session id is unique per call; if a file for it exists anyway (a replayed
        // session), keep both rather than overwrite one that may not be uploaded yet.
        let mut key = recording_key(session_id, started_at);
        let mut path = recording_path(&settings.data_dir, &key).expect("generated keys are valid");
        let mut n = 2;
        while path.exists() || partial_path(&path).exists() {
            key = recording_key(&format!("{}-{n}", storage::sanitize_session_id(session_id)), started_at);
            path = recording_path(&settings.data_dir, &key).expect("generated keys are valid");
            n += 1;
        }
        let dir = path.parent().expect("key has directories").to_path_buf();
        std::fs::create_dir_all(&dir).map_err(|source| RecordingError::Io { path: dir, source })?;
        let part = partial_path(&path);
        let rec = FileRecorder::create(&part, sample_rate, RecorderConfig::default())?;
        Ok(Some(CallRecording {
            url: settings.recording_url(&key),
            upload: st.uploads_enabled(),
            rec,
            key,
            path,
            part,
        }))
    }

    /// The object key (known from the start).
    pub fn key(&self) -> &str {
        &self.key
    }

    /// The URL the result will carry, if any.
    pub fn url(&self) -> Option<&str> {
        self.url.as_deref()
    }

    /// A chunk of caller audio received `at` after call start (the driver's `t0.elapsed()`).
    pub fn customer(&mut self, samples: &[i16], at: Duration) {
        self.rec.customer(samples, at);
    }

    /// A bot frame handed to the transport at `at` (`Action::PlayAudio`).
    pub fn bot(&mut self, frame: &[i16], at: Duration) {
        self.rec.bot(frame, at);
    }

    /// Barge-in at `at` (`Action::ClearAudio`): bot audio released but not yet heard is dropped.
    pub fn bot_cleared(&mut self, at: Duration) {
        self.rec.bot_cleared(at);
    }

    /// Ends the recording at `at` (call end): writes the rest, finalizes the header, fsyncs and
    /// renames `.part` → `.wav`, off the async threads. A recorder I/O error mid-call still yields
    /// the audio written until then (`complete: false`) when the file can be repaired.
    pub async fn finish(self, at: Duration) -> Result<RecordingDone, RecordingError> {
        let CallRecording { rec, key, url, path, part, upload } = self;
        let rate = rec.stats().sample_rate;
        tokio::task::spawn_blocking(move || {
            let (stats, complete) = match rec.finish(at) {
                Ok(s) => (s, true),
                Err(e) => {
                    error!(%key, error = %e, "recording failed mid-call; keeping what was written");
                    let data = cxb_audio::recorder::repair_wav_header(&part)?;
                    let frames = data / 4;
                    (
                        RecordingStats {
                            sample_rate: rate,
                            frames_written: frames,
                            file_bytes: data + 44,
                            ..Default::default()
                        },
                        false,
                    )
                }
            };
            std::fs::rename(&part, &path).map_err(|source| RecordingError::Io { path: path.clone(), source })?;
            if let Some(dir) = path.parent() {
                if let Err(e) = std::fs::File::open(dir).and_then(|d| d.sync_all()) {
                    warn!(error = %e, "could not fsync the recordings directory");
                }
            }
            metrics::counter!("cxb_recordings_total", "complete" => if complete { "true" } else { "false" })
                .increment(1);
            Ok(RecordingDone {
                key,
                url,
                local_path: path,
                duration: stats.duration(),
                bytes: stats.file_bytes,
                upload,
                complete,
                stats,
            })
        })
        .await
        .map_err(|e| RecordingError::Task(e.to_string()))?
    }
}

/// Seconds of audio in a finished (or repaired) recording of `bytes` at `sample_rate`.
pub fn recorded_secs(bytes: u64, sample_rate: u32) -> f64 {
    const STEREO_16_BIT: u64 = 4;
    bytes.saturating_sub(cxb_audio::recorder::WAV_HEADER_BYTES) as f64
        / (STEREO_16_BIT * u64::from(sample_rate.max(1))) as f64
}

/// Enqueues the upload of a finished recording (durable before it returns; the upload itself
/// happens later, in the outbox). `Ok(None)` when no bucket is configured (local only).
pub async fn enqueue_upload(outbox: &Outbox, done: &RecordingDone) -> Result<Option<EntryId>, OutboxError> {
    if !done.upload {
        return Ok(None);
    }
    let id = outbox.enqueue(upload_entry(&UploadJob { key: done.key.clone(), bytes: done.bytes })).await?;
    Ok(Some(id))
}

/// Registers the S3 uploader for outbox kind `recording`, if a bucket is configured.
pub fn register(outbox: &Outbox, settings: &Settings) -> Result<Option<Arc<S3Uploader>>, StorageError> {
    let Some(cfg) = settings.storage.s3_config() else { return Ok(None) };
    let cfg = cfg?;
    info!(bucket = %cfg.bucket, endpoint = ?cfg.endpoint, path_style = cfg.path_style, "recording uploads enabled");
    let up = Arc::new(S3Uploader::new(cfg, &settings.data_dir)?);
    outbox.register(RECORDING_KIND, up.clone());
    Ok(Some(up))
}

/// Startup, before any call: registers the uploader, recovers recordings a crash left
/// unfinished (repairs their header, enqueues their upload) and starts the retention sweeper
/// (runs until `shutdown`).
pub async fn start_services(
    settings: &Settings,
    outbox: &Outbox,
    shutdown: CancellationToken,
) -> Result<(Option<Arc<S3Uploader>>, JoinHandle<()>), StorageError> {
    let up = register(outbox, settings)?;
    let data_dir = settings.data_dir.clone();
    let recovered = tokio::task::spawn_blocking(move || recover_partial(&data_dir)).await.unwrap_or_default();
    if up.is_some() {
        for (key, bytes) in recovered {
            if let Err(e) = outbox.enqueue(upload_entry(&UploadJob { key: key.clone(), bytes })).await {
                error!(%key, error = %e, "could not enqueue the upload of a recovered recording");
            }
        }
    }
    let sweeper = RetentionSweeper::new(settings.storage.retention_config(&settings.data_dir));
    Ok((up, sweeper.spawn(shutdown)))
}

/// Repairs recordings a crash left `.part` (patches the WAV sizes to the audio on disk) and
/// renames them to `.wav`. Returns `(key, bytes)` of each. A file too short to hold even the
/// header (the process died creating it) has no audio and is removed. Startup only: a live
/// call's recording is also `.part`.
pub fn recover_partial(data_dir: &FsPath) -> Vec<(String, u64)> {
    let mut out = Vec::new();
    for (key, part) in storage::partial_recordings(data_dir) {
        let Some(wav) = recording_path(data_dir, &key) else { continue };
        if std::fs::metadata(&part).is_ok_and(|m| m.len() < cxb_audio::recorder::WAV_HEADER_BYTES) {
            warn!(%key, "removing a recording that died before its header was written (no audio)");
            let _ = std::fs::remove_file(&part);
            continue;
        }
        let repaired = cxb_audio::recorder::repair_wav_header(&part).map_err(RecordingError::from).and_then(|data| {
            std::fs::rename(&part, &wav)
                .map(|()| data + 44)
                .map_err(|source| RecordingError::Io { path: part.clone(), source })
        });
        match repaired {
            Ok(bytes) => {
                warn!(%key, bytes, "recovered a recording left unfinished by a crash");
                out.push((key, bytes));
            }
            Err(e) => error!(%key, error = %e, "could not recover an unfinished recording"),
        }
    }
    out
}

// ----- GET /recordings/{*key} -----

const CHUNK: usize = 64 * 1024;

/// `GET /recordings/{*key}` — the secret-protected local copy, with single-range requests.
/// Accepts the key with or without its `recordings/` prefix.
pub async fn serve_recording(State(app): State<AppState>, Path(key): Path<String>, headers: HeaderMap) -> Response {
    if !crate::auth::authorized(&headers, app.settings.secret.as_deref()) {
        return (StatusCode::FORBIDDEN, "forbidden").into_response();
    }
    let key = if key.starts_with("recordings/") { key } else { format!("recordings/{key}") };
    let Some(path) = recording_path(&app.settings.data_dir, &key) else {
        return not_found();
    };
    let mut file = match tokio::fs::File::open(&path).await {
        Ok(f) => f,
        Err(_) => return not_found(),
    };
    let meta = match file.metadata().await {
        Ok(m) if m.is_file() => m,
        _ => return not_found(),
    };
    let size = meta.len();
    let name = key.rsplit('/').next().unwrap_or("recording.wav").to_string();
    let range = headers.get(header::RANGE).and_then(|v| v.to_str().ok()).map(|v| parse_range(v, size));
    let (status, start, len) = match range {
        None | Some(RangeSpec::Ignore) => (StatusCode::OK, 0, size),
        Some(RangeSpec::Unsatisfiable) => {
            return Response::builder()
                .status(StatusCode::RANGE_NOT_SATISFIABLE)
                .header(header::CONTENT_RANGE, format!("bytes */{size}"))
                .header(header::ACCEPT_RANGES, "bytes")
                .body(Body::empty())
                .unwrap_or_else(|_| StatusCode::INTERNAL_SERVER_ERROR.into_response());
        }
        Some(RangeSpec::Range(s, e)) => (StatusCode::PARTIAL_CONTENT, s, e - s + 1),
    };
    if start > 0 && file.seek(std::io::SeekFrom::Start(start)).await.is_err() {
        return StatusCode::INTERNAL_SERVER_ERROR.into_response();
    }
    let body = futures_util::stream::unfold((file, len), |(mut f, left)| async move {
        if left == 0 {
            return None;
        }
        let mut buf = vec![0u8; (left as usize).min(CHUNK)];
        match f.read(&mut buf).await {
            Ok(0) => Some((Err(std::io::Error::from(std::io::ErrorKind::UnexpectedEof)), (f, 0))),
            Ok(n) => {
                buf.truncate(n);
                Some((Ok(bytes::Bytes::from(buf)), (f, left - n as u64)))
            }
            Err(e) => Some((Err(e), (f, 0))),
        }
    });
    let mut resp = Response::new(Body::from_stream(body));
    *resp.status_mut() = status;
    let h = resp.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static("audio/wav"));
    h.insert(header::ACCEPT_RANGES, HeaderValue::from_static("bytes"));
    h.insert(header::CONTENT_LENGTH, HeaderValue::from(len));
    if let Ok(v) = HeaderValue::from_str(&format!("inline; filename=\"{name}\"")) {
        h.insert(header::CONTENT_DISPOSITION, v);
    }
    if status == StatusCode::PARTIAL_CONTENT {
        if let Ok(v) = HeaderValue::from_str(&format!("bytes {start}-{}/{size}", start + len - 1)) {
            h.insert(header::CONTENT_RANGE, v);
        }
    }
    resp
}

fn not_found() -> Response {
    (StatusCode::NOT_FOUND, "recording not found").into_response()
}

#[doc(hidden)]
#[derive(Debug, PartialEq, Eq)]
pub enum RangeSpec {
    /// Absent, malformed, another unit or several ranges: serve the whole file (RFC 9110 §14.2).
    Ignore,
    Unsatisfiable,
    /// Inclusive byte range.
    Range(u64, u64),
}

/// A `Range` header against a file of `size` bytes. Public for the fuzz targets; not a stable API.
#[doc(hidden)]
pub fn parse_range(v: &str, size: u64) -> RangeSpec {
    let Some(spec) = v.trim().strip_prefix("bytes=") else { return RangeSpec::Ignore };
    if spec.contains(',') {
        return RangeSpec::Ignore;
    }
    let Some((a, b)) = spec.trim().split_once('-') else { return RangeSpec::Ignore };
    let (a, b) = (a.trim(), b.trim());
    let num = |s: &str| if s.bytes().all(|c| c.is_ascii_digit()) { s.parse::<u64>().ok() } else { None };
    match (a.is_empty(), b.is_empty()) {
        (true, true) => RangeSpec::Ignore,
        (true, false) => match num(b) {
            None => RangeSpec::Ignore,
            Some(0) => RangeSpec::Unsatisfiable,
            Some(_) if size == 0 => RangeSpec::Unsatisfiable,
            Some(n) => RangeSpec::Range(size - n.min(size), size - 1),
        },
        (false, _) => {
            let Some(start) = num(a) else { return RangeSpec::Ignore };
            let end = if b.is_empty() {
                None
            } else {
                match num(b) {
                    Some(e) if e >= start => Some(e),
                    _ => return RangeSpec::Ignore,
                }
            };
            if start >= size {
                return RangeSpec::Unsatisfiable;
            }
            RangeSpec::Range(start, end.map_or(size - 1, |e| e.min(size - 1)))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser as _;

    #[test]
    fn ranges() {
        use RangeSpec::*;
        assert_eq!(parse_range("bytes=0-99", 1000), Range(0, 99));
        assert_eq!(parse_range("bytes=100-", 1000), Range(100, 999));
        assert_eq!(parse_range("bytes=-50", 1000), Range(950, 999));
        assert_eq!(parse_range("bytes=-5000", 1000), Range(0, 999));
        assert_eq!(parse_range("bytes=990-5000", 1000), Range(990, 999));
        assert_eq!(parse_range("bytes=1000-", 1000), Unsatisfiable);
        assert_eq!(parse_range("bytes=-0", 1000), Unsatisfiable);
        assert_eq!(parse_range("bytes=0-1,5-6", 1000), Ignore);
        assert_eq!(parse_range("bytes=5-1", 1000), Ignore);
        assert_eq!(parse_range("items=0-1", 1000), Ignore);
        assert_eq!(parse_range("bytes=x-1", 1000), Ignore);
        assert_eq!(parse_range("bytes=+1-2", 1000), Ignore);
        assert_eq!(parse_range("bytes=0-0", 0), Unsatisfiable);
    }

    #[test]
    fn partial_recordings_are_recovered() {
        let dir = tempfile::tempdir().unwrap();
        let part = dir.path().join("recordings/2025/01/02/crashed.wav.part");
        std::fs::create_dir_all(part.parent().unwrap()).unwrap();
        // A recording killed mid-call: header checkpointed at 0 bytes, 1001 bytes of audio after.
        let mut rec = FileRecorder::create(&part, 8000, RecorderConfig::default()).unwrap();
        rec.customer(&[1; 160], Duration::from_millis(20));
        std::mem::forget(rec);
        let mut f = std::fs::OpenOptions::new().append(true).open(&part).unwrap();
        std::io::Write::write_all(&mut f, &[7u8; 1001]).unwrap();
        drop(f);
        let got = recover_partial(dir.path());
        assert_eq!(got, vec![("recordings/2025/01/02/crashed.wav".to_string(), 44 + 1000)]);
        let back = std::fs::read(dir.path().join("recordings/2025/01/02/crashed.wav")).unwrap();
        assert_eq!(back.len(), 1044);
        assert_eq!(u32::from_le_bytes(back[40..44].try_into().unwrap()), 1000);
        assert_eq!(u32::from_le_bytes(back[4..8].try_into().unwrap()), 1036);
        assert!(!part.exists());
    }

    #[test]
    fn a_headerless_partial_recording_is_removed_not_left_behind() {
        let dir = tempfile::tempdir().unwrap();
        let part = dir.path().join("recordings/2025/01/02/torn.wav.part");
        std::fs::create_dir_all(part.parent().unwrap()).unwrap();
        std::fs::write(&part, b"RIFF\x00").unwrap();
        assert!(recover_partial(dir.path()).is_empty());
        assert!(!part.exists());
        assert!(storage::partial_recordings(dir.path()).is_empty());
    }

    #[test]
    fn settings_and_urls() {
        let mut s = Settings::parse_from(["cxb-core"]).storage;
        s.s3_bucket = None;
        s.s3_public_base_url = None;
        assert!(!s.uploads_enabled());
        assert!(s.s3_config().is_none());
        assert_eq!(s.recording_url("recordings/a.wav"), None);
        s.s3_bucket = Some("recs".into());
        s.s3_endpoint = Some("http://127.0.0.1:9000".into());
        s.s3_access_key_id = Some("ak".into());
        s.s3_secret_access_key = Some("sk".into());
        let c = s.s3_config().unwrap().unwrap();
        assert!(c.path_style, "custom endpoints default to path-style");
        assert_eq!(c.part_size, 8 << 20);
        assert_eq!(s.recording_url("recordings/a.wav").as_deref(), Some("http://127.0.0.1:9000/recs/recordings/a.wav"));
        s.s3_public_base_url = Some("https://cdn.example.com/".into());
        assert_eq!(s.recording_url("recordings/a.wav").as_deref(), Some("https://cdn.example.com/recordings/a.wav"));
    }
}
