//! Where the policy and the identity lists live, behind one trait.
//!
//! A store holds four things:
//! - the **policy document** (JSON text of a [`crate::policy::PolicyDoc`]) with a revision that
//!   grows by one on every change, for optimistic concurrency;
//! - the **policy history**: one record per change made through the gateway (who, when, before
//!   and after), written in the same atomic step as the document, the newest [`HISTORY_LIMIT`]
//!   kept;
//! - **lists**: named key -> value tables (gray IPs, token -> user id), each entry with an
//!   optional expiry, as memcached has;
//! - **change notifications**, so that every instance applies a change without polling.
//!
//! The request path never waits on a store for the policy: it is loaded once, kept in memory, and
//! replaced when a [`Change`] arrives. List values are read through [`Store::lookup_local`] when
//! the store keeps them in memory (the embedded store does), else through [`Store::lookup`] behind
//! a bounded cache.
//!
//! Implementations: `embedded` (redb, the default), `redis` (policy and lists shared by every
//! instance, with push invalidation), `memcached` (identity lists only; the policy stays in another
//! store). `cache` puts a bounded lookup cache in front of any of them.

pub mod cache;
pub mod embedded;
pub mod memcached;
pub mod redis;

use async_trait::async_trait;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

pub use self::redis::{InvalidationMode, RedisConfig, RedisStore};
pub use cache::{CacheConfig, CacheStats, CachedStore};
pub use embedded::EmbeddedStore;
pub use memcached::{MemcachedConfig, MemcachedStore};

/// A store failure. Every variant names what failed so that an operator can act on the message.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The store cannot be reached or answered with an error.
    #[error("store {store} unavailable: {detail}")]
    Unavailable { store: &'static str, detail: String },
    /// The on-disk or remote data is not what graygate wrote (corrupt, foreign format).
    #[error("store {store}: bad data under {key}: {detail}")]
    BadData {
        store: &'static str,
        key: String,
        detail: String,
    },
    /// A conditional write found another revision than the caller read: someone else changed the
    /// policy in between.
    #[error("policy revision conflict: expected {expected}, store has {actual}")]
    Conflict { expected: u64, actual: u64 },
    /// The data directory or file could not be opened.
    #[error("cannot open store at {path}: {detail}")]
    Open { path: String, detail: String },
}

/// Shows an error with its causes, `outer: cause: root cause`, each text once.
///
/// Each cause comes from [`std::error::Error::source`]. A cause whose text is already shown is
/// skipped: some errors both print their cause and return it as their source (the redis crate's
/// I/O errors do), and an operator should read an OS error once, not twice.
pub struct ErrorChain<'a>(pub &'a (dyn std::error::Error + 'static));

impl std::fmt::Display for ErrorChain<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut shown = self.0.to_string();
        let mut cause = self.0.source();
        while let Some(e) = cause {
            let text = e.to_string();
            if !shown.contains(&text) {
                shown.push_str(": ");
                shown.push_str(&text);
            }
            cause = e.source();
        }
        f.write_str(&shown)
    }
}

/// How many policy history entries a store keeps; older ones are dropped as new ones arrive.
pub const HISTORY_LIMIT: usize = 1000;

/// The policy document as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredPolicy {
    /// Grows by one on every change; 0 never occurs for a stored document.
    pub revision: u64,
    /// JSON text of a `PolicyDoc`.
    pub json: String,
}

/// One list entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub key: String,
    pub value: String,
    /// When the entry stops counting; `None` keeps it until removed.
    pub expires_at: Option<SystemTime>,
}

impl Entry {
    /// An entry that lives `ttl` from now (`None`: forever).
    pub fn new(key: impl Into<String>, value: impl Into<String>, ttl: Option<Duration>) -> Self {
        Entry {
            key: key.into(),
            value: value.into(),
            expires_at: ttl.map(|t| SystemTime::now() + t),
        }
    }
}

/// What changed in a store; sent to every subscriber (and, for shared stores, every instance).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    /// The policy document is now at this revision.
    Policy { revision: u64 },
    /// Entries of this list were added, changed or removed.
    List { list: String },
    /// One key of a list changed (shared stores report single keys, e.g. a `SET` by redis-cli).
    Key { list: String, key: String },
    /// Notifications may have been missed (a reconnect): every cached value may be stale.
    Reset,
}

/// Whether a store is reachable, for logs, metrics and the admin state.
///
/// A shared store (Redis, memcached) is *degraded* while graygate cannot reach it: lookups fail
/// fast (the request is decided as if the store were down, or from the last known value) and the
/// store reconnects by itself with backoff.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StoreHealth {
    /// True while the store cannot be reached.
    pub degraded: bool,
    /// When the current state began: since when the store is degraded, or when it last recovered
    /// (`None`: it never was degraded).
    pub since: Option<SystemTime>,
    /// The last connection error seen, kept after recovery so that an operator can see what
    /// happened.
    pub last_error: Option<String>,
}

/// Tracks a shared store's [`StoreHealth`] and logs each change of state once (`warn` when it
/// becomes degraded, `info` when it recovers), never per request.
pub(crate) struct HealthTracker {
    /// [`StoreError`]'s `store` name, for the log lines.
    store: &'static str,
    /// Mirror of `state.degraded`, read on every request without taking the lock.
    degraded: std::sync::atomic::AtomicBool,
    state: std::sync::Mutex<StoreHealth>,
}

impl HealthTracker {
    pub(crate) fn new(store: &'static str) -> Self {
        HealthTracker {
            store,
            degraded: std::sync::atomic::AtomicBool::new(false),
            state: std::sync::Mutex::new(StoreHealth::default()),
        }
    }

    pub(crate) fn is_degraded(&self) -> bool {
        self.degraded.load(std::sync::atomic::Ordering::Acquire)
    }

    /// Records a connection failure; logs only if the store was healthy until now.
    pub(crate) fn mark_degraded(&self, error: &str) {
        let mut state = self.lock();
        state.last_error = Some(error.to_owned());
        if !state.degraded {
            state.degraded = true;
            state.since = Some(SystemTime::now());
            self.degraded
                .store(true, std::sync::atomic::Ordering::Release);
            tracing::warn!(
                store = self.store,
                error,
                "store degraded: lookups are decided as if the store were down (or from the last known value) until it recovers; reconnecting with backoff"
            );
        }
    }

    /// Records that the store answers again; logs only if it was degraded. Returns whether it was.
    pub(crate) fn mark_recovered(&self) -> bool {
        let mut state = self.lock();
        if !state.degraded {
            return false;
        }
        let down_for = state
            .since
            .and_then(|since| since.elapsed().ok())
            .unwrap_or_default();
        state.degraded = false;
        state.since = Some(SystemTime::now());
        self.degraded
            .store(false, std::sync::atomic::Ordering::Release);
        tracing::info!(
            store = self.store,
            down_for = %humantime::format_duration(Duration::from_millis(down_for.as_millis() as u64)),
            "store recovered"
        );
        true
    }

    pub(crate) fn snapshot(&self) -> StoreHealth {
        self.lock().clone()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, StoreHealth> {
        // The state is plain data, always consistent between statements: a panic elsewhere while
        // holding the lock leaves nothing half-written.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// The one interface the data plane and the control plane use to reach stored data.
#[async_trait]
pub trait Store: Send + Sync + 'static {
    /// Short name for logs and metrics (`embedded`, `redis`, `memcached`).
    fn kind(&self) -> &'static str;

    /// The stored policy, or `None` when the store holds none yet.
    async fn load_policy(&self) -> Result<Option<StoredPolicy>, StoreError>;

    /// Stores a new policy document atomically and returns its revision. With `expected`, the
    /// write happens only if the stored revision is that one (0: no policy stored yet), else
    /// [`StoreError::Conflict`] and nothing changes. Subscribers get [`Change::Policy`].
    async fn save_policy(&self, json: &str, expected: Option<u64>) -> Result<u64, StoreError>;

    /// Like [`Store::save_policy`] with `Some(expected)`, and in the same atomic step records
    /// `record` (one history entry, JSON text, describing revision `expected + 1`) in the policy
    /// history, which keeps the newest [`HISTORY_LIMIT`] entries. A conflict records nothing.
    ///
    /// The default keeps no history (the record is dropped); every store graygate ships keeps it.
    async fn save_policy_recorded(
        &self,
        json: &str,
        expected: u64,
        record: &str,
    ) -> Result<u64, StoreError> {
        let _ = record;
        self.save_policy(json, Some(expected)).await
    }

    /// The newest `limit` history records (as given to [`Store::save_policy_recorded`]), newest
    /// first. Empty for a store that keeps no history.
    async fn load_history(&self, limit: usize) -> Result<Vec<String>, StoreError> {
        let _ = limit;
        Ok(Vec::new())
    }

    /// Answers a lookup from memory, without I/O, if this store can: `Some(Some(v))` value,
    /// `Some(None)` absent, `None` "ask [`Store::lookup`]". Called on the request path.
    fn lookup_local(&self, list: &str, key: &str) -> Option<Option<Arc<str>>> {
        let _ = (list, key);
        None
    }

    /// The value of `key` in `list` (`None`: absent or expired). Called on a cache miss.
    async fn lookup(&self, list: &str, key: &str) -> Result<Option<Arc<str>>, StoreError>;

    /// Adds or replaces entries in one atomic step. Subscribers get [`Change::List`].
    async fn put_entries(&self, list: &str, entries: &[Entry]) -> Result<(), StoreError>;

    /// Removes entries by key in one atomic step; returns how many existed.
    async fn remove_entries(&self, list: &str, keys: &[String]) -> Result<usize, StoreError>;

    /// Every live (unexpired) entry of a list, sorted by key.
    async fn list_entries(&self, list: &str) -> Result<Vec<Entry>, StoreError>;

    /// A receiver of every change made from now on. Lagging receivers should reload everything.
    fn subscribe(&self) -> tokio::sync::broadcast::Receiver<Change>;

    /// The lookup cache's counters, for a store with one in front ([`CachedStore`]); `None` for
    /// the others.
    fn cache_stats(&self) -> Option<CacheStats> {
        None
    }

    /// Whether the store is reachable right now. Local stores are always healthy.
    fn health(&self) -> StoreHealth {
        StoreHealth::default()
    }
}
