//! An in-memory LiveKit room for tests of call logic: [`FakeConnector`] implements
//! [`RoomConnector`], and each successful connect yields a [`FakeRoom`] to the test, which
//! injects [`RoomEvent`]s and observes what the bot did (audio frames, `clear_buffer`, DTMF,
//! disconnect).
//!
//! Everything is bounded: the event channel has a fixed capacity, the captured audio keeps at
//! most `max_captured_samples` (oldest frames dropped first, with a count), and the logs of
//! joins, clears and DTMF keep their newest entries only.
//!
//! Semantics that mirror the real engine:
//! - `disconnect()` (ours) or [`FakeRoom::remote_disconnect`] delivers one
//!   [`RoomEvent::Disconnected`] and then ends the event stream; afterwards `capture_frame` and
//!   `send_dtmf` fail with [`RoomError::Closed`].
//! - Participants set with [`FakeConnector::set_initial_participants`] are reported as
//!   [`RoomEvent::ParticipantJoined`] right after the join, like those already in a real room.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::sync::{mpsc, watch, Notify};
use tokio::time::Instant;

use crate::room::{
    ConnectFuture, JoinRequest, Participant, RoomConnector, RoomError, RoomEvent, RoomHandle, RoomMedia,
};

/// Capacity of each room's event channel.
pub const DEFAULT_EVENT_CAPACITY: usize = 256;
/// Captured bot audio kept per room: two minutes at 16 kHz.
pub const DEFAULT_MAX_CAPTURED_SAMPLES: usize = 16_000 * 120;
/// How long [`FakeRoom::send`] waits for room in a full event channel.
pub const SEND_TIMEOUT: Duration = Duration::from_secs(5);
/// Unclaimed [`FakeRoom`]s kept by the connector (oldest dropped; the room itself lives on).
const MAX_UNCLAIMED_ROOMS: usize = 256;
/// Entries kept in the join-request, clear and DTMF logs.
const MAX_LOG_ENTRIES: usize = 1024;
/// The reason reported when the bot leaves (LiveKit's `CLIENT_INITIATED`).
pub const CLIENT_INITIATED: &str = "client_initiated";

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panicking test thread must not turn every later assertion into a poison panic.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn push_bounded<T>(log: &mut VecDeque<T>, item: T) {
    if log.len() == MAX_LOG_ENTRIES {
        log.pop_front();
    }
    log.push_back(item);
}

#[derive(Debug, Clone)]
struct ConnectorSettings {
    fail_always: Option<String>,
    fail_next: usize,
    fail_next_message: String,
    delay: Duration,
    initial_participants: Vec<Participant>,
    event_capacity: usize,
    max_captured_samples: usize,
}

impl Default for ConnectorSettings {
    fn default() -> Self {
        ConnectorSettings {
            fail_always: None,
            fail_next: 0,
            fail_next_message: String::new(),
            delay: Duration::ZERO,
            initial_participants: Vec::new(),
            event_capacity: DEFAULT_EVENT_CAPACITY,
            max_captured_samples: DEFAULT_MAX_CAPTURED_SAMPLES,
        }
    }
}

#[derive(Default)]
struct ConnectorInner {
    settings: Mutex<ConnectorSettings>,
    requests: Mutex<VecDeque<JoinRequest>>,
    connects: Mutex<u64>,
    rooms: Mutex<VecDeque<FakeRoom>>,
    room_ready: Notify,
}

/// A [`RoomConnector`] whose rooms are in memory. Clone it: the test keeps one handle and gives
/// another (as `Arc<dyn RoomConnector>`) to the code under test.
#[derive(Clone, Default)]
pub struct FakeConnector {
    inner: Arc<ConnectorInner>,
}

impl std::fmt::Debug for FakeConnector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FakeConnector").field("connects", &self.connect_count()).finish_non_exhaustive()
    }
}

impl FakeConnector {
    pub fn new() -> Self {
        Self::default()
    }

    /// Every connect fails with [`RoomError::Connect`]`(message)` until [`Self::succeed_connects`].
    pub fn fail_connects(&self, message: impl Into<String>) {
        lock(&self.inner.settings).fail_always = Some(message.into());
    }

    /// The next `count` connects fail with [`RoomError::Connect`]`(message)`.
    pub fn fail_next_connects(&self, count: usize, message: impl Into<String>) {
        let mut s = lock(&self.inner.settings);
        s.fail_next = count;
        s.fail_next_message = message.into();
    }

    /// Clear both kinds of connect failure.
    pub fn succeed_connects(&self) {
        let mut s = lock(&self.inner.settings);
        s.fail_always = None;
        s.fail_next = 0;
    }

    /// Each connect takes this long before it succeeds or fails (join latency).
    pub fn set_connect_delay(&self, delay: Duration) {
        lock(&self.inner.settings).delay = delay;
    }

    /// Participants already in every room joined from now on.
    pub fn set_initial_participants(&self, participants: Vec<Participant>) {
        lock(&self.inner.settings).initial_participants = participants;
    }

    /// Capacity of the event channel of rooms joined from now on (at least 1).
    pub fn set_event_capacity(&self, capacity: usize) {
        lock(&self.inner.settings).event_capacity = capacity.max(1);
    }

    /// Captured-audio bound of rooms joined from now on.
    pub fn set_max_captured_samples(&self, samples: usize) {
        lock(&self.inner.settings).max_captured_samples = samples;
    }

    /// Join requests seen (successful or not), oldest first; the newest 1024 are kept.
    pub fn join_requests(&self) -> Vec<JoinRequest> {
        lock(&self.inner.requests).iter().cloned().collect()
    }

    /// How many times `connect` was called.
    pub fn connect_count(&self) -> u64 {
        *lock(&self.inner.connects)
    }

    /// The next room joined and not yet claimed, if any.
    pub fn try_next_room(&self) -> Option<FakeRoom> {
        lock(&self.inner.rooms).pop_front()
    }

    /// Wait up to `timeout` for the next joined room.
    pub async fn next_room(&self, timeout: Duration) -> Option<FakeRoom> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(room) = self.try_next_room() {
                return Some(room);
            }
            // `notify_one` stores a permit when nobody waits, so a room pushed between the check
            // above and this await is not missed.
            if tokio::time::timeout_at(deadline, self.inner.room_ready.notified()).await.is_err() {
                return self.try_next_room();
            }
        }
    }
}

impl RoomConnector for FakeConnector {
    fn connect(&self, request: JoinRequest) -> ConnectFuture {
        let inner = self.inner.clone();
        Box::pin(async move {
            *lock(&inner.connects) += 1;
            push_bounded(&mut lock(&inner.requests), request.clone());
            let (failure, settings) = {
                let mut s = lock(&inner.settings);
                let failure = if let Some(message) = &s.fail_always {
                    Some(message.clone())
                } else if s.fail_next > 0 {
                    s.fail_next -= 1;
                    Some(s.fail_next_message.clone())
                } else {
                    None
                };
                (failure, s.clone())
            };
            if !settings.delay.is_zero() {
                tokio::time::sleep(settings.delay).await;
            }
            if let Some(message) = failure {
                return Err(RoomError::Connect(message));
            }

            let (tx, rx) = mpsc::channel(settings.event_capacity);
            for p in settings.initial_participants {
                tx.try_send(RoomEvent::ParticipantJoined(p)).map_err(|_| {
                    RoomError::Connect("fake room: more initial participants than the event capacity".into())
                })?;
            }
            let (version, _) = watch::channel(0u64);
            let shared = Arc::new(RoomShared {
                events: Mutex::new(Some(tx)),
                log: Mutex::new(MediaLog::default()),
                version,
                max_captured_samples: settings.max_captured_samples,
            });
            let room = FakeRoom { shared: shared.clone(), request };
            {
                let mut rooms = lock(&inner.rooms);
                if rooms.len() == MAX_UNCLAIMED_ROOMS {
                    rooms.pop_front();
                }
                rooms.push_back(room);
            }
            inner.room_ready.notify_one();
            Ok(RoomHandle { events: rx, media: Box::new(FakeMedia { shared }) })
        })
    }
}

#[derive(Default)]
struct MediaLog {
    frames: VecDeque<Vec<i16>>,
    retained_samples: usize,
    total_samples: u64,
    total_frames: u64,
    dropped_samples: u64,
    clear_positions: VecDeque<u64>,
    clear_count: u64,
    dtmf: VecDeque<String>,
    dtmf_count: u64,
    disconnected: bool,
    disconnect_calls: u64,
    capture_error: Option<String>,
}

struct RoomShared {
    /// Taken (dropped) on disconnect so the call's event stream ends.
    events: Mutex<Option<mpsc::Sender<RoomEvent>>>,
    log: Mutex<MediaLog>,
    /// Bumped on every change the test may wait for.
    version: watch::Sender<u64>,
    max_captured_samples: usize,
}

impl RoomShared {
    fn changed(&self) {
        self.version.send_modify(|v| *v = v.wrapping_add(1));
    }

    /// Deliver a final `Disconnected` (if there is room for it) and close the event stream.
    fn close(&self, reason: &str) {
        if let Some(tx) = lock(&self.events).take() {
            let _ = tx.try_send(RoomEvent::Disconnected { reason: reason.to_string() });
        }
    }
}

/// The bot-side media the code under test holds.
struct FakeMedia {
    shared: Arc<RoomShared>,
}

impl RoomMedia for FakeMedia {
    fn capture_frame(&self, pcm: &[i16]) -> Result<(), RoomError> {
        {
            let mut log = lock(&self.shared.log);
            if log.disconnected {
                return Err(RoomError::Closed);
            }
            if let Some(message) = &log.capture_error {
                return Err(RoomError::Media(message.clone()));
            }
            log.frames.push_back(pcm.to_vec());
            log.retained_samples += pcm.len();
            log.total_samples += pcm.len() as u64;
            log.total_frames += 1;
            while log.retained_samples > self.shared.max_captured_samples {
                let Some(old) = log.frames.pop_front() else { break };
                log.retained_samples -= old.len();
                log.dropped_samples += old.len() as u64;
            }
        }
        self.shared.changed();
        Ok(())
    }

    fn clear_buffer(&self) {
        {
            let mut log = lock(&self.shared.log);
            let at = log.total_samples;
            push_bounded(&mut log.clear_positions, at);
            log.clear_count += 1;
        }
        self.shared.changed();
    }

    fn send_dtmf(&self, digits: &str) -> Result<(), RoomError> {
        // The digits SIP DTMF (RFC 4733) can carry.
        if digits.is_empty() || !digits.chars().all(|c| matches!(c, '0'..='9' | '*' | '#' | 'A'..='D' | 'a'..='d')) {
            return Err(RoomError::Media(format!("invalid DTMF digits {digits:?}")));
        }
        {
            let mut log = lock(&self.shared.log);
            if log.disconnected {
                return Err(RoomError::Closed);
            }
            push_bounded(&mut log.dtmf, digits.to_string());
            log.dtmf_count += 1;
        }
        self.shared.changed();
        Ok(())
    }

    fn disconnect(&self) {
        let first = {
            let mut log = lock(&self.shared.log);
            log.disconnect_calls += 1;
            !std::mem::replace(&mut log.disconnected, true)
        };
        if first {
            self.shared.close(CLIENT_INITIATED);
        }
        self.shared.changed();
    }
}

/// The test's side of one joined room. Cheap to clone.
#[derive(Clone)]
pub struct FakeRoom {
    shared: Arc<RoomShared>,
    request: JoinRequest,
}

impl std::fmt::Debug for FakeRoom {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FakeRoom").field("room_name", &self.request.room_name).finish_non_exhaustive()
    }
}

impl FakeRoom {
    /// The request this room was joined with.
    pub fn request(&self) -> &JoinRequest {
        &self.request
    }

    fn sender(&self) -> Result<mpsc::Sender<RoomEvent>, RoomError> {
        lock(&self.shared.events).clone().ok_or(RoomError::Closed)
    }

    /// Deliver an event to the code under test, waiting up to [`SEND_TIMEOUT`] for channel space.
    /// [`RoomError::Closed`] once the room is disconnected or the receiver is gone.
    pub async fn send(&self, event: RoomEvent) -> Result<(), RoomError> {
        let tx = self.sender()?;
        match tokio::time::timeout(SEND_TIMEOUT, tx.send(event)).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(_)) => Err(RoomError::Closed),
            Err(_) => Err(RoomError::Media(format!("event channel still full after {SEND_TIMEOUT:?}"))),
        }
    }

    /// Deliver an event without waiting; fails when the channel is full.
    pub fn try_send(&self, event: RoomEvent) -> Result<(), RoomError> {
        self.sender()?.try_send(event).map_err(|e| match e {
            mpsc::error::TrySendError::Full(_) => RoomError::Media("event channel full".into()),
            mpsc::error::TrySendError::Closed(_) => RoomError::Closed,
        })
    }

    pub async fn participant_joined(&self, participant: Participant) -> Result<(), RoomError> {
        self.send(RoomEvent::ParticipantJoined(participant)).await
    }

    pub async fn participant_left(&self, identity: &str, reason: Option<&str>) -> Result<(), RoomError> {
        self.send(RoomEvent::ParticipantLeft { identity: identity.into(), reason: reason.map(Into::into) }).await
    }

    pub async fn attributes_changed<I, K, V>(&self, identity: &str, attributes: I) -> Result<(), RoomError>
    where
        I: IntoIterator<Item = (K, V)>,
        K: Into<String>,
        V: Into<String>,
    {
        let attributes = attributes.into_iter().map(|(k, v)| (k.into(), v.into())).collect();
        self.send(RoomEvent::AttributesChanged { identity: identity.into(), attributes }).await
    }

    /// Remote audio from `identity` (mono, at the join rate).
    pub async fn audio(&self, identity: &str, pcm: Vec<i16>) -> Result<(), RoomError> {
        self.send(RoomEvent::Audio { identity: identity.into(), pcm }).await
    }

    pub async fn dtmf(&self, identity: &str, digit: &str) -> Result<(), RoomError> {
        self.send(RoomEvent::Dtmf { identity: identity.into(), digit: digit.into() }).await
    }

    /// The room is lost (server closed it, network gone): one `Disconnected { reason }`, then
    /// the event stream ends and media calls fail with [`RoomError::Closed`].
    pub fn remote_disconnect(&self, reason: &str) {
        lock(&self.shared.log).disconnected = true;
        self.shared.close(reason);
        self.shared.changed();
    }

    /// Make `capture_frame` fail with [`RoomError::Media`] (or succeed again with `None`).
    pub fn set_capture_error(&self, message: Option<String>) {
        lock(&self.shared.log).capture_error = message;
    }

    /// Whether the code under test dropped its event receiver.
    pub fn events_receiver_dropped(&self) -> bool {
        lock(&self.shared.events).as_ref().is_none_or(|tx| tx.is_closed())
    }

    /// Bot frames still retained, oldest first.
    pub fn captured_frames(&self) -> Vec<Vec<i16>> {
        lock(&self.shared.log).frames.iter().cloned().collect()
    }

    /// Retained bot audio as one buffer.
    pub fn captured_audio(&self) -> Vec<i16> {
        lock(&self.shared.log).frames.iter().flatten().copied().collect()
    }

    /// Samples ever captured (including those dropped from the retained window).
    pub fn captured_sample_count(&self) -> u64 {
        lock(&self.shared.log).total_samples
    }

    pub fn captured_frame_count(&self) -> u64 {
        lock(&self.shared.log).total_frames
    }

    /// Samples evicted because more than `max_captured_samples` were captured.
    pub fn dropped_sample_count(&self) -> u64 {
        lock(&self.shared.log).dropped_samples
    }

    pub fn clear_buffer_count(&self) -> u64 {
        lock(&self.shared.log).clear_count
    }

    /// For each `clear_buffer` call, how many samples had been captured before it.
    pub fn clear_positions(&self) -> Vec<u64> {
        lock(&self.shared.log).clear_positions.iter().copied().collect()
    }

    /// DTMF strings sent by the bot, oldest first.
    pub fn dtmf_sent(&self) -> Vec<String> {
        lock(&self.shared.log).dtmf.iter().cloned().collect()
    }

    pub fn is_disconnected(&self) -> bool {
        lock(&self.shared.log).disconnected
    }

    /// How many times the bot called `disconnect` (it must be idempotent, not necessarily once).
    pub fn disconnect_count(&self) -> u64 {
        lock(&self.shared.log).disconnect_calls
    }

    async fn wait_until(&self, timeout: Duration, done: impl Fn(&MediaLog) -> bool) -> bool {
        let deadline = Instant::now() + timeout;
        // Subscribing before the check means a change in between is still seen by `changed()`.
        let mut rx = self.shared.version.subscribe();
        loop {
            if done(&lock(&self.shared.log)) {
                return true;
            }
            match tokio::time::timeout_at(deadline, rx.changed()).await {
                Ok(Ok(())) => continue,
                // Sender gone cannot happen while `self` holds it; treat like a timeout.
                Ok(Err(_)) | Err(_) => return done(&lock(&self.shared.log)),
            }
        }
    }

    /// Wait until at least `samples` bot samples were captured in total.
    pub async fn wait_for_samples(&self, samples: u64, timeout: Duration) -> bool {
        self.wait_until(timeout, |log| log.total_samples >= samples).await
    }

    /// Wait until `clear_buffer` was called at least `count` times.
    pub async fn wait_for_clears(&self, count: u64, timeout: Duration) -> bool {
        self.wait_until(timeout, |log| log.clear_count >= count).await
    }

    /// Wait until `send_dtmf` succeeded at least `count` times.
    pub async fn wait_for_dtmf(&self, count: u64, timeout: Duration) -> bool {
        self.wait_until(timeout, |log| log.dtmf_count >= count).await
    }

    /// Wait until the room is disconnected (by the bot or remotely).
    pub async fn wait_disconnected(&self, timeout: Duration) -> bool {
        self.wait_until(timeout, |log| log.disconnected).await
    }
}
