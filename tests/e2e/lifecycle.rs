//! The process's life under load: how it ends. SIGTERM with requests in flight to an upstream
//! that never answers ends within `[timeouts] shutdown`, and says how many connections it closed.

use crate::support::raw::RawConn;
use crate::support::*;
use std::time::Duration;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_with_requests_stuck_on_a_hung_upstream_ends_within_the_shutdown_deadline() {
    let hung = HangingServer::start();
    let upstream: std::net::SocketAddr = hung.addr().parse().unwrap();
    let mut gg = stable_gateway(upstream)
        .upstream_response_timeout(Duration::from_secs(60))
        .shutdown_timeout(Duration::from_secs(1))
        .metrics()
        .start()
        .await;
    // 20 requests, each on its own connection, all waiting for the hung upstream.
    let mut clients = Vec::new();
    for _ in 0..20 {
        let mut conn = RawConn::open(gg.addr).await;
        conn.send(b"GET /stuck HTTP/1.1\r\nHost: app.test\r\n\r\n")
            .await;
        clients.push(conn);
    }
    let open = async || metric(&gg.scrape().await, "graygate_open_connections");
    eventually("20 connections open", async || {
        equals(open().await, Some(20.0))
    })
    .await;

    let took = gg.terminate().await;
    // Before the deadline: 60 s (the upstream timeout) at least; with it, 1 s and a little.
    assert!(
        took >= Duration::from_secs(1) && took < patient(Duration::from_secs(5)),
        "exit after {took:?}"
    );
    let log = gg.log_text();
    assert!(
        log.contains("shutdown: 20 connection(s) still busy after timeouts.shutdown were closed"),
        "{log}"
    );
    // Each client sees its connection closed, not an answer.
    for mut conn in clients {
        let answer = conn.response().await;
        assert!(answer.is_none(), "{answer:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_with_nothing_in_flight_ends_at_once_and_says_nothing_of_the_deadline() {
    let stable = backend("stable").await;
    let mut gg = stable_gateway(&stable)
        .shutdown_timeout(Duration::from_secs(30))
        .start()
        .await;
    assert_eq!(gg.client().version(&[]).await, "stable");
    let took = gg.terminate().await;
    assert!(
        took < patient(Duration::from_secs(5)),
        "exit after {took:?}"
    );
    assert!(!gg.log_text().contains("still busy"), "{}", gg.log_text());
}
