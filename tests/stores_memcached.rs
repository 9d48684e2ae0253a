//! The memcached store against a real `memcached`: lookups of keys written by other clients, TTLs,
//! keys memcached rejects, the policy kept in the embedded store, connection reuse, and outages
//! (killed, restarted, hanging).

#[path = "support/stores.rs"]
mod stores;

use graygate::store::{
    Change, EmbeddedStore, Entry, MemcachedConfig, MemcachedStore, Store, StoreError,
};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};
use stores::{eventually, HangingServer, MemcachedServer};

struct Setup {
    store: MemcachedStore,
    /// Keeps the embedded store's directory alive.
    _dir: tempfile::TempDir,
}

async fn connect_to(addr: String) -> Setup {
    let dir = tempfile::tempdir().unwrap();
    let policy = Arc::new(EmbeddedStore::open(dir.path()).unwrap());
    let config = MemcachedConfig {
        servers: vec![addr],
        lists: HashMap::from([("tokens".to_owned(), "TOKEN_".to_owned())]),
    };
    let store = MemcachedStore::connect(config, policy)
        .await
        .expect("connect");
    Setup { store, _dir: dir }
}

async fn connect(server: &MemcachedServer) -> Setup {
    connect_to(server.addr()).await
}

fn v(s: &str) -> Option<Arc<str>> {
    Some(Arc::from(s))
}

/// A counter from memcached's `stats`.
fn stat(server: &MemcachedServer, name: &str) -> u64 {
    let stats = server.raw("stats\r\n", "END\r\n");
    stats
        .lines()
        .find_map(|line| {
            let rest = line
                .strip_prefix("STAT ")?
                .strip_prefix(name)?
                .strip_prefix(' ')?;
            rest.trim().parse().ok()
        })
        .unwrap_or_else(|| panic!("no stat {name} in {stats}"))
}

#[tokio::test]
async fn keys_set_by_other_clients_are_seen() {
    let server = MemcachedServer::start();
    let Setup { store, .. } = connect(&server).await;
    assert_eq!(store.kind(), "memcached");

    assert_eq!(
        server.raw("set 10.0.0.7 0 2 1\r\n1\r\n", "\r\n"),
        "STORED\r\n"
    );
    assert_eq!(store.lookup("ips", "10.0.0.7").await.unwrap(), v("1"));
    assert_eq!(store.lookup("ips", "10.0.0.8").await.unwrap(), None);

    // A list with a prefix: `get TOKEN_<token>`.
    server.raw("set TOKEN_abc 0 0 4\r\n1042\r\n", "\r\n");
    assert_eq!(store.key_of("tokens", "abc"), "TOKEN_abc");
    assert_eq!(store.lookup("tokens", "abc").await.unwrap(), v("1042"));
}

#[tokio::test]
async fn entries_written_through_the_store_and_their_ttl() {
    let server = MemcachedServer::start();
    let Setup { store, .. } = connect(&server).await;
    let mut changes = store.subscribe();

    store
        .put_entries(
            "ips",
            &[
                Entry::new("10.0.0.1", "gray", None),
                Entry::new("10.0.0.2", "brief", Some(Duration::from_secs(1))),
            ],
        )
        .await
        .unwrap();
    assert_eq!(
        changes.try_recv().unwrap(),
        Change::List { list: "ips".into() }
    );
    assert!(server.raw("get 10.0.0.1\r\n", "END\r\n").contains("gray"));
    assert_eq!(store.lookup("ips", "10.0.0.2").await.unwrap(), v("brief"));

    let deadline = Instant::now() + Duration::from_secs(4);
    while store.lookup("ips", "10.0.0.2").await.unwrap().is_some() {
        assert!(Instant::now() < deadline, "the 1 s entry did not expire");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(store.lookup("ips", "10.0.0.1").await.unwrap(), v("gray"));

    let removed = store
        .remove_entries(
            "ips",
            &["10.0.0.1".into(), "10.0.0.2".into(), "nope".into()],
        )
        .await
        .unwrap();
    assert_eq!(removed, 1);
    assert_eq!(store.lookup("ips", "10.0.0.1").await.unwrap(), None);

    let err = store.list_entries("ips").await.unwrap_err();
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
    assert!(
        err.to_string().contains("cannot list the keys of list ips"),
        "{err}"
    );
}

#[tokio::test]
async fn keys_memcached_rejects_are_absent_without_a_round_trip() {
    let mut server = MemcachedServer::start();
    let Setup { store, .. } = connect(&server).await;
    let long = "k".repeat(300);
    for key in ["with space", "line\r\nbreak", "tab\t", long.as_str()] {
        assert_eq!(store.lookup("ips", key).await.unwrap(), None, "{key:?}");
    }
    let err = store
        .put_entries("ips", &[Entry::new("with space", "v", None)])
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::BadData { .. }), "{err:?}");
    assert!(
        err.to_string()
            .contains("without spaces or control characters"),
        "{err}"
    );

    // No round trip: the answer does not depend on the server.
    server.stop();
    assert_eq!(store.lookup("ips", "with space").await.unwrap(), None);
}

#[tokio::test]
async fn the_policy_lives_in_the_policy_store() {
    let server = MemcachedServer::start();
    let Setup { store, .. } = connect(&server).await;
    let mut changes = store.subscribe();
    assert_eq!(store.load_policy().await.unwrap(), None);
    assert_eq!(store.save_policy("{}", Some(0)).await.unwrap(), 1);
    let err = store.save_policy("{}", Some(0)).await.unwrap_err();
    assert!(
        matches!(
            err,
            StoreError::Conflict {
                expected: 0,
                actual: 1
            }
        ),
        "{err:?}"
    );
    assert_eq!(store.load_policy().await.unwrap().unwrap().revision, 1);
    let change = tokio::time::timeout(Duration::from_secs(1), changes.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(change, Change::Policy { revision: 1 });
}

#[tokio::test]
async fn connections_are_reused() {
    let server = MemcachedServer::start();
    let Setup { store, .. } = connect(&server).await;
    server.raw("set k 0 0 1\r\nv\r\n", "\r\n");
    store.lookup("ips", "k").await.unwrap();
    let before = stat(&server, "total_connections");
    for _ in 0..200 {
        assert_eq!(store.lookup("ips", "k").await.unwrap(), v("v"));
    }
    // `stat` itself opens one connection.
    let opened = stat(&server, "total_connections") - before;
    assert!(opened <= 2, "{opened} connections opened for 200 lookups");
}

#[tokio::test]
async fn a_killed_server_fails_fast_and_recovers_by_itself() {
    let mut server = MemcachedServer::start();
    let Setup { store, .. } = connect(&server).await;
    server.raw("set k 0 0 1\r\nv\r\n", "\r\n");
    assert_eq!(store.lookup("ips", "k").await.unwrap(), v("v"));
    assert!(!store.health().degraded);
    let mut changes = store.subscribe();

    server.stop();
    let mut failed = 0;
    for i in 0..20 {
        let started = Instant::now();
        if store.lookup("ips", &format!("k{i}")).await.is_err() {
            failed += 1;
        }
        assert!(
            started.elapsed() < Duration::from_millis(300),
            "{:?}",
            started.elapsed()
        );
    }
    // The first lookup may still get a pooled connection's error; all of them fail.
    assert_eq!(failed, 20);
    let health = store.health();
    assert!(health.degraded && health.last_error.is_some(), "{health:?}");

    server.restart();
    eventually("the store recovers", Duration::from_secs(15), || {
        !store.health().degraded
    })
    .await;
    let change = tokio::time::timeout(Duration::from_secs(2), changes.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(change, Change::Reset);
    server.raw("set k 0 0 2\r\nv2\r\n", "\r\n");
    assert_eq!(store.lookup("ips", "k").await.unwrap(), v("v2"));
}

#[tokio::test]
async fn a_hanging_server_never_stalls_a_lookup() {
    let hanging = HangingServer::start();
    let Setup { store, .. } = connect_to(hanging.addr()).await;
    for _ in 0..10 {
        let started = Instant::now();
        assert!(store.lookup("ips", "a").await.is_err());
        assert!(
            started.elapsed() < Duration::from_millis(300),
            "{:?}",
            started.elapsed()
        );
    }
    assert!(store.health().degraded);
}

#[tokio::test]
async fn a_server_that_stops_answering_is_bounded_then_recovers() {
    let mut server = MemcachedServer::start();
    let Setup { store, .. } = connect(&server).await;
    server.raw("set k 0 0 1\r\nv\r\n", "\r\n");
    assert_eq!(store.lookup("ips", "k").await.unwrap(), v("v"));

    server.pause();
    for i in 0..10 {
        let started = Instant::now();
        let result = store.lookup("ips", "k").await;
        assert!(result.is_err(), "lookup {i} after the pause: {result:?}");
        assert!(
            started.elapsed() < Duration::from_millis(300),
            "{:?}",
            started.elapsed()
        );
    }
    assert!(store.health().degraded);
    server.resume();
    eventually("the store recovers", Duration::from_secs(15), || {
        !store.health().degraded
    })
    .await;
    assert_eq!(store.lookup("ips", "k").await.unwrap(), v("v"));
}

#[tokio::test]
async fn configuration_mistakes_fail_connect() {
    let dir = tempfile::tempdir().unwrap();
    let policy: Arc<dyn Store> = Arc::new(EmbeddedStore::open(dir.path()).unwrap());
    let err = MemcachedStore::connect(MemcachedConfig::default(), Arc::clone(&policy))
        .await
        .unwrap_err();
    assert!(err.to_string().contains("no server configured"), "{err}");
    let config = MemcachedConfig {
        servers: vec!["localhost".into()],
        lists: HashMap::new(),
    };
    let err = MemcachedStore::connect(config, policy).await.unwrap_err();
    assert!(err.to_string().contains("host:port"), "{err}");
}
