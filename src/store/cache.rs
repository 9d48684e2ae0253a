//! The lookup cache: a [`Store`] decorator that answers repeated per-identity lookups from memory.
//!
//! A shared store (Redis, memcached) costs a network round trip per lookup; a request must not pay
//! it for a key that was just looked up. [`CachedStore`] wraps any store and:
//!
//! - keeps up to [`CacheConfig::max_entries`] answers and at most [`CacheConfig::max_bytes`]
//!   bytes of them (key, value and [`ENTRY_OVERHEAD`] each), values and *absences* alike (a token
//!   that maps to nobody is asked about as often as one that does), each fresh for
//!   [`CacheConfig::ttl`] (absences: [`CacheConfig::negative_ttl`]); the byte bound is what keeps
//!   large identities (a 16 KB token header each) from growing the cache to gigabytes;
//! - answers a key longer than [`CacheConfig::max_key_bytes`] as absent without asking the store
//!   or caching it: an over-long identity is no identity;
//! - answers a fresh entry synchronously from [`Store::lookup_local`], so the request path does
//!   not even enter an `async` lookup for a hit;
//! - fetches a missing key once, however many requests ask for it at the same time (one fetch in
//!   flight per key: no stampede on the store when a popular key expires);
//! - bounds the *wait* for a fetch by [`CacheConfig::lookup_timeout`]; past it the caller gets an
//!   error and the request is decided as if the store were down. The fetch itself goes on until
//!   the store answers or gives up by its own timeout, so that the store sees its own timeouts
//!   and turns degraded (see "A store that hangs");
//! - keeps at most [`CacheConfig::max_in_flight`] fetches in flight; a lookup that would start one
//!   more is answered at once, as if the store were down, without reaching the store;
//! - serves the *last known* value of a key while the store fails (down, hanging), for up to
//!   [`STALE_FACTOR`] times the TTL, so that an outage does not flip decisions it has answers for;
//! - drops entries as soon as the wrapped store reports a change ([`Change::Key`] for one key,
//!   [`Change::List`] for a list, [`Change::Reset`] for everything), and passes every change on to
//!   its own subscribers, after the entries are gone.
//!
//! # Staleness
//! A value can be older than the store's by at most the TTL when the store sends no change
//! notifications (memcached), and by the notification delay when it does (Redis: a few ms).
//!
//! # While the store fails
//! After a fetch fails, the cache stops waiting for the store: a lookup answers at once from the
//! last known value (or fails, when there is none) and refreshes the key in the background. The
//! first successful fetch ends that state. So an outage costs each request at most one lookup
//! timeout, once, instead of one per request.
//!
//! # A store that hangs
//! A store that accepts connections and never answers (a memcached or Redis under SIGSTOP) must
//! show as degraded, and must not collect a socket per request. Both follow from letting the fetch
//! run to the store's own timeout (memcached 100 ms, Redis 250 ms): had the cache cancelled it at
//! the lookup timeout (50 ms), the store would never see a timeout of its own, never turn
//! degraded, and open a new connection for every lookup. Once degraded, the store fails lookups at
//! once without a connection and probes the server in the background, and recovers by itself. The
//! in-flight bound caps what the store can hold open in the meantime. A store without timeouts of
//! its own is covered by [`FETCH_LIMIT`]: a fetch that takes longer marks the cache itself
//! degraded (logged once) until a fetch succeeds again.

use super::{
    Change, Entry, HealthTracker, HistoryRecord, HistoryRetention, Store, StoreError, StoreHealth,
    StoredPolicy,
};
use async_trait::async_trait;
use std::cell::RefCell;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::{broadcast, watch, OwnedSemaphorePermit, Semaphore};

/// How many times the TTL a value is kept after it stops being fresh, to be served only while the
/// store fails.
pub const STALE_FACTOR: u32 = 10;

/// How many changes a subscriber of the cache may fall behind before it lags.
const CHANGE_CAPACITY: usize = 1024;

/// Bytes an entry costs beyond its key and value, counted toward [`CacheConfig::max_bytes`]: the
/// entry itself (the key's `String`, the value's `Arc`, the fetch time) and the cache's own
/// bookkeeping for it (moka's hash table slot, its access and write order nodes, its timestamps).
/// Measured: 100,000 entries with 40-byte cache keys and no value grew a release build's RSS by
/// 42.6 MB, about 426 bytes each, so about 380 beyond the key.
pub const ENTRY_OVERHEAD: u64 = 384;

/// Longest a fetch may run when the store has no timeout of its own that ends it sooner; past it
/// the fetch is abandoned and the cache reports the store degraded. Longer than the shared stores'
/// own bounds (memcached: connect 200 ms + answer 100 ms; Redis: 250 ms), so that they report
/// first, with their own reason.
pub const FETCH_LIMIT: Duration = Duration::from_millis(500);

/// Sizes and times of a [`CachedStore`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CacheConfig {
    /// Most entries kept (values and absences together); the least useful are evicted first.
    pub max_entries: usize,
    /// Most bytes kept, keys and values and [`ENTRY_OVERHEAD`] per entry: with large identities
    /// the entry bound alone would allow gigabytes. Evicts as `max_entries` does.
    pub max_bytes: u64,
    /// Longest lookup key asked for; a longer one is answered absent (as a request without the
    /// identity would be) without reaching the store or the cache, so that nobody can fill either
    /// with megabyte keys.
    pub max_key_bytes: usize,
    /// Most fetches from the store at once. A store that hangs holds each fetch until its own
    /// timeout; this bound keeps it from collecting a connection per request meanwhile.
    pub max_in_flight: usize,
    /// How long a value is used without asking the store again. Also the staleness bound when the
    /// store sends no change notifications.
    pub ttl: Duration,
    /// How long an absence is used without asking the store again.
    pub negative_ttl: Duration,
    /// How long a lookup waits for the store before the request is decided as if the store were
    /// down. Keep it below the gateway's own lookup timeout.
    pub lookup_timeout: Duration,
}

impl Default for CacheConfig {
    fn default() -> Self {
        CacheConfig {
            max_entries: 100_000,
            max_bytes: 64 * 1024 * 1024,
            max_key_bytes: super::limits::MAX_KEY_LEN,
            max_in_flight: 64,
            ttl: Duration::from_secs(1),
            negative_ttl: Duration::from_secs(1),
            lookup_timeout: Duration::from_millis(50),
        }
    }
}

/// Counters since the cache was created, for metrics.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CacheStats {
    /// Lookups answered from a fresh entry.
    pub hits: u64,
    /// Lookups that needed the store (no entry, or not fresh).
    pub misses: u64,
    /// Lookups answered from an expired entry because the store failed.
    pub stale_served: u64,
    /// Lookups that failed: the store failed and no earlier value was known.
    pub errors: u64,
    /// Fetches sent to the store (one per key however many lookups waited for it).
    pub fetches: u64,
    /// Entries held right now (evictions due are applied before counting).
    pub entries: u64,
    /// Bytes held right now, as counted toward [`CacheConfig::max_bytes`].
    pub bytes: u64,
    /// Lookups answered at once as if the store were down because
    /// [`CacheConfig::max_in_flight`] fetches were already running.
    pub shed: u64,
    /// Lookups whose key was longer than [`CacheConfig::max_key_bytes`], answered absent.
    pub keys_too_long: u64,
}

/// A [`Store`] with a lookup cache in front. See the module documentation.
pub struct CachedStore {
    shared: Arc<Shared>,
    /// Follows the wrapped store's changes; stopped when the cache is dropped.
    follower: tokio::task::JoinHandle<()>,
}

/// A cached answer: the value (`None`: absent) and when it was fetched.
#[derive(Clone)]
struct Cached {
    value: Option<Arc<str>>,
    fetched: Instant,
}

/// What a fetch ended with: the answer, or the store's error (handed as it is to every lookup
/// that waited for the fetch).
type Outcome = Result<Option<Arc<str>>, StoreError>;

/// One fetch in flight; every lookup of the key while it runs waits for this one.
struct Flight {
    done: watch::Sender<Option<Outcome>>,
    /// Set when the key changed while the fetch ran: its answer may predate the change, so it is
    /// handed to the waiting lookups but not cached.
    invalidated: AtomicBool,
}

struct Shared {
    inner: Arc<dyn Store>,
    config: CacheConfig,
    /// Cache key (see [`cache_key`]) -> answer. Entries live `STALE_FACTOR` x TTL; freshness is
    /// checked on read.
    values: moka::sync::Cache<String, Cached>,
    /// Fetches in flight by cache key. Also the lock that orders "a fetch stores its answer"
    /// against "a change drops entries", so that an answer fetched before a change is never
    /// cached after it.
    flights: Mutex<HashMap<String, Arc<Flight>>>,
    changes: broadcast::Sender<Change>,
    /// True from a failed fetch until the next successful one: lookups stop waiting for the store.
    failing: AtomicBool,
    /// One permit per fetch in flight ([`CacheConfig::max_in_flight`]); a fetch holds its permit
    /// until the store answers or gives up.
    in_flight: Arc<Semaphore>,
    /// Bytes of the entries held, as weighed toward [`CacheConfig::max_bytes`]: added on insert,
    /// taken off by the cache's removal listener, whatever removed the entry.
    bytes: Arc<AtomicU64>,
    /// Degraded when a fetch ran past [`FETCH_LIMIT`] (a store without a timeout of its own that
    /// hangs); recovered by the next successful fetch.
    health: HealthTracker,
    hits: AtomicU64,
    misses: AtomicU64,
    stale_served: AtomicU64,
    errors: AtomicU64,
    fetches: AtomicU64,
    shed: AtomicU64,
    keys_too_long: AtomicU64,
    /// Tells this cache's entries in each thread's [`front`] from another cache's.
    id: u64,
    /// Moved on by every change that drops entries ([`Shared::apply`]), after they are gone:
    /// a thread's front copy made before it is not used again.
    generation: AtomicU64,
}

/// Makes each cache's [`Shared::id`].
static NEXT_ID: AtomicU64 = AtomicU64::new(0);

thread_local! {
    /// Reused to build cache keys on the request path, so that a hit allocates nothing.
    static KEY_BUF: RefCell<String> = RefCell::new(String::with_capacity(128));
}

/// Each thread's copies of the entries it read last, in front of the shared cache: a read of
/// `moka`'s cache (its concurrent map, its read log and frequency sketch) was about 900 of the
/// roughly 34,000 instructions of a proxied request, paid by every request for its identity (two
/// for the Redis layout's); a hit here is a slot, a key comparison and the usual freshness check.
///
/// A copy is the entry as the cache held it, with its fetch time, so it is fresh exactly as long
/// as the entry: never longer than the TTL after the store answered. It is used only while the
/// cache's generation is the one read before the entry was copied ([`Shared::generation`]):
/// every change that drops entries moves it on after they are gone, so no copy outlives a
/// change the cache has seen. An entry the cache evicted for room may still be answered from
/// here until its TTL ends, as it would have been had it not been evicted.
mod front {
    use std::cell::RefCell;
    use std::hash::BuildHasher;

    use super::Cached;
    use crate::policy::FastState;

    /// Slots per thread (direct-mapped by the key's hash).
    const SLOTS: usize = 64;
    /// Longer cache keys are not copied: a slot keeps its key's bytes.
    const MAX_KEY: usize = 256;

    struct Slot {
        cache: u64,
        generation: u64,
        key: String,
        cached: Cached,
    }

    /// One thread's slots. Keys come from requests, so a client can make two of its keys share
    /// a slot: that costs it a read of the shared cache, nothing more.
    struct Front {
        hasher: FastState,
        slots: Vec<Option<Slot>>,
    }

    impl Front {
        fn slot_of(&self, key: &str) -> usize {
            (self.hasher.hash_one(key) as usize) % SLOTS
        }
    }

    thread_local! {
        static FRONT: RefCell<Front> = RefCell::new(Front {
            hasher: FastState::default(),
            slots: Vec::new(),
        });
    }

    /// This thread's copy of `key`'s entry in cache `cache` at `generation`, if it has one.
    pub(super) fn get(cache: u64, generation: u64, key: &str) -> Option<Cached> {
        FRONT.with(|front| {
            let front = front.borrow();
            let slot = front.slots.get(front.slot_of(key))?.as_ref()?;
            (slot.cache == cache && slot.generation == generation && slot.key == key)
                .then(|| slot.cached.clone())
        })
    }

    /// Copies `cached`, read from cache `cache` at `generation`, into this thread's slots.
    pub(super) fn put(cache: u64, generation: u64, key: &str, cached: &Cached) {
        if key.len() > MAX_KEY {
            return;
        }
        FRONT.with(|front| {
            let mut front = front.borrow_mut();
            if front.slots.is_empty() {
                front.slots.resize_with(SLOTS, || None);
            }
            let at = front.slot_of(key);
            match &mut front.slots[at] {
                // The slot's key buffer is reused: a put allocates only the first time.
                Some(slot) => {
                    slot.cache = cache;
                    slot.generation = generation;
                    slot.key.clear();
                    slot.key.push_str(key);
                    slot.cached = cached.clone();
                }
                empty => {
                    *empty = Some(Slot {
                        cache,
                        generation,
                        key: key.to_owned(),
                        cached: cached.clone(),
                    })
                }
            }
        });
    }
}

/// The cache key of `key` in `list`: `"<len(list)>:<list><key>"`. The length makes the split
/// unambiguous whatever characters the list and key hold, and makes every key of a list start
/// with [`list_prefix`].
fn cache_key(out: &mut String, list: &str, key: &str) {
    out.clear();
    // `itoa`, not `write!`: the formatting machinery was about 1% of a request's instructions.
    out.push_str(itoa::Buffer::new().format(list.len()));
    out.push(':');
    out.push_str(list);
    out.push_str(key);
}

fn list_prefix(list: &str) -> String {
    format!("{}:{list}", list.len())
}

/// What an entry counts toward [`CacheConfig::max_bytes`]: its cache key, its value, and
/// [`ENTRY_OVERHEAD`].
fn entry_bytes(key: &str, cached: &Cached) -> u64 {
    let value = cached.value.as_ref().map_or(0, |v| v.len());
    key.len() as u64 + value as u64 + ENTRY_OVERHEAD
}

impl CachedStore {
    /// Wraps `inner`. Must be called inside a Tokio runtime: a task follows `inner`'s changes
    /// until the cache is dropped.
    pub fn new(inner: Arc<dyn Store>, config: CacheConfig) -> CachedStore {
        let keep = config.ttl.max(config.negative_ttl) * STALE_FACTOR;
        // moka bounds one weight. Each entry weighs its bytes, but at least an equal share of the
        // byte bound per allowed entry: the sum of weights within `max_bytes` then keeps both the
        // bytes within `max_bytes` and the entries within `max_entries`.
        let max_bytes = config.max_bytes.max(1);
        let share = max_bytes.div_ceil(config.max_entries.max(1) as u64);
        let bytes = Arc::new(AtomicU64::new(0));
        let removed = Arc::clone(&bytes);
        let values = moka::sync::Cache::builder()
            .max_capacity(max_bytes)
            .weigher(move |k: &String, v: &Cached| {
                let weight = entry_bytes(k, v).max(share);
                u32::try_from(weight).unwrap_or(u32::MAX)
            })
            .eviction_listener(move |k: Arc<String>, v: Cached, _cause| {
                removed.fetch_sub(entry_bytes(&k, &v), Ordering::Relaxed);
            })
            .time_to_live(keep.max(Duration::from_millis(1)))
            .support_invalidation_closures()
            .build();
        let (changes, _) = broadcast::channel(CHANGE_CAPACITY);
        let mut source = inner.subscribe();
        let inner_kind = inner.kind();
        let shared = Arc::new(Shared {
            inner,
            config,
            values,
            flights: Mutex::new(HashMap::new()),
            changes,
            failing: AtomicBool::new(false),
            in_flight: Arc::new(Semaphore::new(config.max_in_flight.max(1))),
            bytes,
            health: HealthTracker::new(inner_kind),
            hits: AtomicU64::new(0),
            misses: AtomicU64::new(0),
            stale_served: AtomicU64::new(0),
            errors: AtomicU64::new(0),
            fetches: AtomicU64::new(0),
            shed: AtomicU64::new(0),
            keys_too_long: AtomicU64::new(0),
            id: NEXT_ID.fetch_add(1, Ordering::Relaxed),
            generation: AtomicU64::new(0),
        });
        let follower = {
            let shared = Arc::clone(&shared);
            tokio::spawn(async move {
                loop {
                    let change = match source.recv().await {
                        Ok(change) => change,
                        // Changes were missed: any entry may be stale.
                        Err(broadcast::error::RecvError::Lagged(_)) => Change::Reset,
                        Err(broadcast::error::RecvError::Closed) => return,
                    };
                    shared.apply(&change);
                    let _ = shared.changes.send(change);
                }
            })
        };
        CachedStore { shared, follower }
    }

    /// The wrapped store.
    pub fn inner(&self) -> &Arc<dyn Store> {
        &self.shared.inner
    }

    pub fn config(&self) -> &CacheConfig {
        &self.shared.config
    }

    /// The counters now. Applies pending evictions first, so that `entries` and `bytes` are what
    /// the bounds leave (called once per metrics scrape, off the request path).
    pub fn stats(&self) -> CacheStats {
        let s = &self.shared;
        s.values.run_pending_tasks();
        CacheStats {
            hits: s.hits.load(Ordering::Relaxed),
            misses: s.misses.load(Ordering::Relaxed),
            stale_served: s.stale_served.load(Ordering::Relaxed),
            errors: s.errors.load(Ordering::Relaxed),
            fetches: s.fetches.load(Ordering::Relaxed),
            entries: s.values.entry_count(),
            bytes: s.bytes.load(Ordering::Relaxed),
            shed: s.shed.load(Ordering::Relaxed),
            keys_too_long: s.keys_too_long.load(Ordering::Relaxed),
        }
    }

    /// Drops every entry, as a [`Change::Reset`] would.
    pub fn clear(&self) {
        self.shared.apply(&Change::Reset);
    }

    /// Applies pending evictions now, so that [`CacheStats::entries`] is exact. For tests.
    pub fn run_pending_tasks(&self) {
        self.shared.values.run_pending_tasks();
    }
}

impl std::fmt::Debug for CachedStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CachedStore")
            .field("inner", &self.shared.inner.kind())
            .field("config", &self.shared.config)
            .finish_non_exhaustive()
    }
}

impl Drop for CachedStore {
    fn drop(&mut self) {
        self.follower.abort();
    }
}

impl Shared {
    /// Drops the entries `change` makes stale, and marks fetches in flight for them so that their
    /// answers are not cached.
    fn apply(&self, change: &Change) {
        let flights = self.lock_flights();
        match change {
            Change::Policy { .. } => {}
            Change::Key { list, key } => {
                let mut k = String::with_capacity(list.len() + key.len() + 4);
                cache_key(&mut k, list, key);
                if let Some(flight) = flights.get(&k) {
                    flight.invalidated.store(true, Ordering::Release);
                }
                self.values.invalidate(&k);
            }
            Change::List { list } => {
                let prefix = list_prefix(list);
                for (k, flight) in flights.iter() {
                    if k.starts_with(&prefix) {
                        flight.invalidated.store(true, Ordering::Release);
                    }
                }
                let result = self
                    .values
                    .invalidate_entries_if(move |k, _| k.starts_with(&prefix));
                if result.is_err() {
                    // Cannot happen (invalidation closures are enabled at build); never keep
                    // stale entries if it does.
                    self.values.invalidate_all();
                }
            }
            Change::Reset => {
                for flight in flights.values() {
                    flight.invalidated.store(true, Ordering::Release);
                }
                self.values.invalidate_all();
            }
        }
        // After the entries are gone: a lookup that reads this generation reads the cache
        // without them.
        self.generation.fetch_add(1, Ordering::Release);
    }

    fn is_fresh(&self, cached: &Cached) -> bool {
        let ttl = if cached.value.is_some() {
            self.config.ttl
        } else {
            self.config.negative_ttl
        };
        cached.fetched.elapsed() < ttl
    }

    /// Joins the fetch in flight for `k`, or starts one; `None` when [`CacheConfig::max_in_flight`]
    /// fetches already run (counted as shed).
    fn flight(
        self: &Arc<Self>,
        k: &str,
        list: &str,
        key: &str,
    ) -> Option<watch::Receiver<Option<Outcome>>> {
        let mut flights = self.lock_flights();
        if let Some(flight) = flights.get(k) {
            return Some(flight.done.subscribe());
        }
        let Ok(permit) = Arc::clone(&self.in_flight).try_acquire_owned() else {
            self.shed.fetch_add(1, Ordering::Relaxed);
            return None;
        };
        let (done, rx) = watch::channel(None);
        let flight = Arc::new(Flight {
            done,
            invalidated: AtomicBool::new(false),
        });
        flights.insert(k.to_owned(), Arc::clone(&flight));
        drop(flights);
        self.fetches.fetch_add(1, Ordering::Relaxed);

        // The fetch runs on its own task: a caller that gives up (its request was cancelled, or it
        // stopped waiting) does not cancel it for the others, and its answer still fills the
        // cache. It is not cut at the lookup timeout either: the store's own timeout ends it, so
        // that the store sees a hang as one and turns degraded (see the module documentation).
        let shared = Arc::clone(self);
        let (k, list, key) = (k.to_owned(), list.to_owned(), key.to_owned());
        tokio::spawn(async move {
            let outcome = shared.fetch(&list, &key, permit).await;
            {
                let mut flights = shared.lock_flights();
                if let Ok(value) = &outcome {
                    shared.failing.store(false, Ordering::Relaxed);
                    if !flight.invalidated.load(Ordering::Acquire) {
                        let cached = Cached {
                            value: value.clone(),
                            fetched: Instant::now(),
                        };
                        // Counted before the insert: the removal listener may take it off at once
                        // (an entry heavier than the whole bound is not admitted).
                        shared
                            .bytes
                            .fetch_add(entry_bytes(&k, &cached), Ordering::Relaxed);
                        shared.values.insert(k.clone(), cached);
                    }
                } else {
                    shared.failing.store(true, Ordering::Relaxed);
                }
                if flights.get(&k).is_some_and(|f| Arc::ptr_eq(f, &flight)) {
                    flights.remove(&k);
                }
            }
            let _ = flight.done.send(Some(outcome));
        });
        Some(rx)
    }

    /// Asks the wrapped store, holding `permit` until it answers or gives up, and at most
    /// [`FETCH_LIMIT`] (or the lookup timeout, if longer): past it the cache reports the store
    /// degraded until a fetch succeeds again.
    async fn fetch(&self, list: &str, key: &str, permit: OwnedSemaphorePermit) -> Outcome {
        let limit = FETCH_LIMIT.max(self.config.lookup_timeout);
        let outcome = match tokio::time::timeout(limit, self.inner.lookup(list, key)).await {
            Ok(outcome) => outcome,
            Err(_) => {
                let detail = format!("a lookup got no answer within {limit:?}");
                self.health.mark_degraded(&detail);
                Err(self.unavailable(detail))
            }
        };
        drop(permit);
        // The atomic first: a healthy store costs no lock per fetch.
        if outcome.is_ok() && self.health.is_degraded() {
            self.health.mark_recovered();
        }
        outcome
    }

    /// The answer to give when the store failed with `error`: the last known value if there is
    /// one, else the error.
    /// The last known value when there is one, else the error, built only then: a store that
    /// is down serves its cached values without making an error per lookup.
    fn fallback(
        &self,
        stale: Option<Cached>,
        error: impl FnOnce() -> StoreError,
    ) -> Result<Option<Arc<str>>, StoreError> {
        match stale {
            Some(stale) => {
                self.stale_served.fetch_add(1, Ordering::Relaxed);
                Ok(stale.value)
            }
            None => {
                self.errors.fetch_add(1, Ordering::Relaxed);
                Err(error())
            }
        }
    }

    /// Whether `key` is longer than [`CacheConfig::max_key_bytes`]; counts it if so.
    fn too_long(&self, key: &str) -> bool {
        let too_long = key.len() > self.config.max_key_bytes;
        if too_long {
            self.keys_too_long.fetch_add(1, Ordering::Relaxed);
        }
        too_long
    }

    /// A failure of the wrapped store that is not an error of the store's own.
    fn unavailable(&self, detail: impl Into<String>) -> StoreError {
        StoreError::unavailable(self.inner.kind(), detail)
    }

    fn lock_flights(&self) -> std::sync::MutexGuard<'_, HashMap<String, Arc<Flight>>> {
        // Every critical section leaves the map consistent: a panic cannot leave it half-updated.
        self.flights.lock().unwrap_or_else(|e| e.into_inner())
    }
}

#[async_trait]
impl Store for CachedStore {
    fn cache_stats(&self) -> Option<CacheStats> {
        Some(self.stats())
    }

    fn kind(&self) -> &'static str {
        self.shared.inner.kind()
    }

    async fn load_policy(&self) -> Result<Option<StoredPolicy>, StoreError> {
        self.shared.inner.load_policy().await
    }

    async fn save_policy(&self, json: &str, expected: Option<u64>) -> Result<u64, StoreError> {
        self.shared.inner.save_policy(json, expected).await
    }

    async fn save_policy_recorded(
        &self,
        json: &str,
        expected: u64,
        record: &str,
        retention: HistoryRetention,
    ) -> Result<u64, StoreError> {
        self.shared
            .inner
            .save_policy_recorded(json, expected, record, retention)
            .await
    }

    async fn restore_policy(
        &self,
        json: &str,
        revision: u64,
        record: &str,
        retention: HistoryRetention,
    ) -> Result<super::Restore, StoreError> {
        self.shared
            .inner
            .restore_policy(json, revision, record, retention)
            .await
    }

    async fn load_history(
        &self,
        before: Option<u64>,
        limit: usize,
    ) -> Result<Vec<HistoryRecord>, StoreError> {
        self.shared.inner.load_history(before, limit).await
    }

    /// The wrapped store's local answer if it has one, else a fresh cache entry, else `None`.
    /// Allocates nothing.
    fn lookup_local(&self, list: &str, key: &str) -> Option<Option<Arc<str>>> {
        let shared = &self.shared;
        if shared.too_long(key) {
            return Some(None);
        }
        if let Some(answer) = shared.inner.lookup_local(list, key) {
            return Some(answer);
        }
        // A fresh entry: this thread's copy, else the cache's (then copied here).
        let fresh = KEY_BUF.with(|buf| {
            let mut buf = buf.borrow_mut();
            cache_key(&mut buf, list, key);
            // Read before the cache: a change after this read moves it on.
            let generation = shared.generation.load(Ordering::Acquire);
            if let Some(copy) = front::get(shared.id, generation, &buf) {
                if shared.is_fresh(&copy) {
                    return Some(copy);
                }
                // An old copy: the cache may hold the entry fetched since.
            }
            let cached = shared.values.get(buf.as_str())?;
            if !shared.is_fresh(&cached) {
                return None;
            }
            front::put(shared.id, generation, &buf, &cached);
            Some(cached)
        })?;
        shared.hits.fetch_add(1, Ordering::Relaxed);
        Some(fresh.value)
    }

    /// A fresh entry, else the store's answer (one fetch per key in flight, bounded by the lookup
    /// timeout), else the last known value while the store fails, else an error.
    async fn lookup(&self, list: &str, key: &str) -> Result<Option<Arc<str>>, StoreError> {
        let shared = &self.shared;
        if shared.too_long(key) {
            return Ok(None);
        }
        if let Some(answer) = shared.inner.lookup_local(list, key) {
            return Ok(answer);
        }
        let mut k = String::with_capacity(list.len() + key.len() + 4);
        cache_key(&mut k, list, key);
        let stale = match shared.values.get(&k) {
            Some(cached) if shared.is_fresh(&cached) => {
                shared.hits.fetch_add(1, Ordering::Relaxed);
                return Ok(cached.value);
            }
            other => other,
        };
        shared.misses.fetch_add(1, Ordering::Relaxed);
        let Some(mut rx) = shared.flight(&k, list, key) else {
            let most = shared.config.max_in_flight;
            return shared.fallback(stale, || {
                shared.unavailable(format!(
                    "{most} lookups already in flight (cache.max_in_flight); answered without asking"
                ))
            });
        };

        if shared.failing.load(Ordering::Relaxed) {
            // The store failed a moment ago: answer now; the fetch just started refreshes the key
            // in the background and ends this state if it succeeds.
            return shared.fallback(stale, || {
                shared.unavailable("the store is failing; retrying in the background")
            });
        }

        // With a last known value to fall back on, wait only half the timeout so that the answer
        // reaches a caller that bounds the whole lookup by the same timeout.
        let wait = if stale.is_some() {
            shared.config.lookup_timeout / 2
        } else {
            shared.config.lookup_timeout
        };
        let waited = tokio::time::timeout(wait, rx.wait_for(Option::is_some))
            .await
            .map(|done| done.map(|outcome| outcome.clone()));
        match waited {
            Ok(Ok(Some(Ok(value)))) => Ok(value),
            Ok(Ok(Some(Err(error)))) => shared.fallback(stale, || error),
            // The fetch task cannot drop its sender without sending; treat it as a failure anyway.
            Ok(Ok(None)) | Ok(Err(_)) => {
                shared.fallback(stale, || shared.unavailable("the lookup was abandoned"))
            }
            Err(_) => {
                // The store is hanging: stop waiting for it until a fetch succeeds again.
                shared.failing.store(true, Ordering::Relaxed);
                shared.fallback(stale, || {
                    shared.unavailable(format!("did not answer within {wait:?}"))
                })
            }
        }
    }

    /// Writes through to the wrapped store, then drops the list's entries here at once, so that a
    /// lookup on this instance sees the write without waiting for the change notification.
    async fn put_entries(&self, list: &str, entries: &[Entry]) -> Result<(), StoreError> {
        let result = self.shared.inner.put_entries(list, entries).await;
        self.shared.apply(&Change::List {
            list: list.to_owned(),
        });
        result
    }

    async fn remove_entries(&self, list: &str, keys: &[String]) -> Result<usize, StoreError> {
        let result = self.shared.inner.remove_entries(list, keys).await;
        self.shared.apply(&Change::List {
            list: list.to_owned(),
        });
        result
    }

    async fn list_entries(&self, list: &str) -> Result<Vec<Entry>, StoreError> {
        self.shared.inner.list_entries(list).await
    }

    /// Passed through: records are not cached.
    async fn put_record(
        &self,
        key: &str,
        value: &str,
        ttl: Option<Duration>,
    ) -> Result<(), StoreError> {
        self.shared.inner.put_record(key, value, ttl).await
    }

    /// Passed through: records are not cached.
    async fn get_record(&self, key: &str) -> Result<Option<String>, StoreError> {
        self.shared.inner.get_record(key).await
    }

    /// Passed through: records are not cached.
    async fn records(&self, prefix: &str) -> Result<Vec<(String, String)>, StoreError> {
        self.shared.inner.records(prefix).await
    }

    /// Passed through: records are not cached.
    async fn delete_record(&self, key: &str) -> Result<(), StoreError> {
        self.shared.inner.delete_record(key).await
    }

    /// Passed through.
    async fn acquire_lease(
        &self,
        name: &str,
        holder: &str,
        ttl: Duration,
    ) -> Result<bool, StoreError> {
        self.shared.inner.acquire_lease(name, holder, ttl).await
    }

    /// Passed through.
    async fn release_lease(&self, name: &str, holder: &str) -> Result<(), StoreError> {
        self.shared.inner.release_lease(name, holder).await
    }

    async fn hand_over(&self) -> Result<(), StoreError> {
        self.shared.inner.hand_over().await
    }

    async fn take_back(&self) -> Result<(), StoreError> {
        self.shared.inner.take_back().await
    }

    fn subscribe(&self) -> broadcast::Receiver<Change> {
        self.shared.changes.subscribe()
    }

    /// The wrapped store's health, or the cache's own when only the cache saw the store hang
    /// (a fetch past [`FETCH_LIMIT`]).
    fn health(&self) -> StoreHealth {
        let inner = self.shared.inner.health();
        if inner.degraded {
            return inner;
        }
        let own = self.shared.health.snapshot();
        if own.degraded {
            own
        } else {
            inner
        }
    }

    fn check_key(&self, list: &str, key: &str) -> Result<(), super::limits::EntryError> {
        self.shared.inner.check_key(list, key)
    }

    fn unusable_keys(&self) -> Option<u64> {
        self.shared.inner.unusable_keys()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;

    /// A store for the cache to front: values in a map, counts fetches, can be made slow or
    /// failing, and never answers locally.
    #[derive(Default)]
    struct FakeStore {
        values: Mutex<HashMap<(String, String), String>>,
        fetches: AtomicUsize,
        delay_ms: AtomicU64,
        failing: AtomicBool,
        changes: Option<broadcast::Sender<Change>>,
        /// History records, oldest first.
        history: Mutex<Vec<String>>,
        /// Records (their TTL is not kept: the fake only shows what reaches it).
        records: Mutex<std::collections::BTreeMap<String, String>>,
        /// Lease name -> holder (never expires).
        leases: Mutex<HashMap<String, String>>,
    }

    impl FakeStore {
        fn new() -> Arc<FakeStore> {
            let (tx, _) = broadcast::channel(64);
            Arc::new(FakeStore {
                changes: Some(tx),
                ..FakeStore::default()
            })
        }

        fn set(&self, list: &str, key: &str, value: &str) {
            self.values
                .lock()
                .unwrap()
                .insert((list.into(), key.into()), value.into());
        }

        fn del(&self, list: &str, key: &str) {
            self.values
                .lock()
                .unwrap()
                .remove(&(list.to_owned(), key.to_owned()));
        }

        fn fetches(&self) -> usize {
            self.fetches.load(Ordering::SeqCst)
        }

        fn notify(&self, change: Change) {
            self.changes.as_ref().unwrap().send(change).unwrap();
        }
    }

    #[async_trait]
    impl Store for FakeStore {
        fn kind(&self) -> &'static str {
            "fake"
        }
        async fn load_policy(&self) -> Result<Option<StoredPolicy>, StoreError> {
            Ok(None)
        }
        async fn save_policy(&self, _: &str, _: Option<u64>) -> Result<u64, StoreError> {
            Ok(1)
        }
        async fn save_policy_recorded(
            &self,
            _: &str,
            expected: u64,
            record: &str,
            _: HistoryRetention,
        ) -> Result<u64, StoreError> {
            self.history.lock().unwrap().push(record.to_owned());
            Ok(expected + 1)
        }
        async fn restore_policy(
            &self,
            _: &str,
            _: u64,
            _: &str,
            _: HistoryRetention,
        ) -> Result<crate::store::Restore, StoreError> {
            Ok(crate::store::Restore::NotBehind { actual: 0 })
        }
        async fn load_history(
            &self,
            before: Option<u64>,
            limit: usize,
        ) -> Result<Vec<HistoryRecord>, StoreError> {
            let history = self.history.lock().unwrap();
            Ok(history
                .iter()
                .enumerate()
                .rev()
                .map(|(i, json)| HistoryRecord {
                    revision: i as u64 + 1,
                    json: json.clone(),
                })
                .filter(|r| before.is_none_or(|b| r.revision < b))
                .take(limit)
                .collect())
        }
        async fn lookup(&self, list: &str, key: &str) -> Result<Option<Arc<str>>, StoreError> {
            self.fetches.fetch_add(1, Ordering::SeqCst);
            let delay = self.delay_ms.load(Ordering::SeqCst);
            if delay > 0 {
                tokio::time::sleep(Duration::from_millis(delay)).await;
            }
            if self.failing.load(Ordering::SeqCst) {
                let refused = std::io::Error::from(std::io::ErrorKind::ConnectionRefused);
                return Err(StoreError::unavailable("fake", "down").with_source(refused));
            }
            let values = self.values.lock().unwrap();
            Ok(values
                .get(&(list.to_owned(), key.to_owned()))
                .map(|v| Arc::from(v.as_str())))
        }
        async fn put_entries(&self, list: &str, entries: &[Entry]) -> Result<(), StoreError> {
            for e in entries {
                self.set(list, &e.key, &e.value);
            }
            Ok(())
        }
        async fn remove_entries(&self, list: &str, keys: &[String]) -> Result<usize, StoreError> {
            for k in keys {
                self.del(list, k);
            }
            Ok(keys.len())
        }
        async fn list_entries(&self, _: &str) -> Result<Vec<Entry>, StoreError> {
            Ok(Vec::new())
        }
        async fn put_record(
            &self,
            k: &str,
            v: &str,
            _: Option<Duration>,
        ) -> Result<(), StoreError> {
            self.records.lock().unwrap().insert(k.into(), v.into());
            Ok(())
        }
        async fn get_record(&self, key: &str) -> Result<Option<String>, StoreError> {
            Ok(self.records.lock().unwrap().get(key).cloned())
        }
        async fn records(&self, prefix: &str) -> Result<Vec<(String, String)>, StoreError> {
            let records = self.records.lock().unwrap();
            let with_prefix = records.iter().filter(|(k, _)| k.starts_with(prefix));
            Ok(with_prefix.map(|(k, v)| (k.clone(), v.clone())).collect())
        }
        async fn delete_record(&self, key: &str) -> Result<(), StoreError> {
            self.records.lock().unwrap().remove(key);
            Ok(())
        }
        async fn acquire_lease(&self, n: &str, h: &str, _: Duration) -> Result<bool, StoreError> {
            let mut leases = self.leases.lock().unwrap();
            Ok(leases.entry(n.into()).or_insert_with(|| h.into()) == h)
        }
        async fn release_lease(&self, name: &str, holder: &str) -> Result<(), StoreError> {
            let mut leases = self.leases.lock().unwrap();
            if leases.get(name).is_some_and(|h| h == holder) {
                leases.remove(name);
            }
            Ok(())
        }
        fn subscribe(&self) -> broadcast::Receiver<Change> {
            self.changes.as_ref().unwrap().subscribe()
        }
    }

    fn config(ttl_ms: u64) -> CacheConfig {
        CacheConfig {
            max_entries: 1000,
            ttl: Duration::from_millis(ttl_ms),
            negative_ttl: Duration::from_millis(ttl_ms),
            lookup_timeout: Duration::from_millis(50),
            ..CacheConfig::default()
        }
    }

    fn cached(fake: &Arc<FakeStore>, config: CacheConfig) -> CachedStore {
        CachedStore::new(Arc::clone(fake) as Arc<dyn Store>, config)
    }

    fn v(s: &str) -> Option<Arc<str>> {
        Some(Arc::from(s))
    }

    /// Polls `cond` every 5 ms until it holds, failing the test after 2 s.
    async fn eventually(what: &str, mut cond: impl FnMut() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(2);
        while !cond() {
            assert!(Instant::now() < deadline, "timed out waiting for: {what}");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    #[tokio::test]
    async fn hit_miss_and_negative_entries() {
        let fake = FakeStore::new();
        fake.set("tokens", "abc", "user-1");
        let cache = cached(&fake, config(60_000));

        assert_eq!(cache.lookup_local("tokens", "abc"), None, "cold");
        assert_eq!(cache.lookup("tokens", "abc").await.unwrap(), v("user-1"));
        assert_eq!(cache.lookup_local("tokens", "abc"), Some(v("user-1")));
        assert_eq!(cache.lookup("tokens", "abc").await.unwrap(), v("user-1"));
        assert_eq!(fake.fetches(), 1);

        // Absent keys are cached too.
        assert_eq!(cache.lookup("tokens", "nobody").await.unwrap(), None);
        assert_eq!(cache.lookup_local("tokens", "nobody"), Some(None));
        assert_eq!(cache.lookup("tokens", "nobody").await.unwrap(), None);
        assert_eq!(fake.fetches(), 2);

        // Same key in another list is another entry.
        assert_eq!(cache.lookup_local("ips", "abc"), None);

        let stats = cache.stats();
        assert_eq!(
            (stats.hits, stats.misses, stats.fetches),
            (4, 2, 2),
            "{stats:?}"
        );
        assert_eq!((stats.errors, stats.stale_served), (0, 0));
    }

    #[tokio::test]
    async fn history_passes_through() {
        let fake = FakeStore::new();
        let cache = cached(&fake, config(60_000));
        let keep = HistoryRetention::default();
        let texts = |records: Vec<HistoryRecord>| -> Vec<String> {
            records.into_iter().map(|r| r.json).collect()
        };
        let saved = cache.save_policy_recorded("p1", 0, "r1", keep).await;
        assert_eq!(saved.unwrap(), 1);
        let saved = cache.save_policy_recorded("p2", 1, "r2", keep).await;
        assert_eq!(saved.unwrap(), 2);
        assert_eq!(
            texts(cache.load_history(None, 10).await.unwrap()),
            ["r2", "r1"]
        );
        assert_eq!(texts(cache.load_history(None, 1).await.unwrap()), ["r2"]);
        assert_eq!(texts(cache.load_history(Some(2), 5).await.unwrap()), ["r1"]);
    }

    #[tokio::test]
    async fn the_store_error_reaches_the_caller_with_its_cause() {
        let fake = FakeStore::new();
        fake.failing.store(true, Ordering::SeqCst);
        let cache = cached(&fake, config(60_000));
        let err = cache.lookup("l", "k").await.unwrap_err();
        // The store's own error, not one wrapped in another "unavailable".
        assert_eq!(err.to_string(), "store fake unavailable: down");
        assert_eq!(
            err.cause::<std::io::Error>().map(std::io::Error::kind),
            Some(std::io::ErrorKind::ConnectionRefused)
        );
        assert_eq!(cache.stats().errors, 1);
    }

    #[test]
    fn cache_keys_do_not_collide_across_lists() {
        let (mut a, mut b) = (String::new(), String::new());
        cache_key(&mut a, "ab", "c");
        cache_key(&mut b, "a", "bc");
        assert_ne!(a, b);
        assert!(a.starts_with(&list_prefix("ab")));
        assert!(!b.starts_with(&list_prefix("ab")));
    }

    #[tokio::test]
    async fn entries_expire_after_their_ttl() {
        let fake = FakeStore::new();
        fake.set("l", "k", "1");
        let mut cfg = config(100);
        cfg.negative_ttl = Duration::from_millis(60_000);
        let cache = cached(&fake, cfg);

        assert_eq!(cache.lookup("l", "k").await.unwrap(), v("1"));
        assert_eq!(cache.lookup("l", "gone").await.unwrap(), None);
        fake.set("l", "k", "2");
        fake.set("l", "gone", "back");
        eventually("the value expires", || {
            cache.lookup_local("l", "k").is_none()
        })
        .await;
        assert_eq!(cache.lookup("l", "k").await.unwrap(), v("2"));
        assert_eq!(fake.fetches(), 3);
        // The negative TTL is separate: still absent.
        assert_eq!(cache.lookup_local("l", "gone"), Some(None));
    }

    #[tokio::test]
    async fn one_fetch_for_many_concurrent_lookups() {
        let fake = FakeStore::new();
        fake.set("l", "hot", "v");
        fake.delay_ms.store(20, Ordering::SeqCst);
        let cache = Arc::new(cached(&fake, config(60_000)));

        let lookups: Vec<_> = (0..50)
            .map(|_| {
                let cache = Arc::clone(&cache);
                tokio::spawn(async move { cache.lookup("l", "hot").await })
            })
            .collect();
        for lookup in lookups {
            assert_eq!(lookup.await.unwrap().unwrap(), v("v"));
        }
        assert_eq!(fake.fetches(), 1);
        assert_eq!(cache.stats().fetches, 1);
    }

    #[tokio::test]
    async fn a_slow_store_times_out_as_an_error() {
        let fake = FakeStore::new();
        fake.set("l", "k", "v");
        fake.delay_ms.store(1_000, Ordering::SeqCst);
        let cache = cached(&fake, config(60_000));

        let started = Instant::now();
        let err = cache.lookup("l", "k").await.unwrap_err();
        let took = started.elapsed();
        assert!(took < Duration::from_millis(300), "{took:?}");
        assert!(
            matches!(err, StoreError::Unavailable { store: "fake", .. }),
            "{err:?}"
        );
        assert!(err.to_string().contains("did not answer within"), "{err}");
        assert_eq!(cache.stats().errors, 1);

        // Now failing: the next lookup does not wait at all.
        let started = Instant::now();
        assert!(cache.lookup("l", "other").await.is_err());
        assert!(
            started.elapsed() < Duration::from_millis(20),
            "{:?}",
            started.elapsed()
        );

        // The store answers again: the background refresh ends the failing state.
        fake.delay_ms.store(0, Ordering::SeqCst);
        let deadline = Instant::now() + Duration::from_secs(2);
        loop {
            if let Ok(value) = cache.lookup("l", "k").await {
                assert_eq!(value, v("v"));
                break;
            }
            assert!(Instant::now() < deadline, "never recovered");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    #[tokio::test]
    async fn the_last_known_value_is_served_while_the_store_fails() {
        let fake = FakeStore::new();
        fake.set("l", "k", "known");
        let cache = cached(&fake, config(50));
        assert_eq!(cache.lookup("l", "k").await.unwrap(), v("known"));
        assert_eq!(cache.lookup("l", "absent").await.unwrap(), None);
        eventually("the entries go stale", || {
            cache.lookup_local("l", "k").is_none() && cache.lookup_local("l", "absent").is_none()
        })
        .await;

        fake.failing.store(true, Ordering::SeqCst);
        assert_eq!(cache.lookup("l", "k").await.unwrap(), v("known"));
        assert_eq!(cache.lookup("l", "absent").await.unwrap(), None);
        assert!(cache.lookup("l", "never-seen").await.is_err());
        // A hanging store: the stale value comes within half the lookup timeout.
        fake.failing.store(false, Ordering::SeqCst);
        fake.delay_ms.store(1_000, Ordering::SeqCst);
        cache.shared.failing.store(false, Ordering::SeqCst);
        let started = Instant::now();
        assert_eq!(cache.lookup("l", "k").await.unwrap(), v("known"));
        assert!(
            started.elapsed() < Duration::from_millis(45),
            "{:?}",
            started.elapsed()
        );

        let stats = cache.stats();
        assert_eq!(stats.stale_served, 3, "{stats:?}");
        assert_eq!(stats.errors, 1, "{stats:?}");
        // Never served as fresh.
        assert_eq!(cache.lookup_local("l", "k"), None);
    }

    #[tokio::test]
    async fn changes_drop_entries_and_are_passed_on() {
        let fake = FakeStore::new();
        for key in ["a", "b"] {
            fake.set("l1", key, "1");
            fake.set("l2", key, "1");
        }
        let cache = cached(&fake, config(60_000));
        let mut changes = cache.subscribe();
        let warm = || async {
            for (l, k) in [("l1", "a"), ("l1", "b"), ("l2", "a"), ("l2", "b")] {
                cache.lookup(l, k).await.unwrap();
            }
        };
        let known = |l: &str, k: &str| cache.lookup_local(l, k).is_some();

        warm().await;
        fake.notify(Change::Key {
            list: "l1".into(),
            key: "a".into(),
        });
        assert_eq!(
            changes.recv().await.unwrap(),
            Change::Key {
                list: "l1".into(),
                key: "a".into()
            }
        );
        assert!(!known("l1", "a"));
        assert!(known("l1", "b") && known("l2", "a"));

        warm().await;
        fake.notify(Change::List { list: "l1".into() });
        assert_eq!(
            changes.recv().await.unwrap(),
            Change::List { list: "l1".into() }
        );
        assert!(!known("l1", "a") && !known("l1", "b"));
        assert!(known("l2", "a") && known("l2", "b"));

        warm().await;
        fake.notify(Change::Reset);
        assert_eq!(changes.recv().await.unwrap(), Change::Reset);
        for (l, k) in [("l1", "a"), ("l1", "b"), ("l2", "a"), ("l2", "b")] {
            assert!(!known(l, k), "{l}/{k}");
        }

        fake.notify(Change::Policy { revision: 7 });
        assert_eq!(
            changes.recv().await.unwrap(),
            Change::Policy { revision: 7 }
        );
    }

    #[tokio::test]
    async fn a_thread_s_copy_of_an_entry_goes_with_a_change_and_with_its_ttl() {
        let fake = FakeStore::new();
        fake.set("l", "k", "1");
        let cache = cached(&fake, config(200));
        let mut changes = cache.subscribe();
        assert_eq!(cache.lookup("l", "k").await.unwrap(), v("1"));
        // Read from the cache, then from this thread's copy of it.
        assert_eq!(cache.lookup_local("l", "k"), Some(v("1")));
        assert_eq!(cache.lookup_local("l", "k"), Some(v("1")));
        // Another cache does not answer from this one's copies.
        let other = cached(&FakeStore::new(), config(60_000));
        assert_eq!(other.lookup_local("l", "k"), None);

        // A change drops the copy with the entry.
        fake.set("l", "k", "2");
        fake.notify(Change::Key {
            list: "l".into(),
            key: "k".into(),
        });
        changes.recv().await.unwrap();
        assert_eq!(cache.lookup_local("l", "k"), None);
        assert_eq!(cache.lookup("l", "k").await.unwrap(), v("2"));
        assert_eq!(cache.lookup_local("l", "k"), Some(v("2")));
        assert_eq!(cache.lookup_local("l", "k"), Some(v("2")));

        // The copy is fresh only as long as the entry was: not after the TTL; the entry
        // fetched again replaces it.
        tokio::time::sleep(Duration::from_millis(250)).await;
        assert_eq!(cache.lookup_local("l", "k"), None);
        fake.set("l", "k", "3");
        assert_eq!(cache.lookup("l", "k").await.unwrap(), v("3"));
        assert_eq!(cache.lookup_local("l", "k"), Some(v("3")));
        assert_eq!(cache.lookup_local("l", "k"), Some(v("3")));
    }

    #[tokio::test]
    async fn a_fetch_that_races_a_change_is_not_cached() {
        let fake = FakeStore::new();
        fake.set("l", "k", "old");
        fake.delay_ms.store(30, Ordering::SeqCst);
        let cache = Arc::new(cached(&fake, config(60_000)));
        let mut changes = cache.subscribe();

        let lookup = {
            let cache = Arc::clone(&cache);
            tokio::spawn(async move { cache.lookup("l", "k").await })
        };
        eventually("the fetch starts", || fake.fetches() == 1).await;
        fake.notify(Change::Key {
            list: "l".into(),
            key: "k".into(),
        });
        changes.recv().await.unwrap();
        // The lookup that was already waiting gets the answer it asked for ...
        assert_eq!(lookup.await.unwrap().unwrap(), v("old"));
        // ... but it is not cached: it may predate the change.
        assert_eq!(cache.lookup_local("l", "k"), None);
    }

    #[tokio::test]
    async fn writes_through_the_cache_are_seen_at_once() {
        let fake = FakeStore::new();
        let cache = cached(&fake, config(60_000));
        assert_eq!(cache.lookup("l", "k").await.unwrap(), None);
        cache
            .put_entries("l", &[Entry::new("k", "v", None)])
            .await
            .unwrap();
        assert_eq!(cache.lookup_local("l", "k"), None);
        assert_eq!(cache.lookup("l", "k").await.unwrap(), v("v"));
        cache.remove_entries("l", &["k".into()]).await.unwrap();
        assert_eq!(cache.lookup("l", "k").await.unwrap(), None);
    }

    #[tokio::test]
    async fn the_number_of_entries_is_bounded() {
        let fake = FakeStore::new();
        let mut cfg = config(60_000);
        cfg.max_entries = 100;
        let cache = cached(&fake, cfg);
        for i in 0..1_000 {
            cache.lookup("l", &format!("k{i}")).await.unwrap();
        }
        cache.run_pending_tasks();
        let entries = cache.stats().entries;
        assert!(entries <= 100, "{entries} entries");
        assert!(entries > 0);
    }

    /// The byte count the cache reports, against the slow, obvious sum over what it holds.
    fn bytes_held(cache: &CachedStore) -> (u64, u64) {
        cache.run_pending_tasks();
        let summed = cache
            .shared
            .values
            .iter()
            .map(|(k, v)| entry_bytes(&k, &v))
            .sum();
        (cache.stats().bytes, summed)
    }

    #[tokio::test]
    async fn large_values_are_bounded_in_bytes_not_only_in_entries() {
        let fake = FakeStore::new();
        let big = "v".repeat(16 * 1024);
        for i in 0..200 {
            fake.set("l", &format!("k{i}"), &big);
        }
        let mut cfg = config(60_000);
        cfg.max_entries = 100_000;
        cfg.max_bytes = 256 * 1024;
        let cache = cached(&fake, cfg);
        for i in 0..200 {
            let value = cache.lookup("l", &format!("k{i}")).await.unwrap();
            assert_eq!(value.map(|v| v.len()), Some(big.len()));
        }
        let (reported, summed) = bytes_held(&cache);
        assert_eq!(reported, summed, "the reported size is what is held");
        assert!(summed <= cfg.max_bytes, "{summed} bytes held");
        let entries = cache.stats().entries;
        assert!((1..=16).contains(&entries), "{entries} entries of 16 KiB");

        // Dropped entries leave the count too, whatever dropped them.
        fake.notify(Change::Reset);
        eventually("the reset empties the cache", || {
            bytes_held(&cache) == (0, 0)
        })
        .await;
    }

    #[tokio::test]
    async fn an_entry_heavier_than_the_whole_bound_is_not_kept_nor_counted() {
        let fake = FakeStore::new();
        fake.set("l", "huge", &"v".repeat(8 * 1024));
        fake.set("l", "small", "v");
        let mut cfg = config(60_000);
        cfg.max_bytes = 4 * 1024;
        let cache = cached(&fake, cfg);
        assert!(cache.lookup("l", "huge").await.unwrap().is_some());
        assert!(cache.lookup("l", "small").await.unwrap().is_some());
        let (reported, summed) = bytes_held(&cache);
        assert_eq!(reported, summed);
        assert!(summed <= cfg.max_bytes, "{summed}");
        assert_eq!(cache.lookup_local("l", "small"), Some(v("v")));
    }

    #[tokio::test]
    async fn the_entry_bound_still_holds_with_the_byte_bound() {
        let fake = FakeStore::new();
        let mut cfg = config(60_000);
        cfg.max_entries = 50;
        cfg.max_bytes = 64 * 1024 * 1024;
        let cache = cached(&fake, cfg);
        for i in 0..500 {
            cache.lookup("l", &format!("k{i}")).await.unwrap();
        }
        cache.run_pending_tasks();
        let entries = cache.stats().entries;
        assert!((1..=50).contains(&entries), "{entries} entries");
    }

    #[tokio::test]
    async fn an_over_long_key_is_no_identity_never_asked_nor_cached() {
        let fake = FakeStore::new();
        let long = "t".repeat(251);
        fake.set("l", &long, "user-1");
        let at_cap = "t".repeat(250);
        fake.set("l", &at_cap, "user-2");
        let cache = cached(&fake, config(60_000));
        assert_eq!(cache.config().max_key_bytes, 250);

        assert_eq!(cache.lookup_local("l", &long), Some(None));
        assert_eq!(cache.lookup("l", &long).await.unwrap(), None);
        assert_eq!(fake.fetches(), 0, "the store is not asked");
        cache.run_pending_tasks();
        let stats = cache.stats();
        assert_eq!((stats.entries, stats.bytes), (0, 0), "nothing cached");
        assert_eq!(stats.keys_too_long, 2);

        // At the bound it is an identity like any other.
        assert_eq!(cache.lookup("l", &at_cap).await.unwrap(), v("user-2"));
        assert_eq!(fake.fetches(), 1);
        assert_eq!(cache.stats().keys_too_long, 2);
    }

    #[tokio::test]
    async fn fetches_in_flight_are_bounded_and_the_excess_answered_at_once() {
        let fake = FakeStore::new();
        fake.delay_ms.store(300, Ordering::SeqCst);
        let mut cfg = config(60_000);
        cfg.max_in_flight = 4;
        let cache = Arc::new(cached(&fake, cfg));
        let started = Instant::now();
        let lookups: Vec<_> = (0..20)
            .map(|i| {
                let cache = Arc::clone(&cache);
                tokio::spawn(async move { cache.lookup("l", &format!("k{i}")).await })
            })
            .collect();
        for lookup in lookups {
            assert!(lookup.await.unwrap().is_err());
        }
        // Nobody waited for the store longer than the lookup timeout.
        assert!(
            started.elapsed() < Duration::from_millis(250),
            "{:?}",
            started.elapsed()
        );
        assert_eq!(
            fake.fetches(),
            4,
            "only max_in_flight fetches reach the store"
        );
        let stats = cache.stats();
        assert_eq!((stats.fetches, stats.shed), (4, 16), "{stats:?}");
        let err = {
            let cache = Arc::clone(&cache);
            cache.lookup("l", "one-more").await.unwrap_err()
        };
        assert_eq!(
            err.to_string(),
            "store fake unavailable: 4 lookups already in flight (cache.max_in_flight); answered without asking"
        );

        // The fetches end (the store answers late); their permits come back.
        fake.delay_ms.store(0, Ordering::SeqCst);
        let deadline = Instant::now() + Duration::from_secs(2);
        while cache.lookup("l", "k0").await.is_err() {
            assert!(Instant::now() < deadline, "permits never came back");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    #[tokio::test]
    async fn a_fetch_outlives_the_lookup_timeout_so_the_store_sees_its_own_timeout() {
        let fake = FakeStore::new();
        fake.set("l", "k", "late");
        // Slower than the lookup timeout, faster than the fetch limit: the store's own timeout
        // (memcached 100 ms, Redis 250 ms) lives in this gap.
        fake.delay_ms.store(150, Ordering::SeqCst);
        let cache = cached(&fake, config(60_000));
        assert!(
            cache.lookup("l", "k").await.is_err(),
            "the caller stops waiting"
        );
        // ... but the fetch was not cancelled: its answer fills the cache.
        eventually("the late answer is cached", || {
            cache.lookup_local("l", "k") == Some(v("late"))
        })
        .await;
        assert!(!cache.health().degraded);
    }

    #[tokio::test]
    async fn a_store_that_hangs_without_a_timeout_of_its_own_shows_degraded_and_recovers() {
        let fake = FakeStore::new();
        fake.set("l", "k", "v");
        fake.delay_ms.store(5_000, Ordering::SeqCst);
        let cache = cached(&fake, config(60_000));
        let started = Instant::now();
        assert!(cache.lookup("l", "k").await.is_err());
        eventually("the hang is reported", || cache.health().degraded).await;
        let took = started.elapsed();
        assert!(took < Duration::from_secs(1), "degraded after {took:?}");
        let health = cache.health();
        assert_eq!(
            health.last_error.as_deref(),
            Some("a lookup got no answer within 500ms"),
            "{health:?}"
        );

        fake.delay_ms.store(0, Ordering::SeqCst);
        let deadline = Instant::now() + Duration::from_secs(2);
        while cache.lookup("l", "k").await.is_err() {
            assert!(Instant::now() < deadline, "never recovered");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert!(!cache.health().degraded);
    }

    #[tokio::test]
    async fn records_and_leases_pass_through_uncached() {
        let fake = FakeStore::new();
        let cache = cached(&fake, config(60_000));
        cache.put_record("a/1", "one", None).await.unwrap();
        cache.put_record("b/1", "other", None).await.unwrap();
        assert_eq!(
            cache.get_record("a/1").await.unwrap().as_deref(),
            Some("one")
        );
        // A write that did not go through the cache is seen at once: nothing is cached.
        fake.put_record("a/1", "changed", None).await.unwrap();
        fake.put_record("a/2", "two", None).await.unwrap();
        assert_eq!(
            cache.get_record("a/1").await.unwrap().as_deref(),
            Some("changed")
        );
        assert_eq!(
            cache.records("a/").await.unwrap(),
            [
                ("a/1".into(), "changed".into()),
                ("a/2".into(), "two".into())
            ]
        );
        cache.delete_record("a/1").await.unwrap();
        assert_eq!(fake.get_record("a/1").await.unwrap(), None);

        let ttl = Duration::from_secs(10);
        assert!(cache.acquire_lease("l", "me", ttl).await.unwrap());
        assert!(!fake.acquire_lease("l", "you", ttl).await.unwrap());
        cache.release_lease("l", "me").await.unwrap();
        assert!(fake.acquire_lease("l", "you", ttl).await.unwrap());
        assert_eq!(cache.stats(), CacheStats::default());
    }

    #[tokio::test]
    async fn local_answers_of_the_inner_store_win() {
        let dir = tempfile::tempdir().unwrap();
        let embedded = Arc::new(crate::store::EmbeddedStore::open(dir.path()).unwrap());
        embedded
            .put_entries("l", &[Entry::new("k", "v", None)])
            .await
            .unwrap();
        let cache = CachedStore::new(embedded, config(60_000));
        assert_eq!(cache.lookup_local("l", "k"), Some(v("v")));
        assert_eq!(cache.lookup_local("l", "x"), Some(None));
        assert_eq!(cache.lookup("l", "k").await.unwrap(), v("v"));
        assert_eq!(cache.stats(), CacheStats::default());
    }
}
