//! What an operator sees of the traffic. The real `graygate run` process with its metrics
//! listener and access log on, a known set of requests (stable, canary by a rule, a canary that
//! is down, no route), then exact counts from `/metrics` and exact fields in every access log
//! line.

use crate::support::*;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::Path;

/// Two services: `web` under /web (canary for `X-Env: beta`), and `shop` under /shop whose
/// canary upstream is down (every request with `X-Shop` picks it and falls back to stable).
/// Anything else has no route.
fn two_services(stable: &Backend, canary: &Backend, dead: SocketAddr) -> GatewayBuilder {
    gateway()
        .upstream("stable", stable)
        .upstream("canary", canary)
        .upstream("dead", dead)
        .route(route("web").named("web").path_prefix("/web"))
        .route(route("shop").named("shop").path_prefix("/shop"))
        .service(web().rule("beta", "canary", header("X-Env").equals("beta")))
        .service(
            service("shop")
                .stable("stable", "stable")
                .version("canary", "dead")
                .rule("everyone", "canary", header("X-Shop").present()),
        )
}

/// What each request of [`send_known_requests`] must show, in order.
struct Expected {
    path: &'static str,
    status: u16,
    route: Option<&'static str>,
    version: Option<&'static str>,
    reason: Option<&'static str>,
    upstream: Option<&'static str>,
    fell_back: bool,
}

impl Expected {
    /// `path` answered with 200 by `version` of `route`, chosen for `reason`, through the
    /// upstream of the same name as the version.
    const fn answered(
        path: &'static str,
        route: &'static str,
        version: &'static str,
        reason: &'static str,
    ) -> Expected {
        Expected {
            path,
            status: 200,
            route: Some(route),
            version: Some(version),
            reason: Some(reason),
            upstream: Some(version),
            fell_back: false,
        }
    }

    /// The same, answered after a fallback: the version first chosen was down.
    const fn after_a_fallback(self) -> Expected {
        Expected {
            fell_back: true,
            ..self
        }
    }

    /// `path` matched no route: 404, and nothing was decided.
    const fn no_route(path: &'static str) -> Expected {
        Expected {
            path,
            status: 404,
            route: None,
            version: None,
            reason: None,
            upstream: None,
            fell_back: false,
        }
    }
}

const EXPECTED: &[Expected] = &[
    Expected::answered("/web/a", "web", "stable", "default"),
    Expected::answered("/web/b", "web", "stable", "default"),
    Expected::answered("/web/beta", "web", "canary", "rule:beta"),
    Expected::answered("/web/beta", "web", "canary", "rule:beta"),
    Expected::answered("/web/beta", "web", "canary", "rule:beta"),
    Expected::answered("/shop/cart", "shop", "stable", "rule:everyone").after_a_fallback(),
    Expected::no_route("/nowhere"),
];

/// Sends the requests of [`EXPECTED`] on one connection; returns their replies.
async fn send_known_requests(c: &mut Client) -> Vec<Reply> {
    let mut replies = Vec::new();
    for e in EXPECTED {
        let headers: &[(&str, &str)] = match e.path {
            "/web/beta" => &[("X-Env", "beta")],
            "/shop/cart" => &[("X-Shop", "1")],
            _ => &[],
        };
        let reply = c.get_path(e.path, headers).await;
        assert_eq!(reply.status, e.status, "{}: {reply:?}", e.path);
        if e.status == 200 {
            assert_eq!(reply.body.trim(), e.version.unwrap(), "{}", e.path);
        }
        replies.push(reply);
    }
    replies
}

/// The lines of `file` once it holds at least `lines` of them (the access log is flushed about
/// once a second).
async fn read_lines(file: &Path, lines: usize) -> Vec<String> {
    eventually(
        format!("{} holds {lines} lines", file.display()),
        async || {
            let text = std::fs::read_to_string(file).unwrap_or_default();
            let found: Vec<String> = text.lines().map(str::to_string).collect();
            if found.len() >= lines {
                Ok(found)
            } else {
                Err(found)
            }
        },
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_and_json_access_log_account_for_every_request() {
    let (stable, canary) = (backend("stable").await, backend("canary").await);
    let dead = dead_addr();
    let gg = two_services(&stable, &canary, dead)
        .metrics()
        .access_log("json", Some("access.log"))
        .start()
        .await;
    assert!(gg.metrics_addr().is_some(), "no metrics line on stdout");
    let mut c = gg.client();
    let replies = send_known_requests(&mut c).await;
    // Off by default: clients are not told which version answered.
    assert!(replies
        .iter()
        .all(|r| !r.headers.contains_key("x-graygate-version")));

    // Every request is counted by the time its response is done; poll anyway rather than
    // depend on it.
    let all = EXPECTED.len() as f64;
    let text = eventually("every request is counted", async || {
        let text = gg.scrape().await;
        let counted: f64 = text
            .lines()
            .filter(|l| l.starts_with("graygate_requests_total{"))
            .map(|l| l.rsplit(' ').next().unwrap().parse::<f64>().unwrap())
            .sum();
        if counted == all {
            Ok(text)
        } else {
            Err(text)
        }
    })
    .await;

    let expect = |series: &str, value: f64| {
        assert_eq!(metric(&text, series), Some(value), "{series} in:\n{text}");
    };
    // As the lines stand in the exposition: `series value`.
    let counted = [
        // Requests by route, answering version and status class.
        r#"graygate_requests_total{route="web",status_class="2xx",version="stable"} 2"#,
        r#"graygate_requests_total{route="web",status_class="2xx",version="canary"} 3"#,
        r#"graygate_requests_total{route="shop",status_class="2xx",version="stable"} 1"#,
        r#"graygate_requests_total{route="",status_class="4xx",version=""} 1"#,
        // Decisions by the version chosen and why.
        r#"graygate_decisions_total{reason="default",service="web",version="stable"} 2"#,
        r#"graygate_decisions_total{reason="rule:beta",service="web",version="canary"} 3"#,
        r#"graygate_decisions_total{reason="rule:everyone",service="shop",version="canary"} 1"#,
        // The fallback from the canary that was down.
        r#"graygate_fallbacks_total{service="shop",version="canary"} 1"#,
        // Latency histograms by the version that answered.
        r#"graygate_request_duration_seconds_count{service="web",version="stable"} 2"#,
        r#"graygate_request_duration_seconds_count{service="web",version="canary"} 3"#,
        r#"graygate_request_duration_seconds_count{service="shop",version="stable"} 1"#,
        r#"graygate_request_duration_seconds_count{service="",version=""} 1"#,
        r#"graygate_upstream_duration_seconds_count{service="web",version="canary"} 3"#,
        r#"graygate_upstream_duration_seconds_count{service="shop",version="stable"} 1"#,
    ];
    for line in counted {
        let (series, value) = line.rsplit_once(' ').unwrap();
        expect(series, value.parse().unwrap());
    }
    // The canary that was down: the connect that failed on it, and none on stable.
    expect(
        &format!(r#"graygate_upstream_connect_failures_total{{server="{dead}",upstream="dead"}}"#),
        1.0,
    );
    expect(
        &format!(
            r#"graygate_upstream_connect_failures_total{{server="{}",upstream="stable"}}"#,
            stable.addr()
        ),
        0.0,
    );
    assert_eq!(
        metric(
            &text,
            r#"graygate_upstream_duration_seconds_count{service="",version=""}"#
        ),
        None,
        "a request without a route never reached an upstream"
    );
    // The policy seeded from the config into a fresh store, the store's health.
    expect("graygate_policy_revision", 1.0);
    let reloaded = metric(&text, "graygate_policy_last_reload_timestamp_seconds").unwrap();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    assert!(
        (now - 600.0..=now + 1.0).contains(&reloaded),
        "last reload {reloaded}, now {now}"
    );
    expect(r#"graygate_store_degraded{store="embedded"}"#, 0.0);
    expect("graygate_access_log_dropped_total", 0.0);
    assert!(
        text.contains("# TYPE graygate_request_duration_seconds histogram"),
        "{text}"
    );

    // Open connections: the client's one, then none once it is gone.
    let open = async || metric(&gg.scrape().await, "graygate_open_connections");
    eventually("one open connection", async || {
        equals(open().await, Some(1.0))
    })
    .await;
    drop(c);
    eventually("no open connection", async || {
        equals(open().await, Some(0.0))
    })
    .await;

    // The access log: one JSON line per request, in order.
    let lines = read_lines(&gg.dir().join("access.log"), EXPECTED.len()).await;
    assert_eq!(lines.len(), EXPECTED.len(), "{lines:#?}");
    for ((line, e), reply) in lines.iter().zip(EXPECTED).zip(&replies) {
        let v: serde_json::Value = serde_json::from_str(line).expect(line);
        let s = |field: &str| v[field].as_str().map(str::to_string);
        assert_eq!(s("client_ip").as_deref(), Some("127.0.0.1"), "{line}");
        assert_eq!(s("method").as_deref(), Some("GET"), "{line}");
        assert_eq!(s("path").as_deref(), Some(e.path), "{line}");
        assert_eq!(s("route").as_deref(), e.route, "{line}");
        assert_eq!(s("service").as_deref(), e.route, "{line}");
        assert_eq!(s("version").as_deref(), e.version, "{line}");
        assert_eq!(s("reason").as_deref(), e.reason, "{line}");
        assert_eq!(s("upstream").as_deref(), e.upstream, "{line}");
        assert_eq!(v["status"], e.status, "{line}");
        assert_eq!(v["fell_back"], e.fell_back, "{line}");
        assert_eq!(
            v["bytes_sent"].as_u64(),
            Some(reply.body.len() as u64),
            "{line}"
        );
        let server = match e.upstream {
            Some("stable") => Some(stable.addr().to_string()),
            Some("canary") => Some(canary.addr().to_string()),
            _ => None,
        };
        assert_eq!(s("server"), server, "{line}");
        let time = s("time").expect("time");
        assert!(
            time.len() == 24 && time.ends_with('Z') && time.as_bytes()[19] == b'.',
            "RFC 3339 UTC with ms: {time}"
        );
        humantime::parse_rfc3339(&time).expect("RFC 3339");
        let total = v["duration_ms"].as_f64().expect("duration_ms");
        match v["upstream_ms"].as_f64() {
            Some(upstream) => assert!(upstream <= total, "{line}"),
            None => assert!(e.upstream.is_none(), "{line}"),
        }
    }
}

/// `key=value` pairs of a text access log line (values here need no quotes).
fn fields(line: &str) -> HashMap<&str, &str> {
    line.split(' ')
        .map(|pair| pair.split_once('=').expect(line))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn text_access_log_on_stdout_and_the_version_in_the_response() {
    let (stable, canary) = (backend("stable").await, backend("canary").await);
    // The response header takes the upstream header's name.
    let gg = two_services(&stable, &canary, dead_addr())
        .version_header("x-served-version")
        .response_version_header()
        .access_log("text", None)
        .start()
        .await;
    assert_eq!(gg.metrics_addr(), None, "no [metrics]: no metrics listener");
    let mut c = gg.client();
    let replies = send_known_requests(&mut c).await;
    for (reply, e) in replies.iter().zip(EXPECTED) {
        let header = reply
            .headers
            .get("x-served-version")
            .map(|v| v.to_str().unwrap());
        assert_eq!(header, e.version, "{}: {reply:?}", e.path);
    }

    let lines = eventually("every request is logged on stdout", async || {
        let lines: Vec<String> = gg
            .out_lines()
            .into_iter()
            .filter(|l| l.starts_with("time="))
            .collect();
        if lines.len() >= EXPECTED.len() {
            Ok(lines)
        } else {
            Err(gg.out_lines())
        }
    })
    .await;
    assert_eq!(lines.len(), EXPECTED.len(), "{lines:#?}");
    for ((line, e), reply) in lines.iter().zip(EXPECTED).zip(&replies) {
        let f = fields(line);
        let keys: Vec<&str> = line
            .split(' ')
            .map(|p| p.split_once('=').unwrap().0)
            .collect();
        assert_eq!(
            keys,
            [
                "time",
                "client_ip",
                "method",
                "path",
                "route",
                "service",
                "version",
                "reason",
                "upstream",
                "server",
                "status",
                "bytes_sent",
                "duration_ms",
                "upstream_ms",
                "fell_back"
            ],
            "{line}"
        );
        assert_eq!(f["client_ip"], "127.0.0.1", "{line}");
        assert_eq!(f["path"], e.path, "{line}");
        assert_eq!(f["route"], e.route.unwrap_or("-"), "{line}");
        assert_eq!(f["version"], e.version.unwrap_or("-"), "{line}");
        assert_eq!(f["reason"], e.reason.unwrap_or("-"), "{line}");
        assert_eq!(f["upstream"], e.upstream.unwrap_or("-"), "{line}");
        assert_eq!(f["status"], e.status.to_string(), "{line}");
        assert_eq!(f["bytes_sent"], reply.body.len().to_string(), "{line}");
        assert_eq!(f["fell_back"], e.fell_back.to_string(), "{line}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_access_log_is_flushed_when_graygate_stops() {
    let (stable, canary) = (backend("stable").await, backend("canary").await);
    let gg = two_services(&stable, &canary, dead_addr())
        .access_log("text", Some("access.log"))
        .start()
        .await;
    let mut c = gg.client();
    for _ in 0..3 {
        let reply = c.get_path("/web/x", &[("X-Env", "beta")]).await;
        assert_eq!(reply.body, "canary\n");
    }
    drop(c);
    // Stopped at once: the writer flushes a quiet log's first line at once, but the lines after
    // it wait for the next flush, a second later. They are there because stopping flushes.
    let stopped = gg.stop().await;
    let text = std::fs::read_to_string(stopped.dir().join("access.log")).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 3, "{text}");
    for line in lines {
        let f = fields(line);
        assert_eq!(f["version"], "canary");
        assert_eq!(f["reason"], "rule:beta");
        assert_eq!(f["bytes_sent"], "7");
    }
}

#[test]
fn check_names_the_line_of_a_bad_access_log_format() {
    let dir = tempfile::tempdir().unwrap();
    let text = "listen = [\"127.0.0.1:0\"]\n[access_log]\nformat = \"xml\"\n";
    let path = write_file(&dir, "graygate.toml", text);
    let checked = check(&path);
    assert_ne!(checked.code, 0);
    assert!(
        checked.stderr.contains(&format!(
            "{}:3:1: access_log.format: unknown format `xml` (known: off, text, json)",
            path.display()
        )),
        "{}",
        checked.stderr
    );
}

#[tokio::test]
async fn an_access_log_that_cannot_be_opened_stops_the_start_with_its_path() {
    let dir = tempfile::tempdir().unwrap();
    // A directory where the log file should be.
    std::fs::create_dir(dir.path().join("logs")).unwrap();
    let path = gateway().access_log("json", Some("logs")).write(dir.path());
    let exited = run_until_exit(&path).await;
    assert_ne!(exited.code, 0);
    assert!(
        exited.stderr.contains(&format!(
            "graygate: cannot open the access log {}: ",
            dir.path().join("logs").display()
        )),
        "{}",
        exited.stderr
    );
}
