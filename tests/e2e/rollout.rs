//! A whole rollout driven through the real `graygate ctl`: gray list -> 10% -> 50% -> promote ->
//! rollback (the promote undone) -> rollback (the canary stopped) -> undo, checking where real
//! requests go after every step. On the embedded store, and
//! on Redis with two graygate instances (changes made through one reach the other). And with
//! memcached, `ctl list add` writes the original nginx + lua key layout.

use crate::support::*;
use graygate::policy::bucket_of;
use std::net::SocketAddr;
use std::time::Duration;

use crate::support::TOKEN;

/// How many sticky identities the split is measured on.
const USERS: u32 = 2000;

/// How long an instance may take to follow a change (typically a few ms; generous for CI).
const FOLLOW: Duration = Duration::from_secs(2);

const GRAY_IP: &str = "10.0.0.7";
const OTHER_IP: &str = "10.0.0.8";

/// The web service with a gray list rule, an admin API with alice's token.
fn web_with_gray_list(stable: &Backend, canary: &Backend) -> GatewayBuilder {
    web_gateway(stable, canary)
        .trusted_proxies(["127.0.0.0/8"])
        .admin_token("alice", TOKEN)
        .service(web().rule(
            "gray-ips",
            "canary",
            client_ip().lookup("gray_ips").equals("1"),
        ))
}

/// Where requests go on one instance right now.
#[derive(Debug, PartialEq, Eq)]
struct Routing {
    /// The version that answers the gray IP and another IP (no user id).
    gray_ip: String,
    other_ip: String,
    /// User ids 1..=USERS that reached the canary.
    canary_users: Vec<u32>,
}

async fn routing(addr: SocketAddr) -> Routing {
    let mut c = Client::new(addr);
    let gray_ip = c.version(&[("X-Real-IP", GRAY_IP)]).await;
    let other_ip = c.version(&[("X-Real-IP", OTHER_IP)]).await;
    let mut canary_users = Vec::new();
    for id in 1..=USERS {
        let id_text = id.to_string();
        if c.version(&[("X-User-Id", &id_text)]).await == "canary" {
            canary_users.push(id);
        }
    }
    Routing {
        gray_ip,
        other_ip,
        canary_users,
    }
}

/// What a step should produce: gray and other IP versions, and the canary share of the split
/// (`None`: every user on `all_users`).
struct Expect {
    gray_ip: &'static str,
    other_ip: &'static str,
    split: Option<f64>,
    all_users: &'static str,
}

impl Expect {
    fn routing(&self) -> Routing {
        let canary_users = match self.split {
            Some(pct) => (1..=USERS)
                .filter(|id| f64::from(bucket_of("web", &id.to_string())) < pct * 100.0)
                .collect(),
            None if self.all_users == "canary" => (1..=USERS).collect(),
            None => Vec::new(),
        };
        Routing {
            gray_ip: self.gray_ip.to_string(),
            other_ip: self.other_ip.to_string(),
            canary_users,
        }
    }
}

/// Before the rollout: everyone on stable.
const ALL_STABLE: Expect = Expect {
    gray_ip: "stable",
    other_ip: "stable",
    split: None,
    all_users: "stable",
};

/// The gray list in force: its IP on the canary, everyone else on stable (also after the
/// canary's weights were rolled back to 0).
const GRAY_LIST: Expect = Expect {
    gray_ip: "canary",
    ..ALL_STABLE
};

/// The gray list and a sticky split that puts `pct`% of users on the canary.
const fn gray_list_and_split(pct: f64) -> Expect {
    Expect {
        split: Some(pct),
        all_users: "",
        ..GRAY_LIST
    }
}

/// After a promote: everyone on the canary.
const PROMOTED: Expect = Expect {
    gray_ip: "canary",
    other_ip: "canary",
    split: None,
    all_users: "canary",
};

/// Polls every instance until it routes as `expect` says (each bounded by [`FOLLOW`]); checks
/// the split's share against its target (within 1.5 points).
async fn check(step: &str, instances: &[SocketAddr], expect: &Expect) {
    let want = expect.routing();
    if let Some(pct) = expect.split {
        let share = want.canary_users.len() as f64 * 100.0 / f64::from(USERS);
        assert!(
            (share - pct).abs() <= 1.5,
            "{step}: the sticky split puts {share:.2}% on canary, not ~{pct}%"
        );
    }
    for &addr in instances {
        eventually(format!("{step} on {addr}"), async || {
            let got = routing(addr).await;
            if got == want {
                Ok(())
            } else {
                Err(format!(
                    "gray ip -> {} (want {}), other ip -> {} (want {}), {} users on canary (want {})",
                    got.gray_ip,
                    want.gray_ip,
                    got.other_ip,
                    want.other_ip,
                    got.canary_users.len(),
                    want.canary_users.len()
                ))
            }
        })
        .within(FOLLOW)
        .await;
    }
}

/// The revision a `--json` ctl answer names.
fn revision(answer: &serde_json::Value) -> u64 {
    answer["revision"].as_u64().expect("a revision")
}

/// Runs the rollout through `ctl` (pointed at the first instance) and checks every instance
/// after every step. `between` runs after each step before the checks (the Redis test measures
/// how fast the second instance follows there).
async fn rollout(ctl: &Ctl, instances: &[SocketAddr]) {
    check("start", instances, &ALL_STABLE).await;

    // 1. The gray list: one IP goes to the canary, everyone else stays.
    let out = ctl.ok(&["list", "add", "gray_ips", GRAY_IP, "--ttl", "1h"]);
    assert_eq!(out.trim(), "list gray_ips: 1 entries written");
    assert_eq!(ctl.ok(&["list", "count", "gray_ips"]).trim(), "1");
    check("gray list", instances, &GRAY_LIST).await;

    // 2. 10% of users, sticky by user id.
    let ten = ctl.json(&[
        "weights",
        "set",
        "--service",
        "web",
        "canary=10",
        "--by",
        "header:X-User-Id",
    ]);
    let ten_rev = revision(&ten);
    check("10%", instances, &gray_list_and_split(10.0)).await;

    // 3. 50%: the same 10% stay on the canary, more join.
    let out = ctl.ok(&["weights", "set", "--service", "web", "canary=50"]);
    assert!(
        out.trim()
            .ends_with("web: stable=50% canary=50% (sticky by header X-User-Id)"),
        "{out}"
    );
    let fifty_rev = ten_rev + 1;
    check("50%", instances, &gray_list_and_split(50.0)).await;

    // 4. Promote: everyone on the new stable version at once; the rules, the split's identity
    //    and the rollback target stay.
    let out = ctl.ok(&["promote", "--service", "web", "--version", "canary"]);
    assert!(out.contains("canary is stable"), "{out}");
    check("promote", instances, &PROMOTED).await;
    let status = ctl.json(&["status"]);
    assert_eq!(status["services"][0]["stable"], "canary");
    assert_eq!(status["services"][0]["rollback_to"], "stable");
    assert_eq!(status["services"][0]["rules"][0]["name"], "gray-ips");

    // 5. Rollback right after the promote: the service as it was at the 50% step.
    let out = ctl.ok(&["rollback", "--service", "web"]);
    assert_eq!(
        out.trim(),
        format!(
            "revision {}: web: promote of canary undone: stable is stable again, rules and \
             split as before, canary back at 50%",
            fifty_rev + 2
        )
    );
    check(
        "rollback of the promote",
        instances,
        &gray_list_and_split(50.0),
    )
    .await;

    // 6. Rollback again: the canary stops; the gray list rule stays. A third one has nothing
    //    left to do and makes no revision.
    let out = ctl.ok(&["rollback", "--service", "web"]);
    assert!(
        out.contains("web: weights 0, everyone not matched by a rule on stable"),
        "{out}"
    );
    check("rollback of the canary", instances, &GRAY_LIST).await;
    let stopped_rev = fifty_rev + 3;
    let out = ctl.ok(&["rollback", "--service", "web"]);
    assert!(
        out.starts_with(&format!("revision {stopped_rev} (unchanged): ")),
        "{out}"
    );
    let again = ctl.json(&["rollback", "--service", "web"]);
    assert_eq!(
        (revision(&again), &again["unchanged"]),
        (stopped_rev, &true.into())
    );

    // 7. Undo to the 50% step: the split is back.
    let out = ctl.ok(&["undo", &fifty_rev.to_string()]);
    assert!(
        out.contains(&format!("policy of revision {fifty_rev} restored")),
        "{out}"
    );
    check("undo", instances, &gray_list_and_split(50.0)).await;

    // 8. The history names every step and who made it; the rollbacks that changed nothing
    //    are not in it.
    let history = ctl.ok(&["history"]);
    let wanted = [
        format!("undo to revision {fifty_rev}"),
        "rollback web".to_string(),
        "rollback web".to_string(),
        "promote web: canary is stable".to_string(),
        "weights web: canary=50".to_string(),
        "weights web: canary=10".to_string(),
    ];
    let lines: Vec<&str> = history.lines().skip(1).collect();
    assert!(
        lines.len() >= wanted.len(),
        "history has {} changes, not the {} of the rollout:\n{history}",
        lines.len(),
        wanted.len()
    );
    for (line, want) in lines.iter().zip(&wanted) {
        assert!(
            line.contains(" alice ") && line.ends_with(want.as_str()),
            "history line {line:?} is not `alice ... {want}`:\n{history}"
        );
    }
    let json = ctl.json(&["history", "--limit", "10"]);
    let entries = json["entries"].as_array().unwrap();
    assert_eq!(entries[0]["revision"].as_u64(), Some(fifty_rev + 4));
    assert_eq!(entries[5]["revision"].as_u64(), Some(ten_rev));
    // A page lists the changes; one change shows the policy before and after it.
    let one = ctl.json(&["history", &ten_rev.to_string()]);
    assert_eq!(
        one["entry"]["before"]["services"][0]["split"],
        serde_json::Value::Null
    );
    assert_eq!(
        one["entry"]["after"]["services"][0]["split"]["weights"]["canary"],
        10.0
    );
    // Live traffic per version was counted.
    let status = ctl.json(&["status"]);
    let requests = &status["services"][0]["traffic"];
    assert!(
        requests["canary"]["requests"].as_u64().unwrap() > 0,
        "{status}"
    );
    assert!(
        requests["stable"]["requests"].as_u64().unwrap() > 0,
        "{status}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_whole_rollout_through_ctl_on_the_embedded_store() {
    let (stable, canary) = (backend("stable").await, backend("canary").await);
    let gg = web_with_gray_list(&stable, &canary).start().await;
    let ctl = gg.ctl();
    rollout(&ctl, &[gg.addr]).await;

    // Changes survive a restart, and so does the history.
    let history = ctl.ok(&["history"]);
    let gg = gg.restart().await;
    let ctl = gg.ctl();
    assert_eq!(ctl.ok(&["history"]), history);
    check("after a restart", &[gg.addr], &gray_list_and_split(50.0)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_whole_rollout_on_redis_reaches_both_instances() {
    let (stable, canary) = (backend("stable").await, backend("canary").await);
    let redis = RedisServer::start().await;
    let config = web_with_gray_list(&stable, &canary).store(&redis);
    let a = config.clone().start().await;
    let b = config.start().await;
    let ctl_a = a.ctl();
    rollout(&ctl_a, &[a.addr, b.addr]).await;

    // One explicit check of how fast B follows a change made through A: one user that the 50%
    // split keeps on stable moves to the canary when A promotes.
    let user = (1..=USERS)
        .find(|id| bucket_of("web", &id.to_string()) >= 5000)
        .unwrap()
        .to_string();
    let mut on_b = b.client();
    assert_eq!(on_b.version(&[("X-User-Id", &user)]).await, "stable");
    ctl_a.ok(&["promote", "--service", "web"]);
    eventually("instance B follows A's promote", async || {
        equals(on_b.version(&[("X-User-Id", &user)]).await, "canary")
    })
    .within(Duration::from_millis(100))
    .await;

    // B's admin API sees the same policy and history, written by A.
    let ctl_b = b.ctl();
    assert_eq!(ctl_b.ok(&["history"]), ctl_a.ok(&["history"]));
    assert_eq!(ctl_b.ok(&["policy", "get"]), ctl_a.ok(&["policy", "get"]));
    let entries = redis.cli(&["zcard", "graygate:history"]);
    assert_eq!(entries, "8", "one history record per change, seed included");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ctl_list_add_writes_the_original_memcached_layout() {
    let (stable, canary) = (backend("stable").await, backend("canary").await);
    let mc = MemcachedServer::start().await;
    let gg = web_with_gray_list(&stable, &canary)
        .store(&mc)
        .cache_ttl(Duration::from_millis(200))
        .start()
        .await;
    let ctl = gg.ctl();
    let mut c = gg.client();
    assert_eq!(c.version(&[("X-Real-IP", GRAY_IP)]).await, "stable");

    ctl.ok(&[
        "list", "add", "gray_ips", GRAY_IP, "--value", "1", "--ttl", "1h",
    ]);
    // What the nginx + lua design reads: key = the IP, value "1", flags 0.
    assert_eq!(
        mc.raw(&format!("get {GRAY_IP}\r\n"), "END\r\n"),
        format!("VALUE {GRAY_IP} 0 1\r\n1\r\nEND\r\n")
    );
    assert_eq!(c.version(&[("X-Real-IP", GRAY_IP)]).await, "canary");
    assert_eq!(c.version(&[("X-Real-IP", OTHER_IP)]).await, "stable");

    ctl.ok(&["list", "remove", "gray_ips", GRAY_IP]);
    assert_eq!(mc.raw(&format!("get {GRAY_IP}\r\n"), "END\r\n"), "END\r\n");
    assert_eq!(c.version(&[("X-Real-IP", GRAY_IP)]).await, "stable");

    // memcached cannot enumerate keys: the API says so, and ctl exits 3 with that message.
    let run = ctl.run(&["list", "show", "gray_ips"]);
    assert_eq!(run.code, 3, "{run:?}");
    assert!(
        run.stderr.contains("memcached cannot list the keys"),
        "{run:?}"
    );
}

/// The hand-made steps and a rollout never fight: weights set by hand pause it, a rollback aborts
/// it (during its guard too, with the old stable back), a promote of its version ends it as
/// promoted, and a promote of another version is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hand_made_steps_go_through_the_rollout() {
    let stable = backend("stable").await;
    let canary = backend("canary").await;
    let next = backend("next").await;
    let mut builder = web_with_gray_list(&stable, &canary).upstream("next", &next);
    builder.policy_mut().services.iter_mut().for_each(|s| {
        s.versions.insert("next".into(), "next".into());
    });
    let gg = builder.start().await;
    let ctl = gg.ctl();
    let status = |ctl: &Ctl| ctl.json(&["rollout", "status", "--service", "web"]);
    let start = [
        "rollout",
        "start",
        "--service",
        "web",
        "--version",
        "canary",
        "--step-time",
        "1h",
        "--interval",
        "1h",
        "--max-wait",
        "2h",
    ];
    ctl.ok(&start);
    assert_eq!(status(&ctl)["state"], "progressing");

    // Weights by hand: they stand, and the rollout pauses instead of overwriting them.
    ctl.ok(&["weights", "set", "--service", "web", "canary=30"]);
    let s = status(&ctl);
    assert_eq!(
        (s["state"].as_str(), s["weight"].as_f64()),
        (Some("paused"), Some(30.0)),
        "{s}"
    );
    assert_eq!(
        s["reason"],
        "weights set by alice: the rollout waits for resume"
    );

    // Promoting another version than the rollout's is refused and changes nothing.
    let refused = ctl.run(&["promote", "--service", "web", "--version", "next"]);
    assert_eq!(refused.code, 1, "{refused:?}");
    assert!(
        refused
            .stderr
            .contains("a rollout of `web` is carrying canary"),
        "{refused:?}"
    );

    // A rollback aborts the rollout: weight 0, everyone not on the gray list on stable.
    ctl.ok(&["rollback", "--service", "web"]);
    let s = status(&ctl);
    assert_eq!(
        (s["state"].as_str(), s["weight"].as_f64()),
        (Some("aborted"), Some(0.0)),
        "{s}"
    );
    assert_eq!(s["reason"], "aborted: rolled back by alice");

    // Retried, then promoted by hand: the rollout ends promoted, its guard running.
    ctl.ok(&["rollout", "retry", "--service", "web"]);
    ctl.ok(&["promote", "--service", "web", "--version", "canary"]);
    let s = status(&ctl);
    assert_eq!(s["state"], "promoted", "{s}");
    assert!(s["guard_until"].is_string(), "{s}");
    let weights = ctl.json(&["weights", "get", "--service", "web"]);
    assert_eq!(weights["stable"], "canary");

    // A rollback during the guard: the old stable is back, the canary at 0.
    ctl.ok(&["rollback", "--service", "web"]);
    let s = status(&ctl);
    assert_eq!(s["state"], "aborted", "{s}");
    assert_eq!(
        s["reason"],
        "aborted after the promote, rolled back: rolled back by alice"
    );
    let weights = ctl.json(&["weights", "get", "--service", "web"]);
    assert_eq!(weights["stable"], "stable", "{weights}");
    assert_eq!(weights["split"]["weights"]["canary"], 0.0, "{weights}");
    let mut c = gg.client();
    assert_eq!(c.version(&[("X-User-Id", "77")]).await, "stable");
}
