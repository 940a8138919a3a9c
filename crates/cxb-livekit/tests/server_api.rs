//! The server API against a loopback fake Twirp server (axum on 127.0.0.1:0) that checks every
//! request the way LiveKit would (method, path, bearer JWT and its grants, content type, body)
//! and answers with LiveKit's success and error shapes.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use cxb_livekit::room::ParticipantKind;
use cxb_livekit::server_api::{
    CreateSipParticipant, ServerApi, ServerApiConfig, ServerApiError, TransferSipParticipant, DEFAULT_RINGING_TIMEOUT,
};
use cxb_livekit::sip::SipOutcome;
use cxb_livekit::token::{Claims, TokenVerifier};
use livekit_protocol as proto;
use prost::Message;

const KEY: &str = "APItestkey";
const SECRET: &str = "test-secret-0123456789abcdef0123456789";

#[derive(Clone)]
enum Reply {
    /// 200 with a protobuf body.
    Proto(Vec<u8>),
    /// A Twirp JSON error.
    Twirp(StatusCode, serde_json::Value),
    /// Anything else.
    Raw(StatusCode, &'static str, Vec<u8>),
    /// Never answer.
    Hang,
}

#[derive(Debug, Clone)]
struct Seen {
    method: Method,
    path: String,
    headers: HeaderMap,
    body: Bytes,
}

#[derive(Default)]
struct FakeState {
    seen: Mutex<Vec<Seen>>,
    replies: Mutex<VecDeque<Reply>>,
}

async fn twirp(
    State(state): State<Arc<FakeState>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    state.seen.lock().unwrap().push(Seen { method, path: uri.path().to_string(), headers, body });
    let reply = state.replies.lock().unwrap().pop_front();
    match reply {
        Some(Reply::Proto(bytes)) => {
            (StatusCode::OK, [("content-type", "application/protobuf")], bytes).into_response()
        }
        Some(Reply::Twirp(status, body)) => {
            (status, [("content-type", "application/json")], body.to_string()).into_response()
        }
        Some(Reply::Raw(status, ct, body)) => (status, [("content-type", ct)], body).into_response(),
        Some(Reply::Hang) => std::future::pending().await,
        None => (
            StatusCode::INTERNAL_SERVER_ERROR,
            [("content-type", "application/json")],
            r#"{"code":"internal","msg":"no reply scripted"}"#,
        )
            .into_response(),
    }
}

struct FakeLiveKit {
    state: Arc<FakeState>,
    url: String,
}

impl FakeLiveKit {
    async fn start(replies: Vec<Reply>) -> Self {
        let state = Arc::new(FakeState { seen: Mutex::default(), replies: Mutex::new(replies.into()) });
        let app = axum::Router::new().fallback(twirp).with_state(state.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            axum::serve(listener, app).await.unwrap();
        });
        // LIVEKIT_URL is a ws URL; the client must turn it into http.
        FakeLiveKit { state, url: format!("ws://{addr}") }
    }

    fn api(&self) -> ServerApi {
        ServerApi::new(ServerApiConfig::new(&self.url, KEY, SECRET)).unwrap()
    }

    fn api_with(&self, request_timeout: Duration, margin: Duration) -> ServerApi {
        let mut config = ServerApiConfig::new(&self.url, KEY, SECRET);
        config.request_timeout = request_timeout;
        config.sip_wait_margin = margin;
        ServerApi::new(config).unwrap()
    }

    fn seen(&self) -> Vec<Seen> {
        self.state.seen.lock().unwrap().clone()
    }

    fn only_request(&self) -> Seen {
        let seen = self.seen();
        assert_eq!(seen.len(), 1, "expected exactly one request, got {}", seen.len());
        seen.into_iter().next().unwrap()
    }
}

/// Checks what LiveKit's Twirp handler checks, and returns the verified claims.
fn check_request(seen: &Seen, path: &str) -> Claims {
    assert_eq!(seen.method, Method::POST);
    assert_eq!(seen.path, path);
    assert_eq!(seen.headers.get("content-type").unwrap(), "application/protobuf");
    let auth = seen.headers.get("authorization").expect("Authorization header").to_str().unwrap();
    let jwt = auth.strip_prefix("Bearer ").expect("Bearer scheme");
    let claims = TokenVerifier::with_api_key(KEY, SECRET).verify(jwt).expect("token verifies with the secret");
    assert_eq!(claims.iss, KEY);
    // Server tokens never grant joining a room.
    assert!(!claims.video.room_join);
    assert!(!claims.sip.admin, "no method here needs sip.admin");
    claims
}

fn sip_error(http: StatusCode, twirp_code: &str, sip: u16, status: &str) -> Reply {
    Reply::Twirp(
        http,
        serde_json::json!({
            "code": twirp_code,
            "msg": format!("sip status {sip}: {status}"),
            "meta": {"sip_status_code": sip.to_string(), "sip_status": status},
        }),
    )
}

fn dial(room: &str) -> CreateSipParticipant {
    CreateSipParticipant::new("ST_trunk1", "+919876543210", room, "sip_+919876543210")
}

#[tokio::test]
async fn create_sip_participant_sends_every_field_with_sip_call_grant() {
    let info = proto::SipParticipantInfo {
        participant_id: "PA_123".into(),
        participant_identity: "sip_+919876543210".into(),
        room_name: "dialout-1".into(),
        sip_call_id: "SCL_abc".into(),
    };
    let lk = FakeLiveKit::start(vec![Reply::Proto(info.encode_to_vec())]).await;

    let mut req = dial("dialout-1");
    req.sip_number = "+918012345678".into();
    req.participant_name = "Customer".into();
    req.participant_attributes = BTreeMap::from([("cxb.call_id".to_string(), "c-9".to_string())]);
    req.headers = BTreeMap::from([("X-CXB-Call".to_string(), "c-9".to_string())]);
    req.play_dialtone = true;
    req.max_call_duration = Some(Duration::from_secs(3600));
    req.krisp_enabled = true;
    req.display_name = Some("Acme".into());
    assert_eq!(req.ringing_timeout, DEFAULT_RINGING_TIMEOUT);
    assert!(req.wait_until_answered, "the project always waits for the answer");

    let got = lk.api().create_sip_participant(&req).await.unwrap();
    assert_eq!(got.participant_id, "PA_123");
    assert_eq!(got.sip_call_id, "SCL_abc");
    assert_eq!(got.room_name, "dialout-1");
    assert_eq!(got.participant_identity, "sip_+919876543210");

    let seen = lk.only_request();
    let claims = check_request(&seen, "/twirp/livekit.SIP/CreateSIPParticipant");
    assert!(claims.sip.call);
    assert!(!claims.video.room_admin && !claims.video.room_create && claims.video.room.is_empty());

    let body = proto::CreateSipParticipantRequest::decode(seen.body.as_ref()).unwrap();
    assert_eq!(body.sip_trunk_id, "ST_trunk1");
    assert_eq!(body.sip_call_to, "+919876543210");
    assert_eq!(body.sip_number, "+918012345678");
    assert_eq!(body.room_name, "dialout-1");
    assert_eq!(body.participant_identity, "sip_+919876543210");
    assert_eq!(body.participant_name, "Customer");
    assert_eq!(body.participant_attributes, HashMap::from([("cxb.call_id".to_string(), "c-9".to_string())]));
    assert_eq!(body.headers, HashMap::from([("X-CXB-Call".to_string(), "c-9".to_string())]));
    assert!(body.play_dialtone && body.wait_until_answered && body.krisp_enabled);
    assert_eq!(body.ringing_timeout, Some(pbjson_types::Duration { seconds: 45, nanos: 0 }));
    assert_eq!(body.max_call_duration, Some(pbjson_types::Duration { seconds: 3600, nanos: 0 }));
    assert_eq!(body.display_name.as_deref(), Some("Acme"));
}

#[tokio::test]
async fn sip_failures_map_to_outcomes() {
    // (SIP status, reason, Twirp code and its HTTP status as LiveKit sends them, outcome).
    let cases = [
        (486, "Busy Here", "resource_exhausted", StatusCode::TOO_MANY_REQUESTS, SipOutcome::Rejected),
        (603, "Decline", "permission_denied", StatusCode::FORBIDDEN, SipOutcome::Rejected),
        (408, "Request Timeout", "deadline_exceeded", StatusCode::REQUEST_TIMEOUT, SipOutcome::NoAnswer),
        (480, "Temporarily Unavailable", "resource_exhausted", StatusCode::TOO_MANY_REQUESTS, SipOutcome::NoAnswer),
        (500, "Server Internal Error", "failed_precondition", StatusCode::PRECONDITION_FAILED, SipOutcome::Error),
    ];
    let replies = cases.iter().map(|(sip, status, code, http, _)| sip_error(*http, code, *sip, status)).collect();
    let lk = FakeLiveKit::start(replies).await;
    let api = lk.api();
    for (sip, status, code, _, outcome) in cases {
        let err = api.create_sip_participant(&dial("dialout-e")).await.unwrap_err();
        match &err {
            ServerApiError::Sip { status_code, status: s, twirp_code } => {
                assert_eq!(*status_code, sip);
                assert_eq!(s, status);
                assert_eq!(twirp_code, code);
            }
            other => panic!("SIP {sip}: expected a Sip error, got {other:?}"),
        }
        assert_eq!(err.sip_status_code(), Some(sip));
        assert_eq!(err.sip_outcome(), outcome, "SIP {sip}");
        assert_eq!(SipOutcome::from_status(sip), outcome);
    }
    assert_eq!(SipOutcome::from_status(486).as_disconnected_by(), "rejected");
    assert_eq!(SipOutcome::from_status(480).as_disconnected_by(), "no_answer");
    assert_eq!(SipOutcome::from_status(500).as_disconnected_by(), "error");
    assert_eq!(lk.seen().len(), 5);
}

#[tokio::test]
async fn non_sip_twirp_error_is_twirp() {
    let lk = FakeLiveKit::start(vec![
        Reply::Twirp(StatusCode::UNAUTHORIZED, serde_json::json!({"code":"unauthenticated","msg":"invalid token"})),
        Reply::Raw(StatusCode::BAD_GATEWAY, "text/html", b"<html>502 Bad Gateway</html>".to_vec()),
    ])
    .await;
    let api = lk.api();
    let err = api.create_sip_participant(&dial("dialout-x")).await.unwrap_err();
    match &err {
        ServerApiError::Twirp { http_status, code, msg } => {
            assert_eq!((*http_status, code.as_str(), msg.as_str()), (401, "unauthenticated", "invalid token"));
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(err.sip_outcome(), SipOutcome::Error);

    // A proxy's HTML error page: Twirp's intermediary mapping, body quoted.
    match api.delete_room("r").await.unwrap_err() {
        ServerApiError::Twirp { http_status: 502, code, msg } => {
            assert_eq!(code, "unavailable");
            assert!(msg.contains("502 Bad Gateway"), "{msg}");
        }
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn transfer_sends_refer_with_room_admin_and_sip_call() {
    let lk = FakeLiveKit::start(vec![
        // LiveKit answers an ongoing/successful transfer with an (almost) empty message.
        Reply::Proto(Vec::new()),
        sip_error(StatusCode::TOO_MANY_REQUESTS, "resource_exhausted", 486, "Busy Here"),
        Reply::Proto(
            proto::TransferSipParticipantResponse {
                transfer_id: "TR_1".into(),
                status: proto::SipTransferStatus::StsTransferFailed as i32,
                reason: proto::SipTransferReason::StrCallEnded as i32,
                sip_status: None,
            }
            .encode_to_vec(),
        ),
    ])
    .await;
    let api = lk.api();
    let mut req = TransferSipParticipant::new("call-42", "sip_caller", "tel:+919812345678");
    req.play_dialtone = true;
    req.headers.insert("X-Transfer-Reason".into(), "billing".into());
    req.ringing_timeout = Some(Duration::from_secs(30));
    api.transfer_sip_participant(&req).await.unwrap();

    let seen = lk.only_request();
    let claims = check_request(&seen, "/twirp/livekit.SIP/TransferSIPParticipant");
    assert!(claims.video.room_admin);
    assert_eq!(claims.video.room, "call-42");
    assert!(claims.sip.call);
    let body = proto::TransferSipParticipantRequest::decode(seen.body.as_ref()).unwrap();
    assert_eq!(body.room_name, "call-42");
    assert_eq!(body.participant_identity, "sip_caller");
    assert_eq!(body.transfer_to, "tel:+919812345678");
    assert!(body.play_dialtone);
    assert_eq!(body.headers.get("X-Transfer-Reason").map(String::as_str), Some("billing"));
    assert_eq!(body.ringing_timeout, Some(pbjson_types::Duration { seconds: 30, nanos: 0 }));

    let err = api.transfer_sip_participant(&req).await.unwrap_err();
    assert_eq!(err.sip_status_code(), Some(486));
    let err = api.transfer_sip_participant(&req).await.unwrap_err();
    assert!(matches!(&err, ServerApiError::TransferFailed { reason } if reason == "STR_CALL_ENDED"), "{err:?}");
}

#[tokio::test]
async fn remove_participant_uses_room_admin_for_that_room() {
    let lk = FakeLiveKit::start(vec![
        Reply::Proto(Vec::new()),
        Reply::Twirp(StatusCode::NOT_FOUND, serde_json::json!({"code":"not_found","msg":"participant not found"})),
    ])
    .await;
    let api = lk.api();
    api.remove_participant("call-7", "sip_+9198").await.unwrap();
    let seen = lk.only_request();
    let claims = check_request(&seen, "/twirp/livekit.RoomService/RemoveParticipant");
    assert!(claims.video.room_admin);
    assert_eq!(claims.video.room, "call-7");
    assert!(!claims.sip.call, "RoomService needs no SIP grant");
    let body = proto::RoomParticipantIdentity::decode(seen.body.as_ref()).unwrap();
    assert_eq!((body.room.as_str(), body.identity.as_str()), ("call-7", "sip_+9198"));

    let err = api.remove_participant("call-7", "sip_+9198").await.unwrap_err();
    assert!(err.is_not_found(), "{err:?}");
}

#[tokio::test]
async fn list_participants_decodes_kinds_and_attributes() {
    let response = proto::ListParticipantsResponse {
        participants: vec![
            proto::ParticipantInfo {
                sid: "PA_sip".into(),
                identity: "sip_+9198".into(),
                name: "Caller".into(),
                kind: proto::participant_info::Kind::Sip as i32,
                attributes: HashMap::from([
                    ("sip.callStatus".to_string(), "active".to_string()),
                    ("sip.phoneNumber".to_string(), "+9198".to_string()),
                ]),
                ..Default::default()
            },
            proto::ParticipantInfo {
                sid: "PA_bot".into(),
                identity: "cxb-bot".into(),
                kind: proto::participant_info::Kind::Agent as i32,
                metadata: "{}".into(),
                ..Default::default()
            },
            proto::ParticipantInfo { identity: "bridge".into(), kind: 8, ..Default::default() },
        ],
    };
    let lk = FakeLiveKit::start(vec![Reply::Proto(response.encode_to_vec())]).await;
    let list = lk.api().list_participants("call-1").await.unwrap();

    let seen = lk.only_request();
    let claims = check_request(&seen, "/twirp/livekit.RoomService/ListParticipants");
    assert!(claims.video.room_admin);
    assert_eq!(claims.video.room, "call-1");
    assert_eq!(proto::ListParticipantsRequest::decode(seen.body.as_ref()).unwrap().room, "call-1");

    assert_eq!(list.len(), 3);
    assert_eq!(list[0].sid, "PA_sip");
    assert_eq!(list[0].kind, ParticipantKind::Sip);
    assert_eq!(list[0].name, "Caller");
    assert_eq!(list[0].attributes.get("sip.callStatus").map(String::as_str), Some("active"));
    assert_eq!(list[1].kind, ParticipantKind::Agent);
    assert_eq!(list[1].metadata, "{}");
    assert_eq!(list[2].kind, ParticipantKind::Other(8));
    let p = list[0].to_participant();
    assert_eq!((p.identity.as_str(), p.kind), ("sip_+9198", ParticipantKind::Sip));
    assert_eq!(p.attributes.len(), 2);
}

#[tokio::test]
async fn delete_room_uses_room_create() {
    let lk = FakeLiveKit::start(vec![Reply::Proto(Vec::new())]).await;
    lk.api().delete_room("dialout-9").await.unwrap();
    let seen = lk.only_request();
    let claims = check_request(&seen, "/twirp/livekit.RoomService/DeleteRoom");
    assert!(claims.video.room_create);
    assert!(!claims.video.room_admin && !claims.sip.call);
    assert_eq!(proto::DeleteRoomRequest::decode(seen.body.as_ref()).unwrap().room, "dialout-9");
}

#[tokio::test]
async fn hanging_server_times_out_within_bound() {
    let lk = FakeLiveKit::start(vec![Reply::Hang, Reply::Hang]).await;
    let api = lk.api_with(Duration::from_millis(300), Duration::from_millis(300));

    let started = Instant::now();
    let err = api.remove_participant("r", "i").await.unwrap_err();
    let elapsed = started.elapsed();
    assert!(matches!(err, ServerApiError::Timeout(d) if d == Duration::from_millis(300)), "{err:?}");
    assert!(elapsed >= Duration::from_millis(290) && elapsed < Duration::from_secs(10), "{elapsed:?}");

    // A blocking dial-out waits out the ringing timeout plus the margin, not the plain bound.
    let mut req = dial("dialout-h");
    req.ringing_timeout = Duration::from_secs(1);
    let started = Instant::now();
    let err = api.create_sip_participant(&req).await.unwrap_err();
    let elapsed = started.elapsed();
    assert!(matches!(err, ServerApiError::Timeout(d) if d == Duration::from_millis(1300)), "{err:?}");
    assert!(elapsed >= Duration::from_millis(1290) && elapsed < Duration::from_secs(12), "{elapsed:?}");
    assert_eq!(err.sip_outcome(), SipOutcome::Error);
}

#[tokio::test]
async fn refused_connection_is_connect_error() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    drop(listener);
    let api = ServerApi::new(ServerApiConfig::new(format!("http://{addr}"), KEY, SECRET)).unwrap();
    let err = api.delete_room("r").await.unwrap_err();
    assert!(matches!(err, ServerApiError::Connect(_)), "{err:?}");
}

#[tokio::test]
async fn bad_success_responses_are_rejected() {
    let lk = FakeLiveKit::start(vec![
        Reply::Raw(StatusCode::OK, "application/protobuf", vec![0u8; 5 * 1024 * 1024]),
        Reply::Raw(StatusCode::OK, "application/json", br#"{"participants":[]}"#.to_vec()),
        Reply::Raw(StatusCode::OK, "application/protobuf", vec![0xff, 0xff, 0xff]),
    ])
    .await;
    let api = lk.api();
    for _ in 0..3 {
        let err = api.list_participants("r").await.unwrap_err();
        assert!(matches!(err, ServerApiError::BadResponse(_)), "{err:?}");
    }
}

#[tokio::test]
async fn invalid_requests_are_not_sent() {
    let lk = FakeLiveKit::start(vec![]).await;
    let api = lk.api();
    let mut req = dial("room");
    req.sip_trunk_id.clear();
    assert!(matches!(api.create_sip_participant(&req).await, Err(ServerApiError::InvalidRequest(_))));
    let mut req = dial("room");
    req.ringing_timeout = Duration::ZERO;
    assert!(matches!(api.create_sip_participant(&req).await, Err(ServerApiError::InvalidRequest(_))));
    let req = TransferSipParticipant::new("room", "id", " ");
    assert!(matches!(api.transfer_sip_participant(&req).await, Err(ServerApiError::InvalidRequest(_))));
    assert!(matches!(api.remove_participant("", "id").await, Err(ServerApiError::InvalidRequest(_))));
    assert!(matches!(api.list_participants("").await, Err(ServerApiError::InvalidRequest(_))));
    assert!(matches!(api.delete_room(" ").await, Err(ServerApiError::InvalidRequest(_))));
    assert!(lk.seen().is_empty());

    assert!(matches!(
        ServerApi::new(ServerApiConfig::new("ws://127.0.0.1:1", "", SECRET)),
        Err(ServerApiError::Token(_))
    ));
    assert!(matches!(ServerApi::new(ServerApiConfig::new("127.0.0.1:1", KEY, SECRET)), Err(ServerApiError::Config(_))));
}
