//! What only the Redis store does, against a real `redis-server`: its key layout (readable with
//! redis-cli), invalidation of cached lookups by writes from any client, the fallbacks when the
//! server lacks client tracking or RESP3, and outages (killed, restarted, hanging, paused). The
//! contract every store keeps is in [`super::contract`].

use super::{lookups_fail_fast, next_change, redis_config, redis_store, subscribed, v};
use crate::support::{equals, eventually, patient, HangingServer, RedisServer};
use graygate::store::{
    CacheConfig, CachedStore, Change, Entry, HistoryRetention, InvalidationMode, RedisConfig,
    RedisStore, Store, StoreError,
};
use std::sync::Arc;
use std::time::{Duration, Instant};

async fn connect(server: &RedisServer) -> RedisStore {
    RedisStore::connect(redis_config(server))
        .await
        .expect("connect")
}

#[tokio::test]
async fn the_policy_is_a_hash_that_operators_can_read() {
    let server = RedisServer::start().await;
    let store = connect(&server).await;
    assert_eq!(store.save_policy("{\"v\":1}", Some(0)).await.unwrap(), 1);
    assert_eq!(store.save_policy("{\"v\":2}", None).await.unwrap(), 2);
    // The document is a hash that operators can read with redis-cli.
    assert_eq!(server.cli(&["HGET", "graygate:policy", "revision"]), "2");

    // A foreign value under the policy key is reported, not misread.
    server.cli(&["DEL", "graygate:policy"]);
    server.cli(&["SET", "graygate:policy", "not a hash"]);
    let err = store.load_policy().await.unwrap_err();
    assert!(matches!(err, StoreError::BadData { .. }), "{err:?}");
    assert!(err.to_string().contains("graygate:policy"), "{err}");
}

/// The history is a sorted set by revision that operators can read, with its size in the policy
/// hash; a history kept as a list (newest first) by an older graygate is turned into it by the
/// first read, records and size kept.
#[tokio::test]
async fn the_history_is_a_sorted_set_and_an_old_list_is_upgraded() {
    let server = RedisServer::start().await;
    let store = connect(&server).await;
    // As an older graygate left it: a list, newest first, records starting with their revision
    // (and one that does not, found by decoding it).
    let old =
        |rev: u64| format!(r#"{{"revision":{rev},"actor":"alice","before":{{}},"after":{{}}}}"#);
    let odd = r#"{"actor":"bob","revision":3}"#;
    server.cli(&["HSET", "graygate:policy", "revision", "3", "policy", "{}"]);
    server.cli(&["RPUSH", "graygate:history", odd, &old(2), &old(1)]);

    let history = store.load_history(None, 10).await.unwrap();
    let revisions: Vec<u64> = history.iter().map(|r| r.revision).collect();
    assert_eq!(revisions, [3, 2, 1]);
    assert_eq!(history[0].json, odd);
    assert_eq!(history[1].json, old(2));
    assert_eq!(server.cli(&["TYPE", "graygate:history"]), "zset");
    let bytes = (odd.len() + old(2).len() + old(1).len()).to_string();
    assert_eq!(
        server.cli(&["HGET", "graygate:policy", "history_bytes"]),
        bytes
    );

    // Writes go on from there, the size kept up to date and the bound applied.
    let keep = HistoryRetention {
        keep: 2,
        max_bytes: 1 << 20,
    };
    let record = r#"{"revision":4,"actor":"carol"}"#;
    assert_eq!(
        store
            .save_policy_recorded("{}", 3, record, keep)
            .await
            .unwrap(),
        4
    );
    assert_eq!(server.cli(&["ZCARD", "graygate:history"]), "2");
    assert_eq!(server.cli(&["ZSCORE", "graygate:history", record]), "4");
    let bytes = (record.len() + odd.len()).to_string();
    assert_eq!(
        server.cli(&["HGET", "graygate:policy", "history_bytes"]),
        bytes
    );
    // The policy hash reads as before.
    let stored = store.load_policy().await.unwrap().unwrap();
    assert_eq!((stored.revision, stored.json.as_str()), (4, "{}"));
}

#[tokio::test]
async fn lists_live_under_the_key_prefix_with_their_ttl() {
    let server = RedisServer::start().await;
    let store = connect(&server).await;

    store
        .put_entries(
            "ips",
            &[
                Entry::new("10.0.0.2", "gray", None),
                Entry::new("10.0.0.1", "gray", Some(Duration::from_secs(3600))),
            ],
        )
        .await
        .unwrap();
    // Lists without a configured prefix live under <key_prefix>list:<list>:.
    assert_eq!(store.list_prefix("ips"), "graygate:list:ips:");
    assert_eq!(server.cli(&["GET", "graygate:list:ips:10.0.0.2"]), "gray");
    let pttl: i64 = server
        .cli(&["PTTL", "graygate:list:ips:10.0.0.1"])
        .parse()
        .unwrap();
    assert!(pttl > 3_500_000 && pttl <= 3_600_000, "{pttl}");

    // Something else than a string under the list's prefix is not an entry.
    server.cli(&["HSET", "graygate:list:ips:weird", "f", "v"]);
    let listed = store.list_entries("ips").await.unwrap();
    let keys: Vec<&str> = listed.iter().map(|e| e.key.as_str()).collect();
    assert_eq!(keys, ["10.0.0.1", "10.0.0.2"]);
    let err = store.lookup("ips", "weird").await.unwrap_err();
    assert!(matches!(err, StoreError::BadData { .. }), "{err:?}");

    // Expiry is Redis's own: the key is gone from the server, not only from graygate's view.
    store
        .put_entries(
            "ips",
            &[Entry::new(
                "10.0.0.3",
                "short",
                Some(Duration::from_millis(300)),
            )],
        )
        .await
        .unwrap();
    eventually("the 300 ms entry expires", async || {
        equals(server.cli(&["EXISTS", "graygate:list:ips:10.0.0.3"]), "0")
    })
    .within(Duration::from_secs(3))
    .await;
}

#[tokio::test]
async fn the_openresty_layout_reads_keys_as_they_are() {
    let server = RedisServer::start().await;
    let store = connect(&server).await;
    server.cli(&["SET", "TOKEN_abc", "1042"]);
    server.cli(&["SET", "Grayscale_Range", "1000-2000"]);
    assert_eq!(store.lookup("redis", "TOKEN_abc").await.unwrap(), v("1042"));
    assert_eq!(
        store.lookup("redis", "Grayscale_Range").await.unwrap(),
        v("1000-2000")
    );
    assert_eq!(store.lookup("redis", "TOKEN_nobody").await.unwrap(), None);
}

#[tokio::test]
async fn writes_by_any_client_invalidate_cached_lookups_within_100ms() {
    let server = RedisServer::start().await;
    let redis = redis_store(&server).await;
    assert_eq!(redis.invalidation(), InvalidationMode::Tracking);
    let cache = CachedStore::new(
        Arc::new(redis),
        CacheConfig {
            ttl: Duration::from_secs(60),
            negative_ttl: Duration::from_secs(60),
            ..CacheConfig::default()
        },
    );

    // Cached as absent, then set by redis-cli.
    assert_eq!(cache.lookup("redis", "TOKEN_abc").await.unwrap(), None);
    assert_eq!(cache.lookup_local("redis", "TOKEN_abc"), Some(None));
    server.cli(&["SET", "TOKEN_abc", "42"]);
    eventually("the SET is seen", async || {
        equals(cache.lookup("redis", "TOKEN_abc").await.unwrap(), v("42"))
    })
    .within(Duration::from_millis(100))
    .await;

    // Cached as a value, then deleted.
    assert_eq!(cache.lookup_local("redis", "TOKEN_abc"), Some(v("42")));
    server.cli(&["DEL", "TOKEN_abc"]);
    eventually("the DEL is seen", async || {
        equals(cache.lookup("redis", "TOKEN_abc").await.unwrap(), None)
    })
    .within(Duration::from_millis(100))
    .await;

    // Lists under graygate's own prefix are tracked too, and FLUSHALL drops everything.
    assert_eq!(cache.lookup("ips", "10.0.0.1").await.unwrap(), None);
    server.cli(&["SET", "graygate:list:ips:10.0.0.1", "gray"]);
    eventually("the SET under the list prefix is seen", async || {
        equals(cache.lookup("ips", "10.0.0.1").await.unwrap(), v("gray"))
    })
    .within(Duration::from_millis(100))
    .await;
    server.cli(&["FLUSHALL"]);
    eventually("the FLUSHALL is seen", async || {
        equals(cache.lookup("ips", "10.0.0.1").await.unwrap(), None)
    })
    .within(Duration::from_millis(100))
    .await;
}

#[tokio::test]
async fn a_killed_server_fails_fast_and_recovers_by_itself() {
    let mut server = RedisServer::start().await;
    // Seeded before the store connects: the announcement of a write through the store would
    // come back on the subscription at some later moment and drop the cached value this test
    // needs as the last known one.
    server.cli(&["SET", "graygate:list:ips:a", "1"]);
    let redis = Arc::new(redis_store(&server).await);
    let cache = CachedStore::new(
        Arc::clone(&redis) as Arc<dyn Store>,
        CacheConfig {
            ttl: Duration::from_millis(100),
            negative_ttl: Duration::from_millis(100),
            ..CacheConfig::default()
        },
    );
    assert_eq!(cache.lookup("ips", "a").await.unwrap(), v("1"));
    assert!(!redis.health().degraded);
    let mut changes = redis.subscribe();

    server.stop();
    eventually("the store reports degraded", async || {
        redis.health().degraded
    })
    .within(Duration::from_secs(5))
    .await;
    let health = redis.health();
    assert!(
        health.since.is_some() && health.last_error.is_some(),
        "{health:?}"
    );
    assert_eq!(redis.invalidation(), InvalidationMode::Disconnected);
    eventually("the cached value goes stale", async || {
        cache.lookup_local("ips", "a").is_none()
    })
    .within(Duration::from_secs(2))
    .await;

    for i in 0..20 {
        let started = Instant::now();
        let err = redis.lookup("ips", &format!("k{i}")).await.unwrap_err();
        assert!(
            started.elapsed() < patient(Duration::from_millis(300)),
            "{:?}",
            started.elapsed()
        );
        assert!(
            matches!(err, StoreError::Unavailable { store: "redis", .. }),
            "{err:?}"
        );
        // Through the cache: the last known value, at once.
        let started = Instant::now();
        assert_eq!(cache.lookup("ips", "a").await.unwrap(), v("1"));
        assert!(
            started.elapsed() < patient(Duration::from_millis(60)),
            "{:?}",
            started.elapsed()
        );
    }
    assert!(cache.stats().stale_served > 0, "{:?}", cache.stats());

    server.restart().await;
    eventually("the store recovers", async || !redis.health().degraded)
        .within(Duration::from_secs(15))
        .await;
    assert!(redis.health().since.is_some());
    // Everything cached may be stale after a reconnect.
    let change = next_change(&mut changes, Duration::from_secs(2), |c| {
        c != &Change::Reset
    })
    .await;
    assert_eq!(change, Some(Change::Reset));
    // The restarted server is empty.
    assert_eq!(redis.lookup("ips", "a").await.unwrap(), None);
    redis
        .put_entries("ips", &[Entry::new("b", "2", None)])
        .await
        .unwrap();
    assert_eq!(redis.lookup("ips", "b").await.unwrap(), v("2"));
    subscribed(&redis).await;
}

#[tokio::test]
async fn a_hanging_server_never_stalls_a_lookup() {
    let hanging = HangingServer::start();
    let started = Instant::now();
    let redis = RedisStore::connect(RedisConfig::new(format!("redis://{}", hanging.addr())))
        .await
        .expect("an unreachable server starts the store degraded, not failed");
    assert!(
        started.elapsed() < patient(Duration::from_secs(3)),
        "{:?}",
        started.elapsed()
    );
    assert!(redis.health().degraded);
    lookups_fail_fast(&redis).await;
}

#[tokio::test]
async fn a_server_that_stops_answering_is_bounded_then_recovers() {
    let server = RedisServer::start().await;
    let redis = redis_store(&server).await;
    redis
        .put_entries("ips", &[Entry::new("a", "1", None)])
        .await
        .unwrap();

    server.pause().await;
    lookups_fail_fast(&redis).await;
    assert!(redis.health().degraded);

    server.resume();
    eventually("the store recovers", async || !redis.health().degraded)
        .within(Duration::from_secs(15))
        .await;
    assert_eq!(redis.lookup("ips", "a").await.unwrap(), v("1"));
}

#[tokio::test]
async fn configuration_mistakes_fail_connect_with_a_clear_message() {
    let server = RedisServer::start_with(&["--requirepass", "secret"]).await;

    let err = RedisStore::connect(RedisConfig::new(format!(
        "redis://:wrong@127.0.0.1:{}",
        server.port()
    )))
    .await
    .unwrap_err();
    assert!(matches!(err, StoreError::Open { .. }), "{err:?}");
    let message = err.to_string();
    assert!(
        message.contains(&format!("redis://:***@127.0.0.1:{}", server.port())),
        "{message}"
    );
    assert!(!message.contains("wrong"), "the password leaked: {message}");

    let err = RedisStore::connect(RedisConfig::new("http://127.0.0.1:1"))
        .await
        .unwrap_err();
    assert!(err.to_string().contains("invalid Redis URL"), "{err}");

    let store = RedisStore::connect(RedisConfig::new(format!(
        "redis://:secret@127.0.0.1:{}/3",
        server.port()
    )))
    .await
    .expect("password and DB index");
    store
        .put_entries("ips", &[Entry::new("a", "1", None)])
        .await
        .unwrap();
    assert_eq!(
        server.cli(&["-a", "secret", "-n", "3", "GET", "graygate:list:ips:a"]),
        "1"
    );
    subscribed(&store).await;
    assert_eq!(store.invalidation(), InvalidationMode::Tracking);
}

#[tokio::test]
async fn without_client_tracking_keyspace_notifications_are_used() {
    let server = RedisServer::start_with(&[
        "--rename-command",
        "CLIENT",
        "",
        "--notify-keyspace-events",
        "KA",
    ])
    .await;
    let redis = redis_store(&server).await;
    assert_eq!(redis.invalidation(), InvalidationMode::KeyspaceEvents);
    let mut changes = redis.subscribe();
    server.cli(&["SET", "TOKEN_x", "1"]);
    let change = next_change(&mut changes, Duration::from_millis(100), |_| false).await;
    assert_eq!(
        change,
        Some(Change::Key {
            list: "redis".into(),
            key: "TOKEN_x".into()
        })
    );
}

#[tokio::test]
async fn without_any_invalidation_the_store_says_the_ttl_bounds_staleness() {
    let server = RedisServer::start_with(&["--rename-command", "CLIENT", ""]).await;
    let a = connect(&server).await;
    let b = redis_store(&server).await;
    assert_eq!(b.invalidation(), InvalidationMode::TtlOnly);
    // Policy changes still travel on the changes channel.
    let mut changes = b.subscribe();
    let revision = a.save_policy("p", None).await.unwrap();
    let change = next_change(&mut changes, Duration::from_millis(100), |_| false).await;
    assert_eq!(change, Some(Change::Policy { revision }));
}

#[tokio::test]
async fn without_resp3_the_subscription_falls_back_to_resp2() {
    // A server without HELLO answers like Redis < 6.
    let server = RedisServer::start_with(&[
        "--rename-command",
        "HELLO",
        "",
        "--notify-keyspace-events",
        "KA",
    ])
    .await;
    let a = connect(&server).await;
    let b = redis_store(&server).await;
    assert_eq!(b.invalidation(), InvalidationMode::KeyspaceEvents);
    let mut changes = b.subscribe();

    let revision = a.save_policy("p", None).await.unwrap();
    let change = next_change(&mut changes, Duration::from_millis(100), |c| {
        matches!(c, Change::Key { .. })
    })
    .await;
    assert_eq!(change, Some(Change::Policy { revision }));

    // The key belongs to list `ips` (and, by its empty prefix, to list `redis`).
    server.cli(&["SET", "graygate:list:ips:10.0.0.9", "1"]);
    let expected = Change::Key {
        list: "ips".into(),
        key: "10.0.0.9".into(),
    };
    let change = next_change(&mut changes, Duration::from_millis(100), |c| c != &expected).await;
    assert_eq!(change, Some(expected));
}

#[tokio::test]
async fn a_tls_url_against_a_plain_server_fails_without_hanging() {
    let server = RedisServer::start().await;
    let started = Instant::now();
    let url = format!("rediss://127.0.0.1:{}", server.port());
    match RedisStore::connect(RedisConfig::new(url)).await {
        Ok(store) => {
            assert!(store.health().degraded);
            assert!(store.lookup("ips", "a").await.is_err());
        }
        Err(e) => assert!(matches!(e, StoreError::Open { .. }), "{e:?}"),
    }
    assert!(
        started.elapsed() < patient(Duration::from_secs(3)),
        "{:?}",
        started.elapsed()
    );
}
