//! End to end with real `redis-server` and `memcached`: the two original designs' data, written by
//! plain clients exactly as their operators do, routed by the real `graygate run`; outages in the
//! middle of load; two instances sharing one Redis.

#[path = "support/stores.rs"]
mod stores;
mod support;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use stores::{HangingServer, MemcachedServer, RedisServer};
use support::{Backend, Client, Graygate};

fn upstreams(prod: &Backend, gray: &Backend) -> String {
    format!(
        "[[upstreams]]\nname = \"prod\"\nservers = [\"{}\"]\n[[upstreams]]\nname = \"gray\"\nservers = [\"{}\"]\n",
        prod.addr, gray.addr
    )
}

const SERVICE: &str =
    "[policy]\n[[policy.routes]]\nservice = \"app\"\n[[policy.services]]\nname = \"app\"\n\
    stable = \"prod\"\nversions = { prod = \"prod\", gray = \"gray\" }\n";

/// The nginx + lua + memcached design: key = client IP, value "1" -> gray.
fn memcached_config(memcached: &str, prod: &Backend, gray: &Backend) -> String {
    format!(
        "[store]\nkind = \"memcached\"\nservers = [\"{memcached}\"]\n\
         [cache]\nttl = \"200ms\"\nnegative_ttl = \"200ms\"\n\
         [client_ip]\ntrusted_proxies = [\"127.0.0.0/8\"]\nmode = \"original\"\n{}{SERVICE}\
         [[policy.services.rules]]\nname = \"ip-flag\"\nversion = \"gray\"\n\
         when = {{ client_ip = true, lookup = {{ list = \"gray_ips\" }}, equals = \"1\" }}\n",
        upstreams(prod, gray)
    )
}

/// The OpenResty + Redis design: TOKEN -> TOKEN_<token> -> uid; idStart < uid < idEnd -> gray.
fn redis_config(url: &str, prod: &Backend, gray: &Backend, extra_policy: &str) -> String {
    format!(
        "[store]\nkind = \"redis\"\nurl = \"{url}\"\nlists = {{ redis = \"\" }}\n\
         [cache]\nttl = \"5s\"\nnegative_ttl = \"5s\"\n{}{SERVICE}{extra_policy}\
         [[policy.services.rules]]\nname = \"grayscale-range\"\nversion = \"gray\"\n\
         when = {{ header = \"TOKEN\", lookup = {{ list = \"redis\", key = \"TOKEN_{{}}\" }}, \
         range_from = {{ list = \"redis\", key = \"Grayscale_Range\", exclusive = true }} }}\n",
        upstreams(prod, gray)
    )
}

/// Polls `check` until it is true; returns how long that took, or panics after `within`.
async fn within<F, Fut>(what: &str, within: Duration, mut check: F) -> Duration
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let start = Instant::now();
    loop {
        if check().await {
            return start.elapsed();
        }
        assert!(start.elapsed() < within, "{what}: not within {within:?}");
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memcached_ip_flags_set_by_a_plain_client_route_with_ttls_honored() {
    let (prod, gray) = (Backend::start("prod").await, Backend::start("gray").await);
    let mc = MemcachedServer::start();
    assert!(mc
        .raw("set 10.0.0.7 0 0 1\r\n1\r\n", "\r\n")
        .starts_with("STORED"));
    assert!(mc
        .raw("set 10.0.0.9 0 0 1\r\n0\r\n", "\r\n")
        .starts_with("STORED"));
    let gg = Graygate::start(&memcached_config(&mc.addr(), &prod, &gray));
    let mut c = Client::new(gg.addr);

    // The original's client IP: X-Real-IP, else X-Forwarded-For, else the peer.
    assert_eq!(c.version(&[("X-Real-IP", "10.0.0.7")]).await, "gray");
    assert_eq!(c.version(&[("X-Forwarded-For", "10.0.0.7")]).await, "gray");
    assert_eq!(
        c.version(&[("X-Real-IP", "10.0.0.8"), ("X-Forwarded-For", "10.0.0.7")])
            .await,
        "prod"
    );
    assert_eq!(
        c.version(&[("X-Real-IP", "10.0.0.9")]).await,
        "prod",
        "value 0 is not a gray flag"
    );
    assert_eq!(c.version(&[]).await, "prod");

    // `set` and `delete` by hand take effect within the cache TTL.
    mc.raw("set 10.0.0.8 0 0 1\r\n1\r\n", "\r\n");
    within("set 10.0.0.8", Duration::from_secs(2), || {
        let mut c = Client::new(gg.addr);
        async move { c.version(&[("X-Real-IP", "10.0.0.8")]).await == "gray" }
    })
    .await;
    mc.raw("delete 10.0.0.7\r\n", "\r\n");
    within("delete 10.0.0.7", Duration::from_secs(2), || {
        let mut c = Client::new(gg.addr);
        async move { c.version(&[("X-Real-IP", "10.0.0.7")]).await == "prod" }
    })
    .await;

    // A key's own TTL (memcached exptime, 1 s) is honored.
    mc.raw("set 10.0.0.5 0 1 1\r\n1\r\n", "\r\n");
    assert_eq!(c.version(&[("X-Real-IP", "10.0.0.5")]).await, "gray");
    within(
        "the 1 s exptime of 10.0.0.5",
        Duration::from_secs(4),
        || {
            let mut c = Client::new(gg.addr);
            async move { c.version(&[("X-Real-IP", "10.0.0.5")]).await == "prod" }
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_token_range_layout_routes_and_follows_redis_cli_within_100ms() {
    let (prod, gray) = (Backend::start("prod").await, Backend::start("gray").await);
    let redis = RedisServer::start();
    redis.cli(&["set", "Grayscale_Range", r#"{"idStart":1,"idEnd":5000}"#]);
    redis.cli(&["set", "TOKEN_abc", "1234"]);
    redis.cli(&["set", "TOKEN_def", "9000"]);
    redis.cli(&["set", "TOKEN_edge", "5000"]);
    redis.cli(&["set", "TOKEN_junk", "12ab"]);
    let gg = Graygate::start(&redis_config(&redis.url(), &prod, &gray, ""));
    let mut c = Client::new(gg.addr);

    assert_eq!(c.version(&[("TOKEN", "abc")]).await, "gray");
    assert_eq!(c.version(&[("TOKEN", "def")]).await, "prod");
    assert_eq!(
        c.version(&[("TOKEN", "edge")]).await,
        "prod",
        "idEnd is excluded, as in the original"
    );
    assert_eq!(c.version(&[("TOKEN", "unknown")]).await, "prod");
    assert_eq!(
        c.version(&[("TOKEN", "junk")]).await,
        "prod",
        "a non-numeric id"
    );
    assert_eq!(
        c.version(&[]).await,
        "prod",
        "no TOKEN header: stable, never a 5xx"
    );

    // Editing the JSON with redis-cli moves users within 100 ms (the cache TTL here is 5 s: only
    // the push invalidation can make it).
    let edits: &[(&str, &str)] = &[
        (r#"{"idStart":1,"idEnd":1000}"#, "prod"),
        (r#"{"idStart":"1","idEnd":"5000"}"#, "gray"),
        ("not json", "prod"),
        (r#"{"idStart":1}"#, "prod"),
        (r#"{"idStart":1,"idEnd":5000}"#, "gray"),
    ];
    for (range, want) in edits {
        redis.cli(&["set", "Grayscale_Range", range]);
        within(
            &format!("Grayscale_Range = {range}"),
            Duration::from_millis(100),
            || {
                let mut c = Client::new(gg.addr);
                async move { c.version(&[("TOKEN", "abc")]).await == *want }
            },
        )
        .await;
    }
    redis.cli(&["del", "Grayscale_Range"]);
    within(
        "missing Grayscale_Range",
        Duration::from_millis(100),
        || {
            let mut c = Client::new(gg.addr);
            async move { c.version(&[("TOKEN", "abc")]).await == "prod" }
        },
    )
    .await;
    redis.cli(&["set", "Grayscale_Range", r#"{"idStart":1,"idEnd":5000}"#]);
    // A token's user id changed by any client, too.
    redis.cli(&["set", "TOKEN_def", "42"]);
    within("TOKEN_def -> 42", Duration::from_millis(100), || {
        let mut c = Client::new(gg.addr);
        async move { c.version(&[("TOKEN", "def")]).await == "gray" }
    })
    .await;
    redis.cli(&["del", "TOKEN_def"]);
    within("DEL TOKEN_def", Duration::from_millis(100), || {
        let mut c = Client::new(gg.addr);
        async move { c.version(&[("TOKEN", "def")]).await == "prod" }
    })
    .await;
}

/// Sends `count` requests from `workers` clients, each with `headers`, while `during` runs;
/// returns (answered 200, failed).
async fn load_while<F: std::future::Future<Output = ()>>(
    addr: std::net::SocketAddr,
    headers: &'static [(&'static str, &'static str)],
    count: usize,
    during: F,
) -> (usize, usize, Vec<String>) {
    let ok = Arc::new(AtomicUsize::new(0));
    let bad = Arc::new(AtomicUsize::new(0));
    let per = count / 4;
    let deadline = Instant::now() + Duration::from_secs(60);
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_killed_and_restarted_under_load_fails_no_request() {
    let (prod, gray) = (Backend::start("prod").await, Backend::start("gray").await);
    let mut redis = RedisServer::start();
    redis.cli(&["set", "Grayscale_Range", r#"{"idStart":1,"idEnd":5000}"#]);
    redis.cli(&["set", "TOKEN_abc", "1234"]);
    let gg = Graygate::start(&redis_config(&redis.url(), &prod, &gray, ""));
    assert_eq!(
        Client::new(gg.addr).version(&[("TOKEN", "abc")]).await,
        "gray"
    );
    let served = prod.requests.clone();
    let gray_served = gray.requests.clone();

    let (ok, bad, versions) = load_while(gg.addr, &[("TOKEN", "abc")], 4000, async {
        let start = gray_served.load(Ordering::Relaxed) + served.load(Ordering::Relaxed);
        wait_for(|| {
            gray_served.load(Ordering::Relaxed) + served.load(Ordering::Relaxed) > start + 300
        })
        .await;
        redis.stop();
        let at = gray_served.load(Ordering::Relaxed) + served.load(Ordering::Relaxed);
        wait_for(|| {
            gray_served.load(Ordering::Relaxed) + served.load(Ordering::Relaxed) > at + 1000
        })
        .await;
        redis.restart();
    })
    .await;
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
    within("recovery after restart", Duration::from_secs(15), || {
        let mut c = Client::new(gg.addr);
        async move { c.version(&[("TOKEN", "abc")]).await == "gray" }
    })
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
    let (prod, gray) = (Backend::start("prod").await, Backend::start("gray").await);
    let hanging = HangingServer::start();
    // Both designs pointed at a store that accepts connections and never answers.
    for config in [
        memcached_config(&hanging.addr(), &prod, &gray),
        redis_config(&format!("redis://{}", hanging.addr()), &prod, &gray, ""),
    ] {
        let gg = Graygate::start(&config);
        let mut c = Client::new(gg.addr);
        for _ in 0..20 {
            let started = Instant::now();
            let r = c.get(&[("X-Real-IP", "10.0.0.7"), ("TOKEN", "abc")]).await;
            assert_eq!(r.status, 200);
            assert_eq!(r.body, "prod\n");
            assert!(
                started.elapsed() < Duration::from_secs(2),
                "a request waited {:?}",
                started.elapsed()
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memcached_killed_and_restarted_under_load_fails_no_request() {
    let (prod, gray) = (Backend::start("prod").await, Backend::start("gray").await);
    let mut mc = MemcachedServer::start();
    mc.raw("set 10.0.0.7 0 0 1\r\n1\r\n", "\r\n");
    let gg = Graygate::start(&memcached_config(&mc.addr(), &prod, &gray));
    let total = {
        let (p, g) = (prod.requests.clone(), gray.requests.clone());
        move || p.load(Ordering::Relaxed) + g.load(Ordering::Relaxed)
    };
    let (ok, bad, _) = load_while(gg.addr, &[("X-Real-IP", "10.0.0.7")], 4000, async {
        let start = total();
        wait_for(|| total() > start + 300).await;
        mc.stop();
        let at = total();
        wait_for(|| total() > at + 1000).await;
        mc.restart();
    })
    .await;
    assert_eq!((ok, bad), (4000, 0));
    // memcached restarted empty: the operator sets the flag again and it counts.
    mc.raw("set 10.0.0.7 0 0 1\r\n1\r\n", "\r\n");
    within("recovery after restart", Duration::from_secs(15), || {
        let mut c = Client::new(gg.addr);
        async move { c.version(&[("X-Real-IP", "10.0.0.7")]).await == "gray" }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_instances_on_one_redis_agree_and_see_each_others_changes_within_100ms() {
    let (prod, gray) = (Backend::start("prod").await, Backend::start("gray").await);
    let redis = RedisServer::start();
    let split = |w: u32| {
        format!(
            "[policy.services.split]\nweights = {{ gray = {w} }}\nby = {{ header = \"X-User\" }}\n"
        )
    };
    let dir_a = tempfile::Builder::new()
        .prefix("graygate-e2e")
        .tempdir()
        .unwrap()
        .keep();
    let a = Graygate::start_in(
        dir_a.clone(),
        &redis_config(&redis.url(), &prod, &gray, &split(30)),
    );
    let b = Graygate::start(&redis_config(&redis.url(), &prod, &gray, &split(30)));
    let (mut ca, mut cb) = (Client::new(a.addr), Client::new(b.addr));
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
    std::fs::write(
        a.config_path(),
        format!(
            "listen = [\"127.0.0.1:0\"]\n{}",
            redis_config(&redis.url(), &prod, &gray, &split(100))
        ),
    )
    .unwrap();
    a.sighup();
    let (mut a_at, mut b_at) = (None, None);
    let start = Instant::now();
    while a_at.is_none() || b_at.is_none() {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "change not seen: A {a_at:?} B {b_at:?}\n{}",
            a.log_text()
        );
        if a_at.is_none() && ca.version(&[("X-User", "nobody")]).await == "gray" {
            a_at = Some(Instant::now());
        }
        if b_at.is_none() && cb.version(&[("X-User", "nobody")]).await == "gray" {
            b_at = Some(Instant::now());
        }
    }
    let lag = b_at.unwrap().saturating_duration_since(a_at.unwrap());
    assert!(
        lag < Duration::from_millis(100),
        "B followed A after {lag:?}"
    );
}

async fn wait_for(mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !cond() {
        assert!(Instant::now() < deadline, "load did not progress");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}
