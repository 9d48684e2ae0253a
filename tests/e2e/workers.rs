//! Data plane workers (`workers = N`): each worker has its own listening socket on the same
//! address and the kernel spreads new connections over them. Both workers serve; a policy
//! change, a certificate rotation and an upgrade reach every one of them; a socket no worker
//! serves would leave the connections queued on it unanswered, so every test sends each request
//! on a new connection with a deadline.

use crate::support::tls::{connect_with, served_cn, TestCa};
use crate::support::*;
use std::net::SocketAddr;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// New connections sent per check: each lands on one worker's socket by a hash of its ports, so
/// that with two workers the chance that one of them gets none is 2 * 2^-64.
const CONNECTIONS: usize = 64;

/// The version that answers each of `n` requests, each on a new connection, each within a
/// deadline (a connection queued on a socket no worker serves is never answered).
async fn versions_on_new_connections(addr: SocketAddr, n: usize) -> Vec<String> {
    let mut versions = Vec::new();
    for i in 0..n {
        let version = tokio::time::timeout(
            patient(Duration::from_secs(10)),
            Client::new(addr).version(&[]),
        )
        .await
        .unwrap_or_else(|_| panic!("new connection {i} to {addr} was not answered"));
        versions.push(version);
    }
    versions
}

/// `graygate_worker_connections_total` of each worker, in worker order.
fn accepted_by_worker(text: &str) -> Vec<f64> {
    (0..)
        .map_while(|w| {
            metric(
                text,
                &format!("graygate_worker_connections_total{{worker=\"{w}\"}}"),
            )
        })
        .collect()
}

/// What each worker accepted between two scrapes.
fn accepted_since(before: &[f64], after: &[f64]) -> Vec<f64> {
    assert_eq!(before.len(), after.len());
    after.iter().zip(before).map(|(a, b)| a - b).collect()
}

fn everyone_to(version: &'static str) -> impl FnOnce(&mut graygate::policy::PolicyDoc) {
    move |policy| policy.services[0].rules[0].version = version.to_string()
}

#[tokio::test]
async fn two_workers_both_serve_and_a_policy_change_reaches_both() {
    let (stable, canary) = (backend("stable").await, backend("canary").await);
    let mut gg = web_gateway(&stable, &canary)
        .policy_file("policy.toml")
        .service(web().rule("all", "stable", cidr(["0.0.0.0/0"])))
        .workers(2)
        .metrics()
        .start()
        .await;

    let start = accepted_by_worker(&gg.scrape().await);
    assert_eq!(start, vec![0.0, 0.0], "one series per worker, none beyond");
    let versions = versions_on_new_connections(gg.addr, CONNECTIONS).await;
    assert!(versions.iter().all(|v| v == "stable"), "{versions:?}");
    let served = accepted_by_worker(&gg.scrape().await);
    assert_eq!(served.iter().sum::<f64>(), CONNECTIONS as f64, "{served:?}");
    assert!(
        served.iter().all(|&n| n > 0.0),
        "a worker served nothing: {served:?}"
    );

    // The policy is one for the process: once a new connection sees the change, every new
    // connection does, whichever worker takes it.
    gg.change_policy(everyone_to("canary"));
    gg.eventually_answers(&[], "canary").await;
    let before = accepted_by_worker(&gg.scrape().await);
    let versions = versions_on_new_connections(gg.addr, CONNECTIONS).await;
    assert!(versions.iter().all(|v| v == "canary"), "{versions:?}");
    let after = accepted_by_worker(&gg.scrape().await);
    let since = accepted_since(&before, &after);
    assert!(
        since.iter().all(|&n| n > 0.0),
        "both workers must have served the new policy: {since:?}"
    );
    assert!(canary.requests() >= CONNECTIONS, "{}", canary.requests());
}

#[tokio::test]
async fn a_second_graygate_with_workers_on_the_same_port_is_refused() {
    let stable = backend("stable").await;
    let gg = stable_gateway(&stable).workers(2).start().await;
    // SO_REUSEPORT would let it join the first one's sockets and take part of its traffic.
    let dir = tempfile::tempdir().unwrap();
    let second = stable_gateway(&stable)
        .workers(2)
        .listen(gg.addr)
        .write(dir.path());
    let exited = run_until_exit(&second).await;
    assert_eq!(exited.code, 1, "{}", exited.stderr);
    let line = exited.stderr.lines().last().unwrap_or_default();
    assert!(
        line.starts_with(&format!("graygate: data plane listen {}: ", gg.addr))
            && line.ends_with("(os error 98)"),
        "{}",
        exited.stderr
    );
    // The first one serves on.
    let versions = versions_on_new_connections(gg.addr, 8).await;
    assert!(versions.iter().all(|v| v == "stable"), "{versions:?}");
}

/// One HTTP/1.1 request on a TLS connection; the status line.
async fn tls_request(
    stream: &mut tokio_rustls::client::TlsStream<tokio::net::TcpStream>,
) -> String {
    stream
        .write_all(b"GET / HTTP/1.1\r\nHost: app.test\r\nConnection: close\r\n\r\n")
        .await
        .expect("write the request");
    let mut answer = Vec::new();
    let _ = stream.read_to_end(&mut answer).await;
    String::from_utf8_lossy(&answer)
        .lines()
        .next()
        .unwrap_or_default()
        .to_string()
}

#[tokio::test]
async fn two_workers_serve_tls_and_a_new_certificate_reaches_both() {
    let stable = backend("stable").await;
    let dir = tempfile::Builder::new()
        .prefix("graygate-e2e-workers")
        .tempdir()
        .expect("a temp dir")
        .keep();
    let ca = TestCa::new();
    ca.leaf("first", &["app.test"]).write(&dir, "site");
    let gg = stable_gateway(&stable)
        .tls(&["site"])
        .tls_watch_interval(Duration::from_millis(100))
        .no_plain_listener()
        .workers(2)
        .metrics()
        .start_in(dir.clone())
        .await;
    let addr = gg.tls_addr();
    let config = ca.client_config(&[b"http/1.1"]);

    // The certificate each of `CONNECTIONS` new TLS connections is served, each answered 200.
    let handshakes = async || {
        let mut names = Vec::new();
        for i in 0..CONNECTIONS {
            let connected = tokio::time::timeout(
                patient(Duration::from_secs(10)),
                connect_with(config.clone(), addr, "app.test"),
            )
            .await
            .unwrap_or_else(|_| panic!("TLS connection {i} was not answered"));
            let mut stream = connected.expect("a TLS handshake");
            names.push(served_cn(&stream));
            assert_eq!(tls_request(&mut stream).await, "HTTP/1.1 200 OK");
        }
        names
    };

    let names = handshakes().await;
    assert!(names.iter().all(|n| n == "first"), "{names:?}");
    let served = accepted_by_worker(&gg.scrape().await);
    assert!(
        served.iter().all(|&n| n > 0.0),
        "a worker served nothing: {served:?}"
    );

    // The certificates are read on the main thread; the workers serve the new one at once.
    let leaf = ca.leaf("second", &["app.test"]);
    std::fs::write(dir.join("site.pem"), &leaf.cert).unwrap();
    std::fs::write(dir.join("site.key"), &leaf.key).unwrap();
    eventually("a new connection gets the new certificate", async || {
        let stream = connect_with(config.clone(), addr, "app.test").await;
        equals(
            stream.map(|s| served_cn(&s)).ok(),
            Some("second".to_string()),
        )
    })
    .await;
    let before = accepted_by_worker(&gg.scrape().await);
    let names = handshakes().await;
    assert!(names.iter().all(|n| n == "second"), "{names:?}");
    let since = accepted_since(&before, &accepted_by_worker(&gg.scrape().await));
    assert!(
        since.iter().all(|&n| n > 0.0),
        "both workers must serve the new certificate: {since:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upgrade_hands_every_worker_socket_over_whatever_the_new_worker_count() {
    let stable = backend("stable").await;
    let mut gg = stable_gateway(&stable).workers(2).metrics().start().await;
    let addr = gg.addr;
    let served = |n: usize| async move {
        let versions = versions_on_new_connections(addr, n).await;
        assert!(versions.iter().all(|v| v == "stable"), "{versions:?}");
    };
    served(CONNECTIONS).await;

    // Two sockets, one worker now: it serves both (the kernel goes on queueing connections on
    // each, and every one of them is answered).
    gg.edit_config(|b| b.workers(1));
    gg.upgrade().await;
    served(CONNECTIONS).await;
    let one = accepted_by_worker(&gg.scrape().await);
    assert_eq!(one.len(), 1, "{one:?}");
    assert!(one[0] >= CONNECTIONS as f64, "{one:?}");

    // Three workers: the two inherited sockets, and one more bound beside them.
    gg.edit_config(|b| b.workers(3));
    gg.upgrade().await;
    served(CONNECTIONS * 2).await;
    let three = accepted_by_worker(&gg.scrape().await);
    assert_eq!(three.len(), 3, "{three:?}");
    assert!(
        three.iter().all(|&n| n > 0.0),
        "a worker served nothing: {three:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upgrade_from_one_worker_shares_its_socket_among_the_new_workers() {
    let stable = backend("stable").await;
    let mut gg = stable_gateway(&stable).workers(1).metrics().start().await;
    let addr = gg.addr;
    assert_eq!(
        versions_on_new_connections(addr, 8).await,
        vec!["stable"; 8]
    );
    gg.edit_config(|b| b.workers(2));
    gg.upgrade().await;
    // The socket has no SO_REUSEPORT (bound for one worker): both workers accept from it.
    let versions = versions_on_new_connections(addr, CONNECTIONS).await;
    assert!(versions.iter().all(|v| v == "stable"), "{versions:?}");
    let served = accepted_by_worker(&gg.scrape().await);
    assert_eq!(served.len(), 2, "{served:?}");
    assert!(
        served.iter().sum::<f64>() >= CONNECTIONS as f64,
        "{served:?}"
    );
}
