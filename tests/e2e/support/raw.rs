//! HTTP/1.1 at the byte level, for the tests of the edge: a client that writes exactly the bytes
//! a test gives it and reads the raw answer, and upstreams that answer with exactly the bytes a
//! test gives them. No HTTP library between the test and graygate, in either direction, so that
//! malformed and unusual messages reach graygate as written.
//!
//! ```ignore
//! let upstream = RawUpstream::answering(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok").await;
//! let mut conn = RawConn::open(gg.addr).await;
//! conn.send(b"GET / HTTP/1.1\r\nHost: example.com\r\n\r\n").await;
//! let response = conn.response().await.expect("an answer");
//! ```

use super::eventually::patient;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

/// How long a raw read may wait for bytes before the test fails (before patience).
const READ_DEADLINE: Duration = Duration::from_secs(10);

/// One response as it came over the wire.
#[derive(Debug, Clone)]
pub struct RawResponse {
    /// The status code of the status line.
    pub status: u16,
    /// Header lines in order, names lower-cased.
    pub headers: Vec<(String, String)>,
    /// The body, de-chunked when it was chunked.
    pub body: Vec<u8>,
}

impl RawResponse {
    /// The first value of header `name` (lower case), if any.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    /// The body as text.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// What a parse of the bytes so far found.
enum Parsed<T> {
    /// A whole message, and how many bytes it took.
    Done(T, usize),
    /// Not enough bytes yet.
    Partial,
}

/// The head of a message.
struct Head {
    /// The request or status line.
    first: String,
    /// Header lines in order, names lower-cased.
    headers: Vec<(String, String)>,
    /// Its length in bytes, the blank line included.
    len: usize,
}

/// The head at the start of `buf`, once its blank line has arrived.
fn parse_head(buf: &[u8]) -> Option<Head> {
    let end = buf.windows(4).position(|w| w == b"\r\n\r\n")? + 4;
    let text = String::from_utf8_lossy(&buf[..end - 4]).into_owned();
    let mut lines = text.split("\r\n");
    let first = lines.next().unwrap_or_default().to_string();
    let headers = lines
        .filter_map(|line| line.split_once(':'))
        .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    Some(Head {
        first,
        headers,
        len: end,
    })
}

/// A body after its head: by `Content-Length`, by chunks (`chunked`), or none (`None` length
/// and not chunked: an empty body for a request, "until the close" for a response, which the
/// caller handles). `Partial` until it is all there.
fn parse_body(buf: &[u8], headers: &[(String, String)]) -> Parsed<Vec<u8>> {
    let chunked = headers
        .iter()
        .any(|(n, v)| n == "transfer-encoding" && v.to_ascii_lowercase().contains("chunked"));
    if chunked {
        let mut body = Vec::new();
        let mut at = 0;
        loop {
            let Some(line_end) = buf[at..].windows(2).position(|w| w == b"\r\n") else {
                return Parsed::Partial;
            };
            let size_text = String::from_utf8_lossy(&buf[at..at + line_end]).into_owned();
            let size_text = size_text.split(';').next().unwrap_or_default().trim();
            let Ok(size) = usize::from_str_radix(size_text, 16) else {
                panic!(
                    "bad chunk size {size_text:?} in {:?}",
                    String::from_utf8_lossy(buf)
                );
            };
            at += line_end + 2;
            if size == 0 {
                // Trailers (none expected) and the final blank line.
                let Some(end) = buf[at..].windows(2).position(|w| w == b"\r\n") else {
                    return Parsed::Partial;
                };
                return Parsed::Done(body, at + end + 2);
            }
            if buf.len() < at + size + 2 {
                return Parsed::Partial;
            }
            body.extend_from_slice(&buf[at..at + size]);
            at += size + 2;
        }
    }
    let length = headers
        .iter()
        .find(|(n, _)| n == "content-length")
        .map(|(_, v)| v.parse::<usize>().expect("a numeric Content-Length"))
        .unwrap_or(0);
    if buf.len() < length {
        return Parsed::Partial;
    }
    Parsed::Done(buf[..length].to_vec(), length)
}

/// A response at the start of `buf`.
fn parse_response(buf: &[u8]) -> Parsed<RawResponse> {
    let Some(Head {
        first,
        headers,
        len: head_len,
    }) = parse_head(buf)
    else {
        return Parsed::Partial;
    };
    let status = first
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("not a status line: {first:?}"));
    match parse_body(&buf[head_len..], &headers) {
        Parsed::Done(body, len) => Parsed::Done(
            RawResponse {
                status,
                headers,
                body,
            },
            head_len + len,
        ),
        Parsed::Partial => Parsed::Partial,
    }
}

/// A client connection that writes raw bytes and reads raw answers.
pub struct RawConn {
    stream: TcpStream,
    /// Bytes read and not yet taken by a response.
    buf: Vec<u8>,
    /// True once the other side closed.
    eof: bool,
}

impl RawConn {
    /// Connects to `addr`.
    pub async fn open(addr: SocketAddr) -> RawConn {
        let stream = TcpStream::connect(addr)
            .await
            .unwrap_or_else(|e| panic!("connect to {addr}: {e}"));
        RawConn {
            stream,
            buf: Vec::new(),
            eof: false,
        }
    }

    /// Writes `bytes` as they are.
    pub async fn send(&mut self, bytes: &[u8]) {
        self.stream
            .write_all(bytes)
            .await
            .expect("write to graygate");
    }

    /// Reads more bytes; false at the end of the stream (or a reset, which ends it too).
    async fn fill(&mut self) -> bool {
        if self.eof {
            return false;
        }
        let mut chunk = [0u8; 16 * 1024];
        let read = tokio::time::timeout(patient(READ_DEADLINE), self.stream.read(&mut chunk))
            .await
            .unwrap_or_else(|_| {
                panic!(
                    "no bytes from graygate for {:?}; so far: {:?}",
                    patient(READ_DEADLINE),
                    String::from_utf8_lossy(&self.buf)
                )
            });
        match read {
            Ok(0) | Err(_) => {
                self.eof = true;
                false
            }
            Ok(n) => {
                self.buf.extend_from_slice(&chunk[..n]);
                true
            }
        }
    }

    /// The next whole response; `None` when the connection ended before one was complete (what
    /// arrived of it stays in [`RawConn::rest`]).
    pub async fn response(&mut self) -> Option<RawResponse> {
        loop {
            if let Parsed::Done(response, len) = parse_response(&self.buf) {
                self.buf.drain(..len);
                return Some(response);
            }
            if !self.fill().await {
                return None;
            }
        }
    }

    /// Reads until the other side closes the connection (failing after the read deadline);
    /// what arrived and was not taken by a response.
    pub async fn until_closed(&mut self) -> String {
        while self.fill().await {}
        self.rest()
    }

    /// Bytes read and not taken by a response, as text.
    pub fn rest(&self) -> String {
        String::from_utf8_lossy(&self.buf).into_owned()
    }
}

/// Sends `request` on a new connection and returns the one response it gets.
pub async fn exchange(addr: SocketAddr, request: &[u8]) -> RawResponse {
    let mut conn = RawConn::open(addr).await;
    conn.send(request).await;
    match conn.response().await {
        Some(response) => response,
        None => panic!(
            "no whole response to {:?}; got {:?}",
            String::from_utf8_lossy(request),
            conn.rest()
        ),
    }
}

/// A request as an upstream received it.
#[derive(Debug, Clone)]
pub struct RawRequest {
    /// The head as it arrived: request line and header lines, without the blank line.
    pub head: String,
    /// The body, de-chunked.
    pub body: Vec<u8>,
}

impl RawRequest {
    /// The request line (`GET /api HTTP/1.1`).
    pub fn line(&self) -> &str {
        self.head.lines().next().unwrap_or_default()
    }

    /// The values of header `name` (any case), in order.
    pub fn header_values(&self, name: &str) -> Vec<&str> {
        self.head
            .lines()
            .skip(1)
            .filter_map(|l| l.split_once(':'))
            .filter(|(n, _)| n.trim().eq_ignore_ascii_case(name))
            .map(|(_, v)| v.trim())
            .collect()
    }
}

/// Reads one request from an upstream's connection; `None` when the connection ends first.
pub async fn read_request(stream: &mut TcpStream, buf: &mut Vec<u8>) -> Option<RawRequest> {
    loop {
        if let Some(head) = parse_head(buf) {
            if let Parsed::Done(body, len) = parse_body(&buf[head.len..], &head.headers) {
                let text = String::from_utf8_lossy(&buf[..head.len - 4]).into_owned();
                buf.drain(..head.len + len);
                return Some(RawRequest { head: text, body });
            }
        }
        let mut chunk = [0u8; 16 * 1024];
        match stream.read(&mut chunk).await {
            Ok(0) | Err(_) => return None,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
}

/// A raw upstream on 127.0.0.1 port 0: each connection it accepts is handed to a handler;
/// stopped (with its connections) in `Drop`.
pub struct RawUpstream {
    addr: SocketAddr,
    /// Requests read by handlers that use [`read_request`] through [`RawUpstream::serve`].
    requests: Arc<AtomicUsize>,
    task: JoinHandle<()>,
}

impl Drop for RawUpstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl RawUpstream {
    /// Serves every request of every connection with `answer(request)`: the bytes to write back
    /// (`None`: write nothing and hold the connection open, as a stalled server does).
    pub async fn serve<F>(answer: F) -> RawUpstream
    where
        F: Fn(&RawRequest) -> Option<Vec<u8>> + Send + Sync + 'static,
    {
        let answer = Arc::new(answer);
        let requests = Arc::new(AtomicUsize::new(0));
        let counted = requests.clone();
        RawUpstream::start_counting(requests, move |mut stream| {
            let answer = answer.clone();
            let counted = counted.clone();
            async move {
                let mut buf = Vec::new();
                while let Some(request) = read_request(&mut stream, &mut buf).await {
                    counted.fetch_add(1, Ordering::SeqCst);
                    match answer(&request) {
                        Some(bytes) => {
                            if stream.write_all(&bytes).await.is_err() {
                                return;
                            }
                        }
                        None => {
                            // Stalled: keep the connection, send nothing, until the test ends.
                            let mut sink = [0u8; 1024];
                            while matches!(stream.read(&mut sink).await, Ok(n) if n > 0) {}
                            return;
                        }
                    }
                }
            }
        })
        .await
    }

    /// Answers every request with `bytes` as they are (then keeps reading the connection, so
    /// that bytes which leave the response unfinished leave it hanging).
    pub async fn answering(bytes: &'static [u8]) -> RawUpstream {
        RawUpstream::serve(move |_| Some(bytes.to_vec())).await
    }

    /// Writes `bytes` as soon as a request head has arrived, without waiting for its body, then
    /// reads the connection until it closes (one answer per connection).
    pub async fn answering_the_head(bytes: &'static [u8]) -> RawUpstream {
        let requests = Arc::new(AtomicUsize::new(0));
        let counted = requests.clone();
        RawUpstream::start_counting(requests, move |mut stream| {
            let counted = counted.clone();
            async move {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 16 * 1024];
                while parse_head(&buf).is_none() {
                    match stream.read(&mut chunk).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => buf.extend_from_slice(&chunk[..n]),
                    }
                }
                counted.fetch_add(1, Ordering::SeqCst);
                if stream.write_all(bytes).await.is_err() {
                    return;
                }
                while matches!(stream.read(&mut chunk).await, Ok(n) if n > 0) {}
            }
        })
        .await
    }

    /// Answers every request `200` with the request it received as the body: its head, a blank
    /// line, its body. What the upstream saw, for the test to read ([`seen`]).
    pub async fn recording() -> RawUpstream {
        RawUpstream::serve(|request| {
            let mut body = request.head.clone().into_bytes();
            body.extend_from_slice(b"\r\n\r\n");
            body.extend_from_slice(&request.body);
            let mut answer =
                format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n", body.len()).into_bytes();
            answer.extend_from_slice(&body);
            Some(answer)
        })
        .await
    }

    /// Hands each accepted connection to `handle` (in a task of its own).
    async fn start_counting<H, Fut>(requests: Arc<AtomicUsize>, handle: H) -> RawUpstream
    where
        H: Fn(TcpStream) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind a raw upstream");
        let addr = listener.local_addr().expect("a bound address");
        let task = tokio::spawn(async move {
            let mut connections = tokio::task::JoinSet::new();
            while let Ok((stream, _)) = listener.accept().await {
                connections.spawn(handle(stream));
            }
        });
        RawUpstream {
            addr,
            requests,
            task,
        }
    }

    /// Requests it has read so far.
    pub fn requests(&self) -> usize {
        self.requests.load(Ordering::SeqCst)
    }
}

impl super::gateway::Address for &RawUpstream {
    fn address(&self) -> SocketAddr {
        self.addr
    }
}

/// The request a [`RawUpstream::recording`] upstream received, read back from its answer.
pub fn seen(response: &RawResponse) -> RawRequest {
    let text = response.text();
    let (head, body) = text
        .split_once("\r\n\r\n")
        .unwrap_or_else(|| panic!("not a recorded request: {text:?}"));
    RawRequest {
        head: head.to_string(),
        body: body.as_bytes().to_vec(),
    }
}
