//! graygate's own HTTP/1.1 client for the request path's common case: a request without a body
//! (nearly every `GET`) to a plain-TCP HTTP/1.1 upstream.
//!
//! Why our own: hyper's client connection is a task of its own that the request's task talks to
//! through channels, and its response body comes back through another channel; a pooled
//! connection is handed back by yet another spawned task once the body is read. Per request
//! that is several cross-task wake-ups and a spawn, and the profile of issue 15 showed that
//! machinery, not the policy, is where a proxied request's time goes. nginx, Pingora and sozu
//! own their HTTP/1 hot path for the same reason. Here the client's own task does it all:
//!
//! - **One write, one read.** The request head is encoded into the connection's reused buffer
//!   and written at once; the response head is parsed with `httparse` from the connection's read
//!   buffer, and its header values are slices of that buffer (no copy per value).
//! - **The body is read by whoever polls it** ([`ResponseBody`]): the client's connection task
//!   reads it straight from the upstream socket, by `Content-Length`, chunked, or to the close.
//!   The bytes that came with the head are the first frame without another read.
//! - **Back to the pool on the spot.** When the body ends (at once, for an empty one) the
//!   connection goes back to its pool ([`Home::check_in`]) in the same call: no task, no
//!   wake-up. A body dropped before its end closes the connection, as does `Connection: close`,
//!   an HTTP/1.0 answer without keep-alive, a body framed by the close, or bytes past the end.
//! - **Stale connections** are found before use without a system call in the usual case: the
//!   event loop has recorded whether an idle socket became readable (the server closed it, or
//!   sent something unasked), and only then is it read to tell ([`Conn::is_reusable`]).
//!
//! Everything else (a request with a body, which must stream while the response may already
//! come; an upgrade; TLS; HTTP/2) stays on hyper's client (`super::upstream`). Response trailers
//! of a chunked body are read and dropped (hyper's server would pass them on only to a client
//! that asked for them with `TE: trailers`).

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::{Buf, Bytes, BytesMut};
use http::header::{CONNECTION, CONTENT_LENGTH, TRANSFER_ENCODING};
use http::{HeaderMap, HeaderName, HeaderValue, Method, Request, Response, StatusCode, Version};
use http_body::{Body, Frame, SizeHint};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

use super::ticks::{TickClock, Within};

/// Most headers a response may have (hyper's default as well).
const MAX_HEADERS: usize = 100;
/// Largest response head (status line and headers) accepted.
const MAX_HEAD: usize = 64 * 1024;
/// Largest chunk-size line (size, extensions) and trailer section of a chunked body.
const MAX_CHUNK_LINE: usize = 4096;
const MAX_TRAILERS: usize = 16 * 1024;
/// Read buffer room made before each read.
const READ_ROOM: usize = 8 * 1024;
/// Largest piece of a body read at once.
const MAX_READ: usize = 64 * 1024;

/// Why an exchange on our own client failed.
#[derive(Debug, thiserror::Error)]
pub enum H1Error {
    /// The connection closed before any byte of the response came back.
    #[error("connection closed before the response")]
    ClosedBeforeResponse,
    /// The connection closed in the middle of the response head.
    #[error("connection closed in the middle of the response headers")]
    ClosedInHead,
    /// The connection closed before the end of the response body.
    #[error("connection closed before the end of the response body")]
    ClosedInBody,
    /// Writing the request head failed: the server did not get all of it.
    #[error("writing the request failed: {0}")]
    Write(io::Error),
    /// No response head came within the response timeout.
    #[error("no response headers in time")]
    ResponseTimeout,
    /// A read on the connection failed.
    #[error("{0}")]
    Io(#[from] io::Error),
    /// The response is not HTTP/1.x as the parser knows it.
    #[error("invalid response: {0}")]
    Parse(httparse::Error),
    /// The response's head was larger than [`MAX_HEAD`].
    #[error("response headers larger than {MAX_HEAD} bytes")]
    HeadTooLarge,
    /// The response broke a framing rule (named).
    #[error("invalid response: {0}")]
    Invalid(&'static str),
}

impl H1Error {
    /// True when the connection died before the response head: the server may not have seen
    /// the request at all (a kept-alive connection it closed), so an idempotent request may go
    /// again.
    pub fn connection_died(&self) -> bool {
        match self {
            H1Error::ClosedBeforeResponse | H1Error::ClosedInHead => true,
            H1Error::Io(e) => super::retry::io_died(e),
            _ => false,
        }
    }
}

/// Where a connection goes back when its exchange is over (the server's pool).
pub trait Home: Send + Sync {
    /// Takes `conn` back for the next request.
    fn check_in(&self, conn: Conn);
}

/// One HTTP/1.1 connection to an upstream server, with its buffers.
pub struct Conn {
    stream: TcpStream,
    /// Bytes read and not yet used.
    read: BytesMut,
    /// The request head being written; kept to be reused by the next request.
    write: Vec<u8>,
}

impl std::fmt::Debug for Conn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Conn")
            .field("peer", &self.stream.peer_addr().ok())
            .finish()
    }
}

impl Conn {
    /// A connection over an established `stream`.
    pub fn new(stream: TcpStream) -> Conn {
        Conn {
            stream,
            read: BytesMut::new(),
            write: Vec::new(),
        }
    }

    /// False when the idle connection must not be used again: the server closed it, sent bytes
    /// nobody asked for, or it failed. Makes a system call only when the event loop saw the
    /// socket become readable since it was last drained.
    pub fn is_reusable(&mut self) -> bool {
        if !self.read.is_empty() {
            return false;
        }
        let mut cx = Context::from_waker(std::task::Waker::noop());
        match self.stream.poll_read_ready(&mut cx) {
            Poll::Pending => true,
            Poll::Ready(Err(_)) => false,
            Poll::Ready(Ok(())) => {
                let mut probe = [0u8; 1];
                match self.stream.try_read(&mut probe) {
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => true,
                    // Closed (0), unasked bytes, or an error.
                    _ => false,
                }
            }
        }
    }

    /// Sends `request`'s head (its body must be empty) and reads the response head, within
    /// `clock`'s timeout (the response timeout) for the response to start; the response's body
    /// reads on from this connection, which it hands to `home` at its end when it can be used
    /// again.
    pub async fn exchange<B>(
        mut self,
        request: &Request<B>,
        clock: &TickClock,
        home: Arc<dyn Home>,
    ) -> Result<Response<ResponseBody>, H1Error> {
        encode_head(request, &mut self.write);
        let written = self.stream.write_all(&self.write).await;
        self.write.clear();
        if self.write.capacity() > 2 * READ_ROOM {
            self.write = Vec::new();
        }
        written.map_err(H1Error::Write)?;
        let head = match Within::new(clock, self.read_head(request.method())).await {
            Some(head) => head?,
            None => return Err(H1Error::ResponseTimeout),
        };
        Ok(self.respond(head, home))
    }

    /// Reads until a final (non-1xx) response head is complete.
    async fn read_head(&mut self, method: &Method) -> Result<Head, H1Error> {
        let mut got_any = false;
        loop {
            if !self.read.is_empty() {
                got_any = true;
                if let Some(head) = parse_head(&mut self.read, method)? {
                    return Ok(head);
                }
                if self.read.len() >= MAX_HEAD {
                    return Err(H1Error::HeadTooLarge);
                }
            }
            let n = self.read_more(READ_ROOM).await?;
            if n == 0 {
                return Err(if got_any || !self.read.is_empty() {
                    H1Error::ClosedInHead
                } else {
                    H1Error::ClosedBeforeResponse
                });
            }
        }
    }

    async fn read_more(&mut self, room: usize) -> io::Result<usize> {
        std::future::poll_fn(|cx| self.poll_read_more(cx, room)).await
    }

    /// One read of at most `room` more bytes into the read buffer.
    fn poll_read_more(&mut self, cx: &mut Context<'_>, room: usize) -> Poll<io::Result<usize>> {
        if self.read.capacity() - self.read.len() < room {
            self.read.reserve(room);
        }
        let mut limited = bytes::BufMut::limit(&mut self.read, room);
        tokio_util::io::poll_read_buf(Pin::new(&mut self.stream), cx, &mut limited)
    }

    /// One read of more body bytes, for a body whose end the server must say (by its length or
    /// its last chunk): the connection closing first is [`H1Error::ClosedInBody`].
    fn poll_body_more(&mut self, cx: &mut Context<'_>, room: usize) -> Poll<Result<(), H1Error>> {
        self.poll_read_more(cx, room).map(|read| match read {
            Ok(0) => Err(H1Error::ClosedInBody),
            Ok(_) => Ok(()),
            Err(e) => Err(H1Error::Io(e)),
        })
    }

    /// The response of `head`, its body reading on from this connection.
    fn respond(self, head: Head, home: Arc<dyn Home>) -> Response<ResponseBody> {
        let Head {
            status,
            version,
            headers,
            framing,
            keep_alive,
        } = head;
        let mut body = ResponseBody {
            conn: Some(self),
            home: Some(home),
            framing,
            keep_alive,
        };
        if body.framing.is_done() {
            body.finish();
        }
        let mut response = Response::new(body);
        *response.status_mut() = status;
        *response.version_mut() = version;
        *response.headers_mut() = headers;
        response
    }
}

/// Writes the head of `request` (method, target, headers) as HTTP/1.1. Header names go out in
/// lower case, as hyper's client writes them. A request without a body whose method gives a
/// body a meaning (`POST`, `PUT`, ...) and that has no framing header gets `content-length: 0`,
/// as hyper's client adds it.
pub fn encode_head<B>(request: &Request<B>, out: &mut Vec<u8>) {
    out.extend_from_slice(request.method().as_str().as_bytes());
    out.push(b' ');
    let uri = request.uri();
    if uri.scheme().is_none() && uri.authority().is_none() {
        match uri.path_and_query() {
            Some(pq) if !pq.as_str().is_empty() => out.extend_from_slice(pq.as_str().as_bytes()),
            _ => out.push(b'/'),
        }
    } else {
        out.extend_from_slice(uri.to_string().as_bytes());
    }
    out.extend_from_slice(b" HTTP/1.1\r\n");
    let headers = request.headers();
    for (name, value) in headers {
        out.extend_from_slice(name.as_str().as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    let bodyless_method = matches!(
        *request.method(),
        Method::GET | Method::HEAD | Method::DELETE | Method::CONNECT
    );
    if !bodyless_method
        && !headers.contains_key(CONTENT_LENGTH)
        && !headers.contains_key(TRANSFER_ENCODING)
    {
        out.extend_from_slice(b"content-length: 0\r\n");
    }
    out.extend_from_slice(b"\r\n");
}

/// A parsed final response head.
#[derive(Debug)]
struct Head {
    status: StatusCode,
    version: Version,
    headers: HeaderMap,
    framing: Framing,
    keep_alive: bool,
}

/// Parses one response head off the front of `buf`: `None` while it is incomplete. 1xx
/// responses are skipped (`100 Continue`, `103 Early Hints`); a `101` is an error here, since
/// this client never asks to switch protocols.
fn parse_head(buf: &mut BytesMut, method: &Method) -> Result<Option<Head>, H1Error> {
    loop {
        // Where each name and value lies in `buf`, so that the values can be slices of it (as
        // `u32`s, half the bytes to make and move: the buffer holds less than `MAX_HEAD` plus
        // one read while a head is read).
        let mut spans: smallvec::SmallVec<[(u32, u32, u32, u32); 24]> = smallvec::SmallVec::new();
        let (len, code, minor) = {
            // Uninitialised room for the headers: filling 100 empty ones cost more than
            // parsing a usual head (profile of issue 15).
            let mut headers =
                [const { std::mem::MaybeUninit::<httparse::Header<'_>>::uninit() }; MAX_HEADERS];
            let mut parsed = httparse::Response::new(&mut []);
            let len = match httparse::ParserConfig::default().parse_response_with_uninit_headers(
                &mut parsed,
                buf,
                &mut headers,
            ) {
                Ok(httparse::Status::Complete(len)) => len,
                Ok(httparse::Status::Partial) => return Ok(None),
                Err(e) => return Err(H1Error::Parse(e)),
            };
            let base = buf.as_ptr() as usize;
            let at = |s: &[u8]| (s.as_ptr() as usize - base) as u32;
            for h in parsed.headers.iter() {
                spans.push((
                    at(h.name.as_bytes()),
                    h.name.len() as u32,
                    at(h.value),
                    h.value.len() as u32,
                ));
            }
            (len, parsed.code.unwrap_or(0), parsed.version.unwrap_or(1))
        };
        let head = buf.split_to(len).freeze();
        let status = StatusCode::from_u16(code).map_err(|_| H1Error::Invalid("status code"))?;
        if status == StatusCode::SWITCHING_PROTOCOLS {
            return Err(H1Error::Invalid(
                "101 Switching Protocols that was not asked for",
            ));
        }
        if status.is_informational() {
            continue;
        }
        let mut headers = HeaderMap::with_capacity(spans.len());
        let mut seen = Seen::default();
        for &(name_at, name_len, value_at, value_len) in &spans {
            let (name_at, name_len) = (name_at as usize, name_len as usize);
            let (value_at, value_len) = (value_at as usize, value_len as usize);
            let name = HeaderName::from_bytes(&head[name_at..name_at + name_len])
                .map_err(|_| H1Error::Invalid("header name"))?;
            let value = HeaderValue::from_maybe_shared(head.slice(value_at..value_at + value_len))
                .map_err(|_| H1Error::Invalid("header value"))?;
            seen.note(&name);
            headers.append(name, value);
        }
        let version = if minor == 0 {
            Version::HTTP_10
        } else {
            Version::HTTP_11
        };
        let (framing, framing_keeps) = framing(&headers, seen, status, method)?;
        let keep_alive = framing_keeps && keeps_alive(&headers, seen, version);
        return Ok(Some(Head {
            status,
            version,
            headers,
            framing,
            keep_alive,
        }));
    }
}

/// True when the connection may carry another request after this response (by its version and
/// `Connection` header). The map is read only when the head has a `Connection` header.
fn keeps_alive(headers: &HeaderMap, seen: Seen, version: Version) -> bool {
    let mut close = false;
    let mut keep_alive = false;
    let connection = seen.connection.then(|| headers.get_all(CONNECTION));
    for value in connection.into_iter().flatten() {
        for token in value.as_bytes().split(|&b| b == b',') {
            let token = token.trim_ascii();
            if token.eq_ignore_ascii_case(b"close") {
                close = true;
            } else if token.eq_ignore_ascii_case(b"keep-alive") {
                keep_alive = true;
            }
        }
    }
    !close && (version == Version::HTTP_11 || keep_alive)
}

/// Which of the headers that frame a response (or end its connection) a head has, noted while
/// its headers are read: the usual response has no `Transfer-Encoding`, and looking each of them
/// up in the map afterwards cost more than the comparisons.
#[derive(Debug, Default, Clone, Copy)]
struct Seen {
    connection: bool,
    content_length: bool,
    transfer_encoding: bool,
}

impl Seen {
    fn note(&mut self, name: &HeaderName) {
        if *name == CONNECTION {
            self.connection = true;
        } else if *name == CONTENT_LENGTH {
            self.content_length = true;
        } else if *name == TRANSFER_ENCODING {
            self.transfer_encoding = true;
        }
    }
}

/// How the body of a response is delimited (RFC 9112 6.3), and whether the connection can be
/// reused after it as far as framing goes.
fn framing(
    headers: &HeaderMap,
    seen: Seen,
    status: StatusCode,
    method: &Method,
) -> Result<(Framing, bool), H1Error> {
    if *method == Method::HEAD
        || status == StatusCode::NO_CONTENT
        || status == StatusCode::NOT_MODIFIED
    {
        return Ok((Framing::Length(0), true));
    }
    if seen.transfer_encoding {
        let last = headers
            .get_all(TRANSFER_ENCODING)
            .iter()
            .flat_map(|v| v.as_bytes().split(|&b| b == b','))
            .map(<[u8]>::trim_ascii)
            .rfind(|t| !t.is_empty());
        let chunked = last.is_some_and(|t| t.eq_ignore_ascii_case(b"chunked"));
        // With Content-Length as well, the connection must close after it (RFC 9112 6.3).
        let reusable = chunked && !seen.content_length;
        return Ok(if chunked {
            (
                Framing::Chunked(Chunked::Size(SizeLine::default())),
                reusable,
            )
        } else {
            (Framing::Close, false)
        });
    }
    if !seen.content_length {
        return Ok((Framing::Close, false));
    }
    let mut length = None;
    for value in headers.get_all(CONTENT_LENGTH) {
        for part in value.as_bytes().split(|&b| b == b',') {
            let part = part.trim_ascii();
            if part.is_empty() || part.len() > 19 || !part.iter().all(u8::is_ascii_digit) {
                return Err(H1Error::Invalid("Content-Length"));
            }
            let n: u64 = std::str::from_utf8(part)
                .ok()
                .and_then(|s| s.parse().ok())
                .ok_or(H1Error::Invalid("Content-Length"))?;
            if length.is_some_and(|l| l != n) {
                return Err(H1Error::Invalid(
                    "Content-Length given twice with two values",
                ));
            }
            length = Some(n);
        }
    }
    Ok(match length {
        Some(n) => (Framing::Length(n), true),
        None => (Framing::Close, false),
    })
}

/// How much of the body is left.
#[derive(Debug)]
enum Framing {
    /// This many bytes.
    Length(u64),
    /// Chunked, in this state.
    Chunked(Chunked),
    /// Until the server closes.
    Close,
    /// Over.
    Done,
}

impl Framing {
    fn is_done(&self) -> bool {
        matches!(self, Framing::Length(0) | Framing::Done)
    }
}

/// Where a chunked body's decoder is.
#[derive(Debug)]
enum Chunked {
    /// In a chunk-size line.
    Size(SizeLine),
    /// In a chunk's data: this many bytes left.
    Data(u64),
    /// After a chunk's data: its CRLF (true once the CR was seen).
    DataEnd(bool),
    /// In the trailer section after the last chunk.
    Trailers(TrailerState),
}

/// A chunk-size line being read: `1a;ext=1\r\n`.
#[derive(Debug, Default)]
struct SizeLine {
    size: u64,
    digits: u32,
    /// Past the digits (whitespace or extensions).
    after_digits: bool,
    cr: bool,
    len: usize,
}

/// The trailer section being read and dropped.
#[derive(Debug, Default)]
struct TrailerState {
    /// Bytes on the current line.
    line: usize,
    cr: bool,
    total: usize,
}

/// What the decoder got from the buffer.
enum Step {
    Data(Bytes),
    NeedMore,
    End,
}

impl Chunked {
    /// Decodes from the front of `buf` until it yields data, needs more bytes, or the body ends.
    fn step(&mut self, buf: &mut BytesMut) -> Result<Step, H1Error> {
        loop {
            match self {
                Chunked::Data(left) => {
                    if buf.is_empty() {
                        return Ok(Step::NeedMore);
                    }
                    let n = (*left).min(buf.len() as u64) as usize;
                    *left -= n as u64;
                    if *left == 0 {
                        *self = Chunked::DataEnd(false);
                    }
                    return Ok(Step::Data(buf.split_to(n).freeze()));
                }
                Chunked::DataEnd(cr) => {
                    let Some(&b) = buf.first() else {
                        return Ok(Step::NeedMore);
                    };
                    buf.advance(1);
                    match (b, *cr) {
                        (b'\r', false) => *cr = true,
                        (b'\n', true) => *self = Chunked::Size(SizeLine::default()),
                        _ => return Err(H1Error::Invalid("chunk data not followed by CRLF")),
                    }
                }
                Chunked::Size(line) => {
                    let Some(&b) = buf.first() else {
                        return Ok(Step::NeedMore);
                    };
                    buf.advance(1);
                    line.len += 1;
                    if line.len > MAX_CHUNK_LINE {
                        return Err(H1Error::Invalid("chunk-size line too long"));
                    }
                    if line.cr {
                        if b != b'\n' {
                            return Err(H1Error::Invalid("chunk-size line not ended by CRLF"));
                        }
                        if line.digits == 0 {
                            return Err(H1Error::Invalid("chunk size missing"));
                        }
                        *self = if line.size == 0 {
                            Chunked::Trailers(TrailerState::default())
                        } else {
                            Chunked::Data(line.size)
                        };
                        continue;
                    }
                    match b {
                        b'\r' => line.cr = true,
                        _ if !line.after_digits && b.is_ascii_hexdigit() => {
                            if line.digits >= 15 {
                                return Err(H1Error::Invalid("chunk size too large"));
                            }
                            let d = (b as char).to_digit(16).unwrap_or(0);
                            line.size = line.size * 16 + u64::from(d);
                            line.digits += 1;
                        }
                        b'\n' => return Err(H1Error::Invalid("chunk-size line not ended by CRLF")),
                        // Whitespace before extensions, and the extensions themselves.
                        _ if line.digits > 0 => line.after_digits = true,
                        _ => return Err(H1Error::Invalid("chunk size")),
                    }
                }
                Chunked::Trailers(t) => {
                    let Some(&b) = buf.first() else {
                        return Ok(Step::NeedMore);
                    };
                    buf.advance(1);
                    t.total += 1;
                    if t.total > MAX_TRAILERS {
                        return Err(H1Error::Invalid("trailers too large"));
                    }
                    if t.cr {
                        if b != b'\n' {
                            return Err(H1Error::Invalid("trailer line not ended by CRLF"));
                        }
                        if t.line == 0 {
                            return Ok(Step::End);
                        }
                        t.line = 0;
                        t.cr = false;
                    } else if b == b'\r' {
                        t.cr = true;
                    } else if b == b'\n' {
                        return Err(H1Error::Invalid("trailer line not ended by CRLF"));
                    } else {
                        t.line += 1;
                    }
                }
            }
        }
    }
}

/// A response body read from the upstream connection by whoever polls it (see the module
/// documentation).
pub struct ResponseBody {
    /// The connection while the body is being read.
    conn: Option<Conn>,
    /// Where the connection goes when the body is over and it can be reused.
    home: Option<Arc<dyn Home>>,
    framing: Framing,
    /// False when the response says the connection ends with it.
    keep_alive: bool,
}

impl std::fmt::Debug for ResponseBody {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ResponseBody")
            .field("framing", &self.framing)
            .field("keep_alive", &self.keep_alive)
            .finish()
    }
}

impl ResponseBody {
    /// The body is over: the connection goes home when it can carry the next request.
    fn finish(&mut self) {
        self.framing = Framing::Done;
        if let (Some(conn), Some(home)) = (self.conn.take(), self.home.take()) {
            if self.keep_alive && conn.read.is_empty() {
                home.check_in(conn);
            }
        }
    }

    fn fail(&mut self, error: H1Error) -> Poll<Option<Result<Frame<Bytes>, H1Error>>> {
        self.framing = Framing::Done;
        self.conn = None;
        Poll::Ready(Some(Err(error)))
    }
}

impl Body for ResponseBody {
    type Data = Bytes;
    type Error = H1Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, H1Error>>> {
        let this = &mut *self;
        loop {
            let Some(conn) = this.conn.as_mut() else {
                return Poll::Ready(None);
            };
            match &mut this.framing {
                Framing::Done => return Poll::Ready(None),
                Framing::Length(left) => {
                    if *left == 0 {
                        this.finish();
                        return Poll::Ready(None);
                    }
                    if !conn.read.is_empty() {
                        let n = (*left).min(conn.read.len() as u64) as usize;
                        *left -= n as u64;
                        let data = conn.read.split_to(n).freeze();
                        if *left == 0 {
                            this.finish();
                        }
                        return Poll::Ready(Some(Ok(Frame::data(data))));
                    }
                    let room = (*left).min(MAX_READ as u64) as usize;
                    if let Err(e) = std::task::ready!(conn.poll_body_more(cx, room)) {
                        return this.fail(e);
                    }
                }
                Framing::Close => {
                    if !conn.read.is_empty() {
                        let data = conn.read.split().freeze();
                        return Poll::Ready(Some(Ok(Frame::data(data))));
                    }
                    match conn.poll_read_more(cx, MAX_READ) {
                        Poll::Pending => return Poll::Pending,
                        Poll::Ready(Ok(0)) => {
                            this.keep_alive = false;
                            this.finish();
                            return Poll::Ready(None);
                        }
                        Poll::Ready(Ok(_)) => {}
                        Poll::Ready(Err(e)) => return this.fail(H1Error::Io(e)),
                    }
                }
                Framing::Chunked(state) => match state.step(&mut conn.read) {
                    Err(e) => return this.fail(e),
                    Ok(Step::Data(data)) => return Poll::Ready(Some(Ok(Frame::data(data)))),
                    Ok(Step::End) => {
                        this.finish();
                        return Poll::Ready(None);
                    }
                    Ok(Step::NeedMore) => {
                        if let Err(e) = std::task::ready!(conn.poll_body_more(cx, READ_ROOM)) {
                            return this.fail(e);
                        }
                    }
                },
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.conn.is_none() || self.framing.is_done()
    }

    fn size_hint(&self) -> SizeHint {
        match (&self.framing, &self.conn) {
            (Framing::Length(n), Some(_)) => SizeHint::with_exact(*n),
            (Framing::Done, _) | (_, None) => SizeHint::with_exact(0),
            _ => SizeHint::default(),
        }
    }
}

#[cfg(test)]
mod tests;
