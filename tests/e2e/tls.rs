//! TLS termination, with real clients: curl (HTTP/2 and HTTP/1.1 by ALPN), `openssl s_client`
//! (which certificate SNI chooses, TLS 1.2 and 1.3), and a rustls client in a load loop while
//! the certificate files are replaced. Certificates are made in the test by a CA of its own.

use crate::support::tls::{connect_with, served_cn, TestCa};
use crate::support::*;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// A directory for a gateway's config and certificate files (the gateway removes it).
fn gateway_dir() -> PathBuf {
    tempfile::Builder::new()
        .prefix("graygate-e2e-tls")
        .tempdir()
        .expect("a temp dir")
        .keep()
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// curl over TLS with the test CA, SNI `app.test` (resolved to loopback): `-w` output last.
async fn curl(ca: &std::path::Path, port: u16, extra: &[&str], url_path: &str) -> String {
    let resolve = format!("app.test:{port}:127.0.0.1");
    let url = format!("https://app.test:{port}{url_path}");
    let mut args = vec![
        "-sS",
        "--cacert",
        ca.to_str().expect("a UTF-8 path"),
        "--resolve",
        &resolve,
        "-w",
        "\n%{http_code} %{http_version}",
    ];
    args.extend_from_slice(extra);
    args.push(&url);
    let out = run_tool("curl", &args).await;
    assert!(out.status.success(), "curl failed: {}", text(&out.stderr));
    text(&out.stdout)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn curl_speaks_http2_and_http1_over_tls_and_the_policy_decides_each_request() {
    let (stable, canary) = (backend("stable").await, backend("canary").await);
    let dir = gateway_dir();
    let ca = TestCa::new();
    ca.leaf("app", &["app.test"]).write(&dir, "site");
    let ca_file = ca.write_ca(&dir);
    let gg = web_gateway(&stable, &canary)
        .service(web().rule("beta", "canary", header("X-Env").equals("beta")))
        .tls(&["site"])
        .start_in(dir)
        .await;
    let port = gg.tls_addr().port();

    assert_eq!(
        curl(&ca_file, port, &["--http2"], "/").await,
        "stable\n\n200 2"
    );
    assert_eq!(
        curl(&ca_file, port, &["--http2", "-H", "X-Env: beta"], "/").await,
        "canary\n\n200 2"
    );
    assert_eq!(
        curl(&ca_file, port, &["--http1.1"], "/").await,
        "stable\n\n200 1.1"
    );
    // The plain listener still serves, next to the TLS one.
    assert_eq!(gg.client().version(&[]).await, "stable");
}

/// HTTP/1.1 over TLS is served by graygate's own loop as on plain TCP: kept-alive requests one
/// after another (the connection idles between them, waiting on the socket), then pipelined ones,
/// where a request with a body moves the connection to hyper mid-stream. All are answered, in
/// order, on one TLS connection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http1_over_tls_keeps_alive_and_moves_to_hyper_mid_stream() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let stable = backend("stable").await;
    let dir = gateway_dir();
    let ca = TestCa::new();
    ca.leaf("app", &["app.test"]).write(&dir, "site");
    let gg = stable_gateway(&stable).tls(&["site"]).start_in(dir).await;
    let config = ca.client_config(&[b"http/1.1"]);
    let mut stream = connect_with(config, gg.tls_addr(), "app.test")
        .await
        .expect("a TLS connection");

    for n in 1..=3 {
        let request = format!("GET /{n} HTTP/1.1\r\nHost: app.test\r\nX-N: {n}\r\n\r\n");
        stream.write_all(request.as_bytes()).await.unwrap();
        let mut answer = Vec::new();
        let mut chunk = [0u8; 4096];
        while !answer.ends_with(b"\r\n\r\nstable\n") {
            let read =
                tokio::time::timeout(patient(Duration::from_secs(10)), stream.read(&mut chunk))
                    .await
                    .expect("an answer in time")
                    .unwrap();
            assert!(read > 0, "closed after {}", text(&answer));
            answer.extend_from_slice(&chunk[..read]);
        }
        let answer = text(&answer);
        assert!(answer.starts_with("HTTP/1.1 200 OK\r\n"), "{answer}");
        assert!(
            answer.contains(&format!("\r\necho-x-n: {n}\r\n")),
            "{answer}"
        );
        // Idle between requests, as a kept-alive client is.
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    stream
        .write_all(
            b"GET /4 HTTP/1.1\r\nHost: app.test\r\nX-N: 4\r\n\r\n\
              POST /5 HTTP/1.1\r\nHost: app.test\r\nX-N: 5\r\nContent-Length: 3\r\n\r\nabc\
              GET /6 HTTP/1.1\r\nHost: app.test\r\nX-N: 6\r\nConnection: close\r\n\r\n",
        )
        .await
        .unwrap();
    let mut answers = Vec::new();
    let _ = tokio::time::timeout(
        patient(Duration::from_secs(10)),
        stream.read_to_end(&mut answers),
    )
    .await
    .expect("the answers in time");
    let answers = text(&answers);
    assert_eq!(
        answers.matches("HTTP/1.1 200 OK\r\n").count(),
        3,
        "{answers}"
    );
    let at = |n: u32| {
        answers
            .find(&format!("echo-x-n: {n}\r\n"))
            .unwrap_or_else(|| panic!("no answer to {n}: {answers}"))
    };
    assert!(at(4) < at(5) && at(5) < at(6), "{answers}");
    let bodies: Vec<&str> = answers
        .split("\r\n")
        .filter_map(|l| l.strip_prefix("x-body-bytes: "))
        .collect();
    assert_eq!(bodies, ["0", "3", "0"], "{answers}");
}

/// `openssl s_client` for one handshake; its whole output.
async fn s_client(port: u16, extra: &[&str]) -> String {
    let connect = format!("127.0.0.1:{port}");
    let mut args = vec!["s_client", "-connect", &connect];
    args.extend_from_slice(extra);
    let out = run_tool("openssl", &args).await;
    format!("{}{}", text(&out.stdout), text(&out.stderr))
}

/// The subject line openssl prints for the certificate the server sent.
fn subject(output: &str) -> &str {
    output
        .lines()
        .find(|l| l.starts_with("subject="))
        .unwrap_or_else(|| panic!("no subject in:\n{output}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sni_chooses_the_certificate_by_its_names() {
    let stable = backend("stable").await;
    let dir = gateway_dir();
    let ca = TestCa::new();
    ca.leaf("default-cert", &["default.test"])
        .write(&dir, "default");
    ca.leaf("wildcard-cert", &["*.api.test"])
        .write(&dir, "wildcard");
    ca.leaf("exact-cert", &["exact.api.test", "other.test"])
        .write(&dir, "exact");
    let gg = stable_gateway(&stable)
        .tls(&["default", "wildcard", "exact"])
        .no_plain_listener()
        .start_in(dir)
        .await;
    let port = gg.tls_addr().port();

    let cases = [
        (&["-servername", "exact.api.test"][..], "exact-cert"),
        (&["-servername", "other.test"][..], "exact-cert"),
        (&["-servername", "v1.api.test"][..], "wildcard-cert"),
        (&["-servername", "api.test"][..], "default-cert"),
        (&["-servername", "unknown.test"][..], "default-cert"),
        (&["-noservername"][..], "default-cert"),
    ];
    for (args, cn) in cases {
        let out = s_client(port, args).await;
        assert_eq!(
            subject(&out),
            format!("subject=CN = {cn}"),
            "{args:?}:\n{out}"
        );
    }

    // TLS 1.2 and 1.3, and ALPN h2 then http/1.1.
    // The server's order of cipher suites, SHA-256 ones first, whatever openssl prefers (it
    // lists the SHA-384 suites first).
    for (version, name, suite) in [
        ("-tls1_2", "TLSv1.2", "ECDHE-ECDSA-AES128-GCM-SHA256"),
        ("-tls1_3", "TLSv1.3", "TLS_AES_128_GCM_SHA256"),
    ] {
        let out = s_client(
            port,
            &[
                version,
                "-servername",
                "exact.api.test",
                "-alpn",
                "h2,http/1.1",
            ],
        )
        .await;
        assert!(
            out.contains(&format!("Protocol  : {name}")) || out.contains(&format!(", {name}, ")),
            "{version}:\n{out}"
        );
        assert!(out.contains("ALPN protocol: h2"), "{version}:\n{out}");
        assert!(
            out.contains(&format!("Cipher is {suite}")),
            "{version}:\n{out}"
        );
    }
    let out = s_client(port, &["-alpn", "http/1.1"]).await;
    assert!(out.contains("ALPN protocol: http/1.1"), "{out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certificates_rotate_under_load_without_a_failed_handshake() {
    let stable = backend("stable").await;
    let dir = gateway_dir();
    let ca = TestCa::new();
    ca.leaf("generation-0", &["app.test"]).write(&dir, "site");
    let gg = stable_gateway(&stable)
        .tls(&["site"])
        .tls_watch_interval(Duration::from_millis(100))
        .start_in(dir.clone())
        .await;
    let addr = gg.tls_addr();
    let config = ca.client_config(&[b"http/1.1"]);

    // Four clients, each a loop of new TLS connections with one request each, bounded in count
    // and time, until the rotations are done.
    let done = Arc::new(AtomicBool::new(false));
    let handshakes = Arc::new(AtomicUsize::new(0));
    let seen = Arc::new(std::sync::Mutex::new(std::collections::BTreeSet::new()));
    let mut clients = Vec::new();
    for _ in 0..4 {
        let (config, done, handshakes, seen) = (
            config.clone(),
            done.clone(),
            handshakes.clone(),
            seen.clone(),
        );
        clients.push(tokio::spawn(async move {
            let started = Instant::now();
            let mut failures = Vec::new();
            for _ in 0..20_000 {
                if done.load(Ordering::SeqCst)
                    || started.elapsed() > patient(Duration::from_secs(60))
                {
                    break;
                }
                match connect_with(config.clone(), addr, "app.test").await {
                    Ok(mut stream) => {
                        seen.lock().unwrap().insert(served_cn(&stream));
                        let reply = one_request(&mut stream).await;
                        if !reply.starts_with("HTTP/1.1 200") {
                            failures.push(format!("request: {reply}"));
                        }
                        handshakes.fetch_add(1, Ordering::SeqCst);
                    }
                    Err(e) => failures.push(format!("handshake: {e}")),
                }
            }
            failures
        }));
    }

    // Three rotations, each written in place (certificate first, then its key: a moment of
    // mismatch that must not be served), each waited for until clients get it.
    for generation in 1..=3 {
        let before = handshakes.load(Ordering::SeqCst);
        eventually("clients are connecting", async || {
            handshakes.load(Ordering::SeqCst) >= before + 20
        })
        .await;
        let cn = format!("generation-{generation}");
        let leaf = ca.leaf(&cn, &["app.test"]);
        std::fs::write(dir.join("site.pem"), &leaf.cert).unwrap();
        tokio::time::sleep(Duration::from_millis(30)).await;
        std::fs::write(dir.join("site.key"), &leaf.key).unwrap();
        eventually(format!("clients get {cn}"), async || {
            seen.lock().unwrap().contains(&cn)
        })
        .await;
    }
    done.store(true, Ordering::SeqCst);
    let mut failures = Vec::new();
    for client in clients {
        failures.extend(client.await.unwrap());
    }
    let total = handshakes.load(Ordering::SeqCst);
    assert!(
        failures.is_empty(),
        "{} failures in {total} handshakes: {:?}",
        failures.len(),
        &failures[..failures.len().min(5)]
    );
    assert!(total >= 80, "only {total} handshakes");
    let seen = seen.lock().unwrap().clone();
    assert_eq!(seen.len(), 4, "{seen:?}");
    eprintln!("certificate rotation: {total} handshakes, 0 failed, served {seen:?}");
}

/// `GET /` on a TLS stream, HTTP/1.1 with `Connection: close`; the whole answer.
async fn one_request(
    stream: &mut tokio_rustls::client::TlsStream<tokio::net::TcpStream>,
) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let request = b"GET / HTTP/1.1\r\nHost: app.test\r\nConnection: close\r\n\r\n";
    if let Err(e) = stream.write_all(request).await {
        return format!("write: {e}");
    }
    let mut answer = Vec::new();
    match stream.read_to_end(&mut answer).await {
        Ok(_) => text(&answer),
        // A close without close_notify after the whole answer is fine.
        Err(_) if !answer.is_empty() => text(&answer),
        Err(e) => format!("read: {e}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_new_file_is_logged_and_the_last_good_set_stays() {
    let stable = backend("stable").await;
    let dir = gateway_dir();
    let ca = TestCa::new();
    ca.leaf("good", &["app.test"]).write(&dir, "site");
    let gg = stable_gateway(&stable)
        .tls(&["site"])
        .tls_watch_interval(Duration::from_millis(100))
        .start_in(dir.clone())
        .await;
    let config = ca.client_config(&[]);
    let served = async || {
        let stream = connect_with(config.clone(), gg.tls_addr(), "app.test")
            .await
            .expect("a handshake");
        served_cn(&stream)
    };

    // The watcher: a key of another certificate.
    std::fs::write(dir.join("site.key"), ca.leaf("other", &["app.test"]).key).unwrap();
    let line = gg.log_line("TLS certificates not reloaded").await;
    let key = dir.join("site.key").display().to_string();
    assert!(
        line.contains(&format!("{key}: the key does not match the certificate")),
        "{line}"
    );
    assert!(line.contains("the certificates in force stay"), "{line}");
    assert_eq!(served().await, "good");

    // SIGHUP with a file that is not PEM at all: nothing reloaded, the file named.
    std::fs::write(dir.join("site.pem"), "not a certificate\n").unwrap();
    let log = gg.hup_and_wait().await;
    let cert = dir.join("site.pem").display().to_string();
    assert!(log.contains("SIGHUP: nothing reloaded"), "{log}");
    assert!(
        log.contains(&format!("tls.certs[0].cert: {cert}: holds no certificate")),
        "{log}"
    );
    assert_eq!(served().await, "good");

    // Good files again: SIGHUP applies them at once (and says so).
    ca.leaf("renewed", &["app.test"]).write(&dir, "site");
    let log = gg.hup_and_wait().await;
    assert!(log.contains("SIGHUP: tls: "), "{log}");
    assert_eq!(served().await, "renewed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redirect_http_answers_308_to_the_https_listener() {
    let stable = backend("stable").await;
    let dir = gateway_dir();
    let ca = TestCa::new();
    ca.leaf("app", &["app.test"]).write(&dir, "site");
    let gg = stable_gateway(&stable)
        .tls(&["site"])
        .redirect_http()
        .start_in(dir)
        .await;
    let tls_port = gg.tls_addr().port();
    let reply = gg
        .client()
        .request("POST", "/shop/cart?item=7&n=2", &[], "x".into())
        .await;
    // The client sends `Host: example.com`.
    assert_eq!(reply.status, 308, "{reply:?}");
    assert_eq!(
        reply.headers["location"],
        format!("https://example.com:{tls_port}/shop/cart?item=7&n=2")
    );
    assert_eq!(stable.requests(), 0, "a redirected request is not proxied");

    // The redirect follows the edge's rules for the host, as the HTTPS side would.
    let addr = gg.addr;
    let cases: [(&[u8], u16, Option<String>); 6] = [
        (b"GET /a HTTP/1.1\r\nHost: a@b\r\n\r\n", 400, None),
        (b"GET /a HTTP/1.1\r\nHost: a..b\r\n\r\n", 400, None),
        (b"GET /a HTTP/1.1\r\nHost: .a\r\n\r\n", 400, None),
        (b"GET /a HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n", 400, None),
        (
            b"GET http://abs.example/p?q HTTP/1.1\r\nHost: other\r\n\r\n",
            308,
            Some(format!("https://abs.example:{tls_port}/p?q")),
        ),
        (
            b"GET /x/../a HTTP/1.1\r\nHost: app.example.:80\r\n\r\n",
            308,
            Some(format!("https://app.example:{tls_port}/a")),
        ),
    ];
    for (request, status, location) in cases {
        let reply = raw::exchange(addr, request).await;
        let shown = format!("{:?}", String::from_utf8_lossy(request));
        assert_eq!(reply.status, status, "{shown}: {reply:?}");
        assert_eq!(
            reply.header("location").map(str::to_string),
            location,
            "{shown}"
        );
    }
}

/// The TLS metrics: failed handshakes by reason (a handshake that succeeds is not counted), the
/// expiry of the certificate in force, following a reload; and the warning of a certificate that
/// ends within two weeks.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_handshakes_and_certificate_expiry_are_in_the_metrics() {
    let stable = backend("stable").await;
    let dir = gateway_dir();
    let ca = TestCa::new();
    let (leaf, ends) = ca.leaf_ending_in("soon", &["app.test"], 10);
    leaf.write(&dir, "site");
    let ca_file = ca.write_ca(&dir);
    let gg = gateway()
        .upstream("stable", &stable)
        .service(service("web").stable("stable", "stable"))
        .route(route("web"))
        .tls(&["site"])
        .metrics()
        .start_in(dir.clone())
        .await;
    let port = gg.tls_addr().port();
    let cert = dir.join("site.pem").display().to_string();

    // Warned about at start, naming the file and the date.
    let date = humantime::format_rfc3339_seconds(std::time::UNIX_EPOCH + Duration::from_secs(ends));
    let line = gg.log_line("expires on").await;
    assert!(
        line.contains(&format!(
            "TLS certificate {cert} (app.test) expires on {date}, in "
        )),
        "{line}"
    );
    let expiry = format!(
        "graygate_tls_certificate_expiry_timestamp_seconds{{file=\"{cert}\",name=\"app.test\"}}"
    );
    assert_eq!(metric(&gg.scrape().await, &expiry), Some(ends as f64));

    // A handshake that succeeds, then one of each failure a client can cause at once.
    assert_eq!(
        curl(&ca_file, port, &["--http1.1"], "/").await,
        "stable\n\n200 1.1"
    );
    // Plain HTTP to the TLS port.
    let plain = format!("http://127.0.0.1:{port}/");
    let _ = run_tool("curl", &["-sS", "-m", "10", &plain]).await;
    // Connects and goes.
    drop(tokio::net::TcpStream::connect(gg.tls_addr()).await.unwrap());
    // Does not trust the certificate (openssl does not know the test CA), and says so.
    let _ = s_client(port, &["-servername", "app.test", "-verify_return_error"]).await;
    // Speaks no protocol graygate does.
    let _ = s_client(port, &["-servername", "app.test", "-alpn", "imap"]).await;
    let reasons = ["timeout", "eof", "alert", "incompatible", "protocol"];
    eventually("the failed handshakes counted", async || {
        let text = gg.scrape().await;
        let counts = reasons.map(|reason| {
            let series = format!("graygate_tls_handshake_failures_total{{reason=\"{reason}\"}}");
            metric(&text, &series)
        });
        equals(
            counts,
            [Some(0.0), Some(1.0), Some(1.0), Some(1.0), Some(1.0)],
        )
    })
    .await;

    // Renewed, through SIGHUP: the metric follows, and there is nothing to warn about.
    ca.leaf("renewed", &["app.test"]).write(&dir, "site");
    let log = gg.hup_and_wait().await;
    assert!(!log.contains("expires on"), "{log}");
    // 2999-01-01T00:00:00Z.
    assert_eq!(metric(&gg.scrape().await, &expiry), Some(32_472_144_000.0));
}

/// `graygate check` names the file of a missing, mismatched or expired certificate or key.
#[tokio::test]
async fn check_reports_certificate_problems_with_their_file() {
    let ca = TestCa::new();
    let dir = tempfile::tempdir().unwrap();
    ca.leaf("site", &["app.test"]).write(dir.path(), "site");
    ca.leaf("other", &["other.test"]).write(dir.path(), "other");
    ca.leaf_until("old", &["app.test"], 2021)
        .write(dir.path(), "old");
    let config = |certs: &str| {
        format!("listen = [\"127.0.0.1:8080\"]\n[tls]\nlisten = [\"127.0.0.1:8443\"]\ncerts = [{certs}]\n")
    };
    let d = dir.path().display().to_string();
    let cases = [
        (
            "{ cert = \"missing.pem\", key = \"site.key\" }",
            format!("tls.certs[0].cert: {d}/missing.pem: cannot read: No such file or directory"),
        ),
        (
            "{ cert = \"site.pem\", key = \"missing.key\" }",
            format!("tls.certs[0].key: {d}/missing.key: cannot read: No such file or directory"),
        ),
        (
            "{ cert = \"site.pem\", key = \"other.key\" }",
            format!("tls.certs[0].key: {d}/other.key: the key does not match the certificate {d}/site.pem"),
        ),
        (
            "{ cert = \"site.pem\", key = \"site.key\" }, { cert = \"old.pem\", key = \"old.key\" }",
            format!("tls.certs[1].cert: {d}/old.pem: the certificate expired on 2021-01-01T00:00:00Z"),
        ),
    ];
    for (certs, want) in cases {
        let path = write_file(&dir, "graygate.toml", &config(certs));
        let c = check(&path);
        assert_eq!(c.code, 1, "{certs}: {c:?}");
        assert!(
            c.stderr.contains(&want),
            "{certs}\nwant: {want}\ngot: {}",
            c.stderr
        );
        assert!(c.stderr.contains("graygate.toml:4:"), "{}", c.stderr);
    }
    let path = write_file(
        &dir,
        "graygate.toml",
        &config("{ cert = \"site.pem\", key = \"site.key\" }, { cert = \"other.pem\", key = \"other.key\" }"),
    );
    let c = check(&path);
    assert_eq!(c.code, 0, "{c:?}");
    assert!(
        c.stdout
            .contains("is valid: 1 listener(s), 1 TLS listener(s) with 2 certificate(s)"),
        "{c:?}"
    );
}

/// A returning client resumes its session (an abbreviated handshake) however many other clients
/// came between: session tickets are stateless, as nginx's are, not entries of a bounded cache.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_returning_client_resumes_its_session_after_300_other_clients() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let stable = backend("stable").await;
    let dir = gateway_dir();
    let ca = TestCa::new();
    ca.leaf("app", &["app.test"]).write(&dir, "site");
    let gg = stable_gateway(&stable)
        .tls(&["site"])
        .no_plain_listener()
        .start_in(dir)
        .await;
    let addr = gg.tls_addr();
    // A client that keeps its tickets (a fresh config: its own ticket store).
    let mut returning = (*ca.client_config(&[b"http/1.1"])).clone();
    returning.resumption = rustls::client::Resumption::in_memory_sessions(8);
    let returning = std::sync::Arc::new(returning);
    // One request on a connection: TLS 1.3 tickets come after the handshake, with the answer.
    let visit = |config: std::sync::Arc<rustls::ClientConfig>| async move {
        let mut tls = connect_with(config, addr, "app.test")
            .await
            .expect("a TLS handshake");
        tls.write_all(b"GET / HTTP/1.1\r\nHost: app.test\r\nConnection: close\r\n\r\n")
            .await
            .unwrap();
        let mut answer = Vec::new();
        tls.read_to_end(&mut answer).await.unwrap();
        assert!(answer.starts_with(b"HTTP/1.1 200"), "{}", text(&answer));
        tls.get_ref().1.handshake_kind()
    };
    let first = visit(returning.clone()).await;
    assert_eq!(first, Some(rustls::HandshakeKind::Full));
    // 300 other clients, each handed tickets of its own.
    let others = ca.client_config(&[b"http/1.1"]);
    for _ in 0..300 {
        visit(others.clone()).await;
    }
    let again = visit(returning.clone()).await;
    assert_eq!(again, Some(rustls::HandshakeKind::Resumed));
}
