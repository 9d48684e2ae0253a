//! The live-change model, through the real `graygate ctl` and real stores: a change that changes
//! nothing makes no revision; a promote followed by a rollback leaves every routing answer of
//! the two original designs as it was, gray list edits included.

use crate::original_layouts::{app_service, memcached_design, redis_design};
use crate::support::*;
use graygate::policy::bucket_of;
use std::net::SocketAddr;
use std::time::Duration;

/// How many identities each routing check asks about.
const IDENTITIES: usize = 200;

/// One identity: the headers a request carries.
type Identity = Vec<(String, String)>;

/// The version that answers each identity, in order.
async fn answers(addr: SocketAddr, identities: &[Identity]) -> Vec<String> {
    let mut c = Client::new(addr);
    let mut out = Vec::with_capacity(identities.len());
    for identity in identities {
        let headers: Vec<(&str, &str)> = identity
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        out.push(c.version(&headers).await);
    }
    out
}

/// Waits until every identity gets the version `want` gives it (a change made outside the
/// request path takes effect within the store's push or the cache TTL).
async fn eventually_routes(addr: SocketAddr, identities: &[Identity], want: &[String], what: &str) {
    eventually(what.to_string(), async || {
        let got = answers(addr, identities).await;
        let wrong: Vec<String> = got
            .iter()
            .zip(want)
            .zip(identities)
            .filter(|((g, w), _)| g != w)
            .map(|((g, w), id)| format!("{id:?} -> {g}, not {w}"))
            .collect();
        if wrong.is_empty() {
            Ok(())
        } else {
            Err(format!(
                "{} of {} wrong: {:?}",
                wrong.len(),
                want.len(),
                &wrong[..wrong.len().min(5)]
            ))
        }
    })
    .within(Duration::from_secs(5))
    .await;
}

/// Promotes `gray` through ctl, checks that every identity is on it, rolls back, and checks
/// that the policy is the one before the promote, two revisions later.
async fn promote_and_roll_back(gg: &Gateway, identities: &[Identity]) {
    let ctl = gg.ctl();
    let policy_before = ctl.ok(&["policy", "get"]);
    let revision_before = gg.admin_api().revision().await;
    let out = ctl.ok(&["promote", "--service", "app", "--version", "gray"]);
    assert!(out.contains("app: gray is stable"), "{out}");
    let everyone_gray = vec!["gray".to_string(); identities.len()];
    eventually_routes(
        gg.addr,
        identities,
        &everyone_gray,
        "everyone on gray after the promote",
    )
    .await;
    let out = ctl.ok(&["rollback", "--service", "app"]);
    assert!(
        out.contains(
            "app: promote of gray undone: prod is stable again, rules and split as before"
        ),
        "{out}"
    );
    assert_eq!(
        ctl.ok(&["policy", "get"]),
        policy_before,
        "the policy is back as it was"
    );
    assert_eq!(gg.admin_api().revision().await, revision_before + 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_change_that_changes_nothing_makes_no_revision() {
    let (stable, canary) = (backend("stable").await, backend("canary").await);
    let gg = web_gateway(&stable, &canary)
        .admin_token("alice", TOKEN)
        .service(web().split("canary", 10.0, by_header("X-User-Id")))
        .start()
        .await;
    let ctl = gg.ctl();
    let mut admin = gg.admin_api();

    // The policy as it is, put back: `policy get | policy put -`.
    let run = ctl.pipe(&["policy", "get"], &["policy", "put", "-"]);
    assert_eq!(run.stdout.trim(), "revision 1 (unchanged): policy replaced");
    assert_eq!(admin.revision().await, 1);

    // A rollback stops the canary; a second one has nothing left to do.
    let out = ctl.ok(&["rollback", "--service", "web"]);
    assert!(out.starts_with("revision 2: web: weights 0"), "{out}");
    let out = ctl.ok(&["rollback", "--service", "web"]);
    assert!(
        out.starts_with("revision 2 (unchanged): web: weights 0"),
        "{out}"
    );
    let out = ctl.ok(&["weights", "set", "--service", "web", "canary=0"]);
    assert!(
        out.starts_with("revision 2 (unchanged): web: stable=100%"),
        "{out}"
    );

    // The admin API keeps the current revision and ETag, and says it changed nothing.
    let (reply, body) = admin
        .send("POST", "/v1/services/web/rollback", &[], "")
        .await;
    assert_eq!(reply.status, 200, "{reply:?}");
    assert_eq!(reply.headers["etag"], "\"2\"");
    assert_eq!(
        (&body["revision"], &body["unchanged"]),
        (&2.into(), &true.into())
    );
    let policy = admin.get("/v1/policy").await.to_string();
    let (reply, body) = admin
        .send("PUT", "/v1/policy", &[("if-match", "\"2\"")], &policy)
        .await;
    assert_eq!(reply.status, 200, "{reply:?}");
    assert_eq!(reply.headers["etag"], "\"2\"");
    assert_eq!(body["unchanged"], true);
    // A real change answers without the flag.
    let (_, body) = admin
        .send(
            "PUT",
            "/v1/services/web/weights",
            &[],
            r#"{"weights": {"canary": 5}}"#,
        )
        .await;
    assert_eq!(
        (&body["revision"], &body.get("unchanged")),
        (&3.into(), &None)
    );

    let history = ctl.json(&["history"]);
    let revisions: Vec<u64> = history["entries"]
        .as_array()
        .expect("entries")
        .iter()
        .map(|e| e["revision"].as_u64().expect("a revision"))
        .collect();
    assert_eq!(
        revisions,
        vec![3, 2, 1],
        "only the changes are in the history"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_promote_and_rollback_cycle_on_the_memcached_layout_changes_no_routing_answer() {
    let (prod, gray) = (backend("prod").await, backend("gray").await);
    let mc = MemcachedServer::start().await;
    let ip = |i: usize| format!("10.0.{}.{}", i / 250, i % 250 + 1);
    // A third of the IPs flagged "1" (gray), a third "0" (not a flag), a third absent.
    for i in 0..IDENTITIES {
        let flag = match i % 3 {
            0 => "1",
            1 => "0",
            _ => continue,
        };
        let set = format!("set {} 0 0 1\r\n{flag}\r\n", ip(i));
        assert!(mc.raw(&set, "\r\n").starts_with("STORED"));
    }
    let gg = memcached_design(&mc, &prod, &gray)
        .admin_token("alice", TOKEN)
        .start()
        .await;
    let identities: Vec<Identity> = (0..IDENTITIES)
        .map(|i| vec![("X-Real-IP".to_string(), ip(i))])
        .collect();
    let before = answers(gg.addr, &identities).await;
    let grays = before.iter().filter(|v| *v == "gray").count();
    assert_eq!(grays, IDENTITIES.div_ceil(3), "{before:?}");

    promote_and_roll_back(&gg, &identities).await;
    eventually_routes(
        gg.addr,
        &identities,
        &before,
        "every IP as before the cycle",
    )
    .await;

    // The gray list still decides: a flag set and one deleted by hand move their IPs.
    mc.raw(&format!("set {} 0 0 1\r\n1\r\n", ip(2)), "\r\n");
    mc.raw(&format!("delete {}\r\n", ip(0)), "\r\n");
    let mut moved = before.clone();
    moved[2] = "gray".into();
    moved[0] = "prod".into();
    eventually_routes(
        gg.addr,
        &identities,
        &moved,
        "the gray list edits move their IPs",
    )
    .await;
}

/// The OpenResty + Redis design's answer for user `i` (`TOKEN: t<i>`, user id `i * 53 % 10000`,
/// `X-User: u<i>`): gray inside `(1, id_end)` (ends excluded), else the salted 30% split.
fn redis_answer(i: usize, id_end: usize) -> String {
    let uid = i * 53 % 10_000;
    let in_range = 1 < uid && uid < id_end;
    let split = bucket_of(SALT, &format!("u{i}")) < 3000;
    if in_range || split { "gray" } else { "prod" }.to_string()
}

/// The salt of the split in the Redis test.
const SALT: &str = "cycle-salt";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_promote_and_rollback_cycle_on_the_redis_layout_changes_no_routing_answer() {
    let (prod, gray) = (backend("prod").await, backend("gray").await);
    let redis = RedisServer::start().await;
    redis.cli(&["set", "Grayscale_Range", r#"{"idStart":1,"idEnd":5000}"#]);
    for i in 0..IDENTITIES {
        redis.cli(&[
            "set",
            &format!("TOKEN_t{i}"),
            &(i * 53 % 10_000).to_string(),
        ]);
    }
    // The original design, with a salted sticky split beside the rule, so that the cycle has a
    // split, its `by` and its salt to keep as well.
    let service = app_service()
        .split("gray", 30.0, by_header("X-User"))
        .salt(SALT);
    let gg = redis_design(&redis, &prod, &gray, service)
        .admin_token("alice", TOKEN)
        .start()
        .await;
    let identities: Vec<Identity> = (0..IDENTITIES)
        .map(|i| {
            vec![
                ("TOKEN".to_string(), format!("t{i}")),
                ("X-User".to_string(), format!("u{i}")),
            ]
        })
        .collect();
    let wide: Vec<String> = (0..IDENTITIES).map(|i| redis_answer(i, 5000)).collect();
    let narrow: Vec<String> = (0..IDENTITIES).map(|i| redis_answer(i, 1000)).collect();
    let moved = wide.iter().zip(&narrow).filter(|(a, b)| a != b).count();
    assert!(moved >= 20, "the narrower range moves only {moved} users");
    assert_eq!(answers(gg.addr, &identities).await, wide);

    promote_and_roll_back(&gg, &identities).await;
    eventually_routes(
        gg.addr,
        &identities,
        &wide,
        "every user as before the cycle",
    )
    .await;

    // Editing Grayscale_Range after the cycle still moves users, and back.
    redis.cli(&["set", "Grayscale_Range", r#"{"idStart":1,"idEnd":1000}"#]);
    eventually_routes(
        gg.addr,
        &identities,
        &narrow,
        "the narrower range moves users",
    )
    .await;
    redis.cli(&["set", "Grayscale_Range", r#"{"idStart":1,"idEnd":5000}"#]);
    eventually_routes(gg.addr, &identities, &wide, "the range is back").await;
}
