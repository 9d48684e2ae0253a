//! The memcached store: identity lookups (key -> value) from memcached, the policy from another
//! store.
//!
//! memcached holds plain keys and values, as the OpenResty setup it replaces did (`get 10.0.0.7`,
//! `get TOKEN_abc`); it has no documents with revisions and no notifications. So the policy, its
//! revisions and its change notifications come from another store given to
//! [`MemcachedStore::connect`] (the embedded store, seeded from the config), and list lookups go to
//! memcached. Records and leases live in that other store too: they go with the policy they
//! serve (memcached could evict them, and has no atomic check of a lease's holder).
//!
//! # Staleness
//! memcached cannot tell anyone that a key changed: a value written by another client is seen when
//! the lookup cache's entry expires, so **the staleness bound is the cache TTL**
//! ([`crate::store::CacheConfig::ttl`], 1 s by default). Writes made through this store announce a
//! [`Change::List`] to this instance only.
//!
//! # Keys and servers
//! A lookup of `key` in `list` is `get <prefix><key>` with the list's prefix from
//! [`MemcachedConfig::lists`] (default `""`). A list set to [`KeyEscape::Uri`] in
//! [`MemcachedConfig::key_escape`] escapes the whole key, prefix included, as the original's
//! lua-resty-memcached client does (`memc:get("TOKEN_" .. token)` escapes `TOKEN_<token>`):
//! `2001:db8::1` is `get 2001%3Adb8%3A%3A1`, for reads and writes alike. A key memcached would
//! reject (longer than 250 bytes once escaped, or with a space or a control character) is absent
//! without a round trip, and counted ([`Store::unusable_keys`]); a write of one is refused. With several servers a
//! key goes to server `xxh3(key) % n`; writers outside graygate must place keys the same way, so a
//! single server (or a proxy such as mcrouter in front of several) is the simple setup.
//!
//! # Connections and outages
//! Each server has a small pool of open connections, reused across requests (at most
//! [`MAX_CONNECTIONS`] per server, [`MAX_IDLE`] kept idle); a connection that fails or times out is
//! closed, never reused. Connecting is bounded by [`CONNECT_TIMEOUT`] and each command by
//! [`RESPONSE_TIMEOUT`]. When a server cannot be reached or does not answer, the store turns
//! degraded (logged once): its keys fail at once with [`StoreError::Unavailable`] while a
//! background task reconnects with exponential backoff (50 ms doubling up to 1 s), then logs the
//! recovery once and sends [`Change::Reset`] so that values cached during the outage are refetched.
//!
//! # Client
//! The protocol is spoken by the `async-memcached` crate (Shopify's, maintained): one connection
//! per client value, and cancelling an operation closes its connection so that a late reply can
//! never be read as the answer to the next command. It has no pool, timeouts or reconnection; this
//! module adds them.

use super::key_escape::KeyEscape;
use super::limits::EntryError;
use super::{
    Change, Entry, ErrorChain, HealthTracker, HistoryRecord, HistoryRetention, Store, StoreError,
    StoreHealth, StoredPolicy,
};
use super::{BACKOFF_MAX, BACKOFF_MIN};
use async_memcached::{AsciiProtocol, Client, Error as McError, Status};
use async_trait::async_trait;
use std::borrow::Cow;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio::sync::{broadcast, Notify, Semaphore};

/// Value of [`StoreError`]'s `store` field for this store.
const STORE: &str = "memcached";

/// How long opening a connection may take.
pub const CONNECT_TIMEOUT: Duration = Duration::from_millis(200);

/// How long a server may take to answer one command.
pub const RESPONSE_TIMEOUT: Duration = Duration::from_millis(100);

/// Most connections open to one server at once; more concurrent lookups wait for one (bounded by
/// the response timeout).
pub const MAX_CONNECTIONS: usize = 32;

/// Most idle connections kept per server.
pub const MAX_IDLE: usize = 16;

/// Longest key memcached accepts.
pub const MAX_KEY_LEN: usize = 250;

/// memcached reads an expiry above 30 days as a Unix time rather than a number of seconds.
const RELATIVE_EXPIRY_LIMIT: u64 = 30 * 24 * 3600;

/// How many changes a subscriber may fall behind before it lags.
const CHANGE_CAPACITY: usize = 256;

/// Where the memcached store connects and how lists map to keys.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MemcachedConfig {
    /// `host:port` of each server.
    pub servers: Vec<String>,
    /// List name -> key prefix in memcached; a list not named here uses keys as they are.
    pub lists: HashMap<String, String>,
    /// List name -> how its keys are written: [`KeyEscape::Uri`] reads and writes the keys the
    /// original's client (which escapes every key) wrote. A list not named here keeps its keys
    /// as they are, as before this setting existed.
    pub key_escape: HashMap<String, KeyEscape>,
}

/// The memcached-backed [`Store`]. See the module documentation.
pub struct MemcachedStore {
    shared: Arc<Shared>,
    /// Forwards the policy store's changes, and reconnects failed servers.
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

struct Shared {
    servers: Vec<Server>,
    lists: HashMap<String, String>,
    /// See [`MemcachedConfig::key_escape`].
    key_escape: HashMap<String, KeyEscape>,
    /// Lookups answered as absent because the key cannot be a memcached key.
    unusable_keys: AtomicU64,
    /// Where the policy lives.
    policy: Arc<dyn Store>,
    changes: broadcast::Sender<Change>,
    health: HealthTracker,
    /// Wakes the reconnect task when a server fails.
    wake: Notify,
}

/// One memcached server and its connection pool.
struct Server {
    addr: String,
    /// `tcp://<addr>`, as the client wants it.
    dsn: String,
    /// Idle connections, most recently used last.
    idle: Mutex<Vec<Client>>,
    /// One permit per open connection.
    permits: Semaphore,
    /// Set when the server failed; its keys fail at once until the reconnect task clears it.
    down: AtomicBool,
}

impl MemcachedStore {
    /// Connects to `config.servers`; the policy and its changes come from `policy_store`.
    ///
    /// Fails with [`StoreError::Open`] when no server is configured or one is not `host:port`.
    /// Servers that cannot be reached (yet) are not an error: the store starts degraded and
    /// connects as soon as they answer.
    pub async fn connect(
        config: MemcachedConfig,
        policy_store: Arc<dyn Store>,
    ) -> Result<MemcachedStore, StoreError> {
        if config.servers.is_empty() {
            return Err(StoreError::open(
                "memcached",
                "no server configured (expected at least one host:port)",
            ));
        }
        for addr in &config.servers {
            let valid = addr
                .rsplit_once(':')
                .is_some_and(|(host, port)| !host.is_empty() && port.parse::<u16>().is_ok());
            if !valid {
                return Err(StoreError::open(
                    addr.clone(),
                    "a memcached server must be given as host:port",
                ));
            }
        }
        let (changes, _) = broadcast::channel(CHANGE_CAPACITY);
        let shared = Arc::new(Shared {
            servers: config
                .servers
                .iter()
                .map(|addr| Server {
                    addr: addr.clone(),
                    dsn: format!("tcp://{addr}"),
                    idle: Mutex::new(Vec::new()),
                    permits: Semaphore::new(MAX_CONNECTIONS),
                    down: AtomicBool::new(false),
                })
                .collect(),
            lists: config.lists,
            key_escape: config.key_escape,
            unusable_keys: AtomicU64::new(0),
            policy: Arc::clone(&policy_store),
            changes,
            health: HealthTracker::new(STORE),
            wake: Notify::new(),
        });

        for server in &shared.servers {
            match server.open().await {
                Ok(client) => server.put_back(client),
                Err(e) => shared.server_failed(server, &e),
            }
        }

        let forward = {
            let shared = Arc::clone(&shared);
            let mut source = policy_store.subscribe();
            tokio::spawn(async move {
                loop {
                    let change = match source.recv().await {
                        Ok(change) => change,
                        Err(broadcast::error::RecvError::Lagged(_)) => Change::Reset,
                        Err(broadcast::error::RecvError::Closed) => return,
                    };
                    let _ = shared.changes.send(change);
                }
            })
        };
        let reconnect = tokio::spawn(Arc::clone(&shared).reconnect());
        Ok(MemcachedStore {
            shared,
            tasks: vec![forward, reconnect],
        })
    }

    /// The memcached key of `key` in `list`.
    pub fn key_of(&self, list: &str, key: &str) -> String {
        self.shared.key_of(list, key)
    }
}

impl std::fmt::Debug for MemcachedStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let servers: Vec<&str> = self
            .shared
            .servers
            .iter()
            .map(|s| s.addr.as_str())
            .collect();
        f.debug_struct("MemcachedStore")
            .field("servers", &servers)
            .finish_non_exhaustive()
    }
}

impl Drop for MemcachedStore {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

/// Whether memcached accepts `key`: at most 250 bytes, no space, no control character.
pub fn valid_key(key: &str) -> bool {
    !key.is_empty() && key.len() <= MAX_KEY_LEN && key.bytes().all(|b| b > b' ' && b != 0x7f)
}

/// The `exptime` of an entry expiring at `at`: whole seconds rounded up, or a Unix time past 30
/// days as memcached wants; `None` when `at` is past.
fn exptime(at: Option<SystemTime>, now: SystemTime) -> Option<i64> {
    let Some(at) = at else { return Some(0) };
    let left = at.duration_since(now).ok().filter(|d| !d.is_zero())?;
    let secs = left.as_secs() + u64::from(left.subsec_nanos() > 0);
    let secs = if secs > RELATIVE_EXPIRY_LIMIT {
        let unix = at.duration_since(UNIX_EPOCH).unwrap_or_default();
        unix.as_secs() + u64::from(unix.subsec_nanos() > 0)
    } else {
        secs
    };
    Some(i64::try_from(secs).unwrap_or(i64::MAX))
}

/// Whether `e` means the connection is unusable or the server unreachable, rather than an answer.
fn is_connection_error(e: &McError) -> bool {
    matches!(
        e,
        McError::Connect(_) | McError::Io(_) | McError::ConnectionClosed
    )
}

/// What went wrong with one server, kept as the cause of the [`StoreError`] and in the store's
/// health.
#[derive(Debug, thiserror::Error)]
enum ServerError {
    #[error("cannot connect to {addr}")]
    Connect {
        addr: String,
        #[source]
        source: McError,
    },
    #[error("cannot connect to {addr} within {CONNECT_TIMEOUT:?}")]
    ConnectTimeout { addr: String },
    #[error("all {MAX_CONNECTIONS} connections to {addr} busy for {RESPONSE_TIMEOUT:?}")]
    Busy { addr: String },
    #[error("{addr} did not answer within {RESPONSE_TIMEOUT:?}")]
    Timeout { addr: String },
    /// The command failed on the connection, or the server answered with an error.
    #[error("command to {addr} failed")]
    Command {
        addr: String,
        #[source]
        source: McError,
    },
}

/// Why a command failed.
enum Failure {
    /// The server cannot be reached or did not answer: it is marked down.
    Connection(ServerError),
    /// The server answered with an error.
    Answer(ServerError),
}

impl Server {
    async fn open(&self) -> Result<Client, ServerError> {
        match tokio::time::timeout(CONNECT_TIMEOUT, Client::new(&self.dsn)).await {
            Ok(Ok(client)) => Ok(client),
            Ok(Err(source)) => Err(ServerError::Connect {
                addr: self.addr.clone(),
                source,
            }),
            Err(_) => Err(ServerError::ConnectTimeout {
                addr: self.addr.clone(),
            }),
        }
    }

    /// A [`ServerError::Command`] of this server.
    fn failed(&self, source: McError) -> ServerError {
        ServerError::Command {
            addr: self.addr.clone(),
            source,
        }
    }

    fn put_back(&self, client: Client) {
        if client.is_closed() {
            return;
        }
        let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
        if idle.len() < MAX_IDLE {
            idle.push(client);
        }
    }

    fn take_idle(&self) -> Option<Client> {
        self.idle.lock().unwrap_or_else(|e| e.into_inner()).pop()
    }

    fn drop_idle(&self) {
        self.idle.lock().unwrap_or_else(|e| e.into_inner()).clear();
    }

    /// Runs `op` on a pooled connection (opening one if none is idle), bounded by the response
    /// timeout. The connection goes back to the pool only if the command completed.
    async fn with_client<T>(
        &self,
        op: impl AsyncFnOnce(&mut Client) -> Result<T, McError>,
    ) -> Result<T, Failure> {
        let permit = tokio::time::timeout(RESPONSE_TIMEOUT, self.permits.acquire())
            .await
            .map_err(|_| {
                Failure::Connection(ServerError::Busy {
                    addr: self.addr.clone(),
                })
            })?
            .expect("the semaphore is never closed");
        let mut client = match self.take_idle() {
            Some(client) => client,
            None => self.open().await.map_err(Failure::Connection)?,
        };
        let result = tokio::time::timeout(RESPONSE_TIMEOUT, op(&mut client)).await;
        drop(permit);
        match result {
            Ok(Ok(value)) => {
                self.put_back(client);
                Ok(value)
            }
            Ok(Err(e)) if is_connection_error(&e) => Err(Failure::Connection(self.failed(e))),
            Ok(Err(e)) => {
                self.put_back(client);
                Err(Failure::Answer(self.failed(e)))
            }
            // Dropping the timed-out operation closed the connection; it is not put back.
            Err(_) => Err(Failure::Connection(ServerError::Timeout {
                addr: self.addr.clone(),
            })),
        }
    }
}

impl Shared {
    fn key_of(&self, list: &str, key: &str) -> String {
        let plain = match self.lists.get(list) {
            Some(prefix) => Cow::Owned(format!("{prefix}{key}")),
            None => Cow::Borrowed(key),
        };
        match self.escape_of(list).apply(&plain) {
            Cow::Borrowed(_) => plain.into_owned(),
            Cow::Owned(escaped) => escaped,
        }
    }

    fn escape_of(&self, list: &str) -> KeyEscape {
        self.key_escape.get(list).copied().unwrap_or_default()
    }

    /// Why `key` cannot be written to `list`, as [`limits::check_key`](super::limits::check_key)
    /// words it; `None`: memcached takes it.
    fn refusal(&self, list: &str, key: &str) -> Option<EntryError> {
        let mkey = self.key_of(list, key);
        if valid_key(&mkey) {
            return None;
        }
        Some(match self.escape_of(list) {
            // Escaped keys have no space or control character left: only the length can fail.
            KeyEscape::Uri if !mkey.is_empty() => EntryError::EscapedKeyTooLong {
                key: key.to_owned(),
                escaped_len: mkey.len(),
                escaped: mkey,
            },
            _ => EntryError::Key(key.to_owned()),
        })
    }

    fn server_for(&self, key: &str) -> &Server {
        let n = self.servers.len();
        let i = if n == 1 {
            0
        } else {
            (xxhash_rust::xxh3::xxh3_64(key.as_bytes()) % n as u64) as usize
        };
        &self.servers[i]
    }

    fn server_failed(&self, server: &Server, error: &ServerError) {
        server.down.store(true, Ordering::Release);
        server.drop_idle();
        self.health.mark_degraded(&ErrorChain(error).to_string());
        self.wake.notify_one();
    }

    /// Runs `op` against the server of `key`: an error at once while that server is down.
    async fn run<T>(
        &self,
        what: &str,
        key: &str,
        op: impl AsyncFnOnce(&mut Client) -> Result<T, McError>,
    ) -> Result<T, StoreError> {
        let server = self.server_for(key);
        if server.down.load(Ordering::Acquire) {
            return Err(StoreError::unavailable(
                STORE,
                format!(
                    "{what}: {} is down; reconnecting in the background",
                    server.addr
                ),
            ));
        }
        match server.with_client(op).await {
            Ok(value) => Ok(value),
            Err(Failure::Connection(e)) => {
                self.server_failed(server, &e);
                Err(StoreError::unavailable(STORE, what).with_source(e))
            }
            Err(Failure::Answer(e)) => Err(StoreError::unavailable(STORE, what).with_source(e)),
        }
    }

    /// Reconnects failed servers with backoff until the store is dropped.
    async fn reconnect(self: Arc<Self>) {
        loop {
            if !self.servers.iter().any(|s| s.down.load(Ordering::Acquire)) {
                self.wake.notified().await;
                continue;
            }
            let mut backoff = BACKOFF_MIN;
            loop {
                let mut all_up = true;
                for server in &self.servers {
                    if !server.down.load(Ordering::Acquire) {
                        continue;
                    }
                    match self.probe(server).await {
                        Ok(client) => {
                            server.put_back(client);
                            server.down.store(false, Ordering::Release);
                        }
                        Err(e) => {
                            self.health.mark_degraded(&ErrorChain(&e).to_string());
                            all_up = false;
                        }
                    }
                }
                if all_up {
                    if self.health.mark_recovered() {
                        // Values cached while the server could not be asked may be stale.
                        let _ = self.changes.send(Change::Reset);
                    }
                    break;
                }
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(BACKOFF_MAX);
            }
        }
    }

    /// Opens a connection and checks that the server answers on it.
    async fn probe(&self, server: &Server) -> Result<Client, ServerError> {
        let mut client = server.open().await?;
        match tokio::time::timeout(RESPONSE_TIMEOUT, client.version()).await {
            Ok(Ok(_)) => Ok(client),
            Ok(Err(e)) => Err(server.failed(e)),
            Err(_) => Err(ServerError::Timeout {
                addr: server.addr.clone(),
            }),
        }
    }
}

#[async_trait]
impl Store for MemcachedStore {
    fn kind(&self) -> &'static str {
        STORE
    }

    /// From the policy store.
    async fn load_policy(&self) -> Result<Option<StoredPolicy>, StoreError> {
        self.shared.policy.load_policy().await
    }

    /// To the policy store.
    async fn save_policy(&self, json: &str, expected: Option<u64>) -> Result<u64, StoreError> {
        self.shared.policy.save_policy(json, expected).await
    }

    /// To the policy store, with its history.
    async fn save_policy_recorded(
        &self,
        json: &str,
        expected: u64,
        record: &str,
        retention: HistoryRetention,
    ) -> Result<u64, StoreError> {
        self.shared
            .policy
            .save_policy_recorded(json, expected, record, retention)
            .await
    }

    /// To the policy store, with its history.
    async fn restore_policy(
        &self,
        json: &str,
        revision: u64,
        record: &str,
        retention: HistoryRetention,
    ) -> Result<super::Restore, StoreError> {
        self.shared
            .policy
            .restore_policy(json, revision, record, retention)
            .await
    }

    /// From the policy store.
    async fn load_history(
        &self,
        before: Option<u64>,
        limit: usize,
    ) -> Result<Vec<HistoryRecord>, StoreError> {
        self.shared.policy.load_history(before, limit).await
    }

    /// To the policy store.
    async fn put_record(
        &self,
        key: &str,
        value: &str,
        ttl: Option<Duration>,
    ) -> Result<(), StoreError> {
        self.shared.policy.put_record(key, value, ttl).await
    }

    /// From the policy store.
    async fn get_record(&self, key: &str) -> Result<Option<String>, StoreError> {
        self.shared.policy.get_record(key).await
    }

    /// From the policy store.
    async fn records(&self, prefix: &str) -> Result<Vec<(String, String)>, StoreError> {
        self.shared.policy.records(prefix).await
    }

    /// To the policy store.
    async fn delete_record(&self, key: &str) -> Result<(), StoreError> {
        self.shared.policy.delete_record(key).await
    }

    /// The policy store's.
    async fn acquire_lease(
        &self,
        name: &str,
        holder: &str,
        ttl: Duration,
    ) -> Result<bool, StoreError> {
        self.shared.policy.acquire_lease(name, holder, ttl).await
    }

    /// The policy store's.
    async fn release_lease(&self, name: &str, holder: &str) -> Result<(), StoreError> {
        self.shared.policy.release_lease(name, holder).await
    }

    async fn hand_over(&self) -> Result<(), StoreError> {
        self.shared.policy.hand_over().await
    }

    async fn take_back(&self) -> Result<(), StoreError> {
        self.shared.policy.take_back().await
    }

    async fn lookup(&self, list: &str, key: &str) -> Result<Option<Arc<str>>, StoreError> {
        let mkey = self.shared.key_of(list, key);
        if !valid_key(&mkey) {
            self.shared.unusable_keys.fetch_add(1, Ordering::Relaxed);
            return Ok(None);
        }
        let value = self
            .shared
            .run("lookup", &mkey, async |client: &mut Client| {
                client.get(mkey.as_bytes()).await
            })
            .await?;
        Ok(value
            .and_then(|v| v.data)
            .map(|data| Arc::from(String::from_utf8_lossy(&data).as_ref())))
    }

    /// `set` for each entry (expiry in whole seconds, rounded up), `delete` for entries already
    /// expired. memcached has no multi-key transactions: entries are written one by one, and a
    /// failure stops at the first entry that failed.
    async fn put_entries(&self, list: &str, entries: &[Entry]) -> Result<(), StoreError> {
        let s = &self.shared;
        if let Some(refused) = entries.iter().find_map(|e| s.refusal(list, &e.key)) {
            return Err(StoreError::bad_data(
                STORE,
                list,
                format!("{refused}; nothing was written"),
            ));
        }
        let keys: Vec<String> = entries.iter().map(|e| s.key_of(list, &e.key)).collect();
        let now = SystemTime::now();
        let mut result = Ok(());
        for (entry, key) in entries.iter().zip(&keys) {
            let written = match exptime(entry.expires_at, now) {
                Some(ttl) => {
                    s.run("writing list entries", key, async |client: &mut Client| {
                        client
                            .set(key.as_bytes(), entry.value.as_bytes(), Some(ttl), None)
                            .await
                    })
                    .await
                }
                None => {
                    s.run(
                        "writing list entries",
                        key,
                        async |client: &mut Client| match client.delete(key.as_bytes()).await {
                            Err(McError::Protocol(Status::NotFound)) => Ok(()),
                            other => other,
                        },
                    )
                    .await
                }
            };
            if let Err(e) = written {
                result = Err(e);
                break;
            }
        }
        let _ = s.changes.send(Change::List {
            list: list.to_owned(),
        });
        result
    }

    /// `delete` for each key; counts the keys that existed.
    async fn remove_entries(&self, list: &str, keys: &[String]) -> Result<usize, StoreError> {
        let s = &self.shared;
        let mut removed = 0;
        let mut result = Ok(());
        for key in keys {
            let mkey = s.key_of(list, key);
            if !valid_key(&mkey) {
                continue;
            }
            let deleted = s
                .run(
                    "removing list entries",
                    &mkey,
                    async |client: &mut Client| match client.delete(mkey.as_bytes()).await {
                        Ok(()) => Ok(true),
                        Err(McError::Protocol(Status::NotFound)) => Ok(false),
                        Err(e) => Err(e),
                    },
                )
                .await;
            match deleted {
                Ok(true) => removed += 1,
                Ok(false) => {}
                Err(e) => {
                    result = Err(e);
                    break;
                }
            }
        }
        let _ = s.changes.send(Change::List {
            list: list.to_owned(),
        });
        result.map(|()| removed)
    }

    /// memcached cannot enumerate keys: always [`StoreError::Unavailable`].
    async fn list_entries(&self, list: &str) -> Result<Vec<Entry>, StoreError> {
        Err(StoreError::unavailable(
            STORE,
            format!(
                "memcached cannot list the keys of list {list}: it only answers lookups of single keys; keep the list's source of truth elsewhere and look keys up one by one"
            ),
        ))
    }

    fn subscribe(&self) -> broadcast::Receiver<Change> {
        self.shared.changes.subscribe()
    }

    fn health(&self) -> StoreHealth {
        self.shared.health.snapshot()
    }

    /// Refuses a key that is not a memcached key once prefixed and escaped.
    fn check_key(&self, list: &str, key: &str) -> Result<(), EntryError> {
        self.shared.refusal(list, key).map_or(Ok(()), Err)
    }

    fn unusable_keys(&self) -> Option<u64> {
        Some(self.shared.unusable_keys.load(Ordering::Relaxed))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_errors_name_the_server_and_keep_the_cause() {
        use std::error::Error as _;
        let refused = || std::io::Error::from(std::io::ErrorKind::ConnectionRefused);
        let addr = "127.0.0.1:11211".to_owned();
        let e = ServerError::Command {
            addr: addr.clone(),
            source: McError::Io(refused()),
        };
        assert_eq!(e.to_string(), "command to 127.0.0.1:11211 failed");
        assert!(e.source().is_some());
        // The client's error prints and returns the I/O error: it shows once.
        assert_eq!(
            ErrorChain(&e).to_string(),
            format!("command to 127.0.0.1:11211 failed: io: {}", refused())
        );
        let e = ServerError::Connect {
            addr: addr.clone(),
            source: McError::Connect(refused()),
        };
        assert_eq!(e.to_string(), "cannot connect to 127.0.0.1:11211");
        assert_eq!(
            ServerError::ConnectTimeout { addr: addr.clone() }.to_string(),
            "cannot connect to 127.0.0.1:11211 within 200ms"
        );
        assert_eq!(
            ServerError::Busy { addr: addr.clone() }.to_string(),
            "all 32 connections to 127.0.0.1:11211 busy for 100ms"
        );
        assert_eq!(
            ServerError::Timeout { addr }.to_string(),
            "127.0.0.1:11211 did not answer within 100ms"
        );
    }

    #[tokio::test]
    async fn the_history_is_kept_with_the_policy_in_the_policy_store() {
        // No memcached needed: the policy and its history never go there.
        let gone = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = gone.local_addr().unwrap().to_string();
        drop(gone);
        let dir = tempfile::tempdir().unwrap();
        let policy: Arc<dyn Store> =
            Arc::new(crate::store::EmbeddedStore::open(dir.path()).unwrap());
        let config = MemcachedConfig {
            servers: vec![addr],
            lists: HashMap::new(),
            key_escape: HashMap::new(),
        };
        let store = MemcachedStore::connect(config, Arc::clone(&policy))
            .await
            .unwrap();
        let keep = HistoryRetention::default();
        let texts = |records: Vec<HistoryRecord>| -> Vec<String> {
            records.into_iter().map(|r| r.json).collect()
        };
        let saved = store.save_policy_recorded("p1", 0, "r1", keep).await;
        assert_eq!(saved.unwrap(), 1);
        let saved = store.save_policy_recorded("p2", 1, "r2", keep).await;
        assert_eq!(saved.unwrap(), 2);
        assert_eq!(
            texts(store.load_history(None, 10).await.unwrap()),
            ["r2", "r1"]
        );
        assert_eq!(texts(policy.load_history(None, 1).await.unwrap()), ["r2"]);
        assert_eq!(
            texts(store.load_history(Some(2), 10).await.unwrap()),
            ["r1"]
        );
        // A lost race records nothing.
        let err = store.save_policy_recorded("p3", 1, "r3", keep).await;
        assert!(err.unwrap_err().is_lost_race());
        assert_eq!(store.load_history(None, 10).await.unwrap().len(), 2);
    }

    #[tokio::test]
    async fn a_failed_command_keeps_the_server_error_as_its_cause() {
        // A "server" that accepts connections and closes them at once.
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let closer = tokio::spawn(async move {
            while let Ok((socket, _)) = listener.accept().await {
                drop(socket);
            }
        });
        let dir = tempfile::tempdir().unwrap();
        let policy: Arc<dyn Store> =
            Arc::new(crate::store::EmbeddedStore::open(dir.path()).unwrap());
        let config = MemcachedConfig {
            servers: vec![addr.clone()],
            lists: HashMap::new(),
            key_escape: HashMap::new(),
        };
        let store = MemcachedStore::connect(config, policy).await.unwrap();
        let err = store.lookup("ips", "10.0.0.1").await.unwrap_err();
        closer.abort();
        assert!(
            matches!(
                err,
                StoreError::Unavailable {
                    store: "memcached",
                    ..
                }
            ),
            "{err:?}"
        );
        assert_eq!(err.to_string(), "store memcached unavailable: lookup");
        let cause = err
            .cause::<ServerError>()
            .expect("the server's error is the cause");
        assert!(
            matches!(cause, ServerError::Command { addr: a, .. } if *a == addr),
            "{cause:?}"
        );
        assert!(err.chain().to_string().contains(&addr), "{}", err.chain());
    }

    #[tokio::test]
    async fn escaped_keys_are_limited_once_escaped_and_counted_without_a_round_trip() {
        // No memcached: every answer here comes before any round trip.
        let gone = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = gone.local_addr().unwrap().to_string();
        drop(gone);
        let dir = tempfile::tempdir().unwrap();
        let policy: Arc<dyn Store> =
            Arc::new(crate::store::EmbeddedStore::open(dir.path()).unwrap());
        let config = MemcachedConfig {
            servers: vec![addr],
            lists: HashMap::from([("tokens".to_owned(), "T:".to_owned())]),
            key_escape: HashMap::from([
                ("gray_ips".to_owned(), KeyEscape::Uri),
                ("tokens".to_owned(), KeyEscape::Uri),
            ]),
        };
        let store = MemcachedStore::connect(config, policy).await.unwrap();
        assert_eq!(store.key_of("gray_ips", "2001:db8::1"), "2001%3Adb8%3A%3A1");
        assert_eq!(store.key_of("gray_ips", "10.0.0.7"), "10.0.0.7");
        // The prefix is escaped with the key, as the original escaped "T:" .. token.
        assert_eq!(store.key_of("tokens", "a b"), "T%3Aa%20b");
        // Other lists keep their keys as they are.
        assert_eq!(store.key_of("plain", "2001:db8::1"), "2001:db8::1");

        // 83 colons are 249 bytes escaped; 84 are 252.
        store.check_key("gray_ips", &":".repeat(83)).unwrap();
        let e = store.check_key("gray_ips", &":".repeat(84)).unwrap_err();
        assert_eq!(
            e.to_string(),
            format!(
                "`{}` is 252 bytes once escaped as the original's memcached client escapes it (`{}`), and a memcached key holds at most 250",
                ":".repeat(84),
                "%3A".repeat(84)
            )
        );
        // A space is fine once escaped; unescaped it is no key.
        store.check_key("gray_ips", "a b").unwrap();
        assert_eq!(
            store.check_key("plain", "a b"),
            Err(EntryError::Key("a b".into()))
        );
        let err = store
            .put_entries("gray_ips", &[Entry::new(":".repeat(84), "1", None)])
            .await
            .unwrap_err();
        assert!(
            err.to_string()
                .ends_with("a memcached key holds at most 250; nothing was written"),
            "{err}"
        );

        assert_eq!(store.unusable_keys(), Some(0));
        let long = ":".repeat(84);
        assert_eq!(store.lookup("gray_ips", &long).await.unwrap(), None);
        assert_eq!(store.lookup("plain", "a b").await.unwrap(), None);
        assert_eq!(store.unusable_keys(), Some(2));
    }

    #[test]
    fn keys_memcached_rejects() {
        assert!(valid_key("10.0.0.7"));
        assert!(valid_key("TOKEN_abc"));
        assert!(valid_key(&"k".repeat(250)));
        assert!(!valid_key(&"k".repeat(251)));
        assert!(!valid_key(""));
        assert!(!valid_key("a b"));
        assert!(!valid_key("a\r\nset x 0 0 1"));
        assert!(!valid_key("tab\there"));
        assert!(!valid_key("del\u{7f}"));
        // Non-ASCII UTF-8 is bytes >= 0x80: memcached accepts them.
        assert!(valid_key("jürgen"));
    }

    #[test]
    fn expiry_in_memcached_terms() {
        let now = SystemTime::now();
        assert_eq!(exptime(None, now), Some(0));
        assert_eq!(exptime(Some(now + Duration::from_millis(1)), now), Some(1));
        assert_eq!(exptime(Some(now + Duration::from_secs(2)), now), Some(2));
        assert_eq!(
            exptime(Some(now + Duration::from_millis(2001)), now),
            Some(3)
        );
        assert_eq!(exptime(Some(now), now), None);
        assert_eq!(exptime(Some(now - Duration::from_secs(1)), now), None);
        // Past 30 days: an absolute Unix time.
        let far = now + Duration::from_secs(RELATIVE_EXPIRY_LIMIT + 10);
        let unix = far.duration_since(UNIX_EPOCH).unwrap().as_secs() as i64;
        let got = exptime(Some(far), now).unwrap();
        assert!(got == unix || got == unix + 1, "{got} vs {unix}");
    }
}
