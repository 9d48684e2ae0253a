//! Generated request heads against a running graygate: valid heads (a routed GET, bodies by
//! length and by chunks, an absolute URI, `OPTIONS *`, HTTP/1.0) taken apart byte by byte and
//! line by line, and random bytes, each on a connection of its own.
//!
//! What must hold for any bytes: the connection is answered with a status line or closed,
//! within the timeouts graygate is given (short ones here, so that a head that never ends costs
//! a fraction of a second); and after them all graygate is running and routes a normal request.
//! The seeds of failures are kept in `tests/proptest-regressions/generated.txt`.

use crate::support::mutate::{bounded, mutated};
use crate::support::*;
use proptest::prelude::*;
use proptest::test_runner::{TestCaseError, TestRunner};
use std::net::SocketAddr;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// `[timeouts] header`: a head that never ends is refused after this.
const HEADER: Duration = Duration::from_millis(300);
/// `[timeouts] client_body`: a body shorter than announced is refused after this.
const BODY: Duration = Duration::from_millis(300);
/// `[timeouts] upstream_response`.
const UPSTREAM: Duration = Duration::from_secs(1);
/// Time on top of the timeouts for a busy machine (before patience).
const SLACK: Duration = Duration::from_secs(2);

/// Heads graygate answers as they are.
const VALID: &[&[u8]] = &[
    b"GET /cart?uid=7 HTTP/1.1\r\nHost: example.com\r\nX-Env: beta\r\nCookie: uid=7; s=1\r\nX-Forwarded-For: 203.0.113.7\r\n\r\n",
    b"POST /upload HTTP/1.1\r\nHost: example.com\r\nContent-Type: text/plain\r\nContent-Length: 5\r\n\r\nhello",
    b"POST /chunks HTTP/1.1\r\nHost: example.com\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
    b"GET http://example.com/absolute HTTP/1.1\r\nHost: example.com\r\nConnection: close\r\n\r\n",
    b"OPTIONS * HTTP/1.1\r\nHost: example.com\r\n\r\n",
    b"GET /old HTTP/1.0\r\nUser-Agent: x\r\n\r\n",
];

/// A head: a valid one with a few edits, or random bytes.
fn head() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        5 => prop::sample::select(VALID).prop_flat_map(|valid| mutated(valid.to_vec())),
        1 => prop::collection::vec(proptest::arbitrary::any::<u8>(), 0..256),
    ]
}

/// What came back on a connection.
enum Answer {
    /// The first line graygate wrote.
    Line(String),
    /// Closed (or reset) before a byte was written.
    Closed,
}

/// Sends `head` on a new connection and reads the first line of the answer, or the close.
async fn answer(addr: SocketAddr, head: &[u8]) -> Result<Answer, String> {
    let within = patient(HEADER + BODY + UPSTREAM + SLACK);
    let exchange = async {
        let mut stream = TcpStream::connect(addr)
            .await
            .map_err(|e| format!("connect to {addr}: {e}"))?;
        // graygate may refuse and close before it has read everything: a failed write is then
        // what the close looks like from here, and the read below sees the answer or the close.
        let _ = stream.write_all(head).await;
        let mut got = Vec::new();
        let mut chunk = [0u8; 4096];
        loop {
            if let Some(end) = got.windows(2).position(|w| w == b"\r\n") {
                return Ok(Answer::Line(
                    String::from_utf8_lossy(&got[..end]).into_owned(),
                ));
            }
            match stream.read(&mut chunk).await {
                Ok(0) | Err(_) if got.is_empty() => return Ok(Answer::Closed),
                Ok(0) | Err(_) => {
                    return Err(format!(
                        "closed in the middle of a line: {:?}",
                        String::from_utf8_lossy(&got)
                    ))
                }
                Ok(n) => got.extend_from_slice(&chunk[..n]),
            }
        }
    };
    tokio::time::timeout(within, exchange)
        .await
        .map_err(|_| format!("neither answered nor closed within {within:?}"))?
}

/// `HTTP/1.x NNN` and, optionally, a reason phrase.
fn is_status_line(line: &str) -> bool {
    let Some(rest) = line
        .strip_prefix("HTTP/1.1 ")
        .or_else(|| line.strip_prefix("HTTP/1.0 "))
    else {
        return false;
    };
    let (code, reason) = rest.split_at(rest.len().min(3));
    code.len() == 3
        && code.bytes().all(|b| b.is_ascii_digit())
        && (1..=5).contains(&(code.as_bytes()[0] - b'0'))
        && (reason.is_empty() || reason.starts_with(' '))
}

#[test]
fn a_status_line_is_what_it_looks_like() {
    assert!(is_status_line("HTTP/1.1 400 Bad Request"));
    assert!(is_status_line("HTTP/1.0 200"));
    assert!(!is_status_line("HTTP/1.1 4000 x"));
    assert!(!is_status_line("HTTP/2 200"));
    assert!(!is_status_line("hello"));
}

#[test]
fn every_generated_head_is_answered_or_closed_within_the_timeouts() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a runtime");
    let (stable, canary) =
        runtime.block_on(async { (backend("stable").await, backend("canary").await) });
    let gg = runtime.block_on(
        web_gateway(&stable, &canary)
            .service(web().rule("beta", "canary", header("X-Env").equals("beta")))
            .header_timeout(HEADER)
            .client_body_timeout(BODY)
            .upstream_response_timeout(UPSTREAM)
            .start(),
    );
    // No per-case timeout of proptest's (it would run the cases in a child process, which would
    // start a gateway of its own): `answer` bounds each case itself.
    let mut config = bounded(128, 0);
    config.source_file = Some(file!());
    let mut runner = TestRunner::new(config);
    // Heads answered, by status code, and heads closed without an answer.
    let counts =
        std::sync::Mutex::new((std::collections::BTreeMap::<String, usize>::new(), 0usize));
    let started = Instant::now();
    let result = runner.run(&head(), |head| {
        let sent = String::from_utf8_lossy(&head).into_owned();
        match runtime.block_on(answer(gg.addr, &head)) {
            Ok(Answer::Line(line)) => {
                prop_assert!(
                    is_status_line(&line),
                    "not a status line: {:?}; sent {:?}",
                    line,
                    sent
                );
                let code = line.get(9..12).unwrap_or_default().to_string();
                *counts
                    .lock()
                    .expect("the counts")
                    .0
                    .entry(code)
                    .or_default() += 1;
            }
            Ok(Answer::Closed) => counts.lock().expect("the counts").1 += 1,
            Err(e) => return Err(TestCaseError::fail(format!("{e}; sent {sent:?}"))),
        }
        Ok(())
    });
    if let Err(e) = result {
        panic!("{e}\ngraygate's log:\n{}", gg.log_text());
    }
    let (statuses, closed) = counts.into_inner().expect("the counts");
    let lines: usize = statuses.values().sum();
    eprintln!(
        "{} heads in {:?}: answered {statuses:?}, {closed} closed",
        lines + closed,
        started.elapsed()
    );
    assert!(
        lines > 0,
        "no head was answered: the generator sends nothing graygate reads"
    );

    // Still running, and still routing.
    let mut client = gg.client();
    let reply = runtime.block_on(client.get(&[("X-Env", "beta")]));
    assert_eq!((reply.status, reply.body.as_str()), (200, "canary\n"));
    let reply = runtime.block_on(client.get(&[]));
    assert_eq!((reply.status, reply.body.as_str()), (200, "stable\n"));
    assert!(
        !gg.log_text().contains("panicked"),
        "graygate panicked:\n{}",
        gg.log_text()
    );
}
