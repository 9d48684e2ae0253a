//! The strict edge, byte by byte: every gap an adversarial pass over graygate's HTTP edge found
//! (issue 10, items 3 and 5), each as raw bytes from a plain TCP client through the real binary
//! to real (or raw) upstreams.

use crate::support::raw::{exchange, seen, RawConn, RawUpstream};
use crate::support::*;
use std::time::{Duration, Instant};

/// A short body timeout, so that a stall is seen in a test's time.
const SHORT: Duration = Duration::from_millis(300);

/// How long a connection graygate must close may stay open (before patience): far below the
/// minute clients were held before, far above the timeouts the tests set.
const CLOSED_WITHIN: Duration = Duration::from_secs(10);

// ----- item 3: the h2c upgrade tunnel is closed -----

/// An upstream that switches to h2c whenever it is asked to, and then writes bytes no router
/// ever saw; otherwise it answers `routed`.
async fn h2c_willing_upstream() -> RawUpstream {
    RawUpstream::serve(|request| {
        let asked = request
            .header_values("upgrade")
            .iter()
            .any(|v| v.eq_ignore_ascii_case("h2c"));
        Some(if asked {
            b"HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: h2c\r\n\r\nTUNNEL"
                .to_vec()
        } else {
            b"HTTP/1.1 200 OK\r\nContent-Length: 7\r\n\r\nrouted\n".to_vec()
        })
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_h2c_upgrade_is_proxied_as_a_plain_request_and_the_connection_stays_routed() {
    let (stable, canary) = (backend("stable").await, backend("canary").await);
    let gg = web_gateway(&stable, &canary)
        .service(web().rule("beta", "canary", header("X-Env").equals("beta")))
        .start()
        .await;
    let mut conn = RawConn::open(gg.addr).await;
    conn.send(
        b"GET /first HTTP/1.1\r\nHost: example.com\r\nConnection: Upgrade, HTTP2-Settings\r\n\
          Upgrade: h2c\r\nHTTP2-Settings: AAMAAABkAAQCAAAAAAIAAAAA\r\n\r\n",
    )
    .await;
    let first = conn.response().await.expect("an answer to the h2c request");
    assert_eq!(first.status, 200, "{first:?}");
    assert_eq!(first.text(), "stable\n");
    for header in ["echo-upgrade", "echo-connection", "echo-http2-settings"] {
        assert_eq!(first.header(header), None, "the upstream saw {header}");
    }
    // The same connection goes on request by request: routed by the policy, rewritten by
    // graygate (its X-Real-IP, its version header), not a tunnel with the client's headers.
    conn.send(
        b"GET /second HTTP/1.1\r\nHost: example.com\r\nX-Env: beta\r\nX-Real-IP: 6.6.6.6\r\n\
          X-Graygate-Version: stable\r\n\r\n",
    )
    .await;
    let second = conn
        .response()
        .await
        .expect("an answer to the next request");
    assert_eq!(second.text(), "canary\n", "{second:?}");
    assert_eq!(second.header("echo-x-real-ip"), Some("127.0.0.1"));
    assert_eq!(second.header("echo-x-graygate-version"), Some("canary"));

    // An upstream that would switch to h2c is never asked to.
    let willing = h2c_willing_upstream().await;
    let gg = stable_gateway(&willing).start().await;
    let mut conn = RawConn::open(gg.addr).await;
    for _ in 0..2 {
        conn.send(
            b"GET / HTTP/1.1\r\nHost: example.com\r\nConnection: Upgrade\r\nUpgrade: h2c\r\n\r\n",
        )
        .await;
        let answer = conn.response().await.expect("an answer");
        assert_eq!((answer.status, answer.text().as_str()), (200, "routed\n"));
    }
    assert_eq!(willing.requests(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_switch_to_anything_but_websocket_is_502() {
    // The upstream switches to h2c whatever it was asked.
    let switching = RawUpstream::answering(
        b"HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: h2c\r\n\r\nTUNNEL",
    )
    .await;
    let gg = stable_gateway(&switching).start().await;
    let plain = exchange(gg.addr, b"GET / HTTP/1.1\r\nHost: example.com\r\n\r\n").await;
    assert_eq!(plain.status, 502, "unasked 101: {plain:?}");
    let websocket = exchange(
        gg.addr,
        b"GET /chat HTTP/1.1\r\nHost: example.com\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
          Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n",
    )
    .await;
    assert_eq!(
        websocket.status, 502,
        "asked for WebSocket, got h2c: {websocket:?}"
    );
    assert!(!websocket.text().contains("TUNNEL"));
}

// ----- item 5: a strict edge -----

/// The upstream `api`, which records what it receives, behind a route for `api.example` (and
/// the path prefix `/api`); everything else goes to the backend `stable`.
async fn api_gateway(stable: &Backend, api: &RawUpstream) -> Gateway {
    gateway()
        .upstream("stable", stable)
        .upstream("api", api)
        .upstream("shop", stable)
        .service(service("web").stable("stable", "stable"))
        .service(service("api").stable("api", "api"))
        .service(service("shop").stable("shop", "shop"))
        .route(route("web"))
        .route(route("api").hosts(["api.example"]))
        .route(route("api").named("api-path").path_prefix("/api"))
        .start()
        .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hosts_or_none_on_http_1_1_are_400() {
    let (stable, api) = (backend("stable").await, RawUpstream::recording().await);
    let gg = api_gateway(&stable, &api).await;
    #[rustfmt::skip]
    let refused: &[(&[u8], &str)] = &[
        (b"GET / HTTP/1.1\r\nHost: example.com\r\nHost: api.example\r\n\r\n", "graygate: more than one Host header\n"),
        (b"GET / HTTP/1.1\r\nHost: api.example\r\nHost: api.example\r\n\r\n", "graygate: more than one Host header\n"),
        (b"GET / HTTP/1.1\r\n\r\n", "graygate: no Host header\n"),
        (b"GET / HTTP/1.1\r\nHost:\r\n\r\n", "graygate: no Host header\n"),
        (b"GET / HTTP/1.1\r\nHost: api..example\r\n\r\n", "graygate: invalid Host header\n"),
        (b"GET http://user@api.example/ HTTP/1.1\r\nHost: api.example\r\n\r\n", "graygate: invalid Host header\n"),
    ];
    for (request, why) in refused {
        let mut conn = RawConn::open(gg.addr).await;
        // A good request pipelined behind the bad one, in the same write.
        let mut bytes = request.to_vec();
        bytes.extend_from_slice(b"GET / HTTP/1.1\r\nHost: example.com\r\n\r\n");
        conn.send(&bytes).await;
        let answer = conn.response().await.expect("an answer");
        let what = String::from_utf8_lossy(request);
        assert_eq!(
            (answer.status, answer.text().as_str()),
            (400, *why),
            "{what}"
        );
        assert_eq!(answer.header("connection"), Some("close"), "{what}");
        // Closed after the answer: the request behind it is not served.
        assert_eq!(
            conn.until_closed().await,
            "",
            "{what}: answered after a 400"
        );
    }
    assert_eq!(stable.requests(), 0);
    assert_eq!(api.requests(), 0);

    // HTTP/1.0 needs no Host.
    let old = exchange(gg.addr, b"GET / HTTP/1.0\r\n\r\n").await;
    assert_eq!((old.status, old.text().as_str()), (200, "stable\n"));
    // An absolute-form target's authority is the host: routed by it, and the upstream gets it
    // as its Host, whatever the Host header said.
    let absolute = exchange(
        gg.addr,
        b"GET http://api.example/x?y=1 HTTP/1.1\r\nHost: example.com\r\n\r\n",
    )
    .await;
    assert_eq!(absolute.status, 200, "{absolute:?}");
    let upstream = seen(&absolute);
    assert_eq!(upstream.line(), "GET /x?y=1 HTTP/1.1");
    assert_eq!(upstream.header_values("host"), ["api.example"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_x_forwarded_for_walk_stops_at_the_first_hop_it_cannot_parse() {
    let (stable, canary) = (backend("stable").await, backend("canary").await);
    let gg = web_gateway(&stable, &canary)
        .trusted_proxies(["127.0.0.1"])
        .service(web().rule("office", "canary", cidr(["10.0.0.0/8"])))
        .start()
        .await;
    // X-Forwarded-For as our trusted proxy (the peer, 127.0.0.1) passed it on; the version,
    // the client IP graygate resolved, and why.
    #[rustfmt::skip]
    let cases: &[(&str, &str, &str, &str)] = &[
        ("10.0.0.7", "canary", "10.0.0.7", "a plain client behind the proxy"),
        ("10.0.0.7, unknown", "stable", "127.0.0.1", "the proxy could not name its client: the client-written entry left of it is not believed"),
        ("10.0.0.7, unknown, 127.0.0.1", "stable", "127.0.0.1", "junk behind a trusted hop: that hop is the nearest known address"),
        ("10.0.0.7, , 127.0.0.1", "canary", "10.0.0.7", "an empty list element is skipped, not junk"),
        ("unknown, 10.0.0.8", "canary", "10.0.0.8", "junk left of the client changes nothing"),
    ];
    for (xff, version, client_ip, what) in cases {
        let request =
            format!("GET / HTTP/1.1\r\nHost: example.com\r\nX-Forwarded-For: {xff}\r\n\r\n");
        let answer = exchange(gg.addr, request.as_bytes()).await;
        assert_eq!(answer.text(), format!("{version}\n"), "{what}");
        assert_eq!(answer.header("echo-x-real-ip"), Some(*client_ip), "{what}");
        let appended = format!("{xff}, 127.0.0.1");
        assert_eq!(
            answer.header("echo-x-forwarded-for"),
            Some(appended.as_str()),
            "{what}: the chain goes on as it came, the peer appended"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_response_with_content_length_and_transfer_encoding_arrives_whole() {
    let both = RawUpstream::answering(
        b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n\
          1a\r\nabcdefghijklmnopqrstuvwxyz\r\n0\r\n\r\n",
    )
    .await;
    let gg = stable_gateway(&both).start().await;
    let mut conn = RawConn::open(gg.addr).await;
    for round in 0..2 {
        conn.send(b"GET / HTTP/1.1\r\nHost: example.com\r\n\r\n")
            .await;
        let answer = conn.response().await.expect("a whole response");
        assert_eq!(answer.status, 200);
        assert_eq!(
            answer.text(),
            "abcdefghijklmnopqrstuvwxyz",
            "round {round}: all 26 bytes"
        );
        assert_ne!(answer.header("content-length"), Some("5"), "{answer:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gzip_chunked_is_501_from_a_client_and_502_from_an_upstream() {
    let stable = backend("stable").await;
    let gg = stable_gateway(&stable).start().await;
    let mut conn = RawConn::open(gg.addr).await;
    conn.send(
        b"POST / HTTP/1.1\r\nHost: example.com\r\nTransfer-Encoding: gzip, chunked\r\n\r\n\
          5\r\nhello\r\n0\r\n\r\nGET / HTTP/1.1\r\nHost: example.com\r\n\r\n",
    )
    .await;
    let answer = conn.response().await.expect("an answer");
    assert_eq!(
        (answer.status, answer.text().as_str()),
        (501, "graygate: transfer coding not supported\n")
    );
    assert_eq!(conn.until_closed().await, "", "nothing after the 501");
    assert_eq!(stable.requests(), 0, "the body never reached the upstream");

    let gzip = RawUpstream::answering(
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
    )
    .await;
    let gg = stable_gateway(&gzip).start().await;
    let answer = exchange(gg.addr, b"GET / HTTP/1.1\r\nHost: example.com\r\n\r\n").await;
    assert_eq!(answer.status, 502, "{answer:?}");
    assert_ne!(
        answer.text(),
        "hello",
        "the coded bytes are not passed on as the body"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_get_with_a_chunked_body_is_forwarded_and_the_request_behind_it_kept() {
    let stable = backend("stable").await;
    let gg = stable_gateway(&stable).start().await;
    let mut conn = RawConn::open(gg.addr).await;
    // Both requests in one write: the second is pipelined behind the first's body.
    conn.send(
        b"GET /one HTTP/1.1\r\nHost: example.com\r\nTransfer-Encoding: chunked\r\n\r\n\
          5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n\
          GET /two HTTP/1.1\r\nHost: example.com\r\nX-Second: yes\r\n\r\n",
    )
    .await;
    let one = conn
        .response()
        .await
        .expect("an answer to the GET with a body");
    assert_eq!(one.status, 200, "{one:?}");
    assert_eq!(
        one.header("x-body-bytes"),
        Some("11"),
        "the body reached the upstream"
    );
    assert_eq!(one.header("echo-transfer-encoding"), Some("chunked"));
    let two = conn
        .response()
        .await
        .expect("an answer to the pipelined request");
    assert_eq!(two.status, 200, "{two:?}");
    assert_eq!(two.header("echo-x-second"), Some("yes"));
    assert_eq!(two.header("x-body-bytes"), Some("0"));
    assert_eq!(stable.requests(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_client_body_is_408_and_a_client_error() {
    let (stable, canary) = (backend("stable").await, backend("canary").await);
    let gg = web_gateway(&stable, &canary)
        .service(web())
        .client_body_timeout(SHORT)
        .metrics()
        .admin()
        .start()
        .await;
    let mut conn = RawConn::open(gg.addr).await;
    let started = Instant::now();
    conn.send(
        b"POST /upload HTTP/1.1\r\nHost: example.com\r\nContent-Length: 100\r\n\r\n0123456789",
    )
    .await;
    let answer = conn.response().await.expect("an answer");
    assert_eq!(
        (answer.status, answer.text().as_str()),
        (408, "graygate: request body timed out\n")
    );
    assert!(
        started.elapsed() >= SHORT,
        "answered after {:?}",
        started.elapsed()
    );
    assert_eq!(conn.until_closed().await, "");
    assert!(started.elapsed() < patient(CLOSED_WITHIN));

    // A malformed body: bad chunk framing.
    let mut conn = RawConn::open(gg.addr).await;
    conn.send(
        b"POST /upload HTTP/1.1\r\nHost: example.com\r\nTransfer-Encoding: chunked\r\n\r\n\
          5\r\nhello\r\nzz\r\nmore\r\n",
    )
    .await;
    // graygate may not get to answer a connection whose bytes it cannot read any more; if it
    // does, it is a 400.
    if let Some(answer) = conn.response().await {
        assert_eq!(answer.status, 400, "{answer:?}");
    }
    conn.until_closed().await;

    // Both counted as client errors (4xx), neither as an upstream failure nor for the version.
    let text = eventually("both requests are counted", async || {
        let text = gg.scrape().await;
        let errors = metric(
            &text,
            r#"graygate_requests_total{route="web",status_class="4xx",version="stable"}"#,
        );
        equals(errors, Some(2.0)).map(|_| text)
    })
    .await;
    assert_eq!(
        metric(
            &text,
            r#"graygate_requests_total{route="web",status_class="5xx",version="stable"}"#
        ),
        None
    );
    let status = gg.admin_api().get("/v1/status").await;
    let traffic = &status["services"][0]["traffic"];
    assert_eq!(traffic["stable"]["requests"], 0, "{status}");
    let log = gg.log_text();
    assert!(log.contains("408: client error"), "{log}");
    assert!(!log.contains("502: upstream"), "{log}");
    assert!(!log.contains("504: upstream"), "{log}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_body_that_stalls_after_the_response_started_closes_the_connection() {
    // The upstream starts its answer as soon as the request head arrives, and reads on.
    let eager = RawUpstream::answering_the_head(
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n7\r\nstarted\r\n",
    )
    .await;
    let gg = stable_gateway(&eager)
        .client_body_timeout(SHORT)
        .start()
        .await;
    let mut conn = RawConn::open(gg.addr).await;
    let started = Instant::now();
    conn.send(
        b"POST /upload HTTP/1.1\r\nHost: example.com\r\nContent-Length: 100\r\n\r\n0123456789",
    )
    .await;
    assert!(
        conn.response().await.is_none(),
        "a response that looks complete"
    );
    let got = conn.rest();
    assert!(got.starts_with("HTTP/1.1 200 OK"), "{got:?}");
    assert!(got.contains("started"), "{got:?}");
    assert!(started.elapsed() < patient(CLOSED_WITHIN));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upstream_body_that_stalls_closes_the_connection_and_a_silent_one_is_504() {
    // Ten of a hundred bytes, then nothing.
    let stalling =
        RawUpstream::answering(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n0123456789").await;
    let gg = stable_gateway(&stalling)
        .upstream_body_timeout(SHORT)
        .start()
        .await;
    let mut conn = RawConn::open(gg.addr).await;
    let started = Instant::now();
    conn.send(b"GET / HTTP/1.1\r\nHost: example.com\r\n\r\n")
        .await;
    assert!(
        conn.response().await.is_none(),
        "a response that looks complete"
    );
    let got = conn.rest();
    assert!(got.starts_with("HTTP/1.1 200 OK"), "{got:?}");
    assert!(got.contains("content-length: 100"), "{got:?}");
    assert!(got.ends_with("0123456789"), "{got:?}");
    let took = started.elapsed();
    assert!(took >= SHORT, "closed after {took:?}");
    assert!(took < patient(CLOSED_WITHIN), "closed after {took:?}");

    // No response head at all: 504, as before.
    let silent = RawUpstream::serve(|_| None).await;
    let gg = stable_gateway(&silent)
        .upstream_response_timeout(SHORT)
        .start()
        .await;
    let answer = exchange(gg.addr, b"GET / HTTP/1.1\r\nHost: example.com\r\n\r\n").await;
    assert_eq!(answer.status, 504, "{answer:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn routes_see_the_normalised_path_and_host_the_upstream_sees() {
    let (stable, api) = (backend("stable").await, RawUpstream::recording().await);
    let gg = api_gateway(&stable, &api).await;
    // Path, and what the upstream `api` received: each skipped its route before.
    #[rustfmt::skip]
    let cases: &[(&str, &str)] = &[
        ("/%61pi", "GET /api HTTP/1.1"),
        ("/x/../api", "GET /api HTTP/1.1"),
        ("//api", "GET /api HTTP/1.1"),
        ("/./api//v1/%7Euser/%2e%2E/me?q=%61", "GET /api/v1/me?q=%61 HTTP/1.1"),
        ("/api/a%2fb", "GET /api/a%2Fb HTTP/1.1"),
    ];
    for (path, line) in cases {
        let request = format!("GET {path} HTTP/1.1\r\nHost: example.com\r\n\r\n");
        let answer = exchange(gg.addr, request.as_bytes()).await;
        assert_eq!(answer.status, 200, "{path}: {answer:?}");
        assert_eq!(seen(&answer).line(), *line, "{path}");
    }
    // The host without its trailing dot: routed as `api.example`, sent as `api.example`.
    let answer = exchange(gg.addr, b"GET /x HTTP/1.1\r\nHost: api.example.:80\r\n\r\n").await;
    assert_eq!(answer.status, 200, "{answer:?}");
    assert_eq!(seen(&answer).header_values("host"), ["api.example:80"]);
    // A `%` that starts no escape has no one meaning.
    let answer = exchange(
        gg.addr,
        b"GET /%%32e%%32e/api HTTP/1.1\r\nHost: example.com\r\n\r\n",
    )
    .await;
    assert_eq!(
        (answer.status, answer.text().as_str()),
        (400, "graygate: invalid request target\n")
    );
    assert_eq!(stable.requests(), 0, "nothing reached the catch-all route");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forwarding_and_version_headers_of_a_client_never_pass() {
    let (stable, canary) = (backend("stable").await, backend("canary").await);
    let request =
        b"GET / HTTP/1.1\r\nHost: example.com\r\nForwarded: for=6.6.6.6;host=evil.example\r\n\
                    X-Forwarded-Host: evil.example\r\nX-Forwarded-Proto: https\r\n\
                    X-Forwarded-For: 6.6.6.6\r\nX-Graygate-Version: canary\r\n\r\n";
    // `version_header = ""`: graygate sends none, and the client's does not pass either.
    let gg = web_gateway(&stable, &canary)
        .service(web())
        .version_header("")
        .start()
        .await;
    let answer = exchange(gg.addr, request).await;
    assert_eq!(answer.text(), "stable\n");
    for gone in [
        "echo-forwarded",
        "echo-x-forwarded-host",
        "echo-x-forwarded-proto",
        "echo-x-graygate-version",
    ] {
        assert_eq!(answer.header(gone), None, "{gone} reached the upstream");
    }
    assert_eq!(
        answer.header("echo-x-forwarded-for"),
        Some("6.6.6.6, 127.0.0.1")
    );

    // From a trusted proxy they are believed and passed on; the version header is graygate's.
    let trusting = web_gateway(&stable, &canary)
        .service(web())
        .trusted_proxies(["127.0.0.1"])
        .start()
        .await;
    let answer = exchange(trusting.addr, request).await;
    assert_eq!(answer.header("echo-x-forwarded-host"), Some("evil.example"));
    assert_eq!(answer.header("echo-x-forwarded-proto"), Some("https"));
    assert_eq!(answer.header("echo-x-graygate-version"), Some("stable"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_client_is_not_taken_for_a_slow_upstream() {
    // The upstream must answer within 300 ms of the request's last progress; the client pauses
    // longer than that in the middle of its body, well within the client body timeout.
    let stable = backend("stable").await;
    let gg = stable_gateway(&stable)
        .upstream_response_timeout(SHORT)
        .client_body_timeout(Duration::from_secs(30))
        .start()
        .await;
    let mut conn = RawConn::open(gg.addr).await;
    conn.send(
        b"POST /upload HTTP/1.1\r\nHost: example.com\r\nContent-Length: 20\r\n\r\n0123456789",
    )
    .await;
    // The pause is the behaviour under test: a client that is slow with its body.
    tokio::time::sleep(SHORT * 3).await;
    conn.send(b"abcdefghij").await;
    let answer = conn.response().await.expect("an answer");
    assert_eq!(answer.status, 200, "{answer:?}");
    assert_eq!(answer.header("x-body-bytes"), Some("20"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_applies_the_body_timeouts() {
    let stable = backend("stable").await;
    let mut gg = stable_gateway(&stable).start().await;
    gg.edit_config(|b| b.client_body_timeout(SHORT));
    let log = gg.hup_and_wait().await;
    assert!(log.contains("client_body 300ms"), "{log}");
    let mut conn = RawConn::open(gg.addr).await;
    let started = Instant::now();
    conn.send(b"POST / HTTP/1.1\r\nHost: example.com\r\nContent-Length: 10\r\n\r\n01234")
        .await;
    let answer = conn.response().await.expect("an answer");
    assert_eq!(answer.status, 408, "{answer:?}");
    assert!(
        started.elapsed() < patient(CLOSED_WITHIN),
        "the 30 s default still applied: {:?}",
        started.elapsed()
    );
}
