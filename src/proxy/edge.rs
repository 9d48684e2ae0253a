//! The strict edge: what a client's request must be before graygate routes it, the one canonical
//! form in which the route and the upstream both see it, and the time bounds on bodies in both
//! directions.
//!
//! A proxy that reads a request one way and forwards it so that the next hop reads it another way
//! can be walked around: a route skipped with `/%61pi`, a backend reached under a `Host` the policy
//! never saw, a body that one side thinks has ended and the other does not. So the edge either
//! refuses a request or makes it canonical, and everything after it (the policy, the rewrite, the
//! upstream) works on that one canonical request. The access log keeps the request as the client
//! sent it.
//!
//! # What is refused ([`admit`])
//! Each refusal is a short `graygate:` answer, and the connection is closed after it (the request
//! may have a body nobody read, and a client that sends a malformed request is not owed a
//! kept-alive connection).
//! - 400 `more than one Host header`: RFC 9112 3.2. Which one would the upstream believe?
//! - 400 `no Host header`: an HTTP/1.1 request without a `Host` (or with an empty one) and without
//!   an absolute-form target. HTTP/1.0 needs none (then the route is found without a host), and
//!   an absolute-form target's authority is the host (RFC 9112 3.2.2: it overrides `Host`).
//! - 400 `invalid Host header`: not `host[:port]` (a reg-name, an IPv4 address or a bracketed IPv6
//!   address; an empty label such as `a..b`; user info in an absolute-form target).
//! - 501 `transfer coding not supported`: a request `Transfer-Encoding` other than `chunked`
//!   (`gzip, chunked`): RFC 9112 6.1. Forwarding it without the coding would hand the upstream
//!   gzip bytes as if they were the body; hyper already refuses a request whose last coding is
//!   not `chunked` (400).
//! - 400 `invalid Transfer-Encoding`: `chunked` more than once.
//! - 400 `invalid request target`: a `%` in the path that starts no escape (`/100%`, `/%zz`):
//!   such a path has no one meaning (`/%%32e` decoded once is `/%2e`, which the next hop would
//!   decode again into a dot segment the route never saw).
//!
//! # What is made canonical ([`admit`])
//! - **The path** ([`normalize_path`]): percent-encoded unreserved characters (`ALPHA DIGIT - . _
//!   ~`) decoded and the hex digits of other escapes upper-cased (RFC 3986 6.2.2), repeated
//!   slashes merged (`//api` is `/api`, as nginx's `merge_slashes on`), dot segments resolved
//!   (`/x/../api` is `/api`; `..` never climbs above the root). The query is left as sent. The
//!   route is chosen on this path and the upstream receives it.
//! - **The host**: a trailing dot removed (`shop.example.` is `shop.example`), in the `Host` the
//!   policy routes on and the upstream receives; an absolute-form target's authority becomes the
//!   `Host`.
//! - **Forwarding headers from strangers**: with [`ClientIpConfig::strip_untrusted_forwarded`]
//!   (on by default), `Forwarded` and every `X-Forwarded-*` header except `X-Forwarded-For`
//!   (which graygate appends to) are removed from requests of peers that are not trusted
//!   proxies: an upstream that builds redirects from `X-Forwarded-Host` must not be steered by
//!   any client.
//!
//! # Bodies
//! - [`ClientBody`]: the client's request body on its way upstream. It must make progress within
//!   [`Timeouts::client_body`] while graygate waits for it; a body that stalls, or that the client
//!   breaks (bad chunked framing, a connection closed mid-body), is the client's fault
//!   ([`BodyState::fault`]): 408 or 400, counted as a client error and not against the version.
//!   While graygate waits for the client, the upstream's response timeout is held
//!   ([`Activity::wait_for_client`]), so a slow client is never taken for a slow upstream.
//! - [`UpstreamBody`]: the upstream's response body on its way to the client. It must make
//!   progress within [`Timeouts::upstream_body`] while the client is ready for more; when it
//!   stalls, the response has started and cannot become a 504 any more, so the client's
//!   connection is closed (the client sees an incomplete response, never a complete-looking one).
//! - [`check_response_framing`]: an upstream response with `Transfer-Encoding` loses its
//!   `Content-Length` (RFC 9112 6.3: the transfer coding wins, and a proxy must remove the length
//!   before forwarding); a coding other than `chunked` is answered 502 rather than passed on
//!   decoded as if it were the body.
//!
//! Both body clocks run only while the body is asked for and has nothing: a reader that stops
//! asking because its own side is slow does not count against the body.
//!
//! [`ClientIpConfig::strip_untrusted_forwarded`]: super::ClientIpConfig::strip_untrusted_forwarded
//! [`Timeouts::client_body`]: super::Timeouts::client_body
//! [`Timeouts::upstream_body`]: super::Timeouts::upstream_body

use std::future::Future;
use std::net::Ipv6Addr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::header::{HeaderMap, HeaderName, HeaderValue, CONTENT_LENGTH, HOST, TRANSFER_ENCODING};
use http::uri::{PathAndQuery, Uri};
use http::{Request, StatusCode, Version};
use http_body::{Body, Frame, SizeHint};
use tokio::time::{Instant, Sleep};
use tracing::warn;

use super::client_ip::X_FORWARDED_FOR;
use super::upstream::Activity;
use super::BoxError;

/// `Forwarded` (RFC 7239), removed with the `X-Forwarded-*` family from untrusted peers.
const FORWARDED: HeaderName = HeaderName::from_static("forwarded");

/// Why a request is refused at the edge (see the module documentation).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    /// Two or more `Host` header lines.
    #[error("more than one Host header")]
    TwoHosts,
    /// HTTP/1.1 without a host: no `Host`, or an empty one, and no absolute-form target.
    #[error("no Host header")]
    NoHost,
    /// A host that is not `host[:port]`.
    #[error("invalid Host header")]
    BadHost,
    /// A request transfer coding other than `chunked`.
    #[error("transfer coding not supported")]
    TransferCoding,
    /// `chunked` applied more than once, or a `Transfer-Encoding` that is not text.
    #[error("invalid Transfer-Encoding")]
    BadTransferEncoding,
    /// A path with a `%` that starts no escape (`/100%`, `/%zz`): it has no one meaning (after
    /// `%%32e` is decoded once, `%2e` is left, which the next hop decodes again). Also a
    /// normalised path that is not a valid URI any more (which should not happen).
    #[error("invalid request target")]
    BadTarget,
}

impl Refusal {
    /// The status the client gets.
    pub fn status(self) -> StatusCode {
        match self {
            Refusal::TransferCoding => StatusCode::NOT_IMPLEMENTED,
            _ => StatusCode::BAD_REQUEST,
        }
    }

    /// The body the client gets: `graygate: ` and the reason.
    pub fn body(self) -> &'static str {
        match self {
            Refusal::TwoHosts => "graygate: more than one Host header\n",
            Refusal::NoHost => "graygate: no Host header\n",
            Refusal::BadHost => "graygate: invalid Host header\n",
            Refusal::TransferCoding => "graygate: transfer coding not supported\n",
            Refusal::BadTransferEncoding => "graygate: invalid Transfer-Encoding\n",
            Refusal::BadTarget => "graygate: invalid request target\n",
        }
    }
}

/// Phase "edge": refuses the request, or makes it canonical in place (see the module
/// documentation). `strip_forwarded`: the peer is not a trusted proxy and the config asks for
/// its forwarding headers to be removed.
///
/// Costs nothing beyond a few header lookups and a scan of the path for a request that is
/// canonical already (nearly all of them): the URI is rebuilt only when the path changes.
pub fn admit<B>(req: &mut Request<B>, strip_forwarded: bool) -> Result<(), Refusal> {
    check_transfer_encoding(req.headers())?;
    admit_host(req)?;
    if let Some(path) = normalize_path(req.uri().path())? {
        let uri = with_path(req.uri(), &path).ok_or(Refusal::BadTarget)?;
        *req.uri_mut() = uri;
    }
    if strip_forwarded {
        strip_forwarding_headers(req.headers_mut());
    }
    Ok(())
}

/// The request's `Transfer-Encoding`: none, or `chunked` once.
fn check_transfer_encoding(headers: &HeaderMap) -> Result<(), Refusal> {
    let mut chunked = 0;
    for line in headers.get_all(TRANSFER_ENCODING) {
        let text = line.to_str().map_err(|_| Refusal::BadTransferEncoding)?;
        for coding in text.split(',').map(str::trim).filter(|c| !c.is_empty()) {
            if coding.eq_ignore_ascii_case("chunked") {
                chunked += 1;
            } else {
                return Err(Refusal::TransferCoding);
            }
        }
    }
    if chunked > 1 {
        return Err(Refusal::BadTransferEncoding);
    }
    Ok(())
}

/// One `Host`, valid, without a trailing dot; the authority of an absolute-form target instead
/// when there is one.
fn admit_host<B>(req: &mut Request<B>) -> Result<(), Refusal> {
    let mut lines = req.headers().get_all(HOST).iter();
    let header = lines.next();
    if lines.next().is_some() {
        return Err(Refusal::TwoHosts);
    }
    let (host, from_target) = match req.uri().authority() {
        Some(authority) => {
            if authority.as_str().contains('@') {
                return Err(Refusal::BadHost);
            }
            (Some(authority.as_str()), true)
        }
        None => match header {
            Some(value) => {
                let text = value.to_str().map_err(|_| Refusal::BadHost)?;
                ((!text.is_empty()).then_some(text), false)
            }
            None => (None, false),
        },
    };
    let Some(host) = host else {
        // HTTP/1.0 (and HTTP/2 without an authority) may go without.
        return if req.version() == Version::HTTP_11 {
            Err(Refusal::NoHost)
        } else {
            Ok(())
        };
    };
    let value = match normalize_host(host)? {
        Some(normal) => HeaderValue::from_str(&normal).map_err(|_| Refusal::BadHost)?,
        None if from_target => HeaderValue::from_str(host).map_err(|_| Refusal::BadHost)?,
        None => return Ok(()),
    };
    req.headers_mut().insert(HOST, value);
    Ok(())
}

/// The host as routing and the upstream see it: `Ok(None)` when it is canonical already,
/// `Ok(Some(..))` without the trailing dot of its name (`shop.example.:8080` ->
/// `shop.example:8080`), `Err` when it is not `host[:port]`.
pub fn normalize_host(value: &str) -> Result<Option<String>, Refusal> {
    if plainly_canonical_host(value.as_bytes()) {
        return Ok(None);
    }
    normalize_host_fully(value)
}

/// [`normalize_host`] without its fast path.
fn normalize_host_fully(value: &str) -> Result<Option<String>, Refusal> {
    if let Some(rest) = value.strip_prefix('[') {
        let (inside, port) = rest.split_once(']').ok_or(Refusal::BadHost)?;
        inside.parse::<Ipv6Addr>().map_err(|_| Refusal::BadHost)?;
        check_port(port)?;
        return Ok(None);
    }
    let (name, port) = match value.find(':') {
        Some(i) => value.split_at(i),
        None => (value, ""),
    };
    check_port(port)?;
    if !is_reg_name(name) {
        return Err(Refusal::BadHost);
    }
    let bare = name.strip_suffix('.').unwrap_or(name);
    // Every label has something in it: `a..b`, `.a` and `.` are no names.
    if bare.is_empty() || bare.split('.').any(str::is_empty) {
        return Err(Refusal::BadHost);
    }
    Ok((bare.len() != name.len()).then(|| format!("{bare}{port}")))
}

/// The host of nearly every request, checked in one pass over its bytes: labels of letters,
/// digits and `-` joined by single dots, no trailing dot, and an optional port of at most five
/// digits. True only for hosts that [`normalize_host`] leaves as they are; false sends the host
/// through the full check.
fn plainly_canonical_host(host: &[u8]) -> bool {
    let mut label = 0usize;
    let mut i = 0;
    while i < host.len() {
        match host[i] {
            b'.' if label > 0 => label = 0,
            b':' => break,
            c if c.is_ascii_alphanumeric() || c == b'-' => label += 1,
            _ => return false,
        }
        i += 1;
    }
    if label == 0 {
        // Empty, a trailing dot, or an empty label before the port.
        return false;
    }
    let port = &host[i..];
    port.is_empty() || (port.len() <= 6 && port[1..].iter().all(u8::is_ascii_digit))
}

/// `""` or `:` followed by at most five digits (RFC 3986 allows an empty port).
fn check_port(port: &str) -> Result<(), Refusal> {
    if port.is_empty() {
        return Ok(());
    }
    let digits = port.strip_prefix(':').ok_or(Refusal::BadHost)?;
    if digits.len() <= 5 && digits.bytes().all(|b| b.is_ascii_digit()) {
        Ok(())
    } else {
        Err(Refusal::BadHost)
    }
}

/// RFC 3986 reg-name (which covers IPv4 addresses): unreserved characters, sub-delims and
/// percent escapes.
fn is_reg_name(name: &str) -> bool {
    let b = name.as_bytes();
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'%' => {
                if !(hex(b.get(i + 1)).is_some() && hex(b.get(i + 2)).is_some()) {
                    return false;
                }
                i += 3;
                continue;
            }
            c if is_unreserved(c) || b"!$&'()*+,;=".contains(&c) => {}
            _ => return false,
        }
        i += 1;
    }
    true
}

/// `ALPHA DIGIT - . _ ~` (RFC 3986 2.3): the characters whose escapes mean the same as the
/// characters themselves.
fn is_unreserved(c: u8) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, b'-' | b'.' | b'_' | b'~')
}

fn hex(c: Option<&u8>) -> Option<u8> {
    (*c? as char).to_digit(16).map(|d| d as u8)
}

/// The canonical form of an origin-form path (see the module documentation): `Ok(None)` when
/// `path` is canonical already (or is not an origin-form path, like `*`), `Err` when a `%` in it
/// starts no escape. Normalising the result again changes nothing.
pub fn normalize_path(path: &str) -> Result<Option<String>, Refusal> {
    if !path.starts_with('/') || !may_need_normalizing(path) {
        return Ok(None);
    }
    let decoded = decode_unreserved(path).ok_or(Refusal::BadTarget)?;
    let mut segments: Vec<&str> = Vec::new();
    // Whether the path ends in a directory: its last segment is empty, `.` or `..`.
    let mut directory = false;
    for segment in decoded[1..].split('/') {
        directory = true;
        match segment {
            // An empty segment is a repeated (or trailing) slash: merged.
            "" | "." => {}
            ".." => {
                segments.pop();
            }
            name => {
                segments.push(name);
                directory = false;
            }
        }
    }
    let mut out = String::with_capacity(decoded.len());
    for segment in &segments {
        out.push('/');
        out.push_str(segment);
    }
    if directory || segments.is_empty() {
        out.push('/');
    }
    Ok((out != path).then_some(out))
}

/// The fast path's test: false when the path has no escape, no `//` and no `/.`, so that
/// [`normalize_path`] would return it as it is.
fn may_need_normalizing(path: &str) -> bool {
    let b = path.as_bytes();
    b.iter()
        .enumerate()
        .any(|(i, &c)| c == b'%' || (c == b'/' && matches!(b.get(i + 1), Some(b'/') | Some(b'.'))))
}

/// Escapes of unreserved characters decoded, the hex digits of the others upper-cased,
/// everything else as it was; `None` when a `%` starts no escape. Every `%` of the result starts
/// an escape it had before, so decoding again changes nothing.
fn decode_unreserved(path: &str) -> Option<String> {
    let b = path.as_bytes();
    let mut out = String::with_capacity(path.len());
    let mut copied = 0;
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let (hi, lo) = (hex(b.get(i + 1))?, hex(b.get(i + 2))?);
            out.push_str(&path[copied..i]);
            let c = hi << 4 | lo;
            if is_unreserved(c) {
                out.push(c as char);
            } else {
                out.push('%');
                out.push(b[i + 1].to_ascii_uppercase() as char);
                out.push(b[i + 2].to_ascii_uppercase() as char);
            }
            i += 3;
            copied = i;
            continue;
        }
        i += 1;
    }
    out.push_str(&path[copied..]);
    Some(out)
}

/// `uri` with its path replaced by `path` (scheme, authority and query kept).
fn with_path(uri: &Uri, path: &str) -> Option<Uri> {
    let path_and_query = match uri.query() {
        Some(query) => PathAndQuery::try_from(format!("{path}?{query}")),
        None => PathAndQuery::try_from(path),
    }
    .ok()?;
    let mut parts = uri.clone().into_parts();
    parts.path_and_query = Some(path_and_query);
    Uri::from_parts(parts).ok()
}

/// Removes `Forwarded` and every `X-Forwarded-*` header but `X-Forwarded-For`.
fn strip_forwarding_headers(headers: &mut HeaderMap) {
    let doomed: Vec<HeaderName> = headers
        .keys()
        .filter(|name| {
            **name == FORWARDED
                || (name.as_str().starts_with("x-forwarded-") && **name != X_FORWARDED_FOR)
        })
        .cloned()
        .collect();
    for name in doomed {
        headers.remove(name);
    }
}

/// An upstream response whose framing graygate will not pass on.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("upstream response has Transfer-Encoding `{codings}`: only chunked is passed on")]
pub struct UnsupportedCoding {
    /// The `Transfer-Encoding` as the upstream sent it.
    pub codings: String,
}

/// Phase "respond", framing: an upstream response with `Transfer-Encoding` loses its
/// `Content-Length` (hyper has decoded the chunked body; the length would cut it short on the
/// way to the client). A coding other than a single `chunked` is an error: the client would get
/// coded bytes as if they were the body.
pub fn check_response_framing(headers: &mut HeaderMap) -> Result<(), UnsupportedCoding> {
    if !headers.contains_key(TRANSFER_ENCODING) {
        return Ok(());
    }
    let codings: Vec<&str> = headers
        .get_all(TRANSFER_ENCODING)
        .iter()
        .map(|v| v.to_str().unwrap_or("?"))
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .filter(|c| !c.is_empty())
        .collect();
    if codings.len() != 1 || !codings[0].eq_ignore_ascii_case("chunked") {
        return Err(UnsupportedCoding {
            codings: codings.join(", "),
        });
    }
    headers.remove(CONTENT_LENGTH);
    Ok(())
}

/// How long a body may keep its reader waiting for the next frame. The clock runs only while
/// the body is asked for and has nothing; a frame stops it.
struct IdleClock {
    limit: Duration,
    /// Since when the reader has been waiting; `None` after a frame.
    waiting_since: Option<Instant>,
    /// Armed for the current wait's end (or for an earlier wait's, then moved on when it
    /// fires): one timer per body, set again at most once per `limit`.
    sleep: Option<Pin<Box<Sleep>>>,
}

impl IdleClock {
    fn new(limit: Duration) -> Self {
        IdleClock {
            limit,
            waiting_since: None,
            sleep: None,
        }
    }

    /// A frame came: the wait is over.
    fn progress(&mut self) {
        self.waiting_since = None;
    }

    /// The body had nothing for its reader: true once the reader has waited `limit`. Registers
    /// `cx` to be woken then.
    fn expired(&mut self, cx: &mut Context<'_>) -> bool {
        let since = *self.waiting_since.get_or_insert_with(Instant::now);
        let due = since + self.limit;
        let sleep = self
            .sleep
            .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(due)));
        loop {
            if sleep.as_mut().poll(cx).is_pending() {
                return false;
            }
            // Fired: at the end of this wait, or of an earlier one (then wait on).
            if sleep.deadline() >= due {
                return true;
            }
            sleep.as_mut().reset(due);
        }
    }
}

/// Why a client's request body failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientFault {
    /// Bad chunked framing, or the connection closed before the body was complete.
    Broken,
    /// Nothing arrived for [`Timeouts::client_body`](super::Timeouts::client_body).
    TimedOut,
}

impl ClientFault {
    /// 400 for a broken body, 408 for a late one.
    pub fn status(self) -> StatusCode {
        match self {
            ClientFault::Broken => StatusCode::BAD_REQUEST,
            ClientFault::TimedOut => StatusCode::REQUEST_TIMEOUT,
        }
    }

    /// The body the client gets, if it is still there to get it.
    pub fn body(self) -> &'static str {
        match self {
            ClientFault::Broken => "graygate: malformed or incomplete request body\n",
            ClientFault::TimedOut => "graygate: request body timed out\n",
        }
    }
}

/// The error the client's body (`ClientBody`) hands to the upstream exchange (which then fails): its source
/// says why.
#[derive(Debug, thiserror::Error)]
pub enum ClientBodyError {
    /// See [`ClientFault::TimedOut`].
    #[error("no request body data from the client for {0:?}")]
    TimedOut(Duration),
    /// See [`ClientFault::Broken`].
    #[error("the client's request body is malformed or incomplete")]
    Broken(#[source] BoxError),
}

/// What a request's handler and its [`ClientBody`] share: the request's progress (for the
/// upstream response timeout) and how the client's body failed, if it did. One allocation per
/// request, as the [`Activity`] alone was.
#[derive(Debug, Default)]
pub struct BodyState {
    /// When the request last made progress, and whether it now waits for the client.
    pub activity: Activity,
    /// 0: no fault; else a [`ClientFault`] (1 broken, 2 timed out).
    fault: AtomicU8,
}

impl BodyState {
    /// How the client's body failed, if it did.
    pub fn fault(&self) -> Option<ClientFault> {
        match self.fault.load(Ordering::Relaxed) {
            1 => Some(ClientFault::Broken),
            2 => Some(ClientFault::TimedOut),
            _ => None,
        }
    }

    fn set_fault(&self, fault: ClientFault) {
        let code = match fault {
            ClientFault::Broken => 1,
            ClientFault::TimedOut => 2,
        };
        self.fault.store(code, Ordering::Relaxed);
    }
}

/// The client's request body on its way upstream: records progress in the shared
/// [`BodyState`], says when graygate waits for the client, and fails when the client breaks
/// the body or leaves it stalled for `limit`. Otherwise passes the body through untouched (no
/// buffering, same size hint).
pub struct ClientBody<B> {
    inner: B,
    state: Arc<BodyState>,
    clock: IdleClock,
    /// True after the end or an error: nothing more comes.
    done: bool,
}

impl<B> ClientBody<B> {
    /// Wraps the client's body `inner`, which may wait at most `limit` for each frame.
    pub fn new(inner: B, state: Arc<BodyState>, limit: Duration) -> Self {
        ClientBody {
            inner,
            state,
            clock: IdleClock::new(limit),
            done: false,
        }
    }

    fn fail(&mut self, fault: ClientFault) {
        self.done = true;
        self.state.activity.wait_for_client(false);
        self.state.set_fault(fault);
    }
}

impl<B> Body for ClientBody<B>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: Into<BoxError>,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        if this.done {
            return Poll::Ready(None);
        }
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                this.state.activity.touch();
                this.state.activity.wait_for_client(false);
                this.clock.progress();
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(e))) => {
                this.fail(ClientFault::Broken);
                let error: BoxError = Box::new(ClientBodyError::Broken(e.into()));
                Poll::Ready(Some(Err(error)))
            }
            Poll::Ready(None) => {
                this.done = true;
                this.state.activity.wait_for_client(false);
                Poll::Ready(None)
            }
            Poll::Pending => {
                this.state.activity.wait_for_client(true);
                if this.clock.expired(cx) {
                    this.fail(ClientFault::TimedOut);
                    let error: BoxError = Box::new(ClientBodyError::TimedOut(this.clock.limit));
                    return Poll::Ready(Some(Err(error)));
                }
                Poll::Pending
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// An upstream response body that stalled.
#[derive(Debug, thiserror::Error)]
#[error("{server} sent no response body data for {after:?}")]
pub struct UpstreamBodyStalled {
    /// The server that stopped sending.
    pub server: Arc<str>,
    /// [`Timeouts::upstream_body`](super::Timeouts::upstream_body).
    pub after: Duration,
}

/// The upstream's response body on its way to the client: fails (and so closes the client's
/// connection, its response having started) when the upstream leaves it stalled for `limit`
/// while the client is ready for more. Otherwise passes the body through untouched.
pub struct UpstreamBody<B> {
    inner: B,
    clock: IdleClock,
    /// For the log line and the error.
    server: Arc<str>,
    /// True after the end or an error.
    done: bool,
}

impl<B> UpstreamBody<B> {
    /// Wraps the body `inner` of `server`'s response, which may wait at most `limit` per frame.
    pub fn new(inner: B, limit: Duration, server: Arc<str>) -> Self {
        UpstreamBody {
            inner,
            clock: IdleClock::new(limit),
            server,
            done: false,
        }
    }
}

impl<B> Body for UpstreamBody<B>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: Into<BoxError>,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        if this.done {
            return Poll::Ready(None);
        }
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                this.clock.progress();
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(e))) => {
                this.done = true;
                Poll::Ready(Some(Err(e.into())))
            }
            Poll::Ready(None) => {
                this.done = true;
                Poll::Ready(None)
            }
            Poll::Pending => {
                if !this.clock.expired(cx) {
                    return Poll::Pending;
                }
                this.done = true;
                let stalled = UpstreamBodyStalled {
                    server: this.server.clone(),
                    after: this.clock.limit,
                };
                warn!(server = %stalled.server, error = %stalled, "upstream body stalled: closing the client connection");
                let error: BoxError = Box::new(stalled);
                Poll::Ready(Some(Err(error)))
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests;
