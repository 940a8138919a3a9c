//! Durable outbox: call results, Agent Desk requests and recording uploads are
//! persisted (fsync) before the first delivery attempt and retried until the
//! receiver accepts them, rejects them (dead letter) or they exceed `max_age`
//! (dead letter). Nothing is dropped silently; dead letters can be listed,
//! inspected, replayed or discarded.
//!
//! Durability model (see `docs/adr/0001-outbox-storage.md`):
//! - one immutable JSON file per entry, written temp → fsync → rename into
//!   `pending/` → fsync(dir); [`Outbox::enqueue`] returns only after that, so
//!   an acknowledged entry survives `kill -9` and power loss;
//! - the state is the directory (`pending/`, `dead/`); delivered entries are
//!   deleted. No step depends on a clean shutdown: on open, `*.tmp` leftovers
//!   are removed and everything in `pending/` is due immediately, in id order;
//! - attempt bookkeeping lives in memory and in an advisory `<id>.meta`
//!   sidecar; losing it only resets the backoff.
//!
//! Delivery is at-least-once: a crash between a 2xx and the deletion of the
//! file means one more delivery of the same bytes (CXB API upserts by
//! `session_id`).
//!
//! Retry policy: see [`backoff`]. Defaults: base 1 s doubling to a 5 min cap,
//! jitter in `[d/2, d]`, dead letter after 72 h, at most 8 deliveries in
//! flight, 10 s per HTTP attempt, 1 GiB on disk (warning at 80 %).

pub mod backoff;
mod entry;
mod http;
mod lock;
mod store;

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, RwLock};
use std::time::Duration;

use chrono::{DateTime, Utc};
use futures_util::FutureExt as _;
use metrics::{counter, gauge};
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore};
use tokio::task::{JoinHandle, JoinSet};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, info, warn};

use entry::Meta;
pub use entry::{
    Entry, EntryDetail, EntryId, EntrySummary, HttpBody, HttpTarget, NewEntry, OutboxStats, State, Target,
};
use store::{io_err, Dirs};

/// Response bodies kept for dead letters are cut to this size.
pub const MAX_RESPONSE_BODY_BYTES: usize = 64 * 1024;
/// `last_error` strings are cut to this size (they live in memory per entry).
pub(crate) const MAX_REASON_BYTES: usize = 1024;
/// How often age/size gauges are refreshed when nothing else happens.
const GAUGE_REFRESH: Duration = Duration::from_secs(5);

/// Outbox tuning. Build with [`OutboxConfig::new`] and override fields.
#[derive(Clone, Debug)]
pub struct OutboxConfig {
    /// Root directory; `pending/` and `dead/` are created inside.
    pub dir: PathBuf,
    /// Deliveries in flight at once (default 8).
    pub max_concurrency: usize,
    /// Whole-request timeout of one HTTP attempt, connect included (default 10 s).
    pub request_timeout: Duration,
    /// Timeout of one custom [`Deliverer`] attempt, e.g. a recording upload
    /// (default 10 min). Bounds how long a stuck deliverer can hold a slot.
    pub custom_timeout: Duration,
    /// First retry delay (default 1 s); doubles per failed attempt.
    pub backoff_base: Duration,
    /// Cap on the retry delay and on honoured `Retry-After` (default 5 min).
    pub backoff_max: Duration,
    /// An entry this old is dead-lettered instead of being retried (default 72 h).
    pub max_age: Duration,
    /// Disk budget for pending + dead; `enqueue` fails with `Full` beyond it (default 1 GiB).
    pub max_bytes: u64,
    /// Fraction of `max_bytes` that raises the disk alarm (default 0.8).
    pub alarm_ratio: f64,
}

impl OutboxConfig {
    pub fn new(dir: impl Into<PathBuf>) -> OutboxConfig {
        OutboxConfig {
            dir: dir.into(),
            max_concurrency: 8,
            request_timeout: Duration::from_secs(10),
            custom_timeout: Duration::from_secs(600),
            backoff_base: Duration::from_secs(1),
            backoff_max: Duration::from_secs(300),
            max_age: Duration::from_secs(72 * 3600),
            max_bytes: 1 << 30,
            alarm_ratio: 0.8,
        }
    }

    fn validate(&self) -> Result<(), OutboxError> {
        let bad = |m: &str| Err(OutboxError::Config(m.to_owned()));
        if self.max_concurrency == 0 {
            return bad("max_concurrency must be > 0");
        }
        if self.request_timeout.is_zero() || self.custom_timeout.is_zero() {
            return bad("timeouts must be > 0");
        }
        if self.backoff_base.is_zero() || self.backoff_max < self.backoff_base {
            return bad("need 0 < backoff_base <= backoff_max");
        }
        if self.max_bytes == 0 {
            return bad("max_bytes must be > 0");
        }
        if !(self.alarm_ratio > 0.0 && self.alarm_ratio <= 1.0) {
            return bad("alarm_ratio must be in (0, 1]");
        }
        Ok(())
    }
}

#[derive(Debug, thiserror::Error)]
pub enum OutboxError {
    #[error("outbox I/O error ({op} {path}): {source}")]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("outbox full: {used} of {max} bytes used, entry needs {needed}")]
    Full { used: u64, needed: u64, max: u64 },
    #[error("cannot serialize outbox entry: {0}")]
    Serialize(#[from] serde_json::Error),
    #[error("no such outbox entry: {0}")]
    NotFound(String),
    #[error("invalid outbox entry: {0}")]
    Invalid(String),
    #[error("outbox directory {0} is in use by another process")]
    Locked(PathBuf),
    #[error("invalid outbox config: {0}")]
    Config(String),
    #[error("cannot build HTTP client: {0}")]
    Client(String),
    #[error("outbox background task failed: {0}")]
    Task(String),
}

impl OutboxError {
    fn is_not_found(&self) -> bool {
        matches!(self, OutboxError::Io { source, .. } if source.kind() == std::io::ErrorKind::NotFound)
    }
}

/// Result of one delivery attempt.
#[derive(Clone, Debug)]
pub enum Outcome {
    /// Accepted by the receiver: the entry is deleted.
    Delivered,
    /// Transient failure: retried with backoff (`retry_after` is a floor,
    /// capped at `backoff_max`) until `max_age`.
    Retry { reason: String, retry_after: Option<Duration> },
    /// Permanent failure: dead-lettered now, `body` kept (≤ 64 KiB) for `get`.
    Reject { reason: String, body: Option<String> },
}

/// Delivers entries of one kind (e.g. recording uploads to object storage).
/// Must be idempotent: an entry can be delivered more than once.
pub trait Deliverer: Send + Sync {
    fn deliver<'a>(&'a self, entry: &'a Entry) -> Pin<Box<dyn Future<Output = Outcome> + Send + 'a>>;
}

/// Handle to the outbox; cheap to clone.
#[derive(Clone)]
pub struct Outbox {
    inner: Arc<Inner>,
}

struct Inner {
    cfg: OutboxConfig,
    dirs: Dirs,
    http: http::HttpDeliverer,
    deliverers: RwLock<HashMap<String, Arc<dyn Deliverer>>>,
    state: Mutex<St>,
    /// Wakes the delivery loop (enqueue, replay, recovered entries).
    wake: Notify,
    /// Signals `wait_idle` callers that something finished.
    changed: Notify,
    running: AtomicBool,
    _lock: lock::DirLock,
}

struct PendingRec {
    kind: String,
    key: String,
    created_at: DateTime<Utc>,
    size: u64,
    meta_size: u64,
    attempts: u32,
    last_error: Option<String>,
    last_status: Option<u16>,
    last_attempt_at: Option<DateTime<Utc>>,
    /// Last replay from dead letters; restarts the `max_age` clock so a
    /// replayed entry gets a full retry window.
    replayed_at: Option<DateTime<Utc>>,
    /// Scheduled attempt; None while in flight.
    due: Option<(Instant, DateTime<Utc>)>,
    /// Dispatch token while in flight (guards against stale completions).
    flight: Option<u64>,
    /// `discard` was called while in flight: drop the entry when it lands.
    discard: bool,
}

struct DeadRec {
    kind: String,
    key: String,
    created_at: DateTime<Utc>,
    size: u64,
    meta_size: u64,
    attempts: u32,
    reason: String,
    last_error: Option<String>,
}

#[derive(Default)]
struct St {
    pending: BTreeMap<EntryId, PendingRec>,
    dead: BTreeMap<EntryId, DeadRec>,
    /// Due-time queue; ties broken by id so replay goes in creation order.
    due: BTreeSet<(Instant, EntryId)>,
    in_flight: usize,
    next_flight: u64,
    /// Bytes on disk (entries + sidecars) of pending and dead.
    bytes: u64,
    /// Bytes of enqueues currently being written (counted against max_bytes).
    reserved: u64,
    alarm: bool,
}

impl St {
    fn schedule(&mut self, id: &EntryId, at: Instant, wall: DateTime<Utc>) {
        if let Some(rec) = self.pending.get_mut(id) {
            if let Some((old, _)) = rec.due.take() {
                self.due.remove(&(old, id.clone()));
            }
            rec.due = Some((at, wall));
            self.due.insert((at, id.clone()));
        }
    }

    fn end_flight(&mut self, id: &EntryId) {
        if let Some(rec) = self.pending.get_mut(id) {
            if rec.flight.take().is_some() {
                self.in_flight -= 1;
            }
        }
    }

    fn remove_pending(&mut self, id: &EntryId) -> Option<PendingRec> {
        let mut rec = self.pending.remove(id)?;
        if let Some((at, _)) = rec.due.take() {
            self.due.remove(&(at, id.clone()));
        }
        if rec.flight.take().is_some() {
            self.in_flight -= 1;
        }
        self.bytes = self.bytes.saturating_sub(rec.size + rec.meta_size);
        Some(rec)
    }

    fn summary_pending(id: &EntryId, r: &PendingRec) -> EntrySummary {
        EntrySummary {
            id: id.clone(),
            state: State::Pending,
            kind: r.kind.clone(),
            key: r.key.clone(),
            created_at: r.created_at,
            size_bytes: r.size + r.meta_size,
            attempts: r.attempts,
            last_error: r.last_error.clone(),
            next_attempt_at: r.due.map(|(_, wall)| wall),
            in_flight: r.flight.is_some(),
            dead_reason: None,
        }
    }

    fn summary_dead(id: &EntryId, r: &DeadRec) -> EntrySummary {
        EntrySummary {
            id: id.clone(),
            state: State::Dead,
            kind: r.kind.clone(),
            key: r.key.clone(),
            created_at: r.created_at,
            size_bytes: r.size + r.meta_size,
            attempts: r.attempts,
            last_error: r.last_error.clone(),
            next_attempt_at: None,
            in_flight: false,
            dead_reason: Some(r.reason.clone()),
        }
    }
}

/// What to do with an entry after an attempt.
enum Step {
    Delivered,
    Retry {
        label: &'static str,
        reason: String,
        retry_after: Option<Duration>,
        status: Option<u16>,
    },
    Dead {
        /// `rejected`, `max_age`, `corrupt`.
        reason: &'static str,
        label: Option<&'static str>,
        error: String,
        status: Option<u16>,
        body: Option<String>,
    },
    /// The entry file disappeared underneath us (external deletion).
    Vanished,
}

impl Outbox {
    /// Opens (creating if needed) the outbox at `cfg.dir`: takes the directory
    /// lock, deletes `*.tmp` leftovers and orphan sidecars, loads dead letters
    /// and schedules every pending entry for immediate delivery in id order.
    /// Delivery starts with [`Outbox::start`].
    pub async fn open(cfg: OutboxConfig) -> Result<Outbox, OutboxError> {
        cfg.validate()?;
        let dirs = Dirs::new(&cfg.dir);
        let http = http::HttpDeliverer::new(cfg.request_timeout)?;
        let d = dirs.clone();
        let (dir_lock, pending, dead) = blocking(move || {
            d.create()?;
            let dir_lock = lock::DirLock::try_acquire(&d.root)
                .map_err(io_err("lock", &d.root))?
                .ok_or_else(|| OutboxError::Locked(d.root.clone()))?;
            let pending = store::scan(&d.pending)?;
            let mut kept = Vec::with_capacity(pending.len());
            for s in pending {
                match &s.entry {
                    Ok(_) => kept.push(s),
                    Err(why) => {
                        // Cannot happen through our write protocol (rename of a
                        // fsync'd file); if the disk corrupted it, park it where
                        // an operator sees it rather than retrying forever.
                        error!(id = %s.id, error = %why, "corrupt outbox entry moved to dead letters");
                        let meta = Meta {
                            dead_reason: Some("corrupt".into()),
                            dead_at: Some(Utc::now()),
                            last_error: Some(why.clone()),
                            ..Meta::default()
                        };
                        store::move_to_dead(&d, &s.id, &meta)?;
                        counter!("cxb_outbox_dead_letters_total", "kind" => "unknown", "reason" => "corrupt")
                            .increment(1);
                    }
                }
            }
            let dead = store::scan(&d.dead)?;
            Ok((dir_lock, kept, dead))
        })
        .await?;

        let now = Instant::now();
        let wall = Utc::now();
        let mut st = St::default();
        for s in pending {
            let Ok(e) = s.entry else { continue };
            let (meta, meta_size) = s.meta.unwrap_or_default();
            st.bytes += s.size + meta_size;
            st.pending.insert(
                s.id.clone(),
                PendingRec {
                    kind: e.kind,
                    key: e.key,
                    created_at: e.created_at,
                    size: s.size,
                    meta_size,
                    attempts: meta.attempts,
                    last_error: meta.last_error,
                    last_status: meta.last_status,
                    last_attempt_at: meta.last_attempt_at,
                    replayed_at: meta.replayed_at,
                    due: None,
                    flight: None,
                    discard: false,
                },
            );
            // Replay: everything due now; the set orders equal instants by id.
            st.schedule(&s.id, now, wall);
        }
        for s in dead {
            let (meta, meta_size) = s.meta.unwrap_or_default();
            st.bytes += s.size + meta_size;
            let (kind, key, created_at, reason) = match s.entry {
                Ok(e) => (e.kind, e.key, e.created_at, meta.dead_reason.unwrap_or_else(|| "unknown".into())),
                Err(_) => ("unknown".into(), String::new(), wall, "corrupt".into()),
            };
            st.dead.insert(
                s.id,
                DeadRec {
                    kind,
                    key,
                    created_at,
                    size: s.size,
                    meta_size,
                    attempts: meta.attempts,
                    reason,
                    last_error: meta.last_error,
                },
            );
        }
        info!(
            dir = %cfg.dir.display(),
            pending = st.pending.len(),
            dead = st.dead.len(),
            bytes = st.bytes,
            "outbox opened; pending entries scheduled for immediate delivery"
        );
        let inner = Arc::new(Inner {
            cfg,
            dirs,
            http,
            deliverers: RwLock::new(HashMap::new()),
            state: Mutex::new(st),
            wake: Notify::new(),
            changed: Notify::new(),
            running: AtomicBool::new(false),
            _lock: dir_lock,
        });
        inner.publish(&mut inner.lock());
        Ok(Outbox { inner })
    }

    /// Persists an entry durably (temp file, fsync, rename, fsync dir) and
    /// returns its id only once it would survive a crash; then wakes the
    /// delivery loop. `Err(Full)` when the disk budget is exhausted and `Err(Io)`
    /// on a write failure (ENOSPC…): nothing is left behind in either case and
    /// the caller still owns the payload.
    ///
    /// Cancel-safe in the useful sense: if the caller's future is dropped the
    /// write still completes and the entry is delivered.
    pub async fn enqueue(&self, new: NewEntry) -> Result<EntryId, OutboxError> {
        if new.kind.is_empty() {
            return Err(OutboxError::Invalid("empty kind".into()));
        }
        let now = Utc::now();
        let entry =
            Entry { id: EntryId::generate(now), kind: new.kind, created_at: now, key: new.key, target: new.target };
        let bytes = serde_json::to_vec(&entry)?;
        let inner = self.inner.clone();
        // Write + bookkeeping in one blocking task: a caller dropping this
        // future cannot leave an entry on disk that memory does not know about.
        blocking(move || inner.persist_new(entry, bytes)).await
    }

    /// Registers the deliverer for `kind`, replacing any previous one. Kinds
    /// without one use the built-in HTTP deliverer for `Target::Http`; a
    /// `Target::Custom` entry without a deliverer is retried (it may be
    /// registered later) and eventually dead-lettered by `max_age`.
    pub fn register(&self, kind: &str, deliverer: Arc<dyn Deliverer>) {
        self.inner.deliverers.write().unwrap_or_else(PoisonError::into_inner).insert(kind.to_owned(), deliverer);
        self.inner.wake.notify_one();
    }

    /// Spawns the delivery loop; it runs until `shutdown` is cancelled, then
    /// gives in-flight attempts up to `request_timeout` to finish (anything
    /// unfinished is simply delivered again after restart). Only one loop runs
    /// per outbox; a second call returns a handle that ends immediately.
    /// Spawns onto the current Tokio runtime (panics outside one, like
    /// `tokio::spawn`).
    pub fn start(&self, shutdown: CancellationToken) -> JoinHandle<()> {
        let inner = self.inner.clone();
        tokio::spawn(async move {
            if inner.running.swap(true, Ordering::SeqCst) {
                warn!("outbox delivery loop already running");
                return;
            }
            inner.clone().run(shutdown).await;
            inner.running.store(false, Ordering::SeqCst);
        })
    }

    /// Entries in one state, oldest first.
    pub async fn list(&self, state: State) -> Vec<EntrySummary> {
        let st = self.inner.lock();
        match state {
            State::Pending => st.pending.iter().map(|(id, r)| St::summary_pending(id, r)).collect(),
            State::Dead => st.dead.iter().map(|(id, r)| St::summary_dead(id, r)).collect(),
        }
    }

    /// One entry with its payload and, for dead letters, the last response body.
    pub async fn get(&self, id: &str) -> Option<EntryDetail> {
        let id = EntryId::parse(id)?;
        let (summary, last_status, last_attempt_at) = {
            let st = self.inner.lock();
            if let Some(r) = st.pending.get(&id) {
                (St::summary_pending(&id, r), r.last_status, r.last_attempt_at)
            } else {
                let r = st.dead.get(&id)?;
                (St::summary_dead(&id, r), None, None)
            }
        };
        let dirs = self.inner.dirs.clone();
        let state = summary.state;
        let (entry, meta) = blocking(move || {
            let entry = store::read_entry(&dirs.entry_path(state, &id))?.ok();
            let meta = match state {
                State::Dead => store::read_meta(&dirs.meta_path(state, &id)).map(|m| m.0),
                State::Pending => None,
            };
            Ok((entry, meta))
        })
        .await
        .ok()?;
        let meta = meta.unwrap_or_default();
        Some(EntryDetail {
            summary,
            entry,
            last_status: last_status.or(meta.last_status),
            last_attempt_at: last_attempt_at.or(meta.last_attempt_at),
            dead_at: meta.dead_at,
            last_response_body: meta.last_response_body,
        })
    }

    /// Moves a dead letter back to pending with attempts reset; due now.
    pub async fn replay(&self, id: &str) -> Result<(), OutboxError> {
        let id = EntryId::parse(id).ok_or_else(|| OutboxError::NotFound(id.to_owned()))?;
        let rec = self.inner.lock().dead.remove(&id).ok_or_else(|| OutboxError::NotFound(id.to_string()))?;
        let (dirs, mid) = (self.inner.dirs.clone(), id.clone());
        let replayed_at = Utc::now();
        let moved = blocking(move || {
            store::move_to_pending(&dirs, &mid)?;
            // Advisory: if lost, max_age counts from created_at again.
            let meta = Meta { replayed_at: Some(replayed_at), ..Meta::default() };
            Ok(store::write_meta(&dirs, State::Pending, &mid, &meta, false).unwrap_or(0))
        })
        .await;
        let meta_size = match moved {
            Ok(m) => m,
            Err(e) => {
                self.inner.lock().dead.insert(id, rec);
                return Err(e);
            }
        };
        info!(%id, kind = %rec.kind, key = %rec.key, "outbox dead letter replayed");
        let mut st = self.inner.lock();
        st.bytes = st.bytes.saturating_sub(rec.meta_size) + meta_size;
        st.pending.insert(
            id.clone(),
            PendingRec {
                kind: rec.kind,
                key: rec.key,
                created_at: rec.created_at,
                size: rec.size,
                meta_size,
                attempts: 0,
                last_error: None,
                last_status: None,
                last_attempt_at: None,
                replayed_at: Some(replayed_at),
                due: None,
                flight: None,
                discard: false,
            },
        );
        st.schedule(&id, Instant::now(), Utc::now());
        self.inner.publish(&mut st);
        drop(st);
        self.inner.wake.notify_one();
        Ok(())
    }

    /// Deletes an entry (pending or dead) for good. An attempt already in
    /// flight cannot be recalled; its result is then ignored.
    pub async fn discard(&self, id: &str) -> Result<(), OutboxError> {
        let id = EntryId::parse(id).ok_or_else(|| OutboxError::NotFound(id.to_owned()))?;
        let dirs = self.inner.dirs.clone();
        enum Found {
            InFlight,
            Pending(PendingRec),
            Dead(DeadRec),
        }
        let found = {
            let mut st = self.inner.lock();
            match st.pending.get_mut(&id) {
                Some(r) if r.flight.is_some() => {
                    r.discard = true;
                    Found::InFlight
                }
                Some(_) => match st.remove_pending(&id) {
                    Some(r) => Found::Pending(r),
                    None => return Err(OutboxError::NotFound(id.to_string())),
                },
                None => match st.dead.remove(&id) {
                    Some(r) => Found::Dead(r),
                    None => return Err(OutboxError::NotFound(id.to_string())),
                },
            }
        };
        let mid = id.clone();
        match found {
            Found::InFlight => {
                // The delivery task removes it from memory when it lands.
                let path = dirs.entry_path(State::Pending, &id);
                let res = blocking(move || {
                    store::remove_if_exists(&path)?;
                    store::fsync_dir(&dirs.pending)
                })
                .await;
                if res.is_err() {
                    if let Some(r) = self.inner.lock().pending.get_mut(&id) {
                        r.discard = false;
                    }
                }
                res?;
            }
            Found::Pending(rec) => {
                let res = blocking(move || store::delete_entry(&dirs, State::Pending, &mid, true)).await;
                if let Err(e) = res {
                    let mut st = self.inner.lock();
                    st.bytes += rec.size + rec.meta_size;
                    st.pending.insert(id.clone(), rec);
                    st.schedule(&id, Instant::now(), Utc::now());
                    drop(st);
                    self.inner.wake.notify_one();
                    return Err(e);
                }
                warn!(%id, kind = %rec.kind, key = %rec.key, "pending outbox entry discarded");
            }
            Found::Dead(rec) => {
                let res = blocking(move || store::delete_entry(&dirs, State::Dead, &mid, true)).await;
                if let Err(e) = res {
                    self.inner.lock().dead.insert(id, rec);
                    return Err(e);
                }
                let mut st = self.inner.lock();
                st.bytes = st.bytes.saturating_sub(rec.size + rec.meta_size);
                drop(st);
                warn!(%id, kind = %rec.kind, key = %rec.key, "dead outbox entry discarded");
            }
        }
        let mut st = self.inner.lock();
        self.inner.publish(&mut st);
        drop(st);
        self.inner.changed.notify_waiters();
        Ok(())
    }

    /// The keys of every entry of `kind`, pending or dead: what the outbox already holds, e.g.
    /// the sessions whose result is persisted (a restart must not make a second one).
    pub fn keys(&self, kind: &str) -> HashSet<String> {
        let st = self.inner.lock();
        let pending = st.pending.values().filter(|r| r.kind == kind).map(|r| r.key.clone());
        let dead = st.dead.values().filter(|r| r.kind == kind).map(|r| r.key.clone());
        pending.chain(dead).collect()
    }

    pub fn stats(&self) -> OutboxStats {
        let st = self.inner.lock();
        OutboxStats {
            pending: st.pending.len(),
            dead: st.dead.len(),
            in_flight: st.in_flight,
            oldest_pending_age: oldest_age(&st),
            bytes: st.bytes,
            max_bytes: self.inner.cfg.max_bytes,
            disk_alarm: st.alarm,
        }
    }

    /// Waits until no attempt is in flight and no pending entry is due (entries
    /// scheduled for later do not count). Returns false on timeout.
    pub async fn wait_idle(&self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        loop {
            let changed = self.inner.changed.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            let now = Instant::now();
            {
                let st = self.inner.lock();
                let due_now = st.due.first().is_some_and(|(at, _)| *at <= now);
                if st.in_flight == 0 && !due_now {
                    return true;
                }
            }
            if now >= deadline {
                return false;
            }
            // Entries become due by the clock, which notifies nobody: re-check
            // periodically as well.
            let nap = (deadline - now).min(Duration::from_millis(50));
            tokio::select! {
                _ = changed => {}
                _ = tokio::time::sleep(nap) => {}
            }
        }
    }
}

fn oldest_age(st: &St) -> Option<Duration> {
    st.pending.values().next().map(|r| (Utc::now() - r.created_at).to_std().unwrap_or_default())
}

/// Runs blocking filesystem work off the async threads.
async fn blocking<T, F>(f: F) -> Result<T, OutboxError>
where
    F: FnOnce() -> Result<T, OutboxError> + Send + 'static,
    T: Send + 'static,
{
    tokio::task::spawn_blocking(f).await.map_err(|e| OutboxError::Task(e.to_string()))?
}

/// Cuts `s` to at most `max` bytes on a char boundary, marking the cut.
pub(crate) fn truncate(mut s: String, max: usize) -> String {
    if s.len() <= max {
        return s;
    }
    let mut cut = max.saturating_sub('…'.len_utf8());
    while !s.is_char_boundary(cut) {
        cut -= 1;
    }
    s.truncate(cut);
    s.push('…');
    s
}

/// Puts an entry back in the queue if its delivery task dies without
/// recording an outcome (panic, or abort at shutdown/drop).
struct FlightGuard {
    inner: Arc<Inner>,
    id: EntryId,
    flight: u64,
}

impl Drop for FlightGuard {
    fn drop(&mut self) {
        let mut st = self.inner.lock();
        let Some(rec) = st.pending.get_mut(&self.id) else {
            return;
        };
        if rec.flight != Some(self.flight) {
            return; // outcome already recorded
        }
        if rec.discard {
            st.remove_pending(&self.id);
        } else {
            rec.attempts += 1;
            rec.last_error = Some("delivery task aborted".into());
            let delay = backoff::delay(rec.attempts, self.inner.cfg.backoff_base, self.inner.cfg.backoff_max, None);
            st.end_flight(&self.id);
            st.schedule(&self.id, Instant::now() + delay, wall_after(delay));
        }
        self.inner.publish(&mut st);
        drop(st);
        self.inner.wake.notify_one();
        self.inner.changed.notify_waiters();
    }
}

fn wall_after(d: Duration) -> DateTime<Utc> {
    Utc::now() + chrono::Duration::from_std(d).unwrap_or(chrono::Duration::zero())
}

impl Inner {
    fn lock(&self) -> MutexGuard<'_, St> {
        // A panic while holding the lock cannot leave St half-updated in a way
        // that loses entries (files are the truth); keep going.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Blocking part of `enqueue`.
    fn persist_new(&self, entry: Entry, bytes: Vec<u8>) -> Result<EntryId, OutboxError> {
        let size = bytes.len() as u64;
        {
            let mut st = self.lock();
            let used = st.bytes + st.reserved;
            if used + size > self.cfg.max_bytes {
                counter!("cxb_outbox_rejected_full_total", "kind" => entry.kind.clone()).increment(1);
                return Err(OutboxError::Full { used, needed: size, max: self.cfg.max_bytes });
            }
            st.reserved += size;
        }
        let written =
            store::write_atomic(&self.dirs.pending, &format!("{}.{}", entry.id, store::ENTRY_EXT), &bytes, true);
        let mut st = self.lock();
        st.reserved -= size;
        if let Err(e) = written {
            drop(st);
            error!(kind = %entry.kind, key = %entry.key, error = %e, "outbox enqueue failed; entry not stored");
            return Err(e);
        }
        st.bytes += size;
        st.pending.insert(
            entry.id.clone(),
            PendingRec {
                kind: entry.kind.clone(),
                key: entry.key.clone(),
                created_at: entry.created_at,
                size,
                meta_size: 0,
                attempts: 0,
                last_error: None,
                last_status: None,
                last_attempt_at: None,
                replayed_at: None,
                due: None,
                flight: None,
                discard: false,
            },
        );
        st.schedule(&entry.id, Instant::now(), entry.created_at);
        self.publish(&mut st);
        drop(st);
        counter!("cxb_outbox_enqueued_total", "kind" => entry.kind.clone()).increment(1);
        debug!(id = %entry.id, kind = %entry.kind, key = %entry.key, size, "outbox entry persisted");
        self.wake.notify_one();
        Ok(entry.id)
    }

    /// Updates gauges and the disk alarm. Call with the state lock held.
    fn publish(&self, st: &mut St) {
        gauge!("cxb_outbox_pending").set(st.pending.len() as f64);
        gauge!("cxb_outbox_dead").set(st.dead.len() as f64);
        gauge!("cxb_outbox_bytes").set(st.bytes as f64);
        gauge!("cxb_outbox_oldest_age_seconds").set(oldest_age(st).map_or(0.0, |d| d.as_secs_f64()));
        let threshold = self.cfg.max_bytes as f64 * self.cfg.alarm_ratio;
        let over = st.bytes as f64 >= threshold;
        if over != st.alarm {
            st.alarm = over;
            if over {
                warn!(
                    bytes = st.bytes,
                    max_bytes = self.cfg.max_bytes,
                    pending = st.pending.len(),
                    dead = st.dead.len(),
                    "outbox disk usage above alarm threshold; enqueue fails once max_bytes is reached"
                );
            } else {
                info!(bytes = st.bytes, "outbox disk usage back below alarm threshold");
            }
        }
        gauge!("cxb_outbox_disk_alarm").set(if st.alarm { 1.0 } else { 0.0 });
    }

    /// The delivery loop: dispatches due entries while permits are free, then
    /// sleeps until the next due time, an enqueue, a finished attempt or shutdown.
    async fn run(self: Arc<Self>, shutdown: CancellationToken) {
        let permits = Arc::new(Semaphore::new(self.cfg.max_concurrency));
        let mut tasks = JoinSet::new();
        let mut refresh = tokio::time::interval(GAUGE_REFRESH);
        refresh.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        info!(max_concurrency = self.cfg.max_concurrency, "outbox delivery loop started");
        loop {
            while let Ok(permit) = permits.clone().try_acquire_owned() {
                let Some((id, flight)) = self.take_due(Instant::now()) else {
                    break;
                };
                let guard = FlightGuard { inner: self.clone(), id, flight };
                tasks.spawn(deliver_one(guard, permit));
            }
            let next_due = if permits.available_permits() > 0 {
                self.lock().due.first().map(|(at, _)| *at)
            } else {
                None // a finishing task wakes us via join_next
            };
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = self.wake.notified() => {}
                Some(res) = tasks.join_next(), if !tasks.is_empty() => {
                    if let Err(e) = res {
                        if e.is_panic() {
                            error!(error = %e, "outbox delivery task panicked; entry rescheduled");
                        }
                    }
                }
                _ = sleep_until_opt(next_due) => {}
                _ = refresh.tick() => {
                    self.publish(&mut self.lock());
                }
            }
        }
        let grace = self.cfg.request_timeout;
        let in_flight = tasks.len();
        if in_flight > 0 {
            info!(in_flight, ?grace, "outbox stopping; waiting for in-flight deliveries");
            let drained = tokio::time::timeout(grace, async { while tasks.join_next().await.is_some() {} }).await;
            if drained.is_err() {
                warn!("outbox in-flight deliveries abandoned at shutdown; they will be retried");
            }
            tasks.shutdown().await;
        }
        info!("outbox delivery loop stopped");
    }

    /// Completes a `discard` that raced with an in-flight attempt: forgets the
    /// entry and removes its leftover sidecar. Returns true if it did.
    fn drop_if_discarded(self: &Arc<Self>, st: &mut St, id: &EntryId) -> bool {
        if !st.pending.get(id).is_some_and(|r| r.discard) {
            return false;
        }
        st.remove_pending(id);
        self.publish(st);
        let meta = self.dirs.meta_path(State::Pending, id);
        tokio::task::spawn_blocking(move || store::remove_if_exists(&meta));
        self.changed.notify_waiters();
        true
    }

    /// Pops the earliest due entry, marking it in flight.
    fn take_due(&self, now: Instant) -> Option<(EntryId, u64)> {
        let mut st = self.lock();
        let (at, id) = st.due.first()?.clone();
        if at > now {
            return None;
        }
        st.due.remove(&(at, id.clone()));
        st.next_flight += 1;
        let flight = st.next_flight;
        let rec = st.pending.get_mut(&id)?;
        rec.due = None;
        rec.flight = Some(flight);
        st.in_flight += 1;
        Some((id, flight))
    }

    /// One attempt through the registered or built-in deliverer.
    async fn attempt(&self, entry: &Entry) -> Step {
        let custom = self.deliverers.read().unwrap_or_else(PoisonError::into_inner).get(&entry.kind).cloned();
        let (outcome, label, status) = match (custom, &entry.target) {
            (Some(d), _) => {
                let limit = self.cfg.custom_timeout;
                let fut = AssertUnwindSafe(d.deliver(entry)).catch_unwind();
                match tokio::time::timeout(limit, fut).await {
                    Ok(Ok(o)) => (o, "custom", None),
                    Ok(Err(_)) => {
                        (Outcome::Retry { reason: "deliverer panicked".into(), retry_after: None }, "custom", None)
                    }
                    Err(_) => (
                        Outcome::Retry { reason: format!("deliverer timed out after {limit:?}"), retry_after: None },
                        "timeout",
                        None,
                    ),
                }
            }
            (None, Target::Http(t)) => {
                let a = self.http.send(t).await;
                (a.outcome, a.label.unwrap_or("none"), a.status)
            }
            (None, Target::Custom { .. }) => (
                Outcome::Retry {
                    reason: format!("no deliverer registered for kind {:?}", entry.kind),
                    retry_after: None,
                },
                "no_deliverer",
                None,
            ),
        };
        match outcome {
            Outcome::Delivered => Step::Delivered,
            Outcome::Retry { reason, retry_after } => {
                Step::Retry { label, reason: truncate(reason, MAX_REASON_BYTES), retry_after, status }
            }
            Outcome::Reject { reason, body } => Step::Dead {
                reason: "rejected",
                label: Some(label),
                error: truncate(reason, MAX_REASON_BYTES),
                status,
                body: body.map(|b| truncate(b, MAX_RESPONSE_BODY_BYTES)),
            },
        }
    }

    /// Applies the result of an attempt to disk and memory.
    async fn finish(self: &Arc<Self>, id: &EntryId, flight: u64, step: Step) {
        let now = Utc::now();
        // Snapshot what we need; bail out if the entry was discarded meanwhile.
        let (kind, key, age_from, replayed_at, attempts) = {
            let mut st = self.lock();
            let Some(rec) = st.pending.get(id) else {
                return;
            };
            if rec.flight != Some(flight) {
                return;
            }
            let age_from = rec.replayed_at.unwrap_or(rec.created_at);
            let snapshot = (rec.kind.clone(), rec.key.clone(), age_from, rec.replayed_at, rec.attempts + 1);
            if self.drop_if_discarded(&mut st, id) {
                return;
            }
            snapshot
        };
        let step = match step {
            Step::Retry { label, reason, retry_after, status } => {
                counter!("cxb_outbox_failures_total", "kind" => kind.clone(), "reason" => label).increment(1);
                let age = (now - age_from).to_std().unwrap_or_default();
                if age >= self.cfg.max_age {
                    Step::Dead {
                        reason: "max_age",
                        label: None,
                        error: truncate(
                            format!("gave up after {attempts} attempts and {age:?}; last error: {reason}"),
                            MAX_REASON_BYTES,
                        ),
                        status,
                        body: None,
                    }
                } else {
                    Step::Retry { label, reason, retry_after, status }
                }
            }
            other => other,
        };
        match step {
            Step::Delivered => {
                let (dirs, fid) = (self.dirs.clone(), id.clone());
                // Not fsync'd: if the unlink is lost in a crash the entry is
                // simply delivered again, which at-least-once allows.
                if let Err(e) = blocking(move || store::delete_entry(&dirs, State::Pending, &fid, false)).await {
                    error!(%id, error = %e, "delivered outbox entry could not be deleted; it will be redelivered after restart");
                }
                let mut st = self.lock();
                st.remove_pending(id);
                self.publish(&mut st);
                drop(st);
                counter!("cxb_outbox_delivered_total", "kind" => kind.clone()).increment(1);
                debug!(%id, %kind, %key, attempts, "outbox entry delivered");
            }
            Step::Retry { label: _, reason, retry_after, status } => {
                let delay = backoff::delay(attempts, self.cfg.backoff_base, self.cfg.backoff_max, retry_after);
                let next_wall = wall_after(delay);
                warn!(%id, %kind, %key, attempts, ?delay, error = %reason, "outbox delivery failed; will retry");
                let meta = Meta {
                    attempts,
                    last_error: Some(reason.clone()),
                    last_status: status,
                    last_attempt_at: Some(now),
                    next_attempt_at: Some(next_wall),
                    replayed_at,
                    ..Meta::default()
                };
                let (dirs, fid) = (self.dirs.clone(), id.clone());
                let meta_size = blocking(move || store::write_meta(&dirs, State::Pending, &fid, &meta, false)).await;
                let mut st = self.lock();
                if self.drop_if_discarded(&mut st, id) {
                    return;
                }
                if let Some(rec) = st.pending.get_mut(id) {
                    rec.attempts = attempts;
                    rec.last_error = Some(reason);
                    rec.last_status = status;
                    rec.last_attempt_at = Some(now);
                    if let Ok(m) = meta_size {
                        let old = std::mem::replace(&mut rec.meta_size, m);
                        st.bytes = st.bytes.saturating_sub(old) + m;
                    }
                }
                st.end_flight(id);
                st.schedule(id, Instant::now() + delay, next_wall);
                self.publish(&mut st);
            }
            Step::Dead { reason, label, error: why, status, body } => {
                if let Some(label) = label {
                    counter!("cxb_outbox_failures_total", "kind" => kind.clone(), "reason" => label).increment(1);
                }
                let meta = Meta {
                    attempts,
                    last_error: Some(why.clone()),
                    last_status: status,
                    last_attempt_at: Some(now),
                    next_attempt_at: None,
                    replayed_at,
                    dead_reason: Some(reason.into()),
                    dead_at: Some(now),
                    last_response_body: body.clone(),
                };
                let (dirs, fid) = (self.dirs.clone(), id.clone());
                match blocking(move || store::move_to_dead(&dirs, &fid, &meta)).await {
                    Ok(meta_size) => {
                        error!(
                            %id, %kind, %key, status = ?status, reason, attempts,
                            error = %why,
                            body = %truncate(body.unwrap_or_default(), 2048),
                            "OUTBOX DEAD LETTER: entry will not be retried until replayed"
                        );
                        let mut st = self.lock();
                        if st.pending.get(id).is_some_and(|r| r.discard) {
                            // Discarded while we were moving it: finish the discard.
                            st.remove_pending(id);
                            self.publish(&mut st);
                            drop(st);
                            let (dirs, fid) = (self.dirs.clone(), id.clone());
                            tokio::task::spawn_blocking(move || store::delete_entry(&dirs, State::Dead, &fid, true));
                            self.changed.notify_waiters();
                            return;
                        }
                        if let Some(rec) = st.remove_pending(id) {
                            st.bytes += rec.size + meta_size;
                            st.dead.insert(
                                id.clone(),
                                DeadRec {
                                    kind: rec.kind,
                                    key: rec.key,
                                    created_at: rec.created_at,
                                    size: rec.size,
                                    meta_size,
                                    attempts,
                                    reason: reason.into(),
                                    last_error: Some(why),
                                },
                            );
                        }
                        self.publish(&mut st);
                        drop(st);
                        counter!("cxb_outbox_dead_letters_total", "kind" => kind.clone(), "reason" => reason)
                            .increment(1);
                    }
                    Err(e) => {
                        // Keep it pending rather than lose it; try again later.
                        error!(%id, %kind, %key, error = %e, "could not move outbox entry to dead letters; keeping it pending");
                        let delay = self.cfg.backoff_max;
                        let mut st = self.lock();
                        if self.drop_if_discarded(&mut st, id) {
                            return;
                        }
                        if let Some(rec) = st.pending.get_mut(id) {
                            rec.attempts = attempts;
                            rec.last_error = Some(why);
                        }
                        st.end_flight(id);
                        st.schedule(id, Instant::now() + delay, wall_after(delay));
                    }
                }
            }
            Step::Vanished => {
                error!(%id, %kind, %key, "outbox entry file disappeared; dropping it from the queue");
                let mut st = self.lock();
                st.remove_pending(id);
                self.publish(&mut st);
            }
        }
        self.changed.notify_waiters();
    }
}

/// One delivery: read the entry from disk, attempt, record the outcome.
async fn deliver_one(guard: FlightGuard, _permit: OwnedSemaphorePermit) {
    let inner = guard.inner.clone();
    let id = guard.id.clone();
    let path = inner.dirs.entry_path(State::Pending, &id);
    let step = match blocking(move || store::read_entry(&path)).await {
        Ok(Ok(entry)) => {
            counter!("cxb_outbox_attempts_total", "kind" => entry.kind.clone()).increment(1);
            inner.attempt(&entry).await
        }
        Ok(Err(why)) => Step::Dead { reason: "corrupt", label: None, error: why, status: None, body: None },
        Err(e) if e.is_not_found() => Step::Vanished,
        Err(e) => Step::Retry { label: "io", reason: e.to_string(), retry_after: None, status: None },
    };
    inner.finish(&id, guard.flight, step).await;
    drop(guard);
}

async fn sleep_until_opt(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}
