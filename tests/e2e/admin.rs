//! The admin API on the real `graygate run`: every kind of bad input is refused with 400 or 422
//! naming the field and changes nothing; a stale revision gets 409; tokens are checked; without
//! tokens the API is loopback-only; explain; and `graygate ctl`'s exit codes and messages.

use crate::support::*;
use bytes::Bytes;
use serde_json::{json, Value};

use crate::support::TOKEN;

/// A web service with a gray list rule and a user-id range rule, behind trusted loopback proxies.
fn web_with_rules(stable: &Backend, canary: &Backend) -> GatewayBuilder {
    web_gateway(stable, canary)
        .trusted_proxies(["127.0.0.0/8"])
        .service(
            web()
                .rule(
                    "gray-ips",
                    "canary",
                    client_ip().lookup("gray_ips").equals("1"),
                )
                .rule("beta", "canary", header("X-User-Id").range(1, 1000)),
        )
}

/// The same, with an admin API that takes one token.
async fn start() -> (Backend, Backend, Gateway) {
    let stable = backend("stable").await;
    let canary = backend("canary").await;
    let gg = web_with_rules(&stable, &canary)
        .admin_token("alice", TOKEN)
        .start()
        .await;
    (stable, canary, gg)
}

/// One bad request: what is sent and what must come back.
struct Bad {
    what: &'static str,
    method: &'static str,
    path: &'static str,
    body: Value,
    status: u16,
    code: &'static str,
    field: Option<&'static str>,
    message: &'static str,
}

fn bad(
    what: &'static str,
    method: &'static str,
    path: &'static str,
    body: Value,
    (status, code): (u16, &'static str),
    field: Option<&'static str>,
    message: &'static str,
) -> Bad {
    Bad {
        what,
        method,
        path,
        body,
        status,
        code,
        field,
        message,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_is_refused_naming_the_field_and_nothing_is_applied() {
    let (_s, _c, gg) = start().await;
    let mut admin = gg.admin_api();
    let before_doc = admin.get("/v1/policy").await;
    let before = admin.revision().await;
    const INVALID: (u16, &str) = (422, "invalid");
    const BAD: (u16, &str) = (400, "bad_request");

    let cases = vec![
        bad(
            "malformed JSON",
            "PUT",
            "/v1/policy",
            Value::String("{\"routes\": [".into()),
            (400, "malformed_json"),
            None,
            "request body: malformed JSON: EOF while parsing a list",
        ),
        bad(
            "an unknown field",
            "POST",
            "/v1/services",
            json!({"name": "api", "stable": "v1", "versions": {"v1": "stable"}, "stabel": "v1"}),
            BAD,
            Some("stabel"),
            "stabel: unknown field `stabel`, expected one of",
        ),
        bad(
            "an unknown field deep in a rule",
            "POST",
            "/v1/services/web/rules",
            json!({"name": "x", "version": "canary", "when": {"heder": "X-A", "equals": "b"}}),
            BAD,
            Some("when.heder"),
            "when.heder: unknown field `heder`",
        ),
        bad(
            "a wrong type",
            "PUT",
            "/v1/services/web/weights",
            json!({"weights": {"canary": "ten"}}),
            BAD,
            Some("weights.canary"),
            "weights.canary: invalid type: string \"ten\", expected f64",
        ),
        bad(
            "an invalid CIDR",
            "POST",
            "/v1/services/web/rules",
            json!({"name": "office", "version": "canary", "when": {"cidr": ["10.0.0.0/8", "10.1.0.0/33"]}}),
            INVALID,
            Some("services[0].rules[2].when.cidr[1]"),
            "services[0].rules[2].when.cidr[1]: `10.1.0.0/33` is neither an IP address nor a network",
        ),
        bad(
            "an invalid regex",
            "POST",
            "/v1/services/web/rules",
            json!({"name": "re", "version": "canary", "when": {"header": "X-A", "regex": "(unclosed"}}),
            INVALID,
            Some("services[0].rules[2].when.regex"),
            "services[0].rules[2].when.regex: invalid regex",
        ),
        bad(
            "overlapping ranges",
            "POST",
            "/v1/services/web/rules",
            json!({"name": "beta-2", "version": "stable", "when": {"header": "X-User-Id", "range": {"start": 500, "end": 2000}}}),
            INVALID,
            Some("services[0].rules[2].when.range"),
            "services[0].rules[2].when.range: overlaps rule `beta` on the same source (header x-user-id): 500..=1000 would go to `canary`, never to `stable`",
        ),
        bad(
            "an empty range",
            "PUT",
            "/v1/services/web/rules/beta",
            json!({"name": "beta", "version": "canary", "when": {"header": "X-User-Id", "range": {"start": 10, "end": 1}}}),
            INVALID,
            Some("services[0].rules[1].when.range"),
            "services[0].rules[1].when.range: start 10 is not below end 1",
        ),
        bad(
            "a weight over 100",
            "PUT",
            "/v1/services/web/weights",
            json!({"weights": {"canary": 150}}),
            INVALID,
            Some("services[0].split.weights.canary"),
            "services[0].split.weights.canary: 150 is not a percentage from 0 to 100",
        ),
        bad(
            "weights adding up to more than 100",
            "PUT",
            "/v1/services/web",
            json!({"name": "web", "stable": "stable",
                   "versions": {"stable": "stable", "canary": "canary", "next": "canary"},
                   "split": {"weights": {"canary": 60, "next": 50}}}),
            INVALID,
            Some("services[0].split.weights"),
            "services[0].split.weights: weights add up to more than 100 (110.00)",
        ),
        bad(
            "a weight on the stable version",
            "PUT",
            "/v1/services/web/weights",
            json!({"weights": {"stable": 10}}),
            INVALID,
            Some("services[0].split.weights.stable"),
            "services[0].split.weights.stable: the stable version gets what the other weights leave",
        ),
        bad(
            "a weight for an unknown version",
            "PUT",
            "/v1/services/web/weights",
            json!({"weights": {"v9": 10}}),
            INVALID,
            Some("services[0].split.weights.v9"),
            "services[0].split.weights.v9: unknown version `v9` (versions: canary, stable)",
        ),
        bad(
            "an unknown upstream",
            "PUT",
            "/v1/services/web/versions/canary",
            json!({"upstream": "nowhere"}),
            INVALID,
            Some("services[0].versions.canary"),
            "services[0].versions.canary: unknown upstream `nowhere` (configured upstreams: stable, canary)",
        ),
        bad(
            "a rule for an unknown version",
            "POST",
            "/v1/services/web/rules",
            json!({"name": "x", "version": "v9", "when": {"header": "X-A", "present": true}}),
            INVALID,
            Some("services[0].rules[2].version"),
            "services[0].rules[2].version: unknown version `v9`",
        ),
        bad(
            "deleting the stable version",
            "DELETE",
            "/v1/services/web/versions/stable",
            Value::Null,
            INVALID,
            Some("services[0].stable"),
            "services[0].stable: `stable` is the stable version of `web`; promote another one first",
        ),
        bad(
            "deleting a service a route uses",
            "DELETE",
            "/v1/services/web",
            Value::Null,
            INVALID,
            Some("routes[0].service"),
            "routes[0].service: route `web` leads to service `web`",
        ),
        bad(
            "promoting the stable version",
            "POST",
            "/v1/services/web/promote",
            json!({"version": "stable"}),
            INVALID,
            Some("version"),
            "version: `stable` is already the stable version of `web`",
        ),
        bad(
            "an unknown service",
            "PUT",
            "/v1/services/shop/weights",
            json!({"weights": {"canary": 5}}),
            (404, "not_found"),
            None,
            "no service named `shop`",
        ),
        bad(
            "a route that exists",
            "POST",
            "/v1/routes",
            json!({"service": "web"}),
            (409, "exists"),
            Some("routes[0]"),
            "routes[0]: a route named `web` exists; replace it with PUT",
        ),
        bad(
            "an invalid TTL",
            "POST",
            "/v1/lists/gray_ips/entries",
            json!({"entries": [{"key": "10.0.0.7"}, {"key": "10.0.0.8", "ttl": "soon"}]}),
            INVALID,
            Some("entries[1].ttl"),
            "entries[1].ttl: `soon` is not a duration like \"1h\" or \"30m\"",
        ),
        bad(
            "a TTL past the clock (once a worker panic)",
            "POST",
            "/v1/lists/gray_ips/entries",
            json!({"entries": [{"key": "10.0.0.7", "ttl": "500000000000y"}]}),
            INVALID,
            Some("entries[0].ttl"),
            "entries[0].ttl: `500000000000y` is longer than the longest TTL, 10 years",
        ),
        bad(
            "a key longer than every store holds",
            "POST",
            "/v1/lists/tokens/entries",
            json!({"entries": [{"key": "k".repeat(300)}]}),
            INVALID,
            Some("entries[0].key"),
            "entries[0].key: `kkkk",
        ),
        bad(
            "a version name with CR LF (a header injection)",
            "POST",
            "/v1/services/web/versions",
            json!({"name": "v\r\nX-Injected: 1", "upstream": "canary"}),
            INVALID,
            Some("services[0].versions"),
            "services[0].versions: version name \"v\\r\\nX-Injected: 1\" may hold only token characters (letters, digits and !#$%&'*+-.^_`|~)",
        ),
        bad(
            "a service name with LF",
            "POST",
            "/v1/services",
            json!({"name": "api\n", "stable": "v1", "versions": {"v1": "stable"}}),
            INVALID,
            Some("services[1].name"),
            "services[1].name: service name \"api\\n\" may hold only token characters",
        ),
        bad(
            "a rule name with a space",
            "POST",
            "/v1/services/web/rules",
            json!({"name": "beta users", "version": "canary", "when": {"header": "X-A", "present": true}}),
            INVALID,
            Some("services[0].rules[2].name"),
            "services[0].rules[2].name: rule name \"beta users\" may hold only token characters",
        ),
        bad(
            "a key that is not an IP in a list looked up by client IP",
            "POST",
            "/v1/lists/gray_ips/entries",
            json!({"entries": [{"key": "alice"}]}),
            INVALID,
            Some("entries[0].key"),
            "entries[0].key: `alice` is not an IP address, and this list is looked up by client IP (services[0].rules[0].when)",
        ),
        bad(
            "a history page over the largest",
            "GET",
            "/v1/history?limit=1000",
            Value::Null,
            INVALID,
            Some("limit"),
            "limit: 1000 is over the largest page of 100 changes: follow `next` for older ones",
        ),
        bad(
            "a history cursor that is not a revision",
            "GET",
            "/v1/history?before=latest",
            Value::Null,
            BAD,
            Some("before"),
            "before: `latest` is not a whole number",
        ),
        bad(
            "a history revision that is not a number",
            "GET",
            "/v1/history/latest",
            Value::Null,
            INVALID,
            Some("revision"),
            "revision: `latest` is not a revision (a whole number from 1)",
        ),
        bad(
            "a history revision newer than the policy",
            "GET",
            "/v1/history/99",
            Value::Null,
            (404, "not_found"),
            None,
            "revision 99 is not in the history (the history keeps the newest 1000 changes, at most 64.0 MiB of records)",
        ),
        bad(
            "an undo to a revision newer than the policy",
            "POST",
            "/v1/undo",
            json!({"revision": 99}),
            (404, "not_found"),
            None,
            "revision 99 is not in the history (the history keeps the newest 1000 changes, at most 64.0 MiB of records)",
        ),
        bad(
            "an explain with a bad header name",
            "POST",
            "/v1/explain",
            json!({"headers": {"bad header": "x"}}),
            INVALID,
            Some("headers.bad header"),
            "headers.bad header: not a valid header name",
        ),
    ];

    for case in cases {
        let body = match &case.body {
            Value::Null => String::new(),
            Value::String(raw) => raw.clone(),
            json => json.to_string(),
        };
        let (reply, got) = admin.send(case.method, case.path, &[], &body).await;
        assert_eq!(reply.status, case.status, "{}: {reply:?}", case.what);
        assert_eq!(got["error"]["code"], case.code, "{}: {got}", case.what);
        match case.field {
            Some(field) => assert_eq!(got["error"]["field"], field, "{}: {got}", case.what),
            None => assert!(got["error"].get("field").is_none(), "{}: {got}", case.what),
        }
        let message = got["error"]["message"].as_str().unwrap_or_default();
        assert!(
            message.starts_with(case.message),
            "{}: message {message:?} does not start with {:?}",
            case.what,
            case.message
        );
        assert_eq!(
            admin.revision().await,
            before,
            "{}: the revision moved",
            case.what
        );
    }
    assert_eq!(
        admin.get("/v1/policy").await,
        before_doc,
        "the policy changed"
    );
    let count = admin.get("/v1/lists/gray_ips/count").await;
    assert_eq!(count["count"], 0, "a refused list write wrote something");
    let history = admin.get("/v1/history").await;
    assert_eq!(history["entries"].as_array().unwrap().len(), 1, "{history}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stale_revision_gets_409_and_every_etag_is_the_revision() {
    let (_s, _c, gg) = start().await;
    let mut admin = gg.admin_api();
    let (reply, _) = admin.send("GET", "/v1/services/web", &[], "").await;
    assert_eq!(reply.headers["etag"], "\"1\"");

    // Writes of the canary's weight by someone who read revision 1.
    let mut set_canary_read_at_1 = async |canary: u32| {
        let weights = json!({"weights": {"canary": canary}}).to_string();
        let if_match = [("if-match", "\"1\"")];
        admin
            .send("PUT", "/v1/services/web/weights", &if_match, &weights)
            .await
    };
    let (reply, body) = set_canary_read_at_1(10).await;
    assert_eq!(reply.status, 200, "{reply:?}");
    assert_eq!(body["revision"], 2);
    assert_eq!(reply.headers["etag"], "\"2\"");

    // Someone who read revision 1 tries to write: refused, nothing changes.
    let (reply, body) = set_canary_read_at_1(90).await;
    assert_eq!(reply.status, 409, "{reply:?}");
    assert_eq!(body["error"]["code"], "stale_revision");
    assert_eq!(
        body["error"]["message"],
        "the policy is at revision 2, not 1: read it again and retry"
    );
    assert_eq!(admin.revision().await, 2);
    let split = admin.get("/v1/services/web/weights").await;
    assert_eq!(split["split"]["weights"]["canary"], 10.0);

    let (reply, body) = admin
        .send(
            "POST",
            "/v1/services/web/rollback",
            &[("if-match", "seven")],
            "",
        )
        .await;
    assert_eq!(reply.status, 400, "{reply:?}");
    assert_eq!(body["error"]["field"], "If-Match");

    // `graygate ctl --revision` is If-Match: stale -> exit 1 with the API's message.
    let ctl = gg.ctl();
    let run = ctl.run(&["--revision", "1", "rollback", "--service", "web"]);
    assert_eq!(run.code, 1, "{run:?}");
    assert_eq!(
        run.stderr.trim(),
        "the policy is at revision 2, not 1: read it again and retry"
    );
    ctl.ok(&["--revision", "2", "rollback", "--service", "web"]);
    assert_eq!(admin.revision().await, 3);

    // Concurrent changes without If-Match are serialized by the store: none is lost.
    let addr = gg.admin_addr();
    let writers: Vec<_> = (0..4)
        .map(|i| {
            tokio::spawn(async move {
                let mut a = Admin::new(addr, Some(TOKEN));
                let body = json!({"upstream": "canary"}).to_string();
                let (reply, _) = a
                    .send(
                        "PUT",
                        &format!("/v1/services/web/versions/v{i}"),
                        &[],
                        &body,
                    )
                    .await;
                reply.status
            })
        })
        .collect();
    for w in writers {
        assert_eq!(w.await.unwrap(), 201);
    }
    let versions = admin.get("/v1/services/web/versions").await;
    assert_eq!(
        versions["versions"].as_object().unwrap().len(),
        6,
        "{versions}"
    );
    assert_eq!(admin.revision().await, 7);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_are_required_and_checked() {
    let (_s, _c, gg) = start().await;
    let addr = gg.admin_addr();

    let (reply, body) = Admin::new(addr, None)
        .send("GET", "/v1/status", &[], "")
        .await;
    assert_eq!(reply.status, 401, "{reply:?}");
    assert_eq!(reply.headers["www-authenticate"], "Bearer");
    assert_eq!(body["error"]["code"], "unauthorized");
    assert!(body["error"]["message"]
        .as_str()
        .unwrap()
        .starts_with("missing bearer token"));

    let wrong = Admin::new(addr, Some("alice-token-0123456780"))
        .send(
            "PUT",
            "/v1/services/web/weights",
            &[],
            r#"{"weights":{"canary":50}}"#,
        )
        .await;
    assert_eq!(wrong.0.status, 401, "{:?}", wrong.0);
    assert_eq!(wrong.1["error"]["message"], "invalid bearer token");
    assert_eq!(
        Admin::new(addr, Some(TOKEN)).revision().await,
        1,
        "nothing applied"
    );

    // Probes need no token.
    let mut probe = Client::new(addr);
    assert_eq!(probe.get_path("/healthz", &[]).await.status, 200);
    let ready = probe.get_path("/readyz", &[]).await;
    assert_eq!(ready.status, 200, "{ready:?}");

    // ctl: a refusal is exit 1 with the API's message as it is.
    let run = Ctl::new(addr, Some("not-the-token-at-all")).run(&["status"]);
    assert_eq!(
        (run.code, run.stderr.trim()),
        (1, "invalid bearer token"),
        "{run:?}"
    );
    let run = Ctl::new(addr, None).run(&["--json", "status"]);
    assert_eq!(run.code, 1, "{run:?}");
    let err: Value = serde_json::from_str(run.stderr.trim()).unwrap();
    assert_eq!(err["error"]["code"], "unauthorized");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_tokens_the_api_is_loopback_only_and_warns() {
    let stable = backend("stable").await;
    let canary = backend("canary").await;
    let gg = web_with_rules(&stable, &canary).admin().start().await;
    let ctl = gg.ctl();
    ctl.ok(&["weights", "set", "--service", "web", "canary=5"]);
    let history = ctl.json(&["history"]);
    assert_eq!(history["entries"][0]["actor"], "local");
    assert!(
        gg.log_text().contains("ADMIN API WITHOUT AUTHENTICATION"),
        "{}",
        gg.log_text()
    );

    // A non-loopback listener without tokens is a config error, at the line of `listen`.
    let dir = tempfile::tempdir().unwrap();
    let path = web_with_rules(&stable, &canary)
        .admin_listen("0.0.0.0:9901")
        .write(dir.path());
    let text = std::fs::read_to_string(&path).unwrap();
    let line = text
        .lines()
        .position(|l| l == "listen = \"0.0.0.0:9901\"")
        .unwrap_or_else(|| panic!("no admin listen line in:\n{text}"))
        + 1;
    let checked = check(&path);
    assert_eq!(checked.code, 1);
    assert!(
        checked.stderr.contains(&format!(":{line}:1: admin.listen: 0.0.0.0:9901 is not a loopback address: without `tokens` the admin API has no authentication")),
        "{}",
        checked.stderr
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn explain_names_the_version_and_the_rule_without_sending_traffic() {
    let (stable, canary, gg) = start().await;
    let mut admin = gg.admin_api();
    let ctl = gg.ctl();
    ctl.ok(&["list", "add", "gray_ips", "10.0.0.7", "--ttl", "1h"]);

    let e = admin
        .explain(r#"{"client_ip": "10.0.0.7", "path": "/x?a=b"}"#)
        .await;
    assert_eq!(e["version"], "canary", "{e}");
    assert_eq!(e["rule"], "gray-ips");
    assert_eq!(e["reason"], "rule:gray-ips");
    assert_eq!(e["upstream"], "canary");
    assert_eq!(e["revision"], 1);

    // `peer` resolves the client IP through the trusted proxies, as a real request would.
    let e = admin
        .explain(r#"{"peer": "127.0.0.1", "headers": {"X-Real-IP": "10.0.0.7"}}"#)
        .await;
    assert_eq!(
        (e["version"].as_str(), e["client_ip"].as_str()),
        (Some("canary"), Some("10.0.0.7")),
        "{e}"
    );
    let e = admin
        .explain(r#"{"peer": "192.0.2.1", "headers": {"X-Real-IP": "10.0.0.7"}}"#)
        .await;
    assert_eq!(
        e["version"], "stable",
        "an untrusted peer's header is not believed: {e}"
    );

    let out = ctl.ok(&["explain", "--ip", "10.0.0.8", "-H", "X-User-Id: 42"]);
    assert!(
        out.contains("version    canary") && out.contains("reason     rule:beta"),
        "{out}"
    );
    let e = ctl.json(&["explain", "--ip", "10.0.0.8", "--cookie", "a=b"]);
    assert_eq!(
        (e["version"].as_str(), e["reason"].as_str()),
        (Some("stable"), Some("default"))
    );

    assert_eq!(stable.requests(), 0);
    assert_eq!(canary.requests(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn routes_services_versions_and_rules_through_ctl() {
    let (_s, _c, gg) = start().await;
    let ctl = gg.ctl();
    let mut client = gg.client();

    ctl.ok(&["versions", "set", "--service", "web", "next", "canary"]);
    let dir = tempfile::tempdir().unwrap();
    let text = "name = \"testers\"\nversion = \"next\"\nwhen = { header = \"X-Tester\", present = true }\n";
    let rule = write_file(&dir, "rule.toml", text);
    ctl.ok(&[
        "rules",
        "add",
        "--service",
        "web",
        rule.to_str().unwrap(),
        "--position",
        "0",
    ]);
    let rules = ctl.ok(&["rules", "list", "--service", "web"]);
    let first = rules.lines().nth(1).unwrap();
    assert!(first.starts_with("0  testers   next"), "{rules}");
    assert_eq!(client.version(&[("X-Tester", "1")]).await, "canary");

    // A second service on a path prefix, and its route.
    ctl.ok(&[
        "services",
        "put",
        r#"{"name": "api", "stable": "v1", "versions": {"v1": "canary"}}"#,
    ]);
    ctl.ok(&[
        "routes",
        "put",
        r#"{"name": "api", "service": "api", "path_prefix": "/api"}"#,
    ]);
    let mut api = gg.client();
    assert_eq!(api.get_path("/api/x", &[]).await.body, "canary\n");
    let routes = ctl.ok(&["routes", "list"]);
    assert!(routes.contains("api   *      /api  api"), "{routes}");

    // Deleting a service a route uses is refused, with the API's message on stderr and exit 1.
    let run = ctl.run(&["services", "delete", "api"]);
    assert_eq!(run.code, 1, "{run:?}");
    assert_eq!(
        run.stderr.trim(),
        "routes[1].service: route `api` leads to service `api`; delete or change the route first"
    );
    ctl.ok(&["routes", "delete", "api"]);
    ctl.ok(&["services", "delete", "api"]);
    ctl.ok(&["rules", "delete", "--service", "web", "testers"]);
    ctl.ok(&["versions", "delete", "--service", "web", "next"]);
    assert_eq!(client.version(&[("X-Tester", "1")]).await, "stable");

    // Usage errors exit 2, an unreachable API exits 3.
    assert_eq!(
        ctl.run(&["weights", "set", "--service", "web", "canary"])
            .code,
        2
    );
    assert_eq!(ctl.run(&["frobnicate"]).code, 2);
    let dead = Ctl::new(dead_addr(), Some(TOKEN)).run(&["status"]);
    assert_eq!(dead.code, 3, "{dead:?}");
    assert!(
        dead.stderr.contains("cannot reach the admin API"),
        "{dead:?}"
    );

    // The whole policy round-trips through `policy get` / `policy put`.
    let policy = ctl.ok(&["policy", "get"]);
    let file = dir.path().join("policy.json");
    std::fs::write(&file, &policy).unwrap();
    let before = gg.admin_api().revision().await;
    ctl.ok(&[
        "--revision",
        &before.to_string(),
        "policy",
        "put",
        file.to_str().unwrap(),
    ]);
    assert_eq!(ctl.ok(&["policy", "get"]), policy);
}

/// What a page of another site can make a browser send, refused on an admin API without tokens
/// (what `graygate demo` runs with). Before, a `text/plain` POST with a foreign `Origin` added a
/// rule (201), an HTML form POST promoted the canary, and a DNS name rebound to 127.0.0.1
/// reached it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn what_another_site_makes_a_browser_send_is_refused() {
    let stable = backend("stable").await;
    let canary = backend("canary").await;
    let gg = web_gateway(&stable, &canary)
        .service(web())
        .admin()
        .start()
        .await;
    let mut admin = gg.admin_api();
    let revision = admin.revision().await;
    let host = gg.admin_addr().to_string();
    let rule =
        json!({"name": "all", "version": "canary", "when": {"header": "x-any", "present": true}})
            .to_string();
    let mut browser = Client::new(gg.admin_addr());

    // A "simple" cross-site POST: text/plain, from another origin.
    let reply = browser
        .request(
            "POST",
            "/v1/services/web/rules",
            &[
                ("host", &host),
                ("origin", "http://evil.example"),
                ("content-type", "text/plain"),
            ],
            Bytes::from(rule.clone()),
        )
        .await;
    assert_eq!(reply.status, 403, "{reply:?}");
    assert!(
        reply
            .body
            .contains("a change from another site is refused: Origin `http://evil.example`"),
        "{reply:?}"
    );
    // The same without an Origin (a browser that hides it): not JSON, refused.
    let reply = browser
        .request(
            "POST",
            "/v1/services/web/rules",
            &[("host", &host), ("content-type", "text/plain")],
            Bytes::from(rule),
        )
        .await;
    assert_eq!(reply.status, 415, "{reply:?}");
    assert!(reply.body.contains("unsupported_media_type"), "{reply:?}");
    // An HTML form that promotes.
    let reply = browser
        .request(
            "POST",
            "/v1/services/web/promote",
            &[
                ("host", &host),
                ("content-type", "application/x-www-form-urlencoded"),
            ],
            Bytes::from_static(b"version=canary"),
        )
        .await;
    assert_eq!(reply.status, 415, "{reply:?}");
    // A page of evil.example whose name was made to resolve to 127.0.0.1: not even a read.
    let reply = browser
        .request(
            "GET",
            "/v1/policy",
            &[("host", &format!("evil.example:{}", gg.admin_addr().port()))],
            Bytes::new(),
        )
        .await;
    assert_eq!(reply.status, 403, "{reply:?}");
    assert!(reply.body.contains("is not this machine"), "{reply:?}");

    // Nothing changed; ctl and a same-origin JSON change still work.
    assert_eq!(admin.revision().await, revision);
    let (reply, _) = admin
        .send(
            "PUT",
            "/v1/services/web/weights",
            &[("origin", &format!("http://{host}"))],
            &json!({"weights": {"canary": 10}}).to_string(),
        )
        .await;
    assert_eq!(reply.status, 200, "{reply:?}");
    gg.ctl().ok(&["status"]);
}
