//! Routing of engine events, on the engine's callback threads.
//!
//! The engine calls back on its own threads and must never be blocked or re-entered from there
//! (it may hold internal locks while it calls back, so even `livekit_ffi_drop_handle` is off
//! limits). So the callback only decodes the event, copies what it needs, and hands it on
//! without waiting:
//! - results of asynchronous requests go to the oneshot registered under their `async_id`;
//! - room events and audio frames go to the room's [`Inbox`], a bounded queue drained by the
//!   room's tokio task (which may make requests);
//! - handles that must be released go to the janitor thread as [`Job`]s.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use prost::Message as _;
use tokio::sync::{oneshot, Notify};

use crate::proto::{self, ffi_event::Message as Ev, room_event::Message as RoomMsg};
use crate::sys;

/// Results that arrive before their request's `async_id` is registered are parked here, so that
/// registering after the request returns cannot miss them. The gap is a few microseconds, so a
/// handful suffices; the cap only matters for results nobody ever claims.
const EARLY_CAP: usize = 64;
/// Audio frames of a stream whose handle the room task has not registered yet (the engine may
/// start delivering before `NewAudioStreamRequest` returns). About 0.3 s of one stream.
const ORPHAN_AUDIO_CAP: usize = 32;

/// Work for the janitor thread, which may call into the engine.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Job {
    /// Release one handle.
    Drop(u64),
    /// Leave a room nobody is waiting for any more (a connect that completed after its caller
    /// gave up) and release its handles.
    Disconnect { room: u64, handles: Vec<u64> },
}

/// Hands a job to the janitor without blocking; `false` when its queue is full.
pub(crate) type JobSink = Box<dyn Fn(Job) -> bool + Send + Sync>;

/// A registered interest in the result of one asynchronous request.
struct Waiter {
    what: &'static str,
    /// `None` for fire-and-forget requests: the result is only logged if it is an error.
    tx: Option<oneshot::Sender<Ev>>,
    /// Memory the engine may read until the result arrives (captured audio).
    _keep_alive: Option<Vec<i16>>,
}

/// Counters for what had to be dropped, for logs and tests.
#[derive(Debug, Default)]
pub(crate) struct DispatchStats {
    pub decode_errors: AtomicU64,
    pub leaked_handles: AtomicU64,
    pub orphan_audio_dropped: AtomicU64,
}

struct State {
    waiters: HashMap<u64, Waiter>,
    early: VecDeque<(u64, Ev)>,
    rooms: HashMap<u64, Arc<Inbox>>,
    streams: HashMap<u64, (Arc<Inbox>, Arc<str>)>,
    orphan_audio: VecDeque<(u64, Vec<i16>)>,
}

pub(crate) struct Dispatcher {
    state: Mutex<State>,
    jobs: JobSink,
    poisoned: AtomicBool,
    pub(crate) stats: DispatchStats,
}

impl Dispatcher {
    pub(crate) fn new(jobs: JobSink) -> Dispatcher {
        Dispatcher {
            state: Mutex::new(State {
                waiters: HashMap::new(),
                early: VecDeque::new(),
                rooms: HashMap::new(),
                streams: HashMap::new(),
                orphan_audio: VecDeque::new(),
            }),
            jobs,
            poisoned: AtomicBool::new(false),
            stats: DispatchStats::default(),
        }
    }

    /// Whether the engine reported a panic; it is unusable afterwards.
    pub(crate) fn poisoned(&self) -> bool {
        self.poisoned.load(Ordering::Relaxed)
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // Nothing in here panics while holding the lock, and if something did the maps are still
        // consistent enough to keep routing: recover instead of propagating the poison.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn job(&self, job: Job) {
        let handles = match &job {
            Job::Drop(_) => 1,
            Job::Disconnect { handles, .. } => handles.len() as u64 + 1,
        };
        if !(self.jobs)(job) {
            let total = self.stats.leaked_handles.fetch_add(handles, Ordering::Relaxed) + handles;
            tracing::error!(total, "livekit-ffi: janitor queue full, engine handles leaked");
        }
    }

    pub(crate) fn drop_handles(&self, handles: impl IntoIterator<Item = u64>) {
        for h in handles {
            if h != sys::INVALID_HANDLE {
                self.job(Job::Drop(h));
            }
        }
    }

    /// Entry point from the C callback.
    pub(crate) fn handle_bytes(&self, bytes: &[u8]) {
        match proto::FfiEvent::decode(bytes) {
            Ok(event) => self.handle_event(event),
            Err(e) => {
                let n = self.stats.decode_errors.fetch_add(1, Ordering::Relaxed) + 1;
                if n.is_power_of_two() {
                    tracing::warn!(error = %e, total = n, "livekit-ffi: undecodable engine event");
                }
            }
        }
    }

    pub(crate) fn handle_event(&self, event: proto::FfiEvent) {
        let Some(message) = event.message else { return };
        match message {
            Ev::Logs(batch) => log_batch(&batch),
            Ev::Panic(p) => {
                self.poisoned.store(true, Ordering::Relaxed);
                tracing::error!(message = %p.message, "livekit-ffi: the engine panicked; LiveKit rooms are unusable");
            }
            Ev::RoomEvent(ev) => self.route_room_event(ev),
            Ev::AudioStreamEvent(ev) => self.route_audio(ev),
            other => match callback_id(&other) {
                Some(id) => self.resolve(id, other),
                None => tracing::trace!("livekit-ffi: ignored engine event"),
            },
        }
    }

    /// Registers interest in the result of the request that returned `async_id`. `keep_alive`
    /// is freed only once that result has arrived.
    pub(crate) fn expect(
        &self,
        async_id: u64,
        what: &'static str,
        keep_alive: Option<Vec<i16>>,
    ) -> oneshot::Receiver<Ev> {
        let (tx, rx) = oneshot::channel();
        let mut st = self.lock();
        if let Some(pos) = st.early.iter().position(|(id, _)| *id == async_id) {
            let (_, ev) = st.early.remove(pos).expect("position is in range");
            drop(st);
            // The receiver is alive (we hold it), so this cannot fail.
            let _ = tx.send(ev);
            return rx;
        }
        st.waiters.insert(async_id, Waiter { what, tx: Some(tx), _keep_alive: keep_alive });
        rx
    }

    /// Like [`expect`](Self::expect) for a result nobody waits for: errors are logged.
    pub(crate) fn expect_ignored(&self, async_id: u64, what: &'static str) {
        let mut st = self.lock();
        if let Some(pos) = st.early.iter().position(|(id, _)| *id == async_id) {
            let (_, ev) = st.early.remove(pos).expect("position is in range");
            drop(st);
            self.undelivered(what, ev);
            return;
        }
        st.waiters.insert(async_id, Waiter { what, tx: None, _keep_alive: None });
    }

    fn resolve(&self, async_id: u64, ev: Ev) {
        let mut st = self.lock();
        match st.waiters.remove(&async_id) {
            Some(waiter) => {
                drop(st);
                let what = waiter.what;
                // `_keep_alive` is released here, after the engine is done with it.
                match waiter.tx {
                    Some(tx) => {
                        if let Err(ev) = tx.send(ev) {
                            self.undelivered(what, ev);
                        }
                    }
                    None => self.undelivered(what, ev),
                }
            }
            None => {
                st.early.push_back((async_id, ev));
                let evicted = if st.early.len() > EARLY_CAP { st.early.pop_front() } else { None };
                drop(st);
                if let Some((_, ev)) = evicted {
                    self.undelivered("unclaimed", ev);
                }
            }
        }
    }

    /// A result whose requester is gone: log errors, and release or leave whatever it carries.
    fn undelivered(&self, what: &'static str, ev: Ev) {
        match ev {
            Ev::Connect(cb) => match cb.message {
                Some(proto::connect_callback::Message::Result(result)) => {
                    let room = owned_room_handle(&result.room);
                    let handles = connect_result_handles(&result).into_iter().filter(|h| *h != room).collect();
                    tracing::warn!(what, "livekit-ffi: room connected after its caller gave up; leaving it");
                    self.job(Job::Disconnect { room, handles });
                }
                Some(proto::connect_callback::Message::Error(e)) => {
                    tracing::debug!(what, error = %e, "late connect error")
                }
                None => {}
            },
            Ev::PublishTrack(cb) => match cb.message {
                Some(proto::publish_track_callback::Message::Publication(p)) => {
                    self.drop_handles([p.handle.id]);
                }
                Some(proto::publish_track_callback::Message::Error(e)) => {
                    tracing::warn!(what, error = %e, "livekit-ffi: publish failed")
                }
                None => {}
            },
            other => {
                if let Some(e) = callback_error(&other) {
                    tracing::warn!(what, error = %e, "livekit-ffi: request failed");
                }
            }
        }
    }

    /// Starts routing events of `room` to `inbox`.
    pub(crate) fn add_room(&self, room: u64, inbox: Arc<Inbox>) {
        self.lock().rooms.insert(room, inbox);
    }

    pub(crate) fn remove_room(&self, room: u64) {
        self.lock().rooms.remove(&room);
    }

    /// Starts routing the frames of audio stream `stream` to `inbox` as `identity`'s audio,
    /// including frames that arrived before this call.
    pub(crate) fn add_stream(&self, stream: u64, inbox: Arc<Inbox>, identity: Arc<str>) {
        let mut st = self.lock();
        let mut early = Vec::new();
        st.orphan_audio.retain_mut(|(s, pcm)| {
            if *s == stream {
                early.push(std::mem::take(pcm));
                false
            } else {
                true
            }
        });
        for pcm in early {
            inbox.push_audio(identity.clone(), pcm);
        }
        st.streams.insert(stream, (inbox, identity));
    }

    pub(crate) fn remove_stream(&self, stream: u64) {
        let mut st = self.lock();
        st.streams.remove(&stream);
        st.orphan_audio.retain(|(s, _)| *s != stream);
    }

    fn route_room_event(&self, ev: proto::RoomEvent) {
        let Some(msg) = ev.message else { return };
        let inbox = self.lock().rooms.get(&ev.room_handle).cloned();
        let rejected = match inbox {
            Some(inbox) => inbox.push_room(Box::new(msg)).err(),
            None => Some(Box::new(msg)),
        };
        if let Some(msg) = rejected {
            self.drop_handles(room_event_handles(&msg));
        }
    }

    fn route_audio(&self, ev: proto::AudioStreamEvent) {
        let frame = match ev.message {
            Some(proto::audio_stream_event::Message::FrameReceived(f)) => f.frame,
            Some(proto::audio_stream_event::Message::Eos(_)) => {
                tracing::debug!(stream = ev.stream_handle, "livekit-ffi: audio stream ended");
                return;
            }
            None => return,
        };
        // Copy before releasing: the handle keeps the engine's buffer alive.
        let pcm = sys::copy_engine_audio(&frame.info);
        self.drop_handles([frame.handle.id]);
        let Some(pcm) = pcm else {
            tracing::warn!(stream = ev.stream_handle, "livekit-ffi: implausible audio buffer from the engine");
            return;
        };
        let mut st = self.lock();
        if let Some((inbox, identity)) = st.streams.get(&ev.stream_handle) {
            let (inbox, identity) = (inbox.clone(), identity.clone());
            drop(st);
            inbox.push_audio(identity, pcm);
            return;
        }
        st.orphan_audio.push_back((ev.stream_handle, pcm));
        if st.orphan_audio.len() > ORPHAN_AUDIO_CAP {
            st.orphan_audio.pop_front();
            self.stats.orphan_audio_dropped.fetch_add(1, Ordering::Relaxed);
        }
    }

    #[cfg(test)]
    pub(crate) fn pending_waiters(&self) -> usize {
        self.lock().waiters.len()
    }
}

/// One item of a room's queue.
#[derive(Debug)]
pub(crate) enum InboxItem {
    /// Boxed: room events are rare next to audio frames, and large.
    Room(Box<RoomMsg>),
    Audio {
        identity: Arc<str>,
        pcm: Vec<i16>,
    },
}

struct InboxQueue {
    items: VecDeque<InboxItem>,
    audio: usize,
    closed: bool,
}

/// A room's queue between the callback threads and the room task. Bounded both ways: audio
/// beyond `audio_cap` frames is dropped and counted (stale audio is worthless); lifecycle events
/// beyond `event_cap` are dropped with an error log, which only happens when the room task has
/// stopped draining altogether.
pub(crate) struct Inbox {
    queue: Mutex<InboxQueue>,
    notify: Notify,
    audio_cap: usize,
    event_cap: usize,
    pub(crate) dropped_audio: AtomicU64,
    pub(crate) dropped_events: AtomicU64,
}

impl Inbox {
    pub(crate) fn new(audio_cap: usize, event_cap: usize) -> Inbox {
        Inbox {
            queue: Mutex::new(InboxQueue { items: VecDeque::new(), audio: 0, closed: false }),
            notify: Notify::new(),
            audio_cap,
            event_cap,
            dropped_audio: AtomicU64::new(0),
            dropped_events: AtomicU64::new(0),
        }
    }

    fn lock(&self) -> MutexGuard<'_, InboxQueue> {
        self.queue.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Queues a room event; gives it back when the room is closed or its queue is full, so the
    /// caller can release the handles it carries.
    pub(crate) fn push_room(&self, msg: Box<RoomMsg>) -> Result<(), Box<RoomMsg>> {
        let mut q = self.lock();
        if q.closed {
            return Err(msg);
        }
        if q.items.len() - q.audio >= self.event_cap {
            drop(q);
            let n = self.dropped_events.fetch_add(1, Ordering::Relaxed) + 1;
            tracing::error!(dropped = n, "livekit-ffi: room event queue full, room event dropped");
            return Err(msg);
        }
        q.items.push_back(InboxItem::Room(msg));
        drop(q);
        self.notify.notify_one();
        Ok(())
    }

    /// Queues a frame of remote audio; returns whether it was kept.
    pub(crate) fn push_audio(&self, identity: Arc<str>, pcm: Vec<i16>) -> bool {
        let mut q = self.lock();
        if q.closed {
            return false;
        }
        if q.audio >= self.audio_cap {
            drop(q);
            let n = self.dropped_audio.fetch_add(1, Ordering::Relaxed) + 1;
            if n.is_power_of_two() {
                tracing::warn!(dropped = n, "livekit-ffi: room audio queue full, frames dropped");
            }
            return false;
        }
        q.items.push_back(InboxItem::Audio { identity, pcm });
        q.audio += 1;
        drop(q);
        self.notify.notify_one();
        true
    }

    /// Takes everything queued so far.
    pub(crate) fn drain(&self) -> VecDeque<InboxItem> {
        let mut q = self.lock();
        q.audio = 0;
        std::mem::take(&mut q.items)
    }

    /// Refuses further items and returns what is still queued.
    pub(crate) fn close(&self) -> VecDeque<InboxItem> {
        let mut q = self.lock();
        q.closed = true;
        q.audio = 0;
        std::mem::take(&mut q.items)
    }

    /// Resolves once something was queued since the last call (a stored permit counts).
    pub(crate) async fn notified(&self) {
        self.notify.notified().await
    }
}

/// The `async_id` of events that complete an asynchronous request.
fn callback_id(ev: &Ev) -> Option<u64> {
    Some(match ev {
        Ev::Connect(c) => c.async_id,
        Ev::Disconnect(c) => c.async_id,
        Ev::Dispose(c) => c.async_id,
        Ev::PublishTrack(c) => c.async_id,
        Ev::UnpublishTrack(c) => c.async_id,
        Ev::PublishData(c) => c.async_id,
        Ev::PublishTranscription(c) => c.async_id,
        Ev::CaptureAudioFrame(c) => c.async_id,
        Ev::SetLocalMetadata(c) => c.async_id,
        Ev::SetLocalName(c) => c.async_id,
        Ev::SetLocalAttributes(c) => c.async_id,
        Ev::GetStats(c) => c.async_id,
        Ev::GetSessionStats(c) => c.async_id,
        Ev::PublishSipDtmf(c) => c.async_id,
        Ev::ChatMessage(c) => c.async_id,
        Ev::PerformRpc(c) => c.async_id,
        Ev::SimulateScenario(c) => c.async_id,
        _ => return None,
    })
}

fn callback_error(ev: &Ev) -> Option<&str> {
    match ev {
        Ev::UnpublishTrack(c) => c.error.as_deref(),
        Ev::PublishData(c) => c.error.as_deref(),
        Ev::CaptureAudioFrame(c) => c.error.as_deref(),
        Ev::SetLocalAttributes(c) => c.error.as_deref(),
        Ev::PublishSipDtmf(c) => c.error.as_deref(),
        _ => None,
    }
}

pub(crate) fn owned_room_handle(room: &proto::OwnedRoom) -> u64 {
    room.handle.id
}

/// Every handle a successful connect hands over: room, local participant, remote participants
/// and their publications.
pub(crate) fn connect_result_handles(result: &proto::connect_callback::Result) -> Vec<u64> {
    let mut out = vec![result.room.handle.id, result.local_participant.handle.id];
    for p in &result.participants {
        out.push(p.participant.handle.id);
        out.extend(p.publications.iter().map(|p| p.handle.id));
    }
    out
}

/// Handles carried by a room event, which whoever consumes (or discards) it must release.
pub(crate) fn room_event_handles(msg: &RoomMsg) -> Vec<u64> {
    let h = match msg {
        RoomMsg::ParticipantConnected(e) => Some(e.info.handle.id),
        RoomMsg::TrackPublished(e) => Some(e.publication.handle.id),
        RoomMsg::TrackSubscribed(e) => Some(e.track.handle.id),
        RoomMsg::LocalTrackRepublished(e) => Some(e.publication_handle),
        RoomMsg::DataPacketReceived(e) => match &e.value {
            Some(proto::data_packet_received::Value::User(u)) => Some(u.data.handle.id),
            _ => None,
        },
        RoomMsg::ByteStreamOpened(e) => Some(e.reader.handle.id),
        RoomMsg::TextStreamOpened(e) => Some(e.reader.handle.id),
        RoomMsg::DataTrackPublished(e) => Some(e.track.handle.id),
        _ => None,
    };
    h.into_iter().collect()
}

/// Participant attributes as a sorted map.
pub(crate) fn attributes_map<'a>(
    entries: impl IntoIterator<Item = (&'a String, &'a String)>,
) -> BTreeMap<String, String> {
    entries.into_iter().map(|(k, v)| (k.clone(), v.clone())).collect()
}

fn log_batch(batch: &proto::LogBatch) {
    use proto::LogLevel;
    for r in &batch.records {
        let (target, msg) = (r.target.as_str(), r.message.as_str());
        match LogLevel::try_from(r.level).unwrap_or(LogLevel::LogInfo) {
            LogLevel::LogError => tracing::error!(target: "livekit_ffi", engine_target = target, "{msg}"),
            LogLevel::LogWarn => tracing::warn!(target: "livekit_ffi", engine_target = target, "{msg}"),
            LogLevel::LogInfo => tracing::info!(target: "livekit_ffi", engine_target = target, "{msg}"),
            // libwebrtc's debug output is voluminous: keep it at trace.
            LogLevel::LogDebug | LogLevel::LogTrace => {
                tracing::trace!(target: "livekit_ffi", engine_target = target, "{msg}")
            }
        }
    }
}
