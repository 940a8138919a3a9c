//! CXB API lookups the LiveKit routes make before answering (contract §3 rows 2 and 3):
//! `GET {api}/sip/lookup?number=` and `GET {api}/sip/outbound-trunk?from_number=`.

use std::time::Duration;

use serde::Deserialize;
use serde_json::{Map, Value};

use crate::auth;

/// Largest lookup answer we read; they are a handful of fields.
const MAX_BODY: usize = 64 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum LookupError {
    /// 404: nothing is mapped (no bot for the DID, no outbound trunk).
    #[error("not found")]
    NotFound,
    #[error("CXB API refused the secret (403)")]
    Forbidden,
    #[error("CXB API answered HTTP {0}")]
    Status(u16),
    #[error("CXB API did not answer within {0:?}")]
    Timeout(Duration),
    #[error("CXB API unreachable: {0}")]
    Unreachable(String),
    #[error("CXB API answer is invalid: {0}")]
    Invalid(String),
    #[error("no CXB API is configured (CXB_API_URL / CXB_API_CONFIG_URL)")]
    NotConfigured,
}

/// `/sip/lookup`: which bot answers a dialled number.
#[derive(Debug, Clone, Deserialize)]
pub struct SipLookup {
    pub bot_id: String,
    #[serde(default)]
    pub carrier_id: Option<Value>,
    #[serde(default)]
    pub did_id: Option<Value>,
    /// Anything else the API sends is kept for the connected event.
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

/// `/sip/outbound-trunk`: the LiveKit trunk (and caller number) a dial-out goes through.
#[derive(Debug, Clone, Deserialize)]
pub struct OutboundTrunk {
    pub trunk_id: String,
    #[serde(default)]
    pub number: Option<String>,
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

/// A bounded, secret-carrying client for the CXB API's lookup routes.
#[derive(Clone)]
pub struct CxbApi {
    pub base: String,
    pub secret: Option<String>,
    pub timeout: Duration,
    pub http: reqwest::Client,
}

impl CxbApi {
    pub async fn sip_lookup(&self, number: &str) -> Result<SipLookup, LookupError> {
        let v: SipLookup = self.get("sip/lookup", &[("number", number)]).await?;
        if !crate::config_client::valid_bot_id(&v.bot_id) {
            return Err(LookupError::Invalid(format!("bot_id {:?} is not a valid bot id", v.bot_id)));
        }
        Ok(v)
    }

    pub async fn outbound_trunk(&self, from_number: &str) -> Result<OutboundTrunk, LookupError> {
        let v: OutboundTrunk = self.get("sip/outbound-trunk", &[("from_number", from_number)]).await?;
        if v.trunk_id.trim().is_empty() {
            return Err(LookupError::Invalid("empty trunk_id".into()));
        }
        Ok(v)
    }

    async fn get<T: serde::de::DeserializeOwned>(&self, path: &str, query: &[(&str, &str)]) -> Result<T, LookupError> {
        let url = format!("{}/{path}", self.base.trim_end_matches('/'));
        let req = auth::with_secret(self.http.get(&url).query(query), self.secret.as_deref());
        let work = async {
            let resp = req.send().await.map_err(|e| LookupError::Unreachable(e.to_string()))?;
            match resp.status().as_u16() {
                200 => {}
                404 => return Err(LookupError::NotFound),
                403 | 401 => return Err(LookupError::Forbidden),
                other => return Err(LookupError::Status(other)),
            }
            let body = read_bounded(resp).await?;
            serde_json::from_slice::<T>(&body).map_err(|e| LookupError::Invalid(e.to_string()))
        };
        match tokio::time::timeout(self.timeout, work).await {
            Ok(r) => r,
            Err(_) => Err(LookupError::Timeout(self.timeout)),
        }
    }
}

async fn read_bounded(mut resp: reqwest::Response) -> Result<Vec<u8>, LookupError> {
    let mut body = Vec::new();
    while let Some(chunk) = resp.chunk().await.map_err(|e| LookupError::Unreachable(e.to_string()))? {
        if body.len() + chunk.len() > MAX_BODY {
            return Err(LookupError::Invalid(format!("answer larger than {MAX_BODY} bytes")));
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}
