//! The listener and the life of a request in it.
//!
//! [`serve`] accepts connections until its shutdown future resolves, then stops accepting and
//! waits for the connections it has to finish their in-flight requests (idle keep-alive
//! connections are closed at once). What a listener speaks before HTTP is its [`Front`]: plain
//! TCP, plain TCP answering with redirects to HTTPS, or TLS. Each connection then finds its
//! protocol (ALPN on TLS, the HTTP/2 preface on plain TCP: `protocol`) and is served by one
//! function, `serve_connection`, generic over its I/O, with hyper's HTTP/1.1 or HTTP/2 server.
//! An HTTP/1.1 connection, plain or TLS, starts on graygate's own loop instead (`http1`), which
//! serves bodiless requests itself and gives the connection to `serve_connection` at the first
//! request it does not take. Every request of any of them, every HTTP/2 stream, goes through
//! the same `handle`.
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
//! - 431 (by hyper) - request headers larger than [`ProxyConfig::max_header_bytes`];
//! - 400, 501 - refused at the edge ([`crate::proxy::Refusal`]: two `Host` headers, none on
//!   HTTP/1.1, an unsupported transfer coding), the connection closed after the answer;
//! - 400 `graygate: malformed or incomplete request body`, 408 `graygate: request body timed
//!   out` - the client broke its body or left it stalled for [`Timeouts::client_body`]: a client
//!   error, not held against the version ([`Router::answered`] is not told); the connection is
//!   closed after the answer.

use std::cell::Cell;
use std::collections::hash_map::RandomState;
use std::convert::Infallible;
use std::future::Future;
use std::hash::BuildHasher;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use http::header::{HeaderName, HeaderValue, CONNECTION, CONTENT_TYPE, HOST};
use http::{Method, Request, Response, StatusCode, Uri, Version};
use http_body::{Body, Frame, SizeHint};
use http_body_util::{BodyExt, Empty, Full};
use hyper::rt::{Read, Write};
use hyper::service::service_fn;
use hyper::upgrade::OnUpgrade;
use hyper_util::rt::{TokioIo, TokioTimer};
use tracing::{debug, info, warn};

use super::client_ip::ClientIpConfig;
use super::http2::{self, Http2Settings, OpenStreamBody, Streams};
use super::listen::{self, ConnectionLimit, DEFAULT_MAX_CONNECTIONS};
use super::mirror::{self as mirroring, MirrorRecord};
use super::protocol::{self, Protocol, Rewind};
use super::retry::Replay;
use super::ticks::{self, TickClock};
use super::tls::{HttpsRedirect, TlsTerminator};
use super::upstream::{LiveUpstreams, SendError, SendOptions, UpstreamError, UpstreamIncoming};
use super::upstream_protocol;
use super::{edge, forward};
use super::{Answer, BoxError, ProxyBody, Router};
use crate::policy::{Decision, Note, RequestFacts};
use shutdown::Shutdown;

mod http1;
mod shutdown;

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
    /// A client's request body must make progress within this: it bounds the wait for each
    /// piece of the body, counted only while graygate is ready for more (an upstream slow to
    /// read does not count against the client). Expired: 408 and the connection is closed, or,
    /// once the response has started, the connection is closed. Default 30 s.
    pub client_body: Duration,
    /// An upstream's response body must make progress within this, counted the same way (a
    /// client slow to read does not count against the upstream). Expired: the response has
    /// started, so the client's connection is closed. Default 60 s.
    pub upstream_body: Duration,
    /// At shutdown (SIGTERM, Ctrl-C), how long the connections that are still open may take to
    /// finish their in-flight requests; past it they are closed, and the exit says how many.
    /// Default 20 s: under Kubernetes' 30 s grace period and systemd's 90 s stop timeout, so
    /// graygate ends on its own terms, not by SIGKILL. Set at start.
    pub shutdown: Duration,
}

impl Default for Timeouts {
    fn default() -> Self {
        Timeouts {
            connect: Duration::from_secs(2),
            header: Duration::from_secs(10),
            upstream_response: Duration::from_secs(30),
            idle: Duration::from_secs(60),
            client_body: Duration::from_secs(30),
            upstream_body: Duration::from_secs(60),
            shutdown: Duration::from_secs(20),
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
    /// Limits of HTTP/2 client connections (`[http2]`); the header list size is
    /// `max_header_bytes`.
    pub http2: Http2Settings,
    /// Client connections open at once on every listener served with this config (plain and
    /// TLS together: `max_connections`): bounds the file descriptors and memory clients can
    /// take. At the limit, new clients wait in the listen backlog.
    pub connections: ConnectionLimit,
    /// Set when this process hands its listeners to a new one (an upgrade): HTTP/1.1 answers
    /// then close their connection, so that keep-alive clients move to the new process between
    /// two requests instead of meeting a connection closed under a request.
    pub draining: Draining,
}

/// Whether the listeners are being handed over ([`ProxyConfig::draining`]). Shared by every
/// listener of a process; once on, it stays on.
#[derive(Debug, Clone, Default)]
pub struct Draining(Arc<std::sync::atomic::AtomicBool>);

impl Draining {
    /// From now on, every HTTP/1.1 answer closes its connection.
    pub fn start(&self) {
        self.0.store(true, Ordering::SeqCst);
    }

    /// Whether [`Draining::start`] was called.
    pub fn is_on(&self) -> bool {
        self.0.load(Ordering::Relaxed)
    }
}

/// How long, after a hand-over, an HTTP/1.1 keep-alive connection of the old process that is
/// idle may still send one more request (answered, with `Connection: close`) before it is
/// closed. A client sending all the time moves over within one request; one that is idle longer
/// than this is closed as at any shutdown.
pub const HANDOVER_LINGER: Duration = Duration::from_secs(1);

impl Default for ProxyConfig {
    fn default() -> Self {
        ProxyConfig {
            timeouts: Timeouts::default(),
            max_header_bytes: DEFAULT_MAX_HEADER_BYTES,
            client_ip: ClientIpConfig::default(),
            version_header: None,
            response_version_header: None,
            observer: None,
            http2: Http2Settings::default(),
            connections: ConnectionLimit::new("data", DEFAULT_MAX_CONNECTIONS),
            draining: Draining::default(),
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
            .field("http2", &self.http2)
            .field("connections", &self.connections)
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

    /// Called for what happens to a service's mirror ([`MirrorRecord`]): on the request path
    /// for the decision and a skip, on the copy's task for the rest. Keep it short.
    fn on_mirror(&self, record: &MirrorRecord<'_>) {
        let _ = record;
    }
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
    /// True when the chosen version had no server in service (health checks, ejection), so
    /// that the request went to stable without trying it (`fell_back` is set too).
    pub unhealthy: bool,
    /// True when the request was sent a second time because its server died before answering.
    pub retried: bool,
    /// Response body bytes handed to the client connection (headers and chunked framing not
    /// counted). Smaller than the body's length when the response was abandoned.
    pub bytes_sent: u64,
    /// From the request headers being read to the response being done (see
    /// [`Observer::on_response`]): includes streaming the body, as nginx's `$request_time`.
    pub total: Duration,
    /// How long the upstream took to send its response headers, if it did.
    pub upstream_headers: Option<Duration>,
}

/// Everything a request needs, shared by all connections of a listener.
struct Shared {
    cfg: Arc<ProxyConfig>,
    upstreams: Arc<LiveUpstreams>,
    router: Arc<dyn Router>,
    /// Set on plain listeners when `[tls] redirect_http` is on: every request is answered with
    /// this redirect instead of being proxied.
    redirect: Option<HttpsRedirect>,
    /// The listener speaks TLS.
    https: bool,
    /// Tells this listener's connections to stop, then to close.
    shutdown: Shutdown,
    /// The header timeout of its idle HTTP/1.1 connections.
    idle: TickClock,
}

/// What a listener speaks before HTTP.
#[derive(Debug, Clone)]
pub enum Front {
    /// Plain TCP: HTTP/1.1, or HTTP/2 with prior knowledge (h2c).
    Plain,
    /// Plain TCP whose requests are all answered with a redirect to HTTPS.
    Redirect(HttpsRedirect),
    /// TLS: HTTP/2 or HTTP/1.1, as the client chose by ALPN.
    Tls(TlsTerminator),
}

/// Serves plain HTTP/1.1 and h2c on `listener` until `shutdown` resolves, then stops
/// accepting, lets the open connections finish their in-flight requests, and returns when
/// they have. [`serve_front`] serves another [`Front`].
///
/// Upgraded connections (WebSocket tunnels) are not waited for: they run on until either side
/// closes them.
pub async fn serve(
    listener: listen::Listener,
    cfg: Arc<ProxyConfig>,
    upstreams: Arc<LiveUpstreams>,
    router: Arc<dyn Router>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> io::Result<()> {
    serve_front(listener, Front::Plain, cfg, upstreams, router, shutdown).await
}

/// [`serve`] with what the listener speaks before HTTP: plain, redirecting, or TLS.
pub async fn serve_front(
    listener: listen::Listener,
    front: Front,
    cfg: Arc<ProxyConfig>,
    upstreams: Arc<LiveUpstreams>,
    router: Arc<dyn Router>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> io::Result<()> {
    let (redirect, tls) = match front {
        Front::Plain => (None, None),
        Front::Redirect(redirect) => (Some(redirect), None),
        Front::Tls(tls) => (None, Some(tls)),
    };
    let idle = TickClock::new(cfg.timeouts.header);
    let shared = Arc::new(Shared {
        cfg,
        upstreams,
        router,
        redirect,
        https: tls.is_some(),
        shutdown: Shutdown::default(),
        idle,
    });
    // Wakes idle connections at their header timeout, until stop.
    tokio::spawn(ticks::sweep(
        Arc::downgrade(&shared),
        |shared: &Shared| &shared.idle,
        |shared: &Shared| shared.shutdown.is_stopping(),
    ));
    // `shared.shutdown` tells connections to finish, and past the shutdown deadline to close;
    // it counts them too (`Open`).
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            _ = &mut shutdown => break,
            // Waits while the listeners are at `max_connections`, and pauses when out of file
            // descriptors (`listen`).
            (stream, peer, slot) = listen::accept(&listener, &shared.cfg.connections) => {
                let _ = stream.set_nodelay(true);
                let open = Open::new(shared.clone(), slot);
                // Every step of a connection ends at close by itself (`Shutdown`), so its task
                // waits on nothing else.
                match &tls {
                    None => {
                        let read = BytesMut::new();
                        tokio::spawn(plain(http1::Conn { stream, read, peer }, open))
                    }
                    Some(tls) => {
                        let tls = tls.clone();
                        // Boxed, so that the task is the size of what it runs: the state of a
                        // TLS connection (the handshake, rustls' connection, hyper over it) is
                        // tens of kilobytes.
                        tokio::spawn(async move {
                            Box::pin(accept_tls(stream, tls, peer, open.shared.clone())).await;
                            drop(open);
                        })
                    }
                };
            }
        }
    }
    drop(listener);
    let shutdown = &shared.shutdown;
    if shared.cfg.draining.is_on() {
        // Handed over: the new process accepts from the same sockets. HTTP/1.1 connections close
        // after their next answer; idle ones get a moment to send one before they are closed.
        let _ = tokio::time::timeout(HANDOVER_LINGER, shutdown.all_gone()).await;
    }
    shutdown.stop();
    shared.idle.wake_all();
    let deadline = shared.cfg.timeouts.shutdown;
    if tokio::time::timeout(deadline, shutdown.all_gone())
        .await
        .is_err()
    {
        let left = shutdown.open();
        // One line per listening socket: with several workers, each worker's own.
        warn!(
            connections = left,
            deadline = ?deadline,
            worker = super::workers::current(),
            "shutdown: {left} connection(s) still busy after timeouts.shutdown were closed"
        );
        shutdown.close();
        shutdown.all_gone().await;
    }
    Ok(())
}

/// One open client connection, for as long as its task lives (also when the task is dropped):
/// it holds the connection's place in the listener's limit, counts it as open for shutdown,
/// and tells the observer of the open and the close, however the task ends. It also holds the
/// listener's shared state, which the connection reads through it: one reference per
/// connection, where a task held four (its share of the state, the count, the observer and the
/// shutdown's channel).
struct Open {
    shared: Arc<Shared>,
    /// Given back before the connection stops being counted (`Drop`), so that when the last
    /// count is gone, so is every slot.
    slot: Option<listen::Slot>,
}

impl Open {
    fn new(shared: Arc<Shared>, slot: listen::Slot) -> Self {
        shared.shutdown.opened();
        if let Some(observer) = &shared.cfg.observer {
            observer.on_connection_open();
        }
        Open {
            shared,
            slot: Some(slot),
        }
    }
}

impl Drop for Open {
    fn drop(&mut self) {
        drop(self.slot.take());
        if let Some(observer) = &self.shared.cfg.observer {
            observer.on_connection_close();
        }
        self.shared.shutdown.closed_one();
    }
}

/// The task of one plain-TCP connection: the look at its first bytes that tells HTTP/2 with
/// prior knowledge from HTTP/1.1 (bounded by the header timeout: a client that connects and
/// sends nothing is closed then; given up at stop), then graygate's own HTTP/1.1 loop, which
/// leaves to hyper what it does not take, or hyper's HTTP/2.
///
/// A block over its arguments, used in place, not an `async fn` (which would move each into a
/// local of its own and keep both): an idle kept-alive connection is this task, so each byte of
/// it is a byte per idle connection (issue 15 asks for no more than 1.5x nginx's).
#[allow(
    clippy::manual_async_fn,
    reason = "an `async fn` keeps a second copy of its arguments"
)]
fn plain(
    mut conn: http1::Conn<tokio::net::TcpStream>,
    open: Open,
) -> impl Future<Output = ()> + Send + 'static {
    async move {
        let within = open.shared.cfg.timeouts.header;
        let detect = protocol::detect(&mut conn.stream, &mut conn.read, within);
        // Boxed: the look's timer is held only while it looks.
        let protocol = match Box::pin(open.shared.shutdown.unless_stopped(detect)).await {
            Some(Ok(protocol)) => protocol,
            Some(Err(e)) => {
                return debug!(peer = %conn.peer, error = %e, "client connection closed")
            }
            None => return,
        };
        if protocol == Protocol::Http1 {
            if http1::serve(&mut conn, &open.shared).await == http1::Next::Hyper {
                Box::pin(http1::to_hyper(conn, open.shared.clone())).await
            }
        } else {
            // Boxed: a future awaited inside another is stored in it more than once (its
            // arguments, then its running state), at every level; one box of its own size
            // keeps the task that holds it small.
            let io = TokioIo::new(Rewind::new(conn.read.freeze(), conn.stream));
            Box::pin(serve_connection(
                io,
                protocol,
                conn.peer,
                open.shared.clone(),
            ))
            .await
        }
    }
}

/// The TLS handshake of a connection on a TLS listener (bounded by the header timeout, given up
/// at stop), then HTTP as ALPN chose: graygate's own HTTP/1.1 loop, as on plain TCP, or hyper.
async fn accept_tls(
    stream: tokio::net::TcpStream,
    tls: TlsTerminator,
    peer: SocketAddr,
    shared: Arc<Shared>,
) {
    let within = shared.cfg.timeouts.header;
    let handshake = tls.handshake(stream, within);
    let Some(handshake) = shared.shutdown.unless_stopped(handshake).await else {
        return;
    };
    match handshake {
        Ok((stream, Protocol::Http1)) => {
            let read = BytesMut::new();
            let mut conn = http1::Conn { stream, read, peer };
            if http1::serve(&mut conn, &shared).await == http1::Next::Hyper {
                http1::to_hyper(conn, shared).await
            }
        }
        Ok((stream, protocol)) => {
            serve_connection(TokioIo::new(stream), protocol, peer, shared).await
        }
        Err(e) => debug!(peer = %peer, error = %e, "TLS connection closed"),
    }
}

/// Serves one client connection until the client closes it, a timeout closes it, or shutdown
/// asks it to finish its in-flight requests: HTTP/1.1 with keep-alive and upgrades, or HTTP/2
/// with the `[http2]` limits, closed when no stream has been open for the header timeout.
async fn serve_connection<I>(io: I, protocol: Protocol, peer: SocketAddr, shared: Arc<Shared>)
where
    I: Read + Write + Unpin + Send + 'static,
{
    let cfg = shared.cfg.clone();
    let driving = shared.clone();
    match protocol {
        Protocol::Http1 => {
            let service = service_fn(move |req| {
                let shared = shared.clone();
                let answer = async move { Ok::<_, Infallible>(answer(&shared, peer, req).await) };
                // Boxed per request: hyper keeps a slot the size of the service's future for the
                // whole life of the connection, idle or not, and a request's future is
                // kilobytes. Boxed, the slot is a pointer, and the memory is held only while a
                // request is in flight.
                Box::pin(answer)
            });
            let mut builder = hyper::server::conn::http1::Builder::new();
            builder
                .keep_alive(true)
                .timer(TokioTimer::new())
                .header_read_timeout(cfg.timeouts.header)
                .max_header_size(cfg.max_header_bytes.max(1))
                .max_buf_size(DEFAULT_MAX_BUF.max(cfg.max_header_bytes.saturating_add(MIN_BUF)));
            let conn = builder.serve_connection(io, service).with_upgrades();
            drive(
                conn,
                |c| c.graceful_shutdown(),
                peer,
                &driving.shutdown,
                None,
            )
            .await;
        }
        Protocol::Http2 => {
            let streams = Streams::new();
            let counted = streams.clone();
            let service = service_fn(move |req| {
                let shared = shared.clone();
                let open = counted.open();
                async move {
                    let response = respond_to(&shared, peer, req).await;
                    Ok::<_, Infallible>(response.map(|inner| OpenStreamBody { inner, _open: open }))
                }
            });
            let conn =
                http2::builder(&cfg.http2, cfg.max_header_bytes).serve_connection(io, service);
            let idle = Some((streams, cfg.timeouts.header));
            // Boxed for the reason `serve_front` boxes TLS: HTTP/2's connection state is several
            // times HTTP/1.1's, and most connections are HTTP/1.1.
            Box::pin(drive(
                conn,
                |c| c.graceful_shutdown(),
                peer,
                &driving.shutdown,
                idle,
            ))
            .await;
        }
    }
}

/// Runs a connection (hyper's of either protocol) to its end; at stop, or when `idle` says
/// that no stream has been open for that long (HTTP/2), it is asked to finish gracefully; at
/// close, it is dropped.
async fn drive<C: Future<Output = hyper::Result<()>>>(
    conn: C,
    graceful_shutdown: fn(Pin<&mut C>),
    peer: SocketAddr,
    shutdown: &Shutdown,
    idle: Option<(Arc<Streams>, Duration)>,
) {
    let run = async move {
        tokio::pin!(conn);
        let idle_check = |streams: &Streams, limit: Duration| match streams.idle_for() {
            Some(idle) if idle >= limit => None,
            Some(idle) => Some(limit - idle),
            None => Some(limit),
        };
        let mut next_check = idle.as_ref().map(|(_, limit)| *limit);
        loop {
            let wait = next_check;
            let idle_wait = async move {
                match wait {
                    Some(wait) => tokio::time::sleep(wait).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                result = conn.as_mut() => break result,
                () = shutdown.stopped() => {
                    graceful_shutdown(conn.as_mut());
                    break conn.await;
                }
                _ = idle_wait => {
                    let Some((streams, limit)) = &idle else { continue };
                    next_check = idle_check(streams, *limit);
                    if next_check.is_none() {
                        debug!(peer = %peer, "closing an idle HTTP/2 connection");
                        graceful_shutdown(conn.as_mut());
                        break conn.await;
                    }
                }
            }
        }
    };
    let Some(result) = shutdown.unless_closed(run).await else {
        return;
    };
    if let Err(e) = result {
        debug!(peer = %peer, error = %e, "client connection ended with an error");
    }
}

/// One HTTP/1.1 request's answer ([`respond_to`]); while the listeners are handed over, with
/// `Connection: close`, so that the client's next request goes to the new process.
async fn answer<B: ClientBody>(
    shared: &Shared,
    peer: SocketAddr,
    req: Request<B>,
) -> Response<ProxyBody> {
    let mut response = respond_to(shared, peer, req).await;
    if shared.cfg.draining.is_on() && response.status() != StatusCode::SWITCHING_PROTOCOLS {
        response
            .headers_mut()
            .insert(CONNECTION, HeaderValue::from_static("close"));
    }
    response
}

/// A client's request body as the request path takes it: hyper's, or none at all (a request
/// the own HTTP/1.1 loop took, [`http1`]).
trait ClientBody: Body<Data = Bytes, Error: Into<BoxError>> + Send + Sync + Unpin + 'static {}

impl<B: Body<Data = Bytes, Error: Into<BoxError>> + Send + Sync + Unpin + 'static> ClientBody
    for B
{
}

/// One request as its listener answers it: a redirect to HTTPS, or proxied.
async fn respond_to<B: ClientBody>(
    shared: &Shared,
    peer: SocketAddr,
    mut req: Request<B>,
) -> Response<ProxyBody> {
    match &shared.redirect {
        // The edge's rules for the host first: the redirect names the host the HTTPS side
        // would route on, or the request is refused as it would be there.
        Some(redirect) => match edge::admit(&mut req, false) {
            Ok(()) => redirect.answer(&req),
            Err(refusal) => {
                debug!(peer = %peer, refusal = %refusal, "request refused at the edge");
                closing(text(refusal.status(), refusal.body()))
            }
        },
        None => handle(shared, peer, req).await,
    }
}

/// What happened along the way, for the observer.
#[derive(Default)]
struct Outcome {
    choice: Option<Decision>,
    upstream: Option<usize>,
    server: Option<Arc<str>>,
    fell_back: bool,
    unhealthy: bool,
    retried: bool,
    upstream_headers: Option<Duration>,
}

/// One request, all phases. Never fails: every error becomes a response.
async fn handle<B: ClientBody>(
    shared: &Shared,
    peer: SocketAddr,
    req: Request<B>,
) -> Response<ProxyBody> {
    let started = Instant::now();
    // Phase "client IP".
    let client_ip = shared.cfg.client_ip.resolve(peer.ip(), req.headers());
    // What the observer needs of the request, taken before it moves on. One `proxy` call for
    // both cases: two would each keep room for its future in this one.
    let observed = shared
        .cfg
        .observer
        .as_ref()
        .map(|observer| (observer, req.method().clone(), req.uri().clone()));
    let mut outcome = Outcome::default();
    let response = proxy(shared, peer, client_ip, req, &mut outcome, started).await;
    let Some((observer, method, uri)) = observed else {
        return response;
    };
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
        let version = choice.map(|c| c.answered_by(outcome.fell_back).as_ref());
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
            unhealthy: outcome.unhealthy,
            retried: outcome.retried,
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
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
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
async fn proxy<B: ClientBody>(
    shared: &Shared,
    peer: SocketAddr,
    client_ip: IpAddr,
    mut req: Request<B>,
    outcome: &mut Outcome,
    started: Instant,
) -> Response<ProxyBody> {
    if req.method() == Method::CONNECT {
        return text(StatusCode::METHOD_NOT_ALLOWED, NO_CONNECT);
    }
    // HTTP/2: the host is `:authority`; `Host` from it, for routing and an HTTP/1.1 upstream.
    if req.version() == http::Version::HTTP_2 {
        if let Err(e) = http2::host_from_authority(&mut req) {
            return text(StatusCode::BAD_REQUEST, e.body());
        }
    }

    // Phase "edge": refused, or made canonical for the route and the upstream alike.
    let client_ip_cfg = &shared.cfg.client_ip;
    let strip_forwarded =
        client_ip_cfg.strip_untrusted_forwarded && !client_ip_cfg.is_trusted(peer.ip());
    if let Err(refusal) = edge::admit(&mut req, strip_forwarded) {
        debug!(peer = %peer, refusal = %refusal, "request refused at the edge");
        return closing(text(refusal.status(), refusal.body()));
    }
    // The body timeouts are reloaded with the upstream table.
    let timeouts = shared.upstreams.load().timeouts();

    // Phase "follow": an upstream graygate's choice is believed from a trusted proxy only;
    // from anyone else it is removed before any rule can read it.
    let default_header = forward::DEFAULT_VERSION_HEADER;
    let version_header = shared
        .cfg
        .version_header
        .as_ref()
        .unwrap_or(&default_header);
    let mut untrusted_follow = false;
    // Whether a choice is to be followed at all, found once: nearly no request has one.
    let mut follows = req.headers().contains_key(version_header);
    if follows && !client_ip_cfg.is_trusted(peer.ip()) {
        req.headers_mut().remove(version_header);
        untrusted_follow = true;
        follows = false;
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
            client_key: shared.cfg.client_ip.lookup_key(peer.ip(), req.headers()),
            headers: req.headers(),
            random: random_u64(),
            now: unix_now(),
            https: shared.https,
            followed: follows
                .then(|| req.headers().get(version_header))
                .flatten()
                .and_then(|v| v.to_str().ok()),
        };
        shared.router.route(facts).await
    };
    let Some(mut choice) = choice else {
        return text(StatusCode::NOT_FOUND, NO_ROUTE);
    };
    if untrusted_follow && choice.note.is_none() {
        choice.note = Some(Note::FollowUntrusted);
    }

    // Phase "rewrite". An upgrade's client side must be claimed before the request moves on.
    let upgrade = req.version() == Version::HTTP_11 && forward::is_websocket_upgrade(req.headers());
    let client_upgrade = upgrade.then(|| hyper::upgrade::on(&mut req));
    let unsized_body = req.body().size_hint().exact().is_none();
    // `TE: trailers` is hop-by-hop, but an HTTP/2 upstream (gRPC) is to hear it again.
    upstream_protocol::note_te_trailers(&mut req);
    forward::rewrite_request(&mut req, peer.ip(), client_ip, upgrade);
    if unsized_body && !upgrade {
        forward::send_chunked(req.headers_mut());
    }
    match &shared.cfg.version_header {
        Some(name) => forward::set_version_header(req.headers_mut(), name, choice.version()),
        // No version header is sent, and none of the client's passes either.
        None => {
            req.headers_mut().remove(forward::DEFAULT_VERSION_HEADER);
        }
    }
    let mut options = SendOptions {
        fallback: choice.upstream != choice.stable_upstream,
        retryable: Replay::allowed(&req, upgrade),
        retry: None,
        retried: false,
    };
    // Beside phase "upstream": a copy to the service's mirror, if this request is drawn (never
    // of a WebSocket upgrade: a tunnel cannot be copied).
    let target = if upgrade {
        None
    } else {
        shared.router.mirror(&choice)
    };
    let mut copying = target.and_then(|target| {
        mirroring::begin(
            &target,
            random_u64(),
            &req,
            shared.cfg.version_header.as_ref(),
            &shared.cfg.observer,
            &shared.upstreams,
        )
    });
    let body_state = Arc::new(edge::BodyState::default());
    let activity = &body_state.activity;
    let req = req.map(|body| {
        let body = edge::ClientBody::new(body, body_state.clone(), timeouts.client_body).boxed();
        match &mut copying {
            Some(copying) => copying.tee(body),
            None => body,
        }
    });

    // Phase "upstream", with the canary -> stable fallback while the body is still unread (or
    // the request can be sent again).
    outcome.upstream = Some(choice.upstream);
    let mut result = shared
        .upstreams
        .send_with(choice.upstream, req, activity, &mut options)
        .await;
    // Out of file descriptors, stable cannot be reached either: no fallback.
    let local = matches!(&result, Err(SendError::Unreachable { error, .. }) if error.is_local());
    if options.fallback && !local {
        if let Err(SendError::Unreachable { request, error }) = result {
            debug!(
                route = %choice.route(),
                version = %choice.version(),
                stable = %choice.stable_version(),
                error = %error,
                "falling back to stable",
            );
            let mut request = *request;
            if let Some(name) = &shared.cfg.version_header {
                forward::set_version_header(request.headers_mut(), name, choice.stable_version());
            }
            outcome.fell_back = true;
            outcome.unhealthy = matches!(error, UpstreamError::OutOfService { .. });
            outcome.upstream = Some(choice.stable_upstream);
            options.fallback = false;
            // Boxed: a second upstream exchange in the request's future would double its size
            // (and the copy of it every request pays) for a path few requests take.
            result = Box::pin(shared.upstreams.send_with(
                choice.stable_upstream,
                request,
                activity,
                &mut options,
            ))
            .await;
        }
    }
    outcome.retried = options.retried;

    let mut own_error = false;
    let mut client_fault = None;
    let response = match result {
        Ok(exchange) => {
            outcome.upstream_headers = Some(exchange.headers_after);
            let (response, own) = respond(
                exchange.response,
                client_upgrade,
                &choice,
                &exchange.server,
                timeouts.upstream_body,
            );
            outcome.server = Some(exchange.server);
            own_error = own;
            response
        }
        Err(SendError::Unreachable { error, .. }) => {
            own_error = true;
            warn!(
                route = %choice.route(),
                version = %choice.version(),
                fell_back = outcome.fell_back,
                error = %error,
                "502: upstream unavailable",
            );
            text(StatusCode::BAD_GATEWAY, UNAVAILABLE)
        }
        Err(SendError::Failed { server, error }) => {
            outcome.server = Some(server);
            let timed_out = matches!(error, UpstreamError::ResponseTimeout { .. });
            if let Some(fault) = body_state.fault() {
                // The client broke its body or let it stall: its error, not the upstream's.
                // Logged as nginx logs a client timeout: at info, naming the client's fault.
                info!(route = %choice.route(), version = %choice.version(), client_ip = %client_ip, "{}: client error: {}", fault.status().as_u16(), fault.body().trim_start_matches("graygate: ").trim_end());
                client_fault = Some(fault);
                closing(text(fault.status(), fault.body()))
            } else if timed_out {
                own_error = true;
                warn!(route = %choice.route(), version = %choice.version(), error = %error, "504: upstream timed out");
                text(StatusCode::GATEWAY_TIMEOUT, TIMED_OUT)
            } else {
                own_error = true;
                warn!(route = %choice.route(), version = %choice.version(), error = %error, "502: upstream request failed");
                text(StatusCode::BAD_GATEWAY, UNAVAILABLE)
            }
        }
    };
    let mut response = response;
    if let Some(name) = &shared.cfg.response_version_header {
        let version = choice.answered_by(outcome.fell_back);
        forward::set_version_header(response.headers_mut(), name, version);
    }
    if let Some(cookie) = choice.set_cookie.as_deref() {
        if let Ok(value) = HeaderValue::from_str(cookie) {
            response
                .headers_mut()
                .append(http::header::SET_COOKIE, value);
        }
    }
    // A request the client broke says nothing about the version: not counted for it.
    if client_fault.is_none() {
        shared.router.answered(
            &choice,
            Answer {
                status: response.status().as_u16(),
                failed: own_error || outcome.fell_back,
                fell_back: outcome.fell_back,
                latency: started.elapsed(),
            },
        );
    }
    outcome.choice = Some(choice);
    match &mut copying {
        Some(copying) => copying.watch_response(response),
        None => response,
    }
}

/// Phase "respond": the upstream's response, rewritten, its body streamed as is (bounded by
/// `upstream_body` per frame). A 101 to a WebSocket upgrade request starts the tunnel between
/// the two upgraded connections. The flag is true when graygate answered itself (502) instead.
fn respond(
    mut response: Response<UpstreamIncoming>,
    client_upgrade: Option<OnUpgrade>,
    choice: &Decision,
    server: &Arc<str>,
    upstream_body: Duration,
) -> (Response<ProxyBody>, bool) {
    if response.status() == StatusCode::SWITCHING_PROTOCOLS {
        let Some(client_upgrade) = client_upgrade else {
            // The upstream switched protocols nobody asked for: the client could not follow.
            warn!(route = %choice.route(), version = %choice.version(), "502: unrequested 101 from upstream");
            return (text(StatusCode::BAD_GATEWAY, UNAVAILABLE), true);
        };
        if !forward::is_websocket_switch(response.headers()) {
            // Only WebSocket is tunnelled: anything else would leave the connection unrouted.
            warn!(route = %choice.route(), version = %choice.version(), "502: upstream switched to a protocol other than WebSocket");
            return (text(StatusCode::BAD_GATEWAY, UNAVAILABLE), true);
        }
        let upstream_upgrade = hyper::upgrade::on(&mut response);
        tokio::spawn(tunnel(client_upgrade, upstream_upgrade));
        forward::rewrite_response(&mut response);
        return (response.map(|_| empty()), false);
    }
    if let Err(error) = edge::check_response_framing(response.headers_mut()) {
        warn!(route = %choice.route(), version = %choice.version(), server = %server, error = %error, "502: upstream response framing");
        return (text(StatusCode::BAD_GATEWAY, UNAVAILABLE), true);
    }
    forward::rewrite_response(&mut response);
    let server = server.clone();
    let response =
        response.map(|body| edge::UpstreamBody::new(body, upstream_body, server).boxed());
    (response, false)
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

/// `answer` with `Connection: close`: hyper closes the connection once it is sent.
fn closing(mut answer: Response<ProxyBody>) -> Response<ProxyBody> {
    answer
        .headers_mut()
        .insert(CONNECTION, HeaderValue::from_static("close"));
    answer
}

fn empty() -> ProxyBody {
    Empty::<Bytes>::new()
        .map_err(|never| match never {})
        .boxed()
}

/// The time in Unix seconds ([`RequestFacts::now`]).
fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
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
    use crate::policy::{DecisionNames, Reason};
    use crate::proxy::{ServerConfig, UpstreamConfig, DEFAULT_VERSION_HEADER};
    use hyper::body::Incoming;
    use tokio::net::TcpListener;

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
                ..UpstreamConfig::default()
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
                names: DecisionNames::new("test-route", "shop", version, stable),
                reason: Reason::Rule {
                    name: "test".into(),
                },
                note: None,
                set_cookie: None,
            });
            let listener = listen::bind(SocketAddr::from(([127, 0, 0, 1], 0)), 511).unwrap();
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

    /// An idle kept-alive plain connection is its task (and tokio's 256-byte record of its
    /// socket). tokio lays a task out as its future plus 104 bytes, in steps of 128: a future of
    /// at most 280 bytes keeps that at 384, where it was 5 KiB before issue 15's idle memory
    /// work (`bench/idle-conns.sh`: 6,670 -> about 700 bytes per idle connection). Grown past
    /// this, the task takes 512 bytes or more: look at what the connection's wait holds across
    /// its `.await` (`-Zprint-type-sizes` on nightly lists it).
    #[tokio::test]
    async fn an_idle_plain_connection_task_stays_small() {
        let cfg = ProxyConfig::default();
        let upstreams = Arc::new(LiveUpstreams::new(Vec::new(), &cfg.timeouts).unwrap());
        let shared = Arc::new(Shared {
            cfg: Arc::new(cfg),
            upstreams,
            router: Arc::new(Fixed(None)),
            redirect: None,
            https: false,
            shutdown: Shutdown::default(),
            idle: TickClock::new(Duration::from_secs(10)),
        });
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let stream = TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let peer = stream.local_addr().unwrap();
        let slot = ConnectionLimit::new("test", 1).try_slot().unwrap();
        let read = BytesMut::new();
        let task = plain(http1::Conn { stream, read, peer }, Open::new(shared, slot));
        let size = std::mem::size_of_val(&task);
        assert!(
            size <= 280,
            "a plain connection's task future is {size} bytes"
        );
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

    /// One connection, requests pipelined: the first taken by the own HTTP/1.1 loop, the second
    /// (a body) handed to hyper with the bytes after it, the third served by hyper in turn; all
    /// answered, in order.
    #[tokio::test]
    async fn a_connection_moves_from_the_own_loop_to_hyper_mid_stream() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        within(async {
            let b = echo_backend("stable").await;
            let p = stable_proxy(b.addr).start().await;
            let mut stream = tokio::net::TcpStream::connect(p.addr).await.unwrap();
            stream
                .write_all(
                    b"GET /1 HTTP/1.1\r\nHost: a\r\n\r\n\
                      POST /2 HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\n\r\nabc\
                      GET /3 HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n",
                )
                .await
                .unwrap();
            let mut answers = Vec::new();
            stream.read_to_end(&mut answers).await.unwrap();
            let answers = String::from_utf8_lossy(&answers);
            assert_eq!(
                answers.matches("HTTP/1.1 200 OK\r\n").count(),
                3,
                "{answers}"
            );
            let at = |path: &str| answers.find(&format!("\nstable\n{path}\n")).expect(path);
            assert!(at("/1") < at("/2") && at("/2") < at("/3"), "{answers}");
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

    /// A client that connects and sends nothing (not even enough to tell HTTP/1.1 from
    /// HTTP/2) is closed after the header timeout too.
    #[tokio::test]
    async fn a_silent_connection_is_closed_after_the_header_timeout() {
        within(async {
            let p = proxy()
                .config(|c| c.timeouts.header = Duration::from_millis(200))
                .start()
                .await;
            for first in [&b""[..], b"PRI * HTTP/2.0\r\n"] {
                let mut raw = TcpStream::connect(p.addr).await.unwrap();
                raw.write_all(first).await.unwrap();
                let started = Instant::now();
                let mut rest = Vec::new();
                let _ = raw.read_to_end(&mut rest).await;
                let took = started.elapsed();
                assert!(took >= Duration::from_millis(200), "closed after {took:?}");
                assert!(took < Duration::from_secs(5), "closed after {took:?}");
                assert!(rest.is_empty(), "{rest:?}");
            }
        })
        .await
    }

    /// HTTP/2 with prior knowledge on a plain listener: requests are served, and a connection
    /// left with no open stream is closed (GOAWAY) after the header timeout, as an idle
    /// HTTP/1.1 connection is.
    #[tokio::test]
    async fn h2c_is_served_and_an_idle_h2_connection_is_closed() {
        within(async {
            let b = echo_backend("stable").await;
            let p = stable_proxy(b.addr)
                .config(|c| c.timeouts.header = Duration::from_millis(300))
                .start()
                .await;
            let stream = TcpStream::connect(p.addr).await.unwrap();
            let (mut sender, conn) = hyper::client::conn::http2::handshake(
                hyper_util::rt::TokioExecutor::new(),
                TokioIo::new(stream),
            )
            .await
            .unwrap();
            let conn = tokio::spawn(conn);
            let req = Request::get("http://app.example/h2")
                .body(full(""))
                .unwrap();
            let resp = sender.send_request(req).await.unwrap();
            assert_eq!(resp.status(), StatusCode::OK);
            assert_eq!(resp.version(), http::Version::HTTP_2);
            let body = resp.into_body().collect().await.unwrap().to_bytes();
            let body = String::from_utf8_lossy(&body).into_owned();
            assert!(body.starts_with("stable\n"), "{body}");
            // The upstream got the host from :authority, over HTTP/1.1.
            assert!(echoed(&body).contains(&"host: app.example"), "{body}");
            let started = Instant::now();
            let ended = tokio::time::timeout(Duration::from_secs(10), conn).await;
            assert!(ended.is_ok(), "the idle connection stayed open");
            assert!(started.elapsed() >= Duration::from_millis(200));
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
