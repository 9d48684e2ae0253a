//! What a store and its lookup cache may cost, with the real binary against a real
//! `redis-server` and `memcached`: a store that hangs under load (SIGSTOP) is reported degraded
//! within a second, logged once, holds a bounded number of sockets, fails no request, and
//! recovers by itself; identities of 16 KB neither grow the lookup cache past its byte bound nor,
//! past `cache.max_key_bytes`, count as identities at all.

use crate::original_layouts::{app_service, memcached_design, redis_design};
use crate::support::*;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Load workers, and the most requests each sends: the load ends on its own even if a test
/// forgets to stop it.
const WORKERS: usize = 4;
const MOST_PER_WORKER: usize = 20_000;

/// The most sockets toward a hung store the tests accept: `cache.max_in_flight` (64) lookups
/// plus memcached's idle connections (16) and a few background probes. Before the fix, a
/// memcached under SIGSTOP collected about 1,060 (its listen backlog) within 20 s.
const MOST_SOCKETS: usize = 100;

/// Requests with a new identity each (`identity(worker, i)` names the header and its value), on
/// [`WORKERS`] keep-alive connections until `stop` is set, [`MOST_PER_WORKER`] are sent or a
/// minute has passed. Every answer must be a 200 from `prod` or `gray`.
struct Load {
    stop: Arc<AtomicBool>,
    served: Arc<AtomicUsize>,
    workers: Vec<tokio::task::JoinHandle<Vec<String>>>,
}

impl Load {
    fn start(gg: &Gateway, identity: fn(usize, usize) -> (&'static str, String)) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let served = Arc::new(AtomicUsize::new(0));
        let deadline = Instant::now() + patient(Duration::from_secs(60));
        let workers = (0..WORKERS)
            .map(|w| {
                let (stop, served) = (Arc::clone(&stop), Arc::clone(&served));
                let mut c = gg.client();
                tokio::spawn(async move {
                    let mut wrong = Vec::new();
                    for i in 0..MOST_PER_WORKER {
                        if stop.load(Ordering::Relaxed) || Instant::now() > deadline {
                            break;
                        }
                        let (name, value) = identity(w, i);
                        let r = c.get(&[(name, value.as_str())]).await;
                        let body = r.body.trim();
                        if r.status != 200 || !(body == "prod" || body == "gray") {
                            wrong.push(format!("{} {body:?}", r.status));
                        }
                        served.fetch_add(1, Ordering::Relaxed);
                    }
                    wrong
                })
            })
            .collect();
        Load {
            stop,
            served,
            workers,
        }
    }

    fn served(&self) -> usize {
        self.served.load(Ordering::Relaxed)
    }

    /// Stops the load; the answers that were not a 200 from a version, and how many were sent.
    async fn finish(self) -> (Vec<String>, usize) {
        self.stop.store(true, Ordering::Relaxed);
        let mut wrong = Vec::new();
        for w in self.workers {
            wrong.extend(w.await.expect("load worker"));
        }
        (wrong, self.served.load(Ordering::Relaxed))
    }
}

/// The highest of `sample()` taken every 10 ms until `stop` is set (at most for two minutes).
fn peak_of(
    stop: Arc<AtomicBool>,
    sample: impl Fn() -> usize + Send + 'static,
) -> tokio::task::JoinHandle<usize> {
    tokio::spawn(async move {
        let mut peak = 0;
        for _ in 0..12_000 {
            if stop.load(Ordering::Relaxed) {
                break;
            }
            peak = peak.max(sample());
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        peak
    })
}

async fn degraded(gg: &Gateway, store: &str) -> Result<(), Option<f64>> {
    let seen = metric(
        &gg.scrape().await,
        &format!("graygate_store_degraded{{store=\"{store}\"}}"),
    );
    if seen == Some(1.0) {
        Ok(())
    } else {
        Err(seen)
    }
}

/// Pauses `server` (SIGSTOP) under load with a new identity per request, and checks everything a
/// hung store must do; resumes it (SIGCONT) and checks that graygate recovers by itself.
async fn a_paused_store_under_load<K: Kind>(
    server: &Server<K>,
    gg: &Gateway,
    store: &str,
    identity: fn(usize, usize) -> (&'static str, String),
) {
    let load = Load::start(gg, identity);
    eventually("the load runs", async || load.served() > 200).await;
    assert!(
        degraded(gg, store).await.is_err(),
        "degraded before the pause"
    );

    let sampling = Arc::new(AtomicBool::new(false));
    let port = server.port();
    let peak = peak_of(Arc::clone(&sampling), move || sockets_toward(port));
    server.pause().await;
    let paused = Instant::now();
    eventually(format!("{store} shows as degraded"), async || {
        degraded(gg, store).await
    })
    .within(Duration::from_secs(1))
    .await;
    let after = paused.elapsed();
    eprintln!("{store} paused: degraded after {after:?}");

    // Every view of the store says the same: the metric, the admin API, `graygate ctl status`.
    let status = gg.admin_api().get("/v1/status").await;
    assert_eq!(status["store"]["degraded"], true, "{status}");
    assert!(status["store"]["last_error"].is_string(), "{status}");
    let shown = gg.ctl().ok(&["status"]);
    assert!(
        shown.contains(&format!("store {store}: DEGRADED (")),
        "{shown}"
    );

    // Still under load, the sockets toward the store stay bounded.
    let served = load.served();
    eventually("the load goes on while the store hangs", async || {
        load.served() > served + 500
    })
    .within(Duration::from_secs(20))
    .await;
    sampling.store(true, Ordering::Relaxed);
    let peak = peak.await.expect("sampler");
    assert!(
        peak <= MOST_SOCKETS,
        "{peak} sockets toward the paused {store} (at most {MOST_SOCKETS})"
    );

    server.resume();
    eventually(
        format!("{store} recovers by itself"),
        async || match degraded(gg, store).await {
            Ok(()) => Err("still degraded"),
            Err(_) => Ok(()),
        },
    )
    .within(Duration::from_secs(15))
    .await;
    let (wrong, sent) = load.finish().await;
    assert!(
        wrong.is_empty(),
        "{} of {sent} answers: {wrong:?}",
        wrong.len()
    );

    let log = gg.log_text();
    let lines = |text: &str| log.lines().filter(|l| l.contains(text)).count();
    assert_eq!(
        (lines("store degraded"), lines("store recovered")),
        (1, 1),
        "one line when it hangs, one when it is back:\n{log}"
    );
    let status = gg.admin_api().get("/v1/status").await;
    assert_eq!(status["store"]["degraded"], false, "{status}");
    let shown = gg.ctl().ok(&["status"]);
    assert!(
        shown.contains(&format!("store {store}: healthy")),
        "{shown}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_memcached_paused_under_load_is_degraded_within_a_second_bounded_and_recovers() {
    let (prod, gray) = (backend("prod").await, backend("gray").await);
    let mc = MemcachedServer::start().await;
    let gg = memcached_design(&mc, &prod, &gray)
        .metrics()
        .admin()
        .start()
        .await;
    a_paused_store_under_load(&mc, &gg, "memcached", |w, i| {
        (
            "X-Real-IP",
            format!("10.{w}.{}.{}", (i / 256) % 256, i % 256),
        )
    })
    .await;
    // memcached answers again, and its flags count again.
    mc.raw("set 10.9.9.9 0 0 1\r\n1\r\n", "\r\n");
    gg.eventually_answers(&[("X-Real-IP", "10.9.9.9")], "gray")
        .within(Duration::from_secs(5))
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_paused_under_load_is_degraded_within_a_second_bounded_and_recovers() {
    let (prod, gray) = (backend("prod").await, backend("gray").await);
    let redis = RedisServer::start().await;
    redis.cli(&["set", "Grayscale_Range", r#"{"idStart":1,"idEnd":5000}"#]);
    redis.cli(&["set", "TOKEN_abc", "1234"]);
    let gg = redis_design(&redis, &prod, &gray, app_service())
        .metrics()
        .admin()
        .start()
        .await;
    a_paused_store_under_load(&redis, &gg, "redis", |w, i| ("TOKEN", format!("t{w}-{i}"))).await;
    redis.cli(&["set", "TOKEN_def", "42"]);
    gg.eventually_answers(&[("TOKEN", "def")], "gray")
        .within(Duration::from_secs(5))
        .await;
}

/// A 16 KB token of its own for each `i`.
fn large_token(i: usize) -> String {
    format!("{i:06}{}", "x".repeat(16 * 1024 - 6))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_identities_do_not_grow_the_lookup_cache_past_its_byte_bound() {
    let (prod, gray) = (backend("prod").await, backend("gray").await);
    let redis = RedisServer::start().await;
    redis.cli(&["set", "Grayscale_Range", r#"{"idStart":1,"idEnd":5000}"#]);
    let mut design = redis_design(&redis, &prod, &gray, app_service()).metrics();
    // 16 KB identities are identities here: each is looked up and cached.
    design.cache_mut().max_key_bytes = Some(20_000);
    design.cache_mut().max_bytes = Some(1024 * 1024);
    let gg = design.start().await;
    let mut c = gg.client();
    // 300 x 16 KB = 4.8 MB of keys, bounded to 1 MiB.
    for i in 0..300 {
        assert_eq!(c.version(&[("TOKEN", &large_token(i))]).await, "prod");
    }
    let text = gg.scrape().await;
    let series = |name: &str| {
        metric(&text, &format!("graygate_store_{name}{{store=\"redis\"}}"))
            .unwrap_or_else(|| panic!("no graygate_store_{name} in:\n{text}"))
    };
    let (bytes, entries) = (series("cache_bytes"), series("cache_entries"));
    assert!(series("lookups_total") >= 300.0, "each token was looked up");
    assert!(
        bytes > 0.0 && bytes <= 1024.0 * 1024.0,
        "{bytes} bytes cached"
    );
    // Each entry holds a 16 KB key: at most 64 fit.
    assert!((1.0..=64.0).contains(&entries), "{entries} entries");
    assert_eq!(series("lookup_keys_too_long_total"), 0.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_over_long_identity_is_no_identity() {
    let (prod, gray) = (backend("prod").await, backend("gray").await);
    let redis = RedisServer::start().await;
    redis.cli(&["set", "Grayscale_Range", r#"{"idStart":1,"idEnd":5000}"#]);
    let long = large_token(1);
    let key = format!("TOKEN_{long}");
    // A user id in range, under a 16 KB key another client wrote: graygate does not ask.
    redis.cli(&["set", &key, "1234"]);
    let at_cap = "y".repeat(250 - "TOKEN_".len());
    redis.cli(&["set", &format!("TOKEN_{at_cap}"), "1234"]);
    let gg = redis_design(&redis, &prod, &gray, app_service())
        .metrics()
        .start()
        .await;
    let mut c = gg.client();
    let lookups = async || {
        let text = gg.scrape().await;
        let of = |name: &str| {
            metric(&text, &format!("graygate_store_{name}{{store=\"redis\"}}")).unwrap_or(0.0)
        };
        (of("lookups_total"), of("lookup_keys_too_long_total"))
    };
    // The range is fetched once, by a request with an identity.
    assert_eq!(c.version(&[("TOKEN", &at_cap)]).await, "gray");
    let (sent, too_long) = lookups().await;
    assert_eq!(too_long, 0.0);

    // As a request without the header: stable, never an error, and the store is not asked.
    for _ in 0..3 {
        assert_eq!(c.version(&[("TOKEN", &long)]).await, "prod");
    }
    assert_eq!(c.version(&[]).await, "prod");
    let (sent_after, too_long) = lookups().await;
    assert_eq!(sent_after, sent, "no lookup reached Redis");
    assert!(too_long >= 3.0, "{too_long} counted");
}
