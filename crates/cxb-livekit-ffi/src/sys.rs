//! Every `unsafe` of this crate: loading `liblivekit_ffi`, calling its C ABI, the event callback
//! the engine calls from its own threads, and reading audio buffers the engine owns.
//!
//! The C ABI (rust-sdks `livekit-ffi/src/cabi.rs`):
//! ```c
//! void        livekit_ffi_initialize(void (*cb)(const uint8_t*, size_t), bool capture_logs,
//!                                    const char *sdk, const char *sdk_version);
//! FfiHandleId livekit_ffi_request(const uint8_t *data, size_t len,
//!                                 const uint8_t **res_ptr, size_t *res_len);
//! bool        livekit_ffi_drop_handle(FfiHandleId handle_id);
//! ```
//! A request is a serialized `FfiRequest`; the engine answers with a serialized `FfiResponse`
//! that stays valid until the returned handle is dropped. Asynchronous results and room events
//! arrive as serialized `FfiEvent`s through the callback, on engine threads.

use std::ffi::{c_char, CString};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::Path;
use std::sync::OnceLock;

use crate::proto;

type CallbackFn = unsafe extern "C" fn(data: *const u8, len: usize);
type InitializeFn =
    unsafe extern "C" fn(cb: CallbackFn, capture_logs: bool, sdk: *const c_char, sdk_version: *const c_char);
type RequestFn = unsafe extern "C" fn(data: *const u8, len: usize, res_ptr: *mut *const u8, res_len: *mut usize) -> u64;
type DropHandleFn = unsafe extern "C" fn(handle_id: u64) -> bool;

/// The engine's "no handle" value: a request it could not decode or handle.
pub(crate) const INVALID_HANDLE: u64 = 0;

/// Largest audio buffer accepted from the engine: 1 s of 48 kHz stereo. The engine delivers
/// 10–20 ms frames; anything bigger means a corrupt message, not audio.
const MAX_ENGINE_SAMPLES: u64 = 48_000 * 2;

/// Receives the bytes of every `FfiEvent`. Runs on engine threads: it must not block.
pub(crate) type EventSink = Box<dyn Fn(&[u8]) + Send + Sync>;

/// Where [`on_event`] delivers. The C callback carries no user pointer, so the sink is global;
/// the engine itself is a process-wide singleton too.
static EVENT_SINK: OnceLock<EventSink> = OnceLock::new();

/// A loaded `liblivekit_ffi` with its entry points resolved.
pub(crate) struct Library {
    initialize: InitializeFn,
    request: RequestFn,
    drop_handle: DropHandleFn,
    /// Keeps the code behind the function pointers mapped. Never dropped while the pointers are
    /// usable: the engine lives in a process-wide static (see `engine::ENGINE`), because engine
    /// threads may still call [`on_event`] at any time and the library cannot be unloaded safely.
    _lib: libloading::Library,
}

impl Library {
    /// Loads the shared library at `path` and resolves the four functions of the C ABI.
    pub(crate) fn load(path: &Path) -> Result<Library, String> {
        // SAFETY: loading runs the library's initialisers. The path is the operator's choice
        // (LIVEKIT_FFI_LIB or the fetch script's pinned, hash-checked download); there is no safe
        // way to load native code, and a file that is not a library fails here with an error.
        let lib =
            unsafe { libloading::Library::new(path) }.map_err(|e| format!("cannot load {}: {e}", path.display()))?;
        let missing =
            |name: &str, e: libloading::Error| format!("{} is not liblivekit_ffi: no {name} ({e})", path.display());
        // SAFETY: the symbol types match the C ABI documented at the top of this module (rust-sdks
        // cabi.rs, identical in the header shipped with the wheel). The copied function pointers
        // are used only while `lib` is alive, since they are stored beside it.
        unsafe {
            let initialize = *lib
                .get::<InitializeFn>(b"livekit_ffi_initialize\0")
                .map_err(|e| missing("livekit_ffi_initialize", e))?;
            let request =
                *lib.get::<RequestFn>(b"livekit_ffi_request\0").map_err(|e| missing("livekit_ffi_request", e))?;
            let drop_handle = *lib
                .get::<DropHandleFn>(b"livekit_ffi_drop_handle\0")
                .map_err(|e| missing("livekit_ffi_drop_handle", e))?;
            Ok(Library { initialize, request, drop_handle, _lib: lib })
        }
    }

    /// Starts the engine with `sink` receiving every event. Only the first call in a process
    /// installs a sink; later calls fail, as the engine supports one client per process.
    pub(crate) fn initialize(&self, sink: EventSink, sdk: &str, sdk_version: &str) -> Result<(), String> {
        if EVENT_SINK.set(sink).is_err() {
            return Err("the LiveKit engine is already initialised in this process".into());
        }
        let sdk = CString::new(sdk).map_err(|_| "sdk name contains NUL".to_string())?;
        let version = CString::new(sdk_version).map_err(|_| "sdk version contains NUL".to_string())?;
        // SAFETY: `on_event` matches the callback type, never unwinds and never blocks. The two
        // strings are valid NUL-terminated C strings for the duration of the call; the engine
        // copies them (`CStr::to_string_lossy().into_owned()`).
        unsafe { (self.initialize)(on_event, true, sdk.as_ptr(), version.as_ptr()) };
        Ok(())
    }

    /// Sends one serialized `FfiRequest` and returns the serialized `FfiResponse`, or `None` when
    /// the engine rejected the request (it logs why through the log events).
    pub(crate) fn request(&self, request: &[u8]) -> Option<Vec<u8>> {
        let mut res_ptr: *const u8 = std::ptr::null();
        let mut res_len: usize = 0;
        // SAFETY: `request` is a live slice for the duration of the call; the out-pointers point
        // at our two locals. The engine does not keep `request` past the call (it decodes it
        // into an owned message first).
        let handle = unsafe { (self.request)(request.as_ptr(), request.len(), &mut res_ptr, &mut res_len) };
        if handle == INVALID_HANDLE {
            return None;
        }
        let response = if res_ptr.is_null() {
            Vec::new()
        } else {
            // SAFETY: on success the engine stores the response buffer under `handle` and points
            // `res_ptr`/`res_len` at it; it stays valid until that handle is dropped below.
            unsafe { std::slice::from_raw_parts(res_ptr, res_len) }.to_vec()
        };
        self.drop_handle(handle);
        Some(response)
    }

    /// Releases an engine-owned object. Returns whether the handle existed.
    pub(crate) fn drop_handle(&self, handle: u64) -> bool {
        // SAFETY: takes a plain integer; unknown handles are reported as `false`, not UB.
        unsafe { (self.drop_handle)(handle) }
    }
}

/// The C callback. Copies nothing itself: the sink decodes (and so copies) the message, since
/// the engine frees `data` as soon as this returns.
unsafe extern "C" fn on_event(data: *const u8, len: usize) {
    // A panic must not unwind into the engine's (foreign) frames: catch it and drop the event.
    let _ = catch_unwind(AssertUnwindSafe(|| {
        if data.is_null() {
            return;
        }
        // SAFETY: the engine passes a buffer of `len` bytes valid for the duration of the call
        // (`let data = event.encode_to_vec(); cb(data.as_ptr(), data.len())`).
        let bytes = unsafe { std::slice::from_raw_parts(data, len) };
        if let Some(sink) = EVENT_SINK.get() {
            sink(bytes);
        }
    }));
}

/// Copies the samples of an audio frame the engine delivered in an `AudioStreamEvent`.
///
/// Must only be given a buffer taken from an event the engine sent to [`on_event`], before the
/// frame's `OwnedAudioFrameBuffer` handle is dropped: that handle keeps the memory alive. Returns
/// `None` for a buffer that cannot be a real frame (null, misaligned, or implausibly large).
pub(crate) fn copy_engine_audio(info: &proto::AudioFrameBufferInfo) -> Option<Vec<i16>> {
    let samples = u64::from(info.num_channels).checked_mul(u64::from(info.samples_per_channel))?;
    if samples == 0 {
        return Some(Vec::new());
    }
    if info.data_ptr == 0 || samples > MAX_ENGINE_SAMPLES {
        return None;
    }
    let ptr = usize::try_from(info.data_ptr).ok()? as *const i16;
    if !ptr.is_aligned() {
        return None;
    }
    // SAFETY: the engine owns an interleaved i16 buffer of num_channels × samples_per_channel
    // samples at data_ptr, kept alive by the frame's handle, which the caller has not dropped yet
    // (the Python SDK reads it the same way: `(c_int16 * size).from_address(data_ptr)`). The
    // pointer is non-null and aligned and the length bounded, checked above.
    let samples = unsafe { std::slice::from_raw_parts(ptr, samples as usize) };
    Some(samples.to_vec())
}
