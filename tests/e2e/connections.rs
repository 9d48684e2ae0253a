//! Connections, the listen backlog and file descriptors: what graygate does when clients open
//! more connections than it should serve at once, when the admin port is flooded with slow
//! requests, and when the process runs out of file descriptors. Each test reproduces what was
//! seen before the listeners had limits (clients accepted without bound, the admin port taking
//! the data plane's descriptors, `EMFILE` reported as upstream servers being down) and shows it
//! fixed. The descriptor tests start graygate with a small `RLIMIT_NOFILE` so that a few hundred
//! connections are enough.

use crate::support::raw::RawConn;
use crate::support::*;
use std::time::{Duration, Instant};

const GET: &[u8] = b"GET / HTTP/1.1\r\nHost: example.com\r\n\r\n";

/// A bounded look: `conn` gets no response within `within` (the response would come at once if
/// it were served).
async fn no_response_within(conn: &mut RawConn, within: Duration) -> bool {
    tokio::time::timeout(within, conn.response()).await.is_err()
}

fn value(text: &str, series: &str) -> f64 {
    metric(text, series).unwrap_or_else(|| panic!("no series {series} in\n{text}"))
}

#[tokio::test]
async fn a_listener_at_max_connections_leaves_clients_waiting_then_serves_them() {
    let stable = backend("stable").await;
    let gg = stable_gateway(&stable)
        .max_connections(2)
        .listen_backlog(16)
        .metrics()
        .start()
        .await;
    let mut a = RawConn::open(gg.addr).await;
    a.send(GET).await;
    assert_eq!(a.response().await.expect("a is served").status, 200);
    let mut b = RawConn::open(gg.addr).await;
    b.send(GET).await;
    assert_eq!(b.response().await.expect("b is served").status, 200);

    // The third client connects (the kernel holds it in the backlog) but is not accepted, let
    // alone served, while two connections are open.
    let mut c = RawConn::open(gg.addr).await;
    c.send(GET).await;
    assert!(
        no_response_within(&mut c, Duration::from_millis(500)).await,
        "a third connection was served past max_connections = 2"
    );
    gg.log_line("data listener: at max_connections (2 open)")
        .await;

    // A connection closes: the waiting client is accepted and served, its request intact.
    drop(a);
    let answered = c.response().await.expect("served once a slot was freed");
    assert_eq!(answered.status, 200);
    assert_eq!(answered.text(), "stable\n");
    gg.log_line("data listener: below max_connections again")
        .await;

    let text = gg.scrape().await;
    assert_eq!(
        value(
            &text,
            r#"graygate_listener_max_connections{listener="data"}"#
        ),
        2.0
    );
    assert!(
        value(
            &text,
            r#"graygate_listener_limit_reached_total{listener="data"}"#
        ) >= 1.0
    );
    assert_eq!(
        value(&text, r#"graygate_listener_connections{listener="data"}"#),
        2.0,
        "b and c are open"
    );
}

/// With one connection open on a listener whose limit is 1, a second client waits (connected,
/// its request sent, unanswered) until the first closes; then it is answered `status`.
async fn second_client_waits_for_the_first(
    addr: std::net::SocketAddr,
    request: &[u8],
    status: u16,
) {
    let mut first = RawConn::open(addr).await;
    first.send(request).await;
    assert_eq!(
        first.response().await.expect("the first is served").status,
        status
    );
    let mut second = RawConn::open(addr).await;
    second.send(request).await;
    assert!(
        no_response_within(&mut second, Duration::from_millis(500)).await,
        "{addr}: a second connection was served past max_connections = 1"
    );
    drop(first);
    let answered = second
        .response()
        .await
        .expect("served once the first closed");
    assert_eq!(answered.status, status);
}

#[tokio::test]
async fn the_admin_and_metrics_listeners_have_limits_of_their_own() {
    let stable = backend("stable").await;
    let gg = stable_gateway(&stable)
        .admin_max_connections(1)
        .metrics_max_connections(1)
        .start()
        .await;
    second_client_waits_for_the_first(
        gg.admin_addr(),
        b"GET /healthz HTTP/1.1\r\nHost: admin\r\n\r\n",
        200,
    )
    .await;
    let metrics = gg.metrics_addr().expect("a metrics listener");
    second_client_waits_for_the_first(
        metrics,
        b"GET /metrics HTTP/1.1\r\nHost: metrics\r\n\r\n",
        200,
    )
    .await;
    // The data plane is not limited by either.
    let mut a = RawConn::open(gg.addr).await;
    a.send(GET).await;
    let mut b = RawConn::open(gg.addr).await;
    b.send(GET).await;
    assert_eq!(a.response().await.expect("a").status, 200);
    assert_eq!(b.response().await.expect("b").status, 200);
    let text = gg.scrape().await;
    for listener in ["admin", "metrics"] {
        assert_eq!(
            value(
                &text,
                &format!(r#"graygate_listener_max_connections{{listener="{listener}"}}"#)
            ),
            1.0
        );
        assert!(
            value(
                &text,
                &format!(r#"graygate_listener_limit_reached_total{{listener="{listener}"}}"#)
            ) >= 1.0
        );
    }
    gg.log_line("admin listener: at max_connections (1 open)")
        .await;
}

#[tokio::test]
async fn slow_partial_admin_requests_are_timed_out_and_never_starve_the_data_plane() {
    let stable = backend("stable").await;
    // 256 open files: before the admin listener had a limit, 300 slow admin clients took them
    // all and the data plane failed with "too many open files".
    let gg = stable_gateway(&stable)
        .admin()
        .admin_header_timeout(Duration::from_secs(1))
        .open_files(256)
        .metrics()
        .start()
        .await;
    let admin = gg.admin_addr();
    let flood = 300;
    let started = Instant::now();
    let mut slow = Vec::with_capacity(flood);
    for _ in 0..flood {
        let mut conn = RawConn::open(admin).await;
        // Headers that never end.
        conn.send(b"GET /healthz HTTP/1.1\r\nHost: admin\r\nX-Slow: ")
            .await;
        slow.push(conn);
    }

    // Meanwhile the data plane serves new connections, each also opening one to the upstream.
    for i in 0..20 {
        let reply = Client::new(gg.addr).get(&[]).await;
        assert_eq!(reply.status, 200, "data plane request {i}: {reply:?}");
        assert_eq!(reply.body, "stable\n");
    }

    // Every slow client is closed by the header timeout: the first 64 (the default
    // `[admin] max_connections`) at once, the others as they are accepted in turn.
    let closed = futures_util::future::join_all(slow.iter_mut().map(|c| c.until_closed()));
    let rests = tokio::time::timeout(patient(Duration::from_secs(60)), closed)
        .await
        .expect("every slow admin client is closed");
    assert!(
        rests.iter().all(|rest| !rest.contains("200 OK")),
        "a request without the end of its headers was answered"
    );
    // In turns of 64 with a 1 s timeout each: at least ceil(300 / 64) - 1 = 4 s.
    assert!(
        started.elapsed() >= Duration::from_secs(4),
        "300 slow clients closed in {:?}: not served 64 at a time",
        started.elapsed()
    );

    // The admin API answers again, and the data plane never ran out of descriptors.
    assert_eq!(
        Client::new(admin).get_path("/healthz", &[]).await.status,
        200,
        "the admin API after the flood"
    );
    let text = gg.scrape().await;
    assert_eq!(
        value(
            &text,
            r#"graygate_listener_max_connections{listener="admin"}"#
        ),
        64.0
    );
    assert!(
        value(
            &text,
            r#"graygate_listener_limit_reached_total{listener="admin"}"#
        ) >= 1.0
    );
    assert_eq!(
        value(
            &text,
            r#"graygate_accept_errors_total{listener="data",reason="fd_limit"}"#
        ),
        0.0
    );
    assert_eq!(
        value(&text, "graygate_upstream_connect_fd_limit_total"),
        0.0
    );
    assert!(
        !gg.log_text().contains("out of file descriptors"),
        "{}",
        gg.log_text()
    );
}

#[tokio::test]
async fn out_of_file_descriptors_pauses_accepting_marks_no_upstream_down_and_recovers() {
    let stable = backend("stable").await;
    // A max_connections set above what 64 descriptors hold (the default would be sized for them).
    // No snapshot file: its writer opens and closes files in the background, and a descriptor
    // it gives back at the wrong moment would let the upstream connect below through.
    // One worker: its one listening socket is a FIFO, so the first client is among those
    // accepted; with several, another worker's queue may take every descriptor first.
    let gg = stable_gateway(&stable)
        .workers(1)
        .snapshot("")
        .open_files(64)
        .max_connections(1000)
        .metrics()
        .start()
        .await;
    let started = Instant::now();
    // More idle clients than graygate has descriptors: the first are accepted (and wait for
    // their request), the rest stay in the backlog once accept(2) says EMFILE.
    let mut idle = Vec::new();
    for _ in 0..100 {
        idle.push(RawConn::open(gg.addr).await);
    }
    gg.log_line("data listener: out of file descriptors").await;

    // An accepted client's request needs a connection to the upstream: none can be opened. It
    // is answered 502, reported as graygate's own limit, and the server is not marked down.
    let first = &mut idle[0];
    first.send(GET).await;
    let refused = first.response().await.expect("an answer");
    assert_eq!(refused.status, 502, "{}", gg.log_text());
    assert_eq!(refused.text(), "graygate: upstream unavailable\n");
    gg.log_line("upstream connects fail: out of file descriptors")
        .await;
    let exhausted_for = started.elapsed();

    // Descriptors come back: graygate accepts again and the server is used at once.
    drop(idle);
    let mut client = Client::new(gg.addr);
    eventually("graygate serves again", async || {
        equals(client.get(&[]).await.status, 200)
    })
    .await;
    gg.log_line("data listener: file descriptors available again")
        .await;

    let text = gg.scrape().await;
    let server = stable.addr();
    let fd_limit = value(
        &text,
        r#"graygate_accept_errors_total{listener="data",reason="fd_limit"}"#,
    );
    assert!(fd_limit >= 1.0, "{text}");
    // Paused 100 ms after each failure, not spinning: about 10 failures a second.
    let bound = 20.0 * (started.elapsed().as_secs_f64() + 1.0);
    assert!(
        fd_limit <= bound,
        "{fd_limit} failed accepts in {:?} (exhausted after {exhausted_for:?}): accept is not paused",
        started.elapsed()
    );
    assert!(value(&text, "graygate_upstream_connect_fd_limit_total") >= 1.0);
    assert_eq!(
        value(
            &text,
            &format!(
                r#"graygate_upstream_connect_failures_total{{server="{server}",upstream="stable"}}"#
            )
        ),
        0.0,
        "an fd-limit connect is not the server's connect failure"
    );
    assert_eq!(
        value(
            &text,
            &format!(r#"graygate_upstream_server_healthy{{server="{server}",upstream="stable"}}"#)
        ),
        1.0
    );
    let log = gg.log_text();
    assert!(!log.contains("upstream server is down"), "{log}");
    assert!(
        !log.contains("no server of the upstream can be reached"),
        "{log}"
    );
}
