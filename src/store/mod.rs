//! Where the policy and the identity lists live, behind one trait.
//!
//! A store holds five things:
//! - the **policy document** (JSON text of a [`crate::policy::PolicyDoc`]) with a revision that
//!   grows by one on every change, for optimistic concurrency;
//! - the **policy history**: one record per change made through the gateway (who, when, and how
//!   to go back), written in the same atomic step as the document and pruned in that same step to
//!   a [`HistoryRetention`] (the newest `keep` records, at most `max_bytes` of them);
//! - **lists**: named key -> value tables (gray IPs, token -> user id), each entry with an
//!   optional expiry, as memcached has;
//! - **records**: small JSON documents beside the policy (the rollout driver's working state,
//!   every instance's traffic counters), each with an optional expiry, outside the policy's
//!   history; and **leases**, so that exactly one instance on a shared store does a job (drives
//!   the rollouts) at a time;
//! - **change notifications**, so that every instance applies a change without polling.
//!
//! The request path never waits on a store for the policy: it is loaded once, kept in memory, and
//! replaced when a [`Change`] arrives. List values are read through [`Store::lookup_local`] when
//! the store keeps them in memory (the embedded store does), else through [`Store::lookup`] behind
//! a bounded cache.
//!
//! Implementations: `embedded` (redb, the default), `redis` (policy and lists shared by every
//! instance, with push invalidation), `memcached` (identity lists only; the policy stays in another
//! store). `cache` puts a bounded lookup cache in front of any of them. `compact` is the form in
//! which the embedded store keeps each list in memory (IP keys packed, values interned).

pub mod cache;
pub mod compact;
pub mod embedded;
pub mod held;
pub mod key_escape;
pub mod limits;
pub mod memcached;
pub mod redis;

use async_trait::async_trait;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

pub use self::redis::{InvalidationMode, RedisConfig, RedisStore};
pub use cache::{CacheConfig, CacheStats, CachedStore};
pub use embedded::EmbeddedStore;
pub use key_escape::KeyEscape;
pub use memcached::{MemcachedConfig, MemcachedStore};

/// A store failure. Every variant names what failed so that an operator can act on the message;
/// the failure underneath (a `redis::RedisError`, a redb error, an `std::io::Error`...) is the
/// error's [`source`](std::error::Error::source), not part of its text, so that a report of the
/// whole chain ([`ErrorChain`]) shows it once.
///
/// Cloning is cheap: the cause is shared. The lookup cache hands one fetch's error to every
/// request that waited for it.
#[derive(Debug, Clone, thiserror::Error)]
pub enum StoreError {
    /// The store cannot be reached or answered with an error.
    #[error("store {store} unavailable: {detail}")]
    Unavailable {
        store: &'static str,
        /// What was being done, where (`lookup on redis://10.0.0.5:6379`), and why when the
        /// reason is not an error of its own (a timeout, a degraded store).
        detail: String,
        #[source]
        source: Option<Cause>,
    },
    /// The on-disk or remote data is not what graygate wrote (corrupt, foreign format).
    #[error("store {store}: bad data under {key}: {detail}")]
    BadData {
        store: &'static str,
        key: String,
        detail: String,
        #[source]
        source: Option<Cause>,
    },
    /// A conditional write lost the race: it found another revision than the caller read, because
    /// someone else changed the policy in between. Nothing was written; reading again and redoing
    /// the change can succeed. Every store reports a lost race this way, never as
    /// [`StoreError::Unavailable`].
    #[error("policy revision conflict: expected {expected}, store has {actual}")]
    Conflict { expected: u64, actual: u64 },
    /// The data directory or file could not be opened, or the server refuses the configuration.
    #[error("cannot open store at {path}: {detail}")]
    Open {
        path: String,
        detail: String,
        #[source]
        source: Option<Cause>,
    },
}

impl StoreError {
    /// [`StoreError::Unavailable`] without an underlying error (a timeout, a degraded store, an
    /// operation the store cannot do); add one with [`StoreError::with_source`].
    pub fn unavailable(store: &'static str, detail: impl Into<String>) -> Self {
        StoreError::Unavailable {
            store,
            detail: detail.into(),
            source: None,
        }
    }

    /// [`StoreError::BadData`] without an underlying error.
    pub fn bad_data(
        store: &'static str,
        key: impl Into<String>,
        detail: impl Into<String>,
    ) -> Self {
        StoreError::BadData {
            store,
            key: key.into(),
            detail: detail.into(),
            source: None,
        }
    }

    /// [`StoreError::Open`] without an underlying error.
    pub fn open(path: impl Into<String>, detail: impl Into<String>) -> Self {
        StoreError::Open {
            path: path.into(),
            detail: detail.into(),
            source: None,
        }
    }

    /// This error caused by `cause`. A [`StoreError::Conflict`] has no cause and stays as it is.
    #[must_use]
    pub fn with_source(mut self, cause: impl Into<Cause>) -> Self {
        match &mut self {
            StoreError::Unavailable { source, .. }
            | StoreError::BadData { source, .. }
            | StoreError::Open { source, .. } => *source = Some(cause.into()),
            StoreError::Conflict { .. } => {}
        }
        self
    }

    /// The underlying error if it is an `E` (`redis::RedisError`, `std::io::Error`...).
    pub fn cause<E: std::error::Error + 'static>(&self) -> Option<&E> {
        std::error::Error::source(self)?.downcast_ref()
    }

    /// True when a conditional write lost the race ([`StoreError::Conflict`]).
    pub fn is_lost_race(&self) -> bool {
        matches!(self, StoreError::Conflict { .. })
    }

    /// The error with its causes, each once, for logs and messages.
    pub fn chain(&self) -> ErrorChain<'_> {
        ErrorChain(self)
    }
}

/// The underlying failure of a [`StoreError`], as the store's client library or the operating
/// system reported it. Shared, so that a [`StoreError`] can be cloned; it is not an error itself
/// but dereferences to the one it holds, so that [`std::error::Error::source`] of a
/// [`StoreError`] is that error, ready to downcast.
#[derive(Clone)]
pub struct Cause(Arc<dyn std::error::Error + Send + Sync + 'static>);

impl Cause {
    /// Holds `error`.
    pub fn new(error: impl std::error::Error + Send + Sync + 'static) -> Self {
        Cause(Arc::new(error))
    }
}

impl<E: std::error::Error + Send + Sync + 'static> From<E> for Cause {
    fn from(error: E) -> Self {
        Cause::new(error)
    }
}

impl std::ops::Deref for Cause {
    type Target = dyn std::error::Error + Send + Sync + 'static;

    fn deref(&self) -> &Self::Target {
        &*self.0
    }
}

impl std::fmt::Debug for Cause {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Debug::fmt(&*self.0, f)
    }
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

/// First and last delay between a shared store's reconnection attempts (Redis, memcached); it
/// doubles in between, so a store that is down costs a few attempts a second at most, and one
/// that is back is seen within a second (a Redis restarted empty is re-seeded that soon).
pub(crate) const BACKOFF_MIN: Duration = Duration::from_millis(50);
pub(crate) const BACKOFF_MAX: Duration = Duration::from_secs(1);

/// How much policy history a store keeps: the newest records, as many as both bounds allow.
/// Older records are deleted by the write that adds a new one, in the same atomic step, so that
/// the history never holds more than this between two writes either.
///
/// The newest record is always kept, even alone over `max_bytes`: the change that was just made
/// stays visible (and can be undone) whatever its size.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HistoryRetention {
    /// How many records at most (at least 1).
    pub keep: usize,
    /// How many bytes of record text at most, summed over the records kept. A store's own
    /// overhead (keys, pages) comes on top.
    pub max_bytes: u64,
}

impl HistoryRetention {
    /// Default of `[history] keep`.
    pub const DEFAULT_KEEP: usize = 1000;
    /// Default of `[history] max_bytes`: 64 MiB.
    pub const DEFAULT_MAX_BYTES: u64 = 64 << 20;

    /// How many of `sizes` (record sizes in bytes, newest first) this retention keeps: at least
    /// one when there is one, then as long as both bounds hold. Every store prunes with this rule
    /// (the Redis script has its Lua twin).
    pub fn kept(&self, sizes: impl IntoIterator<Item = u64>) -> usize {
        let mut total = 0u64;
        let mut kept = 0usize;
        for size in sizes {
            total = total.saturating_add(size);
            if kept >= 1 && (kept >= self.keep || total > self.max_bytes) {
                break;
            }
            kept += 1;
        }
        kept
    }
}

impl Default for HistoryRetention {
    fn default() -> Self {
        HistoryRetention {
            keep: Self::DEFAULT_KEEP,
            max_bytes: Self::DEFAULT_MAX_BYTES,
        }
    }
}

/// One policy history record as a store hands it back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HistoryRecord {
    /// The revision whose change it records (the store's key for it).
    pub revision: u64,
    /// The record's text as given to [`Store::save_policy_recorded`].
    pub json: String,
}

/// The policy document as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredPolicy {
    /// Grows by one on every change; 0 never occurs for a stored document.
    pub revision: u64,
    /// JSON text of a `PolicyDoc`.
    pub json: String,
}

/// What [`Store::restore_policy`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Restore {
    /// Written: the store was at revision `from` (0: it held no policy).
    Restored { from: u64 },
    /// Not written: the store is at `actual`, which is not lower than the revision offered
    /// (another instance restored first, or the store was never behind).
    NotBehind { actual: u64 },
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
            // A TTL past what the clock can hold keeps the entry until removed, rather than
            // panicking: callers bound TTLs with [`limits::check_ttl`] before they get here.
            expires_at: ttl.and_then(|t| SystemTime::now().checked_add(t)),
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
    /// How values written by other clients reach this instance (Redis:
    /// [`InvalidationMode::as_str`]: `tracking`, `keyspace-events`, `ttl-only`, `disconnected`);
    /// `None` for a store without such a notion.
    pub invalidation: Option<&'static str>,
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
    /// history and deletes the oldest records that `retention` no longer keeps. A conflict
    /// records and deletes nothing.
    ///
    /// Every store must keep the record or fail: there is no default, so that a store cannot drop
    /// history silently. A store that keeps its policy elsewhere (memcached) passes the record on
    /// with the policy.
    async fn save_policy_recorded(
        &self,
        json: &str,
        expected: u64,
        record: &str,
        retention: HistoryRetention,
    ) -> Result<u64, StoreError>;

    /// Puts a policy back AT `revision` (not the next one), with `record` as that revision's
    /// history entry, when the store has lost what it held: it came back empty, or with an older
    /// revision than an instance had applied (a Redis restarted without persistence, a restored
    /// backup). Conditional and atomic: it writes only if the stored revision is lower than
    /// `revision` (no policy stored: 0), so that every instance of a fleet may try and the newest
    /// revision in the fleet wins; the history is pruned to `retention` in the same step.
    /// Subscribers get [`Change::Policy`] when it wrote.
    ///
    /// Every store must implement it (no default): a store that cannot restore must say so, not
    /// drop the fleet's last-known-good policy silently.
    async fn restore_policy(
        &self,
        json: &str,
        revision: u64,
        record: &str,
        retention: HistoryRetention,
    ) -> Result<Restore, StoreError>;

    /// History records, newest first: at most `limit` of them, only those of revisions below
    /// `before` when it is given (the cursor of the next page).
    async fn load_history(
        &self,
        before: Option<u64>,
        limit: usize,
    ) -> Result<Vec<HistoryRecord>, StoreError>;

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

    /// Stores the record `key` with `value` (JSON text), replacing any record of that key, its
    /// expiry included.
    ///
    /// Records are small documents beside the policy: the rollout driver's working state, each
    /// instance's traffic counters, what the config last applied. They are shared by every
    /// instance on a shared store, but are neither part of the policy nor of its history, and a
    /// write is announced to no subscriber. With `ttl`, the record disappears `ttl` after this
    /// write (on Redis, measured by the server's clock) unless written again; a zero `ttl` removes
    /// it at once. `None` keeps it until [`Store::delete_record`].
    async fn put_record(
        &self,
        key: &str,
        value: &str,
        ttl: Option<Duration>,
    ) -> Result<(), StoreError>;

    /// The value of the record `key`, or `None` when there is none or it expired.
    async fn get_record(&self, key: &str) -> Result<Option<String>, StoreError>;

    /// Every live record whose key starts with `prefix` (taken literally: no pattern), as
    /// `(key, value)`, sorted by key. Expired records are never returned; `""` lists them all.
    async fn records(&self, prefix: &str) -> Result<Vec<(String, String)>, StoreError>;

    /// Removes the record `key`; removing a record that does not exist is not an error.
    async fn delete_record(&self, key: &str) -> Result<(), StoreError>;

    /// Takes the lease `name` for `holder`, or renews it when `holder` already has it, for `ttl`
    /// from now. Returns `true` when `holder` holds the lease after the call, `false` when another
    /// holder has a lease that has not expired (a refusal, not an error; nothing changes).
    ///
    /// At any moment a lease has at most one holder among every instance that shares the store:
    /// the check and the write are one atomic step, so two instances that ask at once never both
    /// get `true` for the same period. A holder that stops renewing loses the lease `ttl` after
    /// its last successful call; the expiry is measured by the store's clock (the Redis server's
    /// for Redis; this process's monotonic clock for the embedded store, whose lease lives in
    /// memory and is held only within this process). A holder must renew well within `ttl` and
    /// stop acting as the holder when a renewal fails or is refused.
    async fn acquire_lease(
        &self,
        name: &str,
        holder: &str,
        ttl: Duration,
    ) -> Result<bool, StoreError>;

    /// Gives up the lease `name` if `holder` holds it (at shutdown), so that another holder can
    /// take it at once instead of after its expiry. Does nothing when the lease is free, expired,
    /// or held by someone else.
    async fn release_lease(&self, name: &str, holder: &str) -> Result<(), StoreError>;

    /// Lets go of what only one process may hold, so that a new graygate process can take it
    /// over during an upgrade: the embedded store closes its file (redb lets one process have it
    /// open). Lookups go on from memory; writes fail with [`StoreError::Unavailable`] until
    /// [`Store::take_back`]. Shared stores (Redis) hold nothing of the kind.
    async fn hand_over(&self) -> Result<(), StoreError> {
        Ok(())
    }

    /// Takes back what [`Store::hand_over`] let go of, when the upgrade failed and this process
    /// goes on serving.
    async fn take_back(&self) -> Result<(), StoreError> {
        Ok(())
    }

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

    /// Checks that this store can hold `key` in `list` as it would write it, beyond the checks
    /// every store shares ([`limits::check_key`]): a memcached list whose keys are escaped as the
    /// original's client escapes them ([`KeyEscape::Uri`]) can make a key too long. The admin API
    /// and `graygate import` ask before writing, so that the refusal names the key's field or
    /// line. The default: every key is fine.
    fn check_key(&self, list: &str, key: &str) -> Result<(), limits::EntryError> {
        let _ = (list, key);
        Ok(())
    }

    /// How many lookups this store answered as absent without asking its server because the key,
    /// as it would be written, is one the server cannot hold (memcached: longer than 250 bytes, or
    /// a space or control character in an unescaped key); `None`: the store never does that.
    fn unusable_keys(&self) -> Option<u64> {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::error::Error as _;

    fn refused() -> std::io::Error {
        std::io::Error::new(
            std::io::ErrorKind::ConnectionRefused,
            "Connection refused (os error 111)",
        )
    }

    #[test]
    fn the_cause_is_the_source_not_the_message() {
        let e = StoreError::unavailable("redis", "lookup on redis://127.0.0.1:6379")
            .with_source(refused());
        assert_eq!(
            e.to_string(),
            "store redis unavailable: lookup on redis://127.0.0.1:6379"
        );
        let source = e.source().expect("the cause is the source");
        assert_eq!(source.to_string(), "Connection refused (os error 111)");
        assert_eq!(
            e.cause::<std::io::Error>().map(std::io::Error::kind),
            Some(std::io::ErrorKind::ConnectionRefused)
        );
        assert!(e.cause::<std::fmt::Error>().is_none());
        // The chain shows the OS error once.
        assert_eq!(
            e.chain().to_string(),
            "store redis unavailable: lookup on redis://127.0.0.1:6379: Connection refused (os error 111)"
        );
        // A clone shares the cause.
        let copy = e.clone();
        assert!(copy.cause::<std::io::Error>().is_some());

        for e in [
            StoreError::bad_data("embedded", "meta/policy", "reading the policy")
                .with_source(refused()),
            StoreError::open("/var/lib/graygate", "cannot create the data directory")
                .with_source(refused()),
        ] {
            assert!(e.source().is_some(), "{e:?}");
            assert!(!e.to_string().contains("os error"), "{e}");
        }
        assert!(StoreError::unavailable("memcached", "down")
            .source()
            .is_none());
    }

    #[test]
    fn messages_name_the_store_and_what_failed() {
        assert_eq!(
            StoreError::bad_data("redis", "graygate:policy", "the hash has no revision field")
                .to_string(),
            "store redis: bad data under graygate:policy: the hash has no revision field"
        );
        assert_eq!(
            StoreError::open("/data", "cannot create the data directory").to_string(),
            "cannot open store at /data: cannot create the data directory"
        );
    }

    #[test]
    fn retention_keeps_the_newest_within_both_bounds_and_always_one() {
        let r = HistoryRetention {
            keep: 3,
            max_bytes: 100,
        };
        assert_eq!(r.kept([]), 0);
        assert_eq!(r.kept([10, 10, 10, 10, 10]), 3);
        assert_eq!(r.kept([50, 50, 1]), 2);
        assert_eq!(r.kept([40, 60]), 2);
        assert_eq!(r.kept([40, 61]), 1);
        // The newest alone over the byte bound is kept.
        assert_eq!(r.kept([500, 1]), 1);
        assert_eq!(r.kept([u64::MAX, u64::MAX]), 1);
        let one = HistoryRetention {
            keep: 1,
            max_bytes: u64::MAX,
        };
        assert_eq!(one.kept([1, 1]), 1);
    }

    #[test]
    fn a_lost_race_is_a_conflict_not_an_outage() {
        let lost = StoreError::Conflict {
            expected: 4,
            actual: 5,
        };
        assert!(lost.is_lost_race());
        assert_eq!(
            lost.to_string(),
            "policy revision conflict: expected 4, store has 5"
        );
        // A conflict has no cause to add.
        let still = lost.with_source(refused());
        assert!(still.source().is_none());
        assert!(still.is_lost_race());
        assert!(!StoreError::unavailable("redis", "down").is_lost_race());
    }

    #[test]
    fn a_chain_skips_causes_its_text_already_shows() {
        /// An error that prints its source and returns it, as redis' errors do.
        #[derive(Debug, thiserror::Error)]
        #[error("{0}")]
        struct Echo(#[source] std::io::Error);

        let e = StoreError::unavailable("redis", "PING").with_source(Echo(refused()));
        assert_eq!(
            ErrorChain(&e).to_string(),
            "store redis unavailable: PING: Connection refused (os error 111)"
        );
    }
}
