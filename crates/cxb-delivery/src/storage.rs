//! Recording storage: the S3-compatible uploader (an outbox [`Deliverer`] for kind
//! [`RECORDING_KIND`]), recording keys and local paths, and the local-retention sweeper.
//!
//! # Flow
//! The call writes `{data_dir}/recordings/YYYY/MM/DD/{session}.wav` (the path mirrors the
//! object key `recordings/YYYY/MM/DD/{session}.wav`, so the key is known before the upload), then
//! enqueues a custom outbox entry `{"key": …, "bytes": …}`. The outbox persists it (fsync) and
//! calls [`S3Uploader`] until the upload succeeds — through storage outages, wrong credentials
//! (alarmed, retried until fixed or dead-lettered after the outbox `max_age`) and restarts. After
//! a successful upload a `{file}.uploaded` marker is written next to the recording;
//! [`RetentionSweeper`] deletes the local copy `retention` after that, and keeps local disk use
//! under `max_bytes` (deleting the oldest uploaded copies early; never a copy that is not in
//! object storage — it raises the disk alarm instead).
//!
//! # Uploads
//! Files up to `multipart_threshold` go in one `PutObject`; larger ones as a multipart upload of
//! `part_size` parts (at most [`PART_CONCURRENCY`] in flight), aborted on failure. Re-uploading
//! is harmless (same key, same bytes), which makes the deliverer idempotent as the outbox needs.
//! Request checksums are only sent when an operation requires them: several S3-compatible
//! stores reject the SDK's default streaming CRC trailers.

use std::collections::BTreeMap;
use std::fs;
use std::future::Future;
use std::io;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use aws_sdk_s3::config::retry::RetryConfig;
use aws_sdk_s3::config::timeout::TimeoutConfig;
use aws_sdk_s3::config::{
    BehaviorVersion, Credentials, Region, RequestChecksumCalculation, ResponseChecksumValidation,
};
use aws_sdk_s3::error::{DisplayErrorContext, ProvideErrorMetadata, SdkError};
use aws_sdk_s3::primitives::{ByteStream, Length};
use aws_sdk_s3::types::{CompletedMultipartUpload, CompletedPart};
use chrono::{DateTime, Datelike, Utc};
use futures_util::{StreamExt as _, TryStreamExt as _};
use metrics::{counter, gauge, histogram};
use serde::{Deserialize, Serialize};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, info, warn};

use crate::outbox::{Deliverer, Entry, NewEntry, Outcome, Target};

/// Outbox kind of recording uploads.
pub const RECORDING_KIND: &str = "recording";
/// First path segment of every recording key (and directory under the data dir).
pub const KEY_PREFIX: &str = "recordings";
/// Suffix of the marker written next to a recording once it is in object storage.
pub const UPLOADED_SUFFIX: &str = ".uploaded";
/// Suffix of a recording still being written (or left by a crash).
pub const PARTIAL_SUFFIX: &str = ".part";
/// Content type of recordings.
pub const CONTENT_TYPE: &str = "audio/wav";
/// Multipart parts uploaded concurrently.
pub const PART_CONCURRENCY: usize = 4;
/// S3's minimum part size (except the last part).
pub const MIN_PART_SIZE: u64 = 5 * 1024 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    #[error("invalid storage setting: {0}")]
    Config(String),
    #[error("invalid recording key {0:?}")]
    Key(String),
    #[error("storage I/O error on {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

// ----- keys and paths -----

/// File-name-safe form of a session id: ASCII letters, digits, `-`, `_` and `.` (not leading)
/// are kept, anything else becomes `_`; at most 128 characters; never empty.
pub fn sanitize_session_id(session_id: &str) -> String {
    let mut s: String = session_id
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.' { c } else { '_' })
        .take(128)
        .collect();
    if s.starts_with('.') {
        s.replace_range(0..1, "_");
    }
    if s.is_empty() {
        s.push('_');
    }
    s
}

/// The object key `recordings/{YYYY}/{MM}/{DD}/{session_id}.wav` (UTC date of the call start).
pub fn recording_key(session_id: &str, started_at: DateTime<Utc>) -> String {
    format!(
        "{KEY_PREFIX}/{:04}/{:02}/{:02}/{}.wav",
        started_at.year(),
        started_at.month(),
        started_at.day(),
        sanitize_session_id(session_id)
    )
}

fn valid_segment(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 160
        && !s.starts_with('.')
        && s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.')
}

/// Validates a recording key: `recordings/…/name.wav`, 2–6 segments of `[A-Za-z0-9._-]`, none
/// empty or starting with a dot (so no `..`, no hidden files, no absolute paths).
pub fn valid_key(key: &str) -> bool {
    let segs: Vec<&str> = key.split('/').collect();
    (2..=6).contains(&segs.len())
        && segs[0] == KEY_PREFIX
        && segs.iter().all(|s| valid_segment(s))
        && segs.last().is_some_and(|s| s.ends_with(".wav") && s.len() > 4)
}

/// Local file of a recording key under `data_dir` (the path mirrors the key), or None for an
/// invalid key. Never escapes `data_dir/recordings`.
pub fn recording_path(data_dir: &Path, key: &str) -> Option<PathBuf> {
    valid_key(key).then(|| key.split('/').fold(data_dir.to_path_buf(), |p, s| p.join(s)))
}

fn with_suffix(path: &Path, suffix: &str) -> PathBuf {
    let mut s = path.as_os_str().to_owned();
    s.push(suffix);
    PathBuf::from(s)
}

/// The marker written next to `wav` after a successful upload.
pub fn uploaded_marker(wav: &Path) -> PathBuf {
    with_suffix(wav, UPLOADED_SUFFIX)
}

/// The in-progress name of `wav`.
pub fn partial_path(wav: &Path) -> PathBuf {
    with_suffix(wav, PARTIAL_SUFFIX)
}

/// Outbox payload of a recording upload.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct UploadJob {
    /// Object key (and, under the data dir, the local path).
    pub key: String,
    /// Size of the local file when enqueued.
    pub bytes: u64,
}

/// The outbox entry for uploading `key` (entry key = recording key, for listing and dedupe).
pub fn upload_entry(job: &UploadJob) -> NewEntry {
    NewEntry::custom(
        RECORDING_KIND,
        job.key.clone(),
        serde_json::to_value(job).expect("UploadJob serializes infallibly"),
    )
}

// ----- S3 uploader -----

/// Connection settings of the S3-compatible store.
#[derive(Clone)]
pub struct S3Config {
    /// `http(s)://host[:port]`; None for AWS's regional endpoint.
    pub endpoint: Option<String>,
    pub bucket: String,
    pub region: String,
    pub access_key_id: String,
    pub secret_access_key: String,
    /// Path-style addressing (`endpoint/bucket/key`), needed by MinIO-style stores.
    pub path_style: bool,
    /// Single PutObject up to this size; multipart above (default 16 MiB).
    pub multipart_threshold: u64,
    /// Multipart part size (default 8 MiB, at least 5 MiB).
    pub part_size: u64,
    /// Connect timeout per request (default 5 s).
    pub connect_timeout: Duration,
    /// Bound on one request (PutObject or one part), default 5 min.
    pub request_timeout: Duration,
    /// SDK-level attempts per request (default 2); the outbox retries beyond that.
    pub sdk_attempts: u32,
}

impl std::fmt::Debug for S3Config {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("S3Config")
            .field("endpoint", &self.endpoint)
            .field("bucket", &self.bucket)
            .field("region", &self.region)
            .field("access_key_id", &self.access_key_id)
            .field("secret_access_key", &"<redacted>")
            .field("path_style", &self.path_style)
            .field("multipart_threshold", &self.multipart_threshold)
            .field("part_size", &self.part_size)
            .finish()
    }
}

impl S3Config {
    pub fn new(bucket: impl Into<String>, access_key_id: impl Into<String>, secret: impl Into<String>) -> S3Config {
        S3Config {
            endpoint: None,
            bucket: bucket.into(),
            region: "us-east-1".into(),
            access_key_id: access_key_id.into(),
            secret_access_key: secret.into(),
            path_style: false,
            multipart_threshold: 16 * 1024 * 1024,
            part_size: 8 * 1024 * 1024,
            connect_timeout: Duration::from_secs(5),
            request_timeout: Duration::from_secs(300),
            sdk_attempts: 2,
        }
    }

    fn validate(&self) -> Result<(), StorageError> {
        let bad = |m: String| Err(StorageError::Config(m));
        if self.bucket.trim().is_empty() {
            return bad("bucket is empty".into());
        }
        if self.access_key_id.is_empty() || self.secret_access_key.is_empty() {
            return bad("access key id and secret access key are required".into());
        }
        if let Some(e) = &self.endpoint {
            if !(e.starts_with("http://") || e.starts_with("https://")) {
                return bad(format!("endpoint {e:?} must start with http:// or https://"));
            }
        }
        if self.part_size < MIN_PART_SIZE {
            return bad(format!("part size must be at least {MIN_PART_SIZE} bytes"));
        }
        if self.multipart_threshold < self.part_size {
            return bad("multipart threshold must be at least the part size".into());
        }
        Ok(())
    }

    /// Canonical object URL of `key` (what `recording_url` carries without a public base URL).
    pub fn object_url(&self, key: &str) -> String {
        match &self.endpoint {
            Some(ep) => {
                let ep = ep.trim_end_matches('/');
                if self.path_style {
                    format!("{ep}/{}/{key}", self.bucket)
                } else {
                    let (scheme, host) = ep.split_once("://").unwrap_or(("https", ep));
                    format!("{scheme}://{}.{host}/{key}", self.bucket)
                }
            }
            None => format!("https://{}.s3.{}.amazonaws.com/{key}", self.bucket, self.region),
        }
    }
}

/// Upload health, for alarms and tests.
#[derive(Clone, Debug, Default, Serialize)]
pub struct UploadHealth {
    pub uploads: u64,
    pub failures: u64,
    pub consecutive_failures: u64,
    /// Raised by an authentication/configuration error or 3 failures in a row; cleared by a success.
    pub alarm: bool,
    pub last_error: Option<String>,
}

/// Consecutive failures that raise the alarm even for transient errors.
const ALARM_AFTER_FAILURES: u64 = 3;

/// Uploads recordings to an S3-compatible bucket; register it with
/// `outbox.register(RECORDING_KIND, Arc::new(uploader))`.
pub struct S3Uploader {
    client: aws_sdk_s3::Client,
    cfg: S3Config,
    data_dir: PathBuf,
    uploads: AtomicU64,
    failures: AtomicU64,
    consecutive: AtomicU64,
    alarm: AtomicBool,
    last_error: Mutex<Option<String>>,
}

/// Why an attempt failed, and whether it points at configuration rather than an outage.
struct Failure {
    reason: String,
    config: bool,
    fatal: bool,
}

impl S3Uploader {
    /// Builds the client (no network I/O). Local files are found under `data_dir`.
    pub fn new(cfg: S3Config, data_dir: impl Into<PathBuf>) -> Result<S3Uploader, StorageError> {
        cfg.validate()?;
        let mut b = aws_sdk_s3::Config::builder()
            .behavior_version(BehaviorVersion::latest())
            .region(Region::new(cfg.region.clone()))
            .credentials_provider(Credentials::new(
                cfg.access_key_id.clone(),
                cfg.secret_access_key.clone(),
                None,
                None,
                "cxb-core-settings",
            ))
            .force_path_style(cfg.path_style)
            .request_checksum_calculation(RequestChecksumCalculation::WhenRequired)
            .response_checksum_validation(ResponseChecksumValidation::WhenRequired)
            .retry_config(RetryConfig::standard().with_max_attempts(cfg.sdk_attempts.max(1)))
            .timeout_config(
                TimeoutConfig::builder()
                    .connect_timeout(cfg.connect_timeout)
                    .operation_attempt_timeout(cfg.request_timeout)
                    .build(),
            );
        if let Some(ep) = &cfg.endpoint {
            b = b.endpoint_url(ep.trim_end_matches('/'));
        }
        Ok(S3Uploader {
            client: aws_sdk_s3::Client::from_conf(b.build()),
            cfg,
            data_dir: data_dir.into(),
            uploads: AtomicU64::new(0),
            failures: AtomicU64::new(0),
            consecutive: AtomicU64::new(0),
            alarm: AtomicBool::new(false),
            last_error: Mutex::new(None),
        })
    }

    pub fn config(&self) -> &S3Config {
        &self.cfg
    }

    pub fn health(&self) -> UploadHealth {
        UploadHealth {
            uploads: self.uploads.load(Ordering::Relaxed),
            failures: self.failures.load(Ordering::Relaxed),
            consecutive_failures: self.consecutive.load(Ordering::Relaxed),
            alarm: self.alarm.load(Ordering::Relaxed),
            last_error: self.last_error.lock().unwrap_or_else(|p| p.into_inner()).clone(),
        }
    }

    /// Uploads one local file to `key` (PutObject or multipart by size).
    pub async fn upload_file(&self, path: &Path, key: &str) -> Result<u64, String> {
        self.upload(path, key).await.map_err(|f| f.reason)
    }

    async fn upload(&self, path: &Path, key: &str) -> Result<u64, Failure> {
        let size = tokio::fs::metadata(path)
            .await
            .map_err(|e| Failure { reason: format!("stat {}: {e}", path.display()), config: false, fatal: false })?
            .len();
        if size <= self.cfg.multipart_threshold {
            let body = ByteStream::from_path(path).await.map_err(|e| Failure {
                reason: format!("read {}: {e}", path.display()),
                config: false,
                fatal: false,
            })?;
            self.client
                .put_object()
                .bucket(&self.cfg.bucket)
                .key(key)
                .content_type(CONTENT_TYPE)
                .content_length(size as i64)
                .body(body)
                .send()
                .await
                .map_err(|e| classify("PutObject", e))?;
        } else {
            self.multipart(path, key, size).await?;
        }
        Ok(size)
    }

    async fn multipart(&self, path: &Path, key: &str, size: u64) -> Result<(), Failure> {
        let created = self
            .client
            .create_multipart_upload()
            .bucket(&self.cfg.bucket)
            .key(key)
            .content_type(CONTENT_TYPE)
            .send()
            .await
            .map_err(|e| classify("CreateMultipartUpload", e))?;
        let upload_id = created.upload_id().unwrap_or_default().to_string();
        if upload_id.is_empty() {
            return Err(Failure {
                reason: "CreateMultipartUpload returned no upload id".into(),
                config: false,
                fatal: false,
            });
        }
        let part = self.cfg.part_size;
        let count = size.div_ceil(part);
        let parts = futures_util::stream::iter(0..count)
            .map(|i| {
                let upload_id = upload_id.clone();
                async move {
                    let offset = i * part;
                    let len = part.min(size - offset);
                    let body = ByteStream::read_from()
                        .path(path)
                        .offset(offset)
                        .length(Length::Exact(len))
                        .build()
                        .await
                        .map_err(|e| Failure {
                            reason: format!("read {}: {e}", path.display()),
                            config: false,
                            fatal: false,
                        })?;
                    let number = i as i32 + 1;
                    let out = self
                        .client
                        .upload_part()
                        .bucket(&self.cfg.bucket)
                        .key(key)
                        .upload_id(&upload_id)
                        .part_number(number)
                        .content_length(len as i64)
                        .body(body)
                        .send()
                        .await
                        .map_err(|e| classify("UploadPart", e))?;
                    Ok::<_, Failure>(
                        CompletedPart::builder().set_e_tag(out.e_tag().map(str::to_owned)).part_number(number).build(),
                    )
                }
            })
            .buffered(PART_CONCURRENCY)
            .try_collect::<Vec<CompletedPart>>()
            .await;
        let completed = match parts {
            Ok(p) => self
                .client
                .complete_multipart_upload()
                .bucket(&self.cfg.bucket)
                .key(key)
                .upload_id(&upload_id)
                .multipart_upload(CompletedMultipartUpload::builder().set_parts(Some(p)).build())
                .send()
                .await
                .map_err(|e| classify("CompleteMultipartUpload", e))
                .map(|_| ()),
            Err(f) => Err(f),
        };
        if completed.is_err() {
            // Best effort: an abandoned upload only costs storage until a lifecycle rule cleans it.
            if let Err(e) = self
                .client
                .abort_multipart_upload()
                .bucket(&self.cfg.bucket)
                .key(key)
                .upload_id(&upload_id)
                .send()
                .await
            {
                debug!(%key, error = %DisplayErrorContext(&e), "could not abort multipart upload");
            }
        }
        completed
    }

    fn record_failure(&self, key: &str, f: &Failure) {
        self.failures.fetch_add(1, Ordering::Relaxed);
        let n = self.consecutive.fetch_add(1, Ordering::Relaxed) + 1;
        *self.last_error.lock().unwrap_or_else(|p| p.into_inner()) = Some(f.reason.clone());
        counter!("cxb_recording_uploads_total", "outcome" => "failed").increment(1);
        if f.config || n >= ALARM_AFTER_FAILURES {
            if !self.alarm.swap(true, Ordering::Relaxed) || f.config {
                error!(
                    %key, bucket = %self.cfg.bucket, consecutive_failures = n, error = %f.reason,
                    "RECORDING UPLOAD ALARM: recordings are not reaching object storage (kept locally and retried)"
                );
            }
            gauge!("cxb_recording_upload_alarm").set(1.0);
        } else {
            warn!(%key, error = %f.reason, "recording upload failed; will retry");
        }
    }

    fn record_success(&self, key: &str, bytes: u64, took: Duration) {
        self.uploads.fetch_add(1, Ordering::Relaxed);
        self.consecutive.store(0, Ordering::Relaxed);
        if self.alarm.swap(false, Ordering::Relaxed) {
            info!("recording uploads recovered; alarm cleared");
        }
        gauge!("cxb_recording_upload_alarm").set(0.0);
        counter!("cxb_recording_uploads_total", "outcome" => "ok").increment(1);
        counter!("cxb_recording_upload_bytes_total").increment(bytes);
        histogram!("cxb_recording_upload_seconds").record(took.as_secs_f64());
        info!(%key, bytes, took_ms = took.as_millis() as u64, "recording uploaded");
    }

    async fn deliver_job(&self, entry: &Entry) -> Outcome {
        let Target::Custom { data } = &entry.target else {
            return Outcome::Reject { reason: "recording entry is not a custom target".into(), body: None };
        };
        let job: UploadJob = match serde_json::from_value(data.clone()) {
            Ok(j) => j,
            Err(e) => return Outcome::Reject { reason: format!("invalid recording upload entry: {e}"), body: None },
        };
        let Some(path) = recording_path(&self.data_dir, &job.key) else {
            return Outcome::Reject { reason: format!("invalid recording key {:?}", job.key), body: None };
        };
        let marker = uploaded_marker(&path);
        if !tokio::fs::try_exists(&path).await.unwrap_or(false) {
            if tokio::fs::try_exists(&marker).await.unwrap_or(false) {
                return Outcome::Delivered; // uploaded before, local copy already retired
            }
            return Outcome::Reject {
                reason: format!("local recording {} is missing; nothing to upload", path.display()),
                body: None,
            };
        }
        let started = Instant::now();
        match self.upload(&path, &job.key).await {
            Ok(bytes) => {
                self.record_success(&job.key, bytes, started.elapsed());
                if let Err(e) = write_marker(&marker, &self.cfg.bucket).await {
                    // Harmless: the sweeper then keeps the local copy (treated as not uploaded).
                    warn!(path = %marker.display(), error = %e, "could not write the uploaded marker");
                }
                Outcome::Delivered
            }
            Err(f) => {
                self.record_failure(&job.key, &f);
                if f.fatal {
                    Outcome::Reject { reason: f.reason, body: None }
                } else {
                    Outcome::Retry { reason: f.reason, retry_after: None }
                }
            }
        }
    }
}

impl Deliverer for S3Uploader {
    fn deliver<'a>(&'a self, entry: &'a Entry) -> Pin<Box<dyn Future<Output = Outcome> + Send + 'a>> {
        Box::pin(self.deliver_job(entry))
    }
}

#[derive(Serialize, Deserialize)]
struct Marker {
    uploaded_at: DateTime<Utc>,
    bucket: String,
}

async fn write_marker(marker: &Path, bucket: &str) -> io::Result<()> {
    let body = serde_json::to_vec(&Marker { uploaded_at: Utc::now(), bucket: bucket.to_owned() })?;
    let tmp = with_suffix(marker, ".tmp");
    tokio::fs::write(&tmp, body).await?;
    tokio::fs::rename(&tmp, marker).await
}

/// Turns an SDK error into a retry reason; authentication and bucket errors raise the alarm at once.
fn classify<E: ProvideErrorMetadata + std::error::Error + 'static>(
    op: &'static str,
    e: SdkError<E, aws_sdk_s3::config::http::HttpResponse>,
) -> Failure {
    let status = e.raw_response().map(|r| r.status().as_u16());
    let code = e.code().map(str::to_owned);
    let config = matches!(status, Some(401 | 403))
        || matches!(
            code.as_deref(),
            Some(
                "InvalidAccessKeyId"
                    | "SignatureDoesNotMatch"
                    | "AccessDenied"
                    | "NoSuchBucket"
                    | "AuthorizationHeaderMalformed"
                    | "InvalidBucketName"
            )
        );
    let reason = match (status, code) {
        (Some(s), Some(c)) => format!("{op}: HTTP {s} {c}: {}", e.message().unwrap_or_default()),
        (Some(s), None) => format!("{op}: HTTP {s}"),
        _ => format!("{op}: {}", DisplayErrorContext(&e)),
    };
    // Everything is retried: credentials and buckets get fixed, outages end; the outbox
    // dead-letters after its max_age and the alarm makes sure someone looks.
    Failure { reason, config, fatal: false }
}

// ----- retention -----

/// Local-copy retention and disk bound for `data_dir/recordings`.
#[derive(Clone, Debug)]
pub struct RetentionConfig {
    pub data_dir: PathBuf,
    /// Keep an uploaded local copy this long after the upload (default 72 h).
    pub retention: Duration,
    /// Bound on local recording bytes (default 20 GiB).
    pub max_bytes: u64,
    /// Fraction of `max_bytes` that raises the disk alarm (default 0.8).
    pub alarm_ratio: f64,
    /// Sweep period (default 5 min).
    pub interval: Duration,
}

impl RetentionConfig {
    pub fn new(data_dir: impl Into<PathBuf>) -> RetentionConfig {
        RetentionConfig {
            data_dir: data_dir.into(),
            retention: Duration::from_secs(72 * 3600),
            max_bytes: 20 << 30,
            alarm_ratio: 0.8,
            interval: Duration::from_secs(300),
        }
    }
}

/// What one sweep saw and did.
#[derive(Clone, Debug, Default, Serialize)]
pub struct SweepReport {
    /// Recording files on disk (finished + in progress) after the sweep.
    pub files: u64,
    pub bytes: u64,
    /// Bytes of recordings not (yet) in object storage (never deleted by the sweeper).
    pub not_uploaded_bytes: u64,
    pub deleted: u64,
    pub deleted_bytes: u64,
    /// `bytes >= alarm_ratio × max_bytes` after the sweep.
    pub alarm: bool,
}

/// Deletes uploaded local copies after the retention period and keeps disk use bounded.
pub struct RetentionSweeper {
    cfg: RetentionConfig,
}

struct Found {
    wav: PathBuf,
    bytes: u64,
    uploaded_at: Option<SystemTime>,
}

impl RetentionSweeper {
    pub fn new(cfg: RetentionConfig) -> RetentionSweeper {
        RetentionSweeper { cfg }
    }

    /// One blocking pass over `data_dir/recordings`.
    pub fn sweep(&self) -> SweepReport {
        let root = self.cfg.data_dir.join(KEY_PREFIX);
        let mut found = Vec::new();
        let mut other_bytes = 0u64;
        let mut other_files = 0u64;
        walk(&root, 0, &mut |path, meta| {
            let name = path.file_name().and_then(|n| n.to_str()).unwrap_or_default();
            if name.ends_with(".wav") {
                let uploaded_at = fs::metadata(uploaded_marker(path)).and_then(|m| m.modified()).ok();
                found.push(Found { wav: path.to_path_buf(), bytes: meta.len(), uploaded_at });
            } else if let Some(wav) = name.strip_suffix(UPLOADED_SUFFIX) {
                if !path.with_file_name(wav).exists() {
                    let _ = fs::remove_file(path); // orphan marker
                }
            } else {
                // In-progress (`.part`) recordings and anything else count against the budget.
                other_bytes += meta.len();
                other_files += 1;
            }
        });
        let now = SystemTime::now();
        let mut report = SweepReport::default();
        let mut kept: BTreeMap<(SystemTime, PathBuf), u64> = BTreeMap::new();
        for f in found {
            match f.uploaded_at {
                Some(at) if now.duration_since(at).unwrap_or_default() >= self.cfg.retention => {
                    self.delete(&f.wav, f.bytes, &mut report);
                }
                Some(at) => {
                    kept.insert((at, f.wav), f.bytes);
                }
                None => {
                    report.not_uploaded_bytes += f.bytes;
                    report.files += 1;
                    report.bytes += f.bytes;
                }
            }
        }
        let mut total = report.bytes + other_bytes + kept.values().sum::<u64>();
        // Over budget: retire uploaded copies early, oldest upload first.
        let mut kept = kept.into_iter();
        while total > self.cfg.max_bytes {
            let Some(((_, wav), bytes)) = kept.next() else { break };
            warn!(path = %wav.display(), "recordings disk budget exceeded: deleting an uploaded local copy early");
            self.delete(&wav, bytes, &mut report);
            total -= bytes;
        }
        for (_, bytes) in kept {
            report.files += 1;
            report.bytes += bytes;
        }
        report.files += other_files;
        report.bytes += other_bytes;
        report.alarm = report.bytes as f64 >= self.cfg.max_bytes as f64 * self.cfg.alarm_ratio;
        gauge!("cxb_recordings_local_bytes").set(report.bytes as f64);
        gauge!("cxb_recordings_local_files").set(report.files as f64);
        gauge!("cxb_recordings_not_uploaded_bytes").set(report.not_uploaded_bytes as f64);
        gauge!("cxb_recordings_disk_alarm").set(if report.alarm { 1.0 } else { 0.0 });
        if report.alarm {
            error!(
                bytes = report.bytes,
                max_bytes = self.cfg.max_bytes,
                not_uploaded_bytes = report.not_uploaded_bytes,
                "RECORDINGS DISK ALARM: local recordings near or over their budget (copies not yet in object storage are never deleted)"
            );
        }
        report
    }

    fn delete(&self, wav: &Path, bytes: u64, report: &mut SweepReport) {
        match fs::remove_file(wav) {
            Ok(()) => {
                let _ = fs::remove_file(uploaded_marker(wav));
                report.deleted += 1;
                report.deleted_bytes += bytes;
                counter!("cxb_recordings_deleted_total").increment(1);
                debug!(path = %wav.display(), "local recording copy retired");
                // Drop emptied day/month/year directories (fails harmlessly when not empty).
                let root = self.cfg.data_dir.join(KEY_PREFIX);
                let mut dir = wav.parent();
                while let Some(d) = dir {
                    if d == root || !d.starts_with(&root) || fs::remove_dir(d).is_err() {
                        break;
                    }
                    dir = d.parent();
                }
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => warn!(path = %wav.display(), error = %e, "could not delete a local recording copy"),
        }
    }

    /// Sweeps now and then every `interval` until `shutdown`.
    pub fn spawn(self, shutdown: CancellationToken) -> JoinHandle<()> {
        let me = Arc::new(self);
        tokio::spawn(async move {
            loop {
                let m = me.clone();
                if let Err(e) = tokio::task::spawn_blocking(move || m.sweep()).await {
                    error!(error = %e, "recordings retention sweep failed");
                }
                tokio::select! {
                    _ = shutdown.cancelled() => break,
                    _ = tokio::time::sleep(me.cfg.interval) => {}
                }
            }
        })
    }
}

/// Visits regular files under `dir` (depth-limited, symlinks not followed).
fn walk(dir: &Path, depth: usize, f: &mut dyn FnMut(&Path, &fs::Metadata)) {
    if depth > 6 {
        return;
    }
    let Ok(rd) = fs::read_dir(dir) else { return };
    for item in rd.flatten() {
        let path = item.path();
        let Ok(meta) = fs::symlink_metadata(&path) else { continue };
        if meta.is_dir() {
            walk(&path, depth + 1, f);
        } else if meta.is_file() {
            f(&path, &meta);
        }
    }
}

/// Recordings left `.part` by a crash (or still being written — call at startup, before any
/// call): `(key, partial path)`. Repair with `cxb_audio::recorder::repair_wav_header`, then rename
/// to the key's path.
pub fn partial_recordings(data_dir: &Path) -> Vec<(String, PathBuf)> {
    let root = data_dir.join(KEY_PREFIX);
    let mut parts = Vec::new();
    walk(&root, 0, &mut |path, _| {
        if path.to_str().is_some_and(|p| p.ends_with(&format!(".wav{PARTIAL_SUFFIX}"))) {
            parts.push(path.to_path_buf());
        }
    });
    let mut out = Vec::new();
    for part in parts {
        let wav = part.with_extension(""); // strips ".part"
        let Ok(rel) = wav.strip_prefix(data_dir) else { continue };
        let key = rel.to_string_lossy().replace(std::path::MAIN_SEPARATOR, "/");
        if valid_key(&key) {
            out.push((key, part));
        }
    }
    out.sort();
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone as _;

    #[test]
    fn keys_and_paths() {
        let t = Utc.with_ymd_and_hms(2025, 3, 7, 23, 59, 0).unwrap();
        assert_eq!(recording_key("abc-123", t), "recordings/2025/03/07/abc-123.wav");
        assert_eq!(recording_key("../../etc/passwd", t), "recordings/2025/03/07/_._.._etc_passwd.wav");
        assert_eq!(recording_key("", t), "recordings/2025/03/07/_.wav");
        assert!(valid_key(&recording_key("../x", t)));
        assert!(valid_key("recordings/2025/03/07/a.wav"));
        for bad in [
            "recordings/../secret.wav",
            "recordings/2025/../../x.wav",
            "/recordings/2025/a.wav",
            "recordings//a.wav",
            "outbox/pending/a.wav",
            "recordings/2025/03/07/a.wav.part",
            "recordings/2025/03/07/a.wav.uploaded",
            "recordings/2025/03/07/.wav",
            "recordings/a\\..\\b.wav",
            "recordings/2025/03/07/a b.wav",
        ] {
            assert!(!valid_key(bad), "{bad}");
            assert!(recording_path(Path::new("/d"), bad).is_none());
        }
        assert_eq!(
            recording_path(Path::new("/d"), "recordings/2025/03/07/a.wav").unwrap(),
            Path::new("/d/recordings/2025/03/07/a.wav")
        );
    }

    #[test]
    fn object_urls() {
        let mut c = S3Config::new("recs", "k", "s");
        assert_eq!(c.object_url("recordings/a.wav"), "https://recs.s3.us-east-1.amazonaws.com/recordings/a.wav");
        c.endpoint = Some("http://127.0.0.1:9000/".into());
        c.path_style = true;
        assert_eq!(c.object_url("recordings/a.wav"), "http://127.0.0.1:9000/recs/recordings/a.wav");
        c.endpoint = Some("https://sgp1.digitaloceanspaces.com".into());
        c.path_style = false;
        assert_eq!(c.object_url("recordings/a.wav"), "https://recs.sgp1.digitaloceanspaces.com/recordings/a.wav");
        c.part_size = 1024;
        assert!(c.validate().is_err());
    }

    fn touch(path: &Path, bytes: usize) {
        fs::create_dir_all(path.parent().unwrap()).unwrap();
        fs::write(path, vec![0u8; bytes]).unwrap();
    }

    fn set_mtime(path: &Path, ago: Duration) {
        let f = fs::File::options().write(true).open(path).unwrap();
        f.set_modified(SystemTime::now() - ago).unwrap();
    }

    #[test]
    fn sweeper_retires_uploaded_copies_and_bounds_disk() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let p = |k: &str| recording_path(d, k).unwrap();
        let old = p("recordings/2025/01/01/old.wav");
        let fresh = p("recordings/2025/01/02/fresh.wav");
        let local = p("recordings/2025/01/02/local.wav");
        let newer = p("recordings/2025/01/02/newer.wav");
        touch(&old, 1000);
        touch(&fresh, 1000);
        touch(&local, 1000);
        touch(&newer, 1000);
        touch(&uploaded_marker(&old), 10);
        set_mtime(&uploaded_marker(&old), Duration::from_secs(3 * 3600));
        touch(&uploaded_marker(&fresh), 10);
        set_mtime(&uploaded_marker(&fresh), Duration::from_secs(600));
        touch(&uploaded_marker(&newer), 10);
        touch(&partial_path(&p("recordings/2025/01/02/live.wav")), 500);
        touch(&uploaded_marker(&p("recordings/2025/01/02/gone.wav")), 10);

        let mut cfg = RetentionConfig::new(d);
        cfg.retention = Duration::from_secs(3600);
        cfg.max_bytes = 1_000_000;
        let r = RetentionSweeper::new(cfg.clone()).sweep();
        assert_eq!(r.deleted, 1);
        assert!(!old.exists() && !uploaded_marker(&old).exists());
        assert!(!d.join("recordings/2025/01/01").exists(), "empty day directory removed");
        assert!(fresh.exists() && local.exists() && newer.exists());
        assert!(!uploaded_marker(&p("recordings/2025/01/02/gone.wav")).exists(), "orphan marker removed");
        assert_eq!(r.bytes, 3500);
        assert_eq!(r.not_uploaded_bytes, 1000);
        assert!(!r.alarm);

        // Over budget: uploaded copies go early (oldest upload first), local-only ones never.
        cfg.max_bytes = 1800;
        let r = RetentionSweeper::new(cfg.clone()).sweep();
        assert!(!fresh.exists(), "oldest uploaded copy retired early");
        assert!(!newer.exists());
        assert!(local.exists());
        assert_eq!(r.bytes, 1500);
        assert!(r.alarm, "1500 of 1800 bytes is past the 80 % alarm");
        cfg.max_bytes = 1000;
        let r = RetentionSweeper::new(cfg).sweep();
        assert!(local.exists(), "a copy that is not in object storage is never deleted");
        assert!(r.alarm);
    }

    #[test]
    fn partial_recordings_are_listed() {
        let dir = tempfile::tempdir().unwrap();
        let wav = recording_path(dir.path(), "recordings/2025/01/02/crashed.wav").unwrap();
        touch(&partial_path(&wav), 100);
        touch(&dir.path().join("recordings/2025/01/02/done.wav"), 100);
        touch(&dir.path().join("recordings/2025/01/02/odd name.wav.part"), 100);
        assert_eq!(
            partial_recordings(dir.path()),
            vec![("recordings/2025/01/02/crashed.wav".to_string(), partial_path(&wav))]
        );
    }
}
