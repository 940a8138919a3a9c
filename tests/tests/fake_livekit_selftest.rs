//! The fake LiveKit server API, driven by the real `cxb_livekit::ServerApi` client (and raw
//! HTTP where the client cannot send what is being tested).

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use cxb_e2e::fake_livekit::{
    sip_twirp_code, DialBehaviour, FakeLiveKitServer, FakeParticipant, TransferBehaviour, KIND_AGENT, KIND_SIP,
    KIND_STANDARD,
};
use cxb_livekit::room::ParticipantKind;
use cxb_livekit::token::{SIPGrants, VideoGrants};
use cxb_livekit::{
    CreateSipParticipant, ServerApi, ServerApiConfig, ServerApiError, SipOutcome, TokenIssuer, TransferSipParticipant,
};
use livekit_protocol as proto;
use prost::Message;

const KEY: &str = "APIfakelk";
const SECRET: &str = "fakelk-secret-0123456789abcdef0123456789";

fn api(lk: &FakeLiveKitServer) -> ServerApi {
    ServerApi::new(ServerApiConfig::new(lk.url(), KEY, SECRET)).expect("client")
}

fn dial(room: &str, identity: &str) -> CreateSipParticipant {
    CreateSipParticipant::new("ST_trunk", "+919876543210", room, identity)
}

/// POST a raw Twirp request with `token` (if any) and return (status, body).
async fn raw_post(
    lk: &FakeLiveKitServer,
    method: &str,
    token: Option<&str>,
    ct: &str,
    body: Vec<u8>,
) -> (u16, Vec<u8>) {
    let url = format!("http://{}/twirp/{method}", lk.addr());
    let mut request = reqwest::Client::new().post(url).header("content-type", ct).body(body);
    if let Some(t) = token {
        request = request.bearer_auth(t);
    }
    let response = request.send().await.expect("fake reachable");
    let status = response.status().as_u16();
    (status, response.bytes().await.expect("body").to_vec())
}

fn twirp_json(body: &[u8]) -> serde_json::Value {
    serde_json::from_slice(body).expect("Twirp errors are JSON")
}

fn token(video: VideoGrants, sip: SIPGrants) -> String {
    TokenIssuer::new(KEY, SECRET).unwrap().server_token(video, sip).unwrap()
}

#[tokio::test]
async fn url_is_a_livekit_ws_url() {
    let lk = FakeLiveKitServer::start(KEY, SECRET).await;
    assert_eq!(lk.url(), format!("ws://127.0.0.1:{}", lk.addr().port()));
    assert_eq!(api(&lk).base_url(), format!("http://127.0.0.1:{}", lk.addr().port()));
}

#[tokio::test]
async fn list_participants_reports_the_room() {
    let lk = FakeLiveKitServer::start(KEY, SECRET).await;
    lk.set_participants(
        "call-1",
        vec![
            FakeParticipant::sip("sip_+9198", "+9198").with_attribute("sip.trunkID", "ST_x"),
            FakeParticipant::standard("widget-user"),
            FakeParticipant::new("cxb-bot", KIND_AGENT),
        ],
    );
    let api = api(&lk);
    let list = api.list_participants("call-1").await.unwrap();
    assert_eq!(list.len(), 3);
    assert_eq!((list[0].identity.as_str(), list[0].kind), ("sip_+9198", ParticipantKind::Sip));
    assert_eq!(list[0].attributes.get("sip.phoneNumber").map(String::as_str), Some("+9198"));
    assert_eq!(list[0].attributes.get("sip.trunkID").map(String::as_str), Some("ST_x"));
    assert!(list[0].sid.starts_with("PA_"), "{}", list[0].sid);
    assert_ne!(list[0].sid, list[1].sid);
    assert_eq!(list[1].kind, ParticipantKind::Standard);
    assert_eq!(list[2].kind, ParticipantKind::Agent);

    // A room nobody populated is empty, not an error.
    assert!(api.list_participants("other-room").await.unwrap().is_empty());

    let calls = lk.calls_to("ListParticipants");
    assert_eq!(calls.len(), 2);
    assert_eq!(calls[0].method, "livekit.RoomService/ListParticipants");
    assert!(calls[0].authorized);
    assert_eq!(calls[0].body, serde_json::json!({"room": "call-1"}));
    assert_eq!(calls[1].body["room"], "other-room");
    assert!(calls[0].at <= calls[1].at);

    // Replacing with an empty list empties the room.
    lk.set_participants("call-1", vec![]);
    assert!(api.list_participants("call-1").await.unwrap().is_empty());
}

#[tokio::test]
async fn remove_participant_changes_the_room_and_unknown_is_not_found() {
    let lk = FakeLiveKitServer::start(KEY, SECRET).await;
    lk.set_participants("call-7", vec![FakeParticipant::sip("sip_a", "+911"), FakeParticipant::standard("b")]);
    let api = api(&lk);

    api.remove_participant("call-7", "sip_a").await.unwrap();
    assert_eq!(lk.participants("call-7"), vec![FakeParticipant::standard("b")]);
    let ids: Vec<String> = api.list_participants("call-7").await.unwrap().into_iter().map(|p| p.identity).collect();
    assert_eq!(ids, ["b"]);

    let err = api.remove_participant("call-7", "sip_a").await.unwrap_err();
    assert!(err.is_not_found(), "{err:?}");
    assert!(matches!(err, ServerApiError::Twirp { http_status: 404, .. }), "{err:?}");
    let err = api.remove_participant("no-such-room", "b").await.unwrap_err();
    assert!(err.is_not_found(), "{err:?}");

    let calls = lk.calls_to("RemoveParticipant");
    assert_eq!(calls.len(), 3);
    assert!(calls.iter().all(|c| c.authorized && c.method == "livekit.RoomService/RemoveParticipant"));
    assert_eq!((calls[0].body["room"].as_str(), calls[0].body["identity"].as_str()), (Some("call-7"), Some("sip_a")));
}

#[tokio::test]
async fn delete_room_empties_it() {
    let lk = FakeLiveKitServer::start(KEY, SECRET).await;
    lk.set_participants("dialout-9", vec![FakeParticipant::standard("x")]);
    let api = api(&lk);
    api.delete_room("dialout-9").await.unwrap();
    assert!(lk.participants("dialout-9").is_empty());
    let call = lk.wait_for_call("DeleteRoom", Duration::from_secs(1)).await.expect("recorded");
    assert!(call.authorized);
    assert_eq!(call.body["room"], "dialout-9");
}

#[tokio::test]
async fn answered_dial_returns_info_after_the_delay_and_joins_the_room() {
    let lk = FakeLiveKitServer::start(KEY, SECRET).await;
    lk.set_dial(DialBehaviour::Answer { after: Duration::from_millis(300) });
    let api = api(&lk);
    let mut req = dial("dialout-1", "sip_+919876543210");
    req.participant_name = "Customer".into();
    req.participant_attributes = BTreeMap::from([("cxb.call_id".to_string(), "c-9".to_string())]);
    req.headers = BTreeMap::from([("X-CXB-Call".to_string(), "c-9".to_string())]);
    req.sip_number = "+918012345678".into();

    let started = Instant::now();
    let info = api.create_sip_participant(&req).await.unwrap();
    let elapsed = started.elapsed();
    assert!(elapsed >= Duration::from_millis(290) && elapsed < Duration::from_secs(3), "{elapsed:?}");
    assert!(info.participant_id.starts_with("PA_"), "{}", info.participant_id);
    assert!(info.sip_call_id.starts_with("SCL_"), "{}", info.sip_call_id);
    assert_eq!(info.participant_identity, "sip_+919876543210");
    assert_eq!(info.room_name, "dialout-1");

    let list = api.list_participants("dialout-1").await.unwrap();
    assert_eq!(list.len(), 1);
    let p = &list[0];
    assert_eq!((p.identity.as_str(), p.kind, p.name.as_str()), ("sip_+919876543210", ParticipantKind::Sip, "Customer"));
    assert_eq!(p.sid, info.participant_id);
    assert_eq!(p.attributes.get("cxb.call_id").map(String::as_str), Some("c-9"));
    assert_eq!(p.attributes.get("sip.callStatus").map(String::as_str), Some("active"));
    assert_eq!(p.attributes.get("sip.phoneNumber").map(String::as_str), Some("+919876543210"));
    assert_eq!(p.attributes.get("sip.callID"), Some(&info.sip_call_id));
    assert_eq!(lk.participants("dialout-1")[0].kind, KIND_SIP);

    let call = lk.calls_to("CreateSIPParticipant").pop().expect("recorded");
    assert_eq!(call.method, "livekit.SIP/CreateSIPParticipant");
    assert!(call.authorized);
    // Recorded on arrival: the answer came a full delay after the record.
    assert!(call.at >= started && call.at + Duration::from_millis(290) <= started + elapsed, "recorded on arrival");
    let body = &call.body;
    assert_eq!(body["sip_trunk_id"], "ST_trunk");
    assert_eq!(body["sip_call_to"], "+919876543210");
    assert_eq!(body["sip_number"], "+918012345678");
    assert_eq!(body["room_name"], "dialout-1");
    assert_eq!(body["participant_identity"], "sip_+919876543210");
    assert_eq!(body["participant_attributes"]["cxb.call_id"], "c-9");
    assert_eq!(body["headers"]["X-CXB-Call"], "c-9");
    assert_eq!(body["ringing_timeout"], "45s");
    assert_eq!(body["wait_until_answered"], true);
    assert!(body.get("max_call_duration").is_none() && body.get("display_name").is_none(), "{body}");
}

#[tokio::test]
async fn dial_failures_carry_the_sip_status() {
    let lk = FakeLiveKitServer::start(KEY, SECRET).await;
    let api = api(&lk);
    let cases = [
        (486, "Busy Here", "resource_exhausted", SipOutcome::Rejected),
        (603, "Decline", "permission_denied", SipOutcome::Rejected),
        (408, "Request Timeout", "deadline_exceeded", SipOutcome::NoAnswer),
        (480, "Temporarily Unavailable", "resource_exhausted", SipOutcome::NoAnswer),
        (500, "Server Internal Error", "failed_precondition", SipOutcome::Error),
    ];
    for (sip, reason, code, outcome) in cases {
        lk.set_dial(DialBehaviour::SipError { status: sip, after: Duration::from_millis(100) });
        let started = Instant::now();
        let err = api.create_sip_participant(&dial("dialout-e", "sip_e")).await.unwrap_err();
        assert!(started.elapsed() >= Duration::from_millis(95), "the failure waits out the delay");
        match &err {
            ServerApiError::Sip { status_code, status, twirp_code } => {
                assert_eq!((*status_code, status.as_str(), twirp_code.as_str()), (sip, reason, code));
            }
            other => panic!("SIP {sip}: expected a Sip error, got {other:?}"),
        }
        assert_eq!(err.sip_outcome(), outcome, "SIP {sip}");
    }
    assert!(lk.participants("dialout-e").is_empty(), "a failed dial never joins the room");
    assert_eq!(lk.calls_to("CreateSIPParticipant").len(), 5);
}

#[tokio::test]
async fn sip_error_http_status_follows_the_twirp_code() {
    let lk = FakeLiveKitServer::start(KEY, SECRET).await;
    lk.set_dial(DialBehaviour::SipError { status: 486, after: Duration::ZERO });
    let req = proto::CreateSipParticipantRequest {
        sip_trunk_id: "ST_t".into(),
        sip_call_to: "+911234567".into(),
        room_name: "r".into(),
        wait_until_answered: true,
        ..Default::default()
    };
    let jwt = token(VideoGrants::default(), SIPGrants { admin: false, call: true });
    let (status, body) =
        raw_post(&lk, "livekit.SIP/CreateSIPParticipant", Some(&jwt), "application/protobuf", req.encode_to_vec())
            .await;
    assert_eq!(status, 429);
    let err = twirp_json(&body);
    assert_eq!(err["code"], "resource_exhausted");
    assert_eq!(err["msg"], "sip status 486: Busy Here");
    assert_eq!(err["meta"]["sip_status_code"], "486");
    assert_eq!(err["meta"]["sip_status"], "Busy Here");

    lk.set_dial(DialBehaviour::SipError { status: 503, after: Duration::ZERO });
    let (status, body) =
        raw_post(&lk, "livekit.SIP/CreateSIPParticipant", Some(&jwt), "application/protobuf", req.encode_to_vec())
            .await;
    assert_eq!((status, twirp_json(&body)["code"].as_str()), (412, Some("failed_precondition")));
    assert_eq!(sip_twirp_code(604), "not_found");
    assert_eq!(sip_twirp_code(499), "invalid_argument");
}

#[tokio::test]
async fn hanging_dial_never_answers_until_the_client_gives_up() {
    let lk = FakeLiveKitServer::start(KEY, SECRET).await;
    lk.set_dial(DialBehaviour::Hang);
    let mut config = ServerApiConfig::new(lk.url(), KEY, SECRET);
    config.request_timeout = Duration::from_millis(200);
    config.sip_wait_margin = Duration::from_millis(200);
    let api = ServerApi::new(config).unwrap();
    let mut req = dial("dialout-h", "sip_h");
    req.ringing_timeout = Duration::from_millis(400);

    let started = Instant::now();
    let client = tokio::spawn(async move { api.create_sip_participant(&req).await });
    let seen = lk.wait_for_call("CreateSIPParticipant", Duration::from_secs(2)).await;
    assert!(seen.is_some_and(|c| c.at >= started), "the request is recorded on arrival");
    assert!(!client.is_finished(), "the request is still hanging");
    let err = client.await.unwrap().unwrap_err();
    assert!(matches!(err, ServerApiError::Timeout(d) if d == Duration::from_millis(600)), "{err:?}");
    assert!(started.elapsed() >= Duration::from_millis(590), "{:?}", started.elapsed());
    assert!(lk.participants("dialout-h").is_empty());
}

#[tokio::test]
async fn dropping_the_fake_ends_a_hanging_request() {
    let lk = FakeLiveKitServer::start(KEY, SECRET).await;
    lk.set_dial(DialBehaviour::Hang);
    let api = api(&lk);
    let pending = tokio::spawn(async move { api.create_sip_participant(&dial("r", "i")).await });
    assert!(lk.wait_for_call("CreateSIPParticipant", Duration::from_secs(2)).await.is_some());
    let started = Instant::now();
    drop(lk);
    let result = tokio::time::timeout(Duration::from_secs(5), pending).await.expect("ends promptly").unwrap();
    match result.unwrap_err() {
        ServerApiError::Twirp { http_status: 503, code, .. } => assert_eq!(code, "unavailable"),
        other => panic!("{other:?}"),
    }
    assert!(started.elapsed() < Duration::from_secs(2));
}

#[tokio::test]
async fn dial_without_waiting_answers_at_once_and_joins_later() {
    let lk = FakeLiveKitServer::start(KEY, SECRET).await;
    lk.set_dial(DialBehaviour::Answer { after: Duration::from_millis(300) });
    let api = api(&lk);
    let mut req = dial("dialout-n", "");
    req.wait_until_answered = false;
    let info = api.create_sip_participant(&req).await.unwrap();
    // No identity given: LiveKit derives one from the number.
    assert_eq!(info.participant_identity, "sip_+919876543210");
    // The response came before the callee answered.
    assert!(lk.participants("dialout-n").is_empty(), "not answered yet");
    tokio::time::sleep(Duration::from_millis(500)).await;
    let joined = lk.participants("dialout-n");
    assert_eq!(joined.len(), 1);
    assert_eq!((joined[0].identity.as_str(), joined[0].kind), ("sip_+919876543210", KIND_SIP));
}

#[tokio::test]
async fn transfer_ok_and_sip_error() {
    let lk = FakeLiveKitServer::start(KEY, SECRET).await;
    let api = api(&lk);
    let mut req = TransferSipParticipant::new("call-42", "sip_caller", "tel:+919812345678");
    req.headers.insert("X-Transfer-Reason".into(), "billing".into());
    req.ringing_timeout = Some(Duration::from_millis(1500));
    api.transfer_sip_participant(&req).await.unwrap();

    lk.set_transfer(TransferBehaviour::SipError(486));
    let err = api.transfer_sip_participant(&req).await.unwrap_err();
    assert_eq!(err.sip_status_code(), Some(486));
    assert!(matches!(&err, ServerApiError::Sip { twirp_code, .. } if twirp_code == "resource_exhausted"), "{err:?}");

    lk.set_transfer(TransferBehaviour::SipError(603));
    assert_eq!(api.transfer_sip_participant(&req).await.unwrap_err().sip_outcome(), SipOutcome::Rejected);

    lk.set_transfer(TransferBehaviour::Ok);
    api.transfer_sip_participant(&req).await.unwrap();

    let calls = lk.calls_to("TransferSIPParticipant");
    assert_eq!(calls.len(), 4);
    assert!(calls.iter().all(|c| c.authorized && c.method == "livekit.SIP/TransferSIPParticipant"));
    let body = &calls[0].body;
    assert_eq!(body["room_name"], "call-42");
    assert_eq!(body["participant_identity"], "sip_caller");
    assert_eq!(body["transfer_to"], "tel:+919812345678");
    assert_eq!(body["headers"]["X-Transfer-Reason"], "billing");
    assert_eq!(body["ringing_timeout"], "1.500s");
}

#[tokio::test]
async fn wrong_secret_is_unauthenticated_and_recorded() {
    let lk = FakeLiveKitServer::start(KEY, SECRET).await;
    lk.set_participants("call-1", vec![FakeParticipant::standard("a")]);
    let wrong = ServerApi::new(ServerApiConfig::new(lk.url(), KEY, "not-the-secret")).unwrap();

    let err = wrong.list_participants("call-1").await.unwrap_err();
    match &err {
        ServerApiError::Twirp { http_status: 401, code, .. } => assert_eq!(code, "unauthenticated"),
        other => panic!("{other:?}"),
    }
    let err = wrong.create_sip_participant(&dial("call-1", "sip_x")).await.unwrap_err();
    assert_eq!(err.sip_outcome(), SipOutcome::Error);
    assert!(matches!(err, ServerApiError::Twirp { http_status: 401, .. }), "{err:?}");
    let err = wrong.remove_participant("call-1", "a").await.unwrap_err();
    assert!(!err.is_not_found(), "{err:?}");
    assert_eq!(lk.participants("call-1").len(), 1, "an unauthenticated remove changes nothing");

    let calls = lk.calls();
    assert_eq!(calls.len(), 3);
    assert!(calls.iter().all(|c| !c.authorized), "{calls:?}");
    assert_eq!(calls[1].method, "livekit.SIP/CreateSIPParticipant");
    assert!(lk.participants("call-1").iter().all(|p| p.kind == KIND_STANDARD));
}

#[tokio::test]
async fn missing_or_wrong_grants_are_unauthenticated() {
    let lk = FakeLiveKitServer::start(KEY, SECRET).await;
    lk.set_participants("call-1", vec![FakeParticipant::standard("a")]);
    let list = proto::ListParticipantsRequest { room: "call-1".into() }.encode_to_vec();
    let method = "livekit.RoomService/ListParticipants";

    // No token at all.
    let (status, body) = raw_post(&lk, method, None, "application/protobuf", list.clone()).await;
    assert_eq!((status, twirp_json(&body)["code"].as_str()), (401, Some("unauthenticated")));
    assert_eq!(twirp_json(&body)["msg"], "permissions denied");

    // roomAdmin for another room.
    let other_room =
        token(VideoGrants { room_admin: true, room: "call-2".into(), ..VideoGrants::default() }, SIPGrants::default());
    let (status, _) = raw_post(&lk, method, Some(&other_room), "application/protobuf", list.clone()).await;
    assert_eq!(status, 401);

    // A dial-out needs sip.call: roomAdmin alone is not enough.
    let admin_only =
        token(VideoGrants { room_admin: true, room: "call-1".into(), ..VideoGrants::default() }, SIPGrants::default());
    let dial_body = proto::CreateSipParticipantRequest {
        sip_trunk_id: "ST".into(),
        sip_call_to: "+911234567".into(),
        room_name: "call-1".into(),
        ..Default::default()
    }
    .encode_to_vec();
    let (status, _) =
        raw_post(&lk, "livekit.SIP/CreateSIPParticipant", Some(&admin_only), "application/protobuf", dial_body).await;
    assert_eq!(status, 401);

    // A transfer needs roomAdmin on the room as well as sip.call.
    let sip_only = token(VideoGrants::default(), SIPGrants { admin: false, call: true });
    let transfer = proto::TransferSipParticipantRequest {
        room_name: "call-1".into(),
        participant_identity: "a".into(),
        transfer_to: "tel:+911234567".into(),
        ..Default::default()
    }
    .encode_to_vec();
    let (status, _) =
        raw_post(&lk, "livekit.SIP/TransferSIPParticipant", Some(&sip_only), "application/protobuf", transfer).await;
    assert_eq!(status, 401);

    // The right grant works.
    let (status, body) = raw_post(&lk, method, Some(&admin_only), "application/protobuf", list).await;
    assert_eq!(status, 200);
    assert_eq!(proto::ListParticipantsResponse::decode(body.as_slice()).unwrap().participants.len(), 1);

    let authorized: Vec<bool> = lk.calls().iter().map(|c| c.authorized).collect();
    assert_eq!(authorized, [false, false, false, false, true]);
    // Rejected requests are still decoded for the record.
    assert_eq!(lk.calls()[3].body["transfer_to"], "tel:+911234567");
}

#[tokio::test]
async fn unknown_routes_and_bad_requests_are_twirp_errors() {
    let lk = FakeLiveKitServer::start(KEY, SECRET).await;
    let jwt = token(VideoGrants { room_admin: true, room: "r".into(), ..VideoGrants::default() }, SIPGrants::default());

    let (status, body) =
        raw_post(&lk, "livekit.RoomService/MutePublishedTrack", Some(&jwt), "application/protobuf", vec![]).await;
    assert_eq!((status, twirp_json(&body)["code"].as_str()), (404, Some("bad_route")));
    let call = lk.wait_for_call("MutePublishedTrack", Duration::from_secs(1)).await.expect("recorded");
    assert_eq!(call.method, "livekit.RoomService/MutePublishedTrack");
    assert!(call.body.is_null());

    // Twirp is POST only.
    let response = reqwest::Client::new()
        .get(format!("http://{}/twirp/livekit.RoomService/ListParticipants", lk.addr()))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 404);
    assert_eq!(twirp_json(&response.bytes().await.unwrap())["code"], "bad_route");

    // JSON bodies are not served.
    let (status, _) =
        raw_post(&lk, "livekit.RoomService/ListParticipants", Some(&jwt), "application/json", b"{}".to_vec()).await;
    assert_eq!(status, 404);

    // An undecodable protobuf body is malformed.
    let (status, body) =
        raw_post(&lk, "livekit.RoomService/ListParticipants", Some(&jwt), "application/protobuf", vec![0xff; 3]).await;
    assert_eq!((status, twirp_json(&body)["code"].as_str()), (400, Some("malformed")));

    // Oversized bodies are refused without being buffered whole.
    let (status, body) = raw_post(
        &lk,
        "livekit.RoomService/ListParticipants",
        Some(&jwt),
        "application/protobuf",
        vec![0u8; cxb_e2e::fake_livekit::MAX_REQUEST_BYTES + 1],
    )
    .await;
    assert_eq!((status, twirp_json(&body)["code"].as_str()), (400, Some("malformed")));
    assert_eq!(lk.calls().len(), 5);
}

#[tokio::test]
async fn wait_for_call_times_out_or_sees_a_later_call() {
    let lk = FakeLiveKitServer::start(KEY, SECRET).await;
    let started = Instant::now();
    assert!(lk.wait_for_call("RemoveParticipant", Duration::from_millis(200)).await.is_none());
    let waited = started.elapsed();
    assert!(waited >= Duration::from_millis(195) && waited < Duration::from_secs(1), "{waited:?}");

    let api = api(&lk);
    let later = async {
        tokio::time::sleep(Duration::from_millis(150)).await;
        // An unrelated call first, which must not satisfy the wait.
        let _ = api.list_participants("r").await;
        api.remove_participant("r", "gone").await
    };
    let (call, removed) = tokio::join!(lk.wait_for_call("RemoveParticipant", Duration::from_secs(3)), later);
    assert!(removed.unwrap_err().is_not_found());
    let call = call.expect("seen");
    assert_eq!(call.body["identity"], "gone");
    assert!(call.authorized);
}
