//! The own HTTP/1.1 loop against hyper's server: the request heads it takes must be the requests
//! hyper would have made of the same bytes, and the responses it writes must be the bytes hyper
//! would have written. Both checked on fixed cases and on generated ones.

use super::*;
use std::convert::Infallible;
use std::sync::Mutex;

use bytes::Bytes;
use http_body_util::{Full, StreamBody};
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use proptest::prelude::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const LIMIT: usize = 1024;

fn parse_str(text: &[u8]) -> (Head, BytesMut) {
    let mut buf = BytesMut::from(text);
    let head = parse(&mut buf, LIMIT);
    (head, buf)
}

fn taken(text: &[u8]) -> (Request<Empty<Bytes>>, bool, BytesMut) {
    match parse_str(text) {
        (Head::Request(req, keep_alive), rest) => (req, keep_alive, rest),
        (other, _) => panic!(
            "not taken: {other:?} for {:?}",
            String::from_utf8_lossy(text)
        ),
    }
}

fn left_to_hyper(text: &[u8]) {
    let (head, rest) = parse_str(text);
    assert!(
        matches!(head, Head::Hyper),
        "{head:?} for {:?}",
        String::from_utf8_lossy(text)
    );
    // Every byte is still there for hyper to read.
    assert_eq!(&rest[..], text);
}

#[test]
fn a_plain_get_is_taken_and_the_rest_stays_in_the_buffer() {
    let (req, keep_alive, rest) =
        taken(b"GET /a?b=c HTTP/1.1\r\nHost: x\r\nX-Real-IP: 10.0.0.7\r\n\r\nGET /next");
    assert_eq!(req.method(), Method::GET);
    assert_eq!(req.uri(), "/a?b=c");
    assert_eq!(req.version(), Version::HTTP_11);
    assert_eq!(req.headers()["host"], "x");
    assert_eq!(req.headers()["x-real-ip"], "10.0.0.7");
    assert!(keep_alive);
    assert_eq!(&rest[..], b"GET /next");
}

#[test]
fn connection_close_and_keep_alive_are_read_as_hyper_reads_them() {
    let (_, keep_alive, _) = taken(b"GET / HTTP/1.1\r\nConnection: Keep-Alive\r\n\r\n");
    assert!(keep_alive);
    let (_, keep_alive, _) = taken(b"GET / HTTP/1.1\r\nConnection: keep-alive , CLOSE\r\n\r\n");
    assert!(!keep_alive);
    let (_, keep_alive, _) =
        taken(b"GET / HTTP/1.1\r\nConnection: close\r\nConnection: keep-alive\r\n\r\n");
    assert!(!keep_alive);
}

#[test]
fn a_partial_head_waits_for_more() {
    assert!(matches!(
        parse_str(b"GET / HTTP/1.1\r\nHost: x\r\n").0,
        Head::Partial
    ));
    assert!(matches!(parse_str(b"").0, Head::Partial));
}

#[test]
fn bodies_upgrades_and_the_unusual_are_left_to_hyper() {
    for text in [
        &b"POST / HTTP/1.1\r\nContent-Length: 3\r\n\r\nabc"[..],
        b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        b"GET / HTTP/1.1\r\nContent-Length: 0\r\n\r\n",
        b"GET / HTTP/1.1\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n",
        b"GET /chat HTTP/1.1\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n",
        b"GET / HTTP/1.1\r\nConnection: x-hop\r\nX-Hop: 1\r\n\r\n",
        b"GET / HTTP/1.1\r\nExpect: 100-continue\r\n\r\n",
        b"GET / HTTP/1.1\r\nTE: trailers\r\n\r\n",
        b"HEAD / HTTP/1.1\r\n\r\n",
        b"CONNECT h:443 HTTP/1.1\r\n\r\n",
        b"GET / HTTP/1.0\r\n\r\n",
        b"GET / HTTP/2.0\r\n\r\n",
        b"GET /a b HTTP/1.1\r\n\r\n",
        b"GET / HTTP/1.1\r\nBad Name: x\r\n\r\n",
        b"GET / HTTP/1.1\r\nX: a\r\n b\r\n\r\n",
    ] {
        left_to_hyper(text);
    }
}

#[test]
fn a_head_over_the_limit_is_left_to_hyper_whole_or_not() {
    let long = format!("GET / HTTP/1.1\r\nX-Long: {}\r\n\r\n", "a".repeat(LIMIT));
    left_to_hyper(long.as_bytes());
    let partial = format!("GET / HTTP/1.1\r\nX-Long: {}", "a".repeat(LIMIT));
    left_to_hyper(partial.as_bytes());
    let many: String = (0..=MAX_HEADERS).map(|i| format!("X-{i}: 1\r\n")).collect();
    let mut buf = BytesMut::from(format!("GET / HTTP/1.1\r\n{many}\r\n").as_bytes());
    assert!(matches!(parse(&mut buf, 64 * 1024), Head::Hyper));
}

/// What hyper's server made of `bytes`: the first request's parts, and every byte it answered.
async fn hyper_reads(bytes: Vec<u8>) -> (Option<(Method, Uri, Version, HeaderMap, bool)>, Vec<u8>) {
    let (mut client, server) = tokio::io::duplex(64 * 1024);
    let seen = Arc::new(Mutex::new(None));
    let record = seen.clone();
    let service = service_fn(move |req: Request<hyper::body::Incoming>| {
        let record = record.clone();
        async move {
            let mut record = record.lock().unwrap();
            if record.is_none() {
                *record = Some((
                    req.method().clone(),
                    req.uri().clone(),
                    req.version(),
                    req.headers().clone(),
                    req.body().is_end_stream(),
                ));
            }
            Ok::<_, Infallible>(Response::new(Empty::<Bytes>::new()))
        }
    });
    let conn = tokio::spawn(async move {
        // Half-closes allowed: the test's client shuts its side after the request, and waits.
        let _ = hyper::server::conn::http1::Builder::new()
            .half_close(true)
            .max_header_size(LIMIT)
            .serve_connection(TokioIo::new(server), service)
            .await;
    });
    client.write_all(&bytes).await.unwrap();
    client.shutdown().await.unwrap();
    let mut answered = Vec::new();
    let _ = tokio::time::timeout(
        std::time::Duration::from_secs(5),
        client.read_to_end(&mut answered),
    )
    .await
    .expect("hyper answers and closes");
    let _ = conn.await;
    let seen = seen.lock().unwrap().take();
    (seen, answered)
}

fn request_bytes() -> impl Strategy<Value = Vec<u8>> {
    // Mostly what clients send, so that most heads are taken and compared; now and then what
    // they should not.
    let method = prop_oneof![
        8 => Just("GET".to_string()),
        2 => prop::sample::select(vec!["POST", "DELETE", "OPTIONS", "PUT", "PATCH", "X-Custom"])
            .prop_map(String::from),
        1 => prop::sample::select(vec!["HEAD", "CONNECT", "get", "G@T", ""]).prop_map(String::from),
        1 => "[!#$%&'*+.^_`|~0-9A-Za-z-]{1,8}",
    ];
    let target = prop_oneof![
        6 => "/[a-zA-Z0-9/._~%?&=-]{0,16}",
        2 => prop::sample::select(vec![
            "/", "/a?b=c", "*", "http://h/x", "http://h:80", "//x", "/%zz", "/a%20b", "h:443",
            "/a#f", "/?", "/[x]", "/a|b", "/{}",
        ])
        .prop_map(String::from),
        1 => "/[!-~]{0,12}",
        1 => prop::sample::select(vec!["/\u{e9}", "/\u{7f}", "/a b", ""]).prop_map(String::from),
    ];
    let version = prop_oneof![
        10 => Just("HTTP/1.1"),
        1 => prop::sample::select(vec!["HTTP/1.0", "HTTP/2.0", "HTTP/1.2", "http/1.1", "HTTP/1.1 "]),
    ];
    let name = prop_oneof![
        6 => prop::sample::select(vec![
            "Host", "X-Real-IP", "X-Forwarded-For", "Accept", "x-a", "User-Agent", "TOKEN",
            "Cookie", "X-A",
        ])
        .prop_map(String::from),
        3 => "[!#$%&'*+.^_`|~0-9A-Za-z-]{1,8}",
        2 => prop::sample::select(vec![
            "Connection", "Content-Length", "Transfer-Encoding", "Expect", "Upgrade", "TE",
        ])
        .prop_map(String::from),
        1 => prop::sample::select(vec!["Bad Name", "X\u{1}", "", "X:"]).prop_map(String::from),
    ];
    let value = prop_oneof![
        6 => "[ -~]{0,16}",
        3 => prop::sample::select(vec![
            "close", "keep-alive", "Close, Keep-Alive", "upgrade", "keep-alive, x", "0", "5",
            "chunked", "100-continue", "trailers", "keep-alive,,close", " padded ", "a\tb", "",
        ])
        .prop_map(String::from),
        1 => prop::sample::select(vec!["\u{e9}", "x\r\n y", "a\u{0}b", "\u{80}"]).prop_map(String::from),
    ];
    let separator =
        prop_oneof![8 => Just(": "), 1 => prop::sample::select(vec![":", " : ", ":\t", ":  "])];
    let header = (name, separator, value);
    let eol = prop_oneof![10 => Just("\r\n"), 1 => Just("\n")];
    (
        method,
        prop_oneof![10 => Just(" "), 1 => Just("  ")],
        target,
        version,
        prop::collection::vec(header, 0..6),
        eol,
        prop::sample::select(vec!["", "", "GET / HTTP/1.1\r\n\r\n", "abc"]),
        prop_oneof![10 => Just(true), 1 => Just(false)],
    )
        .prop_map(
            |(method, sp, target, version, headers, eol, after, whole)| {
                let mut text = format!("{method}{sp}{target} {version}{eol}");
                for (name, separator, value) in headers {
                    text.push_str(&format!("{name}{separator}{value}{eol}"));
                }
                if whole {
                    text.push_str(eol);
                    text.push_str(after);
                }
                text.into_bytes()
            },
        )
}

fn same_request(bytes: Vec<u8>) -> Result<(), TestCaseError> {
    let mut buf = BytesMut::from(&bytes[..]);
    let (req, keep_alive) = match parse(&mut buf, LIMIT) {
        Head::Request(req, keep_alive) => (req, keep_alive),
        // Partial (waits), or hyper's: hyper gets the same bytes, so nothing can differ.
        Head::Partial | Head::Hyper => {
            prop_assert_eq!(&buf[..], &bytes[..], "bytes not taken stay in the buffer");
            return Ok(());
        }
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let (seen, answered) = runtime.block_on(hyper_reads(bytes.clone()));
    let text = String::from_utf8_lossy(&bytes);
    let Some((method, uri, version, headers, bodiless)) = seen else {
        return Err(TestCaseError::fail(format!(
            "taken, but hyper refused it: {text:?}"
        )));
    };
    prop_assert_eq!(req.method(), &method, "{:?}", text);
    prop_assert_eq!(req.uri(), &uri, "{:?}", text);
    prop_assert_eq!(req.version(), version, "{:?}", text);
    prop_assert_eq!(req.headers(), &headers, "{:?}", text);
    prop_assert!(bodiless, "hyper saw a body: {:?}", text);
    // hyper answers `connection: close` exactly when the client asked to close.
    let closed = String::from_utf8_lossy(&answered).contains("connection: close");
    prop_assert_eq!(closed, !keep_alive, "{:?}", text);
    Ok(())
}

proptest! {
    // About a third of the generated heads are taken (the rest are hyper's by construction).
    #![proptest_config(ProptestConfig::with_cases(1024))]

    /// A request head the loop takes is the request hyper makes of the same bytes.
    #[test]
    fn a_taken_request_is_hyper_s_request(bytes in request_bytes()) {
        same_request(bytes)?;
    }
}

#[test]
fn the_fixed_cases_are_hyper_s_requests_too() {
    for text in [
        &b"GET /a?b=c HTTP/1.1\r\nHost: x\r\nX-Real-IP: 10.0.0.7\r\n\r\n"[..],
        b"GET / HTTP/1.1\r\nConnection: keep-alive , CLOSE\r\n\r\n",
        b"GET http://h/x HTTP/1.1\r\nHost: h\r\nA: 1\r\nA: 2\r\n\r\n",
        b"DELETE /%zz HTTP/1.1\nHost:\tx \n\n",
        b"OPTIONS * HTTP/1.1\r\nX: \xe9\r\n\r\n",
    ] {
        let bytes = text.to_vec();
        assert!(matches!(parse_str(&bytes).0, Head::Request(..)));
        same_request(bytes).unwrap();
    }
}

/// A generated response: its status, version, headers, body and whether the client keeps the
/// connection alive.
#[derive(Debug, Clone)]
struct Case {
    status: u16,
    version: Version,
    headers: Vec<(&'static str, String)>,
    body: BodyCase,
    keep_alive: bool,
}

#[derive(Debug, Clone)]
enum BodyCase {
    Empty,
    Full(Vec<u8>),
    Stream(Vec<Vec<u8>>),
}

impl Case {
    fn response(&self) -> Response<ProxyBody> {
        let body: ProxyBody = match &self.body {
            BodyCase::Empty => Empty::new().map_err(|never| match never {}).boxed(),
            BodyCase::Full(bytes) => Full::new(Bytes::from(bytes.clone()))
                .map_err(|never| match never {})
                .boxed(),
            BodyCase::Stream(chunks) => {
                let frames: Vec<Result<Frame<Bytes>, crate::proxy::BoxError>> = chunks
                    .iter()
                    .map(|c| Ok(Frame::data(Bytes::from(c.clone()))))
                    .collect();
                StreamBody::new(futures_util::stream::iter(frames)).boxed()
            }
        };
        let mut response = Response::new(body);
        *response.status_mut() = StatusCode::from_u16(self.status).unwrap();
        *response.version_mut() = self.version;
        for (name, value) in &self.headers {
            response
                .headers_mut()
                .append(*name, HeaderValue::from_str(value).unwrap());
        }
        response
    }
}

fn case() -> impl Strategy<Value = Case> {
    let status = prop::sample::select(vec![
        200u16, 200, 201, 204, 301, 304, 404, 418, 500, 599, 299,
    ]);
    let version = prop::sample::select(vec![Version::HTTP_11, Version::HTTP_11, Version::HTTP_10]);
    let body = prop_oneof![
        Just(BodyCase::Empty),
        prop::collection::vec(any::<u8>(), 0..40).prop_map(BodyCase::Full),
        prop::collection::vec(prop::collection::vec(any::<u8>(), 0..20), 0..4)
            .prop_map(BodyCase::Stream),
    ];
    // A `transfer-encoding` that does not end in `chunked` is left out: hyper then appends
    // ", chunked" to every later joined line too (`connection: close, chunked`), which is not
    // copied (graygate removes the upstream's `transfer-encoding` anyway, `forward`).
    let header = prop_oneof![
        prop::sample::select(vec!["chunked", "gzip, chunked"])
            .prop_map(|v| ("transfer-encoding", v)),
        prop::sample::select(vec!["close", "keep-alive", "a, b", "Close"])
            .prop_map(|v| ("connection", v)),
        (
            prop::sample::select(vec!["date", "trailer", "x-a", "set-cookie", "content-type"]),
            prop::sample::select(vec![
                "x",
                "Wed, 01 Jan 2025 00:00:00 GMT",
                "a, b",
                "text/plain"
            ]),
        ),
    ];
    (
        status,
        version,
        body,
        prop::collection::vec(header, 0..5),
        any::<bool>(),
        any::<bool>(),
    )
        .prop_map(
            |(status, version, body, headers, keep_alive, with_length)| {
                let total = match &body {
                    BodyCase::Empty => 0,
                    BodyCase::Full(b) => b.len(),
                    BodyCase::Stream(chunks) => chunks.iter().map(Vec::len).sum(),
                };
                // A content-length is the body's own (hyper asserts that a known length and the
                // header agree; a wrong one is the upstream side's to refuse, `edge`).
                let mut headers: Vec<(&'static str, String)> = headers
                    .into_iter()
                    .filter(|(name, _)| *name != "content-length")
                    .map(|(n, v)| (n, v.to_string()))
                    .collect();
                if with_length {
                    headers.push(("content-length", total.to_string()));
                }
                Case {
                    status,
                    version,
                    headers,
                    body,
                    keep_alive,
                }
            },
        )
}

/// The `date` values made the same: the two servers write the clock at different instants.
fn without_dates(bytes: &[u8]) -> String {
    let text = String::from_utf8_lossy(bytes);
    let mut out = String::new();
    let mut rest = &*text;
    while let Some(at) = rest.find("date: ") {
        out.push_str(&rest[..at + 6]);
        rest = &rest[at + 6..];
        let end = rest.find("\r\n").unwrap_or(rest.len());
        out.push('*');
        rest = &rest[end..];
    }
    out.push_str(rest);
    out
}

/// What hyper's server writes for `case` to a bodiless GET, up to the end of the connection.
async fn hyper_writes(case: &Case) -> Vec<u8> {
    let (mut client, server) = tokio::io::duplex(64 * 1024);
    let answer = case.clone();
    let service = service_fn(move |_req: Request<hyper::body::Incoming>| {
        let response = answer.response();
        async move { Ok::<_, Infallible>(response) }
    });
    let conn = tokio::spawn(async move {
        let _ = hyper::server::conn::http1::Builder::new()
            .half_close(true)
            .serve_connection(TokioIo::new(server), service)
            .await;
    });
    let head: &[u8] = if case.keep_alive {
        b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"
    } else {
        b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    };
    client.write_all(head).await.unwrap();
    client.shutdown().await.unwrap();
    let mut written = Vec::new();
    tokio::time::timeout(
        std::time::Duration::from_secs(5),
        client.read_to_end(&mut written),
    )
    .await
    .expect("hyper answers and closes")
    .unwrap();
    let _ = conn.await;
    written
}

/// What the own loop writes for `case`, up to the end of the connection, and whether it would
/// keep the connection.
async fn own_writes(case: &Case) -> (Vec<u8>, bool) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let mut client = TcpStream::connect(listener.local_addr().unwrap())
        .await
        .unwrap();
    let (mut server, _) = listener.accept().await.unwrap();
    let again = respond(&mut server, case.response(), case.keep_alive)
        .await
        .unwrap();
    drop(server);
    let mut written = Vec::new();
    client.read_to_end(&mut written).await.unwrap();
    (written, again)
}

fn same_response(case: Case) -> Result<(), TestCaseError> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let (theirs, (ours, again)) =
        runtime.block_on(async { (hyper_writes(&case).await, own_writes(&case).await) });
    prop_assert_eq!(without_dates(&ours), without_dates(&theirs), "{:?}", case);
    // Kept alive unless the head says `connection: close` or the body runs to the close.
    let closes = !case.keep_alive
        || case.headers.iter().any(|(name, value)| {
            *name == "connection"
                && value
                    .split(',')
                    .any(|t| t.trim().eq_ignore_ascii_case("close"))
        });
    let no_content = matches!(case.status, 204 | 304);
    let to_the_close = case.version == Version::HTTP_10
        && matches!(case.body, BodyCase::Stream(_))
        && !no_content
        && !case
            .headers
            .iter()
            .any(|(name, _)| *name == "content-length");
    // A head hyper refuses to write (a length next to a transfer coding) closes unanswered.
    let refused = ours.is_empty();
    prop_assert_eq!(again, !closes && !to_the_close && !refused, "{:?}", case);
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    /// A response the loop writes is, byte for byte (but the clock), what hyper's server writes.
    #[test]
    fn a_written_response_is_hyper_s_response(case in case()) {
        same_response(case)?;
    }
}

#[test]
fn the_usual_responses_are_written_as_hyper_writes_them() {
    let usual = [
        Case {
            status: 200,
            version: Version::HTTP_11,
            headers: vec![("content-type", "text/plain".into())],
            body: BodyCase::Full(b"canary\n".to_vec()),
            keep_alive: true,
        },
        Case {
            status: 200,
            version: Version::HTTP_11,
            headers: vec![],
            body: BodyCase::Stream(vec![b"a".to_vec(), vec![], b"bc".to_vec()]),
            keep_alive: true,
        },
        Case {
            status: 404,
            version: Version::HTTP_11,
            headers: vec![("connection", "close".into())],
            body: BodyCase::Empty,
            keep_alive: true,
        },
        Case {
            status: 304,
            version: Version::HTTP_11,
            headers: vec![("content-length", "5".into())],
            body: BodyCase::Empty,
            keep_alive: false,
        },
        Case {
            status: 200,
            version: Version::HTTP_10,
            headers: vec![],
            body: BodyCase::Stream(vec![b"x".to_vec()]),
            keep_alive: true,
        },
    ];
    for case in usual {
        same_response(case).unwrap();
    }
}

#[test]
fn a_body_longer_than_its_length_is_cut_there_and_one_shorter_closes() {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let long = Case {
        status: 200,
        version: Version::HTTP_11,
        headers: vec![("content-length", "2".into())],
        body: BodyCase::Stream(vec![b"abc".to_vec()]),
        keep_alive: true,
    };
    let (theirs, (ours, again)) =
        runtime.block_on(async { (hyper_writes(&long).await, own_writes(&long).await) });
    assert_eq!(without_dates(&ours), without_dates(&theirs));
    assert!(without_dates(&ours).ends_with("\r\n\r\nab"));
    assert!(again);
    let short = Case {
        headers: vec![("content-length", "9".into())],
        ..long
    };
    let (ours, again) = runtime.block_on(own_writes(&short));
    assert!(without_dates(&ours).ends_with("\r\n\r\nabc"));
    assert!(!again, "a body short of its length ends the connection");
}

#[test]
fn the_pool_keeps_head_sized_read_buffers_only() {
    let mut grown = pool::take_read();
    grown.reserve(64 * READ_ROOM);
    let big = grown.capacity();
    pool::give_read(grown);
    // A buffer grown for a large head is not kept: the next one is head-sized.
    let next = pool::take_read();
    assert!(next.capacity() < big, "{} of {big}", next.capacity());
    assert!(next.capacity() >= READ_ROOM);
    pool::give_read(next);
}
