//! The listener and the life of a request in it.
//!
//! [`serve`] accepts connections until its shutdown future resolves, then stops accepting and
//! waits for the connections it has to finish their in-flight requests (idle keep-alive
//! connections are closed at once). Each connection is served by one function,
//! `serve_connection`, generic over its I/O, so that TLS (a wrapped stream) and HTTP/2 (another
//! hyper builder in the same place) can be added without touching the request path.
//!
//! Every request walks the phases listed in the module overview ([`crate::proxy`]): client IP,
//! route, rewrite, upstream (with fallback to stable), respond, observe. Errors of graygate's own
//! are short `text/plain` answers that start with `graygate:` so that an operator can tell them
//! from the upstream's:
//! - 404 `graygate: no route` - the policy has no route for the request;
//! - 405 `graygate: CONNECT is not supported` - graygate is a reverse proxy, not a tunnel;
//! - 502 `graygate: upstream unavailable` - no server of the version (nor of stable) could be
//!   reached, or the exchange failed after the request went out;
//! - 504 `graygate: upstream timed out` - no response headers within
//!   [`Timeouts::upstream_response`];
//! - 431 (by hyper) - request headers larger than [`ProxyConfig::max_header_bytes`].

use std::cell::Cell;
use std::collections::hash_map::RandomState;
use std::convert::Infallible;
use std::future::Future;
use std::hash::BuildHasher;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::header::{HeaderName, HeaderValue, CONTENT_TYPE, HOST};
use http::{Method, Request, Response, StatusCode, Uri};
use http_body::{Body, Frame, SizeHint};
use http_body_util::{BodyExt, Empty, Full};
use hyper::body::Incoming;
use hyper::rt::{Read, Write};
use hyper::service::service_fn;
use hyper::upgrade::OnUpgrade;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch};
use tracing::{debug, warn};

use super::client_ip::ClientIpConfig;
use super::forward;
use super::prior_knowledge::{self, Sniffed};
use super::upstream::{Activity, LiveUpstreams, SendError, TrackedBody, UpstreamError};
use super::upstream_protocol;
use super::{Answer, ProxyBody, Router};
use crate::policy::{Decision, RequestFacts};

/// Body of the 404 answered when the policy has no route.
const NO_ROUTE: &str = "graygate: no route\n";
/// Body of the 502 answered when no upstream server could be reached or the exchange failed.
const UNAVAILABLE: &str = "graygate: upstream unavailable\n";
/// Body of the 504 answered when the upstream sent no response headers in time.
const TIMED_OUT: &str = "graygate: upstream timed out\n";
/// Body of the 405 answered to `CONNECT`.
const NO_CONNECT: &str = "graygate: CONNECT is not supported\n";

/// Smallest read buffer hyper accepts; also the default header limit's floor.
const MIN_BUF: usize = 8192;
/// hyper's default read buffer limit (8 KiB + 400 KiB): large enough that big bodies are read
/// in big chunks, whatever the header limit.
const DEFAULT_MAX_BUF: usize = 8192 + 4096 * 100;

/// Default size limit of a request head (request line and headers), as nginx's
/// `large_client_header_buffers` (4 x 8k): the one place this default is defined.
pub const DEFAULT_MAX_HEADER_BYTES: usize = 32 * 1024;

/// How long the data plane waits for each step, and how long it keeps idle connections.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timeouts {
    /// TCP connect to one upstream server; after it, the next server is tried. Short, because
    /// every server that is down costs a request this much. Default 2 s.
    pub connect: Duration,
    /// Client request headers must arrive within this (slowloris protection). hyper starts this
    /// clock also while a kept-alive client connection waits for its next request, so it bounds
    /// the idle time of client connections too. Default 10 s.
    pub header: Duration,
    /// Upstream response headers must arrive within this after the request (and its body)
    /// stopped moving; otherwise 504. Default 30 s.
    pub upstream_response: Duration,
    /// Keep-alive idle time of pooled upstream connections: older ones are closed instead of
    /// reused, since the upstream may have closed them already. (Idle client connections are
    /// closed after `header`, see there.) Default 60 s.
    pub idle: Duration,
}

impl Default for Timeouts {
    fn default() -> Self {
        Timeouts {
            connect: Duration::from_secs(2),
            header: Duration::from_secs(10),
            upstream_response: Duration::from_secs(30),
            idle: Duration::from_secs(60),
        }
    }
}

/// Settings of the data plane.
#[derive(Clone)]
pub struct ProxyConfig {
    /// Time bounds of every phase.
    pub timeouts: Timeouts,
    /// Largest request header section accepted; larger ones are answered 431. Bounds the memory
    /// a client can make graygate hold before a request is even routed.
    pub max_header_bytes: usize,
    /// How the client IP is found (trusted proxies).
    pub client_ip: ClientIpConfig,
    /// When set, the upstream receives this header naming the version that answers
    /// ([`crate::proxy::DEFAULT_VERSION_HEADER`] is the usual name), so that a service can
    /// tell canary traffic from stable traffic in its own logs.
    pub version_header: Option<HeaderName>,
    /// When set, the client's response carries this header naming the version that answered
    /// (or was last tried), so that a tester sees at once whether they reached the canary.
    /// Off by default: it tells every client that a canary exists.
    pub response_version_header: Option<HeaderName>,
    /// Told about every request (metrics, access log); `None` costs nothing.
    pub observer: Option<Arc<dyn Observer>>,
}

impl Default for ProxyConfig {
    fn default() -> Self {
        ProxyConfig {
            timeouts: Timeouts::default(),
            max_header_bytes: DEFAULT_MAX_HEADER_BYTES,
            client_ip: ClientIpConfig::default(),
            version_header: None,
            response_version_header: None,
            observer: None,
        }
    }
}

impl std::fmt::Debug for ProxyConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ProxyConfig")
            .field("timeouts", &self.timeouts)
            .field("max_header_bytes", &self.max_header_bytes)
            .field("client_ip", &self.client_ip)
            .field("version_header", &self.version_header)
            .field("response_version_header", &self.response_version_header)
            .field("observer", &self.observer.is_some())
            .finish()
    }
}

/// A hook at the end of every request, for metrics and the access log.
pub trait Observer: Send + Sync + 'static {
    /// Called once per request, when its response is done: the last byte of the body was
    /// handed to the client connection, or the body was abandoned (the client went away, the
    /// upstream failed mid-body, a `HEAD`). Runs on the client connection's task, before the
    /// connection moves on: keep it short (count, or hand the record to a channel). Also called
    /// for graygate's own answers (404, 405, 502, 504).
    fn on_response(&self, record: &RequestRecord<'_>) {
        let _ = record;
    }

    /// Called when a client connection is accepted, before its first request.
    fn on_connection_open(&self) {}

    /// Called once when a client connection ends, for every [`Observer::on_connection_open`]
    /// (also when its task is dropped at shutdown). A connection upgraded to a tunnel
    /// (WebSocket) counts as ended when the upgrade completes.
    fn on_connection_close(&self) {}
}

/// What happened to one request. Borrowed: an observer copies what it keeps.
#[derive(Debug)]
pub struct RequestRecord<'a> {
    /// Request method, as the client sent it.
    pub method: &'a Method,
    /// Request URI, as the client sent it.
    pub uri: &'a Uri,
    /// The resolved client IP (trusted proxies applied).
    pub client_ip: IpAddr,
    /// The policy's decision (route, service, version, typed reason); `None`: no route.
    pub choice: Option<&'a Decision>,
    /// The version that answered: the chosen one, or the stable one after a fallback.
    pub version: Option<&'a str>,
    /// Name of the upstream that answered (or was last tried).
    pub upstream: Option<&'a str>,
    /// `host:port` of the server that answered (or on which the exchange failed).
    pub server: Option<&'a str>,
    /// Status sent to the client.
    pub status: StatusCode,
    /// True when the chosen version could not be reached and stable was tried instead.
    pub fell_back: bool,
    /// Response body bytes handed to the client connection (headers and chunked framing not
    /// counted). Smaller than the body's length when the response was abandoned.
    pub bytes_sent: u64,
    /// From the request headers being read to the response being done (see
    /// [`Observer::on_response`]): includes streaming the body, as nginx's `$request_time`.
    pub total: Duration,
    /// How long the upstream took to send its response headers, if it did.
    pub upstream_headers: Option<Duration>,
}

/// Binds the listening socket. Kept apart from [`serve`] so that tests and the binary can bind
/// port 0 and learn the address before serving.
pub async fn bind(addr: SocketAddr) -> io::Result<TcpListener> {
    TcpListener::bind(addr).await
}

/// Everything a request needs, shared by all connections.
struct Shared {
    cfg: Arc<ProxyConfig>,
    upstreams: Arc<LiveUpstreams>,
    router: Arc<dyn Router>,
}

/// Serves HTTP/1.1 on `listener` until `shutdown` resolves, then stops accepting, lets the
/// open connections finish their in-flight requests, and returns when they have.
///
/// Upgraded connections (WebSocket tunnels) are not waited for: they run on until either side
/// closes them.
pub async fn serve(
    listener: TcpListener,
    cfg: Arc<ProxyConfig>,
    upstreams: Arc<LiveUpstreams>,
    router: Arc<dyn Router>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> io::Result<()> {
    let shared = Arc::new(Shared {
        cfg,
        upstreams,
        router,
    });
    // `stop` tells connections to finish; every connection holds a clone of `drain_tx`, so
    // `drain_rx` yields `None` once the last one is gone.
    let (stop_tx, stop_rx) = watch::channel(false);
    let (drain_tx, mut drain_rx) = mpsc::channel::<()>(1);
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            _ = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => {
                    let _ = stream.set_nodelay(true);
                    let open = OpenConnection::new(shared.cfg.observer.clone());
                    let conn = serve_connection(
                        TokioIo::new(stream),
                        peer,
                        shared.clone(),
                        stop_rx.clone(),
                    );
                    let drain = drain_tx.clone();
                    tokio::spawn(async move {
                        conn.await;
                        drop(open);
                        drop(drain);
                    });
                }
                Err(e) => {
                    // Out of file descriptors and the like: the error repeats until a
                    // connection closes, so pause instead of spinning on it.
                    warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
        }
    }
    drop(listener);
    let _ = stop_tx.send(true);
    drop(drain_tx);
    let _ = drain_rx.recv().await;
    Ok(())
}

/// Tells the observer that a client connection is open for as long as it lives, so that the
/// close is reported however the connection task ends (also when it is dropped).
struct OpenConnection(Option<Arc<dyn Observer>>);

impl OpenConnection {
    fn new(observer: Option<Arc<dyn Observer>>) -> Self {
        if let Some(observer) = &observer {
            observer.on_connection_open();
        }
        OpenConnection(observer)
    }
}

impl Drop for OpenConnection {
    fn drop(&mut self) {
        if let Some(observer) = &self.0 {
            observer.on_connection_close();
        }
    }
}

/// Serves one client connection: HTTP/1.1 with keep-alive and upgrades, or HTTP/2 when it
/// starts with the HTTP/2 preface (prior knowledge), until the client closes it, a timeout
/// closes it, or shutdown asks it to finish its in-flight requests.
async fn serve_connection<I>(
    io: I,
    peer: SocketAddr,
    shared: Arc<Shared>,
    mut stop: watch::Receiver<bool>,
) where
    I: Read + Write + Unpin + Send + 'static,
{
    let cfg = shared.cfg.clone();
    let service = service_fn(move |req| {
        let shared = shared.clone();
        async move { Ok::<_, Infallible>(handle(&shared, peer, req).await) }
    });
    let io = match prior_knowledge::sniff(io, cfg.timeouts.header).await {
        Ok(Sniffed::Http1(io)) => io,
        Ok(Sniffed::Http2(io)) => {
            let mut builder = hyper::server::conn::http2::Builder::new(TokioExecutor::new());
            builder
                .timer(TokioTimer::new())
                .max_header_list_size(u32::try_from(cfg.max_header_bytes).unwrap_or(u32::MAX));
            let conn = builder.serve_connection(io, service);
            tokio::pin!(conn);
            tokio::select! {
                result = conn.as_mut() => {
                    if let Err(e) = result {
                        debug!(peer = %peer, error = %e, "client connection ended with an error");
                    }
                }
                _ = async { let _ = stop.wait_for(|stop| *stop).await; } => {
                    conn.as_mut().graceful_shutdown();
                    if let Err(e) = conn.await {
                        debug!(peer = %peer, error = %e, "client connection ended with an error");
                    }
                }
            }
            return;
        }
        Err(e) => {
            debug!(peer = %peer, error = %e, "client connection ended before its first request");
            return;
        }
    };
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .keep_alive(true)
        .timer(TokioTimer::new())
        .header_read_timeout(cfg.timeouts.header)
        .max_header_size(cfg.max_header_bytes.max(1))
        .max_buf_size(DEFAULT_MAX_BUF.max(cfg.max_header_bytes.saturating_add(MIN_BUF)));
    let conn = builder.serve_connection(io, service).with_upgrades();
    tokio::pin!(conn);
    tokio::select! {
        result = conn.as_mut() => {
            if let Err(e) = result {
                debug!(peer = %peer, error = %e, "client connection ended with an error");
            }
        }
        _ = async { let _ = stop.wait_for(|stop| *stop).await; } => {
            conn.as_mut().graceful_shutdown();
            if let Err(e) = conn.await {
                debug!(peer = %peer, error = %e, "client connection ended with an error");
            }
        }
    }
}

/// What happened along the way, for the observer.
#[derive(Default)]
struct Outcome {
    choice: Option<Decision>,
    upstream: Option<usize>,
    server: Option<Arc<str>>,
    fell_back: bool,
    upstream_headers: Option<Duration>,
}

/// One request, all phases. Never fails: every error becomes a response.
async fn handle(shared: &Shared, peer: SocketAddr, req: Request<Incoming>) -> Response<ProxyBody> {
    let started = Instant::now();
    // Phase "client IP".
    let client_ip = shared.cfg.client_ip.resolve(peer.ip(), req.headers());
    let Some(observer) = shared.cfg.observer.as_ref() else {
        let mut outcome = Outcome::default();
        return proxy(shared, peer, client_ip, req, &mut outcome, started).await;
    };
    let method = req.method().clone();
    let uri = req.uri().clone();
    let mut outcome = Outcome::default();
    let response = proxy(shared, peer, client_ip, req, &mut outcome, started).await;
    // Phase "observe": reported when the body is done, so the record has its byte count.
    let report = Report {
        observer: observer.clone(),
        upstreams: shared.upstreams.clone(),
        method,
        uri,
        client_ip,
        status: response.status(),
        outcome,
        started,
    };
    response.map(|body| {
        ObservedBody {
            inner: body,
            report: Some(Box::new(report)),
            bytes_sent: 0,
        }
        .boxed()
    })
}

/// What the observer is told about a request, kept until its response body is done.
struct Report {
    observer: Arc<dyn Observer>,
    /// For the name of the upstream in `outcome` (indexes are stable across reloads).
    upstreams: Arc<LiveUpstreams>,
    method: Method,
    uri: Uri,
    client_ip: IpAddr,
    status: StatusCode,
    outcome: Outcome,
    started: Instant,
}

impl Report {
    fn send(self, bytes_sent: u64) {
        let outcome = &self.outcome;
        let table = self.upstreams.load();
        let choice = outcome.choice.as_ref();
        let version = choice.map(|c| {
            if outcome.fell_back {
                &*c.stable_version
            } else {
                &*c.version
            }
        });
        self.observer.on_response(&RequestRecord {
            method: &self.method,
            uri: &self.uri,
            client_ip: self.client_ip,
            choice,
            version,
            upstream: outcome.upstream.and_then(|i| table.name(i)),
            server: outcome.server.as_deref(),
            status: self.status,
            fell_back: outcome.fell_back,
            bytes_sent,
            total: self.started.elapsed(),
            upstream_headers: outcome.upstream_headers,
        });
    }
}

/// A response body that counts the bytes it hands to the client connection and reports the
/// request to the observer once: at its end, or when it is dropped before (the client went
/// away, hyper skipped the body of a `HEAD` or an empty one).
struct ObservedBody {
    inner: ProxyBody,
    /// Taken when reported.
    report: Option<Box<Report>>,
    bytes_sent: u64,
}

impl ObservedBody {
    fn finish(&mut self) {
        if let Some(report) = self.report.take() {
            report.send(self.bytes_sent);
        }
    }
}

impl Body for ObservedBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let this = &mut *self;
        let polled = Pin::new(&mut this.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    this.bytes_sent += data.len() as u64;
                }
                // hyper may not poll again after the last frame: report now rather than on
                // drop, before the client can see the end of the response.
                if this.inner.is_end_stream() {
                    this.finish();
                }
            }
            Poll::Ready(None) | Poll::Ready(Some(Err(_))) => this.finish(),
            Poll::Pending => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl Drop for ObservedBody {
    fn drop(&mut self) {
        self.finish();
    }
}

/// Phases "route", "rewrite", "upstream" and "respond".
async fn proxy(
    shared: &Shared,
    peer: SocketAddr,
    client_ip: IpAddr,
    mut req: Request<Incoming>,
    outcome: &mut Outcome,
    started: Instant,
) -> Response<ProxyBody> {
    if req.method() == Method::CONNECT {
        return text(StatusCode::METHOD_NOT_ALLOWED, NO_CONNECT);
    }

    // Phase "route".
    let choice = {
        let uri = req.uri();
        let host = req
            .headers()
            .get(HOST)
            .and_then(|h| h.to_str().ok())
            .or_else(|| uri.authority().map(|a| a.as_str()))
            .unwrap_or("");
        let facts = RequestFacts {
            host,
            path: uri.path(),
            query: uri.query(),
            client_ip,
            headers: req.headers(),
            random: random_u64(),
        };
        shared.router.route(facts).await
    };
    let Some(choice) = choice else {
        return text(StatusCode::NOT_FOUND, NO_ROUTE);
    };

    // Phase "rewrite". An upgrade's client side must be claimed before the request moves on.
    let upgrade = forward::is_upgrade_request(req.headers());
    let client_upgrade = upgrade.then(|| hyper::upgrade::on(&mut req));
    // `TE: trailers` is hop-by-hop, but an HTTP/2 upstream (gRPC) is to hear it again.
    upstream_protocol::note_te_trailers(&mut req);
    forward::rewrite_request(&mut req, peer.ip(), client_ip, upgrade);
    if let Some(name) = &shared.cfg.version_header {
        forward::set_version_header(req.headers_mut(), name, &choice.version);
    }
    let activity = Arc::new(Activity::new());
    let req = req.map(|body| TrackedBody::new(body, activity.clone()).boxed());

    // Phase "upstream", with the canary -> stable fallback while the body is still unread.
    outcome.upstream = Some(choice.upstream);
    let mut result = shared.upstreams.send(choice.upstream, req, &activity).await;
    if choice.upstream != choice.stable_upstream {
        if let Err(SendError::Unreachable { request, error }) = result {
            debug!(
                route = %choice.route,
                version = %choice.version,
                stable = %choice.stable_version,
                error = %error,
                "falling back to stable",
            );
            let mut request = *request;
            if let Some(name) = &shared.cfg.version_header {
                forward::set_version_header(request.headers_mut(), name, &choice.stable_version);
            }
            outcome.fell_back = true;
            outcome.upstream = Some(choice.stable_upstream);
            result = shared
                .upstreams
                .send(choice.stable_upstream, request, &activity)
                .await;
        }
    }

    let mut own_error = false;
    let response = match result {
        Ok(exchange) => {
            outcome.server = Some(exchange.server);
            outcome.upstream_headers = Some(exchange.headers_after);
            respond(exchange.response, client_upgrade, &choice)
        }
        Err(SendError::Unreachable { error, .. }) => {
            own_error = true;
            warn!(
                route = %choice.route,
                version = %choice.version,
                fell_back = outcome.fell_back,
                error = %error,
                "502: upstream unavailable",
            );
            text(StatusCode::BAD_GATEWAY, UNAVAILABLE)
        }
        Err(SendError::Failed { server, error }) => {
            own_error = true;
            let timed_out = matches!(error, UpstreamError::ResponseTimeout { .. });
            outcome.server = Some(server);
            if timed_out {
                warn!(route = %choice.route, version = %choice.version, error = %error, "504: upstream timed out");
                text(StatusCode::GATEWAY_TIMEOUT, TIMED_OUT)
            } else {
                warn!(route = %choice.route, version = %choice.version, error = %error, "502: upstream request failed");
                text(StatusCode::BAD_GATEWAY, UNAVAILABLE)
            }
        }
    };
    let mut response = response;
    if let Some(name) = &shared.cfg.response_version_header {
        let version = if outcome.fell_back {
            &choice.stable_version
        } else {
            &choice.version
        };
        forward::set_version_header(response.headers_mut(), name, version);
    }
    shared.router.answered(
        &choice,
        Answer {
            status: response.status().as_u16(),
            failed: own_error || outcome.fell_back,
            latency: started.elapsed(),
        },
    );
    outcome.choice = Some(choice);
    response
}

/// Phase "respond": the upstream's response, rewritten, its body streamed as is. A 101 to an
/// upgrade request starts the tunnel between the two upgraded connections.
fn respond(
    mut response: Response<Incoming>,
    client_upgrade: Option<OnUpgrade>,
    choice: &Decision,
) -> Response<ProxyBody> {
    if response.status() == StatusCode::SWITCHING_PROTOCOLS {
        let Some(client_upgrade) = client_upgrade else {
            // The upstream switched protocols nobody asked for: the client could not follow.
            warn!(route = %choice.route, version = %choice.version, "502: unrequested 101 from upstream");
            return text(StatusCode::BAD_GATEWAY, UNAVAILABLE);
        };
        let upstream_upgrade = hyper::upgrade::on(&mut response);
        tokio::spawn(tunnel(client_upgrade, upstream_upgrade));
        forward::rewrite_response(&mut response);
        return response.map(|_| empty());
    }
    forward::rewrite_response(&mut response);
    response.map(|body| body.boxed())
}

/// Copies bytes both ways between the client and the upstream once both sides have switched
/// protocols, until either side closes.
async fn tunnel(client: OnUpgrade, upstream: OnUpgrade) {
    let (client, upstream) = match tokio::try_join!(client, upstream) {
        Ok(both) => both,
        Err(e) => {
            debug!(error = %e, "upgrade did not complete");
            return;
        }
    };
    let mut client = TokioIo::new(client);
    let mut upstream = TokioIo::new(upstream);
    match tokio::io::copy_bidirectional(&mut client, &mut upstream).await {
        Ok((up, down)) => debug!(bytes_up = up, bytes_down = down, "tunnel closed"),
        Err(e) => debug!(error = %e, "tunnel closed with an error"),
    }
}

/// A short `text/plain` answer of graygate's own.
fn text(status: StatusCode, body: &'static str) -> Response<ProxyBody> {
    let mut response = Response::new(
        Full::new(Bytes::from_static(body.as_bytes()))
            .map_err(|never| match never {})
            .boxed(),
    );
    *response.status_mut() = status;
    response.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}

fn empty() -> ProxyBody {
    Empty::<Bytes>::new()
        .map_err(|never| match never {})
        .boxed()
}

/// A cheap random number per request ([`RequestFacts::random`]) for splits without an identity:
/// xorshift64* per thread, seeded from std's per-process random hasher keys, the time and the
/// thread. Not cryptographic; it only has to spread requests evenly.
fn random_u64() -> u64 {
    thread_local! {
        static STATE: Cell<u64> = Cell::new(seed());
    }
    STATE.with(|state| {
        let mut x = state.get();
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        state.set(x);
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    })
}

fn seed() -> u64 {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    let seed = RandomState::new().hash_one((now, std::thread::current().id()));
    // xorshift must not start at 0.
    seed | 1
}

#[cfg(test)]
mod tests {
    //! End-to-end tests of the data plane: a real proxy on 127.0.0.1:0 in front of tiny hyper
    //! backends that answer with their name. Each test is bounded by [`within`]; every server
    //! is stopped by its guard's `Drop`, also when the test fails.

    use super::*;
    use crate::policy::Reason;
    use crate::proxy::{ServerConfig, UpstreamConfig, DEFAULT_VERSION_HEADER};

    use std::pin::Pin;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Mutex;

    use futures_util::{SinkExt, StreamExt};
    use http::HeaderMap;
    use http_body::Frame;
    use http_body_util::StreamBody;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpStream;
    use tokio::sync::{oneshot, Notify};
    use tokio::task::JoinHandle;

    /// Bound of every test: a hang is a failure, not a stuck CI job.
    const TEST_DEADLINE: Duration = Duration::from_secs(60);
    /// 64 KiB chunks, 800 of them: 50 MiB without allocating 50 MiB.
    static CHUNK: [u8; 64 * 1024] = [b'g'; 64 * 1024];
    const CHUNKS: usize = 800;
    const BIG: usize = CHUNK.len() * CHUNKS;

    async fn within<F: Future>(f: F) -> F::Output {
        tokio::time::timeout(TEST_DEADLINE, f)
            .await
            .expect("test did not finish in time")
    }

    /// Polls `condition` until it holds; fails after a deadline.
    async fn eventually(what: &str, mut condition: impl FnMut() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while !condition() {
            assert!(Instant::now() < deadline, "timed out waiting for: {what}");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    // ----- a router that always answers the same -----

    struct Fixed(Option<Decision>);

    impl Router for Fixed {
        fn route<'a>(
            &'a self,
            _facts: RequestFacts<'a>,
        ) -> Pin<Box<dyn Future<Output = Option<Decision>> + Send + 'a>> {
            Box::pin(async move { self.0.clone() })
        }
    }

    // ----- backends -----

    type Handler = Arc<
        dyn Fn(Request<Incoming>) -> Pin<Box<dyn Future<Output = Response<ProxyBody>> + Send>>
            + Send
            + Sync,
    >;

    /// A hyper backend on 127.0.0.1:0 that counts the connections it accepted.
    struct Backend {
        addr: SocketAddr,
        connections: Arc<AtomicUsize>,
        task: JoinHandle<()>,
    }

    impl Drop for Backend {
        fn drop(&mut self) {
            self.task.abort();
        }
    }

    async fn backend(handler: Handler) -> Backend {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let connections = Arc::new(AtomicUsize::new(0));
        let counted = connections.clone();
        let task = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                counted.fetch_add(1, Ordering::SeqCst);
                let handler = handler.clone();
                tokio::spawn(async move {
                    let service = service_fn(move |req| {
                        let handler = handler.clone();
                        async move { Ok::<_, Infallible>(handler(req).await) }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        Backend {
            addr,
            connections,
            task,
        }
    }

    fn full(body: impl Into<Bytes>) -> ProxyBody {
        Full::new(body.into())
            .map_err(|never| match never {})
            .boxed()
    }

    /// A body of [`BIG`] bytes, produced chunk by chunk.
    fn big_body() -> ProxyBody {
        let chunks = futures_util::stream::iter(
            (0..CHUNKS).map(|_| Ok::<_, Infallible>(Frame::data(Bytes::from_static(&CHUNK)))),
        );
        BodyExt::boxed(StreamBody::new(chunks).map_err(|never| match never {}))
    }

    /// Answers `<name>\n<uri>\n` and then the request headers it got, one `name: value` a line.
    /// Its response carries hop-by-hop headers that must not reach the client.
    async fn echo_backend(name: &'static str) -> Backend {
        backend(Arc::new(move |req: Request<Incoming>| {
            Box::pin(async move {
                let mut body = format!("{name}\n{}\n", req.uri());
                for (k, v) in req.headers() {
                    body.push_str(&format!("{k}: {}\n", v.to_str().unwrap_or("?")));
                }
                Response::builder()
                    .header("x-backend", name)
                    .header("connection", "x-hop")
                    .header("x-hop", "1")
                    .header("keep-alive", "timeout=5")
                    .body(full(body))
                    .unwrap()
            })
        }))
        .await
    }

    /// Reads the whole request body, counting bytes, and answers the count.
    async fn counting_backend() -> Backend {
        backend(Arc::new(|req: Request<Incoming>| {
            Box::pin(async move {
                let mut body = req.into_body();
                let mut n = 0usize;
                while let Some(frame) = body.frame().await {
                    if let Ok(data) = frame.map(|f| f.into_data()) {
                        n += data.map(|d| d.len()).unwrap_or(0);
                    } else {
                        break;
                    }
                }
                Response::new(full(n.to_string()))
            })
        }))
        .await
    }

    /// Answers every request with a body of [`BIG`] bytes.
    async fn big_backend() -> Backend {
        backend(Arc::new(|_req| {
            Box::pin(async { Response::new(big_body()) })
        }))
        .await
    }

    /// An address on which nothing listens: connects are refused.
    async fn closed_addr() -> SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        listener.local_addr().unwrap()
    }

    /// A raw test server task, aborted when the test ends (also on failure).
    struct Stop(JoinHandle<()>);

    /// A raw TCP server on 127.0.0.1:0 that hands each connection it accepts to `serve`, one
    /// after the other; its address, and the guard that stops it.
    async fn raw_server<F, Fut>(mut serve: F) -> (SocketAddr, Stop)
    where
        F: FnMut(TcpStream) -> Fut + Send + 'static,
        Fut: Future<Output = ()> + Send,
    {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let task = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                serve(stream).await;
            }
        });
        (addr, Stop(task))
    }

    impl Drop for Stop {
        fn drop(&mut self) {
            self.0.abort();
        }
    }

    // ----- the proxy -----

    /// A running proxy; stopped on drop.
    struct Proxy {
        addr: SocketAddr,
        upstreams: Arc<LiveUpstreams>,
        stop: Option<oneshot::Sender<()>>,
        task: JoinHandle<io::Result<()>>,
    }

    impl Drop for Proxy {
        fn drop(&mut self) {
            self.task.abort();
        }
    }

    /// Builds a proxy for a test: upstreams, one fixed route, config tweaks.
    struct Setup {
        cfg: ProxyConfig,
        upstreams: Vec<UpstreamConfig>,
        route: Option<(&'static str, &'static str)>,
    }

    fn proxy() -> Setup {
        let mut cfg = ProxyConfig::default();
        cfg.timeouts.connect = Duration::from_secs(1);
        Setup {
            cfg,
            upstreams: Vec::new(),
            route: None,
        }
    }

    /// A proxy whose one upstream, `stable`, is served by `addr`; every request goes there.
    fn stable_proxy(addr: SocketAddr) -> Setup {
        proxy()
            .upstream("stable", &[(addr, 1)])
            .route("stable", "stable")
    }

    impl Setup {
        fn upstream(mut self, name: &str, servers: &[(SocketAddr, u32)]) -> Self {
            self.upstreams.push(UpstreamConfig {
                name: name.to_string(),
                servers: servers
                    .iter()
                    .map(|(addr, weight)| ServerConfig {
                        addr: addr.to_string(),
                        weight: *weight,
                    })
                    .collect(),
                transport: Default::default(),
            });
            self
        }

        /// Every request goes to `version`, falling back to `stable`.
        fn route(mut self, version: &'static str, stable: &'static str) -> Self {
            self.route = Some((version, stable));
            self
        }

        fn config(mut self, tweak: impl FnOnce(&mut ProxyConfig)) -> Self {
            tweak(&mut self.cfg);
            self
        }

        async fn start(self) -> Proxy {
            let upstreams =
                Arc::new(LiveUpstreams::new(self.upstreams, &self.cfg.timeouts).unwrap());
            let table = upstreams.current();
            let choice = self.route.map(|(version, stable)| Decision {
                upstream: table.index_of(version).unwrap(),
                stable_upstream: table.index_of(stable).unwrap(),
                route: "test-route".into(),
                service: "shop".into(),
                version: version.into(),
                stable_version: stable.into(),
                reason: Reason::Rule {
                    name: "test".into(),
                },
            });
            let listener = bind(SocketAddr::from(([127, 0, 0, 1], 0))).await.unwrap();
            let addr = listener.local_addr().unwrap();
            let (stop, stopped) = oneshot::channel::<()>();
            let task = tokio::spawn(serve(
                listener,
                Arc::new(self.cfg),
                upstreams.clone(),
                Arc::new(Fixed(choice)),
                async move {
                    let _ = stopped.await;
                },
            ));
            Proxy {
                addr,
                upstreams,
                stop: Some(stop),
                task,
            }
        }
    }

    // ----- a client -----

    /// One HTTP/1.1 client connection.
    struct Client {
        sender: hyper::client::conn::http1::SendRequest<ProxyBody>,
    }

    async fn client(addr: SocketAddr) -> Client {
        let stream = TcpStream::connect(addr).await.unwrap();
        let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .unwrap();
        tokio::spawn(conn);
        Client { sender }
    }

    impl Client {
        async fn send(&mut self, req: Request<ProxyBody>) -> Response<Incoming> {
            self.sender.ready().await.unwrap();
            self.sender.send_request(req).await.unwrap()
        }

        /// GET `path` with `headers`; the status, headers and whole body.
        async fn get(
            &mut self,
            path: &str,
            headers: &[(&str, &str)],
        ) -> (StatusCode, HeaderMap, String) {
            let mut req = Request::get(path).header("host", "app.example:8080");
            for (k, v) in headers {
                req = req.header(*k, *v);
            }
            let resp = self.send(req.body(full("")).unwrap()).await;
            let status = resp.status();
            let headers = resp.headers().clone();
            let body = resp.into_body().collect().await.unwrap().to_bytes();
            (status, headers, String::from_utf8_lossy(&body).into_owned())
        }
    }

    /// A request without a body for `path` on `app.example`.
    fn bodiless(method: Method, path: &str) -> Request<ProxyBody> {
        Request::builder()
            .method(method)
            .uri(path)
            .header("host", "app.example")
            .body(full(""))
            .unwrap()
    }

    async fn get(addr: SocketAddr, path: &str) -> (StatusCode, HeaderMap, String) {
        client(addr).await.get(path, &[]).await
    }

    /// The header lines an echo backend reported.
    fn echoed(body: &str) -> Vec<&str> {
        body.lines().skip(2).collect()
    }

    /// Records what the observer was told.
    #[derive(Default)]
    struct Recorder(Mutex<Vec<Seen>>);

    /// Status, fell back, version that answered, upstream that answered.
    type Seen = (StatusCode, bool, Option<String>, Option<String>);

    impl Observer for Recorder {
        fn on_response(&self, r: &RequestRecord<'_>) {
            self.0.lock().unwrap().push((
                r.status,
                r.fell_back,
                r.version.map(str::to_string),
                r.upstream.map(str::to_string),
            ));
        }
    }

    /// Records body bytes per request and counts connections.
    #[derive(Default)]
    struct Counting {
        bytes_sent: Mutex<Vec<u64>>,
        opened: AtomicUsize,
        closed: AtomicUsize,
    }

    impl Observer for Counting {
        fn on_response(&self, r: &RequestRecord<'_>) {
            self.bytes_sent.lock().unwrap().push(r.bytes_sent);
        }

        fn on_connection_open(&self) {
            self.opened.fetch_add(1, Ordering::SeqCst);
        }

        fn on_connection_close(&self) {
            self.closed.fetch_add(1, Ordering::SeqCst);
        }
    }

    // ----- tests -----

    #[tokio::test]
    async fn forwards_and_keeps_host() {
        within(async {
            let b = echo_backend("stable").await;
            let p = stable_proxy(b.addr).start().await;
            let (status, headers, body) = get(p.addr, "/hello?x=1").await;
            assert_eq!(status, StatusCode::OK);
            assert_eq!(headers["x-backend"], "stable");
            let mut lines = body.lines();
            assert_eq!(lines.next(), Some("stable"));
            assert_eq!(lines.next(), Some("/hello?x=1"));
            assert!(echoed(&body).contains(&"host: app.example:8080"), "{body}");
        })
        .await
    }

    #[tokio::test]
    async fn no_route_is_404() {
        within(async {
            let p = proxy().start().await;
            let (status, _, body) = get(p.addr, "/").await;
            assert_eq!(status, StatusCode::NOT_FOUND);
            assert_eq!(body, NO_ROUTE);
        })
        .await
    }

    #[tokio::test]
    async fn forwarded_for_appended_real_ip_set_spoof_ignored() {
        within(async {
            let b = echo_backend("stable").await;
            let p = stable_proxy(b.addr)
                .config(|c| c.version_header = Some(DEFAULT_VERSION_HEADER))
                .start()
                .await;
            let spoof = [("x-forwarded-for", "203.0.113.9"), ("x-real-ip", "6.6.6.6")];
            let (_, _, body) = client(p.addr).await.get("/", &spoof).await;
            let lines = echoed(&body);
            assert!(
                lines.contains(&"x-forwarded-for: 203.0.113.9, 127.0.0.1"),
                "{body}"
            );
            // 127.0.0.1 is not a trusted proxy: its headers say nothing about the client.
            assert!(lines.contains(&"x-real-ip: 127.0.0.1"), "{body}");
            assert!(lines.contains(&"x-graygate-version: stable"), "{body}");

            let trusting = stable_proxy(b.addr)
                .config(|c| c.client_ip.trusted_proxies = vec!["127.0.0.0/8".parse().unwrap()])
                .start()
                .await;
            let (_, _, body) = client(trusting.addr).await.get("/", &spoof).await;
            assert!(echoed(&body).contains(&"x-real-ip: 203.0.113.9"), "{body}");
        })
        .await
    }

    #[tokio::test]
    async fn hop_by_hop_headers_removed_both_ways() {
        within(async {
            let b = echo_backend("stable").await;
            let p = stable_proxy(b.addr).start().await;
            let (status, headers, body) = client(p.addr)
                .await
                .get(
                    "/",
                    &[
                        ("connection", "keep-alive, x-secret"),
                        ("x-secret", "1"),
                        ("keep-alive", "timeout=5"),
                        ("proxy-authorization", "Basic Zm9vOmJhcg=="),
                        ("te", "trailers"),
                        ("upgrade", "h2c"),
                        ("x-kept", "yes"),
                    ],
                )
                .await;
            assert_eq!(status, StatusCode::OK);
            let names: Vec<&str> = echoed(&body)
                .iter()
                .filter_map(|l| l.split(':').next())
                .collect();
            for gone in [
                "x-secret",
                "keep-alive",
                "proxy-authorization",
                "te",
                "upgrade",
            ] {
                assert!(!names.contains(&gone), "{gone} reached the backend: {body}");
            }
            assert!(names.contains(&"x-kept"), "{body}");
            // The backend's hop-by-hop headers do not reach the client.
            assert!(!headers.contains_key("x-hop"), "{headers:?}");
            assert!(!headers.contains_key("keep-alive"), "{headers:?}");
            assert_eq!(headers["x-backend"], "stable");
        })
        .await
    }

    #[tokio::test]
    async fn upstream_connections_are_kept_alive_and_reused() {
        within(async {
            let b = echo_backend("stable").await;
            let p = stable_proxy(b.addr).start().await;
            for _ in 0..50 {
                // A new client connection each time: the pool is per server, not per client.
                let (status, _, _) = get(p.addr, "/").await;
                assert_eq!(status, StatusCode::OK);
            }
            let opened = b.connections.load(Ordering::SeqCst);
            assert!(
                opened <= 5,
                "50 requests opened {opened} upstream connections"
            );
        })
        .await
    }

    #[tokio::test]
    async fn upstream_closing_kept_alive_connections_is_not_an_error() {
        within(async {
            // Answers one request per connection with a keep-alive response, then hangs up:
            // the pooled connection is dead when the next request wants it.
            let accepted = Arc::new(AtomicUsize::new(0));
            let counted = accepted.clone();
            let (rude_addr, _server) = raw_server(move |mut stream| {
                counted.fetch_add(1, Ordering::SeqCst);
                async move {
                    let mut head = Vec::new();
                    let mut buf = [0u8; 4096];
                    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                        match stream.read(&mut buf).await {
                            Ok(0) | Err(_) => break,
                            Ok(n) => head.extend_from_slice(&buf[..n]),
                        }
                    }
                    let _ = stream
                        .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
                        .await;
                    drop(stream);
                }
            })
            .await;
            let p = stable_proxy(rude_addr).start().await;
            let mut c = client(p.addr).await;
            for _ in 0..20 {
                let (status, _, body) = c.get("/", &[]).await;
                assert_eq!(status, StatusCode::OK);
                assert_eq!(body, "ok");
            }
            assert_eq!(accepted.load(Ordering::SeqCst), 20);
        })
        .await
    }

    #[tokio::test]
    async fn slow_request_headers_are_cut_off() {
        within(async {
            let p = proxy()
                .config(|c| c.timeouts.header = Duration::from_millis(200))
                .start()
                .await;
            let mut raw = TcpStream::connect(p.addr).await.unwrap();
            raw.write_all(b"GET / HTTP/1.1\r\nHost: app.example\r\n")
                .await
                .unwrap();
            let started = Instant::now();
            let mut rest = Vec::new();
            // The proxy closes the connection (possibly after a short error answer).
            let _ = raw.read_to_end(&mut rest).await;
            let took = started.elapsed();
            assert!(took < Duration::from_secs(5), "closed after {took:?}");
            assert!(!String::from_utf8_lossy(&rest).contains("200 OK"));
        })
        .await
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn concurrent_clients_share_the_pool() {
        within(async {
            let b = echo_backend("stable").await;
            let p = stable_proxy(b.addr).start().await;
            let mut tasks = Vec::new();
            for _ in 0..20 {
                let addr = p.addr;
                tasks.push(tokio::spawn(async move {
                    let mut c = client(addr).await;
                    for _ in 0..20 {
                        let (status, _, body) = c.get("/", &[]).await;
                        assert_eq!(status, StatusCode::OK);
                        assert!(body.starts_with("stable\n"));
                    }
                }));
            }
            for task in tasks {
                task.await.unwrap();
            }
            let opened = b.connections.load(Ordering::SeqCst);
            assert!(
                opened < 200,
                "400 requests opened {opened} upstream connections"
            );
        })
        .await
    }

    #[tokio::test]
    async fn weighted_round_robin_3_to_1() {
        within(async {
            let a = echo_backend("a").await;
            let b = echo_backend("b").await;
            let p = proxy()
                .upstream("stable", &[(a.addr, 3), (b.addr, 1)])
                .route("stable", "stable")
                .start()
                .await;
            let mut c = client(p.addr).await;
            let (mut on_a, mut on_b) = (0, 0);
            for _ in 0..400 {
                let (_, headers, _) = c.get("/", &[]).await;
                match headers["x-backend"].to_str().unwrap() {
                    "a" => on_a += 1,
                    _ => on_b += 1,
                }
            }
            assert_eq!((on_a, on_b), (300, 100));
        })
        .await
    }

    #[tokio::test]
    async fn connect_failure_is_retried_on_the_next_server() {
        within(async {
            let dead = closed_addr().await;
            let b = echo_backend("b").await;
            let p = proxy()
                .upstream("stable", &[(dead, 1), (b.addr, 1)])
                .route("stable", "stable")
                .start()
                .await;
            let mut c = client(p.addr).await;
            for _ in 0..4 {
                let (status, headers, _) = c.get("/", &[]).await;
                assert_eq!(status, StatusCode::OK);
                assert_eq!(headers["x-backend"], "b");
            }
            let failures = p
                .upstreams
                .current()
                .connect_failures(0, &dead.to_string())
                .unwrap();
            assert!(failures >= 1, "the dead server was never tried");
        })
        .await
    }

    #[tokio::test]
    async fn canary_down_is_answered_by_stable() {
        within(async {
            let stable = echo_backend("stable").await;
            let dead = closed_addr().await;
            let recorder = Arc::new(Recorder::default());
            let observer: Arc<dyn Observer> = recorder.clone();
            let p = proxy()
                .upstream("stable", &[(stable.addr, 1)])
                .upstream("canary", &[(dead, 1)])
                .route("canary", "stable")
                .config(|c| {
                    c.version_header = Some(DEFAULT_VERSION_HEADER);
                    c.observer = Some(observer);
                })
                .start()
                .await;
            let (status, _, body) = get(p.addr, "/").await;
            assert_eq!(status, StatusCode::OK);
            assert!(body.starts_with("stable\n"), "{body}");
            // The upstream is told the version that really answers.
            assert!(
                echoed(&body).contains(&"x-graygate-version: stable"),
                "{body}"
            );
            let records = recorder.0.lock().unwrap().clone();
            assert_eq!(
                records,
                vec![(
                    StatusCode::OK,
                    true,
                    Some("stable".to_string()),
                    Some("stable".to_string())
                )]
            );
        })
        .await
    }

    #[tokio::test]
    async fn stable_down_is_502() {
        within(async {
            let dead = closed_addr().await;
            let also_dead = closed_addr().await;
            let with_canary = proxy()
                .upstream("stable", &[(dead, 1)])
                .upstream("canary", &[(also_dead, 1)])
                .route("canary", "stable")
                .start()
                .await;
            let stable_only = stable_proxy(dead).start().await;
            for p in [with_canary, stable_only] {
                let (status, _, body) = get(p.addr, "/").await;
                assert_eq!(status, StatusCode::BAD_GATEWAY);
                assert_eq!(body, UNAVAILABLE);
            }
        })
        .await
    }

    #[tokio::test]
    async fn silent_upstream_is_504_within_the_timeout() {
        within(async {
            // Accepts connections, reads nothing, answers nothing.
            let mut held = Vec::new();
            let (silent_addr, _holder) = raw_server(move |stream| {
                held.push(stream);
                async {}
            })
            .await;
            let p = stable_proxy(silent_addr)
                .config(|c| c.timeouts.upstream_response = Duration::from_millis(300))
                .start()
                .await;
            let started = Instant::now();
            let (status, _, body) = get(p.addr, "/").await;
            let took = started.elapsed();
            assert_eq!(status, StatusCode::GATEWAY_TIMEOUT);
            assert_eq!(body, TIMED_OUT);
            assert!(
                took >= Duration::from_millis(300),
                "answered after {took:?}"
            );
            assert!(took < Duration::from_secs(5), "answered after {took:?}");
        })
        .await
    }

    #[tokio::test]
    async fn large_request_body_is_streamed_to_the_upstream() {
        within(async {
            let b = counting_backend().await;
            let p = stable_proxy(b.addr).start().await;
            let req = Request::post("/upload")
                .header("host", "app.example")
                .body(big_body())
                .unwrap();
            let resp = client(p.addr).await.send(req).await;
            assert_eq!(resp.status(), StatusCode::OK);
            let body = resp.into_body().collect().await.unwrap().to_bytes();
            assert_eq!(body, BIG.to_string());
        })
        .await
    }

    #[tokio::test]
    async fn large_response_body_is_streamed_back() {
        within(async {
            let b = big_backend().await;
            let p = stable_proxy(b.addr).start().await;
            let req = bodiless(Method::GET, "/download");
            let resp = client(p.addr).await.send(req).await;
            assert_eq!(resp.status(), StatusCode::OK);
            let mut body = resp.into_body();
            let mut received = 0usize;
            while let Some(frame) = body.frame().await {
                if let Ok(data) = frame.unwrap().into_data() {
                    received += data.len();
                }
            }
            assert_eq!(received, BIG);
        })
        .await
    }

    #[tokio::test]
    async fn websocket_echo_through_the_proxy() {
        within(async {
            // The backend speaks WebSocket on a raw TCP listener.
            let (ws_addr, _ws_backend) = raw_server(|stream| async move {
                tokio::spawn(async move {
                    let Ok(mut ws) = tokio_tungstenite::accept_async(stream).await else {
                        return;
                    };
                    while let Some(Ok(msg)) = ws.next().await {
                        if (msg.is_text() || msg.is_binary()) && ws.send(msg).await.is_err() {
                            return;
                        }
                    }
                });
            })
            .await;
            let p = stable_proxy(ws_addr).start().await;
            let (mut ws, response) =
                tokio_tungstenite::connect_async(format!("ws://{}/chat", p.addr))
                    .await
                    .unwrap();
            assert_eq!(response.status(), StatusCode::SWITCHING_PROTOCOLS);
            for text in ["hello graygate", "second message"] {
                ws.send(tokio_tungstenite::tungstenite::Message::text(text))
                    .await
                    .unwrap();
                let echoed = ws.next().await.unwrap().unwrap();
                assert_eq!(echoed.into_text().unwrap(), text);
            }
            ws.close(None).await.unwrap();
        })
        .await
    }

    #[tokio::test]
    async fn oversized_request_headers_are_431() {
        within(async {
            let b = echo_backend("stable").await;
            let p = stable_proxy(b.addr)
                .config(|c| c.max_header_bytes = 4096)
                .start()
                .await;
            // Just under the limit passes.
            let small = "a".repeat(2000);
            let (status, _, _) = client(p.addr).await.get("/", &[("x-big", &small)]).await;
            assert_eq!(status, StatusCode::OK);

            let mut raw = TcpStream::connect(p.addr).await.unwrap();
            let big = "a".repeat(10_000);
            let request = format!("GET / HTTP/1.1\r\nHost: app.example\r\nX-Big: {big}\r\n\r\n");
            raw.write_all(request.as_bytes()).await.unwrap();
            let mut answer = Vec::new();
            let mut buf = [0u8; 1024];
            while !answer.windows(2).any(|w| w == b"\r\n") {
                let n = raw.read(&mut buf).await.unwrap();
                if n == 0 {
                    break;
                }
                answer.extend_from_slice(&buf[..n]);
            }
            let answer = String::from_utf8_lossy(&answer);
            assert!(answer.starts_with("HTTP/1.1 431"), "{answer}");
        })
        .await
    }

    #[tokio::test]
    async fn shutdown_lets_in_flight_requests_finish() {
        within(async {
            let arrived = Arc::new(AtomicUsize::new(0));
            let release = Arc::new(Notify::new());
            let (seen, gate) = (arrived.clone(), release.clone());
            let b = backend(Arc::new(move |_req| {
                let (seen, gate) = (seen.clone(), gate.clone());
                Box::pin(async move {
                    seen.fetch_add(1, Ordering::SeqCst);
                    gate.notified().await;
                    Response::new(full("done"))
                })
            }))
            .await;
            let mut p = stable_proxy(b.addr).start().await;
            let addr = p.addr;
            let in_flight = tokio::spawn(async move { get(addr, "/slow").await });
            eventually("request reaches the backend", || {
                arrived.load(Ordering::SeqCst) == 1
            })
            .await;

            p.stop.take().unwrap().send(()).unwrap();
            // New connections are refused once the listener is closed...
            let deadline = Instant::now() + Duration::from_secs(10);
            while TcpStream::connect(addr).await.is_ok() {
                assert!(Instant::now() < deadline, "listener still open");
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            assert!(
                !p.task.is_finished(),
                "serve returned with a request in flight"
            );
            // ...and the request in flight still gets its answer.
            release.notify_one();
            let (status, _, body) = in_flight.await.unwrap();
            assert_eq!(status, StatusCode::OK);
            assert_eq!(body, "done");
            (&mut p.task).await.unwrap().unwrap();
        })
        .await
    }

    #[tokio::test]
    async fn the_observer_sees_body_bytes_connections_and_abandoned_bodies() {
        within(async {
            let b = big_backend().await;
            let seen = Arc::new(Counting::default());
            let observer: Arc<dyn Observer> = seen.clone();
            let p = stable_proxy(b.addr)
                .config(|c| {
                    c.observer = Some(observer);
                    c.response_version_header = Some(DEFAULT_VERSION_HEADER);
                })
                .start()
                .await;

            // A whole body: reported once, with every byte.
            let mut c = client(p.addr).await;
            let resp = c.send(bodiless(Method::GET, "/download")).await;
            assert_eq!(resp.headers()["x-graygate-version"], "stable");
            let body = resp.into_body().collect().await.unwrap().to_bytes();
            assert_eq!(body.len(), BIG);
            eventually("the whole body is reported", || {
                seen.bytes_sent.lock().unwrap().len() == 1
            })
            .await;
            assert_eq!(*seen.bytes_sent.lock().unwrap(), vec![BIG as u64]);
            assert_eq!(seen.opened.load(Ordering::SeqCst), 1);
            assert_eq!(seen.closed.load(Ordering::SeqCst), 0);

            // HEAD: no body goes out.
            let head = bodiless(Method::HEAD, "/download");
            let resp = c.send(head).await;
            assert_eq!(resp.status(), StatusCode::OK);
            let _ = resp.into_body().collect().await;
            eventually("the HEAD is reported", || {
                seen.bytes_sent.lock().unwrap().len() == 2
            })
            .await;
            assert_eq!(seen.bytes_sent.lock().unwrap()[1], 0);
            drop(c);
            eventually("the connection is closed", || {
                seen.closed.load(Ordering::SeqCst) == 1
            })
            .await;

            // A client that goes away after the first chunk: reported with what was sent.
            let mut c = client(p.addr).await;
            let mut body = c.send(bodiless(Method::GET, "/download")).await.into_body();
            let first = body.frame().await.unwrap().unwrap();
            assert!(first.is_data());
            drop(body);
            drop(c);
            eventually("the abandoned body is reported", || {
                seen.bytes_sent.lock().unwrap().len() == 3
            })
            .await;
            let sent = seen.bytes_sent.lock().unwrap()[2];
            assert!(sent > 0 && sent < BIG as u64, "{sent} bytes reported");
            eventually("both connections are closed", || {
                seen.closed.load(Ordering::SeqCst) == 2
            })
            .await;
            assert_eq!(seen.opened.load(Ordering::SeqCst), 2);
        })
        .await
    }
}
