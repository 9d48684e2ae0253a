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
    // Flagged "1": gray; "0" or absent: prod. Waited for, not read once: on a busy machine a
    // first lookup that times out is answered by prod (fail safe), and is right the next time.
    let before: Vec<String> = (0..IDENTITIES)
        .map(|i| if i % 3 == 0 { "gray" } else { "prod" }.to_string())
        .collect();
    eventually_routes(gg.addr, &identities, &before, "the gray list as set").await;

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

/// The `graygate_policy_config_differs` gauge now.
async fn config_differs(gg: &Gateway) -> Option<f64> {
    metric(&gg.scrape().await, "graygate_policy_config_differs")
}

/// A rule sending requests with `X-Beta: yes` to the canary.
fn beta_rule() -> graygate::policy::model::RuleDoc {
    graygate::policy::model::RuleDoc {
        name: "beta".into(),
        version: "canary".into(),
        when: header("X-Beta").equals("yes"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_keeps_runtime_changes_and_applies_a_changed_file() {
    let (stable, canary) = (backend("stable").await, backend("canary").await);
    let mut gg = web_gateway(&stable, &canary)
        .admin_token("alice", TOKEN)
        .metrics()
        .service(web())
        .start()
        .await;
    let ctl = gg.ctl();
    assert_eq!(config_differs(&gg).await, Some(0.0));

    // A runtime change: everyone on the canary. The file's policy no longer runs.
    ctl.ok(&["weights", "set", "--service", "web", "canary=100"]);
    gg.eventually_answers(&[], "canary").await;
    assert_eq!(config_differs(&gg).await, Some(1.0));
    assert!(
        gg.log_text()
            .contains("the running policy differs from the config file's"),
        "{}",
        gg.log_text()
    );

    // SIGHUP with the file as it was: the runtime change stays.
    let log = gg.hup_and_wait().await;
    assert!(
        log.contains(
            "SIGHUP: policy: the config's policy has not changed since it was applied (revision 1)"
        ),
        "{log}"
    );
    assert!(
        log.contains("SIGHUP: upstreams: stable, canary as before"),
        "{log}"
    );
    assert_eq!(gg.client().version(&[]).await, "canary");
    assert_eq!(gg.admin_api().revision().await, 2);

    // SIGHUP with the file changed: its policy is applied (and replaces the runtime change).
    gg.edit_config(|mut b| {
        b.policy_mut().services[0].rules.push(beta_rule());
        b
    });
    let log = gg.hup_and_wait().await;
    assert!(
        log.contains("SIGHUP: policy: the config's policy is revision 3"),
        "{log}"
    );
    gg.eventually_answers(&[], "stable").await;
    assert_eq!(gg.client().version(&[("X-Beta", "yes")]).await, "canary");
    assert_eq!(config_differs(&gg).await, Some(0.0));
    let history = ctl.json(&["history"]);
    let last = &history["entries"][0];
    assert_eq!(
        (&last["revision"], &last["actor"], &last["summary"]),
        (
            &3.into(),
            &"config".into(),
            &"policy from the config file (SIGHUP)".into()
        )
    );

    // Once applied, the same file again is nothing to do.
    let log = gg.hup_and_wait().await;
    assert!(
        log.contains("SIGHUP: policy: the config's policy runs (revision 3)"),
        "{log}"
    );

    // The log format is switched without a restart: the lines after it are JSON.
    gg.edit_config(|b| b.log_format("json"));
    let log = gg.hup_and_wait().await;
    let last = log.lines().last().unwrap_or_default();
    let line: serde_json::Value = serde_json::from_str(last)
        .unwrap_or_else(|e| panic!("not a JSON line ({e}): {last}\n{log}"));
    assert_eq!(
        line["fields"]["message"],
        "SIGHUP: policy: the config's policy runs (revision 3)"
    );
    assert!(
        log.contains(r#""message":"SIGHUP: log: format json""#),
        "{log}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_upstream_added_by_sighup_gets_traffic_without_a_restart() {
    let (stable, canary, next) = (
        backend("stable").await,
        backend("canary").await,
        backend("next").await,
    );
    let mut gg = web_gateway(&stable, &canary)
        .admin_token("alice", TOKEN)
        .service(web())
        .start()
        .await;
    let ctl = gg.ctl();
    let run = ctl.run(&["versions", "set", "--service", "web", "v3", "next"]);
    assert_eq!(run.code, 1, "{run:?}");
    assert!(
        run.stderr
            .contains("unknown upstream `next` (configured upstreams: stable, canary)"),
        "{run:?}"
    );

    // The new upstream in the config, and SIGHUP.
    gg.edit_config(|b| b.upstream("next", &next));
    let log = gg.hup_and_wait().await;
    assert!(log.contains("SIGHUP: upstreams: added next"), "{log}");
    ctl.ok(&["versions", "set", "--service", "web", "v3", "next"]);
    let rule =
        r#"{"name": "next", "version": "v3", "when": {"header": "X-Next", "present": true}}"#;
    ctl.ok(&["rules", "add", "--service", "web", rule]);
    gg.eventually_answers(&[("X-Next", "1")], "next").await;
    assert_eq!(gg.client().version(&[]).await, "stable");
    let served = next.requests();
    assert!(served >= 1);

    // Removing it while the running policy uses it is refused: the table stays.
    gg.edit_config(|b| b.without_upstream("next"));
    let run = ctl.run(&["reload"]);
    assert_eq!(run.code, 1, "{run:?}");
    assert!(
        run.stdout.contains("upstreams  refused")
            && run
                .stdout
                .contains("uses an upstream the new config removes")
            && run
                .stdout
                .contains("services[0].versions.v3: unknown upstream `next`"),
        "{run:?}"
    );
    assert_eq!(
        run.stderr.trim(),
        "graygate ctl: not everything was reloaded: upstreams not applied (see above)"
    );
    assert_eq!(gg.client().version(&[("X-Next", "1")]).await, "next");

    // Once the policy no longer uses it, the reload removes it.
    ctl.ok(&["rules", "delete", "--service", "web", "next"]);
    ctl.ok(&["versions", "delete", "--service", "web", "v3"]);
    let out = ctl.ok(&["reload"]);
    assert!(out.contains("upstreams  applied    removed next"), "{out}");
    let run = ctl.run(&["versions", "set", "--service", "web", "v3", "next"]);
    assert!(
        run.stderr
            .contains("unknown upstream `next` (configured upstreams: stable, canary)"),
        "{run:?}"
    );

    // Timeouts come with the table; a setting only a restart applies is named.
    gg.edit_config(|b| {
        b.upstream_response_timeout(Duration::from_secs(5))
            .version_header("X-Served-By")
    });
    let out = ctl.ok(&["reload"]);
    assert!(
        out.contains("timeouts   applied    connect 2s, upstream_response 5s, idle 1m, client_body 30s, upstream_body 1m"),
        "{out}"
    );
    assert!(
        out.contains("changed, applied only by a restart: version_header"),
        "{out}"
    );
    // And `next` back again takes its old place.
    gg.edit_config(|b| b.upstream("next", &next));
    let out = ctl.ok(&["reload"]);
    assert!(out.contains("upstreams  applied    added next"), "{out}");
    ctl.ok(&["versions", "set", "--service", "web", "v3", "next"]);
    ctl.ok(&["rules", "add", "--service", "web", rule]);
    gg.eventually_answers(&[("X-Next", "1")], "next").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ctl_reload_force_applies_the_file_over_runtime_changes_and_a_rollout() {
    let (stable, canary) = (backend("stable").await, backend("canary").await);
    let mut gg = web_gateway(&stable, &canary)
        .admin_token("alice", TOKEN)
        .service(web())
        .start()
        .await;
    let ctl = gg.ctl();
    let mut admin = gg.admin_api();
    ctl.ok(&["weights", "set", "--service", "web", "canary=100"]);
    let out = ctl.ok(&["reload"]);
    assert!(
        out.contains("policy     unchanged  the config's policy has not changed since it was applied (revision 1)"),
        "{out}"
    );

    // A rollout in progress on `web` (a plan the driver has not started yet counts too).
    let mut service = admin.get("/v1/services/web").await;
    service["rollout"] = serde_json::json!({"version": "canary"});
    let (reply, _) = admin
        .send("PUT", "/v1/services/web", &[], &service.to_string())
        .await;
    assert_eq!(reply.status, 200, "{reply:?}");

    // An edited file is refused over it, by SIGHUP and by ctl reload.
    gg.edit_config(|mut b| {
        b.policy_mut().services[0].rules.push(beta_rule());
        b
    });
    let log = gg.hup_and_wait().await;
    assert!(
        log.contains("SIGHUP: policy: not applied: a rollout is in progress on web"),
        "{log}"
    );
    let (reply, body) = admin.send("POST", "/v1/reload", &[], "").await;
    assert_eq!(reply.status, 200, "{reply:?}");
    assert_eq!(body["policy"]["outcome"], "refused");
    assert_eq!(body["policy"]["rollouts"], serde_json::json!(["web"]));
    let run = ctl.run(&["reload"]);
    assert_eq!(run.code, 1, "{run:?}");
    assert!(run.stdout.contains("policy     refused"), "{run:?}");
    assert_eq!(gg.client().version(&[]).await, "canary");

    // --force applies it: the file's policy runs, the rollout and the runtime change are gone.
    let out = ctl.ok(&["reload", "--force"]);
    assert!(
        out.contains("policy     applied    the config's policy is revision"),
        "{out}"
    );
    assert!(out.contains("(forced)"), "{out}");
    gg.eventually_answers(&[], "stable").await;
    assert_eq!(gg.client().version(&[("X-Beta", "yes")]).await, "canary");
    let service = admin.get("/v1/services/web").await;
    assert_eq!(service.get("rollout"), None, "{service}");
    let history = ctl.json(&["history"]);
    assert_eq!(
        history["entries"][0]["summary"],
        "policy from the config file (reload by alice, forced)"
    );

    // What a user can get wrong: the query, and a config that does not read.
    let (reply, body) = admin.send("POST", "/v1/reload?force=maybe", &[], "").await;
    assert_eq!(reply.status, 400, "{reply:?}");
    assert_eq!(
        (&body["error"]["field"], &body["error"]["message"]),
        (
            &"force".into(),
            &"force: `maybe` is not true or false".into()
        )
    );
    gg.edit_config(|b| b.upstream("stable", &stable));
    let run = ctl.run(&["reload"]);
    assert_eq!(run.code, 1, "{run:?}");
    assert!(
        run.stderr.starts_with("config not reloaded: ")
            && run
                .stderr
                .contains("upstreams[2].name: upstream `stable` is defined twice"),
        "{run:?}"
    );
    let log = gg.hup_and_wait().await;
    assert!(log.contains("SIGHUP: nothing reloaded"), "{log}");
}
