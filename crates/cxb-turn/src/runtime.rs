//! Where the ONNX Runtime library and the models live, and loading the runtime.
//!
//! `ort`'s `load-dynamic` mode opens the library lazily on first use and *panics* if it is
//! missing or too old. So before handing the path to `ort`, it is opened here once with
//! `libloading`, its `OrtGetApiBase` is called and the version checked; every failure becomes a
//! [`TurnError`]. ONNX Runtime is process-global: the first successful initialisation wins and
//! later calls are no-ops, whatever path they name.

use std::path::{Path, PathBuf};

use crate::TurnError;

/// Env var naming the ONNX Runtime shared library (overrides the models directory).
pub const ENV_ONNXRUNTIME_LIB: &str = "CXB_ONNXRUNTIME_LIB";
/// Env var naming the directory `scripts/fetch-models.sh` filled.
pub const ENV_MODELS_DIR: &str = "CXB_MODELS_DIR";
/// Silero VAD model file name in the models directory.
pub const SILERO_MODEL_FILE: &str = "silero_vad.onnx";
/// Smart Turn model file name in the models directory.
pub const SMART_TURN_MODEL_FILE: &str = "smart-turn-v3.2-cpu.onnx";
/// Whether this build has the `onnx` feature.
pub const ONNX_ENABLED: bool = cfg!(feature = "onnx");

/// `$CXB_MODELS_DIR`, else the fetch script's default `target/models` of the workspace this
/// crate was built in (convenient for development and tests; deployments set the env var).
pub fn models_dir() -> PathBuf {
    match std::env::var_os(ENV_MODELS_DIR) {
        Some(dir) if !dir.is_empty() => PathBuf::from(dir),
        _ => Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target/models"),
    }
}

/// `$CXB_ONNXRUNTIME_LIB`, else `libonnxruntime.so` in [`models_dir`].
pub fn onnxruntime_lib_path() -> PathBuf {
    match std::env::var_os(ENV_ONNXRUNTIME_LIB) {
        Some(path) if !path.is_empty() => PathBuf::from(path),
        _ => models_dir().join("libonnxruntime.so"),
    }
}

/// [`SILERO_MODEL_FILE`] in [`models_dir`].
pub fn silero_model_path() -> PathBuf {
    models_dir().join(SILERO_MODEL_FILE)
}

/// [`SMART_TURN_MODEL_FILE`] in [`models_dir`].
pub fn smart_turn_model_path() -> PathBuf {
    models_dir().join(SMART_TURN_MODEL_FILE)
}

/// Load ONNX Runtime from [`onnxruntime_lib_path`]. Idempotent; the model constructors call it.
pub fn init_onnxruntime() -> Result<(), TurnError> {
    init_onnxruntime_from(&onnxruntime_lib_path())
}

/// Load ONNX Runtime from `path`. Idempotent: once loaded (from any path), returns `Ok`.
#[cfg(not(feature = "onnx"))]
pub fn init_onnxruntime_from(_path: &Path) -> Result<(), TurnError> {
    Err(TurnError::OnnxDisabled("ONNX Runtime"))
}

/// Load ONNX Runtime from `path`. Idempotent: once loaded (from any path), returns `Ok`.
#[cfg(feature = "onnx")]
pub fn init_onnxruntime_from(path: &Path) -> Result<(), TurnError> {
    onnx::init(path)
}

/// Checks a model file exists before ONNX Runtime reports it in its own terms.
#[cfg(feature = "onnx")]
pub(crate) fn require_model(path: &Path) -> Result<(), TurnError> {
    if path.is_file() {
        Ok(())
    } else {
        Err(TurnError::ModelMissing { path: path.to_path_buf() })
    }
}

#[cfg(feature = "onnx")]
mod onnx {
    use std::ffi::CStr;
    use std::path::{Path, PathBuf};
    use std::sync::Mutex;

    use ort::session::builder::GraphOptimizationLevel;
    use ort::session::Session;

    use crate::TurnError;

    /// The library ONNX Runtime was loaded from, once it was.
    static LOADED: Mutex<Option<PathBuf>> = Mutex::new(None);

    pub(super) fn init(path: &Path) -> Result<(), TurnError> {
        // A poisoned lock only means another thread panicked mid-init; the Option is still valid.
        let mut loaded = LOADED.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(from) = loaded.as_ref() {
            if from.as_path() != path {
                tracing::debug!(loaded = %from.display(), requested = %path.display(), "ONNX Runtime already loaded");
            }
            return Ok(());
        }
        if !path.is_file() {
            return Err(TurnError::RuntimeMissing { path: path.to_path_buf() });
        }
        // ort resolves relative paths against the executable's directory; pass an absolute one.
        let path = path
            .canonicalize()
            .map_err(|e| TurnError::RuntimeLoad { path: path.to_path_buf(), reason: e.to_string() })?;
        let version = preflight(&path)?;
        let committed = ort::init_from(path.to_string_lossy())
            .with_name("cxb-turn")
            .with_telemetry(false)
            .commit()
            .map_err(|e| TurnError::RuntimeLoad { path: path.clone(), reason: e.to_string() })?;
        tracing::info!(path = %path.display(), %version, committed, "ONNX Runtime loaded");
        *loaded = Some(path);
        Ok(())
    }

    /// Open the library, find `OrtGetApiBase`, and check the version is one `ort` can use (the
    /// checks `ort` would otherwise make with a panic).
    fn preflight(path: &Path) -> Result<String, TurnError> {
        let load_err = |reason: String| TurnError::RuntimeLoad { path: path.to_path_buf(), reason };
        // SAFETY: loading ONNX Runtime runs its initialisers, which have no preconditions; the
        // file was chosen by the operator (env var) or placed by the fetch script after a hash
        // check.
        let lib = unsafe { libloading::Library::new(path) }.map_err(|e| load_err(e.to_string()))?;
        // SAFETY: the symbol's type is the C declaration `const OrtApiBase* OrtGetApiBase(void)`.
        let get_base =
            unsafe { lib.get::<unsafe extern "system" fn() -> *const ort::sys::OrtApiBase>(b"OrtGetApiBase\0") }
                .map_err(|e| load_err(format!("not an ONNX Runtime library: {e}")))?;
        // SAFETY: OrtGetApiBase takes no arguments and returns a pointer to a static struct.
        let base = unsafe { get_base() };
        if base.is_null() {
            return Err(load_err("OrtGetApiBase returned null".into()));
        }
        // SAFETY: `base` is non-null and points to ONNX Runtime's static OrtApiBase, whose
        // GetVersionString returns a static NUL-terminated string.
        let version = unsafe { CStr::from_ptr(((*base).GetVersionString)()) }.to_string_lossy().into_owned();
        let minor = version.split('.').nth(1).and_then(|m| m.parse::<u32>().ok()).unwrap_or(0);
        if !version.starts_with("1.") || minor < ort::MINOR_VERSION {
            return Err(TurnError::RuntimeVersion {
                path: path.to_path_buf(),
                found: version,
                needed: ort::MINOR_VERSION,
            });
        }
        // `lib` is dropped here; ort opens the same file again (the loader keeps one copy).
        Ok(version)
    }

    /// One single-threaded session: a call's models run sequentially, and calls run in parallel
    /// on the machine's cores (pipecat uses the same settings).
    pub(crate) fn session(model: &'static str, path: &Path) -> Result<Session, TurnError> {
        let err = |e: ort::Error| TurnError::Model { model, message: e.to_string() };
        Session::builder()
            .map_err(err)?
            .with_optimization_level(GraphOptimizationLevel::Level3)
            .map_err(err)?
            .with_intra_threads(1)
            .map_err(err)?
            .with_inter_threads(1)
            .map_err(err)?
            .with_parallel_execution(false)
            .map_err(err)?
            .commit_from_file(path)
            .map_err(err)
    }
}

#[cfg(feature = "onnx")]
pub(crate) use onnx::session;
