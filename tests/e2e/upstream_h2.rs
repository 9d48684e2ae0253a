//! HTTP/2 from graygate to its upstreams: `protocol = "h2"` (TLS, ALPN `h2`) and `"h2c"` (plain
//! TCP, prior knowledge), what a request looks like when it gets there, and what an HTTP/1.1 or
//! HTTP/2 client gets back.

use crate::support::*;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn h2c(name: &str, backend: &TlsBackend) -> UpstreamFile {
    UpstreamFile {
        name: name.into(),
        servers: vec![backend.addr().to_string()],
        protocol: Some("h2c".into()),
        ..UpstreamFile::default()
    }
}

/// A gateway whose `stable` is `upstream`; every request goes there.
async fn stable_only(upstream: UpstreamFile) -> Gateway {
    gateway()
        .upstream_file(upstream)
        .service(service("web").stable("stable", "stable"))
        .route(route("web"))
        .start()
        .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_h2_upstream_is_http2_over_tls_with_host_as_authority() {
    let pki = Pki::new();
    let stable = tls_backend("stable", &pki).h2_only().start().await;
    let gg = stable_only(UpstreamFile {
        name: "stable".into(),
        servers: vec![format!("localhost:{}", stable.addr().port())],
        protocol: Some("h2".into()),
        ca: Some(pki.path("ca.pem")),
        ..UpstreamFile::default()
    })
    .await;
    let mut c = gg.client();
    for _ in 0..3 {
        let r = c
            .get(&[
                ("te", "trailers"),
                ("connection", "te, keep-alive"),
                ("keep-alive", "timeout=5"),
                ("x-user", "7"),
            ])
            .await;
        assert_eq!(
            (r.status, r.body.as_str()),
            (200, "stable\n"),
            "{r:?}\n{}",
            gg.log_text()
        );
        let h = &r.headers;
        assert_eq!(h["x-alpn"], "h2");
        assert_eq!(h["x-sni"], "localhost");
        assert_eq!(h["x-http-version"], "HTTP/2.0");
        assert_eq!(h["x-authority"], "example.com", "Host became :authority");
        assert!(!h.contains_key("echo-host"), "and is not sent twice");
        assert_eq!(h["echo-te"], "trailers");
        assert_eq!(h["echo-x-user"], "7");
        for gone in [
            "echo-connection",
            "echo-keep-alive",
            "echo-transfer-encoding",
        ] {
            assert!(!h.contains_key(gone), "{gone}: {h:?}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_h2c_upstream_carries_many_requests_on_one_connection() {
    let stable = h2c_backend("stable").await;
    let gg = stable_only(h2c("stable", &stable)).await;
    // Requests from many client connections at once.
    let mut tasks = Vec::new();
    for _ in 0..8 {
        let addr = gg.addr;
        tasks.push(tokio::spawn(async move {
            let mut c = Client::new(addr);
            for _ in 0..10 {
                let r = c.get(&[("x-gzip", "no")]).await;
                assert_eq!((r.status, r.body.as_str()), (200, "stable\n"), "{r:?}");
                assert_eq!(r.headers["x-http-version"], "HTTP/2.0");
                assert_eq!(r.headers["x-authority"], "example.com");
                assert!(!r.headers.contains_key("echo-te"), "the client sent no TE");
            }
        }));
    }
    for task in tasks {
        task.await.expect("a client task");
    }
    assert_eq!(
        stable.connections(),
        1,
        "80 requests, one HTTP/2 connection"
    );
    // Chunked request bodies (no length) stream to HTTP/2 as DATA frames.
    let mut raw = tokio::net::TcpStream::connect(gg.addr).await.unwrap();
    raw.write_all(
        b"POST /upload HTTP/1.1\r\nHost: example.com\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
    )
    .await
    .unwrap();
    let answer = read_all(&mut raw).await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(!answer.contains("echo-transfer-encoding"), "{answer}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_http1_client_gets_a_length_or_chunks_and_no_trailers() {
    let stable = h2c_backend("stable").await;
    let gg = stable_only(h2c("stable", &stable)).await;

    // A body with a length keeps it.
    let answer = raw_get(&gg, "/length", "").await;
    let (head, body) = answer.split_once("\r\n\r\n").expect("a head");
    assert!(head.contains("content-length: 7"), "{head}");
    assert!(!head.contains("transfer-encoding"), "{head}");
    assert_eq!(body, "stable\n");

    // A body without one (it ends with trailers) is chunked; the trailers are not sent, with or
    // without `TE: trailers`.
    for te in ["", "TE: trailers\r\nConnection: TE\r\n"] {
        let answer = raw_get(&gg, "/trailers", te).await;
        let (head, body) = answer.split_once("\r\n\r\n").expect("a head");
        assert!(head.contains("transfer-encoding: chunked"), "{head}");
        assert_eq!(body, "7\r\nstable\n\r\n0\r\n\r\n", "{te:?}");
        assert!(!answer.contains("x-checksum"));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_http2_client_gets_the_trailers() {
    let stable = h2c_backend("stable").await;
    let gg = stable_only(h2c("stable", &stable)).await;
    let mut sender = h2c_client(gg.addr).await;
    let req = http::Request::get("http://shop.example/trailers")
        .header("te", "trailers")
        .body(Full::new(Bytes::new()))
        .unwrap();
    let response = sender.send_request(req).await.expect("a response");
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["x-authority"], "shop.example");
    assert_eq!(response.headers()["echo-te"], "trailers");
    let collected = response.into_body().collect().await.expect("the body");
    let trailers = collected.trailers().cloned().expect("trailers");
    assert_eq!(trailers["x-checksum"], "42");
    assert_eq!(collected.to_bytes(), "stable\n");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_h2c_canary_that_is_down_falls_back_to_an_http1_stable() {
    let stable = backend("stable").await;
    let gg = gateway()
        .upstream("stable", &stable)
        .upstream_file(UpstreamFile {
            name: "canary".into(),
            servers: vec![dead_addr().to_string()],
            protocol: Some("h2c".into()),
            ..UpstreamFile::default()
        })
        .route(route("web"))
        .service(web().rule("beta", "canary", header("X-Env").equals("beta")))
        .start()
        .await;
    let mut c = gg.client();
    for _ in 0..3 {
        let r = c.get(&[("X-Env", "beta"), ("te", "trailers")]).await;
        assert_eq!((r.status, r.body.as_str()), (200, "stable\n"), "{r:?}");
        // Turned back into an HTTP/1.1 request: the Host as sent, no TE.
        assert_eq!(r.headers["echo-host"], "example.com");
        assert!(!r.headers.contains_key("echo-te"));
    }
}

/// Active health checks speak the upstream's transport: an `h2` upstream (TLS, HTTP/2 only) and
/// an `h2c` canary are checked over HTTP/2, TLS verified with the upstream's CA, pass, and stay
/// in service; checked as plain HTTP/1.1 both would fail and the canary's requests would go to
/// stable. A canary whose certificate is not trusted fails its first check and is out of service
/// before any request: its share goes to stable.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_checks_speak_tls_and_http2_as_the_requests_do() {
    use graygate::config::file::HealthFile;
    let pki = Pki::new();
    let stable = tls_backend("stable", &pki).h2_only().start().await;
    let canary = h2c_backend("canary").await;
    let untrusted = tls_backend("untrusted", &pki).h2_only().start().await;
    let gg = gateway()
        .upstream_file(UpstreamFile {
            name: "stable".into(),
            servers: vec![format!("localhost:{}", stable.addr().port())],
            protocol: Some("h2".into()),
            ca: Some(pki.path("ca.pem")),
            ..UpstreamFile::default()
        })
        .health("stable", Some(HealthFile::default()))
        .upstream_file(h2c("canary", &canary))
        .health("canary", Some(HealthFile::default()))
        .upstream_file(UpstreamFile {
            name: "untrusted".into(),
            servers: vec![format!("localhost:{}", untrusted.addr().port())],
            protocol: Some("h2".into()),
            ..UpstreamFile::default()
        })
        .health("untrusted", Some(HealthFile::default()))
        .route(route("web"))
        .service(
            web()
                .version("untrusted", "untrusted")
                .rule("beta", "canary", header("X-Env").equals("beta"))
                .rule("gamma", "untrusted", header("X-Env").equals("gamma")),
        )
        .start()
        .await;
    let mut c = gg.client();
    for (env, answer) in [
        ("prod", "stable\n"),
        ("beta", "canary\n"),
        ("gamma", "stable\n"),
    ] {
        let r = c.get(&[("X-Env", env)]).await;
        assert_eq!(
            (r.status, r.body.as_str()),
            (200, answer),
            "{env}: {r:?}\n{}",
            gg.log_text()
        );
    }
    let log = gg.log_text();
    let failed: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("health check failed"))
        .collect();
    assert_eq!(failed.len(), 1, "only the untrusted one:\n{log}");
    assert!(
        failed[0].contains("untrusted") && failed[0].contains("TLS handshake failed"),
        "{}",
        failed[0]
    );
}

/// `GET path` on a new connection with `extra` header lines; the whole answer.
async fn raw_get(gg: &Gateway, path: &str, extra: &str) -> String {
    let mut raw = tokio::net::TcpStream::connect(gg.addr).await.unwrap();
    let request =
        format!("GET {path} HTTP/1.1\r\nHost: example.com\r\n{extra}Connection: close\r\n\r\n");
    let request = request.replace(
        "Connection: TE\r\nConnection: close",
        "Connection: TE, close",
    );
    raw.write_all(request.as_bytes()).await.unwrap();
    read_all(&mut raw).await
}

async fn read_all(raw: &mut tokio::net::TcpStream) -> String {
    let mut answer = Vec::new();
    tokio::time::timeout(
        patient(std::time::Duration::from_secs(10)),
        raw.read_to_end(&mut answer),
    )
    .await
    .expect("the answer in time")
    .expect("read the answer");
    String::from_utf8_lossy(&answer).into_owned()
}
