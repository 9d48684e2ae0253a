//! What the dashboard stands on, over HTTP on the real `graygate run`: the page and its files at
//! `/ui/` (embedded, with a strict Content-Security-Policy), signing in with a token for an
//! `HttpOnly`, `SameSite=Strict` session cookie that then authorizes the API and names the
//! caller in the history, the live figures (`/v1/live/history` and the server-sent events of
//! `/v1/live`) moving under traffic, a stream that does not hold up a stop, and the gray-list
//! search. The browser scenarios are in `dashboard.rs`.

use crate::support::*;
use serde_json::{json, Value};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// A web service with a gray list rule, an admin API with one token.
async fn start() -> (Backend, Backend, Gateway) {
    let stable = backend("stable").await;
    let canary = backend("canary").await;
    let gg = web_gateway(&stable, &canary)
        .trusted_proxies(["127.0.0.0/8"])
        .service(web().rule(
            "gray-ips",
            "canary",
            client_ip().lookup("gray_ips").equals("1"),
        ))
        .admin_token("alice", TOKEN)
        .start()
        .await;
    (stable, canary, gg)
}

/// The session cookie's `name=value` from a sign-in's `Set-Cookie`.
fn session_cookie(reply: &Reply) -> String {
    let set = reply
        .headers
        .get("set-cookie")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_else(|| panic!("a Set-Cookie: {reply:?}"));
    set.split(';').next().unwrap().trim().to_string()
}

/// `POST /v1/session` with `token`.
async fn sign_in(admin: &mut Admin, token: &str) -> (Reply, Value) {
    admin
        .send(
            "POST",
            "/v1/session",
            &[],
            &json!({ "token": token }).to_string(),
        )
        .await
}

/// `GET /v1/live` sent on a connection of its own, as a browser's `EventSource` does.
async fn open_stream(gg: &Gateway) -> tokio::net::TcpStream {
    let mut stream = tokio::net::TcpStream::connect(gg.admin_addr())
        .await
        .unwrap();
    let head = format!(
        "GET /v1/live HTTP/1.1\r\nHost: {}\r\nAuthorization: Bearer {TOKEN}\r\nAccept: text/event-stream\r\n\r\n",
        gg.admin_addr()
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    stream
}

#[tokio::test]
async fn the_dashboard_page_is_served_with_a_strict_policy_and_no_data() {
    let (_s, _c, gg) = start().await;
    let mut client = Client::new(gg.admin_addr());
    let host = gg.admin_addr().to_string();
    let page = client.get_path("/ui/", &[("host", &host)]).await;
    assert_eq!(page.status, 200, "{page:?}");
    assert!(page.headers["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/html"));
    let csp = page.headers["content-security-policy"].to_str().unwrap();
    for directive in [
        "script-src 'self'",
        "frame-ancestors 'none'",
        "connect-src 'self'",
    ] {
        assert!(csp.contains(directive), "{directive} in {csp}");
    }
    assert!(
        !page.body.contains("http://") && !page.body.contains("https://"),
        "no external URL in the page"
    );
    let moved = client.get_path("/ui", &[("host", &host)]).await;
    assert_eq!(
        (moved.status, moved.headers["location"].to_str().unwrap()),
        (308, "/ui/")
    );
    let missing = client.get_path("/ui/nothing.js", &[("host", &host)]).await;
    assert_eq!(missing.status, 404);
    // The data is not: without a session or a token, nothing.
    let mut anonymous = Admin::new(gg.admin_addr(), None);
    for path in ["/v1/session", "/v1/status", "/v1/live/history", "/v1/live"] {
        let (reply, body) = anonymous.send("GET", path, &[], "").await;
        assert_eq!(reply.status, 401, "{path}: {reply:?}");
        assert_eq!(body["error"]["code"], "unauthorized", "{path}");
    }
}

#[tokio::test]
async fn a_token_signs_in_for_a_session_cookie_that_names_the_caller() {
    let (_s, _c, gg) = start().await;
    let mut anonymous = Admin::new(gg.admin_addr(), None);
    let (wrong, body) = anonymous
        .send(
            "POST",
            "/v1/session",
            &[],
            r#"{"token":"not-the-token-0000"}"#,
        )
        .await;
    assert_eq!(
        (wrong.status, body["error"]["message"].as_str()),
        (401, Some("invalid bearer token"))
    );
    assert!(wrong.headers.get("set-cookie").is_none());

    let (signed, body) = sign_in(&mut anonymous, TOKEN).await;
    assert_eq!(signed.status, 200, "{signed:?}");
    assert_eq!(
        (body["name"].as_str(), body["open"].as_bool()),
        (Some("alice"), Some(false))
    );
    assert!(
        body["expires_at"]
            .as_str()
            .is_some_and(|t| t.ends_with('Z')),
        "{body}"
    );
    let set = signed.headers["set-cookie"].to_str().unwrap();
    for attribute in ["HttpOnly", "SameSite=Strict", "Path=/", "Max-Age=28800"] {
        assert!(set.contains(attribute), "{attribute} in {set}");
    }
    let cookie = session_cookie(&signed);
    assert!(
        cookie.starts_with("graygate_session=") && cookie.len() == "graygate_session=".len() + 64,
        "{cookie}"
    );

    // The cookie is a sign-in: who am I, a read, a change recorded under the token's name.
    let with = [("cookie", cookie.as_str())];
    let (who, body) = anonymous.send("GET", "/v1/session", &with, "").await;
    assert_eq!((who.status, body["name"].as_str()), (200, Some("alice")));
    let (status, _) = anonymous.send("GET", "/v1/status", &with, "").await;
    assert_eq!(status.status, 200);
    let (changed, _) = anonymous
        .send(
            "PUT",
            "/v1/services/web/weights",
            &with,
            r#"{"weights":{"canary":20}}"#,
        )
        .await;
    assert_eq!(changed.status, 200, "{changed:?}");
    let mut admin = gg.admin_api();
    let history = admin.get("/v1/history?limit=1").await;
    assert_eq!(history["entries"][0]["actor"], "alice", "{history}");

    // A change from another site is refused even with the cookie.
    let (foreign, _) = anonymous
        .send(
            "PUT",
            "/v1/services/web/weights",
            &[
                ("cookie", cookie.as_str()),
                ("origin", "http://evil.example"),
            ],
            r#"{"weights":{"canary":90}}"#,
        )
        .await;
    assert_eq!(foreign.status, 403);

    // Signed out: the cookie no longer works, and the answer clears it.
    let (out, _) = anonymous.send("DELETE", "/v1/session", &with, "").await;
    assert_eq!(out.status, 204);
    assert!(out.headers["set-cookie"]
        .to_str()
        .unwrap()
        .contains("Max-Age=0"));
    let (after, _) = anonymous.send("GET", "/v1/status", &with, "").await;
    assert_eq!(after.status, 401);
    // A made-up cookie is no sign-in either.
    let forged = format!("graygate_session={}", "0".repeat(64));
    let (forged, _) = anonymous
        .send("GET", "/v1/status", &[("cookie", forged.as_str())], "")
        .await;
    assert_eq!(forged.status, 401);
}

#[tokio::test]
async fn a_session_expires_after_the_configured_time() {
    let stable = backend("stable").await;
    let gg = stable_gateway(&stable)
        .admin_token("alice", TOKEN)
        .admin_session_ttl("1s")
        .start()
        .await;
    let mut anonymous = Admin::new(gg.admin_addr(), None);
    let (signed, _) = sign_in(&mut anonymous, TOKEN).await;
    assert!(signed.headers["set-cookie"]
        .to_str()
        .unwrap()
        .contains("Max-Age=1"));
    let cookie = session_cookie(&signed);
    let (now, _) = anonymous
        .send("GET", "/v1/session", &[("cookie", cookie.as_str())], "")
        .await;
    assert_eq!(now.status, 200);
    eventually("the session expires", async || {
        let (reply, _) = Admin::new(gg.admin_addr(), None)
            .send("GET", "/v1/session", &[("cookie", cookie.as_str())], "")
            .await;
        (reply.status == 401).then_some(()).ok_or(reply.status)
    })
    .within(Duration::from_secs(3))
    .await;
}

/// One version of `web` in a live sample.
fn version<'a>(sample: &'a Value, name: &str) -> &'a Value {
    sample["services"][0]["versions"]
        .as_array()
        .and_then(|vs| vs.iter().find(|v| v["name"] == name))
        .unwrap_or_else(|| panic!("version {name} in {sample}"))
}

#[tokio::test]
async fn live_figures_move_under_traffic_and_stream_as_events() {
    let (_s, _c, gg) = start().await;
    let mut admin = gg.admin_api();
    admin
        .send(
            "POST",
            "/v1/lists/gray_ips/entries",
            &[],
            r#"{"entries":[{"key":"10.0.0.7"}]}"#,
        )
        .await;
    // Open the stream first, as the dashboard does.
    let mut stream = open_stream(&gg).await;

    // Bounded traffic: 3 s at most, 600 requests at most, one in three to the canary.
    let mut client = gg.client();
    let until = Instant::now() + patient(Duration::from_secs(3));
    let mut sent = 0;
    while Instant::now() < until && sent < 600 {
        let ip = if sent % 3 == 0 {
            "10.0.0.7"
        } else {
            "10.0.0.8"
        };
        client.get(&[("x-real-ip", ip)]).await;
        sent += 1;
        if sent % 50 == 0 {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    let sample = eventually("a live sample with both versions' traffic", async || {
        let history = Admin::new(gg.admin_addr(), Some(TOKEN))
            .get("/v1/live/history")
            .await;
        assert_eq!(history["interval_ms"], 1000);
        let samples = history["samples"].as_array().cloned().unwrap_or_default();
        samples
            .into_iter()
            .find(|s| {
                version(s, "stable")["rps"].as_f64() > Some(0.0)
                    && version(s, "canary")["rps"].as_f64() > Some(0.0)
            })
            .ok_or("no sample with traffic on both yet")
    })
    .await;
    let (stable, canary) = (version(&sample, "stable"), version(&sample, "canary"));
    assert_eq!(
        sample["services"][0]["versions"][0]["name"], "stable",
        "stable first"
    );
    assert_eq!(
        (
            stable["configured_percent"].as_f64(),
            canary["configured_percent"].as_f64()
        ),
        (Some(100.0), Some(0.0))
    );
    for v in [stable, canary] {
        assert_eq!(v["error_percent"].as_f64(), Some(0.0), "{v}");
        assert!(
            v["p50_ms"].as_f64().is_some() && v["p99_ms"].as_f64() >= v["p50_ms"].as_f64(),
            "{v}"
        );
        assert_eq!(
            (v["servers_up"].as_u64(), v["servers_down"].as_u64()),
            (Some(1), Some(0)),
            "{v}"
        );
    }
    let share = canary["actual_percent"].as_f64().unwrap();
    assert!(
        (20.0..=47.0).contains(&share),
        "about a third on canary: {share}"
    );
    assert_eq!(sample["store"]["degraded"], false);
    assert!(sample["revision"].as_u64().unwrap() >= 1);

    // The stream carried samples as `event: sample` with the same JSON.
    let mut seen = String::new();
    let mut buf = [0u8; 8192];
    let deadline = Instant::now() + patient(Duration::from_secs(5));
    while seen.matches("event: sample").count() < 2 && Instant::now() < deadline {
        if let Ok(Ok(n)) = tokio::time::timeout(Duration::from_secs(2), stream.read(&mut buf)).await
        {
            if n == 0 {
                break;
            }
            seen.push_str(&String::from_utf8_lossy(&buf[..n]));
        }
    }
    assert!(seen.starts_with("HTTP/1.1 200"), "{seen}");
    assert!(
        seen.to_ascii_lowercase()
            .contains("content-type: text/event-stream"),
        "{seen}"
    );
    assert!(
        seen.matches("event: sample").count() >= 2,
        "two samples streamed: {seen}"
    );
    let data = seen
        .lines()
        .find_map(|l| l.strip_prefix("data: "))
        .expect("a data line");
    let streamed: Value = serde_json::from_str(data).unwrap();
    assert_eq!(streamed["services"][0]["name"], "web");
}

#[tokio::test]
async fn an_open_stream_does_not_hold_up_a_stop() {
    let (_s, _c, mut gg) = start().await;
    let mut stream = open_stream(&gg).await;
    let mut buf = [0u8; 4096];
    let n = tokio::time::timeout(patient(Duration::from_secs(5)), stream.read(&mut buf))
        .await
        .expect("the stream answers")
        .unwrap();
    assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"));
    let took = gg.terminate().await;
    assert!(
        took < patient(Duration::from_secs(5)),
        "stopped in {took:?} with a stream open"
    );
    // The stream ended with the process.
    let mut rest = Vec::new();
    let ended = tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut rest)).await;
    assert!(ended.is_ok(), "the stream was closed");
}

#[tokio::test]
async fn a_gray_list_can_be_searched() {
    let (_s, _c, gg) = start().await;
    let mut admin = gg.admin_api();
    let entries: Vec<Value> = (1..=30)
        .map(|i| json!({"key": format!("10.0.{}.{i}", i % 3)}))
        .collect();
    let (reply, _) = admin
        .send(
            "POST",
            "/v1/lists/gray_ips/entries",
            &[],
            &json!({ "entries": entries }).to_string(),
        )
        .await;
    assert_eq!(reply.status, 200, "{reply:?}");
    let found = admin
        .get("/v1/lists/gray_ips/entries?q=10.0.1.&limit=4")
        .await;
    assert_eq!(found["count"], 30, "the list's total");
    let keys: Vec<&str> = found["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["key"].as_str().unwrap())
        .collect();
    assert_eq!(keys, ["10.0.1.1", "10.0.1.10", "10.0.1.13", "10.0.1.16"]);
    assert_eq!(found["truncated"], true);
    let all = admin.get("/v1/lists/gray_ips/entries?q=10.0.1.").await;
    assert_eq!(all["entries"].as_array().unwrap().len(), 10);
    assert!(all.get("truncated").is_none(), "{all}");
    let (too_many, body) = admin
        .send("GET", "/v1/lists/gray_ips/entries?q=1&limit=5000", &[], "")
        .await;
    assert_eq!(
        (too_many.status, body["error"]["field"].as_str()),
        (422, Some("limit")),
        "{body}"
    );
    // Without a search, every entry, as before.
    let every = admin.get("/v1/lists/gray_ips/entries").await;
    assert_eq!(every["entries"].as_array().unwrap().len(), 30);
}
