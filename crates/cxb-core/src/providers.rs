//! Resolving a bot config's provider blocks into client parameters: provider aliases
//! (contract §13.8), API-key fallbacks from worker settings, vendor default API roots.

use std::time::Duration;

use cxb_providers::llm::LlmParams;
use cxb_providers::stt::SttParams;
use cxb_providers::tts::TtsParams;
use cxb_wire::BotConfig;

use crate::settings::Settings;

/// Documented real names plus the anonymised names used in the docs' examples.
pub fn canonical_provider(name: &str) -> String {
    let n = name.trim().to_ascii_lowercase();
    match n.as_str() {
        "stt_streaming" | "deepgram_nova" | "nova" => "deepgram".into(),
        "tts_engine" | "eleven_labs" | "11labs" => "elevenlabs".into(),
        "openai_compatible" | "openai-compatible" => "openai".into(),
        _ => n,
    }
}

fn pick_key(cfg_key: &str, fallback: &Option<String>) -> String {
    if !cfg_key.trim().is_empty() {
        cfg_key.trim().to_string()
    } else {
        fallback.clone().unwrap_or_default()
    }
}

pub fn stt_params(cfg: &BotConfig, settings: &Settings, sample_rate: u32) -> SttParams {
    let provider = canonical_provider(if cfg.stt.provider.is_empty() { "deepgram" } else { &cfg.stt.provider });
    SttParams {
        base_url: cfg.stt.base_url.clone().unwrap_or_else(|| "wss://api.deepgram.com".into()),
        api_key: pick_key(&cfg.stt.api_key, &settings.deepgram_api_key),
        model: cfg.stt.model.clone().unwrap_or_else(|| "nova-3".into()),
        language: cfg.stt.language.clone().unwrap_or_else(|| "en".into()),
        sample_rate,
        extra: cfg.stt.extra.clone(),
        connect_timeout: Duration::from_millis(settings.provider_connect_timeout_ms),
        provider,
    }
}

pub fn llm_params(cfg: &BotConfig, settings: &Settings) -> LlmParams {
    let provider = canonical_provider(if cfg.llm.provider.is_empty() { "openai" } else { &cfg.llm.provider });
    LlmParams {
        base_url: cfg.llm.base_url.clone().unwrap_or_else(|| "https://api.openai.com/v1".into()),
        api_key: pick_key(&cfg.llm.api_key, &settings.openai_api_key),
        idle_timeout: Duration::from_millis(settings.llm_timeout_ms),
        provider,
    }
}

pub fn tts_params(cfg: &BotConfig, settings: &Settings, sample_rate: u32) -> TtsParams {
    let provider = canonical_provider(if cfg.tts.provider.is_empty() { "cartesia" } else { &cfg.tts.provider });
    let (default_base, fallback_key, default_model) = match provider.as_str() {
        "elevenlabs" => ("wss://api.elevenlabs.io", &settings.elevenlabs_api_key, "eleven_flash_v2_5"),
        _ => ("wss://api.cartesia.ai", &settings.cartesia_api_key, "sonic-3"),
    };
    TtsParams {
        base_url: cfg.tts.base_url.clone().unwrap_or_else(|| default_base.into()),
        api_key: pick_key(&cfg.tts.api_key, fallback_key),
        model: cfg.tts.model.clone().unwrap_or_else(|| default_model.into()),
        voice_id: cfg.tts.voice_id.clone().unwrap_or_default(),
        language: cfg.tts.language.clone(),
        sample_rate,
        extra: cfg.tts.extra.clone(),
        connect_timeout: Duration::from_millis(settings.provider_connect_timeout_ms),
        provider,
    }
}
