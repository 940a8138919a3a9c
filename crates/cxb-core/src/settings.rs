//! Worker settings: documented env names, parsed once into typed settings (also `--help`).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;
use cxb_providers::registry::{self, ProviderKeys};
use educe::Educe;

/// cxb-core: the fleet worker of a contact-centre voice-AI platform.
///
/// Every setting can be given as a flag or as the environment variable shown.
#[derive(Educe, Clone, Parser)]
#[educe(Debug)]
#[command(name = "cxb-core", version, about, long_about = None, after_help = registry::keys_help())]
pub struct Settings {
    /// Address to listen on.
    #[arg(long, env = "LISTEN_ADDR", default_value = "0.0.0.0:8080")]
    pub listen_addr: SocketAddr,

    /// Base URL of the CXB API config endpoint (e.g. https://api.cxbridge.io/api/v1/config).
    /// Unset: embedded default (bot files from --bots-dir, results to --data-dir/results).
    #[arg(long, env = "CXB_API_CONFIG_URL")]
    pub config_url: Option<String>,

    /// Shared secret for the X-CXBCore-Secret / X-CXB-Core-Secret headers.
    #[arg(long, env = "CXBCORE_SECRET", hide_env_values = true)]
    #[educe(Debug(method(crate::settings::redact)))]
    pub secret: Option<String>,

    /// Concurrent calls this process accepts (CallTracker slots).
    #[arg(long, env = "MAX_CONCURRENT_CALLS", default_value_t = 500)]
    pub max_concurrent_calls: u64,

    /// Worker count reported by /health (`workers`); 1 for a single process.
    #[arg(long, env = "CXBCORE_WORKERS", default_value_t = 1)]
    pub workers: u64,

    /// This worker's id in /health and /health/fleet.
    #[arg(long, env = "CXBCORE_WORKER_ID", default_value = "1")]
    pub worker_id: String,

    /// Other local workers' base URLs (comma-separated) aggregated by /health/fleet.
    #[arg(long, env = "CXBCORE_FLEET_PEERS", value_delimiter = ',')]
    pub fleet_peers: Vec<String>,

    /// Cap `fleet_available` at 16 in /health/fleet for HAProxy checks that still use the
    /// documented `([1-9]|1[0-6])` pattern (contract §13.1).
    #[arg(long, env = "CXBCORE_HEALTH_CAP16", default_value_t = false)]
    pub health_cap16: bool,

    /// Directory of local bot files `<bot_id>.json` for the embedded default.
    #[arg(long, env = "CXBCORE_BOTS_DIR", default_value = "assets/bots")]
    pub bots_dir: PathBuf,

    /// Data directory: results/, outbox/, recordings/.
    #[arg(long, env = "CXBCORE_DATA_DIR", default_value = "data")]
    pub data_dir: PathBuf,

    /// Bound on the config fetch, in milliseconds.
    #[arg(long, env = "CXBCORE_CONFIG_TIMEOUT_MS", default_value_t = 5000)]
    pub config_timeout_ms: u64,

    /// Bound on the dialler handshake (connected → start → answer), in milliseconds.
    #[arg(long, env = "CXBCORE_HANDSHAKE_TIMEOUT_MS", default_value_t = 10000)]
    pub handshake_timeout_ms: u64,

    /// Largest accepted WebSocket message, in bytes (larger frames close the call with 1009).
    #[arg(long, env = "CXBCORE_MAX_FRAME_BYTES", default_value_t = 64 * 1024)]
    pub max_frame_bytes: usize,

    /// A caller that sends nothing (no audio, no events) for this long has vanished.
    #[arg(long, env = "CXBCORE_INBOUND_IDLE_TIMEOUT_MS", default_value_t = 15000)]
    pub inbound_idle_timeout_ms: u64,

    /// Bound on connecting to STT/TTS providers, in milliseconds.
    #[arg(long, env = "CXBCORE_PROVIDER_CONNECT_TIMEOUT_MS", default_value_t = 5000)]
    pub provider_connect_timeout_ms: u64,

    /// Bound on the LLM's first token and on each later chunk, in milliseconds.
    #[arg(long, env = "CXBCORE_LLM_TIMEOUT_MS", default_value_t = 10000)]
    pub llm_timeout_ms: u64,

    /// Log format: text or json.
    #[arg(long, env = "LOG_FORMAT", default_value = "text")]
    pub log_format: String,

    /// Async runtime threads; 0 = one per CPU.
    #[arg(long, env = "CXBCORE_RUNTIME_THREADS", default_value_t = 0)]
    pub runtime_threads: usize,

    /// Fallback API keys when a bot config's provider block has none: every vendor's
    /// `<VENDOR>_API_KEY` variable (listed at the end of `--help`), read by [`Self::resolve_aliases`].
    #[arg(skip)]
    pub provider_keys: ProviderKeys,

    /// Knowledge bases for the embedded default's `search_knowledge` tool: one folder per
    /// knowledge-base id holding `.md`/`.txt` documents, indexed at start and re-indexed on
    /// change. Unused when a CXB API is configured (it owns knowledge search).
    #[arg(long, env = "CXBCORE_KNOWLEDGE_DIR", default_value = cxb_knowledge::DEFAULT_KNOWLEDGE_DIR)]
    pub knowledge_dir: PathBuf,

    /// Bound on one knowledge search, in milliseconds (a slow search is a tool error the LLM
    /// sees, never a failed call).
    #[arg(long, env = "CXBCORE_KNOWLEDGE_TIMEOUT_MS", default_value_t = 3000)]
    pub knowledge_timeout_ms: u64,

    /// Base URL CXB API reaches this worker at (e.g. `https://fleet1.example.com`), for
    /// `recording_url` when no bucket or public URL gives one: `{base}/recordings/{key}`.
    /// Unset: `http://{listen address}`, with `0.0.0.0`/`::` replaced by the host name.
    #[arg(long, env = "CXBCORE_PUBLIC_URL")]
    pub public_url: Option<String>,

    /// On SIGTERM: seconds live calls may run to their natural end (new calls are refused; the
    /// worker exits as soon as the last result is persisted). Past it the worker ends the calls
    /// still live (hang-up, result as `error`). Default 660 = the longest call a bot may have by
    /// default (600 s) + 60 s for post-call and delivery; stop timeouts must outlast it.
    #[arg(long, env = "CXBCORE_DRAIN_SECS", default_value_t = 660)]
    pub drain_secs: u64,

    #[command(flatten)]
    pub outbox: OutboxSettings,

    #[command(flatten)]
    pub storage: crate::recordings::StorageSettings,

    #[command(flatten)]
    pub postcall: crate::postcall::PostCallSettings,

    #[command(flatten)]
    pub telephony: crate::transports::TelephonySettings,

    #[command(flatten)]
    pub livekit: crate::livekit::LiveKitSettings,

    #[command(subcommand)]
    pub command: Option<Command>,
}

/// Durable outbox settings (results, Agent Desk requests, recording uploads).
#[derive(Debug, Clone, clap::Args)]
pub struct OutboxSettings {
    /// Outbox directory (default: <data-dir>/outbox).
    #[arg(long, env = "CXBCORE_OUTBOX_DIR")]
    pub outbox_dir: Option<PathBuf>,
    /// Disk budget of pending + dead-letter entries, in bytes; enqueue fails beyond it and an
    /// alarm (log + `cxb_outbox_disk_alarm`) fires at 80 %.
    #[arg(long, env = "CXBCORE_OUTBOX_MAX_BYTES", default_value_t = 1 << 30)]
    pub outbox_max_bytes: u64,
    /// Deliveries in flight at once.
    #[arg(long, env = "CXBCORE_OUTBOX_CONCURRENCY", default_value_t = 16)]
    pub outbox_concurrency: usize,
    /// Per-attempt HTTP timeout, in milliseconds.
    #[arg(long, env = "CXBCORE_OUTBOX_TIMEOUT_MS", default_value_t = 10_000)]
    pub outbox_timeout_ms: u64,
    /// First retry delay (doubles per attempt, full jitter in [d/2, d]), in milliseconds.
    #[arg(long, env = "CXBCORE_OUTBOX_BACKOFF_BASE_MS", default_value_t = 1000)]
    pub outbox_backoff_base_ms: u64,
    /// Retry delay cap (also caps an honoured Retry-After), in milliseconds.
    #[arg(long, env = "CXBCORE_OUTBOX_BACKOFF_MAX_MS", default_value_t = 300_000)]
    pub outbox_backoff_max_ms: u64,
    /// Entries older than this go to dead-letter, in hours.
    #[arg(long, env = "CXBCORE_OUTBOX_MAX_AGE_HOURS", default_value_t = 72)]
    pub outbox_max_age_hours: u64,
}

/// Operator commands (they talk to a running worker's admin API).
#[derive(Debug, Clone, clap::Subcommand)]
pub enum Command {
    /// Inspect and operate the durable outbox of a running worker.
    Outbox {
        /// Base URL of the running worker.
        #[arg(long, env = "CXBCORE_ADMIN_URL", default_value = "http://127.0.0.1:8080")]
        url: String,
        #[command(subcommand)]
        op: OutboxOp,
    },
}

#[derive(Debug, Clone, clap::Subcommand)]
pub enum OutboxOp {
    /// List entries (pending by default).
    List {
        #[arg(long, default_value = "pending", value_parser = ["pending", "dead"])]
        state: String,
    },
    /// Show one entry, with its attempts and last response body.
    Show { id: String },
    /// Move a dead-letter entry back to pending (attempts reset).
    Replay { id: String },
    /// Delete an entry for good.
    Discard { id: String },
    /// Depth, oldest age, disk use.
    Stats,
}

/// Debug output of a secret setting: whether it is set, never its value.
pub(crate) fn redact(value: &Option<String>, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
    f.write_str(if value.is_some() { "<redacted>" } else { "None" })
}

impl Settings {
    /// Fill `public_url` from the bound address when it was not configured.
    pub fn derive_public_url(&mut self, bound: SocketAddr) {
        if self.public_url.as_deref().is_some_and(|u| !u.trim().is_empty()) {
            return;
        }
        let host = if bound.ip().is_unspecified() {
            host_name().unwrap_or_else(|| "127.0.0.1".into())
        } else if bound.is_ipv6() {
            format!("[{}]", bound.ip())
        } else {
            bound.ip().to_string()
        };
        self.public_url = Some(format!("http://{host}:{}", bound.port()));
    }

    /// `recording_url` for a recording key: object storage's URL when uploads give one, else
    /// this worker's own `/recordings/{key}` route (secret-protected).
    pub fn recording_url(&self, key: &str) -> Option<String> {
        self.storage.recording_url(key).or_else(|| {
            let base = self.public_url.as_deref()?.trim().trim_end_matches('/');
            (!base.is_empty()).then(|| format!("{base}/recordings/{key}"))
        })
    }

    /// What the flags do not read: `CONFIG_URL` (the documented alias of `CXB_API_CONFIG_URL`)
    /// and the provider API keys (the variables the provider registry names).
    pub fn resolve_aliases(mut self) -> Self {
        self.provider_keys = ProviderKeys::from_env();
        if self.config_url.is_none() {
            self.config_url = std::env::var("CONFIG_URL").ok().filter(|s| !s.trim().is_empty());
        }
        if self.config_url.as_deref().is_some_and(|s| s.trim().is_empty()) {
            self.config_url = None;
        }
        if self.secret.as_deref().is_some_and(|s| s.is_empty()) {
            self.secret = None;
        }
        self
    }

    pub fn config_timeout(&self) -> Duration {
        Duration::from_millis(self.config_timeout_ms)
    }
    pub fn handshake_timeout(&self) -> Duration {
        Duration::from_millis(self.handshake_timeout_ms)
    }
    pub fn inbound_idle_timeout(&self) -> Duration {
        Duration::from_millis(self.inbound_idle_timeout_ms)
    }
    /// The CXB API base (`…/api/v1`) for SIP lookups, minimal results and Agent Desk:
    /// `CXB_API_URL`, else derived from the config URL.
    pub fn api_base(&self) -> Option<String> {
        self.livekit
            .api_url
            .as_deref()
            .map(|u| u.trim_end_matches('/').to_string())
            .filter(|u| !u.is_empty())
            .or_else(|| self.config_url.as_deref().and_then(crate::call::api_base))
    }

    pub fn results_dir(&self) -> PathBuf {
        self.data_dir.join("results")
    }

    pub fn outbox_config(&self) -> cxb_delivery::OutboxConfig {
        let o = &self.outbox;
        let mut c =
            cxb_delivery::OutboxConfig::new(o.outbox_dir.clone().unwrap_or_else(|| self.data_dir.join("outbox")));
        c.max_bytes = o.outbox_max_bytes.max(1);
        c.max_concurrency = o.outbox_concurrency.max(1);
        c.request_timeout = Duration::from_millis(o.outbox_timeout_ms.max(1));
        c.backoff_base = Duration::from_millis(o.outbox_backoff_base_ms.max(1));
        c.backoff_max = Duration::from_millis(o.outbox_backoff_max_ms.max(o.outbox_backoff_base_ms.max(1)));
        c.max_age = Duration::from_secs(o.outbox_max_age_hours.max(1) * 3600);
        c
    }

    /// Settings for tests: loopback, tiny timeouts, a temp data dir.
    pub fn for_tests(data_dir: PathBuf) -> Self {
        let mut s = Settings::parse_from(["cxb-core"]);
        s.listen_addr = "127.0.0.1:0".parse().expect("static addr");
        s.data_dir = data_dir;
        s
    }
}

/// This machine's host name (what other hosts of the fleet usually resolve it by).
fn host_name() -> Option<String> {
    let mut buf = [0u8; 256];
    // SAFETY: the buffer is valid for its length; gethostname writes at most that many bytes.
    let rc = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) };
    if rc != 0 {
        return None;
    }
    let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
    let name = String::from_utf8_lossy(&buf[..end]).trim().to_string();
    (!name.is_empty()).then_some(name)
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    use super::*;

    /// Every setting whose environment value `--help` hides is a secret: set them all and
    /// check that none reaches the Debug output (logs, panics).
    #[test]
    fn debug_output_shows_no_secret() {
        let secret_flags: Vec<String> = Settings::command()
            .get_arguments()
            .filter(|a| a.is_hide_env_values_set())
            .filter_map(|a| a.get_long().map(str::to_string))
            .collect();
        for expected in ["secret", "s3-secret-access-key", "livekit-api-secret", "twilio-auth-token"] {
            assert!(secret_flags.iter().any(|f| f == expected), "{expected} is not marked secret: {secret_flags:?}");
        }
        let value = |i: usize| format!("sekrit-{i}-value");
        let mut argv = vec!["cxb-core".to_string()];
        for (i, flag) in secret_flags.iter().enumerate() {
            argv.extend([format!("--{flag}"), value(i)]);
        }
        let settings = Settings::try_parse_from(&argv).expect("the secret flags parse");
        let shown = format!("{settings:?}");
        for (i, flag) in secret_flags.iter().enumerate() {
            assert!(!shown.contains(&value(i)), "--{flag} shows in {shown}");
        }
        assert_eq!(shown.matches("<redacted>").count(), secret_flags.len());
        assert!(shown.contains("max_concurrent_calls: 500"), "other settings still show: {shown}");
    }

    #[test]
    fn recording_urls_fall_back_to_this_workers_route() {
        let mut s = Settings::for_tests(PathBuf::from("/tmp/x"));
        s.storage.s3_bucket = None;
        s.storage.s3_public_base_url = None;
        s.derive_public_url("10.0.0.5:8080".parse().unwrap());
        assert_eq!(s.public_url.as_deref(), Some("http://10.0.0.5:8080"));
        assert_eq!(
            s.recording_url("recordings/2026/12/07/s.wav").as_deref(),
            Some("http://10.0.0.5:8080/recordings/recordings/2026/12/07/s.wav")
        );
        // A configured URL is kept; a public storage URL wins over the worker's route.
        s.public_url = Some("https://fleet1.example.com/".into());
        s.derive_public_url("0.0.0.0:9".parse().unwrap());
        assert_eq!(s.recording_url("k.wav").as_deref(), Some("https://fleet1.example.com/recordings/k.wav"));
        s.storage.s3_public_base_url = Some("https://cdn.example.com".into());
        assert_eq!(s.recording_url("k.wav").as_deref(), Some("https://cdn.example.com/k.wav"));
    }

    #[test]
    fn an_unspecified_listen_address_is_replaced_by_the_host_name() {
        let mut s = Settings::for_tests(PathBuf::from("/tmp/x"));
        s.derive_public_url("0.0.0.0:8080".parse().unwrap());
        let url = s.public_url.unwrap();
        assert!(url.starts_with("http://") && url.ends_with(":8080"), "{url}");
        assert!(!url.contains("0.0.0.0"), "{url}");
    }

    #[test]
    fn help_lists_the_provider_key_variables_and_debug_hides_their_values() {
        let help = Settings::command().render_long_help().to_string();
        for name in ["DEEPGRAM_API_KEY", "OPENAI_API_KEY", "CARTESIA_API_KEY", "ELEVENLABS_API_KEY"] {
            assert!(help.contains(name), "{name} in --help");
        }
        let mut s = Settings::for_tests(PathBuf::from("data"));
        s.provider_keys = ProviderKeys::from_lookup(|n| (n == "OPENAI_API_KEY").then(|| "sk-SECRET".to_string()));
        let debug = format!("{s:?}");
        assert!(debug.contains("OPENAI_API_KEY") && !debug.contains("sk-SECRET"), "{debug}");
    }
}
