//! Many instances on one Redis: an instance that cannot apply a revision is reported as diverged
//! and keeps working; a Redis restarted empty gets the policy back at its revision; a new
//! instance starts from its last-known-good snapshot while Redis is down; a change waits for
//! every instance (`--wait`).

use crate::support::*;
use serde_json::Value;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The heartbeat the tests run with.
const HEARTBEAT: Duration = Duration::from_millis(300);

/// `web` on stable and canary, on `redis`, with the admin API and the metrics.
fn on_redis(redis: &RedisServer, stable: &Backend, canary: &Backend) -> GatewayBuilder {
    web_gateway(stable, canary)
        .service(web())
        .store(redis_store(redis.url()))
        .admin_token("alice", TOKEN)
        .metrics()
        .fleet(HEARTBEAT, "reseed")
}

/// `graygate ctl --json fleet` of `gg`.
fn fleet(gg: &Gateway) -> Value {
    gg.ctl().json(&["fleet"])
}

/// The instance `id` in a fleet view.
fn instance<'a>(fleet: &'a Value, id: &str) -> Option<&'a Value> {
    fleet["instances"]
        .as_array()?
        .iter()
        .find(|i| i["id"] == id)
}

/// Requests from one connection until `stop`, at most `max` of them: (sent, failed).
fn load(gg: &Gateway, stop: Arc<AtomicBool>, max: u64) -> tokio::task::JoinHandle<(u64, u64)> {
    let mut client = gg.client();
    tokio::spawn(async move {
        let (mut sent, failed) = (0, AtomicU64::new(0));
        let started = Instant::now();
        while !stop.load(Ordering::SeqCst)
            && sent < max
            && started.elapsed() < Duration::from_secs(60)
        {
            let reply = client.get(&[]).await;
            sent += 1;
            if reply.status != 200 {
                failed.fetch_add(1, Ordering::SeqCst);
            }
        }
        (sent, failed.load(Ordering::SeqCst))
    })
}

/// A has an upstream B lacks: a change through A that uses it makes B diverged (visible within
/// a heartbeat in `ctl fleet`, `/readyz` 503, the metric), both keep serving, B's admin API still
/// accepts changes, and B converges when a revision it can apply arrives.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_instance_that_cannot_apply_a_revision_is_diverged_and_the_others_keep_working() {
    let redis = RedisServer::start().await;
    let stable = backend("stable").await;
    let canary = backend("canary").await;
    let extra = backend("extra").await;
    let a = on_redis(&redis, &stable, &canary)
        .upstream("extra", &extra)
        .start()
        .await;
    let b = on_redis(&redis, &stable, &canary).start().await;
    let b_id = fleet(&b)["this"].as_str().unwrap().to_string();

    a.ctl().ok(&["versions", "set", "-s", "web", "v3", "extra"]);
    let noticed = Instant::now();
    let diverged = eventually("B is diverged in A's ctl fleet", async || {
        let view = fleet(&a);
        let b = instance(&view, &b_id).cloned().ok_or("B not listed")?;
        b["diverged"]["revision"]
            .as_u64()
            .map(|r| (r, b))
            .ok_or("not diverged yet")
    })
    .within(HEARTBEAT * 4)
    .await;
    println!(
        "B listed as diverged {:?} after the change",
        noticed.elapsed()
    );
    assert_eq!(diverged.0, 2);
    assert!(
        diverged.1["diverged"]["reason"]
            .as_str()
            .unwrap()
            .contains("unknown upstream `extra`"),
        "{}",
        diverged.1
    );
    assert_eq!(diverged.1["revision"], 1, "B routes with what it applied");
    let table = a.ctl().ok(&["fleet"]);
    assert!(table.contains("DIVERGED at 2"), "{table}");

    let mut b_admin = b.admin_api();
    let (ready, body) = b_admin.send("GET", "/readyz", &[], "").await;
    assert_eq!(ready.status, 503, "{ready:?}");
    assert!(
        body["reason"].as_str().unwrap().starts_with("diverged: "),
        "{body}"
    );
    let metrics = b.scrape().await;
    assert_eq!(metric(&metrics, "graygate_policy_diverged"), Some(1.0));
    assert_eq!(
        metric(&metrics, "graygate_policy_diverged_revision"),
        Some(2.0)
    );
    assert!(b
        .log_text()
        .contains("diverged: this instance cannot apply"));

    // Both keep serving.
    for gg in [&a, &b] {
        let reply = gg.client().get(&[]).await;
        assert_eq!((reply.status, reply.body.as_str()), (200, "stable\n"));
    }

    // A change through A waits for B in vain, and says why B lags (exit 1: made, not applied
    // everywhere).
    let waited = a.ctl().run(&[
        "--wait=500ms",
        "versions",
        "set",
        "-s",
        "web",
        "v5",
        "canary",
    ]);
    assert_eq!(waited.code, 1, "{waited:?}");
    assert!(
        waited.stderr.contains(&format!(
            "applied: 1 of 2 instances; lagging: {b_id} (at 1, diverged: "
        )),
        "{waited:?}"
    );
    assert!(waited.stdout.starts_with("revision 3: "), "{waited:?}");

    // B's admin API accepts a change (written; B stays diverged from it).
    let run = b
        .ctl()
        .run(&["versions", "set", "-s", "web", "v4", "canary"]);
    assert_eq!(run.code, 0, "{run:?}");
    assert_eq!(redis.cli(&["HGET", "graygate:policy", "revision"]), "4");

    // A revision B can apply arrives: B converges.
    a.ctl().ok(&["versions", "delete", "-s", "web", "v3"]);
    eventually("B converges", async || {
        let (ready, _) = b.admin_api().send("GET", "/readyz", &[], "").await;
        equals(ready.status, 200)
    })
    .await;
    let view = fleet(&a);
    let b_now = instance(&view, &b_id).unwrap();
    assert_eq!(b_now["revision"], 5);
    assert!(b_now["diverged"].is_null(), "{b_now}");
    assert_eq!(
        metric(&b.scrape().await, "graygate_policy_diverged"),
        Some(0.0)
    );
}

/// Redis restarts empty under load: no request fails, the policy is back in Redis at its
/// revision, the history continues with the gap record, `ctl policy get` agrees with routing,
/// and a SIGHUP afterwards does not put the config's policy back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_restarted_empty_gets_the_policy_back_at_its_revision() {
    let mut redis = RedisServer::start().await;
    let stable = backend("stable").await;
    let canary = backend("canary").await;
    let gg = on_redis(&redis, &stable, &canary).start().await;
    // A runtime change: every request to canary.
    gg.ctl().ok(&["weights", "set", "-s", "web", "canary=100"]);
    gg.eventually_answers(&[], "canary").await;
    let before = gg.ctl().json(&["policy", "get"]);
    let revision = redis.cli(&["HGET", "graygate:policy", "revision"]);
    assert_eq!(revision, "2");

    let stop = Arc::new(AtomicBool::new(false));
    let loads: Vec<_> = (0..2).map(|_| load(&gg, stop.clone(), 200_000)).collect();
    tokio::time::sleep(Duration::from_millis(200)).await;
    redis.restart().await;
    let restarted = Instant::now();
    eventually("the policy is back in Redis", async || {
        equals(
            redis.cli(&["HGET", "graygate:policy", "revision"]),
            revision.clone(),
        )
    })
    .await;
    let back = restarted.elapsed();
    tokio::time::sleep(Duration::from_millis(200)).await;
    stop.store(true, Ordering::SeqCst);
    let (mut sent, mut failed) = (0, 0);
    for l in loads {
        let (s, f) = l.await.unwrap();
        sent += s;
        failed += f;
    }
    let line = gg.log_line("the store had lost the policy").await;
    println!(
        "Redis restarted empty: policy back in Redis {back:?} after the restart; {sent} requests, {failed} failed; {line}"
    );
    assert_eq!(failed, 0, "{sent} requests");
    assert!(line.contains("took_ms"), "{line}");

    // What Redis holds, what ctl shows and what routes agree.
    let after = gg.ctl().json(&["policy", "get"]);
    assert_eq!(after, before);
    let reply = gg.client().get(&[]).await;
    assert_eq!(reply.body, "canary\n");
    let history = gg.ctl().json(&["history"]);
    let changes = history["entries"].as_array().unwrap();
    assert_eq!(changes.len(), 1, "{history}");
    assert_eq!(changes[0]["revision"], 2);
    assert!(
        changes[0]["summary"]
            .as_str()
            .unwrap()
            .contains("the store was empty"),
        "{history}"
    );
    // The history continues after the gap.
    gg.ctl().ok(&["weights", "set", "-s", "web", "canary=90"]);
    assert_eq!(redis.cli(&["HGET", "graygate:policy", "revision"]), "3");
    let undo = gg.ctl().run(&["undo", "1"]);
    assert_ne!(undo.code, 0);
    assert!(
        undo.stderr
            .contains("the history before revision 2 is lost"),
        "{undo:?}"
    );

    // A SIGHUP does not put the config's policy (canary at 0) back.
    gg.hup_and_wait().await;
    assert_eq!(redis.cli(&["HGET", "graygate:policy", "revision"]), "3");
    let weights = gg.ctl().json(&["weights", "get", "-s", "web"]);
    assert_eq!(weights["split"]["weights"]["canary"], 90.0, "{weights}");
}

/// An instance started while Redis is down serves from its snapshot (and says so), and catches
/// up once Redis returns holding a newer revision.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_instance_starts_from_its_snapshot_while_redis_is_down_and_catches_up() {
    let mut redis = RedisServer::start().await;
    let stable = backend("stable").await;
    let canary = backend("canary").await;
    let gg = on_redis(&redis, &stable, &canary).start().await;
    gg.ctl().ok(&["weights", "set", "-s", "web", "canary=100"]);
    let snapshot = gg.dir().join("graygate.snapshot.json");
    eventually("the snapshot holds revision 2", async || {
        let text = std::fs::read_to_string(&snapshot).unwrap_or_default();
        let v: Value = serde_json::from_str(&text).unwrap_or_default();
        equals(v["revision"].as_u64(), Some(2))
    })
    .await;
    let stored: Value =
        serde_json::from_str(&redis.cli(&["HGET", "graygate:policy", "policy"])).unwrap();
    let id = fleet(&gg)["this"].as_str().unwrap().to_string();
    let record = format!("graygate:record:fleet:{id}");
    assert_eq!(redis.cli(&["EXISTS", &record]), "1");
    let stopped = gg.stop().await;
    assert_eq!(
        redis.cli(&["EXISTS", &record]),
        "0",
        "a clean stop leaves the fleet"
    );

    redis.stop();
    let gg = stopped.start().await;
    let line = gg.log_line("serving the last-known-good snapshot").await;
    assert!(line.contains("revision=2"), "{line}");
    assert!(line.contains("graygate.snapshot.json"), "{line}");
    assert_eq!(gg.client().get(&[]).await.body, "canary\n");
    let view = fleet(&gg);
    assert_eq!(view["instances"][0]["source"], "snapshot", "{view}");
    assert_eq!(view["instances"][0]["store"], "degraded", "{view}");
    let status = gg.ctl().ok(&["status"]);
    assert!(status.contains("policy from the snapshot"), "{status}");

    // Redis returns holding a newer revision (another instance moved on meanwhile).
    redis.restart().await;
    let mut newer = stored.clone();
    newer["services"][0]["split"]["weights"]["canary"] = 0.0.into();
    redis.cli(&[
        "HSET",
        "graygate:policy",
        "revision",
        "5",
        "policy",
        &newer.to_string(),
    ]);
    redis.cli(&["PUBLISH", "graygate:changes", "{\"revision\":5}"]);
    eventually("the instance catches up to revision 5", async || {
        let view = fleet(&gg);
        let me = view["instances"][0].clone();
        equals(
            (me["revision"].as_u64(), me["source"].clone()),
            (Some(5), "store".into()),
        )
    })
    .await;
    gg.eventually_answers(&[], "stable").await;
}

/// `--wait` with three instances answers "3 of 3".
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_change_waits_for_every_instance() {
    let redis = RedisServer::start().await;
    let stable = backend("stable").await;
    let canary = backend("canary").await;
    let mut all = Vec::new();
    for _ in 0..3 {
        all.push(on_redis(&redis, &stable, &canary).start().await);
    }
    eventually("three instances in the fleet", async || {
        equals(
            fleet(&all[0])["instances"].as_array().map(Vec::len),
            Some(3),
        )
    })
    .await;
    let started = Instant::now();
    let run = all[0]
        .ctl()
        .run(&["--wait=10s", "weights", "set", "-s", "web", "canary=20"]);
    let took = started.elapsed();
    assert_eq!(run.code, 0, "{run:?}");
    assert!(run.stderr.contains("applied: 3 of 3 instances"), "{run:?}");
    println!(
        "a change reached all 3 instances: ctl --wait answered in {took:?}\n{}{}",
        run.stderr, run.stdout
    );
    for gg in &all {
        let view = fleet(gg);
        let me = instance(&view, view["this"].as_str().unwrap())
            .unwrap()
            .clone();
        assert_eq!(me["revision"], 2);
    }
    // `--wait=0s` does not wait: the answer counts what it finds, and exits 1 when that is not
    // every instance yet (the others may or may not have heard of the change).
    let run = all[1].ctl().run(&[
        "--json",
        "--wait=0s",
        "weights",
        "set",
        "-s",
        "web",
        "canary=30",
    ]);
    let json: Value = serde_json::from_str(&run.stdout).expect("a JSON answer");
    assert_eq!(json["applied"]["revision"], 3, "{json}");
    assert_eq!(json["applied"]["live"], 3, "{json}");
    let applied = json["applied"]["applied"].as_u64().unwrap();
    assert!((1..=3).contains(&applied), "{json}");
    assert_eq!(run.code, if applied == 3 { 0 } else { 1 }, "{run:?}");
}

/// With `on_store_behind = "refuse"`, a Redis restarted empty is not written: routing goes on,
/// the admin API refuses to show or change the policy naming the condition and the fix, `/readyz`
/// is 503 and the metric says so, until `graygate ctl fleet restore`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refusing_a_redis_restarted_empty_waits_for_an_operator() {
    let mut redis = RedisServer::start().await;
    let stable = backend("stable").await;
    let canary = backend("canary").await;
    let gg = on_redis(&redis, &stable, &canary)
        .fleet(HEARTBEAT, "refuse")
        .start()
        .await;
    gg.ctl().ok(&["weights", "set", "-s", "web", "canary=100"]);
    redis.restart().await;
    eventually("the instance refuses the store behind it", async || {
        let (ready, body) = gg.admin_api().send("GET", "/readyz", &[], "").await;
        equals(
            (
                ready.status,
                body["reason"]
                    .as_str()
                    .map(|r| r.contains("holds no policy")),
            ),
            (503, Some(true)),
        )
    })
    .await;
    assert_eq!(
        redis.cli(&["EXISTS", "graygate:policy"]),
        "0",
        "nothing written"
    );
    assert_eq!(
        gg.client().get(&[]).await.body,
        "canary\n",
        "routing goes on"
    );
    assert_eq!(
        metric(&gg.scrape().await, "graygate_store_behind"),
        Some(1.0)
    );
    let get = gg.ctl().run(&["policy", "get"]);
    assert_ne!(get.code, 0, "{get:?}");
    assert!(get.stderr.contains("graygate ctl fleet restore"), "{get:?}");
    let change = gg.ctl().run(&["weights", "set", "-s", "web", "canary=50"]);
    assert_ne!(change.code, 0, "{change:?}");
    assert!(change.stderr.contains("holds no policy"), "{change:?}");

    let restored = gg.ctl().ok(&["fleet", "restore"]);
    assert!(
        restored.starts_with("the store holds revision 2 again"),
        "{restored}"
    );
    assert_eq!(redis.cli(&["HGET", "graygate:policy", "revision"]), "2");
    let (ready, _) = gg.admin_api().send("GET", "/readyz", &[], "").await;
    assert_eq!(ready.status, 200);
    gg.ctl().ok(&["weights", "set", "-s", "web", "canary=50"]);
    assert_eq!(redis.cli(&["HGET", "graygate:policy", "revision"]), "3");
    let again = gg.ctl().run(&["fleet", "restore"]);
    assert_eq!(again.code, 1, "{again:?}");
    assert!(again.stderr.contains("nothing to restore"), "{again:?}");
}
