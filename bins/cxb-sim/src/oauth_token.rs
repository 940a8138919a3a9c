//! Google's OAuth 2.0 token endpoint (`POST /token`, the JWT bearer grant of a service account;
//! wire-protocols part 2 §3), strict: the assertion's RS256 signature is verified against the
//! account's public key, and `iss`, `aud`, `scope`, `iat`/`exp` are checked as Google does.
//!
//! Test keys are made here: `POST /sim/google/service-accounts` generates an RSA key pair and
//! answers with a complete service-account key JSON whose `token_uri` points at this server (the
//! private key never exists outside the test run). Issued tokens are what the Vertex double
//! accepts as `Authorization: Bearer`.
//!
//! Error bodies are `{"error":…,"error_description":…}`; the descriptions are Google's where the
//! spec or public reports quote them, else this double's own words.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use aws_lc_rs::encoding::AsDer;
use aws_lc_rs::rsa::{KeyPair, KeySize};
use aws_lc_rs::signature::{KeyPair as _, UnparsedPublicKey, RSA_PKCS1_2048_8192_SHA256};
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Json, Router};
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine;
use serde_json::{json, Value};
use tokio::time::Instant;

use crate::SimState;

pub const JWT_BEARER_GRANT: &str = "urn:ietf:params:oauth:grant-type:jwt-bearer";
pub const CLOUD_PLATFORM_SCOPE: &str = "https://www.googleapis.com/auth/cloud-platform";
/// Google's answer to an assertion it cannot accept in time.
const SHORT_LIVED: &str = "Invalid JWT: Token must be a short-lived token (60 minutes) and in a reasonable timeframe. Check your iat and exp values in the JWT claim.";
/// Clock skew tolerated on `iat`.
const SKEW_SECS: u64 = 60;

#[derive(Debug)]
struct Account {
    key_id: String,
    /// PKCS#1 `RSAPublicKey` DER.
    public_key: Vec<u8>,
}

/// Accounts, issued tokens and counters.
#[derive(Debug, Default)]
pub struct Store {
    accounts: Mutex<HashMap<String, Account>>,
    /// Access token → its expiry.
    tokens: Mutex<HashMap<String, Instant>>,
    /// Every `POST /token`, valid or not.
    pub token_requests: AtomicU64,
    /// Tokens handed out.
    pub tokens_issued: AtomicU64,
    /// `expires_in` of the next tokens (0 = Google's 3599).
    pub expires_in: AtomicU64,
    next_account: AtomicU64,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Store {
    /// A token this endpoint issued that has not expired.
    pub fn token_valid(&self, token: &str) -> bool {
        lock(&self.tokens).get(token).is_some_and(|expiry| *expiry > Instant::now())
    }

    /// A new service account with a fresh 2048-bit key: its key-file JSON.
    pub fn new_account(&self, token_uri: &str) -> Value {
        let n = self.next_account.fetch_add(1, Ordering::Relaxed) + 1;
        let email = format!("sim-bot-{n}@cxb-sim.iam.gserviceaccount.com");
        let key_id = format!("simkey{n:04}{}", uuid::Uuid::new_v4().simple());
        let pair = KeyPair::generate(KeySize::Rsa2048).expect("RSA key generation");
        let pkcs8 = pair.as_der().expect("PKCS#8 export");
        lock(&self.accounts)
            .insert(email.clone(), Account { key_id: key_id.clone(), public_key: pair.public_key().as_ref().to_vec() });
        json!({
            "type": "service_account",
            "project_id": "cxb-sim",
            "private_key_id": key_id,
            "private_key": pem("PRIVATE KEY", pkcs8.as_ref()),
            "client_email": email,
            "client_id": format!("1000{n}"),
            "auth_uri": "https://accounts.google.com/o/oauth2/auth",
            "token_uri": token_uri,
            "universe_domain": "googleapis.com",
        })
    }

    /// Every issued token stops working (the API then answers 401).
    pub fn revoke_tokens(&self) {
        lock(&self.tokens).clear();
    }

    pub fn reset_counters(&self) {
        self.token_requests.store(0, Ordering::Relaxed);
        self.tokens_issued.store(0, Ordering::Relaxed);
    }
}

fn pem(label: &str, der: &[u8]) -> String {
    let b64 = STANDARD.encode(der);
    let lines: Vec<&str> = b64.as_bytes().chunks(64).filter_map(|c| std::str::from_utf8(c).ok()).collect();
    format!("-----BEGIN {label}-----\n{}\n-----END {label}-----\n", lines.join("\n"))
}

pub fn routes() -> Router<Arc<SimState>> {
    Router::new()
        .route("/token", post(token))
        .route("/sim/google/service-accounts", post(new_account))
        .route("/sim/google/oauth", post(control))
}

/// The URL this server's token endpoint is reached at (the `aud` assertions must carry).
pub fn token_uri(state: &SimState) -> String {
    format!("http://{}/token", state.public_addr())
}

async fn new_account(State(state): State<Arc<SimState>>) -> Json<Value> {
    Json(state.oauth.new_account(&token_uri(&state)))
}

/// `{"expires_in": N}`: lifetime of the tokens issued from now on (to test refreshes).
async fn control(State(state): State<Arc<SimState>>, Json(v): Json<Value>) -> Response {
    match v.get("expires_in").and_then(Value::as_u64) {
        Some(n) => {
            state.oauth.expires_in.store(n, Ordering::Relaxed);
            Json(json!({"expires_in": n})).into_response()
        }
        None => (StatusCode::BAD_REQUEST, "expires_in must be a non-negative integer").into_response(),
    }
}

/// A refused token request: `{"error":…,"error_description":…}`.
struct Refusal {
    status: StatusCode,
    error: &'static str,
    description: String,
}

impl IntoResponse for Refusal {
    fn into_response(self) -> Response {
        (self.status, Json(json!({"error": self.error, "error_description": self.description}))).into_response()
    }
}

fn oauth_error(status: StatusCode, error: &'static str, description: &str) -> Response {
    Refusal { status, error, description: description.to_string() }.into_response()
}

fn invalid_grant(description: &str) -> Refusal {
    Refusal { status: StatusCode::BAD_REQUEST, error: "invalid_grant", description: description.to_string() }
}

async fn token(State(state): State<Arc<SimState>>, headers: HeaderMap, body: Bytes) -> Response {
    let store = &state.oauth;
    store.token_requests.fetch_add(1, Ordering::Relaxed);
    let form_type = headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or("");
    if !form_type.starts_with("application/x-www-form-urlencoded") {
        return oauth_error(StatusCode::BAD_REQUEST, "invalid_request", "Bad Request");
    }
    let form: HashMap<String, String> = url::form_urlencoded::parse(&body).into_owned().collect();
    let grant = form.get("grant_type").map(String::as_str).unwrap_or("");
    if grant != JWT_BEARER_GRANT {
        return oauth_error(StatusCode::BAD_REQUEST, "unsupported_grant_type", &format!("Invalid grant_type: {grant}"));
    }
    let Some(assertion) = form.get("assertion") else {
        return oauth_error(StatusCode::BAD_REQUEST, "invalid_request", "Missing required parameter: assertion");
    };
    if let Err(refusal) = check_assertion(&state, assertion) {
        return refusal.into_response();
    }
    let expires_in = match store.expires_in.load(Ordering::Relaxed) {
        0 => 3599,
        n => n,
    };
    let access_token = format!("ya29.sim-{}", uuid::Uuid::new_v4().simple());
    lock(&store.tokens).insert(access_token.clone(), Instant::now() + Duration::from_secs(expires_in));
    store.tokens_issued.fetch_add(1, Ordering::Relaxed);
    Json(json!({"access_token": access_token, "expires_in": expires_in, "token_type": "Bearer"})).into_response()
}

/// `header.claims.signature`, RS256, signed by the key of the account in `iss`.
fn check_assertion(state: &SimState, jwt: &str) -> Result<(), Refusal> {
    let parts: Vec<&str> = jwt.split('.').collect();
    let [header_b64, claims_b64, signature_b64] = parts.as_slice() else {
        return Err(invalid_grant("Invalid JWT: not a JWS compact serialization"));
    };
    let decode = |s: &str| URL_SAFE_NO_PAD.decode(s).ok();
    let json_of = |s: &str| decode(s).and_then(|b| serde_json::from_slice::<Value>(&b).ok());
    let (Some(header), Some(claims), Some(signature)) =
        (json_of(header_b64), json_of(claims_b64), decode(signature_b64))
    else {
        return Err(invalid_grant("Invalid JWT: the parts are not base64url JSON"));
    };
    if header.get("alg").and_then(Value::as_str) != Some("RS256") {
        return Err(invalid_grant("Invalid JWT: alg must be RS256"));
    }
    let iss = claims.get("iss").and_then(Value::as_str).unwrap_or("");
    let accounts = lock(&state.oauth.accounts);
    let Some(account) = accounts.get(iss) else {
        return Err(invalid_grant("Invalid grant: account not found"));
    };
    if let Some(kid) = header.get("kid").and_then(Value::as_str) {
        if kid != account.key_id {
            return Err(invalid_grant("Invalid JWT Signature."));
        }
    }
    let signed = format!("{header_b64}.{claims_b64}");
    let key = UnparsedPublicKey::new(&RSA_PKCS1_2048_8192_SHA256, &account.public_key);
    if key.verify(signed.as_bytes(), &signature).is_err() {
        return Err(invalid_grant("Invalid JWT Signature."));
    }
    if claims.get("aud").and_then(Value::as_str) != Some(token_uri(state).as_str()) {
        return Err(invalid_grant("Invalid JWT: Failed audience check."));
    }
    let scopes = claims.get("scope").and_then(Value::as_str).unwrap_or("");
    if !scopes.split(' ').any(|s| s == CLOUD_PLATFORM_SCOPE) {
        return Err(Refusal {
            status: StatusCode::BAD_REQUEST,
            error: "invalid_scope",
            description: "Invalid OAuth scope or ID token audience provided.".into(),
        });
    }
    let now = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
    let (Some(iat), Some(exp)) = (claims.get("iat").and_then(Value::as_u64), claims.get("exp").and_then(Value::as_u64))
    else {
        return Err(invalid_grant(SHORT_LIVED));
    };
    if exp <= now || iat > now + SKEW_SECS || exp < iat || exp - iat > 3600 {
        return Err(invalid_grant(SHORT_LIVED));
    }
    Ok(())
}
