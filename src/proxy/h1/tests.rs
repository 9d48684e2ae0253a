use std::sync::Mutex;
use std::time::Duration;

use http_body_util::BodyExt;
use proptest::prelude::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

use super::*;
use crate::proxy::ticks;

fn head_of<B>(request: &Request<B>) -> String {
    let mut out = Vec::new();
    encode_head(request, &mut out);
    String::from_utf8(out).unwrap()
}

#[test]
fn a_get_head_is_written_as_is_with_lower_case_names() {
    let request = Request::get("/a/b?c=1")
        .header("Host", "example.test")
        .header("X-Real-IP", "10.0.0.7")
        .body(())
        .unwrap();
    assert_eq!(
        head_of(&request),
        "GET /a/b?c=1 HTTP/1.1\r\nhost: example.test\r\nx-real-ip: 10.0.0.7\r\n\r\n"
    );
}

#[test]
fn a_bodyless_post_says_its_length_and_a_target_in_absolute_form_stays() {
    let post = Request::post("/x").body(()).unwrap();
    assert_eq!(
        head_of(&post),
        "POST /x HTTP/1.1\r\ncontent-length: 0\r\n\r\n"
    );
    let with_length = Request::post("/x")
        .header("content-length", "0")
        .body(())
        .unwrap();
    assert_eq!(
        head_of(&with_length),
        "POST /x HTTP/1.1\r\ncontent-length: 0\r\n\r\n"
    );
    let absolute = Request::get("http://h.test/p?q").body(()).unwrap();
    assert_eq!(head_of(&absolute), "GET http://h.test/p?q HTTP/1.1\r\n\r\n");
    let star = Request::options("*").body(()).unwrap();
    assert!(head_of(&star).starts_with("OPTIONS * HTTP/1.1\r\n"));
}

fn parse(text: &str, method: &Method) -> Result<Option<Head>, H1Error> {
    let mut buf = BytesMut::from(text.as_bytes());
    parse_head(&mut buf, method)
}

#[test]
fn heads_parse_with_their_framing() {
    let head = parse(
        "HTTP/1.1 200 OK\r\nContent-Length: 5\r\nX-A: b\r\n\r\nhello",
        &Method::GET,
    )
    .unwrap()
    .unwrap();
    assert_eq!(head.status, StatusCode::OK);
    assert!(matches!(head.framing, Framing::Length(5)));
    assert!(head.keep_alive);
    assert_eq!(head.headers["x-a"], "b");

    // Incomplete: more is needed.
    assert!(parse("HTTP/1.1 200 OK\r\nContent-Len", &Method::GET)
        .unwrap()
        .is_none());

    // 1xx are skipped; 101 was not asked for.
    let head = parse(
        "HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 204 No Content\r\n\r\n",
        &Method::GET,
    )
    .unwrap()
    .unwrap();
    assert_eq!(head.status, StatusCode::NO_CONTENT);
    assert!(head.framing.is_done());
    assert!(parse("HTTP/1.1 101 Switching Protocols\r\n\r\n", &Method::GET).is_err());

    // HEAD: no body whatever Content-Length says.
    let head = parse(
        "HTTP/1.1 200 OK\r\nContent-Length: 99\r\n\r\n",
        &Method::HEAD,
    )
    .unwrap()
    .unwrap();
    assert!(head.framing.is_done());

    // Chunked; chunked with Content-Length is read as chunked but the connection closes.
    let head = parse(
        "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n",
        &Method::GET,
    )
    .unwrap()
    .unwrap();
    assert!(matches!(head.framing, Framing::Chunked(_)) && head.keep_alive);
    let head = parse(
        "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n",
        &Method::GET,
    )
    .unwrap()
    .unwrap();
    assert!(matches!(head.framing, Framing::Chunked(_)) && !head.keep_alive);

    // Neither: to the close.
    let head = parse("HTTP/1.1 200 OK\r\n\r\n", &Method::GET)
        .unwrap()
        .unwrap();
    assert!(matches!(head.framing, Framing::Close) && !head.keep_alive);
}

#[test]
fn keep_alive_follows_version_and_connection() {
    let ka = |text: &str| parse(text, &Method::GET).unwrap().unwrap().keep_alive;
    assert!(!ka(
        "HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    ));
    assert!(!ka(
        "HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: x, Close\r\n\r\n"
    ));
    assert!(!ka("HTTP/1.0 200 OK\r\nContent-Length: 0\r\n\r\n"));
    assert!(ka(
        "HTTP/1.0 200 OK\r\nContent-Length: 0\r\nConnection: keep-alive\r\n\r\n"
    ));
    assert!(ka("HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"));
}

#[test]
fn bad_lengths_and_garbage_are_errors_naming_what() {
    for text in [
        "HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\n",
        "HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n",
        "HTTP/1.1 200 OK\r\nContent-Length: 1e3\r\n\r\n",
        "HTTP/1.1 200 OK\r\nContent-Length: 99999999999999999999\r\n\r\n",
    ] {
        let error = parse(text, &Method::GET).unwrap_err();
        assert!(error.to_string().contains("Content-Length"), "{error}");
    }
    // The same length twice is one length.
    let head = parse(
        "HTTP/1.1 200 OK\r\nContent-Length: 5, 5\r\nContent-Length: 5\r\n\r\n",
        &Method::GET,
    )
    .unwrap()
    .unwrap();
    assert!(matches!(head.framing, Framing::Length(5)));
    assert!(matches!(
        parse("SSH-2.0-OpenSSH\r\n\r\n", &Method::GET),
        Err(H1Error::Parse(_))
    ));
}

/// Feeds `input` to a chunked decoder in pieces of `sizes` (cycled), collecting the data, until
/// it ends or fails; also says whether it ended.
fn decode(input: &[u8], sizes: &[usize]) -> Result<(Vec<u8>, bool, usize), H1Error> {
    let mut state = Chunked::Size(SizeLine::default());
    let mut buf = BytesMut::new();
    let mut out = Vec::new();
    let mut fed = 0;
    let mut i = 0;
    loop {
        match state.step(&mut buf)? {
            Step::Data(d) => out.extend_from_slice(&d),
            Step::End => return Ok((out, true, input.len() - fed + buf.len())),
            Step::NeedMore => {
                if fed == input.len() {
                    return Ok((out, false, 0));
                }
                let n = sizes[i % sizes.len()].max(1).min(input.len() - fed);
                i += 1;
                buf.extend_from_slice(&input[fed..fed + n]);
                fed += n;
            }
        }
    }
}

#[test]
fn chunked_bodies_decode_with_extensions_and_trailers() {
    let body = b"5\r\nhello\r\n6;name=value\r\n world\r\n0\r\nX-Sum: 1\r\n\r\n";
    let (data, ended, left) = decode(body, &[1]).unwrap();
    assert_eq!(data, b"hello world");
    assert!(ended);
    assert_eq!(left, 0);
    // Bytes past the end are left for the caller (the connection is then not reused).
    let (_, ended, left) = decode(b"0\r\n\r\nXYZ", &[100]).unwrap();
    assert!(ended);
    assert_eq!(left, 3);
    for bad in [
        &b"\r\n"[..],
        b"g\r\n",
        b"5\nhello",
        b"5\r\nhelloXX",
        b"1000000000000000\r\n",
        b"0\r\nbad\n",
    ] {
        assert!(
            decode(bad, &[100]).is_err(),
            "{:?}",
            String::from_utf8_lossy(bad)
        );
    }
}

proptest! {
    #[test]
    fn chunked_decoding_gives_the_data_back_however_it_arrives(
        chunks in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 1..40), 0..8),
        ext in any::<bool>(),
        trailer in any::<bool>(),
        sizes in proptest::collection::vec(1usize..16, 1..6),
    ) {
        let mut wire = Vec::new();
        for c in &chunks {
            wire.extend_from_slice(format!("{:x}", c.len()).as_bytes());
            if ext { wire.extend_from_slice(b" ;a=b"); }
            wire.extend_from_slice(b"\r\n");
            wire.extend_from_slice(c);
            wire.extend_from_slice(b"\r\n");
        }
        wire.extend_from_slice(b"0\r\n");
        if trailer { wire.extend_from_slice(b"X-T: 1\r\n"); }
        wire.extend_from_slice(b"\r\n");
        let (data, ended, left) = decode(&wire, &sizes).unwrap();
        prop_assert!(ended);
        prop_assert_eq!(left, 0);
        prop_assert_eq!(data, chunks.concat());
    }

    #[test]
    fn no_input_makes_the_decoder_or_the_head_parser_panic(
        bytes in proptest::collection::vec(any::<u8>(), 0..200),
        sizes in proptest::collection::vec(1usize..16, 1..4),
    ) {
        let _ = decode(&bytes, &sizes);
        let mut buf = BytesMut::from(&b"HTTP/1.1 200 OK\r\n"[..]);
        buf.extend_from_slice(&bytes);
        let _ = parse_head(&mut buf, &Method::GET);
    }
}

/// Where checked-in connections land in these tests.
#[derive(Default)]
struct Shelf(Mutex<Vec<Conn>>);

impl Home for Shelf {
    fn check_in(&self, conn: Conn) {
        self.0.lock().unwrap().push(conn);
    }
}

impl Shelf {
    fn take(&self) -> Option<Conn> {
        self.0.lock().unwrap().pop()
    }
}

/// A server on loopback that answers each request it reads (up to the blank line) with the
/// next of `answers`, written in pieces of 7 bytes; after the last it closes.
async fn server(answers: Vec<&'static str>) -> std::net::SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let (mut socket, _) = listener.accept().await.unwrap();
        let mut seen = Vec::new();
        for answer in answers {
            while !seen.windows(4).any(|w| w == b"\r\n\r\n") {
                let mut b = [0u8; 1024];
                let n = socket.read(&mut b).await.unwrap();
                if n == 0 {
                    return;
                }
                seen.extend_from_slice(&b[..n]);
            }
            let end = seen.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
            seen.drain(..end);
            for piece in answer.as_bytes().chunks(7) {
                socket.write_all(piece).await.unwrap();
                socket.flush().await.unwrap();
                tokio::task::yield_now().await;
            }
        }
    });
    addr
}

async fn connect(addr: std::net::SocketAddr) -> Conn {
    Conn::new(TcpStream::connect(addr).await.unwrap())
}

fn get() -> Request<()> {
    Request::get("/").body(()).unwrap()
}

async fn text(response: Response<ResponseBody>) -> String {
    let bytes = response.into_body().collect().await.unwrap().to_bytes();
    String::from_utf8_lossy(&bytes).into_owned()
}

const SECOND: Duration = Duration::from_secs(5);

/// A response timeout's clock with its sweeper running, as an upstream table keeps one.
fn clock(timeout: Duration) -> Arc<TickClock> {
    let clock = Arc::new(TickClock::new(timeout));
    tokio::spawn(ticks::sweep(Arc::downgrade(&clock), |c| c, |_| false));
    clock
}

#[tokio::test]
async fn a_connection_goes_home_after_each_body_and_serves_the_next_request() {
    let addr = server(vec![
        "HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nfirst",
        "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nsec\r\n3\r\nond\r\n0\r\n\r\n",
        "HTTP/1.1 204 No Content\r\n\r\n",
    ])
    .await;
    let shelf = Arc::new(Shelf::default());
    let conn = connect(addr).await;
    let response = conn
        .exchange(&get(), &clock(SECOND), shelf.clone())
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert!(shelf.take().is_none(), "home only at the body's end");
    assert_eq!(text(response).await, "first");

    let mut conn = shelf.take().expect("checked in after the body");
    assert!(conn.is_reusable());
    let response = conn
        .exchange(&get(), &clock(SECOND), shelf.clone())
        .await
        .unwrap();
    assert_eq!(text(response).await, "second");

    let conn = shelf.take().expect("checked in after the chunked body");
    let response = conn
        .exchange(&get(), &clock(SECOND), shelf.clone())
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::NO_CONTENT);
    // An empty body: home at once, before anyone reads it.
    let mut conn = shelf.take().expect("checked in at once");
    drop(response);
    // The server closed after its last answer: found before use.
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(!conn.is_reusable());
}

#[tokio::test]
async fn closing_answers_and_unread_bodies_do_not_go_home() {
    let addr = server(vec![
        "HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok",
    ])
    .await;
    let shelf = Arc::new(Shelf::default());
    let response = connect(addr)
        .await
        .exchange(&get(), &clock(SECOND), shelf.clone())
        .await
        .unwrap();
    assert_eq!(text(response).await, "ok");
    assert!(shelf.take().is_none());

    let addr = server(vec!["HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nshort"]).await;
    let response = connect(addr)
        .await
        .exchange(&get(), &clock(SECOND), shelf.clone())
        .await
        .unwrap();
    let error = response.into_body().collect().await.unwrap_err();
    assert!(matches!(error, H1Error::ClosedInBody), "{error}");
    assert!(shelf.take().is_none());

    let addr = server(vec!["HTTP/1.1 200 OK\r\n\r\nto the close"]).await;
    let response = connect(addr)
        .await
        .exchange(&get(), &clock(SECOND), shelf.clone())
        .await
        .unwrap();
    assert_eq!(text(response).await, "to the close");
    assert!(shelf.take().is_none());
}

#[tokio::test]
async fn a_connection_closed_before_any_answer_died_and_a_silent_one_times_out() {
    let addr = server(vec![]).await;
    let error = connect(addr)
        .await
        .exchange(&get(), &clock(SECOND), Arc::new(Shelf::default()))
        .await
        .unwrap_err();
    assert!(error.connection_died(), "{error}");

    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let held = tokio::spawn(async move { listener.accept().await });
    let error = connect(addr)
        .await
        .exchange(
            &get(),
            &clock(Duration::from_millis(100)),
            Arc::new(Shelf::default()),
        )
        .await
        .unwrap_err();
    assert!(matches!(error, H1Error::ResponseTimeout), "{error}");
    assert!(!error.connection_died());
    held.abort();
}
