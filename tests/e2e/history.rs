//! The policy history stays bounded (issue 11, item 3): a big policy and a few weight changes
//! used to grow the data directory by two copies of the policy per change, and
//! `GET /v1/history?limit=1000` answered every copy at once (93 MB, 2.2 GB of RSS). Now a record
//! holds the reverse patch of its change, the store prunes to `[history]` in the write, a page
//! holds at most 100 changes and no document, and one change's documents are rebuilt on demand.

use crate::support::*;
use serde_json::{json, Value};
use std::path::Path;

/// The bytes of every file under `dir`, as `du -sb` counts them.
fn dir_bytes(dir: &Path) -> u64 {
    let mut total = 0;
    for entry in std::fs::read_dir(dir).expect("read the data directory") {
        let entry = entry.expect("a directory entry");
        let meta = entry.metadata().expect("its metadata");
        total += if meta.is_dir() {
            dir_bytes(&entry.path())
        } else {
            meta.len()
        };
    }
    total
}

/// The gateway's policy with a rule on `count` client networks (`10.x.y.z/32`, from `first`):
/// about 18 bytes of JSON per network.
async fn with_networks(admin: &mut Admin, first: u32, count: u32) -> String {
    let mut doc = admin.get("/v1/policy").await;
    doc.as_object_mut().unwrap().remove("revision");
    let cidrs: Vec<String> = (first..first + count)
        .map(|i| format!("10.{}.{}.{}/32", i >> 16 & 255, i >> 8 & 255, i & 255))
        .collect();
    doc["services"][0]["rules"] = json!([{"name": "gray-networks", "version": "canary",
        "when": {"cidr": cidrs}}]);
    doc.to_string()
}

/// Sends and expects `status`; the JSON answer.
async fn expect(admin: &mut Admin, method: &str, path: &str, body: &str, status: u16) -> Value {
    let (reply, json) = admin.send(method, path, &[], body).await;
    assert_eq!(
        reply.status,
        status,
        "{method} {path}: {}",
        &reply.body[..reply.body.len().min(500)]
    );
    json
}

/// Every page of the history, following `next` (at most `pages` of them); the changes and the
/// bytes of every answer.
async fn all_pages(admin: &mut Admin, pages: usize) -> (Vec<Value>, usize) {
    let mut next = Some("/v1/history?limit=100".to_owned());
    let (mut changes, mut bytes) = (Vec::new(), 0);
    for _ in 0..pages {
        let Some(path) = next.take() else { break };
        let (reply, page) = admin.send("GET", &path, &[], "").await;
        assert_eq!(reply.status, 200, "GET {path}: {reply:?}");
        bytes += reply.body.len();
        changes.extend(page["entries"].as_array().unwrap().iter().cloned());
        next = page["next"].as_str().map(str::to_owned);
    }
    assert!(next.is_none(), "more than {pages} pages");
    (changes, bytes)
}

/// The weight of `canary` in a document.
fn canary_weight(doc: &Value) -> Value {
    doc["services"][0]["split"]["weights"]["canary"].clone()
}

/// The observation of the issue, on the embedded store: a policy of several MB, then weight
/// changes. Before, each change grew the data directory by about four times the policy (21x for
/// 5 changes of a 9.6 MB policy) and the history answered every copy; now the weight changes cost
/// records of a few hundred bytes, the directory stops growing, and no answer of the history list
/// holds a document.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_big_policy_and_weight_changes_keep_the_history_small() {
    let stable = backend("stable").await;
    let canary = backend("canary").await;
    // The last-known-good snapshot (one copy of the policy, rewritten through a temporary file
    // after every change) is kept out of the data directory whose growth is measured.
    let gg = web_gateway(&stable, &canary)
        .snapshot("snapshot.json")
        .service(web())
        .admin_token("alice", TOKEN)
        .start()
        .await;
    let data = gg.dir().join("graygate-data");
    let mut admin = gg.admin_api();

    let policy = with_networks(&mut admin, 0, 250_000).await;
    assert!(policy.len() > 4_000_000, "{} bytes", policy.len());
    let put = expect(&mut admin, "PUT", "/v1/policy", &policy, 200).await;
    let big = put["revision"].as_u64().unwrap();
    let after_policy = dir_bytes(&data);
    let mut sizes = Vec::new();
    for i in 1..=10 {
        let body = json!({"weights": {"canary": i * 5}}).to_string();
        expect(&mut admin, "PUT", "/v1/services/web/weights", &body, 200).await;
        sizes.push(dir_bytes(&data));
    }
    // Each change used to add two copies of the policy to the history: 20 copies for 10 changes,
    // growing without end. Now the records are a few hundred bytes, and what is left is redb
    // rewriting the policy itself (copy on write, old pages reused a few commits later): the
    // directory stops growing.
    let policy_len = policy.len() as u64;
    let (after_5, after_10) = (sizes[4], sizes[9]);
    assert!(
        // redb may also give pages back and shrink its file: no growth then.
        after_10.saturating_sub(after_policy) < 10 * policy_len
            && after_10.saturating_sub(after_5) < policy_len,
        "10 weight changes grew the data directory from {after_policy} to {after_10} bytes \
         ({after_5} after 5; policy: {policy_len} bytes): {sizes:?}"
    );

    // A page over the largest is refused, not cut; every page together is small.
    let refused = expect(&mut admin, "GET", "/v1/history?limit=1000", "", 422).await;
    assert_eq!(refused["error"]["field"], "limit", "{refused}");
    let (changes, bytes) = all_pages(&mut admin, 10).await;
    let revisions: Vec<u64> = changes
        .iter()
        .map(|c| c["revision"].as_u64().unwrap())
        .collect();
    assert_eq!(revisions, (1..=big + 10).rev().collect::<Vec<u64>>());
    assert!(bytes < 16 * 1024, "the history's pages are {bytes} bytes");
    let recorded: u64 = changes.iter().map(|c| c["bytes"].as_u64().unwrap()).sum();
    assert!(recorded < 16 * 1024, "the records are {recorded} bytes");
    assert!(changes
        .iter()
        .all(|c| c.get("before").is_none() && c.get("after").is_none()));

    // One change's documents are rebuilt from the policy: the third weight change...
    let one = expect(
        &mut admin,
        "GET",
        &format!("/v1/history/{}", big + 3),
        "",
        200,
    )
    .await;
    let entry = &one["entry"];
    assert_eq!(
        entry["summary"], "weights web: canary=15",
        "{}",
        entry["summary"]
    );
    assert_eq!(canary_weight(&entry["before"]), json!(10.0));
    assert_eq!(canary_weight(&entry["after"]), json!(15.0));
    // ... and the big policy itself, before and after.
    let one = expect(&mut admin, "GET", &format!("/v1/history/{big}"), "", 200).await;
    let cidrs = &one["entry"]["after"]["services"][0]["rules"][0]["when"]["cidr"];
    assert_eq!(cidrs.as_array().map(Vec::len), Some(250_000));
    assert!(one["entry"]["before"]["services"][0].get("rules").is_none());

    // Undo to the big policy's revision: the weights it had (none) are back.
    let undone = expect(
        &mut admin,
        "POST",
        "/v1/undo",
        &json!({"revision": big}).to_string(),
        200,
    )
    .await;
    assert_eq!(undone["restored"], big);
    assert_eq!(canary_weight(&undone["policy"]), Value::Null);
    let rules = &undone["policy"]["services"][0]["rules"][0]["when"]["cidr"];
    assert_eq!(rules.as_array().map(Vec::len), Some(250_000));
}

/// The same on Redis: the history's memory stays a few KB after the big policy and 5 changes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_big_policy_and_weight_changes_keep_the_redis_history_small() {
    let redis = RedisServer::start().await;
    let stable = backend("stable").await;
    let canary = backend("canary").await;
    let gg = web_gateway(&stable, &canary)
        .service(web())
        .store(redis_store(redis.url()))
        .admin_token("alice", TOKEN)
        .start()
        .await;
    let mut admin = gg.admin_api();
    let policy = with_networks(&mut admin, 0, 250_000).await;
    expect(&mut admin, "PUT", "/v1/policy", &policy, 200).await;
    for i in 1..=5 {
        let body = json!({"weights": {"canary": i * 10}}).to_string();
        expect(&mut admin, "PUT", "/v1/services/web/weights", &body, 200).await;
    }
    assert_eq!(redis.cli(&["ZCARD", "graygate:history"]), "7");
    let memory: u64 = redis
        .cli(&["MEMORY", "USAGE", "graygate:history"])
        .parse()
        .expect("MEMORY USAGE answers a number");
    assert!(memory < 32 * 1024, "the history takes {memory} bytes");
    let counted: u64 = redis
        .cli(&["HGET", "graygate:policy", "history_bytes"])
        .parse()
        .unwrap();
    let (changes, _) = all_pages(&mut admin, 10).await;
    let listed: u64 = changes.iter().map(|c| c["bytes"].as_u64().unwrap()).sum();
    assert_eq!(counted, listed, "history_bytes is the records' size");
    let one = expect(&mut admin, "GET", "/v1/history/5", "", 200).await;
    assert_eq!(canary_weight(&one["entry"]["after"]), json!(30.0));
}

/// `[history] keep` and `max_bytes` prune in the write; what was pruned is answered 404 naming
/// the retention, for a page, one change and undo alike; the newest record stays even alone over
/// `max_bytes`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_retention_prunes_and_says_what_it_keeps() {
    let stable = backend("stable").await;
    let canary = backend("canary").await;
    let gg = web_gateway(&stable, &canary)
        .service(web())
        .admin_token("alice", TOKEN)
        .history(3, "64KiB")
        .start()
        .await;
    let mut admin = gg.admin_api();
    for i in 1..=6 {
        let body = json!({"weights": {"canary": i}}).to_string();
        expect(&mut admin, "PUT", "/v1/services/web/weights", &body, 200).await;
    }
    // Revision 1 (the config's policy) and six changes: the newest three are kept.
    let (changes, _) = all_pages(&mut admin, 2).await;
    let revisions: Vec<u64> = changes
        .iter()
        .map(|c| c["revision"].as_u64().unwrap())
        .collect();
    assert_eq!(revisions, [7, 6, 5]);
    let gone = "revision 4 is not in the history (the history keeps the newest 3 changes, at most 64.0 KiB of records)";
    let answer = expect(&mut admin, "GET", "/v1/history/4", "", 404).await;
    assert_eq!(answer["error"]["message"], gone, "{answer}");
    let undo = json!({"revision": 4}).to_string();
    let answer = expect(&mut admin, "POST", "/v1/undo", &undo, 404).await;
    assert_eq!(answer["error"]["message"], gone, "{answer}");
    // The oldest kept one still has its documents.
    let one = expect(&mut admin, "GET", "/v1/history/5", "", 200).await;
    assert_eq!(canary_weight(&one["entry"]["before"]), json!(3.0));
    assert_eq!(canary_weight(&one["entry"]["after"]), json!(4.0));

    // A policy replaced by another of ~90 KB: its record (the patch back) is over 64 KiB alone,
    // so it is kept and every older one goes.
    let first = with_networks(&mut admin, 0, 5_000).await;
    expect(&mut admin, "PUT", "/v1/policy", &first, 200).await;
    let second = with_networks(&mut admin, 100_000, 5_000).await;
    let put = expect(&mut admin, "PUT", "/v1/policy", &second, 200).await;
    let last = put["revision"].as_u64().unwrap();
    let (changes, _) = all_pages(&mut admin, 2).await;
    assert_eq!(changes.len(), 1, "{changes:?}");
    assert_eq!(changes[0]["revision"], last);
    assert!(
        changes[0]["bytes"].as_u64().unwrap() > 64 * 1024,
        "{changes:?}"
    );
    let one = expect(&mut admin, "GET", &format!("/v1/history/{last}"), "", 200).await;
    let before = &one["entry"]["before"]["services"][0]["rules"][0]["when"]["cidr"];
    assert_eq!(before[0], "10.0.0.0/32");
}

/// `ctl history` follows the pages: `--limit` past one page, `--all`, `--before`; the table says
/// how to read on; `ctl history REVISION` shows one change with its documents.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ctl_history_follows_the_pages() {
    let stable = backend("stable").await;
    let canary = backend("canary").await;
    let gg = web_gateway(&stable, &canary)
        .service(web())
        .admin_token("alice", TOKEN)
        .start()
        .await;
    let mut admin = gg.admin_api();
    // 129 changes and the config's policy: two pages of 100 and more.
    for i in 1..=129 {
        let body = json!({"weights": {"canary": i % 50 + 1}}).to_string();
        expect(&mut admin, "PUT", "/v1/services/web/weights", &body, 200).await;
    }
    let ctl = gg.ctl();
    let revisions = |answer: &Value| -> Vec<u64> {
        answer["entries"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["revision"].as_u64().unwrap())
            .collect()
    };
    let some = ctl.json(&["history", "--limit", "120"]);
    assert_eq!(revisions(&some), (11..=130).rev().collect::<Vec<u64>>());
    assert_eq!(some["next"], "/v1/history?limit=100&before=11");
    let all = ctl.json(&["history", "--all"]);
    assert_eq!(revisions(&all), (1..=130).rev().collect::<Vec<u64>>());
    assert!(all.get("next").is_none(), "{}", all["next"]);
    let older = ctl.json(&["history", "--before", "3"]);
    assert_eq!(revisions(&older), [2, 1]);

    let table = ctl.ok(&["history"]);
    let lines: Vec<&str> = table.lines().collect();
    assert_eq!(lines.len(), 22, "{table}");
    assert_eq!(
        lines[21],
        "older changes: ctl history --before 111 (or --all)"
    );
    let one = ctl.ok(&["history", "2"]);
    assert!(
        one.starts_with("revision 2 at ")
            && one.contains(" by alice: weights web: canary=2\nbefore:\n"),
        "{one}"
    );
    assert!(one.contains("\nafter:\n"), "{one}");
    let missing = ctl.run(&["history", "200"]);
    assert_eq!(missing.code, 1, "{missing:?}");
    assert!(
        missing
            .stderr
            .contains("revision 200 is not in the history"),
        "{missing:?}"
    );
}
