//! graygate on Redis Sentinel: three instances on a primary, a replica and three sentinels, with
//! both original designs' data (the OpenResty token range and an IP gray list). The primary is
//! killed under load: no request fails, writes come back on the new primary, a change made
//! through one instance reaches all of them, and both layouts' lookups keep answering.

use crate::original_layouts::{app_service, redis_design};
use crate::support::*;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

const TOKEN: &str = "fleet-store-token";

/// Both original designs on one store: `TOKEN_<t>` -> user id in `Grayscale_Range` -> gray, and
/// the client IP (X-Real-IP) flagged "1" -> gray; both read under prefix "" (the list `redis`).
pub(crate) fn both_designs(
    store: impl Into<graygate::config::file::StoreFile>,
    prod: &Backend,
    gray: &Backend,
) -> GatewayBuilder {
    redis_design(
        store,
        prod,
        gray,
        app_service().rule("ip-flag", "gray", client_ip().lookup("redis").equals("1")),
    )
    .trusted_proxies(["127.0.0.0/8"])
    .original_client_ip()
    .admin_token("alice", TOKEN)
}

/// The data of both designs, as their operators write it.
pub(crate) const SEED: &[(&str, &str)] = &[
    ("Grayscale_Range", r#"{"idStart":1,"idEnd":5000}"#),
    ("TOKEN_abc", "1234"),
    ("TOKEN_def", "9000"),
    ("10.0.0.7", "1"),
];

/// Requests and the version each must get with [`SEED`] and no split.
pub(crate) const EXPECTED: &[(&[(&str, &str)], &str)] = &[
    (&[("TOKEN", "abc")], "gray"),
    (&[("TOKEN", "def")], "prod"),
    (&[("X-Real-IP", "10.0.0.7")], "gray"),
    (&[("X-Real-IP", "10.0.0.9")], "prod"),
];

/// What a bounded load saw.
#[derive(Debug, Default)]
pub(crate) struct Load {
    pub ok: usize,
    pub failed: usize,
}

/// Sends requests from 4 clients spread over `addrs`, cycling through [`EXPECTED`]'s requests,
/// until `stop` is set, `max` requests were sent, or a minute passed.
pub(crate) fn start_load(
    addrs: Vec<SocketAddr>,
    max: usize,
    stop: Arc<AtomicBool>,
) -> tokio::task::JoinHandle<Load> {
    let sent = Arc::new(AtomicUsize::new(0));
    tokio::spawn(async move {
        let deadline = Instant::now() + patient(Duration::from_secs(60));
        let workers: Vec<_> = (0..4)
            .map(|w| {
                let (stop, sent, addrs) = (stop.clone(), sent.clone(), addrs.clone());
                tokio::spawn(async move {
                    let mut clients: Vec<Client> = addrs.iter().map(|a| Client::new(*a)).collect();
                    let mut load = Load::default();
                    let mut i = w;
                    while !stop.load(Ordering::Relaxed)
                        && Instant::now() < deadline
                        && sent.fetch_add(1, Ordering::Relaxed) < max
                    {
                        let (headers, _) = EXPECTED[i % EXPECTED.len()];
                        let n = clients.len();
                        let r = clients[i % n].get(headers).await;
                        if r.status == 200 {
                            load.ok += 1;
                        } else {
                            load.failed += 1;
                        }
                        i += 1;
                    }
                    load
                })
            })
            .collect();
        let mut total = Load::default();
        for w in workers {
            let load = w.await.expect("load worker");
            total.ok += load.ok;
            total.failed += load.failed;
        }
        total
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sentinel_failover_under_load_fails_no_request_and_changes_reach_every_instance() {
    let (prod, gray) = (backend("prod").await, backend("gray").await);
    let mut set = SentinelSet::start().await;
    let first_primary = set.primary_port();
    for (key, value) in SEED {
        set.primary().cli(&["SET", key, value]);
    }
    let design = both_designs(&set, &prod, &gray);
    let instances = [
        design.clone().start().await,
        design.clone().start().await,
        design.start().await,
    ];
    for gg in &instances {
        let mut c = gg.client();
        c.assert_versions(EXPECTED).await;
    }

    // Kill the primary under load, once the load runs; then write through the first instance
    // until a write is taken (by the new primary).
    let stop = Arc::new(AtomicBool::new(false));
    let served = || prod.requests() + gray.requests();
    let before = served();
    let load = start_load(
        instances.iter().map(|g| g.addr).collect(),
        200_000,
        stop.clone(),
    );
    eventually("the load runs", async || {
        if served() > before + 300 {
            Ok(())
        } else {
            Err(served())
        }
    })
    .within(Duration::from_secs(30))
    .await;
    set.primary().stop();
    let killed = Instant::now();
    let ctl = instances[0].ctl();
    let mut refused = 0;
    let taken = eventually("a write is taken after the failover", async || {
        let run = tokio::task::block_in_place(|| {
            ctl.run(&[
                "weights",
                "set",
                "-s",
                "app",
                "gray=0",
                "--by",
                "header:X-User",
            ])
        });
        if run.code == 0 {
            Ok(killed.elapsed())
        } else {
            refused += 1;
            Err(run.stderr)
        }
    })
    .within(Duration::from_secs(25))
    .await;
    // More load on the new primary, then stop.
    let after = served();
    eventually("the load runs on", async || {
        if served() > after + 300 {
            Ok(())
        } else {
            Err(served())
        }
    })
    .within(Duration::from_secs(30))
    .await;
    stop.store(true, Ordering::Relaxed);
    let load = load.await.expect("the load");
    eprintln!(
        "Sentinel failover under load: {} requests answered, {} failed; writes refused for {:?} after the primary was killed ({refused} refused attempts)",
        load.ok, load.failed, taken
    );
    assert_eq!(load.failed, 0, "failed requests during the failover");
    assert!(load.ok > 600, "the load ran: {load:?}");
    let new_primary = set.primary_port();
    assert_ne!(new_primary, first_primary, "the sentinels failed over");

    // Both layouts' lookups answer from the new primary on every instance: the seeded data, and
    // data written there now, which no instance has cached (an invalidation of a cached key,
    // TOKEN_abc, must arrive before the cache's 5 s TTL would end it).
    for gg in &instances {
        let mut c = gg.client();
        c.assert_versions(EXPECTED).await;
    }
    // The subscription follows the new primary: tracking again on every instance.
    for gg in &instances {
        let mut admin = gg.admin_api();
        eventually("tracking on the new primary", async || {
            let status = admin.get("/v1/status").await;
            if status["store"]["invalidation"] == "tracking" {
                Ok(())
            } else {
                Err(status)
            }
        })
        .await;
    }
    let primary = set.primary();
    primary.cli(&["SET", "TOKEN_new", "10"]);
    primary.cli(&["SET", "10.0.0.8", "1"]);
    primary.cli(&["SET", "TOKEN_abc", "9000"]);
    for gg in &instances {
        for (headers, want) in [
            (&[("TOKEN", "new")][..], "gray"),
            (&[("X-Real-IP", "10.0.0.8")][..], "gray"),
            (&[("TOKEN", "abc")][..], "prod"),
        ] {
            gg.eventually_answers(headers, want)
                .within(Duration::from_secs(3))
                .await;
        }
    }

    // A change through the second instance reaches every instance: routing and the admin API
    // agree everywhere.
    a_change_reaches_every_instance(&instances, 1, "After the failover").await;
    for gg in &instances {
        let weights = gg.ctl().ok(&["weights", "get", "-s", "app"]);
        assert!(weights.contains("gray=100%"), "{weights}");
    }
    // The failover is in the log.
    let log = instances[0].log_text();
    assert!(
        log.contains("following the failover"),
        "the failover is logged:\n{log}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sentinel_that_is_down_is_skipped() {
    let (prod, gray) = (backend("prod").await, backend("gray").await);
    let mut set = SentinelSet::start().await;
    for (key, value) in SEED {
        set.primary().cli(&["SET", key, value]);
    }
    // The first sentinel named in the URL is down from the start.
    set.sentinels[0].stop();
    let gg = both_designs(&set, &prod, &gray).start().await;
    gg.client().assert_versions(EXPECTED).await;
    gg.ctl().ok(&[
        "weights",
        "set",
        "-s",
        "app",
        "gray=100",
        "--by",
        "header:X-User",
    ]);
    gg.eventually_answers(&[("X-User", "u1")], "gray").await;
}

/// A failover ordered by hand (`SENTINEL FAILOVER`) leaves the old primary running as a replica:
/// connections to it stay open, and writes there are refused with `READONLY`. graygate notices
/// (the primary's `ROLE`, a refused write), asks the sentinels, and writes land on the new one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_demoted_primary_leads_to_the_new_one_never_to_a_lost_write() {
    let (prod, gray) = (backend("prod").await, backend("gray").await);
    let mut set = SentinelSet::start().await;
    for (key, value) in SEED {
        set.primary().cli(&["SET", key, value]);
    }
    let gg = both_designs(&set, &prod, &gray).start().await;
    let first = set.primary_port();
    let sentinel = set.sentinels[0].port();
    crate::support::servers::cli(sentinel, &["SENTINEL", "FAILOVER", "graygate-primary"]);
    eventually("the sentinels name a new primary", async || {
        let now = set.primary_port();
        if now != first {
            Ok(())
        } else {
            Err(now)
        }
    })
    .within(Duration::from_secs(15))
    .await;
    let ctl = gg.ctl();
    eventually("a write is taken by the new primary", async || {
        let run = tokio::task::block_in_place(|| {
            ctl.run(&[
                "weights",
                "set",
                "-s",
                "app",
                "gray=100",
                "--by",
                "header:X-User",
            ])
        });
        if run.code == 0 {
            Ok(())
        } else {
            Err(run.stderr)
        }
    })
    .within(Duration::from_secs(10))
    .await;
    // The write is on the new primary, and the old one has it too once it is a replica: the
    // write was not lost on the old primary.
    let revision = gg.admin_api().revision().await.to_string();
    let primary = set.primary_port();
    for port in [primary, first] {
        eventually("the revision is on both servers", async || {
            let stored =
                crate::support::servers::try_cli(port, &["HGET", "graygate:policy", "revision"])?;
            if stored == revision {
                Ok(())
            } else {
                Err(format!("port {port} (new primary {primary}, first {first}): {stored}; graygate's log:\n{}", gg.log_text()))
            }
        })
        // The sentinels turn the old primary into a replica when they next look at it.
        .within(Duration::from_secs(20))
        .await;
    }
    gg.eventually_answers(&[("X-User", "u1"), ("TOKEN", "def")], "gray")
        .await;
    gg.client().assert_versions(&EXPECTED[..1]).await;
}

/// Sends everyone with an `X-User` to `gray` through `instances[through]`'s admin API, and waits
/// until every instance routes so and shows the same policy (routing and the admin API agree
/// everywhere); prints how long that took after `when` (never asserted).
pub(crate) async fn a_change_reaches_every_instance(
    instances: &[Gateway],
    through: usize,
    when: &str,
) {
    let changed_at = Instant::now();
    instances[through].ctl().ok(&[
        "weights",
        "set",
        "-s",
        "app",
        "gray=100",
        "--by",
        "header:X-User",
    ]);
    for gg in instances {
        gg.eventually_answers(&[("X-User", "u1"), ("TOKEN", "def")], "gray")
            .within(Duration::from_secs(5))
            .await;
    }
    eprintln!(
        "{when}, a change reached all {} instances within {:?}",
        instances.len(),
        changed_at.elapsed()
    );
    let policies: Vec<String> = instances
        .iter()
        .map(|gg| gg.ctl().ok(&["policy", "get"]))
        .collect();
    assert!(
        policies.iter().all(|p| p == &policies[0]),
        "the instances' policies differ: {policies:#?}"
    );
}
