//! Google service-account credentials → OAuth 2.0 access tokens (JWT bearer grant, RFC 7523;
//! wire-protocols part 2 §3), for Vertex AI.
//!
//! One [`TokenSource`] per key, shared by every call of the worker: a token is fetched once and
//! reused until shortly before it expires; then one background refresh replaces it while requests
//! go on with the old one. When there is no usable token, concurrent requests wait on a single
//! fetch (single flight), bounded in time.
//!
//! Signing uses `aws-lc-rs` directly (RS256 = RSASSA-PKCS1-v1_5 over SHA-256) and
//! `rustls-pki-types` for the PEM: both are already in the worker for TLS, so this adds no crypto
//! stack. `gcp_auth` and `yup-oauth2` would bring their own hyper clients and token stores,
//! `google-cloud-auth` its own reqwest/rustls build and a self-signed-JWT flow whose Vertex
//! acceptance the spec marks uncertain; `jsonwebtoken` would only replace the three base64 pieces
//! below and needs a crypto backend feature of its own.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::signature::{RsaKeyPair, RSA_PKCS1_SHA256};
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::PrivatePkcs8KeyDer;
use serde::Deserialize;
use serde_json::{json, Value};
use tokio::time::Instant;

use crate::llm_openai::{body_text, error_chain};

/// The scope Vertex AI needs.
pub(crate) const CLOUD_PLATFORM_SCOPE: &str = "https://www.googleapis.com/auth/cloud-platform";
const JWT_BEARER_GRANT: &str = "urn:ietf:params:oauth:grant-type:jwt-bearer";
/// A key file is a few KB; anything much larger is not one.
const MAX_KEY_BYTES: u64 = 64 * 1024;
/// A token endpoint's answer is well under this.
const MAX_ANSWER_BYTES: usize = 64 * 1024;
/// Distinct keys remembered (each bot may bring its own).
const MAX_SOURCES: usize = 256;
/// Longest token lifetime believed: Google's tokens last an hour, so a larger `expires_in` (a
/// proxy's mistake, or garbage) is capped here rather than trusted.
pub(crate) const MAX_TOKEN_LIFETIME: Duration = Duration::from_secs(24 * 3600);

/// Why no token could be had.
#[derive(Debug, Clone, thiserror::Error, PartialEq)]
pub enum AuthError {
    #[error("service-account key unusable: {0}")]
    BadKey(String),
    #[error("token request to {uri} failed: {detail}")]
    Token { uri: String, detail: String },
    #[error("no token within {0} ms")]
    Timeout(u128),
}

/// How tokens are kept.
#[derive(Debug, Clone)]
pub struct TokenSettings {
    /// Lifetime asked for in the assertion (`exp - iat`; Google allows at most one hour).
    pub assertion_lifetime: Duration,
    /// Refresh in the background once less than this is left (google-auth: 3 min 45 s).
    pub refresh_before: Duration,
    /// A token with less than this left is not used: requests wait for a new one.
    pub min_remaining: Duration,
    /// Bound on one token request.
    pub request_timeout: Duration,
}

impl Default for TokenSettings {
    fn default() -> Self {
        Self {
            assertion_lifetime: Duration::from_secs(3600),
            refresh_before: Duration::from_secs(300),
            min_remaining: Duration::from_secs(10),
            request_timeout: Duration::from_secs(10),
        }
    }
}

/// The fields of a service-account key file that the grant needs.
#[derive(Deserialize)]
struct KeyFile {
    #[serde(rename = "type")]
    kind: Option<String>,
    client_email: Option<String>,
    private_key: Option<String>,
    private_key_id: Option<String>,
    token_uri: Option<String>,
}

#[derive(Debug, Clone)]
struct Token {
    access_token: String,
    expires_at: Instant,
}

/// Tokens for one service account.
pub(crate) struct TokenSource {
    http: reqwest::Client,
    settings: TokenSettings,
    client_email: String,
    key_id: Option<String>,
    token_uri: String,
    key_pair: RsaKeyPair,
    current: Mutex<Option<Token>>,
    /// Held while a token request is in flight: the single flight.
    fetching: tokio::sync::Mutex<()>,
    refreshing: AtomicBool,
}

/// Names the account only: the token and the key stay out of logs.
impl std::fmt::Debug for TokenSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenSource").field("client_email", &self.client_email).finish_non_exhaustive()
    }
}

impl TokenSource {
    pub(crate) fn from_key_json(http: reqwest::Client, settings: TokenSettings, json: &str) -> Result<Self, AuthError> {
        let bad = |why: &str| AuthError::BadKey(why.to_string());
        let key: KeyFile = serde_json::from_str(json).map_err(|e| bad(&format!("not a key JSON object ({e})")))?;
        if let Some(kind) = key.kind.as_deref().filter(|k| *k != "service_account") {
            return Err(bad(&format!("type {kind:?}: only service_account keys are supported")));
        }
        let client_email = key.client_email.filter(|e| !e.trim().is_empty()).ok_or_else(|| bad("no client_email"))?;
        let token_uri = key.token_uri.filter(|u| !u.trim().is_empty()).ok_or_else(|| bad("no token_uri"))?;
        match url::Url::parse(&token_uri) {
            Ok(u) if matches!(u.scheme(), "https" | "http") => {}
            _ => return Err(bad(&format!("token_uri {token_uri:?} is not an http(s) URL"))),
        }
        let pem = key.private_key.ok_or_else(|| bad("no private_key"))?;
        let der = PrivatePkcs8KeyDer::from_pem_slice(pem.as_bytes())
            .map_err(|e| bad(&format!("private_key is not a PKCS#8 PEM ({e})")))?;
        let key_pair = RsaKeyPair::from_pkcs8(der.secret_pkcs8_der())
            .map_err(|e| bad(&format!("private_key is not a usable RSA key ({e})")))?;
        Ok(Self {
            http,
            settings,
            client_email,
            key_id: key.private_key_id.filter(|k| !k.is_empty()),
            token_uri,
            key_pair,
            current: Mutex::new(None),
            fetching: tokio::sync::Mutex::new(()),
            refreshing: AtomicBool::new(false),
        })
    }

    pub(crate) fn client_email(&self) -> &str {
        &self.client_email
    }

    fn current(&self) -> MutexGuard<'_, Option<Token>> {
        self.current.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A token with at least `min_remaining` left, if there is one.
    fn usable(&self) -> Option<Token> {
        let now = Instant::now();
        self.current().clone().filter(|t| t.expires_at > now + self.settings.min_remaining)
    }

    /// A valid access token, waiting at most `wait` when one has to be fetched.
    pub(crate) async fn token(self: &Arc<Self>, wait: Duration) -> Result<String, AuthError> {
        if let Some(token) = self.usable() {
            if token.expires_at < Instant::now() + self.settings.refresh_before {
                self.spawn_refresh();
            }
            return Ok(token.access_token);
        }
        tokio::time::timeout(wait, self.fetch_once()).await.map_err(|_| AuthError::Timeout(wait.as_millis()))?
    }

    /// Fetch under the single-flight lock, unless another request fetched while this one waited.
    async fn fetch_once(&self) -> Result<String, AuthError> {
        let _flight = self.fetching.lock().await;
        if let Some(token) = self.usable() {
            return Ok(token.access_token);
        }
        self.fetch().await
    }

    fn spawn_refresh(self: &Arc<Self>) {
        if self.refreshing.swap(true, Ordering::AcqRel) {
            return;
        }
        let this = Arc::clone(self);
        tokio::spawn(async move {
            let _flight = this.fetching.lock().await;
            let due =
                this.current().as_ref().is_none_or(|t| t.expires_at < Instant::now() + this.settings.refresh_before);
            if due {
                if let Err(e) = this.fetch().await {
                    tracing::warn!(error = %e, account = %this.client_email, "token refresh failed; the current token stays in use");
                }
            }
            this.refreshing.store(false, Ordering::Release);
        });
    }

    /// One token request (retried once when Google says to try again), stored on success.
    async fn fetch(&self) -> Result<String, AuthError> {
        let mut attempt = 0;
        loop {
            attempt += 1;
            match self.request_token().await {
                Err(Fetch::Retry(detail)) if attempt < 2 => {
                    tracing::debug!(%detail, "token request failed; retrying once");
                }
                Err(Fetch::Retry(detail) | Fetch::Fail(detail)) => {
                    return Err(AuthError::Token { uri: self.token_uri.clone(), detail })
                }
                Ok(token) => {
                    let access = token.access_token.clone();
                    *self.current() = Some(token);
                    return Ok(access);
                }
            }
        }
    }

    async fn request_token(&self) -> Result<Token, Fetch> {
        let started = Instant::now();
        let assertion = self.assertion().map_err(Fetch::Fail)?;
        let form = url::form_urlencoded::Serializer::new(String::new())
            .append_pair("grant_type", JWT_BEARER_GRANT)
            .append_pair("assertion", &assertion)
            .finish();
        let wait = self.settings.request_timeout;
        let send = self
            .http
            .post(&self.token_uri)
            .header(reqwest::header::CONTENT_TYPE, "application/x-www-form-urlencoded")
            .body(form)
            .send();
        let resp = match tokio::time::timeout(wait, send).await {
            Err(_) => return Err(Fetch::Retry(format!("no answer within {} ms", wait.as_millis()))),
            Ok(Err(e)) => return Err(Fetch::Retry(error_chain(&e))),
            Ok(Ok(resp)) => resp,
        };
        let status = resp.status().as_u16();
        // Access tokens may be up to 2 KB themselves.
        let body = body_text(resp, wait, MAX_ANSWER_BYTES).await;
        let (access_token, lifetime) = read_token_answer(status, &body)?;
        Ok(Token { access_token, expires_at: started + lifetime })
    }

    /// The signed JWT: `{"alg":"RS256","typ":"JWT","kid"}` . claims . RS256 signature.
    fn assertion(&self) -> Result<String, String> {
        let iat = SystemTime::now().duration_since(UNIX_EPOCH).map_err(|e| format!("system clock: {e}"))?.as_secs();
        let mut header = json!({"alg": "RS256", "typ": "JWT"});
        if let Some(kid) = &self.key_id {
            header["kid"] = json!(kid);
        }
        let claims = json!({
            "iss": self.client_email,
            "scope": CLOUD_PLATFORM_SCOPE,
            "aud": self.token_uri,
            "iat": iat,
            "exp": iat + self.settings.assertion_lifetime.as_secs(),
        });
        let signing_input =
            format!("{}.{}", URL_SAFE_NO_PAD.encode(header.to_string()), URL_SAFE_NO_PAD.encode(claims.to_string()));
        let mut signature = vec![0u8; self.key_pair.public_modulus_len()];
        self.key_pair
            .sign(&RSA_PKCS1_SHA256, &SystemRandom::new(), signing_input.as_bytes(), &mut signature)
            .map_err(|e| format!("signing failed: {e}"))?;
        Ok(format!("{signing_input}.{}", URL_SAFE_NO_PAD.encode(signature)))
    }

    /// Forget the current token (the API refused it).
    pub(crate) fn invalidate(&self, token: &str) {
        let mut current = self.current();
        if current.as_ref().is_some_and(|t| t.access_token == token) {
            *current = None;
        }
    }
}

/// Why a token request got no token.
#[derive(Debug, Clone, PartialEq)]
pub enum Fetch {
    /// Worth one more try (google-auth's transient statuses and codes).
    Retry(String),
    Fail(String),
}

/// A token endpoint's answer: the access token and how long it lasts, or why there is none.
/// `expires_in` is capped at [`MAX_TOKEN_LIFETIME`], so the expiry is always a representable
/// instant.
pub(crate) fn read_token_answer(status: u16, body: &str) -> Result<(String, Duration), Fetch> {
    if !(200..300).contains(&status) {
        return Err(token_error(status, body));
    }
    let v: Value = serde_json::from_str(body).map_err(|e| {
        Fetch::Fail(format!("unreadable token response ({e}): {}", crate::ws::truncate(body.to_string(), 200)))
    })?;
    let access_token = v["access_token"]
        .as_str()
        .filter(|t| !t.is_empty())
        .ok_or_else(|| Fetch::Fail("token response has no access_token".into()))?
        .to_string();
    // A number, or (some proxies) a string of one.
    let expires_in = match &v["expires_in"] {
        Value::Number(n) => n.as_u64(),
        Value::String(s) => s.trim().parse().ok(),
        _ => None,
    }
    .ok_or_else(|| Fetch::Fail("token response has no usable expires_in".into()))?;
    Ok((access_token, Duration::from_secs(expires_in).min(MAX_TOKEN_LIFETIME)))
}

/// `{"error":"invalid_grant","error_description":"Invalid JWT Signature."}` → a detail; the
/// statuses and codes google-auth retries are retried.
fn token_error(status: u16, body: &str) -> Fetch {
    let v: Value = serde_json::from_str(body).unwrap_or(Value::Null);
    let code = v["error"].as_str().unwrap_or("");
    let description = v["error_description"].as_str().unwrap_or("");
    let detail = match (code, description) {
        ("", "") => format!("HTTP {status}: {}", crate::ws::truncate(body.to_string(), 300)),
        (code, "") => format!("HTTP {status}: {code}"),
        (code, description) => format!("HTTP {status}: {code}: {description}"),
    };
    let transient_code = ["internal_failure", "server_error", "temporarily_unavailable"].contains(&code);
    if matches!(status, 408 | 429 | 500 | 503 | 504) || transient_code {
        Fetch::Retry(detail)
    } else {
        Fetch::Fail(detail)
    }
}

/// The worker's token sources: one per key, created on first use.
pub(crate) struct GoogleTokens {
    http: reqwest::Client,
    settings: TokenSettings,
    /// `GOOGLE_APPLICATION_CREDENTIALS`: the key file used when a bot's config has no key JSON.
    credentials_file: Option<PathBuf>,
    /// By the key JSON text, or `file:` and the path.
    sources: Mutex<HashMap<String, Arc<TokenSource>>>,
}

/// The table is keyed by key files' text: never printed.
impl std::fmt::Debug for GoogleTokens {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GoogleTokens").field("credentials_file", &self.credentials_file).finish_non_exhaustive()
    }
}

impl GoogleTokens {
    pub(crate) fn new(http: reqwest::Client, settings: TokenSettings, credentials_file: Option<PathBuf>) -> Self {
        Self { http, settings, credentials_file, sources: Mutex::new(HashMap::new()) }
    }

    /// The token source for a config's `api_key` (a key JSON), else for the credentials file.
    /// The file is read once; a rotated key needs a restart.
    pub(crate) async fn source(&self, api_key: &str) -> Result<Arc<TokenSource>, AuthError> {
        let api_key = api_key.trim();
        if api_key.starts_with('{') {
            return self.source_for(api_key.to_string(), || Ok(api_key.to_string()));
        }
        let Some(path) = &self.credentials_file else {
            let why = if api_key.is_empty() { "no llm.api_key" } else { "llm.api_key is not a key JSON" };
            return Err(AuthError::BadKey(format!(
                "{why}: put the service-account key JSON in llm.api_key or set GOOGLE_APPLICATION_CREDENTIALS"
            )));
        };
        let id = format!("file:{}", path.display());
        if let Some(source) = self.sources().get(&id) {
            return Ok(Arc::clone(source));
        }
        let text = read_key_file(path).await?;
        self.source_for(id, || Ok(text))
    }

    fn sources(&self) -> MutexGuard<'_, HashMap<String, Arc<TokenSource>>> {
        self.sources.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn source_for(
        &self,
        id: String,
        json: impl FnOnce() -> Result<String, AuthError>,
    ) -> Result<Arc<TokenSource>, AuthError> {
        let mut sources = self.sources();
        if let Some(source) = sources.get(&id) {
            return Ok(Arc::clone(source));
        }
        let source = Arc::new(TokenSource::from_key_json(self.http.clone(), self.settings.clone(), &json()?)?);
        if sources.len() >= MAX_SOURCES {
            sources.clear();
        }
        sources.insert(id, Arc::clone(&source));
        Ok(source)
    }
}

async fn read_key_file(path: &Path) -> Result<String, AuthError> {
    let bad = |e: String| AuthError::BadKey(format!("GOOGLE_APPLICATION_CREDENTIALS {}: {e}", path.display()));
    let meta = tokio::fs::metadata(path).await.map_err(|e| bad(e.to_string()))?;
    if meta.len() > MAX_KEY_BYTES {
        return Err(bad(format!("larger than {MAX_KEY_BYTES} bytes: not a key file")));
    }
    tokio::fs::read_to_string(path).await.map_err(|e| bad(e.to_string()))
}

#[cfg(test)]
mod tests {
    use aws_lc_rs::encoding::AsDer;
    use aws_lc_rs::rsa::{KeyPair, KeySize};
    use aws_lc_rs::signature::KeyPair as _;

    use super::*;

    fn pem(der: &[u8]) -> String {
        let b64 = base64::engine::general_purpose::STANDARD.encode(der);
        let lines: Vec<&str> = b64.as_bytes().chunks(64).map(|c| std::str::from_utf8(c).unwrap()).collect();
        format!("-----BEGIN PRIVATE KEY-----\n{}\n-----END PRIVATE KEY-----\n", lines.join("\n"))
    }

    #[test]
    fn assertion_is_a_verifiable_rs256_jwt_with_googles_claims() {
        let kp = KeyPair::generate(KeySize::Rsa2048).unwrap();
        let der = kp.as_der().unwrap();
        let key = json!({"type":"service_account","client_email":"bot@p.iam.gserviceaccount.com",
            "private_key_id":"k1","private_key":pem(der.as_ref()),"token_uri":"https://oauth2.googleapis.com/token"});
        let source =
            TokenSource::from_key_json(reqwest::Client::new(), TokenSettings::default(), &key.to_string()).unwrap();
        let jwt = source.assertion().unwrap();
        let parts: Vec<&str> = jwt.split('.').collect();
        assert_eq!(parts.len(), 3);
        let decode = |s: &str| serde_json::from_slice::<Value>(&URL_SAFE_NO_PAD.decode(s).unwrap()).unwrap();
        assert_eq!(decode(parts[0]), json!({"alg":"RS256","typ":"JWT","kid":"k1"}));
        let claims = decode(parts[1]);
        assert_eq!(claims["iss"], "bot@p.iam.gserviceaccount.com");
        assert_eq!(claims["aud"], "https://oauth2.googleapis.com/token");
        assert_eq!(claims["scope"], CLOUD_PLATFORM_SCOPE);
        assert_eq!(claims["exp"].as_u64().unwrap() - claims["iat"].as_u64().unwrap(), 3600);
        let public = aws_lc_rs::signature::UnparsedPublicKey::new(
            &aws_lc_rs::signature::RSA_PKCS1_2048_8192_SHA256,
            kp.public_key().as_ref(),
        );
        let signed = format!("{}.{}", parts[0], parts[1]);
        public.verify(signed.as_bytes(), &URL_SAFE_NO_PAD.decode(parts[2]).unwrap()).unwrap();
    }

    #[test]
    fn debug_output_keeps_keys_and_tokens_out() {
        let kp = KeyPair::generate(KeySize::Rsa2048).unwrap();
        let key =
            json!({"client_email":"bot@p","private_key":pem(kp.as_der().unwrap().as_ref()),"token_uri":"https://t"});
        let source =
            TokenSource::from_key_json(reqwest::Client::new(), TokenSettings::default(), &key.to_string()).unwrap();
        *source.current() = Some(Token { access_token: "ya29.secret".into(), expires_at: Instant::now() });
        let tokens = GoogleTokens::new(reqwest::Client::new(), TokenSettings::default(), None);
        tokens.sources().insert(key.to_string(), Arc::new(source));
        let printed = format!("{tokens:?} {:?}", tokens.sources().values().next().unwrap());
        assert!(!printed.contains("ya29.secret") && !printed.contains("PRIVATE KEY"), "{printed}");
    }

    #[test]
    fn bad_keys_say_why() {
        let err = |v: Value| {
            TokenSource::from_key_json(reqwest::Client::new(), TokenSettings::default(), &v.to_string()).unwrap_err()
        };
        let full = json!({"client_email":"a@b","private_key":"x","token_uri":"https://t"});
        assert!(err(json!({"type":"authorized_user"})).to_string().contains("only service_account"));
        assert!(err(json!({"private_key":"x","token_uri":"https://t"})).to_string().contains("client_email"));
        let mut no_uri = full.clone();
        no_uri["token_uri"] = json!("file:///etc/passwd");
        assert!(err(no_uri).to_string().contains("not an http(s) URL"));
        assert!(err(full).to_string().contains("PKCS#8 PEM"));
        assert!(TokenSource::from_key_json(reqwest::Client::new(), TokenSettings::default(), "not json").is_err());
    }

    /// `expires_in` near `u64::MAX` made the expiry instant overflow: a panic in the call's LLM
    /// task (the `google_token` fuzz target checks the lifetime stays representable).
    #[test]
    fn huge_token_lifetimes_are_capped() {
        for expires_in in ["18446744073709551615", "\"18446744073709551615\"", "9223372036854775808"] {
            let body = format!(r#"{{"access_token":"ya29.x","expires_in":{expires_in}}}"#);
            let (token, lifetime) = read_token_answer(200, &body).expect("a token");
            assert_eq!((token.as_str(), lifetime), ("ya29.x", MAX_TOKEN_LIFETIME));
            let _expiry = Instant::now() + lifetime;
        }
        assert_eq!(
            read_token_answer(200, r#"{"access_token":"t","expires_in":"3599"}"#),
            Ok(("t".to_string(), Duration::from_secs(3599)))
        );
        assert!(matches!(read_token_answer(200, r#"{"access_token":"","expires_in":1}"#), Err(Fetch::Fail(_))));
    }

    #[test]
    fn token_errors_retry_only_transient_failures() {
        assert!(
            matches!(token_error(400, r#"{"error":"invalid_grant","error_description":"Invalid JWT Signature."}"#),
            Fetch::Fail(d) if d == "HTTP 400: invalid_grant: Invalid JWT Signature.")
        );
        assert!(matches!(token_error(503, "busy"), Fetch::Retry(d) if d == "HTTP 503: busy"));
        assert!(matches!(token_error(400, r#"{"error":"temporarily_unavailable"}"#), Fetch::Retry(_)));
    }
}
