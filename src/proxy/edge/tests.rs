//! The edge's rules one by one, the path normaliser against a literal reading of RFC 3986, and
//! the body clocks on scripted bodies.

use super::*;
use http_body_util::BodyExt;
use proptest::prelude::*;
use tokio::sync::mpsc;

// ----- paths -----

#[test]
fn paths_are_made_canonical() {
    #[rustfmt::skip]
    let cases: &[(&str, &str, &str)] = &[
        ("/%61pi", "/api", "an escaped unreserved letter"),
        ("/x/../api", "/api", "a dot-dot segment"),
        ("//api", "/api", "a repeated slash"),
        ("/api//v1///x", "/api/v1/x", "repeated slashes inside"),
        ("/./api/.", "/api/", "dot segments; a final one leaves a directory"),
        ("/a/b/..", "/a/", "a final dot-dot leaves a directory"),
        ("/../../etc", "/etc", "dot-dot never climbs above the root"),
        ("/%2e%2E/api", "/api", "an escaped dot segment is a dot segment"),
        ("/a%2fb", "/a%2Fb", "an escaped slash stays escaped (hex upper-cased): it is no separator"),
        ("/%7euser/%41%2D%5f", "/~user/A-_", "tilde, letters, dash, underscore"),
        ("/caf%C3%A9", "/caf%C3%A9", "escaped non-ASCII stays escaped"),
        ("/a/", "/a/", "canonical already"),
        ("/.well-known/x", "/.well-known/x", "a name that starts with a dot is no dot segment"),
        ("/", "/", "the root"),
        ("*", "*", "asterisk-form is left alone"),
    ];
    for (path, want, what) in cases {
        let got = normalize_path(path)
            .unwrap()
            .unwrap_or_else(|| path.to_string());
        assert_eq!(&got, want, "{what}: {path}");
    }
    // Canonical input is left as it is, not rebuilt.
    assert_eq!(normalize_path("/api/v1/users"), Ok(None));
    assert_eq!(normalize_path("/a/"), Ok(None));
    // A `%` that starts no escape has no one meaning: `%%32e` decoded once would be `%2e`.
    for bad in ["/100%", "/%zz/x", "/%%32e%%32e/admin", "/%4"] {
        assert_eq!(normalize_path(bad), Err(Refusal::BadTarget), "{bad}");
    }
}

/// The slow, obvious twin of [`normalize_path`]: RFC 3986 6.2.2.2 (decode unreserved) as a
/// separate pass, `//` merged by a loop, then remove_dot_segments of 5.2.4 step by step.
fn reference(path: &str) -> String {
    if !path.starts_with('/') {
        return path.to_string();
    }
    // Percent-decoding of unreserved characters; other escapes upper-cased.
    let mut decoded = String::new();
    let chars: Vec<char> = path.chars().collect();
    let mut i = 0;
    while i < chars.len() {
        let escape = chars[i] == '%'
            && chars.get(i + 1).is_some_and(|c| c.is_ascii_hexdigit())
            && chars.get(i + 2).is_some_and(|c| c.is_ascii_hexdigit());
        if escape {
            let hex: String = chars[i + 1..i + 3].iter().collect();
            let c = u8::from_str_radix(&hex, 16).unwrap() as char;
            if c.is_ascii_alphanumeric() || "-._~".contains(c) {
                decoded.push(c);
            } else {
                decoded.push('%');
                decoded.push_str(&hex.to_ascii_uppercase());
            }
            i += 3;
        } else {
            decoded.push(chars[i]);
            i += 1;
        }
    }
    let mut merged = decoded.clone();
    while merged.contains("//") {
        merged = merged.replace("//", "/");
    }
    // RFC 3986 5.2.4, as written.
    let mut input = merged.as_str().to_string();
    let mut output = String::new();
    while !input.is_empty() {
        if let Some(rest) = input.strip_prefix("../") {
            input = rest.to_string();
        } else if let Some(rest) = input.strip_prefix("./") {
            input = rest.to_string();
        } else if input.starts_with("/./") {
            input = input[2..].to_string();
        } else if input == "/." {
            input = "/".into();
        } else if input.starts_with("/../") || input == "/.." {
            input = if input == "/.." {
                "/".into()
            } else {
                input[3..].to_string()
            };
            match output.rfind('/') {
                Some(at) => output.truncate(at),
                None => output.clear(),
            }
        } else if input == "." || input == ".." {
            input.clear();
        } else {
            let start = usize::from(input.starts_with('/'));
            let end = input[start..].find('/').map_or(input.len(), |e| e + start);
            output.push_str(&input[..end]);
            input = input[end..].to_string();
        }
    }
    if output.is_empty() {
        output.push('/');
    }
    output
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn the_host_fast_path_passes_only_hosts_the_full_check_leaves_alone(
        host in "[a-zA-Z0-9.:_~%\\[\\]-]{0,16}"
    ) {
        let full = normalize_host_fully(&host);
        if plainly_canonical_host(host.as_bytes()) {
            prop_assert_eq!(&full, &Ok(None), "{}", host);
        }
        prop_assert_eq!(normalize_host(&host), full, "{}", host);
    }

    #[test]
    fn the_normaliser_agrees_with_rfc_3986_and_is_stable(
        path in "/[/.a%2eEfF5zZ~_-]{0,24}"
    ) {
        let valid_escapes = path.match_indices('%').all(|(i, _)| {
            path.as_bytes().get(i + 1).is_some_and(u8::is_ascii_hexdigit)
                && path.as_bytes().get(i + 2).is_some_and(u8::is_ascii_hexdigit)
        });
        let Ok(normal) = normalize_path(&path) else {
            prop_assert!(!valid_escapes, "{} refused", path);
            return Ok(());
        };
        prop_assert!(valid_escapes, "{} accepted", path);
        let normal = normal.unwrap_or_else(|| path.clone());
        prop_assert_eq!(&normal, &reference(&path), "path {}", path);
        // Normalising twice changes nothing: what the route saw is what the upstream sees.
        prop_assert_eq!(normalize_path(&normal), Ok(None), "{} -> {}", path, normal);
        // The fast path only skips paths that are canonical.
        if !may_need_normalizing(&path) {
            prop_assert_eq!(&reference(&path), &path);
        }
    }
}

// ----- hosts -----

#[test]
fn hosts_are_checked_and_lose_a_trailing_dot() {
    let ok = |host: &str| normalize_host(host).unwrap();
    assert_eq!(ok("shop.example"), None);
    assert_eq!(ok("shop.example."), Some("shop.example".into()));
    assert_eq!(ok("shop.example.:8080"), Some("shop.example:8080".into()));
    assert_eq!(ok("Shop.Example:80"), None, "case is the route's business");
    assert_eq!(ok("10.0.0.1."), Some("10.0.0.1".into()));
    assert_eq!(ok("[2001:db8::1]:443"), None);
    assert_eq!(ok("[::1]"), None);
    assert_eq!(ok("host:"), None, "RFC 3986 allows an empty port");
    for bad in [
        "",
        ".",
        "..",
        "a..b",
        ".a",
        "a.:x",
        "a b",
        "a/b",
        "a:1:2",
        "2001:db8::1",
        "[nope]",
        "[::1]x",
        "a:123456",
        "a@b",
        "%zz",
    ] {
        assert_eq!(normalize_host(bad), Err(Refusal::BadHost), "{bad:?}");
    }
}

fn request(version: Version, target: &str, headers: &[(&'static str, &str)]) -> Request<()> {
    let mut b = Request::builder().version(version).uri(target);
    for (k, v) in headers {
        b = b.header(*k, *v);
    }
    b.body(()).unwrap()
}

/// A request (version, target, headers), what admission says, and what the case shows.
type Case<'a> = (
    Version,
    &'a str,
    &'a [(&'static str, &'a str)],
    Result<(), Refusal>,
    &'a str,
);

#[test]
fn admission_refuses_what_cannot_be_proxied_safely() {
    use Version as V;
    #[rustfmt::skip]
    let cases: &[Case] = &[
        (V::HTTP_11, "/", &[("host", "a.example")], Ok(()), "one host"),
        (V::HTTP_11, "/", &[("host", "a.example"), ("host", "b.example")], Err(Refusal::TwoHosts), "two Host lines"),
        (V::HTTP_11, "/", &[("host", "a.example"), ("host", "a.example")], Err(Refusal::TwoHosts), "even the same twice"),
        (V::HTTP_11, "/", &[], Err(Refusal::NoHost), "HTTP/1.1 without Host"),
        (V::HTTP_11, "/", &[("host", "")], Err(Refusal::NoHost), "HTTP/1.1 with an empty Host"),
        (V::HTTP_10, "/", &[], Ok(()), "HTTP/1.0 needs no Host"),
        (V::HTTP_10, "/", &[("host", "")], Ok(()), "nor a non-empty one"),
        (V::HTTP_11, "http://a.example/x", &[], Ok(()), "an absolute-form target's authority is the host"),
        (V::HTTP_11, "http://a.example/x", &[("host", "")], Ok(()), "whatever the Host says"),
        (V::HTTP_11, "http://a.example/x", &[("host", "a"), ("host", "b")], Err(Refusal::TwoHosts), "but two Host lines are still two"),
        (V::HTTP_11, "http://user@a.example/x", &[], Err(Refusal::BadHost), "no user info"),
        (V::HTTP_11, "/", &[("host", "a..example")], Err(Refusal::BadHost), "an empty label"),
        (V::HTTP_11, "/", &[("host", "a.example"), ("transfer-encoding", "chunked")], Ok(()), "chunked"),
        (V::HTTP_11, "/", &[("host", "a.example"), ("transfer-encoding", "gzip, chunked")], Err(Refusal::TransferCoding), "gzip"),
        (V::HTTP_11, "/", &[("host", "a.example"), ("transfer-encoding", "gzip"), ("transfer-encoding", "chunked")], Err(Refusal::TransferCoding), "gzip on its own line"),
        (V::HTTP_11, "/", &[("host", "a.example"), ("transfer-encoding", "chunked, chunked")], Err(Refusal::BadTransferEncoding), "chunked twice"),
    ];
    for (version, target, headers, want, what) in cases {
        let mut req = request(*version, target, headers);
        assert_eq!(admit(&mut req, false), *want, "{what}");
    }
    assert_eq!(
        Refusal::TransferCoding.status(),
        StatusCode::NOT_IMPLEMENTED
    );
    assert_eq!(Refusal::TwoHosts.status(), StatusCode::BAD_REQUEST);
    assert!(Refusal::NoHost.body().starts_with("graygate: "));
}

#[test]
fn admission_makes_the_request_canonical() {
    let mut req = request(
        Version::HTTP_11,
        "/x/..//%61pi?q=%61&b=1",
        &[("host", "shop.example.:8080")],
    );
    admit(&mut req, false).unwrap();
    assert_eq!(req.uri(), "/api?q=%61&b=1", "the query is left as sent");
    assert_eq!(req.headers()["host"], "shop.example:8080");

    // The authority of an absolute-form target replaces the Host, and is made canonical too;
    // the target keeps its form (the rewrite makes it origin-form).
    let mut req = request(
        Version::HTTP_11,
        "http://api.example./v1/./x",
        &[("host", "other.example")],
    );
    admit(&mut req, false).unwrap();
    assert_eq!(req.headers()["host"], "api.example");
    assert_eq!(req.uri().path(), "/v1/x");
    assert_eq!(req.uri().authority().unwrap(), "api.example.");
}

#[test]
fn forwarding_headers_of_untrusted_peers_are_removed() {
    let headers: &[(&'static str, &str)] = &[
        ("host", "a.example"),
        ("forwarded", "for=1.2.3.4;host=evil.example"),
        ("x-forwarded-host", "evil.example"),
        ("x-forwarded-proto", "https"),
        ("x-forwarded-port", "443"),
        ("x-forwarded-for", "1.2.3.4"),
        ("x-forwardedness", "not one of them"),
    ];
    let mut stranger = request(Version::HTTP_11, "/", headers);
    admit(&mut stranger, true).unwrap();
    let h = stranger.headers();
    for gone in [
        "forwarded",
        "x-forwarded-host",
        "x-forwarded-proto",
        "x-forwarded-port",
    ] {
        assert!(!h.contains_key(gone), "{gone} should be removed");
    }
    assert_eq!(h["x-forwarded-for"], "1.2.3.4", "appended to, not removed");
    assert_eq!(h["x-forwardedness"], "not one of them");

    let mut trusted = request(Version::HTTP_11, "/", headers);
    admit(&mut trusted, false).unwrap();
    assert_eq!(trusted.headers()["x-forwarded-host"], "evil.example");
    assert!(trusted.headers().contains_key("forwarded"));
}

#[test]
fn response_framing() {
    let headers = |pairs: &[(&'static str, &'static str)]| {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(*k, HeaderValue::from_static(v));
        }
        h
    };
    // Both: the length goes (RFC 9112 6.3).
    let mut both = headers(&[("content-length", "5"), ("transfer-encoding", "chunked")]);
    check_response_framing(&mut both).unwrap();
    assert!(!both.contains_key("content-length"));
    // A length alone stays.
    let mut length = headers(&[("content-length", "5")]);
    check_response_framing(&mut length).unwrap();
    assert_eq!(length["content-length"], "5");
    // Codings other than chunked are not passed on.
    for codings in ["gzip, chunked", "chunked, chunked", "identity"] {
        let mut h = headers(&[("transfer-encoding", codings)]);
        let e = check_response_framing(&mut h).unwrap_err();
        assert_eq!(e.codings, codings);
    }
}

// ----- bodies -----

/// A body fed by the test: each message is a frame, or an error; dropping the sender ends it.
struct Script(mpsc::UnboundedReceiver<Result<Bytes, std::io::Error>>);

impl Body for Script {
    type Data = Bytes;
    type Error = std::io::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, std::io::Error>>> {
        self.0.poll_recv(cx).map(|m| m.map(|r| r.map(Frame::data)))
    }
}

fn script() -> (mpsc::UnboundedSender<Result<Bytes, std::io::Error>>, Script) {
    let (tx, rx) = mpsc::unbounded_channel();
    (tx, Script(rx))
}

const LIMIT: Duration = Duration::from_millis(100);

#[tokio::test]
async fn a_client_body_that_stalls_fails_as_the_clients_fault() {
    let (tx, inner) = script();
    let state = Arc::new(BodyState::default());
    let mut body = ClientBody::new(inner, state.clone(), LIMIT);
    tx.send(Ok(Bytes::from_static(b"part"))).unwrap();
    let first = body.frame().await.unwrap().unwrap();
    assert_eq!(first.into_data().unwrap(), "part");
    assert!(!state.activity.waits_for_client());
    // Nothing more comes: the body waits for the client, then gives up.
    let error = body.frame().await.unwrap().unwrap_err();
    assert!(error.downcast_ref::<ClientBodyError>().is_some(), "{error}");
    assert_eq!(state.fault(), Some(ClientFault::TimedOut));
    assert_eq!(ClientFault::TimedOut.status(), StatusCode::REQUEST_TIMEOUT);
    assert!(!state.activity.waits_for_client());
    assert!(body.frame().await.is_none(), "nothing after the error");
    drop(tx);
}

#[tokio::test]
async fn a_client_body_that_keeps_moving_is_never_cut_off() {
    let (tx, inner) = script();
    let state = Arc::new(BodyState::default());
    // A limit ten times the gap between pieces, so that a busy machine does not stretch a gap
    // past it; twelve pieces take longer than the limit together.
    let limit = Duration::from_secs(1);
    let mut body = ClientBody::new(inner, state.clone(), limit);
    let feeder = tokio::spawn(async move {
        for _ in 0..12 {
            tokio::time::sleep(limit / 10).await;
            tx.send(Ok(Bytes::from_static(b"x"))).unwrap();
        }
    });
    let started = std::time::Instant::now();
    let mut got = 0;
    while let Some(frame) = body.frame().await {
        frame.unwrap();
        got += 1;
    }
    assert_eq!(got, 12);
    assert!(
        started.elapsed() > limit,
        "the pieces came faster than planned"
    );
    assert_eq!(state.fault(), None);
    feeder.await.unwrap();
}

#[tokio::test]
async fn a_client_body_the_client_breaks_is_its_fault() {
    let (tx, inner) = script();
    let state = Arc::new(BodyState::default());
    let mut body = ClientBody::new(inner, state.clone(), LIMIT);
    tx.send(Err(std::io::Error::other("bad chunk size")))
        .unwrap();
    let error = body.frame().await.unwrap().unwrap_err();
    assert!(matches!(
        error.downcast_ref::<ClientBodyError>(),
        Some(ClientBodyError::Broken(_))
    ));
    assert_eq!(state.fault(), Some(ClientFault::Broken));
    assert_eq!(ClientFault::Broken.status(), StatusCode::BAD_REQUEST);
}

#[tokio::test]
async fn a_client_body_waits_for_the_client_only_while_asked() {
    let (tx, inner) = script();
    let state = Arc::new(BodyState::default());
    let mut body = ClientBody::new(inner, state.clone(), LIMIT);
    // Asked and nothing there: waiting for the client.
    let waker = futures_util::task::noop_waker();
    let mut cx = Context::from_waker(&waker);
    assert!(Pin::new(&mut body).poll_frame(&mut cx).is_pending());
    assert!(state.activity.waits_for_client());
    // Not asked for longer than the limit (the upstream was slow to read): no fault when asked
    // again and the data is there.
    tx.send(Ok(Bytes::from_static(b"late"))).unwrap();
    tokio::time::sleep(LIMIT * 2).await;
    let frame = body.frame().await.unwrap().unwrap();
    assert_eq!(frame.into_data().unwrap(), "late");
    assert_eq!(state.fault(), None);
}

#[tokio::test]
async fn an_upstream_body_that_stalls_is_cut_off() {
    let (tx, inner) = script();
    let mut body = UpstreamBody::new(inner, LIMIT, Arc::from("10.0.0.5:80"));
    tx.send(Ok(Bytes::from_static(b"head of the body")))
        .unwrap();
    assert!(body.frame().await.unwrap().is_ok());
    let error = body.frame().await.unwrap().unwrap_err();
    let stalled = error.downcast_ref::<UpstreamBodyStalled>().unwrap();
    assert_eq!(&*stalled.server, "10.0.0.5:80");
    assert_eq!(stalled.after, LIMIT);
    assert!(body.frame().await.is_none());
    drop(tx);
}

#[test]
fn usual_hosts_take_the_fast_path() {
    for host in [
        "shop.example",
        "shop.example:8080",
        "127.0.0.1:18201",
        "a-b.c1",
        "localhost:",
    ] {
        assert!(plainly_canonical_host(host.as_bytes()), "{host}");
    }
    for host in [
        "", ".a", "a.", "a..b", "a.:80", "a:123456", "a:8x", "[::1]:80", "a_b", "a%41",
    ] {
        assert!(!plainly_canonical_host(host.as_bytes()), "{host}");
    }
}
