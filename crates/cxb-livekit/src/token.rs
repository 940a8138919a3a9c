//! LiveKit access tokens: HS256 JWTs signed with the API secret (wire-protocols §6d).
//!
//! Signing and the claim types come from `livekit-api` (feature `access-token` only, which is
//! LiveKit's own `livekit-token` crate): the claim names and the "no publish/subscribe flag means
//! all allowed" rules then match what the LiveKit server expects without our restating them.
//! [`TokenIssuer`] adds the two shapes the worker needs: room-join tokens for the bot and
//! short-lived server-API tokens with only the grants one Twirp method checks.

use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

pub use livekit_api::access_token::{AccessToken, AccessTokenError, Claims, SIPGrants, TokenVerifier, VideoGrants};

/// Lifetime of a server-API token: it is minted per request, so it only has to outlive one call
/// (a ringing dial-out included) plus clock skew.
pub const SERVER_TOKEN_TTL: Duration = Duration::from_secs(10 * 60);

/// Lifetime of a room-join token. LiveKit checks it at join and refreshes the session itself
/// afterwards, so it need not cover the call; 6 h is LiveKit's default.
pub const JOIN_TOKEN_TTL: Duration = Duration::from_secs(6 * 60 * 60);

#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    #[error("LiveKit API key and secret must both be set")]
    MissingCredentials,
    #[error("invalid token request: {0}")]
    Invalid(&'static str),
    #[error("access token: {0}")]
    AccessToken(#[from] AccessTokenError),
}

/// What a room-join token allows. [`JoinGrant::bot`] is the worker's own participant.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JoinGrant {
    pub room: String,
    pub identity: String,
    pub name: String,
    pub metadata: String,
    pub attributes: BTreeMap<String, String>,
    /// Participant kind claim (`"agent"` makes the server report `ParticipantInfo.kind = AGENT`).
    pub kind: String,
    pub can_publish: bool,
    pub can_subscribe: bool,
    pub can_publish_data: bool,
    pub hidden: bool,
    pub agent: bool,
    pub ttl: Duration,
}

impl JoinGrant {
    /// The bot: publishes and subscribes audio, may send data, and is an agent so browser
    /// clients (the widget) recognise it as the assistant.
    pub fn bot(room: impl Into<String>, identity: impl Into<String>) -> Self {
        JoinGrant {
            room: room.into(),
            identity: identity.into(),
            name: String::new(),
            metadata: String::new(),
            attributes: BTreeMap::new(),
            kind: "agent".into(),
            can_publish: true,
            can_subscribe: true,
            can_publish_data: true,
            hidden: false,
            agent: true,
            ttl: JOIN_TOKEN_TTL,
        }
    }
}

/// Mints tokens for one LiveKit project. `Debug` never shows the secret.
#[derive(Clone)]
pub struct TokenIssuer {
    api_key: String,
    api_secret: String,
}

impl fmt::Debug for TokenIssuer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TokenIssuer").field("api_key", &self.api_key).finish_non_exhaustive()
    }
}

impl TokenIssuer {
    pub fn new(api_key: impl Into<String>, api_secret: impl Into<String>) -> Result<Self, TokenError> {
        let (api_key, api_secret) = (api_key.into(), api_secret.into());
        if api_key.trim().is_empty() || api_secret.is_empty() {
            return Err(TokenError::MissingCredentials);
        }
        Ok(TokenIssuer { api_key, api_secret })
    }

    pub fn api_key(&self) -> &str {
        &self.api_key
    }

    /// A token to join `grant.room` as `grant.identity`.
    pub fn join_token(&self, grant: &JoinGrant) -> Result<String, TokenError> {
        if grant.room.is_empty() {
            return Err(TokenError::Invalid("a join token needs a room"));
        }
        if grant.identity.is_empty() {
            return Err(TokenError::Invalid("a join token needs an identity"));
        }
        let video = VideoGrants {
            room_join: true,
            room: grant.room.clone(),
            can_publish: Some(grant.can_publish),
            can_subscribe: Some(grant.can_subscribe),
            can_publish_data: Some(grant.can_publish_data),
            hidden: grant.hidden,
            agent: grant.agent,
            ..VideoGrants::default()
        };
        let mut token = AccessToken::with_api_key(&self.api_key, &self.api_secret)
            .with_ttl(grant.ttl)
            .with_identity(&grant.identity)
            .with_grants(video);
        if !grant.name.is_empty() {
            token = token.with_name(&grant.name);
        }
        if !grant.kind.is_empty() {
            token = token.with_kind(&grant.kind);
        }
        if !grant.metadata.is_empty() {
            token = token.with_metadata(&grant.metadata);
        }
        if !grant.attributes.is_empty() {
            token = token.with_attributes(grant.attributes.iter().map(|(k, v)| (k.as_str(), v.as_str())));
        }
        Ok(token.to_jwt()?)
    }

    /// A short-lived token for the server API carrying exactly `video` and `sip`.
    pub fn server_token(&self, video: VideoGrants, sip: SIPGrants) -> Result<String, TokenError> {
        Ok(AccessToken::with_api_key(&self.api_key, &self.api_secret)
            .with_ttl(SERVER_TOKEN_TTL)
            .with_grants(video)
            .with_sip_grants(sip)
            .to_jwt()?)
    }

    /// Verify signature, issuer, `nbf` and `exp`, and return the claims.
    pub fn verify(&self, token: &str) -> Result<Claims, TokenError> {
        Ok(TokenVerifier::with_api_key(&self.api_key, &self.api_secret).verify(token)?)
    }
}

/// The grants each server-API method needs (wire-protocols §6c/§6d), nothing more.
pub(crate) mod grants {
    use super::{SIPGrants, VideoGrants};

    /// `CreateSIPParticipant`: `sip.call`.
    pub(crate) fn sip_call() -> (VideoGrants, SIPGrants) {
        (VideoGrants::default(), SIPGrants { admin: false, call: true })
    }

    /// `TransferSIPParticipant`: `roomAdmin` on the room, plus `sip.call`.
    pub(crate) fn sip_transfer(room: &str) -> (VideoGrants, SIPGrants) {
        (room_admin(room).0, SIPGrants { admin: false, call: true })
    }

    /// RoomService calls on one room (`RemoveParticipant`, `ListParticipants`): `roomAdmin` + `room`.
    pub(crate) fn room_admin(room: &str) -> (VideoGrants, SIPGrants) {
        (VideoGrants { room_admin: true, room: room.to_string(), ..VideoGrants::default() }, SIPGrants::default())
    }

    /// `DeleteRoom`: the server checks `roomCreate`.
    pub(crate) fn room_create() -> (VideoGrants, SIPGrants) {
        (VideoGrants { room_create: true, ..VideoGrants::default() }, SIPGrants::default())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{SystemTime, UNIX_EPOCH};

    fn payload(jwt: &str) -> serde_json::Value {
        use base64::Engine;
        let part = jwt.split('.').nth(1).expect("three parts");
        let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(part).expect("base64url");
        serde_json::from_slice(&bytes).expect("json")
    }

    fn header(jwt: &str) -> serde_json::Value {
        use base64::Engine;
        let part = jwt.split('.').next().expect("header");
        let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(part).expect("base64url");
        serde_json::from_slice(&bytes).expect("json")
    }

    fn now() -> u64 {
        SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs()
    }

    #[test]
    fn join_token_round_trips_all_claims() {
        let issuer = TokenIssuer::new("APIkey1", "s3cret-s3cret-s3cret").unwrap();
        let mut grant = JoinGrant::bot("call-abc", "cxb-bot");
        grant.name = "Priya".into();
        grant.metadata = r#"{"bot_id":"b1"}"#.into();
        grant.attributes.insert("cxb.call_id".into(), "c-1".into());
        grant.hidden = true;
        let jwt = issuer.join_token(&grant).unwrap();

        assert_eq!(header(&jwt)["alg"], "HS256");
        let claims = issuer.verify(&jwt).unwrap();
        assert_eq!(claims.iss, "APIkey1");
        assert_eq!(claims.sub, "cxb-bot");
        assert_eq!(claims.name, "Priya");
        assert_eq!(claims.kind, "agent");
        assert_eq!(claims.metadata, r#"{"bot_id":"b1"}"#);
        assert_eq!(claims.attributes.get("cxb.call_id").map(String::as_str), Some("c-1"));
        assert!(claims.video.room_join);
        assert_eq!(claims.video.room, "call-abc");
        assert_eq!(claims.video.can_publish, Some(true));
        assert_eq!(claims.video.can_subscribe, Some(true));
        assert_eq!(claims.video.can_publish_data, Some(true));
        assert!(claims.video.agent && claims.video.hidden);
        assert!(!claims.video.room_admin && !claims.video.room_create && !claims.video.room_list);
        assert!(!claims.sip.call && !claims.sip.admin);
        let n = now() as usize;
        assert!(claims.nbf <= n && claims.nbf + 5 >= n, "nbf {} now {n}", claims.nbf);
        assert!(claims.exp.abs_diff(n + JOIN_TOKEN_TTL.as_secs() as usize) <= 5);

        // The wire names LiveKit reads.
        let p = payload(&jwt);
        assert_eq!(p["video"]["roomJoin"], true);
        assert_eq!(p["video"]["canPublishData"], true);
        assert_eq!(p["video"]["agent"], true);
        assert_eq!(p["attributes"]["cxb.call_id"], "c-1");
        assert!(p.get("sip").is_none(), "no sip grants on a join token: {p}");
    }

    #[test]
    fn server_tokens_carry_only_the_method_grants() {
        let issuer = TokenIssuer::new("k", "secret").unwrap();
        let (v, s) = grants::sip_transfer("dialout-1");
        let claims = issuer.verify(&issuer.server_token(v, s).unwrap()).unwrap();
        assert!(claims.video.room_admin && claims.sip.call && !claims.sip.admin);
        assert_eq!(claims.video.room, "dialout-1");
        assert!(!claims.video.room_join && !claims.video.room_create);
        assert!(claims.exp.abs_diff(now() as usize + SERVER_TOKEN_TTL.as_secs() as usize) <= 5);

        let (v, s) = grants::sip_call();
        let jwt = issuer.server_token(v, s).unwrap();
        let p = payload(&jwt);
        assert_eq!(p["sip"]["call"], true);
        assert!(p.get("video").is_none(), "{p}");

        let (v, s) = grants::room_create();
        let claims = issuer.verify(&issuer.server_token(v, s).unwrap()).unwrap();
        assert!(claims.video.room_create && !claims.video.room_admin && claims.video.room.is_empty());
    }

    #[test]
    fn wrong_secret_or_key_fails_verification() {
        let jwt = TokenIssuer::new("k", "right").unwrap().join_token(&JoinGrant::bot("r", "i")).unwrap();
        assert!(TokenIssuer::new("k", "wrong").unwrap().verify(&jwt).is_err());
        assert!(TokenIssuer::new("other", "right").unwrap().verify(&jwt).is_err());
        assert!(TokenIssuer::new("k", "right").unwrap().verify("not.a.jwt").is_err());
    }

    #[test]
    fn rejects_missing_inputs() {
        assert!(matches!(TokenIssuer::new("", "s"), Err(TokenError::MissingCredentials)));
        assert!(matches!(TokenIssuer::new("k", ""), Err(TokenError::MissingCredentials)));
        let issuer = TokenIssuer::new("k", "s").unwrap();
        assert!(matches!(issuer.join_token(&JoinGrant::bot("", "i")), Err(TokenError::Invalid(_))));
        assert!(matches!(issuer.join_token(&JoinGrant::bot("r", "")), Err(TokenError::Invalid(_))));
        let debug = format!("{:?}", TokenIssuer::new("key1", "topsecretvalue").unwrap());
        assert!(debug.contains("key1") && !debug.contains("topsecretvalue"), "{debug}");
    }
}
