//! LiveKit calls (contract §6.3–§6.7): SIP inbound (`/livekit/dispatch`), SIP outbound
//! (`/livekit/dialout`), campaign attach (`/attach`) and the browser widget (`/livekit/widget`).
//!
//! Rooms are reached only through [`cxb_livekit::room::RoomConnector`]: in production LiveKit's
//! FFI engine (`cxb-livekit-ffi`), in tests an in-memory fake. The server API (tokens, SIP
//! dial-out, REFER, participant removal) is `cxb_livekit::ServerApi` over Twirp.

mod cxb_api;
mod room_link;
mod routes;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use cxb_livekit::room::RoomConnector;
use cxb_livekit::{ServerApi, ServerApiConfig};
use tracing::{info, warn};

pub use cxb_api::{CxbApi, LookupError, OutboundTrunk, SipLookup};
pub use room_link::{CallerMatch, RoomLink};
pub use routes::routes;
#[doc(hidden)]
pub use routes::{check_body, BodyRoute, Rejection};

/// LiveKit calls run at 16 kHz (contract §11).
pub const SAMPLE_RATE: u32 = 16_000;

/// `LIVEKIT_*` and the LiveKit call settings.
#[derive(educe::Educe, Clone, clap::Args)]
#[educe(Debug)]
pub struct LiveKitSettings {
    /// LiveKit server (`wss://…`). Unset: the LiveKit routes answer 503.
    #[arg(long, env = "LIVEKIT_URL")]
    pub livekit_url: Option<String>,
    #[arg(long, env = "LIVEKIT_API_KEY", hide_env_values = true)]
    #[educe(Debug(method(crate::settings::redact)))]
    pub livekit_api_key: Option<String>,
    #[arg(long, env = "LIVEKIT_API_SECRET", hide_env_values = true)]
    #[educe(Debug(method(crate::settings::redact)))]
    pub livekit_api_secret: Option<String>,
    /// CXB API base (`https://…/api/v1`) for SIP lookups, minimal results and Agent Desk.
    /// Default: derived from CXB_API_CONFIG_URL (its `/config` suffix removed).
    #[arg(long, env = "CXB_API_URL")]
    pub api_url: Option<String>,
    /// Country code for dial-out numbers and `phone_number` transfer targets written without one
    /// (`09876…` / `98765…` → `+91…`). Empty: numbers are dialled as given.
    #[arg(long, env = "CXBCORE_DEFAULT_COUNTRY_CODE", default_value = "91")]
    pub default_country_code: String,
    /// How long a dial-out rings before it counts as `no_answer`, in seconds.
    #[arg(long, env = "CXBCORE_DIALOUT_RING_TIMEOUT_S", default_value_t = 45)]
    pub dialout_ring_timeout_s: u64,
    /// A dial-out whose pipeline dies within this window is failed as `error` before ringing.
    #[arg(long, env = "CXBCORE_DIALOUT_ALIVE_CHECK_MS", default_value_t = 2000)]
    pub dialout_alive_check_ms: u64,
    /// Bound on the CXB API lookups (`/sip/lookup`, `/sip/outbound-trunk`) and on the LiveKit
    /// calls made before a route answers, in milliseconds.
    #[arg(long, env = "CXBCORE_LIVEKIT_LOOKUP_TIMEOUT_MS", default_value_t = 4000)]
    pub lookup_timeout_ms: u64,
    /// Bound on joining a room, in milliseconds.
    #[arg(long, env = "CXBCORE_LIVEKIT_JOIN_TIMEOUT_MS", default_value_t = 10_000)]
    pub join_timeout_ms: u64,
    /// Path of `liblivekit_ffi` (default: fetched by scripts/fetch-livekit-ffi.sh).
    #[arg(long, env = "CXBCORE_LIVEKIT_FFI_LIB")]
    pub ffi_lib: Option<PathBuf>,
    /// Hold music for Agent Desk handoffs (WAV; a built-in chime when missing).
    #[arg(long, env = "CXBCORE_HOLD_AUDIO", default_value = "assets/audio/hold-music.wav")]
    pub hold_audio: PathBuf,
    /// Spoken when a call is handed to Agent Desk, and repeated while the caller waits.
    #[arg(
        long,
        env = "CXBCORE_HOLD_MESSAGE",
        default_value = "Please stay on the line. An agent will be with you shortly."
    )]
    pub hold_message: String,
    /// Seconds between hold-message reminders (0: say it once).
    #[arg(long, env = "CXBCORE_HOLD_REMINDER_S", default_value_t = 45)]
    pub hold_reminder_s: u64,
    /// Longest a caller waits on hold for an agent, in seconds.
    #[arg(long, env = "CXBCORE_HOLD_MAX_S", default_value_t = 1200)]
    pub hold_max_s: u64,
}

impl LiveKitSettings {
    pub fn country_code(&self) -> Option<&str> {
        Some(self.default_country_code.trim()).filter(|c| !c.is_empty())
    }
    pub fn lookup_timeout(&self) -> Duration {
        Duration::from_millis(self.lookup_timeout_ms.max(1))
    }
    pub fn join_timeout(&self) -> Duration {
        Duration::from_millis(self.join_timeout_ms.max(1))
    }
    pub fn ring_timeout(&self) -> Duration {
        Duration::from_secs(self.dialout_ring_timeout_s.clamp(1, 600))
    }
}

/// What the LiveKit routes need at run time; absent when `LIVEKIT_URL` is unset.
#[derive(Clone)]
pub struct LiveKit {
    /// The URL clients join (`LIVEKIT_URL`).
    pub url: String,
    pub server: ServerApi,
    pub connector: Arc<dyn RoomConnector>,
}

impl LiveKit {
    /// From the settings: `None` when LiveKit is not configured. Room media uses LiveKit's FFI
    /// engine; when its library cannot be loaded the connector reports that on every join (the
    /// routes then answer 503 instead of accepting calls they cannot carry).
    pub fn from_settings(s: &LiveKitSettings) -> Option<LiveKit> {
        let url = s.livekit_url.as_deref().map(str::trim).filter(|u| !u.is_empty())?.to_string();
        let (Some(key), Some(secret)) = (s.livekit_api_key.as_deref(), s.livekit_api_secret.as_deref()) else {
            warn!("LIVEKIT_URL is set but LIVEKIT_API_KEY / LIVEKIT_API_SECRET are not; LiveKit routes answer 503");
            return None;
        };
        let mut cfg = ServerApiConfig::new(url.clone(), key, secret);
        cfg.request_timeout = s.lookup_timeout();
        let server = match ServerApi::new(cfg) {
            Ok(api) => api,
            Err(e) => {
                warn!(error = %e, "LiveKit server API settings are invalid; LiveKit routes answer 503");
                return None;
            }
        };
        let engine = match &s.ffi_lib {
            Some(path) => cxb_livekit_ffi::FfiEngine::load(path),
            None => cxb_livekit_ffi::FfiEngine::load_default(),
        };
        let connector: Arc<dyn RoomConnector> = match engine {
            Ok(engine) => {
                info!(library = %engine.library_path().display(), "LiveKit FFI engine loaded");
                Arc::new(cxb_livekit_ffi::FfiConnector::new(engine))
            }
            Err(e) => {
                warn!(error = %e, "LiveKit room media is unavailable (run scripts/fetch-livekit-ffi.sh); LiveKit routes answer 503");
                Arc::new(Unavailable(e.to_string()))
            }
        };
        Some(LiveKit { url, server, connector })
    }

    /// Can rooms be joined at all?
    pub fn media_available(&self) -> bool {
        self.connector.is_available()
    }
}

/// A connector standing in for a room engine that could not be loaded.
struct Unavailable(String);

impl RoomConnector for Unavailable {
    fn connect(&self, _request: cxb_livekit::room::JoinRequest) -> cxb_livekit::room::ConnectFuture {
        let why = self.0.clone();
        Box::pin(async move { Err(cxb_livekit::room::RoomError::Unavailable(why)) })
    }

    fn is_available(&self) -> bool {
        false
    }
}
