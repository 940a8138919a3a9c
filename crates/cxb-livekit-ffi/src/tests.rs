//! Event routing and delivery, without the engine: the dispatcher is fed `FfiEvent`s the way the
//! C callback would, and handle releases are collected instead of sent to the janitor.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

use cxb_livekit::room::{ParticipantKind, RoomEvent};
use prost::Message as _;
use tokio::sync::mpsc;

use crate::dispatch::{Dispatcher, Inbox, InboxItem, Job};
use crate::proto::{self, ffi_event::Message as Ev, room_event::Message as RoomMsg};
use crate::room::{dtmf_code, dtmf_digit, participant_from, participant_kind, reason_name, Delivery};

fn dispatcher() -> (Dispatcher, Arc<Mutex<Vec<Job>>>) {
    let jobs = Arc::new(Mutex::new(Vec::new()));
    let sink = jobs.clone();
    let push = move |job| {
        sink.lock().unwrap().push(job);
        true
    };
    (Dispatcher::new(Box::new(push)), jobs)
}

fn owned(id: u64) -> proto::FfiOwnedHandle {
    proto::FfiOwnedHandle { id }
}

fn event(message: Ev) -> Vec<u8> {
    proto::FfiEvent { message: Some(message) }.encode_to_vec()
}

fn room_event(room: u64, msg: RoomMsg) -> Vec<u8> {
    event(Ev::RoomEvent(proto::RoomEvent { room_handle: room, message: Some(msg) }))
}

fn capture_cb(async_id: u64) -> Vec<u8> {
    event(Ev::CaptureAudioFrame(proto::CaptureAudioFrameCallback { async_id, error: None }))
}

fn participant_connected(handle: u64, identity: &str, kind: proto::ParticipantKind) -> RoomMsg {
    RoomMsg::ParticipantConnected(proto::ParticipantConnected {
        info: proto::OwnedParticipant {
            handle: owned(handle),
            info: proto::ParticipantInfo {
                identity: identity.into(),
                kind: kind as i32,
                attributes: [("sip.callStatus".to_string(), "ringing".to_string())].into_iter().collect(),
                ..Default::default()
            },
        },
    })
}

#[tokio::test]
async fn results_reach_the_waiter_registered_for_their_async_id() {
    let (d, _) = dispatcher();
    let rx7 = d.expect(7, "capture", None);
    let rx8 = d.expect(8, "capture", Some(vec![1, 2, 3]));
    d.handle_bytes(&capture_cb(8));
    d.handle_bytes(&capture_cb(7));
    assert!(matches!(rx7.await.unwrap(), Ev::CaptureAudioFrame(c) if c.async_id == 7));
    assert!(matches!(rx8.await.unwrap(), Ev::CaptureAudioFrame(c) if c.async_id == 8));
    assert_eq!(d.pending_waiters(), 0);
}

#[tokio::test]
async fn a_result_that_arrives_before_registration_is_not_lost() {
    let (d, _) = dispatcher();
    d.handle_bytes(&capture_cb(42));
    let rx = d.expect(42, "capture", None);
    assert!(matches!(rx.await.unwrap(), Ev::CaptureAudioFrame(c) if c.async_id == 42));
    assert_eq!(d.pending_waiters(), 0);
}

#[test]
fn a_room_that_connects_after_its_caller_gave_up_is_left_and_released() {
    let (d, jobs) = dispatcher();
    let rx = d.expect(5, "connect", None);
    drop(rx); // the connect future timed out or was dropped
    let result = proto::connect_callback::Result {
        room: proto::OwnedRoom { handle: owned(100), info: Default::default() },
        local_participant: proto::OwnedParticipant { handle: owned(101), info: Default::default() },
        participants: vec![proto::connect_callback::ParticipantWithTracks {
            participant: proto::OwnedParticipant { handle: owned(102), info: Default::default() },
            publications: vec![proto::OwnedTrackPublication { handle: owned(103), info: Default::default() }],
        }],
    };
    d.handle_bytes(&event(Ev::Connect(proto::ConnectCallback {
        async_id: 5,
        message: Some(proto::connect_callback::Message::Result(result)),
    })));
    assert_eq!(*jobs.lock().unwrap(), vec![Job::Disconnect { room: 100, handles: vec![101, 102, 103] }]);
}

#[test]
fn unclaimed_results_are_bounded_and_release_what_they_carry() {
    let (d, jobs) = dispatcher();
    for id in 0..64 {
        d.handle_bytes(&capture_cb(1000 + id));
    }
    assert!(jobs.lock().unwrap().is_empty());
    // The 65th unclaimed result evicts the oldest; a publication it carries is released.
    let publish = |async_id, handle| {
        event(Ev::PublishTrack(proto::PublishTrackCallback {
            async_id,
            message: Some(proto::publish_track_callback::Message::Publication(proto::OwnedTrackPublication {
                handle: owned(handle),
                info: Default::default(),
            })),
        }))
    };
    d.handle_bytes(&publish(1, 77));
    for id in 0..64 {
        d.handle_bytes(&capture_cb(2000 + id));
    }
    assert_eq!(*jobs.lock().unwrap(), vec![Job::Drop(77)]);
}

#[test]
fn room_events_go_to_their_room_and_handles_of_unknown_rooms_are_released() {
    let (d, jobs) = dispatcher();
    let inbox = Arc::new(Inbox::new(10, 10));
    d.add_room(1, inbox.clone());
    d.handle_bytes(&room_event(1, participant_connected(11, "sip_+91", proto::ParticipantKind::Sip)));
    d.handle_bytes(&room_event(2, participant_connected(12, "other", proto::ParticipantKind::Standard)));
    let items: Vec<_> = inbox.drain().into_iter().collect();
    assert_eq!(items.len(), 1);
    assert!(matches!(&items[0], InboxItem::Room(m) if matches!(**m, RoomMsg::ParticipantConnected(_))));
    assert_eq!(*jobs.lock().unwrap(), vec![Job::Drop(12)]);

    // After the room is removed its events are no longer queued; their handles are released.
    d.remove_room(1);
    d.handle_bytes(&room_event(1, participant_connected(13, "late", proto::ParticipantKind::Standard)));
    assert!(inbox.drain().is_empty());
    assert_eq!(jobs.lock().unwrap().last(), Some(&Job::Drop(13)));
}

fn audio_event(stream: u64, frame_handle: u64, pcm: &[i16]) -> Vec<u8> {
    // The engine would point at its own buffer; the test points at `pcm`, which outlives the call.
    event(Ev::AudioStreamEvent(proto::AudioStreamEvent {
        stream_handle: stream,
        message: Some(proto::audio_stream_event::Message::FrameReceived(proto::AudioFrameReceived {
            frame: proto::OwnedAudioFrameBuffer {
                handle: owned(frame_handle),
                info: proto::AudioFrameBufferInfo {
                    data_ptr: pcm.as_ptr() as u64,
                    num_channels: 1,
                    sample_rate: 16_000,
                    samples_per_channel: pcm.len() as u32,
                },
            },
        })),
    }))
}

#[test]
fn audio_frames_are_copied_released_and_routed_including_early_ones() {
    let (d, jobs) = dispatcher();
    let inbox = Arc::new(Inbox::new(10, 10));
    d.add_room(1, inbox.clone());
    let first = [1i16, 2, 3];
    let second = [4i16, 5];
    // A frame before the stream is registered is held, then delivered on registration.
    d.handle_bytes(&audio_event(50, 500, &first));
    d.add_stream(50, inbox.clone(), Arc::from("caller"));
    d.handle_bytes(&audio_event(50, 501, &second));
    let pcm: Vec<(String, Vec<i16>)> = inbox
        .drain()
        .into_iter()
        .map(|i| match i {
            InboxItem::Audio { identity, pcm } => (identity.to_string(), pcm),
            other => panic!("unexpected {other:?}"),
        })
        .collect();
    assert_eq!(pcm, vec![("caller".to_string(), vec![1, 2, 3]), ("caller".to_string(), vec![4, 5])]);
    assert_eq!(*jobs.lock().unwrap(), vec![Job::Drop(500), Job::Drop(501)]);
}

#[test]
fn an_implausible_audio_buffer_is_released_and_not_read() {
    let (d, jobs) = dispatcher();
    let inbox = Arc::new(Inbox::new(10, 10));
    d.add_stream(50, inbox.clone(), Arc::from("caller"));
    let bad = event(Ev::AudioStreamEvent(proto::AudioStreamEvent {
        stream_handle: 50,
        message: Some(proto::audio_stream_event::Message::FrameReceived(proto::AudioFrameReceived {
            frame: proto::OwnedAudioFrameBuffer {
                handle: owned(9),
                info: proto::AudioFrameBufferInfo {
                    data_ptr: 0,
                    num_channels: 1,
                    sample_rate: 16_000,
                    samples_per_channel: 160,
                },
            },
        })),
    }));
    d.handle_bytes(&bad);
    assert!(inbox.drain().is_empty());
    assert_eq!(*jobs.lock().unwrap(), vec![Job::Drop(9)]);
}

#[test]
fn garbage_from_the_engine_is_counted_not_fatal() {
    let (d, _) = dispatcher();
    d.handle_bytes(&[0xff, 0xff, 0xff]);
    assert_eq!(d.stats.decode_errors.load(std::sync::atomic::Ordering::Relaxed), 1);
    d.handle_bytes(&event(Ev::Panic(proto::Panic { message: "boom".into() })));
    assert!(d.poisoned());
}

#[test]
fn inbox_drops_audio_beyond_its_cap_but_keeps_lifecycle_events() {
    let inbox = Inbox::new(2, 3);
    assert!(inbox.push_audio(Arc::from("a"), vec![1]));
    assert!(inbox.push_audio(Arc::from("a"), vec![2]));
    assert!(!inbox.push_audio(Arc::from("a"), vec![3]));
    let ev = || Box::new(RoomMsg::Reconnected(proto::Reconnected {}));
    for _ in 0..3 {
        assert!(inbox.push_room(ev()).is_ok());
    }
    // Audio beyond its cap never pushes out lifecycle events; lifecycle beyond its own cap is
    // handed back (and logged) so its handles can be released.
    assert!(inbox.push_room(ev()).is_err());
    assert_eq!(inbox.dropped_audio.load(std::sync::atomic::Ordering::Relaxed), 1);
    assert_eq!(inbox.dropped_events.load(std::sync::atomic::Ordering::Relaxed), 1);
    assert_eq!(inbox.drain().len(), 5);
    // Draining frees the audio budget again.
    assert!(inbox.push_audio(Arc::from("a"), vec![4]));
    let left = inbox.close();
    assert_eq!(left.len(), 1);
    assert!(!inbox.push_audio(Arc::from("a"), vec![5]));
    assert!(inbox.push_room(ev()).is_err());
}

#[tokio::test]
async fn delivery_never_waits_drops_audio_and_keeps_lifecycle_order() {
    let (tx, mut rx) = mpsc::channel(2);
    let joined = |id: &str| {
        RoomEvent::ParticipantJoined(cxb_livekit::room::Participant {
            identity: id.into(),
            kind: ParticipantKind::Sip,
            attributes: Default::default(),
        })
    };
    let audio = |n: i16| RoomEvent::Audio { identity: "c".into(), pcm: vec![n] };
    let mut d = Delivery::new(tx, 100, VecDeque::new());
    d.deliver(audio(1));
    d.deliver(audio(2));
    d.deliver(audio(3)); // channel full: dropped
    d.deliver(joined("x")); // channel full: waits in the backlog
    d.deliver(audio(4)); // must not overtake the waiting event: dropped
    d.deliver(joined("y"));
    assert_eq!((d.dropped_audio, d.dropped_events), (2, 0));
    assert!(d.has_backlog());
    assert_eq!(rx.recv().await, Some(audio(1)));
    assert_eq!(rx.recv().await, Some(audio(2)));
    d.flush_one().await;
    d.flush_one().await;
    assert!(!d.has_backlog());
    assert_eq!(rx.recv().await, Some(joined("x")));
    assert_eq!(rx.recv().await, Some(joined("y")));
    d.deliver(audio(5));
    assert_eq!(rx.recv().await, Some(audio(5)));
}

#[tokio::test]
async fn delivery_backlog_is_bounded_and_counts_what_it_drops() {
    let (tx, _rx) = mpsc::channel(1);
    let mut d = Delivery::new(tx, 2, VecDeque::new());
    for _ in 0..5 {
        d.deliver(RoomEvent::Disconnected { reason: "x".into() });
    }
    // One in the channel, two in the backlog, two dropped (with an error log each).
    assert_eq!(d.dropped_events, 2);
}

#[test]
fn dtmf_digits_and_codes_round_trip() {
    for (c, code) in [('0', 0), ('9', 9), ('*', 10), ('#', 11), ('A', 12), ('d', 15)] {
        assert_eq!(dtmf_code(c), Some(code), "{c}");
        assert_eq!(dtmf_digit(code).map(|d| d.to_ascii_lowercase()), Some(c.to_ascii_lowercase()));
    }
    assert_eq!(dtmf_code('x'), None);
    assert_eq!(dtmf_digit(16), None);
}

#[test]
fn participants_and_reasons_map_to_the_seam_types() {
    assert_eq!(participant_kind(proto::ParticipantKind::Sip as i32), ParticipantKind::Sip);
    assert_eq!(participant_kind(proto::ParticipantKind::Agent as i32), ParticipantKind::Agent);
    assert_eq!(participant_kind(proto::ParticipantKind::Connector as i32), ParticipantKind::Other(5));
    assert_eq!(participant_kind(99), ParticipantKind::Other(99));
    let RoomMsg::ParticipantConnected(pc) = participant_connected(1, "sip_+91", proto::ParticipantKind::Sip) else {
        unreachable!()
    };
    let p = participant_from(&pc.info.info);
    assert_eq!(p.identity, "sip_+91");
    assert_eq!(p.kind, ParticipantKind::Sip);
    assert_eq!(p.attributes.get("sip.callStatus").map(String::as_str), Some("ringing"));
    assert_eq!(reason_name(proto::DisconnectReason::UserRejected as i32), "user_rejected");
    assert_eq!(reason_name(1234), "reason_1234");
}
