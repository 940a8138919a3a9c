//! The in-memory room behaves like the seam promises: events in order, bot media observed,
//! disconnect ends the stream, failures on demand, everything bounded.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use cxb_livekit::fake::FakeConnector;
use cxb_livekit::room::{JoinRequest, Participant, ParticipantKind, RoomConnector, RoomError, RoomEvent};

const WAIT: Duration = Duration::from_secs(2);

fn join(room: &str) -> JoinRequest {
    JoinRequest {
        url: "wss://lk.example".into(),
        token: "jwt".into(),
        room_name: room.into(),
        identity: "cxb-bot".into(),
        sample_rate: 16_000,
        num_channels: 1,
    }
}

fn sip_caller(status: &str) -> Participant {
    Participant {
        identity: "sip_+919876543210".into(),
        kind: ParticipantKind::Sip,
        attributes: BTreeMap::from([
            ("sip.callStatus".to_string(), status.to_string()),
            ("sip.phoneNumber".to_string(), "+919876543210".to_string()),
        ]),
    }
}

async fn recv(events: &mut tokio::sync::mpsc::Receiver<RoomEvent>) -> Option<RoomEvent> {
    tokio::time::timeout(WAIT, events.recv()).await.expect("event within 2 s")
}

#[tokio::test]
async fn events_flow_in_and_bot_media_is_observed() {
    let fake = FakeConnector::new();
    fake.set_initial_participants(vec![sip_caller("ringing")]);
    let connector: Arc<dyn RoomConnector> = Arc::new(fake.clone());

    let mut handle = connector.connect(join("dialout-1")).await.unwrap();
    let room = fake.next_room(WAIT).await.expect("room handed to the test");
    assert_eq!(room.request().room_name, "dialout-1");
    assert_eq!(fake.join_requests(), vec![join("dialout-1")]);

    // Present at join → reported as joined first.
    assert_eq!(recv(&mut handle.events).await, Some(RoomEvent::ParticipantJoined(sip_caller("ringing"))));

    room.attributes_changed("sip_+919876543210", [("sip.callStatus", "active")]).await.unwrap();
    room.audio("sip_+919876543210", vec![1, 2, 3]).await.unwrap();
    room.dtmf("sip_+919876543210", "5").await.unwrap();
    room.participant_left("sip_+919876543210", Some("CLIENT_INITIATED")).await.unwrap();
    match recv(&mut handle.events).await {
        Some(RoomEvent::AttributesChanged { identity, attributes }) => {
            assert_eq!(identity, "sip_+919876543210");
            assert_eq!(attributes.get("sip.callStatus").map(String::as_str), Some("active"));
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(
        recv(&mut handle.events).await,
        Some(RoomEvent::Audio { identity: "sip_+919876543210".into(), pcm: vec![1, 2, 3] })
    );
    assert_eq!(
        recv(&mut handle.events).await,
        Some(RoomEvent::Dtmf { identity: "sip_+919876543210".into(), digit: "5".into() })
    );
    assert_eq!(
        recv(&mut handle.events).await,
        Some(RoomEvent::ParticipantLeft {
            identity: "sip_+919876543210".into(),
            reason: Some("CLIENT_INITIATED".into())
        })
    );

    // Bot side, from another task as call logic would.
    let media = handle.media;
    let writer = tokio::spawn(async move {
        for i in 0..5i16 {
            media.capture_frame(&[i; 320]).unwrap();
        }
        media.clear_buffer();
        media.capture_frame(&[9; 160]).unwrap();
        media.send_dtmf("12#").unwrap();
        assert!(matches!(media.send_dtmf("x"), Err(RoomError::Media(_))));
        media
    });
    assert!(room.wait_for_samples(5 * 320 + 160, WAIT).await);
    assert!(room.wait_for_dtmf(1, WAIT).await);
    let media = writer.await.unwrap();
    assert_eq!(room.captured_frame_count(), 6);
    assert_eq!(room.captured_frames()[2], vec![2i16; 320]);
    assert_eq!(room.captured_audio().len(), 5 * 320 + 160);
    assert_eq!(room.clear_buffer_count(), 1);
    assert_eq!(room.clear_positions(), vec![5 * 320]);
    assert_eq!(room.dtmf_sent(), vec!["12#".to_string()]);

    // Bot hangs up: one Disconnected, then the stream ends; media is closed; idempotent.
    assert!(!room.is_disconnected());
    media.disconnect();
    media.disconnect();
    assert!(room.wait_disconnected(WAIT).await);
    assert_eq!(room.disconnect_count(), 2);
    assert_eq!(recv(&mut handle.events).await, Some(RoomEvent::Disconnected { reason: "client_initiated".into() }));
    assert_eq!(recv(&mut handle.events).await, None);
    assert!(matches!(media.capture_frame(&[0; 10]), Err(RoomError::Closed)));
    assert!(matches!(media.send_dtmf("1"), Err(RoomError::Closed)));
    assert!(matches!(room.audio("x", vec![0]).await, Err(RoomError::Closed)));
}

#[tokio::test]
async fn remote_disconnect_ends_the_stream() {
    let fake = FakeConnector::new();
    let mut handle = fake.connect(join("call-1")).await.unwrap();
    let room = fake.try_next_room().unwrap();
    room.remote_disconnect("ROOM_DELETED");
    assert_eq!(recv(&mut handle.events).await, Some(RoomEvent::Disconnected { reason: "ROOM_DELETED".into() }));
    assert_eq!(recv(&mut handle.events).await, None);
    assert!(room.is_disconnected());
    assert_eq!(room.disconnect_count(), 0, "the bot did not call disconnect");
    assert!(matches!(handle.media.capture_frame(&[0; 10]), Err(RoomError::Closed)));
}

#[tokio::test]
async fn connect_failures_on_demand() {
    let fake = FakeConnector::new();
    fake.fail_next_connects(2, "401 unauthorized");
    for _ in 0..2 {
        match fake.connect(join("r")).await {
            Err(RoomError::Connect(m)) => assert_eq!(m, "401 unauthorized"),
            other => panic!("{other:?}"),
        }
    }
    assert!(fake.connect(join("r")).await.is_ok());

    fake.fail_connects("server unreachable");
    assert!(matches!(fake.connect(join("r")).await, Err(RoomError::Connect(_))));
    assert!(matches!(fake.connect(join("r")).await, Err(RoomError::Connect(_))));
    fake.succeed_connects();
    assert!(fake.connect(join("r")).await.is_ok());
    assert_eq!(fake.connect_count(), 6);
    assert_eq!(fake.join_requests().len(), 6);
    // Only successful joins produce rooms.
    assert!(fake.try_next_room().is_some());
    assert!(fake.try_next_room().is_some());
    assert!(fake.try_next_room().is_none());
    assert!(fake.next_room(Duration::from_millis(50)).await.is_none());
}

#[tokio::test(start_paused = true)]
async fn connect_delay_is_applied() {
    let fake = FakeConnector::new();
    fake.set_connect_delay(Duration::from_secs(3));
    let started = tokio::time::Instant::now();
    let connecting = tokio::spawn({
        let fake = fake.clone();
        async move { fake.connect(join("slow")).await.map(|_| ()) }
    });
    // The test can await the room before the join finishes.
    let room = fake.next_room(Duration::from_secs(10)).await.expect("room");
    assert!(started.elapsed() >= Duration::from_secs(3));
    assert_eq!(room.request().room_name, "slow");
    connecting.await.unwrap().unwrap();
}

#[tokio::test]
async fn buffers_are_bounded() {
    let fake = FakeConnector::new();
    fake.set_event_capacity(2);
    fake.set_max_captured_samples(1000);
    let mut handle = fake.connect(join("b")).await.unwrap();
    let room = fake.try_next_room().unwrap();

    room.try_send(RoomEvent::Dtmf { identity: "a".into(), digit: "1".into() }).unwrap();
    room.try_send(RoomEvent::Dtmf { identity: "a".into(), digit: "2".into() }).unwrap();
    assert!(matches!(
        room.try_send(RoomEvent::Dtmf { identity: "a".into(), digit: "3".into() }),
        Err(RoomError::Media(_))
    ));
    // `send` waits for space and gets it once the consumer reads.
    let sender = tokio::spawn({
        let room = room.clone();
        async move { room.dtmf("a", "3").await }
    });
    assert!(recv(&mut handle.events).await.is_some());
    sender.await.unwrap().unwrap();

    for _ in 0..10 {
        handle.media.capture_frame(&[7; 300]).unwrap();
    }
    assert_eq!(room.captured_sample_count(), 3000);
    assert!(room.captured_audio().len() <= 1000);
    assert_eq!(room.captured_audio().len() as u64 + room.dropped_sample_count(), 3000);

    room.set_capture_error(Some("encoder failed".into()));
    assert!(matches!(handle.media.capture_frame(&[0; 10]), Err(RoomError::Media(m)) if m == "encoder failed"));
    room.set_capture_error(None);
    handle.media.capture_frame(&[0; 10]).unwrap();

    // Dropping the receiver is visible to the test and fails further sends.
    drop(handle.events);
    assert!(room.events_receiver_dropped());
    assert!(matches!(room.try_send(RoomEvent::Disconnected { reason: "x".into() }), Err(RoomError::Closed)));
}

#[tokio::test]
async fn waits_time_out_when_nothing_happens() {
    let fake = FakeConnector::new();
    let _handle = fake.connect(join("w")).await.unwrap();
    let room = fake.try_next_room().unwrap();
    let started = std::time::Instant::now();
    assert!(!room.wait_for_samples(1, Duration::from_millis(100)).await);
    assert!(!room.wait_disconnected(Duration::from_millis(100)).await);
    assert!(!room.wait_for_clears(1, Duration::from_millis(100)).await);
    assert!(started.elapsed() < Duration::from_secs(10), "each wait is bounded");
}
