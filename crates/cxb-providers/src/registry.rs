//! The provider registry: one descriptor per vendor, and the only place a vendor name is matched.
//!
//! A descriptor holds what the rest of the worker needs to know about a vendor: its canonical
//! name and the aliases bot configs use for it (contract §13.8), the API root its SDK defaults
//! to (the client appends its own path), its default model, the environment variables its API
//! key may come from, what it can do ([`Capabilities`]), and the function that opens a stream
//! with it. [`crate::stt::connect`], [`crate::tts::connect`] and [`crate::llm::LlmClient::stream`]
//! dispatch through [`resolve`]; the worker's config resolver and its turn-detection check read
//! the same descriptors. Adding a vendor is one client file plus one entry in [`VENDORS`]
//! (docs/providers.md).

use std::collections::HashMap;
use std::fmt;

use cxb_wire::llm::ChatRequest;
use futures_util::future::BoxFuture;
use tokio::sync::mpsc;

use crate::llm::{LlmClient, LlmEvent, LlmParams};
use crate::stt::{SttEvent, SttHandle, SttParams};
use crate::tts::{TtsEvent, TtsHandle, TtsParams};
use crate::ProviderError;

/// Opens a streaming STT session (`async fn connect(&SttParams)` of a vendor file, boxed).
pub type SttConnect =
    for<'a> fn(&'a SttParams) -> BoxFuture<'a, Result<(SttHandle, mpsc::Receiver<SttEvent>), ProviderError>>;
/// Opens a TTS session (`async fn connect(&TtsParams)` of a vendor file, boxed).
pub type TtsConnect =
    for<'a> fn(&'a TtsParams) -> BoxFuture<'a, Result<(TtsHandle, mpsc::Receiver<TtsEvent>), ProviderError>>;
/// Runs one streaming chat request to its end, sending events to the channel (`async fn run` of
/// a vendor file, boxed), with the process-wide client (HTTP pool, tokens, prompt caches). The
/// task running it is aborted when the caller drops the stream.
pub type LlmRun = fn(LlmClient, LlmParams, ChatRequest, mpsc::Sender<LlmEvent>) -> BoxFuture<'static, ()>;
/// Makes a request's explicit prompt cache ready without generating (vendors whose caches are
/// created ahead of use).
pub type LlmPrewarm = fn(LlmClient, LlmParams, ChatRequest) -> BoxFuture<'static, ()>;

/// How an LLM vendor is spoken to.
#[derive(Clone, Copy)]
pub struct LlmDriver {
    pub run: LlmRun,
    pub prewarm: Option<LlmPrewarm>,
}

/// What a vendor is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Kind {
    Stt,
    Llm,
    Tts,
}

impl Kind {
    /// The bot-config block a provider of this kind is named in.
    pub fn block(self) -> &'static str {
        match self {
            Kind::Stt => "stt",
            Kind::Llm => "llm",
            Kind::Tts => "tts",
        }
    }

    /// The vendor used when a bot config names none.
    pub fn default_vendor(self) -> &'static Vendor {
        let name = match self {
            Kind::Stt => DEEPGRAM.name,
            Kind::Llm => OPENAI.name,
            Kind::Tts => CARTESIA.name,
        };
        find(self, name).expect("the default vendor of every kind is in the table")
    }
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Kind::Stt => "STT",
            Kind::Llm => "LLM",
            Kind::Tts => "TTS",
        })
    }
}

/// The function that talks to the vendor; its variant is the vendor's [`Kind`].
#[derive(Clone, Copy)]
pub enum Client {
    Stt(SttConnect),
    Llm(LlmDriver),
    Tts(TtsConnect),
}

/// What a vendor's client does natively. Fallback chains pick a substitute with the same
/// capabilities; the driver reads `detects_turns` to let the STT decide when the caller is done.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Capabilities {
    /// Audio sample rates the vendor takes (STT) or produces (TTS) without resampling; empty
    /// means any rate (raw PCM with the rate declared).
    pub sample_rates: &'static [u32],
    /// Word timings come with the audio (TTS) or the transcript (STT).
    pub word_timings: bool,
    /// One connection carries several synthesis contexts, each cancellable on its own (TTS).
    pub contexts: bool,
    /// The STT decides where the caller's turn ends (its end-of-turn closes the turn).
    pub detects_turns: bool,
    /// Function calling (LLM).
    pub tools: bool,
    /// Renders [`cxb_wire::llm::ResponseFormat::Json`] natively (LLM).
    pub json_mode: bool,
    /// Reuses a cached prompt prefix, reported in usage as cached tokens (LLM).
    pub prompt_caching: bool,
}

impl Capabilities {
    /// Nothing: descriptors start from this and set what they have.
    pub const NONE: Capabilities = Capabilities {
        sample_rates: &[],
        word_timings: false,
        contexts: false,
        detects_turns: false,
        tools: false,
        json_mode: false,
        prompt_caching: false,
    };

    /// Whether audio at `rate` needs no resampling on this vendor's side of the stream.
    pub fn serves_rate(&self, rate: u32) -> bool {
        self.sample_rates.is_empty() || self.sample_rates.contains(&rate)
    }
}

/// One vendor. See the module docs.
#[derive(Clone, Copy)]
pub struct Vendor {
    /// Canonical name: the metrics label, the `provider` of its errors and of resolved params.
    pub name: &'static str,
    /// Other names bot configs use for it (matched case-insensitively, like `name`).
    pub aliases: &'static [&'static str],
    /// The API root its SDK defaults to; a provider block's `base_url` replaces it.
    pub api_root: &'static str,
    /// Used when the provider block names no model.
    pub default_model: &'static str,
    /// Environment variables the worker reads the fallback API key from, first found wins.
    pub key_env: &'static [&'static str],
    /// Models served by another descriptor of the same kind: `(model prefix, that vendor)`.
    /// Deepgram's `flux-*` models speak the turn-detecting v2 protocol.
    pub model_routes: &'static [(&'static str, &'static Vendor)],
    pub caps: Capabilities,
    pub client: Client,
}

impl Vendor {
    pub fn kind(&self) -> Kind {
        match self.client {
            Client::Stt(_) => Kind::Stt,
            Client::Llm(_) => Kind::Llm,
            Client::Tts(_) => Kind::Tts,
        }
    }

    /// `model` when given, else this vendor's default.
    pub fn model_or_default<'a>(&self, model: &'a str) -> &'a str {
        if model.trim().is_empty() {
            self.default_model
        } else {
            model
        }
    }

    /// Say so when a stream is opened at a rate the vendor does not list: it may reject the
    /// stream or resample on its side, and the operator should know which rate to expect.
    pub(crate) fn warn_unless_native(&self, sample_rate: u32) {
        if !self.caps.serves_rate(sample_rate) {
            tracing::warn!(
                provider = self.name,
                sample_rate,
                native = ?self.caps.sample_rates,
                "sample rate not among the vendor's listed rates"
            );
        }
    }

    fn answers_to(&self, name: &str) -> bool {
        self.name.eq_ignore_ascii_case(name) || self.aliases.iter().any(|a| a.eq_ignore_ascii_case(name))
    }
}

impl fmt::Debug for Vendor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Vendor").field("name", &self.name).field("kind", &self.kind()).finish_non_exhaustive()
    }
}

impl PartialEq for Vendor {
    fn eq(&self, other: &Self) -> bool {
        self.name == other.name && self.kind() == other.kind()
    }
}

// ---------------------------------------------------------------------------------------------
// The table. Wire formats and sample rates: wire-protocols.md §3–§5.

/// Deepgram live STT v1 (`/v1/listen`), Nova models.
pub const DEEPGRAM: Vendor = Vendor {
    name: "deepgram",
    // "streaming STT" of the anonymised docs is Deepgram Nova (contract's name mapping).
    aliases: &["stt_streaming", "deepgram_nova", "nova"],
    api_root: "wss://api.deepgram.com",
    default_model: "nova-3",
    key_env: &["DEEPGRAM_API_KEY"],
    model_routes: &[("flux", &DEEPGRAM_FLUX)],
    // linear16 at whatever rate the URL declares.
    caps: Capabilities { word_timings: true, ..Capabilities::NONE },
    client: Client::Stt(|p| Box::pin(crate::stt_deepgram::connect(p))),
};

/// Deepgram Flux, the turn-detecting STT v2 (`/v2/listen`).
pub const DEEPGRAM_FLUX: Vendor = Vendor {
    name: "deepgram_flux",
    aliases: &[],
    api_root: "wss://api.deepgram.com",
    default_model: "flux-general-en",
    key_env: &["DEEPGRAM_API_KEY"],
    model_routes: &[],
    caps: Capabilities { word_timings: true, detects_turns: true, ..Capabilities::NONE },
    client: Client::Stt(|p| Box::pin(crate::stt_flux::connect_stt(p))),
};

/// OpenAI Chat Completions, and any server that speaks it (`{root}/chat/completions`, SSE).
pub const OPENAI: Vendor = Vendor {
    name: "openai",
    aliases: &["openai_compatible", "openai-compatible"],
    api_root: "https://api.openai.com/v1",
    default_model: "gpt-4.1-mini",
    key_env: &["OPENAI_API_KEY"],
    model_routes: &[],
    caps: Capabilities { tools: true, json_mode: true, prompt_caching: true, ..Capabilities::NONE },
    client: Client::Llm(LlmDriver {
        run: |client, params, req, tx| Box::pin(crate::llm_openai::run(client.http, params, req, tx)),
        prewarm: None,
    }),
};

/// The Gemini API (`{root}/v1beta/models/{model}:streamGenerateContent?alt=sse`, API key).
pub const GOOGLE: Vendor = Vendor {
    name: "google",
    aliases: &["gemini", "google_gemini"],
    api_root: "https://generativelanguage.googleapis.com",
    default_model: "gemini-2.5-flash",
    key_env: &["GEMINI_API_KEY", "GOOGLE_API_KEY"],
    model_routes: &[],
    caps: Capabilities { tools: true, json_mode: true, prompt_caching: true, ..Capabilities::NONE },
    client: Client::Llm(LlmDriver {
        run: |client, params, req, tx| {
            Box::pin(crate::llm_gemini::run(
                client.http,
                params,
                req,
                tx,
                client.google,
                crate::llm_gemini::Flavour::Api,
            ))
        },
        prewarm: Some(|client, params, req| {
            Box::pin(crate::llm_gemini::prewarm(
                client.http,
                params,
                req,
                client.google,
                crate::llm_gemini::Flavour::Api,
            ))
        }),
    }),
};

/// Gemini on Vertex AI (regional, multi-region or `global` host; service-account OAuth). The
/// API root depends on `extra.location`, so the client picks it when no `base_url` is given.
pub const GOOGLE_VERTEX: Vendor = Vendor {
    name: "google_vertex",
    aliases: &["vertex", "vertex_ai", "google-vertex"],
    api_root: "",
    default_model: "gemini-2.5-flash",
    // The key is a service-account key JSON in the bot's `api_key`, or the file named by
    // GOOGLE_APPLICATION_CREDENTIALS (read by the client, not a key variable).
    key_env: &[],
    model_routes: &[],
    caps: Capabilities { tools: true, json_mode: true, prompt_caching: true, ..Capabilities::NONE },
    client: Client::Llm(LlmDriver {
        run: |client, params, req, tx| {
            Box::pin(crate::llm_gemini::run(
                client.http,
                params,
                req,
                tx,
                client.google,
                crate::llm_gemini::Flavour::Vertex,
            ))
        },
        prewarm: Some(|client, params, req| {
            Box::pin(crate::llm_gemini::prewarm(
                client.http,
                params,
                req,
                client.google,
                crate::llm_gemini::Flavour::Vertex,
            ))
        }),
    }),
};

/// Anthropic Messages (`{root}/v1/messages`, SSE).
pub const ANTHROPIC: Vendor = Vendor {
    name: "anthropic",
    aliases: &["claude"],
    api_root: "https://api.anthropic.com",
    default_model: "claude-sonnet-4-5",
    key_env: &["ANTHROPIC_API_KEY"],
    model_routes: &[],
    caps: Capabilities { tools: true, prompt_caching: true, ..Capabilities::NONE },
    client: Client::Llm(LlmDriver {
        run: |client, params, req, tx| Box::pin(crate::llm_anthropic::run(client.http, params, req, tx)),
        prewarm: None,
    }),
};

/// Cartesia `/tts/websocket` (contexts multiplexed on one socket).
pub const CARTESIA: Vendor = Vendor {
    name: "cartesia",
    aliases: &[],
    api_root: "wss://api.cartesia.ai",
    default_model: "sonic-3",
    key_env: &["CARTESIA_API_KEY"],
    model_routes: &[],
    caps: Capabilities {
        sample_rates: &[8000, 16000, 22050, 24000, 44100, 48000],
        word_timings: true,
        contexts: true,
        ..Capabilities::NONE
    },
    client: Client::Tts(|p| Box::pin(crate::tts_cartesia::connect(p))),
};

/// ElevenLabs `stream-input` (one context per socket; cancel closes that socket).
pub const ELEVENLABS: Vendor = Vendor {
    name: "elevenlabs",
    // "TTS engine" of the anonymised docs is ElevenLabs (contract's name mapping).
    aliases: &["tts_engine", "eleven_labs", "11labs"],
    api_root: "wss://api.elevenlabs.io",
    default_model: "eleven_flash_v2_5",
    key_env: &["ELEVENLABS_API_KEY"],
    model_routes: &[],
    caps: Capabilities { sample_rates: &[8000, 16000, 22050, 24000, 44100], word_timings: true, ..Capabilities::NONE },
    client: Client::Tts(|p| Box::pin(crate::tts_elevenlabs::connect(p))),
};

/// Soniox real-time STT (`/transcribe-websocket`), the "multilingual STT" of the original.
pub const SONIOX: Vendor = Vendor {
    name: "soniox",
    aliases: &[],
    api_root: "wss://stt-rt.soniox.com",
    default_model: "stt-rt-v4",
    key_env: &["SONIOX_API_KEY"],
    model_routes: &[],
    // pcm_s16le at whatever rate the config message declares.
    caps: Capabilities { word_timings: true, ..Capabilities::NONE },
    client: Client::Stt(|p| Box::pin(crate::stt_soniox::connect(p))),
};

/// Sarvam streaming STT (Saarika / Saaras, `/speech-to-text/ws`).
pub const SARVAM_STT: Vendor = Vendor {
    name: "sarvam",
    aliases: &[],
    api_root: "wss://api.sarvam.ai",
    default_model: "saaras:v3",
    key_env: &["SARVAM_API_KEY"],
    model_routes: &[],
    caps: Capabilities { sample_rates: &crate::stt_sarvam::SAMPLE_RATES, ..Capabilities::NONE },
    client: Client::Stt(|p| Box::pin(crate::stt_sarvam::connect(p))),
};

/// Sarvam Bulbul TTS (`/text-to-speech/ws`; one context per socket, a warm spare for barge-in).
pub const SARVAM_TTS: Vendor = Vendor {
    name: "sarvam",
    aliases: &[],
    api_root: "wss://api.sarvam.ai",
    default_model: "bulbul:v2",
    key_env: &["SARVAM_API_KEY"],
    model_routes: &[],
    caps: Capabilities { sample_rates: &crate::tts_sarvam::SAMPLE_RATES, ..Capabilities::NONE },
    client: Client::Tts(|p| Box::pin(crate::tts_sarvam::connect(p))),
};

/// Deepgram Aura-2 TTS (`/v1/speak`; one stream per socket, `Clear` on barge-in).
pub const DEEPGRAM_AURA: Vendor = Vendor {
    name: "deepgram",
    aliases: &[],
    api_root: "wss://api.deepgram.com",
    default_model: "aura-2-thalia-en",
    key_env: &["DEEPGRAM_API_KEY"],
    model_routes: &[],
    caps: Capabilities { sample_rates: &crate::tts_aura::SAMPLE_RATES, ..Capabilities::NONE },
    client: Client::Tts(|p| Box::pin(crate::tts_aura::connect(p))),
};

/// Every vendor this worker speaks. Names are unique within a kind (the same brand may offer
/// STT and TTS under one name).
pub static VENDORS: &[Vendor] = &[
    DEEPGRAM,
    DEEPGRAM_FLUX,
    SONIOX,
    SARVAM_STT,
    OPENAI,
    GOOGLE,
    GOOGLE_VERTEX,
    ANTHROPIC,
    CARTESIA,
    ELEVENLABS,
    SARVAM_TTS,
    DEEPGRAM_AURA,
];

// ---------------------------------------------------------------------------------------------
// Lookup

/// The vendor of this kind called `name` (canonical or alias, any case, surrounding blanks
/// ignored).
pub fn find(kind: Kind, name: &str) -> Option<&'static Vendor> {
    let name = name.trim();
    VENDORS.iter().find(|v| v.kind() == kind && v.answers_to(name))
}

/// The vendor that serves `model` under the provider `name`: an empty name is the kind's
/// default, an alias its vendor, and a model another descriptor serves (a Deepgram `flux-*`
/// model) that descriptor. An unknown name is [`ProviderError::UnknownProvider`].
pub fn resolve(kind: Kind, name: &str, model: &str) -> Result<&'static Vendor, ProviderError> {
    let vendor = if name.trim().is_empty() {
        kind.default_vendor()
    } else {
        find(kind, name).ok_or_else(|| ProviderError::UnknownProvider { kind, name: name.trim().to_string() })?
    };
    let model = model.trim();
    let routed = vendor.model_routes.iter().find(|(prefix, _)| model.starts_with(prefix));
    Ok(match routed {
        // Route to the table's own entry, so callers may compare by address too.
        Some((_, target)) => find(kind, target.name).unwrap_or(target),
        None => vendor,
    })
}

/// "deepgram (stt_streaming, deepgram_nova, nova), deepgram_flux": the names a bot
/// config may use for this kind, for error messages and `--help`.
pub fn known_names(kind: Kind) -> String {
    VENDORS
        .iter()
        .filter(|v| v.kind() == kind)
        .map(|v| match v.aliases {
            [] => v.name.to_string(),
            aliases => format!("{} ({})", v.name, aliases.join(", ")),
        })
        .collect::<Vec<_>>()
        .join(", ")
}

// ---------------------------------------------------------------------------------------------
// API keys

/// Fallback API keys, read once at start from every vendor's `key_env` variables. A provider
/// block's own `api_key` wins over these. `Debug` shows which variables are set, never a value.
#[derive(Clone, Default)]
pub struct ProviderKeys {
    by_env: HashMap<&'static str, String>,
}

impl ProviderKeys {
    /// Read the process environment.
    pub fn from_env() -> Self {
        Self::from_lookup(|name| std::env::var(name).ok())
    }

    /// Read through `lookup` (an env var name → its value); blank values count as unset.
    pub fn from_lookup(lookup: impl Fn(&str) -> Option<String>) -> Self {
        let by_env = key_env_names()
            .filter_map(|name| {
                let value = lookup(name)?.trim().to_string();
                (!value.is_empty()).then_some((name, value))
            })
            .collect();
        Self { by_env }
    }

    /// The key for `vendor` from the first of its `key_env` variables that is set.
    pub fn for_vendor(&self, vendor: &Vendor) -> Option<&str> {
        vendor.key_env.iter().find_map(|name| self.by_env.get(name)).map(String::as_str)
    }

    /// `block_key` when the provider block has one, else the environment's key for `vendor`.
    pub fn pick(&self, block_key: &str, vendor: Option<&Vendor>) -> String {
        match block_key.trim() {
            "" => vendor.and_then(|v| self.for_vendor(v)).unwrap_or_default().to_string(),
            own => own.to_string(),
        }
    }
}

impl fmt::Debug for ProviderKeys {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut set: Vec<&str> = self.by_env.keys().copied().collect();
        set.sort_unstable();
        f.debug_struct("ProviderKeys").field("set", &set).finish()
    }
}

/// Every API-key variable some vendor reads, each once, in table order.
pub fn key_env_names() -> impl Iterator<Item = &'static str> {
    let mut seen = Vec::new();
    VENDORS.iter().flat_map(|v| v.key_env.iter().copied()).filter(move |name| {
        let new = !seen.contains(name);
        if new {
            seen.push(*name);
        }
        new
    })
}

/// `--help` text: which variable holds which vendors' fallback key.
pub fn keys_help() -> String {
    let mut text = String::from(
        "Provider API keys (used when a bot config's provider block has no api_key; read from the \
         environment only):\n",
    );
    for name in key_env_names() {
        let users: Vec<String> =
            VENDORS.iter().filter(|v| v.key_env.contains(&name)).map(|v| format!("{} {}", v.kind(), v.name)).collect();
        text.push_str(&format!("  {name:<22} {}\n", users.join(", ")));
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_aliases_resolve_case_insensitively_per_kind() {
        let name = |kind, n| resolve(kind, n, "").map(|v| v.name);
        assert_eq!(name(Kind::Stt, "stt_streaming"), Ok("deepgram"));
        assert_eq!(name(Kind::Stt, " Deepgram "), Ok("deepgram"));
        assert_eq!(name(Kind::Stt, "deepgram_flux"), Ok("deepgram_flux"));
        assert_eq!(name(Kind::Tts, "11labs"), Ok("elevenlabs"));
        assert_eq!(name(Kind::Tts, "eleven_labs"), Ok("elevenlabs"));
        assert_eq!(name(Kind::Tts, "tts_engine"), Ok("elevenlabs"));
        assert_eq!(name(Kind::Llm, "openai_compatible"), Ok("openai"));
        // An empty name is the kind's default.
        assert_eq!(name(Kind::Stt, ""), Ok("deepgram"));
        assert_eq!(name(Kind::Llm, " "), Ok("openai"));
        assert_eq!(name(Kind::Tts, ""), Ok("cartesia"));
        assert_eq!(name(Kind::Stt, "soniox"), Ok("soniox"));
        assert_eq!(name(Kind::Tts, "sarvam"), Ok("sarvam"));
        // Deepgram's TTS is Aura: the same brand name resolves per kind.
        assert_eq!(resolve(Kind::Tts, "deepgram", "").unwrap().default_model, DEEPGRAM_AURA.default_model);
        // A name of another kind is not a vendor of this one.
        assert!(matches!(resolve(Kind::Tts, "openai", ""), Err(ProviderError::UnknownProvider { .. })));
        assert!(matches!(resolve(Kind::Stt, "cartesia", ""), Err(ProviderError::UnknownProvider { .. })));
    }

    #[test]
    fn a_flux_model_routes_deepgram_to_the_turn_detecting_entry() {
        assert_eq!(resolve(Kind::Stt, "deepgram", "flux-general-en").unwrap().name, "deepgram_flux");
        assert_eq!(resolve(Kind::Stt, "stt_streaming", "flux-general-multi").unwrap().name, "deepgram_flux");
        assert_eq!(resolve(Kind::Stt, "deepgram", "nova-3").unwrap().name, "deepgram");
        let flux = resolve(Kind::Stt, "deepgram", "flux-general-en").unwrap();
        assert!(std::ptr::eq(flux, find(Kind::Stt, "deepgram_flux").unwrap()), "the table's own entry");
    }

    #[test]
    fn an_unknown_provider_names_the_field_the_value_and_the_known_names() {
        let err = resolve(Kind::Tts, "Acme-Voice", "").unwrap_err();
        let text = err.to_string();
        assert!(text.starts_with("tts.provider \"Acme-Voice\" is not a known TTS provider"), "{text}");
        assert!(text.contains("cartesia") && text.contains("elevenlabs (tts_engine, eleven_labs, 11labs)"), "{text}");
        assert!(!text.contains("openai") && !text.contains("soniox"), "only names of this kind: {text}");
        assert_eq!(err.provider(), "unknown");
    }

    #[test]
    fn capabilities_say_what_each_vendor_does() {
        let caps = |kind, n| find(kind, n).unwrap().caps;
        assert!(caps(Kind::Stt, "deepgram_flux").detects_turns);
        assert!(!caps(Kind::Stt, "deepgram").detects_turns);
        assert!(caps(Kind::Tts, "cartesia").contexts && !caps(Kind::Tts, "elevenlabs").contexts);
        assert!(caps(Kind::Tts, "cartesia").serves_rate(8000) && caps(Kind::Tts, "elevenlabs").serves_rate(16000));
        assert!(!caps(Kind::Tts, "elevenlabs").serves_rate(11025));
        assert!(caps(Kind::Stt, "deepgram").serves_rate(11025), "raw PCM at any declared rate");
        let openai = caps(Kind::Llm, "openai");
        assert!(openai.tools && openai.json_mode && openai.prompt_caching && !openai.detects_turns);
    }

    #[test]
    fn the_table_is_consistent() {
        for v in VENDORS {
            assert_eq!(find(v.kind(), v.name), Some(v), "{} is found by its name", v.name);
            for alias in v.aliases {
                assert_eq!(find(v.kind(), alias).map(|f| f.name), Some(v.name), "alias {alias} is unambiguous");
            }
            assert!(!v.default_model.is_empty(), "{}", v.name);
            if v.name == GOOGLE_VERTEX.name {
                // Vertex AI's root is regional (built from the key's location) and its credential
                // is a service-account key, not a key variable.
                assert!(v.api_root.is_empty() && v.key_env.is_empty());
                continue;
            }
            assert!(!v.key_env.is_empty() && v.key_env.iter().all(|k| k.ends_with("_API_KEY")), "{}", v.name);
            assert!(v.api_root.contains("://"), "{}", v.name);
            for (_, target) in v.model_routes {
                assert_eq!(target.kind(), v.kind(), "{} routes within its kind", v.name);
            }
        }
        for kind in [Kind::Stt, Kind::Llm, Kind::Tts] {
            assert_eq!(kind.default_vendor().kind(), kind);
        }
    }

    #[test]
    fn keys_come_from_the_first_set_variable_and_a_block_key_wins() {
        let env = |pairs: &'static [(&'static str, &'static str)]| {
            ProviderKeys::from_lookup(move |n| pairs.iter().find(|(k, _)| *k == n).map(|(_, v)| v.to_string()))
        };
        let keys = env(&[("DEEPGRAM_API_KEY", " dg "), ("CARTESIA_API_KEY", "  "), ("UNRELATED_API_KEY", "x")]);
        let dg = find(Kind::Stt, "deepgram").unwrap();
        let flux = find(Kind::Stt, "deepgram_flux").unwrap();
        let cartesia = find(Kind::Tts, "cartesia").unwrap();
        assert_eq!(keys.for_vendor(dg), Some("dg"));
        assert_eq!(keys.for_vendor(flux), Some("dg"), "one variable serves both Deepgram entries");
        assert_eq!(keys.for_vendor(cartesia), None, "a blank variable is unset");
        assert_eq!(keys.pick("own-key", Some(dg)), "own-key");
        assert_eq!(keys.pick(" ", Some(dg)), "dg");
        assert_eq!(keys.pick("", None), "");
        assert_eq!(format!("{keys:?}"), "ProviderKeys { set: [\"DEEPGRAM_API_KEY\"] }");

        // Order within a descriptor: the first listed variable that is set wins.
        const TWO: Vendor = Vendor { name: "two", key_env: &["FIRST_API_KEY", "SECOND_API_KEY"], ..ELEVENLABS };
        let keys = ProviderKeys { by_env: [("SECOND_API_KEY", "b".to_string())].into_iter().collect() };
        assert_eq!(keys.for_vendor(&TWO), Some("b"));
        let keys = ProviderKeys {
            by_env: [("SECOND_API_KEY", "b".to_string()), ("FIRST_API_KEY", "a".to_string())].into_iter().collect(),
        };
        assert_eq!(keys.for_vendor(&TWO), Some("a"));
    }

    #[test]
    fn help_lists_every_key_variable_once() {
        let help = keys_help();
        for name in ["DEEPGRAM_API_KEY", "OPENAI_API_KEY", "CARTESIA_API_KEY", "ELEVENLABS_API_KEY"] {
            assert_eq!(help.matches(name).count(), 1, "{help}");
        }
        assert!(help.contains("STT deepgram, STT deepgram_flux"), "{help}");
    }
}
