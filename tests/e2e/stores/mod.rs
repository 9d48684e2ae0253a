//! The stores against real servers: one contract that every store runs ([`contract`]), and the
//! tests of what only one store does (Redis's key layout and invalidation, memcached's key rules,
//! outages of either server).
//!
//! A [`Subject`] is one store under test with the servers and directories it needs, and the
//! [`Capabilities`] the contract checks it against: where a store cannot do something (memcached
//! cannot enumerate a list), the contract checks the documented refusal rather than skipping.

mod contract;
mod memcached;
mod redis;

use crate::support::{patient, MemcachedServer, RedisServer};
use graygate::store::{
    Change, EmbeddedStore, InvalidationMode, MemcachedConfig, MemcachedStore, RedisConfig,
    RedisStore, Store, StoreError,
};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::broadcast;

/// Ten lookups of a store whose server is down or hangs: each fails, and none takes more than
/// 300 ms (the request path must never wait on a store that does not answer).
pub async fn lookups_fail_fast(store: &impl Store) {
    for _ in 0..10 {
        let started = std::time::Instant::now();
        assert!(store.lookup("ips", "a").await.is_err());
        assert!(
            started.elapsed() < patient(Duration::from_millis(300)),
            "{:?}",
            started.elapsed()
        );
    }
}

/// What another graygate instance pointed at the same store shares with the first.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sharing {
    /// Nothing: the store belongs to one process, and a second open fails.
    Exclusive,
    /// The lists only; each instance keeps its own policy, and no change is announced to the
    /// other (memcached: staleness is bounded by the lookup cache's TTL).
    ListsOnly,
    /// Policy, history and lists, with every change announced to every instance.
    Everything,
}

/// What a store can do, as the contract expects it.
#[derive(Debug, Clone, Copy)]
pub struct Capabilities {
    /// [`Store::kind`].
    pub kind: &'static str,
    /// Whether [`Store::list_entries`] enumerates a list (memcached cannot).
    pub enumerate: bool,
    /// Whether each list has its own key space; with memcached, lists without a configured
    /// prefix share one (the original layout: the key is the IP).
    pub separate_lists: bool,
    /// The shortest entry TTL worth testing (memcached counts whole seconds)...
    pub short_ttl: Duration,
    /// ...and how soon after it the entry must be gone.
    pub expired_within: Duration,
    pub sharing: Sharing,
}

/// One store under test, and what keeps its data alive.
pub struct Subject {
    pub store: Arc<dyn Store>,
    pub can: Capabilities,
    backing: Backing,
}

enum Backing {
    Embedded(tempfile::TempDir),
    Redis(RedisServer),
    Memcached {
        server: MemcachedServer,
        /// The first instance's policy store.
        _policy: tempfile::TempDir,
    },
}

/// Another instance of a subject's store, with the directory it needs (memcached's policy).
pub struct Instance {
    pub store: Arc<dyn Store>,
    _dir: Option<tempfile::TempDir>,
}

impl Subject {
    pub async fn embedded() -> Subject {
        let dir = tempfile::tempdir().expect("a temp dir");
        let store = EmbeddedStore::open(dir.path()).expect("open the embedded store");
        Subject {
            store: Arc::new(store),
            can: Capabilities {
                kind: "embedded",
                enumerate: true,
                separate_lists: true,
                short_ttl: Duration::from_millis(300),
                expired_within: Duration::from_secs(3),
                sharing: Sharing::Exclusive,
            },
            backing: Backing::Embedded(dir),
        }
    }

    pub async fn redis() -> Subject {
        let server = RedisServer::start().await;
        let store = redis_store(&server).await;
        Subject {
            store: Arc::new(store),
            can: Capabilities {
                kind: "redis",
                enumerate: true,
                separate_lists: true,
                short_ttl: Duration::from_millis(300),
                expired_within: Duration::from_secs(3),
                sharing: Sharing::Everything,
            },
            backing: Backing::Redis(server),
        }
    }

    pub async fn memcached() -> Subject {
        let server = MemcachedServer::start().await;
        let (store, dir) = memcached_store(server.addr()).await;
        Subject {
            store: Arc::new(store),
            can: Capabilities {
                kind: "memcached",
                enumerate: false,
                separate_lists: false,
                short_ttl: Duration::from_secs(1),
                expired_within: Duration::from_secs(4),
                sharing: Sharing::ListsOnly,
            },
            backing: Backing::Memcached {
                server,
                _policy: dir,
            },
        }
    }

    /// Opens the store again, as a second graygate instance pointed at the same data would.
    pub async fn another_instance(&self) -> Result<Instance, StoreError> {
        Ok(match &self.backing {
            Backing::Embedded(dir) => Instance {
                store: Arc::new(EmbeddedStore::open(dir.path())?),
                _dir: None,
            },
            Backing::Redis(server) => Instance {
                store: Arc::new(redis_store(server).await),
                _dir: None,
            },
            Backing::Memcached { server, .. } => {
                let (store, dir) = memcached_store(server.addr()).await;
                Instance {
                    store: Arc::new(store),
                    _dir: Some(dir),
                }
            }
        })
    }
}

/// The OpenResty layout: list `redis` reads keys as they are (`GET TOKEN_abc`).
pub fn redis_config(server: &RedisServer) -> RedisConfig {
    RedisConfig {
        url: server.url(),
        key_prefix: "graygate:".into(),
        lists: HashMap::from([("redis".to_owned(), String::new())]),
    }
}

/// A Redis store on `server` whose change subscription is up.
pub async fn redis_store(server: &RedisServer) -> RedisStore {
    let store = RedisStore::connect(redis_config(server))
        .await
        .expect("connect");
    subscribed(&store).await;
    store
}

/// Waits until the store's subscription is up, so that notifications from now on arrive.
pub async fn subscribed(store: &RedisStore) {
    crate::support::eventually("the subscription is up", async || {
        store.invalidation() != InvalidationMode::Disconnected
    })
    .within(Duration::from_secs(5))
    .await;
}

/// A memcached store at `addr` with list `tokens` under `TOKEN_`, its policy in an embedded
/// store in the returned directory.
pub async fn memcached_store(addr: String) -> (MemcachedStore, tempfile::TempDir) {
    let dir = tempfile::tempdir().expect("a temp dir");
    let policy = Arc::new(EmbeddedStore::open(dir.path()).expect("open the policy store"));
    let config = MemcachedConfig {
        servers: vec![addr],
        lists: HashMap::from([("tokens".to_owned(), "TOKEN_".to_owned())]),
        ..MemcachedConfig::default()
    };
    let store = MemcachedStore::connect(config, policy)
        .await
        .expect("connect");
    (store, dir)
}

/// `Some(value)`, as lookups answer.
pub fn v(s: &str) -> Option<Arc<str>> {
    Some(Arc::from(s))
}

/// The next change within `within` (stretched by patience), skipping changes that `skip`
/// accepts; `None` if none came.
pub async fn next_change(
    rx: &mut broadcast::Receiver<Change>,
    within: Duration,
    skip: impl Fn(&Change) -> bool,
) -> Option<Change> {
    let end = tokio::time::Instant::now() + patient(within);
    loop {
        match tokio::time::timeout_at(end, rx.recv()).await {
            Ok(Ok(change)) if skip(&change) => continue,
            Ok(Ok(change)) => return Some(change),
            _ => return None,
        }
    }
}
