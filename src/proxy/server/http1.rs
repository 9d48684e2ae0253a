//! graygate's own HTTP/1.1 server loop for the common case: requests without a body, read and
//! answered by the connection's task itself, on plain TCP and over TLS alike ([`Client`]).
//!
//! Why our own: the profile of issue 15 put about a third of a proxied request's instructions in
//! hyper's server side (its dispatcher, the buffers it keeps and copies, a header map per
//! message) and hyper keeps an 8 KiB read and an 8 KiB write buffer for every idle kept-alive
//! connection, which its API cannot release. nginx, Pingora and sozu own this path for the same
//! reasons; `super::super::h1` already owns the client side. Here:
//!
//! - **The head** is parsed with `httparse` (the parser hyper uses, with hyper's settings) from a
//!   read buffer that exists only while a request is on its way: an idle kept-alive connection
//!   holds no buffer at all, and waits on the socket's readiness.
//! - **The response head and the first body bytes go out in one write**, encoded by the rules of
//!   hyper's server ([`encode_head`]): the same status line, header order, `content-length` or
//!   `transfer-encoding: chunked`, `date` and `connection: close`.
//!
//! **What this loop does not take, it hands to hyper unchanged.** Anything but a complete,
//! valid HTTP/1.1 head of a request without a body and without an upgrade goes, with every byte
//! read so far and the rest of the connection, to hyper's server as before
//! (`serve_connection`): a `Content-Length` or `Transfer-Encoding` header (so every body, and
//! every smuggling and desync case of the edge), `Expect`, `Upgrade`, `TE`, a `Connection`
//! header that names anything but `close` or `keep-alive`, `HEAD` and `CONNECT`, HTTP/1.0, a
//! head over the size limit, a malformed head, and a client that closes mid-head. hyper then
//! answers or refuses it exactly as it did when it served every connection. So this loop never
//! writes an error of its own about a request; what it accepts, hyper would have accepted as
//! the same request (a differential test on generated heads checks it: `tests.rs`).

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};

use bytes::{Bytes, BytesMut};
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, Request, Response, StatusCode, Uri, Version};
use http_body::{Body, Frame};
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::TokioIo;
use smallvec::SmallVec;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::futures::Notified;
use tokio_rustls::server::TlsStream;
use tracing::debug;

use super::{answer, serve_connection, Shared};
use crate::proxy::protocol::{Protocol, Rewind};
use crate::proxy::ticks::Ended;
use crate::proxy::ProxyBody;

/// hyper's limit on the request target (`MAX_URI_LEN`): longer ones are hyper's to refuse (414).
const MAX_URI_LEN: usize = (u16::MAX - 1) as usize;
/// hyper's default limit on the number of request headers: more are hyper's to refuse (431).
const MAX_HEADERS: usize = 100;
/// Room made in the read buffer before a read, as hyper's first read.
const READ_ROOM: usize = 8192;
/// Response bytes gathered before they are written, when the body has more at once.
const WRITE_BATCH: usize = 64 * 1024;
/// How many headers the request path adds to a request before it goes upstream, at most.
const ADDED_UPSTREAM: usize = 3;
/// A body chunk at least this large is written as it is rather than copied behind the head.
const COPY_LIMIT: usize = 16 * 1024;

/// What the bytes read so far make of the next request.
// The request is returned in place: boxing it would cost an allocation per request to save a
// move of about 230 bytes.
#[allow(clippy::large_enum_variant)]
#[derive(Debug)]
pub(crate) enum Head {
    /// Not a whole head yet: more bytes are needed.
    Partial,
    /// Not a request this loop takes: the connection goes to hyper, with every byte read.
    Hyper,
    /// A request without a body, taken from the front of the buffer, and whether the client
    /// keeps the connection alive after it (no `Connection: close`).
    Request(Request<Empty<Bytes>>, bool),
}

/// Parses the next request head at the front of `read` (at most `max_header_bytes` long, as
/// hyper's `max_header_size`). A taken request's head is split off the buffer; its target and
/// header values are slices of it, not copies.
pub(crate) fn parse(read: &mut BytesMut, max_header_bytes: usize) -> Head {
    let mut headers =
        [const { std::mem::MaybeUninit::<httparse::Header<'_>>::uninit() }; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut []);
    // hyper's own parser settings for requests: httparse's defaults.
    let len = match httparse::ParserConfig::default().parse_request_with_uninit_headers(
        &mut req,
        read,
        &mut headers,
    ) {
        Ok(httparse::Status::Complete(len)) if len <= max_header_bytes => len,
        Ok(httparse::Status::Partial) if read.len() < max_header_bytes => return Head::Partial,
        // Too large, too many headers, malformed: hyper's answer.
        _ => return Head::Hyper,
    };
    if req.version != Some(1) {
        return Head::Hyper;
    }
    let (Some(method), Some(target)) = (req.method, req.path) else {
        return Head::Hyper;
    };
    if target.len() > MAX_URI_LEN {
        return Head::Hyper;
    }
    let Ok(method) = Method::from_bytes(method.as_bytes()) else {
        return Head::Hyper;
    };
    if method == Method::HEAD || method == Method::CONNECT {
        return Head::Hyper;
    }
    // Offsets into the buffer, so that the head can be split off and shared; as `u32`s, so
    // that the list on the stack is half the bytes to make and move (a head over 4 GiB is
    // hyper's to refuse).
    if u32::try_from(len).is_err() {
        return Head::Hyper;
    }
    let base = read.as_ptr() as usize;
    let offset = |s: &[u8]| (s.as_ptr() as usize - base) as u32;
    let target_at = offset(target.as_bytes()) as usize;
    let target_range = target_at..target_at + target.len();
    let count = req.headers.len();
    let mut at: SmallVec<[(u32, u32, u32, u32); 24]> = SmallVec::new();
    for h in req.headers.iter() {
        let name = offset(h.name.as_bytes());
        let value = offset(h.value);
        at.push((
            name,
            name + h.name.len() as u32,
            value,
            value + h.value.len() as u32,
        ));
    }
    let head = read.split_to(len).freeze();
    let Ok(uri) = Uri::from_maybe_shared(head.slice(target_range)) else {
        // Refused back to hyper with the bytes put back: it reads the same head.
        return unsplit(read, head);
    };
    // Room for the headers the proxy adds on the way up (`X-Forwarded-For`, `X-Real-IP`, the
    // version header), so that adding them does not grow the map (a reallocation of both of
    // its tables).
    let mut map = HeaderMap::with_capacity(count + ADDED_UPSTREAM);
    let mut keep_alive = true;
    for &(n0, n1, v0, v1) in &at {
        let Ok(name) = HeaderName::from_bytes(&head[n0 as usize..n1 as usize]) else {
            return unsplit(read, head);
        };
        let Ok(value) = HeaderValue::from_maybe_shared(head.slice(v0 as usize..v1 as usize)) else {
            return unsplit(read, head);
        };
        match name {
            header::CONTENT_LENGTH
            | header::TRANSFER_ENCODING
            | header::EXPECT
            | header::UPGRADE
            | header::TE => return unsplit(read, head),
            header::CONNECTION => match connection_tokens(&value) {
                Some(close) => keep_alive &= !close,
                None => return unsplit(read, head),
            },
            _ => {}
        }
        map.append(name, value);
    }
    let mut request = Request::new(Empty::new());
    *request.method_mut() = method;
    *request.uri_mut() = uri;
    *request.version_mut() = Version::HTTP_11;
    *request.headers_mut() = map;
    Head::Request(request, keep_alive)
}

/// Puts a split-off head back in front of the buffer, for hyper to read: `Head::Hyper`.
fn unsplit(read: &mut BytesMut, head: Bytes) -> Head {
    let mut whole = BytesMut::with_capacity(head.len() + read.len());
    whole.extend_from_slice(&head);
    whole.extend_from_slice(read);
    *read = whole;
    Head::Hyper
}

/// A request's `Connection` value: `Some(true)` if it says `close`, `Some(false)` if it says
/// only `keep-alive`; `None` if it names anything else (hop-by-hop headers, `upgrade`), which
/// is hyper's to serve. Tokens as hyper reads them: comma-separated, trimmed, any case.
fn connection_tokens(value: &HeaderValue) -> Option<bool> {
    let text = value.to_str().ok()?;
    let mut close = false;
    for token in text.split(',') {
        let token = token.trim();
        if token.eq_ignore_ascii_case("close") {
            close = true;
        } else if !token.eq_ignore_ascii_case("keep-alive") {
            return None;
        }
    }
    Some(close)
}

/// The client side of a connection the loop serves: what it needs beyond reading and writing.
pub(super) trait Client: AsyncRead + AsyncWrite + Unpin + Send + 'static {
    /// Ready when a read may find something. It waits without a buffer, and without a waiter
    /// of its own: the socket's read waker is the one the read itself would register.
    fn poll_readable(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>>;

    /// Writes all of `bytes` to the client (named apart from `AsyncWriteExt::write_all`, which
    /// would not flush a TLS stream).
    fn send_all<'a>(&'a mut self, bytes: &'a [u8]) -> impl Future<Output = io::Result<()>> + Send;
}

impl Client for TcpStream {
    fn poll_readable(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.poll_read_ready(cx)
    }

    /// Straight to the socket, waiting for it only when it is full.
    async fn send_all<'a>(&'a mut self, mut bytes: &'a [u8]) -> io::Result<()> {
        while !bytes.is_empty() {
            match self.try_write(bytes) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(n) => bytes = &bytes[n..],
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => self.writable().await?,
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }
}

impl Client for TlsStream<TcpStream> {
    /// The socket's readiness, unless rustls holds decrypted bytes not read yet (or has seen the
    /// end of the stream): then a read finds them at once, whatever the socket says.
    fn poll_readable(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let (tcp, tls) = self.get_ref();
        if tls.wants_read() {
            tcp.poll_read_ready(cx)
        } else {
            Poll::Ready(Ok(()))
        }
    }

    /// Encrypted into rustls, then flushed to the socket.
    async fn send_all<'a>(&'a mut self, bytes: &'a [u8]) -> io::Result<()> {
        self.write_all(bytes).await?;
        self.flush().await
    }
}

/// One client connection as the loop serves it.
pub(super) struct Conn<S> {
    pub stream: S,
    /// Bytes read from the client and not taken yet: the start of the next request (or, on
    /// plain TCP, the first bytes, read to tell HTTP/1.1 from HTTP/2).
    pub read: BytesMut,
    pub peer: SocketAddr,
}

/// What is left of a connection when [`serve`] returns.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Next {
    /// Nothing: it is over (closed, or to be closed by dropping it).
    Done,
    /// The rest is hyper's ([`to_hyper`]), from the bytes left in the read buffer.
    Hyper,
}

/// Serves one HTTP/1.1 connection, whose first bytes may be read already, until the client closes it, the header timeout closes it,
/// shutdown asks it to finish, or a request is not one of this loop's: then [`Next::Hyper`].
///
/// Its state while it waits for a request is, with the socket, all that an idle kept-alive
/// connection costs, so it is kept small: the connection is borrowed from the task that holds
/// it (in a block over it, not an `async fn`, which would keep a copy of each argument), and the wait is one `poll_fn` over the socket's readiness, one timer and one wait
/// for stop, each polled in place. Whatever a request needs is boxed, and held only while the
/// request is answered.
#[allow(
    clippy::manual_async_fn,
    reason = "an `async fn` keeps a second copy of its arguments"
)]
pub(super) fn serve<'a, S: Client>(
    conn: &'a mut Conn<S>,
    shared: &'a Shared,
) -> impl Future<Output = Next> + Send + 'a {
    async move {
        // One wait for the header timeout and stop for the connection's life (`idle`): a
        // request only moves the deadline, and the wait stays registered between requests.
        // A head, within the header timeout from the moment the connection waits for one (as
        // hyper's `header_read_timeout`, which also bounds an idle kept-alive one): the
        // deadline is set here and again after each answer.
        let mut deadline = shared.idle.deadline();
        let mut waiting = std::pin::pin!(shared.idle.wait_for(deadline));
        loop {
            let (request, keep_alive) = loop {
                if !conn.read.is_empty() {
                    match parse(&mut conn.read, shared.cfg.max_header_bytes.max(1)) {
                        Head::Request(request, keep_alive) => break (request, keep_alive),
                        Head::Hyper => return Next::Hyper,
                        Head::Partial => {}
                    }
                }
                // In this order: bytes that came first are read before a timeout or a stop.
                let waited = std::future::poll_fn(|cx| {
                    // The whole connection, borrowed once (not its two fields apart).
                    let conn = &mut *conn;
                    if let Poll::Ready(more) = read_more(&mut conn.stream, &mut conn.read, cx) {
                        return Poll::Ready(Wait::More(more));
                    }
                    poll_idle(shared, waiting.as_mut(), deadline, cx)
                })
                .await;
                match waited {
                    Wait::More(Ok(0)) | Wait::Stop if conn.read.is_empty() => return Next::Done,
                    // Closed mid-head, or asked to stop mid-head: hyper's, which says what it
                    // says to that, or finishes the request and closes.
                    Wait::More(Ok(0)) | Wait::Stop => return Next::Hyper,
                    Wait::More(Ok(_)) => {}
                    Wait::More(Err(e)) => {
                        debug!(peer = %conn.peer, error = %e, "client connection ended with an error");
                        return Next::Done;
                    }
                    Wait::TimedOut => {
                        debug!(peer = %conn.peer, "client connection closed: no request head within the header timeout");
                        return Next::Done;
                    }
                }
            };
            // Boxed: a request's future is kilobytes, and inline it would be part of the
            // connection's task for the connection's whole life, idle or not. Dropped at close.
            let exchange = async {
                let response = answer(shared, conn.peer, request).await;
                let keep_alive = keep_alive && !shared.shutdown.is_stopping();
                respond(&mut conn.stream, response, keep_alive).await
            };
            // Whether to go on, decided before the next `.await`: the exchange's result is not
            // kept in the connection's state through the close.
            let go_on = match Box::pin(shared.shutdown.unless_closed(exchange)).await {
                Some(Ok(go_on)) => go_on,
                Some(Err(e)) => {
                    debug!(peer = %conn.peer, error = %e, "client connection ended with an error");
                    return Next::Done;
                }
                None => return Next::Done,
            };
            if !go_on || shared.shutdown.is_stopping() {
                return Box::pin(close(conn, &shared.shutdown)).await;
            }
            if conn.read.is_empty() {
                // Nothing pipelined: the buffer goes back to the pool while the connection
                // idles.
                pool::give_read(std::mem::take(&mut conn.read));
            }
            deadline = shared.idle.deadline();
        }
    }
}

/// Polls a connection's wait for the header timeout and stop (see `crate::proxy::ticks`): `Stop`
/// once stop is told, `TimedOut` once the clock is past `deadline`; otherwise pending, with the
/// wait registered on `deadline`'s tick.
fn poll_idle<'a>(
    shared: &'a Shared,
    wait: Pin<&mut Notified<'a>>,
    deadline: u64,
    cx: &mut Context<'_>,
) -> Poll<Wait> {
    shared
        .idle
        .poll_wait(wait, deadline, || shared.shutdown.is_stopping(), cx)
        .map(|ended| match ended {
            Ended::Stopped => Wait::Stop,
            Ended::Past => Wait::TimedOut,
        })
}

/// What a wait for more of a head ended with.
enum Wait {
    More(io::Result<usize>),
    TimedOut,
    Stop,
}

/// The rest of the connection on hyper's server, from the first byte not yet answered.
pub(super) async fn to_hyper<S: Client>(conn: Conn<S>, shared: Arc<Shared>) {
    let io = TokioIo::new(Rewind::new(conn.read.freeze(), conn.stream));
    serve_connection(io, Protocol::Http1, conn.peer, shared).await
}

/// Reads what the socket has into `read` once it is readable; 0 at the end of the stream.
///
/// The buffer is taken from the worker's pool only once there is something to read, so a
/// connection idles without one, and goes back to it if the read finds nothing after all. The
/// read goes through tokio's `poll_read`, which marks the socket not ready after a short read:
/// the next wait then needs no read that only says EAGAIN.
fn read_more<S: Client>(
    stream: &mut S,
    read: &mut BytesMut,
    cx: &mut Context<'_>,
) -> Poll<io::Result<usize>> {
    std::task::ready!(stream.poll_readable(cx))?;
    if read.capacity() == 0 {
        *read = pool::take_read();
    }
    if read.capacity() - read.len() < READ_ROOM {
        read.reserve(READ_ROOM);
    }
    let polled = tokio_util::io::poll_read_buf(Pin::new(&mut *stream), cx, read);
    if polled.is_pending() && read.is_empty() {
        pool::give_read(std::mem::take(read));
    }
    polled
}

/// Buffers kept by each worker thread for its connections: a request's read buffer and a
/// response's head go back here when the connection idles, instead of to the allocator and
/// back per request; an idle connection holds none.
mod pool {
    use std::cell::RefCell;

    use bytes::BytesMut;

    /// At most this many of each are kept per worker (8 KiB and about 0.5 KiB each): about as
    /// many as one worker has requests in flight under load (the benchmarks' 50 connections),
    /// so that most requests take a buffer from here. More would be memory held for a burst
    /// that is over: 256 kept read buffers (each touched for about a page) were 90 of the bytes
    /// per idle connection that `bench/idle-conns.sh` counts after its 10,000-connection
    /// burst. A request that finds none takes one from the allocator.
    const KEPT: usize = 32;

    thread_local! {
        static READS: RefCell<Vec<BytesMut>> = const { RefCell::new(Vec::new()) };
        static WRITES: RefCell<Vec<Vec<u8>>> = const { RefCell::new(Vec::new()) };
    }

    /// An empty read buffer with room for a head.
    pub fn take_read() -> BytesMut {
        READS
            .with(|kept| kept.borrow_mut().pop())
            .unwrap_or_else(|| BytesMut::with_capacity(super::READ_ROOM))
    }

    /// Gives back an emptied read buffer. One that grew for a large head is dropped instead,
    /// so that the pool holds at most `KEPT` buffers of about `READ_ROOM` each, whatever
    /// `max_header_bytes` allows.
    pub fn give_read(mut read: BytesMut) {
        read.clear();
        if read.capacity() > 2 * super::READ_ROOM {
            return;
        }
        // Room for a head again from its start; when that cannot be had without allocating,
        // the buffer is not kept.
        if !read.try_reclaim(super::READ_ROOM) {
            return;
        }
        READS.with(|kept| {
            let mut kept = kept.borrow_mut();
            if kept.len() < KEPT {
                kept.push(read);
            }
        });
    }

    /// An empty buffer for a response head.
    pub fn take_write() -> Vec<u8> {
        WRITES
            .with(|kept| kept.borrow_mut().pop())
            .unwrap_or_else(|| Vec::with_capacity(512))
    }

    /// Gives back a response head buffer (not one a large body grew).
    pub fn give_write(mut out: Vec<u8>) {
        if out.capacity() > 4096 {
            return;
        }
        out.clear();
        WRITES.with(|kept| {
            let mut kept = kept.borrow_mut();
            if kept.len() < KEPT {
                kept.push(out);
            }
        });
    }
}

/// Ends a connection after its last answer: the write side is shut, so that the client reads
/// the end of the stream after the answer (over TLS, after a `close_notify`, given up at
/// close).
async fn close<S: Client>(conn: &mut Conn<S>, shutdown: &super::Shutdown) -> Next {
    let _ = shutdown.unless_closed(conn.stream.shutdown()).await;
    Next::Done
}

/// The length of a response body as the head announces it: hyper's `BodyLength`, or `None`
/// for a body that is over before it starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum BodyLength {
    Known(u64),
    Unknown,
}

/// How the body after a head is framed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Framing {
    /// Exactly this many bytes more (0: no body).
    Length(u64),
    /// Chunked transfer coding.
    Chunked,
    /// Until the connection closes (an HTTP/1.0 response of unknown length).
    Close,
}

/// A response head as written, and what follows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Encoded {
    pub framing: Framing,
    /// True when the connection closes after this response.
    pub last: bool,
}

/// The response head could not be written (hyper refuses the same: conflicting
/// `content-length` values, or one that is not a number): the connection is closed unanswered.
#[derive(Debug, thiserror::Error)]
#[error("response head not written: {0}")]
pub(crate) struct HeadError(&'static str);

/// Encodes `response`'s head into `out` by hyper's server rules for a bodiless HTTP/1.1
/// request that is neither `HEAD` nor `CONNECT`; `body` is `None` when the body is already over.
/// `keep_alive` false adds `connection: close` (unless one is there) and makes it the last.
pub(crate) fn encode_head(
    status: StatusCode,
    version: Version,
    headers: &mut HeaderMap,
    reason: Option<&[u8]>,
    body: Option<BodyLength>,
    keep_alive: bool,
    out: &mut Vec<u8>,
) -> Result<Encoded, HeadError> {
    if status.is_informational() && status != StatusCode::SWITCHING_PROTOCOLS {
        return Err(HeadError("an informational status as the response"));
    }
    if !keep_alive && !headers.get_all(header::CONNECTION).iter().any(has_close) {
        headers.append(header::CONNECTION, HeaderValue::from_static("close"));
    }
    let mut last = !keep_alive || status == StatusCode::SWITCHING_PROTOCOLS;
    let http10 = version == Version::HTTP_10;
    if !http10 && status == StatusCode::OK && reason.is_none() {
        out.extend_from_slice(b"HTTP/1.1 200 OK\r\n");
    } else {
        out.extend_from_slice(if http10 { b"HTTP/1.0 " } else { b"HTTP/1.1 " });
        out.extend_from_slice(status.as_str().as_bytes());
        out.push(b' ');
        match reason {
            Some(reason) => out.extend_from_slice(reason),
            None => out.extend_from_slice(status.canonical_reason().unwrap_or("<none>").as_bytes()),
        }
        out.extend_from_slice(b"\r\n");
    }
    // No body for 1xx, 204 and 304 (the request is never HEAD here); those have no length.
    let no_content = matches!(status, StatusCode::NO_CONTENT | StatusCode::NOT_MODIFIED)
        || status.is_informational();
    let can_chunk = !no_content;
    let mut framing = Framing::Length(0);
    let mut wrote_len = false;
    let mut wrote_date = false;
    let mut prev_len = None;
    // A `content-length`, `transfer-encoding` or `connection` line whose values are joined.
    let mut open: Option<HeaderName> = None;
    let mut must_write_chunked = false;
    let mut current: Option<HeaderName> = None;
    for (name, value) in headers.drain() {
        if let Some(name) = name {
            if open.take().is_some() {
                finish_line(out, must_write_chunked);
                must_write_chunked = false;
            }
            current = Some(name);
        }
        let Some(name) = current.as_ref() else {
            continue;
        };
        match *name {
            header::CONTENT_LENGTH => {
                if wrote_len && open.is_none() {
                    return Err(HeadError("content-length after the length was set"));
                }
                match body {
                    Some(BodyLength::Known(known)) => {
                        if open.is_none() {
                            framing = Framing::Length(known);
                            out.extend_from_slice(b"content-length: ");
                            out.extend_from_slice(value.as_bytes());
                            wrote_len = true;
                            open = Some(header::CONTENT_LENGTH);
                        }
                        continue;
                    }
                    Some(BodyLength::Unknown) => {
                        let Some(len) = digits(value.as_bytes()) else {
                            return Err(HeadError("content-length is not a number"));
                        };
                        match prev_len {
                            Some(prev) if prev != len => {
                                return Err(HeadError("two different content-length values"))
                            }
                            Some(_) => continue,
                            None => {
                                framing = Framing::Length(len);
                                out.extend_from_slice(b"content-length: ");
                                out.extend_from_slice(value.as_bytes());
                                wrote_len = true;
                                open = Some(header::CONTENT_LENGTH);
                                prev_len = Some(len);
                                continue;
                            }
                        }
                    }
                    // No body: the length line is left out (written below as 0 if it may be).
                    None => continue,
                }
            }
            header::TRANSFER_ENCODING => {
                if wrote_len && open.is_none() {
                    return Err(HeadError("transfer-encoding after the length was set"));
                }
                if http10 || !can_chunk {
                    continue;
                }
                wrote_len = true;
                must_write_chunked = !is_chunked(&value);
                if join(out, &mut open, name, &value) {
                    framing = Framing::Chunked;
                }
                continue;
            }
            header::CONNECTION => {
                if has_close(&value) {
                    last = true;
                }
                join(out, &mut open, name, &value);
                continue;
            }
            header::TRAILER => {
                if http10 || !can_chunk {
                    continue;
                }
                join(out, &mut open, name, &value);
                continue;
            }
            header::DATE => wrote_date = true,
            _ => {}
        }
        out.extend_from_slice(name.as_str().as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    if open.is_some() {
        finish_line(out, must_write_chunked);
    }
    if !wrote_len {
        framing = match body {
            Some(BodyLength::Unknown) if http10 || !can_chunk => Framing::Close,
            Some(BodyLength::Unknown) => {
                out.extend_from_slice(b"transfer-encoding: chunked\r\n");
                Framing::Chunked
            }
            None | Some(BodyLength::Known(0)) => {
                if !no_content {
                    out.extend_from_slice(b"content-length: 0\r\n");
                }
                Framing::Length(0)
            }
            Some(BodyLength::Known(len)) => {
                if !no_content {
                    out.extend_from_slice(b"content-length: ");
                    out.extend_from_slice(itoa::Buffer::new().format(len).as_bytes());
                    out.extend_from_slice(b"\r\n");
                    Framing::Length(len)
                } else {
                    Framing::Length(0)
                }
            }
        };
    }
    if no_content {
        framing = Framing::Length(0);
    }
    if !wrote_date {
        out.extend_from_slice(b"date: ");
        date::extend(out);
        out.extend_from_slice(b"\r\n\r\n");
    } else {
        out.extend_from_slice(b"\r\n");
    }
    if framing == Framing::Close {
        last = true;
    }
    Ok(Encoded { framing, last })
}

/// Writes `value` on the one line of `name`, whose values are joined with ", " (hyper joins
/// `transfer-encoding`, `connection` and `trailer`): the line is started when none is open.
/// True when it started it.
fn join(
    out: &mut Vec<u8>,
    open: &mut Option<HeaderName>,
    name: &HeaderName,
    value: &HeaderValue,
) -> bool {
    let start = open.is_none();
    if start {
        out.extend_from_slice(name.as_str().as_bytes());
        out.extend_from_slice(b": ");
        *open = Some(name.clone());
    } else {
        out.extend_from_slice(b", ");
    }
    out.extend_from_slice(value.as_bytes());
    start
}

/// Ends a header line whose values were joined; a `transfer-encoding` that did not end in
/// `chunked` gets it.
fn finish_line(out: &mut Vec<u8>, must_write_chunked: bool) {
    if must_write_chunked {
        out.extend_from_slice(b", chunked\r\n");
    } else {
        out.extend_from_slice(b"\r\n");
    }
}

/// A `Connection` value with a `close` token (hyper's `connection_close`).
fn has_close(value: &HeaderValue) -> bool {
    value
        .to_str()
        .is_ok_and(|s| s.split(',').any(|t| t.trim().eq_ignore_ascii_case("close")))
}

/// A `Transfer-Encoding` value whose last coding is `chunked` (hyper's `is_chunked_`).
fn is_chunked(value: &HeaderValue) -> bool {
    value.to_str().is_ok_and(|s| {
        s.rsplit(',')
            .next()
            .is_some_and(|last| last.trim().eq_ignore_ascii_case("chunked"))
    })
}

/// Only ASCII digits, no sign, no overflow (hyper's `from_digits`).
fn digits(bytes: &[u8]) -> Option<u64> {
    if bytes.is_empty() {
        return None;
    }
    bytes.iter().try_fold(0u64, |n, &b| match b {
        b'0'..=b'9' => n.checked_mul(10)?.checked_add(u64::from(b - b'0')),
        _ => None,
    })
}

/// Writes `response` to the client: its head, then its body framed as the head says. `Ok(true)`
/// when the connection may serve another request, `Ok(false)` when it is to be closed (the
/// head said so, or the body broke off: the client sees the connection end early, as with hyper).
async fn respond<S: Client>(
    stream: &mut S,
    response: Response<ProxyBody>,
    keep_alive: bool,
) -> io::Result<bool> {
    let (mut parts, mut body) = response.into_parts();
    let length = if body.is_end_stream() {
        // Over before it starts: let it go now, as hyper does (an observed body reports here).
        drop(std::mem::replace(&mut body, super::empty()));
        None
    } else {
        Some(
            body.size_hint()
                .exact()
                .map_or(BodyLength::Unknown, BodyLength::Known),
        )
    };
    let reason = parts
        .extensions
        .get::<hyper::ext::ReasonPhrase>()
        .map(|r| r.as_bytes().to_vec());
    let mut out = pool::take_write();
    let encoded = match encode_head(
        parts.status,
        parts.version,
        &mut parts.headers,
        reason.as_deref(),
        length,
        keep_alive,
        &mut out,
    ) {
        Ok(encoded) => encoded,
        Err(e) => {
            debug!(error = %e, "closing the client connection unanswered");
            return Ok(false);
        }
    };
    let complete = if length.is_none() || encoded.framing == Framing::Length(0) {
        drop(body);
        if encoded.framing == Framing::Chunked {
            // A `transfer-encoding` header over no body: the empty chunked body.
            out.extend_from_slice(b"0\r\n\r\n");
        }
        true
    } else {
        send_body(stream, &mut body, encoded.framing, &mut out).await?
    };
    write(stream, &mut out).await?;
    pool::give_write(out);
    Ok(complete && !encoded.last)
}

/// Streams a body framed by `framing` after what `out` holds; false if it ended before its
/// length or failed. Bytes past a body's length are not sent (hyper's server does the same).
async fn send_body<S: Client>(
    stream: &mut S,
    body: &mut ProxyBody,
    framing: Framing,
    out: &mut Vec<u8>,
) -> io::Result<bool> {
    let mut left = match framing {
        Framing::Length(n) => n,
        _ => u64::MAX,
    };
    loop {
        let frame = match poll_now(body) {
            Poll::Ready(frame) => frame,
            Poll::Pending => {
                // Nothing more right now: what is gathered goes out while the body waits.
                write(stream, out).await?;
                body.frame().await
            }
        };
        let data = match frame {
            None => break,
            Some(Err(e)) => {
                debug!(error = %e, "response body broke off");
                write(stream, out).await?;
                return Ok(false);
            }
            Some(Ok(frame)) => match frame.into_data() {
                Ok(data) => data,
                // Trailers end the body; they are not sent (the client did not ask for them
                // with `TE: trailers`: such requests are hyper's).
                Err(_) => break,
            },
        };
        if data.is_empty() {
            continue;
        }
        match framing {
            Framing::Length(_) => {
                // As hyper: what is past the length is not sent, and the body is done there.
                let take = usize::try_from(left).map_or(data.len(), |left| left.min(data.len()));
                left -= take as u64;
                put(stream, out, &data.slice(..take)).await?;
                if left == 0 {
                    break;
                }
            }
            Framing::Chunked => {
                out.extend_from_slice(format!("{:X}\r\n", data.len()).as_bytes());
                put(stream, out, &data).await?;
                out.extend_from_slice(b"\r\n");
            }
            Framing::Close => put(stream, out, &data).await?,
        }
        if out.len() >= WRITE_BATCH {
            write(stream, out).await?;
        }
    }
    match framing {
        Framing::Length(_) if left != 0 => {
            debug!("response body shorter than its content-length");
            write(stream, out).await?;
            Ok(false)
        }
        Framing::Chunked => {
            out.extend_from_slice(b"0\r\n\r\n");
            Ok(true)
        }
        _ => Ok(true),
    }
}

/// The body's next frame if it has one at once, without waiting.
fn poll_now(body: &mut ProxyBody) -> Poll<Option<Result<Frame<Bytes>, crate::proxy::BoxError>>> {
    let mut cx = Context::from_waker(Waker::noop());
    Pin::new(body).poll_frame(&mut cx)
}

/// `data` after `out`: copied behind it if small, else written after it as it is.
async fn put<S: Client>(stream: &mut S, out: &mut Vec<u8>, data: &Bytes) -> io::Result<()> {
    if data.len() < COPY_LIMIT {
        out.extend_from_slice(data);
        return Ok(());
    }
    write(stream, out).await?;
    stream.send_all(data).await
}

/// Writes and empties `out`.
async fn write<S: Client>(stream: &mut S, out: &mut Vec<u8>) -> io::Result<()> {
    if out.is_empty() {
        return Ok(());
    }
    stream.send_all(out).await?;
    out.clear();
    Ok(())
}

/// The `date` value, formatted once a second per thread (as hyper caches it).
mod date {
    use std::cell::RefCell;
    use std::time::{SystemTime, UNIX_EPOCH};

    thread_local! {
        static CACHED: RefCell<(u64, [u8; 29])> = const { RefCell::new((u64::MAX, [0; 29])) };
    }

    /// Appends the current `date` value (IMF-fixdate, 29 bytes).
    pub fn extend(out: &mut Vec<u8>) {
        let now = SystemTime::now();
        let secs = now.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
        CACHED.with(|cached| {
            let mut cached = cached.borrow_mut();
            if cached.0 != secs {
                let text = httpdate::fmt_http_date(now);
                if text.len() == 29 {
                    cached.1.copy_from_slice(text.as_bytes());
                    cached.0 = secs;
                }
            }
            out.extend_from_slice(&cached.1);
        });
    }
}

#[cfg(test)]
mod tests;
