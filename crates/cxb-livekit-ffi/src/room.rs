//! [`RoomConnector`] over the engine: join, publish the bot's track, subscribe to remote audio.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use cxb_livekit::room::{
    ConnectFuture, JoinRequest, Participant, ParticipantKind, RoomConnector, RoomError, RoomEvent, RoomHandle,
    RoomMedia,
};
use tokio::sync::{mpsc, Notify};

use crate::dispatch::{
    attributes_map, connect_result_handles, owned_room_handle, room_event_handles, Inbox, InboxItem,
};
use crate::engine::{AudioSource, FfiEngine};
use crate::proto::room_event::Message as RoomMsg;
use crate::proto::{self, ffi_event::Message as Ev, ffi_request::Message as Req, ffi_response::Message as Resp};
use crate::sys::INVALID_HANDLE;

/// Extra time over the engine's own connect timeout before we stop waiting for its answer.
const CONNECT_MARGIN: Duration = Duration::from_secs(5);
/// How long leaving waits for the engine to confirm.
const LEAVE_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a finished room task keeps trying to hand its last events to a slow consumer.
const FLUSH_TIMEOUT: Duration = Duration::from_secs(5);

/// Tunables of [`FfiConnector`]. The defaults suit a call bot.
#[derive(Debug, Clone)]
pub struct ConnectOptions {
    /// Bound on joining: passed to the engine, which then gives up, plus a margin for its answer.
    pub connect_timeout: Duration,
    /// Bound on publishing the bot's track once joined.
    pub publish_timeout: Duration,
    /// Engine-side join attempts after the first.
    pub join_retries: u32,
    /// Capacity of [`RoomHandle::events`].
    pub events_capacity: usize,
    /// Remote audio frames held between the engine and the room task before dropping.
    pub inbox_audio_frames: usize,
    /// Lifecycle events held while the consumer of [`RoomHandle::events`] is not reading. Past
    /// this (a consumer stuck for thousands of events) they are dropped with an error log.
    pub event_backlog: usize,
    /// Bot audio frames accepted by `capture_frame` and not yet handed to the engine.
    pub capture_queue_frames: usize,
    /// Audio the engine's source buffers ahead of real time; `clear_buffer` drops it.
    pub source_queue_ms: u32,
    /// Size of the remote audio frames delivered in [`RoomEvent::Audio`].
    pub stream_frame_ms: u32,
    /// Name of the bot's published audio track.
    pub track_name: String,
}

impl Default for ConnectOptions {
    fn default() -> Self {
        ConnectOptions {
            connect_timeout: Duration::from_secs(15),
            publish_timeout: Duration::from_secs(10),
            join_retries: 1,
            events_capacity: 256,
            inbox_audio_frames: 100,
            event_backlog: 4096,
            capture_queue_frames: 100,
            source_queue_ms: 500,
            stream_frame_ms: 20,
            track_name: "agent-audio".into(),
        }
    }
}

/// Joins LiveKit rooms through `liblivekit_ffi`.
#[derive(Debug, Clone)]
pub struct FfiConnector {
    engine: Arc<FfiEngine>,
    options: ConnectOptions,
}

impl FfiConnector {
    pub fn new(engine: Arc<FfiEngine>) -> FfiConnector {
        FfiConnector::with_options(engine, ConnectOptions::default())
    }

    pub fn with_options(engine: Arc<FfiEngine>, options: ConnectOptions) -> FfiConnector {
        FfiConnector { engine, options }
    }

    /// Loads the engine from `$LIVEKIT_FFI_LIB` or the fetch script's default location.
    pub fn from_env() -> Result<FfiConnector, RoomError> {
        Ok(FfiConnector::new(FfiEngine::load_default()?))
    }

    pub fn engine(&self) -> &Arc<FfiEngine> {
        &self.engine
    }
}

impl RoomConnector for FfiConnector {
    fn connect(&self, request: JoinRequest) -> ConnectFuture {
        Box::pin(connect(self.engine.clone(), self.options.clone(), request))
    }
}

/// Owns a joined room's handles until the room task takes them; leaves the room if dropped
/// first (a failed publish, or the caller dropping the connect future).
struct JoinGuard {
    engine: Arc<FfiEngine>,
    room: u64,
    handles: Vec<u64>,
    /// Set once the room's events are routed to this inbox.
    inbox: Option<Arc<Inbox>>,
}

impl Drop for JoinGuard {
    fn drop(&mut self) {
        if let Some(inbox) = self.inbox.take() {
            self.engine.dispatcher.remove_room(self.room);
            for item in inbox.close() {
                if let InboxItem::Room(msg) = item {
                    room_event_handles(&msg).into_iter().for_each(|h| self.engine.drop_handle(h));
                }
            }
        }
        if self.room != INVALID_HANDLE {
            self.engine.leave_room(self.room);
        }
        for h in self.handles.drain(..) {
            self.engine.drop_handle(h);
        }
        self.engine.drop_handle(self.room);
    }
}

async fn connect(engine: Arc<FfiEngine>, opts: ConnectOptions, req: JoinRequest) -> Result<RoomHandle, RoomError> {
    if req.url.is_empty() || req.token.is_empty() {
        return Err(RoomError::Connect("url and token are required".into()));
    }
    if !(8_000..=48_000).contains(&req.sample_rate) || !(1..=2).contains(&req.num_channels) {
        return Err(RoomError::Connect(format!(
            "unsupported audio format {} Hz × {}",
            req.sample_rate, req.num_channels
        )));
    }
    let connect_ms = u64::try_from(opts.connect_timeout.as_millis()).unwrap_or(u64::MAX);
    let connect = proto::ConnectRequest {
        url: req.url.clone(),
        token: req.token.clone(),
        options: proto::RoomOptions {
            auto_subscribe: Some(true),
            adaptive_stream: Some(false),
            dynacast: Some(false),
            join_retries: Some(opts.join_retries),
            connect_timeout_ms: Some(connect_ms),
            ..Default::default()
        },
        request_async_id: None,
    };
    let resp = engine.request(Req::Connect(connect)).map_err(as_connect_error)?;
    let Resp::Connect(resp) = resp else {
        return Err(RoomError::Connect("unexpected response to ConnectRequest".into()));
    };
    // If this future is dropped or times out, the dispatcher keeps the registration and leaves
    // a room that connects afterwards (`Dispatcher::undelivered`).
    let rx = engine.dispatcher.expect(resp.async_id, "connect", None);
    let ev = FfiEngine::wait(rx, opts.connect_timeout + CONNECT_MARGIN, "connect").await.map_err(as_connect_error)?;
    let Ev::Connect(cb) = ev else {
        return Err(RoomError::Connect("unexpected callback to ConnectRequest".into()));
    };
    let result = match cb.message {
        Some(proto::connect_callback::Message::Result(r)) => r,
        Some(proto::connect_callback::Message::Error(e)) => return Err(RoomError::Connect(e)),
        None => return Err(RoomError::Connect("the engine answered without a result".into())),
    };
    let room = owned_room_handle(&result.room);
    let mut guard = JoinGuard {
        engine: engine.clone(),
        room,
        handles: connect_result_handles(&result).into_iter().filter(|h| *h != room).collect(),
        inbox: None,
    };
    if room == INVALID_HANDLE {
        return Err(RoomError::Connect("the engine returned no room".into()));
    }
    let local_participant = result.local_participant.handle.id;
    tracing::info!(
        room = %req.room_name,
        identity = %req.identity,
        sid = result.room.info.sid.as_deref().unwrap_or_default(),
        "livekit-ffi: joined room"
    );

    // Route room events before telling the engine we are ready for them.
    let inbox = Arc::new(Inbox::new(opts.inbox_audio_frames, opts.event_backlog));
    engine.dispatcher.add_room(room, inbox.clone());
    guard.inbox = Some(inbox.clone());
    match engine.request(Req::ReadyForRoomEvent(proto::ReadyForRoomEventRequest { room_handle: room }))? {
        Resp::ReadyForRoomEvent(_) => {}
        _ => return Err(RoomError::Media("unexpected response to ReadyForRoomEventRequest".into())),
    }

    let source = Arc::new(AudioSource::new(&engine, req.sample_rate, req.num_channels, opts.source_queue_ms)?);
    let track_req = proto::CreateAudioTrackRequest { name: opts.track_name.clone(), source_handle: source.handle() };
    let Resp::CreateAudioTrack(track) = engine.request(Req::CreateAudioTrack(track_req))? else {
        return Err(RoomError::Media("unexpected response to CreateAudioTrackRequest".into()));
    };
    let track = track.track.handle.id;
    if track == INVALID_HANDLE {
        return Err(RoomError::Media("the engine created no audio track".into()));
    }
    guard.handles.push(track);
    let publish = proto::PublishTrackRequest {
        local_participant_handle: local_participant,
        track_handle: track,
        options: proto::TrackPublishOptions {
            source: Some(proto::TrackSource::SourceMicrophone as i32),
            // Speech with pauses: keep sending through silence so the far end hears no gaps
            // being concealed, and let the server add redundancy against loss.
            dtx: Some(false),
            red: Some(true),
            ..Default::default()
        },
        request_async_id: None,
    };
    let Resp::PublishTrack(resp) = engine.request(Req::PublishTrack(publish))? else {
        return Err(RoomError::Media("unexpected response to PublishTrackRequest".into()));
    };
    let rx = engine.dispatcher.expect(resp.async_id, "publish_track", None);
    let publication = match FfiEngine::wait(rx, opts.publish_timeout, "publish track").await? {
        Ev::PublishTrack(cb) => match cb.message {
            Some(proto::publish_track_callback::Message::Publication(p)) => p.handle.id,
            Some(proto::publish_track_callback::Message::Error(e)) => {
                return Err(RoomError::Media(format!("publish track: {e}")))
            }
            None => return Err(RoomError::Media("publish track: no result".into())),
        },
        _ => return Err(RoomError::Media("unexpected callback to PublishTrackRequest".into())),
    };
    guard.handles.push(publication);

    // Everyone already in the room, reported the way later arrivals are.
    let mut participants = HashMap::new();
    let mut initial = VecDeque::new();
    let mut publications = Vec::new();
    for p in &result.participants {
        publications.extend(p.publications.iter().map(|p| p.handle.id));
        let info = &p.participant.info;
        if let Some(old) = participants.insert(info.identity.clone(), p.participant.handle.id) {
            engine.drop_handle(old);
        }
        initial.push_back(RoomEvent::ParticipantJoined(participant_from(info)));
    }
    // Publications of remote tracks are not needed: auto-subscribe reports each subscribed track.
    for h in publications {
        engine.drop_handle(h);
    }

    let shared = Arc::new(Shared {
        engine: engine.clone(),
        room,
        local_participant,
        source,
        inbox,
        closed: AtomicBool::new(false),
        leave_requested: AtomicBool::new(false),
        shutdown: Notify::new(),
    });
    let (events_tx, events_rx) = mpsc::channel(opts.events_capacity.max(1));
    let (frames_tx, frames_rx) = mpsc::channel(opts.capture_queue_frames.max(1));
    let task = RoomTask {
        shared: shared.clone(),
        delivery: Delivery::new(events_tx, opts.event_backlog, initial),
        participants,
        subs: HashMap::new(),
        // The local participant, the bot's track and its publication live as long as the room.
        owned: vec![local_participant, track, publication],
        sample_rate: req.sample_rate,
        num_channels: req.num_channels,
        frame_ms: opts.stream_frame_ms,
        finished: false,
    };
    // The room task owns the handles and the inbox from here on.
    guard.handles.clear();
    guard.inbox = None;
    guard.room = INVALID_HANDLE;
    tokio::spawn(task.run());
    tokio::spawn(run_sender(shared.source.clone(), frames_rx));
    Ok(RoomHandle { events: events_rx, media: Box::new(FfiRoomMedia { shared, frames: frames_tx }) })
}

fn as_connect_error(e: RoomError) -> RoomError {
    match e {
        RoomError::Media(m) => RoomError::Connect(m),
        other => other,
    }
}

/// State shared by the room task and the media handle.
struct Shared {
    engine: Arc<FfiEngine>,
    room: u64,
    local_participant: u64,
    source: Arc<AudioSource>,
    inbox: Arc<Inbox>,
    /// The room is gone (left or lost): media calls fail with `Closed`.
    closed: AtomicBool,
    leave_requested: AtomicBool,
    shutdown: Notify,
}

/// Bot-side media of a joined room.
struct FfiRoomMedia {
    shared: Arc<Shared>,
    /// To the sender task, which hands frames to the engine one at a time, in order.
    frames: mpsc::Sender<(u64, Vec<i16>)>,
}

impl RoomMedia for FfiRoomMedia {
    fn capture_frame(&self, pcm: &[i16]) -> Result<(), RoomError> {
        if self.shared.closed.load(Ordering::Acquire) {
            return Err(RoomError::Closed);
        }
        self.shared.source.validate(pcm)?;
        let epoch = self.shared.source.epoch();
        self.frames.try_send((epoch, pcm.to_vec())).map_err(|e| match e {
            mpsc::error::TrySendError::Full(_) => RoomError::Media("bot audio queue full".into()),
            mpsc::error::TrySendError::Closed(_) => RoomError::Closed,
        })
    }

    fn clear_buffer(&self) {
        if self.shared.closed.load(Ordering::Acquire) {
            return;
        }
        // Bumping the source's epoch also discards frames still queued towards the engine.
        if let Err(e) = self.shared.source.clear() {
            tracing::warn!(error = %e, "livekit-ffi: clearing the bot audio buffer failed");
        }
    }

    fn send_dtmf(&self, digits: &str) -> Result<(), RoomError> {
        if self.shared.closed.load(Ordering::Acquire) {
            return Err(RoomError::Closed);
        }
        let codes = digits
            .chars()
            .map(|c| {
                dtmf_code(c).map(|code| (code, c)).ok_or_else(|| RoomError::Media(format!("not a DTMF digit: {c:?}")))
            })
            .collect::<Result<Vec<_>, _>>()?;
        for (code, digit) in codes {
            let req = proto::PublishSipDtmfRequest {
                local_participant_handle: self.shared.local_participant,
                code,
                digit: digit.to_string(),
                destination_identities: Vec::new(),
                request_async_id: None,
            };
            match self.shared.engine.request(Req::PublishSipDtmf(req))? {
                Resp::PublishSipDtmf(r) => self.shared.engine.dispatcher.expect_ignored(r.async_id, "publish_sip_dtmf"),
                _ => return Err(RoomError::Media("unexpected response to PublishSipDtmfRequest".into())),
            }
        }
        Ok(())
    }

    fn disconnect(&self) {
        self.shared.closed.store(true, Ordering::Release);
        if !self.shared.leave_requested.swap(true, Ordering::AcqRel) {
            self.shared.shutdown.notify_one();
        }
    }
}

impl Drop for FfiRoomMedia {
    fn drop(&mut self) {
        self.disconnect();
    }
}

/// Hands bot audio to the engine one frame at a time: each capture completes (the engine's
/// source has taken the frame) before the next is submitted, which keeps frames in order.
async fn run_sender(source: Arc<AudioSource>, mut frames: mpsc::Receiver<(u64, Vec<i16>)>) {
    let mut failures: u64 = 0;
    while let Some((epoch, pcm)) = frames.recv().await {
        match source.capture_in_epoch(pcm, epoch).await {
            Ok(_) => {}
            Err(RoomError::Unavailable(e)) => {
                tracing::error!(error = %e, "livekit-ffi: engine gone, bot audio stopped");
                break;
            }
            Err(e) => {
                failures += 1;
                if failures.is_power_of_two() {
                    tracing::warn!(error = %e, failures, "livekit-ffi: bot audio frame not captured");
                }
            }
        }
    }
}

/// Delivery of room events to the consumer without ever waiting on it: audio that does not fit
/// is dropped and counted; lifecycle events wait in a bounded backlog, in order.
pub(crate) struct Delivery {
    events: mpsc::Sender<RoomEvent>,
    backlog: VecDeque<RoomEvent>,
    backlog_cap: usize,
    pub(crate) dropped_audio: u64,
    pub(crate) dropped_events: u64,
}

impl Delivery {
    pub(crate) fn new(events: mpsc::Sender<RoomEvent>, backlog_cap: usize, initial: VecDeque<RoomEvent>) -> Delivery {
        Delivery { events, backlog: initial, backlog_cap, dropped_audio: 0, dropped_events: 0 }
    }

    pub(crate) fn deliver(&mut self, ev: RoomEvent) {
        let audio = matches!(ev, RoomEvent::Audio { .. });
        // Nothing may overtake events already waiting.
        let ev = if self.backlog.is_empty() {
            match self.events.try_send(ev) {
                Ok(()) => return,
                Err(mpsc::error::TrySendError::Closed(_)) => return, // nobody is listening any more
                Err(mpsc::error::TrySendError::Full(ev)) => ev,
            }
        } else {
            ev
        };
        if audio {
            self.dropped_audio += 1;
            if self.dropped_audio.is_power_of_two() {
                tracing::warn!(dropped = self.dropped_audio, "livekit-ffi: room events not read, audio frames dropped");
            }
        } else if self.backlog.len() >= self.backlog_cap {
            self.dropped_events += 1;
            tracing::error!(dropped = self.dropped_events, event = ?ev, "livekit-ffi: room events not read, event dropped");
        } else {
            self.backlog.push_back(ev);
        }
    }

    pub(crate) fn has_backlog(&self) -> bool {
        !self.backlog.is_empty()
    }

    /// Waits for room in the channel and sends the oldest waiting event.
    pub(crate) async fn flush_one(&mut self) {
        match self.events.reserve().await {
            Ok(permit) => {
                if let Some(ev) = self.backlog.pop_front() {
                    permit.send(ev);
                }
            }
            Err(_) => self.backlog.clear(),
        }
    }
}

struct Subscription {
    track: u64,
    stream: u64,
}

/// Turns engine room events into [`RoomEvent`]s and owns the room's handles.
struct RoomTask {
    shared: Arc<Shared>,
    delivery: Delivery,
    /// Remote participants' handles by identity.
    participants: HashMap<String, u64>,
    /// Subscribed remote audio by track sid.
    subs: HashMap<String, Subscription>,
    owned: Vec<u64>,
    sample_rate: u32,
    num_channels: u32,
    frame_ms: u32,
    finished: bool,
}

impl RoomTask {
    async fn run(mut self) {
        let shared = self.shared.clone();
        while !self.finished {
            tokio::select! {
                biased;
                _ = shared.shutdown.notified() => self.leave().await,
                _ = shared.inbox.notified() => self.process_inbox(),
                _ = self.delivery.flush_one(), if self.delivery.has_backlog() => {}
            }
        }
        self.teardown();
        let _ = tokio::time::timeout(FLUSH_TIMEOUT, async {
            while self.delivery.has_backlog() {
                self.delivery.flush_one().await;
            }
        })
        .await;
    }

    fn process_inbox(&mut self) {
        for item in self.shared.inbox.drain() {
            match item {
                InboxItem::Room(msg) => self.on_room_event(*msg),
                InboxItem::Audio { identity, pcm } => {
                    self.delivery.deliver(RoomEvent::Audio { identity: identity.to_string(), pcm })
                }
            }
            if self.finished {
                break;
            }
        }
    }

    fn drop_handle(&self, h: u64) {
        self.shared.engine.drop_handle(h);
    }

    fn on_room_event(&mut self, msg: RoomMsg) {
        match msg {
            RoomMsg::ParticipantConnected(e) => {
                let info = e.info.info;
                if let Some(old) = self.participants.insert(info.identity.clone(), e.info.handle.id) {
                    self.drop_handle(old);
                }
                self.delivery.deliver(RoomEvent::ParticipantJoined(participant_from(&info)));
            }
            RoomMsg::ParticipantDisconnected(e) => {
                if let Some(h) = self.participants.remove(&e.participant_identity) {
                    self.drop_handle(h);
                }
                self.delivery.deliver(RoomEvent::ParticipantLeft {
                    identity: e.participant_identity,
                    reason: Some(reason_name(e.disconnect_reason)),
                });
            }
            RoomMsg::ParticipantAttributesChanged(e) => {
                self.delivery.deliver(RoomEvent::AttributesChanged {
                    identity: e.participant_identity,
                    attributes: attributes_map(e.attributes.iter().map(|a| (&a.key, &a.value))),
                });
            }
            RoomMsg::TrackSubscribed(e) => self.subscribe(e.participant_identity, e.track),
            RoomMsg::TrackUnsubscribed(e) => self.unsubscribe(&e.track_sid),
            RoomMsg::LocalTrackRepublished(e) => self.owned.push(e.publication_handle),
            RoomMsg::DataPacketReceived(e) => match e.value {
                Some(proto::data_packet_received::Value::SipDtmf(d)) => {
                    let digit = d.digit.filter(|d| !d.is_empty()).or_else(|| dtmf_digit(d.code).map(String::from));
                    match digit {
                        Some(digit) => {
                            self.delivery.deliver(RoomEvent::Dtmf { identity: e.participant_identity, digit })
                        }
                        None => tracing::warn!(code = d.code, "livekit-ffi: unknown DTMF code"),
                    }
                }
                Some(proto::data_packet_received::Value::User(u)) => self.drop_handle(u.data.handle.id),
                None => {}
            },
            RoomMsg::Disconnected(e) => {
                self.delivery.deliver(RoomEvent::Disconnected { reason: reason_name(e.reason) });
                self.finished = true;
            }
            RoomMsg::Eos(_) => {
                self.delivery.deliver(RoomEvent::Disconnected { reason: "room_closed".into() });
                self.finished = true;
            }
            RoomMsg::ConnectionStateChanged(e) => {
                tracing::info!(state = e.state, "livekit-ffi: room connection state changed");
            }
            RoomMsg::Reconnecting(_) => tracing::warn!("livekit-ffi: room connection lost, reconnecting"),
            RoomMsg::Reconnected(_) => tracing::info!("livekit-ffi: room connection restored"),
            other => {
                for h in room_event_handles(&other) {
                    self.drop_handle(h);
                }
            }
        }
    }

    /// Opens a stream of a subscribed audio track, resampled by the engine to the join format.
    fn subscribe(&mut self, identity: String, track: proto::OwnedTrack) {
        let (handle, info) = (track.handle.id, track.info);
        if info.kind != proto::TrackKind::KindAudio as i32 {
            self.drop_handle(handle);
            return;
        }
        let req = proto::NewAudioStreamRequest {
            track_handle: handle,
            r#type: proto::AudioStreamType::AudioStreamNative as i32,
            sample_rate: Some(self.sample_rate),
            num_channels: Some(self.num_channels),
            frame_size_ms: Some(self.frame_ms),
            ..Default::default()
        };
        let stream = match self.shared.engine.request(Req::NewAudioStream(req)) {
            Ok(Resp::NewAudioStream(r)) => r.stream.handle.id,
            Ok(_) => INVALID_HANDLE,
            Err(e) => {
                tracing::warn!(error = %e, %identity, "livekit-ffi: cannot open the remote audio stream");
                INVALID_HANDLE
            }
        };
        if stream == INVALID_HANDLE {
            self.drop_handle(handle);
            return;
        }
        tracing::debug!(%identity, track = %info.sid, "livekit-ffi: receiving remote audio");
        self.shared.engine.dispatcher.add_stream(stream, self.shared.inbox.clone(), Arc::from(identity));
        if let Some(old) = self.subs.insert(info.sid, Subscription { track: handle, stream }) {
            self.close_subscription(old);
        }
    }

    fn unsubscribe(&mut self, track_sid: &str) {
        if let Some(sub) = self.subs.remove(track_sid) {
            self.close_subscription(sub);
        }
    }

    fn close_subscription(&self, sub: Subscription) {
        self.shared.engine.dispatcher.remove_stream(sub.stream);
        self.drop_handle(sub.stream);
        self.drop_handle(sub.track);
    }

    /// Leaves the room at our request, waiting (bounded) for the engine to confirm.
    async fn leave(&mut self) {
        let req = proto::DisconnectRequest {
            room_handle: self.shared.room,
            request_async_id: None,
            reason: Some(proto::DisconnectReason::ClientInitiated as i32),
        };
        match self.shared.engine.request(Req::Disconnect(req)) {
            Ok(Resp::Disconnect(r)) => {
                let rx = self.shared.engine.dispatcher.expect(r.async_id, "disconnect", None);
                if let Err(e) = FfiEngine::wait(rx, LEAVE_TIMEOUT, "disconnect").await {
                    tracing::warn!(error = %e, "livekit-ffi: leaving the room");
                }
            }
            Ok(_) => tracing::warn!("livekit-ffi: unexpected response to DisconnectRequest"),
            Err(e) => tracing::warn!(error = %e, "livekit-ffi: leaving the room"),
        }
        self.delivery
            .deliver(RoomEvent::Disconnected { reason: reason_name(proto::DisconnectReason::ClientInitiated as i32) });
        self.finished = true;
    }

    /// Stops routing and releases every handle the room holds.
    fn teardown(&mut self) {
        let shared = self.shared.clone();
        shared.closed.store(true, Ordering::Release);
        shared.engine.dispatcher.remove_room(shared.room);
        for (_, sub) in std::mem::take(&mut self.subs) {
            self.close_subscription(sub);
        }
        for item in shared.inbox.close() {
            if let InboxItem::Room(msg) = item {
                for h in room_event_handles(&msg) {
                    self.drop_handle(h);
                }
            }
        }
        for (_, h) in std::mem::take(&mut self.participants) {
            self.drop_handle(h);
        }
        for h in std::mem::take(&mut self.owned) {
            self.drop_handle(h);
        }
        self.drop_handle(shared.room);
        let dropped_inbox = shared.inbox.dropped_audio.load(Ordering::Relaxed);
        if dropped_inbox + self.delivery.dropped_audio > 0 {
            tracing::info!(
                inbox = dropped_inbox,
                consumer = self.delivery.dropped_audio,
                "livekit-ffi: remote audio frames dropped during the call"
            );
        }
    }
}

static DTMF_DIGITS: [char; 16] = ['0', '1', '2', '3', '4', '5', '6', '7', '8', '9', '*', '#', 'A', 'B', 'C', 'D'];

/// RFC 4733 event code of a DTMF digit.
pub(crate) fn dtmf_code(c: char) -> Option<u32> {
    let c = c.to_ascii_uppercase();
    DTMF_DIGITS.iter().position(|d| *d == c).map(|p| p as u32)
}

/// DTMF digit of an RFC 4733 event code.
pub(crate) fn dtmf_digit(code: u32) -> Option<char> {
    DTMF_DIGITS.get(code as usize).copied()
}

pub(crate) fn participant_kind(kind: i32) -> ParticipantKind {
    match proto::ParticipantKind::try_from(kind) {
        Ok(proto::ParticipantKind::Standard) => ParticipantKind::Standard,
        Ok(proto::ParticipantKind::Ingress) => ParticipantKind::Ingress,
        Ok(proto::ParticipantKind::Egress) => ParticipantKind::Egress,
        Ok(proto::ParticipantKind::Sip) => ParticipantKind::Sip,
        Ok(proto::ParticipantKind::Agent) => ParticipantKind::Agent,
        _ => ParticipantKind::Other(kind),
    }
}

pub(crate) fn participant_from(info: &proto::ParticipantInfo) -> Participant {
    Participant {
        identity: info.identity.clone(),
        kind: participant_kind(info.kind),
        attributes: attributes_map(info.attributes.iter()),
    }
}

/// `DisconnectReason` as a lower-case name (`client_initiated`, `participant_removed`, …).
pub(crate) fn reason_name(reason: i32) -> String {
    match proto::DisconnectReason::try_from(reason) {
        Ok(r) => r.as_str_name().to_ascii_lowercase(),
        Err(_) => format!("reason_{reason}"),
    }
}
