//! Resolving a bot config's provider blocks into client parameters through the provider registry
//! (`cxb_providers::registry`, docs/providers.md): the vendor a name or alias (and, for
//! Deepgram, the model) stands for, its default API root and model, and the API key — the
//! block's own, else the worker's from the environment (`Settings::provider_keys`).
//!
//! An unknown provider name is passed through unchanged: connecting (or streaming) with it
//! fails with `ProviderError::UnknownProvider`, which names the field, the value and the known
//! names, and the call (or post-call job) reports it like any provider failure.

use std::time::Duration;

use cxb_providers::llm::LlmParams;
use cxb_providers::registry::{self, Kind, ProviderKeys};
use cxb_providers::stt::SttParams;
use cxb_providers::tts::TtsParams;
use cxb_wire::BotConfig;

use crate::settings::Settings;

/// The parts every provider block resolves the same way.
struct Resolved {
    provider: String,
    base_url: String,
    api_key: String,
    model: String,
}

impl Resolved {
    fn new(kind: Kind, name: &str, model: &str, base_url: Option<&str>, api_key: &str, keys: &ProviderKeys) -> Self {
        let base_url = base_url.map(str::trim).filter(|u| !u.is_empty());
        match registry::resolve(kind, name, model) {
            Ok(vendor) => Resolved {
                provider: vendor.name.to_string(),
                base_url: base_url.unwrap_or(vendor.api_root).to_string(),
                api_key: keys.pick(api_key, Some(vendor)),
                model: vendor.model_or_default(model).to_string(),
            },
            Err(_) => Resolved {
                provider: name.trim().to_string(),
                base_url: base_url.unwrap_or_default().to_string(),
                api_key: keys.pick(api_key, None),
                model: model.to_string(),
            },
        }
    }
}

pub fn stt_params(cfg: &BotConfig, settings: &Settings, sample_rate: u32) -> SttParams {
    let b = &cfg.stt;
    let model = b.model.as_deref().unwrap_or_default();
    let r = Resolved::new(Kind::Stt, &b.provider, model, b.base_url.as_deref(), &b.api_key, &settings.provider_keys);
    SttParams {
        provider: r.provider,
        base_url: r.base_url,
        api_key: r.api_key,
        model: r.model,
        language: b.language.clone().unwrap_or_else(|| "en".into()),
        sample_rate,
        extra: b.extra.clone(),
        connect_timeout: Duration::from_millis(settings.provider_connect_timeout_ms),
    }
}

/// The request's model stays the bot's `llm.model` (an empty one gets the vendor's default when
/// the request is sent).
pub fn llm_params(cfg: &BotConfig, settings: &Settings) -> LlmParams {
    let b = &cfg.llm;
    let r = Resolved::new(Kind::Llm, &b.provider, &b.model, b.base_url.as_deref(), &b.api_key, &settings.provider_keys);
    LlmParams {
        provider: r.provider,
        base_url: r.base_url,
        api_key: r.api_key,
        idle_timeout: Duration::from_millis(settings.llm_timeout_ms),
    }
}

pub fn tts_params(cfg: &BotConfig, settings: &Settings, sample_rate: u32) -> TtsParams {
    let b = &cfg.tts;
    let model = b.model.as_deref().unwrap_or_default();
    let r = Resolved::new(Kind::Tts, &b.provider, model, b.base_url.as_deref(), &b.api_key, &settings.provider_keys);
    TtsParams {
        provider: r.provider,
        base_url: r.base_url,
        api_key: r.api_key,
        model: r.model,
        voice_id: b.voice_id.clone().unwrap_or_default(),
        language: b.language.clone(),
        sample_rate,
        extra: b.extra.clone(),
        connect_timeout: Duration::from_millis(settings.provider_connect_timeout_ms),
    }
}

/// Whether the bot's STT decides where the caller's turn ends (the `detects_turns` capability:
/// Deepgram Flux). The engine then waits for the STT's end-of-turn rather than closing the turn
/// on VAD silence alone.
pub fn stt_detects_turns(cfg: &BotConfig) -> bool {
    let model = cfg.stt.model.as_deref().unwrap_or_default();
    registry::resolve(Kind::Stt, &cfg.stt.provider, model).is_ok_and(|v| v.caps.detects_turns)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn bot(blocks: serde_json::Value) -> BotConfig {
        let mut v = json!({"session_id": "s"});
        v.as_object_mut().unwrap().extend(blocks.as_object().unwrap().clone());
        BotConfig::from_json(v.to_string().as_bytes()).unwrap()
    }

    fn settings(env: &'static [(&'static str, &'static str)]) -> Settings {
        let mut s = Settings::for_tests(std::env::temp_dir());
        s.provider_keys = ProviderKeys::from_lookup(|n| env.iter().find(|(k, _)| *k == n).map(|(_, v)| v.to_string()));
        s
    }

    #[test]
    fn aliases_defaults_and_keys_resolve_from_the_registry() {
        let s = settings(&[("DEEPGRAM_API_KEY", "dg-env"), ("ELEVENLABS_API_KEY", "el-env")]);
        let cfg = bot(json!({
            "stt": {"provider": "stt_streaming"},
            "llm": {"provider": "openai_compatible", "model": "m", "api_key": "sk-own"},
            "tts": {"provider": "11labs", "voice_id": "v", "base_url": "  "},
        }));
        let stt = stt_params(&cfg, &s, 8000);
        assert_eq!(
            (stt.provider.as_str(), stt.base_url.as_str(), stt.model.as_str(), stt.api_key.as_str()),
            ("deepgram", "wss://api.deepgram.com", "nova-3", "dg-env")
        );
        let llm = llm_params(&cfg, &s);
        assert_eq!(
            (llm.provider.as_str(), llm.base_url.as_str(), llm.api_key.as_str()),
            ("openai", "https://api.openai.com/v1", "sk-own"),
            "the block's key wins over the environment's"
        );
        let tts = tts_params(&cfg, &s, 8000);
        assert_eq!(
            (tts.provider.as_str(), tts.base_url.as_str(), tts.model.as_str(), tts.api_key.as_str()),
            ("elevenlabs", "wss://api.elevenlabs.io", "eleven_flash_v2_5", "el-env"),
            "a blank base_url is unset"
        );
    }

    #[test]
    fn empty_blocks_get_the_default_vendors() {
        let cfg = bot(json!({}));
        let s = settings(&[]);
        assert_eq!(stt_params(&cfg, &s, 8000).provider, "deepgram");
        assert_eq!(llm_params(&cfg, &s).provider, "openai");
        let tts = tts_params(&cfg, &s, 8000);
        assert_eq!((tts.provider.as_str(), tts.model.as_str(), tts.api_key.as_str()), ("cartesia", "sonic-3", ""));
    }

    #[test]
    fn flux_is_the_turn_detecting_stt_by_name_or_model() {
        let s = settings(&[("DEEPGRAM_API_KEY", "dg-env")]);
        let by_model = bot(json!({"stt": {"provider": "deepgram", "model": "flux-general-en"}}));
        let by_name = bot(json!({"stt": {"provider": "deepgram_flux"}}));
        let nova = bot(json!({"stt": {"provider": "deepgram", "model": "nova-3"}}));
        assert!(stt_detects_turns(&by_model) && stt_detects_turns(&by_name) && !stt_detects_turns(&nova));
        let p = stt_params(&by_name, &s, 8000);
        assert_eq!(
            (p.provider.as_str(), p.model.as_str(), p.api_key.as_str()),
            ("deepgram_flux", "flux-general-en", "dg-env")
        );
        assert_eq!(stt_params(&by_model, &s, 8000).provider, "deepgram_flux");
    }

    #[test]
    fn an_unknown_provider_passes_through_for_connect_to_reject() {
        let cfg = bot(json!({"tts": {"provider": " AcmeVoice ", "model": "x", "base_url": "wss://acme"}}));
        let p = tts_params(&cfg, &settings(&[("CARTESIA_API_KEY", "c")]), 8000);
        assert_eq!(
            (p.provider.as_str(), p.base_url.as_str(), p.model.as_str(), p.api_key.as_str()),
            ("AcmeVoice", "wss://acme", "x", ""),
            "no other vendor's defaults or key"
        );
        assert!(!stt_detects_turns(&bot(json!({"stt": {"provider": "acme", "model": "flux-x"}}))));
    }
}
