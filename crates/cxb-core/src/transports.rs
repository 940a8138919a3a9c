//! Worker-wide telephony credentials: the fallback for the REST hang-up primitives of Twilio,
//! Telnyx and Plivo when a bot's config has no `telephony` block (the bot config wins field by
//! field). The `*_API_BASE` settings point the REST calls at a test double.

use cxb_wire::config::{PlivoConfig, TelnyxConfig, TwilioConfig};

#[derive(educe::Educe, Clone, Default, clap::Args)]
#[educe(Debug)]
pub struct TelephonySettings {
    /// Twilio account SID for REST hang-ups (default: the stream's `accountSid`).
    #[arg(long, env = "TWILIO_ACCOUNT_SID")]
    pub twilio_account_sid: Option<String>,
    /// Twilio auth token for REST hang-ups.
    #[arg(long, env = "TWILIO_AUTH_TOKEN", hide_env_values = true)]
    #[educe(Debug(method(crate::settings::redact)))]
    pub twilio_auth_token: Option<String>,
    /// Twilio REST API root.
    #[arg(long, env = "TWILIO_API_BASE", default_value = cxb_transports::twilio::DEFAULT_API_BASE)]
    pub twilio_api_base: String,
    /// Telnyx API key (Call Control) for REST hang-ups.
    #[arg(long, env = "TELNYX_API_KEY", hide_env_values = true)]
    #[educe(Debug(method(crate::settings::redact)))]
    pub telnyx_api_key: Option<String>,
    /// Telnyx REST API root.
    #[arg(long, env = "TELNYX_API_BASE", default_value = cxb_transports::telnyx::DEFAULT_API_BASE)]
    pub telnyx_api_base: String,
    /// Plivo auth id for REST hang-ups.
    #[arg(long, env = "PLIVO_AUTH_ID")]
    pub plivo_auth_id: Option<String>,
    /// Plivo auth token for REST hang-ups.
    #[arg(long, env = "PLIVO_AUTH_TOKEN", hide_env_values = true)]
    #[educe(Debug(method(crate::settings::redact)))]
    pub plivo_auth_token: Option<String>,
    /// Plivo REST API root.
    #[arg(long, env = "PLIVO_API_BASE", default_value = cxb_transports::plivo::DEFAULT_API_BASE)]
    pub plivo_api_base: String,
}

fn non_empty(v: &Option<String>) -> Option<String> {
    v.clone().filter(|s| !s.trim().is_empty())
}

impl TelephonySettings {
    pub fn twilio(&self) -> TwilioConfig {
        TwilioConfig {
            account_sid: non_empty(&self.twilio_account_sid),
            auth_token: non_empty(&self.twilio_auth_token),
            api_base: Some(self.twilio_api_base.clone()),
        }
    }

    pub fn telnyx(&self) -> TelnyxConfig {
        TelnyxConfig { api_key: non_empty(&self.telnyx_api_key), api_base: Some(self.telnyx_api_base.clone()) }
    }

    pub fn plivo(&self) -> PlivoConfig {
        PlivoConfig {
            auth_id: non_empty(&self.plivo_auth_id),
            auth_token: non_empty(&self.plivo_auth_token),
            api_base: Some(self.plivo_api_base.clone()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        t: TelephonySettings,
    }

    #[test]
    fn defaults_flags_and_redacted_debug() {
        let c =
            Cli::parse_from(["x", "--twilio-auth-token", "secret-tok", "--plivo-api-base", "http://127.0.0.1:1/plivo"]);
        assert_eq!(c.t.twilio().auth_token.as_deref(), Some("secret-tok"));
        assert_eq!(c.t.twilio().api_base.as_deref(), Some("https://api.twilio.com"));
        assert_eq!(c.t.plivo().api_base.as_deref(), Some("http://127.0.0.1:1/plivo"));
        assert_eq!(c.t.telnyx().api_key, None);
        assert!(!format!("{:?}", c.t).contains("secret-tok"));
    }
}
