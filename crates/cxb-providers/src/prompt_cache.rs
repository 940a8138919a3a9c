//! The live prompt cache (contract §4.3), provider side.
//!
//! A request carries a neutral [`PromptCache`] hint; each client turns it into its vendor's
//! mechanism and reports what happened with one [`LlmEvent::Cache`](crate::llm::LlmEvent::Cache)
//! before `Done`:
//!
//! - **Gemini / Vertex**: an explicit `cachedContents` resource holding the static block and the
//!   tools, created once per (bot, version, model, content) and shared by every call of the worker
//!   through [`ExplicitCaches`]; extended before its TTL ends while in use; recreated when the
//!   provider says it is gone (the turn is retried once against the new one).
//! - **Anthropic**: `cache_control` on the static system block.
//! - **OpenAI**: `prompt_cache_key` / `prompt_cache_retention`.
//!
//! A cache failure never fails a request: it goes out uncached, reported as
//! [`CacheStatus::Fallback`].

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use cxb_wire::llm::{ChatMessage, ChatRequest, Usage};
use tokio::sync::watch;
use tokio::time::Instant;

/// What one request did with the prompt cache. Emitted only for requests carrying a
/// [`PromptCache`](cxb_wire::llm::PromptCache).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CacheReport {
    pub status: CacheStatus,
    /// The provider's cache resource the request referenced (Gemini `cachedContents/…`).
    pub resource: Option<String>,
    /// Why the cache was not used (with [`CacheStatus::Fallback`]), for the call's event log.
    pub detail: Option<String>,
}

/// The outcome per request, in the words `llm_cache_summary.statuses` records.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CacheStatus {
    /// An explicit cache was created for this request (or while it waited).
    Created,
    /// An explicit cache already live was referenced.
    Reused,
    /// The provider had dropped the cache; a new one was created and the request retried.
    Recreated,
    /// No cache could be used; the request went out uncached.
    Fallback,
    /// Prefix hints (Anthropic, OpenAI): tokens were read from the vendor's cache.
    Hit,
    /// Prefix hints: nothing was read, but the prefix was written for the next request.
    Written,
    /// Prefix hints: nothing read or written (for example a prefix below the vendor's minimum).
    Miss,
}

impl CacheStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Created => "created",
            Self::Reused => "reused",
            Self::Recreated => "recreated",
            Self::Fallback => "fallback",
            Self::Hit => "hit",
            Self::Written => "written",
            Self::Miss => "miss",
        }
    }
}

impl CacheReport {
    /// For vendors whose cache is a prefix hint: the usage tells whether it worked.
    pub(crate) fn from_usage(usage: Option<&Usage>) -> Self {
        let status = match usage {
            Some(u) if u.cached_tokens > 0 => CacheStatus::Hit,
            Some(u) if u.cache_write_tokens > 0 => CacheStatus::Written,
            _ => CacheStatus::Miss,
        };
        Self { status, resource: None, detail: None }
    }

    pub(crate) fn fallback(detail: String) -> Self {
        Self { status: CacheStatus::Fallback, resource: None, detail: Some(detail) }
    }
}

/// How the worker's explicit caches (Gemini / Vertex `cachedContents`) are kept.
#[derive(Debug, Clone)]
pub struct PromptCacheSettings {
    /// Lifetime asked for each cache (`ttl`), and by each extension.
    pub ttl: Duration,
    /// Extend a cache in use (PATCH `ttl`) once less than this is left.
    pub refresh_before: Duration,
    /// A cache with less than this left is not referenced (it could expire under the request);
    /// a new one is created.
    pub min_remaining: Duration,
    /// How long a request waits for a cache being created before it goes uncached (the creation
    /// carries on for the requests after it).
    pub create_wait: Duration,
    /// Bound on one create or extend request.
    pub request_timeout: Duration,
    /// After the provider refused a creation (4xx: content below its minimum size, a bad tool),
    /// requests go uncached this long before the next try.
    pub rejected_backoff: Duration,
    /// After a creation failed otherwise (5xx, timeout, network).
    pub failed_backoff: Duration,
    /// Distinct caches remembered; the least recently used is forgotten (it expires on its own).
    pub max_entries: usize,
}

impl Default for PromptCacheSettings {
    fn default() -> Self {
        Self {
            ttl: Duration::from_secs(3600),
            refresh_before: Duration::from_secs(600),
            min_remaining: Duration::from_secs(30),
            create_wait: Duration::from_secs(2),
            request_timeout: Duration::from_secs(10),
            rejected_backoff: Duration::from_secs(600),
            failed_backoff: Duration::from_secs(30),
            max_entries: 512,
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The system prompt, split at the cacheable boundary

/// A request's system prompt and the conversation after it.
pub(crate) struct SystemPrompt<'a> {
    /// The static block, when the request carries a prompt cache hint (and the block is not empty).
    pub cacheable: Option<&'a str>,
    /// The rest of the system prompt: the dynamic block, then the `System` messages that open
    /// `messages`, joined by blank lines.
    pub rest: String,
    /// `messages` after those opening `System` messages.
    pub conversation: &'a [ChatMessage],
}

impl SystemPrompt<'_> {
    /// The whole system prompt as one text (empty when there is none).
    pub fn joined(&self) -> String {
        join_blocks(self.cacheable.into_iter().chain(std::iter::once(self.rest.as_str())))
    }
}

pub(crate) fn split_system(req: &ChatRequest) -> SystemPrompt<'_> {
    let lead = req.messages.iter().take_while(|m| matches!(m, ChatMessage::System(_))).count();
    let leading = req.messages[..lead].iter().filter_map(|m| match m {
        ChatMessage::System(text) => Some(text.as_str()),
        _ => None,
    });
    let hint = req.prompt_cache.as_ref();
    let rest = join_blocks(hint.map(|h| h.dynamic_system.as_str()).into_iter().chain(leading));
    let cacheable = hint.map(|h| h.static_system.as_str()).filter(|s| !s.trim().is_empty());
    SystemPrompt { cacheable, rest, conversation: &req.messages[lead..] }
}

fn join_blocks<'a>(blocks: impl Iterator<Item = &'a str>) -> String {
    blocks.map(str::trim).filter(|b| !b.is_empty()).collect::<Vec<_>>().join("\n\n")
}

// ---------------------------------------------------------------------------------------------
// Explicit caches shared by every call of the worker

pub(crate) type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send + 'static>>;

/// Why a cache operation failed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum CacheError {
    /// The provider does not know the cache (expired or deleted).
    #[error("cache not found: {0}")]
    NotFound(String),
    /// The provider refused the request (4xx): trying again soon would fail the same way.
    #[error("cache refused: {0}")]
    Rejected(String),
    /// 5xx, timeout, network, an unreadable answer.
    #[error("cache request failed: {0}")]
    Failed(String),
}

/// One provider's cache endpoint, for one cache's content.
pub(crate) trait CacheBackend: Send + Sync + 'static {
    /// Create the cache; its resource name.
    fn create(&self, ttl: Duration) -> BoxFuture<Result<String, CacheError>>;
    /// Extend the cache's life to `ttl` from now.
    fn extend(&self, name: String, ttl: Duration) -> BoxFuture<Result<(), CacheError>>;
}

/// Identifies one cache: the account and endpoint it lives in (`scope`), the model it is for, the
/// bot and version of the hint, and a hash of its content (a changed prompt or tool set without a
/// version bump still gets its own cache).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) struct CacheKey {
    pub scope: String,
    pub model: String,
    pub key: String,
    pub version: String,
    pub content: u64,
}

/// A usable cache for a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Resolved {
    pub name: String,
    pub status: CacheStatus,
}

type Outcome = Option<Result<String, String>>;

enum SlotState {
    /// One creation in flight; every request for the key waits on it (single flight).
    Creating(watch::Receiver<Outcome>),
    Live {
        name: String,
        expires_at: Instant,
        extending: bool,
    },
    /// The last creation failed; requests go uncached until `until`.
    Failed {
        until: Instant,
        detail: String,
    },
}

struct Slot {
    state: SlotState,
    last_used: Instant,
}

/// The process-wide table of explicit caches.
pub(crate) struct ExplicitCaches {
    settings: PromptCacheSettings,
    slots: Mutex<HashMap<CacheKey, Slot>>,
}

impl std::fmt::Debug for ExplicitCaches {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ExplicitCaches").field("settings", &self.settings).finish_non_exhaustive()
    }
}

enum Next {
    Use(Resolved),
    Uncached(String),
    Wait(watch::Receiver<Outcome>),
}

impl ExplicitCaches {
    pub(crate) fn new(settings: PromptCacheSettings) -> Self {
        Self { settings, slots: Mutex::new(HashMap::new()) }
    }

    fn slots(&self) -> MutexGuard<'_, HashMap<CacheKey, Slot>> {
        self.slots.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The cache to reference for `key`, creating it when there is none (or it is about to
    /// expire), or why the request should go uncached. Waits at most `create_wait`.
    pub(crate) async fn resolve(
        self: &Arc<Self>,
        key: &CacheKey,
        backend: Arc<dyn CacheBackend>,
    ) -> Result<Resolved, String> {
        let next = self.next_step(key, backend);
        let mut rx = match next {
            Next::Use(resolved) => return Ok(resolved),
            Next::Uncached(detail) => return Err(detail),
            Next::Wait(rx) => rx,
        };
        let wait = self.settings.create_wait;
        let outcome = match tokio::time::timeout(wait, rx.wait_for(Option::is_some)).await {
            Ok(Ok(outcome)) => outcome.clone(),
            Ok(Err(_)) => return Err("cache creation was abandoned".into()),
            Err(_) => return Err(format!("cache still being created after {} ms", wait.as_millis())),
        };
        match outcome {
            Some(Ok(name)) => Ok(Resolved { name, status: CacheStatus::Created }),
            Some(Err(detail)) => Err(detail),
            None => Err("cache creation ended without a result".into()),
        }
    }

    fn next_step(self: &Arc<Self>, key: &CacheKey, backend: Arc<dyn CacheBackend>) -> Next {
        let now = Instant::now();
        let s = &self.settings;
        let mut slots = self.slots();
        if let Some(slot) = slots.get_mut(key) {
            slot.last_used = now;
            match &mut slot.state {
                SlotState::Live { name, expires_at, extending } if *expires_at > now + s.min_remaining => {
                    if *expires_at < now + s.refresh_before && !*extending {
                        *extending = true;
                        self.spawn_extend(key.clone(), name.clone(), backend);
                    }
                    return Next::Use(Resolved { name: name.clone(), status: CacheStatus::Reused });
                }
                SlotState::Failed { until, detail } if *until > now => return Next::Uncached(detail.clone()),
                SlotState::Creating(rx) => return Next::Wait(rx.clone()),
                // Expired (or about to), or its backoff is over: create a new one below.
                _ => {}
            }
        } else if slots.len() >= s.max_entries {
            evict_least_recent(&mut slots);
        }
        let (tx, rx) = watch::channel(None);
        slots.insert(key.clone(), Slot { state: SlotState::Creating(rx.clone()), last_used: now });
        drop(slots);
        self.spawn_create(key.clone(), backend, tx);
        Next::Wait(rx)
    }

    /// The creation runs on its own task, so a request cancelled by a barge-in does not waste it.
    fn spawn_create(self: &Arc<Self>, key: CacheKey, backend: Arc<dyn CacheBackend>, tx: watch::Sender<Outcome>) {
        let this = Arc::clone(self);
        tokio::spawn(async move {
            let s = &this.settings;
            let started = Instant::now();
            let result = match tokio::time::timeout(s.request_timeout, backend.create(s.ttl)).await {
                Ok(r) => r,
                Err(_) => Err(CacheError::Failed(format!("no answer within {} ms", s.request_timeout.as_millis()))),
            };
            let state = match &result {
                Ok(name) => SlotState::Live { name: name.clone(), expires_at: started + s.ttl, extending: false },
                Err(e) => {
                    tracing::warn!(error = %e, bot = %key.key, model = %key.model, "prompt cache creation failed");
                    let backoff =
                        if matches!(e, CacheError::Rejected(_)) { s.rejected_backoff } else { s.failed_backoff };
                    SlotState::Failed { until: Instant::now() + backoff, detail: e.to_string() }
                }
            };
            if let Some(slot) = this.slots().get_mut(&key) {
                // Unless it was evicted or replaced meanwhile.
                if matches!(slot.state, SlotState::Creating(_)) {
                    slot.state = state;
                }
            }
            let _ = tx.send(Some(result.map_err(|e| e.to_string())));
        });
    }

    /// Extends a live cache in the background: the request that noticed goes on with it now.
    fn spawn_extend(self: &Arc<Self>, key: CacheKey, name: String, backend: Arc<dyn CacheBackend>) {
        let this = Arc::clone(self);
        tokio::spawn(async move {
            let s = &this.settings;
            let started = Instant::now();
            let result = tokio::time::timeout(s.request_timeout, backend.extend(name.clone(), s.ttl)).await;
            let mut slots = this.slots();
            let Some(slot) = slots.get_mut(&key) else { return };
            let SlotState::Live { name: live, expires_at, extending } = &mut slot.state else { return };
            if *live != name {
                return;
            }
            match result {
                Ok(Ok(())) => {
                    *expires_at = started + s.ttl;
                    *extending = false;
                }
                Ok(Err(CacheError::NotFound(_))) => {
                    slots.remove(&key);
                }
                Ok(Err(e)) => {
                    tracing::warn!(error = %e, cache = %name, "prompt cache extension failed; retried on the next request");
                    *extending = false;
                }
                Err(_) => *extending = false,
            }
        });
    }

    /// The provider said `name` is gone: forget it (unless another request already replaced it).
    pub(crate) fn invalidate(&self, key: &CacheKey, name: &str) {
        let mut slots = self.slots();
        if matches!(slots.get(key), Some(Slot { state: SlotState::Live { name: live, .. }, .. }) if live == name) {
            slots.remove(key);
        }
    }
}

fn evict_least_recent(slots: &mut HashMap<CacheKey, Slot>) {
    let oldest = slots
        .iter()
        .filter(|(_, slot)| !matches!(slot.state, SlotState::Creating(_)))
        .min_by_key(|(_, slot)| slot.last_used)
        .map(|(key, _)| key.clone());
    if let Some(key) = oldest {
        slots.remove(&key);
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use cxb_wire::llm::PromptCache;

    use super::*;

    /// Counts calls; creation takes `delay` and answers with `create` until told otherwise.
    struct FakeBackend {
        creates: AtomicUsize,
        extends: AtomicUsize,
        delay: Duration,
        create: Mutex<Result<(), CacheError>>,
        extend: Mutex<Result<(), CacheError>>,
    }

    impl FakeBackend {
        fn new(delay: Duration) -> Arc<Self> {
            Arc::new(Self {
                creates: AtomicUsize::new(0),
                extends: AtomicUsize::new(0),
                delay,
                create: Mutex::new(Ok(())),
                extend: Mutex::new(Ok(())),
            })
        }
    }

    impl CacheBackend for FakeBackend {
        fn create(&self, _ttl: Duration) -> BoxFuture<Result<String, CacheError>> {
            let n = self.creates.fetch_add(1, Ordering::SeqCst) + 1;
            let result = self.create.lock().unwrap().clone().map(|()| format!("cachedContents/c{n}"));
            let delay = self.delay;
            Box::pin(async move {
                tokio::time::sleep(delay).await;
                result
            })
        }

        fn extend(&self, _name: String, _ttl: Duration) -> BoxFuture<Result<(), CacheError>> {
            self.extends.fetch_add(1, Ordering::SeqCst);
            let result = self.extend.lock().unwrap().clone();
            Box::pin(async move { result })
        }
    }

    fn key(bot: &str) -> CacheKey {
        CacheKey { scope: "s".into(), model: "m".into(), key: bot.into(), version: "1".into(), content: 7 }
    }

    fn settings() -> PromptCacheSettings {
        PromptCacheSettings {
            ttl: Duration::from_secs(100),
            refresh_before: Duration::from_secs(20),
            min_remaining: Duration::from_secs(5),
            create_wait: Duration::from_secs(3),
            request_timeout: Duration::from_secs(4),
            rejected_backoff: Duration::from_secs(60),
            failed_backoff: Duration::from_secs(10),
            max_entries: 2,
        }
    }

    #[tokio::test(start_paused = true)]
    async fn concurrent_first_requests_share_one_creation() {
        let caches = Arc::new(ExplicitCaches::new(settings()));
        let backend = FakeBackend::new(Duration::from_millis(500));
        let k = key("bot");
        let all = futures_util::future::join_all((0..20).map(|_| caches.resolve(&k, backend.clone()))).await;
        for r in all {
            assert_eq!(r.unwrap(), Resolved { name: "cachedContents/c1".into(), status: CacheStatus::Created });
        }
        assert_eq!(backend.creates.load(Ordering::SeqCst), 1);
        let again = caches.resolve(&k, backend.clone()).await.unwrap();
        assert_eq!(again.status, CacheStatus::Reused);
        assert_eq!(backend.creates.load(Ordering::SeqCst), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn extended_in_the_background_before_it_expires_then_recreated_when_gone() {
        let caches = Arc::new(ExplicitCaches::new(settings()));
        let backend = FakeBackend::new(Duration::ZERO);
        let k = key("bot");
        assert_eq!(caches.resolve(&k, backend.clone()).await.unwrap().status, CacheStatus::Created);
        // 85 s of 100 used: inside refresh_before, the request still uses the cache.
        tokio::time::advance(Duration::from_secs(85)).await;
        assert_eq!(caches.resolve(&k, backend.clone()).await.unwrap().status, CacheStatus::Reused);
        tokio::task::yield_now().await;
        assert_eq!(backend.extends.load(Ordering::SeqCst), 1);
        // Extended to 100 s from the extension: 90 s later it is still live, no new creation.
        tokio::time::advance(Duration::from_secs(60)).await;
        assert_eq!(caches.resolve(&k, backend.clone()).await.unwrap().status, CacheStatus::Reused);
        assert_eq!(backend.creates.load(Ordering::SeqCst), 1);

        caches.invalidate(&k, "cachedContents/other");
        assert_eq!(caches.resolve(&k, backend.clone()).await.unwrap().name, "cachedContents/c1");
        caches.invalidate(&k, "cachedContents/c1");
        assert_eq!(caches.resolve(&k, backend.clone()).await.unwrap().name, "cachedContents/c2");
    }

    #[tokio::test(start_paused = true)]
    async fn an_expired_cache_is_not_referenced() {
        let caches = Arc::new(ExplicitCaches::new(settings()));
        let backend = FakeBackend::new(Duration::ZERO);
        *backend.extend.lock().unwrap() = Err(CacheError::Failed("503".into()));
        let k = key("bot");
        caches.resolve(&k, backend.clone()).await.unwrap();
        // Extensions keep failing; with less than min_remaining left a new cache is made.
        tokio::time::advance(Duration::from_secs(96)).await;
        let r = caches.resolve(&k, backend.clone()).await.unwrap();
        assert_eq!((r.name.as_str(), r.status), ("cachedContents/c2", CacheStatus::Created));
    }

    #[tokio::test(start_paused = true)]
    async fn refused_creation_backs_off_then_retries() {
        let caches = Arc::new(ExplicitCaches::new(settings()));
        let backend = FakeBackend::new(Duration::ZERO);
        *backend.create.lock().unwrap() = Err(CacheError::Rejected("too small".into()));
        let k = key("bot");
        assert!(caches.resolve(&k, backend.clone()).await.unwrap_err().contains("too small"));
        assert!(caches.resolve(&k, backend.clone()).await.is_err());
        assert_eq!(backend.creates.load(Ordering::SeqCst), 1, "no new try during the backoff");
        *backend.create.lock().unwrap() = Ok(());
        tokio::time::advance(Duration::from_secs(61)).await;
        assert_eq!(caches.resolve(&k, backend.clone()).await.unwrap().status, CacheStatus::Created);
    }

    #[tokio::test(start_paused = true)]
    async fn slow_creation_sends_the_request_uncached_and_serves_later_ones() {
        let caches = Arc::new(ExplicitCaches::new(settings()));
        let backend = FakeBackend::new(Duration::from_millis(3500));
        let k = key("bot");
        assert!(caches.resolve(&k, backend.clone()).await.unwrap_err().contains("still being created"));
        tokio::time::advance(Duration::from_secs(1)).await;
        tokio::task::yield_now().await;
        assert_eq!(caches.resolve(&k, backend.clone()).await.unwrap().status, CacheStatus::Reused);
        assert_eq!(backend.creates.load(Ordering::SeqCst), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn the_table_is_bounded() {
        let caches = Arc::new(ExplicitCaches::new(settings()));
        let backend = FakeBackend::new(Duration::ZERO);
        for bot in ["a", "b", "c"] {
            caches.resolve(&key(bot), backend.clone()).await.unwrap();
            tokio::time::advance(Duration::from_millis(10)).await;
        }
        assert_eq!(caches.slots().len(), 2);
        assert!(!caches.slots().contains_key(&key("a")), "the least recently used went");
    }

    #[test]
    fn system_prompt_split() {
        let mut req = ChatRequest {
            messages: vec![
                ChatMessage::System("rules".into()),
                ChatMessage::Assistant { content: Some("Hello".into()), tool_calls: vec![] },
                ChatMessage::System("later".into()),
            ],
            ..Default::default()
        };
        let plain = split_system(&req);
        assert_eq!((plain.cacheable, plain.rest.as_str(), plain.conversation.len()), (None, "rules", 2));
        req.prompt_cache = Some(PromptCache {
            static_system: "STATIC ".into(),
            dynamic_system: " caller: Asha".into(),
            ..Default::default()
        });
        let split = split_system(&req);
        assert_eq!(split.cacheable, Some("STATIC "));
        assert_eq!(split.rest, "caller: Asha\n\nrules");
        assert_eq!(split.joined(), "STATIC\n\ncaller: Asha\n\nrules");
    }

    #[test]
    fn prefix_hint_status_from_usage() {
        let u = |cached, written| Usage { cached_tokens: cached, cache_write_tokens: written, ..Default::default() };
        assert_eq!(CacheReport::from_usage(Some(&u(10, 5))).status, CacheStatus::Hit);
        assert_eq!(CacheReport::from_usage(Some(&u(0, 5))).status, CacheStatus::Written);
        assert_eq!(CacheReport::from_usage(Some(&u(0, 0))).status, CacheStatus::Miss);
        assert_eq!(CacheReport::from_usage(None).status, CacheStatus::Miss);
    }
}
