//! Real `redis-server` and `memcached` with the two original designs' data, written by plain
//! clients exactly as their operators do, routed by the real `graygate run`; outages in the
//! middle of load; two instances sharing one Redis.

use crate::support::*;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// An `app` service: `prod` is stable, `gray` the other version.
fn app(prod: &Backend, gray: &Backend) -> GatewayBuilder {
    gateway()
        .upstream("prod", prod)
        .upstream("gray", gray)
        .route(route("app"))
}

pub(crate) fn app_service() -> Service {
    service("app")
        .stable("prod", "prod")
        .version("gray", "gray")
}

/// The nginx + lua + memcached design: key = client IP, value "1" -> gray.
pub(crate) fn memcached_design(
    store: impl Into<graygate::config::file::StoreFile>,
    prod: &Backend,
    gray: &Backend,
) -> GatewayBuilder {
    app(prod, gray)
        .store(store)
        .cache_ttl(Duration::from_millis(200))
        .trusted_proxies(["127.0.0.0/8"])
        .original_client_ip()
        .service(app_service().rule(
            "ip-flag",
            "gray",
            client_ip().lookup("gray_ips").equals("1"),
        ))
}

/// The OpenResty + Redis design: TOKEN -> TOKEN_<token> -> uid; idStart < uid < idEnd -> gray.
pub(crate) fn redis_design(
    store: impl Into<graygate::config::file::StoreFile>,
    prod: &Backend,
    gray: &Backend,
    service: Service,
) -> GatewayBuilder {
    app(prod, gray)
        .store(store)
        .list_prefix("redis", "")
        .cache_ttl(Duration::from_secs(5))
        .service(
            service.rule(
                "grayscale-range",
                "gray",
                header("TOKEN")
                    .lookup_key("redis", "TOKEN_{}")
                    .range_from_exclusive("redis", "Grayscale_Range"),
            ),
        )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memcached_ip_flags_set_by_a_plain_client_route_with_ttls_honored() {
    let (prod, gray) = (backend("prod").await, backend("gray").await);
    let mc = MemcachedServer::start().await;
    assert!(mc
        .raw("set 10.0.0.7 0 0 1\r\n1\r\n", "\r\n")
        .starts_with("STORED"));
    assert!(mc
        .raw("set 10.0.0.9 0 0 1\r\n0\r\n", "\r\n")
        .starts_with("STORED"));
    let gg = memcached_design(&mc, &prod, &gray).start().await;
    let mut c = gg.client();

    // The original's client IP: X-Real-IP, else X-Forwarded-For, else the peer.
    c.assert_versions(&[
        (&[("X-Real-IP", "10.0.0.7")], "gray"),
        (&[("X-Forwarded-For", "10.0.0.7")], "gray"),
        (
            &[("X-Real-IP", "10.0.0.8"), ("X-Forwarded-For", "10.0.0.7")],
            "prod",
        ),
        // Value 0 is not a gray flag.
        (&[("X-Real-IP", "10.0.0.9")], "prod"),
        (&[], "prod"),
    ])
    .await;

    // `set` and `delete` by hand take effect within the cache TTL.
    mc.raw("set 10.0.0.8 0 0 1\r\n1\r\n", "\r\n");
    gg.eventually_answers(&[("X-Real-IP", "10.0.0.8")], "gray")
        .within(Duration::from_secs(2))
        .await;
    mc.raw("delete 10.0.0.7\r\n", "\r\n");
    gg.eventually_answers(&[("X-Real-IP", "10.0.0.7")], "prod")
        .within(Duration::from_secs(2))
        .await;

    // A key's own TTL (memcached exptime, 3 s) is honored. memcached counts whole seconds, so
    // a 1 s key can be gone before the first request on a busy machine.
    mc.raw("set 10.0.0.5 0 3 1\r\n1\r\n", "\r\n");
    assert_eq!(c.version(&[("X-Real-IP", "10.0.0.5")]).await, "gray");
    gg.eventually_answers(&[("X-Real-IP", "10.0.0.5")], "prod")
        .within(Duration::from_secs(6))
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_token_range_layout_routes_and_follows_redis_cli_within_100ms() {
    let (prod, gray) = (backend("prod").await, backend("gray").await);
    let redis = RedisServer::start().await;
    redis.cli(&["set", "Grayscale_Range", r#"{"idStart":1,"idEnd":5000}"#]);
    redis.cli(&["set", "TOKEN_abc", "1234"]);
    redis.cli(&["set", "TOKEN_def", "9000"]);
    redis.cli(&["set", "TOKEN_edge", "5000"]);
    redis.cli(&["set", "TOKEN_junk", "12ab"]);
    let gg = redis_design(&redis, &prod, &gray, app_service())
        .start()
        .await;
    let mut c = gg.client();

    c.assert_versions(&[
        (&[("TOKEN", "abc")], "gray"),
        (&[("TOKEN", "def")], "prod"),
        // idEnd is excluded, as in the original.
        (&[("TOKEN", "edge")], "prod"),
        (&[("TOKEN", "unknown")], "prod"),
        // A non-numeric id.
        (&[("TOKEN", "junk")], "prod"),
        // No TOKEN header: stable, never a 5xx (`version` asserts the 200).
        (&[], "prod"),
    ])
    .await;

    // Editing the JSON with redis-cli moves users within 100 ms (the cache TTL here is 5 s: only
    // the push invalidation can make it); so does a token's user id changed by any client.
    // (key, its new value or `None` for DEL, the TOKEN asked for, the version it gets then)
    #[rustfmt::skip]
    let edits: &[(&str, Option<&str>, &str, &str)] = &[
        ("Grayscale_Range", Some(r#"{"idStart":1,"idEnd":1000}"#),     "abc", "prod"),
        ("Grayscale_Range", Some(r#"{"idStart":"1","idEnd":"5000"}"#), "abc", "gray"),
        ("Grayscale_Range", Some("not json"),                          "abc", "prod"),
        ("Grayscale_Range", Some(r#"{"idStart":1}"#),                  "abc", "prod"),
        ("Grayscale_Range", Some(r#"{"idStart":1,"idEnd":5000}"#),     "abc", "gray"),
        ("Grayscale_Range", None,                                      "abc", "prod"),
        ("Grayscale_Range", Some(r#"{"idStart":1,"idEnd":5000}"#),     "abc", "gray"),
        ("TOKEN_def",       Some("42"),                                "def", "gray"),
        ("TOKEN_def",       None,                                      "def", "prod"),
    ];
    for (key, value, token, want) in edits {
        match value {
            Some(value) => redis.cli(&["set", key, value]),
            None => redis.cli(&["del", key]),
        };
        gg.eventually_answers(&[("TOKEN", token)], want)
            .within(Duration::from_millis(100))
            .await;
    }
}

/// Sends `count` requests from 4 clients, each with `headers`, while `during` runs; returns
/// (answered 200, failed, the versions that answered).
async fn load_while<F: std::future::Future<Output = ()>>(
    addr: SocketAddr,
    headers: &'static [(&'static str, &'static str)],
    count: usize,
    during: F,
) -> (usize, usize, Vec<String>) {
    let ok = Arc::new(AtomicUsize::new(0));
    let bad = Arc::new(AtomicUsize::new(0));
    let per = count / 4;
    let deadline = Instant::now() + patient(Duration::from_secs(60));
    let workers: Vec<_> = (0..4)
        .map(|_| {
            let (ok, bad) = (ok.clone(), bad.clone());
            tokio::spawn(async move {
                let mut c = Client::new(addr);
                let mut versions = Vec::new();
                for _ in 0..per {
                    if Instant::now() > deadline {
                        break;
                    }
                    let r = c.get(headers).await;
                    if r.status == 200 {
                        ok.fetch_add(1, Ordering::Relaxed);
                        versions.push(r.body.trim().to_string());
                    } else {
                        bad.fetch_add(1, Ordering::Relaxed);
                    }
                }
                versions
            })
        })
        .collect();
    during.await;
    let mut versions = Vec::new();
    for w in workers {
        versions.extend(w.await.expect("load worker"));
    }
    (
        ok.load(Ordering::Relaxed),
        bad.load(Ordering::Relaxed),
        versions,
    )
}

/// Waits until the backends have answered `more` requests beyond `from`.
async fn served(backends: [&Backend; 2], from: usize, more: usize) -> usize {
    let total = || backends.iter().map(|b| b.requests()).sum::<usize>();
    eventually(format!("{more} more requests are served"), async || {
        let now = total();
        if now > from + more {
            Ok(now)
        } else {
            Err(now)
        }
    })
    .within(Duration::from_secs(30))
    .await
}

/// Kills `server` once the backends have served 300 more requests, and starts it again once
/// they have served 1000 more: an outage in the middle of the load.
async fn outage<K: Kind>(server: &mut Server<K>, backends: [&Backend; 2]) {
    let total = || backends.iter().map(|b| b.requests()).sum::<usize>();
    served(backends, total(), 300).await;
    server.stop();
    served(backends, total(), 1000).await;
    server.restart().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_killed_and_restarted_under_load_fails_no_request() {
    let (prod, gray) = (backend("prod").await, backend("gray").await);
    let mut redis = RedisServer::start().await;
    redis.cli(&["set", "Grayscale_Range", r#"{"idStart":1,"idEnd":5000}"#]);
    redis.cli(&["set", "TOKEN_abc", "1234"]);
    let gg = redis_design(&redis, &prod, &gray, app_service())
        .start()
        .await;
    assert_eq!(gg.client().version(&[("TOKEN", "abc")]).await, "gray");

    let redis_down = outage(&mut redis, [&prod, &gray]);
    let (ok, bad, versions) = load_while(gg.addr, &[("TOKEN", "abc")], 4000, redis_down).await;
    assert_eq!(bad, 0, "failed requests while Redis was down");
    assert_eq!(ok, 4000);
    assert!(versions.iter().all(|v| v == "gray" || v == "prod"));
    // The log says it once, each way.
    let log = gg.log_text();
    let degraded = log.lines().filter(|l| l.contains("degraded")).count();
    assert!(degraded >= 1, "the outage is logged:\n{log}");
    assert!(
        degraded <= 4,
        "the outage is logged once, not per request ({degraded} lines):\n{log}"
    );
    // Back to normal by itself. The restarted Redis has no persistence here: seed it again, as
    // an operator would.
    redis.cli(&["set", "Grayscale_Range", r#"{"idStart":1,"idEnd":5000}"#]);
    redis.cli(&["set", "TOKEN_abc", "1234"]);
    gg.eventually_answers(&[("TOKEN", "abc")], "gray")
        .within(Duration::from_secs(15))
        .await;
    let log = gg.log_text();
    assert!(
        log.lines()
            .filter(|l| l.contains("store recovered"))
            .count()
            >= 1,
        "the recovery is logged:\n{log}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hanging_store_never_stalls_a_request() {
    let (prod, gray) = (backend("prod").await, backend("gray").await);
    let hanging = HangingServer::start();
    // Both designs pointed at a store that accepts connections and never answers.
    for design in [
        memcached_design(memcached_store(hanging.addr()), &prod, &gray),
        redis_design(
            redis_store(format!("redis://{}", hanging.addr())),
            &prod,
            &gray,
            app_service(),
        ),
    ] {
        let gg = design.start().await;
        let mut c = gg.client();
        for _ in 0..20 {
            let started = Instant::now();
            let r = c.get(&[("X-Real-IP", "10.0.0.7"), ("TOKEN", "abc")]).await;
            assert_eq!(r.status, 200);
            assert_eq!(r.body, "prod\n");
            assert!(
                started.elapsed() < patient(Duration::from_secs(2)),
                "a request waited {:?}",
                started.elapsed()
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memcached_killed_and_restarted_under_load_fails_no_request() {
    let (prod, gray) = (backend("prod").await, backend("gray").await);
    let mut mc = MemcachedServer::start().await;
    mc.raw("set 10.0.0.7 0 0 1\r\n1\r\n", "\r\n");
    let gg = memcached_design(&mc, &prod, &gray).start().await;
    let memcached_down = outage(&mut mc, [&prod, &gray]);
    let (ok, bad, _) =
        load_while(gg.addr, &[("X-Real-IP", "10.0.0.7")], 4000, memcached_down).await;
    assert_eq!((ok, bad), (4000, 0));
    // memcached restarted empty: the operator sets the flag again and it counts.
    mc.raw("set 10.0.0.7 0 0 1\r\n1\r\n", "\r\n");
    gg.eventually_answers(&[("X-Real-IP", "10.0.0.7")], "gray")
        .within(Duration::from_secs(15))
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_instances_on_one_redis_agree_and_see_each_others_changes_within_100ms() {
    let (prod, gray) = (backend("prod").await, backend("gray").await);
    let redis = RedisServer::start().await;
    let design = redis_design(
        &redis,
        &prod,
        &gray,
        app_service().split("gray", 30.0, by_header("X-User")),
    );
    let mut a = design.clone().start().await;
    let b = design.start().await;
    let (mut ca, mut cb) = (a.client(), b.client());
    let mut grays = 0;
    for id in 0..300 {
        let user = format!("user-{id}");
        let va = ca.version(&[("X-User", &user)]).await;
        assert_eq!(
            va,
            cb.version(&[("X-User", &user)]).await,
            "both instances agree on {user}"
        );
        grays += usize::from(va == "gray");
    }
    assert!(
        (40..=140).contains(&grays),
        "about 30% of 300 on gray, got {grays}"
    );

    // A change applied through A (SIGHUP: A writes it to Redis and publishes it) is in force on B
    // within 100 ms of A having it.
    a.change_policy(|policy| {
        let split = policy.services[0].split.as_mut().expect("a split");
        split.weights.insert("gray".into(), 100.0);
    });
    let (mut a_at, mut b_at) = (None, None);
    let (a_at, b_at) = eventually("both instances apply the change", async || {
        if a_at.is_none() && ca.version(&[("X-User", "nobody")]).await == "gray" {
            a_at = Some(Instant::now());
        }
        if b_at.is_none() && cb.version(&[("X-User", "nobody")]).await == "gray" {
            b_at = Some(Instant::now());
        }
        match (a_at, b_at) {
            (Some(a), Some(b)) => Ok((a, b)),
            seen => Err(format!(
                "A {:?} B {:?}; A's log:\n{}",
                seen.0,
                seen.1,
                a.log_text()
            )),
        }
    })
    .await;
    let lag = b_at.saturating_duration_since(a_at);
    assert!(
        lag < patient(Duration::from_millis(100)),
        "B followed A after {lag:?}"
    );
}
