//! The loaded engine: one per process, since `liblivekit_ffi` keeps a single global server and
//! its event callback carries no context pointer.

use std::path::{Path, PathBuf};
use std::sync::mpsc::{sync_channel, Receiver, TrySendError};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use cxb_livekit::room::RoomError;
use prost::Message as _;
use tokio::sync::oneshot;

use crate::dispatch::{Dispatcher, Job};
use crate::proto::{self, ffi_event::Message as Ev, ffi_request::Message as Req, ffi_response::Message as Resp};
use crate::sys;

/// Environment variable naming the library file to load.
pub const LIB_ENV: &str = "LIVEKIT_FFI_LIB";

/// Handles queued for release at most; beyond that they leak (counted and logged). The janitor
/// releases thousands per second, so this only fills if the engine itself hangs.
const JOB_QUEUE: usize = 16_384;
/// How long one captured frame may wait for room in the source's queue before we stop waiting.
/// The source holds at most its `queue_size_ms` of audio, so a healthy engine answers sooner.
const CAPTURE_TIMEOUT: Duration = Duration::from_secs(5);
/// Largest frame accepted by [`AudioSource::capture`]: one second of audio.
const MAX_FRAME_MS: u64 = 1000;

static ENGINE: OnceLock<Arc<FfiEngine>> = OnceLock::new();
static LOADING: Mutex<()> = Mutex::new(());

/// Where the library is loaded from when no path is given: `$LIVEKIT_FFI_LIB`, else where
/// `scripts/fetch-livekit-ffi.sh` puts it by default (`<workspace>/target/livekit-ffi/`).
pub fn default_library_path() -> PathBuf {
    match std::env::var_os(LIB_ENV) {
        Some(p) if !p.is_empty() => PathBuf::from(p),
        _ => default_fetch_dir().join("liblivekit_ffi.so"),
    }
}

/// `<workspace>/target/livekit-ffi`, the fetch script's default destination.
pub fn default_fetch_dir() -> PathBuf {
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
    manifest.parent().and_then(Path::parent).unwrap_or(manifest).join("target").join("livekit-ffi")
}

/// LiveKit's FFI engine, loaded and initialised. Cheap to share (`Arc`).
pub struct FfiEngine {
    lib: sys::Library,
    pub(crate) dispatcher: Arc<Dispatcher>,
    path: PathBuf,
}

impl std::fmt::Debug for FfiEngine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FfiEngine").field("path", &self.path).finish_non_exhaustive()
    }
}

impl FfiEngine {
    /// Loads [`default_library_path`].
    pub fn load_default() -> Result<Arc<FfiEngine>, RoomError> {
        FfiEngine::load(default_library_path())
    }

    /// Loads and initialises the engine from `path`. The engine is process-wide: once loaded,
    /// later calls return it again when they name the same file and fail for another one.
    /// A missing file, a file that is not a shared library, or a library without the LiveKit
    /// entry points all give [`RoomError::Unavailable`].
    pub fn load(path: impl AsRef<Path>) -> Result<Arc<FfiEngine>, RoomError> {
        let path = path.as_ref();
        let _guard = LOADING.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(engine) = ENGINE.get() {
            return engine.same_file(path).then(|| engine.clone()).ok_or_else(|| {
                RoomError::Unavailable(format!(
                    "the engine is already loaded from {}, cannot also load {}",
                    engine.path.display(),
                    path.display()
                ))
            });
        }
        if !path.is_file() {
            return Err(RoomError::Unavailable(format!(
                "{} not found (run scripts/fetch-livekit-ffi.sh, or set {LIB_ENV})",
                path.display()
            )));
        }
        let lib = sys::Library::load(path).map_err(RoomError::Unavailable)?;
        let (jobs_tx, jobs_rx) = sync_channel::<Job>(JOB_QUEUE);
        let dispatcher = Arc::new(Dispatcher::new(Box::new(move |job| match jobs_tx.try_send(job) {
            Ok(()) => true,
            Err(TrySendError::Full(_)) | Err(TrySendError::Disconnected(_)) => false,
        })));
        let path = path.canonicalize().unwrap_or_else(|_| path.to_path_buf());
        let engine = Arc::new(FfiEngine { lib, dispatcher: dispatcher.clone(), path });
        let janitor = engine.clone();
        std::thread::Builder::new()
            .name("livekit-ffi-janitor".into())
            .spawn(move || janitor.run_janitor(jobs_rx))
            .map_err(|e| RoomError::Unavailable(format!("cannot start the janitor thread: {e}")))?;
        let sink = dispatcher.clone();
        engine
            .lib
            .initialize(Box::new(move |bytes| sink.handle_bytes(bytes)), "rust", env!("CARGO_PKG_VERSION"))
            .map_err(RoomError::Unavailable)?;
        let _ = ENGINE.set(engine.clone());
        tracing::info!(path = %engine.path.display(), "livekit-ffi: engine loaded");
        Ok(engine)
    }

    /// The file the engine was loaded from.
    pub fn library_path(&self) -> &Path {
        &self.path
    }

    fn same_file(&self, path: &Path) -> bool {
        path.canonicalize().map(|p| p == self.path).unwrap_or(false)
    }

    /// Releases handles the callback threads could not (they must not call into the engine),
    /// and leaves rooms whose connect completed after the caller gave up.
    fn run_janitor(&self, jobs: Receiver<Job>) {
        for job in jobs {
            match job {
                Job::Drop(h) => {
                    self.lib.drop_handle(h);
                }
                Job::Disconnect { room, handles } => {
                    self.leave_room(room);
                    for h in handles {
                        self.lib.drop_handle(h);
                    }
                    self.lib.drop_handle(room);
                }
            }
        }
    }

    /// Asks the engine to leave `room` without waiting for it; the engine keeps its own
    /// reference while it does, so the room handle may be dropped right after.
    pub(crate) fn leave_room(&self, room: u64) -> Option<u64> {
        let req = proto::DisconnectRequest {
            room_handle: room,
            request_async_id: None,
            reason: Some(proto::DisconnectReason::ClientInitiated as i32),
        };
        match self.request(Req::Disconnect(req)) {
            Ok(Resp::Disconnect(r)) => {
                self.dispatcher.expect_ignored(r.async_id, "disconnect");
                Some(r.async_id)
            }
            Ok(_) => None,
            Err(e) => {
                tracing::warn!(error = %e, "livekit-ffi: disconnect request failed");
                None
            }
        }
    }

    /// Sends one request and returns the engine's response.
    pub(crate) fn request(&self, message: Req) -> Result<Resp, RoomError> {
        if self.dispatcher.poisoned() {
            return Err(RoomError::Unavailable("the LiveKit engine panicked earlier".into()));
        }
        let bytes = proto::FfiRequest { message: Some(message) }.encode_to_vec();
        let response = self
            .lib
            .request(&bytes)
            .ok_or_else(|| RoomError::Media("the LiveKit engine rejected the request".into()))?;
        proto::FfiResponse::decode(response.as_slice())
            .map_err(|e| RoomError::Media(format!("undecodable engine response: {e}")))?
            .message
            .ok_or_else(|| RoomError::Media("empty engine response".into()))
    }

    /// Releases an engine-owned object (from a thread of ours, never the callback thread).
    pub(crate) fn drop_handle(&self, handle: u64) {
        if handle != sys::INVALID_HANDLE {
            self.lib.drop_handle(handle);
        }
    }

    /// Waits (bounded) for the result of an asynchronous request.
    pub(crate) async fn wait(rx: oneshot::Receiver<Ev>, timeout: Duration, what: &str) -> Result<Ev, RoomError> {
        match tokio::time::timeout(timeout, rx).await {
            Ok(Ok(ev)) => Ok(ev),
            Ok(Err(_)) => Err(RoomError::Unavailable(format!("{what}: the engine dropped the request"))),
            Err(_) => Err(RoomError::Media(format!("{what}: no answer from the engine within {timeout:?}"))),
        }
    }

    /// Counters of what the event path had to drop.
    pub fn stats(&self) -> EngineStats {
        use std::sync::atomic::Ordering::Relaxed;
        let s = &self.dispatcher.stats;
        EngineStats {
            decode_errors: s.decode_errors.load(Relaxed),
            leaked_handles: s.leaked_handles.load(Relaxed),
            orphan_audio_dropped: s.orphan_audio_dropped.load(Relaxed),
        }
    }
}

/// Process-wide counters of the engine's event path.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct EngineStats {
    /// Events from the engine that did not decode as `FfiEvent`.
    pub decode_errors: u64,
    /// Handles never released because the janitor's queue was full.
    pub leaked_handles: u64,
    /// Remote audio frames dropped before their stream was registered.
    pub orphan_audio_dropped: u64,
}

/// A native audio source in the engine: PCM captured here is what a track created from it
/// plays. Usable without a room (the engine paces it in real time either way).
pub struct AudioSource {
    engine: Arc<FfiEngine>,
    handle: u64,
    sample_rate: u32,
    num_channels: u32,
    /// Bumped by [`clear`](Self::clear). Held while submitting a frame, so a frame queued before
    /// a clear is never submitted after it.
    epoch: Mutex<u64>,
}

impl std::fmt::Debug for AudioSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AudioSource")
            .field("handle", &self.handle)
            .field("sample_rate", &self.sample_rate)
            .field("num_channels", &self.num_channels)
            .finish()
    }
}

impl AudioSource {
    /// Creates a source of 16-bit PCM at `sample_rate` with `num_channels` interleaved channels
    /// that buffers up to `queue_ms` of audio before [`capture`](Self::capture) waits.
    pub fn new(engine: &Arc<FfiEngine>, sample_rate: u32, num_channels: u32, queue_ms: u32) -> Result<Self, RoomError> {
        if !(8_000..=48_000).contains(&sample_rate) || !(1..=2).contains(&num_channels) {
            return Err(RoomError::Media(format!("unsupported audio format {sample_rate} Hz × {num_channels}")));
        }
        let req = proto::NewAudioSourceRequest {
            r#type: proto::AudioSourceType::AudioSourceNative as i32,
            // Calls get their audio processed elsewhere (or not at all): no WebRTC APM here.
            options: Some(proto::AudioSourceOptions {
                echo_cancellation: false,
                noise_suppression: false,
                auto_gain_control: false,
                prefer_hardware: None,
            }),
            sample_rate: Some(sample_rate),
            num_channels: Some(num_channels),
            queue_size_ms: Some(queue_ms),
            platform_audio_handle: None,
        };
        let Resp::NewAudioSource(resp) = engine.request(Req::NewAudioSource(req))? else {
            return Err(RoomError::Media("unexpected response to NewAudioSourceRequest".into()));
        };
        let handle = resp.source.handle.id;
        if handle == sys::INVALID_HANDLE {
            return Err(RoomError::Media("the engine returned no audio source".into()));
        }
        Ok(AudioSource { engine: engine.clone(), handle, sample_rate, num_channels, epoch: Mutex::new(0) })
    }

    pub fn sample_rate(&self) -> u32 {
        self.sample_rate
    }

    pub fn num_channels(&self) -> u32 {
        self.num_channels
    }

    pub(crate) fn handle(&self) -> u64 {
        self.handle
    }

    pub(crate) fn epoch(&self) -> u64 {
        *self.epoch.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Checks that `pcm` is a whole number of frames of at most a second.
    pub(crate) fn validate(&self, pcm: &[i16]) -> Result<(), RoomError> {
        let max = self.sample_rate as u64 * self.num_channels as u64 * MAX_FRAME_MS / 1000;
        if pcm.is_empty() || pcm.len() % self.num_channels as usize != 0 || pcm.len() as u64 > max {
            return Err(RoomError::Media(format!(
                "audio frame of {} samples is not a whole number of {}-channel frames up to {MAX_FRAME_MS} ms",
                pcm.len(),
                self.num_channels
            )));
        }
        Ok(())
    }

    /// Queues `pcm` (interleaved, at the source's rate) and waits until the source has taken it,
    /// which is when its queue has room.
    pub async fn capture(&self, pcm: &[i16]) -> Result<(), RoomError> {
        self.validate(pcm)?;
        let epoch = self.epoch();
        self.capture_in_epoch(pcm.to_vec(), epoch).await.map(|_| ())
    }

    /// Captures `pcm` unless [`clear`](Self::clear) was called since `epoch` was read; returns
    /// whether it was submitted.
    pub(crate) async fn capture_in_epoch(&self, pcm: Vec<i16>, epoch: u64) -> Result<bool, RoomError> {
        let rx = {
            let current = self.epoch.lock().unwrap_or_else(|e| e.into_inner());
            if *current != epoch {
                return Ok(false);
            }
            let buffer = proto::AudioFrameBufferInfo {
                data_ptr: pcm.as_ptr() as u64,
                num_channels: self.num_channels,
                sample_rate: self.sample_rate,
                samples_per_channel: (pcm.len() / self.num_channels as usize) as u32,
            };
            let req = proto::CaptureAudioFrameRequest { source_handle: self.handle, buffer, request_async_id: None };
            let Resp::CaptureAudioFrame(resp) = self.engine.request(Req::CaptureAudioFrame(req))? else {
                return Err(RoomError::Media("unexpected response to CaptureAudioFrameRequest".into()));
            };
            // The engine may read `pcm` until its callback: the dispatcher owns the buffer from
            // here and frees it only then, even if this future is dropped or times out.
            self.engine.dispatcher.expect(resp.async_id, "capture_audio_frame", Some(pcm))
        };
        match FfiEngine::wait(rx, CAPTURE_TIMEOUT, "capture audio frame").await? {
            Ev::CaptureAudioFrame(cb) => match cb.error {
                Some(e) => Err(RoomError::Media(format!("capture audio frame: {e}"))),
                None => Ok(true),
            },
            _ => Err(RoomError::Media("unexpected callback to CaptureAudioFrameRequest".into())),
        }
    }

    /// Drops audio queued in the source but not yet played (barge-in).
    pub fn clear(&self) -> Result<(), RoomError> {
        let mut epoch = self.epoch.lock().unwrap_or_else(|e| e.into_inner());
        *epoch += 1;
        let req = proto::ClearAudioBufferRequest { source_handle: self.handle };
        match self.engine.request(Req::ClearAudioBuffer(req))? {
            Resp::ClearAudioBuffer(_) => Ok(()),
            _ => Err(RoomError::Media("unexpected response to ClearAudioBufferRequest".into())),
        }
    }
}

impl Drop for AudioSource {
    fn drop(&mut self) {
        self.engine.drop_handle(self.handle);
    }
}
