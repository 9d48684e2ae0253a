//! The Redis store: one policy and identity lists shared by every graygate instance, with changes
//! pushed to all of them.
//!
//! # Layout of this module
//! - this file: the store itself ([`RedisStore`]): connecting, the commands behind each [`Store`]
//!   method, and how their failures become [`StoreError`]s;
//! - `keys`: where the data lives in Redis (key names, the changes channel, the policy script);
//! - `watch`: the background task that follows changes pushed by the server (pub/sub and
//!   client-side caching invalidations) and keeps the store's health.
//!
//! # Layout in Redis
//! The policy is a hash `<key_prefix>policy` (`revision`, `policy`), written with its history
//! record (`<key_prefix>history`) and announced on `<key_prefix>changes` by one Lua script; a list
//! entry is a plain string key `<list prefix><key>`, so that existing data and other tools
//! (`redis-cli SET TOKEN_abc 42`) work as they are. Records and leases are hashes under
//! `<key_prefix>record:` and `<key_prefix>lease:`, expiring by the server's clock; a lease is
//! taken, renewed and given up by Lua scripts that check its holder. See `keys` for the details.
//!
//! # Connections
//! - Commands go through a [`ConnectionManager`](::redis::aio::ConnectionManager) (one
//!   multiplexed connection, reconnected by the manager; in a cluster the cluster client's
//!   connections) with short timeouts (connect 500 ms, response 200 ms), and every command is
//!   bounded by [`OP_TIMEOUT`] as a whole, so a server that accepts connections but never answers
//!   stalls nothing.
//! - A background task owns a second, RESP3 connection that subscribes to the changes channel and
//!   receives Redis' client-side caching invalidations: a `SET`/`DEL`/expiry of a list key by
//!   *any* client becomes a [`Change::Key`] within milliseconds. Without RESP3 or `CLIENT
//!   TRACKING` it falls back to RESP2 and keyspace notifications, as [`RedisStore::invalidation`]
//!   reports. See `watch`.
//!
//! # Outages
//! When the server is stopped, killed or hangs, the store turns *degraded* (logged once, see
//! [`Store::health`]): every call fails at once with [`StoreError::Unavailable`] instead of waiting,
//! so the lookup cache serves the last known value or the request is decided as if the store were
//! down. The background task reconnects with exponential backoff (50 ms doubling up to 1 s); when it
//! is back the store logs its recovery once, and sends [`Change::Reset`] (invalidations may have
//! been missed) and [`Change::Policy`] with the current revision (a policy change may have been
//! missed). A server unreachable at startup starts the store degraded instead of failing it; a
//! configuration mistake (bad URL, wrong password, DB index out of range) fails
//! [`RedisStore::connect`].
//!
//! # URLs, TLS, Sentinel, Cluster
//! `redis://[<user>][:<password>@]<host>[:<port>][/<db>]`, `rediss://` for TLS (rustls, checked
//! against the Mozilla root certificates), `redis+unix:///path?db=N&pass=P` for a Unix socket.
//!
//! **Redis Sentinel**: `redis+sentinel://[<user>][:<password>@]h1:26379,h2:26379,h3:26379/<master
//! name>[/<db>]` (see `topology`). The store asks the sentinels for the primary through the redis
//! crate's Sentinel client (it asks them in turn, skipping one that is down, and checks the
//! `ROLE` of the server it is told about), and follows failovers (see `link`):
//! - the background task checks every second that the primary still answers `ROLE` as a primary
//!   and that the sentinels still name it; after any loss of connection it asks the sentinels
//!   again before it reconnects (at least every 250 ms while down), and opens both the command
//!   connection and the subscription (changes channel and tracking) on the new primary, then sends
//!   [`Change::Reset`] and [`Change::Policy`] as after any reconnect;
//! - a write refused with `READONLY` (a demoted primary) or `MASTERDOWN` degrades the store and
//!   wakes that rediscovery: the write fails, it is never lost in silence;
//! - a policy save first asks the sentinels whether the primary is still theirs, so that a save
//!   does not land on a primary they have already replaced (after a failover by hand the old
//!   primary keeps answering as one until the sentinels turn it into a replica, which drops what
//!   it took meanwhile). Replication is asynchronous, so a write taken by a primary in the very
//!   moment it dies can still be lost: Redis' own bound for that is `min-replicas-to-write` on
//!   the primary.
//!
//! **Redis Cluster**: `redis+cluster://[<user>][:<password>@]h1:p1,h2:p2,...`, through the redis
//! crate's cluster client (slot routing, `MOVED`/`ASK`, the cluster's own failovers). graygate's
//! keys (policy, history, records, leases, lists without a prefix) must share one hash slot for its
//! scripts to stay atomic: the default `key_prefix` is `{graygate}:`, and a prefix without a
//! complete hash tag is refused naming `key_prefix`. The original layouts' keys (`TOKEN_<token>`,
//! `Grayscale_Range`, an IP gray list under prefix `""`) live in any slot: lookups are routed to
//! their slots, listings `SCAN` every primary, and writes of several entries are one
//! `MULTI`/`EXEC` per slot (so not atomic as a whole, unlike on one server), announced by a
//! `PUBLISH` of their own, which the cluster delivers on every node. Invalidations: client
//! tracking is per node, so the background task opens one RESP3 connection per primary (from
//! `CLUSTER SLOTS`), each with `CLIENT TRACKING ON BCAST`, and subscribes to the changes channel on
//! the first: [`InvalidationMode::Tracking`]. Where tracking is refused it falls back to keyspace
//! notifications on every primary ([`InvalidationMode::KeyspaceEvents`]) and else to
//! [`InvalidationMode::TtlOnly`]: values written by other clients are then stale for up to the
//! lookup cache's TTL (`[cache] ttl`). A primary added later (resharding) is tracked after the
//! next reconnect. Cluster needs Redis 6 or later (RESP3).
//!
//! TLS to sentinels and cluster nodes is not offered (`rediss+sentinel://` and
//! `rediss+cluster://` are refused by name).

mod keys;
mod link;
pub mod topology;
mod watch;

use self::keys::{
    glob_escape, Keys, Notice, ACQUIRE_LEASE_LUA, BAD_REVISION_CODE, GET_RECORDS_LUA,
    HISTORY_UPGRADE_LUA, LOAD_HISTORY_LUA, RECORD_FIELD, RELEASE_LEASE_LUA, SAVE_POLICY_LUA,
};
use self::link::{Conn, Link};
use self::topology::Topology;
use super::{
    Change, Entry, HealthTracker, HistoryRecord, HistoryRetention, Store, StoreError, StoreHealth,
    StoredPolicy,
};
use crate::store::{BACKOFF_MAX, BACKOFF_MIN};
use ::redis::{Client, ErrorKind, RedisError, Value};
use async_trait::async_trait;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt;
use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::sync::Arc;
use std::sync::RwLock;
use std::time::{Duration, SystemTime};
use tokio::sync::{broadcast, Notify};

/// Value of [`StoreError`]'s `store` field for this store.
const STORE: &str = "redis";

/// How long a connection attempt may take (TCP, TLS and the handshake commands).
pub const CONNECT_TIMEOUT: Duration = Duration::from_millis(500);

/// How long the server may take to answer one command on an open connection.
pub const RESPONSE_TIMEOUT: Duration = Duration::from_millis(200);

/// Bound on one store call as a whole, including a wait for the connection manager's reconnect.
pub const OP_TIMEOUT: Duration = Duration::from_millis(250);

/// How often the background task checks that both connections answer.
const PING_INTERVAL: Duration = Duration::from_secs(1);

/// Most keys [`Store::list_entries`] returns; a bigger list is an error rather than a stall.
pub const LIST_LIMIT: usize = 100_000;

/// `SCAN ... COUNT` hint and `MGET` batch size for listings.
const SCAN_COUNT: usize = 1_000;
const MGET_BATCH: usize = 500;

/// How many changes a subscriber may fall behind before it lags (and must reload everything).
const CHANGE_CAPACITY: usize = 1024;

/// Where the Redis store connects and where it keeps its data.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RedisConfig {
    /// `redis://`, `rediss://` (TLS) or `redis+unix://` URL, with password and DB index.
    pub url: String,
    /// Prefix of graygate's own keys (policy, changes channel, lists without a configured prefix).
    pub key_prefix: String,
    /// List name -> prefix of its keys in Redis (`""`: the key as it is). A list not named here
    /// lives under `<key_prefix>list:<list>:`.
    pub lists: HashMap<String, String>,
}

impl Default for RedisConfig {
    fn default() -> Self {
        RedisConfig {
            url: "redis://127.0.0.1:6379".to_owned(),
            key_prefix: "graygate:".to_owned(),
            lists: HashMap::new(),
        }
    }
}

impl RedisConfig {
    /// The default layout on the server at `url`; in a Redis Cluster (`redis+cluster://`) the
    /// default prefix is [`topology::CLUSTER_KEY_PREFIX`] (one hash tag, see [`topology`]).
    pub fn new(url: impl Into<String>) -> Self {
        let url = url.into();
        let key_prefix = match topology::parse(&url) {
            Ok(Topology::Cluster { .. }) => topology::CLUSTER_KEY_PREFIX.to_owned(),
            _ => RedisConfig::default().key_prefix,
        };
        RedisConfig {
            url,
            key_prefix,
            lists: HashMap::new(),
        }
    }

    /// Checks what [`RedisStore::connect`] checks before it connects: the URL's form and, in a
    /// cluster, the hash tag of `key_prefix`. The error names the setting (`url` or
    /// `key_prefix`) and says what is wrong.
    pub fn check(&self) -> Result<Topology, ConfigProblem> {
        let topology = topology::parse(&self.url).map_err(|e| ConfigProblem {
            field: "url",
            detail: format!("`{}`: {e}", redact_url(&self.url)),
        })?;
        if let Topology::Single = topology {
            if let Err(e) = Client::open(self.url.as_str()) {
                return Err(ConfigProblem {
                    field: "url",
                    detail: format!("`{}` is not a Redis URL: {e}", redact_url(&self.url)),
                });
            }
        }
        if matches!(topology, Topology::Cluster { .. })
            && topology::hash_tag(&self.key_prefix).is_none()
        {
            return Err(ConfigProblem {
                field: "key_prefix",
                detail: format!(
                    "`{}` has no hash tag: in a Redis Cluster graygate's keys must share one slot for its scripts to stay atomic; use a prefix with a tag such as \"{}\"",
                    self.key_prefix,
                    topology::CLUSTER_KEY_PREFIX
                ),
            });
        }
        Ok(topology)
    }
}

/// A Redis store setting that cannot work, found before connecting ([`RedisConfig::check`]).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {detail}")]
pub struct ConfigProblem {
    /// The setting: `url` or `key_prefix`.
    pub field: &'static str,
    /// What is wrong with it.
    pub detail: String,
}

/// How writes made by other clients reach this instance (see the module documentation).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InvalidationMode {
    /// Not subscribed right now (connecting, or the server is down).
    Disconnected,
    /// Redis client-side caching invalidations (`CLIENT TRACKING ... BCAST`): every key change.
    Tracking,
    /// Keyspace notifications: every key change, as the server's configuration allows.
    KeyspaceEvents,
    /// Neither is available: only writes made through graygate are announced; a value set by
    /// another client is seen when the lookup cache's entry expires.
    TtlOnly,
}

impl InvalidationMode {
    /// The mode's name as status and metrics report it.
    pub fn as_str(self) -> &'static str {
        match self {
            InvalidationMode::Disconnected => "disconnected",
            InvalidationMode::Tracking => "tracking",
            InvalidationMode::KeyspaceEvents => "keyspace-events",
            InvalidationMode::TtlOnly => "ttl-only",
        }
    }
}

impl InvalidationMode {
    fn from_u8(v: u8) -> Self {
        match v {
            1 => InvalidationMode::Tracking,
            2 => InvalidationMode::KeyspaceEvents,
            3 => InvalidationMode::TtlOnly,
            _ => InvalidationMode::Disconnected,
        }
    }

    fn as_u8(self) -> u8 {
        match self {
            InvalidationMode::Disconnected => 0,
            InvalidationMode::Tracking => 1,
            InvalidationMode::KeyspaceEvents => 2,
            InvalidationMode::TtlOnly => 3,
        }
    }
}

/// The Redis-backed [`Store`]. See the module documentation.
pub struct RedisStore {
    shared: Arc<Shared>,
    /// The background task (subscription, invalidations, health); stopped when the store is
    /// dropped.
    watcher: tokio::task::JoinHandle<()>,
}

impl fmt::Debug for RedisStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisStore")
            .field("target", &self.shared.target)
            .field("key_prefix", &self.shared.keys.key_prefix)
            .finish_non_exhaustive()
    }
}

/// What the store and its background task share.
struct Shared {
    /// The deployment (one server, Sentinel, Cluster).
    topology: Topology,
    /// The connections of the moment; `None` until the sentinels named a primary. Replaced by
    /// the background task after a failover (see `link`).
    link: RwLock<Option<Arc<Link>>>,
    /// The sentinels (Sentinel only), asked by the background task; one discovery at a time.
    sentinel: tokio::sync::Mutex<Option<::redis::sentinel::Sentinel>>,
    /// The sentinels again, for the cheap "is it still the primary?" question (Sentinel only).
    sentinel_watch: Option<link::SentinelWatch>,
    /// The URL without its password, for messages.
    target: String,
    /// Where everything lives in the database.
    keys: Keys,
    /// [`SAVE_POLICY_LUA`], sent by hash (`EVALSHA`) once the server knows it.
    save_script: ::redis::Script,
    /// [`LOAD_HISTORY_LUA`].
    history_script: ::redis::Script,
    /// [`ACQUIRE_LEASE_LUA`], [`RELEASE_LEASE_LUA`] and [`GET_RECORDS_LUA`].
    acquire_script: ::redis::Script,
    release_script: ::redis::Script,
    records_script: ::redis::Script,
    changes: broadcast::Sender<Change>,
    health: HealthTracker,
    /// An [`InvalidationMode`], as set by the background task.
    mode: AtomicU8,
    /// Set once the "staleness bound is the cache TTL" warning was logged.
    warned_ttl_only: AtomicBool,
    /// Wakes the background task to check the server now (a command just failed).
    wake: Notify,
}

impl RedisStore {
    /// Connects to the server in `config.url` and starts following its changes.
    ///
    /// Fails with [`StoreError::Open`] for a configuration mistake: a URL that does not parse, a
    /// wrong password, a DB index the server does not have. A server that cannot be reached (yet)
    /// is not an error: the store starts degraded and connects as soon as the server answers.
    pub async fn connect(config: RedisConfig) -> Result<RedisStore, StoreError> {
        let target = redact_url(&config.url);
        let open_err = {
            let target = target.clone();
            move |detail: &str, e: RedisError| {
                StoreError::open(target.clone(), detail).with_source(e)
            }
        };
        if config.url.starts_with("rediss:") || config.url.starts_with("valkeys:") {
            // rustls needs a crypto provider; graygate builds it with ring. Installing fails
            // harmlessly when the process already has one.
            let _ = rustls::crypto::ring::default_provider().install_default();
        }
        let topology = match config.check() {
            Ok(topology) => topology,
            Err(problem) => {
                // A one-server URL the redis crate refuses: its error is the cause.
                if let (Ok(Topology::Single), Err(e)) = (
                    topology::parse(&config.url),
                    Client::open(config.url.as_str()),
                ) {
                    return Err(open_err("invalid Redis URL", e));
                }
                return Err(StoreError::open(
                    target,
                    format!("invalid Redis store setting {problem}"),
                ));
            }
        };
        let (link, db, sentinel) = match &topology {
            Topology::Single => {
                let client = Client::open(config.url.as_str())
                    .map_err(|e| open_err("invalid Redis URL", e))?;
                let db = client.get_connection_info().redis_settings().db();
                let link = Link::single(client, String::new())
                    .map_err(|e| open_err("cannot set up the connection", e))?;
                (Some(Arc::new(link)), db, None)
            }
            Topology::Sentinel { db, .. } => {
                let sentinel =
                    link::sentinels(&topology).map_err(|e| open_err("invalid Redis URL", e))?;
                (None, *db, sentinel)
            }
            Topology::Cluster { nodes, .. } => {
                let link = Link::cluster(&topology, nodes)
                    .map_err(|e| open_err("cannot set up the connection", e))?;
                (Some(Arc::new(link)), 0, None)
            }
        };

        let sentinel_watch =
            link::SentinelWatch::new(&topology).map_err(|e| open_err("invalid Redis URL", e))?;
        let (changes, _) = broadcast::channel(CHANGE_CAPACITY);
        let shared = Arc::new(Shared {
            topology,
            link: RwLock::new(link),
            sentinel: tokio::sync::Mutex::new(sentinel),
            sentinel_watch,
            target,
            keys: Keys::new(config.key_prefix, config.lists, db),
            save_script: ::redis::Script::new(&format!("{HISTORY_UPGRADE_LUA}{SAVE_POLICY_LUA}")),
            history_script: ::redis::Script::new(&format!(
                "{HISTORY_UPGRADE_LUA}{LOAD_HISTORY_LUA}"
            )),
            acquire_script: ::redis::Script::new(ACQUIRE_LEASE_LUA),
            release_script: ::redis::Script::new(RELEASE_LEASE_LUA),
            records_script: ::redis::Script::new(GET_RECORDS_LUA),
            changes,
            health: HealthTracker::new(STORE),
            mode: AtomicU8::new(InvalidationMode::Disconnected.as_u8()),
            warned_ttl_only: AtomicBool::new(false),
            wake: Notify::new(),
        });

        let linked = shared.relink().await;
        match linked.and(shared.ping().await) {
            Ok(()) => {}
            Err(e) if is_connection_error(&e) => shared
                .health
                .mark_degraded(&format!("cannot reach {}: {e}", shared.target)),
            Err(e) => return Err(open_err("the server rejects the connection", e)),
        }
        let watcher = tokio::spawn(Arc::clone(&shared).watch());
        Ok(RedisStore { shared, watcher })
    }

    /// How writes made by other clients reach this instance right now.
    pub fn invalidation(&self) -> InvalidationMode {
        InvalidationMode::from_u8(self.shared.mode.load(Ordering::Acquire))
    }

    /// The Redis key prefix of `list`'s entries.
    pub fn list_prefix(&self, list: &str) -> String {
        self.shared.keys.list_prefix(list)
    }

    /// The key of the policy hash.
    pub fn policy_key(&self) -> &str {
        &self.shared.keys.policy
    }

    /// The pub/sub channel on which changes are announced.
    pub fn changes_channel(&self) -> &str {
        &self.shared.keys.channel
    }
}

impl Drop for RedisStore {
    fn drop(&mut self) {
        self.watcher.abort();
    }
}

/// Whether `e` means "the server cannot be reached or does not answer" (as opposed to "the server
/// answered with an error", or a configuration mistake such as a wrong password).
fn is_connection_error(e: &RedisError) -> bool {
    e.kind() != ErrorKind::AuthenticationFailed
        && (e.is_io_error()
            || e.is_timeout()
            || e.is_connection_dropped()
            || e.is_connection_refusal())
}

/// Whether `e` says the server is not (or no longer) a primary that takes writes: `READONLY` (a
/// replica, such as a primary demoted by a failover; in a script or a transaction too) or
/// `MASTERDOWN`.
fn is_demoted(e: &RedisError) -> bool {
    matches!(e.code(), Some("READONLY" | "MASTERDOWN"))
        || e.to_string()
            .contains("READONLY You can't write against a read only replica")
}

/// `url` with its password replaced by `***`.
fn redact_url(url: &str) -> String {
    let Some(scheme_end) = url.find("://").map(|i| i + 3) else {
        return url.to_owned();
    };
    let rest = &url[scheme_end..];
    let authority_end = rest.find('/').unwrap_or(rest.len());
    let Some(at) = rest[..authority_end].rfind('@') else {
        // Unix socket URLs carry the password in the query.
        return match url.find("pass=") {
            Some(i) => {
                let end = url[i..].find('&').map_or(url.len(), |j| i + j);
                format!("{}pass=***{}", &url[..i], &url[end..])
            }
            None => url.to_owned(),
        };
    };
    let userinfo = &rest[..at];
    let user = userinfo.split(':').next().unwrap_or("");
    if userinfo.contains(':') {
        format!("{}{user}:***{}", &url[..scheme_end], &rest[at..])
    } else {
        url.to_owned()
    }
}

/// Longest TTL given to Redis for a record or a lease: a longer one (`Duration::MAX`) is cut to
/// this, which the server accepts (it refuses an expiry time that overflows).
const TTL_MAX: Duration = Duration::from_secs(100 * 365 * 24 * 3600);

/// `ttl` in whole milliseconds for `PEXPIRE`, rounded up (a record or lease never ends before its
/// TTL) and cut to [`TTL_MAX`]; `None` for a zero TTL.
fn ttl_millis(ttl: Duration) -> Option<u64> {
    let now = SystemTime::UNIX_EPOCH;
    millis_until(now + ttl.min(TTL_MAX), now)
}

/// Milliseconds until `at`, rounded up; `None` when `at` is past.
fn millis_until(at: SystemTime, now: SystemTime) -> Option<u64> {
    let left = at.duration_since(now).ok().filter(|d| !d.is_zero())?;
    let ms = left.as_millis() + u128::from(left.subsec_nanos() % 1_000_000 != 0);
    Some(u64::try_from(ms).unwrap_or(u64::MAX))
}

impl Shared {
    /// [`StoreError::Unavailable`] for `what` on this server, for a reason that is not an error
    /// of its own (a timeout, a degraded store, a list too long).
    fn unavailable(&self, what: &str, detail: impl fmt::Display) -> StoreError {
        StoreError::unavailable(STORE, format!("{what} on {}: {detail}", self.target))
    }

    /// [`StoreError::Unavailable`] for `what` on this server, caused by `e`.
    fn failed(&self, what: &str, e: RedisError) -> StoreError {
        StoreError::unavailable(STORE, format!("{what} on {}", self.target)).with_source(e)
    }

    /// Runs one store call: at once an error while the store is degraded, else `call` bounded by
    /// [`OP_TIMEOUT`]. A connection failure degrades the store and wakes the background task.
    async fn run<T>(
        &self,
        what: &str,
        key: &str,
        call: impl Future<Output = Result<T, RedisError>>,
    ) -> Result<T, StoreError> {
        if self.health.is_degraded() {
            let detail = self
                .health
                .snapshot()
                .last_error
                .unwrap_or_else(|| "unreachable".to_owned());
            return Err(self.unavailable(
                what,
                format_args!("degraded ({detail}); reconnecting in the background"),
            ));
        }
        match tokio::time::timeout(OP_TIMEOUT, call).await {
            Ok(Ok(value)) => Ok(value),
            // A demoted primary refuses writes (Sentinel failover, or a cluster in the middle
            // of one): the background task finds the new primary; meanwhile calls fail at once.
            Ok(Err(e)) if is_connection_error(&e) || is_demoted(&e) => {
                self.health.mark_degraded(&e.to_string());
                self.wake.notify_one();
                Err(self.failed(what, e))
            }
            // A key that holds something else than graygate wrote there.
            Ok(Err(e))
                if matches!(e.code(), Some("WRONGTYPE" | BAD_REVISION_CODE))
                    || e.kind() == ErrorKind::UnexpectedReturnType =>
            {
                Err(StoreError::bad_data(STORE, key, what).with_source(e))
            }
            Ok(Err(e)) => Err(self.failed(what, e)),
            Err(_) => {
                let detail = format!("no answer within {OP_TIMEOUT:?}");
                self.health.mark_degraded(&detail);
                self.wake.notify_one();
                Err(self.unavailable(what, detail))
            }
        }
    }

    /// The command connection of the moment, if there is one.
    fn link(&self) -> Option<Arc<Link>> {
        self.link
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    /// The command connection for a store call: none (the store is degraded then) until the
    /// sentinels named a primary.
    fn conn(&self) -> Result<Conn, StoreError> {
        match self.link() {
            Some(link) => Ok(link.conn.clone()),
            None => Err(self.unavailable(
                "connecting",
                "no primary known yet; asking the sentinels in the background",
            )),
        }
    }

    /// Makes sure the link points where it should (see `link`): with Sentinel, asks the sentinels
    /// for the primary and replaces the link when they name another one; in a cluster, rebuilds the
    /// link when `rebuild` (the cluster could not be reached). Nothing for one server.
    async fn relink_if(&self, rebuild: bool) -> Result<(), RedisError> {
        match &self.topology {
            Topology::Single => Ok(()),
            Topology::Cluster { nodes, .. } => {
                if rebuild {
                    let link = Link::cluster(&self.topology, nodes)?;
                    self.set_link(link);
                }
                Ok(())
            }
            Topology::Sentinel { master, .. } => {
                let mut sentinel = self.sentinel.lock().await;
                let Some(sentinel) = sentinel.as_mut() else {
                    return Ok(());
                };
                let (client, primary) = link::discover_primary(sentinel, &self.topology).await?;
                let current = self.link();
                let before = current.as_ref().map(|l| l.primary.clone());
                if before.as_deref() == Some(primary.as_str()) {
                    return Ok(());
                }
                match &before {
                    Some(old) => tracing::warn!(
                        store = %self.target,
                        master = %master,
                        from = %old,
                        to = %primary,
                        "the sentinels name a new primary; following the failover"
                    ),
                    None => tracing::info!(
                        store = %self.target,
                        master = %master,
                        primary = %primary,
                        "the sentinels name the primary"
                    ),
                }
                self.set_link(Link::single(client, primary)?);
                Ok(())
            }
        }
    }

    /// With Sentinel: an error when a sentinel names another primary than the one the link points
    /// at (the link's primary was replaced and may not have turned replica yet; a write there
    /// would be lost). The store turns degraded and the background task follows the sentinels.
    /// Nothing otherwise, or when no sentinel answers (the primary's own `ROLE` still counts).
    async fn still_primary(&self) -> Result<(), RedisError> {
        let (Some(watch), Some(link)) = (&self.sentinel_watch, self.link()) else {
            return Ok(());
        };
        match watch.named_primary().await {
            Some(named) if named != link.primary => Err(RedisError::from(std::io::Error::new(
                std::io::ErrorKind::ConnectionReset,
                format!(
                    "the sentinels name {named} as the primary, no longer {}",
                    link.primary
                ),
            ))),
            _ => Ok(()),
        }
    }

    /// [`Shared::relink_if`] at startup: the link is there except with Sentinel.
    async fn relink(&self) -> Result<(), RedisError> {
        self.relink_if(false).await
    }

    fn set_link(&self, link: Link) {
        *self
            .link
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(Arc::new(link));
    }

    /// `PING` through the command connection, bypassing the degraded gate. Tries twice: after a
    /// lost connection the first attempt only tells the manager to reconnect. With Sentinel, a
    /// server that answers but is no longer the primary (`ROLE`) fails the check: writes would be
    /// refused with `READONLY`.
    async fn ping(&self) -> Result<(), RedisError> {
        let Some(link) = self.link() else {
            return Err(RedisError::from(std::io::Error::new(
                std::io::ErrorKind::NotConnected,
                "no primary known yet",
            )));
        };
        if let Topology::Sentinel { .. } = self.topology {
            let mut conn = link.conn.clone();
            let role = link::is_primary(&mut conn);
            match tokio::time::timeout(CONNECT_TIMEOUT + RESPONSE_TIMEOUT, role).await {
                Ok(Ok(true)) => {}
                Ok(Ok(false)) => {
                    return Err(RedisError::from(std::io::Error::new(
                        std::io::ErrorKind::ConnectionReset,
                        format!("{} is no longer the primary", link.primary),
                    )))
                }
                // PING below says what is wrong.
                Ok(Err(_)) | Err(_) => {}
            }
            self.still_primary().await?;
        }
        let mut last = None;
        for _ in 0..2 {
            let mut conn = link.conn.clone();
            let cmd = ::redis::cmd("PING");
            let ping = cmd.query_async::<()>(&mut conn);
            match tokio::time::timeout(CONNECT_TIMEOUT + RESPONSE_TIMEOUT, ping).await {
                Ok(Ok(())) => return Ok(()),
                Ok(Err(e)) if !is_connection_error(&e) => return Err(e),
                Ok(Err(e)) => last = Some(e),
                Err(_) => {
                    last = Some(RedisError::from(std::io::Error::new(
                        std::io::ErrorKind::TimedOut,
                        "no answer to PING",
                    )))
                }
            }
        }
        Err(last.expect("the loop ran"))
    }

    fn send(&self, change: Change) {
        let _ = self.changes.send(change);
    }

    fn is_cluster(&self) -> bool {
        matches!(self.topology, Topology::Cluster { .. })
    }

    /// In a cluster, announces a write to `list` on its own: the cluster client routes a
    /// pipeline to one slot, and `PUBLISH` (which reaches every node) has none. Elsewhere the
    /// announcement went with the write's transaction.
    async fn publish_list_in_cluster(&self, list: &str, what: &str) -> Result<(), StoreError> {
        if !self.is_cluster() {
            return Ok(());
        }
        let mut conn = self.conn()?;
        self.run(
            what,
            list,
            ::redis::cmd("PUBLISH")
                .arg(&self.keys.channel)
                .arg(Notice::list(list))
                .query_async::<()>(&mut conn),
        )
        .await
    }

    /// The indices of `keys` grouped by hash slot in a cluster, in the order of their first key,
    /// so that each group can be one transaction or one multi-key command; one group of all of
    /// them otherwise.
    fn slot_groups<K: AsRef<[u8]>>(&self, keys: &[K]) -> Vec<Vec<usize>> {
        if !self.is_cluster() {
            return vec![(0..keys.len()).collect()];
        }
        let mut groups: Vec<Vec<usize>> = Vec::new();
        let mut index: HashMap<::redis::cluster_routing::Slot, usize> = HashMap::new();
        for (i, key) in keys.iter().enumerate() {
            let slot = ::redis::cluster_routing::Slot::for_key(key.as_ref());
            let g = *index.entry(slot).or_insert_with(|| {
                groups.push(Vec::new());
                groups.len() - 1
            });
            groups[g].push(i);
        }
        groups
    }

    /// Runs the policy script (see [`SAVE_POLICY_LUA`]); `record` `""` records no history.
    async fn save_policy(
        &self,
        json: &str,
        expected: Option<u64>,
        record: &str,
        retention: HistoryRetention,
    ) -> Result<u64, StoreError> {
        let s = self;
        // With Sentinel, not on a primary the sentinels have replaced: the write would be lost.
        // (Bounded by the sentinels' own timeouts, not OP_TIMEOUT: a sentinel that hangs is
        // skipped after its connect timeout rather than failing the save.)
        if !s.health.is_degraded() {
            if let Err(e) = s.still_primary().await {
                s.health.mark_degraded(&e.to_string());
                s.wake.notify_one();
                return Err(s.failed("saving the policy", e));
            }
        }
        let mut conn = s.conn()?;
        let expected_arg = expected.map(|e| e.to_string()).unwrap_or_default();
        let (saved, revision): (i64, u64) = s
            .run(
                "saving the policy",
                &s.keys.policy,
                s.save_script
                    .key(&s.keys.policy)
                    .key(&s.keys.history)
                    .arg(json)
                    .arg(&expected_arg)
                    .arg(&s.keys.channel)
                    .arg(record)
                    .arg(retention.keep)
                    .arg(retention.max_bytes)
                    .invoke_async(&mut conn),
            )
            .await?;
        if saved != 1 {
            return Err(StoreError::Conflict {
                expected: expected.unwrap_or(0),
                actual: revision,
            });
        }
        // Subscribers of this instance learn it now; the channel tells the others (and this one
        // again, which is harmless).
        s.send(Change::Policy { revision });
        Ok(revision)
    }

    /// The record index's keys starting with `<records><prefix>` (at most [`LIST_LIMIT`]),
    /// then the values in batches through [`GET_RECORDS_LUA`]. A key that expired, or that holds
    /// something graygate did not write, is skipped and leaves the index.
    async fn records_of(&self, prefix: &str) -> Result<Vec<(String, String)>, StoreError> {
        const WHAT: &str = "listing records";
        let full_prefix = self.keys.record(prefix);
        // Every record key starting with the prefix: a lexical range of the index, whose
        // scores are all 0. `(prefix\xff` bounds it above (no UTF-8 text holds 0xff).
        let mut upper = full_prefix.clone().into_bytes();
        upper.push(0xff);
        let mut conn = self.conn()?;
        let members: Vec<Vec<u8>> = self
            .run(
                WHAT,
                &full_prefix,
                ::redis::cmd("ZRANGEBYLEX")
                    .arg(&self.keys.record_index)
                    .arg([b"[".as_slice(), full_prefix.as_bytes()].concat())
                    .arg([b"(".as_slice(), upper.as_slice()].concat())
                    .arg("LIMIT")
                    .arg(0)
                    .arg(LIST_LIMIT + 1)
                    .query_async(&mut conn),
            )
            .await?;
        if members.len() > LIST_LIMIT {
            return Err(self.unavailable(
                WHAT,
                format_args!("more than {LIST_LIMIT} records under {full_prefix:?}"),
            ));
        }
        let keys: BTreeSet<String> = members
            .into_iter()
            .filter_map(|k| String::from_utf8(k).ok())
            .collect();
        let keys: Vec<String> = keys.into_iter().collect();
        let mut out = Vec::with_capacity(keys.len());
        let mut gone = Vec::new();
        for batch in keys.chunks(MGET_BATCH) {
            let mut invocation = self.records_script.prepare_invoke();
            invocation.key(batch).arg(RECORD_FIELD);
            let mut conn = self.conn()?;
            let values: Vec<Option<String>> = self
                .run(WHAT, &full_prefix, invocation.invoke_async(&mut conn))
                .await?;
            for (key, value) in batch.iter().zip(values) {
                let (Some(value), Some(name)) = (value, key.strip_prefix(&self.keys.records))
                else {
                    gone.push(key.clone());
                    continue;
                };
                out.push((name.to_owned(), value));
            }
        }
        // Records that expired (or were deleted by hand) leave the index now.
        if !gone.is_empty() {
            let mut conn = self.conn()?;
            self.run(
                WHAT,
                &full_prefix,
                ::redis::cmd("ZREM")
                    .arg(&self.keys.record_index)
                    .arg(&gone)
                    .query_async::<()>(&mut conn),
            )
            .await?;
        }
        Ok(out)
    }

    async fn list_entries_of(&self, list: &str) -> Result<Vec<Entry>, StoreError> {
        const WHAT: &str = "listing entries";
        let prefix = self.keys.list_prefix(list);
        let pattern = format!("{}*", glob_escape(&prefix));
        // SCAN may return a key more than once; a set also sorts them.
        let mut keys: BTreeSet<Vec<u8>> = BTreeSet::new();
        // Every primary of a cluster holds some of the keys; one server holds them all.
        let nodes: Vec<Option<(String, u16)>> = match self.topology {
            Topology::Cluster { .. } => {
                let mut conn = self.conn()?;
                self.run(WHAT, list, link::cluster_primaries(&mut conn))
                    .await?
                    .into_iter()
                    .map(Some)
                    .collect()
            }
            _ => vec![None],
        };
        for node in &nodes {
            let mut cursor: u64 = 0;
            loop {
                let mut conn = self.conn()?;
                let mut scan = ::redis::cmd("SCAN");
                scan.arg(cursor)
                    .arg("MATCH")
                    .arg(&pattern)
                    .arg("COUNT")
                    .arg(SCAN_COUNT);
                let (next, batch): (u64, Vec<Vec<u8>>) = self
                    .run(WHAT, list, async {
                        let reply: Value = match node {
                            Some((host, port)) => {
                                link::on_node(&mut conn, host, *port, scan).await?
                            }
                            None => scan.query_async(&mut conn).await?,
                        };
                        Ok::<_, RedisError>(::redis::from_redis_value(reply)?)
                    })
                    .await?;
                keys.extend(batch);
                if keys.len() > LIST_LIMIT {
                    return Err(self.unavailable(
                        WHAT,
                        format_args!(
                            "list {list} has more than {LIST_LIMIT} keys under {prefix:?}; list them with redis-cli --scan --pattern '{pattern}'"
                        ),
                    ));
                }
                cursor = next;
                if cursor == 0 {
                    break;
                }
            }
        }

        let keys: Vec<Vec<u8>> = keys.into_iter().collect();
        let mut found: BTreeMap<String, Entry> = BTreeMap::new();
        let now = SystemTime::now();
        for batch in keys.chunks(MGET_BATCH) {
            let conn = self.conn()?;
            // One `MGET` and the `PTTL`s per group; in a cluster a group is one hash slot (a
            // multi-key command cannot span slots), and the groups are asked at once.
            let groups = self.slot_groups(batch);
            let fetches = groups.iter().map(|group| {
                let mut conn = conn.clone();
                let mut pipe = ::redis::pipe();
                let group_keys: Vec<&Vec<u8>> = group.iter().map(|&i| &batch[i]).collect();
                pipe.cmd("MGET").arg(&group_keys);
                for key in &group_keys {
                    pipe.cmd("PTTL").arg(*key);
                }
                async move {
                    let mut reply: Vec<Value> = pipe.query_async(&mut conn).await?;
                    let ttls = reply.split_off(1);
                    let values: Vec<Option<Vec<u8>>> =
                        ::redis::from_redis_value(reply.pop().unwrap_or(Value::Nil))?;
                    let ttls = ttls
                        .into_iter()
                        .map(::redis::from_redis_value)
                        .collect::<Result<Vec<i64>, _>>()?;
                    Ok::<_, RedisError>((values, ttls))
                }
            });
            let replies = self
                .run(WHAT, list, futures_util::future::try_join_all(fetches))
                .await?;
            let mut values: Vec<Option<Vec<u8>>> = vec![None; batch.len()];
            let mut ttls: Vec<i64> = vec![-2; batch.len()];
            for (group, (group_values, group_ttls)) in groups.iter().zip(replies) {
                for ((&i, value), ttl) in group.iter().zip(group_values).zip(group_ttls) {
                    values[i] = value;
                    ttls[i] = ttl;
                }
            }
            for ((key, value), ttl) in batch.iter().zip(values).zip(ttls) {
                // Gone since SCAN, not a string, or not text: not an entry.
                let Some(value) = value.and_then(|v| String::from_utf8(v).ok()) else {
                    continue;
                };
                let Ok(key) = std::str::from_utf8(key) else {
                    continue;
                };
                let Some(key) = key.strip_prefix(prefix.as_str()) else {
                    continue;
                };
                let expires_at = u64::try_from(ttl)
                    .ok()
                    .map(|ms| now + Duration::from_millis(ms));
                found.insert(
                    key.to_owned(),
                    Entry {
                        key: key.to_owned(),
                        value,
                        expires_at,
                    },
                );
            }
        }
        Ok(found.into_values().collect())
    }
}

#[async_trait]
impl Store for RedisStore {
    fn kind(&self) -> &'static str {
        STORE
    }

    async fn load_policy(&self) -> Result<Option<StoredPolicy>, StoreError> {
        let s = &self.shared;
        let mut conn = s.conn()?;
        let (revision, json): (Option<String>, Option<String>) = s
            .run(
                "reading the policy",
                &s.keys.policy,
                ::redis::cmd("HMGET")
                    .arg(&s.keys.policy)
                    .arg("revision")
                    .arg("policy")
                    .query_async(&mut conn),
            )
            .await?;
        let bad = |detail: String| StoreError::bad_data(STORE, s.keys.policy.clone(), detail);
        match (revision, json) {
            (None, None) => Ok(None),
            (Some(revision), Some(json)) => {
                let revision =
                    revision
                        .parse::<u64>()
                        .ok()
                        .filter(|r| *r > 0)
                        .ok_or_else(|| {
                            bad(format!("revision {revision:?} is not a positive number"))
                        })?;
                Ok(Some(StoredPolicy { revision, json }))
            }
            (Some(_), None) => Err(bad("the hash has a revision but no policy field".to_owned())),
            (None, Some(_)) => Err(bad("the hash has a policy but no revision field".to_owned())),
        }
    }

    async fn save_policy(&self, json: &str, expected: Option<u64>) -> Result<u64, StoreError> {
        let retention = HistoryRetention::default();
        self.shared.save_policy(json, expected, "", retention).await
    }

    async fn save_policy_recorded(
        &self,
        json: &str,
        expected: u64,
        record: &str,
        retention: HistoryRetention,
    ) -> Result<u64, StoreError> {
        self.shared
            .save_policy(json, Some(expected), record, retention)
            .await
    }

    /// [`RESTORE_POLICY_LUA`]: the check, the write at `revision`, its history record and the
    /// announcement in one script. Rare (a store that lost its data), so the script is made here
    /// rather than kept with the others.
    async fn restore_policy(
        &self,
        json: &str,
        revision: u64,
        record: &str,
        retention: HistoryRetention,
    ) -> Result<super::Restore, StoreError> {
        let s = &self.shared;
        let script = ::redis::Script::new(&format!(
            "{HISTORY_UPGRADE_LUA}{}",
            keys::RESTORE_POLICY_LUA
        ));
        // As a save: never onto a primary the sentinels have replaced.
        if !s.health.is_degraded() {
            if let Err(e) = s.still_primary().await {
                s.health.mark_degraded(&e.to_string());
                s.wake.notify_one();
                return Err(s.failed("restoring the policy", e));
            }
        }
        let mut conn = s.conn()?;
        let (written, at): (i64, u64) = s
            .run(
                "restoring the policy",
                &s.keys.policy,
                script
                    .key(&s.keys.policy)
                    .key(&s.keys.history)
                    .arg(json)
                    .arg(revision)
                    .arg(&s.keys.channel)
                    .arg(record)
                    .arg(retention.keep)
                    .arg(retention.max_bytes)
                    .invoke_async(&mut conn),
            )
            .await?;
        if written != 1 {
            return Ok(super::Restore::NotBehind { actual: at });
        }
        s.send(Change::Policy { revision });
        Ok(super::Restore::Restored { from: at })
    }

    /// `ZREVRANGEBYSCORE <key_prefix>history (before -inf WITHSCORES LIMIT 0 limit`, in a script
    /// that first turns a history kept as a list into the sorted set ([`LOAD_HISTORY_LUA`]).
    async fn load_history(
        &self,
        before: Option<u64>,
        limit: usize,
    ) -> Result<Vec<HistoryRecord>, StoreError> {
        let s = &self.shared;
        if limit == 0 {
            return Ok(Vec::new());
        }
        let mut conn = s.conn()?;
        let below = before.map(|b| b.to_string()).unwrap_or_default();
        let pairs: Vec<(String, String)> = s
            .run(
                "reading the policy history",
                &s.keys.history,
                s.history_script
                    .key(&s.keys.history)
                    .key(&s.keys.policy)
                    .arg(&below)
                    // Redis counts in a signed 64-bit number.
                    .arg(i64::try_from(limit).unwrap_or(i64::MAX))
                    .invoke_async(&mut conn),
            )
            .await?;
        pairs
            .into_iter()
            .map(|(json, score)| {
                // Scores are doubles: Redis writes whole ones without a fraction.
                let revision = score.parse::<u64>().map_err(|_| {
                    StoreError::bad_data(
                        STORE,
                        s.keys.history.clone(),
                        format!("a record's score {score:?} is not a revision"),
                    )
                })?;
                Ok(HistoryRecord { revision, json })
            })
            .collect()
    }

    async fn lookup(&self, list: &str, key: &str) -> Result<Option<Arc<str>>, StoreError> {
        let s = &self.shared;
        let redis_key = s.keys.entry(list, key);
        let mut conn = s.conn()?;
        let value: Option<String> = s
            .run(
                "lookup",
                &redis_key,
                ::redis::cmd("GET").arg(&redis_key).query_async(&mut conn),
            )
            .await?;
        Ok(value.map(Arc::from))
    }

    /// One `MULTI`/`EXEC`: every `SET` (with `PX` for entries that expire; a `DEL` for entries
    /// already expired) and the announcement on the changes channel. In a cluster, one
    /// `MULTI`/`EXEC` per hash slot (a transaction cannot span slots), the announcement with the
    /// last.
    async fn put_entries(&self, list: &str, entries: &[Entry]) -> Result<(), StoreError> {
        if entries.is_empty() {
            return Ok(());
        }
        let s = &self.shared;
        let prefix = s.keys.list_prefix(list);
        let now = SystemTime::now();
        let keys: Vec<String> = entries
            .iter()
            .map(|e| format!("{prefix}{}", e.key))
            .collect();
        let groups = s.slot_groups(&keys);
        let last = groups.len() - 1;
        for (n, group) in groups.into_iter().enumerate() {
            let mut pipe = ::redis::pipe();
            pipe.atomic();
            for i in group {
                let (key, entry) = (&keys[i], &entries[i]);
                match entry.expires_at {
                    None => pipe.cmd("SET").arg(key).arg(&entry.value).ignore(),
                    Some(at) => match millis_until(at, now) {
                        Some(ms) => pipe
                            .cmd("SET")
                            .arg(key)
                            .arg(&entry.value)
                            .arg("PX")
                            .arg(ms)
                            .ignore(),
                        None => pipe.cmd("DEL").arg(key).ignore(),
                    },
                };
            }
            if n == last && !s.is_cluster() {
                pipe.cmd("PUBLISH")
                    .arg(&s.keys.channel)
                    .arg(Notice::list(list))
                    .ignore();
            }
            let mut conn = s.conn()?;
            s.run(
                "writing list entries",
                list,
                pipe.query_async::<()>(&mut conn),
            )
            .await?;
        }
        s.publish_list_in_cluster(list, "writing list entries")
            .await?;
        s.send(Change::List {
            list: list.to_owned(),
        });
        Ok(())
    }

    /// One `MULTI`/`EXEC`: `DEL` of every key and the announcement on the changes channel (in a
    /// cluster one per hash slot, as for [`Store::put_entries`]).
    async fn remove_entries(&self, list: &str, keys: &[String]) -> Result<usize, StoreError> {
        if keys.is_empty() {
            return Ok(0);
        }
        let s = &self.shared;
        let prefix = s.keys.list_prefix(list);
        let redis_keys: Vec<String> = keys.iter().map(|k| format!("{prefix}{k}")).collect();
        let groups = s.slot_groups(&redis_keys);
        let last = groups.len() - 1;
        let mut removed = 0;
        for (n, group) in groups.into_iter().enumerate() {
            let mut pipe = ::redis::pipe();
            pipe.atomic();
            let group: Vec<&String> = group.into_iter().map(|i| &redis_keys[i]).collect();
            pipe.cmd("DEL").arg(&group);
            if n == last && !s.is_cluster() {
                pipe.cmd("PUBLISH")
                    .arg(&s.keys.channel)
                    .arg(Notice::list(list))
                    .ignore();
            }
            let mut conn = s.conn()?;
            let (count,): (usize,) = s
                .run("removing list entries", list, pipe.query_async(&mut conn))
                .await?;
            removed += count;
        }
        s.publish_list_in_cluster(list, "removing list entries")
            .await?;
        s.send(Change::List {
            list: list.to_owned(),
        });
        Ok(removed)
    }

    /// `SCAN MATCH <prefix>*` (at most [`LIST_LIMIT`] keys), then `MGET` and `PTTL` in batches.
    /// Keys that hold something else than a string are not entries and are skipped.
    async fn list_entries(&self, list: &str) -> Result<Vec<Entry>, StoreError> {
        self.shared.list_entries_of(list).await
    }

    /// One `MULTI`/`EXEC`: `DEL` (so that no old expiry stays), `HSET <key_prefix>record:<key>
    /// value <value>` and `PEXPIRE` for a TTL; only the `DEL` for a zero TTL.
    async fn put_record(
        &self,
        key: &str,
        value: &str,
        ttl: Option<Duration>,
    ) -> Result<(), StoreError> {
        let s = &self.shared;
        let redis_key = s.keys.record(key);
        let mut pipe = ::redis::pipe();
        pipe.atomic();
        pipe.cmd("DEL").arg(&redis_key).ignore();
        match ttl.map(ttl_millis) {
            // A zero TTL: the record ends now.
            Some(None) => {
                pipe.cmd("ZREM")
                    .arg(&s.keys.record_index)
                    .arg(&redis_key)
                    .ignore();
            }
            ms => {
                pipe.cmd("ZADD")
                    .arg(&s.keys.record_index)
                    .arg(0)
                    .arg(&redis_key)
                    .ignore();
                pipe.cmd("HSET")
                    .arg(&redis_key)
                    .arg(RECORD_FIELD)
                    .arg(value)
                    .ignore();
                if let Some(Some(ms)) = ms {
                    pipe.cmd("PEXPIRE").arg(&redis_key).arg(ms).ignore();
                }
            }
        }
        let mut conn = s.conn()?;
        s.run(
            "writing a record",
            &redis_key,
            pipe.query_async::<()>(&mut conn),
        )
        .await
    }

    /// `HGET <key_prefix>record:<key> value`.
    async fn get_record(&self, key: &str) -> Result<Option<String>, StoreError> {
        let s = &self.shared;
        let redis_key = s.keys.record(key);
        let mut conn = s.conn()?;
        s.run(
            "reading a record",
            &redis_key,
            ::redis::cmd("HGET")
                .arg(&redis_key)
                .arg(RECORD_FIELD)
                .query_async(&mut conn),
        )
        .await
    }

    /// A lexical range of the record index (`ZRANGEBYLEX`), then `HGET` in batches; records
    /// that expired leave the index on the way.
    async fn records(&self, prefix: &str) -> Result<Vec<(String, String)>, StoreError> {
        self.shared.records_of(prefix).await
    }

    /// `DEL <key_prefix>record:<key>`, and the key leaves the record index.
    async fn delete_record(&self, key: &str) -> Result<(), StoreError> {
        let s = &self.shared;
        let redis_key = s.keys.record(key);
        let mut conn = s.conn()?;
        s.run(
            "deleting a record",
            &redis_key,
            ::redis::pipe()
                .atomic()
                .cmd("DEL")
                .arg(&redis_key)
                .ignore()
                .cmd("ZREM")
                .arg(&s.keys.record_index)
                .arg(&redis_key)
                .ignore()
                .query_async::<()>(&mut conn),
        )
        .await
    }

    /// One Lua script (`keys::ACQUIRE_LEASE_LUA`) on `<key_prefix>lease:<name>`: the holder is
    /// checked and the lease written in one atomic step; the TTL counts on the server's clock.
    async fn acquire_lease(
        &self,
        name: &str,
        holder: &str,
        ttl: Duration,
    ) -> Result<bool, StoreError> {
        let s = &self.shared;
        let redis_key = s.keys.lease(name);
        // PEXPIRE 0 would delete the lease just taken: the shortest term is 1 ms.
        let ms = ttl_millis(ttl).unwrap_or(1);
        let mut conn = s.conn()?;
        let held: i64 = s
            .run(
                "taking a lease",
                &redis_key,
                s.acquire_script
                    .key(&redis_key)
                    .arg(holder)
                    .arg(ms)
                    .invoke_async(&mut conn),
            )
            .await?;
        Ok(held == 1)
    }

    /// One Lua script (`keys::RELEASE_LEASE_LUA`): deletes `<key_prefix>lease:<name>` only if
    /// `holder` holds it.
    async fn release_lease(&self, name: &str, holder: &str) -> Result<(), StoreError> {
        let s = &self.shared;
        let redis_key = s.keys.lease(name);
        let mut conn = s.conn()?;
        let _released: i64 = s
            .run(
                "giving up a lease",
                &redis_key,
                s.release_script
                    .key(&redis_key)
                    .arg(holder)
                    .invoke_async(&mut conn),
            )
            .await?;
        Ok(())
    }

    fn subscribe(&self) -> broadcast::Receiver<Change> {
        self.shared.changes.subscribe()
    }

    fn health(&self) -> StoreHealth {
        StoreHealth {
            invalidation: Some(self.invalidation().as_str()),
            ..self.shared.health.snapshot()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::{Path, PathBuf};
    use std::process::{Child, Command, Stdio};
    use std::time::Instant;

    /// A redis-server on a Unix socket in a temporary directory (no port to collide on), stopped
    /// when dropped.
    struct Server {
        child: Child,
        socket: PathBuf,
        _dir: tempfile::TempDir,
    }

    impl Server {
        fn start(extra: &[&str]) -> Server {
            let dir = tempfile::tempdir().unwrap();
            let socket = dir.path().join("redis.sock");
            let child = Command::new("redis-server")
                .args([
                    "--port",
                    "0",
                    "--save",
                    "",
                    "--appendonly",
                    "no",
                    "--unixsocket",
                ])
                .arg(&socket)
                .arg("--dir")
                .arg(dir.path())
                .args(extra)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("redis-server is installed");
            let deadline = Instant::now() + Duration::from_secs(10);
            while std::os::unix::net::UnixStream::connect(&socket).is_err() {
                assert!(Instant::now() < deadline, "redis-server did not start");
                std::thread::sleep(Duration::from_millis(10));
            }
            Server {
                child,
                socket,
                _dir: dir,
            }
        }

        fn url(&self, query: &str) -> String {
            format!("redis+unix://{}{query}", self.socket.display())
        }

        fn cli(&self, args: &[&str]) -> String {
            cli(&self.socket, args)
        }

        /// A store on this server with the default layout.
        async fn store(&self) -> RedisStore {
            RedisStore::connect(RedisConfig::new(self.url("")))
                .await
                .expect("connect")
        }
    }

    fn cli(socket: &Path, args: &[&str]) -> String {
        let out = Command::new("redis-cli")
            .arg("-s")
            .arg(socket)
            .args(args)
            .output()
            .expect("redis-cli is installed");
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    }

    impl Drop for Server {
        fn drop(&mut self) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }

    #[tokio::test]
    async fn a_lost_race_is_a_conflict_not_an_outage() {
        let server = Server::start(&[]);
        let store = server.store().await;
        assert_eq!(store.save_policy("a", Some(0)).await.unwrap(), 1);
        // Another writer got there first.
        let err = store.save_policy("b", Some(0)).await.unwrap_err();
        assert!(err.is_lost_race(), "{err:?}");
        assert_eq!(
            err.to_string(),
            "policy revision conflict: expected 0, store has 1"
        );
        assert_eq!(store.load_history(None, 10).await.unwrap(), []);
    }

    #[tokio::test]
    async fn a_foreign_revision_is_bad_data_with_the_server_error_as_its_cause() {
        use std::error::Error as _;
        let server = Server::start(&[]);
        let store = server.store().await;
        server.cli(&["HSET", "graygate:policy", "revision", "abc", "policy", "{}"]);
        let err = store.save_policy("x", None).await.unwrap_err();
        assert!(
            matches!(&err, StoreError::BadData { key, .. } if key == "graygate:policy"),
            "{err:?}"
        );
        let cause = err
            .cause::<RedisError>()
            .expect("the server's error is the cause");
        assert_eq!(cause.code(), Some(BAD_REVISION_CODE));
        assert!(!err.to_string().contains("not a number"), "{err}");
        assert!(err
            .chain()
            .to_string()
            .contains("revision field is not a number: abc"));
        assert!(err.source().is_some());

        // A key of another type is bad data too, with the server's WRONGTYPE as the cause.
        server.cli(&["HSET", "graygate:list:ips:weird", "f", "v"]);
        let err = store.lookup("ips", "weird").await.unwrap_err();
        assert!(matches!(err, StoreError::BadData { .. }), "{err:?}");
        assert_eq!(
            err.cause::<RedisError>().and_then(RedisError::code),
            Some("WRONGTYPE")
        );
    }

    #[tokio::test]
    async fn a_wrong_password_fails_connect_with_the_server_error_as_its_cause() {
        let server = Server::start(&["--requirepass", "secret"]);
        let err = RedisStore::connect(RedisConfig::new(server.url("?pass=wrong")))
            .await
            .unwrap_err();
        assert!(matches!(err, StoreError::Open { .. }), "{err:?}");
        assert!(err.cause::<RedisError>().is_some(), "{err:?}");
        let chain = err.chain().to_string();
        assert!(chain.contains("pass=***"), "{chain}");
        assert!(!chain.contains("wrong"), "the password leaked: {chain}");
        assert!(
            err.to_string()
                .contains("the server rejects the connection"),
            "{err}"
        );

        let err = RedisStore::connect(RedisConfig::new("http://127.0.0.1:1"))
            .await
            .unwrap_err();
        assert!(err.to_string().contains("invalid Redis URL"), "{err}");
        assert!(err.cause::<RedisError>().is_some(), "{err:?}");
    }

    /// On the OpenResty layout (list `redis` reads every key as it is), records and leases are
    /// never entries of the list; their TTLs are the server's; a record prefix is taken literally.
    #[tokio::test]
    async fn records_and_leases_stay_out_of_the_lists() {
        let server = Server::start(&[]);
        let config = RedisConfig {
            lists: HashMap::from([("redis".to_owned(), String::new())]),
            ..RedisConfig::new(server.url(""))
        };
        let store = RedisStore::connect(config).await.expect("connect");
        server.cli(&["SET", "TOKEN_abc", "42"]);
        let ttl = Duration::from_secs(60);
        store
            .put_record("counters/a", "{}", Some(ttl))
            .await
            .unwrap();
        store.put_record("counters/*", "star", None).await.unwrap();
        store.put_record("countersX", "x", None).await.unwrap();
        assert!(store.acquire_lease("driver", "a", ttl).await.unwrap());

        let entries = store.list_entries("redis").await.unwrap();
        let keys: Vec<&str> = entries.iter().map(|e| e.key.as_str()).collect();
        assert_eq!(keys, ["TOKEN_abc"]);
        assert_eq!(
            server.cli(&["HGET", "graygate:record:counters/a", "value"]),
            "{}"
        );
        let pttl: u64 = server
            .cli(&["PTTL", "graygate:record:counters/a"])
            .parse()
            .unwrap();
        assert!(pttl > 50_000 && pttl <= 60_000, "{pttl}");
        assert_eq!(server.cli(&["PTTL", "graygate:record:countersX"]), "-1");
        let pttl: u64 = server
            .cli(&["PTTL", "graygate:lease:driver"])
            .parse()
            .unwrap();
        assert!(pttl > 50_000 && pttl <= 60_000, "{pttl}");

        // `*` in a prefix is a character, not a pattern.
        assert_eq!(
            store.records("counters/*").await.unwrap(),
            [("counters/*".to_owned(), "star".to_owned())]
        );
        // Writing a record again without a TTL keeps it for good.
        store.put_record("counters/a", "{}", None).await.unwrap();
        assert_eq!(server.cli(&["PTTL", "graygate:record:counters/a"]), "-1");

        // Listing reads the record index, not the whole database; a record that expired (here:
        // deleted behind graygate's back) leaves the index when it is next listed.
        assert_eq!(server.cli(&["ZCARD", "graygate:record-index"]), "3");
        server.cli(&["DEL", "graygate:record:counters/a"]);
        assert_eq!(
            store.records("counters").await.unwrap(),
            [
                ("counters/*".to_owned(), "star".to_owned()),
                ("countersX".to_owned(), "x".to_owned())
            ]
        );
        assert_eq!(server.cli(&["ZCARD", "graygate:record-index"]), "2");
        store.delete_record("countersX").await.unwrap();
        assert_eq!(server.cli(&["ZCARD", "graygate:record-index"]), "1");

        // Something else under a record's name is bad data, named.
        server.cli(&["SET", "graygate:record:foreign", "x"]);
        let err = store.get_record("foreign").await.unwrap_err();
        assert!(
            matches!(&err, StoreError::BadData { key, .. } if key == "graygate:record:foreign"),
            "{err:?}"
        );
        assert_eq!(
            err.to_string(),
            "store redis: bad data under graygate:record:foreign: reading a record"
        );
        // ...and not a record among the others.
        let keys: Vec<String> = store
            .records("")
            .await
            .unwrap()
            .into_iter()
            .map(|(k, _)| k)
            .collect();
        assert_eq!(keys, ["counters/*"]);
    }

    #[test]
    fn a_demoted_primary_is_told_from_other_errors() {
        use ::redis::ServerErrorKind;
        let readonly = RedisError::from((
            ErrorKind::Server(ServerErrorKind::ReadOnly),
            "You can't write against a read only replica.",
        ));
        assert!(is_demoted(&readonly), "{readonly:?}");
        let master_down = RedisError::from((
            ErrorKind::Server(ServerErrorKind::MasterDown),
            "Link with MASTER is down",
        ));
        assert!(is_demoted(&master_down), "{master_down:?}");
        // Inside a script the error arrives as the script's.
        let in_script = RedisError::from((
            ErrorKind::Server(ServerErrorKind::ResponseError),
            "script failed",
            "READONLY You can't write against a read only replica. script: abc".to_owned(),
        ));
        assert!(is_demoted(&in_script), "{in_script:?}");
        let wrongtype = RedisError::from((
            ErrorKind::Server(ServerErrorKind::ResponseError),
            "WRONGTYPE Operation against a key holding the wrong kind of value",
        ));
        assert!(!is_demoted(&wrongtype));
        assert!(!is_demoted(&RedisError::from(std::io::Error::new(
            std::io::ErrorKind::ConnectionRefused,
            "refused"
        ))));
    }

    #[test]
    fn sentinel_and_cluster_urls_are_redacted_and_checked_before_connecting() {
        assert_eq!(
            redact_url("redis+sentinel://u:secret@h1:26379,h2:26379/m/1"),
            "redis+sentinel://u:***@h1:26379,h2:26379/m/1"
        );
        let problem = RedisConfig {
            key_prefix: "gg:".to_owned(),
            ..RedisConfig::new("redis+cluster://:secret@h1:7000")
        }
        .check()
        .unwrap_err();
        assert_eq!(problem.field, "key_prefix");
        let problem = RedisConfig::new("redis+cluster://:secret@h1:x")
            .check()
            .unwrap_err();
        assert_eq!(
            problem.to_string(),
            "url: `redis+cluster://:***@h1:x`: `h1:x` is not host[:port]"
        );
    }

    /// A Sentinel store whose sentinels cannot be reached starts degraded (as a single server
    /// that cannot be reached does) and fails calls at once, naming what it waits for.
    #[tokio::test]
    async fn a_sentinel_store_without_sentinels_starts_degraded() {
        let dead = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = dead.local_addr().unwrap().port();
        drop(dead);
        let store = RedisStore::connect(RedisConfig::new(format!(
            "redis+sentinel://127.0.0.1:{port}/m"
        )))
        .await
        .expect("a store, degraded");
        assert!(store.health().degraded);
        assert_eq!(store.health().invalidation, Some("disconnected"));
        let err = store.lookup("ips", "10.0.0.1").await.unwrap_err();
        assert!(matches!(err, StoreError::Unavailable { .. }), "{err:?}");
    }

    #[test]
    fn passwords_are_redacted() {
        assert_eq!(
            redact_url("redis://127.0.0.1:6379/0"),
            "redis://127.0.0.1:6379/0"
        );
        assert_eq!(
            redact_url("redis://:secret@host:6379/2"),
            "redis://:***@host:6379/2"
        );
        assert_eq!(
            redact_url("rediss://user:p%40ss@host/1"),
            "rediss://user:***@host/1"
        );
        assert_eq!(redact_url("redis://user@host"), "redis://user@host");
        assert_eq!(
            redact_url("redis+unix:///run/redis.sock?db=1&pass=x&user=u"),
            "redis+unix:///run/redis.sock?db=1&pass=***&user=u"
        );
    }

    #[test]
    fn expiry_rounds_up_and_past_is_none() {
        let now = SystemTime::now();
        assert_eq!(millis_until(now + Duration::from_micros(1), now), Some(1));
        assert_eq!(
            millis_until(now + Duration::from_millis(1500), now),
            Some(1500)
        );
        assert_eq!(millis_until(now, now), None);
        assert_eq!(millis_until(now - Duration::from_secs(1), now), None);

        assert_eq!(ttl_millis(Duration::ZERO), None);
        assert_eq!(ttl_millis(Duration::from_nanos(1)), Some(1));
        assert_eq!(ttl_millis(Duration::from_millis(10_000)), Some(10_000));
        let longest = u64::try_from(TTL_MAX.as_millis()).unwrap();
        assert_eq!(ttl_millis(Duration::MAX), Some(longest));
    }
}
