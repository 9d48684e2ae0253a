//! What only the memcached store does, against a real `memcached`: lookups of keys written by
//! other clients, keys memcached rejects, connection reuse, and outages (killed, restarted,
//! hanging, paused). The contract every store keeps is in [`super::contract`].

use super::{lookups_fail_fast, memcached_store, next_change, v};
use crate::support::{eventually, patient, HangingServer, MemcachedServer};
use graygate::store::Change;
use graygate::store::{EmbeddedStore, Entry, MemcachedConfig, MemcachedStore, Store, StoreError};
use std::sync::Arc;
use std::time::{Duration, Instant};

struct Setup {
    store: MemcachedStore,
    /// Keeps the embedded store's directory alive.
    _dir: tempfile::TempDir,
}

async fn connect_to(addr: String) -> Setup {
    let (store, dir) = memcached_store(addr).await;
    Setup { store, _dir: dir }
}

async fn connect(server: &MemcachedServer) -> Setup {
    connect_to(server.addr()).await
}

#[tokio::test]
async fn keys_set_by_other_clients_are_seen() {
    let server = MemcachedServer::start().await;
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
async fn keys_memcached_rejects_are_absent_without_a_round_trip() {
    let mut server = MemcachedServer::start().await;
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
async fn connections_are_reused() {
    let server = MemcachedServer::start().await;
    let Setup { store, .. } = connect(&server).await;
    server.raw("set k 0 0 1\r\nv\r\n", "\r\n");
    store.lookup("ips", "k").await.unwrap();
    let before = server.stat("total_connections");
    for _ in 0..200 {
        assert_eq!(store.lookup("ips", "k").await.unwrap(), v("v"));
    }
    // `stat` itself opens one connection.
    let opened = server.stat("total_connections") - before;
    assert!(opened <= 2, "{opened} connections opened for 200 lookups");
}

#[tokio::test]
async fn a_killed_server_fails_fast_and_recovers_by_itself() {
    let mut server = MemcachedServer::start().await;
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
            started.elapsed() < patient(Duration::from_millis(300)),
            "{:?}",
            started.elapsed()
        );
    }
    // The first lookup may still get a pooled connection's error; all of them fail.
    assert_eq!(failed, 20);
    let health = store.health();
    assert!(health.degraded && health.last_error.is_some(), "{health:?}");

    server.restart().await;
    eventually("the store recovers", async || !store.health().degraded)
        .within(Duration::from_secs(15))
        .await;
    let change = next_change(&mut changes, Duration::from_secs(2), |_| false).await;
    assert_eq!(change, Some(Change::Reset));
    server.raw("set k 0 0 2\r\nv2\r\n", "\r\n");
    assert_eq!(store.lookup("ips", "k").await.unwrap(), v("v2"));
}

#[tokio::test]
async fn a_hanging_server_never_stalls_a_lookup() {
    let hanging = HangingServer::start();
    let Setup { store, .. } = connect_to(hanging.addr()).await;
    lookups_fail_fast(&store).await;
    assert!(store.health().degraded);
}

#[tokio::test]
async fn a_server_that_stops_answering_is_bounded_then_recovers() {
    let server = MemcachedServer::start().await;
    let Setup { store, .. } = connect(&server).await;
    server.raw("set k 0 0 1\r\nv\r\n", "\r\n");
    assert_eq!(store.lookup("ips", "k").await.unwrap(), v("v"));

    server.pause().await;
    for i in 0..10 {
        let started = Instant::now();
        let result = store.lookup("ips", "k").await;
        assert!(result.is_err(), "lookup {i} after the pause: {result:?}");
        assert!(
            started.elapsed() < patient(Duration::from_millis(300)),
            "{:?}",
            started.elapsed()
        );
    }
    assert!(store.health().degraded);
    server.resume();
    eventually("the store recovers", async || !store.health().degraded)
        .within(Duration::from_secs(15))
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
        ..MemcachedConfig::default()
    };
    let err = MemcachedStore::connect(config, policy).await.unwrap_err();
    assert!(err.to_string().contains("host:port"), "{err}");
}
